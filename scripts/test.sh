#!/usr/bin/env bash
# The whole test suite, as CI runs it (as root: end-to-end tests build network
# namespaces). Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== unit, property and end-to-end tests"
# The end-to-end tests run vswitchd and vswitchctl from the target directory.
cargo build --workspace --bins --locked
cargo test --workspace --locked

echo "== fuzz targets, fixed budget on the committed corpus"
scripts/fuzz.sh smoke

echo "== benchmark harness, smoke (every contender sets up, forwards and tears down)"
benches/packet-rate.sh --smoke
