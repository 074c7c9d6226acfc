#!/usr/bin/env bash
# Installs what building, testing and benchmarking vswitch need on Debian 12, as root.
# Idempotent and quiet when everything is already there.
#   scripts/install-deps.sh            # everything the tests and the demo need
set -euo pipefail

apt_packages=(
  # build: C toolchain for -sys crates; clang (BPF target), libclang (bindgen), libelf,
  # zlib, pkg-config and m4 for libbpf-sys (the XDP and tc programs)
  build-essential clang libclang-dev libelf-dev zlib1g-dev pkg-config m4
  # the real network tools the tests and the demo drive
  iproute2 ethtool iputils-ping iperf3 ncat curl tshark nftables iptables netsniff-ng python3-scapy
  # CNI: the reference plugins (host-local IPAM, loopback), and a real runtime to run
  # the plugin under (containerd + runc), with busybox for the test pods' image and
  # protoc for the CRI client's generated code
  containernetworking-plugins containerd runc busybox-static protobuf-compiler
  # measuring: Open vSwitch (the benchmark's OVS contender, started with its own
  # database and sockets, never the system's), and fontconfig with a font for the plot
  valgrind jq openvswitch-switch libfontconfig1-dev fonts-dejavu-core
)

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer no.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# cargo-fuzz runs the fuzz targets (stable Rust, no sanitizer: the crates forbid unsafe
# code outside the kernel-facing modules).
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install --locked --quiet cargo-fuzz --version 0.13.2
fi
