//! Per-worker counters, summed on read.
//!
//! Each worker owns one [`WorkerStats`] and is the only writer of its counters, so an
//! increment is a relaxed load and store (a plain `mov` on x86), never a locked
//! read-modify-write. Readers (metrics, the control API) sum across workers with
//! [`StatsSnapshot::collect`]; a sum is not an atomic cut across workers, which is fine
//! for counters that only grow.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::drop_reason::DropReason;
use crate::ids::PortId;

/// A monotonically increasing counter with one writer.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Overwrites the value (for a gauge-like reading kept by its single writer).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Traffic through one port, as counted by one worker.
#[derive(Default, Debug)]
pub struct PortCounters {
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
}

/// Events of the switching stages that are not drops.
#[derive(Default, Debug)]
pub struct EventCounters {
    /// New MACs learned.
    pub fdb_learned: Counter,
    /// Learned MACs that appeared on another port.
    pub fdb_moved: Counter,
    /// Source MACs not learned because the segment's table was full.
    pub fdb_full: Counter,
    /// Frames flooded (counted once per frame, not per copy).
    pub flooded: Counter,
    /// Copies sent by flooding.
    pub flood_copies: Counter,
    /// ARP requests answered by the proxy.
    pub arp_replies: Counter,
    /// Super-frames cut into segments in software (toward a port without offloads),
    /// and the segments that made.
    pub gso_segmented: Counter,
    pub gso_segments: Counter,
    /// Super-frames made in software from runs of TCP segments (toward a port with
    /// offloads), and the segments that went into them.
    pub gro_coalesced: Counter,
    pub gro_segments: Counter,
    /// Partial L4 checksums completed in software.
    pub checksums_completed: Counter,
    /// New flows translated to a Service endpoint.
    pub service_flows: Counter,
    /// New flows to a Service without endpoints, answered with ICMP unreachable.
    pub service_rejects: Counter,
    /// ICMP errors whose quoted packet belonged to a translated flow.
    pub icmp_translated: Counter,
    /// Frames encapsulated toward and decapsulated from other nodes.
    pub overlay_encapsulated: Counter,
    pub overlay_decapsulated: Counter,
    /// Super-frames encapsulated whole toward a tunnel port (UDP-tunnel GSO), and
    /// super-frames received whole from one.
    pub overlay_whole: Counter,
    pub overlay_whole_received: Counter,
    /// ICMP fragmentation-needed sent to pods for packets too big for the overlay.
    pub frag_needed_sent: Counter,
    /// Frames passed to another worker for transmission.
    pub handoff_sent: Counter,
    /// Frames received from other workers for transmission.
    pub handoff_received: Counter,
    /// Receive calls that failed (the port is broken or going away).
    pub rx_errors: Counter,
    /// Poll rounds, and those that found work: their ratio is the worker's busy ratio.
    pub polls: Counter,
    pub busy_polls: Counter,
    /// Times the worker went to sleep in epoll (after its idle polling ran out).
    pub sleeps: Counter,
    /// Nanoseconds spent in rounds that found work, and since the worker started.
    pub busy_ns: Counter,
    pub total_ns: Counter,
}

/// Everything one worker counts.
pub struct WorkerStats {
    ports: Box<[PortCounters]>,
    /// `[port * DropReason::COUNT + reason]`: drops by ingress port and reason.
    drops: Box<[Counter]>,
    pub events: EventCounters,
}

impl WorkerStats {
    /// Counters for port ids `0..max_ports`.
    pub fn new(max_ports: usize) -> WorkerStats {
        WorkerStats {
            ports: (0..max_ports).map(|_| PortCounters::default()).collect(),
            drops: (0..max_ports * DropReason::COUNT).map(|_| Counter::default()).collect(),
            events: EventCounters::default(),
        }
    }

    pub fn max_ports(&self) -> usize {
        self.ports.len()
    }

    /// Counters of `port`. Port ids are bounded by the datapath's `max_ports`, which the
    /// control plane enforces when it allocates ids.
    #[inline]
    pub fn port(&self, port: PortId) -> &PortCounters {
        &self.ports[port.index()]
    }

    /// Counts one frame from `ingress` dropped for `reason`.
    #[inline]
    pub fn count_drop(&self, ingress: PortId, reason: DropReason) {
        self.drops[ingress.index() * DropReason::COUNT + reason as usize].inc();
    }

    #[inline]
    pub fn drops(&self, port: PortId, reason: DropReason) -> u64 {
        self.drops[port.index() * DropReason::COUNT + reason as usize].get()
    }
}

/// Totals of one port across workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortTotals {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Drops of frames that entered on this port, by reason.
    pub drops: Vec<(DropReason, u64)>,
}

impl PortTotals {
    pub fn dropped(&self) -> u64 {
        self.drops.iter().map(|(_, n)| n).sum()
    }

    pub fn drops_of(&self, reason: DropReason) -> u64 {
        self.drops.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n)
    }
}

