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
step "fuzz targets: build with coverage and run each for 10 s"
./scripts/fuzz.sh 10
step "all checks passed"
