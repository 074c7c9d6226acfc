#!/usr/bin/env bash
# The whole test suite, as CI runs it (as root: end-to-end tests build network
# namespaces). Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== the data plane's layers (dataplane/tests/layers.rs; also part of the tests below)"
cargo test --locked -p vswitch-dataplane --test layers --quiet

echo "== unit, property and end-to-end tests"
# Tests that need root (network namespaces, TAP, AF_XDP, the daemon) are #[ignore]d
# for a plain `cargo test`; as root, run them too.
cargo test --workspace --locked -- --include-ignored

echo "== fuzz targets, fixed budget on the committed corpus"
scripts/fuzz.sh smoke

echo "== benchmark harness, smoke (every contender sets up, forwards and tears down)"
benches/packet-rate.sh --smoke
