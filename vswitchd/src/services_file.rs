//! The services file: Services without a cluster, in TOML, in the shape of a Kubernetes
//! Service with its EndpointSlices' endpoints.
//!
//! ```toml
//! [[service]]
//! namespace = "default"             # optional, "default"
//! name = "web"
//! cluster_ip = "10.96.0.10"
//! type = "NodePort"                 # optional, "ClusterIP"
//! session_affinity = "ClientIP"     # optional, "None"
//! session_affinity_timeout = 10800  # optional, as Kubernetes
//! external_traffic_policy = "Local" # optional, "Cluster"
//! internal_traffic_policy = "Cluster"
//! ports = [{ name = "http", protocol = "TCP", port = 80, target_port = 8080, node_port = 30080 }]
//! endpoints = [
//!   { ip = "10.244.1.5" },          # ready (and serving), as an EndpointSlice's default
//!   { ip = "10.244.1.6", ready = false, serving = true, terminating = true },
//!   { ip = "10.244.2.7", node = "node-b" },
//! ]
//! ```
//!
//! The file is taken whole or not at all: any error (which names the line and the
//! field) leaves the Services served before it in place.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::Deserialize;
use toml::Spanned;
use vswitch_api::{Endpoint, Protocol, Service, ServicePort, ServiceType, SessionAffinity, TrafficPolicy};

use super::config::{Config, ConfigError, field_at, line_at};
use vswitch_dataplane::tables::services::{EndpointSpec, ServicePortSpec};
use vswitch_dataplane::wire::parse::{IPPROTO_TCP, IPPROTO_UDP};

/// Kubernetes' default `--service-node-port-range`.
pub(crate) const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;
/// Kubernetes' default and largest `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub(crate) const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
pub(crate) const MAX_AFFINITY_TIMEOUT: u32 = 86400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    namespace: Option<Spanned<String>>,
    name: Spanned<String>,
    cluster_ip: Spanned<String>,
    #[serde(rename = "type")]
    service_type: Option<Spanned<ServiceType>>,
    session_affinity: Option<SessionAffinity>,
    session_affinity_timeout: Option<Spanned<u32>>,
    external_traffic_policy: Option<TrafficPolicy>,
    internal_traffic_policy: Option<TrafficPolicy>,
    ports: Spanned<Vec<Spanned<RawPort>>>,
    #[serde(default)]
    endpoints: Vec<Spanned<RawEndpoint>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    #[serde(default)]
    name: String,
    protocol: Option<Spanned<String>>,
    port: Spanned<u16>,
    /// Omitted: the same as `port`, as Kubernetes defaults it.
    target_port: Option<Spanned<u16>>,
    node_port: Option<Spanned<u16>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    ip: Spanned<String>,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
    /// The node the endpoint runs on; omitted: this node if the address is in its pod
    /// CIDR.
    node: Option<String>,
}

/// What the file's meaning depends on: which addresses are this node's.
#[derive(Clone, Debug)]
pub(crate) struct NodeView {
    pub node_name: String,
    pub pod_cidr: Ipv4Net,
    pub gateway_ip: Ipv4Addr,
    pub node_ip: Option<Ipv4Addr>,
    pub hairpin_ip: Ipv4Addr,
}

impl NodeView {
    pub(crate) fn of(config: &Config) -> NodeView {
        NodeView {
            node_name: config.node_name.clone(),
            pod_cidr: config.pod_cidr,
            gateway_ip: config.gateway_ip,
            node_ip: config.node_ip,
            hairpin_ip: config.hairpin_ip,
        }
    }
}

/// Parses and checks a services file's text (`file` is for messages).
pub(crate) fn parse(text: &str, file: &Path, node: &NodeView) -> Result<Vec<Service>, ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        ConfigError {
            file: file.to_path_buf(),
            line: line_at(text, at),
            field: field_at(text, at, e.message()),
            message: e.message().trim().to_string(),
        }
    })?;
    let err = |at: usize, field: String, message: String| ConfigError {
        file: file.to_path_buf(),
        line: line_at(text, at),
        field,
        message,
    };
    let mut services = Vec::with_capacity(raw.service.len());
    for (i, rs) in raw.service.into_iter().enumerate() {
        let service = convert(rs, i, node).map_err(|(at, field, message)| err(at, field, message))?;
        services.push(service);
    }
    check_conflicts(&services).map_err(|(i, field, message)| {
        // The service's `name` line is where the reader starts looking.
        let at = text.match_indices("[[service]]").nth(i).map_or(0, |(at, _)| at);
        err(at, format!("service[{i}].{field}"), message)
    })?;
    Ok(services)
}

