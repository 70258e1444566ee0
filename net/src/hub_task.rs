//! The one task that owns the core. Connection tasks send it facts; it hands
//! the core's frames to each connection's bounded outbox. It decides nothing:
//! every rule is the core's.

use std::sync::Arc;

use bytes::Bytes;

use roomhub_core::{
    AppendRequest, ConnId, FrameKind, Hub, Identity, Input, Origin, Output, SingleNode, Timestamp,
    close,
};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::broker::ClusterCmd;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::outbox::Outbox;

/// What connection tasks tell the hub.
pub(crate) enum HubEvent {
    Open {
        conn: ConnId,
        identity: Identity,
        outbox: Outbox,
    },
    Input(Input),
    /// `POST /api/publish`: sequence `request` like a member's message and
    /// answer with its id and offset once it is stored.
    Publish {
        request: AppendRequest,
        reply: oneshot::Sender<Result<Published, ()>>,
    },
}

/// Where a backend's published message landed.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) message_id: Arc<str>,
    pub(crate) offset: u64,
}

/// The connection number API publishes carry in their origin, so that the
/// receipt finds its HTTP caller. Connections are numbered from 1.
pub(crate) const API_CONN: ConnId = ConnId(0);

/// Who owns each room's order.
pub(crate) enum Engine {
    /// In-memory history: the sequencer answers in-process, at once.
    Memory(Box<SingleNode>),
    /// The store thread or the cluster's broker worker owns the order and
    /// answers through the hub's event queue.
    Delegated { hub: Box<Hub>, sequencer: Sequencer },
}

/// Who a delegating engine hands the core's sequencing outputs to.
pub(crate) enum Sequencer {
    /// Durable history: the store thread sequences and commits.
    Store(mpsc::UnboundedSender<Output>),
    /// Cluster mode: the broker sequences, and every node (this one too)
    /// delivers what it publishes.
    Cluster(ClusterLink),
}

pub(crate) struct ClusterLink {
    pub(crate) broker: mpsc::UnboundedSender<ClusterCmd>,
    /// Local connections per user, to follow their direct messages.
    pub(crate) users: FxHashMap<Arc<str>, usize>,
    pub(crate) conn_users: FxHashMap<ConnId, Arc<str>>,
}

impl Sequencer {
    /// A send error means the store thread or worker is gone; the requests
    /// then stay unanswered and clients retry.
    fn forward(&self, out: Output) {
        match self {
            Sequencer::Store(store) => {
                let _ = store.send(out);
            }
            Sequencer::Cluster(link) => {
                let _ = link.broker.send(ClusterCmd::Output(out));
            }
        }
    }
}

impl ClusterLink {
    fn connected(&mut self, conn: ConnId, user: &Arc<str>) {
        self.conn_users.insert(conn, user.clone());
        let n = self.users.entry(user.clone()).or_default();
        *n += 1;
        if *n == 1 {
            let _ = self.broker.send(ClusterCmd::UserOnline(user.clone()));
        }
    }

    fn disconnected(&mut self, conn: ConnId) {
        if let Some(user) = self.conn_users.remove(&conn)
            && let Some(n) = self.users.get_mut(&user)
        {
            *n -= 1;
            if *n == 0 {
                self.users.remove(&user);
                let _ = self.broker.send(ClusterCmd::UserOffline(user));
            }
        }
    }
}

/// Sends, pings and closes; everything else is for the sequencer.
fn for_connections(out: &Output) -> bool {
    matches!(
        out,
        Output::Send { .. } | Output::Ping { .. } | Output::Close { .. }
    )
}

impl Engine {
    fn handle(&mut self, input: Input, now: Timestamp) {
        match self {
            Engine::Memory(node) => node.handle(input, now),
            Engine::Delegated { hub, .. } => hub.handle(input, now),
        }
    }

    /// Follows which users have local connections (cluster mode only).
    fn connected(&mut self, conn: ConnId, user: &Arc<str>) {
        if let Engine::Delegated {
            sequencer: Sequencer::Cluster(link),
            ..
        } = self
        {
            link.connected(conn, user);
        }
    }

    fn disconnected(&mut self, conn: ConnId) {
        if let Engine::Delegated {
            sequencer: Sequencer::Cluster(link),
            ..
        } = self
        {
            link.disconnected(conn);
        }
    }

    /// The next output for connections; sequencing outputs are forwarded.
    fn poll_output(&mut self) -> Option<Output> {
        match self {
            Engine::Memory(node) => node.poll_output(),
            Engine::Delegated { hub, sequencer } => loop {
                let out = hub.poll_output()?;
                if for_connections(&out) {
                    return Some(out);
                }
                sequencer.forward(out);
            },
        }
    }

