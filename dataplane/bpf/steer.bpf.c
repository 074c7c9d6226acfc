// SPDX-License-Identifier: Apache-2.0
//
// The uplink's XDP program: hands the switch the frames it serves on the node's
// address — IPv4 TCP/UDP to a port in `ports` (NodePorts, the VXLAN port), and ICMP
// errors about such a flow — and passes everything else to the kernel untouched. On a
// pod's veth (`all` set) it hands the switch every frame.
// A frame is redirected to the AF_XDP socket of the queue it arrived on; a queue
// without a socket (daemon stopped or restarting) passes it to the kernel instead.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

// Key: protocol << 16 | destination port (host order). Value unused.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u8);
} ports SEC(".maps");

struct steer_config {
	__be32 node_ip;
	__u32 all;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct steer_config);
} config SEC(".maps");

static __always_inline int owned(__u8 proto, __u16 port)
{
	__u32 key = ((__u32)proto << 16) | port;
	return bpf_map_lookup_elem(&ports, &key) != 0;
}

SEC("xdp")
int vswitch_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct steer_config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return XDP_PASS;
	if (cfg->all)
		return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl < 5)
		return XDP_PASS;
	if (ip->daddr != cfg->node_ip)
		return XDP_PASS;
	// Fragments carry no ports past the first: all of them go to the kernel.
	if (ip->frag_off & bpf_htons(0x3fff))
		return XDP_PASS;
	__u8 *l4 = (__u8 *)ip + ip->ihl * 4;
	if (l4 + 8 > (__u8 *)end)
		return XDP_PASS;
	int ours = 0;
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
		ours = owned(ip->protocol, ((__u16)l4[2] << 8) | l4[3]);
	} else if (ip->protocol == IPPROTO_ICMP && (l4[0] == 3 || l4[0] == 11)) {
		// Destination unreachable or time exceeded quoting a packet we sent from
		// one of our ports: the quoted header's source port is ours.
		struct iphdr *inner = (void *)(l4 + 8);
		if ((void *)(inner + 1) > end || inner->ihl < 5)
			return XDP_PASS;
		__u8 *inner_l4 = (__u8 *)inner + inner->ihl * 4;
		if (inner_l4 + 2 > (__u8 *)end)
			return XDP_PASS;
		if (inner->protocol == IPPROTO_TCP || inner->protocol == IPPROTO_UDP)
			ours = owned(inner->protocol, ((__u16)inner_l4[0] << 8) | inner_l4[1]);
	}
	if (!ours)
		return XDP_PASS;
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

char _license[] SEC("license") = "Apache-2.0";
