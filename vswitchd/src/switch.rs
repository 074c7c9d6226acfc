//! The switch as the control plane holds it: the data plane and its tables
//! ([`Plane`]), the ports ([`PortManager`]), the Services ([`ServiceController`]) and
//! the other nodes ([`NodeController`]). What the API, the watchers and housekeeping
//! ask for goes through here, which keeps the three in step: new Services change what
//! the uplink steers, the node's address changes the Services and the overlay, a new
//! underlay port changes where VXLAN leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use vswitch_api::{AttachRequest, ConntrackView, NodesView, PortInfo, Service, ServicesView};
use vswitch_dataplane::datapath::Datapath;
use vswitch_dataplane::ids::PortId;
use vswitch_dataplane::tables::conntrack::Tuple;
use vswitch_dataplane::tables::overlay::{FastPath, NodeSpec};
use vswitch_dataplane::wire::parse::IPPROTO_UDP;

use crate::cluster::translate::ServiceKey;
use crate::config::{Config, ConfigError, UnderlayIo};
use crate::nodes::{NodeController, Underlays};
use crate::plane::Plane;
use crate::ports::handover::{HandedFds, HandedUnderlay, HandedXdp, Paused, QueueFd};
use crate::ports::kernel::{Kernel, TunnelSpec, first_ipv4};
use crate::ports::{AttachError, PortManager, RestoreReport, RouteSync, TUNNEL_TAP, UplinkError};
use crate::services::ServiceController;
use crate::snapshot::{self, Restored, TablesSnapshot};
use crate::state::StateFile;
use crate::takeover::{ClusterServed, HandedNode, Preface};

pub(crate) struct Switch {
    config: Config,
    plane: Plane,
    ports: PortManager,
    services: ServiceController,
    nodes: NodeController,
    /// A takeover's new daemon, before it has the host port: the node's routes and
    /// rules are the running daemon's, and syncing them now would remove them.
    routes_held: bool,
    /// What the daemons before a takeover counted, added to this one's counts.
    counted_before: Option<vswitch_api::Stats>,
    /// How this daemon came to run, for the status.
    started: String,
}

/// What a paused daemon hands over besides the queues' descriptors.
pub(crate) struct Handing {
    pub paused: Paused,
    /// The tables snapshot: with [`EarlyFlows`] sent before, only the flows seen since.
    pub tables: Vec<u8>,
    /// The flows of the early copy that are gone since.
    pub gone: Vec<Tuple>,
    pub state: String,
    pub underlay: Option<HandedUnderlay>,
}

/// A copy of the flows a takeover sends before its pause (the daemon forwarding on),
/// so that the pause carries only what changed since.
pub(crate) struct EarlyFlows {
    /// A tables snapshot with the flows only.
    pub tables: Vec<u8>,
    /// When it was taken (datapath seconds).
    pub since: u32,
    /// Its flows' original tuples, to tell which went.
    pub origs: Vec<Tuple>,
}

