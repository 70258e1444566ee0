//! The load generator runs tiny scenarios against a real server and reports
//! what it saw. Nothing here asserts on speed: the figures belong to
//! BENCHMARKS.md, measured with the server and the generator on their own cores.

use std::process::Command;

use roomhub_net::{Clock, Server, ServerConfig};
use serde_json::Value;

const SECRET: &str = "smoke-test-secret";

async fn server() -> Server {
    let mut config = ServerConfig::with_secret(SECRET);
    config.core.rate_limit_per_second = 0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    Server::start(listener, config, Clock::system()).expect("start")
}

/// Runs the generator and returns its JSON line (the last line of stdout).
async fn bench(server: &Server, args: &[&str]) -> Value {
    bench_at(&format!("ws://{}/ws", server.local_addr()), args).await
}

async fn bench_at(url: &str, args: &[&str]) -> Value {
    let url = url.to_string();
    let mut command = Command::new(env!("CARGO_BIN_EXE_roomhub-bench"));
    command
        .args(["--url", &url, "--jwt-secret", SECRET, "--server-pid"])
        .arg(std::process::id().to_string())
        .args(args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run roomhub-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "roomhub-bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout.lines().last().expect("a JSON line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_throughput_run_delivers_everything() {
    let server = server().await;
    let report = bench(
        &server,
        &[
            "throughput",
            "--connections",
            "12",
            "--rooms",
            "3",
            "--senders",
            "3",
            "--rate",
            "50",
            "--warmup",
            "200ms",
            "--duration",
            "1s",
        ],
    )
    .await;
    assert_eq!(report["mode"], "throughput");
    assert_eq!(report["delivery_ratio"], 1.0, "{report}");
    // 3 senders x 50/s x 1 s, each message to the 3 other members of its room.
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent >= 120, "{report}");
    assert_eq!(report["acks"].as_u64(), Some(sent));
    assert_eq!(report["expected"].as_u64(), Some(sent * 3));
    assert_eq!(report["gaps"], 0);
    assert_eq!(report["disconnects"], 0);
    assert!(report["latency_ms"]["samples"].as_u64().unwrap() == sent * 3);
    assert!(report["server_cpu"].as_f64().is_some(), "{report}");
    // Read from the server's /metrics: every write carries at least a frame.
    let per_write = report["server_frames_per_write"].as_f64();
    assert!(per_write.is_some_and(|f| f >= 1.0), "{report}");
    // The server runs in this process, its hub on the `roomhub-hub` thread.
    let hub_share = report["server_hub_share"].as_f64();
    assert!(
        hub_share.is_some_and(|s| (0.0..=1.0).contains(&s)),
        "{report}"
    );
}

/// The cost floor speaks enough of the protocol for the generator (in the
/// seed's join form too, which the peers also speak).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_serves_a_tiny_throughput_run() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut floor = Command::new(env!("CARGO_BIN_EXE_roomhub-floor"))
        .args(["--listen", &listen])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start roomhub-floor");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the floor never listened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let report = bench_at(
        &format!("ws://{listen}/ws"),
        &[
            "throughput",
            "--connections",
            "6",
            "--rooms",
            "2",
            "--senders",
            "2",
            "--rate",
            "20",
            "--warmup",
            "100ms",
            "--duration",
            "500ms",
        ],
    )
    .await;
    let _ = floor.kill();
    let _ = floor.wait();
    assert_eq!(report["delivery_ratio"], 1.0, "{report}");
    assert!(report["sent"].as_u64().unwrap() > 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_storm_recovers_every_member() {
    let server = server().await;
    let report = bench(
        &server,
        &[
            "storm",
            "--connections",
            "20",
            "--rooms",
            "4",
            "--missed",
            "3",
        ],
    )
    .await;
    assert_eq!(report["recovered"], 20, "{report}");
    assert_eq!(report["wrong_replays"], 0);
    assert_eq!(report["failures"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_idle_run_is_counted_online() {
    let server = server().await;
    let report = bench(
        &server,
        &[
            "idle",
            "--connections",
            "30",
            "--rooms",
            "2",
            "--hold",
            "100ms",
        ],
    )
    .await;
    assert_eq!(report["opened"], 30, "{report}");
    assert_eq!(report["online"], 30, "{report}");
    assert!(report["server_bytes_per_connection"].as_f64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_drops_run_delivers_every_acked_message() {
    let server = server().await;
    let report = bench(
        &server,
        &[
            "drops",
            "--clients",
            "40",
            "--rooms",
            "4",
            "--messages",
            "15",
            "--rate",
            "10",
            "--reset-min",
            "300ms",
            "--reset-max",
            "600ms",
            "--offline",
            "200ms",
            "--drain",
            "1s",
        ],
    )
    .await;
    assert_eq!(report["acked"], 60, "{report}");
    assert_eq!(report["delivered"], report["expected"], "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["backwards"], 0, "{report}");
    assert!(report["resets"].as_u64().unwrap() > 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_churn_leaves_no_room_or_connection() {
    let server = server().await;
    let report = bench(
        &server,
        &["churn", "--cycles", "300", "--warmup", "30", "--rooms", "5"],
    )
    .await;
    assert_eq!(report["failures"], 0, "{report}");
    assert_eq!(report["online_after"], 0, "{report}");
    assert_eq!(report["rooms_after"], 0, "{report}");
}
