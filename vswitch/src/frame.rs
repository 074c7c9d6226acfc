//! Frame buffers and the pool that recycles them.
//!
//! A [`Frame`] owns a fixed-size buffer and a window `[start, end)` into it; the bytes
//! before `start` are headroom, so an encapsulation header is prepended without copying
//! the frame. Buffers come from a per-worker [`FramePool`] and go back to it after
//! transmission, so forwarding allocates nothing once the pool is warm.
//!
//! Buffers can end up on another worker (a frame handed off for transmission there).
//! Each pool therefore keeps a bounded local stack and spills to, and refills from, one
//! [`SharedPool`] ring common to all workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;

use crate::tables::PortId;

/// Headroom reserved in front of every received frame: enough for VXLAN's 50 outer
/// bytes plus a virtio-net header, rounded to a cache line.
pub const HEADROOM: usize = 128;
/// Default buffer size: headroom plus a 1518-byte VLAN-tagged frame, with room to spare
/// for MTUs up to 1900.
pub const DEFAULT_BUF_SIZE: usize = 2048;

/// A frame in a pooled buffer.
pub struct Frame {
    buf: Box<[u8]>,
    // u32 offsets keep a Frame at 32 bytes: batches move them around a lot.
    start: u32,
    end: u32,
    /// The port the frame arrived on.
    pub ingress: PortId,
}

impl Frame {
    #[inline(always)]
    fn from_buf(buf: Box<[u8]>) -> Frame {
        debug_assert!(buf.len() <= u32::MAX as usize, "frame buffers are far below 4 GiB");
        let start = HEADROOM.min(buf.len()) as u32;
        Frame { buf, start, end: start, ingress: 0 }
    }

    #[inline]
    fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    #[inline]
    pub fn data(&self) -> &[u8] {
        let r = self.range();
        &self.buf[r]
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let r = self.range();
        &mut self.buf[r]
    }

    #[inline]
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Bytes free in front of the frame.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.start as usize
    }

    /// Largest frame this buffer can hold at the default headroom.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.buf.len() - HEADROOM.min(self.buf.len())
    }

    /// Replaces the contents with `bytes`, at the default headroom. Returns `false`
    /// (leaving the frame empty) when `bytes` does not fit.
    #[inline]
    pub fn set(&mut self, bytes: &[u8]) -> bool {
        let start = HEADROOM.min(self.buf.len());
        self.start = start as u32;
        let Some(dst) = self.buf.get_mut(start..start + bytes.len()) else {
            self.end = self.start;
            return false;
        };
        dst.copy_from_slice(bytes);
        self.end = (start + bytes.len()) as u32;
        true
    }

    /// The whole writable area after the default headroom, for a backend that reads
    /// straight into the buffer; follow with [`Frame::set_len`].
    pub fn spare_mut(&mut self) -> &mut [u8] {
        let start = HEADROOM.min(self.buf.len());
        self.start = start as u32;
        &mut self.buf[start..]
    }

    /// Sets the frame length after writing into [`Frame::spare_mut`].
    pub fn set_len(&mut self, len: usize) {
        self.end = (self.start as usize + len).min(self.buf.len()) as u32;
    }

    /// Grows the frame at the front by `n` bytes of headroom and returns them, or `None`
    /// when the headroom is too small.
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        let start = (self.start as usize).checked_sub(n)?;
        self.start = start as u32;
        Some(&mut self.buf[start..start + n])
    }

    /// Removes `n` bytes from the front (e.g. an outer header), returning them to headroom.
    pub fn strip_front(&mut self, n: usize) -> bool {
        if n > self.len() {
            return false;
        }
        self.start += n as u32;
        true
    }

    /// Shortens the frame to `len` bytes (e.g. to drop Ethernet padding).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.end = self.start + len as u32;
        }
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame").field("ingress", &self.ingress).field("len", &self.len()).finish()
    }
}

/// Buffers spilled by one worker's pool for the others to reuse.
pub struct SharedPool {
    ring: ArrayQueue<Box<[u8]>>,
    buf_size: usize,
    allocations: AtomicU64,
}

impl SharedPool {
    /// A shared ring holding up to `capacity` spare buffers of `buf_size` bytes.
    pub fn new(buf_size: usize, capacity: usize) -> Arc<SharedPool> {
        Arc::new(SharedPool {
            ring: ArrayQueue::new(capacity.max(1)),
            buf_size,
            allocations: AtomicU64::new(0),
        })
    }

    /// Buffers allocated so far by all pools drawing on this one. Flat in steady state.
    pub fn allocations(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }

    pub fn buf_size(&self) -> usize {
        self.buf_size
    }
}

