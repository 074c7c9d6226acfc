//! The control API: JSON over HTTP/1.1 on a Unix socket (routes in `vswitch_api`).
//!
//! Every error is an [`ErrorBody`] with a stable code: a malformed body is
//! `invalid_json` (400) and names what is wrong, a body over [`MAX_BODY`] is
//! `payload_too_large` (413), an unknown route `not_found` (404). Attach and detach run
//! one at a time (the switch is behind a mutex); reads do not wait for kernel work
//! longer than the change in progress.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use vswitch_api::{
    AttachRequest, CaptureRequest, ConntrackView, DetachOutcome, ErrorBody, FdbEntry, FlowsRequest,
    LiveTraceRequest, NodesView, PortStats, ServicesView, Stats, Status, TraceRequest, TraceView,
    WorkerStats, codes,
};

use super::ports::AttachError;
use super::switch::Switch;
use vswitch_dataplane::datapath::Datapath;
use vswitch_dataplane::drop_reason::DropReason;
use vswitch_dataplane::ids::PortId;
use vswitch_dataplane::stats::StatsSnapshot;

/// Largest request body accepted. An attach request is a few hundred bytes.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// What the handlers share.
pub(crate) struct ApiState {
    pub switch: Mutex<Switch>,
    pub version: &'static str,
    /// Cluster mode's watchers.
    pub cluster: Option<super::cluster::StatusHandle>,
}

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body: ErrorBody::new(code, message),
        }
    }
}

impl ApiError {
    /// `400 invalid_request`: a request the daemon cannot act on, saying why.
    pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(400, codes::INVALID_REQUEST, message)
    }
}

impl From<AttachError> for ApiError {
    fn from(e: AttachError) -> ApiError {
        let (status, code) = e.code();
        if status >= 500 {
            tracing::error!(error = %e, "request failed");
        }
        ApiError::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// A JSON body, decoded with our own errors: any content type is accepted (so plain
/// `curl -d` works), and serde's message says which field is wrong and where.
pub(crate) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(413, codes::PAYLOAD_TOO_LARGE, format!("request body over {MAX_BODY} bytes"))
            } else {
                ApiError::new(400, codes::INVALID_JSON, rejection.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::new(400, codes::INVALID_JSON, format!("request body: {e}")))
    }
}

type Shared = Arc<ApiState>;

/// The API's routes.
pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/ports", get(list_ports).post(attach))
        .route("/v1/ports/{container_id}/{ifname}", get(get_port).delete(detach))
        .route("/v1/fdb", get(fdb))
        .route("/v1/stats", get(stats))
        .route("/v1/services", get(services))
        .route("/v1/services/reload", axum::routing::post(reload_services))
        .route("/v1/nodes", get(nodes))
        .route("/v1/nodes/reload", axum::routing::post(reload_nodes))
        .route("/v1/conntrack", get(conntrack))
        .route("/v1/trace", axum::routing::post(trace))
        .route("/v1/trace/live", axum::routing::post(trace_live))
        .route("/v1/capture", axum::routing::post(capture))
        .route("/v1/flows", axum::routing::post(flows))
        .fallback(|| async {
            ApiError::new(
                404,
                codes::NOT_FOUND,
                "no such route; see /v1/status, /v1/ports, /v1/fdb, /v1/stats, /v1/services, /v1/conntrack, /v1/nodes, /v1/trace, /v1/trace/live, /v1/capture, /v1/flows",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(405, codes::METHOD_NOT_ALLOWED, "method not allowed on this route")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn status(State(s): State<Shared>) -> axum::Json<Status> {
    let m = s.switch.lock().await;
    let c = m.config();
    axum::Json(Status {
        node_name: c.node_name.clone(),
        version: s.version.to_string(),
        pod_cidr: c.pod_cidr,
        gateway_ip: c.gateway_ip,
        gateway_mac: c.gateway_mac.to_string(),
        mtu: c.mtu,
        default_backend: c.port_backend,
        workers: m.datapath().workers(),
        ports: m.pod_count(),
        node_ip: c.node_ip,
        uplink: m.uplink_name().map(str::to_string),
        underlay: m.underlay_summary(),
        cluster: s.cluster.as_ref().map(|c| c.get()),
        started: Some(m.started().to_string()),
        captures_open: m.datapath().captures().len(),
        flow_logs_open: m.datapath().captures().flow_watches(),
        live_traces_open: m.datapath().captures().live_traces(),
    })
}

/// Kernel work runs in a task of its own: a client that hangs up mid-way does not cancel
/// an attach or detach half-done.
async fn run_to_completion<T: Send + 'static>(
    work: impl Future<Output = Result<T, AttachError>> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(work).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(500, codes::INTERNAL, format!("port change failed: {e}"))),
    }
}

