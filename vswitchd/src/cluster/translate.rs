//! Kubernetes objects → the types every source of Services and nodes produces
//! ([`vswitch_api::Service`], [`NodeSpec`]), so the cluster and the files feed the same
//! tables.
//!
//! What is skipped, and why (each skip is reported, never silent):
//! - headless Services (`clusterIP: None`): there is no virtual IP to translate; DNS
//!   hands out the pods' addresses;
//! - `ExternalName` Services: a DNS alias, nothing in the data path;
//! - IPv6-only Services, IPv6 EndpointSlices and IPv6 pod CIDRs or node addresses: the
//!   data path is IPv4 (a dual-stack Service is served on its IPv4 cluster IP);
//! - SCTP ports (not translated);
//! - a `LoadBalancer` Service is served as its ClusterIP and NodePorts (what the load
//!   balancer sends to); its external IPs are not;
//! - nodes without an IPv4 pod CIDR or InternalIP (not yet allocated), and nodes whose
//!   CIDR or address clashes with one already taken.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use vswitch_api::{Endpoint, Protocol, Service, ServicePort, ServiceType, SessionAffinity, TrafficPolicy};

use vswitch_dataplane::tables::overlay::NodeSpec;
use vswitch_dataplane::wire::MacAddr;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
/// flannel's annotations on a Node running its vxlan backend.
const FLANNEL_BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
const FLANNEL_BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";

/// A Service by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

/// Something not served, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// `namespace/name` (and `:port`), or a node's name.
    pub what: String,
    pub why: &'static str,
}

fn skip(out: &mut Vec<Skipped>, what: String, why: &'static str) {
    out.push(Skipped { what, why });
}

/// The Service an EndpointSlice belongs to (by its `kubernetes.io/service-name` label).
pub fn slice_service(slice: &EndpointSlice) -> Option<ServiceKey> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ServiceKey { namespace: slice.metadata.namespace.clone().unwrap_or_default(), name: name.clone() })
}

/// A Service's namespace and name.
pub fn service_key(svc: &K8sService) -> ServiceKey {
    ServiceKey {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
    }
}

/// One Service with its EndpointSlices, as this node (`node_name`) serves it; `None`
/// (and the reason in `skipped`) when it is not served.
pub fn service(
    svc: &K8sService,
    slices: &[&EndpointSlice],
    node_name: &str,
    skipped: &mut Vec<Skipped>,
) -> Option<Service> {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let id = format!("{ns}/{name}");
    let Some(spec) = &svc.spec else {
        skip(skipped, id, "no spec");
        return None;
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        skip(skipped, id, "ExternalName: a DNS alias, no virtual IP");
        return None;
    }
    let ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(list), _) if !list.is_empty() => list.iter().map(String::as_str).collect(),
        (_, Some(one)) => vec![one.as_str()],
        _ => vec![],
    };
    if ips.is_empty() || ips.contains(&"None") {
        skip(skipped, id, "headless: no virtual IP (DNS returns the pods)");
        return None;
    }
    let Some(cluster_ip) = ips.iter().find_map(|ip| ip.parse::<Ipv4Addr>().ok()) else {
        skip(skipped, id, "IPv6 only: the data path is IPv4");
        return None;
    };
    let node_ports = matches!(kind, "NodePort" | "LoadBalancer");
    let mut slices: Vec<&EndpointSlice> =
        slices.iter().copied().filter(|s| s.address_type == "IPv4").collect();
    // In the same order however they were found (a store's hash map after a listing, the
    // index after a change): the order decides Maglev's slots and which slice speaks for
    // an endpoint listed twice, and a listing must not reshuffle new flows.
    slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    let mut ports = Vec::new();
    for p in spec.ports.as_deref().unwrap_or_default() {
        let port_name = p.name.clone().unwrap_or_default();
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            _ => {
                skip(skipped, format!("{id}:{}", p.port), "SCTP is not served");
                continue;
            }
        };
        let Ok(port) = u16::try_from(p.port) else { continue };
        // The endpoints' port: what the slices resolved (a named targetPort is
        // resolved per pod), else the Service's own number.
        let resolved = slices.iter().find_map(|s| {
            s.ports.as_deref().unwrap_or_default().iter().find_map(|sp| {
                let same_name = sp.name.clone().unwrap_or_default() == port_name;
                let same_proto =
                    sp.protocol.as_deref().unwrap_or("TCP") == p.protocol.as_deref().unwrap_or("TCP");
                (same_name && same_proto).then_some(sp.port).flatten()
            })
        });
        let target_port = match (resolved, &p.target_port) {
            (Some(n), _) => u16::try_from(n).unwrap_or(port),
            (None, Some(IntOrString::Int(n))) => u16::try_from(*n).unwrap_or(port),
            _ => port,
        };
        let node_port = if node_ports { p.node_port.and_then(|n| u16::try_from(n).ok()) } else { None };
        ports.push(ServicePort { name: port_name, protocol, port, target_port, node_port });
    }
    if ports.is_empty() {
        skip(skipped, id, "no TCP or UDP port");
        return None;
    }
    let mut endpoints = Vec::new();
    let mut seen = HashSet::new();
    for s in &slices {
        for e in &s.endpoints {
            let c = e.conditions.as_ref();
            // Unset conditions mean ready (and serving as ready), not terminating.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let local = e.node_name.as_deref() == Some(node_name);
            for a in &e.addresses {
                let Ok(ip) = a.parse::<Ipv4Addr>() else { continue };
                // An endpoint moving between slices shows in both for a moment.
                if seen.insert(ip) {
                    endpoints.push(Endpoint { ip, ready, serving, terminating, local });
                }
            }
        }
    }
    let affinity = spec.session_affinity.as_deref() == Some("ClientIP");
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .and_then(|t| u32::try_from(t).ok())
        .unwrap_or(DEFAULT_AFFINITY_TIMEOUT);
    let policy = |p: &Option<String>| match p.as_deref() {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    Some(Service {
        namespace: ns,
        name,
        cluster_ip,
        service_type: if ports.iter().any(|p| p.node_port.is_some()) {
            ServiceType::NodePort
        } else {
            ServiceType::ClusterIP
        },
        ports,
        endpoints,
        session_affinity: if affinity { SessionAffinity::ClientIP } else { SessionAffinity::None },
        session_affinity_timeout: timeout,
        external_traffic_policy: policy(&spec.external_traffic_policy),
        internal_traffic_policy: policy(&spec.internal_traffic_policy),
    })
}

