//! Cluster mode: Nodes, Services and EndpointSlices from the Kubernetes API.
//!
//! Three kube-rs watchers feed reflector stores (a watch that breaks is resumed, a
//! `410 Gone` relists, errors back off exponentially). A change is applied at once when
//! none was in the last [`DEBOUNCE`] window, else at the window's end together with
//! whatever else came meanwhile (kube-proxy's bounded-frequency runner): a lone
//! EndpointSlice update reaches the data path in milliseconds, a storm of them costs at
//! most one table change per window. Only the Services a change touched are translated
//! ([`translate`]) and handed to the control plane, which changes those ports of the
//! table and publishes it; a relist translates everything again. Nothing is applied
//! until every watcher has listed once, and a watch error or an unreachable API server
//! changes nothing: the stores keep their last good content, and so do the tables.

pub mod translate;

/// The recorded API objects the tests serve (List objects, as `kubectl get -o json`
/// prints them from a 1.30 API server).
pub mod fixtures {
    pub const NODES: &str = include_str!("fixtures/nodes.json");
    pub const SERVICES: &str = include_str!("fixtures/services.json");
    pub const ENDPOINT_SLICES: &str = include_str!("fixtures/endpointslices.json");
}

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use vswitch_api::{ClusterStatus, Service, WatcherStatus};

pub use translate::{SelfNode, ServiceKey, Skipped};
use vswitch_dataplane::tables::overlay::NodeSpec;

/// At most one change is applied per window this long; the first after a quiet one is
/// applied at once.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// What changed in the cluster since the last snapshot.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub services: ServicesChange,
    /// The other nodes (this node's own entry is not among them), when any Node changed.
    pub nodes: Option<Vec<NodeSpec>>,
    pub this_node: Option<SelfNode>,
    pub skipped: Vec<Skipped>,
}

/// The Services' part of a [`Snapshot`].
#[derive(Clone, Debug, PartialEq)]
pub enum ServicesChange {
    /// Every Service served, sorted by namespace and name (after a listing).
    All(Vec<Service>),
    /// These Services are new or changed, these are gone (or no longer served); the
    /// others are as before.
    Some { upsert: Vec<Service>, removed: Vec<ServiceKey> },
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

/// One watcher's progress: an event (whether it completed a listing, what it touched),
/// or an error.
enum Progress {
    Event { listed: bool, touched: Touched },
    Error(String),
}

/// What a watch event may have changed.
enum Touched {
    /// A listing started or is under way: everything may have.
    Everything,
    /// This Service, or an EndpointSlice of it; an EndpointSlice carries the Service it
    /// belongs to now (its label) and the slice's own key.
    Service(Option<ServiceKey>, Option<(String, String)>),
    /// A Node.
    Node,
}

fn progress<K>(
    kind: Kind,
    touched: fn(&K) -> Touched,
    s: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> std::pin::Pin<Box<dyn Stream<Item = (Kind, Progress)> + Send>>
where
    K: Send + 'static,
{
    s.map(move |r| {
        let p = match r {
            Ok(watcher::Event::InitDone) => Progress::Event { listed: true, touched: Touched::Everything },
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {
                Progress::Event { listed: false, touched: Touched::Everything }
            }
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                Progress::Event { listed: false, touched: touched(&o) }
            }
            Err(e) => Progress::Error(e.to_string()),
        };
        (kind, p)
    })
    .boxed()
}

fn slice_key(s: &EndpointSlice) -> (String, String) {
    (s.metadata.namespace.clone().unwrap_or_default(), s.metadata.name.clone().unwrap_or_default())
}

/// Drops what no translation reads before an object is stored (a store holds every
/// object of the cluster): the server-side-apply bookkeeping, often the largest part.
fn lighten<K: kube::ResourceExt>(o: &mut K) {
    o.managed_fields_mut().clear();
}

/// [`lighten`], and the annotations too (`kubectl apply` keeps a whole copy of the
/// object in one); Nodes keep theirs, flannel's VTEP MAC is in them.
fn lighten_more<K: kube::ResourceExt>(o: &mut K) {
    lighten(o);
    o.annotations_mut().clear();
}

/// What is due for translation at the next apply.
#[derive(Default)]
struct Dirty {
    all_services: bool,
    services: BTreeSet<ServiceKey>,
    nodes: bool,
}

/// What run() keeps between applies.
struct Translated {
    /// The Service each EndpointSlice belonged to when last seen (a slice relabelled to
    /// another Service changes both), and the other way round: a change to one Service
    /// looks at its own slices, not at every slice.
    slice_owner: HashMap<(String, String), ServiceKey>,
    slices_of: HashMap<ServiceKey, BTreeSet<(String, String)>>,
    /// Why Services are not (entirely) served, by Service.
    service_skips: BTreeMap<ServiceKey, Vec<Skipped>>,
    node_skips: Vec<Skipped>,
    this_node: Option<SelfNode>,
}

impl Translated {
    /// Records that `slice` now belongs to `owner`; returns the Service it belonged to
    /// before, if another.
    fn own(&mut self, slice: (String, String), owner: Option<ServiceKey>) -> Option<ServiceKey> {
        let before = match &owner {
            Some(o) => self.slice_owner.insert(slice.clone(), o.clone()),
            None => self.slice_owner.remove(&slice),
        };
        if before == owner {
            return None;
        }
        if let Some(b) = &before
            && let Some(set) = self.slices_of.get_mut(b)
        {
            set.remove(&slice);
            if set.is_empty() {
                self.slices_of.remove(b);
            }
        }
        if let Some(o) = owner {
            self.slices_of.entry(o).or_default().insert(slice);
        }
        before
    }

