//! A real Server-Sent Events client for the end-to-end tests: an HTTP/1.1
//! `GET /sse` over loopback, its chunked body read and split into events as
//! a browser's `EventSource` would, and requests as `POST /sse/send`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server::PATIENCE;

/// One event: its `id` (if it had one), its data, or a comment.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<String>,
    pub data: String,
    pub comment: bool,
}

pub struct SseClient {
    addr: SocketAddr,
    stream: TcpStream,
    /// Bytes read and not yet decoded from the chunked body.
    raw: Vec<u8>,
    /// Decoded body bytes not yet split into events.
    body: Vec<u8>,
    events: VecDeque<Event>,
    /// The body's last chunk arrived (or the socket closed).
    pub ended: bool,
    pub session: String,
    /// The `id` of the last event that had one (what `EventSource` sends
    /// back as `Last-Event-ID`).
    pub last_event_id: Option<String>,
}

/// Why a stream was refused: the status and the JSON body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

impl SseClient {
    /// Opens `GET /sse?<query>` with extra `headers`; waits for the session
    /// event.
    pub async fn connect(
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<SseClient, Refused> {
        // A small receive buffer (no autotuning), so that a client that
        // stops reading backs up into the server soon.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
        let mut stream = socket.connect(addr).await.expect("connect");
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let request = format!(
            "GET /sse?{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{extra}\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        let head_end = loop {
            if let Some(at) = find(&raw, b"\r\n\r\n") {
                break at;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
                .await
                .expect("response headers in time")
                .expect("read");
            assert!(n > 0, "connection closed before the response headers");
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
        let rest = raw[head_end + 4..].to_vec();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut client = SseClient {
            addr,
            stream,
            raw: rest,
            body: Vec::new(),
            events: VecDeque::new(),
            ended: false,
            session: String::new(),
            last_event_id: None,
        };
        if status != 200 {
            let length = header(&head, "content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            while client.raw.len() < length {
                let mut buf = [0u8; 4096];
                let n = client.stream.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                client.raw.extend_from_slice(&buf[..n]);
            }
            let body = serde_json::from_slice(&client.raw).unwrap_or(Value::Null);
            return Err(Refused { status, body });
        }
        assert_eq!(
            header(&head, "content-type").as_deref(),
            Some("text/event-stream"),
            "{head}"
        );
        let first = client.recv().await;
        assert_eq!(first["type"], "session", "{first}");
        client.session = first["session"].as_str().expect("a session").to_string();
        Ok(client)
    }

    /// Connects `token`'s user with no rooms.
    pub async fn open(addr: SocketAddr, token: &str) -> SseClient {
        SseClient::connect(addr, &format!("token={token}"), &[])
            .await
            .expect("SSE stream")
    }

    /// The next event, comments included; `None` once the stream ended.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.decode();
        loop {
            if let Some(event) = self.events.pop_front() {
                if event.id.is_some() {
                    self.last_event_id.clone_from(&event.id);
                }
                return Some(event);
            }
            if self.ended {
                return None;
            }
            let mut buf = [0u8; 16 * 1024];
            let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut buf))
                .await
                .expect("an event in time")
                .unwrap_or(0);
            if n == 0 {
                self.ended = true;
            }
            self.raw.extend_from_slice(&buf[..n]);
            self.decode();
        }
    }

    /// The next event's JSON, comments skipped. Panics if the stream ends.
    pub async fn recv(&mut self) -> Value {
        loop {
            let event = self.next_event().await.expect("the stream is open");
            if !event.comment {
                return serde_json::from_str(&event.data).expect("JSON data");
            }
        }
    }

    /// Skips events until one of `kind` arrives.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Reads until the final `close` event and the end of the stream;
    /// returns the close's code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        let close = self.recv_type("close").await;
        let end = self.next_event().await;
        assert!(end.is_none(), "an event after the close: {end:?}");
        (
            close["code"].as_u64().expect("a code") as u16,
            close["reason"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// Posts one request body for this session: status and body.
    pub async fn post(&self, body: &[u8]) -> (u16, String) {
        post_to(self.addr, &self.session, body).await
    }

    /// Posts `v` and expects it taken (204).
    pub async fn send_json(&self, v: Value) {
        let (status, body) = self.post(v.to_string().as_bytes()).await;
        assert_eq!(status, 204, "POST /sse/send: {body}");
    }

    /// Joins `room` and returns its `room_info`.
    pub async fn join(&mut self, room: &str) -> Value {
        self.send_json(serde_json::json!({"type": "join_room", "room": room}))
            .await;
        self.recv_type("room_info").await
    }

    /// Decodes what the chunked body has so far into events.
    fn decode(&mut self) {
        while let Some(line_end) = find(&self.raw, b"\r\n") {
            let size_line = String::from_utf8_lossy(&self.raw[..line_end]).to_string();
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("a chunk size, got {size_line:?}"));
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                break;
            }
            if self.raw.len() < line_end + 2 + size + 2 {
                break;
            }
            let start = line_end + 2;
            self.body.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
        while let Some(at) = find(&self.body, b"\n\n") {
            let block = String::from_utf8(self.body[..at].to_vec()).expect("UTF-8 events");
            self.body.drain(..at + 2);
            let mut event = Event {
                id: None,
                data: String::new(),
                comment: false,
            };
            let mut data = Vec::new();
            for line in block.lines() {
                if line.starts_with(':') {
                    event.comment = true;
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v.to_string());
                } else if let Some(v) = line.strip_prefix("id: ") {
                    event.id = Some(v.to_string());
                }
            }
            event.data = data.join("\n");
            self.events.push_back(event);
        }
    }
}

/// `POST /sse/send?session=<session>` with `body` to `addr`.
pub async fn post_to(addr: SocketAddr, session: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /sse/send?session={session} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    // A server may answer before reading all of an oversized body.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("an answer in time");
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Waits `ms` and asserts that only comments (pings) arrived meanwhile.
pub async fn only_pings_for(client: &mut SseClient, ms: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    while let Ok(event) = tokio::time::timeout_at(deadline, client.next_event()).await {
        match event {
            Some(e) if e.comment => {}
            other => panic!("expected only pings, got {other:?}"),
        }
    }
}
