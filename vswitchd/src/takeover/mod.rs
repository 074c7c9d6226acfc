//! Takeover: a new vswitchd (`--takeover`) takes the running one's place without
//! closing a queue. The two talk over a Unix socket beside the API socket
//! (`<api_socket>.takeover`):
//!
//! 1. new → old: [`Hello`] (the formats it reads, its workers, its state file). The new
//!    daemon has started its data plane already: the pause that follows is short.
//! 2. old → new: [`Answer`]. `Busy` (another takeover is under way: the new daemon
//!    exits with that error), `Refused` (the old daemon cannot hand over — another
//!    worker count, no common format — and, when `restarting`, stops
//!    cleanly so that the new one starts as after a restart, with the tables
//!    snapshot), or `Preface`: the Services' ids and, in cluster mode, the Services
//!    and nodes it serves, so that the new daemon builds its Services (seconds with
//!    100 000 of them) while the old one still forwards.
//!    From format 2 on, the preface comes with a copy of the flows
//!    ([`Answer::PrefaceWithFlows`]), which the new daemon puts in meanwhile.
//! 3. new → old: [`Ready`]. old → new: `Refused` as above, or `Offer`: the old daemon
//!    has paused (every queue taken from its workers) and sends the ports and the
//!    tables (from format 2 on only the flows seen since the early copy), from format 2
//!    on [`OfferExtras`] (the AF_XDP sockets' frames and XDP programs, the flows gone
//!    since the copy), then the file descriptors (`SCM_RIGHTS`) in the order
//!    [`Offer::fds`] lists them.
//! 4. new → old: [`Done`]: `Adopted` once every port is the new daemon's, or `Abort`.
//! 5. old → new: [`Bye`], and the old daemon exits at once, undoing nothing (routes,
//!    rules, tc programs and devices are the new daemon's now). Only after `Bye` does
//!    the new daemon go on; without it (the old one gave up waiting and resumed) it
//!    exits, so that two daemons never both keep the queues.
//!
//! Every message is a 4-byte big-endian length and a postcard body; bodies carrying
//! the state file and the Services are JSON inside, as the state file is on disk.
//! The running daemon's side is [`giving`], the new daemon's [`taking`].

pub(crate) mod giving;
pub(crate) mod taking;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use vswitch_dataplane::tables::conntrack::Tuple;

use crate::ports::handover::{HandedUnderlay, HandedXdp, QueueFd};

/// The handover's format: what [`Offer`] carries and how. 2: AF_XDP sockets and XDP
/// programs, and the flows copied before the pause ([`Answer::PrefaceWithFlows`],
/// [`OfferExtras`]); format 1 has none of them.
pub(crate) const FORMAT: u32 = 2;
/// The oldest format this daemon reads (and writes, to a new daemon that reads no
/// newer one).
pub(crate) const OLDEST_FORMAT: u32 = 1;
/// The first format that carries AF_XDP sockets.
pub(crate) const XDP_FORMAT: u32 = 2;

/// The newest format both this daemon and the one that said `hello` read.
pub(crate) fn agreed_format(hello: &Hello) -> Option<u32> {
    let format = FORMAT.min(hello.newest_format);
    (format >= OLDEST_FORMAT.max(hello.oldest_format)).then_some(format)
}

