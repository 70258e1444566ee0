//! Replays every committed fuzz input (`fuzz/seeds/<target>/` and
//! `fuzz/regressions/<target>/`) through the same function the cargo-fuzz
//! target calls, so CI exercises them without a fuzzer.

use std::path::PathBuf;

// The same bodies the cargo-fuzz targets run, included by path: they live
// in fuzz/, not in the crates they test.
#[path = "../../fuzz/bodies/core.rs"]
mod core_bodies;
#[path = "../../fuzz/bodies/net.rs"]
mod net_bodies;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Runs `target` on every file of its seeds and regressions; returns how
/// many seeds there were.
fn replay(target: &str, run: fn(&[u8])) -> usize {
    let mut seeds = 0;
    for (kind, dir) in [("seeds", "seeds"), ("regressions", "regressions")] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).expect("readable corpus file");
            // A panic names the file, so a failure is one command away from a repro.
            eprintln!("{kind}: {}", file.display());
            run(&data);
            if kind == "seeds" {
                seeds += 1;
            }
        }
    }
    seeds
}

#[test]
fn parse_bytes_corpus() {
    assert!(replay("parse_bytes", core_bodies::parse_bytes) >= 60);
}

#[test]
fn parse_json_corpus() {
    assert!(replay("parse_json", core_bodies::parse_json) > 0);
}

#[test]
fn hub_events_corpus() {
    assert!(replay("hub_events", core_bodies::hub_events) > 0);
}

#[test]
fn token_corpus() {
    assert!(replay("token", net_bodies::token) > 0);
}

#[test]
fn config_corpus() {
    assert!(replay("config", net_bodies::config) > 0);
}
