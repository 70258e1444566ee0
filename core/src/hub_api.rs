//! The server API's calls on this node: commands on a user's connections
//! (disconnect, subscribe, unsubscribe) and what the node holds (presence,
//! rooms, counts).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Hub;
use crate::api::{ApiAnswer, ApiCall, PresentUser, RoomMembers, UserConnection, room_matches};
use crate::event::Output;
use crate::ids::{ConnId, RoomName};
use crate::room::{HistoryRead, Room, RoomState};

impl Hub {
    /// Answers a server API call: at once, or for `history` of a room not
    /// open here, once its sequencer has handed over its log.
    pub(super) fn api(&mut self, ticket: u64, call: ApiCall) {
        if let ApiCall::History {
            room,
            limit,
            before,
        } = call
        {
            let read = HistoryRead {
                ticket,
                limit,
                before,
            };
            match self.rooms.get_mut(&room).map(|r| &mut r.state) {
                Some(RoomState::Open(_)) => self.answer_readers(&room, vec![read]),
                Some(RoomState::Opening { readers, .. }) => readers.push(read),
                None => {
                    self.rooms.insert(room.clone(), Room::opening_to_read(read));
                    self.out.push_back(Output::OpenRoom { room, after: None });
                }
            }
            return;
        }
        if let ApiCall::HistoryRemove { room } = call {
            return self.out.push_back(Output::EndLineage { room, ticket });
        }
        let answer = self.on_api(call);
        self.out.push_back(Output::ApiAnswered { ticket, answer });
    }

    /// Answers `history` calls from an open room's log.
    pub(super) fn answer_readers(&mut self, name: &RoomName, readers: Vec<HistoryRead>) {
        let (now, (_, max_age)) = (self.now, self.config.history_of(name.as_str()));
        let Some(RoomState::Open(log)) = self.rooms.get_mut(name).map(|r| &mut r.state) else {
            return;
        };
        let mut answers = Vec::with_capacity(readers.len());
        for read in readers {
            let (frames, has_more) = log.page_at(now, max_age, read.before, read.limit);
            let answer = ApiAnswer::History {
                epoch: log.epoch.as_str().to_string(),
                offset: log.head,
                messages: frames
                    .iter()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect(),
                has_more,
            };
            answers.push(Output::ApiAnswered {
                ticket: read.ticket,
                answer,
            });
        }
        self.out.extend(answers);
    }

