//! A data-plane worker: one thread's poll loop over the port queues it owns.
//!
//! Each round: apply control commands, take frames other workers handed over for our
//! queues, receive a batch from every owned queue and run it through the pipeline, then
//! flush the per-port transmit batches — to our own queue of the port if we have one,
//! else through the bounded ring to a worker that does (full ring: drop and count).
//! The tables snapshot is loaded once per round and used for all of its batches.
//!
//! Queues whose receive costs a system call (a TAP, a UDP socket) are read only when
//! epoll (through `mio`, edge-triggered) has said they became readable, and until a read
//! drains them; queues that are cheap to look at (AF_XDP rings, memory) are looked at
//! every round. One `epoll_wait` without timeout per round replaces a read of every
//! idle queue.
//!
//! After its last frame a worker keeps polling for a bounded time ([`IdlePolicy`]), so
//! the answer to what it just forwarded usually finds it awake; then it sleeps in epoll
//! on its queues' readiness fds and an eventfd [`Waker`], which another worker handing
//! it frames, or the control plane sending a command, rings. It sleeps only after a
//! round in which every queue came back empty, so no edge can be missed.

use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender};
use crossbeam_queue::ArrayQueue;

use crate::capture::CaptureDirection;
use crate::clock::Clock;
use crate::drop_reason::DropReason;
use crate::frame::{Frame, FramePool};
use crate::ids::{PortId, WorkerId};
use crate::pipeline::{Pipeline, TxBatches, coalesce_tcp};
use crate::queue::PortQueue;
use crate::tables::Tables;

/// Lets other threads wake a worker sleeping in its idle backoff.
#[derive(Default)]
pub(crate) struct Waker {
    parked: AtomicBool,
    eventfd: OnceLock<mio::Waker>,
}

impl Waker {
    /// Wakes the worker if it is asleep. Cheap when it is not: one load.
    pub(crate) fn wake(&self) {
        // Pairs with the fence in `Worker::sleep`: either we see `parked`, or the worker
        // sees what we published before calling this.
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed)
            && let Some(w) = self.eventfd.get()
        {
            // Fails only if the eventfd counter is saturated, i.e. a wake is pending.
            let _ = w.wake();
        }
    }
}

/// The epoll token of a worker's own waker; queue tokens are port ids (below it).
const WAKE_TOKEN: mio::Token = mio::Token(usize::MAX);

/// Frames on their way to another worker, tagged with their egress port; a bounded
/// ring with one producer and one consumer worker.
pub(crate) struct Handoff {
    ring: ArrayQueue<(PortId, Frame)>,
    consumer: Arc<Waker>,
}

impl Handoff {
    pub(crate) fn new(capacity: usize, consumer: Arc<Waker>) -> Handoff {
        Handoff { ring: ArrayQueue::new(capacity.max(1)), consumer }
    }
}

/// Requests from the control plane, applied at the start of a round.
pub(crate) enum Command {
    /// Starts polling `queue`; the answer says whether its fd could be watched.
    AddQueue { port: PortId, queue: Box<dyn PortQueue>, done: Sender<std::io::Result<()>> },
    /// Hands the queue back (or `None` if the worker had none for the port).
    RemoveQueue { port: PortId, done: Sender<Option<Box<dyn PortQueue>>> },
    /// Sends what other workers handed it, then hands every queue back: the worker
    /// idles, its ports' frames waiting in the kernel (a takeover). Sent once every
    /// worker has answered [`Command::Quiesce`] with reading held.
    TakeAll { done: Sender<Vec<(PortId, Box<dyn PortQueue>)>> },
    /// Answers once the round the worker was in is over: with reading held, it hands
    /// nothing more to other workers after this.
    Quiesce { done: Sender<()> },
    /// Starts polling every one of `queues` (a takeover's, all at once); the answer is
    /// the first queue whose fd could not be watched, if any.
    AddQueues {
        queues: Vec<(PortId, Box<dyn PortQueue>)>,
        done: Sender<Result<(), (PortId, std::io::Error)>>,
    },
}

/// What a worker does when a round finds no work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdlePolicy {
    /// Spin, reading every queue every round: lowest latency, one core at 100%.
    BusyPoll,
    /// Keep polling for `poll` after the last frame (VPP's adaptive mode, OVS's
    /// `pmd-sleep-max` the other way round), then sleep in epoll for up to `sleep`
    /// between rounds until work returns. Frames arriving on a queue with a readiness
    /// fd, hand-offs and commands wake the worker at once; queues without an fd are
    /// polled after each sleep. `poll` zero: sleep as soon as a round finds nothing.
    Adaptive { poll: Duration, sleep: Duration },
}

