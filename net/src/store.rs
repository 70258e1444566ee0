//! Durable room history on one node: the embedded store that sequences
//! messages when roomhub runs with a data directory (the default).
//!
//! It answers the hub's [`Output::Append`] and [`Output::OpenRoom`] like the
//! in-memory sequencer does, but an append is acknowledged only after the
//! transaction that stores it has committed durably. Appends that arrive
//! together are committed together (group commit): one fsync for the batch.
//!
//! Rooms are loaded when first opened, not at start: a room's epoch, head
//! offset and retained history are read then. A new room gets a random epoch,
//! so if the data directory is lost, clients are told `recovered: false`
//! rather than handed offsets from a different history.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use roomhub_core::{
    AppendRequest, Epoch, HistoryLimits, Input, Output, RoomName, RoomSnapshot, SequencedMessage,
    Timestamp,
};
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::hub_task::HubEvent;

/// room → (epoch, head offset).
const ROOMS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("rooms");
/// (room, offset) → the sequenced message as JSON.
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");

pub struct Store {
    db: Database,
    limits: HistoryLimits,
}

/// Appends taken into one transaction at most.
const MAX_BATCH: usize = 512;

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, limits: HistoryLimits) -> Result<Store, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join("roomhub.redb");
        let db =
            Database::create(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.open_table(ROOMS).map_err(|e| e.to_string())?;
        txn.open_table(MESSAGES).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        Ok(Store { db, limits })
    }

    /// Sequences and stores a batch in one durable transaction. All or
    /// nothing: on error none of them is stored.
    pub fn append_batch(&self, batch: Vec<AppendRequest>) -> Result<Vec<SequencedMessage>, String> {
        let txn = self.db.begin_write().map_err(|e| e.to_string())?;
        let mut stored = Vec::with_capacity(batch.len());
        {
            let mut rooms = txn.open_table(ROOMS).map_err(|e| e.to_string())?;
            let mut messages = txn.open_table(MESSAGES).map_err(|e| e.to_string())?;
            for request in batch {
                let name = request.room.as_str().to_string();
                let (epoch, head) = match rooms.get(name.as_str()).map_err(|e| e.to_string())? {
                    Some(v) => {
                        let (epoch, head) = v.value();
                        (epoch.to_string(), head)
                    }
                    None => (new_epoch(), 0),
                };
                let offset = head + 1;
                let msg = SequencedMessage::new(request, Epoch::new(&epoch), offset);
                let json = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
                messages
                    .insert((name.as_str(), offset), json.as_slice())
                    .map_err(|e| e.to_string())?;
                rooms
                    .insert(name.as_str(), (epoch.as_str(), offset))
                    .map_err(|e| e.to_string())?;
                // Retention by count: the history stays contiguous, so the
                // one that falls out is exactly `max` behind.
                if let Some(old) = offset.checked_sub(self.limits.max_messages as u64) {
                    messages
                        .remove((name.as_str(), old))
                        .map_err(|e| e.to_string())?;
                }
                stored.push(msg);
            }
        }
        txn.commit().map_err(|e| e.to_string())?;
        Ok(stored)
    }

    /// A room's epoch, head and retained history (young enough to recover);
    /// a room never seen gets a new lineage.
    pub fn snapshot(&self, room: &RoomName, now: Timestamp) -> Result<RoomSnapshot, String> {
        let name = room.as_str();
        let known = {
            let txn = self.db.begin_read().map_err(|e| e.to_string())?;
            let rooms = txn.open_table(ROOMS).map_err(|e| e.to_string())?;
            let found = rooms.get(name).map_err(|e| e.to_string())?;
            found.map(|v| {
                let (epoch, head) = v.value();
                (epoch.to_string(), head)
            })
        };
        let Some((epoch, head)) = known else {
            let epoch = new_epoch();
            let txn = self.db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut rooms = txn.open_table(ROOMS).map_err(|e| e.to_string())?;
                rooms
                    .insert(name, (epoch.as_str(), 0))
                    .map_err(|e| e.to_string())?;
            }
            txn.commit().map_err(|e| e.to_string())?;
            return Ok(RoomSnapshot {
                room: room.clone(),
                epoch: Epoch::new(&epoch),
                head: 0,
                messages: Vec::new(),
                presence: Vec::new(),
            });
        };
        let txn = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = txn.open_table(MESSAGES).map_err(|e| e.to_string())?;
        let first = head.saturating_sub(self.limits.max_messages as u64) + 1;
        let mut messages = Vec::new();
        for entry in table
            .range((name, first)..=(name, head))
            .map_err(|e| e.to_string())?
        {
            let (_, value) = entry.map_err(|e| e.to_string())?;
            let msg: SequencedMessage =
                serde_json::from_slice(value.value()).map_err(|e| e.to_string())?;
            // Retention by age: what is too old is not offered for recovery.
            if now.ms_since(msg.timestamp) <= self.limits.max_age_ms {
                messages.push(msg);
            }
        }
        // Holes (a clock that stepped back across a restart) are fine: the
        // hub keeps only the contiguous run that ends at the head.
        Ok(RoomSnapshot {
            room: room.clone(),
            epoch: Epoch::new(&epoch),
            head,
            messages,
            presence: Vec::new(),
        })
    }
}

