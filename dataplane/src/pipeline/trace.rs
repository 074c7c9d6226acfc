//! Packet trace: one frame through the real stages and dispatch, nothing sent and
//! nothing changed — `ofproto/trace` for this switch — and the live trace, which
//! records the path real frames take.
//!
//! Both are a [`Recorder`] as the stages' observer in [`Pipeline::process_observed`]:
//! for the frames it is told to record it notes the parse, each stage's result and what
//! the stage rewrote or found, and what dispatch queued (or the drop it counted).
//!
//! A trace runs its frame exactly as a received one would, but against scratch state: a
//! throwaway FDB, conntrack and affinity table, counters, buffer pool and transmit
//! batches. Before each stage the recorder copies into the scratch state what that
//! stage will look up in the live state — the frame's source and destination MACs in
//! its segment, the flow its tuple belongs to, the source's pinned Service backends —
//! so the trace sees what the live tables say while learning, new flows and counters
//! touch only the copies. Inexact where a live table's other entries matter: a new
//! hairpin or NodePort flow's source-port clash check sees only the copied flow, and a
//! flood is judged with a full storm-control budget.
//!
//! A live trace is the same recorder on a worker's own pipeline, on the live state
//! (`process_watched`, the path every batch takes while a capture, flow log or live
//! trace is open): exact. Each received frame is matched against the open live traces'
//! filters; only the frames they mark are recorded in words.

use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::sync::Arc;

use super::{Pipeline, SharedState, StageObserver, TxBatches};
use crate::capture::{CaptureDirection, Captures, LiveTraced};
pub use crate::capture::{Trace, TraceOutcome, TraceSent, TraceStep};
use crate::drop_reason::DropReason;
use crate::frame::{Frame, FramePool};
use crate::ids::PortId;
use crate::stage::{Packet, StageContext, Step, Verdict};
use crate::stats::WorkerStats;
use crate::tables::Tables;
use crate::tables::conntrack::{Direction, Tuple};
use crate::tables::fdb::FdbBatch;
use crate::wire::{self, FrameMeta, L4, Net, icmp};

/// Traces `bytes` as if received on `ingress`, against `tables` and what `live` holds,
/// at datapath time `now`.
pub(crate) fn trace(tables: &Tables, live: &SharedState, ingress: PortId, bytes: &[u8], now: u32) -> Trace {
    let scratch = SharedState::new(live.fdb.config(), live.conntrack.config());
    let max_ports = tables.ports().map(|p| p.id.index() + 1).max().unwrap_or(0).max(ingress.index() + 1);
    let mut pipeline = Pipeline::new(&scratch, Arc::new(WorkerStats::new(max_ports)));
    let mut pool = FramePool::standalone(bytes.len().max(2048));
    let mut out = TxBatches::new(max_ports);
    let Some(frame) = pool.copy_of(bytes) else {
        return Trace {
            parsed: Err(DropReason::OversizedFrame),
            steps: Vec::new(),
            outcome: TraceOutcome::Dropped(DropReason::OversizedFrame),
        };
    };
    let mut recorder = Recorder::new(now, vec![0], None);
    recorder.seed = Some(Seed { live, scratch: &scratch });
    let mut batch = vec![frame];
    pipeline.process_observed(tables, ingress, now, &mut batch, &mut pool, &mut out, &mut recorder);
    out.flush(|_, frames| frames.drain(..).for_each(|f| pool.put(f)));
    let recorded = recorder.recorded.pop().expect("the pipeline tells its observer of every frame");
    recorded.trace
}

