//! A new vswitchd takes the running one's place (`vswitchd --takeover`, an upgrade):
//! pods' traffic goes on through the handover, connections and their flows survive,
//! faults leave the old daemon forwarding, and fifty takeovers leak nothing.

mod harness;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use harness::testbed::{Process, wait_until};
use harness::{Node, Pod};
use vswitch_api::Backend;

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, host)
}

/// Runs an iperf3 client in `from` toward `to` for `seconds`, with `args`; returns the
/// running client (its JSON on stdout).
fn iperf3(from: &Pod, to: &Pod, port: &str, seconds: u32, args: &[&str]) -> (Process, Process) {
    let server = to.ns.spawn(&["iperf3", "-s", "-1", "-p", port]);
    assert!(wait_until(Duration::from_secs(5), || to.ns.ok(&["ss", "-ltn"]).contains(&format!(":{port}"))));
    let mut cmd = vec!["iperf3", "-c"];
    let dst = to.ip.to_string();
    let time = seconds.to_string();
    cmd.extend([dst.as_str(), "-p", port, "-t", time.as_str(), "--json"]);
    cmd.extend(args);
    (from.ns.spawn(&cmd), server)
}

fn json_of(mut client: Process, seconds: u32) -> serde_json::Value {
    let out = client.wait_output(Duration::from_secs(u64::from(seconds) + 20)).expect("iperf3 finishes");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "iperf3 failed ({}): {text}", out.status);
    serde_json::from_str(&text).expect("iperf3 JSON")
}

/// 64-byte UDP frames from one pod to another, then a TCP stream the other way, each
/// with a takeover in the middle: at most 0.1% of the datagrams lost, the TCP
/// connection goes on without a reset, and no pod interface is re-created. The rate
/// here is 20 000 frames a second, what this test's debug build forwards without loss
/// on two vCPUs; 100 000 a second (the release build) is the harness's
/// (`benches/takeover.sh`, docs/BENCHMARKS.md).
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn traffic_goes_on_through_a_takeover() {
    let mut node = Node::start("tko", "");
    let a = node.pod("a", ip(2), Backend::Tap);
    let b = node.pod("b", ip(3), Backend::Tap);
    assert!(a.ping(b.ip, 2));
    let ifindex = |p: &Pod| p.ns.ok(&["cat", "/sys/class/net/eth0/ifindex"]);
    let before = (ifindex(&a), ifindex(&b));

    // 22 bytes of iperf3 payload make a 64-byte frame; 20 kpps is 3.52 Mbit/s of it.
    let (udp, _udp_server) = iperf3(&a, &b, "5201", 6, &["-u", "-l", "22", "-b", "3.52M"]);
    std::thread::sleep(Duration::from_secs(2));
    let received =
        |node: &Node| node.stats().ports.iter().find(|p| p.name.contains("-a/")).unwrap().rx_packets;
    let counted = received(&node);
    let handed = Instant::now();
    node.take_over();
    assert!(received(&node) >= counted, "the counters go on from the old daemon's");
    eprintln!("takeover took {:?} (new daemon started to old one gone and new API up)", handed.elapsed());
    let udp = json_of(udp, 6);
    let sum = &udp["end"]["sum"];
    let (packets, lost) = (sum["packets"].as_u64().unwrap(), sum["lost_packets"].as_u64().unwrap());
    eprintln!("UDP over the takeover: {lost} of {packets} lost");
    assert!(packets > 100_000, "the generator kept its rate: {sum}");
    assert!(lost * 1000 <= packets, "at most 0.1% lost over the takeover: {lost} of {packets}");

    let (tcp, _tcp_server) = iperf3(&b, &a, "5202", 6, &["-i", "0.1"]);
    std::thread::sleep(Duration::from_secs(2));
    node.take_over();
    let tcp = json_of(tcp, 6);
    let intervals = tcp["intervals"].as_array().unwrap();
    let slowest =
        intervals.iter().map(|i| i["sum"]["bits_per_second"].as_f64().unwrap()).fold(f64::INFINITY, f64::min);
    eprintln!("TCP over the takeover: slowest 100 ms interval {:.1} Mbit/s", slowest / 1e6);
    assert!(tcp["end"]["sum_received"]["bytes"].as_u64().unwrap() > 0);

    assert_eq!((ifindex(&a), ifindex(&b)), before, "the pods' interfaces are the same devices");
    let log = node.log();
    assert!(log.contains("took over: forwarding"), "{log}");
    let status = node.ctl(&["status"]);
    assert!(status.contains("started:   takeover from vswitchd"), "{status}");
    assert!(log.contains("handed over to the new vswitchd: exiting"), "{log}");
    assert!(a.ping(b.ip, 2) && b.ping(ip(1), 2), "pods and the node through the new daemon");
    let ports = node.ctl(&["ports"]);
    assert_eq!(ports.lines().filter(|l| l.contains(" pod ")).count(), 2, "{ports}");
}

