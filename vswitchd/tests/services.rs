//! Services through vswitchd, end to end: endpoint pods run a server that says who it
//! is; clients in other pods reach it by the Service's cluster IP. The Services come
//! from the daemon's services file, as on a node without a cluster.

mod harness;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::testbed::{Netns, Process, unique_prefix, wait_until};
use harness::{Node, Pod, Scratch};
use vswitch_api::Backend;

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, host)
}

const WEB_VIP: &str = "10.96.0.10";
const EMPTY_VIP: &str = "10.96.0.11";
const HAIRPIN_IP: &str = "169.254.42.1";

fn tool() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/svc_tool.py")
}

/// Runs the test tool in `pod`; returns its stdout parsed as JSON.
fn tool_json(pod: &Pod, args: &[&str]) -> serde_json::Value {
    tool_json_in(&pod.ns, args)
}

fn tool_json_in(ns: &Netns, args: &[&str]) -> serde_json::Value {
    let tool = tool();
    let mut argv = vec!["/usr/bin/python3", tool.to_str().expect("utf-8 path")];
    argv.extend_from_slice(args);
    let out = ns.ok(&argv);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}"))
}

/// Starts the who-am-I server (TCP 8080, UDP 5353) in `pod` under `name`.
fn serve(pod: &Pod, name: &str) -> Process {
    let tool = tool();
    let p = pod.ns.spawn(&["/usr/bin/python3", tool.to_str().unwrap(), "serve", name, "8080", "5353"]);
    assert!(
        wait_until(Duration::from_secs(10), || pod.ns.ok(&["ss", "-ltn"]).contains(":8080")),
        "server {name} listens"
    );
    p
}

fn endpoints(ips: &[Ipv4Addr]) -> String {
    ips.iter().map(|i| format!("{{ ip = \"{i}\" }}")).collect::<Vec<_>>().join(", ")
}

/// A services file: `web` (TCP 80 and UDP 53) over `web`, `empty` without endpoints,
/// `sticky` with ClientIP affinity over `web` too, and `extra` appended.
fn services_toml(web: &[Ipv4Addr], extra: &str) -> String {
    format!(
        r#"
[[service]]
name = "web"
cluster_ip = "{WEB_VIP}"
ports = [
  {{ name = "http", port = 80, target_port = 8080 }},
  {{ name = "dns", protocol = "UDP", port = 53, target_port = 5353 }},
]
endpoints = [{eps}]

[[service]]
name = "empty"
cluster_ip = "{EMPTY_VIP}"
ports = [{{ port = 80, target_port = 8080 }}]

[[service]]
name = "sticky"
cluster_ip = "10.96.0.12"
session_affinity = "ClientIP"
ports = [{{ port = 80, target_port = 8080 }}]
endpoints = [{eps}]
{extra}
"#,
        eps = endpoints(web)
    )
}

/// A node whose services file is `file` (written by the test); `prepare` runs in its
/// namespace before the daemon starts.
fn node_with_services(
    tag: &str,
    file: &Path,
    extra_config: &str,
    prepare: impl FnOnce(&Netns, &str),
) -> Node {
    let config = format!("{extra_config}\n[services]\nfile = {:?}\n", file.display().to_string());
    Node::start_prepared(tag, &config, prepare)
}

fn counts(names: &serde_json::Value) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for n in names.as_array().expect("a list") {
        *c.entry(n.as_str().expect("a name").to_string()).or_default() += 1;
    }
    c
}

/// Writes the services file and has the daemon read it now.
fn apply(node: &Node, file: &Path, text: &str) {
    std::fs::write(file, text).expect("services file");
    let out = node.ctl(&["services", "reload"]);
    assert!(!out.contains("NOT APPLIED"), "{out}");
}

struct Setup {
    node: Node,
    file: PathBuf,
    files: Scratch,
    pods: Vec<Pod>,
    client: Pod,
    _servers: Vec<Process>,
}

/// A node with endpoint pods a, b, c (10.244.1.11-13) serving, a client pod
/// (10.244.1.20), and the Services of [`services_toml`] over a, b and c.
fn setup(tag: &str, extra_config: &str, backend: Backend) -> Setup {
    setup_prepared(tag, extra_config, backend, |_, _| {})
}

