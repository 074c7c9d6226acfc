//! Between nodes: each node is a namespace with its own vswitchd (or, for interop, the
//! kernel's `vxlan` device and a bridge, as flannel configures them); the underlay is a
//! bridge in a namespace of its own with a veth to each node. Real ping, TCP, ncat and
//! tshark on the underlay.

mod harness;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::testbed::{Netns, Process, unique_prefix, wait_until};
use harness::{Node, Pod, Scratch, tcp_bytes_arrive, tcp_transfer_is_exact};
use vswitch_api::Backend;

const GATEWAY_MAC: &str = "02:76:73:00:00:01";

fn pod_ip(node: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node, host)
}

fn underlay_ip(node: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 77, node)
}

/// The underlay: a bridge in a namespace of its own.
struct Underlay {
    ns: Netns,
}

impl Underlay {
    fn new(prefix: &str) -> Underlay {
        let ns = Netns::new(&format!("{prefix}w"));
        ns.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        ns.ok(&["ip", "link", "set", "br0", "up"]);
        Underlay { ns }
    }

    /// Plugs node namespace `node` in as `ul0` with address 192.168.77.`index`/24.
    fn plug(&self, node: &Netns, index: u8) {
        let port = format!("n{index}");
        harness::testbed::ok(
            "ip",
            &[
                "link",
                "add",
                "ul0",
                "netns",
                node.name(),
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                self.ns.name(),
            ],
        );
        self.ns.ok(&["ip", "link", "set", &port, "master", "br0", "up"]);
        node.ok(&["ip", "addr", "add", &format!("{}/24", underlay_ip(index)), "dev", "ul0"]);
        node.ok(&["ip", "link", "set", "ul0", "up"]);
    }

    /// Makes the underlay carry what a physical network carries: frames of at most the
    /// MTU with every checksum finished. The bridge's ports toward the nodes segment
    /// and checksum in software what a node hands over whole — as the NIC of a real
    /// node would — so a capture on them shows the packets a wire would. The nodes
    /// themselves are left as they are.
    fn as_a_wire(&self, ports: &[u8]) {
        for index in ports {
            self.ns.ok(&["ethtool", "-K", &format!("n{index}"), "tx", "off"]);
        }
    }
}

/// Reads `pcap` with tshark, checksums verified, one line per VXLAN packet: frame length,
/// VNI, outer DF, outer UDP source port and checksum, the IPv4 header checksum statuses
/// (outer and inner) and the inner TCP checksum status (tshark: 1 good, 0 bad).
fn wire_check_fields(pcap: &Path) -> Vec<String> {
    tshark_fields(
        pcap,
        &["-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-Y", "vxlan && tcp"],
        &[
            "frame.len",
            "vxlan.vni",
            "ip.flags.df",
            "udp.srcport",
            "udp.checksum",
            "ip.checksum.status",
            "tcp.checksum.status",
        ],
    )
}

/// tshark's reading of `pcap` with `options`: `fields`, `|`-separated, a line per packet.
fn tshark_fields(pcap: &Path, options: &[&str], fields: &[&str]) -> Vec<String> {
    let pcap = pcap.display().to_string();
    let mut args = vec!["-r", pcap.as_str()];
    args.extend_from_slice(options);
    args.extend_from_slice(&["-T", "fields", "-E", "separator=|"]);
    for f in fields {
        args.extend_from_slice(&["-e", f]);
    }
    harness::testbed::ok("tshark", &args).lines().map(str::to_string).collect()
}

/// Config of a vswitchd node `index` (pod CIDR 10.244.`index`.0/24) with a nodes file
/// of its own. A node's config: VXLAN through `underlay_io` ("tunnel": the tunnel TAP on `ul0`, or
/// "sockets"), then `extra` (tables of its own).
fn node_config(index: u8, nodes_file: &Path, underlay_io: &str, extra: &str) -> String {
    format!(
        "pod_cidr = \"10.244.{index}.0/24\"\n[services]\nfile = \"\"\n[overlay]\nnodes_file = {:?}\n\
         interface = \"ul0\"\nunderlay_io = \"{underlay_io}\"\n{extra}\n",
        nodes_file.display().to_string()
    )
}

