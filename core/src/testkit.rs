//! A deterministic driver for tests: a [`SingleNode`] on a manual clock,
//! with every frame each connection received, and a transcript of the run.
//! Compiled for this crate's tests and for crates that enable the `testkit`
//! feature (the transcript tests and the simulators).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Bytes;
use serde_json::Value;

use crate::config::Config;
use crate::event::{AppendRequest, Input, Output};
use crate::ids::{ConnId, Identity, RoomName};
use crate::single::SingleNode;
use crate::time::Timestamp;

/// 2026-01-01T00:00:00Z: transcripts show readable dates.
pub const START: Timestamp = Timestamp(1_767_225_600_000);

pub struct TestWorld {
    pub node: SingleNode,
    pub now: Timestamp,
    next_conn: u64,
    /// Frames received, per connection, not yet taken.
    inbox: BTreeMap<ConnId, Vec<Value>>,
    /// Close code and reason of every connection the server closed.
    pub closed: BTreeMap<ConnId, (u16, String)>,
    pub pings: BTreeMap<ConnId, usize>,
    names: BTreeMap<ConnId, String>,
    transcript: String,
    /// What the world's token verifier says of each token; any other token
    /// is refused as invalid.
    pub tokens: BTreeMap<String, Result<Identity, String>>,
    /// Tokens handed to the verifier and not yet answered.
    verifying: Vec<Input>,
    /// Hook calls the hub made, in order, for the test to answer
    /// (`Input::HookAnswered`).
    pub hooks: Vec<(u64, crate::api::HookCall)>,
}

impl TestWorld {
    pub fn new(config: Config) -> Self {
        TestWorld {
            node: SingleNode::new(config, 7),
            now: START,
            next_conn: 1,
            inbox: BTreeMap::new(),
            closed: BTreeMap::new(),
            pings: BTreeMap::new(),
            names: BTreeMap::new(),
            transcript: String::new(),
            tokens: BTreeMap::new(),
            verifying: Vec::new(),
            hooks: Vec::new(),
        }
    }

