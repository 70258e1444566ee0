//! Cluster mode: the broker seam, and the node's side of it.
//!
//! A [`Broker`] is whatever several roomhub nodes share to agree on one order
//! per room: Redis in production ([`crate::redis_broker`]), a simulated broker
//! in turmoil worlds. Its contract, which the conformance suite
//! (`tests/tests/broker_conformance.rs`) holds every implementation to:
//!
//! - [`Broker::append`] is one atomic step per message: the room's next
//!   offset (a room without an epoch first gets a fresh one), the message
//!   kept in the room's capped history, and an [`Event::Message`] published
//!   on the room's channel. The result comes back in batch order.
//! - [`Broker::open`] reads a room's epoch, head offset, retained history
//!   after an offset, and the members present on live nodes, in one atomic
//!   step (a room it has never seen gets a fresh epoch).
//! - [`Broker::presence`] records or withdraws one user of one node in a room
//!   and publishes an [`Event::Presence`] on the room's channel.
//! - [`Broker::heartbeat`] keeps a node alive for the node TTL and reports
//!   every live node's online count. Nodes whose TTL ran out are removed with
//!   their presence, and an [`Event::NodeGone`] is published on
//!   [`channel::NODES`].
//! - [`Broker::relay`] publishes an [`Event::Direct`] on the recipient's user
//!   channel and says how many subscribers received it.
//! - [`Broker::subscribe`] opens a subscription session: channels are
//!   subscribed (confirmed before the answer) and unsubscribed through its
//!   control queue; published events arrive on its message queue, which
//!   closes when the session is lost.
//!
//! Everything published is encoded by [`Event::encode`] (or, for messages,
//! by the broker's own atomic step in the same format) and read back with
//! [`Event::decode`].

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use roomhub_core::{
    AppendRequest, DirectMessage, Epoch, Input, NodeId, Output, RelayOutcome, RoomName,
    RoomSnapshot, SequencedMessage, Timestamp, UserRef,
};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::hub_task::HubEvent;

/// The broker could not do what was asked (unreachable, timed out, refused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerError(pub String);

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for BrokerError {
    fn from(e: E) -> Self {
        BrokerError(e.to_string())
    }
}

/// The channels nodes subscribe to.
pub mod channel {
    /// Node departures.
    pub const NODES: &str = "rh:nodes";

    /// A room's messages and presence changes.
    pub fn room(room: &str) -> String {
        format!("rh:room:{room}")
    }

    /// Direct messages for a user's connections.
    pub fn user(user: &str) -> String {
        format!("rh:user:{user}")
    }
}

/// What a broker publishes to the nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Message(SequencedMessage),
    Presence(PresenceEvent),
    NodeGone(NodeId),
    Direct(DirectMessage),
    /// A node's heartbeat, published on [`channel::NODES`]: a node that
    /// stops hearing its own beats knows its subscription died silently.
    Beat(NodeId),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEvent {
    pub room: RoomName,
    pub node: NodeId,
    pub user: UserRef,
    pub present: bool,
}

