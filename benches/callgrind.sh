#!/usr/bin/env bash
# Instructions per packet for each pipeline workload, measured with callgrind.
# Runs each workload twice (N and 2N packets) and divides the difference in
# instructions by N, so set-up and warm-up cost cancel out.
#   benches/callgrind.sh [packets]     (default 200000; WORKLOADS="..." for a subset)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
cargo build -q --release -p vswitch-benches --bin pipeline-ir
BIN=target/release/pipeline-ir
ir() {
  local out; out=$(mktemp)
  valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" "$1" "$2" "${3:-64}" >/dev/null 2>&1
  grep -E '^(summary|totals):' "$out" | head -1 | awk '{print $2}'
  rm -f "$out"
}
printf '%-30s %8s %s\n' workload batch instructions/packet
ALL="l2_pod_to_pod l2_learned_10k_fdb_hot l2_learned_10k_fdb_uniform arp_proxy_reply flood_8_ports
     service_dnat_established service_dnat_new_flow service_dnat_new_flow_10k_services
     vxlan_encap vxlan_decap"
# WORKLOADS="a b" measures only those.
for w in ${WORKLOADS:-$ALL}; do
  for batch in 64 256; do
    a=$(ir "$w" "$N" "$batch"); b=$(ir "$w" $((2 * N)) "$batch")
    printf '%-30s %8s %s\n' "$w" "$batch" "$(( (b - a) / N ))"
  done
done
