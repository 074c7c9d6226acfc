//! Connection tracking for Service NAT: one entry per translated flow, found from either
//! direction, shared by all workers (a flow's two directions may arrive on ports served
//! by different workers).
//!
//! An entry holds the flow's two tuples as they appear on the wire — `orig` (client →
//! Service VIP, as the client sends it) and `reply` (endpoint → client or SNAT address,
//! as the endpoint sends it) — so the translation of a packet in either direction is
//! "rewrite to the other tuple, reversed". Both tuples key the same entry in one
//! lock-free `papaya` map; lookups take one epoch guard per batch.
//!
//! The table is bounded: a counter reserves room before an entry is inserted, and a new
//! flow finding it full is dropped (`conntrack_full`) while established flows carry on.
//! Entries expire by state ([`Timeouts`]): housekeeping sweeps about once a second, off
//! the packet path. TCP state is tracked as far as expiry needs: a SYN, an answer, FIN
//! and RST.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use papaya::{Guard, LocalGuard};

use crate::ids::PortId;
use crate::wire::MacAddr;
use crate::wire::parse::{IPPROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// One direction of a flow as seen on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub proto: u8,
    pub src: Ipv4Addr,
    pub src_port: u16,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
}

impl Tuple {
    pub fn reversed(self) -> Tuple {
        Tuple {
            proto: self.proto,
            src: self.dst,
            src_port: self.dst_port,
            dst: self.src,
            dst_port: self.src_port,
        }
    }

    #[inline]
    fn key(&self) -> u128 {
        (u128::from(u32::from(self.src)) << 72)
            | (u128::from(u32::from(self.dst)) << 40)
            | (u128::from(self.src_port) << 24)
            | (u128::from(self.dst_port) << 8)
            | u128::from(self.proto)
    }
}

/// Where the client of a flow that came in from outside the pod network (NodePort) is:
/// its port and MAC, and the MAC it addressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReturnPath {
    pub port: PortId,
    pub client_mac: MacAddr,
    pub local_mac: MacAddr,
}

/// Expiry, in seconds of idleness, by state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A SYN not yet answered.
    pub tcp_syn: u32,
    /// An established TCP connection with no packets.
    pub tcp_established: u32,
    /// After a FIN.
    pub tcp_closing: u32,
    /// After an RST.
    pub tcp_reset: u32,
    /// UDP (and other) flows never answered.
    pub udp: u32,
    /// UDP flows answered at least once (streams, DNS retried on the same port).
    pub udp_replied: u32,
}

impl Default for Timeouts {
    /// Chosen for a bounded table: six hours idle for an established connection (TCP
    /// keepalives, at their default two hours, keep live idle ones alive; the kernel's
    /// five days would let dead ones fill the table), 30 s after a FIN, 10 s after an
    /// RST, a minute for an unanswered SYN; UDP 30 s, or 120 s once answered.
    fn default() -> Timeouts {
        Timeouts {
            tcp_syn: 60,
            tcp_established: 6 * 3600,
            tcp_closing: 30,
            tcp_reset: 10,
            udp: 30,
            udp_replied: 120,
        }
    }
}

/// TCP progress of an entry, as far as expiry needs.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// A SYN seen, nothing back yet (or any non-TCP flow not yet answered).
    New = 0,
    /// Answered; for TCP, the handshake completed or the flow was picked up mid-way.
    Established = 1,
    /// A FIN seen.
    Closing = 2,
    /// An RST seen.
    Reset = 3,
}

impl State {
    /// The state numbered `raw` (as `State as u8` gives it), if there is one.
    pub fn from_u8(raw: u8) -> Option<State> {
        [State::New, State::Established, State::Closing, State::Reset].into_iter().find(|s| *s as u8 == raw)
    }

    fn from_raw(raw: u8) -> State {
        match raw {
            0 => State::New,
            1 => State::Established,
            2 => State::Closing,
            _ => State::Reset,
        }
    }
}

