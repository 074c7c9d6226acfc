//! Attaching a pod — its interface made in its namespace and the switch port behind
//! it — and detaching it; ports of pods that vanished without a detach.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use vswitch_api::{AttachRequest, Backend, PortInfo};
use vswitch_dataplane::ids::{PortId, WorkerId, WorkerSet};
use vswitch_dataplane::port::afxdp;
use vswitch_dataplane::tables::{PortEntry, PortKind};
use vswitch_dataplane::wire::MacAddr;
use vswitch_sys::netns::NetnsError;

use super::{AttachError, PodPort, PortManager, RequestError, derive_mac, host_ifname, label, short};
use crate::plane::{POD_SEGMENT, Plane};
use crate::state::SavedPort;

impl PortManager {
    /// Attaches a pod. Returns the port and whether it was created now (false: the same
    /// attachment already existed, e.g. a retried CNI ADD).
    pub(crate) fn attach(
        &mut self,
        plane: &mut Plane,
        req: &AttachRequest,
    ) -> Result<(PortInfo, bool), AttachError> {
        vswitch_api::validate_container_id(&req.container_id).map_err(RequestError::ContainerId)?;
        vswitch_api::validate_ifname(&req.ifname).map_err(RequestError::Ifname)?;
        let backend = req.backend.unwrap_or(self.config.port_backend);
        let mtu = req.mtu.unwrap_or(self.config.mtu);
        let mac = match &req.mac {
            Some(text) => text.parse::<MacAddr>().map_err(RequestError::from)?,
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
                Err(AttachError::AlreadyAttached {
                    container_id: req.container_id.clone(),
                    ifname: req.ifname.clone(),
                })
            };
        }
        self.validate(req, backend, mtu, mac)?;
        let id = self.free_id()?;
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
        // Conflicts (IP or MAC in use) are found before any device exists.
        plane.tables.clone().add_port(self.entry_for(&saved, &[]))?;
        if self.kernel.is_daemon_netns(&req.netns)? {
            return Err(AttachError::NodeNamespace(req.netns.clone()));
        }
        if self.kernel.pod_link(&req.netns, &req.ifname)?.is_some() {
            return Err(AttachError::InterfaceExists {
                netns: req.netns.clone(),
                ifname: req.ifname.clone(),
            });
        }
        let workers = match backend {
            Backend::Tap => self.create_tap_port(plane, &saved)?,
            Backend::Afxdp => self.create_afxdp_port(plane, &saved)?,
        };
        let entry = self.entry_for(&saved, &workers);
        let published =
            plane.tables.add_port(entry).map_err(AttachError::from).and_then(|()| Ok(plane.publish()?));
        if let Err(e) = published {
            plane.tables.remove_port(id);
            self.destroy(plane, &saved, &workers);
            return Err(e);
        }
        if backend == Backend::Afxdp {
            self.xsk_load[workers[0]] += 1;
        }
        self.pods.insert(id, PodPort { saved, workers });
        // Up only now: the pod's first frames (IPv6 DAD, ...) find its port in the tables.
        let saved = &self.pods[&id].saved;
        let up = self
            .kernel
            .pod_configure(&saved.netns, &saved.ifname, self.tag_alias(saved).as_deref(), true)
            .map_err(AttachError::from)
            .and_then(|()| self.save_state());
        if let Err(e) = up {
            // Not usable, or would not survive a restart: undo, so the caller's retry
            // starts from a clean slate.
            let port = self.pods.remove(&id).expect("just inserted");
            self.undo_attach(plane, port);
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
            return Err(RequestError::NoAddress.into());
        }
        let cidr = self.config.pod_cidr;
        for (i, net) in req.ips.iter().enumerate() {
            if req.ips[..i].iter().any(|n| n.addr() == net.addr()) {
                return Err(RequestError::ListedTwice(net.addr()).into());
            }
            if let IpAddr::V6(v6) = net.addr()
                && (v6.is_unspecified() || v6.is_multicast() || v6.is_loopback())
            {
                return Err(RequestError::NotUnicast(v6).into());
            }
            if let IpAddr::V4(v4) = net.addr() {
                if !cidr.contains(&v4) || v4 == cidr.network() || v4 == cidr.broadcast() {
                    return Err(RequestError::OutsidePodCidr { ip: v4, cidr }.into());
                }
                if v4 == self.config.gateway_ip {
                    return Err(AttachError::GatewayIp(v4));
                }
            }
        }
        if !(576..=9000).contains(&mtu) {
            return Err(RequestError::Mtu(mtu).into());
        }
        if backend == Backend::Afxdp && usize::from(mtu) + 14 > afxdp::MAX_FRAME {
            return Err(RequestError::AfxdpMtu { mtu, max: afxdp::MAX_FRAME - 14 }.into());
        }
        if mac.is_multicast() || mac.is_zero() {
            return Err(RequestError::MacNotUnicast(mac).into());
        }
        if mac == self.config.gateway_mac {
            return Err(AttachError::GatewayMac(mac));
        }
        Ok(())
    }

    /// The port as the data path sees it, with TX queues on `workers`.
    pub(super) fn entry_for(&self, saved: &SavedPort, workers: &[WorkerId]) -> PortEntry {
        let v4: Vec<Ipv4Addr> = saved
            .ips
            .iter()
            .filter_map(|n| if let IpAddr::V4(a) = n.addr() { Some(a) } else { None })
            .collect();
        let v6: Vec<Ipv6Addr> = saved
            .ips
            .iter()
            .filter_map(|n| if let IpAddr::V6(a) = n.addr() { Some(a) } else { None })
            .collect();
        let mut tx_workers = WorkerSet::default();
        for w in workers {
            tx_workers.insert(*w);
        }
        PortEntry {
            id: saved.id,
            name: format!("{}/{}", short(&saved.container_id), saved.ifname),
            kind: PortKind::Pod,
            segment: POD_SEGMENT,
            mac: Some(saved.mac),
            ipv4: v4,
            ipv6: v6,
            port_security: true,
            mtu: saved.mtu,
            tx_workers,
            offloads: saved.backend == Backend::Tap && self.config.offloads,
            tunnel: false,
        }
    }

    /// TAP: create it in the pod as `ifname` (MAC, MTU, queues; still down), hand one
    /// queue to each worker.
    fn create_tap_port(&self, plane: &Plane, saved: &SavedPort) -> Result<Vec<WorkerId>, AttachError> {
        let opts = self.tap_options(plane, Some(saved.mac), saved.mtu);
        let queues = self.kernel.create_tap(Some(&saved.netns), &saved.ifname, &opts, &label(saved))?;
        let workers: Vec<WorkerId> = (0..plane.datapath.workers()).collect();
        // The queues `add_queues` could not place are gone with their persistence
        // still set: delete the device by name in the pod.
        if let Err(e) = Self::add_queues(plane, saved.id, queues, &workers) {
            self.delete_in_pod(saved);
            return Err(e);
        }
        Ok(workers)
    }

    /// AF_XDP: a veth pair whose pod end is made in the pod as `ifname` (still down,
    /// offloads off so it sends finished frames); the host end stays here and gets an
    /// XSK socket on the least loaded worker.
    fn create_afxdp_port(&self, plane: &Plane, saved: &SavedPort) -> Result<Vec<WorkerId>, AttachError> {
        let host = saved.host_ifname.as_deref().ok_or(AttachError::NoHostEnd(saved.id))?;
        // A leftover of an earlier run with this id: ours by its name.
        self.kernel.delete_link(host)?;
        // The pod's end is made right in the pod (no move across namespaces).
        self.kernel.add_veth(host, &saved.ifname, &saved.netns, saved.mac, saved.mtu)?;
        let worker = self.least_loaded_worker();
        let made = (|| {
            self.kernel.pod_disable_offloads(&saved.netns, &saved.ifname)?;
            let host_index = self.kernel.index_of(host)?;
            // The pod's end gets the same tag once it is up; this copy is out of the
            // pod's reach, and recovery trusts a veth only when both agree.
            if let Some(alias) = self.tag_alias(saved) {
                self.kernel.set_alias(host_index, &alias)?;
            }
            self.kernel.set_up(host_index)?;
            self.kernel.detach_xdp(host_index)?;
            let q = self.kernel.open_xsk(host, self.xdp_mode(), &label(saved))?;
            Self::add_queues(plane, saved.id, vec![q], &[worker])
        })();
        if let Err(e) = made {
            let _ = self.kernel.delete_link(host);
            return Err(e);
        }
        Ok(vec![worker])
    }

    /// Removes a pod's interface from inside its namespace, if both still exist.
    fn delete_in_pod(&self, saved: &SavedPort) {
        if self.kernel.open_netns(&saved.netns).is_err() {
            return;
        }
        if let Err(e) = self.kernel.pod_delete_link(&saved.netns, &saved.ifname) {
            tracing::warn!(error = %e, "deleting {} in {}", saved.ifname, saved.netns.display());
        }
    }

    /// Takes the port's queues back and removes its devices.
    fn destroy(&self, plane: &Plane, saved: &SavedPort, workers: &[WorkerId]) {
        Self::remove_queues(plane, saved.id, workers, true);
        match saved.backend {
            // Released and closed: the kernel removes the TAP. Deleting by name covers a
            // queue that could not be released.
            Backend::Tap => self.delete_in_pod(saved),
            Backend::Afxdp => {
                if let Some(host) = &saved.host_ifname
                    && let Err(e) = self.kernel.delete_link(host)
                {
                    tracing::warn!(error = %e, "deleting veth {host}");
                }
            }
        }
    }

    /// Forgets the AF_XDP queue of a port that goes.
    fn unload(&mut self, port: &PodPort) {
        if port.saved.backend == Backend::Afxdp {
            for w in &port.workers {
                self.xsk_load[*w] = self.xsk_load[*w].saturating_sub(1);
            }
        }
    }

    /// Reverses a completed attach (the port is no longer in `pods`).
    fn undo_attach(&mut self, plane: &mut Plane, port: PodPort) {
        plane.tables.remove_port(port.saved.id);
        plane.publish_or_log();
        self.unload(&port);
        self.destroy(plane, &port.saved, &port.workers);
    }

    /// Detaches a pod's port and removes its interface. True if there was one.
    pub(crate) fn detach(
        &mut self,
        plane: &mut Plane,
        container_id: &str,
        ifname: &str,
    ) -> Result<bool, AttachError> {
        let Some(id) = self.find(container_id, ifname).map(|p| p.saved.id) else {
            return Ok(false);
        };
        plane.tables.remove_port(id);
        plane.publish()?;
        let port = self.pods.remove(&id).expect("found above");
        self.unload(&port);
        self.destroy(plane, &port.saved, &port.workers);
        self.save_state()?;
        tracing::info!(port = %id, container = container_id, ifname, "detached");
        Ok(true)
    }

    /// Removes the ports of pods that went away without a detach (their network
    /// namespace is gone, or an AF_XDP port's veth): the pod was killed while no DEL
    /// could reach us. Nothing is left to delete; the counters of the port stay.
    /// Returns how many went.
    pub(crate) fn reap_vanished(&mut self, plane: &mut Plane) -> usize {
        let gone: Vec<PortId> = self
            .pods
            .values()
            .filter(|p| {
                let netns_gone = matches!(
                    self.kernel.open_netns(&p.saved.netns),
                    Err(NetnsError::NotFound(_) | NetnsError::NotANamespace(_))
                );
                let veth_gone =
                    p.saved.host_ifname.as_deref().is_some_and(|h| matches!(self.kernel.link(h), Ok(None)));
                netns_gone || veth_gone
            })
            .map(|p| p.saved.id)
            .collect();
        if gone.is_empty() {
            return 0;
        }
        for id in &gone {
            plane.tables.remove_port(*id);
        }
        plane.publish_or_log();
        for id in &gone {
            let port = self.pods.remove(id).expect("listed above");
            self.unload(&port);
            Self::remove_queues(plane, *id, &port.workers, false);
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
}
