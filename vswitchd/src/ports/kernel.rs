//! The kernel as the port manager uses it: links in the daemon's namespace and in
//! pods' namespaces (rtnetlink), the devices behind ports (TAP, veth, AF_XDP sockets,
//! the uplink's XDP program, the underlay's UDP sockets) opened as data-plane queues.
//!
//! Behind a trait so that attach, its undo at every point of failure, restore and
//! recovery are tested without root against a fake (`ports::fake`); [`LinuxKernel`]
//! is the real one. Calls block: the real kernel moves them off the async runtime's
//! workers (`tokio::task::block_in_place`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
use vswitch_dataplane::ids::WorkerId;
use vswitch_dataplane::port::afxdp::{XdpMode, XskGroup, XskQueue};
use vswitch_dataplane::port::steer::{SteeringFds, SteeringProgram};
use vswitch_dataplane::port::tap::{self, TapOptions, TapQueue};
use vswitch_dataplane::port::tunnel::{TunnelCounters, TunnelPrograms};
use vswitch_dataplane::port::underlay::UnderlayQueue;
use vswitch_dataplane::queue::{PortError, PortQueue, SteeringHandover, XskFrames};
use vswitch_dataplane::wire::MacAddr;
use vswitch_sys::SysError;
use vswitch_sys::netlink::TABLE_MAIN;
use vswitch_sys::netlink::{Netlink, in_netns};
pub(crate) use vswitch_sys::netlink::{RouteEntry, RuleEntry, TABLE_LOCAL};
use vswitch_sys::netns::{Netns, NetnsError};

pub(crate) use vswitch_sys::netlink::{LinkInfo, LinkKind};

/// The uplink's XDP program, as the port manager drives it.
pub(crate) trait Steering: Send {
    /// Steers exactly these (IP protocol, destination port) pairs to the switch.
    fn set_ports(&mut self, ports: &BTreeSet<(u8, u16)>) -> Result<(), SysError>;
    /// Attached at the driver's native hook (else the generic one).
    fn native(&self) -> bool;
    /// What a takeover hands over of it (`None`: it cannot be).
    fn handed(&self) -> Option<SteeringHandover<'_>>;
}

impl Steering for SteeringProgram {
    fn set_ports(&mut self, ports: &BTreeSet<(u8, u16)>) -> Result<(), SysError> {
        SteeringProgram::set_ports(self, ports)
    }

    fn handed(&self) -> Option<SteeringHandover<'_>> {
        Some(SteeringProgram::handed(self))
    }

    fn native(&self) -> bool {
        SteeringProgram::native(self)
    }
}

/// Where the tunnel port goes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TunnelSpec {
    pub tap: String,
    pub underlay: String,
    pub node_ip: Ipv4Addr,
    pub port: u16,
    pub mtu: u16,
}

/// The tunnel port's programs, kept for as long as the port is up (dropping detaches).
pub(crate) trait TunnelLink: Send + Sync {
    fn counters(&self) -> TunnelCounters;
    /// Attaches the programs again (after a takeover that did not happen, whose new
    /// daemon attached its own in their place).
    fn relink(&self) -> Result<(), SysError>;
}

impl TunnelLink for TunnelPrograms {
    fn counters(&self) -> TunnelCounters {
        TunnelPrograms::counters(self)
    }

    fn relink(&self) -> Result<(), SysError> {
        blocking(|| self.reattach())
    }
}

/// The tunnel TAP's queues (one per worker) and the programs that link it.
pub(crate) struct TunnelDevice {
    pub queues: Vec<Box<dyn PortQueue>>,
    pub link: Box<dyn TunnelLink>,
}

/// The uplink taken over: its program and one queue per serving worker.
pub(crate) struct UplinkDevice {
    pub steering: Box<dyn Steering>,
    pub queues: Vec<(WorkerId, Box<dyn PortQueue>)>,
    /// Receive queues of the interface.
    pub rx_queues: u32,
    /// Taken from the previous daemon in a takeover (not opened).
    pub handed_over: bool,
}

