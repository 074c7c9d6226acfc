//! The tables snapshot: what the data plane learned that a restarted daemon should not
//! lose — the tracked flows (both tuples, TCP state, idle time), the clients pinned by
//! session affinity and the learned FDB — with what they refer to: the Service ports'
//! ids and Maglev sizes, and the ports' names.
//!
//! Written at a clean stop next to the state file (`<state_file>.tables`), read once at
//! the next start if it is fresh enough, then removed. Flows come back before the
//! ports do, so the first packet a restored pod sends — an endpoint speaking first on a
//! Service connection — is translated as before the restart.
//!
//! Format: [`MAGIC`], the format version (u32, little-endian), the CRC-32 of the body
//! (u32, little-endian), the body (postcard). Each version's body types are frozen: a
//! later format adds its own and keeps reading this one. A file that does not check
//! out, or of a newer format than this daemon knows, is set aside with a clear error
//! and the daemon starts as without it (nothing half-loaded).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vswitch_dataplane::datapath::Datapath;
use vswitch_dataplane::ids::{PortId, SegmentId};
use vswitch_dataplane::tables::conntrack::{self, FlowRecord, ReturnPath, State, Tuple};
use vswitch_dataplane::tables::fdb::FdbRecord;
use vswitch_dataplane::tables::services::{AffinityRecord, RememberedPort};
use vswitch_dataplane::wire::MacAddr;

/// The format written; files of this version and earlier are read.
pub(crate) const VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"vswtabl\n";
const HEADER: usize = MAGIC.len() + 8;

/// Where the snapshot of the daemon with `state_file` lives.
pub(crate) fn path_for(state_file: &Path) -> PathBuf {
    let mut p = state_file.as_os_str().to_owned();
    p.push(".tables");
    PathBuf::from(p)
}

/// What the tables carry over a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TablesSnapshot {
    /// When it was taken, in seconds since the Unix epoch: the time between it and the
    /// next start counts as idle time for every entry.
    pub taken_at: u64,
    /// Every port an entry may name, by its id in the run that took it: ids may differ
    /// in the next run (the uplink's is given out after the pods'), names do not.
    pub ports: BTreeMap<PortId, String>,
    pub service_ports: Vec<RememberedPort>,
    pub last_service_id: u32,
    pub flows: Vec<FlowRecord>,
    pub affinity: Vec<AffinityRecord>,
    pub fdb: Vec<FdbRecord>,
}

/// How much of a snapshot went back into the tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Restored {
    pub flows: usize,
    pub affinity: usize,
    pub fdb: usize,
    /// Past their timeout by now (idle before the stop plus the time away).
    pub expired: usize,
    /// Not put back: their port is gone, or the table was full.
    pub dropped: usize,
}

impl TablesSnapshot {
    /// Takes the tables of `datapath` (whose workers should be stopped, so nothing
    /// changes underneath) at `now` on its clock.
    pub(crate) fn take(
        datapath: &Datapath,
        now: u32,
        ports: BTreeMap<PortId, String>,
        service_ports: (Vec<RememberedPort>, u32),
    ) -> TablesSnapshot {
        Self::take_since(datapath, now, ports, service_ports, 0)
    }

    /// As [`TablesSnapshot::take`], with only the flows seen at `since` or later
    /// (datapath seconds): what changed after an earlier copy.
    pub(crate) fn take_since(
        datapath: &Datapath,
        now: u32,
        ports: BTreeMap<PortId, String>,
        service_ports: (Vec<RememberedPort>, u32),
        since: u32,
    ) -> TablesSnapshot {
        TablesSnapshot {
            taken_at: unix_now(),
            ports,
            service_ports: service_ports.0,
            last_service_id: service_ports.1,
            flows: datapath.conntrack().records_since(now, since),
            affinity: datapath.affinity().records(now),
            fdb: datapath.fdb().records(now),
        }
    }

    /// Only the flows (and the ports they name): a takeover's copy before its pause.
    pub(crate) fn flows_only(
        datapath: &Datapath,
        now: u32,
        ports: BTreeMap<PortId, String>,
    ) -> TablesSnapshot {
        TablesSnapshot {
            ports,
            flows: datapath.conntrack().records(now),
            ..Self::service_ids((Vec::new(), 0))
        }
    }

