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
step "simulator sweep: a fixed regression set, then fresh seeds with varied sizes (release build)"
cargo build --quiet --release --features sim --example sim_sweep
sweep() { target/release/examples/sim_sweep --jobs 2 "$@" 2>&1 | tr '\r' '\n' | grep -v ' seeds$'; }
# A fresh seed offset per run, printed first: a failure's replay command carries its seed.
offset="${LEASEHOLD_SWEEP_OFFSET:-$(( ((RANDOM << 15) | RANDOM) * 1000 + 100000000 ))}"
echo "fresh-seed offset for this run: $offset (set LEASEHOLD_SWEEP_OFFSET=$offset to run the same seeds)"
sweep_ok=0
for profile in etcd zookeeper consul kubernetes; do
  # Fixed: the same 2,000 + 500 schedules every run (3 nodes, 12 faults), so a regression is seen at once.
  sweep --iterations 2000 --profile "$profile" || sweep_ok=1
  sweep --iterations 500 --sync --profile "$profile" || sweep_ok=1
  # Fresh: seeds CI never ran, 3/5/7 nodes and 12-40 faults drawn per seed, 120 s of chaos.
  sweep --iterations 1000 --vary --chaos-secs 120 --seed "$offset" --profile "$profile" || sweep_ok=1
  sweep --iterations 300 --vary --sync --chaos-secs 120 --seed "$((offset + 500000))" --profile "$profile" || sweep_ok=1
done
[ "$sweep_ok" = 0 ] || { echo "the simulator found a violation (every failing seed and its replay command above)"; exit 1; }

step "fuzz targets: build with coverage and run each for 10 s"
./scripts/fuzz.sh 10
step "all checks passed"
