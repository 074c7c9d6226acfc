//! Capture: copies of the frames a port receives, sends or drops, for `vswitchctl
//! capture`, sightings of packets for the flow log (`vswitchctl flows`), and the
//! paths of live-traced frames (`vswitchctl trace --live`), taken inside the data path
//! where it sees them.
//!
//! The control plane starts a [`CaptureSession`] with what it wants ([`CaptureSpec`]);
//! workers copy matching frames into the session's bounded ring and the control plane
//! drains it. A worker never waits: a full ring loses the copy (counted in
//! [`CaptureSession::lost`]), never the frame. With no session open the data path
//! pays one load and one predictable branch per received batch and per transmitted
//! batch ([`Captures::armed`]); while one is, received batches take the pipeline's
//! watched path (its stage order with a recorder as observer).
//!
//! Where frames are seen: received — as they arrive, before any stage rewrites them
//! (frames that then fail to parse included); sent — as they leave through the
//! worker that transmits on the port, after every rewrite, encapsulation and
//! segmentation; dropped — at the drop, with the reason, on the ingress port.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;

use crate::drop_reason::DropReason;
use crate::frame::Frame;
use crate::ids::PortId;
use crate::wire::parse::IPPROTO_ICMP;
use crate::wire::{self, L4, Net};

/// Copies a session holds at most before the reader takes them.
pub const RING_FRAMES: usize = 4096;
/// Bytes of each frame kept unless the session asks otherwise (a whole jumbo frame).
pub const DEFAULT_SNAPLEN: usize = 9216;
/// The most a session may ask to keep of a frame (a whole super-frame).
pub const MAX_SNAPLEN: usize = 65535;

/// Which way a captured frame went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureDirection {
    Received,
    Sent,
    Dropped(DropReason),
}

/// What a session takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureSpec {
    /// One port, or every port.
    pub port: Option<PortId>,
    pub received: bool,
    pub sent: bool,
    /// Dropped frames instead of received and sent ones: `Some(None)` every reason,
    /// `Some(Some(r))` only `r`.
    pub drops: Option<Option<DropReason>>,
    pub filter: PacketFilter,
    /// Bytes kept of each frame.
    pub snaplen: usize,
    /// Stop taking copies after this many.
    pub count: Option<u64>,
}

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    pub port: PortId,
    pub direction: CaptureDirection,
    /// Nanoseconds since the Unix epoch.
    pub unix_ns: u64,
    /// The frame's length on the wire; `data` may be shorter (the snap length).
    pub wire_len: u32,
    pub data: Vec<u8>,
}

/// An open capture.
pub struct CaptureSession {
    spec: CaptureSpec,
    ring: ArrayQueue<Captured>,
    taken: AtomicU64,
    lost: AtomicU64,
}

impl CaptureSession {
    pub fn spec(&self) -> &CaptureSpec {
        &self.spec
    }

    /// The copies waiting, oldest first.
    pub fn take(&self, into: &mut Vec<Captured>) {
        self.take_up_to(into, usize::MAX);
    }

    /// At most `max` of the copies waiting, oldest first.
    pub fn take_up_to(&self, into: &mut Vec<Captured>, max: usize) {
        drain(&self.ring, into, max);
    }

    /// Copies taken so far (up to the spec's count).
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed).min(self.spec.count.unwrap_or(u64::MAX))
    }

    /// Copies lost to a full ring (the reader was slower than the traffic).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Whether the session took all it asked for.
    pub fn is_done(&self) -> bool {
        self.spec.count.is_some_and(|n| self.taken.load(Ordering::Relaxed) >= n)
    }

    fn wants(&self, port: PortId, direction: CaptureDirection) -> bool {
        if self.spec.port.is_some_and(|p| p != port) {
            return false;
        }
        match (direction, self.spec.drops) {
            (CaptureDirection::Dropped(reason), Some(wanted)) => wanted.is_none_or(|w| w == reason),
            (CaptureDirection::Received, None) => self.spec.received,
            (CaptureDirection::Sent, None) => self.spec.sent,
            _ => false,
        }
    }

    fn offer(&self, port: PortId, direction: CaptureDirection, bytes: &[u8]) {
        if !self.wants(port, direction) || !self.spec.filter.matches(bytes) {
            return;
        }
        // Checked first so a finished session stops counting; the add decides between
        // workers racing for the last copy.
        if self.is_done() {
            return;
        }
        let before = self.taken.fetch_add(1, Ordering::Relaxed);
        if self.spec.count.is_some_and(|n| before >= n) {
            return;
        }
        let unix_ns = unix_ns();
        let kept = bytes.len().min(self.spec.snaplen);
        let copy =
            Captured { port, direction, unix_ns, wire_len: bytes.len() as u32, data: bytes[..kept].to_vec() };
        if self.ring.push(copy).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What happened to a traced frame, stage by stage (`pipeline::trace` records it).
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

/// Where the frame ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceOutcome {
    /// Sent: one frame for unicast, one per port for a flood, the encapsulated frame
    /// for another node.
    Sent(Vec<TraceSent>),
    Dropped(DropReason),
}

