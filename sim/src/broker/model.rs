//! The simulated broker's state: a pure, deterministic model of what the
//! Redis scripts do (sequencing, capped history, key expiry, presence,
//! node liveness), with time as an argument. It returns what to publish
//! and leaves delivering it to its caller: the TCP server in [`super::server`]
//! (turmoil worlds, the conformance suite) or the in-memory cluster harness.

use std::collections::{BTreeMap, VecDeque};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use roomhub_core::{
    AppendRequest, DirectMessage, NodeId, Position, RemoteMember, RoomName, UserRef,
};
use roomhub_net::cluster::keys::channel;
use roomhub_net::cluster::wire::{Event, PresenceEvent, message_payload, request_json};

/// What the broker keeps and how long nodes live.
#[derive(Clone, Copy, Debug)]
pub struct SimBrokerConfig {
    /// Seeds room epochs: same seed, same epochs.
    pub seed: u64,
    pub max_messages: usize,
    /// History age limit; a room's keys also expire after this long
    /// without an append, as Redis's do.
    pub max_age_ms: u64,
    pub node_ttl_ms: u64,
}

/// Something to publish on a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    pub channel: String,
    pub payload: Vec<u8>,
}

/// A room as the broker keeps it.
struct SimRoom {
    epoch: String,
    head: u64,
    /// (offset, request JSON), oldest first.
    log: VecDeque<(u64, String)>,
    /// When its keys expire (ms).
    expires_at_ms: u64,
}

/// The answer to an open: what the Redis script returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub epoch: String,
    pub head: u64,
    /// (offset, request JSON) after the requested offset.
    pub messages: Vec<(u64, String)>,
    pub presence: Vec<RemoteMember>,
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Beat {
    pub live: Vec<(NodeId, u64)>,
    pub was_gone: bool,
}

pub struct BrokerModel {
    config: SimBrokerConfig,
    rng: ChaCha8Rng,
    rooms: BTreeMap<String, SimRoom>,
    /// room -> (node, user id) -> member
    presence: BTreeMap<String, BTreeMap<(NodeId, String), RemoteMember>>,
    /// node -> (liveness deadline in ms, online count)
    nodes: BTreeMap<NodeId, (u64, u64)>,
}

impl BrokerModel {
    pub fn new(config: SimBrokerConfig) -> Self {
        BrokerModel {
            config,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            rooms: BTreeMap::new(),
            presence: BTreeMap::new(),
            nodes: BTreeMap::new(),
        }
    }

    fn ttl_ms(&self) -> u64 {
        self.config.max_age_ms.max(1)
    }

    /// The room's live state; a room never seen, or whose keys expired,
    /// starts over with a new epoch.
    fn room(&mut self, name: &str, now_ms: u64) -> &mut SimRoom {
        let ttl = self.ttl_ms();
        if self
            .rooms
            .get(name)
            .is_some_and(|r| r.expires_at_ms <= now_ms)
        {
            self.rooms.remove(name);
        }
        let rng = &mut self.rng;
        self.rooms
            .entry(name.to_string())
            .or_insert_with(|| SimRoom {
                epoch: format!("{:016x}", rng.next_u64()),
                head: 0,
                log: VecDeque::new(),
                expires_at_ms: now_ms + ttl,
            })
    }

    fn is_live(&self, node: NodeId, now_ms: u64) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|(deadline, _)| *deadline > now_ms)
    }

    /// Numbers, keeps and publishes each request; (epoch, offset) for each.
    pub fn append(
        &mut self,
        batch: &[AppendRequest],
        now_ms: u64,
    ) -> (Vec<(String, u64)>, Vec<Publication>) {
        let max = self.config.max_messages.max(1);
        let ttl = self.ttl_ms();
        let mut places = Vec::with_capacity(batch.len());
        let mut published = Vec::with_capacity(batch.len());
        for request in batch {
            let name = request.room.as_str();
            let json = request_json(request);
            let room = self.room(name, now_ms);
            room.head += 1;
            room.expires_at_ms = now_ms + ttl;
            let (epoch, head) = (room.epoch.clone(), room.head);
            room.log.push_back((head, json.clone()));
            while room.log.len() > max {
                room.log.pop_front();
            }
            published.push(Publication {
                channel: channel::room(name),
                payload: message_payload(head, &epoch, &json),
            });
            places.push((epoch, head));
        }
        (places, published)
    }

    /// A room's epoch, head, history after `after` (all of it when `after`
    /// is in another epoch), and members on live nodes.
    pub fn open(&mut self, room: &RoomName, after: Option<&Position>, now_ms: u64) -> Opened {
        let presence = match self.presence.get(room.as_str()) {
            Some(members) => members
                .iter()
                .filter(|((node, _), _)| self.is_live(*node, now_ms))
                .map(|(_, m)| m.clone())
                .collect(),
            None => Vec::new(),
        };
        let max = self.config.max_messages as u64;
        let r = self.room(room.as_str(), now_ms);
        let after = after
            .filter(|p| p.epoch.as_str() == r.epoch)
            .map_or(0, |p| p.offset);
        let start = after.max(r.head.saturating_sub(max));
        Opened {
            epoch: r.epoch.clone(),
            head: r.head,
            messages: r.log.iter().filter(|(o, _)| *o > start).cloned().collect(),
            presence,
        }
    }

    /// Forgets the room's epoch and messages, as `DEL` of its keys does.
    pub fn end_lineage(&mut self, room: &RoomName) {
        self.rooms.remove(room.as_str());
    }

    /// Records or withdraws one user of one node in a room.
    pub fn presence(
        &mut self,
        node: NodeId,
        room: &RoomName,
        user: &UserRef,
        present: bool,
    ) -> Publication {
        let members = self.presence.entry(room.as_str().to_string()).or_default();
        let key = (node, user.id.to_string());
        if present {
            let member = RemoteMember {
                node,
                user: user.clone(),
            };
            members.insert(key, member);
        } else {
            members.remove(&key);
        }
        let event = Event::Presence(PresenceEvent {
            room: room.clone(),
            node,
            user: user.clone(),
            present,
        });
        Publication {
            channel: channel::room(room.as_str()),
            payload: event.encode(),
        }
    }

    /// Keeps `node` alive; removes (and announces) nodes whose liveness
    /// ran out.
    pub fn heartbeat(
        &mut self,
        node: NodeId,
        online: u64,
        now_ms: u64,
    ) -> (Beat, Vec<Publication>) {
        let was_gone = !self.is_live(node, now_ms);
        let dead: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(n, (deadline, _))| **n != node && *deadline <= now_ms)
            .map(|(n, _)| *n)
            .collect();
        let mut published = Vec::new();
        for d in dead {
            self.nodes.remove(&d);
            for members in self.presence.values_mut() {
                members.retain(|(n, _), _| *n != d);
            }
            published.push(Publication {
                channel: channel::NODES.to_string(),
                payload: Event::NodeGone(d).encode(),
            });
        }
        self.nodes
            .insert(node, (now_ms + self.config.node_ttl_ms, online));
        published.push(Publication {
            channel: channel::NODES.to_string(),
            payload: Event::Beat(node).encode(),
        });
        let live = self.nodes.iter().map(|(n, (_, c))| (*n, *c)).collect();
        (Beat { live, was_gone }, published)
    }

    /// A direct message, for whoever follows the recipient.
    pub fn relay(message: &DirectMessage) -> Publication {
        Publication {
            channel: channel::user(&message.to),
            payload: Event::Direct(message.clone()).encode(),
        }
    }
}
