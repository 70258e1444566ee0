//! Seeded proptest runs for the simulator's property tests: the seed and
//! the case count come from the environment when set, so a failure's
//! printed seed replays it exactly.

use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// A `u64` from the environment, decimal or `0x` hex.
pub fn env_u64(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    let raw = raw.trim();
    match raw.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => raw.parse().ok(),
    }
}

/// A runner of `cases` cases whose randomness comes from `seed` alone
/// (nothing persisted between runs).
pub fn runner(seed: u64, cases: u32) -> TestRunner {
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    )
}
