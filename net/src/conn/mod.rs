//! The connection stage: one WebSocket connection from its upgrade to its
//! end. The reader turns frames into facts for the hub's inbox; the outbox
//! is where the hub queues frames, and its I/O shard ([`shard`]) writes
//! them; the writer task drains a backlog; the online count follows the
//! connection's life.

pub(crate) mod context;
pub(crate) mod frames;
pub(crate) mod io;
pub(crate) mod lifecycle;
pub mod online;
pub(crate) mod outbox;
pub(crate) mod reader;
pub(crate) mod shard;
pub(crate) mod sse;
