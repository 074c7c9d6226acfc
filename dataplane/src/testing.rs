//! Frame builders for tests, benches and fuzz seeds.
//!
//! These allocate and are never used on the data path. Every frame they build is
//! well-formed (lengths and checksums correct) unless a test patches it afterwards.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::MacAddr;
use crate::wire::checksum::{self, pseudo_header_v4};
use crate::wire::offload::{Offload, segment_count, write_segment};
use crate::wire::parse::{
    ARP_OP_REPLY, ARP_OP_REQUEST, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN,
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
};

/// A real TCP SYN, captured with tshark between two namespaces: `ncat 10.244.1.3 80` from
/// 10.244.1.2, Linux 6.18, TX checksum offload off so the TCP checksum is complete
/// (tshark: "Checksum: 0x1017 [correct]"). Options: MSS, SACK-permitted, timestamps, WS.
pub const CAPTURED_TCP_SYN: [u8; 74] = [
    0x02, 0x00, 0x0a, 0xf4, 0x01, 0x03, 0x02, 0x00, 0x0a, 0xf4, 0x01, 0x02, 0x08, 0x00, 0x45, 0x00, 0x00,
    0x3c, 0xab, 0xe5, 0x40, 0x00, 0x40, 0x06, 0x76, 0xea, 0x0a, 0xf4, 0x01, 0x02, 0x0a, 0xf4, 0x01, 0x03,
    0xe8, 0x80, 0x00, 0x50, 0xc1, 0x7c, 0x7c, 0x3e, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0x10,
    0x17, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0xa0, 0x75, 0x5e, 0x07, 0x00, 0x00,
    0x00, 0x00, 0x01, 0x03, 0x03, 0x0a,
];

#[derive(Clone, Debug)]
enum L4Spec {
    Udp { src_port: u16, dst_port: u16 },
    Tcp { src_port: u16, dst_port: u16, flags: u8 },
    IcmpEcho { id: u16 },
}

#[derive(Clone, Debug)]
enum NetSpec {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
        dont_fragment: bool,
        options: Vec<u8>,
        /// Fragment offset in 8-byte units, and the more-fragments flag.
        fragment: Option<(u16, bool)>,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_by_hop: bool,
        fragment: Option<(u16, bool)>,
    },
}

/// A frame to build: Ethernet (+ tags), IPv4 or IPv6, and UDP, TCP or ICMP echo.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    src_mac: MacAddr,
    dst_mac: MacAddr,
    vlans: Vec<u16>,
    net: NetSpec,
    l4: L4Spec,
    payload: Vec<u8>,
}

impl FrameSpec {
    fn v4(src_mac: MacAddr, dst_mac: MacAddr, src: Ipv4Addr, dst: Ipv4Addr, l4: L4Spec) -> Self {
        FrameSpec {
            src_mac,
            dst_mac,
            vlans: Vec::new(),
            net: NetSpec::V4 { src, dst, ttl: 64, dont_fragment: true, options: Vec::new(), fragment: None },
            l4,
            payload: Vec::new(),
        }
    }

    pub fn udp(
        src_mac: MacAddr,
        dst_mac: MacAddr,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        src_port: u16,
        dst_port: u16,
    ) -> Self {
        Self::v4(src_mac, dst_mac, src, dst, L4Spec::Udp { src_port, dst_port })
    }

    pub fn tcp(
        src_mac: MacAddr,
        dst_mac: MacAddr,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        src_port: u16,
        dst_port: u16,
        flags: u8,
    ) -> Self {
        Self::v4(src_mac, dst_mac, src, dst, L4Spec::Tcp { src_port, dst_port, flags })
    }

