//! Packets per second through one worker's pipeline on in-memory ports, 64-byte frames.
//!
//! `cargo bench -p vswitch-benches --bench pipeline`; per-packet time is criterion's
//! time per iteration divided by the batch, and Mpps is its "thrpt" line.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vswitch_benches::{Workload, rig};

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    for batch in [64, 256] {
        for workload in Workload::ALL {
            let mut rig = rig(workload, batch);
            group.throughput(Throughput::Elements(rig.frames_per_poll as u64));
            group.bench_function(format!("{}/batch{batch}", workload.name()), |b| b.iter(|| rig.poll()));
        }
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
