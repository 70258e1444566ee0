//! The Hub: every decision about who gets what, driven by inputs and time.
//!
//! Drive it like this (the shell's loop):
//! 1. `hub.handle(input, now)` for each fact, in the order they happened;
//! 2. `while let Some(out) = hub.poll_output() { ... }` until empty;
//! 3. sleep until `hub.poll_timeout()` or the next input, then
//!    `hub.handle(Input::Tick, now)`.
//!
//! Nothing here reads a clock, spawns, locks or does I/O. Outputs depend only
//! on the config and the sequence of `(input, now)` pairs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use rustc_hash::FxHashMap;

use crate::api::HookCall;
use crate::config::Config;
use crate::error::ErrorCode;
use crate::event::{
    AppendReceipt, AppendRequest, DirectMessage, FrameKind, Input, Origin, Output, Position,
    PublishOutcome, PublishTicket, RelayOutcome, Requester, RoomSnapshot, SequencedMessage, close,
};
use crate::ids::{ConnId, Identity, NodeId, RoomName, UserRef};
use crate::limiter::{ConnLimiter, RateLimits};
use crate::request::{
    ParseLimits, Publish, Request, RequestError, RequestKind, Since, parse_request,
};
use crate::room::{
    Logged, Presence, PresenceChange, Recovery, Room, RoomLog, RoomState, WaitingJoin,
};
use crate::time::Timestamp;
use crate::wire;
use hooks::PendingHook;

/// The sender a backend's publish is shown with when it names none.
pub const SERVER_USER: &str = "server";

/// The pure, deterministic state machine behind one roomhub node.
pub struct Hub {
    config: Config,
    limits: ParseLimits,
    now: Timestamp,
    conns: FxHashMap<ConnId, Conn>,
    /// Every local connection of a user, in connection order.
    user_conns: FxHashMap<Arc<str>, Vec<ConnId>>,
    rooms: FxHashMap<RoomName, Room>,
    /// One entry per connection: its next heartbeat or expiry deadline.
    timers: BTreeSet<(Timestamp, ConnId)>,
    out: VecDeque<Output>,
    rate: RateLimits,
    direct_id_prefix: String,
    direct_seq: u64,
    shutting_down: bool,
    /// Connections whose deferred requests may run now.
    resume: Vec<ConnId>,
    /// Hook calls waiting for their answer: ticket -> connection.
    hook_calls: FxHashMap<u64, ConnId>,
    next_hook: u64,
    /// Errors answered, indexed like [`ErrorCode::ALL`].
    errors_sent: [u64; ErrorCode::ALL.len()],
    /// Cluster mode: (room, user) whose presence the broker failed to take;
    /// the current truth is sent again when it is back.
    presence_unsynced: BTreeMap<(RoomName, Arc<str>), UserRef>,
    /// Messages delivered so far: each open room's `last_active`.
    activity: u64,
    /// History bytes added since the bound was last checked.
    history_added: usize,
}

struct Conn {
    identity: Identity,
    /// Rooms joined, in join order; at most `max_rooms_per_connection`.
    rooms: Vec<RoomName>,
    /// A join waiting for its room to open. Later requests are deferred so
    /// that one connection's requests take effect in the order sent.
    waiting_for: Option<RoomName>,
    deferred: VecDeque<Request>,
    /// This connection's messages (by `Origin::seq`) not yet acked or
    /// refused.
    in_flight: std::collections::BTreeSet<u64>,
    next_seq: u64,
    /// A `leave_room` waits (at the front of `deferred`) until the messages
    /// sent before it are acked, so answers arrive in request order and no
    /// ack comes after the leave's.
    leave_waits: bool,
    /// A `refresh` is being verified; another waits for its answer.
    refreshing: bool,
    /// A request waiting for the app's hook; later ones wait behind it.
    hook: Option<(u64, Option<Arc<str>>, PendingHook)>,
    /// Rooms the backend subscribed this connection to (`/api/subscribe`):
    /// allowed whatever the token's `rooms` claim says.
    granted: Vec<RoomName>,
    limiter: Option<ConnLimiter>,
    last_seen: Timestamp,
    next_ping: Timestamp,
    /// The key of this connection's entry in `Hub::timers`.
    timer_at: Timestamp,
}

impl Conn {
    /// The token's `rooms` claim allows `room`, or the backend granted it.
    fn may_join(&self, room: &RoomName) -> bool {
        self.identity.may_join(room) || self.granted.contains(room)
    }
}

/// Counts for metrics and checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    pub connections: usize,
    pub users: usize,
    pub rooms: usize,
}

impl Hub {
    pub fn new(config: Config) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        Hub {
            limits: ParseLimits::from(&config),
            rate: RateLimits::new(config.rate_limit_per_second, config.rate_limit_burst),
            direct_id_prefix: format!("d{:x}-{:08x}", config.node_id.0, rng.next_u32()),
            config,
            now: Timestamp::ZERO,
            conns: FxHashMap::default(),
            user_conns: FxHashMap::default(),
            rooms: FxHashMap::default(),
            timers: BTreeSet::new(),
            out: VecDeque::new(),
            direct_seq: 0,
            shutting_down: false,
            resume: Vec::new(),
            hook_calls: FxHashMap::default(),
            next_hook: 0,
            errors_sent: [0; ErrorCode::ALL.len()],
            presence_unsynced: BTreeMap::new(),
            activity: 0,
            history_added: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Takes one fact at time `now`. Timers due at or before `now` fire
    /// first. A `now` earlier than one seen before counts as no time passing.
    pub fn handle(&mut self, input: Input, now: Timestamp) {
        self.advance(now);
        match input {
            Input::Connected { conn, identity } => self.on_connected(conn, identity),
            Input::Text { conn, frame } => self.on_text(conn, &frame),
            Input::Binary { conn } => {
                if self.touch(conn) {
                    self.send_error(
                        conn,
                        None,
                        ErrorCode::UnsupportedFrame,
                        "binary frames are not supported; send JSON text frames",
                    );
                }
            }
            Input::Activity { conn } => {
                self.touch(conn);
            }
            Input::QueueOverflow { conn } => {
                self.close(
                    conn,
                    close::SLOW_CONSUMER,
                    "slow consumer: send queue overflowed",
                );
            }
            Input::Disconnected { conn } => {
                self.drop_conn(conn);
            }
            Input::Tick => {}
            Input::Sequenced(msg) => self.on_sequenced(msg),
            Input::Appended(receipt) => self.on_appended(receipt),
            Input::AppendFailed(request) => self.on_append_failed(request),
            Input::RoomOpened(snapshot) => self.on_room_opened(snapshot),
            Input::RoomOpenFailed { room } => self.on_room_open_failed(&room),
            Input::RoomSubscribed { room } => {
                if let Some(RoomState::Opening {
                    early_presence,
                    presence_overflowed,
                    ..
                }) = self.rooms.get_mut(&room).map(|r| &mut r.state)
                {
                    early_presence.clear();
                    *presence_overflowed = false;
                }
            }
            Input::Shutdown => self.on_shutdown(),
            Input::Reconfigure(config) => self.reconfigure(*config),
            Input::RemotePresence {
                room,
                node,
                user,
                present,
            } => self.on_remote_presence(&room, (node, user, present)),
            Input::NodeGone { node } => self.on_node_gone(node),
            Input::RemoteDirect(message) => self.on_remote_direct(&message),
            Input::Relayed { message, outcome } => self.on_relayed(&message, outcome),
            Input::BrokerReconnected => self.on_broker_reconnected(),
            Input::PresenceFailed { room, user } => {
                if self.config.clustered {
                    self.presence_failed(room, user);
                }
            }
            Input::Publish { ticket, publish } => self.on_publish(ticket, publish),
            Input::TokenVerified {
                conn,
                request_id,
                outcome,
            } => self.on_token_verified(conn, request_id.as_deref(), outcome),
            Input::Api { ticket, call } => self.api(ticket, call),
            Input::LineageEnded { ticket, ended } => {
                let answer = if ended {
                    crate::api::ApiAnswer::Removed
                } else {
                    crate::api::ApiAnswer::Unavailable
                };
                self.out.push_back(Output::ApiAnswered { ticket, answer });
            }
            Input::HookAnswered { ticket, verdict } => self.on_hook_answered(ticket, verdict),
        }
        while let Some(conn) = self.resume.pop() {
            self.run_deferred(conn);
        }
    }

    /// The next instruction for the shell, in the order decided.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When the hub next needs `handle(Input::Tick, now)`.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.first().map(|(at, _)| *at)
    }

