//! The Services the node serves: the union of its sources (today the services file),
//! turned into the [`ServiceTable`] workers read.
//!
//! A change builds a new table and leaves every established flow alone, with two
//! deliberate exceptions that follow kube-proxy: a UDP flow whose endpoint no longer
//! serves is cut, so the client's next datagram is balanced afresh instead of vanishing
//! into a gone pod for the rest of the flow's timeout; and nothing else. A TCP flow to
//! an endpoint (or of a Service) that went away keeps being translated until it ends,
//! as the kernel's conntrack keeps NATing after kube-proxy removed a rule: the table
//! keeps recognising the VIPs and endpoints such flows use ("retired") until conntrack
//! forgets the flows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vswitch_api::{Service, ServicesView};

use crate::cluster::translate::ServiceKey;

use super::config::{Config, ConfigError};
use super::services_file::{self, NodeView};
use vswitch_dataplane::tables::conntrack::{Conn, Conntrack, Tuple};
use vswitch_dataplane::tables::services::{BuildMemory, RememberedPort, ServiceTable};
use vswitch_dataplane::wire::parse::IPPROTO_UDP;

pub(crate) struct ServiceCatalog {
    node: NodeView,
    file: Option<PathBuf>,
    /// The file's content last looked at (`None`: absent), applied or not.
    file_text: Option<Option<String>>,
    file_error: Option<ConfigError>,
    services: Vec<Service>,
    memory: BuildMemory,
    /// The table of `services` alone.
    base: Arc<ServiceTable>,
    /// `base` plus what established flows still need; what workers have.
    published: Arc<ServiceTable>,
    generation: u64,
}

/// What reading the services file did.
#[derive(Debug, PartialEq)]
pub(crate) enum FileOutcome {
    /// Same content as last time.
    Unchanged,
    /// New Services to publish.
    Applied,
    /// The content is invalid; the previous Services stay.
    Rejected(ConfigError),
}

impl ServiceCatalog {
    pub(crate) fn new(config: &Config) -> ServiceCatalog {
        let base = Arc::new(ServiceTable::build(
            &[],
            config.node_ip,
            config.hairpin_ip,
            &mut BuildMemory::default(),
        ));
        ServiceCatalog {
            node: NodeView::of(config),
            file: config.services_file.clone(),
            file_text: None,
            file_error: None,
            services: Vec::new(),
            memory: BuildMemory::default(),
            published: base.clone(),
            base,
            generation: 0,
        }
    }

    pub(crate) fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The table workers should have.
    pub(crate) fn table(&self) -> Arc<ServiceTable> {
        self.published.clone()
    }

    /// Takes the services file's current content (`None`: the file does not exist,
    /// which means no Services). Content seen before is not parsed again unless `force`.
    pub(crate) fn file_read(&mut self, text: Option<String>, force: bool, ct: &Conntrack) -> FileOutcome {
        if !force && self.file_text.as_ref() == Some(&text) {
            return FileOutcome::Unchanged;
        }
        let path = self.file.clone().unwrap_or_default();
        let parsed = match &text {
            Some(t) => services_file::parse(t, &path, &self.node),
            None => Ok(Vec::new()),
        };
        self.file_text = Some(text);
        match parsed {
            Ok(services) => {
                self.file_error = None;
                if services == self.services && !force {
                    return FileOutcome::Unchanged;
                }
                self.set(services, ct);
                FileOutcome::Applied
            }
            Err(e) => {
                self.file_error = Some(e.clone());
                FileOutcome::Rejected(e)
            }
        }
    }

    /// Replaces the Services. Publish [`Self::table`] next, then [`Self::cut_stale_flows`].
    pub(crate) fn set(&mut self, services: Vec<Service>, ct: &Conntrack) {
        let specs = services_file::port_specs(&services);
        self.base =
            Arc::new(ServiceTable::build(&specs, self.node.node_ip, self.node.hairpin_ip, &mut self.memory));
        self.published = Arc::new(self.base.keep_for_flows(ct.snapshot().iter().map(|c| &**c)));
        self.services = services;
        self.generation += 1;
    }