/// A tracked flow.
#[derive(Debug)]
pub struct Conn {
    pub orig: Tuple,
    pub reply: Tuple,
    /// The Service port the flow was made for (affinity, diagnostics).
    pub service: u32,
    pub return_path: Option<ReturnPath>,
    state: AtomicU8,
    replied: AtomicU8,
    last_seen: AtomicU32,
}

/// A flow as it is carried over a restart: its tuples, Service, return path and TCP
/// progress, and how long it had been idle (a time, not a timestamp: the next
/// process's clock is another).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub orig: Tuple,
    pub reply: Tuple,
    pub service: u32,
    pub return_path: Option<ReturnPath>,
    pub state: State,
    pub replied: bool,
    pub idle_secs: u32,
}

/// Which of a flow's tuples a packet matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Orig,
    Reply,
}

impl Conn {
    /// The flow as carried over a restart, at `now`.
    pub fn record(&self, now: u32) -> FlowRecord {
        FlowRecord {
            orig: self.orig,
            reply: self.reply,
            service: self.service,
            return_path: self.return_path,
            state: self.state(),
            replied: self.replied(),
            idle_secs: now.saturating_sub(self.last_seen()),
        }
    }

    pub fn state(&self) -> State {
        State::from_raw(self.state.load(Ordering::Relaxed))
    }

    pub fn replied(&self) -> bool {
        self.replied.load(Ordering::Relaxed) != 0
    }

    pub fn last_seen(&self) -> u32 {
        self.last_seen.load(Ordering::Relaxed)
    }

    /// Records a packet: its direction, TCP flags (0 for other protocols), time.
    #[inline]
    pub fn observe(&self, dir: Direction, tcp_flags: u8, now: u32) {
        if self.last_seen.load(Ordering::Relaxed) != now {
            self.last_seen.store(now, Ordering::Relaxed);
        }
        if dir == Direction::Reply && !self.replied() {
            self.replied.store(1, Ordering::Relaxed);
        }
        let is_tcp = self.orig.proto == IPPROTO_TCP;
        let replied = self.replied();
        let next = |current: State| {
            if is_tcp && tcp_flags & TCP_RST != 0 {
                State::Reset
            } else if is_tcp && tcp_flags & TCP_FIN != 0 {
                State::Closing
            } else {
                match current {
                    State::New if dir == Direction::Reply => State::Established,
                    State::New
                        if is_tcp && tcp_flags & TCP_ACK != 0 && tcp_flags & TCP_SYN == 0 && replied =>
                    {
                        State::Established
                    }
                    s => s,
                }
            }
        };
        // Both directions may be handled by different workers at once: a transition is
        // made from the state it was computed from, or computed again.
        let current = self.state();
        if next(current) != current {
            let _ = self.state.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |raw| {
                let cur = State::from_raw(raw);
                let n = next(cur);
                (n != cur).then_some(n as u8)
            });
        }
    }

    /// A pure SYN of the client on a flow that was closed or reset: the client reuses its
    /// port for a new connection, which must get a fresh endpoint choice (the kernel
    /// kills such an entry and starts over too).
    pub fn is_reopened_by(&self, dir: Direction, tcp_flags: u8) -> bool {
        self.orig.proto == IPPROTO_TCP
            && dir == Direction::Orig
            && tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
            && matches!(self.state(), State::Closing | State::Reset)
    }

    /// Whether the entry has been idle longer than its state allows at `now`.
    pub fn expired(&self, now: u32, t: &Timeouts) -> bool {
        let limit = match (self.orig.proto == IPPROTO_TCP, self.state()) {
            (true, State::New) => t.tcp_syn,
            (true, State::Established) => t.tcp_established,
            (true, State::Closing) => t.tcp_closing,
            (true, State::Reset) => t.tcp_reset,
            (false, _) if self.replied() => t.udp_replied,
            (false, _) => t.udp,
        };
        now.saturating_sub(self.last_seen()) > limit
    }
}

