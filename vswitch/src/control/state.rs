//! The state file: every attached pod port, so a restarted daemon re-attaches them.
//!
//! Written after every attach and detach with write-to-temporary, fsync, rename, fsync
//! of the directory: a crash at any point leaves either the old file or the new one,
//! never a torn one. A file that does not parse is kept aside (renamed
//! `<name>.corrupt-<seconds>`) and the daemon starts without it rather than refusing to
//! start again and again.

use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use vswitch_api::{Backend, PodRef};

/// Format version written in the file; a newer one is refused, not misread.
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    pub version: u32,
    pub ports: Vec<SavedPort>,
}

/// An attached pod port, as needed to find and re-attach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPort {
    pub id: u16,
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub backend: Backend,
    pub mac: String,
    pub ips: Vec<IpNet>,
    pub mtu: u16,
    /// Host end of the veth pair (AF_XDP ports).
    pub host_ifname: Option<String>,
    pub pod: Option<PodRef>,
    #[serde(default)]
    pub network: Option<String>,
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
pub fn load(path: &Path) -> Result<Option<StateFile>, StateError> {
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
            let secs =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let mut kept = path.as_os_str().to_owned();
            kept.push(format!(".corrupt-{secs}"));
            let kept = PathBuf::from(kept);
            std::fs::rename(path, &kept)
                .map_err(|source| StateError::Read { path: path.to_path_buf(), source })?;
            Err(StateError::Corrupt { path: path.to_path_buf(), reason, kept })
        }
    }
}

/// Replaces the state file atomically.
pub fn save(path: &Path, state: &StateFile) -> Result<(), StateError> {
    let err = |source| StateError::Write { path: path.to_path_buf(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let body = serde_json::to_vec_pretty(state).expect("state serializes");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&body).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateFile {
        StateFile {
            version: VERSION,
            ports: vec![SavedPort {
                id: 3,
                container_id: "c0ffee".into(),
                ifname: "eth0".into(),
                netns: "/var/run/netns/p".into(),
                backend: Backend::Tap,
                mac: "02:00:0a:f4:01:05".into(),
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