/// A frame the trace sent (or would have).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceSent {
    pub port: PortId,
    /// The port's name in the tables.
    pub port_name: String,
    /// The frame as it left, in one line.
    pub summary: String,
    pub bytes: Vec<u8>,
}

/// What a live trace marks: the next `count` frames received on `port` (or any)
/// that match `filter`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveTraceSpec {
    pub port: Option<PortId>,
    pub filter: PacketFilter,
    pub count: u64,
}

/// A real frame's path, recorded as it went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveTraced {
    pub port: PortId,
    pub unix_ns: u64,
    /// The frame as received.
    pub frame: Vec<u8>,
    pub trace: Trace,
}

/// An open live trace: frames are marked as they arrive (each session at most its
/// count), and their paths wait in a ring as long as the count for the reader.
pub struct LiveTraceSession {
    spec: LiveTraceSpec,
    ring: ArrayQueue<LiveTraced>,
    marked: AtomicU64,
}

/// The most frames one live trace may mark: each is recorded in words on the worker.
pub const MAX_LIVE_TRACES: u64 = 1000;

impl LiveTraceSession {
    pub fn spec(&self) -> &LiveTraceSpec {
        &self.spec
    }

    /// The paths recorded so far, oldest first.
    pub fn take(&self, into: &mut Vec<LiveTraced>) {
        drain(&self.ring, into, usize::MAX);
    }

    /// Frames marked so far.
    pub fn marked(&self) -> u64 {
        self.marked.load(Ordering::Relaxed).min(self.spec.count)
    }

    /// Whether every frame asked for was marked.
    pub fn is_done(&self) -> bool {
        self.marked() >= self.spec.count
    }

    /// Marks `bytes` received on `port` if it matches and the count is not reached.
    fn claims(&self, port: PortId, bytes: &[u8]) -> bool {
        if self.spec.port.is_some_and(|p| p != port) || self.is_done() || !self.spec.filter.matches(bytes) {
            return false;
        }
        self.marked.fetch_add(1, Ordering::Relaxed) < self.spec.count
    }

    /// Keeps a marked frame's path. The ring holds the whole count: nothing is lost.
    pub(crate) fn record(&self, traced: LiveTraced) {
        let _ = self.ring.push(traced);
    }
}

/// The open sessions, as workers see them.
#[derive(Default)]
pub struct Captures {
    armed: AtomicBool,
    sessions: ArcSwap<Vec<Arc<CaptureSession>>>,
    flows: ArcSwap<Vec<Arc<FlowWatch>>>,
    live: ArcSwap<Vec<Arc<LiveTraceSession>>>,
    /// Serialises starts and stops (control plane only).
    changing: std::sync::Mutex<()>,
}

/// Sightings a flow watch holds at most before the reader takes them.
pub const FLOW_RING: usize = 16384;

/// One IPv4 packet as the flow log sees it: where it came in, its addresses and ports
/// as received (before any Service translation), its size; or its drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sighting {
    pub port: PortId,
    pub unix_ns: u64,
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub src_port: u16,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
    pub len: u32,
    pub tcp_flags: u8,
    /// The packet was dropped for this reason (it was also sighted as received).
    pub dropped: Option<DropReason>,
}

