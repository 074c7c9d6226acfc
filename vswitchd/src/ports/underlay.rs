//! The underlay port, one queue per worker, that VXLAN to and from other nodes goes
//! through when it does not take the uplink's AF_XDP fast path: the tunnel TAP (with
//! its tc programs; super-frames cross whole) where the kernel and the configuration
//! allow it, else kernel UDP and raw sockets.

use std::net::{Ipv4Addr, SocketAddrV4};

use vswitch_dataplane::ids::{PortId, WorkerId, WorkerSet};
use vswitch_dataplane::queue::PortQueue;
use vswitch_dataplane::tables::PortEntry;

use super::kernel::{TunnelLink, TunnelSpec};
use super::{AttachError, PortManager, UPLINK_SEGMENT};
use crate::plane::Plane;

/// The tunnel TAP's name in the node's namespace.
pub(crate) const TUNNEL_TAP: &str = "vswitch-vx";

pub(super) struct Underlay {
    pub id: PortId,
    pub name: String,
    pub path: UnderlayPath,
}

/// An underlay's queues before they become a port, the path they take, the port's name.
struct Opened {
    queues: Vec<Box<dyn PortQueue>>,
    path: UnderlayPath,
    name: String,
}

pub(crate) enum UnderlayPath {
    Tunnel {
        spec: TunnelSpec,
        link: Box<dyn TunnelLink>,
    },
    /// Sockets, and why not the tunnel (`None`: not asked for).
    Sockets {
        not_tunnel: Option<String>,
    },
}

impl PortManager {
    /// Opens the underlay port: through the tunnel TAP described by `tunnel` when it is
    /// `Ok` and the kernel takes it, else through sockets (VXLAN received on the overlay
    /// port of every address of the node, sent through the kernel's routing). `Err`
    /// says why the tunnel is not tried; with `required`, a tunnel that fails is an
    /// error rather than a fallback.
    pub(crate) fn start_underlay(
        &mut self,
        plane: &mut Plane,
        tunnel: Result<TunnelSpec, String>,
        required: bool,
    ) -> Result<(), AttachError> {
        let workers: Vec<WorkerId> = (0..plane.datapath.workers()).collect();
        let opened = match tunnel {
            Ok(spec) => match self.kernel.open_tunnel(&spec, workers.len()) {
                Ok(device) => Opened {
                    queues: device.queues,
                    name: format!("vxlan/{} via {}", self.config.overlay.port, spec.tap),
                    path: UnderlayPath::Tunnel { spec, link: device.link },
                },
                Err(e) if required => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, "tunnel TAP refused: VXLAN through sockets, super-frames cut by the switch");
                    self.socket_queues(&workers, Some(e.to_string()))?
                }
            },
            Err(reason) if required => {
                return Err(AttachError::TunnelUnavailable(reason));
            }
            Err(reason) => {
                tracing::info!(%reason, "VXLAN through sockets, not the tunnel TAP");
                self.socket_queues(&workers, Some(reason))?
            }
        };
        self.underlay_up(plane, opened)
    }

    /// A takeover's underlay: `queues` handed over, through the tunnel TAP `tunnel` (its
    /// programs attached anew) or sockets.
    pub(super) fn adopt_underlay(
        &mut self,
        plane: &mut Plane,
        queues: Vec<Box<dyn PortQueue>>,
        tunnel: Option<TunnelSpec>,
    ) -> Result<(), AttachError> {
        let opened = match tunnel {
            Some(spec) => Opened {
                queues,
                name: format!("vxlan/{} via {}", self.config.overlay.port, spec.tap),
                path: UnderlayPath::Tunnel { link: self.kernel.relink_tunnel(&spec)?, spec },
            },
            None => Opened {
                queues,
                path: UnderlayPath::Sockets { not_tunnel: None },
                name: format!("vxlan/{}", self.config.overlay.port),
            },
        };
        self.underlay_up(plane, opened)
    }

    fn underlay_up(&mut self, plane: &mut Plane, opened: Opened) -> Result<(), AttachError> {
        let Opened { queues, path, name } = opened;
        let workers: Vec<WorkerId> = (0..plane.datapath.workers()).collect();
        let mtu = self.config.overlay.underlay_mtu;
        let tunnel = matches!(path, UnderlayPath::Tunnel { .. });
        Self::ensure_uplink_segment(plane)?;
        let id = self.free_id()?;
        Self::add_queues(plane, id, queues, &workers)?;
        let mut entry =
            PortEntry::uplink(id, name.clone(), UPLINK_SEGMENT, mtu, WorkerSet::all(workers.len()));
        entry.offloads = tunnel;
        entry.tunnel = tunnel;
        if let Err(e) = plane.tables.add_port(entry) {
            Self::remove_queues(plane, id, &workers, false);
            return Err(e.into());
        }
        tracing::info!(port = %id, path = %name, udp = self.config.overlay.port, vni = self.config.overlay.vni, "underlay up: VXLAN to and from other nodes");
        self.underlay = Some(Underlay { id, name, path });
        Ok(())
    }

    fn socket_queues(&self, workers: &[WorkerId], not_tunnel: Option<String>) -> Result<Opened, AttachError> {
        let bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, self.config.overlay.port);
        let mut queues = Vec::new();
        for w in workers {
            queues.push(self.kernel.open_underlay(
                bind,
                self.config.overlay.underlay_mtu,
                &format!("underlay udp/{} queue {w}", bind.port()),
            )?);
        }
        Ok(Opened {
            queues,
            path: UnderlayPath::Sockets { not_tunnel },
            name: format!("vxlan/{}", bind.port()),
        })
    }

    /// The underlay port, once up: where encapsulated frames leave.
    pub(crate) fn underlay_port(&self) -> Option<PortId> {
        self.underlay.as_ref().map(|u| u.id)
    }

    /// The underlay port's name, for the node listing.
    pub(crate) fn underlay_name(&self) -> Option<&str> {
        self.underlay.as_ref().map(|u| u.name.as_str())
    }

    /// The tunnel the underlay goes through, when it is the tunnel TAP.
    pub(crate) fn underlay_tunnel(&self) -> Option<&TunnelSpec> {
        match &self.underlay.as_ref()?.path {
            UnderlayPath::Tunnel { spec, .. } => Some(spec),
            UnderlayPath::Sockets { .. } => None,
        }
    }

    /// One line on how VXLAN meets the kernel, for `vswitchctl status`.
    pub(crate) fn underlay_summary(&self) -> Option<String> {
        let u = self.underlay.as_ref()?;
        Some(match &u.path {
            UnderlayPath::Tunnel { spec, link } => {
                let c = link.counters();
                format!(
                    "tunnel TAP {} on {} (UDP-tunnel GSO; {} address {}): {} in, {} out, {} refused",
                    spec.tap,
                    spec.underlay,
                    spec.underlay,
                    spec.node_ip,
                    c.to_switch,
                    c.to_underlay,
                    c.not_sent
                )
            }
            UnderlayPath::Sockets { not_tunnel: Some(why) } => {
                format!("sockets udp/{} (not the tunnel TAP: {why})", self.config.overlay.port)
            }
            UnderlayPath::Sockets { not_tunnel: None } => format!("sockets udp/{}", self.config.overlay.port),
        })
    }
}
