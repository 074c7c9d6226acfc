//! The new daemon's side of a takeover (`vswitchd --takeover`): start the data plane,
//! ask the running daemon for its place, adopt what it hands over, and go on only once
//! it has said goodbye.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use super::{
    ADOPT_TIMEOUT, Answer, Bye, Done, FORMAT, FdRole, Hello, OFFER_TIMEOUT, OLDEST_FORMAT, Offer,
    OfferExtras, Preface, REPLY_TIMEOUT, Ready, Retire, TakeoverError, XDP_FORMAT, receive, receive_fds,
    send, socket_path,
};
use crate::config::Config;
use crate::daemon::{DaemonError, datapath_config, read_watched_file};
use crate::ports::handover::QueueFd;
use crate::ports::{AttachError, LinuxKernel};
use crate::snapshot::{Restored, TablesSnapshot};
use crate::state::StateFile;
use crate::switch::Switch;
use vswitch_dataplane::datapath::Datapath;
use vswitch_dataplane::tables::Tables;
use vswitch_dataplane::tables::conntrack::Tuple;

pub(crate) enum Took {
    /// Nothing answers on the takeover socket: start as usual.
    NothingRunning,
    /// The running daemon cannot hand over and stops cleanly: start as after a restart
    /// once it has (its tables snapshot carries the flows).
    Restart(String),
    Over(Box<Taken>),
}

/// A daemon that has taken over: its switch forwarding, the lock and the listeners.
pub(crate) struct Taken {
    pub switch: Switch,
    pub lock: OwnedFd,
    /// The old daemon's API listener (the takeover socket was found beside it).
    pub api: Option<std::os::unix::net::UnixListener>,
    pub metrics: Option<std::net::TcpListener>,
}

/// What the files give, read before the pause (in cluster mode the old daemon hands
/// over what the cluster gave).
struct Files {
    services: Option<Option<String>>,
    nodes: Option<Option<String>>,
}

