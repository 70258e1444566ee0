//! The server's clock, read through `tokio::time` so that turmoil can drive
//! it in simulations. Wall time is taken once at start; after that time only
//! moves with the monotonic clock, so the core never sees it go backwards.

use roomhub_core::Timestamp;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    start_wall_ms: u64,
}

impl Clock {
    /// `start_wall_ms`: milliseconds since the Unix epoch at this instant.
    pub fn new(start_wall_ms: u64) -> Self {
        Clock {
            start: Instant::now(),
            start_wall_ms,
        }
    }

    /// The wall clock now, as the process's real clock reads it.
    pub fn system() -> Self {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Clock::new(wall)
    }

    pub fn now(&self) -> Timestamp {
        let elapsed = self.start.elapsed().as_millis() as u64;
        Timestamp(self.start_wall_ms.saturating_add(elapsed))
    }

    /// The tokio instant at which the core's `at` falls due.
    pub fn instant_at(&self, at: Timestamp) -> Instant {
        let ms = at.as_millis().saturating_sub(self.start_wall_ms);
        // Far-future deadlines are clamped so the addition cannot overflow.
        self.start + std::time::Duration::from_millis(ms.min(u64::from(u32::MAX) * 1000))
    }

    /// Seconds since the Unix epoch, for JWT `exp`/`nbf`.
    pub fn unix_seconds(&self) -> u64 {
        self.now().as_millis() / 1000
    }
}
