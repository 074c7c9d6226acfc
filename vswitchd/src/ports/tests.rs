//! The port manager against the fake kernel: attach, its undo at each point of failure,
//! detach, restore after a restart, recovery from device tags, vanished pods, the host
//! port, the uplink and the underlay — with a real data path on memory queues, no root.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use vswitch_api::{AttachRequest, Backend, PodRef};
use vswitch_dataplane::datapath::Datapath;
use vswitch_dataplane::ids::PortId;
use vswitch_dataplane::tables::Tables;
use vswitch_dataplane::testing::{arp_reply, arp_request};
use vswitch_dataplane::wire::MacAddr;
use vswitch_sys::netns::NetnsError;
use vswitch_testbed::Scratch;

use super::fake::{FakeKernel, Op};
use super::kernel::LinkKind;
use super::*;
use crate::config::{self, Config};
use crate::plane::Plane;
use crate::state::{self, StateFile};

const POD_NS: &str = "/run/netns/p1";
const OTHER_NS: &str = "/run/netns/p2";

/// A port manager on a fake kernel and a running two-worker data path, its state file
/// in a directory of its own.
struct Rig {
    kernel: Arc<FakeKernel>,
    plane: Plane,
    ports: PortManager,
    config: Config,
    dir: Scratch,
}

impl Rig {
    fn new(name: &str) -> Rig {
        Rig::with(name, |_| {})
    }

    fn with(name: &str, edit: impl FnOnce(&mut Config)) -> Rig {
        let dir = Scratch::new(&format!("ports-{}-{name}", std::process::id()));
        let mut config = config::default_config();
        config.workers = 2;
        config.max_ports = 8;
        config.host_port = None;
        config.state_file = dir.0.join("state.json");
        edit(&mut config);
        let kernel = Arc::new(FakeKernel::default());
        kernel.add_netns(POD_NS);
        kernel.add_netns(OTHER_NS);
        Rig::start(config, kernel, dir)
    }

    fn start(config: Config, kernel: Arc<FakeKernel>, dir: Scratch) -> Rig {
        let datapath = Datapath::start(crate::daemon::datapath_config(&config), Tables::empty()).unwrap();
        let plane = Plane::new(&config, datapath).unwrap();
        let ports = PortManager::new(config.clone(), kernel.clone(), plane.datapath.workers());
        Rig { kernel, plane, ports, config, dir }
    }

    /// The daemon stopped and started again on the same devices and state file: what
    /// the file lists is restored.
    fn restart(self) -> (Rig, RestoreReport) {
        let Rig { kernel, plane, ports, config, dir } = self;
        ports.save_state().unwrap();
        drop(ports);
        plane.datapath.shutdown();
        let mut rig = Rig::start(config, kernel, dir);
        let saved = rig.state();
        let report = rig.ports.restore(&mut rig.plane, saved);
        (rig, report)
    }

    fn attach(&mut self, req: &AttachRequest) -> Result<(vswitch_api::PortInfo, bool), AttachError> {
        self.ports.attach(&mut self.plane, req)
    }

    fn state(&self) -> StateFile {
        state::load(&self.config.state_file)
            .unwrap()
            .unwrap_or(StateFile { version: state::VERSION, ports: vec![] })
    }

    fn in_tables(&self, id: u16) -> bool {
        self.plane.datapath.tables().port(PortId(id)).is_some()
    }

    /// Nothing of a failed attach is left: no port, no state entry, no pod device.
    fn assert_clean(&self, netns: &str, ifname: &str) {
        assert_eq!(self.ports.pod_count(), 0);
        assert!(self.plane.datapath.tables().ports().next().is_none(), "no port in the tables");
        assert!(self.state().ports.is_empty(), "no port in the state file");
        assert!(self.kernel.pod_dev(netns, ifname).is_none(), "no {ifname} left in {netns}");
    }
}

fn req(container: &str, netns: &str, ip: &str, backend: Backend) -> AttachRequest {
    AttachRequest {
        container_id: container.into(),
        netns: netns.into(),
        ifname: "eth0".into(),
        mac: None,
        ips: vec![format!("{ip}/24").parse().unwrap()],
        mtu: None,
        backend: Some(backend),
        pod: Some(PodRef { namespace: "default".into(), name: container.into(), uid: "u1".into() }),
        network: Some("k8s-pod-network".into()),
    }
}

fn tap(container: &str, netns: &str, ip: &str) -> AttachRequest {
    req(container, netns, ip, Backend::Tap)
}

fn afxdp(container: &str, netns: &str, ip: &str) -> AttachRequest {
    req(container, netns, ip, Backend::Afxdp)
}

// ---- attach

#[test]
fn a_tap_pod_gets_its_device_port_state_and_tag() {
    let mut r = Rig::new("tap");
    let (info, created) = r.attach(&tap("c1", POD_NS, "10.244.1.5")).unwrap();
    assert!(created);
    assert_eq!((info.id, info.mac.as_str(), info.workers.clone()), (1, "02:00:0a:f4:01:05", vec![0, 1]));
    let dev = r.kernel.pod_dev(POD_NS, "eth0").expect("made in the pod");
    assert_eq!(
        (dev.kind, dev.mac, dev.mtu, dev.up, dev.queues),
        (LinkKind::Tun, Some(MacAddr([2, 0, 10, 244, 1, 5])), r.config.mtu, true, 2)
    );
    let tag = state::DeviceTag::from_alias(dev.alias.as_deref().unwrap()).expect("tagged");
    assert_eq!((tag.id, tag.container_id.as_str()), (PortId(1), "c1"));
    assert!(r.in_tables(1));
    assert_eq!(r.state().ports[0].mac, MacAddr([2, 0, 10, 244, 1, 5]));
    assert_eq!(r.kernel.handles(Some(POD_NS), "eth0").len(), 2, "a queue per worker");
}

