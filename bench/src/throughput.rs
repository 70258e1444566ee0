//! Throughput and latency: N connections in R rooms, S of them sending at a
//! fixed rate; every other member of the room must receive every message.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::MissedTickBehavior;

use crate::client::{self, Kind, Target, Ws};
use crate::fleet;
use crate::procstat;
use crate::report::{Latency, Table};

#[derive(Debug, Clone)]
pub struct Opts {
    pub connections: usize,
    pub rooms: usize,
    pub senders: usize,
    /// Messages per second per sender.
    pub rate: f64,
    /// Bytes of `content` per message.
    pub payload: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// How long to wait after the window for the last deliveries.
    pub drain: Duration,
    pub concurrency: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub label: String,
    pub connections: usize,
    pub rooms: usize,
    pub senders: usize,
    pub rate_per_sender: f64,
    pub payload_bytes: usize,
    pub duration_secs: f64,
    pub connect_secs: f64,
    pub join_secs: f64,
    pub sent: u64,
    pub acks: u64,
    pub errors: BTreeMap<String, u64>,
    pub expected: u64,
    pub delivered: u64,
    pub delivery_ratio: f64,
    pub deliveries_per_sec: f64,
    pub latency_ms: Latency,
    pub gaps: u64,
    pub disconnects: u64,
    pub connect_failures: usize,
    pub server_cpu: Option<f64>,
    pub server_us_per_delivery: Option<f64>,
    /// Server CPU per message sent in the window (what sequencing costs,
    /// where deliveries per message are few).
    pub server_us_per_message: Option<f64>,
    /// Each broker process's CPU (share of a core), in `--broker-pid` order.
    pub broker_cpu: Vec<f64>,
    /// All brokers' CPU per message sent in the window.
    pub broker_us_per_message: Option<f64>,
    pub server_rss_mb: Option<f64>,
    pub generator_cpu: Option<f64>,
    /// Frames per socket write on the server during the window (from its
    /// `/metrics`; 1.0 means every frame went out alone).
    pub server_frames_per_write: Option<f64>,
    /// The hub thread's CPU (`roomhub-hub`) as a share of all the server's
    /// during the window: the serial part.
    pub server_hub_share: Option<f64>,
}

/// The name of roomhub's hub thread.
const HUB_THREAD: &str = "roomhub-hub";

/// Counters shared by every connection task (one thread, so `Cell`s).
struct Shared {
    origin: Instant,
    window_start: Instant,
    window_end: Instant,
    members: Vec<u64>,
    latency_us: RefCell<Histogram<u64>>,
    acks: Cell<u64>,
    errors: RefCell<BTreeMap<String, u64>>,
    expected: Cell<u64>,
    delivered: Cell<u64>,
    gaps: Cell<u64>,
    disconnects: Cell<u64>,
}

fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get() + by);
}

impl Shared {
    fn micros(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }

    /// Reads one frame for connection in `room`; `last` is its last offset.
    fn on_frame(&self, frame: &str, room: usize, last: &mut u64, sender: Option<&SenderState>) {
        match client::kind(frame) {
            Kind::NewMessage => {
                if let Some(offset) = client::number(frame, "\"offset\":") {
                    if offset != *last + 1 {
                        bump(&self.gaps, 1);
                    }
                    *last = offset;
                }
                let Some(content) = client::string(frame, "\"content\":\"") else {
                    return;
                };
                let mut parts = content.split('.');
                let sent_us: Option<u64> = parts.nth(2).and_then(|t| t.parse().ok());
                if let (Some(sent_us), Some("m")) = (sent_us, parts.next()) {
                    bump(&self.delivered, 1);
                    let waited = self.micros().saturating_sub(sent_us).max(1);
                    let _ = self.latency_us.borrow_mut().record(waited);
                }
            }
            Kind::Ack => {
                let seq: Option<u64> =
                    client::string(frame, "\"id\":\"").and_then(|s| s.parse().ok());
                if let (Some(seq), Some(s)) = (seq, sender) {
                    // The sender's own message moved its offset too.
                    if let Some(offset) = client::number(frame, "\"offset\":")
                        && offset == *last + 1
                    {
                        *last = offset;
                    }
                    if s.measured(seq) {
                        bump(&self.acks, 1);
                        bump(&self.expected, self.members[room] - 1);
                    }
                }
            }
            Kind::Error => {
                let code = client::string(frame, "\"code\":\"")
                    .unwrap_or("?")
                    .to_string();
                *self.errors.borrow_mut().entry(code).or_default() += 1;
            }
            Kind::RoomInfo | Kind::Other => {}
        }
    }
}

