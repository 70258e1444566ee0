//! Network drops: N clients in R rooms, one publisher per room sending at a
//! fixed rate. Every client's socket is reset (a TCP RST: `SO_LINGER` 0,
//! then close) every U(a, b) seconds and stays offline for c seconds, then
//! reconnects and rejoins with `since`. Measured over the messages the
//! server acknowledged: the share each member received, duplicates, offsets
//! going backwards, `recovered: false` answers, and the replay latency from
//! the start of a reconnect to its `room_info`.
//!
//! The publishers are not reset: they are the source the delivery ratio is
//! measured against (what was acked is what must arrive).

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{self, Kind, Target, Ws};
use crate::fleet;
use crate::procstat;
use crate::report::{Latency, Table};

#[derive(Debug, Clone)]
pub struct Opts {
    pub clients: usize,
    pub rooms: usize,
    /// Messages each room's publisher sends.
    pub messages: usize,
    /// Messages per second per publisher.
    pub rate: f64,
    pub reset_min: Duration,
    pub reset_max: Duration,
    pub offline: Duration,
    /// After the last message: time for everyone to reconnect and catch up
    /// (no resets then).
    pub drain: Duration,
    pub concurrency: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub label: String,
    pub clients: usize,
    pub rooms: usize,
    pub messages_per_room: usize,
    pub acked: u64,
    /// Acked messages times the members of their room.
    pub expected: u64,
    /// Of those, received by the member (each once).
    pub delivered: u64,
    pub delivery_ratio: f64,
    pub duplicates: u64,
    pub backwards: u64,
    pub not_recovered: u64,
    pub resets: u64,
    pub reconnect_failures: u64,
    pub first_failure: Option<String>,
    /// From the start of a reconnect to its `room_info`.
    pub replay_ms: Latency,
    pub secs: f64,
    pub server_cpu_secs: Option<f64>,
    pub generator_cpu_secs: Option<f64>,
}

/// What one member saw, in its room's one epoch.
struct Seen {
    epoch: Option<String>,
    /// The highest offset received.
    last: u64,
    offsets: Vec<bool>,
}

impl Seen {
    fn new(messages: usize) -> Seen {
        Seen {
            epoch: None,
            last: 0,
            offsets: vec![false; messages + 1],
        }
    }
}

#[derive(Default)]
struct Totals {
    duplicates: Cell<u64>,
    backwards: Cell<u64>,
    not_recovered: Cell<u64>,
    resets: Cell<u64>,
    failures: Cell<u64>,
    first_failure: RefCell<Option<String>>,
    replay_us: RefCell<Option<Histogram<u64>>>,
}

impl Totals {
    fn bump(cell: &Cell<u64>) {
        cell.set(cell.get() + 1);
    }

    fn failed(&self, why: String) {
        Totals::bump(&self.failures);
        self.first_failure.borrow_mut().get_or_insert(why);
    }

    fn record(&self, seen: &mut Seen, offset: u64) {
        let Ok(at) = usize::try_from(offset) else {
            return;
        };
        if at >= seen.offsets.len() {
            seen.offsets.resize(at + 1, false);
        }
        let slot = &mut seen.offsets[at];
        if *slot {
            Totals::bump(&self.duplicates);
        }
        if offset < seen.last {
            Totals::bump(&self.backwards);
        }
        *slot = true;
        seen.last = seen.last.max(offset);
    }
}

/// A small deterministic generator for the reset intervals.
struct XorShift(u64);

impl XorShift {
    fn between(&mut self, a: Duration, b: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let span = b.saturating_sub(a).as_millis() as u64;
        a + Duration::from_millis(if span == 0 { 0 } else { self.0 % span })
    }
}

/// Resets the connection: `SO_LINGER` 0, so closing sends a RST.
fn reset(ws: Ws) {
    let tcp = ws.into_inner();
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

/// One member: connect, join (with `since` after the first time), read
/// until its reset falls due, reset, stay away, again, until `stop`.
/// What every member shares.
struct Shared<'a> {
    target: &'a Target,
    opts: &'a Opts,
    publishing: &'a Cell<bool>,
    stop: &'a Cell<bool>,
    totals: &'a Totals,
    /// First connections in flight at most (`--concurrency`).
    first_joins: &'a tokio::sync::Semaphore,
}

