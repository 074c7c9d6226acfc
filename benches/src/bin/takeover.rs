//! Upgrades under traffic: what two TAP pods on one node lose while vswitchd is
//! replaced, by a takeover (`vswitchd --takeover`) and by a clean restart (SIGTERM, then
//! a start), against the same run with no interruption (the noise floor of the machine).
//!
//! Workloads, each `--runs` times for `--seconds` seconds, the interruption at 40% of
//! the run: 64-byte UDP frames at 100 000 a second (`iperf3 -u -l 22`; what the receiver
//! missed, by iperf3's sequence numbers), and a TCP stream (`iperf3`, 100 ms intervals:
//! the slowest interval, and how long the stream ran below half its median rate). The
//! takeover's pause is the old daemon's own measure (from taking its queues to its
//! goodbye). The release build (the tests' debug build forwards 20 000 frames a second).
//!
//! Then the takeover again with `--pods` pods on the node (default 64): how the pause
//! grows with the ports adopted in it; the UDP workload between two AF_XDP pods
//! (their sockets, UMEMs and XDP programs handed over), without and with a takeover;
//! and the pause with `--flows` tracked flows (default 100 000: UDP to a Service from
//! as many source ports and addresses), which the tables snapshot carries inside it.
//!
//! Usage (root): `cargo run --release -p vswitch-benches --bin takeover -- [--runs N]
//! [--seconds S] [--pods N] [--flows N] [--flows-only | --afxdp-only] [--write docs/BENCHMARKS.md]`; prints a markdown table, and with
//! `--write` puts it between the file's `<!-- takeover:begin -->` and
//! `<!-- takeover:end -->` markers.

use std::net::Ipv4Addr;
use std::time::Duration;

use vswitch_benches::node::{Vswitchd, median};
use vswitch_benches::report;
use vswitch_testbed::{Netns, Process, Scratch, unique_prefix, wait_until};

#[derive(Clone, Copy, PartialEq)]
enum Interruption {
    None,
    Restart,
    Takeover,
}

impl Interruption {
    fn name(self) -> &'static str {
        match self {
            Interruption::None => "none (noise floor)",
            Interruption::Restart => "clean restart (SIGTERM, start)",
            Interruption::Takeover => "takeover (`--takeover`)",
        }
    }
}

/// Dropped in field order: the daemon (killed) before the namespaces it served.
struct Rig {
    daemon: Vswitchd,
    a: Netns,
    b: Netns,
    /// More pods, only attached: what the pause grows with.
    others: Vec<Netns>,
    _node: Netns,
    prefix: String,
    _dir: Scratch,
}

/// Two pods on `backend` ("tap" or "afxdp"), with `services` (a services file's TOML)
/// if given.
fn rig(backend: &str, services: Option<&str>) -> Rig {
    let prefix = unique_prefix("btk");
    let dir = Scratch::new(&prefix);
    let node = Netns::new(&format!("{prefix}n"));
    let mut extra = String::new();
    if let Some(services) = services {
        let file = dir.0.join("services.toml");
        std::fs::write(&file, services).expect("services file");
        extra = format!("[services]\nfile = {:?}", file.display().to_string());
    }
    let daemon = Vswitchd::start(&node, &dir.0, &format!("workers = 2\nidle = \"adaptive\"\n{extra}"));
    let pod = |name: &str, ip: Ipv4Addr| {
        let ns = Netns::new(&format!("{prefix}{name}"));
        daemon.attach(&ns, ip, backend);
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns.ok(&["ip", "link", "set", "eth0", "up"]);
        ns
    };
    let a = pod("a", Ipv4Addr::new(10, 244, 1, 2));
    let b = pod("b", Ipv4Addr::new(10, 244, 1, 3));
    assert!(
        wait_until(Duration::from_secs(10), || a
            .run(&["ping", "-c", "1", "-W", "1", "10.244.1.3"])
            .status
            .success()),
        "pods reach each other"
    );
    Rig { daemon, a, b, others: Vec::new(), _node: node, prefix, _dir: dir }
}

/// The UDP workload between two AF_XDP pods, without and with a takeover (their
/// sockets, UMEMs and the veths' programs change hands).
fn afxdp_pods(runs: usize, seconds: u32) -> String {
    let mut r = rig("afxdp", None);
    let mut afxdp = Vec::new();
    for how in [Interruption::None, Interruption::Takeover] {
        let (mut lost, mut sent, mut paused) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let (json, pause) = run(&mut r, seconds, &["-u", "-l", "22", "-b", "17.6M", "-w", "4M"], how);
            lost.push(json["end"]["sum"]["lost_packets"].as_f64().expect("lost_packets"));
            sent.push(json["end"]["sum"]["packets"].as_f64().expect("packets"));
            paused.extend(pause);
        }
        let pause = match paused.is_empty() {
            true => String::new(),
            false => format!(", pause median {:.1} ms", median(paused)),
        };
        afxdp.push(format!(
            "{}: {:.0} of {:.0} lost (max {:.0}){pause}",
            how.name(),
            median(lost.clone()),
            median(sent),
            lost.iter().copied().fold(0.0, f64::max),
        ));
    }
    format!("Two AF_XDP pods, the same UDP workload: {}.", afxdp.join("; "))
}

