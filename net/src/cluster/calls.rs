//! Server API calls across the cluster. The node that takes an API call
//! publishes it to every node ([`Broker::to_nodes`]); each node (itself
//! too) has its hub answer for its own connections and publishes the
//! answer back; the asking node gathers one answer per live node, for at
//! most [`GATHER_WAIT`], and merges them (`http::api`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use roomhub_core::NodeId;
use roomhub_core::api::{ApiAnswer, ApiCall};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::cluster::broker::{Broker, BrokerError};
use crate::cluster::wire::{Event, Forward, Forwarded, NodeCall, NodeReply};
use crate::conn::sse::{Delivered, Posted};
use crate::hub::inbox::Answers;

/// How long a call waits for the other nodes' answers.
pub(crate) const GATHER_WAIT: Duration = Duration::from_secs(2);

type Publish = Box<
    dyn Fn(Vec<u8>) -> Pin<Box<dyn Future<Output = Result<usize, BrokerError>> + Send>>
        + Send
        + Sync,
>;

/// One node's end of the cluster's API calls: its calls waiting for
/// answers, and the way out to the broker.
#[derive(Default)]
pub struct NodeCalls {
    node: OnceLock<NodeId>,
    next: AtomicU64,
    pending: Mutex<FxHashMap<u64, mpsc::UnboundedSender<(NodeId, ApiAnswer)>>>,
    /// Calls from the node channel, for this node's responder.
    incoming: OnceLock<mpsc::UnboundedSender<NodeCall>>,
    publish: OnceLock<Publish>,
    /// Live nodes, this one included, as of the last heartbeat.
    pub(crate) live_nodes: AtomicUsize,
    /// SSE requests this node forwarded, waiting to hear what became of them.
    forwarding: Mutex<FxHashMap<u64, oneshot::Sender<Delivered>>>,
    /// SSE requests other nodes forwarded to this one's sessions.
    forwarded_here: OnceLock<mpsc::UnboundedSender<Forward>>,
}

impl NodeCalls {
    /// Connects this node's calls to `broker`, and starts the task that
    /// answers other nodes' calls through `answers` (the hub's inbox).
    pub(crate) fn start<B: Broker>(&self, broker: Arc<B>, node: NodeId, answers: Answers) {
        let _ = self.node.set(node);
        let out = broker.clone();
        let _ = self.publish.set(Box::new(move |payload| {
            let out = out.clone();
            Box::pin(async move { out.to_nodes(payload).await })
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.incoming.set(tx);
        tokio::spawn(respond(broker, node, rx, answers));
    }

    /// A call published on the node channel: this node answers it.
    pub(crate) fn take_call(&self, call: NodeCall) {
        if let Some(incoming) = self.incoming.get() {
            let _ = incoming.send(call);
        }
    }

    /// An answer published on the node channel, kept if it is for a call
    /// of this node still waiting.
    pub(crate) fn take_reply(&self, reply: NodeReply) {
        if self.node.get() != Some(&reply.to) {
            return;
        }
        if let Some(waiting) = self.lock().get(&reply.id) {
            let _ = waiting.send((reply.node, reply.answer));
        }
    }

    /// Asks every live node; their answers (one per node), as many as came
    /// within [`GATHER_WAIT`]. An error only if the call could not be
    /// published.
    pub async fn call_all(&self, call: ApiCall) -> Result<Vec<ApiAnswer>, String> {
        let (Some(node), Some(publish)) = (self.node.get(), self.publish.get()) else {
            return Err("the cluster is not running".into());
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.lock().insert(id, tx);
        let payload = Event::Call(NodeCall {
            from: *node,
            id,
            call,
        })
        .encode();
        let expected = self.live_nodes.load(Ordering::Relaxed).max(1);
        let mut answers: FxHashMap<NodeId, ApiAnswer> = FxHashMap::default();
        let outcome = match publish(payload).await {
            Ok(_) => {
                let deadline = tokio::time::Instant::now() + GATHER_WAIT;
                while answers.len() < expected {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some((from, answer))) => {
                            answers.insert(from, answer);
                        }
                        _ => break,
                    }
                }
                Ok(())
            }
            Err(e) => Err(format!("the broker did not take the call: {e}")),
        };
        self.lock().remove(&id);
        outcome?;
        if answers.is_empty() {
            return Err("no node answered in time".into());
        }
        let mut by_node: Vec<(NodeId, ApiAnswer)> = answers.into_iter().collect();
        by_node.sort_by_key(|(n, _)| *n);
        Ok(by_node.into_iter().map(|(_, a)| a).collect())
    }

    /// Where requests forwarded to this node's SSE sessions go (taken once,
    /// by the SSE side at start).
    pub(crate) fn forwarded_here(&self) -> Option<mpsc::UnboundedReceiver<Forward>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.forwarded_here.set(tx).ok().map(|()| rx)
    }

    /// A request for an SSE session on this node, from another node.
    pub(crate) fn take_forward(&self, forward: Forward) {
        if self.node.get() != Some(&forward.to) {
            return;
        }
        if let Some(here) = self.forwarded_here.get() {
            let _ = here.send(forward);
        }
    }

    /// What became of a request this node forwarded.
    pub(crate) fn take_forwarded(&self, done: Forwarded) {
        if self.node.get() != Some(&done.to) {
            return;
        }
        let waiting = self
            .forwarding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&done.id);
        if let Some(waiting) = waiting {
            let _ = waiting.send(done.delivered);
        }
    }

