//! `POST /v1/trace`: finds the ingress port a request names, builds the frame it
//! describes (or decodes its hex), has the data plane trace it ([`Datapath::trace`]) and
//! renders the answer. A frame that does not parse is traced like any other — the
//! answer names the parser's drop reason, as the real path would count it; only a
//! request the switch cannot turn into bytes (unknown port, odd hex, a bad MAC) is an
//! API error.
//!
//! `POST /v1/trace/live`: opens a live trace in the data plane (the workers record the
//! paths of the frames it marks) and streams each path as a JSON line as it comes. The
//! session's ring holds its whole count, so a slow reader loses nothing and costs no
//! more than that; it closes when all were streamed, at its time, or when the client
//! goes (the stream is dropped).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures::Stream;
use vswitch_api::{
    LiveTraceRequest, TracePacket, TraceProtocol, TraceRequest, TraceSentView, TraceStepView, TraceView,
    codes,
};
use vswitch_dataplane::capture::{Captures, LiveTraceSession, LiveTraceSpec, LiveTraced, MAX_LIVE_TRACES};
use vswitch_dataplane::datapath::{Trace, TraceOutcome};
use vswitch_dataplane::ids::PortId;
use vswitch_dataplane::tables::Tables;
use vswitch_dataplane::testing::{FrameSpec, arp_request};
use vswitch_dataplane::wire::MacAddr;

use super::api::ApiError;
use super::switch::Switch;

/// Largest frame a trace takes: a TSO super-frame is traced by one of its segments.
const MAX_TRACE_FRAME: usize = 9216;

pub(crate) fn run(switch: &Switch, req: &TraceRequest) -> Result<TraceView, ApiError> {
    let (in_port, in_port_name) = resolve_port(switch, &req.port)?;
    let dp = switch.datapath();
    let bytes = match (&req.hex, &req.packet) {
        (Some(hex), None) => decode_hex(hex)?,
        (None, Some(packet)) => build(&dp.tables(), in_port, packet)?,
        _ => return Err(ApiError::invalid("give the frame as either `hex` or `packet`")),
    };
    if bytes.len() > MAX_TRACE_FRAME {
        return Err(ApiError::invalid(format!(
            "a frame of {} bytes; at most {MAX_TRACE_FRAME}",
            bytes.len()
        )));
    }
    Ok(view(in_port, in_port_name, &bytes, dp.trace(in_port, &bytes)))
}

/// How often a live trace's ring is looked at while it is empty.
const LIVE_POLL: Duration = Duration::from_millis(20);

/// A live trace the API opened.
pub(crate) struct LiveTrace {
    session: Arc<LiveTraceSession>,
    captures: Arc<Captures>,
    names: BTreeMap<PortId, String>,
    deadline: Option<Instant>,
    /// Paths streamed so far.
    streamed: u64,
}

impl Drop for LiveTrace {
    fn drop(&mut self) {
        self.captures.end_live_trace(&self.session);
        tracing::info!(marked = self.session.marked(), streamed = self.streamed, "live trace closed");
    }
}

/// Checks `req` and opens the live trace; nothing starts if any part of it is wrong.
pub(crate) fn open_live(switch: &Switch, req: &LiveTraceRequest) -> Result<LiveTrace, ApiError> {
    let port = resolve_any_port(switch, req.port.as_deref())?;
    let filter = super::capture::parse_filter(&req.filter)?;
    if !(1..=MAX_LIVE_TRACES).contains(&req.count) {
        return Err(ApiError::invalid(format!("count {}: 1..={MAX_LIVE_TRACES}", req.count)));
    }
    let captures = switch.datapath().captures().clone();
    let session = captures.trace_live(LiveTraceSpec { port, filter, count: req.count });
    tracing::info!(port = ?req.port, filter = %req.filter, count = req.count, "live trace started");
    Ok(LiveTrace {
        session,
        captures,
        names: switch.port_names(),
        deadline: req.seconds.map(|s| Instant::now() + Duration::from_secs(s)),
        streamed: 0,
    })
}

/// The JSON-lines stream of a live trace.
pub(crate) fn live_stream(trace: LiveTrace) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    super::api::streamed(trace)
}

