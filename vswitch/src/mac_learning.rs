//! Source MAC learning for ports without a bound MAC (uplinks).
//!
//! Pod and host ports have their MAC in the tables: nothing to learn, and a frame from
//! them costs no FDB access. A MAC statically bound elsewhere is never learned, so a
//! frame carrying a pod's MAC cannot divert that pod's traffic.

use crate::fdb::{FdbBatch, Learned};
use crate::stats::EventCounters;
use crate::tables::{PortEntry, Tables};
use crate::wire::FrameMeta;

#[inline]
pub fn learn_source(
    tables: &Tables,
    fdb: &FdbBatch<'_>,
    events: &EventCounters,
    port: &PortEntry,
    meta: &FrameMeta,
    now: u32,
) {
    if port.mac.is_some() || tables.static_port(port.segment, meta.src_mac).is_some() {
        return;
    }
    match fdb.learn(port.segment, meta.src_mac, port.id, now) {
        Learned::Known => {}
        Learned::New => events.fdb_learned.inc(),
        Learned::Moved { .. } => events.fdb_moved.inc(),
        Learned::TableFull => events.fdb_full.inc(),
    }
}
