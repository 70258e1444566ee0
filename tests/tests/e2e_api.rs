//! The server API (`POST /api/<method>`) through a real server on
//! loopback: every method, its errors, and a batch. The cluster-wide
//! effect of each method is in `tests/tests/cluster.rs`.

use roomhub_tests::server::{TestServer, http_post};
use serde_json::{Value, json};

const KEY: &str = "api-test-key";

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.api_key = Some(KEY.into());
        c.core.rate_limit_per_second = 0;
    })
    .await
}

/// Calls `method` with `params`; the status and the parsed answer.
async fn call(s: &TestServer, method: &str, params: Value) -> (u16, Value) {
    let (status, body) = http_post(
        s.addr,
        &format!("/api/{method}"),
        Some(KEY),
        &params.to_string(),
    )
    .await;
    let v = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    (status, v)
}

async fn ok(s: &TestServer, method: &str, params: Value) -> Value {
    let (status, v) = call(s, method, params).await;
    assert_eq!(status, 200, "{method}: {v}");
    v["result"].clone()
}

async fn refused(s: &TestServer, method: &str, params: Value) -> (u16, String, String) {
    let (status, v) = call(s, method, params).await;
    let e = &v["error"];
    (
        status,
        e["code"].as_str().unwrap_or_default().to_string(),
        e["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_methods_and_bodies_are_checked() {
    let s = server().await;
    let (status, body) = http_post(s.addr, "/api/info", Some("wrong"), "{}").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("UNAUTHORIZED"));
    assert_eq!(http_post(s.addr, "/api/info", None, "{}").await.0, 401);
    let (status, code, _) = refused(&s, "drop_everything", json!({})).await;
    assert_eq!((status, code.as_str()), (404, "UNKNOWN_METHOD"));
    let (status, body) = http_post(s.addr, "/api/info", Some(KEY), "[1]").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("INVALID_FORMAT"));
    assert_eq!(http_post(s.addr, "/api/info", Some(KEY), "{").await.0, 400);
    // A missing or ill-typed field: 400, naming it.
    for (method, params, field) in [
        ("disconnect", json!({}), "user"),
        ("disconnect", json!({"user": ""}), "user"),
        ("disconnect", json!({"user": "u", "code": 1000}), "code"),
        (
            "disconnect",
            json!({"user": "u", "reason": "r".repeat(124)}),
            "reason",
        ),
        ("subscribe", json!({"user": "u"}), "room"),
        ("subscribe", json!({"user": "u", "room": 7}), "room"),
        ("unsubscribe", json!({"user": ["u"], "room": "g"}), "user"),
        ("presence", json!({"room": ""}), "room"),
        ("presence_stats", json!({}), "room"),
        ("rooms", json!({"pattern": 5}), "pattern"),
        ("broadcast", json!({"payload": {"content": "x"}}), "rooms"),
        ("batch", json!({"commands": {}}), "commands"),
    ] {
        let (status, code, message) = refused(&s, method, params.clone()).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "INVALID_PARAMS"),
            "{method} {params}"
        );
        assert!(message.contains(field), "{method} {params}: {message}");
    }
    // The API is off without a key.
    let off = TestServer::start().await;
    let (status, body) = http_post(off.addr, "/api/info", Some(KEY), "{}").await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_broadcast_reach_members() {
    let s = server().await;
    let mut alice = s.member("alice", "a").await;
    let mut bob = s.member("bob", "b").await;
    let r = ok(
        &s,
        "publish",
        json!({"room": "a", "payload": {"content": "hi a"}}),
    )
    .await;
    assert_eq!(
        (r["room"].as_str(), r["offset"].as_u64()),
        (Some("a"), Some(1))
    );
    assert_eq!(
        alice.recv_type("new_message").await["payload"]["content"],
        "hi a"
    );
    let (status, code, _) = refused(
        &s,
        "publish",
        json!({"room": "a", "payload": {"content": ""}}),
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "INVALID_PAYLOAD"));

    let r = ok(
        &s,
        "broadcast",
        json!({"rooms": ["a", "b", "", "a"], "payload": {"content": "to all"}}),
    )
    .await;
    let results = r["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["result"]["offset"], 2);
    assert_eq!(results[1]["result"]["room"], "b");
    assert_eq!(results[2]["error"]["code"], "MISSING_ROOM");
    assert_eq!(results[3]["result"]["offset"], 3);
    assert_eq!(
        alice.recv_type("new_message").await["payload"]["content"],
        "to all"
    );
    assert_eq!(
        alice.recv_type("new_message").await["payload"]["content"],
        "to all"
    );
    assert_eq!(
        bob.recv_type("new_message").await["payload"]["content"],
        "to all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_every_connection_of_the_user() {
    let s = server().await;
    let mut a1 = s.member("alice", "g").await;
    let mut a2 = s.member("alice", "g").await;
    let mut bob = s.member("bob", "g").await;
    let r = ok(
        &s,
        "disconnect",
        json!({"user": "alice", "code": 4101, "reason": "banned"}),
    )
    .await;
    assert_eq!(r["connections"], 2);
    for c in [&mut a1, &mut a2] {
        assert_eq!(c.closed().await, (4101, "banned".to_string()));
    }
    assert_eq!(bob.recv_type("user_left").await["payload"]["id"], "alice");
    let r = ok(&s, "disconnect", json!({"user": "nobody"})).await;
    assert_eq!(r["connections"], 0);
    // The default code: do not reconnect.
    let mut c = s.client("carol").await;
    ok(&s, "disconnect", json!({"user": "carol"})).await;
    assert_eq!(c.closed().await.0, 4100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_unsubscribe_presence_rooms_and_info() {
    let s = server().await;
    let mut a1 = s.client("alice").await;
    let mut a2 = s.client("alice").await;
    let mut bob = s.member("bob", "team-1").await;
    let r = ok(&s, "subscribe", json!({"user": "alice", "room": "team-1"})).await;
    assert_eq!(r["connections"], 2);
    for c in [&mut a1, &mut a2] {
        let info = c.recv_type("room_info").await;
        assert_eq!(info["payload"]["room_id"], "team-1");
    }
    assert_eq!(bob.recv_type("user_joined").await["payload"]["id"], "alice");

    let p = ok(&s, "presence", json!({"room": "team-1"})).await;
    let mut users: Vec<(String, u64)> = p["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["id"].as_str().unwrap().into(),
                u["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    users.sort();
    assert_eq!(users, [("alice".into(), 2), ("bob".into(), 1)]);
    let stats = ok(&s, "presence_stats", json!({"room": "team-1"})).await;
    assert_eq!(
        (stats["users"].as_u64(), stats["connections"].as_u64()),
        (Some(2), Some(3))
    );
    let empty = ok(&s, "presence_stats", json!({"room": "nowhere"})).await;
    assert_eq!(
        (empty["users"].as_u64(), empty["connections"].as_u64()),
        (Some(0), Some(0))
    );

    bob.join("lobby").await;
    let rooms = ok(&s, "rooms", json!({"pattern": "team-*"})).await;
    assert_eq!(
        rooms["rooms"],
        json!([{"room": "team-1", "users": 2, "connections": 3}])
    );
    let all = ok(&s, "rooms", json!({})).await;
    assert_eq!(all["rooms"].as_array().unwrap().len(), 2);
    let info = ok(&s, "info", json!({})).await;
    assert_eq!(
        (
            info["connections"].as_u64(),
            info["users"].as_u64(),
            info["rooms"].as_u64()
        ),
        (Some(3), Some(2), Some(2))
    );
    assert!(info["version"].is_string() && info["uptime_secs"].is_u64());
    assert_eq!(info["nodes"].as_array().unwrap().len(), 1);

    let r = ok(
        &s,
        "unsubscribe",
        json!({"user": "alice", "room": "team-1"}),
    )
    .await;
    assert_eq!(r["connections"], 2);
    for c in [&mut a1, &mut a2] {
        let left = c.recv_type("room_left").await;
        assert_eq!(left["payload"]["reason"], "unsubscribed");
    }
    assert_eq!(bob.recv_type("user_left").await["payload"]["id"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_answered_in_order() {
    let s = server().await;
    let _alice = s.member("alice", "g").await;
    let r = ok(
        &s,
        "batch",
        json!({"commands": [
            {"method": "publish", "params": {"room": "g", "payload": {"content": "one"}}},
            {"method": "nope"},
            {"method": "presence_stats", "params": {"room": "g"}},
            {"method": "publish", "params": {"room": "g", "payload": {"content": "two"}}},
            {"params": {}},
        ]}),
    )
    .await;
    let replies = r["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 5);
    assert_eq!(replies[0]["result"]["offset"], 1);
    assert_eq!(replies[1]["error"]["code"], "UNKNOWN_METHOD");
    assert_eq!(replies[2]["result"]["users"], 1);
    assert_eq!(replies[3]["result"]["offset"], 2);
    assert_eq!(replies[4]["error"]["code"], "INVALID_PARAMS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_rooms_with_or_without_members() {
    for durable in [false, true] {
        let dir = std::env::temp_dir().join(format!("roomhub-api-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = TestServer::start_with(|c| {
            c.api_key = Some(KEY.into());
            c.core.rate_limit_per_second = 0;
            c.data_dir = durable.then(|| dir.clone());
        })
        .await;
        for i in 1..=5 {
            ok(
                &s,
                "publish",
                json!({"room": "log", "payload": {"content": format!("m{i}")}}),
            )
            .await;
        }
        // Nobody is in the room: it is read from its sequencer, then closed.
        let h = ok(&s, "history", json!({"room": "log", "limit": 2})).await;
        assert_eq!(
            roomhub_tests::contents(&h["messages"]),
            ["m4", "m5"],
            "durable {durable}: {h}"
        );
        assert_eq!(
            (h["offset"].as_u64(), h["has_more"].as_bool()),
            (Some(5), Some(true))
        );
        assert_eq!(h["messages"][0]["offset"], 4);
        let older = ok(&s, "history", json!({"room": "log", "before": 4})).await;
        assert_eq!(older["messages"].as_array().unwrap().len(), 3);
        assert_eq!(older["has_more"], false);
        assert_eq!(older["epoch"], h["epoch"]);
        // With a member, from the open room; the same answer.
        let _m = s.member("alice", "log").await;
        let again = ok(&s, "history", json!({"room": "log", "limit": 2})).await;
        assert_eq!(again["messages"], h["messages"]);
        // A room never used: empty, not an error.
        let none = ok(&s, "history", json!({"room": "never-used"})).await;
        assert_eq!(
            (
                none["messages"].as_array().map(Vec::len),
                none["has_more"].as_bool()
            ),
            (Some(0), Some(false))
        );
        let (status, code, message) =
            refused(&s, "history", json!({"room": "log", "limit": 0})).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "INVALID_PARAMS"),
            "{message}"
        );
        let (status, _, message) =
            refused(&s, "history", json!({"room": "log", "before": "x"})).await;
        assert_eq!(status, 400);
        assert!(message.contains("before"), "{message}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `history_remove` ends a room's lineage on every engine: its members get
/// a `room_reset` (and stay members), the history is empty, the next
/// message is offset 1 of the new epoch, and a restarted durable server
/// keeps it that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_remove_starts_the_room_over_on_every_engine() {
    use roomhub_net::seq::store::Fsync;
    for (engine, durable, fsync) in [
        ("memory", false, Fsync::Background),
        ("journal", true, Fsync::Background),
        ("fsync always", true, Fsync::Always),
    ] {
        let dir = std::env::temp_dir().join(format!(
            "roomhub-api-remove-{}-{}",
            std::process::id(),
            engine.replace(' ', "-")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let start = || {
            TestServer::start_with(|c| {
                c.api_key = Some(KEY.into());
                c.core.rate_limit_per_second = 0;
                c.data_dir = durable.then(|| dir.clone());
                c.fsync = fsync;
            })
        };
        let s = start().await;
        let mut alice = s.member("alice", "log").await;
        for i in 1..=3 {
            let p = json!({"room": "log", "payload": {"content": format!("m{i}")}});
            ok(&s, "publish", p).await;
            alice.recv_type("new_message").await;
        }
        let before = ok(&s, "history", json!({"room": "log"})).await;
        assert_eq!(before["messages"].as_array().map(Vec::len), Some(3));

        let removed = ok(&s, "history_remove", json!({"room": "log"})).await;
        assert_eq!(
            removed,
            json!({"room": "log", "connections": 1}),
            "{engine}"
        );
        let reset = alice.recv_type("room_reset").await;
        assert_eq!(reset["payload"]["offset"], 0, "{engine}: {reset}");
        assert_eq!(reset["payload"]["recovered"], false);
        let epoch = reset["payload"]["epoch"].clone();
        assert_ne!(epoch, before["epoch"], "{engine}: a new lineage");
        let after = ok(&s, "history", json!({"room": "log"})).await;
        assert_eq!(
            (
                &after["epoch"],
                after["offset"].as_u64(),
                after["messages"].as_array().map(Vec::len)
            ),
            (&epoch, Some(0), Some(0)),
            "{engine}: {after}"
        );
        // Still a member: the next message is the new lineage's first.
        ok(
            &s,
            "publish",
            json!({"room": "log", "payload": {"content": "fresh"}}),
        )
        .await;
        let m = alice.recv_type("new_message").await;
        assert_eq!(
            (
                &m["offset"],
                &m["id"]
                    .as_str()
                    .map(|id| id.starts_with(epoch.as_str().unwrap()))
            ),
            (&json!(1), &Some(true)),
            "{engine}: {m}"
        );
        // A room never used, or removed twice: fine, nobody to reset.
        let none = ok(&s, "history_remove", json!({"room": "never-used"})).await;
        assert_eq!(none["connections"], 0);
        let (status, code, _) = refused(&s, "history_remove", json!({"room": 5})).await;
        assert_eq!((status, code.as_str()), (400, "INVALID_PARAMS"));
        drop(alice);
        s.shutdown().await;
        if durable {
            let s = start().await;
            let h = ok(&s, "history", json!({"room": "log"})).await;
            assert_eq!(h["epoch"], epoch, "{engine}: the new lineage is stored");
            assert_eq!(
                roomhub_tests::contents(&h["messages"]),
                ["fresh"],
                "{engine}"
            );
            s.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Hostile bodies for every method: each gets a documented 4xx (never a
/// 5xx, a hang or a crash), changes nothing, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_api_bodies_are_refused_and_change_nothing() {
    let s = server().await;
    let mut alice = s.member("alice", "g").await;
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let deep_obj = format!(
        r#"{{"room":{}"g"{}}}"#,
        "{\"a\":".repeat(300),
        "}".repeat(300)
    );
    let many: Vec<Value> = (0..101).map(|_| json!({"method": "info"})).collect();
    let huge_user = "u".repeat(300);
    let cases: Vec<(&str, String, u16)> = vec![
        ("info", "\u{0}".into(), 400),
        ("info", "null".into(), 400),
        ("info", r#""info""#.into(), 400),
        ("info", deep.clone(), 400),
        ("presence", deep_obj, 400),
        ("publish", r#"{"room":"g","payload":"hi"}"#.into(), 400),
        (
            "publish",
            r#"{"room":"g\u0007","payload":{"content":"x"}}"#.into(),
            400,
        ),
        (
            "publish",
            r#"{"room":"g","payload":{"content":"x"},"sender":{"id":""}}"#.into(),
            400,
        ),
        (
            "broadcast",
            json!({"rooms": "g", "payload": {"content": "x"}}).to_string(),
            400,
        ),
        (
            "broadcast",
            json!({"rooms": [], "payload": {"content": "x"}}).to_string(),
            400,
        ),
        ("disconnect", json!({"user": huge_user}).to_string(), 400),
        (
            "disconnect",
            json!({"user": "alice", "code": 1008}).to_string(),
            400,
        ),
        (
            "disconnect",
            json!({"user": "alice", "code": 99999}).to_string(),
            400,
        ),
        (
            "disconnect",
            json!({"user": "alice", "code": -1}).to_string(),
            400,
        ),
        (
            "subscribe",
            json!({"user": "alice", "room": "x".repeat(65)}).to_string(),
            400,
        ),
        (
            "unsubscribe",
            json!({"user": {"id": "alice"}, "room": "g"}).to_string(),
            400,
        ),
        (
            "history",
            json!({"room": "g", "limit": 1.5}).to_string(),
            400,
        ),
        (
            "history",
            json!({"room": "g", "before": -1}).to_string(),
            400,
        ),
        ("history_remove", "{}".into(), 400),
        ("history_remove", json!({"room": ["g"]}).to_string(), 400),
        (
            "history_remove",
            json!({"room": "bad\u{0}name"}).to_string(),
            400,
        ),
        (
            "rooms",
            json!({"pattern": "p".repeat(300)}).to_string(),
            400,
        ),
        ("batch", json!({"commands": many}).to_string(), 400),
        ("batch", json!({"commands": "info"}).to_string(), 400),
        ("../../etc/passwd", "{}".into(), 404),
        ("INFO", "{}".into(), 404),
    ];
    for (method, body, status) in cases {
        let (got, answer) = http_post(s.addr, &format!("/api/{method}"), Some(KEY), &body).await;
        assert_eq!(
            got,
            status,
            "{method} {}: {answer}",
            body.chars().take(80).collect::<String>()
        );
        let v: Value =
            serde_json::from_str(&answer).unwrap_or_else(|_| panic!("not JSON: {answer}"));
        // An API answer names a code; a path that is no method at all
        // (several segments) gets the server's plain JSON 404.
        let shaped = v["error"]["code"].is_string() && v["error"]["message"].is_string();
        assert!(shaped || (got == 404 && v["error"].is_string()), "{answer}");
    }
    // A nested batch and a batch of bad commands: answered per command.
    let r = ok(
        &s,
        "batch",
        json!({"commands": [{"method": "batch", "params": {"commands": []}}, 7, {"method": 7}]}),
    )
    .await;
    let codes: Vec<&str> = r["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"]["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["INVALID_PARAMS"; 3]);
    // Nothing changed: alice is connected and alone in g, and can talk.
    let stats = ok(&s, "presence_stats", json!({"room": "g"})).await;
    assert_eq!(
        (stats["users"].as_u64(), stats["connections"].as_u64()),
        (Some(1), Some(1))
    );
    alice
        .send_json(json!({"type": "send_message", "room": "g", "id": "m", "payload": {"content": "still here"}}))
        .await;
    assert_eq!(alice.recv_type("ack").await["id"], "m");
    assert_eq!(s.get("/healthz").await.0, 200);
}