impl Switch {
    /// Takes over `datapath`: the pods' segment, no Services, the config's nodes.
    pub(crate) fn new(
        config: Config,
        datapath: Datapath,
        kernel: Arc<dyn Kernel>,
    ) -> Result<Switch, AttachError> {
        let mut plane = Plane::new(&config, datapath)?;
        let services = ServiceController::new(&config, &mut plane);
        plane.tables.set_overlay(Arc::new(NodeController::initial(&config)?));
        plane.publish()?;
        let ports = PortManager::new(config.clone(), kernel, plane.datapath.workers());
        Ok(Switch {
            config,
            plane,
            ports,
            services,
            nodes: NodeController::default(),
            routes_held: false,
            counted_before: None,
            started: "first start".into(),
        })
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn datapath(&self) -> &Datapath {
        &self.plane.datapath
    }

    // ---- ports

    pub(crate) fn start_host_port(&mut self) -> Result<(), AttachError> {
        self.ports.start_host_port(&mut self.plane, None)?;
        self.sync_node_routes(RouteSync::Start);
        Ok(())
    }

    /// Routes from the node through the host port to every remote node's pods and to
    /// every Service's ClusterIP, and rules for its NodePorts at its own address.
    pub(crate) fn sync_node_routes(&mut self, why: RouteSync) {
        if self.routes_held {
            return;
        }
        let mut wanted = self.nodes.remote_pod_cidrs(&self.config);
        wanted.extend(self.services.cluster_ips().into_iter().map(ipnet::Ipv4Net::from));
        self.ports.sync_node_routes(&wanted, why);
        self.ports.sync_node_port_rules(self.config.node_ip, &self.services.node_ports(), why);
    }

    /// The node's address for NodePorts: configured, else the uplink's first IPv4
    /// address (then the Services and the overlay's outer source address take it).
    fn resolve_node_ip(&mut self) -> Result<Option<Ipv4Addr>, AttachError> {
        if self.config.node_ip.is_some() {
            return Ok(self.config.node_ip);
        }
        let Some(name) = self.config.uplink.clone() else { return Ok(None) };
        let kernel = self.ports.kernel();
        let ip =
            first_ipv4(&kernel.addresses(kernel.index_of(&name)?)?).ok_or(UplinkError::NoAddress(name))?;
        self.use_node_ip(ip)?;
        Ok(Some(ip))
    }

    /// Serves NodePorts (and sends VXLAN) on `ip`, the node's address.
    fn use_node_ip(&mut self, ip: Ipv4Addr) -> Result<(), AttachError> {
        self.config.node_ip = Some(ip);
        self.services.set_node_ip(&mut self.plane, ip);
        self.plane.publish()?;
        self.publish_overlay();
        Ok(())
    }

    /// Takes NodePort traffic (and VXLAN) from the configured uplink interface, if any
    /// (and if a takeover did not bring it).
    pub(crate) fn start_uplink(&mut self) -> Result<(), AttachError> {
        if self.config.uplink.is_none() || self.ports.uplink_name().is_some() {
            return Ok(());
        }
        let Some(node_ip) = self.resolve_node_ip()? else { return Ok(()) };
        self.ports.start_uplink(&mut self.plane, node_ip)?;
        self.steer();
        self.sync_node_routes(RouteSync::Changed);
        Ok(())
    }

    /// The underlay interface when none is named: the one holding `services.node_ip`,
    /// else the node's only interface with an IPv4 address (the loopback and the host
    /// port aside). A guess among several could send VXLAN out of the wrong one: then
    /// none, and the reason.
    fn underlay_interface(&self) -> Result<String, String> {
        let kernel = self.ports.kernel();
        let links = kernel.links().map_err(|e| format!("listing interfaces: {e}"))?;
        let mut candidates = Vec::new();
        for link in links {
            if link.name == "lo" || Some(&link.name) == self.config.host_port.as_ref() {
                continue;
            }
            let addresses = kernel.addresses(link.index).map_err(|e| format!("{}: {e}", link.name))?;
            let v4: Vec<Ipv4Addr> = addresses
                .iter()
                .filter_map(|a| match a.addr() {
                    std::net::IpAddr::V4(v4) => Some(v4),
                    std::net::IpAddr::V6(_) => None,
                })
                .collect();
            if let Some(ip) = self.config.node_ip
                && v4.contains(&ip)
            {
                return Ok(link.name);
            }
            if !v4.is_empty() {
                candidates.push(link.name);
            }
        }
        match (self.config.node_ip, candidates.as_slice()) {
            (None, [only]) => Ok(only.clone()),
            (Some(ip), _) => {
                Err(format!("no interface holds services.node_ip {ip}; name one in overlay.interface"))
            }
            (None, []) => {
                Err("no interface with an IPv4 address toward other nodes; name one in overlay.interface"
                    .into())
            }
            (None, several) => Err(format!(
                "several interfaces could lead to other nodes ({}); name one in overlay.interface",
                several.join(", ")
            )),
        }
    }

    /// Opens the underlay port: VXLAN to and from other nodes through the tunnel TAP
    /// or kernel sockets (`overlay.underlay_io`).
    pub(crate) fn start_underlay(&mut self) -> Result<(), AttachError> {
        let io = self.config.overlay.underlay_io;
        let tunnel = match io {
            UnderlayIo::Sockets => Err("overlay.underlay_io = \"sockets\"".to_string()),
            UnderlayIo::Auto | UnderlayIo::Tunnel => self.tunnel_spec(),
        };
        self.ports.start_underlay(&mut self.plane, tunnel, io == UnderlayIo::Tunnel)?;
        self.publish_overlay();
        self.steer();
        Ok(())
    }

    /// Where the tunnel TAP would link to: the underlay interface and the node's address
    /// there (the outer source of our VXLAN, and what the tc program takes VXLAN to).
    fn tunnel_spec(&self) -> Result<TunnelSpec, String> {
        let interface = match self.config.overlay.interface.clone().or_else(|| self.config.uplink.clone()) {
            Some(named) => named,
            None => self.underlay_interface()?,
        };
        let node_ip = match self.config.node_ip {
            Some(ip) => ip,
            None => {
                let kernel = self.ports.kernel();
                let addresses = kernel.index_of(&interface).and_then(|i| kernel.addresses(i));
                let addresses = addresses.map_err(|e| format!("underlay interface {interface}: {e}"))?;
                first_ipv4(&addresses)
                    .ok_or_else(|| format!("underlay interface {interface} has no IPv4 address"))?
            }
        };
        Ok(TunnelSpec {
            tap: TUNNEL_TAP.into(),
            underlay: interface,
            node_ip,
            port: self.config.overlay.port,
            mtu: self.config.overlay.underlay_mtu,
        })
    }

    pub(crate) fn attach(&mut self, req: &AttachRequest) -> Result<(PortInfo, bool), AttachError> {
        self.ports.attach(&mut self.plane, req)
    }

    pub(crate) fn detach(&mut self, container_id: &str, ifname: &str) -> Result<bool, AttachError> {
        self.ports.detach(&mut self.plane, container_id, ifname)
    }

    pub(crate) fn reap_vanished(&mut self) -> usize {
        self.ports.reap_vanished(&mut self.plane)
    }

    pub(crate) fn restore(&mut self, state: StateFile) -> RestoreReport {
        self.ports.restore(&mut self.plane, state)
    }

    pub(crate) fn recover_from_devices(&self, dirs: &[&str]) -> StateFile {
        self.ports.recover_from_devices(dirs)
    }

    pub(crate) fn ports(&self) -> Vec<PortInfo> {
        self.ports.ports()
    }

    pub(crate) fn port(&self, container_id: &str, ifname: &str) -> Option<PortInfo> {
        self.ports.port(container_id, ifname)
    }

    /// How VXLAN meets the kernel, for the status.
    pub(crate) fn underlay_summary(&self) -> Option<String> {
        self.ports.underlay_summary()
    }

    pub(crate) fn port_names(&self) -> BTreeMap<PortId, String> {
        self.ports.port_names()
    }

    pub(crate) fn pod_count(&self) -> usize {
        self.ports.pod_count()
    }

    pub(crate) fn uplink_name(&self) -> Option<&str> {
        self.ports.uplink_name()
    }

    /// Makes the uplink steer exactly what the switch serves on the node's address: the
    /// NodePorts, and VXLAN once there are other nodes (the fast path in).
    fn steer(&mut self) {
        let mut ports: BTreeSet<(u8, u16)> = self.services.node_ports();
        if self.nodes.any(&self.config) && self.ports.underlay_tunnel().is_none() {
            ports.insert((IPPROTO_UDP, self.config.overlay.port));
        }
        self.ports.steer(&ports);
    }

    // ---- Services

    pub(crate) fn services_file(&self) -> Option<&Path> {
        self.services.file()
    }

    /// Takes the services file's content (`None`: absent) and serves what it holds if
    /// it changed. On an error, the Services served before stay.
    pub(crate) fn services_file_read(
        &mut self,
        text: Option<String>,
        force: bool,
    ) -> Result<bool, ConfigError> {
        let changed = self.services.file_read(&self.plane, text, force)?;
        if changed {
            self.services_changed();
        }
        Ok(changed)
    }

    /// Serves `services` (from the cluster), replacing what was served.
    pub(crate) fn cluster_services(&mut self, services: Vec<Service>) {
        if self.services.set(&self.plane, services) {
            self.services_changed();
        }
    }

    /// Changes the Services named (from the cluster), the others staying.
    pub(crate) fn cluster_services_changed(&mut self, upsert: Vec<Service>, removed: &[ServiceKey]) {
        if self.services.update(&self.plane, upsert, removed) {
            self.services_changed();
        }
    }

    /// After new Services: publish them, steer their NodePorts, cut UDP flows to
    /// endpoints that stopped serving.
    fn services_changed(&mut self) {
        self.services.publish(&mut self.plane);
        self.steer();
        self.services.applied(&mut self.plane);
        self.sync_node_routes(RouteSync::Changed);
    }

    /// After conntrack housekeeping: stops recognising VIPs and endpoints kept only for
    /// flows that have ended.
    pub(crate) fn services_housekeeping(&mut self) {
        self.services.housekeeping(&mut self.plane);
    }

    pub(crate) fn services_view(&self) -> ServicesView {
        self.services.view()
    }

    pub(crate) fn conntrack_view(&self, limit: usize) -> ConntrackView {
        self.services.conntrack_view(&self.plane.datapath, limit)
    }

    // ---- the tables carried over a restart

    /// Puts back what `snapshot` carries for the ports existing now (`ports`: the host
    /// port and the pods about to be restored, then every port once the uplink and the
    /// underlay are up); the rest waits for the next call. The first call also gives the
    /// Service ports their previous ids, before any Services come.
    pub(crate) fn carry_over(
        &mut self,
        snapshot: &mut TablesSnapshot,
        ports: &BTreeMap<PortId, String>,
        away_secs: u32,
        restored: &mut Restored,
    ) {
        let service_ports = std::mem::take(&mut snapshot.service_ports);
        if !service_ports.is_empty() {
            self.services.carry_over(&service_ports, snapshot.last_service_id);
        }
        let put_back = snapshot.restore_into(&self.plane.datapath, ports, away_secs, restored);
        if !put_back.is_empty() {
            self.services.flows_restored(&mut self.plane, &put_back);
        }
    }

    /// The names the host port and the pods of `state` will have once restored.
    pub(crate) fn port_names_of(&self, state: &StateFile) -> BTreeMap<PortId, String> {
        self.ports.port_names_of(&state.ports)
    }

    // ---- other nodes

    pub(crate) fn nodes_file(&self) -> Option<&Path> {
        self.config.overlay.nodes_file.as_deref()
    }

    fn publish_overlay(&mut self) {
        // VXLAN through the tunnel TAP keeps super-frames whole: the uplink's AF_XDP,
        // which carries segments, does not take it then.
        let tunnel = self.ports.underlay_tunnel().map(|t| t.node_ip);
        let underlays = Underlays {
            socket: self.ports.underlay_port(),
            fast: self
                .ports
                .uplink_port()
                .filter(|_| tunnel.is_none())
                .map(|u| FastPath { port: u.id, mac: u.mac }),
            local_ip: tunnel,
        };
        self.nodes.publish(&self.config, &mut self.plane, underlays);
    }

    fn nodes_changed(&mut self) {
        self.publish_overlay();
        self.sync_node_routes(RouteSync::Changed);
        self.steer();
        tracing::info!(
            nodes = self.nodes.count(&self.config),
            generation = self.nodes.generation(),
            "nodes applied"
        );
    }

    /// Takes the nodes file's content (`None`: absent, no nodes from it) and routes to
    /// the nodes if they changed. On an error, the nodes routed before stay.
    pub(crate) fn nodes_file_read(&mut self, text: Option<String>, force: bool) -> Result<bool, ConfigError> {
        let changed = self.nodes.file_read(&self.config, text, force)?;
        if changed {
            self.nodes_changed();
        }
        Ok(changed)
    }

    /// Routes to `nodes` (from the cluster), replacing those of an earlier snapshot.
    pub(crate) fn cluster_nodes(&mut self, nodes: Vec<NodeSpec>) {
        if self.nodes.set(&self.config, nodes) {
            self.nodes_changed();
        }
    }

    /// Looks up the nodes' next hops on the uplink; publishes the overlay again when any
    /// changed.
    pub(crate) fn refresh_next_hops(&mut self) {
        let Some(uplink) = self.ports.uplink_name() else { return };
        if self.nodes.refresh_next_hops(&self.config, self.ports.kernel(), uplink) {
            self.publish_overlay();
        }
    }

    pub(crate) fn nodes_view(&self) -> NodesView {
        let tunnel = self.ports.underlay_tunnel().is_some();
        let fast = !tunnel && self.ports.uplink_name().is_some() && self.config.node_ip.is_some();
        self.nodes.view(&self.config, self.ports.underlay_name().map(str::to_string), tunnel, fast, &|c| {
            self.ports.node_route(c)
        })
    }

    // ---- a takeover: the running daemon's side

    /// What a new daemon builds its Services from before the pause: the Service
    /// ports' ids and, with `cluster`, the Services and nodes the cluster gave.
    pub(crate) fn takeover_preface(&self, cluster: bool) -> Preface {
        let ids = TablesSnapshot::service_ids(self.services.remembered());
        let cluster = cluster.then(|| ClusterServed {
            services: serde_json::to_string(self.services.all()).expect("Services serialize"),
            nodes: self
                .nodes
                .learned()
                .iter()
                .map(|n| HandedNode {
                    name: n.name.clone(),
                    ip: n.ip,
                    pod_cidrs: n.pod_cidrs.clone(),
                    vtep_mac: n.vtep_mac.map(|m| m.0),
                })
                .collect(),
        });
        Preface { service_ids: ids.encode(), cluster }
    }

    /// The pause: every queue taken from the workers, the tables taken (as a clean stop
    /// takes them). Until [`Switch::resume_after_takeover`] or the exit, nothing moves.
    pub(crate) fn pause_for_takeover(&mut self, early: Option<&EarlyFlows>) -> Result<Handing, AttachError> {
        let paused = self.ports.pause(&self.plane)?;
        let now = self.plane.datapath.now();
        let tables = TablesSnapshot::take_since(
            &self.plane.datapath,
            now,
            self.ports.port_names(),
            self.services.remembered(),
            early.map_or(0, |e| e.since),
        );
        let gone = early.map_or_else(Vec::new, |e| {
            let flows = self.plane.datapath.conntrack().batch();
            e.origs.iter().filter(|t| !flows.contains(t)).copied().collect()
        });
        let state = serde_json::to_string(&self.ports.state()).expect("the state file serializes");
        Ok(Handing { paused, tables: tables.encode(), gone, state, underlay: self.ports.handed_underlay() })
    }

    /// The flows as they are now, for a takeover to send before its pause.
    pub(crate) fn takeover_early_flows(&self) -> EarlyFlows {
        let datapath = &self.plane.datapath;
        let now = datapath.now();
        let copy = TablesSnapshot::flows_only(datapath, now, self.ports.port_names());
        let origs = copy.flows.iter().map(|f| f.orig).collect();
        EarlyFlows { tables: copy.encode(), since: now, origs }
    }

    /// Forgets the flows whose original tuples are `origs` (gone in the previous
    /// daemon after it sent them early); returns how many were here.
    pub(crate) fn forget_flows(&self, origs: &[Tuple]) -> usize {
        let flows = self.plane.datapath.conntrack().batch();
        origs.iter().filter(|t| flows.forget(t)).count()
    }

    /// Whether a takeover would hand over AF_XDP sockets (pods' or the uplink's).
    pub(crate) fn has_xdp_ports(&self) -> bool {
        self.ports.has_xdp_ports()
    }

    /// Every descriptor of the paused ports, each with what it is, and what goes with
    /// the AF_XDP ones.
    pub(crate) fn handed<'a>(&'a self, paused: &'a Paused) -> Result<(HandedFds<'a>, HandedXdp), String> {
        self.ports.handed(paused)
    }

