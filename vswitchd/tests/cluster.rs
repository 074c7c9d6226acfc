//! Cluster mode end to end: vswitchd started with `--kubeconfig` against a mock API
//! server (recorded objects, watch streams) listening inside the node's namespace.
//! The pod CIDR comes from the Node object, Services and other nodes from the API, and
//! a Service added through the API carries real connections.

mod harness;

use std::net::Ipv4Addr;
use std::time::Duration;

use harness::testbed::{Process, unique_prefix, wait_until};
use harness::{Node, Scratch};
use serde_json::json;
use vswitch_api::Backend;
use vswitchd::cluster::fixtures;
use vswitchd::cluster::mock::MockApi;

fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n    server: {server}\n\
         contexts:\n- name: mock\n  context:\n    cluster: mock\n    user: mock\ncurrent-context: mock\n\
         users:\n- name: mock\n  user: {{}}\n"
    )
}

/// A node whose vswitchd runs in cluster mode (`--kubeconfig`, as Node `node-a`)
/// against a mock API server listening in the node's namespace, serving the fixtures'
/// Nodes, Services and EndpointSlices. Fields drop in order: the daemon before the
/// server, the server's runtime last.
struct ClusterNode {
    node: Node,
    api: MockApi,
    _files: Scratch,
    _rt: tokio::runtime::Runtime,
}

fn cluster_node(tag: &str, extra: &str) -> ClusterNode {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let files = Scratch::new(&unique_prefix(&format!("{tag}f")));
    let kc = files.0.join("kubeconfig");
    let mut api = None;
    let args = ["--kubeconfig".to_string(), kc.display().to_string(), "--node-name".into(), "node-a".into()];
    let node = Node::start_with_args(tag, extra, &args, |ns, _| {
        let netns = vswitch_sys::netns::Netns::open(&ns.path()).expect("node namespace");
        let listener =
            netns.run(|| std::net::TcpListener::bind("127.0.0.1:0")).expect("in the node").expect("bind");
        let mock = rt.block_on(MockApi::start_on(
            listener,
            &[
                ("nodes", fixtures::NODES),
                ("services", fixtures::SERVICES),
                ("endpointslices", fixtures::ENDPOINT_SLICES),
            ],
        ));
        std::fs::write(&kc, kubeconfig(&mock.url())).expect("kubeconfig");
        api = Some(mock);
    });
    ClusterNode { node, api: api.expect("mock started"), _files: files, _rt: rt }
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn services_and_nodes_come_from_the_cluster() {
    let ClusterNode { node, api, _files, _rt } = cluster_node("clu", "pod_cidr = \"\"\n");

    let status = node.api(|c| async move { c.status().await }).expect("status");
    assert_eq!(status.pod_cidr.to_string(), "10.244.1.0/24", "from the Node object");
    assert_eq!(status.node_ip, Some(Ipv4Addr::new(192, 168, 50, 1)), "its InternalIP");
    let synced = || {
        node.api(|c| async move { c.status().await })
            .ok()
            .and_then(|s| s.cluster)
            .is_some_and(|c| c.applied > 0 && c.watchers.iter().all(|w| w.synced))
    };
    assert!(wait_until(Duration::from_secs(20), synced), "watchers synced:\n{}", node.log());
    let services = node.ctl(&["services"]);
    assert!(services.contains("kube-system/kube-dns") && services.contains("10.96.0.10"), "{services}");
    assert!(!services.contains("shop/db"), "headless Services are not served: {services}");
    let nodes = node.ctl(&["nodes"]);
    assert!(nodes.contains("node-b") && nodes.contains("cluster") && !nodes.contains("node-c"), "{nodes}");
    let status = node.ctl(&["status"]);
    assert!(status.contains("endpointslices"), "watchers in vswitchctl status: {status}");
    // Every metric the dashboard and the alerting rules in deploy/monitoring use is one
    // this daemon exposes (cluster mode: the watcher metrics too).
    let metrics = node.ns.ok(&["curl", "-s", "http://127.0.0.1:9479/metrics"]);
    let exposed: std::collections::BTreeSet<&str> =
        metrics.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    for name in harness::metric_names(&harness::monitoring_expressions()) {
        assert!(exposed.contains(name.as_str()), "{name} is used in deploy/monitoring but not exposed");
    }

    // A Service created through the API serves real connections.
    let ep = node.pod("ep", Ipv4Addr::new(10, 244, 1, 44), Backend::Tap);
    let client = node.pod("cl", Ipv4Addr::new(10, 244, 1, 20), Backend::Tap);
    let _server: Process = ep.ns.spawn(&["ncat", "-lk", "7007", "-c", "echo served by ep"]);
    assert!(wait_until(Duration::from_secs(5), || ep.ns.ok(&["ss", "-ltn"]).contains(":7007")));
    let echo = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": "default", "uid": "e1"},
        "spec": {"clusterIP": "10.96.7.7", "clusterIPs": ["10.96.7.7"], "type": "ClusterIP",
                 "ports": [{"name": "tcp", "port": 7, "protocol": "TCP", "targetPort": 7007}]}});
    api.apply("services", echo.clone());
    api.apply(
        "endpointslices",
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "echo-abc", "namespace": "default", "uid": "e2",
                         "labels": {"kubernetes.io/service-name": "echo"}},
            "endpoints": [{"addresses": ["10.244.1.44"], "conditions": {"ready": true}, "nodeName": "node-a"}],
            "ports": [{"name": "tcp", "port": 7007, "protocol": "TCP"}]}),
    );
    // The Service and its EndpointSlice are two objects, possibly applied in two
    // snapshots: a Service without its endpoint refuses connections meanwhile.
    let served = || node.ctl(&["services"]).lines().any(|l| l.contains("10.96.7.7") && l.contains(" 1/1 "));
    assert!(wait_until(Duration::from_secs(10), served), "the new Service applied with its endpoint");
    for _ in 0..3 {
        let out = client.ns.run(&["ncat", "--recv-only", "-w", "3", "10.96.7.7", "7"]);
        let got = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            got.trim(),
            "served by ep",
            "{}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            node.ctl(&["services"]),
            node.ctl(&["stats"])
        );
    }
    api.delete("services", echo);
    assert!(
        wait_until(Duration::from_secs(10), || !node.ctl(&["services"]).contains("10.96.7.7")),
        "the deleted Service withdrawn"
    );
    drop(node);
}

