//! A kernel for tests: links and network namespaces kept in memory, queues that are the
//! data plane's memory ports (so frames really cross the switch), any operation made to
//! fail on demand, and a log of what was done.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ipnet::{IpNet, Ipv4Net};
use vswitch_dataplane::ids::WorkerId;
use vswitch_dataplane::port::afxdp::XdpMode;
use vswitch_dataplane::port::memory::{MemoryPort, MemoryPortHandle};
use vswitch_dataplane::port::tap::TapOptions;
use vswitch_dataplane::port::tunnel::TunnelCounters;
use vswitch_dataplane::queue::{PortError, PortQueue};
use vswitch_dataplane::wire::MacAddr;
use vswitch_sys::SysError;
use vswitch_sys::netns::NetnsError;

use super::kernel::{
    HandedProgram, HandedQueue, HandedXsk, Kernel, LinkInfo, LinkKind, ROUTE_PROTOCOL, RouteEntry, RuleEntry,
    Steering, TABLE_LOCAL, TunnelDevice, TunnelLink, TunnelSpec, UplinkDevice,
};

/// The fake's name for the daemon's own namespace (add it with `add_netns` to use it).
pub(crate) const DAEMON_NETNS: &str = "/proc/self/ns/net";

/// A kernel operation a test can make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Op {
    CreateTap,
    ReopenTap,
    AddVeth,
    DeleteLink,
    SetUp,
    SetAlias,
    DetachXdp,
    PodConfigure,
    PodDisableOffloads,
    PodDeleteLink,
    PodLinks,
    OpenXsk,
    OpenUplink,
    OpenUnderlay,
    OpenTunnel,
    ReplaceRoute,
    AddRule,
    AdoptQueue,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FakeLink {
    pub index: u32,
    pub kind: LinkKind,
    pub mac: Option<MacAddr>,
    pub mtu: u16,
    pub up: bool,
    pub alias: Option<String>,
    pub addresses: Vec<IpNet>,
    /// An XDP program is attached (left by a crashed process).
    pub xdp: bool,
    pub offloads: bool,
    /// Queues opened on it and not released.
    pub queues: usize,
    /// The other end of a veth pair (namespace, `None`: the daemon's; name): deleting
    /// either end deletes both.
    pub peer: Option<(Option<PathBuf>, String)>,
}

impl FakeLink {
    fn new(index: u32, kind: LinkKind, mac: Option<MacAddr>, mtu: u16) -> FakeLink {
        FakeLink {
            index,
            kind,
            mac,
            mtu,
            up: false,
            alias: None,
            addresses: vec![],
            xdp: false,
            offloads: true,
            queues: 0,
            peer: None,
        }
    }

    fn info(&self, name: &str) -> LinkInfo {
        LinkInfo {
            index: self.index,
            name: name.to_string(),
            mac: self.mac.map(|m| m.0),
            mtu: Some(u32::from(self.mtu)),
            up: self.up,
            alias: self.alias.clone(),
            kind: self.kind,
        }
    }
}

/// Each set of (IP protocol, port) the uplink's program was told to steer.
type SteeringRecord = Arc<Mutex<Vec<BTreeSet<(u8, u16)>>>>;

#[derive(Default)]
struct State {
    next_index: u32,
    host: BTreeMap<String, FakeLink>,
    /// A path missing here is no namespace.
    pods: BTreeMap<PathBuf, BTreeMap<String, FakeLink>>,
    failing: BTreeSet<Op>,
    log: Vec<String>,
    /// The test's ends of the queues handed out, by namespace (`None`: the daemon's)
    /// and interface.
    handles: HashMap<(Option<PathBuf>, String), Vec<MemoryPortHandle>>,
    next_hops: HashMap<Ipv4Addr, MacAddr>,
    /// What the uplink's program was told to steer, each time.
    steered: SteeringRecord,
    /// The main IPv4 table.
    routes: Vec<RouteEntry>,
    neighbours: BTreeMap<(u32, Ipv4Addr), MacAddr>,
    /// Routes of other tables: (table, destination) → link.
    table_routes: BTreeMap<(u32, Ipv4Net), u32>,
    /// The routing policy rules; `None`: the kernel's three.
    rules: Option<Vec<RuleEntry>>,
}

