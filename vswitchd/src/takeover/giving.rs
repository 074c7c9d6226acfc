//! The running daemon's side of a takeover: it listens on the takeover socket, answers
//! one new daemon at a time, pauses, hands everything over and exits, or resumes.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::{
    ADOPT_TIMEOUT, Answer, Bye, Done, FdRole, GoneFlow, Hello, Offer, OfferExtras, PREPARE_TIMEOUT,
    REPLY_TIMEOUT, Ready, Retire, Retiring, TakeoverError, XDP_FORMAT, agreed_format, no_xdp_in, receive,
    refusal, send, send_fds,
};
use crate::api::{ApiState, api_stats};
use crate::daemon::DaemonError;
use crate::ports::handover::HandedXdp;

/// What the daemon passes besides its ports: its own descriptors of the state lock and
/// the listeners (the new daemon gets copies; the old ones close with this process).
pub(crate) struct Passed {
    pub lock: OwnedFd,
    pub api: OwnedFd,
    pub metrics: Option<(OwnedFd, SocketAddr)>,
    pub cluster: bool,
}

/// Binds the takeover socket at `path` (mode 0600, a stale one replaced: only one
/// daemon holds the state lock, and it is this one).
pub(crate) fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    let err = |source| DaemonError::Socket { path: path.display().to_string(), source };
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Serves takeovers on `listener` until one succeeds (the process exits, or `retiring`
/// hears it) or one is refused with a restart (`retiring` hears that).
/// `busy` is set while a takeover is under way (and stays set once this daemon stops
/// for a restart).
pub(crate) async fn serve(
    listener: UnixListener,
    state: Arc<ApiState>,
    passed: Passed,
    busy: Arc<AtomicBool>,
    retiring: mpsc::Sender<Retiring>,
) {
    let passed = Arc::new(passed);
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "takeover socket: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if busy.swap(true, Ordering::SeqCst) {
            tokio::spawn(answer_busy(conn));
            continue;
        }
        let (state, passed, busy, retiring) = (state.clone(), passed.clone(), busy.clone(), retiring.clone());
        tokio::spawn(async move {
            match hand_over(conn, &state, &passed, &retiring).await {
                Ok(Some(restart)) => {
                    // Stopping now: no other takeover may start on a daemon going away.
                    let _ = retiring.send(restart).await;
                    return;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "takeover did not happen; forwarding on"),
            }
            busy.store(false, Ordering::SeqCst);
        });
    }
}

/// Refuses the takeover; with `restarting`, this daemon stops for a plain restart.
fn refuse(
    conn: &std::os::unix::net::UnixStream,
    reason: String,
    restarting: bool,
    retire: Retire,
) -> Result<Option<Retiring>, TakeoverError> {
    tracing::warn!(%reason, restarting, "takeover refused");
    send(conn, &Answer::Refused { reason: reason.clone(), restarting })?;
    Ok(restarting.then_some(Retiring::Restart { reason, retire }))
}

async fn answer_busy(conn: UnixStream) {
    let Ok(conn) = conn.into_std() else { return };
    let _ = tokio::task::spawn_blocking(move || {
        let _ = conn.set_nonblocking(false);
        // Its hello first: closing on a new daemon still writing would leave it a
        // broken pipe rather than the reason.
        if receive::<Hello>(&conn, REPLY_TIMEOUT).is_ok() {
            let _ = send(&conn, &Answer::Busy);
        }
    })
    .await;
}

