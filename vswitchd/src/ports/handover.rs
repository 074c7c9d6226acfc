//! A takeover, as the ports see it. The running daemon pauses (every queue taken back
//! from its workers: frames wait in the kernel's queues, which stay open), says what
//! each queue's file descriptors are, and then either goes (the next daemon took them)
//! or resumes. The next daemon adopts the queues as its ports: no device is created or
//! reopened, so no frame queued in the kernel is lost.
//!
//! The uplink is the exception: its AF_XDP sockets' frames are the old process's
//! memory. It is closed at the pause and the next daemon opens it anew (NodePort
//! traffic from outside the node waits for that). AF_XDP pod ports have the same
//! limit and no such fallback: they make a takeover refused (a clean restart instead).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};
use vswitch_api::Backend;
use vswitch_dataplane::datapath::TakenQueues;
use vswitch_dataplane::ids::{PortId, WorkerId};
use vswitch_dataplane::queue::{Handover, PortQueue};

use super::kernel::{HandedQueue, TunnelSpec, blocking};
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
    Tap { offloads: bool, tunnel: bool },
    UnderlayRx,
    UnderlayTx,
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
    /// The uplink's address, when the uplink was closed for the hand-over.
    uplink: Option<Ipv4Addr>,
}

impl Paused {
    /// Every queue's descriptors, each with what it is. `Err`: a queue that cannot be
    /// handed over.
    pub(crate) fn fds(&self) -> Result<Vec<(QueueFd, BorrowedFd<'_>)>, String> {
        let mut fds = Vec::new();
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
                    None => return Err(format!("the queue of {} cannot be handed over", q.name())),
                }
            }
        }
        Ok(fds)
    }
}

/// Received queue descriptors, grouped: port → worker → what arrived.
#[derive(Default)]
struct Received {
    taps: BTreeMap<PortId, BTreeMap<WorkerId, (OwnedFd, bool, bool)>>,
    sockets: BTreeMap<PortId, BTreeMap<WorkerId, SocketPair>>,
}

/// An underlay queue's sockets as they arrive.
#[derive(Default)]
struct SocketPair {
    rx: Option<OwnedFd>,
    tx: Option<OwnedFd>,
}

impl PortManager {
    /// Why these ports cannot be handed over, if they cannot.
    pub(crate) fn handover_blocker(&self) -> Option<String> {
        let afxdp: Vec<String> = self
            .pods
            .values()
            .filter(|p| p.saved.backend == Backend::Afxdp)
            .map(|p| label(&p.saved))
            .collect();
        (!afxdp.is_empty()).then(|| {
            format!(
                "AF_XDP pod ports cannot be handed over (their frames are this process's memory): {}",
                afxdp.join(", ")
            )
        })
    }

    /// The pause: every queue taken back from the workers. Nothing is read or sent
    /// until [`PortManager::resume`] or the next daemon.
    pub(crate) fn pause(&mut self, plane: &Plane) -> Result<Paused, AttachError> {
        let queues = blocking(|| plane.datapath.take_queues())?;
        Ok(Paused { queues, uplink: None })
    }

    /// Closes the uplink (after the tables were taken: their flows name it) so that
    /// the next daemon can bind its AF_XDP sockets to the same queues.
    pub(crate) fn close_uplink(&mut self, plane: &mut Plane, paused: &mut Paused) {
        let Some(uplink) = self.uplink.take() else { return };
        for queues in &mut paused.queues {
            queues.retain(|(port, _)| *port != uplink.id);
        }
        plane.tables.remove_port(uplink.id);
        plane.publish_or_log();
        paused.uplink = Some(uplink.node_ip);
        // Dropping it detaches its XDP program.
        drop(uplink);
    }

    /// After a takeover that did not happen: the queues go back to their workers and
    /// the uplink opens again.
    pub(crate) fn resume(&mut self, plane: &mut Plane, paused: Paused) {
        for (worker, queues) in paused.queues.into_iter().enumerate() {
            for (port, q) in queues {
                if let Err(e) = blocking(|| plane.datapath.add_queue(worker, port, q)) {
                    tracing::error!(port = %port, worker, error = %e, "queue not given back after the takeover failed");
                }
            }
        }
        // The new daemon may have attached its tunnel programs in place of ours.
        if let Some(super::underlay::Underlay { path: UnderlayPath::Tunnel { link, .. }, .. }) =
            &self.underlay
            && let Err(e) = link.relink()
        {
            tracing::error!(error = %e, "tunnel programs not attached again after the takeover failed");
        }
        if let Some(node_ip) = paused.uplink
            && let Err(e) = self.start_uplink(plane, node_ip)
        {
            tracing::error!(error = %e, "uplink not reopened after the takeover failed: NodePorts are not reachable from outside the node");
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
        fds: Vec<(QueueFd, OwnedFd)>,
    ) -> Result<RestoreReport, AttachError> {
        let mut received = Received::default();
        for (at, fd) in fds {
            let (port, worker) = (PortId(at.port), at.worker as WorkerId);
            match at.kind {
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
            let queues = self.adopt_taps(&mut received, saved.id, &saved.ifname, workers, &label(&saved))?;
            let workers = self.restore_one(plane, &saved, Some(queues))?;
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
        let unclaimed: Vec<PortId> = received.taps.keys().chain(received.sockets.keys()).copied().collect();
        if !unclaimed.is_empty() {
            tracing::warn!(ports = ?unclaimed, "descriptors handed over for ports not announced: closed");
        }
        // The state file is the previous daemon's, and says the same: not written again
        // (two fsyncs would lengthen the pause).
        plane.publish()?;
        Ok(report)
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
