//! The `roomhub` binary as a user runs it: development mode with its printed
//! wscat line, `roomhub token`, `--help`, and SIGTERM ending in close 1001
//! for every client and exit status 0.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_roomhub");

/// A private redis-server per test (shared with the roomhub-tests crate).
#[path = "../../tests/src/redis.rs"]
#[allow(dead_code)]
mod redis;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch working directory per test, so dev secrets do not mix.
fn workdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("roomhub-bin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Running {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &std::path::Path, args: &[&str]) -> Running {
    // The server's log goes to a file in the test's directory, for failures.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("log file");
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("ROOMHUB_JWT_SECRET")
        // The default filter (info), which a config file may change.
        .env_remove("ROOMHUB_LOG")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn roomhub");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    Running { child, stdout }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "roomhub did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn development_mode_prints_a_working_wscat_line_and_token_minting_matches() {
    let dir = workdir("dev");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = start(&dir, &["--listen", &listen]);
    let mut wscat = None;
    for line in (&mut server.stdout).lines().take(20) {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("wscat -c '") {
            wscat = Some(rest.trim_end_matches('\'').to_string());
            break;
        }
    }
    let url = wscat.expect("a wscat line on stdout");
    assert!(url.starts_with(&format!("ws://{listen}/ws?token=")));
    // Development mode serves the demo chat, and says where.
    let demo_line = (&mut server.stdout)
        .lines()
        .take(10)
        .map_while(Result::ok)
        .find(|l| l.contains("demo chat"));
    assert!(
        demo_line.is_some_and(|l| l.contains(&format!("http://{listen}/"))),
        "a demo line on stdout"
    );
    let minted = Command::new(BIN)
        .args(["token", "--user", "bob", "--name", "Bob", "--ttl", "10m"])
        .current_dir(&dir)
        .env_remove("ROOMHUB_JWT_SECRET")
        .output()
        .unwrap();
    assert!(minted.status.success());
    let bob_token = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    wait_for_port(port);
    assert!(
        get_ok(port, "/"),
        "the demo page is served in development mode"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (mut alice, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("printed token works");
        let bob_url = format!("ws://{listen}/ws?token={bob_token}");
        let (mut bob, _) = tokio_tungstenite::connect_async(bob_url.as_str())
            .await
            .expect("minted token works");
        for ws in [&mut bob, &mut alice] {
            ws.send(Message::text(r#"{"type":"join_room","room":"general"}"#))
                .await
                .unwrap();
            next_of_type(ws, "room_info").await;
        }
        alice
            .send(Message::text(
                r#"{"type":"send_message","room":"general","payload":{"content":"Hello!"}}"#,
            ))
            .await
            .unwrap();
        let v = next_of_type(&mut bob, "new_message").await;
        assert_eq!(v["sender"]["name"], "Alice");
        assert_eq!(v["payload"]["content"], "Hello!");
    });
    std::fs::remove_dir_all(dir).ok();
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_of_type(ws: &mut Ws, kind: &str) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = msg {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if v["type"] == kind {
                return v;
            }
        }
    }
}

/// The code of the close frame that ends `ws` (within 10 s).
async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    }
}

/// Waits (at most 15 s) for the server to exit after a SIGTERM.
fn exited(server: &mut Running) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "roomhub did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let dir = workdir("sigterm");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = start(&dir, &["--listen", &listen, "--jwt-secret", "s3cret"]);
    wait_for_port(port);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut clients = Vec::new();
        for user in ["a", "b", "c"] {
            clients.push(joining_g(&listen, user, "s3cret").await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        signal(&server, "-TERM");
        for ws in &mut clients {
            assert_eq!(close_code(ws).await, 1001);
        }
    });
    assert_eq!(exited(&mut server).code(), Some(0));
    std::fs::remove_dir_all(dir).ok();
}

