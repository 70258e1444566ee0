//! The [`Broker`] contract on Redis: Lua scripts make each step atomic,
//! streams keep room history, pub/sub carries events to the nodes.
//!
//! The keys are listed in [`crate::cluster::keys`]; the scripts in
//! [`scripts`].
//!
//! Room keys expire after the history age limit without traffic: by then no
//! message in them is recoverable anyway, and the next use starts a new
//! epoch (clients are told `recovered: false`).
//!
//! A [`RedisBroker`] talks to one Redis: a standalone one (or a primary with
//! replicas), or one master of a Redis Cluster ([`cluster`]), where it
//! publishes and subscribes with sharded pub/sub and keeps node liveness
//! under a hash tag of its own slots.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionInfo, IntoConnectionInfo, ProtocolVersion, Script, ScriptInvocation, Value};
use roomhub_core::{
    AppendRequest, DirectMessage, HistoryLimits, NodeId, Position, RemoteMember, RoomName,
    RoomSnapshot, SequencedMessage, Timestamp, UserRef,
};
use rustc_hash::FxHashMap;
use tokio::sync::{Mutex, mpsc};

use crate::cluster::broker::{
    Broker, BrokerError, Delivery, Heartbeat, SUBSCRIPTION_CONTROL_REQUESTS,
    SUBSCRIPTION_QUEUE_EVENTS, SubRequest, Subscription,
};
use crate::cluster::keys::{self, NodeKeys, channel};
use crate::cluster::wire::{Event, PresenceEvent, request_json, sequenced, snapshot};
use crate::seq::epoch::new_epoch;

pub mod cluster;
mod scripts;
mod sharded_pubsub;
use scripts::{APPEND, HEARTBEAT, OPEN, PRELUDE, PRESENCE};

impl From<redis::RedisError> for BrokerError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_timeout() {
            BrokerError::TimedOut
        } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            BrokerError::Unreachable(e.to_string())
        } else {
            BrokerError::Reply(e.to_string())
        }
    }
}

/// The broker contract on one Redis: standalone, or one master of a Redis
/// Cluster.
pub struct RedisBroker {
    client: redis::Client,
    /// The same Redis over RESP3, for sharded subscriptions.
    resp3: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    /// A reload changes them ([`Broker::set_history`]).
    limits: std::sync::Mutex<HistoryLimits>,
    node_ttl: Duration,
    /// Where node liveness lives on this Redis.
    node_keys: NodeKeys,
    /// A Redis Cluster master: sharded pub/sub (`SPUBLISH`, `SSUBSCRIBE`).
    sharded: bool,
    append: Script,
    open: Script,
    presence: Script,
    heartbeat: Script,
}

/// How long one command may take before the broker counts as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl RedisBroker {
    /// On a standalone Redis.
    pub fn new(url: &str, limits: HistoryLimits, node_ttl: Duration) -> Result<Self, BrokerError> {
        let info = url.into_connection_info()?;
        Ok(RedisBroker::with(
            info,
            limits,
            node_ttl,
            NodeKeys::standalone(),
            false,
        ))
    }

    /// On one master of a Redis Cluster, keeping node liveness under `tag`
    /// (a hash tag of a slot the master serves).
    pub(crate) fn on_cluster_master(
        info: ConnectionInfo,
        tag: &str,
        limits: HistoryLimits,
        node_ttl: Duration,
    ) -> Self {
        RedisBroker::with(info, limits, node_ttl, NodeKeys::tagged(tag), true)
    }

    fn with(
        info: ConnectionInfo,
        limits: HistoryLimits,
        node_ttl: Duration,
        node_keys: NodeKeys,
        sharded: bool,
    ) -> Self {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let resp3 = info.clone().set_redis_settings(resp3);
        RedisBroker {
            client: redis::Client::open(info).expect("a parsed connection info opens"),
            resp3: redis::Client::open(resp3).expect("a parsed connection info opens"),
            conn: Mutex::new(None),
            limits: std::sync::Mutex::new(limits),
            node_ttl,
            node_keys,
            sharded,
            append: script(APPEND),
            open: script(OPEN),
            presence: script(PRESENCE),
            heartbeat: script(HEARTBEAT),
        }
    }

    fn limits(&self) -> HistoryLimits {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_command(&self) -> &'static str {
        if self.sharded { "SPUBLISH" } else { "PUBLISH" }
    }

    /// A call of `script` with `keys`, by the scripts' calling convention
    /// ([`scripts`]); the caller adds the arguments.
    fn call<'a>(&self, script: &'a Script, keys: &[String]) -> ScriptInvocation<'a> {
        let mut call = script.prepare_invoke();
        call.arg(keys.len());
        for key in keys {
            call.arg(key);
        }
        call.arg(self.publish_command());
        call
    }

    /// The shared command connection, made on first use; it reconnects by
    /// itself after that.
    async fn conn(&self) -> Result<ConnectionManager, BrokerError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let c = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            self.client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| BrokerError::TimedOut)??;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// How often a busy room's expiry is pushed back: an eighth of the
    /// history age limit.
    fn refresh_ms(&self) -> u64 {
        (self.limits().max_age_ms / 8).max(1)
    }

    /// A room's keys expire this long after their expiry was last pushed
    /// back: the age limit plus the refresh interval, so that they outlive
    /// the room's last message by at least the age limit.
    fn ttl_ms(&self) -> u64 {
        self.limits().max_age_ms.max(1) + self.refresh_ms()
    }
}

