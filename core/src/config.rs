//! The hub's limits and periods. Defaults are the seed's (see PROTOCOL.md).

use crate::ids::NodeId;

/// Everything the core decides with. Every collection the core keeps is
/// bounded by one of these numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node, stamped on append requests so only the sender's node acks.
    pub node_id: NodeId,
    /// Seeds the hub's RNG (direct-message id prefix). Same seed, same ids.
    pub seed: u64,
    /// A text frame longer than this closes the connection with 1009.
    pub max_message_bytes: usize,
    /// `content` of `send_message` / `send_direct`, in UTF-8 bytes.
    pub max_content_bytes: usize,
    pub max_room_name_bytes: usize,
    /// The client's request `id`.
    pub max_client_id_bytes: usize,
    /// `reply_to` of `send_message`.
    pub max_reply_to_bytes: usize,
    pub max_rooms_per_connection: usize,
    /// Messages kept per room for recovery.
    pub history_max_messages: usize,
    /// How long a message stays recoverable.
    pub history_max_age_ms: u64,
    /// Every room's kept messages together, in bytes (0: no bound); over
    /// it, the least recently active rooms lose their history first.
    pub history_max_bytes: usize,
    pub ping_interval_ms: u64,
    /// No traffic (pong or anything else) for this long closes the connection.
    pub pong_wait_ms: u64,
    /// Token refill per second for messages that reach other people
    /// (`send_message`, `send_direct`, `typing`, `stop_typing`). 0 = no limit.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// Requests a connection may queue behind a join that waits for its room
    /// to open (cluster and store modes); beyond it they get `RATE_LIMITED`.
    pub max_deferred_requests: usize,
    /// Out-of-order sequenced messages held per room while a gap is filled.
    pub max_gap_buffer: usize,
    /// Cluster mode: presence updates the broker did not take, remembered
    /// until it is back (beyond this, some are dropped; the rooms still
    /// open here are reconciled from their snapshots anyway).
    pub max_presence_retries: usize,
    /// Several nodes share rooms through a broker: the hub reports local
    /// presence ([`crate::Output::Presence`]), merges other nodes' presence,
    /// and relays direct messages for users it does not have.
    pub clustered: bool,
    /// The app's join hook decides every join ([`crate::Output::Hook`]).
    pub join_hook: bool,
    /// The app's publish hook decides every member's message (and may
    /// replace its content).
    pub publish_hook: bool,
    /// Rules for rooms named `<namespace>:<rest>`; other rooms keep the
    /// defaults.
    pub namespaces: Vec<Namespace>,
}

/// What a namespace changes for its rooms (`ns:rest`). Each rule defaults
/// to what a room without a namespace gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: std::sync::Arc<str>,
    /// `user_joined`/`user_left` are sent, and `room_info`/`online_users`
    /// list the users.
    pub presence: bool,
    /// Members may `send_message`; otherwise only the server API publishes.
    pub client_publish: bool,
    /// Members may send `typing`/`stop_typing`.
    pub typing: bool,
    /// Users a room holds at most (across the cluster, as the node knows
    /// them); `None`: no limit.
    pub max_members: Option<usize>,
    /// Whether the join and publish hooks (when configured) are asked.
    pub join_hook: bool,
    pub publish_hook: bool,
    /// Messages a room keeps for `history` and recovery (0: none, so a
    /// rejoin that missed anything gets `recovered: false`); `None`: the
    /// server's `history_max_messages`.
    pub history_size: Option<usize>,
    /// How long a message stays in a room's history; `None`: the server's
    /// `history_max_age_ms`.
    pub history_age_ms: Option<u64>,
}

impl Namespace {
    /// A namespace with every rule at its default.
    pub fn new(name: &str) -> Self {
        Namespace {
            name: name.into(),
            presence: true,
            client_publish: true,
            typing: true,
            max_members: None,
            join_hook: true,
            publish_hook: true,
            history_size: None,
            history_age_ms: None,
        }
    }
}

impl Config {
    /// The rules of the namespace `room` belongs to, if it has one that is
    /// configured.
    pub fn namespace_of(&self, room: &str) -> Option<&Namespace> {
        let (ns, _) = room.split_once(':')?;
        self.namespaces.iter().find(|n| &*n.name == ns)
    }

    /// How much of `room`'s history is kept and shown: messages, and their
    /// age in milliseconds.
    pub fn history_of(&self, room: &str) -> (usize, u64) {
        let ns = self.namespace_of(room);
        (
            ns.and_then(|n| n.history_size)
                .unwrap_or(self.history_max_messages),
            ns.and_then(|n| n.history_age_ms)
                .unwrap_or(self.history_max_age_ms),
        )
    }

    /// What a sequencer keeps of every room: the most any room shows (it
    /// does not know namespaces; the hub trims each room to its own).
    pub fn history_retained(&self) -> (usize, u64) {
        self.namespaces.iter().fold(
            (self.history_max_messages, self.history_max_age_ms),
            |(n, age), ns| {
                (
                    n.max(ns.history_size.unwrap_or(0)),
                    age.max(ns.history_age_ms.unwrap_or(0)),
                )
            },
        )
    }

    /// Presence events and lists in `room`.
    pub fn presence_in(&self, room: &str) -> bool {
        self.namespace_of(room).is_none_or(|n| n.presence)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: NodeId(0),
            seed: 0,
            max_message_bytes: 4096,
            max_content_bytes: 2000,
            max_room_name_bytes: 64,
            max_client_id_bytes: 64,
            max_reply_to_bytes: 64,
            max_rooms_per_connection: 100,
            history_max_messages: 1000,
            history_max_age_ms: 24 * 60 * 60 * 1000,
            history_max_bytes: 0,
            ping_interval_ms: 54_000,
            pong_wait_ms: 60_000,
            rate_limit_per_second: 1,
            rate_limit_burst: 10,
            max_deferred_requests: 64,
            max_gap_buffer: 4096,
            max_presence_retries: 4096,
            clustered: false,
            join_hook: false,
            publish_hook: false,
            namespaces: Vec::new(),
        }
    }
}
