//! Dispatch: each frame to where its verdict sends it — a port's transmit batch, every
//! other port of its segment, the underlay (encapsulated) — with the offload work a
//! port without offloads cannot do finished in software first.

use crate::drop_reason::DropReason;
use crate::frame::{Frame, FramePool};
use crate::ids::{NodeIndex, PortId};
use crate::stage::Verdict;
use crate::stages::overlay;
use crate::stats::WorkerStats;
use crate::tables::overlay::{OverlayTable, RemoteNode};
use crate::tables::{PortEntry, Tables};
use crate::wire::ethernet::HEADER_LEN as ETHERNET_HEADER_LEN;
use crate::wire::{offload, vxlan};

/// Frames one egress port may have waiting within one poll round. Ordinary rounds stay
/// far below (a batch per queue); it bounds what software segmentation of super-frames
/// cut into tiny segments could otherwise pile up.
pub(crate) const MAX_TX_BACKLOG: usize = 8192;

/// Frames waiting to be transmitted, grouped by egress port.
pub(crate) struct TxBatches {
    per_port: Vec<Vec<Frame>>,
    touched: Vec<PortId>,
}

impl TxBatches {
    pub(crate) fn new(max_ports: usize) -> TxBatches {
        TxBatches { per_port: (0..max_ports).map(|_| Vec::new()).collect(), touched: Vec::new() }
    }

    /// Queues `frame` for `port`; hands it back when the port's backlog is full.
    #[inline(always)]
    pub(crate) fn push(&mut self, port: PortId, frame: Frame) -> Result<(), Frame> {
        let q = &mut self.per_port[port.index()];
        if q.is_empty() {
            self.touched.push(port);
        } else if q.len() >= MAX_TX_BACKLOG {
            return Err(frame);
        }
        q.push(frame);
        Ok(())
    }

    /// Calls `f` with each port that has frames waiting, then forgets the list. `f` must
    /// empty the batch it is given (transmit or drop every frame).
    pub(crate) fn flush(&mut self, mut f: impl FnMut(PortId, &mut Vec<Frame>)) {
        for port in self.touched.drain(..) {
            let q = &mut self.per_port[port.index()];
            f(port, q);
            debug_assert!(q.is_empty(), "flush callback must consume the batch");
        }
    }

    /// How many frames wait for each port that has any, for [`queued_since`](Self::queued_since).
    pub(crate) fn queued_lengths(&self) -> Vec<usize> {
        self.touched.iter().map(|p| self.per_port[p.index()].len()).collect()
    }

    /// The frames queued since `lengths` was taken, with their ports.
    pub(crate) fn queued_since<'s>(
        &'s self,
        lengths: &'s [usize],
    ) -> impl Iterator<Item = (PortId, &'s Frame)> {
        // Ports are touched in order and stay until the flush: the first ones are those
        // `lengths` counted.
        self.touched.iter().enumerate().flat_map(move |(i, port)| {
            let from = lengths.get(i).copied().unwrap_or(0);
            self.per_port[port.index()][from..].iter().map(move |f| (*port, f))
        })
    }

    /// For tests: every waiting frame's port number and bytes, the buffers back in
    /// `pool`.
    #[cfg(test)]
    pub(crate) fn take_sent(&mut self, pool: &mut FramePool) -> Vec<(u16, Vec<u8>)> {
        let mut sent = Vec::new();
        self.flush(|port, frames| {
            for f in frames.drain(..) {
                sent.push((port.0, f.data().to_vec()));
                pool.put(f);
            }
        });
        sent
    }
}

// Always inlined: see `pipeline::stages`.
#[inline(always)]
pub(super) fn dispatch(
    tables: &Tables,
    stats: &WorkerStats,
    ingress: &PortEntry,
    frame: Frame,
    verdict: Verdict,
    pool: &mut FramePool,
    out: &mut TxBatches,
) {
    let reason = match verdict {
        Verdict::Forward(p) => match tables.port(p) {
            Some(egress) if frame.wire_len() <= egress.max_frame_len() => {
                return emit(stats, egress, frame, pool, out);
            }
            Some(_) => DropReason::EgressMtuExceeded,
            None => DropReason::EgressPortGone,
        },
        Verdict::Flood => match flood(tables, stats, ingress, frame, pool, out) {
            Ok(()) => return,
            Err((frame, reason)) => {
                stats.count_drop(ingress.id, reason);
                return pool.put(frame);
            }
        },
        Verdict::Overlay { node, entropy } => {
            return to_overlay(tables, stats, frame, node, entropy, pool, out);
        }
        Verdict::Drop(reason) => reason,
    };
    stats.count_drop(ingress.id, reason);
    pool.put(frame);
}

