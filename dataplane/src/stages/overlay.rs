//! Between nodes: routing to other nodes' pod CIDRs over VXLAN (RFC 7348), as flannel's
//! `vxlan` backend does with a kernel device.
//!
//! A frame from a local pod to the gateway MAC whose destination falls in another node's
//! pod CIDR is routed ([`route`]: TTL decremented, inner Ethernet addresses gateway MAC
//! → the node's VTEP MAC) and encapsulated toward the node's underlay address
//! ([`Verdict::Overlay`]; the outer headers are written by [`encapsulate`] at dispatch,
//! after any segmentation). A VXLAN frame arriving on an underlay port is checked —
//! VNI, a known sending node, an inner source inside that node's CIDRs, an inner
//! destination that is a local pod or the gateway — and decapsulated
//! ([`decapsulate`]); from then on it is a frame arriving at the gateway from the
//! overlay, and is routed (TTL decremented again: each node is a routed hop) to the pod.
//! The node table these stages read is `tables::overlay`.

use std::ops::ControlFlow;

use super::l3;
use crate::drop_reason::DropReason;
use crate::frame::Frame;
use crate::stage::{Packet, StageContext, Step, drop, forward};
use crate::tables::overlay::{OverlayTable, RemoteNode};
use crate::tables::{PortEntry, PortKind, Tables};
use crate::wire::{Fragment, FrameMeta, L4, MacAddr, Net, offload, vxlan};

/// A VXLAN frame for this switch to decapsulate: UDP to the VXLAN port, in from an
/// underlay port. Pods may send UDP to that port among themselves: it is only
/// decapsulated from the underlay.
// Always inlined: see `pipeline::stages`.
#[inline(always)]
pub(crate) fn is_vxlan(tables: &Tables, port: &PortEntry, meta: &FrameMeta) -> bool {
    port.kind == PortKind::Uplink
        && matches!(&meta.net, Net::Ipv4(ip) if matches!(ip.l4, L4::Udp { dst_port, .. }
            if dst_port == tables.overlay().settings.udp_port) && ip.fragment == Fragment::None)
}

/// The stage for a frame [`is_vxlan`] accepted: checks and strips the outer headers;
/// the packet then describes the inner frame, arriving from the overlay side of the
/// gateway.
pub(crate) fn decapsulate<'a>(ctx: &mut StageContext<'a>, pkt: &mut Packet<'a, '_>) -> Step {
    let (tables, frame, meta) = (ctx.tables, &mut *pkt.frame, &mut *pkt.meta);
    let ov = tables.overlay();
    let Net::Ipv4(outer) = meta.net else {
        return drop(DropReason::OverlayBadInner);
    };
    let Some(ingress) = ov.ingress() else {
        return drop(DropReason::VxlanUnknownNode);
    };
    let vx = usize::from(outer.l4_offset) + crate::wire::udp::HEADER_LEN;
    let end = usize::from(meta.l3_offset) + usize::from(outer.total_len);
    let Some(header) = frame.data().get(vx..end) else {
        return drop(DropReason::TruncatedVxlan);
    };
    let vni = match vxlan::parse_header(header) {
        Ok(v) => v,
        Err(e) => return drop(e.into()),
    };
    if vni != ov.settings.vni {
        return drop(DropReason::VxlanWrongVni);
    }
    let Some(node) = ov.node_by_ip(outer.src).and_then(|i| ov.node(i)) else {
        return drop(DropReason::VxlanUnknownNode);
    };
    // Ethernet padding of a short outer frame is not part of the inner one.
    frame.truncate(end);
    let outer_len = vx + vxlan::HEADER_LEN;
    frame.strip_front(outer_len);
    if let Err(e) = crate::wire::parse::parse_into(frame.data(), meta) {
        return drop(e.into());
    }
    if frame.offload.is_pending() {
        // From a tunnel port: the offload work concerns the inner packet, and is checked
        // against its headers as a pod's would be.
        let inner = offload::decapsulated(&frame.offload, outer_len, frame.data())
            .and_then(|off| offload::matches_headers(&off, meta).map(|()| off));
        match inner {
            Ok(off) => {
                if off.is_gso() {
                    ctx.events().overlay_whole_received.inc();
                }
                frame.offload = off
            }
            Err(e) => return drop(e.into()),
        }
    }
    let Net::Ipv4(inner) = &meta.net else {
        return drop(DropReason::OverlayBadInner);
    };
    if meta.dst_mac != ov.settings.gateway_mac {
        return drop(DropReason::OverlayBadInner);
    }
    if !node.pod_cidrs.iter().any(|c| c.contains(&inner.src)) {
        return drop(DropReason::VxlanSpoofedSource);
    }
    let local = inner.dst == ov.settings.gateway_ip
        || tables.arp_answer(ov.settings.segment, inner.dst).is_some_and(|a| a.port.is_some());
    if !local {
        return drop(DropReason::OverlayNotLocal);
    }
    ctx.events().overlay_decapsulated.inc();
    pkt.port = ingress;
    ControlFlow::Continue(())
}

