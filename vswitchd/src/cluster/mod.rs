//! Cluster mode: Nodes, Services and EndpointSlices from the Kubernetes API.
//!
//! Three kube-rs watchers feed reflector stores (a watch that breaks is resumed, a
//! `410 Gone` relists, errors back off exponentially); any change opens a short window
//! ([`DEBOUNCE`]) after which the stores are translated ([`translate`]) into one new set
//! of Services and nodes and handed to the control plane, which publishes one new table
//! snapshot. Nothing is applied until every watcher has listed once, and a watch error
//! or an unreachable API server changes nothing: the stores keep their last good
//! content, and so do the tables.

pub mod translate;

/// The recorded API objects the tests serve (List objects, as `kubectl get -o json`
/// prints them from a 1.30 API server).
pub mod fixtures {
    pub const NODES: &str = include_str!("fixtures/nodes.json");
    pub const SERVICES: &str = include_str!("fixtures/services.json");
    pub const ENDPOINT_SLICES: &str = include_str!("fixtures/endpointslices.json");
}

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use vswitch_api::{ClusterStatus, Service, WatcherStatus};

pub use translate::{SelfNode, Skipped};
use vswitch_dataplane::tables::overlay::NodeSpec;

/// Changes within this window after the first one are applied together.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// What the cluster says the node should serve.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub services: Vec<Service>,
    /// The other nodes (this node's own entry is not among them).
    pub nodes: Vec<NodeSpec>,
    pub this_node: Option<SelfNode>,
    pub skipped: Vec<Skipped>,
}

/// Where the client's configuration comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A kubeconfig file (`--kubeconfig`).
    Kubeconfig(std::path::PathBuf),
    /// The pod's service account (`--in-cluster`), as a DaemonSet runs it.
    InCluster,
}

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("in-cluster configuration: {0}")]
    InCluster(String),
    #[error("Kubernetes client: {0}")]
    Client(String),
    #[error("reading Node {name}: {message}")]
    Node { name: String, message: String },
}

