//! IPAM delegation: the `ipam.type` plugin is found in `CNI_PATH` and executed with this
//! plugin's own configuration and environment (CNI_COMMAND set to the verb), as the spec
//! says. Its error object is passed on with its code.
//!
//! An IPAM plugin older than the configuration (Debian 12's `host-local` speaks up to
//! 1.0.0) refuses a newer `cniVersion` with code 1; the call is then repeated once at the
//! highest version both speak, learned from the plugin's VERSION. The addresses do not
//! depend on the version. `CNI_ARGS` reach it with `IgnoreUnknown=1` (kubelet's `K8S_*`
//! keys are ours, not the IPAM plugin's).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::config::CniEnv;
use crate::error::{CniError, code};
use crate::result::CniResult;
use crate::version;

/// The executable called `name` in the `CNI_PATH` directories.
pub fn find(name: &str, env: &CniEnv) -> Result<PathBuf, CniError> {
    env.path.iter().map(|dir| dir.join(name)).find(|p| p.is_file()).ok_or_else(|| {
        CniError::new(code::IPAM, format!("IPAM plugin {name:?} not found in CNI_PATH"))
            .with_details(format!("searched {:?}", env.path))
    })
}

/// Runs `plugin` with `verb`; the attachment's container id and ifname can be
/// overridden (GC releases other attachments than the one in the environment).
fn exec(
    plugin: &Path,
    verb: &str,
    env: &CniEnv,
    attachment: Option<(&str, &str)>,
    stdin: &[u8],
) -> Result<Option<Value>, CniError> {
    let mut cmd = Command::new(plugin);
    cmd.env_clear();
    for (k, v) in &env.vars {
        if k == "CNI_ARGS" {
            cmd.env(k, crate::config::args_for_ipam(v));
        } else {
            cmd.env(k, v);
        }
    }
    cmd.env("CNI_COMMAND", verb);
    if let Some((id, ifname)) = attachment {
        cmd.env("CNI_CONTAINERID", id).env("CNI_IFNAME", ifname).env("CNI_NETNS", "");
    }
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| {
            CniError::new(code::IPAM, format!("running IPAM plugin {}: {e}", plugin.display()))
        })?;
    // The plugin may exit before reading everything (e.g. on a version error).
    let _ = child.stdin.take().expect("piped").write_all(stdin);
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(code::IPAM, format!("waiting for IPAM plugin {}: {e}", plugin.display()))
    })?;
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if out.status.success() {
        return Ok(parsed);
    }
    let name =
        plugin.file_name().map_or_else(|| plugin.display().to_string(), |n| n.to_string_lossy().into_owned());
    match parsed.as_ref().and_then(|v| Some((v.get("code")?.as_u64()?, v.get("msg")?.as_str()?.to_string())))
    {
        Some((c, msg)) => {
            let details =
                parsed.as_ref().and_then(|v| v.get("details")).and_then(Value::as_str).unwrap_or_default();
            Err(CniError::new(c as u32, format!("IPAM {name} {verb}: {msg}")).with_details(details))
        }
        None => Err(CniError::new(code::IPAM, format!("IPAM {name} {verb} failed ({})", out.status))
            .with_details(String::from_utf8_lossy(&out.stderr).trim().to_string())),
    }
}

/// The versions `plugin` speaks (its VERSION answer).
fn versions(plugin: &Path, env: &CniEnv) -> Result<Vec<String>, CniError> {
    let answer = exec(plugin, "VERSION", env, None, b"{}")?.unwrap_or(Value::Null);
    Ok(answer
        .get("supportedVersions")
        .and_then(Value::as_array)
        .map(|v| v.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default())
}

/// Runs `verb`; on "incompatible version", again at the highest common version.
fn exec_negotiated(
    plugin: &Path,
    verb: &str,
    env: &CniEnv,
    attachment: Option<(&str, &str)>,
    conf: &Value,
) -> Result<Option<Value>, CniError> {
    let bytes = serde_json::to_vec(conf).expect("configuration serializes");
    match exec(plugin, verb, env, attachment, &bytes) {
        Err(e) if e.code == code::INCOMPATIBLE_VERSION => {
            let theirs = versions(plugin, env)?;
            let Some(common) = version::best_common(version::SUPPORTED, &theirs) else { return Err(e) };
            let mut conf = conf.clone();
            conf["cniVersion"] = Value::String(common.into());
            exec(plugin, verb, env, attachment, &serde_json::to_vec(&conf).expect("serializes"))
        }
        other => other,
    }
}

/// An IPAM plugin bound to one configuration.
pub struct Ipam<'a> {
    plugin: PathBuf,
    env: &'a CniEnv,
    conf: &'a Value,
}

impl<'a> Ipam<'a> {
    pub fn new(ipam_type: &str, env: &'a CniEnv, conf: &'a Value) -> Result<Ipam<'a>, CniError> {
        Ok(Ipam { plugin: find(ipam_type, env)?, env, conf })
    }

    /// Allocates addresses for the environment's attachment.
    pub fn add(&self) -> Result<CniResult, CniError> {
        let out = exec_negotiated(&self.plugin, "ADD", self.env, None, self.conf)?
            .ok_or_else(|| CniError::new(code::IPAM, "the IPAM plugin printed no result"))?;
        let result = CniResult::parse(&out, "the IPAM result")?;
        if result.ips.is_empty() {
            return Err(CniError::new(code::IPAM, "the IPAM plugin allocated no address"));
        }
        Ok(result)
    }

    /// Releases the allocation of `attachment` (default: the environment's).
    pub fn del(&self, attachment: Option<(&str, &str)>) -> Result<(), CniError> {
        exec_negotiated(&self.plugin, "DEL", self.env, attachment, self.conf).map(|_| ())
    }

    pub fn check(&self) -> Result<(), CniError> {
        exec_negotiated(&self.plugin, "CHECK", self.env, None, self.conf).map(|_| ())
    }

    /// Whether the plugin speaks 1.1.0 (and so has STATUS and GC).
    pub fn speaks_1_1(&self) -> Result<bool, CniError> {
        Ok(versions(&self.plugin, self.env)?.iter().any(|v| v == "1.1.0"))
    }

    /// STATUS or GC, passed on as is (only to a plugin that speaks 1.1.0).
    pub fn verb(&self, verb: &str) -> Result<(), CniError> {
        exec(&self.plugin, verb, self.env, None, &serde_json::to_vec(self.conf).expect("serializes"))
            .map(|_| ())
    }
}