impl super::api::Pieces for LiveTrace {
    async fn next_piece(&mut self) -> Option<Vec<u8>> {
        let mut taken: Vec<LiveTraced> = Vec::new();
        loop {
            self.session.take(&mut taken);
            if !taken.is_empty() {
                break;
            }
            let all_seen = self.streamed >= self.session.spec().count;
            if all_seen || self.deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            tokio::time::sleep(LIVE_POLL).await;
        }
        let mut out = Vec::new();
        for t in taken {
            let name = self.names.get(&t.port).cloned().unwrap_or_default();
            let mut v = view(t.port, name, &t.frame, t.trace);
            v.received_unix_ms = Some(t.unix_ns / 1_000_000);
            serde_json::to_writer(&mut out, &v).expect("traces serialize");
            out.push(b'\n');
            self.streamed += 1;
        }
        Some(out)
    }
}

fn view(in_port: PortId, in_port_name: String, bytes: &[u8], t: Trace) -> TraceView {
    let (verdict, reason, sent) = match t.outcome {
        TraceOutcome::Sent(sent) => ("sent", None, sent),
        TraceOutcome::Dropped(r) => ("dropped", Some(r), Vec::new()),
    };
    TraceView {
        in_port: in_port.0,
        in_port_name,
        received_unix_ms: None,
        frame_hex: encode_hex(bytes),
        parsed: t.parsed.unwrap_or_default(),
        steps: t
            .steps
            .into_iter()
            .map(|s| TraceStepView { stage: s.stage.to_string(), result: s.result, notes: s.notes })
            .collect(),
        verdict: verdict.to_string(),
        drop_reason: reason.map(|r| r.name().to_string()),
        drop_description: reason.map(|r| r.description().to_string()),
        sent: sent
            .into_iter()
            .map(|s| TraceSentView {
                port: s.port.0,
                port_name: s.port_name,
                summary: s.summary,
                hex: encode_hex(&s.bytes),
            })
            .collect(),
    }
}

/// The port `name` means, if one is named; `None` stands for every port.
pub(crate) fn resolve_any_port(switch: &Switch, name: Option<&str>) -> Result<Option<PortId>, ApiError> {
    name.map(|n| resolve_port(switch, n).map(|(id, _)| id)).transpose()
}

/// The port `name` means, with the name stats show for it.
pub(crate) fn resolve_port(switch: &Switch, name: &str) -> Result<(PortId, String), ApiError> {
    let names = switch.port_names();
    let named = |id: PortId| (id, names.get(&id).cloned().unwrap_or_default());
    let name = name.trim();
    if let Ok(n) = name.parse::<u16>()
        && (names.contains_key(&PortId(n)) || switch.datapath().tables().port(PortId(n)).is_some())
    {
        return Ok(named(PortId(n)));
    }
    let ports = switch.ports();
    let (cid, ifname) = name.split_once('/').unwrap_or((name, ""));
    let found = ports
        .iter()
        .find(|p| p.pod.as_ref().is_some_and(|pod| format!("{}/{}", pod.namespace, pod.name) == name))
        .or_else(|| {
            ports.iter().find(|p| {
                !p.container_id.is_empty()
                    && (p.container_id == cid || (cid.len() >= 12 && p.container_id.starts_with(cid)))
                    && (ifname.is_empty() || p.ifname == ifname)
            })
        })
        .or_else(|| {
            ports.iter().find(|p| {
                p.host_ifname.as_deref() == Some(name) || (p.container_id.is_empty() && p.ifname == name)
            })
        });
    if let Some(p) = found {
        return Ok(named(PortId(p.id)));
    }
    let by_name =
        names.iter().find(|(_, n)| n.as_str() == name || n.split_once(' ').is_some_and(|(_, i)| i == name));
    match by_name {
        Some((id, _)) => Ok(named(*id)),
        None => Err(ApiError::new(
            404,
            codes::NOT_FOUND,
            format!(
                "no port {name:?}: give a port number, namespace/pod, container id[/ifname] or interface name"
            ),
        )),
    }
}

