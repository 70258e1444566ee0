//! Random operation sequences for the model test, and the checker that runs
//! each operation through both the real core and the [`Model`] and compares
//! what every connection received.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use roomhub_core::testkit::TestWorld;
use roomhub_core::{Config, ConnId, Input};
use serde_json::json;

use crate::model::{Expected, Model, Seen};

const USERS: [&str; 4] = ["ana", "ben", "cy", "dee"];
const ROOMS: [&str; 3] = ["r0", "r1", "r2"];

/// One step of a scenario. Connection and room numbers are taken modulo what
/// exists, so every generated sequence is meaningful.
#[derive(Clone, Debug)]
pub enum Op {
    Connect {
        user: usize,
    },
    Join {
        conn: usize,
        room: usize,
        since_back: Option<u64>,
    },
    Leave {
        conn: usize,
        room: usize,
    },
    Send {
        conn: usize,
        room: usize,
    },
    Typing {
        conn: usize,
        room: usize,
        typing: bool,
    },
    Online {
        conn: usize,
        room: usize,
    },
    Direct {
        conn: usize,
        to: usize,
    },
    Disconnect {
        conn: usize,
    },
    Overflow {
        conn: usize,
    },
    Pong {
        conn: usize,
    },
    Advance {
        ms: u64,
    },
}

