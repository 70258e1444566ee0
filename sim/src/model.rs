//! A deliberately simple reference model of roomhub's rules: who is in which
//! room, who receives what, and what each request is answered with. It keeps
//! everything in ordered maps and recomputes instead of caching, so it is easy
//! to believe; the real hub is checked against it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// A frame as the model predicts it: the meaning without timestamps, ids the
/// server invents, or list orders the protocol leaves open.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seen {
    RoomInfo {
        room: String,
        users: Vec<String>,
        offset: u64,
        recovered: Option<bool>,
    },
    Joined {
        room: String,
        user: String,
    },
    Left {
        room: String,
        user: String,
    },
    Message {
        room: String,
        offset: u64,
        sender: String,
        content: String,
    },
    Typing {
        room: String,
        sender: String,
        typing: bool,
    },
    Online {
        room: String,
        users: Vec<String>,
    },
    Direct {
        sender: String,
        content: String,
    },
    Ack {
        id: String,
        offset: Option<u64>,
    },
    Error {
        id: Option<String>,
        code: String,
    },
    Closed(u16),
    /// A frame the normalizer did not understand: always a mismatch.
    Unexpected(String),
}

impl Seen {
    /// Reads a server frame into its meaning.
    pub fn from_frame(v: &Value) -> Seen {
        let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
        let users = |v: &Value| {
            let mut u: Vec<String> = v
                .as_array()
                .map(|a| a.iter().map(|u| s(&u["id"])).collect())
                .unwrap_or_default();
            u.sort();
            u
        };
        let p = &v["payload"];
        match v["type"].as_str().unwrap_or("") {
            "room_info" => Seen::RoomInfo {
                room: s(&p["room_id"]),
                users: users(&p["users"]),
                offset: p["offset"].as_u64().unwrap_or(u64::MAX),
                recovered: p["recovered"].as_bool(),
            },
            "user_joined" => Seen::Joined {
                room: s(&v["room"]),
                user: s(&p["id"]),
            },
            "user_left" => Seen::Left {
                room: s(&v["room"]),
                user: s(&p["id"]),
            },
            "new_message" => Seen::Message {
                room: s(&v["room"]),
                offset: v["offset"].as_u64().unwrap_or(u64::MAX),
                sender: s(&v["sender"]["id"]),
                content: s(&p["content"]),
            },
            "user_typing" => Seen::Typing {
                room: s(&v["room"]),
                sender: s(&v["sender"]["id"]),
                typing: p["typing"].as_bool().unwrap_or(false),
            },
            "online_users" => Seen::Online {
                room: s(&p["room_id"]),
                users: users(&p["users"]),
            },
            "direct_message" => Seen::Direct {
                sender: s(&v["sender"]["id"]),
                content: s(&p["content"]),
            },
            "ack" => Seen::Ack {
                id: s(&v["id"]),
                offset: p["offset"].as_u64(),
            },
            "error" => Seen::Error {
                id: v["id"].as_str().map(str::to_string),
                code: s(&p["code"]),
            },
            _ => Seen::Unexpected(v.to_string()),
        }
    }
}

#[derive(Clone, Debug)]
struct ModelConn {
    user: String,
    rooms: BTreeSet<String>,
    last_seen_ms: u64,
}

#[derive(Clone, Debug, Default)]
struct ModelRoom {
    members: BTreeSet<u64>,
    /// (sending connection, sender, content) at offset index + 1. Never
    /// trimmed: the model test stays well inside the history limits.
    history: Vec<(u64, String, String)>,
}

/// What every connection should receive in one step.
pub type Expected = BTreeMap<u64, Vec<Seen>>;

#[derive(Clone, Debug)]
pub struct Model {
    conns: BTreeMap<u64, ModelConn>,
    rooms: BTreeMap<String, ModelRoom>,
    now_ms: u64,
    pub max_rooms_per_connection: usize,
    pub pong_wait_ms: u64,
}

impl Model {
    pub fn new(max_rooms_per_connection: usize, pong_wait_ms: u64) -> Self {
        Model {
            conns: BTreeMap::new(),
            rooms: BTreeMap::new(),
            now_ms: 0,
            max_rooms_per_connection,
            pong_wait_ms,
        }
    }

    pub fn is_alive(&self, conn: u64) -> bool {
        self.conns.contains_key(&conn)
    }

