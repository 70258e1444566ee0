//! Sweeps many seeds of simulated worlds and prints a summary.
//!
//! `cargo run --release -p roomhub-sim -- --seeds 1000 [--faults bounce,partition] [--start 0]`

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Parser;
use roomhub_sim::world::{FaultKind, WorldConfig, run_world};

#[derive(Parser)]
#[command(about = "Run roomhub's turmoil worlds over many seeds and check every invariant")]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Fault kinds to draw from, comma-separated (default: all). Kinds:
    /// latency, partition, hold, slow-consumer, half-open, abrupt-disconnect,
    /// reconnect-storm, bounce, token-expiry, rate-burst, repeated-drops,
    /// and for cluster worlds broker-partition, node-crash (and with several
    /// brokers, broker-wipe).
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Clients per world.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Print each seed's trace hash (to compare runs for determinism).
    #[arg(long)]
    hashes: bool,
    /// Cluster worlds with this many nodes on a simulated broker (2 or
    /// more); the default fault kinds then include broker-partition and
    /// node-crash instead of bounce.
    #[arg(long, default_value_t = 0)]
    nodes: usize,
    /// Cluster worlds: broker hosts the rooms are sharded over.
    #[arg(long, default_value_t = 1)]
    brokers: usize,
    /// The server's per-connection send queue, in bytes (default: the
    /// standard world's 2 KiB, small so that slow consumers are closed
    /// within seconds; worlds with many clients per room need more for
    /// their presence bursts).
    #[arg(long)]
    send_queue_bytes: Option<usize>,
    /// Every fault kind listed is injected (otherwise each with
    /// probability 1/2).
    #[arg(long)]
    every_fault: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cluster = args.nodes >= 2;
    let faults: Vec<FaultKind> = if args.faults.is_empty() && cluster && args.brokers >= 2 {
        FaultKind::sharded()
    } else if args.faults.is_empty() && cluster {
        FaultKind::CLUSTER.to_vec()
    } else if args.faults.is_empty() {
        FaultKind::ALL.to_vec()
    } else {
        let mut kinds = Vec::new();
        for name in &args.faults {
            match FaultKind::parse(name) {
                Some(k) => kinds.push(k),
                None => {
                    eprintln!("unknown fault kind {name:?}");
                    return ExitCode::from(2);
                }
            }
        }
        kinds
    };
    let mut injected: BTreeMap<FaultKind, u64> = BTreeMap::new();
    let (mut messages, mut sessions, mut slow_closes) = (0u64, 0u64, 0u64);
    let mut failed = Vec::new();
    for seed in args.start..args.start + args.seeds {
        let base = if cluster {
            WorldConfig {
                nodes: args.nodes,
                brokers: args.brokers.max(1),
                ..WorldConfig::cluster(seed)
            }
        } else {
            WorldConfig::standard(seed)
        };
        let world = WorldConfig {
            faults: faults.clone(),
            clients: args.clients,
            send_queue_bytes: args.send_queue_bytes.unwrap_or(base.send_queue_bytes),
            every_fault: args.every_fault || base.every_fault,
            ..base
        };
        let outcome = run_world(&world);
        if args.hashes {
            println!(
                "seed {seed} trace {:#018x} events {}",
                outcome.trace_hash, outcome.events
            );
        }
        for (k, n) in &outcome.faults {
            *injected.entry(*k).or_default() += u64::from(*n);
        }
        messages += outcome.report.messages_checked;
        sessions += outcome.report.sessions;
        slow_closes += outcome.report.slow_consumer_closes;
        if !outcome.passed() {
            eprintln!(
                "seed {seed}: {} violation(s)",
                outcome.report.violations.len()
            );
            for v in outcome.report.violations.iter().take(5) {
                eprintln!("  {v}");
            }
            eprintln!(
                "  replay: ROOMHUB_SIM_SEED={seed} cargo test -p roomhub-sim --test worlds replay_seed -- --nocapture"
            );
            failed.push(seed);
        }
    }
    println!("seeds run:        {}", args.seeds);
    println!("messages checked: {messages}");
    println!("connections:      {sessions}");
    println!("slow-consumer closes (4000): {slow_closes}");
    println!("faults injected:");
    for kind in faults.iter().copied() {
        println!(
            "  {:<18} {}",
            kind.name(),
            injected.get(&kind).copied().unwrap_or(0)
        );
    }
    println!(
        "violations:       {} seed(s){}",
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" {failed:?}")
        }
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