/// Encapsulates a routed frame toward a remote node and queues it on the underlay port.
/// A super-frame stays whole toward a tunnel port; toward the others it is cut into
/// segments first, and a partial checksum completed: they carry finished packets.
/// Counts and frees what it drops itself: handing the frame back with its reason made
/// every call build a frame-sized answer (benches/callgrind.sh, vxlan_encap 1053 → 1043).
#[inline(never)]
fn to_overlay(
    tables: &Tables,
    stats: &WorkerStats,
    frame: Frame,
    node: NodeIndex,
    entropy: u16,
    pool: &mut FramePool,
    out: &mut TxBatches,
) {
    let ov = tables.overlay();
    let no_underlay = |frame: Frame, pool: &mut FramePool| {
        stats.count_drop(frame.ingress, DropReason::OverlayNoUnderlay);
        pool.put(frame);
    };
    let Some(remote) = ov.node(node) else { return no_underlay(frame, pool) };
    // The AF_XDP underlay once the next hop is known, else the kernel socket.
    let fast = ov.fast.zip(remote.next_hop_mac).and_then(|(f, nh)| Some((tables.port(f.port)?, (f.mac, nh))));
    let (egress, macs) = match fast {
        Some((port, macs)) => (port, Some(macs)),
        None => match ov.tx_port.and_then(|p| tables.port(p)) {
            Some(port) => (port, None),
            None => return no_underlay(frame, pool),
        },
    };
    if egress.tunnel && frame.offload.is_gso() && fits_whole(&frame, egress) {
        return encapsulate_whole(stats, ov, remote, entropy, egress, frame, pool, out);
    }
    finish_in_software(stats, frame, pool, |mut f, pool| {
        if !overlay::encapsulate(ov, remote, entropy, macs, &mut f) || f.len() > egress.max_frame_len() {
            stats.count_drop(f.ingress, DropReason::OverlayMtuExceeded);
            return pool.put(f);
        }
        stats.events.overlay_encapsulated.inc();
        enqueue(stats, egress, f, pool, out);
    });
}

/// Whether the super-frame `frame`, encapsulated, can be described to a tunnel port: TCP
/// (the kernel segments TCP inside a UDP tunnel), its outer IPv4 length fits the
/// header's field, and each of its segments the port.
/// (Pods' stacks build super-frames of at most 64 KiB of IP packet, so only one near
/// that limit is cut in software.)
fn fits_whole(frame: &Frame, egress: &PortEntry) -> bool {
    matches!(frame.offload.gso_type & !offload::GSO_ECN, offload::GSO_TCPV4 | offload::GSO_TCPV6)
        && frame.len() - ETHERNET_HEADER_LEN + vxlan::OUTER_LEN <= usize::from(u16::MAX)
        && usize::from(frame.offload.segment_len) + vxlan::OUTER_LEN <= egress.max_frame_len()
}

/// A super-frame toward a tunnel port: encapsulated once, as it is, and described as a
/// UDP-tunnel super-frame, so the kernel segments it at the egress device (or carries it
/// whole where the device can), as its own vxlan device's output is.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn encapsulate_whole(
    stats: &WorkerStats,
    ov: &OverlayTable,
    remote: &RemoteNode,
    entropy: u16,
    egress: &PortEntry,
    mut frame: Frame,
    pool: &mut FramePool,
    out: &mut TxBatches,
) {
    let inner = frame.offload;
    if !overlay::encapsulate(ov, remote, entropy, None, &mut frame) {
        stats.count_drop(frame.ingress, DropReason::OverlayMtuExceeded);
        return pool.put(frame);
    }
    frame.offload = offload::encapsulated(&inner, vxlan::OUTER_LEN);
    stats.events.overlay_encapsulated.inc();
    stats.events.overlay_whole.inc();
    enqueue(stats, egress, frame, pool, out);
}

