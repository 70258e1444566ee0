//! A full disk under the embedded store, through the real server: the
//! store's writes fail on demand (the journal's, and the database's through
//! a redb storage backend), never the test machine's disk. Messages get
//! `UNAVAILABLE` and nothing else breaks: reads and recovery keep working,
//! the health check says so, and writes succeed again once there is room;
//! what was acknowledged is all there after a restart, and nothing else.
//! And the store's disk budget (`--history-max-bytes` with a data
//! directory): the rooms written least recently lose their stored history.

use std::time::Duration;

use roomhub_net::seq::faults::DiskFaults;
use roomhub_net::seq::store::Fsync;
use roomhub_tests::server::{Client, TestServer, eventually};
use serde_json::{Value, json};

async fn say(c: &mut Client, content: &str) -> Value {
    c.send_json(json!({"type": "send_message", "room": "g", "id": content, "payload": {"content": content}}))
        .await;
    loop {
        let f = c.recv().await;
        if f["id"] == content && (f["type"] == "ack" || f["type"] == "error") {
            return f;
        }
    }
}

async fn readyz(s: &TestServer) -> u16 {
    s.get("/readyz").await.0
}

async fn history(c: &mut Client) -> Vec<String> {
    c.send_json(json!({"type": "history", "room": "g", "id": "h", "payload": {"limit": 100}}))
        .await;
    let page = c.recv_type("history").await;
    roomhub_tests::contents(&page["payload"]["messages"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_messages_and_recovers() {
    for fsync in [Fsync::Background, Fsync::Always] {
        let dir =
            std::env::temp_dir().join(format!("roomhub-disk-{}-{fsync:?}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let faults = DiskFaults::default();
        let start = |faults: Option<DiskFaults>| {
            let dir = dir.clone();
            TestServer::start_with(move |c| {
                c.core.rate_limit_per_second = 0;
                c.data_dir = Some(dir);
                c.fsync = fsync;
                c.disk_faults = faults;
            })
        };
        let s = start(Some(faults.clone())).await;
        let mut alice = s.member("alice", "g").await;
        let mut bob = s.member("bob", "g").await;
        assert_eq!(say(&mut alice, "m1").await["type"], "ack");

        if fsync == Fsync::Background {
            // The disk fills between a journal write and its checkpoint:
            // acks go on (the journal has them); the checkpoint fails and
            // is retried; the health check reports it.
            faults.set_database_full(true);
            tokio::time::sleep(Duration::from_millis(1100)).await;
            assert_eq!(say(&mut alice, "m2").await["type"], "ack");
            eventually("the failed checkpoint is reported", async || {
                readyz(&s).await == 503
            })
            .await;
            assert_eq!(say(&mut alice, "m3").await["type"], "ack");
            faults.set_database_full(false);
            eventually("the retried checkpoint succeeds", async || {
                readyz(&s).await == 200
            })
            .await;
        }

        // The whole disk is full: messages are refused, nothing else is.
        faults.set_full(true);
        let refused = say(&mut alice, "lost").await;
        assert_eq!(
            refused["payload"]["code"], "UNAVAILABLE",
            "{fsync:?}: {refused}"
        );
        assert_eq!(readyz(&s).await, 503);
        let kept = if fsync == Fsync::Background {
            vec!["m1", "m2", "m3"]
        } else {
            vec!["m1"]
        };
        assert_eq!(history(&mut bob).await, kept, "{fsync:?}: reads work");
        // Recovery from an open room works too.
        bob.send_json(json!({"type": "leave_room", "room": "g", "id": "bye"}))
            .await;
        bob.recv_type("ack").await;
        let epoch = alice.join("g").await["payload"]["epoch"].clone();
        bob.send_json(json!({"type": "join_room", "payload": {"room_id": "g", "since": {"offset": 0, "epoch": epoch}}}))
            .await;
        let info = bob.recv_type("room_info").await;
        assert_eq!(info["payload"]["recovered"], true, "{fsync:?}: {info}");

        // Room again: the next message is stored, after the last acked.
        faults.set_full(false);
        let ack = say(&mut alice, "m4").await;
        assert_eq!(ack["type"], "ack", "{fsync:?}: {ack}");
        assert_eq!(
            ack["payload"]["offset"].as_u64(),
            Some(kept.len() as u64 + 1),
            "{ack}"
        );
        eventually("healthy again", async || readyz(&s).await == 200).await;
        drop((alice, bob));
        s.shutdown().await;

        let s = start(None).await;
        let mut carol = s.member("carol", "g").await;
        let mut want = kept.clone();
        want.push("m4");
        assert_eq!(
            history(&mut carol).await,
            want,
            "{fsync:?}: after a restart"
        );
        drop(carol);
        s.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The store's disk budget: a flood of 2 KB messages over eleven rooms,
/// with no member to keep them open on the hub, leaves what the store
/// holds within the budget (`roomhub_store_history_bytes`); the room
/// written first lost its history, so its member rejoining from before is
/// told `recovered: false`, while the latest room's member recovers all.
/// In both durability modes (the default one trims at its checkpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_budget_trims_the_rooms_written_least_recently() {
    const BUDGET: u64 = 40_000;
    for fsync in [Fsync::Background, Fsync::Always] {
        let dir =
            std::env::temp_dir().join(format!("roomhub-budget-{}-{fsync:?}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = TestServer::start_with(|c| {
            c.api_key = Some("k".into());
            c.core.rate_limit_per_second = 0;
            c.data_dir = Some(dir.clone());
            c.fsync = fsync;
            c.store_max_bytes = BUDGET;
        })
        .await;
        let rooms: Vec<String> = std::iter::once("old".to_string())
            .chain((0..10).map(|i| format!("new{i}")))
            .collect();
        let (mut alice, old_epoch) = s.stepped_out("alice", "old").await;
        let (mut bob, new_epoch) = s.stepped_out("bob", "new9").await;
        for room in &rooms {
            for n in 1..=5 {
                let content = format!("{n:04}{}", "x".repeat(1990));
                let body = json!({"room": room, "payload": {"content": content}});
                let (status, reply) = roomhub_tests::server::http_post(
                    s.addr,
                    "/api/publish",
                    Some("k"),
                    &body.to_string(),
                )
                .await;
                assert_eq!(status, 200, "{reply}");
            }
        }
        let rejoin = |room: &str, epoch: &Value| json!({"type": "join_room", "payload": {"room_id": room, "since": {"offset": 0, "epoch": epoch}}});
        // The default store trims when it next writes to its database.
        let mut tries = 0;
        loop {
            alice.send_json(rejoin("old", &old_epoch)).await;
            let info = alice.recv_type("room_info").await;
            assert_eq!(info["payload"]["offset"], 5, "{fsync:?}: {info}");
            alice.leave("old").await;
            if info["payload"]["recovered"] == false {
                break;
            }
            tries += 1;
            assert!(tries < 500, "{fsync:?}: the oldest room kept its history");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stored = s.metric("roomhub_store_history_bytes").await;
        assert!(
            stored > 10_000 && stored <= BUDGET,
            "{fsync:?}: {stored} bytes stored"
        );
        bob.send_json(rejoin("new9", &new_epoch)).await;
        let (replayed, info) = bob.replayed_then_info().await;
        assert_eq!(info["payload"]["recovered"], true, "{fsync:?}: {info}");
        assert_eq!(replayed.len(), 5, "{fsync:?}");
        s.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
