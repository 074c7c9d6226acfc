//! The tunnel port's tc programs (`bpf/tunnel.bpf.c`, compiled by `build.rs` and
//! embedded): they connect the switch's tunnel TAP to the node's underlay interface.
//! VXLAN to the node's address is redirected from the underlay interface's ingress to
//! the TAP, where the switch reads it with its offload state (UDP-tunnel super-frames
//! whole, partial inner checksums flagged); what the switch writes to the TAP is sent
//! out of the underlay interface along the kernel's route to its destination, with the
//! neighbour's MAC (`bpf_redirect_neigh`), a super-frame segmented only there. Neither direction passes
//! the node's IP stack or netfilter: the kernel's UDP socket never sees our VXLAN, and
//! no forwarding sysctl is needed.
//!
//! Loaded with libbpf (linked anyway, see `steer`). The underlay interface keeps its
//! `clsact` qdisc, and other programs on it keep theirs: only our filter (its own handle
//! and priority) is added, replaced by a restarted daemon, and removed on drop.

#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::{CStr, c_void};
use std::net::Ipv4Addr;

use vswitch_sys::SysError;
use vswitch_sys::netns::Netns;

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tunnel.bpf.o"));

/// Our filter's identity on the underlay interface's ingress hook ("vs").
const HANDLE: u32 = 0x7673;
const PRIORITY: u32 = 0x7673;

/// What the programs did, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelCounters {
    /// VXLAN redirected from the underlay interface to the switch.
    pub to_switch: u64,
    /// Frames of the switch sent toward another node.
    pub to_underlay: u64,
    /// Frames of the switch dropped: not IPv4.
    pub not_sent: u64,
}

/// The two programs, attached; detached on drop.
pub struct TunnelPrograms {
    object: *mut libbpf_sys::bpf_object,
    /// The namespace of both interfaces (the programs may be dropped elsewhere).
    netns: Netns,
    underlay: String,
    underlay_ifindex: i32,
    tap: String,
    tap_ifindex: i32,
    counters: i32,
}

// SAFETY: the libbpf object is touched only when attached and dropped; reading the
// counters goes through a map fd, which the kernel synchronises.
unsafe impl Send for TunnelPrograms {}
// SAFETY: as above: `&self` methods use the map fd only.
unsafe impl Sync for TunnelPrograms {}

fn errno_of(ret: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(-ret)
}

fn hook(ifindex: i32) -> libbpf_sys::bpf_tc_hook {
    libbpf_sys::bpf_tc_hook {
        sz: std::mem::size_of::<libbpf_sys::bpf_tc_hook>() as _,
        ifindex,
        attach_point: libbpf_sys::BPF_TC_INGRESS,
        ..Default::default()
    }
}

fn tc_opts(prog_fd: i32, flags: u32) -> libbpf_sys::bpf_tc_opts {
    libbpf_sys::bpf_tc_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_tc_opts>() as _,
        prog_fd,
        flags,
        handle: HANDLE,
        priority: PRIORITY,
        ..Default::default()
    }
}

