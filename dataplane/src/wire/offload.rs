//! Offloads: the virtio-net header that TAP devices with `IFF_VNET_HDR` put in front of
//! every frame, and the work it describes done in software when a frame must leave
//! through a port that cannot take it as is.
//!
//! A pod's TCP stack on a TAP with TSO hands over one super-frame of up to 64 KiB
//! (`gso_type` TCPv4/TCPv6, `gso_size` payload bytes per segment) with its TCP checksum
//! left partial (`NEEDS_CSUM`: the field holds the pseudo-header sum; the sum over
//! `csum_start..` completes it). The switch forwards it whole to another port with
//! offloads, and cuts it into segments ([`write_segment`]) or completes the checksum
//! ([`complete_checksum`]) only where it must: toward a port without offloads, or
//! before encapsulation.
//!
//! The header is the legacy 10-byte `virtio_net_hdr` in host byte order, which is what
//! the kernel's TAP driver uses unless told otherwise (`TUNSETVNETLE`/`BE`).

use super::bytes::{get_u16, set_u16};
use super::checksum::{fold, sum};
use super::ethernet::{
    ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, HEADER_LEN as ETHERNET_HEADER_LEN, VLAN_TAG_LEN,
};
use super::ip::{IPPROTO_TCP, IPPROTO_UDP};
use super::meta::{Fragment, FrameMeta, L4, Net};
use super::{Error, ethernet, ipv4, ipv6, tcp, udp};

/// Field offsets of the virtio-net header (host byte order).
pub mod field {
    use std::ops::Range;
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Range<usize> = 2..4;
    pub const GSO_SIZE: Range<usize> = 4..6;
    pub const CSUM_START: Range<usize> = 6..8;
    pub const CSUM_OFFSET: Range<usize> = 8..10;
}

pub const VNET_HDR_LEN: usize = 10;

#[inline(always)]
fn get_ne16(b: &[u8], at: std::ops::Range<usize>) -> u16 {
    u16::from_ne_bytes([b[at.start], b[at.start + 1]])
}

#[inline(always)]
fn set_ne16(b: &mut [u8], at: std::ops::Range<usize>, v: u16) {
    b[at].copy_from_slice(&v.to_ne_bytes());
}

pub const F_NEEDS_CSUM: u8 = 1;
/// Set by the kernel on frames it already checksummed; nothing for us to do.
pub const F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
/// Flag in `gso_type`: the super-frame's TCP header had CWR set.
pub const GSO_ECN: u8 = 0x80;

/// Flag in `gso_type`: a UDP tunnel (VXLAN) over IPv4 around the super-frame; the
/// low bits name the inner packet's type (`virtio_net_hdr_v1_hash_tunnel`, Linux 6.17).
pub const GSO_UDP_TUNNEL_IPV4: u8 = 0x20;
pub const GSO_UDP_TUNNEL_IPV6: u8 = 0x40;
const GSO_UDP_TUNNEL: u8 = GSO_UDP_TUNNEL_IPV4 | GSO_UDP_TUNNEL_IPV6;
/// The outer UDP checksum is left to the device too (ours is always zero).
pub const F_UDP_TUNNEL_CSUM: u8 = 8;
/// The header of a TAP set up for UDP-tunnel offloads (`TUNSETVNETHDRSZ`): the
/// `virtio_net_hdr_v1_hash_tunnel` (24 bytes) padded to 32, as the kernel checks it.
pub const TUNNEL_HDR_LEN: usize = 32;
/// Where the tunnel header's own fields are (little-endian).
const OUTER_TH_OFFSET: std::ops::Range<usize> = 20..22;
const INNER_NH_OFFSET: std::ops::Range<usize> = 22..24;

/// Segments one super-frame may be cut into. A 64 KiB packet at the smallest MSS Linux
/// sends (48 bytes) needs 1366; anything beyond is not a frame a real stack produces.
pub const MAX_SEGMENTS: usize = 2048;

/// Offload state of a frame, as the virtio-net header describes it: the frame may be a
/// TSO/GSO super-frame to be cut into segments of `gso_size` payload bytes, and its L4
/// checksum may be left partial.
///
/// Only ports with offloads produce or accept such frames; the pipeline completes the
/// work in software before a frame leaves through a port without them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// `VIRTIO_NET_HDR_GSO_*`; zero for an ordinary frame.
    pub gso_type: u8,
    /// `VIRTIO_NET_HDR_F_*`: NEEDS_CSUM means the L4 checksum holds only the
    /// pseudo-header sum.
    pub flags: u8,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (the L4 header), from the first byte of the frame.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
    /// Length of the longest segment on the wire (headers included); the MTU checks
    /// use it instead of the super-frame's length.
    pub segment_len: u16,
}

impl Offload {
    pub const NONE: Offload =
        Offload { gso_type: 0, flags: 0, gso_size: 0, csum_start: 0, csum_offset: 0, segment_len: 0 };
    /// A backend got a header that [`decode`] rejected: the pipeline drops the frame
    /// as `bad_offload_header`.
    pub const INVALID: Offload =
        Offload { gso_type: 0xff, flags: 0xff, gso_size: 0, csum_start: 0, csum_offset: 0, segment_len: 0 };

    #[inline]
    pub fn is_invalid(&self) -> bool {
        *self == Offload::INVALID
    }

    /// A super-frame that must be segmented before it meets a port without offloads.
    #[inline]
    pub fn is_gso(&self) -> bool {
        self.gso_type != 0
    }

