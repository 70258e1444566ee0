//! The default durable store (`--fsync background`): an append is
//! acknowledged once it is in the journal, and the journal is all an append
//! writes. It runs on the hub's own thread (one `write` per pass, no hop to
//! another thread and back), like Redis writing its AOF in its main loop.
//!
//! What the journal holds since the last checkpoint is also kept here, per
//! room ([`Tail`]: its lineage, head and latest messages), so that offsets
//! and room snapshots never wait for the database. About every second (or
//! every [`CHECKPOINT_BYTES`] of journal) a checkpoint sets the journal's
//! file aside and hands what it held to the `roomhub-checkpoint` thread,
//! which writes it to the database in one synced commit and then deletes
//! the set-aside file. Until that thread reports back, its rooms' tails
//! stay readable here; a checkpoint that fails is retried, and whatever
//! was not written when the process stops is applied again on the next
//! start ([`crate::seq::store::open_database`]).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::Database;

use crate::seq::faults::{DiskFaults, StoreHealth};
use roomhub_core::{
    AppendRequest, Epoch, HistoryLimits, RoomName, RoomSnapshot, SequencedMessage, Timestamp,
};
use rustc_hash::FxHashMap;

use crate::seq::epoch::new_epoch;
use crate::seq::journal::{self, Journal};
use crate::seq::store::{
    Db, History, JOURNAL, MESSAGES, ROOMS, SET_ASIDE, StoreError, codec_failed, first_retained,
    head_of, journal_failed, open_database, restart_room, snapshot_of, stored_head, stored_history,
    stored_json, table_failed, txn_failed,
};
use crate::seq::usage::{Usage, entry_bytes};

/// How often, at most, the journal is checkpointed into the database.
const CHECKPOINT_INTERVAL: Duration = journal::SYNC_INTERVAL;
/// A journal this large is checkpointed at once, whatever the time.
const CHECKPOINT_BYTES: u64 = 64 << 20;
/// How long a stopping store waits for a checkpoint in progress.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// What one journal segment holds for a room.
#[derive(Debug)]
struct Tail {
    epoch: String,
    /// The first offset the segment holds (1 for a room it created with no
    /// message yet).
    first: u64,
    /// Its latest messages, at most the retained count: offset and the
    /// stored JSON.
    messages: VecDeque<(u64, Vec<u8>)>,
    /// `history_remove` started this lineage over: what the database holds
    /// of the room goes when this segment is written.
    reset: bool,
    /// The store's append count at this room's latest message: a
    /// checkpoint writes rooms in this order, so that the disk budget
    /// knows which was written least recently.
    written: u64,
}

impl Tail {
    /// The room's head: its newest message, or (none yet) the offset
    /// before the first.
    fn head(&self) -> u64 {
        self.messages
            .back()
            .map_or(self.first - 1, |(offset, _)| *offset)
    }
}

/// What a segment holds, per room.
type Tails = FxHashMap<String, Tail>;

/// The default store; see the module's documentation.
pub struct JournaledStore {
    db: Arc<Db>,
    health: StoreHealth,
    limits: HistoryLimits,
    journal: Journal,
    aside: PathBuf,
    /// What the journal's current file holds.
    pending: Tails,
    /// Batches appended since the store opened (orders [`Tail::written`]).
    appends: u64,
    /// The set-aside segment, until the checkpoint thread has written it.
    in_flight: Option<Arc<Tails>>,
    last_checkpoint: Instant,
    checkpoint_every: Duration,
    checkpointer: Option<Checkpointer>,
    /// Dropped last, once the database is closed (a restart in the same
    /// process can then open it again).
    _closed: Option<tokio::sync::oneshot::Sender<()>>,
}

