//! Behaviour of the hub, one protocol rule at a time.

use bytes::Bytes;
use serde_json::{Value, json};

use super::*;
use crate::event::{FrameKind, RelayOutcome, RemoteMember, close};
use crate::ids::{Epoch, NodeId, RoomAccess};
use crate::testkit::{START, TestWorld};

fn world() -> TestWorld {
    TestWorld::new(Config::default())
}

fn join(w: &mut TestWorld, conn: ConnId, room: &str) -> Value {
    w.send_json(conn, json!({"type": "join_room", "room": room}));
    let frames = w.take(conn);
    frames
        .into_iter()
        .find(|f| f["type"] == "room_info")
        .expect("room_info after join")
}

fn say(w: &mut TestWorld, conn: ConnId, room: &str, text: &str, id: &str) {
    w.send_json(
        conn,
        json!({"type": "send_message", "room": room, "id": id, "payload": {"content": text}}),
    );
}

fn error_code(frame: &Value) -> &str {
    assert_eq!(frame["type"], "error", "{frame}");
    frame["payload"]["code"].as_str().unwrap()
}

#[test]
fn join_answers_room_info_with_offset_and_epoch() {
    let mut w = world();
    let a = w.connect("alice");
    w.send_json(
        a,
        json!({"type": "join_room", "room": "", "payload": {"room_id": "general"}, "id": "j1"}),
    );
    let frames = w.take(a);
    assert_eq!(frames.len(), 2);
    let info = &frames[0];
    assert_eq!(info["type"], "room_info");
    assert_eq!(info["payload"]["room_id"], "general");
    assert_eq!(
        info["payload"]["users"],
        json!([{"id": "alice", "name": "alice"}])
    );
    assert_eq!(info["payload"]["count"], 1);
    assert_eq!(info["payload"]["offset"], 0);
    assert!(
        info["payload"]["epoch"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    assert!(info["payload"].get("recovered").is_none());
    assert_eq!(info["timestamp"], "2026-01-01T00:00:00.000Z");
    assert_eq!(
        frames[1],
        json!({"type": "ack", "room": "general", "id": "j1", "timestamp": "2026-01-01T00:00:00.000Z"})
    );
}

#[test]
fn second_user_joining_is_announced_to_the_others() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, a, "g");
    let info = join(&mut w, b, "g");
    assert_eq!(info["payload"]["count"], 2);
    let joined = w.take_one(a);
    assert_eq!(joined["type"], "user_joined");
    assert_eq!(joined["room"], "g");
    assert_eq!(joined["payload"], json!({"id": "bob", "name": "bob"}));
    assert_eq!(joined["sender"], json!({"id": "bob", "name": "bob"}));
}

#[test]
fn send_message_reaches_others_not_the_sending_connection_and_is_acked() {
    let mut w = world();
    let a = w.connect("alice");
    let a2 = w.connect("alice");
    let b = w.connect("bob");
    for c in [a, a2, b] {
        join(&mut w, c, "g");
    }
    w.take_all();
    w.advance_ms(1500);
    w.send_json(
        a,
        json!({"type": "send_message", "room": "g", "id": "m1",
               "payload": {"content": "hello", "reply_to": "x1"},
               "sender": {"id": "mallory", "name": "M"}, "timestamp": "1999-01-01T00:00:00Z"}),
    );
    let ack = w.take_one(a);
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["id"], "m1");
    assert_eq!(ack["room"], "g");
    assert_eq!(ack["payload"]["offset"], 1);
    let message_id = ack["payload"]["message_id"].as_str().unwrap().to_string();
    for c in [a2, b] {
        let m = w.take_one(c);
        assert_eq!(m["type"], "new_message");
        assert_eq!(m["room"], "g");
        assert_eq!(m["id"], message_id.as_str());
        assert_eq!(m["offset"], 1);
        assert_eq!(m["payload"], json!({"content": "hello", "reply_to": "x1"}));
        assert_eq!(
            m["sender"],
            json!({"id": "alice", "name": "alice"}),
            "server decides the sender"
        );
        assert_eq!(
            m["timestamp"], "2026-01-01T00:00:01.500Z",
            "server decides the time"
        );
    }
}

#[test]
fn offsets_increase_per_room() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, a, "x");
    join(&mut w, a, "y");
    join(&mut w, b, "x");
    join(&mut w, b, "y");
    w.take_all();
    say(&mut w, a, "x", "1", "1");
    say(&mut w, a, "x", "2", "2");
    say(&mut w, a, "y", "3", "3");
    let offsets: Vec<(String, u64)> = w
        .take(b)
        .iter()
        .map(|m| {
            (
                m["room"].as_str().unwrap().to_string(),
                m["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(offsets, [("x".into(), 1), ("x".into(), 2), ("y".into(), 1)]);
}

#[test]
fn typing_and_stop_typing_are_distinguishable_and_go_to_other_members() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, a, "g");
    join(&mut w, b, "g");
    w.take_all();
    w.send_json(a, json!({"type": "typing", "room": "g"}));
    w.send_json(
        a,
        json!({"type": "stop_typing", "payload": {"room_id": "g"}}),
    );
    assert!(w.take(a).is_empty());
    let frames = w.take(b);
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0]["type"], "user_typing");
    assert_eq!(frames[0]["payload"]["typing"], true);
    assert_eq!(frames[0]["sender"]["id"], "alice");
    assert_eq!(frames[1]["payload"]["typing"], false);
}

#[test]
fn typing_is_ephemeral_and_messages_are_not() {
    let mut hub = Hub::new(Config::default());
    let mut seq = crate::MemorySequencer::new(1, crate::HistoryLimits::from_config(hub.config()));
    let mut feed = Vec::new();
    let t = START;
    for (c, u) in [(1, "a"), (2, "b")] {
        hub.handle(
            Input::Connected {
                conn: ConnId(c),
                identity: Identity::user(u),
            },
            t,
        );
        hub.handle(text(c, r#"{"type":"join_room","room":"g"}"#), t);
        while let Some(o) = hub.poll_output() {
            seq.serve(&o, t, &mut feed);
        }
        for i in feed.drain(..) {
            hub.handle(i, t);
        }
    }
    while hub.poll_output().is_some() {}
    hub.handle(text(1, r#"{"type":"typing","room":"g"}"#), t);
    assert!(matches!(
        hub.poll_output(),
        Some(Output::Send {
            conn: ConnId(2),
            kind: FrameKind::Ephemeral,
            ..
        })
    ));
    hub.handle(
        text(
            1,
            r#"{"type":"send_message","room":"g","payload":{"content":"x"}}"#,
        ),
        t,
    );
    let Some(Output::Append(req)) = hub.poll_output() else {
        panic!("append expected")
    };
    seq.serve(&Output::Append(req), t, &mut feed);
    for i in feed.drain(..) {
        hub.handle(i, t);
    }
    assert!(matches!(
        hub.poll_output(),
        Some(Output::Send {
            conn: ConnId(2),
            kind: FrameKind::Live,
            ..
        })
    ));
}

fn text(conn: u64, s: &str) -> Input {
    Input::Text {
        conn: ConnId(conn),
        frame: Bytes::copy_from_slice(s.as_bytes()),
    }
}

#[test]
fn requests_needing_membership_get_not_in_room_and_reach_nobody() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, b, "g");
    w.take_all();
    for req in [
        json!({"type": "send_message", "room": "g", "id": "1", "payload": {"content": "x"}}),
        json!({"type": "typing", "room": "g", "id": "2"}),
        json!({"type": "stop_typing", "room": "g", "id": "3"}),
        json!({"type": "online_users", "room": "g", "id": "4"}),
        json!({"type": "leave_room", "room": "g", "id": "5"}),
    ] {
        let id = req["id"].clone();
        w.send_json(a, req);
        let e = w.take_one(a);
        assert_eq!(error_code(&e), "NOT_IN_ROOM");
        assert_eq!(e["id"], id);
    }
    assert!(w.take(b).is_empty(), "nothing reaches the room");
}

#[test]
fn online_users_lists_each_user_once() {
    let mut w = world();
    let a = w.connect("alice");
    let a2 = w.connect("alice");
    let b = w.connect("bob");
    for c in [a, a2, b] {
        join(&mut w, c, "g");
    }
    w.take_all();
    w.send_json(b, json!({"type": "online_users", "room": "g", "id": "q"}));
    let frames = w.take(b);
    assert_eq!(frames[0]["type"], "online_users");
    assert_eq!(frames[0]["payload"]["room_id"], "g");
    assert_eq!(frames[0]["payload"]["count"], 2);
    assert_eq!(
        frames[0]["payload"]["users"],
        json!([{"id": "alice", "name": "alice"}, {"id": "bob", "name": "bob"}])
    );
    assert_eq!(frames[1]["type"], "ack");
}

#[test]
fn presence_counts_a_user_once_and_leaves_with_the_last_connection() {
    let mut w = world();
    let b = w.connect("bob");
    join(&mut w, b, "g");
    let a1 = w.connect("alice");
    let a2 = w.connect("alice");
    join(&mut w, a1, "g");
    assert_eq!(w.take_types(b), ["user_joined"]);
    let info = join(&mut w, a2, "g");
    assert_eq!(info["payload"]["count"], 2);
    assert!(
        w.take(b).is_empty(),
        "second connection of alice is not a new user"
    );
    w.send_json(a1, json!({"type": "leave_room", "room": "g", "id": "l"}));
    assert_eq!(w.take_types(a1), ["ack"]);
    assert!(w.take(b).is_empty(), "alice is still present through a2");
    w.input(Input::Disconnected { conn: a2 });
    let left = w.take_one(b);
    assert_eq!(left["type"], "user_left");
    assert_eq!(left["payload"], json!({"id": "alice", "name": "alice"}));
}

#[test]
fn rejoining_is_idempotent() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, a, "g");
    join(&mut w, b, "g");
    w.take_all();
    let info = join(&mut w, b, "g");
    assert_eq!(info["payload"]["count"], 2);
    assert!(w.take(a).is_empty(), "no second user_joined");
    assert_eq!(w.node.hub.rooms_of(b).len(), 1);
    w.node.hub.check_invariants().unwrap();
}

#[test]
fn empty_rooms_are_removed_but_their_history_is_kept() {
    let mut w = world();
    let a = w.connect("alice");
    let info = join(&mut w, a, "g");
    let epoch = info["payload"]["epoch"].as_str().unwrap().to_string();
    say(&mut w, a, "g", "one", "1");
    say(&mut w, a, "g", "two", "2");
    w.send_json(a, json!({"type": "leave_room", "room": "g"}));
    assert_eq!(w.node.hub.stats().rooms, 0);
    w.take_all();
    // Alice comes back on a new connection (her old one must not get its own
    // messages back; a new one may have missed their acks).
    let a2 = w.connect("alice");
    w.send_json(a2, json!({"type": "join_room", "room": "g", "payload": {"since": {"offset": 0, "epoch": epoch}}}));
    let frames = w.take(a2);
    let contents: Vec<&str> = frames
        .iter()
        .filter_map(|f| f["payload"]["content"].as_str())
        .collect();
    assert_eq!(contents, ["one", "two"]);
    assert_eq!(frames[2]["payload"]["recovered"], true);
    assert_eq!(frames[2]["payload"]["offset"], 2);
}

#[test]
fn send_direct_reaches_every_connection_of_the_user() {
    let mut w = world();
    let a = w.connect("alice");
    let b1 = w.connect("bob");
    let b2 = w.connect("bob");
    w.send_json(
        a,
        json!({"type": "send_direct", "id": "d1", "payload": {"to": "bob", "content": "psst"}}),
    );
    let ack = w.take_one(a);
    assert_eq!(ack["type"], "ack");
    let mid = ack["payload"]["message_id"].clone();
    for c in [b1, b2] {
        let m = w.take_one(c);
        assert_eq!(m["type"], "direct_message");
        assert_eq!(m["id"], mid);
        assert_eq!(m["payload"], json!({"content": "psst"}));
        assert_eq!(m["sender"]["id"], "alice");
    }
}

