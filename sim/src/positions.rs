//! Where a client stands in each room's history, as the frames it received
//! say: the epoch and offset of `room_info` (or of an in-band
//! `room_reset`), raised by every `new_message` and by the acks of its own
//! messages. What it asks for with `since` after
//! a reconnect. Both the turmoil clients and the in-memory cluster's
//! clients keep one.

use std::collections::BTreeMap;

use serde_json::{Value, json};

#[derive(Default)]
pub struct Positions {
    /// room -> (epoch, highest offset seen)
    rooms: BTreeMap<String, (String, u64)>,
}

impl Positions {
    /// Takes what a received frame says about a room's position.
    pub fn observe(&mut self, frame: &Value) {
        let room = frame["room"].as_str().unwrap_or("").to_string();
        let offset = match frame["type"].as_str() {
            Some("room_info" | "room_reset") => {
                let epoch = frame["payload"]["epoch"].as_str().unwrap_or("").to_string();
                let offset = frame["payload"]["offset"].as_u64().unwrap_or(0);
                self.rooms.insert(room, (epoch, offset));
                return;
            }
            Some("new_message") => frame["offset"].as_u64(),
            Some("ack") => frame["payload"]["offset"].as_u64(),
            _ => None,
        };
        if let (Some(offset), Some((_, seen))) = (offset, self.rooms.get_mut(&room)) {
            *seen = (*seen).max(offset);
        }
    }

    /// `{offset, epoch}` for a join's `since`, if the room was seen.
    pub fn since(&self, room: &str) -> Option<Value> {
        self.rooms
            .get(room)
            .map(|(epoch, offset)| json!({"offset": offset, "epoch": epoch}))
    }
}
