//! The protocol through a real server on loopback with real WebSocket
//! clients: the seed's session, presence, every error on one connection,
//! limits and closes, heartbeats, expiry, shutdown, and the HTTP endpoints.

use std::time::Duration;

use futures_util::SinkExt;
use roomhub_tests::server::{Client, TestServer, token_for};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::{
    Frame,
    coding::{Data, OpCode},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_wscat_session_between_two_clients() {
    let s = TestServer::start().await;
    let mut a = s.client("alice").await;
    let mut b = s.client("bob").await;
    a.send(r#"{"type":"join_room","room":"general"}"#).await;
    let info = a.recv().await;
    assert_eq!(info["type"], "room_info");
    b.send(r#"{"type":"join_room","room":"general"}"#).await;
    assert_eq!(b.recv().await["payload"]["count"], 2);
    assert_eq!(a.recv().await["type"], "user_joined");
    a.send(r#"{"type":"send_message","room":"general","payload":{"content":"Hello!"}}"#)
        .await;
    let m = b.recv().await;
    assert_eq!(m["type"], "new_message");
    assert_eq!(m["payload"]["content"], "Hello!");
    assert_eq!(m["sender"]["id"], "alice");
    assert_eq!(m["offset"], 1);
    assert!(m["timestamp"].as_str().unwrap().ends_with('Z'));
    a.silent_for(200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_with_two_connections_of_one_user() {
    let s = TestServer::start().await;
    let mut bob = s.member("bob", "g").await;
    let mut laptop = s.member("alice", "g").await;
    assert_eq!(bob.recv().await["type"], "user_joined");
    let mut phone = s.client("alice").await;
    let info = phone.join("g").await;
    assert_eq!(info["payload"]["count"], 2, "alice counts once");
    laptop
        .send_json(
            json!({"type": "send_message", "room": "g", "payload": {"content": "from laptop"}}),
        )
        .await;
    assert_eq!(
        phone.recv().await["payload"]["content"],
        "from laptop",
        "the sender's other connection gets it"
    );
    assert_eq!(bob.recv().await["payload"]["content"], "from laptop");
    drop(laptop);
    bob.silent_for(300).await;
    drop(phone);
    let left = bob.recv().await;
    assert_eq!(
        (left["type"].as_str(), left["payload"]["id"].as_str()),
        (Some("user_left"), Some("alice"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_on_one_connection_then_a_message_is_delivered() {
    // Every error code a single node can produce (UNAVAILABLE needs a store
    // or broker that refuses; it is covered where one exists).
    let s = TestServer::start_with(|c| c.core.max_rooms_per_connection = 1).await;
    let mut peer = s.member("peer", "g").await;
    let mut restricted_token_user = {
        use roomhub_net::dev::{TokenSpec, mint_token};
        let spec = TokenSpec {
            user: "carol".into(),
            rooms: vec!["g".into(), "h".into()],
            ..TokenSpec::default()
        };
        let token = mint_token(
            roomhub_tests::server::SECRET,
            &spec,
            Duration::from_secs(60),
            roomhub_net::Clock::system().unix_seconds(),
        );
        Client::connect(format!("{}?token={token}", s.url()))
            .await
            .unwrap()
    };
    let c = &mut restricted_token_user;
    let long_content = "x".repeat(2001);
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "INVALID_FORMAT"),
        (r#"{"type":"fly","id":"1"}"#.into(), "UNKNOWN_TYPE"),
        (
            r#"{"type":"join_room","id":"2","room":"g","payload":[]}"#.into(),
            "INVALID_PAYLOAD",
        ),
        (r#"{"type":"join_room","id":"3"}"#.into(), "MISSING_ROOM"),
        (
            r#"{"type":"join_room","id":"4","room":"a\u0007b"}"#.into(),
            "INVALID_ROOM",
        ),
        (
            r#"{"type":"send_message","id":"5","room":"g","payload":{"content":"x"}}"#.into(),
            "NOT_IN_ROOM",
        ),
        (
            r#"{"type":"join_room","id":"6","room":"secret"}"#.into(),
            "FORBIDDEN",
        ),
        (
            r#"{"type":"send_direct","id":"7","payload":{"to":"nobody","content":"x"}}"#.into(),
            "RECIPIENT_OFFLINE",
        ),
    ];
    for (frame, code) in &cases {
        c.send(frame).await;
        let e = c.recv().await;
        assert_eq!(
            (e["type"].as_str(), e["payload"]["code"].as_str()),
            (Some("error"), Some(*code)),
            "{frame}"
        );
    }
    c.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(c.recv().await["payload"]["code"], "UNSUPPORTED_FRAME");
    c.join("g").await;
    assert_eq!(peer.recv().await["type"], "user_joined");
    c.send(r#"{"type":"join_room","id":"8","room":"g2"}"#).await;
    assert_eq!(c.recv().await["payload"]["code"], "FORBIDDEN");
    c.send(r#"{"type":"join_room","id":"8b","room":"h"}"#).await;
    assert_eq!(c.recv().await["payload"]["code"], "TOO_MANY_ROOMS");
    c.send_json(json!({"type": "send_message", "id": "9", "room": "g", "payload": {"content": long_content}})).await;
    assert_eq!(c.recv().await["payload"]["code"], "CONTENT_TOO_LONG");
    // Refused requests above drew on the bucket too (the rate check comes
    // first), so count: some typing indicators pass, then RATE_LIMITED.
    for i in 0..11 {
        c.send_json(json!({"type": "typing", "room": "g", "id": format!("t{i}")}))
            .await;
    }
    let mut acked = 0;
    for _ in 0..11 {
        let answer = c.recv().await;
        if answer["type"] == "ack" {
            acked += 1;
        } else {
            assert_eq!(answer["payload"]["code"], "RATE_LIMITED");
        }
    }
    assert!((1..11).contains(&acked), "{acked} typing indicators acked");
    for _ in 0..acked {
        assert_eq!(peer.recv().await["type"], "user_typing");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.send_json(json!({"type": "send_message", "id": "ok", "room": "g", "payload": {"content": "still here"}})).await;
    assert_eq!(c.recv().await["type"], "ack");
    assert_eq!(peer.recv().await["payload"]["content"], "still here");
    let (_, metrics) = s.get("/metrics").await;
    assert!(
        metrics.contains(r#"roomhub_errors_total{code="FORBIDDEN"} 2"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_rooms_over_the_wire() {
    let s = TestServer::start_with(|c| c.core.max_rooms_per_connection = 1).await;
    let mut c = s.member("a", "one").await;
    c.send(r#"{"type":"join_room","id":"j","room":"two"}"#)
        .await;
    assert_eq!(c.recv().await["payload"]["code"], "TOO_MANY_ROOMS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_closes_with_1009() {
    let s = TestServer::start().await;
    let mut a = s.member("alice", "g").await;
    let mut b = s.member("bob", "g").await;
    a.recv_type("user_joined").await;
    let huge = format!(
        r#"{{"type":"send_message","room":"g","payload":{{"content":"{}"}}}}"#,
        "x".repeat(5000)
    );
    b.send(&huge).await;
    assert_eq!(b.closed().await.0, 1009);
    assert_eq!(a.recv().await["type"], "user_left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_closes_with_1007() {
    let s = TestServer::start().await;
    let mut a = s.client("alice").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    a.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(a.closed().await.0, 1007);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_over_the_wire() {
    let s = TestServer::start().await;
    let mut a = s.member("alice", "g").await;
    for i in 0..11 {
        a.send_json(json!({"type": "typing", "room": "g", "id": i.to_string()}))
            .await;
    }
    for _ in 0..10 {
        assert_eq!(a.recv().await["type"], "ack");
    }
    let e = a.recv().await;
    assert_eq!(
        (e["id"].as_str(), e["payload"]["code"].as_str()),
        (Some("10"), Some("RATE_LIMITED"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_with_4000_and_the_others_keep_receiving() {
    let s = TestServer::start_with(|c| {
        c.core.rate_limit_per_second = 0;
        c.send_queue_bytes = 64 * 1024;
    })
    .await;
    let mut sender = s.member("sender", "g").await;
    let mut healthy = s.member("healthy", "g").await;
    let mut slow = s.member("slow", "g").await;
    assert_eq!(
        healthy.recv_type("user_joined").await["payload"]["id"],
        "slow"
    );
    let content = "y".repeat(1900);
    // The slow client never reads: the kernel buffers fill, then its queue,
    // and the server closes it. The healthy member must meanwhile see every
    // message, in order, with no gap.
    let mut sent = 0u64;
    let mut slow_left = false;
    while !slow_left {
        sent += 1;
        assert!(sent < 20_000, "the slow consumer was never closed");
        sender
            .send_json(
                json!({"type": "send_message", "room": "g", "payload": {"content": content}}),
            )
            .await;
        loop {
            let m = healthy.recv().await;
            match m["type"].as_str() {
                Some("new_message") => {
                    assert_eq!(m["offset"], sent, "healthy member saw a gap or reorder");
                    break;
                }
                Some("user_left") if m["payload"]["id"] == "slow" => slow_left = true,
                other => panic!("unexpected {other:?}: {m}"),
            }
        }
    }
    assert_eq!(slow.closed().await.0, 4000);
    sender
        .send_json(json!({"type": "send_message", "room": "g", "payload": {"content": "after"}}))
        .await;
    assert_eq!(
        healthy.recv_type("new_message").await["payload"]["content"],
        "after"
    );
    let (_, metrics) = s.get("/metrics").await;
    assert!(
        metrics.contains("roomhub_slow_consumer_disconnects_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_timeout_closes_silent_clients_only() {
    let s = TestServer::start_with(|c| {
        c.core.ping_interval_ms = 100;
        c.core.pong_wait_ms = 400;
    })
    .await;
    let mut lively = s.member("lively", "g").await;
    let mut silent = s.member("silent", "g").await;
    lively.recv_type("user_joined").await;
    // `silent` is never polled, so its client never answers pings. `lively`
    // keeps reading, and tungstenite answers every ping with a pong.
    let left = lively.recv_type("user_left").await;
    assert_eq!(left["payload"]["id"], "silent");
    lively.silent_for(600).await;
    assert_eq!(silent.closed().await.0, 4001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_while_connected_closes_with_1008() {
    let s = TestServer::start().await;
    let token = token_for("alice", Duration::from_secs(1));
    let mut a = Client::connect(format!("{}?token={token}", s.url()))
        .await
        .unwrap();
    a.join("g").await;
    let (code, reason) = a.closed().await;
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_sends_1001_to_every_client() {
    let s = TestServer::start().await;
    let mut clients = Vec::new();
    for u in ["a", "b", "c"] {
        clients.push(s.member(u, "g").await);
    }
    let idle = s.client("d").await;
    clients.push(idle);
    let addr = s.addr;
    let stopping = tokio::spawn(s.shutdown());
    for c in &mut clients {
        assert_eq!(c.closed().await.0, 1001);
    }
    stopping.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_drops_a_client_that_never_upgrades() {
    let s = TestServer::start_with(|c| c.handshake_timeout = Duration::from_millis(300)).await;
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut seen = Vec::new();
    let started = tokio::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut seen)).await;
    let waited = started.elapsed();
    assert!(
        read.is_ok(),
        "the server kept a silent connection open for 5 s"
    );
    assert!(
        waited >= Duration::from_millis(250),
        "dropped after {waited:?}, before the timeout"
    );
    assert!(
        waited < Duration::from_secs(2),
        "dropped only after {waited:?}"
    );
    assert!(
        seen.is_empty(),
        "nothing is sent to a client that never asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_metrics_and_health_endpoints() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = s.get("/readyz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    assert_eq!(s.get("/ws/online").await.1, r#"{"online":0}"#);
    let mut a = s.member("alice", "g").await;
    let _b = s.member("bob", "g").await;
    a.recv_type("user_joined").await;
    assert_eq!(s.get("/ws/online").await.1, r#"{"online":2}"#);
    let (status, metrics) = s.get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "roomhub_connections_active 2",
        "roomhub_connections_total 2",
        "roomhub_rooms 1",
        "roomhub_messages_received_total 2",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    assert!(metrics.contains("roomhub_uptime_seconds"));
    assert!(metrics.contains("# TYPE roomhub_errors_total counter"));
    assert_eq!(s.get("/nope").await.0, 404);
}

/// Regression (found by the simulator, seed 13): a rejoin whose replay is
/// larger than the send queue must recover, not be closed as a slow consumer
/// and retry forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_larger_than_the_send_queue_still_recovers() {
    let s = TestServer::start_with(|c| {
        c.core.rate_limit_per_second = 0;
        c.send_queue_bytes = 16 * 1024;
    })
    .await;
    let mut talker = s.member("talker", "g").await;
    let mut away = s.member("away", "g").await;
    let info = away.join("g").await;
    let epoch = info["payload"]["epoch"].as_str().unwrap().to_string();
    drop(away);
    let content = "z".repeat(1900);
    for i in 0..40 {
        talker
            .send_json(json!({"type": "send_message", "room": "g", "id": i.to_string(), "payload": {"content": content}}))
            .await;
        talker.recv_type("ack").await;
    }
    // 40 messages of ~2 KB: five times what the queue holds.
    let mut back = s.client("away").await;
    back.send_json(json!({"type": "join_room", "payload": {"room_id": "g", "since": {"offset": 0, "epoch": epoch}}}))
        .await;
    for offset in 1..=40 {
        let m = back.recv().await;
        assert_eq!(
            (m["type"].as_str(), m["offset"].as_u64()),
            (Some("new_message"), Some(offset))
        );
    }
    let info = back.recv().await;
    assert_eq!(info["payload"]["recovered"], true);
    back.silent_for(300).await;
}

/// `POST /api/publish` on a node with history in memory: the same core
/// input and answer as with the store (no path around the hub), and the
/// server as the sender when the backend names none.
#[tokio::test]
async fn the_publish_api_in_memory_mode() {
    let server = TestServer::start_with(|c| {
        c.data_dir = None;
        c.api_key = Some("secret-key".into());
    })
    .await;
    let mut alice = server.member("alice", "news").await;
    let body = r#"{"room":"news","payload":{"content":"from the backend"}}"#;
    let (status, reply) =
        roomhub_tests::server::http_post(server.addr, "/api/publish", Some("secret-key"), body)
            .await;
    assert_eq!(status, 200, "{reply}");
    let reply: serde_json::Value =
        serde_json::from_str::<serde_json::Value>(&reply).unwrap()["result"].clone();
    assert_eq!(reply["offset"], 1);
    let msg = alice.recv_type("new_message").await;
    assert_eq!(msg["payload"]["content"], "from the backend");
    assert_eq!(msg["sender"]["id"], "server");
    assert_eq!(msg["id"], reply["message_id"]);
}

/// `POST /api/publish` on a single node with the durable store: stored,
/// delivered, acked with its offset, and refused without the key.
#[tokio::test]
async fn the_publish_api_on_a_single_durable_node() {
    let dir = std::env::temp_dir().join(format!("roomhub-publish-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = TestServer::start_with(|c| {
        c.data_dir = Some(dir.clone());
        c.api_key = Some("secret-key".into());
    })
    .await;
    let mut alice = server.member("alice", "news").await;
    let body = r#"{"room":"news","payload":{"content":"hello from the backend"},"sender":{"id":"bot","name":"Bot"}}"#;
    let post = |key: Option<&'static str>, body: &'static str| {
        roomhub_tests::server::http_post(server.addr, "/api/publish", key, body)
    };
    assert_eq!(post(Some("nope"), body).await.0, 401);
    assert_eq!(
        post(
            Some("secret-key"),
            r#"{"room":"","payload":{"content":"x"}}"#
        )
        .await
        .0,
        400
    );
    assert_eq!(
        post(
            Some("secret-key"),
            r#"{"room":"news","payload":{"content":""}}"#
        )
        .await
        .0,
        400
    );
    // The core's send_message rules, with their error codes.
    let long = format!(
        r#"{{"room":"news","payload":{{"content":"{}"}}}}"#,
        "x".repeat(2001)
    );
    let (status, refusal) =
        roomhub_tests::server::http_post(server.addr, "/api/publish", Some("secret-key"), &long)
            .await;
    assert_eq!(status, 400);
    assert!(refusal.contains("CONTENT_TOO_LONG"), "{refusal}");
    let (status, reply) = post(Some("secret-key"), body).await;
    assert_eq!(status, 200, "{reply}");
    let reply: serde_json::Value =
        serde_json::from_str::<serde_json::Value>(&reply).unwrap()["result"].clone();
    assert_eq!(reply["offset"], 1);
    let msg = alice.recv_type("new_message").await;
    assert_eq!(msg["payload"]["content"], "hello from the backend");
    assert_eq!(msg["sender"]["name"], "Bot");
    assert_eq!(msg["offset"], 1);
    assert_eq!(msg["id"], reply["message_id"]);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server's codec only reads; pongs and close replies are written by the
/// connection's outbox, so they are checked here through the real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_a_ping_and_echoes_a_close() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let s = TestServer::start().await;
    let mut a = s.client("a").await;
    a.ws.send(Message::Ping("are you there".into()))
        .await
        .unwrap();
    let pong = loop {
        match tokio::time::timeout(
            roomhub_tests::server::PATIENCE,
            futures_util::StreamExt::next(&mut a.ws),
        )
        .await
        .unwrap()
        {
            Some(Ok(Message::Pong(data))) => break data,
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    };
    assert_eq!(&pong[..], b"are you there");
    a.ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4321),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    assert_eq!(a.closed().await.0, 4321, "the close code is echoed");
}

/// A client may send its first frame in the same packet as its upgrade
/// request; the server has then already read it with the request and must
/// still hand it to the connection (the server takes the socket back from
/// the HTTP layer after the upgrade, with whatever that layer had read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_with_the_upgrade_request_is_not_lost() {
    let s = TestServer::start().await;
    // A masked text frame (RFC 6455 §5.3), right behind the request.
    let join = br#"{"type":"join_room","room":"early"}"#;
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | join.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(join.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let tcp = s.raw_upgrade("eager", &frame).await;
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        tcp,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    let info = loop {
        let next = tokio::time::timeout(
            roomhub_tests::server::PATIENCE,
            futures_util::StreamExt::next(&mut ws),
        )
        .await
        .expect("an answer to the early join");
        match next {
            Some(Ok(Message::Text(t))) => {
                break serde_json::from_str::<serde_json::Value>(&t).unwrap();
            }
            Some(Ok(_)) => {}
            other => panic!("expected room_info, got {other:?}"),
        }
    };
    assert_eq!(info["type"], "room_info", "{info}");
    assert_eq!(info["room"], "early");
}

/// A broadcast to more members than tokio's cooperative budget (128 socket
/// operations per task turn) is written by the hub itself, every socket
/// once: none of it waits for a connection's writer task, which only a full
/// socket should need. (Inside the budget, every write past the 128th of a
/// pass returned `Pending` and went to the writer tasks.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_to_hundreds_is_written_without_a_backlog() {
    const MEMBERS: usize = 300;
    let s = TestServer::start().await;
    let mut members = Vec::with_capacity(MEMBERS);
    for i in 0..MEMBERS {
        members.push(s.member(&format!("u{i}"), "crowd").await);
    }
    members[0]
        .send(r#"{"type":"send_message","room":"crowd","payload":{"content":"to all"}}"#)
        .await;
    for m in &mut members[1..] {
        let got = m.recv_type("new_message").await;
        assert_eq!(got["payload"]["content"], "to all");
    }
    let writes = s.metric("roomhub_socket_writes_total").await;
    assert!(
        writes >= MEMBERS as u64,
        "every member was written to: {writes}"
    );
    assert_eq!(
        s.metric("roomhub_backlog_writes_total").await,
        0,
        "no socket was full, so no writer task wrote"
    );
}
