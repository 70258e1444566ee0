//! One contract, every topology: each case runs against the Redis adapter (on
//! a real `redis-server` started here), against the simulated broker that
//! turmoil worlds use, and against both sharded over two brokers, so none
//! can drift apart.

use std::time::Duration;

use roomhub_core::{AppendRequest, DirectMessage, HistoryLimits, NodeId, RoomName, UserRef};
use roomhub_net::clock::Clock;
use roomhub_net::cluster::broker::{Broker, Delivery, SubRequest, Subscription};
use roomhub_net::cluster::keys::channel;
use roomhub_net::cluster::redis::RedisBroker;
use roomhub_net::cluster::redis::cluster::RedisClusterBroker;
use roomhub_net::cluster::sharded::{ShardedBroker, shard_of};
use roomhub_net::cluster::wire::{Event, PresenceEvent};
use roomhub_sim::broker::{SimBroker, SimBrokerConfig, serve, tcp_connector};
use roomhub_tests::redis::{RedisCluster, RedisServer};
use tokio::sync::oneshot;

const MAX_MESSAGES: usize = 5;
const MAX_AGE_MS: u64 = 3_600_000;
const TTL: Duration = Duration::from_millis(300);

fn user(id: &str) -> UserRef {
    UserRef {
        id: id.into(),
        name: id.into(),
    }
}

fn room(name: &str) -> RoomName {
    RoomName::parse(name, 64).unwrap()
}

fn request(r: &str, content: &str) -> AppendRequest {
    AppendRequest {
        room: room(r),
        sender: user("alice"),
        content: content.into(),
        reply_to: None,
        timestamp: Clock::system().now(),
        origin: None,
        ticket: None,
    }
}

async fn subscribed(broker: &impl Broker, channels: &[String]) -> Subscription {
    let mut sub = broker.subscribe().await.expect("subscribe");
    for ch in channels {
        let (tx, _rx) = oneshot::channel();
        sub.control
            .send(SubRequest::Subscribe(ch.clone(), tx))
            .await
            .unwrap();
        // The confirmation arrives in order with the messages.
        expect_confirmed(&mut sub).await;
    }
    sub
}

async fn expect_confirmed(sub: &mut Subscription) {
    let confirmed = tokio::time::timeout(Duration::from_secs(5), sub.messages.recv())
        .await
        .expect("confirmed in time");
    assert!(
        matches!(confirmed, Some(Delivery::Subscribed(_))),
        "{confirmed:?}"
    );
}

async fn next_event(sub: &mut Subscription) -> Event {
    let delivery = tokio::time::timeout(Duration::from_secs(5), sub.messages.recv())
        .await
        .expect("an event in time")
        .expect("session open");
    let Delivery::Message(payload) = delivery else {
        panic!("a message, not {delivery:?}");
    };
    Event::decode(&payload).expect("a well-formed event")
}

/// The next event that is not a heartbeat beat.
async fn next_non_beat(sub: &mut Subscription) -> Event {
    loop {
        match next_event(sub).await {
            Event::Beat(_) => {}
            other => return other,
        }
    }
}

async fn no_event(sub: &mut Subscription) {
    let got = tokio::time::timeout(Duration::from_millis(200), sub.messages.recv()).await;
    assert!(got.is_err(), "unexpected event: {got:?}");
}