/// This node as its Node object describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfNode {
    pub pod_cidr: Option<Ipv4Net>,
    pub internal_ip: Option<Ipv4Addr>,
}

fn ipv4_cidrs(node: &Node) -> Vec<Ipv4Net> {
    let spec = node.spec.as_ref();
    let list: Vec<&String> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(l) if !l.is_empty() => l.iter().collect(),
        _ => spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
    };
    list.iter().filter_map(|c| c.parse::<Ipv4Net>().ok()).map(|c| c.trunc()).collect()
}

fn internal_ipv4(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

/// The VTEP MAC flannel's vxlan backend announces for a node it runs on.
fn flannel_vtep_mac(node: &Node) -> Option<MacAddr> {
    let annotations: &BTreeMap<String, String> = node.metadata.annotations.as_ref()?;
    if annotations.get(FLANNEL_BACKEND_TYPE).map(String::as_str) != Some("vxlan") {
        return None;
    }
    let data: serde_json::Value = serde_json::from_str(annotations.get(FLANNEL_BACKEND_DATA)?).ok()?;
    data.get("VtepMAC")?.as_str()?.parse().ok()
}

/// The other nodes (sorted by name), and this node (`self_name`) if it is among them.
pub fn nodes<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    self_name: &str,
) -> (Vec<NodeSpec>, Option<SelfNode>, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let mut me = None;
    let mut sorted: Vec<&Node> = nodes.into_iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut out: Vec<NodeSpec> = Vec::new();
    for n in sorted {
        let name = n.metadata.name.clone().unwrap_or_default();
        let cidrs = ipv4_cidrs(n);
        let ip = internal_ipv4(n);
        if name == self_name {
            me = Some(SelfNode { pod_cidr: cidrs.first().copied(), internal_ip: ip });
            continue;
        }
        let Some(ip) = ip else {
            skip(&mut skipped, name, "no IPv4 InternalIP");
            continue;
        };
        if cidrs.is_empty() {
            skip(&mut skipped, name, "no IPv4 pod CIDR allocated yet");
            continue;
        }
        out.push(NodeSpec { name, ip, pod_cidrs: cidrs, vtep_mac: flannel_vtep_mac(n) });
    }
    (out, me, skipped)
}

