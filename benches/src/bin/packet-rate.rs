//! The packet-rate harness: pod-to-pod traffic through each contender on the same
//! namespace topology, in one run, so the figures compare as ratios.
//!
//! Contenders on one node: the kernel bridge (the `cbr0` set-up: veth pods on a Linux
//! bridge), vswitchd with TAP ports, vswitchd with AF_XDP ports. Across two nodes (two
//! node namespaces joined by a veth pair as the underlay): the kernel's `vxlan` device
//! and a bridge on each node, as flannel's vxlan backend sets them up, against vswitchd
//! on each node with TAP pods and the kernel-socket underlay. Workloads: 64-byte UDP frames
//! from `trafgen` (pps), and a TCP stream from `iperf3` (Gbit/s). Each figure is the
//! median of `--runs` runs of `--seconds` seconds, with min and max; offered load
//! (what the generator sent) is recorded next to delivered (the receiving pod's
//! interface counter), and vswitchd's own CPU time per forwarded packet is reported.
//!
//! The generator is pinned to CPU 0 and vswitchd's single worker to CPU 1 (across nodes:
//! both nodes' workers share CPU 1, and the CPU figure is the sum of both daemons). The
//! kernel bridge and VXLAN device have no thread of their own: they forward in softirq
//! on the sending CPU, i.e. they share CPU 0 with the generator.
//!
//! Usage (root): `cargo run --release -p vswitch-benches --bin packet-rate -- [--runs N]
//! [--seconds S] [--only bridge,tap,afxdp,kvxlan,vxlan-tap,vxlan-afxdp]`; prints a markdown table.

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
    KernelVxlan,
    VswitchVxlanTap,
    VswitchVxlanAfxdp,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Bridge => "kernel bridge (veth)",
            Contender::VswitchTap => "vswitchd, TAP ports",
            Contender::VswitchAfxdp => "vswitchd, AF_XDP ports",
            Contender::KernelVxlan => "kernel vxlan + bridge (flannel-style), 2 nodes",
            Contender::VswitchVxlanTap => "vswitchd VXLAN, TAP ports, 2 nodes",
            Contender::VswitchVxlanAfxdp => "vswitchd VXLAN over AF_XDP underlay, TAP ports, 2 nodes",
        }
    }

    fn cross_node(self) -> bool {
        matches!(self, Contender::KernelVxlan | Contender::VswitchVxlanTap | Contender::VswitchVxlanAfxdp)
    }

    /// What a cross-node figure is compared with.
    fn baseline(self) -> Contender {
        if self.cross_node() { Contender::KernelVxlan } else { Contender::Bridge }
    }

    fn flag(self) -> &'static str {
        match self {
            Contender::Bridge => "bridge",
            Contender::VswitchTap => "tap",
            Contender::VswitchAfxdp => "afxdp",
            Contender::KernelVxlan => "kvxlan",
            Contender::VswitchVxlanTap => "vxlan-tap",
            Contender::VswitchVxlanAfxdp => "vxlan-afxdp",
        }
    }
}

const A_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const A_MAC: MacAddr = MacAddr([0x02, 0x00, 10, 244, 1, 2]);
const B_MAC: MacAddr = MacAddr([0x02, 0x00, 10, 244, 1, 3]);
/// Pod b on the second node, across the overlay.
const FAR_B_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const FAR_B_MAC: MacAddr = MacAddr([0x02, 0x00, 10, 244, 2, 2]);
/// vswitchd's default gateway MAC, and the one the kernel nodes' bridges get.
const GATEWAY_MAC: MacAddr = MacAddr([0x02, 0x76, 0x73, 0, 0, 1]);
const KERNEL_VTEP_MAC: [&str; 2] = ["0a:58:0a:f4:01:00", "0a:58:0a:f4:02:00"];

/// A two-pod topology through one contender; everything goes when it drops.
struct Topology {
    a: Netns,
    b: Netns,
    /// b's address, and the MAC a's frames to it are sent to (b's, or the gateway's).
    b_ip: Ipv4Addr,
    first_hop: MacAddr,
    _nodes: Vec<Netns>,
    daemons: Vec<Vswitchd>,
    dir: Scratch,
}

/// The underlay between two node namespaces: `ul0` with 192.168.77.{1,2}/24.
fn underlay(nodes: &[Netns; 2]) {
    vswitch::testbed::ok(
        "ip",
        &[
            "link",
            "add",
            "ul0",
            "netns",
            nodes[0].name(),
            "type",
            "veth",
            "peer",
            "name",
            "ul0",
            "netns",
            nodes[1].name(),
        ],
    );
    for (i, n) in nodes.iter().enumerate() {
        n.ok(&["ip", "addr", "add", &format!("192.168.77.{}/24", i + 1), "dev", "ul0"]);
        n.ok(&["ip", "link", "set", "ul0", "up"]);
    }
}