fn node_entry(name: &str, index: u8, vtep_mac: Option<&str>) -> String {
    let mac = vtep_mac.map(|m| format!("vtep_mac = \"{m}\"\n")).unwrap_or_default();
    format!(
        "[[node]]\nname = \"{name}\"\nip = \"{}\"\npod_cidr = \"10.244.{index}.0/24\"\n{mac}",
        underlay_ip(index)
    )
}

/// Writes a node's nodes file and has the daemon read it now.
fn set_nodes(node: &Node, file: &Path, text: &str) {
    std::fs::write(file, text).expect("nodes file");
    let out = node.ctl(&["nodes", "reload"]);
    assert!(!out.contains("NOT APPLIED"), "{out}");
}

/// Two vswitchd nodes on one underlay, each with a pod on a TAP port (with `mtu`, or
/// the daemon's default).
struct TwoNodes {
    a: Node,
    b: Node,
    a1: Pod,
    b1: Pod,
    files: Scratch,
    _underlay: Underlay,
}

impl TwoNodes {
    fn new(tag: &str, mtu: Option<u16>, underlay_io: &str) -> TwoNodes {
        TwoNodes::with(tag, mtu, underlay_io, "")
    }

    /// Node a with `a_extra` in its config.
    fn with(tag: &str, mtu: Option<u16>, underlay_io: &str, a_extra: &str) -> TwoNodes {
        let prefix = unique_prefix(tag);
        let files = Scratch::new(&format!("{prefix}f"));
        let underlay = Underlay::new(&prefix);
        let a = Node::start_prepared(
            &format!("{tag}a"),
            &node_config(1, &files.0.join("a.toml"), underlay_io, a_extra),
            |ns, _| underlay.plug(ns, 1),
        );
        let b = Node::start_prepared(
            &format!("{tag}b"),
            &node_config(2, &files.0.join("b.toml"), underlay_io, ""),
            |ns, _| underlay.plug(ns, 2),
        );
        set_nodes(&a, &files.0.join("a.toml"), &node_entry("b", 2, None));
        set_nodes(&b, &files.0.join("b.toml"), &node_entry("a", 1, None));
        let a1 = a.pod_with_mtu("p", pod_ip(1, 2), Backend::Tap, mtu);
        let b1 = b.pod_with_mtu("p", pod_ip(2, 2), Backend::Tap, mtu);
        TwoNodes { a, b, a1, b1, files, _underlay: underlay }
    }

    fn nodes_file(&self, node: &str) -> PathBuf {
        self.files.0.join(format!("{node}.toml"))
    }
}

/// The routes vswitchd made in `node`'s namespace (its own protocol number).
fn node_routes(node: &Node) -> String {
    node.ns.ok(&["ip", "route", "show", "proto", "118"])
}

/// Whether a process in `ns` pings `dst`.
fn pings(ns: &Netns, dst: Ipv4Addr) -> bool {
    ns.run(&["ping", "-c", "3", "-i", "0.2", "-W", "2", &dst.to_string()]).status.success()
}

/// The TTL of the first echo reply `ping` printed.
fn reply_ttl(out: &str) -> Option<u8> {
    out.split_whitespace().find_map(|w| w.strip_prefix("ttl=")).and_then(|t| t.parse().ok())
}

