//! The CNI plugin invoked exactly as a runtime does — `CNI_*` environment, configuration
//! on stdin, result or error object on stdout, exit status — against a running vswitchd
//! and Debian's reference `host-local` (and `static`) IPAM plugins.

mod harness;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use harness::testbed::Netns;
use harness::{Node, vswitch_cni};
use serde_json::{Value, json};

/// Where Debian's containernetworking-plugins live.
const CNI_PATH: &str = "/usr/lib/cni";

/// The plugin as a runtime on `node` would run it (owns copies of what it needs, so the
/// node can be stopped and restarted under it).
struct Cni {
    socket: PathBuf,
    ipam_dir: PathBuf,
    log: PathBuf,
}

/// What one invocation printed, and whether it exited 0.
#[derive(Debug)]
struct Answer {
    ok: bool,
    out: Value,
}

impl Answer {
    fn code(&self) -> u64 {
        assert!(!self.ok, "expected a failure, got {}", self.out);
        self.out["code"].as_u64().unwrap_or_else(|| panic!("no error code in {}", self.out))
    }
}

impl Cni {
    fn new(node: &Node) -> Cni {
        Cni {
            socket: node.socket.clone(),
            ipam_dir: node.dir.0.join("ipam"),
            log: node.dir.0.join("vswitchd.log"),
        }
    }

    /// The network configuration a runtime would pass, at `version`.
    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "k8s-pod-network",
            "type": "vswitch-cni",
            "socket": self.socket,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "usePodCidr"}]], "dataDir": self.ipam_dir},
        })
    }

    fn call(
        &self,
        command: &str,
        container: &str,
        netns: &str,
        conf: &Value,
        extra_env: &[(&str, &str)],
    ) -> Answer {
        let mut cmd = Command::new(vswitch_cni());
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH)
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}"));
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("plugin runs");
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("stdout is JSON")
        };
        Answer { ok: out.status.success(), out: value }
    }

    fn add(&self, container: &str, ns: &Netns) -> Value {
        let a = self.call("ADD", container, &ns.path().display().to_string(), &self.conf("1.1.0"), &[]);
        assert!(
            a.ok,
            "ADD {container}: {}\n{}",
            a.out,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        a.out
    }

    fn del(&self, container: &str, ns: &Netns) {
        let a = self.call("DEL", container, &ns.path().display().to_string(), &self.conf("1.1.0"), &[]);
        assert!(a.ok && a.out.is_null(), "DEL {container}: {}", a.out);
    }

    /// Addresses host-local holds: files named after the IP in its data directory.
    fn allocations(&self) -> BTreeSet<String> {
        let dir = self.ipam_dir.join("k8s-pod-network");
        std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn pod_ports(&self) -> Vec<vswitch_api::PortInfo> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let ports = rt.block_on(vswitch_api::Client::new(&self.socket).ports()).unwrap();
        ports.into_iter().filter(|p| p.kind == vswitch_api::PortKind::Pod).collect()
    }
}

fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

fn pod(node: &Node, name: &str) -> Netns {
    Netns::new(&format!("{}{name}", node.prefix))
}

