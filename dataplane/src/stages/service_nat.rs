//! Service NAT: the data-path half of kube-proxy.
//!
//! A packet to a Service VIP:port (or to the node's address at a NodePort, from outside
//! the pod network) starts a flow: an endpoint is picked — session affinity first, else
//! Maglev over the 5-tuple — a conntrack entry records both directions, and the packet
//! is DNATed (and SNATed where needed) and routed to the endpoint. Every later packet of
//! the flow, either way, is found in conntrack and rewritten to the other side's view.
//! ICMP errors about a translated flow get their quoted packet translated too.
//!
//! Source NAT is used only where the reply would not come back through the switch
//! otherwise: a pod picked as the endpoint of its own Service (hairpin: the source
//! becomes the Service table's `hairpin_ip`), and NodePort traffic with
//! `externalTrafficPolicy: Cluster` (the source becomes the node's address). A reply
//! tuple already used by another flow gets another source port, as the kernel's NAT
//! clash resolution does.
//!
//! Only IPv4 TCP and UDP are translated; later IP fragments to a VIP are dropped (their
//! ports are not in them).

use std::net::Ipv4Addr;
use std::ops::ControlFlow;

use super::l3::{self, Ttl};
use crate::drop_reason::DropReason;
use crate::stage::{Packet, StageContext, Step, drop, forward};
use crate::tables::PortKind;
use crate::tables::conntrack::{Conn, Direction, InsertError, ReturnPath, Tuple};
use crate::tables::maglev::{flow_hash, mix64};
use crate::tables::services::ServicePort;
use crate::wire::ipv4::Ipv4Mut;
use crate::wire::{Fragment, Ipv4Meta, L4, Net, ethernet, icmp};

/// A packet that starts a flow to a Service.
struct NewFlow<'s> {
    tuple: Tuple,
    tcp_flags: u8,
    service: &'s ServicePort,
    /// From outside the pod network (a NodePort client): its traffic policy applies.
    external: bool,
}

/// The stage. Kept out of line: most frames skip it (see `pipeline::stages`), and
/// inlined it would weigh on the plain L2 path.
#[inline(never)]
pub(crate) fn translate<'a>(ctx: &mut StageContext<'a>, pkt: &mut Packet<'a, '_>) -> Step {
    let svc = ctx.tables.services();
    if svc.is_empty() {
        return ControlFlow::Continue(());
    }
    let Net::Ipv4(ip) = pkt.meta.net else { return ControlFlow::Continue(()) };
    let (src_port, dst_port, flags) = match ip.l4 {
        L4::Tcp { src_port, dst_port, flags } => (src_port, dst_port, flags),
        L4::Udp { src_port, dst_port } => (src_port, dst_port, 0),
        L4::Icmpv4 { icmp_type, .. } if icmp::is_error(icmp_type) => {
            return icmp_error(ctx, pkt, &ip);
        }
        _ => {
            if ip.fragment == Fragment::Later && svc.is_vip(ip.dst) {
                return drop(DropReason::ServiceFragment);
            }
            return ControlFlow::Continue(());
        }
    };
    let proto = ip.protocol;
    let to_node_port = svc.node_ip == Some(ip.dst);
    // Cheap tests first: most pod traffic has nothing to do with Services.
    if !(svc.is_vip(ip.dst)
        || to_node_port
        || svc.is_endpoint(ip.src, src_port, proto)
        || svc.is_snat_address(ip.dst)
        || ip.dst == ctx.tables.overlay().settings.gateway_ip)
    {
        return ControlFlow::Continue(());
    }
    let t = Tuple { proto, src: ip.src, src_port, dst: ip.dst, dst_port };
    if ip.fragment == Fragment::First {
        // Only what would be translated: the later fragments could not follow it.
        // Anything else (a large datagram to the node's own address) passes whole.
        let translated = ctx.ct.lookup(&t).is_some()
            || svc.by_vip(ip.dst, dst_port, proto).is_some()
            || (to_node_port && svc.by_node_port(dst_port, proto).is_some());
        return if translated { drop(DropReason::ServiceFragment) } else { ControlFlow::Continue(()) };
    }
    if let Some((conn, dir)) = ctx.ct.lookup(&t) {
        if !conn.is_reopened_by(dir, flags) {
            conn.observe(dir, flags, ctx.now);
            return apply(ctx, pkt, &ip, conn, dir);
        }
        // A new connection on a closed flow's tuple: a fresh choice, below.
        ctx.ct.remove(conn);
    }
    let service = match svc.by_vip(ip.dst, dst_port, proto) {
        Some(sp) => sp,
        None if to_node_port => match svc.by_node_port(dst_port, proto) {
            Some(sp) => sp,
            None => return ControlFlow::Continue(()),
        },
        // A packet from an endpoint that belongs to no translated flow: ordinary traffic.
        None => return ControlFlow::Continue(()),
    };
    // Pods and the node's own processes (through the host port) reaching a NodePort
    // are cluster traffic, as under kube-proxy (which sends the node's own to any
    // endpoint): internal policy, no source NAT.
    let external = to_node_port && !matches!(pkt.port.kind, PortKind::Pod | PortKind::Host);
    new_flow(ctx, pkt, &ip, NewFlow { tuple: t, tcp_flags: flags, service, external })
}