/// The channel a node's subscription name stands for on a Redis whose
/// node liveness is under `keys`.
fn wire_channel(ch: String, keys: &NodeKeys) -> String {
    if ch == channel::NODES {
        keys.channel.clone()
    } else {
        ch
    }
}

fn bad(what: &str) -> BrokerError {
    BrokerError::Reply(format!("from redis: {what}"))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

fn array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) => Some(a),
        Value::Nil => Some(&[]),
        _ => None,
    }
}

impl Broker for RedisBroker {
    /// One script call for the whole batch, by hash (`EVALSHA`; the
    /// script is loaded again when a restarted Redis answers `NOSCRIPT`).
    async fn append(&self, batch: &[AppendRequest]) -> Result<Vec<SequencedMessage>, BrokerError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        // Each room once, numbered from 1 in order of first appearance.
        let mut rooms: Vec<&str> = Vec::new();
        let mut number: FxHashMap<&str, usize> = FxHashMap::default();
        let numbers: Vec<usize> = batch
            .iter()
            .map(|request| {
                let room = request.room.as_str();
                *number.entry(room).or_insert_with(|| {
                    rooms.push(room);
                    rooms.len()
                })
            })
            .collect();
        let room_keys: Vec<String> = rooms
            .iter()
            .flat_map(|room| [keys::room_meta(room), keys::room_log(room)])
            .collect();
        let mut call = self.call(&self.append, &room_keys);
        call.arg(self.limits().max_messages.max(1))
            .arg(self.ttl_ms())
            .arg(self.refresh_ms());
        for room in &rooms {
            call.arg(channel::room(room)).arg(new_epoch());
        }
        for (request, n) in batch.iter().zip(&numbers) {
            call.arg(*n).arg(request_json(request));
        }
        let reply: Value = call.invoke_async(&mut conn).await?;
        let parts = array(&reply).ok_or_else(|| bad("append"))?;
        let epochs: Vec<String> = parts
            .first()
            .and_then(array)
            .ok_or_else(|| bad("append epochs"))?
            .iter()
            .map(|e| text(e).ok_or_else(|| bad("append epoch")))
            .collect::<Result<_, _>>()?;
        let offsets = parts
            .get(1)
            .and_then(array)
            .ok_or_else(|| bad("append offsets"))?;
        if epochs.len() != rooms.len() || offsets.len() != batch.len() {
            return Err(bad("append batch length"));
        }
        let mut out = Vec::with_capacity(batch.len());
        for ((request, n), offset) in batch.iter().zip(numbers).zip(offsets) {
            let offset = int(offset).ok_or_else(|| bad("append offset"))?;
            out.push(sequenced(request.clone(), &epochs[n - 1], offset));
        }
        Ok(out)
    }

    /// Both keys carry the room's hash tag: one `DEL`, one slot.
    async fn end_lineage(&self, room: &RoomName) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        let name = room.as_str();
        redis::cmd("DEL")
            .arg(keys::room_meta(name))
            .arg(keys::room_log(name))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn open(
        &self,
        room: &RoomName,
        after: Option<&Position>,
        now: Timestamp,
    ) -> Result<RoomSnapshot, BrokerError> {
        let mut conn = self.conn().await?;
        let name = room.as_str();
        let keys = [
            keys::room_meta(name),
            keys::room_log(name),
            keys::presence(name),
            self.node_keys.nodes.clone(),
        ];
        let reply: Value = self
            .call(&self.open, &keys)
            .arg(new_epoch())
            .arg(self.ttl_ms())
            .arg(after.map_or(0, |p| p.offset))
            .arg(self.limits().max_messages)
            .arg(after.map_or("", |p| p.epoch.as_str()))
            .invoke_async(&mut conn)
            .await?;
        let parts = array(&reply).ok_or_else(|| bad("open"))?;
        let epoch = parts.first().and_then(text).ok_or_else(|| bad("epoch"))?;
        let head = parts.get(1).and_then(int).ok_or_else(|| bad("head"))?;
        let mut entries = Vec::new();
        for entry in parts.get(2).and_then(array).unwrap_or(&[]) {
            let Some([id, fields]) = array(entry).and_then(|e| <&[Value; 2]>::try_from(e).ok())
            else {
                continue;
            };
            let offset = text(id)
                .and_then(|id| id.strip_prefix("0-").and_then(|o| o.parse().ok()))
                .ok_or_else(|| bad("entry id"))?;
            let json = array(fields)
                .and_then(|f| f.get(1))
                .and_then(text)
                .ok_or_else(|| bad("entry"))?;
            entries.push((offset, json));
        }
        let presence = parts
            .get(3)
            .and_then(array)
            .unwrap_or(&[])
            .iter()
            .filter_map(|v| serde_json::from_str::<RemoteMember>(&text(v)?).ok())
            .collect();
        snapshot(
            room,
            &epoch,
            head,
            entries,
            presence,
            now,
            self.limits().max_age_ms,
        )
    }

    async fn presence(
        &self,
        node: NodeId,
        room: &RoomName,
        user: &UserRef,
        present: bool,
    ) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        let name = room.as_str();
        let member = serde_json::to_string(&RemoteMember {
            node,
            user: user.clone(),
        })?;
        let event = Event::Presence(PresenceEvent {
            room: room.clone(),
            node,
            user: user.clone(),
            present,
        })
        .encode();
        let keys = [keys::presence(name), self.node_keys.node_rooms(node)];
        let _: Value = self
            .call(&self.presence, &keys)
            .arg(keys::presence_field(node, &user.id))
            .arg(member)
            .arg(if present { "1" } else { "0" })
            .arg(channel::room(name))
            .arg(event)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn heartbeat(&self, node: NodeId, online: u64) -> Result<Heartbeat, BrokerError> {
        let mut conn = self.conn().await?;
        let keys = [self.node_keys.nodes.clone(), self.node_keys.online.clone()];
        let (rooms_prefix, rooms_suffix) = self.node_keys.node_rooms_affixes();
        let reply: Value = self
            .call(&self.heartbeat, &keys)
            .arg(node.0)
            .arg(self.node_ttl.as_millis() as u64)
            .arg(online)
            .arg(rooms_prefix)
            .arg(rooms_suffix)
            .arg(&self.node_keys.channel)
            .invoke_async(&mut conn)
            .await?;
        let parts = array(&reply).ok_or_else(|| bad("heartbeat"))?;
        let live = parts.first().and_then(array).unwrap_or(&[]);
        let counts = parts.get(1).and_then(array).unwrap_or(&[]);
        Ok(Heartbeat {
            live: live
                .iter()
                .zip(counts.iter().map(Some).chain(std::iter::repeat(None)))
                .filter_map(|(n, c)| Some((NodeId(int(n)?), c.and_then(int).unwrap_or(0))))
                .collect(),
            was_gone: parts.get(2).and_then(int) == Some(1),
        })
    }

    async fn relay(&self, message: &DirectMessage) -> Result<usize, BrokerError> {
        let mut conn = self.conn().await?;
        let payload = Event::Direct(message.clone()).encode();
        let receivers: usize = redis::cmd(self.publish_command())
            .arg(channel::user(&message.to))
            .arg(payload)
            .query_async(&mut conn)
            .await?;
        Ok(receivers)
    }

    async fn to_nodes(&self, payload: Vec<u8>) -> Result<usize, BrokerError> {
        let mut conn = self.conn().await?;
        let receivers: usize = redis::cmd(self.publish_command())
            .arg(&self.node_keys.channel)
            .arg(payload)
            .query_async(&mut conn)
            .await?;
        Ok(receivers)
    }

    async fn subscribe(&self) -> Result<Subscription, BrokerError> {
        if self.sharded {
            return sharded_pubsub::subscribe(self).await;
        }
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT * 2, self.client.get_async_pubsub())
            .await
            .map_err(|_| BrokerError::TimedOut)??;
        let (mut sink, mut stream) = pubsub.split();
        let (control, mut requests) = mpsc::channel::<SubRequest>(SUBSCRIPTION_CONTROL_REQUESTS);
        let (deliver, messages) = mpsc::channel::<Delivery>(SUBSCRIPTION_QUEUE_EVENTS);
        let node_keys = self.node_keys.clone();
        let wire = move |ch| wire_channel(ch, &node_keys);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    req = requests.recv() => match req {
                        Some(SubRequest::Subscribe(ch, done)) => {
                            let ch = wire(ch);
                            let r = tokio::time::timeout(RESPONSE_TIMEOUT, sink.subscribe(&ch)).await;
                            if !matches!(r, Ok(Ok(()))) {
                                let refused = BrokerError::Reply("subscribe not confirmed".into());
                                let _ = done.send(Err(refused));
                                return;
                            }
                            // What Redis sent before the confirmation is
                            // already read: hand it on first.
                            while let Some(Some(msg)) = stream.next().now_or_never() {
                                let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                                if deliver.send(Delivery::Message(payload)).await.is_err() {
                                    return;
                                }
                            }
                            if deliver.send(Delivery::Subscribed(done)).await.is_err() {
                                return;
                            }
                        }
                        Some(SubRequest::Unsubscribe(ch)) => {
                            if sink.unsubscribe(wire(ch)).await.is_err() {
                                return;
                            }
                        }
                        None => return,
                    },
                    msg = stream.next() => match msg {
                        Some(msg) => {
                            let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                            // Waits when the node falls behind: Redis then
                            // drops this session at its output buffer limit.
                            if deliver.send(Delivery::Message(payload)).await.is_err() {
                                return;
                            }
                        }
                        None => return,
                    },
                }
            }
        });
        Ok(Subscription { control, messages })
    }

    fn set_history(&self, max_messages: usize, max_age_ms: u64) {
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        limits.max_messages = max_messages;
        limits.max_age_ms = max_age_ms;
    }
}
