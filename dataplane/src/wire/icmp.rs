//! ICMPv4 error messages (RFC 792, RFC 1812 §4.3.2.3): the ones the switch originates
//! — destination unreachable (including fragmentation-needed for path-MTU discovery)
//! and time exceeded — and a typed view of the packet an error quotes, for rewriting
//! it when the error crosses a NAT.

use std::net::Ipv4Addr;

use super::bytes::{get_u16, get_u32, set_u16, set_u32};
use super::checksum::{self, update_u16, update_u32};
use super::ethernet::ETHERTYPE_IPV4;
use super::ip::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use super::{MacAddr, ethernet, ipv4, tcp, udp};

/// Field offsets from the start of an ICMP error message.
pub mod field {
    use std::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const UNUSED: Range<usize> = 4..6;
    /// Fragmentation-needed only (RFC 1191); zero otherwise.
    pub const NEXT_HOP_MTU: Range<usize> = 6..8;
    /// The offending packet's IP header and at least 8 bytes of what follows.
    pub const QUOTED: usize = 8;
}

pub const TYPE_DEST_UNREACHABLE: u8 = 3;
pub const TYPE_SOURCE_QUENCH: u8 = 4;
pub const TYPE_REDIRECT: u8 = 5;
pub const TYPE_TIME_EXCEEDED: u8 = 11;
pub const TYPE_PARAMETER_PROBLEM: u8 = 12;
pub const CODE_NET_UNREACHABLE: u8 = 0;
pub const CODE_HOST_UNREACHABLE: u8 = 1;
pub const CODE_PORT_UNREACHABLE: u8 = 3;
pub const CODE_FRAGMENTATION_NEEDED: u8 = 4;
pub const CODE_ADMIN_PROHIBITED: u8 = 13;
pub const CODE_TTL_EXCEEDED: u8 = 0;

/// ICMP types that quote an offending packet.
#[inline]
pub fn is_error(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        TYPE_DEST_UNREACHABLE
            | TYPE_SOURCE_QUENCH
            | TYPE_REDIRECT
            | TYPE_TIME_EXCEEDED
            | TYPE_PARAMETER_PROBLEM
    )
}

/// RFC 1812: an ICMP error quotes as much of the offending datagram as fits in 576 bytes.
pub const MAX_ERROR_IP_LEN: usize = 576;
const HEADERS_LEN: usize = ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + field::QUOTED;
/// Longest frame [`write_error`] produces.
pub const MAX_ERROR_FRAME_LEN: usize = ethernet::HEADER_LEN + MAX_ERROR_IP_LEN;
/// Longest quote [`write_error`] includes.
pub const MAX_QUOTE_LEN: usize = MAX_ERROR_IP_LEN - ipv4::MIN_HEADER_LEN - field::QUOTED;

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
    let quoted = offending.len().min(MAX_QUOTE_LEN);
    let len = HEADERS_LEN + quoted;
    let out = &mut out[..len];
    let (eth, rest) = out.split_at_mut(ethernet::HEADER_LEN);
    ethernet::set_addresses(eth, err.eth_dst, err.eth_src);
    set_u16(eth, ethernet::field::ETHERTYPE, ETHERTYPE_IPV4);
    let (ip, icmp) = rest.split_at_mut(ipv4::MIN_HEADER_LEN);
    // Precedence "internetwork control", as Linux sends its ICMP errors.
    ipv4::Header::new_unchecked(ip).write(
        0xc0,
        (len - ethernet::HEADER_LEN) as u16,
        0,
        64,
        IPPROTO_ICMP,
        err.src_ip,
        err.dst_ip,
    );
    icmp[field::TYPE] = err.icmp_type;
    icmp[field::CODE] = err.code;
    set_u16(icmp, field::UNUSED, 0);
    set_u16(icmp, field::NEXT_HOP_MTU, err.next_hop_mtu);
    icmp[field::QUOTED..].copy_from_slice(&offending[..quoted]);
    fill_checksum(icmp);
    len
}

/// Computes the checksum of the ICMP message `icmp` (header and everything after it,
/// to the end of the IP packet) from scratch and writes it.
#[inline]
pub fn fill_checksum(icmp: &mut [u8]) {
    set_u16(icmp, field::CHECKSUM, 0);
    let c = checksum::checksum(icmp);
    set_u16(icmp, field::CHECKSUM, c);
}

/// The packet an ICMP error quotes, when it is IPv4 TCP or UDP with its ports: a view
/// over the ICMP message (from its header to the end of the IP packet) whose setters
/// keep the quoted IP header checksum and, when it is quoted whole and in use, the
/// quoted transport checksum correct. The ICMP checksum itself is left to
/// [`fill_checksum`] once every rewrite is done.
#[derive(Debug)]
pub struct Quoted<'a> {
    icmp: &'a mut [u8],
    /// Offset of the quoted transport header in `icmp`.
    l4: usize,
    /// Offset of the quoted transport checksum, when it can be kept correct.
    l4_checksum: Option<usize>,
}

impl<'a> Quoted<'a> {
    /// `None` unless `icmp` quotes an IPv4 header and at least the 8 bytes of a TCP or
    /// UDP header that hold its ports.
    pub fn new(icmp: &'a mut [u8]) -> Option<Quoted<'a>> {
        let quoted = icmp.get(field::QUOTED..)?;
        let ip = ipv4::Header::new_checked(quoted)?;
        let proto = ip.protocol();
        let l4 = field::QUOTED + ip.header_len();
        if l4 + udp::HEADER_LEN > icmp.len() || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
            return None;
        }
        let l4_checksum = match proto {
            IPPROTO_UDP if get_u16(icmp, shift(udp::field::CHECKSUM, l4)) != 0 => {
                Some(l4 + udp::field::CHECKSUM.start)
            }
            IPPROTO_TCP if l4 + tcp::field::CHECKSUM.end <= icmp.len() => {
                Some(l4 + tcp::field::CHECKSUM.start)
            }
            _ => None,
        };
        Some(Quoted { icmp, l4, l4_checksum })
    }