/// A `Hello` as a new vswitchd sends it (handover format 1: a 4-byte length, then the
/// postcard fields in order — formats, version, workers, state file, what the old one
/// does then), by hand: the test plays a new daemon that stops half-way.
fn hello(workers: u8, state_file: &str) -> Vec<u8> {
    let mut body = vec![1u8, 1, 4];
    body.extend_from_slice(b"test");
    body.push(workers);
    assert!(state_file.len() < 128, "one-byte length");
    body.push(state_file.len() as u8);
    body.extend_from_slice(state_file.as_bytes());
    body.push(0); // Retire::Exit
    let mut message = (body.len() as u32).to_be_bytes().to_vec();
    message.extend(body);
    message
}

/// A new daemon that goes away after the old one paused and sent its offer: the old
/// one resumes with every port. While that takeover is under way, another new daemon
/// is refused with a clear error and changes nothing. A real takeover then works.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_partner_that_dies_mid_handover_leaves_the_old_daemon_forwarding() {
    let mut node = Node::start("tkf", "");
    let a = node.pod("a", ip(2), Backend::Tap);
    let b = node.pod("b", ip(3), Backend::Tap);
    assert!(a.ping(b.ip, 1));
    let partner = pause_by_hand(&node);

    let mut second = node.spawn_takeover();
    let out = second.wait_output(Duration::from_secs(20)).expect("the second new daemon exits");
    assert!(!out.status.success());
    let log = node.log();
    assert!(log.contains("another takeover of the running vswitchd is under way"), "{log}");

    drop(partner);
    assert!(
        wait_until(Duration::from_secs(10), || node
            .log()
            .contains("takeover failed: every queue back with its worker")),
        "{}",
        node.log()
    );
    assert!(a.ping(b.ip, 2) && b.ping(ip(1), 1), "the old daemon forwards again");
    node.take_over();
    assert!(a.ping(b.ip, 2), "and a takeover after it works");
}

/// A new daemon's part played by hand up to the old daemon's offer: returns the
/// connection, the old daemon paused behind it.
fn pause_by_hand(node: &Node) -> std::os::unix::net::UnixStream {
    use std::io::{Read, Write};
    let mut takeover_socket = node.socket.as_os_str().to_owned();
    takeover_socket.push(".takeover");
    let mut partner = std::os::unix::net::UnixStream::connect(&takeover_socket).expect("takeover socket");
    let state_file = node.dir.0.join("state.json").display().to_string();
    partner.write_all(&hello(2, &state_file)).unwrap();
    // Which answer came: the variant index, the body's first byte.
    let answer = |partner: &mut std::os::unix::net::UnixStream| {
        let mut len = [0u8; 4];
        partner.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        partner.read_exact(&mut body).unwrap();
        body[0]
    };
    assert_eq!(answer(&mut partner), 2, "the preface (the Services' ids)");
    partner.write_all(&[0, 0, 0, 0]).unwrap(); // Ready: an empty body
    assert_eq!(answer(&mut partner), 3, "an offer (the old daemon is paused now)");
    partner
}

