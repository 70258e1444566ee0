//! What the HTTP handlers of one server share.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, RwLock};

use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::cluster::view::ClusterView;
use crate::config::ServerConfig;
use crate::conn::context::ConnContext;
use crate::http::admission::Admission;
use crate::metrics::Metrics;

pub(crate) struct HttpState {
    /// The configuration in force (a reload replaces it; what cannot
    /// change without a restart keeps its value from the start).
    pub(crate) config: RwLock<Arc<ServerConfig>>,
    pub(crate) auth: Authenticator,
    pub(crate) clock: Clock,
    /// What each connection is handed: the hub's inbox, the online count.
    pub(crate) conn: Arc<ConnContext>,
    pub(crate) next_conn: AtomicU64,
    pub(crate) admission: Arc<Admission>,
    /// Cluster mode: the other nodes' counts and the broker's health.
    pub(crate) cluster: Option<Arc<ClusterView>>,
    pub(crate) shutting_down: AtomicBool,
    /// A graceful shutdown began: `/readyz` answers 503 from now on, while
    /// connections are still served until the shutdown delay has passed.
    pub(crate) draining: AtomicBool,
    pub(crate) metrics: Metrics,
    /// Every connection task, so shutdown can wait for them.
    pub(crate) connections: TaskTracker,
    /// The backend hooks (`--hook-*`).
    pub(crate) hooks: crate::hooks::Hooks,
    /// The admin UI's live chart.
    pub(crate) admin_series: crate::http::series::Series,
    /// This node's SSE sessions.
    pub(crate) sessions: Arc<crate::conn::sse::Sessions>,
    /// How to reload: set by the binary.
    pub(crate) reload: ReloadHooks,
    /// With `--tls-cert`: the certificate new handshakes get.
    pub(crate) tls: Option<Arc<crate::http::tls::Certificates>>,
    /// Whether the embedded store's writes succeed.
    pub(crate) store_health: crate::seq::faults::StoreHealth,
}

impl HttpState {
    /// The configuration in force.
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Produces the configuration a reload puts in force: the binary reads
/// its command line, environment and config file again.
pub type ConfigSource = Arc<dyn Fn() -> Result<ServerConfig, String> + Send + Sync>;

/// Sets the log filter (tracing's EnvFilter syntax): the binary's global
/// subscriber.
pub type LogFilter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What a reload (`crate::http::reload`) needs from whoever started the
/// server.
#[derive(Default)]
pub(crate) struct ReloadHooks {
    pub(crate) source: std::sync::OnceLock<ConfigSource>,
    pub(crate) log_filter: std::sync::OnceLock<LogFilter>,
}
