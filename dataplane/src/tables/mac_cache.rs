//! A per-worker cache of MAC → port answers, in front of the tables snapshot and the
//! shared FDB (the idea of OVS's exact-match cache).
//!
//! A hit costs one probe of a small direct-mapped array the worker owns: no shared
//! cache lines, no hashing beyond one multiply. The cache holds no entry longer than
//! the state it was read from: every slot carries the cache *generation* it was filled
//! in, and the generation advances whenever the worker sees a new tables snapshot or a
//! new FDB epoch (the FDB bumps its epoch when an entry moves or is removed; new
//! entries need no bump, since the cache holds no negative answers). A worker checks
//! both once per batch, so a move made by another worker is seen within one batch.

use crate::ids::{PortId, SegmentId};
use crate::wire::MacAddr;

const SLOTS: usize = 16384;

#[derive(Clone, Copy, Default)]
struct Slot {
    key: u64,
    /// Generation the slot was filled in; 0 never matches (generations start at 1).
    generation: u32,
    port: PortId,
    /// Low 16 bits of the second in which this worker last refreshed the FDB entry
    /// for this MAC as a source (learned MACs only).
    refreshed: u16,
}

pub struct MacCache {
    slots: Box<[Slot]>,
    generation: u32,
    seen_tables: u64,
    seen_fdb_epoch: u64,
}

#[inline]
pub fn key(segment: SegmentId, mac: MacAddr) -> u64 {
    (u64::from(segment.0) << 48) | mac.to_u64()
}

#[inline]
fn index(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as usize
}

impl Default for MacCache {
    fn default() -> Self {
        MacCache {
            slots: vec![Slot::default(); SLOTS].into_boxed_slice(),
            generation: 1,
            seen_tables: 0,
            seen_fdb_epoch: 0,
        }
    }
}

impl MacCache {
    /// Called once per batch: forgets everything if the tables or the FDB changed.
    #[inline]
    pub fn validate(&mut self, tables_generation: u64, fdb_epoch: u64) {
        if tables_generation != self.seen_tables || fdb_epoch != self.seen_fdb_epoch {
            self.seen_tables = tables_generation;
            self.seen_fdb_epoch = fdb_epoch;
            self.generation = self.generation.wrapping_add(1).max(1);
        }
    }

    /// The cached port for `key`, if any.
    #[inline]
    pub fn get(&self, key: u64) -> Option<PortId> {
        let s = &self.slots[index(key)];
        (s.key == key && s.generation == self.generation).then_some(s.port)
    }

    /// True if `key` is cached on `port` and was refreshed as a source in second `now`.
    #[inline]
    pub fn fresh_source(&self, key: u64, port: PortId, now: u32) -> bool {
        let s = &self.slots[index(key)];
        s.key == key && s.generation == self.generation && s.port == port && s.refreshed == now as u16
    }

    /// Caches a destination answer.
    #[inline]
    pub fn insert(&mut self, key: u64, port: PortId, now: u32) {
        // Not marked fresh: the next frame from this MAC refreshes its FDB entry.
        let refreshed = (now as u16).wrapping_sub(1);
        self.slots[index(key)] = Slot { key, generation: self.generation, port, refreshed };
    }

    /// Caches a source MAC just learned or refreshed on `port` in second `now`.
    #[inline]
    pub fn insert_source(&mut self, key: u64, port: PortId, now: u32) {
        self.slots[index(key)] = Slot { key, generation: self.generation, port, refreshed: now as u16 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::mac;

    #[test]
    fn hits_until_anything_changes() {
        let mut c = MacCache::default();
        c.validate(1, 1);
        let k = key(SegmentId(0), mac(1));
        assert_eq!(c.get(k), None);
        c.insert(k, PortId(7), 100);
        assert_eq!(c.get(k), Some(PortId(7)));
        assert_eq!(c.get(key(SegmentId(1), mac(1))), None, "segment is part of the key");
        assert!(!c.fresh_source(k, PortId(7), 100), "a destination answer is not a refresh");
        c.insert_source(k, PortId(7), 100);
        assert!(c.fresh_source(k, PortId(7), 100));
        assert!(!c.fresh_source(k, PortId(7), 101), "a new second needs a refresh");
        assert!(!c.fresh_source(k, PortId(8), 100), "another port is a move");
        c.validate(1, 1);
        assert_eq!(c.get(k), Some(PortId(7)), "same state: still valid");
        c.validate(1, 2);
        assert_eq!(c.get(k), None, "FDB epoch moved");
        c.insert(k, PortId(7), 100);
        c.validate(2, 2);
        assert_eq!(c.get(k), None, "new tables");
    }
}