fn path(ns: &Netns) -> String {
    ns.path().display().to_string()
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn every_verb_as_a_runtime_calls_it() {
    let node = Node::start("e2n", "");
    let cni = Cni::new(&node);
    let (a, b) = (pod(&node, "a"), pod(&node, "b"));

    let version = cni.call("VERSION", "", "", &json!({"cniVersion": "1.0.0"}), &[]);
    assert!(version.ok);
    assert_eq!(version.out["cniVersion"], "1.0.0");
    assert!(version.out["supportedVersions"].as_array().unwrap().iter().any(|v| v == "1.1.0"));
    assert!(cni.call("STATUS", "", "", &cni.conf("1.1.0"), &[]).ok, "ready");

    let ra = cni.add("ca", &a);
    let rb = cni.add("cb", &b);
    assert_eq!(ra["cniVersion"], "1.1.0");
    let iface = &ra["interfaces"][0];
    assert_eq!((iface["name"].as_str(), iface["sandbox"].as_str()), (Some("eth0"), Some(path(&a).as_str())));
    assert_eq!(iface["mtu"], 1450, "the daemon's: room for VXLAN");
    let ip = &ra["ips"][0];
    assert_eq!((ip["interface"].as_u64(), ip["gateway"].as_str()), (Some(0), Some("10.244.1.1")));
    assert_eq!(ra["routes"][0]["dst"], "0.0.0.0/0");
    let addr_a: String = ip["address"].as_str().unwrap().split('/').next().unwrap().into();
    let addr_b: String = rb["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().into();
    assert_ne!(addr_a, addr_b);
    // ADD again for the same attachment: a conflict in our words, and nothing changes.
    let again = cni.call("ADD", "ca", &path(&a), &cni.conf("1.1.0"), &[]);
    assert_eq!(again.code(), 100, "{}", again.out);
    assert!(again.out["msg"].as_str().unwrap().contains("already has eth0"), "{}", again.out);
    assert_eq!(cni.allocations(), BTreeSet::from([addr_a.clone(), addr_b.clone()]));
    assert_eq!(cni.pod_ports().len(), 2);
    // kubelet's keys without IgnoreUnknown: ours to read, not host-local's to refuse.
    let c = pod(&node, "c");
    let kubelet_args =
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=cc;K8S_POD_INFRA_CONTAINER_ID=cc;K8S_POD_UID=u-1";
    let rc = cni.call("ADD", "cc", &path(&c), &cni.conf("1.1.0"), &[("CNI_ARGS", kubelet_args)]);
    assert!(rc.ok, "{}", rc.out);
    assert!(cni.call("DEL", "cc", &path(&c), &cni.conf("1.1.0"), &[("CNI_ARGS", kubelet_args)]).ok);
    // The pod side is configured: it reaches the other pod and the gateway.
    assert!(a.run(&["ping", "-c", "2", "-i", "0.2", "-W", "2", &addr_b]).status.success());
    assert!(a.run(&["ping", "-c", "1", "-W", "2", "10.244.1.1"]).status.success());
    let port = &cni.pod_ports()[0];
    assert_eq!(port.pod.as_ref().map(|p| p.name.as_str()), Some("ca"), "kubelet's CNI_ARGS recorded");
    assert_eq!(port.network.as_deref(), Some("k8s-pod-network"));

    // CHECK passes on what ADD made, fails once the pod's route is gone.
    let check = cni.call("CHECK", "ca", &path(&a), &with_prev(&cni.conf("1.1.0"), &ra), &[]);
    assert!(check.ok && check.out.is_null(), "{}", check.out);
    a.ok(&["ip", "route", "del", "default"]);
    let check = cni.call("CHECK", "ca", &path(&a), &with_prev(&cni.conf("1.1.0"), &ra), &[]);
    assert_eq!(check.code(), 104, "{}", check.out);
    assert!(check.out["msg"].as_str().unwrap().contains("0.0.0.0/0"));

    // DEL, twice, and once more as CRI's second DEL does: with an empty netns.
    cni.del("ca", &a);
    cni.del("ca", &a);
    assert!(cni.call("DEL", "ca", "", &cni.conf("1.1.0"), &[]).ok);
    assert!(a.run(&["ip", "link", "show", "eth0"]).status.code() != Some(0), "interface removed");
    assert_eq!(cni.allocations(), BTreeSet::from([addr_b.clone()]), "a's address released");
    // DEL after the namespace itself is gone.
    drop(b);
    assert!(cni.call("DEL", "cb", "/var/run/netns/gone", &cni.conf("1.1.0"), &[]).ok);
    assert!(cni.allocations().is_empty());
    assert!(cni.pod_ports().is_empty());
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn results_in_each_supported_version() {
    let node = Node::start("e2v", "");
    let cni = Cni::new(&node);
    for (i, v) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let ns = pod(&node, &format!("v{i}"));
        let id = format!("ver{i}");
        let r = cni.call("ADD", &id, &path(&ns), &cni.conf(v), &[]);
        assert!(r.ok, "{v}: {}", r.out);
        assert_eq!(r.out["cniVersion"], *v);
        let ip = &r.out["ips"][0];
        assert_eq!(ip.get("version").is_some(), !v.starts_with('1'), "{v}: ips carry a version before 1.0.0");
        assert_eq!(r.out["interfaces"][0].get("mtu").is_some(), *v == "1.1.0", "{v}: mtu is new in 1.1.0");
        if *v != "0.3.1" {
            assert!(
                cni.call("CHECK", &id, &path(&ns), &with_prev(&cni.conf(v), &r.out), &[]).ok,
                "{v} CHECK"
            );
        } else {
            assert_eq!(cni.call("CHECK", &id, &path(&ns), &with_prev(&cni.conf(v), &r.out), &[]).code(), 1);
        }
        assert!(cni.call("DEL", &id, &path(&ns), &cni.conf(v), &[]).ok);
    }
    assert!(cni.allocations().is_empty());
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn failures_have_the_spec_codes_and_undo_everything() {
    let mut node = Node::start("e2f", "");
    let cni = Cni::new(&node);
    let ns = pod(&node, "x");
    let p = path(&ns);
    let conf = cni.conf("1.1.0");

    let mut bad = conf.clone();
    bad["cniVersion"] = json!("9.9.9");
    assert_eq!(cni.call("ADD", "c1", &p, &bad, &[]).code(), 1);
    assert_eq!(cni.call("ADD", "", &p, &conf, &[]).code(), 4, "no CNI_CONTAINERID");
    assert_eq!(
        cni.call("ADD", "c1", &p, &conf, &[("CNI_ARGS", "FOO=bar")]).code(),
        4,
        "unknown CNI_ARGS key"
    );
    assert_eq!(cni.call("ADD", "c1", &p, &conf, &[("CNI_IFNAME", "a/b")]).code(), 4);
    let mut no_ipam = conf.clone();
    no_ipam.as_object_mut().unwrap().remove("ipam");
    assert_eq!(cni.call("ADD", "c1", &p, &no_ipam, &[]).code(), 7);
    let mut backend = conf.clone();
    backend["backend"] = json!("vhost-user");
    assert_eq!(cni.call("ADD", "c1", &p, &backend, &[]).code(), 7);
    let raw = {
        let mut c = Command::new(vswitch_cni());
        c.env("CNI_COMMAND", "ADD").stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child.stdin.take().unwrap().write_all(b"{\"cniVersion\": ").unwrap();
        serde_json::from_slice::<Value>(&child.wait_with_output().unwrap().stdout).unwrap()
    };
    assert_eq!(raw["code"], 6, "undecodable stdin: {raw}");

    // The pod already has an eth0: refused (101) after host-local allocated; the
    // allocation is released again and the pod's interface is left alone.
    ns.ok(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"]);
    let r = cni.call("ADD", "c1", &p, &conf, &[]);
    assert_eq!(r.code(), 101, "{}", r.out);
    assert!(cni.allocations().is_empty(), "allocation rolled back");
    assert!(ns.ok(&["ip", "-d", "link", "show", "eth0"]).contains("veth"));
    ns.ok(&["ip", "link", "del", "eth0"]);

    // Two containers given the same address by the static IPAM plugin: the second is
    // a conflict (100) and leaves nothing.
    let other = pod(&node, "y");
    let mut fixed = conf.clone();
    fixed["ipam"] = json!({"type": "static", "addresses": [{"address": "10.244.1.77/24"}]});
    assert!(cni.call("ADD", "c2", &p, &fixed, &[]).ok);
    let r = cni.call("ADD", "c3", &path(&other), &fixed, &[]);
    assert_eq!(r.code(), 100, "{}", r.out);
    assert!(other.run(&["ip", "link", "show", "eth0"]).status.code() != Some(0));
    assert_eq!(cni.pod_ports().len(), 1);

    // The pod side cannot be configured (a route via a gateway no interface reaches):
    // 103, and the port and the allocation are undone.
    let mut unreachable_route = conf.clone();
    unreachable_route["ipam"]["routes"] = json!([{"dst": "10.99.0.0/16", "gw": "192.168.99.1"}]);
    let routed = pod(&node, "r");
    let r = cni.call("ADD", "c5", &path(&routed), &unreachable_route, &[]);
    assert_eq!(r.code(), 103, "{}", r.out);
    assert!(routed.run(&["ip", "link", "show", "eth0"]).status.code() != Some(0), "interface removed again");
    assert!(cni.allocations().is_empty(), "allocation released again");
    assert_eq!(cni.pod_ports().len(), 1, "only c2's port");

    // The daemon gone: ADD says "try again later" (11) and allocates nothing; STATUS
    // says "not available" (50); DEL succeeds, deleting the pod's interface and
    // releasing its address itself, and the restarted daemon drops the port.
    node.stop();
    let fresh = pod(&node, "z");
    assert_eq!(cni.call("ADD", "c4", &path(&fresh), &conf, &[]).code(), 11);
    assert!(cni.allocations().is_empty(), "nothing allocated (c2's address is static)");
    assert_eq!(cni.call("STATUS", "", "", &conf, &[]).code(), 50);
    let del = cni.call("DEL", "c2", &p, &fixed, &[]);
    assert!(del.ok, "DEL succeeds without the daemon: {}", del.out);
    assert!(ns.run(&["ip", "link", "show", "eth0"]).status.code() != Some(0), "interface deleted");
    assert!(cni.call("DEL", "c2", &p, &fixed, &[]).ok, "and again");
    node.restart();
    assert!(cni.pod_ports().is_empty(), "the restarted daemon dropped the port");
    assert!(cni.call("DEL", "c2", &p, &fixed, &[]).ok);
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn chained_prev_result_is_extended() {
    let node = Node::start("e2h", "");
    let cni = Cni::new(&node);
    let ns = pod(&node, "a");
    let prev = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "lo", "sandbox": path(&ns)}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]}
    });
    let r = cni.call("ADD", "c1", &path(&ns), &with_prev(&cni.conf("1.1.0"), &prev), &[]);
    assert!(r.ok, "{}", r.out);
    let out = &r.out;
    assert_eq!(out["interfaces"][0]["name"], "lo", "earlier interfaces kept first");
    assert_eq!(out["interfaces"][1]["name"], "eth0");
    assert_eq!(out["ips"][0]["address"], "127.0.0.1/8");
    assert_eq!(out["ips"][1]["interface"], 1, "our address points at our interface");
    assert_eq!(out["dns"]["nameservers"][0], "10.96.0.10", "prevResult's DNS passed through");
    assert!(cni.call("CHECK", "c1", &path(&ns), &with_prev(&cni.conf("1.1.0"), out), &[]).ok);
    assert!(cni.call("DEL", "c1", &path(&ns), &with_prev(&cni.conf("1.1.0"), out), &[]).ok);
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn gc_removes_what_is_not_listed_and_only_that() {
    let node = Node::start("e2g", "");
    let cni = Cni::new(&node);
    let pods: Vec<Netns> = (0..3).map(|i| pod(&node, &format!("g{i}"))).collect();
    for (i, ns) in pods.iter().enumerate() {
        cni.add(&format!("g{i}"), ns);
    }
    // A port of another network, attached directly: GC of this network leaves it.
    let foreign = pod(&node, "f");
    let req = vswitch_api::AttachRequest {
        container_id: "foreign".into(),
        netns: foreign.path(),
        ifname: "eth0".into(),
        mac: None,
        ips: vec!["10.244.1.200/24".parse().unwrap()],
        mtu: None,
        backend: None,
        pod: None,
        network: Some("other-network".into()),
    };
    node.api(|c| async move { c.attach(&req).await }).unwrap();
    assert_eq!(cni.allocations().len(), 3);

    // GC and STATUS exist from 1.1.0 on: an older configuration gets code 1, nothing removed.
    let mut old = cni.conf("1.0.0");
    old["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(cni.call("GC", "", "", &old, &[]).code(), 1);
    assert_eq!(cni.call("STATUS", "", "", &old, &[]).code(), 1);
    assert_eq!(cni.pod_ports().len(), 4, "the old-version GC removed nothing");

    let mut conf = cni.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "g0", "ifname": "eth0"}]);
    let r = cni.call("GC", "", "", &conf, &[]);
    assert!(r.ok && r.out.is_null(), "{}", r.out);
    let left: Vec<String> = cni.pod_ports().into_iter().map(|p| p.container_id).collect();
    assert_eq!(left, vec!["g0".to_string(), "foreign".to_string()]);
    assert_eq!(cni.allocations().len(), 1, "the stale attachments' addresses were released");
    assert!(pods[1].run(&["ip", "link", "show", "eth0"]).status.code() != Some(0));
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn fifty_concurrent_adds_and_dels_keep_addresses_distinct_and_leak_nothing() {
    let node = Node::start("e2c", "");
    let cni = Cni::new(&node);
    let pods: Vec<Netns> = (0..50).map(|i| pod(&node, &format!("p{i}"))).collect();
    let add = |i: usize| cni.add(&format!("par{i}"), &pods[i]);
    // The first 25 at once.
    let first: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..25).map(|i| s.spawn(move || add(i))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let addrs: BTreeSet<String> =
        first.iter().map(|r| r["ips"][0]["address"].as_str().unwrap().to_string()).collect();
    assert_eq!(addrs.len(), 25, "distinct addresses");
    // The other 25 added while the first 25 are deleted, all at once.
    let second: Vec<Value> = std::thread::scope(|s| {
        for i in 0..25 {
            let (cni, pods) = (&cni, &pods);
            s.spawn(move || cni.del(&format!("par{i}"), &pods[i]));
        }
        let handles: Vec<_> = (25..50).map(|i| s.spawn(move || add(i))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let live: BTreeSet<String> =
        second.iter().map(|r| r["ips"][0]["address"].as_str().unwrap().to_string()).collect();
    assert_eq!(live.len(), 25, "distinct addresses among the live pods");
    let ports = cni.pod_ports();
    assert_eq!(ports.len(), 25, "the ports are exactly the pods that exist");
    let port_ips: BTreeSet<String> = ports.iter().map(|p| p.ips[0].to_string()).collect();
    assert_eq!(port_ips, live, "and hold their addresses");
    assert_eq!(cni.allocations().len(), 25);
    std::thread::scope(|s| {
        for i in 25..50 {
            let (cni, pods) = (&cni, &pods);
            s.spawn(move || cni.del(&format!("par{i}"), &pods[i]));
        }
    });
    assert!(cni.pod_ports().is_empty(), "no port left");
    assert!(cni.allocations().is_empty(), "no allocation left");
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(node.dir.0.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["ports"].as_array().map(Vec::len), Some(0));
}
