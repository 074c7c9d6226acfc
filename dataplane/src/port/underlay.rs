//! The underlay through kernel sockets: VXLAN to and from other nodes, the default when
//! the node's underlay interface is not taken over with AF_XDP.
//!
//! Receive: a UDP socket bound to the VXLAN port (one per queue, `SO_REUSEPORT`, so the
//! kernel spreads the nodes' flows — whose outer source ports carry the inner flow's
//! hash — over the workers), read with `recvmmsg`. The kernel has checked and removed
//! the outer headers; the queue writes plain ones back in front of the VXLAN header
//! (addresses and ports from the datagram's source) so the pipeline sees a frame as it
//! was on the wire, the same as from an AF_XDP underlay.
//!
//! With `UDP_GRO` on the socket, a NIC's GRO may hand over one flow's consecutive
//! datagrams as one (the `UDP_GRO` control message gives their size): the queue cuts
//! them apart again — each is a whole VXLAN packet — and the coalescer in front of the
//! pods' TAPs merges their TCP segments into super-frames. One system call then brings
//! up to 64 KiB of a flow instead of one datagram.
//!
//! Transmit: a raw `IPPROTO_RAW` socket (send-only, `IP_HDRINCL`), written with
//! `sendmmsg`: the pipeline's outer IPv4 header goes out as is — DF set, the UDP source
//! port chosen per inner flow, which a UDP socket bound to one port could not do — and
//! the kernel routes it, fills in the source address when it is zero and resolves the
//! next hop's MAC.

// Socket calls the standard library has no batch form of.
#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::frame::{Frame, FramePool};
use crate::queue::{Handover, PortError, PortQueue, TxOutcome};
use crate::wire::checksum;
use crate::wire::parse::{ETHERNET_HEADER_LEN, ETHERTYPE_IPV4, IPPROTO_UDP};

/// Outer Ethernet + IPv4 + UDP, rebuilt in front of each received datagram.
const SYNTHETIC_LEN: usize = 14 + 20 + 8;
/// Datagrams per system call.
const CHUNK: usize = 64;
/// Room for one GRO train past the frame it starts in: the kernel's GRO stops at 64 KiB
/// (`gro_max_size`; a longer train, with BIG TCP's limits raised, is dropped as
/// malformed). One per datagram of a call: 4 MiB of address space per queue, touched
/// only where trains arrive.
const GRO_SLOT: usize = 65_536;
/// Socket buffers: several batches of full-size datagrams per queue.
const SOCKET_BUFFER: libc::c_int = 4 << 20;
/// Control-message room per datagram: one `UDP_GRO` int.
const CONTROL_LEN: usize = 32;

/// One received datagram, as `recvmmsg` reported it.
#[derive(Clone, Copy)]
struct Received {
    len: usize,
    src: SocketAddrV4,
    truncated: bool,
    /// Size of each datagram of a GRO train (the last may be shorter).
    segment: Option<usize>,
}

impl Received {
    const NONE: Received = Received {
        len: 0,
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        truncated: false,
        segment: None,
    };
}

/// One queue of the underlay: a receiving UDP socket and a sending raw socket.
pub struct UnderlayQueue {
    rx: OwnedFd,
    tx: OwnedFd,
    /// Largest underlay packet (the underlay MTU): sizes receive buffers.
    mtu: usize,
    /// Written as the outer destination of received frames.
    local: SocketAddrV4,
    label: String,
    /// With `UDP_GRO` on: where each datagram's bytes past its frame land,
    /// [`GRO_SLOT`] per datagram of a call (pages touched only when a train arrives).
    overflow: Option<Box<[u8]>>,
    /// Frames of one `recvmmsg`, before they are cut apart into the batch.
    landed: Vec<Frame>,
}

fn last_error(op: &'static str) -> (&'static str, io::Error) {
    (op, io::Error::last_os_error())
}

