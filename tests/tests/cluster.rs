//! Cluster mode against real `redis-server` processes started by the tests:
//! several roomhub nodes in this process, real WebSocket clients on each.
//! The cases that hold for any topology run on one Redis and on rooms
//! sharded over two or three (`--redis url1,url2`).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use roomhub_net::cluster::keys::tag;
use roomhub_net::cluster::sharded::{shard_of, slot_of};
use roomhub_tests::contents;
use roomhub_tests::proxy::Proxy;
use roomhub_tests::redis::{RedisCluster, RedisServer};
use roomhub_tests::server::{Client, PATIENCE, TestServer, eventually, http_post};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const API_KEY: &str = "cluster-api-key";

/// The Redis of one test's cluster, each a `redis-server` of its own
/// (`appendfsync always`): listed shards (`--redis url1,url2`), or a
/// three-master Redis Cluster (`--redis-cluster`).
enum Shards {
    Listed(Vec<RedisServer>),
    Cluster(RedisCluster),
}

impl Shards {
    fn start(n: usize) -> Option<Shards> {
        (0..n)
            .map(|_| RedisServer::start())
            .collect::<Option<Vec<_>>>()
            .map(Shards::Listed)
    }

    fn cluster() -> Option<Shards> {
        RedisCluster::start().map(Shards::Cluster)
    }

    /// A node on them.
    async fn node(&self) -> TestServer {
        match self {
            Shards::Listed(servers) => {
                let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
                TestServer::node(&urls.join(",")).await
            }
            Shards::Cluster(cluster) => TestServer::cluster_node(&cluster.seeds()).await,
        }
    }

    /// A node on them with the server API on (key [`API_KEY`]).
    async fn api_node(&self) -> TestServer {
        let (listed, seeds): (Vec<String>, Vec<String>) = match self {
            Shards::Listed(servers) => (servers.iter().map(RedisServer::url).collect(), vec![]),
            Shards::Cluster(cluster) => (
                vec![],
                cluster.seeds().split(',').map(str::to_string).collect(),
            ),
        };
        TestServer::clustered(|c| {
            c.redis = listed;
            c.redis_cluster = seeds;
            c.api_key = Some(API_KEY.into());
        })
        .await
    }

    fn count(&self) -> usize {
        match self {
            Shards::Listed(servers) => servers.len(),
            Shards::Cluster(cluster) => cluster.nodes.len(),
        }
    }

    /// The shard that keeps a room (or a user's channel): by its hash on
    /// listed shards; on the cluster, by its slot (`redis-cli --cluster
    /// create` gives each of the three masters a third of the slots, in
    /// the order they are listed).
    fn home(&self, name: &str) -> usize {
        match self {
            Shards::Listed(servers) => shard_of(name, servers.len()),
            Shards::Cluster(_) => match slot_of(&tag(name)) {
                0..=5460 => 0,
                5461..=10922 => 1,
                _ => 2,
            },
        }
    }

    fn holding(&mut self, name: &str) -> &mut RedisServer {
        let home = self.home(name);
        match self {
            Shards::Listed(servers) => &mut servers[home],
            Shards::Cluster(cluster) => &mut cluster.nodes[home],
        }
    }
}

async fn nodes(shards: &Shards, n: usize) -> Vec<TestServer> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(shards.node().await);
    }
    out
}

async fn say(c: &mut Client, room: &str, content: &str, id: &str) {
    c.send_json(
        json!({"type": "send_message", "room": room, "id": id, "payload": {"content": content}}),
    )
    .await;
}

async fn online(node: &TestServer) -> u64 {
    let (_, body) = node.get("/ws/online").await;
    serde_json::from_str::<Value>(&body).unwrap()["online"]
        .as_u64()
        .unwrap()
}

