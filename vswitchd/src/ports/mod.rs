//! The switch's ports: pods attached through the API (a TAP, or a veth pair read
//! through AF_XDP), the host port carrying the gateway, the uplink and the underlay.
//!
//! Split as a device is (firecracker's `devices/virtio/net`): attaching and detaching
//! pods ([`attach`]), the host port ([`host`]), what survives a restart — the state
//! file and the tags on devices — ([`persist`]), the API's views ([`views`]), the
//! uplink and the underlay ([`uplink`], [`underlay`]), the node's routes to other
//! nodes' pods through the host port ([`routes`]). Every kernel operation goes
//! through [`Kernel`], so all of it is unit-tested against a fake (`fake`, `tests`).
//!
//! The manager owns what each port was attached with; the tables and the data path are
//! the [`Plane`]'s, passed in. Every attach that fails part-way undoes what it did, so
//! no half-made port, device or state entry is left behind.

mod attach;
mod error;
pub(crate) mod handover;
mod host;
pub(crate) mod kernel;
mod node_port_rules;
mod persist;
mod routes;
mod underlay;
mod uplink;
mod views;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use vswitch_dataplane::ids::{PortId, WorkerId};
use vswitch_dataplane::port::afxdp::XdpMode;
use vswitch_dataplane::port::tap::TapOptions;
use vswitch_dataplane::queue::PortQueue;
use vswitch_dataplane::wire::MacAddr;

pub(crate) use error::{AttachError, RequestError, UplinkError};
pub(crate) use kernel::{Kernel, LinuxKernel};
pub(crate) use persist::{NETNS_DIRS, RestoreReport};
pub(crate) use routes::RouteSync;
pub(crate) use underlay::TUNNEL_TAP;
pub(crate) use uplink::UPLINK_SEGMENT;

use crate::config::{AfxdpMode, Config};
use crate::plane::Plane;
use crate::state::{self, SavedPort};
use kernel::blocking;

/// The host port's id; pod ports get ids from 1.
pub(crate) const HOST_PORT_ID: PortId = PortId(0);

/// A pod port as attached.
struct PodPort {
    saved: SavedPort,
    workers: Vec<WorkerId>,
}

/// The host port, for listings.
struct HostPort {
    name: String,
    workers: Vec<WorkerId>,
}

pub(crate) struct PortManager {
    config: Config,
    kernel: Arc<dyn Kernel>,
    pods: BTreeMap<PortId, PodPort>,
    host: Option<HostPort>,
    uplink: Option<uplink::Uplink>,
    underlay: Option<underlay::Underlay>,
    /// AF_XDP queues per worker, to place the next one on the least loaded.
    xsk_load: Vec<usize>,
    /// The port id given out last.
    last_id: PortId,
    /// Whose device tags are ours (see [`state::DeviceTag`]).
    owner: String,
    node_routes: routes::NodeRoutes,
    node_port_rules: node_port_rules::NodePortRules,
}

impl PortManager {
    pub(crate) fn new(config: Config, kernel: Arc<dyn Kernel>, workers: usize) -> PortManager {
        let owner = state::owner_of(&config.state_file);
        PortManager {
            config,
            kernel,
            pods: BTreeMap::new(),
            host: None,
            uplink: None,
            underlay: None,
            xsk_load: vec![0; workers],
            last_id: PortId(0),
            owner,
            node_routes: Default::default(),
            node_port_rules: Default::default(),
        }
    }

    pub(crate) fn kernel(&self) -> &dyn Kernel {
        &*self.kernel
    }

    /// The next free id after the last one given out: an id is reused as late as
    /// possible, so a new port rarely shows up under a departed one's counters.
    fn free_id(&mut self) -> Result<PortId, AttachError> {
        let span = self.config.max_ports - 1;
        let taken = |id: PortId| {
            self.pods.contains_key(&id)
                || self.uplink.as_ref().is_some_and(|u| u.id == id)
                || self.underlay.as_ref().is_some_and(|u| u.id == id)
        };
        let id = (0..span)
            .map(|k| PortId((1 + (self.last_id.index() + k) % span) as u16))
            .find(|id| !taken(*id))
            .ok_or(AttachError::PortLimit(self.config.max_ports))?;
        self.last_id = id;
        Ok(id)
    }