/// Totals of the non-drop events across workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventTotals {
    pub fdb_learned: u64,
    pub fdb_moved: u64,
    pub fdb_full: u64,
    pub flooded: u64,
    pub flood_copies: u64,
    pub arp_replies: u64,
    pub gso_segmented: u64,
    pub gso_segments: u64,
    pub gro_coalesced: u64,
    pub gro_segments: u64,
    pub checksums_completed: u64,
    pub service_flows: u64,
    pub service_rejects: u64,
    pub icmp_translated: u64,
    pub overlay_encapsulated: u64,
    pub overlay_decapsulated: u64,
    pub overlay_whole: u64,
    pub overlay_whole_received: u64,
    pub frag_needed_sent: u64,
    pub handoff_sent: u64,
    pub handoff_received: u64,
    pub rx_errors: u64,
}

/// Per-worker load.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerTotals {
    pub polls: u64,
    pub busy_polls: u64,
    pub sleeps: u64,
    /// Share of time spent in rounds that found work, 0.0–1.0.
    pub busy_ratio: f64,
}

/// Counters summed over all workers.
#[derive(Clone, Debug, Default)]
pub struct StatsSnapshot {
    /// Indexed by port id.
    pub ports: Vec<PortTotals>,
    /// Indexed by `DropReason as usize`.
    pub drops_by_reason: Vec<u64>,
    pub events: EventTotals,
    pub workers: Vec<WorkerTotals>,
}

impl StatsSnapshot {
    pub fn collect(workers: &[&WorkerStats]) -> StatsSnapshot {
        let max_ports = workers.iter().map(|w| w.max_ports()).max().unwrap_or(0);
        let mut snap = StatsSnapshot {
            ports: vec![PortTotals::default(); max_ports],
            drops_by_reason: vec![0; DropReason::COUNT],
            ..Default::default()
        };
        for (port, totals) in snap.ports.iter_mut().enumerate() {
            let id = PortId(port as u16);
            for w in workers.iter().filter(|w| port < w.max_ports()) {
                let c = w.port(id);
                totals.rx_packets += c.rx_packets.get();
                totals.rx_bytes += c.rx_bytes.get();
                totals.tx_packets += c.tx_packets.get();
                totals.tx_bytes += c.tx_bytes.get();
            }
            for reason in DropReason::ALL {
                let n: u64 =
                    workers.iter().filter(|w| port < w.max_ports()).map(|w| w.drops(id, *reason)).sum();
                if n > 0 {
                    totals.drops.push((*reason, n));
                    snap.drops_by_reason[*reason as usize] += n;
                }
            }
        }
        for w in workers {
            let e = &w.events;
            let t = &mut snap.events;
            t.fdb_learned += e.fdb_learned.get();
            t.fdb_moved += e.fdb_moved.get();
            t.fdb_full += e.fdb_full.get();
            t.flooded += e.flooded.get();
            t.flood_copies += e.flood_copies.get();
            t.arp_replies += e.arp_replies.get();
            t.gso_segmented += e.gso_segmented.get();
            t.gso_segments += e.gso_segments.get();
            t.gro_coalesced += e.gro_coalesced.get();
            t.gro_segments += e.gro_segments.get();
            t.checksums_completed += e.checksums_completed.get();
            t.service_flows += e.service_flows.get();
            t.service_rejects += e.service_rejects.get();
            t.icmp_translated += e.icmp_translated.get();
            t.overlay_encapsulated += e.overlay_encapsulated.get();
            t.overlay_decapsulated += e.overlay_decapsulated.get();
            t.overlay_whole += e.overlay_whole.get();
            t.overlay_whole_received += e.overlay_whole_received.get();
            t.frag_needed_sent += e.frag_needed_sent.get();
            t.handoff_sent += e.handoff_sent.get();
            t.handoff_received += e.handoff_received.get();
            t.rx_errors += e.rx_errors.get();
            let total_ns = e.total_ns.get();
            snap.workers.push(WorkerTotals {
                polls: e.polls.get(),
                busy_polls: e.busy_polls.get(),
                sleeps: e.sleeps.get(),
                busy_ratio: if total_ns == 0 { 0.0 } else { e.busy_ns.get() as f64 / total_ns as f64 },
            });
        }
        snap
    }

    pub fn port(&self, id: PortId) -> &PortTotals {
        &self.ports[id.index()]
    }

    pub fn drops_of(&self, reason: DropReason) -> u64 {
        self.drops_by_reason[reason as usize]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops_by_reason.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_across_workers() {
        let a = WorkerStats::new(4);
        let b = WorkerStats::new(4);
        a.port(PortId(1)).rx_packets.add(3);
        b.port(PortId(1)).rx_packets.add(4);
        a.count_drop(PortId(2), DropReason::SpoofedSourceIp);
        b.count_drop(PortId(2), DropReason::SpoofedSourceIp);
        b.count_drop(PortId(3), DropReason::TruncatedEthernet);
        a.events.arp_replies.inc();
        let s = StatsSnapshot::collect(&[&a, &b]);
        assert_eq!(s.port(PortId(1)).rx_packets, 7);
        assert_eq!(s.port(PortId(2)).drops, vec![(DropReason::SpoofedSourceIp, 2)]);
        assert_eq!(s.port(PortId(3)).dropped(), 1);
        assert_eq!(s.drops_of(DropReason::SpoofedSourceIp), 2);
        assert_eq!(s.total_drops(), 3);
        assert_eq!(s.events.arp_replies, 1);
        assert_eq!(s.workers.len(), 2);
    }
}
