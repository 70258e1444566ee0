//! The server API's calls that the hub answers for its own node: commands
//! on a user's connections, and what the node holds. A cluster sends each
//! call to every node and merges the answers (the shell's part); each
//! node's answer is about its own connections only, so nothing is counted
//! twice.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::{RoomName, UserRef};

/// Close codes a backend may give `POST /api/disconnect`. 4100–4199: do
/// not reconnect (a ban); 4200–4299: reconnect is fine (for example after
/// a permission change). `roomhub.js` follows the same split.
pub const DISCONNECT_CODES: std::ops::RangeInclusive<u16> = 4100..=4299;
/// The code when the backend gives none: disconnected, do not come back.
pub const DISCONNECT_DEFAULT_CODE: u16 = 4100;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum ApiCall {
    /// Close every connection of `user` with `code` and `reason`.
    Disconnect {
        user: Arc<str>,
        code: u16,
        reason: Option<Arc<str>>,
    },
    /// Join every connection of `user` to `room`, whatever its token's
    /// `rooms` claim says (the backend decides).
    Subscribe { user: Arc<str>, room: RoomName },
    /// Take every connection of `user` out of `room` (`room_left`).
    Unsubscribe { user: Arc<str>, room: RoomName },
    /// The users of this node in `room`, with their connection counts.
    Presence { room: RoomName },
    /// This node's rooms with members whose name matches `pattern` (a
    /// `prefix*` pattern or an exact name; all when absent).
    Rooms { pattern: Option<Arc<str>> },
    /// This node's counts.
    Info,
    /// The connections of `user` on this node, with their rooms.
    User { user: Arc<str> },
    /// A page of a room's history, read from its sequencer (the store or
    /// the broker) when the room is not open here. Asked of one node only.
    History {
        room: RoomName,
        limit: usize,
        before: Option<u64>,
    },
    /// End the room's history lineage in its sequencer
    /// ([`crate::Output::EndLineage`]): its messages are gone and its next
    /// one starts a new epoch at offset 1. Asked of one node only; every
    /// node is then asked [`ApiCall::ResetRoom`].
    HistoryRemove { room: RoomName },
    /// The room's lineage may have ended: if it is open here, read its
    /// position again, so that its members get a `room_reset` now rather
    /// than with the room's next message.
    ResetRoom { room: RoomName },
}

/// A user in a room, with how many of its connections are there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresentUser {
    pub user: UserRef,
    pub connections: usize,
}

/// One connection of a user on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserConnection {
    /// The node's number for it (as in the logs: `c42`).
    pub conn: u64,
    /// Rooms joined, in join order.
    pub rooms: Vec<RoomName>,
}

/// A room with members on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMembers {
    pub room: RoomName,
    /// The ids of the users here (so a cluster can count each user once).
    pub users: Vec<Arc<str>>,
    pub connections: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum ApiAnswer {
    /// How many of this node's connections a command reached.
    Connections {
        connections: usize,
    },
    Presence {
        users: Vec<PresentUser>,
    },
    Rooms {
        rooms: Vec<RoomMembers>,
    },
    Info {
        connections: usize,
        users: Vec<Arc<str>>,
        rooms: usize,
    },
    /// A user's connections on this node.
    User {
        connections: Vec<UserConnection>,
    },
    /// A history page: each message its `new_message` frame (JSON text),
    /// oldest first.
    History {
        epoch: String,
        offset: u64,
        messages: Vec<String>,
        has_more: bool,
    },
    /// `history_remove` is done: the room's next message starts a new
    /// lineage.
    Removed,
    /// The room's sequencer could not be read now; retry.
    Unavailable,
}

/// Whether `room` matches a `rooms` filter: `prefix*`, or an exact name.
pub fn room_matches(pattern: Option<&str>, room: &str) -> bool {
    match pattern {
        None => true,
        Some(p) => match p.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => room == p,
        },
    }
}

/// What the hub asks the app's hooks (`Output::Hook`), answered with
/// `Input::HookAnswered` carrying the same `ticket`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookCall {
    /// May `user` join `room`?
    Join { user: UserRef, room: RoomName },
    /// May `user` say `content` in `room` (and as what)?
    Publish {
        user: UserRef,
        room: RoomName,
        content: Arc<str>,
    },
}

/// A hook's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookVerdict {
    /// Go ahead; for a publish, with this content instead when given.
    Allow { content: Option<Arc<str>> },
    /// Refused: the client gets an `error` with this code and message.
    Deny { code: Arc<str>, message: Arc<str> },
    /// The hook failed and hooks fail closed: `UNAVAILABLE`.
    Unavailable,
}
