//! Time as the core sees it: a value passed in by the shell, never read here.
//!
//! A [`Timestamp`] is milliseconds since the Unix epoch (UTC). The shell is
//! expected to pass a clock that does not go backwards (for example the wall
//! clock at start plus a monotonic elapsed time); the core tolerates a clock
//! that stalls or steps back by treating it as "no time passed".

use std::fmt;

use serde::{Deserialize, Serialize};

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + ms`, saturating at the far future instead of wrapping.
    pub fn plus_ms(self, ms: u64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn ms_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// RFC 3339, UTC, millisecond precision: `2026-11-22T10:00:00.000Z`.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The `time` crate does the calendar arithmetic; it only converts the
        // number it is given and never looks at a clock.
        let nanos = i128::from(self.0) * 1_000_000;
        match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) => write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            ),
            // Beyond year 9999: clamp rather than fail, the value came from our shell.
            Err(_) => f.write_str("9999-12-31T23:59:59.999Z"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_with_millis() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp(1_795_521_600_123).to_string(),
            "2026-11-24T12:00:00.123Z"
        );
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Timestamp(u64::MAX).plus_ms(5), Timestamp(u64::MAX));
        assert_eq!(Timestamp(5).ms_since(Timestamp(10)), 0);
    }
}
