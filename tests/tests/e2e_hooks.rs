//! Backend hooks through the real server, against a real HTTP backend this
//! test starts on loopback (axum): the connect hook allows, renames and
//! narrows the rooms, denies with its own code, and fails closed on a
//! timeout, an error status or garbage (open with `--hook-fail-open`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use roomhub_tests::server::{Client, TestServer};
use serde_json::{Value, json};

/// What the backend was asked.
type Seen = Arc<Mutex<Vec<Value>>>;

/// The app's connect hook: decides by user id.
async fn connect_hook(State(seen): State<Seen>, Json(body): Json<Value>) -> Response {
    seen.lock().unwrap().push(body.clone());
    match body["user"]["id"].as_str().unwrap_or("") {
        "alice" => {
            Json(json!({"allow": true, "name": "Alice A.", "rooms": ["team-*"]})).into_response()
        }
        "mallory" => {
            Json(json!({"allow": false, "code": "BANNED", "message": "go away"})).into_response()
        }
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Json(json!({"allow": true})).into_response()
        }
        "garbage" => "not json at all".into_response(),
        "odd" => Json(json!({"allow": "yes"})).into_response(),
        "broken" => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
        _ => Json(json!({"allow": true})).into_response(),
    }
}

/// Starts the backend; its address and what it saw.
async fn backend() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/hooks/connect", post(connect_hook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

async fn server(hook: SocketAddr, fail_open: bool) -> TestServer {
    TestServer::start_with(|c| {
        c.hooks.connect = Some(format!("http://{hook}/hooks/connect").parse().unwrap());
        c.hooks.timeout = Duration::from_millis(300);
        c.hooks.fail_open = fail_open;
    })
    .await
}

async fn connect(s: &TestServer, user: &str) -> Result<Client, (u16, Value)> {
    Client::connect(format!("{}?token={}", s.url(), s.token(user)))
        .await
        .map_err(|r| (r.status, r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_hook_allows_renames_narrows_and_denies() {
    let (hook, seen) = backend().await;
    let s = server(hook, false).await;

    let mut alice = connect(&s, "alice").await.expect("alice is allowed");
    let info = alice.join("team-1").await;
    assert_eq!(
        info["payload"]["users"],
        json!([{"id": "alice", "name": "Alice A."}])
    );
    alice
        .send_json(json!({"type": "join_room", "room": "lobby", "id": "j"}))
        .await;
    assert_eq!(alice.recv().await["payload"]["code"], "FORBIDDEN");
    let asked = seen.lock().unwrap()[0].clone();
    assert_eq!(asked["hook"], "connect");
    assert_eq!(asked["user"], json!({"id": "alice", "name": "alice"}));
    assert!(
        asked["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );

    let (status, body) = connect(&s, "mallory")
        .await
        .err()
        .expect("mallory is refused");
    assert_eq!(
        (status, body["code"].as_str(), body["error"].as_str()),
        (403, Some("BANNED"), Some("go away"))
    );

    // Anyone else: as the token says.
    let mut bob = connect(&s, "bob").await.expect("bob is allowed");
    bob.join("lobby").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_connect_hook_fails_closed_or_open() {
    let (hook, _) = backend().await;
    let closed = server(hook, false).await;
    for user in ["slow", "garbage", "odd", "broken"] {
        let (status, body) = connect(&closed, user)
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} got in"));
        assert_eq!(
            (status, body["code"].as_str()),
            (503, Some("UNAVAILABLE")),
            "{user}: {body}"
        );
    }
    // Nothing listens there: refused as unavailable too.
    let nowhere = TestServer::start_with(|c| {
        c.hooks.connect = Some("http://127.0.0.1:9/hooks/connect".parse().unwrap());
        c.hooks.timeout = Duration::from_millis(300);
    })
    .await;
    assert_eq!(connect(&nowhere, "bob").await.err().map(|e| e.0), Some(503));

    let open = server(hook, true).await;
    for user in ["slow", "garbage", "odd", "broken"] {
        let mut c = connect(&open, user)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e:?}"));
        c.join("lobby").await;
    }
    // A refusal is still a refusal when failing open.
    assert_eq!(
        connect(&open, "mallory").await.err().map(|e| e.0),
        Some(403)
    );
}
