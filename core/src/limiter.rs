//! Per-connection token buckets on the hub's `now`.
//!
//! governor's GCRA limiter is used as is. It reads time from a clock object;
//! we give it a [`FakeRelativeClock`] that only moves when the hub is handed a
//! later `now`, so a decision depends on the inputs alone. All limiters of one
//! hub share that clock.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::time::Timestamp;

pub(crate) type ConnLimiter = RateLimiter<NotKeyed, InMemoryState, FakeRelativeClock>;

pub(crate) struct RateLimits {
    clock: FakeRelativeClock,
    clock_at: Option<Timestamp>,
    quota: Option<Quota>,
}

impl RateLimits {
    /// `per_second == 0` turns limiting off. A zero burst is read as 1.
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        let quota = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            Quota::per_second(rate).allow_burst(burst)
        });
        RateLimits {
            clock: FakeRelativeClock::default(),
            clock_at: None,
            quota,
        }
    }

    /// New connections get this quota from now on; the buckets of
    /// connections already open keep theirs (and the shared clock).
    pub(crate) fn set_quota(&mut self, per_second: u32, burst: u32) {
        self.quota = RateLimits::new(per_second, burst).quota;
    }

    /// Moves the shared clock to `now`. Time never runs backwards for it.
    pub(crate) fn advance_to(&mut self, now: Timestamp) {
        match self.clock_at {
            Some(at) if now > at => {
                self.clock.advance(Duration::from_millis(now.ms_since(at)));
                self.clock_at = Some(now);
            }
            Some(_) => {}
            None => self.clock_at = Some(now),
        }
    }

    /// A fresh bucket for a new connection, or `None` when limiting is off.
    pub(crate) fn new_limiter(&self) -> Option<ConnLimiter> {
        self.quota
            .map(|q| RateLimiter::direct_with_clock(q, self.clock.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_on_injected_time() {
        let mut limits = RateLimits::new(1, 10);
        limits.advance_to(Timestamp(1_000));
        let l = limits.new_limiter().expect("limiting is on");
        for _ in 0..10 {
            assert!(l.check().is_ok());
        }
        assert!(l.check().is_err());
        limits.advance_to(Timestamp(1_999));
        assert!(l.check().is_err());
        limits.advance_to(Timestamp(2_000));
        assert!(l.check().is_ok());
        assert!(l.check().is_err());
        // A clock that steps back changes nothing.
        limits.advance_to(Timestamp(500));
        assert!(l.check().is_err());
    }

    #[test]
    fn a_new_quota_is_for_new_buckets_and_old_ones_still_refill() {
        let mut limits = RateLimits::new(1, 1);
        limits.advance_to(Timestamp(1_000));
        let old = limits.new_limiter().unwrap();
        assert!(old.check().is_ok() && old.check().is_err());
        limits.set_quota(1, 5);
        let new = limits.new_limiter().unwrap();
        for _ in 0..5 {
            assert!(new.check().is_ok());
        }
        assert!(old.check().is_err());
        limits.advance_to(Timestamp(2_000));
        assert!(
            old.check().is_ok(),
            "the old bucket refills on the same clock"
        );
        limits.set_quota(0, 0);
        assert!(limits.new_limiter().is_none());
    }

    #[test]
    fn zero_rate_turns_limiting_off() {
        assert!(RateLimits::new(0, 10).new_limiter().is_none());
    }
}