    /// After a takeover that did not happen: forwarding again.
    pub(crate) fn resume_after_takeover(&mut self, paused: Paused) {
        self.ports.resume(&mut self.plane, paused);
        self.publish_overlay();
        self.steer();
    }

    // ---- a takeover: the new daemon's side

    /// How this daemon came to run.
    pub(crate) fn started(&self) -> &str {
        &self.started
    }

    pub(crate) fn set_started(&mut self, how: String) {
        self.started = how;
    }

    /// What the daemons before a takeover counted.
    pub(crate) fn counted_before(&self) -> Option<&vswitch_api::Stats> {
        self.counted_before.as_ref()
    }

    /// Counts on from where the previous daemon's counts stood.
    pub(crate) fn count_on_from(&mut self, before: vswitch_api::Stats) {
        self.counted_before = Some(before);
    }

    /// Holds the node's routes and rules as they are until [`Switch::release_routes`].
    pub(crate) fn hold_routes(&mut self) {
        self.routes_held = true;
    }

    /// Makes the node's routes and rules this daemon's again, and syncs them whole.
    pub(crate) fn release_routes(&mut self) {
        self.routes_held = false;
        self.sync_node_routes(RouteSync::Check);
    }

    /// Serves what the previous daemon had from the cluster, until the watchers speak.
    pub(crate) fn serve_handed(&mut self, served: ClusterServed) -> Result<(), String> {
        let services: Vec<Service> = serde_json::from_str(&served.services).map_err(|e| e.to_string())?;
        self.cluster_services(services);
        let nodes = served
            .nodes
            .into_iter()
            .map(|n| NodeSpec {
                name: n.name,
                ip: n.ip,
                pod_cidrs: n.pod_cidrs,
                vtep_mac: n.vtep_mac.map(vswitch_dataplane::wire::MacAddr),
            })
            .collect();
        self.cluster_nodes(nodes);
        Ok(())
    }