/// The routing protocol number marking the routes the daemon makes (`proto 118` in
/// `ip route`; unassigned in `/etc/iproute2/rt_protos`): it finds them again by it, and
/// the kernel deletes a route only when it matches.
pub(crate) const ROUTE_PROTOCOL: u8 = 118;

/// Route requests sent before the first answer is awaited.
const ROUTES_IN_FLIGHT: usize = 64;

/// Every kernel operation the port manager makes. Links in the daemon's namespace are
/// named by index (as rtnetlink names them); those in a pod's, by the namespace's path
/// and the interface's name.
pub(crate) trait Kernel: Send + Sync {
    // ---- the daemon's namespace

    fn link(&self, name: &str) -> Result<Option<LinkInfo>, SysError>;
    fn index_of(&self, name: &str) -> Result<u32, SysError>;
    fn set_mac(&self, index: u32, mac: MacAddr) -> Result<(), SysError>;
    fn set_mtu(&self, index: u32, mtu: u16) -> Result<(), SysError>;
    fn add_address(&self, index: u32, addr: IpNet) -> Result<(), SysError>;
    fn addresses(&self, index: u32) -> Result<Vec<IpNet>, SysError>;
    /// The links of the daemon's namespace.
    fn links(&self) -> Result<Vec<LinkInfo>, SysError>;
    fn set_alias(&self, index: u32, alias: &str) -> Result<(), SysError>;
    fn set_up(&self, index: u32) -> Result<(), SysError>;
    /// Deletes the link if it exists; true if it did.
    fn delete_link(&self, name: &str) -> Result<bool, SysError>;
    /// A veth pair `name` ↔ `peer`, the peer made right in the namespace at `peer_netns`
    /// with `mac` (both ends still down).
    fn add_veth(
        &self,
        name: &str,
        peer: &str,
        peer_netns: &Path,
        mac: MacAddr,
        mtu: u16,
    ) -> Result<(), SysError>;
    /// Removes any XDP program a crashed process left on the link.
    fn detach_xdp(&self, index: u32) -> Result<(), SysError>;
    /// For each of `nodes`, the MAC of its next hop out of `uplink`, where the kernel
    /// has resolved it; nodes reached another way, or not resolved yet, are left out.
    fn next_hop_macs(&self, uplink: &str, nodes: &[Ipv4Addr])
    -> Result<HashMap<Ipv4Addr, MacAddr>, SysError>;
    /// The routes of the main IPv4 table.
    fn routes_v4(&self) -> Result<Vec<RouteEntry>, SysError>;
    /// Adds or replaces routes of ours ([`ROUTE_PROTOCOL`]): each of `dsts` out of link
    /// `index` via `gateway` on-link, preferring source `src`. One result per route, in
    /// order.
    fn replace_routes(
        &self,
        dsts: &[Ipv4Net],
        index: u32,
        gateway: Ipv4Addr,
        src: Ipv4Addr,
    ) -> Vec<Result<(), SysError>>;
    /// Deletes routes of ours, each a destination and its link (another owner's is left
    /// alone); per route, true if it existed.
    fn delete_routes(&self, routes: &[(Ipv4Net, u32)]) -> Vec<Result<bool, SysError>>;
    /// A permanent neighbour entry: `ip` is at `mac` on link `index`.
    fn set_neighbour(&self, index: u32, ip: Ipv4Addr, mac: MacAddr) -> Result<(), SysError>;
    /// Deletes the neighbour entry of `ip` on link `index`; true if it existed.
    fn delete_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<bool, SysError>;
    /// Adds or replaces a route of ours in `table` (not the main one): `dst` out of
    /// link `index` via `gateway` on-link, preferring source `src`.
    fn replace_table_route(
        &self,
        table: u32,
        dst: Ipv4Net,
        index: u32,
        gateway: Ipv4Addr,
        src: Ipv4Addr,
    ) -> Result<(), SysError>;
    /// Deletes our route to `dst` in `table`; true if it existed.
    fn delete_table_route(&self, table: u32, dst: Ipv4Net) -> Result<bool, SysError>;
    /// The IPv4 routing policy rules, in order.
    fn rules_v4(&self) -> Result<Vec<RuleEntry>, SysError>;
    fn add_rule(&self, rule: &RuleEntry) -> Result<(), SysError>;
    /// Deletes the rule matching `rule`, its protocol included; true if it existed.
    fn delete_rule(&self, rule: &RuleEntry) -> Result<bool, SysError>;