/// The rules a new network namespace has: local, main, default.
fn kernel_rules() -> Vec<RuleEntry> {
    let plain = |priority, table| RuleEntry {
        priority,
        table,
        dst: None,
        ip_protocol: None,
        dst_port: None,
        iif: None,
        protocol: 2,
        other: false,
    };
    vec![plain(0, TABLE_LOCAL), plain(32766, 254), plain(32767, 253)]
}

#[derive(Default)]
pub(crate) struct FakeKernel {
    state: Mutex<State>,
}

fn refused(what: &str) -> SysError {
    SysError::new(what, std::io::Error::from_raw_os_error(nix::errno::Errno::EPERM as i32))
}

fn no_device(name: &str) -> SysError {
    SysError::new(
        format!("looking up {name}"),
        std::io::Error::from_raw_os_error(nix::errno::Errno::ENODEV as i32),
    )
}

impl FakeKernel {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("a test thread panicked holding the fake kernel")
    }

    /// Fails the next call of `op` (once).
    pub(crate) fn fail(&self, op: Op) {
        self.state().failing.insert(op);
    }

    fn check(&self, op: Op, what: &str) -> Result<(), SysError> {
        let mut s = self.state();
        s.log.push(what.to_string());
        if s.failing.remove(&op) { Err(refused(what)) } else { Ok(()) }
    }

    pub(crate) fn add_netns(&self, path: &str) {
        self.state().pods.entry(PathBuf::from(path)).or_default();
    }

    pub(crate) fn remove_netns(&self, path: &str) {
        self.state().pods.remove(Path::new(path));
    }

    /// A link in a pod, as a test would find it with `ip link`.
    pub(crate) fn pod_dev(&self, netns: &str, name: &str) -> Option<FakeLink> {
        self.state().pods.get(Path::new(netns)).and_then(|links| links.get(name)).cloned()
    }

    pub(crate) fn host_dev(&self, name: &str) -> Option<FakeLink> {
        self.state().host.get(name).cloned()
    }

    /// Puts a link in a pod as some other party made it.
    pub(crate) fn put_pod_dev(&self, netns: &str, name: &str, link: FakeLink) {
        self.state().pods.entry(PathBuf::from(netns)).or_default().insert(name.to_string(), link);
    }

    pub(crate) fn put_host_dev(&self, name: &str, link: FakeLink) {
        self.state().host.insert(name.to_string(), link);
    }

    pub(crate) fn remove_host_dev(&self, name: &str) {
        self.state().host.remove(name);
    }

    /// A fresh link description (index taken from the fake's counter).
    pub(crate) fn link(&self, kind: LinkKind, mac: MacAddr, mtu: u16) -> FakeLink {
        let mut s = self.state();
        s.next_index += 1;
        FakeLink::new(s.next_index, kind, Some(mac), mtu)
    }

    /// The test's ends of the queues of a TAP (`netns` `None`: the daemon's) or an XSK.
    pub(crate) fn handles(&self, netns: Option<&str>, name: &str) -> Vec<MemoryPortHandle> {
        self.state().handles.get(&(netns.map(PathBuf::from), name.to_string())).cloned().unwrap_or_default()
    }

    pub(crate) fn log(&self) -> Vec<String> {
        self.state().log.clone()
    }

    pub(crate) fn set_next_hop(&self, node: Ipv4Addr, mac: MacAddr) {
        self.state().next_hops.insert(node, mac);
    }

    /// The main IPv4 table, as `ip route` would list it.
    pub(crate) fn routes(&self) -> Vec<RouteEntry> {
        self.state().routes.clone()
    }

    /// A route some other party made.
    pub(crate) fn put_route(&self, route: RouteEntry) {
        self.state().routes.push(route);
    }

    /// The routing policy rules, in the kernel's order.
    pub(crate) fn rules(&self) -> Vec<RuleEntry> {
        self.state().rules.clone().unwrap_or_else(kernel_rules)
    }

    /// A rule some other party made.
    pub(crate) fn put_rule(&self, rule: RuleEntry) {
        let mut s = self.state();
        let rules = s.rules.get_or_insert_with(kernel_rules);
        rules.push(rule);
        rules.sort_by_key(|r| r.priority);
    }

    /// Routes of tables other than the main one: (table, destination) → link.
    pub(crate) fn table_routes(&self) -> BTreeMap<(u32, Ipv4Net), u32> {
        self.state().table_routes.clone()
    }

    pub(crate) fn neighbour(&self, index: u32, ip: Ipv4Addr) -> Option<MacAddr> {
        self.state().neighbours.get(&(index, ip)).copied()
    }

    /// What the uplink's program was told to steer, each time.
    pub(crate) fn steered(&self) -> Vec<BTreeSet<(u8, u16)>> {
        self.state().steered.lock().expect("not poisoned").clone()
    }

    fn with_pod<R>(
        &self,
        netns: &Path,
        f: impl FnOnce(&mut BTreeMap<String, FakeLink>) -> R,
    ) -> Result<R, SysError> {
        let mut s = self.state();
        let links = s.pods.get_mut(netns).ok_or_else(|| {
            SysError::new(
                format!("entering {}", netns.display()),
                std::io::Error::from_raw_os_error(nix::errno::Errno::ENOENT as i32),
            )
        })?;
        Ok(f(links))
    }

    fn host_mut<R>(&self, index: u32, f: impl FnOnce(&mut FakeLink) -> R) -> Result<R, SysError> {
        let mut s = self.state();
        let link =
            s.host.values_mut().find(|l| l.index == index).ok_or_else(|| no_device(&index.to_string()))?;
        Ok(f(link))
    }

    fn queues(&self, netns: Option<&Path>, name: &str, count: usize, label: &str) -> Vec<Box<dyn PortQueue>> {
        let mut out: Vec<Box<dyn PortQueue>> = Vec::new();
        let mut handles = Vec::new();
        for q in 0..count {
            let (port, handle) = MemoryPort::pair(&format!("{label} q{q}"), 1024);
            out.push(Box::new(port));
            handles.push(handle);
        }
        self.state().handles.insert((netns.map(Path::to_path_buf), name.to_string()), handles);
        out
    }
}

