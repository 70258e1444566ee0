//! What a connection needs from the server, and nothing more: the hub's
//! inbox, the online count, metrics and its queue and write limits (which
//! a reload changes for the connections opened after it).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::conn::online::Online;
use crate::hub::inbox::Inbox;
use crate::metrics::Metrics;

pub(crate) struct ConnContext {
    pub(crate) inbox: Inbox,
    pub(crate) online: Online,
    pub(crate) metrics: Metrics,
    /// Live bytes a connection may have waiting (the send queue bound).
    send_queue_bytes: AtomicUsize,
    /// How long one write may take to make progress, in milliseconds.
    write_wait_ms: AtomicU64,
}

impl ConnContext {
    pub(crate) fn new(
        inbox: Inbox,
        online: Online,
        metrics: Metrics,
        send_queue_bytes: usize,
        write_wait: Duration,
    ) -> Self {
        let context = ConnContext {
            inbox,
            online,
            metrics,
            send_queue_bytes: AtomicUsize::new(0),
            write_wait_ms: AtomicU64::new(0),
        };
        context.set_limits(send_queue_bytes, write_wait);
        context
    }

    /// The limits of connections opened from now on.
    pub(crate) fn set_limits(&self, send_queue_bytes: usize, write_wait: Duration) {
        self.send_queue_bytes
            .store(send_queue_bytes, Ordering::Relaxed);
        let ms = u64::try_from(write_wait.as_millis()).unwrap_or(u64::MAX);
        self.write_wait_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn send_queue_bytes(&self) -> usize {
        self.send_queue_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn write_wait(&self) -> Duration {
        Duration::from_millis(self.write_wait_ms.load(Ordering::Relaxed))
    }
}
