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

/// How stale another node's online count may be, at most, when read
/// (`/ws/online`): each node reports its count and reads the others' at
/// least this often, so counts agree within twice this.
const COUNTS_EVERY: Duration = Duration::from_millis(400);

impl ClusterTiming {
    /// A quarter of the liveness TTL, and at most [`COUNTS_EVERY`].
    pub(crate) fn heartbeat_every(&self) -> Duration {
        (self.node_ttl / 4).min(COUNTS_EVERY)
    }

    /// Heartbeats after which a healthy session that has not heard this
    /// node's own beats is restarted: three quarters of the TTL.
    pub(crate) fn silent_beats_max(&self) -> u32 {
        let every = self.heartbeat_every().as_millis().max(1);
        let patience = (self.node_ttl * 3 / 4).as_millis();
        u32::try_from(patience.div_ceil(every))
            .unwrap_or(u32::MAX)
            .max(3)
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
    /// Server API calls to and from every node.
    pub calls: crate::cluster::calls::NodeCalls,
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
