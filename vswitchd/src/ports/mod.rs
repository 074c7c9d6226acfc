//! Port management: attaching pods (creating their interface and the switch port behind
//! it), detaching them, the host port, and re-attaching everything after a restart.
//!
//! The manager owns the desired state ([`TablesBuilder`] plus what each port was
//! attached with) and the [`Datapath`]. Every change follows the data path's ordering
//! rule: queues are handed to workers before tables list the port, and tables drop the
//! port before its queues are taken back. Every attach that fails part-way undoes what
//! it did, so no half-made port, device or state entry is left behind.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use ipnet::IpNet;
use vswitch_api::{
    AttachRequest, Backend, ConntrackView, Flow, PodRef, PortInfo, PortKind as ApiPortKind, Protocol,
    ServicesView,
};

mod underlay;
mod uplink;

pub use uplink::UPLINK_SEGMENT;

use super::catalog::{FileOutcome, ServiceCatalog};
use super::config::{AfxdpMode, Config, ConfigError, UnknownArpPolicy};
use super::state::{self, DeviceTag, SavedPort, StateError, StateFile};
use vswitch_dataplane::datapath::{Datapath, DatapathError};
use vswitch_dataplane::ids::{PortId, SegmentId, WorkerId, WorkerSet};
use vswitch_dataplane::port::PortQueue;
use vswitch_dataplane::port::afxdp::{self, XdpMode, XskQueue};
use vswitch_dataplane::port::tap::{self, TapOptions};
use vswitch_dataplane::tables::{
    Gateway, PortEntry, PortKind, SegmentConfig, TablesBuilder, TablesError, UnknownArp,
};
use vswitch_dataplane::wire::MacAddr;
use vswitch_sys::SysError;
use vswitch_sys::netlink::{LinkInfo, LinkKind, Netlink, in_netns};
use vswitch_sys::netns::{Netns, NetnsError};

/// The segment every port of this node is in.
const SEGMENT: SegmentId = SegmentId(0);
/// The host port's id; pod ports get ids from 1.
pub const HOST_PORT_ID: PortId = PortId(0);

/// Why an attach or detach failed; [`AttachError::code`] gives its API error code.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InterfaceExists(String),
    #[error("no port id left (max_ports is {0})")]
    PortLimit(usize),
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl AttachError {
    /// The API error code and HTTP status for this error.
    pub fn code(&self) -> (u16, &'static str) {
        use vswitch_api::codes;
        match self {
            AttachError::Invalid(_) => (400, codes::INVALID_REQUEST),
            AttachError::Netns(NetnsError::NotFound(_) | NetnsError::NotANamespace(_)) => {
                (404, codes::NETNS_NOT_FOUND)
            }
            AttachError::Conflict(_) => (409, codes::CONFLICT),
            AttachError::InterfaceExists(_) => (409, codes::INTERFACE_EXISTS),
            AttachError::PortLimit(_) => (507, codes::PORT_LIMIT),
            AttachError::Netns(NetnsError::Io { .. })
            | AttachError::Sys(_)
            | AttachError::Datapath(_)
            | AttachError::State(_) => (500, codes::INTERNAL),
        }
    }
}

/// A pod port as attached.
struct PodPort {
    saved: SavedPort,
    workers: Vec<WorkerId>,
}

/// The data plane's view of the host port, for listings.
struct HostPort {
    name: String,
    workers: Vec<WorkerId>,
}

pub struct PortManager {
    config: Config,
    datapath: Datapath,
    builder: TablesBuilder,
    pods: BTreeMap<PortId, PodPort>,
    host: Option<HostPort>,
    netlink: Netlink,
    /// AF_XDP queues per worker, to place the next one on the least loaded.
    xsk_load: Vec<usize>,
    /// The port id given out last.
    last_id: PortId,
    catalog: ServiceCatalog,
    uplink: Option<uplink::Uplink>,
    overlay: underlay::Overlay,
}

/// What a restart found.
#[derive(Debug, Default)]
pub struct RestoreReport {
    pub restored: Vec<String>,
    /// Ports that could not be re-attached, with the reason (dropped from the state).
    pub dropped: Vec<(String, String)>,
}

/// The node-side end of an AF_XDP port's veth pair.
fn host_ifname(id: PortId) -> String {
    format!("vsx{:x}", id.0)
}

/// Where CNI runtimes (containerd, CRI-O, `ip netns`) bind-mount pods' network
/// namespaces: scanned for tagged devices when the state file is lost.
pub const NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

fn describe(saved: &SavedPort) -> String {
    format!("{}/{} ({})", saved.container_id, saved.ifname, saved.netns.display())
}

