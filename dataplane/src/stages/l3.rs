//! The routed hop, shared by every stage that routes: what a router does to an IPv4
//! packet it forwards — the TTL (with the header checksum, and a partial transport
//! checksum left by a port with offloads, kept right), the Ethernet addresses of the
//! next hop — and where it sends it: the local pod that has the address, or the node
//! whose pod CIDR holds it. Also the ICMP errors a router answers with.
//!
//! The overlay stages (decapsulated frames to pods, pods to other nodes) and Service
//! NAT (translated flows to endpoints and back) route through here.

use std::net::Ipv4Addr;
use std::ops::ControlFlow;

use crate::drop_reason::DropReason;
use crate::frame::Frame;
use crate::ids::{NodeIndex, PortId, SegmentId};
use crate::stage::{Packet, StageContext, Step, Verdict, drop, forward};
use crate::tables::maglev::flow_hash;
use crate::tables::overlay::OverlayTable;
use crate::tables::{PortKind, Tables};
use crate::wire::ipv4::Ipv4Mut;
use crate::wire::offload::{F_NEEDS_CSUM, Offload};
use crate::wire::{FrameMeta, Ipv4Meta, L4, MacAddr, Net, ethernet, icmp};

/// Whether the hop still has the TTL to decrement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ttl {
    /// This is the routed hop: decrement it.
    Decrement,
    /// The caller already did (with its other header rewrites), or the packet is not
    /// routed here.
    Done,
}

/// A local port to send a routed packet to, and the Ethernet addresses it goes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NextHop {
    pub port: PortId,
    /// The owner's MAC: the frame's destination.
    pub mac: MacAddr,
    /// The gateway it is sent from: the frame's source.
    pub via: MacAddr,
}

/// The pod that has `dst` in `segment`, reached from `gateway_mac`.
#[inline]
pub(crate) fn local_owner(
    tables: &Tables,
    segment: SegmentId,
    dst: Ipv4Addr,
    gateway_mac: MacAddr,
) -> Option<NextHop> {
    let a = tables.arp_answer(segment, dst)?;
    Some(NextHop { port: a.port?, mac: a.mac, via: gateway_mac })
}

/// The pod that has `dst` in `segment` or, failing that, in any routed segment (sent
/// from that segment's gateway): where a packet routed to `dst` goes on this node.
pub(crate) fn owner_on_node(
    tables: &Tables,
    segment: SegmentId,
    dst: Ipv4Addr,
    gateway_mac: MacAddr,
) -> Option<NextHop> {
    local_owner(tables, segment, dst, gateway_mac).or_else(|| {
        let (a, seg) = tables.routed_owner(dst)?;
        let via = tables.segment(seg).and_then(|s| s.config.gateway).map_or(gateway_mac, |g| g.mac);
        Some(NextHop { port: a.port?, mac: a.mac, via })
    })
}

/// Decrements the TTL of the IPv4 packet `ip` of `frame` as a router does. False, with
/// the packet untouched, when it has run out.
// Always inlined: see `pipeline::stages`.
#[inline(always)]
pub(crate) fn decrement_ttl(frame: &mut Frame, l3_offset: u16, ip: &Ipv4Meta) -> bool {
    let partial = has_partial_checksum(frame);
    Ipv4Mut::new(frame.data_mut(), l3_offset, ip).with_partial_l4_checksum(partial).decrement_ttl()
}

/// The frame's transport checksum holds only the pseudo-header sum (from a port with
/// offloads): rewrites of the addresses must adjust it as such.
#[inline]
pub(crate) fn has_partial_checksum(frame: &Frame) -> bool {
    frame.offload.flags & F_NEEDS_CSUM != 0
}

/// The IPv4 header the parser found, for the routed hop (every caller routes IPv4).
#[inline(always)]
fn ipv4(meta: &FrameMeta) -> Option<&Ipv4Meta> {
    match &meta.net {
        Net::Ipv4(ip) => Some(ip),
        _ => None,
    }
}

/// Sends the IPv4 packet to a local port: the routed hop's TTL (if still to do), then
/// the next hop's Ethernet addresses.
#[inline]
pub(crate) fn send(pkt: &mut Packet<'_, '_>, hop: NextHop, ttl: Ttl) -> Step {
    if ttl == Ttl::Decrement {
        let Some(ip) = ipv4(pkt.meta) else { return drop(DropReason::OverlayBadInner) };
        if !decrement_ttl(pkt.frame, pkt.meta.l3_offset, ip) {
            return drop(DropReason::TtlExpired);
        }
    }
    ethernet::set_addresses(pkt.frame.data_mut(), hop.mac, hop.via);
    forward(hop.port)
}