impl Sighting {
    /// The sighting of `bytes` received on `port`, if it is IPv4.
    fn of(port: PortId, bytes: &[u8], unix_ns: u64, dropped: Option<DropReason>) -> Option<Sighting> {
        let Ok(meta) = wire::parse::parse(bytes) else { return None };
        let Net::Ipv4(ip) = meta.net else { return None };
        let (src_port, dst_port, tcp_flags) = match ip.l4 {
            L4::Tcp { src_port, dst_port, flags } => (src_port, dst_port, flags),
            L4::Udp { src_port, dst_port } => (src_port, dst_port, 0),
            _ => (0, 0, 0),
        };
        Some(Sighting {
            port,
            unix_ns,
            protocol: ip.protocol,
            src: ip.src,
            src_port,
            dst: ip.dst,
            dst_port,
            len: bytes.len() as u32,
            tcp_flags,
            dropped,
        })
    }
}

/// An open flow log: sightings of every IPv4 packet received, and of every drop, for
/// the control plane to make flows of.
pub struct FlowWatch {
    ring: ArrayQueue<Sighting>,
    lost: AtomicU64,
}

impl FlowWatch {
    /// At most `max` of the sightings waiting, oldest first.
    pub fn take_up_to(&self, into: &mut Vec<Sighting>, max: usize) {
        drain(&self.ring, into, max);
    }

    /// Sightings lost to a full ring.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    fn push(&self, s: Sighting) {
        if self.ring.push(s).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Nanoseconds since the Unix epoch (the time captures and sightings carry).
pub fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Moves at most `max` items from `ring` into `into`, oldest first.
fn drain<T>(ring: &ArrayQueue<T>, into: &mut Vec<T>, max: usize) {
    for _ in 0..max {
        let Some(item) = ring.pop() else { break };
        into.push(item);
    }
}

/// `list` with `item` added (control plane only; workers see the new list next batch).
fn with_added<T>(list: &ArcSwap<Vec<Arc<T>>>, item: Arc<T>) {
    let mut now = Vec::clone(&list.load());
    now.push(item);
    list.store(Arc::new(now));
}

/// `list` without `item`.
fn with_removed<T>(list: &ArcSwap<Vec<Arc<T>>>, item: &Arc<T>) {
    let now: Vec<_> = list.load().iter().filter(|i| !Arc::ptr_eq(i, item)).cloned().collect();
    list.store(Arc::new(now));
}

impl Captures {
    /// Whether any session is open: the data path's one test per batch.
    #[inline(always)]
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    pub fn start(&self, mut spec: CaptureSpec) -> Arc<CaptureSession> {
        spec.snaplen = spec.snaplen.clamp(64, MAX_SNAPLEN);
        let session = Arc::new(CaptureSession {
            spec,
            ring: ArrayQueue::new(RING_FRAMES),
            taken: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        });
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        with_added(&self.sessions, session.clone());
        self.rearm();
        session
    }

    pub fn stop(&self, session: &Arc<CaptureSession>) {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        with_removed(&self.sessions, session);
        self.rearm();
    }

    /// Opens a flow log.
    pub fn watch_flows(&self) -> Arc<FlowWatch> {
        let watch = Arc::new(FlowWatch { ring: ArrayQueue::new(FLOW_RING), lost: AtomicU64::new(0) });
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        with_added(&self.flows, watch.clone());
        self.rearm();
        watch
    }

    pub fn unwatch_flows(&self, watch: &Arc<FlowWatch>) {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        with_removed(&self.flows, watch);
        self.rearm();
    }

    /// Opens a live trace (its count capped at [`MAX_LIVE_TRACES`]).
    pub fn trace_live(&self, mut spec: LiveTraceSpec) -> Arc<LiveTraceSession> {
        spec.count = spec.count.clamp(1, MAX_LIVE_TRACES);
        let session = Arc::new(LiveTraceSession {
            ring: ArrayQueue::new(spec.count as usize),
            spec,
            marked: AtomicU64::new(0),
        });
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        with_added(&self.live, session.clone());
        self.rearm();
        session
    }

    pub fn end_live_trace(&self, session: &Arc<LiveTraceSession>) {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        with_removed(&self.live, session);
        self.rearm();
    }

    /// Live traces open now.
    pub fn live_traces(&self) -> usize {
        self.live.load().len()
    }