/// [`Pipeline::process`] while captures, flow logs or live traces are open: received
/// frames offered to them, the batch run with a [`Recorder`] as observer (dropped
/// frames to the captures at their drop), and the paths of the frames a live trace
/// marks recorded into its session.
#[cold]
#[inline(never)]
pub(super) fn process_watched(
    pipeline: &mut Pipeline,
    tables: &Tables,
    ingress: PortId,
    now: u32,
    batch: &mut Vec<Frame>,
    pool: &mut FramePool,
    out: &mut TxBatches,
) {
    let captures = pipeline.captures().clone();
    captures.offer(ingress, CaptureDirection::Received, batch);
    let marks = captures.live_marks(ingress, batch);
    let mut marked: Vec<usize> = marks.iter().map(|(i, _)| *i).collect();
    marked.dedup();
    let unix_ns = crate::capture::unix_ns();
    let mut recorder = Recorder::new(now, marked, Some(&captures));
    pipeline.process_observed(tables, ingress, now, batch, pool, out, &mut recorder);
    for (index, session) in &marks {
        let Some(r) = recorder.recorded.iter().find(|r| r.index == *index) else { continue };
        let mut trace = r.trace.clone();
        if let TraceOutcome::Sent(sent) = &mut trace.outcome {
            sent.iter_mut().for_each(|s| s.bytes.truncate(LIVE_SNAPLEN));
        }
        let frame = r.received[..r.received.len().min(LIVE_SNAPLEN)].to_vec();
        session.record(LiveTraced { port: ingress, unix_ns, frame, trace });
    }
}

/// Bytes a live trace keeps of each frame it reports (the summaries are made from the
/// whole frame): a session holds up to 1000 paths, a flood's one copy per port.
pub(crate) const LIVE_SNAPLEN: usize = 256;

/// A frame's path, as a [`Recorder`] saw it.
pub(crate) struct Recorded {
    /// Its place in the batch.
    pub index: usize,
    /// The frame as received.
    pub received: Vec<u8>,
    pub trace: Trace,
}

/// Where a trace that changes nothing copies from, and the state it runs on instead.
#[derive(Clone, Copy)]
struct Seed<'l> {
    live: &'l SharedState,
    scratch: &'l SharedState,
}

/// The observer of traces and live traces: records the marked frames of a batch; on
/// the live path also hands dropped frames to the open captures.
pub(crate) struct Recorder<'l> {
    seed: Option<Seed<'l>>,
    captures: Option<&'l Captures>,
    now: u32,
    /// The batch's frames to record, by index.
    marked: Vec<usize>,
    /// The index of the next frame to arrive.
    next: usize,
    current: Option<Recording>,
    pub recorded: Vec<Recorded>,
}

/// The frame being recorded, so far.
struct Recording {
    index: usize,
    received: Vec<u8>,
    parsed: Result<String, DropReason>,
    steps: Vec<TraceStep>,
    /// The frame in one line before the stage now running.
    summary: String,
    /// Before Service NAT: the tuple whose flow it looks up (for an ICMP error, the
    /// quoted packet's), and the established flow it found.
    tuple: Option<Tuple>,
    flow: Option<(Tuple, Direction, FlowIdentity)>,
    /// Before dispatch: the transmit batches' lengths and the ingress port's drops.
    queued: Vec<usize>,
    drops: Vec<u64>,
}

impl<'l> Recorder<'l> {
    /// Records the frames at `marked` of the next batch; offers drops to `captures`.
    pub(crate) fn new(now: u32, marked: Vec<usize>, captures: Option<&'l Captures>) -> Recorder<'l> {
        Recorder { seed: None, captures, now, marked, next: 0, current: None, recorded: Vec::new() }
    }
}

impl Seed<'_> {
    /// Copies what the live FDB knows of the frame's MACs into the scratch one.
    fn fdb(&self, scratch: &FdbBatch<'_>, pkt: &Packet<'_, '_>, now: u32) {
        let live = self.live.fdb.batch();
        let segment = pkt.port.segment;
        for mac in [pkt.meta.src_mac, pkt.meta.dst_mac] {
            if mac.is_multicast() || scratch.lookup(segment, mac).is_some() {
                continue;
            }
            if let Some(port) = live.lookup(segment, mac) {
                scratch.learn(segment, mac, port, now);
            }
        }
    }

    /// Copies the live flow of `tuple` and the source's pinned backends.
    fn flow(&self, ctx: &StageContext<'_>, tuple: Option<Tuple>, pkt: &Packet<'_, '_>, now: u32) {
        let Net::Ipv4(ip) = pkt.meta.net else { return };
        let live = self.live.conntrack.batch();
        if let Some((conn, _)) = tuple.and_then(|t| live.lookup(&t)) {
            // Not expired on the way in: `away` 0, idle as it is.
            let _ = ctx.ct.restore(&conn.record(now), 0, now);
        }
        for pinned in self.live.affinity.records(now).iter().filter(|r| r.client == ip.src) {
            self.scratch.affinity.restore(pinned, 0, now);
        }
    }
}

