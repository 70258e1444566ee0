//! A world: the real roomhub server on one turmoil host, simulated clients on
//! others, and faults, all derived from one `u64` seed. `run_world` drives it
//! and returns what the invariant checker found.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::broker::{BrokerStream, Connector, SimBroker, SimBrokerConfig, serve};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use roomhub_net::cluster::broker::Broker;
use roomhub_net::cluster::sharded::ShardedBroker;
use roomhub_net::{Clock, Server, ServerConfig};

use crate::check::{CheckContext, Report, check};
use crate::client::{self, ClientPlan};
use crate::net::SimListener;
use crate::plant::{Planted, PlantedBug};
use crate::trace::{Event, Trace};

pub use crate::setting::{SECRET, SERVER, SERVER_PORT, START_MS, now_ms};

/// The kinds of fault a world can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A window of high latency and jitter on every link.
    Latency,
    /// A client's link to the server drops everything for a short while.
    Partition,
    /// A client's link holds messages, then releases them.
    Hold,
    /// A client stops reading; the server must close it with 4000.
    SlowConsumer,
    /// A client's link dies for longer than the pong wait (no close).
    HalfOpen,
    /// A client drops its connection without a close frame.
    AbruptDisconnect,
    /// Every client drops at once and reconnects with `since`.
    ReconnectStorm,
    /// The server crashes and restarts.
    Bounce,
    /// A client's token expires while connected.
    TokenExpiry,
    /// A client sends a burst that trips the rate limit.
    RateBurst,
    /// Cluster worlds: a node loses its link to the broker for a while
    /// (sometimes longer than the node TTL).
    BrokerPartition,
    /// Cluster worlds: a node crashes and restarts (a new node id).
    NodeCrash,
    /// Sharded cluster worlds: a broker shard restarts empty (a Redis
    /// without persistence), so its rooms start new epochs under members
    /// that stay connected.
    BrokerWipe,
    /// Every client's connection is dropped (no close) every 1.5 to 3 s
    /// and stays away 400 ms before it reconnects with `since`: the shape
    /// of `roomhub-bench drops`, in simulated seconds.
    RepeatedDrops,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Latency,
        FaultKind::Partition,
        FaultKind::Hold,
        FaultKind::SlowConsumer,
        FaultKind::HalfOpen,
        FaultKind::AbruptDisconnect,
        FaultKind::ReconnectStorm,
        FaultKind::Bounce,
        FaultKind::TokenExpiry,
        FaultKind::RateBurst,
    ];

    /// What cluster worlds draw from: the client faults, plus the broker
    /// partition and node crashes in place of the single server's bounce.
    pub const CLUSTER: [FaultKind; 11] = [
        FaultKind::Latency,
        FaultKind::Partition,
        FaultKind::Hold,
        FaultKind::SlowConsumer,
        FaultKind::HalfOpen,
        FaultKind::AbruptDisconnect,
        FaultKind::ReconnectStorm,
        FaultKind::TokenExpiry,
        FaultKind::RateBurst,
        FaultKind::BrokerPartition,
        FaultKind::NodeCrash,
    ];

    /// What sharded cluster worlds draw from: the cluster faults, plus a
    /// shard that comes back empty.
    pub fn sharded() -> Vec<FaultKind> {
        let mut kinds = FaultKind::CLUSTER.to_vec();
        kinds.push(FaultKind::BrokerWipe);
        kinds
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Latency => "latency",
            FaultKind::Partition => "partition",
            FaultKind::Hold => "hold",
            FaultKind::SlowConsumer => "slow-consumer",
            FaultKind::HalfOpen => "half-open",
            FaultKind::AbruptDisconnect => "abrupt-disconnect",
            FaultKind::ReconnectStorm => "reconnect-storm",
            FaultKind::Bounce => "bounce",
            FaultKind::TokenExpiry => "token-expiry",
            FaultKind::RateBurst => "rate-burst",
            FaultKind::BrokerPartition => "broker-partition",
            FaultKind::NodeCrash => "node-crash",
            FaultKind::BrokerWipe => "broker-wipe",
            FaultKind::RepeatedDrops => "repeated-drops",
        }
    }

    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .chain(FaultKind::CLUSTER)
            .chain([FaultKind::BrokerWipe, FaultKind::RepeatedDrops])
            .find(|k| k.name() == name)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug)]
