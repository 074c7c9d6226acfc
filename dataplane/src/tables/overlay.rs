//! The remote nodes: other nodes' pod CIDRs, where VXLAN to them goes and what VXLAN
//! from them may carry (the `overlay` stages use it).
//!
//! The VTEP MAC of a node running vswitchd is its gateway MAC; every node of a cluster
//! usually has the same one, so the default VTEP MAC of a remote node is this node's
//! gateway MAC. A node running the kernel's `vxlan` device names its device's MAC.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::ports::{PortEntry, PortKind};
use crate::ids::{NodeIndex, PortId, SegmentId};
use crate::wire::{Ipv4Meta, L4, MacAddr, vxlan};

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Another node, as configured or learned from the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    /// The node's underlay address: VXLAN to and from it.
    pub ip: Ipv4Addr,
    pub pod_cidrs: Vec<Ipv4Net>,
    /// Inner destination MAC for frames to the node; `None`: this node's gateway MAC
    /// (right for every node running vswitchd with the same gateway MAC).
    pub vtep_mac: Option<MacAddr>,
}

/// A remote node as the data path uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidrs: Vec<Ipv4Net>,
    pub vtep_mac: MacAddr,
    /// The underlay MAC its packets go to (it, or the router toward it), when the
    /// kernel has resolved it and the fast path can use it.
    pub next_hop_mac: Option<MacAddr>,
}

/// The AF_XDP underlay: the node's underlay interface taken over for VXLAN. Frames to
/// a node whose next hop is resolved leave here with full outer headers; the others
/// through the kernel socket, whose sending makes the kernel resolve the next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastPath {
    pub port: PortId,
    /// The interface's MAC: the outer source.
    pub mac: MacAddr,
}

/// The overlay's fixed settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverlaySettings {
    /// 24-bit VXLAN network identifier.
    pub vni: u32,
    /// UDP destination port of VXLAN traffic, both ways.
    pub udp_port: u16,
    /// The underlay network's MTU; inner IP packets may be 50 bytes shorter.
    pub underlay_mtu: u16,
    /// The outer source address; unspecified: the kernel picks it (socket underlay).
    pub local_ip: Ipv4Addr,
    /// The segment of this node's pods and its gateway.
    pub segment: SegmentId,
    pub gateway_ip: Ipv4Addr,
    pub gateway_mac: MacAddr,
    pub local_cidr: Ipv4Net,
}

/// Why a set of nodes does not make a valid overlay table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverlayError {
    #[error("node {node}: pod CIDR {cidr} overlaps this node's pod CIDR {local}")]
    OverlapsLocal { node: String, cidr: Ipv4Net, local: Ipv4Net },
    #[error("nodes {a} and {b}: pod CIDRs {cidr_a} and {cidr_b} overlap")]
    Overlap { a: String, cidr_a: Ipv4Net, b: String, cidr_b: Ipv4Net },
    #[error("nodes {a} and {b} have the same address {ip}")]
    DuplicateIp { a: String, b: String, ip: Ipv4Addr },
    #[error("node {0}: name used twice")]
    DuplicateName(String),
    #[error("more than {} nodes", u16::MAX)]
    TooMany,
}

impl OverlayError {
    /// Whether the conflict involves the node named `name`.
    pub fn involves(&self, name: &str) -> bool {
        match self {
            OverlayError::OverlapsLocal { node, .. } | OverlayError::DuplicateName(node) => node == name,
            OverlayError::Overlap { a, b, .. } | OverlayError::DuplicateIp { a, b, .. } => {
                a == name || b == name
            }
            OverlayError::TooMany => false,
        }
    }
}

/// Remote nodes, indexed for the data path: by destination (longest prefix of their pod
/// CIDRs) and by underlay address (who sent a VXLAN frame).
#[derive(Clone, Debug)]
pub struct OverlayTable {
    pub settings: OverlaySettings,
    /// The underlay port encapsulated frames leave by; `None`: no underlay yet.
    pub tx_port: Option<PortId>,
    /// The AF_XDP underlay, when it is up and the outer source address is known.
    pub fast: Option<FastPath>,
    /// What a decapsulated frame arrives on: the gateway's side of the overlay.
    ingress: Option<PortEntry>,
    nodes: Vec<RemoteNode>,
    /// Per prefix length (longest first): network address → node.
    by_prefix: Vec<(u8, FastMap<u32, NodeIndex>)>,
    by_ip: FastMap<u32, NodeIndex>,
}