/// Every client sees one order per room: with one client per node sending
/// concurrently, each client's view (its own acked messages plus what it
/// received) is offsets 1..=total with the same content at each offset.
async fn one_order(node_count: usize, redis: Option<Shards>) {
    let Some(redis) = redis else {
        return;
    };
    let nodes = nodes(&redis, node_count).await;
    let per_client = 30;
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        clients.push(node.member(&format!("u{i}"), "g").await);
    }
    let total = per_client * node_count;
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut view: BTreeMap<u64, String> = BTreeMap::new();
            let mut sent = 0;
            while view.len() < total {
                if sent < per_client {
                    say(&mut c, "g", &format!("u{i}-{sent}"), &format!("{sent}")).await;
                    sent += 1;
                }
                // Drain what has arrived; wait when everything is sent.
                let wait = if sent < per_client { 1 } else { 10_000 };
                while let Ok(Some(msg)) =
                    tokio::time::timeout(Duration::from_millis(wait), c.ws.next()).await
                {
                    let Ok(Message::Text(t)) = msg else { continue };
                    let v: Value = serde_json::from_str(&t).unwrap();
                    match v["type"].as_str() {
                        Some("new_message") => {
                            let content = v["payload"]["content"].as_str().unwrap().to_string();
                            assert!(
                                !content.starts_with(&format!("u{i}-")),
                                "own message echoed"
                            );
                            view.insert(v["offset"].as_u64().unwrap(), content);
                        }
                        Some("ack") => {
                            let n: usize = v["id"].as_str().unwrap().parse().unwrap();
                            view.insert(
                                v["payload"]["offset"].as_u64().unwrap(),
                                format!("u{i}-{n}"),
                            );
                        }
                        Some("error") => panic!("error frame: {v}"),
                        _ => {}
                    }
                    if view.len() >= total {
                        break;
                    }
                }
            }
            view
        }));
    }
    let mut views = Vec::new();
    for t in tasks {
        views.push(t.await.unwrap());
    }
    let expected: Vec<u64> = (1..=total as u64).collect();
    for view in &views {
        assert_eq!(view.keys().copied().collect::<Vec<_>>(), expected);
        assert_eq!(view, &views[0], "every client sees the same order");
    }
}

#[tokio::test]
async fn two_nodes_agree_on_one_order_per_room() {
    one_order(2, Shards::start(1)).await;
}

#[tokio::test]
async fn three_nodes_agree_on_one_order_per_room() {
    one_order(3, Shards::start(1)).await;
}

#[tokio::test]
async fn three_nodes_on_three_shards_agree_on_one_order_per_room() {
    one_order(3, Shards::start(3)).await;
}

#[tokio::test]
async fn three_nodes_on_a_redis_cluster_agree_on_one_order_per_room() {
    one_order(3, Shards::cluster()).await;
}

#[tokio::test]
async fn presence_spans_nodes_once_per_user() {
    presence_once_per_user(1).await;
}

#[tokio::test]
async fn presence_spans_nodes_once_per_user_on_two_shards() {
    presence_once_per_user(2).await;
}

