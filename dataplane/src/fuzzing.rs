//! The topology the `pipeline` fuzz target drives, and the invariants it checks. Kept
//! in the library so a crash found by the fuzzer replays as an ordinary unit test.

use std::net::Ipv4Addr;

use crate::drop_reason::DropReason;
use crate::ids::{PortId, SegmentId, WorkerSet};
use crate::port::memory::{MemoryPort, MemoryPortHandle};
use crate::tables::fdb::FdbConfig;
use crate::tables::services::{BuildMemory, DEFAULT_HAIRPIN_IP, EndpointSpec, ServicePortSpec, ServiceTable};
use crate::tables::{
    Gateway, PortEntry, PortKind, SegmentConfig, Tables, TablesBuilder, UnknownArp, UnknownUnicast,
};
use crate::testing::{SoloSwitch, mac};
use crate::wire;
use crate::wire::parse::{IPPROTO_TCP, IPPROTO_UDP};

/// Two segments (one dropping, one flooding unknown ARP), pods with port security,
/// learning uplinks, a port with a small MTU, and a queue whose port is not in the
/// tables. The FDB cap is tiny so the full-table path runs. Services: [`WEB_VIP`] (TCP
/// 80 and UDP 53, a NodePort on [`NODE_IP`], endpoints pods 1 and 2, and for TCP one on
/// the remote node too) and [`EMPTY_VIP`] (no endpoints). The overlay: segment 0's
/// pod CIDR is this node's, node [`REMOTE_NODE_IP`] has [`REMOTE_CIDR`], VXLAN leaves
/// by uplink 6 and is taken from any uplink.
pub struct Topology {
    switch: SoloSwitch,
    handles: Vec<(PortId, MemoryPortHandle)>,
    builder: TablesBuilder,
    received: u64,
}

pub const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
pub const REMOTE_NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
/// The remote node's pod CIDR, 10.246.0.0/16.
pub const REMOTE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 246, 0, 0), 16);

fn overlay() -> crate::tables::overlay::OverlayTable {
    use crate::tables::overlay::{NodeSpec, OverlaySettings, OverlayTable};
    let settings = OverlaySettings {
        vni: 1,
        udp_port: wire::vxlan::DEFAULT_PORT,
        underlay_mtu: 1500,
        local_ip: NODE_IP,
        segment: SegmentId(0),
        gateway_ip: Ipv4Addr::new(10, 244, 0, 1),
        gateway_mac: mac(0xff00),
        local_cidr: ipnet::Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 24).expect("valid"),
    };
    let node = NodeSpec {
        name: "fz-remote".into(),
        ip: REMOTE_NODE_IP,
        pod_cidrs: vec![ipnet::Ipv4Net::new(REMOTE_CIDR.0, REMOTE_CIDR.1).expect("valid")],
        vtep_mac: None,
    };
    OverlayTable::build(settings, Some(PortId(6)), &[node]).expect("valid overlay")
}

fn services() -> ServiceTable {
    let endpoints: Vec<EndpointSpec> = [2u8, 3]
        .iter()
        .map(|h| EndpointSpec {
            ip: Ipv4Addr::new(10, 244, 0, *h),
            port: 8080,
            ready: true,
            serving: true,
            terminating: false,
            local: true,
        })
        .collect();
    let spec = |name: &str, vip, port, protocol, node_port, endpoints: &[EndpointSpec]| ServicePortSpec {
        name: name.into(),
        vip,
        port,
        protocol,
        node_port,
        endpoints: endpoints.to_vec(),
        affinity_timeout: None,
        external_local: false,
        internal_local: false,
    };
    let mut sticky = spec("fz/web:dns", WEB_VIP, 53, IPPROTO_UDP, None, &endpoints);
    sticky.affinity_timeout = Some(10);
    let mut with_remote = endpoints.clone();
    with_remote.push(EndpointSpec {
        ip: Ipv4Addr::new(10, 246, 0, 7),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        local: false,
    });
    let specs = [
        spec("fz/web:http", WEB_VIP, 80, IPPROTO_TCP, Some(30080), &with_remote),
        sticky,
        spec("fz/empty:http", EMPTY_VIP, 80, IPPROTO_TCP, None, &[]),
    ];
    ServiceTable::build(&specs, Some(NODE_IP), DEFAULT_HAIRPIN_IP, &mut BuildMemory::default())
}

/// Port ids the fuzzer's port byte maps to (modulo the length).
pub const PORTS: [PortId; 7] = [PortId(1), PortId(2), PortId(3), PortId(4), PortId(5), PortId(6), PortId(9)];

