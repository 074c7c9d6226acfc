//! The per-worker pipeline: run to completion over one received batch.
//!
//! A batch (all from one ingress port) is parsed once into per-frame [`FrameMeta`];
//! then every frame goes through the stages in the order [`stages`] spells out; then
//! each frame is dispatched by its [`Verdict`] ([`dispatch`]) into per-port transmit
//! batches, copied for flooding, encapsulated toward another node, or dropped with its
//! reason counted. The pipeline knows nothing of port backends or threads: the worker
//! feeds it and flushes its output.

mod coalesce;
mod dispatch;
mod flood;

pub(crate) mod trace;

use std::ops::ControlFlow;
use std::sync::Arc;

pub(crate) use coalesce::coalesce_tcp;
pub(crate) use dispatch::TxBatches;

use crate::capture::Captures;
use crate::drop_reason::DropReason;
use crate::frame::{Frame, FramePool};
use crate::ids::PortId;
use crate::stage::{Packet, Stage, StageContext, Step, Verdict};
use crate::stages::{arp_proxy, l2, mac_learning, overlay, port_security, service_nat};
use crate::stats::WorkerStats;
use crate::tables::Tables;
use crate::tables::conntrack::{Conntrack, ConntrackConfig};
use crate::tables::fdb::{Fdb, FdbConfig};
use crate::tables::mac_cache::MacCache;
use crate::tables::services::Affinity;
use crate::wire::{self, FrameMeta};

/// Every stage, checked against the one signature of the contract.
const _: [Stage; 7] = [
    port_security::check,
    overlay::decapsulate,
    mac_learning::learn_source,
    arp_proxy::answer,
    service_nat::translate,
    overlay::route,
    l2::forward_by_mac,
];

/// Who watches the stages: told before and after each stage what the frame is and what
/// the stage decided. The packet path passes nobody ([`Unobserved`]), whose empty
/// methods inline away; while captures or live traces are open, and for a trace, it is
/// a [`trace::Recorder`]. One stage order serves all.
pub(crate) trait StageObserver {
    #[inline(always)]
    fn before(&mut self, _stage: &'static str, _ctx: &StageContext<'_>, _pkt: &Packet<'_, '_>) {}
    #[inline(always)]
    fn after(&mut self, _stage: &'static str, _step: &Step, _ctx: &StageContext<'_>, _pkt: &Packet<'_, '_>) {}
    /// The frame as parsed (`meta` is meaningful only when `parsed` is `Ok`).
    #[inline(always)]
    fn parsed(&mut self, _frame: &Frame, _parsed: &Result<(), DropReason>, _meta: &FrameMeta) {}
    /// The stages (or the parser) dropped the frame for `reason`. (Dispatch's own
    /// drops — an egress MTU, a port gone — are counted but not observed.)
    #[inline(always)]
    fn dropped(&mut self, _frame: &Frame, _reason: DropReason) {}
    /// Dispatch is about to send the frame where its verdict says.
    #[inline(always)]
    fn dispatching(&mut self, _out: &TxBatches, _stats: &WorkerStats, _ingress: PortId) {}
    /// Dispatch queued the frame (or counted its drop).
    #[inline(always)]
    fn dispatched(&mut self, _tables: &Tables, _out: &TxBatches, _stats: &WorkerStats, _ingress: PortId) {}
}

/// The packet path's observer while nothing watches it: nobody.
struct Unobserved;

impl StageObserver for Unobserved {}

/// Runs one stage between its observer's calls; `?` on its step.
macro_rules! observed {
    ($obs:ident, $ctx:ident, $pkt:ident, $name:literal, $stage:path) => {{
        $obs.before($name, $ctx, $pkt);
        let step = $stage($ctx, $pkt);
        $obs.after($name, &step, $ctx, $pkt);
        step?
    }};
}