fn new_flow(ctx: &StageContext<'_>, pkt: &mut Packet<'_, '_>, ip: &Ipv4Meta, flow: NewFlow<'_>) -> Step {
    let (t, sp) = (flow.tuple, flow.service);
    let svc = ctx.tables.services();
    // The traffic policy of where the flow came from: outside (NodePort) or a pod.
    let local_only = if flow.external { sp.external_local } else { sp.internal_local };
    let hash = flow_hash(u32::from(t.src), u32::from(t.dst), t.src_port, t.dst_port, t.proto);
    let sticky = sp.affinity_timeout.and_then(|_| ctx.affinity.get(sp.id, t.src, ctx.now));
    let backend = match sticky {
        Some(key) if sp.has_backend(key, local_only) => {
            let list = if local_only { &sp.local_backends } else { &sp.backends };
            list.iter().copied().find(|b| b.key() == key)
        }
        _ => sp.pick(hash, local_only),
    };
    let Some(backend) = backend else {
        if local_only && !sp.backends.is_empty() {
            // kube-proxy drops (not rejects) what a Local policy cannot serve here; a
            // Service with no endpoints anywhere is rejected as usual.
            return drop(DropReason::ServiceNoLocalEndpoints);
        }
        return reject(ctx, pkt, ip);
    };
    let snat = if flow.external && !sp.external_local {
        // The address of the node's side toward the endpoint, as kube-proxy's
        // masquerade picks: the node's own for a local endpoint, the gateway's (inside
        // this node's pod CIDR, so the reply comes back over the overlay) for a remote one.
        if backend.local { svc.node_ip } else { Some(ctx.tables.overlay().settings.gateway_ip) }
    } else if backend.ip == t.src {
        Some(svc.hairpin_ip)
    } else {
        None
    };
    let return_path = (pkt.port.kind != PortKind::Pod).then_some(ReturnPath {
        port: pkt.port.id,
        client_mac: pkt.meta.src_mac,
        local_mac: pkt.meta.dst_mac,
    });
    let reply_dst = snat.unwrap_or(t.src);
    // The client's own port first; on a clash, others, as the kernel's NAT does.
    let mut candidates =
        std::iter::once(t.src_port).chain((0..16u64).map(|i| 32768 + (mix64(hash ^ i) % 28232) as u16));
    let conn = loop {
        let Some(reply_port) = candidates.next() else { return drop(DropReason::ConntrackClash) };
        let reply = Tuple {
            proto: t.proto,
            src: backend.ip,
            src_port: backend.port,
            dst: reply_dst,
            dst_port: reply_port,
        };
        match ctx.ct.insert(t, reply, sp.id, return_path, ctx.now) {
            Ok(c) => break c,
            Err(InsertError::Full) => return drop(DropReason::ConntrackFull),
            Err(InsertError::Clash) => continue,
        }
    };
    // Only an admitted flow pins its client: refused ones (a full table) leave nothing.
    if let Some(timeout) = sp.affinity_timeout {
        ctx.affinity.set(sp.id, t.src, backend.key(), timeout, ctx.now);
    }
    ctx.events().service_flows.inc();
    conn.observe(Direction::Orig, flow.tcp_flags, ctx.now);
    apply(ctx, pkt, ip, conn, Direction::Orig)
}

/// Whether the packet crosses a routed hop here: through the gateway, or in from the
/// uplink (addressed to the node).
fn is_routed(ctx: &StageContext<'_>, pkt: &Packet<'_, '_>) -> bool {
    let gateway = ctx.tables.segment(pkt.port.segment).and_then(|s| s.config.gateway);
    pkt.port.kind == PortKind::Uplink || gateway.is_some_and(|g| g.mac == pkt.meta.dst_mac)
}

/// Rewrites a packet of `conn` in direction `dir` to the other side's view and routes
/// it there.
fn apply(
    ctx: &StageContext<'_>,
    pkt: &mut Packet<'_, '_>,
    ip: &Ipv4Meta,
    conn: &Conn,
    dir: Direction,
) -> Step {
    let (to, from) = match dir {
        // Toward the endpoint: the reply tuple, reversed.
        Direction::Orig => (conn.reply.reversed(), conn.orig),
        // Toward the client: the orig tuple, reversed.
        Direction::Reply => (conn.orig.reversed(), conn.reply),
    };
    // Toward an endpoint on another node, too big for the overlay: refused before any
    // rewriting, so the ICMP quotes the packet the client sent (to the VIP or the
    // NodePort) and its path-MTU discovery can match it.
    let ov = ctx.tables.overlay();
    if dir == Direction::Orig
        && !ov.is_empty()
        && ov.route(to.dst).is_some()
        && l3::too_big(ov, pkt.frame, pkt.meta)
    {
        if ip.dont_fragment && pkt.port.kind != PortKind::Overlay {
            return l3::fragmentation_needed(ctx, pkt);
        }
        return drop(DropReason::OverlayMtuExceeded);
    }
    let routed = is_routed(ctx, pkt);
    let partial = l3::has_partial_checksum(pkt.frame);
    {
        let mut p =
            Ipv4Mut::new(pkt.frame.data_mut(), pkt.meta.l3_offset, ip).with_partial_l4_checksum(partial);
        if to.src != from.src {
            p.set_source(to.src);
        }
        if to.src_port != from.src_port {
            p.set_source_port(to.src_port);
        }
        if to.dst != from.dst {
            p.set_destination(to.dst);
        }
        if to.dst_port != from.dst_port {
            p.set_destination_port(to.dst_port);
        }
        if routed && !p.decrement_ttl() {
            return drop(DropReason::TtlExpired);
        }
    }
    let return_path = if dir == Direction::Reply { conn.return_path } else { None };
    route(ctx, pkt, to.dst, return_path)
}

