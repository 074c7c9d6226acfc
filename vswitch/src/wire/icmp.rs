//! ICMPv4 error messages the switch originates (RFC 792, RFC 1812 §4.3.2.3):
//! destination unreachable (including fragmentation-needed for path-MTU discovery)
//! and time exceeded.

use std::net::Ipv4Addr;

use super::MacAddr;
use super::checksum;
use super::parse::{ETHERTYPE_IPV4, IPPROTO_ICMP};

pub const TYPE_DEST_UNREACHABLE: u8 = 3;
pub const TYPE_TIME_EXCEEDED: u8 = 11;
pub const CODE_NET_UNREACHABLE: u8 = 0;
pub const CODE_HOST_UNREACHABLE: u8 = 1;
pub const CODE_PORT_UNREACHABLE: u8 = 3;
pub const CODE_FRAGMENTATION_NEEDED: u8 = 4;
pub const CODE_ADMIN_PROHIBITED: u8 = 13;
pub const CODE_TTL_EXCEEDED: u8 = 0;

/// RFC 1812: an ICMP error quotes as much of the offending datagram as fits in 576 bytes.
pub const MAX_ERROR_IP_LEN: usize = 576;
const HEADERS_LEN: usize = 14 + 20 + 8;
/// Longest frame [`write_error`] produces.
pub const MAX_ERROR_FRAME_LEN: usize = 14 + MAX_ERROR_IP_LEN;

/// An ICMP error to send back toward the sender of an offending packet.
#[derive(Clone, Copy, Debug)]
pub struct IcmpError {
    pub eth_src: MacAddr,
    pub eth_dst: MacAddr,
    /// The router's address (e.g. the pod gateway).
    pub src_ip: Ipv4Addr,
    /// The offending packet's source.
    pub dst_ip: Ipv4Addr,
    pub icmp_type: u8,
    pub code: u8,
    /// Next-hop MTU for fragmentation-needed (RFC 1191); zero otherwise.
    pub next_hop_mtu: u16,
}

/// Writes the Ethernet frame carrying `err` into `out`, quoting `offending` (the IP
/// packet from its header on, without link padding). Returns the frame length.
///
/// `out` must hold [`MAX_ERROR_FRAME_LEN`] bytes.
pub fn write_error(out: &mut [u8], err: &IcmpError, offending: &[u8]) -> usize {
    let quoted = offending.len().min(MAX_ERROR_IP_LEN - 20 - 8);
    let len = HEADERS_LEN + quoted;
    let out = &mut out[..len];
    out[0..6].copy_from_slice(&err.eth_dst.0);
    out[6..12].copy_from_slice(&err.eth_src.0);
    out[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());

    let ip_total = (len - 14) as u16;
    let (ip, icmp) = out[14..].split_at_mut(20);
    ip[0] = 0x45;
    ip[1] = 0xc0; // precedence "internetwork control", as Linux sends its ICMP errors
    ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
    ip[4..8].copy_from_slice(&[0, 0, 0, 0]);
    ip[8] = 64;
    ip[9] = IPPROTO_ICMP;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&err.src_ip.octets());
    ip[16..20].copy_from_slice(&err.dst_ip.octets());
    let c = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());

    icmp[0] = err.icmp_type;
    icmp[1] = err.code;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..6].copy_from_slice(&[0, 0]);
    icmp[6..8].copy_from_slice(&err.next_hop_mtu.to_be_bytes());
    icmp[8..].copy_from_slice(&offending[..quoted]);
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    len
}

/// Turns `frame` (an IPv4 packet described by `meta` and `ip`) into the ICMP error
/// `icmp_type`/`code` about it, from `src_ip` back to its sender, Ethernet addresses
/// swapped: the reply a router sends out of the port the packet came in on.
pub fn reply_in_place(
    frame: &mut crate::frame::Frame,
    meta: &super::FrameMeta,
    ip: &super::Ipv4Meta,
    src_ip: Ipv4Addr,
    icmp_type: u8,
    code: u8,
    next_hop_mtu: u16,
) {
    let l3 = usize::from(meta.l3_offset);
    let mut quoted = [0u8; MAX_ERROR_IP_LEN - 28];
    let ip_len = usize::from(ip.total_len).min(frame.len() - l3).min(quoted.len());
    quoted[..ip_len].copy_from_slice(&frame.data()[l3..l3 + ip_len]);
    let err = IcmpError {
        eth_src: meta.dst_mac,
        eth_dst: meta.src_mac,
        src_ip,
        dst_ip: ip.src,
        icmp_type,
        code,
        next_hop_mtu,
    };
    let len = write_error(frame.spare_mut(), &err, &quoted[..ip_len]);
    frame.set_len(len);
    frame.offload = crate::frame::Offload::NONE;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FrameSpec, mac};
    use crate::wire::{L4, Net, parse};

    #[test]
    fn fragmentation_needed_quotes_the_offending_header() {
        let big =
            FrameSpec::tcp(mac(1), mac(2), [10, 244, 1, 2].into(), [10, 244, 2, 3].into(), 4000, 80, 0x10)
                .payload(&[0x55; 1400])
                .build();
        let mut out = [0u8; MAX_ERROR_FRAME_LEN];
        let err = IcmpError {
            eth_src: mac(2),
            eth_dst: mac(1),
            src_ip: Ipv4Addr::new(10, 244, 1, 1),
            dst_ip: Ipv4Addr::new(10, 244, 1, 2),
            icmp_type: TYPE_DEST_UNREACHABLE,
            code: CODE_FRAGMENTATION_NEEDED,
            next_hop_mtu: 1450,
        };
        let len = write_error(&mut out, &err, &big[14..]);
        assert_eq!(len, MAX_ERROR_FRAME_LEN);
        let frame = &out[..len];
        let m = parse(frame).unwrap(); // verifies the IPv4 checksum
        let Net::Ipv4(v4) = m.net else { panic!() };
        assert_eq!((v4.src, v4.dst), (err.src_ip, err.dst_ip));
        assert_eq!(v4.l4, L4::Icmpv4 { icmp_type: 3, code: 4 });
        let icmp = &frame[34..];
        assert_eq!(checksum::checksum(icmp), 0);
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1450);
        assert_eq!(&icmp[8..8 + 28], &big[14..14 + 28], "quoted IP + first 8 bytes of TCP");
    }

    #[test]
    fn short_offending_packets_are_quoted_whole() {
        let small = FrameSpec::udp(mac(1), mac(2), [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1, 2).build();
        let mut out = [0u8; MAX_ERROR_FRAME_LEN];
        let err = IcmpError {
            eth_src: mac(2),
            eth_dst: mac(1),
            src_ip: Ipv4Addr::new(10, 0, 0, 2),
            dst_ip: Ipv4Addr::new(10, 0, 0, 1),
            icmp_type: TYPE_DEST_UNREACHABLE,
            code: CODE_PORT_UNREACHABLE,
            next_hop_mtu: 0,
        };
        let len = write_error(&mut out, &err, &small[14..]);
        assert_eq!(len, 42 + small.len() - 14);
        assert!(parse(&out[..len]).is_ok());
    }
}