/// The tuple Service NAT looks the frame's flow up by: its own, or for an ICMP error
/// the quoted packet's, seen from the error's side.
fn flow_tuple(pkt: &Packet<'_, '_>) -> Option<Tuple> {
    let Net::Ipv4(ip) = pkt.meta.net else { return None };
    match ip.l4 {
        L4::Tcp { src_port, dst_port, .. } | L4::Udp { src_port, dst_port } => {
            Some(Tuple { proto: ip.protocol, src: ip.src, src_port, dst: ip.dst, dst_port })
        }
        L4::Icmpv4 { icmp_type, .. } if icmp::is_error(icmp_type) => quoted_tuple(pkt, &ip),
        _ => None,
    }
}

fn quoted_tuple(pkt: &Packet<'_, '_>, ip: &wire::Ipv4Meta) -> Option<Tuple> {
    let l4 = usize::from(ip.l4_offset);
    let end = usize::from(pkt.meta.l3_offset) + usize::from(ip.total_len);
    let mut message = pkt.frame.data().get(l4..end)?.to_vec();
    let quoted = icmp::Quoted::new(&mut message)?;
    let seen = Tuple {
        proto: quoted.protocol(),
        src: quoted.source(),
        src_port: quoted.source_port(),
        dst: quoted.destination(),
        dst_port: quoted.destination_port(),
    };
    Some(seen.reversed())
}

impl StageObserver for Recorder<'_> {
    fn parsed(&mut self, frame: &Frame, parsed: &Result<(), DropReason>, meta: &FrameMeta) {
        let index = self.next;
        self.next += 1;
        self.current = self.marked.contains(&index).then(|| Recording {
            index,
            received: frame.data().to_vec(),
            parsed: match parsed {
                Ok(()) => Ok(describe(meta, frame.data())),
                Err(reason) => Err(*reason),
            },
            steps: Vec::new(),
            summary: String::new(),
            tuple: None,
            flow: None,
            queued: Vec::new(),
            drops: Vec::new(),
        });
    }

    fn before(&mut self, stage: &'static str, ctx: &StageContext<'_>, pkt: &Packet<'_, '_>) {
        let Some(rec) = &mut self.current else { return };
        if let Some(seed) = self.seed {
            seed.fdb(ctx.fdb, pkt, self.now);
        }
        if stage == "service_nat" {
            rec.tuple = flow_tuple(pkt);
            if let Some(seed) = self.seed {
                seed.flow(ctx, rec.tuple, pkt, self.now);
            }
            rec.flow = rec
                .tuple
                .and_then(|t| ctx.ct.lookup(&t))
                .map(|(conn, dir)| (conn.orig, dir, FlowIdentity::of(conn)));
        }
        // From the bytes: a stage that decides a frame's fate need not keep `meta` true.
        rec.summary = summary_of(pkt.frame.data());
    }

    fn after(&mut self, stage: &'static str, step: &Step, ctx: &StageContext<'_>, pkt: &Packet<'_, '_>) {
        let Some(rec) = &mut self.current else { return };
        let mut notes = Vec::new();
        let now = summary_of(pkt.frame.data());
        if now != rec.summary {
            notes.push(format!("rewrote {} ⇒ {now}", rec.summary));
        }
        if stage == "service_nat" {
            notes.extend(service_note(ctx, rec));
        }
        let result = match step {
            ControlFlow::Continue(()) => "continue".to_string(),
            ControlFlow::Break(v) => verdict_text(ctx.tables, v),
        };
        rec.steps.push(TraceStep { stage, result, notes });
    }

    fn dropped(&mut self, frame: &Frame, reason: DropReason) {
        if let Some(c) = self.captures {
            c.offer_one(frame.ingress, CaptureDirection::Dropped(reason), frame);
        }
    }

    fn dispatching(&mut self, out: &TxBatches, stats: &WorkerStats, ingress: PortId) {
        let Some(rec) = &mut self.current else { return };
        rec.queued = out.queued_lengths();
        rec.drops = DropReason::ALL.iter().map(|r| stats.drops(ingress, *r)).collect();
    }

    fn dispatched(&mut self, tables: &Tables, out: &TxBatches, stats: &WorkerStats, ingress: PortId) {
        let Some(rec) = self.current.take() else { return };
        let sent: Vec<TraceSent> = out
            .queued_since(&rec.queued)
            .map(|(port, f)| TraceSent {
                port,
                port_name: tables.port(port).map(|p| p.name.clone()).unwrap_or_default(),
                summary: summary_of(f.data()),
                bytes: f.data().to_vec(),
            })
            .collect();
        let dropped =
            DropReason::ALL.iter().zip(&rec.drops).find(|(r, before)| stats.drops(ingress, **r) > **before);
        let mut steps = rec.steps;
        let outcome = match dropped {
            Some((reason, _)) if sent.is_empty() => TraceOutcome::Dropped(*reason),
            Some((reason, _)) => {
                // Some copies of a flood went, others not.
                steps.push(TraceStep {
                    stage: "dispatch",
                    result: format!("{} sent, some dropped: {}", sent.len(), reason.name()),
                    notes: Vec::new(),
                });
                TraceOutcome::Sent(sent)
            }
            None => TraceOutcome::Sent(sent),
        };
        self.recorded.push(Recorded {
            index: rec.index,
            received: rec.received,
            trace: Trace { parsed: rec.parsed, steps, outcome },
        });
    }
}