impl Event {
    /// The published form: a one-letter tag, a space, then the body.
    /// A message is `m <offset> <epoch> <append request JSON>`, so that a
    /// broker can number it without parsing JSON.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Event::Message(m) => {
                let request = AppendRequest {
                    room: m.room.clone(),
                    sender: m.sender.clone(),
                    content: m.content.clone(),
                    reply_to: m.reply_to.clone(),
                    timestamp: m.timestamp,
                    origin: m.origin.clone(),
                };
                message_payload(m.offset, m.epoch.as_str(), &request_json(&request))
            }
            Event::Presence(p) => tagged(b'p', &serde_json::to_vec(p).unwrap_or_default()),
            Event::NodeGone(node) => format!("g {}", node.0).into_bytes(),
            Event::Beat(node) => format!("h {}", node.0).into_bytes(),
            Event::Direct(d) => tagged(b'd', &serde_json::to_vec(d).unwrap_or_default()),
        }
    }

    /// Reads a published payload; `None` for anything malformed.
    pub fn decode(payload: &[u8]) -> Option<Event> {
        let (&tag, rest) = payload.split_first()?;
        let body = rest.strip_prefix(b" ")?;
        match tag {
            b'm' => {
                let text = std::str::from_utf8(body).ok()?;
                let (offset, rest) = text.split_once(' ')?;
                let (epoch, json) = rest.split_once(' ')?;
                let request: AppendRequest = serde_json::from_str(json).ok()?;
                Some(Event::Message(sequenced(
                    request,
                    epoch,
                    offset.parse().ok()?,
                )))
            }
            b'p' => serde_json::from_slice(body).ok().map(Event::Presence),
            b'g' => {
                let text = std::str::from_utf8(body).ok()?;
                text.parse().ok().map(|n| Event::NodeGone(NodeId(n)))
            }
            b'd' => serde_json::from_slice(body).ok().map(Event::Direct),
            b'h' => {
                let text = std::str::from_utf8(body).ok()?;
                text.parse().ok().map(|n| Event::Beat(NodeId(n)))
            }
            _ => None,
        }
    }
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    out.push(tag);
    out.push(b' ');
    out.extend_from_slice(body);
    out
}

/// The JSON a broker keeps for a message before it is numbered.
pub fn request_json(request: &AppendRequest) -> String {
    serde_json::to_string(request).expect("an append request always serializes")
}

/// `m <offset> <epoch> <request JSON>`.
pub fn message_payload(offset: u64, epoch: &str, request_json: &str) -> Vec<u8> {
    format!("m {offset} {epoch} {request_json}").into_bytes()
}

/// A stored request with its place: the message every node delivers.
pub fn sequenced(request: AppendRequest, epoch: &str, offset: u64) -> SequencedMessage {
    SequencedMessage::new(request, Epoch::new(epoch), offset)
}

/// A room's snapshot from what a broker read: its epoch and head, the
/// stored (offset, request JSON) entries, and the members on live nodes.
/// Messages older than `max_age_ms` at `now` are left out: retention by age
/// applies to what is offered for recovery.
pub fn snapshot(
    room: &RoomName,
    epoch: &str,
    head: u64,
    entries: Vec<(u64, String)>,
    presence: Vec<roomhub_core::RemoteMember>,
    now: Timestamp,
    max_age_ms: u64,
) -> Result<RoomSnapshot, BrokerError> {
    let mut messages = Vec::with_capacity(entries.len());
    for (offset, json) in entries {
        let request: AppendRequest = serde_json::from_str(&json)?;
        if now.ms_since(request.timestamp) <= max_age_ms {
            messages.push(sequenced(request, epoch, offset));
        }
    }
    Ok(RoomSnapshot {
        room: room.clone(),
        epoch: Epoch::new(epoch),
        head,
        messages,
        presence,
    })
}

/// Asks a subscription session to change what it listens to.
#[derive(Debug)]
pub enum SubRequest {
    /// Answered once the broker confirmed the subscription.
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String),
}

/// One subscription session. `messages` closes when the session is lost.
pub struct Subscription {
    pub control: mpsc::UnboundedSender<SubRequest>,
    pub messages: mpsc::UnboundedReceiver<Bytes>,
}

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

    /// `after`: only messages after this offset are wanted (a resync);
    /// `None` for all retained ones. Messages older than the history age
    /// limit at `now` are left out.
    fn open(
        &self,
        room: &RoomName,
        after: Option<u64>,
        now: Timestamp,
    ) -> impl Future<Output = Result<RoomSnapshot, BrokerError>> + Send;

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

    fn relay(
        &self,
        message: &DirectMessage,
    ) -> impl Future<Output = Result<usize, BrokerError>> + Send;

    fn subscribe(&self) -> impl Future<Output = Result<Subscription, BrokerError>> + Send;
}

