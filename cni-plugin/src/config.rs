//! The network configuration on stdin and the `CNI_*` environment.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use vswitch_api::{Backend, PodRef};

use crate::error::{CniError, code};

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// This plugin's entry of a network configuration list, as the runtime passes it.
#[derive(Clone, Debug, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// vswitchd's API socket.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Pod interface MTU; default: the daemon's.
    #[serde(default)]
    pub mtu: Option<u16>,
    /// `tap` (default: the daemon's default) or `afxdp`.
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub ipam: Option<Value>,
    /// DNS settings to report when the IPAM result has none.
    #[serde(default)]
    pub dns: Option<Value>,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The key libcni also sends (an earlier name of the same list).
    #[serde(rename = "cni.dev/attachments", default)]
    pub attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// Decodes stdin: malformed JSON is code 6; a wrong value for one of our fields is 7.
    pub fn parse(stdin: &[u8]) -> Result<(NetConf, Value), CniError> {
        let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE, "the network configuration is not valid JSON")
                .with_details(e.to_string())
        })?;
        if !raw.is_object() {
            return Err(CniError::new(code::DECODE, "the network configuration is not a JSON object"));
        }
        let conf: NetConf = serde_json::from_value(raw.clone()).map_err(|e| {
            CniError::new(code::INVALID_CONFIG, "invalid network configuration").with_details(e.to_string())
        })?;
        Ok((conf, raw))
    }

    pub fn version(&self) -> &str {
        self.cni_version.as_deref().unwrap_or(crate::version::LATEST)
    }

    pub fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| PathBuf::from(vswitch_api::DEFAULT_SOCKET))
    }

    /// What ADD, DEL and CHECK need: a name, an IPAM section with a type, sane values.
    pub fn validate_for_attachment(&self) -> Result<(), CniError> {
        let invalid = |m: String| Err(CniError::new(code::INVALID_CONFIG, m));
        if self.name.is_empty() {
            return invalid("the network configuration has no \"name\"".into());
        }
        match self.ipam.as_ref().and_then(|i| i.get("type")).and_then(Value::as_str) {
            Some(t) if !t.is_empty() && !t.contains('/') => {}
            _ => return invalid("\"ipam\" with a \"type\" (e.g. host-local) is required".into()),
        }
        self.backend()?;
        if let Some(mtu) = self.mtu
            && !(576..=9000).contains(&mtu)
        {
            return invalid(format!("\"mtu\" {mtu} is outside 576..=9000"));
        }
        Ok(())
    }

    pub fn ipam_type(&self) -> &str {
        self.ipam.as_ref().and_then(|i| i.get("type")).and_then(Value::as_str).unwrap_or("")
    }

    pub fn backend(&self) -> Result<Option<Backend>, CniError> {
        match self.backend.as_deref() {
            None => Ok(None),
            Some("tap") => Ok(Some(Backend::Tap)),
            Some("afxdp") => Ok(Some(Backend::Afxdp)),
            Some(other) => Err(CniError::new(
                code::INVALID_CONFIG,
                format!("\"backend\" {other:?}: expected \"tap\" or \"afxdp\""),
            )),
        }
    }

    /// The attachments GC must keep (both keys libcni may send).
    pub fn keep(&self) -> Vec<Attachment> {
        let mut v: Vec<Attachment> =
            self.valid_attachments.iter().chain(self.attachments.iter()).flatten().cloned().collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The `CNI_*` environment.
#[derive(Clone, Debug, Default)]
pub struct CniEnv {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub path: Vec<PathBuf>,
    pub args: BTreeMap<String, String>,
    /// Everything the plugin was given, passed on to the IPAM plugin.
    pub vars: Vec<(String, String)>,
}

impl CniEnv {
    pub fn from_vars(vars: &[(String, String)]) -> CniEnv {
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        CniEnv {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            path: std::env::split_paths(&get("CNI_PATH")).filter(|p| !p.as_os_str().is_empty()).collect(),
            args: BTreeMap::new(),
            vars: vars.to_vec(),
        }
    }

    fn missing(var: &str) -> CniError {
        CniError::new(code::INVALID_ENV, format!("{var} is required"))
    }

    /// Checks what ADD, DEL and CHECK require; `netns_required` is false for DEL.
    pub fn validate(&mut self, netns_required: bool) -> Result<(), CniError> {
        if self.container_id.is_empty() {
            return Err(Self::missing("CNI_CONTAINERID"));
        }
        vswitch_api::validate_container_id(&self.container_id)
            .map_err(|e| CniError::new(code::INVALID_ENV, format!("CNI_CONTAINERID: {e}")))?;
        if self.ifname.is_empty() {
            return Err(Self::missing("CNI_IFNAME"));
        }
        vswitch_api::validate_ifname(&self.ifname)
            .map_err(|e| CniError::new(code::INVALID_ENV, format!("CNI_IFNAME: {e}")))?;
        if netns_required && self.netns.is_empty() {
            return Err(Self::missing("CNI_NETNS"));
        }
        if self.path.is_empty() {
            return Err(Self::missing("CNI_PATH"));
        }
        self.args =
            parse_args(self.vars.iter().find(|(k, _)| k == "CNI_ARGS").map_or("", |(_, v)| v.as_str()))?;
        Ok(())
    }

    /// The Kubernetes pod kubelet named in `CNI_ARGS`, if any.
    pub fn pod(&self) -> Option<PodRef> {
        let get = |k: &str| self.args.get(k).cloned().unwrap_or_default();
        let pod = PodRef {
            namespace: get("K8S_POD_NAMESPACE"),
            name: get("K8S_POD_NAME"),
            uid: get("K8S_POD_UID"),
        };
        (pod != PodRef::default()).then_some(pod)
    }
}

/// Keys this plugin understands in `CNI_ARGS`.
const KNOWN_ARGS: &[&str] =
    &["IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"];

/// `CNI_ARGS` as the IPAM plugin gets them: with `IgnoreUnknown=1`. ADD, CHECK and DEL
/// accepted every key in them (known, or let through by `IgnoreUnknown`), but kubelet's `K8S_*`
/// keys are unknown to `host-local`, which refuses them otherwise; its own keys (`IP`)
/// still reach it.
pub fn args_for_ipam(text: &str) -> String {
    let pairs: Vec<&str> = text
        .split(';')
        .filter(|p| !p.is_empty() && p.split_once('=').is_none_or(|(k, _)| k != "IgnoreUnknown"))
        .collect();
    if pairs.is_empty() {
        return text.to_string();
    }
    std::iter::once("IgnoreUnknown=1").chain(pairs).collect::<Vec<_>>().join(";")
}

/// Parses `CNI_ARGS` (`K=V;K=V`). An unknown key is an error unless `IgnoreUnknown` is
/// true, as in libcni.
pub fn parse_args(text: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut args = BTreeMap::new();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::new(code::INVALID_ENV, format!("CNI_ARGS: {pair:?} is not KEY=VALUE")));
        };
        args.insert(k.to_string(), v.to_string());
    }
    let ignore_unknown =
        args.get("IgnoreUnknown").is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true"));
    if !ignore_unknown && let Some(k) = args.keys().find(|k| !KNOWN_ARGS.contains(&k.as_str())) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_ARGS: unknown key {k:?} (set IgnoreUnknown=1 to allow)"),
        ));
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipam_plugin_gets_the_args_with_ignore_unknown() {
        assert_eq!(
            args_for_ipam("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"
        );
        assert_eq!(args_for_ipam("IgnoreUnknown=true;IP=10.244.1.9"), "IgnoreUnknown=1;IP=10.244.1.9");
        assert_eq!(args_for_ipam(""), "");
        assert_eq!(args_for_ipam("IgnoreUnknown=0"), "IgnoreUnknown=0", "nothing to let through");
    }

    #[test]
    fn args_follow_libcni() {
        let a = parse_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;FOO=bar").unwrap();
        assert_eq!(a["K8S_POD_NAME"], "web-0");
        assert_eq!(parse_args("FOO=bar").unwrap_err().code, code::INVALID_ENV);
        assert_eq!(parse_args("novalue").unwrap_err().code, code::INVALID_ENV);
        assert!(parse_args("").unwrap().is_empty());
    }

    #[test]
    fn config_errors_have_the_right_codes() {
        assert_eq!(NetConf::parse(b"{").unwrap_err().code, code::DECODE);
        assert_eq!(NetConf::parse(b"[1]").unwrap_err().code, code::DECODE);
        assert_eq!(NetConf::parse(br#"{"mtu": "big"}"#).unwrap_err().code, code::INVALID_CONFIG);
        let (c, _) = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","type":"vswitch-cni"}"#).unwrap();
        assert_eq!(c.validate_for_attachment().unwrap_err().code, code::INVALID_CONFIG, "no ipam");
        let (c, _) =
            NetConf::parse(br#"{"name":"n","ipam":{"type":"host-local"},"backend":"vhost"}"#).unwrap();
        assert_eq!(c.validate_for_attachment().unwrap_err().code, code::INVALID_CONFIG);
        let (c, _) = NetConf::parse(
            br#"{"name":"n","ipam":{"type":"host-local"},"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],
                "cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert!(c.validate_for_attachment().is_ok());
        assert_eq!(c.keep().len(), 1);
        assert_eq!(c.version(), "1.1.0");
    }
}
