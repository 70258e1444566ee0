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
    tls_handshake_failures: Counter,
    pub ephemeral_dropped: Counter,
    pub rooms: Gauge,
    pub uptime: Gauge,
    /// What the store's history takes, as its disk budget counts it.
    store_bytes: Gauge,
    /// The most bytes any one connection has had queued; never above the bound.
    queue_peak: Gauge,
    queue_peak_bytes: std::sync::atomic::AtomicUsize,
    /// Frames received and sent so far, as the two counters above count
    /// them, for the admin page's chart.
    received_total: std::sync::atomic::AtomicU64,
    sent_total: std::sync::atomic::AtomicU64,
    errors: Vec<(ErrorCode, Counter)>,
}

const META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

impl Metrics {
    pub fn new() -> Self {
        // Buckets (not a summary), so quantiles can be taken across nodes.
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("roomhub_append_seconds".into()),
                &[
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5,
                ],
            )
            .expect("buckets are given")
            .build_recorder();
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
        describe(
            "roomhub_tls_handshake_failures_total",
            Unit::Count,
            "TLS handshakes that failed or timed out (with --tls-cert)",
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
            tls_handshake_failures: counter("roomhub_tls_handshake_failures_total"),
            ephemeral_dropped: counter("roomhub_ephemeral_dropped_total"),
            rooms: gauge("roomhub_rooms"),
            uptime: gauge("roomhub_uptime_seconds"),
            queue_peak: gauge("roomhub_send_queue_peak_bytes"),
            store_bytes: gauge("roomhub_store_history_bytes"),
            queue_peak_bytes: std::sync::atomic::AtomicUsize::new(0),
            received_total: std::sync::atomic::AtomicU64::new(0),
            sent_total: std::sync::atomic::AtomicU64::new(0),
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
        self.inner
            .received_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// One socket write that completed `frames` frames.
    pub fn wrote(&self, frames: u64) {
        self.inner.socket_writes.increment(1);
        self.inner.messages_sent.increment(frames);
        self.inner
            .sent_total
            .fetch_add(frames, std::sync::atomic::Ordering::Relaxed);
    }

    /// One write by a connection's writer task, draining its backlog.
    pub fn wrote_backlog(&self, frames: u64) {
        self.wrote(frames);
        self.inner.backlog_writes.increment(1);
    }

    pub fn slow_consumer(&self) {
        self.inner.slow_consumer_disconnects.increment(1);
    }

    /// A TLS handshake that failed or timed out.
    pub fn tls_handshake_failed(&self) {
        self.inner.tls_handshake_failures.increment(1);
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

    /// The timer of one sequencer's appends: `backend` is `store` (the
    /// embedded store's commit of a batch) or `broker` (one round trip to
    /// the broker for a batch).
    pub(crate) fn append_timer(&self, backend: &'static str) -> AppendTimer {
        let key = Key::from_parts(
            "roomhub_append_seconds",
            vec![Label::new("backend", backend)],
        );
        AppendTimer(self.inner.recorder.register_histogram(&key, &META))
    }

    /// Frames received from clients and frames written to them, so far (as
    /// `/metrics` shows them).
    pub(crate) fn totals(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.inner.received_total.load(Relaxed),
            self.inner.sent_total.load(Relaxed),
        )
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

/// Records how long a batch of appends took to be stored.
#[derive(Clone)]
pub(crate) struct AppendTimer(metrics::Histogram);

impl AppendTimer {
    pub(crate) fn record(&self, took: std::time::Duration) {
        self.0.record(took.as_secs_f64());
    }
}