pub struct WorldConfig {
    pub seed: u64,
    pub clients: usize,
    pub rooms: usize,
    /// Faults this world may draw from.
    pub faults: Vec<FaultKind>,
    /// Length of the active phase, before the world goes quiet.
    pub active_ms: u64,
    pub plant: Option<PlantedBug>,
    /// Inject every listed fault kind (otherwise each with probability 1/2).
    pub every_fault: bool,
    /// The server's per-connection send queue. Small by default so that a
    /// client that stops reading is closed within seconds; a world where
    /// hundreds join one room needs room for their presence bursts.
    pub send_queue_bytes: usize,
    /// turmoil's step. 1 ms by default; large worlds use a coarser one,
    /// since turmoil polls every host at every step.
    pub tick_ms: u64,
    /// 0: one server host. 2 or more: that many nodes sharing rooms through
    /// a simulated broker host.
    pub nodes: usize,
    /// Cluster worlds: the broker hosts rooms are sharded over (1: one
    /// broker, `broker`; more: `broker0`, `broker1`, …, each node on all of
    /// them through a sharded broker).
    pub brokers: usize,
}

impl WorldConfig {
    /// Slow consumers only: the healthy members' delays are checked.
    pub fn slow_consumers(seed: u64) -> Self {
        WorldConfig {
            faults: vec![FaultKind::SlowConsumer],
            every_fault: true,
            ..WorldConfig::standard(seed)
        }
    }

    /// Hundreds of clients in one room that all drop at once and rejoin
    /// with `since`.
    pub fn storm(seed: u64, clients: usize) -> Self {
        WorldConfig {
            seed,
            clients,
            rooms: 1,
            faults: vec![FaultKind::ReconnectStorm],
            active_ms: 6_000,
            plant: None,
            every_fault: true,
            send_queue_bytes: 256 * 1024,
            tick_ms: 10,
            nodes: 0,
            brokers: 1,
        }
    }

    /// Repeated network drops for every client (the `drops` benchmark's
    /// shape): one server, or (`nodes` 2) a two-node cluster.
    pub fn drops(seed: u64, clients: usize, nodes: usize) -> Self {
        WorldConfig {
            seed,
            clients,
            rooms: 3,
            faults: vec![FaultKind::RepeatedDrops],
            every_fault: true,
            send_queue_bytes: 64 * 1024,
            nodes,
            ..WorldConfig::standard(seed)
        }
    }

    /// Two nodes and a broker; clients spread over the nodes and move to
    /// the next node whenever they reconnect.
    pub fn cluster(seed: u64) -> Self {
        WorldConfig {
            nodes: 2,
            faults: FaultKind::CLUSTER.to_vec(),
            ..WorldConfig::standard(seed)
        }
    }

    /// Two nodes on two broker shards: rooms and users spread over both,
    /// a broker partition cuts a node from one shard only, and a shard may
    /// come back empty.
    pub fn sharded(seed: u64) -> Self {
        WorldConfig {
            brokers: 2,
            faults: FaultKind::sharded(),
            ..WorldConfig::cluster(seed)
        }
    }

    /// The broker hosts of a cluster world.
    pub fn broker_hosts(&self) -> Vec<String> {
        if self.brokers < 2 {
            vec![BROKER.to_string()]
        } else {
            (0..self.brokers).map(|i| format!("{BROKER}{i}")).collect()
        }
    }

    /// The server hosts clients connect to.
    pub fn server_hosts(&self) -> Vec<String> {
        if self.nodes < 2 {
            vec![SERVER.to_string()]
        } else {
            (0..self.nodes).map(|i| format!("node{i}")).collect()
        }
    }

    /// The standard world for `seed`: a handful of clients, a few rooms, and
    /// any of the faults.
    pub fn standard(seed: u64) -> Self {
        WorldConfig {
            seed,
            clients: 6,
            rooms: 2,
            faults: FaultKind::ALL.to_vec(),
            active_ms: 12_000,
            plant: None,
            every_fault: false,
            send_queue_bytes: 2 * 1024,
            tick_ms: 1,
            nodes: 0,
            brokers: 1,
        }
    }
}

