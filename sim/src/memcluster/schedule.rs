//! Cluster schedules: the steps, a proptest strategy that draws them, and
//! the run: every step applied in order, then a quiet end (every link
//! restored, everything delivered, time passing), then the same invariant
//! checker the turmoil worlds use, on what the clients saw.

use proptest::prelude::*;
use roomhub_core::Timestamp;

use crate::check::{CheckContext, Report, check};
use crate::memcluster::clients::Clients;
use crate::memcluster::cluster::{Cluster, NODE_TTL_MS};
use crate::setting::START_MS;
use crate::trace::Event;

/// Clients in a schedule; clients `i` and `i + 4` share a user, so a user
/// can be on two nodes at once.
pub const CLIENTS: usize = 6;
pub const ROOMS: usize = 3;

#[derive(Clone, Debug)]
pub enum Step {
    /// A new session on a node (a reconnect, with `since`, if one is live).
    Connect {
        client: usize,
        node: usize,
    },
    Join {
        client: usize,
        room: usize,
    },
    Leave {
        client: usize,
        room: usize,
    },
    Send {
        client: usize,
        room: usize,
    },
    Direct {
        client: usize,
        to: usize,
    },
    /// The client drops its connection.
    Drop {
        client: usize,
    },
    /// Up to `count` publications reach the node, in order.
    Deliver {
        node: usize,
        count: usize,
    },
    /// The node loses its broker link (what was on its way is lost).
    Cut {
        node: usize,
    },
    /// The node's broker link is back.
    Restore {
        node: usize,
    },
    /// Time passes; nodes beat (a long wait lets a cut node's liveness run
    /// out, and the others drop its members).
    Advance {
        ms: u64,
    },
}

/// A schedule of up to `max_steps` steps on `nodes` nodes.
pub fn schedule_strategy(nodes: usize, max_steps: usize) -> impl Strategy<Value = Vec<Step>> {
    let client = 0..CLIENTS;
    let room = 0..ROOMS;
    let node = 0..nodes;
    let step = prop_oneof![
        3 => (client.clone(), node.clone()).prop_map(|(client, node)| Step::Connect { client, node }),
        4 => (client.clone(), room.clone()).prop_map(|(client, room)| Step::Join { client, room }),
        1 => (client.clone(), room.clone()).prop_map(|(client, room)| Step::Leave { client, room }),
        6 => (client.clone(), room).prop_map(|(client, room)| Step::Send { client, room }),
        1 => (client.clone(), 0..CLIENTS).prop_map(|(client, to)| Step::Direct { client, to }),
        1 => client.prop_map(|client| Step::Drop { client }),
        5 => (node.clone(), 1..6usize).prop_map(|(node, count)| Step::Deliver { node, count }),
        1 => node.clone().prop_map(|node| Step::Cut { node }),
        1 => node.prop_map(|node| Step::Restore { node }),
        2 => prop_oneof![
            4 => 10..500u64,
            1 => NODE_TTL_MS..2 * NODE_TTL_MS,
        ]
        .prop_map(|ms| Step::Advance { ms }),
    ];
    proptest::collection::vec(step, 1..max_steps)
}

/// What a run delivered and what the checker found.
pub struct Outcome {
    pub report: Report,
    /// Room messages clients received.
    pub messages: usize,
}

/// Runs `steps` on a fresh cluster of `nodes` nodes and checks the trace.
pub fn run(nodes: usize, seed: u64, steps: &[Step]) -> Outcome {
    run_traced(nodes, seed, steps).0
}

/// [`run`], also returning what the clients saw (to debug a schedule).
pub fn run_traced(nodes: usize, seed: u64, steps: &[Step]) -> (Outcome, Vec<crate::trace::Record>) {
    let mut cluster = Cluster::new(nodes, seed, Timestamp(START_MS));
    let users = (0..CLIENTS).map(|i| format!("u{}", i % 4)).collect();
    let mut clients = Clients::new(users, START_MS);
    // Everyone starts connected (spread over the nodes) and in two rooms,
    // so that every schedule has traffic to get wrong.
    for client in 0..CLIENTS {
        clients.connect(&mut cluster, client, client % nodes);
        for room in [client % ROOMS, (client + 1) % ROOMS] {
            clients.join(&mut cluster, client, &format!("room{room}"));
        }
    }
    for step in steps {
        apply(&mut cluster, &mut clients, step);
        for node in &cluster.nodes {
            if let Err(e) = node.hub.check_invariants() {
                panic!("{}: {e} after {step:?}", node.name);
            }
        }
    }
    quiesce(&mut cluster, &mut clients);
    clients.ask_presence(&mut cluster);
    let at_ms = cluster.now.as_millis() - START_MS;
    for node in &cluster.nodes {
        clients.records.push(crate::trace::Record {
            at_ms,
            session: (usize::MAX, 0),
            event: Event::Probe {
                server: node.name.clone(),
                online: clients.online(),
                rooms: node.hub.stats().rooms as u64,
                queue_peak_bytes: 0,
            },
        });
    }
    clients.finish(&mut cluster);
    let context = CheckContext {
        send_queue_bytes: usize::MAX,
        ..CheckContext::default()
    };
    let messages = clients
        .records
        .iter()
        .filter(|r| matches!(&r.event, Event::Received { frame } if frame["type"] == "new_message"))
        .count();
    let outcome = Outcome {
        report: check(&clients.records, &context),
        messages,
    };
    (outcome, clients.records)
}

fn apply(cluster: &mut Cluster, clients: &mut Clients, step: &Step) {
    let room = |r: &usize| format!("room{r}");
    match step {
        Step::Connect { client, node } => clients.connect(cluster, *client, *node),
        Step::Join { client, room: r } => clients.join(cluster, *client, &room(r)),
        Step::Leave { client, room: r } => clients.leave(cluster, *client, &room(r)),
        Step::Send { client, room: r } => clients.send(cluster, *client, &room(r)),
        Step::Direct { client, to } => clients.direct(cluster, *client, *to),
        Step::Drop { client } => clients.drop_session(cluster, *client, "drop"),
        Step::Deliver { node, count } => cluster.deliver(*node, *count),
        Step::Cut { node } => cluster.cut(*node),
        Step::Restore { node } => cluster.restore(*node),
        Step::Advance { ms } => cluster.advance(*ms, clients.online()),
    }
    clients.pump(cluster);
}

/// Brings the cluster to rest: every link up, everything delivered, and
/// enough time for resyncs and heartbeats to settle.
fn quiesce(cluster: &mut Cluster, clients: &mut Clients) {
    for node in 0..cluster.nodes.len() {
        cluster.restore(node);
        clients.pump(cluster);
    }
    for _ in 0..8 {
        let mut rounds = 0;
        while cluster.pending() > 0 && rounds < 10_000 {
            for node in 0..cluster.nodes.len() {
                cluster.deliver(node, usize::MAX);
                clients.pump(cluster);
            }
            rounds += 1;
        }
        cluster.advance(NODE_TTL_MS / 8, clients.online());
        clients.pump(cluster);
    }
}