fn setup_prepared(
    tag: &str,
    extra_config: &str,
    backend: Backend,
    prepare: impl FnOnce(&Netns, &str),
) -> Setup {
    let files = Scratch::new(&unique_prefix(&format!("{tag}f")));
    let file = files.0.join("services.toml");
    let node = node_with_services(tag, &file, extra_config, prepare);
    let pods: Vec<Pod> =
        ["a", "b", "c"].iter().enumerate().map(|(i, n)| node.pod(n, ip(11 + i as u8), backend)).collect();
    let client = node.pod("cl", ip(20), backend);
    let servers = pods.iter().zip(["a", "b", "c"]).map(|(p, n)| serve(p, n)).collect();
    apply(&node, &file, &services_toml(&[ip(11), ip(12), ip(13)], ""));
    Setup { node, file, files, pods, client, _servers: servers }
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn cluster_ip_spreads_connections_answers_udp_and_refuses_without_endpoints() {
    let s = setup("sva", "", Backend::Tap);
    let listed = s.node.ctl(&["services"]);
    assert!(listed.contains("default/web") && listed.contains("3/3"), "{listed}");

    let names = tool_json(&s.client, &["connect", WEB_VIP, "80", "300"]);
    let c = counts(&names);
    assert_eq!(c.values().sum::<usize>(), 300, "{c:?}");
    for n in ["a", "b", "c"] {
        let got = c.get(n).copied().unwrap_or(0);
        assert!(got >= 60, "endpoint {n} got {got} of 300 connections (at least 20% expected): {c:?}");
    }

    let udp = tool_json(&s.client, &["udp", WEB_VIP, "53"]);
    let reply = udp["reply"].as_str().unwrap_or_else(|| panic!("no UDP reply: {udp}"));
    assert!(["a ", "b ", "c "].iter().any(|p| reply.starts_with(p)), "{udp}");
    assert!(reply.ends_with(" 10.244.1.20"), "the endpoint sees the client's own address: {udp}");
    assert_eq!(udp["from"], format!("{WEB_VIP}:53"), "the reply comes from the Service: {udp}");

    let refused = tool_json(&s.client, &["refused", EMPTY_VIP, "80"]);
    assert_eq!(refused["error"], "ECONNREFUSED", "{refused}");

    // An endpoint's own ICMP port unreachable comes back translated: a UDP client of
    // the Service sees "connection refused", as it would talking to the pod directly.
    let dead = format!(
        "[[service]]\nname = \"dead\"\ncluster_ip = \"10.96.0.14\"\n\
         ports = [{{ protocol = \"UDP\", port = 53, target_port = 5999 }}]\nendpoints = [{{ ip = \"{}\" }}]\n",
        ip(11)
    );
    apply(&s.node, &s.file, &services_toml(&[ip(11), ip(12), ip(13)], &dead));
    let udp = tool_json(&s.client, &["udp_refused", "10.96.0.14", "53"]);
    assert_eq!(udp["error"], "ECONNREFUSED", "{udp}");
    assert!(s.node.stats().events["icmp_translated"] >= 1);
    let stats = s.node.stats();
    assert!(stats.events["service_rejects"] >= 1, "{:?}", stats.events);
    assert!(stats.events["service_flows"] >= 301, "{:?}", stats.events);
    assert!(stats.conntrack_entries >= 1, "the UDP flow at least is still tracked");
    let ct = s.node.ctl(&["conntrack"]);
    assert!(ct.contains("default/web:dns") && ct.contains("10.244.1.20"), "{ct}");
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn endpoint_changes_leave_established_connections_alone() {
    let s = setup("svb", "", Backend::Tap);
    let hold_dir = s.files.0.join("hold");
    std::fs::create_dir_all(&hold_dir).unwrap();
    let tool = tool();
    let _holder = s.client.ns.spawn(&[
        "/usr/bin/python3",
        tool.to_str().unwrap(),
        "hold",
        WEB_VIP,
        "80",
        "30",
        hold_dir.to_str().unwrap(),
    ]);
    let held_file = hold_dir.join("held");
    assert!(wait_until(Duration::from_secs(20), || held_file.exists()), "30 connections open");
    let held: Vec<String> = serde_json::from_str(&std::fs::read_to_string(&held_file).unwrap()).unwrap();
    let held: Vec<&str> = held.iter().map(|g| g.split(' ').next().unwrap()).collect();
    assert!(held.contains(&"c"), "some connection went to c: {held:?}");

    // c leaves the Service, through the watched file (no reload call): new
    // connections avoid it at once...
    let before = s.node.api(|c| async move { c.services().await }).unwrap().generation;
    std::fs::write(&s.file, services_toml(&[ip(11), ip(12)], "")).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            s.node.api(|c| async move { c.services().await }).unwrap().generation > before
        }),
        "the daemon noticed the file changed"
    );
    let c = counts(&tool_json(&s.client, &["connect", WEB_VIP, "80", "60"]));
    assert_eq!(c.get("c"), None, "no new connection to a removed endpoint: {c:?}");
    // ...while every established connection, to a and b and even to c, goes on.
    std::fs::write(hold_dir.join("go"), "").unwrap();
    let answers_file = hold_dir.join("answers");
    assert!(wait_until(Duration::from_secs(20), || answers_file.exists()), "answers");
    let answers: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(&answers_file).unwrap()).unwrap();
    for (i, (server, answer)) in held.iter().zip(&answers).enumerate() {
        assert_eq!(answer, &format!("{server} ping{i}"), "connection {i} to {server} kept working");
    }
}

