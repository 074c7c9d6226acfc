//! The packet-rate harness: pod-to-pod traffic through each contender on the same
//! namespace topology, in one run, so the figures compare as ratios.
//!
//! Contenders: the kernel bridge (the `cbr0` set-up: veth pods on a Linux bridge),
//! vswitchd with TAP ports, vswitchd with AF_XDP ports. Workloads: 64-byte UDP frames
//! from `trafgen` (pps), and a TCP stream from `iperf3` (Gbit/s). Each figure is the
//! median of `--runs` runs of `--seconds` seconds, with min and max; offered load
//! (what the generator sent) is recorded next to delivered (the receiving pod's
//! interface counter), and vswitchd's own CPU time per forwarded packet is reported.
//!
//! The generator is pinned to CPU 0 and vswitchd's single worker to CPU 1. The kernel
//! bridge has no thread of its own: it forwards in softirq on the sending CPU, i.e. it
//! shares CPU 0 with the generator.
//!
//! Usage (root): `cargo run --release -p vswitch-benches --bin packet-rate -- [--runs N]
//! [--seconds S] [--only bridge,tap,afxdp]`; prints a markdown table.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use vswitch::testbed::{Netns, Signal, unique_prefix, wait_until};
use vswitch::testing::FrameSpec;
use vswitch::wire::MacAddr;
use vswitch_benches::node::{Scratch, Vswitchd, median};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    Bridge,
    VswitchTap,
    VswitchAfxdp,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Bridge => "kernel bridge (veth)",
            Contender::VswitchTap => "vswitchd, TAP ports",
            Contender::VswitchAfxdp => "vswitchd, AF_XDP ports",
        }
    }
}

const A_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const A_MAC: MacAddr = MacAddr([0x02, 0x00, 10, 244, 1, 2]);
const B_MAC: MacAddr = MacAddr([0x02, 0x00, 10, 244, 1, 3]);

/// A two-pod topology through one contender; everything goes when it drops.
struct Topology {
    a: Netns,
    b: Netns,
    _node: Netns,
    daemon: Option<Vswitchd>,
    dir: Scratch,
}

impl Topology {
    fn build(c: Contender) -> Topology {
        let prefix = unique_prefix("vpr");
        let node = Netns::new(&format!("{prefix}n"));
        let a = Netns::new(&format!("{prefix}a"));
        let b = Netns::new(&format!("{prefix}b"));
        let dir = Scratch::new(&prefix);
        let mut daemon = None;
        match c {
            Contender::Bridge => {
                node.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
                node.ok(&["ip", "link", "set", "br0", "up"]);
                for (pod, name, mac) in [(&a, "va", A_MAC), (&b, "vb", B_MAC)] {
                    node.ok(&[
                        "ip",
                        "link",
                        "add",
                        name,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        "eth0",
                        "netns",
                        pod.name(),
                    ]);
                    node.ok(&["ip", "link", "set", name, "master", "br0", "up"]);
                    pod.ok(&["ip", "link", "set", "eth0", "address", &mac.to_string(), "up"]);
                }
                for (pod, ip) in [(&a, A_IP), (&b, B_IP)] {
                    pod.ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
                }
            }
            Contender::VswitchTap | Contender::VswitchAfxdp => {
                let d = Vswitchd::start(&node, &dir.0, "workers = 1\npin_cpus = [1]");
                let backend = if c == Contender::VswitchTap { "tap" } else { "afxdp" };
                for (pod, ip) in [(&a, A_IP), (&b, B_IP)] {
                    d.attach(pod, ip, backend);
                }
                daemon = Some(d);
            }
        }
        b.ok(&["nft", "add table netdev sink"]);
        b.ok(&["nft", "add chain netdev sink in { type filter hook ingress device eth0 priority 0 ; }"]);
        b.ok(&["nft", "add rule netdev sink in udp dport 9 counter drop"]);
        assert!(
            a.run(&["ping", "-c", "3", "-i", "0.2", "-W", "2", &B_IP.to_string()]).status.success(),
            "{c:?}: a reaches b"
        );
        Topology { a, b, _node: node, daemon, dir }
    }

    /// CPU seconds vswitchd has used so far (user + system).
    fn daemon_cpu(&self) -> Option<f64> {
        self.daemon.as_ref()?.cpu_seconds()
    }
}

/// One measurement: delivered rate, offered rate, vswitchd CPU nanoseconds per packet.
#[derive(Clone, Copy, Debug)]
struct Sample {
    delivered: f64,
    offered: f64,
    cpu_ns_per_packet: Option<f64>,
}

