//! AF_XDP ports: an XSK socket (`xsk-rs`) bound to the host end of a pod's veth pair.
//!
//! The pod's end of the pair is its interface; frames it sends arrive on the host end,
//! where our XDP program ([`SteeringProgram`] in its redirect-everything mode) hands
//! every frame of queue 0 to our socket. (Not libxdp's default program: closing a
//! socket that used it leaks a BPF map fd.)
//! On veth the kernel offers copy mode only, so each frame is copied once between the
//! socket's UMEM and a pool buffer; the rings themselves are batched (one `consume` or
//! `produce` per batch, no syscall on receive).
//!
//! Per port: one UMEM of [`FRAMES`] 2 KiB frames, half kept in the fill ring for
//! receiving (the fill ring is larger than anything in flight on the receive side), half
//! for transmitting. Copy-mode transmit only moves when kicked (`sendto`), and the kernel
//! takes at most 32 frames per kick, so a queue with frames in flight reports itself
//! [`busy`](PortQueue::busy) and kicks again on every poll until completions return
//! them.
//!
//! Traps of this kernel handled here: a stale XDP program on the interface is detached
//! by the control plane before binding; libxdp's multi-program dispatcher needs bpffs,
//! which is not mounted by default, so [`prepare_process`] tells libxdp not to use it.

#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::io::Write;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::time::{Duration, Instant};

use xsk_rs::config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use super::steer::SteeringProgram;
pub use super::steer::XdpMode;
use crate::frame::{Frame, FramePool};
use crate::queue::{PortError, PortQueue, TxOutcome};
use vswitch_sys::{Context, SysError};

/// Frames per UMEM: half for receiving, half for transmitting.
pub const FRAMES: u32 = 4096;
const RING: u32 = FRAMES / 2;
const FRAME_SIZE: u32 = 2048;
/// The XDP headroom the kernel reserves at the front of every UMEM frame.
const XDP_HEADROOM: u32 = 256;
/// The longest frame a UMEM frame holds; the pod MTU of an AF_XDP port must fit it.
pub const MAX_FRAME: usize = (FRAME_SIZE - XDP_HEADROOM) as usize;

/// Tells libxdp to attach its program without the multi-program dispatcher (which
/// needs a mounted bpffs; most nodes running this have none, and a port owns its
/// interface alone anyway). Call it first thing in `main`: it refuses, changing
/// nothing, once the process has a second thread.
pub fn prepare_process() -> Result<(), SysError> {
    let status =
        std::fs::read_to_string("/proc/self/status").context(|| "reading /proc/self/status".into())?;
    let threads = status.lines().find_map(|l| l.strip_prefix("Threads:")).map(str::trim);
    if threads != Some("1") {
        return Err(SysError::new(
            "preparing libxdp",
            std::io::Error::other("the process already has several threads; call this first in main"),
        ));
    }
    // SAFETY: the process has exactly one thread (checked above), so nothing can read
    // the environment concurrently.
    unsafe { std::env::set_var("LIBXDP_SKIP_DISPATCHER", "1") };
    // libbpf reports, on stderr, every ELF section of libxdp's program it does not
    // know, and libxdp its lock and bpffs probing; failures reach us as errno with our
    // own context. No printers: quiet.
    // SAFETY: setting a print callback is allowed at any time; NULL disables it.
    unsafe {
        libbpf_sys::libbpf_set_print(None);
        libxdp_sys::libxdp_set_print(None);
    }
    Ok(())
}

/// One AF_XDP socket (queue 0 of the host-side veth) and its UMEM.
pub struct XskQueue {
    umem: Umem,
    fill: FillQueue,
    comp: CompQueue,
    rx: RxQueue,
    tx: TxQueue,
    /// Transmit frames not in the kernel's hands.
    free_tx: Vec<FrameDesc>,
    /// Scratch for ring operations, sized once.
    scratch: Vec<FrameDesc>,
    produce: Vec<FrameDesc>,
    /// Receive frames the fill ring could not take back yet (retried every round).
    refill: Vec<FrameDesc>,
    in_flight: usize,
    /// When transmitted frames last came back; a queue whose device stopped completing
    /// (down, unregistered) stops counting as busy after [`STALL`].
    last_completion: Instant,
    label: String,
    /// A pod veth's own XDP program, detached when the socket is gone (last field:
    /// dropped after the socket).
    program: Option<SteeringProgram>,
}

/// How long frames in flight keep a worker awake without any completing.
const STALL: Duration = Duration::from_millis(50);

