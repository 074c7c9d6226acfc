//! L2 forwarding: destination MAC → port.
//!
//! Statically bound MACs (pods, the host port) are looked up in the tables snapshot,
//! learned ones in the FDB, both behind this worker's [`MacCache`]. Broadcast,
//! multicast and unknown unicast are left undecided, so the pipeline floods them to the
//! other ports of the segment; a frame is never sent back out of its ingress port.
//!
//! [`MacCache`]: crate::tables::mac_cache::MacCache

use std::ops::ControlFlow;

use crate::drop_reason::DropReason;
use crate::stage::{Packet, StageContext, Step, drop, forward};
use crate::tables::mac_cache;

// Always inlined: see `pipeline::stages`.
#[inline(always)]
pub(crate) fn forward_by_mac<'a>(ctx: &mut StageContext<'a>, pkt: &mut Packet<'a, '_>) -> Step {
    let (port, dst) = (pkt.port, pkt.meta.dst_mac);
    if dst.is_multicast() {
        return ControlFlow::Continue(());
    }
    let key = mac_cache::key(port.segment, dst);
    let egress = match ctx.cache.get(key) {
        Some(p) => Some(p),
        None => {
            // Not `or_else`: as a closure it became a call of its own (see `pipeline::stages`).
            let found = match ctx.tables.static_port(port.segment, dst) {
                Some(p) => Some(p),
                None => ctx.fdb.lookup(port.segment, dst),
            };
            if let Some(p) = found {
                ctx.cache.insert(key, p, ctx.now);
            }
            found
        }
    };
    match egress {
        Some(p) if p == port.id => drop(DropReason::DestinationIsIngress),
        Some(p) => forward(p),
        None => ControlFlow::Continue(()),
    }
}
