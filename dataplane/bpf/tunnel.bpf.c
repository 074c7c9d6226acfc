// SPDX-License-Identifier: Apache-2.0
//
// The tunnel port's two tc programs. The switch reads and writes VXLAN through a TAP
// device of its own (the tunnel TAP), whose virtio-net header describes UDP-tunnel GSO
// and partial checksums; these programs connect that TAP to the node's underlay
// interface without the node's IP stack in between:
//
// - vswitch_tunnel_in, on the underlay interface's ingress: IPv4 UDP to the VXLAN port
//   of the node's address (not a fragment) is redirected to the tunnel TAP, whose
//   reader is the switch. The skb keeps its offload state (a GSO super-packet from a
//   kernel vxlan peer on a veth, a partial inner checksum) and the TAP's header tells
//   the switch. Everything else goes on to the kernel untouched.
// - vswitch_tunnel_out, on the tunnel TAP's ingress (what the switch writes): sent out
//   of the underlay interface toward the route to its outer IPv4 destination, with the
//   neighbour's MAC filled in (bpf_redirect_neigh), so a super-packet is segmented at
//   that device, or not at all where it can carry it (a veth), as the kernel's own
//   vxlan device's output is.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef PACKET_HOST
#define PACKET_HOST 0
#endif

struct tunnel_config {
	__be32 node_ip;
	__u32 tap_ifindex;
	__u32 underlay_ifindex;
	__u16 udp_port; // host order
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tunnel_config);
} config SEC(".maps");

// Per-CPU counters, summed by the switch: what the programs did.
enum {
	TO_SWITCH = 0,   // redirected to the tunnel TAP
	TO_UNDERLAY = 1, // sent toward another node
	NOT_SENT = 2,    // dropped: not IPv4, or the programs are not configured yet
	COUNTERS = 3,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);
	if (c)
		*c += 1;
}

SEC("tc")
int vswitch_tunnel_in(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct tunnel_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !cfg->tap_ifindex)
		return TC_ACT_OK;
	if (skb->protocol != bpf_htons(ETH_P_IP) || skb->pkt_type != PACKET_HOST)
		return TC_ACT_OK;
	struct iphdr ip;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return TC_ACT_OK;
	if (ip.protocol != IPPROTO_UDP || ip.ihl < 5 || ip.daddr != cfg->node_ip)
		return TC_ACT_OK;
	// Fragments carry no ports past the first; the kernel reassembles them.
	if (ip.frag_off & bpf_htons(0x3fff))
		return TC_ACT_OK;
	__be16 dport;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + ip.ihl * 4 + 2, &dport, sizeof(dport)) < 0)
		return TC_ACT_OK;
	if (dport != bpf_htons(cfg->udp_port))
		return TC_ACT_OK;
	count(TO_SWITCH);
	return bpf_redirect(cfg->tap_ifindex, 0);
}

SEC("tc")
int vswitch_tunnel_out(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct tunnel_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || !cfg->underlay_ifindex || skb->protocol != bpf_htons(ETH_P_IP)) {
		count(NOT_SENT);
		return TC_ACT_SHOT;
	}
	count(TO_UNDERLAY);
	// The kernel looks up the route to the outer destination through the underlay
	// interface and its neighbour (queueing the packet while it resolves one), and
	// writes both MACs.
	return bpf_redirect_neigh(cfg->underlay_ifindex, 0, 0, 0);
}

char _license[] SEC("license") = "Apache-2.0";