#[test]
fn an_afxdp_pod_gets_a_veth_pair_and_a_socket_on_the_least_loaded_worker() {
    let mut r = Rig::new("xdp");
    let mut left = r.kernel.link(LinkKind::Veth, MacAddr([0x0e, 9, 9, 9, 9, 9]), 1500);
    left.xdp = true;
    r.kernel.put_host_dev("vsx1", left); // a crashed run's leftover
    let (first, _) = r.attach(&afxdp("c1", POD_NS, "10.244.1.5")).unwrap();
    let (second, _) = r.attach(&afxdp("c2", OTHER_NS, "10.244.1.6")).unwrap();
    assert_eq!(
        (first.workers.clone(), second.workers.clone()),
        (vec![0], vec![1]),
        "spread over the workers"
    );
    let host = r.kernel.host_dev("vsx1").expect("the node's end");
    assert!(host.up && !host.xdp, "up, no stale program");
    assert_eq!(host.alias, r.kernel.pod_dev(POD_NS, "eth0").unwrap().alias, "both ends tagged alike");
    let pod = r.kernel.pod_dev(POD_NS, "eth0").unwrap();
    assert!(pod.up && !pod.offloads && pod.kind == LinkKind::Veth);
    assert_eq!(first.host_ifname.as_deref(), Some("vsx1"));
    assert!(r.kernel.log().contains(&"delete vsx1".to_string()), "the leftover was removed first");
}

#[test]
fn a_retried_attach_returns_the_port_and_a_different_one_conflicts() {
    let mut r = Rig::new("retry");
    let req = tap("c1", POD_NS, "10.244.1.5");
    let (a, created) = r.attach(&req).unwrap();
    let (b, again) = r.attach(&req).unwrap();
    assert!(created && !again);
    assert_eq!(a, b);
    let mut other = req.clone();
    other.mtu = Some(1400);
    let e = r.attach(&other).unwrap_err();
    assert!(matches!(e, AttachError::AlreadyAttached { .. }));
    assert_eq!(e.code().0, 409);
}

#[test]
fn a_missing_namespace_is_not_found_and_changes_nothing() {
    let mut r = Rig::new("nons");
    let e = r.attach(&tap("c1", "/run/netns/gone", "10.244.1.5")).unwrap_err();
    assert!(matches!(e, AttachError::Netns(NetnsError::NotFound(_))));
    assert_eq!(e.code().0, 404);
    r.assert_clean("/run/netns/gone", "eth0");
}

#[test]
fn the_daemons_own_namespace_is_no_pod() {
    let mut r = Rig::new("ownns");
    r.kernel.add_netns(super::fake::DAEMON_NETNS);
    let e = r.attach(&tap("c1", super::fake::DAEMON_NETNS, "10.244.1.5")).unwrap_err();
    assert!(matches!(e, AttachError::NodeNamespace(_)), "{e}");
    assert_eq!(e.code().0, 400);
    r.assert_clean(super::fake::DAEMON_NETNS, "eth0");
}

#[test]
fn an_existing_interface_in_the_pod_is_left_alone() {
    let mut r = Rig::new("exists");
    let theirs = r.kernel.link(LinkKind::Other, MacAddr([2, 1, 1, 1, 1, 1]), 9000);
    r.kernel.put_pod_dev(POD_NS, "eth0", theirs.clone());
    let e = r.attach(&tap("c1", POD_NS, "10.244.1.5")).unwrap_err();
    assert_eq!(e.code().1, vswitch_api::codes::INTERFACE_EXISTS);
    assert_eq!(r.kernel.pod_dev(POD_NS, "eth0"), Some(theirs), "not touched");
    assert_eq!(r.ports.pod_count(), 0);
}

#[test]
fn an_address_in_use_conflicts_before_any_device_is_made() {
    let mut r = Rig::new("dupip");
    r.attach(&tap("c1", POD_NS, "10.244.1.5")).unwrap();
    let mut same_ip = tap("c2", OTHER_NS, "10.244.1.5");
    same_ip.mac = Some("02:00:00:00:00:77".into());
    let e = r.attach(&same_ip).unwrap_err();
    assert_eq!(e.code().0, 409, "{e}");
    assert!(r.kernel.pod_dev(OTHER_NS, "eth0").is_none());
    assert_eq!(r.state().ports.len(), 1);
}

