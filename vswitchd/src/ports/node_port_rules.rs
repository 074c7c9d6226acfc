//! NodePorts at the node's own address, from the node's own processes (kube-proxy's
//! `OUTPUT` chain). The kernel delivers a packet to one of its own addresses itself,
//! before any route is looked at: its `local` table comes first in the routing rules.
//! So the kernel's `local` rule moves from priority 0 to [`LOCAL_RULE_PRIORITY`] (as
//! Cilium moves it), and ahead of it, per NodePort, two rules select exactly that
//! port at the node's address and send it to a table of ours ([`RULE_TABLE`]) whose
//! one route goes through the host port, from the gateway address, like the node's
//! routes to ClusterIPs (see `routes`):
//!
//! - `iif lo`: the node's own connections to the NodePort;
//! - `iif <host port>`: the check of where the switch's replies (from the node's
//!   address and the NodePort) may come from, which looks the reversed flow up as if
//!   it came in on that interface — without this rule the kernel would find its own
//!   address there and drop every reply as a martian.
//!
//! Packets from anywhere else (the uplink, the node's other interfaces) match neither,
//! so nothing the kernel forwards or delivers changes. Every rule of ours carries
//! [`ROUTE_PROTOCOL`]; the kernel's `local` rule moved by us carries it too, so a
//! later run or the shutdown knows to put it back at 0 — and a `local` rule someone
//! else placed is never moved: then NodePorts from the node are reported as not served.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::PortManager;
use super::kernel::{ROUTE_PROTOCOL, RuleEntry, TABLE_LOCAL};
use super::routes::{NEXT_HOP, RouteSync};

/// The routing table of ours holding the route to the node's address through the host
/// port (`ip route show table 118`).
pub(crate) const RULE_TABLE: u32 = 118;
/// Where the NodePort rules sit: before the moved `local` rule.
pub(crate) const RULE_PRIORITY: u32 = 90;
/// Where the kernel's `local` rule goes (Cilium's choice too).
pub(crate) const LOCAL_RULE_PRIORITY: u32 = 100;

/// The node's NodePort rules as last made.
#[derive(Debug, Default)]
pub(crate) struct NodePortRules {
    /// What was asked for last: the node's address and its NodePorts.
    wanted: Option<(Ipv4Addr, BTreeSet<(u8, u16)>)>,
    /// The address the table's route was made for.
    routed: Option<Ipv4Addr>,
    /// Why NodePorts are not served to the node, if they are not.
    refused: Option<String>,
}

fn plain_local(rule: &RuleEntry) -> bool {
    rule.table == TABLE_LOCAL
        && rule.dst.is_none()
        && rule.iif.is_none()
        && rule.ip_protocol.is_none()
        && !rule.other
}

fn local_rule(priority: u32, protocol: u8) -> RuleEntry {
    RuleEntry {
        priority,
        table: TABLE_LOCAL,
        dst: None,
        ip_protocol: None,
        dst_port: None,
        iif: None,
        protocol,
        other: false,
    }
}

/// The kernel's own protocol number (`RTPROT_KERNEL`), which its `local` rule carries.
const RTPROT_KERNEL: u8 = 2;

impl PortManager {
    /// Makes the node's NodePort rules exactly those of `node_ports` at `node_ip`
    /// (none without a host port or an address), moving the kernel's `local` rule
    /// behind them the first time.
    pub(crate) fn sync_node_port_rules(
        &mut self,
        node_ip: Option<Ipv4Addr>,
        node_ports: &BTreeSet<(u8, u16)>,
        why: RouteSync,
    ) {
        let wanted = node_ip.filter(|_| !node_ports.is_empty()).map(|ip| (ip, node_ports.clone()));
        if why == RouteSync::Changed && wanted == self.node_port_rules.wanted {
            return;
        }
        let (Some(host), Some((ip, ports))) = (&self.host, &wanted) else {
            // At start the Services and the node's address may not be known yet: a
            // crashed run's rules stay until they are.
            if why != RouteSync::Start {
                self.remove_node_port_rules();
            }
            self.node_port_rules.wanted = wanted;
            return;
        };
        let (ip, host_name) = (*ip, host.name.clone());
        let result = self.make_node_port_rules(ip, ports, &host_name, why);
        let refused = result.err();
        if let Some(why_not) = &refused
            && self.node_port_rules.refused.as_ref() != Some(why_not)
        {
            tracing::warn!(reason = %why_not, "NodePorts at the node's address not served to the node itself");
        }
        self.node_port_rules.refused = refused;
        self.node_port_rules.wanted = wanted;
    }

