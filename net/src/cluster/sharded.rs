//! Rooms spread over several brokers (`--redis url1,url2,…`): one
//! [`Broker`] made of shards, each a whole broker of its own.
//!
//! Where things live (every node computes the same, from the shard list
//! alone, in its order):
//! - a room (its epoch, head, history, presence and channel) lives on shard
//!   [`shard_of`]`(room)`: CRC-32 (IEEE) of the room's hash tag (its name,
//!   unless the name has a brace: [`keys::tag`]), modulo the number of
//!   shards; on a Redis Cluster, on the master serving the tag's slot;
//! - a user's direct-message channel lives on shard `shard_of(user id)`;
//! - node liveness is kept on every shard (each shard removes a dead node's
//!   presence in its own rooms and announces its departure on its own
//!   nodes channel); the online counts are read from shard 0.
//!
//! One room's order is one shard's order, so every guarantee of a single
//! broker holds per room. A batch of appends is split by shard and the
//! parts run at the same time. A node's subscription session is one
//! session per shard, merged; it ends when any of them ends (the node then
//! resyncs every room, as after any broker loss).
//!
//! Changing the shard list moves rooms to shards that do not know them:
//! such a room starts a new epoch, and its members are told
//! `recovered: false` (a `room_reset`, or the answer to a rejoin with
//! `since`), never a silent gap.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::select_all;
use roomhub_core::{
    AppendRequest, DirectMessage, NodeId, Position, RoomName, RoomSnapshot, SequencedMessage,
    Timestamp, UserRef,
};
use tokio::sync::{mpsc, oneshot};

use crate::cluster::broker::{
    Broker, BrokerError, Delivery, Heartbeat, SUBSCRIPTION_CONTROL_REQUESTS,
    SUBSCRIPTION_QUEUE_EVENTS, SubRequest, Subscription,
};
use crate::cluster::keys;
use crate::cluster::keys::channel::{self, Home};

/// The shard that keeps `name` (a room name or a user id) among `shards`
/// listed shards: CRC-32 of its hash tag ([`keys::tag`]: the name itself
/// unless it has a brace), modulo the number of shards.
pub fn shard_of(name: &str, shards: usize) -> usize {
    Placement::Listed.shard_of_tag(&keys::tag(name), shards)
}

/// The Redis Cluster slot of a hash tag: CRC-16/XMODEM modulo 16384.
pub fn slot_of(tag: &str) -> u16 {
    const XMODEM: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);
    XMODEM.checksum(tag.as_bytes()) % SLOTS
}

/// Redis Cluster's hash slots.
pub const SLOTS: u16 = 16384;

/// How names find their shard.
#[derive(Clone, Debug)]
pub enum Placement {
    /// `--redis a,b,…`: CRC-32 of the hash tag, modulo the shards.
    Listed,
    /// A Redis Cluster: the shard (master) serving the tag's slot, one
    /// entry per slot.
    Slots(Arc<[u16]>),
}

impl Placement {
    fn shard_of_tag(&self, tag: &str, shards: usize) -> usize {
        match self {
            Placement::Listed => (crc32fast::hash(tag.as_bytes()) as usize) % shards.max(1),
            Placement::Slots(owners) => usize::from(owners[usize::from(slot_of(tag))]),
        }
    }

    /// The shards a channel lives on.
    fn homes(&self, ch: &str, shards: usize) -> Vec<usize> {
        match channel::home(ch) {
            Home::Everywhere => (0..shards).collect(),
            Home::Tagged(tag) => vec![self.shard_of_tag(tag, shards)],
        }
    }
}

/// Several brokers acting as one, rooms spread over them by name.
pub struct ShardedBroker<B> {
    shards: Vec<B>,
    placement: Placement,
}

impl<B: Broker> ShardedBroker<B> {
    /// At least one shard; their order decides where each room lives.
    pub fn new(shards: Vec<B>) -> Self {
        ShardedBroker::placed(shards, Placement::Listed)
    }

    /// Shards placed as `placement` says (for [`Placement::Slots`], every
    /// entry names one of `shards`).
    pub fn placed(shards: Vec<B>, placement: Placement) -> Self {
        assert!(!shards.is_empty(), "a sharded broker needs a shard");
        if let Placement::Slots(owners) = &placement {
            assert!(owners.len() == usize::from(SLOTS));
            assert!(owners.iter().all(|&o| usize::from(o) < shards.len()));
        }
        ShardedBroker { shards, placement }
    }

