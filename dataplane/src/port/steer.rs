//! The uplink's XDP program (`bpf/steer.bpf.c`, compiled by `build.rs` and embedded):
//! on the node's underlay interface it hands the switch only what the switch serves on
//! the node's address — TCP/UDP to the ports in its `ports` map (NodePorts), and ICMP
//! errors about those flows — and passes every other frame to the kernel, so the node
//! keeps its own traffic (SSH, kubelet, the API server) on its own stack.
//!
//! Loaded with libbpf. Each receive queue of the
//! interface gets an AF_XDP socket (see [`super::afxdp::XskQueue::open_steered`]),
//! registered in the program's `xsks` map under its queue index.

#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::collections::BTreeSet;
use std::ffi::{CStr, c_void};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::queue::SteeringHandover;
use vswitch_sys::SysError;
use vswitch_sys::netns::Netns;

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// The driver's native hook if it has one, else the generic (SKB) hook.
    Auto,
    Native,
    Generic,
}

/// The compiled program.
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));

/// The descriptors of a [`SteeringHandover`], received.
pub struct SteeringFds {
    pub program: OwnedFd,
    pub xsks: OwnedFd,
    pub ports: OwnedFd,
    pub config: OwnedFd,
}

/// The XDP program on one interface and its maps; detached on drop.
pub struct SteeringProgram {
    /// Null when adopted from another process (which loaded it): then `_adopted` holds
    /// the descriptors.
    object: *mut libbpf_sys::bpf_object,
    _adopted: Option<SteeringFds>,
    prog: i32,
    /// The namespace of the interface: an interface index means something only there,
    /// and the program may be dropped by a thread of another namespace.
    netns: Netns,
    ifindex: i32,
    ifname: String,
    /// The attach flags that worked (the mode).
    flags: u32,
    xsks: i32,
    ports: i32,
    config: i32,
    steered: BTreeSet<(u8, u16)>,
}

// SAFETY: the libbpf object is touched only when the program is made and dropped;
// everything else goes through map fds, which the kernel synchronises. Moving the
// owner to another thread, or sharing `&SteeringProgram` (map updates only), is safe.
unsafe impl Send for SteeringProgram {}
// SAFETY: see above: `&self` methods use map fds and never the libbpf object.
unsafe impl Sync for SteeringProgram {}

fn errno_of(ret: i32) -> std::io::Error {
    // libbpf 1.x returns -errno.
    std::io::Error::from_raw_os_error(-ret)
}

fn map_fd(object: *mut libbpf_sys::bpf_object, name: &CStr) -> Result<i32, SysError> {
    // SAFETY: `object` is a loaded object owned by the caller; `name` is NUL-terminated.
    let fd = unsafe { libbpf_sys::bpf_object__find_map_fd_by_name(object, name.as_ptr()) };
    if fd < 0 {
        return Err(SysError::new(format!("steering program map {name:?}"), errno_of(fd)));
    }
    Ok(fd)
}

