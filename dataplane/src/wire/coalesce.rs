//! Receive offload in software (GRO): consecutive TCP segments of one flow become one
//! super-frame with the offload state a port with offloads takes (`gso_type` TCPv4/6,
//! `gso_size` the segments' payload, the checksum left partial) — the inverse of
//! [`offload::write_segment`](super::offload::write_segment).
//!
//! The rules are the kernel's (`tcp_gro_receive`, `inet_gro_receive`), kept on the safe
//! side: every header byte equal but the lengths, the IPv4 id and header checksum and
//! the sequence number; the id counting up by one (or, with DF, not at all); sequence
//! numbers contiguous; every segment but the last a full `gso_size`; flags ACK, with PSH
//! only on the last. A segment whose checksum is wrong is never merged: the super-frame's
//! checksum is left to the receiving stack to trust, so merging one would launder the
//! corruption.

use super::bytes::{get_u16, get_u32, set_u16};
use super::checksum::{fold, sum};
use super::ethernet::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, HEADER_LEN as ETHERNET_HEADER_LEN};
use super::ip::IPPROTO_TCP;
use super::offload::{F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, Offload};
use super::{ethernet, ipv4, ipv6, tcp};

/// The largest IP packet a super-frame may become (its length field's limit).
const MAX_IP_LEN: usize = 65_535;

/// Where a mergeable TCP segment's parts are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    ipv4: bool,
    /// The TCP header's offset, and the end of headers (the payload's start).
    l4: usize,
    hdr_len: usize,
    /// End of the IP packet (Ethernet padding excluded).
    ip_end: usize,
    seq: u32,
    flags: u8,
    ident: u16,
    dont_fragment: bool,
}

impl TcpSegment {
    /// Payload bytes.
    pub fn payload_len(&self) -> usize {
        self.ip_end - self.hdr_len
    }

    /// The bytes a super-frame starting with this segment keeps: headers and payload.
    pub fn ip_end(&self) -> usize {
        self.ip_end
    }

    /// Where its payload starts.
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// Its TCP flags (ACK, perhaps PSH).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// PSH ends a run: the sender wants what it has so far delivered now.
    pub fn ends_run(&self) -> bool {
        self.flags & tcp::PSH != 0
    }
}

/// `frame` as a segment that may be merged with its neighbours: an untagged IPv4 (no
/// options, not a fragment) or IPv6 (no extension headers) TCP segment with payload,
/// flags ACK or ACK|PSH. Anything else is `None` and goes out as it is.
pub fn tcp_segment(frame: &[u8]) -> Option<TcpSegment> {
    let l3 = ETHERNET_HEADER_LEN;
    let eth = frame.get(..l3)?;
    let (ipv4, l4, ip_end, ident, dont_fragment) = match get_u16(eth, ethernet::field::ETHERTYPE) {
        ETHERTYPE_IPV4 => {
            let ip = frame.get(l3..l3 + ipv4::MIN_HEADER_LEN)?;
            let frag = get_u16(ip, ipv4::field::FLAGS_FRAGMENT);
            if ip[ipv4::field::VERSION_IHL] != 0x45
                || ip[ipv4::field::PROTOCOL] != IPPROTO_TCP
                || frag & (ipv4::MORE_FRAGMENTS | ipv4::FRAGMENT_OFFSET_MASK) != 0
            {
                return None;
            }
            let ip_end = l3 + usize::from(get_u16(ip, ipv4::field::TOTAL_LEN));
            let ident = get_u16(ip, ipv4::field::IDENT);
            (true, l3 + ipv4::MIN_HEADER_LEN, ip_end, ident, frag & ipv4::DONT_FRAGMENT != 0)
        }
        ETHERTYPE_IPV6 => {
            let ip = frame.get(l3..l3 + ipv6::HEADER_LEN)?;
            if ip[ipv6::field::NEXT_HEADER] != IPPROTO_TCP {
                return None;
            }
            let ip_end = l3 + ipv6::HEADER_LEN + usize::from(get_u16(ip, ipv6::field::PAYLOAD_LEN));
            (false, l3 + ipv6::HEADER_LEN, ip_end, 0, true)
        }
        _ => return None,
    };
    if ip_end > frame.len() {
        return None;
    }
    let t = tcp::Header::new_checked(frame.get(l4..ip_end)?)?;
    let hdr_len = l4 + t.header_len();
    let flags = t.flags();
    if hdr_len >= ip_end || (flags != tcp::ACK && flags != tcp::ACK | tcp::PSH) {
        return None;
    }
    Some(TcpSegment { ipv4, l4, hdr_len, ip_end, seq: t.sequence(), flags, ident, dont_fragment })
}

