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
# and connects to it; then a second node (its own namespace and vswitchd, joined to the
# first by a veth pair as the underlay) with a pod reached over VXLAN (through the
# default nodes file, unless the machine already has one); prints `vswitchctl ports`,
# `services`, `conntrack`, `nodes` and `stats`, and removes everything it made, on
# failure too.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
echo "== building vswitchd and vswitchctl (release)"
cargo build --release --locked -q -p vswitchd --bins
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
NODES=/etc/vswitch/nodes.toml
nodes_existed=$([ -e "$NODES" ] && echo yes || echo no)
NODE2=$P-node2
POD4=$P-pod4
NODE2_DIR=$(mktemp -d /tmp/vsdemo-node2.XXXXXX)
CTL2="$CTL --socket $NODE2_DIR/api.sock"
LOG=$(mktemp /tmp/vsdemo-vswitchd.XXXXXX.log)
daemon=""
daemon2=""
servers=()

cleanup() {
  set +e
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null; done
  if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
    for i in 0 1 2; do $CTL detach "demo-${PODS[$i]}" eth0 >/dev/null 2>&1; done
    kill -TERM "$daemon"; wait "$daemon" 2>/dev/null
  fi
  if [ -n "$daemon2" ] && kill -0 "$daemon2" 2>/dev/null; then
    $CTL2 detach demo-pod4 eth0 >/dev/null 2>&1
    kill -TERM "$daemon2"; wait "$daemon2" 2>/dev/null
  fi
  for ns in "$NODE" "${PODS[@]/#/$P-}" "$NODE2" "$POD4"; do ip netns del "$ns" 2>/dev/null; done
  [ "$nodes_existed" = no ] && rm -f "$NODES"
  rm -rf "$NODE2_DIR"
  [ "$state_existed" = no ] && rm -f "$STATE"
  if [ "$services_existed" = no ]; then
    rm -f "$SERVICES"
  fi
  [ "$services_dir_existed" = no ] && rmdir "$(dirname "$SERVICES")" 2>/dev/null
  rm -f "$LOG"
}
trap cleanup EXIT

for ns in "$NODE" "${PODS[@]/#/$P-}" "$NODE2" "$POD4"; do ip netns del "$ns" 2>/dev/null || true; done
ip netns add "$NODE"
ip -n "$NODE" link set lo up
if [ "$nodes_existed" = no ]; then
  # The underlay toward the second node exists before vswitchd starts: it is the node's
  # one interface with an address, so VXLAN goes through the tunnel TAP on it.
  ip netns add "$NODE2"
  ip -n "$NODE2" link set lo up
  ip link add ul0 netns "$NODE" type veth peer name ul0 netns "$NODE2"
  ip -n "$NODE" addr add 192.168.77.1/24 dev ul0 && ip -n "$NODE" link set ul0 up
  ip -n "$NODE2" addr add 192.168.77.2/24 dev ul0 && ip -n "$NODE2" link set ul0 up
fi

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
if [ "$nodes_existed" = no ]; then
  echo "== a second node: namespace $NODE2 with its own vswitchd (pod CIDR 10.244.2.0/24),"
  echo "   joined to $NODE by a veth pair as the underlay (192.168.77.1 <-> .2)"
  cat >"$NODE2_DIR/vswitchd.toml" <<EOF
pod_cidr = "10.244.2.0/24"
api_socket = "$NODE2_DIR/api.sock"
state_file = "$NODE2_DIR/state.json"
metrics_address = ""
[services]
file = ""
[overlay]
nodes_file = ""
[[overlay.node]]
name = "demo-node1"
ip = "192.168.77.1"
pod_cidr = "10.244.1.0/24"
EOF
  ip netns exec "$NODE2" "$VSWITCHD" --config "$NODE2_DIR/vswitchd.toml" >>"$LOG" 2>&1 &
  daemon2=$!
  for _ in $(seq 100); do $CTL2 status >/dev/null 2>&1 && break; sleep 0.1; done
  $CTL2 status >/dev/null || { cat "$LOG"; exit 1; }
  ip netns add "$POD4"
  ip -n "$POD4" link set lo up
  $CTL2 attach --container-id demo-pod4 --netns "/var/run/netns/$POD4" --ifname eth0 --ip 10.244.2.2/24 >/dev/null
  ip -n "$POD4" addr add 10.244.2.2/24 dev eth0
  ip -n "$POD4" route add default via 10.244.2.1
  echo "node 1 learns of node 2 through its nodes file ($NODES):"
  cat >"$NODES" <<'EOF'
[[node]]
name = "demo-node2"
ip = "192.168.77.2"
pod_cidr = "10.244.2.0/24"
EOF
  run $CTL nodes reload
  echo
  echo "pod1 (node 1) -> pod4 (node 2) over VXLAN; ttl=62: each node is one routed hop"
  run ip netns exec $P-pod1 ping -c 3 -i 0.2 10.244.2.2
  echo "node 1 itself -> pod4: its route to node 2's pods goes through the host port"
  run ip -n "$NODE" route show proto 118
  run ip netns exec "$NODE" ping -c 3 -i 0.2 10.244.2.2
  ip netns exec "$POD4" iperf3 -s -1 -D -p 5203
  sleep 0.3
  echo "how VXLAN meets the kernel on node 1:"
  $CTL status | grep '^underlay'
  echo "pod1 -> pod4, TCP across nodes (super-frames whole through the tunnel TAP):"
  ip netns exec $P-pod1 iperf3 -c 10.244.2.2 -p 5203 -t 3 | grep -E "sender|receiver"
else
  echo "== skipping the second node: $NODES exists on this machine and is left alone"
fi

echo
echo "== vswitchctl ports"
$CTL ports
echo
echo "== vswitchctl stats"
$CTL stats
echo
echo "== done: detaching the pods and stopping vswitchd"
