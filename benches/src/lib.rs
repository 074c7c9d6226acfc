//! Workloads shared by the criterion benches and the callgrind instruction counter:
//! a [`SoloSwitch`] (one worker, polled on the bench thread) over in-memory ports that
//! replay prepared 64-byte frames and discard what the switch sends.

pub mod node;
pub mod plot;
pub mod report;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use vswitch_dataplane::frame::{Frame, FramePool};
use vswitch_dataplane::ids::{PortId, SegmentId, WorkerSet};
use vswitch_dataplane::port::memory::MemoryPort;
use vswitch_dataplane::port::{PortError, PortQueue, TxOutcome};
use vswitch_dataplane::tables::fdb::FdbConfig;
use vswitch_dataplane::tables::overlay::{NodeSpec, OverlaySettings, OverlayTable};
use vswitch_dataplane::tables::services::{
    BuildMemory, DEFAULT_HAIRPIN_IP, EndpointSpec, ServicePortSpec, ServiceTable,
};
use vswitch_dataplane::tables::{
    Gateway, PortEntry, PortKind, SegmentConfig, TablesBuilder, UnknownArp, UnknownUnicast,
};
use vswitch_dataplane::testing::{FrameSpec, SoloSwitch, arp_request, mac};
use vswitch_dataplane::wire::parse::IPPROTO_UDP;
use vswitch_dataplane::wire::{MacAddr, vxlan};

/// 60 bytes on the wire plus the 4-byte FCS the NIC adds: the classic 64-byte frame.
pub const FRAME_LEN: usize = 60;
const UDP_PAYLOAD: usize = FRAME_LEN - 14 - 20 - 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Pod to pod on static (port-security) bindings: the common case on a node.
    L2PodToPod,
    /// Uplink to uplink through a 10k-entry learned FDB, 256 MAC pairs in play.
    L2LearnedHot,
    /// Uplink to uplink through a 10k-entry learned FDB, all 5k pairs cycled.
    L2LearnedUniform,
    /// ARP requests for a pod, answered by the proxy.
    ArpReply,
    /// Broadcast from one port to 8 others.
    Flood8,
    /// Pod to a Service VIP (3 endpoints), 4096 flows already in conntrack: lookup and
    /// DNAT of an established flow.
    ServiceEstablished,
    /// Pod to a Service VIP (3 endpoints), every packet a new flow: Maglev pick,
    /// conntrack insert (table up to 32k flows), DNAT.
    ServiceNewFlow,
    /// As `ServiceNewFlow`, with 10 000 Services installed.
    ServiceNewFlow10k,
    /// Pod to a pod on another node (100 nodes known): route, TTL, VXLAN encapsulation
    /// toward the underlay port.
    VxlanEncap,
    /// VXLAN from another node to a local pod: checks (VNI, sender, inner source and
    /// destination), decapsulation, route to the pod.
    VxlanDecap,
}

impl Workload {
    pub const ALL: [Workload; 10] = [
        Workload::L2PodToPod,
        Workload::L2LearnedHot,
        Workload::L2LearnedUniform,
        Workload::ArpReply,
        Workload::Flood8,
        Workload::ServiceEstablished,
        Workload::ServiceNewFlow,
        Workload::ServiceNewFlow10k,
        Workload::VxlanEncap,
        Workload::VxlanDecap,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::L2PodToPod => "l2_pod_to_pod",
            Workload::L2LearnedHot => "l2_learned_10k_fdb_hot",
            Workload::L2LearnedUniform => "l2_learned_10k_fdb_uniform",
            Workload::ArpReply => "arp_proxy_reply",
            Workload::Flood8 => "flood_8_ports",
            Workload::ServiceEstablished => "service_dnat_established",
            Workload::ServiceNewFlow => "service_dnat_new_flow",
            Workload::ServiceNewFlow10k => "service_dnat_new_flow_10k_services",
            Workload::VxlanEncap => "vxlan_encap",
            Workload::VxlanDecap => "vxlan_decap",
        }
    }

    pub fn from_name(name: &str) -> Option<Workload> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }
}

/// A switch set up for one workload.
pub struct Rig {
    pub switch: SoloSwitch,
    /// Frames the switch received per poll (the batch size).
    pub frames_per_poll: usize,
    sent: Vec<Arc<AtomicU64>>,
    /// New-flow workloads: packets until conntrack must be emptied (the generator's
    /// client ports come round again after 64k flows).
    reset_every: Option<u64>,
    since_reset: u64,
}