    /// Takes the previous daemon's ports: the host port, the pods of `state` and the
    /// underlay, from the queues in `fds`.
    pub(crate) fn adopt(
        &mut self,
        state: StateFile,
        underlay: Option<HandedUnderlay>,
        xdp: HandedXdp,
        fds: Vec<(QueueFd, std::os::fd::OwnedFd)>,
    ) -> Result<RestoreReport, AttachError> {
        let report = self.ports.adopt(&mut self.plane, state, underlay, xdp, fds)?;
        // The uplink came with the address it serves, which the config may not name.
        if self.config.node_ip.is_none()
            && let Some(ip) = self.ports.uplink_node_ip()
        {
            self.use_node_ip(ip)?;
        }
        self.publish_overlay();
        self.steer();
        Ok(report)
    }

    /// Stops the data plane, leaving every device in place for the next start: TAPs are
    /// persistent, veth pairs stay, and the state file lists them all. The node's routes
    /// to other nodes' pods go: nothing would carry them.
    pub(crate) fn shutdown(mut self) {
        self.ports.remove_node_port_rules();
        self.ports.remove_node_routes();
        if let Err(e) = self.ports.save_state() {
            tracing::error!(error = %e, "saving state at shutdown");
        }
        let now = self.plane.datapath.now();
        self.plane.datapath.stop_workers();
        if self.config.snapshot_max_age_secs > 0 {
            let path = snapshot::path_for(&self.config.state_file);
            let taken = TablesSnapshot::take(
                &self.plane.datapath,
                now,
                self.ports.port_names(),
                self.services.remembered(),
            );
            match snapshot::save(&path, &taken) {
                Ok(()) => tracing::info!(
                    file = %path.display(),
                    flows = taken.flows.len(),
                    affinities = taken.affinity.len(),
                    learned_macs = taken.fdb.len(),
                    "tables snapshot written"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "tables snapshot not written: the next start begins with empty tables")
                }
            }
        }
        self.plane.datapath.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;

