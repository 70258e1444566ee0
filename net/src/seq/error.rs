//! What goes wrong in the store, named by the step that failed.

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
    /// The journal could not be written or set aside.
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

pub(crate) fn journal_failed(e: std::io::Error) -> StoreError {
    StoreError::Journal(e.to_string())
}

pub(crate) fn txn_failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Transaction(e.to_string())
}

pub(crate) fn table_failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Table(e.to_string())
}

pub(crate) fn codec_failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Codec(e.to_string())
}

impl StoreError {
    /// A failure of the database's own reads or writes (a full disk, an
    /// I/O error), after which redb must be opened again.
    pub(crate) fn is_io(&self) -> bool {
        matches!(self, StoreError::Transaction(_) | StoreError::Table(_))
    }
}