/// Takes the place of the daemon running on `config`'s sockets, if there is one.
pub(crate) async fn take_over(
    config: &Config,
    version: &str,
    cluster: bool,
    retire: Retire,
) -> Result<Took, DaemonError> {
    // What takes time comes before the old daemon is asked (and so before its pause):
    // the data plane, the files.
    let datapath = Datapath::start(datapath_config(config), Tables::empty())?;
    let kernel = Arc::new(LinuxKernel::connect().map_err(AttachError::from)?);
    let mut switch = Switch::new(config.clone(), datapath, kernel)?;
    // Every port is in the tables before any is read: a frame from the first pod taken
    // must find the last one.
    switch.datapath().hold_reading();
    switch.hold_routes();
    let files = Files {
        services: (!cluster).then(|| switch.services_file().map(read_watched_file)).flatten().transpose()?,
        nodes: (!cluster).then(|| switch.nodes_file().map(read_watched_file)).flatten().transpose()?,
    };
    let path = socket_path(&config.api_socket);
    let conn = match UnixStream::connect(&path) {
        Ok(conn) => conn,
        Err(e)
            if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
        {
            return Ok(Took::NothingRunning);
        }
        Err(e) => return Err(TakeoverError::Io(e).into()),
    };
    conn.set_write_timeout(Some(REPLY_TIMEOUT)).map_err(TakeoverError::from)?;
    let hello = Hello {
        oldest_format: OLDEST_FORMAT,
        newest_format: FORMAT,
        version: version.to_string(),
        workers: switch.datapath().workers() as u32,
        state_file: config.state_file.clone(),
        retire,
    };
    type Prefaced = (Preface, Option<Vec<u8>>);
    let preface = tokio::task::block_in_place(|| -> Result<Result<Prefaced, Took>, TakeoverError> {
        send(&conn, &hello)?;
        match receive::<Answer>(&conn, OFFER_TIMEOUT)? {
            Answer::Busy => Err(TakeoverError::Busy),
            Answer::Refused { reason, restarting: true } => Ok(Err(Took::Restart(reason))),
            Answer::Refused { reason, restarting: false } => Err(TakeoverError::Refused(reason)),
            Answer::Preface(preface) => Ok(Ok((*preface, None))),
            Answer::PrefaceWithFlows { preface, flows } => Ok(Ok((*preface, Some(flows)))),
            Answer::Offer(_) => Err(TakeoverError::Message("an offer before the preface".into())),
        }
    })?;
    let (preface, early) = match preface {
        Ok(prefaced) => prefaced,
        Err(took) => return Ok(took),
    };
    // The Services before the pause, under the ids their flows know, then the flows
    // sent early.
    let mut restored = Restored::default();
    let prepared =
        tokio::task::block_in_place(|| prepare(&mut switch, preface, early.as_deref(), files, &mut restored));
    let early = match prepared {
        Ok(early) => early,
        Err(e) => {
            // Nothing is ours yet: going away is enough (the old daemon sees it and goes on).
            return Err(TakeoverError::Message(format!("preparing: {e}")).into());
        }
    };
    let offer = tokio::task::block_in_place(|| -> Result<Result<Offer, Took>, TakeoverError> {
        send(&conn, &Ready)?;
        match receive::<Answer>(&conn, OFFER_TIMEOUT)? {
            Answer::Refused { reason, restarting: true } => Ok(Err(Took::Restart(reason))),
            Answer::Refused { reason, restarting: false } => Err(TakeoverError::Refused(reason)),
            Answer::Offer(offer) => Ok(Ok(*offer)),
            Answer::Busy | Answer::Preface(_) | Answer::PrefaceWithFlows { .. } => {
                Err(TakeoverError::Message("no offer after the preface".into()))
            }
        }
    })?;
    let offer = match offer {
        Ok(offer) => offer,
        Err(took) => return Ok(took),
    };
    let started = Instant::now();
    conn.set_write_timeout(Some(ADOPT_TIMEOUT)).map_err(TakeoverError::from)?;
    if !(OLDEST_FORMAT..=FORMAT).contains(&offer.format) {
        let _ = send(&conn, &Done::Abort(format!("format {} is not read here", offer.format)));
        return Err(TakeoverError::Format(offer.format).into());
    }
    // Nothing is ours before every descriptor has come: a failure here leaves the old
    // daemon waiting for `Done`, then resuming.
    let (extras, fds) = tokio::task::block_in_place(|| -> Result<_, TakeoverError> {
        let extras = match offer.format >= XDP_FORMAT {
            true => receive::<OfferExtras>(&conn, REPLY_TIMEOUT)?,
            false => OfferExtras::default(),
        };
        Ok((extras, receive_fds(&conn, &offer)?))
    })?;
    let from = offer.version.clone();
    let adopted =
        tokio::task::block_in_place(|| adopt(&mut switch, offer, extras, early, fds, &mut restored));
    let (lock, api, metrics, mut carried) = match adopted {
        Ok(parts) => parts,
        Err(e) => {
            let _ = send(&conn, &Done::Abort(e.to_string()));
            leave(&e.to_string())
        }
    };
    // Every queue with its worker (one batch each), still not read.
    if let Err(e) = tokio::task::block_in_place(|| switch.datapath().place_held_queues()) {
        let _ = send(&conn, &Done::Abort(e.to_string()));
        leave(&e.to_string());
    }
    let confirmed = tokio::task::block_in_place(|| -> Result<(), TakeoverError> {
        send(&conn, &Done::Adopted)?;
        receive::<Bye>(&conn, REPLY_TIMEOUT).map_err(|_| TakeoverError::Resumed)?;
        Ok(())
    });
    if let Err(e) = confirmed {
        leave(&e.to_string());
    }
    if let Err(e) = switch.datapath().read_again() {
        // Placed before the goodbye: nothing is left to place here.
        tracing::error!(error = %e, "a queue taken over is not polled");
    }
    let pause_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(from_version = %from, pause_ms, ports = switch.ports().len(), "took over: forwarding");
    // Then what may take longer, with traffic flowing: the uplink (which gives the
    // node's address when the config names none), then the node's routes and rules
    // (synced before the address is known, the NodePort rules would go and come back).
    if let Err(e) = switch.start_uplink() {
        tracing::error!(error = %e, "uplink not started: NodePorts are not reachable from outside the node");
    }
    switch.release_routes();
    let names = switch.port_names();
    let away = carried.age_secs();
    switch.carry_over(&mut carried, &names, away, &mut restored);
    carried.finish(&mut restored);
    switch.set_started(format!(
        "takeover from vswitchd {from}: {} ports and {} flows taken, {pause_ms:.1} ms pause",
        switch.ports().len(),
        restored.flows
    ));
    tracing::info!(
        flows = restored.flows,
        affinities = restored.affinity,
        learned_macs = restored.fdb,
        dropped = restored.dropped,
        "tables taken over"
    );
    Ok(Took::Over(Box::new(Taken { switch, lock, api, metrics })))
}

type Adopted =
    (OwnedFd, Option<std::os::unix::net::UnixListener>, Option<std::net::TcpListener>, TablesSnapshot);

