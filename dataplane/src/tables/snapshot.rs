//! The snapshot workers read, and the builder the control plane edits.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::overlay::OverlayTable;
use super::ports::{ArpAnswer, PortEntry, PortKind, Segment, SegmentConfig};
use super::services::ServiceTable;
use crate::ids::{MAX_SEGMENTS, PortId, SegmentId};
use crate::wire::MacAddr;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Immutable forwarding state, as of one generation.
#[derive(Clone, Debug)]
pub struct Tables {
    generation: u64,
    ports: Vec<Option<PortEntry>>,
    segments: Vec<Option<Segment>>,
    static_macs: FastMap<u64, PortId>,
    arp: FastMap<u64, ArpAnswer>,
    services: Arc<ServiceTable>,
    overlay: Arc<OverlayTable>,
}

#[inline]
fn mac_key(segment: SegmentId, mac: MacAddr) -> u64 {
    (u64::from(segment.0) << 48) | mac.to_u64()
}

#[inline]
fn ip_key(segment: SegmentId, ip: Ipv4Addr) -> u64 {
    (u64::from(segment.0) << 32) | u64::from(u32::from(ip))
}

impl Tables {
    /// Tables with no ports and no segments.
    pub fn empty() -> Tables {
        TablesBuilder::default().build().expect("empty tables are valid")
    }

    /// Unique per snapshot, increasing in build order.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    #[inline]
    pub fn port(&self, id: PortId) -> Option<&PortEntry> {
        self.ports.get(id.index()).and_then(Option::as_ref)
    }

    pub fn ports(&self) -> impl Iterator<Item = &PortEntry> {
        self.ports.iter().flatten()
    }

    #[inline]
    pub fn segment(&self, id: SegmentId) -> Option<&Segment> {
        self.segments.get(id.index()).and_then(Option::as_ref)
    }

    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().flatten()
    }

    /// The port a MAC is statically bound to in a segment.
    #[inline]
    pub fn static_port(&self, segment: SegmentId, mac: MacAddr) -> Option<PortId> {
        self.static_macs.get(&mac_key(segment, mac)).copied()
    }

    /// Who has `ip` in `segment`, as the ARP proxy answers it.
    #[inline]
    pub fn arp_answer(&self, segment: SegmentId, ip: Ipv4Addr) -> Option<ArpAnswer> {
        self.arp.get(&ip_key(segment, ip)).copied()
    }

    /// The port that owns `ip` in any segment with a gateway (a routed segment), with
    /// that segment: where traffic routed to `ip` from another segment goes.
    pub fn routed_owner(&self, ip: Ipv4Addr) -> Option<(ArpAnswer, SegmentId)> {
        self.segments().filter(|s| s.config.gateway.is_some()).find_map(|s| {
            self.arp_answer(s.config.id, ip).filter(|a| a.port.is_some()).map(|a| (a, s.config.id))
        })
    }

    /// The Service table (empty when no Service is defined).
    #[inline]
    pub fn services(&self) -> &ServiceTable {
        &self.services
    }

    /// The remote nodes (empty on a single node).
    #[inline]
    pub fn overlay(&self) -> &OverlayTable {
        &self.overlay
    }
}

/// Why a set of ports and segments does not make valid tables.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TablesError {
    #[error("segment id {0} out of range (max {max})", max = MAX_SEGMENTS - 1)]
    SegmentOutOfRange(SegmentId),
    #[error("segment {0} already exists")]
    DuplicateSegment(SegmentId),
    #[error("port id {0} already in use")]
    DuplicatePort(PortId),
    #[error("port {port} refers to unknown segment {segment}")]
    UnknownSegment { port: PortId, segment: SegmentId },
    #[error("MAC {mac} in segment {segment} is already bound to port {existing}")]
    DuplicateMac { mac: MacAddr, segment: SegmentId, existing: PortId },
    #[error("IP {ip} in segment {segment} is already bound to port {existing}")]
    DuplicateIp { ip: IpAddr, segment: SegmentId, existing: PortId },
    #[error("IP {ip} is the gateway address of segment {segment}")]
    IpIsGateway { ip: Ipv4Addr, segment: SegmentId },
    #[error("port {port}: a port with port security needs a bound MAC")]
    SecurityWithoutMac { port: PortId },
    #[error("port {port}: a multicast MAC {mac} cannot be bound to a port")]
    MulticastMac { port: PortId, mac: MacAddr },
}

