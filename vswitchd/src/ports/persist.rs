//! What survives a restart: the state file listing every pod port, the tags each
//! port's devices carry, re-attaching the ports of the previous run, and finding them
//! by their tags when the file is lost.

use std::collections::BTreeMap;
use std::path::Path;

use vswitch_api::Backend;
use vswitch_dataplane::ids::{PortId, WorkerId};
use vswitch_dataplane::queue::PortQueue;
use vswitch_dataplane::wire::MacAddr;
use vswitch_sys::SysError;

use super::kernel::{LinkInfo, LinkKind};
use super::{AttachError, HOST_PORT_ID, PodPort, PortManager, describe, host_ifname, label};
use crate::plane::Plane;
use crate::state::{self, DeviceTag, SavedPort, StateFile};

/// Where CNI runtimes (containerd, CRI-O, `ip netns`) bind-mount pods' network
/// namespaces: scanned for tagged devices when the state file is lost.
pub(crate) const NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// What a restart found.
#[derive(Debug, Default)]
pub(crate) struct RestoreReport {
    pub restored: Vec<String>,
    /// Ports that could not be re-attached, with the reason (dropped from the state).
    pub dropped: Vec<(String, String)>,
}

impl PortManager {
    /// Every pod port as attached, as the state file lists them.
    pub(crate) fn state(&self) -> StateFile {
        StateFile { version: state::VERSION, ports: self.pods.values().map(|p| p.saved.clone()).collect() }
    }

    /// Writes the state file: every pod port as attached.
    pub(crate) fn save_state(&self) -> Result<(), AttachError> {
        let state = self.state();
        super::blocking(|| state::save(&self.config.state_file, &state))?;
        Ok(())
    }