/// What one world found.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    /// The world's node count (0: one server).
    pub nodes: usize,
    /// Its broker shards (cluster worlds).
    pub brokers: usize,
    pub report: Report,
    pub faults: BTreeMap<FaultKind, u32>,
    pub trace_hash: u64,
    pub events: usize,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.report.violations.is_empty()
    }
}

/// Something the driver does to the network or the server at a time.
#[derive(Clone, Debug)]
enum NetAction {
    Partition(String),
    Repair(String),
    Hold(String),
    Release(String),
    /// Restart a server host.
    Bounce(String),
    /// Cut / restore a node's link to a broker host: (broker, node).
    CutBroker(String, String),
    HealBroker(String, String),
    LatencySpike(u64),
    LatencyNormal(u64),
}

const SETTLE_AFTER_ACTIVE_MS: u64 = 9_000;
/// Links add at most 30 ms each way; a second is far beyond any fair delay.
const SLOW_WORLD_DELAY_BOUND_MS: u64 = 1_000;
const END_AFTER_SETTLE_MS: u64 = 2_500;

/// Settings of the server inside simulations: short heartbeats (simulated
/// time is not free) and small queues, so faults bite within seconds.
pub fn server_config(world: &WorldConfig, boot: u64) -> ServerConfig {
    let seed = world.seed;
    let mut config = ServerConfig::with_secret(SECRET);
    config.core.ping_interval_ms = 1_000;
    config.core.pong_wait_ms = 3_000;
    config.core.rate_limit_per_second = 5;
    config.core.rate_limit_burst = 10;
    config.core.seed = seed ^ boot;
    config.core.node_id = roomhub_core::NodeId(seed.wrapping_add(boot));
    // A restarted in-memory server starts new lineages, as in production.
    config.sequencer_seed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(boot);
    config.send_queue_bytes = world.send_queue_bytes;
    config.handshake_timeout = Duration::from_secs(2);
    config.drain_timeout = Duration::from_secs(1);
    // Every task on turmoil's runtime, where time is simulated; one to three
    // I/O shards, by seed, so the shards' interleavings are explored too.
    config.hub_thread = false;
    config.io_threads = 1 + (seed % 3) as usize;
    config
}

pub fn run_world(world: &WorldConfig) -> Outcome {
    run_world_traced(world).0
}

