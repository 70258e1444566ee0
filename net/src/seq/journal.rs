//! The store's journal: what lets an append be acknowledged without waiting
//! for the disk (`--fsync background`, the default).
//!
//! Each batch the store accepts is appended here with one `write` before it
//! is acknowledged. A `write` that returned is in the kernel's page cache:
//! it survives the process being killed (`kill -9`, a panic, an OOM kill),
//! though not the machine losing power before the next sync. A background
//! thread (`roomhub-fsync`) syncs the file at most every second, like Redis'
//! `appendfsync everysec`.
//!
//! The journal is the only thing an append writes. About every second the
//! store starts a checkpoint: the journal's file is renamed aside (the
//! segment being checkpointed), a new one takes its place, and a background
//! thread writes the set-aside segment's messages to the database in one
//! synced commit, then deletes it ([`crate::seq::journaled`]). On open,
//! whatever the set-aside segment and the journal hold is applied again,
//! in that order.
//!
//! A record is `[body length: u32 LE][CRC-32 of the body: u32 LE][body]`.
//! The body is one [`Entry`]: a kind byte, then length-prefixed fields. A
//! record cut short by a crash, or one whose checksum does not match, ends
//! the journal: nothing after it was acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::seq::faults::DiskFaults;

/// How often unsynced journal writes are synced, at most.
pub(crate) const SYNC_INTERVAL: Duration = Duration::from_secs(1);

const KIND_MESSAGES: u8 = 1;
const KIND_ROOM: u8 = 2;
const KIND_RESET: u8 = 3;
/// The header before each body: its length and checksum.
const HEADER: usize = 8;

/// One journal record as read back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A batch of stored messages, each the JSON the database holds.
    Messages(Vec<Vec<u8>>),
    /// A room's lineage: created before it had any message, or (`reset`)
    /// started over by `history_remove`, its earlier messages gone.
    Room {
        room: String,
        epoch: String,
        reset: bool,
    },
}

/// The journal file, and the thread that syncs it.
pub(crate) struct Journal {
    path: PathBuf,
    file: Arc<File>,
    /// Bytes of whole records in the file.
    len: u64,
    /// Set by every write, cleared by the sync that covers it.
    unsynced: Arc<AtomicBool>,
    /// Hands the sync thread the file after a rotation; dropping the
    /// sender ends the thread, if it was started.
    syncer: Option<(mpsc::Sender<Arc<File>>, JoinHandle<()>)>,
    /// A write failed and the file could not be cut back to its last whole
    /// record: nothing more may be appended until a rotation starts a new
    /// file.
    broken: bool,
    /// Tests: writes fail as on a full disk while set.
    faults: Option<DiskFaults>,
}