fn check(ret: libc::c_int, op: &'static str) -> Result<libc::c_int, (&'static str, io::Error)> {
    if ret < 0 { Err(last_error(op)) } else { Ok(ret) }
}

fn set_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
    op: &'static str,
) -> Result<(), (&'static str, io::Error)> {
    // SAFETY: `value` is a live c_int and its size is passed; the kernel only reads it.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(ret, op).map(|_| ())
}

fn get_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> Result<libc::c_int, (&'static str, io::Error)> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live and sized for one c_int, which the kernel writes.
    let ret = unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut libc::c_int).cast(), &mut len) };
    check(ret, "getsockopt").map(|_| value)
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

impl UnderlayQueue {
    /// Opens a queue receiving VXLAN on `local` (the port; the address may be
    /// unspecified) for an underlay of MTU `mtu`. Every queue of the port binds the same
    /// address (`SO_REUSEPORT`).
    pub fn open(local: SocketAddrV4, mtu: u16) -> Result<UnderlayQueue, PortError> {
        let fail = |(op, source): (&'static str, io::Error)| PortError {
            port: format!("underlay {local}"),
            op,
            source,
        };
        // SAFETY: plain socket creation; the result is checked before use.
        let rx = check(
            unsafe {
                libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
            },
            "socket(udp)",
        )
        .map_err(fail)?;
        // SAFETY: `rx` is a fresh descriptor nothing else owns.
        let rx = unsafe { OwnedFd::from_raw_fd(rx) };
        set_int(rx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1, "SO_REUSEPORT").map_err(fail)?;
        // As root, past rmem_max; else as much as the limit allows.
        if set_int(rx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, SOCKET_BUFFER, "SO_RCVBUFFORCE")
            .is_err()
        {
            set_int(rx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, SOCKET_BUFFER, "SO_RCVBUF")
                .map_err(fail)?;
        }
        let sa = sockaddr(local);
        // SAFETY: `sa` is a valid sockaddr_in and its size is passed.
        let ret = unsafe {
            libc::bind(
                rx.as_raw_fd(),
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        check(ret, "bind").map_err(fail)?;
        // SAFETY: as above; IPPROTO_RAW implies IP_HDRINCL and receives nothing.
        let tx = check(
            unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    libc::IPPROTO_RAW,
                )
            },
            "socket(raw)",
        )
        .map_err(fail)?;
        // SAFETY: `tx` is a fresh descriptor nothing else owns.
        let tx = unsafe { OwnedFd::from_raw_fd(tx) };
        if set_int(tx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SOCKET_BUFFER, "SO_SNDBUFFORCE")
            .is_err()
        {
            set_int(tx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, SOCKET_BUFFER, "SO_SNDBUF")
                .map_err(fail)?;
        }
        Ok(UnderlayQueue::with_sockets(rx, tx, mtu, local))
    }

    fn with_sockets(rx: OwnedFd, tx: OwnedFd, mtu: u16, local: SocketAddrV4) -> UnderlayQueue {
        // Coalesced receive where the kernel has it (5.0 on); without, one datagram each.
        let overflow = match set_int(rx.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1, "UDP_GRO") {
            Ok(()) => Some(vec![0u8; CHUNK * GRO_SLOT].into_boxed_slice()),
            Err((_, e)) => {
                tracing::debug!(error = %e, "UDP_GRO refused: underlay datagrams read one by one");
                None
            }
        };
        UnderlayQueue {
            rx,
            tx,
            mtu: usize::from(mtu),
            local,
            label: format!("underlay {local}"),
            overflow,
            landed: Vec::new(),
        }
    }