/// Sends a translated frame (its TTL done) toward `dst`: back out where a NodePort
/// client came from, to the local pod that has the address, or to the node whose pod
/// CIDR holds it.
fn route(
    ctx: &StageContext<'_>,
    pkt: &mut Packet<'_, '_>,
    dst: Ipv4Addr,
    return_path: Option<ReturnPath>,
) -> Step {
    if let Some(rp) = return_path {
        ethernet::set_addresses(pkt.frame.data_mut(), rp.client_mac, rp.local_mac);
        return forward(rp.port);
    }
    let gateway = ctx.tables.segment(pkt.port.segment).and_then(|s| s.config.gateway);
    let via = gateway.map_or(pkt.meta.dst_mac, |g| g.mac);
    if let Some(hop) = l3::owner_on_node(ctx.tables, pkt.port.segment, dst, via) {
        return l3::send(pkt, hop, Ttl::Done);
    }
    // An endpoint on another node: over the overlay.
    match ctx.tables.overlay().route(dst) {
        Some(node) => l3::to_node(ctx, pkt, node, Ttl::Done),
        None => drop(DropReason::ServiceNoRoute),
    }
}

/// No endpoint: answer with ICMP port unreachable from the VIP, as kube-proxy's REJECT
/// rule does (the client sees "connection refused" at once), and drop the packet.
fn reject(ctx: &StageContext<'_>, pkt: &mut Packet<'_, '_>, ip: &Ipv4Meta) -> Step {
    l3::icmp_reply(
        pkt.frame,
        pkt.meta,
        ip,
        ip.dst,
        icmp::TYPE_DEST_UNREACHABLE,
        icmp::CODE_PORT_UNREACHABLE,
        0,
    );
    ctx.events().service_rejects.inc();
    forward(pkt.port.id)
}