impl TunnelPrograms {
    /// Loads the programs and attaches them: VXLAN to `node_ip`:`udp_port` arriving on
    /// `underlay` goes to the TAP `tap`, and what arrives from `tap` goes out toward its
    /// destination. Both interfaces are in the calling thread's namespace.
    pub fn attach(
        underlay: &str,
        tap: &str,
        node_ip: Ipv4Addr,
        udp_port: u16,
    ) -> Result<TunnelPrograms, SysError> {
        let ctx = || format!("tunnel programs between {underlay} and {tap}");
        let io = |e: nix::Error| SysError::new(ctx(), std::io::Error::from(e));
        let netns =
            Netns::current().map_err(|e| SysError::new(ctx(), std::io::Error::other(e.to_string())))?;
        let underlay_ifindex = nix::net::if_::if_nametoindex(underlay).map_err(io)? as i32;
        let tap_ifindex = nix::net::if_::if_nametoindex(tap).map_err(io)? as i32;
        // SAFETY: OBJECT is a valid ELF image for the program's whole life; libbpf
        // copies what it needs. A NULL result sets errno.
        let object = unsafe {
            libbpf_sys::bpf_object__open_mem(OBJECT.as_ptr().cast(), OBJECT.len() as _, std::ptr::null())
        };
        if object.is_null() {
            return Err(SysError::new(ctx(), std::io::Error::last_os_error()));
        }
        // Dropping `programs` from here on closes the object (and detaches).
        let mut programs = TunnelPrograms {
            object,
            netns,
            underlay: underlay.to_string(),
            underlay_ifindex: -1,
            tap: tap.to_string(),
            tap_ifindex,
            counters: -1,
        };
        // SAFETY: `object` was opened above and not loaded yet.
        let ret = unsafe { libbpf_sys::bpf_object__load(object) };
        if ret < 0 {
            return Err(SysError::new(format!("{}: loading", ctx()), errno_of(ret)));
        }
        programs.counters = programs.map_fd(c"counters")?;
        let config = programs.map_fd(c"config")?;
        // struct tunnel_config { __be32 node_ip; __u32 tap_ifindex; __u32 underlay_ifindex;
        // __u16 udp_port; __u16 pad; }
        let mut value = [0u8; 16];
        value[0..4].copy_from_slice(&node_ip.octets());
        value[4..8].copy_from_slice(&(tap_ifindex as u32).to_ne_bytes());
        value[8..12].copy_from_slice(&(underlay_ifindex as u32).to_ne_bytes());
        value[12..14].copy_from_slice(&udp_port.to_ne_bytes());
        let key = 0u32;
        // SAFETY: key and value have the map's key and value sizes and live for the call.
        let ret = unsafe {
            libbpf_sys::bpf_map_update_elem(
                config,
                (&key as *const u32).cast(),
                value.as_ptr().cast::<c_void>(),
                0,
            )
        };
        if ret < 0 {
            return Err(SysError::new(format!("{}: configuring", ctx()), errno_of(ret)));
        }
        // The TAP's side first: nothing reaches the TAP before the underlay's program
        // redirects to it.
        programs.attach_one(c"vswitch_tunnel_out", tap_ifindex, tap)?;
        programs.attach_one(c"vswitch_tunnel_in", underlay_ifindex, underlay)?;
        programs.underlay_ifindex = underlay_ifindex;
        Ok(programs)
    }

    fn map_fd(&self, name: &CStr) -> Result<i32, SysError> {
        // SAFETY: `object` is loaded and owned by self; `name` is NUL-terminated.
        let fd = unsafe { libbpf_sys::bpf_object__find_map_fd_by_name(self.object, name.as_ptr()) };
        if fd < 0 {
            return Err(SysError::new(format!("tunnel program map {name:?}"), errno_of(fd)));
        }
        Ok(fd)
    }

    fn attach_one(&self, program: &CStr, ifindex: i32, ifname: &str) -> Result<(), SysError> {
        let ctx = || format!("attaching {program:?} to {ifname}");
        // SAFETY: a loaded object; the name is NUL-terminated.
        let prog = unsafe { libbpf_sys::bpf_object__find_program_by_name(self.object, program.as_ptr()) };
        if prog.is_null() {
            return Err(SysError::new(ctx(), std::io::Error::from_raw_os_error(libc::ENOENT)));
        }
        // SAFETY: `prog` belongs to the loaded object.
        let prog_fd = unsafe { libbpf_sys::bpf_program__fd(prog) };
        let mut h = hook(ifindex);
        // SAFETY: `h` is a valid, sized hook description live for the call.
        let ret = unsafe { libbpf_sys::bpf_tc_hook_create(&mut h) };
        if ret < 0 && -ret != libc::EEXIST {
            return Err(SysError::new(format!("{}: clsact", ctx()), errno_of(ret)));
        }
        let mut opts = tc_opts(prog_fd, libbpf_sys::BPF_TC_F_REPLACE);
        // SAFETY: hook and options are valid, sized and live for the call.
        let ret = unsafe { libbpf_sys::bpf_tc_attach(&h, &mut opts) };
        if ret < 0 {
            return Err(SysError::new(ctx(), errno_of(ret)));
        }
        Ok(())
    }