    /// A super-frame inside a UDP tunnel: only a tunnel port takes it.
    #[inline]
    pub fn is_tunnel(&self) -> bool {
        self.gso_type & GSO_UDP_TUNNEL != 0
    }

    /// Anything a port without offloads cannot take as is.
    #[inline]
    pub fn is_pending(&self) -> bool {
        self.gso_type != 0 || self.flags & F_NEEDS_CSUM != 0
    }
}

/// Reads and validates the virtio-net header of `frame`.
///
/// What segmentation and checksum completion rely on is checked here, once: offsets
/// inside the frame; for a super-frame, a transport header where `csum_start` says, the
/// GSO type matching the IP version, a bounded number of segments. A header that fails
/// any of this is a [`Error::BadOffloadHeader`]. The pipeline then checks, against
/// the parsed headers, that `csum_start` is the transport header and `csum_offset` its
/// checksum field, so a completed checksum can land nowhere else.
pub fn decode(hdr: &[u8; VNET_HDR_LEN], frame: &[u8]) -> Result<Offload, Error> {
    let bad = Err(Error::BadOffloadHeader);
    let flags = hdr[field::FLAGS] & !F_DATA_VALID;
    let gso_type = hdr[field::GSO_TYPE];
    let gso_size = get_ne16(hdr, field::GSO_SIZE);
    let csum_start = get_ne16(hdr, field::CSUM_START);
    let csum_offset = get_ne16(hdr, field::CSUM_OFFSET);
    if flags & !F_NEEDS_CSUM != 0 {
        return bad;
    }
    let mut off = Offload { gso_type, flags, gso_size, csum_start, csum_offset, segment_len: 0 };
    if flags & F_NEEDS_CSUM != 0 {
        let at = usize::from(csum_start) + usize::from(csum_offset);
        if usize::from(csum_start) < ETHERNET_HEADER_LEN || at + 2 > frame.len() {
            return bad;
        }
    }
    if gso_type == GSO_NONE {
        off.csum_offset = if flags == 0 { 0 } else { csum_offset };
        off.csum_start = if flags == 0 { 0 } else { csum_start };
        return Ok(off);
    }
    // A super-frame always has its checksum left to the device.
    if flags & F_NEEDS_CSUM == 0 || gso_size == 0 {
        return bad;
    }
    let Some(shape) = Shape::of(frame, &off) else { return bad };
    let payload = shape.ip_end - shape.hdr_len;
    let segments = payload.div_ceil(usize::from(gso_size)).max(1);
    if segments > MAX_SEGMENTS {
        return bad;
    }
    // A segment longer than any IP packet cannot be described (nor exist).
    off.segment_len = u16::try_from(shape.hdr_len + payload.min(usize::from(gso_size)))
        .map_err(|_| Error::BadOffloadHeader)?;
    Ok(off)
}

/// Reads and validates the header of a frame from a tunnel port: a VXLAN packet whose
/// offload work, if any, concerns the packet inside (a UDP-tunnel super-frame, or a
/// partial inner checksum). The inner packet is checked for real by [`decapsulated`],
/// once the outer headers are gone; here only what the pipeline needs before that: the
/// offsets inside the frame and past the outer headers, and the longest segment's
/// length for the MTU check.
pub fn decode_tunnel(hdr: &[u8; TUNNEL_HDR_LEN], frame: &[u8]) -> Result<Offload, Error> {
    let bad = Err(Error::BadOffloadHeader);
    let flags = hdr[field::FLAGS] & !(F_DATA_VALID | F_UDP_TUNNEL_CSUM);
    let gso_type = hdr[field::GSO_TYPE];
    if flags & !F_NEEDS_CSUM != 0 || gso_type & GSO_UDP_TUNNEL_IPV6 != 0 {
        return bad;
    }
    let gso_size = get_ne16(hdr, field::GSO_SIZE);
    let csum_start = get_ne16(hdr, field::CSUM_START);
    let csum_offset = get_ne16(hdr, field::CSUM_OFFSET);
    if flags == 0 {
        return if gso_type == GSO_NONE { Ok(Offload::NONE) } else { bad };
    }
    let start = usize::from(csum_start);
    let outer_udp = ETHERNET_HEADER_LEN + ipv4::MIN_HEADER_LEN;
    if gso_type == GSO_NONE && start == outer_udp && usize::from(csum_offset) == udp::field::CHECKSUM.start {
        // Only the outer UDP checksum is left to do (a kernel vxlan sender with
        // `udpcsum`, the inner packet not offloaded): the outer headers are stripped, the
        // inner packet is finished.
        return Ok(Offload::NONE);
    }
    // The outer Ethernet, IPv4, UDP and VXLAN headers, then at least an inner Ethernet
    // and IPv4 header come first.
    if start < super::vxlan::OUTER_LEN + ETHERNET_HEADER_LEN + ipv4::MIN_HEADER_LEN
        || start + usize::from(csum_offset) + 2 > frame.len()
    {
        return bad;
    }
    let mut off = Offload { gso_type, flags, gso_size, csum_start, csum_offset, segment_len: 0 };
    match gso_type & !GSO_ECN {
        GSO_NONE => Ok(off),
        t if t & GSO_UDP_TUNNEL_IPV4 != 0 && matches!(t & !GSO_UDP_TUNNEL, GSO_TCPV4 | GSO_TCPV6) => {
            let doff =
                usize::from(*frame.get(start + tcp::field::DATA_OFFSET).ok_or(Error::BadOffloadHeader)? >> 4)
                    * 4;
            let hdr_len = start + doff.max(tcp::MIN_HEADER_LEN);
            // The inner packet ends where its own IP length says (Ethernet padding or
            // stray bytes after it belong to no segment).
            let inner = frame.get(super::vxlan::OUTER_LEN..).unwrap_or_default();
            let end = ip_end(inner).map_or(0, |e| super::vxlan::OUTER_LEN + e);
            if gso_size == 0 || hdr_len > end || end > frame.len() {
                return bad;
            }
            let payload = end - hdr_len;
            if payload.div_ceil(usize::from(gso_size)) > MAX_SEGMENTS {
                return bad;
            }
            off.segment_len = u16::try_from(hdr_len + payload.min(usize::from(gso_size)))
                .map_err(|_| Error::BadOffloadHeader)?;
            Ok(off)
        }
        _ => bad,
    }
}