async fn member(shared: &Shared<'_>, index: usize, room: String) -> Seen {
    let Shared {
        target,
        opts,
        publishing,
        stop,
        totals,
        first_joins,
    } = *shared;
    let mut seen = Seen::new(opts.messages);
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0x2545_F491));
    let mut attempts = 0;
    while !stop.get() {
        // Before the first join, a place among the handshakes in flight.
        let permit = match seen.epoch {
            None => first_joins.acquire().await.ok(),
            Some(_) => None,
        };
        let started = Instant::now();
        // Each reconnect goes to the next node of a cluster.
        let node = index + attempts;
        attempts += 1;
        let mut ws = match target.connect_to(node, index, &fleet::user(index)).await {
            Ok(ws) => ws,
            Err(e) => {
                totals.failed(format!("client {index}: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let since = seen.epoch.clone().map(|e| (e, seen.last));
        let since_ref = since.as_ref().map(|(e, o)| (e.as_str(), *o));
        let (info, replayed) = match client::join(&mut ws, &room, since_ref).await {
            Ok(joined) => joined,
            Err(e) => {
                totals.failed(format!("client {index}: {e}"));
                continue;
            }
        };
        drop(permit);
        for offset in replayed {
            totals.record(&mut seen, offset);
        }
        if since.is_some() {
            let us = started.elapsed().as_micros() as u64;
            if let Some(h) = totals.replay_us.borrow_mut().as_mut() {
                let _ = h.record(us.max(1));
            }
            if !info.contains("\"recovered\":true") {
                Totals::bump(&totals.not_recovered);
            }
        }
        let epoch = client::string(&info, "\"epoch\":\"").map(str::to_string);
        if epoch != seen.epoch && seen.epoch.is_some() {
            // A new lineage: what came before cannot be compared.
            seen = Seen::new(opts.messages);
        }
        seen.epoch = epoch;
        let mut reset_at =
            tokio::time::Instant::now() + rng.between(opts.reset_min, opts.reset_max);
        let due = loop {
            tokio::select! {
                frame = client::next_text(&mut ws) => match frame {
                    Some(frame) => {
                        if client::kind(&frame) == Kind::NewMessage
                            && let Some(offset) = client::number(&frame, "\"offset\":")
                        {
                            totals.record(&mut seen, offset);
                        }
                        if stop.get() {
                            break false;
                        }
                    }
                    None => break false,
                },
                () = tokio::time::sleep_until(reset_at) => {
                    if publishing.get() {
                        break true;
                    }
                    // No resets while the rooms are quiet: read on.
                    reset_at = tokio::time::Instant::now()
                        + rng.between(opts.reset_min, opts.reset_max);
                }
                // `stop` and `publishing` change while this waits.
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if stop.get() {
                        break false;
                    }
                }
            }
        };
        if due {
            Totals::bump(&totals.resets);
            reset(ws);
            tokio::time::sleep(opts.offline).await;
        } else if stop.get() {
            return seen;
        }
    }
    seen
}

/// One room's publisher: `messages` at `rate`, each acked with its offset.
async fn publisher(target: &Target, r: usize, opts: &Opts) -> Result<Vec<u64>, String> {
    let room = fleet::room(r);
    let mut ws = target
        .connect(usize::MAX / 2 + r, &format!("publisher-{r}"))
        .await?;
    client::join(&mut ws, &room, None).await?;
    let every = Duration::from_secs_f64(1.0 / opts.rate.max(1e-6));
    let mut tick = tokio::time::interval(every);
    let mut acked = Vec::with_capacity(opts.messages);
    let mut sent = 0;
    while acked.len() < opts.messages {
        tokio::select! {
            _ = tick.tick(), if sent < opts.messages => {
                let frame = format!(
                    r#"{{"type":"send_message","room":"{room}","id":"{sent}","payload":{{"content":"m{sent}"}}}}"#
                );
                client::send(&mut ws, frame).await?;
                sent += 1;
            }
            frame = client::next_text(&mut ws) => {
                let frame = frame.ok_or("the publisher's connection closed")?;
                match client::kind(&frame) {
                    Kind::Ack => {
                        if let Some(offset) = client::number(&frame, "\"offset\":") {
                            acked.push(offset);
                        }
                    }
                    Kind::Error => return Err(format!("publisher {r}: {}", frame.as_str())),
                    _ => {}
                }
            }
        }
    }
    Ok(acked)
}

pub async fn run(
    target: &Target,
    opts: &Opts,
    server_pids: &[u32],
    label: String,
) -> Result<Report, String> {
    let rooms = opts.rooms.max(1);
    let totals = Totals {
        replay_us: RefCell::new(Histogram::new(3).ok()),
        ..Totals::default()
    };
    let publishing = Cell::new(false);
    let stop = Cell::new(false);
    let (totals, publishing, stop) = (&totals, &publishing, &stop);
    let server_before = procstat::sample_all(server_pids);
    let generator_before = procstat::own();
    let started = Instant::now();
    // Members join first, a few at a time.
    let first_joins = tokio::sync::Semaphore::new(opts.concurrency.max(1));
    let shared = Shared {
        target,
        opts,
        publishing,
        stop,
        totals,
        first_joins: &first_joins,
    };
    let shared = &shared;
    let members = futures_util::future::join_all(
        (0..opts.clients).map(|i| member(shared, i, fleet::room(i % rooms))),
    );
    let run = async {
        // Everyone in before the first message.
        fleet::wait_online(target, opts.clients as u64, Duration::from_secs(60)).await;
        publishing.set(true);
        let acked =
            futures_util::future::join_all((0..rooms).map(|r| publisher(target, r, opts))).await;
        publishing.set(false);
        tokio::time::sleep(opts.drain).await;
        stop.set(true);
        acked
    };
    let (seen, acked) = futures_util::future::join(members, run).await;
    let secs = started.elapsed().as_secs_f64();
    let server_after = procstat::sample_all(server_pids);
    let acked: Vec<Vec<u64>> = acked.into_iter().collect::<Result<_, _>>()?;
    let mut expected = 0u64;
    let mut delivered = 0u64;
    for (i, seen) in seen.iter().enumerate() {
        let room_acked = &acked[i % rooms];
        expected += room_acked.len() as u64;
        delivered += room_acked
            .iter()
            .filter(|o| seen.offsets.get(**o as usize).copied().unwrap_or(false))
            .count() as u64;
    }
    let replay = totals
        .replay_us
        .borrow()
        .as_ref()
        .map(Latency::from_micros)
        .unwrap_or_default();
    Ok(Report {
        mode: "drops",
        label,
        clients: opts.clients,
        rooms,
        messages_per_room: opts.messages,
        acked: acked.iter().map(|a| a.len() as u64).sum(),
        expected,
        delivered,
        delivery_ratio: if expected == 0 {
            0.0
        } else {
            delivered as f64 / expected as f64
        },
        duplicates: totals.duplicates.get(),
        backwards: totals.backwards.get(),
        not_recovered: totals.not_recovered.get(),
        resets: totals.resets.get(),
        reconnect_failures: totals.failures.get(),
        first_failure: totals.first_failure.borrow().clone(),
        replay_ms: replay,
        secs,
        server_cpu_secs: procstat::cpu_between(server_before, server_after)
            .map(|d| d.as_secs_f64()),
        generator_cpu_secs: procstat::cpu_between(generator_before, procstat::own())
            .map(|d| d.as_secs_f64()),
    })
}

impl Report {
    pub fn table(&self) -> Table {
        let mut t = Table::new(format!(
            "drops: {} clients in {} rooms, {} messages per room, sockets reset and away",
            self.clients, self.rooms, self.messages_per_room
        ));
        t.row("label", &self.label);
        t.row("acked messages", self.acked);
        t.row(
            "delivered / expected",
            format!("{} / {}", self.delivered, self.expected),
        );
        t.row("delivery ratio", format!("{:.5}", self.delivery_ratio));
        t.row("duplicates", self.duplicates);
        t.row("offsets backwards", self.backwards);
        t.row("recovered: false", self.not_recovered);
        t.row("resets", self.resets);
        t.row("reconnect failures", self.reconnect_failures);
        t.opt_row("first failure", self.first_failure.clone());
        t.row(
            "replay p50 / p99 / max (ms)",
            format!(
                "{:.1} / {:.1} / {:.1} ({} samples)",
                self.replay_ms.p50, self.replay_ms.p99, self.replay_ms.max, self.replay_ms.samples
            ),
        );
        t.row("run (s)", format!("{:.1}", self.secs));
        t.opt_num("server CPU (s)", self.server_cpu_secs, 2);
        t.opt_num("generator CPU (s)", self.generator_cpu_secs, 2);
        t
    }
}