    fn make_node_port_rules(
        &mut self,
        ip: Ipv4Addr,
        ports: &BTreeSet<(u8, u16)>,
        host: &str,
        why: RouteSync,
    ) -> Result<(), String> {
        let kernel = self.kernel.clone();
        let index = kernel.index_of(host).map_err(|e| e.to_string())?;
        let rules = kernel.rules_v4().map_err(|e| e.to_string())?;
        // The first lookup of the local table must come after ours: move the kernel's
        // rule at 0 (add first, so there is never a moment without one).
        if let Some(other) =
            rules.iter().find(|r| plain_local(r) && r.priority != 0 && r.priority <= RULE_PRIORITY)
        {
            return Err(format!(
                "the local table is looked up at priority {} by a rule not ours, before the NodePort rules ({RULE_PRIORITY})",
                other.priority
            ));
        }
        let at_zero: Vec<&RuleEntry> = rules.iter().filter(|r| plain_local(r) && r.priority == 0).collect();
        if !at_zero.is_empty() {
            kernel.add_rule(&local_rule(LOCAL_RULE_PRIORITY, ROUTE_PROTOCOL)).map_err(|e| e.to_string())?;
            for r in at_zero {
                kernel.delete_rule(r).map_err(|e| e.to_string())?;
            }
            tracing::info!(
                priority = LOCAL_RULE_PRIORITY,
                "the kernel's local routing rule moved behind the NodePort rules"
            );
        }
        kernel.set_neighbour(index, NEXT_HOP, self.config.gateway_mac).map_err(|e| e.to_string())?;
        let dst = Ipv4Net::from(ip);
        kernel
            .replace_table_route(RULE_TABLE, dst, index, NEXT_HOP, self.config.gateway_ip)
            .map_err(|e| e.to_string())?;
        if let Some(old) = self.node_port_rules.routed.filter(|old| *old != ip) {
            let _ = kernel.delete_table_route(RULE_TABLE, Ipv4Net::from(old));
        }
        self.node_port_rules.routed = Some(ip);
        let wanted: BTreeSet<RuleEntry> = ports
            .iter()
            .flat_map(|&(proto, port)| {
                ["lo", host].map(|iif| RuleEntry {
                    priority: RULE_PRIORITY,
                    table: RULE_TABLE,
                    dst: Some(dst),
                    ip_protocol: Some(proto),
                    dst_port: Some(port),
                    iif: Some(iif.to_string()),
                    protocol: ROUTE_PROTOCOL,
                    other: false,
                })
            })
            .collect();
        // Compared by what they select: the kernel may list attributes we never set.
        let ours: BTreeMap<RuleKey, RuleEntry> =
            rules.into_iter().filter(is_ours).map(|r| (key(&r), r)).collect();
        let wanted: BTreeMap<RuleKey, RuleEntry> = wanted.into_iter().map(|r| (key(&r), r)).collect();
        let mut added = 0;
        for (_, rule) in wanted.iter().filter(|(k, _)| !ours.contains_key(*k)) {
            kernel.add_rule(rule).map_err(|e| e.to_string())?;
            added += 1;
        }
        let mut removed = 0;
        if why != RouteSync::Start {
            for (_, rule) in ours.iter().filter(|(k, _)| !wanted.contains_key(*k)) {
                removed += usize::from(kernel.delete_rule(rule).map_err(|e| e.to_string())?);
            }
        }
        if added + removed > 0 {
            tracing::info!(added, removed, node_ports = ports.len(), %ip, via = %host, "NodePort rules for the node itself");
        }
        Ok(())
    }

    /// Removes every NodePort rule of ours and the table's route, and puts the
    /// kernel's `local` rule back at 0 if we moved it (at shutdown, and once there are
    /// no NodePorts: the node is left as it was found).
    pub(crate) fn remove_node_port_rules(&mut self) {
        let kernel = self.kernel.clone();
        let rules = match kernel.rules_v4() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "NodePort rules left in place");
                return;
            }
        };
        let mut removed = 0;
        for rule in rules.iter().filter(|r| is_ours(r)) {
            match kernel.delete_rule(rule) {
                Ok(gone) => removed += usize::from(gone),
                Err(e) => tracing::warn!(error = %e, "NodePort rule not removed"),
            }
        }
        let moved = local_rule(LOCAL_RULE_PRIORITY, ROUTE_PROTOCOL);
        let is_moved = |r: &RuleEntry| {
            plain_local(r) && r.priority == LOCAL_RULE_PRIORITY && r.protocol == ROUTE_PROTOCOL
        };
        if rules.iter().any(is_moved) {
            let put_back = rules.iter().any(|r| plain_local(r) && r.priority == 0)
                || kernel.add_rule(&local_rule(0, RTPROT_KERNEL)).is_ok();
            if put_back {
                let _ = kernel.delete_rule(&moved);
                tracing::info!("the kernel's local routing rule put back at priority 0");
            } else {
                tracing::warn!("the kernel's local routing rule left at priority {LOCAL_RULE_PRIORITY}");
            }
        }
        if let Some(ip) = self.node_port_rules.routed.take() {
            let _ = kernel.delete_table_route(RULE_TABLE, Ipv4Net::from(ip));
        }
        if removed > 0 {
            tracing::info!(removed, "NodePort rules for the node itself removed");
        }
        self.node_port_rules = NodePortRules::default();
    }

    /// Whether any NodePort rule is wanted (the host port's next hop stays for them).
    pub(crate) fn has_node_port_rules(&self) -> bool {
        self.node_port_rules.routed.is_some()
    }
}

/// What a NodePort rule selects: address, IP protocol, port, incoming interface.
type RuleKey = (Option<Ipv4Net>, Option<u8>, Option<u16>, Option<String>);

fn key(rule: &RuleEntry) -> RuleKey {
    (rule.dst, rule.ip_protocol, rule.dst_port, rule.iif.clone())
}

/// A NodePort rule of ours (the moved `local` rule is not one).
fn is_ours(rule: &RuleEntry) -> bool {
    rule.protocol == ROUTE_PROTOCOL && rule.priority == RULE_PRIORITY && rule.table == RULE_TABLE
}