    fn ip_field(&self, f: std::ops::Range<usize>) -> std::ops::Range<usize> {
        shift(f, field::QUOTED)
    }

    pub fn protocol(&self) -> u8 {
        self.icmp[field::QUOTED + ipv4::field::PROTOCOL]
    }

    pub fn source(&self) -> Ipv4Addr {
        Ipv4Addr::from(get_u32(self.icmp, self.ip_field(ipv4::field::SOURCE)))
    }

    pub fn destination(&self) -> Ipv4Addr {
        Ipv4Addr::from(get_u32(self.icmp, self.ip_field(ipv4::field::DESTINATION)))
    }

    pub fn source_port(&self) -> u16 {
        get_u16(self.icmp, shift(udp::field::SOURCE_PORT, self.l4))
    }

    pub fn destination_port(&self) -> u16 {
        get_u16(self.icmp, shift(udp::field::DESTINATION_PORT, self.l4))
    }

    pub fn set_source(&mut self, addr: Ipv4Addr) {
        self.set_addr(ipv4::field::SOURCE, addr);
    }

    pub fn set_destination(&mut self, addr: Ipv4Addr) {
        self.set_addr(ipv4::field::DESTINATION, addr);
    }

    pub fn set_source_port(&mut self, port: u16) {
        self.set_port(udp::field::SOURCE_PORT, port);
    }

    pub fn set_destination_port(&mut self, port: u16) {
        self.set_port(udp::field::DESTINATION_PORT, port);
    }

    fn set_addr(&mut self, f: std::ops::Range<usize>, addr: Ipv4Addr) {
        let at = self.ip_field(f);
        let (old, new) = (get_u32(self.icmp, at.clone()), u32::from(addr));
        set_u32(self.icmp, at, new);
        // Both the quoted IP header and the quoted pseudo-header cover addresses.
        let ip_sum = self.ip_field(ipv4::field::CHECKSUM);
        for sum in std::iter::once(ip_sum.start).chain(self.l4_checksum) {
            let c = update_u32(get_u16(self.icmp, sum..sum + 2), old, new);
            set_u16(self.icmp, sum..sum + 2, c);
        }
    }

    fn set_port(&mut self, f: std::ops::Range<usize>, port: u16) {
        let at = shift(f, self.l4);
        let old = get_u16(self.icmp, at.clone());
        set_u16(self.icmp, at, port);
        if let Some(sum) = self.l4_checksum {
            let c = update_u16(get_u16(self.icmp, sum..sum + 2), old, port);
            set_u16(self.icmp, sum..sum + 2, c);
        }
    }
}

fn shift(f: std::ops::Range<usize>, by: usize) -> std::ops::Range<usize> {
    f.start + by..f.end + by
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
        assert_eq!(get_u16(icmp, field::NEXT_HOP_MTU), 1450);
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

    /// A port unreachable quoting a UDP datagram, rewritten as a NAT does: the quoted
    /// header's checksums verify afterwards, and the fields read back as written.
    #[test]
    fn quoted_packets_are_rewritten_with_their_checksums() {
        let dgram =
            FrameSpec::udp(mac(1), mac(2), [10, 244, 1, 2].into(), [10, 244, 1, 3].into(), 5353, 8080)
                .payload(b"query")
                .build();
        let mut out = [0u8; MAX_ERROR_FRAME_LEN];
        let err = IcmpError {
            eth_src: mac(2),
            eth_dst: mac(1),
            src_ip: Ipv4Addr::new(10, 244, 1, 3),
            dst_ip: Ipv4Addr::new(10, 244, 1, 2),
            icmp_type: TYPE_DEST_UNREACHABLE,
            code: CODE_PORT_UNREACHABLE,
            next_hop_mtu: 0,
        };
        let len = write_error(&mut out, &err, &dgram[14..]);
        let icmp = &mut out[34..len];
        let mut q = Quoted::new(icmp).expect("an IPv4 UDP quote");
        assert_eq!((q.protocol(), q.source(), q.destination()), (IPPROTO_UDP, err.dst_ip, err.src_ip));
        assert_eq!((q.source_port(), q.destination_port()), (5353, 8080));
        q.set_destination(Ipv4Addr::new(10, 96, 0, 10));
        q.set_destination_port(53);
        q.set_source_port(40000);
        assert_eq!(
            (q.destination(), q.destination_port(), q.source_port()),
            ([10, 96, 0, 10].into(), 53, 40000)
        );
        fill_checksum(icmp);
        assert_eq!(checksum::checksum(icmp), 0, "ICMP checksum");
        let quoted = &icmp[field::QUOTED..];
        assert!(ipv4::Header::new_checked(quoted).unwrap().checksum_ok(), "quoted IP checksum");
        let l4 = &quoted[20..];
        let pseudo = checksum::pseudo_header_v4(
            Ipv4Addr::new(10, 244, 1, 2),
            Ipv4Addr::new(10, 96, 0, 10),
            IPPROTO_UDP,
            l4.len() as u16,
        );
        assert_eq!(!checksum::fold(checksum::sum(l4, pseudo)), 0, "quoted UDP checksum");
        // Not TCP/UDP, or cut short: no view.
        let mut short = out[34..34 + 8 + 20 + 7].to_vec();
        assert!(Quoted::new(&mut short).is_none());
    }
}