    pub fn stats(&self) -> HubStats {
        HubStats {
            connections: self.conns.len(),
            users: self.user_conns.len(),
            rooms: self.rooms.len(),
        }
    }

    /// How many `error` frames of each code the hub has answered with.
    pub fn errors_sent(&self) -> impl Iterator<Item = (ErrorCode, u64)> + '_ {
        ErrorCode::ALL
            .iter()
            .copied()
            .zip(self.errors_sent.iter().copied())
    }

    pub fn is_connected(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Rooms a connection has joined, in join order.
    pub fn rooms_of(&self, conn: ConnId) -> Vec<RoomName> {
        self.conns
            .get(&conn)
            .map(|c| c.rooms.clone())
            .unwrap_or_default()
    }

    /// Users present in a room on this node, or `None` if it is not open here.
    /// The local connections that are members of `room`, in order.
    pub fn room_connections(&self, room: &str) -> Vec<ConnId> {
        let Ok(room) = RoomName::parse(room, usize::MAX) else {
            return Vec::new();
        };
        let mut conns: Vec<ConnId> = self
            .rooms
            .get(&room)
            .map(|r| r.members.iter().copied().collect())
            .unwrap_or_default();
        conns.sort_unstable();
        conns
    }

    pub fn room_users(&self, room: &str) -> Option<Vec<UserRef>> {
        let room = RoomName::parse(room, usize::MAX).ok()?;
        let r = self.rooms.get(&room)?;
        Some(r.users.values().map(|p| p.user.clone()).collect())
    }

    /// Names of the rooms open or opening here, sorted.
    pub fn room_names(&self) -> Vec<RoomName> {
        let mut names: Vec<RoomName> = self.rooms.keys().cloned().collect();
        names.sort();
        names
    }

    /// Checks the hub's internal consistency; for fuzzers and model tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.timers.len() != self.conns.len() {
            return Err(format!(
                "{} timers for {} connections",
                self.timers.len(),
                self.conns.len()
            ));
        }
        for (id, c) in &self.conns {
            if !self.timers.contains(&(c.timer_at, *id)) {
                return Err(format!("{id} has no timer entry"));
            }
            if c.rooms.len() > self.config.max_rooms_per_connection {
                return Err(format!("{id} is in {} rooms", c.rooms.len()));
            }
            if c.deferred.len() > self.config.max_deferred_requests {
                return Err(format!("{id} has {} deferred requests", c.deferred.len()));
            }
            for room in &c.rooms {
                let in_room = self.rooms.get(room).is_some_and(|r| r.members.contains(id));
                if !in_room {
                    return Err(format!("{id} lists {room} but is not a member"));
                }
            }
            let listed = self
                .user_conns
                .get(&c.identity.user.id)
                .is_some_and(|v| v.contains(id));
            if !listed {
                return Err(format!("{id} missing from its user's connections"));
            }
        }
        let user_conn_total: usize = self.user_conns.values().map(Vec::len).sum();
        if user_conn_total != self.conns.len() {
            return Err("user connection lists disagree with connections".into());
        }
        for (name, room) in &self.rooms {
            if room.is_deserted() {
                return Err(format!("room {name} is deserted but kept"));
            }
            let mut per_user: FxHashMap<&str, u32> = FxHashMap::default();
            for m in &room.members {
                let Some(c) = self.conns.get(m) else {
                    return Err(format!("room {name} has departed member {m}"));
                };
                if !c.rooms.contains(name) {
                    return Err(format!("room {name} has {m} who does not list it"));
                }
                *per_user.entry(&c.identity.user.id).or_default() += 1;
            }
            if per_user.len() != room.users.len() {
                return Err(format!("room {name} presence lists the wrong users"));
            }
            for (user, p) in &room.users {
                if per_user.get(&**user) != Some(&p.connections) {
                    return Err(format!("room {name} counts {user} wrong"));
                }
            }
            match &room.state {
                RoomState::Opening { .. } if !room.members.is_empty() => {
                    return Err(format!("room {name} has members before it opened"));
                }
                RoomState::Open(log) if log.ahead.len() > self.config.max_gap_buffer => {
                    return Err(format!("room {name} holds too many messages ahead"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    // ---- time ----

    fn advance(&mut self, now: Timestamp) {
        if now > self.now {
            self.now = now;
        }
        self.rate.advance_to(self.now);
        self.fire_timers();
    }

    fn fire_timers(&mut self) {
        // Each pass either drops a connection or moves its deadline past
        // `now`, so the loop ends after at most one pass per connection.
        while let Some(&(at, id)) = self.timers.first() {
            if at > self.now {
                break;
            }
            self.timers.pop_first();
            let now = self.now;
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            // Keep the one-entry-per-connection rule while deciding.
            conn.timer_at = Timestamp(u64::MAX);
            self.timers.insert((conn.timer_at, id));
            if conn.identity.expires_at.is_some_and(|exp| exp <= now) {
                self.close(id, close::POLICY_VIOLATION, "token expired");
                continue;
            }
            if now.ms_since(conn.last_seen) >= self.config.pong_wait_ms {
                self.close(id, close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
                continue;
            }
            if conn.next_ping <= now {
                conn.next_ping = now.plus_ms(self.config.ping_interval_ms);
                self.out.push_back(Output::Ping { conn: id });
            }
            self.reschedule(id);
        }
    }

    fn reschedule(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let mut at = conn
            .next_ping
            .min(conn.last_seen.plus_ms(self.config.pong_wait_ms));
        if let Some(exp) = conn.identity.expires_at {
            at = at.min(exp);
        }
        if at != conn.timer_at {
            self.timers.remove(&(conn.timer_at, id));
            self.timers.insert((at, id));
            conn.timer_at = at;
        }
    }

    /// Records traffic from a connection; false if it is unknown.
    fn touch(&mut self, id: ConnId) -> bool {
        match self.conns.get_mut(&id) {
            // The timer entry is left early on purpose: when it fires, the
            // deadline is recomputed from `last_seen`. That keeps per-frame
            // work O(1).
            Some(c) => {
                c.last_seen = self.now;
                true
            }
            None => false,
        }
    }

    // ---- connections ----

    fn on_connected(&mut self, id: ConnId, identity: Identity) {
        if self.shutting_down {
            self.out.push_back(Output::Close {
                conn: id,
                code: close::GOING_AWAY,
                reason: "server shutting down".into(),
            });
            return;
        }
        if self.conns.contains_key(&id) {
            // A shell bug, not peer input: keep the existing connection.
            return;
        }
        if identity.expires_at.is_some_and(|exp| exp <= self.now) {
            self.out.push_back(Output::Close {
                conn: id,
                code: close::POLICY_VIOLATION,
                reason: "token expired".into(),
            });
            return;
        }
        let user_conns = self.user_conns.entry(identity.user.id.clone()).or_default();
        if user_conns.is_empty() && self.config.clustered {
            self.out.push_back(Output::FollowUser {
                user: identity.user.id.clone(),
            });
        }
        user_conns.push(id);
        let conn = Conn {
            identity,
            rooms: Vec::new(),
            waiting_for: None,
            deferred: VecDeque::new(),
            in_flight: Default::default(),
            next_seq: 0,
            leave_waits: false,
            refreshing: false,
            hook: None,
            granted: Vec::new(),
            limiter: self.rate.new_limiter(),
            last_seen: self.now,
            next_ping: self.now.plus_ms(self.config.ping_interval_ms),
            timer_at: Timestamp(u64::MAX),
        };
        self.conns.insert(id, conn);
        self.timers.insert((Timestamp(u64::MAX), id));
        self.reschedule(id);
    }

    /// Closes a connection the hub gave up on, and forgets it.
    fn close(&mut self, id: ConnId, code: u16, reason: impl Into<std::borrow::Cow<'static, str>>) {
        if self.conns.contains_key(&id) {
            self.out.push_back(Output::Close {
                conn: id,
                code,
                reason: reason.into(),
            });
            self.drop_conn(id);
        }
    }

    fn drop_conn(&mut self, id: ConnId) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.timers.remove(&(conn.timer_at, id));
        if let Some(list) = self.user_conns.get_mut(&conn.identity.user.id) {
            list.retain(|c| *c != id);
            if list.is_empty() {
                self.user_conns.remove(&conn.identity.user.id);
                if self.config.clustered {
                    self.out.push_back(Output::UnfollowUser {
                        user: conn.identity.user.id.clone(),
                    });
                }
            }
        }
        for room in &conn.rooms {
            self.remove_member(id, &conn.identity.user, room);
        }
        if let Some(room) = &conn.waiting_for {
            if let Some(RoomState::Opening { waiting, .. }) =
                self.rooms.get_mut(room).map(|r| &mut r.state)
            {
                waiting.retain(|w| w.conn != id);
            }
            self.close_if_deserted(room);
        }
    }

    /// Puts `new`'s rules in force; see [`Input::Reconfigure`].
    fn reconfigure(&mut self, new: Config) {
        let old = &self.config;
        let new = Config {
            node_id: old.node_id,
            seed: old.seed,
            clustered: old.clustered,
            history_max_bytes: old.history_max_bytes,
            ..new
        };
        self.limits = ParseLimits::from(&new);
        self.rate
            .set_quota(new.rate_limit_per_second, new.rate_limit_burst);
        let (max_messages, max_age_ms) = new.history_retained();
        if (max_messages, max_age_ms) != self.config.history_retained() {
            self.out.push_back(Output::HistoryLimits {
                max_messages,
                max_age_ms,
            });
        }
        self.config = new;
    }

    fn on_shutdown(&mut self) {
        self.shutting_down = true;
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort_unstable();
        for conn in ids {
            self.out.push_back(Output::Close {
                conn,
                code: close::GOING_AWAY,
                reason: "server shutting down".into(),
            });
        }
        for name in self.room_names() {
            if self.config.clustered
                && let Some(room) = self.rooms.get(&name)
            {
                for p in room.users.values() {
                    self.out.push_back(Output::Presence {
                        room: name.clone(),
                        user: p.user.clone(),
                        present: false,
                    });
                }
            }
            self.out.push_back(Output::CloseRoom { room: name });
        }
        self.conns.clear();
        self.user_conns.clear();
        self.timers.clear();
        self.rooms.clear();
    }

    // ---- requests ----

    fn on_text(&mut self, id: ConnId, frame: &[u8]) {
        if !self.touch(id) {
            return;
        }
        if frame.len() > self.config.max_message_bytes {
            self.close(id, close::MESSAGE_TOO_BIG, "message too big");
            return;
        }
        let request = match parse_request(frame, &self.limits) {
            Ok(r) => r,
            Err(e) => return self.reply_error(id, e),
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.waiting_for.is_none() && !conn.leave_waits && conn.hook.is_none() {
            self.execute(id, request);
        } else if conn.deferred.len() < self.config.max_deferred_requests {
            conn.deferred.push_back(request);
        } else {
            self.send_error(
                id,
                request.id.as_deref(),
                ErrorCode::RateLimited,
                "too many requests queued behind a pending join",
            );
        }
    }

    fn execute(&mut self, id: ConnId, request: Request) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if matches!(request.kind, RequestKind::Leave { .. }) && !conn.in_flight.is_empty() {
            conn.leave_waits = true;
            conn.deferred.push_front(request);
            return;
        }
        let Request { id: req_id, kind } = request;
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if kind.is_rate_limited() && conn.limiter.as_ref().is_some_and(|l| l.check().is_err()) {
            return self.send_error(
                id,
                req_id.as_deref(),
                ErrorCode::RateLimited,
                "rate limit exceeded; slow down",
            );
        }
        let is_member = |room: &RoomName| conn.rooms.contains(room);
        match kind {
            RequestKind::Join { room, since } => self.join(id, req_id, room, since),
            RequestKind::Leave { room } if is_member(&room) => {
                let user = conn.identity.user.clone();
                if let Some(c) = self.conns.get_mut(&id) {
                    c.rooms.retain(|r| *r != room);
                }
                self.remove_member(id, &user, &room);
                self.ack(id, req_id.as_deref(), Some(&room), None);
            }
            RequestKind::Send {
                room,
                content,
                reply_to,
            } if is_member(&room) => {
                let ns = self.config.namespace_of(room.as_str());
                if ns.is_some_and(|n| !n.client_publish) {
                    return self.send_error(
                        id,
                        req_id.as_deref(),
                        ErrorCode::Forbidden,
                        "only the server publishes in this room",
                    );
                }
                if self.config.publish_hook && ns.is_none_or(|n| n.publish_hook) {
                    let user = conn.identity.user.clone();
                    let call = HookCall::Publish {
                        user,
                        room: room.clone(),
                        content: content.clone(),
                    };
                    let pending = PendingHook::Publish {
                        room,
                        content,
                        reply_to,
                    };
                    return self.ask_hook(id, req_id, call, pending);
                }
                self.append(id, req_id, room, content, reply_to);
            }
            RequestKind::Typing { room, .. }
                if self
                    .config
                    .namespace_of(room.as_str())
                    .is_some_and(|n| !n.typing) =>
            {
                self.send_error(
                    id,
                    req_id.as_deref(),
                    ErrorCode::Forbidden,
                    "typing indicators are off in this room",
                );
            }
            RequestKind::Typing { room, typing } if is_member(&room) => {
                let frame = wire::user_typing(&room, &conn.identity.user, typing, self.now);
                self.broadcast(&room, Some(id), &frame, FrameKind::Ephemeral);
                self.ack(id, req_id.as_deref(), Some(&room), None);
            }
            RequestKind::OnlineUsers { room } if is_member(&room) => {
                if let Some(r) = self.rooms.get(&room) {
                    let users = if self.config.presence_in(room.as_str()) {
                        r.user_list()
                    } else {
                        Vec::new()
                    };
                    let frame = wire::online_users(&room, &users, self.now);
                    self.send(id, frame, FrameKind::Live);
                }
                self.ack(id, req_id.as_deref(), Some(&room), None);
            }
            RequestKind::History {
                room,
                limit,
                before,
            } if is_member(&room) => self.history(id, req_id.as_deref(), &room, limit, before),
            RequestKind::Leave { .. }
            | RequestKind::Send { .. }
            | RequestKind::Typing { .. }
            | RequestKind::OnlineUsers { .. }
            | RequestKind::History { .. } => self.send_error(
                id,
                req_id.as_deref(),
                ErrorCode::NotInRoom,
                "join the room first",
            ),
            RequestKind::Direct { to, content } => self.direct(id, req_id, &to, &content),
            RequestKind::Refresh { token } => self.refresh(id, req_id, token),
        }
    }

    /// Answers a member's `history` request from the room's retained log
    /// (what every engine hands the hub when the room opens here), then acks.
    fn history(
        &mut self,
        id: ConnId,
        req_id: Option<&str>,
        name: &RoomName,
        limit: usize,
        before: Option<u64>,
    ) {
        let now = self.now;
        let (_, max_age) = self.config.history_of(name.as_str());
        let Some(RoomState::Open(log)) = self.rooms.get_mut(name).map(|r| &mut r.state) else {
            // A member's room is open; answer anyway if that ever breaks.
            return self.send_error(
                id,
                req_id,
                ErrorCode::Unavailable,
                "history not ready; retry",
            );
        };
        let (messages, has_more) = log.page_at(now, max_age, before, limit);
        let frame = wire::history(
            &wire::History {
                room: name,
                request_id: req_id,
                epoch: &log.epoch,
                head: log.head,
                messages: &messages,
                has_more,
            },
            now,
        );
        self.send(id, frame, FrameKind::Live);
        self.ack(id, req_id, Some(name), None);
    }

    /// Hands a member's message to the sequencer; acked once stored.
    fn append(
        &mut self,
        id: ConnId,
        req_id: Option<Arc<str>>,
        room: RoomName,
        content: Arc<str>,
        reply_to: Option<Arc<str>>,
    ) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let sender = c.identity.user.clone();
        c.next_seq += 1;
        c.in_flight.insert(c.next_seq);
        let request = AppendRequest {
            room,
            sender,
            content,
            reply_to,
            timestamp: self.now,
            origin: Some(Origin {
                node: self.config.node_id,
                conn: id,
                request_id: req_id,
                seq: c.next_seq,
            }),
            ticket: None,
        };
        self.out.push_back(Output::Append(Box::new(request)));
    }

    fn join(&mut self, id: ConnId, req_id: Option<Arc<str>>, room: RoomName, since: Option<Since>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if !conn.may_join(&room) {
            return self.send_error(
                id,
                req_id.as_deref(),
                ErrorCode::Forbidden,
                "your token does not allow this room",
            );
        }
        if !conn.rooms.contains(&room) && conn.rooms.len() >= self.config.max_rooms_per_connection {
            return self.send_error(
                id,
                req_id.as_deref(),
                ErrorCode::TooManyRooms,
                "room limit per connection reached; leave a room first",
            );
        }
        if self.config.join_hook
            && self
                .config
                .namespace_of(room.as_str())
                .is_none_or(|n| n.join_hook)
            && !conn.rooms.contains(&room)
            && !conn.granted.contains(&room)
        {
            let call = HookCall::Join {
                user: conn.identity.user.clone(),
                room: room.clone(),
            };
            return self.ask_hook(id, req_id, call, PendingHook::Join { room, since });
        }
        self.join_now(id, req_id, room, since);
    }

    /// Joins, the checks done: at once if the room is open here, else once
    /// it opens.
    fn join_now(
        &mut self,
        id: ConnId,
        req_id: Option<Arc<str>>,
        room: RoomName,
        since: Option<Since>,
    ) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let wait = WaitingJoin {
            conn: id,
            request_id: req_id,
            since,
        };
        match self.rooms.get_mut(&room).map(|r| &mut r.state) {
            Some(RoomState::Open(_)) => self.complete_join(&room, wait),
            Some(RoomState::Opening { waiting, .. }) => {
                waiting.push(wait);
                conn.waiting_for = Some(room);
            }
            None => {
                self.rooms.insert(room.clone(), Room::opening(wait));
                conn.waiting_for = Some(room.clone());
                self.out.push_back(Output::OpenRoom { room, after: None });
            }
        }
    }

    /// Makes `wait.conn` a member of the open `room`, replays what it missed,
    /// and answers with `room_info`. Joining again is harmless.
    fn complete_join(&mut self, name: &RoomName, wait: WaitingJoin) {
        let now = self.now;
        if self
            .conns
            .get(&wait.conn)
            .is_some_and(|c| !c.may_join(name))
        {
            // A refreshed token took the room away while the join waited.
            self.send_error(
                wait.conn,
                wait.request_id.as_deref(),
                ErrorCode::Forbidden,
                "your token does not allow this room",
            );
            return self.close_if_deserted(name);
        }
        if let (Some(max), Some(conn), Some(room)) = (
            self.config
                .namespace_of(name.as_str())
                .and_then(|n| n.max_members),
            self.conns.get(&wait.conn),
            self.rooms.get(name),
        ) && !room.has_user(&conn.identity.user.id)
            && room.user_count() >= max
        {
            self.send_error(
                wait.conn,
                wait.request_id.as_deref(),
                ErrorCode::RoomFull,
                "the room is full",
            );
            return self.close_if_deserted(name);
        }
        if self.conns.contains_key(&wait.conn) && !self.rooms.contains_key(name) {
            // Never expected: a join is always answered, whatever happened.
            return self.send_error(
                wait.conn,
                wait.request_id.as_deref(),
                ErrorCode::Unavailable,
                "the room closed before the join completed; retry",
            );
        }
        let (Some(conn), Some(room)) = (self.conns.get_mut(&wait.conn), self.rooms.get_mut(name))
        else {
            return;
        };
        let Room {
            members,
            users,
            remote,
            state: RoomState::Open(log),
        } = room
        else {
            return;
        };
        if members.insert(wait.conn) {
            conn.rooms.push(name.clone());
            let user = &conn.identity.user;
            let presence = users.entry(user.id.clone()).or_insert_with(|| Presence {
                user: user.clone(),
                connections: 0,
            });
            presence.connections += 1;
            if presence.connections == 1 {
                if !remote.contains_key(&user.id) && self.config.presence_in(name.as_str()) {
                    let frame = wire::presence(name, user, true, now);
                    fan_out(
                        &mut self.out,
                        members,
                        Some(wait.conn),
                        &frame,
                        FrameKind::Live,
                    );
                }
                if self.config.clustered {
                    self.out.push_back(Output::Presence {
                        room: name.clone(),
                        user: user.clone(),
                        present: true,
                    });
                }
            }
        }
        log.trim_by_age(now, self.config.history_of(name.as_str()).1);
        let recovered = wait.since.as_ref().map(|since| match log.recover(since) {
            Recovery::Complete(missed) => {
                // A connection never gets its own messages, replayed or not.
                for m in missed.into_iter().filter(|m| m.sender != Some(wait.conn)) {
                    self.out.push_back(Output::Send {
                        conn: wait.conn,
                        frame: m.frame.clone(),
                        kind: FrameKind::Replay,
                    });
                }
                true
            }
            Recovery::Impossible => false,
        });
        let user_list = if self.config.presence_in(name.as_str()) {
            crate::room::user_list(users, remote)
        } else {
            Vec::new()
        };
        let info = wire::RoomInfo {
            room: name,
            users: &user_list,
            offset: log.head,
            epoch: &log.epoch,
            recovered,
        };
        let frame = wire::room_info(&info, now);
        self.send(wait.conn, frame, FrameKind::Live);
        self.ack(wait.conn, wait.request_id.as_deref(), Some(name), None);
    }

    /// Removes a connection from a room's members and presence; the caller
    /// updates the connection's own room list.
    fn remove_member(&mut self, id: ConnId, user: &UserRef, name: &RoomName) {
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        if !room.members.swap_remove(&id) {
            return;
        }
        if let Some(presence) = room.users.get_mut(&user.id) {
            presence.connections -= 1;
            if presence.connections == 0 {
                room.users.swap_remove(&user.id);
                if !room.remote.contains_key(&user.id) && self.config.presence_in(name.as_str()) {
                    let frame = wire::presence(name, user, false, self.now);
                    fan_out(&mut self.out, &room.members, None, &frame, FrameKind::Live);
                }
                if self.config.clustered {
                    self.out.push_back(Output::Presence {
                        room: name.clone(),
                        user: user.clone(),
                        present: false,
                    });
                }
            }
        }
        self.close_if_deserted(name);
    }

    fn close_if_deserted(&mut self, name: &RoomName) {
        if self.rooms.get(name).is_some_and(Room::is_deserted) {
            self.release_acks(name);
            if let Some(Room {
                state: RoomState::Open(log),
                ..
            }) = self.rooms.get_mut(name)
            {
                for receipt in std::mem::take(&mut log.foreign_acks) {
                    self.send_receipt(&receipt);
                }
            }
            self.rooms.remove(name);
            self.out.push_back(Output::CloseRoom { room: name.clone() });
        }
    }

    fn direct(&mut self, id: ConnId, req_id: Option<Arc<str>>, to: &str, content: &str) {
        let recipients: Vec<ConnId> = self
            .user_conns
            .get(to)
            .map(|list| list.iter().copied().filter(|c| *c != id).collect())
            .unwrap_or_default();
        let Some(sender) = self.conns.get(&id).map(|c| &c.identity.user) else {
            return;
        };
        if recipients.is_empty() && !self.config.clustered {
            return self.send_error(
                id,
                req_id.as_deref(),
                ErrorCode::RecipientOffline,
                "the recipient is not connected",
            );
        }
        self.direct_seq += 1;
        let message_id = format!("{}-{}", self.direct_id_prefix, self.direct_seq);
        if self.config.clustered {
            // Other nodes may have connections of the recipient too. When
            // this node has none, the sender waits for the relay's answer.
            let waits = recipients.is_empty();
            let message = DirectMessage {
                id: message_id.as_str().into(),
                from: sender.clone(),
                to: to.into(),
                content: content.into(),
                timestamp: self.now,
                origin: waits.then(|| Origin {
                    node: self.config.node_id,
                    conn: id,
                    request_id: req_id.clone(),
                    seq: 0,
                }),
            };
            self.out.push_back(Output::Relay(Box::new(message)));
            if waits {
                return;
            }
        }
        let frame = wire::direct_message(&message_id, sender, content, self.now);
        for conn in recipients {
            self.send(conn, frame.clone(), FrameKind::Live);
        }
        self.ack(id, req_id.as_deref(), None, Some((&message_id, None)));
    }

    // ---- cluster ----

    fn on_remote_presence(&mut self, name: &RoomName, change: PresenceChange) {
        if change.0 == self.config.node_id {
            return;
        }
        let max_early = self.config.max_gap_buffer;
        let Some(room) = self.rooms.get_mut(name) else {
            // Not open here: the snapshot of a later open carries it.
            return;
        };
        match &mut room.state {
            RoomState::Opening {
                early_presence,
                presence_overflowed,
                ..
            } => {
                if early_presence.len() < max_early {
                    early_presence.push(change);
                } else {
                    *presence_overflowed = true;
                }
            }
            RoomState::Open(_) => self.apply_remote(name, change),
        }
    }

    /// Applies another node's presence change to an open room and tells the
    /// local members when the user joined or left the whole cluster.
    fn apply_remote(&mut self, name: &RoomName, change: PresenceChange) {
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        let user = change.1.clone();
        let present = change.2;
        if room.apply_remote(change) && self.config.presence_in(name.as_str()) {
            let frame = wire::presence(name, &user, present, self.now);
            fan_out(&mut self.out, &room.members, None, &frame, FrameKind::Live);
        }
    }

    fn on_node_gone(&mut self, node: NodeId) {
        if node == self.config.node_id {
            return;
        }
        for name in self.room_names() {
            let gone: Vec<UserRef> = match self.rooms.get(&name) {
                Some(room) => room
                    .remote
                    .values()
                    .filter(|r| r.nodes.contains(&node))
                    .map(|r| r.user.clone())
                    .collect(),
                None => continue,
            };
            for user in gone {
                self.apply_remote(&name, (node, user, false));
            }
        }
    }

    fn on_remote_direct(&mut self, message: &DirectMessage) {
        if message
            .origin
            .as_ref()
            .is_some_and(|o| o.node == self.config.node_id)
        {
            return;
        }
        let Some(list) = self.user_conns.get(&message.to) else {
            return;
        };
        let recipients = list.clone();
        let frame = wire::direct_message(
            &message.id,
            &message.from,
            &message.content,
            message.timestamp,
        );
        for conn in recipients {
            self.send(conn, frame.clone(), FrameKind::Live);
        }
    }

    fn on_relayed(&mut self, message: &DirectMessage, outcome: RelayOutcome) {
        let Some(origin) = &message.origin else {
            return;
        };
        if origin.node != self.config.node_id {
            return;
        }
        let req_id = origin.request_id.as_deref();
        match outcome {
            RelayOutcome::Delivered => {
                self.ack(origin.conn, req_id, None, Some((&message.id, None)));
            }
            RelayOutcome::Offline => self.send_error(
                origin.conn,
                req_id,
                ErrorCode::RecipientOffline,
                "the recipient is not connected",
            ),
            RelayOutcome::Unavailable => self.send_error(
                origin.conn,
                req_id,
                ErrorCode::Unavailable,
                "the message could not be relayed now; retry",
            ),
        }
    }

    /// Runs requests a connection queued while its join waited.
    fn run_deferred(&mut self, id: ConnId) {
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            if conn.waiting_for.is_some() || conn.leave_waits || conn.hook.is_some() {
                return;
            }
            let Some(request) = conn.deferred.pop_front() else {
                return;
            };
            self.execute(id, request);
        }
    }

    // ---- sequencing ----

    /// A backend's message: sequenced like a member's, shown as sent by
    /// the server itself unless the backend names a sender.
    fn on_publish(&mut self, ticket: u64, publish: Publish) {
        let sender = publish.sender.unwrap_or_else(|| UserRef {
            id: SERVER_USER.into(),
            name: SERVER_USER.into(),
        });
        let request = AppendRequest {
            room: publish.room,
            sender,
            content: publish.content,
            reply_to: publish.reply_to,
            timestamp: self.now,
            origin: None,
            ticket: Some(PublishTicket {
                node: self.config.node_id,
                id: ticket,
            }),
        };
        self.out.push_back(Output::Append(Box::new(request)));
    }

    fn on_sequenced(&mut self, msg: SequencedMessage) {
        let max_early = self.config.max_gap_buffer;
        match self.rooms.get_mut(&msg.room).map(|r| &mut r.state) {
            // Not open on this node: nobody here to deliver to.
            None => {}
            // Beyond the bound, the snapshot or a later resync carries it.
            Some(RoomState::Opening { early, .. }) if early.len() < max_early => early.push(msg),
            Some(RoomState::Opening { .. }) => {}
            Some(RoomState::Open(_)) => {
                let room = msg.room.clone();
                self.accept(&room, msg);
            }
        }
    }

    /// Takes a sequenced message for an open room: delivers it if it is the
    /// next one, holds it if it is early, ignores it if already seen.
    fn accept(&mut self, name: &RoomName, msg: SequencedMessage) {
        let Some(RoomState::Open(log)) = self.rooms.get_mut(name).map(|r| &mut r.state) else {
            return;
        };
        if msg.epoch != log.epoch {
            // A new lineage: the resync snapshot tells us what happened.
            self.request_resync(name);
        } else if msg.offset <= log.head {
            // Already delivered (a resync overlapped the live stream).
        } else if msg.offset == log.head + 1 {
            self.deliver(name, &msg);
            self.deliver_ahead(name);
        } else {
            if log.ahead.len() < self.config.max_gap_buffer {
                log.ahead.insert(msg.offset, msg);
            }
            self.request_resync(name);
        }
    }

    pub(super) fn request_resync(&mut self, name: &RoomName) {
        if let Some(RoomState::Open(log)) = self.rooms.get_mut(name).map(|r| &mut r.state)
            && !log.resyncing
        {
            log.resyncing = true;
            let after = Position {
                epoch: log.epoch.clone(),
                offset: log.head,
            };
            self.out.push_back(Output::OpenRoom {
                room: name.clone(),
                after: Some(after),
            });
        }
    }

    fn deliver_ahead(&mut self, name: &RoomName) {
        loop {
            let Some(RoomState::Open(log)) = self.rooms.get_mut(name).map(|r| &mut r.state) else {
                return;
            };
            // Held messages a snapshot has since delivered are done with.
            while log
                .ahead
                .first_key_value()
                .is_some_and(|(o, _)| *o <= log.head)
            {
                log.ahead.pop_first();
            }
            let Some(next) = log.ahead.remove(&(log.head + 1)) else {
                return;
            };
            self.deliver(name, &next);
        }
    }

    /// Logs the message at `head + 1` and sends it to every member
    /// connection except the one that sent it. Serialized once.
    fn deliver(&mut self, name: &RoomName, msg: &SequencedMessage) {
        // The sender is skipped only while its message waits for the ack it
        // gets now. One it was told had failed (the reply was lost, the
        // message stored all the same) reaches it like anyone else's, so its
        // stream has no hole.
        let acks_now = msg.origin.as_ref().filter(|o| {
            o.node == self.config.node_id
                && self
                    .conns
                    .get(&o.conn)
                    .is_some_and(|c| c.in_flight.contains(&o.seq))
        });
        let sender_conn = acks_now.map(|o| o.conn);
        let acks_now = acks_now.is_some();
        let (max_messages, max_age) = self.config.history_of(name.as_str());
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        let RoomState::Open(log) = &mut room.state else {
            return;
        };
        let frame = wire::new_message(msg);
        let frame_len = frame.len();
        fan_out(
            &mut self.out,
            &room.members,
            sender_conn,
            &frame,
            FrameKind::Live,
        );
        log.push(
            Logged {
                offset: msg.offset,
                timestamp: msg.timestamp,
                frame,
                sender: sender_conn,
            },
            max_messages,
        );
        log.trim_by_age(self.now, max_age);
        self.activity += 1;
        log.last_active = self.activity;
        self.history_added += frame_len;
        // This node's own message is stored and now in order: ack it here,
        // so the sender learns its offset exactly when the others get the
        // message, never ahead of the messages below it.
        if let Some(origin) = msg
            .origin
            .as_ref()
            .filter(|o| o.node == self.config.node_id)
        {
            log.pending_acks.remove(&msg.offset);
            if acks_now {
                self.ack(
                    origin.conn,
                    origin.request_id.as_deref(),
                    Some(name),
                    Some((&msg.id, Some(msg.offset))),
                );
                self.append_answered(origin);
            }
        }
        self.check_history_bound();
    }

    /// Keeps every open room's history within `history_max_bytes`
    /// together: counted after each sixteenth of the bound added, and when
    /// over fifteen sixteenths (so that what arrives before the next count
    /// stays within the bound), the rooms with the oldest latest message
    /// lose their history first (whole rooms, down to nine tenths of that).
    /// A member who rejoins such a room from before its head is told
    /// `recovered: false`.
    fn check_history_bound(&mut self) {
        let bound = self.config.history_max_bytes;
        let step = bound / 16;
        if bound == 0 || self.history_added <= step {
            return;
        }
        let bound = bound - step;
        self.history_added = 0;
        let mut total = 0;
        let mut held: Vec<(u64, RoomName)> = Vec::new();
        for (name, room) in &self.rooms {
            if let RoomState::Open(log) = &room.state
                && log.bytes() > 0
            {
                total += log.bytes();
                held.push((log.last_active, name.clone()));
            }
        }
        if total <= bound {
            return;
        }
        held.sort_unstable();
        let target = bound - bound / 10;
        for (_, name) in held {
            if total <= target {
                break;
            }
            if let Some(RoomState::Open(log)) = self.rooms.get_mut(&name).map(|r| &mut r.state) {
                total -= log.bytes();
                log.forget_history();
            }
        }
    }

    fn on_appended(&mut self, receipt: AppendReceipt) {
        let origin = match &receipt.requester {
            Requester::Conn(origin) => origin,
            Requester::Api(ticket) => {
                if ticket.node == self.config.node_id {
                    let outcome = PublishOutcome::Stored {
                        room: receipt.room,
                        message_id: receipt.message_id,
                        offset: receipt.offset,
                    };
                    self.out.push_back(Output::Published {
                        ticket: ticket.id,
                        outcome,
                    });
                }
                return;
            }
        };
        if origin.node != self.config.node_id {
            return;
        }
        let max = self.config.max_gap_buffer;
        if let Some(RoomState::Open(log)) = self.rooms.get_mut(&receipt.room).map(|r| &mut r.state)
            && log.epoch != receipt.epoch
            && log.foreign_acks.len() < max
        {
            // Stored in an epoch this node has not moved the room to: the
            // sender hears of the reset first (the resync brings it).
            let name = receipt.room.clone();
            log.foreign_acks.push(receipt);
            self.request_resync(&name);
            return;
        }
        if let Some(RoomState::Open(log)) = self.rooms.get_mut(&receipt.room).map(|r| &mut r.state)
            && log.epoch == receipt.epoch
            && receipt.offset > log.opened_head
        {
            if receipt.offset <= log.head {
                // Delivered here already, and acked then.
                return;
            }
            if log.pending_acks.len() < max {
                // The delivery has not reached this node yet: it acks.
                log.pending_acks.insert(receipt.offset, receipt);
                return;
            }
        }
        self.send_receipt(&receipt);
    }

    fn send_receipt(&mut self, receipt: &AppendReceipt) {
        let Requester::Conn(origin) = &receipt.requester else {
            return;
        };
        if self.append_answered(origin) {
            self.ack(
                origin.conn,
                origin.request_id.as_deref(),
                Some(&receipt.room),
                Some((&receipt.message_id, Some(receipt.offset))),
            );
        }
    }

    /// Marks one of the connection's messages answered (acked or refused).
    /// False if it already was: every message gets exactly one answer. A
    /// leave that waited for the connection's messages runs once the last is
    /// answered (at the end of the current input, never mid-delivery).
    fn append_answered(&mut self, origin: &Origin) -> bool {
        let Some(c) = self.conns.get_mut(&origin.conn) else {
            return false;
        };
        if !c.in_flight.remove(&origin.seq) {
            return false;
        }
        if c.in_flight.is_empty() && c.leave_waits {
            c.leave_waits = false;
            self.resume.push(origin.conn);
        }
        true
    }

    /// Sends every ack still waiting for its delivery: the room is closing
    /// or restarting, and the messages are stored all the same.
    fn release_acks(&mut self, name: &RoomName) {
        let due: Vec<AppendReceipt> = match self.rooms.get_mut(name).map(|r| &mut r.state) {
            Some(RoomState::Open(log)) => std::mem::take(&mut log.pending_acks)
                .into_values()
                .collect(),
            _ => return,
        };
        for receipt in due {
            self.send_receipt(&receipt);
        }
    }

    /// After a resync: receipts that waited for the room to reach their
    /// epoch are acked now if their message came with the snapshot (this
    /// node never delivers it), or wait for its delivery as usual; those of
    /// an epoch the room did not move to are acked as they are.
    fn settle_foreign_acks(&mut self, name: &RoomName) {
        let (held, epoch, head) = match self.rooms.get_mut(name).map(|r| &mut r.state) {
            Some(RoomState::Open(log)) if !log.foreign_acks.is_empty() => (
                std::mem::take(&mut log.foreign_acks),
                log.epoch.clone(),
                log.head,
            ),
            _ => return,
        };
        for receipt in held {
            if receipt.epoch == epoch && receipt.offset > head {
                self.on_appended(receipt);
            } else {
                self.send_receipt(&receipt);
            }
        }
    }

    fn on_append_failed(&mut self, request: AppendRequest) {
        if let Some(ticket) = request.ticket
            && ticket.node == self.config.node_id
        {
            self.out.push_back(Output::Published {
                ticket: ticket.id,
                outcome: PublishOutcome::Unavailable,
            });
        }
        if let Some(origin) = request.origin
            && origin.node == self.config.node_id
            && self.append_answered(&origin)
        {
            self.send_error(
                origin.conn,
                origin.request_id.as_deref(),
                ErrorCode::Unavailable,
                "the message may not have been stored; retry",
            );
        }
    }

    fn on_room_opened(&mut self, snapshot: RoomSnapshot) {
        let name = snapshot.room.clone();
        let Some(room) = self.rooms.get_mut(&name) else {
            // Everyone left before it opened; CloseRoom was already emitted.
            return;
        };
        match &mut room.state {
            RoomState::Opening {
                waiting,
                early,
                early_presence,
                presence_overflowed,
                readers,
            } => {
                let resync = *presence_overflowed;
                let waiting = std::mem::take(waiting);
                let early = std::mem::take(early);
                let early_presence = std::mem::take(early_presence);
                let readers = std::mem::take(readers);
                let me = self.config.node_id;
                // Nobody is a member yet, so this tells no one.
                for member in snapshot.presence.iter().filter(|m| m.node != me) {
                    room.apply_remote((member.node, member.user.clone(), true));
                }
                for change in early_presence {
                    room.apply_remote(change);
                }
                let mut log = log_from(&self.config, self.now, snapshot);
                log.last_active = self.activity;
                self.history_added += log.bytes();
                room.state = RoomState::Open(log);
                for msg in early {
                    self.accept(&name, msg);
                }
                // Every waiting join completes before any joiner's later
                // requests run: one of them may leave the room, which must
                // not close it under the joins still waiting (found by the
                // sharded simulator, 3 nodes x 3 brokers, seed 151).
                for wait in waiting {
                    let id = wait.conn;
                    let Some(conn) = self.conns.get_mut(&id) else {
                        continue;
                    };
                    conn.waiting_for = None;
                    self.complete_join(&name, wait);
                    self.resume.push(id);
                }
                if resync {
                    self.request_resync(&name);
                }
                if !readers.is_empty() {
                    self.answer_readers(&name, readers);
                    self.close_if_deserted(&name);
                }
            }
            RoomState::Open(log) => {
                log.resyncing = false;
                let new_epoch = snapshot.epoch != log.epoch;
                self.reconcile_presence(&name, &snapshot);
                if new_epoch {
                    self.reset_room(&name, snapshot);
                    return self.settle_foreign_acks(&name);
                }
                for msg in &snapshot.messages {
                    if self.open_head(&name) == Some(msg.offset.wrapping_sub(1)) {
                        self.deliver(&name, msg);
                    }
                }
                self.deliver_ahead(&name);
                let caught_up = match self.rooms.get(&name).map(|r| &r.state) {
                    Some(RoomState::Open(log)) => log.head >= snapshot.head && log.ahead.is_empty(),
                    _ => true,
                };
                if !caught_up {
                    // Messages were trimmed before we could fetch them: the
                    // members cannot be given a gap-free stream any more.
                    self.reset_room(&name, snapshot);
                }
                self.settle_foreign_acks(&name);
            }
        }
    }

    /// After a resync, takes the snapshot's view of other nodes' members
    /// (changes may have been missed while the broker was unreachable) and
    /// tells local members about the differences.
    fn reconcile_presence(&mut self, name: &RoomName, snapshot: &RoomSnapshot) {
        let me = self.config.node_id;
        let Some(room) = self.rooms.get(name) else {
            return;
        };
        let mut changes: Vec<PresenceChange> = Vec::new();
        for r in room.remote.values() {
            for node in &r.nodes {
                let still = snapshot
                    .presence
                    .iter()
                    .any(|m| m.node == *node && m.user.id == r.user.id);
                if !still {
                    changes.push((*node, r.user.clone(), false));
                }
            }
        }
        for m in snapshot.presence.iter().filter(|m| m.node != me) {
            let known = room
                .remote
                .get(&m.user.id)
                .is_some_and(|r| r.nodes.contains(&m.node));
            if !known {
                changes.push((m.node, m.user.clone(), true));
            }
        }
        for change in changes {
            self.apply_remote(name, change);
        }
        self.reconcile_own_presence(name, snapshot);
    }

    /// The broker's view of this node's members in a room, corrected from a
    /// resync's snapshot: members it lacks are announced (all of them after
    /// a broker outage, since the other nodes may have been told this node
    /// was gone), and departures it still holds are sent again.
    fn reconcile_own_presence(&mut self, name: &RoomName, snapshot: &RoomSnapshot) {
        if !self.config.clustered {
            return;
        }
        let me = self.config.node_id;
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        let all = match &mut room.state {
            RoomState::Open(log) => std::mem::take(&mut log.reannounce),
            RoomState::Opening { .. } => false,
        };
        let recorded = |id: &str| {
            snapshot
                .presence
                .iter()
                .any(|m| m.node == me && &*m.user.id == id)
        };
        let mut fixes: Vec<(UserRef, bool)> = room
            .users
            .values()
            .filter(|p| all || !recorded(&p.user.id))
            .map(|p| (p.user.clone(), true))
            .collect();
        fixes.extend(
            snapshot
                .presence
                .iter()
                .filter(|m| m.node == me && !room.users.contains_key(&m.user.id))
                .map(|m| (m.user.clone(), false)),
        );
        for (user, present) in fixes {
            self.out.push_back(Output::Presence {
                room: name.clone(),
                user,
                present,
            });
        }
    }

    /// Remembers a presence update the broker did not take. Bounded: past
    /// the bound the first entry (by room and user) is dropped; rooms still
    /// open here are reconciled from their snapshots anyway.
    fn presence_failed(&mut self, room: RoomName, user: UserRef) {
        let key = (room, user.id.clone());
        if !self.presence_unsynced.contains_key(&key)
            && self.presence_unsynced.len() >= self.config.max_presence_retries
        {
            self.presence_unsynced.pop_first();
        }
        if self.config.max_presence_retries > 0 {
            self.presence_unsynced.insert(key, user);
        }
    }

    /// The broker is back. It missed the updates that failed: each is sent
    /// again as what is true now (present if the user is still in the room
    /// here), at once, since a snapshot does not show this node's entries
    /// while its liveness has run out. It may also have dropped this node's
    /// members (the other nodes told it was gone): every open room is
    /// resynced, and its local members announced again once the snapshot is
    /// in ([`Hub::reconcile_own_presence`]).
    fn on_broker_reconnected(&mut self) {
        for ((room, id), user) in std::mem::take(&mut self.presence_unsynced) {
            let present = self
                .rooms
                .get(&room)
                .is_some_and(|r| r.users.contains_key(&id));
            self.out.push_back(Output::Presence {
                room,
                user,
                present,
            });
        }
        for name in self.room_names() {
            if let Some(RoomState::Open(log)) = self.rooms.get_mut(&name).map(|r| &mut r.state) {
                log.reannounce = true;
            }
            self.request_resync(&name);
        }
    }

    fn open_head(&self, name: &RoomName) -> Option<u64> {
        match &self.rooms.get(name)?.state {
            RoomState::Open(log) => Some(log.head),
            RoomState::Opening { .. } => None,
        }
    }

    /// A room whose stream can no longer be continued without a gap (a new
    /// epoch: the broker's history was lost; or missed messages already
    /// trimmed) continues from the snapshot, and every local member is told
    /// so in-band: a `room_reset` with the room's new position and
    /// `recovered: false`. Nobody is disconnected; what was missed is not
    /// delivered, and the client knows it. Messages that came ahead of the
    /// snapshot in its lineage follow the reset.
    fn reset_room(&mut self, name: &RoomName, snapshot: RoomSnapshot) {
        // Stored all the same: their senders (if still here) get the acks.
        self.release_acks(name);
        let now = self.now;
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        let RoomState::Open(old) = &mut room.state else {
            return;
        };
        let ahead = std::mem::take(&mut old.ahead);
        let reannounce = old.reannounce;
        let foreign_acks = std::mem::take(&mut old.foreign_acks);
        let mut log = log_from(&self.config, now, snapshot);
        log.reannounce = reannounce;
        log.foreign_acks = foreign_acks;
        let frame = wire::room_reset(name, &log.epoch, log.head, now);
        let epoch = log.epoch.clone();
        room.state = RoomState::Open(log);
        let members: Vec<ConnId> = room.members.iter().copied().collect();
        for conn in members {
            self.send(conn, frame.clone(), FrameKind::Live);
        }
        for msg in ahead.into_values().filter(|m| m.epoch == epoch) {
            self.accept(name, msg);
        }
    }

    fn on_room_open_failed(&mut self, name: &RoomName) {
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        let (waiting, readers) = match &mut room.state {
            RoomState::Opening {
                waiting, readers, ..
            } => (std::mem::take(waiting), std::mem::take(readers)),
            RoomState::Open(log) => {
                // A failed resync: the next gap asks again.
                log.resyncing = false;
                return;
            }
        };
        self.rooms.remove(name);
        for read in readers {
            self.out.push_back(Output::ApiAnswered {
                ticket: read.ticket,
                answer: crate::api::ApiAnswer::Unavailable,
            });
        }
        for wait in waiting {
            let Some(conn) = self.conns.get_mut(&wait.conn) else {
                continue;
            };
            conn.waiting_for = None;
            self.send_error(
                wait.conn,
                wait.request_id.as_deref(),
                ErrorCode::Unavailable,
                "the room cannot be opened now; retry",
            );
            self.run_deferred(wait.conn);
        }
    }

    // ---- sending ----

    fn send(&mut self, conn: ConnId, frame: Bytes, kind: FrameKind) {
        self.out.push_back(Output::Send { conn, frame, kind });
    }

    fn broadcast(
        &mut self,
        name: &RoomName,
        except: Option<ConnId>,
        frame: &Bytes,
        kind: FrameKind,
    ) {
        if let Some(room) = self.rooms.get(name) {
            fan_out(&mut self.out, &room.members, except, frame, kind);
        }
    }

    fn ack(
        &mut self,
        conn: ConnId,
        req_id: Option<&str>,
        room: Option<&RoomName>,
        sent: Option<(&str, Option<u64>)>,
    ) {
        if let Some(req_id) = req_id
            && self.conns.contains_key(&conn)
        {
            let frame = wire::ack(req_id, room, sent, self.now);
            self.send(conn, frame, FrameKind::Live);
        }
    }

    fn reply_error(&mut self, conn: ConnId, e: RequestError) {
        self.send_error(conn, e.id.as_deref(), e.code, &e.message);
    }

    fn send_error(&mut self, conn: ConnId, req_id: Option<&str>, code: ErrorCode, message: &str) {
        if self.conns.contains_key(&conn) {
            if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
                self.errors_sent[i] += 1;
            }
            let frame = wire::error(req_id, code, message, self.now);
            self.send(conn, frame, FrameKind::Live);
        }
    }
}

