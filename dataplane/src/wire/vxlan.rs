//! VXLAN (RFC 7348): the 8-byte header, and the outer Ethernet/IPv4/UDP headers the
//! switch prepends when it encapsulates a frame for another node.
//!
//! Outer IPv4 has DF set, so the underlay never fragments overlay traffic (too-big inner
//! packets are answered with ICMP fragmentation-needed before encapsulation). The outer
//! UDP checksum is zero, which RFC 7348 §5 allows for IPv4 and the Linux `vxlan` driver
//! accepts; the inner frame keeps its own checksums end to end.

use std::net::Ipv4Addr;

use super::ethernet::ETHERTYPE_IPV4;
use super::ip::IPPROTO_UDP;
use super::{Error, MacAddr, ethernet, ipv4, udp};

/// Field offsets from the start of the VXLAN header.
pub mod field {
    use std::ops::Range;
    pub const FLAGS: usize = 0;
    pub const RESERVED1: Range<usize> = 1..4;
    pub const VNI: Range<usize> = 4..7;
    pub const RESERVED2: usize = 7;
}

/// IANA-assigned VXLAN UDP port.
pub const DEFAULT_PORT: u16 = 4789;
pub const HEADER_LEN: usize = 8;
/// Outer Ethernet (14) + IPv4 (20) + UDP (8) + VXLAN (8).
pub const OUTER_LEN: usize = ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + udp::HEADER_LEN + HEADER_LEN;
/// The I flag: the VNI field is valid.
const FLAG_VNI_VALID: u8 = 0x08;

/// A view of a VXLAN header at the start of a buffer at least [`HEADER_LEN`] long.
#[derive(Debug)]
pub struct Header<T: AsRef<[u8]>>(T);

impl<T: AsRef<[u8]>> Header<T> {
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Header<T>, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::TruncatedVxlan);
        }
        Ok(Header(buffer))
    }

    /// The I flag: the VNI is valid.
    #[inline]
    pub fn vni_valid(&self) -> bool {
        self.0.as_ref()[field::FLAGS] & FLAG_VNI_VALID != 0
    }

    /// The 24-bit VNI.
    #[inline]
    pub fn vni(&self) -> u32 {
        let v = &self.0.as_ref()[field::VNI];
        u32::from_be_bytes([0, v[0], v[1], v[2]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    /// Writes the header for `vni` (I flag set, reserved bits zero).
    #[inline]
    pub fn write(&mut self, vni: u32) {
        let b = self.0.as_mut();
        b[field::FLAGS] = FLAG_VNI_VALID;
        b[field::RESERVED1].fill(0);
        b[field::VNI].copy_from_slice(&vni.to_be_bytes()[1..4]);
        b[field::RESERVED2] = 0;
    }
}

/// Reads the VNI from a VXLAN header.
///
/// Only the I flag is checked: RFC 7348 says reserved bits "MUST be ignored on receipt".
pub fn parse_header(b: &[u8]) -> Result<u32, Error> {
    let h = Header::new_checked(b)?;
    if !h.vni_valid() {
        return Err(Error::BadVxlanFlags);
    }
    Ok(h.vni())
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
    let udp_len = (udp::HEADER_LEN + HEADER_LEN + inner_len) as u16;
    let ip_total = ipv4::MIN_HEADER_LEN as u16 + udp_len;
    let (eth, rest) = out.split_at_mut(ethernet::HEADER_LEN);
    let mut eth = ethernet::Header::new_checked(eth).expect("OUTER_LEN holds an Ethernet header");
    eth.set_destination(o.dst_mac);
    eth.set_source(o.src_mac);
    eth.set_ethertype(ETHERTYPE_IPV4);
    let (ip, rest) = rest.split_at_mut(ipv4::MIN_HEADER_LEN);
    // Identification unused with DF (RFC 6864).
    ipv4::Header::new_unchecked(ip).write(
        0,
        ip_total,
        ipv4::DONT_FRAGMENT,
        o.ttl,
        IPPROTO_UDP,
        o.src_ip,
        o.dst_ip,
    );
    let (udp, vxlan) = rest.split_at_mut(udp::HEADER_LEN);
    udp::Header::new_checked(udp)
        .expect("OUTER_LEN holds a UDP header")
        .write(o.src_port, o.dst_port, udp_len, 0);
    Header(vxlan).write(o.vni);
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
        assert_eq!(parse_header(&[0x00, 0, 0, 0, 0, 0, 1, 0]), Err(Error::BadVxlanFlags));
        assert_eq!(parse_header(&[0x08, 0, 0, 0, 0, 0, 1]), Err(Error::TruncatedVxlan));
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
