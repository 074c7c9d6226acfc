//! The state file: every attached pod port, so a restarted daemon re-attaches them.
//!
//! Written after every attach and detach with write-to-temporary, fsync, rename, fsync
//! of the directory: a crash at any point leaves either the old file or the new one,
//! never a torn one. A file that does not parse is kept aside (renamed
//! `<name>.corrupt-<seconds>`) and the daemon starts without it rather than refusing to
//! start again and again.
//!
//! Each port's devices also carry its identity in their alias (a [`DeviceTag`]): with
//! the file corrupt, the daemon finds the ports that still exist by their tags and
//! re-attaches those (`PortManager::recover_from_devices`).

use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use vswitch_api::{Backend, PodRef};
use vswitch_dataplane::ids::PortId;
use vswitch_dataplane::wire::MacAddr;

/// Format version written in the file; a newer one is refused, not misread.
pub(crate) const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateFile {
    pub version: u32,
    pub ports: Vec<SavedPort>,
}

/// An attached pod port, as needed to find and re-attach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedPort {
    #[serde(with = "port_id")]
    pub id: PortId,
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub backend: Backend,
    #[serde(with = "mac_text")]
    pub mac: MacAddr,
    pub ips: Vec<IpNet>,
    pub mtu: u16,
    /// Host end of the veth pair (AF_XDP ports).
    pub host_ifname: Option<String>,
    pub pod: Option<PodRef>,
    #[serde(default)]
    pub network: Option<String>,
}

/// A port's identity, written into the alias (`IFLA_IFALIAS`, at most 255 bytes) of
/// the devices it made: what a device's own attributes (name, kind, MAC, MTU,
/// namespace) do not tell. `owner` ties it to one state file, so two daemons on one
/// machine (tests) never take each other's ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeviceTag {
    #[serde(rename = "o")]
    pub owner: String,
    #[serde(with = "port_id")]
    pub id: PortId,
    #[serde(rename = "c")]
    pub container_id: String,
    #[serde(rename = "ip")]
    pub ips: Vec<IpNet>,
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

const TAG_PREFIX: &str = "vswitch1:";
/// IFALIASZ less the terminating NUL.
const ALIAS_MAX: usize = 255;

impl DeviceTag {
    pub(crate) fn of(saved: &SavedPort, owner: &str) -> DeviceTag {
        DeviceTag {
            owner: owner.to_string(),
            id: saved.id,
            container_id: saved.container_id.clone(),
            ips: saved.ips.clone(),
            network: saved.network.clone(),
            pod: saved.pod.clone(),
        }
    }

    /// The alias text. What does not fit is left out in order of least use: the pod's
    /// UID, then the pod reference (both only shown in listings). `None` if even the
    /// rest is too long (a very long container ID): that port is only in the file.
    pub(crate) fn to_alias(&self) -> Option<String> {
        let mut tag = self.clone();
        let text =
            |t: &DeviceTag| format!("{TAG_PREFIX}{}", serde_json::to_string(t).expect("tag serializes"));
        let mut alias = text(&tag);
        if alias.len() > ALIAS_MAX
            && let Some(p) = &mut tag.pod
        {
            p.uid.clear();
            alias = text(&tag);
        }
        if alias.len() > ALIAS_MAX {
            tag.pod = None;
            alias = text(&tag);
        }
        (alias.len() <= ALIAS_MAX).then_some(alias)
    }

    /// The tag in `alias`, if it is one of ours.
    pub(crate) fn from_alias(alias: &str) -> Option<DeviceTag> {
        serde_json::from_str(alias.strip_prefix(TAG_PREFIX)?).ok()
    }
}

/// The owner name of tags written for the state file at `path`: a hash of the path
/// (FNV-1a; stable across builds, unlike std's hasher).
pub(crate) fn owner_of(path: &Path) -> String {
    let hash = path
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3));
    format!("{:08x}", hash >> 32)
}

/// A port id as its number (the data plane's ids carry no serde).
mod port_id {
    use serde::{Deserialize, Deserializer, Serializer};
    use vswitch_dataplane::ids::PortId;

    pub(super) fn serialize<S: Serializer>(id: &PortId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(id.0)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PortId, D::Error> {
        u16::deserialize(d).map(PortId)
    }
}

/// A MAC as its `02:00:0a:f4:01:05` text, as the file has always held it.
mod mac_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use vswitch_dataplane::wire::MacAddr;

    pub(super) fn serialize<S: Serializer>(mac: &MacAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(mac)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|e| D::Error::custom(format!("mac {text:?}: {e}")))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading state file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {} is corrupt ({reason}); kept as {}", path.display(), kept.display())]
    Corrupt { path: PathBuf, reason: String, kept: PathBuf },
    #[error("writing state file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads the state file. `Ok(None)`: there is none (first start). A corrupt file is
/// renamed aside and reported as [`StateError::Corrupt`]; the caller starts empty.
pub(crate) fn load(path: &Path) -> Result<Option<StateFile>, StateError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path: path.to_path_buf(), source }),
    };
    let parsed: Result<StateFile, String> =
        serde_json::from_slice(&text).map_err(|e| e.to_string()).and_then(|s: StateFile| {
            if s.version > VERSION {
                Err(format!("version {} is newer than this daemon's {VERSION}", s.version))
            } else {
                Ok(s)
            }
        });
    match parsed {
        Ok(s) => Ok(Some(s)),
        Err(reason) => {
            let kept = set_aside(path, "corrupt")
                .map_err(|source| StateError::Read { path: path.to_path_buf(), source })?;
            Err(StateError::Corrupt { path: path.to_path_buf(), reason, kept })
        }
    }
}

