//! Writes the committed seed corpus of the fuzz targets:
//! `cargo run -p vswitch-dataplane --example fuzz_seeds -- fuzz/corpus`
//!
//! Seeds are well-formed frames of every kind the parser knows, so the fuzzer starts
//! from deep inside each parser instead of discovering Ethernet by chance.

use std::net::Ipv4Addr;
use std::path::Path;

use vswitch_dataplane::testing::{CAPTURED_TCP_SYN, FrameSpec, arp_reply, arp_request, gratuitous_arp, mac};
use vswitch_dataplane::wire::MacAddr;
use vswitch_dataplane::wire::vxlan;

fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let ip = |s: u8, h: u8| Ipv4Addr::new(10, 244, s, h);
    let v6 = |s: &str| s.parse().expect("literal");
    let inner = FrameSpec::udp(mac(1), mac(2), ip(0, 2), ip(1, 3), 1, 2).build();
    let mut outer = [0u8; vxlan::OUTER_LEN];
    vxlan::write_outer(
        &mut outer,
        &vxlan::Outer {
            src_mac: mac(10),
            dst_mac: mac(11),
            src_ip: Ipv4Addr::new(192, 168, 0, 1),
            dst_ip: Ipv4Addr::new(192, 168, 0, 2),
            src_port: 50000,
            dst_port: vxlan::DEFAULT_PORT,
            vni: 1,
            ttl: 64,
        },
        inner.len(),
    );
    vec![
        ("udp", FrameSpec::udp(mac(1), mac(2), ip(0, 2), ip(0, 3), 1000, 53).payload(b"query").build()),
        ("tcp-syn-captured", CAPTURED_TCP_SYN.to_vec()),
        (
            "tcp-ack",
            FrameSpec::tcp(mac(1), mac(2), ip(0, 2), ip(0, 3), 40000, 80, 0x10).payload(&[7; 100]).build(),
        ),
        ("icmp-echo", FrameSpec::icmp_echo(mac(1), mac(2), ip(0, 2), ip(0, 3), 1).build()),
        (
            "ipv4-options",
            FrameSpec::udp(mac(1), mac(2), ip(0, 2), ip(0, 3), 1, 2).ipv4_options(&[0x94, 4, 0, 0]).build(),
        ),
        (
            "ipv4-first-fragment",
            FrameSpec::udp(mac(1), mac(2), ip(0, 2), ip(0, 3), 1, 2).ipv4_fragment(0, true).build(),
        ),
        (
            "ipv4-later-fragment",
            FrameSpec::udp(mac(1), mac(2), ip(0, 2), ip(0, 3), 1, 2).ipv4_fragment(185, false).build(),
        ),
        ("vlan", FrameSpec::udp(mac(1), mac(2), ip(0, 2), ip(0, 3), 1, 2).vlan(100).build()),
        (
            "broadcast",
            FrameSpec::udp(mac(1), MacAddr::BROADCAST, ip(0, 2), Ipv4Addr::BROADCAST, 68, 67).build(),
        ),
        ("arp-request", arp_request(mac(1), ip(0, 2), ip(0, 3))),
        ("arp-reply", arp_reply(mac(2), ip(0, 3), mac(1), ip(0, 2))),
        ("garp", gratuitous_arp(mac(1), ip(0, 2))),
        ("ipv6-udp", FrameSpec::udp6(mac(1), mac(2), v6("fd00::2"), v6("fd00::3"), 1, 2).build()),
        (
            "ipv6-hbh-frag",
            FrameSpec::udp6(mac(1), mac(2), v6("fd00::2"), v6("fd00::3"), 1, 2)
                .ipv6_hop_by_hop()
                .ipv6_fragment(0, true)
                .build(),
        ),
        ("vxlan", [&outer[..], &inner[..]].concat()),
    ]
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".to_string());
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir.join("parse_frame"))?;
    std::fs::create_dir_all(dir.join("pipeline"))?;
    std::fs::create_dir_all(dir.join("offload"))?;
    // Offload seeds: a TSO super-frame (TCPv4, 1448-byte segments) and a partial UDP
    // checksum, each behind its virtio-net header.
    let tso = FrameSpec::tcp(
        mac(1),
        mac(2),
        Ipv4Addr::new(10, 244, 0, 2),
        Ipv4Addr::new(10, 244, 0, 3),
        4000,
        80,
        0x18,
    )
    .payload(&[0x5a; 4000])
    .build();
    let udp =
        FrameSpec::udp(mac(1), mac(2), Ipv4Addr::new(10, 244, 0, 2), Ipv4Addr::new(10, 244, 0, 3), 5, 6)
            .payload(b"partial")
            .build();
    for (name, flags, gso_type, gso_size, start, offset, frame) in
        [("tso", 1u8, 1u8, 1448u16, 34u16, 16u16, &tso), ("udp-csum", 1, 0, 0, 34, 6, &udp)]
    {
        let mut seed = vec![flags, gso_type, 0, 0];
        seed.extend_from_slice(&gso_size.to_ne_bytes());
        seed.extend_from_slice(&start.to_ne_bytes());
        seed.extend_from_slice(&offset.to_ne_bytes());
        seed.extend_from_slice(frame);
        std::fs::write(dir.join("offload").join(format!("seed-{name}")), seed)?;
    }
    let frames = frames();
    for (name, frame) in &frames {
        std::fs::write(dir.join("parse_frame").join(format!("seed-{name}")), frame)?;
        // One record per frame, from a pod port (0) and an uplink port (2).
        for port in [0u8, 2] {
            let mut rec = vec![port];
            rec.extend_from_slice(&(frame.len() as u16).to_be_bytes());
            rec.extend_from_slice(frame);
            std::fs::write(dir.join("pipeline").join(format!("seed-{name}-port{port}")), rec)?;
        }
    }
    // A conversation: learning, forwarding, ARP, a control event in between.
    let mut talk = Vec::new();
    for (port, (_, frame)) in [(2u8, &frames[0]), (0, &frames[9]), (0, &frames[0]), (2, &frames[8])] {
        talk.push(port);
        talk.extend_from_slice(&(frame.len() as u16).to_be_bytes());
        talk.extend_from_slice(frame);
        talk.push(0x81);
    }
    std::fs::write(dir.join("pipeline").join("seed-conversation"), talk)?;
    // A Service conversation: pod 1 to the VIP, the endpoint's answer, a NodePort flow
    // from the uplink, a refusal, then conntrack forgetting everything.
    let gw = mac(0xff00);
    let pod = |h| Ipv4Addr::new(10, 244, 0, h);
    let service_talk: [(u8, Vec<u8>); 4] = [
        (0, FrameSpec::tcp(mac(1), gw, pod(2), vswitch_dataplane::fuzzing::WEB_VIP, 40000, 80, 0x02).build()),
        (1, FrameSpec::tcp(mac(2), gw, pod(3), pod(2), 8080, 40000, 0x12).build()),
        (
            2,
            FrameSpec::tcp(
                mac(0x700),
                mac(0x701),
                Ipv4Addr::new(192, 168, 0, 9),
                vswitch_dataplane::fuzzing::NODE_IP,
                5,
                30080,
                2,
            )
            .build(),
        ),
        (
            0,
            FrameSpec::tcp(mac(1), gw, pod(2), vswitch_dataplane::fuzzing::EMPTY_VIP, 40001, 80, 0x02)
                .build(),
        ),
    ];
    let mut talk = Vec::new();
    for (port, frame) in &service_talk {
        talk.push(*port);
        talk.extend_from_slice(&(frame.len() as u16).to_be_bytes());
        talk.extend_from_slice(frame);
    }
    talk.push(0x82);
    std::fs::write(dir.join("pipeline").join("seed-services"), talk)?;
    // The overlay: pod 1 to a pod of the remote node, and that node's VXLAN to pod 1
    // arriving on an uplink (port byte 2).
    let far = Ipv4Addr::new(10, 246, 0, 5);
    let inner = FrameSpec::udp(mac(0xb), gw, far, pod(2), 3, 4).build();
    let mut outer = [0u8; vxlan::OUTER_LEN];
    vxlan::write_outer(
        &mut outer,
        &vxlan::Outer {
            src_mac: mac(0x800),
            dst_mac: mac(0x801),
            src_ip: vswitch_dataplane::fuzzing::REMOTE_NODE_IP,
            dst_ip: vswitch_dataplane::fuzzing::NODE_IP,
            src_port: 50000,
            dst_port: vxlan::DEFAULT_PORT,
            vni: 1,
            ttl: 64,
        },
        inner.len(),
    );
    let overlay_talk: [(u8, Vec<u8>); 2] =
        [(0, FrameSpec::udp(mac(1), gw, pod(2), far, 1, 2).build()), (2, [&outer[..], &inner[..]].concat())];
    let mut talk = Vec::new();
    for (port, frame) in &overlay_talk {
        talk.push(*port);
        talk.extend_from_slice(&(frame.len() as u16).to_be_bytes());
        talk.extend_from_slice(frame);
    }
    std::fs::write(dir.join("pipeline").join("seed-overlay"), talk)?;
    println!("wrote {} seeds per target to {}", frames.len(), dir.display());
    Ok(())
}