/// Limits of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackConfig {
    pub max_entries: u32,
    pub timeouts: Timeouts,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig { max_entries: 262_144, timeouts: Timeouts::default() }
    }
}

/// Why a flow could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    /// The table holds `max_entries` flows.
    Full,
    /// One of the tuples already belongs to another flow (e.g. an SNAT port in use).
    Clash,
}

pub struct Conntrack {
    map: papaya::HashMap<u128, Arc<Conn>, foldhash::fast::RandomState>,
    entries: AtomicU32,
    config: ConntrackConfig,
}

impl Conntrack {
    pub fn new(config: ConntrackConfig) -> Conntrack {
        Conntrack {
            map: papaya::HashMap::builder().hasher(foldhash::fast::RandomState::default()).build(),
            entries: AtomicU32::new(0),
            config,
        }
    }

    pub fn config(&self) -> ConntrackConfig {
        self.config
    }

    /// Flows tracked now.
    pub fn len(&self) -> u32 {
        self.entries.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A handle for one batch (one epoch guard).
    pub fn batch(&self) -> ConntrackBatch<'_> {
        ConntrackBatch { ct: self, guard: self.map.guard() }
    }

    /// Forgets flows idle past their timeout. Returns how many went.
    pub fn expire(&self, now: u32) -> usize {
        self.remove_where(|c| c.expired(now, &self.config.timeouts))
    }

    /// Forgets flows matching `pred` (both keys of each). `pred` is asked once per flow:
    /// a worker refreshing a flow while it is asked cannot leave one of its keys behind.
    pub fn remove_where(&self, pred: impl Fn(&Conn) -> bool) -> usize {
        let guard = self.map.guard();
        let doomed: Vec<Arc<Conn>> = self
            .map
            .iter(&guard)
            .filter(|(k, c)| **k == c.orig.key() && pred(c))
            .map(|(_, c)| c.clone())
            .collect();
        for c in &doomed {
            for key in [c.orig.key(), c.reply.key()] {
                let _ = self.map.remove_if(&key, |_, v| Arc::ptr_eq(v, c), &guard);
            }
        }
        self.entries.fetch_sub(doomed.len() as u32, Ordering::Relaxed);
        doomed.len()
    }

    /// Every flow as carried over a restart (see [`ConntrackBatch::restore`]).
    pub fn records(&self, now: u32) -> Vec<FlowRecord> {
        self.records_since(now, 0)
    }

    /// The flows seen at `since` or later (datapath seconds), as records at `now`: what
    /// changed since an earlier copy of the table (a new flow, a state change, a
    /// packet) — the rest of that copy is still true but for its idle time, which grew.
    pub fn records_since(&self, now: u32, since: u32) -> Vec<FlowRecord> {
        let guard = self.map.guard();
        self.map
            .iter(&guard)
            .filter(|(k, c)| **k == c.orig.key() && c.last_seen() >= since)
            .map(|(_, c)| c.record(now))
            .collect()
    }

    /// Every flow, for the API.
    pub fn snapshot(&self) -> Vec<Arc<Conn>> {
        let guard = self.map.guard();
        self.map.iter(&guard).filter(|(k, c)| **k == c.orig.key()).map(|(_, c)| c.clone()).collect()
    }
}

/// Lookups and inserts for one batch.
pub struct ConntrackBatch<'a> {
    ct: &'a Conntrack,
    guard: LocalGuard<'a>,
}

impl<'a> ConntrackBatch<'a> {
    /// The flow `t` belongs to, and in which direction.
    #[inline]
    pub fn lookup(&self, t: &Tuple) -> Option<(&Conn, Direction)> {
        let c = self.ct.map.get(&t.key(), &self.guard)?;
        let dir = if c.orig == *t { Direction::Orig } else { Direction::Reply };
        Some((c, dir))
    }