/// SIGTERM reaching a daemon in the middle of a takeover: its clean stop waits for
/// the takeover's end (it would undo what the new daemon is adopting), then runs.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_signal_during_a_takeover_waits_for_its_end() {
    let mut node = Node::start("tks", "");
    let a = node.pod("a", ip(2), Backend::Tap);
    let b = node.pod("b", ip(3), Backend::Tap);
    let partner = pause_by_hand(&node);
    let pid = node.daemon_pid().to_string();
    node.ns.ok(&["kill", "-TERM", &pid]);
    assert!(
        wait_until(Duration::from_secs(5), || node
            .log()
            .contains("stopping once the takeover under way has ended")),
        "{}",
        node.log()
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(!node.log().contains("tables snapshot written"), "no clean stop during the takeover");
    drop(partner);
    node.stop();
    let log = node.log();
    assert!(log.contains("takeover failed: every queue back with its worker"), "{log}");
    assert!(log.contains("tables snapshot written"), "then the clean stop: {log}");
    node.restart();
    assert!(a.ping(b.ip, 2));
}

/// As a DaemonSet's new pod asks (`--takeover=wait`): the old daemon, handed over,
/// stays without serving anything (its container would be restarted if it exited)
/// until its SIGTERM, and then exits at once undoing nothing.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn an_old_daemon_told_to_wait_leaves_at_its_sigterm_undoing_nothing() {
    let mut node = Node::start("tkw", "");
    let a = node.pod("a", ip(2), Backend::Tap);
    let b = node.pod("b", ip(3), Backend::Tap);
    let mut old = node.take_over_leaving_old();
    std::thread::sleep(Duration::from_millis(500));
    assert!(old.wait_output(Duration::ZERO).is_none(), "still there, waiting");
    assert!(a.ping(b.ip, 2), "forwarded by the new daemon");
    assert_eq!(node.stats().ports.len(), 4, "the API is the new daemon's");
    let routes = node.ns.ok(&["ip", "route"]);
    old.signal(harness::testbed::Signal::SIGTERM);
    let out = old.wait_output(Duration::from_secs(10)).expect("the old vswitchd exits at SIGTERM");
    assert!(out.status.success());
    assert!(node.log().contains("handed over earlier: exiting"), "{}", node.log());
    assert_eq!(node.ns.ok(&["ip", "route"]), routes, "nothing undone");
    assert!(a.ping(b.ip, 2) && b.ping(ip(1), 1));
    assert!(std::path::Path::new(&node.socket).exists(), "the API socket stays");
}

/// AF_XDP pod ports are handed over as TAP ports are: the socket, its UMEM and the
/// veth's XDP program go to the new daemon, the pod's interface stays, and a ping
/// every 10 ms across three takeovers (one leaving the old daemon waiting, as the
/// DaemonSet does) loses nothing.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn afxdp_ports_are_handed_over() {
    let mut node = Node::start("tkx", "");
    let a = node.pod("a", ip(2), Backend::Afxdp);
    let b = node.pod("b", ip(3), Backend::Tap);
    assert!(a.ping(b.ip, 1));
    let ifindex = |p: &Pod| p.ns.ok(&["cat", "/sys/class/net/eth0/ifindex"]);
    let before = (ifindex(&a), ifindex(&b));
    let programs = |node: &Node| node.ns.ok(&["ip", "-o", "link", "show", "type", "veth"]);
    assert!(programs(&node).contains("prog/xdp"), "the veth has its program: {}", programs(&node));

    let mut ping = a.ns.spawn(&["ping", "-c", "300", "-i", "0.01", "-W", "1", &b.ip.to_string()]);
    std::thread::sleep(Duration::from_millis(500));
    node.take_over();
    std::thread::sleep(Duration::from_millis(300));
    let mut old = node.take_over_leaving_old();
    std::thread::sleep(Duration::from_millis(300));
    old.signal(harness::testbed::Signal::SIGTERM);
    assert!(old.wait_output(Duration::from_secs(10)).expect("it exits at SIGTERM").status.success());
    node.take_over();
    let out = ping.wait_output(Duration::from_secs(30)).expect("ping finishes");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(summary.contains("300 received"), "every ping answered: {summary}\n{}", node.log());

    let log = node.log();
    assert!(!log.contains("takeover refused"), "{log}");
    assert_eq!(log.matches("took over: forwarding").count(), 3, "{log}");
    assert_eq!((ifindex(&a), ifindex(&b)), before, "no pod interface re-created");
    assert!(programs(&node).contains("prog/xdp"), "the old daemons left it attached: {}", programs(&node));
    // The last daemon owns the program: detaching the pod takes it away.
    assert!(b.ping(a.ip, 2));
    let id = a.port.container_id.clone();
    assert!(node.api(|c| async move { c.detach(&id, "eth0").await }).expect("detach").existed);
    assert!(!programs(&node).contains("prog/xdp"), "{}", programs(&node));
}

