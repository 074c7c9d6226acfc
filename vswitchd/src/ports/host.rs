//! The host port: a TAP in the daemon's namespace carrying the gateway's MAC and
//! address, so the node reaches its pods as it reached them through `cbr0`.

use std::net::IpAddr;

use ipnet::IpNet;
use vswitch_dataplane::ids::{WorkerId, WorkerSet};
use vswitch_dataplane::queue::PortQueue;
use vswitch_dataplane::tables::{PortEntry, PortKind};

use super::{AttachError, HOST_PORT_ID, HostPort, PortManager};
use crate::plane::{POD_SEGMENT, Plane};

impl PortManager {
    /// Creates (or, after a restart, re-opens) the host port; with `adopted`, a
    /// takeover's, it takes those queues instead.
    pub(crate) fn start_host_port(
        &mut self,
        plane: &mut Plane,
        adopted: Option<Vec<Box<dyn PortQueue>>>,
    ) -> Result<(), AttachError> {
        let Some(name) = self.config.host_port.clone() else { return Ok(()) };
        let opts = self.tap_options(plane, Some(self.config.gateway_mac), self.config.mtu);
        let label = format!("host port {name}");
        let existing = self.kernel.link(&name)?;
        let queues = match (adopted, &existing) {
            (Some(queues), _) => queues,
            (None, Some(_)) => self.kernel.reopen_tap(None, &name, &opts, &label)?,
            (None, None) => self.kernel.create_tap(None, &name, &opts, &label)?,
        };
        let index = self.kernel.index_of(&name)?;
        if existing.is_some() {
            // Reopened as it was: bring it in line with this configuration.
            self.kernel.set_mac(index, self.config.gateway_mac)?;
            self.kernel.set_mtu(index, self.config.mtu)?;
        }
        let prefix = self.config.pod_cidr.prefix_len();
        let gw = IpNet::new(IpAddr::V4(self.config.gateway_ip), prefix).expect("prefix of a valid CIDR");
        self.kernel.add_address(index, gw)?;
        self.kernel.set_up(index)?;
        let workers: Vec<WorkerId> = (0..plane.datapath.workers()).collect();
        Self::add_queues(plane, HOST_PORT_ID, queues, &workers)?;
        plane.tables.add_port(PortEntry {
            id: HOST_PORT_ID,
            name: name.clone(),
            kind: PortKind::Host,
            segment: POD_SEGMENT,
            mac: Some(self.config.gateway_mac),
            ipv4: vec![],
            ipv6: vec![],
            port_security: false,
            mtu: self.config.mtu,
            tx_workers: WorkerSet::all(workers.len()),
            offloads: self.config.offloads,
            tunnel: false,
        })?;
        plane.publish()?;
        tracing::info!(name, gateway = %gw, "host port up");
        self.host = Some(HostPort { name, workers });
        Ok(())
    }
}