    /// Whether a tuple is taken (by either direction of any flow).
    #[inline]
    pub fn contains(&self, t: &Tuple) -> bool {
        self.ct.map.contains_key(&t.key(), &self.guard)
    }

    /// Adds a flow seen first as `orig`, translated to `reply` on the way back.
    pub fn insert(
        &self,
        orig: Tuple,
        reply: Tuple,
        service: u32,
        return_path: Option<ReturnPath>,
        now: u32,
    ) -> Result<&Conn, InsertError> {
        self.insert_conn(Conn {
            orig,
            reply,
            service,
            return_path,
            state: AtomicU8::new(State::New as u8),
            replied: AtomicU8::new(0),
            last_seen: AtomicU32::new(now),
        })
    }

    fn insert_conn(&self, conn: Conn) -> Result<&Conn, InsertError> {
        let entries = &self.ct.entries;
        if entries.fetch_add(1, Ordering::Relaxed) >= self.ct.config.max_entries {
            entries.fetch_sub(1, Ordering::Relaxed);
            return Err(InsertError::Full);
        }
        let (orig, reply) = (conn.orig, conn.reply);
        let conn = Arc::new(conn);
        // The reply key first: the flow is reachable only once both exist, and no
        // reply can come before the first translated packet leaves.
        if self.ct.map.try_insert(reply.key(), conn.clone(), &self.guard).is_err() {
            entries.fetch_sub(1, Ordering::Relaxed);
            return Err(InsertError::Clash);
        }
        match self.ct.map.try_insert(orig.key(), conn, &self.guard) {
            // The entry as inserted: a sweep may remove it at once (a flow to an endpoint
            // just removed), and this packet still goes out translated.
            Ok(c) => Ok(c),
            Err(_) => {
                self.ct.map.remove(&reply.key(), &self.guard);
                entries.fetch_sub(1, Ordering::Relaxed);
                Err(InsertError::Clash)
            }
        }
    }

    /// Puts back a flow carried over a restart, as idle as it was plus `away_secs` (the
    /// time no daemon watched it). `Ok(false)`: it expired meanwhile and is left out.
    pub fn restore(&self, r: &FlowRecord, away_secs: u32, now: u32) -> Result<bool, InsertError> {
        let conn = Conn {
            orig: r.orig,
            reply: r.reply,
            service: r.service,
            return_path: r.return_path,
            state: AtomicU8::new(r.state as u8),
            replied: AtomicU8::new(u8::from(r.replied)),
            last_seen: AtomicU32::new(now.saturating_sub(r.idle_secs.saturating_add(away_secs))),
        };
        if conn.expired(now, &self.ct.config.timeouts) {
            return Ok(false);
        }
        self.insert_conn(conn).map(|_| true)
    }
}

/// What [`ConntrackBatch::restore_over`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restored {
    Added,
    /// In place of the flow the table had under the same tuples.
    Replaced,
    /// Past its timeout: left out (and the table's flow under its tuples gone too).
    Expired,
}