/// Runs a world and also returns its full trace, for debugging a seed.
pub fn run_world_traced(world: &WorldConfig) -> (Outcome, Vec<crate::trace::Record>) {
    let mut rng = ChaCha8Rng::seed_from_u64(world.seed);
    let rooms: Vec<String> = (0..world.rooms).map(|r| format!("room{r}")).collect();
    let active_until = world.active_ms;
    let settle = active_until + SETTLE_AFTER_ACTIVE_MS;
    let end = settle + END_AFTER_SETTLE_MS;
    let mut faults: BTreeMap<FaultKind, u32> = BTreeMap::new();
    let mut plans: Vec<ClientPlan> = (0..world.clients)
        .map(|i| {
            // One fewer user than clients: one user has two connections.
            let user = format!("u{}", i % world.clients.saturating_sub(1).max(1));
            let mut own_rooms = rooms.clone();
            own_rooms.rotate_left(i % rooms.len());
            let hosts = world.server_hosts();
            let servers = (0..hosts.len())
                .map(|k| hosts[(i + k) % hosts.len()].clone())
                .collect();
            ClientPlan {
                index: i,
                user,
                servers,
                rooms: own_rooms,
                join_all: false,
                seed: rng.next_u64(),
                act_every_ms: (150, 700),
                slow: Vec::new(),
                abrupt: Vec::new(),
                offline_ms: None,
                storm_at: None,
                short_token_ms: None,
                bursts: Vec::new(),
                active_until_ms: active_until,
                settle_ms: settle,
                end_ms: end,
            }
        })
        .collect();
    let mut actions: Vec<(u64, NetAction)> = Vec::new();
    let base_latency_ms = 1 + rng.next_u64() % 30;
    let pick_time = |rng: &mut ChaCha8Rng, margin: u64| {
        1_000 + rng.next_u64() % active_until.saturating_sub(1_000 + margin).max(1)
    };
    for kind in &world.faults {
        // Each allowed kind appears in about half the worlds.
        if rng.next_u64().is_multiple_of(2) && !world.every_fault {
            continue;
        }
        let client = (rng.next_u64() as usize) % world.clients;
        let host = format!("c{client}");
        let at = pick_time(&mut rng, 3_000);
        match kind {
            FaultKind::Latency => {
                let spike = 100 + rng.next_u64() % 400;
                actions.push((at, NetAction::LatencySpike(spike)));
                actions.push((
                    at + 1_000 + rng.next_u64() % 2_000,
                    NetAction::LatencyNormal(base_latency_ms),
                ));
            }
            FaultKind::Partition => {
                actions.push((at, NetAction::Partition(host.clone())));
                actions.push((at + 200 + rng.next_u64() % 1_500, NetAction::Repair(host)));
            }
            FaultKind::Hold => {
                actions.push((at, NetAction::Hold(host.clone())));
                actions.push((at + 200 + rng.next_u64() % 1_500, NetAction::Release(host)));
            }
            FaultKind::HalfOpen => {
                actions.push((at, NetAction::Partition(host.clone())));
                actions.push((at + 4_000 + rng.next_u64() % 2_000, NetAction::Repair(host)));
            }
            FaultKind::Bounce => actions.push((at, NetAction::Bounce(SERVER.to_string()))),
            FaultKind::BrokerPartition => {
                let node = format!("node{}", rng.next_u64() as usize % world.nodes.max(1));
                // With shards, one of them (by time, so that one-broker
                // worlds draw exactly what they always drew).
                let brokers = world.broker_hosts();
                let broker = brokers[at as usize % brokers.len()].clone();
                actions.push((at, NetAction::CutBroker(broker.clone(), node.clone())));
                actions.push((
                    at + 300 + rng.next_u64() % 3_000,
                    NetAction::HealBroker(broker, node),
                ));
            }
            FaultKind::NodeCrash => {
                let node = format!("node{}", rng.next_u64() as usize % world.nodes.max(1));
                actions.push((at, NetAction::Bounce(node)));
            }
            FaultKind::BrokerWipe => {
                let brokers = world.broker_hosts();
                let broker = brokers[rng.next_u64() as usize % brokers.len()].clone();
                actions.push((at, NetAction::Bounce(broker)));
            }
            FaultKind::SlowConsumer => {
                // It hears every room and stops reading while two others
                // burst: the server must close it, and serve everyone else.
                plans[client].slow.push((at, 2_000 + rng.next_u64() % 500));
                plans[client].join_all = true;
                for step in 1..=2 {
                    let other = (client + step) % world.clients;
                    if other != client {
                        plans[other].bursts.push(at + 200 * step as u64);
                    }
                }
            }
            FaultKind::AbruptDisconnect => plans[client].abrupt.push(at),
            FaultKind::RepeatedDrops => {
                for plan in &mut plans {
                    let mut t = 500 + rng.next_u64() % 1_500;
                    while t < active_until {
                        plan.abrupt.push(t);
                        t += 1_500 + rng.next_u64() % 1_500;
                    }
                    plan.offline_ms = Some(400);
                }
            }
            FaultKind::ReconnectStorm => {
                for plan in &mut plans {
                    plan.storm_at = Some(at);
                }
            }
            FaultKind::TokenExpiry => {
                plans[client].short_token_ms = Some(1_500 + rng.next_u64() % 3_000)
            }
            FaultKind::RateBurst => plans[client].bursts.push(at),
        }
        *faults.entry(*kind).or_default() += 1;
    }
    actions.sort_by_key(|(at, _)| *at);
    let slow_clients = plans
        .iter()
        .filter(|p| !p.slow.is_empty())
        .map(|p| p.index)
        .collect();

    let trace = Trace::default();
    let mut sim = turmoil::Builder::new()
        .rng_seed(world.seed)
        .tick_duration(Duration::from_millis(world.tick_ms))
        .simulation_duration(Duration::from_millis(end + 20_000))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(base_latency_ms))
        // Segments in flight per connection: small, so a client that stops
        // reading backs up the server quickly. turmoil also uses it as the
        // listener's backlog, which must hold a whole reconnect storm.
        .tcp_capacity(8.max(world.clients + 2))
        .build();
    let servers = world.server_hosts();
    if world.nodes < 2 {
        let boots = Arc::new(AtomicU64::new(0));
        let host_world = world.clone();
        sim.host(SERVER, move || {
            let boot = boots.fetch_add(1, Ordering::Relaxed);
            let config = server_config(&host_world, boot);
            let plant = host_world.plant;
            async move {
                let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), SERVER_PORT);
                let listener = SimListener::bind(addr).await?;
                let clock = Clock::new(START_MS + now_ms());
                let server = match plant {
                    Some(bug) => Server::start_with_core(listener, config, clock, |core| {
                        Planted::new(bug, core)
                    })?,
                    None => Server::start(listener, config, clock)?,
                };
                server.wait().await;
                Ok(())
            }
        });
    } else {
        cluster_hosts(&mut sim, world);
    }
    let clients = plans.len();
    for plan in plans {
        let host = format!("c{}", plan.index);
        sim.client(host, client::run(plan, trace.clone()));
    }
    sim.client(
        "probe",
        probe(settle + 1_000, clients, servers.clone(), trace.clone()),
    );

    let mut next = 0;
    let mut failure = None;
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                failure = Some(format!("simulation error: {e}"));
                break;
            }
        }
        let now = sim.elapsed().as_millis() as u64;
        while next < actions.len() && actions[next].0 <= now {
            match &actions[next].1 {
                // A client's link to every server host.
                NetAction::Partition(h) => servers
                    .iter()
                    .for_each(|s| sim.partition(s.as_str(), h.as_str())),
                NetAction::Repair(h) => servers
                    .iter()
                    .for_each(|s| sim.repair(s.as_str(), h.as_str())),
                NetAction::Hold(h) => servers
                    .iter()
                    .for_each(|s| sim.hold(s.as_str(), h.as_str())),
                NetAction::Release(h) => servers
                    .iter()
                    .for_each(|s| sim.release(s.as_str(), h.as_str())),
                NetAction::Bounce(h) => sim.bounce(h.as_str()),
                NetAction::CutBroker(b, h) => sim.partition(b.as_str(), h.as_str()),
                NetAction::HealBroker(b, h) => sim.repair(b.as_str(), h.as_str()),
                NetAction::LatencySpike(ms) | NetAction::LatencyNormal(ms) => {
                    sim.set_max_message_latency(Duration::from_millis(*ms));
                }
            }
            next += 1;
        }
    }
    let records = trace.records();
    // With slow consumers as the only fault, everyone else must be served on
    // time: the server may not wait on a slow connection.
    let only_slow = world.faults == [FaultKind::SlowConsumer];
    let context = CheckContext {
        send_queue_bytes: world.send_queue_bytes,
        delay_bound_ms: only_slow.then_some(SLOW_WORLD_DELAY_BOUND_MS),
        delay_exempt: slow_clients,
    };
    let mut report = check(&records, &context);
    if let Some(f) = failure {
        report.violations.push(f);
    }
    let outcome = Outcome {
        seed: world.seed,
        nodes: world.nodes,
        brokers: world.brokers,
        report,
        faults,
        trace_hash: trace.hash(),
        events: records.len(),
    };
    (outcome, records)
}

