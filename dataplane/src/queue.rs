//! The port contract: one queue of a port, as a worker drives it in batches.
//!
//! A port has one or more queues; each queue is owned by exactly one worker, which
//! receives from it and transmits through it in batches. The backends in `port`
//! implement [`PortQueue`]; the worker and the pipeline never know which backend a
//! frame came from.

use std::collections::BTreeSet;
use std::os::fd::BorrowedFd;

use crate::frame::{Frame, FramePool};

/// What a transmit call achieved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxOutcome {
    pub sent: usize,
    pub sent_bytes: u64,
    /// Frames the queue refused (full or failed); counted by the caller as `TxFailed`.
    pub dropped: usize,
}

/// An I/O failure of a port queue, with the port it happened on.
#[derive(Debug, thiserror::Error)]
#[error("port {port}: {op}: {source}")]
pub struct PortError {
    pub port: String,
    pub op: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// What a queue is made of in the kernel, for the next daemon to adopt it.
#[derive(Clone, Debug)]
pub enum Handover<'a> {
    /// A TAP queue and how it was set up (the device keeps its offload settings).
    Tap { fd: BorrowedFd<'a>, offloads: bool, tunnel: bool },
    /// The underlay's receiving UDP and sending raw sockets.
    Sockets { rx: BorrowedFd<'a>, tx: BorrowedFd<'a> },
    /// AF_XDP sockets (one, or a group's, in order) and the XDP program steering to
    /// them when the queue owns it (a pod's veth; the uplink's is the port's).
    Xsk { sockets: Vec<XskHandover<'a>>, program: Option<SteeringHandover<'a>> },
}

/// Which frames of a socket's UMEM were the process's own when it handed the socket
/// over (UMEM offsets of frame starts); every other frame is on a ring or in the
/// kernel, and the rings' indices say where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XskFrames {
    /// Free for transmitting.
    pub free_tx: Vec<u64>,
    /// Received and read, not yet back on the fill ring.
    pub refill: Vec<u64>,
    /// Transmit frames on the transmit or completion ring or in the kernel.
    pub in_flight: u32,
}

/// One AF_XDP socket as a takeover hands it over.
#[derive(Clone, Debug)]
pub struct XskHandover<'a> {
    pub socket: BorrowedFd<'a>,
    pub umem: BorrowedFd<'a>,
    /// The interface's queue the socket is bound to.
    pub queue: u32,
    pub frames: XskFrames,
}

/// The XDP program of an interface as a takeover hands it over: the program's and its
/// maps' descriptors, how it is attached and what it steers.
#[derive(Clone, Debug)]
pub struct SteeringHandover<'a> {
    pub program: BorrowedFd<'a>,
    pub xsks: BorrowedFd<'a>,
    pub ports: BorrowedFd<'a>,
    pub config: BorrowedFd<'a>,
    /// The attach flags (the mode).
    pub flags: u32,
    pub steered: BTreeSet<(u8, u16)>,
}

/// One queue of a port.
pub trait PortQueue: Send {
    /// Appends up to `max` received frames to `batch`, with buffers from `pool`.
    /// Returns how many were appended; zero when nothing is waiting. Fewer than `max`
    /// means the queue is empty now: a worker then waits for the readiness fd's next
    /// edge before reading it again. A queue whose one read can bring several frames
    /// (the underlay's GRO trains) may append more than `max`, never fewer than it
    /// could read.
    fn rx_batch(
        &mut self,
        pool: &mut FramePool,
        batch: &mut Vec<Frame>,
        max: usize,
    ) -> Result<usize, PortError>;

    /// Transmits every frame in `frames`, leaving it empty, and returns the buffers to
    /// `pool`. Frames the queue cannot take are dropped and reported in the outcome.
    fn tx_batch(&mut self, frames: &mut Vec<Frame>, pool: &mut FramePool) -> TxOutcome;

    /// The port's interface name, for errors and logs.
    fn name(&self) -> &str;

    /// A file descriptor that becomes readable when frames arrive, for a worker that
    /// sleeps in epoll between rounds. `None`: the queue must be polled.
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// The kernel objects behind the queue, for a takeover that hands them to the next
    /// daemon (`SCM_RIGHTS`). `None`: the queue cannot outlive this process (an AF_XDP
    /// socket's frames are this process's memory; an in-memory queue).
    fn handover(&self) -> Option<Handover<'_>> {
        None
    }

    /// Called when the port is removed for good (not when the daemon merely stops):
    /// undoes whatever keeps the device alive across restarts.
    fn release(&mut self) -> Result<(), PortError> {
        Ok(())
    }

    /// Looking at an empty queue costs no system call (a ring in shared memory), so
    /// the worker looks every round instead of waiting for its readiness fd.
    fn polls_cheaply(&self) -> bool {
        false
    }

    /// True while the queue has work in flight that only more polling completes
    /// (e.g. AF_XDP transmissions waiting for a kick); the worker does not sleep then.
    fn busy(&self) -> bool {
        false
    }
}
