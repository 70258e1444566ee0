//! The SSE fallback through the real server on loopback: a real HTTP/1.1
//! event stream (chunked, as a browser reads it) and `POST /sse/send`,
//! against WebSocket clients in the same rooms: chat both ways, history and
//! recovery (`since`, and `Last-Event-ID`), the limits, the slow-consumer
//! rule and heartbeats.

use std::time::Duration;

use roomhub_tests::server::{Client, TestServer, eventually};
use roomhub_tests::sse::{SseClient, only_pings_for, post_to};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_and_a_websocket_client_chat_both_ways() {
    let s = TestServer::start().await;
    let mut alice = s.member("alice", "g").await;
    let mut bob = SseClient::open(s.addr, &s.token("bob")).await;
    let (node, random) = bob.session.split_once('.').expect("node.random");
    assert!(node.parse::<u64>().is_ok(), "{}", bob.session);
    assert_eq!(random.len(), 32, "{}", bob.session);
    let info = bob.join("g").await;
    assert_eq!(info["payload"]["count"], 2, "{info}");
    assert_eq!(alice.recv_type("user_joined").await["sender"]["id"], "bob");
    assert_eq!(s.online(), 2);

    // WebSocket to SSE: the same frame, with its position as the event id.
    alice
        .send_json(json!({"type": "send_message", "room": "g", "payload": {"content": "hi bob"}}))
        .await;
    let m = bob.recv_type("new_message").await;
    assert_eq!(m["payload"]["content"], "hi bob");
    let id: serde_json::Value =
        serde_json::from_str(bob.last_event_id.as_deref().expect("an event id")).unwrap();
    assert_eq!(
        id,
        json!({"room": "g", "epoch": info["payload"]["epoch"], "offset": m["offset"]})
    );

    // SSE to WebSocket, with the ack on the stream.
    bob.send_json(json!({"type": "send_message", "room": "g", "id": "b1", "payload": {"content": "hi alice"}}))
        .await;
    let ack = bob.recv_type("ack").await;
    assert_eq!(ack["id"], "b1");
    let m = alice.recv_type("new_message").await;
    assert_eq!(m["payload"]["content"], "hi alice");
    assert_eq!(m["sender"]["id"], "bob");

    // Typing and presence work the same way.
    bob.send_json(json!({"type": "typing", "room": "g"})).await;
    assert_eq!(
        alice.recv_type("user_typing").await["payload"]["typing"],
        true
    );
    alice
        .send_json(json!({"type": "typing", "room": "g"}))
        .await;
    assert_eq!(bob.recv_type("user_typing").await["sender"]["id"], "alice");
    bob.send_json(json!({"type": "online_users", "room": "g", "id": "o"}))
        .await;
    let online = bob.recv_type("online_users").await;
    assert_eq!(online["payload"]["count"], 2, "{online}");

    // The stream's end is the user's leaving.
    drop(bob);
    assert_eq!(alice.recv_type("user_left").await["sender"]["id"], "bob");
    eventually("bob is offline", || async { s.online() == 1 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_recovery_over_sse() {
    let s = TestServer::start().await;
    let mut alice = s.member("alice", "g").await;
    let token = s.token("bob");
    // Rooms in the query are joined as the stream opens.
    let mut bob = SseClient::connect(s.addr, &format!("token={token}&rooms=g,h"), &[])
        .await
        .expect("stream");
    let g = bob.recv_type("room_info").await;
    assert_eq!(g["room"], "g");
    assert_eq!(bob.recv_type("room_info").await["room"], "h");
    for n in 1..=3 {
        alice.send_json(json!({"type": "send_message", "room": "g", "payload": {"content": format!("m{n}")}})).await;
        assert_eq!(
            bob.recv_type("new_message").await["payload"]["content"],
            format!("m{n}")
        );
    }
    let last = bob.last_event_id.clone().expect("an event id");
    drop(bob);
    alice.recv_type("user_left").await;
    for n in 4..=5 {
        alice.send_json(json!({"type": "send_message", "room": "g", "id": format!("a{n}"), "payload": {"content": format!("m{n}")}})).await;
        alice.recv_type("ack").await;
    }

    // What EventSource does on its own: the same URL, with Last-Event-ID.
    let mut bob = SseClient::connect(
        s.addr,
        &format!("token={token}&rooms=g"),
        &[("Last-Event-ID", &last)],
    )
    .await
    .expect("stream");
    let mut replayed = Vec::new();
    let info = loop {
        let v = bob.recv().await;
        match v["type"].as_str() {
            Some("new_message") => replayed.push(v["payload"]["content"].clone()),
            Some("room_info") => break v,
            _ => {}
        }
    };
    assert_eq!(replayed, vec![json!("m4"), json!("m5")]);
    assert_eq!(info["payload"]["recovered"], true, "{info}");

    // What roomhub.js does: join_room with since, on the stream's session.
    let mut carol = SseClient::open(s.addr, &s.token("carol")).await;
    carol
        .send_json(json!({"type": "join_room", "payload": {"room_id": "g", "since": {"epoch": g["payload"]["epoch"], "offset": 3}}}))
        .await;
    let mut replayed = Vec::new();
    let info = loop {
        let v = carol.recv().await;
        match v["type"].as_str() {
            Some("new_message") => replayed.push(v["offset"].clone()),
            Some("room_info") => break v,
            _ => {}
        }
    };
    assert_eq!(replayed, vec![json!(4), json!(5)]);
    assert_eq!(info["payload"]["recovered"], true);
    // Another epoch: nothing replayed, told honestly.
    carol
        .send_json(json!({"type": "join_room", "payload": {"room_id": "g", "since": {"epoch": "another", "offset": 1}}}))
        .await;
    let info = carol.recv_type("room_info").await;
    assert_eq!(info["payload"]["recovered"], false, "{info}");

    // A history page over SSE.
    carol
        .send_json(json!({"type": "history", "room": "g", "id": "h", "payload": {"limit": 2}}))
        .await;
    let page = carol.recv_type("history").await;
    assert_eq!(
        roomhub_tests::contents(&page["payload"]["messages"]),
        ["m4", "m5"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_requests_obey_the_same_limits() {
    let s = TestServer::start_with(|c| {
        c.core.rate_limit_burst = 3;
        c.core.rate_limit_per_second = 1;
        c.max_connections_per_user = 2;
    })
    .await;
    // Admission: no token, a bad token, the per-user limit.
    let refused = SseClient::connect(s.addr, "", &[]).await.err().unwrap();
    assert_eq!(refused.status, 401, "{:?}", refused.body);
    let refused = SseClient::connect(s.addr, "token=nonsense", &[])
        .await
        .err()
        .unwrap();
    assert_eq!(refused.status, 401);
    let token = s.token("bob");
    let mut bob = SseClient::open(s.addr, &token).await;
    let _ws = Client::connect(format!("{}?token={token}", s.url()))
        .await
        .expect("second connection");
    let refused = SseClient::connect(s.addr, &format!("token={token}"), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(refused.status, 429, "{:?}", refused.body);

    // A bad request is answered on the stream and costs nothing else.
    bob.send_json(json!({"type": "send_message", "room": "nowhere", "payload": {"content": "x"}}))
        .await;
    assert_eq!(
        bob.recv_type("error").await["payload"]["code"],
        "NOT_IN_ROOM"
    );
    bob.post(b"{not json").await;
    assert_eq!(
        bob.recv_type("error").await["payload"]["code"],
        "INVALID_FORMAT"
    );
    // The rate limit: a burst of 3, then RATE_LIMITED.
    let mut dave = SseClient::open(s.addr, &s.token("dave")).await;
    dave.join("g").await;
    for n in 0..4 {
        dave.send_json(json!({"type": "send_message", "room": "g", "id": format!("m{n}"), "payload": {"content": "x"}}))
            .await;
    }
    let mut codes = Vec::new();
    while codes.len() < 4 {
        let v = dave.recv().await;
        match v["type"].as_str() {
            Some("ack") => codes.push("ack".to_string()),
            Some("error") => codes.push(v["payload"]["code"].as_str().unwrap().to_string()),
            _ => {}
        }
    }
    assert_eq!(codes, ["ack", "ack", "ack", "RATE_LIMITED"]);

    // Unknown sessions: 404, whatever their shape.
    for session in [
        "",
        "0.",
        "0.00000000000000000000000000000000",
        "../etc",
        "9.zz",
    ] {
        let (status, _) = post_to(s.addr, session, b"{}").await;
        assert!(status == 404 || status == 400, "{session}: {status}");
    }

    // Larger than the message limit: 413, and the stream ends with 1009,
    // the close a WebSocket client gets.
    let (status, body) = bob.post(&vec![b'x'; 5000]).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(bob.closed().await.0, 1009);
    // Not UTF-8: 1007.
    let mut carol = SseClient::open(s.addr, &s.token("carol")).await;
    let (status, _) = carol.post(&[b'"', 0xff, 0xfe, b'"']).await;
    assert_eq!(status, 400);
    assert_eq!(carol.closed().await.0, 1007);
    // The session is gone.
    let (status, _) = carol.post(b"{}").await;
    assert_eq!(status, 404);
    let (status, health) = s.get("/healthz").await;
    assert_eq!((status, health.as_str()), (200, r#"{"status":"ok"}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_that_never_reads_is_a_slow_consumer() {
    let s = TestServer::start_with(|c| {
        c.core.rate_limit_per_second = 0;
        c.send_queue_bytes = 32 * 1024;
    })
    .await;
    let mut slow = SseClient::open(s.addr, &s.token("slow")).await;
    slow.join("flood").await;
    let mut talker = s.member("talker", "flood").await;
    let content = "f".repeat(1900);
    // Enough to fill the kernel's buffers, the pipe and then the queue; the
    // slow client reads nothing meanwhile.
    for n in 0..6000 {
        talker
            .send_json(json!({"type": "send_message", "room": "flood", "payload": {"content": format!("{n} {content}")}}))
            .await;
    }
    talker.recv_type("user_left").await;
    // What it reads now ends with the slow-consumer close.
    assert_eq!(slow.closed().await.0, 4000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_comments_and_keep_the_stream_open() {
    let s = TestServer::start_with(|c| {
        c.core.ping_interval_ms = 200;
        c.core.pong_wait_ms = 500;
    })
    .await;
    let mut bob = SseClient::open(s.addr, &s.token("bob")).await;
    bob.join("g").await;
    // Past several pong waits: pings arrive, and nothing closes it (an SSE
    // client cannot answer a ping; its TCP connection vouches for it).
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1600);
    while let Ok(event) = tokio::time::timeout_at(deadline, bob.next_event()).await {
        let event = event.expect("the stream stays open");
        assert!(event.comment, "{event:?}");
        pings += 1;
    }
    assert!(pings >= 4, "{pings} pings");
    only_pings_for(&mut bob, 300).await;
    // Still a member.
    let mut alice = s.client("alice").await;
    assert_eq!(alice.join("g").await["payload"]["count"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_ends_sse_streams_with_1001() {
    let s = TestServer::start().await;
    let mut bob = SseClient::open(s.addr, &s.token("bob")).await;
    bob.join("g").await;
    let closing = tokio::spawn(async move { bob.closed().await });
    s.shutdown().await;
    assert_eq!(closing.await.unwrap().0, 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_answers_cors_for_allowed_origins_only() {
    let s = TestServer::start_with(|c| {
        c.allowed_origins = vec!["https://chat.example".into()];
    })
    .await;
    let token = s.token("bob");
    let refused = SseClient::connect(
        s.addr,
        &format!("token={token}"),
        &[("Origin", "https://evil.example")],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refused.status, 403);
    let bob = SseClient::connect(
        s.addr,
        &format!("token={token}"),
        &[("Origin", "https://chat.example")],
    )
    .await
    .expect("an allowed origin");
    let (status, body) = roomhub_tests::server::http_request(
        s.addr,
        &format!(
            "OPTIONS /sse/send?session={} HTTP/1.1\r\nHost: x\r\nOrigin: https://chat.example\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
            bob.session
        ),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    assert!(
        body.to_ascii_lowercase()
            .contains("access-control-allow-origin: https://chat.example"),
        "{body}"
    );
}
