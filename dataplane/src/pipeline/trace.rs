//! Packet trace: one frame through the real stages and dispatch, nothing sent and
//! nothing changed — `ofproto/trace` for this switch.
//!
//! The frame runs through [`Pipeline::process_observed`] exactly as a received one
//! would, with a recorder as the stages' observer, but against scratch state: a
//! throwaway FDB, conntrack and affinity table, counters, buffer pool and transmit
//! batches. Before each stage the recorder copies into the scratch state what that
//! stage will look up in the live state — the frame's source and destination MACs in
//! its segment, the flow its tuple belongs to, the source's pinned Service backends —
//! so the trace sees what the live tables say while learning, new flows and counters
//! touch only the copies. What dispatch queued (or the drop it counted) is the trace's
//! outcome.
//!
//! Inexact where a live table's other entries matter: a new hairpin or NodePort flow's
//! source-port clash check sees only the copied flow, and a flood is judged with a full
//! storm-control budget.

use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::sync::Arc;

use super::{Pipeline, SharedState, StageObserver, TxBatches};
use crate::drop_reason::DropReason;
use crate::frame::{Frame, FramePool};
use crate::ids::PortId;
use crate::stage::{Packet, StageContext, Step, Verdict};
use crate::stats::WorkerStats;
use crate::tables::Tables;
use crate::tables::conntrack::{Direction, Tuple};
use crate::tables::fdb::FdbBatch;
use crate::wire::{self, FrameMeta, L4, Net, icmp};

/// What happened to a traced frame, stage by stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The frame as the parser saw it, in one line; or why the parser refused it.
    pub parsed: Result<String, DropReason>,
    /// The stages the frame went through, in order.
    pub steps: Vec<TraceStep>,
    pub outcome: TraceOutcome,
}

/// One stage's part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceStep {
    /// The stage, as `pipeline::stages` names it.
    pub stage: &'static str,
    /// `continue`, or the fate the stage decided.
    pub result: String,
    /// What the stage found or changed, in words.
    pub notes: Vec<String>,
}

/// Where the frame would end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceOutcome {
    /// Sent: one frame for unicast, one per port for a flood, the encapsulated frame
    /// for another node.
    Sent(Vec<TraceSent>),
    Dropped(DropReason),
}

/// A frame the trace would have sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceSent {
    pub port: PortId,
    /// The port's name in the tables.
    pub port_name: String,
    /// The frame as it would leave, in one line.
    pub summary: String,
    pub bytes: Vec<u8>,
}

/// Traces `bytes` as if received on `ingress`, against `tables` and what `live` holds,
/// at datapath time `now`.
pub(crate) fn trace(tables: &Tables, live: &SharedState, ingress: PortId, bytes: &[u8], now: u32) -> Trace {
    let scratch = SharedState::new(live.fdb.config(), live.conntrack.config());
    let max_ports = tables.ports().map(|p| p.id.index() + 1).max().unwrap_or(0).max(ingress.index() + 1);
    let stats = Arc::new(WorkerStats::new(max_ports));
    let mut pipeline = Pipeline::new(&scratch, stats.clone());
    let mut pool = FramePool::standalone(bytes.len().max(2048));
    let mut out = TxBatches::new(max_ports);
    let mut recorder =
        Recorder { live, scratch: &scratch, now, parsed: None, steps: Vec::new(), seen: Seen::default() };
    let Some(frame) = pool.copy_of(bytes) else {
        return Trace {
            parsed: Err(DropReason::OversizedFrame),
            steps: Vec::new(),
            outcome: TraceOutcome::Dropped(DropReason::OversizedFrame),
        };
    };
    let mut batch = vec![frame];
    pipeline.process_observed(tables, ingress, now, &mut batch, &mut pool, &mut out, &mut recorder);
    let mut sent = Vec::new();
    out.flush(|port, frames| {
        for f in frames.drain(..) {
            sent.push(TraceSent {
                port,
                port_name: tables.port(port).map(|p| p.name.clone()).unwrap_or_default(),
                summary: summary_of(f.data()),
                bytes: f.data().to_vec(),
            });
        }
    });
    let dropped = DropReason::ALL.iter().copied().find(|r| stats.drops(ingress, *r) > 0);
    let outcome = match dropped {
        Some(reason) if sent.is_empty() => TraceOutcome::Dropped(reason),
        _ => TraceOutcome::Sent(sent),
    };
    let parsed = recorder.parsed.unwrap_or(Err(DropReason::UnknownIngressPort));
    Trace { parsed, steps: recorder.steps, outcome }
}

/// What the recorder saw before the stage now running.
#[derive(Default)]
struct Seen {
    summary: String,
    flows: u32,
    /// The live flow the frame's tuple belongs to, copied in before Service NAT.
    flow: Option<(Tuple, Direction)>,
}