/// A socket for an interface whose XDP program is ours ([`SteeringProgram`]): libxdp
/// loads nothing.
fn steered_socket_config() -> SocketConfig {
    SocketConfig::builder()
        .rx_queue_size(QueueSize::new(RING).expect("a power of two"))
        .tx_queue_size(QueueSize::new(RING).expect("a power of two"))
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP)
        .build()
}

impl XskQueue {
    /// Binds a socket to queue 0 of `ifname` (in the calling thread's namespace), with
    /// our XDP program (in `mode`) steering every frame to it. Not libxdp's own program:
    /// libxdp leaks a map fd each time a socket using it is closed, one per detached
    /// pod (found by the soak test).
    pub fn open(ifname: &str, mode: XdpMode) -> Result<XskQueue, SysError> {
        let program = SteeringProgram::attach(ifname, mode)?;
        program.set_redirect_all()?;
        let mut q = Self::open_steered(&program, 0)?;
        q.program = Some(program);
        Ok(q)
    }

    /// Binds a socket to queue `queue` of the interface `program` is attached to and
    /// registers it there: the program decides which frames reach it.
    pub fn open_steered(program: &SteeringProgram, queue: u32) -> Result<XskQueue, SysError> {
        let q = Self::open_with(program.ifname(), queue, steered_socket_config(), "steered")?;
        program.register_socket(queue, q.rx.fd().as_raw_fd())?;
        Ok(q)
    }

    fn open_with(ifname: &str, queue: u32, config: SocketConfig, how: &str) -> Result<XskQueue, SysError> {
        let ctx = || format!("AF_XDP socket on {ifname} queue {queue} ({how})");
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).expect("at least 2048"))
            .fill_queue_size(QueueSize::new(RING).expect("a power of two"))
            .comp_queue_size(QueueSize::new(RING).expect("a power of two"))
            .build()
            .map_err(|e| std::io::Error::other(e.to_string()))
            .context(ctx)?;
        let (umem, mut descs) = Umem::new(umem_config, NonZeroU32::new(FRAMES).expect("non-zero"), false)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .context(ctx)?;
        let iface: Interface =
            ifname.parse().map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL)).context(ctx)?;
        // SAFETY: the UMEM is this socket's alone (not shared), so no other socket is
        // bound to this interface and queue through it.
        let sock = unsafe { Socket::new(config, &umem, &iface, queue) }
            .map_err(|e| std::io::Error::other(e.to_string()))
            .context(ctx)?;
        let (tx, rx, Some((mut fill, comp))) = sock else {
            return Err(SysError::new(
                ctx(),
                std::io::Error::other("socket shares a fill ring it should own"),
            ));
        };
        let free_tx = descs.split_off(RING as usize);
        // SAFETY: the descriptors are this UMEM's, fresh, and go to the fill ring once.
        let filled = unsafe { fill.produce(&descs) };
        if filled != descs.len() {
            return Err(SysError::new(ctx(), std::io::Error::other("fill ring smaller than configured")));
        }
        Ok(XskQueue {
            umem,
            fill,
            comp,
            rx,
            tx,
            free_tx,
            scratch: vec![FrameDesc::default(); RING as usize],
            produce: Vec::with_capacity(RING as usize),
            refill: Vec::new(),
            in_flight: 0,
            last_completion: Instant::now(),
            label: ifname.to_string(),
            program: None,
        })
    }

    pub fn set_label(&mut self, label: String) {
        self.label = label;
    }

    /// Takes back transmitted frames and keeps copy-mode transmission moving.
    fn complete_tx(&mut self) {
        if self.in_flight == 0 {
            return;
        }
        // SAFETY: the completion ring returns descriptors of this UMEM that we put on
        // the transmit ring; after this they are ours again.
        let done = unsafe { self.comp.consume(&mut self.scratch) };
        self.free_tx.extend_from_slice(&self.scratch[..done]);
        self.in_flight -= done;
        if done > 0 {
            self.last_completion = Instant::now();
        }
        if self.in_flight > 0 {
            // Copy mode sends only inside this syscall, at most 32 frames per call;
            // EAGAIN (more left) and ENOBUFS are expected and retried next round.
            let _ = self.tx.wakeup();
        }
    }
}