#[test]
fn invalid_requests_are_refused_without_touching_the_kernel() {
    let mut r = Rig::new("invalid");
    let bad: Vec<(AttachRequest, &str)> = vec![
        (
            {
                let mut q = tap("c1", POD_NS, "10.244.1.5");
                q.ips.clear();
                q
            },
            "ips is empty",
        ),
        (tap("c1", POD_NS, "10.244.2.5"), "not a pod address"),
        (tap("c1", POD_NS, "10.244.1.0"), "not a pod address"),
        (tap("c1", POD_NS, "10.244.1.1"), "gateway address"),
        (
            {
                let mut q = tap("c1", POD_NS, "10.244.1.5");
                q.mtu = Some(100);
                q
            },
            "outside 576..=9000",
        ),
        (
            {
                let mut q = afxdp("c1", POD_NS, "10.244.1.5");
                q.mtu = Some(9000);
                q
            },
            "too large for an AF_XDP port",
        ),
        (
            {
                let mut q = tap("c1", POD_NS, "10.244.1.5");
                q.mac = Some("01:00:5e:00:00:01".into());
                q
            },
            "not a unicast",
        ),
        (
            {
                let mut q = tap("c1", POD_NS, "10.244.1.5");
                q.mac = Some("nope".into());
                q
            },
            "nope",
        ),
        (
            {
                let mut q = tap("c1", POD_NS, "10.244.1.5");
                q.container_id.clear();
                q
            },
            "container_id is empty",
        ),
        (
            {
                let mut q = tap("c1", POD_NS, "10.244.1.5");
                q.ips.push("fd00::1/64".parse().unwrap());
                q.ips.push("fd00::1/64".parse().unwrap());
                q
            },
            "listed twice",
        ),
    ];
    for (q, expect) in bad {
        let e = r.attach(&q).unwrap_err();
        assert!(e.to_string().contains(expect), "{e} (expected {expect:?})");
        assert!(matches!(e.code().0, 400 | 409), "{e}");
    }
    let mut gw_mac = tap("c1", POD_NS, "10.244.1.5");
    gw_mac.mac = Some(r.config.gateway_mac.to_string());
    assert!(matches!(r.attach(&gw_mac).unwrap_err(), AttachError::GatewayMac(_)));
    assert!(r.kernel.log().is_empty(), "no kernel call: {:?}", r.kernel.log());
    r.assert_clean(POD_NS, "eth0");
}

/// Each step of a TAP attach that can fail leaves nothing behind.
#[test]
fn a_tap_attach_failing_at_any_step_is_undone() {
    for op in [Op::CreateTap, Op::PodConfigure] {
        let mut r = Rig::new(&format!("undo-tap-{op:?}"));
        r.kernel.fail(op);
        let e = r.attach(&tap("c1", POD_NS, "10.244.1.5")).unwrap_err();
        assert_eq!(e.code().0, 500, "{op:?}: {e}");
        r.assert_clean(POD_NS, "eth0");
        // And the retry starts from a clean slate.
        r.attach(&tap("c1", POD_NS, "10.244.1.5")).unwrap();
        assert_eq!(r.ports.pod_count(), 1, "{op:?}");
    }
}

/// Each step of an AF_XDP attach that can fail leaves neither end of the veth pair.
#[test]
fn an_afxdp_attach_failing_at_any_step_is_undone() {
    for op in [
        Op::AddVeth,
        Op::PodDisableOffloads,
        Op::SetAlias,
        Op::SetUp,
        Op::DetachXdp,
        Op::OpenXsk,
        Op::PodConfigure,
    ] {
        let mut r = Rig::new(&format!("undo-xdp-{op:?}"));
        r.kernel.fail(op);
        assert!(r.attach(&afxdp("c1", POD_NS, "10.244.1.5")).is_err(), "{op:?}");
        assert!(r.kernel.host_dev("vsx1").is_none(), "{op:?}: the node's end is gone");
        r.assert_clean(POD_NS, "eth0");
        r.attach(&afxdp("c1", POD_NS, "10.244.1.5")).unwrap();
    }
}

#[test]
fn an_attach_that_cannot_be_saved_is_undone() {
    let mut r = Rig::new("unsaved");
    // The state file's directory is a file: saving fails.
    std::fs::write(r.dir.0.join("blocked"), b"").unwrap();
    r.ports.config.state_file = r.dir.0.join("blocked/state.json");
    let e = r.attach(&tap("c1", POD_NS, "10.244.1.5")).unwrap_err();
    assert!(matches!(e, AttachError::State(_)), "{e}");
    assert_eq!(r.ports.pod_count(), 0);
    assert!(r.kernel.pod_dev(POD_NS, "eth0").is_none());
}

#[test]
fn ids_run_out_at_max_ports_and_are_reused_as_late_as_possible() {
    let mut r = Rig::with("ids", |c| c.max_ports = 4);
    let ns: Vec<String> = (0..4).map(|i| format!("/run/netns/q{i}")).collect();
    for n in &ns {
        r.kernel.add_netns(n);
    }
    let ids: Vec<u16> = (0..3)
        .map(|i| r.attach(&tap(&format!("c{i}"), &ns[i], &format!("10.244.1.{}", 10 + i))).unwrap().0.id)
        .collect();
    assert_eq!(ids, vec![1, 2, 3]);
    let e = r.attach(&tap("c3", &ns[3], "10.244.1.13")).unwrap_err();
    assert!(matches!(e, AttachError::PortLimit(4)));
    assert_eq!(e.code().0, 507);
    assert!(r.ports.detach(&mut r.plane, "c0", "eth0").unwrap());
    assert_eq!(r.attach(&tap("c3", &ns[3], "10.244.1.13")).unwrap().0.id, 1, "the only free id");
}

#[test]
fn frames_cross_an_attached_port() {
    let mut r = Rig::new("frames");
    r.attach(&tap("c1", POD_NS, "10.244.1.5")).unwrap();
    r.attach(&tap("c2", OTHER_NS, "10.244.1.6")).unwrap();
    let (a, b) = (MacAddr([2, 0, 10, 244, 1, 5]), MacAddr([2, 0, 10, 244, 1, 6]));
    let queue = &r.kernel.handles(Some(POD_NS), "eth0")[0];
    queue.inject(arp_request(a, Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 1, 6)));
    let answered = vswitch_testbed::wait_until(std::time::Duration::from_secs(5), || queue.sent_count() > 0);
    assert!(answered, "the switch answered the pod's ARP");
    assert_eq!(
        queue.take_sent(),
        vec![arp_reply(b, Ipv4Addr::new(10, 244, 1, 6), a, Ipv4Addr::new(10, 244, 1, 5))]
    );
}