/// `vswitchctl --json trace` with `args`, parsed.
fn trace(node: &Node, args: &[&str]) -> vswitch_api::TraceView {
    let mut argv = vec!["--json", "trace"];
    argv.extend_from_slice(args);
    let out = node.ctl(&argv);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The trace runs the real stages: the endpoint it names for a connection's first
/// packet is the one the connection then reaches, and it changes nothing on the way.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_trace_names_the_endpoint_a_real_connection_then_reaches() {
    let s = setup("svt", "", Backend::Tap);
    let client = s.client.port.container_id.clone();
    let endpoint_of = |name: &str| match name {
        "a" => ip(11),
        "b" => ip(12),
        "c" => ip(13),
        other => panic!("greeting from {other}"),
    };
    let mut reached = BTreeMap::new();
    for sport in 41000..41008u16 {
        let sport_s = sport.to_string();
        let t = trace(&s.node, &[&client, "--dst", WEB_VIP, "--dport", "80", "--sport", &sport_s]);
        assert_eq!(t.verdict, "sent", "{t:#?}");
        let nat = t.steps.iter().find(|st| st.stage == "service_nat").unwrap_or_else(|| panic!("{t:#?}"));
        let named = nat
            .notes
            .iter()
            .find_map(|n| n.split("endpoint ").nth(1))
            .and_then(|e| e.split(':').next())
            .unwrap_or_else(|| panic!("no endpoint named: {t:#?}"))
            .parse::<Ipv4Addr>()
            .expect("an address");
        assert_eq!(t.sent.len(), 1, "{t:#?}");
        assert_eq!(
            t.sent[0].port,
            s.pods[usize::from(named.octets()[3] - 11)].port.id,
            "out of the endpoint's port"
        );
        let greeting = tool_json(&s.client, &["greet", WEB_VIP, "80", &sport_s]);
        let name =
            greeting["greeting"].as_str().expect("a greeting").split_whitespace().next().unwrap().to_string();
        assert_eq!(
            endpoint_of(&name),
            named,
            "source port {sport}: trace said {named}, the connection reached {name}"
        );
        *reached.entry(name).or_insert(0) += 1;
    }
    eprintln!("endpoints reached: {reached:?}");
    assert_eq!(s.node.stats().events["service_flows"], 8, "the traces made no flow of their own");

    // A spoofed source: the port-security drop, named.
    let t = trace(&s.node, &[&client, "--dst", WEB_VIP, "--src", "10.244.1.99"]);
    assert_eq!(t.verdict, "dropped");
    assert_eq!(t.drop_reason.as_deref(), Some("spoofed_source_ip"), "{t:#?}");
    assert_eq!(t.steps.last().map(|st| st.stage.as_str()), Some("port_security"));
    // A frame that does not parse: the parser's reason, not an API error.
    let t = trace(&s.node, &[&client, "--hex", "ffffffffffff0011"]);
    assert_eq!(t.drop_reason.as_deref(), Some("truncated_ethernet"), "{t:#?}");
    let spoofed_before = s.node.stats().drops["spoofed_source_ip"];
    assert_eq!(spoofed_before, 0, "traces count nothing");
    // The table form names the stages.
    let text = s.node.ctl(&["trace", &client, "--dst", WEB_VIP]);
    eprintln!("{text}");
    assert!(text.contains("service_nat") && text.contains("new flow of Service default/web:http"), "{text}");
    let text = s.node.ctl(&["trace", &client, "--dst", WEB_VIP, "--src", "10.244.1.99"]);
    eprintln!("{text}");
    assert!(text.contains("DROPPED: spoofed_source_ip"), "{text}");
}

