//! roomhub-net: the tokio shell around roomhub's core. It moves bytes and
//! facts in and out of the core and never decides who gets what.
//!
//! - [`server`]: routes, admission before the upgrade, the accept loop;
//! - [`auth`]: where tokens come from and what they say;
//! - [`config`]: flags, environment and TOML file;
//! - the hub task and connection tasks (private): one task owns the core,
//!   each connection has a reader and a writer.

pub mod auth;
pub mod broker;
pub mod clock;
pub mod config;
mod conn;
pub mod dev;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod hub_task;
pub mod metrics;
pub mod os;
mod outbox;
pub mod redis_broker;
pub mod server;
pub mod sim_broker;
pub mod store;
mod upgrade;

pub use clock::Clock;
pub use config::{Cli, Command, ServerArgs, ServerConfig, TokenArgs, parse_cli};
pub use conn::ReadOnly;
pub use server::{PeerAddr, Server};