/// The stage that routes what is addressed to the gateway between nodes: from a pod
/// toward another node's CIDR (encapsulated), or from the overlay to a local pod or the
/// node itself. Everything else goes on.
// Always inlined: see `pipeline::stages`.
#[inline(always)]
pub(crate) fn route<'a>(ctx: &mut StageContext<'a>, pkt: &mut Packet<'a, '_>) -> Step {
    let ov = ctx.tables.overlay();
    if ov.is_empty() {
        return ControlFlow::Continue(());
    }
    if pkt.port.kind == PortKind::Overlay {
        return deliver(ctx, pkt);
    }
    if pkt.meta.dst_mac != ov.settings.gateway_mac || pkt.port.segment != ov.settings.segment {
        return ControlFlow::Continue(());
    }
    let Net::Ipv4(ip) = &pkt.meta.net else { return ControlFlow::Continue(()) };
    match ov.route(ip.dst) {
        Some(node) => l3::to_node(ctx, pkt, node, l3::Ttl::Decrement),
        None if pkt.port.kind == PortKind::Pod && ov.is_vxlan_to_a_node(ip) => {
            drop(DropReason::OverlayFromPod)
        }
        None => ControlFlow::Continue(()),
    }
}

/// A decapsulated frame: to the pod that has its destination, or to the node itself
/// (the host port, which carries the gateway's MAC).
fn deliver(ctx: &mut StageContext<'_>, pkt: &mut Packet<'_, '_>) -> Step {
    let s = &ctx.tables.overlay().settings;
    let Net::Ipv4(ip) = &pkt.meta.net else {
        return drop(DropReason::OverlayNotLocal);
    };
    if ip.dst == s.gateway_ip {
        return match ctx.tables.static_port(s.segment, s.gateway_mac) {
            Some(host) => forward(host),
            None => drop(DropReason::OverlayNotLocal),
        };
    }
    match l3::local_owner(ctx.tables, s.segment, ip.dst, s.gateway_mac) {
        Some(pod) => l3::send(pkt, pod, l3::Ttl::Decrement),
        None => drop(DropReason::OverlayNotLocal),
    }
}

