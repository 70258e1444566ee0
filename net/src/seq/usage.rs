//! The store's disk budget (`--history-max-bytes` with a data directory):
//! what each room's stored messages take, counted in the same transaction
//! that writes them, and the trimming that keeps every room's together
//! within the budget.
//!
//! Each room's count and the number of its latest write are a row of
//! [`USAGE`]; the sum of them all and the count of writes are kept in
//! [`META`]. Over the budget, the
//! rooms written least recently lose their stored messages first (whole
//! rooms, down to nine tenths of the budget), in the transaction that went
//! over it. Their epoch and head stay in the rooms table, so a member who
//! rejoins from before the head is told `recovered: false`.

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::seq::error::{StoreError, table_failed};

/// room → (bytes its stored messages take, the number of the latest
/// write that changed them: every write to any room counts one).
pub(crate) const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("usage");
/// Counters of the whole database.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// [`META`]'s key for every room's stored bytes together.
const STORED_BYTES: &str = "stored_bytes";
/// [`META`]'s key for the writes counted so far.
const WRITES: &str = "writes";

/// (room, offset) → message JSON, as the store's messages table holds it.
type Messages<'t> = Table<'t, (&'static str, u64), &'static [u8]>;

/// What one stored message costs the budget: its key and its JSON.
pub(crate) fn entry_bytes(room: &str, json_len: usize) -> u64 {
    (room.len() + 8 + json_len) as u64
}

/// The budget's tables, open in one write transaction.
pub(crate) struct Usage<'t> {
    rooms: Table<'t, &'static str, (u64, u64)>,
    meta: Table<'t, &'static str, u64>,
    total: u64,
    /// The latest write's number.
    write: u64,
}

impl<'t> Usage<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction) -> Result<Usage<'t>, StoreError> {
        let rooms = txn.open_table(USAGE).map_err(table_failed)?;
        let meta = txn.open_table(META).map_err(table_failed)?;
        let counter = |key| -> Result<u64, StoreError> {
            Ok(meta
                .get(key)
                .map_err(table_failed)?
                .map_or(0, |v| v.value()))
        };
        let total = counter(STORED_BYTES)?;
        let write = counter(WRITES)?;
        Ok(Usage {
            rooms,
            meta,
            total,
            write,
        })
    }

    /// `room` was written: `added` bytes more, `removed` fewer. Rooms
    /// count as written in the order of these calls.
    pub(crate) fn wrote(&mut self, room: &str, added: u64, removed: u64) -> Result<(), StoreError> {
        self.write += 1;
        let held = self
            .rooms
            .get(room)
            .map_err(table_failed)?
            .map_or(0, |v| v.value().0);
        let now = (held + added).saturating_sub(removed);
        self.rooms
            .insert(room, (now, self.write))
            .map_err(table_failed)?;
        self.total = (self.total + now).saturating_sub(held);
        Ok(())
    }

    /// `room`'s stored messages are gone.
    pub(crate) fn cleared(&mut self, room: &str) -> Result<(), StoreError> {
        if let Some(held) = self.rooms.remove(room).map_err(table_failed)? {
            self.total = self.total.saturating_sub(held.value().0);
        }
        Ok(())
    }

    /// Over `budget` (0: none), deletes the stored messages of the rooms
    /// written least recently until the rest take nine tenths of it.
    /// Returns how many rooms lost their history.
    pub(crate) fn enforce(
        &mut self,
        messages: &mut Messages<'_>,
        budget: u64,
    ) -> Result<usize, StoreError> {
        if budget == 0 || self.total <= budget {
            return Ok(0);
        }
        let mut held = Vec::new();
        for row in self.rooms.iter().map_err(table_failed)? {
            let (room, value) = row.map_err(table_failed)?;
            let (bytes, written) = value.value();
            held.push((written, room.value().to_string(), bytes));
        }
        held.sort_unstable();
        let target = budget - budget / 10;
        let mut trimmed = 0;
        for (_, room, _) in held {
            if self.total <= target {
                break;
            }
            let room = room.as_str();
            messages
                .retain_in((room, 0u64)..=(room, u64::MAX), |_, _| false)
                .map_err(table_failed)?;
            self.cleared(room)?;
            trimmed += 1;
        }
        Ok(trimmed)
    }

    /// Writes the total back (the rows are written as they change) and
    /// returns it.
    pub(crate) fn finish(mut self) -> Result<u64, StoreError> {
        self.meta
            .insert(STORED_BYTES, self.total)
            .map_err(table_failed)?;
        self.meta.insert(WRITES, self.write).map_err(table_failed)?;
        Ok(self.total)
    }

    /// A database written before the budget existed (no total yet): counts
    /// every room's stored messages once.
    pub(crate) fn count_if_new(&mut self, messages: &Messages<'_>) -> Result<(), StoreError> {
        if self.meta.get(STORED_BYTES).map_err(table_failed)?.is_some() {
            return Ok(());
        }
        let mut per_room: Vec<(String, u64)> = Vec::new();
        for row in messages.iter().map_err(table_failed)? {
            let (key, value) = row.map_err(table_failed)?;
            let (room, _) = key.value();
            let bytes = entry_bytes(room, value.value().len());
            match per_room.last_mut() {
                Some((last, sum)) if last == room => *sum += bytes,
                _ => per_room.push((room.to_string(), bytes)),
            }
        }
        for (room, bytes) in per_room {
            self.wrote(&room, bytes, 0)?;
        }
        Ok(())
    }
}
