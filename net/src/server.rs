//! The composition root: builds a running [`Server`] from its config. The
//! only file that knows every part: it picks the engine (memory, the
//! embedded store, or a cluster broker), starts the hub task, and hands the
//! HTTP side what it serves with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use axum::serve::Listener;
use roomhub_core::{Config as CoreConfig, Core, HistoryLimits, Hub, SingleNode};
use rustc_hash::FxHashMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::cluster::broker::Broker;
use crate::cluster::redis::RedisBroker;
use crate::cluster::redis::cluster::RedisClusterBroker;
use crate::cluster::sharded::ShardedBroker;
use crate::cluster::view::{ClusterTiming, ClusterView};
use crate::config::ServerConfig;
use crate::conn::context::ConnContext;
use crate::conn::online::Online;
use crate::conn::sse::Sessions;
use crate::http::accept::accept_loop;
use crate::http::admission::Admission;
use crate::http::reload::{ConfigSource, LogFilter, Reloaded};
use crate::http::state::HttpState;
use crate::http::tls::Certificates;
use crate::hub::engine::{Engine, Journaled};
use crate::hub::inbox::{self, Answers};
use crate::hub::services::Services;
use crate::hub::task::HubTask;
use crate::metrics::Metrics;
use crate::seq::faults::StoreHealth;
use crate::seq::journaled::JournaledStore;
use crate::seq::store::{Fsync, Store};
use crate::seq::store_task;

/// The longest a cluster node waits between reconnection attempts.
const BROKER_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A running server: its address, and a handle to stop it.
pub struct Server {
    state: Arc<HttpState>,
    shutdown: CancellationToken,
    local_addr: SocketAddr,
    done: tokio::task::JoinHandle<()>,
    store_closed: tokio::sync::oneshot::Receiver<()>,
}

/// What building an engine needs from the server being built.
struct Parts<'a> {
    config: &'a ServerConfig,
    clock: Clock,
    answers: Answers,
    online: &'a Online,
    store_closed: tokio::sync::oneshot::Sender<()>,
    /// Whether the embedded store's writes succeed (the health check).
    store_health: StoreHealth,
    metrics: &'a Metrics,
}

type Built<C> = (Engine<C>, Option<Arc<ClusterView>>);

impl Server {
    /// Starts serving on `listener`; returns once accepting.
    /// With `config.redis`, the node joins the cluster on those Redis shards.
    pub fn start<L>(listener: L, config: ServerConfig, clock: Clock) -> std::io::Result<Server>
    where
        L: Listener<Addr = SocketAddr>,
    {
        Server::start_with_core(listener, config, clock, Hub::new)
    }

