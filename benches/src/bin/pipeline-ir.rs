//! Runs one pipeline workload for a fixed number of packets, for instruction counting
//! under `valgrind --tool=callgrind` (see `benches/callgrind.sh`): instructions are
//! repeatable where wall-clock time on a shared machine is not.
//!
//! Usage: pipeline-ir <workload> <packets> [batch]

use vswitch_benches::{Workload, rig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        let names: Vec<&str> = Workload::ALL.iter().map(|w| w.name()).collect();
        eprintln!("usage: pipeline-ir <workload> <packets> [batch]\nworkloads: {}", names.join(", "));
        std::process::exit(2);
    };
    let Some(workload) = args.get(1).and_then(|n| Workload::from_name(n)) else { usage() };
    let Some(packets) = args.get(2).and_then(|n| n.parse::<u64>().ok()) else { usage() };
    let batch = args.get(3).map_or(Some(64), |b| b.parse().ok()).unwrap_or_else(|| usage());
    let mut rig = rig(workload, batch);
    let mut done = 0u64;
    while done < packets {
        done += rig.poll() as u64;
        // New-flow workloads: the count includes forgetting each flow again, which
        // housekeeping does in the daemon (amortised, one removal per flow).
        if rig.needs_reset() {
            rig.reset();
        }
    }
    println!("{} packets={done} sent={}", workload.name(), rig.sent());
}
