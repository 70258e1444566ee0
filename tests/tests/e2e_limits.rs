//! Limits that hold under abuse, through the real server on loopback:
//! per-address connection limits.

use roomhub_net::config::PerIpLimits;
use roomhub_tests::server::{Client, TestServer, eventually};

async fn attempt(s: &TestServer, user: &str) -> Result<Client, (u16, serde_json::Value)> {
    Client::connect(format!("{}?token={}", s.url(), s.token(user)))
        .await
        .map_err(|r| (r.status, r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_may_hold_so_many_connections() {
    let s = TestServer::start_with(|c| {
        c.per_ip = PerIpLimits {
            max_connections: 3,
            ..PerIpLimits::default()
        };
    })
    .await;
    let mut held = Vec::new();
    for user in ["a", "b", "c"] {
        held.push(attempt(&s, user).await.expect("within the limit"));
    }
    // Another user from the same address: refused, with a JSON reason.
    let (status, body) = attempt(&s, "d").await.err().expect("over the limit");
    assert_eq!(status, 429);
    assert!(
        body["error"].as_str().unwrap().contains("address"),
        "{body}"
    );
    // A closed connection gives its place back.
    held.pop();
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = attempt(&s, "d").await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the slot came back");
    // Refusals are counted (one above, and any retries while the slot
    // was still held).
    let (_, metrics) = s.get("/metrics").await;
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("roomhub_connections_refused_total{limit=\"per_ip\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no per_ip refusals counted:\n{metrics}"));
    assert!(refused >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_may_open_so_many_connections_per_second() {
    let s = TestServer::start_with(|c| {
        c.per_ip = PerIpLimits {
            connections_per_second: 5,
            ..PerIpLimits::default()
        };
    })
    .await;
    let mut accepted = 0;
    let mut refused = 0;
    // A burst of 20 attempts, bad tokens included: each costs the address
    // a token before the token is even read.
    for i in 0..20 {
        let url = if i % 2 == 0 {
            format!("{}?token={}", s.url(), s.token("u"))
        } else {
            format!("{}?token=garbage", s.url())
        };
        match Client::connect(url).await {
            Ok(_) => accepted += 1,
            Err(r) if r.status == 429 => refused += 1,
            Err(r) => assert_eq!(r.status, 401, "{:?}", r.body),
        }
    }
    assert!(accepted <= 5, "accepted {accepted}");
    assert!(refused >= 14, "refused {refused}");
    // A second later the address may connect again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(attempt(&s, "u").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_is_exempt_only_when_configured() {
    let s = TestServer::start_with(|c| {
        c.per_ip = PerIpLimits {
            max_connections: 1,
            connections_per_second: 1,
            exempt_loopback: true,
        };
    })
    .await;
    let mut held = Vec::new();
    for user in ["a", "b", "c", "d"] {
        held.push(attempt(&s, user).await.expect("loopback is exempt"));
    }
}

/// `--history-max-bytes`: a flood of 2 KB messages over many rooms keeps
/// the history within the bound by trimming the least recently active
/// room first. Its member, rejoining from before, is told
/// `recovered: false`; a member of the latest room recovers everything.
/// In memory mode (the sequencer's rooms) and the default store (the open
/// rooms the hub holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_bound_trims_the_least_recently_active_room_first() {
    use serde_json::json;
    for durable in [false, true] {
        let dir = std::env::temp_dir().join(format!("roomhub-bound-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = TestServer::start_with(|c| {
            c.api_key = Some("k".into());
            c.core.rate_limit_per_second = 0;
            c.core.history_max_bytes = 40_000;
            c.data_dir = durable.then(|| dir.clone());
        })
        .await;
        let publish = |room: String, n: usize| {
            let addr = s.addr;
            async move {
                let content = format!("{n:04}{}", "x".repeat(1990));
                let body = json!({"room": room, "payload": {"content": content}});
                let (status, reply) = roomhub_tests::server::http_post(
                    addr,
                    "/api/publish",
                    Some("k"),
                    &body.to_string(),
                )
                .await;
                assert_eq!(status, 200, "{reply}");
            }
        };
        // Members keep every room open on the hub; alice and bob each step
        // out of one at offset 0, to come back with `since`.
        let mut keeper = s.client("keeper").await;
        let rooms: Vec<String> = std::iter::once("old".to_string())
            .chain((0..10).map(|i| format!("new{i}")))
            .collect();
        for room in &rooms {
            keeper.join(room).await;
        }
        let (mut alice, old_epoch) = s.stepped_out("alice", "old").await;
        let (mut bob, new_epoch) = s.stepped_out("bob", "new9").await;
        for room in &rooms {
            for n in 1..=5 {
                publish(room.clone(), n).await;
            }
        }
        // Every message reached the keeper (the hub delivered them all).
        for _ in 0..rooms.len() * 5 {
            keeper.recv_type("new_message").await;
        }
        let rejoin = |room: &str, epoch: &serde_json::Value| json!({"type": "join_room", "payload": {"room_id": room, "since": {"offset": 0, "epoch": epoch}}});
        alice.send_json(rejoin("old", &old_epoch)).await;
        let info = alice.recv_type("room_info").await;
        assert_eq!(
            (
                info["payload"]["recovered"].as_bool(),
                info["payload"]["offset"].as_u64()
            ),
            (Some(false), Some(5)),
            "durable {durable}: the oldest room was trimmed: {info}"
        );
        bob.send_json(rejoin("new9", &new_epoch)).await;
        let (replayed, info) = bob.replayed_then_info().await;
        assert_eq!(
            info["payload"]["recovered"], true,
            "durable {durable}: {info}"
        );
        assert_eq!(replayed.len(), 5, "durable {durable}");
        s.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Churn gives everything back: connect, join, leave, disconnect cycles,
/// a few at a time, leave no connection, room or address slot behind (the
/// million cycles and the memory are `roomhub-bench churn`'s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_nothing_behind() {
    use futures_util::StreamExt;
    use serde_json::json;
    let s = TestServer::start_with(|c| {
        c.max_connections_per_user = 0;
        c.per_ip = PerIpLimits {
            max_connections: 8,
            ..PerIpLimits::default()
        };
    })
    .await;
    let cycles: usize = 1_000;
    futures_util::stream::iter(0..cycles)
        .for_each_concurrent(8, |i| {
            let s = &s;
            async move {
                let room = format!("churn-{}", i % 50);
                let mut c = loop {
                    // The address's 8 slots are given back as sockets end.
                    match attempt(s, &format!("u{}", i % 20)).await {
                        Ok(c) => break c,
                        Err((429, _)) => {
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await
                        }
                        Err(other) => panic!("cycle {i}: {other:?}"),
                    }
                };
                c.join(&room).await;
                c.send_json(json!({"type": "leave_room", "room": room, "id": "l"}))
                    .await;
                c.recv_type("ack").await;
                drop(c);
            }
        })
        .await;
    eventually("no connection and no room left", async || {
        (s.online(), s.metric("roomhub_rooms").await) == (0, 0)
    })
    .await;
    assert_eq!((s.online(), s.metric("roomhub_rooms").await), (0, 0));
    // Every address slot came back: the limit admits a full 8 again.
    let mut held = Vec::new();
    for i in 0..8 {
        held.push(
            attempt(&s, &format!("again{i}"))
                .await
                .expect("a free slot"),
        );
    }
    assert!(attempt(&s, "one-more").await.is_err());
}
