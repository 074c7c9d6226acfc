//! The daemon's API and tools under bad input: every refusal is a clear JSON error with
//! the right code, and no refused request leaves a device, a port or a state entry.

mod harness;

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use harness::testbed::{Netns, ok};
use harness::{Node, vswitchd};
use vswitch_api::{AttachRequest, Backend, ClientError, codes};

fn request(node: &Node, netns: &Netns, ip: &str) -> AttachRequest {
    AttachRequest {
        container_id: format!("{}-{}", node.prefix, netns.name()),
        netns: netns.path(),
        ifname: "eth0".into(),
        mac: None,
        ips: vec![ip.parse().unwrap()],
        mtu: None,
        backend: Some(Backend::Tap),
        pod: None,
        network: None,
    }
}

fn refused(result: Result<vswitch_api::PortInfo, ClientError>) -> (u16, String, String) {
    match result {
        Err(ClientError::Api { status, code, message }) => (status, code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Links in the node's namespace: only loopback, the host port and AF_XDP host ends.
fn node_links(node: &Node) -> Vec<String> {
    node.ns
        .ok(&["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_string()))
        .collect()
}

/// A raw HTTP exchange over the socket with curl: (status, body).
fn curl(node: &Node, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"]).arg(&node.socket).args([
        "-X",
        method,
        &format!("http://vswitchd{path}"),
    ]);
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]).stdin(std::process::Stdio::piped());
    }
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().expect("curl");
    if let Some(b) = body {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, status) = text.rsplit_once('\n').expect("status line");
    (status.trim().parse().expect("status"), serde_json::from_str(json).unwrap_or(serde_json::Value::Null))
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn bad_requests_get_clear_errors_and_leave_nothing_behind() {
    let node = Node::start("e2b", "");
    let pod = Netns::new(&format!("{}x", node.prefix));
    let other = Netns::new(&format!("{}y", node.prefix));
    let links_before = node_links(&node);

    // Unknown namespace, and a path that is not one.
    let mut req = request(&node, &pod, "10.244.1.2/24");
    req.netns = format!("/var/run/netns/{}nope", node.prefix).into();
    let (status, code, msg) = refused(node.api(|c| async move { c.attach(&req).await }));
    assert_eq!((status, code.as_str()), (404, codes::NETNS_NOT_FOUND), "{msg}");
    assert!(msg.contains("nope"), "{msg}");
    for not_netns in ["/etc/hostname", "/proc/self/ns/mnt"] {
        let mut req = request(&node, &pod, "10.244.1.2/24");
        req.netns = not_netns.into();
        let (status, code, msg) = refused(node.api(|c| async move { c.attach(&req).await }));
        assert_eq!((status, code.as_str()), (404, codes::NETNS_NOT_FOUND), "{not_netns}: {msg}");
    }
    // The daemon's own namespace, the node's, by any path: a pod is never the node.
    for own in [node.ns.path(), "/proc/self/ns/net".into()] {
        let mut req = request(&node, &pod, "10.244.1.2/24");
        req.netns = own.clone();
        let (status, code, msg) = refused(node.api(|c| async move { c.attach(&req).await }));
        assert_eq!((status, code.as_str()), (400, codes::INVALID_REQUEST), "{}: {msg}", own.display());
        assert!(msg.contains("own network namespace"), "{msg}");
    }
    assert_eq!(node_links(&node), links_before, "no device made in the node");

    // Out of the node's pod CIDR, invalid names.
    let (status, code, msg) = refused(node.api(|c| {
        let r = request(&node, &pod, "10.9.9.9/24");
        async move { c.attach(&r).await }
    }));
    assert_eq!((status, code.as_str()), (400, codes::INVALID_REQUEST));
    assert!(msg.contains("10.244.1.0/24"), "{msg}");
    let mut req = request(&node, &pod, "10.244.1.2/24");
    req.ifname = "a/b".into();
    let (status, _, _) = refused(node.api(|c| async move { c.attach(&req).await }));
    assert_eq!(status, 400);

    // A good attach, then the same IP for someone else.
    let first = request(&node, &pod, "10.244.1.2/24");
    let port = node
        .api(|c| {
            let r = first.clone();
            async move { c.attach(&r).await }
        })
        .unwrap();
    let again = node
        .api(|c| {
            let r = first.clone();
            async move { c.attach(&r).await }
        })
        .unwrap();
    assert_eq!(again, port, "a retried attach returns the same port");
    let mut changed = first.clone();
    changed.mtu = Some(1400);
    let (status, code, _) = refused(node.api(|c| async move { c.attach(&changed).await }));
    assert_eq!((status, code.as_str()), (409, codes::CONFLICT), "same attachment, other parameters");
    let dup = request(&node, &other, "10.244.1.2/24");
    let (status, code, msg) = refused(node.api(|c| async move { c.attach(&dup).await }));
    assert_eq!((status, code.as_str()), (409, codes::CONFLICT), "{msg}");
    assert!(msg.contains("10.244.1.2"), "{msg}");
    assert!(
        other.run(&["ip", "link", "show", "eth0"]).status.code() != Some(0),
        "no interface left in the pod"
    );

    // An interface of that name already in the pod.
    other.ok(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"]);
    let req = request(&node, &other, "10.244.1.3/24");
    let (status, code, _) = refused(node.api(|c| async move { c.attach(&req).await }));
    assert_eq!((status, code.as_str()), (409, codes::INTERFACE_EXISTS));
    assert!(
        other.ok(&["ip", "-d", "link", "show", "eth0"]).contains("veth"),
        "the pod's own interface untouched"
    );

    // Malformed, incomplete, oversized bodies; an unknown route.
    let (status, body) = curl(&node, "POST", "/v1/ports", Some("{\"container_id\": "));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], codes::INVALID_JSON, "{body}");
    let (status, body) = curl(&node, "POST", "/v1/ports", Some("{\"container_id\": \"c\"}"));
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("missing field"), "{body}");
    let big = format!("{{\"container_id\": \"{}\"}}", "a".repeat(200_000));
    let (status, body) = curl(&node, "POST", "/v1/ports", Some(&big));
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], codes::PAYLOAD_TOO_LARGE, "{body}");
    let (status, body) = curl(&node, "GET", "/v2/nothing", None);
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some(codes::NOT_FOUND)));
    let (status, body) = curl(&node, "PUT", "/v1/ports", Some("{}"));
    assert_eq!((status, body["error"]["code"].as_str()), (405, Some(codes::METHOD_NOT_ALLOWED)));

    // Nothing half-made: one pod port, its state entry, no stray device in the node.
    let ports = node.api(|c| async move { c.ports().await }).unwrap();
    assert_eq!(ports.iter().map(|p| p.id).collect::<Vec<_>>(), vec![0, port.id]);
    assert_eq!(node_links(&node), links_before, "no leftover links in the node");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(node.dir.0.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["ports"].as_array().map(Vec::len), Some(1), "{state}");

    // Detach is idempotent and does what it says.
    let cid = first.container_id.clone();
    assert!(
        node.api(|c| {
            let cid = cid.clone();
            async move { c.detach(&cid, "eth0").await }
        })
        .unwrap()
        .existed
    );
    assert!(
        !node
            .api(|c| {
                let cid = cid.clone();
                async move { c.detach(&cid, "eth0").await }
            })
            .unwrap()
            .existed
    );
    assert!(
        node.api(|c| {
            let cid = cid.clone();
            async move { c.port(&cid, "eth0").await }
        })
        .unwrap()
        .is_none()
    );
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn socket_metrics_and_vswitchctl() {
    let node = Node::start("e2c", "");
    let mode = std::fs::metadata(&node.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the API socket is root's alone");
    let a = node.pod("a", Ipv4Addr::new(10, 244, 1, 2), Backend::Tap);
    let b = node.pod("b", Ipv4Addr::new(10, 244, 1, 3), Backend::Afxdp);
    assert!(a.ping(b.ip, 2));

    let metrics = node.ns.ok(&["curl", "-s", "http://127.0.0.1:9479/metrics"]);
    let line = format!("vswitch_port_rx_packets_total{{port=\"{}\",", a.port.id);
    assert!(metrics.contains(&line), "{metrics}");
    assert!(metrics.contains("vswitch_drops_total{reason=\"spoofed_source_ip\"} 0"), "{metrics}");
    assert!(metrics.contains("vswitch_pod_ports 2"));
    assert!(metrics.contains("vswitch_observers_open{kind=\"capture\"} 0\n"), "{metrics}");

    let ports = node.ctl(&["ports"]);
    assert!(ports.lines().next().unwrap().starts_with("ID"), "{ports}");
    assert!(
        ports.contains("afxdp") && ports.contains("vswitch0") && ports.contains("10.244.1.3/24"),
        "{ports}"
    );
    let stats = node.ctl(&["stats"]);
    assert!(stats.contains("RX_PACKETS") && stats.contains("arp_replies"), "{stats}");
    let json: serde_json::Value = serde_json::from_str(&node.ctl(&["stats", "--json"])).unwrap();
    assert!(json["drops"].as_object().unwrap().len() > 30, "every drop reason listed");
    let status: serde_json::Value = serde_json::from_str(&node.ctl(&["--json", "status"])).unwrap();
    assert_eq!(status["pod_cidr"], "10.244.1.0/24");
    assert!(node.ctl(&["fdb"]).starts_with("SEGMENT"));
}

#[test]
fn a_bad_config_file_names_the_line_and_field() {
    let dir = harness::Scratch::new(&harness::testbed::unique_prefix("e2k"));
    let path = dir.0.join("bad.toml");
    std::fs::write(&path, "workers = 2\n\n[fdb]\naging_seconds = \"soon\"\n").unwrap();
    let out = Command::new(vswitchd()).arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:4: fdb.aging_seconds", path.display())), "{err}");
    let out = ok(vswitchd().to_str().unwrap(), &["--check-config"]);
    assert!(out.contains("ok"));
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_second_daemon_on_the_same_socket_refuses_and_disturbs_nothing() {
    let node = Node::start("e2s", "");
    let a = node.pod("a", Ipv4Addr::new(10, 244, 1, 2), Backend::Tap);
    let b = node.pod("b", Ipv4Addr::new(10, 244, 1, 3), Backend::Tap);
    let second = node.ns.run(&[
        vswitchd().to_str().unwrap(),
        "--config",
        &node.dir.0.join("vswitchd.toml").display().to_string(),
    ]);
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another vswitchd"), "{err}");
    assert!(a.ping(b.ip, 2), "the first daemon's pods still talk");
    assert_eq!(node.api(|c| async move { c.ports().await }).unwrap().len(), 3);
    assert!(node.socket.exists(), "the first daemon's socket is left alone");
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn an_unavailable_metrics_address_does_not_stop_the_switch() {
    // An address no interface of the node has.
    let node = Node::start("e2m", "metrics_address = \"10.255.255.1:9479\"");
    let a = node.pod("a", Ipv4Addr::new(10, 244, 1, 2), Backend::Tap);
    let b = node.pod("b", Ipv4Addr::new(10, 244, 1, 3), Backend::Tap);
    assert!(a.ping(b.ip, 2));
    assert!(node.log().contains("metrics endpoint not available"), "{}", node.log());
}

/// Whether the daemon closed `conn` (EOF or reset), waiting up to `wait` for it.
fn closed_by_daemon(conn: &mut std::os::unix::net::UnixStream, wait: std::time::Duration) -> bool {
    use std::io::Read;
    conn.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an answer (e.g. to a request that timed out): read on
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// A local client hoarding connections — 500, half of them half-sent requests — cannot
/// starve the API: beyond its share they are closed at once, unread; the ones it keeps
/// are closed once they go 10 s without a whole request; another client is answered
/// throughout; the daemon's descriptors stay bounded.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_client_hoarding_connections_starves_no_one() {
    use std::io::Write;
    let node = Node::start("e2k", "");
    let pid = node.daemon_pid();
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let before = fds();
    let mut held: Vec<std::os::unix::net::UnixStream> = (0..500)
        .map(|i| {
            let mut c = std::os::unix::net::UnixStream::connect(&node.socket).unwrap();
            if i % 2 == 0 {
                let _ = c.write_all(b"GET /v1/status HTTP/1.1\r\nHost: vswitchd\r\n");
            }
            c
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let during = fds();
    assert!(during <= before + 16 + 4, "descriptors bounded: {before} before, {during} with 500 offered");
    let started = std::time::Instant::now();
    assert!(node.ctl(&["status"]).contains("10.244.1.0/24"), "another client is answered");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "at once: {:?}", started.elapsed());
    let short = std::time::Duration::from_millis(20);
    let closed = held.iter_mut().map(|c| closed_by_daemon(c, short)).filter(|c| *c).count();
    assert!(closed >= 500 - 16, "over the share closed at once: {closed} of 500");
    let kept: Vec<usize> = (0..held.len()).filter(|i| !closed_by_daemon(&mut held[*i], short)).collect();
    assert!(!kept.is_empty() && kept.len() <= 16, "its share kept open meanwhile: {}", kept.len());
    for i in kept {
        assert!(
            closed_by_daemon(&mut held[i], std::time::Duration::from_secs(15)),
            "connection {i} closed after the header timeout"
        );
    }
    assert!(fds() <= before + 2, "every hoarded connection gone: {} (before {before})", fds());
}
