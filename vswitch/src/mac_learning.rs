//! Source MAC learning for ports without a bound MAC (uplinks).
//!
//! Pod and host ports have their MAC in the tables: nothing to learn, and a frame from
//! them costs no FDB access. A MAC statically bound elsewhere is never learned, so a
//! frame carrying a pod's MAC cannot divert that pod's traffic.

use crate::fdb::{FdbBatch, Learned};
use crate::mac_cache::{self, MacCache};
use crate::stats::EventCounters;
use crate::tables::{PortEntry, Tables};
use crate::wire::FrameMeta;

/// Learns the source MAC of a frame from `port`. A MAC this worker already refreshed
/// in the current second costs one probe of its [`MacCache`] and nothing shared.
#[inline]
pub fn learn_source(
    tables: &Tables,
    fdb: &FdbBatch<'_>,
    cache: &mut MacCache,
    events: &EventCounters,
    port: &PortEntry,
    meta: &FrameMeta,
    now: u32,
) {
    if port.mac.is_some() {
        return;
    }
    let key = mac_cache::key(port.segment, meta.src_mac);
    if cache.fresh_source(key, port.id, now) {
        return;
    }
    let not_static = || tables.static_port(port.segment, meta.src_mac).is_none();
    match fdb.learn_if(port.segment, meta.src_mac, port.id, now, not_static) {
        Learned::Known => {}
        Learned::New => events.fdb_learned.inc(),
        Learned::Moved { .. } => events.fdb_moved.inc(),
        Learned::TableFull => return events.fdb_full.inc(),
        Learned::Refused => return,
    }
    cache.insert_source(key, port.id, now);
}
