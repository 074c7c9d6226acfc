//! The packet-rate harness: pod-to-pod traffic through each contender on the same
//! namespace topology, in one run, so the figures compare as ratios.
//!
//! Contenders on one node: the kernel bridge (the `cbr0` set-up: veth pods on a Linux
//! bridge), Open vSwitch 3.1's userspace datapath (`datapath_type=netdev`) with tap
//! ports and with afxdp ports, vswitchd with TAP ports and with AF_XDP ports (each with its
//! default idle mode, adaptive: polling for a while after the last frame, then sleeping in
//! epoll; and busy-polling as OVS's PMD threads always do). Across two
//! nodes (two node namespaces joined by a veth pair as the underlay): the kernel's `vxlan`
//! device and a bridge on each node, as flannel's vxlan backend sets them up, against
//! vswitchd on each node with TAP pods over the kernel-socket underlay or AF_XDP on the
//! underlay. Workloads: 64-byte UDP frames from `trafgen` (pps), a TCP stream from
//! `iperf3` (Gbit/s), the same UDP frames at a fixed offered load below every
//! contender's ceiling (the whole machine's CPU per packet: what forwarding costs, not how
//! far it gets), UDP request/response at a fixed rate (`udp-echo`, p50/p99, with the
//! switch's CPU meanwhile), and the switch's CPU with no traffic at all.
//! Each figure is the median of `--runs` runs of `--seconds` seconds, with min and max;
//! offered load (what the generator sent) is recorded next to delivered (the receiving
//! pod's interface counter), and the CPU cost per packet: the switch process's CPU time
//! (vswitchd, ovs-vswitchd) and the machine's softirq time, each divided by the packets
//! delivered.
//!
//! The generator is pinned to CPU 0. A busy-polling switch (ovs-vswitchd with its PMD
//! thread, vswitchd busy-poll) is pinned to CPU 1, as its users pin it, so that its spin
//! never takes the generator's CPU; vswitchd in its default idle mode runs one worker
//! where its users run it, unpinned (the default: the scheduler wakes it next to the pod
//! that sent, which halves its request/response latency on this machine against a
//! worker pinned to the other CPU). Across nodes both nodes' workers share CPU 1, and the
//! CPU figure is the sum of both daemons. The kernel bridge and VXLAN
//! device have no thread of their own: they forward in softirq on the sending CPU.
//!
//! Usage (root): `cargo run --release -p vswitch-benches --bin packet-rate -- [--runs N]
//! [--seconds S] [--only bridge,ovs-tap,ovs-afxdp,tap,afxdp,tap-busy,afxdp-busy,kvxlan,vxlan-tap,vxlan-afxdp,vxlan-tunnel]
//! [--vswitchd-config 'idle_poll_us = 500'] [--write docs/BENCHMARKS.md] [--plot docs/packet-rate.png] [--json FILE]`; prints the
//! markdown, and with `--write` replaces the part of that file between the
//! `<!-- packet-rate:begin -->` and `<!-- packet-rate:end -->` markers.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use vswitch_benches::node::{
    Ovs, Scratch, Vswitchd, busy_seconds, median, reaped_children_cpu_seconds, sibling_binary,
    softirq_seconds, veth_to_pod,
};
use vswitch_benches::plot::{self, Bar, Panel};
use vswitch_benches::report;
use vswitch_dataplane::testing::FrameSpec;
use vswitch_dataplane::wire::MacAddr;
use vswitch_testbed::{Netns, Signal, unique_prefix, wait_until};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    Bridge,
    OvsTap,
    OvsAfxdp,
    VswitchTap,
    VswitchAfxdp,
    VswitchTapBusy,
    VswitchAfxdpBusy,
    KernelVxlan,
    VswitchVxlanTap,
    VswitchVxlanAfxdp,
    VswitchVxlanTunnel,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Bridge => "kernel bridge (veth)",
            Contender::OvsTap => "OVS 3.1 netdev, tap ports",
            Contender::OvsAfxdp => "OVS 3.1 netdev, afxdp ports",
            Contender::VswitchTap => "vswitchd, TAP ports",
            Contender::VswitchAfxdp => "vswitchd, AF_XDP ports",
            Contender::VswitchTapBusy => "vswitchd, TAP ports, busy-poll",
            Contender::VswitchAfxdpBusy => "vswitchd, AF_XDP ports, busy-poll",
            Contender::KernelVxlan => "kernel vxlan + bridge (flannel-style), 2 nodes",
            Contender::VswitchVxlanTap => "vswitchd VXLAN over sockets, TAP ports, 2 nodes",
            Contender::VswitchVxlanAfxdp => "vswitchd VXLAN over AF_XDP underlay, TAP ports, 2 nodes",
            Contender::VswitchVxlanTunnel => "vswitchd VXLAN through the tunnel TAP, TAP ports, 2 nodes",
        }
    }

    fn cross_node(self) -> bool {
        matches!(
            self,
            Contender::KernelVxlan
                | Contender::VswitchVxlanTap
                | Contender::VswitchVxlanAfxdp
                | Contender::VswitchVxlanTunnel
        )
    }

    /// What a cross-node figure is compared with.
    fn baseline(self) -> Contender {
        if self.cross_node() { Contender::KernelVxlan } else { Contender::Bridge }
    }

    fn ours(self) -> bool {
        matches!(
            self,
            Contender::VswitchTap
                | Contender::VswitchAfxdp
                | Contender::VswitchTapBusy
                | Contender::VswitchAfxdpBusy
                | Contender::VswitchVxlanTap
                | Contender::VswitchVxlanAfxdp
                | Contender::VswitchVxlanTunnel
        )
    }

    fn flag(self) -> &'static str {
        match self {
            Contender::Bridge => "bridge",
            Contender::OvsTap => "ovs-tap",
            Contender::OvsAfxdp => "ovs-afxdp",
            Contender::VswitchTap => "tap",
            Contender::VswitchAfxdp => "afxdp",
            Contender::VswitchTapBusy => "tap-busy",
            Contender::VswitchAfxdpBusy => "afxdp-busy",
            Contender::KernelVxlan => "kvxlan",
            Contender::VswitchVxlanTap => "vxlan-tap",
            Contender::VswitchVxlanAfxdp => "vxlan-afxdp",
            Contender::VswitchVxlanTunnel => "vxlan-tunnel",
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
    ovs: Option<Ovs>,
    dir: Scratch,
}

