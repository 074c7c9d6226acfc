//! The control API's connections: accepted on the Unix socket and served one task each,
//! as `axum::serve` does, with the limits a local socket needs so that a stuck or
//! hostile client — one holding connections open, half-sending requests, or opening
//! hundreds — cannot exhaust the daemon's descriptors, and everyone else is still
//! answered:
//!
//! - a connection has [`ConnLimits::header_timeout`] to deliver a request's headers,
//!   counted from when it opens or its last answer went out (hyper's header-read timer:
//!   an idle or half-sent connection is closed, a request being handled is not);
//! - one client process (by the peer credentials of the socket) holds at most
//!   [`ConnLimits::per_process`] connections, all together at most
//!   [`ConnLimits::total`]; one over is closed at once, unread, and counted in the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Limits on the API's connections.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnLimits {
    /// Connections open at once, every client together.
    pub total: usize,
    /// Connections one client process holds at once (the CNI plugin uses one or two per
    /// call, `vswitchctl` one).
    pub per_process: usize,
    /// How long a connection may go without a whole request's headers.
    pub header_timeout: Duration,
}

impl ConnLimits {
    pub(crate) const DEFAULT: ConnLimits =
        ConnLimits { total: 256, per_process: 16, header_timeout: Duration::from_secs(10) };
}

/// How long requests under way may take to finish once the daemon stops.
const DRAIN: Duration = Duration::from_secs(5);

/// Open connections, by client process (`None`: its pid is unknown).
#[derive(Debug, Default)]
struct Open {
    by_process: HashMap<Option<i32>, usize>,
    total: usize,
}

/// A connection's place among the open ones, given back when it closes.
struct Slot {
    open: Arc<Mutex<Open>>,
    pid: Option<i32>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        open.total -= 1;
        if let Some(n) = open.by_process.get_mut(&self.pid) {
            *n -= 1;
            if *n == 0 {
                open.by_process.remove(&self.pid);
            }
        }
    }
}

/// A slot for a connection of `pid`, if the limits leave room.
fn admit(open: &Arc<Mutex<Open>>, pid: Option<i32>, limits: &ConnLimits) -> Option<Slot> {
    let mut o = open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mine = o.by_process.get(&pid).copied().unwrap_or(0);
    if o.total >= limits.total || mine >= limits.per_process {
        return None;
    }
    o.total += 1;
    *o.by_process.entry(pid).or_default() += 1;
    Some(Slot { open: open.clone(), pid })
}

/// Resolves once `stop` says true (the guard `wait_for` hands out is not held).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves `router` on `listener` until `stop` turns true; then lets the requests under
/// way finish (for up to [`DRAIN`]) and returns once every connection is gone.
pub(crate) async fn serve(
    listener: UnixListener,
    router: Router,
    stop: watch::Receiver<bool>,
    limits: ConnLimits,
) {
    let open = Arc::new(Mutex::new(Open::default()));
    let mut connections = JoinSet::new();
    let mut refused = 0u64;
    let mut stopping = stop.clone();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stopped(&mut stopping) => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, most likely: give the open ones time to close.
                tracing::warn!(error = %e, "API: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let pid = stream.peer_cred().ok().and_then(|c| c.pid());
        let Some(slot) = admit(&open, pid, &limits) else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(?pid, refused, "API: connection closed unread, over the connection limits");
            }
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let mut stop = stop.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    if tokio::time::timeout(DRAIN, async { while connections.join_next().await.is_some() {} }).await.is_err()
    {
        tracing::warn!(left = connections.len(), "API: requests still under way at shutdown, cut");
        connections.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_gets_its_share_and_everyone_the_total() {
        let open = Arc::new(Mutex::new(Open::default()));
        let limits = ConnLimits { total: 5, per_process: 3, header_timeout: Duration::from_secs(1) };
        let hog: Vec<Slot> = (0..3).map(|_| admit(&open, Some(7), &limits).unwrap()).collect();
        assert!(admit(&open, Some(7), &limits).is_none(), "its share is taken");
        let other = admit(&open, Some(8), &limits).unwrap();
        let unknown = admit(&open, None, &limits).unwrap();
        assert!(admit(&open, Some(9), &limits).is_none(), "the total is taken");
        drop(hog);
        assert_eq!(open.lock().unwrap().total, 2);
        assert!(admit(&open, Some(7), &limits).is_some(), "closed ones give their slots back");
        drop((other, unknown));
        assert!(!open.lock().unwrap().by_process.contains_key(&Some(8)));
    }
}
