//! Why a frame was dropped: one enum for the whole data path.
//!
//! Every frame the switch does not deliver ends in exactly one of these, counted per
//! ingress port and per worker. Metrics and `vswitchctl stats` iterate
//! [`DropReason::ALL`], so a reason added here is visible everywhere without more code.

macro_rules! drop_reasons {
    ($( #[doc = $doc:literal] $variant:ident => $name:literal, )*) => {
        /// The reason a frame was dropped.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum DropReason {
            $( #[doc = $doc] $variant, )*
        }

        impl DropReason {
            /// Every reason, in declaration order (the order of `as usize`).
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant),*];
            /// Number of reasons; sizes per-reason counter arrays.
            pub const COUNT: usize = Self::ALL.len();

            /// Stable snake_case name used in metrics labels and the API.
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }

            /// One-line explanation for operators.
            pub fn description(self) -> &'static str {
                match self { $(DropReason::$variant => $doc.trim_start(),)* }
            }

            /// Looks a reason up by its [`name`](Self::name).
            pub fn from_name(name: &str) -> Option<DropReason> {
                Self::ALL.iter().copied().find(|r| r.name() == name)
            }
        }
    };
}

drop_reasons! {
    /// Shorter than an Ethernet header (14 bytes).
    TruncatedEthernet => "truncated_ethernet",
    /// An 802.1Q tag cut short.
    TruncatedVlan => "truncated_vlan",
    /// Carries an 802.1Q tag; pod and host ports are untagged access ports.
    VlanTagged => "vlan_tagged",
    /// Carries stacked VLAN tags (QinQ / 802.1ad), which no port accepts.
    StackedVlan => "stacked_vlan",
    /// EtherType the switch does not forward (only ARP, IPv4 and IPv6 are).
    UnknownEthertype => "unknown_ethertype",
    /// ARP packet shorter than its address lengths require.
    TruncatedArp => "truncated_arp",
    /// ARP for something other than IPv4 over Ethernet.
    UnsupportedArp => "unsupported_arp",
    /// Shorter than an IPv4 header, or than its IHL says.
    TruncatedIpv4 => "truncated_ipv4",
    /// IPv4 version or header length field invalid, or a malformed authentication header.
    BadIpv4Header => "bad_ipv4_header",
    /// IPv4 total length smaller than the header or larger than the frame.
    BadIpv4Length => "bad_ipv4_length",
    /// IPv4 header checksum does not verify.
    BadIpv4Checksum => "bad_ipv4_checksum",
    /// Shorter than the fixed IPv6 header.
    TruncatedIpv6 => "truncated_ipv6",
    /// IPv6 version field invalid.
    BadIpv6Header => "bad_ipv6_header",
    /// IPv6 payload length larger than the frame.
    BadIpv6Length => "bad_ipv6_length",
    /// IPv6 extension header chain malformed or cut short.
    BadIpv6ExtHeader => "bad_ipv6_ext_header",
    /// TCP header cut short.
    TruncatedTcp => "truncated_tcp",
    /// TCP data offset smaller than the minimum header.
    BadTcpHeader => "bad_tcp_header",
    /// UDP header cut short.
    TruncatedUdp => "truncated_udp",
    /// UDP length field inconsistent with the IP payload.
    BadUdpLength => "bad_udp_length",
    /// ICMP or ICMPv6 header cut short.
    TruncatedIcmp => "truncated_icmp",
    /// VXLAN header cut short (fewer than 8 bytes after the outer UDP header).
    TruncatedVxlan => "truncated_vxlan",
    /// VXLAN header without the I flag (no valid VNI, RFC 7348 §5).
    BadVxlanFlags => "bad_vxlan_flags",
    /// VXLAN with a VNI other than the overlay's.
    VxlanWrongVni => "vxlan_wrong_vni",
    /// VXLAN from an address that is no known node (or with no overlay configured).
    VxlanUnknownNode => "vxlan_unknown_node",
    /// Decapsulated frame whose source is outside the sending node's pod CIDRs.
    VxlanSpoofedSource => "vxlan_spoofed_source",
    /// Decapsulated frame that is not IPv4 to the gateway MAC (only routed traffic crosses).
    OverlayBadInner => "overlay_bad_inner",
    /// Decapsulated frame for neither a local pod nor the gateway (no transit).
    OverlayNotLocal => "overlay_not_local",
    /// A pod's UDP to a node's VXLAN port: VXLAN is only taken between nodes, never from pods.
    OverlayFromPod => "overlay_from_pod",
    /// Toward another node, but no underlay port is up.
    OverlayNoUnderlay => "overlay_no_underlay",
    /// Toward another node, too big for the underlay and fragmentation not allowed here.
    OverlayMtuExceeded => "overlay_mtu_exceeded",
    /// From the tunnel TAP but not VXLAN to this node (the node writing into the TAP itself).
    TunnelNotVxlan => "tunnel_not_vxlan",
    /// Longer than the ingress port's MTU allows (for a TSO/GSO super-frame: its segments).
    OversizedFrame => "oversized_frame",
    /// Virtio-net offload header inconsistent with its frame (offsets, GSO type, segment count).
    BadOffloadHeader => "bad_offload_header",
    /// Source MAC is a multicast or broadcast address.
    MulticastSourceMac => "multicast_source_mac",
    /// Source MAC is not the one bound to the pod's port (anti-spoofing).
    SpoofedSourceMac => "spoofed_source_mac",
    /// Source IP is not one bound to the pod's port (anti-spoofing).
    SpoofedSourceIp => "spoofed_source_ip",
    /// ARP sender MAC or IP is not bound to the pod's port (anti-spoofing).
    SpoofedArpSender => "spoofed_arp_sender",
    /// ARP request for an address the switch does not know (policy: drop).
    ArpUnknownTarget => "arp_unknown_target",
    /// Gratuitous ARP or address probe for the sender's own address: learned, not forwarded.
    ArpForSelf => "arp_for_self",
    /// Arrived on a port that is not (or no longer) in the tables.
    UnknownIngressPort => "unknown_ingress_port",
    /// Destination MAC lives behind the port the frame came in on.
    DestinationIsIngress => "destination_is_ingress",
    /// Broadcast, multicast or unknown unicast with no other port in the segment.
    NoFloodTargets => "no_flood_targets",
    /// Unicast to a MAC the segment neither registered nor learned (policy: drop).
    UnknownUnicast => "unknown_unicast",
    /// Over the ingress port's flood budget (storm control).
    StormControl => "storm_control",
    /// Longer than the egress port's MTU allows.
    EgressMtuExceeded => "egress_mtu_exceeded",
    /// The egress port was removed while the frame was in flight.
    EgressPortGone => "egress_port_gone",
    /// The ring to the worker that owns the egress port was full.
    HandoffQueueFull => "handoff_queue_full",
    /// A `Local` traffic policy and no endpoint on this node (kube-proxy drops these).
    ServiceNoLocalEndpoints => "service_no_local_endpoints",
    /// A translated packet's destination is neither a local pod nor a known client.
    ServiceNoRoute => "service_no_route",
    /// An IP fragment to a Service VIP (ports are only in the first; not translated).
    ServiceFragment => "service_fragment",
    /// The connection-tracking table is full: new Service flows are refused.
    ConntrackFull => "conntrack_full",
    /// No free source port for a new flow's reply tuple.
    ConntrackClash => "conntrack_clash",
    /// The TTL ran out at the switch (a routed hop).
    TtlExpired => "ttl_expired",
    /// The egress port's queue refused the frame (full or failed).
    TxFailed => "tx_failed",
    /// The egress port already had its maximum of frames waiting in this poll round.
    TxBacklogFull => "tx_backlog_full",
}

