//! Fuzz target bodies for the core, shared by the cargo-fuzz targets in
//! `fuzz/fuzz_targets/` and by the corpus replay in `cargo test`
//! (`tests/tests/fuzz_corpus.rs`), both of which include this file. Kept
//! out of `core/src` so nothing fuzz-only ships in the crate. Each takes arbitrary bytes and panics only
//! on a real defect: a panic inside the core, or a broken invariant.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use roomhub_core::Config;
use roomhub_core::Hub;
use roomhub_core::Namespace;
use roomhub_core::Timestamp;
use roomhub_core::api::ApiCall;
use roomhub_core::{
    AppendRequest, DirectMessage, Input, Output, RelayOutcome, RoomSnapshot, SequencedMessage,
};
use roomhub_core::{ConnId, Epoch, Identity, NodeId, RoomAccess, RoomName};
use roomhub_core::{ParseLimits, RequestKind, parse_request};

/// Client frame parsing on arbitrary bytes.
pub fn parse_bytes(data: &[u8]) {
    check_parse(data);
}

/// Client frame parsing on structured, JSON-shaped input: objects with the
/// protocol's field names and plausible and implausible values.
pub fn parse_json(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(shape) = Shape::arbitrary(&mut u) else {
        return;
    };
    let text = shape.to_value(0).to_string();
    check_parse(text.as_bytes());
}

fn check_parse(data: &[u8]) {
    let limits = ParseLimits::default();
    match parse_request(data, &limits) {
        Ok(request) => {
            if let Some(id) = &request.id {
                assert!(
                    id.len() <= limits.max_client_id_bytes,
                    "id over the limit accepted"
                );
            }
            match &request.kind {
                RequestKind::Join { room, .. }
                | RequestKind::Leave { room }
                | RequestKind::Typing { room, .. }
                | RequestKind::OnlineUsers { room } => check_room(room, &limits),
                RequestKind::Send { room, content, .. } => {
                    check_room(room, &limits);
                    assert!(!content.is_empty() && content.len() <= limits.max_content_bytes);
                }
                RequestKind::Direct { content, .. } => {
                    assert!(!content.is_empty() && content.len() <= limits.max_content_bytes);
                }
                RequestKind::History { room, limit, .. } => {
                    check_room(room, &limits);
                    assert!((1..=roomhub_core::HISTORY_MAX_LIMIT).contains(limit));
                }
                RequestKind::Refresh { token } => assert!(!token.is_empty()),
            }
        }
        Err(e) => {
            if let Some(id) = &e.id {
                assert!(
                    id.len() <= limits.max_client_id_bytes,
                    "echoed id over the limit"
                );
            }
            assert!(e.message.len() <= 200, "error message not bounded");
        }
    }
}

fn check_room(room: &RoomName, limits: &ParseLimits) {
    let name = room.as_str();
    assert!(!name.is_empty() && name.len() <= limits.max_room_name_bytes);
    assert!(
        !name.chars().any(char::is_control),
        "control character in an accepted room"
    );
}

/// A JSON value shaped like the protocol's frames.
#[derive(Arbitrary, Debug)]
enum Shape {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(Word),
    RawString(String),
    List(Vec<Shape>),
    Object(Vec<(Key, Shape)>),
}

