//! Helpers for roomhub's tests: short ways to drive a [`TestWorld`] in the
//! transcript tests, and ([`server`]) a real server on loopback with a real
//! WebSocket client for the end-to-end tests.

pub mod proxy;
pub mod redis;
pub mod server;
pub mod sse;
pub mod tls;

use roomhub_core::ConnId;
use roomhub_core::testkit::TestWorld;
use serde_json::{Value, json};

pub use roomhub_core::testkit;

/// `join_room` the way the seed's wscat line does (`room` in the envelope).
pub fn join(w: &mut TestWorld, conn: ConnId, room: &str) {
    w.send_json(conn, json!({"type": "join_room", "room": room}));
}

/// `join_room` with `since`, from the last `room_info` or message seen.
pub fn rejoin(w: &mut TestWorld, conn: ConnId, room: &str, offset: u64, epoch: &str) {
    w.send_json(
        conn,
        json!({"type": "join_room", "payload": {"room_id": room, "since": {"offset": offset, "epoch": epoch}}}),
    );
}

pub fn say(w: &mut TestWorld, conn: ConnId, room: &str, content: &str, id: Option<&str>) {
    let mut frame = json!({"type": "send_message", "room": room, "payload": {"content": content}});
    if let Some(id) = id {
        frame["id"] = Value::from(id);
    }
    w.send_json(conn, frame);
}

/// The epoch a connection was told in its most recent `room_info`.
pub fn epoch_seen(frames: &[Value]) -> String {
    frames
        .iter()
        .rev()
        .find(|f| f["type"] == "room_info")
        .and_then(|f| f["payload"]["epoch"].as_str())
        .expect("a room_info with an epoch")
        .to_string()
}

/// The contents of a history page's messages (`messages`: a list of
/// `new_message` frames), in order.
pub fn contents(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .expect("a list of messages")
        .iter()
        .map(|m| {
            m["payload"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}