impl Default for OverlayTable {
    fn default() -> Self {
        OverlayTable {
            settings: OverlaySettings {
                vni: 1,
                udp_port: vxlan::DEFAULT_PORT,
                underlay_mtu: 1500,
                local_ip: Ipv4Addr::UNSPECIFIED,
                segment: SegmentId(0),
                gateway_ip: Ipv4Addr::UNSPECIFIED,
                gateway_mac: MacAddr([0; 6]),
                local_cidr: Ipv4Net::default(),
            },
            tx_port: None,
            fast: None,
            ingress: None,
            nodes: Vec::new(),
            by_prefix: Vec::new(),
            by_ip: FastMap::default(),
        }
    }
}

impl OverlayTable {
    /// Builds the table, refusing nodes whose CIDRs overlap each other or this node's,
    /// or whose addresses or names repeat.
    pub fn build(
        settings: OverlaySettings,
        tx_port: Option<PortId>,
        specs: &[NodeSpec],
    ) -> Result<OverlayTable, OverlayError> {
        if specs.len() > usize::from(u16::MAX) {
            return Err(OverlayError::TooMany);
        }
        let mut t = OverlayTable { settings, tx_port, ..Default::default() };
        let mut cidrs: Vec<(Ipv4Net, &str)> = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let index = NodeIndex(i as u16);
            if specs[..i].iter().any(|s| s.name == spec.name) {
                return Err(OverlayError::DuplicateName(spec.name.clone()));
            }
            if let Some(prev) = t.by_ip.insert(u32::from(spec.ip), index) {
                return Err(OverlayError::DuplicateIp {
                    a: specs[prev.index()].name.clone(),
                    b: spec.name.clone(),
                    ip: spec.ip,
                });
            }
            for cidr in &spec.pod_cidrs {
                let cidr = cidr.trunc();
                let local = settings.local_cidr;
                if local.contains(&cidr) || cidr.contains(&local) {
                    return Err(OverlayError::OverlapsLocal { node: spec.name.clone(), cidr, local });
                }
                if let Some((other, name)) = cidrs.iter().find(|(c, _)| c.contains(&cidr) || cidr.contains(c))
                {
                    return Err(OverlayError::Overlap {
                        a: (*name).to_string(),
                        cidr_a: *other,
                        b: spec.name.clone(),
                        cidr_b: cidr,
                    });
                }
                cidrs.push((cidr, &spec.name));
                let len = cidr.prefix_len();
                let slot = match t.by_prefix.iter().position(|(l, _)| *l == len) {
                    Some(s) => s,
                    None => {
                        t.by_prefix.push((len, FastMap::default()));
                        t.by_prefix.len() - 1
                    }
                };
                t.by_prefix[slot].1.insert(u32::from(cidr.network()), index);
            }
            t.nodes.push(RemoteNode {
                name: spec.name.clone(),
                ip: spec.ip,
                pod_cidrs: spec.pod_cidrs.iter().map(Ipv4Net::trunc).collect(),
                vtep_mac: spec.vtep_mac.unwrap_or(settings.gateway_mac),
                next_hop_mac: None,
            });
        }
        t.by_prefix.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        t.ingress = tx_port.map(|id| PortEntry {
            id,
            name: "overlay".into(),
            kind: PortKind::Overlay,
            segment: settings.segment,
            mac: None,
            ipv4: vec![],
            ipv6: vec![],
            port_security: false,
            mtu: t.inner_mtu(),
            tx_workers: Default::default(),
            offloads: false,
            tunnel: false,
        });
        Ok(t)
    }

    /// Sends over the AF_XDP underlay `fast` to each node whose next hop `next_hop`
    /// knows. Needs an outer source address: without one the table is left as it is.
    pub fn with_fast_path(mut self, fast: FastPath, next_hop: impl Fn(Ipv4Addr) -> Option<MacAddr>) -> Self {
        if self.settings.local_ip.is_unspecified() {
            return self;
        }
        self.fast = Some(fast);
        for n in &mut self.nodes {
            n.next_hop_mac = next_hop(n.ip);
        }
        self
    }

    /// What a decapsulated frame arrives on: the gateway's side of the overlay (absent
    /// until there is an underlay).
    #[inline]
    pub fn ingress(&self) -> Option<&PortEntry> {
        self.ingress.as_ref()
    }

    /// Largest inner IP packet that fits the underlay.
    #[inline]
    pub fn inner_mtu(&self) -> u16 {
        // The inner Ethernet header rides inside the outer IP packet too.
        self.settings.underlay_mtu.saturating_sub(vxlan::OUTER_LEN as u16)
    }

    /// True when no remote node is known: the stages have nothing to do.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn nodes(&self) -> &[RemoteNode] {
        &self.nodes
    }

    #[inline]
    pub fn node(&self, index: NodeIndex) -> Option<&RemoteNode> {
        self.nodes.get(index.index())
    }

    /// The node whose pod CIDR holds `dst` (longest prefix).
    // A plain loop, inlined: as `find_map` the compiler made it a call of its own once
    // the pipeline's stage order had a second copy (+25 instructions a frame).
    #[inline(always)]
    pub fn route(&self, dst: Ipv4Addr) -> Option<NodeIndex> {
        let dst = u32::from(dst);
        for (len, map) in &self.by_prefix {
            let mask = if *len == 0 { 0 } else { u32::MAX << (32 - len) };
            if let Some(node) = map.get(&(dst & mask)) {
                return Some(*node);
            }
        }
        None
    }

    /// A packet to the VXLAN port of a node (this one or another).
    #[inline]
    pub fn is_vxlan_to_a_node(&self, ip: &Ipv4Meta) -> bool {
        matches!(ip.l4, L4::Udp { dst_port, .. } if dst_port == self.settings.udp_port)
            && (ip.dst == self.settings.local_ip || self.by_ip.contains_key(&u32::from(ip.dst)))
    }

    /// The node with underlay address `ip`.
    #[inline]
    pub fn node_by_ip(&self, ip: Ipv4Addr) -> Option<NodeIndex> {
        self.by_ip.get(&u32::from(ip)).copied()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::mac;

    pub(crate) const GW: u32 = 0xffff;

    pub(crate) fn settings() -> OverlaySettings {
        OverlaySettings {
            vni: 1,
            udp_port: 4789,
            underlay_mtu: 1500,
            local_ip: Ipv4Addr::new(192, 168, 50, 1),
            segment: SegmentId(0),
            gateway_ip: Ipv4Addr::new(10, 244, 1, 1),
            gateway_mac: mac(GW),
            local_cidr: "10.244.1.0/24".parse().unwrap(),
        }
    }

    pub(crate) fn node(name: &str, last: u8, cidr: &str) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            ip: Ipv4Addr::new(192, 168, 50, last),
            pod_cidrs: vec![cidr.parse().unwrap()],
            vtep_mac: None,
        }
    }

    #[test]
    fn routes_by_longest_prefix_and_knows_senders() {
        let mut b = node("b", 2, "10.244.2.0/24");
        b.pod_cidrs.push("10.245.0.0/16".parse().unwrap());
        let mut c = node("c", 3, "10.245.7.0/24");
        c.vtep_mac = Some(mac(0xc));
        let err = OverlayTable::build(settings(), Some(PortId(9)), &[b.clone(), c.clone()]).unwrap_err();
        assert!(matches!(err, OverlayError::Overlap { .. }), "{err}");
        c.pod_cidrs = vec!["10.246.7.0/24".parse().unwrap()];
        let t = OverlayTable::build(settings(), Some(PortId(9)), &[b, c]).unwrap();
        assert_eq!(t.route(Ipv4Addr::new(10, 244, 2, 77)), Some(NodeIndex(0)));
        assert_eq!(t.route(Ipv4Addr::new(10, 245, 200, 1)), Some(NodeIndex(0)));
        assert_eq!(t.route(Ipv4Addr::new(10, 246, 7, 1)), Some(NodeIndex(1)));
        assert_eq!(t.route(Ipv4Addr::new(10, 244, 1, 5)), None, "local");
        assert_eq!(t.node_by_ip(Ipv4Addr::new(192, 168, 50, 3)), Some(NodeIndex(1)));
        assert_eq!(t.node(NodeIndex(0)).unwrap().vtep_mac, mac(GW), "default: the shared gateway MAC");
        assert_eq!(t.node(NodeIndex(1)).unwrap().vtep_mac, mac(0xc));
        assert_eq!(t.inner_mtu(), 1450);
    }

    #[test]
    fn refuses_conflicting_nodes() {
        let s = settings();
        let local = OverlayTable::build(s, None, &[node("b", 2, "10.244.0.0/16")]).unwrap_err();
        assert!(matches!(local, OverlayError::OverlapsLocal { .. }));
        let same_ip = [node("b", 2, "10.244.2.0/24"), node("c", 2, "10.244.3.0/24")];
        assert!(matches!(OverlayTable::build(s, None, &same_ip), Err(OverlayError::DuplicateIp { .. })));
        let same_name = [node("b", 2, "10.244.2.0/24"), node("b", 3, "10.244.3.0/24")];
        assert_eq!(
            OverlayTable::build(s, None, &same_name).unwrap_err(),
            OverlayError::DuplicateName("b".into())
        );
    }
}
