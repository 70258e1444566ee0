//! Durable room history on one node: the embedded database both durable
//! modes keep their history in, and the store of `--fsync always`.
//!
//! What "stored" means before an append is acknowledged is [`Fsync`]:
//!
//! - `background` (the default): the batch is in the journal, written but
//!   not synced ([`crate::seq::journaled`]): it survives the process being
//!   killed, and reaches the disk within a second.
//! - `always`: the batch's commit is synced before the ack (one fsync per
//!   batch, on the store's own thread): it survives a power loss too.
//!
//! Rooms are loaded when first opened, not at start: a room's epoch, head
//! offset and retained history are read then. A new room gets a random epoch,
//! so if the data directory is lost, clients are told `recovered: false`
//! rather than handed offsets from a different history.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use roomhub_core::{
    AppendRequest, Epoch, HistoryLimits, Input, RoomName, RoomSnapshot, SequencedMessage, Timestamp,
};

use crate::seq::epoch::new_epoch;
use crate::seq::faults::{DiskFaults, FaultyFile, StoreHealth};
use crate::seq::journal::{self, Entry};
use crate::seq::usage::{Usage, entry_bytes};

/// room → (epoch, head offset).
pub(crate) const ROOMS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("rooms");
/// (room, offset) → the sequenced message as JSON.
pub(crate) const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");

/// The journal's file in the data directory.
pub(crate) const JOURNAL: &str = "roomhub.journal";
/// Where the journal is set aside while a checkpoint writes it to the
/// database.
pub(crate) const SET_ASIDE: &str = "roomhub.journal.checkpoint";

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

/// Where a stored message goes.
pub(crate) struct Position<'a> {
    pub(crate) room: &'a str,
    pub(crate) epoch: &'a str,
    pub(crate) offset: u64,
}

/// A message as the journal and the database keep it, in a buffer of
/// about its size: `serde_json::to_vec` grows by doubling, and a 2 KB
/// message kept for a checkpoint would hold 4 KB.
pub(crate) fn stored_json(msg: &SequencedMessage) -> Result<Vec<u8>, StoreError> {
    let mut json = Vec::with_capacity(msg.content.len() + 320);
    serde_json::to_writer(&mut json, msg).map_err(codec_failed)?;
    if json.capacity() - json.len() > 256 {
        json.shrink_to_fit();
    }
    Ok(json)
}

/// A room's epoch and head offset, if the database knows the room.
pub(crate) fn head_of(
    rooms: &impl ReadableTable<&'static str, (&'static str, u64)>,
    room: &str,
) -> Result<Option<(String, u64)>, StoreError> {
    Ok(rooms.get(room).map_err(table_failed)?.map(|v| {
        let (epoch, head) = v.value();
        (epoch.to_string(), head)
    }))
}

pub use crate::seq::error::StoreError;
pub(crate) use crate::seq::error::{codec_failed, journal_failed, table_failed, txn_failed};

/// The database file in a data directory.
pub(crate) const DATABASE: &str = "roomhub.redb";

/// Memory the database may use to cache its pages (redb's default is
/// 1 GiB, which a history flood fills: the server's memory would grow by
/// that much on top of its in-memory bounds). Reads of history happen when
/// a room opens; the operating system's page cache serves them too.
const CACHE_BYTES: usize = 32 << 20;

/// Opens (or creates) the database file, through the test's failing disk
/// when there is one.
fn create_database(path: &Path, faults: Option<&DiskFaults>) -> Result<Database, StoreError> {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(CACHE_BYTES);
    let opened = match faults {
        None => builder.create(path),
        Some(faults) => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
            let backend = FaultyFile::new(file, faults.clone())
                .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
            builder.create_with_backend(backend)
        }
    };
    opened.map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))
}

/// The database, opened again after a failed read or write: once a write
/// fails (a full disk), redb refuses every later transaction
/// (`PreviousIo`) until it is reopened, which repairs it to its last
/// commit. Each user takes a handle for one operation.
pub(crate) struct Db {
    path: PathBuf,
    faults: Option<DiskFaults>,
    slot: Mutex<Option<Arc<Database>>>,
    /// A read on the hub's thread failed: the checkpoint thread reopens
    /// the database (the hub never waits for that).
    reopen_asked: std::sync::atomic::AtomicBool,
}

