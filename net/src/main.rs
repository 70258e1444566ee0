//! The `roomhub` binary: `roomhub [flags]` serves; `roomhub token` mints a
//! development token.

use std::process::ExitCode;

use roomhub_net::dev::{TokenSpec, dev_secret, dev_secret_display, mint_token};
use roomhub_net::{Clock, Command, Server, ServerArgs, ServerConfig, TokenArgs, parse_cli};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match parse_cli(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Some(Command::Token(args)) => token(&args),
        None => serve(cli.server),
    }
}

fn token(args: &TokenArgs) -> ExitCode {
    let secret = match &args.jwt_secret {
        Some(s) => s.clone(),
        None => match dev_secret() {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "cannot read or create {}: {e}",
                    dev_secret_display().display()
                );
                return ExitCode::from(1);
            }
        },
    };
    let spec = TokenSpec {
        user: args.user.clone(),
        name: args.name.clone(),
        rooms: args.rooms.clone(),
    };
    println!(
        "{}",
        mint_token(&secret, &spec, args.ttl, Clock::system().unix_seconds())
    );
    if let Some(key) = args.api_key.as_deref().filter(|k| !k.is_empty()) {
        eprintln!(
            "An API key is configured (ROOMHUB_API_KEY). The server API, for your backend (docs/api.md):\n  \
             curl -H \"Authorization: Bearer $ROOMHUB_API_KEY\" -d '{{}}' http://127.0.0.1:8080/api/info\n  \
             (key {}…, {} bytes)",
            key.chars().take(3).collect::<String>(),
            key.len()
        );
    }
    ExitCode::SUCCESS
}

fn init_logging(args: &ServerArgs) {
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn serve(mut args: ServerArgs) -> ExitCode {
    init_logging(&args);
    let dev_mode =
        args.jwt_secret.is_none() && args.jwt_public_key.is_empty() && args.jwt_jwks_url.is_none();
    if dev_mode {
        if !args.listen.ip().is_loopback() {
            error!(
                listen = %args.listen,
                "refusing to serve a non-loopback address with the development secret: set --jwt-secret or --jwt-public-key"
            );
            return ExitCode::from(2);
        }
        match dev_secret() {
            Ok(secret) => args.jwt_secret = Some(secret),
            Err(e) => {
                error!(
                    "cannot read or create {}: {e}",
                    dev_secret_display().display()
                );
                return ExitCode::from(1);
            }
        }
    }
    let config = match ServerConfig::from_args(&args, rand::random()) {
        Ok(mut c) if dev_mode => {
            // The demo page logs in by name with the development secret.
            c.demo = args.demo.unwrap_or(true);
            c.demo_token_secret = args.jwt_secret.clone().filter(|_| c.demo);
            c
        }
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    match roomhub_net::os::raise_fd_limit() {
        Ok(limit) => info!(limit, "file descriptor limit"),
        Err(e) => warn!("cannot raise the file descriptor limit: {e}"),
    }
    let runtime = match runtime_builder(config.io_threads).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let listener = match roomhub_net::os::bind_listener(args.listen) {
            Ok(l) => l,
            Err(e) => {
                error!(listen = %args.listen, "cannot listen: {e}");
                return ExitCode::from(1);
            }
        };
        let config_demo = config.demo;
        let (ws, http) = if config.tls.is_some() { ("wss", "https") } else { ("ws", "http") };
        let server = match Server::start(listener, config, Clock::system()) {
            Ok(s) => s,
            Err(e) => {
                error!("cannot start: {e}");
                return ExitCode::from(1);
            }
        };
        let addr = server.local_addr();
        info!(%addr, "roomhub listening on {ws}://{addr}/ws");
        if let Some(secret) = args.jwt_secret.as_deref().filter(|_| dev_mode) {
            let spec = TokenSpec {
                user: "alice".into(),
                name: Some("Alice".into()),
                rooms: Vec::new(),
            };
            let token = mint_token(secret, &spec, std::time::Duration::from_secs(24 * 3600), Clock::system().unix_seconds());
            println!(
                "\nroomhub is running with a development secret ({}).\n\
                 Connect as alice (token valid 24 h):\n\n  \
                 wscat -c '{ws}://{addr}/ws?token={token}'\n\n\
                 then type:  {{\"type\":\"join_room\",\"room\":\"general\"}}\n\
                 and:        {{\"type\":\"send_message\",\"room\":\"general\",\"payload\":{{\"content\":\"Hello!\"}}}}\n\
                 More tokens: cargo run --release --bin roomhub -- token --user bob\n",
                dev_secret_display().display()
            );
            if config_demo {
                println!("Or open the demo chat in a browser:  {http}://{addr}/\n");
            }
        }
        let stop = server.shutdown_token();
        tokio::spawn(async move {
            wait_for_signal().await;
            stop.cancel();
        });
        server.wait().await;
        info!("stopped");
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The I/O threads (`roomhub-io-0`, `roomhub-io-1`, ...): connections'
/// reads and writes, HTTP, the cluster's tasks. The hub and the store have
/// threads of their own, so each thread's CPU can be read apart from
/// `/proc/<pid>/task/*/stat`.
fn runtime_builder(io_threads: usize) -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let next = std::sync::atomic::AtomicUsize::new(0);
    builder.worker_threads(io_threads).thread_name_fn(move || {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("roomhub-io-{n}")
    });
    builder
}