impl SteeringProgram {
    /// Loads the program and attaches it to `ifname` (in the calling thread's
    /// namespace) in `mode`, replacing whatever XDP program was there.
    pub fn attach(ifname: &str, mode: XdpMode) -> Result<SteeringProgram, SysError> {
        let ctx = || format!("XDP steering program on {ifname}");
        let netns =
            Netns::current().map_err(|e| SysError::new(ctx(), std::io::Error::other(e.to_string())))?;
        let ifindex = nix::net::if_::if_nametoindex(ifname)
            .map_err(|e| SysError::new(ctx(), std::io::Error::from(e)))? as i32;
        // SAFETY: OBJECT is a valid ELF image for the whole program's life; libbpf
        // copies what it needs. A NULL result sets errno.
        let object = unsafe {
            libbpf_sys::bpf_object__open_mem(OBJECT.as_ptr().cast(), OBJECT.len() as _, std::ptr::null())
        };
        if object.is_null() {
            return Err(SysError::new(ctx(), std::io::Error::last_os_error()));
        }
        // From here on, dropping `program` closes the object (and detaches, once
        // attached).
        let mut program = SteeringProgram {
            object,
            _adopted: None,
            prog: -1,
            netns,
            ifindex,
            ifname: ifname.to_string(),
            flags: 0,
            xsks: -1,
            ports: -1,
            config: -1,
            steered: BTreeSet::new(),
        };
        // SAFETY: `object` was opened above and not loaded yet.
        let ret = unsafe { libbpf_sys::bpf_object__load(object) };
        if ret < 0 {
            return Err(SysError::new(format!("{}: loading", ctx()), errno_of(ret)));
        }
        // SAFETY: a loaded object; the name is NUL-terminated.
        let prog = unsafe { libbpf_sys::bpf_object__find_program_by_name(object, c"vswitch_steer".as_ptr()) };
        if prog.is_null() {
            return Err(SysError::new(ctx(), std::io::Error::from_raw_os_error(libc::ENOENT)));
        }
        // SAFETY: `prog` belongs to the loaded object.
        let prog_fd = unsafe { libbpf_sys::bpf_program__fd(prog) };
        program.prog = prog_fd;
        program.xsks = map_fd(object, c"xsks")?;
        program.ports = map_fd(object, c"ports")?;
        program.config = map_fd(object, c"config")?;

        // A program left by a daemon that died may be in the other mode, which would
        // refuse ours: clear both.
        for flags in [libbpf_sys::XDP_FLAGS_SKB_MODE, libbpf_sys::XDP_FLAGS_DRV_MODE] {
            // SAFETY: detaching by interface index; no pointers passed.
            unsafe { libbpf_sys::bpf_xdp_detach(ifindex, flags, std::ptr::null()) };
        }
        let attempts: &[u32] = match mode {
            XdpMode::Auto => &[libbpf_sys::XDP_FLAGS_DRV_MODE, libbpf_sys::XDP_FLAGS_SKB_MODE],
            XdpMode::Native => &[libbpf_sys::XDP_FLAGS_DRV_MODE],
            XdpMode::Generic => &[libbpf_sys::XDP_FLAGS_SKB_MODE],
        };
        let mut last = 0;
        for flags in attempts {
            // SAFETY: `prog_fd` is the loaded program's; no options.
            last = unsafe { libbpf_sys::bpf_xdp_attach(ifindex, prog_fd, *flags, std::ptr::null()) };
            if last == 0 {
                program.flags = *flags;
                return Ok(program);
            }
        }
        Err(SysError::new(format!("{}: attaching", ctx()), errno_of(last)))
    }