    use vswitch_dataplane::tables::Tables;
    use vswitch_dataplane::wire::MacAddr;
    use vswitch_testbed::Scratch;

    use super::*;
    use crate::config::UnderlayIo;
    use crate::ports::fake::FakeKernel;
    use crate::ports::kernel::LinkKind;

    const SERVICES: &str = r#"
[[service]]
name = "web"
cluster_ip = "10.96.0.10"
type = "NodePort"
ports = [{ name = "http", port = 80, target_port = 8080, node_port = 30080 }]
endpoints = [{ ip = "10.244.1.5" }]
"#;

    const NODES: &str = r#"
[[node]]
name = "node-b"
ip = "192.168.50.2"
pod_cidr = "10.244.2.0/24"
"#;

    /// A switch on the fake kernel with an uplink `eth9` at 192.168.50.1 (no node_ip
    /// configured: it is taken from the interface).
    fn switch(dir: &Scratch) -> (Switch, Arc<FakeKernel>) {
        switch_with(dir, UnderlayIo::Sockets)
    }

    fn switch_with(dir: &Scratch, io: UnderlayIo) -> (Switch, Arc<FakeKernel>) {
        let mut config = crate::config::default_config();
        config.overlay.underlay_io = io;
        config.workers = 2;
        config.host_port = None;
        config.state_file = dir.0.join("state.json");
        config.uplink = Some("eth9".into());
        config.node_ip = None;
        let kernel = Arc::new(FakeKernel::default());
        let mut uplink = kernel.link(LinkKind::Other, MacAddr([2, 0xee, 0, 0, 0, 1]), 1500);
        uplink.addresses = vec!["192.168.50.1/24".parse().unwrap()];
        kernel.put_host_dev("eth9", uplink);
        let datapath = Datapath::start(crate::daemon::datapath_config(&config), Tables::empty()).unwrap();
        (Switch::new(config, datapath, kernel.clone()).unwrap(), kernel)
    }

