//! L2 forwarding: destination MAC → port.
//!
//! Statically bound MACs (pods, the host port) are looked up in the tables snapshot,
//! learned ones in the FDB, both behind this worker's [`MacCache`]. Broadcast, multicast and unknown unicast are flooded to the
//! other ports of the segment; a frame is never sent back out of its ingress port.

use crate::drop_reason::DropReason;
use crate::fdb::FdbBatch;
use crate::mac_cache::{self, MacCache};
use crate::pipeline::Verdict;
use crate::tables::{PortEntry, Tables};
use crate::wire::FrameMeta;

#[inline]
pub fn forward(
    tables: &Tables,
    fdb: &FdbBatch<'_>,
    cache: &mut MacCache,
    port: &PortEntry,
    meta: &FrameMeta,
    now: u32,
) -> Verdict {
    if meta.dst_mac.is_multicast() {
        return Verdict::Flood;
    }
    let key = mac_cache::key(port.segment, meta.dst_mac);
    let egress = cache.get(key).or_else(|| {
        let found =
            tables.static_port(port.segment, meta.dst_mac).or_else(|| fdb.lookup(port.segment, meta.dst_mac));
        if let Some(p) = found {
            cache.insert(key, p, now);
        }
        found
    });
    match egress {
        Some(p) if p == port.id => Verdict::Drop(DropReason::DestinationIsIngress),
        Some(p) => Verdict::Forward(p),
        None => Verdict::Flood,
    }
}