/// Whether the segment's TCP checksum is right (over the pseudo-header, header and
/// payload).
pub fn checksum_ok(frame: &[u8], s: &TcpSegment) -> bool {
    fold(sum(&frame[s.l4..s.ip_end], pseudo_header(frame, s))) == 0xffff
}

fn pseudo_header(frame: &[u8], s: &TcpSegment) -> u64 {
    let l3 = ETHERNET_HEADER_LEN;
    let addrs = if s.ipv4 {
        &frame[l3 + ipv4::field::SOURCE.start..l3 + ipv4::field::DESTINATION.end]
    } else {
        &frame[l3 + ipv6::field::SOURCE.start..l3 + ipv6::field::DESTINATION.end]
    };
    sum(addrs, 0) + u64::from(IPPROTO_TCP) + (s.ip_end - s.l4) as u64
}

/// Whether segment `next` (in `next_frame`) continues a run that began with `first` (in
/// `first_frame`) and whose last segment so far is `prev`, merged `merged_len` bytes
/// long (headers and payloads) so far. Every segment but the last carries exactly the
/// first's payload length.
pub fn continues(
    first_frame: &[u8],
    first: &TcpSegment,
    prev: &TcpSegment,
    merged_len: usize,
    next_frame: &[u8],
    next: &TcpSegment,
) -> bool {
    let mss = first.payload_len();
    if prev.ends_run()
        || prev.payload_len() != mss
        || next.payload_len() > mss
        || next.ipv4 != first.ipv4
        || next.hdr_len != first.hdr_len
        || next.seq != prev.seq.wrapping_add(prev.payload_len() as u32)
        || merged_len - ETHERNET_HEADER_LEN + next.payload_len() > MAX_IP_LEN
    {
        return false;
    }
    let (a, b) = (first_frame, next_frame);
    let same = |r: std::ops::Range<usize>| a[r.clone()] == b[r];
    let l3 = ETHERNET_HEADER_LEN;
    let ip_same = if first.ipv4 {
        let ident_ok = if next.dont_fragment && first.dont_fragment && next.ident == first.ident {
            true
        } else {
            next.ident == prev.ident.wrapping_add(1)
        };
        ident_ok
            && same(l3..l3 + 2)
            && same(l3 + ipv4::field::FLAGS_FRAGMENT.start..l3 + ipv4::field::CHECKSUM.start)
            && same(l3 + ipv4::field::SOURCE.start..l3 + ipv4::field::DESTINATION.end)
    } else {
        same(l3..l3 + ipv6::field::PAYLOAD_LEN.start)
            && same(l3 + ipv6::field::NEXT_HEADER..l3 + ipv6::HEADER_LEN)
    };
    let l4 = first.l4;
    // Ports; then acknowledgement, data offset, flags, window, urgent and options: all
    // but the sequence number and the checksum. The flags may differ only by PSH.
    let tcp_same = same(l4..l4 + tcp::field::SEQUENCE.start)
        && same(l4 + tcp::field::ACKNOWLEDGEMENT.start..l4 + tcp::field::FLAGS)
        && same(l4 + tcp::field::WINDOW.start..l4 + tcp::field::CHECKSUM.start)
        && same(l4 + tcp::field::URGENT.start..first.hdr_len)
        && (a[l4 + tcp::field::FLAGS] | tcp::PSH) == (b[l4 + tcp::field::FLAGS] | tcp::PSH);
    same(0..l3) && ip_same && tcp_same
}