/// Prepends the outer headers toward `node` to a frame that is ready to go (no offload
/// work left); `macs` (source, destination) for the AF_XDP underlay, which sends the
/// frame as it is (the socket underlay ignores them). Returns false when the buffer has
/// no headroom for them.
#[inline]
pub(crate) fn encapsulate(
    ov: &OverlayTable,
    node: &RemoteNode,
    entropy: u16,
    macs: Option<(MacAddr, MacAddr)>,
    frame: &mut Frame,
) -> bool {
    let inner_len = frame.len();
    let Some(hdr) = frame.prepend(vxlan::OUTER_LEN) else { return false };
    let hdr: &mut [u8; vxlan::OUTER_LEN] = hdr.try_into().expect("OUTER_LEN bytes");
    let (src_mac, dst_mac) = macs.unwrap_or((MacAddr::ZERO, MacAddr::ZERO));
    let outer = vxlan::Outer {
        src_mac,
        dst_mac,
        src_ip: ov.settings.local_ip,
        dst_ip: node.ip,
        src_port: vxlan::source_port(u32::from(entropy)),
        dst_port: ov.settings.udp_port,
        vni: ov.settings.vni,
        ttl: 64,
    };
    vxlan::write_outer(hdr, &outer, inner_len);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FramePool, Offload};
    use crate::ids::{PortId, SegmentId, WorkerSet};
    use crate::pipeline::{Pipeline, SharedState, TxBatches};
    use crate::stats::WorkerStats;
    use crate::tables::conntrack::ConntrackConfig;
    use crate::tables::fdb::FdbConfig;
    use crate::tables::overlay::tests::{GW, node, settings};
    use crate::tables::services::{BuildMemory, EndpointSpec, ServicePortSpec, ServiceTable};
    use crate::tables::tests::{pod, segment0};
    use crate::tables::{SegmentConfig, TablesBuilder, UnknownArp, UnknownUnicast};
    use crate::testing::{FrameSpec, mac};
    use crate::wire::parse::{IPPROTO_TCP, TCP_ACK, TCP_SYN};
    use crate::wire::{Ipv4Meta, parse};
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    const UNDERLAY: u16 = 8;
    const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);

    fn local(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 1, last)
    }

    fn remote(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 2, last)
    }

    /// Pods 1..=3 (10.244.1.2-4), the underlay port 8 in a segment of its own, node b
    /// (10.244.2.0/24 at 192.168.50.2), and the given Services.
    struct Rig {
        tables: Tables,
        pipeline: Pipeline,
        pool: FramePool,
        out: TxBatches,
    }

    impl Rig {
        fn new(services: Vec<ServicePortSpec>) -> Rig {
            Rig::build(services, false)
        }

        /// The underlay is a tunnel port, the pods take offloads: super-frames stay whole.
        fn with_tunnel() -> Rig {
            Rig::build(vec![], true)
        }

        fn build(services: Vec<ServicePortSpec>, tunnel: bool) -> Rig {
            let mut b = TablesBuilder::default();
            b.add_segment(segment0()).unwrap();
            b.add_segment(SegmentConfig {
                id: SegmentId(1),
                gateway: None,
                unknown_arp: UnknownArp::Drop,
                unknown_unicast: UnknownUnicast::Flood,
                storm_control: None,
            })
            .unwrap();
            for i in 1..=3u8 {
                let mut p = pod(u16::from(i), [10, 244, 1, i + 1]);
                p.offloads = tunnel;
                b.add_port(p).unwrap();
            }
            let mut underlay = PortEntry::uplink(
                PortId(UNDERLAY),
                "underlay".into(),
                SegmentId(1),
                1500,
                WorkerSet::single(0),
            );
            (underlay.offloads, underlay.tunnel) = (tunnel, tunnel);
            b.add_port(underlay).unwrap();
            let nodes = [node("b", 2, "10.244.2.0/24")];
            b.set_overlay(Arc::new(OverlayTable::build(settings(), Some(PortId(UNDERLAY)), &nodes).unwrap()));
            let svc = ServiceTable::build(
                &services,
                Some(Ipv4Addr::new(192, 168, 50, 1)),
                Ipv4Addr::new(169, 254, 42, 1),
                &mut BuildMemory::default(),
            );
            b.set_services(Arc::new(svc));
            let state = SharedState::new(FdbConfig::default(), ConntrackConfig::default());
            Rig {
                tables: b.build().unwrap(),
                pipeline: Pipeline::new(&state, Arc::new(WorkerStats::new(16))),
                pool: FramePool::standalone(2048),
                out: TxBatches::new(16),
            }
        }

        fn send_frame(&mut self, ingress: u16, frame: Frame) -> Vec<(u16, Vec<u8>)> {
            self.send_keeping_offload(ingress, frame)
                .into_iter()
                .map(|(port, data, _)| (port, data))
                .collect()
        }

        /// As [`Rig::send_frame`], with each sent frame's offload state.
        fn send_keeping_offload(&mut self, ingress: u16, frame: Frame) -> Vec<(u16, Vec<u8>, Offload)> {
            let mut batch = vec![frame];
            self.pipeline.process(
                &self.tables,
                PortId(ingress),
                10,
                &mut batch,
                &mut self.pool,
                &mut self.out,
            );
            let (mut sent, pool) = (Vec::new(), &mut self.pool);
            self.out.flush(|port, frames| {
                for f in frames.drain(..) {
                    sent.push((port.0, f.data().to_vec(), f.offload));
                    pool.put(f);
                }
            });
            sent
        }

        fn send(&mut self, ingress: u16, frame: &[u8]) -> Vec<(u16, Vec<u8>)> {
            let f = self.pool.copy_of(frame).unwrap();
            self.send_frame(ingress, f)
        }

        fn drops(&self, port: u16, r: DropReason) -> u64 {
            self.pipeline.stats().drops(PortId(port), r)
        }
    }

    fn ipv4(frame: &[u8]) -> Ipv4Meta {
        let Net::Ipv4(v4) = parse(frame).unwrap().net else { panic!("not IPv4") };
        v4
    }

    /// What node b would send: `inner` in VXLAN from `from` with `vni`.
    fn vxlan_from(from: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
        let o = vxlan::Outer {
            src_mac: mac(0xb0b),
            dst_mac: mac(0xa0a),
            src_ip: from,
            dst_ip: Ipv4Addr::new(192, 168, 50, 1),
            src_port: 50000,
            dst_port: 4789,
            vni,
            ttl: 64,
        };
        let mut hdr = [0u8; vxlan::OUTER_LEN];
        vxlan::write_outer(&mut hdr, &o, inner.len());
        [&hdr[..], inner].concat()
    }

    #[test]
    fn a_pod_reaches_a_remote_pod_through_vxlan() {
        let mut r = Rig::new(vec![]);
        let inner = FrameSpec::udp(mac(1), mac(GW), local(2), remote(7), 1234, 53).payload(b"q").build();
        let sent = r.send(1, &inner);
        assert_eq!(sent.len(), 1);
        let (port, wire) = &sent[0];
        assert_eq!(*port, UNDERLAY);
        let outer = ipv4(wire);
        assert_eq!((outer.src, outer.dst, outer.ttl), (settings().local_ip, NODE_B, 64));
        assert!(outer.dont_fragment);
        let L4::Udp { src_port, dst_port } = outer.l4 else { panic!() };
        assert_eq!(dst_port, 4789);
        assert!(src_port >= 49152, "entropy in the dynamic range");
        assert_eq!(&wire[34 + 6..34 + 8], &[0, 0], "outer UDP checksum zero");
        assert_eq!(vxlan::parse_header(&wire[42..]), Ok(1));
        let got = &wire[vxlan::OUTER_LEN..];
        let m = parse(got).unwrap();
        assert_eq!((m.dst_mac, m.src_mac), (mac(GW), mac(GW)), "gateway → the node's VTEP (shared MAC)");
        let v4 = ipv4(got);
        assert_eq!((v4.src, v4.dst, v4.ttl), (local(2), remote(7), 63), "one routed hop");
        assert_eq!(
            &got[14..],
            &{
                let mut x = inner[14..].to_vec();
                x[8] = 63;
                let c = crate::wire::checksum::checksum(&{
                    let mut h = x[..20].to_vec();
                    h[10] = 0;
                    h[11] = 0;
                    h
                });
                x[10..12].copy_from_slice(&c.to_be_bytes());
                x
            }[..]
        );
        // Another flow of the same pair: another outer source port (most likely).
        let other = FrameSpec::udp(mac(1), mac(GW), local(2), remote(7), 1235, 53).build();
        let ports: std::collections::BTreeSet<u16> = (0..8u16)
            .map(|i| {
                let mut f = other.clone();
                f[34..36].copy_from_slice(&(2000 + i).to_be_bytes());
                f[40..42].copy_from_slice(&[0, 0]); // UDP checksum optional
                match ipv4(&r.send(1, &f)[0].1).l4 {
                    L4::Udp { src_port, .. } => src_port,
                    _ => panic!(),
                }
            })
            .collect();
        assert!(ports.len() > 1, "flows spread over source ports: {ports:?}");
        assert_eq!(r.pipeline.stats().events.overlay_encapsulated.get(), 9);
    }

    #[test]
    fn vxlan_from_a_node_reaches_the_local_pod() {
        let mut r = Rig::new(vec![]);
        let inner =
            FrameSpec::tcp(mac(0xb), mac(GW), remote(7), local(3), 80, 4000, TCP_ACK).payload(b"hi").build();
        let sent = r.send(UNDERLAY, &vxlan_from(NODE_B, 1, &inner));
        assert_eq!(sent.len(), 1);
        let (port, got) = &sent[0];
        assert_eq!(*port, 2, "pod 2 has 10.244.1.3");
        let m = parse(got).unwrap();
        assert_eq!((m.dst_mac, m.src_mac), (mac(2), mac(GW)));
        assert_eq!(ipv4(got).ttl, 63);
        assert_eq!(got.len(), inner.len(), "outer headers gone");
        assert_eq!(r.pipeline.stats().events.overlay_decapsulated.get(), 1);
        // To the gateway: the node itself, through the host port.
        let mut with_host = Rig::new(vec![]);
        let mut b = TablesBuilder::default();
        b.add_segment(segment0()).unwrap();
        b.add_segment(SegmentConfig {
            id: SegmentId(1),
            gateway: None,
            unknown_arp: UnknownArp::Drop,
            unknown_unicast: UnknownUnicast::Flood,
            storm_control: None,
        })
        .unwrap();
        let mut host = pod(5, [10, 244, 1, 200]);
        host.kind = PortKind::Host;
        host.mac = Some(mac(GW));
        host.ipv4.clear();
        host.port_security = false;
        b.add_port(host).unwrap();
        let mut underlay = with_host.tables.port(PortId(UNDERLAY)).unwrap().clone();
        underlay.segment = SegmentId(1);
        b.add_port(underlay).unwrap();
        b.set_overlay(with_host.tables.overlay().clone().into());
        with_host.tables = b.build().unwrap();
        let ping = FrameSpec::icmp_echo(mac(0xb), mac(GW), remote(7), settings().gateway_ip, 1).build();
        let sent = with_host.send(UNDERLAY, &vxlan_from(NODE_B, 1, &ping));
        assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn bad_overlay_frames_are_counted_drops() {
        let mut r = Rig::new(vec![]);
        let good = FrameSpec::udp(mac(0xb), mac(GW), remote(7), local(2), 1, 2).build();
        let cases: Vec<(Vec<u8>, DropReason)> = vec![
            (vxlan_from(NODE_B, 2, &good), DropReason::VxlanWrongVni),
            (vxlan_from(Ipv4Addr::new(192, 168, 50, 99), 1, &good), DropReason::VxlanUnknownNode),
            (
                vxlan_from(NODE_B, 1, &FrameSpec::udp(mac(0xb), mac(GW), local(9), local(2), 1, 2).build()),
                DropReason::VxlanSpoofedSource,
            ),
            (
                vxlan_from(NODE_B, 1, &FrameSpec::udp(mac(0xb), mac(GW), remote(7), local(99), 1, 2).build()),
                DropReason::OverlayNotLocal,
            ),
            (
                vxlan_from(
                    NODE_B,
                    1,
                    &FrameSpec::udp(mac(0xb), mac(GW), remote(7), Ipv4Addr::new(10, 244, 3, 1), 1, 2).build(),
                ),
                DropReason::OverlayNotLocal,
            ),
            (
                vxlan_from(NODE_B, 1, &FrameSpec::udp(mac(0xb), mac(1), remote(7), local(2), 1, 2).build()),
                DropReason::OverlayBadInner,
            ),
            (
                vxlan_from(NODE_B, 1, &crate::testing::arp_request(mac(0xb), remote(7), local(2))),
                DropReason::OverlayBadInner,
            ),
            (vxlan_from(NODE_B, 1, &good[..10]), DropReason::TruncatedEthernet),
            (
                {
                    let mut f = vxlan_from(NODE_B, 1, &good);
                    f[42] = 0; // no I flag
                    f
                },
                DropReason::BadVxlanFlags,
            ),
            (
                FrameSpec::udp(mac(0xb0b), mac(0xa0a), NODE_B, settings().local_ip, 5000, 4789)
                    .payload(&[8, 0, 0, 0])
                    .build(),
                DropReason::TruncatedVxlan,
            ),
        ];
        for (frame, reason) in &cases {
            let before = r.drops(UNDERLAY, *reason);
            assert!(r.send(UNDERLAY, frame).is_empty(), "{reason:?}");
            assert_eq!(r.drops(UNDERLAY, *reason), before + 1, "{reason:?}");
        }
        // A pod's UDP to the VXLAN port is plain traffic between pods, never decapsulated.
        let from_pod = vxlan_from(local(2), 1, &good);
        let mut as_pod = from_pod.clone();
        as_pod[0..6].copy_from_slice(&mac(2).0);
        as_pod[6..12].copy_from_slice(&mac(1).0);
        let reparsed = ipv4(&as_pod);
        assert_eq!(reparsed.src, local(2));
        let mut f = as_pod;
        f[30..34].copy_from_slice(&local(3).octets());
        let c = crate::wire::checksum::checksum(&{
            let mut h = f[14..34].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        });
        f[24..26].copy_from_slice(&c.to_be_bytes());
        assert_eq!(r.send(1, &f).iter().map(|s| s.0).collect::<Vec<_>>(), vec![2]);
        assert_eq!(r.pipeline.stats().events.overlay_decapsulated.get(), 0);
    }

    #[test]
    fn too_big_for_the_overlay_gets_fragmentation_needed() {
        let mut r = Rig::new(vec![]);
        let big = FrameSpec::tcp(mac(1), mac(GW), local(2), remote(7), 4000, 80, TCP_ACK)
            .payload(&[7; 1460])
            .build();
        let sent = r.send(1, &big);
        assert_eq!(sent.len(), 1);
        let (port, icmp) = &sent[0];
        assert_eq!(*port, 1, "back to the sender");
        let v4 = ipv4(icmp);
        assert_eq!((v4.src, v4.dst), (settings().gateway_ip, local(2)));
        assert_eq!(v4.l4, L4::Icmpv4 { icmp_type: 3, code: 4 });
        assert_eq!(u16::from_be_bytes([icmp[40], icmp[41]]), 1450, "next-hop MTU");
        assert_eq!(&icmp[42..42 + 28], &big[14..14 + 28]);
        assert_eq!(r.pipeline.stats().events.frag_needed_sent.get(), 1);
        // Without DF: dropped and counted.
        let no_df = FrameSpec::udp(mac(1), mac(GW), local(2), remote(7), 1, 2)
            .dont_fragment(false)
            .payload(&[7; 1460])
            .build();
        assert!(r.send(1, &no_df).is_empty());
        assert_eq!(r.drops(1, DropReason::OverlayMtuExceeded), 1);
        // Exactly the inner MTU fits.
        let fits =
            FrameSpec::udp(mac(1), mac(GW), local(2), remote(7), 1, 2).payload(&[7; 1450 - 28]).build();
        let sent = r.send(1, &fits);
        assert_eq!((sent[0].0, sent[0].1.len()), (UNDERLAY, 14 + 1500));
    }

    #[test]
    fn super_frames_are_segmented_before_encapsulation() {
        use crate::wire::offload::{self, F_NEEDS_CSUM, GSO_TCPV4, VNET_HDR_LEN};
        let mut r = Rig::new(vec![]);
        let body = vec![0x33; 6000];
        let frame =
            FrameSpec::tcp(mac(1), mac(GW), local(2), remote(7), 40000, 80, 0x18).payload(&body).build();
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr[0] = F_NEEDS_CSUM;
        hdr[1] = GSO_TCPV4;
        hdr[4..6].copy_from_slice(&1398u16.to_ne_bytes());
        hdr[6..8].copy_from_slice(&34u16.to_ne_bytes());
        hdr[8..10].copy_from_slice(&16u16.to_ne_bytes());
        let mut pool = FramePool::standalone(crate::frame::LARGE_BUF_SIZE);
        let mut f = pool.copy_of(&frame).unwrap();
        f.offload = offload::decode(&hdr, &frame).unwrap();
        let sent = r.send_frame(1, f);
        assert_eq!(sent.len(), 5, "6000 bytes in 1398-byte segments");
        let mut payload = Vec::new();
        for (port, wire) in &sent {
            assert_eq!(*port, UNDERLAY);
            assert!(wire.len() <= 14 + 1500);
            let inner = &wire[vxlan::OUTER_LEN..];
            let v4 = ipv4(inner);
            assert_eq!(v4.ttl, 63);
            let l4 = &inner[34..14 + usize::from(v4.total_len)];
            let p = crate::wire::checksum::pseudo_header_v4(v4.src, v4.dst, IPPROTO_TCP, l4.len() as u16);
            assert_eq!(
                !crate::wire::checksum::fold(crate::wire::checksum::sum(l4, p)),
                0,
                "TCP checksum done"
            );
            payload.extend_from_slice(&l4[20..]);
        }
        assert_eq!(payload, body);
    }

    /// A pod's TCP super-frame of `payload` bytes to remote pod 7 (MSS 1398), as its
    /// TAP hands it over.
    fn super_frame_to_remote(pool: &mut FramePool, payload: usize) -> Frame {
        let body: Vec<u8> = (0..payload).map(|i| (i * 13 + 5) as u8).collect();
        let frame =
            FrameSpec::tcp(mac(1), mac(GW), local(2), remote(7), 40000, 80, 0x18).payload(&body).build();
        let mut f = pool.copy_of(&frame).unwrap();
        f.offload = offload::decode(&gso_header(1398, 34), &frame).unwrap();
        f
    }

    fn gso_header(gso_size: u16, csum_start: u16) -> [u8; offload::VNET_HDR_LEN] {
        let mut hdr = [0u8; offload::VNET_HDR_LEN];
        hdr[0] = offload::F_NEEDS_CSUM;
        hdr[1] = offload::GSO_TCPV4;
        hdr[4..6].copy_from_slice(&gso_size.to_ne_bytes());
        hdr[6..8].copy_from_slice(&csum_start.to_ne_bytes());
        hdr[8..10].copy_from_slice(&16u16.to_ne_bytes());
        hdr
    }

    #[test]
    fn super_frames_stay_whole_toward_a_tunnel_port() {
        let mut pool = FramePool::standalone(crate::frame::LARGE_BUF_SIZE);
        let mut old = Rig::new(vec![]);
        let cut = old.send_frame(1, super_frame_to_remote(&mut pool, 20000));
        let mut r = Rig::with_tunnel();
        let sent = r.send_keeping_offload(1, super_frame_to_remote(&mut pool, 20000));
        assert_eq!(sent.len(), 1, "one frame, encapsulated once");
        let (port, wire, off) = &sent[0];
        assert_eq!(*port, UNDERLAY);
        assert!(off.is_tunnel() && off.is_gso(), "{off:?}");
        assert_eq!((off.csum_start, off.gso_size), (vxlan::OUTER_LEN as u16 + 34, 1398));
        assert_eq!(usize::from(off.segment_len), vxlan::OUTER_LEN + 54 + 1398, "the outer segment's length");
        let outer = ipv4(wire);
        assert_eq!((outer.dst, usize::from(outer.total_len)), (NODE_B, wire.len() - 14));
        // Segmented by a reference segmenter, the inner packets are those the other
        // underlays carry, one by one.
        let inner = &wire[vxlan::OUTER_LEN..];
        let inner_off = offload::decapsulated(off, vxlan::OUTER_LEN, inner).unwrap();
        let whole = crate::testing::segments_of(inner, &inner_off);
        let one_by_one: Vec<Vec<u8>> = cut.iter().map(|(_, w)| w[vxlan::OUTER_LEN..].to_vec()).collect();
        assert_eq!(whole.len(), 15);
        assert_eq!(whole, one_by_one);
        assert_eq!(r.pipeline.stats().events.overlay_whole.get(), 1);
    }

    #[test]
    fn a_tunnel_super_frame_from_a_node_is_delivered_whole() {
        let mut r = Rig::with_tunnel();
        let body = vec![0x5a; 9000];
        let inner =
            FrameSpec::tcp(mac(0xb0), mac(GW), remote(7), local(2), 80, 40000, 0x10).payload(&body).build();
        let inner_off = offload::decode(&gso_header(1398, 34), &inner).unwrap();
        let wire = vxlan_from(NODE_B, 1, &inner);
        let tunnel_off = offload::encapsulated(&inner_off, vxlan::OUTER_LEN);
        let hdr = offload::encode_tunnel(&tunnel_off, &wire);
        let mut pool = FramePool::standalone(crate::frame::LARGE_BUF_SIZE);
        let mut f = pool.copy_of(&wire).unwrap();
        f.offload = offload::decode_tunnel(&hdr, &wire).unwrap();
        assert_eq!(f.offload, tunnel_off, "the header round-trips");
        let sent = r.send_keeping_offload(UNDERLAY, f);
        assert_eq!(sent.len(), 1, "{sent:?}");
        let (port, out, off) = &sent[0];
        assert_eq!(*port, 1, "to the pod");
        assert_eq!((off.gso_type, off.csum_start, off.gso_size), (offload::GSO_TCPV4, 34, 1398));
        assert_eq!(ipv4(out).ttl, 63);
        assert_eq!(&out[54..], &body[..]);
        assert_eq!(r.pipeline.stats().events.overlay_whole_received.get(), 1);

        // A header whose inner offsets miss the inner TCP header is a counted drop.
        let mut f = pool.copy_of(&wire).unwrap();
        f.offload = Offload { csum_start: tunnel_off.csum_start + 4, ..tunnel_off };
        assert!(r.send_keeping_offload(UNDERLAY, f).is_empty());
        assert_eq!(r.drops(UNDERLAY, DropReason::BadOffloadHeader), 1);
    }

    #[test]
    fn a_service_endpoint_on_another_node() {
        let vip = Ipv4Addr::new(10, 96, 0, 10);
        let spec = ServicePortSpec {
            name: "default/web:http".into(),
            vip,
            port: 80,
            protocol: IPPROTO_TCP,
            node_port: None,
            endpoints: vec![EndpointSpec {
                ip: remote(7),
                port: 8080,
                ready: true,
                serving: true,
                terminating: false,
                local: false,
            }],
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
        };
        let mut r = Rig::new(vec![spec]);
        let syn = FrameSpec::tcp(mac(1), mac(GW), local(2), vip, 4000, 80, TCP_SYN).build();
        let sent = r.send(1, &syn);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, UNDERLAY);
        let inner = &sent[0].1[vxlan::OUTER_LEN..];
        let v4 = ipv4(inner);
        assert_eq!((v4.dst, v4.ttl), (remote(7), 63), "DNATed, one hop");
        assert_eq!(v4.l4, L4::Tcp { src_port: 4000, dst_port: 8080, flags: TCP_SYN });
        assert_eq!(parse(inner).unwrap().dst_mac, mac(GW));
        // The endpoint's reply comes back over the overlay and leaves the VIP.
        let reply =
            FrameSpec::tcp(mac(0xb), mac(GW), remote(7), local(2), 8080, 4000, TCP_SYN | TCP_ACK).build();
        let sent = r.send(UNDERLAY, &vxlan_from(NODE_B, 1, &reply));
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, 1);
        let v4 = ipv4(&sent[0].1);
        assert_eq!((v4.src, v4.dst, v4.ttl), (vip, local(2), 63));
        assert_eq!(v4.l4, L4::Tcp { src_port: 80, dst_port: 4000, flags: TCP_SYN | TCP_ACK });
        assert_eq!(parse(&sent[0].1).unwrap().dst_mac, mac(1));
        // Too big for the overlay: refused before translation, so the ICMP quotes what
        // the client sent (to the VIP), which its path-MTU discovery can match.
        let big =
            FrameSpec::tcp(mac(1), mac(GW), local(2), vip, 4000, 80, TCP_ACK).payload(&[1; 1460]).build();
        let sent = r.send(1, &big);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, 1);
        assert_eq!(ipv4(&sent[0].1).l4, L4::Icmpv4 { icmp_type: 3, code: 4 });
        assert_eq!(&sent[0].1[42..42 + 28], &big[14..14 + 28], "the client's own packet, to the VIP");
    }

    #[test]
    fn pods_cannot_send_vxlan_to_nodes() {
        let mut r = Rig::new(vec![]);
        let inner = FrameSpec::udp(mac(0xb), mac(GW), remote(7), local(3), 1, 2).build();
        for dst in [NODE_B, settings().local_ip] {
            let mut f = FrameSpec::udp(mac(1), mac(GW), local(2), dst, 40000, 4789).payload(&inner).build();
            f[40..42].copy_from_slice(&[0, 0]);
            assert!(r.send(1, &f).is_empty(), "to {dst}");
        }
        assert_eq!(r.drops(1, DropReason::OverlayFromPod), 2);
    }
}
