//! HTTP serving: the routes, admission before the upgrade (auth, origin,
//! limits), and an accept loop generic over axum's [`Listener`], so the same
//! server runs on tokio TCP and on turmoil's simulated TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::header::ORIGIN;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use roomhub_core::{
    AppendRequest, ConnId, HistoryLimits, Hub, Identity, ParseLimits, SingleNode, UserRef,
    parse_publish,
};
use rustc_hash::FxHashMap;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{info, warn};

use crate::auth::{AuthError, Authenticator, SUBPROTOCOL, TokenSource, extract_token};
use crate::broker::{Broker, ClusterTiming, ClusterView};
use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::hub_task::{ClusterLink, Engine, HubEvent, HubTask, Sequencer};
use crate::metrics::Metrics;
use crate::redis_broker::RedisBroker;
use crate::store::Store;
use crate::upgrade::{NotUpgrade, WsUpgrade};
use tungstenite::protocol::WebSocketConfig;

/// Events queued for the hub before connection readers wait (backpressure
/// on the sockets, not unbounded memory).
const HUB_QUEUE: usize = 65_536;
/// tungstenite's read buffer is allocated per connection up front; 128 KiB
/// by default. Client frames are small (4 KiB at most by default) and the
/// buffer grows for a larger one, so 1 KiB suffices: an idle connection's
/// memory is mostly this buffer (4 KiB here cost 9.2 KiB per connection in
/// all, 1 KiB 6.4 KiB; see BENCHMARKS.md).
const READ_BUFFER_BYTES: usize = 1024;

/// The remote address of an HTTP connection, put into each request.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// Shared by every handler and connection task of one server.
pub struct AppState {
    pub(crate) config: ServerConfig,
    auth: Authenticator,
    pub(crate) clock: Clock,
    pub(crate) hub: mpsc::Sender<HubEvent>,
    next_conn: AtomicU64,
    /// Sockets held, upgrading or open or closing: what admission counts.
    sockets: AtomicUsize,
    /// Connections live in the protocol's sense (not yet closed by either
    /// side): what `/ws/online` reports.
    pub(crate) online: Arc<AtomicUsize>,
    /// Cluster mode: the other nodes' counts and the broker's health.
    cluster: Option<Arc<ClusterView>>,
    per_user: std::sync::Mutex<FxHashMap<Arc<str>, usize>>,
    shutting_down: AtomicBool,
    pub(crate) metrics: Metrics,
    connections: TaskTracker,
}

/// A running server: its address, and a handle to stop it.
pub struct Server {
    state: Arc<AppState>,
    shutdown: CancellationToken,
    local_addr: SocketAddr,
    done: tokio::task::JoinHandle<()>,
    store_closed: tokio::sync::oneshot::Receiver<()>,
}

impl Server {
    /// Starts serving on `listener`; returns once accepting.
    /// With `config.redis`, the node joins that Redis cluster.
    pub fn start<L>(listener: L, config: ServerConfig, clock: Clock) -> std::io::Result<Server>
    where
        L: Listener<Addr = SocketAddr>,
    {
        match &config.redis {
            Some(url) => {
                let limits = HistoryLimits::from_config(&config.core);
                let broker = RedisBroker::new(url, limits, config.node_ttl)
                    .map_err(|e| std::io::Error::other(format!("--redis: {e}")))?;
                info!(redis = %url, node = config.core.node_id.0, "cluster mode");
                Server::start_clustered(listener, config, clock, Arc::new(broker))
            }
            None => Server::launch(
                listener,
                config,
                clock,
                |config, clock, hub_tx, _, closed| {
                    let engine = match &config.data_dir {
                        None => Engine::Memory(Box::new(SingleNode::new(
                            config.core.clone(),
                            config.sequencer_seed,
                        ))),
                        Some(dir) => {
                            let limits = HistoryLimits::from_config(&config.core);
                            let store = Store::open(dir, limits).map_err(std::io::Error::other)?;
                            info!(dir = %dir.display(), "durable history in the data directory");
                            Engine::Delegated {
                                hub: Box::new(Hub::new(config.core.clone())),
                                sequencer: Sequencer::Store(crate::store::spawn(
                                    store,
                                    clock,
                                    hub_tx.clone(),
                                    closed,
                                )),
                            }
                        }
                    };
                    Ok((engine, None))
                },
            ),
        }
    }