impl PortQueue for XskQueue {
    fn rx_batch(
        &mut self,
        pool: &mut FramePool,
        batch: &mut Vec<Frame>,
        max: usize,
    ) -> Result<usize, PortError> {
        self.complete_tx();
        let want = max.min(self.scratch.len());
        // SAFETY: the receive ring hands out descriptors of this UMEM filled by the
        // kernel; we read them, then give them straight back to the fill ring.
        let n = unsafe { self.rx.consume(&mut self.scratch[..want]) };
        for desc in &self.scratch[..n] {
            // SAFETY: `desc` came from the receive ring and is not on any ring until
            // the fill-ring produce below.
            let data = unsafe { self.umem.data(desc) };
            let bytes = data.contents();
            let mut frame = pool.get_fitting(bytes.len());
            frame.set(bytes);
            batch.push(frame);
        }
        self.refill.extend_from_slice(&self.scratch[..n]);
        if !self.refill.is_empty() {
            // SAFETY: each descriptor came from the receive ring and is on no ring now.
            // The fill ring holds every receive frame, so this succeeds; if it ever did
            // not (produce is all or nothing), the frames wait here for the next round.
            let back = unsafe { self.fill.produce(&self.refill) };
            if back == self.refill.len() {
                self.refill.clear();
            }
        }
        Ok(n)
    }

    fn tx_batch(&mut self, frames: &mut Vec<Frame>, pool: &mut FramePool) -> TxOutcome {
        self.complete_tx();
        let mut out = TxOutcome::default();
        self.produce.clear();
        for frame in frames.drain(..) {
            let Some(mut desc) = self.free_tx.pop() else {
                out.dropped += 1;
                pool.put(frame);
                continue;
            };
            if frame.len() > MAX_FRAME {
                self.free_tx.push(desc);
                out.dropped += 1;
                pool.put(frame);
                continue;
            }
            {
                // SAFETY: `desc` is a free transmit frame of this UMEM; nothing else
                // touches it until it is produced below.
                let mut data = unsafe { self.umem.data_mut(&mut desc) };
                let mut cursor = data.cursor();
                cursor.set_pos(0);
                cursor.write_all(frame.data()).expect("frame length checked against the UMEM frame");
            }
            out.sent_bytes += frame.len() as u64;
            self.produce.push(desc);
            pool.put(frame);
        }
        if self.produce.is_empty() {
            return out;
        }
        // SAFETY: the descriptors are this UMEM's free transmit frames, each once.
        let produced = unsafe { self.tx.produce(&self.produce) };
        if produced == 0 {
            // Ring full (all-or-nothing): the frames are lost, as on a full NIC queue.
            out.dropped += self.produce.len();
            out.sent_bytes = 0;
            self.free_tx.append(&mut self.produce);
        } else {
            out.sent += produced;
            if self.in_flight == 0 {
                self.last_completion = Instant::now();
            }
            self.in_flight += produced;
            let _ = self.tx.wakeup();
        }
        out
    }

    fn name(&self) -> &str {
        &self.label
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.rx.fd().as_raw_fd())
    }

    /// The receive ring is shared memory: looking at it costs no system call.
    fn polls_cheaply(&self) -> bool {
        true
    }

    fn busy(&self) -> bool {
        self.in_flight > 0 && self.last_completion.elapsed() < STALL
    }
}

/// Several sockets of one interface served by one worker, as one queue: the uplink's
/// NIC may have more receive queues than there are workers, and every queue needs a
/// socket (a queue without one would hand its share of the steered flows to the
/// kernel).
///
/// Receiving takes from each member in turn (a different one first each round, so none
/// starves); transmitting goes through the first. The group's readiness fd is an epoll
/// instance of its own holding the members' fds, edge-triggered and drained on every
/// receive, so the worker's epoll sees it readable whenever any member became readable.
pub struct XskGroup {
    members: Vec<XskQueue>,
    /// An epoll instance (mio registers edge-triggered).
    epoll: Poll,
    events: Events,
    next: usize,
    label: String,
}

impl XskGroup {
    /// Groups `members` (at least one), sockets of the same interface.
    pub fn new(members: Vec<XskQueue>) -> Result<XskGroup, SysError> {
        let label = members.first().map(|q| q.label.clone()).unwrap_or_default();
        let ctx = || format!("grouping AF_XDP sockets of {label}");
        let epoll = Poll::new().context(ctx)?;
        for (i, q) in members.iter().enumerate() {
            let fd = q.rx.fd().as_raw_fd();
            epoll.registry().register(&mut SourceFd(&fd), Token(i), Interest::READABLE).context(ctx)?;
        }
        Ok(XskGroup { members, epoll, events: Events::with_capacity(16), next: 0, label })
    }

