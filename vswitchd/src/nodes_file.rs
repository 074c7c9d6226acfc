//! Other nodes of the cluster without a cluster API: each one's underlay address and pod
//! CIDRs, as `[[overlay.node]]` entries in the daemon's config and as `[[node]]` entries
//! in the watched nodes file (the same keys):
//!
//! ```toml
//! [[node]]
//! name = "node-b"
//! ip = "192.168.50.2"                 # its underlay address
//! pod_cidrs = ["10.244.2.0/24"]       # or pod_cidr = "10.244.2.0/24"
//! vtep_mac = "0a:58:0a:f4:02:00"      # optional: the MAC of a kernel vxlan device there
//! ```
//!
//! Like the services file, the nodes file is taken whole or not at all.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::Deserialize;
use toml::Spanned;

use super::config::{ConfigError, field_at, line_at};
use vswitch_dataplane::tables::overlay::{NodeSpec, OverlaySettings, OverlayTable};
use vswitch_dataplane::wire::MacAddr;

/// A node as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    name: Spanned<String>,
    ip: Spanned<String>,
    pod_cidr: Option<Spanned<String>>,
    pod_cidrs: Option<Spanned<Vec<String>>>,
    vtep_mac: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    node: Vec<RawNode>,
}

/// A located problem: (byte offset, field, message).
type Located = (usize, String, String);

impl RawNode {
    /// Checks one entry; `field` prefixes the field names in errors (`node[2]`).
    pub(crate) fn convert(&self, field: &str) -> Result<NodeSpec, Located> {
        let at = |s: std::ops::Range<usize>, f: &str, m: String| (s.start, format!("{field}.{f}"), m);
        let name = self.name.get_ref().trim().to_string();
        if name.is_empty() || name.len() > 253 {
            return Err(at(self.name.span(), "name", "must be 1 to 253 characters".into()));
        }
        let ip: Ipv4Addr = self.ip.get_ref().parse().map_err(|e| {
            at(self.ip.span(), "ip", format!("{e}: expected the node's IPv4 underlay address"))
        })?;
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
            return Err(at(self.ip.span(), "ip", format!("{ip} cannot be a node's address")));
        }
        let texts: Vec<(String, std::ops::Range<usize>, &str)> = match (&self.pod_cidr, &self.pod_cidrs) {
            (Some(_), Some(list)) => {
                return Err(at(list.span(), "pod_cidrs", "give pod_cidr or pod_cidrs, not both".into()));
            }
            (Some(one), None) => vec![(one.get_ref().clone(), one.span(), "pod_cidr")],
            (None, Some(list)) => {
                list.get_ref().iter().map(|c| (c.clone(), list.span(), "pod_cidrs")).collect()
            }
            (None, None) => {
                return Err(at(self.name.span(), "pod_cidrs", "missing: the node's pod CIDRs".into()));
            }
        };
        if texts.is_empty() {
            return Err(at(self.name.span(), "pod_cidrs", "at least one pod CIDR".into()));
        }
        let mut pod_cidrs = Vec::with_capacity(texts.len());
        for (text, span, f) in texts {
            let cidr: Ipv4Net = text.parse().map_err(|e| {
                at(span.clone(), f, format!("{text:?}: {e}: expected an IPv4 CIDR like 10.244.2.0/24"))
            })?;
            if cidr.prefix_len() < 8 {
                return Err(at(span, f, format!("{cidr} is wider than /8: not one node's pod CIDR")));
            }
            pod_cidrs.push(cidr.trunc());
        }
        let vtep_mac = match &self.vtep_mac {
            None => None,
            Some(m) => {
                let mac: MacAddr =
                    m.get_ref().parse().map_err(|e| at(m.span(), "vtep_mac", format!("{e}")))?;
                if mac.is_multicast() || mac.is_zero() {
                    return Err(at(m.span(), "vtep_mac", "must be a unicast, non-zero MAC".into()));
                }
                Some(mac)
            }
        };
        Ok(NodeSpec { name, ip, pod_cidrs, vtep_mac })
    }

    /// Offset of the entry's `name`, where a reader looks for the node.
    pub(crate) fn offset(&self) -> usize {
        self.name.span().start
    }
}

