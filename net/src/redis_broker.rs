//! The [`Broker`] contract on Redis: Lua scripts make each step atomic,
//! streams keep room history, pub/sub carries events to the nodes.
//!
//! Keys (all under `rh:`):
//! - `rh:room:<room>:meta`: hash `epoch`, `head` (the last offset assigned);
//! - `rh:room:<room>:log`: stream of messages, entry id `<offset>-1`, field
//!   `m` = the append request JSON, capped at the history length;
//! - `rh:presence:<room>`: hash `<node>:<user id>` -> member JSON;
//! - `rh:node:<node>:rooms`: set of rooms where the node announced presence
//!   (so its entries can be removed when it dies);
//! - `rh:nodes`: sorted set node -> liveness deadline (Redis server time, ms);
//! - `rh:online`: hash node -> its online connection count.
//!
//! Room keys expire after the history age limit without traffic: by then no
//! message in them is recoverable anyway, and the next use starts a new
//! epoch (clients are told `recovered: false`).
//!
//! Scripts touch keys they compute (presence cleanup), so this needs a
//! standalone Redis (or a primary with replicas), not Redis Cluster.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use roomhub_core::{
    AppendRequest, DirectMessage, HistoryLimits, NodeId, RemoteMember, RoomName, RoomSnapshot,
    SequencedMessage, Timestamp, UserRef,
};
use tokio::sync::{Mutex, mpsc};

use crate::broker::{
    Broker, BrokerError, Event, Heartbeat, PresenceEvent, SubRequest, Subscription, channel,
    request_json, sequenced, snapshot,
};

const APPEND: &str = r"
-- KEYS: meta, log. ARGV: epoch if new, max length, ttl ms, request JSON, channel
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'head', 0)
end
local head = redis.call('HINCRBY', KEYS[1], 'head', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], head .. '-1', 'm', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[5], 'm ' .. head .. ' ' .. epoch .. ' ' .. ARGV[4])
return {epoch, head}
";

const OPEN: &str = r"
-- KEYS: meta, log, presence, nodes. ARGV: epoch if new, ttl ms, after, max count
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members = {}
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  local node = string.match(all[i], '^(%d+):')
  local deadline = node and redis.call('ZSCORE', KEYS[4], node)
  if deadline and tonumber(deadline) > now then
    table.insert(members, all[i + 1])
  end
end
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'head')
if not meta[1] then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'head', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {ARGV[1], 0, {}, members}
end
local head = tonumber(meta[2])
local start = math.max(tonumber(ARGV[3]), head - tonumber(ARGV[4]))
local entries = redis.call('XRANGE', KEYS[2], '(' .. start .. '-1', '+')
return {meta[1], head, entries, members}
";

const PRESENCE: &str = r"
-- KEYS: presence, node rooms. ARGV: field, member JSON, present, channel, room, event
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[5])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', ARGV[4], ARGV[6])
return 1
";

const HEARTBEAT: &str = r"
-- KEYS: nodes, online. ARGV: node, ttl ms, online count
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mine = redis.call('ZSCORE', KEYS[1], ARGV[1])
local was_gone = (not mine) or tonumber(mine) <= now
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, d in ipairs(dead) do
  if d ~= ARGV[1] then
  local rooms_key = 'rh:node:' .. d .. ':rooms'
  for _, room in ipairs(redis.call('SMEMBERS', rooms_key)) do
    local pkey = 'rh:presence:' .. room
    for _, f in ipairs(redis.call('HKEYS', pkey)) do
      if string.sub(f, 1, #d + 1) == d .. ':' then
        redis.call('HDEL', pkey, f)
      end
    end
  end
  redis.call('DEL', rooms_key)
  redis.call('ZREM', KEYS[1], d)
  redis.call('HDEL', KEYS[2], d)
  redis.call('PUBLISH', 'rh:nodes', 'g ' .. d)
  end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('PUBLISH', 'rh:nodes', 'h ' .. ARGV[1])
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
local counts = redis.call('HMGET', KEYS[2], unpack(live))
return {live, counts, was_gone and 1 or 0}
";

pub struct RedisBroker {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    limits: HistoryLimits,
    node_ttl: Duration,
    open: Script,
    presence: Script,
    heartbeat: Script,
}

/// How long one command may take before the broker counts as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl RedisBroker {
    pub fn new(url: &str, limits: HistoryLimits, node_ttl: Duration) -> Result<Self, BrokerError> {
        Ok(RedisBroker {
            client: redis::Client::open(url)?,
            conn: Mutex::new(None),
            limits,
            node_ttl,
            open: Script::new(OPEN),
            presence: Script::new(PRESENCE),
            heartbeat: Script::new(HEARTBEAT),
        })
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
        .map_err(|_| BrokerError("connecting to redis timed out".into()))??;
        *slot = Some(c.clone());
        Ok(c)
    }

    fn ttl_ms(&self) -> u64 {
        self.limits.max_age_ms.max(1)
    }
}