/// Weighted so that rooms fill up and talk (most operations build and use
/// membership); disconnects, overflows and silence past the pong wait stay
/// in the mix, about one operation in twenty.
pub fn op_strategy() -> impl Strategy<Value = Op> {
    let c = 0usize..16;
    // Even room numbers aim at a room the connection is in (if any), odd
    // ones at any room: most requests are meaningful, some must be refused.
    let r = 0usize..2 * ROOMS.len();
    prop_oneof![
        6 => (0usize..USERS.len()).prop_map(|user| Op::Connect { user }),
        10 => (c.clone(), r.clone(), prop::option::weighted(0.3, 0u64..4))
            .prop_map(|(conn, room, since_back)| Op::Join { conn, room, since_back }),
        3 => (c.clone(), r.clone()).prop_map(|(conn, room)| Op::Leave { conn, room }),
        14 => (c.clone(), r.clone()).prop_map(|(conn, room)| Op::Send { conn, room }),
        4 => (c.clone(), r.clone(), any::<bool>())
            .prop_map(|(conn, room, typing)| Op::Typing { conn, room, typing }),
        2 => (c.clone(), r.clone()).prop_map(|(conn, room)| Op::Online { conn, room }),
        2 => (c.clone(), 0usize..USERS.len()).prop_map(|(conn, to)| Op::Direct { conn, to }),
        1 => c.clone().prop_map(|conn| Op::Disconnect { conn }),
        1 => c.clone().prop_map(|conn| Op::Overflow { conn }),
        4 => c.prop_map(|conn| Op::Pong { conn }),
        // Mostly short steps; now and then one past the pong wait.
        4 => (0u64..3_000).prop_map(|ms| Op::Advance { ms }),
        1 => (50_000u64..70_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

pub fn scenario_strategy(max_ops: usize) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op_strategy(), (max_ops / 8).max(1)..max_ops)
}

/// The config the model mirrors: no rate limit (it has its own tests), a
/// small room bound so `TOO_MANY_ROOMS` happens.
pub fn model_config() -> Config {
    Config {
        rate_limit_per_second: 0,
        max_rooms_per_connection: 2,
        ..Config::default()
    }
}

/// Runs a scenario through the core and the model; the first disagreement
/// is returned as an error describing the step.
pub fn check_scenario(ops: &[Op]) -> Result<CheckStats, String> {
    let config = model_config();
    let mut model = Model::new(config.max_rooms_per_connection, config.pong_wait_ms);
    let mut world = TestWorld::new(config);
    let mut conns: Vec<u64> = Vec::new();
    let mut last_offset: BTreeMap<(u64, String), u64> = BTreeMap::new();
    let mut stats = CheckStats::default();
    // The epoch of each room, as clients were told in `room_info`.
    let mut epochs: BTreeMap<String, String> = BTreeMap::new();

    for (step, op) in ops.iter().enumerate() {
        let id = format!("q{step}");
        // Mostly live connections; a dead one now and then (odd indices
        // reach every connection ever made), which must be ignored.
        let live: Vec<u64> = model.connections().collect();
        let pick = |i: usize| {
            let pool = if i.is_multiple_of(2) && !live.is_empty() {
                &live
            } else {
                &conns
            };
            (!pool.is_empty()).then(|| pool[(i / 2) % pool.len()])
        };
        let mut closing = BTreeSet::new();
        let expected: Expected = match op {
            Op::Connect { user } => {
                let conn = world.connect(USERS[*user]).0;
                conns.push(conn);
                model.connect(conn, USERS[*user]);
                Expected::new()
            }
            Op::Advance { ms } => {
                world.advance_ms(*ms);
                let (out, closed) = model.advance(*ms);
                closing = closed;
                out
            }
            _ => {
                let Some(conn) = pick(op_conn(op)) else {
                    continue;
                };
                if let Op::Join {
                    room,
                    since_back: Some(back),
                    ..
                } = op
                    && epochs.contains_key(join_room(*room))
                {
                    // The client declares where it is: order restarts there.
                    let since = model.head(join_room(*room)).saturating_sub(*back);
                    last_offset.insert((conn, join_room(*room).to_string()), since);
                }
                apply(&mut world, &mut model, &epochs, op, conn, &id)
            }
        };
        let actual = collect(&mut world, &mut epochs);
        compare(step, op, &expected, &actual, &closing)?;
        for (conn, frames) in &actual {
            for f in frames {
                if let Seen::Message { room, offset, .. } = f {
                    stats.messages += 1;
                    let last = last_offset.entry((*conn, room.clone())).or_insert(0);
                    if *offset <= *last {
                        return Err(format!(
                            "step {step}: c{conn} got offset {offset} in {room} after {last}"
                        ));
                    }
                    *last = *offset;
                }
            }
        }
        for conn in model_dropped(&model, &conns) {
            last_offset.retain(|(c, _), _| *c != conn);
        }
        world
            .node
            .hub
            .check_invariants()
            .map_err(|e| format!("step {step}: {e}"))?;
        check_presence(step, &world, &model)?;
        stats.steps += 1;
    }
    Ok(stats)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CheckStats {
    pub steps: usize,
    pub messages: usize,
}

fn op_conn(op: &Op) -> usize {
    match op {
        Op::Join { conn, .. }
        | Op::Leave { conn, .. }
        | Op::Send { conn, .. }
        | Op::Typing { conn, .. }
        | Op::Online { conn, .. }
        | Op::Direct { conn, .. }
        | Op::Disconnect { conn }
        | Op::Overflow { conn }
        | Op::Pong { conn } => *conn,
        Op::Connect { .. } | Op::Advance { .. } => 0,
    }
}

/// The room a join names: even numbers gather in one busy room, so that
/// messages have an audience; odd ones spread over all rooms.
fn join_room(room: usize) -> &'static str {
    if room.is_multiple_of(2) {
        ROOMS[0]
    } else {
        ROOMS[room % ROOMS.len()]
    }
}

/// The room other requests name: see `op_strategy`.
fn room_for(model: &Model, conn: u64, room: usize) -> String {
    let joined = model.rooms_of(conn);
    if room.is_multiple_of(2) && !joined.is_empty() {
        joined[(room / 2) % joined.len()].clone()
    } else {
        ROOMS[room % ROOMS.len()].to_string()
    }
}

fn apply(
    world: &mut TestWorld,
    model: &mut Model,
    epochs: &BTreeMap<String, String>,
    op: &Op,
    conn: u64,
    id: &str,
) -> Expected {
    let c = ConnId(conn);
    match op {
        Op::Join {
            room, since_back, ..
        } => {
            let room = join_room(*room);
            let mut payload = json!({"room_id": room});
            // `since` needs the epoch a client would have been told.
            let since_back = since_back.filter(|_| epochs.contains_key(room));
            if let Some(back) = since_back {
                let since = model.head(room).saturating_sub(back);
                payload["since"] = json!({"offset": since, "epoch": epochs[room]});
            }
            world.send_json(
                c,
                json!({"type": "join_room", "id": id, "payload": payload}),
            );
            model.join(conn, room, since_back, id)
        }
        Op::Leave { room, .. } => {
            let room = room_for(model, conn, *room);
            world.send_json(c, json!({"type": "leave_room", "id": id, "room": room}));
            model.leave(conn, &room, id)
        }
        Op::Send { room, .. } => {
            let room = room_for(model, conn, *room);
            let content = format!("{id} from c{conn}");
            world.send_json(
                c,
                json!({"type": "send_message", "id": id, "room": room, "payload": {"content": content}}),
            );
            model.send(conn, &room, &content, id)
        }
        Op::Typing { room, typing, .. } => {
            let room = room_for(model, conn, *room);
            let kind = if *typing { "typing" } else { "stop_typing" };
            world.send_json(c, json!({"type": kind, "id": id, "room": room}));
            model.typing(conn, &room, *typing, id)
        }
        Op::Online { room, .. } => {
            let room = room_for(model, conn, *room);
            world.send_json(c, json!({"type": "online_users", "id": id, "room": room}));
            model.online(conn, &room, id)
        }
        Op::Direct { to, .. } => {
            let content = format!("{id} dm");
            world.send_json(
                c,
                json!({"type": "send_direct", "id": id, "payload": {"to": USERS[*to], "content": content}}),
            );
            model.direct(conn, USERS[*to], &content, id)
        }
        Op::Disconnect { .. } => {
            world.input(Input::Disconnected { conn: c });
            model.drop_conn(conn, None)
        }
        Op::Overflow { .. } => {
            world.input(Input::QueueOverflow { conn: c });
            model.drop_conn(conn, Some(4000))
        }
        Op::Pong { .. } => {
            world.input(Input::Activity { conn: c });
            model.activity(conn);
            Expected::new()
        }
        Op::Connect { .. } | Op::Advance { .. } => Expected::new(),
    }
}

/// Everything the world's connections received in this step, closes included.
fn collect(world: &mut TestWorld, epochs: &mut BTreeMap<String, String>) -> Expected {
    let mut actual = Expected::new();
    for (conn, frames) in world.take_all() {
        for f in &frames {
            if f["type"] == "room_info"
                && let (Some(room), Some(epoch)) =
                    (f["room"].as_str(), f["payload"]["epoch"].as_str())
            {
                epochs.insert(room.to_string(), epoch.to_string());
            }
        }
        actual.insert(conn.0, frames.iter().map(Seen::from_frame).collect());
    }
    for (conn, (code, _)) in std::mem::take(&mut world.closed) {
        actual.entry(conn.0).or_default().push(Seen::Closed(code));
    }
    actual
}

fn compare(
    step: usize,
    op: &Op,
    expected: &Expected,
    actual: &Expected,
    closing: &BTreeSet<u64>,
) -> Result<(), String> {
    let conns: BTreeSet<u64> = expected.keys().chain(actual.keys()).copied().collect();
    for conn in conns {
        let sorted = |m: &Expected| {
            let mut v = m.get(&conn).cloned().unwrap_or_default();
            if closing.contains(&conn) {
                // Closed this step: only the close itself is compared.
                v.retain(|s| matches!(s, Seen::Closed(_)));
            }
            v.sort();
            v
        };
        let (want, got) = (sorted(expected), sorted(actual));
        if want != got {
            return Err(format!(
                "step {step} {op:?}: c{conn} expected {want:#?}\nbut received {got:#?}"
            ));
        }
    }
    Ok(())
}

fn model_dropped(model: &Model, conns: &[u64]) -> Vec<u64> {
    conns
        .iter()
        .copied()
        .filter(|c| !model.is_alive(*c))
        .collect()
}

fn check_presence(step: usize, world: &TestWorld, model: &Model) -> Result<(), String> {
    let hub = &world.node.hub;
    let want = model.presence();
    let mut got = BTreeMap::new();
    for room in hub.room_names() {
        let mut users: Vec<String> = hub
            .room_users(room.as_str())
            .unwrap_or_default()
            .into_iter()
            .map(|u| u.id.to_string())
            .collect();
        users.sort();
        got.insert(room.to_string(), users);
    }
    if want != got {
        return Err(format!(
            "step {step}: presence {got:?}, model says {want:?}"
        ));
    }
    let alive: Vec<u64> = model.connections().collect();
    let hub_alive: Vec<u64> = alive
        .iter()
        .copied()
        .filter(|c| hub.is_connected(ConnId(*c)))
        .collect();
    if alive != hub_alive || hub.stats().connections != alive.len() {
        return Err(format!(
            "step {step}: connections differ from the model's {alive:?}"
        ));
    }
    Ok(())
}
