//! One pass over a frame: validate every layer we understand and record what later
//! stages need (addresses, ports, offsets) in a compact [`FrameMeta`].
//!
//! Layers are sliced with `etherparse`; each of its length or content errors maps to
//! exactly one [`DropReason`]. Nothing here allocates or panics on any input.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::LenSource;
use etherparse::err::{Layer, LenError};
use etherparse::{
    ArpPacketSlice, EtherType, Ethernet2Slice, IpNumber, Ipv4HeaderSlice, Ipv4Slice, Ipv6Slice,
    SingleVlanSlice, TcpSlice, UdpSlice,
};

use super::MacAddr;
use super::checksum;
use crate::drop_reason::DropReason;
use crate::frame::MAX_FRAME_LEN;

pub const ETHERNET_HEADER_LEN: usize = 14;
pub const VLAN_TAG_LEN: usize = 4;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const ARP_OP_REQUEST: u16 = 1;
pub const ARP_OP_REPLY: u16 = 2;

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

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

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

/// Byte offset of `inner` within `outer`. `inner` must be a subslice of `outer`.
#[inline]
fn offset_in(outer: &[u8], inner: &[u8]) -> Result<u16, DropReason> {
    u16::try_from(inner.as_ptr() as usize - outer.as_ptr() as usize).map_err(|_| DropReason::OversizedFrame)
}

/// Parses `frame` (starting at its Ethernet header, without FCS).
///
/// Frames longer than [`MAX_FRAME_LEN`] (a 64 KiB IP packet behind a tagged Ethernet header)
/// are rejected as oversized.
#[inline]
pub fn parse(frame: &[u8]) -> Result<FrameMeta, DropReason> {
    let mut meta = FrameMeta::UNPARSED;
    parse_into(frame, &mut meta).map(|()| meta)
}

/// [`parse`] writing into `meta`, which the data path keeps in place across frames:
/// the metadata is not copied on return. On error `meta` is unspecified.
#[inline]
pub fn parse_into(frame: &[u8], meta: &mut FrameMeta) -> Result<(), DropReason> {
    if parse_common_ipv4(frame, meta) {
        return Ok(());
    }
    *meta = parse_with_etherparse(frame)?;
    Ok(())
}

/// The shape nearly every frame on a pod network has — untagged Ethernet II, IPv4
/// without an authentication header, not a later fragment, TCP/UDP/ICMP or an opaque
/// protocol — checked and read directly, with exactly the validation etherparse does.
///
/// Returns `None` for any other shape and for any failed check: [`parse_with_etherparse`]
/// then decides, and names the drop reason. (`parse_common_ipv4` is `common_ipv4` writing in place.) The two are checked against each other by
/// the property test below and by the `parse_frame` fuzz target: whenever this returns
/// `Some`, etherparse returns the same metadata.
#[inline(always)]
fn parse_common_ipv4(frame: &[u8], meta: &mut FrameMeta) -> bool {
    match common_ipv4(frame) {
        Some(m) => {
            *meta = m;
            true
        }
        None => false,
    }
}

