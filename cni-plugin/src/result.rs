//! The CNI result: read in any supported version (IPAM results, `prevResult`), written
//! in the version the configuration asks for.
//!
//! Versions differ in small ways: 0.3.x/0.4.0 put a `version` ("4"/"6") on each IP;
//! 1.0.0 dropped it; 1.1.0 added `mtu` (and other fields) to interfaces and routes.
//! Fields this plugin does not interpret are carried through unchanged when the output
//! version has them.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{CniError, code};
use crate::version;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// Fields of newer versions (`socketPath`, `pciID`) passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// 1.1.0 attributes (`mtu`, `advmss`, `priority`, `table`, `scope`), passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

/// A result, version-independent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
}

impl CniResult {
    /// Reads a result of any supported version (`version` fields of old IPs ignored).
    pub fn parse(value: &Value, what: &str) -> Result<CniResult, CniError> {
        let w: Wire = serde_json::from_value(value.clone()).map_err(|e| {
            CniError::new(code::DECODE, format!("{what} is not a valid CNI result"))
                .with_details(e.to_string())
        })?;
        if w.ips.iter().any(|ip| ip.interface.is_some_and(|i| i >= w.interfaces.len())) {
            return Err(CniError::new(
                code::DECODE,
                format!("{what}: an IP names an interface index that does not exist"),
            ));
        }
        Ok(CniResult { interfaces: w.interfaces, ips: w.ips, routes: w.routes, dns: w.dns })
    }

    /// The result in spec version `v`.
    pub fn to_json(&self, v: &str) -> Value {
        let modern = version::at_least(v, "1.1.0");
        let versioned_ips = !version::at_least(v, "1.0.0");
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut i = i.clone();
                if !modern {
                    i.mtu = None;
                    i.extra.clear();
                }
                serde_json::to_value(i).expect("interfaces serialize")
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = serde_json::to_value(ip).expect("ips serialize");
                if versioned_ips {
                    let family = if ip.address.addr().is_ipv4() { "4" } else { "6" };
                    o["version"] = Value::String(family.into());
                }
                o
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut r = r.clone();
                if !modern {
                    r.extra.clear();
                }
                serde_json::to_value(r).expect("routes serialize")
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), Value::String(v.into()));
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        out.insert("ips".into(), Value::Array(ips));
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert("dns".into(), serde_json::to_value(&self.dns).expect("dns serializes"));
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:00:0a:f4:01:05".into(),
                mtu: Some(1500),
                sandbox: "/var/run/netns/p".into(),
                extra: Map::new(),
            }],
            ips: vec![IpConfig {
                address: "10.244.1.5/24".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap()),
                extra: Map::new(),
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn written_per_version() {
        let r = sample();
        let v11 = r.to_json("1.1.0");
        assert_eq!(v11["cniVersion"], "1.1.0");
        assert_eq!(v11["interfaces"][0]["mtu"], 1500);
        assert!(v11["ips"][0].get("version").is_none());
        assert_eq!(v11["ips"][0]["interface"], 0);
        let v10 = r.to_json("1.0.0");
        assert!(v10["interfaces"][0].get("mtu").is_none(), "mtu is new in 1.1.0");
        let v04 = r.to_json("0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(
            CniResult::parse(&v04, "x").unwrap(),
            CniResult { interfaces: vec![Interface { mtu: None, ..r.interfaces[0].clone() }], ..r.clone() }
        );
    }

    #[test]
    fn reads_what_ipam_plugins_print() {
        // host-local (plugins v1.1) for a 1.0.0 config.
        let v = json!({"cniVersion":"1.0.0","ips":[{"address":"10.244.1.2/24","gateway":"10.244.1.1"}],
                       "routes":[{"dst":"0.0.0.0/0"}],"dns":{}});
        let r = CniResult::parse(&v, "IPAM result").unwrap();
        assert_eq!(r.ips[0].gateway, Some("10.244.1.1".parse().unwrap()));
        assert_eq!(r.routes[0].gw, None);
        let bad = json!({"ips":[{"address":"10.244.1.2/24","interface":3}]});
        assert_eq!(CniResult::parse(&bad, "x").unwrap_err().code, code::DECODE);
        let route_extras = json!({"ips":[],"routes":[{"dst":"10.0.0.0/8","mtu":1400,"table":7}]});
        let r = CniResult::parse(&route_extras, "x").unwrap();
        assert_eq!(r.to_json("1.1.0")["routes"][0]["table"], 7);
        assert!(r.to_json("1.0.0")["routes"][0].get("table").is_none());
    }
}