fn udp64(t: &Topology, seconds: u64) -> Sample {
    let frame = FrameSpec::udp(A_MAC, B_MAC, A_IP, B_IP, 9000, 9).payload(&[0u8; 18]).build();
    let bytes: Vec<String> = frame.iter().map(|b| format!("0x{b:02x}")).collect();
    let cfg = t.dir.0.join("udp64.cfg");
    std::fs::write(&cfg, format!("{{ {} }}\n", bytes.join(", "))).expect("trafgen config");
    // The receiver counts frames at its interface, then an nftables ingress rule drops
    // them, so its own stack (which would answer with ICMP) costs nothing.
    // Offered: what left the generator's interface, including what its driver dropped
    // because the switch's queue was full (a TAP or veth counts those as tx_dropped).
    let offered = || t.a.counter("eth0", "tx_packets") + t.a.counter("eth0", "tx_dropped");
    let (tx0, rx0) = (offered(), t.b.counter("eth0", "rx_packets"));
    let cpu0 = t.daemon_cpu();
    let start = Instant::now();
    // One generator process on CPU 0; leave the machine's socket-memory sysctls and IRQ
    // affinities alone.
    let mut gen_ = t.a.spawn(&[
        "taskset",
        "-c",
        "0",
        "trafgen",
        "--dev",
        "eth0",
        "--conf",
        &cfg.display().to_string(),
        "--cpus",
        "1",
        "--no-sock-mem",
        "--notouch-irq",
        "--no-cpu-stats",
    ]);
    std::thread::sleep(Duration::from_secs(seconds));
    gen_.signal(Signal::SIGINT);
    gen_.wait_output(Duration::from_secs(10));
    let elapsed = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300)); // let the switch drain
    let (tx1, rx1) = (offered(), t.b.counter("eth0", "rx_packets"));
    let delivered = (rx1 - rx0) as f64;
    Sample {
        delivered: delivered / elapsed,
        offered: (tx1 - tx0) as f64 / elapsed,
        cpu_ns_per_packet: cpu0.zip(t.daemon_cpu()).map(|(c0, c1)| (c1 - c0) * 1e9 / delivered.max(1.0)),
    }
}

fn tcp(t: &Topology, seconds: u64) -> Sample {
    let _server = t.b.spawn(&["iperf3", "-s", "-1", "-p", "5201"]);
    assert!(wait_until(Duration::from_secs(5), || t.b.ok(&["ss", "-ltn"]).contains(":5201")));
    let (rx0, cpu0) = (t.b.counter("eth0", "rx_packets"), t.daemon_cpu());
    let out = t.a.ok(&[
        "iperf3",
        "-c",
        &B_IP.to_string(),
        "-p",
        "5201",
        "-t",
        &seconds.to_string(),
        "-A",
        "0",
        "--json",
    ]);
    let rx1 = t.b.counter("eth0", "rx_packets");
    let json: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    let bps = json["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0);
    let sent = json["end"]["sum_sent"]["bits_per_second"].as_f64().unwrap_or(0.0);
    let packets = (rx1 - rx0) as f64;
    Sample {
        delivered: bps / 1e9,
        offered: sent / 1e9,
        cpu_ns_per_packet: cpu0.zip(t.daemon_cpu()).map(|(c0, c1)| (c1 - c0) * 1e9 / packets.max(1.0)),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let runs: usize = arg("--runs").map_or(3, |v| v.parse().expect("--runs N"));
    let seconds: u64 = arg("--seconds").map_or(5, |v| v.parse().expect("--seconds S"));
    let only = arg("--only");
    let contenders: Vec<Contender> = [Contender::Bridge, Contender::VswitchTap, Contender::VswitchAfxdp]
        .into_iter()
        .filter(|c| {
            only.as_deref().is_none_or(|o| {
                o.split(',').any(|w| match w {
                    "bridge" => *c == Contender::Bridge,
                    "tap" => *c == Contender::VswitchTap,
                    "afxdp" => *c == Contender::VswitchAfxdp,
                    _ => false,
                })
            })
        })
        .collect();
    let mut rows = Vec::new();
    for c in &contenders {
        let topo = Topology::build(*c);
        for (workload, f, unit) in [
            ("UDP 64 B, pod → pod", udp64 as fn(&Topology, u64) -> Sample, "Mpps"),
            ("TCP stream, pod → pod (iperf3)", tcp as fn(&Topology, u64) -> Sample, "Gbit/s"),
        ] {
            let samples: Vec<Sample> = (0..runs).map(|_| f(&topo, seconds)).collect();
            let scale = if unit == "Mpps" { 1e-6 } else { 1.0 };
            let delivered: Vec<f64> = samples.iter().map(|s| s.delivered * scale).collect();
            let offered = median(samples.iter().map(|s| s.offered * scale).collect());
            let cpu = samples.iter().filter_map(|s| s.cpu_ns_per_packet).collect::<Vec<_>>();
            let row = (
                workload,
                c.name(),
                unit,
                median(delivered.clone()),
                delivered.iter().copied().fold(f64::MAX, f64::min),
                delivered.iter().copied().fold(f64::MIN, f64::max),
                offered,
                (!cpu.is_empty()).then(|| median(cpu)),
            );
            eprintln!("{row:?}");
            rows.push(row);
        }
    }
    println!(
        "| workload | contender | delivered (median) | min–max | offered (median) | vs bridge | vswitchd CPU per packet |"
    );
    println!("|---|---|---:|---|---:|---:|---:|");
    for (workload, name, unit, med, min, max, offered, cpu) in &rows {
        let bridge = rows.iter().find(|r| r.0 == *workload && r.1 == Contender::Bridge.name()).map(|r| r.3);
        let ratio = bridge.map_or("–".to_string(), |b| format!("{:.2}×", med / b));
        // A UDP generator that got everything it sent delivered was the limit; TCP is
        // flow-controlled, so sent equals delivered there by construction.
        let bound = if *unit == "Mpps" && (offered - med).abs() / offered.max(1e-9) < 0.02 {
            " (generator-bound)"
        } else {
            ""
        };
        let cpu = cpu.map_or("–".to_string(), |c| format!("{c:.0} ns"));
        println!(
            "| {workload} | {name} | {med:.2} {unit}{bound} | {min:.2}–{max:.2} | {offered:.2} {unit} | {ratio} | {cpu} |"
        );
    }
    println!("\n{runs} runs of {seconds} s each; generator on CPU 0, vswitchd's worker pinned to CPU 1.");
}