/// The uplink's program: what it is told to steer is recorded in the fake.
struct RecordedSteering {
    record: SteeringRecord,
}

impl Steering for RecordedSteering {
    fn set_ports(&mut self, ports: &BTreeSet<(u8, u16)>) -> Result<(), SysError> {
        self.record.lock().expect("not poisoned").push(ports.clone());
        Ok(())
    }

    fn native(&self) -> bool {
        false
    }

    /// A fake program has no descriptors to hand over.
    fn handed(&self) -> Option<vswitch_dataplane::queue::SteeringHandover<'_>> {
        None
    }
}

impl Kernel for FakeKernel {
    fn link(&self, name: &str) -> Result<Option<LinkInfo>, SysError> {
        Ok(self.state().host.get(name).map(|l| l.info(name)))
    }

    fn links(&self) -> Result<Vec<LinkInfo>, SysError> {
        Ok(self.state().host.iter().map(|(name, l)| l.info(name)).collect())
    }

    fn index_of(&self, name: &str) -> Result<u32, SysError> {
        self.state().host.get(name).map(|l| l.index).ok_or_else(|| no_device(name))
    }

    fn set_mac(&self, index: u32, mac: MacAddr) -> Result<(), SysError> {
        self.host_mut(index, |l| l.mac = Some(mac))
    }

    fn set_mtu(&self, index: u32, mtu: u16) -> Result<(), SysError> {
        self.host_mut(index, |l| l.mtu = mtu)
    }

    fn add_address(&self, index: u32, addr: IpNet) -> Result<(), SysError> {
        self.host_mut(index, |l| {
            if !l.addresses.contains(&addr) {
                l.addresses.push(addr)
            }
        })
    }

    fn addresses(&self, index: u32) -> Result<Vec<IpNet>, SysError> {
        self.host_mut(index, |l| l.addresses.clone())
    }

    fn set_alias(&self, index: u32, alias: &str) -> Result<(), SysError> {
        self.check(Op::SetAlias, &format!("set alias of {index}"))?;
        self.host_mut(index, |l| l.alias = Some(alias.to_string()))
    }

    fn set_up(&self, index: u32) -> Result<(), SysError> {
        self.check(Op::SetUp, &format!("set {index} up"))?;
        self.host_mut(index, |l| l.up = true)
    }

    fn delete_link(&self, name: &str) -> Result<bool, SysError> {
        self.check(Op::DeleteLink, &format!("delete {name}"))?;
        let mut s = self.state();
        let gone = s.host.remove(name);
        if let Some((Some(ns), peer)) = gone.as_ref().and_then(|l| l.peer.clone())
            && let Some(links) = s.pods.get_mut(&ns)
        {
            links.remove(&peer);
        }
        Ok(gone.is_some())
    }

