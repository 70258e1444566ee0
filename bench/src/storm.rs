//! Reconnect storm: N members of R rooms drop at once, the rooms move on
//! while they are away, and all N come back with `since`. Measured: the time
//! until every one of them has rejoined and recovered exactly what it missed.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{self, Kind, Target, Ws};
use crate::fleet;
use crate::procstat;
use crate::report::{Latency, Table};

#[derive(Debug, Clone)]
pub struct Opts {
    pub connections: usize,
    pub rooms: usize,
    /// Messages sent to each room while its members are away.
    pub missed: usize,
    pub concurrency: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub label: String,
    pub connections: usize,
    pub rooms: usize,
    pub missed_per_room: usize,
    pub concurrency: usize,
    pub first_connect_secs: f64,
    /// From the first reconnect to the last member recovered.
    pub storm_secs: f64,
    pub recovered: usize,
    pub not_recovered: usize,
    /// Rejoins whose replay was not exactly the missed offsets, in order.
    pub wrong_replays: usize,
    pub failures: usize,
    pub first_failure: Option<String>,
    /// Each member's own reconnect time, from the storm's start.
    pub rejoin_ms: Latency,
    pub server_cpu_secs: Option<f64>,
}

/// Where a member was when it dropped.
struct Member {
    index: usize,
    room: usize,
    epoch: String,
    offset: u64,
}

enum Outcome {
    Recovered(Duration, Ws),
    NotRecovered(Ws),
    WrongReplay(Ws),
    Failed(String),
}