/// The offload state of the frame inside a tunnel frame described by `off`, once the
/// `outer` bytes in front of it are stripped: the same checks as a pod's header gets
/// ([`decode`]), on the inner frame.
pub fn decapsulated(off: &Offload, outer: usize, inner: &[u8]) -> Result<Offload, Error> {
    let start = usize::from(off.csum_start).checked_sub(outer).ok_or(Error::BadOffloadHeader)?;
    let plain = Offload {
        gso_type: off.gso_type & !GSO_UDP_TUNNEL,
        flags: off.flags & F_NEEDS_CSUM,
        csum_start: u16::try_from(start).map_err(|_| Error::BadOffloadHeader)?,
        ..*off
    };
    decode(&encode(&plain, inner), inner)
}

/// The offload state of a super-frame `off` once `outer` bytes of UDP-tunnel headers
/// (over IPv4) are written in front of it: the device segments the inner packet and
/// repeats the outer headers on every segment.
pub fn encapsulated(off: &Offload, outer: usize) -> Offload {
    Offload {
        gso_type: off.gso_type | GSO_UDP_TUNNEL_IPV4,
        csum_start: off.csum_start + outer as u16,
        segment_len: off.segment_len + outer as u16,
        ..*off
    }
}

/// The 32-byte header of a frame toward a tunnel port: the plain fields, then where
/// the outer transport header (UDP) and the inner network header start.
pub fn encode_tunnel(off: &Offload, frame: &[u8]) -> [u8; TUNNEL_HDR_LEN] {
    let mut h = [0u8; TUNNEL_HDR_LEN];
    if *off == Offload::NONE {
        return h;
    }
    h[field::FLAGS] = off.flags;
    h[field::GSO_TYPE] = off.gso_type;
    set_ne16(&mut h, field::GSO_SIZE, off.gso_size);
    set_ne16(&mut h, field::CSUM_START, off.csum_start);
    set_ne16(&mut h, field::CSUM_OFFSET, off.csum_offset);
    if off.is_tunnel() {
        let start = usize::from(off.csum_start);
        let doff = frame
            .get(start + tcp::field::DATA_OFFSET)
            .map_or(tcp::MIN_HEADER_LEN, |b| usize::from(b >> 4) * 4);
        set_ne16(&mut h, field::HDR_LEN, (start + doff) as u16);
        let outer_l4 = ETHERNET_HEADER_LEN + ipv4::MIN_HEADER_LEN;
        h[OUTER_TH_OFFSET].copy_from_slice(&(outer_l4 as u16).to_le_bytes());
        h[INNER_NH_OFFSET]
            .copy_from_slice(&((super::vxlan::OUTER_LEN + ETHERNET_HEADER_LEN) as u16).to_le_bytes());
    }
    h
}

/// Checks a frame's offload state against the headers the parser found: the checksum
/// the switch may have to write later lands in the transport header's checksum field
/// and nowhere else, and segmentation cuts at the transport header's real start (a pod
/// controls the virtio header through its packet sockets).
#[inline]
pub fn matches_headers(off: &Offload, meta: &FrameMeta) -> Result<(), Error> {
    if !off.is_pending() {
        return Ok(());
    }

    let (l4_offset, l4) = match &meta.net {
        Net::Ipv4(v4) if v4.fragment == Fragment::None => (v4.l4_offset, v4.l4),
        Net::Ipv6(v6) if v6.fragment == Fragment::None => (v6.l4_offset, v6.l4),
        _ => return Err(Error::BadOffloadHeader),
    };
    let field = match l4 {
        L4::Tcp { .. } => tcp::field::CHECKSUM.start,
        L4::Udp { .. } => udp::field::CHECKSUM.start,
        _ => return Err(Error::BadOffloadHeader),
    };
    if usize::from(off.csum_start) != usize::from(l4_offset) || usize::from(off.csum_offset) != field {
        return Err(Error::BadOffloadHeader);
    }
    Ok(())
}

/// [`matches_headers`] for a frame from a tunnel port: offload work, if any, lies inside
/// a VXLAN packet (IPv4, UDP to `vxlan_port`, not a fragment) past its VXLAN header; the
/// decapsulation checks it against the inner headers ([`decapsulated`]).
pub fn matches_tunnel_headers(off: &Offload, meta: &FrameMeta, vxlan_port: u16) -> Result<(), Error> {
    if !off.is_pending() {
        return Ok(());
    }
    match &meta.net {
        Net::Ipv4(outer)
            if outer.fragment == Fragment::None
                && matches!(outer.l4, L4::Udp { dst_port, .. } if dst_port == vxlan_port)
                && usize::from(outer.l4_offset) + udp::HEADER_LEN + super::vxlan::HEADER_LEN
                    < usize::from(off.csum_start) =>
        {
            Ok(())
        }
        _ => Err(Error::BadOffloadHeader),
    }
}

