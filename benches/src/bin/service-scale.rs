//! Service scale: connection rate and first-packet latency to a Service with 1, 1 000
//! and 10 000 Services installed, through vswitchd and through the kernel programmed
//! the way kube-proxy programs it, on the same namespace topology, in one run.
//!
//! Contenders:
//! - `iptables`: kube-proxy's iptables mode — a `KUBE-SERVICES` chain in `nat
//!   PREROUTING` with one rule per Service (`-d VIP -p tcp --dport 80 -j KUBE-SVC-…`),
//!   a `KUBE-SVC-…` chain per Service and a `KUBE-SEP-…` chain doing the DNAT, loaded
//!   with `iptables-restore` (Debian's iptables is the nf_tables backend, as on most
//!   current nodes). Rules are matched one after another: the probed Service is the
//!   last one installed, the worst case of that list.
//! - `nftables`: kube-proxy's nftables mode — one verdict map from `VIP . port` to a
//!   per-Service chain doing the DNAT.
//! - `vswitchd`: the same Services in its services file, with its default idle mode
//!   (adaptive: workers poll for a while after the last frame, then sleep in epoll) and
//!   with `idle = "busy-poll"`.
//!
//! The kernel contenders route pods on veths with proxy ARP (the set-up of routed CNIs
//! such as Calico's), so both directions of a flow pass netfilter without br_netfilter
//! (which would touch every bridge of the machine). vswitchd has the pods on TAP ports.
//!
//! The contenders that can share the machine are set up side by side and measured in
//! turn, run after run (a busy-polling vswitchd, which takes a whole CPU, on its own).
//! The client (pinned to CPU 0) opens TCP connections one after another to the probed
//! Service and resets each at once (`SO_LINGER` 0: no TIME_WAIT pile-up); the endpoint
//! drains its backlog from CPU 1 every 200 µs. "First-packet latency" is the time `connect()` takes: the SYN, the first
//! packet of a new flow, goes through the Service lookup and DNAT, the SYN-ACK comes back
//! through conntrack. vswitchd runs one worker, unpinned in its default idle mode (as its
//! users run it) and pinned to CPU 1 busy-polling; the kernel has no thread of its own
//! (its netfilter work runs in softirq on the client's CPU).
//!
//! Usage (root): `cargo run --release -p vswitch-benches --bin service-scale --
//! [--runs N (5)] [--seconds S (3)] [--services 1,1000,10000]
//! [--only iptables,nftables,vswitchd,vswitchd-busy-poll] [--write docs/BENCHMARKS.md]`;
//! prints a markdown table, and with `--write` puts it between the file's
//! `<!-- service-scale:begin -->` and `<!-- service-scale:end -->` markers.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vswitch_benches::node::{Scratch, Vswitchd, median, veth_to_pod};
use vswitch_benches::report;
use vswitch_sys::netns::Netns as NsHandle;
use vswitch_testbed::{Netns, unique_prefix};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    Iptables,
    Nftables,
    Vswitchd,
    VswitchdBusyPoll,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Iptables => "kube-proxy iptables (nft backend)",
            Contender::Nftables => "kube-proxy nftables (verdict map)",
            Contender::Vswitchd => "vswitchd (default: adaptive)",
            Contender::VswitchdBusyPoll => "vswitchd (idle = \"busy-poll\")",
        }
    }
}

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 20);
const ENDPOINT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

/// The VIP of Service `i` (0-based): 10.96.0.10 upwards.
fn vip(i: usize) -> Ipv4Addr {
    let n = 10 + i as u32;
    Ipv4Addr::new(10, 96, (n >> 8) as u8, n as u8)
}

struct Topology {
    client: Netns,
    endpoint: Netns,
    _node: Netns,
    _daemon: Option<Vswitchd>,
    _dir: Scratch,
}

/// Pods on veths routed by the node namespace, with proxy ARP on the node's ends.
fn routed_pods(node: &Netns, pods: &[(&Netns, Ipv4Addr, &str)]) {
    node.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // The pods' gateway is the node's own address, answered on every veth.
    node.ok(&["ip", "addr", "add", &format!("{GATEWAY}/32"), "dev", "lo"]);
    for (pod, ip, host_end) in pods {
        veth_to_pod(node, host_end, pod);
        node.ok(&["sysctl", "-qw", &format!("net.ipv4.conf.{host_end}.proxy_arp=1")]);
        node.ok(&["ip", "link", "set", host_end, "up"]);
        node.ok(&["ip", "route", "add", &format!("{ip}/32"), "dev", host_end]);
        pod.ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        pod.ok(&["ip", "link", "set", "eth0", "up"]);
    }
}

/// kube-proxy's iptables rules for `count` Services, each over the one endpoint.
fn iptables_rules(count: usize) -> String {
    let mut r = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    for i in 0..count {
        let _ = writeln!(r, ":KUBE-SVC-{i:06} - [0:0]\n:KUBE-SEP-{i:06} - [0:0]");
    }
    r.push_str("-A PREROUTING -j KUBE-SERVICES\n");
    for i in 0..count {
        let _ = writeln!(
            r,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i:06}\n\
             -A KUBE-SVC-{i:06} -m statistic --mode random --probability 1.0 -j KUBE-SEP-{i:06}\n\
             -A KUBE-SEP-{i:06} -p tcp -m tcp -j DNAT --to-destination {ENDPOINT_IP}:8080",
            vip(i)
        );
    }
    r.push_str("COMMIT\n");
    r
}

