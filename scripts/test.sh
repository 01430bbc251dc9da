#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: setup, formatting, lints, docs, every test
# (real etcd and ZooKeeper are started by the tests themselves on loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export RUSTFLAGS="${RUSTFLAGS:-} -Dwarnings"
export RUSTDOCFLAGS="-Dwarnings"
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo doc --workspace --no-deps --all-features"
cargo doc --workspace --no-deps --all-features

step "cargo test --workspace --all-features"
cargo test --workspace --all-features --no-fail-fast -- --test-threads=2

# Benches and examples are compiled by clippy --all-targets above; building them again in the
# release profile would double CI's compile time for no extra check.
step "simulator sweep: 2,000 seeds per store profile, plus 500 in synchronous mode (release build)"
cargo build --quiet --release --features sim --example sim_sweep
sweep() { target/release/examples/sim_sweep "$@" 2>&1 | tr '\r' '\n' | grep -v ' seeds$'; }
# Two profiles per core; a violation makes the sweep exit non-zero and prints its replay command.
( sweep --iterations 2000 --profile etcd && sweep --iterations 2000 --profile zookeeper &&
  sweep --iterations 500 --sync --profile etcd && sweep --iterations 500 --sync --profile zookeeper ) > target/sweep-1.log &
first=$!
sweep_ok=0
( sweep --iterations 2000 --profile consul && sweep --iterations 2000 --profile kubernetes &&
  sweep --iterations 500 --sync --profile consul && sweep --iterations 500 --sync --profile kubernetes ) > target/sweep-2.log || sweep_ok=1
wait "$first" || sweep_ok=1
cat target/sweep-1.log target/sweep-2.log
[ "$sweep_ok" = 0 ] || { echo "the simulator found a violation (replay command above)"; exit 1; }

step "fuzz targets: build with coverage and run each for 10 s"
./scripts/fuzz.sh 10
step "all checks passed"