    fn home(&self, name: &str) -> usize {
        self.placement
            .shard_of_tag(&keys::tag(name), self.shards.len())
    }

    /// The shard that keeps `name` (a room name or a user id).
    pub fn shard(&self, name: &str) -> &B {
        &self.shards[self.home(name)]
    }

    /// Every shard, in the order given.
    pub fn shards(&self) -> &[B] {
        &self.shards
    }
}

/// Confirms one subscription of the merged session once every shard it
/// went to confirmed its part. The merge answers a shard's confirmation
/// only after handing on what that shard published before it, so the one
/// confirmation queued here comes after all of that, as the contract says;
/// a refusal is answered at once.
async fn confirm_all(
    parts: Vec<oneshot::Receiver<Result<(), BrokerError>>>,
    done: oneshot::Sender<Result<(), BrokerError>>,
    deliver: mpsc::Sender<Delivery>,
) {
    for part in parts {
        let answer = part
            .await
            .unwrap_or_else(|_| Err(BrokerError::Reply("subscription session ended".into())));
        if answer.is_err() {
            let _ = done.send(answer);
            return;
        }
    }
    let _ = deliver.send(Delivery::Subscribed(done)).await;
}

/// Routes one session's requests to the shards' sessions, and hands on what
/// each shard publishes, each shard's in its order. Returns when any shard's
/// session ends, or the node drops its side.
async fn merge(
    placement: Placement,
    controls: Vec<mpsc::Sender<SubRequest>>,
    streams: Vec<mpsc::Receiver<Delivery>>,
    mut requests: mpsc::Receiver<SubRequest>,
    deliver: mpsc::Sender<Delivery>,
) {
    let n = controls.len();
    // Each stream yields `None` once (its session ended), then stops.
    let mut published = select_all(streams.into_iter().map(|rx| {
        Box::pin(futures_util::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(d) => Some((Some(d), Some(rx))),
                None => Some((None, None)),
            }
        }))
    }));
    loop {
        tokio::select! {
            biased;
            req = requests.recv() => match req {
                Some(SubRequest::Subscribe(ch, done)) => {
                    let mut parts = Vec::new();
                    for &i in &placement.homes(&ch, n) {
                        let (tx, rx) = oneshot::channel();
                        if controls[i].send(SubRequest::Subscribe(ch.clone(), tx)).await.is_err() {
                            return;
                        }
                        parts.push(rx);
                    }
                    tokio::spawn(confirm_all(parts, done, deliver.clone()));
                }
                Some(SubRequest::Unsubscribe(ch)) => {
                    for &i in &placement.homes(&ch, n) {
                        if controls[i].send(SubRequest::Unsubscribe(ch.clone())).await.is_err() {
                            return;
                        }
                    }
                }
                None => return,
            },
            delivery = published.next() => match delivery {
                // Everything this shard published before is handed on.
                Some(Some(Delivery::Subscribed(part))) => {
                    let _ = part.send(Ok(()));
                }
                Some(Some(message)) => {
                    if deliver.send(message).await.is_err() {
                        return;
                    }
                }
                // A shard's session ended: so does this one.
                _ => return,
            },
        }
    }
}

impl<B: Broker> Broker for ShardedBroker<B> {
    async fn append(&self, batch: &[AppendRequest]) -> Result<Vec<SequencedMessage>, BrokerError> {
        let n = self.shards.len();
        let homes: Vec<usize> = batch.iter().map(|r| self.home(r.room.as_str())).collect();
        if homes.windows(2).all(|w| w[0] == w[1]) {
            let Some(&home) = homes.first() else {
                return Ok(Vec::new());
            };
            return self.shards[home].append(batch).await;
        }
        let mut parts: Vec<Vec<AppendRequest>> = vec![Vec::new(); n];
        for (request, &home) in batch.iter().zip(&homes) {
            parts[home].push(request.clone());
        }
        let busy: Vec<usize> = (0..n).filter(|&i| !parts[i].is_empty()).collect();
        let answers = join_all(busy.iter().map(|&i| self.shards[i].append(&parts[i]))).await;
        // Back into batch order: each shard answered its part in order.
        let mut stored: Vec<std::vec::IntoIter<SequencedMessage>> =
            (0..n).map(|_| Vec::new().into_iter()).collect();
        for (&i, answer) in busy.iter().zip(answers) {
            let answer = answer?;
            if answer.len() != parts[i].len() {
                return Err(BrokerError::Reply(
                    "a shard answered part of a batch".into(),
                ));
            }
            stored[i] = answer.into_iter();
        }
        Ok(homes
            .iter()
            .map(|&home| stored[home].next().expect("counted above"))
            .collect())
    }