/// Captures VXLAN on `ns`'s `ul0` while `traffic` runs; returns tshark's decoding, one
/// line per packet: VNI, outer DF, outer UDP source port and checksum, outer and inner
/// IP source and destination.
fn capture_vxlan(ns: &Netns, dir: &Path, traffic: impl FnOnce()) -> Vec<String> {
    let pcap = dir.join(format!("{}-vxlan.pcap", ns.name()));
    capture(ns, "ul0", "udp port 4789", &pcap, traffic);
    tshark_fields(
        &pcap,
        &["-Y", "vxlan"],
        &["vxlan.vni", "ip.flags.df", "udp.srcport", "udp.checksum", "ip.src", "ip.dst"],
    )
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn pods_on_two_nodes_talk_and_nodes_come_and_go() {
    // Through sockets: the fallback where the kernel has no tunnel TAP.
    let t = TwoNodes::new("ovl", None, "sockets");
    let (a1, b1) = (&t.a1, &t.b1);
    let out = a1.ns.ok(&["ping", "-c", "3", "-i", "0.2", "-W", "2", &b1.ip.to_string()]);
    assert_eq!(reply_ttl(&out), Some(62), "one routed hop per node, each way: {out}");
    assert!(b1.ping(a1.ip, 3), "and back");
    // The pod MTU leaves room for VXLAN.
    assert!(a1.ns.ok(&["ip", "link", "show", "eth0"]).contains("mtu 1450"));

    tcp_transfer_is_exact(&t.files, a1, b1, 20_000_000);
    tcp_transfer_is_exact(&t.files, b1, a1, 20_000_000);

    // On the wire: valid VXLAN, VNI 1, DF, source port from the flow hash, checksum 0.
    let lines = capture_vxlan(&t.a.ns, &t.files.0, || assert!(a1.ping(b1.ip, 2)));
    assert!(lines.len() >= 4, "requests and replies captured: {lines:?}");
    for line in &lines {
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f[0], "1", "VNI: {line}");
        assert!(f[1].starts_with("1") || f[1].starts_with("True"), "outer DF: {line}");
        assert!(f[2].parse::<u16>().unwrap() >= 49152, "source port in the dynamic range: {line}");
        assert_eq!(f[3], "0x0000", "outer UDP checksum zero: {line}");
        let (a, b) = (a1.ip.to_string(), b1.ip.to_string());
        let outer_a_to_b = format!("{},{}", underlay_ip(1), a);
        let outer_b_to_a = format!("{},{}", underlay_ip(2), b);
        assert!(f[4] == outer_a_to_b || f[4] == outer_b_to_a, "outer and inner sources: {line}");
    }

    let s = t.a.stats();
    assert!(s.events["overlay_encapsulated"] > 0 && s.events["overlay_decapsulated"] > 0, "{:?}", s.events);
    let nodes = t.a.ctl(&["nodes"]);
    assert!(nodes.contains("10.244.2.0/24") && nodes.contains("192.168.77.2"), "{nodes}");

    // Node a leaves b's table: its VXLAN is refused, counted, without a restart.
    let underlay_port = |n: &Node| {
        n.stats().ports.iter().find(|p| p.name.starts_with("underlay ")).expect("the underlay port").id
    };
    set_nodes(&t.b, &t.nodes_file("b"), "");
    assert!(!a1.ping(b1.ip, 2), "b no longer knows a");
    let refused = t.b.drops(underlay_port(&t.b), "vxlan_unknown_node");
    assert!(refused >= 2, "counted as vxlan_unknown_node: {refused}");
    set_nodes(&t.b, &t.nodes_file("b"), &node_entry("a", 1, None));
    assert!(a1.ping(b1.ip, 3), "back, again without a restart");
}

