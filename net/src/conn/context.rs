//! What a connection needs from the server, and nothing more: the hub's
//! inbox, the online count, metrics and its queue and write limits.

use std::time::Duration;

use crate::conn::online::Online;
use crate::hub::inbox::Inbox;
use crate::metrics::Metrics;

pub(crate) struct ConnContext {
    pub(crate) inbox: Inbox,
    pub(crate) online: Online,
    pub(crate) metrics: Metrics,
    /// Live bytes a connection may have waiting (the send queue bound).
    pub(crate) send_queue_bytes: usize,
    /// How long one write may take to make progress.
    pub(crate) write_wait: Duration,
}