/// Turns `out[..len]` — the first segment's headers followed by every merged payload,
/// the first segment being `first` and the last one's flags `last_flags` — into a
/// super-frame: IP length and header checksum, PSH from the last segment, the TCP
/// checksum left partial (the pseudo-header sum, as a stack with TSO hands it over).
/// Returns its offload state.
pub fn finish(out: &mut [u8], first: &TcpSegment, len: usize, last_flags: u8) -> Offload {
    let l3 = ETHERNET_HEADER_LEN;
    let out = &mut out[..len];
    if first.ipv4 {
        let mut ip = ipv4::Header::new_unchecked(&mut out[l3..]);
        ip.set_total_len((len - l3) as u16);
        ip.fill_checksum();
    } else {
        set_u16(&mut out[l3..], ipv6::field::PAYLOAD_LEN, (len - l3 - ipv6::HEADER_LEN) as u16);
    }
    let l4 = first.l4;
    out[l4 + tcp::field::FLAGS] = first.flags | (last_flags & tcp::PSH);
    let merged = TcpSegment { ip_end: len, ..*first };
    let at = l4 + tcp::field::CHECKSUM.start;
    set_u16(out, at..at + 2, fold(pseudo_header(out, &merged)));
    let mss = first.payload_len();
    Offload {
        gso_type: if first.ipv4 { GSO_TCPV4 } else { GSO_TCPV6 },
        flags: F_NEEDS_CSUM,
        gso_size: mss as u16,
        csum_start: l4 as u16,
        csum_offset: tcp::field::CHECKSUM.start as u16,
        segment_len: (first.hdr_len + mss) as u16,
    }
}

