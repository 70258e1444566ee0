//! What crosses the core's boundary: [`Input`] facts in, [`Output`]
//! instructions out, and the sequencing seam between the hub and whoever owns
//! each room's order (the in-memory [`crate::MemorySequencer`], an embedded
//! store, or a broker).
//!
//! The seam, in order:
//! 1. A member sends a message: the hub validates it and emits
//!    [`Output::Append`]. It does not number it.
//! 2. The sequencer assigns the room's next offset and hands back
//!    [`Input::Sequenced`] (or [`Input::AppendFailed`]).
//! 3. Only then does the hub fan the message out and keep it for recovery;
//!    [`Input::Appended`] acks the sender (if the sender is on this node).
//!
//! Rooms are opened the same way: the first local join emits
//! [`Output::OpenRoom`]; the sequencer answers [`Input::RoomOpened`] with the
//! room's epoch, head offset and retained history; the hub then completes the
//! joins that waited. When the last local member leaves, [`Output::CloseRoom`]
//! lets the sequencer stop sending that room's messages to this node.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::api::{ApiAnswer, ApiCall, HookCall, HookVerdict};
use crate::config::Config;
use crate::ids::{ConnId, Epoch, Identity, NodeId, RoomName, UserRef};
use crate::request::Publish;
use crate::time::Timestamp;

/// A fact from the outside world.
#[derive(Clone, Debug)]
pub enum Input {
    /// A WebSocket upgrade completed for an authenticated identity.
    Connected { conn: ConnId, identity: Identity },
    /// A complete text frame (UTF-8 already checked by the codec).
    Text { conn: ConnId, frame: Bytes },
    /// A binary frame: not part of the protocol.
    Binary { conn: ConnId },
    /// A pong, or any other traffic: the peer is alive.
    Activity { conn: ConnId },
    /// The connection's bounded send queue overflowed.
    QueueOverflow { conn: ConnId },
    /// The connection is gone (closed by either side, or failed).
    Disconnected { conn: ConnId },
    /// Time passed; nothing else happened.
    Tick,
    /// The sequencer numbered a message for a room.
    Sequenced(SequencedMessage),
    /// The sequencer stored and numbered an append from this node: ack it.
    /// Separate from [`Input::Sequenced`] because delivery and the sender's
    /// ack travel different paths in a cluster (the broker's publish versus
    /// the append call's reply).
    Appended(AppendReceipt),
    /// The sequencer could not take an append; the sender gets `UNAVAILABLE`.
    AppendFailed(AppendRequest),
    /// The answer to [`Output::OpenRoom`].
    RoomOpened(RoomSnapshot),
    /// [`Output::OpenRoom`] could not be served; waiting joins get `UNAVAILABLE`.
    RoomOpenFailed { room: RoomName },
    /// Graceful shutdown began: every connection is closed with 1001.
    Shutdown,
    /// The configuration was reloaded: its rules apply to what happens
    /// from now on (new connections, joins, messages, rooms opened), and
    /// connections already open keep working. What identifies the node
    /// (`node_id`, `seed`, `clustered`) and the history byte budget stay
    /// as they were; [`crate::Hub::config`] tells what is in force.
    Reconfigure(Box<Config>),
    // ---- cluster mode only (`Config::clustered`) ----
    /// A user's presence in a room changed on another node.
    RemotePresence {
        room: RoomName,
        node: NodeId,
        user: UserRef,
        present: bool,
    },
    /// Another node stopped refreshing its liveness: its members are gone.
    NodeGone { node: NodeId },
    /// A direct message relayed by another node, for this node's connections
    /// of `message.to`.
    RemoteDirect(Box<DirectMessage>),
    /// The answer to an [`Output::Relay`] that carried an origin.
    Relayed {
        message: Box<DirectMessage>,
        outcome: RelayOutcome,
    },
    /// The broker connection came back after an outage: every open room may
    /// have missed messages and presence changes, so each is resynced, and
    /// presence updates the broker did not take are sent again.
    BrokerReconnected,
    /// Cluster mode: this node's subscription to `room`'s channel, asked
    /// for by an [`Output::OpenRoom`], is confirmed. Presence changes that
    /// reached an opening room before it came from an earlier subscription
    /// (the room was closed and opened again here) and are stale; those
    /// after it are the room's current stream.
    RoomSubscribed { room: RoomName },
    /// The broker did not take an [`Output::Presence`] for `user` in
    /// `room` (cluster mode). What it said does not matter: once the broker
    /// is back, the core sends what is true then.
    PresenceFailed { room: RoomName, user: UserRef },
    /// A backend publishes into a room (`POST /api/publish`): sequenced and
    /// delivered like a member's message, answered with
    /// [`Output::Published`] carrying the same `ticket` (the shell's own
    /// number for the waiting caller).
    Publish { ticket: u64, publish: Publish },
    /// A server API call for this node (see [`crate::api`]), answered with
    /// [`Output::ApiAnswered`] carrying the same `ticket`.
    Api { ticket: u64, call: ApiCall },
    /// The answer to [`Output::EndLineage`]: whether the sequencer ended it.
    LineageEnded { ticket: u64, ended: bool },
    /// The answer to [`Output::Hook`].
    HookAnswered { ticket: u64, verdict: HookVerdict },
    /// The answer to [`Output::VerifyToken`]: who the new token names, or
    /// why it was refused.
    TokenVerified {
        conn: ConnId,
        request_id: Option<Arc<str>>,
        outcome: Result<Identity, Arc<str>>,
    },
}

