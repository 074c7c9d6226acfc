//! Packet trace: `POST /v1/trace` runs one frame through the switch's stages without
//! sending it, and answers with what each stage did.

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

/// What the switch would do with the frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceView {
    pub in_port: u16,
    pub in_port_name: String,
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
