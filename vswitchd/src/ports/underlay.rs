//! The underlay port: kernel UDP sockets, one queue per worker, that VXLAN to and from
//! other nodes goes through when it does not take the uplink's AF_XDP fast path.

use std::net::{Ipv4Addr, SocketAddrV4};

use vswitch_dataplane::ids::{PortId, WorkerId, WorkerSet};
use vswitch_dataplane::queue::PortQueue;
use vswitch_dataplane::tables::PortEntry;

use super::{AttachError, PortManager, UPLINK_SEGMENT};
use crate::plane::Plane;

pub(super) struct Underlay {
    pub id: PortId,
    pub name: String,
}

impl PortManager {
    /// Opens the underlay port: VXLAN is received on the overlay port of every address
    /// of the node and sent through the kernel's routing.
    pub(crate) fn start_underlay(&mut self, plane: &mut Plane) -> Result<(), AttachError> {
        let workers: Vec<WorkerId> = (0..plane.datapath.workers()).collect();
        let bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, self.config.overlay.port);
        let mtu = self.config.overlay.underlay_mtu;
        let mut queues: Vec<Box<dyn PortQueue>> = Vec::new();
        for w in &workers {
            queues.push(self.kernel.open_underlay(
                bind,
                mtu,
                &format!("underlay udp/{} queue {w}", bind.port()),
            )?);
        }
        Self::ensure_uplink_segment(plane)?;
        let id = self.free_id()?;
        Self::add_queues(plane, id, queues, &workers)?;
        let name = format!("vxlan/{}", bind.port());
        let added = plane.tables.add_port(PortEntry::uplink(
            id,
            name.clone(),
            UPLINK_SEGMENT,
            mtu,
            WorkerSet::all(workers.len()),
        ));
        if let Err(e) = added {
            Self::remove_queues(plane, id, &workers, false);
            return Err(e.into());
        }
        tracing::info!(port = %id, udp = bind.port(), vni = self.config.overlay.vni, "underlay up: VXLAN to and from other nodes");
        self.underlay = Some(Underlay { id, name });
        Ok(())
    }

    /// The underlay port, once up: where encapsulated frames leave.
    pub(crate) fn underlay_port(&self) -> Option<PortId> {
        self.underlay.as_ref().map(|u| u.id)
    }

    /// The underlay port's name, for the node listing.
    pub(crate) fn underlay_name(&self) -> Option<&str> {
        self.underlay.as_ref().map(|u| u.name.as_str())
    }
}
