//! The clients of an in-memory cluster: each has at most one live session
//! on one node, sends real protocol frames, remembers where each room's
//! history stands (for `since` after a reconnect), and writes what it sends
//! and sees to the trace the invariant checker reads.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use roomhub_core::{ConnId, Input};
use serde_json::{Value, json};

use crate::memcluster::cluster::{Cluster, ToClient};
use crate::positions::Positions;
use crate::trace::{Event, Record, SessionId};

struct Client {
    user: String,
    session: u32,
    /// The live session's connection and node.
    live: Option<(ConnId, usize)>,
    /// Rooms joined (as of the last `room_info` and leave ack), rejoined
    /// with `since` after a reconnect.
    rooms: BTreeSet<String>,
    seen: Positions,
    /// Leave requests waiting for their ack: id -> room.
    leaving: BTreeMap<String, String>,
    next_request: u64,
    next_message: u64,
}

pub struct Clients {
    clients: Vec<Client>,
    by_conn: BTreeMap<ConnId, usize>,
    next_conn: u64,
    start_ms: u64,
    pub records: Vec<Record>,
}

impl Clients {
    /// `users[i]` is client `i`'s user (two clients may share one).
    pub fn new(users: Vec<String>, start_ms: u64) -> Self {
        let clients = users
            .into_iter()
            .map(|user| Client {
                user,
                session: 0,
                live: None,
                rooms: BTreeSet::new(),
                seen: Positions::default(),
                leaving: BTreeMap::new(),
                next_request: 0,
                next_message: 0,
            })
            .collect();
        Clients {
            clients,
            by_conn: BTreeMap::new(),
            next_conn: 1,
            start_ms,
            records: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Live sessions.
    pub fn online(&self) -> u64 {
        self.clients.iter().filter(|c| c.live.is_some()).count() as u64
    }

    fn record(&mut self, cluster: &Cluster, client: usize, event: Event) {
        let session: SessionId = (client, self.clients[client].session);
        self.records.push(Record {
            at_ms: cluster.now.as_millis() - self.start_ms,
            session,
            event,
        });
    }

    /// A new session on `node` (dropping a live one first), rejoining every
    /// room with `since`.
    pub fn connect(&mut self, cluster: &mut Cluster, client: usize, node: usize) {
        self.drop_session(cluster, client, "reconnect");
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let c = &mut self.clients[client];
        c.session += 1;
        c.live = Some((conn, node));
        c.leaving.clear();
        let user = c.user.clone();
        self.by_conn.insert(conn, client);
        let server = cluster.nodes[node].name.clone();
        self.record(
            cluster,
            client,
            Event::Connected {
                user: user.clone(),
                server,
            },
        );
        cluster.connect(node, conn, &user);
        self.pump(cluster);
        let rooms: Vec<String> = self.clients[client].rooms.iter().cloned().collect();
        for room in rooms {
            let mut frame = json!({"type": "join_room", "room": room});
            if let Some(since) = self.clients[client].seen.since(&room) {
                frame["payload"] = json!({ "since": since });
            }
            self.request(cluster, client, frame);
        }
    }

    /// The client drops its connection without a close frame.
    pub fn drop_session(&mut self, cluster: &mut Cluster, client: usize, why: &'static str) {
        let Some((conn, node)) = self.clients[client].live.take() else {
            return;
        };
        self.by_conn.remove(&conn);
        self.record(cluster, client, Event::Dropped { why });
        cluster.feed(node, Input::Disconnected { conn });
        self.pump(cluster);
    }

    pub fn join(&mut self, cluster: &mut Cluster, client: usize, room: &str) {
        self.request(cluster, client, json!({"type": "join_room", "room": room}));
    }

    pub fn leave(&mut self, cluster: &mut Cluster, client: usize, room: &str) {
        let id = self.request(cluster, client, json!({"type": "leave_room", "room": room}));
        if let Some(id) = id {
            self.clients[client].leaving.insert(id, room.to_string());
        }
    }

    pub fn send(&mut self, cluster: &mut Cluster, client: usize, room: &str) {
        let c = &mut self.clients[client];
        c.next_message += 1;
        // Unique across the run: the checker follows messages by content.
        let content = format!("c{client}.s{}.m{}", c.session, c.next_message);
        let frame = json!({"type": "send_message", "room": room, "payload": {"content": content}});
        self.request(cluster, client, frame);
    }

    pub fn direct(&mut self, cluster: &mut Cluster, client: usize, to: usize) {
        let to = self.clients[to].user.clone();
        let frame = json!({"type": "send_direct", "payload": {"to": to, "content": "psst"}});
        self.request(cluster, client, frame);
    }

    /// At the end: every live session asks for each of its rooms' presence.
    pub fn ask_presence(&mut self, cluster: &mut Cluster) {
        for client in 0..self.clients.len() {
            let rooms: Vec<String> = self.clients[client].rooms.iter().cloned().collect();
            for room in rooms {
                let id = format!("final-{room}");
                let frame = json!({"type": "online_users", "room": room, "id": id});
                self.send_frame(cluster, client, frame);
            }
        }
    }

    /// Every live session ends normally.
    pub fn finish(&mut self, cluster: &mut Cluster) {
        for client in 0..self.clients.len() {
            if self.clients[client].live.is_some() {
                self.record(cluster, client, Event::Finished);
            }
        }
    }

    /// Sends `frame` with a fresh id; the id, if the client is connected.
    fn request(
        &mut self,
        cluster: &mut Cluster,
        client: usize,
        mut frame: Value,
    ) -> Option<String> {
        let c = &mut self.clients[client];
        c.live?;
        c.next_request += 1;
        let id = format!("s{}r{}", c.session, c.next_request);
        frame["id"] = Value::from(id.clone());
        self.send_frame(cluster, client, frame);
        Some(id)
    }

    fn send_frame(&mut self, cluster: &mut Cluster, client: usize, frame: Value) {
        let Some((conn, node)) = self.clients[client].live else {
            return;
        };
        let text = Bytes::from(frame.to_string());
        self.record(cluster, client, Event::Sent { frame });
        cluster.feed(node, Input::Text { conn, frame: text });
        self.pump(cluster);
    }

    /// Hands the clients what the cluster sent them.
    pub fn pump(&mut self, cluster: &mut Cluster) {
        while let Some(to) = cluster.to_clients.pop_front() {
            match to {
                ToClient::Frame { conn, frame } => {
                    let Some(&client) = self.by_conn.get(&conn) else {
                        continue;
                    };
                    let Ok(frame) = serde_json::from_slice::<Value>(&frame) else {
                        continue;
                    };
                    self.observe(client, &frame);
                    self.record(cluster, client, Event::Received { frame });
                }
                ToClient::Closed { conn, code } => {
                    let Some(client) = self.by_conn.remove(&conn) else {
                        continue;
                    };
                    self.clients[client].live = None;
                    let reason = String::new();
                    self.record(cluster, client, Event::Closed { code, reason });
                }
            }
        }
    }

    /// Keeps the client's rooms and positions up to date.
    fn observe(&mut self, client: usize, frame: &Value) {
        let c = &mut self.clients[client];
        c.seen.observe(frame);
        match frame["type"].as_str() {
            Some("room_info") => {
                c.rooms
                    .insert(frame["room"].as_str().unwrap_or("").to_string());
            }
            Some("ack") => {
                if let Some(left) = frame["id"].as_str().and_then(|id| c.leaving.remove(id)) {
                    c.rooms.remove(&left);
                }
            }
            _ => {}
        }
    }
}
