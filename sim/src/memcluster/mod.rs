//! The in-memory cluster: N real [`Hub`](roomhub_core::Hub)s and the pure
//! broker model ([`crate::broker::BrokerModel`]) on a manual clock in one
//! thread, in the shape of quinn's test `Pair`. Clients speak the real
//! protocol (JSON frames) and what they see is written to the same trace the
//! turmoil worlds write, so the same invariant checker judges it. A
//! schedule of joins, leaves, sends, direct messages, disconnects,
//! reconnects, broker outages, delivery and time passing runs in
//! milliseconds, which lets proptest search cluster schedules
//! (`sim/tests/memcluster.rs`).
//!
//! - [`cluster`]: the nodes, their links to the broker, and what the
//!   node's cluster tasks do in `roomhub-net`, done in line;
//! - [`clients`]: the clients' side: sessions, requests, positions for
//!   `since`;
//! - [`schedule`]: the steps, a proptest strategy for them, and the run
//!   that ends quiet and checks.

pub mod clients;
pub mod cluster;
pub mod schedule;