/// How a node keeps itself known to the cluster.
#[derive(Clone, Copy, Debug)]
pub struct ClusterTiming {
    /// A node that has not refreshed its liveness for this long is gone.
    pub node_ttl: Duration,
    /// The longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl ClusterTiming {
    fn heartbeat_every(&self) -> Duration {
        self.node_ttl / 4
    }
}

/// What the hub task hands the cluster side.
pub(crate) enum ClusterCmd {
    Output(Output),
    /// A user's first local connection opened: listen for direct messages.
    UserOnline(Arc<str>),
    /// A user's last local connection closed.
    UserOffline(Arc<str>),
}

/// Online counts the HTTP side reads.
#[derive(Default)]
pub struct ClusterView {
    /// Connections on the other live nodes, as of the last heartbeat.
    pub remote_online: AtomicUsize,
    /// The broker is reachable (the subscription session is up).
    pub healthy: AtomicBool,
    /// Tells the subscription session to start over: a heartbeat failed,
    /// so the session may be stuck on a link that silently died.
    reset: tokio::sync::Notify,
    /// This node's own beats heard on its subscription.
    beats_heard: std::sync::atomic::AtomicU64,
}

impl ClusterView {
    /// A broker call failed: count the broker as gone and start a new
    /// subscription session (the old one may be silently dead), which
    /// resyncs every room once it is up.
    fn broker_failed(&self) {
        self.healthy.store(false, Ordering::Relaxed);
        self.reset.notify_one();
    }
}

/// Starts the node's cluster side: the subscription session, the request
/// worker and the heartbeat. Returns the queue the hub task feeds.
pub(crate) fn spawn<B: Broker>(
    broker: Arc<B>,
    node: NodeId,
    timing: ClusterTiming,
    clock: Clock,
    events: mpsc::Sender<HubEvent>,
    local_online: Arc<AtomicUsize>,
    view: Arc<ClusterView>,
) -> mpsc::UnboundedSender<ClusterCmd> {
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (sub_tx, sub_rx) = mpsc::unbounded_channel();
    let (reannounce_tx, reannounce_rx) = mpsc::unbounded_channel();
    tokio::spawn(subscriber(
        broker.clone(),
        node,
        timing,
        sub_rx,
        events.clone(),
        view.clone(),
        reannounce_tx,
    ));
    tokio::spawn(worker(
        broker.clone(),
        node,
        clock,
        cmd_rx,
        reannounce_rx,
        sub_tx,
        events,
        view.clone(),
    ));
    tokio::spawn(heartbeat(broker, node, timing, local_online, view));
    cmd_tx
}

async fn heartbeat<B: Broker>(
    broker: Arc<B>,
    node: NodeId,
    timing: ClusterTiming,
    local_online: Arc<AtomicUsize>,
    view: Arc<ClusterView>,
) {
    let mut first = true;
    let (mut heard, mut silent_rounds) = (0u64, 0u32);
    let mut every = tokio::time::interval(timing.heartbeat_every());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let online = local_online.load(Ordering::Relaxed) as u64;
        match broker.heartbeat(node, online).await {
            Ok(Heartbeat { live, was_gone }) => {
                if was_gone && !first {
                    // Its users were dropped by the others, and whatever was
                    // published meanwhile may be lost: start over (the new
                    // session announces this node's presence again).
                    warn!("this node's liveness had run out; reconnecting");
                    view.broker_failed();
                }
                first = false;
                // Each beat is published back to this node; silence on a
                // healthy session means the subscription died unnoticed.
                let now_heard = view.beats_heard.load(Ordering::Relaxed);
                if now_heard == heard && view.healthy.load(Ordering::Relaxed) {
                    silent_rounds += 1;
                } else {
                    silent_rounds = 0;
                }
                heard = now_heard;
                if silent_rounds >= 3 {
                    warn!("not hearing this node's own beats; restarting the broker session");
                    silent_rounds = 0;
                    view.broker_failed();
                }
                let others: u64 = live
                    .iter()
                    .filter(|(n, _)| *n != node)
                    .map(|(_, c)| c)
                    .sum();
                view.remote_online.store(
                    usize::try_from(others).unwrap_or(usize::MAX),
                    Ordering::Relaxed,
                );
            }
            Err(e) => {
                // A partition can leave the subscription connection open
                // but dead; treat the broker as gone until a new session
                // proves otherwise.
                warn!("cluster heartbeat failed: {e}; restarting the broker session");
                view.broker_failed();
            }
        }
    }
}