/// The takeover's pause with `flows` Service flows tracked: UDP datagrams from pod a
/// to a Service whose endpoint is pod b, each from its own source port (50 000 of
/// them) to one of the Service's ports (as many as that takes).
fn with_flows(flows: usize, runs: usize) -> String {
    let ports: Vec<String> = (0..flows.div_ceil(50_000))
        // Each to its own target port: the endpoint's replies are then distinct flows.
        .map(|k| {
            let (port, target) = (1000 + k, 5000 + k);
            format!("{{ name = \"p{k}\", port = {port}, target_port = {target}, protocol = \"UDP\" }}")
        })
        .collect();
    let services = format!(
        "[[service]]\nname = \"flows\"\ncluster_ip = \"10.96.0.10\"\nports = [{}]\n\
         endpoints = [{{ ip = \"10.244.1.3\" }}]\n",
        ports.join(", ")
    );
    let mut r = rig("tap", Some(&services));
    assert!(
        wait_until(Duration::from_secs(10), || r.daemon.ctl(&["services"]).contains("10.96.0.10")),
        "the Service is served"
    );
    // The Service address is routed through the gateway.
    r.a.ok(&["ip", "route", "add", "default", "via", "10.244.1.1"]);
    // One socket per flow, each bound to its own source port.
    let sender = format!(
        "import socket\nfor i in range({flows}):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    \
         s.bind(('10.244.1.2', 10000 + i % 50000))\n    s.sendto(b'x', ('10.96.0.10', 1000 + i // 50000))\n    \
         s.close()\n"
    );
    let tracked = |daemon: &Vswitchd| -> f64 {
        let stats: serde_json::Value =
            serde_json::from_str(&daemon.ctl(&["--json", "stats"])).expect("stats JSON");
        stats["conntrack_entries"].as_f64().unwrap_or(0.0)
    };
    let (mut pauses, mut taken) = (Vec::new(), Vec::new());
    let mut held = 0.0;
    for _ in 0..runs {
        r.a.ok(&["python3", "-c", &sender]);
        held = tracked(&r.daemon);
        let log = r.daemon.take_over();
        pauses.extend(logged(&log, "paused_ms"));
        taken.extend(logged(&log, "taken_ms"));
    }
    let carried = tracked(&r.daemon);
    format!(
        "With {held:.0} Service flows tracked (UDP, one per source port): takeover pause median {:.1} ms, max {:.1} ms \
         over {} takeovers, of which the old daemon taking its queues and tables {:.1} ms; {carried:.0} flows in the \
         new daemon after the last.",
        median(pauses.clone()),
        pauses.iter().copied().fold(0.0, f64::max),
        pauses.len(),
        median(taken)
    )
}

/// A number the old daemon's log gives as `field=`.
fn logged(log: &str, field: &str) -> Option<f64> {
    log.split(&format!("{field}=")).nth(1)?.split_whitespace().next()?.parse().ok()
}

/// Attaches pods until the node has `count`.
fn grow(r: &mut Rig, count: usize) {
    while r.others.len() + 2 < count {
        let n = r.others.len() + 4;
        let ns = Netns::new(&format!("{}o{n}", r.prefix));
        r.daemon.attach(&ns, Ipv4Addr::new(10, 244, 1, n as u8), "tap");
        r.others.push(ns);
    }
}

