//! Routes from the node itself through the switch: every remote pod CIDR and every
//! Service's ClusterIP (a /32 each, as kube-proxy's IPVS mode puts each on a dummy
//! device) via the host port, so the node's own processes (kubelet, hostNetwork pods,
//! the API server calling webhooks) reach other nodes' pods and Services as pods do —
//! flannel routes every node's pod CIDR on every node the same way, kube-proxy serves
//! ClusterIPs to the node in its OUTPUT chains. They leave from the gateway address (the
//! host port's): every node routes this node's pod CIDR back here, so the replies of
//! remote pods and of remote Service endpoints come back without any source NAT.
//!
//! The kernel takes none of its own addresses as a gateway, so the routes go via a
//! link-local next hop ([`NEXT_HOP`]) that exists only as a permanent neighbour entry on
//! the host port, at the gateway's MAC: the node's packets reach the switch addressed to
//! the gateway as a pod's do, and are routed over the overlay like them. The routes carry
//! a protocol number of their own ([`ROUTE_PROTOCOL`]), so the daemon finds exactly its
//! own again — after a crash, at shutdown — and never removes another's. A remote CIDR
//! that a route of someone else already covers as specifically (the same prefix or a
//! longer one inside it) is left to that route and reported, not shadowed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::PortManager;
use super::kernel::{ROUTE_PROTOCOL, RouteEntry};

/// The next hop of the node's routes to other nodes' pods: link-local, never on the wire
/// (the host port's neighbour entry gives it the gateway's MAC).
pub(crate) const NEXT_HOP: Ipv4Addr = Ipv4Addr::new(169, 254, 118, 115);

/// What the node routes through the host port, as last made.
#[derive(Debug, Default)]
pub(crate) struct NodeRoutes {
    /// What was asked for last.
    wanted: BTreeSet<Ipv4Net>,
    routed: BTreeSet<Ipv4Net>,
    /// Destinations not routed from the node, and why.
    refused: BTreeMap<Ipv4Net, String>,
    /// The host port's index they were made on.
    index: Option<u32>,
    /// Without a host port: whether routes of an earlier run were looked for.
    swept: bool,
}

/// Why the routes are synced, which says how far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RouteSync {
    /// At start, before the Services and the nodes of files or the cluster are known:
    /// only adds (a crashed run's routes stay until they are known to be stale).
    Start,
    /// Nodes or Services changed: nothing to do when the destinations did not (an
    /// endpoint change keeps every ClusterIP).
    Changed,
    /// The periodic check: puts back what someone removed, removes what is stale.
    Check,
}

/// Other owners' routes, by destination: what a route of ours could shadow.
struct Foreign(BTreeMap<(u32, u8), RouteEntry>);

impl Foreign {
    fn of(routes: &[RouteEntry]) -> Foreign {
        Foreign(
            routes
                .iter()
                .filter(|r| r.protocol != ROUTE_PROTOCOL)
                .map(|r| ((u32::from(r.dst.network()), r.dst.prefix_len()), *r))
                .collect(),
        )
    }

    /// The route that already covers `cidr` at least as specifically: the same prefix
    /// or a longer one inside it (a lookup, not a scan: 10 000 ClusterIPs are checked
    /// every few seconds).
    fn covering(&self, cidr: &Ipv4Net) -> Option<&RouteEntry> {
        let (first, last) = (u32::from(cidr.network()), u32::from(cidr.broadcast()));
        self.0
            .range((first, cidr.prefix_len())..=(last, 32))
            .map(|(_, r)| r)
            .find(|r| r.dst.prefix_len() >= cidr.prefix_len())
    }
}

