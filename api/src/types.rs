//! Request and response bodies. Field names are the JSON names; optional fields may be
//! omitted on input and are always present on output.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

/// How a pod's interface is connected to the switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A TAP device whose network side is the pod's interface; the switch keeps its fds.
    Tap,
    /// A veth pair: the pod's end is its interface, the switch reads the host end
    /// through an AF_XDP socket.
    Afxdp,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Tap => "tap",
            Backend::Afxdp => "afxdp",
        })
    }
}

/// The Kubernetes pod an attachment belongs to, as kubelet passes it in `CNI_ARGS`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

/// Attach a pod: create its interface in `netns` and a switch port behind it.
///
/// An attachment is named by (`container_id`, `ifname`), as in CNI. Asking again for an
/// attachment that exists with the same parameters returns it unchanged (a runtime may
/// retry ADD); with different parameters it is a conflict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// The runtime's container (sandbox) id: letters, digits, `_`, `.` and `-`.
    pub container_id: String,
    /// Path of the pod's network namespace (e.g. `/var/run/netns/cni-…`).
    pub netns: PathBuf,
    /// Name of the interface inside the pod (e.g. `eth0`).
    pub ifname: String,
    /// The interface's MAC; omitted: derived from the first IPv4 address
    /// (`02:00:` + its four bytes), so it is stable across re-attachments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The pod's addresses with their prefix length (`10.244.1.5/24`). The switch binds
    /// them to the port (port security) and answers ARP for them; configuring them in
    /// the pod is the caller's job.
    pub ips: Vec<IpNet>,
    /// Interface MTU; omitted: the daemon's configured pod MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Omitted: the daemon's configured default backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// The CNI network the attachment belongs to (the conflist's `name`); garbage
    /// collection of one network never touches another's ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// What a port is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    Pod,
    /// The TAP in the node's namespace that carries the gateway address.
    Host,
    /// The node's underlay interface, where NodePort traffic comes in (AF_XDP sockets
    /// behind an XDP program that leaves the node's own traffic to the kernel).
    Uplink,
}

/// A port as the daemon reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    /// The switch's port number (also in stats and FDB dumps).
    pub id: u16,
    pub kind: PortKind,
    /// Empty for the host port.
    pub container_id: String,
    /// The interface name where it lives: inside the pod for pod ports.
    pub ifname: String,
    /// The pod's network namespace; empty for the host port.
    pub netns: PathBuf,
    /// The host end of the veth pair (AF_XDP ports); `None` for TAP ports.
    pub host_ifname: Option<String>,
    pub mac: String,
    pub ips: Vec<IpNet>,
    pub mtu: u16,
    pub backend: Backend,
    /// Workers serving the port's queues (one queue each).
    pub workers: Vec<usize>,
    /// Whether the port carries TSO/GSO super-frames and partial checksums.
    pub offloads: bool,
    pub pod: Option<PodRef>,
    /// The CNI network it was attached for, if the attach request named one.
    #[serde(default)]
    pub network: Option<String>,
}

/// Answer to a detach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachOutcome {
    /// False when there was nothing to detach (detach is idempotent).
    pub existed: bool,
}

/// The daemon's identity and configuration, as clients need it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node_name: String,
    pub version: String,
    pub pod_cidr: Ipv4Net,
    pub gateway_ip: Ipv4Addr,
    pub gateway_mac: String,
    /// The pod MTU used when an attach request does not give one.
    pub mtu: u16,
    pub default_backend: Backend,
    pub workers: usize,
    pub ports: usize,
    /// The node's address NodePorts are served on.
    #[serde(default)]
    pub node_ip: Option<Ipv4Addr>,
    /// The uplink interface, when it is up.
    #[serde(default)]
    pub uplink: Option<String>,
    /// How VXLAN to and from other nodes meets the kernel (the tunnel TAP or sockets,
    /// and why), when the underlay is up.
    #[serde(default)]
    pub underlay: Option<String>,
    /// Cluster mode: the Kubernetes watchers. `None`: Services and nodes come from files.
    #[serde(default)]
    pub cluster: Option<ClusterStatus>,
    /// How this daemon came to run: a first start, a restart (and what its tables
    /// snapshot gave back), or a takeover (from which version, after what pause).
    #[serde(default)]
    pub started: Option<String>,
    /// Captures open now (`vswitchctl capture` clients).
    #[serde(default)]
    pub captures_open: usize,
    /// Flow logs followed now (`vswitchctl flows` clients).
    #[serde(default)]
    pub flow_logs_open: usize,
    /// Live traces open now (`vswitchctl trace --live` clients).
    #[serde(default)]
    pub live_traces_open: usize,
}

/// The Kubernetes watchers of a daemon in cluster mode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The Node this daemon serves.
    pub node_name: String,
    pub watchers: Vec<WatcherStatus>,
    /// Snapshots of the cluster applied to the tables so far.
    pub applied: u64,
    /// Objects not served, with the reason (headless Services, IPv6-only ones, ...).
    pub skipped: Vec<String>,
}

/// One resource's watcher.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatcherStatus {
    /// `nodes`, `services` or `endpointslices`.
    pub resource: String,
    /// Listed completely at least once: its objects count in the tables.
    pub synced: bool,
    /// Objects in its store at the last snapshot.
    pub objects: usize,
    pub events: u64,
    /// Watch failures so far (each retried with backoff, the tables unchanged).
    pub errors: u64,
    pub last_error: Option<String>,
    /// Seconds after the daemon started that the last event came.
    pub last_event_secs: u64,
}