/// Which of a sender's sequence numbers fell in the measured window.
#[derive(Default)]
struct SenderState {
    first_measured: Cell<Option<u64>>,
    last_measured: Cell<Option<u64>>,
}

impl SenderState {
    fn measured(&self, seq: u64) -> bool {
        matches!((self.first_measured.get(), self.last_measured.get()),
            (Some(a), Some(b)) if (a..=b).contains(&seq))
    }
}

pub async fn run(
    target: &Target,
    opts: &Opts,
    server_pid: Option<u32>,
    broker_pids: &[u32],
    label: String,
) -> Result<Report, String> {
    let rooms = opts.rooms.max(1);
    if opts.senders > opts.connections {
        return Err("more senders than connections".into());
    }
    let mut members = vec![0u64; rooms];
    for i in 0..opts.connections {
        members[i % rooms] += 1;
    }
    if members.iter().any(|&m| m < 2) {
        return Err("every room needs at least two members".into());
    }
    let opened = fleet::open(target, 0..opts.connections, opts.concurrency).await;
    if let Some(e) = opened.failures.first() {
        return Err(format!(
            "{} connections failed, first: {e}",
            opened.failures.len()
        ));
    }
    // Every connection joins at once; the phase ends when the last room_info
    // came. Like real clients, the joined ones keep reading (the others'
    // `user_joined`) until everyone is in.
    let join_started = Instant::now();
    let still_joining = Cell::new(opened.conns.len());
    let last_joined = Cell::new(join_started);
    let (all_in, all_in_rx) = tokio::sync::watch::channel(false);
    let joined: Vec<Result<(usize, Ws, u64), String>> =
        futures_util::future::join_all(opened.conns.into_iter().map(|(i, mut ws)| {
            let mut all_in_rx = all_in_rx.clone();
            let (still_joining, last_joined, all_in) = (&still_joining, &last_joined, &all_in);
            async move {
                let (info, _) = client::join(&mut ws, &fleet::room(i % rooms), None).await?;
                let offset = client::number(&info, "\"offset\":").unwrap_or(0);
                last_joined.set(Instant::now());
                still_joining.set(still_joining.get() - 1);
                if still_joining.get() == 0 {
                    let _ = all_in.send(true);
                }
                loop {
                    tokio::select! {
                        biased;
                        _ = all_in_rx.wait_for(|in_| *in_) => break,
                        frame = client::next_text(&mut ws) => {
                            if frame.is_none() {
                                return Err(format!("connection {i} closed while others joined"));
                            }
                        }
                    }
                }
                Ok((i, ws, offset))
            }
        }))
        .await;
    let join_secs = last_joined.get().duration_since(join_started).as_secs_f64();
    let mut conns = Vec::with_capacity(joined.len());
    for j in joined {
        conns.push(j?);
    }

    let origin = Instant::now();
    let send_start = origin + Duration::from_millis(100);
    let window_start = send_start + opts.warmup;
    let window_end = window_start + opts.duration;
    let shared = Rc::new(Shared {
        origin,
        window_start,
        window_end,
        members,
        latency_us: RefCell::new(
            Histogram::new_with_bounds(1, 120_000_000, 3).map_err(|e| e.to_string())?,
        ),
        acks: Cell::new(0),
        errors: RefCell::new(BTreeMap::new()),
        expected: Cell::new(0),
        delivered: Cell::new(0),
        gaps: Cell::new(0),
        disconnects: Cell::new(0),
    });
    let period = Duration::from_secs_f64(1.0 / opts.rate.max(0.001));
    let local = tokio::task::LocalSet::new();
    let mut senders_done = Vec::new();
    for (i, ws, offset) in conns {
        let shared = shared.clone();
        let room = i % rooms;
        if i < opts.senders {
            // Senders start spread over one period, not all at once.
            let first = send_start + period.mul_f64(i as f64 / opts.senders as f64);
            let state = Rc::new(SenderState::default());
            senders_done.push(state.clone());
            let payload = opts.payload;
            local.spawn_local(sender(
                shared, ws, i, room, offset, first, period, payload, state,
            ));
        } else {
            local.spawn_local(receiver(shared, ws, room, offset));
        }
    }
    let stats = local
        .run_until(async {
            tokio::time::sleep_until(window_start.into()).await;
            let writes_before = fleet::write_counters(target).await;
            let server_before = server_pid.and_then(procstat::sample);
            let hub_before = server_pid.and_then(|p| procstat::thread_cpu(p, HUB_THREAD));
            let brokers_before: Vec<_> = broker_pids.iter().map(|p| procstat::sample(*p)).collect();
            let own_before = procstat::own();
            tokio::time::sleep_until(window_end.into()).await;
            let server_after = server_pid.and_then(procstat::sample);
            let hub_after = server_pid.and_then(|p| procstat::thread_cpu(p, HUB_THREAD));
            let brokers_after: Vec<_> = broker_pids.iter().map(|p| procstat::sample(*p)).collect();
            let own_after = procstat::own();
            let writes_after = fleet::write_counters(target).await;
            // Let the last messages land.
            let drain_end = Instant::now() + opts.drain;
            while Instant::now() < drain_end
                && (shared.delivered.get() < shared.expected.get()
                    || shared.acks.get() < measured_sent(&senders_done))
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let per_write = match (writes_before, writes_after) {
                (Some((f0, w0)), Some((f1, w1))) if w1 > w0 => Some((f1 - f0) / (w1 - w0)),
                _ => None,
            };
            let hub = match (hub_before, hub_after) {
                (Some(b), Some(a)) => Some(a.saturating_sub(b)),
                _ => None,
            };
            let brokers: Vec<_> = brokers_before
                .into_iter()
                .zip(brokers_after)
                .map(|(b, a)| procstat::cpu_between(b, a))
                .collect();
            (
                server_before,
                server_after,
                own_before,
                own_after,
                per_write,
                hub,
                brokers,
            )
        })
        .await;
    let (server_before, server_after, own_before, own_after, per_write, hub_cpu, brokers) = stats;
    let wall = opts.duration;
    let delivered = shared.delivered.get();
    let expected = shared.expected.get();
    let server_cpu_time = procstat::cpu_between(server_before, server_after);
    let sent = measured_sent(&senders_done);
    let per_message = |cpu: Duration| (sent > 0).then(|| cpu.as_secs_f64() * 1e6 / sent as f64);
    let broker_total: Option<Duration> = brokers.iter().copied().sum();
    Ok(Report {
        mode: "throughput",
        label,
        connections: opts.connections,
        rooms,
        senders: opts.senders,
        rate_per_sender: opts.rate,
        payload_bytes: opts.payload,
        duration_secs: wall.as_secs_f64(),
        connect_secs: opened.took.as_secs_f64(),
        join_secs,
        sent,
        acks: shared.acks.get(),
        errors: shared.errors.borrow().clone(),
        expected,
        delivered,
        delivery_ratio: if expected == 0 {
            0.0
        } else {
            delivered as f64 / expected as f64
        },
        deliveries_per_sec: delivered as f64 / wall.as_secs_f64(),
        latency_ms: Latency::from_micros(&shared.latency_us.borrow()),
        gaps: shared.gaps.get(),
        disconnects: shared.disconnects.get(),
        connect_failures: opened.failures.len(),
        server_cpu: procstat::cpu_share(server_before, server_after, wall),
        server_us_per_delivery: server_cpu_time
            .filter(|_| delivered > 0)
            .map(|t| t.as_secs_f64() * 1e6 / delivered as f64),
        server_us_per_message: server_cpu_time.and_then(per_message),
        broker_cpu: brokers
            .iter()
            .map(|b| b.map_or(0.0, |t| t.as_secs_f64() / wall.as_secs_f64()))
            .collect(),
        broker_us_per_message: broker_total
            .filter(|_| !brokers.is_empty())
            .and_then(per_message),
        server_rss_mb: server_after.map(|s| s.rss_bytes as f64 / (1 << 20) as f64),
        generator_cpu: procstat::cpu_share(own_before, own_after, wall),
        server_frames_per_write: per_write,
        server_hub_share: match (hub_cpu, server_cpu_time) {
            (Some(hub), Some(all)) if !all.is_zero() => Some(hub.as_secs_f64() / all.as_secs_f64()),
            _ => None,
        },
    })
}

