//! The `roomhub` binary: `roomhub [flags]` serves; `roomhub token` mints a
//! development token.

use std::process::ExitCode;
use std::sync::Arc;

use roomhub_net::dev::{TokenSpec, dev_secret, dev_secret_display, mint_token};
use roomhub_net::{
    Clock, Command, LogFilter, Server, ServerArgs, ServerConfig, TokenArgs, parse_cli,
};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match parse_cli(argv.clone()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Some(Command::Token(args)) => token(&args),
        None => serve(cli.server, argv),
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

/// Starts logging; the setter a reload changes the filter with.
fn init_logging(args: &ServerArgs) -> LogFilter {
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only on a terminal: not in a journal or a log file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    macro_rules! setter {
        ($handle:expr) => {{
            let handle = $handle;
            Arc::new(move |filter: &str| {
                let filter = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
                handle.reload(filter).map_err(|e| e.to_string())
            })
        }};
    }
    if args.log_json {
        let builder = builder.json().with_filter_reloading();
        let set = setter!(builder.reload_handle());
        builder.init();
        set
    } else {
        let builder = builder.with_filter_reloading();
        let set = setter!(builder.reload_handle());
        builder.init();
        set
    }
}

/// The configuration `args` say, as the binary runs it: without a key on
/// loopback, the development secret and the demo page.
fn resolve(mut args: ServerArgs, seed: u64) -> Result<ServerConfig, String> {
    let dev = dev_mode(&args);
    if dev {
        args.jwt_secret = Some(dev_secret().map_err(|e| {
            format!(
                "cannot read or create {}: {e}",
                dev_secret_display().display()
            )
        })?);
    }
    let mut config = ServerConfig::from_args(&args, seed)?;
    if dev {
        // The demo page logs in by name with the development secret.
        config.demo = args.demo.unwrap_or(true);
        config.demo_token_secret = args.jwt_secret.clone().filter(|_| config.demo);
    }
    Ok(config)
}

/// No key of any kind is configured: the development secret is used.
fn dev_mode(args: &ServerArgs) -> bool {
    args.jwt_secret.is_none() && args.jwt_public_key.is_empty() && args.jwt_jwks_url.is_none()
}

fn serve(args: ServerArgs, argv: Vec<std::ffi::OsString>) -> ExitCode {
    let set_log = init_logging(&args);
    let dev_mode = dev_mode(&args);
    if dev_mode && !args.listen.ip().is_loopback() {
        error!(
            listen = %args.listen,
            "refusing to serve a non-loopback address with the development secret: set --jwt-secret, --jwt-public-key or --jwt-jwks-url"
        );
        return ExitCode::from(2);
    }
    let config = match resolve(args.clone(), rand::random()) {
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
        server.set_log_filter(set_log);
        server.set_config_source(Arc::new(move || {
            let cli = parse_cli(argv.clone()).map_err(|e| {
                // clap's message, without its "error: " and help hint.
                let text = e.to_string();
                let first = text.lines().next().unwrap_or_default();
                first.trim_start_matches("error: ").to_string()
            })?;
            resolve(cli.server, 0)
        }));
        let dev_secret = dev_mode.then(dev_secret).and_then(Result::ok);
        if let Some(secret) = dev_secret.as_deref() {
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
        #[cfg(unix)]
        {
            // SIGHUP: read the configuration again (the file, the
            // environment, the command line) and the TLS files.
            use tokio::signal::unix::{SignalKind, signal};
            let reloader = server.reloader();
            match signal(SignalKind::hangup()) {
                Ok(mut hangups) => {
                    tokio::spawn(async move {
                        while hangups.recv().await.is_some() {
                            info!("SIGHUP: reloading the configuration");
                            // Refusals are logged by the reload itself.
                            let _ = reloader.reload().await;
                        }
                    });
                }
                Err(e) => warn!("cannot listen for SIGHUP (no reload): {e}"),
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