/// The tunnel TAP: a pod's TCP super-frames cross to the other node whole (encapsulated
/// once, segmented by the kernel only where a device needs it) and arrive whole; what a
/// real wire would carry is valid VXLAN of at most the MTU, checksums finished.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn tcp_super_frames_cross_whole_between_two_nodes() {
    let t = TwoNodes::new("owhole", None, "tunnel");
    let (a1, b1) = (&t.a1, &t.b1);
    assert!(t.a.ctl(&["status"]).contains("tunnel TAP vswitch-vx on ul0"), "{}", t.a.ctl(&["status"]));
    assert!(a1.ping(b1.ip, 3) && b1.ping(a1.ip, 3));
    tcp_transfer_is_exact(&t.files, a1, b1, 100_000_000);
    tcp_transfer_is_exact(&t.files, b1, a1, 100_000_000);
    for node in [&t.a, &t.b] {
        let e = node.stats().events;
        assert!(e["overlay_whole"] > 100, "super-frames sent whole: {e:?}");
        assert!(e["overlay_whole_received"] > 100, "and received whole: {e:?}");
    }

    // On a wire: the bridge's port toward b segments what a sends.
    let lines =
        on_the_wire(&t._underlay, 2, &t.files.0, || tcp_transfer_is_exact(&t.files, a1, b1, 10_000_000));
    assert_valid_vxlan_of_one_flow(&lines);
}

