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
    AppendRequest, Epoch, HistoryLimits, RoomName, RoomSnapshot, SequencedMessage, Timestamp,
};

use crate::seq::epoch::new_epoch;

/// room → (epoch, head offset).
const ROOMS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("rooms");
/// (room, offset) → the sequenced message as JSON.
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");

/// The embedded database of room history.
pub struct Store {
    db: Database,
    limits: HistoryLimits,
}

/// What went wrong in the store: which step failed, and the database's
/// own message.
#[derive(Debug)]
pub enum StoreError {
    /// The data directory or database file could not be created or opened.
    Open(String),
    /// A transaction could not begin or commit (disk full, I/O error).
    Transaction(String),
    /// A table could not be opened, read or written.
    Table(String),
    /// A stored message could not be encoded or decoded.
    Codec(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Open(e) => write!(f, "cannot open the store: {e}"),
            StoreError::Transaction(e) => write!(f, "store transaction failed: {e}"),
            StoreError::Table(e) => write!(f, "store table access failed: {e}"),
            StoreError::Codec(e) => write!(f, "stored message unreadable: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

fn txn_failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Transaction(e.to_string())
}

fn table_failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Table(e.to_string())
}

fn codec_failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Codec(e.to_string())
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, limits: HistoryLimits) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Open(format!("{}: {e}", dir.display())))?;
        let path = dir.join("roomhub.redb");
        let db = Database::create(&path)
            .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(txn_failed)?;
        txn.open_table(ROOMS).map_err(table_failed)?;
        txn.open_table(MESSAGES).map_err(table_failed)?;
        txn.commit().map_err(txn_failed)?;
        Ok(Store { db, limits })
    }

    /// Sequences and stores a batch in one durable transaction. All or
    /// nothing: on error none of them is stored.
    pub fn append_batch(
        &self,
        batch: Vec<AppendRequest>,
    ) -> Result<Vec<SequencedMessage>, StoreError> {
        let txn = self.db.begin_write().map_err(txn_failed)?;
        let mut stored = Vec::with_capacity(batch.len());
        {
            let mut rooms = txn.open_table(ROOMS).map_err(table_failed)?;
            let mut messages = txn.open_table(MESSAGES).map_err(table_failed)?;
            for request in batch {
                let name = request.room.as_str().to_string();
                let (epoch, head) = match rooms.get(name.as_str()).map_err(table_failed)? {
                    Some(v) => {
                        let (epoch, head) = v.value();
                        (epoch.to_string(), head)
                    }
                    None => (new_epoch(), 0),
                };
                let offset = head + 1;
                let msg = SequencedMessage::new(request, Epoch::new(&epoch), offset);
                let json = serde_json::to_vec(&msg).map_err(codec_failed)?;
                messages
                    .insert((name.as_str(), offset), json.as_slice())
                    .map_err(table_failed)?;
                rooms
                    .insert(name.as_str(), (epoch.as_str(), offset))
                    .map_err(table_failed)?;
                // Retention by count: the history stays contiguous, so the
                // one that falls out is exactly `max` behind.
                if let Some(old) = offset.checked_sub(self.limits.max_messages as u64) {
                    messages
                        .remove((name.as_str(), old))
                        .map_err(table_failed)?;
                }
                stored.push(msg);
            }
        }
        txn.commit().map_err(txn_failed)?;
        Ok(stored)
    }

    /// A room's epoch, head and retained history (young enough to recover);
    /// a room never seen gets a new lineage.
    pub fn snapshot(&self, room: &RoomName, now: Timestamp) -> Result<RoomSnapshot, StoreError> {
        let name = room.as_str();
        let known = {
            let txn = self.db.begin_read().map_err(txn_failed)?;
            let rooms = txn.open_table(ROOMS).map_err(table_failed)?;
            let found = rooms.get(name).map_err(table_failed)?;
            found.map(|v| {
                let (epoch, head) = v.value();
                (epoch.to_string(), head)
            })
        };
        let Some((epoch, head)) = known else {
            let epoch = new_epoch();
            let txn = self.db.begin_write().map_err(txn_failed)?;
            {
                let mut rooms = txn.open_table(ROOMS).map_err(table_failed)?;
                rooms
                    .insert(name, (epoch.as_str(), 0))
                    .map_err(table_failed)?;
            }
            txn.commit().map_err(txn_failed)?;
            return Ok(RoomSnapshot {
                room: room.clone(),
                epoch: Epoch::new(&epoch),
                head: 0,
                messages: Vec::new(),
                presence: Vec::new(),
            });
        };
        let txn = self.db.begin_read().map_err(txn_failed)?;
        let table = txn.open_table(MESSAGES).map_err(table_failed)?;
        let first = head.saturating_sub(self.limits.max_messages as u64) + 1;
        let mut messages = Vec::new();
        for entry in table
            .range((name, first)..=(name, head))
            .map_err(table_failed)?
        {
            let (_, value) = entry.map_err(table_failed)?;
            let msg: SequencedMessage =
                serde_json::from_slice(value.value()).map_err(codec_failed)?;
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
