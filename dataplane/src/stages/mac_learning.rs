//! Source MAC learning for ports without a bound MAC (uplinks).
//!
//! Pod and host ports have their MAC in the tables: nothing to learn, and a frame from
//! them costs no FDB access. A MAC statically bound elsewhere is never learned, so a
//! frame carrying a pod's MAC cannot divert that pod's traffic.

use std::ops::ControlFlow;

use crate::stage::{Packet, StageContext, Step};
use crate::tables::fdb::Learned;
use crate::tables::mac_cache;

/// Learns the source MAC of a frame from its port; never decides the frame. A MAC this
/// worker already refreshed in the current second costs one probe of its
/// [`mac_cache::MacCache`] and nothing shared.
// Always inlined: see `pipeline::stages`.
#[inline(always)]
pub(crate) fn learn_source<'a>(ctx: &mut StageContext<'a>, pkt: &mut Packet<'a, '_>) -> Step {
    let (port, src) = (pkt.port, pkt.meta.src_mac);
    if port.mac.is_some() {
        return ControlFlow::Continue(());
    }
    let key = mac_cache::key(port.segment, src);
    if ctx.cache.fresh_source(key, port.id, ctx.now) {
        return ControlFlow::Continue(());
    }
    let tables = ctx.tables;
    let not_static = || tables.static_port(port.segment, src).is_none();
    let events = &ctx.stats.events;
    match ctx.fdb.learn_if(port.segment, src, port.id, ctx.now, not_static) {
        Learned::Known => {}
        Learned::New => events.fdb_learned.inc(),
        Learned::Moved { .. } => events.fdb_moved.inc(),
        Learned::TableFull => {
            events.fdb_full.inc();
            return ControlFlow::Continue(());
        }
        Learned::Refused => return ControlFlow::Continue(()),
    }
    ctx.cache.insert_source(key, port.id, ctx.now);
    ControlFlow::Continue(())
}
