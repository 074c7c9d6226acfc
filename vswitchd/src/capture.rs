//! `POST /v1/capture`: opens a capture in the data plane
//! (`vswitch_dataplane::capture`) and streams what it takes as pcapng.
//!
//! The stream is pulled by the client: each piece is made when the connection asks for
//! more, from at most [`CHUNK_FRAMES`] copies. A client that stops reading stops the
//! draining, the session's bounded ring fills, and the workers lose copies (counted),
//! never frames and never daemon memory. The session closes when the capture has its
//! count, its time is up, or the client goes (the stream is dropped).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures::Stream;
use vswitch_api::{CaptureRequest, CaptureWay};
use vswitch_dataplane::capture::{
    CaptureDirection, CaptureSession, CaptureSpec, Captured, Captures, DEFAULT_SNAPLEN, MAX_SNAPLEN,
    PacketFilter, unix_ns,
};
use vswitch_dataplane::drop_reason::DropReason;
use vswitch_dataplane::ids::PortId;

use super::api::ApiError;
use super::switch::Switch;

/// Copies one piece of the stream carries at most.
const CHUNK_FRAMES: usize = 256;
/// How often the ring is looked at while it is empty.
const POLL: Duration = Duration::from_millis(20);

/// A capture the API opened: its session and what the stream needs to name ports.
pub(crate) struct Opened {
    session: Arc<CaptureSession>,
    captures: Arc<Captures>,
    names: BTreeMap<PortId, String>,
    deadline: Option<Instant>,
}

/// Checks `req` and opens the capture; nothing starts if any part of it is wrong.
pub(crate) fn open(switch: &Switch, req: &CaptureRequest) -> Result<Opened, ApiError> {
    let port = super::trace::resolve_any_port(switch, req.port.as_deref())?;
    let filter = parse_filter(&req.filter)?;
    let drops = match (&req.drop_reason, req.drops) {
        (None, false) => None,
        (None, true) => Some(None),
        (Some(name), _) => match DropReason::ALL.iter().find(|r| r.name() == name) {
            Some(r) => Some(Some(*r)),
            None => {
                return Err(ApiError::invalid(format!(
                    "drop_reason: no reason {name:?} (see `vswitchctl stats`)"
                )));
            }
        },
    };
    let snaplen = req.snaplen.unwrap_or(DEFAULT_SNAPLEN);
    if !(64..=MAX_SNAPLEN).contains(&snaplen) {
        return Err(ApiError::invalid(format!("snaplen {snaplen}: 64..={MAX_SNAPLEN}")));
    }
    let spec = CaptureSpec {
        port,
        received: req.direction != CaptureWay::Tx,
        sent: req.direction != CaptureWay::Rx,
        drops,
        filter,
        snaplen,
        count: req.count,
    };
    let captures = switch.datapath().captures().clone();
    let session = captures.start(spec);
    tracing::info!(port = ?req.port, filter = %req.filter, drops = req.drops, "capture started");
    Ok(Opened {
        session,
        captures,
        names: switch.port_names(),
        deadline: req.seconds.map(|s| Instant::now() + Duration::from_secs(s)),
    })
}

/// A capture's or a flow log's filter, or why it does not parse.
pub(crate) fn parse_filter(text: &str) -> Result<PacketFilter, ApiError> {
    text.parse().map_err(|e| ApiError::invalid(format!("filter: {e}")))
}

/// The pcapng stream of an opened capture.
pub(crate) fn stream(
    opened: Opened,
    version: &'static str,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let state = Streaming {
        opened,
        interfaces: HashMap::new(),
        started: false,
        finished: false,
        taken: Vec::new(),
        version,
    };
    super::api::streamed(state)
}

struct Streaming {
    opened: Opened,
    /// Port → pcapng interface number, in the order their description blocks went out.
    interfaces: HashMap<PortId, u32>,
    started: bool,
    finished: bool,
    taken: Vec<Captured>,
    version: &'static str,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.opened.captures.stop(&self.opened.session);
        tracing::info!(
            taken = self.opened.session.taken(),
            lost = self.opened.session.lost(),
            "capture ended"
        );
    }
}

