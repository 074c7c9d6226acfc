#!/usr/bin/env bash
# The packet-rate benchmark in one command (root, Debian 12): installs what it needs,
# builds release binaries, runs every contender in turn on the same namespace
# topologies (kernel bridge, OVS 3.1 netdev with tap and afxdp ports, vswitchd with TAP
# and AF_XDP ports, kernel VXLAN and vswitchd across two nodes; kube-proxy's iptables
# and nftables rules and vswitchd with 1, 1 000 and 10 000 Services; cluster mode
# against a mock API server with 1 000 to 100 000 Services; an upgrade under traffic,
# takeover against restart), tears everything down, and writes the tables into
# docs/BENCHMARKS.md (between its packet-rate, service-scale, service-sync and takeover
# markers) and the plot to docs/packet-rate.png.
#   benches/packet-rate.sh            # 3 runs of 5 s per figure (about 15 minutes)
#   benches/packet-rate.sh --smoke    # 1 run of 1 s each, debug build, writes nothing
#                                     # (CI: every contender still sets up and forwards)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

if [[ ${1:-} == --smoke ]]; then
  cargo build --locked -p vswitchd -p vswitch-benches --bins
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  target/debug/packet-rate --runs 1 --seconds 1 --plot "$out/packet-rate.png" >"$out/packet-rate.md"
  target/debug/service-scale --runs 1 --seconds 1 --services 1,100 >"$out/service-scale.md"
  target/debug/service-sync --services 100 --changes 3 >"$out/service-sync.md"
  target/debug/takeover --runs 1 --seconds 2 --pods 8 >"$out/takeover.md"
  test -s "$out/packet-rate.png"
  echo "packet-rate harness: every contender set up, measured and torn down"
  exit 0
fi

cargo build --release --locked -p vswitchd -p vswitch-benches --bins
target/release/packet-rate --runs 3 --seconds 5 --write docs/BENCHMARKS.md --plot docs/packet-rate.png
target/release/service-scale --runs 3 --seconds 5 --write docs/BENCHMARKS.md
target/release/service-sync --write docs/BENCHMARKS.md
target/release/takeover --runs 3 --seconds 5 --write docs/BENCHMARKS.md