/// How long a reopen waits for the handles in use to be given back.
const REOPEN_WAIT: Duration = Duration::from_secs(2);

impl Db {
    fn new(path: PathBuf, db: Database, faults: Option<DiskFaults>) -> Arc<Db> {
        Arc::new(Db {
            path,
            faults,
            slot: Mutex::new(Some(Arc::new(db))),
            reopen_asked: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Runs a read for the hub's thread: never waits for a reopen; a
    /// failure asks the checkpoint thread for one
    /// ([`Db::reopen_if_asked`]).
    pub(crate) fn read<T>(
        &self,
        op: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self
            .lock()
            .clone()
            .ok_or_else(|| StoreError::Open("the database is being reopened; retry".into()))?;
        let result = op(&db);
        if result.as_ref().is_err_and(StoreError::is_io) {
            self.reopen_asked
                .store(true, std::sync::atomic::Ordering::Release);
        }
        result
    }

    /// Reopens the database if a read asked for it (or it is closed).
    pub(crate) fn reopen_if_asked(&self) {
        let asked = self
            .reopen_asked
            .swap(false, std::sync::atomic::Ordering::AcqRel);
        if (asked || self.lock().is_none())
            && let Err(e) = self.reopen()
        {
            tracing::warn!("cannot reopen the database: {e}");
            self.reopen_asked
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Database>>> {
        // A panic while holding the lock leaves a plain value; go on.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A handle for one operation; a database closed by a reopen that
    /// failed is opened again first.
    pub(crate) fn get(&self) -> Result<Arc<Database>, StoreError> {
        let mut slot = self.lock();
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db = Arc::new(create_database(&self.path, self.faults.as_ref())?);
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Runs `op` on the database; an I/O failure reopens it, so that the
    /// next operation finds it usable again (if the disk is).
    pub(crate) fn with<T>(
        &self,
        op: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.get()?;
        let result = op(&db);
        drop(db);
        if let Err(e) = &result
            && e.is_io()
            && let Err(again) = self.reopen()
        {
            tracing::warn!("cannot reopen the database after \"{e}\": {again}");
        }
        result
    }

    /// Closes the database (once every handle is given back) and opens it
    /// again.
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.lock();
        if let Some(mut db) = slot.take() {
            let deadline = Instant::now() + REOPEN_WAIT;
            loop {
                match Arc::try_unwrap(db) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(shared) if Instant::now() < deadline => {
                        db = shared;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(shared) => {
                        *slot = Some(shared);
                        return Err(StoreError::Open("the database is still in use".into()));
                    }
                }
            }
        }
        // Left closed if this fails: the next `get` tries again.
        *slot = Some(Arc::new(create_database(&self.path, self.faults.as_ref())?));
        Ok(())
    }
}

/// Opens (or creates) the database in `dir` and applies what an earlier
/// run journaled past its last checkpoint (the segment set aside, then the
/// journal), in one synced commit; both are empty afterwards.
pub(crate) fn open_database(
    dir: &Path,
    limits: HistoryLimits,
    faults: Option<&DiskFaults>,
    health: &StoreHealth,
) -> Result<Arc<Db>, StoreError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::Open(format!("{}: {e}", dir.display())))?;
    let path = dir.join(DATABASE);
    let db = create_database(&path, faults)?;
    let txn = db.begin_write().map_err(txn_failed)?;
    txn.open_table(ROOMS).map_err(table_failed)?;
    let stored = {
        let messages = txn.open_table(MESSAGES).map_err(table_failed)?;
        let mut usage = Usage::open(&txn)?;
        usage.count_if_new(&messages)?;
        usage.finish()?
    };
    txn.commit().map_err(txn_failed)?;
    health.set_stored_bytes(stored);
    let (aside, current) = (dir.join(SET_ASIDE), dir.join(JOURNAL));
    let unreadable = |path: &Path, e| StoreError::Open(format!("{}: {e}", path.display()));
    let mut entries = journal::read_segment(&aside).map_err(|e| unreadable(&aside, e))?;
    entries.extend(journal::read_segment(&current).map_err(|e| unreadable(&current, e))?);
    if !entries.is_empty() {
        let (replayed, stored) = replay(&db, limits, entries)?;
        health.set_stored_bytes(stored);
        tracing::info!(messages = replayed, "applied the journal of the last run");
    }
    // Durable now: the journal can start over.
    journal::remove_segment(&aside).map_err(|e| unreadable(&aside, e))?;
    if current.exists() {
        std::fs::File::create(&current).map_err(|e| unreadable(&current, e))?;
    }
    Ok(Db::new(path, db, faults.cloned()))
}

/// Applies journal entries the database may have lost, in one synced
/// commit. Returns how many messages were missing, and the bytes stored.
fn replay(
    db: &Database,
    limits: HistoryLimits,
    entries: Vec<Entry>,
) -> Result<(usize, u64), StoreError> {
    let txn = db.begin_write().map_err(txn_failed)?;
    let mut replayed = 0;
    let stored = {
        let mut rooms = txn.open_table(ROOMS).map_err(table_failed)?;
        let mut messages = txn.open_table(MESSAGES).map_err(table_failed)?;
        let mut usage = Usage::open(&txn)?;
        for entry in entries {
            match entry {
                Entry::Room {
                    room,
                    epoch,
                    reset: true,
                } => restart_room(&mut rooms, &mut messages, &mut usage, &room, &epoch)?,
                Entry::Room { room, epoch, .. } => {
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
                        put(&mut rooms, &mut messages, &mut usage, limits, at, &json)?;
                        replayed += 1;
                    }
                }
            }
        }
        usage.enforce(&mut messages, limits.max_bytes as u64)?;
        usage.finish()?
    };
    txn.commit().map_err(txn_failed)?;
    Ok((replayed, stored))
}

/// Ends a room's lineage in the database (`history_remove`): its messages
/// go, and it starts over at offset 0 in `epoch`.
pub(crate) fn restart_room(
    rooms: &mut redb::Table<&'static str, (&'static str, u64)>,
    messages: &mut redb::Table<(&'static str, u64), &'static [u8]>,
    usage: &mut Usage<'_>,
    room: &str,
    epoch: &str,
) -> Result<(), StoreError> {
    messages
        .retain_in((room, 0u64)..=(room, u64::MAX), |_, _| false)
        .map_err(table_failed)?;
    usage.cleared(room)?;
    rooms.insert(room, (epoch, 0)).map_err(table_failed)?;
    Ok(())
}

/// Stores a message at its position: the room's head moves to it, and the
/// one that falls out of the retained count goes (the history stays
/// contiguous, so that one is exactly `max` behind).
fn put(
    rooms: &mut redb::Table<&'static str, (&'static str, u64)>,
    messages: &mut redb::Table<(&'static str, u64), &'static [u8]>,
    usage: &mut Usage<'_>,
    limits: HistoryLimits,
    at: Position<'_>,
    json: &[u8],
) -> Result<(), StoreError> {
    let mut removed = messages
        .insert((at.room, at.offset), json)
        .map_err(table_failed)?
        .map_or(0, |old| entry_bytes(at.room, old.value().len()));
    rooms
        .insert(at.room, (at.epoch, at.offset))
        .map_err(table_failed)?;
    if let Some(old) = at.offset.checked_sub(limits.max_messages as u64)
        && let Some(gone) = messages.remove((at.room, old)).map_err(table_failed)?
    {
        removed += entry_bytes(at.room, gone.value().len());
    }
    usage.wrote(at.room, entry_bytes(at.room, json.len()), removed)
}

/// The database's messages of `room` from `first` to `head`, oldest first.
pub(crate) fn stored_history(
    db: &Database,
    room: &str,
    first: u64,
    head: u64,
) -> Result<Vec<SequencedMessage>, StoreError> {
    let txn = db.begin_read().map_err(txn_failed)?;
    let table = txn.open_table(MESSAGES).map_err(table_failed)?;
    let mut messages = Vec::new();
    for entry in table
        .range((room, first)..=(room, head))
        .map_err(table_failed)?
    {
        let (_, value) = entry.map_err(table_failed)?;
        messages.push(serde_json::from_slice(value.value()).map_err(codec_failed)?);
    }
    Ok(messages)
}

/// A room's epoch and head in the database, if it knows the room.
pub(crate) fn stored_head(db: &Database, room: &str) -> Result<Option<(String, u64)>, StoreError> {
    let txn = db.begin_read().map_err(txn_failed)?;
    head_of(&txn.open_table(ROOMS).map_err(table_failed)?, room)
}

/// The first offset a room with this head retains by count.
pub(crate) fn first_retained(head: u64, limits: HistoryLimits) -> u64 {
    head.saturating_sub(limits.max_messages as u64) + 1
}

/// A snapshot of a room's retained history: what is too old by age is not
/// offered for recovery. Holes (a clock that stepped back across a restart)
/// are fine: the hub keeps only the contiguous run that ends at the head.
pub(crate) fn snapshot_of(
    room: &RoomName,
    epoch: &str,
    head: u64,
    mut messages: Vec<SequencedMessage>,
    now: Timestamp,
    limits: HistoryLimits,
) -> RoomSnapshot {
    messages.retain(|msg| now.ms_since(msg.timestamp) <= limits.max_age_ms);
    RoomSnapshot {
        room: room.clone(),
        epoch: Epoch::new(epoch),
        head,
        messages,
        presence: Vec::new(),
    }
}

/// What both durable stores answer for the hub: its appends and its room
/// opens.
pub trait History {
    /// Whether its writes succeed, for the health check.
    fn health(&self) -> &StoreHealth;

    /// Sequences and stores a batch, stored as [`Fsync`] says before this
    /// returns. All or nothing: on error none of them is stored.
    fn append_batch(
        &mut self,
        batch: Vec<AppendRequest>,
    ) -> Result<Vec<SequencedMessage>, StoreError>;

    /// A room's epoch, head and retained history (young enough to
    /// recover); a room never seen gets a new lineage.
    fn snapshot(&mut self, room: &RoomName, now: Timestamp) -> Result<RoomSnapshot, StoreError>;

    /// Ends the room's lineage: its messages are gone, and its next
    /// message (or open) is offset 1 of a new epoch.
    fn end_lineage(&mut self, room: &RoomName) -> Result<(), StoreError>;

    /// Ends a lineage; the hub's answer.
    fn answer_end_lineage(&mut self, room: &RoomName, ticket: u64) -> Input {
        let ended = match self.end_lineage(room) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(room = %room, "store cannot remove the history: {e}");
                false
            }
        };
        Input::LineageEnded { ticket, ended }
    }

    /// Stores a batch; the hub's answers: each message and its sender's
    /// receipt, or a failure for each.
    fn answer_appends(&mut self, batch: Vec<AppendRequest>) -> Vec<Input> {
        let mut answers = Vec::with_capacity(batch.len() * 2);
        let result = self.append_batch(batch.clone());
        match &result {
            Ok(_) => self.health().wrote(),
            Err(e) => self.health().failed(e),
        }
        match result {
            Ok(stored) => {
                for msg in stored {
                    let receipt = msg.receipt();
                    answers.push(Input::Sequenced(msg));
                    answers.extend(receipt.map(Input::Appended));
                }
            }
            Err(e) => {
                tracing::error!("store cannot append: {e}");
                answers.extend(batch.into_iter().map(Input::AppendFailed));
            }
        }
        answers
    }

    /// Opens a room; the hub's answer.
    fn answer_open(&mut self, room: RoomName, now: Timestamp) -> Input {
        match self.snapshot(&room, now) {
            Ok(snapshot) => Input::RoomOpened(snapshot),
            Err(e) => {
                tracing::error!(room = %room, "store cannot open room: {e}");
                Input::RoomOpenFailed { room }
            }
        }
    }
}

/// The store of `--fsync always`: every batch is one commit, synced before
/// it is acknowledged. It runs on its own thread
/// ([`crate::seq::store_task`]), so the hub goes on while the disk syncs.
pub struct Store {
    db: Arc<Db>,
    limits: HistoryLimits,
    health: StoreHealth,
}

impl Store {
    /// Opens (or creates) the store in `dir`, applying what a journal left
    /// by an earlier run in the default mode holds.
    pub fn open(dir: &Path, limits: HistoryLimits) -> Result<Store, StoreError> {
        Store::open_with(dir, limits, None, StoreHealth::default())
    }

