//! The one task that owns the core, on a thread of its own. Connections and
//! sequencers reach it through its inbox; it drives the engine, queues each
//! connection's frames of a pass in its outbox (see [`crate::hub::dispatch`])
//! and hands the I/O shards the connections to write
//! ([`crate::conn::shard`]). It decides nothing: every rule is the core's.

use roomhub_core::api::ApiAnswer;
use roomhub_core::{Core, Input, PublishOutcome, Timestamp};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::conn::shard::Shards;
use crate::hub::dispatch::Connections;
use crate::hub::engine::Engine;
use crate::hub::inbox::HubEvent;
use crate::hub::services::Services;
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
    /// API calls waiting for the core's answer (given in the same pass).
    pub(crate) calls: FxHashMap<u64, oneshot::Sender<ApiAnswer>>,
    pub(crate) services: Services,
}

/// Waiting API publishes past which those whose callers gave up are swept.
const PUBLISHES_WAITING_SWEEP: usize = 1024;
/// Events taken per wake-up before outputs are dispatched, so one burst of
/// traffic costs one dispatch pass.
const EVENT_BATCH: usize = 256;

/// Where the hub runs: the handle that stops it and waits for it.
pub(crate) struct HubHandle {
    stop: CancellationToken,
    done: oneshot::Receiver<()>,
}

impl HubHandle {
    /// Stops the hub (dropping its engine ends the store thread) and waits
    /// until it has.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.done.await;
    }
}

impl<C: Core + Send + 'static> HubTask<C> {
    /// Starts the hub: with `own_thread`, on a thread of its own
    /// (`roomhub-hub`, so its share of the CPU can be read apart), with its
    /// own single-threaded runtime; otherwise as a task on the current
    /// runtime (the simulator's worlds, where time is simulated). Its I/O
    /// shards start on the current runtime either way.
    pub(crate) fn start(self, io_shards: usize, own_thread: bool) -> std::io::Result<HubHandle> {
        let stop = CancellationToken::new();
        let (finished, done) = oneshot::channel();
        let shards = Shards::spawn(io_shards);
        let run = {
            let stop = stop.clone();
            async move {
                self.run(shards, stop).await;
                let _ = finished.send(());
            }
        };
        if own_thread {
            // The hub outlives no runtime that started it: when that one
            // shuts down (a test that never stopped its server), this task
            // is dropped and the hub stops.
            let token = stop.clone();
            tokio::spawn(async move {
                let _guard = token.clone().drop_guard();
                token.cancelled().await;
            });
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name("roomhub-hub".into())
                .spawn(move || runtime.block_on(run))?;
        } else {
            tokio::spawn(run);
        }
        Ok(HubHandle { stop, done })
    }
}

impl<C: Core> HubTask<C> {
    /// Takes what is ready, lets the core decide, and hands each shard the
    /// connections it must write; again, until stopped. Nothing waits for
    /// more to arrive: under load each wake-up finds more events ready and
    /// each shard more passes queued, so batches grow by themselves.
    async fn run(mut self, shards: Shards, stop: CancellationToken) {
        let mut outboxes = Connections::new(self.metrics.clone(), shards);
        let mut shut_down = false;
        loop {
            let deadline = self.engine.poll_timeout().map(|t| self.clock.instant_at(t));
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
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
            self.dispatch(&mut outboxes);
            outboxes.flush();
            let hub = self.engine.hub();
            self.metrics.hub_state(hub.stats().rooms, hub.errors_sent());
        }
    }

    /// Hands the core's outputs to the connections, and its answers to API
    /// publishes to their callers.
    fn dispatch(&mut self, outboxes: &mut Connections) {
        let (mut published, mut answered, mut calls) = (Vec::new(), Vec::new(), Vec::new());
        outboxes.dispatch(
            &mut self.engine,
            self.clock,
            &mut published,
            &mut answered,
            &mut calls,
        );
        for (ticket, answer) in answered {
            if let Some(reply) = self.calls.remove(&ticket) {
                let _ = reply.send(answer);
            }
        }
        for call in calls {
            self.services.call(call);
        }
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
            HubEvent::Input(input) => self.input(input, now, outboxes),
            HubEvent::Inputs(inputs) => {
                for input in inputs {
                    self.input(input, now, outboxes);
                }
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
            HubEvent::Api { call, reply } => {
                self.next_publish += 1;
                let ticket = self.next_publish;
                self.calls.insert(ticket, reply);
                self.engine.handle(Input::Api { ticket, call }, now);
            }
        }
    }

    fn input(&mut self, input: Input, now: Timestamp, outboxes: &mut Connections) {
        if let Input::Disconnected { conn } = &input {
            outboxes.remove(*conn);
        }
        self.engine.handle(input, now);
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
