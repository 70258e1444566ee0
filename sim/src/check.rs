//! The invariants, checked from what every client saw (the trace), in the
//! order it happened:
//!
//! 1. a message reaches only member connections, never the connection that
//!    sent it (presence and typing events likewise reach members only, and a
//!    typing indicator for a room one is not in is refused);
//! 2. per connection and room, offsets go up one at a time, and everyone
//!    agrees on the content and sender at each (room, epoch, offset);
//! 3. no gaps while connected (a `room_reset`, which moves a member to a new
//!    epoch in-band, only with a new epoch); a rejoin with `since` replays
//!    exactly what was missed, and `recovered` is true exactly when the
//!    epoch is unchanged (history is never trimmed within a world);
//! 4. every request with an `id` gets at most one answer, and exactly one if
//!    the connection lasted to the end;
//! 5. once the world is quiet, `online_users` equals the users whose live
//!    connections are members, `/ws/online` equals live connections, and the
//!    server keeps no room without members;
//! 6. no connection's queue ever exceeded its bound (the server's peak gauge),
//!    and, where asked, healthy members get each message within a bound
//!    while another member is a slow consumer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::Value;

use crate::trace::{Event, Record, SessionId};

#[derive(Clone, Debug, Default)]
pub struct CheckContext {
    pub send_queue_bytes: usize,
    /// When set, every live message must reach the clients not in
    /// `delay_exempt` within this many ms of being sent: a slow consumer must
    /// not hold up the healthy members.
    pub delay_bound_ms: Option<u64>,
    pub delay_exempt: BTreeSet<usize>,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub violations: Vec<String>,
    /// Room messages whose delivery was checked.
    pub messages_checked: u64,
    /// Connections closed as slow consumers (4000).
    pub slow_consumer_closes: u64,
    pub sessions: u64,
}

#[derive(Default)]
struct RoomView {
    member: bool,
    epoch: String,
    /// The highest offset seen in order (received or the session's own).
    last: u64,
    /// Joins sent and not yet answered, in order, with their `since`
    /// (offset, epoch) if any. A connection may rejoin a room it is in.
    joins: VecDeque<Option<(u64, String)>>,
    /// The last offset the pending replay has covered.
    replay_cursor: u64,
    /// Offsets of this session's own messages (acked), never replayed to it.
    own: BTreeSet<u64>,
    /// The last `room_reset`: its epoch and head. The session's own
    /// messages at or below that head were skipped with the rest; their
    /// acks may still follow the reset.
    reset: Option<(String, u64)>,
}

impl RoomView {
    /// The `since` of the join being answered next, if it has one.
    fn since(&self) -> Option<&(u64, String)> {
        self.joins.front().and_then(Option::as_ref)
    }

    /// The next offset a replay should send: after the cursor, skipping this
    /// session's own messages.
    fn next_replay(&self) -> u64 {
        let mut next = self.replay_cursor + 1;
        while self.own.contains(&next) {
            next += 1;
        }
        next
    }
}

#[derive(Default)]
struct Session {
    user: String,
    /// The server host it is connected to.
    server: String,
    live: bool,
    rooms: BTreeMap<String, RoomView>,
    /// Request id → (type, room, content of a message).
    requests: BTreeMap<String, (String, String, String)>,
    answers: BTreeMap<String, u32>,
    /// Content tags this session sent.
    own: BTreeSet<String>,
}

impl Session {
    fn is_member(&self, room: &str) -> bool {
        self.rooms.get(room).is_some_and(|r| r.member)
    }
}

struct Checker {
    sessions: BTreeMap<SessionId, Session>,
    /// When each message content was sent.
    sent_at: BTreeMap<String, u64>,
    /// (room, epoch, offset) → (content, sender id).
    agreed: BTreeMap<(String, String, u64), (String, String)>,
    report: Report,
    context: CheckContext,
}