/// How long an adaptive worker keeps polling after its last frame, tuned the way the
/// kernel's haltpoll governor tunes a guest's halt polling: a sleep that a frame ended
/// within the longest window would have been cheaper polled through (waking a sleeping
/// core costs tens of microseconds in a VM), so the window doubles, up to that longest
/// window; a sleep longer than it means the traffic paused, and the window starts over.
#[derive(Clone, Copy, Debug)]
struct PollWindow {
    current: Duration,
    max: Duration,
}

impl PollWindow {
    /// Where a window starts: about one answer's round trip through a pod's stack.
    const START: Duration = Duration::from_micros(50);

    fn new(max: Duration) -> PollWindow {
        PollWindow { current: Self::START.min(max), max }
    }

    fn current(&self) -> Duration {
        self.current
    }

    fn after_sleep(&mut self, slept: Duration) {
        if self.current + slept <= self.max {
            self.current = (self.current * 2).clamp(Self::START, self.max);
        } else if slept > self.max {
            self.current = Self::START.min(self.max);
        }
    }
}

struct OwnedQueue {
    port: PortId,
    queue: Box<dyn PortQueue>,
    /// Read only when epoll said it became readable (a read costs a system call).
    on_readiness: bool,
    /// Readable since epoll said so, and not yet drained.
    ready: bool,
}

impl OwnedQueue {
    fn new(port: PortId, queue: Box<dyn PortQueue>) -> OwnedQueue {
        let on_readiness = queue.readiness_fd().is_some() && !queue.polls_cheaply();
        // It may have frames already: read it once, then wait for its edges.
        OwnedQueue { port, queue, on_readiness, ready: true }
    }
}

pub(crate) struct Worker {
    id: WorkerId,
    pipeline: Pipeline,
    pool: FramePool,
    queues: Vec<OwnedQueue>,
    /// Port id → index in `queues` of our queue of that port.
    local_queue: Vec<Option<usize>>,
    rx: Vec<Frame>,
    out: TxBatches,
    /// Where a transmit batch waits while its TCP segments are coalesced.
    coalesce_scratch: Vec<Frame>,
    /// Ring to each other worker (`None` at our own index).
    handoff_to: Vec<Option<Arc<Handoff>>>,
    handoff_from: Vec<Arc<Handoff>>,
    tables: Arc<ArcSwap<Tables>>,
    commands: Receiver<Command>,
    clock: Clock,
    batch_size: usize,
    idle: IdlePolicy,
    waker: Arc<Waker>,
    held: Arc<AtomicBool>,
    epoll: mio::Poll,
    events: mio::Events,
    born: Instant,
}

/// Everything a worker is built from; assembled by [`crate::datapath::Datapath`].
pub(crate) struct WorkerParts {
    pub id: WorkerId,
    pub pipeline: Pipeline,
    pub pool: FramePool,
    pub max_ports: usize,
    pub handoff_to: Vec<Option<Arc<Handoff>>>,
    pub handoff_from: Vec<Arc<Handoff>>,
    pub tables: Arc<ArcSwap<Tables>>,
    pub commands: Receiver<Command>,
    pub clock: Clock,
    pub batch_size: usize,
    pub idle: IdlePolicy,
    pub waker: Arc<Waker>,
    /// While set, no queue is read (commands are still applied): a takeover's new
    /// daemon takes every port before it reads any.
    pub held: Arc<AtomicBool>,
}

impl Worker {
    /// Fails only if the kernel refuses an epoll instance or an eventfd.
    pub(crate) fn new(p: WorkerParts) -> std::io::Result<Worker> {
        let epoll = mio::Poll::new()?;
        let eventfd = mio::Waker::new(epoll.registry(), WAKE_TOKEN)?;
        // A waker belongs to one worker; a second worker on it would be a wiring bug.
        if p.waker.eventfd.set(eventfd).is_err() {
            return Err(std::io::Error::other("worker waker already in use by another worker"));
        }
        Ok(Worker {
            id: p.id,
            pipeline: p.pipeline,
            pool: p.pool,
            queues: Vec::new(),
            local_queue: vec![None; p.max_ports],
            rx: Vec::with_capacity(p.batch_size),
            out: TxBatches::new(p.max_ports),
            coalesce_scratch: Vec::new(),
            handoff_to: p.handoff_to,
            handoff_from: p.handoff_from,
            tables: p.tables,
            commands: p.commands,
            clock: p.clock,
            batch_size: p.batch_size,
            idle: p.idle,
            waker: p.waker,
            held: p.held,
            epoll,
            events: mio::Events::with_capacity(64),
            born: Instant::now(),
        })
    }

