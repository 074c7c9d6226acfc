//! Identities the data path indexes by: ports, segments, remote nodes, workers.
//!
//! Each is a newtype over the integer the tables index with, so a port id cannot be
//! passed where a segment or node is meant. `index()` gives the array position.

use std::fmt;

macro_rules! index_id {
    ($(#[$doc:meta])* $name:ident($int:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(transparent)]
        pub struct $name(pub $int);

        impl $name {
            /// The position in arrays indexed by this id.
            #[inline(always)]
            pub const fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$int> for $name {
            fn from(v: $int) -> $name {
                $name(v)
            }
        }
    };
}

index_id!(
    /// A port in the tables and in per-port counters.
    PortId(u16)
);
index_id!(
    /// A broadcast domain: frames are flooded and MACs learned within one segment.
    /// Below [`MAX_SEGMENTS`].
    SegmentId(u16)
);
index_id!(
    /// A remote node in the overlay's node table.
    NodeIndex(u16)
);

/// Index of a data-plane worker thread (below [`MAX_WORKERS`]).
pub type WorkerId = usize;

/// Segment ids are below this (12 bits, like VLAN ids), so per-segment state is a flat array.
pub const MAX_SEGMENTS: usize = 4096;
/// Worker sets are 64-bit masks.
pub const MAX_WORKERS: usize = 64;

/// A set of workers.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct WorkerSet(pub u64);

impl WorkerSet {
    pub fn single(w: WorkerId) -> WorkerSet {
        WorkerSet(1 << w)
    }

    pub fn all(workers: usize) -> WorkerSet {
        if workers >= 64 { WorkerSet(u64::MAX) } else { WorkerSet((1u64 << workers) - 1) }
    }

    #[inline]
    pub fn contains(self, w: WorkerId) -> bool {
        w < MAX_WORKERS && self.0 & (1 << w) != 0
    }

    pub fn insert(&mut self, w: WorkerId) {
        self.0 |= 1 << w;
    }

    /// The lowest-numbered worker in the set.
    #[inline]
    pub fn first(self) -> Option<WorkerId> {
        (self.0 != 0).then(|| self.0.trailing_zeros() as WorkerId)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = WorkerId> {
        (0..MAX_WORKERS).filter(move |w| self.contains(*w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_sets() {
        let mut s = WorkerSet::default();
        assert_eq!(s.first(), None);
        s.insert(3);
        s.insert(1);
        assert_eq!(s.first(), Some(1));
        assert!(s.contains(3) && !s.contains(2) && !s.contains(200));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(WorkerSet::all(2).iter().collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn ids_display_as_their_number_and_index_arrays() {
        assert_eq!(PortId(7).to_string(), "7");
        assert_eq!(SegmentId(4095).index(), 4095);
        assert!(NodeIndex(1) < NodeIndex(2));
    }
}