    /// Attaches the programs again over whatever took their place (another daemon's,
    /// in a takeover that did not happen).
    pub fn reattach(&self) -> Result<(), SysError> {
        self.netns.run(|| {
            self.attach_one(c"vswitch_tunnel_out", self.tap_ifindex, &self.tap)?;
            self.attach_one(c"vswitch_tunnel_in", self.underlay_ifindex, &self.underlay)
        })?
    }

    pub fn underlay(&self) -> &str {
        &self.underlay
    }

    /// The programs' counters, summed over CPUs.
    pub fn counters(&self) -> TunnelCounters {
        let cpus = usize::try_from(
            // SAFETY: no arguments; returns a count or -errno.
            unsafe { libbpf_sys::libbpf_num_possible_cpus() },
        )
        .unwrap_or(1)
        .max(1);
        let read = |key: u32| -> u64 {
            let mut values = vec![0u64; cpus];
            // SAFETY: a per-CPU map's lookup writes one u64 per possible CPU into
            // `values`, which holds that many; the key is a u32 as declared.
            let ret = unsafe {
                libbpf_sys::bpf_map_lookup_elem(
                    self.counters,
                    (&key as *const u32).cast(),
                    values.as_mut_ptr().cast(),
                )
            };
            if ret < 0 { 0 } else { values.iter().sum() }
        };
        TunnelCounters { to_switch: read(0), to_underlay: read(1), not_sent: read(2) }
    }
}

