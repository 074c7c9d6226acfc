//! The Services side of the control plane: takes Services from the services file or
//! the cluster into the [`ServiceCatalog`], publishes the table it builds, cuts UDP
//! flows to endpoints that stopped serving, and shows the Services and the tracked
//! flows.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use vswitch_api::{ConntrackView, Flow, Protocol, Service, ServicesView};
use vswitch_dataplane::datapath::Datapath;
use vswitch_dataplane::tables::conntrack::Tuple;
use vswitch_dataplane::tables::services::RememberedPort;
use vswitch_dataplane::wire::parse::IPPROTO_UDP;

use crate::catalog::{FileOutcome, ServiceCatalog};
use crate::cluster::translate::ServiceKey;
use crate::config::{Config, ConfigError};
use crate::plane::Plane;

pub(crate) struct ServiceController {
    catalog: ServiceCatalog,
}

impl ServiceController {
    /// No Services yet; their table goes into `plane` (published with the next change).
    pub(crate) fn new(config: &Config, plane: &mut Plane) -> ServiceController {
        let catalog = ServiceCatalog::new(config);
        plane.tables.set_services(catalog.table());
        ServiceController { catalog }
    }

    /// Takes the services file's content (`None`: absent); true if the Services changed
    /// (call [`ServiceController::applied`] after updating what depends on them). A
    /// content seen before is not parsed again unless `force`. On an error, the
    /// Services served before stay.
    pub(crate) fn file_read(
        &mut self,
        plane: &Plane,
        text: Option<String>,
        force: bool,
    ) -> Result<bool, ConfigError> {
        match self.catalog.file_read(text, force, plane.datapath.conntrack()) {
            FileOutcome::Unchanged => Ok(false),
            FileOutcome::Rejected(e) => Err(e),
            FileOutcome::Applied => Ok(true),
        }
    }

    /// Takes `services` (from the cluster), replacing what was served; true if that is
    /// a change (then call [`ServiceController::applied`]).
    pub(crate) fn set(&mut self, plane: &Plane, services: Vec<Service>) -> bool {
        if services == self.catalog.services() {
            return false;
        }
        self.catalog.set(services, plane.datapath.conntrack());
        true
    }

    /// Changes the Services named (from the cluster), the others staying; true if that
    /// is a change (then call [`ServiceController::applied`]).
    pub(crate) fn update(&mut self, plane: &Plane, upsert: Vec<Service>, removed: &[ServiceKey]) -> bool {
        self.catalog.update(upsert, removed, plane.datapath.conntrack())
    }

    /// The node's address, once known: NodePorts are served there.
    pub(crate) fn set_node_ip(&mut self, plane: &mut Plane, ip: Ipv4Addr) {
        self.catalog.set_node_ip(ip, plane.datapath.conntrack());
        plane.tables.set_services(self.catalog.table());
    }

    /// Publishes the Services the catalog took.
    pub(crate) fn publish(&self, plane: &mut Plane) {
        plane.tables.set_services(self.catalog.table());
        plane.publish_or_log();
    }

    /// After the new Services are published: cuts UDP flows to endpoints that stopped
    /// serving, and stops recognising what only they kept.
    pub(crate) fn applied(&mut self, plane: &mut Plane) {
        let cut = self.catalog.cut_stale_flows(plane.datapath.conntrack());
        tracing::info!(
            services = self.catalog.services().len(),
            generation = self.catalog.generation(),
            udp_flows_cut = cut,
            "services applied"
        );
        if cut > 0 {
            self.housekeeping(plane);
        }
    }

    /// Takes the previous run's Service port ids and Maglev sizes: before any Services.
    pub(crate) fn carry_over(&mut self, ports: &[RememberedPort], last_id: u32) {
        self.catalog.carry_over(ports, last_id);
    }

    /// The Service port ids and Maglev sizes to carry over a restart.
    pub(crate) fn remembered(&self) -> (Vec<RememberedPort>, u32) {
        self.catalog.remembered()
    }

    /// Flows were put back into conntrack: publishes a table that recognises them.
    pub(crate) fn flows_restored(&mut self, plane: &mut Plane, flows: &[(Tuple, Tuple)]) {
        plane.tables.set_services(self.catalog.flows_restored(flows));
        plane.publish_or_log();
    }

    /// After conntrack housekeeping: stops recognising VIPs and endpoints kept only for
    /// flows that have ended.
    pub(crate) fn housekeeping(&mut self, plane: &mut Plane) {
        if let Some(t) = self.catalog.refresh(plane.datapath.conntrack()) {
            plane.tables.set_services(t);
            plane.publish_or_log();
        }
    }

    /// Every Service served.
    pub(crate) fn all(&self) -> &[Service] {
        self.catalog.services()
    }

    /// The ClusterIPs served (a headless Service has none).
    pub(crate) fn cluster_ips(&self) -> BTreeSet<Ipv4Addr> {
        self.catalog.services().iter().map(|s| s.cluster_ip).filter(|ip| !ip.is_unspecified()).collect()
    }

    /// The (IP protocol, port) pairs of the NodePorts served.
    pub(crate) fn node_ports(&self) -> BTreeSet<(u8, u16)> {
        self.catalog.table().node_ports().map(|(port, proto)| (proto, port)).collect()
    }

    pub(crate) fn view(&self) -> ServicesView {
        self.catalog.view()
    }

    pub(crate) fn file(&self) -> Option<&Path> {
        self.catalog.file()
    }

    /// The tracked flows, at most `limit`.
    pub(crate) fn conntrack_view(&self, datapath: &Datapath, limit: usize) -> ConntrackView {
        let ct = datapath.conntrack();
        let now = datapath.now();
        let flows = ct.snapshot();
        let truncated = flows.len() > limit;
        let addr = SocketAddrV4::new;
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
                        protocol: if c.orig.proto == IPPROTO_UDP { Protocol::Udp } else { Protocol::Tcp },
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
}