/// Replaces the state file atomically.
pub(crate) fn save(path: &Path, state: &StateFile) -> Result<(), StateError> {
    let body = serde_json::to_vec_pretty(state).expect("state serializes");
    write_atomically(path, &body).map_err(|source| StateError::Write { path: path.to_path_buf(), source })
}

/// Renames a file the daemon will not use to `<path>.<why>-<unix seconds>`, kept for
/// the operator; returns the new path.
pub(crate) fn set_aside(path: &Path, why: &str) -> std::io::Result<PathBuf> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut kept = path.as_os_str().to_owned();
    kept.push(format!(".{why}-{secs}"));
    let kept = PathBuf::from(kept);
    std::fs::rename(path, &kept)?;
    Ok(kept)
}

/// Replaces the file at `path` with `body`: written to a temporary file, synced, renamed
/// over it, and the directory synced, so a crash leaves the old file or the new one.
pub(crate) fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateFile {
        StateFile {
            version: VERSION,
            ports: vec![SavedPort {
                id: PortId(3),
                container_id: "c0ffee".into(),
                ifname: "eth0".into(),
                netns: "/var/run/netns/p".into(),
                backend: Backend::Tap,
                mac: "02:00:0a:f4:01:05".parse().unwrap(),
                ips: vec!["10.244.1.5/24".parse().unwrap()],
                mtu: 1500,
                host_ifname: None,
                pod: None,
                network: Some("k8s-pod-network".into()),
            }],
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vswitch-state-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn round_trip_and_missing_file() {
        let dir = scratch("rt");
        let path = dir.join("sub/state.json");
        assert_eq!(load(&path).unwrap(), None);
        save(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(sample()));
        assert!(!dir.join("sub/state.json.tmp").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A file written before the ids and MACs were typed reads as it always did.
    #[test]
    fn files_of_earlier_versions_load() {
        let old = r#"{"version":1,"ports":[{"id":3,"container_id":"c0ffee","ifname":"eth0",
            "netns":"/var/run/netns/p","backend":"tap","mac":"02:00:0a:f4:01:05",
            "ips":["10.244.1.5/24"],"mtu":1500,"host_ifname":null,"pod":null}]}"#;
        let file: StateFile = serde_json::from_str(old).unwrap();
        let mut want = sample();
        want.ports[0].network = None;
        assert_eq!(file, want);
        let bad_mac = old.replace("02:00:0a:f4:01:05", "02:00:0a");
        let err = serde_json::from_str::<StateFile>(&bad_mac).unwrap_err().to_string();
        assert!(err.contains("mac \"02:00:0a\""), "{err}");
    }

    #[test]
    fn device_tags_round_trip_and_fit_an_alias() {
        let saved = &sample().ports[0];
        let owner = owner_of(Path::new("/var/lib/vswitch/state.json"));
        assert_eq!(owner, owner_of(Path::new("/var/lib/vswitch/state.json")));
        assert_ne!(owner, owner_of(Path::new("/tmp/state.json")));
        let tag = DeviceTag::of(saved, &owner);
        let alias = tag.to_alias().expect("fits");
        assert_eq!(DeviceTag::from_alias(&alias), Some(tag.clone()));
        assert_eq!(DeviceTag::from_alias("uplink to rack 3"), None, "someone else's alias");
        assert_eq!(DeviceTag::from_alias("vswitch1:{not json"), None);

        let mut long = tag.clone();
        long.pod = Some(PodRef { namespace: "n".repeat(63), name: "p".repeat(120), uid: "u".repeat(36) });
        let alias = long.to_alias().expect("fits without the pod");
        assert!(alias.len() <= ALIAS_MAX);
        let back = DeviceTag::from_alias(&alias).unwrap();
        assert_eq!((back.pod, back.container_id), (None, tag.container_id.clone()));
        // A pod name that fits only without the UID.
        let mut medium = tag.clone();
        medium.pod = Some(PodRef { namespace: "default".into(), name: String::new(), uid: String::new() });
        let name_len = ALIAS_MAX - medium.to_alias().unwrap().len() - 10;
        medium.pod =
            Some(PodRef { namespace: "default".into(), name: "p".repeat(name_len), uid: "u".repeat(36) });
        let back = DeviceTag::from_alias(&medium.to_alias().unwrap()).unwrap();
        let kept = back.pod.map(|p| (p.name.len(), p.uid));
        assert_eq!(kept, Some((name_len, String::new())), "only the UID left out");

        long.container_id = "c".repeat(250);
        assert_eq!(long.to_alias(), None);
    }

    #[test]
    fn corrupt_file_is_kept_aside_not_fatal() {
        let dir = scratch("corrupt");
        let path = dir.join("state.json");
        // A write torn mid-way (what a non-atomic writer would leave).
        let full = serde_json::to_vec(&sample()).unwrap();
        std::fs::write(&path, &full[..full.len() / 2]).unwrap();
        let err = load(&path).unwrap_err();
        let StateError::Corrupt { kept, .. } = &err else { panic!("{err}") };
        assert!(kept.exists() && !path.exists(), "{err}");
        assert_eq!(load(&path).unwrap(), None, "the next start begins clean");
        std::fs::write(&path, br#"{"version": 99, "ports": []}"#).unwrap();
        assert!(matches!(load(&path), Err(StateError::Corrupt { .. })), "a newer format is not misread");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