/// The node's own processes reach pods on other nodes (through the host port, from the
/// gateway address: routes of vswitchd's own), those pods reach the node, and the routes
/// go with the daemon and come back with it.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn the_node_itself_reaches_pods_on_other_nodes() {
    let mut t = TwoNodes::new("nrt", None, "tunnel");
    let gateway_a = Ipv4Addr::new(10, 244, 1, 1);
    let routed = |n: &Node| node_routes(n).contains("10.244.2.0/24 via 169.254.118.115 dev vswitch0");
    assert!(wait_until(Duration::from_secs(5), || routed(&t.a)), "{}", node_routes(&t.a));
    assert!(t.a.ctl(&["nodes"]).contains("10.244.2.0/24 via vswitch0"), "{}", t.a.ctl(&["nodes"]));
    assert!(pings(&t.a.ns, t.b1.ip), "node a → pod on node b");
    assert!(t.b1.ping(gateway_a, 3), "pod on node b → node a");
    tcp_bytes_arrive(&t.files, &t.a.ns, &t.b1.ns, t.b1.ip, 10_000_000);
    tcp_bytes_arrive(&t.files, &t.b1.ns, &t.a.ns, gateway_a, 10_000_000);
    // A hostNetwork pod: mount and PID namespaces of its own, the node's network.
    let host_network = t.a.ns.run(&[
        "unshare",
        "--mount",
        "--pid",
        "--fork",
        "ping",
        "-c",
        "2",
        "-i",
        "0.2",
        "-W",
        "2",
        &t.b1.ip.to_string(),
    ]);
    assert!(host_network.status.success(), "{}", String::from_utf8_lossy(&host_network.stdout));
    // Stopped: the routes go (nothing would carry them); started: they are back.
    t.a.stop();
    assert_eq!(node_routes(&t.a).trim(), "", "no route of vswitchd's left");
    t.a.restart();
    assert!(wait_until(Duration::from_secs(10), || routed(&t.a)), "{}", node_routes(&t.a));
    assert!(pings(&t.a.ns, t.b1.ip), "again after the restart");
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn path_mtu_discovery_across_the_overlay() {
    // Pods with an MTU VXLAN cannot carry whole: the switch must tell them.
    let t = TwoNodes::new("pmtu", Some(1500), "tunnel");
    let (a1, b1) = (&t.a1, &t.b1);
    let out = a1.ns.run(&["ping", "-M", "do", "-s", "1472", "-c", "1", "-W", "2", &b1.ip.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("mtu = 1450"), "fragmentation-needed with the next-hop MTU: {text}");
    assert!(t.a.stats().events["frag_needed_sent"] >= 1);
    // A TCP connection whose MSS says 1460 learns the path MTU and completes.
    tcp_transfer_is_exact(&t.files, a1, b1, 10_000_000);
    tcp_transfer_is_exact(&t.files, b1, a1, 10_000_000);
    let route = a1.ns.ok(&["ip", "route", "get", &b1.ip.to_string()]);
    assert!(route.contains("mtu 1450"), "the pod learned the path MTU: {route}");
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_service_with_its_endpoint_on_the_other_node() {
    // Node a serves NodePorts on its underlay address too.
    let t = TwoNodes::with("osvc", None, "tunnel", "[uplink]\ninterface = \"ul0\"");
    let services = t.files.0.join("services.toml");
    std::fs::write(
        &services,
        format!(
            "[[service]]\nname = \"far\"\ncluster_ip = \"10.96.0.30\"\ntype = \"NodePort\"\n\
             ports = [{{ port = 80, target_port = 8080, node_port = 30080 }}]\n\
             endpoints = [{{ ip = \"{}\", node = \"b\" }}]\n\
             [[service]]\nname = \"near\"\ncluster_ip = \"10.96.0.31\"\ntype = \"NodePort\"\n\
             ports = [{{ port = 80, target_port = 8080, node_port = 30081 }}]\n\
             endpoints = [{{ ip = \"{}\" }}]\n",
            t.b1.ip, t.a1.ip
        ),
    )
    .unwrap();
    // Node a's Services come from this file: restart a on it.
    let mut a = t.a;
    a.stop();
    let config = a.dir.0.join("vswitchd.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("file = \"\"", &format!("file = {:?}", services.display().to_string()));
    std::fs::write(&config, text).unwrap();
    a.restart();
    let _server: Process = t.b1.ns.spawn(&["ncat", "-lk", "8080", "-c", "echo served by b1"]);
    assert!(wait_until(Duration::from_secs(5), || t.b1.ns.ok(&["ss", "-ltn"]).contains(":8080")));
    assert!(
        wait_until(Duration::from_secs(10), || a.ctl(&["services"]).contains("10.96.0.30")),
        "services file read"
    );
    for _ in 0..3 {
        let got = t.a1.ns.ok(&["ncat", "--recv-only", "-w", "3", "10.96.0.30", "80"]);
        assert_eq!(got.trim(), "served by b1");
    }
    let ct = a.ctl(&["conntrack"]);
    assert!(ct.contains(&t.b1.ip.to_string()), "{ct}");
    // From node a itself (a /32 route per ClusterIP through the host port, from the
    // gateway address): to the endpoint on node b, and to one on node a.
    let _near: Process = t.a1.ns.spawn(&["ncat", "-lk", "8080", "-c", "echo served by a1"]);
    assert!(wait_until(Duration::from_secs(5), || t.a1.ns.ok(&["ss", "-ltn"]).contains(":8080")));
    assert!(
        wait_until(Duration::from_secs(5), || node_routes(&a).contains("10.96.0.31 via 169.254.118.115")),
        "{}",
        node_routes(&a)
    );
    for (vip, who) in [("10.96.0.30", "served by b1"), ("10.96.0.31", "served by a1")] {
        for _ in 0..3 {
            let got = a.ns.ok(&["ncat", "--recv-only", "-w", "3", vip, "80"]);
            assert_eq!(got.trim(), who, "node a → {vip}");
        }
    }
    // From node a itself to the NodePorts at its own address (rules ahead of the
    // kernel's local table send them through the host port): the remote endpoint and
    // the local one, each reply from the node's address and NodePort.
    let node_a = underlay_ip(1).to_string();
    assert!(
        wait_until(Duration::from_secs(5), || a.ns.ok(&["ip", "rule"]).contains("dport 30081")),
        "{}",
        a.ns.ok(&["ip", "rule"])
    );
    for (port, who) in [("30080", "served by b1"), ("30081", "served by a1")] {
        for _ in 0..3 {
            let got = a.ns.ok(&["ncat", "--recv-only", "-w", "3", &node_a, port]);
            assert_eq!(got.trim(), who, "node a → its own NodePort {port}");
        }
    }
    // From outside (a client on the underlay) to node a's NodePort: the endpoint on b
    // answers, its reply coming back over the overlay to a's gateway address.
    let underlay = &t._underlay.ns;
    underlay.ok(&["ip", "addr", "add", "192.168.77.100/24", "dev", "br0"]);
    // A real NIC fills in the checksums a veth leaves to "the hardware" (AF_XDP takes
    // the frame before the receiving kernel would trust it): make this client's kernel.
    underlay.ok(&["ethtool", "-K", "br0", "tx", "off"]);
    for _ in 0..3 {
        let got = underlay.ok(&["ncat", "--recv-only", "-w", "3", &underlay_ip(1).to_string(), "30080"]);
        assert_eq!(got.trim(), "served by b1");
    }
    let ct = a.ctl(&["conntrack"]);
    assert!(ct.contains("192.168.77.100") && ct.contains("10.244.1.1"), "SNAT to the gateway address: {ct}");
    // From node b itself to node a's NodePort: out of b's underlay interface as from
    // any client (its checksums finished as a real NIC would, see above).
    t.b.ns.ok(&["ethtool", "-K", "ul0", "tx", "off"]);
    for _ in 0..3 {
        let got = t.b.ns.ok(&["ncat", "--recv-only", "-w", "3", &node_a, "30080"]);
        assert_eq!(got.trim(), "served by b1", "node b → node a's NodePort");
    }
    // Stopped, node a leaves its rules as it found them: the local table first again.
    a.stop();
    let rules = a.ns.ok(&["ip", "rule"]);
    assert!(rules.starts_with("0:\tfrom all lookup local") && !rules.contains("30080"), "{rules}");
}

/// Node a takes its underlay interface over with AF_XDP: VXLAN from b arrives through
/// the steering program, and goes to b with full outer headers once the kernel has
/// resolved b's MAC (the first packets, through the kernel socket, make it do so).
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn the_af_xdp_underlay_carries_vxlan_both_ways() {
    let t = TwoNodes::with("oxdp", None, "sockets", "[uplink]\ninterface = \"ul0\"");
    let (a1, b1) = (&t.a1, &t.b1);
    assert!(a1.ping(b1.ip, 2), "through the socket at first");
    assert!(
        wait_until(Duration::from_secs(15), || t.a.ctl(&["nodes"]).contains("af_xdp via")),
        "b's next hop resolved: {}",
        t.a.ctl(&["nodes"])
    );
    let uplink = |n: &Node| {
        n.stats().ports.into_iter().find(|p| p.name.starts_with("uplink ")).expect("the uplink port")
    };
    let before = uplink(&t.a);
    assert!(a1.ping(b1.ip, 3) && b1.ping(a1.ip, 3));
    tcp_transfer_is_exact(&t.files, a1, b1, 10_000_000);
    tcp_transfer_is_exact(&t.files, b1, a1, 10_000_000);
    let after = uplink(&t.a);
    assert!(after.tx_packets > before.tx_packets + 1000, "sent through AF_XDP: {before:?} → {after:?}");
    assert!(after.rx_packets > before.rx_packets + 1000, "received through AF_XDP: {before:?} → {after:?}");
}

/// Node k is what flannel's vxlan backend makes: a kernel `vxlan` device with the
/// node's VTEP address, routes to other pod CIDRs through it, static neighbour and FDB
/// entries for the other nodes' VTEPs, and a bridge for its pods.
struct KernelNode {
    ns: Netns,
    pod: Netns,
}

const K_VTEP_MAC: &str = "0a:58:0a:f4:03:00";

impl KernelNode {
    fn new(prefix: &str, underlay: &Underlay) -> KernelNode {
        let ns = Netns::new(&format!("{prefix}k"));
        underlay.plug(&ns, 3);
        let pod = Netns::new(&format!("{prefix}kp"));
        for cmd in [
            "sysctl -qw net.ipv4.ip_forward=1",
            &format!(
                "ip link add vxlan0 address {K_VTEP_MAC} type vxlan id 1 dstport 4789 local {} dev ul0 nolearning",
                underlay_ip(3)
            ),
            "ip addr add 10.244.3.0/32 dev vxlan0",
            "ip link set vxlan0 up",
            "ip link add cni0 type bridge",
            "ip addr add 10.244.3.1/24 dev cni0",
            "ip link set cni0 up",
            &format!("ip link add vethk1 type veth peer name eth0 netns {}", pod.name()),
            "ip link set vethk1 master cni0 up",
            "ip route add 10.244.1.0/24 via 10.244.1.0 dev vxlan0 onlink",
            &format!("ip neigh add 10.244.1.0 lladdr {GATEWAY_MAC} dev vxlan0 nud permanent"),
            &format!("bridge fdb append {GATEWAY_MAC} dev vxlan0 dst {}", underlay_ip(1)),
        ] {
            let out = ns.sh(cmd);
            assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        }
        pod.ok(&["ip", "addr", "add", "10.244.3.2/24", "dev", "eth0"]);
        pod.ok(&["ip", "link", "set", "eth0", "up"]);
        pod.ok(&["ip", "route", "add", "default", "via", "10.244.3.1"]);
        KernelNode { ns, pod }
    }
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn interoperates_with_the_kernels_vxlan_device() {
    let prefix = unique_prefix("kvx");
    let files = Scratch::new(&format!("{prefix}f"));
    let underlay = Underlay::new(&prefix);
    let nodes = files.0.join("a.toml");
    std::fs::write(&nodes, node_entry("k", 3, Some(K_VTEP_MAC))).unwrap();
    let a = Node::start_prepared("kvxa", &node_config(1, &nodes, "tunnel", ""), |ns, _| underlay.plug(ns, 1));
    let k = KernelNode::new(&prefix, &underlay);
    let a1 = a.pod("p", pod_ip(1, 2), Backend::Tap);
    assert!(
        wait_until(Duration::from_secs(10), || a.ctl(&["nodes"]).contains("10.244.3.0/24")),
        "nodes file read"
    );
    let k1 = Pod { ns: k.pod, ip: pod_ip(3, 2), port: a1.port.clone() };

    assert!(a1.ping(k1.ip, 3), "vswitchd → kernel vxlan");
    assert!(k1.ping(a1.ip, 3), "kernel vxlan → vswitchd");
    assert!(pings(&a.ns, k1.ip), "node a itself → a pod of the kernel node");
    assert!(k1.ping(Ipv4Addr::new(10, 244, 1, 1), 3), "a pod of the kernel node → node a's gateway address");
    // The kernel node is as flannel leaves it: its veth underlay hands partial inner
    // checksums and whole UDP-tunnel super-packets over; the tunnel TAP reads their
    // offload state and passes it on.
    tcp_transfer_is_exact(&files, &a1, &k1, 100_000_000);
    tcp_transfer_is_exact(&files, &k1, &a1, 100_000_000);
    udp_datagram_arrives(&files, &a1, &k1);
    udp_datagram_arrives(&files, &k1, &a1);
    for pod in [&a1, &k1] {
        let errors = pod.ns.ok(&["nstat", "-az", "TcpInCsumErrors", "UdpInCsumErrors"]);
        assert!(errors.lines().skip(1).all(|l| l.split_whitespace().nth(1) == Some("0")), "{errors}");
    }
    assert!(a.stats().events["overlay_whole_received"] > 0, "the kernel's super-packets arrived whole");
    // tshark on the kernel node's side decodes both directions as VXLAN.
    let lines = capture_vxlan(&k.ns, &files.0, || assert!(a1.ping(k1.ip, 2)));
    let from_a = format!("{},{}", underlay_ip(1), a1.ip);
    let from_k = format!("{},{}", underlay_ip(3), k1.ip);
    assert!(lines.iter().any(|l| l.split('|').nth(4) == Some(from_a.as_str())), "{lines:?}");
    assert!(lines.iter().any(|l| l.split('|').nth(4) == Some(from_k.as_str())), "{lines:?}");
    assert!(lines.iter().all(|l| l.starts_with("1|")), "VNI 1 both ways: {lines:?}");
    // What vswitchd sends the kernel node, on a wire.
    let lines = on_the_wire(&underlay, 3, &files.0, || tcp_transfer_is_exact(&files, &a1, &k1, 10_000_000));
    assert_valid_vxlan_of_one_flow(&lines);
    drop(k.ns);
}

/// What node 1 sends toward node `to` while `traffic` runs, as a wire carries it (the
/// underlay's port toward `to` made one: [`Underlay::as_a_wire`]), read by
/// [`wire_check_fields`].
fn on_the_wire(underlay: &Underlay, to: u8, dir: &Path, traffic: impl FnOnce()) -> Vec<String> {
    underlay.as_a_wire(&[to]);
    let pcap = dir.join(format!("wire-to-{to}.pcap"));
    let filter = format!("udp port 4789 and src host {}", underlay_ip(1));
    capture(&underlay.ns, &format!("n{to}"), &filter, &pcap, traffic);
    wire_check_fields(&pcap)
}

/// Captures what matches `filter` on `ns`'s `interface` into `pcap` while `traffic` runs.
fn capture(ns: &Netns, interface: &str, filter: &str, pcap: &Path, traffic: impl FnOnce()) {
    let mut cap =
        ns.spawn(&["tshark", "-q", "-i", interface, "-f", filter, "-w", &pcap.display().to_string()]);
    assert!(wait_until(Duration::from_secs(15), || pcap.exists()), "tshark started capturing");
    std::thread::sleep(Duration::from_millis(500));
    traffic();
    std::thread::sleep(Duration::from_millis(500));
    cap.signal(harness::testbed::Signal::SIGINT);
    cap.wait_output(Duration::from_secs(10)).expect("tshark stops");
}

/// Every packet of one TCP flow's 10 MB is valid VXLAN as vswitchd sends it: at most the
/// underlay MTU, VNI 1, DF, outer UDP checksum zero, outer and inner IPv4 and inner TCP
/// checksums good, one outer source port for the flow, in the dynamic range.
fn assert_valid_vxlan_of_one_flow(lines: &[String]) {
    assert!(lines.len() > 5000, "10 MB in segments: {} packets", lines.len());
    let mut ports = std::collections::BTreeSet::new();
    for line in lines {
        let f: Vec<&str> = line.split('|').collect();
        assert!(f[0].parse::<usize>().unwrap() <= 1514, "at most the underlay MTU: {line}");
        assert_eq!(f[1], "1", "VNI: {line}");
        assert!(f[2].starts_with('1') || f[2].starts_with("True"), "outer DF: {line}");
        ports.insert(f[3].parse::<u16>().unwrap());
        assert_eq!(f[4], "0x0000", "outer UDP checksum zero: {line}");
        assert_eq!(f[5], "1,1", "outer and inner IPv4 header checksums good: {line}");
        assert_eq!(f[6], "1", "inner TCP checksum good: {line}");
    }
    assert_eq!(ports.len(), 1, "one flow, one outer source port: {ports:?}");
    assert!(*ports.first().unwrap() >= 49152, "in the dynamic range: {ports:?}");
}

/// A UDP datagram from `from` reaches `to` intact (and its stack accepts its checksum).
fn udp_datagram_arrives(dir: &Scratch, from: &Pod, to: &Pod) {
    let got = dir.0.join(format!("udp-{}-{}", from.ip, to.ip));
    let _server = to.ns.spawn(&["sh", "-c", &format!("ncat -u -l 5002 --recv-only > {}", got.display())]);
    assert!(
        wait_until(Duration::from_secs(5), || to.ns.ok(&["ss", "-lun"]).contains(":5002")),
        "ncat listens"
    );
    let message = format!("a datagram from {}", from.ip);
    from.ns.ok(&["sh", "-c", &format!("echo '{message}' | ncat -u --send-only {} 5002", to.ip)]);
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&got)
            .is_ok_and(|t| t.trim() == message)),
        "{} → {}: {:?}",
        from.ip,
        to.ip,
        std::fs::read_to_string(&got)
    );
}