    /// Changes some Services, leaving the others as they are: `upsert` adds or replaces
    /// Services by namespace and name, `removed` names Services that are gone. The
    /// Services must have come in order of namespace and name (as the cluster's do),
    /// and the table is changed port by port, not rebuilt. False if nothing changed.
    /// Publish [`Self::table`] next, then [`Self::cut_stale_flows`].
    pub(crate) fn update(&mut self, upsert: Vec<Service>, removed: &[ServiceKey], ct: &Conntrack) -> bool {
        debug_assert!(
            self.services.is_sorted_by(|a, b| (&a.namespace, &a.name) <= (&b.namespace, &b.name)),
            "update() needs the Services in order (cluster mode sets them so; the file does not)"
        );
        let find = |services: &[Service], ns: &str, name: &str| {
            services.binary_search_by(|s| (s.namespace.as_str(), s.name.as_str()).cmp(&(ns, name)))
        };
        let mut gone_ports = Vec::new();
        for key in removed {
            if let Ok(i) = find(&self.services, &key.namespace, &key.name) {
                let old = self.services.remove(i);
                gone_ports.extend(old.ports.iter().map(|p| services_file::port_spec_name(&old, p)));
            }
        }
        let mut changed = Vec::new();
        for svc in upsert {
            match find(&self.services, &svc.namespace, &svc.name) {
                Ok(i) if self.services[i] == svc => {}
                Ok(i) => {
                    let old = std::mem::replace(&mut self.services[i], svc.clone());
                    let kept: Vec<String> =
                        svc.ports.iter().map(|p| services_file::port_spec_name(&svc, p)).collect();
                    gone_ports.extend(
                        old.ports
                            .iter()
                            .map(|p| services_file::port_spec_name(&old, p))
                            .filter(|n| !kept.contains(n)),
                    );
                    changed.push(svc);
                }
                Err(i) => {
                    self.services.insert(i, svc.clone());
                    changed.push(svc);
                }
            }
        }
        if gone_ports.is_empty() && changed.is_empty() {
            return false;
        }
        let specs = services_file::port_specs(&changed);
        Arc::make_mut(&mut self.base).update(gone_ports.iter().map(String::as_str), &specs, &mut self.memory);
        self.published = Arc::new(self.base.keep_for_flows(ct.snapshot().iter().map(|c| &**c)));
        self.generation += 1;
        true
    }

    /// The node's address became known (from the uplink): rebuilds the table with it.
    pub(crate) fn set_node_ip(&mut self, ip: std::net::Ipv4Addr, ct: &Conntrack) {
        self.node.node_ip = Some(ip);
        self.set(self.services.clone(), ct);
    }

    /// Whether a flow's endpoint has stopped serving (or its Service is gone).
    fn stale(&self, c: &Conn) -> bool {
        !self.base.by_id(c.service).is_some_and(|p| p.serves(c.reply.src, c.reply.src_port))
    }

    /// Cuts UDP flows whose endpoint no longer serves, after the table that no longer
    /// sends new flows there is published. Returns how many.
    pub(crate) fn cut_stale_flows(&self, ct: &Conntrack) -> usize {
        ct.remove_where(|c| c.orig.proto == IPPROTO_UDP && self.stale(c))
    }

    /// After conntrack expired flows: a table that stops recognising what no flow uses
    /// any more, if that changed.
    pub(crate) fn refresh(&mut self, ct: &Conntrack) -> Option<Arc<ServiceTable>> {
        if self.published.retired() == 0 {
            return None;
        }
        let table = self.base.keep_for_flows(ct.snapshot().iter().map(|c| &**c));
        if table.retired() == self.published.retired() {
            return None;
        }
        self.published = Arc::new(table);
        Some(self.published.clone())
    }