    /// Takes the sockets of a queue a previous daemon handed over
    /// ([`Handover::Sockets`]) if they are what [`UnderlayQueue::open`] makes: a UDP
    /// socket bound to `local`'s port and a raw IP socket. Anything else is closed.
    pub fn adopt(
        rx: OwnedFd,
        tx: OwnedFd,
        local: SocketAddrV4,
        mtu: u16,
    ) -> Result<UnderlayQueue, PortError> {
        use nix::sys::socket::{SockaddrIn, getsockname, getsockopt, sockopt};
        let fail = |op, source| PortError { port: format!("underlay {local}"), op, source };
        let mismatch = |what: String| fail("adopting", io::Error::new(io::ErrorKind::InvalidInput, what));
        let kind = |fd: &OwnedFd| -> io::Result<(nix::sys::socket::SockType, i32)> {
            let protocol =
                get_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL).map_err(|(_, e)| e)?;
            Ok((getsockopt(fd, sockopt::SockType)?, protocol))
        };
        let (rx_type, rx_proto) = kind(&rx).map_err(|e| fail("inspecting the handed UDP socket", e))?;
        let bound: SockaddrIn =
            getsockname(rx.as_raw_fd()).map_err(|e| fail("inspecting the handed UDP socket", e.into()))?;
        if rx_type != nix::sys::socket::SockType::Datagram
            || rx_proto != libc::IPPROTO_UDP
            || bound.port() != local.port()
        {
            return Err(mismatch(format!("the receiving fd is not a UDP socket on port {}", local.port())));
        }
        let (tx_type, tx_proto) = kind(&tx).map_err(|e| fail("inspecting the handed raw socket", e))?;
        if tx_type != nix::sys::socket::SockType::Raw || tx_proto != libc::IPPROTO_RAW {
            return Err(mismatch("the sending fd is not a raw IP socket".into()));
        }
        for fd in [&rx, &tx] {
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
                .map_err(|e| fail("making the handed socket non-blocking", e.into()))?;
        }
        Ok(UnderlayQueue::with_sockets(rx, tx, mtu, local))
    }

    /// Whether the kernel may hand over a flow's datagrams coalesced (`UDP_GRO`).
    pub fn receives_coalesced(&self) -> bool {
        self.overflow.is_some()
    }

    pub fn set_label(&mut self, label: String) {
        self.label = label;
    }

    fn error(&self, op: &'static str, source: io::Error) -> PortError {
        PortError { port: self.label.clone(), op, source }
    }

    /// Receives up to `frames.len()` datagrams into `frames` (after room for the outer
    /// headers; a GRO train's bytes past the frame into its slot of the overflow).
    fn recv_chunk(&mut self, frames: &mut [Frame], got: &mut [Received]) -> io::Result<usize> {
        let n = frames.len().min(CHUNK);
        let mut iovs: [[MaybeUninit<libc::iovec>; 2]; CHUNK] = [[const { MaybeUninit::uninit() }; 2]; CHUNK];
        // SAFETY: all-zero is a valid sockaddr_in and mmsghdr (null pointers, zero lengths).
        let mut names: [libc::sockaddr_in; CHUNK] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; CHUNK] = unsafe { std::mem::zeroed() };
        // u64 keeps the control buffers aligned for cmsghdr.
        let mut control = [[0u64; CONTROL_LEN / 8]; CHUNK];
        let mut overflow = self.overflow.as_deref_mut().map(|o| o.chunks_exact_mut(GRO_SLOT));
        for i in 0..n {
            let spare = frames[i].spare_from_mut(SYNTHETIC_LEN);
            iovs[i][0].write(libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() });
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = iovs[i][0].as_mut_ptr();
            h.msg_iovlen = 1;
            if let Some(slot) = overflow.as_mut().and_then(Iterator::next) {
                iovs[i][1].write(libc::iovec { iov_base: slot.as_mut_ptr().cast(), iov_len: slot.len() });
                h.msg_iovlen = 2;
                h.msg_control = control[i].as_mut_ptr().cast();
                h.msg_controllen = CONTROL_LEN;
            }
        }
        // SAFETY: every header points at its own name, control buffer and iovecs over
        // the spare area of a frame this call holds mutably and over its own slot of
        // the overflow; all outlive the call.
        let ret = unsafe {
            libc::recvmmsg(
                self.rx.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let ret = ret as usize;
        for i in 0..ret {
            let name = &names[i];
            let src = SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(name.sin_addr.s_addr)),
                u16::from_be(name.sin_port),
            );
            let h = &msgs[i].msg_hdr;
            let truncated = h.msg_flags & libc::MSG_TRUNC != 0;
            got[i] = Received { len: msgs[i].msg_len as usize, src, truncated, segment: gro_segment(h) };
        }
        Ok(ret)
    }
}