#[inline(always)]
fn common_ipv4(frame: &[u8]) -> Option<FrameMeta> {
    let (eth, l3) = frame.split_first_chunk::<ETHERNET_HEADER_LEN>()?;
    if eth[12..14] != ETHERTYPE_IPV4.to_be_bytes() || frame.len() > MAX_FRAME_LEN {
        return None;
    }
    let fixed: &[u8; 20] = l3.first_chunk()?;
    let (version, ihl) = (fixed[0] >> 4, usize::from(fixed[0] & 0x0f) * 4);
    let total_len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
    if version != 4 || ihl < 20 || ihl > l3.len() || total_len < ihl || total_len > l3.len() {
        return None;
    }
    if checksum::checksum(&l3[..ihl]) != 0 {
        return None;
    }
    let flags_offset = u16::from_be_bytes([fixed[6], fixed[7]]);
    let protocol = fixed[9];
    if flags_offset & 0x1fff != 0 || protocol == IpNumber::AUTHENTICATION_HEADER.0 {
        return None;
    }
    let l4 = &l3[ihl..total_len];
    let l4_meta = match protocol {
        IPPROTO_TCP => {
            let h: &[u8; 20] = l4.first_chunk()?;
            let data_offset = usize::from(h[12] >> 4) * 4;
            if data_offset < 20 || data_offset > l4.len() {
                return None;
            }
            L4::Tcp {
                src_port: u16::from_be_bytes([h[0], h[1]]),
                dst_port: u16::from_be_bytes([h[2], h[3]]),
                flags: h[13],
            }
        }
        IPPROTO_UDP => {
            let h: &[u8; 8] = l4.first_chunk()?;
            let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
            // A first fragment's UDP length is the whole datagram's.
            let first_fragment = flags_offset & 0x2000 != 0;
            let fits = if first_fragment { len >= l4.len() } else { len <= l4.len() };
            if len < 8 || !fits {
                return None;
            }
            L4::Udp { src_port: u16::from_be_bytes([h[0], h[1]]), dst_port: u16::from_be_bytes([h[2], h[3]]) }
        }
        IPPROTO_ICMP => {
            let h: &[u8; 4] = l4.first_chunk()?;
            L4::Icmpv4 { icmp_type: h[0], code: h[1] }
        }
        _ => L4::Opaque,
    };
    Some(FrameMeta {
        dst_mac: MacAddr([eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]]),
        src_mac: MacAddr([eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]]),
        vlan_tci: None,
        l3_offset: ETHERNET_HEADER_LEN as u16,
        net: Net::Ipv4(Ipv4Meta {
            src: Ipv4Addr::new(fixed[12], fixed[13], fixed[14], fixed[15]),
            dst: Ipv4Addr::new(fixed[16], fixed[17], fixed[18], fixed[19]),
            protocol,
            ttl: fixed[8],
            header_len: ihl as u8,
            total_len: total_len as u16,
            dont_fragment: flags_offset & 0x4000 != 0,
            fragment: if flags_offset & 0x2000 != 0 { Fragment::First } else { Fragment::None },
            l4_offset: (ETHERNET_HEADER_LEN + ihl) as u16,
            l4: l4_meta,
        }),
    })
}

/// The reference parser: every layer sliced by etherparse, every failure named.
pub fn parse_with_etherparse(frame: &[u8]) -> Result<FrameMeta, DropReason> {
    if frame.len() > MAX_FRAME_LEN {
        return Err(DropReason::OversizedFrame);
    }
    let eth = Ethernet2Slice::from_slice_without_fcs(frame).map_err(|_| DropReason::TruncatedEthernet)?;
    let dst_mac = MacAddr(eth.destination());
    let src_mac = MacAddr(eth.source());

    let mut ether_type = eth.ether_type();
    let mut l3 = eth.payload_slice();
    let mut vlan_tci = None;
    if ether_type == EtherType(ETHERTYPE_QINQ) {
        return Err(DropReason::StackedVlan);
    }
    if ether_type == EtherType::VLAN_TAGGED_FRAME {
        let tag = SingleVlanSlice::from_slice(l3).map_err(|_| DropReason::TruncatedVlan)?;
        ether_type = tag.ether_type();
        if ether_type == EtherType::VLAN_TAGGED_FRAME || ether_type == EtherType(ETHERTYPE_QINQ) {
            return Err(DropReason::StackedVlan);
        }
        let tci = tag.header_slice();
        vlan_tci = Some(u16::from_be_bytes([tci[0], tci[1]]));
        l3 = tag.payload_slice();
    }
    let l3_offset = offset_in(frame, l3)?;

    let net = match ether_type.0 {
        ETHERTYPE_ARP => Net::Arp(parse_arp(l3)?),
        ETHERTYPE_IPV4 => Net::Ipv4(parse_ipv4(frame, l3)?),
        ETHERTYPE_IPV6 => Net::Ipv6(parse_ipv6(frame, l3)?),
        _ => return Err(DropReason::UnknownEthertype),
    };
    Ok(FrameMeta { dst_mac, src_mac, vlan_tci, l3_offset, net })
}