/// Drops the nodes that clash with an earlier one (same address, overlapping CIDRs) or
/// with this node's `local` CIDR, so one misconfigured Node costs only itself.
pub fn without_conflicts(
    nodes: Vec<NodeSpec>,
    local: Ipv4Net,
    local_ip: Option<Ipv4Addr>,
) -> (Vec<NodeSpec>, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let mut ips: HashSet<Ipv4Addr> = local_ip.into_iter().collect();
    let mut taken: Vec<Ipv4Net> = vec![local];
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        if !ips.insert(n.ip) {
            skip(&mut skipped, n.name, "its address is another node's");
            continue;
        }
        let overlaps = n.pod_cidrs.iter().any(|c| taken.iter().any(|t| t.contains(c) || c.contains(t)));
        if overlaps {
            ips.remove(&n.ip);
            skip(&mut skipped, n.name, "its pod CIDR overlaps another node's (or this node's)");
            continue;
        }
        taken.extend(&n.pod_cidrs);
        out.push(n);
    }
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Services, with their endpoints from `slices`, as this node (`node_name`) serves
    /// them, sorted by namespace and name: what a listing gives the cluster module.
    fn services(
        services: &[K8sService],
        slices: &[EndpointSlice],
        node_name: &str,
    ) -> (Vec<Service>, Vec<Skipped>) {
        let mut skipped = Vec::new();
        let mut out = Vec::new();
        for svc in services {
            let key = service_key(svc);
            let mine: Vec<&EndpointSlice> =
                slices.iter().filter(|s| slice_service(s).as_ref() == Some(&key)).collect();
            out.extend(service(svc, &mine, node_name, &mut skipped));
        }
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        (out, skipped)
    }

    fn list<T: serde::de::DeserializeOwned>(json: &str) -> Vec<T> {
        let v: serde_json::Value = serde_json::from_str(json).expect("fixture JSON");
        serde_json::from_value(v["items"].clone()).expect("fixture items")
    }

    fn fixtures() -> (Vec<K8sService>, Vec<EndpointSlice>, Vec<Node>) {
        (
            list(include_str!("fixtures/services.json")),
            list(include_str!("fixtures/endpointslices.json")),
            list(include_str!("fixtures/nodes.json")),
        )
    }

    #[test]
    fn a_services_slices_give_the_same_endpoints_in_any_order() {
        let (svcs, slices, _) = fixtures();
        let api = svcs.iter().find(|s| s.metadata.name.as_deref() == Some("api")).unwrap();
        let first = slices
            .iter()
            .find(|s| s.address_type == "IPv4" && slice_service(s).is_some_and(|k| k.name == "api"))
            .unwrap();
        // A second IPv4 slice of it, its endpoint also listed (not ready) in the first.
        let mut second = first.clone();
        second.metadata.name = Some("api-second".into());
        second.endpoints.truncate(1);
        second.endpoints[0].addresses = vec!["10.244.2.99".into()];
        let mut first = first.clone();
        let mut twice = second.endpoints[0].clone();
        twice.conditions = Some(Default::default());
        twice.conditions.as_mut().unwrap().ready = Some(false);
        first.endpoints.push(twice);
        let mine = vec![&first, &second];
        let reversed: Vec<&EndpointSlice> = mine.iter().rev().copied().collect();
        let one = service(api, &mine, "node-a", &mut Vec::new()).unwrap();
        let other = service(api, &reversed, "node-a", &mut Vec::new()).unwrap();
        assert_eq!(one, other);
    }

    #[test]
    fn services_from_a_recorded_cluster() {
        let (svcs, slices, _) = fixtures();
        let (out, skipped) = services(&svcs, &slices, "node-a");
        let names: Vec<String> = out.iter().map(|s| format!("{}/{}", s.namespace, s.name)).collect();
        assert_eq!(
            names,
            ["default/kubernetes", "edge/ingress", "kube-system/kube-dns", "shop/api", "shop/web"]
        );

        let dns = &out[2];
        assert_eq!(dns.cluster_ip, Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(dns.service_type, ServiceType::ClusterIP);
        assert_eq!(dns.ports.len(), 3);
        assert_eq!(
            (dns.ports[0].protocol, dns.ports[0].port, dns.ports[0].target_port),
            (Protocol::Udp, 53, 53)
        );
        assert_eq!(
            dns.endpoints.iter().map(|e| (e.ip.to_string(), e.local)).collect::<Vec<_>>(),
            [("10.244.1.3".to_string(), true), ("10.244.2.4".to_string(), false)]
        );

        let web = &out[4];
        assert_eq!(web.service_type, ServiceType::NodePort);
        assert_eq!(web.ports.len(), 1, "the SCTP port is not served");
        let http = &web.ports[0];
        assert_eq!(
            (http.port, http.target_port, http.node_port),
            (80, 8080, Some(30080)),
            "named targetPort resolved"
        );
        assert_eq!((web.session_affinity, web.session_affinity_timeout), (SessionAffinity::ClientIP, 600));
        assert_eq!(web.external_traffic_policy, TrafficPolicy::Local);
        let conditions: Vec<(bool, bool, bool, bool)> =
            web.endpoints.iter().map(|e| (e.ready, e.serving, e.terminating, e.local)).collect();
        assert_eq!(
            conditions,
            [(true, true, false, true), (false, true, true, false), (false, false, false, false)]
        );

        let ingress = &out[1];
        assert_eq!(ingress.service_type, ServiceType::NodePort, "a LoadBalancer is served by its NodePorts");
        assert_eq!(
            (ingress.ports[0].node_port, ingress.internal_traffic_policy),
            (Some(31443), TrafficPolicy::Local)
        );

        let api = &out[3];
        assert_eq!(api.cluster_ip, Ipv4Addr::new(10, 96, 44, 7), "dual-stack: its IPv4 cluster IP");
        assert_eq!(api.endpoints.len(), 1, "the IPv6 slice is skipped");

        let kubernetes = &out[0];
        assert_eq!(
            (kubernetes.ports[0].target_port, kubernetes.endpoints[0].ip),
            (6443, Ipv4Addr::new(192, 168, 50, 1))
        );

        let why: BTreeMap<&str, &str> = skipped.iter().map(|s| (s.what.as_str(), s.why)).collect();
        assert!(why["shop/db"].starts_with("headless"));
        assert!(why["shop/v6only"].starts_with("IPv6 only"));
        assert!(why["shop/payments"].starts_with("ExternalName"));
        assert!(why["shop/web:9132"].contains("SCTP"));
        assert_eq!(skipped.len(), 4);
    }

    #[test]
    fn translated_services_build_a_service_table() {
        let (svcs, slices, _) = fixtures();
        let (out, _) = services(&svcs, &slices, "node-a");
        let specs = crate::services_file::port_specs(&out);
        let table = vswitch_dataplane::tables::services::ServiceTable::build(
            &specs,
            Some(Ipv4Addr::new(192, 168, 50, 1)),
            vswitch_dataplane::tables::services::DEFAULT_HAIRPIN_IP,
            &mut vswitch_dataplane::tables::services::BuildMemory::default(),
        );
        assert!(
            table
                .by_vip(Ipv4Addr::new(10, 96, 0, 10), 53, vswitch_dataplane::wire::parse::IPPROTO_UDP)
                .is_some()
        );
        let web =
            table.by_node_port(30080, vswitch_dataplane::wire::parse::IPPROTO_TCP).expect("the NodePort");
        assert_eq!(web.local_backends.len(), 1, "Local policy: the one ready endpoint on node-a");
    }

    #[test]
    fn nodes_from_a_recorded_cluster() {
        let (_, _, ns) = fixtures();
        let (others, me, skipped) = nodes(&ns, "node-a");
        assert_eq!(
            me,
            Some(SelfNode {
                pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
                internal_ip: Some(Ipv4Addr::new(192, 168, 50, 1))
            })
        );
        assert_eq!(others.len(), 1);
        let b = &others[0];
        assert_eq!((b.name.as_str(), b.ip), ("node-b", Ipv4Addr::new(192, 168, 50, 2)));
        assert_eq!(
            b.pod_cidrs,
            vec!["10.244.2.0/24".parse::<Ipv4Net>().unwrap()],
            "the IPv6 CIDR is skipped"
        );
        assert_eq!(b.vtep_mac, Some("a6:3f:1e:90:7b:22".parse().unwrap()), "flannel's VTEP MAC");
        assert_eq!(skipped, vec![Skipped { what: "node-c".into(), why: "no IPv4 pod CIDR allocated yet" }]);
    }

    #[test]
    fn clashing_nodes_cost_only_themselves() {
        let n = |name: &str, ip: [u8; 4], cidr: &str| NodeSpec {
            name: name.into(),
            ip: ip.into(),
            pod_cidrs: vec![cidr.parse().unwrap()],
            vtep_mac: None,
        };
        let (kept, skipped) = without_conflicts(
            vec![
                n("b", [192, 168, 50, 2], "10.244.2.0/24"),
                n("c", [192, 168, 50, 2], "10.244.3.0/24"),
                n("d", [192, 168, 50, 4], "10.244.2.128/25"),
                n("e", [192, 168, 50, 5], "10.244.1.0/24"),
                n("f", [192, 168, 50, 6], "10.244.6.0/24"),
            ],
            "10.244.1.0/24".parse().unwrap(),
            Some(Ipv4Addr::new(192, 168, 50, 1)),
        );
        assert_eq!(kept.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["b", "f"]);
        assert_eq!(skipped.iter().map(|s| s.what.as_str()).collect::<Vec<_>>(), ["c", "d", "e"]);
    }
}
