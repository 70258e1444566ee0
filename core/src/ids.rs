//! Names of things: connections, users, rooms, room lineages, and the
//! authenticated identity a connection carries.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// A connection, numbered by the shell. Unique within one node for the life of
/// the process; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// One server process in a cluster. A single node uses 0 unless configured.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NodeId(pub u64);

/// A validated room name: 1..=max bytes of UTF-8 with no control characters.
/// Cheap to clone (one reference count).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoomName(Arc<str>);

impl RoomName {
    /// Checks a client-supplied room name. `max_bytes` is the configured limit.
    pub fn parse(name: &str, max_bytes: usize) -> Result<RoomName, RoomNameError> {
        if name.is_empty() {
            return Err(RoomNameError::Empty);
        }
        if name.len() > max_bytes {
            return Err(RoomNameError::TooLong);
        }
        if name.chars().any(char::is_control) {
            return Err(RoomNameError::ControlCharacter);
        }
        Ok(RoomName(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomNameError {
    Empty,
    TooLong,
    ControlCharacter,
}

impl RoomNameError {
    pub fn describe(self) -> &'static str {
        match self {
            RoomNameError::Empty => "room name must not be empty",
            RoomNameError::TooLong => "room name is longer than the limit",
            RoomNameError::ControlCharacter => "room name contains a control character",
        }
    }
}

/// The lineage of a room's history. Offsets are only comparable within one
/// epoch; a new epoch means the history before it is gone.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub Arc<str>);

impl Epoch {
    pub fn new(s: &str) -> Self {
        Epoch(Arc::from(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who a user is, as shown to others: `{id, name}` on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserRef {
    pub id: Arc<str>,
    pub name: Arc<str>,
}

/// Which rooms a token lets its holder join: exact names, or `prefix*`
/// patterns. `None` in an [`Identity`] means any room.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomAccess {
    exact: Vec<Arc<str>>,
    prefixes: Vec<Arc<str>>,
}

impl RoomAccess {
    pub fn new<I, S>(patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut access = RoomAccess::default();
        for p in patterns {
            let p = p.as_ref();
            match p.strip_suffix('*') {
                Some(prefix) => access.prefixes.push(Arc::from(prefix)),
                None => access.exact.push(Arc::from(p)),
            }
        }
        access
    }

    pub fn allows(&self, room: &str) -> bool {
        self.exact.iter().any(|r| &**r == room)
            || self.prefixes.iter().any(|p| room.starts_with(&**p))
    }
}

/// A verified identity, produced by the shell's authentication step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: UserRef,
    /// `None`: any room may be joined.
    pub rooms: Option<RoomAccess>,
    /// When the token expires; the connection is closed with 1008 then.
    pub expires_at: Option<Timestamp>,
}

impl Identity {
    /// An identity whose display name is its id and who may join any room.
    pub fn user(id: &str) -> Self {
        Identity::named(id, id)
    }

    pub fn named(id: &str, name: &str) -> Self {
        Identity {
            user: UserRef {
                id: Arc::from(id),
                name: Arc::from(name),
            },
            rooms: None,
            expires_at: None,
        }
    }

    pub fn may_join(&self, room: &RoomName) -> bool {
        self.rooms.as_ref().is_none_or(|a| a.allows(room.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_validated() {
        assert!(RoomName::parse("general", 64).is_ok());
        assert_eq!(RoomName::parse("", 64), Err(RoomNameError::Empty));
        assert_eq!(
            RoomName::parse(&"x".repeat(65), 64),
            Err(RoomNameError::TooLong)
        );
        assert_eq!(
            RoomName::parse("a\u{0}b", 64),
            Err(RoomNameError::ControlCharacter)
        );
        assert_eq!(
            RoomName::parse("a\u{85}b", 64),
            Err(RoomNameError::ControlCharacter)
        );
        // 64 bytes of multi-byte characters is fine; the limit is bytes.
        assert!(RoomName::parse(&"é".repeat(32), 64).is_ok());
        assert_eq!(
            RoomName::parse(&"é".repeat(33), 64),
            Err(RoomNameError::TooLong)
        );
    }

    #[test]
    fn room_access_patterns() {
        let a = RoomAccess::new(["lobby", "team-*"]);
        assert!(a.allows("lobby"));
        assert!(a.allows("team-red"));
        assert!(a.allows("team-"));
        assert!(!a.allows("lobby2"));
        assert!(!a.allows("team"));
        let all = RoomAccess::new(["*"]);
        assert!(all.allows("anything"));
    }
}