    /// Only the Service ports' ids and sizes: what a takeover's new daemon builds its
    /// Services with before the pause.
    pub(crate) fn service_ids(service_ports: (Vec<RememberedPort>, u32)) -> TablesSnapshot {
        TablesSnapshot {
            taken_at: unix_now(),
            ports: BTreeMap::new(),
            service_ports: service_ports.0,
            last_service_id: service_ports.1,
            flows: Vec::new(),
            affinity: Vec::new(),
            fdb: Vec::new(),
        }
    }

    /// Seconds between the snapshot and now (0 if the wall clock went back).
    pub(crate) fn age_secs(&self) -> u32 {
        unix_now().saturating_sub(self.taken_at).min(u64::from(u32::MAX)) as u32
    }

    /// Puts back into `datapath` the affinities and every flow and FDB entry whose port
    /// `ports` names (the ports of this run, by id); keeps the others for a later call,
    /// once more ports exist. `away_secs` counts as idle time. Returns the (original,
    /// reply) tuples of the flows put back.
    pub(crate) fn restore_into(
        &mut self,
        datapath: &Datapath,
        ports: &BTreeMap<PortId, String>,
        away_secs: u32,
        out: &mut Restored,
    ) -> Vec<(Tuple, Tuple)> {
        let mut put_back = Vec::new();
        let now = datapath.now();
        let by_name: BTreeMap<&str, PortId> = ports.iter().map(|(id, name)| (name.as_str(), *id)).collect();
        let old_names = &self.ports;
        let port_now = |old: PortId| old_names.get(&old).and_then(|n| by_name.get(n.as_str()).copied());

        for r in self.affinity.drain(..) {
            if datapath.affinity().restore(&r, away_secs, now) {
                out.affinity += 1;
            } else {
                out.expired += 1;
            }
        }
        let batch = datapath.conntrack().batch();
        self.flows.retain(|r| {
            let mut r = *r;
            if let Some(path) = &mut r.return_path {
                match port_now(path.port) {
                    Some(id) => path.port = id,
                    None => return true,
                }
            }
            // A later copy of a flow (a takeover's pause, after its early copy) wins.
            match batch.restore_over(&r, away_secs, now) {
                Ok(conntrack::Restored::Added) => {
                    out.flows += 1;
                    put_back.push((r.orig, r.reply));
                }
                Ok(conntrack::Restored::Replaced) => put_back.push((r.orig, r.reply)),
                Ok(conntrack::Restored::Expired) => out.expired += 1,
                Err(_) => out.dropped += 1,
            }
            false
        });
        drop(batch);
        let aging = datapath.fdb().config().aging_secs;
        let fdb = datapath.fdb().batch();
        self.fdb.retain(|r| {
            let Some(port) = port_now(r.port) else { return true };
            let idle = r.age_secs.saturating_add(away_secs);
            if idle > aging {
                out.expired += 1;
            } else {
                match fdb.learn(r.segment, r.mac, port, now.saturating_sub(idle)) {
                    vswitch_dataplane::tables::fdb::Learned::TableFull
                    | vswitch_dataplane::tables::fdb::Learned::Refused => out.dropped += 1,
                    _ => out.fdb += 1,
                }
            }
            false
        });
        put_back
    }

    /// What no port of this run took: counted as dropped.
    pub(crate) fn finish(self, out: &mut Restored) {
        out.dropped += self.flows.len() + self.fdb.len();
    }