    /// Starts a cluster node on any [`Broker`] (Redis, or a simulated one).
    pub fn start_clustered<L, B>(
        listener: L,
        mut config: ServerConfig,
        clock: Clock,
        broker: Arc<B>,
    ) -> std::io::Result<Server>
    where
        L: Listener<Addr = SocketAddr>,
        B: Broker,
    {
        config.core.clustered = true;
        config.data_dir = None;
        Server::launch(
            listener,
            config,
            clock,
            move |config, clock, hub_tx, online, _| {
                let view = Arc::new(ClusterView::default());
                let timing = ClusterTiming {
                    node_ttl: config.node_ttl,
                    max_backoff: std::time::Duration::from_secs(2),
                };
                let broker = crate::broker::spawn(
                    broker,
                    config.core.node_id,
                    timing,
                    clock,
                    hub_tx.clone(),
                    online.clone(),
                    view.clone(),
                );
                let engine = Engine::Delegated {
                    hub: Box::new(Hub::new(config.core.clone())),
                    sequencer: Sequencer::Cluster(ClusterLink {
                        broker,
                        users: FxHashMap::default(),
                        conn_users: FxHashMap::default(),
                    }),
                };
                Ok((engine, Some(view)))
            },
        )
    }

    fn launch<L, F>(
        listener: L,
        config: ServerConfig,
        clock: Clock,
        make_engine: F,
    ) -> std::io::Result<Server>
    where
        L: Listener<Addr = SocketAddr>,
        F: FnOnce(
            &ServerConfig,
            Clock,
            &mpsc::Sender<HubEvent>,
            &Arc<AtomicUsize>,
            tokio::sync::oneshot::Sender<()>,
        ) -> std::io::Result<(Engine, Option<Arc<ClusterView>>)>,
    {
        let local_addr = listener.local_addr()?;
        let auth = Authenticator::new(&config.auth).map_err(std::io::Error::other)?;
        if config.allowed_origins.is_empty() {
            warn!("no --allowed-origins: WebSocket upgrades from any origin are accepted");
        }
        let (hub_tx, hub_rx) = mpsc::channel(HUB_QUEUE);
        let shutdown = CancellationToken::new();
        let metrics = Metrics::new();
        let online = Arc::new(AtomicUsize::new(0));
        // Resolves once the store (if any) has closed its database, so a
        // restart in the same process can open it again.
        let (closed_tx, store_closed) = tokio::sync::oneshot::channel();
        let (engine, cluster) = make_engine(&config, clock, &hub_tx, &online, closed_tx)?;
        let hub = HubTask {
            engine,
            events: hub_rx,
            clock,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            publishes: FxHashMap::default(),
            next_publish: 0,
        };
        let state = Arc::new(AppState {
            config,
            auth,
            clock,
            hub: hub_tx,
            next_conn: AtomicU64::new(1),
            sockets: AtomicUsize::new(0),
            online,
            cluster,
            per_user: Default::default(),
            shutting_down: AtomicBool::new(false),
            metrics,
            connections: TaskTracker::new(),
        });
        // Unconstrained: tokio's cooperative budget (128 I/O operations per
        // task turn) would otherwise make every socket write after the
        // 128th of a pass return `Pending`, and hand those connections to
        // their writer tasks, one task wake-up each. The hub yields on its
        // own once per pass (`HubTask::coalesce`).
        let hub_task = tokio::spawn(tokio::task::unconstrained(hub.run()));
        let done = tokio::spawn(accept_loop(
            listener,
            state.clone(),
            shutdown.clone(),
            hub_task,
        ));
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

    /// Live WebSocket connections (what `/ws/online` reports).
    pub fn online(&self) -> usize {
        self.state.online.load(Ordering::Relaxed)
    }

    /// Sockets held, including connections still closing; the number
    /// `--max-connections` limits.
    pub fn sockets(&self) -> usize {
        self.state.sockets.load(Ordering::Relaxed)
    }

    /// Graceful shutdown: stop accepting, close every connection with 1001,
    /// let queues drain for at most the drain timeout.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
        let _ = self.store_closed.await;
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

async fn accept_loop<L>(
    mut listener: L,
    state: Arc<AppState>,
    shutdown: CancellationToken,
    hub_task: tokio::task::JoinHandle<()>,
) where
    L: Listener<Addr = SocketAddr>,
{
    let app = router(state.clone());
    loop {
        let (io, addr) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let service = app.clone();
        let handshake_timeout = state.config.handshake_timeout;
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(addr));
                service.clone().oneshot(req)
            });
            // The header read timeout is the handshake timeout: a client that
            // connects and never completes its upgrade request is dropped.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout)
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades();
            let _ = conn.await;
        });
    }
    info!("shutting down: closing every connection with 1001");
    state.shutting_down.store(true, Ordering::Relaxed);
    state.connections.close();
    // The hub saw the same cancellation and closed every connection.
    let drained = tokio::time::timeout(state.config.drain_timeout, state.connections.wait()).await;
    if drained.is_err() {
        warn!(
            remaining = state.sockets.load(Ordering::Relaxed),
            "drain timeout reached with connections still open"
        );
    }
    hub_task.abort();
    // Dropping the hub's engine ends the store thread.
    let _ = hub_task.await;
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ws", get(ws_handler))
        .route("/ws/online", get(online))
        .route("/api/publish", axum::routing::post(publish))
        .route("/roomhub.js", get(client_module))
        .route("/", get(demo_page))
        .route("/demo/token", axum::routing::post(demo_token))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not found") })
        .with_state(state)
}

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// The demo chat page (`net/assets/demo.html`), embedded in the binary.
pub const DEMO_HTML: &str = include_str!("../assets/demo.html");