    #[test]
    fn the_node_address_comes_from_the_uplink_and_reaches_services_and_overlay() {
        let dir = Scratch::new(&format!("switch-ip-{}", std::process::id()));
        let (mut s, _) = switch(&dir);
        s.start_uplink().unwrap();
        let ip = Ipv4Addr::new(192, 168, 50, 1);
        assert_eq!(s.config().node_ip, Some(ip));
        let tables = s.datapath().tables();
        assert_eq!(tables.services().node_ip, Some(ip), "NodePorts served there");
        assert_eq!(tables.overlay().settings.local_ip, ip, "VXLAN's outer source");
        assert_eq!(s.ports()[0].ips, vec!["192.168.50.1/32".parse::<ipnet::IpNet>().unwrap()]);
    }

    #[test]
    fn the_uplink_steers_the_node_ports_and_vxlan_once_there_are_nodes() {
        let dir = Scratch::new(&format!("switch-steer-{}", std::process::id()));
        let (mut s, kernel) = switch(&dir);
        s.start_uplink().unwrap();
        s.start_underlay().unwrap();
        assert!(s.services_file_read(Some(SERVICES.into()), false).unwrap());
        assert!(!s.services_file_read(Some(SERVICES.into()), false).unwrap(), "same content: nothing to do");
        assert_eq!(kernel.steered().last(), Some(&BTreeSet::from([(6u8, 30080u16)])));
        assert!(s.nodes_file_read(Some(NODES.into()), false).unwrap());
        assert_eq!(kernel.steered().last(), Some(&BTreeSet::from([(6u8, 30080u16), (17, 4789)])));
        // A broken file changes nothing and says why.
        assert!(s.nodes_file_read(Some("[[node]]\nname = 3\n".into()), false).is_err());
        let view = s.nodes_view();
        assert_eq!(view.nodes.len(), 1);
        assert!(view.file_error.is_some());
        assert_eq!(view.underlay.as_deref(), Some("vxlan/4789"));
    }

    /// With the tunnel TAP (the uplink's interface, its address), VXLAN is the TAP's:
    /// not steered to AF_XDP, no node on the AF_XDP fast path.
    #[test]
    fn the_tunnel_tap_takes_vxlan_from_the_uplink() {
        let dir = Scratch::new(&format!("switch-tunnel-{}", std::process::id()));
        let (mut s, kernel) = switch_with(&dir, UnderlayIo::Auto);
        s.start_uplink().unwrap();
        s.start_underlay().unwrap();
        assert!(s.underlay_summary().unwrap().starts_with("tunnel TAP vswitch-vx on eth9"));
        s.nodes_file_read(Some(NODES.into()), false).unwrap();
        assert_eq!(kernel.steered().last(), Some(&BTreeSet::new()), "VXLAN not steered");
        let node = Ipv4Addr::new(192, 168, 50, 2);
        kernel.set_next_hop(node, MacAddr([2, 0xbb, 0, 0, 0, 2]));
        s.refresh_next_hops();
        let tables = s.datapath().tables();
        assert!(tables.overlay().fast.is_none(), "no AF_XDP path for VXLAN");
        assert_eq!(tables.overlay().settings.local_ip, Ipv4Addr::new(192, 168, 50, 1));
    }

    #[test]
    fn an_unnamed_underlay_interface_is_the_only_candidate_or_none() {
        let dir = Scratch::new(&format!("switch-guess-{}", std::process::id()));
        let (mut s, _) = switch_with(&dir, UnderlayIo::Auto);
        s.config.uplink = None;
        s.start_underlay().unwrap();
        let summary = s.underlay_summary().unwrap();
        assert!(summary.starts_with("tunnel TAP vswitch-vx on eth9"), "{summary}");

        let dir = Scratch::new(&format!("switch-guess2-{}", std::process::id()));
        let (mut s, kernel) = switch_with(&dir, UnderlayIo::Auto);
        s.config.uplink = None;
        let mut other = kernel.link(LinkKind::Other, MacAddr([2, 0xee, 0, 0, 0, 2]), 1500);
        other.addresses = vec!["10.1.0.1/24".parse().unwrap()];
        kernel.put_host_dev("eth8", other);
        s.start_underlay().unwrap();
        let summary = s.underlay_summary().unwrap();
        assert!(summary.contains("several interfaces could lead to other nodes (eth8, eth9)"), "{summary}");
    }