#[derive(Arbitrary, Debug)]
enum Key {
    Known(Word),
    Other(String),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Word {
    Type,
    Room,
    Payload,
    Id,
    RoomId,
    Content,
    ReplyTo,
    Since,
    Offset,
    Epoch,
    To,
    Sender,
    Timestamp,
    JoinRoom,
    LeaveRoom,
    SendMessage,
    Typing,
    StopTyping,
    OnlineUsers,
    SendDirect,
    History,
    Limit,
    Before,
    Refresh,
    Token,
    General,
    LongText,
}

impl Word {
    fn text(self) -> String {
        match self {
            Word::Type => "type".into(),
            Word::Room => "room".into(),
            Word::Payload => "payload".into(),
            Word::Id => "id".into(),
            Word::RoomId => "room_id".into(),
            Word::Content => "content".into(),
            Word::ReplyTo => "reply_to".into(),
            Word::Since => "since".into(),
            Word::Offset => "offset".into(),
            Word::Epoch => "epoch".into(),
            Word::To => "to".into(),
            Word::Sender => "sender".into(),
            Word::Timestamp => "timestamp".into(),
            Word::JoinRoom => "join_room".into(),
            Word::LeaveRoom => "leave_room".into(),
            Word::SendMessage => "send_message".into(),
            Word::Typing => "typing".into(),
            Word::StopTyping => "stop_typing".into(),
            Word::OnlineUsers => "online_users".into(),
            Word::SendDirect => "send_direct".into(),
            Word::History => "history".into(),
            Word::Limit => "limit".into(),
            Word::Before => "before".into(),
            Word::Refresh => "refresh".into(),
            Word::Token => "token".into(),
            Word::General => "general".into(),
            Word::LongText => "x".repeat(70),
        }
    }
}

impl Shape {
    fn to_value(&self, depth: usize) -> Value {
        // Deep enough to reach serde_json's recursion limit (128).
        if depth > 200 {
            return Value::Null;
        }
        match self {
            Shape::Null => Value::Null,
            Shape::Bool(b) => Value::Bool(*b),
            Shape::Int(i) => json!(i),
            Shape::Float(f) => json!(f),
            Shape::Text(w) => Value::String(w.text()),
            Shape::RawString(s) => Value::String(s.clone()),
            Shape::List(items) => {
                Value::Array(items.iter().map(|s| s.to_value(depth + 1)).collect())
            }
            Shape::Object(fields) => {
                let mut map = Map::new();
                for (k, v) in fields {
                    let key = match k {
                        Key::Known(w) => w.text(),
                        Key::Other(s) => s.clone(),
                    };
                    map.insert(key, v.to_value(depth + 1));
                }
                Value::Object(map)
            }
        }
    }
}

/// Hub event sequences: connections come and go and send anything; the
/// fuzzer also plays the sequencer, answering appends and room opens late,
/// out of order, twice, or not at all, with history that may be trimmed or
/// from another epoch. After every step the hub's invariants must hold and
/// every frame it emits must be JSON.
pub fn hub_events(data: &[u8]) {
    let mut u = Unstructured::new(data);
    // A cluster node also takes other nodes' presence, node losses, relayed
    // direct messages, receipts apart from deliveries, and reconnects.
    let Ok(clustered) = bool::arbitrary(&mut u) else {
        return;
    };
    let Ok(ops) = Vec::<Op>::arbitrary(&mut u) else {
        return;
    };
    let config = Config {
        clustered,
        node_id: NodeId(1),
        max_rooms_per_connection: 3,
        history_max_messages: 8,
        history_max_age_ms: 60_000,
        ping_interval_ms: 1_000,
        pong_wait_ms: 3_000,
        max_deferred_requests: 4,
        max_gap_buffer: 8,
        namespaces: vec![Namespace {
            presence: false,
            client_publish: false,
            typing: false,
            max_members: Some(1),
            history_size: Some(0),
            history_age_ms: Some(1_000),
            ..Namespace::new("ns")
        }],
        ..Config::default()
    };
    let mut world = FuzzWorld {
        hub: Hub::new(config),
        now: Timestamp(1_767_225_600_000),
        appends: Vec::new(),
        relays: Vec::new(),
        opens: Vec::new(),
        rooms: BTreeMap::new(),
        connected: BTreeMap::new(),
        verifying: Vec::new(),
        lineages: 0,
        ended: Vec::new(),
    };
    for op in ops.iter().take(256) {
        world.apply(op);
        if let Err(e) = world.hub.check_invariants() {
            panic!("hub invariant broken after {op:?}: {e}");
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect {
        conn: u8,
        user: u8,
        restricted: bool,
        expires_in_ms: Option<u16>,
    },
    Text {
        conn: u8,
        frame: Frame,
    },
    Binary {
        conn: u8,
    },
    Activity {
        conn: u8,
    },
    Overflow {
        conn: u8,
    },
    Disconnect {
        conn: u8,
    },
    Advance {
        ms: u16,
    },
    /// Number the `nth` waiting append and deliver it.
    Sequence {
        nth: u8,
    },
    /// Deliver a made-up message at `head + skip` (a gap, or a duplicate).
    Stray {
        room: u8,
        skip: u8,
        other_epoch: bool,
    },
    FailAppend {
        nth: u8,
    },
    /// Answer the `nth` waiting open, keeping only the last `keep` messages.
    Open {
        nth: u8,
        keep: u8,
        new_epoch: bool,
    },
    FailOpen {
        nth: u8,
    },
    Shutdown,
    /// Cluster: number the `nth` waiting append; its receipt may come
    /// first, and its delivery may be lost (a gap for a resync to fill).
    SequenceSplit {
        nth: u8,
        receipt_first: bool,
        lose_delivery: bool,
    },
    Remote {
        room: u8,
        node: u8,
        user: u8,
        present: bool,
    },
    NodeGone {
        node: u8,
    },
    RemoteDirect {
        to: u8,
    },
    /// Answer the `nth` waiting relay: 0 delivered, 1 offline, else
    /// unavailable.
    Relayed {
        nth: u8,
        outcome: u8,
    },
    Reconnected,
    /// A server API call on this node.
    Api {
        kind: u8,
        user: u8,
        room: u8,
        limit: u8,
    },
    /// Answer the `nth` waiting token verification: refused, or a token
    /// for `u{user}` (maybe another user), maybe narrower, maybe short.
    Verified {
        nth: u8,
        refuse: bool,
        user: u8,
        narrower: bool,
        expires_in_ms: Option<u16>,
    },
}

#[derive(Arbitrary, Debug)]
enum Frame {
    Raw(Vec<u8>),
    Join { room: u8, since: Option<(u8, bool)> },
    Leave { room: u8 },
    Send { room: u8, len: u8, id: bool },
    Typing { room: u8, on: bool },
    Online { room: u8 },
    Direct { to: u8 },
    Refresh { token: u8 },
}

/// `ns:x` is in a namespace with rules of its own (see `hub_events`).
const ROOMS: [&str; 5] = ["a", "b", "c", "team-x", "ns:x"];

struct SeqRoom {
    epoch: Epoch,
    head: u64,
    history: Vec<SequencedMessage>,
}

struct FuzzWorld {
    hub: Hub,
    now: Timestamp,
    appends: Vec<AppendRequest>,
    relays: Vec<DirectMessage>,
    opens: Vec<RoomName>,
    rooms: BTreeMap<RoomName, SeqRoom>,
    connected: BTreeMap<ConnId, ()>,
    /// Token verifications asked for and not yet answered.
    verifying: Vec<(ConnId, Option<std::sync::Arc<str>>)>,
    /// Lineages started, for fresh epoch names.
    lineages: usize,
    /// `history_remove`s done, to be answered.
    ended: Vec<u64>,
}

impl FuzzWorld {
    fn room(&mut self, name: &RoomName) -> &mut SeqRoom {
        let n = &mut self.lineages;
        self.rooms.entry(name.clone()).or_insert_with(|| SeqRoom {
            epoch: Epoch::new(&format!("e{}", {
                *n += 1;
                *n
            })),
            head: 0,
            history: Vec::new(),
        })
    }

    fn handle(&mut self, input: Input) {
        self.hub.handle(input, self.now);
        while let Some(out) = self.hub.poll_output() {
            match out {
                Output::Send { conn, frame, .. } => {
                    assert!(
                        self.connected.contains_key(&conn),
                        "frame for a connection the hub closed"
                    );
                    let v: Value = serde_json::from_slice(&frame).expect("server frames are JSON");
                    assert!(v["type"].is_string() && v["timestamp"].is_string());
                }
                Output::Close { conn, .. } => {
                    self.connected.remove(&conn);
                }
                Output::Ping { conn } => assert!(self.connected.contains_key(&conn)),
                Output::Append(request) => self.appends.push(*request),
                Output::OpenRoom { room, .. } => self.opens.push(room),
                Output::EndLineage { room, ticket } => {
                    self.rooms.remove(&room);
                    self.ended.push(ticket);
                }
                Output::Relay(r) => {
                    if r.origin.is_some() {
                        self.relays.push(*r);
                    }
                }
                Output::CloseRoom { .. }
                | Output::HistoryLimits { .. }
                | Output::Presence { .. }
                | Output::FollowUser { .. }
                | Output::UnfollowUser { .. }
                | Output::Published { .. }
                | Output::ApiAnswered { .. }
                | Output::Hook { .. } => {}
                Output::VerifyToken {
                    conn, request_id, ..
                } => self.verifying.push((conn, request_id)),
            }
        }
        for ticket in std::mem::take(&mut self.ended) {
            self.handle(Input::LineageEnded {
                ticket,
                ended: true,
            });
        }
    }

    /// Numbers the `nth` waiting append. A sequencer on this node answers
    /// with the delivery, then the receipt; a cluster's receipt may come
    /// first, and its delivery may be lost (a gap for a resync to fill).
    fn sequence(&mut self, nth: u8, receipt_first: bool, lose_delivery: bool) {
        if self.appends.is_empty() {
            return;
        }
        let request = self.appends.remove(usize::from(nth) % self.appends.len());
        let room = self.room(&request.room);
        room.head += 1;
        let msg = SequencedMessage::new(request, room.epoch.clone(), room.head);
        room.history.push(msg.clone());
        let receipt = msg.receipt();
        if receipt_first && let Some(r) = receipt.clone() {
            self.handle(Input::Appended(r));
        }
        if !lose_delivery {
            self.handle(Input::Sequenced(msg));
        }
        if !receipt_first && let Some(r) = receipt {
            self.handle(Input::Appended(r));
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Connect {
                conn,
                user,
                restricted,
                expires_in_ms,
            } => {
                let mut identity = Identity::user(&format!("u{}", user % 4));
                if *restricted {
                    identity.rooms = Some(RoomAccess::new(["a", "team-*"]));
                }
                identity.expires_at = expires_in_ms.map(|ms| self.now.plus_ms(u64::from(ms)));
                let conn = ConnId(u64::from(*conn % 8));
                if !self.connected.contains_key(&conn) && !self.hub.is_connected(conn) {
                    self.connected.insert(conn, ());
                }
                self.handle(Input::Connected { conn, identity });
                if !self.hub.is_connected(conn) {
                    self.connected.remove(&conn);
                }
            }
            Op::Text { conn, frame } => {
                let conn = ConnId(u64::from(*conn % 8));
                let bytes = frame_bytes(frame, &self.rooms);
                self.handle(Input::Text {
                    conn,
                    frame: Bytes::from(bytes),
                });
            }
            Op::Binary { conn } => self.handle(Input::Binary {
                conn: ConnId(u64::from(*conn % 8)),
            }),
            Op::Activity { conn } => self.handle(Input::Activity {
                conn: ConnId(u64::from(*conn % 8)),
            }),
            Op::Overflow { conn } => self.handle(Input::QueueOverflow {
                conn: ConnId(u64::from(*conn % 8)),
            }),
            Op::Disconnect { conn } => {
                let conn = ConnId(u64::from(*conn % 8));
                self.connected.remove(&conn);
                self.handle(Input::Disconnected { conn });
            }
            Op::Advance { ms } => {
                self.now = self.now.plus_ms(u64::from(*ms) * 10);
                self.handle(Input::Tick);
            }
            Op::Sequence { nth } => self.sequence(*nth, false, false),
            Op::Stray {
                room,
                skip,
                other_epoch,
            } => {
                let name =
                    RoomName::parse(ROOMS[usize::from(*room) % ROOMS.len()], 64).expect("valid");
                let seq = self.room(&name);
                let epoch = if *other_epoch {
                    Epoch::new("stray")
                } else {
                    seq.epoch.clone()
                };
                let offset = (seq.head + u64::from(*skip)).max(1);
                let msg = SequencedMessage {
                    room: name,
                    epoch,
                    offset,
                    id: "stray".into(),
                    sender: Identity::user("ghost").user,
                    content: "stray".into(),
                    reply_to: None,
                    timestamp: self.now,
                    origin: None,
                    ticket: None,
                };
                self.handle(Input::Sequenced(msg));
            }
            Op::FailAppend { nth } => {
                if !self.appends.is_empty() {
                    let request = self.appends.remove(usize::from(*nth) % self.appends.len());
                    self.handle(Input::AppendFailed(request));
                }
            }
            Op::Open {
                nth,
                keep,
                new_epoch,
            } => {
                if self.opens.is_empty() {
                    return;
                }
                let name = self.opens.remove(usize::from(*nth) % self.opens.len());
                let room = self.room(&name);
                if *new_epoch {
                    room.epoch = Epoch::new(&format!("{}'", room.epoch.as_str()));
                    room.history.clear();
                }
                let keep = usize::from(*keep).min(room.history.len());
                let snapshot = RoomSnapshot {
                    room: name,
                    epoch: room.epoch.clone(),
                    head: room.head,
                    messages: room.history[room.history.len() - keep..].to_vec(),
                    presence: Vec::new(),
                };
                self.handle(Input::RoomOpened(snapshot));
            }
            Op::FailOpen { nth } => {
                if !self.opens.is_empty() {
                    let room = self.opens.remove(usize::from(*nth) % self.opens.len());
                    self.handle(Input::RoomOpenFailed { room });
                }
            }
            Op::Shutdown => self.handle(Input::Shutdown),
            Op::SequenceSplit {
                nth,
                receipt_first,
                lose_delivery,
            } => self.sequence(*nth, *receipt_first, *lose_delivery),
            Op::Remote {
                room,
                node,
                user,
                present,
            } => {
                let room =
                    RoomName::parse(ROOMS[usize::from(*room) % ROOMS.len()], 64).expect("valid");
                let user = Identity::user(&format!("u{}", user % 4)).user;
                self.handle(Input::RemotePresence {
                    room,
                    node: NodeId(u64::from(node % 4)),
                    user,
                    present: *present,
                });
            }
            Op::NodeGone { node } => self.handle(Input::NodeGone {
                node: NodeId(u64::from(node % 4)),
            }),
            Op::RemoteDirect { to } => {
                let message = DirectMessage {
                    id: "remote".into(),
                    from: Identity::user("far").user,
                    to: format!("u{}", to % 4).into(),
                    content: "psst".into(),
                    timestamp: self.now,
                    origin: None,
                };
                self.handle(Input::RemoteDirect(Box::new(message)));
            }
            Op::Relayed { nth, outcome } => {
                if self.relays.is_empty() {
                    return;
                }
                let message = self.relays.remove(usize::from(*nth) % self.relays.len());
                let outcome = match outcome {
                    0 => RelayOutcome::Delivered,
                    1 => RelayOutcome::Offline,
                    _ => RelayOutcome::Unavailable,
                };
                self.handle(Input::Relayed {
                    message: Box::new(message),
                    outcome,
                });
            }
            Op::Reconnected => self.handle(Input::BrokerReconnected),
            Op::Api {
                kind,
                user,
                room,
                limit,
            } => {
                let user: std::sync::Arc<str> = format!("u{}", user % 4).into();
                let room = RoomName::parse(ROOMS[usize::from(*room) % ROOMS.len()], 64)
                    .expect("a valid room");
                let call = match kind % 9 {
                    7 => ApiCall::HistoryRemove { room },
                    8 => ApiCall::ResetRoom { room },
                    0 => ApiCall::Disconnect {
                        user,
                        code: 4100,
                        reason: None,
                    },
                    1 => ApiCall::Subscribe { user, room },
                    2 => ApiCall::Unsubscribe { user, room },
                    3 => ApiCall::Presence { room },
                    4 => ApiCall::Rooms { pattern: None },
                    5 => ApiCall::Info,
                    _ => ApiCall::History {
                        room,
                        limit: usize::from(*limit).max(1),
                        before: None,
                    },
                };
                self.handle(Input::Api { ticket: 1, call });
            }
            Op::Verified {
                nth,
                refuse,
                user,
                narrower,
                expires_in_ms,
            } => {
                if self.verifying.is_empty() {
                    return;
                }
                let i = usize::from(*nth) % self.verifying.len();
                let (conn, request_id) = self.verifying.remove(i);
                let outcome = if *refuse {
                    Err("token expired".into())
                } else {
                    let mut identity = Identity::user(&format!("u{}", user % 4));
                    if *narrower {
                        identity.rooms = Some(RoomAccess::new(["a"]));
                    }
                    identity.expires_at = expires_in_ms.map(|ms| self.now.plus_ms(u64::from(ms)));
                    Ok(identity)
                };
                self.handle(Input::TokenVerified {
                    conn,
                    request_id,
                    outcome,
                });
            }
        }
    }
}

fn frame_bytes(frame: &Frame, rooms: &BTreeMap<RoomName, SeqRoom>) -> Vec<u8> {
    let room = |r: &u8| ROOMS[usize::from(*r) % ROOMS.len()];
    let value = match frame {
        Frame::Raw(bytes) => return bytes.clone(),
        Frame::Join { room: r, since } => {
            let mut payload = json!({"room_id": room(r)});
            if let Some((offset, known_epoch)) = since {
                let epoch = RoomName::parse(room(r), 64)
                    .ok()
                    .and_then(|n| rooms.get(&n))
                    .filter(|_| *known_epoch)
                    .map_or("unknown".to_string(), |s| s.epoch.as_str().to_string());
                payload["since"] = json!({"offset": offset, "epoch": epoch});
            }
            json!({"type": "join_room", "id": "j", "payload": payload})
        }
        Frame::Leave { room: r } => json!({"type": "leave_room", "id": "l", "room": room(r)}),
        Frame::Send { room: r, len, id } => {
            let mut v = json!({"type": "send_message", "room": room(r), "payload": {"content": "m".repeat(usize::from(*len) + 1)}});
            if *id {
                v["id"] = json!("s");
            }
            v
        }
        Frame::Typing { room: r, on } => {
            json!({"type": if *on { "typing" } else { "stop_typing" }, "room": room(r)})
        }
        Frame::Online { room: r } => json!({"type": "online_users", "id": "o", "room": room(r)}),
        Frame::Direct { to } => {
            json!({"type": "send_direct", "id": "d", "payload": {"to": format!("u{}", to % 5), "content": "hi"}})
        }
        Frame::Refresh { token } => {
            json!({"type": "refresh", "id": "t", "payload": {"token": format!("t{token}")}})
        }
    };
    value.to_string().into_bytes()
}
