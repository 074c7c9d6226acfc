//! The learned forwarding database: source MAC → port, per segment, with aging and a
//! per-segment size cap.
//!
//! Only ports without a statically bound MAC (uplinks) need learning; pod and host MACs
//! are in the [`crate::tables::Tables`] snapshot and never touch this table.
//!
//! # Concurrency
//! All workers read and write one `papaya` map: lock-free lookups (one epoch guard per
//! batch, no atomic read-modify-write per lookup) and lock-free inserts. Entries hold
//! their port and last-seen time in atomics, so refreshing an entry is a plain store,
//! done at most once per second per entry.
//!
//! Consistency: a MAC learned by one worker is visible to the others as soon as its
//! insert completes; a move is visible once the port store is. Two workers learning the
//! same new MAC at once: the first insert wins and the second counts as a move if the
//! ports differ. A lookup racing with an age-out sees the entry or not; either way the
//! frame is forwarded or flooded, never misdirected to a port outside its segment.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use papaya::{Guard, LocalGuard};

use crate::ids::{MAX_SEGMENTS, PortId, SegmentId};
use crate::wire::MacAddr;

/// Limits of the learned table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbConfig {
    /// Entries per segment beyond which new MACs are not learned (counted).
    pub max_entries_per_segment: u32,
    /// Seconds without traffic after which an entry is forgotten.
    pub aging_secs: u32,
}

impl Default for FdbConfig {
    fn default() -> Self {
        FdbConfig { max_entries_per_segment: 65_536, aging_secs: 300 }
    }
}

struct Entry {
    port: AtomicU32,
    last_seen: AtomicU32,
}

/// Result of learning a source MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// Already known on this port (timestamp refreshed if it was stale).
    Known,
    /// A new entry.
    New,
    /// Known on another port; now points at this one.
    Moved { from: PortId },
    /// Not learned: the segment's table is at its cap.
    TableFull,
    /// Not learned: the caller's policy refused the new entry.
    Refused,
}

/// One learned entry, for dumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbRecord {
    pub segment: SegmentId,
    pub mac: MacAddr,
    pub port: PortId,
    /// Seconds since the entry last saw traffic.
    pub age_secs: u32,
}

pub struct Fdb {
    map: papaya::HashMap<u64, Entry, foldhash::fast::RandomState>,
    per_segment: Box<[AtomicU32]>,
    config: FdbConfig,
    /// Advances whenever an entry moves or is removed, so per-worker caches of lookups
    /// ([`crate::tables::mac_cache::MacCache`]) know to forget. Inserts do not advance it.
    epoch: AtomicU64,
}

#[inline]
fn key(segment: SegmentId, mac: MacAddr) -> u64 {
    (u64::from(segment.0) << 48) | mac.to_u64()
}

#[inline]
fn split_key(key: u64) -> (SegmentId, MacAddr) {
    (SegmentId((key >> 48) as u16), MacAddr::from_u64(key))
}

impl Fdb {
    pub fn new(config: FdbConfig) -> Fdb {
        Fdb {
            map: papaya::HashMap::builder().hasher(foldhash::fast::RandomState::default()).build(),
            per_segment: (0..MAX_SEGMENTS).map(|_| AtomicU32::new(0)).collect(),
            config,
            epoch: AtomicU64::new(1),
        }
    }

    pub fn config(&self) -> FdbConfig {
        self.config
    }

    /// The current epoch (see the field's doc); read once per batch.
    #[inline]
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn advance_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::Release);
    }

    /// A handle for one batch: holds the map's epoch guard so lookups are lock-free.
    /// Drop it at the end of the batch so memory of removed entries can be reclaimed.
    pub fn batch(&self) -> FdbBatch<'_> {
        FdbBatch { fdb: self, guard: self.map.guard() }
    }

    /// Learned entries in `segment`.
    pub fn len_in(&self, segment: SegmentId) -> u32 {
        self.per_segment.get(segment.index()).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn forget(&self, should_go: impl Fn(u64, &Entry) -> bool) -> usize {
        let mut removed = 0;
        let guard = self.map.guard();
        self.map.retain(
            |k, e| {
                let go = should_go(*k, e);
                if go {
                    removed += 1;
                    self.per_segment[split_key(*k).0.index()].fetch_sub(1, Ordering::Relaxed);
                }
                !go
            },
            &guard,
        );
        if removed > 0 {
            self.advance_epoch();
        }
        removed
    }

    /// Forgets entries idle for longer than the aging time. Returns how many went.
    /// Called by housekeeping about once a second, never on the packet path.
    pub fn age_out(&self, now: u32) -> usize {
        let aging = self.config.aging_secs;
        self.forget(|_, e| now.saturating_sub(e.last_seen.load(Ordering::Relaxed)) > aging)
    }

    /// Forgets every entry pointing at `port` (the port is being removed).
    pub fn forget_port(&self, port: PortId) -> usize {
        self.forget(|_, e| e.port.load(Ordering::Relaxed) == u32::from(port.0))
    }

    /// A snapshot of all entries, for the control API.
    pub fn records(&self, now: u32) -> Vec<FdbRecord> {
        let guard = self.map.guard();
        let mut out: Vec<FdbRecord> = self
            .map
            .iter(&guard)
            .map(|(k, e)| {
                let (segment, mac) = split_key(*k);
                FdbRecord {
                    segment,
                    mac,
                    port: PortId(e.port.load(Ordering::Relaxed) as u16),
                    age_secs: now.saturating_sub(e.last_seen.load(Ordering::Relaxed)),
                }
            })
            .collect();
        out.sort_by_key(|r| (r.segment, r.mac));
        out
    }
}

