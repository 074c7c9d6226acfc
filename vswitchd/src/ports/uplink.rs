//! The uplink: the node's underlay interface, on which an XDP program hands the switch
//! what it serves on the node's address (NodePorts, VXLAN from other nodes) through
//! AF_XDP, and leaves everything else to the node's kernel.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use vswitch_dataplane::ids::{PortId, SegmentId, WorkerId, WorkerSet};
use vswitch_dataplane::tables::{PortEntry, SegmentConfig, UnknownArp, UnknownUnicast};
use vswitch_dataplane::wire::MacAddr;

use super::kernel::{Steering, UplinkDevice};
use super::{AttachError, PortManager, UplinkError};
use crate::plane::Plane;

/// The uplink's segment (pods are in segment 0).
pub(crate) const UPLINK_SEGMENT: SegmentId = SegmentId(1);

pub(super) struct Uplink {
    pub id: PortId,
    pub name: String,
    pub mac: MacAddr,
    pub mtu: u16,
    /// The node's address the uplink serves.
    pub node_ip: Ipv4Addr,
    pub workers: Vec<WorkerId>,
    pub steering: Box<dyn Steering>,
}

/// The uplink as the overlay's fast path sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UplinkPort {
    pub id: PortId,
    pub mac: MacAddr,
}

impl PortManager {
    /// The segment of the uplink and the underlay, made when the first of them starts.
    pub(super) fn ensure_uplink_segment(plane: &mut Plane) -> Result<(), AttachError> {
        if plane.tables.segment(UPLINK_SEGMENT).is_none() {
            plane.tables.add_segment(SegmentConfig {
                id: UPLINK_SEGMENT,
                gateway: None,
                unknown_arp: UnknownArp::Drop,
                unknown_unicast: UnknownUnicast::Flood,
                storm_control: None,
            })?;
        }
        Ok(())
    }

    /// Takes NodePort traffic to `node_ip` from the configured uplink interface, if any.
    pub(crate) fn start_uplink(&mut self, plane: &mut Plane, node_ip: Ipv4Addr) -> Result<(), AttachError> {
        let Some(name) = self.config.uplink.clone() else { return Ok(()) };
        // A missing interface is named as such, not as a failed attach.
        self.kernel.link(&name)?.ok_or_else(|| UplinkError::Missing(name.clone()))?;
        let device = self.kernel.open_uplink(&name, self.xdp_mode(), node_ip, plane.datapath.workers())?;
        let id = self.free_id()?;
        self.add_uplink(plane, id, name, node_ip, device)
    }

    /// Makes `device` (opened or handed over) the uplink, port `id`.
    pub(super) fn add_uplink(
        &mut self,
        plane: &mut Plane,
        id: PortId,
        name: String,
        node_ip: Ipv4Addr,
        device: UplinkDevice,
    ) -> Result<(), AttachError> {
        let link = self.kernel.link(&name)?.ok_or_else(|| UplinkError::Missing(name.clone()))?;
        let mac = MacAddr(link.mac.ok_or_else(|| UplinkError::NoMac(name.clone()))?);
        let mtu = link.mtu.map_or(1500, |m| m.min(u32::from(u16::MAX)) as u16);
        let (owners, queues): (Vec<WorkerId>, Vec<_>) = device.queues.into_iter().unzip();
        Self::add_queues(plane, id, queues, &owners)?;
        Self::ensure_uplink_segment(plane)?;
        let mut tx_workers = WorkerSet::default();
        owners.iter().for_each(|w| tx_workers.insert(*w));
        let added = plane
            .tables
            .add_port(PortEntry::uplink(id, name.clone(), UPLINK_SEGMENT, mtu, tx_workers))
            .map_err(AttachError::from)
            .and_then(|()| Ok(plane.publish()?));
        if let Err(e) = added {
            plane.tables.remove_port(id);
            Self::remove_queues(plane, id, &owners, false);
            return Err(e);
        }
        tracing::info!(
            interface = %name, port = %id, %node_ip, queues = device.rx_queues, native = device.steering.native(),
            handed_over = device.handed_over, "uplink up: NodePort traffic to the node's address comes to the switch"
        );
        self.uplink =
            Some(Uplink { id, name, mac, mtu, node_ip, workers: owners, steering: device.steering });
        Ok(())
    }

    /// The uplink interface, when it is up.
    pub(crate) fn uplink_name(&self) -> Option<&str> {
        self.uplink.as_ref().map(|u| u.name.as_str())
    }

    /// The node's address the uplink serves, when it is up.
    pub(crate) fn uplink_node_ip(&self) -> Option<Ipv4Addr> {
        self.uplink.as_ref().map(|u| u.node_ip)
    }

    pub(crate) fn uplink_port(&self) -> Option<UplinkPort> {
        self.uplink.as_ref().map(|u| UplinkPort { id: u.id, mac: u.mac })
    }

    /// Makes the uplink's program steer exactly `ports` ((IP protocol, port) pairs).
    pub(crate) fn steer(&mut self, ports: &BTreeSet<(u8, u16)>) {
        let Some(uplink) = &mut self.uplink else { return };
        if let Err(e) = uplink.steering.set_ports(ports) {
            tracing::error!(error = %e, "updating the NodePorts the uplink steers");
        }
    }
}