    fn tap_options(&self, plane: &Plane, mac: Option<MacAddr>, mtu: u16) -> TapOptions {
        TapOptions {
            queues: plane.datapath.workers(),
            offloads: self.config.offloads,
            mac: mac.map(|m| m.0),
            mtu: Some(mtu),
        }
    }

    fn xdp_mode(&self) -> XdpMode {
        match self.config.afxdp_mode {
            AfxdpMode::Auto => XdpMode::Auto,
            AfxdpMode::Native => XdpMode::Native,
            AfxdpMode::Generic => XdpMode::Generic,
        }
    }

    /// The worker with the fewest AF_XDP queues.
    fn least_loaded_worker(&self) -> WorkerId {
        (0..self.xsk_load.len()).min_by_key(|w| self.xsk_load[*w]).unwrap_or(0)
    }

    /// Hands one queue to each of `workers`; on failure takes back those given.
    fn add_queues(
        plane: &Plane,
        id: PortId,
        queues: Vec<Box<dyn PortQueue>>,
        workers: &[WorkerId],
    ) -> Result<(), AttachError> {
        // Each hand-over waits for the worker's acknowledgement.
        blocking(|| {
            for (i, (q, w)) in queues.into_iter().zip(workers).enumerate() {
                if let Err(e) = plane.datapath.add_queue(*w, id, q) {
                    for w in &workers[..i] {
                        let _ = plane.datapath.remove_queue(*w, id);
                    }
                    return Err(e.into());
                }
            }
            Ok(())
        })
    }

    /// Takes the port's queues back from the workers; `release` undoes persistence (the
    /// port goes for good) rather than leaving the device for a restart.
    fn remove_queues(plane: &Plane, id: PortId, workers: &[WorkerId], release: bool) {
        for w in workers {
            match blocking(|| plane.datapath.remove_queue(*w, id)) {
                Ok(Some(mut q)) if release => {
                    if let Err(e) = q.release() {
                        tracing::warn!(port = %id, error = %e, "releasing queue");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(port = %id, worker = w, error = %e, "taking queue back"),
            }
        }
        plane.datapath.fdb().forget_port(id);
    }

    fn find(&self, container_id: &str, ifname: &str) -> Option<&PodPort> {
        self.pods.values().find(|p| p.saved.container_id == container_id && p.saved.ifname == ifname)
    }
}

/// The node-side end of an AF_XDP port's veth pair.
fn host_ifname(id: PortId) -> String {
    format!("vsx{:x}", id.0)
}

fn describe(saved: &SavedPort) -> String {
    format!("{}/{} ({})", saved.container_id, saved.ifname, saved.netns.display())
}

/// The first 12 characters of a container id, as `docker ps` shows it.
fn short(container_id: &str) -> &str {
    &container_id[..container_id.len().min(12)]
}

/// How a pod port's queues are labelled in logs.
fn label(saved: &SavedPort) -> String {
    format!("{} {}", short(&saved.container_id), saved.ifname)
}

/// The MAC a pod gets when its request names none: `02:00:` and its first IPv4
/// address (stable across re-attachments, unique on the node), else a hash of the
/// attachment's name.
fn derive_mac(ips: &[IpNet], container_id: &str, ifname: &str) -> MacAddr {
    if let Some(IpAddr::V4(v4)) = ips.iter().map(|n| n.addr()).find(IpAddr::is_ipv4) {
        let o = v4.octets();
        return MacAddr([0x02, 0x00, o[0], o[1], o[2], o[3]]);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    MacAddr([0x02, b[0], b[1], b[2], b[3], b[4]])
}