    /// Empties the group's ready list, so that the next member readiness makes the
    /// group's fd readable again (an edge for the worker's epoll).
    fn drain_readiness(&mut self) {
        while self.epoll.poll(&mut self.events, Some(Duration::ZERO)).is_ok() {
            if self.events.iter().count() < self.events.capacity() {
                break;
            }
        }
    }
}

impl PortQueue for XskGroup {
    fn rx_batch(
        &mut self,
        pool: &mut FramePool,
        batch: &mut Vec<Frame>,
        max: usize,
    ) -> Result<usize, PortError> {
        self.drain_readiness();
        let n = self.members.len();
        let mut got = 0;
        for k in 0..n {
            if got >= max {
                break;
            }
            got += self.members[(self.next + k) % n].rx_batch(pool, batch, max - got)?;
        }
        self.next = (self.next + 1) % n.max(1);
        Ok(got)
    }

    fn tx_batch(&mut self, frames: &mut Vec<Frame>, pool: &mut FramePool) -> TxOutcome {
        match self.members.first_mut() {
            Some(q) => q.tx_batch(frames, pool),
            None => {
                let dropped = frames.len();
                frames.drain(..).for_each(|f| pool.put(f));
                TxOutcome { dropped, ..Default::default() }
            }
        }
    }

    fn name(&self) -> &str {
        &self.label
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    fn busy(&self) -> bool {
        self.members.iter().any(XskQueue::busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{arp_reply, mac};
    use crate::wire::{Net, parse};
    use std::net::Ipv4Addr;
    use std::time::Duration;
    use vswitch_sys::netns::Netns as NsHandle;
    use vswitch_testbed::{Netns, unique_prefix, wait_until};

    /// A veth pair in a fresh namespace: the kernel talks on `vb`, we read and write
    /// `va` through an AF_XDP socket, in each XDP mode the kernel offers for veth.
    #[test]
    #[ignore = "needs root: scripts/test.sh runs it"]
    fn frames_cross_a_veth_through_an_xsk_socket() {
        for mode in [XdpMode::Generic, XdpMode::Auto] {
            let ns = Netns::new(&unique_prefix("vtxdp"));
            ns.ok(&["ip", "link", "add", "va", "type", "veth", "peer", "name", "vb"]);
            ns.ok(&["ip", "link", "set", "vb", "address", &mac(0x10).to_string()]);
            ns.ok(&["ip", "addr", "add", "10.9.1.1/24", "dev", "vb"]);
            ns.ok(&["ip", "link", "set", "va", "up"]);
            ns.ok(&["ip", "link", "set", "vb", "up"]);
            let handle = NsHandle::open(&ns.path()).unwrap();
            handle.run(|| vswitch_sys::ethtool::disable_offloads("vb")).unwrap().unwrap();
            let mut q = handle.run(|| XskQueue::open("va", mode)).unwrap().unwrap();
            assert!(ns.ok(&["ip", "link", "show", "va"]).contains("xdp"), "program attached ({mode:?})");

            let _ping = ns.spawn(&["ping", "-c", "5", "-i", "0.2", "-W", "1", "10.9.1.2"]);
            let mut pool = FramePool::standalone(crate::frame::DEFAULT_BUF_SIZE);
            let mut batch = Vec::new();
            let got = wait_until(Duration::from_secs(5), || {
                q.rx_batch(&mut pool, &mut batch, 64).unwrap();
                batch.iter().any(|f| {
                    matches!(parse(f.data()).map(|m| m.net),
                        Ok(Net::Arp(a)) if a.target_ip == Ipv4Addr::new(10, 9, 1, 2))
                })
            });
            assert!(got, "the kernel's ARP request reached the socket ({mode:?})");

            let reply =
                arp_reply(mac(0x20), Ipv4Addr::new(10, 9, 1, 2), mac(0x10), Ipv4Addr::new(10, 9, 1, 1));
            let mut out = vec![pool.copy_of(&reply).unwrap()];
            assert_eq!(q.tx_batch(&mut out, &mut pool).sent, 1);
            let learned = wait_until(Duration::from_secs(5), || {
                q.rx_batch(&mut pool, &mut batch, 64).unwrap(); // keeps TX moving
                ns.ok(&["ip", "neigh", "show", "10.9.1.2"]).contains(&mac(0x20).to_string())
            });
            assert!(learned, "the kernel learned our reply ({mode:?}): {}", ns.ok(&["ip", "neigh"]));
            assert!(wait_until(Duration::from_secs(2), || {
                q.rx_batch(&mut pool, &mut batch, 64).unwrap();
                !q.busy()
            }));
        }
    }
}
