//! The ports as the API and the metrics show them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use vswitch_api::{Backend, PortInfo, PortKind as ApiPortKind};
use vswitch_dataplane::ids::PortId;

use super::{HOST_PORT_ID, PodPort, PortManager, short};
use crate::state::SavedPort;

impl PortManager {
    pub(super) fn pod_info(&self, p: &PodPort) -> PortInfo {
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

    /// Every port: the host port first, the uplink, then the pods.
    pub(crate) fn ports(&self) -> Vec<PortInfo> {
        let mut out = Vec::with_capacity(self.pods.len() + 2);
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
                ips: vec![IpNet::from(IpAddr::V4(u.node_ip))],
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

    pub(crate) fn port(&self, container_id: &str, ifname: &str) -> Option<PortInfo> {
        self.find(container_id, ifname).map(|p| self.pod_info(p))
    }

    /// Port names by id, for stats and FDB dumps; a port keeps its name across
    /// restarts (not always its id).
    pub(crate) fn port_names(&self) -> BTreeMap<PortId, String> {
        let mut names = self.port_names_of(self.pods.values().map(|p| &p.saved));
        if let Some(u) = &self.uplink {
            names.insert(u.id, format!("uplink {}", u.name));
        }
        if let Some(u) = &self.underlay {
            names.insert(u.id, format!("underlay {}", u.name));
        }
        names
    }

    /// The names the host port and the pods `saved` have or will have once attached.
    pub(crate) fn port_names_of<'a>(
        &self,
        saved: impl IntoIterator<Item = &'a SavedPort>,
    ) -> BTreeMap<PortId, String> {
        let mut names: BTreeMap<PortId, String> =
            saved.into_iter().map(|p| (p.id, format!("{}/{}", short(&p.container_id), p.ifname))).collect();
        if let Some(h) = &self.host {
            names.insert(HOST_PORT_ID, h.name.clone());
        }
        names
    }

    pub(crate) fn pod_count(&self) -> usize {
        self.pods.len()
    }
}
