//! A node's cluster side, started together: the subscription session, the
//! request worker and the heartbeat, wired to the hub's inbox.

use std::sync::Arc;

use roomhub_core::NodeId;
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::cluster::broker::Broker;
use crate::cluster::heartbeat::heartbeat;
use crate::cluster::subscriber::subscriber;
use crate::cluster::view::{ClusterTiming, ClusterView};
use crate::cluster::worker::Worker;
use crate::conn::online::Online;
use crate::hub::engine::SequencerQueue;
use crate::hub::inbox::Answers;

/// Subscribe and unsubscribe requests the worker may queue for the
/// subscription session.
const SUBSCRIPTION_REQUESTS: usize = 1024;

/// What the node's cluster tasks are handed by the server.
pub(crate) struct NodeParts {
    pub(crate) clock: Clock,
    pub(crate) answers: Answers,
    /// This node's live connections (announced in its heartbeat).
    pub(crate) local_online: Online,
    /// Times each round trip of appends to the broker.
    pub(crate) timer: crate::metrics::AppendTimer,
}

/// Starts the node's cluster side. Returns the queue the hub task feeds.
pub(crate) fn spawn<B: Broker>(
    broker: Arc<B>,
    node: NodeId,
    timing: ClusterTiming,
    parts: NodeParts,
    view: Arc<ClusterView>,
) -> SequencerQueue {
    let NodeParts {
        clock,
        answers,
        local_online,
        timer,
    } = parts;
    // What bounds it: see `SequencerQueue`.
    let (outputs_tx, outputs_rx) = mpsc::unbounded_channel();
    let (sub_tx, sub_rx) = mpsc::channel(SUBSCRIPTION_REQUESTS);
    tokio::spawn(subscriber(
        broker.clone(),
        node,
        timing,
        sub_rx,
        answers.clone(),
        view.clone(),
    ));
    let worker = Worker {
        broker: broker.clone(),
        node,
        clock,
        subs: sub_tx,
        answers: answers.clone(),
        view: view.clone(),
        timer,
    };
    view.calls.start(broker.clone(), node, answers.clone());
    tokio::spawn(worker.run(outputs_rx));
    tokio::spawn(heartbeat(broker, node, timing, local_online, view));
    outputs_tx
}
