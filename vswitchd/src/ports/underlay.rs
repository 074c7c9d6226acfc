//! The overlay's control side: the underlay port VXLAN leaves by (kernel sockets, one
//! queue per worker), and the table of remote nodes — those fixed in the config and
//! those of the watched nodes file — rebuilt and published whenever either changes.

use std::net::SocketAddrV4;
use std::sync::Arc;

use vswitch_api::{NodeSource, NodesView, RemoteNode};

use super::{AttachError, PortManager, UPLINK_SEGMENT};
use crate::config::ConfigError;
use crate::nodes_file;
use vswitch_dataplane::ids::{PortId, WorkerId, WorkerSet};
use vswitch_dataplane::port::PortQueue;
use vswitch_dataplane::port::underlay::UnderlayQueue;
use vswitch_dataplane::tables::overlay::{FastPath, NodeSpec, OverlayTable};
use vswitch_dataplane::tables::{PortEntry, SegmentConfig, UnknownArp};
use vswitch_dataplane::wire::MacAddr;

/// The overlay's state in the manager.
#[derive(Default)]
pub(super) struct Overlay {
    /// The underlay port, once up.
    pub port: Option<(PortId, Vec<WorkerId>)>,
    /// Nodes from the nodes file or, in cluster mode, the cluster (those from the
    /// config are in the config).
    pub file_nodes: Vec<NodeSpec>,
    /// The nodes came from the cluster.
    pub from_cluster: bool,
    /// The nodes file's content last applied or rejected.
    pub last_text: Option<Option<String>>,
    /// Why that content was rejected.
    pub file_error: Option<String>,
    /// Underlay MACs of the nodes' next hops, as the kernel resolved them on the uplink.
    pub next_hops: std::collections::HashMap<std::net::Ipv4Addr, MacAddr>,
    pub generation: u64,
}

