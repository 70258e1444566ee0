//! Every name the cluster uses in its broker, in one place: the Redis keys
//! (the Lua scripts get every key as an argument, so they never spell a
//! name themselves) and the pub/sub channels, which the Redis adapter and
//! the simulated broker share.
//!
//! A room's keys and channel share one Redis Cluster hash tag, `{<room>}`,
//! so they live in one slot (and on one shard when rooms are sharded). A
//! name with a brace in it (which would end or nest the tag) is tagged
//! `{#<crc32 hex>}` instead and written out after it: `rh:room:{#1a2b3c4d}:a}b`.
//!
//! Keys of a room (`<R>` is `{<room>}`, or `{#<crc32 hex>}:<room>`):
//! - `rh:room:<R>:meta`: hash `epoch`, `head` (the last offset assigned);
//! - `rh:room:<R>:log`: stream of messages, entry id `<offset>-1`, field
//!   `m` = the append request JSON, capped at the history length;
//! - `rh:presence:<R>`: hash `<node>:<user id>` -> member JSON.
//!
//! Keys of the nodes, one set per Redis ([`NodeKeys`]; on a Redis Cluster
//! master `rh:` becomes `rh:{<tag>}:` with a tag of a slot it serves):
//! - `rh:node:<node>:rooms`: set of the presence keys where the node
//!   announced presence (so its entries can be removed when it dies);
//! - `rh:nodes`: sorted set node -> liveness deadline (Redis server time, ms);
//! - `rh:online`: hash node -> its online connection count.

use std::borrow::Cow;

use roomhub_core::NodeId;

/// The hash tag of a room's or user's keys and channel.
pub fn tag(name: &str) -> Cow<'_, str> {
    if name.contains(['{', '}']) {
        Cow::Owned(format!("#{:08x}", crc32fast::hash(name.as_bytes())))
    } else {
        Cow::Borrowed(name)
    }
}

/// `<prefix>{<name>}`, or `<prefix>{#<crc32 hex>}:<name>` for a name with a
/// brace.
fn tagged(prefix: &str, name: &str) -> String {
    match tag(name) {
        Cow::Borrowed(name) => format!("{prefix}{{{name}}}"),
        Cow::Owned(hashed) => format!("{prefix}{{{hashed}}}:{name}"),
    }
}

/// A key's or channel's hash tag by Redis Cluster's rule: what lies between
/// its first `{` and the next `}`, when that is not empty.
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let rest = &key[open + 1..];
    let close = rest.find('}')?;
    (close > 0).then(|| &rest[..close])
}

/// A room's epoch and head offset.
pub fn room_meta(room: &str) -> String {
    tagged("rh:room:", room) + ":meta"
}

/// A room's retained messages.
pub fn room_log(room: &str) -> String {
    tagged("rh:room:", room) + ":log"
}

/// A room's members on every node.
pub fn presence(room: &str) -> String {
    tagged("rh:presence:", room)
}

/// The presence hash's field for one user of one node.
pub fn presence_field(node: NodeId, user: &str) -> String {
    format!("{}:{user}", node.0)
}

/// The keys of node liveness on one Redis, and its nodes channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeKeys {
    /// Live nodes and their liveness deadlines.
    pub nodes: String,
    /// Each node's online count.
    pub online: String,
    /// The channel of node departures and beats on this Redis.
    pub channel: String,
    prefix: String,
}

impl NodeKeys {
    /// On a standalone Redis: `rh:nodes`, `rh:online`, `rh:node:<n>:rooms`.
    pub fn standalone() -> Self {
        NodeKeys::with_prefix("rh:".into())
    }

    /// On a Redis Cluster master: every name under `rh:{<tag>}:`, with a
    /// tag whose slot the master serves.
    pub fn tagged(tag: &str) -> Self {
        NodeKeys::with_prefix(format!("rh:{{{tag}}}:"))
    }

    fn with_prefix(prefix: String) -> Self {
        NodeKeys {
            nodes: format!("{prefix}nodes"),
            online: format!("{prefix}online"),
            channel: format!("{prefix}nodes"),
            prefix,
        }
    }

    /// The presence keys a node announced presence in.
    pub fn node_rooms(&self, node: NodeId) -> String {
        format!("{}node:{}:rooms", self.prefix, node.0)
    }

    /// What precedes a node's id in [`NodeKeys::node_rooms`], and follows it.
    pub fn node_rooms_affixes(&self) -> (String, &'static str) {
        (format!("{}node:", self.prefix), ":rooms")
    }
}

/// The channels nodes subscribe to.
pub mod channel {
    use super::{hash_tag, tagged};

    /// Node departures and heartbeats: the name nodes subscribe by; each
    /// Redis carries it on its own [`NodeKeys::channel`](super::NodeKeys).
    pub const NODES: &str = "rh:nodes";

    /// A room's messages and presence changes.
    pub fn room(room: &str) -> String {
        tagged("rh:room:", room)
    }

    /// Direct messages for a user's connections.
    pub fn user(user: &str) -> String {
        tagged("rh:user:", user)
    }

    /// Where a channel lives when rooms are spread over several brokers.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Home<'a> {
        /// On every broker ([`NODES`]).
        Everywhere,
        /// With the room or user whose hash tag this is.
        Tagged(&'a str),
    }

    /// The home of one of the channels above.
    pub fn home(channel: &str) -> Home<'_> {
        match hash_tag(channel) {
            Some(tag) => Home::Tagged(tag),
            None => Home::Everywhere,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rooms_keys_and_channel_share_one_hash_tag() {
        assert_eq!(room_meta("general"), "rh:room:{general}:meta");
        assert_eq!(presence("general"), "rh:presence:{general}");
        assert_eq!(channel::room("general"), "rh:room:{general}");
        for name in ["general", "a}b", "{x}", "}"] {
            let tag = tag(name);
            for key in [
                room_meta(name),
                room_log(name),
                presence(name),
                channel::room(name),
            ] {
                assert_eq!(hash_tag(&key), Some(&*tag), "{key}");
            }
        }
        assert_eq!(
            room_meta("a}b"),
            format!("rh:room:{{#{:08x}}}:a}}b:meta", crc32fast::hash(b"a}b"))
        );
        // Distinct names never share a key.
        assert_ne!(room_meta("#00000000"), room_meta("{"));
        assert_eq!(channel::home(channel::NODES), channel::Home::Everywhere);
        assert_eq!(
            channel::home(&channel::user("bob")),
            channel::Home::Tagged("bob")
        );
    }

    #[test]
    fn node_keys_on_a_cluster_master_share_its_tag() {
        let keys = NodeKeys::tagged("7");
        for key in [&keys.nodes, &keys.online, &keys.channel] {
            assert_eq!(hash_tag(key), Some("7"));
        }
        assert_eq!(hash_tag(&keys.node_rooms(NodeId(3))), Some("7"));
        let plain = NodeKeys::standalone();
        assert_eq!(
            (plain.nodes.as_str(), plain.channel.as_str()),
            ("rh:nodes", channel::NODES)
        );
        assert_eq!(plain.node_rooms(NodeId(3)), "rh:node:3:rooms");
    }
}