type Located = (usize, String, String);

fn convert(rs: RawService, i: usize, node: &NodeView) -> Result<Service, Located> {
    let field = |f: &str| format!("service[{i}].{f}");
    let name = rs.name.get_ref().trim().to_string();
    if name.is_empty() || name.contains(['/', ':']) || name.contains(char::is_whitespace) {
        return Err((
            rs.name.span().start,
            field("name"),
            format!("{name:?}: a Service name has no '/', ':' or spaces"),
        ));
    }
    let namespace = match &rs.namespace {
        Some(ns) => {
            let n = ns.get_ref().trim().to_string();
            if n.is_empty() || n.contains(['/', ':']) || n.contains(char::is_whitespace) {
                return Err((
                    ns.span().start,
                    field("namespace"),
                    format!("{n:?}: a namespace has no '/', ':' or spaces"),
                ));
            }
            n
        }
        None => "default".to_string(),
    };
    let cluster_ip: Ipv4Addr = rs.cluster_ip.get_ref().parse().map_err(|e| {
        (
            rs.cluster_ip.span().start,
            field("cluster_ip"),
            format!("{e}: expected an IPv4 address (headless and IPv6 Services are not served)"),
        )
    })?;
    let reserved = [Some(node.gateway_ip), node.node_ip, Some(node.hairpin_ip)];
    if cluster_ip.is_unspecified()
        || cluster_ip.is_broadcast()
        || cluster_ip.is_multicast()
        || cluster_ip.is_loopback()
        || node.pod_cidr.contains(&cluster_ip)
        || reserved.contains(&Some(cluster_ip))
    {
        return Err((
            rs.cluster_ip.span().start,
            field("cluster_ip"),
            format!(
                "{cluster_ip} cannot be a cluster IP: it must be a unicast address outside the pod CIDR \
                 {} and not the gateway, node or hairpin address",
                node.pod_cidr
            ),
        ));
    }
    let service_type = rs.service_type.as_ref().map_or(ServiceType::ClusterIP, |t| *t.get_ref());
    let session_affinity = rs.session_affinity.unwrap_or_default();
    let session_affinity_timeout = match &rs.session_affinity_timeout {
        Some(t) if !(1..=MAX_AFFINITY_TIMEOUT).contains(t.get_ref()) => {
            return Err((
                t.span().start,
                field("session_affinity_timeout"),
                format!("{} is outside 1..={MAX_AFFINITY_TIMEOUT} seconds", t.get_ref()),
            ));
        }
        Some(t) => *t.get_ref(),
        None => DEFAULT_AFFINITY_TIMEOUT,
    };
    if rs.ports.get_ref().is_empty() {
        return Err((rs.ports.span().start, field("ports"), "a Service needs at least one port".into()));
    }
    let several = rs.ports.get_ref().len() > 1;
    let mut ports = Vec::new();
    let mut port_names = HashSet::new();
    for (j, rp) in rs.ports.into_inner().into_iter().enumerate() {
        let at = rp.span().start;
        let rp = rp.into_inner();
        let pfield = |f: &str| field(&format!("ports[{j}].{f}"));
        let protocol = match rp.protocol.as_ref().map(|p| (p.get_ref().as_str(), p.span().start)) {
            None | Some(("TCP", _)) => Protocol::Tcp,
            Some(("UDP", _)) => Protocol::Udp,
            Some(("SCTP", a)) => {
                return Err((a, pfield("protocol"), "SCTP Services are not served (TCP and UDP are)".into()));
            }
            Some((other, a)) => {
                return Err((a, pfield("protocol"), format!("{other:?}: expected \"TCP\" or \"UDP\"")));
            }
        };
        if several && rp.name.is_empty() {
            return Err((at, pfield("name"), "a Service with several ports must name each".into()));
        }
        if !port_names.insert(rp.name.clone()) {
            return Err((at, pfield("name"), format!("port name {:?} is used twice", rp.name)));
        }
        let port = *rp.port.get_ref();
        if port == 0 {
            return Err((rp.port.span().start, pfield("port"), "port 0 is not a port".into()));
        }
        let target_port = rp.target_port.as_ref().map_or(port, |t| *t.get_ref());
        if target_port == 0 {
            let a = rp.target_port.as_ref().map_or(at, |t| t.span().start);
            return Err((a, pfield("target_port"), "port 0 is not a port".into()));
        }
        let node_port = match (&rp.node_port, service_type) {
            (Some(np), ServiceType::NodePort) if NODE_PORT_RANGE.contains(np.get_ref()) => {
                Some(*np.get_ref())
            }
            (Some(np), ServiceType::NodePort) => {
                return Err((
                    np.span().start,
                    pfield("node_port"),
                    format!("{} is outside the NodePort range 30000-32767", np.get_ref()),
                ));
            }
            (Some(np), ServiceType::ClusterIP) => {
                return Err((
                    np.span().start,
                    pfield("node_port"),
                    "only Services of type \"NodePort\" have node ports".into(),
                ));
            }
            (None, ServiceType::NodePort) => {
                return Err((
                    at,
                    pfield("node_port"),
                    "a NodePort Service names each port's node_port".into(),
                ));
            }
            (None, ServiceType::ClusterIP) => None,
        };
        ports.push(ServicePort { name: rp.name, protocol, port, target_port, node_port });
    }
    let mut endpoints = Vec::new();
    let mut seen = HashSet::new();
    for (j, re) in rs.endpoints.into_iter().enumerate() {
        let at = re.span().start;
        let re = re.into_inner();
        let efield = |f: &str| field(&format!("endpoints[{j}].{f}"));
        let ip: Ipv4Addr = re
            .ip
            .get_ref()
            .parse()
            .map_err(|e| (re.ip.span().start, efield("ip"), format!("{e}: expected an IPv4 address")))?;
        if !seen.insert(ip) {
            return Err((re.ip.span().start, efield("ip"), format!("{ip} is listed twice")));
        }
        // EndpointSlice semantics: an unknown `ready` is ready; `serving` follows it.
        let ready = re.ready.unwrap_or(true);
        let serving = re.serving.unwrap_or(ready);
        let terminating = re.terminating.unwrap_or(false);
        if ready && (terminating || !serving) {
            return Err((
                at,
                efield("ready"),
                "a ready endpoint is serving and not terminating (as in an EndpointSlice)".into(),
            ));
        }
        let local = match &re.node {
            Some(n) => *n == node.node_name,
            None => node.pod_cidr.contains(&ip),
        };
        endpoints.push(Endpoint { ip, ready, serving, terminating, local });
    }
    Ok(Service {
        namespace,
        name,
        cluster_ip,
        service_type,
        ports,
        endpoints,
        session_affinity,
        session_affinity_timeout,
        external_traffic_policy: rs.external_traffic_policy.unwrap_or_default(),
        internal_traffic_policy: rs.internal_traffic_policy.unwrap_or_default(),
    })
}