impl From<crate::wire::Error> for DropReason {
    /// Each way a header can be wrong is dropped under its own reason.
    #[inline]
    fn from(e: crate::wire::Error) -> DropReason {
        use crate::wire::Error as W;
        match e {
            W::TruncatedEthernet => DropReason::TruncatedEthernet,
            W::TruncatedVlan => DropReason::TruncatedVlan,
            W::StackedVlan => DropReason::StackedVlan,
            W::UnknownEthertype => DropReason::UnknownEthertype,
            W::TruncatedArp => DropReason::TruncatedArp,
            W::UnsupportedArp => DropReason::UnsupportedArp,
            W::TruncatedIpv4 => DropReason::TruncatedIpv4,
            W::BadIpv4Header => DropReason::BadIpv4Header,
            W::BadIpv4Length => DropReason::BadIpv4Length,
            W::BadIpv4Checksum => DropReason::BadIpv4Checksum,
            W::TruncatedIpv6 => DropReason::TruncatedIpv6,
            W::BadIpv6Header => DropReason::BadIpv6Header,
            W::BadIpv6Length => DropReason::BadIpv6Length,
            W::BadIpv6ExtHeader => DropReason::BadIpv6ExtHeader,
            W::TruncatedTcp => DropReason::TruncatedTcp,
            W::BadTcpHeader => DropReason::BadTcpHeader,
            W::TruncatedUdp => DropReason::TruncatedUdp,
            W::BadUdpLength => DropReason::BadUdpLength,
            W::TruncatedIcmp => DropReason::TruncatedIcmp,
            W::TruncatedVxlan => DropReason::TruncatedVxlan,
            W::BadVxlanFlags => DropReason::BadVxlanFlags,
            W::Oversized => DropReason::OversizedFrame,
            W::BadOffloadHeader => DropReason::BadOffloadHeader,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "ALL order must match discriminants");
            assert!(seen.insert(r.name()), "duplicate name {}", r.name());
            assert_eq!(DropReason::from_name(r.name()), Some(*r));
            assert!(!r.description().is_empty());
            assert!(r.name().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
    }

    #[test]
    fn wire_errors_map_to_distinct_reasons() {
        use crate::wire::Error as W;
        let all = [
            W::TruncatedEthernet,
            W::TruncatedVlan,
            W::StackedVlan,
            W::UnknownEthertype,
            W::TruncatedArp,
            W::UnsupportedArp,
            W::TruncatedIpv4,
            W::BadIpv4Header,
            W::BadIpv4Length,
            W::BadIpv4Checksum,
            W::TruncatedIpv6,
            W::BadIpv6Header,
            W::BadIpv6Length,
            W::BadIpv6ExtHeader,
            W::TruncatedTcp,
            W::BadTcpHeader,
            W::TruncatedUdp,
            W::BadUdpLength,
            W::TruncatedIcmp,
            W::TruncatedVxlan,
            W::BadVxlanFlags,
            W::Oversized,
            W::BadOffloadHeader,
        ];
        let reasons: std::collections::HashSet<DropReason> =
            all.iter().map(|e| DropReason::from(*e)).collect();
        assert_eq!(reasons.len(), all.len());
    }
}