/// The fan-out loop: one pointer clone of the same bytes per recipient.
fn fan_out(
    out: &mut VecDeque<Output>,
    members: &indexmap::IndexSet<ConnId, rustc_hash::FxBuildHasher>,
    except: Option<ConnId>,
    frame: &Bytes,
    kind: FrameKind,
) {
    out.reserve(members.len());
    for &conn in members {
        if Some(conn) != except {
            out.push_back(Output::Send {
                conn,
                frame: frame.clone(),
                kind,
            });
        }
    }
}

/// Builds a room's log from its sequencer's snapshot.
fn log_from(config: &Config, now: Timestamp, snapshot: RoomSnapshot) -> RoomLog {
    let first = snapshot
        .messages
        .first()
        .map_or(snapshot.head + 1, |m| m.offset);
    let (max_messages, max_age) = config.history_of(snapshot.room.as_str());
    let mut log = RoomLog::new(snapshot.epoch, first.saturating_sub(1));
    for msg in &snapshot.messages {
        if msg.offset != log.head + 1 {
            // A snapshot with a hole: keep only what follows it.
            log.restart_at(msg.offset.saturating_sub(1));
        }
        log.push(
            Logged {
                offset: msg.offset,
                timestamp: msg.timestamp,
                frame: wire::new_message(msg),
                sender: msg
                    .origin
                    .as_ref()
                    .filter(|o| o.node == config.node_id)
                    .map(|o| o.conn),
            },
            max_messages,
        );
    }
    if log.head < snapshot.head {
        log.restart_at(snapshot.head);
    }
    log.opened_head = log.head;
    log.trim_by_age(now, max_age);
    log
}

#[path = "hub_api.rs"]
mod api;
#[path = "hub_hooks.rs"]
mod hooks;
#[path = "hub_refresh.rs"]
mod refresh;

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