fn measured_sent(senders: &[Rc<SenderState>]) -> u64 {
    senders
        .iter()
        .map(|s| match (s.first_measured.get(), s.last_measured.get()) {
            (Some(a), Some(b)) => b - a + 1,
            _ => 0,
        })
        .sum()
}

async fn receiver(shared: Rc<Shared>, mut ws: Ws, room: usize, mut last: u64) {
    while let Some(frame) = client::next_text(&mut ws).await {
        shared.on_frame(&frame, room, &mut last, None);
    }
    bump(&shared.disconnects, 1);
}

#[allow(clippy::too_many_arguments)]
async fn sender(
    shared: Rc<Shared>,
    mut ws: Ws,
    index: usize,
    room: usize,
    mut last: u64,
    first: Instant,
    period: Duration,
    payload: usize,
    state: Rc<SenderState>,
) {
    let mut ticker = tokio::time::interval_at(first.into(), period);
    // An offered load is kept: a late tick is caught up, not skipped.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let room_name = fleet::room(room);
    let mut seq = 0u64;
    let mut sending = true;
    loop {
        tokio::select! {
            biased;
            frame = client::next_text(&mut ws) => match frame {
                Some(frame) => shared.on_frame(&frame, room, &mut last, Some(&state)),
                None => {
                    bump(&shared.disconnects, 1);
                    return;
                }
            },
            _ = ticker.tick(), if sending => {
                let now = Instant::now();
                if now >= shared.window_end {
                    sending = false;
                    continue;
                }
                seq += 1;
                let measured = now >= shared.window_start;
                if measured {
                    if state.first_measured.get().is_none() {
                        state.first_measured.set(Some(seq));
                    }
                    state.last_measured.set(Some(seq));
                }
                let mut content = format!(
                    "{index}.{seq}.{}.{}.",
                    shared.micros(),
                    if measured { "m" } else { "w" }
                );
                while content.len() < payload {
                    content.push('x');
                }
                let frame = format!(
                    r#"{{"type":"send_message","room":"{room_name}","id":"{seq}","payload":{{"content":"{content}"}}}}"#
                );
                if client::send(&mut ws, frame).await.is_err() {
                    bump(&shared.disconnects, 1);
                    return;
                }
            }
        }
    }
}