    /// Connects `identity`; `label` names the connection in the transcript.
    pub fn connect_as(&mut self, label: &str, identity: Identity) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.names.insert(conn, label.to_string());
        let _ = writeln!(
            self.transcript,
            "== {label} connects as {}",
            identity.user.id
        );
        self.input(Input::Connected { conn, identity });
        conn
    }

    pub fn connect(&mut self, user: &str) -> ConnId {
        let label = format!("{user}#{}", self.next_conn);
        self.connect_as(&label, Identity::user(user))
    }

    /// Sends a text frame from a client.
    pub fn send(&mut self, conn: ConnId, text: &str) {
        let _ = writeln!(self.transcript, "{} -> {text}", self.label(conn));
        self.input(Input::Text {
            conn,
            frame: Bytes::copy_from_slice(text.as_bytes()),
        });
    }

    pub fn send_json(&mut self, conn: ConnId, value: Value) {
        self.send(conn, &value.to_string());
    }

    /// Moves the clock forward and lets timers fire.
    pub fn advance_ms(&mut self, ms: u64) {
        self.now = self.now.plus_ms(ms);
        let _ = writeln!(self.transcript, "== {ms} ms pass");
        self.input(Input::Tick);
    }

    /// Feeds any input at the current time and records what comes out.
    pub fn input(&mut self, input: Input) {
        match &input {
            Input::Text { .. } | Input::Connected { .. } | Input::Tick => {}
            other => {
                let _ = writeln!(self.transcript, "== {}", describe(other, &self.names));
            }
        }
        self.node.handle(input, self.now);
        while let Some(out) = self.node.poll_output() {
            self.record(out);
        }
        for answer in std::mem::take(&mut self.verifying) {
            self.input(answer);
        }
    }

    fn record(&mut self, out: Output) {
        match out {
            Output::Send { conn, frame, .. } => {
                let text = String::from_utf8_lossy(&frame).into_owned();
                let _ = writeln!(self.transcript, "{} <- {text}", self.label(conn));
                let value = serde_json::from_slice(&frame).unwrap_or(Value::String(text));
                self.inbox.entry(conn).or_default().push(value);
            }
            Output::Ping { conn } => {
                let _ = writeln!(self.transcript, "{} <- (ping)", self.label(conn));
                *self.pings.entry(conn).or_default() += 1;
            }
            Output::Close { conn, code, reason } => {
                let _ = writeln!(
                    self.transcript,
                    "{} <- (close {code} {reason:?})",
                    self.label(conn)
                );
                self.closed.insert(conn, (code, reason.to_string()));
            }
            Output::VerifyToken {
                conn,
                request_id,
                token,
            } => {
                let outcome = match self.tokens.get(&*token) {
                    Some(Ok(identity)) => Ok(identity.clone()),
                    Some(Err(why)) => Err(why.as_str().into()),
                    None => Err("invalid token: not one the test world knows".into()),
                };
                self.verifying.push(Input::TokenVerified {
                    conn,
                    request_id,
                    outcome,
                });
            }
            Output::Hook { ticket, call } => {
                let _ = writeln!(self.transcript, "== the hub asks the app's hook: {call:?}");
                self.hooks.push((ticket, call));
            }
            // SingleNode answers the sequencer's outputs itself, and a
            // single node emits no cluster outputs or publish answers here.
            _ => {}
        }
    }

    /// Takes every frame `conn` received since the last take.
    pub fn take(&mut self, conn: ConnId) -> Vec<Value> {
        self.inbox.remove(&conn).unwrap_or_default()
    }

    /// Takes the frames `conn` received and returns their `type`s.
    pub fn take_types(&mut self, conn: ConnId) -> Vec<String> {
        self.take(conn)
            .iter()
            .map(|v| v["type"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    /// Takes the single frame `conn` received; panics if not exactly one.
    pub fn take_one(&mut self, conn: ConnId) -> Value {
        let mut frames = self.take(conn);
        assert_eq!(
            frames.len(),
            1,
            "{} expected one frame, got {frames:#?}",
            self.label(conn)
        );
        frames.remove(0)
    }

    /// Takes the frames of every connection.
    pub fn take_all(&mut self) -> BTreeMap<ConnId, Vec<Value>> {
        std::mem::take(&mut self.inbox)
    }

    pub fn transcript(&self) -> &str {
        &self.transcript
    }

    /// Starts a new transcript section.
    pub fn note(&mut self, text: &str) {
        let _ = writeln!(self.transcript, "# {text}");
    }

    fn label(&self, conn: ConnId) -> String {
        self.names
            .get(&conn)
            .cloned()
            .unwrap_or_else(|| conn.to_string())
    }
}

fn describe(input: &Input, names: &BTreeMap<ConnId, String>) -> String {
    let name = |c: &ConnId| names.get(c).cloned().unwrap_or_else(|| c.to_string());
    match input {
        Input::Binary { conn } => format!("{} sends a binary frame", name(conn)),
        Input::Activity { conn } => format!("{} shows activity (pong)", name(conn)),
        Input::QueueOverflow { conn } => format!("{}'s send queue overflows", name(conn)),
        Input::Disconnected { conn } => format!("{} disconnects", name(conn)),
        Input::Shutdown => "server shutdown begins".to_string(),
        Input::AppendFailed(req) => {
            let who = req
                .origin
                .as_ref()
                .map_or("a backend".to_string(), |o| name(&o.conn));
            format!("the sequencer refuses {who}'s message to {}", req.room)
        }
        Input::Sequenced(m) => format!(
            "the sequencer delivers {}@{} to {}",
            m.epoch.as_str(),
            m.offset,
            m.room
        ),
        Input::RoomOpened(s) => format!("room {} opens at {}@{}", s.room, s.epoch.as_str(), s.head),
        Input::RoomOpenFailed { room } => format!("room {room} cannot be opened"),
        Input::TokenVerified { conn, outcome, .. } => match outcome {
            Ok(identity) => format!(
                "{}'s new token verifies for {}",
                name(conn),
                identity.user.id
            ),
            Err(why) => format!("{}'s new token is refused: {why}", name(conn)),
        },
        other => format!("{other:?}"),
    }
}

/// A message from user `u` to `room`, accepted at `at_ms`, not from a
/// connection (as a backend publish would be).
pub fn append_request(room: &str, at_ms: u64) -> AppendRequest {
    AppendRequest {
        room: RoomName::parse(room, 64).expect("a valid test room name"),
        sender: Identity::user("u").user,
        content: format!("m{at_ms}").into(),
        reply_to: None,
        timestamp: Timestamp(at_ms),
        origin: None,
        ticket: None,
    }
}