/// One takeover. `Ok(Some(_))`: refused, this daemon should stop for a plain restart.
/// Success never returns: the process exits, or waits for its end holding the switch
/// (nothing of which is its own any more) with `retiring` told.
async fn hand_over(
    conn: UnixStream,
    state: &ApiState,
    passed: &Passed,
    retiring: &mpsc::Sender<Retiring>,
) -> Result<Option<Retiring>, TakeoverError> {
    let conn = conn.into_std()?;
    conn.set_nonblocking(false)?;
    // A new daemon that stops reading must not keep this one paused.
    conn.set_write_timeout(Some(ADOPT_TIMEOUT))?;
    let hello: Hello = tokio::task::block_in_place(|| receive(&conn, REPLY_TIMEOUT))?;
    tracing::info!(version = %hello.version, "a new vswitchd asks to take over");
    let (preface, format) = {
        let switch = state.switch.lock().await;
        let refused =
            refusal(&hello, switch.datapath().workers(), &switch.config().state_file, switch.has_xdp_ports());
        if let Some((reason, restarting)) = refused {
            return refuse(&conn, reason, restarting, hello.retire);
        }
        let format = agreed_format(&hello).expect("refused above otherwise");
        let early =
            (format >= XDP_FORMAT).then(|| tokio::task::block_in_place(|| switch.takeover_early_flows()));
        ((switch.takeover_preface(passed.cluster), early), format)
    };
    let (preface, mut early) = preface;
    // The new daemon builds its Services and puts the early flows in meanwhile; this
    // one forwards on.
    tokio::task::block_in_place(|| -> Result<(), TakeoverError> {
        let answer = match &mut early {
            Some(early) => Answer::PrefaceWithFlows {
                preface: Box::new(preface),
                flows: std::mem::take(&mut early.tables),
            },
            None => Answer::Preface(Box::new(preface)),
        };
        send(&conn, &answer)?;
        receive::<Ready>(&conn, PREPARE_TIMEOUT)?;
        Ok(())
    })?;
    // Held until the process exits (success) or the ports are back (failure): no API
    // call changes a port in between.
    let mut switch = state.switch.lock().await;
    let handed = tokio::task::block_in_place(|| {
        let paused_at = Instant::now();
        let handing =
            switch.pause_for_takeover(early.as_ref()).map_err(|e| TakeoverError::Message(e.to_string()));
        // Queues taken, tables taken and encoded: what the pause costs before sending.
        let taken_ms = paused_at.elapsed().as_secs_f64() * 1000.0;
        let handing = match handing {
            Ok(h) => h,
            Err(e) => {
                let _ = send(&conn, &Answer::Refused { reason: e.to_string(), restarting: false });
                return Err(e);
            }
        };
        let sent = (|| {
            let (queues, xdp) = switch.handed(&handing.paused).map_err(TakeoverError::Message)?;
            // Checked before the preface too; an AF_XDP port may have come since.
            if xdp != HandedXdp::default()
                && let Some(why) = no_xdp_in(&hello, format)
            {
                return Err(TakeoverError::Message(why));
            }
            let mut roles = vec![FdRole::StateLock, FdRole::Api];
            let mut fds: Vec<BorrowedFd<'_>> = vec![passed.lock.as_fd(), passed.api.as_fd()];
            if let Some((fd, _)) = &passed.metrics {
                roles.push(FdRole::Metrics);
                fds.push(fd.as_fd());
            }
            for (role, fd) in queues {
                roles.push(FdRole::Queue(role));
                fds.push(fd);
            }
            let offer = Offer {
                format,
                version: env!("CARGO_PKG_VERSION").into(),
                state: handing.state.clone(),
                tables: handing.tables.clone(),
                underlay: handing.underlay.clone(),
                counters: serde_json::to_string(&api_stats(&switch)).expect("stats serialize"),
                api_socket: switch.config().api_socket.clone(),
                metrics: passed.metrics.as_ref().map(|(_, addr)| *addr),
                fds: roles,
            };
            send(&conn, &Answer::Offer(Box::new(offer)))?;
            if format >= XDP_FORMAT {
                let gone = handing.gone.iter().map(|t| GoneFlow::from(*t)).collect();
                send(&conn, &OfferExtras { xdp, gone })?;
            }
            send_fds(&conn, &fds)?;
            match receive::<Done>(&conn, ADOPT_TIMEOUT)? {
                Done::Adopted => send(&conn, &Bye),
                Done::Abort(why) => Err(TakeoverError::Message(format!("the new vswitchd gave up: {why}"))),
            }
        })();
        match sent {
            Ok(()) if hello.retire == Retire::Exit => {
                tracing::info!(
                    paused_ms = paused_at.elapsed().as_secs_f64() * 1000.0,
                    taken_ms,
                    "handed over"
                );
                retire_now("handed over to the new vswitchd: exiting")
            }
            Ok(()) => {
                tracing::info!(
                    paused_ms = paused_at.elapsed().as_secs_f64() * 1000.0,
                    "handed over to the new vswitchd: waiting for SIGTERM"
                );
                // The queues are the new daemon's: dropping them here would detach the
                // XDP programs it now runs on. They go with this process.
                std::mem::forget(handing);
                Ok(())
            }
            Err(e) => {
                switch.resume_after_takeover(handing.paused);
                tracing::warn!(
                    paused_ms = paused_at.elapsed().as_secs_f64() * 1000.0,
                    "takeover failed: every queue back with its worker"
                );
                Err(e)
            }
        }
    });
    handed?;
    let _ = retiring.send(Retiring::HandedOver).await;
    // The switch stays locked: nothing may change what is the new daemon's now.
    std::future::pending().await
}

/// Exits a daemon that has handed everything over, running no destructor: they would
/// undo what the new daemon now runs on (the tunnel's tc program, the API socket's
/// file, the node's routes and rules).
pub(crate) fn retire_now(why: &str) -> ! {
    tracing::info!("{why}");
    std::process::exit(0)
}