/// An ICMP error quoting a packet of a translated flow: the quoted packet and the outer
/// addresses are rewritten to what the receiver of the error sent or expects, so
/// "connection refused" and path-MTU discovery work through a Service.
fn icmp_error(ctx: &StageContext<'_>, pkt: &mut Packet<'_, '_>, ip: &Ipv4Meta) -> Step {
    let l4 = usize::from(ip.l4_offset);
    let end = usize::from(pkt.meta.l3_offset) + usize::from(ip.total_len);
    let Some(message) = pkt.frame.data_mut().get_mut(l4..end) else { return ControlFlow::Continue(()) };
    let Some(mut quoted) = icmp::Quoted::new(message) else { return ControlFlow::Continue(()) };
    let seen = Tuple {
        proto: quoted.protocol(),
        src: quoted.source(),
        src_port: quoted.source_port(),
        dst: quoted.destination(),
        dst_port: quoted.destination_port(),
    };
    let Some((conn, dir)) = ctx.ct.lookup(&seen.reversed()) else { return ControlFlow::Continue(()) };
    // The quoted packet went the other way: `dir` is the direction of this error's
    // receiver's packets. Rewrite the quoted packet to what that receiver sent.
    let (want, towards_client) = match dir {
        // reversed(quoted) is the reply tuple: quoted is an orig packet after translation.
        Direction::Reply => (conn.orig, true),
        // reversed(quoted) is the orig tuple: quoted is a reply packet after translation.
        Direction::Orig => (conn.reply, false),
    };
    let outer_dst = want.src;
    // The quoted packet's endpoint that generated the error (if it did) hides behind
    // the address its peer knows.
    let outer_src = if ip.src == seen.dst { Some(want.dst) } else { None };
    if seen.src != want.src {
        quoted.set_source(want.src);
    }
    if seen.dst != want.dst {
        quoted.set_destination(want.dst);
    }
    if seen.src_port != want.src_port {
        quoted.set_source_port(want.src_port);
    }
    if seen.dst_port != want.dst_port {
        quoted.set_destination_port(want.dst_port);
    }
    let routed = is_routed(ctx, pkt);
    {
        let mut p = Ipv4Mut::new(pkt.frame.data_mut(), pkt.meta.l3_offset, ip);
        if routed && !p.decrement_ttl() {
            return drop(DropReason::TtlExpired);
        }
        p.set_destination(outer_dst);
        if let Some(src) = outer_src {
            p.set_source(src);
        }
    }
    // The ICMP checksum covers everything after it: recompute (at most 576 bytes).
    icmp::fill_checksum(&mut pkt.frame.data_mut()[l4..end]);
    ctx.events().icmp_translated.inc();
    let return_path = if towards_client { conn.return_path } else { None };
    route(ctx, pkt, outer_dst, return_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FramePool;
    use crate::ids::{PortId, SegmentId, WorkerSet};
    use crate::pipeline::{Pipeline, SharedState, TxBatches};
    use crate::stats::WorkerStats;
    use crate::tables::conntrack::ConntrackConfig;
    use crate::tables::fdb::FdbConfig;
    use crate::tables::services::{BuildMemory, EndpointSpec, ServicePortSpec, ServiceTable};
    use crate::tables::tests::{pod, segment0};
    use crate::tables::{PortEntry, Tables, TablesBuilder};
    use crate::testing::{FrameSpec, mac};
    use crate::wire::checksum::{self, fold, pseudo_header_v4, sum};
    use crate::wire::parse::{IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_SYN};
    use crate::wire::{L4, parse};
    use std::sync::Arc;

    const GW: u32 = 0xffff;
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
    const HOST: u16 = 5;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 1, last)
    }

    pub(super) struct Rig {
        tables: Tables,
        pipeline: Pipeline,
        state: SharedState,
        pool: FramePool,
        out: TxBatches,
        now: u32,
    }

    fn endpoint(last: u8) -> EndpointSpec {
        EndpointSpec { ip: ip(last), port: 8080, ready: true, serving: true, terminating: false, local: true }
    }

    fn web(endpoints: Vec<EndpointSpec>) -> ServicePortSpec {
        ServicePortSpec {
            name: "default/web:http".into(),
            vip: VIP,
            port: 80,
            protocol: IPPROTO_TCP,
            node_port: Some(30080),
            endpoints,
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
        }
    }

    impl Rig {
        /// Pods 1..=3 (10.244.1.2-4) in segment 0, uplink 8 in a segment of its own
        /// (as the daemon sets it up), the given Services.
        pub(super) fn new(specs: Vec<ServicePortSpec>, ct: ConntrackConfig) -> Rig {
            let mut b = TablesBuilder::default();
            b.add_segment(segment0()).unwrap();
            b.add_segment(crate::tables::SegmentConfig {
                id: SegmentId(1),
                gateway: None,
                unknown_arp: crate::tables::UnknownArp::Drop,
                unknown_unicast: crate::tables::UnknownUnicast::Flood,
                storm_control: None,
            })
            .unwrap();
            for i in 1..=3u8 {
                b.add_port(pod(u16::from(i), [10, 244, 1, i + 1])).unwrap();
            }
            // The host port, as the daemon makes it: the node's stack behind the gateway.
            let mut host = pod(HOST, [10, 244, 1, 1]);
            host.kind = crate::tables::PortKind::Host;
            host.mac = Some(mac(GW));
            host.ipv4.clear();
            host.port_security = false;
            b.add_port(host).unwrap();
            b.add_port(PortEntry::uplink(
                PortId(8),
                "uplink".into(),
                SegmentId(1),
                1500,
                WorkerSet::single(0),
            ))
            .unwrap();
            let svc = ServiceTable::build(
                &specs,
                Some(NODE),
                Ipv4Addr::new(169, 254, 42, 1),
                &mut BuildMemory::default(),
            );
            b.set_services(Arc::new(svc));
            let state = SharedState::new(FdbConfig::default(), ct);
            Rig {
                tables: b.build().unwrap(),
                pipeline: Pipeline::new(&state, Arc::new(WorkerStats::new(16))),
                state,
                pool: FramePool::standalone(2048),
                out: TxBatches::new(16),
                now: 10,
            }
        }

        pub(super) fn send(&mut self, ingress: u16, frame: Vec<u8>) -> Vec<(u16, Vec<u8>)> {
            let mut batch = vec![self.pool.copy_of(&frame).unwrap()];
            self.pipeline.process(
                &self.tables,
                PortId(ingress),
                self.now,
                &mut batch,
                &mut self.pool,
                &mut self.out,
            );
            self.out.take_sent(&mut self.pool)
        }

        fn drops(&self, port: u16, r: DropReason) -> u64 {
            self.pipeline.stats().drops(PortId(port), r)
        }
    }

    /// Every checksum of an IPv4 TCP/UDP/ICMP frame, from scratch.
    fn assert_valid(frame: &[u8]) -> Ipv4Meta {
        let m = parse(frame).expect("parses (IPv4 header checksum verified)");
        let Net::Ipv4(v4) = m.net else { panic!() };
        let l4 = &frame[usize::from(v4.l4_offset)..14 + usize::from(v4.total_len)];
        match v4.l4 {
            L4::Tcp { .. } | L4::Udp { .. } => {
                let p = pseudo_header_v4(v4.src, v4.dst, v4.protocol, l4.len() as u16);
                assert_eq!(!fold(sum(l4, p)), 0, "L4 checksum");
            }
            L4::Icmpv4 { .. } => assert_eq!(checksum::checksum(l4), 0, "ICMP checksum"),
            _ => {}
        }
        v4
    }

    fn syn(src_mac: u32, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
        FrameSpec::tcp(mac(src_mac), mac(GW), src, dst, sport, dport, TCP_SYN).payload(b"x").build()
    }

    #[test]
    fn a_flow_to_a_vip_is_translated_both_ways() {
        let mut r = Rig::new(vec![web(vec![endpoint(3), endpoint(4)])], ConntrackConfig::default());
        let out = r.send(1, syn(1, ip(2), 40000, VIP, 80));
        let [(egress, f)] = out.as_slice() else { panic!("{out:?}") };
        let v4 = assert_valid(f);
        let backend = v4.dst;
        assert!(backend == ip(3) || backend == ip(4));
        assert_eq!(*egress, if backend == ip(3) { 2 } else { 3 });
        assert_eq!(v4.l4, L4::Tcp { src_port: 40000, dst_port: 8080, flags: TCP_SYN });
        assert_eq!((v4.src, v4.ttl), (ip(2), 63), "no SNAT; routed: TTL decremented");
        assert_eq!((&f[0..6], &f[6..12]), (&mac(u32::from(*egress)).0[..], &mac(GW).0[..]));
        assert_eq!(r.state.conntrack.len(), 1);

        // The endpoint answers the client directly (same subnet): un-DNATed to the VIP.
        let reply =
            FrameSpec::tcp(mac(u32::from(*egress)), mac(1), backend, ip(2), 8080, 40000, TCP_SYN | TCP_ACK)
                .build();
        let back = r.send(*egress, reply);
        let [(1, f)] = back.as_slice() else { panic!("{back:?}") };
        let v4 = assert_valid(f);
        assert_eq!((v4.src, v4.dst, v4.ttl), (VIP, ip(2), 64), "from the VIP; not routed, TTL kept");
        assert_eq!(v4.l4, L4::Tcp { src_port: 80, dst_port: 40000, flags: TCP_SYN | TCP_ACK });
        assert_eq!(&f[6..12], &mac(GW).0[..]);

        // The rest of the flow sticks to the same endpoint.
        for _ in 0..5 {
            let more = FrameSpec::tcp(mac(1), mac(GW), ip(2), VIP, 40000, 80, TCP_ACK).build();
            let [(e, f)] = r.send(1, more).try_into().unwrap();
            assert_eq!((e, assert_valid(&f).dst), (*egress, backend));
        }
        assert_eq!(r.pipeline.stats().events.service_flows.get(), 1);
    }

    #[test]
    fn no_endpoints_is_refused_with_icmp_from_the_vip() {
        let mut r = Rig::new(vec![web(vec![])], ConntrackConfig::default());
        let out = r.send(1, syn(1, ip(2), 40000, VIP, 80));
        let [(1, f)] = out.as_slice() else { panic!("{out:?}") };
        let v4 = assert_valid(f);
        assert_eq!((v4.src, v4.dst), (VIP, ip(2)));
        assert_eq!(v4.l4, L4::Icmpv4 { icmp_type: 3, code: 3 });
        assert_eq!(
            u16::from_be_bytes([f[14 + 28 + 20], f[14 + 28 + 21]]),
            40000,
            "quotes the client's packet"
        );
        assert_eq!(r.pipeline.stats().events.service_rejects.get(), 1);
        assert!(r.state.conntrack.is_empty());
    }

    #[test]
    fn hairpin_gets_source_nat_and_comes_back() {
        let mut r = Rig::new(vec![web(vec![endpoint(2)])], ConntrackConfig::default());
        let out = r.send(1, syn(1, ip(2), 40000, VIP, 80));
        let [(1, f)] = out.as_slice() else { panic!("{out:?}") };
        let v4 = assert_valid(f);
        assert_eq!(
            (v4.src, v4.dst),
            (Ipv4Addr::new(169, 254, 42, 1), ip(2)),
            "to itself, from the hairpin address"
        );
        // Its answer goes to the hairpin address via the gateway, and comes back as the VIP.
        let reply = FrameSpec::tcp(
            mac(1),
            mac(GW),
            ip(2),
            Ipv4Addr::new(169, 254, 42, 1),
            8080,
            40000,
            TCP_SYN | TCP_ACK,
        )
        .build();
        let back = r.send(1, reply);
        let [(1, f)] = back.as_slice() else { panic!("{back:?}") };
        let v4 = assert_valid(f);
        assert_eq!((v4.src, v4.dst), (VIP, ip(2)));
        assert_eq!(v4.l4, L4::Tcp { src_port: 80, dst_port: 40000, flags: TCP_SYN | TCP_ACK });
    }

    #[test]
    fn node_port_from_outside_with_cluster_policy() {
        let mut r = Rig::new(vec![web(vec![endpoint(3)])], ConntrackConfig::default());
        let client = Ipv4Addr::new(192, 168, 50, 99);
        let from_outside =
            FrameSpec::tcp(mac(0x500), mac(0x600), client, NODE, 50000, 30080, TCP_SYN).build();
        let out = r.send(8, from_outside);
        let [(2, f)] = out.as_slice() else { panic!("{out:?}") };
        let v4 = assert_valid(f);
        assert_eq!((v4.src, v4.dst), (NODE, ip(3)), "source NAT to the node's address");
        assert_eq!(v4.ttl, 63, "the node is a routed hop");
        assert_eq!((&f[0..6], &f[6..12]), (&mac(2).0[..], &mac(GW).0[..]), "to the pod, from its gateway");
        let reply = FrameSpec::tcp(mac(2), mac(GW), ip(3), NODE, 8080, 50000, TCP_SYN | TCP_ACK).build();
        let back = r.send(2, reply);
        let [(8, f)] = back.as_slice() else { panic!("{back:?}") };
        let v4 = assert_valid(f);
        assert_eq!((v4.src, v4.dst), (NODE, client));
        assert_eq!(v4.l4, L4::Tcp { src_port: 30080, dst_port: 50000, flags: TCP_SYN | TCP_ACK });
        assert_eq!((&f[0..6], &f[6..12]), (&mac(0x500).0[..], &mac(0x600).0[..]), "back to the client's MAC");
        // A pod reaching the NodePort is cluster traffic: translated, not source-NATed,
        // and the reply comes back from the node's address and NodePort.
        let from_pod = FrameSpec::tcp(mac(1), mac(GW), ip(2), NODE, 40000, 30080, TCP_SYN).build();
        let out = r.send(1, from_pod);
        let [(2, f)] = out.as_slice() else { panic!("{out:?}") };
        let v4 = assert_valid(f);
        assert_eq!((v4.src, v4.dst), (ip(2), ip(3)));
        let reply = FrameSpec::tcp(mac(2), mac(1), ip(3), ip(2), 8080, 40000, TCP_SYN | TCP_ACK).build();
        let back = r.send(2, reply);
        let [(1, f)] = back.as_slice() else { panic!("{back:?}") };
        let v4 = assert_valid(f);
        assert_eq!(
            (v4.src, v4.l4),
            (NODE, L4::Tcp { src_port: 30080, dst_port: 40000, flags: TCP_SYN | TCP_ACK })
        );
    }

    /// The node's own process reaching its NodePort (a rule sends it through the host
    /// port, from the gateway address): cluster traffic, as a pod's — any endpoint even
    /// under a Local policy, no source NAT — and the reply goes back to the host port
    /// from the node's address and NodePort.
    #[test]
    fn node_port_from_the_node_itself_is_cluster_traffic() {
        let mut remote = endpoint(3);
        remote.local = false;
        let mut spec = web(vec![remote]);
        spec.external_local = true;
        let mut r = Rig::new(vec![spec], ConntrackConfig::default());
        let gateway = ip(1);
        let syn = FrameSpec::tcp(mac(GW), mac(GW), gateway, NODE, 45000, 30080, TCP_SYN).build();
        let out = r.send(HOST, syn);
        let [(2, f)] = out.as_slice() else { panic!("{out:?}") };
        let v4 = assert_valid(f);
        assert_eq!((v4.src, v4.dst), (gateway, ip(3)), "not source-NATed");
        let reply = FrameSpec::tcp(mac(2), mac(GW), ip(3), gateway, 8080, 45000, TCP_SYN | TCP_ACK).build();
        let back = r.send(2, reply);
        let [(HOST, f)] = back.as_slice() else { panic!("{back:?}") };
        let v4 = assert_valid(f);
        assert_eq!((v4.src, v4.dst), (NODE, gateway));
        assert_eq!(v4.l4, L4::Tcp { src_port: 30080, dst_port: 45000, flags: TCP_SYN | TCP_ACK });
        assert_eq!(r.drops(HOST, DropReason::ServiceNoLocalEndpoints), 0);
    }

    #[test]
    fn local_policy_without_local_endpoints_drops() {
        let mut remote = endpoint(3);
        remote.local = false;
        let mut spec = web(vec![remote]);
        spec.external_local = true;
        let mut r = Rig::new(vec![spec], ConntrackConfig::default());
        let from_outside = FrameSpec::tcp(
            mac(0x500),
            mac(0x600),
            Ipv4Addr::new(192, 168, 50, 99),
            NODE,
            50000,
            30080,
            TCP_SYN,
        )
        .build();
        assert!(r.send(8, from_outside).is_empty());
        assert_eq!(r.drops(8, DropReason::ServiceNoLocalEndpoints), 1);
    }

    #[test]
    fn internal_local_policy_keeps_cluster_traffic_on_the_node() {
        let mut remote = endpoint(4);
        remote.local = false;
        let mut spec = web(vec![endpoint(3), remote]);
        spec.internal_local = true;
        let mut r = Rig::new(vec![spec.clone()], ConntrackConfig::default());
        for port in 40000..40040 {
            let out = r.send(1, syn(1, ip(2), port, VIP, 80));
            assert_eq!(assert_valid(&out[0].1).dst, ip(3), "only the local endpoint");
        }
        // No local endpoint: dropped, as kube-proxy does, not rejected.
        spec.endpoints = vec![remote];
        let mut r = Rig::new(vec![spec], ConntrackConfig::default());
        assert!(r.send(1, syn(1, ip(2), 40000, VIP, 80)).is_empty());
        assert_eq!(r.drops(1, DropReason::ServiceNoLocalEndpoints), 1);
    }

    #[test]
    fn session_affinity_pins_a_client() {
        let mut spec = web((3..=4).map(endpoint).collect());
        spec.affinity_timeout = Some(10800);
        let mut r = Rig::new(vec![spec], ConntrackConfig::default());
        let first = r.send(1, syn(1, ip(2), 40000, VIP, 80))[0].0;
        for port in 40001..40050 {
            assert_eq!(
                r.send(1, syn(1, ip(2), port, VIP, 80))[0].0,
                first,
                "same endpoint for every new flow"
            );
        }
        assert_eq!(r.state.affinity.len(), 1);
    }

    #[test]
    fn a_full_table_refuses_new_flows_only() {
        let mut r =
            Rig::new(vec![web(vec![endpoint(3)])], ConntrackConfig { max_entries: 2, ..Default::default() });
        assert_eq!(r.send(1, syn(1, ip(2), 40000, VIP, 80)).len(), 1);
        assert_eq!(r.send(1, syn(1, ip(2), 40001, VIP, 80)).len(), 1);
        assert!(r.send(1, syn(1, ip(2), 40002, VIP, 80)).is_empty());
        assert_eq!(r.drops(1, DropReason::ConntrackFull), 1);
        let established = FrameSpec::tcp(mac(1), mac(GW), ip(2), VIP, 40000, 80, TCP_ACK).build();
        assert_eq!(r.send(1, established).len(), 1, "established flows keep working");
    }

    /// An endpoint's ICMP port unreachable about a UDP datagram sent to the VIP reaches
    /// the client as if the VIP had sent it, quoting the datagram the client sent.
    #[test]
    fn icmp_errors_are_translated_back() {
        let mut spec = web(vec![endpoint(3)]);
        spec.protocol = IPPROTO_UDP;
        let mut r = Rig::new(vec![spec], ConntrackConfig::default());
        let query = FrameSpec::udp(mac(1), mac(GW), ip(2), VIP, 5353, 80).payload(b"query").build();
        let [(to, delivered)]: [(u16, Vec<u8>); 1] = r.send(1, query.clone()).try_into().unwrap();
        assert_eq!(to, 2);
        // The endpoint's kernel answers with port unreachable, quoting what it got.
        let mut err = vec![0u8; icmp::MAX_ERROR_FRAME_LEN];
        let e = icmp::IcmpError {
            eth_src: mac(2),
            eth_dst: mac(1),
            src_ip: ip(3),
            dst_ip: ip(2),
            icmp_type: 3,
            code: 3,
            next_hop_mtu: 0,
        };
        let n = icmp::write_error(&mut err, &e, &delivered[14..]);
        let back = r.send(2, err[..n].to_vec());
        let [(1, f)] = back.as_slice() else { panic!("{back:?}") };
        let v4 = assert_valid(f);
        assert_eq!((v4.src, v4.dst), (VIP, ip(2)), "from the VIP");
        assert_eq!(v4.ttl, 64, "sent to the client's MAC directly: not a routed hop");
        let quoted = &f[14 + 28..];
        assert_eq!(checksum::checksum(&quoted[..20]), 0, "the quoted IP header's checksum still verifies");
        assert_eq!(
            (&quoted[12..16], &quoted[16..20]),
            (&query[26..30], &query[30..34]),
            "client -> VIP, as sent"
        );
        assert_eq!(quoted[8], query[22] - 1, "the TTL the endpoint saw (one routed hop)");
        assert_eq!(&quoted[20..28], &query[34..42], "and its UDP header, checksum included");
        assert_eq!(r.pipeline.stats().events.icmp_translated.get(), 1);
    }

    #[test]
    fn unrelated_traffic_is_untouched() {
        let mut r = Rig::new(vec![web(vec![endpoint(3)])], ConntrackConfig::default());
        // Pod to pod, and an endpoint's traffic that belongs to no Service flow.
        let plain = FrameSpec::tcp(mac(1), mac(3), ip(2), ip(4), 1000, 2000, TCP_SYN).build();
        assert_eq!(r.send(1, plain.clone()), vec![(3, plain)]);
        let from_endpoint = FrameSpec::tcp(mac(2), mac(3), ip(3), ip(4), 8080, 2000, TCP_ACK).build();
        assert_eq!(r.send(2, from_endpoint.clone()), vec![(3, from_endpoint)]);
        assert!(r.state.conntrack.is_empty());
        // A large datagram to the node's own address at a port no Service uses, and an
        // endpoint's large reply straight to a pod: first fragments pass.
        let to_node = FrameSpec::udp(mac(1), mac(GW), ip(2), NODE, 1000, 6831).ipv4_fragment(0, true).build();
        r.send(1, to_node);
        let big_reply =
            FrameSpec::udp(mac(2), mac(3), ip(3), ip(4), 8080, 2000).ipv4_fragment(0, true).build();
        assert_eq!(r.send(2, big_reply.clone()), vec![(3, big_reply)]);
        assert_eq!(r.drops(1, DropReason::ServiceFragment) + r.drops(2, DropReason::ServiceFragment), 0);
        // One to a VIP is dropped: its later fragments could not be translated.
        r.send(
            1,
            FrameSpec::tcp(mac(1), mac(GW), ip(2), VIP, 1000, 80, TCP_SYN).ipv4_fragment(0, true).build(),
        );
        assert_eq!(r.drops(1, DropReason::ServiceFragment), 1);
    }
}