    /// The program another process attached to `ifname` (in the calling thread's
    /// namespace) with `flags`, from its descriptors: it must be the one attached
    /// there now. Detached on drop, as one attached here.
    pub fn adopt(
        ifname: &str,
        flags: u32,
        fds: SteeringFds,
        steered: BTreeSet<(u8, u16)>,
    ) -> Result<SteeringProgram, SysError> {
        let ctx = || format!("XDP steering program on {ifname} handed over");
        let netns =
            Netns::current().map_err(|e| SysError::new(ctx(), std::io::Error::other(e.to_string())))?;
        let ifindex = nix::net::if_::if_nametoindex(ifname)
            .map_err(|e| SysError::new(ctx(), std::io::Error::from(e)))? as i32;
        let mut attached = 0u32;
        // SAFETY: `attached` is a writable u32 for the call.
        let ret = unsafe { libbpf_sys::bpf_xdp_query_id(ifindex, flags as i32, &mut attached) };
        if ret < 0 {
            return Err(SysError::new(ctx(), errno_of(ret)));
        }
        // SAFETY: an all-zero bpf_prog_info is valid (plain integers and NULL pointers).
        let mut info: libbpf_sys::bpf_prog_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
        // SAFETY: `info` is writable and `len` its size; no pointer fields are set, so
        // the kernel fills only the plain ones.
        let ret =
            unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fds.program.as_raw_fd(), &mut info, &mut len) };
        if ret < 0 {
            return Err(SysError::new(ctx(), errno_of(ret)));
        }
        if attached == 0 || attached != info.id {
            return Err(SysError::new(
                ctx(),
                std::io::Error::other(format!(
                    "program {} was handed over but {ifname} runs {}",
                    info.id,
                    if attached == 0 { "none".to_string() } else { attached.to_string() }
                )),
            ));
        }
        Ok(SteeringProgram {
            object: std::ptr::null_mut(),
            prog: fds.program.as_raw_fd(),
            netns,
            ifindex,
            ifname: ifname.to_string(),
            flags,
            xsks: fds.xsks.as_raw_fd(),
            ports: fds.ports.as_raw_fd(),
            config: fds.config.as_raw_fd(),
            steered,
            _adopted: Some(fds),
        })
    }

    /// What the next daemon needs to adopt this program.
    pub fn handed(&self) -> SteeringHandover<'_> {
        // SAFETY: the descriptors belong to the libbpf object or to `_adopted`, both
        // alive as long as `self`, which the borrows are tied to.
        let borrow = |fd: i32| unsafe { BorrowedFd::borrow_raw(fd) };
        SteeringHandover {
            program: borrow(self.prog),
            xsks: borrow(self.xsks),
            ports: borrow(self.ports),
            config: borrow(self.config),
            flags: self.flags,
            steered: self.steered.clone(),
        }
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// True when attached in the driver's native hook.
    pub fn native(&self) -> bool {
        self.flags == libbpf_sys::XDP_FLAGS_DRV_MODE
    }

    fn update<K, V>(&self, fd: i32, what: &str, key: &K, value: &V) -> Result<(), SysError> {
        // SAFETY: key and value point at values of the map's key and value sizes
        // (checked by the kernel against the map definition), valid for the call.
        let ret = unsafe {
            libbpf_sys::bpf_map_update_elem(
                fd,
                (key as *const K).cast(),
                (value as *const V).cast::<c_void>(),
                0,
            )
        };
        if ret < 0 {
            return Err(SysError::new(format!("steering program: {what}"), errno_of(ret)));
        }
        Ok(())
    }

    /// The node address whose ports are steered.
    pub fn set_node_ip(&self, ip: Ipv4Addr) -> Result<(), SysError> {
        // struct steer_config { __be32 node_ip; __u32 all; }: the address in network order.
        let o = ip.octets();
        self.update(self.config, "setting the node address", &0u32, &[o[0], o[1], o[2], o[3], 0, 0, 0, 0])
    }

    /// Steers every frame to the sockets: the program of a pod's veth.
    pub fn set_redirect_all(&self) -> Result<(), SysError> {
        let all = 1u32.to_ne_bytes();
        self.update(self.config, "steering every frame", &0u32, &[0, 0, 0, 0, all[0], all[1], all[2], all[3]])
    }

    /// Makes `ports` ((protocol, port) pairs) exactly the steered ones.
    pub fn set_ports(&mut self, ports: &BTreeSet<(u8, u16)>) -> Result<(), SysError> {
        let key = |(proto, port): (u8, u16)| (u32::from(proto) << 16) | u32::from(port);
        for p in ports.difference(&self.steered) {
            self.update(self.ports, "adding a port", &key(*p), &1u8)?;
        }
        for p in self.steered.difference(ports) {
            let k = key(*p);
            // SAFETY: `k` is a u32, the map's key type, valid for the call.
            let ret = unsafe { libbpf_sys::bpf_map_delete_elem(self.ports, (&k as *const u32).cast()) };
            if ret < 0 && -ret != libc::ENOENT {
                return Err(SysError::new("steering program: removing a port", errno_of(ret)));
            }
        }
        self.steered = ports.clone();
        Ok(())
    }

    /// Sends what queue `queue` steers to the AF_XDP socket `fd`.
    pub fn register_socket(&self, queue: u32, fd: RawFd) -> Result<(), SysError> {
        self.update(self.xsks, "registering a socket", &queue, &(fd as u32))
    }
}