/// A message larger than this is refused (a snapshot of a full conntrack table is far
/// below it).
const MAX_MESSAGE: usize = 1 << 30;
/// How long the old daemon, paused, waits for the new one to adopt the ports before it
/// resumes: adopting takes milliseconds; a new daemon stuck longer costs no more.
pub(crate) const ADOPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the new daemon waits for the offer (the old one pausing and taking its
/// tables: a full conntrack table is large).
pub(crate) const OFFER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the old daemon waits for the new one to build its Services from the
/// preface (still forwarding meanwhile).
pub(crate) const PREPARE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long either side waits for the other's small messages.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The takeover socket of the daemon whose API socket is `api_socket`.
pub(crate) fn socket_path(api_socket: &Path) -> PathBuf {
    let mut path = api_socket.as_os_str().to_owned();
    path.push(".takeover");
    PathBuf::from(path)
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub oldest_format: u32,
    pub newest_format: u32,
    pub version: String,
    pub workers: u32,
    pub state_file: PathBuf,
    pub retire: Retire,
}

/// What the old daemon does once it has no ports any more (handed over, or stopped
/// for a restart because it could not hand over).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
pub enum Retire {
    /// Exit (a manual upgrade, a service manager that does not restart a clean exit).
    #[default]
    Exit,
    /// Wait, doing nothing, for SIGTERM: a DaemonSet's old pod, whose container would
    /// be restarted if it exited, until the rollout deletes it.
    Wait,
}

/// What the takeover listener tells the daemon.
#[derive(Debug)]
pub(crate) enum Retiring {
    /// Stop cleanly (the tables snapshot written) for the new daemon to start as after
    /// a restart, then retire as asked.
    Restart { reason: String, retire: Retire },
    /// Handed over: stop serving anything and wait for SIGTERM.
    HandedOver,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Answer {
    Busy,
    Refused {
        reason: String,
        restarting: bool,
    },
    Preface(Box<Preface>),
    Offer(Box<Offer>),
    /// From format 2 on, in place of `Preface`: with it, the flows as they are (a
    /// tables snapshot with the flows only), which the new daemon puts in before the
    /// pause; the pause then carries only the flows seen since, and which went.
    PrefaceWithFlows {
        preface: Box<Preface>,
        flows: Vec<u8>,
    },
}

/// From format 2 on, the message after the [`Offer`].
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OfferExtras {
    pub xdp: HandedXdp,
    /// Flows sent early (`PrefaceWithFlows`) that are gone since: their original tuples.
    pub gone: Vec<GoneFlow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GoneFlow {
    pub proto: u8,
    pub src: Ipv4Addr,
    pub src_port: u16,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
}

impl From<Tuple> for GoneFlow {
    fn from(t: Tuple) -> GoneFlow {
        GoneFlow { proto: t.proto, src: t.src, src_port: t.src_port, dst: t.dst, dst_port: t.dst_port }
    }
}

impl From<GoneFlow> for Tuple {
    fn from(g: GoneFlow) -> Tuple {
        Tuple { proto: g.proto, src: g.src, src_port: g.src_port, dst: g.dst, dst_port: g.dst_port }
    }
}

/// What the new daemon needs before the pause.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Preface {
    /// A tables snapshot holding only the Service ports' ids and Maglev sizes.
    pub service_ids: Vec<u8>,
    /// In cluster mode, the Services (JSON) and nodes it served: the new daemon serves
    /// them until its own watchers have caught up. (From files, it reads the files.)
    pub cluster: Option<ClusterServed>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Ready;

/// What the old daemon hands over besides the descriptors.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Offer {
    pub format: u32,
    /// The old daemon's version, for the log.
    pub version: String,
    /// The pod ports: the state file's JSON.
    pub state: String,
    /// The tables snapshot's bytes (as in `<state_file>.tables`).
    pub tables: Vec<u8>,
    pub underlay: Option<HandedUnderlay>,
    /// Its counters at the pause (the API's stats, JSON), which the new daemon counts
    /// on from.
    pub counters: String,
    /// Where the API listener was bound.
    pub api_socket: PathBuf,
    pub metrics: Option<SocketAddr>,
    /// The descriptors that follow, in order.
    pub fds: Vec<FdRole>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ClusterServed {
    pub services: String,
    pub nodes: Vec<HandedNode>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HandedNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidrs: Vec<ipnet::Ipv4Net>,
    pub vtep_mac: Option<[u8; 6]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FdRole {
    /// `<state_file>.lock`, locked: passing the open file passes the lock.
    StateLock,
    Api,
    Metrics,
    Queue(QueueFd),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Done {
    Adopted,
    Abort(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Bye;

#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("takeover socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("takeover message: {0}")]
    Message(String),
    #[error("another takeover of the running vswitchd is under way")]
    Busy,
    #[error("the running vswitchd refused the takeover: {0}")]
    Refused(String),
    #[error("the running vswitchd hands over format {0}, this one reads {OLDEST_FORMAT}..={FORMAT}")]
    Format(u32),
    #[error("the running vswitchd resumed instead of handing over (it waited too long?)")]
    Resumed,
}

pub(crate) fn send<T: Serialize>(stream: &UnixStream, message: &T) -> Result<(), TakeoverError> {
    let body = postcard::to_stdvec(message).map_err(|e| TakeoverError::Message(e.to_string()))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    (&*stream).write_all(&out)?;
    Ok(())
}

pub(crate) fn receive<T: DeserializeOwned>(
    stream: &UnixStream,
    timeout: Duration,
) -> Result<T, TakeoverError> {
    stream.set_read_timeout(Some(timeout))?;
    let mut len = [0u8; 4];
    (&*stream).read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(TakeoverError::Message(format!("a message of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    (&*stream).read_exact(&mut body)?;
    postcard::from_bytes(&body).map_err(|e| TakeoverError::Message(e.to_string()))
}

/// Sends the descriptors an [`Offer`] announced.
pub(crate) fn send_fds(stream: &UnixStream, fds: &[BorrowedFd<'_>]) -> Result<(), TakeoverError> {
    Ok(vswitch_sys::fd_passing::send_fds(stream, fds)?)
}

/// Receives the descriptors `offer` announced, each with its role.
pub(crate) fn receive_fds(
    stream: &UnixStream,
    offer: &Offer,
) -> Result<Vec<(FdRole, OwnedFd)>, TakeoverError> {
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let fds = vswitch_sys::fd_passing::recv_fds(stream, offer.fds.len())?;
    Ok(offer.fds.iter().copied().zip(fds).collect())
}

/// Why AF_XDP sockets cannot cross in `format` (agreed with `hello`), if they cannot.
pub(crate) fn no_xdp_in(hello: &Hello, format: u32) -> Option<String> {
    (format < XDP_FORMAT).then(|| {
        format!(
            "the new vswitchd ({}) reads handover format {format}, which carries no AF_XDP socket",
            hello.version
        )
    })
}

/// Why a takeover with `hello` is not possible here, and whether this daemon should
/// then stop for a plain restart: `workers` and `state_file` are this daemon's,
/// `has_xdp` whether it has AF_XDP sockets to hand over.
pub(crate) fn refusal(
    hello: &Hello,
    workers: usize,
    state_file: &Path,
    has_xdp: bool,
) -> Option<(String, bool)> {
    if hello.state_file != state_file {
        // Another switch's configuration: stopping this one would help no one.
        return Some((
            format!(
                "this vswitchd runs on state file {}, the new one on {}",
                state_file.display(),
                hello.state_file.display()
            ),
            false,
        ));
    }
    let Some(format) = agreed_format(hello) else {
        return Some((
            format!(
                "handover formats {OLDEST_FORMAT}..={FORMAT} here, {}..={} in the new vswitchd ({})",
                hello.oldest_format, hello.newest_format, hello.version
            ),
            true,
        ));
    };
    if has_xdp && let Some(why) = no_xdp_in(hello, format) {
        return Some((why, true));
    }
    if hello.workers as usize != workers {
        return Some((
            format!(
                "{workers} workers here, {} in the new vswitchd: a TAP has one queue per worker",
                hello.workers
            ),
            true,
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            oldest_format: OLDEST_FORMAT,
            newest_format: FORMAT,
            version: "test".into(),
            workers: 2,
            state_file: "/var/lib/vswitch/state.json".into(),
            retire: Retire::Exit,
        }
    }

    #[test]
    fn a_takeover_is_refused_for_what_cannot_carry_over() {
        let state = Path::new("/var/lib/vswitch/state.json");
        assert!(refusal(&hello(), 2, state, false).is_none());
        let (why, restart) = refusal(&hello(), 4, state, false).unwrap();
        assert!(why.contains("4 workers here, 2 in the new") && restart, "{why}");
        let newer = Hello { oldest_format: FORMAT + 1, newest_format: FORMAT + 1, ..hello() };
        let (why, restart) = refusal(&newer, 2, state, false).unwrap();
        assert!(
            why.contains(&format!("handover formats {OLDEST_FORMAT}..={FORMAT} here")) && restart,
            "{why}"
        );
        let older = Hello { oldest_format: 1, newest_format: 1, ..hello() };
        assert!(refusal(&older, 2, state, false).is_none(), "format 1 is still written");
        let (why, restart) = refusal(&older, 2, state, true).unwrap();
        assert!(why.contains("carries no AF_XDP socket") && restart, "{why}");
        let (why, restart) = refusal(&hello(), 2, Path::new("/other/state.json"), false).unwrap();
        assert!(why.contains("/other/state.json") && !restart, "{why}");
    }

    #[test]
    fn messages_round_trip_and_absurd_lengths_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        send(&a, &Answer::Refused { reason: "why".into(), restarting: true }).unwrap();
        match receive::<Answer>(&b, REPLY_TIMEOUT).unwrap() {
            Answer::Refused { reason, restarting } => assert!(reason == "why" && restarting),
            other => panic!("{other:?}"),
        }
        (&a).write_all(&u32::MAX.to_be_bytes()).unwrap();
        assert!(matches!(receive::<Answer>(&b, REPLY_TIMEOUT), Err(TakeoverError::Message(_))));
        drop(a);
        assert!(matches!(receive::<Answer>(&b, REPLY_TIMEOUT), Err(TakeoverError::Io(_))));
    }

    #[test]
    fn the_newest_common_format_is_used() {
        let with = |oldest, newest| {
            agreed_format(&Hello { oldest_format: oldest, newest_format: newest, ..hello() })
        };
        assert_eq!(with(1, FORMAT), Some(FORMAT));
        assert_eq!(with(1, 1), Some(1), "a new daemon of the previous version");
        assert_eq!(with(1, FORMAT + 5), Some(FORMAT), "a newer one that still reads ours");
        assert_eq!(with(FORMAT + 1, FORMAT + 5), None);
    }

    /// A format 1 offer (a daemon of the previous version) is read as it was written:
    /// the offer's layout did not change, what format 2 adds is a message of its own.
    #[test]
    fn an_offer_of_format_1_is_read() {
        let offer = Offer {
            format: 1,
            version: "0.0.9".into(),
            state: "{}".into(),
            tables: vec![1, 2, 3],
            underlay: None,
            counters: "{}".into(),
            api_socket: "/run/vswitch/vswitchd.sock".into(),
            metrics: None,
            fds: vec![FdRole::StateLock, FdRole::Api],
        };
        // The bytes a format 1 daemon sent, field by field.
        let v1 = postcard::to_stdvec(&(
            1u32,
            "0.0.9",
            "{}",
            vec![1u8, 2, 3],
            None::<HandedUnderlay>,
            "{}",
            PathBuf::from("/run/vswitch/vswitchd.sock"),
            None::<SocketAddr>,
            vec![FdRole::StateLock, FdRole::Api],
        ))
        .unwrap();
        let read: Offer = postcard::from_bytes(&v1).unwrap();
        assert_eq!(postcard::to_stdvec(&read).unwrap(), postcard::to_stdvec(&offer).unwrap());
    }

    #[test]
    fn the_socket_is_beside_the_api_socket() {
        assert_eq!(
            socket_path(Path::new("/run/vswitch/vswitchd.sock")),
            Path::new("/run/vswitch/vswitchd.sock.takeover")
        );
    }
}