pub fn check(records: &[Record], context: &CheckContext) -> Report {
    let mut c = Checker {
        sessions: BTreeMap::new(),
        sent_at: BTreeMap::new(),
        agreed: BTreeMap::new(),
        report: Report::default(),
        context: context.clone(),
    };
    for r in records {
        c.apply(r);
    }
    c.report
}

fn room_of(frame: &Value) -> String {
    let room = frame["room"].as_str().unwrap_or("");
    if room.is_empty() {
        frame["payload"]["room_id"]
            .as_str()
            .unwrap_or("")
            .to_string()
    } else {
        room.to_string()
    }
}

impl Checker {
    fn violation(&mut self, r: &Record, what: String) {
        // The first few are enough to debug; a run with many is one bug.
        if self.report.violations.len() < 20 {
            self.report.violations.push(format!(
                "t={}ms c{}/s{}: {what}",
                r.at_ms, r.session.0, r.session.1
            ));
        }
    }

    fn apply(&mut self, r: &Record) {
        match &r.event {
            Event::Connected { user, server } => {
                self.report.sessions += 1;
                self.sessions.insert(
                    r.session,
                    Session {
                        user: user.clone(),
                        server: server.clone(),
                        live: true,
                        ..Session::default()
                    },
                );
            }
            Event::Sent { frame } => self.sent(r, frame),
            Event::Received { frame } => self.received(r, frame),
            Event::Closed { code, .. } => {
                if *code == 4000 {
                    self.report.slow_consumer_closes += 1;
                }
                self.end(r, false);
            }
            Event::Broken { .. } | Event::Dropped { .. } => self.end(r, false),
            Event::Finished => self.end(r, true),
            Event::Probe {
                server,
                online,
                rooms,
                queue_peak_bytes,
            } => self.probe(r, server, *online, *rooms, *queue_peak_bytes),
        }
    }