    pub(super) fn on_api(&mut self, call: ApiCall) -> ApiAnswer {
        match call {
            ApiCall::Disconnect { user, code, reason } => {
                let conns = self.conns_of(&user);
                let reason: std::borrow::Cow<'static, str> = match reason {
                    Some(r) => r.to_string().into(),
                    None => "disconnected by the server".into(),
                };
                for &id in &conns {
                    self.close(id, code, reason.clone());
                }
                ApiAnswer::Connections {
                    connections: conns.len(),
                }
            }
            ApiCall::Subscribe { user, room } => {
                let conns = self.conns_of(&user);
                let mut reached = 0;
                for id in conns {
                    if self.subscribe(id, &room) {
                        reached += 1;
                    }
                }
                ApiAnswer::Connections {
                    connections: reached,
                }
            }
            ApiCall::Unsubscribe { user, room } => {
                let conns = self.conns_of(&user);
                let mut reached = 0;
                for id in conns {
                    let Some(conn) = self.conns.get_mut(&id) else {
                        continue;
                    };
                    conn.granted.retain(|r| *r != room);
                    if conn.rooms.contains(&room) {
                        reached += 1;
                        self.take_out_of(id, &room, "unsubscribed");
                    }
                }
                ApiAnswer::Connections {
                    connections: reached,
                }
            }
            ApiCall::Presence { room } => ApiAnswer::Presence {
                users: self.present_users(&room),
            },
            ApiCall::Rooms { pattern } => ApiAnswer::Rooms {
                rooms: self.rooms_with_members(pattern.as_deref()),
            },
            // `api` answers these (from the room's log once open; once the
            // sequencer has ended the lineage); never here.
            ApiCall::History { .. } | ApiCall::HistoryRemove { .. } => ApiAnswer::Unavailable,
            ApiCall::ResetRoom { room } => {
                let members = self.rooms.get(&room).map_or(0, |r| r.members.len());
                self.request_resync(&room);
                ApiAnswer::Connections {
                    connections: members,
                }
            }
            ApiCall::User { user } => ApiAnswer::User {
                connections: self
                    .conns_of(&user)
                    .into_iter()
                    .filter_map(|id| {
                        self.conns.get(&id).map(|c| UserConnection {
                            conn: id.0,
                            rooms: c.rooms.clone(),
                        })
                    })
                    .collect(),
            },
            ApiCall::Info => ApiAnswer::Info {
                connections: self.conns.len(),
                users: self.user_conns.keys().cloned().collect(),
                rooms: self
                    .rooms
                    .values()
                    .filter(|r| !r.members.is_empty())
                    .count(),
            },
        }
    }

    fn conns_of(&self, user: &str) -> Vec<ConnId> {
        self.user_conns.get(user).cloned().unwrap_or_default()
    }

    /// Joins `id` to `room` for the backend (no `id`, so no `ack`; the
    /// usual `room_info`, and `user_joined` to the others). False when it
    /// cannot: already in (or joining) the room, or at the room limit.
    fn subscribe(&mut self, id: ConnId, room: &RoomName) -> bool {
        let Some(conn) = self.conns.get_mut(&id) else {
            return false;
        };
        if !conn.granted.contains(room) {
            conn.granted.push(room.clone());
        }
        if conn.rooms.contains(room) || conn.waiting_for.as_ref() == Some(room) {
            return false;
        }
        if conn.rooms.len() >= self.config.max_rooms_per_connection {
            return false;
        }
        if conn.waiting_for.is_some() || conn.leave_waits {
            // Queued behind the connection's own pending requests, in order.
            let request = crate::request::Request {
                id: None,
                kind: crate::request::RequestKind::Join {
                    room: room.clone(),
                    since: None,
                },
            };
            conn.deferred.push_back(request);
            return true;
        }
        self.join(id, None, room.clone(), None);
        true
    }

    fn present_users(&self, room: &RoomName) -> Vec<PresentUser> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        r.users
            .values()
            .map(|p| PresentUser {
                user: p.user.clone(),
                connections: p.connections as usize,
            })
            .collect()
    }

    fn rooms_with_members(&self, pattern: Option<&str>) -> Vec<RoomMembers> {
        let mut out: BTreeMap<RoomName, RoomMembers> = BTreeMap::new();
        for (name, r) in &self.rooms {
            if r.members.is_empty()
                || !matches!(r.state, RoomState::Open(_))
                || !room_matches(pattern, name.as_str())
            {
                continue;
            }
            out.insert(
                name.clone(),
                RoomMembers {
                    room: name.clone(),
                    users: r.users.keys().cloned().collect::<Vec<Arc<str>>>(),
                    connections: r.members.len(),
                },
            );
        }
        out.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::api::{ApiAnswer, ApiCall};
    use crate::config::Config;
    use crate::event::Input;
    use crate::ids::{Identity, RoomAccess, RoomName};
    use crate::testkit::TestWorld;

    fn room(name: &str) -> RoomName {
        RoomName::parse(name, 64).unwrap()
    }

    fn api(w: &mut TestWorld, call: ApiCall) {
        w.input(Input::Api { ticket: 1, call });
    }

    #[test]
    fn subscribe_and_unsubscribe_every_connection_of_a_user() {
        let mut w = TestWorld::new(Config::default());
        let only_a = Identity {
            rooms: Some(RoomAccess::new(["a"])),
            ..Identity::user("alice")
        };
        let a1 = w.connect_as("alice#1", only_a.clone());
        let a2 = w.connect_as("alice#2", only_a);
        let b = w.connect("bob");
        w.send_json(b, json!({"type": "join_room", "room": "vip"}));
        w.take_all();
        // Outside alice's claim: the backend's word is enough.
        api(
            &mut w,
            ApiCall::Subscribe {
                user: "alice".into(),
                room: room("vip"),
            },
        );
        for c in [a1, a2] {
            let f = w.take(c);
            assert_eq!(f[0]["type"], "room_info", "{f:?}");
            assert_eq!(f[0]["payload"]["room_id"], "vip");
            assert!(f.iter().all(|f| f["type"] != "ack"));
        }
        assert_eq!(w.take(b).len(), 1, "one user_joined for alice");
        let answer = w.node.hub.room_connections("vip").len();
        assert_eq!(answer, 3);
        // A refresh of the token would not take it away; unsubscribe does.
        api(
            &mut w,
            ApiCall::Unsubscribe {
                user: "alice".into(),
                room: room("vip"),
            },
        );
        for c in [a1, a2] {
            let f = w.take(c);
            assert_eq!(f[0]["type"], "room_left");
            assert_eq!(f[0]["payload"]["reason"], "unsubscribed");
        }
        let to_bob = w.take(b);
        assert_eq!(to_bob.len(), 1);
        assert_eq!(to_bob[0]["type"], "user_left");
        w.send_json(a1, json!({"type": "join_room", "room": "vip", "id": "j"}));
        assert_eq!(w.take(a1)[0]["payload"]["code"], "FORBIDDEN");
        // Nobody to reach: an empty answer, not an error.
        let mut hub = crate::hub::Hub::new(Config::default());
        let answer = hub.on_api(ApiCall::Subscribe {
            user: "nobody".into(),
            room: room("vip"),
        });
        assert_eq!(answer, ApiAnswer::Connections { connections: 0 });
    }

    #[test]
    fn disconnect_closes_every_connection_of_a_user_with_the_code() {
        let mut w = TestWorld::new(Config::default());
        let a1 = w.connect("alice");
        let a2 = w.connect("alice");
        let b = w.connect("bob");
        for c in [a1, a2, b] {
            w.send_json(c, json!({"type": "join_room", "room": "g"}));
        }
        w.take_all();
        api(
            &mut w,
            ApiCall::Disconnect {
                user: "alice".into(),
                code: 4100,
                reason: Some("banned".into()),
            },
        );
        for c in [a1, a2] {
            assert_eq!(w.closed.get(&c), Some(&(4100, "banned".to_string())));
        }
        assert!(!w.closed.contains_key(&b));
        let to_bob = w.take(b);
        assert_eq!(to_bob.len(), 1);
        assert_eq!(to_bob[0]["type"], "user_left");
        assert_eq!(w.node.hub.room_connections("g"), [b]);
    }

    #[test]
    fn presence_rooms_and_info_describe_this_node() {
        let mut w = TestWorld::new(Config::default());
        let a1 = w.connect("alice");
        let a2 = w.connect("alice");
        let b = w.connect("bob");
        for (c, r) in [(a1, "team-1"), (a2, "team-1"), (b, "team-1"), (b, "lobby")] {
            w.send_json(c, json!({"type": "join_room", "room": r}));
        }
        let hub = &mut w.node.hub;
        let ApiAnswer::Presence { users } = hub.on_api(ApiCall::Presence {
            room: room("team-1"),
        }) else {
            panic!()
        };
        let mut counts: Vec<(String, usize)> = users
            .iter()
            .map(|u| (u.user.id.to_string(), u.connections))
            .collect();
        counts.sort();
        assert_eq!(counts, [("alice".to_string(), 2), ("bob".to_string(), 1)]);
        assert_eq!(
            hub.on_api(ApiCall::Presence {
                room: room("nowhere")
            }),
            ApiAnswer::Presence { users: vec![] }
        );
        let ApiAnswer::Rooms { rooms } = hub.on_api(ApiCall::Rooms {
            pattern: Some("team-*".into()),
        }) else {
            panic!()
        };
        assert_eq!(rooms.len(), 1);
        assert_eq!(
            (
                rooms[0].room.as_str(),
                rooms[0].users.len(),
                rooms[0].connections
            ),
            ("team-1", 2, 3)
        );
        let ApiAnswer::Rooms { rooms } = hub.on_api(ApiCall::Rooms { pattern: None }) else {
            panic!()
        };
        assert_eq!(rooms.len(), 2);
        let ApiAnswer::Info {
            connections,
            users,
            rooms,
        } = hub.on_api(ApiCall::Info)
        else {
            panic!()
        };
        assert_eq!((connections, users.len(), rooms), (3, 2, 2));
        let ApiAnswer::User { connections } = hub.on_api(ApiCall::User { user: "bob".into() })
        else {
            panic!()
        };
        assert_eq!(connections.len(), 1);
        assert_eq!(connections[0].conn, b.0);
        let rooms: Vec<&str> = connections[0].rooms.iter().map(|r| r.as_str()).collect();
        assert_eq!(rooms, ["team-1", "lobby"]);
        assert_eq!(
            hub.on_api(ApiCall::User {
                user: "nobody".into()
            }),
            ApiAnswer::User {
                connections: vec![]
            }
        );
    }
}
