//! IPv4 headers: a typed view with named field offsets, and in-place rewrites of a
//! parsed packet (addresses, transport ports, TTL).
//!
//! Every rewrite keeps the IPv4 header checksum and the TCP/UDP checksum correct by
//! incremental update (RFC 1624), so a rewrite costs the same for any payload size.
//! A UDP checksum of zero ("not computed", RFC 768) stays zero.

use std::net::Ipv4Addr;

use super::bytes::{get_u16, get_u32, set_u16, set_u32};
use super::checksum::{self, update_u16, update_u32};
use super::ip::{IPPROTO_TCP, IPPROTO_UDP};
use super::meta::{Fragment, Ipv4Meta, L4};
use super::{tcp, udp};

/// Field offsets from the start of the IPv4 header.
pub mod field {
    use std::ops::Range;
    pub const VERSION_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const TOTAL_LEN: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLAGS_FRAGMENT: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SOURCE: Range<usize> = 12..16;
    pub const DESTINATION: Range<usize> = 16..20;
}

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;
/// `FLAGS_FRAGMENT` bits.
pub const DONT_FRAGMENT: u16 = 0x4000;
pub const MORE_FRAGMENTS: u16 = 0x2000;
pub const FRAGMENT_OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 header at the start of a buffer: at least [`MIN_HEADER_LEN`]
/// bytes, and as many as its IHL says.
#[derive(Debug)]
pub struct Header<T: AsRef<[u8]>>(T);

impl<T: AsRef<[u8]>> Header<T> {
    /// `None` when the buffer cannot hold the header its version/IHL byte announces
    /// (or the version is not 4). The checksum is not verified here.
    #[inline]
    pub fn new_checked(buffer: T) -> Option<Header<T>> {
        let b = buffer.as_ref();
        let &vihl = b.first()?;
        let ihl = usize::from(vihl & 0x0f) * 4;
        (vihl >> 4 == 4 && ihl >= MIN_HEADER_LEN && b.len() >= ihl).then_some(Header(buffer))
    }

    /// A view of a buffer of at least [`MIN_HEADER_LEN`] bytes that is about to be
    /// filled by [`Header::write`].
    #[inline]
    pub fn new_unchecked(buffer: T) -> Header<T> {
        debug_assert!(buffer.as_ref().len() >= MIN_HEADER_LEN);
        Header(buffer)
    }

    /// The header's length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.0.as_ref()[field::VERSION_IHL] & 0x0f) * 4
    }

    #[inline]
    pub fn total_len(&self) -> u16 {
        get_u16(self.0.as_ref(), field::TOTAL_LEN)
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        get_u16(self.0.as_ref(), field::IDENT)
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.0.as_ref()[field::TTL]
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        self.0.as_ref()[field::PROTOCOL]
    }

    #[inline]
    pub fn source(&self) -> Ipv4Addr {
        Ipv4Addr::from(get_u32(self.0.as_ref(), field::SOURCE))
    }

    #[inline]
    pub fn destination(&self) -> Ipv4Addr {
        Ipv4Addr::from(get_u32(self.0.as_ref(), field::DESTINATION))
    }

    /// The header (options included) sums to zero.
    #[inline]
    pub fn checksum_ok(&self) -> bool {
        checksum::checksum(&self.0.as_ref()[..self.header_len()]) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    /// Writes a 20-byte header with the given fields (no options, not a fragment unless
    /// `flags_fragment` says so) and its checksum.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn write(
        &mut self,
        dscp_ecn: u8,
        total_len: u16,
        flags_fragment: u16,
        ttl: u8,
        protocol: u8,
        source: Ipv4Addr,
        destination: Ipv4Addr,
    ) {
        let b = self.0.as_mut();
        b[field::VERSION_IHL] = 0x45;
        b[field::DSCP_ECN] = dscp_ecn;
        set_u16(b, field::TOTAL_LEN, total_len);
        set_u16(b, field::IDENT, 0);
        set_u16(b, field::FLAGS_FRAGMENT, flags_fragment);
        b[field::TTL] = ttl;
        b[field::PROTOCOL] = protocol;
        set_u32(b, field::SOURCE, u32::from(source));
        set_u32(b, field::DESTINATION, u32::from(destination));
        set_u16(b, field::CHECKSUM, 0);
        // Without options: a fixed-size sum.
        let c = checksum::checksum(&b[..MIN_HEADER_LEN]);
        set_u16(b, field::CHECKSUM, c);
    }

    #[inline]
    pub fn set_total_len(&mut self, len: u16) {
        set_u16(self.0.as_mut(), field::TOTAL_LEN, len);
    }

    #[inline]
    pub fn set_ident(&mut self, ident: u16) {
        set_u16(self.0.as_mut(), field::IDENT, ident);
    }

    /// Computes the header checksum from scratch and writes it.
    #[inline]
    pub fn fill_checksum(&mut self) {
        let len = self.header_len();
        let b = self.0.as_mut();
        set_u16(b, field::CHECKSUM, 0);
        let c = checksum::checksum(&b[..len]);
        set_u16(b, field::CHECKSUM, c);
    }
}