    /// Starts an API publish; the memory engine answers at once.
    fn publish(&mut self, request: AppendRequest, now: Timestamp) -> Option<Published> {
        match self {
            Engine::Memory(node) => {
                let msg = node.sequencer.append(request);
                let published = Published {
                    message_id: msg.id.clone(),
                    offset: msg.offset,
                };
                node.handle(Input::Sequenced(msg), now);
                Some(published)
            }
            Engine::Delegated { sequencer, .. } => {
                sequencer.forward(Output::Append(Box::new(request)));
                None
            }
        }
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        self.hub().poll_timeout()
    }

    fn hub(&self) -> &Hub {
        match self {
            Engine::Memory(node) => &node.hub,
            Engine::Delegated { hub, .. } => hub,
        }
    }
}

pub(crate) struct HubTask {
    pub(crate) engine: Engine,
    pub(crate) events: mpsc::Receiver<HubEvent>,
    pub(crate) clock: Clock,
    pub(crate) metrics: Metrics,
    pub(crate) shutdown: CancellationToken,
    /// API publishes waiting for their receipt, by request id.
    pub(crate) publishes: FxHashMap<u64, oneshot::Sender<Result<Published, ()>>>,
    pub(crate) next_publish: u64,
}

/// Events taken per wake-up before outputs are dispatched, so one burst of
/// traffic costs one dispatch pass.
const EVENT_BATCH: usize = 256;
/// Rounds of [`HubTask::coalesce`] before the frames are written (the
/// bound where time stands still, as in the simulator).
const COALESCE_ROUNDS: usize = 256;
/// A pass with frames for this many connections counts as a burst.
const BURST_CONNECTIONS: usize = 64;
/// Turns without new requests a burst waits for before it is written.
const QUIET_ROUNDS: usize = 4;
/// The longest a frame waits in [`HubTask::coalesce`] for others to join
/// it. Only a hub that keeps finding new requests waits this long: then it
/// is behind, and writing each connection once per 10 ms instead of once
/// per pass is what lets it catch up (a reconnect storm of 10,000 took
/// 2.0 s instead of 3.3 to 3.5 with 2 ms; BENCHMARKS.md). A quiet hub
/// writes after one yield.
const COALESCE_BUDGET: std::time::Duration = std::time::Duration::from_millis(10);

impl HubTask {
    pub(crate) async fn run(mut self) {
        let mut outboxes: FxHashMap<ConnId, Outbox> = FxHashMap::default();
        let mut shut_down = false;
        loop {
            let deadline = self.engine.poll_timeout().map(|t| self.clock.instant_at(t));
            tokio::select! {
                biased;
                () = self.shutdown.cancelled(), if !shut_down => {
                    shut_down = true;
                    self.engine.handle(Input::Shutdown, self.clock.now());
                }
                event = self.events.recv() => {
                    let Some(event) = event else { break };
                    self.apply(event, &mut outboxes);
                    for _ in 1..EVENT_BATCH {
                        match self.events.try_recv() {
                            Ok(event) => self.apply(event, &mut outboxes),
                            Err(_) => break,
                        }
                    }
                }
                () = sleep_until_opt(deadline) => {
                    self.engine.handle(Input::Tick, self.clock.now());
                }
            }
            let mut due = Vec::new();
            self.dispatch(&mut outboxes, &mut due);
            self.coalesce(&mut outboxes, &mut due).await;
            for conn in due {
                if let Some(outbox) = outboxes.get(&conn) {
                    outbox.flush();
                }
            }
            let hub = self.engine.hub();
            self.metrics.hub_state(hub.stats().rooms, hub.errors_sent());
        }
    }

    /// Before writing, lets the connection tasks that are ready run and
    /// takes what they queued, for as long as new requests keep coming and
    /// at most [`COALESCE_BUDGET`]. Idle, this costs one yield; in a burst
    /// (a reconnect storm, a crowd joining one room) each connection then
    /// gets many frames per write instead of one each.
    async fn coalesce(&mut self, outboxes: &mut FxHashMap<ConnId, Outbox>, due: &mut Vec<ConnId>) {
        let started = tokio::time::Instant::now();
        let mut quiet_rounds = 0;
        for _ in 0..COALESCE_ROUNDS {
            tokio::task::yield_now().await;
            if started.elapsed() >= COALESCE_BUDGET {
                return;
            }
            if self.events.is_empty() {
                // A pass that touched many connections is likely part of a
                // burst whose next requests are still on their sockets:
                // give their readers a few more turns.
                quiet_rounds += 1;
                if due.len() < BURST_CONNECTIONS || quiet_rounds > QUIET_ROUNDS {
                    return;
                }
                continue;
            }
            quiet_rounds = 0;
            for _ in 0..EVENT_BATCH {
                match self.events.try_recv() {
                    Ok(event) => self.apply(event, outboxes),
                    Err(_) => break,
                }
            }
            self.dispatch(outboxes, due);
        }
    }

