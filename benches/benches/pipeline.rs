//! Packets per second through one worker's pipeline on in-memory ports, 64-byte frames.
//!
//! `cargo bench -p vswitch-benches --bench pipeline`; per-packet time is criterion's
//! time per iteration divided by the batch, and Mpps is its "thrpt" line.
//!
//! The `service_dnat_*` workloads send from a pod to a Service VIP: established flows
//! (conntrack lookup and DNAT), or a new flow every packet (Maglev pick, conntrack
//! insert, DNAT); for the latter the clock stops while conntrack is emptied every 32k
//! flows, which in the daemon is housekeeping's work on the control thread.
//!
//! `baseline_io_only` is the side-by-side floor of the same run: the in-memory ports
//! alone (receive a batch from the replay port, hand it to the sink) without any
//! switching, so the pipeline's own cost is the difference.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vswitch_benches::{Workload, baseline_frames, rig};
use vswitch_dataplane::frame::{DEFAULT_BUF_SIZE, FramePool, SharedPool};
use vswitch_dataplane::port::PortQueue;
use vswitch_dataplane::port::memory::MemoryPort;

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    for batch in [64, 256] {
        group.throughput(Throughput::Elements(batch as u64));
        let (mut rx, _) = MemoryPort::replay("in", baseline_frames());
        let (mut tx, _) = MemoryPort::sink("out");
        let mut pool = FramePool::new(SharedPool::new(DEFAULT_BUF_SIZE, 4 * batch), 4 * batch);
        let mut frames = Vec::with_capacity(batch);
        group.bench_function(format!("baseline_io_only/batch{batch}"), |b| {
            b.iter(|| {
                rx.rx_batch(&mut pool, &mut frames, batch).expect("memory ports do not fail");
                tx.tx_batch(&mut frames, &mut pool)
            })
        });
        for workload in Workload::ALL {
            let mut rig = rig(workload, batch);
            group.throughput(Throughput::Elements(rig.frames_per_poll as u64));
            group.bench_function(format!("{}/batch{batch}", workload.name()), |b| {
                // The clock stops while new-flow workloads empty conntrack (housekeeping's
                // job, off the packet path).
                b.iter_custom(|iters| {
                    let mut measured = Duration::ZERO;
                    let mut start = Instant::now();
                    for _ in 0..iters {
                        black_box(rig.poll());
                        if rig.needs_reset() {
                            measured += start.elapsed();
                            rig.reset();
                            start = Instant::now();
                        }
                    }
                    measured + start.elapsed()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