/// Lookups and learning for one batch of frames.
pub struct FdbBatch<'a> {
    fdb: &'a Fdb,
    guard: LocalGuard<'a>,
}

impl FdbBatch<'_> {
    /// The port `mac` was learned on in `segment`.
    // Always inlined: see `pipeline::stages`.
    #[inline(always)]
    pub fn lookup(&self, segment: SegmentId, mac: MacAddr) -> Option<PortId> {
        self.fdb
            .map
            .get(&key(segment, mac), &self.guard)
            .map(|e| PortId(e.port.load(Ordering::Relaxed) as u16))
    }

    /// Records that `mac` was seen as a source on `port` at time `now` (seconds).
    #[inline]
    pub fn learn(&self, segment: SegmentId, mac: MacAddr, port: PortId, now: u32) -> Learned {
        self.learn_if(segment, mac, port, now, || true)
    }

    /// [`learn`](Self::learn), asking `may_insert` before creating a new entry. The
    /// check runs only for MACs not yet known, so a known MAC costs one lookup.
    #[inline]
    pub fn learn_if(
        &self,
        segment: SegmentId,
        mac: MacAddr,
        port: PortId,
        now: u32,
        may_insert: impl FnOnce() -> bool,
    ) -> Learned {
        let k = key(segment, mac);
        if let Some(e) = self.fdb.map.get(&k, &self.guard) {
            return self.refresh(e, port, now);
        }
        if !may_insert() {
            return Learned::Refused;
        }
        let Some(count) = self.fdb.per_segment.get(segment.index()) else {
            return Learned::TableFull;
        };
        // Reserve a slot first so concurrent learners cannot overshoot the cap.
        if count.fetch_add(1, Ordering::Relaxed) >= self.fdb.config.max_entries_per_segment {
            count.fetch_sub(1, Ordering::Relaxed);
            return Learned::TableFull;
        }
        let entry = Entry { port: AtomicU32::new(u32::from(port.0)), last_seen: AtomicU32::new(now) };
        match self.fdb.map.try_insert(k, entry, &self.guard) {
            Ok(_) => Learned::New,
            Err(occupied) => {
                // Another worker learned it first.
                count.fetch_sub(1, Ordering::Relaxed);
                self.refresh(occupied.current, port, now)
            }
        }
    }

    #[inline]
    fn refresh(&self, e: &Entry, port: PortId, now: u32) -> Learned {
        // Plain loads and stores; each entry has a single writer in practice (the worker
        // owning the port the MAC is behind), and a lost race only delays a refresh.
        if e.last_seen.load(Ordering::Relaxed) != now {
            e.last_seen.store(now, Ordering::Relaxed);
        }
        let old = e.port.load(Ordering::Relaxed);
        if old == u32::from(port.0) {
            Learned::Known
        } else {
            e.port.store(u32::from(port.0), Ordering::Relaxed);
            self.fdb.advance_epoch();
            Learned::Moved { from: PortId(old as u16) }
        }
    }
}

