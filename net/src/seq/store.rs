//! Durable room history on one node: the embedded store that sequences
//! messages when roomhub runs with a data directory (the default).
//!
//! It answers the hub's [`Output::Append`] and [`Output::OpenRoom`] like the
//! in-memory sequencer does, but an append is acknowledged only once it is
//! stored. Appends that arrive together are committed together (group
//! commit). What "stored" means is [`Fsync`]:
//!
//! - `background` (the default): the batch is in the journal
//!   ([`crate::seq::journal`]), written but not synced: it survives the
//!   process being killed, and reaches the disk within a second. The
//!   database commits without syncing and is made durable every second
//!   (a checkpoint), after which the journal starts over.
//! - `always`: the batch's commit is synced before the ack (one fsync per
//!   batch): it survives a power loss too.
//!
//! Rooms are loaded when first opened, not at start: a room's epoch, head
//! offset and retained history are read then. A new room gets a random epoch,
//! so if the data directory is lost, clients are told `recovered: false`
//! rather than handed offsets from a different history.

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use roomhub_core::{
    AppendRequest, Epoch, HistoryLimits, RoomName, RoomSnapshot, SequencedMessage, Timestamp,
};

use crate::seq::epoch::new_epoch;
use crate::seq::journal::{self, Entry, Journal};

/// room → (epoch, head offset).
const ROOMS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("rooms");
/// (room, offset) → the sequenced message as JSON.
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");

/// When an append counts as stored (`--fsync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Fsync {
    /// Written to the journal: survives a crash of the process; synced to
    /// disk in the background at most every second.
    #[default]
    Background,
    /// Synced to disk before the ack: survives a power loss.
    Always,
}

/// How often, at most, a `background` store makes the database durable and
/// empties the journal.
const CHECKPOINT_INTERVAL: Duration = journal::SYNC_INTERVAL;
/// A journal this large is checkpointed at once, whatever the time.
const CHECKPOINT_BYTES: u64 = 64 << 20;

/// Where a stored message goes.
struct Position<'a> {
    room: &'a str,
    epoch: &'a str,
    offset: u64,
}

/// A room's epoch and head offset, if the database knows the room.
fn head_of(
    rooms: &impl ReadableTable<&'static str, (&'static str, u64)>,
    room: &str,
) -> Result<Option<(String, u64)>, StoreError> {
    Ok(rooms.get(room).map_err(table_failed)?.map(|v| {
        let (epoch, head) = v.value();
        (epoch.to_string(), head)
    }))
}

/// The embedded database of room history.
pub struct Store {
    db: Database,
    limits: HistoryLimits,
    /// `Some` with `--fsync background`.
    journal: Option<Journal>,
    last_checkpoint: Instant,
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
    /// The journal could not be written or emptied.
    Journal(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Open(e) => write!(f, "cannot open the store: {e}"),
            StoreError::Transaction(e) => write!(f, "store transaction failed: {e}"),
            StoreError::Table(e) => write!(f, "store table access failed: {e}"),
            StoreError::Codec(e) => write!(f, "stored message unreadable: {e}"),
            StoreError::Journal(e) => write!(f, "store journal failed: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

fn journal_failed(e: std::io::Error) -> StoreError {
    StoreError::Journal(e.to_string())
}

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
    /// Opens (or creates) the store in `dir`, applying what a journal left
    /// by an earlier run holds past its last checkpoint.
    pub fn open(dir: &Path, limits: HistoryLimits, fsync: Fsync) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Open(format!("{}: {e}", dir.display())))?;
        let path = dir.join("roomhub.redb");
        let db = Database::create(&path)
            .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(txn_failed)?;
        txn.open_table(ROOMS).map_err(table_failed)?;
        txn.open_table(MESSAGES).map_err(table_failed)?;
        txn.commit().map_err(txn_failed)?;
        let path = dir.join("roomhub.journal");
        let (mut journal, entries) = Journal::open(&path)
            .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        let mut store = Store {
            db,
            limits,
            journal: None,
            last_checkpoint: Instant::now(),
        };
        if !entries.is_empty() {
            let replayed = store.replay(entries)?;
            tracing::info!(messages = replayed, "applied the journal of the last run");
        }
        // Durable now: the journal can start over.
        journal.reset().map_err(journal_failed)?;
        if fsync == Fsync::Background {
            journal
                .sync_in_background(journal::SYNC_INTERVAL)
                .map_err(journal_failed)?;
            store.journal = Some(journal);
        }
        Ok(store)
    }