/// On SIGTERM, `/readyz` answers 503 at once while connections keep
/// working (`/healthz`, the liveness check, stays 200); the 1001 closes
/// come only after `--shutdown-delay-ms`.
#[test]
fn sigterm_turns_unready_before_the_1001_closes() {
    let dir = workdir("readyz");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = start(
        &dir,
        &[
            "--listen",
            &listen,
            "--jwt-secret",
            "s3cret",
            "--shutdown-delay-ms",
            "1500",
        ],
    );
    wait_for_port(port);
    assert!(readyz_ok(port), "ready once serving");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ws = joining_g(&listen, "a", "s3cret").await;
        next_of_type(&mut ws, "room_info").await;
        signal(&server, "-TERM");
        let signalled = Instant::now();
        while readyz_ok(port) {
            assert!(
                signalled.elapsed() < Duration::from_secs(1),
                "/readyz still 200 a second after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let unready = signalled.elapsed();
        assert!(get_ok(port, "/healthz"), "alive while draining");
        // Still served: a request gets its answer, and no close yet.
        ws.send(Message::text(
            r#"{"type":"online_users","room":"g","id":"q"}"#,
        ))
        .await
        .unwrap();
        next_of_type(&mut ws, "ack").await;
        let code = close_code(&mut ws).await;
        let closed = signalled.elapsed();
        assert_eq!(code, 1001);
        assert!(
            unready < closed && closed >= Duration::from_millis(1400),
            "unready after {unready:?}, closed after {closed:?}"
        );
    });
    exited(&mut server);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn help_documents_the_fixed_flags_and_their_variables() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "ROOMHUB_LISTEN",
        "--jwt-secret",
        "ROOMHUB_JWT_SECRET",
        "--jwt-public-key",
        "ROOMHUB_JWT_PUBLIC_KEY",
        "--allowed-origins",
        "ROOMHUB_ALLOWED_ORIGINS",
        "--max-connections",
        "ROOMHUB_MAX_CONNECTIONS",
        "--rate-limit-per-second",
        "ROOMHUB_RATE_LIMIT_PER_SECOND",
        "--rate-limit-burst",
        "ROOMHUB_RATE_LIMIT_BURST",
        "--config",
        "127.0.0.1:8080",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
}

#[test]
fn refuses_a_public_address_without_a_configured_secret() {
    let dir = workdir("public");
    let out = Command::new(BIN)
        .args(["--listen", "0.0.0.0:0"])
        .current_dir(&dir)
        .env_remove("ROOMHUB_JWT_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(dir).ok();
}

/// Connects and rejoins room `g` from `offset` in `epoch`.
async fn rejoin(url: &str, offset: u64, epoch: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let join = format!(
        r#"{{"type":"join_room","payload":{{"room_id":"g","since":{{"offset":{offset},"epoch":"{epoch}"}}}}}}"#
    );
    ws.send(Message::text(join)).await.unwrap();
    ws
}

/// `--io-threads 2`: the hub on `roomhub-hub`, sockets on `roomhub-io-0`
/// and `roomhub-io-1`, and no third I/O thread; a client is served.
#[test]
fn io_threads_are_named_and_counted_as_asked() {
    let dir = workdir("threads");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--listen",
        &listen,
        "--jwt-secret",
        "t",
        "--memory",
        "--io-threads",
        "2",
    ];
    let server = start(&dir, &args);
    wait_for_port(port);
    let pid = server.child.id();
    let threads = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_string())
            .collect()
    };
    // The port opens as the threads start: wait until the hub's is there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut names = threads();
    while !names.iter().any(|n| n == "roomhub-hub") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        names = threads();
    }
    for expected in ["roomhub-hub", "roomhub-io-0", "roomhub-io-1"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    assert!(!names.iter().any(|n| n == "roomhub-io-2"), "{names:?}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ws = joining_g(&listen, "t1", "t").await;
        next_of_type(&mut ws, "room_info").await;
    });
    std::fs::remove_dir_all(dir).ok();
}