/// An instruction to the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Queue `frame` (a complete JSON text) on `conn`'s send queue.
    Send {
        conn: ConnId,
        frame: Bytes,
        kind: FrameKind,
    },
    /// Send a WebSocket ping.
    Ping { conn: ConnId },
    /// Send a close frame, then drop the connection. The hub has already
    /// forgotten it; a later `Disconnected` for it is ignored.
    Close {
        conn: ConnId,
        code: u16,
        /// Fixed texts, or one a backend gave (`POST /api/disconnect`).
        reason: std::borrow::Cow<'static, str>,
    },
    /// Give this message the room's next offset; answer with
    /// [`Input::Sequenced`] or [`Input::AppendFailed`].
    Append(Box<AppendRequest>),
    /// Start delivering `room`'s messages to this node and answer with
    /// [`Input::RoomOpened`]. With `after`, the room is already open and the
    /// hub saw a gap: the snapshot should carry the messages after it.
    OpenRoom {
        room: RoomName,
        after: Option<Position>,
    },
    /// No local members are left: stop delivering `room`'s messages here.
    CloseRoom { room: RoomName },
    /// Cluster mode: `user` now has (or no longer has) a connection in `room`
    /// on this node. The broker records it and tells the other nodes.
    Presence {
        room: RoomName,
        user: UserRef,
        present: bool,
    },
    /// Cluster mode: hand a direct message to the other nodes' connections
    /// of `message.to`. With an origin, answer with [`Input::Relayed`].
    Relay(Box<DirectMessage>),
    /// Cluster mode: `user`'s first connection on this node was accepted;
    /// direct messages relayed to them must now reach this node.
    FollowUser { user: Arc<str> },
    /// Cluster mode: `user`'s last connection on this node is gone.
    UnfollowUser { user: Arc<str> },
    /// The answer to [`Input::Publish`].
    Published {
        ticket: u64,
        outcome: PublishOutcome,
    },
    /// The server API's `history_remove`: the sequencer forgets `room`'s
    /// messages and lineage, so that its next message (or open) starts a
    /// new epoch; answer with [`Input::LineageEnded`].
    EndLineage { room: RoomName, ticket: u64 },
    /// The answer to [`Input::Api`].
    ApiAnswered { ticket: u64, answer: ApiAnswer },
    /// Ask the app's hook (off the hub's path); answer with
    /// [`Input::HookAnswered`]. The connection's later requests wait.
    Hook { ticket: u64, call: HookCall },
    /// A connection asked to `refresh` its token: verify `token` (off the
    /// hub's path) and answer with [`Input::TokenVerified`].
    VerifyToken {
        conn: ConnId,
        request_id: Option<Arc<str>>,
        token: Arc<str>,
    },
    /// A reload changed how much history rooms keep: the sequencer keeps
    /// `max_messages` per room for `max_age_ms` from now on (its byte
    /// budget stays).
    HistoryLimits {
        max_messages: usize,
        max_age_ms: u64,
    },
}