/// Builds a client for `source`.
pub async fn client(source: &Source) -> Result<Client, ClusterError> {
    let config = match source {
        Source::Kubeconfig(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| ClusterError::Kubeconfig {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| ClusterError::Kubeconfig {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?
        }
        Source::InCluster => kube::Config::incluster().map_err(|e| ClusterError::InCluster(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| ClusterError::Client(e.to_string()))
}

/// This node's Node object, as far as the data path cares (its pod CIDR): read once
/// at start when the config names no pod CIDR. `None`: no such Node yet.
pub async fn this_node(client: &Client, name: &str) -> Result<Option<SelfNode>, ClusterError> {
    let api: Api<Node> = Api::all(client.clone());
    let node = api
        .get_opt(name)
        .await
        .map_err(|e| ClusterError::Node { name: name.to_string(), message: e.to_string() })?;
    Ok(node.and_then(|n| translate::nodes(&[n], name).1))
}

/// The watchers' state, for `vswitchctl status` and the metrics.
#[derive(Clone, Default)]
pub struct StatusHandle(Arc<Mutex<ClusterStatus>>);

impl StatusHandle {
    pub fn new(node_name: &str) -> StatusHandle {
        let watcher = |resource: &str| WatcherStatus { resource: resource.into(), ..Default::default() };
        StatusHandle(Arc::new(Mutex::new(ClusterStatus {
            node_name: node_name.into(),
            watchers: vec![watcher("nodes"), watcher("services"), watcher("endpointslices")],
            ..Default::default()
        })))
    }

    pub fn get(&self) -> ClusterStatus {
        self.0.lock().expect("status lock").clone()
    }

    fn update(&self, f: impl FnOnce(&mut ClusterStatus)) {
        f(&mut self.0.lock().expect("status lock"));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Nodes = 0,
    Services = 1,
    EndpointSlices = 2,
}

/// One watcher's progress: an event (and whether it completed a listing), or an error.
enum Progress {
    Event { listed: bool },
    Error(String),
}

fn progress<K>(
    kind: Kind,
    s: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> std::pin::Pin<Box<dyn Stream<Item = (Kind, Progress)> + Send>>
where
    K: Send + 'static,
{
    s.map(move |r| {
        let p = match r {
            Ok(watcher::Event::InitDone) => Progress::Event { listed: true },
            Ok(_) => Progress::Event { listed: false },
            Err(e) => Progress::Error(e.to_string()),
        };
        (kind, p)
    })
    .boxed()
}

/// A store's objects, owned.
fn owned<K>(store: &reflector::Store<K>) -> Vec<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.state().iter().map(|o| (**o).clone()).collect()
}

/// Watches the cluster until the task is dropped, calling `apply` with each new
/// snapshot (at most one per [`DEBOUNCE`] window, none before every watcher listed).
pub async fn run<F, Fut>(client: Client, node_name: String, status: StatusHandle, mut apply: F)
where
    F: FnMut(Snapshot) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let config = watcher::Config::default();
    let (nodes, nodes_w) = reflector::store::<Node>();
    let (services, services_w) = reflector::store::<K8sService>();
    let (slices, slices_w) = reflector::store::<EndpointSlice>();
    let streams = vec![
        progress(
            Kind::Nodes,
            reflector(nodes_w, watcher(Api::<Node>::all(client.clone()), config.clone())).default_backoff(),
        ),
        progress(
            Kind::Services,
            reflector(services_w, watcher(Api::<K8sService>::all(client.clone()), config.clone()))
                .default_backoff(),
        ),
        progress(
            Kind::EndpointSlices,
            reflector(slices_w, watcher(Api::<EndpointSlice>::all(client), config)).default_backoff(),
        ),
    ];
    let mut merged = futures::stream::select_all(streams);
    let mut listed = [false; 3];
    let mut due: Option<tokio::time::Instant> = None;
    let started = Instant::now();
    loop {
        let wait = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            item = merged.next() => {
                let Some((kind, p)) = item else { break };
                let i = kind as usize;
                match p {
                    Progress::Event { listed: done } => {
                        listed[i] |= done;
                        status.update(|s| {
                            let w = &mut s.watchers[i];
                            w.events += 1;
                            w.synced = listed[i];
                            w.last_event_secs = started.elapsed().as_secs();
                        });
                        if due.is_none() {
                            due = Some(tokio::time::Instant::now() + DEBOUNCE);
                        }
                    }
                    Progress::Error(e) => {
                        tracing::warn!(resource = ?kind, error = %e, "Kubernetes watch failed; retrying with backoff, tables unchanged");
                        status.update(|s| {
                            let w = &mut s.watchers[i];
                            w.errors += 1;
                            w.last_error = Some(e);
                        });
                    }
                }
            }
            () = wait => {
                if !listed.iter().all(|l| *l) {
                    // Not every watcher has listed yet: keep the window open.
                    due = Some(tokio::time::Instant::now() + DEBOUNCE);
                    continue;
                }
                due = None;
                let (svcs, eps, ns) = (owned(&services), owned(&slices), owned(&nodes));
                let (services_out, mut skipped) = translate::services(&svcs, &eps, &node_name);
                let (nodes_out, this_node, node_skips) = translate::nodes(&ns, &node_name);
                skipped.extend(node_skips);
                status.update(|s| {
                    s.watchers[Kind::Nodes as usize].objects = ns.len();
                    s.watchers[Kind::Services as usize].objects = svcs.len();
                    s.watchers[Kind::EndpointSlices as usize].objects = eps.len();
                    s.applied += 1;
                    s.skipped = skipped.iter().map(|k| format!("{}: {}", k.what, k.why)).collect();
                });
                apply(Snapshot { services: services_out, nodes: nodes_out, this_node, skipped }).await;
            }
        }
    }
}

/// A mock API server, for this module's tests and the end-to-end tests.
pub mod mock;

#[cfg(test)]
mod tests {
    use super::mock::MockApi;
    use super::*;
    use serde_json::json;
    use tokio::sync::mpsc;

    const TIMEOUT: Duration = Duration::from_secs(20);

    struct Watching {
        api: MockApi,
        snapshots: mpsc::UnboundedReceiver<Snapshot>,
        status: StatusHandle,
        task: tokio::task::JoinHandle<()>,
    }

    async fn watching() -> Watching {
        let api = MockApi::start(&[
            ("nodes", include_str!("fixtures/nodes.json")),
            ("services", include_str!("fixtures/services.json")),
            ("endpointslices", include_str!("fixtures/endpointslices.json")),
        ])
        .await;
        let config = kube::Config::new(api.url().parse().expect("URL"));
        let client = Client::try_from(config).expect("client");
        let (tx, snapshots) = mpsc::unbounded_channel();
        let status = StatusHandle::new("node-a");
        let task = tokio::spawn(run(client, "node-a".into(), status.clone(), move |s| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(s);
            }
        }));
        Watching { api, snapshots, status, task }
    }

    impl Watching {
        /// The next snapshot that satisfies `want`.
        async fn until(&mut self, what: &str, want: impl Fn(&Snapshot) -> bool) -> Snapshot {
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            loop {
                let next = tokio::time::timeout_at(deadline, self.snapshots.recv()).await;
                match next {
                    Ok(Some(s)) if want(&s) => return s,
                    Ok(Some(_)) => continue,
                    _ => panic!("no snapshot with {what} within {TIMEOUT:?}; status {:?}", self.status.get()),
                }
            }
        }
    }

    fn service(s: &Snapshot, name: &str) -> Option<Service> {
        s.services.iter().find(|x| x.name == name).cloned()
    }

    fn echo_service() -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "echo", "namespace": "default", "uid": "e1"},
            "spec": {"clusterIP": "10.96.7.7", "clusterIPs": ["10.96.7.7"], "type": "ClusterIP",
                     "ports": [{"name": "tcp", "port": 7, "protocol": "TCP", "targetPort": 7007}]}})
    }

    fn echo_slice(ready: bool) -> serde_json::Value {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "echo-abc", "namespace": "default", "uid": "e2",
                         "labels": {"kubernetes.io/service-name": "echo"}},
            "endpoints": [{"addresses": ["10.244.1.44"], "conditions": {"ready": ready}, "nodeName": "node-a"}],
            "ports": [{"name": "tcp", "port": 7007, "protocol": "TCP"}]})
    }

    /// Initial list, add, modify, delete — each change a new snapshot; a Service and
    /// its slice added together arrive in one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn follows_adds_changes_and_deletes() {
        let mut w = watching().await;
        let first = w.until("the recorded cluster", |s| s.services.len() == 5).await;
        assert_eq!(first.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["node-b"]);
        assert_eq!(
            first.this_node.as_ref().and_then(|n| n.pod_cidr).map(|c| c.to_string()).as_deref(),
            Some("10.244.1.0/24")
        );
        assert!(w.status.get().watchers.iter().all(|x| x.synced), "{:?}", w.status.get());

        w.api.apply("services", echo_service());
        w.api.apply("endpointslices", echo_slice(true));
        let s = w
            .until("echo with its endpoint", |s| service(s, "echo").is_some_and(|e| e.endpoints.len() == 1))
            .await;
        let echo = service(&s, "echo").expect("echo");
        assert_eq!(
            (echo.ports[0].target_port, echo.endpoints[0].ready, echo.endpoints[0].local),
            (7007, true, true)
        );

        w.api.apply("endpointslices", echo_slice(false));
        w.until("echo's endpoint not ready", |s| service(s, "echo").is_some_and(|e| !e.endpoints[0].ready))
            .await;

        w.api.delete("services", echo_service());
        w.until("echo gone", |s| service(s, "echo").is_none()).await;

        // A node gets its pod CIDR: it becomes routable.
        let mut c: serde_json::Value =
            serde_json::from_str::<serde_json::Value>(include_str!("fixtures/nodes.json")).expect("fixture")
                ["items"][2]
                .clone();
        c["spec"]["podCIDR"] = json!("10.244.3.0/24");
        c["spec"]["podCIDRs"] = json!(["10.244.3.0/24"]);
        w.api.apply("nodes", c.clone());
        w.until("node-c routable", |s| s.nodes.iter().any(|n| n.name == "node-c")).await;
        w.api.delete("nodes", c);
        w.until("node-c gone", |s| !s.nodes.iter().any(|n| n.name == "node-c")).await;
        w.task.abort();
    }

    /// A watch ended with 410 Gone is relisted, and what it missed is picked up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_that_expires_relists() {
        let mut w = watching().await;
        w.until("the recorded cluster", |s| s.services.len() == 5).await;
        let lists = w.api.lists("services");
        // kube-dns goes while the watch is not told.
        w.api.change_silently("services", |objs| {
            objs.remove("kube-system/kube-dns");
        });
        w.api.expire_watches("services");
        w.until("kube-dns gone after the relist", |s| service(s, "kube-dns").is_none()).await;
        assert!(w.api.lists("services") > lists, "relisted");
        w.task.abort();
    }

    /// The API server goes away: errors are counted, the last snapshot stands (nothing
    /// is applied, let alone an empty one); back, it is followed again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outage_changes_nothing_and_recovery_resumes() {
        let mut w = watching().await;
        w.until("the recorded cluster", |s| s.services.len() == 5).await;
        w.api.set_down(true);
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while w.status.get().watchers.iter().all(|x| x.errors == 0) {
            assert!(tokio::time::Instant::now() < deadline, "errors seen: {:?}", w.status.get());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Whatever is applied meanwhile is the last good state.
        while let Ok(s) = w.snapshots.try_recv() {
            assert_eq!(s.services.len(), 5, "an outage tears nothing down");
        }
        assert!(w.status.get().watchers.iter().any(|x| x.last_error.is_some()));
        w.api.set_down(false);
        w.api.apply("services", echo_service());
        w.until("echo after recovery", |s| service(s, "echo").is_some()).await;
        w.task.abort();
    }
}
