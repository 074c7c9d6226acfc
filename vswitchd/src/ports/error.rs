//! Why an attach, a detach or a port's start failed, and the API code of each.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use vswitch_dataplane::datapath::DatapathError;
use vswitch_dataplane::ids::PortId;
use vswitch_dataplane::queue::PortError;
use vswitch_dataplane::tables::TablesError;
use vswitch_dataplane::tables::overlay::OverlayError;
use vswitch_dataplane::wire::{MacAddr, ParseMacError};
use vswitch_sys::SysError;
use vswitch_sys::netns::NetnsError;

use crate::state::StateError;

/// What is wrong with an attach request itself (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// From `vswitch_api::validate_container_id`.
    #[error("{0}")]
    ContainerId(String),
    /// From `vswitch_api::validate_ifname`.
    #[error("{0}")]
    Ifname(String),
    #[error(transparent)]
    Mac(#[from] ParseMacError),
    #[error("mac {0} is not a unicast address")]
    MacNotUnicast(MacAddr),
    #[error("ips is empty: a pod port needs at least one address")]
    NoAddress,
    #[error("{0} is listed twice")]
    ListedTwice(IpAddr),
    #[error("{0} is not a unicast address")]
    NotUnicast(Ipv6Addr),
    #[error("{ip} is not a pod address of this node's pod CIDR {cidr}")]
    OutsidePodCidr { ip: Ipv4Addr, cidr: Ipv4Net },
    #[error("mtu {0} is outside 576..=9000")]
    Mtu(u16),
    #[error("mtu {mtu} is too large for an AF_XDP port (at most {max})")]
    AfxdpMtu { mtu: u16, max: usize },
}

/// Why the uplink could not start.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("uplink interface {0} does not exist")]
    Missing(String),
    #[error("uplink {0} has no MAC")]
    NoMac(String),
    #[error(
        "uplink {0} has no IPv4 address and services.node_ip is not set: which address do NodePorts serve?"
    )]
    NoAddress(String),
}

/// Why a port operation failed; [`AttachError::code`] gives its API error code.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("{container_id}/{ifname} is already attached with different parameters; detach it first")]
    AlreadyAttached { container_id: String, ifname: String },
    #[error("{0} is the gateway address")]
    GatewayIp(Ipv4Addr),
    #[error("mac {0} is the gateway's")]
    GatewayMac(MacAddr),
    #[error("{} already has an interface {ifname}", netns.display())]
    InterfaceExists { netns: PathBuf, ifname: String },
    #[error("{} is the daemon's own network namespace, the node's: a pod is never the node", .0.display())]
    NodeNamespace(PathBuf),
    /// The tables refused the port: an address or MAC in use, or worse.
    #[error(transparent)]
    Tables(#[from] TablesError),
    #[error("no port id left (max_ports is {0})")]
    PortLimit(usize),
    /// A port of the previous run whose device is no longer what we made.
    #[error("{0}")]
    Gone(String),
    #[error("port id {0} is not usable")]
    UnusableId(PortId),
    #[error("AF_XDP port {0} has no host end recorded")]
    NoHostEnd(PortId),
    /// A takeover's port whose queues did not come, or came wrong.
    #[error("port {0}: not handed over as announced")]
    NotHandedOver(PortId),
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error("overlay.underlay_io = \"tunnel\", but {0}")]
    TunnelUnavailable(String),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl AttachError {
    /// The API error code and HTTP status for this error.
    pub fn code(&self) -> (u16, &'static str) {
        use vswitch_api::codes;
        match self {
            AttachError::Request(_)
            | AttachError::UnusableId(_)
            | AttachError::NoHostEnd(_)
            | AttachError::NotHandedOver(_)
            | AttachError::Uplink(_)
            | AttachError::Overlay(_)
            | AttachError::TunnelUnavailable(_) => (400, codes::INVALID_REQUEST),
            AttachError::Tables(e) if is_conflict(e) => (409, codes::CONFLICT),
            AttachError::Tables(_) => (400, codes::INVALID_REQUEST),
            AttachError::Netns(NetnsError::NotFound(_) | NetnsError::NotANamespace(_)) => {
                (404, codes::NETNS_NOT_FOUND)
            }
            AttachError::Netns(NetnsError::Denied { .. }) => (403, codes::NETNS_REFUSED),
            AttachError::NodeNamespace(_) => (400, codes::INVALID_REQUEST),
            AttachError::AlreadyAttached { .. }
            | AttachError::GatewayIp(_)
            | AttachError::GatewayMac(_)
            | AttachError::Gone(_) => (409, codes::CONFLICT),
            AttachError::InterfaceExists { .. } => (409, codes::INTERFACE_EXISTS),
            AttachError::PortLimit(_) => (507, codes::PORT_LIMIT),
            AttachError::Netns(NetnsError::Io { .. })
            | AttachError::Sys(_)
            | AttachError::Port(_)
            | AttachError::Datapath(_)
            | AttachError::State(_) => (500, codes::INTERNAL),
        }
    }
}

/// Another port has the address or MAC, or the address is the gateway's.
fn is_conflict(e: &TablesError) -> bool {
    matches!(
        e,
        TablesError::DuplicateIp { .. } | TablesError::DuplicateMac { .. } | TablesError::IpIsGateway { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_kind_of_failure() {
        let conflict = TablesError::DuplicateMac {
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            segment: vswitch_dataplane::ids::SegmentId(0),
            existing: PortId(3),
        };
        assert_eq!(AttachError::Tables(conflict).code().0, 409);
        assert_eq!(AttachError::Tables(TablesError::DuplicatePort(PortId(3))).code().0, 400);
        assert_eq!(AttachError::Request(RequestError::NoAddress).code().0, 400);
        assert_eq!(AttachError::Netns(NetnsError::NotFound("/x".into())).code().0, 404);
        let denied = NetnsError::Denied {
            path: "/proc/1/ns/net".into(),
            source: std::io::Error::from_raw_os_error(13),
        };
        assert_eq!(AttachError::Netns(denied).code(), (403, vswitch_api::codes::NETNS_REFUSED));
        assert_eq!(AttachError::NodeNamespace("/proc/self/ns/net".into()).code().0, 400);
        let exists = AttachError::InterfaceExists { netns: "/x".into(), ifname: "eth0".into() };
        assert_eq!(exists.code(), (409, vswitch_api::codes::INTERFACE_EXISTS));
        assert_eq!(exists.to_string(), "/x already has an interface eth0");
        assert_eq!(AttachError::PortLimit(4).code().0, 507);
        let sys = SysError::new("x", std::io::Error::from_raw_os_error(1));
        assert_eq!(AttachError::Sys(sys).code().0, 500);
    }
}