    // ---- pods' namespaces

    /// Whether a network namespace is at `path`.
    fn open_netns(&self, path: &Path) -> Result<(), NetnsError>;
    /// Whether the namespace at `path` is the daemon's own (the node's).
    fn is_daemon_netns(&self, path: &Path) -> Result<bool, NetnsError>;
    fn pod_link(&self, netns: &Path, name: &str) -> Result<Option<LinkInfo>, SysError>;
    fn pod_links(&self, netns: &Path) -> Result<Vec<LinkInfo>, SysError>;
    /// Writes `alias` on the pod's interface (if given), then brings it up if `up`.
    fn pod_configure(&self, netns: &Path, name: &str, alias: Option<&str>, up: bool) -> Result<(), SysError>;
    fn pod_delete_link(&self, netns: &Path, name: &str) -> Result<bool, SysError>;
    /// Transmit offloads off, so the interface sends finished frames (AF_XDP ports).
    fn pod_disable_offloads(&self, netns: &Path, name: &str) -> Result<(), SysError>;
    /// The distinct network namespaces bind-mounted in `dirs`, in order.
    fn namespaces(&self, dirs: &[&str]) -> Vec<PathBuf>;

    // ---- the devices behind ports, opened as queues labelled `label`

    /// A new TAP `name` (in the namespace at `netns`, else the daemon's) with one queue
    /// per `opts.queues`, still down.
    fn create_tap(
        &self,
        netns: Option<&Path>,
        name: &str,
        opts: &TapOptions,
        label: &str,
    ) -> Result<Vec<Box<dyn PortQueue>>, SysError> {
        tap_queues(netns, label, || tap::create(name, opts))
    }

    fn reopen_tap(
        &self,
        netns: Option<&Path>,
        name: &str,
        opts: &TapOptions,
        label: &str,
    ) -> Result<Vec<Box<dyn PortQueue>>, SysError> {
        tap_queues(netns, label, || tap::reopen(name, opts))
    }

    fn open_xsk(&self, ifname: &str, mode: XdpMode, label: &str) -> Result<Box<dyn PortQueue>, SysError>;
    /// The uplink's XDP program and a socket on each receive queue, grouped by worker
    /// (queue q to worker q mod `workers`).
    fn open_uplink(
        &self,
        name: &str,
        mode: XdpMode,
        node_ip: Ipv4Addr,
        workers: usize,
    ) -> Result<UplinkDevice, SysError>;
    /// The tunnel port: a TAP `spec.tap` with UDP-tunnel offloads (one queue per worker,
    /// MTU `spec.mtu`, up, no IPv6 of its own) and the tc programs linking it to
    /// `spec.underlay` for VXLAN to `spec.node_ip`:`spec.port`. The TAP goes away with
    /// its queues.
    fn open_tunnel(&self, spec: &TunnelSpec, workers: usize) -> Result<TunnelDevice, SysError>;
    /// A UDP socket for VXLAN to and from other nodes.
    fn open_underlay(
        &self,
        bind: SocketAddrV4,
        mtu: u16,
        label: &str,
    ) -> Result<Box<dyn PortQueue>, PortError>;

    // ---- a takeover: what the previous daemon handed over