    /// The Service `key` (`svc`: its object, `None` once deleted) with its slices as
    /// the store has them now, found through the index (a slice deleted since is let go
    /// of); what of it is not served goes into the skips.
    fn translate(
        &mut self,
        key: &ServiceKey,
        svc: Option<&K8sService>,
        slices: &reflector::Store<EndpointSlice>,
        node_name: &str,
    ) -> Option<Service> {
        let (mut mine, mut gone) = (Vec::new(), Vec::new());
        for (ns, name) in self.slices_of.get(key).into_iter().flatten() {
            match slices.get(&reflector::ObjectRef::new(name).within(ns)) {
                Some(slice) if translate::slice_service(&slice).as_ref() == Some(key) => mine.push(slice),
                _ => gone.push((ns.clone(), name.clone())),
            }
        }
        for slice in gone {
            if slices.get(&reflector::ObjectRef::new(&slice.1).within(&slice.0)).is_none() {
                self.own(slice, None);
            }
        }
        let mine: Vec<&EndpointSlice> = mine.iter().map(|s| &**s).collect();
        let mut skipped = Vec::new();
        let served = svc.and_then(|svc| translate::service(svc, &mine, node_name, &mut skipped));
        if skipped.is_empty() {
            self.service_skips.remove(key);
        } else {
            self.service_skips.insert(key.clone(), skipped);
        }
        served
    }
}

/// Watches the cluster until the task is dropped, calling `apply` with what changed
/// (none before every watcher listed; the first call carries everything).
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
            |_| Touched::Node,
            reflector(nodes_w, watcher(Api::<Node>::all(client.clone()), config.clone()).modify(lighten))
                .default_backoff(),
        ),
        progress(
            Kind::Services,
            |s| Touched::Service(Some(translate::service_key(s)), None),
            reflector(
                services_w,
                watcher(Api::<K8sService>::all(client.clone()), config.clone()).modify(lighten_more),
            )
            .default_backoff(),
        ),
        progress(
            Kind::EndpointSlices,
            |s| Touched::Service(translate::slice_service(s), Some(slice_key(s))),
            reflector(slices_w, watcher(Api::<EndpointSlice>::all(client), config).modify(lighten_more))
                .default_backoff(),
        ),
    ];
    let mut merged = futures::stream::select_all(streams);
    let mut listed = [false; 3];
    let mut due: Option<tokio::time::Instant> = None;
    let mut last_apply: Option<tokio::time::Instant> = None;
    let mut dirty = Dirty { all_services: true, nodes: true, ..Dirty::default() };
    let mut kept = Translated {
        slice_owner: HashMap::new(),
        slices_of: HashMap::new(),
        service_skips: BTreeMap::new(),
        node_skips: Vec::new(),
        this_node: None,
    };
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
                    Progress::Event { listed: done, touched } => {
                        listed[i] |= done;
                        status.update(|s| {
                            let w = &mut s.watchers[i];
                            w.events += 1;
                            w.synced = listed[i];
                            w.last_event_secs = started.elapsed().as_secs();
                        });
                        match touched {
                            Touched::Everything if kind == Kind::Nodes => dirty.nodes = true,
                            Touched::Everything => dirty.all_services = true,
                            Touched::Node => dirty.nodes = true,
                            Touched::Service(owner, slice) => {
                                let before = slice.and_then(|k| kept.own(k, owner.clone()));
                                dirty.services.extend(owner.into_iter().chain(before));
                            }
                        }
                        if due.is_none() {
                            let now = tokio::time::Instant::now();
                            // Leading edge: a change after a quiet window goes at once.
                            due = Some(last_apply.map_or(now, |at| (at + DEBOUNCE).max(now)));
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
                last_apply = Some(tokio::time::Instant::now());
                let work = std::mem::take(&mut dirty);
                let snapshot = changes(&work, &mut kept, &services, &slices, &nodes, &node_name);
                status.update(|s| {
                    s.watchers[Kind::Nodes as usize].objects = nodes.len();
                    s.watchers[Kind::Services as usize].objects = services.len();
                    s.watchers[Kind::EndpointSlices as usize].objects = slices.len();
                    s.skipped = snapshot.skipped.iter().map(|k| format!("{}: {}", k.what, k.why)).collect();
                });
                apply(snapshot).await;
                // Counted once the tables are published: "applied" means the data path has it.
                status.update(|s| s.applied += 1);
            }
        }
    }
}