// ---- detach and vanished pods

#[test]
fn detach_removes_device_port_and_state_entry() {
    let mut r = Rig::new("detach");
    r.attach(&tap("c1", POD_NS, "10.244.1.5")).unwrap();
    r.attach(&afxdp("c2", OTHER_NS, "10.244.1.6")).unwrap();
    assert!(r.ports.detach(&mut r.plane, "c1", "eth0").unwrap());
    assert!(r.ports.detach(&mut r.plane, "c2", "eth0").unwrap());
    assert!(!r.ports.detach(&mut r.plane, "c2", "eth0").unwrap(), "a second detach finds nothing");
    r.assert_clean(POD_NS, "eth0");
    assert!(r.kernel.host_dev("vsx2").is_none() && r.kernel.pod_dev(OTHER_NS, "eth0").is_none());
}

#[test]
fn ports_of_vanished_pods_are_reaped() {
    let mut r = Rig::new("reap");
    r.attach(&tap("c1", POD_NS, "10.244.1.5")).unwrap();
    r.attach(&afxdp("c2", OTHER_NS, "10.244.1.6")).unwrap();
    assert_eq!(r.ports.reap_vanished(&mut r.plane), 0, "both still there");
    r.kernel.remove_netns(POD_NS);
    r.kernel.remove_host_dev("vsx2");
    assert_eq!(r.ports.reap_vanished(&mut r.plane), 2);
    assert_eq!(r.ports.pod_count(), 0);
    assert!(r.state().ports.is_empty());
    assert!(!r.in_tables(1) && !r.in_tables(2));
}

// ---- restart

#[test]
fn a_restart_reattaches_every_port_under_its_id() {
    let mut r = Rig::new("restore");
    r.attach(&tap("c1", POD_NS, "10.244.1.5")).unwrap();
    r.attach(&afxdp("c2", OTHER_NS, "10.244.1.6")).unwrap();
    let before = r.ports.ports();
    let (r, report) = r.restart();
    assert_eq!(report.restored.len(), 2, "{report:?}");
    assert!(report.dropped.is_empty());
    assert_eq!(r.ports.ports(), before);
    assert!(r.in_tables(1) && r.in_tables(2));
    assert!(r.kernel.log().iter().any(|l| l == "reopen tap eth0"), "the TAP reopened, not made again");
    assert_eq!(r.kernel.handles(None, "vsx2").len(), 1, "a socket on the veth again");
}

#[test]
fn a_restart_drops_ports_whose_devices_are_gone_or_not_ours() {
    let mut r = Rig::new("restore-gone");
    for (i, ns) in ["/run/netns/a", "/run/netns/b", "/run/netns/c", "/run/netns/d"].iter().enumerate() {
        r.kernel.add_netns(ns);
        let q = if i % 2 == 0 {
            tap(&format!("c{i}"), ns, &format!("10.244.1.{}", 10 + i))
        } else {
            afxdp(&format!("c{i}"), ns, &format!("10.244.1.{}", 10 + i))
        };
        r.attach(&q).unwrap();
    }
    r.kernel.remove_netns("/run/netns/a"); // the pod went away while we were down
    r.kernel.remove_host_dev("vsx2"); // its veth went with it
    let replaced = r.kernel.link(LinkKind::Tun, MacAddr([2, 9, 9, 9, 9, 9]), 1500);
    r.kernel.put_pod_dev("/run/netns/c", "eth0", replaced); // another device now has the name
    let (r, report) = r.restart();
    assert_eq!(report.restored, vec!["c3/eth0 (/run/netns/d)".to_string()], "{report:?}");
    let reasons: Vec<&str> = report.dropped.iter().map(|(_, why)| why.as_str()).collect();
    assert!(reasons[0].contains("does not exist"), "{reasons:?}");
    assert!(reasons[1].contains("veth vsx2 is gone"), "{reasons:?}");
    assert!(reasons[2].contains("with MAC 02:00:0a:f4:01:0c is gone"), "{reasons:?}");
    assert_eq!(r.state().ports.len(), 1, "the dropped ones leave the state file");
}

#[test]
fn a_restart_refuses_ids_it_cannot_use() {
    let mut r = Rig::new("restore-ids");
    r.attach(&tap("c1", POD_NS, "10.244.1.5")).unwrap();
    let mut file = r.state();
    let mut host_id = file.ports[0].clone();
    host_id.id = PortId(0);
    let mut too_big = file.ports[0].clone();
    too_big.id = PortId(100);
    let twice = file.ports[0].clone();
    file.ports.extend([host_id, too_big, twice]);
    let Rig { kernel, plane, ports, config, dir } = r;
    drop((plane, ports));
    let mut r = Rig::start(config, kernel, dir);
    let report = r.ports.restore(&mut r.plane, file);
    assert_eq!(report.restored.len(), 1);
    let reasons: Vec<&str> = report.dropped.iter().map(|(_, why)| why.as_str()).collect();
    assert_eq!(
        reasons,
        vec!["port id 0 is not usable", "port id 100 is not usable", "port id 1 is not usable"]
    );
}

