//! Routes from the node itself to the pods of other nodes: every remote pod CIDR via the
//! host port, so the node's own processes (kubelet, hostNetwork pods, the API server
//! calling webhooks) reach them through the switch — flannel routes every node's pod
//! CIDR on every node the same way. They leave from the gateway address (the host
//! port's): every node routes this node's pod CIDR back here, so the replies come back
//! without any address translation.
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

/// What the node routes to other nodes' pods, as last made.
#[derive(Debug, Default)]
pub(crate) struct NodeRoutes {
    routed: BTreeSet<Ipv4Net>,
    /// Remote CIDRs not routed from the node, and why.
    refused: BTreeMap<Ipv4Net, String>,
    /// The host port's index they were made on.
    index: Option<u32>,
}

/// The route of another owner that already covers `cidr` at least as specifically.
fn covering<'a>(routes: &'a [RouteEntry], cidr: &Ipv4Net) -> Option<&'a RouteEntry> {
    routes
        .iter()
        .filter(|r| r.protocol != ROUTE_PROTOCOL)
        .find(|r| r.dst.prefix_len() >= cidr.prefix_len() && cidr.contains(&r.dst.network()))
}

impl PortManager {
    /// Makes the node's routes to other nodes' pods exactly `wanted` (where no other
    /// route is in the way): adds the missing ones, removes those of ours no longer
    /// wanted, and keeps what it could not do for the node listing. Without a host
    /// port there is nothing to route through.
    pub(crate) fn sync_node_routes(&mut self, wanted: &[Ipv4Net]) {
        let Some(host) = &self.host else { return };
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
        let mut refused = BTreeMap::new();
        let mut want = BTreeSet::new();
        for cidr in wanted {
            match covering(&routes, cidr) {
                Some(r) => {
                    let why = format!(
                        "the node already routes {} (protocol {}, not vswitchd's)",
                        r.dst, r.protocol
                    );
                    if self.node_routes.refused.get(cidr) != Some(&why) {
                        tracing::warn!(%cidr, reason = %why, "pods of this CIDR not routed from the node");
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
        let ours: Vec<&RouteEntry> = routes.iter().filter(|r| r.protocol == ROUTE_PROTOCOL).collect();
        let mut routed = BTreeSet::new();
        for cidr in &want {
            if ours.iter().any(|r| r.dst == *cidr && r.oif == Some(index)) {
                routed.insert(*cidr);
                continue;
            }
            match kernel.replace_route(*cidr, index, NEXT_HOP, self.config.gateway_ip) {
                Ok(()) => {
                    tracing::info!(%cidr, via = %host.name, "node routes to pods of another node");
                    routed.insert(*cidr);
                }
                Err(e) => {
                    tracing::warn!(%cidr, error = %e, "pods of this CIDR not routed from the node");
                    refused.insert(*cidr, e.to_string());
                }
            }
        }
        for r in ours.iter().filter(|r| !routed.contains(&r.dst) || r.oif != Some(index)) {
            Self::delete_route(kernel.as_ref(), r, index);
        }
        if routed.is_empty() {
            let _ = kernel.delete_neighbour(index, NEXT_HOP);
        }
        self.node_routes = NodeRoutes { routed, refused, index: Some(index) };
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
        for r in routes.iter().filter(|r| r.protocol == ROUTE_PROTOCOL) {
            Self::delete_route(kernel.as_ref(), r, host_index.unwrap_or(0));
        }
        if let Some(index) = host_index.or(self.node_routes.index) {
            let _ = kernel.delete_neighbour(index, NEXT_HOP);
        }
        self.node_routes = NodeRoutes::default();
    }

    fn delete_route(kernel: &dyn super::Kernel, r: &RouteEntry, fallback_index: u32) {
        match kernel.delete_route(r.dst, r.oif.unwrap_or(fallback_index)) {
            Ok(_) => tracing::info!(cidr = %r.dst, "node route to another node's pods removed"),
            Err(e) => {
                tracing::warn!(cidr = %r.dst, error = %e, "node route to another node's pods not removed")
            }
        }
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
