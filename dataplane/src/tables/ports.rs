//! Ports and segments as the data path sees them.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::ids::{PortId, SegmentId, WorkerSet};
use crate::wire::MacAddr;

/// What kind of thing is behind a port; decides which checks apply to its traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// A pod's interface.
    Pod,
    /// The node's own stack (the TAP carrying the gateway address).
    Host,
    /// A trunk to other L2 devices: no static MAC, addresses are learned. Also the
    /// underlay: VXLAN from other nodes arrives here.
    Uplink,
    /// The overlay side of the gateway: what a decapsulated frame arrived on (never a
    /// port of its own, see [`super::overlay::OverlayTable`]).
    Overlay,
}

/// A port as the data path sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortEntry {
    pub id: PortId,
    pub name: String,
    pub kind: PortKind,
    pub segment: SegmentId,
    /// MAC statically bound to the port: frames to it go here without learning, and the
    /// ARP proxy answers for the port's IPv4 addresses with it. `None`: learned.
    pub mac: Option<MacAddr>,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
    /// Drop frames whose source MAC/IP (and ARP sender) is not the port's own.
    pub port_security: bool,
    /// Largest IP packet the port carries (the interface MTU).
    pub mtu: u16,
    /// Workers holding a transmit queue of this port.
    pub tx_workers: WorkerSet,
    /// The port takes TSO/GSO super-frames and partial checksums (a TAP with
    /// `IFF_VNET_HDR`); frames toward a port without are finished in software first.
    pub offloads: bool,
    /// A tunnel port: it carries VXLAN packets whose offload work concerns the packet
    /// inside (UDP-tunnel GSO super-frames, partial inner checksums), so a super-frame
    /// to another node is encapsulated whole toward it.
    pub tunnel: bool,
}

impl PortEntry {
    /// A port toward other L2 devices or the underlay: no bound MAC or addresses (they
    /// are learned), no port security, no offloads.
    pub fn uplink(
        id: PortId,
        name: String,
        segment: SegmentId,
        mtu: u16,
        tx_workers: WorkerSet,
    ) -> PortEntry {
        PortEntry {
            id,
            name,
            kind: PortKind::Uplink,
            segment,
            mac: None,
            ipv4: vec![],
            ipv6: vec![],
            port_security: false,
            mtu,
            tx_workers,
            offloads: false,
            tunnel: false,
        }
    }

    /// Largest Ethernet frame (header included, FCS excluded) the port accepts.
    #[inline]
    pub fn max_frame_len(&self) -> usize {
        usize::from(self.mtu) + crate::wire::ethernet::HEADER_LEN
    }
}

/// What to do with an ARP request for an address nobody registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnknownArp {
    /// Drop and count (default): every legitimate address is registered.
    #[default]
    Drop,
    /// Flood to the segment, like a plain bridge.
    Flood,
}

/// What to do with a unicast frame to a MAC the segment neither has registered nor
/// learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnknownUnicast {
    /// Drop and count (default): every pod's MAC and the gateway's are registered, so
    /// such a frame has no legitimate destination — and flooding it would copy whatever
    /// one pod sends to every other.
    #[default]
    Drop,
    /// Flood to the segment, like a plain bridge (where MACs are learned, not
    /// registered).
    Flood,
}

/// How many frames one port may have flooded (broadcast, multicast, unknown unicast):
/// a token bucket of `burst` frames refilled at `rate_pps`, per port and worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StormControl {
    pub rate_pps: u32,
    pub burst: u32,
}

/// The virtual router address pods use as their default gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gateway {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentConfig {
    pub id: SegmentId,
    pub gateway: Option<Gateway>,
    pub unknown_arp: UnknownArp,
    pub unknown_unicast: UnknownUnicast,
    /// Each port's flood budget; `None`: unlimited.
    pub storm_control: Option<StormControl>,
}

/// A segment with its derived flood list.
#[derive(Clone, Debug)]
pub struct Segment {
    pub config: SegmentConfig,
    /// Every port of the segment, ascending.
    pub ports: Vec<PortId>,
}

/// The ARP proxy's answer for an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpAnswer {
    pub mac: MacAddr,
    /// The port owning the address; `None` for the gateway when no port carries it.
    pub port: Option<PortId>,
}