/// A mutable view of the IPv4 packet at a parsed position in a frame.
pub struct Ipv4Mut<'a> {
    frame: &'a mut [u8],
    l3: usize,
    /// Offset of the transport header when it is present and has ports (TCP/UDP).
    ports_at: Option<usize>,
    /// Offset of a TCP/UDP checksum that covers the pseudo-header and is in use.
    l4_checksum_at: Option<usize>,
    is_udp: bool,
    /// The L4 checksum field holds only the pseudo-header sum, to be completed later
    /// (a frame with a partial checksum from a port with offloads).
    l4_partial: bool,
}

impl<'a> Ipv4Mut<'a> {
    /// `meta` must describe `frame` (as returned by [`super::parse()`] for it).
    pub fn new(frame: &'a mut [u8], l3_offset: u16, meta: &Ipv4Meta) -> Self {
        let l4 = usize::from(meta.l4_offset);
        let has_ports =
            meta.fragment != Fragment::Later && matches!(meta.l4, L4::Tcp { .. } | L4::Udp { .. });
        let (ports_at, l4_checksum_at) = match (has_ports, meta.protocol) {
            (true, IPPROTO_TCP) => (Some(l4), Some(l4 + tcp::field::CHECKSUM.start)),
            (true, IPPROTO_UDP) => {
                let at = l4 + udp::field::CHECKSUM.start;
                let in_use = frame[at] != 0 || frame[at + 1] != 0;
                (Some(l4), in_use.then_some(at))
            }
            _ => (None, None),
        };
        Ipv4Mut {
            frame,
            l3: usize::from(l3_offset),
            ports_at,
            l4_checksum_at,
            is_udp: meta.protocol == IPPROTO_UDP,
            l4_partial: false,
        }
    }

    /// Treats the L4 checksum as partial (virtio `NEEDS_CSUM`): the field holds the
    /// folded pseudo-header sum, not complemented, and the sum over the transport header
    /// and payload is added when it is completed. An address change then adjusts that
    /// sum; a port change needs nothing (the ports are summed at completion).
    pub fn with_partial_l4_checksum(mut self, partial: bool) -> Self {
        if partial && self.ports_at.is_some() {
            // A partial UDP checksum is never "unused": the field is always live.
            let field = if self.is_udp { udp::field::CHECKSUM } else { tcp::field::CHECKSUM };
            self.l4_checksum_at = self.ports_at.map(|l4| l4 + field.start);
        }
        self.l4_partial = partial;
        self
    }

    fn read16(&self, at: usize) -> u16 {
        get_u16(self.frame, at..at + 2)
    }

    fn write16(&mut self, at: usize, v: u16) {
        set_u16(self.frame, at..at + 2, v);
    }