/// kube-proxy's nftables rules for `count` Services: a verdict map to per-Service chains.
fn nftables_rules(count: usize) -> String {
    let mut r = String::from("table ip kube-proxy {\n");
    for i in 0..count {
        let _ = writeln!(r, "  chain svc-{i} {{ meta l4proto tcp dnat to {ENDPOINT_IP}:8080; }}");
    }
    r.push_str(
        "  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n    elements = {\n",
    );
    for i in 0..count {
        let sep = if i + 1 == count { "" } else { "," };
        let _ = writeln!(r, "      {} . tcp . 80 : goto svc-{i}{sep}", vip(i));
    }
    r.push_str("    }\n  }\n");
    r.push_str(
        "  chain prerouting {\n    type nat hook prerouting priority dstnat;\n    \
         ip daddr . meta l4proto . th dport vmap @service-ips\n  }\n}\n",
    );
    r
}

fn services_file(count: usize) -> String {
    let mut r = String::new();
    for i in 0..count {
        let _ = writeln!(
            r,
            "[[service]]\nname = \"s{i}\"\ncluster_ip = \"{}\"\nports = [{{ port = 80, target_port = 8080 }}]\n\
             endpoints = [{{ ip = \"{ENDPOINT_IP}\" }}]\n",
            vip(i)
        );
    }
    r
}

impl Topology {
    fn build(c: Contender, services: usize) -> Topology {
        let prefix = unique_prefix("vss");
        let node = Netns::new(&format!("{prefix}n"));
        let client = Netns::new(&format!("{prefix}c"));
        let endpoint = Netns::new(&format!("{prefix}e"));
        let dir = Scratch::new(&prefix);
        let mut daemon = None;
        match c {
            Contender::Iptables | Contender::Nftables => {
                routed_pods(&node, &[(&client, CLIENT_IP, "vc"), (&endpoint, ENDPOINT_IP, "ve")]);
                let (file, tool, args): (_, _, Vec<&str>) = if c == Contender::Iptables {
                    ("rules.iptables", iptables_rules(services), vec!["iptables-restore", "--noflush"])
                } else {
                    ("rules.nft", nftables_rules(services), vec!["nft", "-f"])
                };
                let path = dir.0.join(file);
                std::fs::write(&path, tool).expect("rules file");
                let path = path.display().to_string();
                if c == Contender::Iptables {
                    node.ok(&["sh", "-c", &format!("{} < {path}", args.join(" "))]);
                } else {
                    node.ok(&[args[0], args[1], &path]);
                }
            }
            Contender::Vswitchd | Contender::VswitchdBusyPoll => {
                let file = dir.0.join("services.toml");
                std::fs::write(&file, services_file(services)).expect("services file");
                // Where users run each: a spinning worker pinned to its own CPU, an
                // adaptive one unpinned (the default).
                let (idle, pin) =
                    if c == Contender::VswitchdBusyPoll { ("busy-poll", "[1]") } else { ("adaptive", "[]") };
                let d = Vswitchd::start(
                    &node,
                    &dir.0,
                    &format!(
                        "workers = 1\npin_cpus = {pin}\nidle = \"{idle}\"\n[services]\nfile = {:?}",
                        file.display().to_string()
                    ),
                );
                for (pod, ip) in [(&client, CLIENT_IP), (&endpoint, ENDPOINT_IP)] {
                    d.attach(pod, ip, "tap");
                }
                let view = d.ctl(&["--json", "services"]);
                let view: serde_json::Value = serde_json::from_str(&view).expect("services JSON");
                assert_eq!(view["services"].as_array().map_or(0, Vec::len), services, "all Services loaded");
                daemon = Some(d);
            }
        }
        for pod in [&client, &endpoint] {
            pod.ok(&["ip", "route", "add", "default", "via", &GATEWAY.to_string()]);
        }
        Topology { client, endpoint, _node: node, _daemon: daemon, _dir: dir }
    }
}

/// Connections per second and the median and 99th-percentile connect time (µs).
#[derive(Clone, Copy, Debug)]
struct Sample {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
}