impl Journal {
    /// Opens (or creates) the journal at `path`; returns it with the
    /// entries it holds, up to the first damaged or incomplete record.
    pub(crate) fn open(path: &Path) -> io::Result<(Journal, Vec<Entry>)> {
        let mut file = open_appending(path)?;
        let mut raw = Vec::new();
        file.read_to_end(&mut raw)?;
        let (entries, whole) = decode_all(&raw);
        if whole < raw.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = raw.len() - whole,
                "the journal ends in an incomplete or damaged record; it was never acknowledged"
            );
            file.set_len(whole as u64)?;
        }
        let journal = Journal {
            path: path.to_path_buf(),
            file: Arc::new(file),
            len: whole as u64,
            unsynced: Arc::new(AtomicBool::new(false)),
            syncer: None,
            broken: false,
            faults: None,
        };
        Ok((journal, entries))
    }

    /// Tests: fail writes while `faults` says the disk is full.
    pub(crate) fn inject(&mut self, faults: Option<DiskFaults>) {
        self.faults = faults;
    }

    /// Starts the thread that syncs what is appended, at most `every`
    /// ([`SYNC_INTERVAL`] in the store; a journal only read back at start
    /// needs none).
    pub(crate) fn sync_in_background(&mut self, every: Duration) -> io::Result<()> {
        if self.syncer.is_none() {
            self.syncer = Some(spawn_syncer(
                self.file.clone(),
                self.unsynced.clone(),
                every,
            )?);
        }
        Ok(())
    }

    /// Bytes the journal holds.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends a batch of stored messages (their database JSON).
    pub(crate) fn append_messages<'a>(
        &mut self,
        messages: impl IntoIterator<Item = &'a [u8]>,
    ) -> io::Result<()> {
        let mut body = vec![KIND_MESSAGES];
        for json in messages {
            put_field(&mut body, json);
        }
        self.append(&body)
    }

    /// Appends a room's new lineage (`reset`: it replaces an earlier one).
    pub(crate) fn append_room(&mut self, room: &str, epoch: &str, reset: bool) -> io::Result<()> {
        let mut body = vec![if reset { KIND_RESET } else { KIND_ROOM }];
        put_field(&mut body, room.as_bytes());
        put_field(&mut body, epoch.as_bytes());
        self.append(&body)
    }

    /// Sets the file aside as `to` and starts a new, empty one in its
    /// place (what a checkpoint then writes to the database). On error the
    /// journal is as it was.
    pub(crate) fn rotate(&mut self, to: &Path) -> io::Result<()> {
        std::fs::rename(&self.path, to)?;
        let file = match open_appending(&self.path) {
            Ok(file) => Arc::new(file),
            Err(e) => {
                // Put back: appends go on into the file they went into.
                std::fs::rename(to, &self.path)?;
                return Err(e);
            }
        };
        if let Some((files, _)) = &self.syncer {
            let _ = files.send(file.clone());
        }
        self.file = file;
        self.len = 0;
        self.broken = false;
        Ok(())
    }

    fn append(&mut self, body: &[u8]) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "the journal could not be repaired after a failed write",
            ));
        }
        let len = u32::try_from(body.len())
            .map_err(|_| io::Error::other("a journal record over 4 GiB"))?;
        let mut record = Vec::with_capacity(HEADER + body.len());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        record.extend_from_slice(body);
        let written = match &self.faults {
            // A full disk takes part of a record, then refuses the rest.
            Some(faults) if faults.full() => (&*self.file)
                .write_all(&record[..record.len() / 2])
                .and_then(|()| faults.check()),
            _ => (&*self.file).write_all(&record),
        };
        if let Err(e) = written {
            // A partial record would hide every later one from recovery:
            // cut the file back to its last whole record.
            if self.file.set_len(self.len).is_err() {
                self.broken = true;
            }
            return Err(e);
        }
        self.len += record.len() as u64;
        self.unsynced.store(true, Ordering::Release);
        Ok(())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.syncer.take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

