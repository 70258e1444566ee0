//! Bugs planted on purpose, to prove the checker catches them. Each is a
//! [`Core`] wrapped around the real [`Hub`]: it changes what goes in or
//! comes out at one point, the way the defect would, and the world runs the
//! real server with it. Nothing of this is in `roomhub-core` or the
//! `roomhub` binary.

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;
use roomhub_core::{
    Config, ConnId, Core, ErrorCode, FrameKind, Hub, Input, Output, ParseLimits, RequestKind,
    Timestamp, UserRef, parse_request, wire,
};
use rustc_hash::FxHashMap;
use serde_json::Value;

/// A deliberate defect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PlantedBug {
    /// `new_message` also goes to the connection that sent it.
    DeliverToSender,
    /// `typing` skips the membership check.
    TypingWithoutMembership,
    /// A dropped connection stays in its rooms' membership and presence.
    KeepPresenceOnDisconnect,
    /// Recovery replays from `since.offset` instead of `since.offset + 1`.
    ReplayOffByOne,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 4] = [
        PlantedBug::DeliverToSender,
        PlantedBug::TypingWithoutMembership,
        PlantedBug::KeepPresenceOnDisconnect,
        PlantedBug::ReplayOffByOne,
    ];
}

/// The hub with one defect planted.
pub struct Planted {
    bug: PlantedBug,
    hub: Hub,
    limits: ParseLimits,
    /// Each connection's user, for frames the defect makes up.
    users: FxHashMap<ConnId, UserRef>,
    /// Connections gone that the hub was never told of, kept alive.
    ghosts: BTreeSet<ConnId>,
    out: VecDeque<Output>,
}

impl Planted {
    pub fn new(bug: PlantedBug, config: Config) -> Self {
        Planted {
            bug,
            limits: ParseLimits::from(&config),
            hub: Hub::new(config),
            users: FxHashMap::default(),
            ghosts: BTreeSet::new(),
            out: VecDeque::new(),
        }
    }

    /// Takes what the hub said about `input` into our queue.
    fn take_outputs(&mut self) {
        while let Some(out) = self.hub.poll_output() {
            if let Output::Close { conn, .. } = &out {
                self.ghosts.remove(conn);
            }
            self.out.push_back(out);
        }
    }

    /// `join_room` with `since`: ask for one message too many.
    fn replay_one_more(frame: &Bytes) -> Option<Bytes> {
        let mut v: Value = serde_json::from_slice(frame).ok()?;
        let offset = v.pointer_mut("/payload/since/offset")?;
        let n = offset.as_u64()?;
        *offset = Value::from(n.saturating_sub(1));
        serde_json::to_vec(&v).ok().map(Bytes::from)
    }
}

impl Core for Planted {
    fn handle(&mut self, input: Input, now: Timestamp) {
        // A ghost answers every ping, as far as the hub can tell.
        for conn in self.ghosts.clone() {
            self.hub.handle(Input::Activity { conn }, now);
        }
        match (self.bug, input) {
            (_, Input::Connected { conn, identity }) => {
                self.users.insert(conn, identity.user.clone());
                self.hub.handle(Input::Connected { conn, identity }, now);
            }
            (PlantedBug::KeepPresenceOnDisconnect, Input::Disconnected { conn }) => {
                // The hub never hears of it: memberships and presence stay.
                self.ghosts.insert(conn);
            }
            (PlantedBug::ReplayOffByOne, Input::Text { conn, frame }) => {
                let frame = Planted::replay_one_more(&frame).unwrap_or(frame);
                self.hub.handle(Input::Text { conn, frame }, now);
            }
            (PlantedBug::TypingWithoutMembership, Input::Text { conn, frame }) => {
                let typing = parse_request(&frame, &self.limits)
                    .ok()
                    .and_then(|r| match r.kind {
                        RequestKind::Typing { room, typing } => Some((room, typing, r.id)),
                        _ => None,
                    })
                    .filter(|(room, _, _)| !self.hub.rooms_of(conn).contains(room));
                self.hub.handle(Input::Text { conn, frame }, now);
                self.take_outputs();
                if let (Some((room, typing, id)), Some(user)) = (typing, self.users.get(&conn)) {
                    // In place of NOT_IN_ROOM, the members see the typing
                    // and the sender gets its ack.
                    self.out
                        .retain(|o| !is_error_to(o, conn, ErrorCode::NotInRoom));
                    let frame = wire::user_typing(&room, user, typing, now);
                    for member in self.hub.room_connections(room.as_str()) {
                        self.out.push_back(Output::Send {
                            conn: member,
                            frame: frame.clone(),
                            kind: FrameKind::Ephemeral,
                        });
                    }
                    if let Some(id) = id {
                        self.out.push_back(Output::Send {
                            conn,
                            frame: wire::ack(&id, Some(&room), None, now),
                            kind: FrameKind::Live,
                        });
                    }
                }
            }
            (PlantedBug::DeliverToSender, Input::Sequenced(msg)) => {
                let node = self.hub.config().node_id;
                let sender = msg
                    .origin
                    .as_ref()
                    .filter(|o| o.node == node)
                    .map(|o| o.conn)
                    .filter(|conn| self.hub.rooms_of(*conn).contains(&msg.room));
                let frame = wire::new_message(&msg);
                self.hub.handle(Input::Sequenced(msg), now);
                self.take_outputs();
                if let Some(conn) = sender {
                    self.out.push_back(Output::Send {
                        conn,
                        frame,
                        kind: FrameKind::Live,
                    });
                }
            }
            (_, input) => self.hub.handle(input, now),
        }
        self.take_outputs();
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        self.hub.poll_timeout()
    }

    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// An `error` frame with `code` for `conn`.
fn is_error_to(out: &Output, to: ConnId, code: ErrorCode) -> bool {
    match out {
        Output::Send { conn, frame, .. } if *conn == to => serde_json::from_slice::<Value>(frame)
            .is_ok_and(|v| v["type"] == "error" && v["payload"]["code"] == code.as_str()),
        _ => false,
    }
}