    fn apply_commands(&mut self) {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::AddQueue { port, queue, done } => {
                    let _ = done.send(self.add_queue(port, queue));
                }
                Command::RemoveQueue { port, done } => {
                    let removed = self.local_queue.get_mut(port.index()).and_then(Option::take).map(|i| {
                        let q = self.queues.swap_remove(i);
                        if let Some(moved) = self.queues.get(i) {
                            self.local_queue[moved.port.index()] = Some(i);
                        }
                        q.queue
                    });
                    if let Some(fd) = removed.as_ref().and_then(|q| q.readiness_fd()) {
                        // The fd stays open (the queue is handed back), so stop watching it.
                        let _ = self.epoll.registry().deregister(&mut mio::unix::SourceFd(&fd));
                    }
                    let _ = done.send(removed);
                }
                Command::AddQueues { queues, done } => {
                    let mut first_error = None;
                    for (port, queue) in queues {
                        if let Err(e) = self.add_queue(port, queue) {
                            first_error.get_or_insert((port, e));
                        }
                    }
                    let _ = done.send(first_error.map_or(Ok(()), Err));
                }
                Command::Quiesce { done } => {
                    let _ = done.send(());
                }
                Command::TakeAll { done } => {
                    // Frames another worker read before reading stopped go out first:
                    // their port's queue is this worker's until the line below.
                    let tables = self.tables.load();
                    loop {
                        let handed = self.drain_handoffs();
                        self.flush(&tables);
                        if handed == 0 {
                            break;
                        }
                    }
                    let mut taken = Vec::with_capacity(self.queues.len());
                    for owned in self.queues.drain(..) {
                        self.local_queue[owned.port.index()] = None;
                        if let Some(fd) = owned.queue.readiness_fd() {
                            let _ = self.epoll.registry().deregister(&mut mio::unix::SourceFd(&fd));
                        }
                        taken.push((owned.port, owned.queue));
                    }
                    let _ = done.send(taken);
                }
            }
        }
    }

    fn add_queue(&mut self, port: PortId, queue: Box<dyn PortQueue>) -> std::io::Result<()> {
        let Some(slot) = self.local_queue.get_mut(port.index()) else {
            return Err(std::io::Error::other(format!("port {port} is beyond this worker's max_ports")));
        };
        if let Some(fd) = queue.readiness_fd() {
            let token = mio::Token(port.index());
            self.epoll.registry().register(&mut mio::unix::SourceFd(&fd), token, mio::Interest::READABLE)?;
        }
        match *slot {
            Some(old) => {
                let replaced = std::mem::replace(&mut self.queues[old], OwnedQueue::new(port, queue)).queue;
                if let Some(fd) = replaced.readiness_fd() {
                    let _ = self.epoll.registry().deregister(&mut mio::unix::SourceFd(&fd));
                }
            }
            None => {
                *slot = Some(self.queues.len());
                self.queues.push(OwnedQueue::new(port, queue));
            }
        }
        Ok(())
    }

    /// One round over everything the worker owns. Returns the number of frames handled.
    pub(crate) fn poll(&mut self) -> usize {
        let started = Instant::now();
        self.apply_commands();
        if self.held.load(Ordering::Relaxed) {
            return 0;
        }
        let read_all = self.idle == IdlePolicy::BusyPoll;
        if !read_all && self.queues.iter().any(|q| q.on_readiness && !q.ready) {
            // The queues that became readable since the last look, in one system call.
            self.collect_readiness(Some(Duration::ZERO));
        }
        let tables = self.tables.load();
        let now = self.clock.secs_at(started);
        let mut work = self.drain_handoffs();

        for q in &mut self.queues {
            if q.on_readiness && !q.ready && !read_all {
                continue;
            }
            // A failing queue may still have handed over frames before the error: they
            // are this port's and go through the pipeline like any others.
            let read = q.queue.rx_batch(&mut self.pool, &mut self.rx, self.batch_size);
            if read.is_err() {
                self.pipeline.stats().events.rx_errors.inc();
            }
            // Drained (a short batch) or failing: the next edge says when to read again.
            if read.is_err() || self.rx.len() < self.batch_size {
                q.ready = false;
            }
            if self.rx.is_empty() {
                continue;
            }
            work += self.rx.len();
            self.pipeline.process(&tables, q.port, now, &mut self.rx, &mut self.pool, &mut self.out);
        }

        self.flush(&tables);

        let events = &self.pipeline.stats().events;
        let elapsed = started.elapsed().as_nanos() as u64;
        events.polls.inc();
        // Wall time since the worker started, sleeps included.
        events.total_ns.set(self.born.elapsed().as_nanos() as u64);
        if work > 0 {
            events.busy_polls.inc();
            events.busy_ns.add(elapsed);
        }
        work
    }

    /// Takes up to a batch from each other worker's hand-off ring into the transmit
    /// batches; returns how many frames.
    fn drain_handoffs(&mut self) -> usize {
        let mut work = 0;
        for ring in &self.handoff_from {
            for _ in 0..self.batch_size {
                let Some((port, frame)) = ring.ring.pop() else {
                    break;
                };
                if let Err(frame) = self.out.push(port, frame) {
                    self.pipeline.stats().count_drop(frame.ingress, DropReason::TxBacklogFull);
                    self.pool.put(frame);
                }
                work += 1;
            }
        }
        self.pipeline.stats().events.handoff_received.add(work as u64);
        work
    }

    fn flush(&mut self, tables: &Tables) {
        let stats = self.pipeline.stats().clone();
        let captures = &**self.pipeline.captures();
        let id = self.id;
        let (queues, local_queue, pool, handoff_to, scratch) = (
            &mut self.queues,
            &self.local_queue,
            &mut self.pool,
            &self.handoff_to,
            &mut self.coalesce_scratch,
        );
        self.out.flush(|port, frames| {
            if let Some(i) = local_queue.get(port.index()).copied().flatten() {
                if frames.len() > 1 && tables.port(port).is_some_and(|e| e.offloads) {
                    coalesce_tcp(frames, scratch, pool, &stats);
                }
                if captures.armed() {
                    captures.offer(port, CaptureDirection::Sent, frames);
                }
                let outcome = queues[i].queue.tx_batch(frames, pool);
                let c = stats.port(port);
                c.tx_packets.add(outcome.sent as u64);
                c.tx_bytes.add(outcome.sent_bytes);
                for _ in 0..outcome.dropped {
                    stats.count_drop(port, DropReason::TxFailed);
                }
                return;
            }
            let owner = tables.port(port).and_then(|e| e.tx_workers.first()).filter(|w| *w != id);
            let Some(handoff) = owner.and_then(|w| handoff_to.get(w)).and_then(Option::as_ref) else {
                for frame in frames.drain(..) {
                    stats.count_drop(frame.ingress, DropReason::EgressPortGone);
                    pool.put(frame);
                }
                return;
            };
            for frame in frames.drain(..) {
                match handoff.ring.push((port, frame)) {
                    Ok(()) => stats.events.handoff_sent.inc(),
                    Err((_, frame)) => {
                        stats.count_drop(frame.ingress, DropReason::HandoffQueueFull);
                        pool.put(frame);
                    }
                }
            }
            handoff.consumer.wake();
        });
    }

    /// Waits up to `timeout` for epoll and marks the queues it reports readable. A
    /// failed wait (interrupted) marks every queue: reading them costs a round, missing
    /// an edge would cost a queue.
    fn collect_readiness(&mut self, timeout: Option<Duration>) {
        if self.epoll.poll(&mut self.events, timeout).is_err() {
            self.queues.iter_mut().for_each(|q| q.ready = true);
            return;
        }
        for event in &self.events {
            if let Some(i) = self.local_queue.get(event.token().0).copied().flatten() {
                self.queues[i].ready = true;
            }
        }
    }

    /// Sleeps in epoll for up to `timeout` unless hand-off frames or commands are
    /// already waiting. A queue becoming readable, another worker handing frames over,
    /// or the control plane sending a command wakes it.
    fn sleep(&mut self, timeout: Duration) {
        self.waker.parked.store(true, Ordering::Relaxed);
        // Pairs with the fence in `Waker::wake`.
        fence(Ordering::SeqCst);
        let pending = self.handoff_from.iter().any(|h| !h.ring.is_empty()) || !self.commands.is_empty();
        if !pending {
            self.collect_readiness(Some(timeout));
        }
        self.waker.parked.store(false, Ordering::Relaxed);
    }

    /// Polls until `stop` is set, idling per the policy between empty rounds.
    pub(crate) fn run(mut self, stop: &AtomicBool) {
        let mut last_work = Instant::now();
        let mut window = match self.idle {
            IdlePolicy::Adaptive { poll, .. } => PollWindow::new(poll),
            IdlePolicy::BusyPoll => PollWindow::new(Duration::ZERO),
        };
        while !stop.load(Ordering::Relaxed) {
            if self.poll() > 0 || self.queues.iter().any(|q| q.queue.busy()) {
                last_work = Instant::now();
                continue;
            }
            match self.idle {
                IdlePolicy::BusyPoll => std::hint::spin_loop(),
                IdlePolicy::Adaptive { sleep, .. } => {
                    if last_work.elapsed() < window.current() {
                        // Yield rather than spin: a pod's process sharing this core
                        // (an unpinned worker is woken where its sender runs) goes first.
                        std::thread::yield_now();
                    } else {
                        self.pipeline.stats().events.sleeps.inc();
                        let asleep = Instant::now();
                        self.sleep(sleep);
                        window.after_sleep(asleep.elapsed());
                    }
                }
            }
        }
        // Take any last commands so nobody waits on an ack forever.
        self.apply_commands();
    }

    pub(crate) fn pool(&self) -> &FramePool {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::SharedPool;
    use crate::ids::WorkerSet;
    use crate::port::memory::{MemoryPort, MemoryPortHandle};
    use crate::stats::WorkerStats;
    use crate::tables::TablesBuilder;
    use crate::tables::fdb::FdbConfig;
    use crate::tables::tests::{pod, segment0};
    use crate::testing::{FrameSpec, mac};
    use std::net::Ipv4Addr;

    /// Two workers driven by hand (no threads): pods 1 and 2 on worker 0, pod 3 on worker 1.
    fn two_workers(ring_capacity: usize) -> (Worker, Worker, Vec<MemoryPortHandle>) {
        let mut b = TablesBuilder::default();
        b.add_segment(segment0()).unwrap();
        for (id, w) in [(1u16, 0usize), (2, 0), (3, 1)] {
            let mut p = pod(id, [10, 244, 1, id as u8 + 1]);
            p.tx_workers = WorkerSet::single(w);
            b.add_port(p).unwrap();
        }
        let tables = Arc::new(ArcSwap::from_pointee(b.build().unwrap()));
        let state = crate::pipeline::SharedState::new(FdbConfig::default(), Default::default());
        let shared = SharedPool::new(2048, 1024);
        let (waker0, waker1) = (Arc::new(Waker::default()), Arc::new(Waker::default()));
        let ring01 = Arc::new(Handoff::new(ring_capacity, waker1.clone()));
        let ring10 = Arc::new(Handoff::new(ring_capacity, waker0.clone()));
        let mut handles = Vec::new();
        let make =
            |id: WorkerId, to: Vec<Option<Arc<Handoff>>>, from: Vec<Arc<Handoff>>, waker: Arc<Waker>| {
                let (tx, rx) = crossbeam_channel::unbounded();
                let w = Worker::new(WorkerParts {
                    id,
                    pipeline: Pipeline::new(&state, Arc::new(WorkerStats::new(8))),
                    pool: FramePool::new(shared.clone(), 64),
                    max_ports: 8,
                    handoff_to: to,
                    handoff_from: from,
                    tables: tables.clone(),
                    commands: rx,
                    clock: Clock::new(),
                    batch_size: 32,
                    idle: IdlePolicy::BusyPoll,
                    waker,
                    held: Arc::new(AtomicBool::new(false)),
                })
                .unwrap();
                (w, tx)
            };
        let (mut w0, c0) = make(0, vec![None, Some(ring01.clone())], vec![ring10.clone()], waker0);
        let (mut w1, c1) = make(1, vec![Some(ring10), None], vec![ring01], waker1);
        for (port, on_w1) in [(1u16, false), (2, false), (3, true)] {
            let (q, h) = MemoryPort::pair(&format!("p{port}"), 4096);
            let (done, ack) = crossbeam_channel::bounded(1);
            let (worker, cmds) = if on_w1 { (&mut w1, &c1) } else { (&mut w0, &c0) };
            cmds.send(Command::AddQueue { port: PortId(port), queue: Box::new(q), done }).unwrap();
            worker.poll();
            ack.try_recv().unwrap().unwrap();
            handles.push(h);
        }
        (w0, w1, handles)
    }

    fn frame(from: u16, to: u16, seq: u32) -> Vec<u8> {
        let ip = |p: u16| Ipv4Addr::new(10, 244, 1, p as u8 + 1);
        FrameSpec::udp(mac(u32::from(from)), mac(u32::from(to)), ip(from), ip(to), 1, 2)
            .payload(&seq.to_be_bytes())
            .build()
    }

    #[test]
    fn local_and_cross_worker_delivery() {
        let (mut w0, mut w1, h) = two_workers(64);
        h[0].inject(frame(1, 2, 1)); // same worker
        h[0].inject(frame(1, 3, 2)); // to worker 1's port
        w0.poll();
        assert_eq!(h[1].take_sent(), vec![frame(1, 2, 1)]);
        assert!(h[2].take_sent().is_empty(), "still in the ring");
        w1.poll();
        assert_eq!(h[2].take_sent(), vec![frame(1, 3, 2)]);
        assert_eq!(w0.pipeline.stats().events.handoff_sent.get(), 1);
        assert_eq!(w1.pipeline.stats().events.handoff_received.get(), 1);
        assert_eq!(w1.pipeline.stats().port(PortId(3)).tx_packets.get(), 1);
    }

    #[test]
    fn full_handoff_ring_drops_and_counts() {
        let (mut w0, mut w1, h) = two_workers(4);
        for seq in 0..10 {
            h[0].inject(frame(1, 3, seq));
        }
        w0.poll(); // worker 1 is stalled: only 4 fit in the ring
        assert_eq!(w0.pipeline.stats().drops(PortId(1), DropReason::HandoffQueueFull), 6);
        w1.poll();
        let got: Vec<Vec<u8>> = h[2].take_sent();
        assert_eq!(got, (0..4).map(|s| frame(1, 3, s)).collect::<Vec<_>>(), "the first four, in order");
    }

    /// A test queue's transmit: every frame counted as sent, its buffer back to the pool.
    fn sent_nowhere(frames: &mut Vec<Frame>, pool: &mut FramePool) -> crate::queue::TxOutcome {
        let n = frames.len();
        frames.drain(..).for_each(|f| pool.put(f));
        crate::queue::TxOutcome { sent: n, sent_bytes: 0, dropped: 0 }
    }

    /// Hands over one frame, then fails, as a TAP whose read breaks mid-batch does.
    struct FailsAfterOne {
        frame: Option<Vec<u8>>,
    }

    impl PortQueue for FailsAfterOne {
        fn rx_batch(
            &mut self,
            pool: &mut FramePool,
            batch: &mut Vec<Frame>,
            _max: usize,
        ) -> Result<usize, crate::queue::PortError> {
            if let Some(bytes) = self.frame.take() {
                batch.push(pool.copy_of(&bytes).unwrap());
            }
            Err(crate::queue::PortError {
                port: "broken".into(),
                op: "read",
                source: std::io::Error::other("gone"),
            })
        }

        fn tx_batch(&mut self, frames: &mut Vec<Frame>, pool: &mut FramePool) -> crate::queue::TxOutcome {
            sent_nowhere(frames, pool)
        }

        fn name(&self) -> &str {
            "broken"
        }
    }

    /// Frames a failing queue handed over before its error are that port's: processed
    /// as such, never left for the next queue to claim.
    #[test]
    fn frames_before_a_receive_error_keep_their_port() {
        let (mut w0, _w1, h) = two_workers(64);
        let (done, ack) = crossbeam_channel::bounded(1);
        let (tx, rx) = crossbeam_channel::unbounded();
        w0.commands = rx;
        // Port 1's queue breaks after handing over a frame that pod 1 legitimately sent.
        let queue = FailsAfterOne { frame: Some(frame(1, 2, 7)) };
        tx.send(Command::AddQueue { port: PortId(1), queue: Box::new(queue), done }).unwrap();
        w0.poll();
        ack.try_recv().unwrap().unwrap();
        // Queue order: port 2's queue comes after port 1's; it receives nothing.
        w0.poll();
        assert_eq!(h[1].take_sent(), vec![frame(1, 2, 7)], "delivered as port 1's frame");
        let stats = w0.pipeline.stats();
        assert_eq!(stats.port(PortId(1)).rx_packets.get(), 1);
        assert_eq!(stats.port(PortId(2)).rx_packets.get(), 0, "not relabelled as port 2's");
        assert!(stats.events.rx_errors.get() >= 1);
    }

    #[test]
    fn a_queue_refusing_frames_counts_them_as_tx_failed() {
        let (mut w0, _w1, h) = two_workers(64);
        // Replace port 2's queue with one whose capture holds a single frame.
        let (small, small_handle) = MemoryPort::pair("p2-small", 1);
        let (done, ack) = crossbeam_channel::bounded(1);
        let (tx, rx) = crossbeam_channel::unbounded();
        w0.commands = rx;
        tx.send(Command::AddQueue { port: PortId(2), queue: Box::new(small), done }).unwrap();
        w0.poll();
        ack.try_recv().unwrap().unwrap();
        for seq in 0..3 {
            h[0].inject(frame(1, 2, seq));
        }
        w0.poll();
        assert_eq!(small_handle.take_sent().len(), 1);
        assert_eq!(w0.pipeline.stats().drops(PortId(2), DropReason::TxFailed), 2);
        assert_eq!(w0.pipeline.stats().port(PortId(2)).tx_packets.get(), 1);
    }

    #[test]
    fn removed_queue_is_returned_and_its_frames_are_counted() {
        let (mut w0, _w1, h) = two_workers(4);
        let (done, ack) = crossbeam_channel::bounded(1);
        // Worker 0's command channel is private; drive removal through apply_commands.
        let (tx, rx) = crossbeam_channel::unbounded();
        w0.commands = rx;
        tx.send(Command::RemoveQueue { port: PortId(2), done }).unwrap();
        w0.poll();
        let q = ack.try_recv().unwrap();
        assert_eq!(q.map(|q| q.name().to_string()), Some("p2".to_string()));
        // Tables still list port 2 on worker 0, but the queue is gone.
        h[0].inject(frame(1, 2, 9));
        w0.poll();
        assert_eq!(w0.pipeline.stats().drops(PortId(1), DropReason::EgressPortGone), 1);
        // Removing again is harmless.
        let (done, ack) = crossbeam_channel::bounded(1);
        tx.send(Command::RemoveQueue { port: PortId(2), done }).unwrap();
        w0.poll();
        assert!(ack.try_recv().unwrap().is_none());
    }

    /// Frames that keep ending sleeps early grow the window until it covers their gap;
    /// a long pause starts it over; it never passes its maximum.
    #[test]
    fn the_poll_window_grows_to_cover_short_gaps_and_starts_over_after_a_pause() {
        let us = Duration::from_micros;
        let mut w = PollWindow::new(us(1000));
        assert_eq!(w.current(), us(50));
        // Requests every ~950 µs after the worker's last frame: each sleep ends early.
        for expect in [100, 200, 400, 800, 1000, 1000] {
            w.after_sleep(us(950).saturating_sub(w.current()));
            assert_eq!(w.current(), us(expect));
        }
        w.after_sleep(us(5000));
        assert_eq!(w.current(), us(50), "a pause longer than the maximum starts over");
        // A gap the maximum cannot cover leaves the window where it is.
        w.after_sleep(us(980));
        assert_eq!(w.current(), us(50));
        // Zero: sleep as soon as a round finds nothing, whatever happens.
        let mut never = PollWindow::new(Duration::ZERO);
        never.after_sleep(us(10));
        assert_eq!(never.current(), Duration::ZERO);
    }

    /// A queue on one end of a datagram socket pair: a readiness fd, and a read that
    /// costs a system call, as a TAP's does. Counts its reads.
    struct SocketQueue {
        sock: std::os::unix::net::UnixDatagram,
        reads: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl PortQueue for SocketQueue {
        fn rx_batch(
            &mut self,
            pool: &mut FramePool,
            batch: &mut Vec<Frame>,
            max: usize,
        ) -> Result<usize, crate::queue::PortError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let mut n = 0;
            let mut buf = [0u8; 2048];
            while n < max {
                let Ok(len) = self.sock.recv(&mut buf) else { break };
                batch.push(pool.copy_of(&buf[..len]).unwrap());
                n += 1;
            }
            Ok(n)
        }

        fn tx_batch(&mut self, frames: &mut Vec<Frame>, pool: &mut FramePool) -> crate::queue::TxOutcome {
            sent_nowhere(frames, pool)
        }

        fn name(&self) -> &str {
            "socket"
        }

        fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
            use std::os::fd::AsRawFd;
            Some(self.sock.as_raw_fd())
        }
    }

    /// A worker with pod 1 on a socket queue (the returned peer writes into it, the
    /// counter counts its reads) and pod 2 on a memory queue.
    fn socket_worker(
        idle: IdlePolicy,
    ) -> (Worker, std::os::unix::net::UnixDatagram, Arc<std::sync::atomic::AtomicUsize>, MemoryPortHandle)
    {
        let mut b = TablesBuilder::default();
        b.add_segment(segment0()).unwrap();
        for id in [1u16, 2] {
            b.add_port(pod(id, [10, 244, 1, id as u8 + 1])).unwrap();
        }
        let state = crate::pipeline::SharedState::new(FdbConfig::default(), Default::default());
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut w = Worker::new(WorkerParts {
            id: 0,
            pipeline: Pipeline::new(&state, Arc::new(WorkerStats::new(8))),
            pool: FramePool::new(SharedPool::new(2048, 1024), 64),
            max_ports: 8,
            handoff_to: vec![None],
            handoff_from: vec![],
            tables: Arc::new(ArcSwap::from_pointee(b.build().unwrap())),
            commands: rx,
            clock: Clock::new(),
            batch_size: 32,
            idle,
            waker: Arc::new(Waker::default()),
            held: Default::default(),
        })
        .unwrap();
        let (ours, peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (mem, handle) = MemoryPort::pair("p2", 4096);
        for (port, queue) in [
            (1u16, Box::new(SocketQueue { sock: ours, reads: reads.clone() }) as Box<dyn PortQueue>),
            (2, Box::new(mem)),
        ] {
            let (done, ack) = crossbeam_channel::bounded(1);
            tx.send(Command::AddQueue { port: PortId(port), queue, done }).unwrap();
            w.poll();
            ack.try_recv().unwrap().unwrap();
        }
        (w, peer, reads, handle)
    }

    /// An idle queue that costs a system call to read is not read round after round:
    /// once drained, it waits for epoll to say it has frames again.
    #[test]
    fn idle_queues_are_read_only_when_they_become_readable() {
        let idle = IdlePolicy::Adaptive { poll: Duration::from_millis(1), sleep: Duration::from_millis(1) };
        let (mut w, peer, reads, h) = socket_worker(idle);
        let before = reads.load(Ordering::Relaxed);
        for _ in 0..50 {
            w.poll();
        }
        assert_eq!(reads.load(Ordering::Relaxed), before, "no read while nothing arrived");
        peer.send(&frame(1, 2, 7)).unwrap();
        w.poll();
        assert_eq!(h.take_sent(), vec![frame(1, 2, 7)]);
        assert_eq!(reads.load(Ordering::Relaxed), before + 1, "one read drained it");
        // Busy polling reads every queue every round.
        let (mut busy, _peer, reads, _h) = socket_worker(IdlePolicy::BusyPoll);
        let before = reads.load(Ordering::Relaxed);
        for _ in 0..10 {
            busy.poll();
        }
        assert_eq!(reads.load(Ordering::Relaxed), before + 10);
    }

    /// A worker that polled for its idle time and went to sleep wakes on the first frame
    /// (long before its sleep would end) and forwards everything that follows.
    #[test]
    fn an_adaptive_worker_sleeps_when_idle_and_wakes_on_the_first_frame() {
        let idle = IdlePolicy::Adaptive { poll: Duration::from_micros(200), sleep: Duration::from_secs(30) };
        let (w, peer, _reads, h) = socket_worker(idle);
        let stats = w.pipeline.stats().clone();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || w.run(&stop))
        };
        let asleep = || stats.events.sleeps.get() > 0;
        assert!(vswitch_testbed::wait_until(Duration::from_secs(5), asleep), "the worker went to sleep");
        let started = Instant::now();
        for seq in 0..100 {
            peer.send(&frame(1, 2, seq)).unwrap();
        }
        let mut got = Vec::new();
        assert!(vswitch_testbed::wait_until(Duration::from_secs(5), || {
            got.extend(h.take_sent());
            got.len() == 100
        }));
        assert!(started.elapsed() < Duration::from_secs(5), "woken by the frame, not by its timeout");
        assert_eq!(got, (0..100).map(|seq| frame(1, 2, seq)).collect::<Vec<_>>(), "all, in order");
        stop.store(true, Ordering::Relaxed);
        // A last frame ends its last sleep.
        peer.send(&frame(1, 2, 999)).unwrap();
        thread.join().unwrap();
    }
}