/// The header to write in front of `frame` toward a port with offloads.
pub fn encode(off: &Offload, frame: &[u8]) -> [u8; VNET_HDR_LEN] {
    let hdr_len = if off.is_gso() { Shape::of(frame, off).map_or(0, |s| s.hdr_len) } else { 0 };
    let mut h = [0u8; VNET_HDR_LEN];
    h[field::FLAGS] = off.flags;
    h[field::GSO_TYPE] = off.gso_type;
    set_ne16(&mut h, field::HDR_LEN, hdr_len as u16);
    set_ne16(&mut h, field::GSO_SIZE, off.gso_size);
    set_ne16(&mut h, field::CSUM_START, off.csum_start);
    set_ne16(&mut h, field::CSUM_OFFSET, off.csum_offset);
    h
}

/// Where the layers of a super-frame are, as far as segmentation needs.
#[derive(Clone, Copy, Debug)]
struct Shape {
    l3: usize,
    ipv4: bool,
    tcp: bool,
    /// Headers up to the end of the transport header: copied into every segment.
    hdr_len: usize,
    /// End of the IP packet (Ethernet padding excluded).
    ip_end: usize,
}

impl Shape {
    fn of(frame: &[u8], off: &Offload) -> Option<Shape> {
        let (l3, ethertype) = l3_of(frame)?;
        let l4 = usize::from(off.csum_start);
        let (ipv4, min_ip, ip_end) = match ethertype {
            ETHERTYPE_IPV4 => {
                let ip = frame.get(l3..l3 + ipv4::MIN_HEADER_LEN)?;
                let ihl = usize::from(ip[ipv4::field::VERSION_IHL] & 0x0f) * 4;
                (true, ihl.max(ipv4::MIN_HEADER_LEN), l3 + usize::from(get_u16(ip, ipv4::field::TOTAL_LEN)))
            }
            ETHERTYPE_IPV6 => {
                let ip = frame.get(l3..l3 + ipv6::HEADER_LEN)?;
                let payload = usize::from(get_u16(ip, ipv6::field::PAYLOAD_LEN));
                (false, ipv6::HEADER_LEN, l3 + ipv6::HEADER_LEN + payload)
            }
            _ => return None,
        };
        let base = off.gso_type & !GSO_ECN;
        let tcp = match base {
            GSO_TCPV4 if ipv4 => true,
            GSO_TCPV6 if !ipv4 => true,
            GSO_UDP_L4 => false,
            _ => return None,
        };
        if l4 < l3 + min_ip || ip_end > frame.len() {
            return None;
        }
        let l4_len = if tcp {
            if usize::from(off.csum_offset) != tcp::field::CHECKSUM.start {
                return None;
            }
            let doff = usize::from(*frame.get(l4 + tcp::field::DATA_OFFSET)? >> 4) * 4;
            if doff < tcp::MIN_HEADER_LEN {
                return None;
            }
            doff
        } else {
            if usize::from(off.csum_offset) != udp::field::CHECKSUM.start {
                return None;
            }
            udp::HEADER_LEN
        };
        let hdr_len = l4 + l4_len;
        if hdr_len > ip_end {
            return None;
        }
        Some(Shape { l3, ipv4, tcp, hdr_len, ip_end })
    }
}

/// Where the network header of an untagged or single-tagged frame starts, and its
/// EtherType.
fn l3_of(frame: &[u8]) -> Option<(usize, u16)> {
    let eth = frame.get(..ETHERNET_HEADER_LEN)?;
    let ethertype = get_u16(eth, ethernet::field::ETHERTYPE);
    if ethertype != ETHERTYPE_VLAN {
        return Some((ETHERNET_HEADER_LEN, ethertype));
    }
    // The tag's own EtherType follows its 2-byte TCI.
    let tag = frame.get(ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + VLAN_TAG_LEN)?;
    Some((ETHERNET_HEADER_LEN + VLAN_TAG_LEN, get_u16(tag, 2..4)))
}

/// How many segments a super-frame (validated by [`decode`]) is cut into.
pub fn segment_count(frame: &[u8], off: &Offload) -> usize {
    match Shape::of(frame, off) {
        Some(s) if off.gso_size > 0 => (s.ip_end - s.hdr_len).div_ceil(usize::from(off.gso_size)).max(1),
        _ => 0,
    }
}