#[test]
fn a_restart_tags_the_ports_of_an_older_daemon() {
    let mut r = Rig::new("retag");
    r.attach(&afxdp("c1", POD_NS, "10.244.1.5")).unwrap();
    // An older daemon wrote no tags.
    let mut pod = r.kernel.pod_dev(POD_NS, "eth0").unwrap();
    pod.alias = None;
    r.kernel.put_pod_dev(POD_NS, "eth0", pod);
    let mut host = r.kernel.host_dev("vsx1").unwrap();
    host.alias = None;
    r.kernel.put_host_dev("vsx1", host);
    let (r, report) = r.restart();
    assert_eq!(report.restored.len(), 1);
    let alias = r.kernel.pod_dev(POD_NS, "eth0").unwrap().alias.expect("tagged now");
    assert_eq!(r.kernel.host_dev("vsx1").unwrap().alias, Some(alias));
}

// ---- recovery from device tags

#[test]
fn a_lost_state_file_is_recovered_from_the_tags_on_devices() {
    let mut r = Rig::new("recover");
    r.kernel.add_netns("/run/netns/x");
    r.attach(&tap("c1", POD_NS, "10.244.1.5")).unwrap();
    r.attach(&afxdp("c2", OTHER_NS, "10.244.1.6")).unwrap();
    r.attach(&tap("c3", "/run/netns/x", "10.244.1.7")).unwrap();
    let written = r.state();
    // Another daemon's port, and one whose node end lost its tag, are not ours to take.
    let mut foreign = r.kernel.link(LinkKind::Tun, MacAddr([2, 7, 7, 7, 7, 7]), 1500);
    foreign.alias = state::DeviceTag::of(&written.ports[0], "someone-else").to_alias();
    r.kernel.add_netns("/run/netns/y");
    r.kernel.put_pod_dev("/run/netns/y", "eth0", foreign);
    let mut host = r.kernel.host_dev("vsx2").unwrap();
    host.alias = Some("vswitch1:{\"tampered\":1}".into());
    r.kernel.put_host_dev("vsx2", host);
    let found = r.ports.recover_from_devices(&NETNS_DIRS);
    let mut want = written.ports.clone();
    want.retain(|p| p.container_id != "c2");
    assert_eq!(found.ports, want, "the TAPs, exactly as attached");
}

#[test]
fn recovery_keeps_the_first_of_two_devices_claiming_one_id() {
    let mut r = Rig::new("recover-dup");
    r.attach(&tap("c1", POD_NS, "10.244.1.5")).unwrap();
    let mut copy = r.kernel.pod_dev(POD_NS, "eth0").unwrap();
    copy.mac = Some(MacAddr([2, 5, 5, 5, 5, 5]));
    r.kernel.put_pod_dev(OTHER_NS, "eth0", copy);
    let found = r.ports.recover_from_devices(&NETNS_DIRS);
    assert_eq!(found.ports.len(), 1);
    assert_eq!(found.ports[0].netns, PathBuf::from(POD_NS));
    // A namespace that cannot be searched is skipped, not fatal.
    r.kernel.fail(Op::PodLinks);
    assert_eq!(r.ports.recover_from_devices(&NETNS_DIRS).ports.len(), 1);
}

// ---- the host port, the uplink, the underlay

#[test]
fn the_host_port_carries_the_gateway_and_is_reopened_after_a_restart() {
    let mut r = Rig::with("host", |c| c.host_port = Some("vswitch0".into()));
    r.ports.start_host_port(&mut r.plane, None).unwrap();
    let dev = r.kernel.host_dev("vswitch0").unwrap();
    assert_eq!((dev.kind, dev.mac, dev.up), (LinkKind::Tun, Some(r.config.gateway_mac), true));
    assert_eq!(dev.addresses, vec!["10.244.1.1/24".parse::<ipnet::IpNet>().unwrap()]);
    assert!(r.in_tables(0));
    // Changed behind our back; a new start brings it in line.
    let mut changed = dev.clone();
    changed.mac = Some(MacAddr([2, 3, 3, 3, 3, 3]));
    changed.mtu = 1400;
    r.kernel.put_host_dev("vswitch0", changed);
    let (mut r, _) = r.restart();
    r.ports.start_host_port(&mut r.plane, None).unwrap();
    let dev = r.kernel.host_dev("vswitch0").unwrap();
    assert_eq!((dev.mac, dev.mtu, dev.addresses.len()), (Some(r.config.gateway_mac), r.config.mtu, 1));
    assert!(r.kernel.log().iter().any(|l| l == "reopen tap vswitch0"));
}

