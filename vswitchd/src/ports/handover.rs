//! A takeover, as the ports see it. The running daemon pauses (every queue taken back
//! from its workers: frames wait in the kernel's queues, which stay open), says what
//! each queue's file descriptors are, and then either goes (the next daemon took them)
//! or resumes. The next daemon adopts the queues as its ports: no device is created or
//! reopened, so no frame queued in the kernel is lost.
//!
//! AF_XDP sockets (pods' veths and the uplink) go over with their UMEM (a memfd), the
//! frames the old daemon held, and the XDP program steering to them, which stays
//! attached throughout: a frame the kernel queued during the pause is read by the
//! next daemon.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};
use vswitch_dataplane::datapath::TakenQueues;
use vswitch_dataplane::ids::{PortId, WorkerId};
use vswitch_dataplane::port::steer::SteeringFds;
use vswitch_dataplane::queue::{Handover, PortQueue, SteeringHandover, XskFrames, XskHandover};

use super::kernel::{HandedProgram, HandedQueue, HandedXsk, TunnelSpec, blocking};
use super::underlay::UnderlayPath;
use super::{AttachError, HOST_PORT_ID, PortManager, RestoreReport, describe, label};
use crate::plane::Plane;
use crate::state::StateFile;

/// One handed-over file descriptor of a queue: whose, which worker's, what.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QueueFd {
    pub port: u16,
    pub worker: u32,
    pub kind: QueueFdKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum QueueFdKind {
    Tap {
        offloads: bool,
        tunnel: bool,
    },
    UnderlayRx,
    UnderlayTx,
    /// An AF_XDP socket bound to the interface's queue `queue`, and its UMEM's memfd.
    XskSocket {
        queue: u32,
    },
    XskUmem {
        queue: u32,
    },
    /// The port's XDP program (a pod's veth's, or the uplink's) and its maps.
    Xdp(XdpFd),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum XdpFd {
    Program,
    Xsks,
    Ports,
    Config,
}

/// What goes with the AF_XDP descriptors of a takeover.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HandedXdp {
    pub sockets: Vec<SocketFrames>,
    pub programs: Vec<ProgramState>,
    /// The uplink, when there is one (its sockets and program are among the above).
    pub uplink: Option<HandedUplink>,
}

/// The frames the old daemon held of one socket (see [`XskFrames`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SocketFrames {
    pub port: u16,
    pub worker: u32,
    pub queue: u32,
    pub free_tx: Vec<u64>,
    pub refill: Vec<u64>,
    pub in_flight: u32,
}

/// How a port's XDP program is attached and what it steers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProgramState {
    pub port: u16,
    pub flags: u32,
    pub steered: Vec<(u8, u16)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HandedUplink {
    pub port: u16,
    pub name: String,
    pub node_ip: Ipv4Addr,
}

/// The underlay port as handed over: its id, and the tunnel it goes through (`None`:
/// sockets).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HandedUnderlay {
    pub port: u16,
    pub tunnel: Option<TunnelSpec>,
}

/// The ports of a paused daemon.
pub(crate) struct Paused {
    /// Per worker, the queues taken back from it.
    queues: Vec<TakenQueues>,
}

/// Descriptors to hand over, each with what it is.
pub(crate) type HandedFds<'a> = Vec<(QueueFd, BorrowedFd<'a>)>;

impl Paused {
    /// Every queue's descriptors, and the AF_XDP sockets' frames and programs. `Err`: a
    /// queue that cannot be handed over.
    fn handed<'a>(&'a self, fds: &mut HandedFds<'a>, xdp: &mut HandedXdp) -> Result<(), String> {
        for (worker, queues) in self.queues.iter().enumerate() {
            for (port, q) in queues {
                let at = |kind| QueueFd { port: port.0, worker: worker as u32, kind };
                match q.handover() {
                    Some(Handover::Tap { fd, offloads, tunnel }) => {
                        fds.push((at(QueueFdKind::Tap { offloads, tunnel }), fd));
                    }
                    Some(Handover::Sockets { rx, tx }) => {
                        fds.push((at(QueueFdKind::UnderlayRx), rx));
                        fds.push((at(QueueFdKind::UnderlayTx), tx));
                    }
                    Some(Handover::Xsk { sockets, program }) => {
                        for s in sockets {
                            hand_socket(*port, worker as u32, s, fds, xdp);
                        }
                        if let Some(program) = program {
                            hand_program(*port, program, fds, xdp);
                        }
                    }
                    None => return Err(format!("the queue of {} cannot be handed over", q.name())),
                }
            }
        }
        Ok(())
    }
}

