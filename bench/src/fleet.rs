//! Opening many connections at once, and the server's own counters.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{Target, Ws};

/// Connection `i` is user `bench-{i}`, so per-user limits never apply.
pub fn user(i: usize) -> String {
    format!("bench-{i}")
}

/// Room `r`'s name.
pub fn room(r: usize) -> String {
    format!("bench-{r}")
}

/// What opening a fleet cost.
pub struct Opened {
    pub conns: Vec<(usize, Ws)>,
    pub failures: Vec<String>,
    pub took: Duration,
}

/// Opens connections `range`, at most `concurrency` handshakes in flight.
pub async fn open(target: &Target, range: std::ops::Range<usize>, concurrency: usize) -> Opened {
    let started = Instant::now();
    let results: Vec<(usize, Result<Ws, String>)> = futures_util::stream::iter(range)
        .map(|i| async move { (i, target.connect(i, &user(i)).await) })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut conns = Vec::with_capacity(results.len());
    let mut failures = Vec::new();
    for (i, r) in results {
        match r {
            Ok(ws) => conns.push((i, ws)),
            Err(e) => failures.push(format!("connection {i}: {e}")),
        }
    }
    conns.sort_by_key(|(i, _)| *i);
    Opened {
        conns,
        failures,
        took: started.elapsed(),
    }
}

/// The server's `GET /ws/online` count.
pub async fn online(target: &Target) -> Option<u64> {
    let body = http_get(target, "/ws/online").await?;
    crate::client::number(&body, "\"online\":")
}

/// The server's frames sent and socket writes so far, from `/metrics`
/// (`None` for a server without them, such as `roomhub-floor`).
pub async fn write_counters(target: &Target) -> Option<(f64, f64)> {
    let body = http_get(target, "/metrics").await?;
    Some((
        metric(&body, "roomhub_messages_sent_total")?,
        metric(&body, "roomhub_socket_writes_total")?,
    ))
}

/// The server's unlabelled `/metrics` value `name`.
pub async fn metric_now(target: &Target, name: &str) -> Option<f64> {
    metric(&http_get(target, "/metrics").await?, name)
}

/// An unlabelled counter or gauge in a `/metrics` text.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse::<f64>()
            .ok()
    })
}

async fn http_get(target: &Target, path: &str) -> Option<String> {
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(target.addr()),
    )
    .await
    .ok()?
    .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .ok()?
        .ok()?;
    response.split("\r\n\r\n").nth(1).map(str::to_string)
}

/// Waits until the server counts `want` connections online, for at most `patience`.
pub async fn wait_online(target: &Target, want: u64, patience: Duration) -> Option<u64> {
    let deadline = Instant::now() + patience;
    loop {
        let now = online(target).await;
        if now == Some(want) || Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
