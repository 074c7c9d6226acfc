//! AF_XDP ports: an XSK socket ([`super::xsk`]) bound to the host end of a pod's veth
//! pair, or to a queue of the uplink.
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
//! A takeover hands the socket, its UMEM (a memfd) and which frames this side held
//! ([`XskFrames`]) to the next daemon, which maps them again ([`XskQueue::adopt`]):
//! frames waiting in the receive ring are read by the next daemon.
//!
//! A stale XDP program on the interface is detached by the control plane before
//! binding.

#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::time::{Duration, Instant};

use super::steer::SteeringProgram;
pub use super::steer::XdpMode;
use super::xsk::{Desc, Geometry, Xsk};
use crate::frame::{Frame, FramePool};
use crate::queue::{Handover, PortError, PortQueue, TxOutcome, XskFrames, XskHandover};
use vswitch_sys::{Context, SysError};

/// Frames per UMEM: half for receiving, half for transmitting.
pub const FRAMES: u32 = 4096;
const RING: u32 = FRAMES / 2;
const FRAME_SIZE: u32 = 2048;
/// The XDP headroom the kernel reserves at the front of every UMEM frame.
const XDP_HEADROOM: u32 = 256;
/// The longest frame a UMEM frame holds; the pod MTU of an AF_XDP port must fit it.
pub const MAX_FRAME: usize = (FRAME_SIZE - XDP_HEADROOM) as usize;
/// Every socket's sizes (a takeover's partner must have the same).
const GEOMETRY: Geometry = Geometry { frames: FRAMES, frame_size: FRAME_SIZE, ring: RING };

/// Silences libbpf's chatter on stderr (every ELF section of a program it does not
/// know); failures reach us as errno with our own context.
pub fn prepare_process() {
    // SAFETY: setting a print callback is allowed at any time; NULL disables it.
    unsafe { libbpf_sys::libbpf_set_print(None) };
}

/// One AF_XDP socket (a queue of the host-side veth or of the uplink) and its UMEM.
pub struct XskQueue {
    xsk: Xsk,
    queue: u32,
    /// Transmit frames not in the kernel's hands.
    free_tx: Vec<u64>,
    /// Scratch for ring operations, sized once.
    descs: Vec<Desc>,
    addrs: Vec<u64>,
    produce: Vec<Desc>,
    /// Receive frames the fill ring could not take back yet (retried every round).
    refill: Vec<u64>,
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

fn zero_desc() -> Desc {
    Desc { addr: 0, len: 0, options: 0 }
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
        let ifname = program.ifname();
        let ctx = || format!("AF_XDP socket on {ifname} queue {queue}");
        let ifindex = nix::net::if_::if_nametoindex(ifname).map_err(std::io::Error::from).context(ctx)?;
        let mut xsk = Xsk::bind(ifindex, queue, GEOMETRY).context(ctx)?;
        let frames: Vec<u64> = (0..u64::from(FRAMES)).map(|i| i * u64::from(FRAME_SIZE)).collect();
        let (to_fill, free_tx) = frames.split_at(RING as usize);
        if xsk.fill.produce(to_fill) != to_fill.len() {
            return Err(SysError::new(ctx(), std::io::Error::other("fill ring smaller than configured")));
        }
        program.register_socket(queue, xsk.socket().as_raw_fd())?;
        let frames = XskFrames { free_tx: free_tx.to_vec(), refill: Vec::new(), in_flight: 0 };
        Ok(Self::with_frames(xsk, queue, frames, ifname.to_string()))
    }

    fn with_frames(xsk: Xsk, queue: u32, frames: XskFrames, label: String) -> XskQueue {
        XskQueue {
            xsk,
            queue,
            free_tx: frames.free_tx,
            descs: vec![zero_desc(); RING as usize],
            addrs: vec![0; RING as usize],
            produce: Vec::with_capacity(RING as usize),
            refill: frames.refill,
            in_flight: frames.in_flight as usize,
            last_completion: Instant::now(),
            label,
            program: None,
        }
    }

