//! The stage contract: what every pipeline stage is given and what it returns.
//!
//! A stage is a function `fn(&mut StageContext, &mut Packet) -> Step` (the [`Stage`]
//! type; `pipeline` checks every stage against it). It reads the tables and the shared
//! state the data path writes through the [`StageContext`] of the batch, looks at and
//! may rewrite one frame ([`Packet`]), and returns `Continue` to pass the frame on or
//! `Break` with the frame's [`Verdict`]. Stages import this contract and the layers
//! below it (tables, frame, wire), never the pipeline and never each other; what
//! several stages do alike (a routed hop) is the `l3` stage module's.

use std::ops::ControlFlow;

use crate::drop_reason::DropReason;
use crate::frame::Frame;
use crate::ids::{NodeIndex, PortId};
use crate::stats::{EventCounters, WorkerStats};
use crate::tables::conntrack::ConntrackBatch;
use crate::tables::fdb::FdbBatch;
use crate::tables::mac_cache::MacCache;
use crate::tables::services::Affinity;
use crate::tables::{PortEntry, Tables};
use crate::wire::FrameMeta;

/// The fate of one frame, decided by the stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send out of this port (which may be the ingress port, for an ARP reply).
    Forward(PortId),
    /// Send a copy out of every other port of the ingress port's segment.
    Flood,
    /// Encapsulate toward a remote node (the frame is routed, its inner addresses set);
    /// `entropy`, a hash of the inner flow, becomes the outer UDP source port.
    Overlay {
        node: NodeIndex,
        entropy: u16,
    },
    Drop(DropReason),
}

/// What a stage returns: `Continue(())` passes the frame to the next stage, `Break`
/// decides it. A frame no stage decides is flooded in its segment, as a bridge does.
pub(crate) type Step = ControlFlow<Verdict>;

/// What the stages share while processing one batch: the tables snapshot and the
/// shared state to read, this worker's cache to fill and counters to count in.
pub(crate) struct StageContext<'a> {
    pub tables: &'a Tables,
    pub fdb: &'a FdbBatch<'a>,
    pub ct: &'a ConntrackBatch<'a>,
    pub affinity: &'a Affinity,
    pub cache: &'a mut MacCache,
    pub stats: &'a WorkerStats,
    /// Seconds on the datapath clock.
    pub now: u32,
}

impl StageContext<'_> {
    #[inline(always)]
    pub(crate) fn events(&self) -> &EventCounters {
        &self.stats.events
    }
}

/// One frame on its way through the stages.
pub(crate) struct Packet<'a, 'f> {
    /// The port the frame is treated as arriving on: its ingress port or, once a VXLAN
    /// frame is decapsulated, the overlay side of the gateway.
    pub port: &'a PortEntry,
    pub frame: &'f mut Frame,
    /// What the parser found; a stage that changes the frame's headers keeps it true.
    pub meta: &'f mut FrameMeta,
}

/// The one signature every stage has.
pub(crate) type Stage = for<'a, 'f> fn(&mut StageContext<'a>, &mut Packet<'a, 'f>) -> Step;

/// Decides the frame's fate: dropped for `reason`.
#[inline(always)]
pub(crate) fn drop(reason: DropReason) -> Step {
    ControlFlow::Break(Verdict::Drop(reason))
}

/// Decides the frame's fate: out of `port`.
#[inline(always)]
pub(crate) fn forward(port: PortId) -> Step {
    ControlFlow::Break(Verdict::Forward(port))
}