/// The stage order, in one place. A stage returns `Continue` to pass the frame on or
/// `Break` with its verdict; a frame no stage decides is flooded in its segment.
///
/// A VXLAN frame from another node is decapsulated first (the packet then describes the
/// inner frame) and goes on as arriving from the overlay side of the gateway: Service
/// NAT (replies of flows this node translated), then routing to the local pod.
///
/// The stage order has two copies — the packet path's, with nobody watching, and the
/// recorder's (traces, live traces, captures; in `trace`) — so each stage and what it
/// calls on the common path is inlined always (marked where it is): with two callers
/// the compiler left some out of line, and the packet path paid for the calls and
/// spilled registers (benches/callgrind.sh, L2 pod to pod: 566 instructions a frame
/// without, 526 with; 540 before the second copy existed).
#[inline(always)]
pub(crate) fn stages<'a>(
    ctx: &mut StageContext<'a>,
    pkt: &mut Packet<'a, '_>,
    obs: &mut impl StageObserver,
) -> Step {
    observed!(obs, ctx, pkt, "port_security", port_security::check);
    if overlay::is_vxlan(ctx.tables, pkt.port, pkt.meta) {
        observed!(obs, ctx, pkt, "overlay_decapsulate", overlay::decapsulate);
    } else if pkt.port.tunnel {
        return crate::stage::drop(DropReason::TunnelNotVxlan);
    } else {
        observed!(obs, ctx, pkt, "mac_learning", mac_learning::learn_source);
        observed!(obs, ctx, pkt, "arp_proxy", arp_proxy::answer);
    }
    // Without Services (or flows kept for removed ones) the stage is one test.
    if !ctx.tables.services().is_empty() {
        observed!(obs, ctx, pkt, "service_nat", service_nat::translate);
    }
    // Likewise without remote nodes.
    observed!(obs, ctx, pkt, "overlay_route", overlay::route);
    observed!(obs, ctx, pkt, "l2_forward", l2::forward_by_mac);
    ControlFlow::Continue(())
}

/// The state all workers' pipelines share: what the data path itself writes.
#[derive(Clone)]
pub(crate) struct SharedState {
    pub fdb: Arc<Fdb>,
    pub conntrack: Arc<Conntrack>,
    pub affinity: Arc<Affinity>,
    pub captures: Arc<Captures>,
}

impl SharedState {
    pub(crate) fn new(fdb: FdbConfig, conntrack: ConntrackConfig) -> SharedState {
        SharedState {
            fdb: Arc::new(Fdb::new(fdb)),
            conntrack: Arc::new(Conntrack::new(conntrack)),
            // As many clients as flows: each was pinned by an admitted flow.
            affinity: Arc::new(Affinity::new(conntrack.max_entries as usize)),
            captures: Arc::default(),
        }
    }
}

/// One worker's pipeline: the shared state, this worker's counters and MAC cache.
pub(crate) struct Pipeline {
    fdb: Arc<Fdb>,
    conntrack: Arc<Conntrack>,
    affinity: Arc<Affinity>,
    captures: Arc<Captures>,
    stats: Arc<WorkerStats>,
    cache: MacCache,
    /// What frames no stage decided may cost their segment.
    flood: flood::FloodLimits,
}

impl Pipeline {
    pub(crate) fn new(shared: &SharedState, stats: Arc<WorkerStats>) -> Pipeline {
        Pipeline {
            fdb: shared.fdb.clone(),
            conntrack: shared.conntrack.clone(),
            affinity: shared.affinity.clone(),
            captures: shared.captures.clone(),
            flood: flood::FloodLimits::new(stats.max_ports()),
            stats,
            cache: MacCache::default(),
        }
    }

