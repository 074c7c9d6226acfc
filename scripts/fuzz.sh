#!/usr/bin/env bash
# Runs the cargo-fuzz targets on the committed seed corpus.
#   scripts/fuzz.sh smoke          # CI: a fixed number of runs per target
#   scripts/fuzz.sh long SECONDS   # local: SECONDS per target, corpus kept in fuzz/corpus
# New inputs found during a smoke run go to a temporary directory, not into the tree.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-smoke}
declare -A runs=([parse_frame]=300000 [pipeline]=30000 [offload]=200000 [tunnel]=100000)
for target in parse_frame pipeline offload tunnel; do
  if [ "$mode" = smoke ]; then
    scratch=$(mktemp -d)
    mkdir -p "$scratch/corpus"
    trap 'rm -rf "$scratch"' EXIT
    if ! cargo fuzz run -s none "$target" "$scratch/corpus" "fuzz/corpus/$target" -- \
      -runs="${runs[$target]}" -max_len=4096 -print_final_stats=1 >"$scratch/log" 2>&1; then
      cat "$scratch/log"
      echo "fuzz target $target failed; the crashing input is in fuzz/artifacts/$target" >&2
      exit 1
    fi
    echo "$target: $(grep -E '^Done' "$scratch/log")"
    rm -rf "$scratch"
  else
    cargo fuzz run -s none "$target" "fuzz/corpus/$target" -- \
      -max_total_time="${2:-600}" -max_len=4096 -print_final_stats=1
  fi
done