pub async fn run(
    target: &Target,
    opts: &Opts,
    server_pid: Option<u32>,
    label: String,
) -> Result<Report, String> {
    let rooms = opts.rooms.max(1);
    let opened = fleet::open(target, 0..opts.connections, opts.concurrency).await;
    if let Some(e) = opened.failures.first() {
        return Err(format!(
            "{} connections failed, first: {e}",
            opened.failures.len()
        ));
    }
    let first_connect = opened.took;
    let joined: Vec<Result<Member, String>> = futures_util::stream::iter(opened.conns)
        .map(|(index, mut ws)| async move {
            let room = index % rooms;
            let (info, _) = client::join(&mut ws, &fleet::room(room), None).await?;
            let member = Member {
                index,
                room,
                epoch: client::string(&info, "\"epoch\":\"")
                    .unwrap_or("")
                    .to_string(),
                offset: client::number(&info, "\"offset\":").unwrap_or(0),
            };
            // Everyone drops at once below; until then, hold the socket.
            Ok((member, ws))
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect::<Vec<Result<(Member, Ws), String>>>()
        .await
        .into_iter()
        .map(|r| {
            r.map(|(member, ws)| {
                drop_abruptly(ws);
                member
            })
        })
        .collect();
    let mut members = Vec::with_capacity(joined.len());
    for m in joined {
        members.push(m?);
    }
    // Every member is gone; the rooms go on without them.
    fleet::wait_online(target, 0, Duration::from_secs(60)).await;
    publish_while_away(target, opts, rooms).await?;

    let server_before = server_pid.and_then(procstat::sample);
    let started = Instant::now();
    let missed = opts.missed as u64;
    let outcomes: Vec<Outcome> = futures_util::stream::iter(members)
        .map(|m| async move {
            let mut ws = match target.connect(m.index, &fleet::user(m.index)).await {
                Ok(ws) => ws,
                Err(e) => return Outcome::Failed(e),
            };
            let since = Some((m.epoch.as_str(), m.offset));
            match client::join(&mut ws, &fleet::room(m.room), since).await {
                Ok((info, replayed)) => {
                    let exact = replayed
                        .iter()
                        .copied()
                        .eq(m.offset + 1..=m.offset + missed);
                    if !info.contains("\"recovered\":true") {
                        Outcome::NotRecovered(ws)
                    } else if !exact {
                        Outcome::WrongReplay(ws)
                    } else {
                        Outcome::Recovered(started.elapsed(), ws)
                    }
                }
                Err(e) => Outcome::Failed(e),
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    let storm = started.elapsed();
    let server_after = server_pid.and_then(procstat::sample);

    let mut rejoin =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())?;
    let (mut recovered, mut not_recovered, mut wrong, mut failures) = (0, 0, 0, Vec::new());
    let mut last_done = Duration::ZERO;
    let mut held = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        match o {
            Outcome::Recovered(at, ws) => {
                recovered += 1;
                last_done = last_done.max(at);
                let _ = rejoin.record(at.as_micros().max(1) as u64);
                held.push(ws);
            }
            Outcome::NotRecovered(ws) => {
                not_recovered += 1;
                held.push(ws);
            }
            Outcome::WrongReplay(ws) => {
                wrong += 1;
                held.push(ws);
            }
            Outcome::Failed(e) => failures.push(e),
        }
    }
    let storm_secs = if recovered == opts.connections {
        last_done
    } else {
        storm
    };
    drop(held);
    Ok(Report {
        mode: "storm",
        label,
        connections: opts.connections,
        rooms,
        missed_per_room: opts.missed,
        concurrency: opts.concurrency,
        first_connect_secs: first_connect.as_secs_f64(),
        storm_secs: storm_secs.as_secs_f64(),
        recovered,
        not_recovered,
        wrong_replays: wrong,
        failures: failures.len(),
        first_failure: failures.first().cloned(),
        rejoin_ms: Latency::from_micros(&rejoin),
        server_cpu_secs: procstat::cpu_between(server_before, server_after)
            .map(|d| d.as_secs_f64()),
    })
}

/// Closes the socket without a WebSocket close handshake, as a dropped
/// network would (the server sees the TCP connection end).
fn drop_abruptly(ws: Ws) {
    drop(ws.into_inner());
}

/// One publisher walks the rooms and leaves `missed` stored messages in each.
async fn publish_while_away(target: &Target, opts: &Opts, rooms: usize) -> Result<(), String> {
    let mut ws = target.connect(usize::MAX / 2, "bench-publisher").await?;
    for r in 0..rooms {
        let room = fleet::room(r);
        client::join(&mut ws, &room, None).await?;
        for n in 0..opts.missed {
            let frame = format!(
                r#"{{"type":"send_message","room":"{room}","id":"{n}","payload":{{"content":"while away {n}"}}}}"#
            );
            client::send(&mut ws, frame).await?;
        }
        let mut acked = 0;
        while acked < opts.missed {
            let frame = client::next_text(&mut ws)
                .await
                .ok_or("publisher dropped")?;
            match client::kind(&frame) {
                Kind::Ack => acked += 1,
                Kind::Error => return Err(format!("publisher refused: {}", frame.as_str())),
                _ => {}
            }
        }
        client::send(
            &mut ws,
            format!(r#"{{"type":"leave_room","room":"{room}","id":"leave"}}"#),
        )
        .await?;
        loop {
            let frame = client::next_text(&mut ws)
                .await
                .ok_or("publisher dropped")?;
            if client::kind(&frame) == Kind::Ack {
                break;
            }
        }
    }
    Ok(())
}

impl Report {
    pub fn table(&self) -> Table {
        let mut t = Table::new(format!(
            "storm: {} members of {} rooms drop and rejoin with since ({} missed per room)",
            self.connections, self.rooms, self.missed_per_room
        ));
        t.row("label", &self.label);
        t.row("handshakes in flight at most", self.concurrency);
        t.row(
            "first connect (s)",
            format!("{:.3}", self.first_connect_secs),
        );
        t.row(
            "storm: all rejoined and recovered (s)",
            format!("{:.3}", self.storm_secs),
        );
        t.row(
            "recovered / not recovered / wrong replay / failed",
            format!(
                "{} / {} / {} / {}",
                self.recovered, self.not_recovered, self.wrong_replays, self.failures
            ),
        );
        t.opt_row("first failure", self.first_failure.clone());
        t.row("rejoin p50/p90/p99/max (ms)", self.rejoin_ms.to_string());
        t.opt_num("server CPU during storm (s)", self.server_cpu_secs, 3);
        t
    }
}