impl Drop for SteeringProgram {
    fn drop(&mut self) {
        if self.flags != 0 {
            let (ifindex, flags) = (self.ifindex, self.flags);
            // SAFETY: detaching by interface index, in the interface's own namespace;
            // no pointers passed.
            let detached =
                self.netns.run(|| unsafe { libbpf_sys::bpf_xdp_detach(ifindex, flags, std::ptr::null()) });
            if !matches!(detached, Ok(0)) {
                tracing::warn!(interface = %self.ifname, result = ?detached.map(errno_of), "detaching the XDP program");
            }
        }
        if !self.object.is_null() {
            // SAFETY: the object was opened by `attach` and is closed once, here.
            unsafe { libbpf_sys::bpf_object__close(self.object) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FramePool;
    use crate::port::afxdp::XskQueue;
    use crate::queue::PortQueue;
    use crate::wire::parse::{IPPROTO_TCP, IPPROTO_UDP};
    use crate::wire::{L4, Net, parse};
    use std::time::Duration;
    use vswitch_sys::netns::Netns as NsHandle;
    use vswitch_testbed::{Netns, unique_prefix, wait_until};

    /// Drains the socket; returns the (protocol, destination port) of what arrived.
    fn received(q: &mut XskQueue, pool: &mut FramePool) -> Vec<(u8, u16)> {
        let mut batch = Vec::new();
        q.rx_batch(pool, &mut batch, 64).unwrap();
        batch
            .drain(..)
            .filter_map(|f| match parse(f.data()).ok()?.net {
                Net::Ipv4(v4) => match v4.l4 {
                    L4::Tcp { dst_port, .. } => Some((IPPROTO_TCP, dst_port)),
                    L4::Udp { dst_port, .. } => Some((IPPROTO_UDP, dst_port)),
                    _ => Some((v4.protocol, 0)),
                },
                _ => None,
            })
            .collect()
    }

    /// A node namespace whose `upl` faces a client namespace: frames to the node's
    /// steered ports reach our socket, everything else the node's own stack.
    #[test]
    #[ignore = "needs root: scripts/test.sh runs it"]
    fn only_steered_ports_reach_the_socket() {
        for mode in [XdpMode::Generic, XdpMode::Auto] {
            let prefix = unique_prefix("vtst");
            let node = Netns::new(&format!("{prefix}n"));
            let client = Netns::new(&format!("{prefix}c"));
            node.ok(&["ip", "link", "add", "upl", "type", "veth", "peer", "name", "ext"]);
            node.ok(&["ip", "link", "set", "ext", "netns", client.name()]);
            node.ok(&["ip", "addr", "add", "10.9.2.1/24", "dev", "upl"]);
            node.ok(&["ip", "link", "set", "upl", "up"]);
            client.ok(&["ip", "addr", "add", "10.9.2.2/24", "dev", "ext"]);
            client.ok(&["ip", "link", "set", "ext", "up"]);
            let handle = NsHandle::open(&node.path()).unwrap();
            let (mut program, mut q) = handle
                .run(|| {
                    let program = SteeringProgram::attach("upl", mode)?;
                    program.set_node_ip(Ipv4Addr::new(10, 9, 2, 1))?;
                    let queues = vswitch_sys::ethtool::rx_queues("upl")?;
                    assert_eq!(queues, 1, "a veth has one receive queue");
                    let q = XskQueue::open_steered(&program, 0)?;
                    Ok::<_, SysError>((program, q))
                })
                .unwrap()
                .unwrap();
            program.set_ports(&BTreeSet::from([(IPPROTO_TCP, 30080), (IPPROTO_UDP, 30053)])).unwrap();
            let mut pool = FramePool::standalone(crate::frame::DEFAULT_BUF_SIZE);

            // The node's own traffic stays the kernel's: ping, and TCP to a port of its.
            let _listener = node.spawn(&["ncat", "-lk", "22222"]);
            assert!(wait_until(Duration::from_secs(5), || node.ok(&["ss", "-ltn"]).contains(":22222")));
            assert!(client.run(&["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.9.2.1"]).status.success());
            assert!(client.run(&["ncat", "-z", "-w", "2", "10.9.2.1", "22222"]).status.success(), "{mode:?}");

            // Steered: a SYN to the NodePort and a datagram to the UDP one.
            let _syn = client.spawn(&["ncat", "-z", "-w", "2", "10.9.2.1", "30080"]);
            client.ok(&["sh", "-c", "echo x | ncat -u -w 1 --send-only 10.9.2.1 30053"]);
            let mut got = Vec::new();
            assert!(
                wait_until(Duration::from_secs(5), || {
                    got.extend(received(&mut q, &mut pool));
                    got.contains(&(IPPROTO_TCP, 30080)) && got.contains(&(IPPROTO_UDP, 30053))
                }),
                "{mode:?}: {got:?}"
            );
            assert!(!got.contains(&(IPPROTO_TCP, 22222)), "{mode:?}: the node's port was steered: {got:?}");

            // A port no longer steered is the kernel's again: nothing listens, so the
            // connection is refused instead of vanishing into the switch.
            program.set_ports(&BTreeSet::from([(IPPROTO_UDP, 30053)])).unwrap();
            let refused = client.sh("ncat -w 2 10.9.2.1 30080 </dev/null");
            assert!(!refused.status.success());
            assert!(
                String::from_utf8_lossy(&refused.stderr).contains("refused"),
                "{mode:?}: {}",
                String::from_utf8_lossy(&refused.stderr)
            );
            drop(q);
            drop(program);
            assert!(!node.ok(&["ip", "link", "show", "upl"]).contains("prog/xdp"), "detached on drop");
        }
    }
}
