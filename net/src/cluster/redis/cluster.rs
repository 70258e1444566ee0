//! The broker contract on a Redis Cluster (`--redis-cluster seed,…`): one
//! [`RedisBroker`] per master, rooms placed by the slot of their hash tag
//! ([`Placement::Slots`]), everything else as with listed shards
//! ([`ShardedBroker`]): a room's keys and channel live on its master, node
//! liveness on every master (under a tag of one of its slots), a user's
//! channel on the master of the user's slot, and publications travel by
//! sharded pub/sub, so each master carries only its own rooms' traffic.
//!
//! The slot map is read (`CLUSTER SLOTS`, from the first seed that
//! answers) when the node first needs it and again whenever its
//! subscription session starts over, which every broker failure causes: a
//! failover or a resharding (answered `MOVED`, or a master gone) costs one
//! resync of every room, as any broker loss does.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};
use roomhub_core::{
    AppendRequest, DirectMessage, HistoryLimits, NodeId, Position, RoomName, RoomSnapshot,
    SequencedMessage, Timestamp, UserRef,
};

use super::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT, RedisBroker, array, int, text};
use crate::cluster::broker::{Broker, BrokerError, Heartbeat, Subscription};
use crate::cluster::sharded::{Placement, SLOTS, ShardedBroker, slot_of};

/// Masters by address, and which of them serves each slot.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SlotMap {
    masters: Vec<(String, u16)>,
    owners: Vec<u16>,
}

/// A Redis Cluster, reached through its seeds.
pub struct RedisClusterBroker {
    seeds: Vec<ConnectionInfo>,
    limits: std::sync::Mutex<HistoryLimits>,
    node_ttl: Duration,
    current: RwLock<Option<(SlotMap, Arc<ShardedBroker<RedisBroker>>)>>,
}

impl RedisClusterBroker {
    /// `seeds`: URLs of some of the cluster's nodes (their credentials are
    /// used for every master).
    pub fn new(
        seeds: &[String],
        limits: HistoryLimits,
        node_ttl: Duration,
    ) -> Result<Self, BrokerError> {
        let seeds = seeds
            .iter()
            .map(|url| url.as_str().into_connection_info())
            .collect::<Result<Vec<_>, _>>()?;
        if seeds.is_empty() {
            return Err(BrokerError::Reply("no Redis Cluster seed".into()));
        }
        Ok(RedisClusterBroker {
            seeds,
            limits: std::sync::Mutex::new(limits),
            node_ttl,
            current: RwLock::new(None),
        })
    }

    fn current(&self) -> Option<Arc<ShardedBroker<RedisBroker>>> {
        let current = self.current.read().expect("not poisoned");
        current.as_ref().map(|(_, broker)| broker.clone())
    }

    /// The masters as last read, reading them first if need be.
    async fn masters(&self) -> Result<Arc<ShardedBroker<RedisBroker>>, BrokerError> {
        match self.current() {
            Some(broker) => Ok(broker),
            None => self.refresh().await,
        }
    }

    /// Reads the slot map again; keeps the masters' connections when it did
    /// not change.
    async fn refresh(&self) -> Result<Arc<ShardedBroker<RedisBroker>>, BrokerError> {
        let map = self.read_slot_map().await?;
        let mut current = self.current.write().expect("not poisoned");
        if let Some((known, broker)) = current.as_ref()
            && *known == map
        {
            return Ok(broker.clone());
        }
        let limits = *self.limits.lock().unwrap_or_else(|e| e.into_inner());
        let shards = map
            .masters
            .iter()
            .enumerate()
            .map(|(i, (host, port))| {
                let tag = home_tag(&map.owners, i);
                let info = self.seeds[0]
                    .clone()
                    .set_addr(ConnectionAddr::Tcp(host.clone(), *port));
                RedisBroker::on_cluster_master(info, &tag, limits, self.node_ttl)
            })
            .collect();
        let placement = Placement::Slots(map.owners.iter().copied().collect());
        let broker = Arc::new(ShardedBroker::placed(shards, placement));
        *current = Some((map, broker.clone()));
        Ok(broker)
    }

