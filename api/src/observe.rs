//! Seeing what happens to packets: `POST /v1/trace` runs one frame through the switch's
//! stages without sending it and answers with what each stage did; `POST
//! /v1/trace/live` marks real frames as they arrive and streams the path each took;
//! `POST /v1/capture` streams copies of the frames a port receives, sends or drops as
//! pcapng; `POST /v1/flows` streams flows as they start and end.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A frame to trace and where it arrives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// The ingress port: its number, a pod as `namespace/name`, a container id (or its
    /// first 12 characters) with an optional `/ifname`, a name as `vswitchctl stats`
    /// shows it (`uplink eth1`), or an interface name (the host port's, a veth's).
    pub port: String,
    /// The whole frame, Ethernet header first, in hex (spaces and colons ignored).
    /// Either this or `packet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
    /// The frame described by its fields; what is left out is filled in as the port's
    /// pod would send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet: Option<TracePacket>,
}

/// A frame by its fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracePacket {
    #[serde(default)]
    pub protocol: TraceProtocol,
    /// Default: the ingress port's MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_mac: Option<String>,
    /// Default: what the pod's ARP would give — the owner of `dst_ip` in the segment,
    /// else the gateway. Broadcast for ARP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_mac: Option<String>,
    /// Default: the ingress port's first IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_ip: Option<Ipv4Addr>,
    /// For ARP, the address asked for.
    pub dst_ip: Ipv4Addr,
    /// Default 40000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    /// Default 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// TCP flags as letters, tcpdump style: `S` (default), `S.`, `.`, `P.`, `F.`, `R`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<String>,
    /// Default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u8>,
    /// Bytes of payload (zeros) after the transport header. Default 0.
    #[serde(default)]
    pub payload_len: u16,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceProtocol {
    #[default]
    Tcp,
    Udp,
    /// An echo request.
    Icmp,
    /// A request for `dst_ip`.
    Arp,
}

/// A live trace (`POST /v1/trace/live`): the next `count` frames received on the
/// port (or any port) that match the filter are marked, and the path each takes through
/// the switch is streamed as it happens — JSON lines, one [`TraceView`] each
/// (`application/x-ndjson`). The stream ends when all were seen, at `seconds`, or when
/// the client goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveTraceRequest {
    /// The ingress port, named as for a trace; none: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// As for a capture.
    #[serde(default)]
    pub filter: String,
    /// Frames to mark, 1..=1000.
    pub count: u64,
    /// Stop after this many seconds (none: when `count` frames were traced, or the
    /// client goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
}

/// What the switch did (a live trace) or would do (a trace) with the frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceView {
    pub in_port: u16,
    pub in_port_name: String,
    /// When a live-traced frame's batch was taken up by its worker, in milliseconds
    /// since the Unix epoch. (A live trace keeps each frame's first 256 bytes in
    /// `frame_hex` and `sent`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_unix_ms: Option<u64>,
    /// The frame traced, in hex.
    pub frame_hex: String,
    /// The frame as the parser read it, in one line; empty when it does not parse.
    pub parsed: String,
    pub steps: Vec<TraceStepView>,
    /// `sent` or `dropped`.
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_description: Option<String>,
    /// Where it would go: one port, every port of a flood, the underlay toward another
    /// node (the encapsulated frame).
    pub sent: Vec<TraceSentView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStepView {
    pub stage: String,
    /// `continue`, or what the stage decided (`forward to …`, `drop: reason`, …).
    pub result: String,
    /// What the stage found or rewrote.
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceSentView {
    pub port: u16,
    pub port_name: String,
    pub summary: String,
    pub hex: String,
}

/// A capture to start. The answer is a pcapng stream (`application/x-pcapng`): one
/// interface per port (named as `vswitchctl stats` names it), each frame with its
/// direction, a dropped frame with its drop reason as the packet's comment, and at the
/// end an interface statistics block whose comment says how many copies were lost to a
/// reader slower than the traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// The port, named as for a trace; none: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(default)]
    pub direction: CaptureWay,
    /// Dropped frames (with their reasons) instead of received and sent ones.
    #[serde(default)]
    pub drops: bool,
    /// With `drops`: only this reason (a name from `vswitchctl stats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    /// tcpdump-like terms joined by `and`: tcp, udp, icmp, arp, ip, host A, src A,
    /// dst A, port N.
    #[serde(default)]
    pub filter: String,
    /// Stop after this many frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
    /// Bytes kept of each frame (64..=65535; default 9216).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snaplen: Option<usize>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureWay {
    /// Frames the port received.
    Rx,
    /// Frames sent out of the port.
    Tx,
    #[default]
    Both,
}

/// What a capture's pcapng holds: frames, and copies lost (from the interface
/// statistics block the daemon ends it with: `isb_osdrop` its first option).
pub fn capture_summary(pcapng: &[u8]) -> (u64, u64) {
    let (mut frames, mut lost) = (0, 0);
    let mut at = 0;
    while let Some(header) = pcapng.get(at..at + 8) {
        let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        if len < 12 {
            break;
        }
        let Some(block) = pcapng.get(at..at + len) else { break };
        match kind {
            // An enhanced packet block.
            6 => frames += 1,
            // An interface statistics block: type, length, interface id, timestamp
            // (20 bytes), then the options, isb_osdrop (7) with 8 bytes first.
            5 => {
                if let Some(opt) = block.get(20..32)
                    && u16::from_le_bytes([opt[0], opt[1]]) == 7
                {
                    lost = u64::from_le_bytes(opt[4..12].try_into().expect("8 bytes"));
                }
            }
            _ => {}
        }
        at += len;
    }
    (frames, lost)
}

/// A flow log to follow (`POST /v1/flows`). The answer is a stream of JSON lines, one
/// [`FlowEvent`] each (`application/x-ndjson`): a flow's `start` at its first packet,
/// its `end` when it closed (FIN both ways or RST, a second later) or went idle.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowsRequest {
    /// As for a capture; a flow matches if its packets as sent by the client, or as
    /// translated to the endpoint, do.
    #[serde(default)]
    pub filter: String,
    /// Stop after this many seconds (none: until the client goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
    /// A flow without packets for this long ends (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_secs: Option<u64>,
}

/// A flow starting or ending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEvent {
    /// `start` or `end`.
    pub event: String,
    /// `tcp`, `udp`, `icmp` or the protocol number.
    pub protocol: String,
    /// Who sent the first packet, `address:port`.
    pub client: String,
    /// What the client addressed (a Service's VIP or a pod), `address:port`.
    pub server: String,
    /// The endpoint a Service flow was translated to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The port the client's packets came in on, named as in stats.
    pub client_port: String,
    /// The client's pod, `namespace/name`, when the attach named it (CNI_ARGS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_pod: Option<String>,
    /// The pod that served the flow — the endpoint of a Service flow, else the
    /// server — `namespace/name`, when it is attached here and its attach named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_pod: Option<String>,
    /// `forwarded`, or `dropped: reason`.
    pub verdict: String,
    pub start_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_unix_ms: Option<u64>,
    /// Why it ended: `closed` (FIN both ways), `reset`, `idle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// Packets and bytes from the client, and back (so far, for a start).
    pub packets_out: u64,
    pub packets_back: u64,
    pub bytes_out: u64,
    pub bytes_back: u64,
}
