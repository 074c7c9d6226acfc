#!/usr/bin/python3
"""Hostile frames from a pod, for tests/hostile.rs: run inside the attacker pod's
namespace with Debian's python3-scapy.

  hostile_frames.py IFACE MY_MAC MY_IP PEER_MAC PEER_IP GW_MAC NODE_IP COUNT

Sends COUNT copies of each frame below out of IFACE and prints one JSON object:
{"sent": {name: copies}, "expect": {name: drop reason or "forwarded"},
 "unsendable": {name: error}}. Frames the pod's own kernel refuses to send (shorter
than an Ethernet header, say) are listed as unsendable, not counted.
"""

import json
import socket
import sys

from scapy.all import ARP, IP, TCP, UDP, Dot1Q, Ether, IPv6, IPv6ExtHdrRouting, Raw, raw
from scapy.layers.vxlan import VXLAN


def frames(my_mac, my_ip, peer_mac, peer_ip, gw_mac, node_ip):
    eth = Ether(src=my_mac, dst=peer_mac)
    good_ip = IP(src=my_ip, dst=peer_ip)
    udp = raw(eth / good_ip / UDP(sport=4000, dport=9) / Raw(b"x" * 20))

    def patched(frame, offset, value):
        b = bytearray(frame)
        b[offset:offset + len(value)] = value
        return bytes(b)

    yield "runt_10_bytes", bytes(12)[:10], "truncated_ethernet"
    yield "ethernet_only_ipv4_type", raw(Ether(src=my_mac, dst=peer_mac, type=0x0800)), "truncated_ipv4"
    yield "ipv4_ihl_4", patched(udp, 14, b"\x44"), "bad_ipv4_header"
    yield "ipv4_ihl_past_frame", patched(raw(eth / IP(src=my_ip, dst=peer_ip, ihl=15)), 14, b"\x4f"), "truncated_ipv4"
    yield "ipv4_total_length_past_frame", patched(udp, 16, b"\x05\xdc"), "bad_ipv4_length"
    yield "ipv4_total_length_below_header", patched(udp, 16, b"\x00\x10"), "bad_ipv4_length"
    yield "ipv4_bad_checksum", patched(udp, 24, b"\xde\xad"), "bad_ipv4_checksum"
    yield "ipv4_version_5", patched(udp, 14, b"\x55"), "bad_ipv4_header"
    yield "tcp_data_offset_2", raw(eth / good_ip / TCP(sport=4000, dport=80, dataofs=2)), "bad_tcp_header"
    yield "tcp_cut_short", raw(eth / good_ip / TCP(sport=4000, dport=80))[:14 + 20 + 10], "bad_ipv4_length"
    yield "tcp_truncated_header", raw(eth / IP(src=my_ip, dst=peer_ip, proto=6) / Raw(b"\x0f\xa0\x00\x50")), "truncated_tcp"
    yield "udp_length_too_long", patched(udp, 14 + 20 + 4, b"\x01\x00"), "bad_udp_length"
    yield "udp_truncated_header", raw(eth / IP(src=my_ip, dst=peer_ip, proto=17) / Raw(b"\x0f\xa0")), "truncated_udp"
    yield "arp_hlen_8", raw(Ether(src=my_mac, dst="ff:ff:ff:ff:ff:ff") / ARP(hwlen=8, hwsrc=my_mac, psrc=my_ip, pdst=peer_ip)), "unsupported_arp"
    yield "arp_cut_short", raw(Ether(src=my_mac, dst="ff:ff:ff:ff:ff:ff", type=0x0806) / Raw(b"\x00\x01\x08\x00\x06\x04\x00\x01")), "truncated_arp"
    yield "vlan_tagged", raw(Ether(src=my_mac, dst=peer_mac) / Dot1Q(vlan=7) / good_ip / UDP(sport=1, dport=9)), "vlan_tagged"
    yield "vlan_double_tagged", raw(Ether(src=my_mac, dst=peer_mac) / Dot1Q(vlan=7) / Dot1Q(vlan=8) / good_ip / UDP(sport=1, dport=9)), "stacked_vlan"
    yield "unknown_ethertype", raw(Ether(src=my_mac, dst=peer_mac, type=0x88b5) / Raw(b"\x00" * 46)), "unknown_ethertype"
    yield "multicast_source_mac", raw(Ether(src="01:00:5e:00:00:01", dst=peer_mac) / good_ip / UDP(sport=1, dport=9)), "multicast_source_mac"
    yield "spoofed_source_mac", raw(Ether(src="02:00:0a:f4:01:63", dst=peer_mac) / good_ip / UDP(sport=1, dport=9)), "spoofed_source_mac"
    yield "spoofed_source_ip", raw(eth / IP(src=peer_ip, dst=peer_ip) / UDP(sport=1, dport=9)), "spoofed_source_ip"
    yield "spoofed_gateway_arp", raw(Ether(src=my_mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=2, hwsrc=my_mac, psrc="10.244.1.1", pdst=peer_ip)), "spoofed_arp_sender"
    yield "ipv6_routing_header_cut", raw(Ether(src=my_mac, dst=peer_mac) / IPv6(src="fe80::1", dst="fe80::2", nh=43, plen=4) / Raw(b"\x3b\x05\x00\x00")), "bad_ipv6_ext_header"
    yield "ipv6_payload_past_frame", patched(raw(Ether(src=my_mac, dst=peer_mac) / IPv6(src="fe80::1", dst="fe80::2") / UDP(sport=1, dport=9)), 14 + 4, b"\x05\xdc"), "bad_ipv6_length"
    yield "jumbo_over_mtu", raw(eth / good_ip / UDP(sport=4000, dport=9) / Raw(b"j" * 8000)), "oversized_frame"
    vx = Ether(src=my_mac, dst=gw_mac) / IP(src=my_ip, dst=node_ip) / UDP(sport=50000, dport=4789)
    yield "vxlan_to_a_node_bad_flags", raw(vx / VXLAN(flags=0, vni=1) / Ether(src=peer_mac, dst=gw_mac) / IP(src=peer_ip, dst=my_ip)), "overlay_from_pod"
    yield "vxlan_to_a_node_wrong_vni", raw(vx / VXLAN(vni=99) / Ether(src=peer_mac, dst=gw_mac) / IP(src=peer_ip, dst=my_ip)), "overlay_from_pod"
    # Not malformed: an L2 switch forwards fragments, overlapping or not, and options;
    # the receiving pod's kernel judges them.
    frag = eth / IP(src=my_ip, dst=peer_ip, flags="MF", frag=0, proto=17) / Raw(b"f" * 64)
    yield "ipv4_first_fragment", raw(frag), "forwarded"
    yield "ipv4_overlapping_fragment", raw(eth / IP(src=my_ip, dst=peer_ip, frag=2, proto=17) / Raw(b"o" * 64)), "forwarded"
    yield "ipv4_options", raw(eth / IP(src=my_ip, dst=peer_ip, options=b"\x94\x04\x00\x00") / UDP(sport=1, dport=9)), "forwarded"


def main():
    iface, my_mac, my_ip, peer_mac, peer_ip, gw_mac, node_ip, count = sys.argv[1:9]
    count = int(count)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    sent, expect, unsendable = {}, {}, {}
    for name, frame, reason in frames(my_mac, my_ip, peer_mac, peer_ip, gw_mac, node_ip):
        try:
            for _ in range(count):
                s.send(frame)
        except OSError as e:
            unsendable[name] = str(e)
            continue
        sent[name] = count
        expect[name] = reason
    print(json.dumps({"sent": sent, "expect": expect, "unsendable": unsendable}))


if __name__ == "__main__":
    main()