/// `vswitchctl trace --live` follows a real connection's first two packets: the
/// client's SYN to the endpoint that then answers, and that endpoint's SYN-ACK back
/// to the client with the VIP as its source.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_live_trace_follows_a_real_connection_to_the_endpoint_that_answers() {
    let s = setup("svl", "", Backend::Tap);
    let socket = s.node.socket.display().to_string();
    let mut cmd = std::process::Command::new(harness::vswitchctl());
    cmd.args(["--socket", &socket, "--json", "trace", "--live", "2", "--filter", "tcp and port 42100"]);
    cmd.args(["--seconds", "20"]);
    let mut live =
        Process::spawn(cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()))
            .expect("vswitchctl starts");
    let open = || s.node.api(|c| async move { c.status().await }).expect("status").live_traces_open;
    assert!(wait_until(Duration::from_secs(5), || open() == 1), "the live trace is open");
    let greeting = tool_json(&s.client, &["greet", WEB_VIP, "80", "42100"]);
    let name =
        greeting["greeting"].as_str().expect("a greeting").split_whitespace().next().unwrap().to_string();
    let (endpoint, endpoint_pod) = match name.as_str() {
        "a" => (ip(11), &s.pods[0]),
        "b" => (ip(12), &s.pods[1]),
        _ => (ip(13), &s.pods[2]),
    };
    let out = live.wait_output(Duration::from_secs(25)).expect("the live trace ends at its count");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let traces: Vec<vswitch_api::TraceView> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    eprintln!("{traces:#?}");
    assert_eq!(traces.len(), 2, "the count");
    let nat_notes = |t: &vswitch_api::TraceView| {
        t.steps.iter().find(|st| st.stage == "service_nat").map(|st| st.notes.join("; ")).unwrap_or_default()
    };

    let syn = &traces[0];
    assert_eq!(syn.in_port, s.client.port.id);
    assert!(syn.parsed.contains(&format!("{WEB_VIP}:80 TCP [S]")), "{syn:#?}");
    assert!(syn.received_unix_ms.is_some());
    assert!(
        nat_notes(syn).contains(&format!("new flow of Service default/web:http: endpoint {endpoint}:8080")),
        "the endpoint that answered ({name}): {syn:#?}"
    );
    assert_eq!((syn.verdict.as_str(), syn.sent.len()), ("sent", 1), "{syn:#?}");
    assert_eq!(syn.sent[0].port, endpoint_pod.port.id, "queued for the endpoint's port");
    assert!(syn.sent[0].summary.contains(&format!("{endpoint}:8080 TCP [S]")), "{syn:#?}");

    let syn_ack = &traces[1];
    assert_eq!(syn_ack.in_port, endpoint_pod.port.id);
    assert!(nat_notes(syn_ack).contains("established flow of Service default/web:http (endpoint to client"));
    assert_eq!(syn_ack.sent.len(), 1, "{syn_ack:#?}");
    assert_eq!(syn_ack.sent[0].port, s.client.port.id);
    assert!(
        syn_ack.sent[0].summary.contains(&format!("{WEB_VIP}:80 → 10.244.1.20:42100 TCP [S.]")),
        "{syn_ack:#?}"
    );
    assert!(wait_until(Duration::from_secs(5), || open() == 0), "closed at its count");

    // Refused before anything is marked.
    for (args, says) in [
        (vec!["trace", "--live", "0"], "0 is not in 1..=1000"),
        (vec!["trace", "--live", "1", "--filter", "tcp or udp"], "joined by `and`"),
        (vec!["trace", "--live", "1", "no-such-pod"], "no port"),
    ] {
        let out = s.node.ctl_output(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(open(), 0);
}

/// `vswitchctl flows` sees a Service connection start and end: the Service, the
/// endpoint that answered, packets both ways, closed by FIN.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn the_flow_log_shows_a_service_connection_from_open_to_close() {
    let s = setup("svf", "", Backend::Tap);
    let socket = s.node.socket.display().to_string();
    let mut cmd = std::process::Command::new(harness::vswitchctl());
    cmd.args(["--socket", &socket, "--json", "flows", "--seconds", "6", "tcp", "and", "port", "80"]);
    let mut log =
        Process::spawn(cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()))
            .expect("vswitchctl starts");
    let following = || s.node.api(|c| async move { c.status().await }).expect("status").flow_logs_open == 1;
    assert!(wait_until(Duration::from_secs(5), following), "the flow log is open");
    let greeting = tool_json(&s.client, &["greet", WEB_VIP, "80", "42000"]);
    let name =
        greeting["greeting"].as_str().expect("a greeting").split_whitespace().next().unwrap().to_string();
    let endpoint = match name.as_str() {
        "a" => ip(11),
        "b" => ip(12),
        _ => ip(13),
    };
    let out = log.wait_output(Duration::from_secs(15)).expect("the flow log ends at its seconds");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<vswitch_api::FlowEvent> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|e: &vswitch_api::FlowEvent| e.client == "10.244.1.20:42000")
        .collect();
    eprintln!("{events:#?}");
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["start", "end"], "{events:#?}");
    for e in &events {
        assert_eq!(e.server, format!("{WEB_VIP}:80"));
        assert_eq!(e.service.as_deref(), Some("default/web:http"));
        assert_eq!(
            e.endpoint.as_deref(),
            Some(format!("{endpoint}:8080").as_str()),
            "the endpoint that answered"
        );
        assert_eq!(e.verdict, "forwarded");
        assert_eq!(
            e.client_port,
            s.node.stats().ports.iter().find(|p| p.id == s.client.port.id).unwrap().name
        );
    }
    let end = &events[1];
    assert_eq!(end.end_reason.as_deref(), Some("closed"), "{end:#?}");
    assert!(
        end.packets_out >= 4 && end.packets_back >= 3,
        "SYN, ACK, FIN, ACK out; SYN-ACK, data, FIN back: {end:#?}"
    );
    assert!(end.bytes_back > end.packets_back * 54, "the greeting came back: {end:#?}");
    assert!(wait_until(Duration::from_secs(5), || !following()), "the log closed at its end");
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn session_affinity_pins_a_client_and_hairpin_comes_back() {
    let s = setup("svc", "", Backend::Tap);
    let c = counts(&tool_json(&s.client, &["connect", "10.96.0.12", "80", "50"]));
    assert_eq!(c.len(), 1, "ClientIP affinity: every connection to the same endpoint: {c:?}");
    assert_eq!(s.node.stats().affinity_entries, 1);

    // Pod a reaches its own Service; when it is picked it sees the hairpin address as
    // the client, and the reply comes back through the switch.
    let a = &s.pods[0];
    let c = counts(&tool_json(a, &["connect", WEB_VIP, "80", "60"]));
    assert!(c.get("a").copied().unwrap_or(0) > 0, "a was picked for some of its own flows: {c:?}");
    let solo = format!(
        "[[service]]\nname = \"solo\"\ncluster_ip = \"10.96.0.13\"\n\
         ports = [{{ port = 80, target_port = 8080 }}]\nendpoints = [{{ ip = \"{}\" }}]\n",
        ip(11)
    );
    apply(&s.node, &s.file, &services_toml(&[ip(11), ip(12), ip(13)], &solo));
    let greeting = tool_json(a, &["greet", "10.96.0.13", "80"]);
    assert_eq!(greeting["greeting"], format!("a {HAIRPIN_IP}"), "hairpin: source NAT to the hairpin address");
}