/// Which entry of the conntrack table a flow is: its address, which the table's guard
/// (held for the batch) keeps from being reused while the frame is in the stages.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FlowIdentity(usize);

impl FlowIdentity {
    fn of(conn: &crate::tables::conntrack::Conn) -> FlowIdentity {
        FlowIdentity(std::ptr::from_ref(conn) as usize)
    }
}

/// What Service NAT made of the frame's flow.
fn service_note(ctx: &StageContext<'_>, rec: &Recording) -> Option<String> {
    let services = ctx.tables.services();
    let name = |id: u32| services.by_id(id).map_or_else(|| format!("#{id} (removed)"), |s| s.name.clone());
    // The flow found before is still there: established. Gone or replaced (a SYN that
    // reopens a closed flow's tuple gets a new one, its endpoint chosen afresh): new.
    let established = rec.flow.and_then(|(orig, dir, id)| {
        let conn = ctx.ct.lookup(&orig)?.0;
        (FlowIdentity::of(conn) == id).then_some((conn, dir))
    });
    if let Some((flow, dir)) = established {
        let way = match dir {
            Direction::Orig => "client to endpoint",
            Direction::Reply => "endpoint to client",
        };
        return Some(format!(
            "established flow of Service {} ({way}; endpoint {}:{})",
            name(flow.service),
            flow.reply.src,
            flow.reply.src_port
        ));
    }
    let flow = ctx.ct.lookup(&rec.tuple?)?.0;
    Some(format!(
        "new flow of Service {}: endpoint {}:{}",
        name(flow.service),
        flow.reply.src,
        flow.reply.src_port
    ))
}

fn verdict_text(tables: &Tables, v: &Verdict) -> String {
    match v {
        Verdict::Forward(p) => {
            format!(
                "forward to {}",
                tables.port(*p).map_or_else(|| format!("port {}", p.0), |e| e.name.clone())
            )
        }
        Verdict::Flood => "flood in the segment".to_string(),
        Verdict::Overlay { node, .. } => match tables.overlay().node(*node) {
            Some(n) => format!("to node {} ({}) over VXLAN", n.name, n.ip),
            None => format!("to node #{} over VXLAN", node.0),
        },
        Verdict::Drop(reason) => format!("drop: {}", reason.name()),
    }
}

/// A frame in one line, as the parser sees it (or `unparsed` with its length).
pub fn summary_of(bytes: &[u8]) -> String {
    match wire::parse::parse(bytes) {
        Ok(meta) => describe(&meta, bytes),
        Err(e) => format!("{} bytes that do not parse ({})", bytes.len(), DropReason::from(e).name()),
    }
}

