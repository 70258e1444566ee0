//! The one task that owns the core. Connections and sequencers reach it
//! through its inbox; it drives the engine and hands each connection's
//! outbox the frames of a pass (see [`crate::hub::dispatch`]). It decides
//! nothing: every rule is the core's.

use roomhub_core::{ConnId, Core, Input, Origin};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::hub::dispatch::Connections;
use crate::hub::engine::Engine;
use crate::hub::inbox::{HubEvent, Published};
use crate::metrics::Metrics;

/// The connection number API publishes carry in their origin, so that the
/// receipt finds its HTTP caller. Connections are numbered from 1.
const API_CONN: ConnId = ConnId(0);

pub(crate) struct HubTask<C> {
    pub(crate) engine: Engine<C>,
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

impl<C: Core> HubTask<C> {
    pub(crate) async fn run(mut self) {
        let mut outboxes = Connections::new(self.metrics.clone());
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
            outboxes.dispatch(&mut self.engine, self.clock, &mut due);
            self.coalesce(&mut outboxes, &mut due).await;
            outboxes.flush(due);
            let hub = self.engine.hub();
            self.metrics.hub_state(hub.stats().rooms, hub.errors_sent());
        }
    }

    /// Before writing, lets the connection tasks that are ready run and
    /// takes what they queued, for as long as new requests keep coming and
    /// at most [`COALESCE_BUDGET`]. Idle, this costs one yield; in a burst
    /// (a reconnect storm, a crowd joining one room) each connection then
    /// gets many frames per write instead of one each.
    async fn coalesce(&mut self, outboxes: &mut Connections, due: &mut Vec<ConnId>) {
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
            outboxes.dispatch(&mut self.engine, self.clock, due);
        }
    }

    fn apply(&mut self, event: HubEvent, outboxes: &mut Connections) {
        let now = self.clock.now();
        match event {
            HubEvent::Open {
                conn,
                identity,
                outbox,
            } => {
                outboxes.insert(conn, outbox);
                self.engine.handle(Input::Connected { conn, identity }, now);
            }
            HubEvent::Input(input) => {
                if let Input::Disconnected { conn } = &input {
                    outboxes.remove(*conn);
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
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