/// Before the pause: the Service ports' ids, then the Services (from the files, or
/// as the old daemon had them from the cluster) and the nodes.
/// Returns the flows sent early that wait for their ports (return paths through the
/// uplink: ports are the new daemon's only in the pause).
fn prepare(
    switch: &mut Switch,
    preface: Preface,
    early: Option<&[u8]>,
    files: Files,
    restored: &mut Restored,
) -> Result<Option<TablesSnapshot>, String> {
    let mut ids = TablesSnapshot::decode(&preface.service_ids).map_err(|e| format!("Service ids: {e}"))?;
    switch.carry_over(&mut ids, &BTreeMap::new(), 0, restored);
    if let Some(served) = preface.cluster {
        switch.serve_handed(served).map_err(|e| format!("Services handed over: {e}"))?;
    }
    if let Some(text) = files.services {
        switch.services_file_read(text, false).map_err(|e| e.to_string())?;
    }
    if let Some(text) = files.nodes {
        switch.nodes_file_read(text, false).map_err(|e| e.to_string())?;
    }
    let Some(bytes) = early else { return Ok(None) };
    let mut early = TablesSnapshot::decode(bytes).map_err(|e| format!("flows sent early: {e}"))?;
    let away = early.age_secs();
    switch.carry_over(&mut early, &BTreeMap::new(), away, restored);
    tracing::info!(flows = restored.flows, "flows sent early put in");
    Ok(Some(early))
}

/// The pause, on this side: the flows first (so that the first frame read finds its
/// flow), then the ports.
fn adopt(
    switch: &mut Switch,
    offer: Offer,
    extras: OfferExtras,
    mut early: Option<TablesSnapshot>,
    fds: Vec<(FdRole, OwnedFd)>,
    restored: &mut Restored,
) -> Result<Adopted, String> {
    let started = Instant::now();
    let mut carried = TablesSnapshot::decode(&offer.tables).map_err(|e| format!("tables: {e}"))?;
    let decoded_ms = started.elapsed().as_secs_f64() * 1000.0;
    // The Services have their ids already (the preface).
    carried.service_ports.clear();
    let state: StateFile = serde_json::from_str(&offer.state).map_err(|e| format!("ports: {e}"))?;
    let away = carried.age_secs();
    let names = switch.port_names_of(&state);
    // The flows sent early that went since, then those waiting for their ports, then
    // the flows seen since the early copy (each in place of its early copy).
    let gone: Vec<Tuple> = extras.gone.iter().map(|g| Tuple::from(*g)).collect();
    // A set: the early flows still waiting are checked against it one by one.
    let gone_set: std::collections::HashSet<Tuple> = gone.iter().copied().collect();
    let forgotten = switch.forget_flows(&gone);
    restored.flows = restored.flows.saturating_sub(forgotten);
    if let Some(early) = &mut early {
        early.flows.retain(|f| !gone_set.contains(&f.orig));
        let away = early.age_secs();
        switch.carry_over(early, &names, away, restored);
    }
    switch.carry_over(&mut carried, &names, away, restored);
    let restored_ms = started.elapsed().as_secs_f64() * 1000.0 - decoded_ms;
    tracing::info!(bytes = offer.tables.len(), decoded_ms, restored_ms, "tables taken in the pause");
    match serde_json::from_str(&offer.counters) {
        Ok(before) => switch.count_on_from(before),
        Err(e) => tracing::warn!(error = %e, "counters handed over not read: counting from zero"),
    }
    let (mut lock, mut api, mut metrics, mut queues) = (None, None, None, Vec::<(QueueFd, OwnedFd)>::new());
    for (role, fd) in fds {
        match role {
            FdRole::StateLock => lock = Some(fd),
            FdRole::Api => api = Some(fd),
            FdRole::Metrics => metrics = Some(fd),
            FdRole::Queue(at) => queues.push((at, fd)),
        }
    }
    let lock = lock.ok_or("the state lock was not handed over")?;
    let config = switch.config();
    let api = api
        .filter(|_| offer.api_socket == config.api_socket)
        .map(|fd| -> std::io::Result<_> {
            let listener = std::os::unix::net::UnixListener::from(fd);
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .transpose()
        .map_err(|e| format!("API listener: {e}"))?;
    let metrics = metrics
        .filter(|_| offer.metrics.is_some() && offer.metrics == config.metrics_address)
        .map(|fd| -> std::io::Result<_> {
            let listener = std::net::TcpListener::from(fd);
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .transpose()
        .map_err(|e| format!("metrics listener: {e}"))?;
    let report = switch.adopt(state, offer.underlay, extras.xdp, queues).map_err(|e| e.to_string())?;
    for port in &report.restored {
        tracing::info!(port = %port, "taken over");
    }
    let names = switch.port_names();
    if let Some(mut early) = early {
        let away = early.age_secs();
        switch.carry_over(&mut early, &names, away, restored);
        early.finish(restored);
    }
    switch.carry_over(&mut carried, &names, away, restored);
    Ok((lock, api, metrics, carried))
}

/// Exits without running a destructor: the ports, programs and routes taken so far
/// are the old daemon's again (it resumes), and dropping them here would undo them.
fn leave(why: &str) -> ! {
    tracing::error!(reason = %why, "takeover failed: the running vswitchd keeps forwarding; exiting");
    eprintln!("vswitchd: takeover failed: {why}");
    std::process::exit(1)
}
