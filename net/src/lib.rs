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
//!  client ◀─TCP─── conn/outbox ◀───── hub/dispatch: a pass's frames ◀──┐
//!                  (writer task        per connection                  │
//!                  for a backlog)                                       │
//!                             seq/ and cluster/ answer with core inputs ┘ (Answers)
//! ```
//!
//! - [`server`]: the composition root, the only file that knows every part;
//! - `http/`: accept loop, routes, admission before the upgrade, the API;
//! - `conn/`: one connection's reader, outbox and writer, the online count;
//! - `hub/`: the inbox, the task that owns the core, dispatch to outboxes;
//! - [`seq`]: the embedded store, epochs, the shared append batching;
//! - [`cluster`]: the broker contract, wire format, key names, Redis, and
//!   the node's tasks;
//! - [`auth`], [`config`], [`clock`], [`metrics`], [`dev`], [`os`]: support.
//!
//! Imports run one way along that path; a stage that answers the hub gets
//! a narrow handle (an inbox), never the hub task or the HTTP state.

pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
mod conn;
pub mod dev;
mod http;
mod hub;
pub mod metrics;
pub mod os;
pub mod seq;
pub mod server;

pub use clock::Clock;
pub use config::{Cli, Command, ServerArgs, ServerConfig, TokenArgs, parse_cli};
pub use conn::io::ReadOnly;
pub use conn::online::Online;
pub use http::peer::PeerAddr;
pub use server::Server;