#[cfg(test)]
mod properties {
    use super::tests::Rig;
    use super::*;
    use crate::tables::conntrack::ConntrackConfig;
    use crate::tables::services::{EndpointSpec, ServicePortSpec};
    use crate::testing::{FrameSpec, mac};
    use crate::wire::checksum::{fold, pseudo_header_v4, sum};
    use crate::wire::parse;
    use crate::wire::parse::{IPPROTO_TCP, IPPROTO_UDP};
    use proptest::prelude::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 7);

    fn verify(frame: &[u8]) -> Ipv4Meta {
        let m = parse(frame).expect("valid IPv4 header checksum");
        let Net::Ipv4(v4) = m.net else { panic!("not IPv4") };
        let l4 = &frame[usize::from(v4.l4_offset)..14 + usize::from(v4.total_len)];
        let zero_udp = v4.protocol == IPPROTO_UDP && l4[6..8] == [0, 0];
        if !zero_udp {
            let p = pseudo_header_v4(v4.src, v4.dst, v4.protocol, l4.len() as u16);
            assert_eq!(!fold(sum(l4, p)), 0, "L4 checksum recomputed from scratch");
        }
        v4
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Any flow through DNAT and back: every checksum is what a from-scratch
        /// computation gives, a zero UDP checksum stays zero, the payload is untouched.
        #[test]
        fn translated_packets_have_valid_checksums(
            tcp in any::<bool>(),
            client_port in 1u16..,
            service_port in 1u16..,
            target_port in 1u16..,
            payload in proptest::collection::vec(any::<u8>(), 0..400),
            zero_udp_checksum in any::<bool>(),
            client_last in 2u8..=4,
            endpoint_last in 2u8..=4,
        ) {
            let proto = if tcp { IPPROTO_TCP } else { IPPROTO_UDP };
            let spec = ServicePortSpec {
                name: "p/q:r".into(),
                vip: VIP,
                port: service_port,
                protocol: proto,
                node_port: None,
                endpoints: vec![EndpointSpec {
                    ip: Ipv4Addr::new(10, 244, 1, endpoint_last),
                    port: target_port,
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: true,
                }],
                affinity_timeout: None,
                external_local: false,
                internal_local: false,
            };
            let mut r = Rig::new(vec![spec], ConntrackConfig::default());
            let client = Ipv4Addr::new(10, 244, 1, client_last);
            let client_portid = u16::from(client_last) - 1;
            let build = |src, dst, sport, dport, src_mac, dst_mac| {
                let f = if tcp {
                    FrameSpec::tcp(src_mac, dst_mac, src, dst, sport, dport, parse::TCP_ACK)
                } else {
                    FrameSpec::udp(src_mac, dst_mac, src, dst, sport, dport)
                };
                let mut f = f.payload(&payload).build();
                if !tcp && zero_udp_checksum {
                    f[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
                }
                f
            };
            let out = r.send(client_portid, build(client, VIP, client_port, service_port, mac(u32::from(client_portid)), mac(0xffff)));
            prop_assert_eq!(out.len(), 1);
            let (egress, f) = &out[0];
            let v4 = verify(f);
            let l4 = usize::from(v4.l4_offset);
            prop_assert_eq!(&f[l4 + if tcp { 20 } else { 8 }..], &payload[..]);
            if !tcp && zero_udp_checksum {
                prop_assert_eq!(&f[l4 + 6..l4 + 8], &[0u8, 0][..]);
            }
            // The endpoint sees a source it can answer (the client, or the hairpin address).
            let seen_src = v4.src;
            let (sport, dport) = match v4.l4 {
                L4::Tcp { src_port, dst_port, .. } | L4::Udp { src_port, dst_port } => (src_port, dst_port),
                _ => unreachable!(),
            };
            prop_assert_eq!(dport, target_port);
            let reply = build(v4.dst, seen_src, target_port, sport, mac(u32::from(*egress)), mac(0xffff));
            let back = r.send(*egress, reply);
            prop_assert_eq!(back.len(), 1);
            let (to, f) = &back[0];
            prop_assert_eq!(*to, client_portid);
            let v4 = verify(f);
            prop_assert_eq!((v4.src, v4.dst), (VIP, client));
            match v4.l4 {
                L4::Tcp { src_port, dst_port, .. } | L4::Udp { src_port, dst_port } => {
                    prop_assert_eq!((src_port, dst_port), (service_port, client_port));
                }
                _ => unreachable!(),
            }
        }
    }
}