    /// The Services served.
    pub(crate) fn services(&self) -> &[Service] {
        &self.services
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn view(&self) -> ServicesView {
        ServicesView {
            file: self.file.clone(),
            file_error: self.file_error.as_ref().map(ToString::to_string),
            generation: self.generation,
            services: self.services.clone(),
        }
    }

    /// Takes the previous run's Service port ids and Maglev sizes (from a tables
    /// snapshot), for the ports of those names when they come: before any Services do.
    pub(crate) fn carry_over(&mut self, ports: &[RememberedPort], last_id: u32) {
        self.memory = BuildMemory::carried_over(ports, last_id);
    }

    /// The Service port ids and Maglev sizes to carry over a restart, with the last id.
    pub(crate) fn remembered(&self) -> (Vec<RememberedPort>, u32) {
        self.memory.records()
    }

    /// Flows were put back into conntrack (a restart): the table to publish recognises
    /// their VIPs and endpoints, whether or not their Services have come yet.
    /// Only `flows` are looked at (the table published keeps what earlier flows use):
    /// a takeover puts flows back in several steps, and a scan of the whole table at
    /// each would lengthen its pause.
    pub(crate) fn flows_restored(&mut self, flows: &[(Tuple, Tuple)]) -> Arc<ServiceTable> {
        self.published = Arc::new(self.published.keep_for_tuples(flows.iter().copied()));
        self.published.clone()
    }

    /// `namespace/name:port` of a Service port by its stable id.
    pub(crate) fn port_name(&self, id: u32) -> Option<&str> {
        self.published.by_id(id).map(|p| p.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use vswitch_dataplane::tables::conntrack::{ConntrackConfig, Tuple};
    use vswitch_dataplane::wire::parse::IPPROTO_TCP;

    fn catalog() -> ServiceCatalog {
        let mut config = super::super::config::default_config();
        config.services_file = Some("/nonexistent/services.toml".into());
        ServiceCatalog::new(&config)
    }

    fn file(endpoints: &[&str]) -> Option<String> {
        let eps: Vec<String> = endpoints.iter().map(|e| format!("{{ ip = \"{e}\" }}")).collect();
        Some(format!(
            "[[service]]\nname = \"dns\"\ncluster_ip = \"10.96.0.53\"\n\
             ports = [{{ name = \"udp\", protocol = \"UDP\", port = 53 }}, {{ name = \"tcp\", port = 53 }}]\n\
             endpoints = [{}]\n",
            eps.join(", ")
        ))
    }

    fn flow(c: &ServiceCatalog, ct: &Conntrack, proto: u8, endpoint: [u8; 4], client_port: u16) {
        let sp = c.table().by_vip(Ipv4Addr::new(10, 96, 0, 53), 53, proto).unwrap().clone();
        let orig = Tuple {
            proto,
            src: Ipv4Addr::new(10, 244, 1, 50),
            src_port: client_port,
            dst: sp.vip,
            dst_port: 53,
        };
        let reply = Tuple { proto, src: endpoint.into(), src_port: 53, dst: orig.src, dst_port: client_port };
        ct.batch().insert(orig, reply, sp.id, None, 0).unwrap();
    }

    #[test]
    fn the_file_is_applied_when_it_changes_and_kept_when_it_is_wrong() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let mut c = catalog();
        assert_eq!(c.file_read(None, false, &ct), FileOutcome::Unchanged, "absent and empty is no change");
        assert_eq!(c.file_read(file(&["10.244.1.5"]), false, &ct), FileOutcome::Applied);
        assert_eq!(c.file_read(file(&["10.244.1.5"]), false, &ct), FileOutcome::Unchanged);
        assert_eq!(c.view().generation, 1);
        let FileOutcome::Rejected(e) = c.file_read(Some("[[service]]\nname = 3\n".into()), false, &ct) else {
            panic!("accepted a bad file")
        };
        assert_eq!((e.line, e.field.as_str()), (2, "service.name"));
        assert!(c.table().by_vip(Ipv4Addr::new(10, 96, 0, 53), 53, IPPROTO_UDP).is_some(), "kept");
        assert!(c.view().file_error.unwrap().contains(":2: service.name"));
        // Deleting the file removes the Services.
        assert_eq!(c.file_read(None, false, &ct), FileOutcome::Applied);
        assert!(c.table().is_empty() && c.view().file_error.is_none());
    }

    #[test]
    fn udp_flows_to_an_endpoint_gone_are_cut_tcp_flows_kept() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let mut c = catalog();
        c.file_read(file(&["10.244.1.5", "10.244.1.6"]), false, &ct);
        flow(&c, &ct, IPPROTO_UDP, [10, 244, 1, 5], 1000);
        flow(&c, &ct, IPPROTO_UDP, [10, 244, 1, 6], 1001);
        flow(&c, &ct, IPPROTO_TCP, [10, 244, 1, 5], 1002);
        c.file_read(file(&["10.244.1.6"]), false, &ct);
        assert_eq!(c.cut_stale_flows(&ct), 1, "only the UDP flow to .5");
        assert_eq!(ct.len(), 2);
        let t = c.refresh(&ct).expect("the cut UDP flow no longer needs its endpoint");
        assert!(!t.is_endpoint(Ipv4Addr::new(10, 244, 1, 5), 53, IPPROTO_UDP));
        // The TCP flow's endpoint is retired, not forgotten, while the flow lives.
        assert!(t.is_endpoint(Ipv4Addr::new(10, 244, 1, 5), 53, IPPROTO_TCP));
        assert!(c.refresh(&ct).is_none(), "nothing changed");
        ct.remove_where(|f| f.orig.proto == IPPROTO_TCP);
        let t = c.refresh(&ct).expect("the flow ended");
        assert!(!t.is_endpoint(Ipv4Addr::new(10, 244, 1, 5), 53, IPPROTO_TCP));
        assert_eq!(t.retired(), 0);
    }

    fn service(name: &str, vip: u8, endpoints: &[u8], ready: bool) -> Service {
        let eps: Vec<String> =
            endpoints.iter().map(|e| format!("{{ ip = \"10.244.1.{e}\", ready = {ready} }}")).collect();
        let text = format!(
            "[[service]]\nname = \"{name}\"\ncluster_ip = \"10.96.0.{vip}\"\n\
             ports = [{{ name = \"tcp\", port = 80, target_port = 8080 }}]\nendpoints = [{}]\n",
            eps.join(", ")
        );
        let node = NodeView::of(&super::super::config::default_config());
        services_file::parse(&text, Path::new("services.toml"), &node).unwrap().remove(0)
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey { namespace: "default".into(), name: name.into() }
    }

    #[test]
    fn an_update_of_some_services_serves_what_setting_them_all_would() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let mut c = catalog();
        c.set(
            vec![service("a", 10, &[5], true), service("b", 11, &[6], true), service("c", 12, &[7], true)],
            &ct,
        );
        let a_id = c.table().by_vip(Ipv4Addr::new(10, 96, 0, 10), 80, IPPROTO_TCP).unwrap().id;
        let (a2, d) = (service("a", 10, &[5, 8], false), service("d", 13, &[9], true));
        assert!(c.update(vec![a2.clone(), d.clone()], &[key("b")], &ct));
        assert!(!c.update(vec![d.clone()], &[key("nothing")], &ct), "the same again is no change");

        let mut whole = catalog();
        whole.set(vec![a2, service("c", 12, &[7], true), d], &ct);
        assert_eq!(c.services(), whole.services(), "in order of namespace and name");
        assert_eq!(c.view().generation, 2);
        let a = c.table().by_vip(Ipv4Addr::new(10, 96, 0, 10), 80, IPPROTO_TCP).cloned().unwrap();
        assert_eq!(a.id, a_id, "a changed Service port keeps its id (and so its flows)");
        for vip in 10..14 {
            let (got, want) = (c.table(), whole.table());
            let lookup = |t: &ServiceTable| {
                t.by_vip(Ipv4Addr::new(10, 96, 0, vip), 80, IPPROTO_TCP)
                    .map(|p| (p.backends.clone(), p.endpoints.clone()))
            };
            assert_eq!(lookup(&got), lookup(&want), "10.96.0.{vip}");
        }
        for e in 4..10 {
            let ip = Ipv4Addr::new(10, 244, 1, e);
            assert_eq!(
                c.table().is_endpoint(ip, 8080, IPPROTO_TCP),
                whole.table().is_endpoint(ip, 8080, IPPROTO_TCP)
            );
        }
    }
}