impl Rig {
    /// Frames the switch transmitted so far, over all ports.
    pub fn sent(&self) -> u64 {
        self.sent.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn poll(&mut self) -> usize {
        let n = self.switch.poll();
        self.since_reset += n as u64;
        n
    }

    /// Whether [`Rig::reset`] is due (new-flow workloads only). Benches stop their clock
    /// for it: forgetting flows is housekeeping's work, off the packet path.
    pub fn needs_reset(&self) -> bool {
        self.reset_every.is_some_and(|every| self.since_reset >= every)
    }

    /// Empties conntrack, so that the generator's next packets are new flows again.
    pub fn reset(&mut self) {
        self.switch.conntrack().remove_where(|_| true);
        self.since_reset = 0;
    }
}

/// The client port of a new-flow workload: an endless stream of UDP packets from pod 1
/// to a VIP, each from the next source port (UDP checksum zero, so only the port
/// changes).
pub struct FlowGenerator {
    template: Vec<u8>,
    next: u16,
}

impl PortQueue for FlowGenerator {
    fn rx_batch(
        &mut self,
        pool: &mut FramePool,
        batch: &mut Vec<Frame>,
        max: usize,
    ) -> Result<usize, PortError> {
        for _ in 0..max {
            let mut frame = pool.get();
            frame.set(&self.template);
            frame.data_mut()[34..36].copy_from_slice(&self.next.to_be_bytes());
            self.next = self.next.wrapping_add(1);
            batch.push(frame);
        }
        Ok(max)
    }

    fn tx_batch(&mut self, frames: &mut Vec<Frame>, pool: &mut FramePool) -> TxOutcome {
        let sent = frames.len();
        frames.drain(..).for_each(|f| pool.put(f));
        TxOutcome { sent, ..Default::default() }
    }

    fn name(&self) -> &str {
        "flow generator"
    }
}

/// The bench Services: `count` of them, VIPs from 10.96.0.10 up, port 80 UDP, each over
/// the endpoints pods 2–4 (10.244.1.3–5) at port 8080.
pub fn bench_services(count: usize) -> ServiceTable {
    let specs: Vec<ServicePortSpec> = (0..count)
        .map(|i| {
            let n = 10 + i as u32;
            ServicePortSpec {
                name: format!("bench/s{i}:80"),
                vip: Ipv4Addr::new(10, 96, (n >> 8) as u8, n as u8),
                port: 80,
                protocol: IPPROTO_UDP,
                node_port: None,
                endpoints: (2..=4)
                    .map(|p| EndpointSpec {
                        ip: pod_ip(p),
                        port: 8080,
                        ready: true,
                        serving: true,
                        terminating: false,
                        local: true,
                    })
                    .collect(),
                affinity_timeout: None,
                external_local: false,
                internal_local: false,
            }
        })
        .collect();
    ServiceTable::build(&specs, None, DEFAULT_HAIRPIN_IP, &mut BuildMemory::default())
}

/// The bench node's overlay: VNI 1, its pod CIDR 10.244.1.0/24 behind gateway MAC
/// `mac(0xfffe)`.
pub fn overlay_settings() -> OverlaySettings {
    OverlaySettings {
        vni: 1,
        udp_port: vxlan::DEFAULT_PORT,
        underlay_mtu: 1500,
        local_ip: node_ip(0),
        segment: SegmentId(0),
        gateway_ip: Ipv4Addr::new(10, 244, 1, 1),
        gateway_mac: mac(0xfffe),
        local_cidr: "10.244.1.0/24".parse().expect("a CIDR"),
    }
}

fn node_ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, (n >> 8) as u8 + 50, n as u8 + 1)
}

/// `count` other nodes: node n has 10.244.(n+2).0/24 at 192.168.50.(n+1).
pub fn bench_nodes(count: u32) -> Vec<NodeSpec> {
    (1..=count)
        .map(|n| NodeSpec {
            name: format!("node-{n}"),
            ip: node_ip(n),
            pod_cidrs: vec![format!("10.244.{}.0/24", n + 2).parse().expect("a CIDR")],
            vtep_mac: None,
        })
        .collect()
}

/// The VIP the service workloads send to: the middle one of those installed.
pub fn bench_vip(count: usize) -> Ipv4Addr {
    let n = 10 + (count / 2) as u32;
    Ipv4Addr::new(10, 96, (n >> 8) as u8, n as u8)
}