    /// Which of `frames`, received on `port`, the live traces mark now: each frame's
    /// index (ascending) with every session that wants it; empty (no allocation) when
    /// none does.
    pub(crate) fn live_marks(&self, port: PortId, frames: &[Frame]) -> Vec<(usize, Arc<LiveTraceSession>)> {
        let sessions = self.live.load();
        let mut marks = Vec::new();
        if sessions.is_empty() {
            return marks;
        }
        for (i, f) in frames.iter().enumerate() {
            for s in sessions.iter().filter(|s| s.claims(port, f.data())) {
                marks.push((i, s.clone()));
            }
        }
        marks
    }

    /// Flow logs open now.
    pub fn flow_watches(&self) -> usize {
        self.flows.load().len()
    }

    fn rearm(&self) {
        let any =
            !self.sessions.load().is_empty() || !self.flows.load().is_empty() || !self.live.load().is_empty();
        self.armed.store(any, Ordering::Relaxed);
    }

    /// Open sessions now.
    pub fn len(&self) -> usize {
        self.sessions.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offers frames to every open session (a worker calls this only when armed).
    pub(crate) fn offer(&self, port: PortId, direction: CaptureDirection, frames: &[Frame]) {
        let sessions = self.sessions.load();
        for s in sessions.iter() {
            for f in frames {
                s.offer(port, direction, f.data());
            }
        }
        let dropped = match direction {
            CaptureDirection::Sent => return,
            CaptureDirection::Received => None,
            CaptureDirection::Dropped(r) => Some(r),
        };
        let watches = self.flows.load();
        if watches.is_empty() {
            return;
        }
        let now = unix_ns();
        for f in frames {
            let Some(sighting) = Sighting::of(port, f.data(), now, dropped) else { continue };
            for w in watches.iter() {
                w.push(sighting);
            }
        }
    }

    /// [`offer`](Self::offer) for one frame.
    pub(crate) fn offer_one(&self, port: PortId, direction: CaptureDirection, frame: &Frame) {
        self.offer(port, direction, std::slice::from_ref(frame));
    }
}

/// A tcpdump-like filter: terms joined by `and`, each of `tcp`, `udp`, `icmp`, `arp`,
/// `ip`, `host ADDR`, `src ADDR`, `dst ADDR`, `port N`. Empty: every frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PacketFilter {
    terms: Vec<Term>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Term {
    Tcp,
    Udp,
    Icmp,
    Arp,
    Ip,
    Host(Ipv4Addr),
    Src(Ipv4Addr),
    Dst(Ipv4Addr),
    Port(u16),
}

impl std::str::FromStr for PacketFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<PacketFilter, String> {
        let mut words = s.split_whitespace().peekable();
        let mut terms = Vec::new();
        while let Some(w) = words.next() {
            let mut value = |what: &str| words.next().ok_or_else(|| format!("`{w}` wants {what} after it"));
            let addr = |v: &str| v.parse::<Ipv4Addr>().map_err(|_| format!("`{v}` is not an IPv4 address"));
            let term = match w {
                "tcp" => Term::Tcp,
                "udp" => Term::Udp,
                "icmp" => Term::Icmp,
                "arp" => Term::Arp,
                "ip" => Term::Ip,
                "host" => Term::Host(addr(value("an address")?)?),
                "src" => Term::Src(addr(value("an address")?)?),
                "dst" => Term::Dst(addr(value("an address")?)?),
                "port" => {
                    let v = value("a port number")?;
                    Term::Port(v.parse().map_err(|_| format!("`{v}` is not a port number"))?)
                }
                other => {
                    return Err(format!(
                        "`{other}`: expected tcp, udp, icmp, arp, ip, host, src, dst or port"
                    ));
                }
            };
            terms.push(term);
            match words.next() {
                None => break,
                Some("and") if words.peek().is_some() => {}
                Some(other) => {
                    return Err(format!("`{other}`: terms are joined by `and`, and it ends the filter"));
                }
            }
        }
        Ok(PacketFilter { terms })
    }
}

impl PacketFilter {
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether the frame matches every term (a frame that does not parse matches only
    /// the empty filter).
    pub fn matches(&self, bytes: &[u8]) -> bool {
        if self.terms.is_empty() {
            return true;
        }
        let Ok(meta) = wire::parse::parse(bytes) else { return false };
        let (src, dst, l4) = match meta.net {
            Net::Ipv4(ip) => (Some(ip.src), Some(ip.dst), ip.l4),
            Net::Arp(a) => (Some(a.sender_ip), Some(a.target_ip), L4::Opaque),
            _ => (None, None, L4::Opaque),
        };
        let ports = match l4 {
            L4::Tcp { src_port, dst_port, .. } | L4::Udp { src_port, dst_port } => Some((src_port, dst_port)),
            _ => None,
        };
        let protocol = match l4 {
            L4::Tcp { .. } => Some(wire::parse::IPPROTO_TCP),
            L4::Udp { .. } => Some(wire::parse::IPPROTO_UDP),
            L4::Icmpv4 { .. } => Some(IPPROTO_ICMP),
            _ => None,
        };
        let packet = Fields {
            arp: matches!(meta.net, Net::Arp(_)),
            ip: matches!(meta.net, Net::Ipv4(_)),
            protocol,
            src,
            dst,
            ports,
        };
        self.matches_fields(&packet)
    }

    /// Whether an IPv4 flow with these addresses and ports (zero for ICMP) matches.
    pub fn matches_flow(
        &self,
        protocol: u8,
        src: Ipv4Addr,
        src_port: u16,
        dst: Ipv4Addr,
        dst_port: u16,
    ) -> bool {
        let ported = protocol == wire::parse::IPPROTO_TCP || protocol == wire::parse::IPPROTO_UDP;
        self.matches_fields(&Fields {
            arp: false,
            ip: true,
            protocol: Some(protocol),
            src: Some(src),
            dst: Some(dst),
            ports: ported.then_some((src_port, dst_port)),
        })
    }

    fn matches_fields(&self, f: &Fields) -> bool {
        self.terms.iter().all(|t| match *t {
            Term::Tcp => f.protocol == Some(wire::parse::IPPROTO_TCP),
            Term::Udp => f.protocol == Some(wire::parse::IPPROTO_UDP),
            Term::Icmp => f.protocol == Some(IPPROTO_ICMP),
            Term::Arp => f.arp,
            Term::Ip => f.ip,
            Term::Host(a) => f.src == Some(a) || f.dst == Some(a),
            Term::Src(a) => f.src == Some(a),
            Term::Dst(a) => f.dst == Some(a),
            Term::Port(p) => f.ports.is_some_and(|(s, d)| s == p || d == p),
        })
    }
}

/// What a filter looks at.
struct Fields {
    arp: bool,
    ip: bool,
    protocol: Option<u8>,
    src: Option<Ipv4Addr>,
    dst: Option<Ipv4Addr>,
    ports: Option<(u16, u16)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FramePool;
    use crate::testing::{FrameSpec, arp_request, mac};