    /// [`Server::start`] around the core `make_core` builds from the
    /// config: [`Hub::new`] in the binary; a simulator may wrap the hub.
    pub fn start_with_core<L, C, M>(
        listener: L,
        config: ServerConfig,
        clock: Clock,
        make_core: M,
    ) -> std::io::Result<Server>
    where
        L: Listener<Addr = SocketAddr>,
        C: Core + Send + 'static,
        M: FnOnce(CoreConfig) -> C,
    {
        let limits = HistoryLimits::from_config(&config.core);
        if !config.redis_cluster.is_empty() {
            let broker = RedisClusterBroker::new(&config.redis_cluster, limits, config.node_ttl)
                .map_err(|e| std::io::Error::other(format!("--redis-cluster: {e}")))?;
            info!(redis_cluster = %config.redis_cluster.join(","), node = config.core.node_id.0, "cluster mode");
            let broker = Arc::new(broker);
            return Server::start_clustered_with_core(listener, config, clock, broker, make_core);
        }
        if config.redis.is_empty() {
            return Server::launch(listener, config, clock, move |parts| {
                single_node(parts, make_core)
            });
        }
        let mut shards = config
            .redis
            .iter()
            .map(|url| {
                RedisBroker::new(url, limits, config.node_ttl)
                    .map_err(|e| std::io::Error::other(format!("--redis {url}: {e}")))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        info!(redis = %config.redis.join(","), node = config.core.node_id.0, "cluster mode");
        if shards.len() == 1 {
            let broker = Arc::new(shards.remove(0));
            Server::start_clustered_with_core(listener, config, clock, broker, make_core)
        } else {
            let broker = Arc::new(ShardedBroker::new(shards));
            Server::start_clustered_with_core(listener, config, clock, broker, make_core)
        }
    }

    /// Starts a cluster node on any [`Broker`] (Redis, or a simulated one).
    pub fn start_clustered<L, B>(
        listener: L,
        config: ServerConfig,
        clock: Clock,
        broker: Arc<B>,
    ) -> std::io::Result<Server>
    where
        L: Listener<Addr = SocketAddr>,
        B: Broker,
    {
        Server::start_clustered_with_core(listener, config, clock, broker, Hub::new)
    }

    /// [`Server::start_clustered`] around the core `make_core` builds.
    pub fn start_clustered_with_core<L, B, C, M>(
        listener: L,
        mut config: ServerConfig,
        clock: Clock,
        broker: Arc<B>,
        make_core: M,
    ) -> std::io::Result<Server>
    where
        L: Listener<Addr = SocketAddr>,
        B: Broker,
        C: Core + Send + 'static,
        M: FnOnce(CoreConfig) -> C,
    {
        config.core.clustered = true;
        config.data_dir = None;
        Server::launch(listener, config, clock, move |parts| {
            Ok(cluster_node(parts, broker, make_core))
        })
    }

    fn launch<L, F, C>(
        listener: L,
        config: ServerConfig,
        clock: Clock,
        make_engine: F,
    ) -> std::io::Result<Server>
    where
        L: Listener<Addr = SocketAddr>,
        F: FnOnce(Parts<'_>) -> std::io::Result<Built<C>>,
        C: Core + Send + 'static,
    {
        let local_addr = listener.local_addr()?;
        let mut config = config;
        config.settle();
        let auth = Authenticator::new(&config.auth).map_err(std::io::Error::other)?;
        if config.allowed_origins.is_empty() {
            warn!("no --allowed-origins: WebSocket upgrades from any origin are accepted");
        }
        let (inbox, events) = inbox::channel();
        // One set of hooks, shared by the HTTP side (connect) and the hub's
        // services (join, publish), so that a reload changes both.
        let hooks = crate::hooks::Hooks::new(config.hooks.clone());
        // `shutdown` starts a graceful shutdown (SIGTERM, `Server::shutdown`);
        // `closing` follows it after the shutdown delay and is what closes
        // every connection with 1001.
        let shutdown = CancellationToken::new();
        let closing = CancellationToken::new();
        let metrics = Metrics::new();
        let online = Online::default();
        // Resolves once the store (if any) has closed its database, so a
        // restart in the same process can open it again.
        let (closed_tx, store_closed) = tokio::sync::oneshot::channel();
        let store_health = StoreHealth::default();
        let (engine, cluster) = make_engine(Parts {
            config: &config,
            clock,
            answers: inbox.answers(),
            online: &online,
            store_closed: closed_tx,
            store_health: store_health.clone(),
            metrics: &metrics,
        })?;
        let hub = HubTask {
            engine,
            events,
            clock,
            metrics: metrics.clone(),
            shutdown: closing.clone(),
            publishes: FxHashMap::default(),
            next_publish: 0,
            calls: FxHashMap::default(),
            services: Services {
                hooks: hooks.clone(),
                io: tokio::runtime::Handle::current(),
                answers: inbox.answers(),
                auth: auth.clone(),
                clock,
            },
        };
        let conn = Arc::new(ConnContext::new(
            inbox,
            online,
            metrics.clone(),
            config.send_queue_bytes,
            config.write_wait,
        ));
        let node_id = config.core.node_id;
        let tls = match &config.tls {
            Some(files) => Some(Certificates::open(files.clone()).map_err(std::io::Error::other)?),
            None => None,
        };
        let state = Arc::new(HttpState {
            tls,
            reload: Default::default(),
            admission: Arc::new(Admission::new(
                config.max_connections,
                config.max_connections_per_user,
                config.per_ip,
            )),
            config: std::sync::RwLock::new(Arc::new(config)),
            auth,
            clock,
            conn,
            next_conn: AtomicU64::new(1),
            cluster,
            shutting_down: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            metrics,
            connections: TaskTracker::new(),
            hooks,
            store_health,
            sessions: Arc::new(Sessions::new(node_id)),
            admin_series: Default::default(),
        });
        tokio::spawn(crate::http::admin::sample(state.clone()));
        if let Some(forwarded) = state
            .cluster
            .as_ref()
            .and_then(|c| c.calls.forwarded_here())
        {
            tokio::spawn(crate::http::sse::take_forwarded(state.clone(), forwarded));
        }
        let hub = hub.start(state.config().io_threads, state.config().hub_thread)?;
        tokio::spawn(unready_then_close(
            state.clone(),
            shutdown.clone(),
            closing.clone(),
        ));
        let tls = match &state.tls {
            Some(certs) => {
                tokio::spawn(certs.clone().watch(closing.clone()));
                Some(certs.acceptor().map_err(std::io::Error::other)?)
            }
            None => None,
        };
        let done = tokio::spawn(accept_loop(listener, state.clone(), closing, hub, tls));
        Ok(Server {
            state,
            shutdown,
            local_addr,
            done,
            store_closed,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The configuration in force.
    pub fn config(&self) -> ServerConfig {
        (*self.state.config()).clone()
    }

    /// Live WebSocket connections (what `/ws/online` reports).
    pub fn online(&self) -> usize {
        self.state.conn.online.get()
    }

    /// Sockets held, including connections still closing; the number
    /// `--max-connections` limits.
    pub fn sockets(&self) -> usize {
        self.state.admission.sockets()
    }

    /// Graceful shutdown: stop accepting, close every connection with 1001,
    /// let queues drain for at most the drain timeout.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
        let _ = self.store_closed.await;
    }

    /// Where [`Server::reload`] and `POST /api/reload` read the
    /// configuration from (the binary: its command line, environment
    /// and config file, read again). Set once.
    pub fn set_config_source(&self, source: ConfigSource) {
        let _ = self.state.reload.source.set(source);
    }

    /// How a reload sets the log filter (the binary's subscriber). Set once.
    pub fn set_log_filter(&self, set: LogFilter) {
        let _ = self.state.reload.log_filter.set(set);
    }

    /// A handle that reloads this server from another task (a signal
    /// handler).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            state: self.state.clone(),
        }
    }

    /// Puts `config` in force as a reload would.
    pub async fn reload_with(&self, config: ServerConfig) -> Result<Reloaded, String> {
        crate::http::reload::apply(&self.state, config).await
    }

    /// A token that, when cancelled, shuts the server down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Resolves when the server has shut down.
    pub async fn wait(self) {
        let _ = self.done.await;
        let _ = self.store_closed.await;
    }
}

/// Reloads a server's configuration from another task (a signal handler).
#[derive(Clone)]
pub struct Reloader {
    state: Arc<HttpState>,
}

impl Reloader {
    /// Reads the configuration from the server's source (see
    /// [`Server::set_config_source`]) and puts what can change live in
    /// force (see [`crate::http::reload`]); an invalid one is refused
    /// with the reason, and the one in force stays.
    pub async fn reload(&self) -> Result<Reloaded, String> {
        crate::http::reload::reload(&self.state).await
    }
}

/// Once a graceful shutdown begins: unready at once (`/readyz` answers
/// 503, so load balancers stop sending new clients), then, after the
/// shutdown delay, close every connection with 1001.
async fn unready_then_close(
    state: Arc<HttpState>,
    shutdown: CancellationToken,
    closing: CancellationToken,
) {
    shutdown.cancelled().await;
    state
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let delay = state.config().shutdown_delay;
    if !delay.is_zero() {
        info!(
            delay_ms = delay.as_millis() as u64,
            "shutting down: unready now, closing connections after the shutdown delay"
        );
        tokio::time::sleep(delay).await;
    }
    closing.cancel();
}

/// One node on its own: history in memory, or in the embedded store.
fn single_node<C: Core>(
    parts: Parts<'_>,
    make_core: impl FnOnce(CoreConfig) -> C,
) -> std::io::Result<Built<C>> {
    let config = parts.config;
    let engine = match &config.data_dir {
        None => {
            // Two copies of history live in memory here: the sequencer's
            // (every room) and each open room's on the hub. Each gets half
            // of `--history-max-bytes`, so that together they keep to it.
            let mut core = config.core.clone();
            core.history_max_bytes /= 2;
            Engine::Memory(Box::new(SingleNode::with_core(
                make_core(core),
                config.sequencer_seed,
            )))
        }
        Some(dir) => {
            let limits = HistoryLimits {
                max_bytes: usize::try_from(config.store_max_bytes).unwrap_or(usize::MAX),
                ..HistoryLimits::from_config(&config.core)
            };
            info!(
                dir = %dir.display(),
                fsync = ?config.fsync,
                disk_budget = config.store_max_bytes,
                "durable history in the data directory"
            );
            let hub = make_core(config.core.clone());
            match config.fsync {
                Fsync::Background => {
                    let closed = Some(parts.store_closed);
                    let faults = config.disk_faults.as_ref();
                    let health = parts.store_health;
                    let store = JournaledStore::open_with(dir, limits, closed, faults, health)
                        .map_err(std::io::Error::other)?;
                    let timer = parts.metrics.append_timer("store");
                    Engine::Journaled(Box::new(Journaled::new(hub, store, timer)))
                }
                Fsync::Always => {
                    let faults = config.disk_faults.as_ref();
                    let store = Store::open_with(dir, limits, faults, parts.store_health)
                        .map_err(std::io::Error::other)?;
                    let (clock, answers) = (parts.clock, parts.answers);
                    Engine::Delegated {
                        hub: Box::new(hub),
                        sequencer: store_task::spawn(
                            store,
                            clock,
                            answers,
                            parts.store_closed,
                            parts.metrics.append_timer("store"),
                        ),
                    }
                }
            }
        }
    };
    Ok((engine, None))
}

/// A node sharing rooms with others through `broker`.
fn cluster_node<B: Broker, C: Core>(
    parts: Parts<'_>,
    broker: Arc<B>,
    make_core: impl FnOnce(CoreConfig) -> C,
) -> Built<C> {
    let config = parts.config;
    let view = Arc::new(ClusterView::default());
    let timing = ClusterTiming {
        node_ttl: config.node_ttl,
        max_backoff: BROKER_BACKOFF_MAX,
    };
    let node_parts = crate::cluster::node::NodeParts {
        clock: parts.clock,
        answers: parts.answers,
        local_online: parts.online.clone(),
        timer: parts.metrics.append_timer("broker"),
    };
    let sequencer = crate::cluster::node::spawn(
        broker,
        config.core.node_id,
        timing,
        node_parts,
        view.clone(),
    );
    let engine = Engine::Delegated {
        hub: Box::new(make_core(config.core.clone())),
        sequencer,
    };
    (engine, Some(view))
}