fn describe(meta: &FrameMeta, bytes: &[u8]) -> String {
    let mut s = format!("{} → {}", meta.src_mac, meta.dst_mac);
    if let Some(tci) = meta.vlan_tci {
        let _ = write!(s, " vlan {}", tci & 0x0fff);
    }
    match &meta.net {
        Net::Arp(a) => {
            let op = match a.op {
                1 => "request",
                2 => "reply",
                _ => "op?",
            };
            let _ = write!(
                s,
                " ARP {op} {} ({}) asks/tells {} ({})",
                a.sender_ip, a.sender_mac, a.target_ip, a.target_mac
            );
        }
        Net::Ipv4(ip) => {
            let _ = write!(s, " IPv4 ");
            let frag = match ip.fragment {
                wire::Fragment::None => "",
                wire::Fragment::First => " first fragment",
                wire::Fragment::Later => " later fragment",
            };
            write_l4(&mut s, &ip.src.to_string(), &ip.dst.to_string(), ip.l4);
            let _ = write!(s, " ttl {}{frag}, {} bytes", ip.ttl, bytes.len());
        }
        Net::Ipv6(ip) => {
            let _ = write!(s, " IPv6 ");
            write_l4(&mut s, &format!("[{}]", ip.src), &format!("[{}]", ip.dst), ip.l4);
            let _ = write!(s, " hop limit {}, {} bytes", ip.hop_limit, bytes.len());
        }
        Net::Unparsed => {
            let _ = write!(s, " (not IP or ARP), {} bytes", bytes.len());
        }
    }
    s
}

fn write_l4(s: &mut String, src: &str, dst: &str, l4: L4) {
    let _ = match l4 {
        L4::Tcp { src_port, dst_port, flags } => {
            write!(s, "{src}:{src_port} → {dst}:{dst_port} TCP [{}]", tcp_flags(flags))
        }
        L4::Udp { src_port, dst_port } => write!(s, "{src}:{src_port} → {dst}:{dst_port} UDP"),
        L4::Icmpv4 { icmp_type, code } => write!(s, "{src} → {dst} ICMP type {icmp_type} code {code}"),
        L4::Icmpv6 { icmp_type, code } => write!(s, "{src} → {dst} ICMPv6 type {icmp_type} code {code}"),
        L4::Opaque => write!(s, "{src} → {dst}"),
    };
}

