//! `POST /v1/flows`: the flow log. While a client follows it, the workers hand over a
//! sighting of every IPv4 packet they receive and of every drop
//! (`vswitch_dataplane::capture::FlowWatch`); this module makes flows of them and
//! streams each flow's start and end as JSON lines.
//!
//! A flow is its first packet's 5-tuple, both ways. A Service flow's two directions
//! look unrelated on the wire (client → VIP, endpoint → client): connection tracking
//! joins them, and names the Service and the endpoint. A flow ends a second after FIN
//! went both ways or a RST, or when it saw no packet for the idle time. Nothing is
//! observed while nobody follows; a follower slower than the traffic loses sightings
//! (counted), never traffic or daemon memory beyond the ring and the open flows (at most
//! [`MAX_FLOWS`]).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures::Stream;
use vswitch_api::{FlowEvent, FlowsRequest};
use vswitch_dataplane::capture::{Captures, FlowWatch, PacketFilter, Sighting, unix_ns};
use vswitch_dataplane::datapath::Datapath;
use vswitch_dataplane::ids::PortId;
use vswitch_dataplane::tables::Tables;
use vswitch_dataplane::tables::conntrack::{Conntrack, Direction, Tuple};

use super::api::ApiError;
use super::switch::Switch;

/// Flows followed at most; past it new flows are not reported (sightings of known ones
/// still count).
pub(crate) const MAX_FLOWS: usize = 65536;
/// How often sightings are taken.
const POLL: Duration = Duration::from_millis(100);
/// How long a closed TCP flow is kept for its last packets.
const LINGER_NS: u64 = 1_000_000_000;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// A flow log a client opened.
pub(crate) struct Following {
    watch: Arc<FlowWatch>,
    captures: Arc<Captures>,
    conntrack: Arc<Conntrack>,
    /// The tables when the log was opened: Service names, pods' addresses.
    tables: Arc<Tables>,
    names: BTreeMap<PortId, String>,
    /// Pods attached here whose attach named them, by address: `namespace/name`.
    pods: HashMap<Ipv4Addr, String>,
    filter: PacketFilter,
    idle_ns: u64,
    deadline: Option<Instant>,
}

pub(crate) fn open(switch: &Switch, req: &FlowsRequest) -> Result<Following, ApiError> {
    let filter = super::capture::parse_filter(&req.filter)?;
    let dp: &Datapath = switch.datapath();
    let captures = dp.captures().clone();
    Ok(Following {
        watch: captures.watch_flows(),
        captures,
        conntrack: dp.conntrack().clone(),
        tables: dp.tables(),
        names: switch.port_names(),
        pods: pods_by_address(&switch.ports()),
        filter,
        idle_ns: req.idle_secs.unwrap_or(10).max(1) * 1_000_000_000,
        deadline: req.seconds.map(|s| Instant::now() + Duration::from_secs(s)),
    })
}

/// `namespace/name` of each pod the attach named, by each of its IPv4 addresses.
fn pods_by_address(ports: &[vswitch_api::PortInfo]) -> HashMap<Ipv4Addr, String> {
    let mut pods = HashMap::new();
    for p in ports {
        let Some(pod) = p.pod.as_ref().filter(|pod| !pod.name.is_empty()) else { continue };
        for net in &p.ips {
            if let std::net::IpAddr::V4(a) = net.addr() {
                pods.insert(a, format!("{}/{}", pod.namespace, pod.name));
            }
        }
    }
    pods
}

/// The JSON-lines stream of a flow log.
pub(crate) fn stream(following: Following) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let state = Log { following, flows: HashMap::new(), by_reply: HashMap::new(), taken: Vec::new() };
    super::api::streamed(state)
}

/// The flows followed, by their original tuple, and the reply tuples that lead to them.
struct Log {
    following: Following,
    flows: HashMap<Tuple, Flow>,
    by_reply: HashMap<Tuple, Tuple>,
    taken: Vec<Sighting>,
}

struct Flow {
    event: FlowEvent,
    /// Its key in `Log::by_reply`.
    reply: Tuple,
    last_ns: u64,
    /// FIN seen from the client, from the server.
    fin: [bool; 2],
    closed_ns: Option<u64>,
    reset: bool,
}

impl Drop for Log {
    fn drop(&mut self) {
        self.following.captures.unwatch_flows(&self.following.watch);
        tracing::info!(lost = self.following.watch.lost(), "flow log closed");
    }
}

