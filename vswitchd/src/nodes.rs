//! The other nodes: those fixed in the config, those of the watched nodes file or the
//! cluster, and where VXLAN to each leaves (the socket underlay, or the uplink's
//! AF_XDP fast path once the kernel has resolved the node's next hop) — rebuilt into
//! the overlay table and published whenever any of it changes.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use vswitch_api::{NodeSource, NodesView, RemoteNode};
use vswitch_dataplane::ids::PortId;
use vswitch_dataplane::tables::overlay::{FastPath, NodeSpec, OverlayTable};
use vswitch_dataplane::wire::MacAddr;

use crate::config::{Config, ConfigError};
use crate::nodes_file;
use crate::plane::Plane;
use crate::ports::kernel::Kernel;

/// Where encapsulated frames can leave.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Underlays {
    /// The kernel-socket underlay port.
    pub socket: Option<PortId>,
    /// The uplink, as the AF_XDP fast path.
    pub fast: Option<FastPath>,
    /// The outer source address when the configuration names none (the tunnel TAP's:
    /// the kernel fills in no address for it).
    pub local_ip: Option<Ipv4Addr>,
}

#[derive(Default)]
pub(crate) struct NodeController {
    /// Nodes from the nodes file or, in cluster mode, the cluster (those from the
    /// config are in the config).
    file_nodes: Vec<NodeSpec>,
    /// The nodes came from the cluster.
    from_cluster: bool,
    /// The nodes file's content last applied or rejected.
    last_text: Option<Option<String>>,
    /// Why that content was rejected.
    file_error: Option<String>,
    /// Underlay MACs of the nodes' next hops, as the kernel resolved them on the uplink.
    next_hops: HashMap<Ipv4Addr, MacAddr>,
    generation: u64,
}

impl NodeController {
    /// Every remote node: the config's first, then the nodes file's (or the cluster's).
    fn all_nodes(&self, config: &Config) -> Vec<NodeSpec> {
        config.overlay.nodes.iter().chain(&self.file_nodes).cloned().collect()
    }

    /// The nodes from the nodes file or the cluster.
    pub(crate) fn learned(&self) -> &[NodeSpec] {
        &self.file_nodes
    }

    /// The pod CIDRs of every remote node.
    pub(crate) fn remote_pod_cidrs(&self, config: &Config) -> Vec<ipnet::Ipv4Net> {
        self.all_nodes(config).iter().flat_map(|n| n.pod_cidrs.iter().copied()).collect()
    }

    /// Whether any remote node is known.
    pub(crate) fn any(&self, config: &Config) -> bool {
        !config.overlay.nodes.is_empty() || !self.file_nodes.is_empty()
    }

    /// The overlay table of the config's nodes alone, before anything else is known.
    pub(crate) fn initial(
        config: &Config,
    ) -> Result<OverlayTable, vswitch_dataplane::tables::overlay::OverlayError> {
        OverlayTable::build(config.overlay_settings(), None, &config.overlay.nodes)
    }

    /// Rebuilds the overlay table and publishes it. The nodes were checked together
    /// when they were taken, so building cannot fail for a reason they bring.
    pub(crate) fn publish(&mut self, config: &Config, plane: &mut Plane, underlays: Underlays) {
        let mut settings = config.overlay_settings();
        if let Some(ip) = underlays.local_ip.filter(|_| settings.local_ip.is_unspecified()) {
            settings.local_ip = ip;
        }
        let built =
            OverlayTable::build(settings, underlays.socket, &self.all_nodes(config)).map(|t| match underlays
                .fast
            {
                Some(f) => t.with_fast_path(f, |ip| self.next_hops.get(&ip).copied()),
                None => t,
            });
        match built {
            Ok(t) => {
                self.generation += 1;
                plane.tables.set_overlay(Arc::new(t));
                plane.publish_or_log();
            }
            Err(e) => tracing::error!(error = %e, "overlay table not rebuilt"),
        }
    }