/// Node `i` (0 or 1) as flannel's vxlan backend leaves it: pod CIDR 10.244.(i+1).0/24 on
/// bridge cni0, the VTEP `vxlan0` (10.244.(i+1).0/32), a route to the other node's CIDR
/// through it, and static neighbour and FDB entries for the other VTEP.
fn flannel_node(node: &Netns, pod: &Netns, i: usize, pod_ip: Ipv4Addr, pod_mac: MacAddr) {
    let (me, peer) = (i + 1, 2 - i);
    for cmd in [
        "sysctl -qw net.ipv4.ip_forward=1".to_string(),
        format!(
            "ip link add vxlan0 address {} type vxlan id 1 dstport 4789 local 192.168.77.{me} dev ul0 nolearning",
            KERNEL_VTEP_MAC[i]
        ),
        format!("ip addr add 10.244.{me}.0/32 dev vxlan0"),
        "ip link set vxlan0 up".into(),
        format!("ip link add cni0 address {GATEWAY_MAC} type bridge"),
        format!("ip addr add 10.244.{me}.1/24 dev cni0"),
        "ip link set cni0 up".into(),
        format!("ip link add vp type veth peer name eth0 netns {}", pod.name()),
        "ip link set vp master cni0 up".into(),
        format!("ip route add 10.244.{peer}.0/24 via 10.244.{peer}.0 dev vxlan0 onlink"),
        format!("ip neigh add 10.244.{peer}.0 lladdr {} dev vxlan0 nud permanent", KERNEL_VTEP_MAC[1 - i]),
        format!("bridge fdb append {} dev vxlan0 dst 192.168.77.{peer}", KERNEL_VTEP_MAC[1 - i]),
    ] {
        let out = node.sh(&cmd);
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    }
    pod.ok(&["ip", "link", "set", "eth0", "address", &pod_mac.to_string(), "up"]);
    pod.ok(&["ip", "addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"]);
    pod.ok(&["ip", "route", "add", "default", "via", &format!("10.244.{me}.1")]);
}

impl Topology {
    fn build(c: Contender) -> Topology {
        let prefix = unique_prefix("vpr");
        let a = Netns::new(&format!("{prefix}a"));
        let b = Netns::new(&format!("{prefix}b"));
        let dir = Scratch::new(&prefix);
        let mut daemons = Vec::new();
        let mut nodes = Vec::new();
        let (b_ip, first_hop) = if c.cross_node() { (FAR_B_IP, GATEWAY_MAC) } else { (B_IP, B_MAC) };
        match c {
            Contender::Bridge => {
                let node = Netns::new(&format!("{prefix}n"));
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
                nodes.push(node);
            }
            Contender::VswitchTap | Contender::VswitchAfxdp => {
                let node = Netns::new(&format!("{prefix}n"));
                let d = Vswitchd::start(&node, &dir.0, "workers = 1\npin_cpus = [1]");
                let backend = if c == Contender::VswitchTap { "tap" } else { "afxdp" };
                for (pod, ip) in [(&a, A_IP), (&b, B_IP)] {
                    d.attach(pod, ip, backend);
                }
                daemons.push(d);
                nodes.push(node);
            }
            Contender::KernelVxlan => {
                let pair = [Netns::new(&format!("{prefix}n1")), Netns::new(&format!("{prefix}n2"))];
                underlay(&pair);
                flannel_node(&pair[0], &a, 0, A_IP, A_MAC);
                flannel_node(&pair[1], &b, 1, FAR_B_IP, FAR_B_MAC);
                nodes.extend(pair);
            }
            Contender::VswitchVxlanTap | Contender::VswitchVxlanAfxdp => {
                let uplink =
                    if c == Contender::VswitchVxlanAfxdp { "[uplink]\ninterface = \"ul0\"\n" } else { "" };
                let pair = [Netns::new(&format!("{prefix}n1")), Netns::new(&format!("{prefix}n2"))];
                underlay(&pair);
                for (i, (node, pod, ip)) in
                    [(&pair[0], &a, A_IP), (&pair[1], &b, FAR_B_IP)].into_iter().enumerate()
                {
                    let (me, peer) = (i + 1, 2 - i);
                    let node_dir = dir.0.join(format!("n{me}"));
                    std::fs::create_dir_all(&node_dir).expect("node dir");
                    let config = format!(
                        "workers = 1\npin_cpus = [1]\npod_cidr = \"10.244.{me}.0/24\"\n\
                         [overlay]\nnodes_file = \"\"\n[[overlay.node]]\nname = \"n{peer}\"\n\
                         ip = \"192.168.77.{peer}\"\npod_cidr = \"10.244.{peer}.0/24\"\n{uplink}"
                    );
                    let d = Vswitchd::start(node, &node_dir, &config);
                    d.attach(pod, ip, "tap");
                    pod.ok(&["ip", "route", "add", "default", "via", &format!("10.244.{me}.1")]);
                    daemons.push(d);
                }
                nodes.extend(pair);
            }
        }
        b.ok(&["nft", "add table netdev sink"]);
        b.ok(&["nft", "add chain netdev sink in { type filter hook ingress device eth0 priority 0 ; }"]);
        b.ok(&["nft", "add rule netdev sink in udp dport 9 counter drop"]);
        assert!(
            a.run(&["ping", "-c", "3", "-i", "0.2", "-W", "2", &b_ip.to_string()]).status.success(),
            "{c:?}: a reaches b"
        );
        if c == Contender::VswitchVxlanAfxdp {
            assert!(b.run(&["ping", "-c", "2", "-i", "0.2", "-W", "2", &A_IP.to_string()]).status.success());
            let fast = || daemons.iter().all(|d| d.ctl(&["nodes"]).contains("af_xdp via"));
            assert!(wait_until(Duration::from_secs(15), fast), "both nodes on the AF_XDP fast path");
        }
        Topology { a, b, b_ip, first_hop, _nodes: nodes, daemons, dir }
    }