    async fn open(
        &self,
        room: &RoomName,
        after: Option<&Position>,
        now: Timestamp,
    ) -> Result<RoomSnapshot, BrokerError> {
        self.shard(room.as_str()).open(room, after, now).await
    }

    async fn end_lineage(&self, room: &RoomName) -> Result<(), BrokerError> {
        self.shard(room.as_str()).end_lineage(room).await
    }

    async fn presence(
        &self,
        node: NodeId,
        room: &RoomName,
        user: &UserRef,
        present: bool,
    ) -> Result<(), BrokerError> {
        self.shard(room.as_str())
            .presence(node, room, user, present)
            .await
    }

    /// Every shard keeps the node alive (each cleans up its own rooms'
    /// presence); the online counts come from shard 0.
    async fn heartbeat(&self, node: NodeId, online: u64) -> Result<Heartbeat, BrokerError> {
        let beats = join_all(self.shards.iter().map(|s| s.heartbeat(node, online))).await;
        let mut merged: Option<Heartbeat> = None;
        for beat in beats {
            let beat = beat?;
            match &mut merged {
                None => merged = Some(beat),
                Some(m) => m.was_gone |= beat.was_gone,
            }
        }
        Ok(merged.expect("at least one shard"))
    }

    fn beats_per_heartbeat(&self) -> u64 {
        self.shards.len() as u64
    }

    async fn relay(&self, message: &DirectMessage) -> Result<usize, BrokerError> {
        self.shard(&message.to).relay(message).await
    }

    /// Every node listens to the node channel on every shard: one shard's
    /// (the first) reaches each once.
    async fn to_nodes(&self, payload: Vec<u8>) -> Result<usize, BrokerError> {
        self.shards[0].to_nodes(payload).await
    }

    async fn subscribe(&self) -> Result<Subscription, BrokerError> {
        let sessions = join_all(self.shards.iter().map(|s| s.subscribe())).await;
        let mut controls = Vec::with_capacity(sessions.len());
        let mut streams = Vec::with_capacity(sessions.len());
        for session in sessions {
            let Subscription { control, messages } = session?;
            controls.push(control);
            streams.push(messages);
        }
        let (control, requests) = mpsc::channel(SUBSCRIPTION_CONTROL_REQUESTS);
        let (deliver, messages) = mpsc::channel(SUBSCRIPTION_QUEUE_EVENTS);
        tokio::spawn(merge(
            self.placement.clone(),
            controls,
            streams,
            requests,
            deliver,
        ));
        Ok(Subscription { control, messages })
    }

    fn set_history(&self, max_messages: usize, max_age_ms: u64) {
        for shard in &self.shards {
            shard.set_history(max_messages, max_age_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented hash: CRC-32 (IEEE) of the name, modulo the shards,
    /// so any client of the same Redis can find a room's shard.
    #[test]
    fn a_name_lives_on_its_crc32_modulo_the_shards() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(shard_of("123456789", 7), 0xCBF4_3926 % 7);
        assert_eq!(shard_of("anything", 1), 0);
    }

    #[test]
    fn channels_live_with_their_room_or_user_or_everywhere() {
        let listed = Placement::Listed;
        for name in ["a:b", "a}b"] {
            assert_eq!(listed.homes(&channel::room(name), 3), [shard_of(name, 3)]);
            assert_eq!(listed.homes(&channel::user(name), 3), [shard_of(name, 3)]);
        }
        assert_eq!(listed.homes(channel::NODES, 3), [0, 1, 2]);
    }

    /// Redis Cluster's documented slots (`CLUSTER KEYSLOT`).
    #[test]
    fn slots_follow_redis_cluster() {
        assert_eq!(slot_of("123456789"), 0x31C3 % SLOTS);
        assert_eq!(slot_of("a"), 15495);
        assert_eq!(slot_of("b"), 3300);
        let owners: Arc<[u16]> = (0..SLOTS).map(|s| u16::from(s > 5460)).collect();
        let slots = Placement::Slots(owners);
        assert_eq!(slots.homes(&channel::room("b"), 2), [0]);
        assert_eq!(slots.homes(&channel::room("a"), 2), [1]);
    }
}
