//! The datapath's coarse clock: whole seconds since the datapath started, plus
//! [`START_SECS`].
//!
//! Aging and timeouts need seconds, not nanoseconds; a `u32` of seconds keeps table
//! entries small and lasts 136 years.

use std::time::Instant;

/// What the clock reads when the datapath starts. Entries carried over a restart (a
/// snapshot of the tables) keep their true idle time, up to this much, instead of all
/// looking as if seen at the start: two days is longer than any default timeout and than
/// the longest session affinity Kubernetes allows (a day).
pub const START_SECS: u32 = 2 * 86_400;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    start: Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock { start: Instant::now() }
    }

    /// The clock's reading at `at`: [`START_SECS`] plus the seconds since its start.
    #[inline]
    pub(crate) fn secs_at(&self, at: Instant) -> u32 {
        START_SECS.saturating_add(at.saturating_duration_since(self.start).as_secs() as u32)
    }

    pub(crate) fn now(&self) -> u32 {
        self.secs_at(Instant::now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