/// What became of a backend's publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Stored and numbered: it is in the room's history and being delivered.
    Stored {
        room: RoomName,
        message_id: Arc<str>,
        offset: u64,
    },
    /// The sequencer could not take it (`UNAVAILABLE`); safe to retry.
    Unavailable,
}

/// A backend's publish waiting for its answer, on the node it was made on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishTicket {
    pub node: NodeId,
    pub id: u64,
}

impl Output {
    /// Whether the sequencer (the in-memory one, the store or the cluster's
    /// broker worker) serves this output; the rest are for the shell's own
    /// consumers: connections (`Send`, `Ping`, `Close`) and the caller of a
    /// publish (`Published`).
    pub fn is_for_sequencer(&self) -> bool {
        match self {
            Output::Append(_)
            | Output::OpenRoom { .. }
            | Output::EndLineage { .. }
            | Output::CloseRoom { .. }
            | Output::Presence { .. }
            | Output::Relay(_)
            | Output::FollowUser { .. }
            | Output::UnfollowUser { .. }
            | Output::HistoryLimits { .. } => true,
            Output::Send { .. }
            | Output::Ping { .. }
            | Output::Close { .. }
            | Output::Published { .. }
            | Output::ApiAnswered { .. }
            | Output::Hook { .. }
            | Output::VerifyToken { .. } => false,
        }
    }
}

/// How the shell may treat a frame when a connection's queue is under
/// pressure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Counts against the slow-consumer bound; never dropped.
    Live,
    /// A typing indicator: may be dropped for a queue under pressure, since
    /// it carries nothing to recover.
    Ephemeral,
    /// History the connection asked for with `since`. Never dropped and not
    /// counted against the slow-consumer bound: a client that missed more
    /// than its queue holds must still be able to recover. Its size is
    /// bounded by the history limits instead.
    Replay,
}

/// Close codes (RFC 6455 and the protocol's own), in one place: the hub
/// decides most of them; the shell's codec answers the last three.
pub mod close {
    /// Normal closure: the default echo of a peer's close without a code.
    pub const NORMAL: u16 = 1000;
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Token expired while connected.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// Frame larger than the message size limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// A WebSocket protocol error (bad framing, an unmasked client frame).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Slow consumer: its send queue overflowed; rejoin with `since`.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// No pong or other traffic within the pong wait.
    pub const HEARTBEAT_TIMEOUT: u16 = 4001;
    /// The room's history moved on without this connection. In the
    /// protocol's list; roomhub no longer sends it: such a room is reset
    /// in-band (`room_reset`) and its members stay connected.
    pub const RESYNC: u16 = 4002;
}

/// A place in a room's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: Epoch,
    pub offset: u64,
}

/// Which connection, on which node, asked for an append, and the client's
/// request id to ack it with. Connection numbers restart with the process,
/// so a node id must be unique per process start, not just per machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub node: NodeId,
    pub conn: ConnId,
    pub request_id: Option<Arc<str>>,
    /// The connection's own count of its messages: which one this is, so
    /// it is answered exactly once however many paths report it.
    #[serde(default)]
    pub seq: u64,
}

