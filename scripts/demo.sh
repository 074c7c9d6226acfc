#!/usr/bin/env bash
# The main job: vswitchd on its embedded default configuration, serving a demo node
# built from network namespaces.
#
#   scripts/demo.sh            (as root)
#
# It builds the release binaries, makes a node namespace and starts vswitchd in it, then
# three pod namespaces attached through the API (two TAP pods, one AF_XDP pod) and
# configured as the CNI plugin would (address, default route via the gateway). It pings
# between them and from the node, runs TCP transfers with iperf3, puts a Service in front
# of two pods (through the default services file, unless the machine already has one)
# and connects to it, prints `vswitchctl ports`, `services`, `conntrack` and `stats`, and
# removes everything it made, on failure too.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
echo "== building vswitchd and vswitchctl (release)"
cargo build --release --locked -q -p vswitch --bins
VSWITCHD=$PWD/target/release/vswitchd
CTL="$PWD/target/release/vswitchctl"

P=vsdemo
NODE=$P-node
PODS=(pod1 pod2 pod3)
BACKENDS=(tap tap afxdp)
STATE=/var/lib/vswitch/state.json
state_existed=$([ -e "$STATE" ] && echo yes || echo no)
SERVICES=/etc/vswitch/services.toml
services_existed=$([ -e "$SERVICES" ] && echo yes || echo no)
services_dir_existed=$([ -d "$(dirname "$SERVICES")" ] && echo yes || echo no)
LOG=$(mktemp /tmp/vsdemo-vswitchd.XXXXXX.log)
daemon=""
servers=()

cleanup() {
  set +e
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null; done
  if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
    for i in 0 1 2; do $CTL detach "demo-${PODS[$i]}" eth0 >/dev/null 2>&1; done
    kill -TERM "$daemon"; wait "$daemon" 2>/dev/null
  fi
  for ns in "$NODE" "${PODS[@]/#/$P-}"; do ip netns del "$ns" 2>/dev/null; done
  [ "$state_existed" = no ] && rm -f "$STATE"
  if [ "$services_existed" = no ]; then
    rm -f "$SERVICES"
    [ "$services_dir_existed" = no ] && rmdir "$(dirname "$SERVICES")" 2>/dev/null
  fi
  rm -f "$LOG"
}
trap cleanup EXIT

for ns in "$NODE" "${PODS[@]/#/$P-}"; do ip netns del "$ns" 2>/dev/null || true; done
ip netns add "$NODE"
ip -n "$NODE" link set lo up

echo "== starting vswitchd in namespace $NODE (embedded default config)"
ip netns exec "$NODE" "$VSWITCHD" >"$LOG" 2>&1 &
daemon=$!
for _ in $(seq 100); do $CTL status >/dev/null 2>&1 && break; sleep 0.1; done
if ! $CTL status; then cat "$LOG"; exit 1; fi

echo
echo "== attaching three pods"
for i in 0 1 2; do
  pod=$P-${PODS[$i]} ip=10.244.1.$((i + 2))
  ip netns add "$pod"
  ip -n "$pod" link set lo up
  $CTL attach --container-id "demo-${PODS[$i]}" --netns "/var/run/netns/$pod" --ifname eth0 \
    --ip "$ip/24" --backend "${BACKENDS[$i]}"
  # What the CNI plugin does inside the pod: its address and default route.
  ip -n "$pod" addr add "$ip/24" dev eth0
  ip -n "$pod" route add default via 10.244.1.1
done

run() { echo "\$ $*"; "$@"; }
echo
echo "== ping between pods (TAP <-> TAP, TAP <-> AF_XDP) and from the node"
run ip netns exec $P-pod1 ping -c 3 -i 0.2 10.244.1.3
run ip netns exec $P-pod1 ping -c 3 -i 0.2 10.244.1.4
run ip netns exec $P-pod3 ping -c 3 -i 0.2 10.244.1.3
run ip netns exec "$NODE" ping -c 3 -i 0.2 10.244.1.2

echo
echo "== TCP through the switch (iperf3, 3 s each)"
ip netns exec $P-pod2 iperf3 -s -1 -D -p 5201
ip netns exec $P-pod3 iperf3 -s -1 -D -p 5202
sleep 0.3
echo "pod1 -> pod2 (TAP to TAP: TSO super-frames cross the switch whole)"
ip netns exec $P-pod1 iperf3 -c 10.244.1.3 -p 5201 -t 3 | grep -E "sender|receiver"
echo "pod1 -> pod3 (TAP to AF_XDP: segmented in the switch)"
ip netns exec $P-pod1 iperf3 -c 10.244.1.4 -p 5202 -t 3 | grep -E "sender|receiver"

echo
if [ "$services_existed" = no ]; then
  echo "== a Service in front of pod2 and pod3 (written to $SERVICES, the default services file)"
  for i in 2 3; do
    ip netns exec $P-pod$i ncat -lk 8080 -c "echo served by pod$i" &
    servers+=($!)
  done
  mkdir -p "$(dirname "$SERVICES")"
  cat >"$SERVICES" <<'EOF'
[[service]]
namespace = "demo"
name = "echo"
cluster_ip = "10.96.0.10"
ports = [{ port = 80, target_port = 8080 }]
endpoints = [{ ip = "10.244.1.3" }, { ip = "10.244.1.4" }]
EOF
  run $CTL services reload
  for _ in $(seq 20); do
    ip netns exec $P-pod2 ss -ltn | grep -q :8080 && ip netns exec $P-pod3 ss -ltn | grep -q :8080 && break
    sleep 0.1
  done
  echo
  echo "pod1 -> 10.96.0.10:80, six connections (Maglev spreads them by 5-tuple):"
  for _ in $(seq 6); do ip netns exec $P-pod1 ncat --recv-only -w 2 10.96.0.10 80 </dev/null; done
  echo
  run $CTL conntrack
else
  echo "== skipping the Service part: $SERVICES exists on this machine and is left alone"
fi

echo
echo "== vswitchctl ports"
$CTL ports
echo
echo "== vswitchctl stats"
$CTL stats
echo
echo "== done: detaching the pods and stopping vswitchd"