impl PortManager {
    /// Makes the node's routes through the host port exactly `wanted` (where no other
    /// route is in the way): adds the missing ones, removes those of ours no longer
    /// wanted, and keeps what it could not do for the node listing. Without a host
    /// port there is nothing to route through.
    pub(crate) fn sync_node_routes(&mut self, wanted: &[Ipv4Net], why: RouteSync) {
        let wanted_set: BTreeSet<Ipv4Net> = wanted.iter().copied().collect();
        if why == RouteSync::Changed && wanted_set == self.node_routes.wanted {
            return;
        }
        let Some(host) = &self.host else {
            // A host port an earlier run had may have left routes that lead nowhere now.
            if !self.node_routes.swept {
                self.remove_node_routes();
                self.node_routes.swept = true;
            }
            return;
        };
        let kernel = self.kernel.clone();
        let index = match kernel.index_of(&host.name) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "host port gone: node routes to other nodes' pods not updated");
                return;
            }
        };
        let routes = match kernel.routes_v4() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "node routes to other nodes' pods not updated");
                return;
            }
        };
        let foreign = Foreign::of(&routes);
        let mut refused = BTreeMap::new();
        let mut want = BTreeSet::new();
        for cidr in wanted {
            match foreign.covering(cidr) {
                Some(r) => {
                    let why = format!(
                        "the node already routes {} (protocol {}, not vswitchd's)",
                        r.dst, r.protocol
                    );
                    if self.node_routes.refused.get(cidr) != Some(&why) {
                        tracing::warn!(%cidr, reason = %why, "not routed from the node");
                    }
                    refused.insert(*cidr, why);
                }
                None => {
                    want.insert(*cidr);
                }
            }
        }
        if !want.is_empty()
            && let Err(e) = kernel.set_neighbour(index, NEXT_HOP, self.config.gateway_mac)
        {
            tracing::warn!(error = %e, "node routes to other nodes' pods not made");
            want.iter().for_each(|c| {
                refused.insert(*c, format!("the host port's next hop could not be set: {e}"));
            });
            want.clear();
        }
        let ours: BTreeMap<Ipv4Net, Option<u32>> =
            routes.iter().filter(|r| r.protocol == ROUTE_PROTOCOL).map(|r| (r.dst, r.oif)).collect();
        let (mut routed, mut added) = (BTreeSet::new(), 0);
        let missing: Vec<Ipv4Net> =
            want.iter().filter(|cidr| ours.get(*cidr) != Some(&Some(index))).copied().collect();
        routed.extend(want.iter().filter(|cidr| ours.get(*cidr) == Some(&Some(index))));
        let made = kernel.replace_routes(&missing, index, NEXT_HOP, self.config.gateway_ip);
        for (cidr, result) in missing.iter().zip(made) {
            match result {
                Ok(()) => {
                    routed.insert(*cidr);
                    added += 1;
                }
                Err(e) => {
                    tracing::warn!(%cidr, error = %e, "not routed from the node");
                    refused.insert(*cidr, e.to_string());
                }
            }
        }
        let stale: Vec<(Ipv4Net, u32)> = ours
            .iter()
            .filter(|(dst, oif)| !routed.contains(dst) || **oif != Some(index))
            .map(|(dst, oif)| (*dst, oif.unwrap_or(index)))
            .filter(|_| why != RouteSync::Start)
            .collect();
        let removed = Self::delete_routes(kernel.as_ref(), &stale);
        if added + removed > 0 {
            tracing::info!(added, removed, routed = routed.len(), via = %host.name, "node routes through the host port");
        }
        if routed.is_empty() && why != RouteSync::Start && !self.has_node_port_rules() {
            let _ = kernel.delete_neighbour(index, NEXT_HOP);
        }
        self.node_routes =
            NodeRoutes { wanted: wanted_set, routed, refused, index: Some(index), swept: true };
    }

    /// Removes every route of ours and the next hop's neighbour entry (at shutdown: the
    /// node does not route to pods no switch serves).
    pub(crate) fn remove_node_routes(&mut self) {
        let kernel = self.kernel.clone();
        let routes = match kernel.routes_v4() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "node routes to other nodes' pods left in place");
                return;
            }
        };
        let host_index = self.host.as_ref().and_then(|h| kernel.index_of(&h.name).ok());
        let ours: Vec<(Ipv4Net, u32)> = routes
            .iter()
            .filter(|r| r.protocol == ROUTE_PROTOCOL)
            .map(|r| (r.dst, r.oif.unwrap_or(host_index.unwrap_or(0))))
            .collect();
        let removed = Self::delete_routes(kernel.as_ref(), &ours);
        if removed > 0 {
            tracing::info!(removed, "node routes through the host port removed");
        }
        if let Some(index) = host_index.or(self.node_routes.index) {
            let _ = kernel.delete_neighbour(index, NEXT_HOP);
        }
        self.node_routes = NodeRoutes { swept: true, ..NodeRoutes::default() };
    }

    /// Deletes routes of ours; returns how many went.
    fn delete_routes(kernel: &dyn super::Kernel, routes: &[(Ipv4Net, u32)]) -> usize {
        let mut gone = 0;
        for ((dst, _), result) in routes.iter().zip(kernel.delete_routes(routes)) {
            match result {
                Ok(existed) => gone += usize::from(existed),
                Err(e) => tracing::warn!(cidr = %dst, error = %e, "node route not removed"),
            }
        }
        gone
    }

    /// How the node reaches the pods of `cidr`, for the node listing: through the host
    /// port, or why not; `None` without a host port.
    pub(crate) fn node_route(&self, cidr: &Ipv4Net) -> Option<String> {
        let host = self.host.as_ref()?;
        if let Some(why) = self.node_routes.refused.get(cidr) {
            return Some(format!("not routed: {why}"));
        }
        self.node_routes.routed.contains(cidr).then(|| format!("via {}", host.name))
    }
}
