//! What the node's cluster tasks share with each other and with the HTTP
//! side: the broker's health, the other nodes' online counts, the timing
//! of liveness, and the signal that restarts the subscription session.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How a node keeps itself known to the cluster.
#[derive(Clone, Copy, Debug)]
pub struct ClusterTiming {
    /// A node that has not refreshed its liveness for this long is gone.
    pub node_ttl: Duration,
    /// The longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl ClusterTiming {
    pub(crate) fn heartbeat_every(&self) -> Duration {
        self.node_ttl / 4
    }
}

/// Online counts and broker health, read by the HTTP side.
#[derive(Default)]
pub struct ClusterView {
    /// Connections on the other live nodes, as of the last heartbeat.
    pub remote_online: AtomicUsize,
    /// The broker is reachable (the subscription session is up).
    pub healthy: AtomicBool,
    /// Tells the subscription session to start over: a heartbeat failed,
    /// so the session may be stuck on a link that silently died.
    pub(crate) reset: tokio::sync::Notify,
    /// This node's own beats heard on its subscription.
    pub(crate) beats_heard: AtomicU64,
}

impl ClusterView {
    /// A broker call failed: count the broker as gone and start a new
    /// subscription session (the old one may be silently dead), which
    /// resyncs every room once it is up.
    pub(crate) fn broker_failed(&self) {
        self.healthy.store(false, Ordering::Relaxed);
        self.reset.notify_one();
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}