async fn attach(
    State(s): State<Shared>,
    JsonBody(req): JsonBody<AttachRequest>,
) -> Result<Response, ApiError> {
    let (port, created) = run_to_completion(async move { s.switch.lock().await.attach(&req) }).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(port)).into_response())
}

async fn list_ports(State(s): State<Shared>) -> impl IntoResponse {
    axum::Json(s.switch.lock().await.ports())
}

async fn get_port(
    State(s): State<Shared>,
    Path((cid, ifname)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    match s.switch.lock().await.port(&cid, &ifname) {
        Some(p) => Ok(axum::Json(p).into_response()),
        None => Err(ApiError::new(404, codes::NOT_FOUND, format!("no port for {cid}/{ifname}"))),
    }
}

async fn detach(
    State(s): State<Shared>,
    Path((cid, ifname)): Path<(String, String)>,
) -> Result<axum::Json<DetachOutcome>, ApiError> {
    let existed = run_to_completion(async move { s.switch.lock().await.detach(&cid, &ifname) }).await?;
    Ok(axum::Json(DetachOutcome { existed }))
}

async fn services(State(s): State<Shared>) -> axum::Json<ServicesView> {
    axum::Json(s.switch.lock().await.services_view())
}

/// Reads the services file now: the answer says at once whether it was taken.
async fn reload_services(State(s): State<Shared>) -> Result<axum::Json<ServicesView>, ApiError> {
    let mut m = s.switch.lock().await;
    let Some(path) = m.services_file().map(ToOwned::to_owned) else {
        return Err(ApiError::new(400, codes::INVALID_REQUEST, "no services file is configured"));
    };
    let text = super::daemon::read_watched_file(&path)
        .map_err(|e| ApiError::new(400, codes::INVALID_SERVICES, e.to_string()))?;
    m.services_file_read(text, true)
        .map_err(|e| ApiError::new(400, codes::INVALID_SERVICES, e.to_string()))?;
    Ok(axum::Json(m.services_view()))
}

async fn nodes(State(s): State<Shared>) -> axum::Json<NodesView> {
    axum::Json(s.switch.lock().await.nodes_view())
}

/// Reads the nodes file now: the answer says at once whether it was taken.
async fn reload_nodes(State(s): State<Shared>) -> Result<axum::Json<NodesView>, ApiError> {
    let mut m = s.switch.lock().await;
    let Some(path) = m.nodes_file().map(ToOwned::to_owned) else {
        return Err(ApiError::new(400, codes::INVALID_REQUEST, "no nodes file is configured"));
    };
    let text = super::daemon::read_watched_file(&path)
        .map_err(|e| ApiError::new(400, codes::INVALID_NODES, e.to_string()))?;
    m.nodes_file_read(text, true).map_err(|e| ApiError::new(400, codes::INVALID_NODES, e.to_string()))?;
    Ok(axum::Json(m.nodes_view()))
}

#[derive(serde::Deserialize)]
struct ConntrackQuery {
    limit: Option<usize>,
}

async fn conntrack(
    State(s): State<Shared>,
    axum::extract::Query(q): axum::extract::Query<ConntrackQuery>,
) -> axum::Json<ConntrackView> {
    axum::Json(s.switch.lock().await.conntrack_view(q.limit.unwrap_or(1000)))
}

async fn trace(
    State(s): State<Shared>,
    JsonBody(req): JsonBody<TraceRequest>,
) -> Result<axum::Json<TraceView>, ApiError> {
    super::trace::run(&*s.switch.lock().await, &req).map(axum::Json)
}

/// An answer made piece by piece as the client reads it: captures, flow logs, live
/// traces. `None` ends it.
pub(crate) trait Pieces: Send + 'static {
    fn next_piece(&mut self) -> impl std::future::Future<Output = Option<Vec<u8>>> + Send;
}