    /// Takes the nodes file's content (`None`: absent, no nodes from it); true if the
    /// nodes changed (publish them then). On an error, the nodes routed before stay.
    pub(crate) fn file_read(
        &mut self,
        config: &Config,
        text: Option<String>,
        force: bool,
    ) -> Result<bool, ConfigError> {
        if !force && self.last_text.as_ref() == Some(&text) {
            return Ok(false);
        }
        self.last_text = Some(text.clone());
        let path = config.overlay.nodes_file.clone().unwrap_or_default();
        let parsed = match &text {
            None => Ok(Vec::new()),
            Some(t) => nodes_file::parse(
                t,
                &path,
                &config.overlay.nodes,
                config.overlay_settings(),
                &config.node_name,
            ),
        };
        self.file_error = parsed.as_ref().err().map(ToString::to_string);
        let nodes = parsed?;
        if nodes == self.file_nodes {
            return Ok(false);
        }
        self.file_nodes = nodes;
        Ok(true)
    }

    /// Takes `nodes` (from the cluster), replacing the nodes of the file or of an
    /// earlier snapshot; true if that is a change. A node clashing with this one, with
    /// the config's nodes or with another is left out (and logged): one bad Node object
    /// costs only itself.
    pub(crate) fn set(&mut self, config: &Config, nodes: Vec<NodeSpec>) -> bool {
        let fixed = &config.overlay.nodes;
        let (mut kept, mut skipped) = crate::cluster::translate::without_conflicts(
            fixed.iter().cloned().chain(nodes).collect(),
            config.pod_cidr,
            config.node_ip,
        );
        // The config's own nodes come first and always stay.
        kept.retain(|n| !fixed.iter().any(|f| f.name == n.name));
        skipped.retain(|s| !fixed.iter().any(|f| f.name == s.what));
        for s in &skipped {
            tracing::warn!(node = %s.what, reason = s.why, "node from the cluster not routed to");
        }
        self.from_cluster = true;
        if kept == self.file_nodes {
            return false;
        }
        self.file_nodes = kept;
        true
    }

    /// Looks up, in the kernel's routing and neighbour tables, the underlay MAC of each
    /// node's next hop out of `uplink`; true when any changed (publish again then).
    /// Nodes the uplink does not reach directly, or whose next hop is not resolved yet,
    /// go through the kernel socket (whose traffic makes the kernel resolve it).
    pub(crate) fn refresh_next_hops(&mut self, config: &Config, kernel: &dyn Kernel, uplink: &str) -> bool {
        let nodes: Vec<Ipv4Addr> = self.all_nodes(config).iter().map(|n| n.ip).collect();
        if nodes.is_empty() && self.next_hops.is_empty() {
            return false;
        }
        match kernel.next_hop_macs(uplink, &nodes) {
            Ok(found) if found != self.next_hops => {
                tracing::info!(
                    resolved = found.len(),
                    nodes = nodes.len(),
                    "overlay next hops on the uplink"
                );
                self.next_hops = found;
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %e, "looking up the nodes' next hops; keeping the last ones");
                false
            }
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn count(&self, config: &Config) -> usize {
        config.overlay.nodes.len() + self.file_nodes.len()
    }

    /// The nodes as the API shows them; `underlay` the socket port's name, `fast`
    /// whether the uplink's fast path exists.
    pub(crate) fn view(
        &self,
        config: &Config,
        underlay: Option<String>,
        tunnel: bool,
        fast: bool,
        route_of: &dyn Fn(&ipnet::Ipv4Net) -> Option<String>,
    ) -> NodesView {
        let ov = &config.overlay;
        let gateway_mac = config.gateway_mac;
        let view = |n: &NodeSpec, source| RemoteNode {
            name: n.name.clone(),
            ip: n.ip,
            pod_cidrs: n.pod_cidrs.clone(),
            vtep_mac: n.vtep_mac.unwrap_or(gateway_mac).to_string(),
            source,
            fast_path_next_hop: fast.then(|| self.next_hops.get(&n.ip).map(ToString::to_string)).flatten(),
            from_node: n.pod_cidrs.iter().filter_map(|c| Some(format!("{c} {}", route_of(c)?))).collect(),
        };
        let source = if self.from_cluster { NodeSource::Cluster } else { NodeSource::File };
        NodesView {
            vni: ov.vni,
            port: ov.port,
            underlay_mtu: ov.underlay_mtu,
            pod_mtu: config.mtu,
            underlay,
            tunnel,
            nodes_file: ov.nodes_file.clone(),
            file_error: self.file_error.clone(),
            generation: self.generation,
            nodes: ov
                .nodes
                .iter()
                .map(|n| view(n, NodeSource::Config))
                .chain(self.file_nodes.iter().map(|n| view(n, source)))
                .collect(),
        }
    }
}