impl Drop for TunnelPrograms {
    fn drop(&mut self) {
        if self.underlay_ifindex >= 0 {
            let h = hook(self.underlay_ifindex);
            let opts = tc_opts(0, 0);
            // SAFETY: hook and options (handle and priority only, as detaching wants)
            // are valid and live for the call, run in the interface's namespace.
            let detached = self.netns.run(|| unsafe { libbpf_sys::bpf_tc_detach(&h, &opts) });
            if !matches!(detached, Ok(0)) {
                tracing::warn!(interface = %self.underlay, result = ?detached.map(errno_of), "detaching the tunnel program");
            }
        }
        // The TAP's program goes with the TAP. Closing the object unloads both once
        // nothing holds them.
        // SAFETY: the object was opened by `attach` and is closed once, here.
        unsafe { libbpf_sys::bpf_object__close(self.object) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FramePool;
    use crate::port::tap::{self, TapOptions, TapQueue};
    use crate::queue::PortQueue;
    use crate::wire::checksum;
    use crate::wire::vxlan::{self, OUTER_LEN, Outer};
    use crate::wire::{L4, MacAddr, Net, parse};
    use std::time::{Duration, Instant};
    use vswitch_sys::netns::Netns as NsHandle;
    use vswitch_testbed::{Netns, unique_prefix};

    /// Receives from `q` until a VXLAN frame carrying an inner ICMP echo request comes,
    /// or 5 s pass.
    fn echo_request(q: &mut TapQueue, pool: &mut FramePool) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut batch = Vec::new();
        while Instant::now() < deadline {
            q.rx_batch(pool, &mut batch, 32).unwrap();
            for f in batch.drain(..) {
                let Ok(Net::Ipv4(outer)) = parse(f.data()).map(|m| m.net) else { continue };
                let inner = &f.data()[OUTER_LEN..];
                if outer.l4 == (L4::Udp { src_port: outer_src(f.data()), dst_port: 4789 })
                    && matches!(parse(inner).map(|m| m.net), Ok(Net::Ipv4(i)) if i.l4 == L4::Icmpv4 { icmp_type: 8, code: 0 })
                {
                    return f.data().to_vec();
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no VXLAN echo request through the tunnel TAP within 5 s");
    }

    fn outer_src(frame: &[u8]) -> u16 {
        u16::from_be_bytes([frame[34], frame[35]])
    }

    /// A node namespace whose underlay `ul0` faces a node running the kernel's vxlan
    /// device: its ping to an address behind us arrives through the tunnel TAP, and our
    /// answer, written to the TAP with zero MACs, is routed out of `ul0` to it.
    #[test]
    #[ignore = "needs root: scripts/test.sh runs it"]
    fn vxlan_crosses_between_the_underlay_and_the_tunnel_tap() {
        let prefix = unique_prefix("vttun");
        let node = Netns::new(&format!("{prefix}n"));
        let peer = Netns::new(&format!("{prefix}k"));
        node.ok(&["ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", peer.name()]);
        for (ns, ip) in [(&node, "10.9.3.1/24"), (&peer, "10.9.3.2/24")] {
            ns.ok(&["ip", "addr", "add", ip, "dev", "ul0"]);
            ns.ok(&["ip", "link", "set", "ul0", "up"]);
        }
        let ours = "02:00:00:00:00:01";
        for cmd in [
            "ip link add vx0 type vxlan id 1 dstport 4789 local 10.9.3.2 dev ul0 nolearning",
            "ip addr add 10.250.0.2/24 dev vx0",
            "ip link set vx0 up",
            &format!("ip neigh add 10.250.0.1 lladdr {ours} dev vx0 nud permanent"),
            &format!("bridge fdb append {ours} dev vx0 dst 10.9.3.1"),
        ] {
            let out = peer.sh(cmd);
            assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let handle = NsHandle::open(&node.path()).unwrap();
        let opts = TapOptions { queues: 1, offloads: true, mac: None, mtu: Some(1500) };
        let (programs, mut queues) = handle
            .run(|| {
                let mut queues = tap::create("vt0", &opts)?;
                tap::enable_tunnel_offloads(&mut queues)?;
                let programs = TunnelPrograms::attach("ul0", "vt0", Ipv4Addr::new(10, 9, 3, 1), 4789)?;
                Ok::<_, SysError>((programs, queues))
            })
            .unwrap()
            .unwrap();
        node.ok(&["ip", "link", "set", "vt0", "up"]);
        let mut ping = peer.spawn(&["ping", "-c", "1", "-W", "5", "10.250.0.1"]);
        let mut pool = FramePool::standalone(crate::frame::DEFAULT_BUF_SIZE);
        let request = echo_request(&mut queues[0], &mut pool);
        assert_eq!(programs.counters().to_switch, 1, "{:?}", programs.counters());

        // The echo reply, inside VXLAN back to the peer.
        let mut inner = request[OUTER_LEN..].to_vec();
        let (dst, src) = (MacAddr::from_bytes(&inner[6..12]), MacAddr::from_bytes(&inner[0..6]));
        inner[0..6].copy_from_slice(&dst.0);
        inner[6..12].copy_from_slice(&src.0);
        let (a, b) = (inner[26..30].to_vec(), inner[30..34].to_vec());
        inner[26..30].copy_from_slice(&b);
        inner[30..34].copy_from_slice(&a);
        inner[34] = 0;
        inner[36..38].fill(0);
        let c = checksum::checksum(&inner[34..]);
        inner[36..38].copy_from_slice(&c.to_be_bytes());
        let mut outer = [0u8; OUTER_LEN];
        let o = Outer {
            src_mac: MacAddr::ZERO,
            dst_mac: MacAddr::ZERO,
            src_ip: Ipv4Addr::new(10, 9, 3, 1),
            dst_ip: Ipv4Addr::new(10, 9, 3, 2),
            src_port: vxlan::source_port(7),
            dst_port: 4789,
            vni: 1,
            ttl: 64,
        };
        vxlan::write_outer(&mut outer, &o, inner.len());
        let reply = pool.copy_of(&[&outer[..], &inner].concat()).unwrap();
        let mut out = vec![reply];
        assert_eq!(queues[0].tx_batch(&mut out, &mut pool).sent, 1);
        let done = ping.wait_output(Duration::from_secs(6)).expect("ping ends");
        assert!(
            done.status.success(),
            "the peer got our echo reply: {}",
            String::from_utf8_lossy(&done.stdout)
        );
        assert!(programs.counters().to_underlay >= 1, "{:?}", programs.counters());

        queues[0].release_device().unwrap();
        drop(queues);
        drop(programs);
        assert!(
            !node.ok(&["tc", "filter", "show", "dev", "ul0", "ingress"]).contains("vswitch"),
            "detached on drop"
        );
    }
}