    /// The same, reporting to `health`, on a disk that fails writes on
    /// demand (tests).
    pub fn open_with(
        dir: &Path,
        limits: HistoryLimits,
        faults: Option<&DiskFaults>,
        health: StoreHealth,
    ) -> Result<Store, StoreError> {
        Ok(Store {
            db: open_database(dir, limits, faults, &health)?,
            limits,
            health,
        })
    }
}

impl Store {
    /// Keeps `max_messages` per room for `max_age_ms` from now on (the
    /// disk budget stays); a room over the count is trimmed at its next
    /// append.
    pub fn set_history(&mut self, max_messages: usize, max_age_ms: u64) {
        self.limits.max_messages = max_messages;
        self.limits.max_age_ms = max_age_ms;
    }
}

impl History for Store {
    fn health(&self) -> &StoreHealth {
        &self.health
    }

    /// One synced commit.
    fn append_batch(
        &mut self,
        batch: Vec<AppendRequest>,
    ) -> Result<Vec<SequencedMessage>, StoreError> {
        let limits = self.limits;
        self.db.with(|db| {
            let txn = db.begin_write().map_err(txn_failed)?;
            let mut stored = Vec::with_capacity(batch.len());
            let bytes = {
                let mut rooms = txn.open_table(ROOMS).map_err(table_failed)?;
                let mut messages = txn.open_table(MESSAGES).map_err(table_failed)?;
                let mut usage = Usage::open(&txn)?;
                for request in batch {
                    let name = request.room.as_str().to_string();
                    let (epoch, head) = head_of(&rooms, &name)?.unwrap_or_else(|| (new_epoch(), 0));
                    let offset = head + 1;
                    let msg = SequencedMessage::new(request, Epoch::new(&epoch), offset);
                    let json = stored_json(&msg)?;
                    let at = Position {
                        room: &name,
                        epoch: &epoch,
                        offset,
                    };
                    put(&mut rooms, &mut messages, &mut usage, limits, at, &json)?;
                    stored.push(msg);
                }
                usage.enforce(&mut messages, limits.max_bytes as u64)?;
                usage.finish()?
            };
            txn.commit().map_err(txn_failed)?;
            self.health.set_stored_bytes(bytes);
            Ok(stored)
        })
    }

