//! Links, addresses and routes over rtnetlink.
//!
//! A [`Netlink`] talks to the namespace its socket was opened in. Work inside another
//! namespace (a pod's) goes through [`in_netns`], which opens the socket on a thread
//! that entered that namespace.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage, LinkXdp};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::netns::Netns;
use super::{Context, SysError};

/// `XDP_FLAGS_SKB_MODE` / `XDP_FLAGS_DRV_MODE` from `<linux/if_link.h>`.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// A link as far as the control plane cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
    /// `ip link set … alias`: where a pod port keeps its identity (see
    /// `control::state::DeviceTag`).
    pub alias: Option<String>,
    pub kind: LinkKind,
}

/// A route of the main table as the control plane cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: Ipv4Net,
    /// The outgoing link (none for a multipath, blackhole or unreachable route).
    pub oif: Option<u32>,
    /// Who made it (`RTPROT_*`: 2 kernel, 3 boot, 4 static, … or an owner's own number).
    pub protocol: u8,
}

/// An IPv4 routing policy rule (`ip rule`) as the control plane cares: what it selects
/// by, the table it looks up, and who made it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleEntry {
    pub priority: u32,
    pub table: u32,
    pub dst: Option<Ipv4Net>,
    /// The IP protocol selected (`ipproto`).
    pub ip_protocol: Option<u8>,
    /// The one destination port selected (`dport`).
    pub dst_port: Option<u16>,
    /// The interface packets come in on (`iif`; `lo` for the node's own).
    pub iif: Option<String>,
    /// Who made it (`RTPROT_*`, as for routes: 2 for the kernel's own rules).
    pub protocol: u8,
    /// Whether it selects by anything else (source, interfaces, mark, a port range,
    /// ...) or does anything but look a table up: such a rule is never taken for one
    /// of the plain ones above.
    pub other: bool,
}

/// The kernel's table of local addresses (`ip rule`'s `lookup local`).
pub const TABLE_LOCAL: u32 = 255;
/// The main routing table.
pub const TABLE_MAIN: u32 = 254;

/// The link types the control plane tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Tun,
    Veth,
    Other,
}

/// An rtnetlink connection in one network namespace.
pub struct Netlink {
    handle: Handle,
}

fn io_error(e: rtnetlink::Error) -> std::io::Error {
    match e {
        rtnetlink::Error::NetlinkError(msg) => match msg.code {
            Some(code) => std::io::Error::from_raw_os_error(-code.get()),
            None => std::io::Error::other("netlink error without code"),
        },
        other => std::io::Error::other(other.to_string()),
    }
}

fn is_errno(e: &SysError, errno: i32) -> bool {
    e.errno() == Some(errno)
}

