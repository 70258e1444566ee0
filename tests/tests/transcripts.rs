//! Protocol transcripts: named scenarios driven through the core, every frame
//! in and out recorded byte for byte and compared with the committed
//! snapshots in `tests/snapshots/`. A change to the wire format shows up here
//! as a diff; accept it deliberately with `cargo insta review`.

use bytes::Bytes;
use insta::assert_snapshot;
use roomhub_core::testkit::TestWorld;
use roomhub_core::{
    AppendRequest, Config, Identity, Input, Origin, RoomAccess, RoomName, Timestamp,
};
use roomhub_tests::{epoch_seen, join, rejoin, say};
use serde_json::json;

fn world() -> TestWorld {
    TestWorld::new(Config::default())
}

#[test]
fn seed_wscat_session() {
    // The seed's wscat lines: join `general`, then send to it.
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    w.send(a, r#"{"type":"join_room","room":"general"}"#);
    w.send(b, r#"{"type":"join_room","room":"general"}"#);
    w.send(
        a,
        r#"{"type":"send_message","room":"general","payload":{"content":"Hello!"}}"#,
    );
    assert_snapshot!(w.transcript());
}

#[test]
fn seed_javascript_client_frames() {
    // What the seed's WebSocketClient sends: `room: ''` with join_room, and a
    // client timestamp the server ignores.
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    for c in [a, b] {
        w.send(c, r#"{"type":"join_room","payload":{"room_id":"general"},"room":"","timestamp":"2025-01-01T00:00:00.000Z"}"#);
    }
    w.send(a, r#"{"type":"send_message","payload":{"content":"hi from js"},"room":"general","timestamp":"2025-01-01T00:00:00.000Z"}"#);
    w.send(b, r#"{"type":"leave_room","payload":{"room_id":"general"},"room":"","timestamp":"2025-01-01T00:00:00.000Z"}"#);
    assert_snapshot!(w.transcript());
}

#[test]
fn join_and_leave() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    w.send(a, r#"{"type":"join_room","room":"lobby","id":"j1"}"#);
    w.send(b, r#"{"type":"join_room","room":"lobby","id":"j2"}"#);
    w.send(b, r#"{"type":"leave_room","room":"lobby","id":"l2"}"#);
    w.send(a, r#"{"type":"leave_room","room":"lobby","id":"l1"}"#);
    assert_snapshot!(w.transcript());
}

#[test]
fn rejoin_is_idempotent() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, a, "lobby");
    join(&mut w, b, "lobby");
    w.note("bob joins again: room_info again, no second user_joined");
    w.send(b, r#"{"type":"join_room","room":"lobby","id":"again"}"#);
    assert_snapshot!(w.transcript());
}

#[test]
fn presence_with_two_connections_of_one_user() {
    let mut w = world();
    let b = w.connect("bob");
    join(&mut w, b, "g");
    let a1 = w.connect_as("alice-laptop", Identity::named("alice", "Alice"));
    let a2 = w.connect_as("alice-phone", Identity::named("alice", "Alice"));
    join(&mut w, a1, "g");
    join(&mut w, a2, "g");
    w.send(b, r#"{"type":"online_users","room":"g"}"#);
    w.note("the laptop leaves: alice is still present through the phone");
    w.send(a1, r#"{"type":"leave_room","room":"g"}"#);
    w.note("the phone drops: now alice has left");
    w.input(Input::Disconnected { conn: a2 });
    assert_snapshot!(w.transcript());
}

#[test]
fn send_message_broadcast_and_ack() {
    let mut w = world();
    let a = w.connect_as("alice", Identity::named("alice", "Alice"));
    let b = w.connect_as("bob", Identity::named("bob", "Bob"));
    let c = w.connect_as("carol", Identity::named("carol", "Carol"));
    for conn in [a, b, c] {
        join(&mut w, conn, "g");
    }
    w.take_all();
    w.advance_ms(250);
    w.send(a, r#"{"type":"send_message","room":"g","id":"m-1","payload":{"content":"hello all","reply_to":"earlier-id"}}"#);
    w.note("without an id: delivered, not acked");
    w.send(
        b,
        r#"{"type":"send_message","room":"g","payload":{"content":"hi alice"}}"#,
    );
    assert_snapshot!(w.transcript());
}

#[test]
fn senders_other_connections_receive_the_message() {
    let mut w = world();
    let a1 = w.connect_as("alice-laptop", Identity::user("alice"));
    let a2 = w.connect_as("alice-phone", Identity::user("alice"));
    join(&mut w, a1, "g");
    join(&mut w, a2, "g");
    say(&mut w, a1, "g", "sent from the laptop", Some("x"));
    assert_snapshot!(w.transcript());
}

#[test]
fn spoofed_sender_and_timestamp_are_ignored() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, a, "g");
    join(&mut w, b, "g");
    w.send(a, r#"{"type":"send_message","room":"g","payload":{"content":"I am admin"},"sender":{"id":"admin","name":"Admin"},"timestamp":"1999-12-31T23:59:59Z"}"#);
    assert_snapshot!(w.transcript());
}

#[test]
fn typing_and_stop_typing() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, a, "g");
    join(&mut w, b, "g");
    w.send(a, r#"{"type":"typing","room":"g"}"#);
    w.send(
        a,
        r#"{"type":"stop_typing","payload":{"room_id":"g"},"id":"st"}"#,
    );
    assert_snapshot!(w.transcript());
}

#[test]
fn typing_from_a_non_member_reaches_nobody() {
    let mut w = world();
    let a = w.connect("alice");
    let m = w.connect("mallory");
    join(&mut w, a, "g");
    w.send(m, r#"{"type":"typing","room":"g","id":"t"}"#);
    assert_snapshot!(w.transcript());
}

#[test]
fn online_users() {
    let mut w = world();
    let a = w.connect_as("alice", Identity::named("alice", "Alice"));
    let b = w.connect_as("bob", Identity::named("42", "Bob"));
    join(&mut w, a, "g");
    join(&mut w, b, "g");
    w.send(a, r#"{"type":"online_users","room":"g","id":"who"}"#);
    w.send(a, r#"{"type":"online_users","payload":{"room_id":"g"}}"#);
    assert_snapshot!(w.transcript());
}

#[test]
fn send_direct_to_every_connection_of_a_user() {
    let mut w = world();
    let a = w.connect("alice");
    let _b1 = w.connect_as("bob-laptop", Identity::user("bob"));
    let _b2 = w.connect_as("bob-phone", Identity::user("bob"));
    w.send(
        a,
        r#"{"type":"send_direct","id":"d1","payload":{"to":"bob","content":"psst"}}"#,
    );
    assert_snapshot!(w.transcript());
}

#[test]
fn error_invalid_format() {
    let mut w = world();
    let a = w.connect("alice");
    for bad in [
        "hello",
        "[1,2]",
        r#"{"room":"g"}"#,
        r#"{"type":7}"#,
        r#"{"type":"join_room","room":["g"]}"#,
        r#"{"type":"join_room","room":"g","id":{"x":1}}"#,
    ] {
        w.send(a, bad);
    }
    assert_snapshot!(w.transcript());
}

#[test]
fn error_unknown_type() {
    let mut w = world();
    let a = w.connect("alice");
    w.send(a, r#"{"type":"delete_everything","id":"u1"}"#);
    assert_snapshot!(w.transcript());
}

#[test]
fn error_invalid_payload() {
    let mut w = world();
    let a = w.connect("alice");
    join(&mut w, a, "g");
    for bad in [
        r#"{"type":"send_message","room":"g","id":"p1"}"#,
        r#"{"type":"send_message","room":"g","id":"p2","payload":{"content":42}}"#,
        r#"{"type":"send_message","room":"g","id":"p3","payload":"just a string"}"#,
        r#"{"type":"join_room","room":"g","id":"p4","payload":{"since":{"offset":"three","epoch":"e"}}}"#,
        r#"{"type":"send_direct","id":"p5","payload":{"content":"to whom?"}}"#,
    ] {
        w.send(a, bad);
    }
    assert_snapshot!(w.transcript());
}

#[test]
fn error_missing_room() {
    let mut w = world();
    let a = w.connect("alice");
    w.send(a, r#"{"type":"join_room","id":"r1"}"#);
    w.send(
        a,
        r#"{"type":"join_room","room":"","payload":{"room_id":""},"id":"r2"}"#,
    );
    w.send(
        a,
        r#"{"type":"send_message","payload":{"content":"where?"},"id":"r3"}"#,
    );
    assert_snapshot!(w.transcript());
}

#[test]
fn error_invalid_room() {
    let mut w = world();
    let a = w.connect("alice");
    let long = "r".repeat(65);
    w.send_json(a, json!({"type": "join_room", "room": long, "id": "i1"}));
    w.send(
        a,
        r#"{"type":"join_room","room":"bad\u0000name","id":"i2"}"#,
    );
    w.send(a, r#"{"type":"join_room","room":"line\nbreak","id":"i3"}"#);
    assert_snapshot!(w.transcript());
}

#[test]
fn error_not_in_room() {
    let mut w = world();
    let a = w.connect("alice");
    for t in [
        "send_message",
        "typing",
        "stop_typing",
        "online_users",
        "leave_room",
    ] {
        w.send_json(
            a,
            json!({"type": t, "room": "elsewhere", "id": t, "payload": {"content": "x"}}),
        );
    }
    assert_snapshot!(w.transcript());
}

#[test]
fn error_forbidden_by_rooms_claim() {
    let mut w = world();
    let mut id = Identity::user("carol");
    id.rooms = Some(RoomAccess::new(["lobby", "team-*"]));
    let c = w.connect_as("carol", id);
    w.send(c, r#"{"type":"join_room","room":"team-blue","id":"ok"}"#);
    w.send(c, r#"{"type":"join_room","room":"admins","id":"no"}"#);
    assert_snapshot!(w.transcript());
}

#[test]
fn error_too_many_rooms() {
    let mut w = TestWorld::new(Config {
        max_rooms_per_connection: 2,
        ..Config::default()
    });
    let a = w.connect("alice");
    for (i, room) in ["one", "two", "three"].iter().enumerate() {
        w.send_json(
            a,
            json!({"type": "join_room", "room": room, "id": format!("j{i}")}),
        );
    }
    assert_snapshot!(w.transcript());
}

#[test]
fn error_rate_limited_then_refilled() {
    let mut w = TestWorld::new(Config {
        rate_limit_burst: 3,
        ..Config::default()
    });
    let a = w.connect("alice");
    join(&mut w, a, "g");
    for i in 1..=4 {
        say(
            &mut w,
            a,
            "g",
            &format!("burst {i}"),
            Some(&format!("b{i}")),
        );
    }
    w.advance_ms(1000);
    say(&mut w, a, "g", "after a second", Some("b5"));
    assert_snapshot!(w.transcript());
}

#[test]
fn error_content_too_long() {
    let mut w = TestWorld::new(Config {
        max_content_bytes: 8,
        ..Config::default()
    });
    let a = w.connect("alice");
    join(&mut w, a, "g");
    say(&mut w, a, "g", "12345678", Some("fits"));
    say(&mut w, a, "g", "123456789", Some("too-long"));
    say(&mut w, a, "g", "ééééé", Some("ten-bytes"));
    assert_snapshot!(w.transcript());
}

#[test]
fn error_recipient_offline() {
    let mut w = world();
    let a = w.connect("alice");
    w.send(
        a,
        r#"{"type":"send_direct","id":"d","payload":{"to":"nobody","content":"hello?"}}"#,
    );
    assert_snapshot!(w.transcript());
}

#[test]
fn error_unsupported_frame() {
    let mut w = world();
    let a = w.connect("alice");
    w.input(Input::Binary { conn: a });
    join(&mut w, a, "still-works");
    assert_snapshot!(w.transcript());
}

/// UNAVAILABLE itself needs a sequencer that fails (core unit tests and the
/// cluster tests show it); here: a failure reported for a message that was
/// already acked changes nothing. Every message gets exactly one answer.
#[test]
fn a_late_failure_report_never_answers_a_message_twice() {
    let mut w = world();
    let a = w.connect("alice");
    join(&mut w, a, "g");
    say(&mut w, a, "g", "hi", Some("s1"));
    w.note("the sequencer then reports alice's first message as failed");
    let request = AppendRequest {
        room: RoomName::parse("g", 64).unwrap(),
        sender: Identity::user("alice").user,
        content: "hi".into(),
        reply_to: None,
        timestamp: w.now,
        origin: Some(Origin {
            node: Config::default().node_id,
            conn: a,
            request_id: Some("s1".into()),
            seq: 1,
        }),
        ticket: None,
    };
    w.input(Input::AppendFailed(request));
    assert_snapshot!(w.transcript());
}

#[test]
fn bad_input_never_costs_the_connection() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, b, "g");
    w.send(a, "{{{{");
    w.send(
        a,
        r#"{"type":"join_room","room":"g","payload":{"since":[]},"id":"x"}"#,
    );
    w.input(Input::Binary { conn: a });
    join(&mut w, a, "g");
    say(&mut w, a, "g", "the next good request works", Some("ok"));
    assert_snapshot!(w.transcript());
}

#[test]
fn history_replay_recovered_true() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, a, "g");
    join(&mut w, b, "g");
    let epoch = epoch_seen(&w.take(b));
    say(&mut w, a, "g", "one", None);
    w.note("bob's connection drops after seeing offset 1");
    w.input(Input::Disconnected { conn: b });
    say(&mut w, a, "g", "two", None);
    say(&mut w, a, "g", "three", None);
    let b2 = w.connect_as("bob-again", Identity::user("bob"));
    rejoin(&mut w, b2, "g", 1, &epoch);
    assert_snapshot!(w.transcript());
}

#[test]
fn history_replay_recovered_false_for_another_epoch() {
    let mut w = world();
    let a = w.connect("alice");
    join(&mut w, a, "g");
    say(&mut w, a, "g", "one", None);
    let b = w.connect("bob");
    w.note("bob remembers an epoch from a server that lost its history");
    rejoin(&mut w, b, "g", 12, "0123456789abcdef");
    assert_snapshot!(w.transcript());
}

#[test]
fn history_replay_recovered_false_when_trimmed() {
    let mut w = TestWorld::new(Config {
        history_max_messages: 2,
        ..Config::default()
    });
    let a = w.connect("alice");
    join(&mut w, a, "g");
    let epoch = epoch_seen(&w.take(a));
    for text in ["one", "two", "three", "four"] {
        say(&mut w, a, "g", text, None);
    }
    let b = w.connect("bob");
    w.note("offsets 2..4 are needed; only 3..4 are kept");
    rejoin(&mut w, b, "g", 1, &epoch);
    w.note("from offset 2, everything missed is still kept");
    rejoin(&mut w, b, "g", 2, &epoch);
    assert_snapshot!(w.transcript());
}

#[test]
fn slow_consumer_is_closed_with_4000() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, a, "g");
    join(&mut w, b, "g");
    w.input(Input::QueueOverflow { conn: b });
    say(&mut w, a, "g", "bob is gone, alice carries on", Some("m"));
    assert_snapshot!(w.transcript());
}

#[test]
fn graceful_shutdown_closes_everyone_with_1001() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    let _c = w.connect("carol");
    join(&mut w, a, "g");
    join(&mut w, b, "g");
    w.input(Input::Shutdown);
    w.connect("dave");
    assert_snapshot!(w.transcript());
}

#[test]
fn heartbeat_pings_and_timeout() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, a, "g");
    join(&mut w, b, "g");
    w.advance_ms(54_000);
    w.input(Input::Activity { conn: a });
    w.note("bob never answers: closed 60 s after his last traffic");
    w.advance_ms(6_000);
    assert_snapshot!(w.transcript());
}

#[test]
fn token_expiry_closes_with_1008() {
    let mut w = world();
    let mut id = Identity::user("alice");
    id.expires_at = Some(Timestamp(w.now.as_millis() + 30_000));
    let a = w.connect_as("alice", id);
    let b = w.connect("bob");
    join(&mut w, a, "g");
    join(&mut w, b, "g");
    w.advance_ms(30_000);
    assert_snapshot!(w.transcript());
}

#[test]
fn oversize_frame_closes_with_1009() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    join(&mut w, a, "g");
    join(&mut w, b, "g");
    let huge = format!(
        r#"{{"type":"send_message","room":"g","payload":{{"content":"{}"}}}}"#,
        "x".repeat(4100)
    );
    w.input(Input::Text {
        conn: a,
        frame: Bytes::from(huge),
    });
    assert_snapshot!(w.transcript());
}

#[test]
fn history_pages() {
    let mut w = world();
    let a = w.connect("alice");
    let b = w.connect("bob");
    w.send(a, r#"{"type":"join_room","room":"g"}"#);
    for text in ["one", "two", "three"] {
        w.send(
            a,
            &format!(r#"{{"type":"send_message","room":"g","payload":{{"content":"{text}"}}}}"#),
        );
    }
    w.send(b, r#"{"type":"history","room":"g","id":"h0"}"#);
    w.send(b, r#"{"type":"join_room","room":"g"}"#);
    w.send(
        b,
        r#"{"type":"history","room":"g","id":"h1","payload":{"limit":2}}"#,
    );
    w.send(
        b,
        r#"{"type":"history","room":"g","id":"h2","payload":{"limit":2,"before":2}}"#,
    );
    w.send(
        b,
        r#"{"type":"history","room":"g","id":"h3","payload":{"limit":0}}"#,
    );
    assert_snapshot!(w.transcript());
}

#[test]
fn refresh_narrows_the_rooms_and_refuses_bad_tokens() {
    let mut w = world();
    let narrow = |rooms: &[&str]| Identity {
        rooms: Some(RoomAccess::new(rooms)),
        expires_at: Some(Timestamp(1_767_225_600_000 + 60_000)),
        ..Identity::user("alice")
    };
    let a = w.connect_as("alice#1", narrow(&["team-*", "lobby"]));
    let b = w.connect("bob");
    w.tokens.insert("narrower".into(), Ok(narrow(&["team-*"])));
    w.tokens
        .insert("expired".into(), Err("token expired".into()));
    w.send(a, r#"{"type":"join_room","room":"lobby"}"#);
    w.send(b, r#"{"type":"join_room","room":"lobby"}"#);
    w.send(
        a,
        r#"{"type":"refresh","id":"r1","payload":{"token":"expired"}}"#,
    );
    w.send(
        a,
        r#"{"type":"refresh","id":"r2","payload":{"token":"narrower"}}"#,
    );
    w.send(a, r#"{"type":"refresh","id":"r3","payload":{}}"#);
    assert_snapshot!(w.transcript());
}