fn meta_key(room: &str) -> String {
    format!("rh:room:{room}:meta")
}
fn log_key(room: &str) -> String {
    format!("rh:room:{room}:log")
}
fn presence_key(room: &str) -> String {
    format!("rh:presence:{room}")
}

fn bad(what: &str) -> BrokerError {
    BrokerError(format!("unexpected reply from redis: {what}"))
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
    async fn append(&self, batch: &[AppendRequest]) -> Result<Vec<SequencedMessage>, BrokerError> {
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        let jsons: Vec<String> = batch.iter().map(request_json).collect();
        for (request, json) in batch.iter().zip(&jsons) {
            let room = request.room.as_str();
            // EVAL, not EVALSHA: a pipeline cannot reload a script that a
            // restarted Redis forgot, and order matters here.
            pipe.cmd("EVAL")
                .arg(APPEND)
                .arg(2)
                .arg(meta_key(room))
                .arg(log_key(room))
                .arg(crate::store::new_epoch())
                .arg(self.limits.max_messages.max(1))
                .arg(self.ttl_ms())
                .arg(json)
                .arg(channel::room(room));
        }
        let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
        if replies.len() != batch.len() {
            return Err(bad("append batch length"));
        }
        let mut out = Vec::with_capacity(batch.len());
        for (request, reply) in batch.iter().zip(&replies) {
            let parts = array(reply).ok_or_else(|| bad("append"))?;
            let (Some(epoch), Some(offset)) =
                (parts.first().and_then(text), parts.get(1).and_then(int))
            else {
                return Err(bad("append fields"));
            };
            out.push(sequenced(request.clone(), &epoch, offset));
        }
        Ok(out)
    }

    async fn open(
        &self,
        room: &RoomName,
        after: Option<u64>,
        now: Timestamp,
    ) -> Result<RoomSnapshot, BrokerError> {
        let mut conn = self.conn().await?;
        let name = room.as_str();
        let reply: Value = self
            .open
            .key(meta_key(name))
            .key(log_key(name))
            .key(presence_key(name))
            .key("rh:nodes")
            .arg(crate::store::new_epoch())
            .arg(self.ttl_ms())
            .arg(after.unwrap_or(0))
            .arg(self.limits.max_messages)
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
                .and_then(|id| id.split_once('-').and_then(|(o, _)| o.parse().ok()))
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
            self.limits.max_age_ms,
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
        let _: Value = self
            .presence
            .key(presence_key(name))
            .key(format!("rh:node:{}:rooms", node.0))
            .arg(format!("{}:{}", node.0, user.id))
            .arg(member)
            .arg(if present { "1" } else { "0" })
            .arg(channel::room(name))
            .arg(name)
            .arg(event)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn heartbeat(&self, node: NodeId, online: u64) -> Result<Heartbeat, BrokerError> {
        let mut conn = self.conn().await?;
        let reply: Value = self
            .heartbeat
            .key("rh:nodes")
            .key("rh:online")
            .arg(node.0)
            .arg(self.node_ttl.as_millis() as u64)
            .arg(online)
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
        let receivers: usize = redis::cmd("PUBLISH")
            .arg(channel::user(&message.to))
            .arg(payload)
            .query_async(&mut conn)
            .await?;
        Ok(receivers)
    }

    async fn subscribe(&self) -> Result<Subscription, BrokerError> {
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT * 2, self.client.get_async_pubsub())
            .await
            .map_err(|_| BrokerError("connecting to redis timed out".into()))??;
        let (mut sink, mut stream) = pubsub.split();
        let (control, mut requests) = mpsc::unbounded_channel::<SubRequest>();
        let (deliver, messages) = mpsc::unbounded_channel::<Bytes>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    req = requests.recv() => match req {
                        Some(SubRequest::Subscribe(ch, done)) => {
                            let r = tokio::time::timeout(RESPONSE_TIMEOUT, sink.subscribe(&ch)).await;
                            let ok = matches!(r, Ok(Ok(())));
                            let _ = done.send(if ok { Ok(()) } else {
                                Err(BrokerError("subscribe failed".into()))
                            });
                            if !ok {
                                return;
                            }
                        }
                        Some(SubRequest::Unsubscribe(ch)) => {
                            if sink.unsubscribe(&ch).await.is_err() {
                                return;
                            }
                        }
                        None => return,
                    },
                    msg = stream.next() => match msg {
                        Some(msg) => {
                            let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                            if deliver.send(payload).is_err() {
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
}