/// The frame `p` describes, with what it leaves out filled in as the port's pod would.
fn build(tables: &Tables, in_port: PortId, p: &TracePacket) -> Result<Vec<u8>, ApiError> {
    let port = tables.port(in_port);
    let src_mac = match &p.src_mac {
        Some(m) => parse_mac(m)?,
        None => port
            .and_then(|e| e.mac)
            .ok_or_else(|| ApiError::invalid("the port has no MAC of its own: give src_mac"))?,
    };
    let src_ip = match p.src_ip {
        Some(ip) => ip,
        None => port
            .and_then(|e| e.ipv4.first().copied())
            .ok_or_else(|| ApiError::invalid("the port has no IPv4 address of its own: give src_ip"))?,
    };
    let segment = port.map(|e| e.segment);
    if p.protocol == TraceProtocol::Arp {
        let mut frame = arp_request(src_mac, src_ip, p.dst_ip);
        if let Some(m) = &p.dst_mac {
            frame[0..6].copy_from_slice(&parse_mac(m)?.0);
        }
        return Ok(frame);
    }
    let dst_mac = match &p.dst_mac {
        Some(m) => parse_mac(m)?,
        None => next_hop_mac(tables, segment, p.dst_ip).ok_or_else(|| {
            ApiError::invalid("no owner of dst_ip and no gateway in the port's segment: give dst_mac")
        })?,
    };
    let (sport, dport) = (p.src_port.unwrap_or(40000), p.dst_port.unwrap_or(80));
    let spec = match p.protocol {
        TraceProtocol::Tcp => {
            let flags = tcp_flags(p.tcp_flags.as_deref().unwrap_or("S"))?;
            FrameSpec::tcp(src_mac, dst_mac, src_ip, p.dst_ip, sport, dport, flags)
        }
        TraceProtocol::Udp => FrameSpec::udp(src_mac, dst_mac, src_ip, p.dst_ip, sport, dport),
        TraceProtocol::Icmp => FrameSpec::icmp_echo(src_mac, dst_mac, src_ip, p.dst_ip, sport),
        TraceProtocol::Arp => unreachable!("answered above"),
    };
    Ok(spec.ttl(p.ttl.unwrap_or(64)).payload(&vec![0; usize::from(p.payload_len)]).build())
}

/// What a pod's ARP would resolve `ip` to: its owner in the segment, else the gateway.
fn next_hop_mac(
    tables: &Tables,
    segment: Option<vswitch_dataplane::ids::SegmentId>,
    ip: Ipv4Addr,
) -> Option<MacAddr> {
    let segment = segment?;
    if let Some(answer) = tables.arp_answer(segment, ip) {
        return Some(answer.mac);
    }
    tables.segment(segment)?.config.gateway.map(|g| g.mac)
}

fn tcp_flags(letters: &str) -> Result<u8, ApiError> {
    letters.chars().try_fold(0u8, |flags, c| {
        let bit = match c {
            'F' => 0x01,
            'S' => 0x02,
            'R' => 0x04,
            'P' => 0x08,
            '.' | 'A' => 0x10,
            'U' => 0x20,
            _ => return Err(ApiError::invalid(format!("tcp_flags: {c:?} is none of F S R P . U"))),
        };
        Ok(flags | bit)
    })
}

fn parse_mac(s: &str) -> Result<MacAddr, ApiError> {
    s.parse().map_err(|_| ApiError::invalid(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)")))
}

fn decode_hex(s: &str) -> Result<Vec<u8>, ApiError> {
    let digits: Vec<u8> = s.bytes().filter(|b| !matches!(b, b' ' | b':' | b'\n' | b'\t' | b'\r')).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(ApiError::invalid("hex: an odd number of digits"));
    }
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).unwrap_or("??");
            u8::from_str_radix(pair, 16)
                .map_err(|_| ApiError::invalid(format!("hex: {pair:?} is not a byte")))
        })
        .collect()
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_takes_separators_and_refuses_odd_digits() {
        assert_eq!(decode_hex("de:ad be\nef").unwrap(), vec![0xde, 0xad, 0xbe, 0xef]);
        assert!(decode_hex("abc").is_err());
        assert!(decode_hex("zz").is_err());
        assert_eq!(encode_hex(&[0, 0xff]), "00ff");
    }

    #[test]
    fn tcp_flags_read_as_tcpdump_prints_them() {
        assert_eq!(tcp_flags("S").unwrap(), 0x02);
        assert_eq!(tcp_flags("S.").unwrap(), 0x12);
        assert_eq!(tcp_flags("FP.").unwrap(), 0x19);
        assert!(tcp_flags("X").is_err());
    }
}