    /// Forwards a request for SSE session `session` to node `to`, and waits
    /// (at most [`GATHER_WAIT`]) until that node has handed it over.
    pub(crate) async fn forward(
        &self,
        to: NodeId,
        session: String,
        posted: Posted,
    ) -> Result<Delivered, String> {
        let (Some(node), Some(publish)) = (self.node.get(), self.publish.get()) else {
            return Err("the cluster is not running".into());
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.forwarding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let payload = Event::Forward(Forward {
            from: *node,
            to,
            id,
            session,
            posted,
        })
        .encode();
        let outcome = match publish(payload).await {
            Ok(_) => match tokio::time::timeout(GATHER_WAIT, rx).await {
                Ok(Ok(delivered)) => Ok(delivered),
                _ => Err("the node holding the session did not answer in time".into()),
            },
            Err(e) => Err(format!("the broker did not take the request: {e}")),
        };
        self.forwarding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        outcome
    }

    /// Tells node `to` what became of its forwarded request `id`.
    pub(crate) async fn forwarded(&self, to: NodeId, id: u64, delivered: Delivered) {
        let Some(publish) = self.publish.get() else {
            return;
        };
        let done = Event::Forwarded(Forwarded { to, id, delivered });
        if let Err(e) = publish(done.encode()).await {
            warn!(
                "could not answer a forwarded SSE request from node {}: {e}",
                to.0
            );
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, FxHashMap<u64, mpsc::UnboundedSender<(NodeId, ApiAnswer)>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Answers the calls published to every node: this node's hub answers for
/// its own connections; the answer goes back on the node channel.
async fn respond<B: Broker>(
    broker: Arc<B>,
    node: NodeId,
    mut calls: mpsc::UnboundedReceiver<NodeCall>,
    answers: Answers,
) {
    while let Some(NodeCall { from, id, call }) = calls.recv().await {
        let Ok(done) = answers.api(call).await else {
            return;
        };
        let Ok(Ok(answer)) = tokio::time::timeout(GATHER_WAIT, done).await else {
            continue;
        };
        let reply = Event::Reply(NodeReply {
            to: from,
            id,
            node,
            answer,
        });
        if let Err(e) = broker.to_nodes(reply.encode()).await {
            warn!(
                "could not answer a server API call from node {}: {e}",
                from.0
            );
        }
    }
}