async fn presence_once_per_user(shards: usize) {
    let Some(redis) = Shards::start(shards) else {
        return;
    };
    let nodes = nodes(&redis, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut alice = a.member("alice", "g").await;
    let mut bob_b = b.client("bob").await;
    let info = bob_b.join("g").await;
    assert_eq!(
        info["payload"]["users"],
        json!([{"id": "bob", "name": "bob"}, {"id": "alice", "name": "alice"}])
    );
    let joined = alice.recv_type("user_joined").await;
    assert_eq!(joined["payload"]["id"], "bob");
    // Bob's second connection, on alice's node: no second user_joined.
    let mut bob_a = a.member("bob", "g").await;
    bob_b
        .send_json(json!({"type": "leave_room", "room": "g", "id": "l"}))
        .await;
    bob_b.recv_type("ack").await;
    // Bob is still in the room on node a.
    alice.silent_for(500).await;
    alice
        .send_json(json!({"type": "online_users", "room": "g"}))
        .await;
    let list = alice.recv_type("online_users").await;
    assert_eq!(list["payload"]["count"], 2);
    bob_a
        .send_json(json!({"type": "leave_room", "room": "g", "id": "l"}))
        .await;
    let left = alice.recv_type("user_left").await;
    assert_eq!(left["payload"]["id"], "bob");
    // Counted across the cluster: three connections (alice, bob twice).
    eventually("/ws/online counts both nodes", || async {
        online(a).await == 3 && online(b).await == 3
    })
    .await;
}

#[tokio::test]
async fn recovery_works_on_a_different_node() {
    recovery_on_another_node(Shards::start(1)).await;
}

#[tokio::test]
async fn recovery_works_on_a_different_node_on_two_shards() {
    recovery_on_another_node(Shards::start(2)).await;
}

#[tokio::test]
async fn recovery_works_on_a_different_node_on_a_redis_cluster() {
    recovery_on_another_node(Shards::cluster()).await;
}

#[tokio::test]
async fn history_is_served_on_every_node() {
    history_on_another_node(Shards::start(2)).await;
}

#[tokio::test]
async fn history_is_served_on_every_node_on_a_redis_cluster() {
    history_on_another_node(Shards::cluster()).await;
}

/// Messages said on one node are the history a fresh member of another
/// node pages through (the room opens there from the broker's log).
async fn history_on_another_node(redis: Option<Shards>) {
    let Some(redis) = redis else {
        return;
    };
    let nodes = nodes(&redis, 2).await;
    let mut alice = nodes[0].member("alice", "g").await;
    for i in 1..=4 {
        say(&mut alice, "g", &format!("m{i}"), &format!("{i}")).await;
        alice.recv_type("ack").await;
    }
    let mut bob = nodes[1].member("bob", "g").await;
    bob.send_json(json!({"type": "history", "room": "g", "id": "h", "payload": {"limit": 3}}))
        .await;
    let page = bob.recv_type("history").await;
    assert_eq!(contents(&page["payload"]["messages"]), ["m2", "m3", "m4"]);
    assert_eq!(page["payload"]["has_more"], true);
    assert_eq!(page["payload"]["offset"], 4);
}

async fn recovery_on_another_node(redis: Option<Shards>) {
    let Some(redis) = redis else {
        return;
    };
    let nodes = nodes(&redis, 2).await;
    let mut bob = nodes[0].client("bob").await;
    let info = bob.join("g").await;
    let epoch = info["payload"]["epoch"].as_str().unwrap().to_string();
    let offset = info["payload"]["offset"].as_u64().unwrap();
    drop(bob);
    let mut alice = nodes[1].member("alice", "g").await;
    for i in 0..3 {
        say(&mut alice, "g", &format!("m{i}"), &format!("{i}")).await;
        alice.recv_type("ack").await;
    }
    let mut bob = nodes[1].client("bob").await;
    bob.send_json(json!({"type": "join_room", "payload": {"room_id": "g", "since": {"offset": offset, "epoch": epoch}}}))
        .await;
    let (replayed, info) = bob.replayed_then_info().await;
    assert_eq!(info["payload"]["recovered"], true);
    assert_eq!(info["payload"]["epoch"], epoch.as_str());
    let contents: Vec<Value> = replayed
        .iter()
        .map(|v| v["payload"]["content"].clone())
        .collect();
    assert_eq!(contents, [json!("m0"), json!("m1"), json!("m2")]);
}

/// Sends a direct message until the recipient's node is reachable (it
/// subscribes to the user's channel as the user connects), and checks it
/// arrives.
async fn direct(from: &mut Client, from_id: &str, to: &mut Client, to_id: &str, content: &str) {
    let mut tries = 0;
    loop {
        from.send_json(
            json!({"type": "send_direct", "id": "d", "payload": {"to": to_id, "content": content}}),
        )
        .await;
        let v = from.recv().await;
        if v["type"] == "ack" {
            break;
        }
        assert_eq!(v["payload"]["code"], "RECIPIENT_OFFLINE", "{v}");
        tries += 1;
        assert!(tries < 50, "{to_id} never became reachable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dm = to.recv_type("direct_message").await;
    assert_eq!(dm["payload"]["content"], content);
    assert_eq!(dm["sender"]["id"], from_id);
}

/// The first names `prefix0`, `prefix1`, … that land on each shard, one
/// per shard.
fn one_per_shard(shards: &Shards, prefix: &str) -> Vec<String> {
    (0..shards.count())
        .map(|shard| {
            (0..)
                .map(|k| format!("{prefix}{k}"))
                .find(|name| shards.home(name) == shard)
                .expect("some name lands on every shard")
        })
        .collect()
}

/// Rooms on each shard and users whose channels are on different shards:
/// presence, messages and direct messages all cross nodes.
#[tokio::test]
async fn rooms_and_users_on_every_shard_work_across_nodes() {
    rooms_and_users_everywhere(Shards::start(2)).await;
}

#[tokio::test]
async fn rooms_and_users_on_every_redis_cluster_master_work_across_nodes() {
    rooms_and_users_everywhere(Shards::cluster()).await;
}

async fn rooms_and_users_everywhere(redis: Option<Shards>) {
    let Some(redis) = redis else {
        return;
    };
    let nodes = nodes(&redis, 2).await;
    let rooms = one_per_shard(&redis, "room");
    let users = one_per_shard(&redis, "user");
    let mut a = nodes[0].client(&users[0]).await;
    let mut b = nodes[1].client(&users[1]).await;
    for room in &rooms {
        a.join(room).await;
        let info = b.join(room).await;
        let present: Vec<&str> = info["payload"]["users"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|u| u["id"].as_str())
            .collect();
        if !present.contains(&users[0].as_str()) {
            // a's presence was still on its way to the room's shard when
            // b's node read the room: it arrives as a join.
            let joined = b.recv_type("user_joined").await;
            assert_eq!(joined["payload"]["id"], users[0].as_str(), "{room}");
        }
        let joined = a.recv_type("user_joined").await;
        assert_eq!(joined["payload"]["id"], users[1].as_str());
    }
    for room in &rooms {
        say(&mut a, room, &format!("hello {room}"), "m").await;
        a.recv_type("ack").await;
        let got = b.recv_type("new_message").await;
        assert_eq!(got["payload"]["content"], format!("hello {room}"));
        assert_eq!(got["offset"], 1);
    }
    direct(&mut a, &users[0], &mut b, &users[1], "to shard 1").await;
    // Every user's channel on its own shard.
    for (i, user) in users.iter().enumerate().skip(2) {
        let mut c = nodes[1].client(user).await;
        direct(&mut a, &users[0], &mut c, user, &format!("to shard {i}")).await;
    }
    direct(&mut b, &users[1], &mut a, &users[0], "to shard 0").await;
}

#[tokio::test]
async fn direct_messages_cross_nodes() {
    let Some(redis) = Shards::start(1) else {
        return;
    };
    let nodes = nodes(&redis, 2).await;
    let mut alice = nodes[0].client("alice").await;
    let mut bob = nodes[1].client("bob").await;
    direct(&mut alice, "alice", &mut bob, "bob", "hi").await;
    alice
        .send_json(
            json!({"type": "send_direct", "id": "x", "payload": {"to": "nobody", "content": "hi"}}),
        )
        .await;
    let e = alice.recv_type("error").await;
    assert_eq!(e["payload"]["code"], "RECIPIENT_OFFLINE");
}

#[tokio::test]
async fn the_publish_api_goes_through_the_cluster_order() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let node = TestServer::start_with(|c| {
        c.redis = vec![redis.url()];
        c.api_key = Some("k3y".into());
    })
    .await
    .ready()
    .await;
    let other = TestServer::node(&redis.url()).await;
    let mut alice = other.member("alice", "news").await;
    let body = r#"{"room":"news","payload":{"content":"from the backend"}}"#;
    assert_eq!(
        http_post(node.addr, "/api/publish", None, body).await.0,
        401
    );
    assert_eq!(
        http_post(node.addr, "/api/publish", Some("wrong"), body)
            .await
            .0,
        401
    );
    let (status, reply) = http_post(node.addr, "/api/publish", Some("k3y"), body).await;
    assert_eq!(status, 200, "{reply}");
    let reply: Value = serde_json::from_str::<Value>(&reply).unwrap()["result"].clone();
    assert_eq!(reply["offset"], 1);
    let msg = alice.recv_type("new_message").await;
    assert_eq!(msg["payload"]["content"], "from the backend");
    assert_eq!(msg["sender"]["id"], "server");
    assert_eq!(msg["id"], reply["message_id"]);
    // The node without a key does not offer the endpoint.
    assert_eq!(
        http_post(other.addr, "/api/publish", Some("k3y"), body)
            .await
            .0,
        404
    );
}

/// Receives new messages for `room` until `want` distinct offsets are held,
/// rejoining with `since` whenever the connection closes.
async fn collect_through_outages(
    node: &TestServer,
    user: &str,
    room: &str,
    mut last: (u64, String),
    mut c: Client,
    done: impl Fn(&BTreeMap<u64, String>) -> bool,
) -> BTreeMap<u64, String> {
    let mut got = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done(&got) {
        assert!(tokio::time::Instant::now() < deadline, "gave up: {got:?}");
        match tokio::time::timeout(PATIENCE, c.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("new_message") => {
                        let offset = v["offset"].as_u64().unwrap();
                        assert_eq!(offset, last.0 + 1, "no gap, no repeat: {v}");
                        last.0 = offset;
                        got.insert(offset, v["payload"]["content"].as_str().unwrap().into());
                    }
                    Some("room_info") => {
                        assert_eq!(v["payload"]["recovered"], true, "{v}");
                    }
                    _ => {}
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => {
                // Closed (or silent): come back with since.
                tokio::time::sleep(Duration::from_millis(100)).await;
                c = node.client(user).await;
                c.send_json(json!({"type": "join_room", "payload": {"room_id": room, "since": {"offset": last.0, "epoch": last.1}}}))
                    .await;
            }
        }
    }
    got
}

#[tokio::test]
async fn a_redis_restart_mid_traffic_loses_nothing_acked() {
    restart_mid_traffic(1).await;
}

/// The shard that keeps the room is killed with SIGKILL and restarted.
#[tokio::test]
async fn a_shard_restart_mid_traffic_loses_nothing_acked() {
    restart_mid_traffic(2).await;
}

async fn restart_mid_traffic(shards: usize) {
    let Some(mut shards) = Shards::start(shards) else {
        return;
    };
    let nodes = nodes(&shards, 2).await;
    let redis = shards.holding("g");
    let mut receiver = nodes[1].client("bob").await;
    let info = receiver.join("g").await;
    let epoch = info["payload"]["epoch"].as_str().unwrap().to_string();
    let mut sender = nodes[0].member("alice", "g").await;

    // The sender sends 60 messages, one at a time, retrying each until it
    // is acked; Redis is killed and restarted after the 20th ack.
    let sent = 60;
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut unavailable = 0;
    let mut i = 0;
    while i < sent {
        if acked.len() == 20 && unavailable == 0 {
            redis.kill();
        }
        say(&mut sender, "g", &format!("m{i}"), &format!("{i}")).await;
        let v = loop {
            let v = sender.recv().await;
            if v["type"] == "ack" || v["type"] == "error" {
                break v;
            }
        };
        if v["type"] == "ack" {
            acked.insert(v["payload"]["offset"].as_u64().unwrap(), format!("m{i}"));
            i += 1;
        } else {
            assert_eq!(v["payload"]["code"], "UNAVAILABLE", "{v}");
            unavailable += 1;
            if unavailable == 3 {
                redis.restart();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(unavailable >= 3, "the outage was seen by the sender");
    let last_acked = *acked.keys().last().unwrap();
    let got = collect_through_outages(&nodes[1], "bob", "g", (0, epoch), receiver, |got| {
        got.keys().last().is_some_and(|o| *o >= last_acked)
    })
    .await;
    for (offset, content) in &acked {
        assert_eq!(got.get(offset), Some(content), "acked message {offset}");
    }
}

#[tokio::test]
async fn a_node_cut_off_from_redis_fails_fast_then_fills_its_gap() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port).into()).await;
    let a = TestServer::node(&redis.url()).await;
    let b = TestServer::node(&format!("redis://{}", proxy.addr)).await;
    let mut bob = b.member("bob", "g").await;
    let mut alice = a.member("alice", "g").await;
    bob.recv_type("user_joined").await;
    for i in 0..3 {
        say(&mut alice, "g", &format!("before{i}"), &format!("{i}")).await;
        alice.recv_type("ack").await;
    }
    for _ in 0..3 {
        bob.recv_type("new_message").await;
    }

    proxy.cut();
    // Alice's node still reaches Redis: these are stored and acked, and
    // bob's node never hears them published.
    for i in 0..4 {
        say(&mut alice, "g", &format!("during{i}"), &format!("d{i}")).await;
        alice.recv_type("ack").await;
    }
    // Bob's node answers at once instead of hanging.
    let asked = tokio::time::Instant::now();
    let mut tries = 0;
    loop {
        say(&mut bob, "g", "from bob", "b").await;
        let v = bob.recv().await;
        if v["type"] == "error" {
            assert_eq!(v["payload"]["code"], "UNAVAILABLE");
            break;
        }
        // The cut is noticed within a round trip or two.
        tries += 1;
        assert!(tries < 20, "bob's node never noticed the partition: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(asked.elapsed() < Duration::from_secs(5));
    // Load balancers are told to keep away while the node is cut off; it
    // is alive all the same (nothing should restart it).
    assert_eq!(b.get("/readyz").await.0, 503);
    assert_eq!(b.get("/healthz").await.0, 200);

    proxy.heal();
    // Nothing more is sent: the reconnect itself must fill the gap.
    let mut contents = Vec::new();
    let mut last = 3;
    while contents.len() < 4 {
        let v = bob.recv().await;
        if v["type"] == "new_message" {
            let offset = v["offset"].as_u64().unwrap();
            if offset <= last {
                continue; // bob's own retried send may land in between
            }
            assert_eq!(offset, last + 1, "no gap: {v}");
            last = offset;
            if v["sender"]["id"] == "alice" {
                contents.push(v["payload"]["content"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(contents, ["during0", "during1", "during2", "during3"]);
    assert_eq!(b.get("/readyz").await.0, 200);
}

/// How many subscribers Redis has for `channel` (RESP over a plain socket).
async fn subscribers(redis: &RedisServer, channel: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
        .await
        .unwrap();
    let cmd = format!(
        "*3\r\n$6\r\nPUBSUB\r\n$6\r\nNUMSUB\r\n${}\r\n{channel}\r\n",
        channel.len()
    );
    s.write_all(cmd.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    // *2 $len channel :count
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(':'))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("unexpected reply {text:?}"))
}

#[tokio::test]
async fn a_node_listens_to_a_room_only_while_it_has_members_there() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let node = TestServer::node(&redis.url()).await;
    assert_eq!(subscribers(&redis, "rh:room:{g}").await, 0);
    let mut alice = node.member("alice", "g").await;
    let mut bob = node.member("bob", "g").await;
    assert_eq!(subscribers(&redis, "rh:room:{g}").await, 1, "one per node");
    alice
        .send_json(json!({"type": "leave_room", "room": "g", "id": "l"}))
        .await;
    alice.recv_type("ack").await;
    assert_eq!(subscribers(&redis, "rh:room:{g}").await, 1);
    bob.send_json(json!({"type": "leave_room", "room": "g", "id": "l"}))
        .await;
    bob.recv_type("ack").await;
    eventually("the node unsubscribed", || async {
        subscribers(&redis, "rh:room:{g}").await == 0
    })
    .await;
}

/// With the default liveness TTL (10 s, so a heartbeat period of 2.5 s if
/// it were a quarter of it), `/ws/online` on the other node follows each
/// change within about a second: counts are reported and read at least
/// every 400 ms. Three changes, each within 1.5 s: a 2.5 s period would
/// miss at least one of them.
#[tokio::test]
async fn online_counts_agree_across_nodes_within_a_second() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let node = || async {
        TestServer::start_with(|c| {
            c.redis = vec![redis.url()];
            c.node_ttl = Duration::from_secs(10);
        })
        .await
        .ready()
        .await
    };
    let (a, b) = (node().await, node().await);
    eventually("both nodes count nobody", || async {
        online(&a).await == 0 && online(&b).await == 0
    })
    .await;
    let mut clients = Vec::new();
    for n in 1..=3u64 {
        clients.push(a.client(&format!("u{n}")).await);
        let changed = tokio::time::Instant::now();
        loop {
            if online(&b).await == n {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_millis(1500),
                "node b still counts {} of {n} after 1.5 s",
                online(&b).await
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Redis comes back empty: no member is disconnected. Each learns its
/// room's new epoch in-band (`room_reset`, `recovered: false`) within a
/// second of Redis being back, and the room goes on in the new epoch on
/// the same connections.
#[tokio::test]
async fn an_empty_redis_restart_resets_rooms_in_band_without_disconnects() {
    empty_restart_resets_in_band(1).await;
}

#[tokio::test]
async fn an_empty_shard_restart_resets_its_rooms_in_band_without_disconnects() {
    empty_restart_resets_in_band(2).await;
}

async fn empty_restart_resets_in_band(shards: usize) {
    let Some(mut shards) = Shards::start(shards) else {
        return;
    };
    let nodes = nodes(&shards, 2).await;
    let redis = shards.holding("g");
    let mut alice = nodes[0].member("alice", "g").await;
    let mut bob = nodes[1].client("bob").await;
    let old = bob.join("g").await["payload"]["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    say(&mut alice, "g", "before", "b").await;
    alice.recv_type("ack").await;
    assert_eq!(
        bob.recv_type("new_message").await["payload"]["content"],
        "before"
    );

    redis.restart_empty();
    let back = tokio::time::Instant::now();
    let mut epochs = Vec::new();
    for client in [&mut alice, &mut bob] {
        let reset = client.recv_type("room_reset").await;
        assert!(
            back.elapsed() < Duration::from_secs(1),
            "reset only after {:?}",
            back.elapsed()
        );
        let p = &reset["payload"];
        assert_eq!(
            (p["room_id"].as_str(), p["recovered"].as_bool()),
            (Some("g"), Some(false))
        );
        assert_ne!(p["epoch"].as_str().unwrap(), old);
        epochs.push(p["epoch"].as_str().unwrap().to_string());
    }
    assert_eq!(epochs[0], epochs[1], "both nodes agree on the new epoch");
    // The same connections go on, in the new epoch.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        say(&mut alice, "g", "after", "a").await;
        let v = loop {
            let v = alice.recv().await;
            if v["type"] == "ack" || v["type"] == "error" {
                break v;
            }
        };
        if v["type"] == "ack" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never acked: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = bob.recv_type("new_message").await;
    assert_eq!(got["payload"]["content"], "after");
    assert_eq!(got["offset"], 1, "the new epoch's first message: {got}");
}

#[tokio::test]
async fn the_server_api_acts_on_every_node() {
    api_on_every_node(Shards::start(1)).await;
}

#[tokio::test]
async fn the_server_api_acts_on_every_node_on_two_shards() {
    api_on_every_node(Shards::start(2)).await;
}

#[tokio::test]
async fn the_server_api_acts_on_every_node_on_a_redis_cluster() {
    api_on_every_node(Shards::cluster()).await;
}

/// Calls on one node reach the connections and rooms of every node:
/// alice has a connection on each of two nodes, bob one on the first.
async fn api_on_every_node(redis: Option<Shards>) {
    let Some(redis) = redis else {
        return;
    };
    let (n0, n1) = (redis.api_node().await, redis.api_node().await);
    // Both nodes see each other before the calls (one heartbeat).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let call = |node: &TestServer, method: &str, params: Value| {
        let (addr, path, body) = (node.addr, format!("/api/{method}"), params.to_string());
        async move {
            let (status, body) = http_post(addr, &path, Some(API_KEY), &body).await;
            assert_eq!(status, 200, "{path}: {body}");
            serde_json::from_str::<Value>(&body).unwrap()["result"].clone()
        }
    };
    let mut a0 = n0.client("alice").await;
    let mut a1 = n1.client("alice").await;
    let mut bob = n0.member("bob", "team-1").await;

    let r = call(&n1, "subscribe", json!({"user": "alice", "room": "team-1"})).await;
    assert_eq!(r["connections"], 2, "{r}");
    for c in [&mut a0, &mut a1] {
        assert_eq!(
            c.recv_type("room_info").await["payload"]["room_id"],
            "team-1"
        );
    }
    assert_eq!(bob.recv_type("user_joined").await["payload"]["id"], "alice");

    let stats = call(&n1, "presence_stats", json!({"room": "team-1"})).await;
    assert_eq!(
        (stats["users"].as_u64(), stats["connections"].as_u64()),
        (Some(2), Some(3)),
        "{stats}"
    );
    let p = call(&n0, "presence", json!({"room": "team-1"})).await;
    let alice = p["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == "alice")
        .cloned();
    assert_eq!(
        alice.map(|a| a["connections"].clone()),
        Some(json!(2)),
        "{p}"
    );
    let rooms = call(&n1, "rooms", json!({"pattern": "team-*"})).await;
    assert_eq!(
        rooms["rooms"],
        json!([{"room": "team-1", "users": 2, "connections": 3}])
    );
    let info = call(&n0, "info", json!({})).await;
    assert_eq!(info["nodes"].as_array().map(Vec::len), Some(2), "{info}");
    assert_eq!(
        (info["connections"].as_u64(), info["users"].as_u64()),
        (Some(3), Some(2)),
        "{info}"
    );

    let r = call(
        &n0,
        "unsubscribe",
        json!({"user": "alice", "room": "team-1"}),
    )
    .await;
    assert_eq!(r["connections"], 2);
    for c in [&mut a0, &mut a1] {
        assert_eq!(
            c.recv_type("room_left").await["payload"]["reason"],
            "unsubscribed"
        );
    }
    assert_eq!(bob.recv_type("user_left").await["payload"]["id"], "alice");

    // History: said through one node, read through the other, which has
    // no member in the room (read from the broker).
    for i in 1..=3 {
        call(
            &n0,
            "publish",
            json!({"room": "archive", "payload": {"content": format!("a{i}")}}),
        )
        .await;
    }
    let h = call(&n1, "history", json!({"room": "archive", "limit": 2})).await;
    assert_eq!(contents(&h["messages"]), ["a2", "a3"], "{h}");
    assert_eq!(h["has_more"], true);

    // history_remove on one node: members on both get the reset, in the
    // same new lineage, which the next message continues.
    let mut carol = n1.member("carol", "archive").await;
    let mut dan = n0.member("dan", "archive").await;
    let r = call(&n1, "history_remove", json!({"room": "archive"})).await;
    assert_eq!(r["connections"], 2, "{r}");
    let mut epochs = Vec::new();
    for c in [&mut carol, &mut dan] {
        let reset = c.recv_type("room_reset").await;
        assert_eq!(reset["payload"]["offset"], 0, "{reset}");
        epochs.push(reset["payload"]["epoch"].clone());
    }
    assert_eq!(epochs[0], epochs[1]);
    assert_ne!(epochs[0], h["epoch"]);
    let h = call(&n0, "history", json!({"room": "archive"})).await;
    assert_eq!(
        (&h["epoch"], &h["messages"]),
        (&epochs[0], &json!([])),
        "{h}"
    );
    call(
        &n0,
        "publish",
        json!({"room": "archive", "payload": {"content": "again"}}),
    )
    .await;
    for c in [&mut carol, &mut dan] {
        let m = c.recv_type("new_message").await;
        assert_eq!(m["offset"], 1, "{m}");
    }

    // broadcast and batch on one node reach members on both.
    let r = call(
        &n1,
        "broadcast",
        json!({"rooms": ["archive", "team-1"], "payload": {"content": "to all"}}),
    )
    .await;
    assert_eq!(r["results"].as_array().map(Vec::len), Some(2), "{r}");
    for c in [&mut carol, &mut dan, &mut bob] {
        let m = c.recv_type("new_message").await;
        assert_eq!(m["payload"]["content"], "to all", "{m}");
    }
    let r = call(
        &n0,
        "batch",
        json!({"commands": [
            {"method": "publish", "params": {"room": "archive", "payload": {"content": "batched"}}},
            {"method": "presence_stats", "params": {"room": "archive"}},
        ]}),
    )
    .await;
    assert_eq!(r["replies"][1]["result"]["users"], 2, "{r}");
    assert_eq!(
        carol.recv_type("new_message").await["payload"]["content"],
        "batched"
    );

    let r = call(
        &n1,
        "disconnect",
        json!({"user": "alice", "reason": "banned"}),
    )
    .await;
    assert_eq!(r["connections"], 2);
    for c in [&mut a0, &mut a1] {
        assert_eq!(c.closed().await, (4100, "banned".to_string()));
    }
    let r = call(&n0, "disconnect", json!({"user": "nobody"})).await;
    assert_eq!(r["connections"], 0);
}

/// An SSE client's requests may reach any node (no sticky sessions): a
/// node that does not hold the session forwards each request to the one
/// that does, and answers once that node has it, so order is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_requests_posted_to_another_node_reach_the_session() {
    use roomhub_tests::sse::{SseClient, post_to};
    let Some(redis) = Shards::start(1) else {
        return;
    };
    let nodes = nodes(&redis, 2).await;
    let mut alice = nodes[1].member("alice", "g").await;
    let mut bob = SseClient::open(nodes[0].addr, &nodes[0].token("bob")).await;
    let session = bob.session.clone();
    let post = |body: Value| {
        let session = session.clone();
        let addr = nodes[1].addr;
        async move { post_to(addr, &session, body.to_string().as_bytes()).await }
    };
    assert_eq!(post(json!({"type": "join_room", "room": "g"})).await.0, 204);
    let info = bob.recv_type("room_info").await;
    assert_eq!(info["room"], "g");
    // In order: every message posted through the other node, acked in the
    // order posted, and delivered to alice in that order.
    for n in 0..20 {
        let (status, body) = post(json!({"type": "send_message", "room": "g", "id": format!("b{n}"), "payload": {"content": format!("m{n}")}})).await;
        assert_eq!(status, 204, "{body}");
    }
    for n in 0..20 {
        assert_eq!(bob.recv_type("ack").await["id"], format!("b{n}"));
        let m = alice.recv_type("new_message").await;
        assert_eq!(m["payload"]["content"], format!("m{n}"));
    }
    // A session the holding node does not have: 404 from it.
    let (node, _) = bob.session.split_once('.').unwrap();
    let stranger = format!("{node}.{:032x}", 7);
    let (status, _) = post_to(nodes[1].addr, &stranger, b"{}").await;
    assert_eq!(status, 404);
    // The close a request earns is applied where the stream is.
    let (status, _) = post_to(nodes[1].addr, &bob.session, &vec![b'x'; 5000]).await;
    assert_eq!(status, 413);
    assert_eq!(bob.closed().await.0, 1009);
    assert_eq!(alice.recv_type("user_left").await["sender"]["id"], "bob");
}