impl JournaledStore {
    /// Opens (or creates) the store in `dir`, applying what an earlier run
    /// left in its journal. `closed` is dropped once the database is
    /// closed.
    pub fn open(
        dir: &Path,
        limits: HistoryLimits,
        closed: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<JournaledStore, StoreError> {
        JournaledStore::open_with(dir, limits, closed, None, StoreHealth::default())
    }

    /// The same, reporting to `health`, on a disk that fails writes on
    /// demand (tests).
    pub fn open_with(
        dir: &Path,
        limits: HistoryLimits,
        closed: Option<tokio::sync::oneshot::Sender<()>>,
        faults: Option<&DiskFaults>,
        health: StoreHealth,
    ) -> Result<JournaledStore, StoreError> {
        let db = open_database(dir, limits, faults, &health)?;
        let path = dir.join(JOURNAL);
        let (mut journal, _) = Journal::open(&path)
            .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        journal.inject(faults.cloned());
        journal
            .sync_in_background(journal::SYNC_INTERVAL)
            .map_err(journal_failed)?;
        let aside = dir.join(SET_ASIDE);
        let checkpointer = Checkpointer::spawn(db.clone(), aside.clone(), health.clone())
            .map_err(|e| StoreError::Open(format!("the checkpoint thread: {e}")))?;
        Ok(JournaledStore {
            db,
            health,
            limits,
            journal,
            aside,
            pending: Tails::default(),
            appends: 0,
            in_flight: None,
            last_checkpoint: Instant::now(),
            checkpoint_every: CHECKPOINT_INTERVAL,
            checkpointer: Some(checkpointer),
            _closed: closed,
        })
    }

    /// Keeps `max_messages` per room for `max_age_ms` from now on (the
    /// disk budget stays): reads and checkpoints use them, and a room
    /// over the count is trimmed at its next checkpoint.
    pub fn set_history(&mut self, max_messages: usize, max_age_ms: u64) {
        self.limits.max_messages = max_messages;
        self.limits.max_age_ms = max_age_ms;
    }
}

impl History for JournaledStore {
    fn health(&self) -> &StoreHealth {
        &self.health
    }

    /// One journal write.
    fn append_batch(
        &mut self,
        batch: Vec<AppendRequest>,
    ) -> Result<Vec<SequencedMessage>, StoreError> {
        self.note_checkpoint_done();
        // Heads as this batch moves them; nothing is kept until the journal
        // has the batch.
        let mut heads: FxHashMap<String, (String, u64)> = FxHashMap::default();
        let mut stored = Vec::with_capacity(batch.len());
        let mut jsons = Vec::with_capacity(batch.len());
        for request in batch {
            let name = request.room.as_str();
            let (epoch, head) = match heads.get(name) {
                Some(known) => known.clone(),
                None => self.head(name)?.unwrap_or_else(|| (new_epoch(), 0)),
            };
            let offset = head + 1;
            let msg = SequencedMessage::new(request, Epoch::new(&epoch), offset);
            jsons.push(stored_json(&msg)?);
            heads.insert(msg.room.as_str().to_string(), (epoch, offset));
            stored.push(msg);
        }
        self.journal
            .append_messages(jsons.iter().map(Vec::as_slice))
            .map_err(journal_failed)?;
        let max = self.limits.max_messages;
        self.appends += 1;
        for (msg, json) in stored.iter().zip(jsons) {
            let tail = self
                .pending
                .entry(msg.room.as_str().to_string())
                .or_insert_with(|| Tail {
                    epoch: msg.epoch.as_str().to_string(),
                    first: msg.offset,
                    messages: VecDeque::new(),
                    reset: false,
                    written: 0,
                });
            tail.written = self.appends;
            tail.messages.push_back((msg.offset, json));
            if tail.messages.len() > max {
                tail.messages.pop_front();
            }
        }
        self.checkpoint_if_due()?;
        Ok(stored)
    }