/// The journal's entries at `path`, if there is such a file (a segment set
/// aside for a checkpoint that did not finish).
pub(crate) fn read_segment(path: &Path) -> io::Result<Vec<Entry>> {
    match std::fs::read(path) {
        Ok(raw) => Ok(decode_all(&raw).0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Deletes a set-aside segment (once the database holds it), if it is
/// there.
pub(crate) fn remove_segment(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn open_appending(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
}

/// Syncs the file every `every` if anything was written since the last
/// sync; follows the journal to each new file (syncing the one set aside,
/// and the new one, at once); ends when the journal is dropped.
fn spawn_syncer(
    mut file: Arc<File>,
    unsynced: Arc<AtomicBool>,
    every: Duration,
) -> io::Result<(mpsc::Sender<Arc<File>>, JoinHandle<()>)> {
    let (files, rotated) = mpsc::channel::<Arc<File>>();
    let thread = std::thread::Builder::new()
        .name("roomhub-fsync".into())
        .spawn(move || {
            let sync = |file: &File| {
                if let Err(e) = file.sync_data() {
                    unsynced.store(true, Ordering::Release);
                    tracing::error!("cannot sync the journal: {e}");
                }
            };
            loop {
                match rotated.recv_timeout(every) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if unsynced.swap(false, Ordering::AcqRel) {
                            sync(&file);
                        }
                    }
                    Ok(new) => {
                        let old: Arc<File> = std::mem::replace(&mut file, new);
                        sync(&old);
                        sync(&file);
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        })?;
    Ok((files, thread))
}

fn put_field(body: &mut Vec<u8>, field: &[u8]) {
    // Fields are bounded by the message size limit, far below 4 GiB.
    body.extend_from_slice(&(field.len() as u32).to_le_bytes());
    body.extend_from_slice(field);
}

/// The entries of a journal's bytes, and how many bytes of whole, intact
/// records they came from.
fn decode_all(raw: &[u8]) -> (Vec<Entry>, usize) {
    let mut entries = Vec::new();
    let mut at = 0;
    while let Some((entry, used)) = decode_record(&raw[at..]) {
        entries.push(entry);
        at += used;
    }
    (entries, at)
}

fn decode_record(raw: &[u8]) -> Option<(Entry, usize)> {
    let len = u32::from_le_bytes(raw.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(raw.get(4..8)?.try_into().ok()?);
    let body = raw.get(HEADER..HEADER.checked_add(len)?)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let (&kind, mut rest) = body.split_first()?;
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let n = u32::from_le_bytes(rest.get(0..4)?.try_into().ok()?) as usize;
        fields.push(rest.get(4..4usize.checked_add(n)?)?.to_vec());
        rest = &rest[4 + n..];
    }
    let entry = match kind {
        KIND_MESSAGES => Entry::Messages(fields),
        KIND_ROOM | KIND_RESET => {
            let [room, epoch]: [Vec<u8>; 2] = fields.try_into().ok()?;
            Entry::Room {
                room: String::from_utf8(room).ok()?,
                epoch: String::from_utf8(epoch).ok()?,
                reset: kind == KIND_RESET,
            }
        }
        _ => return None,
    };
    Some((entry, HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("roomhub-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("journal")
    }

    #[test]
    fn entries_come_back_in_order_and_a_rotation_sets_them_aside() {
        let path = scratch("order");
        {
            let (mut j, old) = Journal::open(&path).unwrap();
            assert!(old.is_empty());
            j.append_room("g", "e1", false).unwrap();
            j.append_messages([&b"{\"a\":1}"[..], b"{\"b\":2}"])
                .unwrap();
            assert!(j.len() > 0);
        }
        let (mut j, entries) = Journal::open(&path).unwrap();
        assert_eq!(
            entries,
            [
                Entry::Room {
                    room: "g".into(),
                    epoch: "e1".into(),
                    reset: false,
                },
                Entry::Messages(vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]),
            ]
        );
        let aside = path.with_extension("aside");
        j.rotate(&aside).unwrap();
        assert_eq!(j.len(), 0);
        j.append_room("h", "e2", false).unwrap();
        drop(j);
        let (_, entries) = Journal::open(&path).unwrap();
        assert_eq!(
            entries,
            [Entry::Room {
                room: "h".into(),
                epoch: "e2".into(),
                reset: false,
            }]
        );
        assert_eq!(read_segment(&aside).unwrap().len(), 2);
        assert!(
            read_segment(&path.with_extension("none"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_torn_or_damaged_tail_ends_the_journal_and_is_cut_off() {
        let path = scratch("torn");
        {
            let (mut j, _) = Journal::open(&path).unwrap();
            j.append_room("g", "e1", false).unwrap();
            j.append_room("h", "e2", false).unwrap();
        }
        let whole = std::fs::read(&path).unwrap();
        // Half of the second record, as a crash mid-write leaves it.
        let first_len = HEADER + u32::from_le_bytes(whole[0..4].try_into().unwrap()) as usize;
        std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        let (mut j, entries) = Journal::open(&path).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(j.len(), first_len as u64);
        // What is appended next follows the last whole record.
        j.append_room("k", "e3", false).unwrap();
        drop(j);
        let (_, entries) = Journal::open(&path).unwrap();
        assert_eq!(entries.len(), 2);
        // A flipped bit in the body: the checksum ends the journal there.
        let mut damaged = std::fs::read(&path).unwrap();
        damaged[HEADER + 2] ^= 0x40;
        std::fs::write(&path, &damaged).unwrap();
        let (_, entries) = Journal::open(&path).unwrap();
        assert!(entries.is_empty());
    }

    #[test]
    fn the_sync_thread_syncs_what_was_written() {
        let path = scratch("sync");
        let (mut j, _) = Journal::open(&path).unwrap();
        j.append_room("g", "e1", false).unwrap();
        assert!(j.unsynced.load(Ordering::Acquire));
        j.sync_in_background(Duration::from_millis(5)).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while j.unsynced.load(Ordering::Acquire) {
            assert!(std::time::Instant::now() < deadline, "never synced");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Dropping the journal ends the thread (the drop joins it).
        drop(j);
    }

    #[test]
    fn garbage_never_panics() {
        for raw in [
            &[][..],
            &[1, 0, 0, 0],
            &[255, 255, 255, 255, 0, 0, 0, 0, 1],
            &[1, 0, 0, 0, 0, 0, 0, 0, 9],
        ] {
            let (entries, whole) = decode_all(raw);
            assert!(entries.is_empty() && whole == 0, "{raw:?}");
        }
    }
}