/// The desired state the control plane edits; [`TablesBuilder::build`] turns it into a
/// validated [`Tables`] snapshot.
#[derive(Clone, Debug, Default)]
pub struct TablesBuilder {
    segments: BTreeMap<SegmentId, SegmentConfig>,
    ports: BTreeMap<PortId, PortEntry>,
    services: Arc<ServiceTable>,
    overlay: Arc<OverlayTable>,
}

impl TablesBuilder {
    pub fn add_segment(&mut self, seg: SegmentConfig) -> Result<(), TablesError> {
        if seg.id.index() >= MAX_SEGMENTS {
            return Err(TablesError::SegmentOutOfRange(seg.id));
        }
        if self.segments.contains_key(&seg.id) {
            return Err(TablesError::DuplicateSegment(seg.id));
        }
        self.segments.insert(seg.id, seg);
        Ok(())
    }

    /// Adds a port after checking it against everything already present, so a conflict
    /// is reported to whoever asked for the port, not discovered at build time. Address
    /// conflicts are reported before MAC ones (a MAC is often derived from the address).
    pub fn add_port(&mut self, port: PortEntry) -> Result<(), TablesError> {
        if self.ports.contains_key(&port.id) {
            return Err(TablesError::DuplicatePort(port.id));
        }
        let Some(seg) = self.segments.get(&port.segment) else {
            return Err(TablesError::UnknownSegment { port: port.id, segment: port.segment });
        };
        if port.port_security && port.mac.is_none() {
            return Err(TablesError::SecurityWithoutMac { port: port.id });
        }
        for ip in &port.ipv4 {
            if seg.gateway.map(|g| g.ip) == Some(*ip) {
                return Err(TablesError::IpIsGateway { ip: *ip, segment: port.segment });
            }
            if let Some(existing) =
                self.ports.values().find(|p| p.segment == port.segment && p.ipv4.contains(ip))
            {
                return Err(TablesError::DuplicateIp {
                    ip: IpAddr::V4(*ip),
                    segment: port.segment,
                    existing: existing.id,
                });
            }
        }
        for ip in &port.ipv6 {
            if let Some(existing) =
                self.ports.values().find(|p| p.segment == port.segment && p.ipv6.contains(ip))
            {
                return Err(TablesError::DuplicateIp {
                    ip: IpAddr::V6(*ip),
                    segment: port.segment,
                    existing: existing.id,
                });
            }
        }
        if let Some(mac) = port.mac {
            if mac.is_multicast() {
                return Err(TablesError::MulticastMac { port: port.id, mac });
            }
            let gateway_mac = seg.gateway.map(|g| g.mac);
            if let Some(existing) =
                self.ports.values().find(|p| p.segment == port.segment && p.mac == Some(mac))
            {
                return Err(TablesError::DuplicateMac { mac, segment: port.segment, existing: existing.id });
            }
            // Only the host port may carry the gateway MAC.
            if gateway_mac == Some(mac) && port.kind != PortKind::Host {
                return Err(TablesError::DuplicateMac { mac, segment: port.segment, existing: port.id });
            }
        }
        self.ports.insert(port.id, port);
        Ok(())
    }

    /// Replaces the Service table (built separately: it changes on its own schedule).
    pub fn set_services(&mut self, services: Arc<ServiceTable>) {
        self.services = services;
    }