fn parse_arp(l3: &[u8]) -> Result<ArpMeta, DropReason> {
    let arp = ArpPacketSlice::from_slice(l3).map_err(|_| DropReason::TruncatedArp)?;
    let b = arp.slice();
    // Hardware type Ethernet (1), protocol IPv4, 6-byte MACs, 4-byte addresses.
    if b[0..6] != [0x00, 0x01, 0x08, 0x00, 6, 4] {
        return Err(DropReason::UnsupportedArp);
    }
    let op = u16::from_be_bytes([b[6], b[7]]);
    Ok(ArpMeta {
        op,
        sender_mac: MacAddr::from_bytes(&b[8..14]),
        sender_ip: Ipv4Addr::new(b[14], b[15], b[16], b[17]),
        target_mac: MacAddr::from_bytes(&b[18..24]),
        target_ip: Ipv4Addr::new(b[24], b[25], b[26], b[27]),
    })
}

fn parse_ipv4(frame: &[u8], l3: &[u8]) -> Result<Ipv4Meta, DropReason> {
    use etherparse::err::ipv4::HeaderSliceError;
    // The header alone (version, IHL, length): the common case needs no more slicing.
    let header = Ipv4HeaderSlice::from_slice(l3).map_err(|e| match e {
        HeaderSliceError::Len(_) => DropReason::TruncatedIpv4,
        HeaderSliceError::Content(_) => DropReason::BadIpv4Header,
    })?;
    let hdr = header.slice();
    let total_len = usize::from(header.total_len());
    if total_len < hdr.len() || total_len > l3.len() {
        return Err(DropReason::BadIpv4Length);
    }
    if checksum::checksum(hdr) != 0 {
        return Err(DropReason::BadIpv4Checksum);
    }
    let (mut protocol, mut payload) = (header.protocol(), &l3[hdr.len()..total_len]);
    if protocol == IpNumber::AUTHENTICATION_HEADER {
        // Rare: let etherparse walk the authentication header to the real payload.
        let ip = Ipv4Slice::from_slice(l3).map_err(|_| DropReason::BadIpv4Header)?;
        (protocol, payload) = (ip.payload().ip_number, ip.payload().payload);
    }
    let fragment = match (header.fragments_offset().value(), header.more_fragments()) {
        (0, false) => Fragment::None,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    };
    let l4 = if fragment == Fragment::Later {
        L4::Opaque
    } else {
        parse_l4(protocol, payload, true, fragment == Fragment::First)?
    };
    Ok(Ipv4Meta {
        src: header.source_addr(),
        dst: header.destination_addr(),
        protocol: protocol.0,
        ttl: header.ttl(),
        header_len: hdr.len() as u8,
        total_len: total_len as u16,
        dont_fragment: header.dont_fragment(),
        fragment,
        l4_offset: offset_in(frame, payload)?,
        l4,
    })
}

fn parse_ipv6(frame: &[u8], l3: &[u8]) -> Result<Ipv6Meta, DropReason> {
    use etherparse::err::ipv6::SliceError;
    let ip = Ipv6Slice::from_slice(l3).map_err(|e| match e {
        SliceError::Len(LenError { layer: Layer::Ipv6Header, .. }) => DropReason::TruncatedIpv6,
        SliceError::Len(LenError { layer: Layer::Ipv6Packet, .. }) => DropReason::BadIpv6Length,
        SliceError::Len(_) | SliceError::Exts(_) => DropReason::BadIpv6ExtHeader,
        SliceError::Header(_) => DropReason::BadIpv6Header,
    })?;
    let header = ip.header();
    let payload = ip.payload();
    let fragment = if !ip.is_payload_fragmented() {
        Fragment::None
    } else {
        let first = ip.extensions().clone().into_iter().any(|ext| {
            matches!(ext, etherparse::Ipv6ExtensionSlice::Fragment(f) if f.fragment_offset().value() == 0)
        });
        if first { Fragment::First } else { Fragment::Later }
    };
    let l4 = if fragment == Fragment::Later {
        L4::Opaque
    } else {
        parse_l4(payload.ip_number, payload.payload, false, fragment == Fragment::First)?
    };
    Ok(Ipv6Meta {
        src: header.source_addr(),
        dst: header.destination_addr(),
        next_header: payload.ip_number.0,
        hop_limit: header.hop_limit(),
        fragment,
        l4_offset: offset_in(frame, payload.payload)?,
        l4,
    })
}