/// The broker host of cluster worlds, and its port.
pub const BROKER: &str = "broker";
pub const BROKER_PORT: u16 = 6379;
/// Cluster nodes in simulations: a node silent this long is gone.
const NODE_TTL_MS: u64 = 2_000;

/// The broker host and one host per node, each node on the simulated broker
/// over turmoil TCP.
fn cluster_hosts(sim: &mut turmoil::Sim<'_>, world: &WorldConfig) {
    let brokers = world.broker_hosts();
    for (b, host) in brokers.iter().enumerate() {
        let boots = Arc::new(AtomicU64::new(0));
        let seed = world.seed;
        sim.host(host.as_str(), move || {
            // One broker's first boot keeps the seed its worlds always had;
            // a broker that comes back empty draws new epochs, as a real
            // one would (epochs are random), never the ones it gave before.
            let boot = boots.fetch_add(1, Ordering::Relaxed);
            let broker_config = SimBrokerConfig {
                seed: seed ^ ((b as u64) << 32) ^ boot.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                max_messages: 1000,
                max_age_ms: 24 * 3_600_000,
                node_ttl_ms: NODE_TTL_MS,
            };
            async move {
                let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), BROKER_PORT);
                serve(SimListener::bind(addr).await?, broker_config).await;
                Ok(())
            }
        });
    }
    for (i, host) in world.server_hosts().into_iter().enumerate() {
        let boots = Arc::new(AtomicU64::new(0));
        let host_world = world.clone();
        let brokers = brokers.clone();
        sim.host(host, move || {
            let boot = boots.fetch_add(1, Ordering::Relaxed);
            let mut config = server_config(&host_world, boot);
            // Unique per node and per boot.
            config.core.node_id = roomhub_core::NodeId(
                host_world.seed.wrapping_mul(0x100_0000_01b3) ^ ((i as u64) << 40 | boot),
            );
            config.core.seed ^= (i as u64) << 48;
            config.node_ttl = Duration::from_millis(NODE_TTL_MS);
            let plant = host_world.plant;
            let brokers = brokers.clone();
            async move {
                let max_age_ms = config.core.history_max_age_ms;
                let mut shards: Vec<SimBroker> = brokers
                    .into_iter()
                    .map(|host| SimBroker::new(connector(host), max_age_ms))
                    .collect();
                let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), SERVER_PORT);
                let listener = SimListener::bind(addr).await?;
                let clock = Clock::new(START_MS + now_ms());
                let server = if shards.len() == 1 {
                    let broker = Arc::new(shards.remove(0));
                    start_node(listener, config, clock, broker, plant)?
                } else {
                    let broker = Arc::new(ShardedBroker::new(shards));
                    start_node(listener, config, clock, broker, plant)?
                };
                server.wait().await;
                Ok(())
            }
        });
    }
}