/// The underlay between two node namespaces: `ul0` with 192.168.77.{1,2}/24.
fn underlay(nodes: &[Netns; 2]) {
    vswitch_testbed::ok(
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
        let mut ovs = None;
        let (b_ip, first_hop) = if c.cross_node() { (FAR_B_IP, GATEWAY_MAC) } else { (B_IP, B_MAC) };
        match c {
            Contender::Bridge => {
                let node = Netns::new(&format!("{prefix}n"));
                node.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
                node.ok(&["ip", "link", "set", "br0", "up"]);
                for (pod, name, mac) in [(&a, "va", A_MAC), (&b, "vb", B_MAC)] {
                    veth_to_pod(&node, name, pod);
                    node.ok(&["ip", "link", "set", name, "master", "br0", "up"]);
                    pod.ok(&["ip", "link", "set", "eth0", "address", &mac.to_string(), "up"]);
                }
                for (pod, ip) in [(&a, A_IP), (&b, B_IP)] {
                    pod.ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
                }
                nodes.push(node);
            }
            Contender::OvsTap | Contender::OvsAfxdp => {
                let node = Netns::new(&format!("{prefix}n"));
                let o = Ovs::start(&node, &dir.0, 1);
                for (pod, port, mac, ip) in [(&a, "pa", A_MAC, A_IP), (&b, "pb", B_MAC, B_IP)] {
                    if c == Contender::OvsTap {
                        // OVS makes the TAP in its own namespace; moved into the pod it
                        // keeps working (OVS reads and writes its fd).
                        o.vsctl(&["add-port", "br0", port, "--", "set", "Interface", port, "type=tap"]);
                        node.ok(&["ip", "link", "set", port, "netns", pod.name()]);
                        pod.ok(&["ip", "link", "set", port, "name", "eth0"]);
                    } else {
                        veth_to_pod(&node, port, pod);
                        node.ok(&["ip", "link", "set", port, "up"]);
                        // As vswitchd does for its AF_XDP pods: the pod sends finished frames.
                        pod.ok(&["ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off"]);
                        let set = ["--", "set", "Interface", port, "type=afxdp", "options:xdp-mode=native"];
                        o.vsctl(&[&["add-port", "br0", port][..], &set[..]].concat());
                    }
                    pod.ok(&["ip", "link", "set", "eth0", "address", &mac.to_string(), "up"]);
                    pod.ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
                }
                ovs = Some(o);
                nodes.push(node);
            }
            Contender::VswitchTap
            | Contender::VswitchAfxdp
            | Contender::VswitchTapBusy
            | Contender::VswitchAfxdpBusy => {
                let node = Netns::new(&format!("{prefix}n"));
                let busy = matches!(c, Contender::VswitchTapBusy | Contender::VswitchAfxdpBusy);
                // Not busy: the default (adaptive) idle mode.
                let idle = if busy { "idle = \"busy-poll\"" } else { "" };
                let extra = EXTRA_CONFIG.get().map_or("", String::as_str);
                // Where users run each: a spinning worker pinned away from the generator,
                // an adaptive one unpinned (the default).
                let pin = if busy && !extra.contains("pin_cpus") { "pin_cpus = [1]" } else { "" };
                let workers = if extra.contains("workers") { "" } else { "workers = 1" };
                let d = Vswitchd::start(&node, &dir.0, &format!("{workers}\n{pin}\n{idle}\n{extra}"));
                let backend = if matches!(c, Contender::VswitchTap | Contender::VswitchTapBusy) {
                    "tap"
                } else {
                    "afxdp"
                };
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
            Contender::VswitchVxlanTap | Contender::VswitchVxlanAfxdp | Contender::VswitchVxlanTunnel => {
                let uplink =
                    if c == Contender::VswitchVxlanAfxdp { "[uplink]\ninterface = \"ul0\"\n" } else { "" };
                let io = if c == Contender::VswitchVxlanTunnel {
                    "interface = \"ul0\"\nunderlay_io = \"tunnel\""
                } else {
                    "underlay_io = \"sockets\""
                };
                let pair = [Netns::new(&format!("{prefix}n1")), Netns::new(&format!("{prefix}n2"))];
                underlay(&pair);
                for (i, (node, pod, ip)) in
                    [(&pair[0], &a, A_IP), (&pair[1], &b, FAR_B_IP)].into_iter().enumerate()
                {
                    let (me, peer) = (i + 1, 2 - i);
                    let node_dir = dir.0.join(format!("n{me}"));
                    std::fs::create_dir_all(&node_dir).expect("node dir");
                    // As on one node: the default (adaptive, unpinned) unless the
                    // command line says otherwise.
                    let extra = EXTRA_CONFIG.get().map_or("", String::as_str);
                    let workers = if extra.contains("workers") { "" } else { "workers = 1" };
                    let config = format!(
                        "{workers}\n{extra}\npod_cidr = \"10.244.{me}.0/24\"\n\
                         [overlay]\nnodes_file = \"\"\n{io}\n[[overlay.node]]\nname = \"n{peer}\"\n\
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
        Topology { a, b, b_ip, first_hop, _nodes: nodes, daemons, ovs, dir }
    }

    /// CPU seconds the switch processes (vswitchd daemons, ovs-vswitchd) have used so far
    /// (user + system); none for the kernel's switches.
    fn switch_cpu(&self) -> Option<f64> {
        if let Some(ovs) = &self.ovs {
            return ovs.cpu_seconds();
        }
        if self.daemons.is_empty() {
            return None;
        }
        self.daemons.iter().map(Vswitchd::cpu_seconds).sum()
    }
}

/// CPU spent while `packets` were delivered: the switch process's and softirq's.
struct CpuMeter {
    switch: Option<f64>,
    softirq: f64,
}

impl CpuMeter {
    fn start(t: &Topology) -> CpuMeter {
        CpuMeter { switch: t.switch_cpu(), softirq: softirq_seconds() }
    }

    /// Nanoseconds per packet: (switch process, softirq).
    fn per_packet(self, t: &Topology, packets: f64) -> (Option<f64>, f64) {
        let per = |secs: f64| secs * 1e9 / packets.max(1.0);
        (self.switch.zip(t.switch_cpu()).map(|(c0, c1)| per(c1 - c0)), per(softirq_seconds() - self.softirq))
    }
}

/// One measurement: delivered rate, offered rate, CPU nanoseconds per packet of the
/// switch process and of softirq.
#[derive(Clone, Copy, Debug)]
struct Sample {
    delivered: f64,
    offered: f64,
    cpu_ns_per_packet: Option<f64>,
    softirq_ns_per_packet: f64,
    /// TCP only: CPU milliseconds per gigabit delivered, (switch process + softirq,
    /// every CPU's busy time). Per packet means nothing there: each contender hands
    /// the receiving pod super-frames of its own size.
    cpu_ms_per_gbit: Option<(f64, f64)>,
}

/// Writes the 64-byte UDP frame from pod A to pod B as a trafgen configuration.
fn udp64_config(t: &Topology) -> std::path::PathBuf {
    let frame = FrameSpec::udp(A_MAC, t.first_hop, A_IP, t.b_ip, 9000, 9).payload(&[0u8; 18]).build();
    let bytes: Vec<String> = frame.iter().map(|b| format!("0x{b:02x}")).collect();
    let cfg = t.dir.0.join("udp64.cfg");
    std::fs::write(&cfg, format!("{{ {} }}\n", bytes.join(", "))).expect("trafgen config");
    cfg
}

/// Runs trafgen in pod A for `seconds`, as fast as it can or at `pps`, and reaps it.
fn trafgen(t: &Topology, cfg: &std::path::Path, seconds: u64, pps: Option<u32>) {
    let rate = pps.map(|r| format!("{r}pps"));
    let cfg = cfg.display().to_string();
    // One generator process on CPU 0; leave the machine's socket-memory sysctls and IRQ
    // affinities alone.
    let mut args = vec![
        "taskset",
        "-c",
        "0",
        "trafgen",
        "--dev",
        "eth0",
        "--conf",
        &cfg,
        "--cpus",
        "1",
        "--no-sock-mem",
        "--notouch-irq",
        "--no-cpu-stats",
    ];
    if let Some(rate) = &rate {
        args.extend(["--rate", rate]);
    }
    let mut gen_ = t.a.spawn(&args);
    std::thread::sleep(Duration::from_secs(seconds));
    gen_.signal(Signal::SIGINT);
    gen_.wait_output(Duration::from_secs(10));
}

/// What left the generator's interface, including what its driver dropped because the
/// switch's queue was full (a TAP or veth counts those as tx_dropped).
fn offered_packets(t: &Topology) -> u64 {
    t.a.counter("eth0", "tx_packets") + t.a.counter("eth0", "tx_dropped")
}

fn udp64(t: &Topology, seconds: u64) -> Sample {
    let cfg = udp64_config(t);
    // The receiver counts frames at its interface, then an nftables ingress rule drops
    // them, so its own stack (which would answer with ICMP) costs nothing.
    let (tx0, rx0) = (offered_packets(t), t.b.counter("eth0", "rx_packets"));
    let cpu = CpuMeter::start(t);
    let start = Instant::now();
    trafgen(t, &cfg, seconds, None);
    let elapsed = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300)); // let the switch drain
    let (tx1, rx1) = (offered_packets(t), t.b.counter("eth0", "rx_packets"));
    let delivered = (rx1 - rx0) as f64;
    let (cpu_ns_per_packet, softirq_ns_per_packet) = cpu.per_packet(t, delivered);
    Sample {
        delivered: delivered / elapsed,
        offered: (tx1 - tx0) as f64 / elapsed,
        cpu_ns_per_packet,
        softirq_ns_per_packet,
        cpu_ms_per_gbit: None,
    }
}

/// The fixed offered load, 64-byte UDP frames: below every contender's ceiling on one
/// node (the slowest, OVS with tap ports, carries about 0.2 Mpps), so every contender
/// carries all of it and the figure is what forwarding it costs.
const FIXED_PPS: u32 = 150_000;
/// The same across nodes, where the slowest contender's ceiling is lower.
const FIXED_PPS_CROSS_NODE: u32 = 50_000;

/// One run at a fixed offered load.
#[derive(Clone, Copy, Debug)]
struct LoadSample {
    offered: f64,
    delivered: f64,
    /// Everything the machine spent (all CPUs' busy time: the generator, every switch
    /// thread, softirq, kernel threads, the receiving pod's stack), over the packets
    /// delivered.
    total_ns_per_packet: f64,
    /// Of that, the generator process's (with what the kernel did in its system calls).
    generator_ns_per_packet: f64,
}

fn fixed_load(t: &Topology, seconds: u64, pps: u32) -> LoadSample {
    let cfg = udp64_config(t);
    let (tx0, rx0) = (offered_packets(t), t.b.counter("eth0", "rx_packets"));
    let (busy0, generator0) = (busy_seconds(), reaped_children_cpu_seconds());
    let start = Instant::now();
    trafgen(t, &cfg, seconds, Some(pps));
    let elapsed = start.elapsed().as_secs_f64();
    // The generator has been reaped: its CPU (and nothing else's) is now among the
    // children's. The kernel's switches forward in its context, so it stays in the total.
    let spent = busy_seconds() - busy0;
    let generator = reaped_children_cpu_seconds() - generator0;
    std::thread::sleep(Duration::from_millis(300)); // let the switch drain
    let (tx1, rx1) = (offered_packets(t), t.b.counter("eth0", "rx_packets"));
    let delivered = (rx1 - rx0) as f64;
    LoadSample {
        offered: (tx1 - tx0) as f64 / elapsed,
        delivered: delivered / elapsed,
        total_ns_per_packet: spent.max(0.0) * 1e9 / delivered.max(1.0),
        generator_ns_per_packet: generator * 1e9 / delivered.max(1.0),
    }
}

/// `streams` parallel TCP streams (one iperf3 client, pinned to CPU 0).
fn tcp(t: &Topology, seconds: u64, streams: usize) -> Sample {
    let _server = t.b.spawn(&["iperf3", "-s", "-1", "-p", "5201"]);
    assert!(wait_until(Duration::from_secs(5), || t.b.ok(&["ss", "-ltn"]).contains(":5201")));
    let (rx0, cpu) = (t.b.counter("eth0", "rx_packets"), CpuMeter::start(t));
    let busy0 = busy_seconds();
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
        "-P",
        &streams.to_string(),
        "--json",
    ]);
    let busy = busy_seconds() - busy0;
    let (switch, softirq) = (t.switch_cpu(), softirq_seconds());
    let rx1 = t.b.counter("eth0", "rx_packets");
    let json: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    let bps = json["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0);
    let sent = json["end"]["sum_sent"]["bits_per_second"].as_f64().unwrap_or(0.0);
    let forwarding = switch.zip(cpu.switch).map_or(0.0, |(c1, c0)| c1 - c0) + (softirq - cpu.softirq);
    let gigabits = json["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0) * 8.0 / 1e9;
    let per_gbit = |secs: f64| secs.max(0.0) * 1e3 / gigabits.max(1e-9);
    let (cpu_ns_per_packet, softirq_ns_per_packet) = cpu.per_packet(t, (rx1 - rx0) as f64);
    Sample {
        delivered: bps / 1e9,
        offered: sent / 1e9,
        cpu_ns_per_packet,
        softirq_ns_per_packet,
        cpu_ms_per_gbit: Some((per_gbit(forwarding), per_gbit(busy))),
    }
}

/// Requests per second of the latency probe: light, so the figure is the path's own
/// latency (with the switch's wake-up), not queueing.
const ECHO_RATE: u32 = 1000;

/// One run of the request/response probe.
#[derive(Clone, Copy, Debug)]
struct EchoSample {
    p50: f64,
    p99: f64,
    answered: f64,
    /// The switch process's share of a core meanwhile (`None`: the kernel's switches).
    switch_share: Option<f64>,
}

/// Round trips of UDP requests at [`ECHO_RATE`]: p50 and p99 in µs, answered/sent, and
/// what the switch process spent meanwhile.
fn latency(t: &Topology, seconds: u64) -> EchoSample {
    let echo = sibling_binary("udp-echo").display().to_string();
    let server_ip = t.b_ip.to_string();
    let _server = t.b.spawn(&["taskset", "-c", "0", &echo, "serve", &server_ip, "7007"]);
    assert!(wait_until(Duration::from_secs(5), || t.b.ok(&["ss", "-lun"]).contains(":7007")));
    let (switch0, start) = (t.switch_cpu(), Instant::now());
    let out = t.a.ok(&[
        "taskset",
        "-c",
        "0",
        &echo,
        "probe",
        &server_ip,
        "7007",
        &ECHO_RATE.to_string(),
        &seconds.to_string(),
    ]);
    let elapsed = start.elapsed().as_secs_f64();
    let switch_share = switch0.zip(t.switch_cpu()).map(|(c0, c1)| (c1 - c0) / elapsed);
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("udp-echo JSON");
    let answered = json["answered"].as_f64().unwrap_or(0.0) / json["sent"].as_f64().unwrap_or(1.0).max(1.0);
    EchoSample {
        p50: json["p50_us"].as_f64().unwrap_or(f64::NAN),
        p99: json["p99_us"].as_f64().unwrap_or(f64::NAN),
        answered,
        switch_share,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Udp,
    Tcp,
    /// Four TCP streams at once.
    Tcp4,
}

impl Workload {
    fn name(self, cross_node: bool) -> &'static str {
        match (self, cross_node) {
            (Workload::Udp, false) => "UDP 64 B, pod → pod",
            (Workload::Tcp, false) => "TCP stream, pod → pod (iperf3)",
            (Workload::Udp, true) => "UDP 64 B, pod → pod on another node",
            (Workload::Tcp, true) => "TCP stream, pod → pod on another node (iperf3)",
            (Workload::Tcp4, false) => "4 TCP streams, pod → pod (iperf3 -P 4)",
            (Workload::Tcp4, true) => "4 TCP streams, pod → pod on another node (iperf3 -P 4)",
        }
    }

    /// The workload in a goal's words.
    fn unit_name(self) -> &'static str {
        match self {
            Workload::Udp => "64 B UDP",
            Workload::Tcp => "one TCP stream",
            Workload::Tcp4 => "4 TCP streams",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Workload::Udp => "Mpps",
            Workload::Tcp | Workload::Tcp4 => "Gbit/s",
        }
    }
}

/// A contender's figures for one throughput workload, over the runs.
#[derive(Debug)]
struct Row {
    workload: Workload,
    contender: Contender,
    median: f64,
    min: f64,
    max: f64,
    offered: f64,
    cpu_ns: Option<f64>,
    softirq_ns: f64,
    /// TCP: CPU ms per gigabit, (switch process + softirq, whole machine).
    cpu_ms_per_gbit: Option<(f64, f64)>,
}

/// A contender's round-trip latency over the runs.
#[derive(Debug)]
struct LatencyRow {
    contender: Contender,
    p50: f64,
    p99: f64,
    p99_min: f64,
    p99_max: f64,
    answered: f64,
    switch_share: Option<f64>,
}

/// A contender's cost at the fixed offered load, over the runs.
#[derive(Debug)]
struct LoadRow {
    contender: Contender,
    requested: u32,
    offered: f64,
    delivered: f64,
    total_ns: f64,
    total_ns_min: f64,
    total_ns_max: f64,
    generator_ns: f64,
}

fn spread(v: &[f64]) -> (f64, f64, f64) {
    (
        median(v.to_vec()),
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// The switch process's share of a core with its pods attached and no traffic: what an
/// idle node pays for it. `None` for the kernel contenders (no process of their own).
fn idle_cpu(t: &Topology, seconds: u64) -> Option<f64> {
    // The pods' own start-up chatter (IPv6 DAD, router solicitations) over first.
    std::thread::sleep(Duration::from_secs(1));
    let before = t.switch_cpu()?;
    std::thread::sleep(Duration::from_secs(seconds));
    Some((t.switch_cpu()? - before) / seconds as f64)
}

/// One contender's idle cost.
#[derive(Debug)]
struct IdleRow {
    contender: Contender,
    share: f64,
}

fn measure(
    c: Contender,
    runs: usize,
    seconds: u64,
    rows: &mut Vec<Row>,
    latencies: &mut Vec<LatencyRow>,
    loads: &mut Vec<LoadRow>,
    idle: &mut Vec<IdleRow>,
) {
    let topo = Topology::build(c);
    if let Some(share) = idle_cpu(&topo, seconds) {
        let row = IdleRow { contender: c, share };
        eprintln!("{row:?}");
        idle.push(row);
    }
    for workload in [Workload::Udp, Workload::Tcp, Workload::Tcp4] {
        let samples: Vec<Sample> = (0..runs)
            .map(|_| match workload {
                Workload::Udp => udp64(&topo, seconds),
                Workload::Tcp => tcp(&topo, seconds, 1),
                Workload::Tcp4 => tcp(&topo, seconds, 4),
            })
            .collect();
        let scale = if workload == Workload::Udp { 1e-6 } else { 1.0 };
        let delivered: Vec<f64> = samples.iter().map(|s| s.delivered * scale).collect();
        let (median_, min, max) = spread(&delivered);
        let cpu: Vec<f64> = samples.iter().filter_map(|s| s.cpu_ns_per_packet).collect();
        let row = Row {
            workload,
            contender: c,
            median: median_,
            min,
            max,
            offered: median(samples.iter().map(|s| s.offered * scale).collect()),
            cpu_ns: (!cpu.is_empty()).then(|| median(cpu)),
            softirq_ns: median(samples.iter().map(|s| s.softirq_ns_per_packet).collect()),
            cpu_ms_per_gbit: samples.iter().all(|s| s.cpu_ms_per_gbit.is_some()).then(|| {
                let of = |f: fn((f64, f64)) -> f64| {
                    median(samples.iter().filter_map(|s| s.cpu_ms_per_gbit.map(f)).collect())
                };
                (of(|c| c.0), of(|c| c.1))
            }),
        };
        eprintln!("{row:?}");
        rows.push(row);
    }
    let pps = if c.cross_node() { FIXED_PPS_CROSS_NODE } else { FIXED_PPS };
    let samples: Vec<LoadSample> = (0..runs).map(|_| fixed_load(&topo, seconds, pps)).collect();
    let (total_ns, total_ns_min, total_ns_max) =
        spread(&samples.iter().map(|s| s.total_ns_per_packet).collect::<Vec<_>>());
    let row = LoadRow {
        contender: c,
        requested: pps,
        generator_ns: median(samples.iter().map(|s| s.generator_ns_per_packet).collect()),
        offered: median(samples.iter().map(|s| s.offered).collect()),
        delivered: median(samples.iter().map(|s| s.delivered).collect()),
        total_ns,
        total_ns_min,
        total_ns_max,
    };
    eprintln!("{row:?}");
    loads.push(row);
    let samples: Vec<EchoSample> = (0..runs).map(|_| latency(&topo, seconds)).collect();
    let p99: Vec<f64> = samples.iter().map(|s| s.p99).collect();
    let (p99_med, p99_min, p99_max) = spread(&p99);
    let shares: Vec<f64> = samples.iter().filter_map(|s| s.switch_share).collect();
    let row = LatencyRow {
        contender: c,
        p50: median(samples.iter().map(|s| s.p50).collect()),
        p99: p99_med,
        p99_min,
        p99_max,
        answered: median(samples.iter().map(|s| s.answered).collect()),
        switch_share: (!shares.is_empty()).then(|| median(shares)),
    };
    eprintln!("{row:?}");
    latencies.push(row);
    if let Some(ovs) = &topo.ovs
        && ovs.log().contains("|ERR|")
    {
        eprintln!("note: ovs-vswitchd logged errors (see its log in {})", topo.dir.0.display());
    }
}

fn find(rows: &[Row], w: Workload, c: Contender) -> Option<&Row> {
    rows.iter().find(|r| r.workload == w && r.contender == c)
}

fn report(
    rows: &[Row],
    latencies: &[LatencyRow],
    loads: &[LoadRow],
    idle: &[IdleRow],
    runs: usize,
    seconds: u64,
    command: &str,
) -> String {
    let mut md = String::new();
    let mut line = |s: String| {
        md.push_str(&s);
        md.push('\n');
    };
    line(format!(
        "Generated by `{command}` on {}; {}. Medians of {runs} runs of {seconds} s, min–max of the runs; \
         generator on CPU 0; busy-polling switches (ovs-vswitchd and its PMD thread, vswitchd busy-poll) pinned to \
         CPU 1, vswitchd's one worker in its default idle mode unpinned (its default). \
         \"vs\": against the kernel bridge on one node, kernel vxlan across nodes, from this run. CPU per packet: \
         the switch process's CPU time, and the whole machine's softirq time (where the kernel forwards, and \
         where every contender's receiving pod's stack runs), each over the packets delivered. A busy-polling \
         switch (OVS's PMD thread with afxdp ports, vswitchd busy-poll) uses its whole core whatever the load, \
         so its CPU per packet is a ceiling when it is not the bottleneck.",
        report::today(),
        report::machine()
    ));
    line(String::new());
    line("| workload | contender | delivered | min–max | offered | vs | switch CPU per packet | softirq per packet |".into());
    line("|---|---|---:|---|---:|---:|---:|---:|".into());
    for r in rows {
        let unit = r.workload.unit();
        let baseline = find(rows, r.workload, r.contender.baseline()).map(|b| b.median);
        let ratio = baseline.map_or("–".to_string(), |b| format!("{:.2}×", r.median / b));
        // A UDP generator that got everything it sent delivered was the limit; TCP is
        // flow-controlled, so sent equals delivered there by construction.
        let bound =
            if r.workload == Workload::Udp && (r.offered - r.median).abs() / r.offered.max(1e-9) < 0.02 {
                " (generator-bound)"
            } else {
                ""
            };
        let cpu = r.cpu_ns.map_or("–".to_string(), |c| format!("{c:.0} ns"));
        line(format!(
            "| {} | {} | {:.2} {unit}{bound} | {:.2}–{:.2} | {:.2} {unit} | {ratio} | {cpu} | {:.0} ns |",
            r.workload.name(r.contender.cross_node()),
            r.contender.name(),
            r.median,
            r.min,
            r.max,
            r.offered,
            r.softirq_ns
        ));
    }
    let per_gbit = |r: &Row| r.cpu_ms_per_gbit.filter(|_| r.median > 0.0);
    if rows.iter().any(|r| per_gbit(r).is_some()) {
        line(String::new());
        line(
            "What TCP costs: CPU milliseconds per gigabit delivered (lower is better) — the switch process's \
             and softirq's (where the kernel forwards and every receiving stack runs), and every CPU's busy \
             time (iperf3's sending and receiving included):"
                .into(),
        );
        line(String::new());
        line("| workload | contender | Gbit/s | switch + softirq per Gbit | vs | whole machine per Gbit | vs |".into());
        line("|---|---|---:|---:|---:|---:|---:|".into());
        for r in rows {
            let Some((forwarding, total)) = per_gbit(r) else { continue };
            let base = find(rows, r.workload, r.contender.baseline()).and_then(per_gbit);
            let vs = |f: fn((f64, f64)) -> f64, ours: f64| {
                base.map_or("–".to_string(), |b| format!("{:.2}×", ours / f(b).max(1e-9)))
            };
            line(format!(
                "| {} | {} | {:.2} | {forwarding:.0} ms | {} | {total:.0} ms | {} |",
                r.workload.name(r.contender.cross_node()),
                r.contender.name(),
                r.median,
                vs(|c| c.0, forwarding),
                vs(|c| c.1, total),
            ));
        }
    }
    line(String::new());
    line(format!(
        "Request/response: a UDP echo at {ECHO_RATE} requests/s, one in flight (`udp-echo`), client and server on CPU 0:"
    ));
    line(String::new());
    line(
        "| contender | p50 | p99 | p99 min–max | answered | vs, p50 | vs, p99 | switch CPU meanwhile |"
            .into(),
    );
    line("|---|---:|---:|---|---:|---:|---:|---:|".into());
    for l in latencies {
        let base = latencies.iter().find(|b| b.contender == l.contender.baseline());
        let ratio =
            |f: fn(&LatencyRow) -> f64| base.map_or("–".to_string(), |b| format!("{:.2}×", f(l) / f(b)));
        line(format!(
            "| {} | {:.1} µs | {:.1} µs | {:.1}–{:.1} | {:.2}% | {} | {} | {} |",
            l.contender.name(),
            l.p50,
            l.p99,
            l.p99_min,
            l.p99_max,
            l.answered * 100.0,
            ratio(|r| r.p50),
            ratio(|r| r.p99),
            l.switch_share.map_or("–".to_string(), |s| format!("{:.0}% of a core", s * 100.0)),
        ));
    }
    if !loads.is_empty() {
        line(String::new());
        line(format!(
            "Fixed offered load: 64 B UDP from `trafgen --rate` at {} kpps on one node, {} kpps across nodes \
             (below every contender's ceiling). Total CPU per packet: every CPU's busy time (user, system, irq, \
             softirq: the generator, all of the switch's threads, the kernel's forwarding, the receiving pod's \
             stack) over the packets delivered; packets per CPU-second is its inverse. The generator stays in: \
             the kernel's switches forward inside its system calls, and its own work is the same for every \
             contender. Offered counts what the sender's interface took or dropped (trafgen sends again \
             what a full queue refused).",
            FIXED_PPS / 1000,
            FIXED_PPS_CROSS_NODE / 1000
        ));
        line(String::new());
        line(
            "| contender | offered | delivered | total CPU per packet | min–max | of which the generator | vs | packets per CPU-second |"
                .into(),
        );
        line("|---|---:|---:|---:|---|---:|---:|---:|".into());
        for l in loads {
            let base = loads.iter().find(|b| b.contender == l.contender.baseline());
            let ratio = base.map_or("–".to_string(), |b| format!("{:.2}×", l.total_ns / b.total_ns));
            let carried =
                if l.delivered < 0.98 * f64::from(l.requested) { " (did not carry it)" } else { "" };
            line(format!(
                "| {} | {:.0} kpps | {:.0} kpps{carried} | {:.0} ns | {:.0}–{:.0} | {:.0} ns | {ratio} | {:.2} M |",
                l.contender.name(),
                l.offered / 1e3,
                l.delivered / 1e3,
                l.total_ns,
                l.total_ns_min,
                l.total_ns_max,
                l.generator_ns,
                1e3 / l.total_ns.max(1e-9),
            ));
        }
    }
    if !idle.is_empty() {
        line(String::new());
        line(format!(
            "Idle: the switch process's CPU with its two pods attached and no traffic, over {seconds} s \
             (the kernel contenders have no process; a busy-polling switch takes its core):"
        ));
        line(String::new());
        line("| contender | idle CPU (share of a core) |".into());
        line("|---|---:|".into());
        for r in idle {
            line(format!("| {} | {:.2}% |", r.contender.name(), r.share * 100.0));
        }
    }
    let goal = |what: &str, ours: Contender, theirs: Contender, w: Workload, target: f64| -> Option<String> {
        let (o, t) = (find(rows, w, ours)?, find(rows, w, theirs)?);
        let ratio = o.median / t.median;
        let verdict = if ratio >= target {
            "met".to_string()
        } else {
            format!("missed by {:.0}%", (1.0 - ratio / target) * 100.0)
        };
        Some(format!("| {what} | ≥ {target}× | {ratio:.2}× | {verdict} |"))
    };
    // Lower is better: latency and CPU per packet.
    let at_most = |what: &str, ours: f64, theirs: f64, target: f64| -> String {
        let ratio = ours / theirs;
        let verdict = if ratio <= target {
            "met".to_string()
        } else {
            format!("missed by {:.0}%", (ratio / target - 1.0) * 100.0)
        };
        format!("| {what} | ≤ {target}× | {ratio:.2}× | {verdict} |")
    };
    let latency_of = |c: Contender| latencies.iter().find(|l| l.contender == c);
    let load_of = |c: Contender| loads.iter().find(|l| l.contender == c);
    let mut lower_goals = Vec::new();
    // Across nodes, the default path (the tunnel TAP) against the kernel's vxlan.
    let (tunnel, kernel) = (Contender::VswitchVxlanTunnel, Contender::KernelVxlan);
    if let (Some(o), Some(k)) = (latency_of(tunnel), latency_of(kernel)) {
        lower_goals.push(at_most("request/response p50, vxlan-tunnel vs kernel vxlan", o.p50, k.p50, 1.5));
    }
    for w in [Workload::Tcp, Workload::Tcp4] {
        let cost = |c| find(rows, w, c).and_then(per_gbit);
        if let (Some(o), Some(k)) = (cost(tunnel), cost(kernel)) {
            let what =
                format!("switch + softirq CPU per Gbit, {}, vxlan-tunnel vs kernel vxlan", w.unit_name());
            lower_goals.push(at_most(&what, o.0, k.0, 1.0));
        }
    }
    for ours in [Contender::VswitchTap, Contender::VswitchAfxdp] {
        if let (Some(o), Some(b)) = (latency_of(ours), latency_of(Contender::Bridge)) {
            let what = |p: &str| {
                format!("request/response {p}, {} (default idle mode) vs kernel bridge", ours.name())
            };
            lower_goals.push(at_most(&what("p50"), o.p50, b.p50, 1.5));
            lower_goals.push(at_most(&what("p99"), o.p99, b.p99, 2.0));
        }
    }
    for (ours, ovs) in
        [(Contender::VswitchTap, Contender::OvsTap), (Contender::VswitchAfxdp, Contender::OvsAfxdp)]
    {
        let Some(o) = load_of(ours) else { continue };
        if let Some(b) = load_of(Contender::Bridge) {
            let what = format!("total CPU per packet at fixed load, {} vs kernel bridge", ours.name());
            lower_goals.push(at_most(&what, o.total_ns, b.total_ns, 1.0));
        }
        if let Some(v) = load_of(ovs) {
            let what = format!("total CPU per packet at fixed load, {} vs {}", ours.name(), ovs.name());
            lower_goals.push(at_most(&what, o.total_ns, v.total_ns, 0.5));
        }
    }
    let goals: Vec<String> = [
        goal(
            "64 B pps, vswitchd AF_XDP vs kernel bridge",
            Contender::VswitchAfxdp,
            Contender::Bridge,
            Workload::Udp,
            1.5,
        ),
        goal(
            "64 B pps, vswitchd AF_XDP vs OVS netdev afxdp",
            Contender::VswitchAfxdp,
            Contender::OvsAfxdp,
            Workload::Udp,
            2.0,
        ),
        goal(
            "64 B pps, vswitchd TAP vs OVS netdev tap",
            Contender::VswitchTap,
            Contender::OvsTap,
            Workload::Udp,
            2.0,
        ),
        goal(
            "TCP Gbit/s, vswitchd TAP (offloads) vs kernel bridge",
            Contender::VswitchTap,
            Contender::Bridge,
            Workload::Tcp,
            0.8,
        ),
        goal("TCP Gbit/s, one stream, vxlan-tunnel vs kernel vxlan", tunnel, kernel, Workload::Tcp, 1.0),
        goal("TCP Gbit/s, 4 streams, vxlan-tunnel vs kernel vxlan", tunnel, kernel, Workload::Tcp4, 1.0),
        goal("64 B pps across nodes, vxlan-tunnel vs kernel vxlan", tunnel, kernel, Workload::Udp, 1.5),
    ]
    .into_iter()
    .flatten()
    .chain(
        [Contender::VswitchTap, Contender::VswitchAfxdp]
            .into_iter()
            .filter_map(|c| idle.iter().find(|r| r.contender == c))
            .map(|r| {
                let verdict = if r.share <= 0.02 {
                    "met".to_string()
                } else {
                    format!("missed by {:.1} points", (r.share - 0.02) * 100.0)
                };
                format!(
                    "| idle CPU, {} (default idle mode) | ≤ 2% | {:.2}% | {verdict} |",
                    r.contender.name(),
                    r.share * 100.0
                )
            }),
    )
    .chain(lower_goals)
    .collect();
    if !goals.is_empty() {
        line(String::new());
        line("| goal | target | measured | |".into());
        line("|---|---:|---:|---|".into());
        for g in goals {
            line(g);
        }
    }
    md
}

fn plot_panels(rows: &[Row], latencies: &[LatencyRow]) -> Vec<Panel> {
    let mut panels = Vec::new();
    for (w, cross) in
        [Workload::Udp, Workload::Tcp, Workload::Tcp4].into_iter().flat_map(|w| [(w, false), (w, true)])
    {
        let bars: Vec<Bar> = rows
            .iter()
            .filter(|r| r.workload == w && r.contender.cross_node() == cross)
            .map(|r| Bar {
                label: r.contender.name().to_string(),
                median: r.median,
                min: r.min,
                max: r.max,
                ours: r.contender.ours(),
            })
            .collect();
        if !bars.is_empty() {
            panels.push(Panel {
                title: format!("{} ({}, median of runs; whisker: min–max)", w.name(cross), w.unit()),
                bars,
            });
        }
    }
    let bars: Vec<Bar> = latencies
        .iter()
        .map(|l| Bar {
            label: l.contender.name().to_string(),
            median: l.p99,
            min: l.p99_min,
            max: l.p99_max,
            ours: l.contender.ours(),
        })
        .collect();
    if !bars.is_empty() {
        panels.push(Panel {
            title: format!("UDP request/response p99 at {ECHO_RATE}/s (µs, lower is better)"),
            bars,
        });
    }
    panels
}

/// Lines added to every vswitchd contender's configuration (`--vswitchd-config`, for
/// sweeping a knob such as `idle_poll_us`; `\n` separates lines).
static EXTRA_CONFIG: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let runs: usize = arg("--runs").map_or(3, |v| v.parse().expect("--runs N"));
    let seconds: u64 = arg("--seconds").map_or(5, |v| v.parse().expect("--seconds S"));
    let only = arg("--only");
    if let Some(extra) = arg("--vswitchd-config") {
        EXTRA_CONFIG.set(extra.replace("\\n", "\n")).expect("set once");
    }
    let contenders: Vec<Contender> = [
        Contender::Bridge,
        Contender::OvsTap,
        Contender::OvsAfxdp,
        Contender::VswitchTap,
        Contender::VswitchAfxdp,
        Contender::VswitchTapBusy,
        Contender::VswitchAfxdpBusy,
        Contender::KernelVxlan,
        Contender::VswitchVxlanTap,
        Contender::VswitchVxlanAfxdp,
        Contender::VswitchVxlanTunnel,
    ]
    .into_iter()
    .filter(|c| only.as_deref().is_none_or(|o| o.split(',').any(|w| w == c.flag())))
    .collect();
    let (mut rows, mut latencies, mut loads, mut idle) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for c in &contenders {
        measure(*c, runs, seconds, &mut rows, &mut latencies, &mut loads, &mut idle);
    }
    let command = arg("--command").unwrap_or_else(|| "benches/packet-rate.sh".into());
    let mut md = report(&rows, &latencies, &loads, &idle, runs, seconds, &command);
    if let Some(png) = arg("--plot") {
        plot::draw(std::path::Path::new(&png), &plot_panels(&rows, &latencies)).expect("drawing the plot");
        let name =
            std::path::Path::new(&png).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(png);
        md.push_str(&format!("\n![pps, Gbit/s and latency per contender]({name})\n"));
    }
    print!("{md}");
    // A contender that delivered nothing is a broken set-up, not a figure.
    let dead: Vec<String> = rows
        .iter()
        .filter(|r| r.median <= 0.0)
        .map(|r| format!("{} / {:?}", r.contender.name(), r.workload))
        .chain(
            latencies
                .iter()
                .filter(|l| l.answered < 0.5)
                .map(|l| format!("{} / latency", l.contender.name())),
        )
        .collect();
    assert!(dead.is_empty(), "nothing (or too little) delivered: {dead:?}");
    if let Some(path) = arg("--write") {
        report::write_between_markers(&path, "packet-rate", &md);
    }
}
