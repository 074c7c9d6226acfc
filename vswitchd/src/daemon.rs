//! `vswitchd`'s life: start the data plane and the host port, re-attach the ports of
//! the previous run, serve the API and metrics, age the FDB, and on SIGTERM or SIGINT
//! stop cleanly, leaving every pod's device and the state file for the next start.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Mutex, mpsc, watch};

use super::api::{self, ApiState};
use super::config::{Config, ConfigError, IdleMode};
use super::metrics;
use super::ports::{AttachError, LinuxKernel, NETNS_DIRS, RouteSync};
use super::snapshot::{self, Restored, TablesSnapshot};
use super::state::{self, StateError};
use super::switch::Switch;
use super::takeover::giving::Passed;
use super::takeover::taking::{Taken, Took, take_over};
use super::takeover::{self, Retire, Retiring, TakeoverError};
use vswitch_dataplane::datapath::IdlePolicy;
use vswitch_dataplane::datapath::{Datapath, DatapathConfig, DatapathError};
use vswitch_dataplane::frame::DEFAULT_BUF_SIZE;
use vswitch_dataplane::tables::Tables;
use vswitch_dataplane::tables::fdb::FdbConfig;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("starting the data plane: {0}")]
    Datapath(#[from] DatapathError),
    #[error("{0}")]
    Ports(#[from] AttachError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("state lock {path}: {source}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("API socket {path}: {source}")]
    Socket {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Takeover(#[from] TakeoverError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The data plane's settings from the daemon's configuration.
pub fn datapath_config(config: &Config) -> DatapathConfig {
    DatapathConfig {
        workers: config.workers,
        max_ports: config.max_ports,
        batch_size: config.batch_size,
        handoff_capacity: 4096,
        fdb: FdbConfig { max_entries_per_segment: config.fdb_max_entries, aging_secs: config.fdb_aging_secs },
        conntrack: config.conntrack,
        buf_size: DEFAULT_BUF_SIZE,
        idle: match config.idle {
            // Every queue of the daemon has a readiness fd; the timeout is a safety net.
            IdleMode::Adaptive => IdlePolicy::Adaptive {
                poll: Duration::from_micros(u64::from(config.idle_poll_us)),
                sleep: Duration::from_millis(100),
            },
            IdleMode::Epoll => {
                IdlePolicy::Adaptive { poll: Duration::ZERO, sleep: Duration::from_millis(100) }
            }
            IdleMode::BusyPoll => IdlePolicy::BusyPoll,
        },
        pin_cpus: (!config.pin_cpus.is_empty()).then(|| config.pin_cpus.clone()),
    }
}

/// Takes an exclusive lock on `<state_file>.lock`, held while the daemon runs; waits
/// up to `wait` for another daemon to let it go.
fn lock_state(state_file: &Path, wait: Duration) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match try_lock_state(state_file) {
            Err(DaemonError::Lock { source, .. })
                if source.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn try_lock_state(state_file: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    let mut path = state_file.as_os_str().to_owned();
    path.push(".lock");
    let path = std::path::PathBuf::from(path);
    let err = |source| DaemonError::Lock { path: path.display().to_string(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let file =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(err)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        let e = std::io::Error::from(errno);
        if errno == nix::errno::Errno::EWOULDBLOCK {
            err(std::io::Error::new(e.kind(), "another vswitchd holds it"))
        } else {
            err(e)
        }
    })
}

/// Binds the API socket: parent directory created private to root, a stale socket of a
/// dead daemon replaced, a live one refused, the socket itself mode 0600.
async fn bind_api_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    let err = |source| DaemonError::Socket { path: path.display().to_string(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another vswitchd is listening there",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// A watched file's content; `None` when it does not exist (nothing from it).
pub fn read_watched_file(path: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError {
            file: path.to_path_buf(),
            line: 0,
            field: "(file)".into(),
            message: format!("cannot read: {e}"),
        }),
    }
}

/// How often a watched file (services, nodes) is looked at. Polling, not inotify: it
/// sees every way a file is replaced (rename over it, a ConfigMap's symlink swap, an
/// editor's truncate and rewrite) and costs one small read a second.
const WATCH_POLL: Duration = Duration::from_secs(1);
/// A changed file is read again after this, and taken only if it is the same: a file
/// caught half-written is not applied (a truncated file would remove Services).
const WATCH_SETTLE: Duration = Duration::from_millis(200);

/// Housekeeping rounds (seconds) between looks at the nodes' next hops on the uplink.
const NEXT_HOP_REFRESH_ROUNDS: u64 = 2;

/// Housekeeping rounds (seconds) between looks for pods gone without a detach.
const VANISHED_POD_ROUNDS: u64 = 5;
/// Housekeeping rounds between checks that the node's routes through the host port are
/// all there (changes of nodes and Services sync them at once; this puts back what
/// someone removed, at the cost of a route dump: 10 000 ClusterIPs are as many routes).
const NODE_ROUTE_ROUNDS: u64 = 10;

/// What a watched file feeds.
type Apply = fn(&mut Switch, Option<String>) -> Result<bool, ConfigError>;

/// Applies a watched file whenever its content changes (and once at start); `what`
/// names it in logs.
async fn watch_file(state: Arc<ApiState>, path: std::path::PathBuf, what: &'static str, apply: Apply) {
    let mut last: Option<Result<Option<String>, String>> = None;
    let mut tick = tokio::time::interval(WATCH_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let read = read_watched_file(&path).map_err(|e| e.to_string());
        if last.as_ref() == Some(&read) {
            continue;
        }
        if last.is_some() {
            tokio::time::sleep(WATCH_SETTLE).await;
            if read_watched_file(&path).map_err(|e| e.to_string()) != read {
                continue;
            }
        }
        last = Some(read.clone());
        match read {
            Err(e) => tracing::error!(error = %e, file = what, "cannot read; keeping what it gave before"),
            Ok(text) => {
                if let Err(e) = apply(&mut *state.switch.lock().await, text) {
                    tracing::error!(error = %e, file = what, "not applied; keeping what it gave before");
                }
            }
        }
    }
}

async fn terminated() {
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Cluster mode: where the Services and nodes come from instead of the files.
pub struct ClusterMode {
    pub client: kube::Client,
}

/// Runs the daemon until SIGTERM or SIGINT, or until a newer one takes over. Must run
/// on a multi-threaded runtime. With `cluster`, Services and other nodes come from the
/// Kubernetes API (the services and nodes files are not read). With `takeover`, it
/// first takes the place of the daemon running on the same sockets, if one is
/// ([`crate::takeover`]), which then retires as asked.
pub async fn run(
    config: Config,
    version: &'static str,
    cluster: Option<ClusterMode>,
    takeover: Option<Retire>,
) -> Result<(), DaemonError> {
    let mut wait_for_lock = Duration::ZERO;
    if let Some(retire) = takeover {
        match take_over(&config, version, cluster.is_some(), retire).await? {
            Took::Over(taken) => {
                let Taken { switch, lock, api, metrics } = *taken;
                let listener = match api {
                    Some(l) => UnixListener::from_std(l).map_err(|source| DaemonError::Socket {
                        path: config.api_socket.display().to_string(),
                        source,
                    })?,
                    None => bind_api_socket(&config.api_socket).await?,
                };
                let metrics = match metrics {
                    Some(l) => Some(TcpListener::from_std(l).map_err(|source| DaemonError::Socket {
                        path: format!("metrics {:?}", config.metrics_address),
                        source,
                    })?),
                    None => bind_metrics(&config).await,
                };
                let passed = duplicate_lock(&config, &lock)?;
                let ending =
                    serve(config, version, Listeners { api: listener, metrics }, switch, cluster, passed)
                        .await;
                // The lock goes last: a successor waiting for it must find everything
                // of this daemon's undone or handed on.
                drop(lock);
                return retire_after(ending?).await;
            }
            Took::NothingRunning => tracing::info!("no running vswitchd to take over: starting"),
            Took::Restart(reason) => {
                tracing::warn!(%reason, "takeover refused: the running vswitchd stops; starting as after a restart");
                wait_for_lock = TAKEOVER_RESTART_WAIT;
            }
        }
    }
    // First, before touching any port: another daemon on the same state means this one
    // must not start (it would reopen the other's TAP queues and split their traffic,
    // and take its XDP programs away). The lock lives as long as this call.
    let lock = tokio::task::block_in_place(|| lock_state(&config.state_file, wait_for_lock))?;
    let listener = bind_api_socket(&config.api_socket).await?;
    let started = start(&config).await;
    let switch = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&config.api_socket);
            return Err(e);
        }
    };
    let metrics = bind_metrics(&config).await;
    let passed = duplicate_lock(&config, &*lock)?;
    let ending = serve(config, version, Listeners { api: listener, metrics }, switch, cluster, passed).await;
    drop(lock);
    retire_after(ending?).await
}

/// A copy of the state lock's descriptor, for a daemon taking over (the lock is the
/// open file's: it holds while any copy is open).
fn duplicate_lock(config: &Config, lock: &impl AsFd) -> Result<OwnedFd, DaemonError> {
    lock.as_fd()
        .try_clone_to_owned()
        .map_err(|source| DaemonError::Lock { path: format!("{}.lock", config.state_file.display()), source })
}

/// How [`serve`] ended.
enum Ending {
    Stopped,
    /// Stopped for a successor, which asked this daemon to wait for its SIGTERM then.
    StoppedThenWait,
}

/// After the lock is let go: exit, or wait for SIGTERM first.
async fn retire_after(ending: Ending) -> Result<(), DaemonError> {
    if let Ending::StoppedThenWait = ending {
        tracing::info!("waiting for SIGTERM (a DaemonSet's old pod: its container must not restart)");
        terminated().await;
    }
    Ok(())
}

/// How long a daemon whose takeover was refused waits for the running one to stop.
const TAKEOVER_RESTART_WAIT: Duration = Duration::from_secs(60);

/// The metrics listener. Metrics are for people; a port in use there must not stop
/// the switching.
async fn bind_metrics(config: &Config) -> Option<TcpListener> {
    let addr = config.metrics_address?;
    match TcpListener::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(%addr, error = %e, "metrics endpoint not available; switching goes on without it");
            None
        }
    }
}

struct Listeners {
    api: UnixListener,
    metrics: Option<TcpListener>,
}

/// The data plane, the host port and the ports of the previous run.
async fn start(config: &Config) -> Result<Switch, DaemonError> {
    let datapath = Datapath::start(datapath_config(config), Tables::empty())?;
    tracing::info!(
        node = %config.node_name, pod_cidr = %config.pod_cidr, gateway = %config.gateway_ip,
        workers = datapath.workers(), backend = %config.port_backend, "data plane started"
    );
    if config.mtu_exceeds_overlay() {
        tracing::warn!(
            mtu = config.mtu,
            underlay_mtu = config.overlay.underlay_mtu,
            "pod MTU leaves no room for VXLAN: larger packets to other nodes get fragmentation-needed (or are dropped without DF)"
        );
    }
    let kernel = Arc::new(LinuxKernel::connect().map_err(AttachError::from)?);
    let mut switch = Switch::new(config.clone(), datapath, kernel)?;
    switch.start_host_port()?;
    let mut carried = load_snapshot(config);
    let away_secs = carried.as_ref().map_or(0, TablesSnapshot::age_secs);
    let mut restored = Restored::default();
    let previous = match state::load(&config.state_file) {
        Ok(saved) => saved,
        // Not a crash loop: the kept file is there for the operator, and the ports whose
        // devices still exist are found by the tags on them.
        Err(e @ StateError::Corrupt { .. }) => {
            tracing::error!(error = %e, "state file unusable: recovering ports from their devices");
            let found = switch.recover_from_devices(&NETNS_DIRS);
            tracing::warn!(ports = found.ports.len(), "ports found by their device tags");
            Some(found)
        }
        Err(e) => return Err(e.into()),
    };
    // The flows of the pods go back before the pods do: the first packet a restored pod
    // sends may be an endpoint's, speaking first on a Service connection.
    if let Some(snapshot) = &mut carried {
        let names = previous.as_ref().map(|saved| switch.port_names_of(saved)).unwrap_or_default();
        switch.carry_over(snapshot, &names, away_secs, &mut restored);
    }
    let restarted = previous.is_some();
    if let Some(saved) = previous {
        let report = switch.restore(saved);
        for port in &report.restored {
            tracing::info!(port = %port, "re-attached");
        }
        for (port, reason) in &report.dropped {
            tracing::warn!(port = %port, reason = %reason, "not re-attached; dropped from the state");
        }
    }
    // After the pods: an uplink that cannot start costs NodePorts, not pod traffic.
    if let Err(e) = switch.start_uplink() {
        tracing::error!(error = %e, "uplink not started: NodePorts are not reachable from outside the node");
    }
    if let Err(e) = switch.start_underlay() {
        tracing::error!(error = %e, "underlay not started: pods on other nodes are not reachable");
    }
    if let Some(mut snapshot) = carried {
        let names = switch.port_names();
        switch.carry_over(&mut snapshot, &names, away_secs, &mut restored);
        snapshot.finish(&mut restored);
        tracing::info!(
            flows = restored.flows,
            affinities = restored.affinity,
            learned_macs = restored.fdb,
            expired = restored.expired,
            dropped = restored.dropped,
            away_secs,
            "tables snapshot taken back"
        );
        switch.set_started(format!(
            "restart, with the tables snapshot of the last stop ({} flows back, {} s away)",
            restored.flows, away_secs
        ));
    } else if restarted {
        switch.set_started("restart, without a tables snapshot (after a crash, or too old)".into());
    }
    Ok(switch)
}

/// The tables snapshot of the last clean stop, if there is a usable one (it is removed
/// as it is read: a later crash does not bring it back).
fn load_snapshot(config: &Config) -> Option<TablesSnapshot> {
    if config.snapshot_max_age_secs == 0 {
        return None;
    }
    let path = snapshot::path_for(&config.state_file);
    let max_age = Duration::from_secs(u64::from(config.snapshot_max_age_secs));
    match snapshot::load(&path, max_age) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "starting with empty tables: flows to Services resume when their clients speak");
            None
        }
    }
}