/// The transport header at the start of `l4`. In a first fragment (`first_fragment`)
/// the UDP length covers the whole datagram, so it may exceed what the fragment carries
/// — but never be shorter.
fn parse_l4(
    protocol: IpNumber,
    l4: &[u8],
    protocol_is_v4: bool,
    first_fragment: bool,
) -> Result<L4, DropReason> {
    match protocol.0 {
        IPPROTO_TCP => {
            use etherparse::err::tcp::{HeaderError, HeaderSliceError};
            let tcp = TcpSlice::from_slice(l4).map_err(|e| match e {
                HeaderSliceError::Len(_) => DropReason::TruncatedTcp,
                HeaderSliceError::Content(HeaderError::DataOffsetTooSmall { .. }) => DropReason::BadTcpHeader,
            })?;
            let h = tcp.header_slice();
            Ok(L4::Tcp { src_port: tcp.source_port(), dst_port: tcp.destination_port(), flags: h[13] })
        }
        IPPROTO_UDP if first_fragment => {
            let [s0, s1, d0, d1, l0, l1, _, _, ..] = *l4 else { return Err(DropReason::TruncatedUdp) };
            let len = usize::from(u16::from_be_bytes([l0, l1]));
            if len < 8 || len < l4.len() {
                return Err(DropReason::BadUdpLength);
            }
            Ok(L4::Udp { src_port: u16::from_be_bytes([s0, s1]), dst_port: u16::from_be_bytes([d0, d1]) })
        }
        IPPROTO_UDP => {
            let udp = UdpSlice::from_slice(l4).map_err(|e| match (e.layer, e.len_source) {
                (Layer::UdpHeader, LenSource::Slice) => DropReason::TruncatedUdp,
                _ => DropReason::BadUdpLength,
            })?;
            // etherparse reads a zero length as an IPv6 jumbogram; UDP over IPv4 never is one.
            if udp.length() == 0 && protocol_is_v4 {
                return Err(DropReason::BadUdpLength);
            }
            Ok(L4::Udp { src_port: udp.source_port(), dst_port: udp.destination_port() })
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let [icmp_type, code, _, _, ..] = *l4 else {
                return Err(DropReason::TruncatedIcmp);
            };
            if protocol.0 == IPPROTO_ICMP {
                Ok(L4::Icmpv4 { icmp_type, code })
            } else {
                Ok(L4::Icmpv6 { icmp_type, code })
            }
        }
        _ => Ok(L4::Opaque),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{CAPTURED_TCP_SYN, FrameSpec, arp_request};
    use proptest::prelude::*;

    const A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xb]);

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn udp_over_ipv4() {
        let frame = FrameSpec::udp(A, B, ip("10.0.0.1"), ip("10.0.0.2"), 1234, 53).build();
        let m = parse(&frame).unwrap();
        assert_eq!((m.src_mac, m.dst_mac, m.vlan_tci, m.l3_offset), (A, B, None, 14));
        let Net::Ipv4(v4) = m.net else { panic!("not ipv4: {m:?}") };
        assert_eq!((v4.src, v4.dst, v4.protocol, v4.header_len), (ip("10.0.0.1"), ip("10.0.0.2"), 17, 20));
        assert_eq!(v4.l4_offset, 34);
        assert_eq!(v4.l4, L4::Udp { src_port: 1234, dst_port: 53 });
        assert_eq!(v4.fragment, Fragment::None);
    }

    #[test]
    fn real_captured_tcp_syn() {
        let m = parse(&CAPTURED_TCP_SYN).unwrap();
        assert_eq!(m.src_mac, MacAddr([0x02, 0x00, 0x0a, 0xf4, 0x01, 0x02]));
        let Net::Ipv4(v4) = m.net else { panic!() };
        assert_eq!((v4.src, v4.dst), (ip("10.244.1.2"), ip("10.244.1.3")));
        assert_eq!(v4.l4, L4::Tcp { src_port: 59520, dst_port: 80, flags: TCP_SYN });
        assert!(v4.dont_fragment);
        assert_eq!((v4.ttl, v4.total_len, v4.l4_offset), (64, 60, 34));
    }

    #[test]
    fn ipv4_options_move_l4_offset() {
        let frame = FrameSpec::udp(A, B, ip("10.0.0.1"), ip("10.0.0.2"), 1, 2)
            .ipv4_options(&[0x01, 0x01, 0x01, 0x00]) // NOP NOP NOP EOL
            .build();
        let Net::Ipv4(v4) = parse(&frame).unwrap().net else { panic!() };
        assert_eq!((v4.header_len, v4.l4_offset), (24, 38));
        assert_eq!(v4.l4, L4::Udp { src_port: 1, dst_port: 2 });
    }

    #[test]
    fn vlan_tag_is_recorded() {
        let frame = FrameSpec::udp(A, B, ip("10.0.0.1"), ip("10.0.0.2"), 1, 2).vlan(0x2064).build();
        let m = parse(&frame).unwrap();
        assert_eq!((m.vlan_tci, m.l3_offset), (Some(0x2064), 18));
    }

    #[test]
    fn arp_request_fields() {
        let frame = arp_request(A, ip("10.0.0.1"), ip("10.0.0.254"));
        let Net::Arp(arp) = parse(&frame).unwrap().net else { panic!() };
        assert_eq!(arp.op, ARP_OP_REQUEST);
        assert_eq!((arp.sender_mac, arp.sender_ip, arp.target_ip), (A, ip("10.0.0.1"), ip("10.0.0.254")));
        assert!(!arp.is_for_self());
    }

    #[test]
    fn ipv6_with_extension_headers_and_fragments() {
        let src: Ipv6Addr = "fd00::1".parse().unwrap();
        let dst: Ipv6Addr = "fd00::2".parse().unwrap();
        let frame = FrameSpec::udp6(A, B, src, dst, 7, 8).ipv6_hop_by_hop().build();
        let Net::Ipv6(v6) = parse(&frame).unwrap().net else { panic!() };
        assert_eq!((v6.src, v6.dst, v6.next_header), (src, dst, IPPROTO_UDP));
        assert_eq!(v6.l4_offset, 14 + 40 + 8);
        assert_eq!(v6.l4, L4::Udp { src_port: 7, dst_port: 8 });

        let later = FrameSpec::udp6(A, B, src, dst, 7, 8).ipv6_fragment(8, false).build();
        let Net::Ipv6(v6) = parse(&later).unwrap().net else { panic!() };
        assert_eq!((v6.fragment, v6.l4), (Fragment::Later, L4::Opaque));
        let first = FrameSpec::udp6(A, B, src, dst, 7, 8).ipv6_fragment(0, true).build();
        let Net::Ipv6(v6) = parse(&first).unwrap().net else { panic!() };
        assert_eq!(v6.fragment, Fragment::First);
        assert_eq!(v6.l4, L4::Udp { src_port: 7, dst_port: 8 });
    }

    #[test]
    fn ipv4_fragments() {
        let first = FrameSpec::udp(A, B, ip("10.0.0.1"), ip("10.0.0.2"), 1, 2).ipv4_fragment(0, true).build();
        let Net::Ipv4(v4) = parse(&first).unwrap().net else { panic!() };
        assert_eq!(v4.fragment, Fragment::First);
        let later =
            FrameSpec::udp(A, B, ip("10.0.0.1"), ip("10.0.0.2"), 1, 2).ipv4_fragment(185, false).build();
        let Net::Ipv4(v4) = parse(&later).unwrap().net else { panic!() };
        assert_eq!((v4.fragment, v4.l4), (Fragment::Later, L4::Opaque));
    }

    /// The first fragment of a large UDP datagram carries a UDP length longer than
    /// itself (the whole datagram's): forwarded, not a bad length (found by the hostile
    /// frames test: fragmented DNS or NFS replies would have been dropped). Shorter than
    /// the fragment's own payload is still wrong. Both parsers agree.
    #[test]
    fn first_fragments_carry_the_whole_datagrams_udp_length() {
        let frag = FrameSpec::udp(A, B, ip("10.0.0.1"), ip("10.0.0.2"), 1, 2)
            .payload(&[9; 1000])
            .ipv4_fragment(0, true)
            .build();
        let with_len = |len: u16| {
            let mut f = frag.clone();
            f[38..40].copy_from_slice(&len.to_be_bytes());
            f
        };
        for frame in [with_len(4008), with_len(1008)] {
            let m = parse(&frame).expect("a first fragment parses");
            assert_eq!(parse_with_etherparse(&frame), Ok(m), "both parsers");
            let Net::Ipv4(v4) = m.net else { panic!() };
            assert_eq!((v4.fragment, v4.l4), (Fragment::First, L4::Udp { src_port: 1, dst_port: 2 }));
        }
        assert_eq!(parse(&with_len(500)), Err(DropReason::BadUdpLength));
        assert_eq!(parse_with_etherparse(&with_len(500)), Err(DropReason::BadUdpLength));
        assert_eq!(parse(&with_len(4)), Err(DropReason::BadUdpLength));
    }

    #[test]
    fn icmp_and_tcp_flags() {
        let ping = FrameSpec::icmp_echo(A, B, ip("10.0.0.1"), ip("10.0.0.2"), 9).build();
        let Net::Ipv4(v4) = parse(&ping).unwrap().net else { panic!() };
        assert_eq!(v4.l4, L4::Icmpv4 { icmp_type: 8, code: 0 });
        let rst = FrameSpec::tcp(A, B, ip("10.0.0.1"), ip("10.0.0.2"), 5, 6, TCP_RST | TCP_ACK).build();
        let Net::Ipv4(v4) = parse(&rst).unwrap().net else { panic!() };
        assert_eq!(v4.l4, L4::Tcp { src_port: 5, dst_port: 6, flags: TCP_RST | TCP_ACK });
    }

    /// Every malformation maps to its own reason.
    #[test]
    fn malformed_frames_have_named_reasons() {
        let udp = || FrameSpec::udp(A, B, ip("10.0.0.1"), ip("10.0.0.2"), 1, 2);
        let good = udp().build();
        let cases: Vec<(&str, Vec<u8>, DropReason)> = vec![
            ("empty", vec![], DropReason::TruncatedEthernet),
            ("13 bytes", good[..13].to_vec(), DropReason::TruncatedEthernet),
            ("ethernet only", good[..14].to_vec(), DropReason::TruncatedIpv4),
            ("half an ip header", good[..24].to_vec(), DropReason::TruncatedIpv4),
            ("ip without udp", good[..34].to_vec(), DropReason::BadIpv4Length),
            ("bad version", patch(&good, 14, 0x65), DropReason::BadIpv4Header),
            ("ihl 4", patch(&good, 14, 0x44), DropReason::BadIpv4Header),
            ("total length beyond frame", patch16(&good, 16, 2000), DropReason::BadIpv4Length),
            ("total length below header", patch16(&good, 16, 10), DropReason::BadIpv4Length),
            ("bad checksum", patch(&good, 24, good[24] ^ 0xff), DropReason::BadIpv4Checksum),
            ("unknown ethertype", patch16(&good, 12, 0x88cc), DropReason::UnknownEthertype),
            ("qinq", patch16(&good, 12, ETHERTYPE_QINQ), DropReason::StackedVlan),
            ("double tag", udp().vlan(5).vlan(6).build(), DropReason::StackedVlan),
            ("tag cut short", udp().vlan(5).build()[..16].to_vec(), DropReason::TruncatedVlan),
            ("udp length too big", fix_ip_csum(patch16(&good, 38, 200)), DropReason::BadUdpLength),
            ("udp length too small", fix_ip_csum(patch16(&good, 38, 4)), DropReason::BadUdpLength),
            ("udp length zero", fix_ip_csum(patch16(&good, 38, 0)), DropReason::BadUdpLength),
            ("udp cut short", fix_ip_len(good[..40].to_vec()), DropReason::TruncatedUdp),
            (
                "tcp data offset 4",
                patch(&FrameSpec::tcp(A, B, ip("1.1.1.1"), ip("2.2.2.2"), 1, 2, 0).build(), 46, 0x40),
                DropReason::BadTcpHeader,
            ),
            (
                "tcp cut short",
                fix_ip_len(
                    FrameSpec::tcp(A, B, ip("1.1.1.1"), ip("2.2.2.2"), 1, 2, 0).build()[..44].to_vec(),
                ),
                DropReason::TruncatedTcp,
            ),
            (
                "icmp cut short",
                fix_ip_len(
                    FrameSpec::icmp_echo(A, B, ip("1.1.1.1"), ip("2.2.2.2"), 1).build()[..36].to_vec(),
                ),
                DropReason::TruncatedIcmp,
            ),
            (
                "arp cut short",
                arp_request(A, ip("1.1.1.1"), ip("1.1.1.2"))[..30].to_vec(),
                DropReason::TruncatedArp,
            ),
            (
                "arp for ipv6",
                patch16(&arp_request(A, ip("1.1.1.1"), ip("1.1.1.2")), 16, 0x86dd),
                DropReason::UnsupportedArp,
            ),
            (
                "ipv6 cut short",
                FrameSpec::udp6(A, B, "fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), 1, 2).build()
                    [..40]
                    .to_vec(),
                DropReason::TruncatedIpv6,
            ),
            (
                "ipv6 payload length beyond frame",
                patch16(
                    &FrameSpec::udp6(A, B, "fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), 1, 2)
                        .build(),
                    18,
                    900,
                ),
                DropReason::BadIpv6Length,
            ),
            (
                "ipv6 bad version",
                patch(
                    &FrameSpec::udp6(A, B, "fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), 1, 2)
                        .build(),
                    14,
                    0x40,
                ),
                DropReason::BadIpv6Header,
            ),
            (
                "ipv6 hop-by-hop header longer than the packet",
                patch(
                    &FrameSpec::udp6(A, B, "fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), 1, 2)
                        .ipv6_hop_by_hop()
                        .build(),
                    14 + 40 + 1,
                    200,
                ),
                DropReason::BadIpv6ExtHeader,
            ),
        ];
        for (what, frame, reason) in cases {
            assert_eq!(parse(&frame), Err(reason), "{what}");
        }
    }

    #[test]
    fn every_prefix_of_valid_frames_is_classified_without_panic() {
        let frames = [
            FrameSpec::udp(A, B, ip("10.0.0.1"), ip("10.0.0.2"), 1, 2).vlan(3).build(),
            FrameSpec::tcp(A, B, ip("10.0.0.1"), ip("10.0.0.2"), 1, 2, TCP_SYN).build(),
            FrameSpec::udp6(A, B, "fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), 1, 2)
                .ipv6_hop_by_hop()
                .build(),
            arp_request(A, ip("1.1.1.1"), ip("1.1.1.2")),
        ];
        for frame in frames {
            assert!(parse(&frame).is_ok());
            for len in 0..frame.len() {
                let _ = parse(&frame[..len]);
            }
        }
    }

    fn mutated_frames() -> impl Strategy<Value = Vec<u8>> {
        let base = prop_oneof![
            (any::<u16>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(
                |(s, d, p)| FrameSpec::udp(A, B, ip("10.0.0.1"), ip("10.0.0.2"), s, d).payload(&p).build()
            ),
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(fl, p)| {
                FrameSpec::tcp(A, B, ip("10.0.0.1"), ip("10.0.0.2"), 1, 2, fl).payload(&p).build()
            }),
            Just(FrameSpec::icmp_echo(A, B, ip("10.0.0.1"), ip("10.0.0.2"), 3).build()),
            Just(
                FrameSpec::udp(A, B, ip("10.0.0.1"), ip("10.0.0.2"), 1, 2)
                    .ipv4_options(&[1, 1, 1, 0])
                    .build()
            ),
            Just(FrameSpec::udp(A, B, ip("10.0.0.1"), ip("10.0.0.2"), 1, 2).ipv4_fragment(0, true).build()),
            Just(CAPTURED_TCP_SYN.to_vec()),
        ];
        // Overwrite up to four bytes anywhere, then maybe truncate: exercises every check.
        let edits = proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4);
        (base, edits, any::<prop::sample::Index>(), any::<bool>(), any::<bool>()).prop_map(
            |(mut f, edits, cut, do_cut, fix_checksum)| {
                for (at, byte) in edits {
                    let i = at.index(f.len());
                    f[i] = byte;
                }
                // Re-seal the IPv4 header so edits of its fields reach the checks behind
                // the checksum.
                let ihl = usize::from(f[14] & 0x0f) * 4;
                if fix_checksum && ihl >= 20 && f.len() >= 14 + ihl {
                    f[24] = 0;
                    f[25] = 0;
                    let c = checksum::checksum(&f[14..14 + ihl]);
                    f[24..26].copy_from_slice(&c.to_be_bytes());
                }
                if do_cut {
                    let n = cut.index(f.len() + 1);
                    f.truncate(n);
                }
                f
            },
        )
    }

    proptest! {
        /// Whenever the fast path accepts a frame, etherparse agrees exactly.
        #[test]
        fn fast_path_agrees_with_etherparse(frame in mutated_frames()) {
            if let Some(fast) = common_ipv4(&frame) {
                prop_assert_eq!(parse_with_etherparse(&frame), Ok(fast));
            }
        }

        /// ... and it does take the common frames (otherwise it would be dead weight).
        #[test]
        fn fast_path_takes_common_frames(s in any::<u16>(), d in any::<u16>(), len in 0usize..1400, tcp in any::<bool>()) {
            let spec = if tcp {
                FrameSpec::tcp(A, B, ip("10.1.2.3"), ip("10.3.2.1"), s, d, TCP_ACK)
            } else {
                FrameSpec::udp(A, B, ip("10.1.2.3"), ip("10.3.2.1"), s, d)
            };
            let frame = spec.payload(&vec![0x5a; len]).build();
            prop_assert!(common_ipv4(&frame).is_some());
        }
    }

    fn patch(frame: &[u8], at: usize, byte: u8) -> Vec<u8> {
        let mut f = frame.to_vec();
        f[at] = byte;
        f
    }

    fn patch16(frame: &[u8], at: usize, v: u16) -> Vec<u8> {
        let mut f = frame.to_vec();
        f[at..at + 2].copy_from_slice(&v.to_be_bytes());
        f
    }

    fn fix_ip_csum(mut f: Vec<u8>) -> Vec<u8> {
        f[24] = 0;
        f[25] = 0;
        let c = checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f
    }

    fn fix_ip_len(mut f: Vec<u8>) -> Vec<u8> {
        let len = (f.len() - 14) as u16;
        f[16..18].copy_from_slice(&len.to_be_bytes());
        fix_ip_csum(f)
    }
}
