//! The broker contract: what several roomhub nodes share to agree on one
//! order per room.
//!
//! A [`Broker`] is whatever several roomhub nodes share to agree on one order
//! per room: Redis in production ([`crate::cluster::redis`]), a simulated broker
//! in turmoil worlds (`roomhub-sim`). Its contract, which the conformance suite
//! (`sim/tests/broker_conformance.rs`) holds every implementation to:
//!
//! - [`Broker::append`] is one atomic step per message: the room's next
//!   offset (a room without an epoch first gets a fresh one), the message
//!   kept in the room's capped history, and an [`Event::Message`](crate::cluster::wire::Event::Message) published
//!   on the room's channel. The result comes back in batch order; each
//!   room's publications come in its order (rooms kept by different shards
//!   have no order between them).
//! - [`Broker::open`] reads a room's epoch, head offset, retained history
//!   after an offset, and the members present on live nodes, in one atomic
//!   step (a room it has never seen gets a fresh epoch).
//! - [`Broker::presence`] records or withdraws one user of one node in a room
//!   and publishes an [`Event::Presence`](crate::cluster::wire::Event::Presence) on the room's channel.
//! - [`Broker::heartbeat`] keeps a node alive for the node TTL and reports
//!   every live node's online count. Nodes whose TTL ran out are removed with
//!   their presence, and an [`Event::NodeGone`](crate::cluster::wire::Event::NodeGone) is published on
//!   [`channel::NODES`](crate::cluster::keys::channel::NODES).
//! - [`Broker::relay`] publishes an [`Event::Direct`](crate::cluster::wire::Event::Direct) on the recipient's user
//!   channel and says how many subscribers received it.
//! - [`Broker::subscribe`] opens a subscription session: channels are
//!   subscribed (confirmed before the answer) and unsubscribed through its
//!   control queue; published events arrive on its message queue, which
//!   closes when the session is lost.
//!
//! Everything published is encoded by [`Event::encode`](crate::cluster::wire::Event::encode) (or, for messages,
//! by the broker's own atomic step in the same format) and read back with
//! [`Event::decode`](crate::cluster::wire::Event::decode); key and channel names are in [`crate::cluster::keys`].

use std::future::Future;

use bytes::Bytes;
use roomhub_core::{
    AppendRequest, DirectMessage, NodeId, Position, RoomName, RoomSnapshot, SequencedMessage,
    Timestamp, UserRef,
};
use tokio::sync::{mpsc, oneshot};

/// Why the broker could not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerError {
    /// No connection: refused, reset, or not up yet.
    Unreachable(String),
    /// A call or connection attempt took longer than allowed.
    TimedOut,
    /// The broker answered, but not as the contract says (a bad reply, a
    /// refused command, a subscription that was not confirmed).
    Reply(String),
    /// A stored or published record could not be read or written as JSON.
    Codec(String),
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerError::Unreachable(e) => write!(f, "broker unreachable: {e}"),
            BrokerError::TimedOut => f.write_str("broker timed out"),
            BrokerError::Reply(e) => write!(f, "unexpected broker reply: {e}"),
            BrokerError::Codec(e) => write!(f, "broker record unreadable: {e}"),
        }
    }
}

impl std::error::Error for BrokerError {}

impl From<std::io::Error> for BrokerError {
    fn from(e: std::io::Error) -> Self {
        BrokerError::Unreachable(e.to_string())
    }
}

impl From<serde_json::Error> for BrokerError {
    fn from(e: serde_json::Error) -> Self {
        BrokerError::Codec(e.to_string())
    }
}

/// Asks a subscription session to change what it listens to.
#[derive(Debug)]
pub enum SubRequest {
    /// Confirmed through the session's messages ([`Delivery::Subscribed`]);
    /// a refusal is answered at once.
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String),
}

