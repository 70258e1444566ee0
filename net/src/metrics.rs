//! Prometheus metrics for one server instance, on its own recorder (not the
//! process-global one), so several servers in one process keep apart.

use std::sync::Arc;

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use roomhub_core::ErrorCode;
use tokio::time::Instant;

/// Every metric roomhub exports, registered once at start.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    started: Instant,
    pub connections_active: Gauge,
    pub connections_total: Counter,
    pub messages_received: Counter,
    pub messages_sent: Counter,
    pub socket_writes: Counter,
    pub backlog_writes: Counter,
    pub slow_consumer_disconnects: Counter,
    pub ephemeral_dropped: Counter,
    pub rooms: Gauge,
    pub uptime: Gauge,
    /// What the store's history takes, as its disk budget counts it.
    store_bytes: Gauge,
    /// The most bytes any one connection has had queued; never above the bound.
    queue_peak: Gauge,
    queue_peak_bytes: std::sync::atomic::AtomicUsize,
    errors: Vec<(ErrorCode, Counter)>,
}

const META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let describe = |name: &'static str, unit: Unit, help: &'static str| {
            recorder.describe_counter(name.into(), Some(unit), SharedString::const_str(help));
        };
        describe(
            "roomhub_connections_total",
            Unit::Count,
            "WebSocket connections accepted",
        );
        describe(
            "roomhub_messages_received_total",
            Unit::Count,
            "Text frames received from clients",
        );
        describe(
            "roomhub_messages_sent_total",
            Unit::Count,
            "Frames written to clients",
        );
        describe(
            "roomhub_socket_writes_total",
            Unit::Count,
            "Socket writes to clients; frames sent / writes = frames per write",
        );
        describe(
            "roomhub_backlog_writes_total",
            Unit::Count,
            "Socket writes made by a connection's writer task for a backlog (the socket was full when the hub wrote); included in roomhub_socket_writes_total",
        );
        describe(
            "roomhub_errors_total",
            Unit::Count,
            "Error frames sent, by protocol error code",
        );
        describe(
            "roomhub_slow_consumer_disconnects_total",
            Unit::Count,
            "Connections closed with 4000",
        );
        describe(
            "roomhub_ephemeral_dropped_total",
            Unit::Count,
            "Typing indicators dropped for queues under pressure",
        );
        describe(
            "roomhub_auth_failures_total",
            Unit::Count,
            "Upgrades refused for their token, by reason",
        );
        describe(
            "roomhub_connections_refused_total",
            Unit::Count,
            "Upgrades refused by a connection limit (per_ip, server_full, per_user)",
        );
        recorder.describe_gauge(
            "roomhub_connections_active".into(),
            Some(Unit::Count),
            "Open WebSocket connections".into(),
        );
        recorder.describe_gauge(
            "roomhub_rooms".into(),
            Some(Unit::Count),
            "Rooms with members on this node".into(),
        );
        recorder.describe_gauge(
            "roomhub_store_history_bytes".into(),
            Some(Unit::Bytes),
            "Every room's stored messages together, as the disk budget counts them (0 without a store)".into(),
        );
        recorder.describe_gauge(
            "roomhub_uptime_seconds".into(),
            Some(Unit::Seconds),
            "Seconds since start".into(),
        );
        let counter =
            |name: &'static str| recorder.register_counter(&Key::from_static_name(name), &META);
        let gauge =
            |name: &'static str| recorder.register_gauge(&Key::from_static_name(name), &META);
        let errors = ErrorCode::ALL
            .iter()
            .map(|code| {
                let key = Key::from_parts(
                    "roomhub_errors_total",
                    vec![Label::new("code", code.as_str())],
                );
                (*code, recorder.register_counter(&key, &META))
            })
            .collect();
        let inner = Inner {
            connections_active: gauge("roomhub_connections_active"),
            connections_total: counter("roomhub_connections_total"),
            messages_received: counter("roomhub_messages_received_total"),
            messages_sent: counter("roomhub_messages_sent_total"),
            socket_writes: counter("roomhub_socket_writes_total"),
            backlog_writes: counter("roomhub_backlog_writes_total"),
            slow_consumer_disconnects: counter("roomhub_slow_consumer_disconnects_total"),
            ephemeral_dropped: counter("roomhub_ephemeral_dropped_total"),
            rooms: gauge("roomhub_rooms"),
            uptime: gauge("roomhub_uptime_seconds"),
            queue_peak: gauge("roomhub_send_queue_peak_bytes"),
            store_bytes: gauge("roomhub_store_history_bytes"),
            queue_peak_bytes: std::sync::atomic::AtomicUsize::new(0),
            errors,
            started: Instant::now(),
            handle,
            recorder,
        };
        Metrics {
            inner: Arc::new(inner),
        }
    }

    pub fn connection_opened(&self) {
        self.inner.connections_total.increment(1);
        self.inner.connections_active.increment(1.0);
    }

    pub fn connection_closed(&self) {
        self.inner.connections_active.decrement(1.0);
    }

    pub fn received(&self) {
        self.inner.messages_received.increment(1);
    }

    /// One socket write that completed `frames` frames.
    pub fn wrote(&self, frames: u64) {
        self.inner.socket_writes.increment(1);
        self.inner.messages_sent.increment(frames);
    }

    /// One write by a connection's writer task, draining its backlog.
    pub fn wrote_backlog(&self, frames: u64) {
        self.wrote(frames);
        self.inner.backlog_writes.increment(1);
    }

    pub fn slow_consumer(&self) {
        self.inner.slow_consumer_disconnects.increment(1);
    }

    pub fn ephemeral_dropped(&self, frames: u64) {
        self.inner.ephemeral_dropped.increment(frames);
    }

    /// Records a connection's queue size after a push.
    pub fn queued(&self, bytes: usize) {
        use std::sync::atomic::Ordering;
        if bytes
            > self
                .inner
                .queue_peak_bytes
                .fetch_max(bytes, Ordering::Relaxed)
        {
            self.inner.queue_peak.set(bytes as f64);
        }
    }

    /// An upgrade refused by a connection limit.
    pub fn refused(&self, limit: &'static str) {
        self.count_labelled("roomhub_connections_refused_total", ("limit", limit));
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.count_labelled("roomhub_auth_failures_total", ("reason", reason));
    }

    fn count_labelled(&self, name: &'static str, (key, value): (&'static str, &'static str)) {
        let key = Key::from_parts(name, vec![Label::new(key, value)]);
        self.inner
            .recorder
            .register_counter(&key, &META)
            .increment(1);
    }

    /// Copies the hub's own counts (it is the only one that knows them).
    pub fn hub_state(&self, rooms: usize, errors: impl Iterator<Item = (ErrorCode, u64)>) {
        self.inner.rooms.set(rooms as f64);
        for ((_, counter), (_, n)) in self.inner.errors.iter().zip(errors) {
            counter.absolute(n);
        }
    }

    /// Copies what the store's history takes.
    pub fn store_state(&self, stored_bytes: u64) {
        self.inner.store_bytes.set(stored_bytes as f64);
    }

    /// Seconds since the server started.
    pub fn uptime_secs(&self) -> u64 {
        self.inner.started.elapsed().as_secs()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.inner
            .uptime
            .set(self.inner.started.elapsed().as_secs_f64());
        self.inner.handle.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