/// What tshark read in `pcap`: (frames whose L4 checksum it verified good, frames
/// with a bad IPv4, TCP, UDP or ICMP checksum).
fn checksum_report(pcap: &Path) -> (usize, Vec<String>) {
    let out = harness::testbed::ok(
        "tshark",
        &[
            "-r",
            pcap.to_str().unwrap(),
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "tcp.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "frame.number",
            "-e",
            "ip.checksum.status",
            "-e",
            "tcp.checksum.status",
            "-e",
            "udp.checksum.status",
            "-e",
            "icmp.checksum.status",
            "-e",
            "_ws.col.Info",
        ],
    );
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    // Wireshark's checksum status: 0 bad, 1 good, 2 not checked.
    let statuses = |l: &str| -> Vec<String> {
        l.split('|').skip(1).take(4).flat_map(|f| f.split(',')).map(str::to_string).collect()
    };
    let bad = lines.iter().filter(|l| statuses(l).iter().any(|v| v == "0")).map(|l| l.to_string()).collect();
    // Verified good: the L4 checksum (the one NAT rewrites) was checked, not skipped.
    let good = lines
        .iter()
        .filter(|l| l.split('|').skip(2).take(3).flat_map(|f| f.split(',')).any(|v| v == "1"))
        .count();
    (good, bad)
}