/// The sequence number of a segment, for tests and traces.
pub fn sequence(frame: &[u8], s: &TcpSegment) -> u32 {
    get_u32(&frame[s.l4..], tcp::field::SEQUENCE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FrameSpec, mac, segments_of};

    /// A super-frame as a pod's TSO hands it over, cut by our own segmentation: the
    /// segments a stack without TSO (or the far side of a wire) would have sent.
    fn cut_super_frame(payload: usize, mss: u16, ipv4: bool) -> (Vec<u8>, Vec<Vec<u8>>) {
        let body: Vec<u8> = (0..payload).map(|i| (i * 13 + 5) as u8).collect();
        let spec = if ipv4 {
            FrameSpec::tcp(
                mac(1),
                mac(2),
                [10, 244, 1, 2].into(),
                [10, 244, 1, 3].into(),
                40000,
                80,
                tcp::ACK,
            )
        } else {
            FrameSpec::tcp6(
                mac(1),
                mac(2),
                "fd00::2".parse().unwrap(),
                "fd00::3".parse().unwrap(),
                40000,
                80,
                tcp::ACK,
            )
        };
        let whole = spec.payload(&body).build();
        let s = tcp_segment(&whole).unwrap();
        let off = Offload {
            gso_type: if ipv4 { GSO_TCPV4 } else { GSO_TCPV6 },
            flags: F_NEEDS_CSUM,
            gso_size: mss,
            csum_start: s.l4 as u16,
            csum_offset: 16,
            segment_len: (s.hdr_len + usize::from(mss)) as u16,
        };
        let segs = segments_of(&whole, &off);
        (whole, segs)
    }

    /// Merges every segment into one super-frame, checking each may follow.
    fn merge(segs: &[Vec<u8>]) -> Option<(Vec<u8>, Offload)> {
        let first = tcp_segment(&segs[0])?;
        let mut out = segs[0][..first.ip_end].to_vec();
        let mut prev = first;
        for seg in &segs[1..] {
            let next = tcp_segment(seg)?;
            if !checksum_ok(seg, &next) || !continues(&segs[0], &first, &prev, out.len(), seg, &next) {
                return None;
            }
            out.extend_from_slice(&seg[next.hdr_len..next.ip_end]);
            prev = next;
        }
        let len = out.len();
        let off = finish(&mut out, &first, len, prev.flags);
        Some((out, off))
    }

    #[test]
    fn segments_merge_back_into_the_super_frame_they_were_cut_from() {
        for ipv4 in [true, false] {
            let (whole, segs) = cut_super_frame(10 * 1448 + 100, 1448, ipv4);
            assert_eq!(segs.len(), 11);
            assert!(segs.iter().all(|s| checksum_ok(s, &tcp_segment(s).unwrap())));
            let (merged, off) = merge(&segs).unwrap();
            assert_eq!(off.gso_size, 1448);
            assert_eq!(off.flags, F_NEEDS_CSUM);
            // Cut again, the merged frame gives the very same segments.
            let again = segments_of(&merged, &off);
            assert_eq!(again, segs, "ipv4: {ipv4}");
            // And its partial checksum completes to the whole packet's.
            let mut done = merged.clone();
            let mut o = off;
            crate::wire::offload::complete_checksum(&mut done, &mut o);
            let s = tcp_segment(&done).unwrap();
            assert!(checksum_ok(&done, &s));
            assert_eq!(done.len(), whole.len());
        }
    }

    #[test]
    fn what_the_kernel_would_not_merge_is_not_merged() {
        let (_, segs) = cut_super_frame(4 * 1000, 1000, true);
        let first = tcp_segment(&segs[0]).unwrap();
        let len = first.ip_end;
        let check = |seg: &Vec<u8>, prev: &TcpSegment| {
            let next = tcp_segment(seg).unwrap();
            continues(&segs[0], &first, prev, len, seg, &next)
        };
        assert!(check(&segs[1], &first));
        // A gap in the sequence.
        assert!(!check(&segs[2], &first));
        // Another flow (source port).
        let mut other = segs[1].clone();
        other[34] ^= 1;
        assert!(!check(&other, &first));
        // Another acknowledgement, window, TTL or DSCP.
        for at in [34 + 8, 34 + 14, 14 + 8, 14 + 1] {
            let mut changed = segs[1].clone();
            changed[at] ^= 1;
            assert!(!check(&changed, &first), "byte {at}");
        }
        // An IPv4 id that does not count up.
        let mut id = segs[1].clone();
        id[14 + 5] ^= 2;
        assert!(!check(&id, &first));
        // A segment after a short one, or after PSH.
        let (_, short) = cut_super_frame(1000 + 500, 1000, true);
        let (_, mut tail) = cut_super_frame(2 * 1000, 1000, true);
        let s0 = tcp_segment(&short[1]).unwrap();
        assert!(!continues(
            &short[0],
            &tcp_segment(&short[0]).unwrap(),
            &s0,
            len,
            &tail[1],
            &tcp_segment(&tail[1]).unwrap()
        ));
        tail[0][34 + 13] |= tcp::PSH;
        let pushed = tcp_segment(&tail[0]).unwrap();
        assert!(pushed.ends_run());
        // SYN, FIN, RST or a bare ACK: not a mergeable segment at all.
        for flags in [tcp::SYN | tcp::ACK, tcp::FIN | tcp::ACK, tcp::RST, tcp::ACK | tcp::CWR] {
            let mut f = segs[1].clone();
            f[34 + 13] = flags;
            assert_eq!(tcp_segment(&f), None, "flags {flags:#x}");
        }
        let bare = FrameSpec::tcp(mac(1), mac(2), [10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1, 2, tcp::ACK)
            .build();
        assert_eq!(tcp_segment(&bare), None);
    }

    #[test]
    fn a_segment_with_a_wrong_checksum_is_found_out() {
        let (_, segs) = cut_super_frame(3 * 1000, 1000, true);
        let mut bad = segs[1].clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        assert!(!checksum_ok(&bad, &tcp_segment(&bad).unwrap()));
        assert!(merge(&[segs[0].clone(), bad, segs[2].clone()]).is_none());
    }

    #[test]
    fn a_merged_packet_stays_within_the_ip_length_limit() {
        let (_, segs) = cut_super_frame(2 * 1448, 1448, true);
        let (first, next) = (tcp_segment(&segs[0]).unwrap(), tcp_segment(&segs[1]).unwrap());
        // The run so far, as long as it may be before one more full segment.
        let room = ETHERNET_HEADER_LEN + MAX_IP_LEN - 1448;
        assert!(continues(&segs[0], &first, &first, room, &segs[1], &next));
        assert!(!continues(&segs[0], &first, &first, room + 1, &segs[1], &next));
        assert_eq!(sequence(&segs[1], &next), sequence(&segs[0], &first) + 1448);
    }
}