/// Serves the API and metrics until a signal, then stops cleanly. `lock` is a copy of
/// the state lock's descriptor, for a daemon taking over.
async fn serve(
    config: Config,
    version: &'static str,
    listeners: Listeners,
    switch: Switch,
    cluster: Option<ClusterMode>,
    lock: OwnedFd,
) -> Result<Ending, DaemonError> {
    let status = cluster.as_ref().map(|_| super::cluster::StatusHandle::new(&config.node_name));
    let shared = Arc::new(ApiState { switch: Mutex::new(switch), version, cluster: status.clone() });
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let socket_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| DaemonError::Socket { path, source }
    };
    let passed = Passed {
        lock,
        api: listeners.api.as_fd().try_clone_to_owned().map_err(socket_err(&config.api_socket))?,
        metrics: match &listeners.metrics {
            Some(l) => Some((
                l.as_fd().try_clone_to_owned().map_err(socket_err(Path::new("metrics listener")))?,
                l.local_addr().map_err(socket_err(Path::new("metrics listener")))?,
            )),
            None => None,
        },
        cluster: cluster.is_some(),
    };
    let api_server = tokio::spawn(super::api_connections::serve(
        listeners.api,
        api::router(shared.clone()),
        stop_rx.clone(),
        super::api_connections::ConnLimits::DEFAULT,
    ));
    tracing::info!(socket = %config.api_socket.display(), "API listening");
    let takeover_socket = takeover::socket_path(&config.api_socket);
    let (retiring_tx, mut retiring_rx) = mpsc::channel(1);
    let takeover_busy = Arc::new(AtomicBool::new(false));
    let takeovers = tokio::spawn(takeover::giving::serve(
        takeover::giving::bind(&takeover_socket)?,
        shared.clone(),
        passed,
        takeover_busy.clone(),
        retiring_tx,
    ));

    let metrics_server = listeners.metrics.map(|listener| {
        let state = shared.clone();
        let addr = listener.local_addr().ok();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let state = state.clone();
                async move {
                    let m = state.switch.lock().await;
                    let stats = api::api_stats(&m);
                    let cluster = state.cluster.as_ref().map(|c| c.get());
                    let c = m.datapath().captures();
                    let open = metrics::ObserversOpen {
                        captures: c.len(),
                        flow_logs: c.flow_watches(),
                        live_traces: c.live_traces(),
                    };
                    let body = metrics::render_with(&stats, m.pod_count(), open, cluster.as_ref());
                    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
                }
            }),
        );
        tracing::info!(addr = ?addr, "metrics listening");
        tokio::spawn(
            axum::serve(listener, app).with_graceful_shutdown(stopped(stop_rx.clone())).into_future(),
        )
    });

    let housekeeping = {
        let state = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for round in 0u64.. {
                tick.tick().await;
                let mut m = state.switch.lock().await;
                let done = m.datapath().housekeeping();
                if done.flows_expired > 0 {
                    m.services_housekeeping();
                }
                if round % NEXT_HOP_REFRESH_ROUNDS == 0 {
                    m.refresh_next_hops();
                }
                if round % NODE_ROUTE_ROUNDS == NODE_ROUTE_ROUNDS - 1 {
                    m.sync_node_routes(RouteSync::Check);
                }
                if round % VANISHED_POD_ROUNDS == 0 {
                    m.reap_vanished();
                }
                drop(m);
                if done != Default::default() {
                    tracing::debug!(
                        fdb_aged = done.fdb_aged,
                        flows_expired = done.flows_expired,
                        affinities_expired = done.affinities_expired,
                        "housekeeping"
                    );
                }
            }
        })
    };

    let mut watches = Vec::new();
    if let (Some(mode), Some(status)) = (cluster, status) {
        let state = shared.clone();
        let apply = move |snap: super::cluster::Snapshot| {
            let state = state.clone();
            async move {
                let mut m = state.switch.lock().await;
                match snap.services {
                    super::cluster::ServicesChange::All(all) => m.cluster_services(all),
                    super::cluster::ServicesChange::Some { upsert, removed } => {
                        m.cluster_services_changed(upsert, &removed);
                    }
                }
                if let Some(nodes) = snap.nodes {
                    m.cluster_nodes(nodes);
                }
            }
        };
        tracing::info!(node = %config.node_name, "cluster mode: watching Nodes, Services and EndpointSlices");
        watches.push(tokio::spawn(super::cluster::run(mode.client, config.node_name.clone(), status, apply)));
    }
    {
        let m = shared.switch.lock().await;
        if let Some(path) = m.services_file() {
            let apply: Apply = |m, text| m.services_file_read(text, false);
            watches.push(tokio::spawn(watch_file(shared.clone(), path.to_owned(), "services file", apply)));
        }
        if let Some(path) = m.nodes_file() {
            let apply: Apply = |m, text| m.nodes_file_read(text, false);
            watches.push(tokio::spawn(watch_file(shared.clone(), path.to_owned(), "nodes file", apply)));
        }
    }

    let mut then_wait = false;
    let mut retiring = tokio::select! {
        _ = terminated() => None,
        r = retiring_rx.recv() => r,
    };
    let signalled = retiring.is_none();
    // A signal in the middle of a takeover: its outcome first (a clean stop now would
    // undo what the new daemon is adopting).
    while retiring.is_none() && takeover_busy.load(Ordering::SeqCst) {
        tracing::info!("stopping once the takeover under way has ended");
        retiring = tokio::select! {
            r = retiring_rx.recv() => r,
            _ = tokio::time::sleep(Duration::from_millis(20)) => None,
        };
    }
    match retiring {
        Some(Retiring::Restart { reason, retire }) => {
            tracing::info!(%reason, "stopping for the new vswitchd to start in this one's place");
            then_wait = retire == Retire::Wait;
        }
        Some(Retiring::HandedOver) => {
            // Nothing here is this process's any more: stop taking connections on the
            // listeners the new daemon shares, and wait to be told to go.
            let _ = stop_tx.send(true);
            takeovers.abort();
            housekeeping.abort();
            for w in watches {
                w.abort();
            }
            if !signalled {
                terminated().await;
            }
            takeover::giving::retire_now("handed over earlier: exiting")
        }
        None => {}
    }
    takeovers.abort();
    let _ = takeovers.await;
    let _ = std::fs::remove_file(&takeover_socket);
    let _ = stop_tx.send(true);
    housekeeping.abort();
    let _ = housekeeping.await;
    for w in watches {
        w.abort();
        let _ = w.await;
    }
    let _ = api_server.await;
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    let _ = std::fs::remove_file(&config.api_socket);
    match Arc::into_inner(shared) {
        Some(state) => state.switch.into_inner().shutdown(),
        None => tracing::error!("API state still referenced at shutdown; state file not rewritten"),
    }
    tracing::info!("stopped; pods keep their interfaces until the next start");
    Ok(if then_wait { Ending::StoppedThenWait } else { Ending::Stopped })
}
