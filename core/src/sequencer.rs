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
    /// Every room's kept messages together (0: no bound); over it, the
    /// least recently used rooms lose their history first.
    pub max_bytes: usize,
}

impl HistoryLimits {
    /// Enough for every room: the most any namespace keeps.
    pub fn from_config(config: &Config) -> Self {
        let (max_messages, max_age_ms) = config.history_retained();
        HistoryLimits {
            max_messages,
            max_age_ms,
            max_rooms: 100_000,
            max_bytes: config.history_max_bytes,
        }
    }
}

struct SeqRoom {
    epoch: Epoch,
    head: u64,
    history: VecDeque<SequencedMessage>,
    /// What `history` holds, as [`cost`] counts it, and every slot
    /// `history` has allocated.
    bytes: usize,
    /// Key in `MemorySequencer::by_use`.
    used: u64,
}

/// The heap a kept message holds besides its slot in a room's history:
/// its text, its sender, its id and their allocation headers.
fn cost(msg: &SequencedMessage) -> usize {
    msg.content.len() + msg.sender.id.len() + msg.sender.name.len() + msg.id.len() + 96
}

/// The heap a room's history holds for its slots.
fn slots(history: &VecDeque<SequencedMessage>) -> usize {
    history.capacity() * std::mem::size_of::<SequencedMessage>()
}

impl SeqRoom {
    fn pop_oldest(&mut self) -> usize {
        let freed = self.history.pop_front().map_or(0, |m| cost(&m));
        self.bytes -= freed;
        freed
    }

    /// Drops messages older than `max_age_ms`; returns the bytes freed.
    fn trim_by_age(&mut self, now: Timestamp, max_age_ms: u64) -> usize {
        let mut freed = 0;
        while self
            .history
            .front()
            .is_some_and(|m| now.ms_since(m.timestamp) > max_age_ms)
        {
            freed += self.pop_oldest();
        }
        freed
    }
}

pub struct MemorySequencer {
    rooms: FxHashMap<RoomName, SeqRoom>,
    /// Rooms by last use, oldest first, for eviction.
    by_use: BTreeMap<u64, RoomName>,
    use_counter: u64,
    rng: ChaCha8Rng,
    limits: HistoryLimits,
    /// Every room's `bytes` together.
    bytes: usize,
}

impl MemorySequencer {
    /// Keeps `max_messages` per room for `max_age_ms` from the next
    /// append on (a room over the new count is trimmed at its next append).
    pub fn set_history(&mut self, max_messages: usize, max_age_ms: u64) {
        self.limits.max_messages = max_messages;
        self.limits.max_age_ms = max_age_ms;
    }

