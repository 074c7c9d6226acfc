//! An in-memory port for tests and benches.
//!
//! Tests feed frames through a [`MemoryPortHandle`] and read back what the switch sent;
//! benches use [`MemoryPort::replay`], which repeats a fixed set of frames forever and
//! discards transmitted frames after counting them, so the measured cost is the
//! switch's alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;

use crate::frame::{Frame, FramePool};
use crate::queue::{PortError, PortQueue, TxOutcome};

enum Rx {
    Queue(Arc<ArrayQueue<Vec<u8>>>),
    Replay { frames: Vec<Vec<u8>>, next: usize },
}

enum Tx {
    Capture(Arc<ArrayQueue<Vec<u8>>>),
    Discard,
}

pub struct MemoryPort {
    name: String,
    rx: Rx,
    tx: Tx,
    sent: Arc<AtomicU64>,
}

/// The test's end of a [`MemoryPort`]: inject frames, collect what was sent.
#[derive(Clone)]
pub struct MemoryPortHandle {
    rx: Arc<ArrayQueue<Vec<u8>>>,
    tx: Arc<ArrayQueue<Vec<u8>>>,
    sent: Arc<AtomicU64>,
}

impl MemoryPort {
    /// A port whose receive side and captured transmit side each hold `capacity` frames.
    pub fn pair(name: &str, capacity: usize) -> (MemoryPort, MemoryPortHandle) {
        let rx = Arc::new(ArrayQueue::new(capacity));
        let tx = Arc::new(ArrayQueue::new(capacity));
        let sent = Arc::new(AtomicU64::new(0));
        let port = MemoryPort {
            name: name.to_string(),
            rx: Rx::Queue(rx.clone()),
            tx: Tx::Capture(tx.clone()),
            sent: sent.clone(),
        };
        (port, MemoryPortHandle { rx, tx, sent })
    }

    /// A port that receives `frames` round-robin, forever, and discards what it sends.
    /// The returned counter counts transmitted frames.
    pub fn replay(name: &str, frames: Vec<Vec<u8>>) -> (MemoryPort, Arc<AtomicU64>) {
        assert!(!frames.is_empty(), "replay needs at least one frame");
        let sent = Arc::new(AtomicU64::new(0));
        let port = MemoryPort {
            name: name.to_string(),
            rx: Rx::Replay { frames, next: 0 },
            tx: Tx::Discard,
            sent: sent.clone(),
        };
        (port, sent)
    }

    /// A port that never receives and discards what it sends (a bench sink).
    pub fn sink(name: &str) -> (MemoryPort, Arc<AtomicU64>) {
        let sent = Arc::new(AtomicU64::new(0));
        let port = MemoryPort {
            name: name.to_string(),
            rx: Rx::Queue(Arc::new(ArrayQueue::new(1))),
            tx: Tx::Discard,
            sent: sent.clone(),
        };
        (port, sent)
    }
}

impl PortQueue for MemoryPort {
    fn rx_batch(
        &mut self,
        pool: &mut FramePool,
        batch: &mut Vec<Frame>,
        max: usize,
    ) -> Result<usize, PortError> {
        let mut n = 0;
        match &mut self.rx {
            Rx::Queue(q) => {
                while n < max {
                    let Some(bytes) = q.pop() else { break };
                    // Frames larger than a buffer are cut to a length the parser rejects
                    // as oversized, as a NIC would count an over-MTU frame.
                    let mut frame = pool.get();
                    if !frame.set(&bytes) {
                        let cap = frame.capacity();
                        frame.set(&bytes[..cap]);
                    }
                    batch.push(frame);
                    n += 1;
                }
            }
            Rx::Replay { frames, next } => {
                while n < max {
                    let mut frame = pool.get();
                    frame.set(&frames[*next]);
                    *next += 1;
                    if *next == frames.len() {
                        *next = 0;
                    }
                    batch.push(frame);
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn tx_batch(&mut self, frames: &mut Vec<Frame>, pool: &mut FramePool) -> TxOutcome {
        let mut out = TxOutcome::default();
        for frame in frames.drain(..) {
            let ok = match &self.tx {
                Tx::Capture(q) => q.push(frame.data().to_vec()).is_ok(),
                Tx::Discard => true,
            };
            if ok {
                out.sent += 1;
                out.sent_bytes += frame.len() as u64;
            } else {
                out.dropped += 1;
            }
            pool.put(frame);
        }
        self.sent.fetch_add(out.sent as u64, Ordering::Relaxed);
        out
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl MemoryPortHandle {
    /// Queues a frame for the switch to receive; `false` when the queue is full.
    pub fn inject(&self, frame: Vec<u8>) -> bool {
        self.rx.push(frame).is_ok()
    }

    /// Takes every frame the switch has sent so far.
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.tx.pop()).collect()
    }

    /// Frames sent through this port so far (including those already taken).
    pub fn sent_count(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Frames injected but not yet received by the switch.
    pub fn pending_rx(&self) -> usize {
        self.rx.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inject_receive_send_collect() {
        let (mut port, handle) = MemoryPort::pair("m0", 8);
        let mut pool = FramePool::standalone(256);
        assert!(handle.inject(vec![1, 2, 3]));
        assert!(handle.inject(vec![4]));
        let mut batch = Vec::new();
        assert_eq!(port.rx_batch(&mut pool, &mut batch, 1).unwrap(), 1);
        assert_eq!(port.rx_batch(&mut pool, &mut batch, 32).unwrap(), 1);
        assert_eq!(port.rx_batch(&mut pool, &mut batch, 32).unwrap(), 0);
        assert_eq!(batch[1].data(), &[4]);
        let out = port.tx_batch(&mut batch, &mut pool);
        assert_eq!(out, TxOutcome { sent: 2, sent_bytes: 4, dropped: 0 });
        assert!(batch.is_empty());
        assert_eq!(handle.take_sent(), vec![vec![1, 2, 3], vec![4]]);
        assert_eq!(handle.sent_count(), 2);
    }

    #[test]
    fn replay_cycles_and_full_capture_drops() {
        let (mut port, sent) = MemoryPort::replay("r", vec![vec![1], vec![2]]);
        let mut pool = FramePool::standalone(256);
        let mut batch = Vec::new();
        port.rx_batch(&mut pool, &mut batch, 5).unwrap();
        let got: Vec<u8> = batch.iter().map(|f| f.data()[0]).collect();
        assert_eq!(got, vec![1, 2, 1, 2, 1]);
        port.tx_batch(&mut batch, &mut pool);
        assert_eq!(sent.load(Ordering::Relaxed), 5);

        let (mut small, _h) = MemoryPort::pair("s", 1);
        let mut two = vec![pool.copy_of(&[1]).unwrap(), pool.copy_of(&[2]).unwrap()];
        assert_eq!(small.tx_batch(&mut two, &mut pool).dropped, 1);
    }
}