/// Where the ports cannot be handed over (here: another worker count), the old daemon
/// refuses, stops cleanly, and the new one starts as after a restart, with the tables
/// snapshot; as the DaemonSet asks (`--takeover=wait`), the old one lets the lock go
/// and only then waits for its SIGTERM.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn another_worker_count_makes_a_takeover_a_clean_restart() {
    let mut node = Node::start("tkr", "");
    let a = node.pod("a", ip(2), Backend::Afxdp);
    let b = node.pod("b", ip(3), Backend::Tap);
    assert!(a.ping(b.ip, 1));
    node.rewrite_config(|c| c.replace("workers = 2", "workers = 1"));
    node.take_over();
    let log = node.log();
    assert!(log.contains("workers"), "{log}");
    assert!(
        log.contains("takeover refused: the running vswitchd stops; starting as after a restart"),
        "{log}"
    );
    assert!(log.contains("tables snapshot taken back"), "{log}");
    assert!(a.ping(b.ip, 2) && b.ping(a.ip, 1));

    node.rewrite_config(|c| c.replace("workers = 1", "workers = 2"));
    let mut old = node.take_over_leaving_old();
    assert!(a.ping(b.ip, 2), "the new daemon forwards while the old one waits");
    assert!(old.wait_output(Duration::ZERO).is_none(), "the old one still waits");
    old.signal(harness::testbed::Signal::SIGTERM);
    assert!(old.wait_output(Duration::from_secs(10)).expect("it exits at SIGTERM").status.success());
    assert!(a.ping(b.ip, 1));
}

/// Open descriptors, resident memory, and the interfaces of the node and its pods.
fn footprint(node: &Node, pods: &[&Pod]) -> (usize, u64, usize) {
    let fds = std::fs::read_dir(format!("/proc/{}/fd", node.daemon_pid())).unwrap().count();
    let links = node.ns.ok(&["ip", "-o", "link"]).lines().count()
        + pods.iter().map(|p| p.ns.ok(&["ip", "-o", "link"]).lines().count()).sum::<usize>();
    (fds, node.daemon_rss_kib(), links)
}

/// Fifty takeovers in a row under traffic: pings between the pods (one TAP, one
/// AF_XDP) all answered, and the fiftieth daemon holds as many descriptors and
/// interfaces as the first new one (memory within a margin: allocators keep what they
/// grew).
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn fifty_takeovers_leak_nothing() {
    let mut node = Node::start("tk50", "");
    let a = node.pod("a", ip(2), Backend::Tap);
    let b = node.pod("b", ip(3), Backend::Afxdp);
    assert!(a.ping(b.ip, 1));
    node.take_over();
    let first = footprint(&node, &[&a, &b]);
    let mut ping = a.ns.spawn(&["ping", "-c", "1000", "-i", "0.01", "-W", "1", &b.ip.to_string()]);
    for _ in 0..49 {
        node.take_over();
    }
    let last = footprint(&node, &[&a, &b]);
    let out = ping.wait_output(Duration::from_secs(60)).expect("ping finishes");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "after the first takeover {first:?}, after the fiftieth {last:?} (fds, RSS KiB, links)\n{summary}"
    );
    assert!(summary.contains("1000 received"), "every ping answered: {summary}");
    assert_eq!((last.0, last.2), (first.0, first.2), "descriptors and interfaces");
    assert!(last.1 < first.1 + 8 * 1024, "memory {} KiB after 50, {} KiB after 1", last.1, first.1);
}
