//! The tables: data the control plane publishes for workers, and the state the data
//! path itself writes next to them.
//!
//! [`Tables`] is an immutable snapshot, rebuilt by the control plane on every change
//! (through [`TablesBuilder`]) and published with an atomic pointer swap. A worker loads
//! the current snapshot once per poll round and uses it for every frame of that round,
//! so a frame never sees half of an update. It holds the ports and segments
//! ([`ports`]), the Services ([`services`], endpoint choice by [`maglev`]) and the
//! remote nodes ([`overlay`]).
//!
//! What the data path learns lives beside it in purpose-built concurrent maps: the
//! learned MACs ([`fdb`], with each worker's [`mac_cache`] in front) and the tracked
//! connections ([`conntrack`]). Nothing here processes frames: that is the stages'.

pub mod conntrack;
pub mod fdb;
pub mod mac_cache;
pub mod maglev;
pub mod overlay;
mod ports;
pub mod services;
mod snapshot;

pub use ports::{
    ArpAnswer, Gateway, PortEntry, PortKind, Segment, SegmentConfig, StormControl, UnknownArp, UnknownUnicast,
};
pub use snapshot::{Tables, TablesBuilder, TablesError};

/// Tables for tests: pods and the segment they live in.
#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::ids::{PortId, SegmentId, WorkerSet};
    use crate::testing::mac;

    pub(crate) fn pod(id: u16, ip: [u8; 4]) -> PortEntry {
        PortEntry {
            id: PortId(id),
            name: format!("pod{id}"),
            kind: PortKind::Pod,
            segment: SegmentId(0),
            mac: Some(mac(u32::from(id))),
            ipv4: vec![Ipv4Addr::from(ip)],
            ipv6: vec![],
            port_security: true,
            mtu: 1500,
            tx_workers: WorkerSet::single(0),
            offloads: false,
            tunnel: false,
        }
    }

    pub(crate) fn segment0() -> SegmentConfig {
        SegmentConfig {
            id: SegmentId(0),
            gateway: Some(Gateway { ip: Ipv4Addr::new(10, 244, 1, 1), mac: mac(0xffff) }),
            unknown_arp: UnknownArp::Drop,
            unknown_unicast: UnknownUnicast::Flood,
            storm_control: None,
        }
    }
}