async fn demo_page(State(state): State<Arc<AppState>>) -> Response {
    if !state.config.demo {
        return json_error(StatusCode::NOT_FOUND, "not found");
    }
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DEMO_HTML,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct DemoLogin {
    name: String,
}

/// Development mode: a token for a name, so the demo page can log in. The
/// user id is the name, lowercased; valid 24 hours.
async fn demo_token(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let Some(secret) = &state.config.demo_token_secret else {
        return json_error(StatusCode::NOT_FOUND, "not found");
    };
    let login: DemoLogin = match serde_json::from_slice(&body) {
        Ok(l) => l,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
    };
    let name = login.name.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "name must be 1..=64 printable bytes",
        );
    }
    let spec = crate::dev::TokenSpec {
        user: name.to_lowercase(),
        name: Some(name.to_string()),
        rooms: Vec::new(),
    };
    let token = crate::dev::mint_token(
        secret,
        &spec,
        std::time::Duration::from_secs(24 * 3600),
        state.clock.unix_seconds(),
    );
    axum::Json(json!({ "token": token })).into_response()
}

/// The JavaScript client (`net/assets/roomhub.js`), embedded in the binary.
pub const CLIENT_JS: &str = include_str!("../assets/roomhub.js");

async fn client_module() -> Response {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/javascript; charset=utf-8",
            ),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        CLIENT_JS,
    )
        .into_response()
}

/// Connections online: this node's, plus (in cluster mode) every other live
/// node's as of its last heartbeat.
async fn online(State(state): State<Arc<AppState>>) -> Response {
    let local = state.online.load(Ordering::Relaxed);
    let remote = state
        .cluster
        .as_ref()
        .map_or(0, |c| c.remote_online.load(Ordering::Relaxed));
    axum::Json(json!({ "online": local + remote })).into_response()
}

/// `POST /api/publish`: a backend puts a message into a room. It takes the
/// same path as a member's message: sequenced, stored, delivered to every
/// member, recoverable. Answers once it is stored.
async fn publish(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(key) = &state.config.api_key else {
        return json_error(StatusCode::NOT_FOUND, "not found");
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
        return json_error(StatusCode::UNAUTHORIZED, "missing or wrong API key");
    }
    // The core's rules for a member's send_message apply (limits, codes).
    let limits = ParseLimits::from(&state.config.core);
    let publish = match parse_publish(&body, &limits) {
        Ok(p) => p,
        Err(e) => {
            let code = e.code.as_str();
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "error": e.message, "code": code })),
            )
                .into_response();
        }
    };
    let room = publish.room;
    let request = AppendRequest {
        room: room.clone(),
        sender: publish.sender.unwrap_or_else(|| UserRef {
            id: "server".into(),
            name: "server".into(),
        }),
        content: publish.content,
        reply_to: publish.reply_to,
        timestamp: state.clock.now(),
        origin: None,
    };
    let (reply, done) = tokio::sync::oneshot::channel();
    if state
        .hub
        .send(HubEvent::Publish { request, reply })
        .await
        .is_err()
    {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    match tokio::time::timeout(std::time::Duration::from_secs(10), done).await {
        Ok(Ok(Ok(published))) => axum::Json(json!({
            "room": room.as_str(),
            "message_id": &*published.message_id,
            "offset": published.offset,
        }))
        .into_response(),
        _ => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE: the message could not be stored; retry",
        ),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    if state.shutting_down.load(Ordering::Relaxed) {
        json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if state
        .cluster
        .as_ref()
        .is_some_and(|c| !c.healthy.load(Ordering::Relaxed))
    {
        // Joins and sends would get UNAVAILABLE: keep load balancers away.
        json_error(StatusCode::SERVICE_UNAVAILABLE, "broker unreachable")
    } else {
        axum::Json(json!({ "status": "ok" })).into_response()
    }
}

/// A reserved connection slot, released when dropped: whether the upgrade
/// fails, the connection ends, or the task is cancelled.
struct Slot {
    state: Arc<AppState>,
    user: Arc<str>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.sockets.fetch_sub(1, Ordering::Relaxed);
        let mut per_user = self
            .state
            .per_user
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(&self.user);
            }
        }
    }
}