impl Netlink {
    /// Opens a socket in the calling thread's namespace; its connection runs as a task
    /// on the current tokio runtime.
    pub fn connect() -> Result<Netlink, SysError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().context(|| "opening netlink socket".into())?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The link called `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>, SysError> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_info(&msg))),
            Ok(None) => Ok(None),
            Err(e) => {
                let e = SysError::new(format!("looking up link {name}"), io_error(e));
                // ENODEV: no such link.
                if is_errno(&e, libc::ENODEV) { Ok(None) } else { Err(e) }
            }
        }
    }

    /// The index of link `name`, or an error naming it.
    pub async fn index_of(&self, name: &str) -> Result<u32, SysError> {
        match self.link(name).await? {
            Some(l) => Ok(l.index),
            None => Err(SysError::new(
                format!("looking up link {name}"),
                std::io::Error::from_raw_os_error(libc::ENODEV),
            )),
        }
    }

    async fn change(&self, what: String, msg: LinkMessage) -> Result<(), SysError> {
        self.handle.link().change(msg).execute().await.map_err(io_error).context(|| what)
    }

    pub async fn set_up(&self, index: u32) -> Result<(), SysError> {
        self.change(format!("bringing link {index} up"), LinkUnspec::new_with_index(index).up().build()).await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), SysError> {
        self.change(
            format!("setting MTU {mtu} on link {index}"),
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
        )
        .await
    }

    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<(), SysError> {
        let mut msg = LinkUnspec::new_with_index(index).build();
        msg.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
        self.change(format!("setting the alias of link {index}"), msg).await
    }

    /// Every link in this namespace.
    pub async fn links(&self) -> Result<Vec<LinkInfo>, SysError> {
        let mut dump = self.handle.link().get().execute();
        let mut links = Vec::new();
        while let Some(msg) = dump.try_next().await.map_err(io_error).context(|| "listing links".into())? {
            links.push(link_info(&msg));
        }
        Ok(links)
    }

    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), SysError> {
        let msg = LinkUnspec::new_with_index(index).address(mac.to_vec()).build();
        self.change(format!("setting the MAC of link {index}"), msg).await
    }

    /// Deletes link `index` (for a veth, both ends go).
    pub async fn delete(&self, index: u32) -> Result<(), SysError> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(io_error)
            .context(|| format!("deleting link {index}"))
    }

    /// Deletes link `name` if it exists; true if it did.
    pub async fn delete_by_name(&self, name: &str) -> Result<bool, SysError> {
        match self.link(name).await? {
            Some(l) => match self.delete(l.index).await {
                Ok(()) => Ok(true),
                Err(e) if is_errno(&e, libc::ENODEV) => Ok(false),
                Err(e) => Err(e),
            },
            None => Ok(false),
        }
    }

    /// Creates a veth pair `name` ↔ `peer`, both with `mtu`, the peer with MAC
    /// `peer_mac`; the peer is made directly in `peer_netns` if given, else here.
    pub async fn add_veth(
        &self,
        name: &str,
        peer: &str,
        peer_netns: Option<&Netns>,
        peer_mac: [u8; 6],
        mtu: u32,
    ) -> Result<(), SysError> {
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .address(peer_mac.to_vec())
            .mtu(mtu);
        if let Some(ns) = peer_netns {
            peer_msg = peer_msg.setns_by_fd(ns.raw_fd());
        }
        let peer_msg = peer_msg.build();
        let mut msg = LinkVeth::new(name, peer).mtu(mtu).build();
        // Replace the builder's plain peer with one carrying MAC, MTU and namespace.
        for attr in msg.attributes.iter_mut() {
            if let LinkAttribute::LinkInfo(infos) = attr {
                for info in infos.iter_mut() {
                    if let netlink_packet_route::link::LinkInfo::Data(data) = info {
                        *data = InfoData::Veth(InfoVeth::Peer(peer_msg.clone()));
                    }
                }
            }
        }
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(io_error)
            .context(|| format!("creating veth pair {name} <-> {peer}"))
    }

    /// Removes any XDP program from link `index`, in both native and generic mode (a
    /// crashed process may have left one behind).
    pub async fn detach_xdp(&self, index: u32) -> Result<(), SysError> {
        for flags in [XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE] {
            let msg = LinkUnspec::new_with_index(index)
                .append_extra_attribute(LinkAttribute::Xdp(vec![LinkXdp::Fd(-1), LinkXdp::Flags(flags)]))
                .build();
            match self.handle.link().set(msg).execute().await.map_err(io_error) {
                Ok(()) => {}
                // Native mode unsupported by the driver: nothing attached there either.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                Err(e) => return Err(SysError::new(format!("detaching XDP from link {index}"), e)),
            }
        }
        Ok(())
    }

    /// Adds `addr` to link `index`; an address already there is fine.
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<(), SysError> {
        match self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len())
            .execute()
            .await
            .map_err(io_error)
        {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(SysError::new(format!("adding address {addr} to link {index}"), e)),
        }
    }

    /// The addresses on link `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>, SysError> {
        use netlink_packet_route::address::AddressAttribute;
        let mut out = Vec::new();
        let mut stream = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(io_error)
            .context(|| format!("listing addresses of link {index}"))?
        {
            let prefix = msg.header.prefix_len;
            for attr in &msg.attributes {
                if let AddressAttribute::Address(ip) = attr
                    && let Ok(net) = IpNet::new(*ip, prefix)
                {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }

    /// Adds a route to `dst` out of link `index`, via `gateway` if given (else on-link).
    /// A route already there is fine.
    pub async fn add_route(&self, dst: IpNet, gateway: Option<IpAddr>, index: u32) -> Result<(), SysError> {
        let msg = match (dst, gateway) {
            (IpNet::V4(d), gw) => {
                let mut b = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                    .destination_prefix(d.addr(), d.prefix_len())
                    .output_interface(index);
                if let Some(IpAddr::V4(g)) = gw {
                    b = b.gateway(g);
                }
                b.build()
            }
            (IpNet::V6(d), gw) => {
                let mut b = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                    .destination_prefix(d.addr(), d.prefix_len())
                    .output_interface(index);
                if let Some(IpAddr::V6(g)) = gw {
                    b = b.gateway(g);
                }
                b.build()
            }
        };
        match self.handle.route().add(msg).execute().await.map_err(io_error) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(SysError::new(format!("adding route to {dst} via {gateway:?} on link {index}"), e)),
        }
    }

    /// Routes of the main table out of link `index`, as (destination, gateway).
    pub async fn routes(&self, index: u32) -> Result<Vec<(IpNet, Option<IpAddr>)>, SysError> {
        use netlink_packet_route::route::{RouteAddress, RouteAttribute};
        let as_ip = |a: &RouteAddress| match a {
            RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
            RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
            _ => None,
        };
        let mut out = Vec::new();
        let queries = [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ];
        for query in queries {
            let mut stream = self.handle.route().get(query).execute();
            while let Some(msg) = stream
                .try_next()
                .await
                .map_err(io_error)
                .context(|| format!("listing routes of link {index}"))?
            {
                let mut dst = None;
                let mut gw = None;
                let mut oif = None;
                for attr in &msg.attributes {
                    match attr {
                        RouteAttribute::Destination(a) => dst = as_ip(a),
                        RouteAttribute::Gateway(a) => gw = as_ip(a),
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                if oif != Some(index) || u32::from(msg.header.table) != TABLE_MAIN {
                    continue;
                }
                let unspecified = if msg.header.address_family == netlink_packet_route::AddressFamily::Inet6 {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                };
                if let Ok(net) = IpNet::new(dst.unwrap_or(unspecified), msg.header.destination_prefix_length)
                {
                    out.push((net, gw));
                }
            }
        }
        Ok(out)
    }

    /// Where the kernel sends a packet to `dst`: the outgoing link and the neighbour on
    /// it (the gateway, or `dst` itself on a connected network). `None`: no route.
    pub async fn next_hop(
        &self,
        dst: std::net::Ipv4Addr,
    ) -> Result<Option<(u32, std::net::Ipv4Addr)>, SysError> {
        use netlink_packet_route::route::{RouteAddress, RouteAttribute};
        let query = RouteMessageBuilder::<std::net::Ipv4Addr>::new().destination_prefix(dst, 32).build();
        let mut stream = self.handle.route().get(query).execute();
        let msg = match stream.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(e) => {
                let e = io_error(e);
                // No route: ENETUNREACH / EHOSTUNREACH.
                if matches!(e.raw_os_error(), Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH)) {
                    return Ok(None);
                }
                return Err(SysError::new(format!("looking up the route to {dst}"), e));
            }
        };
        let mut gateway = None;
        let mut oif = None;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        Ok(oif.map(|i| (i, gateway.unwrap_or(dst))))
    }

    /// The routes of the main IPv4 table.
    pub async fn routes_v4(&self) -> Result<Vec<RouteEntry>, SysError> {
        use netlink_packet_route::route::{RouteAddress, RouteAttribute};
        let mut out = Vec::new();
        let mut stream = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(msg) =
            stream.try_next().await.map_err(io_error).context(|| "listing IPv4 routes".to_string())?
        {
            if u32::from(msg.header.table) != TABLE_MAIN {
                continue;
            }
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut oif = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if let Ok(dst) = Ipv4Net::new(dst, msg.header.destination_prefix_length) {
                out.push(RouteEntry { dst, oif, protocol: u8::from(msg.header.protocol) });
            }
        }
        Ok(out)
    }

    /// Adds, or replaces, the route to `dst` in `table` ([`TABLE_MAIN`] for the main
    /// one) out of link `index` via `gateway` taken as on-link (no connected network
    /// needs to hold it), preferring source `src`, marked with `protocol` (its owner's,
    /// to find it again).
    pub async fn replace_onlink_route_v4(
        &self,
        table: u32,
        dst: Ipv4Net,
        index: u32,
        gateway: Ipv4Addr,
        src: Ipv4Addr,
        protocol: u8,
    ) -> Result<(), SysError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(table)
            .destination_prefix(dst.addr(), dst.prefix_len())
            .output_interface(index)
            .gateway(gateway)
            .pref_source(src)
            .onlink()
            .protocol(protocol.into())
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(io_error)
            .context(|| format!("adding route to {dst} via {gateway} on link {index} in table {table}"))
    }

    /// Deletes the route to `dst` in `table` (out of link `index`, if given) if it
    /// carries `protocol` (the kernel matches it: a route of another owner is left
    /// alone); true if it existed.
    pub async fn delete_route_v4(
        &self,
        table: u32,
        dst: Ipv4Net,
        index: Option<u32>,
        protocol: u8,
    ) -> Result<bool, SysError> {
        let mut msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(table)
            .destination_prefix(dst.addr(), dst.prefix_len())
            .protocol(protocol.into());
        if let Some(index) = index {
            msg = msg.output_interface(index);
        }
        match self.handle.route().del(msg.build()).execute().await.map_err(io_error) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(SysError::new(format!("deleting route to {dst} in table {table}"), e)),
        }
    }

