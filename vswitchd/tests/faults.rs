//! Faults around the switch: pods that vanish without a detach.

mod harness;

use std::net::Ipv4Addr;
use std::time::Duration;

use harness::Node;
use harness::testbed::{self, wait_until};
use vswitch_api::{Backend, PortKind};

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, host)
}

/// A pod killed while no DEL reached the daemon (its namespace deleted, taking its TAP
/// or veth with it): the port is noticed and removed, its counters stay, and its
/// address can be given to a new pod.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn pods_gone_without_a_detach_are_reaped() {
    let node = Node::start("rea", "");
    let a = node.pod("a", ip(2), Backend::Tap);
    let b = node.pod("b", ip(3), Backend::Afxdp);
    let c = node.pod("c", ip(4), Backend::Tap);
    assert!(a.ping(c.ip, 2) && b.ping(c.ip, 2));
    for gone in [&a, &b] {
        testbed::ok("ip", &["netns", "del", gone.ns.name()]);
    }
    let pods = || {
        node.api(|cl| async move { cl.ports().await })
            .expect("ports")
            .into_iter()
            .filter(|p| p.kind == PortKind::Pod)
            .map(|p| p.container_id)
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(20), || pods() == vec![c.port.container_id.clone()]),
        "the vanished pods' ports removed: {:?}\n{}",
        pods(),
        node.log()
    );
    let stats = node.stats();
    for gone in [&a, &b] {
        let p = stats.ports.iter().find(|p| p.id == gone.port.id).expect("counters kept");
        assert!(p.rx_packets > 0 && p.tx_packets > 0, "{p:?}");
    }
    assert!(node.log().contains("pod gone without a detach"));
    // The address is free again.
    let d = node.pod("d", ip(2), Backend::Tap);
    assert!(d.ping(c.ip, 2), "a new pod with the vanished pod's address");
}

/// SIGKILL under a long-lived TCP connection through a Service: conntrack is in memory
/// and gone with the daemon, but the connection survives — the client's next packet
/// starts a new entry and Maglev, hashing the same 5-tuple over the same endpoints,
/// picks the same endpoint. (A packet the endpoint sends first after the restart is not
/// translated back: see docs/RELIABILITY.md.)
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_connection_through_a_service_survives_a_sigkill() {
    let files = harness::Scratch::new(&testbed::unique_prefix("skf"));
    let services = files.0.join("services.toml");
    let eps = (11..=13).map(|h| format!("{{ ip = \"{}\" }}", ip(h))).collect::<Vec<_>>().join(", ");
    std::fs::write(
        &services,
        format!("[[service]]\nname = \"svc\"\ncluster_ip = \"10.96.0.60\"\nports = [{{ port = 80, target_port = 8080 }}]\nendpoints = [{eps}]\n"),
    )
    .unwrap();
    let mut node = Node::start("skl", &format!("[services]\nfile = {:?}\n", services.display().to_string()));
    let tool = |name: &str| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools").join(name).display().to_string()
    };
    let endpoints: Vec<_> = (11..=13u8).map(|h| node.pod(&format!("e{h}"), ip(h), Backend::Tap)).collect();
    let _servers: Vec<_> = endpoints
        .iter()
        .map(|e| {
            e.ns.spawn(&[
                "/usr/bin/python3",
                &tool("svc_tool.py"),
                "serve",
                &e.ip.to_string(),
                "8080",
                "5353",
            ])
        })
        .collect();
    for e in &endpoints {
        assert!(wait_until(Duration::from_secs(5), || e.ns.ok(&["ss", "-ltn"]).contains(":8080")));
    }
    assert!(wait_until(Duration::from_secs(10), || node.ctl(&["services"]).contains("10.96.0.60")));
    let client = node.pod("cl", ip(20), Backend::Tap);
    let dir = files.0.join("hold");
    std::fs::create_dir_all(&dir).unwrap();
    let mut held = client.ns.spawn(&[
        "/usr/bin/python3",
        &tool("flood_tool.py"),
        "hold",
        "10.96.0.60",
        "80",
        &dir.display().to_string(),
    ]);
    assert!(wait_until(Duration::from_secs(10), || dir.join("held").exists()));
    let served_by = std::fs::read_to_string(dir.join("held")).unwrap();
    node.crash();
    node.restart();
    assert!(wait_until(Duration::from_secs(10), || node.ctl(&["services"]).contains("10.96.0.60")));
    assert_eq!(node.stats().conntrack_entries, 0, "conntrack did not survive the crash");
    std::fs::write(dir.join("go"), "").unwrap();
    held.wait_output(Duration::from_secs(15)).expect("the client finishes");
    let answer = std::fs::read_to_string(dir.join("answer")).unwrap();
    let endpoint = served_by.split_whitespace().next().unwrap().to_string();
    assert_eq!(answer, format!("{endpoint} again"), "the same endpoint answers after the restart");
    assert_eq!(node.stats().conntrack_entries, 1, "the flow's entry rebuilt from its next packet");
}