#[test]
fn the_node_routes_to_other_nodes_pods_through_the_host_port_and_only_its_own_routes() {
    use super::kernel::{ROUTE_PROTOCOL, RouteEntry};
    let net = |s: &str| s.parse::<ipnet::Ipv4Net>().unwrap();
    let mut r = Rig::with("routes", |c| c.host_port = Some("vswitch0".into()));
    // No host port yet: nothing to route through.
    r.ports.sync_node_routes(&[net("10.244.2.0/24")], RouteSync::Check);
    assert!(r.kernel.routes().is_empty());
    r.ports.start_host_port(&mut r.plane, None).unwrap();
    let index = r.kernel.host_dev("vswitch0").unwrap().index;
    // Someone else's routes: a default route (less specific: no conflict), one inside a
    // remote CIDR (in the way), and a stale one of ours from a crashed run.
    let foreign = [
        RouteEntry { dst: net("0.0.0.0/0"), oif: Some(99), protocol: 3 },
        RouteEntry { dst: net("10.244.3.128/25"), oif: Some(99), protocol: 4 },
        RouteEntry { dst: net("10.244.9.0/24"), oif: Some(index), protocol: ROUTE_PROTOCOL },
        RouteEntry { dst: net("10.96.0.11/32"), oif: Some(99), protocol: 4 },
    ];
    foreign.iter().for_each(|f| r.kernel.put_route(*f));

    let wanted = ["10.244.2.0/24", "10.244.3.0/24", "10.96.0.10/32", "10.96.0.11/32"].map(net);
    r.ports.sync_node_routes(&wanted, RouteSync::Check);
    let ours = |r: &Rig| -> Vec<ipnet::Ipv4Net> {
        r.kernel.routes().iter().filter(|e| e.protocol == ROUTE_PROTOCOL).map(|e| e.dst).collect()
    };
    assert_eq!(
        ours(&r),
        vec![net("10.96.0.10/32"), net("10.244.2.0/24")],
        "the stale one gone, those in the way not made"
    );
    assert!(
        r.kernel
            .log()
            .iter()
            .any(|l| l == &format!("route 10.244.2.0/24 via 169.254.118.115 dev {index} src 10.244.1.1"))
    );
    assert_eq!(r.kernel.neighbour(index, routes::NEXT_HOP), Some(r.config.gateway_mac));
    assert_eq!(r.ports.node_route(&net("10.244.2.0/24")).as_deref(), Some("via vswitch0"));
    let refused = r.ports.node_route(&net("10.244.3.0/24")).unwrap();
    assert!(refused.starts_with("not routed") && refused.contains("10.244.3.128/25"), "{refused}");
    assert_eq!(r.kernel.routes().iter().filter(|e| e.protocol != ROUTE_PROTOCOL).count(), 3, "others' kept");

    // Removed behind our back: put back; a node gone: its route goes.
    r.kernel.fail(Op::ReplaceRoute);
    r.ports.sync_node_routes(&[net("10.244.4.0/24")], RouteSync::Changed);
    assert!(ours(&r).is_empty(), "10.244.2.0/24 removed, 10.244.4.0/24 refused by the kernel");
    assert!(r.ports.node_route(&net("10.244.4.0/24")).unwrap().starts_with("not routed"));
    r.ports.sync_node_routes(&[net("10.244.4.0/24")], RouteSync::Changed);
    assert!(ours(&r).is_empty(), "the same destinations: a change of something else, no work");
    r.ports.sync_node_routes(&[net("10.244.4.0/24")], RouteSync::Check);
    assert_eq!(ours(&r), vec![net("10.244.4.0/24")]);
    // At the next start, before everything is known: only adds, removes nothing.
    r.ports.sync_node_routes(&[net("10.244.5.0/24")], RouteSync::Start);
    assert_eq!(ours(&r), vec![net("10.244.4.0/24"), net("10.244.5.0/24")]);

    // Shutdown: ours and the next hop go, the others stay.
    r.ports.remove_node_routes();
    assert!(ours(&r).is_empty());
    assert_eq!(r.kernel.neighbour(index, routes::NEXT_HOP), None);
    assert_eq!(r.kernel.routes().len(), 3);
}

#[test]
fn without_a_host_port_an_earlier_runs_routes_are_removed_once() {
    use super::kernel::{ROUTE_PROTOCOL, RouteEntry};
    let mut r = Rig::new("noroutes");
    let dst = "10.244.2.0/24".parse().unwrap();
    r.kernel.put_route(RouteEntry { dst, oif: Some(5), protocol: ROUTE_PROTOCOL });
    r.ports.sync_node_routes(&[dst], RouteSync::Start);
    assert!(r.kernel.routes().is_empty(), "nothing carries them now");
    r.ports.sync_node_routes(&[dst], RouteSync::Check);
    assert_eq!(r.kernel.log().iter().filter(|l| l.starts_with("delete route")).count(), 1, "looked for once");
    assert_eq!(r.ports.node_route(&dst), None, "no host port: nothing to say");
}

#[test]
fn the_uplink_and_underlay_take_ids_no_pod_gets() {
    let mut r = Rig::with("uplink", |c| c.uplink = Some("eth9".into()));
    r.kernel.put_host_dev("eth9", r.kernel.link(LinkKind::Other, MacAddr([2, 0xee, 0, 0, 0, 1]), 1500));
    r.ports.start_uplink(&mut r.plane, Ipv4Addr::new(192, 168, 50, 1)).unwrap();
    r.ports.start_underlay(&mut r.plane, Err("not asked".into()), false).unwrap();
    let (uplink, underlay) = (r.ports.uplink_port().unwrap().id, r.ports.underlay_port().unwrap());
    assert_eq!((uplink, underlay), (PortId(1), PortId(2)));
    for i in 0..5 {
        let ns = format!("/run/netns/u{i}");
        r.kernel.add_netns(&ns);
        let id = r.attach(&tap(&format!("c{i}"), &ns, &format!("10.244.1.{}", 10 + i))).unwrap().0.id;
        assert!(id != 1 && id != 2, "pod got {id}");
    }
    let names = r.ports.port_names();
    assert_eq!(
        (names[&PortId(1)].as_str(), names[&PortId(2)].as_str()),
        ("uplink eth9", "underlay vxlan/4789")
    );
    r.ports.steer(&[(17, 4789)].into());
    assert_eq!(r.kernel.steered(), vec![[(17u8, 4789u16)].into()]);
}

fn tunnel_spec() -> super::kernel::TunnelSpec {
    super::kernel::TunnelSpec {
        tap: "vswitch-vx".into(),
        underlay: "eth9".into(),
        node_ip: Ipv4Addr::new(192, 168, 50, 1),
        port: 4789,
        mtu: 1500,
    }
}