    fn snapshot(&mut self, room: &RoomName, now: Timestamp) -> Result<RoomSnapshot, StoreError> {
        self.note_checkpoint_done();
        let name = room.as_str();
        let Some((epoch, head)) = self.head(name)? else {
            let epoch = new_epoch();
            self.journal
                .append_room(name, &epoch, false)
                .map_err(journal_failed)?;
            let tail = Tail {
                epoch: epoch.clone(),
                first: 1,
                messages: VecDeque::new(),
                reset: false,
                written: 0,
            };
            self.pending.insert(name.to_string(), tail);
            self.checkpoint_if_due()?;
            return Ok(snapshot_of(room, &epoch, 0, Vec::new(), now, self.limits));
        };
        let first = first_retained(head, self.limits);
        // The database's part (it may already hold some of the tails'),
        // then the tails', oldest segment first.
        let mut history: BTreeMap<u64, SequencedMessage> = BTreeMap::new();
        let stored = self.db.read(|db| match stored_head(db, name)? {
            Some((stored_epoch, stored_head)) if stored_epoch == epoch => {
                stored_history(db, name, first, stored_head)
            }
            _ => Ok(Vec::new()),
        })?;
        for msg in stored {
            history.insert(msg.offset, msg);
        }
        let tails = self.in_flight.iter().map(|t| &**t).chain([&self.pending]);
        // A segment may still hold a lineage `history_remove` ended.
        let tails = tails.filter_map(|tails| tails.get(name));
        for tail in tails.filter(|tail| tail.epoch == epoch) {
            for (offset, json) in tail.messages.iter().filter(|(o, _)| *o >= first) {
                let msg = serde_json::from_slice(json).map_err(codec_failed)?;
                history.insert(*offset, msg);
            }
        }
        let history = history.into_values().collect();
        Ok(snapshot_of(room, &epoch, head, history, now, self.limits))
    }

    /// One journal record; the database forgets the room when the
    /// segment is checkpointed (or the journal replayed).
    fn end_lineage(&mut self, room: &RoomName) -> Result<(), StoreError> {
        self.note_checkpoint_done();
        let (name, epoch) = (room.as_str(), new_epoch());
        self.journal
            .append_room(name, &epoch, true)
            .map_err(journal_failed)?;
        let tail = Tail {
            epoch,
            first: 1,
            messages: VecDeque::new(),
            reset: true,
            written: 0,
        };
        self.pending.insert(name.to_string(), tail);
        self.checkpoint_if_due()
    }
}

impl JournaledStore {
    /// Between appends (any input to the hub): a checkpoint that came due
    /// while no message was written starts now, so that the database, and
    /// its disk budget, catch up with the journal of an idle store too.
    pub(crate) fn checkpoint_when_idle(&mut self) {
        self.note_checkpoint_done();
        if let Err(e) = self.checkpoint_if_due() {
            self.health.failed(&e);
        }
    }

    /// A room's epoch and head: the newest segment that holds the room,
    /// else the database.
    fn head(&self, room: &str) -> Result<Option<(String, u64)>, StoreError> {
        let tails = [Some(&self.pending), self.in_flight.as_deref()];
        if let Some(tail) = tails.into_iter().flatten().find_map(|t| t.get(room)) {
            return Ok(Some((tail.epoch.clone(), tail.head())));
        }
        self.db.read(|db| stored_head(db, room))
    }

    /// Forgets the set-aside segment once the database has it.
    fn note_checkpoint_done(&mut self) {
        if let Some(checkpointer) = &self.checkpointer
            && checkpointer.done.try_recv().is_ok()
        {
            self.in_flight = None;
        }
    }