/// A learned MAC address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbEntry {
    pub segment: u16,
    pub mac: String,
    pub port: u16,
    /// The port's interface name, if the port still exists.
    pub port_name: Option<String>,
    /// Seconds since the address was last seen as a source.
    pub age_secs: u32,
}

/// Counters of one port, summed over workers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStats {
    pub id: u16,
    /// Interface name, or empty for a port id no longer attached.
    pub name: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames that entered on this port and were dropped, by reason (non-zero only).
    pub drops: BTreeMap<String, u64>,
}

/// Load of one worker thread.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    pub id: usize,
    pub polls: u64,
    pub busy_polls: u64,
    /// Times the worker slept in epoll once its idle polling ran out.
    #[serde(default)]
    pub sleeps: u64,
    /// Share of time spent in poll rounds that found work, 0.0–1.0.
    pub busy_ratio: f64,
}

/// Everything the switch counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Ports with any traffic or drops, plus every attached port.
    pub ports: Vec<PortStats>,
    /// Every drop reason the switch knows, with its count (zeros included, so a
    /// reader sees the full list).
    pub drops: BTreeMap<String, u64>,
    /// One-line explanation of each drop reason.
    pub drop_descriptions: BTreeMap<String, String>,
    /// Non-drop events: `fdb_learned`, `flooded`, `arp_replies`, ...
    pub events: BTreeMap<String, u64>,
    pub fdb_entries: usize,
    /// Flows in the connection-tracking table (Service NAT).
    #[serde(default)]
    pub conntrack_entries: u32,
    #[serde(default)]
    pub conntrack_max_entries: u32,
    /// Clients remembered for `ClientIP` session affinity.
    #[serde(default)]
    pub affinity_entries: usize,
    pub workers: Vec<WorkerStats>,
}

/// Machine-readable error codes; the HTTP status goes with them.
pub mod codes {
    /// 400: the body is not valid JSON or lacks a field.
    pub const INVALID_JSON: &str = "invalid_json";
    /// 400: a field's value is wrong (message says which).
    pub const INVALID_REQUEST: &str = "invalid_request";
    /// 413: the body is larger than the daemon accepts.
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// 400: the services file is not valid (message names the line and field).
    pub const INVALID_SERVICES: &str = "invalid_services";
    /// 400: the nodes file is not valid (message names the line and field).
    pub const INVALID_NODES: &str = "invalid_nodes";
    /// 404: the network namespace path does not exist or is not a namespace.
    pub const NETNS_NOT_FOUND: &str = "netns_not_found";
    /// 403: the daemon may not open that network namespace (permissions, a security
    /// module).
    pub const NETNS_REFUSED: &str = "netns_refused";
    /// 404: no such port or route.
    pub const NOT_FOUND: &str = "not_found";
    /// 405: the route exists, not with this method.
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// 409: the IP, MAC or (container, ifname) is already in use differently.
    pub const CONFLICT: &str = "conflict";
    /// 409: an interface of that name already exists in the pod.
    pub const INTERFACE_EXISTS: &str = "interface_exists";
    /// 507: no port id left (`max_ports`).
    pub const PORT_LIMIT: &str = "port_limit";
    /// 500: the kernel or the data plane refused (message has the OS error).
    pub const INTERNAL: &str = "internal";
}

/// Body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// One of [`codes`].
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> ErrorBody {
        ErrorBody { error: ErrorDetail { code: code.to_string(), message: message.into() } }
    }
}

/// Checks a container id the way CNI does: non-empty, letters, digits, `_`, `.`, `-`.
pub fn validate_container_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("container_id is empty".into());
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(format!(
            "container_id {id:?} has {c:?}: only letters, digits, '_', '.' and '-' are allowed"
        ));
    }
    Ok(())
}

/// Checks an interface name as Linux and CNI do: 1–15 bytes, not `.`/`..`, no `/`, `:`
/// or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("interface name {name:?} must be 1 to 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed"));
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control()) {
        return Err(format!("interface name {name:?} contains '/', ':' or whitespace"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_request_json_shape() {
        let json = r#"{"container_id":"abc","netns":"/var/run/netns/p1","ifname":"eth0",
                       "ips":["10.244.1.5/24"],"backend":"afxdp"}"#;
        let req: AttachRequest = serde_json::from_str(json).unwrap();
        assert_eq!(req.ips, vec!["10.244.1.5/24".parse::<IpNet>().unwrap()]);
        assert_eq!((req.backend, req.mtu, req.mac), (Some(Backend::Afxdp), None, None));
        let unknown = r#"{"container_id":"a","netns":"/x","ifname":"e","ips":[],"colour":"red"}"#;
        let err = serde_json::from_str::<AttachRequest>(unknown).unwrap_err().to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn names_are_checked_like_cni_does() {
        assert!(validate_container_id("3f2a-b_c.d").is_ok());
        for bad in ["", "a/b", "a b", "ü"] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_ifname("eth0").is_ok());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_body_shape() {
        let body = serde_json::to_string(&ErrorBody::new(codes::CONFLICT, "IP in use")).unwrap();
        assert_eq!(body, r#"{"error":{"code":"conflict","message":"IP in use"}}"#);
    }
}