    fn add_veth(
        &self,
        name: &str,
        peer: &str,
        peer_netns: &Path,
        mac: MacAddr,
        mtu: u16,
    ) -> Result<(), SysError> {
        self.check(Op::AddVeth, &format!("add veth {name} <-> {peer} in {}", peer_netns.display()))?;
        let mut s = self.state();
        if s.host.contains_key(name) || s.pods.get(peer_netns).is_none_or(|l| l.contains_key(peer)) {
            return Err(SysError::new(
                format!("creating veth pair {name} <-> {peer}"),
                std::io::Error::from_raw_os_error(nix::errno::Errno::EEXIST as i32),
            ));
        }
        s.next_index += 2;
        let index = s.next_index;
        let host_mac = MacAddr([0x0e, 0, 0, 0, (index >> 8) as u8, index as u8]);
        let mut host_end = FakeLink::new(index - 1, LinkKind::Veth, Some(host_mac), mtu);
        host_end.peer = Some((Some(peer_netns.to_path_buf()), peer.to_string()));
        let mut pod_end = FakeLink::new(index, LinkKind::Veth, Some(mac), mtu);
        pod_end.peer = Some((None, name.to_string()));
        s.host.insert(name.to_string(), host_end);
        s.pods.get_mut(peer_netns).expect("checked").insert(peer.to_string(), pod_end);
        Ok(())
    }

    fn detach_xdp(&self, index: u32) -> Result<(), SysError> {
        self.check(Op::DetachXdp, &format!("detach xdp from {index}"))?;
        self.host_mut(index, |l| l.xdp = false)
    }

    fn next_hop_macs(
        &self,
        _uplink: &str,
        nodes: &[Ipv4Addr],
    ) -> Result<HashMap<Ipv4Addr, MacAddr>, SysError> {
        let s = self.state();
        Ok(nodes.iter().filter_map(|ip| s.next_hops.get(ip).map(|m| (*ip, *m))).collect())
    }

    fn routes_v4(&self) -> Result<Vec<RouteEntry>, SysError> {
        Ok(self.state().routes.clone())
    }

    fn replace_routes(
        &self,
        dsts: &[Ipv4Net],
        index: u32,
        gateway: Ipv4Addr,
        src: Ipv4Addr,
    ) -> Vec<Result<(), SysError>> {
        dsts.iter()
            .map(|dst| {
                self.check(Op::ReplaceRoute, &format!("route {dst} via {gateway} dev {index} src {src}"))?;
                let mut s = self.state();
                s.routes.retain(|r| r.dst != *dst);
                s.routes.push(RouteEntry { dst: *dst, oif: Some(index), protocol: ROUTE_PROTOCOL });
                Ok(())
            })
            .collect()
    }

    fn delete_routes(&self, routes: &[(Ipv4Net, u32)]) -> Vec<Result<bool, SysError>> {
        let mut s = self.state();
        routes
            .iter()
            .map(|(dst, index)| {
                s.log.push(format!("delete route {dst} dev {index}"));
                let before = s.routes.len();
                s.routes
                    .retain(|r| !(r.dst == *dst && r.oif == Some(*index) && r.protocol == ROUTE_PROTOCOL));
                Ok(s.routes.len() < before)
            })
            .collect()
    }

    fn set_neighbour(&self, index: u32, ip: Ipv4Addr, mac: MacAddr) -> Result<(), SysError> {
        self.state().neighbours.insert((index, ip), mac);
        Ok(())
    }

    fn delete_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<bool, SysError> {
        Ok(self.state().neighbours.remove(&(index, ip)).is_some())
    }

    fn replace_table_route(
        &self,
        table: u32,
        dst: Ipv4Net,
        index: u32,
        gateway: Ipv4Addr,
        src: Ipv4Addr,
    ) -> Result<(), SysError> {
        self.check(
            Op::ReplaceRoute,
            &format!("route {dst} via {gateway} dev {index} src {src} table {table}"),
        )?;
        self.state().table_routes.insert((table, dst), index);
        Ok(())
    }

    fn delete_table_route(&self, table: u32, dst: Ipv4Net) -> Result<bool, SysError> {
        Ok(self.state().table_routes.remove(&(table, dst)).is_some())
    }

    fn rules_v4(&self) -> Result<Vec<RuleEntry>, SysError> {
        Ok(self.rules())
    }

    fn add_rule(&self, rule: &RuleEntry) -> Result<(), SysError> {
        self.check(Op::AddRule, &format!("rule {rule:?}"))?;
        let mut s = self.state();
        let rules = s.rules.get_or_insert_with(kernel_rules);
        if !rules.contains(rule) {
            rules.push(rule.clone());
            rules.sort_by_key(|r| r.priority);
        }
        Ok(())
    }