#[test]
fn send_direct_to_nobody_is_recipient_offline() {
    let mut w = world();
    let a = w.connect("alice");
    w.send_json(
        a,
        json!({"type": "send_direct", "id": "d", "payload": {"to": "ghost", "content": "x"}}),
    );
    assert_eq!(error_code(&w.take_one(a)), "RECIPIENT_OFFLINE");
    // To yourself with no other connection: nobody to deliver to.
    w.send_json(
        a,
        json!({"type": "send_direct", "payload": {"to": "alice", "content": "x"}}),
    );
    assert_eq!(error_code(&w.take_one(a)), "RECIPIENT_OFFLINE");
}

#[test]
fn rooms_claim_forbids_other_rooms() {
    let mut w = world();
    let mut id = Identity::user("carol");
    id.rooms = Some(RoomAccess::new(["lobby", "team-*"]));
    let c = w.connect_as("carol", id);
    assert_eq!(join(&mut w, c, "lobby")["payload"]["room_id"], "lobby");
    assert_eq!(
        join(&mut w, c, "team-red")["payload"]["room_id"],
        "team-red"
    );
    w.send_json(c, json!({"type": "join_room", "room": "secret", "id": "s"}));
    let e = w.take_one(c);
    assert_eq!(error_code(&e), "FORBIDDEN");
    assert_eq!(e["id"], "s");
}

#[test]
fn rooms_per_connection_are_bounded() {
    let mut w = TestWorld::new(Config {
        max_rooms_per_connection: 2,
        ..Config::default()
    });
    let a = w.connect("alice");
    join(&mut w, a, "r1");
    join(&mut w, a, "r2");
    w.send_json(a, json!({"type": "join_room", "room": "r3"}));
    assert_eq!(error_code(&w.take_one(a)), "TOO_MANY_ROOMS");
    // Rejoining a room already joined is not a new room.
    assert_eq!(join(&mut w, a, "r2")["payload"]["room_id"], "r2");
}

#[test]
fn rate_limit_burst_then_refill() {
    let mut w = world();
    let a = w.connect("alice");
    join(&mut w, a, "g");
    w.take_all();
    for i in 0..10 {
        say(&mut w, a, "g", "x", &i.to_string());
    }
    assert_eq!(w.take_types(a), vec!["ack"; 10]);
    say(&mut w, a, "g", "x", "over");
    let e = w.take_one(a);
    assert_eq!(error_code(&e), "RATE_LIMITED");
    assert_eq!(e["id"], "over");
    w.advance_ms(1000);
    say(&mut w, a, "g", "x", "later");
    assert_eq!(w.take_types(a), ["ack"]);
    // Joins and presence queries do not draw on the message budget.
    assert_eq!(join(&mut w, a, "h")["type"], "room_info");
}

#[test]
fn rate_limit_zero_turns_it_off() {
    let mut w = TestWorld::new(Config {
        rate_limit_per_second: 0,
        ..Config::default()
    });
    let a = w.connect("alice");
    join(&mut w, a, "g");
    w.take_all();
    for i in 0..100 {
        say(&mut w, a, "g", "x", &i.to_string());
    }
    assert_eq!(w.take_types(a), vec!["ack"; 100]);
}

#[test]
fn binary_frames_get_unsupported_frame_and_the_connection_stays() {
    let mut w = world();
    let a = w.connect("alice");
    w.input(Input::Binary { conn: a });
    assert_eq!(error_code(&w.take_one(a)), "UNSUPPORTED_FRAME");
    assert_eq!(join(&mut w, a, "g")["type"], "room_info");
}

#[test]
fn bad_requests_never_cost_the_connection() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, b, "g");
    for bad in [
        "nope",
        "[1]",
        r#"{"type":"fly"}"#,
        r#"{"type":"join_room"}"#,
        r#"{"type":"join_room","room":"\u0001"}"#,
    ] {
        w.send(a, bad);
    }
    let codes: Vec<String> = w
        .take(a)
        .iter()
        .map(|f| error_code(f).to_string())
        .collect();
    assert_eq!(
        codes,
        [
            "INVALID_FORMAT",
            "INVALID_FORMAT",
            "UNKNOWN_TYPE",
            "MISSING_ROOM",
            "INVALID_ROOM"
        ]
    );
    join(&mut w, a, "g");
    w.take_all();
    say(&mut w, a, "g", "still here", "ok");
    assert_eq!(w.take_one(b)["payload"]["content"], "still here");
}

#[test]
fn oversize_frames_close_with_1009() {
    let mut w = world();
    let a = w.connect("alice");
    let big = format!(r#"{{"type":"typing","room":"{}"}}"#, "x".repeat(5000));
    w.send(a, &big);
    assert_eq!(w.closed[&a].0, close::MESSAGE_TOO_BIG);
    assert!(!w.node.hub.is_connected(a));
}

#[test]
fn pings_are_due_every_interval_and_traffic_keeps_a_connection_alive() {
    let mut w = world();
    let a = w.connect("alice");
    assert_eq!(w.node.poll_timeout(), Some(START.plus_ms(54_000)));
    w.advance_ms(54_000);
    assert_eq!(w.pings.get(&a), Some(&1));
    w.input(Input::Activity { conn: a });
    w.advance_ms(54_000);
    assert_eq!(w.pings.get(&a), Some(&2));
    w.input(Input::Activity { conn: a });
    w.advance_ms(59_000);
    assert!(w.node.hub.is_connected(a));
}

#[test]
fn silence_past_the_pong_wait_closes_and_leaves_rooms() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, a, "g");
    join(&mut w, b, "g");
    w.take_all();
    for _ in 0..6 {
        w.advance_ms(10_000);
        w.input(Input::Activity { conn: b });
    }
    assert_eq!(
        w.closed.get(&a).map(|c| c.0),
        Some(close::HEARTBEAT_TIMEOUT)
    );
    assert!(w.node.hub.is_connected(b));
    assert_eq!(w.take_types(b), ["user_left"]);
}

#[test]
fn token_expiry_closes_with_1008() {
    let mut w = world();
    let mut id = Identity::user("alice");
    id.expires_at = Some(START.plus_ms(5_000));
    let a = w.connect_as("alice", id);
    w.advance_ms(4_999);
    assert!(w.node.hub.is_connected(a));
    w.advance_ms(1);
    assert_eq!(
        w.closed[&a],
        (close::POLICY_VIOLATION, "token expired".to_string())
    );
    let mut expired = Identity::user("late");
    expired.expires_at = Some(w.now);
    let l = w.connect_as("late", expired);
    assert_eq!(w.closed[&l].0, close::POLICY_VIOLATION);
}

#[test]
fn slow_consumer_is_closed_with_4000_and_leaves() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, a, "g");
    join(&mut w, b, "g");
    w.take_all();
    w.input(Input::QueueOverflow { conn: b });
    assert_eq!(w.closed[&b].0, close::SLOW_CONSUMER);
    assert_eq!(w.take_types(a), ["user_left"]);
    w.node.hub.check_invariants().unwrap();
    // A late disconnect for a connection the hub already dropped is ignored.
    w.input(Input::Disconnected { conn: b });
    w.node.hub.check_invariants().unwrap();
}

#[test]
fn shutdown_closes_everyone_with_1001_and_refuses_newcomers() {
    let mut w = world();
    let conns: Vec<ConnId> = ["a", "b", "c"].iter().map(|u| w.connect(u)).collect();
    join(&mut w, conns[0], "g");
    join(&mut w, conns[1], "g");
    w.take_all();
    w.input(Input::Shutdown);
    for c in &conns {
        assert_eq!(w.closed[c].0, close::GOING_AWAY);
    }
    assert!(
        w.take_all().is_empty(),
        "no presence chatter while shutting down"
    );
    let late = w.connect("d");
    assert_eq!(w.closed[&late].0, close::GOING_AWAY);
    assert_eq!(w.node.hub.stats(), HubStats::default());
}

#[test]
fn recovery_replays_exactly_what_was_missed() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, a, "g");
    let info = join(&mut w, b, "g");
    let epoch = info["payload"]["epoch"].as_str().unwrap().to_string();
    say(&mut w, a, "g", "1", "1");
    let seen = w.take(b).last().unwrap()["offset"].as_u64().unwrap();
    w.input(Input::Disconnected { conn: b });
    say(&mut w, a, "g", "2", "2");
    say(&mut w, a, "g", "3", "3");
    let b2 = w.connect("bob");
    w.send_json(b2, json!({"type": "join_room", "room": "g", "payload": {"since": {"offset": seen, "epoch": epoch}}}));
    let frames = w.take(b2);
    let got: Vec<(u64, &str)> = frames[..2]
        .iter()
        .map(|f| {
            (
                f["offset"].as_u64().unwrap(),
                f["payload"]["content"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [(2, "2"), (3, "3")]);
    assert_eq!(frames[2]["type"], "room_info");
    assert_eq!(frames[2]["payload"]["recovered"], true);
    assert_eq!(frames.len(), 3);
}

#[test]
fn recovery_is_refused_honestly_for_another_epoch_or_trimmed_history() {
    let mut w = TestWorld::new(Config {
        history_max_messages: 3,
        rate_limit_per_second: 0,
        ..Config::default()
    });
    let a = w.connect("alice");
    let info = join(&mut w, a, "g");
    let epoch = info["payload"]["epoch"].as_str().unwrap().to_string();
    for i in 0..5 {
        say(&mut w, a, "g", "m", &i.to_string());
    }
    w.take_all();
    let b = w.connect("bob");
    let rejoin = |w: &mut TestWorld, offset: u64, epoch: &str| {
        w.send_json(b, json!({"type": "join_room", "room": "g", "payload": {"since": {"offset": offset, "epoch": epoch}}}));
        w.take(b)
    };
    let other = rejoin(&mut w, 1, "some-other-epoch");
    assert_eq!(other.len(), 1);
    assert_eq!(other[0]["payload"]["recovered"], false);
    let trimmed = rejoin(&mut w, 1, &epoch);
    assert_eq!(trimmed.len(), 1, "nothing partial is replayed");
    assert_eq!(trimmed[0]["payload"]["recovered"], false);
    let future = rejoin(&mut w, 99, &epoch);
    assert_eq!(future[0]["payload"]["recovered"], false);
    let kept = rejoin(&mut w, 2, &epoch);
    assert_eq!(kept.len(), 4);
    assert_eq!(kept[3]["payload"]["recovered"], true);
}

#[test]
fn recovery_respects_the_age_limit() {
    let mut w = TestWorld::new(Config {
        history_max_age_ms: 60_000,
        ..Config::default()
    });
    let a = w.connect("alice");
    let epoch = join(&mut w, a, "g")["payload"]["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    say(&mut w, a, "g", "old", "1");
    w.advance_ms(30_000);
    w.input(Input::Activity { conn: a });
    say(&mut w, a, "g", "new", "2");
    w.advance_ms(40_000);
    let b = w.connect("bob");
    w.send_json(b, json!({"type": "join_room", "room": "g", "payload": {"since": {"offset": 0, "epoch": epoch.clone()}}}));
    assert_eq!(w.take(b)[0]["payload"]["recovered"], false);
    w.send_json(b, json!({"type": "join_room", "room": "g", "payload": {"since": {"offset": 1, "epoch": epoch}}}));
    let frames = w.take(b);
    assert_eq!(frames[0]["payload"]["content"], "new");
    assert_eq!(frames[1]["payload"]["recovered"], true);
}

/// A hub whose sequencer is played by the test, to exercise the seam.
struct Manual {
    hub: Hub,
    now: Timestamp,
}

impl Manual {
    fn new() -> Self {
        Manual {
            hub: Hub::new(Config::default()),
            now: START,
        }
    }
    /// A cluster node with id `node`.
    fn clustered(node: u64) -> Self {
        Manual::clustered_with(node, Config::default())
    }
    /// A cluster node with id `node` and otherwise `config`.
    fn clustered_with(node: u64, config: Config) -> Self {
        Manual {
            hub: Hub::new(Config {
                node_id: NodeId(node),
                clustered: true,
                ..config
            }),
            now: START,
        }
    }
    fn connect(&mut self, conn: u64, user: &str) {
        self.input(Input::Connected {
            conn: ConnId(conn),
            identity: Identity::user(user),
        });
    }
    fn input(&mut self, input: Input) -> Vec<Output> {
        self.hub.handle(input, self.now);
        std::iter::from_fn(|| self.hub.poll_output()).collect()
    }
    fn text(&mut self, conn: u64, s: &str) -> Vec<Output> {
        self.input(text(conn, s))
    }
}

fn sends_to(outs: &[Output], conn: u64) -> Vec<Value> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send { conn: c, frame, .. } if c.0 == conn => {
                serde_json::from_slice(frame).ok()
            }
            _ => None,
        })
        .collect()
}