/// A takeover while the API server is away: the new daemon serves the Services and
/// nodes the old one had from the cluster (they came with the handover) until its own
/// watchers can list again.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_takeover_serves_the_clusters_services_while_the_api_server_is_away() {
    let ClusterNode { mut node, api, _files, _rt } = cluster_node("clt", "");
    let synced = |node: &Node| {
        node.api(|c| async move { c.status().await })
            .ok()
            .and_then(|s| s.cluster)
            .is_some_and(|c| c.applied > 0 && c.watchers.iter().all(|w| w.synced))
    };
    assert!(wait_until(Duration::from_secs(20), || synced(&node)), "watchers synced:\n{}", node.log());
    let served = |node: &Node| {
        let (services, nodes) = (node.ctl(&["services"]), node.ctl(&["nodes"]));
        services.contains("kube-system/kube-dns")
            && services.contains("10.96.0.10")
            && nodes.contains("node-b")
    };
    assert!(served(&node));

    api.set_down(true);
    node.take_over();
    assert!(!synced(&node), "the new daemon's watchers cannot list");
    assert!(served(&node), "Services and nodes from the handover:\n{}", node.ctl(&["services"]));
    api.set_down(false);
    assert!(wait_until(Duration::from_secs(30), || synced(&node)), "watchers synced again:\n{}", node.log());
    assert!(served(&node));
    drop(node);
}