    /// A socket another daemon handed over: `socket` bound to `queue`, its UMEM's
    /// `memfd`, the `frames` that daemon held, and the XDP program steering to it if
    /// the queue owns one (a pod's).
    pub fn adopt(
        socket: OwnedFd,
        memfd: OwnedFd,
        queue: u32,
        frames: XskFrames,
        program: Option<SteeringProgram>,
        label: String,
    ) -> Result<XskQueue, SysError> {
        let ctx = || format!("AF_XDP socket of {label} handed over");
        check_frames(&frames).map_err(std::io::Error::other).context(ctx)?;
        let xsk = Xsk::adopt(socket, memfd, GEOMETRY).context(ctx)?;
        let mut q = Self::with_frames(xsk, queue, frames, label);
        q.program = program;
        Ok(q)
    }

    pub fn set_label(&mut self, label: String) {
        self.label = label;
    }

    /// Takes back transmitted frames and keeps copy-mode transmission moving.
    fn complete_tx(&mut self) {
        if self.in_flight == 0 {
            return;
        }
        let done = self.xsk.completion.consume(&mut self.addrs);
        self.free_tx.extend_from_slice(&self.addrs[..done]);
        self.in_flight -= done;
        if done > 0 {
            self.last_completion = Instant::now();
        }
        if self.in_flight > 0 {
            self.xsk.kick_tx();
        }
    }

    fn handed(&self) -> XskHandover<'_> {
        XskHandover {
            socket: self.xsk.socket(),
            umem: self.xsk.memfd(),
            queue: self.queue,
            frames: XskFrames {
                free_tx: self.free_tx.clone(),
                refill: self.refill.clone(),
                in_flight: self.in_flight as u32,
            },
        }
    }
}

/// Frames handed over are whole frames of the UMEM, each once, and no more than it has.
fn check_frames(frames: &XskFrames) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for &addr in frames.free_tx.iter().chain(&frames.refill) {
        if addr % u64::from(FRAME_SIZE) != 0 || addr >= u64::from(FRAMES) * u64::from(FRAME_SIZE) {
            return Err(format!("frame address {addr} is not a frame of the UMEM"));
        }
        if !seen.insert(addr) {
            return Err(format!("frame {addr} handed over twice"));
        }
    }
    if seen.len() + frames.in_flight as usize > FRAMES as usize {
        return Err(format!(
            "{} frames held and {} in flight: more than the UMEM's {FRAMES}",
            seen.len(),
            frames.in_flight
        ));
    }
    Ok(())
}

impl PortQueue for XskQueue {
    fn rx_batch(
        &mut self,
        pool: &mut FramePool,
        batch: &mut Vec<Frame>,
        max: usize,
    ) -> Result<usize, PortError> {
        self.complete_tx();
        let want = max.min(self.descs.len());
        let n = self.xsk.rx.consume(&mut self.descs[..want]);
        let mut got = 0;
        for desc in &self.descs[..n] {
            // SAFETY: the descriptor came off the receive ring, so the frame is ours
            // until it goes back on the fill ring below.
            match unsafe { self.xsk.umem.frame(desc.addr, desc.len as usize) } {
                Some(bytes) => {
                    let mut frame = pool.get_fitting(bytes.len());
                    frame.set(bytes);
                    batch.push(frame);
                    got += 1;
                }
                None => {
                    tracing::warn!(port = %self.label, addr = desc.addr, len = desc.len, "receive descriptor outside the UMEM: skipped")
                }
            }
            self.refill.push(GEOMETRY.frame_of(desc.addr));
        }
        if !self.refill.is_empty() {
            // The fill ring holds every receive frame, so this takes them all; if it
            // ever did not, the rest wait here for the next round.
            let back = self.xsk.fill.produce(&self.refill);
            self.refill.drain(..back);
        }
        Ok(got)
    }

