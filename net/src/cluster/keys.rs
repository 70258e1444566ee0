//! Every name the cluster uses in its broker, in one place: the Redis keys
//! (the Lua scripts get the prefixes they build keys from as arguments, so
//! they never spell a name themselves) and the pub/sub channels, which the
//! Redis adapter and the simulated broker share.
//!
//! Keys (all under `rh:`):
//! - `rh:room:<room>:meta`: hash `epoch`, `head` (the last offset assigned);
//! - `rh:room:<room>:log`: stream of messages, entry id `<offset>-1`, field
//!   `m` = the append request JSON, capped at the history length;
//! - `rh:presence:<room>`: hash `<node>:<user id>` -> member JSON;
//! - `rh:node:<node>:rooms`: set of rooms where the node announced presence
//!   (so its entries can be removed when it dies);
//! - `rh:nodes`: sorted set node -> liveness deadline (Redis server time, ms);
//! - `rh:online`: hash node -> its online connection count.

use roomhub_core::NodeId;

/// A room's epoch and head offset.
pub fn room_meta(room: &str) -> String {
    format!("rh:room:{room}:meta")
}

/// A room's retained messages.
pub fn room_log(room: &str) -> String {
    format!("rh:room:{room}:log")
}

/// What precedes a room's name in its presence key.
pub const PRESENCE_PREFIX: &str = "rh:presence:";

/// A room's members on every node.
pub fn presence(room: &str) -> String {
    format!("{PRESENCE_PREFIX}{room}")
}

/// The rooms a node announced presence in: `<prefix><node><suffix>`.
pub const NODE_ROOMS_PREFIX: &str = "rh:node:";
pub const NODE_ROOMS_SUFFIX: &str = ":rooms";

pub fn node_rooms(node: NodeId) -> String {
    format!("{NODE_ROOMS_PREFIX}{}{NODE_ROOMS_SUFFIX}", node.0)
}

/// The presence hash's field for one user of one node.
pub fn presence_field(node: NodeId, user: &str) -> String {
    format!("{}:{user}", node.0)
}

/// Live nodes and their liveness deadlines.
pub const NODES: &str = "rh:nodes";
/// Each node's online count.
pub const ONLINE: &str = "rh:online";

/// The channels nodes subscribe to.
pub mod channel {
    /// Node departures and heartbeats.
    pub const NODES: &str = "rh:nodes";

    /// A room's messages and presence changes.
    pub fn room(room: &str) -> String {
        format!("rh:room:{room}")
    }

    /// Direct messages for a user's connections.
    pub fn user(user: &str) -> String {
        format!("rh:user:{user}")
    }

    const ROOM_PREFIX: &str = "rh:room:";
    const USER_PREFIX: &str = "rh:user:";

    /// Where a channel lives when rooms are spread over several brokers.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Home<'a> {
        /// On every broker ([`NODES`]).
        Everywhere,
        /// With the room or user it is named after.
        Named(&'a str),
    }

    /// The home of one of the channels above.
    pub fn home(channel: &str) -> Home<'_> {
        match channel
            .strip_prefix(ROOM_PREFIX)
            .or_else(|| channel.strip_prefix(USER_PREFIX))
        {
            Some(name) => Home::Named(name),
            None => Home::Everywhere,
        }
    }
}
