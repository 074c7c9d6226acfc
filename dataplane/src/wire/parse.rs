//! One pass over a frame: validate every layer we understand and record what later
//! stages need (addresses, ports, offsets) in a compact [`FrameMeta`].
//!
//! Layers are sliced with `etherparse`; each of its length or content errors maps to
//! exactly one [`Error`]. Nothing here allocates or panics on any input.

use std::net::Ipv4Addr;

use etherparse::LenSource;
use etherparse::err::{Layer, LenError};
use etherparse::{
    ArpPacketSlice, EtherType, Ethernet2Slice, IpNumber, Ipv4HeaderSlice, Ipv4Slice, Ipv6Slice,
    SingleVlanSlice, TcpSlice, UdpSlice,
};

use super::bytes::{get_u16, get_u32};
use super::meta::{ArpMeta, Fragment, FrameMeta, Ipv4Meta, Ipv6Meta, L4, Net};
use super::{Error, MacAddr, arp, checksum, ethernet, icmp, ipv4};

/// The longest frame the switch handles: an IPv4/IPv6 packet of 65535 bytes behind an
/// Ethernet header and one VLAN tag.
pub const MAX_FRAME_LEN: usize = 18 + 65_535;

// The numbers the parser dispatches on, where most of the data path looks for them.
pub use super::arp::{ARP_OP_REPLY, ARP_OP_REQUEST};
pub use super::ethernet::{
    ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_QINQ, ETHERTYPE_VLAN,
    HEADER_LEN as ETHERNET_HEADER_LEN, VLAN_TAG_LEN,
};
pub use super::ip::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

pub use super::tcp::{ACK as TCP_ACK, FIN as TCP_FIN, RST as TCP_RST, SYN as TCP_SYN};

/// Byte offset of `inner` within `outer`. `inner` must be a subslice of `outer`.
#[inline]
fn offset_in(outer: &[u8], inner: &[u8]) -> Result<u16, Error> {
    u16::try_from(inner.as_ptr() as usize - outer.as_ptr() as usize).map_err(|_| Error::Oversized)
}

/// Parses `frame` (starting at its Ethernet header, without FCS).
///
/// Frames longer than [`MAX_FRAME_LEN`] (a 64 KiB IP packet behind a tagged Ethernet header)
/// are rejected as oversized.
#[inline]
pub fn parse(frame: &[u8]) -> Result<FrameMeta, Error> {
    let mut meta = FrameMeta::UNPARSED;
    parse_into(frame, &mut meta).map(|()| meta)
}

