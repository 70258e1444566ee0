//! roomhub's simulators.
//!
//! - [`world`]: the real `roomhub-net` server inside turmoil with simulated
//!   clients ([`client`]) and seeded faults; [`check`] holds the invariants
//!   checked on everything the clients saw ([`trace`]).
//! - [`broker`]: the simulated broker (a pure model, served over TCP).
//! - [`memcluster`]: N hubs and the broker model on a manual clock in one
//!   thread, judged by the same checker (`tests/memcluster.rs`).
//! - [`model`] and [`ops`]: a reference model of the core, driven by
//!   proptest (see `tests/model.rs`).

pub mod broker;
pub mod check;
pub mod client;
pub mod memcluster;
pub mod model;
pub mod net;
pub mod ops;
pub mod plant;
pub mod positions;
pub mod seeded;
pub mod setting;
pub mod trace;
pub mod world;
