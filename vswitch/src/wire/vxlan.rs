//! VXLAN (RFC 7348): the 8-byte header, and the outer Ethernet/IPv4/UDP headers the
//! switch prepends when it encapsulates a frame for another node.
//!
//! Outer IPv4 has DF set, so the underlay never fragments overlay traffic (too-big inner
//! packets are answered with ICMP fragmentation-needed before encapsulation). The outer
//! UDP checksum is zero, which RFC 7348 §5 allows for IPv4 and the Linux `vxlan` driver
//! accepts; the inner frame keeps its own checksums end to end.

use std::net::Ipv4Addr;

use super::MacAddr;
use super::checksum;
use super::parse::{ETHERTYPE_IPV4, IPPROTO_UDP};
use crate::drop_reason::DropReason;

/// IANA-assigned VXLAN UDP port.
pub const DEFAULT_PORT: u16 = 4789;
pub const HEADER_LEN: usize = 8;
/// Outer Ethernet (14) + IPv4 (20) + UDP (8) + VXLAN (8).
pub const OUTER_LEN: usize = 50;
/// The I flag: the VNI field is valid.
const FLAG_VNI_VALID: u8 = 0x08;

/// Reads the VNI from a VXLAN header.
///
/// Only the I flag is checked: RFC 7348 says reserved bits "MUST be ignored on receipt".
pub fn parse_header(b: &[u8]) -> Result<u32, DropReason> {
    let [flags, _, _, _, v0, v1, v2, _, ..] = *b else {
        return Err(DropReason::TruncatedVxlan);
    };
    if flags & FLAG_VNI_VALID == 0 {
        return Err(DropReason::BadVxlanFlags);
    }
    Ok(u32::from_be_bytes([0, v0, v1, v2]))
}

/// Where an encapsulated frame goes on the underlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outer {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// 24-bit VXLAN network identifier.
    pub vni: u32,
    pub ttl: u8,
}

/// The outer UDP source port for an inner flow: the flow hash spread over the dynamic
/// port range 49152–65535, as RFC 7348 §5 recommends for ECMP/RSS entropy.
#[inline]
pub fn source_port(flow_hash: u32) -> u16 {
    49152 | (flow_hash as u16 & 0x3fff)
}

/// Writes the 50 outer header bytes for an inner frame of `inner_len` bytes.
pub fn write_outer(out: &mut [u8; OUTER_LEN], o: &Outer, inner_len: usize) {
    let ip_total = (20 + 8 + HEADER_LEN + inner_len) as u16;
    let udp_len = (8 + HEADER_LEN + inner_len) as u16;
    out[0..6].copy_from_slice(&o.dst_mac.0);
    out[6..12].copy_from_slice(&o.src_mac.0);
    out[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip = &mut out[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
    ip[4..6].copy_from_slice(&[0, 0]); // id: unused with DF (RFC 6864)
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = o.ttl;
    ip[9] = IPPROTO_UDP;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&o.src_ip.octets());
    ip[16..20].copy_from_slice(&o.dst_ip.octets());
    let c = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut out[34..42];
    udp[0..2].copy_from_slice(&o.src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&o.dst_port.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    let vx = &mut out[42..50];
    vx[0] = FLAG_VNI_VALID;
    vx[1..4].copy_from_slice(&[0, 0, 0]);
    vx[4..7].copy_from_slice(&o.vni.to_be_bytes()[1..4]);
    vx[7] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FrameSpec, mac};
    use crate::wire::{L4, Net, parse};

    #[test]
    fn header_flags_and_vni() {
        assert_eq!(parse_header(&[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]), Ok(0x123456));
        // Reserved bits are ignored on receipt.
        assert_eq!(parse_header(&[0xff, 0xff, 0xff, 0xff, 0, 0, 1, 0xff]), Ok(1));
        assert_eq!(parse_header(&[0x00, 0, 0, 0, 0, 0, 1, 0]), Err(DropReason::BadVxlanFlags));
        assert_eq!(parse_header(&[0x08, 0, 0, 0, 0, 0, 1]), Err(DropReason::TruncatedVxlan));
    }

    #[test]
    fn outer_headers_parse_back_and_wrap_the_inner_frame() {
        let inner =
            FrameSpec::udp(mac(1), mac(2), [10, 244, 1, 2].into(), [10, 244, 2, 3].into(), 5, 6).build();
        let o = Outer {
            src_mac: mac(10),
            dst_mac: mac(20),
            src_ip: Ipv4Addr::new(192, 168, 50, 1),
            dst_ip: Ipv4Addr::new(192, 168, 50, 2),
            src_port: source_port(0xdead_beef),
            dst_port: DEFAULT_PORT,
            vni: 42,
            ttl: 64,
        };
        let mut hdr = [0u8; OUTER_LEN];
        write_outer(&mut hdr, &o, inner.len());
        let frame = [&hdr[..], &inner[..]].concat();
        let m = parse(&frame).unwrap();
        assert_eq!((m.src_mac, m.dst_mac), (mac(10), mac(20)));
        let Net::Ipv4(v4) = m.net else { panic!() };
        assert!(v4.dont_fragment);
        assert_eq!((v4.src, v4.dst, v4.ttl), (o.src_ip, o.dst_ip, 64));
        assert_eq!(usize::from(v4.total_len), frame.len() - 14);
        assert_eq!(v4.l4, L4::Udp { src_port: o.src_port, dst_port: 4789 });
        assert!(o.src_port >= 49152);
        assert_eq!(parse_header(&frame[42..]), Ok(42));
        assert_eq!(&frame[OUTER_LEN..], &inner[..]);
    }
}