    /// The IPv4 routing policy rules, in the kernel's order.
    pub async fn rules_v4(&self) -> Result<Vec<RuleEntry>, SysError> {
        use netlink_packet_route::rule::{RuleAction, RuleAttribute};
        let mut out = Vec::new();
        let mut stream = self.handle.rule().get(rtnetlink::IpVersion::V4).execute();
        while let Some(msg) =
            stream.try_next().await.map_err(io_error).context(|| "listing IPv4 rules".to_string())?
        {
            let h = &msg.header;
            let mut rule = RuleEntry {
                priority: 0,
                table: u32::from(h.table),
                dst: None,
                ip_protocol: None,
                dst_port: None,
                iif: None,
                protocol: 0,
                other: h.src_len != 0 || h.tos != 0 || h.action != RuleAction::ToTable,
            };
            for attr in &msg.attributes {
                match attr {
                    RuleAttribute::Priority(p) => rule.priority = *p,
                    RuleAttribute::Table(t) => rule.table = *t,
                    RuleAttribute::Destination(IpAddr::V4(a)) => {
                        rule.dst = Ipv4Net::new(*a, h.dst_len).ok();
                    }
                    RuleAttribute::IpProtocol(p) => rule.ip_protocol = Some(u8::from(*p)),
                    RuleAttribute::DestinationPortRange(r) if r.start == r.end => {
                        rule.dst_port = Some(r.start)
                    }
                    RuleAttribute::Protocol(p) => rule.protocol = u8::from(*p),
                    RuleAttribute::Iifname(name) => rule.iif = Some(name.clone()),
                    // What `ip rule` itself sends on every rule it lists.
                    RuleAttribute::SuppressPrefixLen(_) | RuleAttribute::SuppressIfGroup(_) => {}
                    _ => rule.other = true,
                }
            }
            out.push(rule);
        }
        Ok(out)
    }