    fn tx_batch(&mut self, frames: &mut Vec<Frame>, pool: &mut FramePool) -> TxOutcome {
        self.complete_tx();
        let mut out = TxOutcome::default();
        self.produce.clear();
        for frame in frames.drain(..) {
            if frame.len() > MAX_FRAME {
                out.dropped += 1;
                pool.put(frame);
                continue;
            }
            let Some(addr) = self.free_tx.pop() else {
                out.dropped += 1;
                pool.put(frame);
                continue;
            };
            // SAFETY: `addr` is a free transmit frame: on no ring until produced below.
            let data = unsafe { self.xsk.umem.frame_mut(addr, frame.len()) }
                .expect("a free frame of the UMEM holds MAX_FRAME bytes");
            data.copy_from_slice(frame.data());
            self.produce.push(Desc { addr, len: frame.len() as u32, options: 0 });
            out.sent_bytes += frame.len() as u64;
            pool.put(frame);
        }
        if self.produce.is_empty() {
            return out;
        }
        let produced = self.xsk.tx.produce(&self.produce);
        // A full ring takes fewer: the rest are lost, as on a full NIC queue.
        for lost in &self.produce[produced..] {
            out.dropped += 1;
            out.sent_bytes -= u64::from(lost.len);
            self.free_tx.push(lost.addr);
        }
        if produced > 0 {
            out.sent += produced;
            if self.in_flight == 0 {
                self.last_completion = Instant::now();
            }
            self.in_flight += produced;
            self.xsk.kick_tx();
        }
        out
    }