fn tcp_flags(flags: u8) -> String {
    const NAMES: [(u8, char); 6] =
        [(0x02, 'S'), (0x10, '.'), (0x01, 'F'), (0x04, 'R'), (0x08, 'P'), (0x20, 'U')];
    NAMES.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, c)| *c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::LiveTraceSpec;
    use crate::ids::SegmentId;
    use crate::ids::WorkerSet;
    use crate::pipeline::Pipeline;
    use crate::tables::conntrack::ConntrackConfig;
    use crate::tables::fdb::FdbConfig;
    use crate::tables::services::{BuildMemory, EndpointSpec, ServicePortSpec, ServiceTable};
    use crate::tables::tests::{pod, segment0};
    use crate::tables::{PortEntry, TablesBuilder};
    use crate::testing::{FrameSpec, mac};
    use crate::wire::parse::IPPROTO_TCP;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 1, last)
    }

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    /// Pods 1..=3 (10.244.1.{2,3,4}), an uplink 8, a Service VIP:80 → pod 3:8080.
    fn tables() -> Tables {
        let mut b = TablesBuilder::default();
        b.add_segment(segment0()).unwrap();
        for i in 1..=3u8 {
            b.add_port(pod(u16::from(i), [10, 244, 1, i + 1])).unwrap();
        }
        b.add_port(PortEntry::uplink(PortId(8), "uplink8".into(), SegmentId(0), 1500, WorkerSet::single(0)))
            .unwrap();
        let web = ServicePortSpec {
            name: "default/web:http".into(),
            vip: VIP,
            port: 80,
            protocol: IPPROTO_TCP,
            node_port: None,
            endpoints: vec![EndpointSpec {
                ip: ip(4),
                port: 8080,
                ready: true,
                serving: true,
                terminating: false,
                local: true,
            }],
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
        };
        let services =
            ServiceTable::build(&[web], None, Ipv4Addr::new(169, 254, 42, 1), &mut BuildMemory::default());
        b.set_services(Arc::new(services));
        b.build().unwrap()
    }

    fn live() -> SharedState {
        SharedState::new(
            FdbConfig { max_entries_per_segment: 16, aging_secs: 300 },
            ConntrackConfig::default(),
        )
    }

    fn sent_ports(t: &Trace) -> Vec<u16> {
        match &t.outcome {
            TraceOutcome::Sent(s) => s.iter().map(|s| s.port.0).collect(),
            TraceOutcome::Dropped(r) => panic!("dropped: {}", r.name()),
        }
    }

    #[test]
    fn a_service_connection_is_traced_to_its_endpoint_and_changes_nothing() {
        let (tables, live) = (tables(), live());
        let syn = FrameSpec::tcp(mac(1), mac(0xffff), ip(2), VIP, 40000, 80, 0x02).build();
        let t = trace(&tables, &live, PortId(1), &syn, 100);
        assert_eq!(sent_ports(&t), vec![3]);
        let nat = t.steps.iter().find(|s| s.stage == "service_nat").expect("the Service stage ran");
        assert!(
            nat.notes
                .iter()
                .any(|n| n.contains("new flow of Service default/web:http: endpoint 10.244.1.4:8080")),
            "{nat:?}"
        );
        assert!(nat.notes.iter().any(|n| n.contains("⇒") && n.contains("10.244.1.4:8080")), "{nat:?}");
        assert_eq!((live.conntrack.len(), live.fdb.len()), (0, 0), "read-only");
    }

    #[test]
    fn a_packet_of_a_live_flow_is_traced_as_established() {
        let (tables, live) = (tables(), live());
        // The flow made for real, by a pipeline on the live state.
        let mut p = Pipeline::new(&live, Arc::new(WorkerStats::new(16)));
        let mut pool = FramePool::standalone(2048);
        let mut out = TxBatches::new(16);
        let syn = FrameSpec::tcp(mac(1), mac(0xffff), ip(2), VIP, 40000, 80, 0x02).build();
        let mut batch = vec![pool.copy_of(&syn).unwrap()];
        p.process(&tables, PortId(1), 100, &mut batch, &mut pool, &mut out);
        assert_eq!(live.conntrack.len(), 1);
        let seen_before = live.conntrack.snapshot()[0].last_seen();
        // The endpoint's reply, traced later.
        let reply = FrameSpec::tcp(mac(3), mac(0xffff), ip(4), ip(2), 8080, 40000, 0x12).build();
        let t = trace(&tables, &live, PortId(3), &reply, 150);
        assert_eq!(sent_ports(&t), vec![1]);
        let nat = t.steps.iter().find(|s| s.stage == "service_nat").unwrap();
        assert!(
            nat.notes.iter().any(|n| n.contains("established") && n.contains("endpoint to client")),
            "{nat:?}"
        );
        assert!(nat.notes.iter().any(|n| n.contains("10.96.0.10:80")), "the VIP as source: {nat:?}");
        assert_eq!(live.conntrack.snapshot()[0].last_seen(), seen_before, "the live flow untouched");
    }

    #[test]
    fn a_spoofed_source_is_traced_to_the_port_security_drop() {
        let (tables, live) = (tables(), live());
        let spoofed = FrameSpec::udp(mac(1), mac(3), ip(9), ip(4), 1, 2).build();
        let t = trace(&tables, &live, PortId(1), &spoofed, 100);
        assert_eq!(t.outcome, TraceOutcome::Dropped(DropReason::SpoofedSourceIp));
        assert_eq!(t.steps.len(), 1);
        assert_eq!(t.steps[0].stage, "port_security");
        assert_eq!(t.steps[0].result, "drop: spoofed_source_ip");
    }

    #[test]
    fn a_malformed_frame_gets_the_parsers_reason() {
        let (tables, live) = (tables(), live());
        let t = trace(&tables, &live, PortId(1), &[0u8; 10], 100);
        assert_eq!(t.parsed, Err(DropReason::TruncatedEthernet));
        assert_eq!(t.outcome, TraceOutcome::Dropped(DropReason::TruncatedEthernet));
        assert!(t.steps.is_empty());
    }

    #[test]
    fn learned_macs_are_seen_but_not_learned() {
        let (tables, live) = (tables(), live());
        live.fdb.batch().learn(SegmentId(0), mac(0x100), PortId(8), 100);
        let to_learned = FrameSpec::udp(mac(1), mac(0x100), ip(2), Ipv4Addr::new(192, 0, 2, 1), 1, 2).build();
        let t = trace(&tables, &live, PortId(1), &to_learned, 100);
        assert_eq!(sent_ports(&t), vec![8]);
        let from_new = FrameSpec::udp(mac(0x200), mac(1), Ipv4Addr::new(192, 0, 2, 9), ip(2), 1, 2).build();
        let t = trace(&tables, &live, PortId(8), &from_new, 100);
        assert_eq!(sent_ports(&t), vec![1]);
        assert_eq!(live.fdb.len(), 1, "the new MAC was not learned");
        // Unknown unicast is flooded: one frame per other port.
        let unknown = FrameSpec::udp(mac(1), mac(0x777), ip(2), ip(99), 1, 2).build();
        assert_eq!(sent_ports(&trace(&tables, &live, PortId(1), &unknown, 100)).len(), 3);
    }

    /// A worker's pipeline on the live state, and what it needs to run a batch.
    struct LivePath {
        pipeline: Pipeline,
        pool: FramePool,
        out: TxBatches,
    }

    impl LivePath {
        fn new(live: &SharedState) -> LivePath {
            LivePath {
                pipeline: Pipeline::new(live, Arc::new(WorkerStats::new(16))),
                pool: FramePool::standalone(2048),
                out: TxBatches::new(16),
            }
        }

        /// Runs `frames` as one batch received on `port`; what was queued, by port.
        fn run(&mut self, tables: &Tables, port: u16, frames: &[&[u8]]) -> Vec<(u16, Vec<u8>)> {
            let mut batch: Vec<Frame> = frames.iter().map(|f| self.pool.copy_of(f).unwrap()).collect();
            self.pipeline.process(tables, PortId(port), 100, &mut batch, &mut self.pool, &mut self.out);
            self.out.take_sent(&mut self.pool)
        }
    }

    fn taken(session: &crate::capture::LiveTraceSession) -> Vec<crate::capture::LiveTraced> {
        let mut got = Vec::new();
        session.take(&mut got);
        got
    }

    #[test]
    fn a_live_trace_records_the_real_path_of_the_frames_it_marks_and_no_others() {
        let (tables, live) = (tables(), live());
        let spec = |port: u16, filter: &str| LiveTraceSpec {
            port: Some(PortId(port)),
            filter: filter.parse().unwrap(),
            count: 1,
        };
        let session = live.captures.trace_live(spec(1, "tcp and port 80"));
        let mut path = LivePath::new(&live);
        let udp = FrameSpec::udp(mac(1), mac(3), ip(2), ip(4), 1, 2).build();
        let syn = FrameSpec::tcp(mac(1), mac(0xffff), ip(2), VIP, 40000, 80, 0x02).build();
        let syn2 = FrameSpec::tcp(mac(1), mac(0xffff), ip(2), VIP, 40001, 80, 0x02).build();
        let sent = path.run(&tables, 1, &[&udp, &syn, &syn2]);
        assert_eq!(live.conntrack.len(), 2, "the real path: both SYNs made flows");

        let got = taken(&session);
        assert_eq!(got.len(), 1, "the count is 1");
        assert_eq!((got[0].port, &got[0].frame), (PortId(1), &syn), "the first frame that matches");
        let nat =
            got[0].trace.steps.iter().find(|s| s.stage == "service_nat").expect("the Service stage ran");
        assert!(
            nat.notes
                .iter()
                .any(|n| n.contains("new flow of Service default/web:http: endpoint 10.244.1.4:8080")),
            "{nat:?}"
        );
        let TraceOutcome::Sent(out) = &got[0].trace.outcome else { panic!("{:?}", got[0].trace.outcome) };
        assert_eq!(out.len(), 1);
        assert!(sent.contains(&(3, out[0].bytes.clone())), "what was really queued for port 3");
        assert!(session.is_done());
        path.run(&tables, 1, &[&syn]);
        assert!(taken(&session).is_empty(), "nothing marked past the count");
        live.captures.end_live_trace(&session);

        // The endpoint's answer, on its own port: the flow the SYN made.
        let reply = live.captures.trace_live(spec(3, ""));
        let syn_ack = FrameSpec::tcp(mac(3), mac(0xffff), ip(4), ip(2), 8080, 40000, 0x12).build();
        path.run(&tables, 1, &[&syn_ack]);
        assert!(taken(&reply).is_empty(), "another port's frame is not marked");
        path.run(&tables, 3, &[&syn_ack]);
        let got = taken(&reply);
        let nat = got[0].trace.steps.iter().find(|s| s.stage == "service_nat").unwrap();
        assert!(
            nat.notes.iter().any(|n| n.contains("established") && n.contains("endpoint to client")),
            "{nat:?}"
        );
        live.captures.end_live_trace(&reply);
        assert!(!live.captures.armed(), "the last session closed: the path is unwatched again");
    }

    #[test]
    fn overlapping_live_traces_each_get_the_frame_and_a_reopened_tuple_is_a_new_flow() {
        let (tables, live) = (tables(), live());
        let mut path = LivePath::new(&live);
        let syn = FrameSpec::tcp(mac(1), mac(0xffff), ip(2), VIP, 40000, 80, 0x02).build();
        let rst = FrameSpec::tcp(mac(1), mac(0xffff), ip(2), VIP, 40000, 80, 0x04).build();
        path.run(&tables, 1, &[&syn, &rst]);
        assert_eq!(live.conntrack.len(), 1, "the reset flow stays until it expires");

        let any = || LiveTraceSpec { port: None, filter: "tcp".parse().unwrap(), count: 1 };
        let (first, second) = (live.captures.trace_live(any()), live.captures.trace_live(any()));
        path.run(&tables, 1, &[&syn]);
        for session in [&first, &second] {
            let got = taken(session);
            assert_eq!(got.len(), 1, "every session that matches gets the frame");
            let nat = got[0].trace.steps.iter().find(|s| s.stage == "service_nat").unwrap();
            assert!(
                nat.notes.iter().any(|n| n.starts_with("new flow of Service default/web:http")),
                "a SYN on a reset flow's tuple makes a new flow: {nat:?}"
            );
        }
    }

    #[test]
    fn a_live_traced_drop_is_named_and_still_captured() {
        let (tables, live) = (tables(), live());
        let session =
            live.captures.trace_live(LiveTraceSpec { port: None, filter: Default::default(), count: 2 });
        let drops = live.captures.start(crate::capture::CaptureSpec {
            port: None,
            received: false,
            sent: false,
            drops: Some(None),
            filter: Default::default(),
            snaplen: 9216,
            count: None,
        });
        let spoofed = FrameSpec::udp(mac(1), mac(3), ip(9), ip(4), 1, 2).build();
        let mut path = LivePath::new(&live);
        assert!(path.run(&tables, 1, &[&spoofed, &[0u8; 10]]).is_empty());
        let got = taken(&session);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].trace.outcome, TraceOutcome::Dropped(DropReason::SpoofedSourceIp));
        assert_eq!(got[0].trace.steps[0].result, "drop: spoofed_source_ip");
        assert_eq!(got[1].trace.parsed, Err(DropReason::TruncatedEthernet));
        assert_eq!(got[1].trace.outcome, TraceOutcome::Dropped(DropReason::TruncatedEthernet));
        let mut captured = Vec::new();
        drops.take(&mut captured);
        assert_eq!(captured.len(), 2, "the capture of drops sees both");
    }

    #[test]
    fn an_unknown_ingress_port_is_a_drop() {
        let (tables, live) = (tables(), live());
        let f = FrameSpec::udp(mac(1), mac(3), ip(2), ip(4), 1, 2).build();
        let t = trace(&tables, &live, PortId(40), &f, 100);
        assert_eq!(t.outcome, TraceOutcome::Dropped(DropReason::UnknownIngressPort));
    }
}
