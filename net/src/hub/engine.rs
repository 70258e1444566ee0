//! The engine the hub task drives: the core's [`Hub`], and whoever owns each
//! room's order. In memory mode the core's own sequencer answers in-process;
//! otherwise the hub's sequencing outputs (appends, opens, presence, relays,
//! follows) go to the store thread or the cluster's worker, which answer
//! through the hub's inbox.

use roomhub_core::{Core, Hub, Input, Output, SingleNode, Timestamp};
use tokio::sync::mpsc;

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
    /// The store thread or the cluster's broker worker owns the order and
    /// answers through the hub's inbox.
    Delegated {
        hub: Box<C>,
        sequencer: SequencerQueue,
    },
}

impl<C: Core> Engine<C> {
    pub(crate) fn handle(&mut self, input: Input, now: Timestamp) {
        match self {
            Engine::Memory(node) => node.handle(input, now),
            Engine::Delegated { hub, .. } => hub.handle(input, now),
        }
    }

    /// The next output for the hub task; sequencing outputs are forwarded.
    /// A send error means the sequencer is gone (the server is stopping);
    /// the requests then stay unanswered and clients retry.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        match self {
            Engine::Memory(node) => node.poll_output(),
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
            Engine::Delegated { hub, .. } => hub.poll_timeout(),
        }
    }

    pub(crate) fn hub(&self) -> &Hub {
        match self {
            Engine::Memory(node) => node.hub.hub(),
            Engine::Delegated { hub, .. } => hub.hub(),
        }
    }
}