    fn read32(&self, at: usize) -> u32 {
        get_u32(self.frame, at..at + 4)
    }

    fn fix_l4_checksum(&mut self, update: impl Fn(u16) -> u16) {
        if let Some(at) = self.l4_checksum_at {
            let old = self.read16(at);
            let c = if self.l4_partial {
                // The partial sum P is stored as is: P' = P - old + new, i.e. the
                // complement of the update applied to the complement.
                !update(!old)
            } else {
                let c = update(old);
                if c == 0 && self.is_udp { 0xffff } else { c }
            };
            self.write16(at, c);
        }
    }

    fn set_addr(&mut self, field: std::ops::Range<usize>, new: Ipv4Addr) {
        let at = self.l3 + field.start;
        let old = self.read32(at);
        let new = u32::from(new);
        self.frame[at..at + 4].copy_from_slice(&new.to_be_bytes());
        let sum_at = self.l3 + field::CHECKSUM.start;
        let ip_csum = update_u32(self.read16(sum_at), old, new);
        self.write16(sum_at, ip_csum);
        // The address is part of the TCP/UDP pseudo-header.
        self.fix_l4_checksum(|c| update_u32(c, old, new));
    }

    pub fn set_source(&mut self, new: Ipv4Addr) {
        self.set_addr(field::SOURCE, new);
    }

    pub fn set_destination(&mut self, new: Ipv4Addr) {
        self.set_addr(field::DESTINATION, new);
    }

    fn set_port(&mut self, field: std::ops::Range<usize>, new: u16) {
        let Some(l4) = self.ports_at else { return };
        let old = self.read16(l4 + field.start);
        self.write16(l4 + field.start, new);
        if !self.l4_partial {
            self.fix_l4_checksum(|c| update_u16(c, old, new));
        }
    }

    /// Rewrites the TCP/UDP source port; a no-op for packets without ports.
    pub fn set_source_port(&mut self, new: u16) {
        self.set_port(udp::field::SOURCE_PORT, new);
    }

    /// Rewrites the TCP/UDP destination port; a no-op for packets without ports.
    pub fn set_destination_port(&mut self, new: u16) {
        self.set_port(udp::field::DESTINATION_PORT, new);
    }

    /// Decrements the TTL as a router does. Returns `false`, leaving the packet
    /// unchanged, when the TTL is already 1 or 0 (the packet must not be forwarded).
    pub fn decrement_ttl(&mut self) -> bool {
        let at = self.l3 + field::TTL;
        let ttl = self.frame[at];
        if ttl <= 1 {
            return false;
        }
        // TTL shares a 16-bit word with the protocol field.
        let old = self.read16(at);
        self.frame[at] = ttl - 1;
        let new = self.read16(at);
        let sum_at = self.l3 + field::CHECKSUM.start;
        let c = update_u16(self.read16(sum_at), old, new);
        self.write16(sum_at, c);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FrameSpec, mac};
    use crate::wire::checksum::{checksum, fold, pseudo_header_v4, sum};
    use crate::wire::{Net, parse};
    use proptest::prelude::*;

    fn v4(frame: &[u8]) -> Ipv4Meta {
        match parse(frame).unwrap().net {
            Net::Ipv4(m) => m,
            other => panic!("not ipv4: {other:?}"),
        }
    }

    /// Checks every checksum in the frame from scratch.
    fn assert_checksums_valid(frame: &[u8]) {
        let m = v4(frame); // parse verifies the IPv4 header checksum
        let l4 = &frame[usize::from(m.l4_offset)..14 + usize::from(m.total_len)];
        let pseudo = pseudo_header_v4(m.src, m.dst, m.protocol, l4.len() as u16);
        match m.l4 {
            L4::Udp { .. } if l4[6..8] == [0, 0] => {}
            L4::Udp { .. } | L4::Tcp { .. } => assert_eq!(!fold(sum(l4, pseudo)), 0, "l4 checksum"),
            L4::Icmpv4 { .. } => assert_eq!(checksum(l4), 0, "icmp checksum"),
            _ => {}
        }
    }

