//! What every world and its simulated clients agree on: the wall clock at
//! the start, the token secret, the server's host name and port, and
//! simulated time.

/// 2026-01-01T00:00:00Z: the wall clock at the start of every world.
pub const START_MS: u64 = 1_767_225_600_000;
pub const SECRET: &str = "sim-secret";
pub const SERVER: &str = "server";
pub const SERVER_PORT: u16 = 8080;

/// Simulated milliseconds since the world started.
pub fn now_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}