    pub(crate) fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }

    pub(crate) fn captures(&self) -> &Arc<Captures> {
        &self.captures
    }

    /// Processes `batch`, received on `ingress`, leaving it empty: every frame ends in
    /// `out`, or dropped (counted) with its buffer back in `pool`.
    ///
    /// Each frame runs to completion — parse, stages, dispatch — before the next; the
    /// per-batch work (tables, FDB guard, ingress port lookup) is done once.
    pub(crate) fn process(
        &mut self,
        tables: &Tables,
        ingress: PortId,
        now: u32,
        batch: &mut Vec<Frame>,
        pool: &mut FramePool,
        out: &mut TxBatches,
    ) {
        // The one test a batch pays for captures, flow logs and live traces. The
        // watched path and its copy of the stage order live in `trace`: in this module
        // a second copy made every stage a callee of two here, and the compiler left
        // them out of line on the packet path (+33% instructions a frame,
        // benches/callgrind.sh).
        if self.captures.armed() {
            return trace::process_watched(self, tables, ingress, now, batch, pool, out);
        }
        self.process_observed(tables, ingress, now, batch, pool, out, &mut Unobserved);
    }

    /// [`process`](Self::process), telling `obs` what happens to each frame.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(crate) fn process_observed(
        &mut self,
        tables: &Tables,
        ingress: PortId,
        now: u32,
        batch: &mut Vec<Frame>,
        pool: &mut FramePool,
        out: &mut TxBatches,
        obs: &mut impl StageObserver,
    ) {
        let stats = &*self.stats;
        let counters = stats.port(ingress);
        counters.rx_packets.add(batch.len() as u64);
        counters.rx_bytes.add(batch.iter().map(|f| f.len() as u64).sum());

        let Some(port) = tables.port(ingress) else {
            let reason = DropReason::UnknownIngressPort;
            for mut frame in batch.drain(..) {
                frame.ingress = ingress;
                obs.parsed(&frame, &Err(reason), &FrameMeta::UNPARSED);
                obs.dropped(&frame, reason);
                obs.dispatching(out, stats, ingress);
                stats.count_drop(ingress, reason);
                obs.dispatched(tables, out, stats, ingress);
                pool.put(frame);
            }
            return;
        };
        let max_len = port.max_frame_len();
        let segment = tables.segment(port.segment).map(|s| &s.config);
        let fdb = self.fdb.batch();
        let ct = self.conntrack.batch();
        self.cache.validate(tables.generation(), self.fdb.epoch());
        let mut ctx = StageContext {
            tables,
            fdb: &fdb,
            ct: &ct,
            affinity: &self.affinity,
            cache: &mut self.cache,
            stats,
            now,
        };
        let mut meta = FrameMeta::UNPARSED;
        for mut frame in batch.drain(..) {
            frame.ingress = ingress;
            let parsed = if frame.offload.is_invalid() {
                Err(DropReason::BadOffloadHeader)
            } else if frame.wire_len() > max_len {
                Err(DropReason::OversizedFrame)
            } else {
                wire::parse::parse_into(frame.data(), &mut meta)
                    .and_then(|()| {
                        if port.tunnel {
                            let vxlan_port = tables.overlay().settings.udp_port;
                            wire::offload::matches_tunnel_headers(&frame.offload, &meta, vxlan_port)
                        } else {
                            wire::offload::matches_headers(&frame.offload, &meta)
                        }
                    })
                    .map_err(DropReason::from)
            };
            obs.parsed(&frame, &parsed, &meta);
            let verdict = match parsed {
                Err(reason) => Verdict::Drop(reason),
                Ok(()) => {
                    let mut pkt = Packet { port, frame: &mut frame, meta: &mut meta };
                    match (stages(&mut ctx, &mut pkt, obs), segment) {
                        (ControlFlow::Break(v), _) => v,
                        (ControlFlow::Continue(()), Some(segment)) => {
                            self.flood.verdict(segment, ingress, &frame)
                        }
                        (ControlFlow::Continue(()), None) => Verdict::Flood,
                    }
                }
            };
            if let Verdict::Drop(reason) = verdict {
                obs.dropped(&frame, reason);
            }
            obs.dispatching(out, stats, ingress);
            dispatch::dispatch(tables, stats, port, frame, verdict, pool, out);
            obs.dispatched(tables, out, stats, ingress);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dispatch::MAX_TX_BACKLOG;
    use super::*;
    use crate::frame::FramePool;
    use crate::ids::{SegmentId, WorkerSet};
    use crate::tables::tests::{pod, segment0};
    use crate::tables::{PortEntry, TablesBuilder, UnknownArp};
    use crate::testing::{FrameSpec, arp_reply, arp_request, gratuitous_arp, mac};
    use crate::wire::{MacAddr, Net, parse};
    use std::net::Ipv4Addr;

    const GW_MAC: u32 = 0xffff;

    struct Harness {
        tables: Tables,
        pipeline: Pipeline,
        pool: FramePool,
        out: TxBatches,
        now: u32,
    }

    fn uplink(id: u16) -> PortEntry {
        PortEntry::uplink(PortId(id), format!("uplink{id}"), SegmentId(0), 1500, WorkerSet::single(0))
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 1, last)
    }

    impl Harness {
        /// Pods 1..=3 (10.244.1.{2,3,4}), uplinks 8 and 9, gateway 10.244.1.1.
        fn new() -> Harness {
            Self::with(|_| {})
        }

        fn with(edit: impl FnOnce(&mut TablesBuilder)) -> Harness {
            Self::with_segment(segment0(), edit)
        }

        fn with_segment(
            segment: crate::tables::SegmentConfig,
            edit: impl FnOnce(&mut TablesBuilder),
        ) -> Harness {
            let mut b = TablesBuilder::default();
            b.add_segment(segment).unwrap();
            for i in 1..=3u8 {
                b.add_port(pod(u16::from(i), [10, 244, 1, i + 1])).unwrap();
            }
            b.add_port(uplink(8)).unwrap();
            b.add_port(uplink(9)).unwrap();
            edit(&mut b);
            let shared = SharedState::new(
                FdbConfig { max_entries_per_segment: 4, aging_secs: 300 },
                ConntrackConfig::default(),
            );
            Harness {
                tables: b.build().unwrap(),
                pipeline: Pipeline::new(&shared, Arc::new(WorkerStats::new(16))),
                pool: FramePool::standalone(2048),
                out: TxBatches::new(16),
                now: 100,
            }
        }

        /// Sends frames in on `ingress`; returns (port, bytes) of everything sent out.
        fn send(&mut self, ingress: u16, frames: &[Vec<u8>]) -> Vec<(u16, Vec<u8>)> {
            let mut batch: Vec<Frame> = frames.iter().map(|f| self.pool.copy_of(f).unwrap()).collect();
            self.pipeline.process(
                &self.tables,
                PortId(ingress),
                self.now,
                &mut batch,
                &mut self.pool,
                &mut self.out,
            );
            assert!(batch.is_empty());
            self.out.take_sent(&mut self.pool)
        }

        fn drops(&self, port: u16, reason: DropReason) -> u64 {
            self.pipeline.stats.drops(PortId(port), reason)
        }
    }

    fn udp(from: u32, to: u32, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        FrameSpec::udp(mac(from), mac(to), src, dst, 1000, 2000).build()
    }

    #[test]
    fn known_unicast_goes_to_its_port_only() {
        let mut h = Harness::new();
        let f = udp(1, 3, ip(2), ip(4));
        assert_eq!(h.send(1, std::slice::from_ref(&f)), vec![(3, f)]);
        assert_eq!(h.pipeline.stats.port(PortId(1)).rx_packets.get(), 1);
    }

    #[test]
    fn broadcast_and_unknown_unicast_flood_to_all_other_ports() {
        let mut h = Harness::new();
        let bcast = FrameSpec::udp(mac(1), MacAddr::BROADCAST, ip(2), Ipv4Addr::BROADCAST, 68, 67).build();
        let mut ports: Vec<u16> = h.send(1, &[bcast]).into_iter().map(|(p, _)| p).collect();
        ports.sort();
        assert_eq!(ports, vec![2, 3, 8, 9], "never back out of the ingress port");
        let unknown = udp(1, 0x777, ip(2), ip(99));
        assert_eq!(h.send(1, &[unknown]).len(), 4);
        let s = &h.pipeline.stats.events;
        assert_eq!((s.flooded.get(), s.flood_copies.get()), (2, 8));
    }

    #[test]
    fn unknown_unicast_is_dropped_where_every_mac_is_registered() {
        let segment = crate::tables::SegmentConfig {
            unknown_unicast: crate::tables::UnknownUnicast::Drop,
            ..segment0()
        };
        let mut h = Harness::with_segment(segment, |_| {});
        assert!(h.send(1, &[udp(1, 0x777, ip(2), ip(99))]).is_empty());
        assert_eq!(h.drops(1, DropReason::UnknownUnicast), 1);
        assert_eq!(h.pipeline.stats.events.flooded.get(), 0, "copied to no one");
        let bcast = FrameSpec::udp(mac(1), MacAddr::BROADCAST, ip(2), Ipv4Addr::BROADCAST, 68, 67).build();
        assert_eq!(h.send(1, &[bcast]).len(), 4, "broadcast still reaches the segment");
        assert_eq!(h.send(1, &[udp(1, 3, ip(2), ip(4))]).len(), 1, "known unicast unchanged");
    }

    #[test]
    fn uplink_macs_are_learned_moved_and_capped() {
        let mut h = Harness::new();
        let from_remote =
            |n: u32| FrameSpec::udp(mac(n), mac(1), Ipv4Addr::new(192, 0, 2, 1), ip(2), 1, 2).build();
        assert_eq!(h.send(8, &[from_remote(0x100)]).len(), 1);
        // Pod 1 replies to the learned MAC: known unicast to uplink 8, no flood.
        assert_eq!(
            h.send(1, &[udp(1, 0x100, ip(2), Ipv4Addr::new(192, 0, 2, 1))])
                .iter()
                .map(|s| s.0)
                .collect::<Vec<_>>(),
            vec![8]
        );
        // The MAC moves to uplink 9.
        h.send(9, &[from_remote(0x100)]);
        assert_eq!(h.send(1, &[udp(1, 0x100, ip(2), Ipv4Addr::new(192, 0, 2, 1))])[0].0, 9);
        let stats = h.pipeline.stats.clone();
        let e = &stats.events;
        assert_eq!((e.fdb_learned.get(), e.fdb_moved.get()), (1, 1));
        // Cap of 4 per segment: the fifth new MAC is not learned, but still forwarded.
        for n in 0x101..0x105 {
            assert_eq!(h.send(8, &[from_remote(n)]).len(), 1);
        }
        assert_eq!(e.fdb_full.get(), 1);
        assert_eq!(h.pipeline.fdb.len_in(SegmentId(0)), 4);
        // A pod's MAC showing up on an uplink is not learned: its traffic is not diverted.
        h.send(8, &[FrameSpec::udp(mac(2), mac(1), ip(3), ip(2), 1, 2).build()]);
        assert_eq!(h.send(1, &[udp(1, 2, ip(2), ip(3))])[0].0, 2);
    }

    #[test]
    fn learned_entries_age_out() {
        let mut h = Harness::new();
        h.send(8, &[FrameSpec::udp(mac(0x100), mac(1), Ipv4Addr::new(192, 0, 2, 1), ip(2), 1, 2).build()]);
        assert_eq!(h.pipeline.fdb.age_out(h.now + 301), 1);
        assert_eq!(h.send(1, &[udp(1, 0x100, ip(2), Ipv4Addr::new(192, 0, 2, 1))]).len(), 4, "flooded again");
    }

    #[test]
    fn arp_for_pods_and_gateway_is_answered_by_the_switch() {
        let mut h = Harness::new();
        // Pod 1 asks for pod 3.
        let sent = h.send(1, &[arp_request(mac(1), ip(2), ip(4))]);
        assert_eq!(sent, vec![(1, arp_reply(mac(3), ip(4), mac(1), ip(2)))]);
        // ... and for the gateway.
        let sent = h.send(1, &[arp_request(mac(1), ip(2), ip(1))]);
        assert_eq!(sent, vec![(1, arp_reply(mac(GW_MAC), ip(1), mac(1), ip(2)))]);
        // A probe for pod 3's address from a pod configuring it: pod 3's reply reveals the conflict.
        let sent = h.send(2, &[arp_request(mac(2), Ipv4Addr::UNSPECIFIED, ip(4))]);
        assert_eq!(sent, vec![(2, arp_reply(mac(3), ip(4), mac(2), Ipv4Addr::UNSPECIFIED))]);
        assert_eq!(h.pipeline.stats.events.arp_replies.get(), 3);
    }

    #[test]
    fn arp_for_self_and_gratuitous_arp_are_absorbed() {
        let mut h = Harness::new();
        assert!(h.send(1, &[gratuitous_arp(mac(1), ip(2))]).is_empty());
        assert!(h.send(1, &[arp_request(mac(1), Ipv4Addr::UNSPECIFIED, ip(2))]).is_empty(), "DAD probe");
        let garp_reply = arp_reply(mac(1), ip(2), MacAddr::BROADCAST, ip(2));
        assert!(h.send(1, &[garp_reply]).is_empty());
        assert_eq!(h.drops(1, DropReason::ArpForSelf), 3);
        // Gratuitous ARP from an uplink still teaches the FDB its MAC.
        h.send(8, &[gratuitous_arp(mac(0x200), Ipv4Addr::new(10, 244, 1, 200))]);
        assert_eq!(h.send(1, &[udp(1, 0x200, ip(2), ip(200))])[0].0, 8);
    }

    #[test]
    fn arp_operations_other_than_request_and_reply_are_dropped() {
        let mut h = Harness::new();
        let mut rarp = arp_request(mac(1), ip(2), ip(3));
        rarp[21] = 3; // RARP request
        assert!(h.send(1, &[rarp]).is_empty());
        assert_eq!(h.drops(1, DropReason::UnsupportedArp), 1);
    }

    #[test]
    fn arp_for_unknown_addresses_is_dropped_or_flooded_by_policy() {
        let mut h = Harness::new();
        assert!(h.send(1, &[arp_request(mac(1), ip(2), ip(77))]).is_empty());
        assert_eq!(h.drops(1, DropReason::ArpUnknownTarget), 1);

        let mut h = Harness::with(|_| {});
        let mut flood_seg = segment0();
        flood_seg.unknown_arp = UnknownArp::Flood;
        let mut b = TablesBuilder::default();
        b.add_segment(flood_seg).unwrap();
        b.add_port(pod(1, [10, 244, 1, 2])).unwrap();
        b.add_port(pod(2, [10, 244, 1, 3])).unwrap();
        h.tables = b.build().unwrap();
        let sent = h.send(1, &[arp_request(mac(1), ip(2), ip(77))]);
        assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![2]);
        // ARP replies between pods are plain unicast.
        let reply = arp_reply(mac(2), ip(3), mac(1), ip(2));
        assert_eq!(h.send(2, std::slice::from_ref(&reply)), vec![(1, reply)]);
    }

    #[test]
    fn spoofing_pods_get_nothing_through() {
        let mut h = Harness::new();
        let spoofed = [
            udp(2, 3, ip(2), ip(4)),                 // pod 1 using pod 2's MAC
            udp(1, 3, ip(3), ip(4)),                 // ... pod 2's IP
            arp_request(mac(1), ip(1), ip(4)),       // ... claiming to be the gateway
            arp_reply(mac(1), ip(4), mac(2), ip(3)), // ... poisoning pod 2's cache about pod 3
        ];
        assert!(h.send(1, &spoofed).is_empty());
        assert_eq!(h.drops(1, DropReason::SpoofedSourceMac), 1);
        assert_eq!(h.drops(1, DropReason::SpoofedSourceIp), 1);
        assert_eq!(h.drops(1, DropReason::SpoofedArpSender), 2);
    }

    #[test]
    fn every_drop_reason_of_the_l2_path_is_reachable_and_counted() {
        let mut h = Harness::new();
        // Unknown ingress port.
        h.send(5, &[udp(1, 3, ip(2), ip(4))]);
        assert_eq!(h.drops(5, DropReason::UnknownIngressPort), 1);
        // Oversized for the ingress MTU.
        let big = FrameSpec::udp(mac(1), mac(3), ip(2), ip(4), 1, 2).payload(&[0; 1500]).build();
        h.send(1, &[big]);
        assert_eq!(h.drops(1, DropReason::OversizedFrame), 1);
        // Malformed: counted under the parser's reason.
        h.send(1, &[vec![0; 10]]);
        assert_eq!(h.drops(1, DropReason::TruncatedEthernet), 1);
        // To its own MAC.
        h.send(1, &[udp(1, 1, ip(2), ip(2))]);
        assert_eq!(h.drops(1, DropReason::DestinationIsIngress), 1);
    }

    #[test]
    fn egress_mtu_and_lone_ports() {
        let mut h = Harness::with(|b| {
            b.port_mut(PortId(3)).unwrap().mtu = 1000;
        });
        let f = FrameSpec::udp(mac(1), mac(3), ip(2), ip(4), 1, 2).payload(&[0; 1200]).build();
        assert!(h.send(1, &[f]).is_empty());
        assert_eq!(h.drops(1, DropReason::EgressMtuExceeded), 1);

        let mut b = TablesBuilder::default();
        b.add_segment(segment0()).unwrap();
        b.add_port(pod(1, [10, 244, 1, 2])).unwrap();
        h.tables = b.build().unwrap();
        h.send(1, &[FrameSpec::udp(mac(1), MacAddr::BROADCAST, ip(2), Ipv4Addr::BROADCAST, 1, 2).build()]);
        assert_eq!(h.drops(1, DropReason::NoFloodTargets), 1);
        // The tables changed under a frame: egress gone.
        h.send(1, &[udp(1, 3, ip(2), ip(4))]);
        assert_eq!(h.send(1, &[udp(1, 3, ip(2), ip(4))]).len(), 0);
    }

    #[test]
    fn forward_to_port_removed_since_lookup_is_counted() {
        let mut h = Harness::new();
        h.send(8, &[FrameSpec::udp(mac(0x100), mac(1), Ipv4Addr::new(192, 0, 2, 1), ip(2), 1, 2).build()]);
        let mut b = TablesBuilder::default();
        b.add_segment(segment0()).unwrap();
        b.add_port(pod(1, [10, 244, 1, 2])).unwrap();
        h.tables = b.build().unwrap();
        // The FDB still points at uplink 8, which the new tables no longer have.
        assert!(h.send(1, &[udp(1, 0x100, ip(2), Ipv4Addr::new(192, 0, 2, 1))]).is_empty());
        assert_eq!(h.drops(1, DropReason::EgressPortGone), 1);
    }

    /// A TSO super-frame from a port with offloads: passed whole to a port with
    /// offloads, cut into MTU-sized segments for one without, and measured against MTUs
    /// by its segments.
    #[test]
    fn super_frames_are_segmented_only_where_they_must_be() {
        use crate::wire::offload::{self, F_NEEDS_CSUM, GSO_TCPV4, VNET_HDR_LEN};
        let mut h = Harness::with(|b| {
            b.port_mut(PortId(1)).unwrap().offloads = true;
            b.port_mut(PortId(2)).unwrap().offloads = true;
        });
        let body = vec![0x33; 9000];
        let frame = FrameSpec::tcp(mac(1), mac(2), ip(2), ip(3), 40000, 80, 0x18).payload(&body).build();
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr[0] = F_NEEDS_CSUM;
        hdr[1] = GSO_TCPV4;
        hdr[4..6].copy_from_slice(&1448u16.to_ne_bytes());
        hdr[6..8].copy_from_slice(&34u16.to_ne_bytes());
        hdr[8..10].copy_from_slice(&16u16.to_ne_bytes());
        let off = offload::decode(&hdr, &frame).unwrap();
        let send = |h: &mut Harness, dst: u32| {
            let mut f = frame.clone();
            f[0..6].copy_from_slice(&mac(dst).0);
            let mut fr = h.pool.copy_of(&f).unwrap();
            fr.offload = off;
            let mut batch = vec![fr];
            h.pipeline.process(&h.tables, PortId(1), h.now, &mut batch, &mut h.pool, &mut h.out);
            let mut sent = Vec::new();
            let pool = &mut h.pool;
            h.out.flush(|port, frames| {
                for f in frames.drain(..) {
                    sent.push((port.0, f.len(), f.offload.is_gso()));
                    pool.put(f);
                }
            });
            sent
        };
        assert_eq!(send(&mut h, 2), vec![(2, frame.len(), true)], "whole, to a port with offloads");
        let to_plain = send(&mut h, 3);
        assert_eq!(to_plain.len(), 7, "9000 bytes in 1448-byte segments");
        assert!(to_plain.iter().all(|(p, len, gso)| *p == 3 && *len <= 14 + 1500 && !gso));
        let e = &h.pipeline.stats.events;
        assert_eq!((e.gso_segmented.get(), e.gso_segments.get()), (1, 7));
        assert_eq!(h.drops(1, DropReason::OversizedFrame), 0, "a super-frame is judged by its segments");
    }

    fn offloaded(h: &mut Harness, frame: &[u8], hdr: [u8; 10]) -> Frame {
        let mut f = h.pool.copy_of(frame).unwrap();
        f.offload = crate::wire::offload::decode(&hdr, frame).unwrap();
        f
    }

    fn vnet(flags: u8, gso_type: u8, gso_size: u16, csum_start: u16, csum_offset: u16) -> [u8; 10] {
        let mut h = [0u8; 10];
        h[0] = flags;
        h[1] = gso_type;
        h[4..6].copy_from_slice(&gso_size.to_ne_bytes());
        h[6..8].copy_from_slice(&csum_start.to_ne_bytes());
        h[8..10].copy_from_slice(&csum_offset.to_ne_bytes());
        h
    }

    /// A pod controls the virtio header (packet sockets): a checksum offset anywhere but
    /// the transport checksum field would let the switch's completion rewrite, say, the
    /// source address after port security passed it.
    #[test]
    fn offload_offsets_must_be_the_transport_checksum() {
        use crate::wire::offload::{F_NEEDS_CSUM, GSO_NONE};
        let mut h = Harness::with(|b| {
            b.port_mut(PortId(1)).unwrap().offloads = true;
        });
        let frame = FrameSpec::udp(mac(1), mac(3), ip(2), ip(4), 1, 2).payload(b"hi").build();
        // Inside the source address, the Ethernet type, the payload, the IP header.
        for (start, offset) in [(26u16, 0u16), (14, 12), (34, 8), (30, 6)] {
            let f = offloaded(&mut h, &frame, vnet(F_NEEDS_CSUM, GSO_NONE, 0, start, offset));
            let mut batch = vec![f];
            h.pipeline.process(&h.tables, PortId(1), h.now, &mut batch, &mut h.pool, &mut h.out);
        }
        assert_eq!(h.drops(1, DropReason::BadOffloadHeader), 4);
        // A TSO super-frame whose checksum start lies inside its TCP header: segmenting
        // there would cut headers that do not parse (found by the offload fuzz target).
        let tcp = FrameSpec::tcp(mac(1), mac(3), ip(2), ip(4), 4000, 80, 0x10).payload(&[0x5a; 3000]).build();
        let f = offloaded(&mut h, &tcp, vnet(F_NEEDS_CSUM, crate::wire::offload::GSO_TCPV4, 5, 39, 16));
        let mut batch = vec![f];
        h.pipeline.process(&h.tables, PortId(1), h.now, &mut batch, &mut h.pool, &mut h.out);
        assert_eq!(h.drops(1, DropReason::BadOffloadHeader), 5);
        let good = offloaded(&mut h, &frame, vnet(F_NEEDS_CSUM, GSO_NONE, 0, 34, 6));
        let mut batch = vec![good];
        h.pipeline.process(&h.tables, PortId(1), h.now, &mut batch, &mut h.pool, &mut h.out);
        assert_eq!(h.drops(1, DropReason::BadOffloadHeader), 5, "the transport checksum field is fine");
        assert_eq!(h.pipeline.stats.events.checksums_completed.get(), 1);
    }

    /// Super-frames cut into tiny segments cannot pile up without bound in one round.
    #[test]
    fn segmentation_backlog_is_bounded_per_round() {
        use crate::wire::offload::{F_NEEDS_CSUM, GSO_TCPV4};
        let mut h = Harness::with(|b| {
            b.port_mut(PortId(1)).unwrap().offloads = true;
        });
        let frame = FrameSpec::tcp(mac(1), mac(3), ip(2), ip(4), 1, 2, 0x10).payload(&[7; 9000]).build();
        let mut batch: Vec<Frame> =
            (0..5).map(|_| offloaded(&mut h, &frame, vnet(F_NEEDS_CSUM, GSO_TCPV4, 5, 34, 16))).collect();
        h.pipeline.process(&h.tables, PortId(1), h.now, &mut batch, &mut h.pool, &mut h.out);
        let mut sent = 0;
        let pool = &mut h.pool;
        h.out.flush(|_, frames| {
            sent += frames.len();
            for f in frames.drain(..) {
                pool.put(f);
            }
        });
        assert_eq!(sent, MAX_TX_BACKLOG);
        assert_eq!(h.drops(1, DropReason::TxBacklogFull), 5 * 1800 - MAX_TX_BACKLOG as u64);
    }

    #[test]
    fn captures_take_received_frames_and_drops_with_their_reason() {
        use crate::capture::{CaptureDirection, CaptureSpec, DEFAULT_SNAPLEN};
        let mut h = Harness::new();
        let spec = CaptureSpec {
            port: Some(PortId(1)),
            received: true,
            sent: false,
            drops: None,
            filter: Default::default(),
            snaplen: DEFAULT_SNAPLEN,
            count: None,
        };
        let received = h.pipeline.captures().start(spec.clone());
        let drops = h.pipeline.captures().start(CaptureSpec { drops: Some(None), ..spec });
        let good = udp(1, 3, ip(2), ip(4));
        let spoofed = udp(1, 3, ip(9), ip(4));
        assert_eq!(h.send(1, &[good.clone(), spoofed.clone()]).len(), 1, "captures change no fate");
        h.send(2, &[udp(2, 3, ip(3), ip(4))]);
        let (mut rx, mut dropped) = (Vec::new(), Vec::new());
        received.take(&mut rx);
        drops.take(&mut dropped);
        assert_eq!(rx.iter().map(|c| c.data.clone()).collect::<Vec<_>>(), vec![good, spoofed.clone()]);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].direction, CaptureDirection::Dropped(DropReason::SpoofedSourceIp));
        assert_eq!(dropped[0].data, spoofed);
        h.pipeline.captures().stop(&received);
        h.pipeline.captures().stop(&drops);
        assert!(!h.pipeline.captures().armed());
    }

    /// The accounting invariant the fuzz target checks, on a mixed batch.
    #[test]
    fn every_frame_is_forwarded_flooded_or_dropped() {
        let mut h = Harness::new();
        let frames = vec![
            udp(1, 3, ip(2), ip(4)),
            arp_request(mac(1), ip(2), ip(1)),
            vec![0xff; 20],
            FrameSpec::udp(mac(1), MacAddr::BROADCAST, ip(2), Ipv4Addr::BROADCAST, 1, 2).build(),
            udp(1, 3, ip(9), ip(4)),
        ];
        let sent = h.send(1, &frames);
        let e = &h.pipeline.stats.events;
        let dropped: u64 = DropReason::ALL.iter().map(|r| h.drops(1, *r)).sum();
        let forwarded = sent.len() as u64 - e.flood_copies.get();
        assert_eq!(forwarded + e.flooded.get() + dropped, frames.len() as u64);
        let Net::Arp(reply) = parse(&sent.iter().find(|s| s.0 == 1).unwrap().1).unwrap().net else {
            panic!()
        };
        assert_eq!(reply.sender_ip, ip(1));
    }
}
