//! The durable store's append path, without the server around it: a batch
//! of 1 and of 32 messages spread over 10 rooms, with `--fsync background`
//! (the default) and `--fsync always`. Run: `cargo bench -p roomhub-net`.
//! Throughput is in messages.

use std::path::PathBuf;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use roomhub_core::testkit::append_request;
use roomhub_core::{AppendRequest, HistoryLimits, RoomName, Timestamp};
use roomhub_net::seq::journaled::JournaledStore;
use roomhub_net::seq::store::{History, Store};

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("roomhub-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn limits() -> HistoryLimits {
    HistoryLimits {
        max_messages: 100,
        max_age_ms: 60_000,
        max_rooms: 1000,
        max_bytes: 0,
    }
}

fn rooms() -> impl Iterator<Item = RoomName> {
    (0..10).map(|r| RoomName::parse(&format!("r{r}"), 64).unwrap())
}

fn batch(size: u64, t: &mut u64) -> Vec<AppendRequest> {
    (0..size)
        .map(|i| {
            *t += 1;
            append_request(&format!("r{}", i % 10), *t)
        })
        .collect()
}

/// Appends of 1 and 32 messages to `store` (its rooms opened first).
fn bench_appends(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    mode: &str,
    open: impl Fn(&PathBuf) -> Box<dyn History>,
) {
    for size in [1u64, 32] {
        group.throughput(Throughput::Elements(size));
        let path = dir(mode);
        let mut store = open(&path);
        rooms().for_each(|r| drop(store.snapshot(&r, Timestamp(0)).unwrap()));
        let mut t = 0;
        group.bench_function(format!("{mode}/batch{size}"), |b| {
            b.iter_batched(
                || batch(size, &mut t),
                |batch| store.append_batch(batch).unwrap(),
                BatchSize::SmallInput,
            )
        });
        drop(store);
        std::fs::remove_dir_all(&path).ok();
    }
}

fn appends(c: &mut Criterion) {
    let mut group = c.benchmark_group("store_append");
    bench_appends(&mut group, "background", |path| {
        Box::new(JournaledStore::open(path, limits(), None).unwrap())
    });
    // One fsync per batch: fewer samples.
    group.sample_size(10);
    bench_appends(&mut group, "always", |path| {
        Box::new(Store::open(path, limits()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
