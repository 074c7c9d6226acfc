//! Services and the flows translated to them, as the daemon reports them. The same
//! types are what every source of Services (the services file, the Kubernetes API)
//! produces: a Service's spec fields that the data path needs, with the endpoints of
//! its EndpointSlices.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Transport protocol of a Service port. SCTP is not served (see `docs/SERVICES.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// `spec.type`: a NodePort Service is a ClusterIP Service also reachable on the node's
/// address at each port's `node_port`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
}

/// `spec.sessionAffinity`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionAffinity {
    #[default]
    None,
    /// New flows of a client go to the endpoint its last flow went to, while it has
    /// been seen within the timeout.
    ClientIP,
}

/// `spec.externalTrafficPolicy` and `spec.internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficPolicy {
    /// Any endpoint of the cluster.
    #[default]
    Cluster,
    /// Endpoints on this node only (and, for external traffic, the client's address
    /// kept).
    Local,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// May be empty when the Service has one port.
    #[serde(default)]
    pub name: String,
    pub protocol: Protocol,
    /// The port on the cluster IP.
    pub port: u16,
    /// The port on the endpoints.
    pub target_port: u16,
    /// The port on the node's address (NodePort Services only).
    #[serde(default)]
    pub node_port: Option<u16>,
}

/// An endpoint with its EndpointSlice conditions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// Takes new flows.
    pub ready: bool,
    /// Able to answer (a terminating endpoint may still be serving).
    pub serving: bool,
    /// Being shut down: takes new flows only when no endpoint is ready.
    pub terminating: bool,
    /// On this node: the only ones used for `Local` traffic policies.
    pub local: bool,
}

/// A Service as the data path serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Endpoint>,
    pub session_affinity: SessionAffinity,
    /// Seconds; used with `ClientIP` affinity.
    pub session_affinity_timeout: u32,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
}

/// The Services the daemon serves and where they came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesView {
    /// The watched services file, if one is configured.
    pub file: Option<PathBuf>,
    /// Why the file's current content is not what is served (the last good content
    /// is); `None` when the file was read and applied.
    pub file_error: Option<String>,
    /// Changes applied since the daemon started.
    pub generation: u64,
    pub services: Vec<Service>,
}

/// A translated flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub protocol: Protocol,
    /// `namespace/name:port` of the Service.
    pub service: String,
    /// The client, as it sent the first packet.
    pub client: SocketAddrV4,
    /// What the client addressed: the cluster IP, or the node's address at a NodePort.
    pub frontend: SocketAddrV4,
    pub endpoint: SocketAddrV4,
    /// The source the endpoint sees, when it is not the client (hairpin, NodePort with
    /// the `Cluster` policy).
    pub source_nat: Option<SocketAddrV4>,
    /// `new`, `established`, `closing` or `reset`.
    pub state: String,
    pub replied: bool,
    pub idle_secs: u32,
}

/// The connection-tracking table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackView {
    pub entries: u32,
    pub max_entries: u32,
    /// Up to the requested limit.
    pub flows: Vec<Flow>,
    /// More flows exist than are listed.
    pub truncated: bool,
}

/// Where a remote node's entry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeSource {
    /// `[[overlay.node]]` in the daemon's config.
    Config,
    /// The watched nodes file.
    File,
    /// The Kubernetes API (cluster mode).
    Cluster,
}

/// Another node, as the overlay routes to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteNode {
    pub name: String,
    /// Its underlay address: VXLAN goes to and comes from it.
    pub ip: Ipv4Addr,
    pub pod_cidrs: Vec<ipnet::Ipv4Net>,
    /// Inner destination MAC of frames to it.
    pub vtep_mac: String,
    pub source: NodeSource,
    /// The MAC of its next hop on the AF_XDP uplink, once resolved: VXLAN to it takes
    /// the fast path. `None`: through the kernel socket.
    #[serde(default)]
    pub fast_path_next_hop: Option<String>,
    /// How the node itself reaches each of its pod CIDRs ("10.244.2.0/24 via vswitch0",
    /// or why it does not); empty without a host port.
    #[serde(default)]
    pub from_node: Vec<String>,
}

/// The overlay between nodes: its settings and the nodes it routes to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesView {
    pub vni: u32,
    pub port: u16,
    pub underlay_mtu: u16,
    /// The pod MTU: room for the 50 bytes VXLAN adds.
    pub pod_mtu: u16,
    /// The underlay port VXLAN leaves by; `None` while it is not up (nothing is sent).
    pub underlay: Option<String>,
    /// That port is the tunnel TAP (super-frames cross whole), not sockets.
    #[serde(default)]
    pub tunnel: bool,
    pub nodes_file: Option<PathBuf>,
    /// Why the nodes file's current content was not taken (the nodes before it stay).
    #[serde(default)]
    pub file_error: Option<String>,
    /// Bumped each time the node table changes.
    pub generation: u64,
    pub nodes: Vec<RemoteNode>,
}