#[test]
fn the_underlay_takes_the_tunnel_tap_when_the_kernel_does() {
    let mut r = Rig::new("tunnel");
    r.ports.start_underlay(&mut r.plane, Ok(tunnel_spec()), false).unwrap();
    assert_eq!(r.ports.underlay_tunnel(), Some(&tunnel_spec()));
    let id = r.ports.underlay_port().unwrap();
    let entry = r.plane.tables.port(id).cloned().unwrap();
    assert!(entry.tunnel && entry.offloads, "super-frames go to it whole: {entry:?}");
    let summary = r.ports.underlay_summary().unwrap();
    assert!(summary.starts_with("tunnel TAP vswitch-vx on eth9"), "{summary}");
}

#[test]
fn a_refused_tunnel_falls_back_to_sockets_unless_required() {
    let mut r = Rig::new("tunnel-refused");
    r.kernel.fail(Op::OpenTunnel);
    r.ports.start_underlay(&mut r.plane, Ok(tunnel_spec()), false).unwrap();
    assert!(r.ports.underlay_tunnel().is_none());
    let entry = r.plane.tables.port(r.ports.underlay_port().unwrap()).cloned().unwrap();
    assert!(!entry.tunnel && !entry.offloads, "{entry:?}");
    let summary = r.ports.underlay_summary().unwrap();
    assert!(summary.starts_with("sockets udp/4789 (not the tunnel TAP: "), "{summary}");

    let mut r = Rig::new("tunnel-required");
    r.kernel.fail(Op::OpenTunnel);
    assert!(r.ports.start_underlay(&mut r.plane, Ok(tunnel_spec()), true).is_err());
    let e =
        r.ports.start_underlay(&mut r.plane, Err("no underlay interface named".into()), true).unwrap_err();
    assert_eq!(e.to_string(), "overlay.underlay_io = \"tunnel\", but no underlay interface named");
    assert!(r.ports.underlay_port().is_none());
    assert!(r.plane.datapath.tables().ports().next().is_none(), "no port left behind");
}

#[test]
fn an_uplink_that_is_missing_or_fails_refuses_to_start_and_leaves_no_port() {
    let mut r = Rig::with("uplink-bad", |c| c.uplink = Some("eth9".into()));
    let e = r.ports.start_uplink(&mut r.plane, Ipv4Addr::new(192, 168, 50, 1)).unwrap_err();
    assert_eq!(e.to_string(), "uplink interface eth9 does not exist");
    r.kernel.put_host_dev("eth9", r.kernel.link(LinkKind::Other, MacAddr([2, 0xee, 0, 0, 0, 1]), 1500));
    r.kernel.fail(Op::OpenUplink);
    assert!(r.ports.start_uplink(&mut r.plane, Ipv4Addr::new(192, 168, 50, 1)).is_err());
    assert!(r.ports.uplink_port().is_none());
    assert!(r.plane.datapath.tables().ports().next().is_none());
}

/// NodePorts at the node's own address reach the switch from the node: the kernel's
/// `local` rule moves behind two rules per NodePort (the node's connections, and the
/// source check of the switch's replies), a table of ours routes the address through
/// the host port; the rules follow the NodePorts, and the node is left as found.
#[test]
fn node_ports_at_the_nodes_address_are_ruled_through_the_host_port_and_put_back() {
    use super::kernel::{ROUTE_PROTOCOL, TABLE_LOCAL};
    use super::node_port_rules::{LOCAL_RULE_PRIORITY, RULE_PRIORITY, RULE_TABLE};
    use std::collections::BTreeSet;
    let node_ip = Ipv4Addr::new(192, 168, 50, 1);
    let ports = |p: &[(u8, u16)]| p.iter().copied().collect::<BTreeSet<_>>();
    let mut r = Rig::with("np-rules", |c| c.host_port = Some("vswitch0".into()));
    let pristine = r.kernel.rules();
    r.ports.sync_node_port_rules(Some(node_ip), &ports(&[(6, 30080)]), RouteSync::Check);
    assert_eq!(r.kernel.rules(), pristine, "no host port: nothing");
    r.ports.start_host_port(&mut r.plane, None).unwrap();
    let index = r.kernel.host_dev("vswitch0").unwrap().index;

    r.ports.sync_node_port_rules(Some(node_ip), &ports(&[(6, 30080), (17, 30053)]), RouteSync::Changed);
    let rules = r.kernel.rules();
    type Selects = (u32, u32, Option<u8>, Option<u16>, Option<String>);
    let summary: Vec<Selects> =
        rules.iter().map(|r| (r.priority, r.table, r.ip_protocol, r.dst_port, r.iif.clone())).collect();
    let np =
        |proto, port, iif: &str| (RULE_PRIORITY, RULE_TABLE, Some(proto), Some(port), Some(iif.to_string()));
    assert_eq!(
        summary,
        vec![
            np(6, 30080, "lo"),
            np(6, 30080, "vswitch0"),
            np(17, 30053, "lo"),
            np(17, 30053, "vswitch0"),
            (LOCAL_RULE_PRIORITY, TABLE_LOCAL, None, None, None),
            (32766, 254, None, None, None),
            (32767, 253, None, None, None),
        ],
        "local moved behind ours"
    );
    assert!(rules.iter().all(|r| r.priority == 32766 || r.priority == 32767 || r.protocol == ROUTE_PROTOCOL));
    assert_eq!(
        r.kernel.table_routes(),
        [((RULE_TABLE, ipnet::Ipv4Net::from(node_ip)), index)].into_iter().collect(),
        "the node's address through the host port, in our table"
    );
    assert_eq!(r.kernel.neighbour(index, routes::NEXT_HOP), Some(r.config.gateway_mac));

    // One NodePort gone: its two rules go, the others stay.
    r.ports.sync_node_port_rules(Some(node_ip), &ports(&[(6, 30080)]), RouteSync::Changed);
    assert_eq!(r.kernel.rules().iter().filter(|r| r.priority == RULE_PRIORITY).count(), 2);
    // Shutdown: nothing of ours, the local rule back at 0 as the kernel had it.
    r.ports.remove_node_port_rules();
    assert_eq!(r.kernel.rules(), pristine);
    assert!(r.kernel.table_routes().is_empty());

    // A local rule someone else moved before our place: ours would never be reached,
    // so none are made, and the kernel's rules are not touched.
    let mut foreign = pristine[0].clone();
    foreign.priority = 50;
    foreign.protocol = 4;
    r.kernel.put_rule(foreign);
    let before = r.kernel.rules();
    r.ports.sync_node_port_rules(Some(node_ip), &ports(&[(6, 30080)]), RouteSync::Check);
    assert_eq!(r.kernel.rules(), before);
}