    /// A queue the previous daemon handed over, if it is what it was announced as
    /// (else it is closed and the error says what it was).
    fn adopt_queue(&self, handed: HandedQueue, label: &str) -> Result<Box<dyn PortQueue>, SysError>;
    /// The uplink's program and sockets (per worker) as handed over.
    fn adopt_uplink(
        &self,
        program: HandedProgram,
        sockets: Vec<(WorkerId, Vec<HandedXsk>)>,
        name: &str,
    ) -> Result<UplinkDevice, SysError>;
    /// The tunnel's tc programs, attached anew in place of the previous daemon's (which
    /// it leaves attached as it goes): the TAP itself came with its queues.
    fn relink_tunnel(&self, spec: &TunnelSpec) -> Result<Box<dyn TunnelLink>, SysError>;
}

/// A queue's kernel objects as received in a takeover, with what they must be.
pub(crate) enum HandedQueue {
    Tap {
        fd: std::os::fd::OwnedFd,
        name: String,
        offloads: bool,
        tunnel: bool,
    },
    Sockets {
        rx: std::os::fd::OwnedFd,
        tx: std::os::fd::OwnedFd,
        local: SocketAddrV4,
        mtu: u16,
    },
    /// One AF_XDP socket, or several served as one queue, and the program steering to
    /// them when the queue owns it (a pod's).
    Xsk {
        sockets: Vec<HandedXsk>,
        program: Option<HandedProgram>,
    },
}

/// An AF_XDP socket as received: bound to the interface's queue `queue`.
pub(crate) struct HandedXsk {
    pub socket: std::os::fd::OwnedFd,
    pub umem: std::os::fd::OwnedFd,
    pub queue: u32,
    pub frames: XskFrames,
}

/// An XDP program as received, with the interface it must be attached to.
pub(crate) struct HandedProgram {
    pub ifname: String,
    pub flags: u32,
    pub fds: SteeringFds,
    pub steered: BTreeSet<(u8, u16)>,
}

/// Sockets of one worker as one queue: a group when there are several.
fn xsk_queue(mut sockets: Vec<XskQueue>) -> Result<Box<dyn PortQueue>, SysError> {
    if sockets.len() == 1 {
        return Ok(Box::new(sockets.pop().expect("one")));
    }
    Ok(Box::new(XskGroup::new(sockets)?))
}

/// Adopts `sockets` as one queue; with `per_queue`, each is labelled with its queue.
fn adopt_xsks(
    sockets: Vec<HandedXsk>,
    mut program: Option<SteeringProgram>,
    label: &str,
    per_queue: bool,
) -> Result<Box<dyn PortQueue>, SysError> {
    let adopted = sockets
        .into_iter()
        .map(|s| {
            let label = if per_queue { format!("{label} queue {}", s.queue) } else { label.to_string() };
            XskQueue::adopt(s.socket, s.umem, s.queue, s.frames, program.take(), label)
        })
        .collect::<Result<Vec<_>, _>>()?;
    xsk_queue(adopted)
}

/// Runs blocking kernel work off the async runtime's workers when on a multi-threaded
/// runtime (the daemon's), else in place.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The real kernel: rtnetlink on the daemon's runtime, namespaces entered from
/// short-lived threads.
pub(crate) struct LinuxKernel {
    netlink: Netlink,
    runtime: tokio::runtime::Handle,
}

impl LinuxKernel {
    /// Connects to rtnetlink. Must run inside the daemon's (multi-threaded) runtime.
    pub(crate) fn connect() -> Result<LinuxKernel, SysError> {
        Ok(LinuxKernel { netlink: Netlink::connect()?, runtime: tokio::runtime::Handle::current() })
    }

    fn run<R>(&self, fut: impl Future<Output = R>) -> R {
        blocking(|| self.runtime.block_on(fut))
    }

    fn in_pod<R: Send, Fut: Future<Output = Result<R, SysError>>>(
        &self,
        netns: &Path,
        f: impl FnOnce(Netlink) -> Fut + Send,
    ) -> Result<R, SysError> {
        let ns = open(netns)?;
        blocking(|| in_netns(&ns, f))
    }
}

