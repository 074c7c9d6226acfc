//! Control-plane speed at scale: how long a change to a Service's endpoints in the
//! Kubernetes API takes to reach vswitchd's data path, and what the daemon's memory is,
//! with 1 000, 10 000 and 100 000 Services.
//!
//! The API server is the mock of vswitchd's cluster-mode tests (objects and watch
//! streams served as the kube-apiserver serves them), in this process, listening inside
//! a node namespace of the harness's own; vswitchd runs there in cluster mode
//! (`--kubeconfig`). Each Service has one TCP port and an EndpointSlice with two ready
//! endpoints on another node. Measured:
//! - the initial sync: from the daemon's start to its first applied snapshot of the
//!   listed objects;
//! - the daemon's resident memory after it;
//! - `--changes` times (default 30), one at a time and apart by more than the daemon's
//!   debounce window: one EndpointSlice's second endpoint flips ready, and the time
//!   until the daemon reports the snapshot applied (`status`: its `applied` count moves
//!   once the new tables are published to the workers).
//!
//! Usage (root): `cargo run --release -p vswitch-benches --bin service-sync -- [--services
//! 1000,10000,100000] [--changes N] [--write docs/BENCHMARKS.md]`; prints a markdown table,
//! and with `--write` puts it between the file's `<!-- service-sync:begin -->` and
//! `<!-- service-sync:end -->` markers.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vswitch_benches::node::{median, sibling_binary};
use vswitch_benches::report;
use vswitch_sys::netns::Netns as NsHandle;
use vswitch_testbed::{Netns, Process, Scratch, unique_prefix, wait_until_every};
use vswitchd::cluster::mock::MockApi;

fn service(i: usize) -> Value {
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32).to_string();
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench", "uid": format!("s-{i}"), "resourceVersion": "1"},
        "spec": {"clusterIP": vip, "clusterIPs": [vip], "type": "ClusterIP", "ipFamilies": ["IPv4"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}})
}

/// The EndpointSlice of Service `i`: two endpoints on another node, the second `ready`
/// as given.
fn slice(i: usize, second_ready: bool) -> Value {
    let ep = |n: usize| {
        let host = i * 2 + n;
        Ipv4Addr::new(10, 245 + (host >> 16) as u8, (host >> 8) as u8, host as u8).to_string()
    };
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": format!("svc-{i}-x1"), "namespace": "bench", "uid": format!("e-{i}"), "resourceVersion": "1",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "endpoints": [
            {"addresses": [ep(0)], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": "node-b"},
            {"addresses": [ep(1)], "conditions": {"ready": second_ready, "serving": second_ready, "terminating": false}, "nodeName": "node-b"}
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

fn node_list() -> String {
    json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "1"}, "items": [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a", "uid": "n-a", "resourceVersion": "1"},
         "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
         "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.1"}]}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b", "uid": "n-b", "resourceVersion": "1"},
         "spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]},
         "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.2"}]}}
    ]})
    .to_string()
}

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> String {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
        .to_string()
}

/// What the daemon's `status` says of its cluster watchers: (snapshots applied, every
/// watcher listed). Asked over the API socket directly, not through `vswitchctl`: a
/// process start per poll would blur the millisecond figures this harness reports.
fn cluster_status(socket: &str) -> Option<(u64, bool)> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    stream.write_all(b"GET /v1/status HTTP/1.1\r\nHost: vswitchd\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let body = response.windows(4).position(|w| w == b"\r\n\r\n").map(|at| &response[at + 4..])?;
    let status: Value = serde_json::from_slice(body).ok()?;
    let cluster = &status["cluster"];
    let synced = cluster["watchers"].as_array()?.iter().all(|w| w["synced"] == true);
    Some((cluster["applied"].as_u64()?, synced))
}

/// Polls `cond` every millisecond (the figures are in milliseconds) until it holds or
/// `timeout` passes.
fn poll_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    wait_until_every(Duration::from_millis(1), timeout, cond)
}

fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    kib / 1024.0
}

