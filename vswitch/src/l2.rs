//! L2 forwarding: destination MAC → port.
//!
//! Statically bound MACs (pods, the host port) are looked up in the tables snapshot,
//! learned ones in the FDB. Broadcast, multicast and unknown unicast are flooded to the
//! other ports of the segment; a frame is never sent back out of its ingress port.

use crate::drop_reason::DropReason;
use crate::fdb::FdbBatch;
use crate::pipeline::Verdict;
use crate::tables::{PortEntry, Tables};
use crate::wire::FrameMeta;

#[inline]
pub fn forward(tables: &Tables, fdb: &FdbBatch<'_>, port: &PortEntry, meta: &FrameMeta) -> Verdict {
    if meta.dst_mac.is_multicast() {
        return Verdict::Flood;
    }
    let egress =
        tables.static_port(port.segment, meta.dst_mac).or_else(|| fdb.lookup(port.segment, meta.dst_mac));
    match egress {
        Some(p) if p == port.id => Verdict::Drop(DropReason::DestinationIsIngress),
        Some(p) => Verdict::Forward(p),
        None => Verdict::Flood,
    }
}