fn open(path: &Path) -> Result<Netns, SysError> {
    Netns::open(path).map_err(|e| SysError::new(e.to_string(), std::io::Error::other(e.to_string())))
}

/// Opens a TAP's queues with `open` in the namespace at `netns` (else here), labelled.
/// Made right inside the pod (the queues opened from a thread in its namespace belong
/// to it): no move across namespaces, which costs the kernel an RCU grace period or two.
fn tap_queues(
    netns: Option<&Path>,
    label: &str,
    open_queues: impl FnOnce() -> Result<Vec<TapQueue>, SysError> + Send,
) -> Result<Vec<Box<dyn PortQueue>>, SysError> {
    let queues = match netns {
        Some(path) => {
            let ns = open(path)?;
            blocking(|| ns.run(open_queues))??
        }
        None => blocking(open_queues)?,
    };
    Ok(labelled(queues, label, |q, l| q.set_label(l)))
}

fn labelled<Q: PortQueue + 'static>(
    queues: Vec<Q>,
    label: &str,
    set: impl Fn(&mut Q, String),
) -> Vec<Box<dyn PortQueue>> {
    queues
        .into_iter()
        .map(|mut q| {
            set(&mut q, label.to_string());
            Box::new(q) as Box<dyn PortQueue>
        })
        .collect()
}

impl Kernel for LinuxKernel {
    fn link(&self, name: &str) -> Result<Option<LinkInfo>, SysError> {
        self.run(self.netlink.link(name))
    }

    fn index_of(&self, name: &str) -> Result<u32, SysError> {
        self.run(self.netlink.index_of(name))
    }

    fn set_mac(&self, index: u32, mac: MacAddr) -> Result<(), SysError> {
        self.run(self.netlink.set_mac(index, mac.0))
    }

    fn set_mtu(&self, index: u32, mtu: u16) -> Result<(), SysError> {
        self.run(self.netlink.set_mtu(index, u32::from(mtu)))
    }

    fn add_address(&self, index: u32, addr: IpNet) -> Result<(), SysError> {
        self.run(self.netlink.add_address(index, addr))
    }

    fn addresses(&self, index: u32) -> Result<Vec<IpNet>, SysError> {
        self.run(self.netlink.addresses(index))
    }

    fn links(&self) -> Result<Vec<LinkInfo>, SysError> {
        self.run(self.netlink.links())
    }

    fn set_alias(&self, index: u32, alias: &str) -> Result<(), SysError> {
        self.run(self.netlink.set_alias(index, alias))
    }

    fn set_up(&self, index: u32) -> Result<(), SysError> {
        self.run(self.netlink.set_up(index))
    }

    fn delete_link(&self, name: &str) -> Result<bool, SysError> {
        self.run(self.netlink.delete_by_name(name))
    }

    fn add_veth(
        &self,
        name: &str,
        peer: &str,
        peer_netns: &Path,
        mac: MacAddr,
        mtu: u16,
    ) -> Result<(), SysError> {
        let ns = open(peer_netns)?;
        self.run(self.netlink.add_veth(name, peer, Some(&ns), mac.0, u32::from(mtu)))
    }

    fn detach_xdp(&self, index: u32) -> Result<(), SysError> {
        self.run(self.netlink.detach_xdp(index))
    }

    fn next_hop_macs(
        &self,
        uplink: &str,
        nodes: &[Ipv4Addr],
    ) -> Result<HashMap<Ipv4Addr, MacAddr>, SysError> {
        self.run(async {
            let index = self.netlink.index_of(uplink).await?;
            let neighbours = self.netlink.neighbours(index).await?;
            let mut found = HashMap::new();
            for ip in nodes {
                // A node whose route cannot be looked up keeps to the socket; the others
                // are not held back by it.
                let hop = match self.netlink.next_hop(*ip).await {
                    Ok(hop) => hop,
                    Err(e) => {
                        tracing::debug!(node = %ip, error = %e, "no next hop");
                        continue;
                    }
                };
                if let Some((oif, hop)) = hop
                    && oif == index
                    && let Some(mac) = neighbours.get(&hop)
                {
                    found.insert(*ip, MacAddr(*mac));
                }
            }
            Ok(found)
        })
    }

