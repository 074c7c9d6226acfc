//! Pods on one node talk through vswitchd: real namespaces, real ping, TCP, UDP and
//! tshark, over TAP and over AF_XDP ports.

mod harness;

use std::net::Ipv4Addr;
use std::time::Duration;

use harness::testbed::{Signal, wait_until};
use harness::{Node, Pod, tcp_transfer_is_exact};
use vswitch_api::Backend;

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, host)
}

const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

/// iperf3 UDP at a modest rate: the datagrams arrive (loss below 1%).
fn udp_flows(from: &Pod, to: &Pod) {
    let _server = to.ns.spawn(&["iperf3", "-s", "-1", "-p", "5201"]);
    assert!(wait_until(Duration::from_secs(5), || to.ns.ok(&["ss", "-ltn"]).contains(":5201")));
    let out = from.ns.ok(&[
        "iperf3",
        "-c",
        &to.ip.to_string(),
        "-p",
        "5201",
        "-u",
        "-b",
        "50M",
        "-l",
        "1200",
        "-t",
        "2",
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    let sum = &json["end"]["sum"];
    let packets = sum["packets"].as_u64().unwrap_or(0);
    let lost = sum["lost_packets"].as_u64().unwrap_or(u64::MAX);
    assert!(packets > 1000, "{sum}");
    assert!(lost * 100 <= packets, "UDP loss {lost} of {packets}: {sum}");
}

fn two_pods_talk(backend: Backend) {
    let node = Node::start("e2p", "");
    let a = node.pod("a", ip(2), backend);
    let b = node.pod("b", ip(3), backend);
    assert!(a.ping(b.ip, 3), "a -> b");
    assert!(b.ping(a.ip, 3), "b -> a");
    assert!(a.ping(GATEWAY, 2), "the node itself answers on the gateway address (host port)");
    assert!(
        node.ns.run(&["ping", "-c", "2", "-i", "0.2", "-W", "2", &b.ip.to_string()]).status.success(),
        "node -> pod"
    );
    tcp_transfer_is_exact(&node.dir, &a, &b, 100_000_000);
    tcp_transfer_is_exact(&node.dir, &b, &a, 10_000_000);
    udp_flows(&a, &b);
    let stats = node.stats();
    for port in [&a.port, &b.port] {
        let p = stats.ports.iter().find(|p| p.id == port.id).expect("port counted");
        assert!(p.rx_packets > 0 && p.tx_packets > 0);
        // The one drop allowed: a receiving TAP whose queue the UDP burst filled (the
        // kernel refuses the write), within the UDP loss budget above.
        let refused = p.drops.get("tx_failed").copied().unwrap_or(0);
        assert!(refused * 100 <= p.rx_packets, "tx_failed within 1% on {}: {:?}", p.name, p.drops);
        let others: u64 = p.drops.iter().filter(|(r, _)| *r != "tx_failed").map(|(_, n)| n).sum();
        assert_eq!(others, 0, "no other drops on {}: {:?}", p.name, p.drops);
    }
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn two_pods_over_tap() {
    two_pods_talk(Backend::Tap);
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn two_pods_over_afxdp() {
    two_pods_talk(Backend::Afxdp);
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn tap_and_afxdp_pods_talk_to_each_other() {
    let node = Node::start("e2m", "");
    let a = node.pod("a", ip(2), Backend::Tap);
    let b = node.pod("b", ip(3), Backend::Afxdp);
    assert!(a.ping(b.ip, 3) && b.ping(a.ip, 3));
    // TCP from the TAP pod arrives as TSO super-frames and is cut for the veth.
    tcp_transfer_is_exact(&node.dir, &a, &b, 20_000_000);
    tcp_transfer_is_exact(&node.dir, &b, &a, 20_000_000);
    let events = node.stats().events;
    assert!(events["gso_segmented"] > 0, "super-frames were segmented for the AF_XDP port: {events:?}");
}

/// TCP from an AF_XDP pod (its veth sends finished, MTU-sized segments) reaches a TAP
/// pod coalesced: each run of the flow's segments leaves the switch as one super-frame,
/// and the receiving pod's stack takes packets far larger than its MTU.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn tcp_from_an_afxdp_pod_reaches_a_tap_pod_as_super_frames() {
    let node = Node::start("e2g", "");
    let a = node.pod("a", ip(2), Backend::Tap);
    let b = node.pod("b", ip(3), Backend::Afxdp);
    assert!(b.ping(a.ip, 2));
    let pcap = node.dir.0.join("a-tcp.pcap");
    let pcap_arg = pcap.display().to_string();
    let mut capture =
        a.ns.spawn(&["tshark", "-q", "-i", "eth0", "-s", "96", "-f", "tcp port 5001", "-w", &pcap_arg]);
    assert!(wait_until(Duration::from_secs(15), || pcap.exists()), "tshark started capturing");
    std::thread::sleep(Duration::from_millis(500));
    tcp_transfer_is_exact(&node.dir, &b, &a, 20_000_000);
    std::thread::sleep(Duration::from_millis(300));
    capture.signal(Signal::SIGINT);
    capture.wait_output(Duration::from_secs(10)).expect("tshark stops");
    let lens = harness::testbed::ok(
        "tshark",
        &["-r", &pcap_arg, "-Y", "tcp.dstport == 5001", "-T", "fields", "-e", "frame.len"],
    );
    let largest = lens.lines().filter_map(|l| l.trim().parse::<usize>().ok()).max().unwrap_or(0);
    assert!(largest > 3 * 1500, "the pod received super-frames (largest {largest} bytes)");
    let events = node.stats().events;
    assert!(
        events["gro_coalesced"] > 0 && events["gro_segments"] > 2 * events["gro_coalesced"],
        "segments were coalesced for the TAP port: {events:?}"
    );
}

/// The switch answers ARP itself: a third pod's capture sees no request meant for
/// anyone else, while the others resolve each other and the gateway.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn arp_is_answered_by_the_switch() {
    let node = Node::start("e2a", "");
    let a = node.pod("a", ip(2), Backend::Tap);
    let b = node.pod("b", ip(3), Backend::Afxdp);
    let c = node.pod("c", ip(4), Backend::Tap);
    let pcap = node.dir.0.join("c.pcapng");
    let mut capture =
        c.ns.spawn(&["tshark", "-q", "-i", "eth0", "-f", "arp", "-w", &pcap.display().to_string()]);
    assert!(wait_until(Duration::from_secs(15), || pcap.exists()), "tshark started capturing");
    std::thread::sleep(Duration::from_millis(500));
    for pod in [&a, &b] {
        pod.ns.ok(&["ip", "neigh", "flush", "dev", "eth0"]);
    }
    assert!(a.ping(b.ip, 2));
    assert!(a.ping(GATEWAY, 2));
    assert!(b.ping(a.ip, 2));
    // What a and b learned is the switch's answer: each other's MAC, the gateway's.
    let neigh = a.ns.ok(&["ip", "neigh", "show", "dev", "eth0"]);
    assert!(neigh.contains(&format!("{} lladdr {}", b.ip, b.port.mac)), "{neigh}");
    assert!(neigh.contains(&format!("{GATEWAY} lladdr 02:76:73:00:00:01")), "{neigh}");
    std::thread::sleep(Duration::from_millis(500));
    capture.signal(Signal::SIGINT);
    capture.wait_output(Duration::from_secs(10)).expect("tshark stops");
    let seen = c.ns.ok(&[
        "tshark",
        "-r",
        &pcap.display().to_string(),
        "-T",
        "fields",
        "-e",
        "arp.opcode",
        "-e",
        "arp.src.proto_ipv4",
        "-e",
        "arp.dst.proto_ipv4",
    ]);
    let foreign: Vec<&str> = seen
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            f.first() == Some(&"1") && f.get(2) != Some(&"10.244.1.4")
        })
        .collect();
    assert!(foreign.is_empty(), "pod c saw ARP requests meant for others: {foreign:?}");
    assert!(node.stats().events["arp_replies"] >= 3, "answered by the proxy");
}

/// A pod that sends as another IP or MAC gets nothing through, and the drop counters
/// say why.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn port_security_stops_spoofing() {
    let node = Node::start("e2s", "");
    let a = node.pod("a", ip(2), Backend::Tap);
    let b = node.pod("b", ip(3), Backend::Tap);
    assert!(a.ping(b.ip, 2));

    // Another IP: a adds 10.244.1.50 and pings from it (b's MAC is already cached).
    a.ns.ok(&["ip", "addr", "add", "10.244.1.50/24", "dev", "eth0"]);
    let spoofed =
        a.ns.run(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.244.1.50", &b.ip.to_string()]);
    assert!(!spoofed.status.success(), "no echo reply for a spoofed source");
    assert!(node.drops(a.port.id, "spoofed_source_ip") >= 3, "{:?}", node.stats().ports);
    assert!(!b.ns.ok(&["ip", "neigh"]).contains("10.244.1.50"), "b never heard of the spoofed address");
    a.ns.ok(&["ip", "addr", "del", "10.244.1.50/24", "dev", "eth0"]);

    // Another MAC.
    let own_mac = a.port.mac.clone();
    let set_mac = |mac: &str| {
        a.ns.ok(&["ip", "link", "set", "eth0", "down"]);
        a.ns.ok(&["ip", "link", "set", "eth0", "address", mac]);
        a.ns.ok(&["ip", "link", "set", "eth0", "up"]);
        a.ns.ok(&["ip", "route", "replace", "default", "via", "10.244.1.1"]);
    };
    set_mac("02:00:00:00:00:99");
    assert!(!a.ping(b.ip, 2), "a spoofed MAC gets nothing through");
    assert!(node.drops(a.port.id, "spoofed_source_mac") >= 1);
    set_mac(&own_mac);
    assert!(a.ping(b.ip, 2), "with its own MAC again, a is back");
}

/// vswitchd killed with SIGKILL during a long ping and started again: the ping
/// resumes, pods kept their addresses and interfaces; then the same with SIGTERM.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn traffic_resumes_after_a_restart() {
    let mut node = Node::start("e2r", "");
    let a = node.pod("a", ip(2), Backend::Tap);
    let b = node.pod("b", ip(3), Backend::Tap);
    let c = node.pod("c", ip(4), Backend::Afxdp);
    assert!(a.ping(b.ip, 2) && a.ping(c.ip, 2));

    let mut long_ping = a.ns.spawn(&["ping", "-i", "0.05", "-c", "200", "-W", "1", &b.ip.to_string()]);
    std::thread::sleep(Duration::from_secs(2));
    node.crash();
    std::thread::sleep(Duration::from_millis(300));
    node.restart();
    let out = long_ping.wait_output(Duration::from_secs(30)).expect("ping ends");
    let text = String::from_utf8_lossy(&out.stdout);
    let received = text
        .lines()
        .find_map(|l| {
            l.split(", ").find_map(|p| p.strip_suffix(" received")).map(|n| n.trim().parse::<u32>().unwrap())
        })
        .expect("ping summary");
    // 200 pings over 10 s; the daemon was away for about a second: at 50 ms per ping,
    // losing more than 3 s worth means traffic did not resume promptly.
    assert!(received >= 140, "received {received} of 200 ({} lost):\n{text}", 200 - received);
    assert!(
        text.contains("icmp_seq=200 ") || text.contains("icmp_seq=199 "),
        "the last pings got through:\n{text}"
    );
    eprintln!("restart after SIGKILL: {} of 200 pings lost at 50 ms intervals", 200 - received);

    for pod in [&a, &b, &c] {
        assert!(
            pod.ns.ok(&["ip", "addr", "show", "eth0"]).contains(&format!("{}/24", pod.ip)),
            "address kept"
        );
    }
    assert!(a.ping(c.ip, 2), "the AF_XDP pod is back too");
    let ports = node.api(|cl| async move { cl.ports().await }).unwrap();
    assert_eq!(ports.len(), 4, "host port and three pods re-attached: {ports:?}");

    node.stop();
    node.restart();
    assert!(a.ping(b.ip, 2) && b.ping(c.ip, 2), "after a clean stop and start");
    // Detaching removes the interfaces for good.
    assert!(!node.api(|cl| async move { cl.detach("never-attached", "eth0").await }).unwrap().existed);
    let cid = c.port.container_id.clone();
    assert!(node.api(|cl| async move { cl.detach(&cid, "eth0").await }).unwrap().existed);
    assert!(c.ns.run(&["ip", "link", "show", "eth0"]).status.code() != Some(0), "AF_XDP pod's veth removed");
    let cid = b.port.container_id.clone();
    assert!(node.api(|cl| async move { cl.detach(&cid, "eth0").await }).unwrap().existed);
    assert!(
        wait_until(Duration::from_secs(5), || b.ns.run(&["ip", "link", "show", "eth0"]).status.code()
            != Some(0)),
        "TAP pod's interface removed"
    );
}