    /// Starts a checkpoint if the last one is done and this one is due.
    fn checkpoint_if_due(&mut self) -> Result<(), StoreError> {
        let due = self.last_checkpoint.elapsed() >= self.checkpoint_every
            || self.journal.len() >= CHECKPOINT_BYTES;
        if !due || self.in_flight.is_some() || self.pending.is_empty() {
            return Ok(());
        }
        self.journal.rotate(&self.aside).map_err(journal_failed)?;
        let segment = Arc::new(std::mem::take(&mut self.pending));
        self.in_flight = Some(segment.clone());
        self.last_checkpoint = Instant::now();
        if let Some(checkpointer) = &self.checkpointer {
            let _ = checkpointer.jobs.send((segment, self.limits));
        }
        Ok(())
    }
}

impl Drop for JournaledStore {
    /// A clean close leaves the database durable and the journal empty;
    /// what a failing disk keeps from that stays journaled for the next
    /// start.
    fn drop(&mut self) {
        let Some(checkpointer) = self.checkpointer.take() else {
            return;
        };
        if self.in_flight.is_some() && checkpointer.done.recv_timeout(CLOSE_WAIT).is_err() {
            tracing::error!("the last checkpoint did not finish: the journal keeps it");
            return;
        }
        checkpointer.stop();
        if self.pending.is_empty() {
            return;
        }
        let written = self
            .journal
            .rotate(&self.aside)
            .map_err(journal_failed)
            .and_then(|()| {
                self.db
                    .with(|db| apply(db, self.limits, &self.pending, &self.health))
            })
            .and_then(|()| journal::remove_segment(&self.aside).map_err(journal_failed));
        if let Err(e) = written {
            tracing::error!("store cannot checkpoint on close (the journal keeps it): {e}");
        }
    }
}

/// The `roomhub-checkpoint` thread: writes each set-aside segment to the
/// database, deletes its file, and reports back.
struct Checkpointer {
    /// Each segment with the limits in force when it was set aside.
    jobs: mpsc::Sender<(Arc<Tails>, HistoryLimits)>,
    done: mpsc::Receiver<()>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    fn spawn(db: Arc<Db>, aside: PathBuf, health: StoreHealth) -> std::io::Result<Self> {
        let (jobs, queued) = mpsc::channel::<(Arc<Tails>, HistoryLimits)>();
        let (report, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("roomhub-checkpoint".into())
            .spawn(move || {
                loop {
                    let (segment, limits) = match queued.recv_timeout(CHECKPOINT_INTERVAL) {
                        Ok(segment) => segment,
                        // Idle: a reopen the hub's reads asked for.
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            db.reopen_if_asked();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    };
                    loop {
                        // A failed write reopens the database (`Db::with`),
                        // so the retry finds it usable once the disk is.
                        let written = db
                            .with(|db| apply(db, limits, &segment, &health))
                            .and_then(|()| journal::remove_segment(&aside).map_err(journal_failed));
                        match written {
                            Ok(()) => {
                                health.wrote();
                                break;
                            }
                            Err(e) => {
                                health.failed(&format!("checkpoint failed, retrying: {e}"));
                            }
                        }
                        // Retried a second later; a store that stops
                        // meanwhile leaves it to the journal.
                        if let Err(mpsc::RecvTimeoutError::Disconnected) =
                            queued.recv_timeout(CHECKPOINT_INTERVAL)
                        {
                            return;
                        }
                    }
                    if report.send(()).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Checkpointer { jobs, done, thread })
    }

    /// Ends the thread once it has nothing in progress.
    fn stop(self) {
        drop(self.jobs);
        let _ = self.thread.join();
    }
}

/// Writes a segment to the database in one synced commit: each room's new
/// messages and head, and what falls out of its retained count.
fn apply(
    db: &Database,
    limits: HistoryLimits,
    segment: &Tails,
    health: &StoreHealth,
) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(txn_failed)?;
    let stored = {
        let mut rooms = txn.open_table(ROOMS).map_err(table_failed)?;
        let mut messages = txn.open_table(MESSAGES).map_err(table_failed)?;
        let mut usage = Usage::open(&txn)?;
        let max = limits.max_messages as u64;
        let mut in_order: Vec<(&String, &Tail)> = segment.iter().collect();
        in_order.sort_unstable_by_key(|(_, tail)| tail.written);
        for (room, tail) in in_order {
            let room = room.as_str();
            if tail.reset {
                restart_room(&mut rooms, &mut messages, &mut usage, room, &tail.epoch)?;
            }
            if tail.messages.is_empty() {
                // A room created with no message yet: its lineage.
                if head_of(&rooms, room)?.is_none() {
                    rooms
                        .insert(room, (tail.epoch.as_str(), 0))
                        .map_err(table_failed)?;
                }
                continue;
            }
            let (mut added, mut removed) = (0, 0);
            for (offset, json) in &tail.messages {
                added += entry_bytes(room, json.len());
                if let Some(old) = messages
                    .insert((room, *offset), json.as_slice())
                    .map_err(table_failed)?
                {
                    // Written before (a segment applied again after a crash).
                    removed += entry_bytes(room, old.value().len());
                }
            }
            rooms
                .insert(room, (tail.epoch.as_str(), tail.head()))
                .map_err(table_failed)?;
            // The database held up to `first - 1`; what of that is now more
            // than `max` behind the head goes (the segment's own older
            // messages were never written).
            let old_end = tail.head().saturating_sub(max).min(tail.first - 1);
            for offset in tail.first.saturating_sub(max).max(1)..=old_end {
                if let Some(gone) = messages.remove((room, offset)).map_err(table_failed)? {
                    removed += entry_bytes(room, gone.value().len());
                }
            }
            usage.wrote(room, added, removed)?;
        }
        usage.enforce(&mut messages, limits.max_bytes as u64)?;
        usage.finish()?
    };
    txn.commit().map_err(txn_failed)?;
    health.set_stored_bytes(stored);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seq::store::tests::{limits, scratch};
    use crate::seq::store::{Store, stored_history};
    use roomhub_core::testkit::append_request;

    fn open(dir: &Path, max: usize, every: Duration) -> JournaledStore {
        let mut store = JournaledStore::open(dir, limits(max), None).unwrap();
        store.checkpoint_every = every;
        store
    }

    fn offsets(messages: &[SequencedMessage]) -> Vec<u64> {
        messages.iter().map(|m| m.offset).collect()
    }

    /// A copy of the data directory taken while the store runs is what a
    /// `kill -9` leaves: the database as of its last checkpoint, and the
    /// journal written since.
    fn crash_image(dir: &Path, to: &Path) {
        let _ = std::fs::remove_dir_all(to);
        std::fs::create_dir_all(to).unwrap();
        for file in ["roomhub.redb", JOURNAL, SET_ASIDE] {
            if dir.join(file).exists() {
                std::fs::copy(dir.join(file), to.join(file)).unwrap();
            }
        }
    }

    #[test]
    fn acks_survive_a_crash_through_the_journal() {
        let base = scratch("bg");
        let (dir, crashed, no_journal) =
            (base.join("live"), base.join("crashed"), base.join("bare"));
        let room = RoomName::parse("g", 64).unwrap();
        let hour = Duration::from_secs(3600);
        let mut store = open(&dir, 100, hour);
        let fresh = store
            .snapshot(&RoomName::parse("quiet", 64).unwrap(), Timestamp(0))
            .unwrap();
        let stored = store
            .append_batch((1..=5).map(|t| append_request("g", t * 1000)).collect())
            .unwrap();
        // Before any checkpoint: the "crash".
        crash_image(&dir, &crashed);
        crash_image(&dir, &no_journal);
        std::fs::remove_file(no_journal.join(JOURNAL)).unwrap();
        drop(store);

        let mut recovered = open(&crashed, 100, hour);
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
        let mut bare = open(&no_journal, 100, hour);
        assert_eq!(bare.snapshot(&room, Timestamp(5_000)).unwrap().head, 0);
        // Applied once, the journal starts over; a clean close checkpoints.
        let next = recovered
            .append_batch(vec![append_request("g", 6000)])
            .unwrap();
        assert_eq!(next[0].offset, 6);
        drop(recovered);
        assert_eq!(std::fs::metadata(crashed.join(JOURNAL)).unwrap().len(), 0);
        assert!(!crashed.join(SET_ASIDE).exists());
        let mut reopened = Store::open(&crashed, limits(100)).unwrap();
        assert_eq!(reopened.snapshot(&room, Timestamp(6_000)).unwrap().head, 6);
        std::fs::remove_dir_all(&base).ok();
    }

    /// With a checkpoint due at every append, history is spread over the
    /// database, the segment being written and the journal: a snapshot
    /// sees all of it, in order, and the database keeps the retained count.
    #[test]
    fn checkpoints_move_history_into_the_database_and_snapshots_see_every_part() {
        let dir = scratch("checkpoints");
        let room = RoomName::parse("g", 64).unwrap();
        let mut store = open(&dir, 3, Duration::ZERO);
        let epoch = store.snapshot(&room, Timestamp(0)).unwrap().epoch;
        for n in 1..=20u64 {
            let stored = store.append_batch(vec![append_request("g", n)]).unwrap();
            assert_eq!((stored[0].offset, &stored[0].epoch), (n, &epoch));
            let snap = store.snapshot(&room, Timestamp(n)).unwrap();
            assert_eq!(snap.head, n);
            let want: Vec<u64> = (n.saturating_sub(3) + 1..=n).collect();
            assert_eq!(offsets(&snap.messages), want, "after {n}");
        }
        drop(store);
        let db = open_database(&dir, limits(3), None, &StoreHealth::default())
            .unwrap()
            .get()
            .unwrap();
        // Nothing older than the retained count is left behind.
        assert_eq!(
            offsets(&stored_history(&db, "g", 1, 20).unwrap()),
            [18, 19, 20]
        );
        drop(db);
        let mut reopened = open(&dir, 3, Duration::ZERO);
        let next = reopened
            .append_batch(vec![append_request("g", 21)])
            .unwrap();
        assert_eq!((next[0].offset, &next[0].epoch), (21, &epoch));
        drop(reopened);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// `history_remove` in the journal: the new lineage wins whether the
    /// process crashes before a checkpoint (the journal is replayed) or
    /// after one (the database is rewritten), and no message of the old
    /// lineage comes back.
    #[test]
    fn an_ended_lineage_stays_ended_through_checkpoints_and_crashes() {
        let base = scratch("lineage");
        let room = RoomName::parse("g", 64).unwrap();
        for every in [Duration::from_secs(3600), Duration::ZERO] {
            let (dir, crashed) = (base.join("live"), base.join("crashed"));
            let _ = std::fs::remove_dir_all(&base);
            let mut store = open(&dir, 10, every);
            let old = store
                .append_batch((1..=4).map(|t| append_request("g", t)).collect())
                .unwrap();
            store.end_lineage(&room).unwrap();
            let fresh = store.snapshot(&room, Timestamp(5)).unwrap();
            assert_ne!(fresh.epoch, old[0].epoch);
            assert_eq!((fresh.head, fresh.messages.len()), (0, 0));
            let new = store.append_batch(vec![append_request("g", 6)]).unwrap();
            assert_eq!((new[0].offset, &new[0].epoch), (1, &fresh.epoch));
            crash_image(&dir, &crashed);
            drop(store);
            for d in [&dir, &crashed] {
                let mut reopened = open(d, 10, every);
                let snap = reopened.snapshot(&room, Timestamp(7)).unwrap();
                assert_eq!((&snap.epoch, snap.head), (&fresh.epoch, 1), "{every:?}");
                assert_eq!(snap.messages, new, "{every:?} {}", d.display());
            }
            let db = open_database(&dir, limits(10), None, &StoreHealth::default())
                .unwrap()
                .get()
                .unwrap();
            assert_eq!(offsets(&stored_history(&db, "g", 1, 10).unwrap()), [1]);
        }
        std::fs::remove_dir_all(&base).ok();
    }
}