/// Writes segment `index` of the super-frame `frame` into `out` and returns its length:
/// the headers, then `gso_size` bytes of payload (fewer for the last), with IP lengths,
/// the IPv4 id and header checksum, the TCP sequence number and flags (FIN and PSH only
/// on the last segment, CWR only on the first) and a complete L4 checksum.
///
/// `frame` must have passed [`decode`] with `off`, `index < segment_count`, and `out`
/// must hold `off.segment_len` bytes.
pub fn write_segment(frame: &[u8], off: &Offload, index: usize, out: &mut [u8]) -> usize {
    let Some(s) = Shape::of(frame, off) else { return 0 };
    let gso = usize::from(off.gso_size);
    let start = s.hdr_len + index * gso;
    let end = (start + gso).min(s.ip_end);
    let seg_len = s.hdr_len + (end - start);
    out[..s.hdr_len].copy_from_slice(&frame[..s.hdr_len]);
    out[s.hdr_len..seg_len].copy_from_slice(&frame[start..end]);
    let out = &mut out[..seg_len];
    let l3 = s.l3;
    let l4 = usize::from(off.csum_start);
    let last = end == s.ip_end;

    if s.ipv4 {
        let mut ip = ipv4::Header::new_unchecked(&mut out[l3..]);
        ip.set_total_len((seg_len - l3) as u16);
        let id = ip.ident().wrapping_add(index as u16);
        ip.set_ident(id);
        ip.fill_checksum();
    } else {
        let payload = (seg_len - l3 - ipv6::HEADER_LEN) as u16;
        set_u16(&mut out[l3..], ipv6::field::PAYLOAD_LEN, payload);
    }

    let l4_len = seg_len - l4;
    if s.tcp {
        let mut t = tcp::Header::new_checked(&mut out[l4..]).expect("the shape has a whole TCP header");
        t.set_sequence(t.sequence().wrapping_add((index * gso) as u32));
        let mut flags = t.flags();
        if !last {
            flags &= !(tcp::FIN | tcp::PSH);
        }
        if index > 0 {
            flags &= !tcp::CWR;
        }
        t.set_flags(flags);
    } else {
        udp::Header::new_checked(&mut out[l4..]).expect("the shape has a UDP header").set_len(l4_len as u16);
    }
    let proto = if s.tcp { IPPROTO_TCP } else { IPPROTO_UDP };
    let at = l4 + usize::from(off.csum_offset);
    set_u16(out, at..at + 2, 0);
    let pseudo = pseudo_header(out, l3, s.ipv4, proto, l4_len);
    let mut c = !fold(sum(&out[l4..], pseudo));
    if !s.tcp && c == 0 {
        c = 0xffff; // zero means "no checksum" in UDP
    }
    set_u16(out, at..at + 2, c);
    seg_len
}

fn pseudo_header(frame: &[u8], l3: usize, ipv4: bool, proto: u8, l4_len: usize) -> u64 {
    let addrs = if ipv4 {
        &frame[l3 + ipv4::field::SOURCE.start..l3 + ipv4::field::DESTINATION.end]
    } else {
        &frame[l3 + ipv6::field::SOURCE.start..l3 + ipv6::field::DESTINATION.end]
    };
    sum(addrs, 0) + u64::from(proto) + l4_len as u64
}

/// Where the IP packet of an untagged or tagged Ethernet frame ends, from its length field.
fn ip_end(frame: &[u8]) -> Option<usize> {
    let (l3, ethertype) = l3_of(frame)?;
    match ethertype {
        ETHERTYPE_IPV4 => {
            let ip = frame.get(l3..l3 + ipv4::field::TOTAL_LEN.end)?;
            Some(l3 + usize::from(get_u16(ip, ipv4::field::TOTAL_LEN)))
        }
        ETHERTYPE_IPV6 => {
            let ip = frame.get(l3..l3 + ipv6::field::PAYLOAD_LEN.end)?;
            Some(l3 + ipv6::HEADER_LEN + usize::from(get_u16(ip, ipv6::field::PAYLOAD_LEN)))
        }
        _ => None,
    }
}

