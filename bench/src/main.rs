//! `roomhub-bench`: the load generator. It drives a running roomhub server
//! over real WebSockets and prints a human table and one JSON line:
//!
//! - `throughput`: N connections in R rooms, S senders at a fixed rate;
//!   delivered messages per second, delivery ratio, latency percentiles,
//!   acks, errors, gaps and disconnects, and (with `--server-pid`) the
//!   server's CPU per delivered message;
//! - `idle`: N connections held open; the server's memory per connection;
//! - `storm`: N members drop at once and rejoin with `since`; the time until
//!   all have recovered what they missed;
//! - `churn`: connect/join/leave/disconnect cycles; whether the server gives
//!   back its memory, rooms and connections;
//! - `drops`: members whose sockets are reset and kept away, over and over,
//!   rejoining with `since`; delivery of what was acked, duplicates,
//!   offsets backwards, replay latency.
//!
//! It runs on one thread (pin it with `taskset` beside a pinned server).

mod churn;
mod client;
mod drops;
mod fleet;
mod idle;
mod procstat;
mod report;
mod storm;
mod throughput;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "roomhub-bench", version, about = "Load generator for roomhub")]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Args)]
struct Common {
    /// The server's WebSocket URL; the nodes of a cluster separated by
    /// commas (connection i goes to node i modulo their count; drops
    /// reconnects each client to the next node).
    #[arg(long, global = true, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// The HS256 secret the server verifies tokens with (default: the
    /// development secret in ./.roomhub/dev-secret, as `roomhub` uses).
    #[arg(
        long,
        global = true,
        env = "ROOMHUB_JWT_SECRET",
        hide_env_values = true
    )]
    jwt_secret: Option<String>,
    /// Loopback source addresses to spread connections over (127.0.0.2,
    /// 127.0.0.3, ...); each has about 28,000 ephemeral ports.
    #[arg(long, global = true, default_value_t = 4)]
    source_addrs: usize,
    /// The server's process id: reports its CPU time and resident memory
    /// (drops: repeat for each node of a cluster, added up; the other
    /// modes read the first).
    #[arg(long, global = true)]
    server_pid: Vec<u32>,
    /// A broker's process id (a Redis shard; repeat for each): the
    /// throughput report gives each one's CPU and their CPU per message.
    #[arg(long, global = true)]
    broker_pid: Vec<u32>,
    /// WebSocket handshakes in flight at most.
    #[arg(long, global = true, default_value_t = 512)]
    concurrency: usize,
    /// Free text carried into the report (say how the server was started,
    /// for example its rate-limit setting).
    #[arg(long, global = true, default_value = "")]
    label: String,
}

#[derive(Subcommand)]
enum Mode {
    /// Messages per second, delivery ratio and latency.
    Throughput {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        #[arg(long, default_value_t = 10)]
        senders: usize,
        /// Messages per second per sender.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Bytes of `content` per message.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        warmup: Duration,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Time allowed after the window for the last deliveries.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        drain: Duration,
    },
    /// Open connections and hold them: server memory per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Rooms to spread the connections over (0: join none).
        #[arg(long, default_value_t = 0)]
        rooms: usize,
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        hold: Duration,
    },
    /// Connect, join, leave, disconnect, over and over: the server's memory
    /// after against after a warm-up, and its rooms once all are gone.
    Churn {
        #[arg(long, default_value_t = 1_000_000)]
        cycles: usize,
        #[arg(long, default_value_t = 20_000)]
        warmup: usize,
        #[arg(long, default_value_t = 100)]
        rooms: usize,
    },
    /// Reset every member's socket every U(a, b) s, away for c s, rejoining
    /// with `since`, while one publisher per room sends.
    Drops {
        #[arg(long, default_value_t = 2_000)]
        clients: usize,
        #[arg(long, default_value_t = 20)]
        rooms: usize,
        #[arg(long, default_value_t = 120)]
        messages: usize,
        /// Messages per second per room.
        #[arg(long, default_value_t = 2.0)]
        rate: f64,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        reset_min: Duration,
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        reset_max: Duration,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        offline: Duration,
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        drain: Duration,
    },
    /// Drop every member at once and time their recovery with `since`.
    Storm {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        /// Messages each room gets while its members are away.
        #[arg(long, default_value_t = 5)]
        missed: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let limit = roomhub_net::os::raise_fd_limit().unwrap_or(0);
    let secret = match &cli.common.jwt_secret {
        Some(s) => s.clone(),
        None => match roomhub_net::dev::dev_secret() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("no --jwt-secret and no development secret: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let target = match client::Target::new(&cli.common.url, secret, cli.common.source_addrs) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if limit < 1024 {
        eprintln!("warning: open-file limit is {limit}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let c = &cli.common;
    let label = c.label.clone();
    let result = runtime.block_on(async {
        match &cli.mode {
            Mode::Throughput {
                connections,
                rooms,
                senders,
                rate,
                payload,
                warmup,
                duration,
                drain,
            } => {
                let opts = throughput::Opts {
                    connections: *connections,
                    rooms: *rooms,
                    senders: *senders,
                    rate: *rate,
                    payload: *payload,
                    warmup: *warmup,
                    duration: *duration,
                    drain: *drain,
                    concurrency: c.concurrency,
                };
                throughput::run(
                    &target,
                    &opts,
                    c.server_pid.first().copied(),
                    &c.broker_pid,
                    label,
                )
                .await
                .map(|r| emit(r.table(), &r))
            }
            Mode::Idle {
                connections,
                rooms,
                hold,
            } => {
                let opts = idle::Opts {
                    connections: *connections,
                    rooms: *rooms,
                    hold: *hold,
                    concurrency: c.concurrency,
                };
                idle::run(&target, &opts, c.server_pid.first().copied(), label)
                    .await
                    .map(|r| emit(r.table(), &r))
            }
            Mode::Drops {
                clients,
                rooms,
                messages,
                rate,
                reset_min,
                reset_max,
                offline,
                drain,
            } => {
                let opts = drops::Opts {
                    clients: *clients,
                    rooms: *rooms,
                    messages: *messages,
                    rate: *rate,
                    reset_min: *reset_min,
                    reset_max: *reset_max,
                    offline: *offline,
                    drain: *drain,
                    concurrency: c.concurrency,
                };
                drops::run(&target, &opts, &c.server_pid, label)
                    .await
                    .map(|r| emit(r.table(), &r))
            }
            Mode::Churn {
                cycles,
                warmup,
                rooms,
            } => {
                let opts = churn::Opts {
                    cycles: *cycles,
                    warmup: *warmup,
                    rooms: *rooms,
                    concurrency: c.concurrency,
                };
                churn::run(&target, &opts, c.server_pid.first().copied(), label)
                    .await
                    .map(|r| emit(r.table(), &r))
            }
            Mode::Storm {
                connections,
                rooms,
                missed,
            } => {
                let opts = storm::Opts {
                    connections: *connections,
                    rooms: *rooms,
                    missed: *missed,
                    concurrency: c.concurrency,
                };
                storm::run(&target, &opts, c.server_pid.first().copied(), label)
                    .await
                    .map(|r| emit(r.table(), &r))
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roomhub-bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// The table for people, then the JSON line for scripts (always last).
fn emit(table: report::Table, report: &impl Serialize) {
    print!("{table}");
    match serde_json::to_string(report) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("cannot encode the report: {e}"),
    }
}