    pub fn new(seed: u64, limits: HistoryLimits) -> Self {
        MemorySequencer {
            rooms: FxHashMap::default(),
            by_use: BTreeMap::new(),
            use_counter: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            limits,
            bytes: 0,
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
            Output::HistoryLimits {
                max_messages,
                max_age_ms,
            } => {
                self.set_history(*max_messages, *max_age_ms);
                true
            }
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
        let slots_before = slots(&room.history);
        room.history.push_back(msg.clone());
        let added = cost(&msg) + slots(&room.history) - slots_before;
        room.bytes += added;
        let mut freed = 0;
        while room.history.len() > limits.max_messages {
            freed += room.pop_oldest();
        }
        freed += room.trim_by_age(msg.timestamp, limits.max_age_ms);
        self.bytes = self.bytes + added - freed;
        if limits.max_bytes > 0 && self.bytes > limits.max_bytes {
            self.trim_to_bound();
        }
        msg
    }

    /// Over the byte bound: the least recently used rooms lose their
    /// history (whole rooms, down to nine tenths of the bound); their
    /// epochs and heads stay, so a rejoin from before is `recovered: false`.
    fn trim_to_bound(&mut self) {
        let target = self.limits.max_bytes - self.limits.max_bytes / 10;
        let oldest_first: Vec<RoomName> = self.by_use.values().cloned().collect();
        for name in oldest_first {
            if self.bytes <= target {
                break;
            }
            if let Some(room) = self.rooms.get_mut(&name) {
                self.bytes -= room.bytes;
                room.history = VecDeque::new();
                room.bytes = 0;
            }
        }
    }

    /// Every room's kept messages together, in bytes.
    pub fn history_bytes(&self) -> usize {
        self.bytes
    }

    /// The room's epoch, head and retained history (a new lineage if the
    /// room is unknown).
    pub fn snapshot(&mut self, name: &RoomName, now: Timestamp) -> RoomSnapshot {
        let max_age_ms = self.limits.max_age_ms;
        let room = self.room_mut(name);
        let freed = room.trim_by_age(now, max_age_ms);
        let snapshot = RoomSnapshot {
            room: name.clone(),
            epoch: room.epoch.clone(),
            head: room.head,
            messages: room.history.iter().cloned().collect(),
            presence: Vec::new(),
        };
        self.bytes -= freed;
        snapshot
    }

    /// Forgets the room: its next append or snapshot starts a new epoch.
    pub fn end_lineage(&mut self, name: &RoomName) {
        if let Some(room) = self.rooms.remove(name) {
            self.by_use.remove(&room.used);
            self.bytes -= room.bytes;
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
                && let Some(gone) = self.rooms.remove(&oldest)
            {
                self.bytes -= gone.bytes;
            }
            let epoch = Epoch(Arc::from(format!("{:016x}", self.rng.next_u64())));
            self.rooms.insert(
                name.clone(),
                SeqRoom {
                    epoch,
                    head: 0,
                    history: VecDeque::new(),
                    bytes: 0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::append_request;

    fn limits(max_messages: usize, max_rooms: usize) -> HistoryLimits {
        HistoryLimits {
            max_messages,
            max_age_ms: 10_000,
            max_rooms,
            max_bytes: 0,
        }
    }

    /// What the rooms' histories hold, counted again from scratch.
    fn recount(s: &MemorySequencer) -> usize {
        s.rooms
            .values()
            .map(|r| r.history.iter().map(cost).sum::<usize>() + slots(&r.history))
            .sum()
    }

    /// Four messages each to "a" and "b", one more to "b", then `c` to "c".
    fn fill(s: &mut MemorySequencer, c: u64) {
        for t in 0..4 {
            for room in ["a", "b"] {
                s.append(append_request(room, t));
            }
        }
        s.append(append_request("b", 5));
        for t in 6..6 + c {
            s.append(append_request("c", t));
        }
    }

    /// Over the byte bound the least recently used room loses its history
    /// first, and keeps its epoch and head; the count (messages and the
    /// slots their rooms allocated) stays exact.
    #[test]
    fn the_byte_bound_trims_the_least_recently_used_rooms_first() {
        // The bound is crossed by the first message to "c".
        let mut probe = MemorySequencer::new(1, limits(100, 10));
        fill(&mut probe, 1);
        let mut s = MemorySequencer::new(
            1,
            HistoryLimits {
                max_bytes: probe.history_bytes() - 1,
                ..limits(100, 10)
            },
        );
        fill(&mut s, 3);
        let (a, b, c) = ["a", "b", "c"]
            .map(|r| RoomName::parse(r, 64).unwrap())
            .into();
        // "a" was used last before "b"'s latest: it goes first, and alone.
        let snap_a = s.snapshot(&a, Timestamp(9));
        assert_eq!((snap_a.head, snap_a.messages.len()), (4, 0));
        assert_eq!(s.snapshot(&b, Timestamp(9)).messages.len(), 5);
        assert_eq!(s.snapshot(&c, Timestamp(9)).messages.len(), 3);
        assert_eq!(s.history_bytes(), recount(&s));
        assert!(s.history_bytes() < probe.history_bytes());
        s.end_lineage(&b);
        assert_eq!(s.history_bytes(), recount(&s));
        s.end_lineage(&c);
        assert_eq!(s.history_bytes(), 0);
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