impl UnderlayQueue {
    /// Appends the datagram `frame` received (bytes past the frame in `tail`) to `batch`
    /// with outer headers in front: one frame, or one per datagram of a GRO train.
    /// Returns the number of frames appended.
    fn cut_apart(
        &self,
        mut frame: Frame,
        datagram: &Received,
        tail: &[u8],
        pool: &mut FramePool,
        batch: &mut Vec<Frame>,
    ) -> usize {
        let room = frame.capacity() - SYNTHETIC_LEN;
        let train = datagram.segment.filter(|s| datagram.len > *s && !datagram.truncated && *s <= room);
        let Some(size) = train else {
            // One datagram; past its frame it is no wire packet: malformed.
            let truncated = datagram.truncated || datagram.len > room;
            let len = datagram.len.min(room);
            write_synthetic(
                &mut frame.spare_mut()[..SYNTHETIC_LEN],
                datagram.src,
                self.local,
                len,
                truncated,
            );
            frame.set_len(SYNTHETIC_LEN + len);
            batch.push(frame);
            return 1;
        };
        let first = batch.len();
        {
            let received = frame.spare_from_mut(SYNTHETIC_LEN);
            let head = &received[..datagram.len.min(room)];
            let mut at = size;
            while at < datagram.len {
                let len = size.min(datagram.len - at);
                let mut next = pool.get_fitting(SYNTHETIC_LEN + len);
                let out = next.spare_mut();
                copy_joined(head, tail, at..at + len, &mut out[SYNTHETIC_LEN..SYNTHETIC_LEN + len]);
                write_synthetic(&mut out[..SYNTHETIC_LEN], datagram.src, self.local, len, false);
                next.set_len(SYNTHETIC_LEN + len);
                batch.push(next);
                at += len;
            }
        }
        write_synthetic(&mut frame.spare_mut()[..SYNTHETIC_LEN], datagram.src, self.local, size, false);
        frame.set_len(SYNTHETIC_LEN + size);
        // The first datagram goes in front of the ones cut out of its tail.
        batch.insert(first, frame);
        batch.len() - first
    }
}