    pub fn icmp_echo(src_mac: MacAddr, dst_mac: MacAddr, src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Self {
        Self::v4(src_mac, dst_mac, src, dst, L4Spec::IcmpEcho { id })
    }

    pub fn udp6(
        src_mac: MacAddr,
        dst_mac: MacAddr,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        src_port: u16,
        dst_port: u16,
    ) -> Self {
        FrameSpec {
            src_mac,
            dst_mac,
            vlans: Vec::new(),
            net: NetSpec::V6 { src, dst, hop_by_hop: false, fragment: None },
            l4: L4Spec::Udp { src_port, dst_port },
            payload: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn tcp6(
        src_mac: MacAddr,
        dst_mac: MacAddr,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        src_port: u16,
        dst_port: u16,
        flags: u8,
    ) -> Self {
        FrameSpec {
            l4: L4Spec::Tcp { src_port, dst_port, flags },
            ..Self::udp6(src_mac, dst_mac, src, dst, 0, 0)
        }
    }

    /// Adds an 802.1Q tag (outermost first) with this TCI.
    pub fn vlan(mut self, tci: u16) -> Self {
        self.vlans.push(tci);
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub fn ttl(mut self, value: u8) -> Self {
        if let NetSpec::V4 { ttl, .. } = &mut self.net {
            *ttl = value;
        }
        self
    }

    pub fn dont_fragment(mut self, value: bool) -> Self {
        if let NetSpec::V4 { dont_fragment, .. } = &mut self.net {
            *dont_fragment = value;
        }
        self
    }

    /// IPv4 options, padded by the caller to a multiple of four bytes.
    pub fn ipv4_options(mut self, opts: &[u8]) -> Self {
        assert_eq!(opts.len() % 4, 0, "options must be padded to 32 bits");
        if let NetSpec::V4 { options, .. } = &mut self.net {
            *options = opts.to_vec();
        }
        self
    }

    /// Marks the packet as an IPv4 fragment (offset in 8-byte units).
    pub fn ipv4_fragment(mut self, offset: u16, more: bool) -> Self {
        if let NetSpec::V4 { fragment, dont_fragment, .. } = &mut self.net {
            *fragment = Some((offset, more));
            *dont_fragment = false;
        }
        self
    }

    /// Inserts an (empty, padded) IPv6 hop-by-hop options header.
    pub fn ipv6_hop_by_hop(mut self) -> Self {
        if let NetSpec::V6 { hop_by_hop, .. } = &mut self.net {
            *hop_by_hop = true;
        }
        self
    }

    /// Inserts an IPv6 fragment header (offset in 8-byte units).
    pub fn ipv6_fragment(mut self, offset: u16, more: bool) -> Self {
        if let NetSpec::V6 { fragment, .. } = &mut self.net {
            *fragment = Some((offset, more));
        }
        self
    }

    fn l4_bytes(&self) -> (u8, Vec<u8>) {
        let mut l4 = Vec::new();
        let proto = match self.l4 {
            L4Spec::Udp { src_port, dst_port } => {
                l4.extend_from_slice(&src_port.to_be_bytes());
                l4.extend_from_slice(&dst_port.to_be_bytes());
                l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                IPPROTO_UDP
            }
            L4Spec::Tcp { src_port, dst_port, flags } => {
                l4.extend_from_slice(&src_port.to_be_bytes());
                l4.extend_from_slice(&dst_port.to_be_bytes());
                l4.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
                l4.extend_from_slice(&0u32.to_be_bytes()); // ack
                l4.extend_from_slice(&[0x50, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
                IPPROTO_TCP
            }
            L4Spec::IcmpEcho { id } => {
                l4.extend_from_slice(&[8, 0, 0, 0]);
                l4.extend_from_slice(&id.to_be_bytes());
                l4.extend_from_slice(&1u16.to_be_bytes());
                IPPROTO_ICMP
            }
        };
        l4.extend_from_slice(&self.payload);
        (proto, l4)
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128 + self.payload.len());
        f.extend_from_slice(&self.dst_mac.0);
        f.extend_from_slice(&self.src_mac.0);
        for tci in &self.vlans {
            f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        let (proto, mut l4) = self.l4_bytes();
        match &self.net {
            NetSpec::V4 { src, dst, ttl, dont_fragment, options, fragment } => {
                match self.l4 {
                    L4Spec::IcmpEcho { .. } => {
                        let c = checksum::checksum(&l4);
                        l4[2..4].copy_from_slice(&c.to_be_bytes());
                    }
                    _ => {
                        let at = if proto == IPPROTO_UDP { 6 } else { 16 };
                        let sum = pseudo_header_v4(*src, *dst, proto, l4.len() as u16);
                        let c = !checksum::fold(checksum::sum(&l4, sum));
                        let c = if c == 0 && proto == IPPROTO_UDP { 0xffff } else { c };
                        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
                    }
                }
                f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
                let ihl = 5 + options.len() / 4;
                let total = (ihl * 4 + l4.len()) as u16;
                let (offset, more) = fragment.unwrap_or((0, false));
                let flags_frag = (u16::from(*dont_fragment) << 14) | (u16::from(more) << 13) | offset;
                let start = f.len();
                f.push(0x40 | ihl as u8);
                f.push(0);
                f.extend_from_slice(&total.to_be_bytes());
                f.extend_from_slice(&0x1c46u16.to_be_bytes());
                f.extend_from_slice(&flags_frag.to_be_bytes());
                f.extend_from_slice(&[*ttl, proto, 0, 0]);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
                f.extend_from_slice(options);
                let c = checksum::checksum(&f[start..]);
                f[start + 10..start + 12].copy_from_slice(&c.to_be_bytes());
            }
            NetSpec::V6 { src, dst, hop_by_hop, fragment } => {
                let sum = {
                    let mut s = checksum::sum(&src.octets(), 0);
                    s = checksum::sum(&dst.octets(), s);
                    s + l4.len() as u64 + u64::from(proto)
                };
                let c = !checksum::fold(checksum::sum(&l4, sum));
                let at = if proto == IPPROTO_UDP { 6 } else { 16 };
                let c = if c == 0 && proto == IPPROTO_UDP { 0xffff } else { c };
                l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
                let mut exts = Vec::new();
                let mut next = proto;
                if let Some((offset, more)) = fragment {
                    let mut frag = vec![next, 0];
                    frag.extend_from_slice(&((offset << 3) | u16::from(*more)).to_be_bytes());
                    frag.extend_from_slice(&0xabcd_0001u32.to_be_bytes());
                    exts.splice(0..0, frag);
                    next = 44;
                }
                if *hop_by_hop {
                    // Next header, length 0 (8 bytes), PadN of 4 bytes.
                    let hbh = vec![next, 0, 1, 4, 0, 0, 0, 0];
                    exts.splice(0..0, hbh);
                    next = 0;
                }
                f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&((exts.len() + l4.len()) as u16).to_be_bytes());
                f.extend_from_slice(&[next, 64]);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
                f.extend_from_slice(&exts);
            }
        }
        f.extend_from_slice(&l4);
        f
    }
}

fn arp(
    op: u16,
    eth_dst: MacAddr,
    sender_mac: MacAddr,
    sender_ip: Ipv4Addr,
    target_mac: MacAddr,
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&eth_dst.0);
    f.extend_from_slice(&sender_mac.0);
    f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sender_mac.0);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&target_mac.0);
    f.extend_from_slice(&target_ip.octets());
    f
}

/// A broadcast "who has `target_ip`" from `sender_mac`/`sender_ip`.
pub fn arp_request(sender_mac: MacAddr, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    arp(ARP_OP_REQUEST, MacAddr::BROADCAST, sender_mac, sender_ip, MacAddr::ZERO, target_ip)
}

/// A unicast "`sender_ip` is at `sender_mac`" to `target_mac`/`target_ip`.
pub fn arp_reply(
    sender_mac: MacAddr,
    sender_ip: Ipv4Addr,
    target_mac: MacAddr,
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    arp(ARP_OP_REPLY, target_mac, sender_mac, sender_ip, target_mac, target_ip)
}

/// A gratuitous ARP announcing `ip` at `mac` (request form, as Linux `arping -U` sends).
pub fn gratuitous_arp(mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    arp(ARP_OP_REQUEST, MacAddr::BROADCAST, mac, ip, MacAddr::ZERO, ip)
}

/// A MAC for test host number `n` (locally administered, unicast).
pub fn mac(n: u32) -> MacAddr {
    let b = n.to_be_bytes();
    MacAddr([0x02, 0x00, b[0], b[1], b[2], b[3]])
}

/// One worker over in-memory ports, polled by hand on the caller's thread: the switch
/// without threads, for benches, fuzzing and deterministic tests.
pub struct SoloSwitch {
    worker: crate::worker::Worker,
    commands: crossbeam_channel::Sender<crate::worker::Command>,
    tables: std::sync::Arc<arc_swap::ArcSwap<crate::tables::Tables>>,
    shared: crate::pipeline::SharedState,
    stats: std::sync::Arc<crate::stats::WorkerStats>,
}

impl SoloSwitch {
    pub fn new(
        tables: crate::tables::Tables,
        fdb: crate::tables::fdb::FdbConfig,
        max_ports: usize,
        batch_size: usize,
    ) -> SoloSwitch {
        use std::sync::Arc;
        let tables = Arc::new(arc_swap::ArcSwap::from_pointee(tables));
        let state =
            crate::pipeline::SharedState::new(fdb, crate::tables::conntrack::ConntrackConfig::default());
        let stats = Arc::new(crate::stats::WorkerStats::new(max_ports));
        let (commands, rx) = crossbeam_channel::unbounded();
        let local = crate::frame::LOCAL_BUFFERS_PER_BATCH_FRAME * batch_size;
        let shared = crate::frame::SharedPool::new(crate::frame::DEFAULT_BUF_SIZE, local);
        let worker = crate::worker::Worker::new(crate::worker::WorkerParts {
            id: 0,
            pipeline: crate::pipeline::Pipeline::new(&state, stats.clone()),
            pool: crate::frame::FramePool::new(shared, local),
            max_ports,
            handoff_to: vec![None],
            handoff_from: vec![],
            tables: tables.clone(),
            commands: rx,
            clock: crate::clock::Clock::new(),
            batch_size,
            idle: crate::worker::IdlePolicy::BusyPoll,
            waker: Default::default(),
            held: Default::default(),
        })
        .expect("epoll and eventfd are available");
        SoloSwitch { worker, commands, tables, shared: state, stats }
    }

    /// Attaches a queue (the tables must list the port with worker 0 in `tx_workers`).
    pub fn add_queue(&mut self, port: crate::ids::PortId, queue: Box<dyn crate::queue::PortQueue>) {
        let (done, ack) = crossbeam_channel::bounded(1);
        self.commands
            .send(crate::worker::Command::AddQueue { port, queue, done })
            .expect("the worker holds the receiver");
        self.worker.poll();
        ack.try_recv().expect("applied by the poll above").expect("memory ports have no fd to watch");
    }

    /// One poll round; returns the frames handled.
    pub fn poll(&mut self) -> usize {
        self.worker.poll()
    }

    pub fn publish(&self, tables: crate::tables::Tables) {
        self.tables.store(std::sync::Arc::new(tables));
    }

    pub fn fdb(&self) -> &crate::tables::fdb::Fdb {
        &self.shared.fdb
    }

    pub fn conntrack(&self) -> &crate::tables::conntrack::Conntrack {
        &self.shared.conntrack
    }

    pub fn stats(&self) -> crate::stats::StatsSnapshot {
        crate::stats::StatsSnapshot::collect(&[&self.stats])
    }

    pub fn buffer_allocations(&self) -> u64 {
        self.worker.pool().shared().allocations()
    }
}

/// `frame` (a super-frame) cut into the segments its offload `off` describes, as the
/// receiving stack would get them.
pub fn segments_of(frame: &[u8], off: &Offload) -> Vec<Vec<u8>> {
    (0..segment_count(frame, off))
        .map(|i| {
            let mut out = vec![0u8; usize::from(off.segment_len)];
            let n = write_segment(frame, off, i, &mut out);
            out.truncate(n);
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_of_built_frames_verify() {
        let f = FrameSpec::udp(mac(1), mac(2), Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 5, 6)
            .payload(b"hello")
            .build();
        assert_eq!(checksum::checksum(&f[14..34]), 0, "ip header");
        let sum = pseudo_header_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 17, 13);
        assert_eq!(!checksum::fold(checksum::sum(&f[34..], sum)), 0, "udp");
        let t = FrameSpec::tcp(mac(1), mac(2), Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(5, 6, 7, 8), 5, 6, 2)
            .build();
        let sum = pseudo_header_v4(Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(5, 6, 7, 8), 6, 20);
        assert_eq!(!checksum::fold(checksum::sum(&t[34..], sum)), 0, "tcp");
    }
}