    fn apply(&mut self, event: HubEvent, outboxes: &mut FxHashMap<ConnId, Outbox>) {
        let now = self.clock.now();
        match event {
            HubEvent::Open {
                conn,
                identity,
                outbox,
            } => {
                outboxes.insert(conn, outbox);
                self.engine.connected(conn, &identity.user.id);
                self.engine.handle(Input::Connected { conn, identity }, now);
            }
            HubEvent::Input(input) => {
                if let Input::Disconnected { conn } = &input {
                    outboxes.remove(conn);
                    self.engine.disconnected(*conn);
                }
                if !self.answer_publish(&input) {
                    self.engine.handle(input, now);
                }
            }
            HubEvent::Publish { mut request, reply } => {
                self.next_publish += 1;
                let id = self.next_publish;
                request.origin = Some(Origin {
                    node: self.engine.hub().config().node_id,
                    conn: API_CONN,
                    request_id: Some(id.to_string().into()),
                    seq: 0,
                });
                match self.engine.publish(request, now) {
                    Some(done) => {
                        let _ = reply.send(Ok(done));
                    }
                    None => {
                        self.publishes.insert(id, reply);
                    }
                }
            }
        }
    }

    /// Takes the store's or broker's answer to an API publish. Returns
    /// false for everything else.
    fn answer_publish(&mut self, input: &Input) -> bool {
        let (origin, result) = match input {
            Input::Appended(receipt) => (
                &receipt.origin,
                Ok(Published {
                    message_id: receipt.message_id.clone(),
                    offset: receipt.offset,
                }),
            ),
            Input::AppendFailed(request) => match &request.origin {
                Some(origin) => (origin, Err(())),
                None => return false,
            },
            _ => return false,
        };
        if origin.conn != API_CONN {
            return false;
        }
        let waiting = origin
            .request_id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .and_then(|id| self.publishes.remove(&id));
        if let Some(reply) = waiting {
            let _ = reply.send(result);
        }
        true
    }

    /// Hands every output to its connection. Overflows found on the way are
    /// fed back to the core, whose answers are dispatched in turn.
    /// Queues every output for its connection; `due` collects the
    /// connections to write to (each once, with everything queued for it).
    fn dispatch(&mut self, outboxes: &mut FxHashMap<ConnId, Outbox>, due: &mut Vec<ConnId>) {
        loop {
            let mut overflowed = Vec::new();
            // Frames are gathered first and handed over per connection, one
            // lock each, rather than one lock per frame.
            let mut staged: Vec<(ConnId, Bytes, FrameKind)> = Vec::new();
            while let Some(out) = self.engine.poll_output() {
                match out {
                    Output::Send { conn, frame, kind } => staged.push((conn, frame, kind)),
                    Output::Ping { conn } => {
                        if let Some(outbox) = outboxes.get(&conn)
                            && outbox.ping()
                        {
                            due.push(conn);
                        }
                    }
                    Output::Close { conn, code, reason } => {
                        // What the pass gave the connection goes before its close.
                        self.hand_over(&mut staged, outboxes, due, &mut overflowed);
                        if let Some(outbox) = outboxes.remove(&conn) {
                            // Over for the protocol now, even if the close
                            // frame has to wait on a dead link.
                            outbox.end_live();
                            if code == close::SLOW_CONSUMER {
                                outbox.abandon();
                                self.metrics.slow_consumer();
                            }
                            // Written at once, after what was queued.
                            outbox.close_now(code, reason);
                        }
                    }
                    // The engine hands the sequencer's outputs to whoever owns the order.
                    Output::Append(_)
                    | Output::OpenRoom { .. }
                    | Output::CloseRoom { .. }
                    | Output::Presence { .. }
                    | Output::Relay(_) => {}
                }
            }
            self.hand_over(&mut staged, outboxes, due, &mut overflowed);
            if overflowed.is_empty() {
                return;
            }
            let now = self.clock.now();
            for conn in overflowed {
                self.engine.handle(Input::QueueOverflow { conn }, now);
            }
        }
    }

    /// Queues the staged frames, each connection's in order and under one
    /// lock; notes the connections to flush and those that overflowed.
    fn hand_over(
        &self,
        staged: &mut Vec<(ConnId, Bytes, FrameKind)>,
        outboxes: &FxHashMap<ConnId, Outbox>,
        due: &mut Vec<ConnId>,
        overflowed: &mut Vec<ConnId>,
    ) {
        if staged.is_empty() {
            return;
        }
        // Grouped by connection; the sort is stable, so each connection's
        // frames keep the core's order.
        staged.sort_by_key(|(conn, _, _)| *conn);
        for frames in staged.chunk_by(|a, b| a.0 == b.0) {
            let conn = frames[0].0;
            let Some(outbox) = outboxes.get(&conn) else {
                continue;
            };
            let queued = outbox.push_frames(frames.iter().map(|(_, frame, kind)| (frame, *kind)));
            if queued.flush_due {
                due.push(conn);
            }
            if queued.live_bytes > 0 {
                self.metrics.queued(queued.live_bytes);
            }
            if queued.ephemeral_dropped > 0 {
                self.metrics.ephemeral_dropped(queued.ephemeral_dropped);
            }
            if queued.overflow {
                outbox.abandon();
                overflowed.push(conn);
            }
        }
        staged.clear();
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
