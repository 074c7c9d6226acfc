//! vswitch-cni: the CNI plugin of vswitch (spec 1.1.0; also 0.3.x, 0.4.0, 1.0.0).
//!
//! Thin by design: it validates its input, delegates address allocation to the
//! configured IPAM plugin, asks vswitchd (over its Unix-socket API) to create the pod's
//! interface and switch port, configures addresses and routes inside the pod over
//! netlink, and prints the result. Every failure is a CNI error object with the spec's
//! code ([`error::code`]), and an ADD that fails part-way undoes what it did.
//!
//! Network configuration (one entry of a `.conflist`):
//!
//! ```json
//! {
//!   "type": "vswitch-cni",
//!   "socket": "/run/vswitch/vswitchd.sock",   // optional
//!   "mtu": 1500,                              // optional: default the daemon's
//!   "backend": "tap",                         // optional: "tap" | "afxdp"
//!   "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.244.1.0/24" }]] }
//! }
//! ```

#![forbid(unsafe_code)]

pub mod commands;
pub mod config;
pub mod error;
pub mod ipam;
pub mod pod;
pub mod result;
pub mod version;

use config::{CniEnv, NetConf};
use error::{CniError, code};

/// What the process prints and how it exits.
#[derive(Debug)]
pub struct Outcome {
    pub stdout: Option<String>,
    pub success: bool,
}

fn failure(e: CniError, cni_version: &str) -> Outcome {
    Outcome { stdout: Some(e.to_json(cni_version)), success: false }
}

/// Runs one invocation: `vars` is the environment, `stdin` what the runtime wrote.
pub fn run(vars: &[(String, String)], stdin: std::io::Result<Vec<u8>>) -> Outcome {
    let mut env = CniEnv::from_vars(vars);
    let stdin = match stdin {
        Ok(b) => b,
        Err(e) => {
            return failure(CniError::new(code::IO_FAILURE, format!("reading stdin: {e}")), version::LATEST);
        }
    };
    if env.command == "VERSION" {
        return Outcome { stdout: Some(commands::version_info(&stdin).to_string()), success: true };
    }
    let (conf, raw) = match NetConf::parse(&stdin) {
        Ok(c) => c,
        Err(e) => return failure(e, version::LATEST),
    };
    let v = conf.version().to_string();
    if let Err(e) = version::check(&v) {
        return failure(e, version::LATEST);
    }
    let done = |r: Result<(), CniError>| match r {
        Ok(()) => Outcome { stdout: None, success: true },
        Err(e) => failure(e, &v),
    };
    let raw = commands::with_pod_cidr(&conf, &raw);
    match env.command.as_str() {
        "ADD" => match commands::add(&conf, &raw, &mut env) {
            Ok(result) => Outcome { stdout: Some(result.to_string()), success: true },
            Err(e) => failure(e, &v),
        },
        "DEL" => done(commands::del(&conf, &raw, &mut env)),
        "CHECK" => done(commands::check(&conf, &raw, &mut env)),
        "STATUS" => done(commands::status(&conf, &raw, &env)),
        "GC" => done(commands::gc(&conf, &raw, &env)),
        "" => failure(CniError::new(code::INVALID_ENV, "CNI_COMMAND is required"), &v),
        other => {
            failure(CniError::new(code::INVALID_ENV, format!("CNI_COMMAND {other:?} is not a CNI verb")), &v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(command: &str) -> Vec<(String, String)> {
        vec![("CNI_COMMAND".into(), command.into())]
    }

    #[test]
    fn version_answers_in_the_asked_version() {
        let out = run(&vars("VERSION"), Ok(br#"{"cniVersion":"0.4.0"}"#.to_vec()));
        let v: serde_json::Value = serde_json::from_str(&out.stdout.unwrap()).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), version::SUPPORTED.len());
        let out = run(&vars("VERSION"), Ok(Vec::new()));
        assert!(out.success && out.stdout.unwrap().contains("\"1.1.0\""));
    }

    #[test]
    fn input_errors_are_error_objects() {
        let code_of = |o: Outcome| -> u64 {
            assert!(!o.success);
            serde_json::from_str::<serde_json::Value>(&o.stdout.unwrap()).unwrap()["code"].as_u64().unwrap()
        };
        assert_eq!(code_of(run(&vars("ADD"), Ok(b"not json".to_vec()))), u64::from(code::DECODE));
        assert_eq!(
            code_of(run(&vars("ADD"), Ok(br#"{"cniVersion":"9.9.9","name":"n"}"#.to_vec()))),
            u64::from(code::INCOMPATIBLE_VERSION)
        );
        let conf = br#"{"cniVersion":"1.1.0","name":"n","type":"vswitch-cni","ipam":{"type":"host-local"}}"#;
        assert_eq!(code_of(run(&vars(""), Ok(conf.to_vec()))), u64::from(code::INVALID_ENV));
        assert_eq!(code_of(run(&vars("FROB"), Ok(conf.to_vec()))), u64::from(code::INVALID_ENV));
        // ADD without CNI_CONTAINERID.
        assert_eq!(code_of(run(&vars("ADD"), Ok(conf.to_vec()))), u64::from(code::INVALID_ENV));
        let read_error = run(&vars("ADD"), Err(std::io::Error::other("broken pipe")));
        assert_eq!(code_of(read_error), u64::from(code::IO_FAILURE));
    }
}