/// Keeps one subscription session up, with every channel the node needs,
/// and turns what is published into hub inputs. A lost session is
/// re-established with backoff; the hub is then told to resync its rooms
/// and the worker re-announces this node's presence.
async fn subscriber<B: Broker>(
    broker: Arc<B>,
    node: NodeId,
    timing: ClusterTiming,
    mut requests: mpsc::UnboundedReceiver<SubRequest>,
    events: mpsc::Sender<HubEvent>,
    view: Arc<ClusterView>,
    reannounce: mpsc::UnboundedSender<()>,
) {
    let mut wanted: BTreeSet<String> = BTreeSet::from([channel::NODES.to_string()]);
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    loop {
        let session = match broker.subscribe().await {
            Ok(session) => subscribe_all(session, &wanted).await,
            Err(e) => {
                if first {
                    warn!("broker unreachable: {e}; retrying");
                }
                None
            }
        };
        let Some(Subscription {
            control,
            mut messages,
        }) = session
        else {
            first = false;
            if !wait_away(&mut requests, &mut wanted, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(timing.max_backoff);
            continue;
        };
        backoff = Duration::from_millis(50);
        view.healthy.store(true, Ordering::Relaxed);
        if !first {
            info!("broker connection restored; resyncing rooms");
            let _ = events.send(HubEvent::Input(Input::BrokerReconnected)).await;
            let _ = reannounce.send(());
        }
        first = false;
        loop {
            tokio::select! {
                biased;
                () = view.reset.notified() => break,
                req = requests.recv() => match req {
                    Some(SubRequest::Subscribe(ch, done)) => {
                        wanted.insert(ch.clone());
                        let _ = control.send(SubRequest::Subscribe(ch, done));
                    }
                    Some(SubRequest::Unsubscribe(ch)) => {
                        wanted.remove(&ch);
                        let _ = control.send(SubRequest::Unsubscribe(ch));
                    }
                    None => return,
                },
                msg = messages.recv() => match msg {
                    Some(payload) => {
                        let event = Event::decode(&payload);
                        if event == Some(Event::Beat(node)) {
                            view.beats_heard.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Some(input) = event.and_then(into_input)
                            && events.send(HubEvent::Input(input)).await.is_err()
                        {
                            return;
                        }
                    }
                    None => break,
                },
            }
        }
        warn!("broker subscription lost; reconnecting");
        view.healthy.store(false, Ordering::Relaxed);
    }
}

/// Subscribes a new session to every wanted channel; `None` if the broker
/// refused or the session died on the way.
async fn subscribe_all(session: Subscription, wanted: &BTreeSet<String>) -> Option<Subscription> {
    for ch in wanted {
        let (tx, rx) = oneshot::channel();
        session
            .control
            .send(SubRequest::Subscribe(ch.clone(), tx))
            .ok()?;
        rx.await.ok()?.ok()?;
    }
    Some(session)
}

/// Waits `backoff` while the broker is away, answering subscription
/// requests meanwhile: a subscribe fails at once (its open answers
/// `UNAVAILABLE`; the hub forgets a room it could not open, so the channel
/// is not wanted), an unsubscribe is noted. False when the node is gone.
async fn wait_away(
    requests: &mut mpsc::UnboundedReceiver<SubRequest>,
    wanted: &mut BTreeSet<String>,
    backoff: Duration,
) -> bool {
    let retry = tokio::time::sleep(backoff);
    tokio::pin!(retry);
    loop {
        tokio::select! {
            biased;
            () = &mut retry => return true,
            req = requests.recv() => match req {
                Some(SubRequest::Subscribe(_, done)) => {
                    let _ = done.send(Err(BrokerError("broker unreachable".into())));
                }
                Some(SubRequest::Unsubscribe(ch)) => {
                    wanted.remove(&ch);
                }
                None => return false,
            },
        }
    }
}

fn into_input(event: Event) -> Option<Input> {
    Some(match event {
        Event::Message(m) => Input::Sequenced(m),
        Event::Presence(p) => Input::RemotePresence {
            room: p.room,
            node: p.node,
            user: p.user,
            present: p.present,
        },
        Event::NodeGone(node) => Input::NodeGone { node },
        Event::Direct(d) => Input::RemoteDirect(Box::new(d)),
        Event::Beat(_) => return None,
    })
}

/// Appends taken into one broker round trip at most.
const MAX_BATCH: usize = 256;

/// Serves the hub's cluster outputs in the order they were emitted.
#[allow(clippy::too_many_arguments)]
async fn worker<B: Broker>(
    broker: Arc<B>,
    node: NodeId,
    clock: Clock,
    mut cmds: mpsc::UnboundedReceiver<ClusterCmd>,
    mut reannounce: mpsc::UnboundedReceiver<()>,
    subs: mpsc::UnboundedSender<SubRequest>,
    events: mpsc::Sender<HubEvent>,
    view: Arc<ClusterView>,
) {
    // This node's presence as it should be in the broker: users present
    // (announced again after an outage, since the other nodes may have
    // dropped them) and departures the broker has not taken yet.
    let mut announced: FxHashMap<(RoomName, Arc<str>), (UserRef, bool)> = FxHashMap::default();
    let answer = |input: Input| {
        let events = events.clone();
        async move { events.send(HubEvent::Input(input)).await.is_ok() }
    };
    loop {
        let first = tokio::select! {
            biased;
            Some(()) = reannounce.recv() => {
                let mut settled = Vec::new();
                for ((room, id), (user, present)) in &announced {
                    if let Err(e) = broker.presence(node, room, user, *present).await {
                        warn!("re-announcing presence failed: {e}");
                        break;
                    }
                    if !present {
                        settled.push((room.clone(), id.clone()));
                    }
                }
                for key in settled {
                    announced.remove(&key);
                }
                continue;
            }
            cmd = cmds.recv() => match cmd {
                Some(cmd) => cmd,
                None => return,
            },
        };
        let mut pending = vec![first];
        while pending.len() < MAX_BATCH {
            match cmds.try_recv() {
                Ok(next) => pending.push(next),
                Err(_) => break,
            }
        }
        let mut batch: Vec<AppendRequest> = Vec::new();
        for cmd in pending {
            let out = match cmd {
                ClusterCmd::Output(Output::Append(request)) => {
                    batch.push(*request);
                    continue;
                }
                ClusterCmd::Output(out) => out,
                ClusterCmd::UserOnline(user) => {
                    let (tx, _rx) = oneshot::channel();
                    let _ = subs.send(SubRequest::Subscribe(channel::user(&user), tx));
                    continue;
                }
                ClusterCmd::UserOffline(user) => {
                    let _ = subs.send(SubRequest::Unsubscribe(channel::user(&user)));
                    continue;
                }
            };
            // Appends before this output go first: an open must see them.
            if !batch.is_empty()
                && !append(&*broker, std::mem::take(&mut batch), &view, &answer).await
            {
                return;
            }
            let input = match out {
                Output::OpenRoom { room, after } => {
                    Some(open(&*broker, &subs, &view, &room, after, clock.now()).await)
                }
                Output::CloseRoom { room } => {
                    let _ = subs.send(SubRequest::Unsubscribe(channel::room(room.as_str())));
                    None
                }
                Output::Presence {
                    room,
                    user,
                    present,
                } => {
                    let key = (room.clone(), user.id.clone());
                    announced.insert(key.clone(), (user.clone(), present));
                    match broker.presence(node, &room, &user, present).await {
                        Ok(()) if !present => {
                            announced.remove(&key);
                        }
                        Ok(()) => {}
                        Err(e) => {
                            // Kept in `announced`: sent again on reconnect.
                            warn!(room = %room, "presence update failed: {e}");
                            view.broker_failed();
                        }
                    }
                    None
                }
                Output::Relay(message) => {
                    let outcome = if !view.healthy.load(Ordering::Relaxed) {
                        RelayOutcome::Unavailable
                    } else {
                        match broker.relay(&message).await {
                            Ok(0) => RelayOutcome::Offline,
                            Ok(_) => RelayOutcome::Delivered,
                            Err(e) => {
                                warn!("direct message relay failed: {e}");
                                view.broker_failed();
                                RelayOutcome::Unavailable
                            }
                        }
                    };
                    message
                        .origin
                        .is_some()
                        .then_some(Input::Relayed { message, outcome })
                }
                Output::Append(_)
                | Output::Send { .. }
                | Output::Ping { .. }
                | Output::Close { .. } => None,
            };
            if let Some(input) = input
                && !answer(input).await
            {
                return;
            }
        }
        if !batch.is_empty() && !append(&*broker, batch, &view, &answer).await {
            return;
        }
    }
}

/// Appends a batch; answers with the acks, or `UNAVAILABLE` for each when
/// the broker cannot take them. Delivery comes from the room channel.
async fn append<B: Broker, F, Fut>(
    broker: &B,
    batch: Vec<AppendRequest>,
    view: &ClusterView,
    answer: &F,
) -> bool
where
    F: Fn(Input) -> Fut,
    Fut: Future<Output = bool>,
{
    let result = if view.healthy.load(Ordering::Relaxed) {
        broker.append(&batch).await
    } else {
        Err(BrokerError("broker unreachable".into()))
    };
    match result {
        Ok(stored) => {
            for msg in stored {
                if let Some(receipt) = msg.receipt()
                    && !answer(Input::Appended(receipt)).await
                {
                    return false;
                }
            }
        }
        Err(e) => {
            warn!(count = batch.len(), "appends failed: {e}");
            view.broker_failed();
            for request in batch {
                if !answer(Input::AppendFailed(request)).await {
                    return false;
                }
            }
        }
    }
    true
}

/// Subscribes to the room's channel, then reads its snapshot, so nothing
/// published in between is missed (the hub drops duplicates by offset).
async fn open<B: Broker>(
    broker: &B,
    subs: &mpsc::UnboundedSender<SubRequest>,
    view: &ClusterView,
    room: &RoomName,
    after: Option<roomhub_core::Position>,
    now: Timestamp,
) -> Input {
    if !view.healthy.load(Ordering::Relaxed) {
        return Input::RoomOpenFailed { room: room.clone() };
    }
    let ch = channel::room(room.as_str());
    let (tx, rx) = oneshot::channel();
    let subscribed = subs.send(SubRequest::Subscribe(ch.clone(), tx)).is_ok()
        && matches!(
            tokio::time::timeout(Duration::from_secs(5), rx).await,
            Ok(Ok(Ok(())))
        );
    let snapshot = if subscribed {
        broker
            .open(room, after.as_ref().map(|p| p.offset), now)
            .await
    } else {
        Err(BrokerError("subscribing to the room failed".into()))
    };
    match snapshot {
        Ok(snapshot) => Input::RoomOpened(snapshot),
        Err(e) => {
            warn!(room = %room, "opening room failed: {e}");
            view.broker_failed();
            if after.is_none() {
                // The hub forgets a room it could not open (no CloseRoom
                // follows), so its channel must not stay subscribed.
                let _ = subs.send(SubRequest::Unsubscribe(ch));
            }
            Input::RoomOpenFailed { room: room.clone() }
        }
    }
}
