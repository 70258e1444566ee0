//! What the store knows of its disk: whether its last write failed (the
//! health check reports it), and, for tests, a switch that makes its writes
//! fail as a full disk does (`ENOSPC`), both for the journal and, through a
//! redb storage backend, for the database.

use std::fmt;
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// Whether the store can write now, shared with the health check, and
/// what its history takes (for `/metrics`).
#[derive(Clone, Debug, Default)]
pub struct StoreHealth(Arc<Health>);

#[derive(Debug, Default)]
struct Health {
    failing: Mutex<Option<String>>,
    stored_bytes: AtomicU64,
}

impl StoreHealth {
    /// Why the store's last write failed; `None` while writes succeed.
    pub fn failing(&self) -> Option<String> {
        self.lock().clone()
    }

    /// Every room's stored messages together, as the disk budget counts
    /// them, at the latest commit.
    pub fn stored_bytes(&self) -> u64 {
        self.0.stored_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn set_stored_bytes(&self, bytes: u64) {
        self.0.stored_bytes.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn wrote(&self) {
        let mut failing = self.lock();
        if failing.is_some() {
            tracing::info!("the store writes again");
            *failing = None;
        }
    }

    pub(crate) fn failed(&self, why: &dyn fmt::Display) {
        let mut failing = self.lock();
        if failing.is_none() {
            tracing::error!("the store cannot write: {why}");
        }
        *failing = Some(why.to_string());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A panic while holding the lock leaves a plain value; go on.
        self.0.failing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Tests only: while set, every write of the store fails with
/// `StorageFull`, as on a full disk (a journal record is half written
/// first, as a real short write leaves it). Never set by the binary.
#[derive(Clone, Debug, Default)]
pub struct DiskFaults {
    full: Arc<AtomicBool>,
    database_full: Arc<AtomicBool>,
}

impl DiskFaults {
    /// Every write fails: the journal's and the database's.
    pub fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::Release);
    }

    /// Only the database's writes fail (the disk filled up between a
    /// journal write and the checkpoint that follows it).
    pub fn set_database_full(&self, full: bool) {
        self.database_full.store(full, Ordering::Release);
    }

    /// Whether the journal's writes fail.
    pub(crate) fn full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// The journal's writes.
    pub(crate) fn check(&self) -> io::Result<()> {
        Self::refuse(self.full())
    }

    /// The database's writes.
    fn check_database(&self) -> io::Result<()> {
        Self::refuse(self.full() || self.database_full.load(Ordering::Acquire))
    }

    fn refuse(full: bool) -> io::Result<()> {
        if full {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            ));
        }
        Ok(())
    }
}

/// The database's file, failing writes while [`DiskFaults`] says full.
#[derive(Debug)]
pub(crate) struct FaultyFile {
    file: FileBackend,
    faults: DiskFaults,
}

impl FaultyFile {
    pub(crate) fn new(file: std::fs::File, faults: DiskFaults) -> io::Result<Self> {
        Ok(FaultyFile {
            file: FileBackend::new(file).map_err(io::Error::other)?,
            faults,
        })
    }
}

impl StorageBackend for FaultyFile {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        // Growing the file is what a full disk refuses.
        if len > self.file.len()? {
            self.faults.check_database()?;
        }
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.faults.check_database()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.faults.check_database()?;
        self.file.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.file.close()
    }

    // The file's locks (one process per database) are the file's own.
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}