impl super::api::Pieces for Log {
    async fn next_piece(&mut self) -> Option<Vec<u8>> {
        loop {
            let over = self.following.deadline.is_some_and(|d| Instant::now() >= d);
            if over {
                return None;
            }
            let mut events = Vec::new();
            let mut taken = std::mem::take(&mut self.taken);
            taken.clear();
            self.following.watch.take_up_to(&mut taken, 4 * vswitch_dataplane::capture::FLOW_RING);
            for s in &taken {
                if let Some(e) = self.see(s) {
                    events.push(e);
                }
            }
            self.taken = taken;
            events.extend(self.expire(unix_ns()));
            if !events.is_empty() {
                let mut out = Vec::new();
                for e in &events {
                    serde_json::to_writer(&mut out, e).expect("flow events serialize");
                    out.push(b'\n');
                }
                return Some(out);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Log {
    /// Counts a sighting into its flow; the flow's start event if it is new.
    fn see(&mut self, s: &Sighting) -> Option<FlowEvent> {
        let seen =
            Tuple { proto: s.protocol, src: s.src, src_port: s.src_port, dst: s.dst, dst_port: s.dst_port };
        let (key, from_client) = self.flow_of(&seen, s.unix_ns)?;
        let flow = self.flows.get_mut(&key)?;
        let e = &mut flow.event;
        if let Some(reason) = s.dropped {
            e.verdict = format!("dropped: {}", reason.name());
            return None;
        }
        if from_client {
            e.packets_out += 1;
            e.bytes_out += u64::from(s.len);
        } else {
            e.packets_back += 1;
            e.bytes_back += u64::from(s.len);
        }
        flow.last_ns = flow.last_ns.max(s.unix_ns);
        if s.tcp_flags & TCP_RST != 0 {
            flow.reset = true;
            flow.closed_ns.get_or_insert(s.unix_ns);
        }
        if s.tcp_flags & TCP_FIN != 0 {
            flow.fin[usize::from(!from_client)] = true;
            if flow.fin == [true, true] {
                flow.closed_ns.get_or_insert(s.unix_ns);
            }
        }
        let new = e.packets_out + e.packets_back == 1;
        new.then(|| e.clone())
    }

    /// The flow `seen` belongs to and whether it goes from the client; a new flow is
    /// made (unless it is filtered out or too many are open).
    fn flow_of(&mut self, seen: &Tuple, at_ns: u64) -> Option<(Tuple, bool)> {
        if self.flows.contains_key(seen) {
            return Some((*seen, true));
        }
        if let Some(orig) = self.by_reply.get(seen) {
            return Some((*orig, false));
        }
        // A Service flow: connection tracking knows both directions.
        let tracked = {
            let ct = self.following.conntrack.batch();
            ct.lookup(seen).map(|(c, dir)| (c.orig, c.reply, c.service, dir))
        };
        let (orig, reply, service) = match tracked {
            Some((orig, reply, service, Direction::Orig)) => (orig, reply, Some(service)),
            Some((orig, reply, service, Direction::Reply)) => {
                if !self.flows.contains_key(&orig) {
                    // The reply of a flow that started before the log: taken as it comes.
                    self.start(orig, reply, Some(service), at_ns);
                }
                return self.flows.contains_key(&orig).then_some((orig, false));
            }
            None => (*seen, seen.reversed(), None),
        };
        self.start(orig, reply, service, at_ns);
        self.flows.contains_key(&orig).then_some((orig, true))
    }

    /// Starts following the flow `orig` (its replies `reply`), first seen at `at_ns`.
    fn start(&mut self, orig: Tuple, reply: Tuple, service: Option<u32>, at_ns: u64) {
        let f = &self.following.filter;
        // The endpoint's side: where a Service flow was translated to.
        let translated = reply.reversed();
        if !f.matches_flow(orig.proto, orig.src, orig.src_port, orig.dst, orig.dst_port)
            && !f.matches_flow(
                translated.proto,
                translated.src,
                translated.src_port,
                translated.dst,
                translated.dst_port,
            )
        {
            return;
        }
        if self.flows.len() >= MAX_FLOWS {
            return;
        }
        let services = self.following.tables.services();
        let service_name =
            service.map(|id| services.by_id(id).map_or_else(|| format!("#{id}"), |s| s.name.clone()));
        let endpoint = service.map(|_| format!("{}:{}", reply.src, reply.src_port));
        let client_port = self.port_of(orig.src);
        let pod = |ip: Ipv4Addr| self.following.pods.get(&ip).cloned();
        let event = FlowEvent {
            client_pod: pod(orig.src),
            // The endpoint's address, for a Service flow, is where the replies come from.
            server_pod: pod(reply.src),
            event: "start".into(),
            protocol: protocol_name(orig.proto),
            client: format!("{}:{}", orig.src, orig.src_port),
            server: format!("{}:{}", orig.dst, orig.dst_port),
            endpoint,
            service: service_name,
            client_port,
            verdict: "forwarded".into(),
            start_unix_ms: at_ns / 1_000_000,
            end_unix_ms: None,
            end_reason: None,
            packets_out: 0,
            packets_back: 0,
            bytes_out: 0,
            bytes_back: 0,
        };
        self.by_reply.insert(reply, orig);
        self.flows.insert(
            orig,
            Flow { event, reply, last_ns: at_ns, fin: [false; 2], closed_ns: None, reset: false },
        );
    }

    /// The name of the port whose pod owns `ip`, or the address.
    fn port_of(&self, ip: Ipv4Addr) -> String {
        let tables = &self.following.tables;
        tables
            .ports()
            .find(|p| p.ipv4.contains(&ip))
            .and_then(|p| self.following.names.get(&p.id).cloned())
            .unwrap_or_else(|| ip.to_string())
    }

    /// The end events of flows closed a second ago or idle too long; forgets them.
    fn expire(&mut self, now: u64) -> Vec<FlowEvent> {
        let idle = self.following.idle_ns;
        let done: Vec<Tuple> = self
            .flows
            .iter()
            .filter(|(_, f)| {
                f.closed_ns.is_some_and(|c| now.saturating_sub(c.max(f.last_ns)) >= LINGER_NS)
                    || now.saturating_sub(f.last_ns) >= idle
            })
            .map(|(k, _)| *k)
            .collect();
        let mut ended = Vec::new();
        for key in done {
            let Some(flow) = self.flows.remove(&key) else { continue };
            self.by_reply.remove(&flow.reply);
            let mut e = flow.event;
            e.event = "end".into();
            e.end_unix_ms = Some(flow.last_ns / 1_000_000);
            e.end_reason = Some(
                match (flow.reset, flow.closed_ns.is_some()) {
                    (true, _) => "reset",
                    (false, true) => "closed",
                    (false, false) => "idle",
                }
                .into(),
            );
            ended.push(e);
        }
        ended
    }
}

fn protocol_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vswitch_dataplane::tables::conntrack::ConntrackConfig;

    fn log(filter: &str) -> Log {
        let captures = Arc::new(Captures::default());
        let following = Following {
            watch: captures.watch_flows(),
            captures,
            conntrack: Arc::new(Conntrack::new(ConntrackConfig::default())),
            tables: Arc::new(Tables::empty()),
            names: BTreeMap::new(),
            pods: HashMap::from([(Ipv4Addr::new(10, 0, 0, 1), "default/client".to_string())]),
            filter: filter.parse().unwrap(),
            idle_ns: 5_000_000_000,
            deadline: None,
        };
        Log { following, flows: HashMap::new(), by_reply: HashMap::new(), taken: Vec::new() }
    }

    fn sighting(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8, at_s: u64) -> Sighting {
        Sighting {
            port: PortId(1),
            unix_ns: at_s * 1_000_000_000,
            protocol: 6,
            src: Ipv4Addr::from(src),
            src_port: sport,
            dst: Ipv4Addr::from(dst),
            dst_port: dport,
            len: 60,
            tcp_flags: flags,
            dropped: None,
        }
    }

    #[test]
    fn a_connection_starts_counts_both_ways_and_ends_when_closed() {
        let mut l = log("");
        let (c, srv) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let start = l.see(&sighting(c, 1000, srv, 80, 0x02, 100)).expect("a start");
        assert_eq!(
            (start.event.as_str(), start.client.as_str(), start.server.as_str()),
            ("start", "10.0.0.1:1000", "10.0.0.2:80")
        );
        assert_eq!(start.client_pod.as_deref(), Some("default/client"), "named at attach");
        assert_eq!(start.server_pod, None, "not a pod attached here");
        assert!(l.see(&sighting(srv, 80, c, 1000, 0x12, 100)).is_none(), "the reply belongs to it");
        l.see(&sighting(c, 1000, srv, 80, 0x11, 101));
        l.see(&sighting(srv, 80, c, 1000, 0x11, 101));
        assert!(l.expire(101_500_000_000).is_empty(), "kept a second for the last ACKs");
        let ended = l.expire(102_100_000_000);
        assert_eq!(ended.len(), 1);
        let e = &ended[0];
        assert_eq!(
            (e.end_reason.as_deref(), e.packets_out, e.packets_back, e.bytes_out),
            (Some("closed"), 2, 2, 120)
        );
        assert!(l.flows.is_empty() && l.by_reply.is_empty());
    }

    #[test]
    fn resets_idle_flows_drops_and_filters() {
        let mut l = log("port 80");
        assert!(
            l.see(&sighting([10, 0, 0, 1], 1000, [10, 0, 0, 2], 22, 0x02, 100)).is_none(),
            "filtered out"
        );
        l.see(&sighting([10, 0, 0, 1], 1001, [10, 0, 0, 2], 80, 0x02, 100));
        l.see(&sighting([10, 0, 0, 2], 80, [10, 0, 0, 1], 1001, 0x04, 100));
        l.see(&sighting([10, 0, 0, 1], 1002, [10, 0, 0, 2], 80, 0x02, 100));
        let mut dropped = sighting([10, 0, 0, 1], 1002, [10, 0, 0, 2], 80, 0x02, 100);
        dropped.dropped = Some(vswitch_dataplane::drop_reason::DropReason::SpoofedSourceIp);
        l.see(&dropped);
        let mut ended = l.expire(106_000_000_000);
        ended.sort_by(|a, b| a.client.cmp(&b.client));
        let reasons: Vec<_> =
            ended.iter().map(|e| (e.end_reason.clone().unwrap(), e.verdict.clone())).collect();
        assert_eq!(
            reasons,
            [
                ("reset".to_string(), "forwarded".to_string()),
                ("idle".to_string(), "dropped: spoofed_source_ip".to_string())
            ]
        );
        assert_eq!(ended[1].packets_out, 1, "a drop is not counted twice");
    }
}
