//! The measurement behind the learned FDB's map: lookups of u64 keys with atomic values
//! in papaya (guard held per 256 lookups, as a worker does per batch), dashmap (one
//! shard read lock per lookup) and an immutable std HashMap (what the tables snapshot
//! uses for static MACs), with foldhash in all three.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

type Hasher = foldhash::fast::RandomState;
const ENTRIES: u64 = 10_000;
const LOOKUPS: usize = 256;

fn keys(hot: usize) -> Vec<u64> {
    let all: Vec<u64> =
        (0..ENTRIES).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) & 0xffff_ffff_ffff).collect();
    (0..LOOKUPS * 16).map(|i| all[(i * 7919) % hot]).collect()
}

fn fdb_map(c: &mut Criterion) {
    let all: Vec<u64> =
        (0..ENTRIES).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) & 0xffff_ffff_ffff).collect();
    let papaya: papaya::HashMap<u64, AtomicU32, Hasher> =
        papaya::HashMap::builder().hasher(Hasher::default()).build();
    let dash: dashmap::DashMap<u64, AtomicU32, Hasher> = dashmap::DashMap::with_hasher(Hasher::default());
    let mut std: HashMap<u64, u32, Hasher> = HashMap::default();
    for (i, k) in all.iter().enumerate() {
        papaya.pin().insert(*k, AtomicU32::new(i as u32));
        dash.insert(*k, AtomicU32::new(i as u32));
        std.insert(*k, i as u32);
    }
    let mut group = c.benchmark_group("fdb_map");
    group.throughput(Throughput::Elements(LOOKUPS as u64));
    for (label, hot) in [("hot256", 256usize), ("uniform10k", ENTRIES as usize)] {
        let seq = keys(hot);
        let mut at = 0;
        let mut next = move || {
            at = (at + LOOKUPS) % seq.len();
            seq[at..at + LOOKUPS].to_vec()
        };
        let batches: Vec<Vec<u64>> = (0..16).map(|_| next()).collect();
        let mut i = 0;
        group.bench_function(format!("papaya/{label}"), |b| {
            b.iter(|| {
                i = (i + 1) % batches.len();
                let guard = papaya.guard();
                let mut s = 0u64;
                for k in &batches[i] {
                    s += papaya.get(k, &guard).map_or(0, |v| u64::from(v.load(Ordering::Relaxed)));
                }
                black_box(s)
            })
        });
        group.bench_function(format!("dashmap/{label}"), |b| {
            b.iter(|| {
                i = (i + 1) % batches.len();
                let mut s = 0u64;
                for k in &batches[i] {
                    s += dash.get(k).map_or(0, |v| u64::from(v.load(Ordering::Relaxed)));
                }
                black_box(s)
            })
        });
        group.bench_function(format!("std_immutable/{label}"), |b| {
            b.iter(|| {
                i = (i + 1) % batches.len();
                let mut s = 0u64;
                for k in &batches[i] {
                    s += std.get(k).map_or(0, |v| u64::from(*v));
                }
                black_box(s)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fdb_map);
criterion_main!(benches);
