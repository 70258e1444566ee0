//! Epochs for rooms a store or broker has never seen: random, so that a
//! history lost with its data directory (or an emptied Redis) is never
//! mistaken for the new one; clients are told `recovered: false` instead.

/// A fresh epoch: 16 hex digits.
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}