    /// What a clean stop saves comes back in the next run, before its Services do: the
    /// flows (a NodePort flow's return path on the uplink, whose id changed), the pinned
    /// clients and learned MACs; the Services, once they come in another order, keep
    /// their ids, so no UDP flow is cut as if its Service were another.
    /// A takeover copies the flows while forwarding, then in its pause only what changed
    /// since: the flows seen after the copy, and which of the copied ones went.
    #[test]
    fn a_takeover_pause_carries_only_the_flows_changed_since_the_early_copy() {
        use vswitch_dataplane::tables::conntrack::Tuple;
        use vswitch_dataplane::wire::parse::IPPROTO_TCP;
        let dir = Scratch::new(&format!("switch-early-{}", std::process::id()));
        let (mut s, _) = switch(&dir);
        s.services_file_read(Some(SERVICES.into()), false).unwrap();
        let services = s.datapath().tables().services().clone();
        let web = services.by_vip(Ipv4Addr::new(10, 96, 0, 10), 80, IPPROTO_TCP).unwrap().id;
        let flow = |port| {
            let t = |src: [u8; 4], src_port, dst: [u8; 4], dst_port| Tuple {
                proto: IPPROTO_TCP,
                src: src.into(),
                src_port,
                dst: dst.into(),
                dst_port,
            };
            (t([10, 244, 1, 2], port, [10, 96, 0, 10], 80), t([10, 244, 1, 5], 8080, [10, 244, 1, 2], port))
        };
        let ct = s.datapath().conntrack().clone();
        let now = s.datapath().now();
        for port in [40000, 40001] {
            ct.batch().insert(flow(port).0, flow(port).1, web, None, now).unwrap();
        }
        let mut early = s.takeover_early_flows();
        assert_eq!(TablesSnapshot::decode(&early.tables).unwrap().flows.len(), 2);
        // Ten seconds on: one flow went, another came.
        early.since = now + 10;
        assert!(ct.batch().forget(&flow(40001).0));
        ct.batch().insert(flow(40002).0, flow(40002).1, web, None, now + 10).unwrap();

        let handing = s.pause_for_takeover(Some(&early)).unwrap();
        let delta = TablesSnapshot::decode(&handing.tables).unwrap();
        assert_eq!(delta.flows.iter().map(|f| f.orig).collect::<Vec<_>>(), vec![flow(40002).0]);
        assert_eq!(handing.gone, vec![flow(40001).0]);
        s.resume_after_takeover(handing.paused);
        assert_eq!(s.forget_flows(&[flow(40000).0, flow(40001).0]), 1, "one of them was here");
    }

    #[test]
    fn the_tables_carry_over_a_restart_before_the_services_come() {
        use vswitch_dataplane::tables::conntrack::{ReturnPath, Tuple};
        use vswitch_dataplane::wire::parse::IPPROTO_TCP;

        const TWO: &str = r#"
[[service]]
name = "web"
cluster_ip = "10.96.0.10"
ports = [{ name = "http", port = 80, target_port = 8080 }]
endpoints = [{ ip = "10.244.1.5" }]

[[service]]
name = "dns"
cluster_ip = "10.96.0.53"
type = "NodePort"
ports = [{ name = "dns", port = 53, protocol = "UDP", node_port = 30053 }]
endpoints = [{ ip = "10.244.1.7" }]
"#;
        let dir = Scratch::new(&format!("switch-carry-{}", std::process::id()));
        let (mut old, _) = switch(&dir);
        old.start_uplink().unwrap();
        // An earlier Service takes the first ids: fresh ids in the next run would differ.
        old.services_file_read(Some(SERVICES.replace("\"web\"", "\"aaa\"")), false).unwrap();
        old.services_file_read(Some(TWO.into()), false).unwrap();
        let table = old.datapath().tables().services().clone();
        let web = table.by_vip(Ipv4Addr::new(10, 96, 0, 10), 80, IPPROTO_TCP).unwrap().id;
        let dns = table.by_vip(Ipv4Addr::new(10, 96, 0, 53), 53, IPPROTO_UDP).unwrap().id;
        let uplink = *old.port_names().iter().find(|(_, n)| n.starts_with("uplink")).unwrap().0;
        let t = |proto, a: [u8; 4], ap, b: [u8; 4], bp| Tuple {
            proto,
            src: a.into(),
            src_port: ap,
            dst: b.into(),
            dst_port: bp,
        };
        let pod_flow = (
            t(IPPROTO_TCP, [10, 244, 1, 2], 40000, [10, 96, 0, 10], 80),
            t(IPPROTO_TCP, [10, 244, 1, 5], 8080, [10, 244, 1, 2], 40000),
        );
        let node_port_flow = (
            t(IPPROTO_UDP, [192, 168, 50, 9], 5000, [192, 168, 50, 1], 30053),
            t(IPPROTO_UDP, [10, 244, 1, 7], 53, [192, 168, 50, 1], 61000),
        );
        let path = ReturnPath {
            port: uplink,
            client_mac: MacAddr([2, 0, 0, 0, 0, 9]),
            local_mac: MacAddr([2, 0xee, 0, 0, 0, 1]),
        };
        let (now, dp) = (old.datapath().now(), old.datapath());
        dp.conntrack().batch().insert(pod_flow.0, pod_flow.1, web, None, now).unwrap();
        dp.conntrack().batch().insert(node_port_flow.0, node_port_flow.1, dns, Some(path), now).unwrap();
        dp.affinity().set(web, Ipv4Addr::new(10, 244, 1, 2), 42, 10800, now);
        dp.fdb().batch().learn(crate::ports::UPLINK_SEGMENT, MacAddr([2, 0, 0, 0, 0, 9]), uplink, now);
        let mut snap = TablesSnapshot::take(dp, now, old.port_names(), old.services.remembered());
        // As if the uplink had had another id in the old run.
        let old_uplink = PortId(uplink.0 + 5);
        let name = snap.ports.remove(&uplink).unwrap();
        snap.ports.insert(old_uplink, name);
        snap.flows.iter_mut().filter_map(|f| f.return_path.as_mut()).for_each(|p| p.port = old_uplink);
        snap.fdb.iter_mut().for_each(|e| e.port = old_uplink);
        drop(old);

        let dir = Scratch::new(&format!("switch-carry2-{}", std::process::id()));
        let (mut new, _) = switch(&dir);
        let mut restored = Restored::default();
        let before_ports = new.port_names_of(&StateFile { version: 1, ports: vec![] });
        new.carry_over(&mut snap, &before_ports, 3, &mut restored);
        assert_eq!((restored.flows, restored.affinity, restored.fdb), (1, 1, 0), "the uplink's wait for it");
        let ct = new.datapath().conntrack().clone();
        assert!(ct.batch().lookup(&pod_flow.1).is_some());
        let services = new.datapath().tables().services().clone();
        assert!(
            services.ports().next().is_none()
                && services.is_endpoint(Ipv4Addr::new(10, 244, 1, 5), 8080, IPPROTO_TCP),
            "an endpoint's packet is looked up before its Service comes"
        );
        new.start_uplink().unwrap();
        let names = new.port_names();
        new.carry_over(&mut snap, &names, 3, &mut restored);
        snap.finish(&mut restored);
        assert_eq!((restored.flows, restored.fdb, restored.dropped, restored.expired), (2, 1, 0, 0));
        let new_uplink = *names.iter().find(|(_, n)| n.starts_with("uplink")).unwrap().0;
        let b = ct.batch();
        assert_eq!(b.lookup(&node_port_flow.1).unwrap().0.return_path.unwrap().port, new_uplink);
        assert_eq!(
            new.datapath().fdb().batch().lookup(crate::ports::UPLINK_SEGMENT, MacAddr([2, 0, 0, 0, 0, 9])),
            Some(new_uplink)
        );
        drop(b);

        let reordered = format!(
            "{}\n{}",
            &TWO[TWO.find("[[service]]\nname = \"dns\"").unwrap()..],
            &TWO[..TWO.find("[[service]]\nname = \"dns\"").unwrap()]
        );
        new.services_file_read(Some(reordered), false).unwrap();
        let table = new.datapath().tables().services().clone();
        assert_eq!(table.by_vip(Ipv4Addr::new(10, 96, 0, 10), 80, IPPROTO_TCP).unwrap().id, web);
        assert_eq!(table.by_vip(Ipv4Addr::new(10, 96, 0, 53), 53, IPPROTO_UDP).unwrap().id, dns);
        assert_eq!(ct.len(), 2, "no flow cut: each still belongs to its Service");
        assert_eq!(
            new.datapath().affinity().get(web, Ipv4Addr::new(10, 244, 1, 2), new.datapath().now()),
            Some(42)
        );
    }

