//! Namespaces through the real server: rooms named `ns:rest` follow their
//! namespace's rules (set here as the `--namespace` flag would), others
//! keep the defaults.

use roomhub_core::Namespace;
use roomhub_tests::server::{TestServer, http_post};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_sets_its_rooms_rules() {
    let s = TestServer::start_with(|c| {
        c.api_key = Some("k".into());
        c.core.rate_limit_per_second = 0;
        c.core.namespaces = vec![
            Namespace {
                presence: false,
                client_publish: false,
                typing: false,
                ..Namespace::new("feed")
            },
            Namespace {
                max_members: Some(1),
                ..Namespace::new("solo")
            },
        ];
    })
    .await;
    let mut alice = s.client("alice").await;
    let info = alice.join("feed:news").await;
    assert_eq!(info["payload"]["users"], json!([]));
    let mut bob = s.member("bob", "feed:news").await;
    // Members may not publish or type; the server API may publish.
    alice
        .send_json(json!({"type": "send_message", "room": "feed:news", "id": "m", "payload": {"content": "x"}}))
        .await;
    let e = alice.recv().await;
    assert_eq!(
        (e["id"].as_str(), e["payload"]["code"].as_str()),
        (Some("m"), Some("FORBIDDEN")),
        "{e}"
    );
    alice
        .send_json(json!({"type": "typing", "room": "feed:news", "id": "t"}))
        .await;
    assert_eq!(alice.recv().await["payload"]["code"], "FORBIDDEN");
    let (status, body) = http_post(
        s.addr,
        "/api/publish",
        Some("k"),
        r#"{"room":"feed:news","payload":{"content":"from the newsroom"}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // No user_joined for bob reached alice: the first frame is the news.
    let first: Value = alice.recv().await;
    assert_eq!(first["payload"]["content"], "from the newsroom", "{first}");
    assert_eq!(
        bob.recv_type("new_message").await["payload"]["content"],
        "from the newsroom"
    );

    // solo:*: one user at most.
    alice.join("solo:1").await;
    bob.send_json(json!({"type": "join_room", "room": "solo:1", "id": "j"}))
        .await;
    assert_eq!(bob.recv().await["payload"]["code"], "ROOM_FULL");
    // A room without a namespace: the defaults.
    alice.join("lobby").await;
    bob.join("lobby").await;
    assert_eq!(alice.recv_type("user_joined").await["room"], "lobby");
}
