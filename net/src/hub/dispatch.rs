//! Hands the core's connection outputs to each connection's outbox: a pass's
//! frames grouped per connection (one lock each), pings and closes in order,
//! and queue overflows fed back to the core as inputs.

use bytes::Bytes;
use roomhub_core::api::ApiAnswer;
use roomhub_core::{ConnId, Core, FrameKind, Input, Output, PublishOutcome, close};
use rustc_hash::FxHashMap;

use crate::clock::Clock;
use crate::conn::outbox::{Framing, Outbox};
use crate::conn::shard::Shards;
use crate::hub::engine::Engine;
use crate::hub::services::Services;
use crate::metrics::Metrics;

/// The outboxes of the connections the hub queues frames for, and the
/// shards that write them.
pub(crate) struct Connections {
    outboxes: FxHashMap<ConnId, Outbox>,
    metrics: Metrics,
    /// The I/O shards that write the sockets.
    shards: Shards,
}

impl Connections {
    pub(crate) fn new(metrics: Metrics, shards: Shards) -> Self {
        Connections {
            outboxes: FxHashMap::default(),
            metrics,
            shards,
        }
    }

    pub(crate) fn insert(&mut self, conn: ConnId, outbox: Outbox) {
        self.outboxes.insert(conn, outbox);
    }

    pub(crate) fn remove(&mut self, conn: ConnId) {
        self.outboxes.remove(&conn);
    }

    /// Hands each shard the connections staged for it this pass, to write
    /// each once with everything queued for it.
    pub(crate) fn flush(&mut self) {
        self.shards.hand_over();
    }

    /// Queues every output for its connection and stages, on its shard,
    /// each connection that has something new to write. Overflows found on
    /// the way are fed back to the core, whose answers are dispatched in
    /// turn; answers to API publishes go to `published`, to other API
    /// calls to `answered`, and calls for the hub's services to `calls`.
    pub(crate) fn dispatch<C: Core>(
        &mut self,
        engine: &mut Engine<C>,
        clock: Clock,
        published: &mut Vec<(u64, PublishOutcome)>,
        answered: &mut Vec<(u64, ApiAnswer)>,
        calls: &mut Vec<Output>,
    ) {
        loop {
            let now = clock.now();
            let mut overflowed = Vec::new();
            let mut alive = Vec::new();
            // Frames are gathered first and handed over per connection, one
            // lock each, rather than one lock per frame.
            let mut staged: Vec<(ConnId, Bytes, FrameKind)> = Vec::new();
            while let Some(out) = engine.poll_output(now) {
                match out {
                    Output::Send { conn, frame, kind } => staged.push((conn, frame, kind)),
                    Output::Ping { conn } => {
                        if let Some(outbox) = self.outboxes.get(&conn) {
                            if outbox.ping() {
                                self.shards.stage(conn.0, outbox);
                            }
                            // An SSE client cannot answer a ping: its stream
                            // is alive while its TCP connection is (the
                            // kernel drops a peer that stops acknowledging
                            // within the pong wait, see `os::tcp_user_timeout`).
                            if outbox.framing() == Framing::Sse {
                                alive.push(conn);
                            }
                        }
                    }
                    Output::Close { conn, code, reason } => {
                        // What the pass gave the connection goes before its close.
                        self.hand_over(&mut staged, &mut overflowed);
                        if let Some(outbox) = self.outboxes.remove(&conn) {
                            // Over for the protocol now, even if the close
                            // frame has to wait on a dead link.
                            outbox.end_live();
                            if code == close::SLOW_CONSUMER {
                                outbox.abandon();
                                self.metrics.slow_consumer();
                            }
                            // Written at once, after what was queued.
                            outbox.close_now(code, reason);
                        }
                    }
                    Output::Published { ticket, outcome } => published.push((ticket, outcome)),
                    Output::ApiAnswered { ticket, answer } => answered.push((ticket, answer)),
                    out if Services::serves(&out) => calls.push(out),
                    // The engine hands the sequencer's outputs to whoever
                    // owns the order (`Output::is_for_sequencer`).
                    _ => {}
                }
            }
            self.hand_over(&mut staged, &mut overflowed);
            for conn in alive {
                engine.handle(Input::Activity { conn }, now);
            }
            if overflowed.is_empty() {
                return;
            }
            for conn in overflowed {
                engine.handle(Input::QueueOverflow { conn }, now);
            }
        }
    }

    /// Queues the staged frames, each connection's in order and under one
    /// lock; stages the connections to write and notes those that
    /// overflowed.
    fn hand_over(
        &mut self,
        staged: &mut Vec<(ConnId, Bytes, FrameKind)>,
        overflowed: &mut Vec<ConnId>,
    ) {
        if staged.is_empty() {
            return;
        }
        // Grouped by connection; the sort is stable, so each connection's
        // frames keep the core's order.
        // SSE events made once per frame for the pass (its frames are alive
        // in `staged` meanwhile, so their addresses stay theirs).
        let mut events = crate::conn::outbox::sse::Events::default();
        staged.sort_by_key(|(conn, _, _)| *conn);
        for frames in staged.chunk_by(|a, b| a.0 == b.0) {
            let conn = frames[0].0;
            let Some(outbox) = self.outboxes.get(&conn) else {
                continue;
            };
            let queued = outbox.push_frames(
                frames.iter().map(|(_, frame, kind)| (frame, *kind)),
                &mut events,
            );
            if queued.flush_due {
                self.shards.stage(conn.0, outbox);
            }
            if queued.live_bytes > 0 {
                self.metrics.queued(queued.live_bytes);
            }
            if queued.ephemeral_dropped > 0 {
                self.metrics.ephemeral_dropped(queued.ephemeral_dropped);
            }
            if queued.overflow {
                outbox.abandon();
                overflowed.push(conn);
            }
        }
        staged.clear();
    }
}