impl PortManager {
    /// Opens the underlay port: VXLAN is received on the overlay port of every address
    /// of the node and sent through the kernel's routing.
    pub async fn start_underlay(&mut self) -> Result<(), AttachError> {
        let workers = self.all_workers();
        let bind = SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, self.config.overlay.port);
        let mtu = self.config.overlay.underlay_mtu;
        let queues = super::blocking(|| -> Result<Vec<Box<dyn PortQueue>>, AttachError> {
            let mut queues: Vec<Box<dyn PortQueue>> = Vec::new();
            for w in &workers {
                let mut q =
                    UnderlayQueue::open(bind, mtu).map_err(|e| AttachError::Invalid(e.to_string()))?;
                q.set_label(format!("underlay udp/{} queue {w}", bind.port()));
                queues.push(Box::new(q));
            }
            Ok(queues)
        })?;
        self.ensure_uplink_segment()?;
        let id = self.free_id()?;
        self.add_queues(id, queues, &workers)?;
        let added = self.builder.add_port(PortEntry::uplink(
            id,
            format!("vxlan/{}", bind.port()),
            UPLINK_SEGMENT,
            mtu,
            WorkerSet::all(workers.len()),
        ));
        if let Err(e) = added.map_err(|e| AttachError::Invalid(e.to_string())) {
            self.remove_queues(id, &workers, false);
            return Err(e);
        }
        self.overlay.port = Some((id, workers));
        self.publish_overlay();
        tracing::info!(
            port = %id,
            udp = bind.port(),
            vni = self.config.overlay.vni,
            "underlay up: VXLAN to and from other nodes"
        );
        Ok(())
    }

    pub(super) fn ensure_uplink_segment(&mut self) -> Result<(), AttachError> {
        if self.builder.segment(UPLINK_SEGMENT).is_none() {
            self.builder
                .add_segment(SegmentConfig {
                    id: UPLINK_SEGMENT,
                    gateway: None,
                    unknown_arp: UnknownArp::Drop,
                })
                .map_err(|e| AttachError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    /// Every remote node: the config's first, then the nodes file's.
    fn all_nodes(&self) -> Vec<NodeSpec> {
        self.config.overlay.nodes.iter().chain(&self.overlay.file_nodes).cloned().collect()
    }

    /// Rebuilds the overlay table and publishes it. The nodes were checked together
    /// when they were taken, so building cannot fail for a reason they bring.
    pub(super) fn publish_overlay(&mut self) {
        let settings = self.config.overlay_settings();
        let tx = self.overlay.port.as_ref().map(|(id, _)| *id);
        let fast = self.uplink.as_ref().map(|u| FastPath { port: u.id, mac: u.mac });
        let built = OverlayTable::build(settings, tx, &self.all_nodes()).map(|t| match fast {
            Some(f) => t.with_fast_path(f, |ip| self.overlay.next_hops.get(&ip).copied()),
            None => t,
        });
        match built {
            Ok(t) => {
                self.overlay.generation += 1;
                self.builder.set_overlay(Arc::new(t));
                self.publish_or_log();
            }
            Err(e) => tracing::error!(error = %e, "overlay table not rebuilt"),
        }
    }

    /// Takes the nodes file's content (`None`: absent, no nodes from it) and publishes
    /// the nodes if they changed. On an error, the nodes routed before stay.
    pub fn nodes_file_read(&mut self, text: Option<String>, force: bool) -> Result<bool, ConfigError> {
        if !force && self.overlay.last_text.as_ref() == Some(&text) {
            return Ok(false);
        }
        self.overlay.last_text = Some(text.clone());
        let path = self.config.overlay.nodes_file.clone().unwrap_or_default();
        let parsed = match &text {
            None => Ok(Vec::new()),
            Some(t) => nodes_file::parse(
                t,
                &path,
                &self.config.overlay.nodes,
                self.config.overlay_settings(),
                &self.config.node_name,
            ),
        };
        self.overlay.file_error = parsed.as_ref().err().map(ToString::to_string);
        let nodes = parsed?;
        if nodes == self.overlay.file_nodes {
            return Ok(false);
        }
        self.overlay.file_nodes = nodes;
        self.publish_overlay();
        self.sync_steered_ports();
        tracing::info!(
            nodes = self.config.overlay.nodes.len() + self.overlay.file_nodes.len(),
            generation = self.overlay.generation,
            "nodes applied"
        );
        Ok(true)
    }

    /// Looks up, in the kernel's routing and neighbour tables, the underlay MAC of each
    /// node's next hop out of the uplink; publishes the overlay again when any changed.
    /// Nodes the uplink does not reach directly, or whose next hop is not resolved yet,
    /// go through the kernel socket (whose traffic makes the kernel resolve it).
    pub async fn refresh_next_hops(&mut self) {
        let Some(uplink) = self.uplink.as_ref().map(|u| u.name.clone()) else { return };
        let nodes = self.all_nodes();
        if nodes.is_empty() && self.overlay.next_hops.is_empty() {
            return;
        }
        let found = async {
            let index = self.netlink.index_of(&uplink).await?;
            let neighbours = self.netlink.neighbours(index).await?;
            let mut found = std::collections::HashMap::new();
            for n in &nodes {
                // A node whose route cannot be looked up keeps to the socket; the others
                // are not held back by it.
                let hop = match self.netlink.next_hop(n.ip).await {
                    Ok(hop) => hop,
                    Err(e) => {
                        tracing::debug!(node = %n.name, error = %e, "no next hop");
                        continue;
                    }
                };
                if let Some((oif, hop)) = hop
                    && oif == index
                    && let Some(mac) = neighbours.get(&hop)
                {
                    found.insert(n.ip, MacAddr(*mac));
                }
            }
            Ok::<_, vswitch_sys::SysError>(found)
        }
        .await;
        match found {
            Ok(found) if found != self.overlay.next_hops => {
                tracing::info!(
                    resolved = found.len(),
                    nodes = nodes.len(),
                    "overlay next hops on the uplink"
                );
                self.overlay.next_hops = found;
                self.publish_overlay();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "looking up the nodes' next hops; keeping the last ones"),
        }
    }

    /// Routes to `nodes` (from the cluster), replacing the nodes of the file or of an
    /// earlier snapshot. A node clashing with this one, with the config's nodes or with
    /// another is left out (and logged): one bad Node object costs only itself.
    pub fn cluster_nodes(&mut self, nodes: Vec<NodeSpec>) {
        let local_ip = self.config.node_ip;
        let fixed = &self.config.overlay.nodes;
        let (mut kept, mut skipped) = crate::cluster::translate::without_conflicts(
            fixed.iter().cloned().chain(nodes).collect(),
            self.config.pod_cidr,
            local_ip,
        );
        // The config's own nodes come first and always stay.
        kept.retain(|n| !fixed.iter().any(|f| f.name == n.name));
        skipped.retain(|s| !fixed.iter().any(|f| f.name == s.what));
        for s in &skipped {
            tracing::warn!(node = %s.what, reason = s.why, "node from the cluster not routed to");
        }
        self.overlay.from_cluster = true;
        if kept == self.overlay.file_nodes {
            return;
        }
        self.overlay.file_nodes = kept;
        self.publish_overlay();
        self.sync_steered_ports();
        tracing::info!(
            nodes = self.overlay.file_nodes.len(),
            generation = self.overlay.generation,
            "nodes applied"
        );
    }

    pub fn nodes_file(&self) -> Option<&std::path::Path> {
        self.config.overlay.nodes_file.as_deref()
    }

    pub fn nodes_view(&self) -> NodesView {
        let ov = &self.config.overlay;
        let gateway_mac = self.config.gateway_mac;
        let fast = self.uplink.is_some() && self.config.node_ip.is_some();
        let view = |n: &NodeSpec, source| RemoteNode {
            name: n.name.clone(),
            ip: n.ip,
            pod_cidrs: n.pod_cidrs.clone(),
            vtep_mac: n.vtep_mac.unwrap_or(gateway_mac).to_string(),
            source,
            fast_path_next_hop: fast
                .then(|| self.overlay.next_hops.get(&n.ip).map(ToString::to_string))
                .flatten(),
        };
        NodesView {
            vni: ov.vni,
            port: ov.port,
            underlay_mtu: ov.underlay_mtu,
            pod_mtu: self.config.mtu,
            underlay: self
                .overlay
                .port
                .as_ref()
                .and_then(|(id, _)| self.builder.port(*id))
                .map(|p| p.name.clone()),
            nodes_file: ov.nodes_file.clone(),
            file_error: self.overlay.file_error.clone(),
            generation: self.overlay.generation,
            nodes: ov
                .nodes
                .iter()
                .map(|n| view(n, NodeSource::Config))
                .chain(self.overlay.file_nodes.iter().map(|n| {
                    view(n, if self.overlay.from_cluster { NodeSource::Cluster } else { NodeSource::File })
                }))
                .collect(),
        }
    }
}
