//! The nodes of an in-memory cluster and their broker. Each node is a real
//! [`Hub`]; its cluster outputs are served the way `roomhub-net`'s worker
//! serves them (appends answered at once, publications queued per node in
//! order until delivered, and delivered ahead of a room's snapshot, as the
//! subscription's confirmation orders them), and a node whose broker link
//! is down fails its calls and loses what is published to it, as a node
//! whose Redis session died does.

use std::collections::{BTreeSet, VecDeque};

use roomhub_core::{Config, ConnId, Hub, Identity, Input, NodeId, Output, RelayOutcome, Timestamp};
use roomhub_net::cluster::keys::channel;
use roomhub_net::cluster::wire::{Event, sequenced, snapshot};

use crate::broker::{BrokerModel, Publication, SimBrokerConfig};

/// A node silent this long is gone (as in the turmoil worlds).
pub const NODE_TTL_MS: u64 = 2_000;
const MAX_AGE_MS: u64 = 24 * 3_600_000;

/// What the cluster hands the clients: a frame or a close for a connection.
#[derive(Debug)]
pub enum ToClient {
    Frame { conn: ConnId, frame: bytes::Bytes },
    Closed { conn: ConnId, code: u16 },
}

pub struct Node {
    pub hub: Hub,
    pub id: NodeId,
    pub name: String,
    /// The broker link: calls succeed and publications arrive only while up.
    pub up: bool,
    /// Channels subscribed (kept across an outage, re-subscribed after it).
    subs: BTreeSet<String>,
    /// Publications on their way to this node, in order.
    queue: VecDeque<Vec<u8>>,
    /// Has heartbeat at least once (a first beat is never "was gone").
    beaten: bool,
}

pub struct Cluster {
    pub now: Timestamp,
    pub nodes: Vec<Node>,
    broker: BrokerModel,
    /// Inputs still to feed, in order.
    work: VecDeque<(usize, Input)>,
    /// For the clients, in order.
    pub to_clients: VecDeque<ToClient>,
}

impl Cluster {
    pub fn new(nodes: usize, seed: u64, start: Timestamp) -> Self {
        let nodes = (0..nodes)
            .map(|i| {
                let id = NodeId(seed.wrapping_mul(31).wrapping_add(i as u64 + 1));
                let config = Config {
                    node_id: id,
                    seed: seed ^ i as u64,
                    clustered: true,
                    rate_limit_per_second: 0,
                    ..Config::default()
                };
                Node {
                    hub: Hub::new(config),
                    id,
                    name: format!("n{i}"),
                    up: true,
                    subs: BTreeSet::from([channel::NODES.to_string()]),
                    queue: VecDeque::new(),
                    beaten: false,
                }
            })
            .collect();
        let mut cluster = Cluster {
            now: start,
            nodes,
            broker: BrokerModel::new(SimBrokerConfig {
                seed,
                max_messages: 1000,
                max_age_ms: MAX_AGE_MS,
                node_ttl_ms: NODE_TTL_MS,
            }),
            work: VecDeque::new(),
            to_clients: VecDeque::new(),
        };
        // Every node beats as it starts.
        cluster.advance(0, 0);
        cluster
    }

    fn now_ms(&self) -> u64 {
        self.now.as_millis()
    }

    /// Feeds `input` to `node` and everything it leads to, until quiet
    /// (publications stay queued until delivered).
    pub fn feed(&mut self, node: usize, input: Input) {
        self.work.push_back((node, input));
        while let Some((n, input)) = self.work.pop_front() {
            self.nodes[n].hub.handle(input, self.now);
            while let Some(out) = self.nodes[n].hub.poll_output() {
                self.serve(n, out);
            }
        }
    }

    pub fn connect(&mut self, node: usize, conn: ConnId, user: &str) {
        let identity = Identity::user(user);
        self.feed(node, Input::Connected { conn, identity });
    }