fn entry(id: u16, kind: PortKind, segment: u16, mtu: u16) -> PortEntry {
    let pod = kind == PortKind::Pod;
    PortEntry {
        id: PortId(id),
        name: format!("fz{id}"),
        kind,
        segment: SegmentId(segment),
        mac: pod.then(|| mac(u32::from(id))),
        ipv4: if pod { vec![Ipv4Addr::new(10, 244, segment as u8, id as u8 + 1)] } else { vec![] },
        ipv6: vec![],
        port_security: pod,
        mtu,
        tx_workers: WorkerSet::single(0),
        offloads: false,
        tunnel: false,
    }
}

impl Topology {
    pub fn new() -> Topology {
        let mut b = TablesBuilder::default();
        for (segment, unknown_arp, unknown_unicast) in
            [(0u16, UnknownArp::Drop, UnknownUnicast::Drop), (1, UnknownArp::Flood, UnknownUnicast::Flood)]
        {
            b.add_segment(SegmentConfig {
                id: SegmentId(segment),
                gateway: Some(Gateway {
                    ip: Ipv4Addr::new(10, 244, segment as u8, 1),
                    mac: mac(0xff00 + u32::from(segment)),
                }),
                unknown_arp,
                unknown_unicast,
                storm_control: None,
            })
            .expect("fresh builder");
        }
        for p in [
            entry(1, PortKind::Pod, 0, 1500),
            entry(2, PortKind::Pod, 0, 1500),
            entry(3, PortKind::Uplink, 0, 1500),
            entry(4, PortKind::Pod, 1, 600),
            entry(5, PortKind::Uplink, 1, 9000),
            entry(6, PortKind::Uplink, 1, 1500),
        ] {
            b.add_port(p).expect("distinct ports");
        }
        b.set_services(std::sync::Arc::new(services()));
        b.set_overlay(std::sync::Arc::new(overlay()));
        let tables = b.build().expect("valid tables");
        let mut switch =
            SoloSwitch::new(tables, FdbConfig { max_entries_per_segment: 8, aging_secs: 300 }, 16, 32);
        let mut handles = Vec::new();
        // Port 9 has a queue but is not in the tables.
        for id in PORTS {
            // Each frame is drained before the next: a frame floods to at most five ports.
            let (q, h) = MemoryPort::pair(&format!("fz{id}"), 256);
            switch.add_queue(id, Box::new(q));
            handles.push((id, h));
        }
        Topology { switch, handles, builder: b, received: 0 }
    }

    /// Delivers one frame on the port `port_byte` selects and runs the switch.
    pub fn receive(&mut self, port_byte: u8, frame: &[u8]) {
        let (_, h) = &self.handles[usize::from(port_byte) % self.handles.len()];
        if h.inject(frame.to_vec()) {
            self.received += 1;
        }
        self.drain();
    }

    /// A control-plane event: age the FDB far into the future, republish the tables
    /// (invalidating every cache), or forget every tracked flow.
    pub fn control(&mut self, op: u8) {
        match op % 3 {
            0 => {
                self.switch.fdb().age_out(u32::MAX);
            }
            1 => self.switch.publish(self.rebuild()),
            _ => {
                self.switch.conntrack().expire(u32::MAX);
            }
        }
    }

    fn rebuild(&self) -> Tables {
        self.builder.build().expect("unchanged ports stay valid")
    }

    /// Runs the switch until it has taken every injected frame; checks that every
    /// frame it sent parses.
    fn drain(&mut self) {
        while self.handles.iter().any(|(_, h)| h.pending_rx() > 0) {
            self.switch.poll();
        }
        for (id, h) in &self.handles {
            for frame in h.take_sent() {
                assert!(
                    wire::parse(&frame).is_ok(),
                    "port {id} sent a frame that does not parse: {frame:02x?}"
                );
            }
        }
    }

    /// Everything received is accounted for exactly once; everything sent parses.
    pub fn check_invariants(&mut self) {
        self.drain();
        let stats = self.switch.stats();
        let tx: u64 = stats.ports.iter().map(|p| p.tx_packets).sum();
        let rx: u64 = stats.ports.iter().map(|p| p.rx_packets).sum();
        assert_eq!(rx, self.received, "every injected frame was received");
        let tx_failed = stats.drops_of(DropReason::TxFailed);
        assert_eq!(tx_failed, 0, "captures are large enough");
        // Cutting a super-frame turns one forwarded frame into several sent ones.
        let extra_segments = stats.events.gso_segments - stats.events.gso_segmented;
        let forwarded = tx - stats.events.flood_copies - extra_segments;
        assert_eq!(
            forwarded + stats.events.flooded + stats.total_drops(),
            rx,
            "each frame forwarded, flooded or dropped exactly once: {stats:?}"
        );
    }
}

impl Default for Topology {
    fn default() -> Self {
        Topology::new()
    }
}