    /// One synced commit.
    fn end_lineage(&mut self, room: &RoomName) -> Result<(), StoreError> {
        self.db.with(|db| {
            let txn = db.begin_write().map_err(txn_failed)?;
            let bytes = {
                let mut rooms = txn.open_table(ROOMS).map_err(table_failed)?;
                let mut messages = txn.open_table(MESSAGES).map_err(table_failed)?;
                let mut usage = Usage::open(&txn)?;
                restart_room(
                    &mut rooms,
                    &mut messages,
                    &mut usage,
                    room.as_str(),
                    &new_epoch(),
                )?;
                usage.finish()?
            };
            txn.commit().map_err(txn_failed)?;
            self.health.set_stored_bytes(bytes);
            Ok(())
        })
    }

    fn snapshot(&mut self, room: &RoomName, now: Timestamp) -> Result<RoomSnapshot, StoreError> {
        let limits = self.limits;
        self.db.with(|db| {
            let name = room.as_str();
            let Some((epoch, head)) = stored_head(db, name)? else {
                let epoch = new_epoch();
                let txn = db.begin_write().map_err(txn_failed)?;
                {
                    let mut rooms = txn.open_table(ROOMS).map_err(table_failed)?;
                    rooms
                        .insert(name, (epoch.as_str(), 0))
                        .map_err(table_failed)?;
                }
                txn.commit().map_err(txn_failed)?;
                return Ok(snapshot_of(room, &epoch, 0, Vec::new(), now, limits));
            };
            let history = stored_history(db, name, first_retained(head, limits), head)?;
            Ok(snapshot_of(room, &epoch, head, history, now, limits))
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::seq::journal::Journal;
    use crate::seq::journaled::JournaledStore;
    use crate::seq::usage::entry_bytes;
    use roomhub_core::testkit::append_request;

    pub(crate) fn limits(max_messages: usize) -> HistoryLimits {
        HistoryLimits {
            max_messages,
            max_age_ms: 60_000,
            max_rooms: 1000,
            max_bytes: 0,
        }
    }

    pub(crate) fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("roomhub-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn appends_survive_reopening_with_count_and_age_retention() {
        let dir = scratch("reopen");
        let room = RoomName::parse("g", 64).unwrap();
        let epoch = {
            let mut store = Store::open(&dir, limits(3)).unwrap();
            let stored = store
                .append_batch((1..=5).map(|t| append_request("g", t * 1000)).collect())
                .unwrap();
            assert_eq!(
                stored.iter().map(|m| m.offset).collect::<Vec<_>>(),
                [1, 2, 3, 4, 5]
            );
            stored[0].epoch.clone()
        };
        // The other mode reads what this one stored.
        let mut store = JournaledStore::open(&dir, limits(3), None).unwrap();
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

    #[test]
    fn new_history_limits_apply_to_the_next_reads_of_both_stores() {
        let room = RoomName::parse("g", 64).unwrap();
        let offsets = |snap: &roomhub_core::RoomSnapshot| {
            snap.messages.iter().map(|m| m.offset).collect::<Vec<_>>()
        };
        let five = || (1..=5).map(|t| append_request("g", t * 1000)).collect();
        let dir = scratch("set-history-always");
        let mut store = Store::open(&dir, limits(10)).unwrap();
        store.append_batch(five()).unwrap();
        store.set_history(2, 60_000);
        assert_eq!(
            offsets(&store.snapshot(&room, Timestamp(5_000)).unwrap()),
            [4, 5]
        );
        drop(store);
        std::fs::remove_dir_all(&dir).ok();
        let dir = scratch("set-history-journaled");
        let mut store = JournaledStore::open(&dir, limits(10), None).unwrap();
        store.append_batch(five()).unwrap();
        store.set_history(2, 60_000);
        assert_eq!(
            offsets(&store.snapshot(&room, Timestamp(5_000)).unwrap()),
            [4, 5]
        );
        // And the age: messages older than a second at 5.5 s are gone.
        store.set_history(10, 1_000);
        assert_eq!(
            offsets(&store.snapshot(&room, Timestamp(5_500)).unwrap()),
            [5]
        );
        drop(store);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Every stored message counted again from the database, and the
    /// total the budget keeps.
    fn recount(dir: &Path) -> (u64, u64) {
        use crate::seq::usage::META;
        let db = Database::create(dir.join(DATABASE)).unwrap();
        let txn = db.begin_read().unwrap();
        let messages = txn.open_table(MESSAGES).unwrap();
        let counted = messages
            .iter()
            .unwrap()
            .map(|row| {
                let (key, value) = row.unwrap();
                entry_bytes(key.value().0, value.value().len())
            })
            .sum();
        let kept = txn.open_table(META).unwrap();
        let kept = kept.get("stored_bytes").unwrap().map_or(0, |v| v.value());
        (counted, kept)
    }

    /// Opens the store of one mode in `dir`, runs `work` on it and closes
    /// it (the journaled one checkpoints everything then, so each call is
    /// its own write transaction in both modes). Returns the bytes stored.
    fn session(dir: &Path, always: bool, budget: u64, work: impl FnOnce(&mut dyn History)) -> u64 {
        let limits = HistoryLimits {
            max_bytes: budget as usize,
            ..limits(100)
        };
        let health = StoreHealth::default();
        if always {
            let mut store = Store::open_with(dir, limits, None, health.clone()).unwrap();
            work(&mut store);
        } else {
            let mut store =
                JournaledStore::open_with(dir, limits, None, None, health.clone()).unwrap();
            work(&mut store);
        }
        health.stored_bytes()
    }

    fn append(store: &mut dyn History, room: &str, n: u64) {
        let batch = (0..n).map(|t| append_request(room, t)).collect();
        store.append_batch(batch).unwrap();
    }

    /// The disk budget: over it, the rooms written least recently lose
    /// their stored messages (whole rooms, keeping their epoch and head);
    /// the count stays exact through trims, `history_remove` and
    /// reopening, in both stores; a database from before the budget is
    /// counted when first opened.
    #[test]
    fn the_disk_budget_trims_the_rooms_written_least_recently() {
        for always in [true, false] {
            let dir = scratch(&format!("budget-{always}"));
            let one = session(&dir, always, 0, |s| append(s, "z", 1));
            std::fs::remove_dir_all(&dir).ok();
            let budget = one * 10 + one / 2;
            let at = |n: u64| session(&dir, always, budget, |s| append(s, "a", n));
            at(4);
            session(&dir, always, budget, |s| append(s, "b", 4));
            assert_eq!(at(1), one * 9, "always {always}");
            // "b" was written least recently: it goes, and only it.
            let stored = session(&dir, always, budget, |s| append(s, "c", 2));
            assert_eq!(stored, one * 7, "always {always}");
            assert_eq!(recount(&dir), (stored, stored));
            session(&dir, always, budget, |s| {
                let now = Timestamp(10);
                let b = s.snapshot(&RoomName::parse("b", 64).unwrap(), now).unwrap();
                assert_eq!((b.head, b.messages.len()), (4, 0), "always {always}");
                let a = s.snapshot(&RoomName::parse("a", 64).unwrap(), now).unwrap();
                assert_eq!((a.head, a.messages.len()), (5, 5), "always {always}");
                s.end_lineage(&RoomName::parse("c", 64).unwrap()).unwrap();
            });
            assert_eq!(recount(&dir), (one * 5, one * 5), "always {always}");
            // A database written before the budget existed.
            {
                let db = Database::create(dir.join(DATABASE)).unwrap();
                let txn = db.begin_write().unwrap();
                txn.delete_table(crate::seq::usage::META).unwrap();
                txn.delete_table(crate::seq::usage::USAGE).unwrap();
                txn.commit().unwrap();
            }
            assert_eq!(session(&dir, always, budget, |_| {}), one * 5);
            // Offsets 10 and up are a digit longer.
            let stored = at(5);
            assert_eq!(stored, one * 10 + 2, "always {always}");
            assert_eq!(recount(&dir), (stored, stored));
            std::fs::remove_dir_all(&dir).ok();
        }
    }

    /// A crash in the middle of a checkpoint leaves a set-aside segment and
    /// the journal after it: both are applied, in that order, and both are
    /// empty afterwards.
    #[test]
    fn opening_applies_the_set_aside_segment_then_the_journal() {
        let dir = scratch("segments");
        std::fs::create_dir_all(&dir).unwrap();
        let msgs: Vec<SequencedMessage> = (1..=4)
            .map(|o| SequencedMessage::new(append_request("g", o * 1000), Epoch::new("e1"), o))
            .collect();
        let json = |m: &SequencedMessage| serde_json::to_vec(m).unwrap();
        {
            let (mut aside, _) = Journal::open(&dir.join(SET_ASIDE)).unwrap();
            aside.append_room("g", "e1", false).unwrap();
            aside
                .append_messages([json(&msgs[0]).as_slice(), &json(&msgs[1])])
                .unwrap();
            let (mut current, _) = Journal::open(&dir.join(JOURNAL)).unwrap();
            current
                .append_messages([json(&msgs[2]).as_slice(), &json(&msgs[3])])
                .unwrap();
        }
        let mut store = Store::open(&dir, limits(3)).unwrap();
        let snap = store
            .snapshot(&RoomName::parse("g", 64).unwrap(), Timestamp(4_000))
            .unwrap();
        assert_eq!((snap.epoch.as_str(), snap.head), ("e1", 4));
        assert_eq!(snap.messages, msgs[1..]);
        assert!(!dir.join(SET_ASIDE).exists());
        assert_eq!(std::fs::metadata(dir.join(JOURNAL)).unwrap().len(), 0);
        std::fs::remove_dir_all(&dir).ok();
    }
}
