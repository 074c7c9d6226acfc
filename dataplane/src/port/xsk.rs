//! AF_XDP sockets as the kernel defines them (`linux/if_xdp.h`): the UMEM, the four
//! rings and their protocol, written here rather than taken from libxdp so that a
//! socket can change hands between processes.
//!
//! The UMEM lives in a memfd, mapped shared: the next daemon of a takeover receives the
//! socket and the memfd, maps both, and reads the very frames the kernel filled for the
//! previous one (an anonymous mapping, as libxdp makes, dies with its process; the
//! kernel keeps its pages pinned for the socket but nobody can reach them again).
//! The rings' indices live in memory shared with the kernel, so a process that maps
//! them again starts where the last one stopped; which frames userspace held (free for
//! sending, waiting for the fill ring) is not in the rings and is handed over beside
//! them ([`crate::queue::Handover::Xsk`]).
//!
//! Ring protocol (as in the kernel's `xsk_queue.h`): each ring has a producer and a
//! consumer index, free-running u32s; one side writes entries then publishes its index
//! with release ordering, the other reads the index with acquire ordering then the
//! entries. This side keeps its own index and a cached copy of the other's, and reads
//! the other's only when the cached copy says there is not enough.

#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// A receive or transmit descriptor: a frame's UMEM address, length and options.
pub type Desc = libc::xdp_desc;

/// The sizes of a socket and its UMEM. Both sides of a takeover must agree on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub frames: u32,
    pub frame_size: u32,
    /// Entries of each of the four rings (a power of two).
    pub ring: u32,
}

impl Geometry {
    fn umem_len(&self) -> usize {
        self.frames as usize * self.frame_size as usize
    }

    /// The start of the frame that `addr` points into.
    pub fn frame_of(&self, addr: u64) -> u64 {
        addr & !(u64::from(self.frame_size) - 1)
    }
}

/// A shared mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a mapping is plain memory owned by this value; moving the owner to another
// thread moves nothing the kernel or another thread holds a pointer to in Rust terms.
unsafe impl Send for Mapping {}