/// Runs iperf3 from a to b with `args` for `seconds`, interrupting the switch at 40%
/// of it; returns the client's JSON and the pause the old daemon logged (ms).
fn run(r: &mut Rig, seconds: u32, args: &[&str], how: Interruption) -> (serde_json::Value, Option<f64>) {
    let _server = r.b.spawn(&["iperf3", "-s", "-1", "-p", "5201"]);
    assert!(wait_until(Duration::from_secs(5), || r.b.ok(&["ss", "-ltn"]).contains(":5201")));
    let time = seconds.to_string();
    let mut cmd = vec!["iperf3", "-c", "10.244.1.3", "-p", "5201", "-t", time.as_str(), "--json"];
    cmd.extend(args);
    let mut client: Process = r.a.spawn(&cmd);
    std::thread::sleep(Duration::from_millis(u64::from(seconds) * 400));
    let pause = match how {
        Interruption::None => None,
        Interruption::Restart => {
            r.daemon.restart();
            None
        }
        Interruption::Takeover => logged(&r.daemon.take_over(), "paused_ms"),
    };
    let out = client.wait_output(Duration::from_secs(u64::from(seconds) + 30)).expect("iperf3 finishes");
    let text = String::from_utf8_lossy(&out.stdout);
    (serde_json::from_str(&text).unwrap_or_else(|e| panic!("iperf3 JSON ({e}): {text}")), pause)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let runs: usize = value("--runs").map_or(3, |v| v.parse().expect("--runs N"));
    let seconds: u32 = value("--seconds").map_or(5, |v| v.parse().expect("--seconds S"));
    let write = value("--write");
    let flows: usize = value("--flows").map_or(100_000, |v| v.parse().expect("--flows N"));
    if args.iter().any(|a| a == "--flows-only") {
        println!("{}", with_flows(flows, runs));
        return;
    }
    if args.iter().any(|a| a == "--afxdp-only") {
        println!("{}", afxdp_pods(runs, seconds));
        return;
    }

    let mut udp_rows = Vec::new();
    let mut tcp_rows = Vec::new();
    let mut pauses = Vec::new();
    let mut r = rig("tap", None);
    for how in [Interruption::None, Interruption::Restart, Interruption::Takeover] {
        let (mut lost, mut sent) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (json, pause) = run(&mut r, seconds, &["-u", "-l", "22", "-b", "17.6M", "-w", "4M"], how);
            let sum = &json["end"]["sum"];
            lost.push(sum["lost_packets"].as_f64().expect("lost_packets"));
            sent.push(sum["packets"].as_f64().expect("packets"));
            pauses.extend(pause);
        }
        let (lost_max, sent_median) = (lost.iter().copied().fold(0.0, f64::max), median(sent.clone()));
        udp_rows.push(format!(
            "| {} | {:.0} | {:.0} (max {:.0}) | {:.3}% |",
            how.name(),
            sent_median,
            median(lost.clone()),
            lost_max,
            100.0 * median(lost) / sent_median
        ));
        let (mut slowest, mut below, mut retransmits) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let (json, pause) = run(&mut r, seconds, &["-i", "0.1"], how);
            pauses.extend(pause);
            let rates: Vec<f64> = json["intervals"]
                .as_array()
                .expect("intervals")
                .iter()
                .map(|i| i["sum"]["bits_per_second"].as_f64().unwrap_or(0.0))
                .collect();
            let typical = median(rates.clone());
            slowest.push(rates.iter().copied().fold(f64::INFINITY, f64::min) / 1e9);
            below.push(rates.iter().filter(|r| **r < typical / 2.0).count() as f64 * 100.0);
            retransmits.push(json["end"]["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0));
        }
        tcp_rows.push(format!(
            "| {} | {:.2} | {:.0} (max {:.0}) | {:.0} |",
            how.name(),
            median(slowest),
            median(below.clone()),
            below.iter().copied().fold(0.0, f64::max),
            median(retransmits)
        ));
    }
    // The pause with more pods (each one's queues adopted inside it).
    let pods = value("--pods").map_or(64, |v| v.parse().expect("--pods N"));
    grow(&mut r, pods);
    let (mut many_pauses, mut many_lost) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (json, pause) =
            run(&mut r, seconds, &["-u", "-l", "22", "-b", "17.6M", "-w", "4M"], Interruption::Takeover);
        many_pauses.extend(pause);
        many_lost.push(json["end"]["sum"]["lost_packets"].as_f64().expect("lost_packets"));
    }
    let many = format!(
        "With {pods} TAP pods on the node (two of them talking as above): takeover pause median {:.1} ms, max {:.1} ms; \
         UDP frames lost median {:.0}, max {:.0}.",
        median(many_pauses.clone()),
        many_pauses.iter().copied().fold(0.0, f64::max),
        median(many_lost.clone()),
        many_lost.iter().copied().fold(0.0, f64::max),
    );
    drop(r);
    let many = format!("{many}\n\n{}", afxdp_pods(runs, seconds));
    let many = format!("{many}\n\n{}", with_flows(flows, runs));
    let pause = if pauses.is_empty() {
        "not logged".to_string()
    } else {
        format!(
            "median {:.1} ms, max {:.1} ms over {} takeovers",
            median(pauses.clone()),
            pauses.iter().copied().fold(0.0, f64::max),
            pauses.len()
        )
    };
    let body = format!(
        "Machine: {}, {}. `cargo run --release -p vswitch-benches --bin takeover -- --runs {runs} --seconds {seconds}` \
         (medians of {runs} runs of {seconds} s; the interruption at 40% of each run). Takeover pause (old \
         daemon's queues taken to its goodbye): {pause}.\n\n\
         | UDP 64 B at 100 000 frames/s, pod → pod | sent | lost | lost share |\n|---|---:|---:|---:|\n{}\n\n\
         | TCP stream, pod → pod (100 ms intervals) | slowest interval, Gbit/s | time below half the median rate, ms | retransmits |\n|---|---:|---:|---:|\n{}\n\n{many}\n",
        report::machine(),
        report::today(),
        udp_rows.join("\n"),
        tcp_rows.join("\n"),
    );
    print!("{body}");
    if let Some(path) = write {
        report::write_between_markers(&path, "takeover", &body);
    }
}
