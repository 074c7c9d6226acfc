#!/bin/sh
# The DaemonSet's init step: installs vswitch-cni into the node's CNI bin directory and
# the network configuration into its conf directory, each atomically (written next to
# its destination, then renamed over it), so a runtime never executes a half-copied
# binary or reads a half-written conflist.
#   CNI_BIN_DIR  (default /host/opt/cni/bin)   CNI_CONF_DIR  (default /host/etc/cni/net.d)
#   CNI_PLUGIN   (default /opt/vswitch/bin/vswitch-cni)
#   CNI_CONFLIST (default /etc/vswitch/10-vswitch.conflist)
set -eu
bin_dir=${CNI_BIN_DIR:-/host/opt/cni/bin}
conf_dir=${CNI_CONF_DIR:-/host/etc/cni/net.d}
plugin=${CNI_PLUGIN:-/opt/vswitch/bin/vswitch-cni}
conflist=${CNI_CONFLIST:-/etc/vswitch/10-vswitch.conflist}

install_atomically() { # source destination mode
  mkdir -p "$(dirname "$2")"
  tmp="$2.tmp.$$"
  cp "$1" "$tmp"
  chmod "$3" "$tmp"
  mv -f "$tmp" "$2"
}

install_atomically "$plugin" "$bin_dir/vswitch-cni" 0755
install_atomically "$conflist" "$conf_dir/$(basename "$conflist")" 0644
echo "installed $bin_dir/vswitch-cni and $conf_dir/$(basename "$conflist")"