/// Queues `frame` for `egress`. A port without offloads gets what it can take: a
/// partial checksum completed, a TSO/GSO super-frame cut into segments.
// Always inlined: see `pipeline::stages`.
#[inline(always)]
fn emit(stats: &WorkerStats, egress: &PortEntry, frame: Frame, pool: &mut FramePool, out: &mut TxBatches) {
    if !frame.offload.is_pending() || egress.offloads {
        return enqueue(stats, egress, frame, pool, out);
    }
    finish_offloads(stats, egress, frame, pool, out)
}

/// The rare case: a frame with offload work left, toward a port that cannot take it.
#[inline(never)]
fn finish_offloads(
    stats: &WorkerStats,
    egress: &PortEntry,
    frame: Frame,
    pool: &mut FramePool,
    out: &mut TxBatches,
) {
    finish_in_software(stats, frame, pool, |f, pool| enqueue(stats, egress, f, pool, out));
}

/// Does `frame`'s offload work in software and hands each finished frame to `each`: a
/// super-frame is cut into segments (the original buffer goes back to `pool`), a
/// partial checksum completed; a frame with nothing left to do is handed on as it is.
fn finish_in_software(
    stats: &WorkerStats,
    mut frame: Frame,
    pool: &mut FramePool,
    mut each: impl FnMut(Frame, &mut FramePool),
) {
    if frame.offload.is_gso() {
        let off = frame.offload;
        let segments = offload::segment_count(frame.data(), &off);
        for i in 0..segments {
            let mut seg = pool.get_fitting(usize::from(off.segment_len));
            let len = offload::write_segment(frame.data(), &off, i, seg.spare_mut());
            seg.set_len(len);
            seg.ingress = frame.ingress;
            each(seg, pool);
        }
        stats.events.gso_segmented.inc();
        stats.events.gso_segments.add(segments as u64);
        return pool.put(frame);
    }
    if frame.offload.is_pending() {
        let mut off = frame.offload;
        offload::complete_checksum(frame.data_mut(), &mut off);
        frame.offload = off;
        stats.events.checksums_completed.inc();
    }
    each(frame, pool);
}

/// Queues `frame` toward `egress`, or drops it when the port's backlog is full.
#[inline(always)]
fn enqueue(stats: &WorkerStats, egress: &PortEntry, frame: Frame, pool: &mut FramePool, out: &mut TxBatches) {
    if let Err(frame) = out.push(egress.id, frame) {
        stats.count_drop(frame.ingress, DropReason::TxBacklogFull);
        pool.put(frame);
    }
}

/// Sends copies of `frame` to every other port of the segment that can carry it; the
/// last target gets the original buffer.
fn flood(
    tables: &Tables,
    stats: &WorkerStats,
    ingress: &PortEntry,
    frame: Frame,
    pool: &mut FramePool,
    out: &mut TxBatches,
) -> Result<(), (Frame, DropReason)> {
    let Some(segment) = tables.segment(ingress.segment) else {
        return Err((frame, DropReason::NoFloodTargets));
    };
    let len = frame.wire_len();
    let mut others = segment.ports.iter().copied().filter(|p| *p != ingress.id).peekable();
    if others.peek().is_none() {
        return Err((frame, DropReason::NoFloodTargets));
    }
    let mut targets = others.filter_map(|p| tables.port(p)).filter(|e| len <= e.max_frame_len());
    let Some(mut current) = targets.next() else {
        return Err((frame, DropReason::EgressMtuExceeded));
    };
    let mut copies = 1;
    for next in targets {
        let mut copy = pool.copy_of(frame.data()).expect("a frame fits a buffer of its own class");
        copy.ingress = frame.ingress;
        copy.offload = frame.offload;
        emit(stats, current, copy, pool, out);
        current = next;
        copies += 1;
    }
    emit(stats, current, frame, pool, out);
    stats.events.flooded.inc();
    stats.events.flood_copies.add(copies);
    Ok(())
}