/// Parses a nodes file's text and checks its nodes against `fixed` (those from the
/// config, which come first) and this node's pod CIDR. An entry for this node itself
/// (named `self_name`, or at this node's address) is left out: one file can serve the
/// whole cluster.
pub(crate) fn parse(
    text: &str,
    file: &Path,
    fixed: &[NodeSpec],
    settings: OverlaySettings,
    self_name: &str,
) -> Result<Vec<NodeSpec>, ConfigError> {
    let err = |at: usize, field: String, message: String| ConfigError {
        file: file.to_path_buf(),
        line: line_at(text, at),
        field,
        message,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        err(at, field_at(text, at, e.message()), e.message().trim().to_string())
    })?;
    let mut nodes = Vec::with_capacity(raw.node.len());
    let mut raws = Vec::with_capacity(raw.node.len());
    for (i, rn) in raw.node.iter().enumerate() {
        let node = rn.convert(&format!("node[{i}]")).map_err(|(at, f, m)| err(at, f, m))?;
        if node.name == self_name || (node.ip == settings.local_ip && !node.ip.is_unspecified()) {
            continue;
        }
        nodes.push(node);
        raws.push((i, rn));
    }
    let all: Vec<NodeSpec> = fixed.iter().chain(&nodes).cloned().collect();
    if let Err(e) = OverlayTable::build(settings, None, &all) {
        // Name the entry of this file the conflict involves.
        let k = nodes.iter().rposition(|n| e.involves(&n.name)).unwrap_or(0);
        let (i, at) = raws.get(k).map_or((0, 0), |(i, rn)| (*i, rn.offset()));
        return Err(err(at, format!("node[{i}]"), e.to_string()));
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OverlaySettings {
        OverlaySettings {
            vni: 1,
            udp_port: 4789,
            underlay_mtu: 1500,
            local_ip: Ipv4Addr::UNSPECIFIED,
            segment: vswitch_dataplane::ids::SegmentId(0),
            gateway_ip: Ipv4Addr::new(10, 244, 1, 1),
            gateway_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            local_cidr: "10.244.1.0/24".parse().unwrap(),
        }
    }

    fn parse_str(text: &str) -> Result<Vec<NodeSpec>, ConfigError> {
        parse(text, Path::new("nodes.toml"), &[], settings(), "node-a")
    }

    #[test]
    fn parses_nodes() {
        let nodes = parse_str(
            r#"
[[node]]
name = "node-b"
ip = "192.168.50.2"
pod_cidr = "10.244.2.0/24"

[[node]]
name = "node-c"
ip = "192.168.50.3"
pod_cidrs = ["10.244.3.0/24", "10.245.3.0/24"]
vtep_mac = "0a:58:0a:f4:03:00"
"#,
        )
        .unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].pod_cidrs.len(), 2);
        assert_eq!(nodes[1].vtep_mac.unwrap().to_string(), "0a:58:0a:f4:03:00");
        assert!(parse_str("").unwrap().is_empty());
        // The cluster's one file lists this node too: its entry is left out.
        let with_self = "[[node]]\nname = \"node-a\"\nip = \"192.168.50.1\"\npod_cidr = \"10.244.1.0/24\"\n";
        assert!(parse_str(with_self).unwrap().is_empty());
    }

    #[test]
    fn errors_name_line_and_field() {
        let cases = [
            (
                "[[node]]\nname = \"b\"\nip = \"192.168.50.300\"\npod_cidr = \"10.244.2.0/24\"\n",
                3,
                "node[0].ip",
            ),
            (
                "[[node]]\nname = \"b\"\nip = \"192.168.50.2\"\npod_cidr = \"10.244.2.0/33\"\n",
                4,
                "node[0].pod_cidr",
            ),
            ("[[node]]\nname = \"b\"\nip = \"192.168.50.2\"\npod_cidr = \"10.244.1.0/25\"\n", 2, "node[0]"),
            ("[[node]]\nname = \"b\"\nip = \"192.168.50.2\"\n", 2, "node[0].pod_cidrs"),
            (
                "[[node]]\nname = \"b\"\nip = \"192.168.50.2\"\npod_cidr = \"10.244.2.0/24\"\ncolour = 1\n",
                5,
                "node.colour",
            ),
            (
                "[[node]]\nname = \"b\"\nip = \"192.168.50.2\"\npod_cidr = \"10.244.2.0/24\"\n\
                 [[node]]\nname = \"c\"\nip = \"192.168.50.2\"\npod_cidr = \"10.244.3.0/24\"\n",
                6,
                "node[1]",
            ),
            (
                "[[node]]\nname = \"b\"\nip = \"192.168.50.2\"\npod_cidr = \"10.244.2.0/24\"\nvtep_mac = \"ff:ff:ff:ff:ff:ff\"\n",
                5,
                "node[0].vtep_mac",
            ),
        ];
        for (text, line, field) in cases {
            let e = parse_str(text).unwrap_err();
            assert_eq!((e.line, e.field.as_str()), (line, field), "{text}: {e}");
        }
    }

    #[test]
    fn conflicts_with_the_configs_nodes_are_refused() {
        let fixed = [NodeSpec {
            name: "b".into(),
            ip: Ipv4Addr::new(192, 168, 50, 2),
            pod_cidrs: vec!["10.244.2.0/24".parse().unwrap()],
            vtep_mac: None,
        }];
        let text = "[[node]]\nname = \"c\"\nip = \"192.168.50.3\"\npod_cidr = \"10.244.2.128/25\"\n";
        let e = parse(text, Path::new("n"), &fixed, settings(), "node-a").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("overlap"), "{e}");
    }
}
