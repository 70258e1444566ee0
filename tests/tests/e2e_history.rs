//! `history` through the real server on each single-node engine: in
//! memory, and on the durable store across a restart (a fresh join sees
//! what was said before it came, and before the server restarted).

use roomhub_tests::server::{Client, TestServer};
use serde_json::{Value, json};

async fn page(c: &mut Client, room: &str, payload: Value) -> Value {
    c.send_json(json!({"type": "history", "room": room, "id": "h", "payload": payload}))
        .await;
    let page = c.recv_type("history").await;
    let ack = c.recv().await;
    assert_eq!(
        (ack["type"].as_str(), ack["id"].as_str()),
        (Some("ack"), Some("h"))
    );
    page
}

fn contents(page: &Value) -> Vec<String> {
    roomhub_tests::contents(&page["payload"]["messages"])
}

async fn say_all(c: &mut Client, room: &str, texts: &[&str]) {
    for (i, text) in texts.iter().enumerate() {
        c.send_json(json!({"type": "send_message", "room": room, "id": format!("s{i}"), "payload": {"content": text}}))
            .await;
        c.recv_type("ack").await;
    }
}

#[tokio::test]
async fn a_fresh_member_pages_through_history_in_memory_mode() {
    let server = TestServer::start_with(|c| {
        c.data_dir = None;
        c.core.rate_limit_per_second = 0;
    })
    .await;
    let mut alice = server.member("alice", "general").await;
    say_all(
        &mut alice,
        "general",
        &["one", "two", "three", "four", "five"],
    )
    .await;

    let mut bob = server.member("bob", "general").await;
    let newest = page(&mut bob, "general", json!({"limit": 3})).await;
    assert_eq!(contents(&newest), ["three", "four", "five"]);
    assert_eq!(newest["payload"]["has_more"], true);
    assert_eq!(newest["payload"]["offset"], 5);
    let first = &newest["payload"]["messages"][0];
    assert_eq!(first["offset"], 3);
    assert_eq!(first["sender"]["id"], "alice");
    assert!(
        first["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let earlier = page(&mut bob, "general", json!({"limit": 3, "before": 3})).await;
    assert_eq!(contents(&earlier), ["one", "two"]);
    assert_eq!(earlier["payload"]["has_more"], false);
    assert_eq!(earlier["payload"]["epoch"], newest["payload"]["epoch"]);

    // Not a member: refused, and nothing else changes.
    let mut carol = server.client("carol").await;
    carol
        .send_json(json!({"type": "history", "room": "general", "id": "x"}))
        .await;
    let refusal = carol.recv().await;
    assert_eq!(refusal["payload"]["code"], "NOT_IN_ROOM");
    assert_eq!(refusal["id"], "x");
    carol.join("general").await;
    assert_eq!(
        contents(&page(&mut carol, "general", json!({"limit": 1})).await),
        ["five"]
    );
}

#[tokio::test]
async fn history_on_the_durable_store_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("roomhub-history-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = || {
        let dir = dir.clone();
        TestServer::start_with(move |c| {
            c.data_dir = Some(dir);
            c.core.rate_limit_per_second = 0;
        })
    };
    let server = start().await;
    let mut alice = server.member("alice", "general").await;
    say_all(&mut alice, "general", &["before", "the", "restart"]).await;
    drop(alice);
    server.shutdown().await;

    let server = start().await;
    let mut bob = server.member("bob", "general").await;
    let all = page(&mut bob, "general", json!({})).await;
    assert_eq!(contents(&all), ["before", "the", "restart"]);
    assert_eq!(all["payload"]["has_more"], false);
    drop(bob);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
