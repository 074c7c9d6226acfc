//! The uplink port: the node's underlay interface, shared with the kernel. The steering
//! XDP program hands the switch what it serves on the node's address (the NodePorts of
//! the current Services) and leaves the rest to the node's stack; one AF_XDP socket per
//! receive queue, spread over the workers.
//!
//! The uplink is a segment of its own: pods' broadcasts and floods never leave the node
//! through it, and what comes in through it reaches pods only by Service NAT.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use super::{AttachError, PortManager, blocking};
use vswitch_dataplane::ids::{PortId, SegmentId, WorkerId, WorkerSet};
use vswitch_dataplane::port::PortQueue;
use vswitch_dataplane::port::afxdp::{XskGroup, XskQueue};
use vswitch_dataplane::port::steer::SteeringProgram;
use vswitch_dataplane::tables::PortEntry;
use vswitch_dataplane::wire::MacAddr;
use vswitch_sys::SysError;

/// The uplink's segment (pods are in segment 0).
pub const UPLINK_SEGMENT: SegmentId = SegmentId(1);

pub(super) struct Uplink {
    pub id: PortId,
    pub name: String,
    pub mac: MacAddr,
    pub mtu: u16,
    pub workers: Vec<WorkerId>,
    pub program: SteeringProgram,
}

impl PortManager {
    /// The node's address for NodePorts: configured, else the uplink's first IPv4
    /// address. Call before [`PortManager::start_uplink`].
    pub async fn resolve_node_ip(&mut self) -> Result<Option<Ipv4Addr>, AttachError> {
        if self.config.node_ip.is_some() {
            return Ok(self.config.node_ip);
        }
        let Some(name) = self.config.uplink.clone() else { return Ok(None) };
        let index = self.netlink.index_of(&name).await?;
        let found = self.netlink.addresses(index).await?.into_iter().find_map(|a| match a.addr() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        });
        let Some(ip) = found else {
            return Err(AttachError::Invalid(format!(
                "uplink {name} has no IPv4 address and services.node_ip is not set: which address do NodePorts serve?"
            )));
        };
        self.config.node_ip = Some(ip);
        self.catalog.set_node_ip(ip, self.datapath.conntrack());
        self.builder.set_services(self.catalog.table());
        self.publish()?;
        // The overlay's outer source address, from now on.
        self.publish_overlay();
        Ok(Some(ip))
    }

    /// Takes NodePort traffic from the configured uplink interface, if any.
    pub async fn start_uplink(&mut self) -> Result<(), AttachError> {
        let Some(name) = self.config.uplink.clone() else { return Ok(()) };
        let Some(node_ip) = self.resolve_node_ip().await? else {
            return Err(AttachError::Invalid("the uplink needs the node's address".into()));
        };
        let link = self
            .netlink
            .link(&name)
            .await?
            .ok_or_else(|| AttachError::Invalid(format!("uplink interface {name} does not exist")))?;
        let mac = MacAddr(link.mac.ok_or_else(|| AttachError::Invalid(format!("uplink {name} has no MAC")))?);
        let mtu = link.mtu.map_or(1500, |m| m.min(u32::from(u16::MAX)) as u16);
        let mode = self.xdp_mode();
        let (program, queues, sockets) = blocking(|| -> Result<_, SysError> {
            let program = SteeringProgram::attach(&name, mode)?;
            program.set_node_ip(node_ip)?;
            let queues = vswitch_sys::ethtool::rx_queues(&name)?;
            let mut sockets = Vec::new();
            for q in 0..queues {
                let mut s = XskQueue::open_steered(&program, q)?;
                s.set_label(format!("uplink {name} queue {q}"));
                sockets.push(s);
            }
            Ok((program, queues, sockets))
        })?;
        // Queue q goes to worker q mod workers; a worker with several gets them grouped.
        let workers = self.datapath.workers();
        let mut per_worker: Vec<Vec<XskQueue>> = (0..workers).map(|_| Vec::new()).collect();
        for (q, s) in sockets.into_iter().enumerate() {
            per_worker[q % workers].push(s);
        }
        let mut owners = Vec::new();
        let mut boxed: Vec<Box<dyn PortQueue>> = Vec::new();
        for (w, mut group) in per_worker.into_iter().enumerate() {
            match group.len() {
                0 => continue,
                1 => boxed.push(Box::new(group.pop().expect("one"))),
                _ => boxed.push(Box::new(XskGroup::new(group)?)),
            }
            owners.push(w);
        }
        let id = self.free_id()?;
        self.add_queues(id, boxed, &owners)?;
        self.ensure_uplink_segment()?;
        let mut tx_workers = WorkerSet::default();
        owners.iter().for_each(|w| tx_workers.insert(*w));
        let added =
            self.builder.add_port(PortEntry::uplink(id, name.clone(), UPLINK_SEGMENT, mtu, tx_workers));
        if let Err(e) = added.map_err(|e| AttachError::Invalid(e.to_string())).and_then(|()| self.publish()) {
            self.remove_queues(id, &owners, false);
            return Err(e);
        }
        tracing::info!(
            interface = %name, port = %id, %node_ip, queues, native = program.native(),
            "uplink up: NodePort traffic to the node's address comes to the switch"
        );
        self.uplink = Some(Uplink { id, name, mac, mtu, workers: owners, program });
        self.sync_steered_ports();
        Ok(())
    }

    /// Makes the uplink's program steer exactly the NodePorts of the current Services.
    /// The uplink interface, when it is up.
    pub fn uplink_name(&self) -> Option<&str> {
        self.uplink.as_ref().map(|u| u.name.as_str())
    }

    pub(super) fn sync_steered_ports(&mut self) {
        let table = self.catalog.table();
        let mut ports: BTreeSet<(u8, u16)> = table.node_ports().map(|(port, proto)| (proto, port)).collect();
        // VXLAN from other nodes, once there are any: the fast path in.
        if !self.config.overlay.nodes.is_empty() || !self.overlay.file_nodes.is_empty() {
            ports.insert((vswitch_dataplane::wire::parse::IPPROTO_UDP, self.config.overlay.port));
        }
        let Some(uplink) = &mut self.uplink else { return };
        if let Err(e) = uplink.program.set_ports(&ports) {
            tracing::error!(error = %e, "updating the NodePorts the uplink steers");
        }
    }
}