    /// The file's bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let body = postcard::to_stdvec(&v1::Body::from(self)).expect("a snapshot serializes");
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Reads a file's bytes, of this format version or an earlier one.
    pub(crate) fn decode(bytes: &[u8]) -> Result<TablesSnapshot, DecodeError> {
        if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
            return Err(DecodeError::NotASnapshot);
        }
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let (version, crc, body) = (word(MAGIC.len()), word(MAGIC.len() + 4), &bytes[HEADER..]);
        if version > VERSION {
            return Err(DecodeError::Newer(version));
        }
        if crc32fast::hash(body) != crc {
            return Err(DecodeError::Checksum);
        }
        match version {
            1 => postcard::from_bytes::<v1::Body>(body)
                .map_err(|e| DecodeError::Body(e.to_string()))?
                .try_into()
                .map_err(DecodeError::Body),
            v => Err(DecodeError::Unknown(v)),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DecodeError {
    #[error("not a tables snapshot (no header)")]
    NotASnapshot,
    #[error("format version {0} is newer than this daemon's {VERSION}")]
    Newer(u32),
    #[error("format version {0} is not one this daemon reads")]
    Unknown(u32),
    #[error("checksum mismatch (torn or altered)")]
    Checksum,
    #[error("{0}")]
    Body(String),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error("tables snapshot {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tables snapshot {} not used ({reason}); kept as {}", path.display(), kept.display())]
    Unusable { path: PathBuf, reason: DecodeError, kept: PathBuf },
    #[error("tables snapshot {} is {age_secs} s old (more than {max_age_secs} s): not used, removed", path.display())]
    Stale { path: PathBuf, age_secs: u32, max_age_secs: u32 },
}

/// Writes the snapshot atomically (a crash leaves the old file or none, never a torn one).
pub(crate) fn save(path: &Path, snapshot: &TablesSnapshot) -> Result<(), SnapshotError> {
    crate::state::write_atomically(path, &snapshot.encode())
        .map_err(|source| SnapshotError::Io { path: path.to_path_buf(), source })
}

/// Reads and removes the snapshot at `path`: `Ok(None)` if there is none. One that
/// does not decode is renamed aside (`.corrupt-<secs>`, or `.unsupported-<secs>` for a
/// newer format); one older than `max_age` is removed.
pub(crate) fn load(path: &Path, max_age: Duration) -> Result<Option<TablesSnapshot>, SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.to_path_buf(), source };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    match TablesSnapshot::decode(&bytes) {
        Ok(snapshot) => {
            std::fs::remove_file(path).map_err(io)?;
            let max_age_secs = max_age.as_secs().min(u64::from(u32::MAX)) as u32;
            if snapshot.age_secs() > max_age_secs {
                return Err(SnapshotError::Stale {
                    path: path.to_path_buf(),
                    age_secs: snapshot.age_secs(),
                    max_age_secs,
                });
            }
            Ok(Some(snapshot))
        }
        Err(reason) => {
            let what = if matches!(reason, DecodeError::Newer(_)) { "unsupported" } else { "corrupt" };
            let kept = crate::state::set_aside(path, what).map_err(io)?;
            Err(SnapshotError::Unusable { path: path.to_path_buf(), reason, kept })
        }
    }
}

/// Format version 1. Frozen: a change of the format is a new module.
mod v1 {
    use super::*;

    #[derive(Serialize, Deserialize)]
    pub(super) struct Body {
        taken_at: u64,
        ports: Vec<(u16, String)>,
        service_ports: Vec<ServicePort>,
        last_service_id: u32,
        flows: Vec<Flow>,
        affinity: Vec<Affinity>,
        fdb: Vec<Fdb>,
    }

    #[derive(Serialize, Deserialize)]
    struct ServicePort {
        name: String,
        id: u32,
        maglev_size: u64,
        local_maglev_size: u64,
    }

    #[derive(Serialize, Deserialize)]
    struct Tuple4 {
        proto: u8,
        src: [u8; 4],
        src_port: u16,
        dst: [u8; 4],
        dst_port: u16,
    }

    #[derive(Serialize, Deserialize)]
    struct Flow {
        orig: Tuple4,
        reply: Tuple4,
        service: u32,
        return_path: Option<(u16, [u8; 6], [u8; 6])>,
        state: u8,
        replied: bool,
        idle_secs: u32,
    }

    #[derive(Serialize, Deserialize)]
    struct Affinity {
        service: u32,
        client: [u8; 4],
        backend: u64,
        timeout: u32,
        idle_secs: u32,
    }

    #[derive(Serialize, Deserialize)]
    struct Fdb {
        segment: u16,
        mac: [u8; 6],
        port: u16,
        age_secs: u32,
    }

    impl From<Tuple> for Tuple4 {
        fn from(t: Tuple) -> Tuple4 {
            Tuple4 {
                proto: t.proto,
                src: t.src.octets(),
                src_port: t.src_port,
                dst: t.dst.octets(),
                dst_port: t.dst_port,
            }
        }
    }

    impl From<Tuple4> for Tuple {
        fn from(t: Tuple4) -> Tuple {
            Tuple {
                proto: t.proto,
                src: t.src.into(),
                src_port: t.src_port,
                dst: t.dst.into(),
                dst_port: t.dst_port,
            }
        }
    }