/// The body stream of `pieces`: a piece is made only when the connection asks for more.
pub(crate) fn streamed(
    pieces: impl Pieces,
) -> impl futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> {
    futures::stream::unfold(pieces, |mut p| async move {
        let piece = p.next_piece().await?;
        Some((Ok(axum::body::Bytes::from(piece)), p))
    })
}

/// Answers with the live trace's JSON lines once it is open.
async fn trace_live(
    State(s): State<Shared>,
    JsonBody(req): JsonBody<LiveTraceRequest>,
) -> Result<Response, ApiError> {
    let live = super::trace::open_live(&*s.switch.lock().await, &req)?;
    let body = axum::body::Body::from_stream(super::trace::live_stream(live));
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// Answers with the pcapng stream once the capture is open; a bad request is refused
/// before anything starts.
async fn capture(
    State(s): State<Shared>,
    JsonBody(req): JsonBody<CaptureRequest>,
) -> Result<Response, ApiError> {
    let opened = super::capture::open(&*s.switch.lock().await, &req)?;
    let body = axum::body::Body::from_stream(super::capture::stream(opened, s.version));
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-pcapng")], body).into_response())
}

/// Answers with the flow log's JSON lines once it is open.
async fn flows(State(s): State<Shared>, JsonBody(req): JsonBody<FlowsRequest>) -> Result<Response, ApiError> {
    let following = super::flows::open(&*s.switch.lock().await, &req)?;
    let body = axum::body::Body::from_stream(super::flows::stream(following));
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

async fn fdb(State(s): State<Shared>) -> axum::Json<Vec<FdbEntry>> {
    let m = s.switch.lock().await;
    let names = m.port_names();
    let dp = m.datapath();
    let entries = dp
        .fdb()
        .records(dp.now())
        .into_iter()
        .map(|r| FdbEntry {
            segment: r.segment.0,
            mac: r.mac.to_string(),
            port: r.port.0,
            port_name: names.get(&r.port).cloned(),
            age_secs: r.age_secs,
        })
        .collect();
    axum::Json(entries)
}

async fn stats(State(s): State<Shared>) -> axum::Json<Stats> {
    axum::Json(api_stats(&*s.switch.lock().await))
}

/// The API's view of the counters: attached ports always, other port ids only if they
/// counted something (a port detached since).
pub(crate) fn api_stats(m: &Switch) -> Stats {
    let dp = m.datapath();
    let mut stats = stats_of(&dp.stats(), &m.port_names(), dp);
    if let Some(before) = m.counted_before() {
        add_counts(&mut stats, before);
    }
    stats
}

/// Adds what a previous daemon counted (a takeover's) to this one's counts: ports by
/// name (ids of the uplink and the underlay change), drops and events by name, workers
/// by index. Table sizes are this daemon's alone.
fn add_counts(stats: &mut Stats, before: &Stats) {
    for old in &before.ports {
        // A port without a name (gone, but with counts) is matched by its id alone.
        let same = |p: &PortStats| {
            if old.name.is_empty() { p.id == old.id && p.name.is_empty() } else { p.name == old.name }
        };
        match stats.ports.iter().position(same) {
            Some(i) => {
                let p = &mut stats.ports[i];
                p.rx_packets += old.rx_packets;
                p.rx_bytes += old.rx_bytes;
                p.tx_packets += old.tx_packets;
                p.tx_bytes += old.tx_bytes;
                for (reason, n) in &old.drops {
                    *p.drops.entry(reason.clone()).or_default() += n;
                }
            }
            // A port gone before the takeover keeps its line while its id is free.
            None if !stats.ports.iter().any(|p| p.id == old.id) => stats.ports.push(old.clone()),
            None => {}
        }
    }
    stats.ports.sort_by_key(|p| p.id);
    for (reason, n) in &before.drops {
        *stats.drops.entry(reason.clone()).or_default() += n;
    }
    for (event, n) in &before.events {
        *stats.events.entry(event.clone()).or_default() += n;
    }
    for (w, old) in stats.workers.iter_mut().zip(&before.workers) {
        w.polls += old.polls;
        w.busy_polls += old.busy_polls;
        w.sleeps += old.sleeps;
    }
}

fn stats_of(snap: &StatsSnapshot, names: &BTreeMap<PortId, String>, dp: &Datapath) -> Stats {
    let ports = snap
        .ports
        .iter()
        .enumerate()
        .filter(|(id, p)| {
            names.contains_key(&PortId(*id as u16)) || p.rx_packets + p.tx_packets + p.dropped() > 0
        })
        .map(|(id, p)| PortStats {
            id: id as u16,
            name: names.get(&PortId(id as u16)).cloned().unwrap_or_default(),
            rx_packets: p.rx_packets,
            rx_bytes: p.rx_bytes,
            tx_packets: p.tx_packets,
            tx_bytes: p.tx_bytes,
            drops: p.drops.iter().map(|(r, n)| (r.name().to_string(), *n)).collect(),
        })
        .collect();
    let e = &snap.events;
    let events = [
        ("fdb_learned", e.fdb_learned),
        ("fdb_moved", e.fdb_moved),
        ("fdb_full", e.fdb_full),
        ("flooded", e.flooded),
        ("flood_copies", e.flood_copies),
        ("arp_replies", e.arp_replies),
        ("gso_segmented", e.gso_segmented),
        ("gso_segments", e.gso_segments),
        ("gro_coalesced", e.gro_coalesced),
        ("gro_segments", e.gro_segments),
        ("checksums_completed", e.checksums_completed),
        ("handoff_sent", e.handoff_sent),
        ("handoff_received", e.handoff_received),
        ("rx_errors", e.rx_errors),
        ("service_flows", e.service_flows),
        ("service_rejects", e.service_rejects),
        ("icmp_translated", e.icmp_translated),
        ("overlay_encapsulated", e.overlay_encapsulated),
        ("overlay_whole", e.overlay_whole),
        ("overlay_whole_received", e.overlay_whole_received),
        ("overlay_decapsulated", e.overlay_decapsulated),
        ("frag_needed_sent", e.frag_needed_sent),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Stats {
        ports,
        drops: DropReason::ALL.iter().map(|r| (r.name().to_string(), snap.drops_of(*r))).collect(),
        drop_descriptions: DropReason::ALL
            .iter()
            .map(|r| (r.name().to_string(), r.description().to_string()))
            .collect(),
        events,
        fdb_entries: dp.fdb().len(),
        conntrack_entries: dp.conntrack().len(),
        conntrack_max_entries: dp.conntrack().config().max_entries,
        affinity_entries: dp.affinity().len(),
        workers: snap
            .workers
            .iter()
            .enumerate()
            .map(|(id, w)| WorkerStats {
                id,
                polls: w.polls,
                busy_polls: w.busy_polls,
                sleeps: w.sleeps,
                busy_ratio: w.busy_ratio,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vswitch_api::PortStats;

    fn port(id: u16, name: &str, rx: u64, drops: &[(&str, u64)]) -> PortStats {
        PortStats {
            id,
            name: name.into(),
            rx_packets: rx,
            rx_bytes: rx * 100,
            tx_packets: 0,
            tx_bytes: 0,
            drops: drops.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
        }
    }

    /// After a takeover the counts go on: ports by name (the underlay's id changed), a
    /// port gone earlier kept while its id is free, totals and events summed.
    #[test]
    fn a_takeovers_counts_go_on_from_the_previous_daemons() {
        let before = Stats {
            ports: vec![
                port(2, "pod a", 10, &[("port_security", 1)]),
                port(3, "gone pod", 5, &[]),
                port(4, "underlay vxlan/4789", 7, &[]),
                port(5, "gone too", 1, &[]),
            ],
            drops: [("port_security".to_string(), 1)].into(),
            events: [("flooded".to_string(), 4)].into(),
            ..Default::default()
        };
        let mut now = Stats {
            ports: vec![port(2, "pod a", 1, &[("port_security", 2)]), port(5, "underlay vxlan/4789", 2, &[])],
            drops: [("port_security".to_string(), 2), ("no_route".to_string(), 1)].into(),
            events: [("flooded".to_string(), 1)].into(),
            ..Default::default()
        };
        add_counts(&mut now, &before);
        let rx: Vec<(u16, &str, u64)> =
            now.ports.iter().map(|p| (p.id, p.name.as_str(), p.rx_packets)).collect();
        assert_eq!(rx, [(2, "pod a", 11), (3, "gone pod", 5), (5, "underlay vxlan/4789", 9)]);
        assert_eq!(now.ports[0].drops["port_security"], 3);
        assert_eq!((now.drops["port_security"], now.drops["no_route"]), (3, 1));
        assert_eq!(now.events["flooded"], 5);
    }
}