impl Drop for FdbBatch<'_> {
    fn drop(&mut self) {
        // Let the collector reclaim retired entries promptly on long-running workers.
        self.guard.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::mac;

    #[test]
    fn learn_lookup_move() {
        let fdb = Fdb::new(FdbConfig::default());
        let b = fdb.batch();
        assert_eq!(b.lookup(SegmentId(0), mac(1)), None);
        assert_eq!(b.learn(SegmentId(0), mac(1), PortId(4), 10), Learned::New);
        assert_eq!(b.learn(SegmentId(0), mac(1), PortId(4), 11), Learned::Known);
        assert_eq!(b.lookup(SegmentId(0), mac(1)), Some(PortId(4)));
        assert_eq!(b.lookup(SegmentId(1), mac(1)), None, "segments are separate");
        assert_eq!(b.learn(SegmentId(0), mac(1), PortId(7), 12), Learned::Moved { from: PortId(4) });
        assert_eq!(b.lookup(SegmentId(0), mac(1)), Some(PortId(7)));
        assert_eq!(fdb.len_in(SegmentId(0)), 1);
    }

    #[test]
    fn epoch_advances_on_moves_and_removals_only() {
        let fdb = Fdb::new(FdbConfig::default());
        let e0 = fdb.epoch();
        fdb.batch().learn(SegmentId(0), mac(1), PortId(4), 0);
        fdb.batch().learn(SegmentId(0), mac(1), PortId(4), 1);
        assert_eq!(fdb.epoch(), e0, "insert and refresh keep caches valid");
        fdb.batch().learn(SegmentId(0), mac(1), PortId(5), 1);
        assert!(fdb.epoch() > e0);
        let e1 = fdb.epoch();
        assert_eq!(fdb.age_out(1), 0);
        assert_eq!(fdb.epoch(), e1, "nothing removed");
        fdb.forget_port(PortId(5));
        assert!(fdb.epoch() > e1);
    }

    #[test]
    fn cap_per_segment() {
        let fdb = Fdb::new(FdbConfig { max_entries_per_segment: 3, aging_secs: 300 });
        let b = fdb.batch();
        for i in 0..3 {
            assert_eq!(b.learn(SegmentId(0), mac(i), PortId(1), 0), Learned::New);
        }
        assert_eq!(b.learn(SegmentId(0), mac(99), PortId(1), 0), Learned::TableFull);
        assert_eq!(b.lookup(SegmentId(0), mac(99)), None);
        assert_eq!(
            b.learn(SegmentId(0), mac(1), PortId(2), 0),
            Learned::Moved { from: PortId(1) },
            "known MACs still move"
        );
        assert_eq!(
            b.learn(SegmentId(1), mac(99), PortId(1), 0),
            Learned::New,
            "other segments have their own cap"
        );
        assert_eq!((fdb.len_in(SegmentId(0)), fdb.len_in(SegmentId(1)), fdb.len()), (3, 1, 4));
    }

    #[test]
    fn aging_and_port_removal() {
        let fdb = Fdb::new(FdbConfig { max_entries_per_segment: 10, aging_secs: 300 });
        {
            let b = fdb.batch();
            b.learn(SegmentId(0), mac(1), PortId(1), 0);
            b.learn(SegmentId(0), mac(2), PortId(1), 100);
            b.learn(SegmentId(0), mac(3), PortId(2), 200);
            b.learn(SegmentId(0), mac(1), PortId(1), 250); // refreshed
        }
        assert_eq!(fdb.age_out(400), 0, "idle for exactly the aging time is kept");
        assert_eq!(fdb.age_out(401), 1, "mac 2, last seen at 100");
        assert_eq!(fdb.batch().lookup(SegmentId(0), mac(2)), None);
        let records = fdb.records(401);
        assert_eq!(
            records,
            vec![
                FdbRecord { segment: SegmentId(0), mac: mac(1), port: PortId(1), age_secs: 151 },
                FdbRecord { segment: SegmentId(0), mac: mac(3), port: PortId(2), age_secs: 201 },
            ]
        );
        assert_eq!(fdb.forget_port(PortId(1)), 1);
        assert_eq!(fdb.len_in(SegmentId(0)), 1);
        // Freed capacity is usable again.
        assert_eq!(fdb.batch().learn(SegmentId(0), mac(9), PortId(1), 500), Learned::New);
    }

    #[test]
    fn concurrent_learners_respect_the_cap() {
        let fdb = std::sync::Arc::new(Fdb::new(FdbConfig { max_entries_per_segment: 1000, aging_secs: 300 }));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let fdb = fdb.clone();
                std::thread::spawn(move || {
                    let b = fdb.batch();
                    for i in 0..2000u32 {
                        b.learn(SegmentId(0), mac(i * 4 + t), PortId(t as u16), 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(fdb.len_in(SegmentId(0)), 1000);
        assert_eq!(fdb.len(), 1000);
    }
}
