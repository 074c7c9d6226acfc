//! CNI errors: every failure maps, in one place, to a code of the CNI spec (or one of
//! ours, 100 and up) and is printed as the spec's error object.

use serde::Serialize;

/// Codes of the CNI specification (§ "Error codes").
pub mod code {
    /// The plugin does not speak the configuration's `cniVersion`.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A configuration field the plugin does not support.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container is unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// An environment variable is missing or invalid.
    pub const INVALID_ENV: u32 = 4;
    /// Reading input or another I/O operation failed.
    pub const IO_FAILURE: u32 = 5;
    /// The input could not be decoded.
    pub const DECODE: u32 = 6;
    /// The network configuration is invalid.
    pub const INVALID_CONFIG: u32 = 7;
    /// Transient: try again later (vswitchd is not reachable).
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;

    // Ours (100+).
    /// vswitchd refused the attach: the address, MAC or attachment is in use.
    pub const CONFLICT: u32 = 100;
    /// vswitchd refused the attach: the pod already has an interface of that name.
    pub const INTERFACE_EXISTS: u32 = 101;
    /// vswitchd refused or failed otherwise (the message has its error code and text).
    pub const DAEMON: u32 = 102;
    /// Configuring the pod's side (addresses, routes) failed.
    pub const POD_SETUP: u32 = 103;
    /// CHECK found the pod's networking not as the previous result says.
    pub const CHECK_FAILED: u32 = 104;
    /// The IPAM plugin could not be run or gave no usable result.
    pub const IPAM: u32 = 105;
}

/// A CNI error object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The JSON object printed on stdout, in the requested spec version.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            #[serde(flatten)]
            err: &'a CniError,
        }
        serde_json::to_string(&Out { cni_version, err: self }).expect("error objects serialize")
    }
}

/// An API client error as a CNI error: an unreachable daemon is "try again later".
pub fn from_client(op: &str, e: vswitch_api::ClientError) -> CniError {
    use vswitch_api::{ClientError, codes};
    match e {
        ClientError::Unreachable { .. } | ClientError::Timeout { .. } => {
            CniError::new(code::TRY_AGAIN, format!("{op}: vswitchd is not reachable"))
                .with_details(e.to_string())
        }
        ClientError::Api { ref code, ref message, .. } => {
            let c = match code.as_str() {
                codes::CONFLICT => code::CONFLICT,
                codes::INTERFACE_EXISTS => code::INTERFACE_EXISTS,
                _ => code::DAEMON,
            };
            CniError::new(c, format!("{op}: {message}")).with_details(format!("vswitchd error code {code}"))
        }
        other => CniError::new(code::DAEMON, format!("{op}: {other}")),
    }
}