impl super::api::Pieces for Streaming {
    /// The next bytes of the stream; `None` once it ended.
    async fn next_piece(&mut self) -> Option<Vec<u8>> {
        if self.finished {
            return None;
        }
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            section_header(&mut out, self.version);
            return Some(out);
        }
        loop {
            let session = self.opened.session.clone();
            let over = session.is_done() || self.opened.deadline.is_some_and(|d| Instant::now() >= d);
            let mut taken = std::mem::take(&mut self.taken);
            taken.clear();
            session.take_up_to(&mut taken, CHUNK_FRAMES);
            for c in &taken {
                let interface = self.interface(&mut out, c.port);
                packet(&mut out, interface, c);
            }
            let any = !taken.is_empty();
            self.taken = taken;
            if any {
                return Some(out);
            }
            if over {
                self.finished = true;
                let interface = self.interface(&mut out, session.spec().port.unwrap_or(PortId(0)));
                statistics(&mut out, interface, session.taken(), session.lost());
                return Some(out);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Streaming {
    /// The interface number of `port`, its description block written first if new.
    fn interface(&mut self, out: &mut Vec<u8>, port: PortId) -> u32 {
        if let Some(i) = self.interfaces.get(&port) {
            return *i;
        }
        let i = self.interfaces.len() as u32;
        let name = self.opened.names.get(&port).cloned().unwrap_or_else(|| format!("port {}", port.0));
        interface_description(out, &name, port, self.opened.session.spec().snaplen);
        self.interfaces.insert(port, i);
        i
    }
}

// ---- pcapng (draft-ietf-opsawg-pcapng), little-endian

const SECTION_HEADER: u32 = 0x0A0D_0D0A;
const INTERFACE_DESCRIPTION: u32 = 1;
const INTERFACE_STATISTICS: u32 = 5;
const ENHANCED_PACKET: u32 = 6;
const LINKTYPE_ETHERNET: u16 = 1;
const OPT_COMMENT: u16 = 1;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_DESCRIPTION: u16 = 3;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;
const ISB_OSDROP: u16 = 7;
const ISB_USRDELIV: u16 = 8;
/// epb_flags direction bits: inbound, outbound.
const INBOUND: u32 = 0b01;
const OUTBOUND: u32 = 0b10;

fn block(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
    let len = (12 + body.len()) as u32;
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&len.to_le_bytes());
}

fn padded(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn option(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    padded(out, value);
}

fn end_of_options(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0; 4]);
}

fn section_header(out: &mut Vec<u8>, version: &str) {
    let mut body = Vec::new();
    body.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&u64::MAX.to_le_bytes()); // section length not known
    option(&mut body, SHB_USERAPPL, format!("vswitchd {version}").as_bytes());
    end_of_options(&mut body);
    block(out, SECTION_HEADER, &body);
}

fn interface_description(out: &mut Vec<u8>, name: &str, port: PortId, snaplen: usize) {
    let mut body = Vec::new();
    body.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&(snaplen as u32).to_le_bytes());
    option(&mut body, IF_NAME, name.as_bytes());
    option(&mut body, IF_DESCRIPTION, format!("vswitch port {}", port.0).as_bytes());
    option(&mut body, IF_TSRESOL, &[9]); // nanoseconds
    end_of_options(&mut body);
    block(out, INTERFACE_DESCRIPTION, &body);
}

fn timestamp(body: &mut Vec<u8>, unix_ns: u64) {
    body.extend_from_slice(&((unix_ns >> 32) as u32).to_le_bytes());
    body.extend_from_slice(&(unix_ns as u32).to_le_bytes());
}

fn packet(out: &mut Vec<u8>, interface: u32, c: &Captured) {
    let mut body = Vec::with_capacity(c.data.len() + 64);
    body.extend_from_slice(&interface.to_le_bytes());
    timestamp(&mut body, c.unix_ns);
    body.extend_from_slice(&(c.data.len() as u32).to_le_bytes());
    body.extend_from_slice(&c.wire_len.to_le_bytes());
    padded(&mut body, &c.data);
    let (flags, comment) = match c.direction {
        CaptureDirection::Received => (INBOUND, None),
        CaptureDirection::Sent => (OUTBOUND, None),
        CaptureDirection::Dropped(r) => {
            (INBOUND, Some(format!("dropped: {} ({})", r.name(), r.description())))
        }
    };
    option(&mut body, EPB_FLAGS, &flags.to_le_bytes());
    if let Some(comment) = comment {
        option(&mut body, OPT_COMMENT, comment.as_bytes());
    }
    end_of_options(&mut body);
    block(out, ENHANCED_PACKET, &body);
}

fn statistics(out: &mut Vec<u8>, interface: u32, taken: u64, lost: u64) {
    let now = unix_ns();
    let mut body = Vec::new();
    body.extend_from_slice(&interface.to_le_bytes());
    timestamp(&mut body, now);
    option(&mut body, ISB_OSDROP, &lost.to_le_bytes());
    option(&mut body, ISB_USRDELIV, &taken.saturating_sub(lost).to_le_bytes());
    option(&mut body, OPT_COMMENT, format!("vswitchd: {taken} frames taken, {lost} copies lost").as_bytes());
    end_of_options(&mut body);
    block(out, INTERFACE_STATISTICS, &body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_whole_words_and_summarize_reads_them_back() {
        let mut out = Vec::new();
        section_header(&mut out, "test");
        interface_description(&mut out, "pod/eth0", PortId(3), 9216);
        let c = Captured {
            port: PortId(3),
            direction: CaptureDirection::Dropped(DropReason::SpoofedSourceIp),
            unix_ns: 1_700_000_000_123_456_789,
            wire_len: 61,
            data: vec![0xab; 61],
        };
        packet(&mut out, 0, &c);
        packet(&mut out, 0, &Captured { direction: CaptureDirection::Sent, ..c });
        statistics(&mut out, 0, 2, 5);
        assert_eq!(out.len() % 4, 0);
        assert_eq!(vswitch_api::capture_summary(&out), (2, 5));
    }
}
