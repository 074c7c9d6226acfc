//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size
//! `M` in which every backend owns `⌊M/N⌋` or `⌈M/N⌉` slots, filled so that removing or
//! adding one backend moves only about `1/N` of the slots.
//!
//! The control plane builds one table per Service port from its ready endpoints; workers
//! pick a new flow's endpoint by `table[hash(5-tuple) % M]`. Established flows never
//! consult it (conntrack does), so a table change moves only new flows.
//!
//! Hashes are this file's own (splitmix64 finalizer): stable across restarts and
//! releases, so a restarted daemon — its conntrack gone — sends an established flow's
//! next packet to the same endpoint as before, as long as the endpoints are the same.

/// The splitmix64 finalizer: a fixed, well-mixed 64-bit permutation.
#[inline]
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hash of an IPv4 5-tuple, for choosing a new flow's slot.
#[inline]
pub fn flow_hash(src: u32, dst: u32, src_port: u16, dst_port: u16, proto: u8) -> u64 {
    let a = (u64::from(src) << 32) | u64::from(dst);
    let b = (u64::from(src_port) << 32) | (u64::from(dst_port) << 8) | u64::from(proto);
    mix64(mix64(a) ^ b)
}

/// Table sizes: primes just below powers of two. A table keeps its size while its
/// backends change within a step, which is what keeps churn down to about 1/N (a new
/// size would reshuffle everything); each step holds up to 1/100 of its size.
const SIZES: [usize; 8] = [251, 1021, 4093, 16381, 65521, 262_139, 1_048_573, 4_194_301];

/// The table size for `backends`: the first of [`SIZES`] at least 100 times their
/// number, so shares differ from the ideal by under 1%, and never smaller than the
/// `previous` size of the same table. Sizes only grow: a table that shrank when an
/// endpoint left would reshuffle every flow.
pub fn table_size(backends: usize, previous: usize) -> usize {
    let wanted = SIZES.iter().copied().find(|m| *m >= backends * 100).unwrap_or(SIZES[SIZES.len() - 1]);
    wanted.max(previous)
}

/// A filled Maglev table over backends `0..n` (indexes into the caller's list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maglev {
    slots: Box<[u16]>,
}

impl Maglev {
    /// Builds a table of [`table_size`]`(keys.len(), previous_size)` slots for backends
    /// identified by `keys` (e.g. endpoint IP and port packed into a u64); `None` when
    /// there are none. At most 65535 backends.
    pub fn build(keys: &[u64], previous_size: usize) -> Option<Maglev> {
        if keys.is_empty() {
            return None;
        }
        let n = keys.len().min(usize::from(u16::MAX));
        let m = table_size(n, previous_size);
        // Each backend walks its own permutation of the slots: start at `offset`,
        // step by `skip` (never 0; m is prime, so every step visits all slots).
        let perm: Vec<(usize, usize)> = keys[..n]
            .iter()
            .map(|k| {
                let offset = (mix64(*k ^ 0x6d61_676c_6576_0001) % m as u64) as usize;
                let skip = (mix64(*k ^ 0x6d61_676c_6576_0002) % (m as u64 - 1)) as usize + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0usize; n];
        let mut slots = vec![u16::MAX; m];
        let mut filled = 0;
        'fill: loop {
            for (i, (offset, skip)) in perm.iter().enumerate() {
                let mut c = (offset + next[i] * skip) % m;
                while slots[c] != u16::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                slots[c] = i as u16;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Some(Maglev { slots: slots.into_boxed_slice() })
    }

    /// The backend index for a flow hash.
    #[inline]
    pub fn pick(&self, hash: u64) -> usize {
        usize::from(self.slots[(hash % self.slots.len() as u64) as usize])
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Slots per backend, for tests and diagnostics.
    pub fn shares(&self, backends: usize) -> Vec<usize> {
        let mut v = vec![0; backends];
        for s in self.slots.iter() {
            v[usize::from(*s)] += 1;
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(n: usize, salt: u64) -> Vec<u64> {
        (0..n as u64).map(|i| (0x0af4_0100 + i) << 16 | (8080 + salt)).collect()
    }

    fn is_prime(n: usize) -> bool {
        n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
    }

    #[test]
    fn sizes_are_primes_a_hundred_times_the_backends() {
        assert!(SIZES.iter().all(|m| is_prime(*m)));
        assert_eq!(table_size(1, 0), 251);
        assert_eq!(table_size(3, 0), 1021);
        assert_eq!(table_size(2, 1021), 1021, "never shrinks");
        assert_eq!(table_size(655, 0), 65521);
        for n in 1..=10_000 {
            assert!(table_size(n, 0) >= 100 * n);
        }
    }

    /// Every backend's share is within 1% of M/N, for 3 to 100 backends.
    #[test]
    fn balance_within_one_percent() {
        for n in 3..=100 {
            let t = Maglev::build(&keys(n, 0), 0).unwrap();
            let ideal = t.len() as f64 / n as f64;
            for (i, share) in t.shares(n).into_iter().enumerate() {
                let off = (share as f64 - ideal).abs() / ideal;
                assert!(off <= 0.01, "n={n}, backend {i}: {share} slots vs ideal {ideal:.1}");
            }
        }
    }

    /// Removing one backend moves its own flows (1/N) and at most 3% of the others,
    /// with the table size kept.
    #[test]
    fn removing_a_backend_disrupts_about_one_nth() {
        for n in [3usize, 5, 10, 30, 100] {
            let all = keys(n, 1);
            let before = Maglev::build(&all, 0).unwrap();
            for gone in [0, n / 2, n - 1] {
                let rest: Vec<u64> =
                    all.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, k)| *k).collect();
                let after = Maglev::build(&rest, before.len()).unwrap();
                assert_eq!(after.len(), before.len());
                // Different sizes (N-1 backends): compare the backend chosen per flow.
                let flows = 200_000u64;
                let mut moved_survivors = 0;
                for f in 0..flows {
                    let h = mix64(f);
                    let was = before.pick(h);
                    if was == gone {
                        continue;
                    }
                    let now_key = rest[after.pick(h)];
                    if now_key != all[was] {
                        moved_survivors += 1;
                    }
                }
                let frac = moved_survivors as f64 / flows as f64;
                // The departed backend's ~1/N of flows must move; Maglev moves a few
                // percent of the others too (the paper measures 1-3% for these sizes).
                assert!(
                    frac <= 0.03,
                    "n={n}, removed {gone}: {frac:.3} of flows to surviving backends moved"
                );
            }
        }
    }

    proptest! {
        /// Every slot is filled with a valid backend, whatever the keys.
        #[test]
        fn every_slot_is_a_backend(keys in proptest::collection::vec(any::<u64>(), 1..40)) {
            let t = Maglev::build(&keys, 0).unwrap();
            prop_assert!(t.shares(keys.len()).iter().sum::<usize>() == t.len());
            prop_assert!((0..1000).all(|h| t.pick(mix64(h)) < keys.len()));
        }
    }
}