    fn spec(filter: &str) -> CaptureSpec {
        CaptureSpec {
            port: Some(PortId(1)),
            received: true,
            sent: false,
            drops: None,
            filter: filter.parse().unwrap(),
            snaplen: DEFAULT_SNAPLEN,
            count: None,
        }
    }

    fn udp(src: [u8; 4], dport: u16) -> Vec<u8> {
        FrameSpec::udp(mac(1), mac(2), Ipv4Addr::from(src), Ipv4Addr::new(10, 0, 0, 9), 1000, dport)
            .payload(&[7; 100])
            .build()
    }

    #[test]
    fn filters_read_like_tcpdump_and_refuse_what_they_do_not_know() {
        let f: PacketFilter = "udp and host 10.0.0.1 and port 53".parse().unwrap();
        assert!(f.matches(&udp([10, 0, 0, 1], 53)));
        assert!(!f.matches(&udp([10, 0, 0, 2], 53)));
        assert!(!f.matches(&udp([10, 0, 0, 1], 54)));
        assert!(!f.matches(&[0u8; 5]), "a frame that does not parse matches no term");
        assert!(PacketFilter::default().matches(&[0u8; 5]));
        let arp: PacketFilter = "arp and dst 10.0.0.9".parse().unwrap();
        assert!(arp.matches(&arp_request(mac(1), Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 9))));
        for bad in ["tcp or udp", "host", "host 10.0.0", "port http", "tcp and", "bogus"] {
            assert!(bad.parse::<PacketFilter>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_session_takes_what_it_asked_for_and_loses_copies_not_frames_when_full() {
        let captures = Captures::default();
        assert!(!captures.armed());
        let s = captures.start(CaptureSpec { count: Some(3), ..spec("udp") });
        assert!(captures.armed());
        let mut pool = FramePool::standalone(2048);
        let frames: Vec<Frame> = (0..5).map(|_| pool.copy_of(&udp([10, 0, 0, 1], 53)).unwrap()).collect();
        captures.offer(PortId(2), CaptureDirection::Received, &frames);
        captures.offer(PortId(1), CaptureDirection::Sent, &frames);
        assert_eq!(s.taken(), 0, "another port, another direction");
        captures.offer(PortId(1), CaptureDirection::Received, &frames);
        let mut got = Vec::new();
        s.take(&mut got);
        assert_eq!((got.len(), s.taken(), s.is_done()), (3, 3, true));
        captures.stop(&s);
        assert!(!captures.armed());

        let s = captures.start(CaptureSpec { snaplen: 64, ..spec("") });
        for _ in 0..RING_FRAMES / frames.len() + 1 {
            captures.offer(PortId(1), CaptureDirection::Received, &frames);
        }
        assert!(s.lost() > 0);
        let mut got = Vec::new();
        s.take(&mut got);
        assert_eq!(got.len(), RING_FRAMES);
        assert!(got.iter().all(|c| c.data.len() == 64 && c.wire_len as usize == frames[0].len()));
    }

    #[test]
    fn flow_watches_see_every_ipv4_packet_received_and_every_drop() {
        let captures = Captures::default();
        let watch = captures.watch_flows();
        assert!(captures.armed());
        let mut pool = FramePool::standalone(2048);
        let f = pool.copy_of(&udp([10, 0, 0, 1], 53)).unwrap();
        let arp = pool
            .copy_of(&arp_request(mac(1), Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 9)))
            .unwrap();
        captures.offer(PortId(4), CaptureDirection::Received, &[f, arp]);
        let f = pool.copy_of(&udp([10, 0, 0, 1], 53)).unwrap();
        captures.offer_one(PortId(4), CaptureDirection::Dropped(DropReason::SpoofedSourceIp), &f);
        captures.offer_one(PortId(4), CaptureDirection::Sent, &f);
        let mut seen = Vec::new();
        watch.take_up_to(&mut seen, 10);
        assert_eq!(seen.len(), 2, "the UDP packet and its drop; not ARP, not what is sent");
        assert_eq!((seen[0].src, seen[0].dst_port, seen[0].dropped), (Ipv4Addr::new(10, 0, 0, 1), 53, None));
        assert_eq!(seen[1].dropped, Some(DropReason::SpoofedSourceIp));
        captures.unwatch_flows(&watch);
        assert!(!captures.armed());
        let f: PacketFilter = "udp and port 53 and host 10.0.0.9".parse().unwrap();
        assert!(f.matches_flow(17, Ipv4Addr::new(10, 0, 0, 1), 999, Ipv4Addr::new(10, 0, 0, 9), 53));
        assert!(!f.matches_flow(6, Ipv4Addr::new(10, 0, 0, 1), 999, Ipv4Addr::new(10, 0, 0, 9), 53));
    }

    #[test]
    fn drop_sessions_take_drops_of_their_reason_only() {
        let captures = Captures::default();
        let s = captures.start(CaptureSpec { drops: Some(Some(DropReason::SpoofedSourceIp)), ..spec("") });
        let mut pool = FramePool::standalone(2048);
        let f = pool.copy_of(&udp([10, 0, 0, 1], 53)).unwrap();
        captures.offer_one(PortId(1), CaptureDirection::Received, &f);
        captures.offer_one(PortId(1), CaptureDirection::Dropped(DropReason::SpoofedSourceMac), &f);
        captures.offer_one(PortId(1), CaptureDirection::Dropped(DropReason::SpoofedSourceIp), &f);
        let mut got = Vec::new();
        s.take(&mut got);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].direction, CaptureDirection::Dropped(DropReason::SpoofedSourceIp));
    }
}
