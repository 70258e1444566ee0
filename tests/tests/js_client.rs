//! `roomhub.js`, the JavaScript client the server serves at `/roomhub.js`,
//! driven by Node (its built-in WebSocket) against a real server: joins,
//! messages, typing, presence, a dropped link that reconnects on its own and
//! recovers with `since` without duplicates, direct messages, errors, and an
//! expired token that never reconnects in a loop (`tests/js/client.mjs`).

use std::process::Command;
use std::time::Duration;

use roomhub_net::Clock;
use roomhub_net::dev::{TokenSpec, mint_token};
use roomhub_tests::server::{SECRET, TestServer, token_for};

const MODULE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../net/assets/roomhub.js");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/js/client.mjs");

/// Whether Node with a built-in WebSocket is here. Skipped (with a note)
/// where it is not, even under CI: Debian's own nodejs (18) has none, and the
/// browser test, which `.ci/run` provides for, covers the module in CI.
fn node_available() -> bool {
    let here = node().is_some();
    if !here {
        eprintln!("SKIPPED: no node with a built-in WebSocket (node 20.10+)");
    }
    here
}

/// Node with a built-in WebSocket (20 with the flag, 22+ without), if any.
fn node() -> Option<()> {
    let probe = Command::new("node")
        .args([
            "--experimental-websocket",
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ])
        .output()
        .ok()?;
    probe.status.success().then_some(())
}

#[tokio::test]
async fn the_javascript_client_recovers_a_dropped_link_without_duplicates() {
    let server = TestServer::start_with(|c| c.api_key = Some("js-api-key".into())).await;
    let (status, served) = server.get("/roomhub.js").await;
    assert_eq!(status, 200);
    assert_eq!(
        served,
        std::fs::read_to_string(MODULE).unwrap(),
        "the binary serves the module"
    );
    if !node_available() {
        return;
    }
    let spec = TokenSpec {
        user: "late".into(),
        ..TokenSpec::default()
    };
    let an_hour_ago = Clock::system().unix_seconds() - 3600;
    let expired = mint_token(SECRET, &spec, Duration::from_secs(60), an_hour_ago);
    let module = format!(
        "file://{}",
        std::fs::canonicalize(MODULE).unwrap().display()
    );
    let url = server.url();
    let alice = token_for("alice", Duration::from_secs(3600));
    let bob = token_for("bob", Duration::from_secs(3600));
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("--experimental-websocket")
            .arg(SCRIPT)
            .args([&module, &url, &alice, &bob, &expired, "js-api-key"])
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "node said:\n{stdout}\n{stderr}"
    );
}

#[tokio::test]
async fn the_demo_page_is_served_only_when_enabled_and_logs_in_by_name() {
    let plain = TestServer::start().await;
    assert_eq!(plain.get("/").await.0, 404);
    let post = |addr, body: &'static str| {
        roomhub_tests::server::http_post(addr, "/demo/token", None, body)
    };
    assert_eq!(post(plain.addr, r#"{"name":"Ann"}"#).await.0, 404);

    let demo = TestServer::start_with(|c| {
        c.demo = true;
        c.demo_token_secret = Some(SECRET.to_string());
    })
    .await;
    let (status, page) = demo.get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains(r#"import { RoomhubClient } from "/roomhub.js""#));
    assert_eq!(post(demo.addr, r#"{"name":""}"#).await.0, 400);
    let (status, body) = post(demo.addr, r#"{"name":"Ann Lee"}"#).await;
    assert_eq!(status, 200, "{body}");
    let token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ann = roomhub_tests::server::Client::connect(format!("{}?token={token}", demo.url()))
        .await
        .expect("the minted token works");
    let info = ann.join("general").await;
    assert_eq!(
        info["payload"]["users"],
        serde_json::json!([{"id": "ann lee", "name": "Ann Lee"}])
    );
}

/// The seed's `WebSocketClient` (seed 002), read from `../shared/seeds`.
#[tokio::test]
async fn the_seeds_own_javascript_client_works_against_roomhub() {
    if !node_available() {
        return;
    }
    let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/seeds");
    let seed = std::fs::read_dir(seeds)
        .expect("../shared/seeds beside the checkout")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("002_"))
        })
        .expect("seed 002");
    let server = TestServer::start().await;
    let url = server.url();
    let alice = token_for("alice", Duration::from_secs(3600));
    let bob = token_for("bob", Duration::from_secs(3600));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/js/seed_client.mjs");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("--experimental-websocket")
            .arg(script)
            .arg(seed)
            .args([&url, &alice, &bob])
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "node said:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
