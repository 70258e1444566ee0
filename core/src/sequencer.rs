//! The in-memory sequencer: owns each room's order (epoch and offsets) and
//! retained history for a node without a store. Pure and deterministic like
//! the hub; a harness or the shell answers the hub's [`Output::Append`] and
//! [`Output::OpenRoom`] with it.
//!
//! Epochs come from a seeded RNG: a process that starts with a fresh seed
//! starts new lineages, so clients of a restarted in-memory server are told
//! `recovered: false` instead of being handed offsets that mean something
//! else now.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use rustc_hash::FxHashMap;

use crate::config::Config;
use crate::event::{AppendRequest, Input, Output, RoomSnapshot, SequencedMessage};
use crate::ids::{Epoch, RoomName};
use crate::time::Timestamp;

/// How much history a sequencer keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    pub max_messages: usize,
    pub max_age_ms: u64,
    /// Rooms remembered; the least recently used is forgotten beyond this.
    pub max_rooms: usize,
}

impl HistoryLimits {
    /// Enough for every room: the most any namespace keeps.
    pub fn from_config(config: &Config) -> Self {
        let (max_messages, max_age_ms) = config.history_retained();
        HistoryLimits {
            max_messages,
            max_age_ms,
            max_rooms: 100_000,
        }
    }
}

struct SeqRoom {
    epoch: Epoch,
    head: u64,
    history: VecDeque<SequencedMessage>,
    /// Key in `MemorySequencer::by_use`.
    used: u64,
}

pub struct MemorySequencer {
    rooms: FxHashMap<RoomName, SeqRoom>,
    /// Rooms by last use, oldest first, for eviction.
    by_use: BTreeMap<u64, RoomName>,
    use_counter: u64,
    rng: ChaCha8Rng,
    limits: HistoryLimits,
}

impl MemorySequencer {
    pub fn new(seed: u64, limits: HistoryLimits) -> Self {
        MemorySequencer {
            rooms: FxHashMap::default(),
            by_use: BTreeMap::new(),
            use_counter: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            limits,
        }
    }

    /// Answers an output that is the sequencer's to answer, pushing the
    /// resulting inputs for the hub. Returns false for every other output.
    pub fn serve(&mut self, output: &Output, now: Timestamp, inputs: &mut Vec<Input>) -> bool {
        match output {
            Output::Append(request) => {
                let msg = self.append((**request).clone());
                let receipt = msg.receipt();
                inputs.push(Input::Sequenced(msg));
                inputs.extend(receipt.map(Input::Appended));
                true
            }
            Output::OpenRoom { room, .. } => {
                inputs.push(Input::RoomOpened(self.snapshot(room, now)));
                true
            }
            Output::EndLineage { room, ticket } => {
                self.end_lineage(room);
                inputs.push(Input::LineageEnded {
                    ticket: *ticket,
                    ended: true,
                });
                true
            }
            // Nothing to stop: this sequencer hands messages straight back.
            Output::CloseRoom { .. } => true,
            // Cluster outputs are the broker's; a hub that is not clustered
            // never emits them.
            Output::Send { .. }
            | Output::Ping { .. }
            | Output::Close { .. }
            | Output::Presence { .. }
            | Output::Relay(_)
            | Output::FollowUser { .. }
            | Output::UnfollowUser { .. }
            | Output::Published { .. }
            | Output::ApiAnswered { .. }
            | Output::Hook { .. }
            | Output::VerifyToken { .. } => false,
        }
    }

    /// Gives the message the room's next offset and keeps it.
    pub fn append(&mut self, request: AppendRequest) -> SequencedMessage {
        let limits = self.limits;
        let room = self.room_mut(&request.room);
        room.head += 1;
        let msg = SequencedMessage::new(request, room.epoch.clone(), room.head);
        room.history.push_back(msg.clone());
        while room.history.len() > limits.max_messages {
            room.history.pop_front();
        }
        trim_by_age(&mut room.history, msg.timestamp, limits.max_age_ms);
        msg
    }