/// The trace's observer: seeds the scratch state, notes what each stage did.
struct Recorder<'l> {
    live: &'l SharedState,
    scratch: &'l SharedState,
    now: u32,
    parsed: Option<Result<String, DropReason>>,
    steps: Vec<TraceStep>,
    seen: Seen,
}

impl Recorder<'_> {
    /// Copies what the live FDB knows of the frame's MACs into the scratch one.
    fn seed_fdb(&self, scratch: &FdbBatch<'_>, pkt: &Packet<'_, '_>) {
        let live = self.live.fdb.batch();
        let segment = pkt.port.segment;
        for mac in [pkt.meta.src_mac, pkt.meta.dst_mac] {
            if mac.is_multicast() || scratch.lookup(segment, mac).is_some() {
                continue;
            }
            if let Some(port) = live.lookup(segment, mac) {
                scratch.learn(segment, mac, port, self.now);
            }
        }
    }

    /// Copies the live flow the frame belongs to — or, for an ICMP error, the flow of
    /// the packet it quotes — and its source's pinned backends.
    fn seed_flow(&mut self, ctx: &StageContext<'_>, pkt: &Packet<'_, '_>) {
        let Net::Ipv4(ip) = pkt.meta.net else { return };
        let tuple = match ip.l4 {
            L4::Tcp { src_port, dst_port, .. } | L4::Udp { src_port, dst_port } => {
                Some(Tuple { proto: ip.protocol, src: ip.src, src_port, dst: ip.dst, dst_port })
            }
            L4::Icmpv4 { icmp_type, .. } if icmp::is_error(icmp_type) => quoted_tuple(pkt, &ip),
            _ => None,
        };
        let live = self.live.conntrack.batch();
        if let Some((conn, dir)) = tuple.and_then(|t| live.lookup(&t)) {
            // Not expired on the way in: `away` 0, idle as it is.
            let _ = ctx.ct.restore(&conn.record(self.now), 0, self.now);
            self.seen.flow = Some((conn.orig, dir));
        }
        for pinned in self.live.affinity.records(self.now).iter().filter(|r| r.client == ip.src) {
            self.scratch.affinity.restore(pinned, 0, self.now);
        }
    }
}

/// The tuple of the flow an ICMP error's quoted packet belongs to, seen from the
/// error's side (as Service NAT looks it up).
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
        self.parsed = Some(match parsed {
            Ok(()) => Ok(describe(meta, frame.data())),
            Err(reason) => Err(*reason),
        });
    }

    fn before(&mut self, stage: &'static str, ctx: &StageContext<'_>, pkt: &Packet<'_, '_>) {
        self.seed_fdb(ctx.fdb, pkt);
        if stage == "service_nat" {
            self.seed_flow(ctx, pkt);
        }
        // From the bytes: a stage that decides a frame's fate need not keep `meta` true.
        self.seen.summary = summary_of(pkt.frame.data());
        self.seen.flows = self.scratch.conntrack.len();
    }

    fn after(&mut self, stage: &'static str, step: &Step, ctx: &StageContext<'_>, pkt: &Packet<'_, '_>) {
        let mut notes = Vec::new();
        let now = summary_of(pkt.frame.data());
        if now != self.seen.summary {
            notes.push(format!("rewrote {} ⇒ {now}", self.seen.summary));
        }
        if stage == "service_nat" {
            notes.extend(service_note(ctx, &self.seen, self.scratch));
        }
        let result = match step {
            ControlFlow::Continue(()) => "continue".to_string(),
            ControlFlow::Break(v) => verdict_text(ctx.tables, v),
        };
        self.steps.push(TraceStep { stage, result, notes });
    }
}

/// What Service NAT made of the frame's flow.
fn service_note(ctx: &StageContext<'_>, seen: &Seen, scratch: &SharedState) -> Option<String> {
    let services = ctx.tables.services();
    let name = |id: u32| services.by_id(id).map_or_else(|| format!("#{id} (removed)"), |s| s.name.clone());
    if scratch.conntrack.len() > seen.flows {
        let flow = scratch.conntrack.snapshot().into_iter().next()?;
        let r = flow.reply;
        return Some(format!(
            "new flow of Service {}: endpoint {}:{}",
            name(flow.service),
            r.src,
            r.src_port
        ));
    }
    let (orig, dir) = seen.flow?;
    let flow = ctx.ct.lookup(&orig)?.0;
    let way = match dir {
        Direction::Orig => "client to endpoint",
        Direction::Reply => "endpoint to client",
    };
    Some(format!(
        "established flow of Service {} ({way}; endpoint {}:{})",
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

    #[test]
    fn an_unknown_ingress_port_is_a_drop() {
        let (tables, live) = (tables(), live());
        let f = FrameSpec::udp(mac(1), mac(3), ip(2), ip(4), 1, 2).build();
        let t = trace(&tables, &live, PortId(40), &f, 100);
        assert_eq!(t.outcome, TraceOutcome::Dropped(DropReason::UnknownIngressPort));
    }
}
