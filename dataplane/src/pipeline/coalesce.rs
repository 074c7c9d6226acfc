//! Coalescing toward ports with offloads (GRO in software): a run of consecutive TCP
//! segments of one flow in a port's transmit batch leaves as one super-frame, so a pod's
//! TAP takes one write and its stack one packet for what arrived as dozens of segments
//! (from an AF_XDP pod, the uplink, or another node through the overlay). The rules of
//! what may merge are the wire layer's ([`crate::wire::coalesce`]).

use crate::frame::{Frame, FramePool};
use crate::stats::WorkerStats;
use crate::wire::coalesce::{self, TcpSegment};
use crate::wire::offload::Offload;

/// A run being merged: the super-frame so far, its length, its last segment, and how
/// many segments went in.
struct Run {
    merged: Frame,
    len: usize,
    last: TcpSegment,
    segments: u64,
}

/// A finished frame that is a mergeable TCP segment. Frames with offload work of their
/// own (super-frames, partial checksums) pass as they are.
fn segment(frame: &Frame) -> Option<TcpSegment> {
    if frame.offload != Offload::NONE {
        return None;
    }
    coalesce::tcp_segment(frame.data())
}

/// Merges each run of consecutive same-flow TCP segments in `frames` (one port's
/// transmit batch, the port taking super-frames) into one super-frame, in place; every
/// other frame keeps its place. `scratch` is an empty vector kept by the caller for its
/// capacity; it is empty again on return.
pub(crate) fn coalesce_tcp(
    frames: &mut Vec<Frame>,
    scratch: &mut Vec<Frame>,
    pool: &mut FramePool,
    stats: &WorkerStats,
) {
    if frames.len() < 2 {
        return;
    }
    std::mem::swap(frames, scratch);
    let mut input = scratch.drain(..).peekable();
    while let Some(frame) = input.next() {
        let Some(first) = segment(&frame) else {
            frames.push(frame);
            continue;
        };
        let mut run: Option<Run> = None;
        while let Some(next) = input.peek() {
            let Some(seg) = segment(next) else { break };
            let (prev, len) = run.as_ref().map_or((first, first.ip_end()), |r| (r.last, r.len));
            if !coalesce::continues(frame.data(), &first, &prev, len, next.data(), &seg)
                || !coalesce::checksum_ok(next.data(), &seg)
                || (run.is_none() && !coalesce::checksum_ok(frame.data(), &first))
            {
                break;
            }
            let next = input.next().expect("peeked");
            let r = run.get_or_insert_with(|| {
                let mut merged = pool.get_large();
                merged.spare_mut()[..first.ip_end()].copy_from_slice(&frame.data()[..first.ip_end()]);
                Run { merged, len: first.ip_end(), last: first, segments: 1 }
            });
            let payload = &next.data()[seg.hdr_len()..seg.ip_end()];
            r.merged.spare_mut()[r.len..r.len + payload.len()].copy_from_slice(payload);
            r.len += payload.len();
            r.last = seg;
            r.segments += 1;
            pool.put(next);
        }
        match run {
            Some(Run { mut merged, len, last, segments }) => {
                merged.offload = coalesce::finish(merged.spare_mut(), &first, len, last.flags());
                merged.set_len(len);
                merged.ingress = frame.ingress;
                pool.put(frame);
                frames.push(merged);
                stats.events.gro_coalesced.inc();
                stats.events.gro_segments.add(segments);
            }
            None => frames.push(frame),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::DEFAULT_BUF_SIZE;
    use crate::testing::{FrameSpec, mac, segments_of};
    use crate::wire::offload::{F_NEEDS_CSUM, GSO_TCPV4, complete_checksum};
    use crate::wire::tcp;

    /// `count` segments of `mss` bytes of one flow, as a sender without TSO sends them.
    fn flow(src_port: u16, count: usize, mss: u16) -> Vec<Vec<u8>> {
        let body: Vec<u8> = (0..count * usize::from(mss)).map(|i| (i % 251) as u8).collect();
        let whole = FrameSpec::tcp(
            mac(1),
            mac(2),
            [10, 0, 0, 1].into(),
            [10, 0, 0, 2].into(),
            src_port,
            80,
            tcp::ACK,
        )
        .payload(&body)
        .build();
        let off = Offload {
            gso_type: GSO_TCPV4,
            flags: F_NEEDS_CSUM,
            gso_size: mss,
            csum_start: 34,
            csum_offset: 16,
            segment_len: 54 + mss,
        };
        segments_of(&whole, &off)
    }

    fn frames(pool: &mut FramePool, data: &[Vec<u8>]) -> Vec<Frame> {
        data.iter().map(|d| pool.copy_of(d).unwrap()).collect()
    }

    /// What the receiving stack gets: each frame, super-frames cut back into segments.
    fn as_segments(frames: &[Frame]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for f in frames {
            if !f.offload.is_gso() {
                out.push(f.data().to_vec());
                continue;
            }
            out.extend(segments_of(f.data(), &f.offload));
        }
        out
    }

    #[test]
    fn runs_of_one_flow_become_one_super_frame_each_and_nothing_else_moves() {
        let mut pool = FramePool::standalone(DEFAULT_BUF_SIZE);
        let stats = WorkerStats::new(4);
        let (a, b) = (flow(1000, 5, 1000), flow(2000, 3, 1000));
        let arp = crate::testing::arp_request(mac(9), [10, 0, 0, 9].into(), [10, 0, 0, 1].into());
        // a0..a4, an ARP frame, b0..b2, a lone a-segment out of order.
        let mut sent: Vec<Vec<u8>> = a.clone();
        sent.push(arp.clone());
        sent.extend(b.clone());
        let mut batch = frames(&mut pool, &sent);
        let mut scratch = Vec::new();
        coalesce_tcp(&mut batch, &mut scratch, &mut pool, &stats);
        assert_eq!(batch.len(), 3, "flow a, the ARP frame, flow b");
        assert!(scratch.is_empty());
        assert_eq!(batch[0].offload.gso_size, 1000);
        assert_eq!(batch[1].data(), &arp[..]);
        assert_eq!(as_segments(&batch), sent, "the receiver sees exactly what was sent");
        assert_eq!((stats.events.gro_coalesced.get(), stats.events.gro_segments.get()), (2, 8));
        // The super-frame's partial checksum completes to a correct one.
        let mut whole = batch[0].data().to_vec();
        let mut off = batch[0].offload;
        complete_checksum(&mut whole, &mut off);
        let s = coalesce::tcp_segment(&whole).unwrap();
        assert!(coalesce::checksum_ok(&whole, &s));
    }

    #[test]
    fn a_corrupt_segment_ends_the_run_and_is_passed_on_unmerged() {
        let mut pool = FramePool::standalone(DEFAULT_BUF_SIZE);
        let stats = WorkerStats::new(4);
        let mut segs = flow(1000, 4, 500);
        let last = segs[2].len() - 1;
        segs[2][last] ^= 1;
        let mut batch = frames(&mut pool, &segs);
        coalesce_tcp(&mut batch, &mut Vec::new(), &mut pool, &stats);
        // [s0+s1], s2 (corrupt, as it came), s3 (alone: nothing to merge with).
        assert_eq!(batch.len(), 3);
        assert_eq!(batch[1].data(), &segs[2][..]);
        assert_eq!(as_segments(&batch), segs);
    }

    #[test]
    fn frames_with_offload_work_of_their_own_pass_untouched() {
        let mut pool = FramePool::standalone(DEFAULT_BUF_SIZE);
        let stats = WorkerStats::new(4);
        let segs = flow(1000, 3, 500);
        let mut batch = frames(&mut pool, &segs);
        batch[1].offload = Offload { flags: F_NEEDS_CSUM, csum_start: 34, csum_offset: 16, ..Offload::NONE };
        coalesce_tcp(&mut batch, &mut Vec::new(), &mut pool, &stats);
        assert_eq!(batch.len(), 3);
        assert_eq!(stats.events.gro_coalesced.get(), 0);
    }
}