/// A validated message waiting for its place in a room's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendRequest {
    pub room: RoomName,
    pub sender: UserRef,
    pub content: Arc<str>,
    pub reply_to: Option<Arc<str>>,
    /// When the server accepted it; shown to every recipient.
    pub timestamp: Timestamp,
    /// The connection that sent it; `None` for a backend's publish.
    pub origin: Option<Origin>,
    /// A backend's publish whose caller waits for the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<PublishTicket>,
}

/// A message with its place in the room's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequencedMessage {
    pub room: RoomName,
    pub epoch: Epoch,
    pub offset: u64,
    /// The server message id, unique across rooms and epochs.
    pub id: Arc<str>,
    pub sender: UserRef,
    pub content: Arc<str>,
    pub reply_to: Option<Arc<str>>,
    pub timestamp: Timestamp,
    pub origin: Option<Origin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<PublishTicket>,
}

impl SequencedMessage {
    /// The request numbered `offset` in `epoch`. Its id, `<epoch>-<offset>`,
    /// is the same whichever sequencer numbered it (epochs are random per
    /// room lineage, so ids are unique across rooms and restarts).
    pub fn new(request: AppendRequest, epoch: Epoch, offset: u64) -> Self {
        let id: Arc<str> = format!("{}-{offset}", epoch.as_str()).into();
        SequencedMessage {
            room: request.room,
            epoch,
            offset,
            id,
            sender: request.sender,
            content: request.content,
            reply_to: request.reply_to,
            timestamp: request.timestamp,
            origin: request.origin,
            ticket: request.ticket,
        }
    }
}

/// Who waits for an append's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Requester {
    /// A connection's `send_message`: its ack.
    Conn(Origin),
    /// A backend's publish: [`Output::Published`].
    Api(PublishTicket),
}

/// Proof that an append was stored and numbered, for whoever waits on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendReceipt {
    pub requester: Requester,
    pub room: RoomName,
    pub message_id: Arc<str>,
    pub epoch: Epoch,
    pub offset: u64,
}

impl SequencedMessage {
    /// The receipt for whoever waits: the sending connection, or the
    /// backend that published it.
    pub fn receipt(&self) -> Option<AppendReceipt> {
        let requester = match (&self.origin, self.ticket) {
            (Some(origin), _) => Requester::Conn(origin.clone()),
            (None, Some(ticket)) => Requester::Api(ticket),
            (None, None) => return None,
        };
        Some(AppendReceipt {
            requester,
            room: self.room.clone(),
            message_id: self.id.clone(),
            epoch: self.epoch.clone(),
            offset: self.offset,
        })
    }
}

/// A direct message between users. Not sequenced and not stored: it exists
/// only while it is delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectMessage {
    pub id: Arc<str>,
    pub from: UserRef,
    /// The recipient's user id.
    pub to: Arc<str>,
    pub content: Arc<str>,
    pub timestamp: Timestamp,
    /// The sender's connection, when it waits for the answer (ack or
    /// `RECIPIENT_OFFLINE`); `None` when the sender's node already acked.
    pub origin: Option<Origin>,
}

/// What became of a relayed direct message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayOutcome {
    /// Another node had a connection of the recipient: ack the sender.
    Delivered,
    /// No node had one: `RECIPIENT_OFFLINE`.
    Offline,
    /// The broker could not be reached: `UNAVAILABLE`.
    Unavailable,
}

/// A room member connected to another node, as the broker records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteMember {
    pub node: NodeId,
    pub user: UserRef,
}

/// A room's state as its sequencer knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSnapshot {
    pub room: RoomName,
    pub epoch: Epoch,
    /// The last offset assigned (0 when the room has no messages yet).
    pub head: u64,
    /// Retained messages in offset order. The hub keeps only the contiguous
    /// run that ends at `head`, so a sequencer may return what it has: after
    /// a hole, or without the head, recovery simply reaches back less far.
    pub messages: Vec<SequencedMessage>,
    /// Cluster mode: members on other nodes (empty on a single node).
    #[serde(default)]
    pub presence: Vec<RemoteMember>,
}
