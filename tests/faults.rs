//! Faults around the switch: pods that vanish without a detach.

use std::net::Ipv4Addr;
use std::time::Duration;

use vswitch_api::{Backend, PortKind};
use vswitch_e2e::Node;
use vswitch_e2e::testbed::{self, wait_until};

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, host)
}

/// A pod killed while no DEL reached the daemon (its namespace deleted, taking its TAP
/// or veth with it): the port is noticed and removed, its counters stay, and its
/// address can be given to a new pod.
#[test]
fn pods_gone_without_a_detach_are_reaped() {
    let node = Node::start("rea", "");
    let a = node.pod("a", ip(2), Backend::Tap);
    let b = node.pod("b", ip(3), Backend::Afxdp);
    let c = node.pod("c", ip(4), Backend::Tap);
    assert!(a.ping(c.ip, 2) && b.ping(c.ip, 2));
    for gone in [&a, &b] {
        testbed::ok("ip", &["netns", "del", gone.ns.name()]);
    }
    let pods = || {
        node.api(|cl| async move { cl.ports().await })
            .expect("ports")
            .into_iter()
            .filter(|p| p.kind == PortKind::Pod)
            .map(|p| p.container_id)
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(20), || pods() == vec![c.port.container_id.clone()]),
        "the vanished pods' ports removed: {:?}\n{}",
        pods(),
        node.log()
    );
    let stats = node.stats();
    for gone in [&a, &b] {
        let p = stats.ports.iter().find(|p| p.id == gone.port.id).expect("counters kept");
        assert!(p.rx_packets > 0 && p.tx_packets > 0, "{p:?}");
    }
    assert!(node.log().contains("pod gone without a detach"));
    // The address is free again.
    let d = node.pod("d", ip(2), Backend::Tap);
    assert!(d.ping(c.ip, 2), "a new pod with the vanished pod's address");
}