    fn serve(&mut self, n: usize, out: Output) {
        let now_ms = self.now_ms();
        let up = self.nodes[n].up;
        match out {
            Output::Send { conn, frame, .. } => {
                self.to_clients.push_back(ToClient::Frame { conn, frame });
            }
            // The clients answer every ping.
            Output::Ping { conn } => self.work.push_back((n, Input::Activity { conn })),
            Output::Close { conn, code, .. } => {
                self.to_clients.push_back(ToClient::Closed { conn, code });
            }
            Output::Append(request) if up => {
                let (places, published) = self.broker.append(&[(*request).clone()], now_ms);
                self.publish(published);
                let (epoch, offset) = places.into_iter().next().expect("one place per append");
                if let Some(receipt) = sequenced(*request, &epoch, offset).receipt() {
                    self.work.push_back((n, Input::Appended(receipt)));
                }
            }
            Output::Append(request) => self.work.push_back((n, Input::AppendFailed(*request))),
            Output::OpenRoom { room, after } if up => {
                self.nodes[n].subs.insert(channel::room(room.as_str()));
                // The node waits for the subscription's confirmation, which
                // comes after everything published to it before: those
                // reach the hub ahead of the snapshot.
                while let Some(payload) = self.nodes[n].queue.pop_front() {
                    if let Some(input) = Event::decode(&payload).and_then(Event::into_input) {
                        self.work.push_back((n, input));
                    }
                }
                self.work
                    .push_back((n, Input::RoomSubscribed { room: room.clone() }));
                let opened = self.broker.open(&room, after.as_ref(), now_ms);
                let snap = snapshot(
                    &room,
                    &opened.epoch,
                    opened.head,
                    opened.messages,
                    opened.presence,
                    self.now,
                    MAX_AGE_MS,
                )
                .expect("the model keeps well-formed records");
                self.work.push_back((n, Input::RoomOpened(snap)));
            }
            Output::OpenRoom { room, .. } => {
                self.work.push_back((n, Input::RoomOpenFailed { room }));
            }
            Output::CloseRoom { room } => {
                self.nodes[n].subs.remove(&channel::room(room.as_str()));
            }
            Output::EndLineage { room, ticket } => {
                if up {
                    self.broker.end_lineage(&room);
                }
                let ended = up;
                self.work
                    .push_back((n, Input::LineageEnded { ticket, ended }));
            }
            Output::Presence {
                room,
                user,
                present,
            } => {
                if up {
                    let p = self
                        .broker
                        .presence(self.nodes[n].id, &room, &user, present);
                    self.publish(vec![p]);
                } else {
                    self.work
                        .push_back((n, Input::PresenceFailed { room, user }));
                }
            }
            Output::Relay(message) => {
                let outcome = if up {
                    let receivers = self.publish(vec![BrokerModel::relay(&message)]);
                    if receivers == 0 {
                        RelayOutcome::Offline
                    } else {
                        RelayOutcome::Delivered
                    }
                } else {
                    RelayOutcome::Unavailable
                };
                if message.origin.is_some() {
                    self.work
                        .push_back((n, Input::Relayed { message, outcome }));
                }
            }
            Output::FollowUser { user } => {
                self.nodes[n].subs.insert(channel::user(&user));
            }
            Output::UnfollowUser { user } => {
                self.nodes[n].subs.remove(&channel::user(&user));
            }
            // No schedule sends `refresh` or reloads the configuration.
            Output::Published { .. }
            | Output::ApiAnswered { .. }
            | Output::Hook { .. }
            | Output::VerifyToken { .. }
            | Output::HistoryLimits { .. } => {}
        }
    }

    /// Queues publications for the nodes subscribed and reachable; how many
    /// received the last one (what Redis's PUBLISH answers).
    fn publish(&mut self, published: Vec<Publication>) -> usize {
        let mut receivers = 0;
        for p in published {
            receivers = 0;
            for node in self.nodes.iter_mut().filter(|n| n.up) {
                if node.subs.contains(&p.channel) {
                    node.queue.push_back(p.payload.clone());
                    receivers += 1;
                }
            }
        }
        receivers
    }

    /// Delivers up to `count` queued publications to `node`, in order.
    pub fn deliver(&mut self, node: usize, count: usize) {
        for _ in 0..count {
            let Some(payload) = self.nodes[node].queue.pop_front() else {
                return;
            };
            if let Some(input) = Event::decode(&payload).and_then(Event::into_input) {
                self.feed(node, input);
            }
        }
    }

    pub fn pending(&self) -> usize {
        self.nodes.iter().map(|n| n.queue.len()).sum()
    }

    /// The node loses its broker link: what was on its way is lost.
    pub fn cut(&mut self, node: usize) {
        self.nodes[node].up = false;
        self.nodes[node].queue.clear();
    }

    /// The link is back: the node hears so and resyncs.
    pub fn restore(&mut self, node: usize) {
        if !self.nodes[node].up {
            self.nodes[node].up = true;
            self.feed(node, Input::BrokerReconnected);
        }
    }

    /// Time passes: timers fire, and every reachable node beats at least
    /// every quarter of the node TTL, as the heartbeat task does.
    pub fn advance(&mut self, ms: u64, online: u64) {
        let mut left = ms;
        loop {
            let step = left.min(NODE_TTL_MS / 4);
            self.beat(step, online);
            left -= step;
            if left == 0 {
                return;
            }
        }
    }

    fn beat(&mut self, ms: u64, online: u64) {
        self.now = self.now.plus_ms(ms);
        for n in 0..self.nodes.len() {
            self.feed(n, Input::Tick);
            if !self.nodes[n].up {
                continue;
            }
            let (beat, published) = self
                .broker
                .heartbeat(self.nodes[n].id, online, self.now_ms());
            self.publish(published);
            if beat.was_gone && self.nodes[n].beaten {
                // Its liveness ran out: the node starts a new session.
                self.feed(n, Input::BrokerReconnected);
            }
            self.nodes[n].beaten = true;
        }
    }
}
