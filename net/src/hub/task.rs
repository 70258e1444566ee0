//! The one task that owns the core. Connections and sequencers reach it
//! through its inbox; it drives the engine and hands each connection's
//! outbox the frames of a pass (see [`crate::hub::dispatch`]). It decides
//! nothing: every rule is the core's.

use roomhub_core::{ConnId, Core, Input, PublishOutcome};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::hub::dispatch::Connections;
use crate::hub::engine::Engine;
use crate::hub::inbox::HubEvent;
use crate::metrics::Metrics;

pub(crate) struct HubTask<C> {
    pub(crate) engine: Engine<C>,
    pub(crate) events: mpsc::Receiver<HubEvent>,
    pub(crate) clock: Clock,
    pub(crate) metrics: Metrics,
    pub(crate) shutdown: CancellationToken,
    /// API publishes waiting for the core's answer, by ticket.
    pub(crate) publishes: FxHashMap<u64, oneshot::Sender<PublishOutcome>>,
    pub(crate) next_publish: u64,
}

/// Waiting API publishes past which those whose callers gave up are swept.
const PUBLISHES_WAITING_SWEEP: usize = 1024;
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
            self.dispatch(&mut outboxes, &mut due);
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
            self.dispatch(outboxes, due);
        }
    }

    /// Hands the core's outputs to the connections, and its answers to API
    /// publishes to their callers.
    fn dispatch(&mut self, outboxes: &mut Connections, due: &mut Vec<ConnId>) {
        let mut published = Vec::new();
        outboxes.dispatch(&mut self.engine, self.clock, due, &mut published);
        for (ticket, outcome) in published {
            if let Some(reply) = self.publishes.remove(&ticket) {
                let _ = reply.send(outcome);
            }
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
                self.engine.handle(input, now);
            }
            HubEvent::Publish { publish, reply } => {
                self.next_publish += 1;
                let ticket = self.next_publish;
                // Every publish is answered, unless its sequencer is gone;
                // callers that gave up waiting are then forgotten here.
                if self.publishes.len() >= PUBLISHES_WAITING_SWEEP {
                    self.publishes.retain(|_, waiting| !waiting.is_closed());
                }
                self.publishes.insert(ticket, reply);
                self.engine.handle(Input::Publish { ticket, publish }, now);
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