    fn delete_rule(&self, rule: &RuleEntry) -> Result<bool, SysError> {
        let mut s = self.state();
        s.log.push(format!("delete rule {} table {}", rule.priority, rule.table));
        let rules = s.rules.get_or_insert_with(kernel_rules);
        let before = rules.len();
        if let Some(i) = rules.iter().position(|r| r == rule) {
            rules.remove(i);
        }
        Ok(rules.len() < before)
    }

    fn is_daemon_netns(&self, path: &Path) -> Result<bool, NetnsError> {
        self.open_netns(path)?;
        Ok(path == Path::new(DAEMON_NETNS))
    }

    fn open_netns(&self, path: &Path) -> Result<(), NetnsError> {
        if self.state().pods.contains_key(path) {
            Ok(())
        } else {
            Err(NetnsError::NotFound(path.to_path_buf()))
        }
    }

    fn pod_link(&self, netns: &Path, name: &str) -> Result<Option<LinkInfo>, SysError> {
        self.with_pod(netns, |links| links.get(name).map(|l| l.info(name)))
    }

    fn pod_links(&self, netns: &Path) -> Result<Vec<LinkInfo>, SysError> {
        self.check(Op::PodLinks, &format!("list links in {}", netns.display()))?;
        self.with_pod(netns, |links| links.iter().map(|(n, l)| l.info(n)).collect())
    }

    fn pod_configure(&self, netns: &Path, name: &str, alias: Option<&str>, up: bool) -> Result<(), SysError> {
        self.check(Op::PodConfigure, &format!("configure {name} in {}", netns.display()))?;
        self.with_pod(netns, |links| {
            let link = links.get_mut(name).ok_or_else(|| no_device(name))?;
            if let Some(a) = alias {
                link.alias = Some(a.to_string());
            }
            link.up |= up;
            Ok(())
        })?
    }

    fn pod_delete_link(&self, netns: &Path, name: &str) -> Result<bool, SysError> {
        self.check(Op::PodDeleteLink, &format!("delete {name} in {}", netns.display()))?;
        let gone = self.with_pod(netns, |links| links.remove(name))?;
        if let Some((None, peer)) = gone.as_ref().and_then(|l| l.peer.clone()) {
            self.state().host.remove(&peer);
        }
        Ok(gone.is_some())
    }

    fn pod_disable_offloads(&self, netns: &Path, name: &str) -> Result<(), SysError> {
        self.check(Op::PodDisableOffloads, &format!("offloads off on {name} in {}", netns.display()))?;
        self.with_pod(netns, |links| {
            links.get_mut(name).ok_or_else(|| no_device(name))?.offloads = false;
            Ok(())
        })?
    }

    fn namespaces(&self, dirs: &[&str]) -> Vec<PathBuf> {
        let s = self.state();
        dirs.iter().flat_map(|d| s.pods.keys().filter(move |p| p.starts_with(d)).cloned()).collect()
    }

    fn create_tap(
        &self,
        netns: Option<&Path>,
        name: &str,
        opts: &TapOptions,
        label: &str,
    ) -> Result<Vec<Box<dyn PortQueue>>, SysError> {
        self.check(Op::CreateTap, &format!("create tap {name}"))?;
        let mac = opts.mac.map(MacAddr).unwrap_or(MacAddr([0x0e, 0, 0, 0, 0, 1]));
        let mut link = self.link(LinkKind::Tun, mac, opts.mtu.unwrap_or(1500));
        link.offloads = opts.offloads;
        link.queues = opts.queues;
        let exists = match netns {
            Some(ns) => self.with_pod(ns, |links| links.insert(name.to_string(), link).is_some())?,
            None => self.state().host.insert(name.to_string(), link).is_some(),
        };
        if exists {
            return Err(SysError::new(
                format!("creating TAP {name}"),
                std::io::Error::from_raw_os_error(nix::errno::Errno::EEXIST as i32),
            ));
        }
        Ok(self.queues(netns, name, opts.queues, label))
    }