/// One scale's figures.
struct Row {
    services: usize,
    initial_sync: Duration,
    rss_mib: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn measure(rt: &tokio::runtime::Runtime, services: usize, changes: usize) -> Row {
    let prefix = unique_prefix("vssy");
    let node = Netns::new(&format!("{prefix}n"));
    let dir = Scratch::new(&prefix);
    let svcs = list("ServiceList", "v1", (0..services).map(service).collect());
    let slices =
        list("EndpointSliceList", "discovery.k8s.io/v1", (0..services).map(|i| slice(i, true)).collect());
    let nodes = node_list();
    let listener = NsHandle::open(&node.path())
        .expect("node namespace")
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("in the node")
        .expect("bind");
    let api = rt.block_on(MockApi::start_on(
        listener,
        &[("nodes", nodes.as_str()), ("services", svcs.as_str()), ("endpointslices", slices.as_str())],
    ));
    let kubeconfig = dir.0.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n    server: {}\n\
             contexts:\n- name: mock\n  context:\n    cluster: mock\n    user: mock\ncurrent-context: mock\n\
             users:\n- name: mock\n  user: {{}}\n",
            api.url()
        ),
    )
    .expect("kubeconfig");
    let socket = dir.0.join("api.sock").display().to_string();
    let config = dir.0.join("vswitchd.toml");
    std::fs::write(
        &config,
        format!(
            "api_socket = {socket:?}\nstate_file = {:?}\nmetrics_address = \"\"\nhost_port = \"\"\npod_cidr = \"\"\nworkers = 1\n",
            dir.0.join("state.json").display().to_string()
        ),
    )
    .expect("config");
    let started = Instant::now();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node.name()])
        .arg(sibling_binary("vswitchd"))
        .args(["--config", &config.display().to_string(), "--kubeconfig", &kubeconfig.display().to_string()])
        .args(["--node-name", "node-a"])
        .env("RUST_LOG", "warn");
    let daemon = Process::spawn(&mut cmd).expect("vswitchd starts");
    let synced = || cluster_status(&socket).is_some_and(|(applied, synced)| applied > 0 && synced);
    assert!(poll_until(Duration::from_secs(600), synced), "vswitchd synced {services} Services");
    let initial_sync = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let rss_mib = resident_mib(daemon.pid());

    let mut took = Vec::with_capacity(changes);
    for k in 0..changes {
        let i = (k * 7919) % services;
        let (before, _) = cluster_status(&socket).expect("status");
        let t0 = Instant::now();
        api.apply("endpointslices", slice(i, k % 2 == 1));
        let moved = || cluster_status(&socket).is_some_and(|(applied, _)| applied > before);
        assert!(poll_until(Duration::from_secs(60), moved), "change {k} applied");
        took.push(t0.elapsed().as_secs_f64() * 1e3);
        // Past the debounce window: each change on its own.
        std::thread::sleep(Duration::from_millis(400));
    }
    drop(daemon);
    let max_ms = took.iter().copied().fold(0.0, f64::max);
    let mut sorted = took.clone();
    sorted.sort_by(f64::total_cmp);
    let p99_ms = sorted[((sorted.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)];
    Row { services, initial_sync, rss_mib, p50_ms: median(took), p99_ms, max_ms }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let scales: Vec<usize> = arg("--services")
        .unwrap_or_else(|| "1000,10000,100000".into())
        .split(',')
        .map(|s| s.parse().expect("--services N,N,..."))
        .collect();
    let changes: usize = arg("--changes").map_or(30, |v| v.parse().expect("--changes N"));
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let rows: Vec<Row> = scales
        .iter()
        .map(|&n| {
            let row = measure(&rt, n, changes);
            eprintln!(
                "{n} Services: sync {:?}, {:.0} MiB, change p50 {:.1} ms",
                row.initial_sync, row.rss_mib, row.p50_ms
            );
            row
        })
        .collect();
    let mut md = format!(
        "Generated by `service-sync` on {}; {}. Each Service one TCP port and an EndpointSlice of two endpoints; \
         {changes} changes per scale, one at a time (one EndpointSlice's second endpoint flips ready), timed from \
         the API server's watch event to the daemon reporting the snapshot applied.\n\n\
         | Services | initial sync | daemon memory (RSS) | change → data path, p50 | p99 | max |\n\
         |---:|---:|---:|---:|---:|---:|\n",
        report::today(),
        report::machine()
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.2} s | {:.0} MiB | {:.1} ms | {:.1} ms | {:.1} ms |\n",
            r.services,
            r.initial_sync.as_secs_f64(),
            r.rss_mib,
            r.p50_ms,
            r.p99_ms,
            r.max_ms
        ));
    }
    print!("{md}");
    if let Some(path) = arg("--write") {
        report::write_between_markers(&path, "service-sync", &md);
    }
}