    /// Re-attaches the ports of a previous run. A port whose namespace or interface is
    /// gone (the pod went away while we were down) is dropped, not fatal.
    pub(crate) fn restore(&mut self, plane: &mut Plane, state: StateFile) -> RestoreReport {
        let mut report = RestoreReport::default();
        for saved in state.ports {
            let what = describe(&saved);
            match self.restore_one(plane, &saved, None) {
                Ok(workers) => {
                    if saved.backend == Backend::Afxdp {
                        self.xsk_load[workers[0]] += 1;
                    }
                    self.last_id = self.last_id.max(saved.id);
                    self.pods.insert(saved.id, PodPort { saved, workers });
                    report.restored.push(what);
                    // Each port's traffic resumes as soon as it is back, not after all.
                    if let Err(e) = plane.publish() {
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

    /// Re-attaches one port: its queues opened again, or `adopted` (a takeover's).
    pub(super) fn restore_one(
        &mut self,
        plane: &mut Plane,
        saved: &SavedPort,
        adopted: Option<Vec<Box<dyn PortQueue>>>,
    ) -> Result<Vec<WorkerId>, AttachError> {
        if saved.id == HOST_PORT_ID
            || saved.id.index() >= self.config.max_ports
            || self.pods.contains_key(&saved.id)
        {
            return Err(AttachError::UnusableId(saved.id));
        }
        plane.tables.clone().add_port(self.entry_for(saved, &[]))?;
        // A takeover's queues are the device itself, tagged already: nothing to look up
        // in the pod (the pause lasts as long as this takes).
        let handed = adopted.is_some();
        let workers = match saved.backend {
            Backend::Tap => {
                let queues = match adopted {
                    Some(queues) => queues,
                    None => {
                        self.kernel.open_netns(&saved.netns)?;
                        // Only the interface we made: same name and MAC.
                        let link = self.kernel.pod_link(&saved.netns, &saved.ifname)?;
                        if link.as_ref().and_then(|l| l.mac) != Some(saved.mac.0) {
                            return Err(AttachError::Gone(format!(
                                "{} with MAC {} is gone from the pod",
                                saved.ifname, saved.mac
                            )));
                        }
                        let opts = self.tap_options(plane, None, saved.mtu);
                        self.kernel.reopen_tap(Some(&saved.netns), &saved.ifname, &opts, &label(saved))?
                    }
                };
                let workers: Vec<WorkerId> = (0..plane.datapath.workers()).collect();
                Self::add_queues(plane, saved.id, queues, &workers)?;
                workers
            }
            Backend::Afxdp if let Some(queues) = adopted => {
                let worker = self.least_loaded_worker();
                Self::add_queues(plane, saved.id, queues, &[worker])?;
                vec![worker]
            }
            Backend::Afxdp => {
                self.kernel.open_netns(&saved.netns)?;
                let host = saved.host_ifname.as_deref().ok_or(AttachError::NoHostEnd(saved.id))?;
                let index = self
                    .kernel
                    .link(host)?
                    .ok_or_else(|| AttachError::Gone(format!("veth {host} is gone")))?
                    .index;
                self.kernel.detach_xdp(index)?;
                let q = self.kernel.open_xsk(host, self.xdp_mode(), &label(saved))?;
                let worker = self.least_loaded_worker();
                Self::add_queues(plane, saved.id, vec![q], &[worker])?;
                vec![worker]
            }
        };
        if let Err(e) = plane.tables.add_port(self.entry_for(saved, &workers)) {
            Self::remove_queues(plane, saved.id, &workers, false);
            return Err(e.into());
        }
        // Ports attached by an older daemon get their tags now.
        if !handed && let Err(e) = self.write_tags(saved) {
            tracing::warn!(port = %saved.id, error = %e, "tagging the port's devices");
        }
        Ok(workers)
    }

    /// The alias that tags this port's devices (see [`DeviceTag`]).
    pub(super) fn tag_alias(&self, saved: &SavedPort) -> Option<String> {
        let alias = DeviceTag::of(saved, &self.owner).to_alias();
        if alias.is_none() {
            tracing::warn!(container = %saved.container_id, ifname = %saved.ifname,
                "port identity too long for an interface alias: only the state file knows this port");
        }
        alias
    }

    fn write_tags(&self, saved: &SavedPort) -> Result<(), SysError> {
        let Some(alias) = self.tag_alias(saved) else { return Ok(()) };
        if let Some(host) = &saved.host_ifname {
            self.kernel.set_alias(self.kernel.index_of(host)?, &alias)?;
        }
        self.kernel.pod_configure(&saved.netns, &saved.ifname, Some(&alias), false)
    }

    /// With the state file lost (corrupt): the ports of the previous run whose devices
    /// still exist, from the tags attach wrote on them, searched in the namespaces under
    /// `dirs`. Re-attach them with [`PortManager::restore`], which checks each again.
    pub(crate) fn recover_from_devices(&self, dirs: &[&str]) -> StateFile {
        let mut ports: BTreeMap<PortId, SavedPort> = BTreeMap::new();
        for netns in self.kernel.namespaces(dirs) {
            let links = match self.kernel.pod_links(&netns) {
                Ok(links) => links,
                Err(e) => {
                    tracing::warn!(netns = %netns.display(), error = %e, "not searched for ports");
                    continue;
                }
            };
            for link in links {
                let Some(tag) = link.alias.as_deref().and_then(DeviceTag::from_alias) else { continue };
                if tag.owner != self.owner {
                    continue;
                }
                match self.saved_from_device(&netns, link, tag) {
                    Ok(saved) => match ports.get(&saved.id) {
                        Some(first) => tracing::warn!(port = %saved.id, first = %describe(first),
                            second = %describe(&saved), "two devices claim one port id: the second not recovered"),
                        None => {
                            ports.insert(saved.id, saved);
                        }
                    },
                    Err(reason) => {
                        tracing::warn!(netns = %netns.display(), %reason, "tagged device not recovered")
                    }
                }
            }
        }
        StateFile { version: state::VERSION, ports: ports.into_values().collect() }
    }

    fn saved_from_device(&self, netns: &Path, link: LinkInfo, tag: DeviceTag) -> Result<SavedPort, String> {
        let backend = match link.kind {
            LinkKind::Tun => Backend::Tap,
            LinkKind::Veth => Backend::Afxdp,
            LinkKind::Other => return Err(format!("{} is neither a TAP nor a veth", link.name)),
        };
        let host = (backend == Backend::Afxdp).then(|| host_ifname(tag.id));
        if let Some(host) = &host {
            // The node's copy is out of the pod's reach: the pod's counts only if equal.
            let host_alias = self.kernel.link(host).map_err(|e| e.to_string())?.and_then(|l| l.alias);
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
}