/// Connects to a broker host over turmoil TCP.
fn connector(host: String) -> Connector {
    Arc::new(move || {
        let host = host.clone();
        Box::pin(async move {
            let s = turmoil::net::TcpStream::connect((host.as_str(), BROKER_PORT)).await?;
            Ok(Box::new(s) as Box<dyn BrokerStream>)
        })
    })
}

/// A cluster node on `broker`, around a planted bug when there is one.
fn start_node<B: Broker>(
    listener: SimListener,
    config: ServerConfig,
    clock: Clock,
    broker: Arc<B>,
    plant: Option<PlantedBug>,
) -> std::io::Result<Server> {
    match plant {
        Some(bug) => Server::start_clustered_with_core(listener, config, clock, broker, |core| {
            Planted::new(bug, core)
        }),
        None => Server::start_clustered(listener, config, clock, broker),
    }
}

/// At `at_ms`, asks every server host over HTTP for `/ws/online` and
/// `/metrics`.
async fn probe(at_ms: u64, index: usize, servers: Vec<String>, trace: Trace) -> turmoil::Result {
    tokio::time::sleep(Duration::from_millis(at_ms.saturating_sub(now_ms()))).await;
    for server in servers {
        probe_one(&server, index, &trace).await?;
    }
    Ok(())
}

async fn probe_one(server: &str, index: usize, trace: &Trace) -> turmoil::Result {
    let online = http_get(server, "/ws/online").await?;
    let metrics = http_get(server, "/metrics").await?;
    let online: u64 = serde_json::from_str::<serde_json::Value>(&online)?["online"]
        .as_u64()
        .unwrap_or(u64::MAX);
    let metric = |name: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(f64::NAN) as u64
    };
    trace.push(
        now_ms(),
        (index, 0),
        Event::Probe {
            server: server.to_string(),
            online,
            rooms: metric("roomhub_rooms "),
            queue_peak_bytes: metric("roomhub_send_queue_peak_bytes "),
        },
    );
    Ok(())
}

async fn http_get(server: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = turmoil::net::TcpStream::connect((server, SERVER_PORT)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    Ok(text.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}