/// [`parse`] writing into `meta`, which the data path keeps in place across frames:
/// the metadata is not copied on return. On error `meta` is unspecified.
// Always inlined: see `pipeline::stages`.
#[inline(always)]
pub fn parse_into(frame: &[u8], meta: &mut FrameMeta) -> Result<(), Error> {
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
    use super::{ipv4::field as ip, tcp::field as tcp, udp::field as udp};
    let (eth, l3) = frame.split_first_chunk::<ETHERNET_HEADER_LEN>()?;
    if get_u16(eth, ethernet::field::ETHERTYPE) != ETHERTYPE_IPV4 || frame.len() > MAX_FRAME_LEN {
        return None;
    }
    let fixed: &[u8; ipv4::MIN_HEADER_LEN] = l3.first_chunk()?;
    let (version, ihl) = (fixed[ip::VERSION_IHL] >> 4, usize::from(fixed[ip::VERSION_IHL] & 0x0f) * 4);
    let total_len = usize::from(get_u16(fixed, ip::TOTAL_LEN));
    if version != 4 || ihl < ipv4::MIN_HEADER_LEN || ihl > l3.len() || total_len < ihl || total_len > l3.len()
    {
        return None;
    }
    if checksum::checksum(&l3[..ihl]) != 0 {
        return None;
    }
    let flags_offset = get_u16(fixed, ip::FLAGS_FRAGMENT);
    let protocol = fixed[ip::PROTOCOL];
    if flags_offset & ipv4::FRAGMENT_OFFSET_MASK != 0 || protocol == IpNumber::AUTHENTICATION_HEADER.0 {
        return None;
    }
    let more_fragments = flags_offset & ipv4::MORE_FRAGMENTS != 0;
    let l4 = &l3[ihl..total_len];
    let l4_meta = match protocol {
        IPPROTO_TCP => {
            let h: &[u8; super::tcp::MIN_HEADER_LEN] = l4.first_chunk()?;
            let data_offset = usize::from(h[tcp::DATA_OFFSET] >> 4) * 4;
            if data_offset < super::tcp::MIN_HEADER_LEN || data_offset > l4.len() {
                return None;
            }
            L4::Tcp {
                src_port: get_u16(h, tcp::SOURCE_PORT),
                dst_port: get_u16(h, tcp::DESTINATION_PORT),
                flags: h[tcp::FLAGS],
            }
        }
        IPPROTO_UDP => {
            let h: &[u8; super::udp::HEADER_LEN] = l4.first_chunk()?;
            let len = usize::from(get_u16(h, udp::LENGTH));
            // A first fragment's UDP length is the whole datagram's.
            let fits = if more_fragments { len >= l4.len() } else { len <= l4.len() };
            if len < super::udp::HEADER_LEN || !fits {
                return None;
            }
            L4::Udp { src_port: get_u16(h, udp::SOURCE_PORT), dst_port: get_u16(h, udp::DESTINATION_PORT) }
        }
        IPPROTO_ICMP => {
            let h: &[u8; 4] = l4.first_chunk()?;
            L4::Icmpv4 { icmp_type: h[icmp::field::TYPE], code: h[icmp::field::CODE] }
        }
        _ => L4::Opaque,
    };
    Some(FrameMeta {
        dst_mac: MacAddr::from_bytes(&eth[ethernet::field::DESTINATION]),
        src_mac: MacAddr::from_bytes(&eth[ethernet::field::SOURCE]),
        vlan_tci: None,
        l3_offset: ETHERNET_HEADER_LEN as u16,
        net: Net::Ipv4(Ipv4Meta {
            src: Ipv4Addr::from(get_u32(fixed, ip::SOURCE)),
            dst: Ipv4Addr::from(get_u32(fixed, ip::DESTINATION)),
            protocol,
            ttl: fixed[ip::TTL],
            header_len: ihl as u8,
            total_len: total_len as u16,
            dont_fragment: flags_offset & ipv4::DONT_FRAGMENT != 0,
            fragment: if more_fragments { Fragment::First } else { Fragment::None },
            l4_offset: (ETHERNET_HEADER_LEN + ihl) as u16,
            l4: l4_meta,
        }),
    })
}

