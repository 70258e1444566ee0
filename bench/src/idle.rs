//! Idle memory: open N authenticated connections, hold them, and weigh the
//! server's resident memory per connection.

use std::time::Duration;

use serde::Serialize;

use crate::client::{self, Target};
use crate::fleet;
use crate::procstat;
use crate::report::Table;

#[derive(Debug, Clone)]
pub struct Opts {
    pub connections: usize,
    /// Rooms joined, one per connection (`0`: none, just connected).
    pub rooms: usize,
    pub hold: Duration,
    pub concurrency: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub label: String,
    pub connections: usize,
    pub opened: usize,
    pub connect_failures: usize,
    pub first_failure: Option<String>,
    pub rooms: usize,
    pub connect_secs: f64,
    pub connects_per_sec: f64,
    pub online: Option<u64>,
    pub server_rss_before_mb: Option<f64>,
    pub server_rss_after_mb: Option<f64>,
    pub server_bytes_per_connection: Option<f64>,
    pub generator_rss_mb: Option<f64>,
}

pub async fn run(
    target: &Target,
    opts: &Opts,
    server_pid: Option<u32>,
    label: String,
) -> Result<Report, String> {
    let before = server_pid.and_then(procstat::sample);
    let mut opened = fleet::open(target, 0..opts.connections, opts.concurrency).await;
    if opts.rooms > 0 {
        let rooms = opts.rooms;
        let joins = futures_util::future::join_all(opened.conns.iter_mut().map(|(i, ws)| {
            let room = fleet::room(*i % rooms);
            async move { client::join(ws, &room, None).await }
        }))
        .await;
        if let Some(Err(e)) = joins.into_iter().find(Result::is_err) {
            return Err(e);
        }
    }
    let took = opened.took;
    let count = opened.conns.len();
    // Hold them; the connections answer the server's pings while read.
    let local = tokio::task::LocalSet::new();
    for (_, mut ws) in std::mem::take(&mut opened.conns) {
        local.spawn_local(async move { while client::next_text(&mut ws).await.is_some() {} });
    }
    let (online, after) = local
        .run_until(async {
            tokio::time::sleep(opts.hold).await;
            let online = fleet::online(target).await;
            (online, server_pid.and_then(procstat::sample))
        })
        .await;
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    Ok(Report {
        mode: "idle",
        label,
        connections: opts.connections,
        opened: count,
        connect_failures: opened.failures.len(),
        first_failure: opened.failures.first().cloned(),
        rooms: opts.rooms,
        connect_secs: took.as_secs_f64(),
        connects_per_sec: count as f64 / took.as_secs_f64().max(1e-9),
        online,
        server_rss_before_mb: before.map(|s| mb(s.rss_bytes)),
        server_rss_after_mb: after.map(|s| mb(s.rss_bytes)),
        server_bytes_per_connection: match (before, after) {
            (Some(b), Some(a)) if count > 0 => {
                Some(a.rss_bytes.saturating_sub(b.rss_bytes) as f64 / count as f64)
            }
            _ => None,
        },
        generator_rss_mb: procstat::own().map(|s| mb(s.rss_bytes)),
    })
}

impl Report {
    pub fn table(&self) -> Table {
        let mut t = Table::new(format!(
            "idle: {} connections, {} rooms, held",
            self.connections, self.rooms
        ));
        t.row("label", &self.label);
        t.row(
            "opened / failed",
            format!("{} / {}", self.opened, self.connect_failures),
        );
        t.opt_row("first failure", self.first_failure.clone());
        t.row("connect (s)", format!("{:.3}", self.connect_secs));
        t.row("connects/s", format!("{:.0}", self.connects_per_sec));
        t.opt_row("server says online", self.online.map(|n| n.to_string()));
        t.opt_num("server RSS before (MiB)", self.server_rss_before_mb, 1);
        t.opt_num("server RSS after (MiB)", self.server_rss_after_mb, 1);
        t.opt_row(
            "server RSS per connection (KiB)",
            self.server_bytes_per_connection
                .map(|b| format!("{:.2}", b / 1024.0)),
        );
        t.opt_num("generator RSS (MiB)", self.generator_rss_mb, 1);
        t
    }
}
