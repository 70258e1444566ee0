//! The core's hot paths, without any I/O: fan-out of one message to rooms of
//! 10, 1,000 and 10,000 members; join/leave churn; request parsing; history
//! replay on a rejoin with `since`. Run: `cargo bench -p roomhub-core`.
//! Throughput is in elements: deliveries for fan-out and replay, requests for
//! parsing, joins for churn.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use roomhub_core::{
    Config, ConnId, Identity, Input, Output, ParseLimits, SingleNode, Timestamp, parse_request,
};

const NOW: Timestamp = Timestamp(1_767_225_600_000);

fn config() -> Config {
    Config {
        rate_limit_per_second: 0,
        max_rooms_per_connection: 10,
        ..Config::default()
    }
}

fn text(conn: u64, frame: &str) -> Input {
    Input::Text {
        conn: ConnId(conn),
        frame: Bytes::copy_from_slice(frame.as_bytes()),
    }
}

/// Drains the hub's outputs; returns how many frames went to connections.
fn drain(node: &mut SingleNode) -> usize {
    let mut sends = 0;
    while let Some(out) = node.poll_output() {
        if let Output::Send { frame, .. } = out {
            black_box(frame);
            sends += 1;
        }
    }
    sends
}

/// A node with connections 1..=members joined to room "r".
fn room_of(members: u64) -> SingleNode {
    let mut node = SingleNode::new(config(), 7);
    for c in 1..=members {
        let user = format!("u{c}");
        node.handle(
            Input::Connected {
                conn: ConnId(c),
                identity: Identity::user(&user),
            },
            NOW,
        );
        node.handle(text(c, r#"{"type":"join_room","room":"r"}"#), NOW);
        drain(&mut node);
    }
    node
}

const SEND: &str = r#"{"type":"send_message","room":"r","id":"42","payload":{"content":"a message of about sixty-four bytes, as the load generator sends"}}"#;

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("fan_out");
    for members in [10u64, 1_000, 10_000] {
        let mut node = room_of(members);
        group.throughput(Throughput::Elements(members - 1));
        group.bench_function(format!("{members}_members"), |b| {
            b.iter(|| {
                node.handle(text(1, SEND), NOW);
                // The other members get the message; the sender its ack.
                let sends = drain(&mut node);
                debug_assert_eq!(sends as u64, members);
                sends
            })
        });
    }
    group.finish();
}

fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("join_leave");
    for members in [10u64, 1_000] {
        let mut node = room_of(members);
        let newcomer = members + 1;
        node.handle(
            Input::Connected {
                conn: ConnId(newcomer),
                identity: Identity::user("newcomer"),
            },
            NOW,
        );
        drain(&mut node);
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("into_{members}_members"), |b| {
            b.iter(|| {
                node.handle(text(newcomer, r#"{"type":"join_room","room":"r"}"#), NOW);
                node.handle(text(newcomer, r#"{"type":"leave_room","room":"r"}"#), NOW);
                drain(&mut node)
            })
        });
    }
    group.finish();
}

fn parsing(c: &mut Criterion) {
    let limits = ParseLimits::from(&config());
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));
    let frames = [
        ("send_message", SEND),
        (
            "join_with_since",
            r#"{"type":"join_room","payload":{"room_id":"general","since":{"offset":120,"epoch":"2865533423d743bb"}}}"#,
        ),
        ("invalid_json", r#"{"type":"send_message","room":"#),
    ];
    for (name, frame) in frames {
        group.bench_function(name, |b| {
            b.iter(|| parse_request(black_box(frame.as_bytes()), &limits))
        });
    }
    group.finish();
}

fn replay(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay");
    for missed in [100u64, 1_000] {
        // Two members; one sends `missed` messages, the other rejoins from 0.
        let mut node = room_of(2);
        for _ in 0..missed {
            node.handle(text(1, SEND), NOW);
        }
        drain(&mut node);
        let epoch = epoch_of(&mut node);
        let rejoin = format!(
            r#"{{"type":"join_room","payload":{{"room_id":"r","since":{{"offset":0,"epoch":"{epoch}"}}}}}}"#
        );
        group.throughput(Throughput::Elements(missed));
        group.bench_function(format!("{missed}_messages"), |b| {
            b.iter_batched(
                || (),
                |()| {
                    node.handle(text(2, r#"{"type":"leave_room","room":"r"}"#), NOW);
                    node.handle(text(2, &rejoin), NOW);
                    drain(&mut node)
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// Reads the room's epoch from a fresh `room_info`.
fn epoch_of(node: &mut SingleNode) -> String {
    node.handle(text(2, r#"{"type":"leave_room","room":"r"}"#), NOW);
    node.handle(text(2, r#"{"type":"join_room","room":"r","id":"e"}"#), NOW);
    let mut epoch = None;
    while let Some(out) = node.poll_output() {
        if let Output::Send { frame, .. } = out {
            let v: serde_json::Value = serde_json::from_slice(&frame).expect("json");
            if v["type"] == "room_info" {
                epoch = v["payload"]["epoch"].as_str().map(str::to_string);
            }
        }
    }
    epoch.expect("room_info")
}

criterion_group!(benches, fan_out, churn, parsing, replay);
criterion_main!(benches);