    pub fn connections(&self) -> impl Iterator<Item = u64> + '_ {
        self.conns.keys().copied()
    }

    /// Rooms a live connection has joined.
    pub fn rooms_of(&self, conn: u64) -> Vec<String> {
        self.conns
            .get(&conn)
            .map(|c| c.rooms.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Users present in each room that has members.
    pub fn presence(&self) -> BTreeMap<String, Vec<String>> {
        self.rooms
            .iter()
            .filter(|(_, r)| !r.members.is_empty())
            .map(|(name, _)| (name.clone(), self.users_in(name)))
            .collect()
    }

    pub fn head(&self, room: &str) -> u64 {
        self.rooms.get(room).map_or(0, |r| r.history.len() as u64)
    }

    fn users_in(&self, room: &str) -> Vec<String> {
        let members = self
            .rooms
            .get(room)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        let users: BTreeSet<String> = members.iter().map(|c| self.conns[c].user.clone()).collect();
        users.into_iter().collect()
    }

    fn user_present(&self, room: &str, user: &str, except: u64) -> bool {
        self.rooms.get(room).is_some_and(|r| {
            r.members
                .iter()
                .any(|c| *c != except && self.conns[c].user == user)
        })
    }

    fn to_members(&self, out: &mut Expected, room: &str, except: Option<u64>, seen: &Seen) {
        if let Some(r) = self.rooms.get(room) {
            for m in &r.members {
                if Some(*m) != except {
                    out.entry(*m).or_default().push(seen.clone());
                }
            }
        }
    }

    fn touch(&mut self, conn: u64) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.last_seen_ms = self.now_ms;
        }
    }

    pub fn connect(&mut self, conn: u64, user: &str) {
        self.conns.insert(
            conn,
            ModelConn {
                user: user.to_string(),
                rooms: BTreeSet::new(),
                last_seen_ms: self.now_ms,
            },
        );
    }

    fn error(out: &mut Expected, conn: u64, id: &str, code: &str) {
        out.entry(conn).or_default().push(Seen::Error {
            id: Some(id.to_string()),
            code: code.to_string(),
        });
    }

    fn ack(out: &mut Expected, conn: u64, id: &str, offset: Option<u64>) {
        out.entry(conn).or_default().push(Seen::Ack {
            id: id.to_string(),
            offset,
        });
    }

    /// `join_room`, optionally with `since` = the room's head minus `back`.
    pub fn join(&mut self, conn: u64, room: &str, since_back: Option<u64>, id: &str) -> Expected {
        let mut out = Expected::new();
        if !self.is_alive(conn) {
            return out;
        }
        self.touch(conn);
        let c = &self.conns[&conn];
        let already = c.rooms.contains(room);
        if !already && c.rooms.len() >= self.max_rooms_per_connection {
            Self::error(&mut out, conn, id, "TOO_MANY_ROOMS");
            return out;
        }
        let user = c.user.clone();
        if !already {
            if !self.user_present(room, &user, conn) {
                let joined = Seen::Joined {
                    room: room.to_string(),
                    user: user.clone(),
                };
                self.to_members(&mut out, room, Some(conn), &joined);
            }
            self.rooms
                .entry(room.to_string())
                .or_default()
                .members
                .insert(conn);
            self.conns
                .get_mut(&conn)
                .expect("alive")
                .rooms
                .insert(room.to_string());
        }
        let head = self.head(room);
        let recovered = since_back.map(|back| {
            let since = head.saturating_sub(back);
            let history = &self.rooms[room].history;
            for offset in since + 1..=head {
                let (from, sender, content) = &history[(offset - 1) as usize];
                if *from == conn {
                    // Never the connection that sent it, replayed or not.
                    continue;
                }
                out.entry(conn).or_default().push(Seen::Message {
                    room: room.to_string(),
                    offset,
                    sender: sender.clone(),
                    content: content.clone(),
                });
            }
            true
        });
        out.entry(conn).or_default().push(Seen::RoomInfo {
            room: room.to_string(),
            users: self.users_in(room),
            offset: head,
            recovered,
        });
        Self::ack(&mut out, conn, id, None);
        out
    }

    fn remove_member(&mut self, out: &mut Expected, conn: u64, room: &str) {
        let user = self.conns[&conn].user.clone();
        if let Some(r) = self.rooms.get_mut(room) {
            r.members.remove(&conn);
        }
        if !self.user_present(room, &user, conn) {
            let left = Seen::Left {
                room: room.to_string(),
                user,
            };
            self.to_members(out, room, None, &left);
        }
    }

    /// The common start of requests that need membership: nothing for a
    /// dead connection, `NOT_IN_ROOM` for a non-member, else go ahead.
    fn member_request(&mut self, conn: u64, room: &str, id: &str) -> Result<Expected, Expected> {
        let mut out = Expected::new();
        if !self.is_alive(conn) {
            return Err(out);
        }
        self.touch(conn);
        if !self.conns[&conn].rooms.contains(room) {
            Self::error(&mut out, conn, id, "NOT_IN_ROOM");
            return Err(out);
        }
        Ok(out)
    }

    pub fn leave(&mut self, conn: u64, room: &str, id: &str) -> Expected {
        let mut out = match self.member_request(conn, room, id) {
            Ok(out) => out,
            Err(refused) => return refused,
        };
        self.conns.get_mut(&conn).expect("alive").rooms.remove(room);
        self.remove_member(&mut out, conn, room);
        Self::ack(&mut out, conn, id, None);
        out
    }

    pub fn send(&mut self, conn: u64, room: &str, content: &str, id: &str) -> Expected {
        let mut out = match self.member_request(conn, room, id) {
            Ok(out) => out,
            Err(refused) => return refused,
        };
        let sender = self.conns[&conn].user.clone();
        let r = self.rooms.get_mut(room).expect("member implies room");
        r.history.push((conn, sender.clone(), content.to_string()));
        let offset = r.history.len() as u64;
        let msg = Seen::Message {
            room: room.to_string(),
            offset,
            sender,
            content: content.to_string(),
        };
        self.to_members(&mut out, room, Some(conn), &msg);
        Self::ack(&mut out, conn, id, Some(offset));
        out
    }

    pub fn typing(&mut self, conn: u64, room: &str, typing: bool, id: &str) -> Expected {
        let mut out = match self.member_request(conn, room, id) {
            Ok(out) => out,
            Err(refused) => return refused,
        };
        let seen = Seen::Typing {
            room: room.to_string(),
            sender: self.conns[&conn].user.clone(),
            typing,
        };
        self.to_members(&mut out, room, Some(conn), &seen);
        Self::ack(&mut out, conn, id, None);
        out
    }

    pub fn online(&mut self, conn: u64, room: &str, id: &str) -> Expected {
        let mut out = match self.member_request(conn, room, id) {
            Ok(out) => out,
            Err(refused) => return refused,
        };
        out.entry(conn).or_default().push(Seen::Online {
            room: room.to_string(),
            users: self.users_in(room),
        });
        Self::ack(&mut out, conn, id, None);
        out
    }

    pub fn direct(&mut self, conn: u64, to: &str, content: &str, id: &str) -> Expected {
        let mut out = Expected::new();
        if !self.is_alive(conn) {
            return out;
        }
        self.touch(conn);
        let recipients: Vec<u64> = self
            .conns
            .iter()
            .filter(|(c, mc)| **c != conn && mc.user == to)
            .map(|(c, _)| *c)
            .collect();
        if recipients.is_empty() {
            Self::error(&mut out, conn, id, "RECIPIENT_OFFLINE");
            return out;
        }
        let seen = Seen::Direct {
            sender: self.conns[&conn].user.clone(),
            content: content.to_string(),
        };
        for r in recipients {
            out.entry(r).or_default().push(seen.clone());
        }
        Self::ack(&mut out, conn, id, None);
        out
    }

    /// The connection goes away (closed by the peer, or by the server with
    /// `code`); its user leaves rooms where it was their last connection.
    pub fn drop_conn(&mut self, conn: u64, code: Option<u16>) -> Expected {
        let mut out = Expected::new();
        let Some(c) = self.conns.get(&conn).cloned() else {
            return out;
        };
        for room in &c.rooms {
            self.remove_member(&mut out, conn, room);
        }
        self.conns.remove(&conn);
        if let Some(code) = code {
            out.entry(conn).or_default().push(Seen::Closed(code));
        }
        out
    }

    pub fn activity(&mut self, conn: u64) {
        self.touch(conn);
    }

    /// Time passes; silent connections past the pong wait are closed. The
    /// returned connections were closed in this step (their frames from the
    /// step are not compared: they are going away).
    pub fn advance(&mut self, ms: u64) -> (Expected, BTreeSet<u64>) {
        self.now_ms += ms;
        let silent: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| self.now_ms - c.last_seen_ms >= self.pong_wait_ms)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Expected::new();
        for conn in &silent {
            for (k, v) in self.drop_conn(*conn, Some(4001)) {
                out.entry(k).or_default().extend(v);
            }
        }
        (out, silent.into_iter().collect())
    }
}