fn hand_socket<'a>(
    port: PortId,
    worker: u32,
    s: XskHandover<'a>,
    fds: &mut HandedFds<'a>,
    xdp: &mut HandedXdp,
) {
    let at = |kind| QueueFd { port: port.0, worker, kind };
    fds.push((at(QueueFdKind::XskSocket { queue: s.queue }), s.socket));
    fds.push((at(QueueFdKind::XskUmem { queue: s.queue }), s.umem));
    xdp.sockets.push(SocketFrames {
        port: port.0,
        worker,
        queue: s.queue,
        free_tx: s.frames.free_tx,
        refill: s.frames.refill,
        in_flight: s.frames.in_flight,
    });
}

fn hand_program<'a>(port: PortId, p: SteeringHandover<'a>, fds: &mut HandedFds<'a>, xdp: &mut HandedXdp) {
    let at = |which| QueueFd { port: port.0, worker: 0, kind: QueueFdKind::Xdp(which) };
    fds.push((at(XdpFd::Program), p.program));
    fds.push((at(XdpFd::Xsks), p.xsks));
    fds.push((at(XdpFd::Ports), p.ports));
    fds.push((at(XdpFd::Config), p.config));
    xdp.programs.push(ProgramState {
        port: port.0,
        flags: p.flags,
        steered: p.steered.into_iter().collect(),
    });
}

/// Received queue descriptors, grouped: port → worker → what arrived.
#[derive(Default)]
struct Received {
    taps: BTreeMap<PortId, BTreeMap<WorkerId, (OwnedFd, bool, bool)>>,
    sockets: BTreeMap<PortId, BTreeMap<WorkerId, SocketPair>>,
    /// AF_XDP sockets by interface queue, with their memfds.
    xsks: BTreeMap<PortId, BTreeMap<WorkerId, BTreeMap<u32, XskPair>>>,
    programs: BTreeMap<PortId, ProgramFds>,
}

impl Received {
    /// What came so far of the AF_XDP socket of `port`, `worker`, interface `queue`.
    fn xsk(&mut self, port: PortId, worker: WorkerId, queue: u32) -> &mut XskPair {
        self.xsks.entry(port).or_default().entry(worker).or_default().entry(queue).or_default()
    }
}

#[derive(Default)]
struct XskPair {
    socket: Option<OwnedFd>,
    umem: Option<OwnedFd>,
}

#[derive(Default)]
struct ProgramFds {
    program: Option<OwnedFd>,
    xsks: Option<OwnedFd>,
    ports: Option<OwnedFd>,
    config: Option<OwnedFd>,
}

impl ProgramFds {
    fn complete(self) -> Option<SteeringFds> {
        Some(SteeringFds {
            program: self.program?,
            xsks: self.xsks?,
            ports: self.ports?,
            config: self.config?,
        })
    }
}

/// An underlay queue's sockets as they arrive.
#[derive(Default)]
struct SocketPair {
    rx: Option<OwnedFd>,
    tx: Option<OwnedFd>,
}

impl PortManager {
    /// The pause: every queue taken back from the workers. Nothing is read or sent
    /// until [`PortManager::resume`] or the next daemon.
    pub(crate) fn pause(&mut self, plane: &Plane) -> Result<Paused, AttachError> {
        let queues = blocking(|| plane.datapath.take_queues())?;
        Ok(Paused { queues })
    }