impl Mapping {
    /// With `populate`, the pages are mapped now rather than at first touch.
    fn new(fd: BorrowedFd<'_>, len: usize, offset: u64, populate: bool) -> io::Result<Mapping> {
        let populate = if populate { libc::MAP_POPULATE } else { 0 };
        // SAFETY: a new shared mapping of `len` bytes of `fd` at `offset`, placed by the
        // kernel (no address given), so it overlaps nothing of ours; the kernel checks
        // that the object has that much at that offset.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | populate,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new` with this length and is unmapped once;
        // nothing borrowed from it outlives `self` (rings and frames borrow their owner).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The frames, in a memfd mapped shared.
pub struct Umem {
    memfd: OwnedFd,
    area: Mapping,
    geometry: Geometry,
}

impl Umem {
    fn create(geometry: Geometry) -> io::Result<Umem> {
        // SAFETY: the name is NUL-terminated; the result is checked.
        let fd = unsafe { libc::memfd_create(c"vswitch-umem".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: resizing our own memfd; the result is checked.
        if unsafe { libc::ftruncate(memfd.as_raw_fd(), geometry.umem_len() as libc::off_t) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let area = Mapping::new(memfd.as_fd(), geometry.umem_len(), 0, true)?;
        Ok(Umem { memfd, area, geometry })
    }

    fn adopt(memfd: OwnedFd, geometry: Geometry) -> io::Result<Umem> {
        let stat = nix::sys::stat::fstat(&memfd).map_err(io::Error::from)?;
        if stat.st_size as usize != geometry.umem_len() {
            return Err(io::Error::other(format!(
                "the UMEM is {} bytes, not the {} of {} frames of {}",
                stat.st_size,
                geometry.umem_len(),
                geometry.frames,
                geometry.frame_size
            )));
        }
        // Not populated: adopting happens in a takeover's pause, and the pages (in
        // memory already) are mapped at first touch instead.
        let area = Mapping::new(memfd.as_fd(), geometry.umem_len(), 0, false)?;
        Ok(Umem { memfd, area, geometry })
    }

    /// The bytes at `addr` (a UMEM offset), `len` long, if they lie inside one frame.
    ///
    /// # Safety
    /// The frame must be this process's (not on the fill or transmit ring, nor
    /// between them in the kernel): the kernel writes into frames it owns.
    pub unsafe fn frame(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let start = self.checked(addr, len)?;
        // SAFETY: `start..start + len` lies inside the mapping (checked); the caller
        // owns the frame, so nothing writes it while the borrow of `self` lasts.
        Some(unsafe { std::slice::from_raw_parts(self.area.ptr.as_ptr().add(start), len) })
    }

    /// The bytes at `addr`, `len` long, for writing, if they lie inside one frame.
    ///
    /// # Safety
    /// As for [`Umem::frame`].
    pub unsafe fn frame_mut(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let start = self.checked(addr, len)?;
        // SAFETY: as in `frame`, and `&mut self` excludes every other borrow.
        Some(unsafe { std::slice::from_raw_parts_mut(self.area.ptr.as_ptr().add(start), len) })
    }

    fn checked(&self, addr: u64, len: usize) -> Option<usize> {
        let frame = self.geometry.frame_of(addr);
        let end = addr.checked_add(len as u64)?;
        (end <= frame + u64::from(self.geometry.frame_size) && end <= self.area.len as u64)
            .then_some(addr as usize)
    }
}

/// One of a socket's rings, mapped from the socket. `T` is the entry: a UMEM address
/// (fill, completion) or a [`Desc`] (receive, transmit).
pub struct Ring<T> {
    /// Keeps the ring mapped while the pointers below are used.
    _map: Mapping,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    entries: NonNull<T>,
    mask: u32,
    /// This side's index (the producer's of a ring we fill, the consumer's of one we
    /// drain); only we write it.
    own: u32,
    /// The other side's index as last read.
    seen: u32,
    /// Whether this side produces.
    producing: bool,
    _entries: PhantomData<T>,
}

// SAFETY: the ring is memory shared with the kernel only; the indices are atomics and
// the entries are plain data. One owner at a time uses it (methods take `&mut self`).
unsafe impl<T: Send> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    fn map(
        fd: BorrowedFd<'_>,
        off: &libc::xdp_ring_offset,
        size: u32,
        pgoff: u64,
        producing: bool,
    ) -> io::Result<Self> {
        if !size.is_power_of_two() {
            return Err(io::Error::other(format!("ring size {size} is not a power of two")));
        }
        let len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        let map = Mapping::new(fd, len, pgoff, true)?;
        let at = |offset: u64| -> io::Result<NonNull<u8>> {
            if offset as usize >= len {
                return Err(io::Error::other("ring offsets outside the ring"));
            }
            // SAFETY: `offset` is inside the mapping (checked above).
            Ok(unsafe { map.ptr.add(offset as usize) })
        };
        let producer = at(off.producer)?.cast::<AtomicU32>();
        let consumer = at(off.consumer)?.cast::<AtomicU32>();
        let flags = at(off.flags)?.cast::<AtomicU32>();
        let entries = at(off.desc)?.cast::<T>();
        // SAFETY: the kernel places the indices u32-aligned in its ring header.
        let (prod_now, cons_now) =
            unsafe { (producer.as_ref().load(Ordering::Acquire), consumer.as_ref().load(Ordering::Acquire)) };
        let (own, seen) = if producing { (prod_now, cons_now) } else { (cons_now, prod_now) };
        Ok(Ring {
            _map: map,
            producer,
            consumer,
            flags,
            entries,
            mask: size - 1,
            own,
            seen,
            producing,
            _entries: PhantomData,
        })
    }

    fn index(&self, which: NonNull<AtomicU32>) -> &AtomicU32 {
        // SAFETY: points into `self.map`, alive as long as `self`; an aligned u32.
        unsafe { which.as_ref() }
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: masked by size - 1, so inside the entries of the mapping.
        unsafe { self.entries.as_ptr().add((index & self.mask) as usize) }
    }

    /// Puts as many of `items` on the ring as fit; returns how many.
    pub fn produce(&mut self, items: &[T]) -> usize {
        debug_assert!(self.producing);
        let size = self.mask + 1;
        let mut free = size - self.own.wrapping_sub(self.seen);
        if (free as usize) < items.len() {
            self.seen = self.index(self.consumer).load(Ordering::Acquire);
            free = size - self.own.wrapping_sub(self.seen);
        }
        let n = items.len().min(free as usize);
        for (i, item) in items[..n].iter().enumerate() {
            // SAFETY: the slot is free (between the consumer's index and ours plus
            // `free`), so the kernel does not read it until we publish.
            unsafe { self.slot(self.own.wrapping_add(i as u32)).write_volatile(*item) };
        }
        if n > 0 {
            self.own = self.own.wrapping_add(n as u32);
            self.index(self.producer).store(self.own, Ordering::Release);
        }
        n
    }

    /// Takes up to `out.len()` entries off the ring into `out`; returns how many.
    pub fn consume(&mut self, out: &mut [T]) -> usize {
        debug_assert!(!self.producing);
        let mut ready = self.seen.wrapping_sub(self.own);
        if (ready as usize) < out.len() {
            self.seen = self.index(self.producer).load(Ordering::Acquire);
            ready = self.seen.wrapping_sub(self.own);
        }
        let n = out.len().min(ready as usize);
        for (i, slot) in out[..n].iter_mut().enumerate() {
            // SAFETY: the kernel published the entry (acquire above) and does not
            // rewrite it until we release it below.
            *slot = unsafe { self.slot(self.own.wrapping_add(i as u32)).read_volatile() };
        }
        if n > 0 {
            self.own = self.own.wrapping_add(n as u32);
            self.index(self.consumer).store(self.own, Ordering::Release);
        }
        n
    }

    /// Whether the kernel asked to be woken (`XDP_USE_NEED_WAKEUP`).
    pub fn needs_wakeup(&self) -> bool {
        self.index(self.flags).load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// Entries on the ring now (published by either side and not yet consumed).
    pub fn len(&self) -> u32 {
        let prod = self.index(self.producer).load(Ordering::Acquire);
        let cons = self.index(self.consumer).load(Ordering::Acquire);
        prod.wrapping_sub(cons)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An AF_XDP socket with its UMEM and rings.
pub struct Xsk {
    pub umem: Umem,
    pub fill: Ring<u64>,
    pub completion: Ring<u64>,
    pub rx: Ring<Desc>,
    pub tx: Ring<Desc>,
    /// Last field: closed after the rings are unmapped.
    socket: OwnedFd,
}

fn setsockopt<T>(fd: RawFd, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live `T` of the size passed.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Reads a socket option into `value` (its initial contents only give the size).
fn getsockopt<T: Copy>(fd: RawFd, level: libc::c_int, name: libc::c_int, mut value: T) -> io::Result<T> {
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a writable `T` and `len` its size; the kernel writes at most that.
    let ret = unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut T).cast(), &mut len) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<T>() {
        return Err(io::Error::other(format!(
            "socket option {name}: {len} bytes, expected {}",
            std::mem::size_of::<T>()
        )));
    }
    Ok(value)
}

/// Which part of the socket the kernel maps at a page offset.
const PGOFF_RX: u64 = libc::XDP_PGOFF_RX_RING as u64;
const PGOFF_TX: u64 = libc::XDP_PGOFF_TX_RING as u64;
const PGOFF_FILL: u64 = libc::XDP_UMEM_PGOFF_FILL_RING;
const PGOFF_COMPLETION: u64 = libc::XDP_UMEM_PGOFF_COMPLETION_RING;

impl Xsk {
    /// A socket bound to `queue` of the interface `ifindex` (in the calling thread's
    /// namespace), in copy mode, with a fresh UMEM. All frames are the caller's.
    pub fn bind(ifindex: u32, queue: u32, geometry: Geometry) -> io::Result<Xsk> {
        let umem = Umem::create(geometry)?;
        // SAFETY: plain socket creation; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let reg = libc::xdp_umem_reg {
            addr: umem.area.ptr.as_ptr() as u64,
            len: geometry.umem_len() as u64,
            chunk_size: geometry.frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(fd, libc::XDP_UMEM_REG, &reg)?;
        for name in
            [libc::XDP_UMEM_FILL_RING, libc::XDP_UMEM_COMPLETION_RING, libc::XDP_RX_RING, libc::XDP_TX_RING]
        {
            setsockopt(fd, name, &geometry.ring)?;
        }
        let xsk = Self::map_rings(socket, umem)?;
        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_COPY | libc::XDP_USE_NEED_WAKEUP,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `addr` is a sockaddr_xdp of the size passed.
        let ret = unsafe {
            libc::bind(
                xsk.socket.as_raw_fd(),
                (&addr as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(xsk)
    }

    /// A bound socket and its UMEM as another process made them (`geometry` is
    /// theirs): the rings are mapped again, their indices where that process left them.
    pub fn adopt(socket: OwnedFd, memfd: OwnedFd, geometry: Geometry) -> io::Result<Xsk> {
        let domain: libc::c_int = getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN, 0)?;
        if domain != libc::AF_XDP {
            return Err(io::Error::other(format!("not an AF_XDP socket (domain {domain})")));
        }
        let umem = Umem::adopt(memfd, geometry)?;
        Self::map_rings(socket, umem)
    }

    fn map_rings(socket: OwnedFd, umem: Umem) -> io::Result<Xsk> {
        // SAFETY: xdp_mmap_offsets is plain integers: all-zero is a valid value.
        let zero: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let offsets = getsockopt(socket.as_raw_fd(), libc::SOL_XDP, libc::XDP_MMAP_OFFSETS, zero)?;
        let (fd, size) = (socket.as_fd(), umem.geometry.ring);
        Ok(Xsk {
            fill: Ring::map(fd, &offsets.fr, size, PGOFF_FILL, true)?,
            completion: Ring::map(fd, &offsets.cr, size, PGOFF_COMPLETION, false)?,
            rx: Ring::map(fd, &offsets.rx, size, PGOFF_RX, false)?,
            tx: Ring::map(fd, &offsets.tx, size, PGOFF_TX, true)?,
            umem,
            socket,
        })
    }

    pub fn geometry(&self) -> Geometry {
        self.umem.geometry
    }

    pub fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.umem.memfd.as_fd()
    }

    /// Makes the kernel send what is on the transmit ring (copy mode sends only inside
    /// this call, at most 32 frames per call). EAGAIN (more left) and ENOBUFS are
    /// expected: the caller kicks again later.
    pub fn kick_tx(&self) {
        // SAFETY: a zero-length send with no buffer and no address, on our socket.
        unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_reachable_only_inside_itself() {
        let g = Geometry { frames: 4, frame_size: 2048, ring: 4 };
        let mut umem = Umem::create(g).unwrap();
        // SAFETY: no socket: every frame is ours.
        unsafe {
            umem.frame_mut(2048 + 256, 100).unwrap().fill(7);
            assert_eq!(umem.frame(2048 + 256, 100).unwrap()[99], 7);
            assert!(umem.frame(2048 + 2000, 100).is_none(), "crosses into the next frame");
            assert!(umem.frame(3 * 2048, 2048).is_some());
            assert!(umem.frame(4 * 2048, 1).is_none(), "past the end");
            assert!(umem.frame(u64::MAX - 3, 8).is_none(), "overflow");
        }
    }

    #[test]
    fn another_mapping_of_the_memfd_sees_the_same_frames() {
        let g = Geometry { frames: 2, frame_size: 2048, ring: 2 };
        let mut first = Umem::create(g).unwrap();
        let second = Umem::adopt(first.memfd.try_clone().unwrap(), g).unwrap();
        // SAFETY: no socket: every frame is ours.
        unsafe {
            first.frame_mut(2048, 3).unwrap().copy_from_slice(b"abc");
            assert_eq!(second.frame(2048, 3).unwrap(), b"abc");
        }
        let bigger = Geometry { frames: 3, ..g };
        assert!(Umem::adopt(first.memfd.try_clone().unwrap(), bigger).is_err());
    }

    #[test]
    fn a_socket_that_is_not_af_xdp_is_refused() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let g = Geometry { frames: 2, frame_size: 2048, ring: 2 };
        let umem = Umem::create(g).unwrap();
        let err = Xsk::adopt(OwnedFd::from(a), umem.memfd, g).err().expect("refused");
        assert!(err.to_string().contains("not an AF_XDP socket"), "{err}");
    }
}
