//! The datapath's coarse clock: whole seconds since the datapath started.
//!
//! Aging and timeouts need seconds, not nanoseconds; a `u32` of seconds keeps table
//! entries small and lasts 136 years.

use std::time::Instant;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    start: Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock { start: Instant::now() }
    }

    /// Seconds between the clock's start and `at`.
    #[inline]
    pub(crate) fn secs_at(&self, at: Instant) -> u32 {
        at.saturating_duration_since(self.start).as_secs() as u32
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