/// Appends are numbered in order, one epoch per room, published in order to
/// subscribers, and history is capped and readable after an offset.
async fn appends_are_ordered_published_and_capped(b: &impl Broker) {
    let mut sub = subscribed(b, &[channel::room("r1")]).await;
    let batch: Vec<AppendRequest> = (1..=4).map(|i| request("r1", &format!("m{i}"))).collect();
    let first = b.append(&batch).await.unwrap();
    let second = b
        .append(&[request("r1", "m5"), request("r1", "m6")])
        .await
        .unwrap();
    let all: Vec<_> = first.into_iter().chain(second).collect();
    assert_eq!(
        all.iter().map(|m| m.offset).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert!(all.iter().all(|m| m.epoch == all[0].epoch));
    assert_eq!(&*all[5].content, "m6");
    assert_eq!(&*all[0].id, format!("{}-1", all[0].epoch.as_str()));
    for expected in &all {
        match next_event(&mut sub).await {
            Event::Message(m) => assert_eq!(&m, expected),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    let now = Clock::system().now();
    let snap = b.open(&room("r1"), None, now).await.unwrap();
    assert_eq!((snap.head, snap.epoch.clone()), (6, all[0].epoch.clone()));
    // Capped at MAX_MESSAGES: the oldest is gone.
    assert_eq!(
        snap.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        [2, 3, 4, 5, 6]
    );
    assert_eq!(snap.messages[4], all[5]);
    let at = |epoch: &roomhub_core::Epoch| roomhub_core::Position {
        epoch: epoch.clone(),
        offset: 4,
    };
    let after = b
        .open(&room("r1"), Some(&at(&snap.epoch)), now)
        .await
        .unwrap();
    assert_eq!(
        after.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        [5, 6]
    );
    // A position in an epoch the room no longer has: everything retained
    // (the reader is moving to the room's current epoch).
    let other = roomhub_core::Epoch::new("an-older-epoch");
    let moved = b.open(&room("r1"), Some(&at(&other)), now).await.unwrap();
    assert_eq!(moved.messages.len(), 5);
    // Another room has its own order and epoch.
    let other = b.append(&[request("r2", "x")]).await.unwrap();
    assert_eq!(other[0].offset, 1);
    assert_ne!(other[0].epoch, all[0].epoch);
}

/// One batch over several rooms: each room keeps its own order and its
/// own new epoch, and each room's messages are published in its order
/// (rooms on different shards have no order between them).
async fn a_batch_over_rooms_keeps_each_rooms_order(b: &impl Broker) {
    let mut sub = subscribed(b, &[channel::room("b1"), channel::room("b2")]).await;
    let batch = [request("b1", "x"), request("b2", "y"), request("b1", "z")];
    let stored = b.append(&batch).await.unwrap();
    assert_eq!(
        stored
            .iter()
            .map(|m| (m.room.as_str(), m.offset))
            .collect::<Vec<_>>(),
        [("b1", 1), ("b2", 1), ("b1", 2)]
    );
    assert_eq!(stored[0].epoch, stored[2].epoch);
    assert_ne!(stored[0].epoch, stored[1].epoch);
    let mut published = Vec::new();
    for _ in &stored {
        match next_event(&mut sub).await {
            Event::Message(m) => published.push(m),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    for room in ["b1", "b2"] {
        let of_room = |all: &[roomhub_core::SequencedMessage]| {
            all.iter()
                .filter(|m| m.room.as_str() == room)
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(of_room(&published), of_room(&stored), "{room}");
    }
    assert!(b.append(&[]).await.unwrap().is_empty());
}

/// A room never seen gets an epoch on open, and keeps it.
async fn open_gives_new_rooms_a_stable_epoch(b: &impl Broker) {
    let now = Clock::system().now();
    let first = b.open(&room("fresh"), None, now).await.unwrap();
    assert_eq!((first.head, first.messages.len()), (0, 0));
    let again = b.open(&room("fresh"), None, now).await.unwrap();
    assert_eq!(again.epoch, first.epoch);
    let stored = b.append(&[request("fresh", "hi")]).await.unwrap();
    assert_eq!((stored[0].offset, &stored[0].epoch), (1, &first.epoch));
}

/// Presence is recorded per (node, user), published, and shown only for
/// live nodes; a node whose TTL runs out is removed and announced gone.
async fn presence_follows_live_nodes(b: &impl Broker) {
    let (n1, n2) = (NodeId(11), NodeId(22));
    let mut sub = subscribed(b, &[channel::room("p"), channel::NODES.to_string()]).await;
    b.heartbeat(n1, 3).await.unwrap();
    // Every heartbeat is published as a beat on the nodes channel.
    assert_eq!(next_event(&mut sub).await, Event::Beat(n1));
    let beat = b.heartbeat(n2, 4).await.unwrap();
    assert!(beat.was_gone, "a new node announces itself");
    let live = beat.live;
    assert!(
        live.contains(&(n1, 3)) && live.contains(&(n2, 4)),
        "{live:?}"
    );
    assert!(!b.heartbeat(n2, 4).await.unwrap().was_gone);
    b.presence(n1, &room("p"), &user("ann"), true)
        .await
        .unwrap();
    b.presence(n2, &room("p"), &user("ben"), true)
        .await
        .unwrap();
    for (node, id) in [(n1, "ann"), (n2, "ben")] {
        let expected = Event::Presence(PresenceEvent {
            room: room("p"),
            node,
            user: user(id),
            present: true,
        });
        assert_eq!(next_non_beat(&mut sub).await, expected);
    }
    let now = Clock::system().now();
    let mut members: Vec<(u64, String)> = b
        .open(&room("p"), None, now)
        .await
        .unwrap()
        .presence
        .into_iter()
        .map(|m| (m.node.0, m.user.id.to_string()))
        .collect();
    members.sort();
    assert_eq!(members, [(11, "ann".into()), (22, "ben".into())]);
    b.presence(n1, &room("p"), &user("ann"), false)
        .await
        .unwrap();
    match next_non_beat(&mut sub).await {
        Event::Presence(p) => assert!(!p.present && p.node == n1),
        other => panic!("{other:?}"),
    }
    // n2 stops its heartbeat; n1 keeps going and, once n2's TTL is over,
    // its heartbeat removes n2.
    b.presence(n1, &room("p"), &user("ann"), true)
        .await
        .unwrap();
    next_non_beat(&mut sub).await;
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    // n1 was late too, but a node never declares itself gone: it is told
    // to announce its presence again instead.
    let beat = b.heartbeat(n1, 1).await.unwrap();
    assert_eq!(beat.live, [(n1, 1)]);
    assert!(beat.was_gone);
    assert_eq!(next_non_beat(&mut sub).await, Event::NodeGone(n2));
    let now = Clock::system().now();
    let snap = b.open(&room("p"), None, now).await.unwrap();
    assert_eq!(
        snap.presence
            .iter()
            .map(|m| m.user.id.to_string())
            .collect::<Vec<_>>(),
        ["ann"]
    );
}

/// Direct messages reach the recipient's channel; the count says whether
/// anyone was listening. Unsubscribing stops delivery.
async fn relays_count_receivers_and_unsubscribe_stops_delivery(b: &impl Broker) {
    let message = DirectMessage {
        id: "d1".into(),
        from: user("alice"),
        to: "bob".into(),
        content: "psst".into(),
        timestamp: Clock::system().now(),
        origin: None,
    };
    assert_eq!(b.relay(&message).await.unwrap(), 0);
    let mut sub = subscribed(b, &[channel::user("bob"), channel::room("u")]).await;
    assert_eq!(b.relay(&message).await.unwrap(), 1);
    assert_eq!(next_event(&mut sub).await, Event::Direct(message.clone()));
    sub.control
        .send(SubRequest::Unsubscribe(channel::user("bob")))
        .await
        .unwrap();
    // The room channel still works, so the unsubscribe has been processed
    // once this arrives.
    b.append(&[request("u", "still here")]).await.unwrap();
    assert!(matches!(next_event(&mut sub).await, Event::Message(_)));
    assert_eq!(b.relay(&message).await.unwrap(), 0);
    no_event(&mut sub).await;
}

/// A room's keys expire after the history age limit without an append:
/// by then nothing in it is recoverable, and its next use starts a new
/// epoch (clients are told `recovered: false`), never an old lineage
/// with a silent gap.
async fn idle_rooms_expire_into_a_new_epoch(b: &impl Broker) {
    // A busy room outlives the age limit: every append keeps it (Redis
    // pushes its expiry back at most every eighth of the limit).
    let busy = b.append(&[request("busy", "0")]).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_millis(SHORT_AGE_MS * 5 / 2);
    let mut sent = 1;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let more = b.append(&[request("busy", "more")]).await.unwrap();
        sent += 1;
        assert_eq!((&more[0].epoch, more[0].offset), (&busy[0].epoch, sent));
    }
    let first = b.append(&[request("idle", "old")]).await.unwrap();
    let now = Clock::system().now();
    let snap = b.open(&room("idle"), None, now).await.unwrap();
    assert_eq!((snap.epoch.clone(), snap.head), (first[0].epoch.clone(), 1));
    tokio::time::sleep(Duration::from_millis(SHORT_AGE_MS + 200)).await;
    let now = Clock::system().now();
    let snap = b.open(&room("idle"), None, now).await.unwrap();
    assert_ne!(snap.epoch, first[0].epoch);
    assert_eq!((snap.head, snap.messages.len()), (0, 0));
}

/// What was published to a session before a subscription is confirmed
/// arrives before the confirmation: a room snapshot read after it is never
/// overtaken by an older publication. (With shards, this holds for what was
/// published where the new channel lives: the user channel `o1` shares the
/// room `o1`'s hash tag, so its shard.)
async fn confirmations_come_after_earlier_publications(b: &impl Broker) {
    let mut sub = subscribed(b, &[channel::room("o1")]).await;
    b.append(&[request("o1", "first")]).await.unwrap();
    let (tx, _rx) = oneshot::channel();
    sub.control
        .send(SubRequest::Subscribe(channel::user("o1"), tx))
        .await
        .unwrap();
    assert!(matches!(next_event(&mut sub).await, Event::Message(_)));
    expect_confirmed(&mut sub).await;
}

/// A reload's history limits: this node's opens return the newest so
/// many from then on, and all retained ones once the limit is back up.
async fn new_history_limits_apply_to_later_opens(b: &impl Broker) {
    let batch: Vec<AppendRequest> = (1..=4).map(|i| request("h1", &format!("m{i}"))).collect();
    b.append(&batch).await.unwrap();
    let offsets = |snap: &roomhub_core::RoomSnapshot| {
        snap.messages.iter().map(|m| m.offset).collect::<Vec<_>>()
    };
    b.set_history(2, MAX_AGE_MS);
    let now = Clock::system().now();
    assert_eq!(
        offsets(&b.open(&room("h1"), None, now).await.unwrap()),
        [3, 4]
    );
    b.set_history(MAX_MESSAGES, MAX_AGE_MS);
    assert_eq!(
        offsets(&b.open(&room("h1"), None, now).await.unwrap()),
        [1, 2, 3, 4]
    );
}

/// The history age limit of the expiry case.
const SHORT_AGE_MS: u64 = 400;

async fn suite(b: &impl Broker) {
    appends_are_ordered_published_and_capped(b).await;
    a_batch_over_rooms_keeps_each_rooms_order(b).await;
    open_gives_new_rooms_a_stable_epoch(b).await;
    presence_follows_live_nodes(b).await;
    relays_count_receivers_and_unsubscribe_stops_delivery(b).await;
    confirmations_come_after_earlier_publications(b).await;
    new_history_limits_apply_to_later_opens(b).await;
}

/// Each room lives on its shard alone, and rooms spread over every shard;
/// a direct message finds its user on the user's shard.
async fn rooms_live_on_their_shard<B: Broker>(b: &ShardedBroker<B>) {
    let names: Vec<String> = (0..16).map(|i| format!("spread{i}")).collect();
    let batch: Vec<AppendRequest> = names.iter().map(|n| request(n, "x")).collect();
    b.append(&batch).await.unwrap();
    let shards = b.shards();
    let mut used = vec![0; shards.len()];
    let now = Clock::system().now();
    for name in &names {
        let home = shard_of(name, shards.len());
        used[home] += 1;
        for (i, shard) in shards.iter().enumerate() {
            let head = shard.open(&room(name), None, now).await.unwrap().head;
            assert_eq!(head, u64::from(i == home), "{name} on shard {i}");
        }
    }
    assert!(used.iter().all(|&n| n > 0), "rooms per shard: {used:?}");
}

/// A sharded session is one session per shard: when any of them ends, the
/// merged one ends too (the node then resyncs every room).
async fn a_lost_shard_ends_the_session(sub: &mut Subscription) {
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if sub.messages.recv().await.is_none() {
                return;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the merged session outlived a shard's");
}

#[tokio::test]
async fn two_redis_shards_keep_the_contract() {
    let (Some(r1), Some(mut r2)) = (RedisServer::start(), RedisServer::start()) else {
        return;
    };
    let limits = HistoryLimits {
        max_messages: MAX_MESSAGES,
        max_age_ms: MAX_AGE_MS,
        max_rooms: 1000,
        max_bytes: 0,
    };
    let shard = |r: &RedisServer| RedisBroker::new(&r.url(), limits, TTL).unwrap();
    let broker = ShardedBroker::new(vec![shard(&r1), shard(&r2)]);
    suite(&broker).await;
    rooms_live_on_their_shard(&broker).await;
    let mut sub = subscribed(&broker, &[channel::NODES.to_string()]).await;
    r2.kill();
    a_lost_shard_ends_the_session(&mut sub).await;
}

/// A three-master Redis Cluster made by the test: the same contract, rooms
/// spread over every master, publications by sharded pub/sub.
#[tokio::test]
async fn a_redis_cluster_keeps_the_contract() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let limits = HistoryLimits {
        max_messages: MAX_MESSAGES,
        max_age_ms: MAX_AGE_MS,
        max_rooms: 1000,
        max_bytes: 0,
    };
    let seeds: Vec<String> = cluster.nodes.iter().map(RedisServer::url).collect();
    let broker = RedisClusterBroker::new(&seeds, limits, TTL).unwrap();
    suite(&broker).await;
    let batch: Vec<AppendRequest> = (0..16)
        .map(|i| request(&format!("spread{i}"), "x"))
        .collect();
    broker.append(&batch).await.unwrap();
    for node in &cluster.nodes {
        let keys = node.command("DBSIZE");
        assert!(keys.starts_with(':') && keys != ":0", "{keys}");
    }
    let short = HistoryLimits {
        max_age_ms: SHORT_AGE_MS,
        ..limits
    };
    idle_rooms_expire_into_a_new_epoch(&RedisClusterBroker::new(&seeds, short, TTL).unwrap()).await;
}

#[tokio::test]
async fn two_simulated_shards_keep_the_contract() {
    let config = SimBrokerConfig {
        seed: 7,
        max_messages: MAX_MESSAGES,
        max_age_ms: MAX_AGE_MS,
        node_ttl_ms: TTL.as_millis() as u64,
    };
    let mut servers = Vec::new();
    let mut shards = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        servers.push(tokio::spawn(serve(listener, config)));
        shards.push(SimBroker::new(tcp_connector(addr), MAX_AGE_MS));
    }
    let broker = ShardedBroker::new(shards);
    suite(&broker).await;
    rooms_live_on_their_shard(&broker).await;
    servers.iter().for_each(|s| s.abort());
}

#[tokio::test]
async fn the_redis_broker_keeps_the_contract() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let limits = HistoryLimits {
        max_messages: MAX_MESSAGES,
        max_age_ms: MAX_AGE_MS,
        max_rooms: 1000,
        max_bytes: 0,
    };
    let broker = RedisBroker::new(&redis.url(), limits, TTL).unwrap();
    suite(&broker).await;
    // Scripts run by hash; a Redis that forgot them (a restart, SCRIPT
    // FLUSH) answers NOSCRIPT and they are loaded again.
    assert_eq!(redis.command("SCRIPT FLUSH"), "+OK");
    let next = broker.append(&[request("r1", "again")]).await.unwrap();
    assert_eq!(next[0].offset, 7);
    let short = HistoryLimits {
        max_age_ms: SHORT_AGE_MS,
        ..limits
    };
    idle_rooms_expire_into_a_new_epoch(&RedisBroker::new(&redis.url(), short, TTL).unwrap()).await;
}

#[tokio::test]
async fn the_simulated_broker_keeps_the_contract() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = SimBrokerConfig {
        seed: 7,
        max_messages: MAX_MESSAGES,
        max_age_ms: MAX_AGE_MS,
        node_ttl_ms: TTL.as_millis() as u64,
    };
    let server = tokio::spawn(serve(listener, config));
    suite(&SimBroker::new(tcp_connector(addr), MAX_AGE_MS)).await;
    server.abort();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let short = SimBrokerConfig {
        max_age_ms: SHORT_AGE_MS,
        ..config
    };
    let server = tokio::spawn(serve(listener, short));
    idle_rooms_expire_into_a_new_epoch(&SimBroker::new(tcp_connector(addr), SHORT_AGE_MS)).await;
    server.abort();
}