fn pod_ip(n: u16) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, n as u8 + 1)
}

fn port(id: u16, kind: PortKind) -> PortEntry {
    let pod = kind == PortKind::Pod;
    PortEntry {
        id: PortId(id),
        name: format!("p{id}"),
        kind,
        segment: SegmentId(0),
        mac: pod.then(|| mac(u32::from(id))),
        ipv4: if pod { vec![pod_ip(id)] } else { vec![] },
        ipv6: vec![],
        port_security: pod,
        mtu: 1500,
        tx_workers: WorkerSet::single(0),
        offloads: false,
        tunnel: false,
    }
}

fn udp(src: MacAddr, dst: MacAddr, sip: Ipv4Addr, dip: Ipv4Addr, sport: u16) -> Vec<u8> {
    let f = FrameSpec::udp(src, dst, sip, dip, sport, 9).payload(&[0xab; UDP_PAYLOAD]).build();
    debug_assert_eq!(f.len(), FRAME_LEN);
    f
}

/// A 64-byte UDP frame from pod 1 to `vip`:80 through the gateway.
fn service_udp(gateway: MacAddr, vip: Ipv4Addr, sport: u16) -> Vec<u8> {
    let f = FrameSpec::udp(mac(1), gateway, pod_ip(1), vip, sport, 80).payload(&[0xab; UDP_PAYLOAD]).build();
    debug_assert_eq!(f.len(), FRAME_LEN);
    f
}

/// The pod-to-pod frames, for the I/O-only baseline.
pub fn baseline_frames() -> Vec<Vec<u8>> {
    (0..64).map(|i| udp(mac(1), mac(2), pod_ip(1), pod_ip(2), 1000 + i)).collect()
}