/// The reference parser: every layer sliced by etherparse, every failure named.
pub fn parse_with_etherparse(frame: &[u8]) -> Result<FrameMeta, Error> {
    if frame.len() > MAX_FRAME_LEN {
        return Err(Error::Oversized);
    }
    let eth = Ethernet2Slice::from_slice_without_fcs(frame).map_err(|_| Error::TruncatedEthernet)?;
    let dst_mac = MacAddr(eth.destination());
    let src_mac = MacAddr(eth.source());

    let mut ether_type = eth.ether_type();
    let mut l3 = eth.payload_slice();
    let mut vlan_tci = None;
    if ether_type == EtherType(ETHERTYPE_QINQ) {
        return Err(Error::StackedVlan);
    }
    if ether_type == EtherType::VLAN_TAGGED_FRAME {
        let tag = SingleVlanSlice::from_slice(l3).map_err(|_| Error::TruncatedVlan)?;
        ether_type = tag.ether_type();
        if ether_type == EtherType::VLAN_TAGGED_FRAME || ether_type == EtherType(ETHERTYPE_QINQ) {
            return Err(Error::StackedVlan);
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
        _ => return Err(Error::UnknownEthertype),
    };
    Ok(FrameMeta { dst_mac, src_mac, vlan_tci, l3_offset, net })
}

fn parse_arp(l3: &[u8]) -> Result<ArpMeta, Error> {
    let slice = ArpPacketSlice::from_slice(l3).map_err(|_| Error::TruncatedArp)?;
    let arp = arp::Packet::new_checked(slice.slice())
        .filter(arp::Packet::is_ethernet_ipv4)
        .ok_or(Error::UnsupportedArp)?;
    Ok(ArpMeta {
        op: arp.operation(),
        sender_mac: arp.sender_mac(),
        sender_ip: arp.sender_ip(),
        target_mac: arp.target_mac(),
        target_ip: arp.target_ip(),
    })
}

fn parse_ipv4(frame: &[u8], l3: &[u8]) -> Result<Ipv4Meta, Error> {
    use etherparse::err::ipv4::HeaderSliceError;
    // The header alone (version, IHL, length): the common case needs no more slicing.
    let header = Ipv4HeaderSlice::from_slice(l3).map_err(|e| match e {
        HeaderSliceError::Len(_) => Error::TruncatedIpv4,
        HeaderSliceError::Content(_) => Error::BadIpv4Header,
    })?;
    let hdr = header.slice();
    let total_len = usize::from(header.total_len());
    if total_len < hdr.len() || total_len > l3.len() {
        return Err(Error::BadIpv4Length);
    }
    if checksum::checksum(hdr) != 0 {
        return Err(Error::BadIpv4Checksum);
    }
    let (mut protocol, mut payload) = (header.protocol(), &l3[hdr.len()..total_len]);
    if protocol == IpNumber::AUTHENTICATION_HEADER {
        // Rare: let etherparse walk the authentication header to the real payload.
        let ip = Ipv4Slice::from_slice(l3).map_err(|_| Error::BadIpv4Header)?;
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

fn parse_ipv6(frame: &[u8], l3: &[u8]) -> Result<Ipv6Meta, Error> {
    use etherparse::err::ipv6::SliceError;
    let ip = Ipv6Slice::from_slice(l3).map_err(|e| match e {
        SliceError::Len(LenError { layer: Layer::Ipv6Header, .. }) => Error::TruncatedIpv6,
        SliceError::Len(LenError { layer: Layer::Ipv6Packet, .. }) => Error::BadIpv6Length,
        SliceError::Len(_) | SliceError::Exts(_) => Error::BadIpv6ExtHeader,
        SliceError::Header(_) => Error::BadIpv6Header,
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
fn parse_l4(protocol: IpNumber, l4: &[u8], protocol_is_v4: bool, first_fragment: bool) -> Result<L4, Error> {
    match protocol.0 {
        IPPROTO_TCP => {
            use etherparse::err::tcp::{HeaderError, HeaderSliceError};
            let tcp = TcpSlice::from_slice(l4).map_err(|e| match e {
                HeaderSliceError::Len(_) => Error::TruncatedTcp,
                HeaderSliceError::Content(HeaderError::DataOffsetTooSmall { .. }) => Error::BadTcpHeader,
            })?;
            let h = tcp.header_slice();
            Ok(L4::Tcp { src_port: tcp.source_port(), dst_port: tcp.destination_port(), flags: h[13] })
        }
        IPPROTO_UDP if first_fragment => {
            let [s0, s1, d0, d1, l0, l1, _, _, ..] = *l4 else { return Err(Error::TruncatedUdp) };
            let len = usize::from(u16::from_be_bytes([l0, l1]));
            if len < 8 || len < l4.len() {
                return Err(Error::BadUdpLength);
            }
            Ok(L4::Udp { src_port: u16::from_be_bytes([s0, s1]), dst_port: u16::from_be_bytes([d0, d1]) })
        }
        IPPROTO_UDP => {
            let udp = UdpSlice::from_slice(l4).map_err(|e| match (e.layer, e.len_source) {
                (Layer::UdpHeader, LenSource::Slice) => Error::TruncatedUdp,
                _ => Error::BadUdpLength,
            })?;
            // etherparse reads a zero length as an IPv6 jumbogram; UDP over IPv4 never is one.
            if udp.length() == 0 && protocol_is_v4 {
                return Err(Error::BadUdpLength);
            }
            Ok(L4::Udp { src_port: udp.source_port(), dst_port: udp.destination_port() })
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let [icmp_type, code, _, _, ..] = *l4 else {
                return Err(Error::TruncatedIcmp);
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
    use std::net::Ipv6Addr;

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
        assert_eq!(parse(&with_len(500)), Err(Error::BadUdpLength));
        assert_eq!(parse_with_etherparse(&with_len(500)), Err(Error::BadUdpLength));
        assert_eq!(parse(&with_len(4)), Err(Error::BadUdpLength));
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
        let cases: Vec<(&str, Vec<u8>, Error)> = vec![
            ("empty", vec![], Error::TruncatedEthernet),
            ("13 bytes", good[..13].to_vec(), Error::TruncatedEthernet),
            ("ethernet only", good[..14].to_vec(), Error::TruncatedIpv4),
            ("half an ip header", good[..24].to_vec(), Error::TruncatedIpv4),
            ("ip without udp", good[..34].to_vec(), Error::BadIpv4Length),
            ("bad version", patch(&good, 14, 0x65), Error::BadIpv4Header),
            ("ihl 4", patch(&good, 14, 0x44), Error::BadIpv4Header),
            ("total length beyond frame", patch16(&good, 16, 2000), Error::BadIpv4Length),
            ("total length below header", patch16(&good, 16, 10), Error::BadIpv4Length),
            ("bad checksum", patch(&good, 24, good[24] ^ 0xff), Error::BadIpv4Checksum),
            ("unknown ethertype", patch16(&good, 12, 0x88cc), Error::UnknownEthertype),
            ("qinq", patch16(&good, 12, ETHERTYPE_QINQ), Error::StackedVlan),
            ("double tag", udp().vlan(5).vlan(6).build(), Error::StackedVlan),
            ("tag cut short", udp().vlan(5).build()[..16].to_vec(), Error::TruncatedVlan),
            ("udp length too big", fix_ip_csum(patch16(&good, 38, 200)), Error::BadUdpLength),
            ("udp length too small", fix_ip_csum(patch16(&good, 38, 4)), Error::BadUdpLength),
            ("udp length zero", fix_ip_csum(patch16(&good, 38, 0)), Error::BadUdpLength),
            ("udp cut short", fix_ip_len(good[..40].to_vec()), Error::TruncatedUdp),
            (
                "tcp data offset 4",
                patch(&FrameSpec::tcp(A, B, ip("1.1.1.1"), ip("2.2.2.2"), 1, 2, 0).build(), 46, 0x40),
                Error::BadTcpHeader,
            ),
            (
                "tcp cut short",
                fix_ip_len(
                    FrameSpec::tcp(A, B, ip("1.1.1.1"), ip("2.2.2.2"), 1, 2, 0).build()[..44].to_vec(),
                ),
                Error::TruncatedTcp,
            ),
            (
                "icmp cut short",
                fix_ip_len(
                    FrameSpec::icmp_echo(A, B, ip("1.1.1.1"), ip("2.2.2.2"), 1).build()[..36].to_vec(),
                ),
                Error::TruncatedIcmp,
            ),
            (
                "arp cut short",
                arp_request(A, ip("1.1.1.1"), ip("1.1.1.2"))[..30].to_vec(),
                Error::TruncatedArp,
            ),
            (
                "arp for ipv6",
                patch16(&arp_request(A, ip("1.1.1.1"), ip("1.1.1.2")), 16, 0x86dd),
                Error::UnsupportedArp,
            ),
            (
                "ipv6 cut short",
                FrameSpec::udp6(A, B, "fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), 1, 2).build()
                    [..40]
                    .to_vec(),
                Error::TruncatedIpv6,
            ),
            (
                "ipv6 payload length beyond frame",
                patch16(
                    &FrameSpec::udp6(A, B, "fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), 1, 2)
                        .build(),
                    18,
                    900,
                ),
                Error::BadIpv6Length,
            ),
            (
                "ipv6 bad version",
                patch(
                    &FrameSpec::udp6(A, B, "fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), 1, 2)
                        .build(),
                    14,
                    0x40,
                ),
                Error::BadIpv6Header,
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
                Error::BadIpv6ExtHeader,
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
