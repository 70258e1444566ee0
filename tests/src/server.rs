//! A real roomhub server on a loopback port, and a real WebSocket client.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roomhub_net::dev::{TokenSpec, mint_token};
use roomhub_net::{Clock, Server, ServerConfig};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-for-loopback-tests";
/// How long a test waits for a frame before failing.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// I/O threads of every test server: more than one, so that every
/// end-to-end test runs with connections on several write shards and
/// threads, as the binary does on a machine with several cores.
pub const IO_THREADS: usize = 3;

pub struct TestServer {
    pub addr: SocketAddr,
    server: Option<Server>,
    /// The server's own runtime (its I/O threads), as in the binary.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Dropped inside the test's runtime: must not block.
            runtime.shutdown_background();
        }
    }
}

impl TestServer {
    /// A server with the default settings and [`SECRET`].
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// A server with settings adjusted by `adjust`.
    /// The server runs on a multi-threaded runtime of its own with
    /// [`IO_THREADS`] threads (unless `adjust` sets `io_threads`), its hub
    /// on its own thread: the binary's arrangement.
    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let mut config = ServerConfig::with_secret(SECRET);
        config.io_threads = IO_THREADS;
        adjust(&mut config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.io_threads)
            .thread_name("roomhub-io")
            .enable_all()
            .build()
            .expect("the server's runtime");
        let server = runtime
            .spawn(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                Server::start(listener, config, Clock::system()).expect("start")
            })
            .await
            .expect("starting the server");
        TestServer {
            addr: server.local_addr(),
            server: Some(server),
            runtime: Some(runtime),
        }
    }

    /// A cluster node on a Redis Cluster reached through `seeds`
    /// (comma-separated), otherwise as [`TestServer::node`].
    pub async fn cluster_node(seeds: &str) -> TestServer {
        let seeds: Vec<String> = seeds.split(',').map(str::to_string).collect();
        TestServer::clustered(|c| c.redis_cluster = seeds).await
    }

    /// A cluster node on `redis_url` (several, comma-separated: rooms
    /// sharded over them), with a short node TTL (1.5 s) and no rate limit.
    pub async fn node(redis_url: &str) -> TestServer {
        let urls: Vec<String> = redis_url.split(',').map(str::to_string).collect();
        TestServer::clustered(|c| c.redis = urls).await
    }

    /// A cluster node whose broker (and anything else) `place` sets, with
    /// a short node TTL (1.5 s) and no rate limit, once healthy.
    pub async fn clustered(place: impl FnOnce(&mut ServerConfig)) -> TestServer {
        TestServer::start_with(|c| {
            place(c);
            c.node_ttl = Duration::from_millis(1500);
            c.core.rate_limit_per_second = 0;
        })
        .await
        .ready()
        .await
    }

    /// Waits until `/readyz` says ok (a cluster node: its broker is up).
    pub async fn ready(self) -> TestServer {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.get("/readyz").await.0 != 200 {
            assert!(tokio::time::Instant::now() < deadline, "never healthy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self
    }

    /// The running server.
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    /// Puts the configuration in force, as `adjust` changes it, as a
    /// reload would.
    pub async fn reconfigure(
        &self,
        adjust: impl FnOnce(&mut ServerConfig),
    ) -> Result<roomhub_net::Reloaded, String> {
        let mut config = self.server().config();
        adjust(&mut config);
        self.server().reload_with(config).await
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// A token for `user`, valid for an hour.
    pub fn token(&self, user: &str) -> String {
        token_for(user, Duration::from_secs(3600))
    }

    /// Connects `user` with a token in the query string.
    pub async fn client(&self, user: &str) -> Client {
        let url = format!("{}?token={}", self.url(), self.token(user));
        Client::connect(url).await.expect("connect")
    }

    /// Connects and joins `room`, consuming the `room_info`.
    /// A client that joined `room` and left it again (to come back with
    /// `since`), and the room's epoch it saw.
    pub async fn stepped_out(&self, user: &str, room: &str) -> (Client, serde_json::Value) {
        let mut c = self.client(user).await;
        let epoch = c.join(room).await["payload"]["epoch"].clone();
        c.leave(room).await;
        (c, epoch)
    }

    pub async fn member(&self, user: &str, room: &str) -> Client {
        let mut c = self.client(user).await;
        c.join(room).await;
        c
    }

    /// A plain HTTP GET; returns status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    /// Graceful shutdown, as on SIGTERM.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    pub fn online(&self) -> usize {
        self.server.as_ref().map_or(0, Server::online)
    }

    /// Opens a WebSocket by hand for `user`: the upgrade request, then
    /// `then` in the same write (raw bytes, such as frames sent before the
    /// answer), then the `101` answer is read. The socket is left right
    /// after the answer's head, so raw bytes can follow.
    pub async fn raw_upgrade(&self, user: &str, then: &[u8]) -> TcpStream {
        let mut tcp = TcpStream::connect(self.addr).await.expect("connect");
        let mut request = format!(
            "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            self.token(user),
            self.addr
        )
        .into_bytes();
        request.extend_from_slice(then);
        tcp.write_all(&request)
            .await
            .expect("send the upgrade request");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.expect("the upgrade answer"));
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        tcp
    }

    /// The value of an unlabelled counter or gauge on `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }
}