/// A clean restart (SIGTERM, then start: a DaemonSet's rolling update) under a Service
/// connection whose endpoint speaks first afterwards: the tables snapshot brings the flow
/// back before the pods, so the endpoint's packet is translated back from the VIP and the
/// connection goes on. A crash writes no snapshot: the same exchange then fails (the
/// client's stack resets the endpoint's untranslated packet) — what the snapshot fixes.
/// A Service whose one endpoint can be told to speak first on a held connection
/// (`tests/tools/svc_tool.py`), and a client pod holding connections to it.
struct PushingService {
    node: Node,
    files: harness::Scratch,
    tool: String,
    push_dir: std::path::PathBuf,
    client: harness::Pod,
    _endpoint: harness::Pod,
    _server: testbed::Process,
}

/// A held connection: the client process, its directory, its source port.
struct Held(testbed::Process, std::path::PathBuf, u64);

fn read_json(dir: &std::path::Path, name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
}

impl PushingService {
    fn start(tag: &str, client_backend: Backend) -> PushingService {
        let files = harness::Scratch::new(&testbed::unique_prefix(tag));
        let services = files.0.join("services.toml");
        std::fs::write(
            &services,
            format!("[[service]]\nname = \"push\"\ncluster_ip = \"10.96.0.62\"\nports = [{{ port = 80, target_port = 8080 }}]\nendpoints = [{{ ip = \"{}\" }}]\n", ip(11)),
        )
        .unwrap();
        let node = Node::start(tag, &format!("[services]\nfile = {:?}\n", services.display().to_string()));
        let tool = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/tools/svc_tool.py")
            .display()
            .to_string();
        let endpoint = node.pod("e", ip(11), Backend::Tap);
        let push_dir = files.0.join("push");
        std::fs::create_dir_all(&push_dir).unwrap();
        let server = endpoint.ns.spawn(&[
            "/usr/bin/python3",
            &tool,
            "serve",
            "e11",
            "8080",
            "5353",
            &push_dir.display().to_string(),
        ]);
        assert!(wait_until(Duration::from_secs(5), || endpoint.ns.ok(&["ss", "-ltn"]).contains(":8080")));
        assert!(wait_until(Duration::from_secs(10), || node.ctl(&["services"]).contains("10.96.0.62")));
        let client = node.pod("cl", ip(20), client_backend);
        PushingService { node, files, tool, push_dir, client, _endpoint: endpoint, _server: server }
    }

    /// Opens a connection to the Service and waits for the endpoint's greeting.
    fn connect(&self, name: &str) -> Held {
        let dir = self.files.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let p = self.client.ns.spawn(&[
            "/usr/bin/python3",
            &self.tool,
            "await_push",
            "10.96.0.62",
            "80",
            &dir.display().to_string(),
        ]);
        assert!(wait_until(Duration::from_secs(10), || dir.join("held").exists()), "{name}: no greeting");
        assert_eq!(read_json(&dir, "held")["greeting"], format!("e11 {}", ip(20)));
        let port = read_json(&dir, "held")["port"].as_u64().unwrap();
        Held(p, dir, port)
    }