    async fn read_slot_map(&self) -> Result<SlotMap, BrokerError> {
        let mut last = BrokerError::Unreachable("no seed answered".into());
        for seed in &self.seeds {
            match slot_map_from(seed).await {
                Ok(map) => return Ok(map),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// `CLUSTER SLOTS` from one node: every slot must be served.
async fn slot_map_from(seed: &ConnectionInfo) -> Result<SlotMap, BrokerError> {
    let client = redis::Client::open(seed.clone())?;
    let reply: Value = tokio::time::timeout(RESPONSE_TIMEOUT + CONNECT_TIMEOUT, async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
    })
    .await
    .map_err(|_| BrokerError::TimedOut)??;
    let bad = || BrokerError::Reply("unexpected CLUSTER SLOTS reply".into());
    let mut ranges: Vec<(u16, u16, (String, u16))> = Vec::new();
    for range in array(&reply).ok_or_else(bad)? {
        let range = array(range).ok_or_else(bad)?;
        let (Some(first), Some(last), Some(master)) = (
            range.first().and_then(int),
            range.get(1).and_then(int),
            range.get(2).and_then(array),
        ) else {
            return Err(bad());
        };
        let host = master.first().and_then(text).ok_or_else(bad)?;
        let port = master.get(1).and_then(int).ok_or_else(bad)?;
        let (Ok(first), Ok(last), Ok(port)) = (
            u16::try_from(first),
            u16::try_from(last),
            u16::try_from(port),
        ) else {
            return Err(bad());
        };
        ranges.push((first, last, (host, port)));
    }
    ranges.sort();
    let mut masters: Vec<(String, u16)> = Vec::new();
    let mut owners = vec![u16::MAX; usize::from(SLOTS)];
    for (first, last, master) in ranges {
        let index = match masters.iter().position(|m| *m == master) {
            Some(i) => i,
            None => {
                masters.push(master);
                masters.len() - 1
            }
        };
        for slot in first..=last.min(SLOTS - 1) {
            owners[usize::from(slot)] = u16::try_from(index).map_err(|_| bad())?;
        }
    }
    if owners.contains(&u16::MAX) {
        return Err(BrokerError::Reply(
            "the Redis Cluster does not serve every slot".into(),
        ));
    }
    Ok(SlotMap { masters, owners })
}

/// The first of `0`, `1`, `2`, … whose slot master `index` serves: the hash
/// tag of that master's node-liveness keys.
fn home_tag(owners: &[u16], index: usize) -> String {
    (0u32..)
        .map(|k| k.to_string())
        .find(|tag| usize::from(owners[usize::from(slot_of(tag))]) == index)
        .expect("every master serves some slot")
}

impl Broker for RedisClusterBroker {
    async fn append(&self, batch: &[AppendRequest]) -> Result<Vec<SequencedMessage>, BrokerError> {
        self.masters().await?.append(batch).await
    }

    async fn open(
        &self,
        room: &RoomName,
        after: Option<&Position>,
        now: Timestamp,
    ) -> Result<RoomSnapshot, BrokerError> {
        self.masters().await?.open(room, after, now).await
    }

    async fn end_lineage(&self, room: &RoomName) -> Result<(), BrokerError> {
        self.masters().await?.end_lineage(room).await
    }

    async fn presence(
        &self,
        node: NodeId,
        room: &RoomName,
        user: &UserRef,
        present: bool,
    ) -> Result<(), BrokerError> {
        let masters = self.masters().await?;
        masters.presence(node, room, user, present).await
    }

    async fn heartbeat(&self, node: NodeId, online: u64) -> Result<Heartbeat, BrokerError> {
        self.masters().await?.heartbeat(node, online).await
    }

    fn beats_per_heartbeat(&self) -> u64 {
        self.current().map_or(1, |b| b.beats_per_heartbeat())
    }

    async fn relay(&self, message: &DirectMessage) -> Result<usize, BrokerError> {
        self.masters().await?.relay(message).await
    }

    async fn to_nodes(&self, payload: Vec<u8>) -> Result<usize, BrokerError> {
        self.masters().await?.to_nodes(payload).await
    }

    /// A new session reads the slot map again first.
    async fn subscribe(&self) -> Result<Subscription, BrokerError> {
        self.refresh().await?.subscribe().await
    }

    /// For the masters now and those a new slot map brings.
    fn set_history(&self, max_messages: usize, max_age_ms: u64) {
        {
            let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
            limits.max_messages = max_messages;
            limits.max_age_ms = max_age_ms;
        }
        if let Some(masters) = self.current() {
            masters.set_history(max_messages, max_age_ms);
        }
    }
}