/// Polls `check` until it holds, for at most [`PATIENCE`]; panics naming
/// `what` otherwise.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

pub fn token_for(user: &str, ttl: Duration) -> String {
    let spec = TokenSpec {
        user: user.to_string(),
        ..TokenSpec::default()
    };
    mint_token(SECRET, &spec, ttl, Clock::system().unix_seconds())
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_exchange(addr, &request).await
}

/// Sends one raw HTTP/1.1 `request`; returns the status and the whole
/// answer, headers included.
pub async fn http_request(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Sends one raw HTTP/1.1 request; returns the status and body.
async fn http_exchange(addr: SocketAddr, request: &str) -> (u16, String) {
    let (status, text) = http_request(addr, request).await;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// A plain HTTP POST with a JSON body and optional Bearer token; returns
/// status and body.
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> (u16, String) {
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http_exchange(addr, &request).await
}

/// Why a connection attempt was refused before the upgrade.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The subprotocol the server selected, if any.
    pub protocol: Option<String>,
}

impl Client {
    pub async fn connect(request: impl IntoClientRequest + Unpin) -> Result<Client, Refused> {
        Client::connect_via(request, None).await
    }

    /// Connects to a `wss://` URL through `tls` (see [`crate::tls::TestCa`]).
    pub async fn connect_tls(
        request: impl IntoClientRequest + Unpin,
        tls: tokio_tungstenite::Connector,
    ) -> Result<Client, Refused> {
        Client::connect_via(request, Some(tls)).await
    }

    async fn connect_via(
        request: impl IntoClientRequest + Unpin,
        tls: Option<tokio_tungstenite::Connector>,
    ) -> Result<Client, Refused> {
        match tokio_tungstenite::connect_async_tls_with_config(request, None, false, tls).await {
            Ok((ws, response)) => Ok(Client {
                ws,
                protocol: response
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            }),
            Err(tungstenite::Error::Http(response)) => {
                let body = response
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err(Refused {
                    status: response.status().as_u16(),
                    body,
                })
            }
            Err(e) => panic!("connection failed without an HTTP answer: {e}"),
        }
    }

    /// Connects with extra request headers.
    pub async fn connect_with_headers(
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Client, Refused> {
        let mut request = url.into_client_request().expect("request");
        for (k, v) in headers {
            request
                .headers_mut()
                .append(*k, HeaderValue::from_str(v).expect("header"));
        }
        Client::connect(request).await
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send(&v.to_string()).await;
    }

    pub async fn join(&mut self, room: &str) -> Value {
        self.send_json(serde_json::json!({"type": "join_room", "room": room}))
            .await;
        self.recv_type("room_info").await
    }

    /// The next JSON frame; pings and pongs are skipped. Panics on close.
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("a valid frame");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("JSON frame"),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Leaves `room` and waits for the ack.
    pub async fn leave(&mut self, room: &str) {
        self.send_json(serde_json::json!({"type": "leave_room", "room": room, "id": "leave"}))
            .await;
        self.recv_type("ack").await;
    }

    /// After a join with `since`: the `new_message` frames replayed before
    /// its `room_info`, and that `room_info`.
    pub async fn replayed_then_info(&mut self) -> (Vec<Value>, Value) {
        let mut replayed = Vec::new();
        loop {
            let v = self.recv().await;
            match v["type"].as_str() {
                Some("new_message") => replayed.push(v),
                Some("room_info") => return (replayed, v),
                _ => {}
            }
        }
    }

    /// Skips frames until one of `kind` arrives.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Reads until the server's close frame; returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("close in time");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) => {
                    return (u16::from(CloseCode::Status), String::new());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Asserts nothing but pings arrives for `ms`.
    pub async fn silent_for(&mut self, ms: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }
}
