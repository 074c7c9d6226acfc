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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::frame::{Frame, FramePool};
use crate::queue::{PortError, PortQueue, TxOutcome};
use crate::wire::checksum;
use crate::wire::parse::{ETHERNET_HEADER_LEN, ETHERTYPE_IPV4, IPPROTO_UDP};

/// Outer Ethernet + IPv4 + UDP, rebuilt in front of each received datagram.
const SYNTHETIC_LEN: usize = 14 + 20 + 8;
/// Datagrams per system call.
const CHUNK: usize = 64;
/// Socket buffers: several batches of full-size datagrams per queue.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// One queue of the underlay: a receiving UDP socket and a sending raw socket.
pub struct UnderlayQueue {
    rx: OwnedFd,
    tx: OwnedFd,
    /// Largest underlay packet (the underlay MTU): sizes receive buffers.
    mtu: usize,
    /// Written as the outer destination of received frames.
    local: SocketAddrV4,
    label: String,
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
        Ok(UnderlayQueue { rx, tx, mtu: usize::from(mtu), local, label: format!("underlay {local}") })
    }

    pub fn set_label(&mut self, label: String) {
        self.label = label;
    }

    fn error(&self, op: &'static str, source: io::Error) -> PortError {
        PortError { port: self.label.clone(), op, source }
    }

    /// Receives up to `frames.len()` datagrams into `frames` (after room for the outer
    /// headers); returns (length, source, truncated) per datagram received.
    fn recv_chunk(&self, frames: &mut [Frame], got: &mut [(usize, SocketAddrV4, bool)]) -> io::Result<usize> {
        let n = frames.len().min(CHUNK);
        let mut iovs: [MaybeUninit<libc::iovec>; CHUNK] = [const { MaybeUninit::uninit() }; CHUNK];
        // SAFETY: all-zero is a valid sockaddr_in and mmsghdr (null pointers, zero lengths).
        let mut names: [libc::sockaddr_in; CHUNK] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; CHUNK] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            let spare = frames[i].spare_from_mut(SYNTHETIC_LEN);
            iovs[i].write(libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() });
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = iovs[i].as_mut_ptr();
            h.msg_iovlen = 1;
        }
        // SAFETY: every header points at its own name and one iovec over the spare area
        // of a frame this call holds mutably; all outlive the call.
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
            let truncated = msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            got[i] = (msgs[i].msg_len as usize, src, truncated);
        }
        Ok(ret)
    }
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
        let mut got = [(0usize, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), false); CHUNK];
        while total < max {
            let want = (max - total).min(CHUNK);
            let start = batch.len();
            batch.extend((0..want).map(|_| pool.get_fitting(SYNTHETIC_LEN + self.mtu)));
            let received = match self.recv_chunk(&mut batch[start..], &mut got) {
                Ok(n) => n,
                Err(e) => {
                    for f in batch.drain(start..) {
                        pool.put(f);
                    }
                    // Only an empty socket may end a batch short (see the TAP queue).
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => continue,
                        _ => {}
                    }
                    return Err(self.error("recvmmsg", e));
                }
            };
            for f in batch.drain(start + received..) {
                pool.put(f);
            }
            for (frame, (len, src, truncated)) in batch[start..].iter_mut().zip(&got[..received]) {
                let len = (*len).min(frame.capacity() - SYNTHETIC_LEN);
                let data = frame.spare_mut();
                write_synthetic(&mut data[..SYNTHETIC_LEN], *src, self.local, len, *truncated);
                frame.set_len(SYNTHETIC_LEN + len);
            }
            total += received;
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

    /// Loopback only (root for the raw socket): a datagram to the queue's port comes
    /// back with its source, and what the queue sends leaves as the IP packet the
    /// pipeline wrote.
    #[test]
    #[ignore = "needs root: scripts/test.sh runs it"]
    fn receives_and_sends_on_loopback() {
        let mut q = UnderlayQueue::open(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 1500)
            .unwrap_or_else(|e| panic!("{e}"));
        // Port 0 bound: find it.
        // SAFETY: all-zero is a valid sockaddr_in.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `sa` and `len` are live and sized for the call.
        let ret = unsafe {
            libc::getsockname(q.rx.as_raw_fd(), (&mut sa as *mut libc::sockaddr_in).cast(), &mut len)
        };
        assert_eq!(ret, 0);
        let port = u16::from_be(sa.sin_port);
        q.local = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.send_to(&[8, 0, 0, 0, 0, 0, 1, 0, 0xaa], ("127.0.0.1", port)).unwrap();
        let mut pool = FramePool::standalone(2048);
        let mut batch = Vec::new();
        let mut n = 0;
        for _ in 0..100 {
            n = q.rx_batch(&mut pool, &mut batch, 64).unwrap();
            if n > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(n, 1);
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
