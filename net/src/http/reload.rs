//! Reloading the configuration without a restart (SIGHUP, `POST
//! /api/reload`). The new configuration is read whole (the config file,
//! the environment, the command line) and checked as at start; one that
//! does not resolve is refused with the reason and the one in force
//! stays. Otherwise what can change live changes for new work (new
//! connections, handshakes, joins, messages, rooms opened) while open
//! connections keep going; what cannot (the listen address, TLS on or
//! off, the engine and its store or brokers, the node's threads) keeps
//! its value from the start and is reported as needing a restart.

use std::sync::Arc;

use roomhub_core::Input;
use serde::Serialize;
use tracing::{info, warn};

use crate::config::ServerConfig;
use crate::http::state::HttpState;

pub use crate::http::state::{ConfigSource, LogFilter};

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Reloaded {
    /// Settings now in force, by flag name.
    pub changed: Vec<&'static str>,
    /// Settings that differ but keep their old value until a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Reads the configuration from `source` and puts it in force.
pub(crate) async fn reload(state: &HttpState) -> Result<Reloaded, String> {
    let Some(source) = state.reload.source.get() else {
        return Err("this server has no configuration source to reload from".into());
    };
    let outcome = match source() {
        Ok(new) => apply(state, new).await,
        Err(e) => Err(e),
    };
    outcome.inspect_err(|e| warn!("reload refused, the configuration in force stays: {e}"))
}

/// Puts `new` in force; see the module's documentation.
pub(crate) async fn apply(state: &HttpState, mut new: ServerConfig) -> Result<Reloaded, String> {
    let old = state.config();
    let mut done = Reloaded::default();
    keep_restart_only(&old, &mut new, &mut done.needs_restart);
    new.settle();

    // What can fail goes first, before anything has changed.
    if let Some(certs) = &state.tls
        && let Some(files) = &new.tls
    {
        certs.replace(files.clone())?;
        done.changed.push("tls-cert (read again)");
    }
    if new.auth != old.auth {
        state.auth.replace(&new.auth)?;
        done.changed.push("jwt keys");
    }
    if new.log != old.log {
        if let Some(set) = state.reload.log_filter.get() {
            set(&new.log)?;
        }
        done.changed.push("log");
    }

    let mut changed = |name: &'static str, differs: bool| {
        if differs {
            done.changed.push(name);
        }
    };
    changed(
        "allowed-origins",
        new.allowed_origins != old.allowed_origins,
    );
    changed(
        "max-connections",
        new.max_connections != old.max_connections,
    );
    changed(
        "max-connections-per-user",
        new.max_connections_per_user != old.max_connections_per_user,
    );
    changed("per-ip limits", new.per_ip != old.per_ip);
    changed(
        "handshake-timeout-ms",
        new.handshake_timeout != old.handshake_timeout,
    );
    changed(
        "send-queue-bytes",
        new.send_queue_bytes != old.send_queue_bytes,
    );
    changed("write-wait-ms", new.write_wait != old.write_wait);
    changed("drain-timeout-ms", new.drain_timeout != old.drain_timeout);
    changed(
        "shutdown-delay-ms",
        new.shutdown_delay != old.shutdown_delay,
    );
    changed("api-key", new.api_key != old.api_key);
    changed("admin-password", new.admin_password != old.admin_password);
    changed("hooks", new.hooks != old.hooks);
    let (a, b) = (&new.core, &old.core);
    changed(
        "max-message-bytes",
        a.max_message_bytes != b.max_message_bytes,
    );
    changed(
        "max-content-bytes",
        a.max_content_bytes != b.max_content_bytes,
    );
    changed(
        "max-rooms-per-connection",
        a.max_rooms_per_connection != b.max_rooms_per_connection,
    );
    changed(
        "rate limits",
        (a.rate_limit_per_second, a.rate_limit_burst)
            != (b.rate_limit_per_second, b.rate_limit_burst),
    );
    changed(
        "history limits",
        (a.history_max_messages, a.history_max_age_ms)
            != (b.history_max_messages, b.history_max_age_ms),
    );
    changed("namespaces", a.namespaces != b.namespaces);
    changed(
        "ping and pong",
        (a.ping_interval_ms, a.pong_wait_ms) != (b.ping_interval_ms, b.pong_wait_ms),
    );

    state.admission.set_limits(
        new.max_connections,
        new.max_connections_per_user,
        new.per_ip,
    );
    state.conn.set_limits(new.send_queue_bytes, new.write_wait);
    state.hooks.set_config(new.hooks.clone());
    if new.core != old.core {
        let input = Input::Reconfigure(Box::new(new.core.clone()));
        if !state.conn.inbox.report(input).done().await {
            return Err("the hub is stopping".into());
        }
    }
    *state.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
    info!(
        changed = ?done.changed,
        needs_restart = ?done.needs_restart,
        "configuration reloaded"
    );
    Ok(done)
}

/// Settings that only a restart changes keep their value, and are named
/// in `needs_restart` when the new configuration differs.
fn keep_restart_only(
    old: &ServerConfig,
    new: &mut ServerConfig,
    needs_restart: &mut Vec<&'static str>,
) {
    macro_rules! keep {
        ($name:expr, $($field:tt)+) => {
            if new.$($field)+ != old.$($field)+ {
                needs_restart.push($name);
                new.$($field)+ = old.$($field)+.clone();
            }
        };
    }
    keep!("listen", listen);
    if new.tls.is_some() != old.tls.is_some() {
        needs_restart.push("tls (on or off)");
        new.tls = old.tls.clone();
    }
    keep!("data-dir or memory", data_dir);
    keep!("fsync", fsync);
    keep!("redis", redis);
    keep!("redis-cluster", redis_cluster);
    keep!("node-ttl-ms", node_ttl);
    keep!("io-threads", io_threads);
    keep!("history-max-bytes", store_max_bytes);
    keep!("history-max-bytes", core.history_max_bytes);
    keep!("demo", demo);
    // Not settings: what the process chose at start.
    new.core.node_id = old.core.node_id;
    new.core.seed = old.core.seed;
    new.core.clustered = old.core.clustered;
    new.sequencer_seed = old.sequencer_seed;
    new.hub_thread = old.hub_thread;
    new.disk_faults = old.disk_faults.clone();
    new.demo_token_secret = old.demo_token_secret.clone();
    needs_restart.dedup();
}