    fn reopen_tap(
        &self,
        netns: Option<&Path>,
        name: &str,
        opts: &TapOptions,
        label: &str,
    ) -> Result<Vec<Box<dyn PortQueue>>, SysError> {
        self.check(Op::ReopenTap, &format!("reopen tap {name}"))?;
        let is_tap = |l: Option<&FakeLink>| l.is_some_and(|l| l.kind == LinkKind::Tun);
        let found = match netns {
            Some(ns) => self.with_pod(ns, |links| is_tap(links.get(name)))?,
            None => is_tap(self.state().host.get(name)),
        };
        if !found {
            return Err(no_device(name));
        }
        Ok(self.queues(netns, name, opts.queues, label))
    }

    fn open_xsk(&self, ifname: &str, _mode: XdpMode, label: &str) -> Result<Box<dyn PortQueue>, SysError> {
        self.check(Op::OpenXsk, &format!("open xsk on {ifname}"))?;
        if !self.state().host.contains_key(ifname) {
            return Err(no_device(ifname));
        }
        Ok(self.queues(None, ifname, 1, label).pop().expect("one queue"))
    }

    fn open_uplink(
        &self,
        name: &str,
        _mode: XdpMode,
        _node_ip: Ipv4Addr,
        workers: usize,
    ) -> Result<UplinkDevice, SysError> {
        self.check(Op::OpenUplink, &format!("open uplink {name}"))?;
        let queues = self.queues(None, name, workers, &format!("uplink {name}"));
        let steering = RecordedSteering { record: self.state().steered.clone() };
        Ok(UplinkDevice {
            steering: Box::new(steering),
            queues: queues.into_iter().enumerate().collect(),
            rx_queues: workers as u32,
            handed_over: false,
        })
    }

    fn open_tunnel(&self, spec: &TunnelSpec, workers: usize) -> Result<TunnelDevice, SysError> {
        self.check(Op::OpenTunnel, &format!("open tunnel {} on {}", spec.tap, spec.underlay))?;
        let label = format!("tunnel {} on {}", spec.tap, spec.underlay);
        Ok(TunnelDevice { queues: self.queues(None, &spec.tap, workers, &label), link: Box::new(NoTraffic) })
    }

    fn open_underlay(
        &self,
        bind: SocketAddrV4,
        _mtu: u16,
        label: &str,
    ) -> Result<Box<dyn PortQueue>, PortError> {
        self.check(Op::OpenUnderlay, &format!("open underlay {bind}")).map_err(|e| PortError {
            port: label.to_string(),
            op: "bind",
            source: e.source,
        })?;
        Ok(self.queues(None, label, 1, label).pop().expect("one queue"))
    }

    fn adopt_queue(&self, handed: HandedQueue, label: &str) -> Result<Box<dyn PortQueue>, SysError> {
        let name = match &handed {
            HandedQueue::Tap { name, .. } => name.clone(),
            HandedQueue::Sockets { local, .. } => local.to_string(),
            HandedQueue::Xsk { program, .. } => {
                program.as_ref().map_or("an xsk".into(), |p| p.ifname.clone())
            }
        };
        self.check(Op::AdoptQueue, &format!("adopt a queue of {name}"))?;
        Ok(self.queues(None, label, 1, label).pop().expect("one queue"))
    }

    fn adopt_uplink(
        &self,
        program: HandedProgram,
        sockets: Vec<(WorkerId, Vec<HandedXsk>)>,
        name: &str,
    ) -> Result<UplinkDevice, SysError> {
        self.check(Op::AdoptQueue, &format!("adopt uplink {}", program.ifname))?;
        let workers: Vec<WorkerId> = sockets.iter().map(|(w, _)| *w).collect();
        let queues = self.queues(None, name, workers.len(), &format!("uplink {name}"));
        let steering = RecordedSteering { record: self.state().steered.clone() };
        Ok(UplinkDevice {
            steering: Box::new(steering),
            rx_queues: sockets.iter().map(|(_, s)| s.len() as u32).sum(),
            queues: workers.into_iter().zip(queues).collect(),
            handed_over: true,
        })
    }

    fn relink_tunnel(&self, spec: &TunnelSpec) -> Result<Box<dyn TunnelLink>, SysError> {
        self.check(Op::OpenTunnel, &format!("relink tunnel {} on {}", spec.tap, spec.underlay))?;
        Ok(Box::new(NoTraffic))
    }
}

/// The fake tunnel's programs: nothing passes them.
struct NoTraffic;

impl TunnelLink for NoTraffic {
    fn counters(&self) -> TunnelCounters {
        TunnelCounters::default()
    }

    fn relink(&self) -> Result<(), SysError> {
        Ok(())
    }
}
