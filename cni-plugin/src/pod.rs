//! The pod's side, done over netlink from inside its namespace: addresses and routes on
//! the interface vswitchd created, and checking them later.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use vswitch_sys::netlink::in_netns;
use vswitch_sys::netns::{Netns, NetnsError};

use crate::error::{CniError, code};
use crate::result::CniResult;

/// A route as installed: destination and next hop (`None`: on-link).
pub type RouteSpec = (IpNet, Option<IpAddr>);

/// The routes a result asks for, with each gateway-less route sent via the gateway of
/// its address family (the spec's "default gateway as determined by the plugin").
pub fn routes_of(result: &CniResult) -> Vec<RouteSpec> {
    let gateway_for = |dst: &IpNet| {
        result.ips.iter().filter_map(|ip| ip.gateway).find(|g| g.is_ipv4() == dst.addr().is_ipv4())
    };
    result.routes.iter().map(|r| (r.dst, r.gw.or_else(|| gateway_for(&r.dst)))).collect()
}

fn open(path: &Path) -> Result<Netns, CniError> {
    Netns::open(path).map_err(|e| match e {
        NetnsError::NotFound(_) | NetnsError::NotANamespace(_) => {
            CniError::new(code::INVALID_ENV, format!("CNI_NETNS: {e}"))
        }
        NetnsError::Io { .. } | NetnsError::Denied { .. } => CniError::new(code::IO_FAILURE, e.to_string()),
    })
}

/// Deletes `ifname` in the namespace at `netns`, if both still exist: what DEL can do
/// itself when vswitchd cannot be asked (a TAP's or veth's port then goes when the
/// daemon sees the pod gone). Best effort: returns whether an interface was deleted.
pub fn delete_interface(netns: &Path, ifname: &str) -> bool {
    let Ok(ns) = Netns::open(netns) else { return false };
    let ifname = ifname.to_string();
    in_netns(&ns, |nl| async move { nl.delete_by_name(&ifname).await }).unwrap_or(false)
}

/// Adds `addresses` to `ifname` in the namespace at `netns`, then `routes`.
pub fn configure(
    netns: &Path,
    ifname: &str,
    addresses: &[IpNet],
    routes: &[RouteSpec],
) -> Result<(), CniError> {
    let ns = open(netns)?;
    let (ifname, addresses, routes) = (ifname.to_string(), addresses.to_vec(), routes.to_vec());
    in_netns(&ns, |nl| async move {
        let index = nl.index_of(&ifname).await?;
        nl.set_up(index).await?;
        for a in addresses {
            nl.add_address(index, a).await?;
        }
        for (dst, gw) in routes {
            nl.add_route(dst, gw, index).await?;
        }
        Ok(())
    })
    .map_err(|e| {
        CniError::new(code::POD_SETUP, format!("configuring {} in the pod", e.op)).with_details(e.to_string())
    })
}

/// Checks that `ifname` in `netns` has `mac`, every address in `addresses`, and a route
/// for every entry of `routes` (other routes, e.g. a later plugin's, are allowed).
pub fn check(
    netns: &Path,
    ifname: &str,
    mac: &str,
    addresses: &[IpNet],
    routes: &[RouteSpec],
) -> Result<(), CniError> {
    let ns = open(netns)?;
    let ifname_owned = ifname.to_string();
    let (link, have_addrs, have_routes) = in_netns(&ns, |nl| async move {
        let Some(link) = nl.link(&ifname_owned).await? else { return Ok((None, vec![], vec![])) };
        let addrs = nl.addresses(link.index).await?;
        let routes = nl.routes(link.index).await?;
        Ok((Some(link), addrs, routes))
    })
    .map_err(|e| CniError::new(code::IO_FAILURE, format!("inspecting the pod: {e}")))?;
    let fail = |m: String| Err(CniError::new(code::CHECK_FAILED, m));
    let Some(link) = link else {
        return fail(format!("interface {ifname} is missing from {}", netns.display()));
    };
    let have_mac = link.mac.map(|m| m.map(|b| format!("{b:02x}")).join(":")).unwrap_or_default();
    if !mac.is_empty() && !have_mac.eq_ignore_ascii_case(mac) {
        return fail(format!("interface {ifname} has MAC {have_mac}, expected {mac}"));
    }
    if !link.up {
        return fail(format!("interface {ifname} is down"));
    }
    for a in addresses {
        if !have_addrs.contains(a) {
            return fail(format!("address {a} is missing from {ifname}"));
        }
    }
    for (dst, gw) in routes {
        if !have_routes.iter().any(|(d, g)| d == dst && (gw.is_none() || g == gw)) {
            let via = gw.map_or_else(|| "on-link".to_string(), |g| format!("via {g}"));
            return fail(format!("route to {dst} {via} is missing from {ifname}"));
        }
    }
    Ok(())
}
