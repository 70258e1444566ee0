//! Backend hooks through the real server, against a real HTTP backend this
//! test starts on loopback (axum): the connect hook allows, renames and
//! narrows the rooms, denies with its own code, and fails closed on a
//! timeout, an error status or garbage (open with `--hook-fail-open`); the
//! join hook allows or denies with the app's code; the publish hook allows,
//! replaces or denies; a slow hook holds up only its own connection.

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

async fn join_hook(Json(body): Json<Value>) -> Response {
    match body["room"].as_str().unwrap_or("") {
        "vip" => Json(json!({"allow": false, "code": "NOT_INVITED", "message": "ask an admin"}))
            .into_response(),
        "slow-room" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Json(json!({"allow": true})).into_response()
        }
        "garbage-room" => "<html>".into_response(),
        _ => Json(json!({"allow": true})).into_response(),
    }
}

async fn publish_hook(Json(body): Json<Value>) -> Response {
    let content = body["payload"]["content"].as_str().unwrap_or("");
    if content == "spam" {
        Json(json!({"allow": false, "code": "SPAM", "message": "not here"})).into_response()
    } else if let Some(rest) = content.strip_prefix("shout:") {
        Json(json!({"allow": true, "payload": {"content": rest.to_uppercase()}})).into_response()
    } else if content == "slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Json(json!({"allow": true})).into_response()
    } else if content == "bad replace" {
        Json(json!({"allow": true, "payload": {"content": 42}})).into_response()
    } else {
        Json(json!({"allow": true})).into_response()
    }
}

/// Starts the backend; its address and what it saw.
async fn backend() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/hooks/connect", post(connect_hook))
        .route("/hooks/join", post(join_hook))
        .route("/hooks/publish", post(publish_hook))
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

async fn hooked(hook: SocketAddr) -> TestServer {
    TestServer::start_with(|c| {
        c.hooks.join = Some(format!("http://{hook}/hooks/join").parse().unwrap());
        c.hooks.publish = Some(format!("http://{hook}/hooks/publish").parse().unwrap());
        c.hooks.timeout = Duration::from_millis(2000);
        c.core.rate_limit_per_second = 0;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_and_publish_hooks_decide_and_a_slow_one_holds_up_only_its_connection() {
    let (hook, _) = backend().await;
    let s = hooked(hook).await;
    let mut alice = s.member("alice", "lobby").await;
    let mut bob = s.member("bob", "lobby").await;
    alice.recv_type("user_joined").await;

    // Join: denied with the app's code; garbage fails closed.
    bob.send_json(json!({"type": "join_room", "room": "vip", "id": "j1"}))
        .await;
    let e = bob.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["id"].as_str()),
        (Some("error"), Some("j1"))
    );
    assert_eq!(
        e["payload"],
        json!({"code": "NOT_INVITED", "message": "ask an admin"})
    );
    bob.send_json(json!({"type": "join_room", "room": "garbage-room", "id": "j2"}))
        .await;
    assert_eq!(bob.recv().await["payload"]["code"], "UNAVAILABLE");

    // Publish: allowed, replaced, denied (with the app's code), garbage.
    for (text, id) in [
        ("hello", "m1"),
        ("shout:hey", "m2"),
        ("spam", "m3"),
        ("bad replace", "m4"),
    ] {
        alice
            .send_json(json!({"type": "send_message", "room": "lobby", "id": id, "payload": {"content": text}}))
            .await;
    }
    assert_eq!(alice.recv().await["id"], "m1");
    assert_eq!(alice.recv().await["id"], "m2");
    let spam = alice.recv().await;
    assert_eq!(
        (spam["id"].as_str(), spam["payload"]["code"].as_str()),
        (Some("m3"), Some("SPAM"))
    );
    let bad = alice.recv().await;
    assert_eq!(
        (bad["id"].as_str(), bad["payload"]["code"].as_str()),
        (Some("m4"), Some("UNAVAILABLE"))
    );
    assert_eq!(
        bob.recv_type("new_message").await["payload"]["content"],
        "hello"
    );
    assert_eq!(
        bob.recv_type("new_message").await["payload"]["content"],
        "HEY"
    );

    // A slow join hook (1.5 s) for alice: bob's requests go on meanwhile.
    alice
        .send_json(json!({"type": "join_room", "room": "slow-room", "id": "slow"}))
        .await;
    bob.send_json(json!({"type": "send_message", "room": "lobby", "id": "b1", "payload": {"content": "meanwhile"}}))
        .await;
    assert_eq!(bob.recv_type("ack").await["id"], "b1");
    // Alice's next request waits behind her pending join: the message bob
    // sent comes first, then her join's answer.
    let first = alice.recv().await;
    assert_eq!(first["payload"]["content"], "meanwhile", "{first}");
    let info = alice.recv_type("room_info").await;
    assert_eq!(info["payload"]["room_id"], "slow-room");
    assert_eq!(alice.recv().await["id"], "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_garbled_join_and_publish_hooks_fail_closed_or_open() {
    let (hook, _) = backend().await;
    for fail_open in [false, true] {
        let s = TestServer::start_with(|c| {
            c.hooks.join = Some(format!("http://{hook}/hooks/join").parse().unwrap());
            c.hooks.publish = Some(format!("http://{hook}/hooks/publish").parse().unwrap());
            c.hooks.timeout = Duration::from_millis(300);
            c.hooks.fail_open = fail_open;
            c.core.rate_limit_per_second = 0;
        })
        .await;
        let mut alice = s.member("alice", "lobby").await;
        for room in ["slow-room", "garbage-room"] {
            alice
                .send_json(json!({"type": "join_room", "room": room, "id": room}))
                .await;
            let answer = alice.recv().await;
            if fail_open {
                assert_eq!(answer["type"], "room_info", "{room}: {answer}");
                assert_eq!(alice.recv().await["id"], room);
            } else {
                assert_eq!(answer["payload"]["code"], "UNAVAILABLE", "{room}: {answer}");
                assert_eq!(answer["id"], room);
            }
        }
        for text in ["slow", "bad replace"] {
            alice
                .send_json(json!({"type": "send_message", "room": "lobby", "id": text, "payload": {"content": text}}))
                .await;
            let answer = alice.recv().await;
            assert_eq!(answer["id"], text, "{answer}");
            if fail_open {
                assert_eq!(answer["type"], "ack", "{text}: {answer}");
            } else {
                assert_eq!(answer["payload"]["code"], "UNAVAILABLE", "{text}: {answer}");
            }
        }
        // A refusal is obeyed either way.
        alice
            .send_json(json!({"type": "join_room", "room": "vip", "id": "v"}))
            .await;
        assert_eq!(alice.recv().await["payload"]["code"], "NOT_INVITED");
    }
}