    /// Whether there are AF_XDP sockets to hand over.
    pub(crate) fn has_xdp_ports(&self) -> bool {
        self.uplink.is_some() || self.pods.values().any(|p| p.saved.backend == vswitch_api::Backend::Afxdp)
    }

    /// Every descriptor of the paused queues and of the uplink's program, each with
    /// what it is, and what goes with the AF_XDP ones.
    pub(crate) fn handed<'a>(&'a self, paused: &'a Paused) -> Result<(HandedFds<'a>, HandedXdp), String> {
        let (mut fds, mut xdp) = (Vec::new(), HandedXdp::default());
        paused.handed(&mut fds, &mut xdp)?;
        if let Some(uplink) = &self.uplink {
            let program = uplink
                .steering
                .handed()
                .ok_or_else(|| format!("the uplink {}'s program cannot be handed over", uplink.name))?;
            hand_program(uplink.id, program, &mut fds, &mut xdp);
            xdp.uplink =
                Some(HandedUplink { port: uplink.id.0, name: uplink.name.clone(), node_ip: uplink.node_ip });
        }
        Ok((fds, xdp))
    }

    /// After a takeover that did not happen: the queues go back to their workers.
    pub(crate) fn resume(&mut self, plane: &mut Plane, paused: Paused) {
        for (worker, queues) in paused.queues.into_iter().enumerate() {
            for (port, q) in queues {
                if let Err(e) = blocking(|| plane.datapath.add_queue(worker, port, q)) {
                    tracing::error!(port = %port, worker, error = %e, "queue not given back after the takeover failed");
                }
            }
        }
        // Reading was held since the pause: every queue placed, then read.
        if let Err(e) = blocking(|| plane.datapath.read_again()) {
            tracing::error!(error = %e, "a queue given back after the takeover failed is not polled");
        }
        // The new daemon may have attached its tunnel programs in place of ours.
        if let Some(super::underlay::Underlay { path: UnderlayPath::Tunnel { link, .. }, .. }) =
            &self.underlay
            && let Err(e) = link.relink()
        {
            tracing::error!(error = %e, "tunnel programs not attached again after the takeover failed");
        }
    }

    /// The underlay, as the next daemon must adopt it.
    pub(crate) fn handed_underlay(&self) -> Option<HandedUnderlay> {
        let u = self.underlay.as_ref()?;
        let tunnel = match &u.path {
            UnderlayPath::Tunnel { spec, .. } => Some(spec.clone()),
            UnderlayPath::Sockets { .. } => None,
        };
        Some(HandedUnderlay { port: u.id.0, tunnel })
    }

    /// The next daemon's side: the host port, the pods of `state` and the underlay,
    /// from the queues in `fds`. Any port that cannot be adopted fails the whole
    /// takeover (the previous daemon then resumes with everything); descriptors no port
    /// claims are closed.
    pub(crate) fn adopt(
        &mut self,
        plane: &mut Plane,
        state: StateFile,
        underlay: Option<HandedUnderlay>,
        xdp: HandedXdp,
        fds: Vec<(QueueFd, OwnedFd)>,
    ) -> Result<RestoreReport, AttachError> {
        let mut received = Received::default();
        for (at, fd) in fds {
            let (port, worker) = (PortId(at.port), at.worker as WorkerId);
            match at.kind {
                QueueFdKind::XskSocket { queue } => received.xsk(port, worker, queue).socket = Some(fd),
                QueueFdKind::XskUmem { queue } => received.xsk(port, worker, queue).umem = Some(fd),
                QueueFdKind::Xdp(which) => {
                    let p = received.programs.entry(port).or_default();
                    let slot = match which {
                        XdpFd::Program => &mut p.program,
                        XdpFd::Xsks => &mut p.xsks,
                        XdpFd::Ports => &mut p.ports,
                        XdpFd::Config => &mut p.config,
                    };
                    *slot = Some(fd);
                }
                QueueFdKind::Tap { offloads, tunnel } => {
                    received.taps.entry(port).or_default().insert(worker, (fd, offloads, tunnel));
                }
                QueueFdKind::UnderlayRx => {
                    received.sockets.entry(port).or_default().entry(worker).or_default().rx = Some(fd);
                }
                QueueFdKind::UnderlayTx => {
                    received.sockets.entry(port).or_default().entry(worker).or_default().tx = Some(fd);
                }
            }
        }
        let workers = plane.datapath.workers();
        if let Some(name) = self.config.host_port.clone() {
            let queues =
                self.adopt_taps(&mut received, HOST_PORT_ID, &name, workers, &format!("host port {name}"))?;
            self.start_host_port(plane, Some(queues))?;
        }
        let mut report = RestoreReport::default();
        for saved in state.ports {
            let queues = match saved.backend {
                vswitch_api::Backend::Tap => {
                    self.adopt_taps(&mut received, saved.id, &saved.ifname, workers, &label(&saved))?
                }
                vswitch_api::Backend::Afxdp => {
                    let host = saved.host_ifname.as_deref().ok_or(AttachError::NoHostEnd(saved.id))?;
                    let program = take_program(&mut received, &xdp, saved.id, host)?;
                    let mut sockets = take_sockets(&mut received, &xdp, saved.id)?;
                    let (Some((_, one)), true) = (sockets.pop(), sockets.is_empty()) else {
                        return Err(AttachError::NotHandedOver(saved.id));
                    };
                    let handed = HandedQueue::Xsk { sockets: one, program: Some(program) };
                    vec![self.kernel.adopt_queue(handed, &label(&saved))?]
                }
            };
            let workers = self.restore_one(plane, &saved, Some(queues))?;
            if saved.backend == vswitch_api::Backend::Afxdp {
                self.xsk_load[workers[0]] += 1;
            }
            self.last_id = self.last_id.max(saved.id);
            report.restored.push(describe(&saved));
            self.pods.insert(saved.id, super::PodPort { saved, workers });
        }
        if let Some(handed) = underlay {
            let port = PortId(handed.port);
            let queues = match &handed.tunnel {
                Some(spec) => self.adopt_taps(&mut received, port, &spec.tap, workers, "tunnel")?,
                None => self.adopt_sockets(&mut received, port, workers)?,
            };
            self.adopt_underlay(plane, queues, handed.tunnel)?;
        }
        if let Some(uplink) = xdp.uplink.clone() {
            self.adopt_uplink_from(plane, &mut received, &xdp, uplink)?;
        }
        let unclaimed: Vec<PortId> = received
            .taps
            .keys()
            .chain(received.sockets.keys())
            .chain(received.xsks.keys())
            .chain(received.programs.keys())
            .copied()
            .collect();
        if !unclaimed.is_empty() {
            tracing::warn!(ports = ?unclaimed, "descriptors handed over for ports not announced: closed");
        }
        // The state file is the previous daemon's, and says the same: not written again
        // (two fsyncs would lengthen the pause).
        plane.publish()?;
        Ok(report)
    }

    /// The uplink as handed over: its program and sockets, under its id, on the
    /// interface the config names (a changed uplink takes a restart).
    fn adopt_uplink_from(
        &mut self,
        plane: &mut Plane,
        received: &mut Received,
        xdp: &HandedXdp,
        uplink: HandedUplink,
    ) -> Result<(), AttachError> {
        let port = PortId(uplink.port);
        if self.config.uplink.as_deref() != Some(uplink.name.as_str()) {
            return Err(AttachError::Gone(format!(
                "the uplink handed over is {}, the config names {}: a restart changes it",
                uplink.name,
                self.config.uplink.as_deref().unwrap_or("none")
            )));
        }
        let program = take_program(received, xdp, port, &uplink.name)?;
        let sockets = take_sockets(received, xdp, port)?;
        let device = self.kernel.adopt_uplink(program, sockets, &uplink.name)?;
        self.add_uplink(plane, port, uplink.name, uplink.node_ip, device)
    }

    /// The TAP queues of `port` (device `name`), one per worker, checked.
    fn adopt_taps(
        &self,
        received: &mut Received,
        port: PortId,
        name: &str,
        workers: usize,
        label: &str,
    ) -> Result<Vec<Box<dyn PortQueue>>, AttachError> {
        one_per_worker(received.taps.remove(&port), port, workers)?
            .into_iter()
            .map(|(fd, offloads, tunnel)| {
                let handed = HandedQueue::Tap { fd, name: name.to_string(), offloads, tunnel };
                Ok(self.kernel.adopt_queue(handed, label)?)
            })
            .collect()
    }

    /// The underlay's socket pairs of `port`, one per worker, checked.
    fn adopt_sockets(
        &self,
        received: &mut Received,
        port: PortId,
        workers: usize,
    ) -> Result<Vec<Box<dyn PortQueue>>, AttachError> {
        let local = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, self.config.overlay.port);
        one_per_worker(received.sockets.remove(&port), port, workers)?
            .into_iter()
            .enumerate()
            .map(|(w, pair)| match pair {
                SocketPair { rx: Some(rx), tx: Some(tx) } => {
                    let handed =
                        HandedQueue::Sockets { rx, tx, local, mtu: self.config.overlay.underlay_mtu };
                    let label = format!("underlay udp/{} queue {w}", local.port());
                    Ok(self.kernel.adopt_queue(handed, &label)?)
                }
                _ => Err(AttachError::NotHandedOver(port)),
            })
            .collect()
    }
}