fn msg(room: &str, epoch: &str, offset: u64) -> SequencedMessage {
    SequencedMessage {
        room: RoomName::parse(room, 64).unwrap(),
        epoch: Epoch::new(epoch),
        offset,
        id: format!("{epoch}-{offset}").into(),
        sender: UserRef {
            id: "z".into(),
            name: "z".into(),
        },
        content: format!("m{offset}").into(),
        reply_to: None,
        timestamp: START,
        origin: None,
        ticket: None,
    }
}

/// A snapshot retaining offsets `first..=head` (none when `first > head`).
fn snapshot(room: &str, epoch: &str, head: u64, first: u64) -> RoomSnapshot {
    RoomSnapshot {
        room: RoomName::parse(room, 64).unwrap(),
        epoch: Epoch::new(epoch),
        head,
        messages: (first..=head).map(|o| msg(room, epoch, o)).collect(),
        presence: Vec::new(),
    }
}

#[test]
fn the_hub_does_not_number_messages_itself() {
    let mut m = Manual::new();
    m.input(Input::Connected {
        conn: ConnId(1),
        identity: Identity::user("a"),
    });
    let outs = m.text(1, r#"{"type":"join_room","room":"g","id":"j"}"#);
    assert_eq!(
        outs,
        [Output::OpenRoom {
            room: RoomName::parse("g", 64).unwrap(),
            after: None
        }]
    );
    let outs = m.input(Input::RoomOpened(snapshot("g", "E", 7, 5)));
    let frames = sends_to(&outs, 1);
    assert_eq!(frames[0]["payload"]["offset"], 7);
    assert_eq!(frames[0]["payload"]["epoch"], "E");
    let outs = m.text(
        1,
        r#"{"type":"send_message","room":"g","id":"s","payload":{"content":"hi"}}"#,
    );
    let [Output::Append(req)] = outs.as_slice() else {
        panic!("{outs:?}")
    };
    assert_eq!(
        req.origin.as_ref().unwrap().request_id.as_deref(),
        Some("s")
    );
    // Nothing is acked until the sequencer says so.
    let failed = m.input(Input::AppendFailed((**req).clone()));
    let e = &sends_to(&failed, 1)[0];
    assert_eq!(error_code(e), "UNAVAILABLE");
    assert_eq!(e["id"], "s");
}

#[test]
fn joins_wait_for_the_room_to_open_and_later_requests_keep_their_order() {
    let mut m = Manual::new();
    m.input(Input::Connected {
        conn: ConnId(1),
        identity: Identity::user("a"),
    });
    m.text(1, r#"{"type":"join_room","room":"g","id":"j"}"#);
    // Sent before the room opened: must run after the join, not fail.
    assert!(
        m.text(1, r#"{"type":"online_users","room":"g","id":"o"}"#)
            .is_empty()
    );
    let outs = m.input(Input::RoomOpened(snapshot("g", "E", 0, 1)));
    let types: Vec<String> = sends_to(&outs, 1)
        .iter()
        .map(|f| f["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["room_info", "ack", "online_users", "ack"]);
}

/// Found by the sharded simulator (3 nodes x 3 brokers, seed 151): the
/// first of two joins waiting for a room left it (a deferred leave) before
/// the second had joined, which closed the room under the second join; that
/// join was never answered.
#[test]
fn a_waiting_joiner_that_leaves_at_once_does_not_strand_the_next_join() {
    let mut m = Manual::new();
    m.connect(1, "a");
    m.connect(2, "b");
    m.text(1, r#"{"type":"join_room","room":"g","id":"j1"}"#);
    assert!(
        m.text(1, r#"{"type":"leave_room","room":"g","id":"l1"}"#)
            .is_empty()
    );
    m.text(2, r#"{"type":"join_room","room":"g","id":"j2"}"#);
    let outs = m.input(Input::RoomOpened(snapshot("g", "E", 0, 1)));
    let types = |conn| -> Vec<String> {
        sends_to(&outs, conn)
            .iter()
            .map(|f| {
                format!(
                    "{}:{}",
                    f["type"].as_str().unwrap(),
                    f["id"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    assert_eq!(types(1), ["room_info:", "ack:j1", "user_joined:", "ack:l1"]);
    assert_eq!(
        types(2)[..2],
        ["room_info:".to_string(), "ack:j2".to_string()]
    );
    assert!(
        !outs.iter().any(|o| matches!(o, Output::CloseRoom { .. })),
        "{outs:?}"
    );
    assert_eq!(m.hub.room_connections("g"), [ConnId(2)]);
    m.hub.check_invariants().unwrap();
}

#[test]
fn a_room_that_cannot_open_answers_unavailable() {
    let mut m = Manual::new();
    m.input(Input::Connected {
        conn: ConnId(1),
        identity: Identity::user("a"),
    });
    m.text(1, r#"{"type":"join_room","room":"g","id":"j"}"#);
    let outs = m.input(Input::RoomOpenFailed {
        room: RoomName::parse("g", 64).unwrap(),
    });
    let e = &sends_to(&outs, 1)[0];
    assert_eq!(error_code(e), "UNAVAILABLE");
    assert_eq!(e["id"], "j");
    assert_eq!(m.hub.stats().rooms, 0);
    m.hub.check_invariants().unwrap();
}

#[test]
fn gaps_are_held_back_and_filled_before_delivery() {
    let mut m = Manual::new();
    m.input(Input::Connected {
        conn: ConnId(1),
        identity: Identity::user("a"),
    });
    m.text(1, r#"{"type":"join_room","room":"g"}"#);
    m.input(Input::RoomOpened(snapshot("g", "E", 2, 1)));
    let outs = m.input(Input::Sequenced(msg("g", "E", 5)));
    assert_eq!(
        outs,
        [Output::OpenRoom {
            room: RoomName::parse("g", 64).unwrap(),
            after: Some(Position {
                epoch: Epoch::new("E"),
                offset: 2
            })
        }],
        "offset 5 is held until 3 and 4 arrive"
    );
    assert!(
        m.input(Input::Sequenced(msg("g", "E", 6))).is_empty(),
        "one resync at a time"
    );
    let outs = m.input(Input::RoomOpened(snapshot("g", "E", 5, 1)));
    let offsets: Vec<u64> = sends_to(&outs, 1)
        .iter()
        .map(|f| f["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [3, 4, 5, 6]);
    assert!(
        m.input(Input::Sequenced(msg("g", "E", 6))).is_empty(),
        "duplicates are dropped"
    );
}

#[test]
fn an_unfillable_gap_resets_the_room_in_band_and_keeps_members() {
    let mut m = Manual::new();
    m.input(Input::Connected {
        conn: ConnId(1),
        identity: Identity::user("a"),
    });
    m.text(1, r#"{"type":"join_room","room":"g"}"#);
    m.input(Input::RoomOpened(snapshot("g", "E", 2, 1)));
    m.input(Input::Sequenced(msg("g", "E", 9)));
    m.input(Input::Sequenced(msg("g", "E", 11)));
    // The resync finds 3..=5 trimmed: 6..=10 is what is left.
    let outs = m.input(Input::RoomOpened(snapshot("g", "E", 10, 6)));
    assert!(!outs.iter().any(|o| matches!(o, Output::Close { .. })));
    let frames = sends_to(&outs, 1);
    assert_eq!(frames[0]["type"], "room_reset", "{frames:?}");
    assert_eq!(
        frames[0]["payload"],
        json!({"room_id": "g", "offset": 10, "epoch": "E", "recovered": false})
    );
    // What came ahead of the snapshot follows the reset, in order.
    let offsets: Vec<u64> = frames[1..]
        .iter()
        .map(|f| f["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [11]);
    assert!(m.hub.is_connected(ConnId(1)));
    let next = m.input(Input::Sequenced(msg("g", "E", 12)));
    assert_eq!(sends_to(&next, 1)[0]["offset"], 12);
    m.hub.check_invariants().unwrap();
}

#[test]
fn messages_from_other_nodes_reach_every_local_member() {
    let mut m = Manual::new();
    for c in 1..=2 {
        m.input(Input::Connected {
            conn: ConnId(c),
            identity: Identity::user("a"),
        });
        m.text(c, r#"{"type":"join_room","room":"g"}"#);
        m.input(Input::RoomOpened(snapshot("g", "E", 0, 1)));
    }
    let mut remote = msg("g", "E", 1);
    remote.origin = Some(Origin {
        node: NodeId(9),
        conn: ConnId(1),
        request_id: Some("x".into()),
        seq: 0,
    });
    let outs = m.input(Input::Sequenced(remote.clone()));
    assert_eq!(
        sends_to(&outs, 1).len(),
        1,
        "conn 1 here is not the sender on node 9"
    );
    assert_eq!(sends_to(&outs, 2).len(), 1);
    let receipt = remote.receipt().unwrap();
    assert!(
        m.input(Input::Appended(receipt)).is_empty(),
        "node 9 acks its own sender"
    );
}

#[test]
fn same_inputs_give_the_same_bytes() {
    let run = || {
        let mut w = world();
        let a = w.connect("alice");
        let b = w.connect("bob");
        join(&mut w, a, "g");
        join(&mut w, b, "g");
        say(&mut w, a, "g", "hi", "1");
        w.send_json(
            b,
            json!({"type": "send_direct", "payload": {"to": "alice", "content": "yo"}}),
        );
        w.advance_ms(70_000);
        w.transcript().to_string()
    };
    assert_eq!(run(), run());
}

#[test]
fn a_broadcast_is_serialized_once_and_shared_by_every_recipient() {
    let mut node = crate::SingleNode::new(Config::default(), 3);
    for c in 1..=50 {
        node.handle(
            Input::Connected {
                conn: ConnId(c),
                identity: Identity::user(&format!("u{c}")),
            },
            START,
        );
        node.handle(text(c, r#"{"type":"join_room","room":"g"}"#), START);
    }
    while node.poll_output().is_some() {}
    node.handle(
        text(
            1,
            r#"{"type":"send_message","room":"g","payload":{"content":"one copy"}}"#,
        ),
        START,
    );
    let frames: Vec<Bytes> = std::iter::from_fn(|| node.poll_output())
        .filter_map(|o| match o {
            Output::Send { frame, .. } => Some(frame),
            _ => None,
        })
        .collect();
    assert_eq!(frames.len(), 49);
    assert!(
        frames
            .iter()
            .all(|f| f.as_ptr() == frames[0].as_ptr() && f.len() == frames[0].len())
    );
}

#[test]
fn a_connection_rejoining_with_since_does_not_get_its_own_messages_back() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    let epoch = join(&mut w, a, "g")["payload"]["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    join(&mut w, b, "g");
    say(&mut w, b, "g", "from bob", "1");
    say(&mut w, a, "g", "from alice", "2");
    w.take_all();
    // The same connection asks again from offset 0: bob's message comes back,
    // alice's own does not (invariant: never the connection that sent it).
    w.send_json(a, json!({"type": "join_room", "room": "g", "payload": {"since": {"offset": 0, "epoch": epoch.clone()}}}));
    let frames = w.take(a);
    let contents: Vec<&str> = frames
        .iter()
        .filter_map(|f| f["payload"]["content"].as_str())
        .collect();
    assert_eq!(contents, ["from bob"]);
    assert_eq!(frames.last().unwrap()["payload"]["recovered"], true);
    // A new connection of alice's (after a reconnect) gets both: it may have
    // missed the ack for its previous connection's message.
    let a2 = w.connect("alice");
    w.send_json(a2, json!({"type": "join_room", "room": "g", "payload": {"since": {"offset": 0, "epoch": epoch}}}));
    let contents: Vec<String> = w
        .take(a2)
        .iter()
        .filter_map(|f| f["payload"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(contents, ["from bob", "from alice"]);
}

#[test]
fn replayed_history_is_marked_as_replay() {
    let mut node = crate::SingleNode::new(Config::default(), 3);
    node.handle(
        Input::Connected {
            conn: ConnId(1),
            identity: Identity::user("a"),
        },
        START,
    );
    node.handle(text(1, r#"{"type":"join_room","room":"g"}"#), START);
    node.handle(
        text(
            1,
            r#"{"type":"send_message","room":"g","payload":{"content":"x"}}"#,
        ),
        START,
    );
    node.handle(Input::Disconnected { conn: ConnId(1) }, START);
    while node.poll_output().is_some() {}
    node.handle(
        Input::Connected {
            conn: ConnId(2),
            identity: Identity::user("b"),
        },
        START,
    );
    let epoch = node
        .sequencer
        .snapshot(&RoomName::parse("g", 64).unwrap(), START)
        .epoch;
    let join = format!(
        r#"{{"type":"join_room","room":"g","payload":{{"since":{{"offset":0,"epoch":"{}"}}}}}}"#,
        epoch.as_str()
    );
    node.handle(text(2, &join), START);
    let kinds: Vec<FrameKind> = std::iter::from_fn(|| node.poll_output())
        .filter_map(|o| match o {
            Output::Send { kind, .. } => Some(kind),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, [FrameKind::Replay, FrameKind::Live]);
}

#[test]
fn a_snapshot_with_holes_recovers_only_the_run_that_ends_at_the_head() {
    let mut m = Manual::new();
    m.input(Input::Connected {
        conn: ConnId(1),
        identity: Identity::user("a"),
    });
    let since = |offset: u64| {
        format!(
            r#"{{"type":"join_room","room":"g","payload":{{"since":{{"offset":{offset},"epoch":"E"}}}}}}"#
        )
    };
    m.text(1, &since(3));
    let mut snap = snapshot("g", "E", 5, 1);
    snap.messages.remove(2); // offset 3 is missing
    let outs = m.input(Input::RoomOpened(snap));
    let frames = sends_to(&outs, 1);
    let offsets: Vec<u64> = frames.iter().filter_map(|f| f["offset"].as_u64()).collect();
    assert_eq!(offsets, [4, 5]);
    assert_eq!(frames.last().unwrap()["payload"]["recovered"], true);
    let outs = m.text(1, &since(2));
    let info = sends_to(&outs, 1);
    assert_eq!(
        info[0]["payload"]["recovered"], false,
        "offset 3 is gone: {info:?}"
    );
}

// ---- cluster mode ----

fn user(id: &str) -> UserRef {
    UserRef {
        id: id.into(),
        name: id.into(),
    }
}

fn room(name: &str) -> RoomName {
    RoomName::parse(name, 64).unwrap()
}

fn types(outs: &[Output], conn: u64) -> Vec<String> {
    sends_to(outs, conn)
        .iter()
        .map(|f| f["type"].as_str().unwrap().to_string())
        .collect()
}

fn remote(node: u64, id: &str, present: bool) -> Input {
    Input::RemotePresence {
        room: room("g"),
        node: NodeId(node),
        user: user(id),
        present,
    }
}

/// Node 1 with alice (c1) in open room `g`, where bob is on node 2.
fn cluster_with_bob_remote() -> Manual {
    let mut m = Manual::clustered(1);
    m.connect(1, "alice");
    m.text(1, r#"{"type":"join_room","room":"g"}"#);
    let mut snap = snapshot("g", "E", 0, 1);
    snap.presence = vec![
        RemoteMember {
            node: NodeId(2),
            user: user("bob"),
        },
        // Its own entries in a snapshot are not "remote".
        RemoteMember {
            node: NodeId(1),
            user: user("alice"),
        },
    ];
    let outs = m.input(Input::RoomOpened(snap));
    let info = &sends_to(&outs, 1)[0];
    assert_eq!(
        info["payload"]["users"],
        json!([{"id": "alice", "name": "alice"}, {"id": "bob", "name": "bob"}])
    );
    assert!(outs.contains(&Output::Presence {
        room: room("g"),
        user: user("alice"),
        present: true
    }));
    m
}

#[test]
fn cluster_presence_joins_and_leaves_once_per_user_across_nodes() {
    let mut m = cluster_with_bob_remote();
    // Bob on a third node too: no second user_joined.
    assert!(m.input(remote(3, "bob", true)).is_empty());
    // Bob leaves node 2 but is still on node 3: no user_left.
    assert!(m.input(remote(2, "bob", false)).is_empty());
    let outs = m.input(remote(3, "bob", false));
    assert_eq!(types(&outs, 1), ["user_left"]);
    let outs = m.input(remote(2, "carol", true));
    assert_eq!(types(&outs, 1), ["user_joined"]);
    // A node's own presence echoed back by the broker is ignored.
    assert!(m.input(remote(1, "dave", true)).is_empty());
    // A user present remotely who connects here: no user_joined locally.
    m.connect(2, "carol");
    let outs = m.text(2, r#"{"type":"join_room","room":"g"}"#);
    assert_eq!(types(&outs, 1), Vec::<String>::new());
    assert!(outs.contains(&Output::Presence {
        room: room("g"),
        user: user("carol"),
        present: true
    }));
    // And leaving here while still remote: no user_left, but the broker hears.
    let outs = m.input(Input::Disconnected { conn: ConnId(2) });
    assert_eq!(types(&outs, 1), Vec::<String>::new());
    assert!(outs.contains(&Output::Presence {
        room: room("g"),
        user: user("carol"),
        present: false
    }));
}

#[test]
fn a_gone_node_takes_its_members_with_it() {
    let mut m = cluster_with_bob_remote();
    m.input(remote(3, "bob", true));
    m.input(remote(2, "carol", true));
    let outs = m.input(Input::NodeGone { node: NodeId(2) });
    // Bob is still on node 3; carol was only on node 2.
    let frames = sends_to(&outs, 1);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["type"], "user_left");
    assert_eq!(frames[0]["payload"]["id"], "carol");
    let outs = m.text(1, r#"{"type":"online_users","room":"g","id":"o"}"#);
    assert_eq!(
        sends_to(&outs, 1)[0]["payload"]["users"],
        json!([{"id": "alice", "name": "alice"}, {"id": "bob", "name": "bob"}])
    );
}

#[test]
fn presence_seen_while_a_room_opens_is_applied_after_the_snapshot() {
    let mut m = Manual::clustered(1);
    m.connect(1, "alice");
    m.text(1, r#"{"type":"join_room","room":"g"}"#);
    // Newer than the snapshot: bob left node 2 after it was read.
    m.input(remote(2, "bob", false));
    m.input(remote(2, "carol", true));
    let mut snap = snapshot("g", "E", 0, 1);
    snap.presence = vec![RemoteMember {
        node: NodeId(2),
        user: user("bob"),
    }];
    let outs = m.input(Input::RoomOpened(snap));
    assert_eq!(
        sends_to(&outs, 1)[0]["payload"]["users"],
        json!([{"id": "alice", "name": "alice"}, {"id": "carol", "name": "carol"}])
    );
}

#[test]
fn a_resync_after_a_broker_outage_reconciles_presence() {
    let mut m = cluster_with_bob_remote();
    let outs = m.input(Input::BrokerReconnected);
    assert_eq!(
        outs,
        [Output::OpenRoom {
            room: room("g"),
            after: Some(Position {
                epoch: Epoch::new("E"),
                offset: 0
            })
        }]
    );
    // While the broker was away bob left and carol came.
    let mut snap = snapshot("g", "E", 0, 1);
    snap.presence = vec![RemoteMember {
        node: NodeId(2),
        user: user("carol"),
    }];
    let outs = m.input(Input::RoomOpened(snap));
    let frames = sends_to(&outs, 1);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(
        (
            frames[0]["type"].as_str(),
            frames[0]["payload"]["id"].as_str()
        ),
        (Some("user_left"), Some("bob"))
    );
    assert_eq!(
        (
            frames[1]["type"].as_str(),
            frames[1]["payload"]["id"].as_str()
        ),
        (Some("user_joined"), Some("carol"))
    );
}

#[test]
fn direct_messages_are_relayed_to_other_nodes() {
    let mut m = Manual::clustered(1);
    m.connect(1, "alice");
    // Bob is not here: the relay decides between ack and RECIPIENT_OFFLINE.
    let outs = m.text(
        1,
        r#"{"type":"send_direct","id":"d1","payload":{"to":"bob","content":"hi"}}"#,
    );
    let [Output::Relay(relay)] = outs.as_slice() else {
        panic!("{outs:?}")
    };
    assert_eq!(&*relay.to, "bob");
    let origin = relay.origin.clone().expect("the sender waits");
    assert_eq!(origin.conn, ConnId(1));
    let outs = m.input(Input::Relayed {
        message: relay.clone(),
        outcome: RelayOutcome::Delivered,
    });
    let ack = &sends_to(&outs, 1)[0];
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["id"], "d1");
    assert_eq!(ack["payload"]["message_id"], relay.id.as_ref());
    let outs = m.input(Input::Relayed {
        message: relay.clone(),
        outcome: RelayOutcome::Offline,
    });
    assert_eq!(error_code(&sends_to(&outs, 1)[0]), "RECIPIENT_OFFLINE");
    let outs = m.input(Input::Relayed {
        message: relay.clone(),
        outcome: RelayOutcome::Unavailable,
    });
    assert_eq!(error_code(&sends_to(&outs, 1)[0]), "UNAVAILABLE");

    // Bob connected here and on another node: delivered here, acked at
    // once, and still relayed (without an origin) for bob's other node.
    m.connect(2, "bob");
    let outs = m.text(
        1,
        r#"{"type":"send_direct","id":"d2","payload":{"to":"bob","content":"yo"}}"#,
    );
    assert_eq!(types(&outs, 2), ["direct_message"]);
    assert_eq!(types(&outs, 1), ["ack"]);
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Relay(r) if r.origin.is_none()))
    );

    // A relay from node 2 reaches bob's connection here.
    let mut from_elsewhere = (**relay).clone();
    from_elsewhere.origin = Some(Origin {
        node: NodeId(2),
        conn: ConnId(9),
        request_id: None,
        seq: 0,
    });
    let outs = m.input(Input::RemoteDirect(Box::new(from_elsewhere.clone())));
    let frames = sends_to(&outs, 2);
    assert_eq!(frames[0]["type"], "direct_message");
    assert_eq!(frames[0]["payload"]["content"], "hi");
    // Its own relays coming back are ignored.
    from_elsewhere.origin = Some(origin);
    assert!(
        m.input(Input::RemoteDirect(Box::new(from_elsewhere)))
            .is_empty()
    );
}

#[test]
fn shutdown_withdraws_this_nodes_presence() {
    let mut m = cluster_with_bob_remote();
    let outs = m.input(Input::Shutdown);
    assert!(outs.contains(&Output::Presence {
        room: room("g"),
        user: user("alice"),
        present: false
    }));
}

#[test]
fn a_single_node_never_emits_cluster_outputs() {
    let mut m = Manual::new();
    m.connect(1, "alice");
    let outs = m.text(
        1,
        r#"{"type":"send_direct","id":"d","payload":{"to":"bob","content":"hi"}}"#,
    );
    assert_eq!(error_code(&sends_to(&outs, 1)[0]), "RECIPIENT_OFFLINE");
    let outs = m.text(1, r#"{"type":"join_room","room":"g"}"#);
    let outs: Vec<Output> = outs
        .into_iter()
        .chain(m.input(Input::RoomOpened(snapshot("g", "E", 0, 1))))
        .collect();
    assert!(
        !outs
            .iter()
            .any(|o| matches!(o, Output::Presence { .. } | Output::Relay(_)))
    );
}

fn sent(m: &mut Manual, conn: u64, id: &str) -> AppendRequest {
    let outs = m.text(
        conn,
        &format!(
            r#"{{"type":"send_message","room":"g","id":"{id}","payload":{{"content":"{id}"}}}}"#
        ),
    );
    outs.into_iter()
        .find_map(|o| match o {
            Output::Append(r) => Some(*r),
            _ => None,
        })
        .expect("an append")
}

fn stored(request: AppendRequest, offset: u64) -> SequencedMessage {
    SequencedMessage::new(request, Epoch::new("E"), offset)
}

#[test]
fn in_a_cluster_an_ack_never_overtakes_the_messages_below_it() {
    let mut m = cluster_with_bob_remote();
    let mine = stored(sent(&mut m, 1, "s1"), 2);
    // The broker's reply (the receipt) arrives before message 1 and the
    // delivery of alice's own message 2: the ack waits.
    let outs = m.input(Input::Appended(mine.receipt().unwrap()));
    assert!(sends_to(&outs, 1).is_empty(), "{outs:?}");
    let outs = m.input(Input::Sequenced(msg("g", "E", 1)));
    assert_eq!(types(&outs, 1), ["new_message"]);
    let outs = m.input(Input::Sequenced(mine.clone()));
    let frames = sends_to(&outs, 1);
    assert_eq!(frames.len(), 1, "the ack, not the message: {frames:?}");
    assert_eq!(
        (
            frames[0]["type"].as_str(),
            frames[0]["payload"]["offset"].as_u64()
        ),
        (Some("ack"), Some(2))
    );
}

#[test]
fn a_message_reported_failed_but_stored_reaches_its_sender_and_is_answered_once() {
    let mut m = cluster_with_bob_remote();
    let request = sent(&mut m, 1, "s1");
    let outs = m.input(Input::AppendFailed(request.clone()));
    assert_eq!(error_code(&sends_to(&outs, 1)[0]), "UNAVAILABLE");
    // It was stored after all (the reply was lost): alice gets it like
    // everyone else, so her stream has no hole, and no second answer.
    let outs = m.input(Input::Sequenced(stored(request.clone(), 1)));
    assert_eq!(types(&outs, 1), ["new_message"]);
    let receipt = stored(request, 1).receipt().unwrap();
    assert!(m.input(Input::Appended(receipt)).is_empty());
}

#[test]
fn a_leave_waits_for_the_connections_messages_in_flight() {
    let mut m = cluster_with_bob_remote();
    let request = sent(&mut m, 1, "s1");
    // Not answered yet: nothing happens.
    assert!(
        m.text(1, r#"{"type":"leave_room","room":"g","id":"l"}"#)
            .is_empty()
    );
    let outs = m.input(Input::Sequenced(stored(request, 1)));
    let frames = sends_to(&outs, 1);
    let ids: Vec<&str> = frames.iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["s1", "l"], "answers in request order");
}

#[test]
fn presence_changes_beyond_the_opening_buffer_resync_the_room_once_open() {
    let mut m = Manual::clustered_with(
        1,
        Config {
            max_gap_buffer: 2,
            ..Config::default()
        },
    );
    m.connect(1, "alice");
    m.text(1, r#"{"type":"join_room","room":"g"}"#);
    for user in ["bob", "carol", "dave"] {
        m.input(remote(2, user, true));
    }
    let outs = m.input(Input::RoomOpened(snapshot("g", "E", 0, 1)));
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::OpenRoom { after: Some(_), .. })),
        "a resync fetches the presence that did not fit: {outs:?}"
    );
}

#[test]
fn a_node_follows_a_user_from_the_first_accepted_connection_to_the_last() {
    let mut m = Manual::clustered(1);
    let follow = |user: &str| Output::FollowUser { user: user.into() };
    let unfollow = |user: &str| Output::UnfollowUser { user: user.into() };
    let connected = |conn: u64, user: &str| Input::Connected {
        conn: ConnId(conn),
        identity: Identity::user(user),
    };
    assert_eq!(m.input(connected(1, "alice")), [follow("alice")]);
    assert_eq!(m.input(connected(2, "alice")), []);
    // An expired token is refused: its user is not followed for it.
    let mut expired = Identity::user("bob");
    expired.expires_at = Some(START);
    let outs = m.input(Input::Connected {
        conn: ConnId(3),
        identity: expired,
    });
    assert!(!outs.iter().any(|o| matches!(o, Output::FollowUser { .. })));
    assert_eq!(m.input(Input::Disconnected { conn: ConnId(1) }), []);
    assert_eq!(
        m.input(Input::Disconnected { conn: ConnId(2) }),
        [unfollow("alice")]
    );
    // A single node relays nothing, so it follows no one.
    let mut single = Manual::new();
    assert_eq!(single.input(connected(1, "alice")), []);
    assert_eq!(single.input(Input::Disconnected { conn: ConnId(1) }), []);
}

fn publish(room: &str, sender: Option<&str>) -> Publish {
    Publish {
        room: RoomName::parse(room, 64).unwrap(),
        content: "from the backend".into(),
        reply_to: None,
        sender: sender.map(|id| UserRef {
            id: id.into(),
            name: id.into(),
        }),
    }
}

#[test]
fn a_backend_publish_is_appended_with_its_ticket_and_answered_once_stored() {
    let mut m = Manual::clustered(4);
    let outs = m.input(Input::Publish {
        ticket: 9,
        publish: publish("g", None),
    });
    let [Output::Append(request)] = outs.as_slice() else {
        panic!("{outs:?}")
    };
    // The server is the sender when the backend names none.
    assert_eq!(&*request.sender.id, SERVER_USER);
    assert_eq!(&*request.sender.name, SERVER_USER);
    assert_eq!(request.origin, None);
    let ticket = PublishTicket {
        node: NodeId(4),
        id: 9,
    };
    assert_eq!(request.ticket, Some(ticket));
    let numbered = stored((**request).clone(), 3);
    let outs = m.input(Input::Appended(numbered.receipt().unwrap()));
    assert_eq!(
        outs,
        [Output::Published {
            ticket: 9,
            outcome: PublishOutcome::Stored {
                room: RoomName::parse("g", 64).unwrap(),
                message_id: numbered.id.clone(),
                offset: 3,
            },
        }]
    );
    // A named sender is kept; a failure is answered UNAVAILABLE.
    let outs = m.input(Input::Publish {
        ticket: 10,
        publish: publish("g", Some("bot")),
    });
    let [Output::Append(request)] = outs.as_slice() else {
        panic!("{outs:?}")
    };
    assert_eq!(&*request.sender.id, "bot");
    let outs = m.input(Input::AppendFailed((**request).clone()));
    assert_eq!(
        outs,
        [Output::Published {
            ticket: 10,
            outcome: PublishOutcome::Unavailable,
        }]
    );
    // Another node's publish is that node's to answer.
    let mut other = (**request).clone();
    other.ticket = Some(PublishTicket {
        node: NodeId(5),
        id: 10,
    });
    assert_eq!(m.input(Input::AppendFailed(other.clone())), []);
    let receipt = stored(other, 4).receipt().unwrap();
    assert_eq!(m.input(Input::Appended(receipt)), []);
}

#[test]
fn a_backend_publish_reaches_the_members_of_a_single_node() {
    let mut node = crate::SingleNode::new(Config::default(), 3);
    node.handle(
        Input::Connected {
            conn: ConnId(1),
            identity: Identity::user("alice"),
        },
        START,
    );
    node.handle(text(1, r#"{"type":"join_room","room":"g"}"#), START);
    while node.poll_output().is_some() {}
    node.handle(
        Input::Publish {
            ticket: 1,
            publish: publish("g", None),
        },
        START,
    );
    let outs: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
    let frames = sends_to(&outs, 1);
    assert_eq!(frames.len(), 1, "{outs:?}");
    assert_eq!(frames[0]["type"], "new_message");
    assert_eq!(frames[0]["sender"]["id"], SERVER_USER);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Published {
            ticket: 1,
            outcome: PublishOutcome::Stored { offset: 1, .. }
        }
    )));
}

#[test]
fn a_resync_corrects_what_the_broker_holds_of_this_nodes_members() {
    let mut m = cluster_with_bob_remote();
    m.input(Input::BrokerReconnected);
    // The broker lost alice (this node's liveness ran out) and still holds
    // dave, who left here while it was away.
    let mut snap = snapshot("g", "E", 0, 1);
    snap.presence = vec![RemoteMember {
        node: NodeId(1),
        user: user("dave"),
    }];
    let outs = m.input(Input::RoomOpened(snap));
    let presence: Vec<&Output> = outs
        .iter()
        .filter(|o| matches!(o, Output::Presence { .. }))
        .collect();
    assert_eq!(
        presence,
        [
            &Output::Presence {
                room: room("g"),
                user: user("alice"),
                present: true
            },
            &Output::Presence {
                room: room("g"),
                user: user("dave"),
                present: false
            },
        ]
    );
    // A resync for a gap (the broker never went away) leaves what the
    // broker holds right alone.
    let outs = m.input(Input::Sequenced(msg("g", "E", 2)));
    assert!(outs.iter().any(|o| matches!(o, Output::OpenRoom { .. })));
    let mut snap = snapshot("g", "E", 2, 1);
    snap.presence = vec![RemoteMember {
        node: NodeId(1),
        user: user("alice"),
    }];
    let outs = m.input(Input::RoomOpened(snap));
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Presence { .. })),
        "{outs:?}"
    );
}

#[test]
fn presence_the_broker_did_not_take_is_sent_again_as_it_is_now() {
    let mut m = Manual::clustered(1);
    m.connect(1, "alice");
    m.connect(2, "erin");
    for (conn, room) in [(1, "g"), (2, "g"), (1, "h")] {
        m.text(conn, &format!(r#"{{"type":"join_room","room":"{room}"}}"#));
    }
    m.input(Input::RoomOpened(snapshot("g", "E", 0, 1)));
    m.input(Input::RoomOpened(snapshot("h", "F", 0, 1)));
    // Alice's departures failed to reach the broker: from h (which closed
    // here) and from g (which stays open with erin).
    m.input(Input::Disconnected { conn: ConnId(1) });
    for r in ["g", "h"] {
        m.input(Input::PresenceFailed {
            room: room(r),
            user: user("alice"),
        });
    }
    // Back: both departures are sent again at once (a snapshot would not
    // show them while this node's liveness has run out); g is resynced.
    let outs = m.input(Input::BrokerReconnected);
    assert_eq!(
        outs,
        [
            Output::Presence {
                room: room("g"),
                user: user("alice"),
                present: false
            },
            Output::Presence {
                room: room("h"),
                user: user("alice"),
                present: false
            },
            Output::OpenRoom {
                room: room("g"),
                after: Some(Position {
                    epoch: Epoch::new("E"),
                    offset: 0
                })
            },
        ]
    );
    // g's snapshot still holds alice here: her departure goes again, and
    // every member here (erin) is announced again.
    let mut snap = snapshot("g", "E", 0, 1);
    snap.presence = vec![
        RemoteMember {
            node: NodeId(1),
            user: user("alice"),
        },
        RemoteMember {
            node: NodeId(1),
            user: user("erin"),
        },
    ];
    let outs = m.input(Input::RoomOpened(snap.clone()));
    assert_eq!(
        outs,
        [
            Output::Presence {
                room: room("g"),
                user: user("erin"),
                present: true
            },
            Output::Presence {
                room: room("g"),
                user: user("alice"),
                present: false
            },
        ]
    );
    // Sent once: the next reconnect has no failed update left to send.
    let outs = m.input(Input::BrokerReconnected);
    assert!(!outs.iter().any(|o| matches!(o, Output::Presence { .. })));
    // A single node ignores such reports.
    let mut single = Manual::new();
    single.input(Input::PresenceFailed {
        room: room("g"),
        user: user("erin"),
    });
    assert!(
        !single
            .input(Input::BrokerReconnected)
            .iter()
            .any(|o| matches!(o, Output::Presence { .. }))
    );
}

/// Found while writing the presence-reconciliation tests above (a gap
/// resync in a cluster): a message held ahead of a gap, then delivered from the resync's
/// snapshot, stayed in the hold, so the room never counted as caught up and
/// every member was closed with 4002 for a gap that had been filled.
#[test]
fn a_held_message_the_resync_delivers_does_not_evict_the_members() {
    let mut m = cluster_with_bob_remote();
    let outs = m.input(Input::Sequenced(msg("g", "E", 2)));
    assert!(outs.iter().any(|o| matches!(o, Output::OpenRoom { .. })));
    let outs = m.input(Input::RoomOpened(snapshot("g", "E", 2, 1)));
    let offsets: Vec<u64> = sends_to(&outs, 1)
        .iter()
        .filter_map(|f| f["offset"].as_u64())
        .collect();
    assert_eq!(offsets, [1, 2]);
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Close { .. })),
        "{outs:?}"
    );
    // And the room goes on from there.
    let outs = m.input(Input::Sequenced(msg("g", "E", 3)));
    assert_eq!(sends_to(&outs, 1)[0]["offset"], 3);
}

#[test]
fn room_users_lists_a_rooms_users_and_none_for_an_unknown_room() {
    let mut w = world();
    let a = w.connect("alice");
    join(&mut w, a, "g");
    let users = w.node.hub.room_users("g").expect("g is open");
    assert_eq!(users.iter().map(|u| &*u.id).collect::<Vec<_>>(), ["alice"]);
    assert_eq!(w.node.hub.room_users("nowhere"), None);
    assert_eq!(w.node.hub.room_connections("g"), [a]);
    assert!(w.node.hub.room_connections("nowhere").is_empty());
}

#[test]
fn a_frame_of_exactly_the_message_limit_is_taken() {
    let mut m = Manual::new();
    m.connect(1, "alice");
    let max = Config::default().max_message_bytes;
    let head = r#"{"type":"join_room","room":"g","id":""#;
    let tail = r#""}"#;
    // Padding in a JSON string is whitespace-free: pad the id's neighbour.
    let body = format!("{head}x{tail}");
    let frame = format!("{body}{}", " ".repeat(max - body.len()));
    assert_eq!(frame.len(), max);
    let outs = m.text(1, &frame);
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Close { .. })),
        "{outs:?}"
    );
    let outs = m.text(1, &format!("{frame} "));
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Close {
            code: close::MESSAGE_TOO_BIG,
            ..
        }
    )));
}

#[test]
fn exactly_the_deferred_bound_waits_behind_a_join_and_the_next_is_refused() {
    let mut m = Manual::clustered(1);
    let max = Config::default().max_deferred_requests;
    m.connect(1, "alice");
    m.text(1, r#"{"type":"join_room","room":"g"}"#);
    for i in 0..max {
        let outs = m.text(
            1,
            &format!(r#"{{"type":"online_users","room":"g","id":"q{i}"}}"#),
        );
        assert!(sends_to(&outs, 1).is_empty(), "request {i} answered early");
    }
    let outs = m.text(1, r#"{"type":"online_users","room":"g","id":"over"}"#);
    assert_eq!(error_code(&sends_to(&outs, 1)[0]), "RATE_LIMITED");
    // Once the room opens, every deferred request is answered, in order.
    let outs = m.input(Input::RoomOpened(snapshot("g", "E", 0, 1)));
    let acks = sends_to(&outs, 1)
        .into_iter()
        .filter(|f| f["type"] == "ack")
        .count();
    assert_eq!(acks, max, "every deferred request");
}

#[test]
fn an_opening_room_holds_at_most_the_gap_buffer_of_early_messages() {
    let mut m = Manual::clustered_with(
        1,
        Config {
            max_gap_buffer: 2,
            ..Config::default()
        },
    );
    m.connect(1, "alice");
    m.text(1, r#"{"type":"join_room","room":"g"}"#);
    for offset in 1..=3 {
        m.input(Input::Sequenced(msg("g", "E", offset)));
    }
    // The first two are taken ahead of the join's completion; the third
    // was beyond the bound (a later resync would carry it).
    let outs = m.input(Input::RoomOpened(snapshot("g", "E", 0, 1)));
    let info = sends_to(&outs, 1)
        .into_iter()
        .find(|f| f["type"] == "room_info")
        .expect("room_info");
    assert_eq!(info["payload"]["offset"], 2);
}

#[test]
fn a_resync_removes_exactly_the_remote_users_the_snapshot_lacks() {
    let mut m = cluster_with_bob_remote();
    m.input(remote(2, "carol", true));
    m.input(Input::BrokerReconnected);
    let mut snap = snapshot("g", "E", 0, 1);
    snap.presence = vec![RemoteMember {
        node: NodeId(2),
        user: user("carol"),
    }];
    let outs = m.input(Input::RoomOpened(snap));
    let left: Vec<String> = sends_to(&outs, 1)
        .iter()
        .filter(|f| f["type"] == "user_left")
        .map(|f| f["payload"]["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(left, ["bob"]);
}

#[test]
fn every_error_answered_is_counted_by_its_code() {
    let mut m = Manual::new();
    m.connect(1, "alice");
    m.text(1, "{not json");
    m.text(1, r#"{"type":"nope"}"#);
    m.text(1, r#"{"type":"nope"}"#);
    let counts: Vec<(ErrorCode, u64)> = m.hub.errors_sent().filter(|(_, n)| *n > 0).collect();
    assert_eq!(
        counts,
        [(ErrorCode::InvalidFormat, 1), (ErrorCode::UnknownType, 2)]
    );
}

#[test]
fn the_invariant_check_finds_each_kind_of_corruption() {
    let config = Config {
        max_rooms_per_connection: 2,
        max_deferred_requests: 1,
        max_gap_buffer: 1,
        ..Config::default()
    };
    let healthy = || {
        let mut w = TestWorld::new(config.clone());
        let a = w.connect("alice");
        join(&mut w, a, "g");
        join(&mut w, a, "h");
        (w, a)
    };
    let (w, _) = healthy();
    assert_eq!(w.node.hub.check_invariants(), Ok(()));
    // Exactly at a bound is fine; one past it is not.
    let (mut w, a) = healthy();
    let hub = &mut w.node.hub;
    let extra = RoomName::parse("x", 64).unwrap();
    hub.conns.get_mut(&a).unwrap().rooms.push(extra);
    assert!(hub.check_invariants().unwrap_err().contains("rooms"));
    let (mut w, a) = healthy();
    let hub = &mut w.node.hub;
    let request = parse_request(br#"{"type":"online_users","room":"g"}"#, &hub.limits).unwrap();
    hub.conns
        .get_mut(&a)
        .unwrap()
        .deferred
        .push_back(request.clone());
    assert_eq!(hub.check_invariants(), Ok(()));
    hub.conns.get_mut(&a).unwrap().deferred.push_back(request);
    assert!(hub.check_invariants().unwrap_err().contains("deferred"));
    let (mut w, _) = healthy();
    let hub = &mut w.node.hub;
    let Some(RoomState::Open(log)) = hub.rooms.get_mut(&room("g")).map(|r| &mut r.state) else {
        panic!("g is open");
    };
    log.ahead.insert(5, msg("g", "E", 5));
    assert_eq!(hub.check_invariants(), Ok(()));
    let Some(RoomState::Open(log)) = hub.rooms.get_mut(&room("g")).map(|r| &mut r.state) else {
        panic!("g is open");
    };
    log.ahead.insert(6, msg("g", "E", 6));
    assert!(hub.check_invariants().unwrap_err().contains("ahead"));
    // A room still opening must have no members yet.
    let (mut w, _) = healthy();
    let hub = &mut w.node.hub;
    hub.rooms.get_mut(&room("g")).unwrap().state = RoomState::Opening {
        waiting: Vec::new(),
        early: Vec::new(),
        early_presence: Vec::new(),
        presence_overflowed: false,
        readers: Vec::new(),
    };
    assert!(
        hub.check_invariants()
            .unwrap_err()
            .contains("before it opened")
    );
}

#[test]
fn config_and_stats_report_the_hub_as_it_is() {
    let config = Config {
        max_rooms_per_connection: 7,
        ..Config::default()
    };
    let mut w = TestWorld::new(config);
    assert_eq!(w.node.hub.config().max_rooms_per_connection, 7);
    let a = w.connect("alice");
    let b = w.connect("alice");
    w.connect("bob");
    join(&mut w, a, "g");
    join(&mut w, b, "h");
    assert_eq!(
        w.node.hub.stats(),
        HubStats {
            connections: 3,
            users: 2,
            rooms: 2
        }
    );
}

#[test]
fn a_waiting_join_that_disconnects_leaves_the_others_waiting() {
    let mut m = Manual::clustered(1);
    m.connect(1, "alice");
    m.connect(2, "bob");
    m.text(1, r#"{"type":"join_room","room":"g"}"#);
    m.text(2, r#"{"type":"join_room","room":"g"}"#);
    m.input(Input::Disconnected { conn: ConnId(1) });
    let outs = m.input(Input::RoomOpened(snapshot("g", "E", 0, 1)));
    assert_eq!(types(&outs, 2), ["room_info"]);
    assert!(sends_to(&outs, 1).is_empty());
}

#[test]
fn leaving_one_room_keeps_the_others() {
    let mut w = world();
    let a = w.connect("alice");
    join(&mut w, a, "g");
    join(&mut w, a, "h");
    w.send_json(a, json!({"type": "leave_room", "room": "g"}));
    assert_eq!(w.node.hub.rooms_of(a), [room("h")]);
}

#[test]
fn messages_in_flight_together_are_each_acked_once() {
    let mut m = cluster_with_bob_remote();
    let first = stored(sent(&mut m, 1, "s1"), 1);
    let second = stored(sent(&mut m, 1, "s2"), 2);
    assert_ne!(first.origin, second.origin);
    let mut acked = Vec::new();
    for msg in [first, second] {
        let receipt = msg.receipt().unwrap();
        let mut outs = m.input(Input::Sequenced(msg));
        outs.extend(m.input(Input::Appended(receipt)));
        acked.extend(
            sends_to(&outs, 1)
                .into_iter()
                .filter(|f| f["type"] == "ack")
                .map(|f| f["id"].as_str().unwrap_or("").to_string()),
        );
    }
    assert_eq!(acked, ["s1", "s2"]);
}

#[test]
fn every_direct_message_gets_its_own_id() {
    let mut m = Manual::new();
    m.connect(1, "alice");
    m.connect(2, "bob");
    let ids: Vec<String> = (0..2)
        .map(|i| {
            let outs = m.text(
                1,
                &format!(r#"{{"type":"send_direct","id":"d{i}","payload":{{"to":"bob","content":"hi"}}}}"#),
            );
            sends_to(&outs, 2)[0]["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_ne!(ids[0], ids[1]);
}

#[test]
fn receipts_from_elsewhere_or_for_delivered_messages_ack_nothing_more() {
    let mut m = cluster_with_bob_remote();
    let mine = stored(sent(&mut m, 1, "s1"), 1);
    // Another node's receipt with the same connection number is not ours.
    let mut foreign = mine.receipt().unwrap();
    if let Requester::Conn(origin) = &mut foreign.requester {
        origin.node = NodeId(9);
    }
    assert!(m.input(Input::Appended(foreign)).is_empty());
    // Delivered first: the delivery acks; the receipt after it is spent.
    let outs = m.input(Input::Sequenced(mine.clone()));
    assert_eq!(types(&outs, 1), ["ack"]);
    assert!(m.input(Input::Appended(mine.receipt().unwrap())).is_empty());
}

#[test]
fn an_ack_waiting_for_its_delivery_goes_out_when_the_room_restarts() {
    let mut m = cluster_with_bob_remote();
    let mine = stored(sent(&mut m, 1, "s1"), 2);
    // The receipt for offset 2 waits for the delivery of 1 and 2...
    assert!(sends_to(&m.input(Input::Appended(mine.receipt().unwrap())), 1).is_empty());
    // ...but the room's history restarts (a new epoch): the message is
    // stored all the same, so alice is acked before she is told.
    m.input(Input::BrokerReconnected);
    let outs = m.input(Input::RoomOpened(snapshot("g", "F", 0, 1)));
    let frames = sends_to(&outs, 1);
    // The new history shows nobody on other nodes: bob left. Then the ack,
    // then the reset, in-band: alice stays connected, now in lineage F.
    assert_eq!(types(&outs, 1), ["user_left", "ack", "room_reset"]);
    assert_eq!(frames[1]["id"], "s1");
    assert_eq!(frames[2]["payload"]["epoch"], "F");
    assert_eq!(frames[2]["payload"]["offset"], 0);
    assert!(!outs.iter().any(|o| matches!(o, Output::Close { .. })));
}

/// Found by the simulator (sharded cluster world 77, a broker shard that
/// came back empty): the broker stored alice's message in a new epoch
/// this node had not heard of, and the ack (new epoch, offset 1) reached
/// her before the `room_reset` that moves her there.
#[test]
fn regression_sim_sharded_77_an_ack_in_a_new_epoch_waits_for_the_reset() {
    let mut m = cluster_with_bob_remote();
    m.input(Input::Sequenced(msg("g", "E", 1)));
    let mine = SequencedMessage::new(sent(&mut m, 1, "s1"), Epoch::new("F"), 1);
    let outs = m.input(Input::Appended(mine.receipt().unwrap()));
    assert!(sends_to(&outs, 1).is_empty(), "{outs:?}");
    // It asks for the room's current state instead.
    assert!(
        outs.iter().any(
            |o| matches!(o, Output::OpenRoom { after: Some(p), .. } if p.epoch.as_str() == "E")
        ),
        "{outs:?}"
    );
    // The snapshot shows epoch F holding alice's message: reset, then ack.
    let outs = m.input(Input::RoomOpened(snapshot("g", "F", 1, 1)));
    let frames = sends_to(&outs, 1);
    let kinds: Vec<&str> = frames
        .iter()
        .filter_map(|f| f["type"].as_str())
        .filter(|t| *t != "user_left")
        .collect();
    assert_eq!(kinds, ["room_reset", "ack"], "{frames:?}");
    assert_eq!(frames.last().unwrap()["payload"]["offset"], 1);
}

/// A receipt ahead of the reset's snapshot waits for its delivery, as
/// any other does; a room that empties acks whatever still waits.
#[test]
fn an_ack_in_a_new_epoch_beyond_the_snapshot_waits_for_its_delivery() {
    let mut m = cluster_with_bob_remote();
    let mine = SequencedMessage::new(sent(&mut m, 1, "s1"), Epoch::new("F"), 2);
    assert!(sends_to(&m.input(Input::Appended(mine.receipt().unwrap())), 1).is_empty());
    let outs = m.input(Input::RoomOpened(snapshot("g", "F", 1, 1)));
    assert!(!types(&outs, 1).iter().any(|t| t == "ack"), "{outs:?}");
    let outs = m.input(Input::Sequenced(mine));
    assert_eq!(types(&outs, 1), ["ack"]);
    // Held for an epoch the room does not reach (the resync finds it
    // still in F): acked once the resync is in, so the sender's leave,
    // which waits for it, goes ahead.
    let late = SequencedMessage::new(sent(&mut m, 1, "s2"), Epoch::new("G"), 9);
    assert!(sends_to(&m.input(Input::Appended(late.receipt().unwrap())), 1).is_empty());
    assert!(
        sends_to(
            &m.text(1, r#"{"type":"leave_room","room":"g","id":"l"}"#),
            1
        )
        .is_empty()
    );
    let outs = m.input(Input::RoomOpened(snapshot("g", "F", 2, 3)));
    let acked: Vec<String> = sends_to(&outs, 1)
        .iter()
        .filter(|f| f["type"] == "ack")
        .filter_map(|f| f["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(acked, ["s2", "l"], "{outs:?}");
}

#[test]
fn ids_and_room_name_errors_read_as_they_should() {
    assert_eq!(ConnId(7).to_string(), "c7");
    assert_eq!(room("lobby").to_string(), "lobby");
    assert_eq!(
        RoomName::parse("", 64).unwrap_err().describe(),
        "room name must not be empty"
    );
    assert!(
        RoomName::parse("a\u{1}", 64)
            .unwrap_err()
            .describe()
            .contains("control")
    );
}

#[test]
fn a_message_exactly_as_old_as_the_age_limit_is_still_recovered() {
    let mut w = TestWorld::new(Config {
        history_max_age_ms: 60_000,
        ..Config::default()
    });
    let a = w.connect("alice");
    let epoch = join(&mut w, a, "g")["payload"]["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    say(&mut w, a, "g", "edge", "1");
    w.advance_ms(60_000);
    let b = w.connect("bob");
    w.send_json(b, json!({"type": "join_room", "room": "g", "payload": {"since": {"offset": 0, "epoch": epoch}}}));
    let frames = w.take(b);
    assert_eq!(frames[0]["payload"]["content"], "edge");
    assert_eq!(frames[1]["payload"]["recovered"], true);
}

#[test]
fn a_timestamp_reads_back_as_its_milliseconds() {
    assert_eq!(Timestamp(1_767_225_600_123).as_millis(), 1_767_225_600_123);
    assert_eq!(START.plus_ms(250).ms_since(START), 250);
}

#[test]
fn room_frames_name_their_room() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    assert_eq!(join(&mut w, a, "g")["room"], "g");
    join(&mut w, b, "g");
    w.take(a);
    w.send_json(b, json!({"type": "typing", "room": "g"}));
    let typing = w.take(a);
    assert_eq!(
        (typing[0]["type"].as_str(), typing[0]["room"].as_str()),
        (Some("user_typing"), Some("g"))
    );
    w.send_json(a, json!({"type": "online_users", "room": "g"}));
    let list = w.take(a);
    assert_eq!(
        (list[0]["type"].as_str(), list[0]["room"].as_str()),
        (Some("online_users"), Some("g"))
    );
}

#[test]
fn a_room_still_opening_without_members_is_consistent() {
    let mut m = Manual::clustered(1);
    m.connect(1, "alice");
    m.text(1, r#"{"type":"join_room","room":"g"}"#);
    assert!(matches!(
        m.hub.rooms.get(&room("g")).map(|r| &r.state),
        Some(RoomState::Opening { .. })
    ));
    assert_eq!(m.hub.check_invariants(), Ok(()));
}

#[test]
fn outputs_are_for_the_sequencer_or_for_the_shell() {
    let conn = ConnId(1);
    for out in [
        Output::Append(Box::new(crate::testkit::append_request("g", 1))),
        Output::OpenRoom {
            room: room("g"),
            after: None,
        },
        Output::CloseRoom { room: room("g") },
        Output::FollowUser { user: "a".into() },
        Output::UnfollowUser { user: "a".into() },
    ] {
        assert!(out.is_for_sequencer(), "{out:?}");
    }
    for out in [
        Output::Ping { conn },
        Output::Close {
            conn,
            code: close::GOING_AWAY,
            reason: "bye".into(),
        },
        Output::Published {
            ticket: 1,
            outcome: PublishOutcome::Unavailable,
        },
    ] {
        assert!(!out.is_for_sequencer(), "{out:?}");
    }
}

fn history(w: &mut TestWorld, conn: ConnId, payload: Value) -> (Value, Value) {
    w.send_json(
        conn,
        json!({"type": "history", "room": "g", "id": "h", "payload": payload}),
    );
    let mut frames = w.take(conn).into_iter();
    let page = frames.next().expect("a history frame");
    let ack = frames.next().expect("an ack after the page");
    assert!(frames.next().is_none());
    (page, ack)
}

fn offsets(page: &Value) -> Vec<u64> {
    page["payload"]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect()
}

#[test]
fn history_pages_back_through_a_joined_room() {
    let mut w = TestWorld::new(Config {
        history_max_messages: 8,
        ..Config::default()
    });
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, a, "g");
    join(&mut w, b, "g");
    for i in 1..=10 {
        say(&mut w, a, "g", &format!("m{i}"), &format!("s{i}"));
    }
    w.take_all();

    let (page, ack) = history(&mut w, b, json!({"limit": 3}));
    assert_eq!(page["type"], "history");
    assert_eq!(page["room"], "g");
    assert_eq!(page["id"], "h");
    assert_eq!(page["payload"]["room_id"], "g");
    assert_eq!(page["payload"]["offset"], 10);
    assert!(
        page["payload"]["epoch"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    assert_eq!(offsets(&page), [8, 9, 10]);
    assert_eq!(page["payload"]["has_more"], true);
    let first = &page["payload"]["messages"][0];
    assert_eq!(first["type"], "new_message");
    assert_eq!(first["payload"]["content"], "m8");
    assert_eq!(first["sender"]["id"], "alice");
    assert!(first["timestamp"].is_string());
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["id"], "h");

    // Paging back: only 8 are retained (3..=10).
    let (page, _) = history(&mut w, b, json!({"limit": 3, "before": 8}));
    assert_eq!(offsets(&page), [5, 6, 7]);
    assert_eq!(page["payload"]["has_more"], true);
    let (page, _) = history(&mut w, b, json!({"limit": 3, "before": 5}));
    assert_eq!(offsets(&page), [3, 4]);
    assert_eq!(page["payload"]["has_more"], false);
    let (page, _) = history(&mut w, b, json!({"before": 1}));
    assert_eq!(offsets(&page), Vec::<u64>::new());
    assert_eq!(page["payload"]["has_more"], false);

    // The sender's own messages are history too; no limit means 50.
    let (page, _) = history(&mut w, a, json!(null));
    assert_eq!(offsets(&page), (3..=10).collect::<Vec<_>>());
    let (page, _) = history(&mut w, a, json!({"before": 1000}));
    assert_eq!(offsets(&page).len(), 8);
}

#[test]
fn history_caps_the_limit_at_100() {
    let mut w = world();
    let a = w.connect("alice");
    join(&mut w, a, "g");
    for i in 1..=120 {
        say(&mut w, a, "g", &format!("m{i}"), &format!("s{i}"));
        // Stay within the rate limit: it refills one message a second.
        w.advance_ms(1_000);
    }
    w.take_all();
    let (page, _) = history(&mut w, a, json!({"limit": 500}));
    assert_eq!(offsets(&page), (21..=120).collect::<Vec<_>>());
    assert_eq!(page["payload"]["has_more"], true);
}

#[test]
fn history_needs_membership_and_a_well_formed_payload() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, a, "g");
    say(&mut w, a, "g", "secret", "s1");
    w.take_all();
    w.send_json(b, json!({"type": "history", "room": "g", "id": "h"}));
    let frames = w.take(b);
    assert_eq!(frames.len(), 1);
    assert_eq!(error_code(&frames[0]), "NOT_IN_ROOM");
    assert_eq!(frames[0]["id"], "h");
    for bad in [
        json!({"limit": 0}),
        json!({"limit": -1}),
        json!({"limit": "5"}),
        json!({"limit": 1.5}),
        json!({"before": -3}),
        json!({"before": "x"}),
    ] {
        w.send_json(
            a,
            json!({"type": "history", "room": "g", "id": "h", "payload": bad}),
        );
        let frames = w.take(a);
        assert_eq!(frames.len(), 1, "{bad}");
        assert_eq!(error_code(&frames[0]), "INVALID_PAYLOAD", "{bad}");
    }
    w.send_json(a, json!({"type": "history", "id": "h"}));
    assert_eq!(error_code(&w.take(a)[0]), "MISSING_ROOM");
    // The connection still works.
    let (page, _) = history(&mut w, a, json!({}));
    assert_eq!(offsets(&page), [1]);
}

fn limited(user: &str, rooms: &[&str], expires_ms: Option<u64>) -> Identity {
    Identity {
        rooms: Some(RoomAccess::new(rooms)),
        expires_at: expires_ms.map(|ms| START.plus_ms(ms)),
        ..Identity::user(user)
    }
}

#[test]
fn refresh_moves_the_expiry_and_narrows_the_rooms() {
    let mut w = world();
    let a = w.connect_as(
        "alice",
        limited("alice", &["team-*", "lobby"], Some(60_000)),
    );
    let b = w.connect("bob");
    for room in ["team-x", "lobby"] {
        join(&mut w, a, room);
        join(&mut w, b, room);
    }
    w.take_all();
    w.tokens.insert(
        "t2".into(),
        Ok(limited("alice", &["team-*"], Some(120_000))),
    );
    w.send_json(
        a,
        json!({"type": "refresh", "id": "r", "payload": {"token": "t2"}}),
    );
    let frames = w.take(a);
    assert_eq!(frames[0]["type"], "room_left", "{frames:?}");
    assert_eq!(frames[0]["room"], "lobby");
    assert_eq!(frames[0]["payload"]["room_id"], "lobby");
    assert_eq!(frames[1]["type"], "ack");
    assert_eq!(frames[1]["id"], "r");
    assert_eq!(frames.len(), 2);
    let to_bob = w.take(b);
    assert_eq!(to_bob.len(), 1);
    assert_eq!(to_bob[0]["type"], "user_left");
    assert_eq!(to_bob[0]["room"], "lobby");
    assert_eq!(
        w.node.hub.rooms_of(a),
        [RoomName::parse("team-x", 64).unwrap()]
    );

    // The old expiry passes: still connected (answering pings); the new
    // one closes with 1008.
    for _ in 0..61 {
        w.advance_ms(1_000);
        w.input(Input::Activity { conn: a });
        w.input(Input::Activity { conn: b });
    }
    assert!(!w.closed.contains_key(&a));
    w.send_json(a, json!({"type": "join_room", "room": "lobby", "id": "j"}));
    assert_eq!(error_code(&w.take(a)[0]), "FORBIDDEN");
    for _ in 0..60 {
        w.advance_ms(1_000);
        w.input(Input::Activity { conn: a });
    }
    assert_eq!(w.closed.get(&a).map(|c| c.0), Some(close::POLICY_VIOLATION));
}

#[test]
fn refresh_refuses_a_bad_token_or_another_user_and_changes_nothing() {
    let mut w = world();
    let a = w.connect_as("alice", limited("alice", &["g"], Some(60_000)));
    join(&mut w, a, "g");
    w.take_all();
    w.tokens.insert(
        "mallory".into(),
        Ok(limited("mallory", &["*"], Some(600_000))),
    );
    w.tokens.insert("old".into(), Err("token expired".into()));
    w.send_json(
        a,
        json!({"type": "refresh", "id": "1", "payload": {"token": "mallory"}}),
    );
    let f = w.take(a);
    assert_eq!(error_code(&f[0]), "FORBIDDEN");
    assert_eq!(f[0]["id"], "1");
    w.send_json(
        a,
        json!({"type": "refresh", "id": "2", "payload": {"token": "old"}}),
    );
    let f = w.take(a);
    assert_eq!(error_code(&f[0]), "INVALID_TOKEN");
    assert_eq!(f[0]["payload"]["message"], "token expired");
    w.send_json(
        a,
        json!({"type": "refresh", "id": "3", "payload": {"token": "junk"}}),
    );
    assert_eq!(error_code(&w.take(a)[0]), "INVALID_TOKEN");
    for bad in [
        json!({}),
        json!({"token": ""}),
        json!({"token": 5}),
        json!(null),
    ] {
        w.send_json(a, json!({"type": "refresh", "id": "4", "payload": bad}));
        assert_eq!(error_code(&w.take(a)[0]), "INVALID_PAYLOAD", "{bad}");
    }
    // Nothing changed: still in g, and the old expiry still closes it.
    assert_eq!(w.node.hub.rooms_of(a), [RoomName::parse("g", 64).unwrap()]);
    w.advance_ms(60_000);
    assert_eq!(w.closed.get(&a).map(|c| c.0), Some(close::POLICY_VIOLATION));
}

fn hooked() -> TestWorld {
    TestWorld::new(Config {
        join_hook: true,
        publish_hook: true,
        rate_limit_per_second: 0,
        ..Config::default()
    })
}

fn answer_hook(w: &mut TestWorld, verdict: crate::api::HookVerdict) {
    let (ticket, _) = w.hooks.remove(0);
    w.input(Input::HookAnswered { ticket, verdict });
}

#[test]
fn the_join_hook_decides_and_later_requests_wait_for_it() {
    use crate::api::{HookCall, HookVerdict};
    let mut w = hooked();
    let a = w.connect("alice");
    w.send_json(a, json!({"type": "join_room", "room": "g", "id": "j"}));
    w.send_json(a, json!({"type": "online_users", "room": "g", "id": "o"}));
    assert!(w.take(a).is_empty(), "both wait for the hook");
    assert_eq!(
        w.hooks[0].1,
        HookCall::Join {
            user: UserRef {
                id: "alice".into(),
                name: "alice".into()
            },
            room: RoomName::parse("g", 64).unwrap()
        }
    );
    answer_hook(&mut w, HookVerdict::Allow { content: None });
    let types: Vec<String> = w
        .take(a)
        .iter()
        .map(|f| f["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["room_info", "ack", "online_users", "ack"]);

    w.send_json(a, json!({"type": "join_room", "room": "vip", "id": "j2"}));
    answer_hook(
        &mut w,
        HookVerdict::Deny {
            code: "NOT_INVITED".into(),
            message: "ask an admin".into(),
        },
    );
    let f = w.take(a);
    assert_eq!(
        f[0]["payload"],
        json!({"code": "NOT_INVITED", "message": "ask an admin"})
    );
    assert_eq!(f[0]["id"], "j2");
    w.send_json(a, json!({"type": "join_room", "room": "vip", "id": "j3"}));
    answer_hook(&mut w, HookVerdict::Unavailable);
    assert_eq!(error_code(&w.take(a)[0]), "UNAVAILABLE");
    assert_eq!(w.node.hub.rooms_of(a), [RoomName::parse("g", 64).unwrap()]);
}

#[test]
fn the_publish_hook_allows_replaces_or_denies_in_order() {
    use crate::api::HookVerdict;
    let mut w = hooked();
    let a = w.connect("alice");
    let b = w.connect("bob");
    for c in [a, b] {
        w.send_json(c, json!({"type": "join_room", "room": "g"}));
        answer_hook(&mut w, HookVerdict::Allow { content: None });
    }
    w.take_all();
    say(&mut w, a, "g", "first", "s1");
    say(&mut w, a, "g", "second", "s2");
    say(&mut w, a, "g", "third", "s3");
    assert_eq!(w.hooks.len(), 1, "one at a time: the others wait, in order");
    answer_hook(&mut w, HookVerdict::Allow { content: None });
    answer_hook(
        &mut w,
        HookVerdict::Allow {
            content: Some("second (edited)".into()),
        },
    );
    answer_hook(
        &mut w,
        HookVerdict::Deny {
            code: "SPAM".into(),
            message: "no".into(),
        },
    );
    let to_bob: Vec<Value> = w.take(b);
    let contents: Vec<&str> = to_bob
        .iter()
        .map(|f| f["payload"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["first", "second (edited)"]);
    let to_alice = w.take(a);
    assert_eq!(
        to_alice
            .iter()
            .map(|f| format!(
                "{}:{}",
                f["type"].as_str().unwrap(),
                f["id"].as_str().unwrap()
            ))
            .collect::<Vec<_>>(),
        ["ack:s1", "ack:s2", "error:s3"]
    );
    assert_eq!(to_alice[2]["payload"]["code"], "SPAM");
}

#[test]
fn namespaces_set_presence_publishing_typing_and_size_for_their_rooms() {
    let mut w = TestWorld::new(Config {
        rate_limit_per_second: 0,
        namespaces: vec![
            crate::config::Namespace {
                presence: false,
                client_publish: false,
                typing: false,
                ..crate::config::Namespace::new("feed")
            },
            crate::config::Namespace {
                max_members: Some(2),
                ..crate::config::Namespace::new("duo")
            },
        ],
        ..Config::default()
    });
    let a = w.connect("alice");
    let b = w.connect("bob");
    let c = w.connect("carol");
    // feed:*: no presence, members may not publish or type.
    let info = join(&mut w, a, "feed:news");
    assert_eq!(info["payload"]["users"], json!([]));
    join(&mut w, b, "feed:news");
    assert!(w.take(a).is_empty(), "no user_joined in feed:");
    say(&mut w, a, "feed:news", "hi", "s");
    assert_eq!(error_code(&w.take(a)[0]), "FORBIDDEN");
    w.send_json(a, json!({"type": "typing", "room": "feed:news", "id": "t"}));
    assert_eq!(error_code(&w.take(a)[0]), "FORBIDDEN");
    w.send_json(
        a,
        json!({"type": "online_users", "room": "feed:news", "id": "o"}),
    );
    assert_eq!(w.take(a)[0]["payload"]["users"], json!([]));
    // Other rooms keep the defaults.
    join(&mut w, a, "feedback");
    join(&mut w, b, "feedback");
    assert_eq!(w.take(a)[0]["type"], "user_joined");
    // duo:*: two users at most; a second connection of one in is fine.
    join(&mut w, a, "duo:1");
    join(&mut w, b, "duo:1");
    w.send_json(c, json!({"type": "join_room", "room": "duo:1", "id": "j"}));
    let f = w.take(c);
    assert_eq!(error_code(&f[0]), "ROOM_FULL");
    assert_eq!(f[0]["id"], "j");
    let a2 = w.connect("alice");
    join(&mut w, a2, "duo:1");
    assert_eq!(w.node.hub.room_connections("duo:1").len(), 3);
}

#[test]
fn a_reconfigure_applies_to_new_work_and_open_connections_keep_working() {
    let mut w = world();
    let old = w.connect("alice");
    join(&mut w, old, "g");
    w.take_all();
    w.input(Input::Reconfigure(Box::new(Config {
        rate_limit_per_second: 1,
        rate_limit_burst: 2,
        max_content_bytes: 5,
        history_max_messages: 2,
        node_id: crate::NodeId(999),
        ..Config::default()
    })));
    // Identity stays; the rules are the new ones.
    assert_eq!(w.node.hub.config().node_id, Config::default().node_id);
    assert_eq!(w.node.hub.config().max_content_bytes, 5);
    say(&mut w, old, "g", "too long", "1");
    assert_eq!(error_code(&w.take_one(old)), "CONTENT_TOO_LONG");
    // The open connection keeps its bucket (a burst of 10); a new one
    // gets the new burst of 2.
    for i in 0..5 {
        say(&mut w, old, "g", "x", &format!("o{i}"));
    }
    assert_eq!(w.take_types(old), vec!["ack"; 5]);
    let new = w.connect("bob");
    join(&mut w, new, "h");
    w.take_all();
    for i in 0..3 {
        say(&mut w, new, "h", "y", &format!("n{i}"));
    }
    assert_eq!(w.take_types(new), ["ack", "ack", "error"]);
    // The sequencer keeps two messages a room now.
    let snapshot = w
        .node
        .sequencer
        .snapshot(&RoomName::parse("g", 100).unwrap(), START);
    assert_eq!(snapshot.messages.len(), 2, "{snapshot:?}");
}
