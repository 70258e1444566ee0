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

/// Per-namespace history: each room keeps and shows its namespace's
/// count (more or fewer than the server's), a namespace without history
/// recovers nothing, and the durable store keeps enough for the largest
/// across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_sets_its_rooms_history() {
    let dir = std::env::temp_dir().join(format!("roomhub-ns-history-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = || {
        TestServer::start_with(|c| {
            c.api_key = Some("k".into());
            c.core.rate_limit_per_second = 0;
            c.core.history_max_messages = 5;
            c.data_dir = Some(dir.clone());
            c.core.namespaces = vec![
                Namespace {
                    history_size: Some(8),
                    ..Namespace::new("big")
                },
                Namespace {
                    history_size: Some(0),
                    ..Namespace::new("live")
                },
            ];
        })
    };
    let publish = |s: &TestServer, room: &str, n: u64| {
        let (addr, room) = (s.addr, room.to_string());
        async move {
            let body = json!({"room": room, "payload": {"content": format!("m{n}")}});
            let (status, reply) =
                http_post(addr, "/api/publish", Some("k"), &body.to_string()).await;
            assert_eq!(status, 200, "{reply}");
        }
    };
    let history = |s: &TestServer, room: &str| {
        let (addr, body) = (s.addr, json!({"room": room, "limit": 100}).to_string());
        async move {
            let (status, reply) = http_post(addr, "/api/history", Some("k"), &body).await;
            assert_eq!(status, 200, "{reply}");
            let v: Value = serde_json::from_str(&reply).unwrap();
            roomhub_tests::contents(&v["result"]["messages"])
        }
    };
    let last =
        |n: u64, k: u64| -> Vec<String> { (n - k + 1..=n).map(|i| format!("m{i}")).collect() };

    let s = start().await;
    let mut alice = s.client("alice").await;
    let joined = alice.join("live:feed").await;
    let epoch = joined["payload"]["epoch"].clone();
    alice
        .send_json(json!({"type": "leave_room", "room": "live:feed"}))
        .await;
    for n in 1..=10 {
        for room in ["plain", "big:log", "live:feed"] {
            publish(&s, room, n).await;
        }
    }
    assert_eq!(history(&s, "plain").await, last(10, 5));
    assert_eq!(history(&s, "big:log").await, last(10, 8));
    assert_eq!(history(&s, "live:feed").await, Vec::<String>::new());
    // A member's own history request follows the same rule.
    let mut bob = s.member("bob", "big:log").await;
    bob.send_json(
        json!({"type": "history", "room": "big:log", "id": "h", "payload": {"limit": 100}}),
    )
    .await;
    let page = bob.recv_type("history").await;
    assert_eq!(
        roomhub_tests::contents(&page["payload"]["messages"]),
        last(10, 8)
    );
    // Nothing to recover from a room without history.
    alice
        .send_json(json!({"type": "join_room", "payload": {"room_id": "live:feed", "since": {"offset": 0, "epoch": epoch}}}))
        .await;
    let info = alice.recv_type("room_info").await;
    assert_eq!(
        (
            info["payload"]["recovered"].as_bool(),
            info["payload"]["offset"].as_u64()
        ),
        (Some(false), Some(10)),
        "{info}"
    );
    drop((alice, bob));
    s.shutdown().await;

    // The store kept the largest count for every room; each shows its own.
    let s = start().await;
    assert_eq!(history(&s, "big:log").await, last(10, 8));
    assert_eq!(history(&s, "plain").await, last(10, 5));
    s.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