/// The XDP program of `port` (on interface `ifname`), complete and announced.
fn take_program(
    received: &mut Received,
    xdp: &HandedXdp,
    port: PortId,
    ifname: &str,
) -> Result<HandedProgram, AttachError> {
    let state = xdp.programs.iter().find(|p| p.port == port.0).ok_or(AttachError::NotHandedOver(port))?;
    let fds = received
        .programs
        .remove(&port)
        .and_then(ProgramFds::complete)
        .ok_or(AttachError::NotHandedOver(port))?;
    Ok(HandedProgram {
        ifname: ifname.to_string(),
        flags: state.flags,
        fds,
        steered: state.steered.iter().copied().collect::<BTreeSet<_>>(),
    })
}

/// The AF_XDP sockets of `port`, per worker (in worker order), each with its UMEM and
/// the frames announced for it.
fn take_sockets(
    received: &mut Received,
    xdp: &HandedXdp,
    port: PortId,
) -> Result<Vec<(WorkerId, Vec<HandedXsk>)>, AttachError> {
    let per_worker = received.xsks.remove(&port).ok_or(AttachError::NotHandedOver(port))?;
    per_worker
        .into_iter()
        .map(|(worker, by_queue)| {
            let sockets = by_queue
                .into_iter()
                .map(|(queue, pair)| {
                    let frames = xdp
                        .sockets
                        .iter()
                        .find(|s| s.port == port.0 && s.worker as WorkerId == worker && s.queue == queue)
                        .ok_or(AttachError::NotHandedOver(port))?;
                    let (Some(socket), Some(umem)) = (pair.socket, pair.umem) else {
                        return Err(AttachError::NotHandedOver(port));
                    };
                    let frames = XskFrames {
                        free_tx: frames.free_tx.clone(),
                        refill: frames.refill.clone(),
                        in_flight: frames.in_flight,
                    };
                    Ok(HandedXsk { socket, umem, queue, frames })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((worker, sockets))
        })
        .collect()
}

/// What came for each of `workers` workers of `port`, in worker order: exactly one
/// each, or the port was not handed over as announced.
fn one_per_worker<T>(
    per_worker: Option<BTreeMap<WorkerId, T>>,
    port: PortId,
    workers: usize,
) -> Result<Vec<T>, AttachError> {
    let per_worker = per_worker.unwrap_or_default();
    if !per_worker.keys().copied().eq(0..workers) {
        return Err(AttachError::NotHandedOver(port));
    }
    Ok(per_worker.into_values().collect())
}