impl Report {
    pub fn table(&self) -> Table {
        let mut t = Table::new(format!(
            "throughput: {} connections in {} rooms, {} senders x {}/s, {}-byte content, {:.0} s",
            self.connections,
            self.rooms,
            self.senders,
            self.rate_per_sender,
            self.payload_bytes,
            self.duration_secs
        ));
        t.row("label", &self.label);
        t.row("connect (s)", format!("{:.3}", self.connect_secs));
        t.row("join (s)", format!("{:.3}", self.join_secs));
        t.row("sent / acked", format!("{} / {}", self.sent, self.acks));
        t.row("errors", format!("{:?}", self.errors));
        t.row(
            "delivered / expected",
            format!("{} / {}", self.delivered, self.expected),
        );
        t.row("delivery ratio", format!("{:.6}", self.delivery_ratio));
        t.row("deliveries/s", format!("{:.0}", self.deliveries_per_sec));
        t.row("latency p50/p90/p99/max (ms)", self.latency_ms.to_string());
        t.row(
            "gaps / disconnects",
            format!("{} / {}", self.gaps, self.disconnects),
        );
        t.opt_num("server CPU (share of a core)", self.server_cpu, 3);
        t.opt_num(
            "server CPU per delivery (us)",
            self.server_us_per_delivery,
            2,
        );
        t.opt_num("server RSS (MiB)", self.server_rss_mb, 1);
        t.opt_num("generator CPU (share of a core)", self.generator_cpu, 3);
        t.opt_num("server frames per write", self.server_frames_per_write, 2);
        t.opt_num("hub thread's share of server CPU", self.server_hub_share, 3);
        t.opt_num("server CPU per message (us)", self.server_us_per_message, 2);
        for (i, cpu) in self.broker_cpu.iter().enumerate() {
            t.opt_num(&format!("broker {i} CPU (share of a core)"), Some(*cpu), 3);
        }
        t.opt_num("broker CPU per message (us)", self.broker_us_per_message, 2);
        t
    }
}