    fn rule_message(rule: &RuleEntry) -> netlink_packet_route::rule::RuleMessage {
        use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange};
        let mut msg = RuleMessage::default();
        msg.header.family = netlink_packet_route::AddressFamily::Inet;
        msg.header.action = RuleAction::ToTable;
        msg.header.table = u8::try_from(rule.table).unwrap_or(0);
        msg.attributes.push(RuleAttribute::Table(rule.table));
        msg.attributes.push(RuleAttribute::Priority(rule.priority));
        if let Some(dst) = rule.dst {
            msg.header.dst_len = dst.prefix_len();
            msg.attributes.push(RuleAttribute::Destination(IpAddr::V4(dst.addr())));
        }
        if let Some(p) = rule.ip_protocol {
            msg.attributes.push(RuleAttribute::IpProtocol(p.into()));
        }
        if let Some(port) = rule.dst_port {
            msg.attributes
                .push(RuleAttribute::DestinationPortRange(RulePortRange { start: port, end: port }));
        }
        if let Some(name) = &rule.iif {
            msg.attributes.push(RuleAttribute::Iifname(name.clone()));
        }
        if rule.protocol != 0 {
            msg.attributes.push(RuleAttribute::Protocol(rule.protocol.into()));
        }
        msg
    }

    /// Adds a rule (an identical one already there is not an error).
    pub async fn add_rule_v4(&self, rule: &RuleEntry) -> Result<(), SysError> {
        let mut req = self.handle.rule().add();
        *req.message_mut() = Self::rule_message(rule);
        match req.execute().await.map_err(io_error) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(SysError::new(format!("adding rule {rule:?}"), e)),
        }
    }

    /// Deletes the rule matching `rule` (its protocol included, so another owner's is
    /// left alone); true if it existed.
    pub async fn delete_rule_v4(&self, rule: &RuleEntry) -> Result<bool, SysError> {
        match self.handle.rule().del(Self::rule_message(rule)).execute().await.map_err(io_error) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(SysError::new(format!("deleting rule {rule:?}"), e)),
        }
    }

    /// Sets a permanent neighbour entry: `ip` is at `mac` on link `index`.
    pub async fn set_neighbour(&self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), SysError> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .map_err(io_error)
            .context(|| format!("setting neighbour {ip} on link {index}"))
    }

    /// Deletes the neighbour entry of `ip` on link `index`; true if it existed.
    pub async fn delete_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<bool, SysError> {
        use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
        let mut msg = NeighbourMessage::default();
        msg.header.family = netlink_packet_route::AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle.neighbours().del(msg).execute().await.map_err(io_error) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(SysError::new(format!("deleting neighbour {ip} on link {index}"), e)),
        }
    }

    /// The resolved IPv4 neighbours of link `index` (reachable, stale, being
    /// re-probed, or static), by address.
    pub async fn neighbours(
        &self,
        index: u32,
    ) -> Result<std::collections::HashMap<std::net::Ipv4Addr, [u8; 6]>, SysError> {
        use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
        let mut out = std::collections::HashMap::new();
        let mut stream = self
            .handle
            .neighbours()
            .get()
            .set_address_family(netlink_packet_route::AddressFamily::Inet)
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(io_error)
            .context(|| format!("listing neighbours on link {index}"))?
        {
            let resolved = matches!(
                msg.header.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
                    | NeighbourState::Noarp
            );
            if msg.header.ifindex != index || !resolved {
                continue;
            }
            let mut dst = None;
            let mut mac = None;
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some(*a),
                    NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
                    _ => {}
                }
            }
            if let (Some(d), Some(m)) = (dst, mac) {
                out.insert(d, m);
            }
        }
        Ok(out)
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: msg.header.flags.contains(netlink_packet_route::link::LinkFlags::Up),
        alias: None,
        kind: LinkKind::Other,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(a);
                info.mac = Some(mac);
            }
            LinkAttribute::Mtu(m) => info.mtu = Some(*m),
            LinkAttribute::IfAlias(a) => info.alias = Some(a.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let netlink_packet_route::link::LinkInfo::Kind(kind) = i {
                        info.kind = match kind {
                            InfoKind::Tun => LinkKind::Tun,
                            InfoKind::Veth => LinkKind::Veth,
                            _ => LinkKind::Other,
                        };
                    }
                }
            }
            _ => {}
        }
    }
    info
}

/// Runs `f` with a netlink connection inside `netns`, on a thread of its own with a
/// small runtime, and returns its result. Blocks the caller until `f` is done.
pub fn in_netns<R, F, Fut>(netns: &Netns, f: F) -> Result<R, SysError>
where
    R: Send,
    F: FnOnce(Netlink) -> Fut + Send,
    Fut: Future<Output = Result<R, SysError>>,
{
    netns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context(|| "starting a netlink runtime".into())?;
        rt.block_on(async {
            let nl = Netlink::connect()?;
            f(nl).await
        })
    })?
}