/// Sends the IPv4 packet toward remote node `node`: answered with fragmentation-needed
/// when it cannot fit and must not be fragmented, else routed with inner addresses
/// gateway → the node's VTEP, to be encapsulated at dispatch. The flow hash (the outer
/// source port) is of the packet as it arrived.
pub(crate) fn to_node(ctx: &StageContext<'_>, pkt: &mut Packet<'_, '_>, node: NodeIndex, ttl: Ttl) -> Step {
    let ov = ctx.tables.overlay();
    let Some(ip) = ipv4(pkt.meta) else { return drop(DropReason::OverlayBadInner) };
    let Some(remote) = ov.node(node) else {
        return drop(DropReason::OverlayNoUnderlay);
    };
    if ov.tx_port.is_none() {
        return drop(DropReason::OverlayNoUnderlay);
    }
    if too_big(ov, pkt.frame, pkt.meta) {
        if ip.dont_fragment && pkt.port.kind == PortKind::Pod {
            return fragmentation_needed(ctx, pkt);
        }
        return drop(DropReason::OverlayMtuExceeded);
    }
    if ttl == Ttl::Decrement && !decrement_ttl(pkt.frame, pkt.meta.l3_offset, ip) {
        return drop(DropReason::TtlExpired);
    }
    ethernet::set_addresses(pkt.frame.data_mut(), remote.vtep_mac, ov.settings.gateway_mac);
    let (sp, dp) = match ip.l4 {
        L4::Tcp { src_port, dst_port, .. } | L4::Udp { src_port, dst_port } => (src_port, dst_port),
        _ => (0, 0),
    };
    let entropy = flow_hash(u32::from(ip.src), u32::from(ip.dst), sp, dp, ip.protocol) as u16;
    ControlFlow::Break(Verdict::Overlay { node, entropy })
}

/// Whether the packet of `frame` would not fit the overlay toward another node.
#[inline]
pub(crate) fn too_big(ov: &OverlayTable, frame: &Frame, meta: &FrameMeta) -> bool {
    frame.wire_len().saturating_sub(usize::from(meta.l3_offset)) > usize::from(ov.inner_mtu())
}

/// Turns the IPv4 packet into an ICMP fragmentation-needed with the overlay's inner MTU
/// as next-hop MTU (RFC 1191), back where it came from: from the gateway to a pod, from
/// the node's address (what the client sent to) to a NodePort client on the uplink.
pub(crate) fn fragmentation_needed(ctx: &StageContext<'_>, pkt: &mut Packet<'_, '_>) -> Step {
    let ov = ctx.tables.overlay();
    let Some(ip) = ipv4(pkt.meta) else { return drop(DropReason::OverlayBadInner) };
    let from = if pkt.port.kind == PortKind::Pod { ov.settings.gateway_ip } else { ip.dst };
    icmp_reply(
        pkt.frame,
        pkt.meta,
        ip,
        from,
        icmp::TYPE_DEST_UNREACHABLE,
        icmp::CODE_FRAGMENTATION_NEEDED,
        ov.inner_mtu(),
    );
    ctx.events().frag_needed_sent.inc();
    forward(pkt.port.id)
}

/// Turns `frame` (an IPv4 packet described by `meta` and `ip`) into the ICMP error
/// `icmp_type`/`code` about it, from `src_ip` back to its sender, Ethernet addresses
/// swapped: the reply a router sends out of the port the packet came in on. The error
/// is written at the buffer's default headroom, quoting at most what RFC 1812 allows.
pub(crate) fn icmp_reply(
    frame: &mut Frame,
    meta: &FrameMeta,
    ip: &Ipv4Meta,
    src_ip: Ipv4Addr,
    icmp_type: u8,
    code: u8,
    next_hop_mtu: u16,
) {
    let l3 = usize::from(meta.l3_offset);
    let mut quoted = [0u8; icmp::MAX_QUOTE_LEN];
    let ip_len = usize::from(ip.total_len).min(frame.len() - l3).min(quoted.len());
    quoted[..ip_len].copy_from_slice(&frame.data()[l3..l3 + ip_len]);
    let err = icmp::IcmpError {
        eth_src: meta.dst_mac,
        eth_dst: meta.src_mac,
        src_ip,
        dst_ip: ip.src,
        icmp_type,
        code,
        next_hop_mtu,
    };
    let len = icmp::write_error(frame.spare_mut(), &err, &quoted[..ip_len]);
    frame.set_len(len);
    frame.offload = Offload::NONE;
}