    fn routes_v4(&self) -> Result<Vec<RouteEntry>, SysError> {
        self.run(self.netlink.routes_v4())
    }

    fn replace_routes(
        &self,
        dsts: &[Ipv4Net],
        index: u32,
        gateway: Ipv4Addr,
        src: Ipv4Addr,
    ) -> Vec<Result<(), SysError>> {
        use futures::StreamExt;
        // Requests in flight together on the one netlink socket: 10 000 ClusterIPs are as
        // many routes.
        let requests = futures::stream::iter(dsts)
            .map(|dst| {
                self.netlink.replace_onlink_route_v4(TABLE_MAIN, *dst, index, gateway, src, ROUTE_PROTOCOL)
            })
            .buffered(ROUTES_IN_FLIGHT);
        self.run(requests.collect())
    }

    fn delete_routes(&self, routes: &[(Ipv4Net, u32)]) -> Vec<Result<bool, SysError>> {
        use futures::StreamExt;
        let requests = futures::stream::iter(routes)
            .map(|(dst, index)| self.netlink.delete_route_v4(TABLE_MAIN, *dst, Some(*index), ROUTE_PROTOCOL))
            .buffered(ROUTES_IN_FLIGHT);
        self.run(requests.collect())
    }

    fn set_neighbour(&self, index: u32, ip: Ipv4Addr, mac: MacAddr) -> Result<(), SysError> {
        self.run(self.netlink.set_neighbour(index, ip, mac.0))
    }

    fn delete_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<bool, SysError> {
        self.run(self.netlink.delete_neighbour(index, ip))
    }

    fn replace_table_route(
        &self,
        table: u32,
        dst: Ipv4Net,
        index: u32,
        gateway: Ipv4Addr,
        src: Ipv4Addr,
    ) -> Result<(), SysError> {
        self.run(self.netlink.replace_onlink_route_v4(table, dst, index, gateway, src, ROUTE_PROTOCOL))
    }

    fn delete_table_route(&self, table: u32, dst: Ipv4Net) -> Result<bool, SysError> {
        self.run(self.netlink.delete_route_v4(table, dst, None, ROUTE_PROTOCOL))
    }

    fn rules_v4(&self) -> Result<Vec<RuleEntry>, SysError> {
        self.run(self.netlink.rules_v4())
    }

    fn add_rule(&self, rule: &RuleEntry) -> Result<(), SysError> {
        self.run(self.netlink.add_rule_v4(rule))
    }

    fn delete_rule(&self, rule: &RuleEntry) -> Result<bool, SysError> {
        self.run(self.netlink.delete_rule_v4(rule))
    }

    fn open_netns(&self, path: &Path) -> Result<(), NetnsError> {
        Netns::open(path).map(drop)
    }

    fn is_daemon_netns(&self, path: &Path) -> Result<bool, NetnsError> {
        // The daemon's threads all stay in its namespace (work in pods runs on threads
        // of its own), so the caller's is the daemon's.
        Netns::open(path)?.same_as(&Netns::current()?)
    }

    fn pod_link(&self, netns: &Path, name: &str) -> Result<Option<LinkInfo>, SysError> {
        let name = name.to_string();
        self.in_pod(netns, |nl| async move { nl.link(&name).await })
    }

    fn pod_links(&self, netns: &Path) -> Result<Vec<LinkInfo>, SysError> {
        self.in_pod(netns, |nl| async move { nl.links().await })
    }

    fn pod_configure(&self, netns: &Path, name: &str, alias: Option<&str>, up: bool) -> Result<(), SysError> {
        let (name, alias) = (name.to_string(), alias.map(str::to_string));
        self.in_pod(netns, |nl| async move {
            let index = nl.index_of(&name).await?;
            if let Some(alias) = &alias {
                nl.set_alias(index, alias).await?;
            }
            if up {
                nl.set_up(index).await?;
            }
            Ok(())
        })
    }