/// A fresh epoch for a room the store (or a broker) has never seen.
pub(crate) fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Serves the hub's sequencing outputs on a thread of its own, in the order
/// they were emitted, answering through the hub's event queue.
pub(crate) fn spawn(
    store: Store,
    clock: Clock,
    events: mpsc::Sender<HubEvent>,
    closed: tokio::sync::oneshot::Sender<()>,
) -> mpsc::UnboundedSender<Output> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Output>();
    std::thread::Builder::new()
        .name("roomhub-store".into())
        .spawn(move || {
            // Dropped when this thread ends, after the database is closed
            // (`store` is dropped first: it was moved in after `closed`).
            let _closed = closed;
            let store = store;
            let answer = |input: Input| events.blocking_send(HubEvent::Input(input)).is_ok();
            while let Some(first) = rx.blocking_recv() {
                let mut pending = vec![first];
                while pending.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(next) => pending.push(next),
                        Err(_) => break,
                    }
                }
                // Consecutive appends share one commit; an open waits for the
                // appends before it, so it sees them.
                let mut batch: Vec<AppendRequest> = Vec::new();
                for out in pending {
                    match out {
                        Output::Append(request) => batch.push(*request),
                        Output::OpenRoom { room, .. } => {
                            if !batch.is_empty()
                                && !commit(&store, std::mem::take(&mut batch), &answer)
                            {
                                return;
                            }
                            let input = match store.snapshot(&room, clock.now()) {
                                Ok(snapshot) => Input::RoomOpened(snapshot),
                                Err(e) => {
                                    tracing::error!(room = %room, "store cannot open room: {e}");
                                    Input::RoomOpenFailed { room }
                                }
                            };
                            if !answer(input) {
                                return;
                            }
                        }
                        // Nothing to stop: this store delivers only to its own node.
                        Output::CloseRoom { .. }
                        | Output::Send { .. }
                        | Output::Ping { .. }
                        | Output::Close { .. }
                        | Output::Presence { .. }
                        | Output::Relay(_) => {}
                    }
                }
                if !batch.is_empty() && !commit(&store, batch, &answer) {
                    return;
                }
            }
        })
        .expect("spawning the store thread");
    tx
}

/// Commits a batch and answers each append; false if the hub is gone.
fn commit(store: &Store, batch: Vec<AppendRequest>, answer: &impl Fn(Input) -> bool) -> bool {
    match store.append_batch(batch.clone()) {
        Ok(stored) => {
            for msg in stored {
                let receipt = msg.receipt();
                if !answer(Input::Sequenced(msg)) {
                    return false;
                }
                if let Some(receipt) = receipt
                    && !answer(Input::Appended(receipt))
                {
                    return false;
                }
            }
        }
        Err(e) => {
            tracing::error!("store cannot append: {e}");
            for request in batch {
                if !answer(Input::AppendFailed(request)) {
                    return false;
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomhub_core::testkit::append_request;

    fn limits(max_messages: usize) -> HistoryLimits {
        HistoryLimits {
            max_messages,
            max_age_ms: 60_000,
            max_rooms: 1000,
        }
    }

    #[test]
    fn appends_survive_reopening_with_count_and_age_retention() {
        let dir = std::env::temp_dir().join(format!("roomhub-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let room = RoomName::parse("g", 64).unwrap();
        let epoch = {
            let store = Store::open(&dir, limits(3)).unwrap();
            let stored = store
                .append_batch((1..=5).map(|t| append_request("g", t * 1000)).collect())
                .unwrap();
            assert_eq!(
                stored.iter().map(|m| m.offset).collect::<Vec<_>>(),
                [1, 2, 3, 4, 5]
            );
            stored[0].epoch.clone()
        };
        let store = Store::open(&dir, limits(3)).unwrap();
        let snap = store.snapshot(&room, Timestamp(5_000)).unwrap();
        assert_eq!((snap.epoch.clone(), snap.head), (epoch.clone(), 5));
        assert_eq!(
            snap.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        let later = store.snapshot(&room, Timestamp(63_500)).unwrap();
        assert_eq!(
            later.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            [4, 5]
        );
        let next = store.append_batch(vec![append_request("g", 6000)]).unwrap();
        assert_eq!((next[0].offset, next[0].epoch.clone()), (6, epoch));
        let other = store
            .snapshot(&RoomName::parse("new", 64).unwrap(), Timestamp(0))
            .unwrap();
        assert_eq!((other.head, other.messages.len()), (0, 0));
        std::fs::remove_dir_all(&dir).ok();
    }
}