/// Connects `user` to the server at `listen` and asks to join room `g`.
async fn joining_g(listen: &str, user: &str, secret: &str) -> Ws {
    let url = format!("ws://{listen}/ws?token={}", token_for(user, secret));
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    ws.send(Message::text(r#"{"type":"join_room","room":"g"}"#))
        .await
        .unwrap();
    ws
}

fn token_for(user: &str, secret: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "--user", user, "--jwt-secret", secret])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The default durability (`--fsync background`): acked means in the
/// store's journal, which a killed process cannot take back.
#[test]
fn acked_messages_survive_kill_9_and_a_lost_data_directory_changes_the_epoch() {
    acked_messages_survive_kill_9("kill9", &[]);
}

/// `--fsync always`: acked means synced to disk.
#[test]
fn acked_messages_survive_kill_9_with_fsync_always() {
    acked_messages_survive_kill_9("kill9-always", &["--fsync", "always"]);
}

fn acked_messages_survive_kill_9(name: &str, extra: &[&str]) {
    const N: u64 = 50;
    let dir = workdir(name);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data = dir.join("data");
    let data_arg = data.to_str().unwrap().to_string();
    let mut args = vec![
        "--listen",
        &listen,
        "--jwt-secret",
        "k9",
        "--rate-limit-per-second",
        "0",
        "--data-dir",
        &data_arg,
    ];
    args.extend_from_slice(extra);
    let mut server = start(&dir, &args);
    wait_for_port(port);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = |user: &str| format!("ws://{listen}/ws?token={}", token_for(user, "k9"));
    let epoch = rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url("writer").as_str()).await.unwrap();
        ws.send(Message::text(r#"{"type":"join_room","room":"g"}"#)).await.unwrap();
        let info = next_of_type(&mut ws, "room_info").await;
        for i in 1..=N {
            let frame = format!(r#"{{"type":"send_message","room":"g","id":"{i}","payload":{{"content":"durable {i}"}}}}"#);
            ws.send(Message::text(frame)).await.unwrap();
        }
        for i in 1..=N {
            let ack = next_of_type(&mut ws, "ack").await;
            assert_eq!(ack["payload"]["offset"], i);
        }
        info["payload"]["epoch"].as_str().unwrap().to_string()
    });
    // Every message was acked, so every one must survive a SIGKILL.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let _restarted = start(&dir, &args);
    wait_for_port(port);
    rt.block_on(async {
        let mut ws = rejoin(&url("reader"), 0, &epoch).await;
        for i in 1..=N {
            let m = next_of_type(&mut ws, "new_message").await;
            assert_eq!(
                (m["offset"].as_u64(), m["payload"]["content"].as_str()),
                (Some(i), Some(format!("durable {i}").as_str()))
            );
        }
        let info = next_of_type(&mut ws, "room_info").await;
        assert_eq!(info["payload"]["recovered"], true);
        assert_eq!(info["payload"]["epoch"], epoch.as_str());
        assert_eq!(info["payload"]["offset"], N);
    });
    drop(_restarted);
    // The data directory is lost: a new lineage, and the client is told so.
    std::fs::remove_dir_all(&data).unwrap();
    let _fresh = start(&dir, &args);
    wait_for_port(port);
    rt.block_on(async {
        let mut ws = rejoin(&url("reader"), N, &epoch).await;
        let info = next_of_type(&mut ws, "room_info").await;
        assert_eq!(info["payload"]["recovered"], false);
        assert_ne!(info["payload"]["epoch"], epoch.as_str());
    });
    std::fs::remove_dir_all(dir).ok();
}

fn online(port: u16) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /ws/online HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str::<serde_json::Value>(body).unwrap()["online"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_cluster_node_killed_with_sigkill_leaves_no_ghosts() {
    let Some(redis) = redis::RedisServer::start() else {
        return;
    };
    let dir = workdir("cluster-kill9");
    let secret = "cluster-secret";
    let ports = [free_port(), free_port()];
    let mut nodes: Vec<Running> = ports
        .iter()
        .map(|port| {
            let listen = format!("127.0.0.1:{port}");
            let args = [
                "--listen",
                &listen,
                "--jwt-secret",
                secret,
                "--redis",
                &redis.url(),
                "--node-ttl-ms",
                "1000",
            ];
            start(&dir, &args)
        })
        .collect();
    for port in ports {
        wait_for_port(port);
        let deadline = Instant::now() + Duration::from_secs(10);
        // Healthy once its broker session is up.
        while !readyz_ok(port) {
            assert!(Instant::now() < deadline, "node never healthy");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = |port: u16, user: &str| {
            format!("ws://127.0.0.1:{port}/ws?token={}", token_for(user, secret))
        };
        let (mut alice, _) = tokio_tungstenite::connect_async(url(ports[0], "alice"))
            .await
            .unwrap();
        alice
            .send(Message::text(r#"{"type":"join_room","room":"g"}"#))
            .await
            .unwrap();
        next_of_type(&mut alice, "room_info").await;
        let (mut bob, _) = tokio_tungstenite::connect_async(url(ports[1], "bob"))
            .await
            .unwrap();
        bob.send(Message::text(r#"{"type":"join_room","room":"g"}"#))
            .await
            .unwrap();
        let info = next_of_type(&mut bob, "room_info").await;
        assert_eq!(info["payload"]["count"], 2);
        assert_eq!(
            next_of_type(&mut alice, "user_joined").await["payload"]["id"],
            "bob"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while online(ports[0]) != 2 {
            assert!(
                Instant::now() < deadline,
                "/ws/online never counted both nodes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // No goodbye from bob's node: its liveness has to run out.
        let killed = Instant::now();
        let mut bob_node = nodes.pop().unwrap();
        bob_node.child.kill().unwrap();
        bob_node.child.wait().unwrap();
        let left = next_of_type(&mut alice, "user_left").await;
        assert_eq!(left["payload"]["id"], "bob");
        eprintln!(
            "user_left {} ms after SIGKILL",
            killed.elapsed().as_millis()
        );
        while online(ports[0]) != 1 {
            assert!(Instant::now() < deadline, "/ws/online kept the dead node");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        alice
            .send(Message::text(r#"{"type":"online_users","room":"g"}"#))
            .await
            .unwrap();
        let list = next_of_type(&mut alice, "online_users").await;
        assert_eq!(list["payload"]["count"], 1);
        drop(bob);
    });
    drop(nodes);
    std::fs::remove_dir_all(dir).ok();
}

fn readyz_ok(port: u16) -> bool {
    get_ok(port, "/readyz")
}

/// Whether `GET path` answers 200.
fn get_ok(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.starts_with("HTTP/1.1 200")
}

/// The status of a WebSocket upgrade to `listen` by `user` from `origin`.
async fn upgrade_status(listen: &str, user: &str, origin: &str) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("ws://{listen}/ws?token={}", token_for(user, "s3cret"));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("no HTTP answer: {e}"),
    }
}

/// Sends `sig` (`-TERM`, `-HUP`) to the server.
fn signal(server: &Running, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (at most 10 s) until the server's log contains `needle`.
async fn logged(dir: &std::path::Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log_of(dir).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "never logged {needle:?}:\n{}",
            log_of(dir)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The lines of the server's log so far.
fn log_of(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

/// SIGHUP reads the config file again: a new allowed origin works at once
/// while the connection opened before stays open; a file that does not
/// resolve is refused with its reason in the log and the configuration in
/// force stays; a setting that needs a restart is said to.
#[test]
fn sighup_reloads_the_config_file_without_dropping_connections() {
    let dir = workdir("sighup");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let file = dir.join("roomhub.toml");
    let write = |text: &str| std::fs::write(&file, text).unwrap();
    write("allowed-origins = [\"https://a.example\"]\njwt-secret = \"s3cret\"\n");
    let server = start(
        &dir,
        &[
            "--listen",
            &listen,
            "--config",
            file.to_str().unwrap(),
            "--memory",
        ],
    );
    wait_for_port(port);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        assert_eq!(upgrade_status(&listen, "a", "https://a.example").await, 101);
        assert_eq!(upgrade_status(&listen, "b", "https://b.example").await, 403);
        let mut old = joining_g(&listen, "old", "s3cret").await;
        next_of_type(&mut old, "room_info").await;

        write("allowed-origins = [\"https://a.example\", \"https://b.example\"]\njwt-secret = \"s3cret\"\nnode-ttl-ms = 5000\n");
        signal(&server, "-HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        while upgrade_status(&listen, "b", "https://b.example").await != 101 {
            assert!(Instant::now() < deadline, "the new origin never worked:\n{}", log_of(&dir));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = log_of(&dir);
        assert!(log.contains("configuration reloaded"), "{log}");
        assert!(
            log.contains(r#"changed=["allowed-origins"]"#)
                && log.contains(r#"needs_restart=["node-ttl-ms"]"#),
            "{log}"
        );
        // The connection from before is open and served.
        old.send(Message::text(r#"{"type":"online_users","room":"g","id":"q1"}"#))
            .await
            .unwrap();
        next_of_type(&mut old, "ack").await;

        // An invalid file: refused, logged with the reason; nothing changes.
        write("allowed-origins = [\"https://a.example\"]\njwt-secret = \"s3cret\"\nmax-connections = \"lots\"\n");
        signal(&server, "-HUP");
        logged(&dir, "reload refused").await;
        let log = log_of(&dir);
        assert!(log.contains("max-connections") || log.contains("lots"), "{log}");
        assert_eq!(upgrade_status(&listen, "c", "https://b.example").await, 101);
        old.send(Message::text(r#"{"type":"online_users","room":"g","id":"q2"}"#))
            .await
            .unwrap();
        next_of_type(&mut old, "ack").await;

        // The log filter changes live too: new connections of the quieted
        // module are no longer logged.
        write("allowed-origins = [\"https://a.example\", \"https://b.example\"]\njwt-secret = \"s3cret\"\nlog = \"info,roomhub_net::http::ws=warn\"\n");
        signal(&server, "-HUP");
        logged(&dir, r#"changed=["log"]"#).await;
        assert_eq!(upgrade_status(&listen, "quiet", "https://a.example").await, 101);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let log = log_of(&dir);
        let connected = |user: &str| {
            log.lines()
                .any(|l| l.contains("http::ws: connected") && l.ends_with(&format!("user={user}")))
        };
        assert!(connected("old") && !connected("quiet"), "{log}");
    });
    drop(server);
    std::fs::remove_dir_all(dir).ok();
}