    fn pod_delete_link(&self, netns: &Path, name: &str) -> Result<bool, SysError> {
        let name = name.to_string();
        self.in_pod(netns, |nl| async move { nl.delete_by_name(&name).await })
    }

    fn pod_disable_offloads(&self, netns: &Path, name: &str) -> Result<(), SysError> {
        let ns = open(netns)?;
        blocking(|| ns.run(|| vswitch_sys::ethtool::disable_offloads(name)))?
    }

    fn namespaces(&self, dirs: &[&str]) -> Vec<PathBuf> {
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for path in paths {
                if Netns::open(&path).is_err() {
                    continue;
                }
                // /var/run is /run on most systems: each namespace once.
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                if seen.insert((meta.dev(), meta.ino())) {
                    found.push(path);
                }
            }
        }
        found
    }

    fn create_tap(
        &self,
        netns: Option<&Path>,
        name: &str,
        opts: &TapOptions,
        label: &str,
    ) -> Result<Vec<Box<dyn PortQueue>>, SysError> {
        let queues = match netns {
            // Made right inside the pod (the queues opened from a thread in its namespace
            // belong to it): no move across namespaces, which costs the kernel an RCU
            // grace period or two.
            Some(path) => {
                let ns = open(path)?;
                blocking(|| ns.run(|| tap::create(name, opts)))??
            }
            None => blocking(|| tap::create(name, opts))?,
        };
        Ok(labelled(queues, label, |q, l| q.set_label(l)))
    }

    fn reopen_tap(
        &self,
        netns: Option<&Path>,
        name: &str,
        opts: &TapOptions,
        label: &str,
    ) -> Result<Vec<Box<dyn PortQueue>>, SysError> {
        let queues = match netns {
            Some(path) => {
                let ns = open(path)?;
                blocking(|| ns.run(|| tap::reopen(name, opts)))??
            }
            None => blocking(|| tap::reopen(name, opts))?,
        };
        Ok(labelled(queues, label, |q, l| q.set_label(l)))
    }

    fn open_xsk(&self, ifname: &str, mode: XdpMode, label: &str) -> Result<Box<dyn PortQueue>, SysError> {
        let mut q = blocking(|| XskQueue::open(ifname, mode))?;
        q.set_label(label.to_string());
        Ok(Box::new(q))
    }

    fn open_uplink(
        &self,
        name: &str,
        mode: XdpMode,
        node_ip: Ipv4Addr,
        workers: usize,
    ) -> Result<UplinkDevice, SysError> {
        let (program, rx_queues, sockets) = blocking(|| -> Result<_, SysError> {
            let program = SteeringProgram::attach(name, mode)?;
            program.set_node_ip(node_ip)?;
            let rx_queues = vswitch_sys::ethtool::rx_queues(name)?;
            let mut sockets = Vec::new();
            for q in 0..rx_queues {
                let mut s = XskQueue::open_steered(&program, q)?;
                s.set_label(format!("uplink {name} queue {q}"));
                sockets.push(s);
            }
            Ok((program, rx_queues, sockets))
        })?;
        // Queue q goes to worker q mod workers; a worker with several gets them grouped.
        let mut per_worker: Vec<Vec<XskQueue>> = (0..workers).map(|_| Vec::new()).collect();
        for (q, s) in sockets.into_iter().enumerate() {
            per_worker[q % workers].push(s);
        }
        let mut queues: Vec<(WorkerId, Box<dyn PortQueue>)> = Vec::new();
        for (w, group) in per_worker.into_iter().enumerate() {
            if !group.is_empty() {
                queues.push((w, xsk_queue(group)?));
            }
        }
        Ok(UplinkDevice { steering: Box::new(program), queues, rx_queues, handed_over: false })
    }

    fn open_tunnel(&self, spec: &TunnelSpec, workers: usize) -> Result<TunnelDevice, SysError> {
        let opts = TapOptions { queues: workers, offloads: true, mac: None, mtu: Some(spec.mtu) };
        // Each step that fails drops the queues: the TAP, not persistent, goes with them.
        let queues = blocking(|| -> Result<_, SysError> {
            let mut queues = tap::create(&spec.tap, &opts)?;
            queues[0].release_device()?;
            tap::enable_tunnel_offloads(&mut queues)?;
            Ok(queues)
        })?;
        // Its own IPv6 would have the kernel send router solicitations into it (counted
        // as tunnel_not_vxlan drops if it does: /proc/sys is read-only in containers).
        let sysctl = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", spec.tap);
        if let Err(e) = std::fs::write(&sysctl, "1")
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::debug!(tap = %spec.tap, error = %e, "IPv6 stays on on the tunnel TAP");
        }
        self.set_up(self.index_of(&spec.tap)?)?;
        let programs =
            blocking(|| TunnelPrograms::attach(&spec.underlay, &spec.tap, spec.node_ip, spec.port))?;
        let label = format!("tunnel {} on {}", spec.tap, spec.underlay);
        Ok(TunnelDevice { queues: labelled(queues, &label, |q, l| q.set_label(l)), link: Box::new(programs) })
    }

    fn open_underlay(
        &self,
        bind: SocketAddrV4,
        mtu: u16,
        label: &str,
    ) -> Result<Box<dyn PortQueue>, PortError> {
        let mut q = blocking(|| UnderlayQueue::open(bind, mtu))?;
        q.set_label(label.to_string());
        Ok(Box::new(q))
    }

    fn adopt_queue(&self, handed: HandedQueue, label: &str) -> Result<Box<dyn PortQueue>, SysError> {
        Ok(match handed {
            HandedQueue::Tap { fd, name, offloads, tunnel } => {
                let mut q = tap::adopt(fd, &name, offloads, tunnel)?;
                q.set_label(label.to_string());
                Box::new(q)
            }
            HandedQueue::Sockets { rx, tx, local, mtu } => {
                let mut q = UnderlayQueue::adopt(rx, tx, local, mtu)
                    .map_err(|e| SysError::new(format!("{}: {}", e.port, e.op), e.source))?;
                q.set_label(label.to_string());
                Box::new(q)
            }
            HandedQueue::Xsk { sockets, program } => {
                let program = program
                    .map(|p| blocking(|| SteeringProgram::adopt(&p.ifname, p.flags, p.fds, p.steered)))
                    .transpose()?;
                adopt_xsks(sockets, program, label, false)?
            }
        })
    }

    fn adopt_uplink(
        &self,
        program: HandedProgram,
        sockets: Vec<(WorkerId, Vec<HandedXsk>)>,
        name: &str,
    ) -> Result<UplinkDevice, SysError> {
        let steering = blocking(|| {
            SteeringProgram::adopt(&program.ifname, program.flags, program.fds, program.steered)
        })?;
        let rx_queues = sockets.iter().map(|(_, s)| s.len() as u32).sum();
        let queues = sockets
            .into_iter()
            .map(|(w, sockets)| Ok((w, adopt_xsks(sockets, None, &format!("uplink {name}"), true)?)))
            .collect::<Result<Vec<_>, SysError>>()?;
        Ok(UplinkDevice { steering: Box::new(steering), queues, rx_queues, handed_over: true })
    }

    fn relink_tunnel(&self, spec: &TunnelSpec) -> Result<Box<dyn TunnelLink>, SysError> {
        let programs =
            blocking(|| TunnelPrograms::attach(&spec.underlay, &spec.tap, spec.node_ip, spec.port))?;
        Ok(Box::new(programs))
    }
}

/// The first IPv4 address among `addrs`.
pub(crate) fn first_ipv4(addrs: &[IpNet]) -> Option<Ipv4Addr> {
    addrs.iter().find_map(|a| match a.addr() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    })
}