    fn name(&self) -> &str {
        &self.label
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.xsk.socket().as_raw_fd())
    }

    /// The receive ring is shared memory: looking at it costs no system call.
    fn polls_cheaply(&self) -> bool {
        true
    }

    fn busy(&self) -> bool {
        self.in_flight > 0 && self.last_completion.elapsed() < STALL
    }

    fn handover(&self) -> Option<Handover<'_>> {
        Some(Handover::Xsk {
            sockets: vec![self.handed()],
            program: self.program.as_ref().map(SteeringProgram::handed),
        })
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
            let fd = q.xsk.socket().as_raw_fd();
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

    fn handover(&self) -> Option<Handover<'_>> {
        Some(Handover::Xsk { sockets: self.members.iter().map(XskQueue::handed).collect(), program: None })
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

    /// A fresh namespace with a veth pair: the kernel talks on `vb` (10.9.1.1/24), the
    /// test on `va`.
    fn veth_namespace(prefix: &str) -> (Netns, NsHandle) {
        let ns = Netns::new(&unique_prefix(prefix));
        ns.ok(&["ip", "link", "add", "va", "type", "veth", "peer", "name", "vb"]);
        ns.ok(&["ip", "link", "set", "vb", "address", &mac(0x10).to_string()]);
        ns.ok(&["ip", "addr", "add", "10.9.1.1/24", "dev", "vb"]);
        ns.ok(&["ip", "link", "set", "va", "up"]);
        ns.ok(&["ip", "link", "set", "vb", "up"]);
        let handle = NsHandle::open(&ns.path()).unwrap();
        (ns, handle)
    }

    /// A veth pair in a fresh namespace: the kernel talks on `vb`, we read and write
    /// `va` through an AF_XDP socket, in each XDP mode the kernel offers for veth.
    #[test]
    #[ignore = "needs root: scripts/test.sh runs it"]
    fn frames_cross_a_veth_through_an_xsk_socket() {
        for mode in [XdpMode::Generic, XdpMode::Auto] {
            let (ns, handle) = veth_namespace("vtxdp");
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

    /// Receive descriptors the kernel queued for one owner are read by the next: the
    /// socket, its UMEM and program change hands (as in a takeover, here within one
    /// process) and frames keep flowing both ways.
    #[test]
    #[ignore = "needs root: scripts/test.sh runs it"]
    fn a_socket_handed_over_keeps_its_queued_frames() {
        use crate::port::steer::{SteeringFds, SteeringProgram};
        for mode in [XdpMode::Generic, XdpMode::Auto] {
            let (ns, handle) = veth_namespace("vtxho");
            let first = handle.run(|| XskQueue::open("va", mode)).unwrap().unwrap();
            // Something in flight: a frame sent before the handover (an unsolicited
            // reply, which the kernel ignores) comes back to the next owner.
            let mut pool = FramePool::standalone(crate::frame::DEFAULT_BUF_SIZE);
            let mut first = first;
            let reply =
                arp_reply(mac(0x20), Ipv4Addr::new(10, 9, 1, 3), mac(0x10), Ipv4Addr::new(10, 9, 1, 1));
            assert_eq!(first.tx_batch(&mut vec![pool.copy_of(&reply).unwrap()], &mut pool).sent, 1);

            // The kernel asks for 10.9.1.2 while nobody reads: its requests wait in the ring.
            let _ping = ns.spawn(&["ping", "-c", "20", "-i", "0.1", "-W", "1", "10.9.1.2"]);
            assert!(
                wait_until(Duration::from_secs(5), || first.xsk.rx.len() >= 2),
                "requests queued ({mode:?})"
            );

            let Some(Handover::Xsk { mut sockets, program: Some(program) }) = first.handover() else {
                panic!("a pod queue hands over one socket and its program")
            };
            let sock = sockets.pop().unwrap();
            let fds = SteeringFds {
                program: program.program.try_clone_to_owned().unwrap(),
                xsks: program.xsks.try_clone_to_owned().unwrap(),
                ports: program.ports.try_clone_to_owned().unwrap(),
                config: program.config.try_clone_to_owned().unwrap(),
            };
            let (socket, memfd) =
                (sock.socket.try_clone_to_owned().unwrap(), sock.umem.try_clone_to_owned().unwrap());
            let (flags, steered, frames) = (program.flags, program.steered.clone(), sock.frames.clone());
            assert_eq!(frames.free_tx.len() + frames.in_flight as usize, RING as usize);
            // The old owner goes as a process does: nothing of it is undone.
            std::mem::forget(first);

            let mut next = handle
                .run(|| {
                    let program = SteeringProgram::adopt("va", flags, fds, steered)?;
                    XskQueue::adopt(socket, memfd, 0, frames, Some(program), "va".into())
                })
                .unwrap()
                .unwrap();
            let mut batch = Vec::new();
            next.rx_batch(&mut pool, &mut batch, 64).unwrap();
            let asked = |b: &Vec<Frame>| {
                b.iter().any(|f| {
                    matches!(parse(f.data()).map(|m| m.net),
                        Ok(Net::Arp(a)) if a.target_ip == Ipv4Addr::new(10, 9, 1, 2))
                })
            };
            assert!(asked(&batch), "the queued requests were read by the next owner ({mode:?})");

            let reply =
                arp_reply(mac(0x20), Ipv4Addr::new(10, 9, 1, 2), mac(0x10), Ipv4Addr::new(10, 9, 1, 1));
            assert_eq!(next.tx_batch(&mut vec![pool.copy_of(&reply).unwrap()], &mut pool).sent, 1);
            let learned = wait_until(Duration::from_secs(5), || {
                next.rx_batch(&mut pool, &mut batch, 64).unwrap();
                ns.ok(&["ip", "neigh", "show", "10.9.1.2"]).contains(&mac(0x20).to_string())
            });
            assert!(
                learned,
                "the next owner's reply reached the kernel ({mode:?}): {}",
                ns.ok(&["ip", "neigh"])
            );
            assert!(wait_until(Duration::from_secs(2), || {
                next.rx_batch(&mut pool, &mut batch, 64).unwrap();
                !next.busy()
            }));
            assert_eq!(next.free_tx.len(), RING as usize, "every transmit frame came back ({mode:?})");
            drop(next);
            assert!(
                !ns.ok(&["ip", "link", "show", "va"]).contains("prog/xdp"),
                "the adopted program detached on drop"
            );
        }
    }

    #[test]
    fn frames_handed_over_are_checked() {
        let ok = XskFrames { free_tx: vec![0, 2048], refill: vec![4096], in_flight: 3 };
        assert_eq!(check_frames(&ok), Ok(()));
        let twice = XskFrames { free_tx: vec![2048], refill: vec![2048], in_flight: 0 };
        assert!(check_frames(&twice).unwrap_err().contains("twice"));
        let odd = XskFrames { free_tx: vec![100], ..Default::default() };
        assert!(check_frames(&odd).unwrap_err().contains("not a frame"));
        let past = XskFrames { free_tx: vec![u64::from(FRAMES) * 2048], ..Default::default() };
        assert!(check_frames(&past).is_err());
        let too_many = XskFrames { free_tx: vec![0], refill: vec![], in_flight: FRAMES };
        assert!(check_frames(&too_many).unwrap_err().contains("more than"));
    }
}
