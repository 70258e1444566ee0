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
    let server = TestServer::start().await;
    let (status, served) = server.get("/roomhub.js").await;
    assert_eq!(status, 200);
    assert_eq!(
        served,
        std::fs::read_to_string(MODULE).unwrap(),
        "the binary serves the module"
    );
    if node().is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "node with WebSocket is missing under CI=true"
        );
        eprintln!("SKIPPED: no node with a built-in WebSocket");
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
            .args([&module, &url, &alice, &bob, &expired])
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