    fn sent(&mut self, r: &Record, frame: &Value) {
        let Some(s) = self.sessions.get_mut(&r.session) else {
            return;
        };
        let kind = frame["type"].as_str().unwrap_or("").to_string();
        let room = room_of(frame);
        let content = frame["payload"]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if let Some(id) = frame["id"].as_str() {
            s.requests
                .insert(id.to_string(), (kind.clone(), room.clone(), content));
        }
        match kind.as_str() {
            "send_message" => {
                let content = frame["payload"]["content"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                self.sent_at.insert(content.clone(), r.at_ms);
                s.own.insert(content);
            }
            "join_room" => {
                let view = s.rooms.entry(room).or_default();
                let since = frame["payload"]["since"].as_object().map(|since| {
                    let offset = since["offset"].as_u64().unwrap_or(0);
                    let epoch = since["epoch"].as_str().unwrap_or("").to_string();
                    (offset, epoch)
                });
                if view.joins.is_empty()
                    && let Some((offset, epoch)) = &since
                {
                    if !view.member {
                        // A fresh connection (or after a leave): the client's
                        // position is `since`.
                        view.last = *offset;
                        view.epoch = epoch.clone();
                    }
                    view.replay_cursor = *offset;
                }
                view.joins.push_back(since);
            }
            _ => {}
        }
    }

    fn received(&mut self, r: &Record, frame: &Value) {
        let kind = frame["type"].as_str().unwrap_or("").to_string();
        let room = room_of(frame);
        if let Some(id) = frame["id"].as_str()
            && matches!(kind.as_str(), "ack" | "error")
        {
            self.answer(r, id, &kind, frame);
        }
        match kind.as_str() {
            "room_info" => self.room_info(r, &room, frame),
            "room_reset" => self.room_reset(r, &room, frame),
            "new_message" => self.new_message(r, &room, frame),
            "user_joined" | "user_left" | "user_typing" => {
                let Some(s) = self.sessions.get(&r.session) else {
                    return;
                };
                if !s.is_member(&room) {
                    self.violation(
                        r,
                        format!("{kind} for {room}, where this connection is not a member"),
                    );
                }
            }
            "online_users" => {
                if frame["id"].is_null()
                    && let Some(s) = self.sessions.get(&r.session)
                    && s.requests.contains_key(&format!("final-{room}"))
                {
                    self.final_presence(r, &room, frame);
                }
            }
            _ => {}
        }
    }

    fn answer(&mut self, r: &Record, id: &str, kind: &str, frame: &Value) {
        let Some(s) = self.sessions.get_mut(&r.session) else {
            return;
        };
        let count = s.answers.entry(id.to_string()).or_default();
        *count += 1;
        let count = *count;
        let Some((req_kind, room, content)) = s.requests.get(id).cloned() else {
            return self.violation(r, format!("{kind} for request {id}, which was never sent"));
        };
        if count > 1 {
            return self.violation(r, format!("request {id} answered {count} times"));
        }
        let code = frame["payload"]["code"].as_str().unwrap_or("");
        let was_member = s.is_member(&room);
        if kind == "ack"
            && !was_member
            && matches!(req_kind.as_str(), "typing" | "stop_typing" | "send_message")
        {
            return self.violation(r, format!("{req_kind} to {room} acked for a non-member"));
        }
        if kind == "error" && code == "NOT_IN_ROOM" && was_member {
            // Only a leave in flight could explain it, and leaves are acked.
            return self.violation(
                r,
                format!("{req_kind} refused NOT_IN_ROOM while a member of {room}"),
            );
        }
        if kind == "error" && req_kind == "send_message" {
            // Refused, or failed with UNAVAILABLE (stored or not): if it was
            // stored after all, the sender gets it like everyone else.
            s.own.remove(&content);
        }
        if kind != "ack" {
            if req_kind == "join_room"
                && let Some(view) = s.rooms.get_mut(&room)
            {
                view.joins.pop_front();
            }
            return;
        }
        match req_kind.as_str() {
            "leave_room" => {
                // Joins still pending were sent after the leave (answers come
                // in order), so they stay pending.
                if let Some(view) = s.rooms.get_mut(&room) {
                    view.member = false;
                }
            }
            "send_message" => {
                let offset = frame["payload"]["offset"].as_u64().unwrap_or(0);
                let user = s.user.clone();
                let Some(view) = s.rooms.get_mut(&room) else {
                    return;
                };
                let epoch_of_ack = frame["payload"]["message_id"]
                    .as_str()
                    .and_then(|id| id.rsplit_once('-'))
                    .map(|(epoch, _)| epoch.to_string());
                let skipped = view.reset.as_ref().is_some_and(|(epoch, head)| {
                    *epoch == view.epoch
                        && epoch_of_ack.as_deref() == Some(epoch.as_str())
                        && offset <= *head
                });
                if skipped {
                    // Stored in the new epoch before the reset's head: the
                    // reset skipped it, the ack says where it went.
                    view.own.insert(offset);
                    let epoch = view.epoch.clone();
                    return self.agree(r, &room, &epoch, offset, content, user);
                }
                if offset != view.last + 1 {
                    let last = view.last;
                    return self.violation(
                        r,
                        format!("own message in {room} at offset {offset} after {last}"),
                    );
                }
                view.last = offset;
                view.own.insert(offset);
                let epoch = view.epoch.clone();
                self.agree(r, &room, &epoch, offset, content, user);
            }
            _ => {}
        }
    }

    fn room_info(&mut self, r: &Record, room: &str, frame: &Value) {
        let p = &frame["payload"];
        let epoch = p["epoch"].as_str().unwrap_or("").to_string();
        let offset = p["offset"].as_u64().unwrap_or(0);
        let recovered = p["recovered"].as_bool();
        let Some(s) = self.sessions.get_mut(&r.session) else {
            return;
        };
        let view = s.rooms.entry(room.to_string()).or_default();
        let since = view.joins.pop_front().flatten();
        let mut problems = Vec::new();
        match (&since, recovered) {
            (Some((since_offset, since_epoch)), Some(true)) => {
                if *since_epoch != epoch {
                    problems.push(format!(
                        "recovered:true in {room} across epochs {since_epoch} -> {epoch}"
                    ));
                }
                if view.last != offset {
                    problems.push(format!(
                        "recovered:true in {room} at head {offset}, but saw up to {} (since {since_offset})",
                        view.last
                    ));
                }
            }
            (Some((since_offset, since_epoch)), Some(false)) => {
                // History is never trimmed within a world, so only a new
                // epoch (a restarted server) excuses a failed recovery.
                if *since_epoch == epoch && *since_offset <= offset {
                    problems.push(format!(
                        "recovered:false in {room} though epoch {epoch} still holds offsets after {since_offset}"
                    ));
                }
                view.last = offset;
            }
            (Some(_), None) => problems.push(format!(
                "room_info for a join with since lacks recovered ({room})"
            )),
            (None, Some(_)) => problems.push(format!("recovered in {room} without since")),
            (None, None) => {
                if !view.member {
                    view.last = offset;
                } else if view.last != offset {
                    problems.push(format!(
                        "room_info offset {offset} in {room}, but saw up to {}",
                        view.last
                    ));
                }
            }
        }
        view.member = true;
        view.epoch = epoch;
        if let Some((next_since, _)) = view.since() {
            view.replay_cursor = *next_since;
        }
        for p in problems {
            self.violation(r, p);
        }
    }

    /// The room's history could not be continued: the member's position
    /// moves to the new epoch and offset, told in-band. History is never
    /// trimmed within a world, so only a new epoch may cause one.
    fn room_reset(&mut self, r: &Record, room: &str, frame: &Value) {
        let p = &frame["payload"];
        let epoch = p["epoch"].as_str().unwrap_or("").to_string();
        let offset = p["offset"].as_u64().unwrap_or(0);
        let Some(s) = self.sessions.get_mut(&r.session) else {
            return;
        };
        let Some(view) = s.rooms.get_mut(room).filter(|v| v.member) else {
            return self.violation(r, format!("room_reset for {room}, not a member"));
        };
        let problem = if p["recovered"] != Value::Bool(false) {
            Some(format!("room_reset in {room} without recovered:false"))
        } else if epoch == view.epoch {
            Some(format!("room_reset in {room} within epoch {epoch}"))
        } else {
            None
        };
        view.reset = Some((epoch.clone(), offset));
        view.epoch = epoch;
        view.last = offset;
        if let Some(problem) = problem {
            self.violation(r, problem);
        }
    }

    fn new_message(&mut self, r: &Record, room: &str, frame: &Value) {
        self.report.messages_checked += 1;
        let offset = frame["offset"].as_u64().unwrap_or(0);
        let content = frame["payload"]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let sender = frame["sender"]["id"].as_str().unwrap_or("").to_string();
        let Some(s) = self.sessions.get_mut(&r.session) else {
            return;
        };
        if s.own.contains(&content) {
            return self.violation(r, format!("got its own message {content} back"));
        }
        let Some(view) = s.rooms.get_mut(room) else {
            return self.violation(r, format!("message in {room}, never joined"));
        };
        if !view.member && view.since().is_none() {
            return self.violation(r, format!("message at {offset} in {room} after leaving"));
        }
        let mut epoch = view.epoch.clone();
        // A `room_reset` that came after the rejoin was sent has moved the
        // member to a new epoch: the rejoin's `since` no longer says where
        // the messages are (it is answered `recovered: false`).
        let reset_after_join = view
            .since()
            .is_some_and(|(_, since_epoch)| *since_epoch != view.epoch)
            && view
                .reset
                .as_ref()
                .is_some_and(|(reset_epoch, _)| *reset_epoch == view.epoch);
        if let Some((_, since_epoch)) = view.since().filter(|_| !reset_after_join) {
            epoch = since_epoch.clone();
            // A join with `since` replays from since + 1 (minus this
            // session's own messages). Messages in flight when the join was
            // sent arrive first and are repeated by the replay: a repeat is
            // fine if it is the replay's next offset.
            if offset <= view.last && offset == view.next_replay() {
                view.replay_cursor = offset;
                return self.agree(r, room, &epoch, offset, content, sender);
            }
        }
        let late = match (
            self.context.delay_bound_ms,
            view.since(),
            self.sent_at.get(&content),
        ) {
            (Some(bound), None, Some(sent))
                if !self.context.delay_exempt.contains(&r.session.0) && r.at_ms - sent > bound =>
            {
                Some(r.at_ms - sent)
            }
            _ => None,
        };
        if offset != view.last + 1 {
            let last = view.last;
            return self.violation(
                r,
                format!(
                    "offset {offset} in {room} after {last}: {}",
                    if offset > last { "gap" } else { "repeat" }
                ),
            );
        }
        view.last = offset;
        if let Some(delay) = late {
            self.violation(
                r,
                format!(
                    "a healthy member got offset {offset} in {room} {delay} ms after it was sent"
                ),
            );
        }
        self.agree(r, room, &epoch, offset, content, sender);
    }

    fn agree(
        &mut self,
        r: &Record,
        room: &str,
        epoch: &str,
        offset: u64,
        content: String,
        sender: String,
    ) {
        let key = (room.to_string(), epoch.to_string(), offset);
        match self.agreed.get(&key) {
            None => {
                self.agreed.insert(key, (content, sender));
            }
            Some((c, s)) if *c == content && *s == sender => {}
            Some((c, s)) => {
                let seen = format!("{s}:{c}");
                self.violation(
                    r,
                    format!(
                        "{room}@{epoch}/{offset} is {sender}:{content} here but {seen} elsewhere"
                    ),
                );
            }
        }
    }

    fn end(&mut self, r: &Record, finished: bool) {
        let Some(s) = self.sessions.get_mut(&r.session) else {
            return;
        };
        s.live = false;
        if finished {
            let unanswered: Vec<String> = s
                .requests
                .keys()
                .filter(|id| !s.answers.contains_key(*id))
                .cloned()
                .collect();
            for id in unanswered {
                self.violation(r, format!("request {id} never answered"));
            }
        }
    }

    fn live_members(&self, room: &str) -> BTreeSet<String> {
        self.sessions
            .values()
            .filter(|s| s.live && s.is_member(room))
            .map(|s| s.user.clone())
            .collect()
    }

    fn final_presence(&mut self, r: &Record, room: &str, frame: &Value) {
        let listed: BTreeSet<String> = frame["payload"]["users"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let expected = self.live_members(room);
        if listed != expected {
            self.violation(
                r,
                format!("presence in {room} is {listed:?}, live members are {expected:?}"),
            );
        }
    }

    /// `/ws/online` counts the whole cluster; each server keeps exactly the
    /// rooms its own live connections are members of.
    fn probe(&mut self, r: &Record, server: &str, online: u64, rooms: u64, queue_peak_bytes: u64) {
        let live = self.sessions.values().filter(|s| s.live).count() as u64;
        if online != live {
            self.violation(
                r,
                format!("/ws/online on {server} says {online}, {live} connections are live"),
            );
        }
        let occupied: BTreeSet<&String> = self
            .sessions
            .values()
            .filter(|s| s.live && s.server == server)
            .flat_map(|s| {
                s.rooms
                    .iter()
                    .filter(|(_, v)| v.member)
                    .map(|(name, _)| name)
            })
            .collect();
        if rooms != occupied.len() as u64 {
            self.violation(
                r,
                format!(
                    "{server} keeps {rooms} rooms, {} have live members",
                    occupied.len()
                ),
            );
        }
        if queue_peak_bytes > self.context.send_queue_bytes as u64 {
            let bound = self.context.send_queue_bytes;
            self.violation(
                r,
                format!("a send queue reached {queue_peak_bytes} bytes, bound {bound}"),
            );
        }
    }
}