/// The MAC a pod gets when its request names none: `02:00:` and its first IPv4
/// address (stable across re-attachments, unique on the node), else a hash of the
/// attachment's name.
fn derive_mac(ips: &[IpNet], container_id: &str, ifname: &str) -> MacAddr {
    if let Some(IpAddr::V4(v4)) = ips.iter().map(|n| n.addr()).find(IpAddr::is_ipv4) {
        let o = v4.octets();
        return MacAddr([0x02, 0x00, o[0], o[1], o[2], o[3]]);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    MacAddr([0x02, b[0], b[1], b[2], b[3], b[4]])
}

fn blocking<R>(f: impl FnOnce() -> R) -> R {
    // Kernel calls of a few milliseconds: let the runtime move other tasks away.
    tokio::task::block_in_place(f)
}

impl PortManager {
    /// Takes over `datapath` with tables holding this node's segment (and no ports).
    /// Must run inside the daemon's (multi-threaded) tokio runtime.
    pub fn new(config: Config, datapath: Datapath) -> Result<PortManager, AttachError> {
        let mut builder = TablesBuilder::default();
        builder
            .add_segment(SegmentConfig {
                id: SEGMENT,
                gateway: Some(Gateway { ip: config.gateway_ip, mac: config.gateway_mac }),
                unknown_arp: match config.unknown_arp {
                    UnknownArpPolicy::Drop => UnknownArp::Drop,
                    UnknownArpPolicy::Flood => UnknownArp::Flood,
                },
            })
            .map_err(|e| AttachError::Invalid(e.to_string()))?;
        let netlink = Netlink::connect()?;
        let workers = datapath.workers();
        let catalog = ServiceCatalog::new(&config);
        builder.set_services(catalog.table());
        let mut m = PortManager {
            config,
            datapath,
            builder,
            pods: BTreeMap::new(),
            host: None,
            netlink,
            xsk_load: vec![0; workers],
            last_id: PortId(0),
            catalog,
            uplink: None,
            overlay: underlay::Overlay::default(),
        };
        m.builder.set_overlay(std::sync::Arc::new(
            vswitch_dataplane::tables::overlay::OverlayTable::build(
                m.config.overlay_settings(),
                None,
                &m.config.overlay.nodes,
            )
            .map_err(|e| AttachError::Invalid(e.to_string()))?,
        ));
        m.publish()?;
        Ok(m)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn datapath(&self) -> &Datapath {
        &self.datapath
    }

    fn publish(&self) -> Result<(), AttachError> {
        let tables = self.builder.build().map_err(|e| AttachError::Invalid(e.to_string()))?;
        self.datapath.publish(tables);
        Ok(())
    }

    /// Takes the services file's content (`None`: absent) and publishes the Services in
    /// it if they changed. A content seen before is not parsed again unless `force`.
    /// On an error, the Services served before stay.
    pub fn services_file_read(&mut self, text: Option<String>, force: bool) -> Result<bool, ConfigError> {
        match self.catalog.file_read(text, force, self.datapath.conntrack()) {
            FileOutcome::Unchanged => Ok(false),
            FileOutcome::Rejected(e) => Err(e),
            FileOutcome::Applied => {
                self.services_changed();
                Ok(true)
            }
        }
    }

    /// Serves `services` (from the cluster), replacing what was served.
    pub fn cluster_services(&mut self, services: Vec<vswitch_api::Service>) {
        if services == self.catalog.services() {
            return;
        }
        self.catalog.set(services, self.datapath.conntrack());
        self.services_changed();
    }

    /// After the catalog took new Services: publish them, steer their NodePorts, cut
    /// UDP flows to endpoints that stopped serving.
    fn services_changed(&mut self) {
        self.publish_services();
        self.sync_steered_ports();
        let cut = self.catalog.cut_stale_flows(self.datapath.conntrack());
        let view = self.catalog.view();
        tracing::info!(
            services = view.services.len(),
            generation = view.generation,
            udp_flows_cut = cut,
            "services applied"
        );
        if cut > 0
            && let Some(t) = self.catalog.refresh(self.datapath.conntrack())
        {
            self.builder.set_services(t);
            self.publish_or_log();
        }
    }

    fn publish_services(&mut self) {
        self.builder.set_services(self.catalog.table());
        self.publish_or_log();
    }

    /// Publishing after a Service change: the port tables did not change, so building
    /// them cannot fail for a reason the change made.
    fn publish_or_log(&self) {
        if let Err(e) = self.publish() {
            tracing::error!(error = %e, "publishing tables");
        }
    }

    /// After conntrack housekeeping: stops recognising VIPs and endpoints kept only for
    /// flows that have ended.
    pub fn services_housekeeping(&mut self) {
        if let Some(t) = self.catalog.refresh(self.datapath.conntrack()) {
            self.builder.set_services(t);
            self.publish_or_log();
        }
    }

    pub fn services_view(&self) -> ServicesView {
        self.catalog.view()
    }

    pub fn services_file(&self) -> Option<&std::path::Path> {
        self.catalog.file()
    }

    /// The tracked flows, at most `limit`.
    pub fn conntrack_view(&self, limit: usize) -> ConntrackView {
        let ct = self.datapath.conntrack();
        let now = self.datapath.now();
        let flows = ct.snapshot();
        let truncated = flows.len() > limit;
        let addr = |ip, port| std::net::SocketAddrV4::new(ip, port);
        ConntrackView {
            entries: ct.len(),
            max_entries: ct.config().max_entries,
            truncated,
            flows: flows
                .iter()
                .take(limit)
                .map(|c| {
                    // The endpoint's view: reply is endpoint -> (client or SNAT address).
                    let snat = (c.reply.dst != c.orig.src || c.reply.dst_port != c.orig.src_port)
                        .then(|| addr(c.reply.dst, c.reply.dst_port));
                    Flow {
                        protocol: if c.orig.proto == vswitch_dataplane::wire::parse::IPPROTO_UDP {
                            Protocol::Udp
                        } else {
                            Protocol::Tcp
                        },
                        service: self.catalog.port_name(c.service).unwrap_or("(removed)").to_string(),
                        client: addr(c.orig.src, c.orig.src_port),
                        frontend: addr(c.orig.dst, c.orig.dst_port),
                        endpoint: addr(c.reply.src, c.reply.src_port),
                        source_nat: snat,
                        state: format!("{:?}", c.state()).to_lowercase(),
                        replied: c.replied(),
                        idle_secs: now.saturating_sub(c.last_seen()),
                    }
                })
                .collect(),
        }
    }

    /// The next free id after the last one given out: an id is reused as late as
    /// possible, so a new port rarely shows up under a departed one's counters.
    fn free_id(&mut self) -> Result<PortId, AttachError> {
        let span = self.config.max_ports - 1;
        let uplink = self.uplink.as_ref().map(|u| u.id);
        let id = (0..span)
            .map(|k| PortId((1 + (self.last_id.index() + k) % span) as u16))
            .find(|i| !self.pods.contains_key(i) && Some(*i) != uplink)
            .ok_or(AttachError::PortLimit(self.config.max_ports))?;
        self.last_id = id;
        Ok(id)
    }

    fn all_workers(&self) -> Vec<WorkerId> {
        (0..self.datapath.workers()).collect()
    }

    fn tap_options(&self, mac: Option<MacAddr>, mtu: u16) -> TapOptions {
        TapOptions {
            queues: self.datapath.workers(),
            offloads: self.config.offloads,
            mac: mac.map(|m| m.0),
            mtu: Some(mtu),
        }
    }

    fn xdp_mode(&self) -> XdpMode {
        match self.config.afxdp_mode {
            AfxdpMode::Auto => XdpMode::Auto,
            AfxdpMode::Native => XdpMode::Native,
            AfxdpMode::Generic => XdpMode::Generic,
        }
    }

    /// Hands one queue per worker to the workers; on failure takes back those given.
    fn add_queues(
        &self,
        id: PortId,
        queues: Vec<Box<dyn PortQueue>>,
        workers: &[WorkerId],
    ) -> Result<(), AttachError> {
        // Each hand-over waits for the worker's acknowledgement.
        blocking(|| {
            for (i, (q, w)) in queues.into_iter().zip(workers).enumerate() {
                if let Err(e) = self.datapath.add_queue(*w, id, q) {
                    for w in &workers[..i] {
                        let _ = self.datapath.remove_queue(*w, id);
                    }
                    return Err(e.into());
                }
            }
            Ok(())
        })
    }

    /// Takes the port's queues back from the workers; `release` undoes persistence (the
    /// port goes for good) rather than leaving the device for a restart.
    fn remove_queues(&self, id: PortId, workers: &[WorkerId], release: bool) {
        for w in workers {
            match blocking(|| self.datapath.remove_queue(*w, id)) {
                Ok(Some(mut q)) if release => {
                    if let Err(e) = q.release() {
                        tracing::warn!(port = %id, error = %e, "releasing queue");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(port = %id, worker = w, error = %e, "taking queue back"),
            }
        }
        self.datapath.fdb().forget_port(id);
    }

    // ---- the host port ------------------------------------------------------------

    /// Creates (or, after a restart, re-opens) the host port: a TAP in the daemon's
    /// namespace with the gateway's MAC and address, so the node reaches its pods.
    pub async fn start_host_port(&mut self) -> Result<(), AttachError> {
        let Some(name) = self.config.host_port.clone() else { return Ok(()) };
        let opts = self.tap_options(Some(self.config.gateway_mac), self.config.mtu);
        let existing = self.netlink.link(&name).await?;
        let queues = blocking(|| match existing {
            Some(_) => tap::reopen(&name, &opts),
            None => tap::create(&name, &opts),
        })?;
        let index = self.netlink.index_of(&name).await?;
        if existing.is_some() {
            // Reopened as it was: bring it in line with this configuration.
            self.netlink.set_mac(index, self.config.gateway_mac.0).await?;
            self.netlink.set_mtu(index, u32::from(self.config.mtu)).await?;
        }
        let prefix = self.config.pod_cidr.prefix_len();
        let gw = IpNet::new(IpAddr::V4(self.config.gateway_ip), prefix).expect("prefix of a valid CIDR");
        self.netlink.add_address(index, gw).await?;
        self.netlink.set_up(index).await?;
        let workers = self.all_workers();
        let queues = queues
            .into_iter()
            .map(|mut q| {
                q.set_label(format!("host port {name}"));
                Box::new(q) as Box<dyn PortQueue>
            })
            .collect();
        self.add_queues(HOST_PORT_ID, queues, &workers)?;
        self.builder
            .add_port(PortEntry {
                id: HOST_PORT_ID,
                name: name.clone(),
                kind: PortKind::Host,
                segment: SEGMENT,
                mac: Some(self.config.gateway_mac),
                ipv4: vec![],
                ipv6: vec![],
                port_security: false,
                mtu: self.config.mtu,
                tx_workers: WorkerSet::all(workers.len()),
                offloads: self.config.offloads,
            })
            .map_err(|e| AttachError::Invalid(e.to_string()))?;
        self.publish()?;
        tracing::info!(name, gateway = %gw, "host port up");
        self.host = Some(HostPort { name, workers });
        Ok(())
    }

    // ---- attach -------------------------------------------------------------------

    /// Attaches a pod. Returns the port and whether it was created now (false: the same
    /// attachment already existed, e.g. a retried CNI ADD).
    pub async fn attach(&mut self, req: &AttachRequest) -> Result<(PortInfo, bool), AttachError> {
        vswitch_api::validate_container_id(&req.container_id).map_err(AttachError::Invalid)?;
        vswitch_api::validate_ifname(&req.ifname).map_err(AttachError::Invalid)?;
        let backend = req.backend.unwrap_or(self.config.port_backend);
        let mtu = req.mtu.unwrap_or(self.config.mtu);
        let mac = match &req.mac {
            Some(text) => text.parse::<MacAddr>().map_err(|e| AttachError::Invalid(e.to_string()))?,
            None => derive_mac(&req.ips, &req.container_id, &req.ifname),
        };
        if let Some(existing) = self.find(&req.container_id, &req.ifname) {
            let same = existing.saved.netns == req.netns
                && existing.saved.ips == req.ips
                && existing.saved.backend == backend
                && existing.saved.mtu == mtu
                && existing.saved.mac == mac
                && existing.saved.network == req.network;
            return if same {
                Ok((self.pod_info(existing), false))
            } else {
                Err(AttachError::Conflict(format!(
                    "{}/{} is already attached with different parameters; detach it first",
                    req.container_id, req.ifname
                )))
            };
        }
        self.validate(req, backend, mtu, mac)?;
        let id = self.free_id()?;
        let entry = self.entry_for(id, req, mac, mtu, backend, &[]);
        // Conflicts (IP or MAC in use) are found before any device exists.
        self.builder.clone().add_port(entry).map_err(conflict)?;
        let netns = Netns::open(&req.netns)?;
        let ifname = req.ifname.clone();
        let present = blocking(|| in_netns(&netns, |nl| async move { nl.link(&ifname).await }))?;
        if present.is_some() {
            return Err(AttachError::InterfaceExists(format!(
                "{} already has an interface {}",
                req.netns.display(),
                req.ifname
            )));
        }
        let saved = SavedPort {
            id,
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            netns: req.netns.clone(),
            backend,
            mac,
            ips: req.ips.clone(),
            mtu,
            host_ifname: (backend == Backend::Afxdp).then(|| host_ifname(id)),
            pod: req.pod.clone(),
            network: req.network.clone(),
        };
        let workers = match backend {
            Backend::Tap => self.create_tap_port(&saved, &netns, mac).await?,
            Backend::Afxdp => self.create_afxdp_port(&saved, &netns, mac).await?,
        };
        let entry = self.entry_for(id, req, mac, mtu, backend, &workers);
        if let Err(e) = self.builder.add_port(entry).map_err(conflict).and_then(|()| self.publish()) {
            self.builder.remove_port(id);
            self.destroy(&saved, &workers).await;
            return Err(e);
        }
        if backend == Backend::Afxdp {
            self.xsk_load[workers[0]] += 1;
        }
        self.pods.insert(id, PodPort { saved, workers });
        // Up only now: the pod's first frames (IPv6 DAD, ...) find its port in the tables.
        let ifname = req.ifname.clone();
        let alias = self.tag_alias(&self.pods[&id].saved);
        let up = blocking(|| {
            in_netns(&netns, |nl| async move {
                let index = nl.index_of(&ifname).await?;
                if let Some(alias) = &alias {
                    nl.set_alias(index, alias).await?;
                }
                nl.set_up(index).await
            })
        })
        .map_err(AttachError::from)
        .and_then(|()| self.save_state());
        if let Err(e) = up {
            // Not usable, or would not survive a restart: undo, so the caller's retry
            // starts from a clean slate.
            let port = self.pods.remove(&id).expect("just inserted");
            let _ = self.undo_attach(port).await;
            return Err(e);
        }
        let port = &self.pods[&id];
        tracing::info!(port = %id, container = %port.saved.container_id, ifname = %port.saved.ifname,
            backend = %backend, mac = %mac, "attached");
        Ok((self.pod_info(port), true))
    }

    fn validate(
        &self,
        req: &AttachRequest,
        backend: Backend,
        mtu: u16,
        mac: MacAddr,
    ) -> Result<(), AttachError> {
        if req.ips.is_empty() {
            return Err(AttachError::Invalid("ips is empty: a pod port needs at least one address".into()));
        }
        let cidr = self.config.pod_cidr;
        for (i, net) in req.ips.iter().enumerate() {
            if req.ips[..i].iter().any(|n| n.addr() == net.addr()) {
                return Err(AttachError::Invalid(format!("{} is listed twice", net.addr())));
            }
            if let IpAddr::V6(v6) = net.addr()
                && (v6.is_unspecified() || v6.is_multicast() || v6.is_loopback())
            {
                return Err(AttachError::Invalid(format!("{v6} is not a unicast address")));
            }
            if let IpAddr::V4(v4) = net.addr() {
                if !cidr.contains(&v4) || v4 == cidr.network() || v4 == cidr.broadcast() {
                    return Err(AttachError::Invalid(format!(
                        "{v4} is not a pod address of this node's pod CIDR {cidr}"
                    )));
                }
                if v4 == self.config.gateway_ip {
                    return Err(AttachError::Conflict(format!("{v4} is the gateway address")));
                }
            }
        }
        if !(576..=9000).contains(&mtu) {
            return Err(AttachError::Invalid(format!("mtu {mtu} is outside 576..=9000")));
        }
        if backend == Backend::Afxdp && usize::from(mtu) + 14 > afxdp::MAX_FRAME {
            return Err(AttachError::Invalid(format!(
                "mtu {mtu} is too large for an AF_XDP port (at most {})",
                afxdp::MAX_FRAME - 14
            )));
        }
        if mac.is_multicast() || mac.is_zero() {
            return Err(AttachError::Invalid(format!("mac {mac} is not a unicast address")));
        }
        if mac == self.config.gateway_mac {
            return Err(AttachError::Conflict(format!("mac {mac} is the gateway's")));
        }
        Ok(())
    }

    fn entry_for(
        &self,
        id: PortId,
        req: &AttachRequest,
        mac: MacAddr,
        mtu: u16,
        backend: Backend,
        workers: &[WorkerId],
    ) -> PortEntry {
        let v4: Vec<Ipv4Addr> = req
            .ips
            .iter()
            .filter_map(|n| if let IpAddr::V4(a) = n.addr() { Some(a) } else { None })
            .collect();
        let v6: Vec<Ipv6Addr> = req
            .ips
            .iter()
            .filter_map(|n| if let IpAddr::V6(a) = n.addr() { Some(a) } else { None })
            .collect();
        let mut tx_workers = WorkerSet::default();
        for w in workers {
            tx_workers.insert(*w);
        }
        PortEntry {
            id,
            name: format!("{}/{}", short(&req.container_id), req.ifname),
            kind: PortKind::Pod,
            segment: SEGMENT,
            mac: Some(mac),
            ipv4: v4,
            ipv6: v6,
            port_security: true,
            mtu,
            tx_workers,
            offloads: backend == Backend::Tap && self.config.offloads,
        }
    }

    /// TAP: create it in the pod as `ifname` (MAC, MTU, queues; still down), hand one
    /// queue to each worker.
    async fn create_tap_port(
        &self,
        saved: &SavedPort,
        netns: &Netns,
        mac: MacAddr,
    ) -> Result<Vec<WorkerId>, AttachError> {
        // Made right inside the pod (the queues opened from a thread in its namespace
        // belong to it): no move across namespaces, which costs the kernel an RCU grace
        // period or two.
        let opts = self.tap_options(Some(mac), saved.mtu);
        let mut queues = blocking(|| netns.run(|| tap::create(&saved.ifname, &opts)))??;
        let label = format!("{} {}", short(&saved.container_id), saved.ifname);
        for q in &mut queues {
            q.set_label(label.clone());
        }
        let workers = self.all_workers();
        let boxed: Vec<Box<dyn PortQueue>> =
            queues.into_iter().map(|q| Box::new(q) as Box<dyn PortQueue>).collect();
        // The queues `add_queues` could not place are gone with their persistence
        // still set: delete the device by name in the pod.
        if let Err(e) = self.add_queues(saved.id, boxed, &workers) {
            self.delete_in_pod(saved).await;
            return Err(e);
        }
        Ok(workers)
    }

    /// AF_XDP: a veth pair whose pod end is made in the pod as `ifname` (still down,
    /// offloads off so it sends finished frames); the host end stays here and gets an
    /// XSK socket on the least loaded worker.
    async fn create_afxdp_port(
        &mut self,
        saved: &SavedPort,
        netns: &Netns,
        mac: MacAddr,
    ) -> Result<Vec<WorkerId>, AttachError> {
        let host = saved.host_ifname.clone().expect("AF_XDP ports have a host end");
        // A leftover of an earlier run with this id: ours by its name.
        self.netlink.delete_by_name(&host).await?;
        // The pod's end is made right in the pod (no move across namespaces).
        self.netlink.add_veth(&host, &saved.ifname, Some(netns), mac.0, u32::from(saved.mtu)).await?;
        let worker = (0..self.xsk_load.len()).min_by_key(|w| self.xsk_load[*w]).unwrap_or(0);
        let made = async {
            blocking(|| netns.run(|| vswitch_sys::ethtool::disable_offloads(&saved.ifname)))??;
            let host_index = self.netlink.index_of(&host).await?;
            // The pod's end gets the same tag once it is up; this copy is out of the
            // pod's reach, and recovery trusts a veth only when both agree.
            if let Some(alias) = self.tag_alias(saved) {
                self.netlink.set_alias(host_index, &alias).await?;
            }
            self.netlink.set_up(host_index).await?;
            self.netlink.detach_xdp(host_index).await?;
            let mode = self.xdp_mode();
            let mut q = blocking(|| XskQueue::open(&host, mode))?;
            q.set_label(format!("{} {}", short(&saved.container_id), saved.ifname));
            blocking(|| self.datapath.add_queue(worker, saved.id, Box::new(q)))?;
            Ok::<_, AttachError>(())
        };
        if let Err(e) = made.await {
            let _ = self.netlink.delete_by_name(&host).await;
            return Err(e);
        }
        Ok(vec![worker])
    }

    /// Removes a pod's interface from inside its namespace, if both still exist.
    async fn delete_in_pod(&self, saved: &SavedPort) {
        let Ok(netns) = Netns::open(&saved.netns) else { return };
        let ifname = saved.ifname.clone();
        let res = blocking(|| in_netns(&netns, |nl| async move { nl.delete_by_name(&ifname).await }));
        if let Err(e) = res {
            tracing::warn!(error = %e, "deleting {} in {}", saved.ifname, saved.netns.display());
        }
    }

    /// Takes the port's queues back and removes its devices.
    async fn destroy(&self, saved: &SavedPort, workers: &[WorkerId]) {
        self.remove_queues(saved.id, workers, true);
        match saved.backend {
            // Released and closed: the kernel removes the TAP. Deleting by name covers a
            // queue that could not be released.
            Backend::Tap => self.delete_in_pod(saved).await,
            Backend::Afxdp => {
                if let Some(host) = &saved.host_ifname
                    && let Err(e) = self.netlink.delete_by_name(host).await
                {
                    tracing::warn!(error = %e, "deleting veth {host}");
                }
            }
        }
    }

    /// Reverses a completed attach (the port is no longer in `pods`).
    async fn undo_attach(&mut self, port: PodPort) -> Result<(), AttachError> {
        self.builder.remove_port(port.saved.id);
        self.publish()?;
        if port.saved.backend == Backend::Afxdp {
            for w in &port.workers {
                self.xsk_load[*w] = self.xsk_load[*w].saturating_sub(1);
            }
        }
        self.destroy(&port.saved, &port.workers).await;
        Ok(())
    }

    // ---- detach -------------------------------------------------------------------

    /// Detaches a pod's port and removes its interface. True if there was one.
    pub async fn detach(&mut self, container_id: &str, ifname: &str) -> Result<bool, AttachError> {
        let Some(id) = self.find(container_id, ifname).map(|p| p.saved.id) else {
            return Ok(false);
        };
        self.builder.remove_port(id);
        self.publish()?;
        let port = self.pods.remove(&id).expect("found above");
        if port.saved.backend == Backend::Afxdp {
            for w in &port.workers {
                self.xsk_load[*w] = self.xsk_load[*w].saturating_sub(1);
            }
        }
        self.destroy(&port.saved, &port.workers).await;
        self.save_state()?;
        tracing::info!(port = %id, container = container_id, ifname, "detached");
        Ok(true)
    }

    /// Removes the ports of pods that went away without a detach (their network
    /// namespace is gone, or an AF_XDP port's veth): the pod was killed while no DEL
    /// could reach us. Nothing is left to delete; the counters of the port stay.
    /// Returns how many went.
    pub async fn reap_vanished(&mut self) -> usize {
        let mut gone = Vec::new();
        for p in self.pods.values() {
            let netns_gone = matches!(
                Netns::open(&p.saved.netns),
                Err(NetnsError::NotFound(_) | NetnsError::NotANamespace(_))
            );
            let veth_gone = match &p.saved.host_ifname {
                Some(host) => matches!(self.netlink.link(host).await, Ok(None)),
                None => false,
            };
            if netns_gone || veth_gone {
                gone.push(p.saved.id);
            }
        }
        for id in &gone {
            self.builder.remove_port(*id);
        }
        if gone.is_empty() {
            return 0;
        }
        self.publish_or_log();
        for id in &gone {
            let port = self.pods.remove(id).expect("listed above");
            if port.saved.backend == Backend::Afxdp {
                for w in &port.workers {
                    self.xsk_load[*w] = self.xsk_load[*w].saturating_sub(1);
                }
            }
            self.remove_queues(*id, &port.workers, false);
            tracing::warn!(
                port = %id, container = %port.saved.container_id, ifname = %port.saved.ifname,
                netns = %port.saved.netns.display(), "pod gone without a detach: port removed"
            );
        }
        if let Err(e) = self.save_state() {
            tracing::error!(error = %e, "saving state after removing vanished ports");
        }
        gone.len()
    }

    // ---- restart ------------------------------------------------------------------

    /// Re-attaches the ports of a previous run. A port whose namespace or interface is
    /// gone (the pod went away while we were down) is dropped, not fatal.
    pub async fn restore(&mut self, state: StateFile) -> RestoreReport {
        let mut report = RestoreReport::default();
        for saved in state.ports {
            let what = describe(&saved);
            match self.restore_one(&saved).await {
                Ok(workers) => {
                    if saved.backend == Backend::Afxdp {
                        self.xsk_load[workers[0]] += 1;
                    }
                    self.last_id = self.last_id.max(saved.id);
                    self.pods.insert(saved.id, PodPort { saved, workers });
                    report.restored.push(what);
                    // Each port's traffic resumes as soon as it is back, not after all.
                    if let Err(e) = self.publish() {
                        tracing::error!(error = %e, "publishing restored tables");
                    }
                }
                Err(e) => report.dropped.push((what, e.to_string())),
            }
        }
        if let Err(e) = self.save_state() {
            tracing::error!(error = %e, "saving state after restore");
        }
        report
    }

    async fn restore_one(&mut self, saved: &SavedPort) -> Result<Vec<WorkerId>, AttachError> {
        if saved.id == HOST_PORT_ID
            || saved.id.index() >= self.config.max_ports
            || self.pods.contains_key(&saved.id)
        {
            return Err(AttachError::Invalid(format!("port id {} is not usable", saved.id)));
        }
        let mac = saved.mac;
        let req = AttachRequest {
            container_id: saved.container_id.clone(),
            netns: saved.netns.clone(),
            ifname: saved.ifname.clone(),
            mac: Some(saved.mac.to_string()),
            ips: saved.ips.clone(),
            mtu: Some(saved.mtu),
            backend: Some(saved.backend),
            pod: saved.pod.clone(),
            network: saved.network.clone(),
        };
        self.builder
            .clone()
            .add_port(self.entry_for(saved.id, &req, mac, saved.mtu, saved.backend, &[]))
            .map_err(conflict)?;
        let netns = Netns::open(&saved.netns)?;
        let workers = match saved.backend {
            Backend::Tap => {
                let ifname = saved.ifname.clone();
                // Only the interface we made: same name and MAC.
                let link = blocking(|| in_netns(&netns, |nl| async move { nl.link(&ifname).await }))?;
                if link.as_ref().and_then(|l| l.mac) != Some(mac.0) {
                    return Err(AttachError::Conflict(format!(
                        "{} with MAC {mac} is gone from the pod",
                        saved.ifname
                    )));
                }
                let opts = self.tap_options(None, saved.mtu);
                let queues = blocking(|| netns.run(|| tap::reopen(&saved.ifname, &opts)))??;
                let label = format!("{} {}", short(&saved.container_id), saved.ifname);
                let boxed = queues
                    .into_iter()
                    .map(|mut q| {
                        q.set_label(label.clone());
                        Box::new(q) as Box<dyn PortQueue>
                    })
                    .collect();
                let workers = self.all_workers();
                self.add_queues(saved.id, boxed, &workers)?;
                workers
            }
            Backend::Afxdp => {
                let host = saved
                    .host_ifname
                    .clone()
                    .ok_or_else(|| AttachError::Invalid("no host end recorded".into()))?;
                let index = self
                    .netlink
                    .link(&host)
                    .await?
                    .ok_or_else(|| AttachError::Conflict(format!("veth {host} is gone")))?
                    .index;
                self.netlink.detach_xdp(index).await?;
                let mode = self.xdp_mode();
                let mut q = blocking(|| XskQueue::open(&host, mode))?;
                q.set_label(format!("{} {}", short(&saved.container_id), saved.ifname));
                let worker = (0..self.xsk_load.len()).min_by_key(|w| self.xsk_load[*w]).unwrap_or(0);
                self.datapath.add_queue(worker, saved.id, Box::new(q))?;
                vec![worker]
            }
        };
        let entry = self.entry_for(saved.id, &req, mac, saved.mtu, saved.backend, &workers);
        if let Err(e) = self.builder.add_port(entry) {
            self.remove_queues(saved.id, &workers, false);
            return Err(conflict(e));
        }
        // Ports attached by an older daemon get their tags now.
        if let Err(e) = self.write_tags(saved, &netns).await {
            tracing::warn!(port = %saved.id, error = %e, "tagging the port's devices");
        }
        Ok(workers)
    }

    /// The alias that tags this port's devices (see [`DeviceTag`]).
    fn tag_alias(&self, saved: &SavedPort) -> Option<String> {
        let alias = DeviceTag::of(saved, &state::owner_of(&self.config.state_file)).to_alias();
        if alias.is_none() {
            tracing::warn!(container = %saved.container_id, ifname = %saved.ifname,
                "port identity too long for an interface alias: only the state file knows this port");
        }
        alias
    }

    async fn write_tags(&self, saved: &SavedPort, netns: &Netns) -> Result<(), SysError> {
        let Some(alias) = self.tag_alias(saved) else { return Ok(()) };
        if let Some(host) = &saved.host_ifname {
            self.netlink.set_alias(self.netlink.index_of(host).await?, &alias).await?;
        }
        let ifname = saved.ifname.clone();
        blocking(|| {
            in_netns(netns, |nl| async move {
                let index = nl.index_of(&ifname).await?;
                nl.set_alias(index, &alias).await
            })
        })
    }

    /// With the state file lost (corrupt): the ports of the previous run whose devices
    /// still exist, from the tags attach wrote on them, searched in the namespaces under
    /// `dirs`. Re-attach them with [`PortManager::restore`], which checks each again.
    pub async fn recover_from_devices(&self, dirs: &[&str]) -> StateFile {
        let owner = state::owner_of(&self.config.state_file);
        let mut namespaces_seen = HashSet::new();
        let mut ports: BTreeMap<PortId, SavedPort> = BTreeMap::new();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for path in paths {
                let Ok(netns) = Netns::open(&path) else { continue };
                // /var/run is /run on most systems: each namespace once.
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                if !namespaces_seen.insert((meta.dev(), meta.ino())) {
                    continue;
                }
                let links = match blocking(|| in_netns(&netns, |nl| async move { nl.links().await })) {
                    Ok(links) => links,
                    Err(e) => {
                        tracing::warn!(netns = %path.display(), error = %e, "not searched for ports");
                        continue;
                    }
                };
                for link in links {
                    let Some(tag) = link.alias.as_deref().and_then(DeviceTag::from_alias) else { continue };
                    if tag.owner != owner {
                        continue;
                    }
                    match self.saved_from_device(&path, link, tag).await {
                        Ok(saved) => match ports.get(&saved.id) {
                            Some(first) => tracing::warn!(port = %saved.id, first = %describe(first),
                                second = %describe(&saved), "two devices claim one port id: the second not recovered"),
                            None => {
                                ports.insert(saved.id, saved);
                            }
                        },
                        Err(reason) => {
                            tracing::warn!(netns = %path.display(), %reason, "tagged device not recovered")
                        }
                    }
                }
            }
        }
        StateFile { version: state::VERSION, ports: ports.into_values().collect() }
    }

    async fn saved_from_device(
        &self,
        netns: &std::path::Path,
        link: LinkInfo,
        tag: DeviceTag,
    ) -> Result<SavedPort, String> {
        let backend = match link.kind {
            LinkKind::Tun => Backend::Tap,
            LinkKind::Veth => Backend::Afxdp,
            LinkKind::Other => return Err(format!("{} is neither a TAP nor a veth", link.name)),
        };
        let host = (backend == Backend::Afxdp).then(|| host_ifname(tag.id));
        if let Some(host) = &host {
            // The node's copy is out of the pod's reach: the pod's counts only if equal.
            let host_alias = self.netlink.link(host).await.map_err(|e| e.to_string())?.and_then(|l| l.alias);
            if host_alias != link.alias {
                return Err(format!("{}: its node end {host} is gone or tagged differently", link.name));
            }
        }
        let mac = link.mac.ok_or_else(|| format!("{} has no MAC", link.name))?;
        let mtu = link
            .mtu
            .and_then(|m| u16::try_from(m).ok())
            .ok_or_else(|| format!("{} has no usable MTU", link.name))?;
        Ok(SavedPort {
            id: tag.id,
            container_id: tag.container_id,
            ifname: link.name,
            netns: netns.to_path_buf(),
            backend,
            mac: MacAddr(mac),
            ips: tag.ips,
            mtu,
            host_ifname: host,
            pod: tag.pod,
            network: tag.network,
        })
    }

    // ---- state and views ----------------------------------------------------------

    fn save_state(&self) -> Result<(), AttachError> {
        let state = StateFile {
            version: state::VERSION,
            ports: self.pods.values().map(|p| p.saved.clone()).collect(),
        };
        blocking(|| state::save(&self.config.state_file, &state))?;
        Ok(())
    }

    fn find(&self, container_id: &str, ifname: &str) -> Option<&PodPort> {
        self.pods.values().find(|p| p.saved.container_id == container_id && p.saved.ifname == ifname)
    }

    fn pod_info(&self, p: &PodPort) -> PortInfo {
        PortInfo {
            id: p.saved.id.0,
            kind: ApiPortKind::Pod,
            container_id: p.saved.container_id.clone(),
            ifname: p.saved.ifname.clone(),
            netns: p.saved.netns.clone(),
            host_ifname: p.saved.host_ifname.clone(),
            mac: p.saved.mac.to_string(),
            ips: p.saved.ips.clone(),
            mtu: p.saved.mtu,
            backend: p.saved.backend,
            workers: p.workers.clone(),
            offloads: p.saved.backend == Backend::Tap && self.config.offloads,
            pod: p.saved.pod.clone(),
            network: p.saved.network.clone(),
        }
    }

    /// Every port, the host port first.
    pub fn ports(&self) -> Vec<PortInfo> {
        let mut out = Vec::with_capacity(self.pods.len() + 1);
        if let Some(h) = &self.host {
            let prefix = self.config.pod_cidr.prefix_len();
            out.push(PortInfo {
                id: HOST_PORT_ID.0,
                kind: ApiPortKind::Host,
                container_id: String::new(),
                ifname: h.name.clone(),
                netns: PathBuf::new(),
                host_ifname: None,
                mac: self.config.gateway_mac.to_string(),
                ips: vec![IpNet::new(IpAddr::V4(self.config.gateway_ip), prefix).expect("valid prefix")],
                mtu: self.config.mtu,
                backend: Backend::Tap,
                workers: h.workers.clone(),
                offloads: self.config.offloads,
                pod: None,
                network: None,
            });
        }
        if let Some(u) = &self.uplink {
            out.push(PortInfo {
                id: u.id.0,
                kind: ApiPortKind::Uplink,
                container_id: String::new(),
                ifname: u.name.clone(),
                netns: PathBuf::new(),
                host_ifname: None,
                mac: u.mac.to_string(),
                ips: self.config.node_ip.map(|ip| IpNet::from(IpAddr::V4(ip))).into_iter().collect(),
                mtu: u.mtu,
                backend: Backend::Afxdp,
                workers: u.workers.clone(),
                offloads: false,
                pod: None,
                network: None,
            });
        }
        out.extend(self.pods.values().map(|p| self.pod_info(p)));
        out
    }

    pub fn port(&self, container_id: &str, ifname: &str) -> Option<PortInfo> {
        self.find(container_id, ifname).map(|p| self.pod_info(p))
    }

    /// Port names by id, for stats and FDB dumps.
    pub fn port_names(&self) -> BTreeMap<PortId, String> {
        let mut names: BTreeMap<PortId, String> = self
            .pods
            .values()
            .map(|p| (p.saved.id, format!("{}/{}", short(&p.saved.container_id), p.saved.ifname)))
            .collect();
        if let Some(h) = &self.host {
            names.insert(HOST_PORT_ID, h.name.clone());
        }
        if let Some(u) = &self.uplink {
            names.insert(u.id, format!("uplink {}", u.name));
        }
        if let Some(p) = self.overlay.port.as_ref().and_then(|(id, _)| self.builder.port(*id)) {
            names.insert(p.id, format!("underlay {}", p.name));
        }
        names
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Stops the data plane, leaving every device in place for the next start: TAPs are
    /// persistent, veth pairs stay, and the state file lists them all.
    pub fn shutdown(self) {
        if let Err(e) = self.save_state() {
            tracing::error!(error = %e, "saving state at shutdown");
        }
        self.datapath.shutdown();
    }

    pub fn pod_refs(&self) -> Vec<(String, String, Option<PodRef>)> {
        self.pods
            .values()
            .map(|p| (p.saved.container_id.clone(), p.saved.ifname.clone(), p.saved.pod.clone()))
            .collect()
    }
}

fn conflict(e: TablesError) -> AttachError {
    match e {
        TablesError::DuplicateIp { .. }
        | TablesError::DuplicateMac { .. }
        | TablesError::IpIsGateway { .. } => AttachError::Conflict(e.to_string()),
        other => AttachError::Invalid(other.to_string()),
    }
}

/// The first 12 characters of a container id, as `docker ps` shows it.
fn short(container_id: &str) -> &str {
    &container_id[..container_id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_macs_are_stable_and_local() {
        let ips = vec!["10.244.1.5/24".parse().unwrap()];
        assert_eq!(derive_mac(&ips, "c", "eth0").to_string(), "02:00:0a:f4:01:05");
        let v6only = vec!["fd00::5/64".parse().unwrap()];
        let a = derive_mac(&v6only, "c1", "eth0");
        assert_eq!(a, derive_mac(&v6only, "c1", "eth0"));
        assert_ne!(a, derive_mac(&v6only, "c2", "eth0"));
        assert!(!a.is_multicast() && a.0[0] & 0x02 != 0, "unicast, locally administered");
    }
}