    #[test]
    fn a_resolved_next_hop_puts_a_node_on_the_fast_path() {
        let dir = Scratch::new(&format!("switch-hops-{}", std::process::id()));
        let (mut s, kernel) = switch(&dir);
        s.start_uplink().unwrap();
        s.start_underlay().unwrap();
        s.nodes_file_read(Some(NODES.into()), false).unwrap();
        let node = Ipv4Addr::new(192, 168, 50, 2);
        let node_of = |s: &Switch| {
            s.datapath()
                .tables()
                .overlay()
                .node(s.datapath().tables().overlay().node_by_ip(node).unwrap())
                .unwrap()
                .clone()
        };
        assert_eq!(node_of(&s).next_hop_mac, None, "unresolved: the socket path");
        let generation = s.nodes_view().generation;
        s.refresh_next_hops();
        assert_eq!(s.nodes_view().generation, generation, "nothing resolved, nothing published");
        kernel.set_next_hop(node, MacAddr([2, 0xbb, 0, 0, 0, 2]));
        s.refresh_next_hops();
        assert_eq!(node_of(&s).next_hop_mac, Some(MacAddr([2, 0xbb, 0, 0, 0, 2])));
        assert_eq!(s.nodes_view().nodes[0].fast_path_next_hop.as_deref(), Some("02:bb:00:00:00:02"));
    }

    #[test]
    fn services_and_nodes_from_the_cluster_replace_the_files() {
        let dir = Scratch::new(&format!("switch-cluster-{}", std::process::id()));
        let (mut s, _) = switch(&dir);
        s.services_file_read(Some(SERVICES.into()), false).unwrap();
        assert_eq!(s.services_view().services.len(), 1);
        s.cluster_services(vec![]);
        assert!(s.services_view().services.is_empty());
        let b = NodeSpec {
            name: "node-b".into(),
            ip: Ipv4Addr::new(192, 168, 50, 2),
            pod_cidrs: vec!["10.244.2.0/24".parse().unwrap()],
            vtep_mac: None,
        };
        let clash = NodeSpec { name: "node-c".into(), ..b.clone() };
        s.cluster_nodes(vec![b, clash]);
        let view = s.nodes_view();
        assert_eq!(
            view.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            vec!["node-b"],
            "the clashing one left out"
        );
        assert_eq!(view.nodes[0].source, vswitch_api::NodeSource::Cluster);
    }
}