    fn rewrite<R>(frame: &mut [u8], f: impl FnOnce(&mut Ipv4Mut<'_>) -> R) -> R {
        let m = v4(frame);
        f(&mut Ipv4Mut::new(frame, 14, &m))
    }

    #[test]
    fn dnat_of_captured_syn_matches_what_a_full_recompute_gives() {
        let mut f = crate::testing::CAPTURED_TCP_SYN.to_vec();
        assert_checksums_valid(&f);
        rewrite(&mut f, |p| {
            p.set_destination(Ipv4Addr::new(10, 96, 0, 10));
            p.set_destination_port(8080);
        });
        assert_checksums_valid(&f);
        let m = v4(&f);
        assert_eq!(m.dst, Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(m.l4, L4::Tcp { src_port: 59520, dst_port: 8080, flags: crate::wire::parse::TCP_SYN });
    }

    #[test]
    fn the_header_view_reads_a_captured_packet_and_writes_a_valid_one() {
        let syn = &crate::testing::CAPTURED_TCP_SYN[14..];
        let h = Header::new_checked(syn).unwrap();
        let m = v4(&crate::testing::CAPTURED_TCP_SYN);
        assert_eq!((h.source(), h.destination(), h.ttl(), h.protocol()), (m.src, m.dst, m.ttl, m.protocol));
        assert_eq!((h.header_len(), h.total_len()), (usize::from(m.header_len), m.total_len));
        assert!(h.checksum_ok());
        let mut buf = [0u8; 20];
        Header::new_unchecked(&mut buf[..]).write(
            0xc0,
            28,
            DONT_FRAGMENT,
            64,
            1,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
        );
        let h = Header::new_checked(&buf[..]).unwrap();
        assert!(h.checksum_ok());
        assert_eq!((h.total_len(), h.ttl(), h.source()), (28, 64, Ipv4Addr::new(10, 0, 0, 1)));
        assert!(Header::new_checked(&[0x46u8; 20][..]).is_none(), "IHL 24 in 20 bytes");
        assert!(Header::new_checked(&[0x65u8; 20][..]).is_none(), "version 6");
    }

    #[test]
    fn zero_udp_checksum_stays_zero() {
        let mut f =
            FrameSpec::udp(mac(1), mac(2), Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 1, 2)
                .payload(b"abc")
                .build();
        f[40] = 0;
        f[41] = 0;
        rewrite(&mut f, |p| {
            p.set_source(Ipv4Addr::new(192, 168, 0, 1));
            p.set_source_port(999);
        });
        assert_eq!(&f[40..42], &[0, 0]);
        assert_eq!(v4(&f).l4, L4::Udp { src_port: 999, dst_port: 2 });
    }

    #[test]
    fn ttl_decrement_and_expiry() {
        let mut f =
            FrameSpec::udp(mac(1), mac(2), Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 1, 2)
                .ttl(2)
                .build();
        let m = v4(&f);
        assert!(Ipv4Mut::new(&mut f, 14, &m).decrement_ttl());
        assert_eq!(v4(&f).ttl, 1);
        let before = f.clone();
        assert!(!Ipv4Mut::new(&mut f, 14, &m).decrement_ttl());
        assert_eq!(f, before, "an expiring packet is left untouched");
    }

    #[test]
    fn later_fragments_get_only_ip_rewrites() {
        let mut f =
            FrameSpec::udp(mac(1), mac(2), Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 1, 2)
                .payload(&[7; 16])
                .ipv4_fragment(3, false)
                .build();
        let payload_before = f[34..].to_vec();
        rewrite(&mut f, |p| {
            p.set_destination(Ipv4Addr::new(10, 1, 1, 1));
            p.set_destination_port(80);
        });
        assert_eq!(v4(&f).dst, Ipv4Addr::new(10, 1, 1, 1));
        assert_eq!(&f[34..], &payload_before[..], "no transport header to touch");
    }

    /// A partial checksum adjusted across a NAT rewrite completes to the same value as a
    /// full computation over the rewritten packet.
    #[test]
    fn partial_checksums_survive_nat() {
        use crate::wire::offload::{F_NEEDS_CSUM, Offload, complete_checksum};
        let full = FrameSpec::tcp(
            mac(1),
            mac(2),
            Ipv4Addr::new(10, 244, 1, 2),
            Ipv4Addr::new(10, 96, 0, 10),
            40000,
            80,
            0x18,
        )
        .payload(b"GET / HTTP/1.1")
        .build();
        // What the kernel hands over: the TCP checksum holding the pseudo-header sum.
        let mut f = full.clone();
        let m = v4(&f);
        let l4 = &f[34..];
        let pseudo = fold(pseudo_header_v4(m.src, m.dst, m.protocol, l4.len() as u16));
        f[50..52].copy_from_slice(&pseudo.to_be_bytes());
        {
            let mut p = Ipv4Mut::new(&mut f, 14, &m).with_partial_l4_checksum(true);
            p.set_destination(Ipv4Addr::new(10, 244, 1, 7));
            p.set_destination_port(8080);
            p.set_source(Ipv4Addr::new(169, 254, 1, 1));
        }
        let mut off = Offload { flags: F_NEEDS_CSUM, csum_start: 34, csum_offset: 16, ..Offload::NONE };
        complete_checksum(&mut f, &mut off);
        assert_checksums_valid(&f);
        let m = v4(&f);
        assert_eq!((m.src, m.dst), (Ipv4Addr::new(169, 254, 1, 1), Ipv4Addr::new(10, 244, 1, 7)));
    }

    fn any_l4() -> impl Strategy<Value = u8> {
        prop_oneof![Just(6u8), Just(17u8), Just(1u8)]
    }

    proptest! {
        /// Any sequence of NAT rewrites leaves every checksum as a full recomputation would.
        #[test]
        fn rewrites_keep_checksums_valid(
            proto in any_l4(),
            src in any::<u32>(), dst in any::<u32>(),
            sport in any::<u16>(), dport in any::<u16>(),
            new_src in any::<u32>(), new_dst in any::<u32>(),
            new_sport in any::<u16>(), new_dport in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            options in proptest::bool::ANY,
            ttl in 2u8..=255,
        ) {
            let (a, b) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
            let spec = match proto {
                6 => FrameSpec::tcp(mac(1), mac(2), a, b, sport, dport, 0x18),
                17 => FrameSpec::udp(mac(1), mac(2), a, b, sport, dport),
                _ => FrameSpec::icmp_echo(mac(1), mac(2), a, b, sport),
            };
            let spec = spec.payload(&payload).ttl(ttl);
            let spec = if options { spec.ipv4_options(&[0x94, 0x04, 0, 0]) } else { spec };
            let mut f = spec.build();
            rewrite(&mut f, |p| {
                p.set_source(Ipv4Addr::from(new_src));
                p.set_destination(Ipv4Addr::from(new_dst));
                p.set_source_port(new_sport);
                p.set_destination_port(new_dport);
                prop_assert!(p.decrement_ttl());
                Ok(())
            })?;
            assert_checksums_valid(&f);
            let m = v4(&f);
            prop_assert_eq!((m.src, m.dst, m.ttl), (Ipv4Addr::from(new_src), Ipv4Addr::from(new_dst), ttl - 1));
            match m.l4 {
                L4::Tcp { src_port, dst_port, .. } | L4::Udp { src_port, dst_port } => {
                    prop_assert_eq!((src_port, dst_port), (new_sport, new_dport));
                }
                _ => {}
            }
        }
    }
}