    impl From<&TablesSnapshot> for Body {
        fn from(s: &TablesSnapshot) -> Body {
            Body {
                taken_at: s.taken_at,
                ports: s.ports.iter().map(|(id, name)| (id.0, name.clone())).collect(),
                service_ports: s
                    .service_ports
                    .iter()
                    .map(|p| ServicePort {
                        name: p.name.clone(),
                        id: p.id,
                        maglev_size: p.maglev_size as u64,
                        local_maglev_size: p.local_maglev_size as u64,
                    })
                    .collect(),
                last_service_id: s.last_service_id,
                flows: s
                    .flows
                    .iter()
                    .map(|f| Flow {
                        orig: f.orig.into(),
                        reply: f.reply.into(),
                        service: f.service,
                        return_path: f.return_path.map(|r| (r.port.0, r.client_mac.0, r.local_mac.0)),
                        state: f.state as u8,
                        replied: f.replied,
                        idle_secs: f.idle_secs,
                    })
                    .collect(),
                affinity: s
                    .affinity
                    .iter()
                    .map(|a| Affinity {
                        service: a.service,
                        client: a.client.octets(),
                        backend: a.backend,
                        timeout: a.timeout,
                        idle_secs: a.idle_secs,
                    })
                    .collect(),
                fdb: s
                    .fdb
                    .iter()
                    .map(|e| Fdb { segment: e.segment.0, mac: e.mac.0, port: e.port.0, age_secs: e.age_secs })
                    .collect(),
            }
        }
    }

    impl TryFrom<Body> for TablesSnapshot {
        type Error = String;