    /// Applies journal entries the database may have lost (its commits
    /// since the last checkpoint), in one synced commit. Returns how many
    /// messages were missing.
    fn replay(&self, entries: Vec<Entry>) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(txn_failed)?;
        let mut replayed = 0;
        {
            let mut rooms = txn.open_table(ROOMS).map_err(table_failed)?;
            let mut messages = txn.open_table(MESSAGES).map_err(table_failed)?;
            for entry in entries {
                match entry {
                    Entry::Room { room, epoch } => {
                        if rooms.get(room.as_str()).map_err(table_failed)?.is_none() {
                            rooms
                                .insert(room.as_str(), (epoch.as_str(), 0))
                                .map_err(table_failed)?;
                        }
                    }
                    Entry::Messages(batch) => {
                        for json in batch {
                            let msg: SequencedMessage =
                                serde_json::from_slice(&json).map_err(codec_failed)?;
                            let name = msg.room.as_str();
                            // Already in the database, or of a lineage it
                            // no longer has.
                            if let Some((epoch, head)) = head_of(&rooms, name)?
                                && (epoch != msg.epoch.as_str() || msg.offset <= head)
                            {
                                continue;
                            }
                            let at = Position {
                                room: name,
                                epoch: msg.epoch.as_str(),
                                offset: msg.offset,
                            };
                            self.put(&mut rooms, &mut messages, at, &json)?;
                            replayed += 1;
                        }
                    }
                }
            }
        }
        txn.commit().map_err(txn_failed)?;
        Ok(replayed)
    }

    /// A write transaction: synced on commit with `--fsync always`, not
    /// with `background` (the journal holds what it stores until the next
    /// checkpoint).
    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(txn_failed)?;
        if self.journal.is_some() {
            txn.set_durability(Durability::None).map_err(txn_failed)?;
        }
        Ok(txn)
    }

    /// With a journal: makes every commit so far durable and empties the
    /// journal, if the last checkpoint is old enough or the journal large.
    fn checkpoint_if_due(&mut self) -> Result<(), StoreError> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        if self.last_checkpoint.elapsed() < CHECKPOINT_INTERVAL && journal.len() < CHECKPOINT_BYTES
        {
            return Ok(());
        }
        self.checkpoint()
    }

    fn checkpoint(&mut self) -> Result<(), StoreError> {
        let Some(journal) = &mut self.journal else {
            return Ok(());
        };
        // A synced commit makes the unsynced ones before it durable too.
        let txn = self.db.begin_write().map_err(txn_failed)?;
        txn.commit().map_err(txn_failed)?;
        journal.reset().map_err(journal_failed)?;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Stores a message at its position: the room's head moves to it, and
    /// the one that falls out of the retained count goes (the history stays
    /// contiguous, so that one is exactly `max` behind).
    fn put(
        &self,
        rooms: &mut redb::Table<&'static str, (&'static str, u64)>,
        messages: &mut redb::Table<(&'static str, u64), &'static [u8]>,
        at: Position<'_>,
        json: &[u8],
    ) -> Result<(), StoreError> {
        messages
            .insert((at.room, at.offset), json)
            .map_err(table_failed)?;
        rooms
            .insert(at.room, (at.epoch, at.offset))
            .map_err(table_failed)?;
        if let Some(old) = at.offset.checked_sub(self.limits.max_messages as u64) {
            messages.remove((at.room, old)).map_err(table_failed)?;
        }
        Ok(())
    }

    /// Sequences and stores a batch in one transaction, stored as
    /// [`Fsync`] says before this returns. All or nothing: on error none of
    /// them is stored.
    pub fn append_batch(
        &mut self,
        batch: Vec<AppendRequest>,
    ) -> Result<Vec<SequencedMessage>, StoreError> {
        let txn = self.begin_write()?;
        let mut stored = Vec::with_capacity(batch.len());
        let mut journaled = Vec::new();
        {
            let mut rooms = txn.open_table(ROOMS).map_err(table_failed)?;
            let mut messages = txn.open_table(MESSAGES).map_err(table_failed)?;
            for request in batch {
                let name = request.room.as_str().to_string();
                let (epoch, head) = head_of(&rooms, &name)?.unwrap_or_else(|| (new_epoch(), 0));
                let offset = head + 1;
                let msg = SequencedMessage::new(request, Epoch::new(&epoch), offset);
                let json = serde_json::to_vec(&msg).map_err(codec_failed)?;
                let at = Position {
                    room: &name,
                    epoch: &epoch,
                    offset,
                };
                self.put(&mut rooms, &mut messages, at, &json)?;
                stored.push(msg);
                if self.journal.is_some() {
                    journaled.push(json);
                }
            }
        }
        txn.commit().map_err(txn_failed)?;
        if let Some(journal) = &mut self.journal {
            journal
                .append_messages(journaled.iter().map(Vec::as_slice))
                .map_err(journal_failed)?;
        }
        self.checkpoint_if_due()?;
        Ok(stored)
    }

    /// A room's epoch, head and retained history (young enough to recover);
    /// a room never seen gets a new lineage.
    pub fn snapshot(
        &mut self,
        room: &RoomName,
        now: Timestamp,
    ) -> Result<RoomSnapshot, StoreError> {
        let name = room.as_str();
        let known = {
            let txn = self.db.begin_read().map_err(txn_failed)?;
            head_of(&txn.open_table(ROOMS).map_err(table_failed)?, name)?
        };
        let Some((epoch, head)) = known else {
            let epoch = new_epoch();
            let txn = self.begin_write()?;
            {
                let mut rooms = txn.open_table(ROOMS).map_err(table_failed)?;
                rooms
                    .insert(name, (epoch.as_str(), 0))
                    .map_err(table_failed)?;
            }
            txn.commit().map_err(txn_failed)?;
            if let Some(journal) = &mut self.journal {
                journal.append_room(name, &epoch).map_err(journal_failed)?;
            }
            self.checkpoint_if_due()?;
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

impl Drop for Store {
    /// A clean close leaves the database durable and the journal empty.
    fn drop(&mut self) {
        if let Err(e) = self.checkpoint() {
            tracing::error!("store cannot checkpoint on close: {e}");
        }
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
            let mut store = Store::open(&dir, limits(3), Fsync::Always).unwrap();
            let stored = store
                .append_batch((1..=5).map(|t| append_request("g", t * 1000)).collect())
                .unwrap();
            assert_eq!(
                stored.iter().map(|m| m.offset).collect::<Vec<_>>(),
                [1, 2, 3, 4, 5]
            );
            stored[0].epoch.clone()
        };
        let mut store = Store::open(&dir, limits(3), Fsync::Background).unwrap();
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

    /// A copy of the data directory taken while the store runs is what a
    /// `kill -9` leaves: the database as of its last checkpoint, and the
    /// journal written since.
    fn crash_image(dir: &Path, to: &Path) {
        let _ = std::fs::remove_dir_all(to);
        std::fs::create_dir_all(to).unwrap();
        for file in ["roomhub.redb", "roomhub.journal"] {
            std::fs::copy(dir.join(file), to.join(file)).unwrap();
        }
    }

    #[test]
    fn background_acks_survive_a_crash_through_the_journal() {
        let base = std::env::temp_dir().join(format!("roomhub-store-bg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (dir, crashed, no_journal) =
            (base.join("live"), base.join("crashed"), base.join("bare"));
        let room = RoomName::parse("g", 64).unwrap();
        let mut store = Store::open(&dir, limits(100), Fsync::Background).unwrap();
        let fresh = store
            .snapshot(&RoomName::parse("quiet", 64).unwrap(), Timestamp(0))
            .unwrap();
        let stored = store
            .append_batch((1..=5).map(|t| append_request("g", t * 1000)).collect())
            .unwrap();
        // Within the second, before any checkpoint: the "crash".
        crash_image(&dir, &crashed);
        crash_image(&dir, &no_journal);
        std::fs::remove_file(no_journal.join("roomhub.journal")).unwrap();
        drop(store);

        let mut recovered = Store::open(&crashed, limits(100), Fsync::Background).unwrap();
        let snap = recovered.snapshot(&room, Timestamp(5_000)).unwrap();
        assert_eq!(
            (snap.epoch.clone(), snap.head),
            (stored[0].epoch.clone(), 5)
        );
        assert_eq!(snap.messages, stored);
        // A room opened without messages keeps its lineage too.
        let quiet = recovered
            .snapshot(&RoomName::parse("quiet", 64).unwrap(), Timestamp(0))
            .unwrap();
        assert_eq!(quiet.epoch, fresh.epoch);
        // The journal is what kept them: the database alone had none.
        let mut bare = Store::open(&no_journal, limits(100), Fsync::Background).unwrap();
        assert_eq!(bare.snapshot(&room, Timestamp(5_000)).unwrap().head, 0);
        // Applied once, the journal starts over; a clean close checkpoints.
        let next = recovered
            .append_batch(vec![append_request("g", 6000)])
            .unwrap();
        assert_eq!(next[0].offset, 6);
        drop(recovered);
        assert_eq!(
            std::fs::metadata(crashed.join("roomhub.journal"))
                .unwrap()
                .len(),
            0
        );
        let mut reopened = Store::open(&crashed, limits(100), Fsync::Always).unwrap();
        assert_eq!(reopened.snapshot(&room, Timestamp(6_000)).unwrap().head, 6);
        std::fs::remove_dir_all(&base).ok();
    }
}
