//! `refresh` through the real server: a token about to expire is replaced
//! on the same connection (which then outlives the old expiry and closes at
//! the new one), a narrower `rooms` claim takes the connection out of rooms
//! it may no longer be in, and a bad, expired or foreign token changes
//! nothing.

use std::time::Duration;

use roomhub_net::Clock;
use roomhub_net::dev::{TokenSpec, mint_token};
use roomhub_tests::server::{Client, SECRET, TestServer, token_for};
use serde_json::{Value, json};

fn token(user: &str, rooms: &[&str], ttl_secs: u64) -> String {
    let spec = TokenSpec {
        user: user.into(),
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
        ..TokenSpec::default()
    };
    mint_token(
        SECRET,
        &spec,
        Duration::from_secs(ttl_secs),
        Clock::system().unix_seconds(),
    )
}

async fn connect(s: &TestServer, token: &str) -> Client {
    Client::connect(format!("{}?token={token}", s.url()))
        .await
        .expect("connect")
}

async fn refresh(c: &mut Client, id: &str, token: &str) -> Value {
    c.send_json(json!({"type": "refresh", "id": id, "payload": {"token": token}}))
        .await;
    c.recv().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_token_keeps_the_connection_past_the_old_expiry() {
    let s = TestServer::start().await;
    let mut alice = connect(&s, &token("alice", &[], 2)).await;
    alice.join("g").await;
    let ack = refresh(&mut alice, "r1", &token("alice", &[], 4)).await;
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_str()),
        (Some("ack"), Some("r1")),
        "{ack}"
    );
    // Past the old expiry (2 s, plus the second the `exp` claim rounds to):
    // still connected, and still a member.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    alice
        .send_json(json!({"type": "online_users", "room": "g", "id": "alive"}))
        .await;
    assert_eq!(alice.recv_type("ack").await["id"], "alive");
    // The new expiry closes it as the old one would have.
    let (code, reason) = alice.closed().await;
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrower_rooms_claim_leaves_the_rooms_it_no_longer_allows() {
    let s = TestServer::start().await;
    let mut alice = connect(&s, &token("alice", &["team-*", "lobby"], 3600)).await;
    alice.join("team-a").await;
    alice.join("lobby").await;
    let mut bob = s.member("bob", "lobby").await;
    alice.recv_type("user_joined").await;
    let left = refresh(&mut alice, "r", &token("alice", &["team-*"], 3600)).await;
    assert_eq!(left["type"], "room_left", "{left}");
    assert_eq!(left["payload"]["room_id"], "lobby");
    assert_eq!(alice.recv().await["type"], "ack");
    let left = bob.recv_type("user_left").await;
    assert_eq!(
        (left["room"].as_str(), left["payload"]["id"].as_str()),
        (Some("lobby"), Some("alice"))
    );
    // Out of lobby, refused back in, still in team-a.
    alice
        .send_json(json!({"type": "send_message", "room": "lobby", "id": "m", "payload": {"content": "x"}}))
        .await;
    assert_eq!(alice.recv().await["payload"]["code"], "NOT_IN_ROOM");
    alice
        .send_json(json!({"type": "join_room", "room": "lobby", "id": "j"}))
        .await;
    assert_eq!(alice.recv().await["payload"]["code"], "FORBIDDEN");
    alice
        .send_json(json!({"type": "send_message", "room": "team-a", "id": "m2", "payload": {"content": "still here"}}))
        .await;
    assert_eq!(alice.recv_type("ack").await["id"], "m2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expired_or_foreign_tokens_are_refused_and_change_nothing() {
    let s = TestServer::start().await;
    let mut alice = connect(&s, &token("alice", &["g"], 3600)).await;
    alice.join("g").await;
    let expired = mint_token(
        SECRET,
        &TokenSpec {
            user: "alice".into(),
            ..TokenSpec::default()
        },
        Duration::from_secs(10),
        Clock::system().unix_seconds() - 3600,
    );
    let wrong_key = mint_token(
        "not-the-secret",
        &TokenSpec {
            user: "alice".into(),
            ..TokenSpec::default()
        },
        Duration::from_secs(60),
        Clock::system().unix_seconds(),
    );
    for (id, bad, code) in [
        ("1", expired.as_str(), "INVALID_TOKEN"),
        ("2", wrong_key.as_str(), "INVALID_TOKEN"),
        ("3", "not.a.jwt", "INVALID_TOKEN"),
        (
            "4",
            &token_for("mallory", Duration::from_secs(3600)),
            "FORBIDDEN",
        ),
    ] {
        let e = refresh(&mut alice, id, bad).await;
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(
            (e["id"].as_str(), e["payload"]["code"].as_str()),
            (Some(id), Some(code)),
            "{e}"
        );
    }
    alice
        .send_json(json!({"type": "refresh", "id": "5", "payload": {"token": 42}}))
        .await;
    assert_eq!(alice.recv().await["payload"]["code"], "INVALID_PAYLOAD");
    // Still alice, still in g, still allowed only g.
    alice
        .send_json(
            json!({"type": "send_message", "room": "g", "id": "m", "payload": {"content": "hi"}}),
        )
        .await;
    assert_eq!(alice.recv_type("ack").await["id"], "m");
    alice
        .send_json(json!({"type": "join_room", "room": "elsewhere", "id": "j"}))
        .await;
    assert_eq!(alice.recv().await["payload"]["code"], "FORBIDDEN");
}