        fn try_from(b: Body) -> Result<TablesSnapshot, String> {
            let flows = b
                .flows
                .into_iter()
                .map(|f| {
                    Ok(FlowRecord {
                        orig: f.orig.into(),
                        reply: f.reply.into(),
                        service: f.service,
                        return_path: f.return_path.map(|(port, client, local)| ReturnPath {
                            port: PortId(port),
                            client_mac: MacAddr(client),
                            local_mac: MacAddr(local),
                        }),
                        state: State::from_u8(f.state).ok_or_else(|| format!("flow state {}", f.state))?,
                        replied: f.replied,
                        idle_secs: f.idle_secs,
                    })
                })
                .collect::<Result<_, String>>()?;
            let size = |n: u64| usize::try_from(n).map_err(|_| format!("Maglev size {n}"));
            Ok(TablesSnapshot {
                taken_at: b.taken_at,
                ports: b.ports.into_iter().map(|(id, name)| (PortId(id), name)).collect(),
                service_ports: b
                    .service_ports
                    .into_iter()
                    .map(|p| {
                        Ok(RememberedPort {
                            name: p.name,
                            id: p.id,
                            maglev_size: size(p.maglev_size)?,
                            local_maglev_size: size(p.local_maglev_size)?,
                        })
                    })
                    .collect::<Result<_, String>>()?,
                last_service_id: b.last_service_id,
                flows,
                affinity: b
                    .affinity
                    .into_iter()
                    .map(|a| AffinityRecord {
                        service: a.service,
                        client: Ipv4Addr::from(a.client),
                        backend: a.backend,
                        timeout: a.timeout,
                        idle_secs: a.idle_secs,
                    })
                    .collect(),
                fdb: b
                    .fdb
                    .into_iter()
                    .map(|e| FdbRecord {
                        segment: SegmentId(e.segment),
                        mac: MacAddr(e.mac),
                        port: PortId(e.port),
                        age_secs: e.age_secs,
                    })
                    .collect(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vswitch_dataplane::wire::parse::{IPPROTO_TCP, IPPROTO_UDP};
    use vswitch_testbed::Scratch;

    /// A snapshot with one of everything; `taken_at` as given.
    fn sample(taken_at: u64) -> TablesSnapshot {
        let t = |proto, a: [u8; 4], ap, b: [u8; 4], bp| Tuple {
            proto,
            src: a.into(),
            src_port: ap,
            dst: b.into(),
            dst_port: bp,
        };
        TablesSnapshot {
            taken_at,
            ports: [(PortId(0), "vswitch0".to_string()), (PortId(3), "uplink eth1".to_string())].into(),
            service_ports: vec![RememberedPort {
                name: "default/web:http".into(),
                id: 7,
                maglev_size: 251,
                local_maglev_size: 0,
            }],
            last_service_id: 9,
            flows: vec![
                FlowRecord {
                    orig: t(IPPROTO_TCP, [10, 244, 1, 2], 40000, [10, 96, 0, 10], 80),
                    reply: t(IPPROTO_TCP, [10, 244, 1, 7], 8080, [10, 244, 1, 2], 40000),
                    service: 7,
                    return_path: None,
                    state: State::Established,
                    replied: true,
                    idle_secs: 12,
                },
                FlowRecord {
                    orig: t(IPPROTO_UDP, [192, 168, 9, 9], 5000, [192, 168, 9, 1], 30053),
                    reply: t(IPPROTO_UDP, [10, 244, 1, 7], 53, [192, 168, 9, 1], 61000),
                    service: 7,
                    return_path: Some(ReturnPath {
                        port: PortId(3),
                        client_mac: MacAddr([2, 0, 0, 0, 0, 9]),
                        local_mac: MacAddr([2, 0, 0, 0, 0, 1]),
                    }),
                    state: State::New,
                    replied: false,
                    idle_secs: 1,
                },
            ],
            affinity: vec![AffinityRecord {
                service: 7,
                client: Ipv4Addr::new(10, 244, 1, 2),
                backend: 0x0af4_0107_1f90,
                timeout: 10800,
                idle_secs: 3,
            }],
            fdb: vec![FdbRecord {
                segment: SegmentId(1),
                mac: MacAddr([2, 0, 0, 0, 0, 9]),
                port: PortId(3),
                age_secs: 4,
            }],
        }
    }

    #[test]
    fn a_snapshot_round_trips_through_its_file() {
        let dir = Scratch::new(&format!("snap-rt-{}", std::process::id()));
        let path = path_for(&dir.0.join("state.json"));
        assert_eq!(path.file_name().unwrap(), "state.json.tables");
        assert!(load(&path, Duration::from_secs(300)).unwrap().is_none(), "none yet");
        let s = sample(unix_now() - 5);
        save(&path, &s).unwrap();
        assert_eq!(load(&path, Duration::from_secs(300)).unwrap(), Some(s));
        assert!(!path.exists(), "taken once: a later crash does not bring it back");
    }

    /// The compatibility promise: a file of format 1, as this daemon's first format
    /// wrote it, loads in every later daemon.
    #[test]
    fn format_1_files_still_load() {
        let fixture = include_bytes!("../tests/fixtures/tables-snapshot-v1.bin");
        assert_eq!(TablesSnapshot::decode(fixture), Ok(sample(1_796_000_000)));
    }

    #[test]
    fn a_torn_or_altered_file_is_set_aside() {
        let dir = Scratch::new(&format!("snap-bad-{}", std::process::id()));
        let path = path_for(&dir.0.join("state.json"));
        let good = sample(unix_now()).encode();
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let cases: [(&[u8], DecodeError); 3] = [
            (&good[..good.len() - 3], DecodeError::Checksum),
            (&flipped, DecodeError::Checksum),
            (b"{\"version\": 1}", DecodeError::NotASnapshot),
        ];
        for (bytes, expected) in cases {
            std::fs::write(&path, bytes).unwrap();
            match load(&path, Duration::from_secs(300)) {
                Err(SnapshotError::Unusable { reason, kept, .. }) => {
                    assert_eq!(reason, expected);
                    assert!(
                        kept.file_name().unwrap().to_str().unwrap().starts_with("state.json.tables.corrupt-")
                    );
                    assert_eq!(std::fs::read(&kept).unwrap(), bytes, "kept as it was for the operator");
                    std::fs::remove_file(kept).unwrap();
                }
                other => panic!("{other:?}"),
            }
            assert!(!path.exists());
        }
        // A body that checks out but does not decode.
        let mut body = postcard::to_stdvec(&v1::Body::from(&sample(0))).unwrap();
        body.truncate(body.len() - 1);
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&1u32.to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        file.extend_from_slice(&body);
        assert!(matches!(TablesSnapshot::decode(&file), Err(DecodeError::Body(_))));
    }

    #[test]
    fn a_newer_format_is_refused_by_name_and_kept() {
        let dir = Scratch::new(&format!("snap-new-{}", std::process::id()));
        let path = path_for(&dir.0.join("state.json"));
        let mut bytes = sample(unix_now()).encode();
        bytes[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&(VERSION + 1).to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let e = load(&path, Duration::from_secs(300)).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("format version {} is newer than this daemon's {VERSION}", VERSION + 1)),
            "{e}"
        );
        let SnapshotError::Unusable { kept, .. } = e else { panic!() };
        assert!(kept.to_str().unwrap().contains(".tables.unsupported-"));
    }

    #[test]
    fn a_stale_snapshot_is_removed_unused() {
        let dir = Scratch::new(&format!("snap-old-{}", std::process::id()));
        let path = path_for(&dir.0.join("state.json"));
        save(&path, &sample(unix_now() - 301)).unwrap();
        assert!(matches!(
            load(&path, Duration::from_secs(300)),
            Err(SnapshotError::Stale { max_age_secs: 300, .. })
        ));
        assert!(!path.exists());
    }
}