    /// The room's epoch, head and retained history (a new lineage if the
    /// room is unknown).
    pub fn snapshot(&mut self, name: &RoomName, now: Timestamp) -> RoomSnapshot {
        let max_age_ms = self.limits.max_age_ms;
        let room = self.room_mut(name);
        trim_by_age(&mut room.history, now, max_age_ms);
        RoomSnapshot {
            room: name.clone(),
            epoch: room.epoch.clone(),
            head: room.head,
            messages: room.history.iter().cloned().collect(),
            presence: Vec::new(),
        }
    }

    /// Forgets the room: its next append or snapshot starts a new epoch.
    pub fn end_lineage(&mut self, name: &RoomName) {
        if let Some(room) = self.rooms.remove(name) {
            self.by_use.remove(&room.used);
        }
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    fn room_mut(&mut self, name: &RoomName) -> &mut SeqRoom {
        self.use_counter += 1;
        let used = self.use_counter;
        if !self.rooms.contains_key(name) {
            if self.rooms.len() >= self.limits.max_rooms
                && let Some((_, oldest)) = self.by_use.pop_first()
            {
                self.rooms.remove(&oldest);
            }
            let epoch = Epoch(Arc::from(format!("{:016x}", self.rng.next_u64())));
            self.rooms.insert(
                name.clone(),
                SeqRoom {
                    epoch,
                    head: 0,
                    history: VecDeque::new(),
                    used,
                },
            );
        }
        let room = self
            .rooms
            .get_mut(name)
            .expect("inserted above when missing");
        self.by_use.remove(&room.used);
        room.used = used;
        self.by_use.insert(used, name.clone());
        room
    }
}

fn trim_by_age(history: &mut VecDeque<SequencedMessage>, now: Timestamp, max_age_ms: u64) {
    while history
        .front()
        .is_some_and(|m| now.ms_since(m.timestamp) > max_age_ms)
    {
        history.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::append_request;

    fn limits(max_messages: usize, max_rooms: usize) -> HistoryLimits {
        HistoryLimits {
            max_messages,
            max_age_ms: 10_000,
            max_rooms,
        }
    }

    #[test]
    fn offsets_are_per_room_and_strictly_increasing() {
        let mut s = MemorySequencer::new(1, limits(10, 10));
        let a1 = s.append(append_request("a", 1));
        let a2 = s.append(append_request("a", 2));
        let b1 = s.append(append_request("b", 3));
        assert_eq!((a1.offset, a2.offset, b1.offset), (1, 2, 1));
        assert_eq!(a1.epoch, a2.epoch);
        assert_ne!(a1.epoch, b1.epoch);
        assert_ne!(a1.id, b1.id);
    }

    #[test]
    fn history_is_bounded_by_count_and_age() {
        let mut s = MemorySequencer::new(1, limits(3, 10));
        for t in 0..5 {
            s.append(append_request("a", t));
        }
        let room = RoomName::parse("a", 64).unwrap();
        let snap = s.snapshot(&room, Timestamp(5));
        assert_eq!(snap.head, 5);
        let offsets: Vec<u64> = snap.messages.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, [3, 4, 5]);
        let later = s.snapshot(&room, Timestamp(10_004));
        assert_eq!(later.messages.len(), 1);
    }

    #[test]
    fn forgets_least_recently_used_rooms_beyond_the_bound() {
        let mut s = MemorySequencer::new(1, limits(3, 2));
        let a = s.append(append_request("a", 1)).epoch;
        s.append(append_request("b", 1));
        s.append(append_request("c", 1));
        assert_eq!(s.room_count(), 2);
        let again = s.append(append_request("a", 2));
        assert_ne!(again.epoch, a, "a forgotten room starts a new lineage");
        assert_eq!(again.offset, 1);
    }
}
