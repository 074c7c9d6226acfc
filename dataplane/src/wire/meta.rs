//! What the parser learns about a frame: compact metadata the stages read instead of
//! parsing again. Offsets count from the first byte of the Ethernet header.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::MacAddr;

/// What the parser learned about one frame. Offsets count from the first byte of the
/// Ethernet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameMeta {
    pub dst_mac: MacAddr,
    pub src_mac: MacAddr,
    /// Tag control information of the single 802.1Q tag, if the frame has one.
    pub vlan_tci: Option<u16>,
    /// Offset of the ARP/IP header.
    pub l3_offset: u16,
    pub net: Net,
}

/// The network layer of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    Arp(ArpMeta),
    Ipv4(Ipv4Meta),
    Ipv6(Ipv6Meta),
    /// Placeholder for a frame the parser rejected; only ever paired with a drop verdict.
    Unparsed,
}

/// An Ethernet/IPv4 ARP packet (the only kind accepted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpMeta {
    pub op: u16,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl ArpMeta {
    /// Announces or probes the sender's own address (gratuitous ARP, RFC 5227 probe).
    pub fn is_for_self(&self) -> bool {
        self.sender_ip == self.target_ip || self.sender_ip.is_unspecified()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Meta {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub ttl: u8,
    /// Header length in bytes, options included (20..=60).
    pub header_len: u8,
    /// The header's total length field: header plus payload, excluding Ethernet padding.
    pub total_len: u16,
    pub dont_fragment: bool,
    pub fragment: Fragment,
    /// Offset of the transport header (after options and any authentication header).
    pub l4_offset: u16,
    pub l4: L4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Meta {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// Protocol after the extension header chain.
    pub next_header: u8,
    pub hop_limit: u8,
    pub fragment: Fragment,
    pub l4_offset: u16,
    pub l4: L4,
}

/// Fragmentation state of an IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// A whole packet.
    None,
    /// Offset zero, more fragments follow: carries the transport header.
    First,
    /// A later fragment: no transport header.
    Later,
}

/// The transport layer, as far as the parser looked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        src_port: u16,
        dst_port: u16,
        /// The flags byte (CWR..FIN), byte 13 of the header.
        flags: u8,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    Icmpv4 {
        icmp_type: u8,
        code: u8,
    },
    Icmpv6 {
        icmp_type: u8,
        code: u8,
    },
    /// Not looked into: a later fragment, or a protocol the switch does not inspect.
    Opaque,
}

impl FrameMeta {
    /// Metadata for a frame the parser rejected.
    pub const UNPARSED: FrameMeta = FrameMeta {
        dst_mac: MacAddr::ZERO,
        src_mac: MacAddr::ZERO,
        vlan_tci: None,
        l3_offset: 0,
        net: Net::Unparsed,
    };

    /// Length of the Ethernet header including a VLAN tag, if any.
    pub fn l2_len(&self) -> usize {
        usize::from(self.l3_offset)
    }
}