/// A takeover's new daemon: the ports of the state file taken from the queues handed
/// over, under their ids, nothing asked of the pod's namespace; a port whose queues
/// did not all come fails the takeover; descriptors for ports not announced are closed.
#[test]
fn a_takeover_adopts_the_ports_handed_over_and_refuses_half_a_port() {
    use handover::{QueueFd, QueueFdKind};
    let mut old = Rig::new("adopt-old");
    old.attach(&tap("c1", POD_NS, "10.244.1.5")).unwrap();
    let state = old.state();
    let id = state.ports[0].id;
    let fd = || std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    let tap_fd = |port: u16, worker: u32| {
        (QueueFd { port, worker, kind: QueueFdKind::Tap { offloads: true, tunnel: false } }, fd())
    };

    let mut half = Rig::new("adopt-half");
    let refused =
        half.ports.adopt(&mut half.plane, state.clone(), None, Default::default(), vec![tap_fd(id.0, 0)]);
    assert!(matches!(refused, Err(AttachError::NotHandedOver(p)) if p == id), "{refused:?}");

    let mut new = Rig::new("adopt-new");
    let before = new.kernel.log();
    let fds = vec![tap_fd(id.0, 0), tap_fd(id.0, 1), tap_fd(7, 0)];
    let report = new.ports.adopt(&mut new.plane, state.clone(), None, Default::default(), fds).unwrap();
    assert_eq!(report.restored.len(), 1);
    assert!(new.in_tables(id.0));
    let calls = new.kernel.log()[before.len()..].to_vec();
    assert!(calls.iter().all(|c| c.starts_with("adopt")), "nothing but the adoption: {calls:?}");
    assert_eq!(new.ports.ports().len(), 1);
}

/// An AF_XDP pod is adopted from its socket, UMEM and program, with the frames the old
/// daemon held; a socket without its UMEM, or a program short of a map, fails the
/// takeover.
#[test]
fn a_takeover_adopts_an_afxdp_port_only_whole() {
    use handover::{HandedXdp, ProgramState, QueueFd, QueueFdKind, SocketFrames, XdpFd};
    let mut old = Rig::new("adopt-xsk-old");
    old.attach(&afxdp("c1", POD_NS, "10.244.1.6")).unwrap();
    let state = old.state();
    let port = state.ports[0].id.0;
    let fd = || std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    let at = |kind| (QueueFd { port, worker: 1, kind }, fd());
    let xdp = HandedXdp {
        sockets: vec![SocketFrames {
            port,
            worker: 1,
            queue: 0,
            free_tx: vec![0],
            refill: vec![],
            in_flight: 0,
        }],
        programs: vec![ProgramState { port, flags: 2, steered: vec![] }],
        uplink: None,
    };
    let program = [XdpFd::Program, XdpFd::Xsks, XdpFd::Ports, XdpFd::Config].map(|w| at(QueueFdKind::Xdp(w)));
    let whole = || {
        let mut fds = vec![at(QueueFdKind::XskSocket { queue: 0 }), at(QueueFdKind::XskUmem { queue: 0 })];
        fds.extend(program.iter().map(|(q, _)| (*q, fd())));
        fds
    };

    let mut new = Rig::new("adopt-xsk-new");
    let before = new.kernel.log();
    let report = new.ports.adopt(&mut new.plane, state.clone(), None, xdp.clone(), whole()).unwrap();
    assert_eq!(report.restored.len(), 1);
    assert!(new.in_tables(port));
    let calls = new.kernel.log()[before.len()..].to_vec();
    assert!(calls.iter().all(|c| c.starts_with("adopt")), "nothing but the adoption: {calls:?}");

    for missing in [QueueFdKind::XskUmem { queue: 0 }, QueueFdKind::Xdp(XdpFd::Ports)] {
        let mut half = Rig::new("adopt-xsk-half");
        let fds = whole().into_iter().filter(|(q, _)| q.kind != missing).collect();
        let refused = half.ports.adopt(&mut half.plane, state.clone(), None, xdp.clone(), fds);
        assert!(
            matches!(refused, Err(AttachError::NotHandedOver(p)) if p.0 == port),
            "{missing:?}: {refused:?}"
        );
    }
    let mut unannounced = Rig::new("adopt-xsk-unannounced");
    let no_frames = HandedXdp { sockets: vec![], ..xdp };
    let refused = unannounced.ports.adopt(&mut unannounced.plane, state, None, no_frames, whole());
    assert!(matches!(refused, Err(AttachError::NotHandedOver(_))), "{refused:?}");
}