    /// CPU seconds the vswitchd daemons have used so far (user + system).
    fn daemon_cpu(&self) -> Option<f64> {
        if self.daemons.is_empty() {
            return None;
        }
        self.daemons.iter().map(Vswitchd::cpu_seconds).sum()
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
    let frame = FrameSpec::udp(A_MAC, t.first_hop, A_IP, t.b_ip, 9000, 9).payload(&[0u8; 18]).build();
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
        &t.b_ip.to_string(),
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
    let contenders: Vec<Contender> = [
        Contender::Bridge,
        Contender::VswitchTap,
        Contender::VswitchAfxdp,
        Contender::KernelVxlan,
        Contender::VswitchVxlanTap,
        Contender::VswitchVxlanAfxdp,
    ]
    .into_iter()
    .filter(|c| only.as_deref().is_none_or(|o| o.split(',').any(|w| w == c.flag())))
    .collect();
    let mut rows = Vec::new();
    for c in &contenders {
        let topo = Topology::build(*c);
        let (udp_name, tcp_name) = if c.cross_node() {
            ("UDP 64 B, pod → pod on another node", "TCP stream, pod → pod on another node (iperf3)")
        } else {
            ("UDP 64 B, pod → pod", "TCP stream, pod → pod (iperf3)")
        };
        for (workload, f, unit) in [
            (udp_name, udp64 as fn(&Topology, u64) -> Sample, "Mpps"),
            (tcp_name, tcp as fn(&Topology, u64) -> Sample, "Gbit/s"),
        ] {
            let samples: Vec<Sample> = (0..runs).map(|_| f(&topo, seconds)).collect();
            let scale = if unit == "Mpps" { 1e-6 } else { 1.0 };
            let delivered: Vec<f64> = samples.iter().map(|s| s.delivered * scale).collect();
            let offered = median(samples.iter().map(|s| s.offered * scale).collect());
            let cpu = samples.iter().filter_map(|s| s.cpu_ns_per_packet).collect::<Vec<_>>();
            let row = (
                workload,
                *c,
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
        "| workload | contender | delivered (median) | min–max | offered (median) | vs kernel | vswitchd CPU per packet |"
    );
    println!("|---|---|---:|---|---:|---:|---:|");
    for (workload, c, unit, med, min, max, offered, cpu) in &rows {
        let name = c.name();
        let kernel = rows.iter().find(|r| r.0 == *workload && r.1 == c.baseline()).map(|r| r.3);
        let ratio = kernel.map_or("–".to_string(), |b| format!("{:.2}×", med / b));
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
    println!(
        "\n{runs} runs of {seconds} s each; generator on CPU 0, vswitchd's worker(s) pinned to CPU 1; \
         \"vs kernel\": against the kernel bridge on one node, against kernel vxlan across nodes."
    );
}