/// The datagram size of a GRO train, from the `UDP_GRO` control message of `h`.
fn gro_segment(h: &libc::msghdr) -> Option<usize> {
    if h.msg_control.is_null() {
        return None;
    }
    // SAFETY: `h` is a header recvmmsg filled: its control pointer and length describe
    // the control buffer it wrote, which the CMSG macros walk within bounds.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP
                && (*c).cmsg_type == libc::UDP_GRO
                && (*c).cmsg_len as usize >= libc::CMSG_LEN(4) as usize
            {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(size).ok().filter(|s| *s > 0);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

/// Copies bytes `range` of `head` followed by `tail` into `out`.
fn copy_joined(head: &[u8], tail: &[u8], range: std::ops::Range<usize>, out: &mut [u8]) {
    let split = range.start.min(head.len())..range.end.min(head.len());
    let from_head = split.len();
    out[..from_head].copy_from_slice(&head[split]);
    let rest = range.start.max(head.len()) - head.len()..range.end.max(head.len()) - head.len();
    out[from_head..from_head + rest.len()].copy_from_slice(&tail[rest]);
}

/// The outer headers of a received datagram of `len` bytes from `src` to `dst`. A
/// truncated one gets an impossible IPv4 length, so the pipeline counts it as malformed.
fn write_synthetic(out: &mut [u8], src: SocketAddrV4, dst: SocketAddrV4, len: usize, truncated: bool) {
    out[0..12].fill(0);
    out[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip = &mut out[14..34];
    let total = if truncated { u16::MAX } else { (20 + 8 + len) as u16 };
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..8].copy_from_slice(&[0, 0, 0x40, 0]);
    ip[8] = 64;
    ip[9] = IPPROTO_UDP;
    ip[10..12].fill(0);
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let c = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut out[34..42];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
    udp[6..8].fill(0);
}

impl PortQueue for UnderlayQueue {
    fn rx_batch(
        &mut self,
        pool: &mut FramePool,
        batch: &mut Vec<Frame>,
        max: usize,
    ) -> Result<usize, PortError> {
        let mut total = 0;
        let mut got = [Received::NONE; CHUNK];
        while total < max {
            let want = (max - total).min(CHUNK);
            let mut landed = std::mem::take(&mut self.landed);
            landed.extend((0..want).map(|_| pool.get_fitting(SYNTHETIC_LEN + self.mtu)));
            let received = match self.recv_chunk(&mut landed, &mut got) {
                Ok(n) => n,
                Err(e) => {
                    for f in landed.drain(..) {
                        pool.put(f);
                    }
                    self.landed = landed;
                    // Only an empty socket may end a batch short (see the TAP queue).
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => continue,
                        _ => {}
                    }
                    return Err(self.error("recvmmsg", e));
                }
            };
            for f in landed.drain(received..) {
                pool.put(f);
            }
            let mut slots = self.overflow.as_deref().map(|o| o.chunks_exact(GRO_SLOT));
            for (frame, datagram) in landed.drain(..).zip(&got[..received]) {
                let tail = slots.as_mut().and_then(Iterator::next).unwrap_or(&[]);
                total += self.cut_apart(frame, datagram, tail, pool, batch);
            }
            self.landed = landed;
            if received < want {
                break;
            }
        }
        Ok(total)
    }

    fn tx_batch(&mut self, frames: &mut Vec<Frame>, pool: &mut FramePool) -> TxOutcome {
        let mut out = TxOutcome::default();
        let mut done = 0;
        while done < frames.len() {
            let chunk = &frames[done..(done + CHUNK).min(frames.len())];
            let mut iovs: [MaybeUninit<libc::iovec>; CHUNK] = [const { MaybeUninit::uninit() }; CHUNK];
            // SAFETY: all-zero is a valid sockaddr_in and mmsghdr.
            let mut names: [libc::sockaddr_in; CHUNK] = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let mut msgs: [libc::mmsghdr; CHUNK] = unsafe { std::mem::zeroed() };
            let mut n = 0;
            let mut malformed = 0;
            for f in chunk {
                // The pipeline wrote Ethernet + IPv4 + UDP + VXLAN; the kernel gets the IP packet.
                let Some(packet) = f.data().get(ETHERNET_HEADER_LEN..).filter(|p| p.len() >= 20) else {
                    malformed += 1;
                    continue;
                };
                let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
                names[n] = sockaddr(SocketAddrV4::new(dst, 0));
                iovs[n].write(libc::iovec {
                    iov_base: packet.as_ptr().cast_mut().cast(),
                    iov_len: packet.len(),
                });
                let h = &mut msgs[n].msg_hdr;
                h.msg_name = (&mut names[n] as *mut libc::sockaddr_in).cast();
                h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_iov = iovs[n].as_mut_ptr();
                h.msg_iovlen = 1;
                n += 1;
            }
            let mut sent = 0;
            while sent < n {
                // SAFETY: headers `sent..n` point at their own names and at iovecs over
                // frames borrowed for this call; the kernel only reads them.
                let ret = unsafe {
                    libc::sendmmsg(
                        self.tx.as_raw_fd(),
                        msgs[sent..].as_mut_ptr(),
                        (n - sent) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                if ret <= 0 {
                    let e = io::Error::last_os_error();
                    if ret < 0 && e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    if ret < 0 && e.kind() != io::ErrorKind::WouldBlock {
                        // One datagram the kernel refuses (no route, too big): skip it,
                        // send the rest.
                        tracing::debug!(port = %self.label, error = %e, "underlay send refused a datagram");
                        sent += 1;
                        out.dropped += 1;
                        continue;
                    }
                    break;
                }
                for m in &msgs[sent..sent + ret as usize] {
                    out.sent_bytes += u64::from(m.msg_len) + ETHERNET_HEADER_LEN as u64;
                }
                out.sent += ret as usize;
                sent += ret as usize;
            }
            out.dropped += (n - sent) + malformed;
            done += chunk.len();
        }
        for f in frames.drain(..) {
            pool.put(f);
        }
        out
    }

    fn name(&self) -> &str {
        &self.label
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.rx.as_raw_fd())
    }

    fn handover(&self) -> Option<Handover<'_>> {
        Some(Handover::Sockets { rx: self.rx.as_fd(), tx: self.tx.as_fd() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{L4, Net, parse};

    #[test]
    fn synthetic_headers_parse_as_the_wire_had_them() {
        let mut frame = vec![0u8; SYNTHETIC_LEN + 30];
        let src = SocketAddrV4::new(Ipv4Addr::new(192, 168, 50, 2), 51000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(192, 168, 50, 1), 4789);
        write_synthetic(&mut frame[..SYNTHETIC_LEN], src, dst, 30, false);
        let m = parse(&frame).unwrap();
        let Net::Ipv4(v4) = m.net else { panic!() };
        assert_eq!((v4.src, v4.dst), (*src.ip(), *dst.ip()));
        assert_eq!(v4.l4, L4::Udp { src_port: 51000, dst_port: 4789 });
        write_synthetic(&mut frame[..SYNTHETIC_LEN], src, dst, 30, true);
        assert!(parse(&frame).is_err(), "a truncated datagram is malformed");
    }

    #[test]
    fn joined_ranges_are_copied_across_the_seam() {
        let (head, tail) = (b"abcdef".as_slice(), b"ghij".as_slice());
        let mut out = [0u8; 10];
        for (range, want) in [(0..3, "abc"), (4..8, "efgh"), (6..10, "ghij"), (0..10, "abcdefghij")] {
            let n = range.len();
            copy_joined(head, tail, range, &mut out[..n]);
            assert_eq!(&out[..n], want.as_bytes());
        }
    }

    /// The port `q` receives on (bound to port 0 in the tests).
    fn bound_port(q: &UnderlayQueue) -> u16 {
        // SAFETY: all-zero is a valid sockaddr_in.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `sa` and `len` are live and sized for the call.
        let ret = unsafe {
            libc::getsockname(q.rx.as_raw_fd(), (&mut sa as *mut libc::sockaddr_in).cast(), &mut len)
        };
        assert_eq!(ret, 0);
        u16::from_be(sa.sin_port)
    }

    /// Reads batches of at most `max` until a frame came or a second passed.
    fn receive(q: &mut UnderlayQueue, pool: &mut FramePool, max: usize) -> Vec<Frame> {
        let mut batch = Vec::new();
        for _ in 0..100 {
            q.rx_batch(pool, &mut batch, max).unwrap();
            if !batch.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        batch
    }

    /// Loopback only (root for the raw socket): a sender's UDP GSO datagram reaches a
    /// `UDP_GRO` socket whole, as a NIC's GRO train would; the queue cuts it back into
    /// its datagrams, each with its own outer headers, in order.
    #[test]
    #[ignore = "needs root: scripts/test.sh runs it"]
    fn a_gro_train_is_cut_back_into_its_datagrams() {
        let mut q = UnderlayQueue::open(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1500)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(q.receives_coalesced(), "Linux 5.0 and later take UDP_GRO");
        let port = bound_port(&q);
        q.local = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        set_int(sender.as_raw_fd(), libc::SOL_UDP, libc::UDP_SEGMENT, 1000, "UDP_SEGMENT")
            .unwrap_or_else(|(op, e)| panic!("{op}: {e}"));
        // 40 datagrams of 1000 bytes and a last one of 300: more than a frame and its
        // seam, less than a slot.
        let train: Vec<u8> = (0..40_300u32).map(|i| (i / 1000) as u8 ^ (i % 251) as u8).collect();
        sender.send_to(&train, ("127.0.0.1", port)).unwrap();
        let mut pool = FramePool::standalone(2048);
        // A read of one datagram: the whole train, or (kernel segmenting) its first.
        let batch = receive(&mut q, &mut pool, 1);
        assert_eq!(batch.len(), 41, "one frame per datagram of the train, from one read");
        for (i, frame) in batch.iter().enumerate() {
            let m = parse(frame.data()).unwrap();
            let Net::Ipv4(v4) = m.net else { panic!() };
            assert_eq!(v4.l4, L4::Udp { src_port: sender.local_addr().unwrap().port(), dst_port: port });
            let want = &train[i * 1000..((i + 1) * 1000).min(train.len())];
            assert_eq!(&frame.data()[SYNTHETIC_LEN..], want, "datagram {i}");
        }
        // Trains and lone datagrams in one read: each in its place.
        let lone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(&train[..2500], ("127.0.0.1", port)).unwrap();
        lone.send_to(b"alone", ("127.0.0.1", port)).unwrap();
        sender.send_to(&train[..1000], ("127.0.0.1", port)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut batch = Vec::new();
        q.rx_batch(&mut pool, &mut batch, 64).unwrap();
        let lens: Vec<usize> = batch.iter().map(|f| f.len() - SYNTHETIC_LEN).collect();
        assert_eq!(lens, [1000, 1000, 500, 5, 1000], "a train of 3, one datagram, a train of 1");
        assert_eq!(&batch[3].data()[SYNTHETIC_LEN..], b"alone");
        assert_eq!(&batch[2].data()[SYNTHETIC_LEN..], &train[2000..2500]);
    }

    /// Loopback only (root for the raw socket): a datagram to the queue's port comes
    /// back with its source, and what the queue sends leaves as the IP packet the
    /// pipeline wrote.
    #[test]
    #[ignore = "needs root: scripts/test.sh runs it"]
    fn receives_and_sends_on_loopback() {
        let mut q = UnderlayQueue::open(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1500)
            .unwrap_or_else(|e| panic!("{e}"));
        let port = bound_port(&q);
        q.local = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(&[8, 0, 0, 0, 0, 0, 1, 0, 0xaa], ("127.0.0.1", port)).unwrap();
        let mut pool = FramePool::standalone(2048);
        let mut batch = receive(&mut q, &mut pool, 64);
        assert_eq!(batch.len(), 1);
        let m = parse(batch[0].data()).unwrap();
        let Net::Ipv4(v4) = m.net else { panic!() };
        assert_eq!(v4.l4, L4::Udp { src_port: sender.local_addr().unwrap().port(), dst_port: port });
        assert_eq!(&batch[0].data()[SYNTHETIC_LEN..], &[8, 0, 0, 0, 0, 0, 1, 0, 0xaa]);
        // Send back to the sender through the raw socket, headers ours.
        let to = match sender.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let mut frame = batch.pop().unwrap();
        let payload = b"\x08\0\0\0\0\0\x01\0back".to_vec();
        let mut wire = vec![0u8; SYNTHETIC_LEN];
        write_synthetic(&mut wire, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 50001), to, payload.len(), false);
        wire.extend_from_slice(&payload);
        assert!(frame.set(&wire));
        let mut frames = vec![frame];
        let out = q.tx_batch(&mut frames, &mut pool);
        assert_eq!((out.sent, out.dropped), (1, 0));
        sender.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 64];
        let (len, from) = sender.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], &payload[..]);
        assert_eq!(from.port(), 50001, "the source port we wrote");
    }
}
