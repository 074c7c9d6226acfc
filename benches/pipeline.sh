#!/usr/bin/env bash
# The in-memory pipeline benches in one command: criterion (packets per second on one
# core) and callgrind (instructions per packet) for every workload of benches/src/lib.rs,
# merged into one table written into docs/BENCHMARKS.md between its pipeline markers.
#   benches/pipeline.sh              # about 10 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo bench --locked -p vswitch-benches --bench pipeline
benches/callgrind.sh | benches/pipeline-summary.py --write docs/BENCHMARKS.md
