//! A small Kubernetes API server for the watcher tests (and the end-to-end ones): lists and watch streams of
//! Nodes, Services and EndpointSlices over plain HTTP on loopback, driven by the test
//! (add, modify, delete, a watch expiring with `410 Gone`, an outage).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// One resource: its objects by `namespace/name`, its resource version, live watches.
#[derive(Default)]
struct Resource {
    objects: BTreeMap<String, Value>,
    version: u64,
    watches: Vec<mpsc::UnboundedSender<Option<Value>>>,
    lists: u64,
    /// Every event sent, by resource version: a watch from version v first gets those
    /// after v, as the API server's watch cache replays them.
    history: Vec<(u64, Value)>,
}

#[derive(Default)]
struct Inner {
    resources: BTreeMap<&'static str, Resource>,
    /// Answer everything with 503 (the API server is down).
    down: bool,
}

#[derive(Clone, Default)]
pub struct MockApi {
    inner: Arc<Mutex<Inner>>,
    addr: Option<SocketAddr>,
}

fn key(obj: &Value) -> String {
    let m = &obj["metadata"];
    format!("{}/{}", m["namespace"].as_str().unwrap_or(""), m["name"].as_str().unwrap_or(""))
}

fn list_kind(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "nodes" => ("v1", "NodeList"),
        "services" => ("v1", "ServiceList"),
        _ => ("discovery.k8s.io/v1", "EndpointSliceList"),
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Params {
    watch: Option<bool>,
    resource_version: Option<String>,
}

async fn serve(resource: &'static str, State(api): State<MockApi>, Query(p): Query<Params>) -> Response {
    let mut inner = api.inner.lock().expect("mock lock");
    if inner.down {
        // 500, not 503: the client itself retries 429/503/504 before the watcher
        // sees an error.
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500});
        return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(status)).into_response();
    }
    let r = inner.resources.entry(resource).or_default();
    if p.watch == Some(true) {
        let (tx, rx) = mpsc::unbounded_channel::<Option<Value>>();
        let from: u64 = p.resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(r.version);
        for (_, event) in r.history.iter().filter(|(v, _)| *v > from) {
            let _ = tx.send(Some(event.clone()));
        }
        r.watches.push(tx);
        // `None` ends the stream, as the server closing a watch.
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Some(Some(event)) => {
                    let mut line = serde_json::to_vec(&event).expect("JSON");
                    line.push(b'\n');
                    Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(line)), rx))
                }
                _ => None,
            }
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .expect("response");
    }
    r.lists += 1;
    let (api_version, kind) = list_kind(resource);
    let body = json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"resourceVersion": r.version.to_string()},
        "items": r.objects.values().cloned().collect::<Vec<_>>(),
    });
    axum::Json(body).into_response()
}

/// One Node by name, or the API server's 404.
async fn node(
    State(api): State<MockApi>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    let inner = api.inner.lock().expect("mock lock");
    match inner.resources.get("nodes").and_then(|r| r.objects.get(&format!("/{name}"))) {
        Some(obj) => axum::Json(obj.clone()).into_response(),
        None => {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("nodes \"{name}\" not found"), "reason": "NotFound",
                "details": {"name": name, "kind": "nodes"}, "code": 404});
            (StatusCode::NOT_FOUND, axum::Json(status)).into_response()
        }
    }
}

impl MockApi {
    /// Starts serving on loopback with `fixtures`: (resource, a List object's JSON).
    pub async fn start(fixtures: &[(&'static str, &str)]) -> MockApi {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback port");
        MockApi::start_on(listener, fixtures).await
    }

    /// [`MockApi::start`] on a listener of the caller's (say, bound inside a node's
    /// network namespace).
    pub async fn start_on(listener: std::net::TcpListener, fixtures: &[(&'static str, &str)]) -> MockApi {
        let mut api = MockApi::default();
        {
            let mut inner = api.inner.lock().expect("mock lock");
            for (resource, json) in fixtures {
                let list: Value = serde_json::from_str(json).expect("fixture");
                let r = inner.resources.entry(resource).or_default();
                r.version = 100;
                for item in list["items"].as_array().expect("items") {
                    r.objects.insert(key(item), item.clone());
                }
            }
        }
        let app = Router::new()
            .route("/api/v1/nodes", get(|s, q| serve("nodes", s, q)))
            .route("/api/v1/nodes/{name}", get(node))
            .route("/api/v1/services", get(|s, q| serve("services", s, q)))
            .route("/apis/discovery.k8s.io/v1/endpointslices", get(|s, q| serve("endpointslices", s, q)))
            .with_state(api.clone());
        listener.set_nonblocking(true).expect("non-blocking listener");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        api.addr = Some(listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("mock API serves") });
        api
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr.expect("started"))
    }

    /// Sends `event` for `obj` to the live watches and updates the objects.
    fn event(&self, resource: &'static str, kind: &str, mut obj: Value) {
        let mut inner = self.inner.lock().expect("mock lock");
        let r = inner.resources.entry(resource).or_default();
        r.version += 1;
        obj["metadata"]["resourceVersion"] = json!(r.version.to_string());
        if kind == "DELETED" {
            r.objects.remove(&key(&obj));
        } else {
            r.objects.insert(key(&obj), obj.clone());
        }
        let event = json!({"type": kind, "object": obj});
        r.history.push((r.version, event.clone()));
        r.watches.retain(|w| w.send(Some(event.clone())).is_ok());
    }

    pub fn apply(&self, resource: &'static str, obj: Value) {
        let exists = self
            .inner
            .lock()
            .expect("mock lock")
            .resources
            .get(resource)
            .is_some_and(|r| r.objects.contains_key(&key(&obj)));
        self.event(resource, if exists { "MODIFIED" } else { "ADDED" }, obj);
    }

    pub fn delete(&self, resource: &'static str, obj: Value) {
        self.event(resource, "DELETED", obj);
    }

    /// Changes the objects without telling the watches, and forgets the history (the
    /// watch cache moved past what the watches saw: they must relist).
    pub fn change_silently(&self, resource: &'static str, f: impl FnOnce(&mut BTreeMap<String, Value>)) {
        let mut inner = self.inner.lock().expect("mock lock");
        let r = inner.resources.entry(resource).or_default();
        f(&mut r.objects);
        r.version += 1;
        r.history.clear();
    }

    /// Ends `resource`'s watches with `410 Gone`, as an API server whose watch cache no
    /// longer has the watcher's resource version does.
    pub fn expire_watches(&self, resource: &'static str) {
        let gone = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version: 100 (150)", "reason": "Expired", "code": 410
        }});
        let mut inner = self.inner.lock().expect("mock lock");
        let r = inner.resources.entry(resource).or_default();
        for w in r.watches.drain(..) {
            let _ = w.send(Some(gone.clone()));
            let _ = w.send(None);
        }
    }

    /// Takes the API server down (every request fails, live watches closed) or back up.
    pub fn set_down(&self, down: bool) {
        let mut inner = self.inner.lock().expect("mock lock");
        inner.down = down;
        if down {
            for r in inner.resources.values_mut() {
                for w in r.watches.drain(..) {
                    let _ = w.send(None);
                }
            }
        }
    }

    /// How many times `resource` was listed.
    pub fn lists(&self, resource: &'static str) -> u64 {
        self.inner.lock().expect("mock lock").resources.get(resource).map_or(0, |r| r.lists)
    }
}