/// Checks what no single Service can: names, cluster IP ports and node ports used
/// twice. Gives the offending Service's index, the field and the message.
pub(crate) fn check_conflicts(services: &[Service]) -> Result<(), (usize, String, String)> {
    let mut names = HashMap::new();
    let mut frontends = HashMap::new();
    let mut node_ports = HashMap::new();
    for (i, s) in services.iter().enumerate() {
        let id = format!("{}/{}", s.namespace, s.name);
        if let Some(other) = names.insert(id.clone(), i) {
            return Err((i, "name".into(), format!("{id} is also service[{other}]")));
        }
        for (j, p) in s.ports.iter().enumerate() {
            if let Some(other) = frontends.insert((s.cluster_ip, p.port, p.protocol), id.clone()) {
                return Err((
                    i,
                    format!("ports[{j}].port"),
                    format!("{}:{} {} is also a port of {other}", s.cluster_ip, p.port, p.protocol),
                ));
            }
            if let Some(np) = p.node_port
                && let Some(other) = node_ports.insert((np, p.protocol), id.clone())
            {
                return Err((
                    i,
                    format!("ports[{j}].node_port"),
                    format!("node port {np} {} is also used by {other}", p.protocol),
                ));
            }
        }
    }
    Ok(())
}

/// The data path's view: one spec per Service port.
/// `namespace/name:port-name` (the number when the port has no name): what identifies a
/// Service port in the table across changes.
pub(crate) fn port_spec_name(s: &Service, p: &vswitch_api::ServicePort) -> String {
    let port_name = if p.name.is_empty() { p.port.to_string() } else { p.name.clone() };
    format!("{}/{}:{port_name}", s.namespace, s.name)
}