/// Completes a partial L4 checksum in place (`NEEDS_CSUM` without segmentation) and
/// clears the flag. `off` must come from [`decode`] for this frame.
pub fn complete_checksum(frame: &mut [u8], off: &mut Offload) {
    if off.flags & F_NEEDS_CSUM == 0 {
        return;
    }
    let start = usize::from(off.csum_start);
    let at = start + usize::from(off.csum_offset);
    // The transport segment ends with the IP packet, not the frame (Ethernet padding).
    let end = ip_end(frame).unwrap_or(frame.len()).clamp(at + 2, frame.len());
    // The field holds the pseudo-header sum; summing it in with the rest completes it.
    let mut c = !fold(sum(&frame[start..end], 0));
    let is_udp = usize::from(off.csum_offset) == udp::field::CHECKSUM.start;
    if is_udp && c == 0 {
        c = 0xffff;
    }
    set_u16(frame, at..at + 2, c);
    off.flags &= !F_NEEDS_CSUM;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FrameSpec, mac};
    use crate::wire::checksum::{checksum, pseudo_header_v4};
    use crate::wire::{L4, Net, parse};
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn hdr(flags: u8, gso_type: u8, gso_size: u16, csum_start: u16, csum_offset: u16) -> [u8; VNET_HDR_LEN] {
        let off = Offload { gso_type, flags, gso_size, csum_start, csum_offset, segment_len: 0 };
        let mut h = encode(&off, &[]);
        h[2..4].copy_from_slice(&[0, 0]);
        h
    }

    /// What the kernel hands over for a TSO super-frame: total length of the whole
    /// packet, TCP checksum field holding the pseudo-header sum only.
    fn partial(mut frame: Vec<u8>, l4: usize, csum_at: usize, proto: u8) -> Vec<u8> {
        let l3 = 14;
        let (src, dst, v4) = if frame[12..14] == [0x08, 0x00] {
            (&frame[l3 + 12..l3 + 16], &frame[l3 + 16..l3 + 20], true)
        } else {
            (&frame[l3 + 8..l3 + 24], &frame[l3 + 24..l3 + 40], false)
        };
        let addrs: Vec<u8> = [src, dst].concat();
        let _ = v4;
        let pseudo = fold(sum(&addrs, 0) + u64::from(proto) + (frame.len() - l4) as u64);
        frame[csum_at..csum_at + 2].copy_from_slice(&pseudo.to_be_bytes());
        frame
    }

    fn tcp4_super(payload: usize, flags: u8) -> Vec<u8> {
        let body: Vec<u8> = (0..payload).map(|i| (i * 7 + 3) as u8).collect();
        let f =
            FrameSpec::tcp(mac(1), mac(2), [10, 244, 1, 2].into(), [10, 244, 1, 3].into(), 40000, 80, flags)
                .payload(&body)
                .build();
        partial(f, 34, 34 + 16, IPPROTO_TCP)
    }

    fn assert_l4_checksum_valid(frame: &[u8]) {
        let m = parse(frame).unwrap();
        match m.net {
            Net::Ipv4(v4) => {
                let l4 = &frame[usize::from(v4.l4_offset)..14 + usize::from(v4.total_len)];
                let p = pseudo_header_v4(v4.src, v4.dst, v4.protocol, l4.len() as u16);
                assert_eq!(!fold(sum(l4, p)), 0, "l4 checksum of {} bytes", l4.len());
            }
            Net::Ipv6(v6) => {
                let l4 = &frame[usize::from(v6.l4_offset)..];
                let addrs = [v6.src.octets(), v6.dst.octets()].concat();
                let p = sum(&addrs, 0) + u64::from(v6.next_header) + l4.len() as u64;
                assert_eq!(!fold(sum(l4, p)), 0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tso_super_frame_is_cut_like_the_kernel_would() {
        let flags = 0x18 | 0x01; // PSH ACK FIN
        let f = tcp4_super(4000, flags);
        let off = decode(&hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, 34, 16), &f).unwrap();
        assert_eq!(off.segment_len, 54 + 1448);
        assert_eq!(segment_count(&f, &off), 3);
        let mut seq = None;
        let mut payload = Vec::new();
        for i in 0..3 {
            let mut out = vec![0u8; 2048];
            let n = write_segment(&f, &off, i, &mut out);
            let seg = &out[..n];
            assert_checksums(seg);
            let Net::Ipv4(v4) = parse(seg).unwrap().net else { panic!() };
            let L4::Tcp { flags: seg_flags, .. } = v4.l4 else { panic!() };
            let s = u32::from_be_bytes(seg[38..42].try_into().unwrap());
            if let Some(prev) = seq {
                assert_eq!(s, prev + 1448);
            }
            seq = Some(s);
            let last = i == 2;
            assert_eq!(seg_flags & 0x09 != 0, last, "FIN/PSH only on the last segment");
            assert_eq!(u16::from_be_bytes([seg[18], seg[19]]), u16::from_be_bytes([f[18], f[19]]) + i as u16);
            payload.extend_from_slice(&seg[54..]);
        }
        assert_eq!(payload, f[54..], "the segments carry the payload in order, whole");
    }

    fn assert_checksums(frame: &[u8]) {
        assert!(parse(frame).is_ok(), "IPv4 header checksum verified by the parser");
        assert_l4_checksum_valid(frame);
    }

    #[test]
    fn tcp6_and_udp_l4_segmentation() {
        let src: Ipv6Addr = "fd00::2".parse().unwrap();
        let dst: Ipv6Addr = "fd00::3".parse().unwrap();
        let body = vec![0x42; 3000];
        let f = FrameSpec::tcp6(mac(1), mac(2), src, dst, 1, 2, 0x10).payload(&body).build();
        let f = partial(f, 54, 54 + 16, IPPROTO_TCP);
        let off = decode(&hdr(F_NEEDS_CSUM, GSO_TCPV6, 1000, 54, 16), &f).unwrap();
        assert_eq!(segment_count(&f, &off), 3);
        for i in 0..3 {
            let mut out = vec![0u8; 2048];
            let n = write_segment(&f, &off, i, &mut out);
            assert_eq!(n, 74 + 1000);
            assert_l4_checksum_valid(&out[..n]);
        }

        let udp = FrameSpec::udp(mac(1), mac(2), [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 5, 6)
            .payload(&[9; 2500])
            .build();
        let udp = partial(udp, 34, 40, IPPROTO_UDP);
        let off = decode(&hdr(F_NEEDS_CSUM, GSO_UDP_L4, 1200, 34, 6), &udp).unwrap();
        assert_eq!(segment_count(&udp, &off), 3);
        let mut out = vec![0u8; 2048];
        let n = write_segment(&udp, &off, 2, &mut out);
        assert_eq!(n, 42 + 100);
        assert_checksums(&out[..n]);
        assert_eq!(u16::from_be_bytes([out[38], out[39]]), 108, "UDP length of the last datagram");
    }

    #[test]
    fn partial_checksum_is_completed() {
        let f = FrameSpec::tcp(mac(1), mac(2), [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1, 2, 0x10)
            .payload(b"hello")
            .build();
        let mut p = partial(f.clone(), 34, 50, IPPROTO_TCP);
        assert_ne!(p, f);
        let mut off = decode(&hdr(F_NEEDS_CSUM, GSO_NONE, 0, 34, 16), &p).unwrap();
        assert!(off.is_pending() && !off.is_gso());
        complete_checksum(&mut p, &mut off);
        assert_eq!(p, f, "the same bytes a full computation gives");
        assert!(!off.is_pending());
    }

    #[test]
    fn completion_ignores_ethernet_padding() {
        let f = FrameSpec::udp(mac(1), mac(2), [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1, 2).build();
        let mut padded = partial(f.clone(), 34, 40, IPPROTO_UDP);
        padded.extend_from_slice(&[0xee; 12]);
        let mut off = decode(&hdr(F_NEEDS_CSUM, GSO_NONE, 0, 34, 6), &padded).unwrap();
        complete_checksum(&mut padded, &mut off);
        assert_eq!(&padded[..f.len()], &f[..]);
    }

    #[test]
    fn bad_headers_are_rejected() {
        let f = tcp4_super(3000, 0x10);
        let cases = [
            ("unknown flag", hdr(0x04, GSO_NONE, 0, 0, 0)),
            ("csum beyond frame", hdr(F_NEEDS_CSUM, GSO_NONE, 0, 34, 9000)),
            ("csum inside ethernet", hdr(F_NEEDS_CSUM, GSO_NONE, 0, 4, 0)),
            ("gso without csum", hdr(0, GSO_TCPV4, 1448, 34, 16)),
            ("gso size zero", hdr(F_NEEDS_CSUM, GSO_TCPV4, 0, 34, 16)),
            ("tcpv6 on ipv4", hdr(F_NEEDS_CSUM, GSO_TCPV6, 1448, 34, 16)),
            ("legacy UFO", hdr(F_NEEDS_CSUM, 3, 1448, 34, 16)),
            ("tcp csum offset", hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, 34, 6)),
            ("l4 inside ip header", hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, 30, 16)),
            ("too many segments", hdr(F_NEEDS_CSUM, GSO_TCPV4, 1, 34, 16)),
        ];
        for (what, h) in cases {
            assert_eq!(decode(&h, &f), Err(Error::BadOffloadHeader), "{what}");
        }
        assert_eq!(decode(&hdr(F_DATA_VALID, GSO_NONE, 0, 0, 0), &f).unwrap(), Offload::NONE);
    }

    #[test]
    fn header_round_trip() {
        let f = tcp4_super(3000, 0x10);
        let h = hdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 1448, 34, 16);
        let off = decode(&h, &f).unwrap();
        let back = encode(&off, &f);
        assert_eq!(back[0..2], h[0..2]);
        assert_eq!(u16::from_ne_bytes([back[2], back[3]]), 54, "hdr_len: Ethernet + IPv4 + TCP");
        assert_eq!(back[4..], h[4..]);
    }

    /// `inner` behind 50 bytes of outer headers (their content does not matter here).
    fn in_tunnel(inner: &[u8]) -> Vec<u8> {
        [&[0u8; super::super::vxlan::OUTER_LEN][..], inner].concat()
    }

    fn tunnel_hdr(
        flags: u8,
        gso_type: u8,
        gso_size: u16,
        csum_start: u16,
        csum_offset: u16,
    ) -> [u8; TUNNEL_HDR_LEN] {
        let mut h = [0u8; TUNNEL_HDR_LEN];
        h[..VNET_HDR_LEN].copy_from_slice(&hdr(flags, gso_type, gso_size, csum_start, csum_offset));
        h
    }

    #[test]
    fn a_tunnel_super_frame_round_trips_and_decapsulates_to_the_inner_one() {
        let inner = tcp4_super(6000, 0x18);
        let inner_off = decode(&hdr(F_NEEDS_CSUM, GSO_TCPV4, 1400, 34, 16), &inner).unwrap();
        let frame = in_tunnel(&inner);
        let off = encapsulated(&inner_off, 50);
        let h = encode_tunnel(&off, &frame);
        assert_eq!(h[field::GSO_TYPE], GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4);
        assert_eq!(get_ne16(&h, field::HDR_LEN), 50 + 54, "headers up to the inner payload");
        assert_eq!(u16::from_le_bytes([h[20], h[21]]), 34, "outer UDP header");
        assert_eq!(u16::from_le_bytes([h[22], h[23]]), 64, "inner IPv4 header");
        let back = decode_tunnel(&h, &frame).unwrap();
        assert_eq!(back, off);
        assert_eq!(back.segment_len, inner_off.segment_len + 50);
        assert_eq!(decapsulated(&back, 50, &inner).unwrap(), inner_off);
        // The outer checksum flag a kernel sender sets changes nothing for us.
        let mut h2 = h;
        h2[field::FLAGS] |= F_UDP_TUNNEL_CSUM;
        assert_eq!(decode_tunnel(&h2, &frame).unwrap(), off);
    }

    #[test]
    fn partial_checksums_in_a_tunnel_frame() {
        let inner = partial(
            FrameSpec::udp(mac(1), mac(2), [10, 244, 1, 2].into(), [10, 244, 2, 2].into(), 5000, 53)
                .payload(b"hello")
                .build(),
            34,
            40,
            IPPROTO_UDP,
        );
        let frame = in_tunnel(&inner);
        // The inner UDP checksum left partial: the pod gets it flagged.
        let off = decode_tunnel(&tunnel_hdr(F_NEEDS_CSUM, GSO_NONE, 0, 84, 6), &frame).unwrap();
        let inner_off = decapsulated(&off, 50, &inner).unwrap();
        assert_eq!((inner_off.flags, inner_off.csum_start, inner_off.csum_offset), (F_NEEDS_CSUM, 34, 6));
        // Only the outer UDP checksum left: nothing for the inner packet.
        assert_eq!(
            decode_tunnel(&tunnel_hdr(F_NEEDS_CSUM, GSO_NONE, 0, 34, 6), &frame).unwrap(),
            Offload::NONE
        );
        assert_eq!(decode_tunnel(&[0; TUNNEL_HDR_LEN], &frame).unwrap(), Offload::NONE);
    }

    #[test]
    fn bad_tunnel_headers_are_rejected() {
        let inner = tcp4_super(6000, 0x18);
        let frame = in_tunnel(&inner);
        let tunnel_tcp = GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4;
        for (why, h) in [
            ("checksum inside the outer headers", tunnel_hdr(F_NEEDS_CSUM, GSO_NONE, 0, 40, 6)),
            ("past the frame", tunnel_hdr(F_NEEDS_CSUM, GSO_NONE, 0, 6100, 16)),
            ("GSO without a partial checksum", tunnel_hdr(0, tunnel_tcp, 1400, 84, 16)),
            ("GSO of size zero", tunnel_hdr(F_NEEDS_CSUM, tunnel_tcp, 0, 84, 16)),
            ("an absurd segment count", tunnel_hdr(F_NEEDS_CSUM, tunnel_tcp, 1, 84, 16)),
            ("an IPv6 tunnel", tunnel_hdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_UDP_TUNNEL_IPV6, 1400, 84, 16)),
            ("plain GSO on a tunnel port", tunnel_hdr(F_NEEDS_CSUM, GSO_TCPV4, 1400, 84, 16)),
            ("UDP GSO in a tunnel", tunnel_hdr(F_NEEDS_CSUM, GSO_UDP_L4 | GSO_UDP_TUNNEL_IPV4, 1400, 84, 6)),
            ("unknown flags", tunnel_hdr(F_NEEDS_CSUM | 0x40, GSO_NONE, 0, 84, 16)),
        ] {
            assert_eq!(decode_tunnel(&h, &frame), Err(Error::BadOffloadHeader), "{why}");
        }
        // Accepted outside, but the inner checks fail: not the inner TCP header.
        let off = decode_tunnel(&tunnel_hdr(F_NEEDS_CSUM, tunnel_tcp, 1400, 88, 16), &frame).unwrap();
        let meta = parse(&inner).unwrap();
        let inner_off = decapsulated(&off, 50, &inner).and_then(|o| matches_headers(&o, &meta).map(|()| o));
        assert_eq!(inner_off, Err(Error::BadOffloadHeader));
        assert_eq!(
            decapsulated(&off, 90, &inner),
            Err(Error::BadOffloadHeader),
            "csum_start before the inner frame"
        );
    }

    proptest! {
        /// Any super-frame decode accepts is cut into segments that each parse, carry
        /// valid checksums, fit `segment_len`, and together hold the payload exactly.
        #[test]
        fn segments_reassemble_to_the_super_frame(
            payload in 1usize..6000, gso in 1u16..3000, tcp in any::<bool>(), v6 in any::<bool>(),
        ) {
            let body: Vec<u8> = (0..payload).map(|i| (i % 251) as u8).collect();
            let (a4, b4) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
            let (a6, b6): (Ipv6Addr, Ipv6Addr) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
            let l4 = if v6 { 54 } else { 34 };
            let spec = match (tcp, v6) {
                (true, false) => FrameSpec::tcp(mac(1), mac(2), a4, b4, 1, 2, 0x19),
                (true, true) => FrameSpec::tcp6(mac(1), mac(2), a6, b6, 1, 2, 0x19),
                (false, false) => FrameSpec::udp(mac(1), mac(2), a4, b4, 1, 2),
                (false, true) => FrameSpec::udp6(mac(1), mac(2), a6, b6, 1, 2),
            };
            let f = spec.payload(&body).build();
            let (proto, csum_off) = if tcp { (IPPROTO_TCP, 16) } else { (IPPROTO_UDP, 6) };
            let f = partial(f, l4, l4 + usize::from(csum_off), proto);
            let gso_type = match (tcp, v6) { (true, false) => GSO_TCPV4, (true, true) => GSO_TCPV6, _ => GSO_UDP_L4 };
            let Ok(off) = decode(&hdr(F_NEEDS_CSUM, gso_type, gso, l4 as u16, csum_off), &f) else {
                prop_assert!(payload.div_ceil(usize::from(gso)) > MAX_SEGMENTS);
                return Ok(());
            };
            let hdr_len = l4 + if tcp { 20 } else { 8 };
            let mut joined = Vec::new();
            for i in 0..segment_count(&f, &off) {
                let mut out = vec![0u8; hdr_len + usize::from(gso)];
                let n = write_segment(&f, &off, i, &mut out);
                prop_assert!(n <= usize::from(off.segment_len));
                assert_l4_checksum_valid(&out[..n]);
                joined.extend_from_slice(&out[hdr_len..n]);
            }
            prop_assert_eq!(joined, body);
        }
    }

    #[test]
    fn ipv4_header_checksum_of_segments() {
        let f = tcp4_super(2000, 0x10);
        let off = decode(&hdr(F_NEEDS_CSUM, GSO_TCPV4, 1448, 34, 16), &f).unwrap();
        let mut out = vec![0u8; 2048];
        let n = write_segment(&f, &off, 1, &mut out);
        assert_eq!(checksum(&out[14..34]), 0);
        assert_eq!(u16::from_be_bytes([out[16], out[17]]) as usize, n - 14);
    }
}