/// Starts tshark on `eth0` of `pod`, writing to `pcap`; returns once it captures.
fn capture(pod: &Pod, pcap: &Path) -> Process {
    capture_in(&pod.ns, "eth0", pcap)
}

fn capture_in(ns: &Netns, ifname: &str, pcap: &Path) -> Process {
    let p = ns.spawn(&["tshark", "-i", ifname, "-w", pcap.to_str().unwrap(), "-q"]);
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::metadata(pcap).is_ok_and(|m| m.len() > 0)),
        "tshark started"
    );
    p
}

fn stop_captures(captures: Vec<Process>) {
    for mut p in captures {
        p.signal(harness::testbed::Signal::SIGINT);
        p.wait_output(Duration::from_secs(10));
    }
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn translated_packets_carry_correct_checksums_on_the_wire() {
    // Without offloads, pods put complete checksums on every packet, so what tshark
    // sees on the far side is exactly what the switch's incremental updates made.
    let s = setup("svd", "offloads = false", Backend::Tap);
    let dir = &s.files.0;
    let at_client = dir.join("client.pcap");
    let at_endpoint = dir.join("endpoint.pcap");
    let c1 = capture(&s.client, &at_client);
    let c2 = capture(&s.pods[0], &at_endpoint);
    tool_json(&s.client, &["connect", WEB_VIP, "80", "30"]);
    for _ in 0..5 {
        tool_json(&s.client, &["udp", WEB_VIP, "53"]);
    }
    tool_json(&s.client, &["refused", EMPTY_VIP, "80"]);
    std::thread::sleep(Duration::from_millis(500));
    stop_captures(vec![c1, c2]);
    let (frames, bad) = checksum_report(&at_client);
    assert!(frames >= 100, "the client's capture has the flows, verified ({frames} frames)");
    assert!(bad.is_empty(), "bad checksums at the client:\n{}", bad.join("\n"));
    let (frames, bad) = checksum_report(&at_endpoint);
    assert!(frames >= 10, "the endpoint's capture has its share, verified ({frames} frames)");
    assert!(bad.is_empty(), "bad checksums at the endpoint:\n{}", bad.join("\n"));
    // The client saw the Service address, never the endpoints'.
    let from_vip = harness::testbed::ok(
        "tshark",
        &["-r", at_client.to_str().unwrap(), "-Y", &format!("ip.src == {WEB_VIP} && tcp.srcport == 80")],
    );
    assert!(from_vip.lines().count() >= 30, "{from_vip}");
    let icmp = harness::testbed::ok(
        "tshark",
        &["-r", at_client.to_str().unwrap(), "-Y", &format!("icmp.type == 3 && ip.src == {EMPTY_VIP}")],
    );
    assert!(icmp.lines().count() >= 1, "the refusal is an ICMP port unreachable from the VIP");
}

const NODE_IP: &str = "192.168.77.1";
const OUTSIDE_IP: &str = "192.168.77.2";

/// NodePorts from a namespace playing a machine outside the cluster, through the
/// node's uplink (a veth whose far end is that namespace): `Cluster` policy translates
/// the source to the node's address, `Local` keeps the client's and uses only this
/// node's endpoints; the node's own traffic on the same interface stays the kernel's.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn node_ports_from_outside_through_the_uplink() {
    let mut outside: Option<Netns> = None;
    let mut s = setup_prepared("sve", "[uplink]\ninterface = \"upl0\"", Backend::Tap, |node, prefix| {
        let x = Netns::new(&format!("{prefix}x"));
        node.ok(&["ip", "link", "add", "upl0", "type", "veth", "peer", "name", "ext0"]);
        node.ok(&["ip", "link", "set", "ext0", "netns", x.name()]);
        node.ok(&["ip", "addr", "add", &format!("{NODE_IP}/24"), "dev", "upl0"]);
        node.ok(&["ip", "link", "set", "upl0", "up"]);
        x.ok(&["ip", "addr", "add", &format!("{OUTSIDE_IP}/24"), "dev", "ext0"]);
        x.ok(&["ip", "link", "set", "ext0", "up"]);
        // A veth stands in for a wire, on which frames arrive with complete checksums
        // (XDP sees the bytes as they are; a veth peer would leave them partial).
        let handle = vswitch_sys::netns::Netns::open(&x.path()).expect("outside namespace");
        handle.run(|| vswitch_sys::ethtool::disable_offloads("ext0")).unwrap().expect("offloads off");
        outside = Some(x);
    });
    let x = outside.expect("the outside namespace");
    let status = s.node.ctl(&["status"]);
    assert!(
        status.contains(&format!("node IP:   {NODE_IP}")) && status.contains("uplink:    upl0"),
        "{status}"
    );

    let node_ports = format!(
        r#"
[[service]]
name = "np"
cluster_ip = "10.96.0.20"
type = "NodePort"
ports = [
  {{ name = "http", port = 80, target_port = 8080, node_port = 30080 }},
  {{ name = "dns", protocol = "UDP", port = 53, target_port = 5353, node_port = 30053 }},
]
endpoints = [{eps}]

[[service]]
name = "np-local"
cluster_ip = "10.96.0.21"
type = "NodePort"
external_traffic_policy = "Local"
ports = [{{ port = 80, target_port = 8080, node_port = 30081 }}]
endpoints = [{{ ip = "{a}" }}, {{ ip = "10.244.2.9", node = "elsewhere" }}]
"#,
        eps = endpoints(&[ip(11), ip(12), ip(13)]),
        a = ip(11)
    );
    apply(&s.node, &s.file, &services_toml(&[ip(11), ip(12), ip(13)], &node_ports));
    let pcap = s.files.0.join("outside.pcap");
    let capture = capture_in(&x, "ext0", &pcap);

    // Cluster policy: spread over every endpoint, which sees the node's address.
    let names = counts(&tool_json_in(&x, &["connect", NODE_IP, "30080", "60"]));
    assert_eq!(names.values().sum::<usize>(), 60, "{names:?}");
    assert!(names.len() == 3, "all three endpoints take NodePort flows: {names:?}");
    let g = tool_json_in(&x, &["greet", NODE_IP, "30080"]);
    assert!(g["greeting"].as_str().unwrap().ends_with(&format!(" {NODE_IP}")), "source NAT to the node: {g}");
    let udp = tool_json_in(&x, &["udp", NODE_IP, "30053"]);
    assert_eq!(udp["from"], format!("{NODE_IP}:30053"), "{udp}");
    assert!(udp["reply"].as_str().unwrap().ends_with(&format!(" {NODE_IP}")), "{udp}");

    // Local policy: only this node's endpoint, and it sees the real client.
    for _ in 0..10 {
        let g = tool_json_in(&x, &["greet", NODE_IP, "30081"]);
        assert_eq!(g["greeting"], format!("a {OUTSIDE_IP}"), "{g}");
    }

    // The node's own traffic on the uplink is the kernel's: ping, and a TCP service of
    // the node itself.
    let _own = s.node.ns.spawn(&["ncat", "-lk", "22222"]);
    assert!(wait_until(Duration::from_secs(5), || s.node.ns.ok(&["ss", "-ltn"]).contains(":22222")));
    assert!(x.run(&["ping", "-c", "2", "-i", "0.2", "-W", "2", NODE_IP]).status.success());
    assert!(x.run(&["ncat", "-z", "-w", "3", NODE_IP, "22222"]).status.success(), "the node's own port");

    stop_captures(vec![capture]);
    let (verified, bad) = checksum_report(&pcap);
    assert!(verified >= 100, "the outside capture has the NodePort flows ({verified} verified)");
    assert!(bad.is_empty(), "bad checksums on the wire outside:\n{}", bad.join("\n"));

    // A takeover hands the uplink's AF_XDP sockets and XDP program to the new daemon:
    // NodePort connections from outside established before it go on (a gap in the
    // uplink would have the node's stack reset them), and new ones work.
    let hold_dir = s.files.0.join("hold-outside");
    std::fs::create_dir_all(&hold_dir).unwrap();
    let tool = tool();
    let _holder = x.spawn(&[
        "/usr/bin/python3",
        tool.to_str().unwrap(),
        "hold",
        NODE_IP,
        "30080",
        "10",
        hold_dir.to_str().unwrap(),
    ]);
    assert!(wait_until(Duration::from_secs(20), || hold_dir.join("held").exists()), "10 connections open");
    // New connections one after another across the takeover: a SYN arriving during
    // the pause waits in the socket's ring rather than reaching the node's stack
    // (which would refuse it: nothing of the node listens there).
    let mut during =
        x.spawn(&["/usr/bin/python3", tool.to_str().unwrap(), "connect", NODE_IP, "30080", "3000"]);
    std::thread::sleep(Duration::from_millis(200));
    s.node.take_over();
    let out = during.wait_output(Duration::from_secs(60)).expect("the connections finish");
    assert!(
        out.status.success(),
        "a connection failed across the takeover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let during = counts(&serde_json::from_slice(&out.stdout).unwrap());
    assert_eq!(during.values().sum::<usize>(), 3000, "{during:?}");
    std::fs::write(hold_dir.join("go"), "").unwrap();
    let answers_file = hold_dir.join("answers");
    assert!(wait_until(Duration::from_secs(20), || answers_file.exists()), "the held connections answered");
    let answers: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(&answers_file).unwrap()).unwrap();
    for (i, a) in answers.iter().enumerate() {
        assert!(a.ends_with(&format!(" ping{i}")), "held connection {i} after the takeover: {answers:?}");
    }
    let names = counts(&tool_json_in(&x, &["connect", NODE_IP, "30080", "30"]));
    assert_eq!(names.values().sum::<usize>(), 30, "NodePorts after a takeover: {names:?}");
    assert!(s.node.ctl(&["status"]).contains("uplink:    upl0"), "the uplink is the new daemon's");
    assert!(s.node.log().contains("handed_over=true"), "handed over, not opened again:\n{}", s.node.log());
    assert!(
        !s.node.log().contains("local routing rule put back"),
        "the node's NodePort rules stayed through the takeover:\n{}",
        s.node.log()
    );

    // A NodePort that goes away is no longer steered: the node's kernel refuses it.
    apply(&s.node, &s.file, &services_toml(&[ip(11), ip(12), ip(13)], ""));
    let refused = tool_json_in(&x, &["refused", NODE_IP, "30080"]);
    assert_eq!(refused["error"], "ECONNREFUSED", "{refused}");
    let ports = s.node.ctl(&["ports"]);
    assert!(ports.contains("uplink") && ports.contains("upl0"), "{ports}");
}
