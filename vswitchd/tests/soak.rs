//! A bounded soak: pods attached and detached every second, a Service's endpoints
//! changing every two seconds, steady traffic between two pods throughout. At the end:
//! no lost pings, the daemon's memory flat, the ports exactly the live pods, no leaked
//! namespaces or file descriptors, no unexplained drops.
//!
//! `VSWITCH_SOAK_SECS` sets the length (default 40 s in the test suite; the figures in
//! docs/RELIABILITY.md come from a 600 s run).

mod harness;

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use harness::testbed::{Netns, unique_prefix};
use harness::{Node, Pod, Scratch};
use vswitch_api::{Backend, PortKind};

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, host)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn pod_and_endpoint_churn_under_traffic() {
    let secs: u64 = std::env::var("VSWITCH_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let files = Scratch::new(&unique_prefix("soakf"));
    let services = files.0.join("services.toml");
    let write_services = |hosts: &[u8]| {
        let eps = hosts.iter().map(|h| format!("{{ ip = \"{}\" }}", ip(*h))).collect::<Vec<_>>().join(", ");
        let text = format!(
            "[[service]]\nname = \"churn\"\ncluster_ip = \"10.96.0.70\"\nports = [{{ protocol = \"UDP\", port = 53, target_port = 5353 }}]\nendpoints = [{eps}]\n"
        );
        std::fs::write(services.with_extension("tmp"), text).unwrap();
        std::fs::rename(services.with_extension("tmp"), &services).unwrap();
    };
    write_services(&[2, 3]);
    let node = Node::start("soak", &format!("[services]\nfile = {:?}\n", services.display().to_string()));
    let pid = node.daemon_pid();
    let a = node.pod("a", ip(2), Backend::Tap);
    let b = node.pod("b", ip(3), Backend::Tap);
    assert!(a.ping(b.ip, 2));
    // Quiet: ten lines a second for minutes would fill the pipe and stall ping.
    let mut talk = a.ns.spawn(&["ping", "-q", "-i", "0.1", "-w", &(secs + 2).to_string(), &b.ip.to_string()]);

    let (fds0, rss0) = (fds(pid), node.daemon_rss_kib());
    let mut rss = Vec::new();
    let mut live: VecDeque<(Pod, u8)> = VecDeque::new();
    let mut next_host = 100u8;
    let mut made = 0u32;
    let started = Instant::now();
    let mut tick = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        // A pod in (TAP and AF_XDP in turn), and the oldest out once five are up.
        let backend = if tick.is_multiple_of(2) { Backend::Tap } else { Backend::Afxdp };
        let host = next_host;
        next_host = if next_host >= 250 { 100 } else { next_host + 1 };
        let pod = node.pod(&format!("c{host}"), ip(host), backend);
        made += 1;
        live.push_back((pod, host));
        if live.len() > 5 {
            let (old, _) = live.pop_front().expect("five up");
            let cid = old.port.container_id.clone();
            assert!(node.api(|c| async move { c.detach(&cid, "eth0").await }).expect("detach").existed);
            drop(old);
        }
        if tick.is_multiple_of(2) {
            let hosts: Vec<u8> = live.iter().map(|(_, h)| *h).take(3).collect();
            write_services(&hosts);
        }
        if tick.is_multiple_of(5) {
            rss.push(node.daemon_rss_kib());
        }
        tick += 1;
        // One step a second: sleep until the next whole second since the start.
        let next = Duration::from_secs(tick);
        std::thread::sleep(next.saturating_sub(started.elapsed()));
    }
    let talked = talk.wait_output(Duration::from_secs(secs + 30)).expect("ping ends");
    let text = String::from_utf8_lossy(&talked.stdout);
    assert!(text.contains(" 0% packet loss"), "steady traffic lost nothing over {secs} s: {text}");

    let ports = node.api(|c| async move { c.ports().await }).expect("ports");
    let pods: Vec<String> =
        ports.iter().filter(|p| p.kind == PortKind::Pod).map(|p| p.container_id.clone()).collect();
    assert_eq!(pods.len(), live.len() + 2, "ports are exactly the live pods: {pods:?}");
    let namespaces = harness::testbed::ok("ip", &["netns", "list"]);
    let ours = namespaces.lines().filter(|l| l.starts_with(&node.prefix)).count();
    assert_eq!(ours, live.len() + 2 + 1, "no leaked namespaces (pods + node):\n{namespaces}");
    // Settle, then compare.
    std::thread::sleep(Duration::from_secs(1));
    let (fds1, rss1) = (fds(pid), node.daemon_rss_kib());
    let grown = rss1.saturating_sub(rss0);
    assert!(fds1 <= fds0 + 5 * 8, "fds: {fds0} → {fds1} with {} pods live", live.len());
    assert!(grown < 48 * 1024, "RSS {rss0} → {rss1} KiB, samples {rss:?}");
    let stats = node.stats();
    // Explained: floods with no one to reach, frames in flight to a port being detached
    // (its queue refusing them, the port gone from the tables, its MAC no longer
    // anyone's) — a few per detach.
    let detached = u64::from(made) - live.len() as u64;
    let unexplained: Vec<(String, u64)> = stats
        .drops
        .iter()
        .filter(|(r, n)| {
            let churn = ["unknown_ingress_port", "egress_port_gone", "tx_failed", "unknown_unicast"]
                .contains(&r.as_str());
            **n > 0 && r.as_str() != "no_flood_targets" && !(churn && **n <= detached * 4)
        })
        .map(|(r, n)| (r.clone(), *n))
        .collect();
    assert!(unexplained.is_empty(), "unexplained drops: {unexplained:?}");
    eprintln!(
        "soak {secs} s: {made} pods attached, {} detached; RSS {rss0} → {rss1} KiB (samples {rss:?}); fds {fds0} → {fds1}",
        made as usize - live.len()
    );
    let _keep: Vec<&Netns> = vec![&a.ns, &b.ns];
}
