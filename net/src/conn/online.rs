//! The online count: connections live in the protocol's sense, from the
//! upgrade until either side closes them (what `/ws/online` reports, and
//! what a cluster node announces in its heartbeat).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::metrics::Metrics;

/// The node's count of live connections; cheap to clone and read.
#[derive(Clone, Default)]
pub struct Online(Arc<AtomicUsize>);

impl Online {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts one connection as online until it ends, which can be well before
/// its socket is gone (a close frame may wait on a dead link for the write
/// timeout).
pub(crate) struct Live {
    online: Online,
    metrics: Metrics,
    ended: AtomicBool,
}

impl Live {
    pub(crate) fn new(online: Online, metrics: Metrics) -> Self {
        online.0.fetch_add(1, Ordering::Relaxed);
        metrics.connection_opened();
        Live {
            online,
            metrics,
            ended: AtomicBool::new(false),
        }
    }

    /// The connection is over; counted once however often it is called.
    pub(crate) fn end(&self) {
        if !self.ended.swap(true, Ordering::Relaxed) {
            self.online.0.fetch_sub(1, Ordering::Relaxed);
            self.metrics.connection_closed();
        }
    }
}