    /// Replaces the overlay table (remote nodes change on their own schedule too).
    pub fn set_overlay(&mut self, overlay: Arc<OverlayTable>) {
        self.overlay = overlay;
    }

    pub fn overlay(&self) -> &Arc<OverlayTable> {
        &self.overlay
    }

    pub fn remove_port(&mut self, id: PortId) -> Option<PortEntry> {
        self.ports.remove(&id)
    }

    pub fn port(&self, id: PortId) -> Option<&PortEntry> {
        self.ports.get(&id)
    }

    pub fn port_mut(&mut self, id: PortId) -> Option<&mut PortEntry> {
        self.ports.get_mut(&id)
    }

    pub fn ports(&self) -> impl Iterator<Item = &PortEntry> {
        self.ports.values()
    }

    pub fn segment(&self, id: SegmentId) -> Option<&SegmentConfig> {
        self.segments.get(&id)
    }

    /// Builds the snapshot. Every port was validated on insertion, so this only derives
    /// the lookup maps. Each snapshot gets a generation no other snapshot in this process
    /// has, so caches keyed by it can never mistake one snapshot for another.
    pub fn build(&self) -> Result<Tables, TablesError> {
        static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);
        let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
        let max_port = self.ports.keys().next_back().map_or(0, |id| id.index() + 1);
        let mut ports = vec![None; max_port];
        let max_seg = self.segments.keys().next_back().map_or(0, |id| id.index() + 1);
        let mut segments: Vec<Option<Segment>> = vec![None; max_seg];
        for seg in self.segments.values() {
            segments[seg.id.index()] = Some(Segment { config: seg.clone(), ports: Vec::new() });
        }
        let mut static_macs = FastMap::default();
        let mut arp = FastMap::default();
        for seg in self.segments.values() {
            if let Some(gw) = seg.gateway {
                arp.insert(ip_key(seg.id, gw.ip), ArpAnswer { mac: gw.mac, port: None });
            }
        }
        for port in self.ports.values() {
            let seg = segments
                .get_mut(port.segment.index())
                .and_then(Option::as_mut)
                .ok_or(TablesError::UnknownSegment { port: port.id, segment: port.segment })?;
            seg.ports.push(port.id);
            if let Some(mac) = port.mac {
                static_macs.insert(mac_key(port.segment, mac), port.id);
                if seg.config.gateway.map(|g| g.mac) == Some(mac) {
                    arp.insert(
                        ip_key(port.segment, seg.config.gateway.expect("checked").ip),
                        ArpAnswer { mac, port: Some(port.id) },
                    );
                }
                for ip in &port.ipv4 {
                    arp.insert(ip_key(port.segment, *ip), ArpAnswer { mac, port: Some(port.id) });
                }
            }
            ports[port.id.index()] = Some(port.clone());
        }
        Ok(Tables {
            generation,
            ports,
            segments,
            static_macs,
            arp,
            services: self.services.clone(),
            overlay: self.overlay.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::tests::{pod, segment0};
    use crate::tables::{UnknownArp, UnknownUnicast};
    use crate::testing::mac;

    #[test]
    fn builds_lookup_maps() {
        let mut b = TablesBuilder::default();
        b.add_segment(segment0()).unwrap();
        b.add_port(pod(1, [10, 244, 1, 2])).unwrap();
        b.add_port(pod(3, [10, 244, 1, 3])).unwrap();
        let t = b.build().unwrap();
        assert!(b.build().unwrap().generation() > t.generation(), "every snapshot is distinct");
        assert_eq!(t.segment(SegmentId(0)).unwrap().ports, vec![PortId(1), PortId(3)]);
        assert_eq!(t.static_port(SegmentId(0), mac(3)), Some(PortId(3)));
        assert_eq!(t.static_port(SegmentId(1), mac(3)), None, "segments are separate");
        assert_eq!(
            t.arp_answer(SegmentId(0), Ipv4Addr::new(10, 244, 1, 2)),
            Some(ArpAnswer { mac: mac(1), port: Some(PortId(1)) })
        );
        assert_eq!(
            t.arp_answer(SegmentId(0), Ipv4Addr::new(10, 244, 1, 1)),
            Some(ArpAnswer { mac: mac(0xffff), port: None })
        );
        assert!(t.port(PortId(2)).is_none() && t.port(PortId(3)).is_some() && t.port(PortId(1000)).is_none());
    }

    #[test]
    fn rejects_conflicts() {
        let mut b = TablesBuilder::default();
        b.add_segment(segment0()).unwrap();
        assert_eq!(b.add_segment(segment0()), Err(TablesError::DuplicateSegment(SegmentId(0))));
        b.add_port(pod(1, [10, 244, 1, 2])).unwrap();
        assert_eq!(b.add_port(pod(1, [10, 244, 1, 9])), Err(TablesError::DuplicatePort(PortId(1))));
        let mut same_ip = pod(2, [10, 244, 1, 2]);
        same_ip.mac = Some(mac(99));
        assert_eq!(
            b.add_port(same_ip),
            Err(TablesError::DuplicateIp {
                ip: Ipv4Addr::new(10, 244, 1, 2).into(),
                segment: SegmentId(0),
                existing: PortId(1)
            })
        );
        let mut same_mac = pod(2, [10, 244, 1, 5]);
        same_mac.mac = Some(mac(1));
        assert_eq!(
            b.add_port(same_mac),
            Err(TablesError::DuplicateMac { mac: mac(1), segment: SegmentId(0), existing: PortId(1) })
        );
        assert_eq!(
            b.add_port(pod(2, [10, 244, 1, 1])),
            Err(TablesError::IpIsGateway { ip: Ipv4Addr::new(10, 244, 1, 1), segment: SegmentId(0) })
        );
        let mut v6 = pod(2, [10, 244, 1, 9]);
        v6.mac = Some(mac(77));
        v6.ipv6 = vec!["fd00::9".parse().unwrap()];
        b.add_port(v6).unwrap();
        let mut v6_again = pod(3, [10, 244, 1, 10]);
        v6_again.mac = Some(mac(78));
        v6_again.ipv6 = vec!["fd00::9".parse().unwrap()];
        assert!(matches!(
            b.add_port(v6_again),
            Err(TablesError::DuplicateIp { ip: IpAddr::V6(_), existing: PortId(2), .. })
        ));
        b.remove_port(PortId(2));
        let mut elsewhere = pod(2, [10, 244, 1, 5]);
        elsewhere.segment = SegmentId(9);
        assert_eq!(
            b.add_port(elsewhere),
            Err(TablesError::UnknownSegment { port: PortId(2), segment: SegmentId(9) })
        );
        let mut mcast = pod(2, [10, 244, 1, 5]);
        mcast.mac = Some(MacAddr([1, 0, 0x5e, 0, 0, 1]));
        assert!(matches!(b.add_port(mcast), Err(TablesError::MulticastMac { .. })));
        let mut gw_mac = pod(2, [10, 244, 1, 5]);
        gw_mac.mac = Some(mac(0xffff));
        assert!(matches!(b.add_port(gw_mac), Err(TablesError::DuplicateMac { .. })));
        let mut no_mac = pod(2, [10, 244, 1, 5]);
        no_mac.mac = None;
        assert_eq!(b.add_port(no_mac), Err(TablesError::SecurityWithoutMac { port: PortId(2) }));
        assert_eq!(
            b.add_segment(SegmentConfig {
                id: SegmentId(5000),
                gateway: None,
                unknown_arp: UnknownArp::Drop,
                unknown_unicast: UnknownUnicast::Flood,
                storm_control: None,
            }),
            Err(TablesError::SegmentOutOfRange(SegmentId(5000)))
        );
        // Nothing half-added.
        assert_eq!(b.ports().count(), 1);
    }
}