pub(crate) fn port_specs(services: &[Service]) -> Vec<ServicePortSpec> {
    let mut specs = Vec::new();
    for s in services {
        for p in &s.ports {
            specs.push(ServicePortSpec {
                name: port_spec_name(s, p),
                vip: s.cluster_ip,
                port: p.port,
                protocol: match p.protocol {
                    Protocol::Tcp => IPPROTO_TCP,
                    Protocol::Udp => IPPROTO_UDP,
                },
                node_port: if s.service_type == ServiceType::NodePort { p.node_port } else { None },
                endpoints: s
                    .endpoints
                    .iter()
                    .map(|e| EndpointSpec {
                        ip: e.ip,
                        port: p.target_port,
                        ready: e.ready,
                        serving: e.serving,
                        terminating: e.terminating,
                        local: e.local,
                    })
                    .collect(),
                affinity_timeout: (s.session_affinity == SessionAffinity::ClientIP)
                    .then_some(s.session_affinity_timeout),
                external_local: s.external_traffic_policy == TrafficPolicy::Local,
                internal_local: s.internal_traffic_policy == TrafficPolicy::Local,
            });
        }
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeView {
        NodeView {
            node_name: "node-a".into(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            gateway_ip: Ipv4Addr::new(10, 244, 1, 1),
            node_ip: Some(Ipv4Addr::new(192, 168, 50, 1)),
            hairpin_ip: Ipv4Addr::new(169, 254, 42, 1),
        }
    }

    fn parse_ok(text: &str) -> Vec<Service> {
        parse(text, Path::new("services.toml"), &node()).unwrap()
    }

    fn parse_err(text: &str) -> ConfigError {
        parse(text, Path::new("services.toml"), &node()).unwrap_err()
    }

    const WEB: &str = r#"
[[service]]
name = "web"
cluster_ip = "10.96.0.10"
type = "NodePort"
session_affinity = "ClientIP"
external_traffic_policy = "Local"
ports = [
  { name = "http", port = 80, target_port = 8080, node_port = 30080 },
  { name = "dns", protocol = "UDP", port = 53, node_port = 30053 },
]
endpoints = [
  { ip = "10.244.1.5" },
  { ip = "10.244.1.6", ready = false, serving = true, terminating = true },
  { ip = "10.244.2.7", node = "node-b" },
  { ip = "10.244.9.9", node = "node-a" },
]
"#;

    #[test]
    fn a_full_service_with_kubernetes_defaults() {
        let s = &parse_ok(WEB)[0];
        assert_eq!((s.namespace.as_str(), s.name.as_str()), ("default", "web"));
        assert_eq!(s.session_affinity_timeout, DEFAULT_AFFINITY_TIMEOUT);
        assert_eq!(s.internal_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(
            s.ports[1],
            ServicePort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 53,
                target_port: 53,
                node_port: Some(30053),
            }
        );
        let conditions: Vec<_> =
            s.endpoints.iter().map(|e| (e.ready, e.serving, e.terminating, e.local)).collect();
        assert_eq!(
            conditions,
            vec![
                (true, true, false, true),
                (false, true, true, true),
                (true, true, false, false),
                (true, true, false, true),
            ]
        );
        let specs = port_specs(&parse_ok(WEB));
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].name, "default/web:http");
        assert_eq!(specs[0].endpoints[0].port, 8080);
        assert_eq!(specs[1].protocol, IPPROTO_UDP);
        assert_eq!(specs[0].affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert!(specs[0].external_local && !specs[0].internal_local);
    }

    #[test]
    fn an_empty_file_has_no_services() {
        assert!(parse_ok("").is_empty());
        assert!(parse_ok("# nothing yet\n").is_empty());
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "[[service]]\nname = \"a\"\ncluster_ip = \"10.96.0.300\"\nports = [{ port = 80 }]\n",
                "service[0].cluster_ip",
                3,
                "invalid IPv4",
            ),
            (
                "[[service]]\nname = \"a\"\ncluster_ip = \"10.244.1.9\"\nports = [{ port = 80 }]\n",
                "service[0].cluster_ip",
                3,
                "outside the pod CIDR",
            ),
            (
                "[[service]]\nname = \"a\"\ncluster_ip = \"10.96.0.1\"\nports = [\n { port = 80, protocol = \"SCTP\" }]\n",
                "service[0].ports[0].protocol",
                5,
                "SCTP",
            ),
            (
                "[[service]]\nname = \"a\"\ncluster_ip = \"10.96.0.1\"\ntype = \"NodePort\"\nports = [\n { port = 80, node_port = 80 }]\n",
                "service[0].ports[0].node_port",
                6,
                "30000-32767",
            ),
            (
                "[[service]]\nname = \"a\"\ncluster_ip = \"10.96.0.1\"\nports = [{ port = 80, node_port = 30001 }]\n",
                "service[0].ports[0].node_port",
                4,
                "only Services of type",
            ),
            (
                "[[service]]\nname = \"a\"\ncluster_ip = \"10.96.0.1\"\nports = [{ port = 80 }]\nendpoints = [\n  { ip = \"10.244.1.5\", ready = true, terminating = true },\n]\n",
                "service[0].endpoints[0].ready",
                6,
                "not terminating",
            ),
            (
                "[[service]]\nname = \"a\"\ncluster_ip = \"10.96.0.1\"\nports = [{ port = 80 }, { port = 81 }]\n",
                "service[0].ports[0].name",
                4,
                "must name each",
            ),
            (
                "[[service]]\nname = \"a\"\ncluster_ip = \"10.96.0.1\"\nports = [{ port = 80 }]\ncolour = \"red\"\n",
                "service.colour",
                5,
                "unknown field",
            ),
            (
                "[[service]]\nname = \"a\"\ncluster_ip = \"10.96.0.1\"\nports = [{ port = 80 }]\nsession_affinity_timeout = 0\n",
                "service[0].session_affinity_timeout",
                5,
                "outside",
            ),
            (
                "[[service]]\nname = \"a\"\ncluster_ip = \"10.96.0.1\"\nports = [{ port = 80 }]\n\n[[service]]\nname = \"b\"\ncluster_ip = \"10.96.0.1\"\nports = [{ port = 80 }]\n",
                "service[1].ports[0].port",
                6,
                "also a port of default/a",
            ),
            (
                "[[service]]\nname = \"a\"\ncluster_ip = \"10.96.0.1\"\nports = [{ port = 80 }]\n\n[[service]]\nname = \"a\"\ncluster_ip = \"10.96.0.2\"\nports = [{ port = 80 }]\n",
                "service[1].name",
                6,
                "also service[0]",
            ),
        ];
        for (text, field, line, message) in cases {
            let e = parse_err(text);
            assert_eq!((e.field.as_str(), e.line), (*field, *line), "{e}");
            assert!(e.message.contains(message), "{e}");
            assert!(e.to_string().starts_with(&format!("services.toml:{line}: {field}: ")), "{e}");
        }
    }

    #[test]
    fn a_missing_field_is_reported_at_its_table() {
        let e = parse_err("[[service]]\nname = \"a\"\nports = [{ port = 80 }]\n");
        assert!(e.message.contains("missing field `cluster_ip`"), "{e}");
        assert!(e.line >= 1 && e.line <= 3, "{e}");
    }
}