/// The whole-frame encapsulation and the coalescer, against the reference segmenter, on
/// what a pod's TAP hands over (`hdr`, the virtio-net header, and `frame`). Panics when
/// an invariant breaks: a super-frame the pipeline would take, once encapsulated whole,
/// described to a tunnel port, read back and decapsulated, cuts into the very segments
/// the other underlays carry; and those segments, coalesced toward a pod, cut again into
/// the same segments.
pub fn check_whole_encapsulation(hdr: &[u8; wire::offload::VNET_HDR_LEN], frame: &[u8]) {
    use wire::offload;
    use wire::vxlan::{OUTER_LEN, Outer};
    let Ok(off) = offload::decode(hdr, frame) else { return };
    let accepted = wire::parse(frame).is_ok_and(|m| offload::matches_headers(&off, &m).is_ok());
    if !off.is_gso() || !accepted {
        return;
    }
    let cut = crate::testing::segments_of(frame, &off);
    if frame.len() - wire::ethernet::HEADER_LEN + OUTER_LEN <= usize::from(u16::MAX)
        && matches!(off.gso_type & !offload::GSO_ECN, offload::GSO_TCPV4 | offload::GSO_TCPV6)
    {
        let mut outer = [0u8; OUTER_LEN];
        let o = Outer {
            src_mac: mac(1),
            dst_mac: mac(2),
            src_ip: NODE_IP,
            dst_ip: REMOTE_NODE_IP,
            src_port: 50000,
            dst_port: wire::vxlan::DEFAULT_PORT,
            vni: 1,
            ttl: 64,
        };
        wire::vxlan::write_outer(&mut outer, &o, frame.len());
        let whole = [&outer[..], frame].concat();
        let tunnel = offload::encapsulated(&off, OUTER_LEN);
        let read = offload::decode_tunnel(&offload::encode_tunnel(&tunnel, &whole), &whole);
        assert_eq!(read, Ok(tunnel), "a tunnel header as written reads back");
        let inner = offload::decapsulated(&tunnel, OUTER_LEN, frame).expect("the inner super-frame is valid");
        assert_eq!(
            crate::testing::segments_of(frame, &inner),
            cut,
            "whole, then cut by the kernel: the same segments"
        );
    }
    let mut pool = crate::frame::FramePool::standalone(crate::frame::DEFAULT_BUF_SIZE);
    let mut frames: Vec<crate::frame::Frame> = cut.iter().filter_map(|s| pool.copy_of(s)).collect();
    let stats = crate::stats::WorkerStats::new(1);
    crate::pipeline::coalesce_tcp(&mut frames, &mut Vec::new(), &mut pool, &stats);
    let again: Vec<Vec<u8>> = frames
        .iter()
        .flat_map(|f| {
            if f.offload.is_gso() {
                crate::testing::segments_of(f.data(), &f.offload)
            } else {
                vec![f.data().to_vec()]
            }
        })
        .collect();
    assert_eq!(again, cut, "coalesced, then cut: the same segments");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FrameSpec, arp_request, gratuitous_arp};
    use crate::wire::MacAddr;

    /// The fuzz target's loop over a hand-written input touching every path.
    #[test]
    fn mixed_traffic_keeps_the_invariants() {
        let mut t = Topology::new();
        let ip = |s, h| Ipv4Addr::new(10, 244, s, h);
        for n in 0..20u32 {
            t.receive(2, &FrameSpec::udp(mac(0x500 + n), mac(1), ip(0, 9), ip(0, 2), 1, 2).build());
        }
        t.receive(0, &FrameSpec::udp(mac(1), mac(0x500), ip(0, 2), ip(0, 9), 1, 2).build());
        t.receive(0, &arp_request(mac(1), ip(0, 2), ip(0, 3)));
        t.receive(0, &arp_request(mac(1), ip(0, 2), ip(0, 77)));
        t.receive(3, &arp_request(mac(4), ip(1, 5), ip(1, 77)));
        t.receive(0, &gratuitous_arp(mac(1), ip(0, 2)));
        t.receive(
            3,
            &FrameSpec::udp(mac(4), MacAddr::BROADCAST, ip(1, 5), ip(1, 255), 1, 2)
                .payload(&[0; 1000])
                .build(),
        );
        t.receive(6, &FrameSpec::udp(mac(9), mac(1), ip(0, 9), ip(0, 2), 1, 2).build());
        t.control(0x80);
        t.control(0x81);
        t.receive(1, &[0u8; 3]);
        // Services: a flow to the VIP and its answer, a NodePort from the uplink, a
        // refusal, an ICMP error about the flow, and conntrack forgetting it all.
        let gw = mac(0xff00);
        t.receive(0, &FrameSpec::tcp(mac(1), gw, ip(0, 2), WEB_VIP, 40000, 80, 0x02).build());
        t.receive(1, &FrameSpec::tcp(mac(2), gw, ip(0, 3), ip(0, 2), 8080, 40000, 0x12).build());
        t.receive(0, &FrameSpec::udp(mac(1), gw, ip(0, 2), WEB_VIP, 5353, 53).build());
        t.receive(
            2,
            &FrameSpec::tcp(mac(0x700), mac(0x701), Ipv4Addr::new(192, 168, 0, 9), NODE_IP, 5, 30080, 0x02)
                .build(),
        );
        t.receive(0, &FrameSpec::tcp(mac(1), gw, ip(0, 2), EMPTY_VIP, 40001, 80, 0x02).build());
        // The overlay: out to the remote node, in from it, a too-big one, a spoofed one.
        let far = Ipv4Addr::new(10, 246, 0, 5);
        t.receive(0, &FrameSpec::udp(mac(1), gw, ip(0, 2), far, 1, 2).build());
        t.receive(0, &FrameSpec::tcp(mac(1), gw, ip(0, 2), far, 1, 2, 0x10).payload(&[0; 1440]).build());
        for src in [far, ip(0, 9)] {
            let inner = FrameSpec::udp(mac(0xb), gw, src, ip(0, 2), 3, 4).build();
            let mut outer = [0u8; wire::vxlan::OUTER_LEN];
            let o = wire::vxlan::Outer {
                src_mac: mac(0x800),
                dst_mac: mac(0x801),
                src_ip: REMOTE_NODE_IP,
                dst_ip: NODE_IP,
                src_port: 50000,
                dst_port: wire::vxlan::DEFAULT_PORT,
                vni: 1,
                ttl: 64,
            };
            wire::vxlan::write_outer(&mut outer, &o, inner.len());
            t.receive(2, &[&outer[..], &inner[..]].concat());
        }
        t.control(0x82);
        t.check_invariants();
        let s = t.switch.stats();
        assert!(s.events.fdb_full > 0 && s.events.flooded > 0 && s.events.arp_replies > 0);
        assert!(s.drops_of(DropReason::UnknownIngressPort) > 0);
        assert!(s.drops_of(DropReason::EgressMtuExceeded) > 0 || s.drops_of(DropReason::OversizedFrame) > 0);
        assert!(s.events.service_flows >= 3 && s.events.service_rejects == 1, "{:?}", s.events);
        assert!(s.events.overlay_encapsulated >= 1 && s.events.overlay_decapsulated == 1, "{:?}", s.events);
        assert_eq!((s.events.frag_needed_sent, s.drops_of(DropReason::VxlanSpoofedSource)), (1, 1));
    }

    /// Every input of the tunnel target's committed corpus (crashes it found included)
    /// keeps the invariants.
    #[test]
    fn the_tunnel_corpus_replays() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/tunnel");
        let mut replayed = 0;
        for entry in std::fs::read_dir(&dir).expect("the committed corpus") {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            if let Some((hdr, frame)) = data.split_first_chunk::<{ wire::offload::VNET_HDR_LEN }>() {
                check_whole_encapsulation(hdr, frame);
                replayed += 1;
            }
        }
        assert!(replayed > 0, "nothing in {}", dir.display());
    }

    /// The tunnel fuzz target's check on the super-frames a pod's TCP sends: IPv4 and
    /// IPv6, a last segment short or whole, one segment only.
    #[test]
    fn whole_encapsulation_and_coalescing_keep_the_segments() {
        use crate::wire::offload::{F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN};
        let ip = |h| Ipv4Addr::new(10, 244, 0, h);
        for (payload, mss) in [(10 * 1398 + 7, 1398u16), (4 * 1000, 1000), (900, 1398), (60000, 1448)] {
            let body: Vec<u8> = (0..payload).map(|i| (i * 31 + 1) as u8).collect();
            let v4 = FrameSpec::tcp(mac(1), mac(2), ip(2), ip(3), 40000, 80, 0x18).payload(&body).build();
            let v6 = FrameSpec::tcp6(
                mac(1),
                mac(2),
                "fd00::2".parse().unwrap(),
                "fd00::3".parse().unwrap(),
                40000,
                80,
                0x18,
            )
            .payload(&body)
            .build();
            for (frame, gso_type, l4) in [(v4, GSO_TCPV4, 34u16), (v6, GSO_TCPV6, 54)] {
                let mut hdr = [0u8; VNET_HDR_LEN];
                hdr[0] = F_NEEDS_CSUM;
                hdr[1] = gso_type;
                hdr[4..6].copy_from_slice(&mss.to_ne_bytes());
                hdr[6..8].copy_from_slice(&l4.to_ne_bytes());
                hdr[8..10].copy_from_slice(&16u16.to_ne_bytes());
                assert!(crate::wire::offload::decode(&hdr, &frame).is_ok(), "{payload}/{mss}");
                check_whole_encapsulation(&hdr, &frame);
            }
        }
    }
}