fn measure(t: &Topology, target: Ipv4Addr, seconds: u64) -> Sample {
    let endpoint = NsHandle::open(&t.endpoint.path()).expect("endpoint namespace");
    let listener = endpoint
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080)))
        .expect("enter the endpoint")
        .expect("listen on 8080");
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let stop = stop.clone();
        listener.set_nonblocking(true).expect("non-blocking listener");
        std::thread::spawn(move || {
            // Off the client's CPU, draining the backlog every 200 µs: no wake-up per
            // connection on the client's path.
            pin_to_cpu(1);
            while !stop.load(Ordering::Relaxed) {
                while listener.accept().is_ok() {}
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let client = NsHandle::open(&t.client.path()).expect("client namespace");
    let latencies = client
        .run(|| {
            pin_to_cpu(0);
            let addr = SocketAddrV4::new(target, 80);
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let start = Instant::now();
                let s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2)).expect("connect");
                latencies.push(start.elapsed());
                let reset_on_close = nix::libc::linger { l_onoff: 1, l_linger: 0 };
                nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &reset_on_close)
                    .expect("SO_LINGER 0");
            }
            latencies
        })
        .expect("enter the client");
    stop.store(true, Ordering::Relaxed);
    let _ = acceptor.join();
    let mut us: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(|a, b| a.total_cmp(b));
    Sample {
        rate: us.len() as f64 / seconds as f64,
        p50_us: us[us.len() / 2],
        p99_us: us[us.len() * 99 / 100],
    }
}

/// Pins the calling thread to `cpu`; unpinned if the machine refuses.
fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let runs: usize = arg("--runs").map_or(5, |v| v.parse().expect("--runs N"));
    let seconds: u64 = arg("--seconds").map_or(3, |v| v.parse().expect("--seconds S"));
    let counts: Vec<usize> = arg("--services")
        .unwrap_or_else(|| "1,1000,10000".into())
        .split(',')
        .map(|n| n.parse().expect("--services N,M,..."))
        .collect();
    let only = arg("--only");
    let contenders: Vec<Contender> =
        [Contender::Iptables, Contender::Nftables, Contender::Vswitchd, Contender::VswitchdBusyPoll]
            .into_iter()
            .filter(|c| {
                only.as_deref().is_none_or(|o| {
                    o.split(',').any(|w| match w {
                        "iptables" => *c == Contender::Iptables,
                        "nftables" => *c == Contender::Nftables,
                        "vswitchd" => *c == Contender::Vswitchd,
                        "vswitchd-busy-poll" => *c == Contender::VswitchdBusyPoll,
                        _ => false,
                    })
                })
            })
            .collect();
    let mut rows = Vec::new();
    for &count in &counts {
        let target = vip(count - 1);
        // Contenders that can share the machine are built side by side and measured in
        // turn, run after run, so that drift of a shared VM hits them alike. A
        // busy-polling daemon would take CPU 1 from the others: it runs on its own.
        let (together, alone): (Vec<Contender>, Vec<Contender>) =
            contenders.iter().partition(|c| **c != Contender::VswitchdBusyPoll);
        let mut groups: Vec<Vec<Contender>> = vec![together];
        groups.extend(alone.into_iter().map(|c| vec![c]));
        for group in groups.into_iter().filter(|g| !g.is_empty()) {
            let topologies: Vec<Topology> = group.iter().map(|c| Topology::build(*c, count)).collect();
            // One unmeasured second each: ARP, caches, the first connection's set-up.
            for t in &topologies {
                measure(t, target, 1);
            }
            let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); group.len()];
            for _ in 0..runs {
                for (i, t) in topologies.iter().enumerate() {
                    samples[i].push(measure(t, target, seconds));
                }
            }
            for (c, samples) in group.iter().zip(samples) {
                let rates: Vec<f64> = samples.iter().map(|s| s.rate).collect();
                let row = (
                    count,
                    *c,
                    median(rates.clone()),
                    median(samples.iter().map(|s| s.p50_us).collect()),
                    median(samples.iter().map(|s| s.p99_us).collect()),
                    rates.iter().copied().fold(f64::INFINITY, f64::min),
                    rates.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                );
                eprintln!("{row:?}");
                let _ = std::io::stderr().flush();
                rows.push(row);
            }
        }
    }
    let mut md = format!(
        "Generated by `benches/packet-rate.sh` (`service-scale`) on {}; {}. Medians of {runs} runs of {seconds} s per \
         row, min–max of the runs' rates; the probed Service is the last one installed; client on CPU 0, vswitchd's \
         one worker unpinned (adaptive, the default) or on CPU 1 (busy-poll).\n\n",
        report::today(),
        report::machine()
    );
    md.push_str(&format!(
        "| Services installed | contender | connections/s | min–max | connect p50 | connect p99 | rate vs same contender at {} |\n",
        counts[0]
    ));
    md.push_str("|---:|---|---:|---|---:|---:|---:|\n");
    for (count, c, rate, p50, p99, min, max) in &rows {
        let first = rows.iter().find(|r| r.0 == counts[0] && r.1 == *c).map_or(*rate, |r| r.2);
        md.push_str(&format!(
            "| {count} | {} | {rate:.0} | {min:.0}–{max:.0} | {p50:.1} µs | {p99:.1} µs | {:.2}× |\n",
            c.name(),
            rate / first
        ));
    }
    print!("{md}");
    let dead: Vec<_> = rows.iter().filter(|r| r.2 <= 0.0).map(|r| (r.0, r.1.name())).collect();
    assert!(dead.is_empty(), "no connection completed: {dead:?}");
    if let Some(path) = arg("--write") {
        report::write_between_markers(&path, "service-scale", &md);
    }
}
