//! The engine the hub task drives: the core's [`Hub`], and whoever owns each
//! room's order. In memory mode the core's own sequencer answers in-process;
//! with the default durable store, the journaled store answers on the hub's
//! thread too, once per pass; otherwise (`--fsync always`, a cluster) the
//! hub's sequencing outputs (appends, opens, presence, relays, follows) go
//! to the store thread or the cluster's worker, which answer through the
//! hub's inbox.

use std::collections::VecDeque;

use roomhub_core::{AppendRequest, Core, Hub, Input, Output, SingleNode, Timestamp};

use crate::metrics::AppendTimer;
use tokio::sync::mpsc;

use crate::seq::journaled::JournaledStore;
use crate::seq::store::History;

/// The queue from the hub to a delegated sequencer. Unbounded because the
/// hub task must never wait on the store or the broker (it would stop
/// writing sockets); what bounds it is the inbox: every output here comes
/// from an event the hub took from its bounded inbox, and a sequencer's
/// answers go back through that same inbox, so a sequencer that falls
/// behind fills the inbox and the connection readers wait.
pub(crate) type SequencerQueue = mpsc::UnboundedSender<Output>;

/// Who owns each room's order. `C` is the core: [`Hub`] in the binary.
pub(crate) enum Engine<C = Hub> {
    /// In-memory history: the sequencer answers in-process, at once.
    Memory(Box<SingleNode<C>>),
    /// The journaled store owns the order, on the hub's thread.
    Journaled(Box<Journaled<C>>),
    /// The store thread or the cluster's broker worker owns the order and
    /// answers through the hub's inbox.
    Delegated {
        hub: Box<C>,
        sequencer: SequencerQueue,
    },
}

/// The core and the default store, which answers its appends together
/// (one journal write) once the pass has nothing else for the
/// connections, and its opens at once (after the appends before them, so
/// a snapshot sees them).
pub(crate) struct Journaled<C> {
    hub: C,
    store: JournaledStore,
    appends: Vec<AppendRequest>,
    /// The core's outputs for the connections, in order.
    ready: VecDeque<Output>,
    timer: AppendTimer,
}

impl<C: Core> Journaled<C> {
    pub(crate) fn new(hub: C, store: JournaledStore, timer: AppendTimer) -> Self {
        Journaled {
            hub,
            store,
            appends: Vec::new(),
            ready: VecDeque::new(),
            timer,
        }
    }

    fn handle(&mut self, input: Input, now: Timestamp) {
        self.hub.handle(input, now);
        self.take_outputs(now);
        self.store.checkpoint_when_idle();
    }

    /// Moves the core's outputs aside: appends to be stored, the rest
    /// ready for the connections; an open is answered on the spot.
    fn take_outputs(&mut self, now: Timestamp) {
        while let Some(out) = self.hub.poll_output() {
            match out {
                Output::Append(request) => self.appends.push(*request),
                Output::OpenRoom { room, .. } => {
                    self.store_appends(now);
                    let answer = self.store.answer_open(room, now);
                    self.hub.handle(answer, now);
                }
                Output::EndLineage { room, ticket } => {
                    self.store_appends(now);
                    let answer = self.store.answer_end_lineage(&room, ticket);
                    self.hub.handle(answer, now);
                }
                Output::HistoryLimits {
                    max_messages,
                    max_age_ms,
                } => self.store.set_history(max_messages, max_age_ms),
                // Nothing to stop or follow: this store delivers only to
                // its own node.
                out if out.is_for_sequencer() => {}
                out => self.ready.push_back(out),
            }
        }
    }

    /// Stores the appends taken so far in one batch and answers them.
    fn store_appends(&mut self, now: Timestamp) {
        if self.appends.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.appends);
        let started = std::time::Instant::now();
        let answers = self.store.answer_appends(batch);
        self.timer.record(started.elapsed());
        for answer in answers {
            self.hub.handle(answer, now);
        }
    }

    fn poll_output(&mut self, now: Timestamp) -> Option<Output> {
        loop {
            if let Some(out) = self.ready.pop_front() {
                return Some(out);
            }
            if self.appends.is_empty() {
                return None;
            }
            self.store_appends(now);
            self.take_outputs(now);
        }
    }
}

impl<C: Core> Engine<C> {
    pub(crate) fn handle(&mut self, input: Input, now: Timestamp) {
        match self {
            Engine::Memory(node) => node.handle(input, now),
            Engine::Journaled(journaled) => journaled.handle(input, now),
            Engine::Delegated { hub, .. } => hub.handle(input, now),
        }
    }

    /// The next output for the hub task; sequencing outputs are forwarded.
    /// A send error means the sequencer is gone (the server is stopping);
    /// the requests then stay unanswered and clients retry.
    pub(crate) fn poll_output(&mut self, now: Timestamp) -> Option<Output> {
        match self {
            Engine::Memory(node) => node.poll_output(),
            Engine::Journaled(journaled) => journaled.poll_output(now),
            Engine::Delegated { hub, sequencer } => loop {
                let out = hub.poll_output()?;
                if !out.is_for_sequencer() {
                    return Some(out);
                }
                let _ = sequencer.send(out);
            },
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Timestamp> {
        match self {
            Engine::Memory(node) => node.poll_timeout(),
            Engine::Journaled(journaled) => journaled.hub.poll_timeout(),
            Engine::Delegated { hub, .. } => hub.poll_timeout(),
        }
    }

    pub(crate) fn hub(&self) -> &Hub {
        match self {
            Engine::Memory(node) => node.hub.hub(),
            Engine::Journaled(journaled) => journaled.hub.hub(),
            Engine::Delegated { hub, .. } => hub.hub(),
        }
    }
}