/// Translates what `dirty` says changed: every Service after a listing, else only the
/// Services touched (their EndpointSlices found by one pass over the slices).
fn changes(
    dirty: &Dirty,
    kept: &mut Translated,
    services: &reflector::Store<K8sService>,
    slices: &reflector::Store<EndpointSlice>,
    nodes: &reflector::Store<Node>,
    node_name: &str,
) -> Snapshot {
    let services_change = if dirty.all_services {
        kept.slice_owner.clear();
        kept.slices_of.clear();
        kept.service_skips.clear();
        for slice in slices.state() {
            kept.own(slice_key(&slice), translate::slice_service(&slice));
        }
        let all = services.state();
        let mut out: Vec<Service> = all
            .iter()
            .filter_map(|svc| kept.translate(&translate::service_key(svc), Some(svc), slices, node_name))
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        ServicesChange::All(out)
    } else {
        let (mut upsert, mut removed) = (Vec::new(), Vec::new());
        for key in &dirty.services {
            let object = services.get(&reflector::ObjectRef::new(&key.name).within(&key.namespace));
            match kept.translate(key, object.as_deref(), slices, node_name) {
                Some(s) => upsert.push(s),
                None => removed.push(key.clone()),
            }
        }
        ServicesChange::Some { upsert, removed }
    };
    let nodes_now = dirty.nodes.then(|| {
        let all = nodes.state();
        let (out, this_node, skips) = translate::nodes(all.iter().map(|n| &**n), node_name);
        kept.this_node = this_node;
        kept.node_skips = skips;
        out
    });
    let skipped = kept.service_skips.values().flatten().chain(&kept.node_skips).cloned().collect();
    Snapshot { services: services_change, nodes: nodes_now, this_node: kept.this_node.clone(), skipped }
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

    /// What the snapshots so far add up to, as the control plane sees it.
    #[derive(Clone, Default)]
    struct Seen {
        services: Vec<Service>,
        nodes: Vec<NodeSpec>,
        this_node: Option<SelfNode>,
        /// The last snapshot's Services part.
        last: Option<ServicesChange>,
    }

    impl Seen {
        fn take(&mut self, s: Snapshot) {
            match &s.services {
                ServicesChange::All(all) => self.services = all.clone(),
                ServicesChange::Some { upsert, removed } => {
                    let changed: Vec<(&str, &str)> = removed
                        .iter()
                        .map(|k| (k.namespace.as_str(), k.name.as_str()))
                        .chain(upsert.iter().map(|u| (u.namespace.as_str(), u.name.as_str())))
                        .collect();
                    self.services.retain(|x| !changed.contains(&(x.namespace.as_str(), x.name.as_str())));
                    self.services.extend(upsert.iter().cloned());
                }
            }
            if let Some(nodes) = s.nodes {
                self.nodes = nodes;
            }
            self.this_node = s.this_node;
            self.last = Some(s.services);
        }
    }

    struct Watching {
        api: MockApi,
        snapshots: mpsc::UnboundedReceiver<Seen>,
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
        let seen = Arc::new(Mutex::new(Seen::default()));
        let task = tokio::spawn(run(client, "node-a".into(), status.clone(), move |s| {
            let mut sum = seen.lock().expect("seen");
            sum.take(s);
            let _ = tx.send(sum.clone());
            async {}
        }));
        Watching { api, snapshots, status, task }
    }

    impl Watching {
        /// The next snapshot that satisfies `want`.
        async fn until(&mut self, what: &str, want: impl Fn(&Seen) -> bool) -> Seen {
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

    fn service(s: &Seen, name: &str) -> Option<Service> {
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

    /// Initial list, add, modify, delete, a slice moved between Services — each change
    /// a new snapshot, a lone change carrying only the Service it touched.
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
        let s = w
            .until("echo's endpoint not ready", |s| service(s, "echo").is_some_and(|e| !e.endpoints[0].ready))
            .await;
        match s.last {
            Some(ServicesChange::Some { upsert, removed }) => {
                assert_eq!(
                    (upsert.len(), upsert[0].name.as_str(), removed.len()),
                    (1, "echo", 0),
                    "only echo"
                );
            }
            other => panic!("a change of one slice translates one Service, got {other:?}"),
        }

        // A slice moved to another Service (relabelled) leaves the first one; deleted,
        // it leaves the second.
        let mut other = echo_service();
        other["metadata"]["name"] = json!("other");
        other["spec"]["clusterIP"] = json!("10.96.7.8");
        other["spec"]["clusterIPs"] = json!(["10.96.7.8"]);
        w.api.apply("services", other);
        let mut moved = echo_slice(true);
        moved["metadata"]["labels"]["kubernetes.io/service-name"] = json!("other");
        w.api.apply("endpointslices", moved.clone());
        let endpoints = |s: &Seen, name: &str| service(s, name).map(|x| x.endpoints.len());
        w.until("the endpoint moved to other", |s| {
            endpoints(s, "echo") == Some(0) && endpoints(s, "other") == Some(1)
        })
        .await;
        w.api.delete("endpointslices", moved);
        w.until("other without it", |s| endpoints(s, "other") == Some(0)).await;

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
