//! roomhub-net: the tokio shell around roomhub's core. It moves bytes and
//! facts in and out of the core and never decides who gets what.
//!
//! The folders follow a message's path:
//!
//! ```text
//!  client ──TCP──▶ http/ ───────────▶ conn/ ──────────────▶ hub/ ────────────▶ seq/ or cluster/
//!                  accept, routes,    reader: frames        inbox ─▶ task       store thread, or
//!                  admission,         become facts          drives the engine   broker worker,
//!                  upgrade, API       (Inbox)               (core Hub)          subscriber,
//!                                                                               heartbeat
//!  client ◀─TCP─── conn/shard ◀────── hub/dispatch: a pass's frames ◀──┐
//!                  one per I/O thread: queued in each connection's     │
//!                  writes the outboxes outbox (writer task for a       │
//!                  the hub staged      backlog)                        │
//!                             seq/ and cluster/ answer with core inputs ┘ (Answers)
//! ```
//!
//! - [`server`]: the composition root, the only file that knows every part;
//! - `http/`: accept loop, routes, admission before the upgrade, the API;
//! - `conn/`: one connection's reader, outbox and writer, the online count,
//!   and the I/O shards that write the sockets;
//! - `hub/`: the inbox, the task that owns the core, dispatch to outboxes;
//! - [`seq`]: the embedded store, epochs, the shared append batching;
//! - [`cluster`]: the broker contract, wire format, key names, Redis, and
//!   the node's tasks;
//! - [`auth`], [`config`], [`clock`], [`metrics`], [`dev`], [`os`]: support.
//!
//! Threads (named, so each one's CPU can be read from
//! `/proc/<pid>/task/*/stat`): `roomhub-hub` runs the hub task alone;
//! `roomhub-io-0`, `roomhub-io-1`, ... (`--io-threads`, one per core by
//! default) run HTTP, the connections' readers and writers, one write shard
//! each, and the cluster's tasks; `roomhub-store` and `roomhub-fsync` serve
//! the embedded store and sync its journal.
//!
//! Imports run one way along that path; a stage that answers the hub gets
//! a narrow handle (an inbox), never the hub task or the HTTP state.

pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
mod conn;
pub mod dev;
pub mod hooks;
mod http;
mod hub;
pub mod metrics;
pub mod os;
pub mod seq;
pub mod server;

pub use clock::Clock;
pub use config::{Cli, Command, ServerArgs, ServerConfig, TokenArgs, parse_cli};
pub use conn::online::Online;
pub use http::peer::PeerAddr;
pub use http::reload::{ConfigSource, LogFilter, Reloaded};
pub use http::tls::TlsFiles;
pub use server::{Reloader, Server};