impl ConntrackBatch<'_> {
    /// Forgets the flow whose original direction is `orig`, if the table has one.
    pub fn forget(&self, orig: &Tuple) -> bool {
        match self.lookup(orig) {
            Some((conn, Direction::Orig)) => {
                self.remove(conn);
                true
            }
            _ => false,
        }
    }

    /// Puts back a flow as [`ConntrackBatch::restore`] does, in place of whatever flow
    /// holds its tuples now: a later record of the same flow wins over an earlier one.
    pub fn restore_over(&self, r: &FlowRecord, away_secs: u32, now: u32) -> Result<Restored, InsertError> {
        // The same flow (tuples, Service, return path): its state in place, as packets
        // change it, rather than a new entry.
        if let Some((c, Direction::Orig)) = self.lookup(&r.orig)
            && (c.reply, c.service, c.return_path) == (r.reply, r.service, r.return_path)
        {
            c.state.store(r.state as u8, Ordering::Relaxed);
            c.replied.store(u8::from(r.replied), Ordering::Relaxed);
            c.last_seen.store(now.saturating_sub(r.idle_secs.saturating_add(away_secs)), Ordering::Relaxed);
            if c.expired(now, &self.ct.config.timeouts) {
                self.remove(c);
                return Ok(Restored::Expired);
            }
            return Ok(Restored::Replaced);
        }
        let mut replaced = false;
        for t in [r.orig, r.reply] {
            if let Some((conn, _)) = self.lookup(&t) {
                self.remove(conn);
                replaced = true;
            }
        }
        Ok(match self.restore(r, away_secs, now)? {
            false => Restored::Expired,
            true if replaced => Restored::Replaced,
            true => Restored::Added,
        })
    }

    /// Forgets `conn` (both keys), e.g. a closed flow whose tuple a new connection reuses.
    pub fn remove(&self, conn: &Conn) {
        let mine = |_: &u128, v: &Arc<Conn>| std::ptr::eq(&**v, conn);
        let gone = matches!(self.ct.map.remove_if(&conn.orig.key(), mine, &self.guard), Ok(Some(_)));
        let _ = self.ct.map.remove_if(&conn.reply.key(), mine, &self.guard);
        if gone {
            self.ct.entries.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for ConntrackBatch<'_> {
    fn drop(&mut self) {
        // Let the collector reclaim retired entries promptly on long-running workers.
        self.guard.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse::IPPROTO_UDP;

    fn t(proto: u8, a: [u8; 4], ap: u16, b: [u8; 4], bp: u16) -> Tuple {
        Tuple { proto, src: a.into(), src_port: ap, dst: b.into(), dst_port: bp }
    }

    fn flow(ct: &Conntrack, cport: u16, now: u32) -> Result<(Tuple, Tuple), InsertError> {
        let orig = t(IPPROTO_TCP, [10, 244, 1, 2], cport, [10, 96, 0, 10], 80);
        let reply = t(IPPROTO_TCP, [10, 244, 1, 7], 8080, [10, 244, 1, 2], cport);
        ct.batch().insert(orig, reply, 1, None, now).map(|_| (orig, reply))
    }

    #[test]
    fn both_directions_find_the_flow() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let (orig, reply) = flow(&ct, 40000, 0).unwrap();
        let b = ct.batch();
        assert_eq!(b.lookup(&orig).map(|(c, d)| (c.reply, d)), Some((reply, Direction::Orig)));
        assert_eq!(b.lookup(&reply).map(|(c, d)| (c.orig, d)), Some((orig, Direction::Reply)));
        assert!(b.lookup(&orig.reversed()).is_none(), "the reversed orig tuple is not the reply");
        assert_eq!(ct.len(), 1);
        assert_eq!(b.insert(orig, reply, 1, None, 0).err(), Some(InsertError::Clash));
        assert_eq!(ct.len(), 1);
    }

    #[test]
    fn table_is_bounded_and_frees_room_on_expiry() {
        let config = ConntrackConfig { max_entries: 3, ..Default::default() };
        let ct = Conntrack::new(config);
        for p in 0..3 {
            flow(&ct, 40000 + p, 0).unwrap();
        }
        assert_eq!(flow(&ct, 41000, 0).err(), Some(InsertError::Full));
        let (orig, _) = (t(IPPROTO_TCP, [10, 244, 1, 2], 40000, [10, 96, 0, 10], 80), ());
        assert!(ct.batch().lookup(&orig).is_some(), "established flows keep working when full");
        // Unanswered SYNs expire after tcp_syn.
        assert_eq!(ct.expire(config.timeouts.tcp_syn), 0);
        assert_eq!(ct.expire(config.timeouts.tcp_syn + 1), 3);
        assert!(ct.is_empty());
        assert!(flow(&ct, 41000, 100).is_ok());
    }

    #[test]
    fn tcp_states_drive_expiry() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let to = ct.config().timeouts;
        let (orig, reply) = flow(&ct, 40000, 0).unwrap();
        let b = ct.batch();
        let c = b.lookup(&orig).unwrap().0;
        c.observe(Direction::Orig, TCP_SYN, 0);
        assert_eq!(c.state(), State::New);
        c.observe(Direction::Reply, TCP_SYN | TCP_ACK, 1);
        assert_eq!(c.state(), State::Established);
        assert!(!c.expired(1 + to.tcp_established, &to) && c.expired(2 + to.tcp_established, &to));
        c.observe(Direction::Orig, TCP_FIN | TCP_ACK, 10);
        assert_eq!(c.state(), State::Closing);
        assert!(c.expired(11 + to.tcp_closing, &to));
        c.observe(Direction::Reply, TCP_RST, 20);
        assert_eq!(c.state(), State::Reset);
        assert!(c.expired(21 + to.tcp_reset, &to) && !c.expired(20 + to.tcp_reset, &to));
        assert!(c.is_reopened_by(Direction::Orig, TCP_SYN), "a reused port starts over");
        assert!(!c.is_reopened_by(Direction::Reply, TCP_SYN) && !c.is_reopened_by(Direction::Orig, TCP_ACK));
        b.remove(c);
        assert!(b.lookup(&orig).is_none() && b.lookup(&reply).is_none());
        assert!(ct.is_empty());
    }

    #[test]
    fn udp_lives_longer_once_answered() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let to = ct.config().timeouts;
        let orig = t(IPPROTO_UDP, [10, 244, 1, 2], 5353, [10, 96, 0, 10], 53);
        let reply = t(IPPROTO_UDP, [10, 244, 1, 7], 53, [10, 244, 1, 2], 5353);
        let b = ct.batch();
        let c = b.insert(orig, reply, 1, None, 0).unwrap();
        assert!(c.expired(to.udp + 1, &to));
        c.observe(Direction::Reply, 0, 0);
        assert!(!c.expired(to.udp + 1, &to) && c.expired(to.udp_replied + 1, &to));
    }

    /// The predicate decides once per flow: a flow refreshed while the sweep runs goes
    /// whole or stays whole, never with one key left behind.
    #[test]
    fn a_sweep_removes_both_keys_of_a_flow_or_neither() {
        let ct = Conntrack::new(ConntrackConfig::default());
        let flows: Vec<_> = (0..10).map(|p| flow(&ct, 40000 + p, 0).unwrap()).collect();
        let asked = std::sync::atomic::AtomicUsize::new(0);
        // Answers flip on every call, as a racing refresh would make them.
        let removed = ct.remove_where(|_| asked.fetch_add(1, Ordering::Relaxed).is_multiple_of(2));
        assert_eq!(asked.load(Ordering::Relaxed), 10, "once per flow");
        assert_eq!((removed, ct.len()), (5, 5));
        let b = ct.batch();
        for (orig, reply) in &flows {
            assert_eq!(b.lookup(orig).is_some(), b.lookup(reply).is_some(), "both keys or neither");
        }
    }

    /// A flow carried over a restart comes back in the state it was in, as idle as it
    /// was plus the time away, on another clock; one that expired while away does not.
    #[test]
    fn flows_carried_over_a_restart_keep_their_state_and_age() {
        let old = Conntrack::new(ConntrackConfig::default());
        let to = old.config().timeouts;
        let (orig, reply) = flow(&old, 40000, 1000).unwrap();
        old.batch().lookup(&reply).unwrap().0.observe(Direction::Reply, TCP_SYN | TCP_ACK, 1010);
        let (syn_only, _) = flow(&old, 40001, 1000).unwrap();
        let records = old.records(1020);
        assert_eq!(records.len(), 2);
        let record_of = |o: Tuple| records.iter().find(|r| r.orig == o).unwrap();

        let new = Conntrack::new(ConntrackConfig::default());
        // 30 s away, on a clock that reads 5 at the new start.
        let restored: Vec<bool> = records.iter().map(|r| new.batch().restore(r, 30, 5).unwrap()).collect();
        assert_eq!(new.len(), 2, "{restored:?}");
        let b = new.batch();
        let (c, dir) = b.lookup(&reply).unwrap();
        assert_eq!((c.orig, dir, c.state(), c.replied()), (orig, Direction::Reply, State::Established, true));
        assert!(b.lookup(&syn_only).is_some());
        // Idle 10 s before, 30 s away: 40 s; a clock of 5 cannot go back that far, so it
        // reads as seen at 0 (an entry restored early in a run may live a little longer).
        assert_eq!(c.last_seen(), 0);

        let later = Conntrack::new(ConntrackConfig::default());
        let now = 100_000;
        for r in &records {
            later.batch().restore(r, 30, now).unwrap();
        }
        let b = later.batch();
        assert_eq!(b.lookup(&orig).unwrap().0.last_seen(), now - 40);
        // The SYN, idle 20 s: back while 20 s plus the time away is within tcp_syn.
        let syn_record = record_of(syn_only);
        assert_eq!(syn_record.idle_secs, 20);
        later.batch().remove(b.lookup(&syn_only).unwrap().0);
        assert!(!later.batch().restore(syn_record, to.tcp_syn - 20 + 1, now).unwrap());
        assert!(later.batch().restore(syn_record, to.tcp_syn - 20, now).unwrap());
        assert_eq!(
            later.batch().restore(record_of(orig), 0, now).err(),
            Some(InsertError::Clash),
            "a flow restored twice is one flow"
        );
    }

    /// A takeover copies the table early, then only what changed since: the flows seen
    /// since, each replacing its earlier copy, and the flows that went.
    #[test]
    fn a_later_copy_of_a_flow_replaces_the_earlier_one() {
        let old = Conntrack::new(ConntrackConfig::default());
        let (quiet, _) = flow(&old, 40000, 1000).unwrap();
        let (busy, busy_reply) = flow(&old, 40001, 1000).unwrap();
        let (gone, _) = flow(&old, 40002, 1000).unwrap();
        let early = old.records(1005);
        let new = Conntrack::new(ConntrackConfig::default());
        for r in &early {
            assert_eq!(new.batch().restore_over(r, 0, 1005), Ok(Restored::Added));
        }
        // Then the old table moves on: a reply on one flow, another flow goes.
        old.batch().lookup(&busy_reply).unwrap().0.observe(Direction::Reply, TCP_SYN | TCP_ACK, 1010);
        assert!(old.batch().forget(&gone));
        assert!(!old.batch().forget(&gone), "once");
        let later = old.records_since(1012, 1006);
        assert_eq!(later.iter().map(|r| r.orig).collect::<Vec<_>>(), vec![busy], "only what changed");
        for r in &later {
            assert_eq!(new.batch().restore_over(r, 0, 1012), Ok(Restored::Replaced));
        }
        assert!(new.batch().forget(&gone));
        assert_eq!(new.len(), 2);
        let b = new.batch();
        assert_eq!(b.lookup(&busy).unwrap().0.state(), State::Established, "the later copy");
        assert!(b.lookup(&quiet).is_some() && b.lookup(&gone).is_none());
    }

    #[test]
    fn concurrent_inserts_respect_the_bound() {
        let ct = Arc::new(Conntrack::new(ConntrackConfig { max_entries: 500, ..Default::default() }));
        let threads: Vec<_> = (0..4u16)
            .map(|w| {
                let ct = ct.clone();
                std::thread::spawn(move || {
                    for p in 0..300u16 {
                        let _ = flow(&ct, w * 1000 + p, 0);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(ct.len(), 500);
        assert_eq!(ct.snapshot().len(), 500);
    }
}
