//! Churn: connect, join, leave, disconnect, over and over, a few at a
//! time. Measured: whether the server gives everything back, its resident
//! memory after the churn against after a warm-up of the same churn (the
//! allocator has grown its pools by then), and its room and connection
//! counts once the last client is gone.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use crate::client::{self, Kind, Target, Ws};
use crate::fleet;
use crate::procstat;
use crate::report::Table;

#[derive(Debug, Clone)]
pub struct Opts {
    pub cycles: usize,
    /// Cycles run before the baseline is taken.
    pub warmup: usize,
    /// Room names used, round robin.
    pub rooms: usize,
    pub concurrency: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub label: String,
    pub cycles: usize,
    pub warmup: usize,
    pub rooms: usize,
    pub failures: usize,
    pub first_failure: Option<String>,
    pub secs: f64,
    pub cycles_per_sec: f64,
    pub server_rss_start_mb: Option<f64>,
    pub server_rss_baseline_mb: Option<f64>,
    pub server_rss_after_mb: Option<f64>,
    /// After over baseline.
    pub rss_growth: Option<f64>,
    pub online_after: Option<u64>,
    pub rooms_after: Option<u64>,
}

/// One cycle: connect, join, leave (answered), close.
async fn cycle(target: &Target, i: usize, room: &str) -> Result<(), String> {
    let mut ws: Ws = target.connect(i, &fleet::user(i % 1000)).await?;
    client::join(&mut ws, room, None).await?;
    let leave = format!(r#"{{"type":"leave_room","room":"{room}","id":"l"}}"#);
    client::send(&mut ws, leave).await?;
    loop {
        let frame = client::next_text(&mut ws)
            .await
            .ok_or("closed while leaving")?;
        match client::kind(&frame) {
            Kind::Ack => break,
            Kind::Error => return Err(format!("leave refused: {}", frame.as_str())),
            _ => {}
        }
    }
    ws.close(None).await.map_err(|e| e.to_string())?;
    // Read until the server's close answer, so the socket ends cleanly.
    while ws.next().await.is_some_and(|m| m.is_ok()) {}
    Ok(())
}

async fn churn(target: &Target, range: std::ops::Range<usize>, opts: &Opts) -> Vec<String> {
    let rooms = opts.rooms.max(1);
    futures_util::stream::iter(range)
        .map(|i| async move {
            let room = fleet::room(i % rooms);
            cycle(target, i, &room)
                .await
                .err()
                .map(|e| format!("cycle {i}: {e}"))
        })
        .buffer_unordered(opts.concurrency.max(1))
        .filter_map(|failed| async move { failed })
        .collect()
        .await
}

pub async fn run(
    target: &Target,
    opts: &Opts,
    server_pid: Option<u32>,
    label: String,
) -> Result<Report, String> {
    let rss = || server_pid.and_then(procstat::sample).map(|s| s.rss_bytes);
    let start = rss();
    let mut failures = churn(target, 0..opts.warmup, opts).await;
    fleet::wait_online(target, 0, Duration::from_secs(10)).await;
    let baseline = rss();
    let started = Instant::now();
    failures.extend(churn(target, opts.warmup..opts.warmup + opts.cycles, opts).await);
    let secs = started.elapsed().as_secs_f64();
    let online_after = fleet::wait_online(target, 0, Duration::from_secs(10)).await;
    // The hub closes a deserted room at once; its gauge is copied each pass.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rooms_after = fleet::metric_now(target, "roomhub_rooms")
        .await
        .map(|v| v as u64);
    let after = rss();
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    Ok(Report {
        mode: "churn",
        label,
        cycles: opts.cycles,
        warmup: opts.warmup,
        rooms: opts.rooms,
        failures: failures.len(),
        first_failure: failures.first().cloned(),
        secs,
        cycles_per_sec: opts.cycles as f64 / secs.max(1e-9),
        server_rss_start_mb: start.map(mb),
        server_rss_baseline_mb: baseline.map(mb),
        server_rss_after_mb: after.map(mb),
        rss_growth: match (baseline, after) {
            (Some(b), Some(a)) if b > 0 => Some(a as f64 / b as f64),
            _ => None,
        },
        online_after,
        rooms_after,
    })
}

impl Report {
    pub fn table(&self) -> Table {
        let mut t = Table::new(format!(
            "churn: {} connect/join/leave/disconnect cycles over {} rooms (after {} warm-up)",
            self.cycles, self.rooms, self.warmup
        ));
        t.row("label", &self.label);
        t.row("failures", self.failures);
        t.opt_row("first failure", self.first_failure.clone());
        t.row("cycles/s", format!("{:.0}", self.cycles_per_sec));
        t.opt_num("server RSS at start (MiB)", self.server_rss_start_mb, 1);
        t.opt_num(
            "server RSS after warm-up (MiB)",
            self.server_rss_baseline_mb,
            1,
        );
        t.opt_num("server RSS after churn (MiB)", self.server_rss_after_mb, 1);
        t.opt_num("RSS after / after warm-up", self.rss_growth, 3);
        t.opt_row("online after", self.online_after.map(|n| n.to_string()));
        t.opt_row("rooms after", self.rooms_after.map(|n| n.to_string()));
        t
    }
}