/// A worker's buffer pool. Not shared: each worker owns one.
pub struct FramePool {
    free: Vec<Box<[u8]>>,
    max_local: usize,
    shared: Arc<SharedPool>,
}

impl FramePool {
    /// A pool keeping up to `max_local` spare buffers before spilling to `shared`.
    pub fn new(shared: Arc<SharedPool>, max_local: usize) -> FramePool {
        let max_local = max_local.max(2);
        FramePool { free: Vec::with_capacity(max_local), max_local, shared }
    }

    /// A standalone pool, for tests and tools.
    pub fn standalone(buf_size: usize) -> FramePool {
        FramePool::new(SharedPool::new(buf_size, 1024), 1024)
    }

    /// An empty frame. Allocates only when neither this pool nor the shared ring has a
    /// spare buffer (warm-up, or buffers still in flight elsewhere).
    #[inline(always)]
    pub fn get(&mut self) -> Frame {
        if let Some(buf) = self.free.pop() {
            return Frame::from_buf(buf);
        }
        self.refill();
        match self.free.pop() {
            Some(buf) => Frame::from_buf(buf),
            None => {
                self.shared.allocations.fetch_add(1, Ordering::Relaxed);
                Frame::from_buf(vec![0u8; self.shared.buf_size].into_boxed_slice())
            }
        }
    }

    /// A frame holding a copy of `bytes`, or `None` when they exceed the buffer size.
    pub fn copy_of(&mut self, bytes: &[u8]) -> Option<Frame> {
        let mut frame = self.get();
        if frame.set(bytes) {
            Some(frame)
        } else {
            self.put(frame);
            None
        }
    }

    /// Returns a frame's buffer to the pool.
    #[inline(always)]
    pub fn put(&mut self, frame: Frame) {
        if frame.buf.len() != self.shared.buf_size {
            return; // a foreign-sized buffer (e.g. a large-frame buffer): just free it
        }
        if self.free.len() >= self.max_local {
            self.spill();
        }
        self.free.push(frame.buf);
    }

    fn spill(&mut self) {
        let keep = self.max_local / 2;
        while self.free.len() > keep {
            let buf = self.free.pop().expect("length checked above");
            if self.shared.ring.push(buf).is_err() {
                // Shared ring full: let the buffer go; memory stays bounded.
                break;
            }
        }
        self.free.truncate(keep);
    }

    fn refill(&mut self) {
        let want = self.max_local / 2;
        while self.free.len() < want {
            match self.shared.ring.pop() {
                Some(buf) => self.free.push(buf),
                None => break,
            }
        }
    }

    pub fn shared(&self) -> &Arc<SharedPool> {
        &self.shared
    }

    /// Spare buffers held locally.
    pub fn local_len(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_prepend_and_strip() {
        let mut pool = FramePool::standalone(256);
        let mut f = pool.copy_of(&[1, 2, 3]).unwrap();
        assert_eq!((f.data(), f.headroom()), (&[1u8, 2, 3][..], HEADROOM));
        f.prepend(2).unwrap().copy_from_slice(&[9, 8]);
        assert_eq!(f.data(), &[9, 8, 1, 2, 3]);
        assert!(f.strip_front(2));
        assert_eq!(f.data(), &[1, 2, 3]);
        assert!(f.prepend(HEADROOM + 1).is_none(), "cannot prepend beyond the headroom");
        assert!(!f.strip_front(4));
        f.truncate(1);
        assert_eq!(f.data(), &[1]);
    }

    #[test]
    fn oversize_copy_is_refused() {
        let mut pool = FramePool::standalone(256);
        assert!(pool.copy_of(&[0; 256 - HEADROOM]).is_some());
        assert!(pool.copy_of(&[0; 256 - HEADROOM + 1]).is_none());
    }

    #[test]
    fn steady_state_reuses_buffers() {
        let mut pool = FramePool::standalone(256);
        for _ in 0..10_000 {
            let frames: Vec<Frame> = (0..64).map(|_| pool.get()).collect();
            for f in frames {
                pool.put(f);
            }
        }
        assert_eq!(pool.shared().allocations(), 64);
    }

    #[test]
    fn buffers_migrate_between_pools_through_the_shared_ring() {
        let shared = SharedPool::new(256, 4096);
        let mut a = FramePool::new(shared.clone(), 32);
        let mut b = FramePool::new(shared.clone(), 32);
        // Worker A receives, worker B transmits and recycles: the classic hand-off.
        for _ in 0..1000 {
            let frames: Vec<Frame> = (0..16).map(|_| a.get()).collect();
            for f in frames {
                b.put(f);
            }
        }
        assert!(shared.allocations() < 100, "allocated {}", shared.allocations());
        assert!(a.local_len() <= 32 && b.local_len() <= 32);
    }
}
