//! File descriptors from one process to another over a Unix stream socket
//! (`SCM_RIGHTS`): how a new vswitchd receives the running one's queues in a takeover.
//!
//! The descriptors travel in groups of at most [`PER_MESSAGE`], each group riding on a
//! 4-byte count of its own: the receiver reads exactly that count with the group, so
//! one group never merges with the next or with other data on the stream.

#![allow(unsafe_code)]

use std::io::{IoSlice, IoSliceMut, Read};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Descriptors per message: below the kernel's limit (`SCM_MAX_FD`, 253).
pub const PER_MESSAGE: usize = 250;

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Sends `fds` (the receiver gets its own copies; ours stay open).
pub fn send_fds(socket: &UnixStream, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    for group in fds.chunks(PER_MESSAGE) {
        let raw: Vec<RawFd> = group.iter().map(AsRawFd::as_raw_fd).collect();
        let count = (group.len() as u32).to_be_bytes();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let sent =
            sendmsg::<()>(socket.as_raw_fd(), &[IoSlice::new(&count)], &cmsg, MsgFlags::empty(), None)?;
        if sent != count.len() {
            // A 4-byte send on a blocking stream socket is whole or fails.
            return Err(invalid(format!("sent {sent} of 4 bytes with the descriptors")));
        }
    }
    Ok(())
}

/// Receives exactly `expected` descriptors sent by [`send_fds`] (close-on-exec). Fewer
/// or more than announced is an error, and every descriptor received is closed then.
pub fn recv_fds(socket: &UnixStream, expected: usize) -> std::io::Result<Vec<OwnedFd>> {
    let mut fds = Vec::with_capacity(expected);
    while fds.len() < expected {
        let mut count = [0u8; 4];
        let mut space = nix::cmsg_space!([RawFd; PER_MESSAGE]);
        let (read, raw) = {
            let mut iov = [IoSliceMut::new(&mut count)];
            let msg = loop {
                match recvmsg::<()>(
                    socket.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other?,
                }
            };
            if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
                // The kernel installed what it could (the receiver's open-file limit,
                // most likely) and nix will not walk a cut-off buffer: those close when
                // this process, whose takeover fails, exits.
                return Err(invalid(
                    "descriptors cut off in transit (MSG_CTRUNC): the open-file limit?".into(),
                ));
            }
            let mut raw = Vec::new();
            for cmsg in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(got) = cmsg {
                    raw.extend(got);
                }
            }
            (msg.bytes, raw)
        };
        // SAFETY: SCM_RIGHTS installed these descriptors in this process for us alone;
        // each is wrapped once, so each is closed once.
        let group: Vec<OwnedFd> = raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect();
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the sender closed after {} of {expected} descriptors", fds.len() + group.len()),
            ));
        }
        // The rest of a split count carries no descriptors.
        (&*socket).read_exact(&mut count[read..])?;
        let announced = u32::from_be_bytes(count) as usize;
        if announced != group.len() {
            return Err(invalid(format!("{} descriptors came with a count of {announced}", group.len())));
        }
        fds.extend(group);
        if fds.len() > expected {
            return Err(invalid(format!("more descriptors than the {expected} announced")));
        }
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsFd;

    use super::*;

    /// Three hundred descriptors (two groups) arrive as the same open files, in order.
    #[test]
    fn descriptors_cross_in_groups_and_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let pipes: Vec<(OwnedFd, OwnedFd)> = (0..150).map(|_| nix::unistd::pipe().unwrap()).collect();
        let mut ends = Vec::new();
        for (r, w) in &pipes {
            ends.push(r.as_fd());
            ends.push(w.as_fd());
        }
        let sender = std::thread::scope(|s| {
            let sent = s.spawn(|| send_fds(&a, &ends));
            let got = recv_fds(&b, 300).unwrap();
            sent.join().unwrap().unwrap();
            got
        });
        assert_eq!(sender.len(), 300);
        // The 100th pipe's write end received writes into our read end of it.
        let mut w = std::fs::File::from(sender[201].try_clone().unwrap());
        w.write_all(b"x").unwrap();
        let mut r = std::fs::File::from(pipes[100].0.try_clone().unwrap());
        let mut byte = [0u8; 1];
        r.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
    }

    #[test]
    fn a_sender_that_stops_short_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap();
        send_fds(&a, &[r.as_fd()]).unwrap();
        drop(a);
        let e = recv_fds(&b, 2).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("after 1 of 2"), "{e}");
    }
}