/// What a subscription session hands its reader, in the order the broker
/// sent it.
#[derive(Debug)]
pub enum Delivery {
    /// A publication on a subscribed channel.
    Message(Bytes),
    /// A [`SubRequest::Subscribe`] is confirmed: everything published to
    /// the session before the confirmation came before this (with rooms
    /// sharded over several brokers: everything published by the broker
    /// the channel lives on, which is where its room's presence changes
    /// and node departures are published too). The reader
    /// answers the request once it has handed those on, so a room's
    /// snapshot, read after the confirmation, is never overtaken by an
    /// older publication (a stale presence change or node departure).
    Subscribed(oneshot::Sender<Result<(), BrokerError>>),
}

/// One subscription session. `messages` closes when the session is lost.
/// Both queues are bounded: a node that cannot keep up with what is
/// published stops reading, the broker drops the session (Redis's
/// client output buffer limit), and the node resyncs every room.
pub struct Subscription {
    pub control: mpsc::Sender<SubRequest>,
    pub messages: mpsc::Receiver<Delivery>,
}

/// How long a subscription's confirmation is waited for before the session
/// (or, for a room's open, the open) is given up.
pub const SUBSCRIBE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Subscribe and unsubscribe requests a session queues.
pub const SUBSCRIPTION_CONTROL_REQUESTS: usize = 1024;
/// Publications a session queues before it stops reading the broker.
pub const SUBSCRIPTION_QUEUE_EVENTS: usize = 65_536;

/// The answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Every live node with the online count it last reported.
    pub live: Vec<(NodeId, u64)>,
    /// This node's liveness had run out (or it is new): the other nodes
    /// may have dropped its presence, so it must announce it again.
    pub was_gone: bool,
}

/// The sequencing, history, presence and fan-out contract nodes share.
pub trait Broker: Send + Sync + 'static {
    fn append(
        &self,
        batch: &[AppendRequest],
    ) -> impl Future<Output = Result<Vec<SequencedMessage>, BrokerError>> + Send;

    /// `after`: only messages after this position are wanted (a resync),
    /// when the room is still in its epoch; all retained ones when the
    /// room has another epoch now, or with `None`. Messages older than the
    /// history age limit at `now` are left out.
    fn open(
        &self,
        room: &RoomName,
        after: Option<&Position>,
        now: Timestamp,
    ) -> impl Future<Output = Result<RoomSnapshot, BrokerError>> + Send;

    /// Forgets `room`'s epoch and messages: its next append or open starts
    /// a new lineage (the server API's `history_remove`).
    fn end_lineage(&self, room: &RoomName) -> impl Future<Output = Result<(), BrokerError>> + Send;

    fn presence(
        &self,
        node: NodeId,
        room: &RoomName,
        user: &UserRef,
        present: bool,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Keeps `node` alive; nodes whose liveness ran out (never `node`
    /// itself) are removed and announced gone.
    fn heartbeat(
        &self,
        node: NodeId,
        online: u64,
    ) -> impl Future<Output = Result<Heartbeat, BrokerError>> + Send;

    /// How many of this node's own beats each heartbeat publishes back to
    /// it (one per broker a sharded broker is made of).
    fn beats_per_heartbeat(&self) -> u64 {
        1
    }

    fn relay(
        &self,
        message: &DirectMessage,
    ) -> impl Future<Output = Result<usize, BrokerError>> + Send;

    /// Publishes `payload` once to every node (on the node channel): a
    /// server API call for every node, or a node's answer to one. Returns
    /// how many subscribers received it.
    fn to_nodes(&self, payload: Vec<u8>)
    -> impl Future<Output = Result<usize, BrokerError>> + Send;

    fn subscribe(&self) -> impl Future<Output = Result<Subscription, BrokerError>> + Send;

    /// A reload changed how much history rooms keep: this node's appends
    /// and opens use `max_messages` per room and `max_age_ms` from now on.
    fn set_history(&self, max_messages: usize, max_age_ms: u64);
}