    /// Has the endpoint speak first on `held`; returns what the client heard then, and
    /// its answer after it spoke again.
    fn push(&self, held: Held) -> (serde_json::Value, Option<serde_json::Value>) {
        let Held(mut p, dir, port) = held;
        std::fs::write(dir.join("listen"), "").unwrap();
        std::fs::write(self.push_dir.join(format!("push-{port}")), "").unwrap();
        p.wait_output(Duration::from_secs(15)).expect("the client finishes");
        let answer =
            std::fs::read_to_string(dir.join("answer")).ok().map(|t| serde_json::from_str(&t).unwrap());
        (read_json(&dir, "pushed"), answer)
    }
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_service_connection_where_the_endpoint_speaks_first_survives_a_clean_restart() {
    let mut s = PushingService::start("esf", Backend::Afxdp);
    let held = s.connect("clean");
    s.node.stop();
    assert!(s.node.log().contains("tables snapshot written"), "{}", s.node.log());
    s.node.restart();
    assert_eq!(
        s.node.stats().conntrack_entries,
        1,
        "the flow is back before anyone speaks\n{}",
        s.node.log()
    );
    assert!(s.node.log().contains("tables snapshot taken back"));
    assert!(s.node.ctl(&["status"]).contains("started:   restart, with the tables snapshot"));
    let (pushed, answer) = s.push(held);
    assert_eq!(pushed, "e11 pushed", "the endpoint's first word after the restart arrives from the VIP");
    assert_eq!(answer.unwrap(), "e11 after", "and the connection goes on");

    let held = s.connect("crash");
    s.node.crash();
    s.node.restart();
    assert_eq!(s.node.stats().conntrack_entries, 0, "no snapshot after a crash");
    assert!(s.node.ctl(&["status"]).contains("started:   restart, without a tables snapshot"));
    let (pushed, _) = s.push(held);
    assert!(
        pushed.as_str().unwrap().starts_with("error"),
        "without the flow the endpoint's word is lost: {pushed}"
    );
}

/// The same through a takeover (the client on AF_XDP, handed over with its socket):
/// the flow is the new daemon's before the endpoint speaks.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_service_connection_where_the_endpoint_speaks_first_survives_a_takeover() {
    let mut s = PushingService::start("esft", Backend::Afxdp);
    let held = s.connect("takeover");
    s.node.take_over();
    assert_eq!(s.node.stats().conntrack_entries, 1, "the flow came with the takeover\n{}", s.node.log());
    let (pushed, answer) = s.push(held);
    assert_eq!(pushed, "e11 pushed", "the endpoint's first word after the takeover arrives from the VIP");
    assert_eq!(answer.unwrap(), "e11 after", "and the connection goes on");
}

/// A state file that does not parse (here: torn by hand) is no crash loop: it is kept
/// aside, and the ports whose devices still exist are found by the tags attach wrote on
/// them and re-attached with their ids and addresses. Another daemon's pods on the same
/// machine are not taken, nor a pod that went while the daemon was down.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_corrupt_state_file_is_recovered_from_the_devices() {
    let mut node = Node::start("cor", "");
    let other = Node::start("cox", "");
    let foreign = other.pod("f", ip(2), Backend::Tap);
    let a = node.pod("a", ip(2), Backend::Tap);
    let b = node.pod("b", ip(3), Backend::Afxdp);
    let c = node.pod("c", ip(4), Backend::Tap);
    assert!(a.ping(b.ip, 2) && b.ping(c.ip, 2));
    node.crash();
    testbed::ok("ip", &["netns", "del", c.ns.name()]);
    let state = node.dir.0.join("state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, &text[..text.len() / 2]).unwrap();
    node.restart();

    let mut ports: Vec<_> = node
        .api(|cl| async move { cl.ports().await })
        .expect("ports")
        .into_iter()
        .filter(|p| p.kind == PortKind::Pod)
        .map(|p| (p.id, p.container_id, p.ips, p.backend))
        .collect();
    ports.sort_by_key(|p| p.0);
    let expected: Vec<_> = [&a, &b]
        .iter()
        .map(|p| (p.port.id, p.port.container_id.clone(), p.port.ips.clone(), p.port.backend))
        .collect();
    assert_eq!(ports, expected, "exactly the surviving pods, as they were\n{}", node.log());
    assert!(node.log().contains("recovering ports from their devices"));
    let kept: Vec<_> = std::fs::read_dir(&node.dir.0)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "the torn file kept for the operator: {kept:?}");
    let rewritten = std::fs::read_to_string(&state).unwrap();
    assert!(
        rewritten.contains(&a.port.container_id) && !rewritten.contains(&c.port.container_id),
        "a whole state file again: {rewritten}"
    );
    assert!(a.ping(b.ip, 3) && b.ping(a.ip, 3), "traffic between the recovered pods");
    assert!(foreign.ping(Ipv4Addr::new(10, 244, 1, 1), 2), "the other daemon's pod untouched");
    // Recovered ports are whole ports: a DEL removes the interface.
    let id = a.port.container_id.clone();
    assert!(node.api(|cl| async move { cl.detach(&id, "eth0").await }).expect("detach").existed);
    assert!(!a.ns.ok(&["ip", "-o", "link"]).contains("eth0"));
}