impl AppState {
    /// Reserves a slot for `user`, or says why not.
    fn reserve(self: &Arc<Self>, user: &Arc<str>) -> Result<Slot, (StatusCode, &'static str)> {
        let max = self.config.max_connections;
        if self.sockets.fetch_add(1, Ordering::Relaxed) >= max {
            self.sockets.fetch_sub(1, Ordering::Relaxed);
            return Err((StatusCode::SERVICE_UNAVAILABLE, "server full"));
        }
        let mut per_user = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_user.entry(user.clone()).or_insert(0);
        let per_user_max = self.config.max_connections_per_user;
        if per_user_max > 0 && *count >= per_user_max {
            drop(per_user);
            self.sockets.fetch_sub(1, Ordering::Relaxed);
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections for this user",
            ));
        }
        *count += 1;
        Ok(Slot {
            state: self.clone(),
            user: user.clone(),
        })
    }

    fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        if self.config.allowed_origins.is_empty() {
            return true;
        }
        // Browsers always send Origin on a WebSocket upgrade; a client
        // without one is not a browser, and origin checks protect browsers.
        match headers.get(ORIGIN).map(|o| o.to_str()) {
            None => true,
            Some(Ok(origin)) => {
                let origin = origin.trim_end_matches('/');
                self.config.allowed_origins.iter().any(|o| o == origin)
            }
            Some(Err(_)) => false,
        }
    }

    fn authenticate(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
    ) -> Result<(Identity, TokenSource), AuthError> {
        let (token, source) = extract_token(headers, uri.query()).ok_or(AuthError::Missing)?;
        let identity = self.auth.verify(&token, self.clock.unix_seconds())?;
        Ok((identity, source))
    }
}

async fn ws_handler(
    State(state): State<Arc<AppState>>,
    Extension(PeerAddr(addr)): Extension<PeerAddr>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WsUpgrade, NotUpgrade>,
) -> Response {
    let ws = match upgrade {
        Ok(ws) => ws,
        Err(NotUpgrade(why)) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("not a WebSocket upgrade request: {why}"),
            );
        }
    };
    if state.shutting_down.load(Ordering::Relaxed) {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
    }
    if !state.origin_allowed(&headers) {
        warn!(%addr, origin = ?headers.get(ORIGIN), "origin refused");
        return json_error(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let (identity, source) = match state.authenticate(&headers, &uri) {
        Ok(found) => found,
        Err(e) => {
            state.metrics.auth_failure(e.reason());
            warn!(%addr, reason = e.reason(), "authentication failed");
            return json_error(StatusCode::UNAUTHORIZED, e.message());
        }
    };
    let slot = match state.reserve(&identity.user.id) {
        Ok(slot) => slot,
        Err((status, why)) => {
            warn!(%addr, user = %identity.user.id, why, "connection refused");
            return json_error(status, why);
        }
    };
    let conn = ConnId(state.next_conn.fetch_add(1, Ordering::Relaxed));
    let max_message = state.config.core.max_message_bytes;
    // Only the reading side goes through the codec; the outbox writes.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    // Select a subprotocol the client offered, or browsers drop the socket.
    let protocol = match source {
        TokenSource::Subprotocol {
            offered_ours: false,
            entry,
        } => ws.select(&entry),
        _ => ws.select(SUBPROTOCOL),
    };
    info!(%conn, %addr, user = %identity.user.id, "connected");
    let response = ws.response(protocol);
    let on_upgrade = ws.on_upgrade;
    let task_state = state.clone();
    tokio::spawn(state.connections.track_future(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                crate::conn::run(upgraded, config, conn, identity, task_state).await;
            }
            Err(e) => warn!(%conn, "upgrade failed: {e}"),
        }
        drop(slot);
    }));
    response
}