/// Builds the switch for `workload`, receiving `batch` frames per poll on port 1.
pub fn rig(workload: Workload, batch: usize) -> Rig {
    let mut b = TablesBuilder::default();
    b.add_segment(SegmentConfig {
        id: SegmentId(0),
        gateway: Some(Gateway { ip: Ipv4Addr::new(10, 244, 1, 1), mac: mac(0xfffe) }),
        unknown_arp: UnknownArp::Drop,
        unknown_unicast: UnknownUnicast::Flood,
        storm_control: None,
    })
    .expect("fresh builder");
    let (kind, ports): (PortKind, u16) = match workload {
        Workload::L2PodToPod | Workload::ArpReply => (PortKind::Pod, 2),
        Workload::L2LearnedHot | Workload::L2LearnedUniform => (PortKind::Uplink, 2),
        Workload::Flood8 => (PortKind::Uplink, 9),
        Workload::ServiceEstablished | Workload::ServiceNewFlow | Workload::ServiceNewFlow10k => {
            (PortKind::Pod, 4)
        }
        Workload::VxlanEncap | Workload::VxlanDecap => (PortKind::Pod, 2),
    };
    let overlay = matches!(workload, Workload::VxlanEncap | Workload::VxlanDecap);
    for id in 1..=ports {
        b.add_port(port(id, kind)).expect("distinct ports");
    }
    if overlay {
        // The underlay port in a segment of its own, 100 other nodes.
        let underlay_id = if workload == Workload::VxlanEncap { 2 } else { 1 };
        b.remove_port(PortId(underlay_id));
        b.add_segment(SegmentConfig {
            id: SegmentId(1),
            gateway: None,
            unknown_arp: UnknownArp::Drop,
            unknown_unicast: UnknownUnicast::Flood,
            storm_control: None,
        })
        .expect("new segment");
        let mut underlay = port(underlay_id, PortKind::Uplink);
        underlay.segment = SegmentId(1);
        b.add_port(underlay).expect("distinct ports");
        b.set_overlay(Arc::new(
            OverlayTable::build(overlay_settings(), Some(PortId(underlay_id)), &bench_nodes(100))
                .expect("valid nodes"),
        ));
    }
    let services = match workload {
        Workload::ServiceEstablished | Workload::ServiceNewFlow => 1,
        Workload::ServiceNewFlow10k => 10_000,
        _ => 0,
    };
    if services > 0 {
        b.set_services(Arc::new(bench_services(services)));
    }
    let gateway = mac(0xfffe);
    let tables = b.build().expect("valid tables");
    let mut switch = SoloSwitch::new(tables, FdbConfig::default(), 16, batch);

    // Learned FDB: 5k hosts behind each uplink.
    const HOSTS: u32 = 5_000;
    if kind == PortKind::Uplink && workload != Workload::Flood8 {
        let now = 0;
        let fdb = switch.fdb().batch();
        for h in 0..HOSTS {
            fdb.learn(SegmentId(0), mac(0x10_0000 + h), PortId(1), now);
            fdb.learn(SegmentId(0), mac(0x20_0000 + h), PortId(2), now);
        }
    }
    let frames: Vec<Vec<u8>> = match workload {
        Workload::L2PodToPod => baseline_frames(),
        Workload::L2LearnedHot | Workload::L2LearnedUniform => {
            let pairs = if workload == Workload::L2LearnedHot { 256 } else { HOSTS };
            let any = Ipv4Addr::new(192, 0, 2, 1);
            // Stride through hosts so consecutive frames hit unrelated entries.
            (0..pairs)
                .map(|i| {
                    let h = (i * 2_017) % HOSTS;
                    udp(mac(0x10_0000 + h), mac(0x20_0000 + (h * 7 + 3) % HOSTS), any, any, i as u16)
                })
                .collect()
        }
        Workload::ArpReply => vec![arp_request(mac(1), pod_ip(1), pod_ip(2))],
        Workload::ServiceEstablished => {
            (0..4096).map(|i| service_udp(gateway, bench_vip(services), 10_000 + i)).collect()
        }
        Workload::ServiceNewFlow | Workload::ServiceNewFlow10k => vec![],
        // To pods of node 42 (10.244.44.0/24), 64 flows.
        Workload::VxlanEncap => (0..64)
            .map(|i| {
                let dst = Ipv4Addr::new(10, 244, 44, 2 + i as u8);
                udp(mac(1), gateway, pod_ip(1), dst, 1000 + i)
            })
            .collect(),
        Workload::VxlanDecap => (0..64)
            .map(|i| {
                let inner =
                    udp(mac(0xb0b), gateway, Ipv4Addr::new(10, 244, 44, 2 + i as u8), pod_ip(2), 1000 + i);
                let mut outer = [0u8; vxlan::OUTER_LEN];
                let o = vxlan::Outer {
                    src_mac: mac(0xb0b0),
                    dst_mac: mac(0xa0a0),
                    src_ip: node_ip(42),
                    dst_ip: overlay_settings().local_ip,
                    src_port: vxlan::source_port(u32::from(i) * 2_654_435_761),
                    dst_port: vxlan::DEFAULT_PORT,
                    vni: 1,
                    ttl: 64,
                };
                vxlan::write_outer(&mut outer, &o, inner.len());
                [&outer[..], &inner[..]].concat()
            })
            .collect(),
        Workload::Flood8 => {
            vec![udp(
                mac(0x10_0001),
                MacAddr::BROADCAST,
                Ipv4Addr::new(192, 0, 2, 1),
                Ipv4Addr::BROADCAST,
                68,
            )]
        }
    };

    // Sinks first: the replay port starts sending on the first poll.
    let mut sent = Vec::new();
    for id in 2..=ports {
        let (sink, counter) = MemoryPort::sink(&format!("out{id}"));
        switch.add_queue(PortId(id), Box::new(sink));
        sent.push(counter);
    }
    let new_flows = frames.is_empty();
    if new_flows {
        let mut template = service_udp(gateway, bench_vip(services), 0);
        template[40..42].copy_from_slice(&[0, 0]); // no UDP checksum
        switch.add_queue(PortId(1), Box::new(FlowGenerator { template, next: 1024 }));
    } else {
        let (replay, counter) = MemoryPort::replay("in", frames);
        switch.add_queue(PortId(1), Box::new(replay));
        sent.push(counter);
    }
    let reset_every = new_flows.then_some(32_768);
    let mut rig = Rig { switch, frames_per_poll: batch, sent, reset_every, since_reset: 0 };
    // Warm the pool and caches; check the workload does what it says.
    for _ in 0..64 {
        rig.poll();
        if rig.needs_reset() {
            rig.reset();
        }
    }
    let stats = rig.switch.stats();
    assert_eq!(stats.total_drops(), 0, "{workload:?} drops: {:?}", stats.drops_by_reason);
    assert!(rig.sent() > 0, "{workload:?} sent nothing");
    rig
}
