//! Configuration: command-line flags, `ROOMHUB_*` environment variables and an
//! optional TOML file, in that order of precedence, all described by
//! `roomhub --help`. The file's keys are the long flag names
//! (`max-connections = 500`, `allowed-origins = ["https://a.example"]`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use roomhub_core::{Config as CoreConfig, Namespace as CoreNamespace, NodeId};

use crate::auth::{AuthConfig, VerifyKey};
use crate::seq::store::Fsync;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "roomhub",
    version,
    about = "A real-time rooms server: WebSocket + JWT, ordered lossless rooms, presence and recovery.",
    after_help = "With no configuration, roomhub listens on 127.0.0.1:8080 with a development secret \
                  (kept in ./.roomhub/dev-secret) and prints a wscat command to connect.\n\
                  Settings come from flags, then ROOMHUB_* variables, then the --config TOML file \
                  (keys are the long flag names)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Print one HS256 token for the secret the server would use.
    Token(TokenArgs),
}

#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// The user id (`user_id` claim).
    #[arg(long)]
    pub user: String,
    /// Display name (`name` claim); defaults to the user id.
    #[arg(long)]
    pub name: Option<String>,
    /// Rooms the token may join: names or `prefix*` patterns, comma-separated. Default: any room.
    #[arg(long, value_delimiter = ',')]
    pub rooms: Vec<String>,
    /// Lifetime, such as 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// HS256 secret; defaults to the server's development secret.
    #[arg(long, env = "ROOMHUB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// The server API key, when one is configured: a hint on how to call
    /// the API is printed (to stderr, so stdout stays the token).
    #[arg(long, env = "ROOMHUB_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// A TOML file with any of these settings, keyed by long flag name.
    #[arg(long, env = "ROOMHUB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "ROOMHUB_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// TLS certificate chain (PEM) to serve `https://` and `wss://` on
    /// the listen address; re-read when the file changes, and on SIGHUP.
    #[arg(long, env = "ROOMHUB_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(long, env = "ROOMHUB_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// HS256 secret for client tokens. Without it (and without a public key) a
    /// development secret is used, on loopback addresses only.
    #[arg(long, env = "ROOMHUB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM file with a public key for client tokens: RSA (RS256), EC
    /// P-256 (ES256) or Ed25519 (EdDSA), decided by the key. `KID=PATH`
    /// checks only tokens whose `kid` header is KID against it (a key
    /// without a kid checks any token no other key names). Repeat for
    /// several (key rotation without a provider); comma-separated in the
    /// environment.
    #[arg(long, env = "ROOMHUB_JWT_PUBLIC_KEY", value_delimiter = ',')]
    pub jwt_public_key: Vec<String>,
    /// An identity provider's JWKS URL (http:// or https://, such as
    /// https://example.eu.auth0.com/.well-known/jwks.json): its RSA, EC
    /// P-256 and Ed25519 keys verify client tokens, picked by `kid`.
    #[arg(long, env = "ROOMHUB_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// Seconds between scheduled fetches of the JWKS.
    #[arg(long, env = "ROOMHUB_JWT_JWKS_REFRESH_SECS", default_value_t = 300)]
    pub jwt_jwks_refresh_secs: u64,
    /// A token naming a `kid` the JWKS lacks fetches it again, at most
    /// once per this many milliseconds.
    #[arg(
        long,
        env = "ROOMHUB_JWT_JWKS_REFETCH_INTERVAL_MS",
        default_value_t = 10_000
    )]
    pub jwt_jwks_refetch_interval_ms: u64,
    /// Required `iss` claim.
    #[arg(long, env = "ROOMHUB_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "ROOMHUB_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Refuse tokens without `exp`.
    #[arg(long, env = "ROOMHUB_JWT_REQUIRE_EXP", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = ArgAction::Set)]
    pub jwt_require_exp: bool,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[arg(long, env = "ROOMHUB_JWT_LEEWAY_SECS", default_value_t = 0)]
    pub jwt_leeway_secs: u64,
    /// Origins allowed to open WebSockets, comma-separated. Empty: any origin (a warning is logged).
    #[arg(long, env = "ROOMHUB_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// WebSocket connections at most; more are refused with 503.
    #[arg(long, env = "ROOMHUB_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Connections per user at most; more are refused with 429. 0: no limit.
    #[arg(long, env = "ROOMHUB_MAX_CONNECTIONS_PER_USER", default_value_t = 16)]
    pub max_connections_per_user: usize,
    /// WebSocket connections one client address (an IPv6 /64) may hold at
    /// once; more are refused with 429. 0: no limit (the default: behind a
    /// proxy every client has the proxy's address).
    #[arg(long, env = "ROOMHUB_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,
    /// New WebSocket connections one client address may open per second;
    /// more are refused with 429. 0: no limit.
    #[arg(long, env = "ROOMHUB_CONNECTION_RATE_PER_IP", default_value_t = 0)]
    pub connection_rate_per_ip: u32,
    /// The per-address limits do not apply to loopback clients (a local
    /// proxy, a benchmark on the same machine).
    #[arg(long, env = "ROOMHUB_PER_IP_EXEMPT_LOOPBACK")]
    pub per_ip_exempt_loopback: bool,
    /// Time from TCP accept to a complete upgrade request.
    #[arg(long, env = "ROOMHUB_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// Largest text frame; larger ones close the connection with 1009.
    #[arg(long, env = "ROOMHUB_MAX_MESSAGE_BYTES", default_value_t = 4096)]
    pub max_message_bytes: usize,
    /// Largest `content` of a message, in UTF-8 bytes.
    #[arg(long, env = "ROOMHUB_MAX_CONTENT_BYTES", default_value_t = 2000)]
    pub max_content_bytes: usize,
    /// Rooms one connection may be in.
    #[arg(long, env = "ROOMHUB_MAX_ROOMS_PER_CONNECTION", default_value_t = 100)]
    pub max_rooms_per_connection: usize,
    /// Bytes queued for one connection before it is closed as a slow consumer (4000).
    #[arg(long, env = "ROOMHUB_SEND_QUEUE_BYTES", default_value_t = 1 << 20)]
    pub send_queue_bytes: usize,
    /// Interval between pings.
    #[arg(long, env = "ROOMHUB_PING_INTERVAL_MS", default_value_t = 54_000)]
    pub ping_interval_ms: u64,
    /// Silence (no pong or other traffic) that ends a connection.
    #[arg(long, env = "ROOMHUB_PONG_WAIT_MS", default_value_t = 60_000)]
    pub pong_wait_ms: u64,
    /// Time one write may take before the connection is dropped.
    #[arg(long, env = "ROOMHUB_WRITE_WAIT_MS", default_value_t = 10_000)]
    pub write_wait_ms: u64,
    /// Messages per second per connection (send_message, send_direct, typing). 0: no limit.
    #[arg(long, env = "ROOMHUB_RATE_LIMIT_PER_SECOND", default_value_t = 1)]
    pub rate_limit_per_second: u32,
    /// Messages a connection may send at once before the rate applies.
    #[arg(long, env = "ROOMHUB_RATE_LIMIT_BURST", default_value_t = 10)]
    pub rate_limit_burst: u32,
    /// Messages kept per room for recovery.
    #[arg(long, env = "ROOMHUB_HISTORY_MAX_MESSAGES", default_value_t = 1000)]
    pub history_max_messages: usize,
    /// How long messages stay recoverable.
    #[arg(long, env = "ROOMHUB_HISTORY_MAX_AGE_SECS", default_value_t = 86_400)]
    pub history_max_age_secs: u64,
    /// Bytes every room's kept messages may take together, where they are
    /// kept: in memory with --memory (default: a quarter of the machine's
    /// memory), on disk with the store (counting each message's key and
    /// JSON; the file takes about four times that. Default: an eighth of
    /// the data directory's free space, at most a sixteenth of its file
    /// system). Over it, the
    /// least recently active rooms lose their history first (a rejoin from
    /// before is told `recovered: false`). 0: no bound.
    #[arg(long, env = "ROOMHUB_HISTORY_MAX_BYTES")]
    pub history_max_bytes: Option<usize>,
    /// On shutdown, time allowed for queues to drain after the 1001 close.
    #[arg(long, env = "ROOMHUB_DRAIN_TIMEOUT_MS", default_value_t = 5_000)]
    pub drain_timeout_ms: u64,
    /// On shutdown, time between turning unready (`/readyz` answers 503)
    /// and closing connections, for load balancers that poll readiness.
    #[arg(long, env = "ROOMHUB_SHUTDOWN_DELAY_MS", default_value_t = 0)]
    pub shutdown_delay_ms: u64,
    /// Directory of the embedded store that keeps room history across restarts.
    #[arg(long, env = "ROOMHUB_DATA_DIR", default_value = "roomhub-data")]
    pub data_dir: PathBuf,
    /// Threads that read and write the sockets (I/O shards); the hub has a
    /// thread of its own besides. Default: the cores this process may use.
    #[arg(long, env = "ROOMHUB_IO_THREADS")]
    pub io_threads: Option<usize>,
    /// When the store counts a message as stored, and acks it: `background`
    /// (written to its journal: survives a crash of the process, synced to
    /// disk within a second) or `always` (synced before the ack: survives a
    /// power loss, and costs an fsync per batch).
    #[arg(long, env = "ROOMHUB_FSYNC", value_enum, default_value_t = Fsync::Background)]
    pub fsync: Fsync,
    /// Keep history in memory only (lost on restart; clients then get recovered:false).
    #[arg(long, env = "ROOMHUB_MEMORY", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = ArgAction::Set)]
    pub memory: bool,
    /// Cluster mode: share rooms with other nodes through this Redis
    /// (e.g. redis://127.0.0.1:6379), or through several, comma-separated,
    /// with rooms spread over them by name (every node must list the same
    /// ones in the same order). History then lives in Redis, not in the
    /// data directory.
    #[arg(long, env = "ROOMHUB_REDIS")]
    pub redis: Option<String>,
    /// Cluster mode on a Redis Cluster: some of its nodes' URLs,
    /// comma-separated (the others are found from them). Rooms live on the
    /// master serving their slot; publications use sharded pub/sub.
    #[arg(long, env = "ROOMHUB_REDIS_CLUSTER", conflicts_with = "redis")]
    pub redis_cluster: Option<String>,
    /// Cluster mode: a node that stops refreshing its liveness for this long
    /// is considered gone, and its users leave their rooms.
    #[arg(long, env = "ROOMHUB_NODE_TTL_MS", default_value_t = 10_000)]
    pub node_ttl_ms: u64,
    /// Serve the demo chat page at `/` (default: on in development mode,
    /// off otherwise).
    #[arg(long, env = "ROOMHUB_DEMO", num_args = 0..=1, default_missing_value = "true",
          action = ArgAction::Set)]
    pub demo: Option<bool>,
    /// Enables the server API (`POST /api/<method>`, docs/api.md) for
    /// backends, with this key as a Bearer token. Without it the API
    /// answers 404.
    #[arg(long, env = "ROOMHUB_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Turns on the admin UI at `/admin` (nodes, connections, rooms, a
    /// live chart, a user's connections with a disconnect button, the
    /// limits), opened with this password; the API key opens it too.
    /// Off when neither is set.
    #[arg(long, env = "ROOMHUB_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Backend hook asked before every WebSocket connection (an http://
    /// URL; docs/hooks.md): it may refuse it, or set the user's name and
    /// rooms.
    #[arg(long, env = "ROOMHUB_HOOK_CONNECT_URL")]
    pub hook_connect_url: Option<String>,
    /// Rules for the rooms of a namespace (rooms named `ns:rest`), as
    /// `ns:key=value,...` with keys presence, client_publish, typing,
    /// max_members, join_hook, publish_hook, history_size,
    /// history_age_secs (docs/namespaces.md). Repeat
    /// for several; in the config file, `[namespaces.<ns>]` tables.
    #[arg(long = "namespace", env = "ROOMHUB_NAMESPACES", value_delimiter = ';')]
    pub namespace: Vec<String>,
    /// Backend hook asked before every join (docs/hooks.md): allows it, or
    /// refuses it with the app's own error code.
    #[arg(long, env = "ROOMHUB_HOOK_JOIN_URL")]
    pub hook_join_url: Option<String>,
    /// Backend hook asked before every member's message is stored: allows
    /// it, refuses it, or replaces its content.
    #[arg(long, env = "ROOMHUB_HOOK_PUBLISH_URL")]
    pub hook_publish_url: Option<String>,
    /// How long a hook may take before it counts as failed.
    #[arg(long, env = "ROOMHUB_HOOK_TIMEOUT_MS", default_value_t = 1000)]
    pub hook_timeout_ms: u64,
    /// A hook that fails (timeout, error, garbage) lets the action through
    /// instead of refusing it with UNAVAILABLE.
    #[arg(long, env = "ROOMHUB_HOOK_FAIL_OPEN", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = ArgAction::Set)]
    pub hook_fail_open: bool,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "ROOMHUB_LOG_JSON", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = ArgAction::Set)]
    pub log_json: bool,
    /// Log filter (tracing EnvFilter syntax), such as `info` or `roomhub_net=debug`.
    #[arg(long, env = "ROOMHUB_LOG", default_value = "info")]
    pub log: String,
}

/// Parses the command line (and environment), then fills settings left at
/// their defaults from the `--config` file, if any.
/// Errors are clap's, so `--help` and `--version` print and exit as usual
/// through [`clap::Error::exit`].
pub fn parse_cli<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let matches = Cli::command().try_get_matches_from(&args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let Some(path) = cli.server.config.clone() else {
        return Ok(cli);
    };
    if cli.command.is_some() {
        return Ok(cli);
    }
    let extra = file_args(&path, |id| {
        matches!(
            matches.value_source(id),
            None | Some(ValueSource::DefaultValue)
        )
    })
    .map_err(|e| Cli::command().error(clap::error::ErrorKind::InvalidValue, e))?;
    let mut all = args;
    all.extend(extra.into_iter().map(Into::into));
    Cli::try_parse_from(all)
}

/// Turns a TOML file into `--key value` arguments for the settings
/// `unset(id)` says were not given on the command line or environment.
fn file_args(path: &Path, unset: impl Fn(&str) -> bool) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    config_text_args(&text, unset).map_err(|e| format!("config file {}: {e}", path.display()))
}

/// Turns the text of a TOML config file into `--key=value` arguments for
/// the settings `unset(id)` says were not given otherwise. Pure, for fuzzing.
pub fn config_text_args(text: &str, unset: impl Fn(&str) -> bool) -> Result<Vec<String>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let command = Cli::command();
    let mut out = Vec::new();
    for (key, value) in table {
        if key == "namespaces" {
            if unset("namespace") {
                out.extend(namespace_args(&value)?);
            }
            continue;
        }
        let id = key.replace('-', "_");
        let known = command
            .get_arguments()
            .any(|a| a.get_id() == id.as_str() && a.get_long().is_some() && id != "config");
        if !known {
            return Err(format!("unknown setting `{key}`"));
        }
        if !unset(&id) {
            continue;
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(format!("`{key}`: expected strings, found {other}")),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            other => return Err(format!("`{key}`: unsupported value {other}")),
        };
        out.push(format!("--{}={text}", key.replace('_', "-")));
    }
    Ok(out)
}

/// `[namespaces.<ns>]` tables as `--namespace=ns:key=value,...`.
fn namespace_args(value: &toml::Value) -> Result<Vec<String>, String> {
    let toml::Value::Table(namespaces) = value else {
        return Err("`namespaces`: expected [namespaces.<name>] tables".into());
    };
    let mut out = Vec::new();
    for (name, rules) in namespaces {
        let toml::Value::Table(rules) = rules else {
            return Err(format!("`namespaces.{name}`: expected a table"));
        };
        let mut parts = Vec::new();
        for (key, v) in rules {
            let text = match v {
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Integer(i) => i.to_string(),
                other => {
                    return Err(format!(
                        "`namespaces.{name}.{key}`: unsupported value {other}"
                    ));
                }
            };
            parts.push(format!("{key}={text}"));
        }
        out.push(format!("--namespace={name}:{}", parts.join(",")));
    }
    Ok(out)
}

/// One `--namespace ns:key=value,...`.
fn parse_namespace(text: &str) -> Result<CoreNamespace, String> {
    let (name, rules) = text.split_once(':').unwrap_or((text, ""));
    if name.is_empty() || name.len() > 32 || name.chars().any(|c| c.is_control() || c == ':') {
        return Err(format!(
            "--namespace {text:?}: a name of 1-32 bytes, no ':' or control characters"
        ));
    }
    let mut ns = CoreNamespace::new(name);
    for rule in rules.split(',').filter(|r| !r.is_empty()) {
        let (key, value) = rule
            .split_once('=')
            .ok_or_else(|| format!("--namespace {name}: {rule:?} is not key=value"))?;
        let flag = |v: &str| {
            v.parse::<bool>()
                .map_err(|_| format!("--namespace {name}: {key} must be true or false"))
        };
        fn number<T: std::str::FromStr>(name: &str, key: &str, v: &str) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("--namespace {name}: {key} must be a number"))
        }
        match key.trim() {
            "presence" => ns.presence = flag(value)?,
            "client_publish" => ns.client_publish = flag(value)?,
            "typing" => ns.typing = flag(value)?,
            "join_hook" => ns.join_hook = flag(value)?,
            "publish_hook" => ns.publish_hook = flag(value)?,
            "max_members" => {
                let n: usize = number(name, key, value)?;
                ns.max_members = (n > 0).then_some(n);
            }
            "history_size" => ns.history_size = Some(number(name, key, value)?),
            "history_age_secs" => {
                ns.history_age_ms = Some(number::<u64>(name, key, value)?.saturating_mul(1000));
            }
            other => return Err(format!("--namespace {name}: unknown rule {other:?}")),
        }
    }
    Ok(ns)
}

/// What one client address may open (see `--max-connections-per-ip`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerIpLimits {
    /// WebSocket connections one address may hold at once.
    pub max_connections: usize,
    /// New WebSocket connections one address may open per second (and at
    /// once, after a quiet second).
    pub connections_per_second: u32,
    /// Loopback clients (a local proxy, a benchmark) are not limited.
    pub exempt_loopback: bool,
}

/// Everything a server instance needs, resolved and validated.
#[derive(Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The log filter (`--log`), checked.
    pub log: String,
    /// Serve TLS with these files (`None`: plain TCP).
    pub tls: Option<crate::http::tls::TlsFiles>,
    pub auth: AuthConfig,
    pub allowed_origins: Vec<String>,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub per_ip: PerIpLimits,
    /// Tests only: makes the embedded store's writes fail as on a full
    /// disk while set. Never set from flags.
    pub disk_faults: Option<crate::seq::faults::DiskFaults>,
    pub handshake_timeout: Duration,
    pub send_queue_bytes: usize,
    pub write_wait: Duration,
    pub drain_timeout: Duration,
    /// Between turning unready and closing connections on shutdown.
    pub shutdown_delay: Duration,
    /// The core's limits and periods.
    pub core: CoreConfig,
    /// Seeds room epochs; a fresh one each start keeps lineages apart.
    pub sequencer_seed: u64,
    /// The store's directory; `None` keeps history in memory.
    pub data_dir: Option<PathBuf>,
    /// The store's disk budget: every room's stored messages together
    /// (0: none). The hub's copy of open rooms' history is bounded by
    /// `core.history_max_bytes`.
    pub store_max_bytes: u64,
    /// When the store acks (with a data directory).
    pub fsync: Fsync,
    /// I/O shards: threads in the binary's runtime, and the tasks that
    /// write the sockets (at least 1).
    pub io_threads: usize,
    /// The hub runs on a thread of its own (`roomhub-hub`). Off only where
    /// time is simulated and every task must run on the simulator's
    /// runtime.
    pub hub_thread: bool,
    /// Cluster mode's Redis URLs, one per shard (empty: not on listed
    /// shards).
    pub redis: Vec<String>,
    /// Cluster mode on a Redis Cluster: seed URLs (empty: not on one).
    pub redis_cluster: Vec<String>,
    pub node_ttl: Duration,
    /// The key the server API requires; `None` disables it.
    pub api_key: Option<String>,
    /// The admin UI's password; with no password and no API key the admin
    /// UI answers 404.
    pub admin_password: Option<String>,
    /// Serve the demo page at `/`.
    pub demo: bool,
    /// Development mode only: `POST /demo/token` mints a token for a name
    /// with this HS256 secret, so the demo page can log in by name.
    pub demo_token_secret: Option<String>,
    /// Backend hooks (`--hook-*`).
    pub hooks: crate::hooks::HookConfig,
}

/// A hook's URL: plain `http://` (put a TLS proxy in front of an https one).
fn hook_url(flag: &str, url: Option<&str>) -> Result<Option<hyper::Uri>, String> {
    let Some(url) = url.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{flag}: {url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(format!(
            "{flag}: {url:?} must be an http:// URL with a host (hooks are plain HTTP; use a local TLS proxy for https)"
        ));
    }
    Ok(Some(uri))
}

/// The keys and rules client tokens are verified with.
fn auth_config(args: &ServerArgs) -> Result<AuthConfig, String> {
    let mut keys = Vec::new();
    if let Some(secret) = &args.jwt_secret {
        keys.push(VerifyKey::Secret(secret.clone().into_bytes()));
    }
    for given in &args.jwt_public_key {
        let (kid, path) = split_kid(given.trim());
        let pem = std::fs::read(path)
            .map_err(|e| format!("--jwt-public-key: cannot read {path}: {e}"))?;
        let key = VerifyKey::PublicKeyPem {
            pem,
            kid: kid.map(str::to_string),
        };
        keys.push(key);
    }
    let jwks = match args.jwt_jwks_url.as_deref().filter(|u| !u.is_empty()) {
        None => None,
        Some(url) => {
            let uri: hyper::Uri = url
                .parse()
                .map_err(|e| format!("--jwt-jwks-url: {url:?} is not a URL: {e}"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(format!(
                    "--jwt-jwks-url: {url:?} must be an http:// or https:// URL"
                ));
            }
            Some(crate::auth::JwksConfig {
                url: uri,
                refresh: Duration::from_secs(args.jwt_jwks_refresh_secs.max(1)),
                refetch_interval: Duration::from_millis(args.jwt_jwks_refetch_interval_ms),
            })
        }
    };
    if keys.is_empty() && jwks.is_none() {
        return Err("no JWT key configured".into());
    }
    let config = AuthConfig {
        keys,
        jwks,
        issuer: args.jwt_issuer.clone(),
        audience: args.jwt_audience.clone(),
        require_exp: args.jwt_require_exp,
        leeway_secs: args.jwt_leeway_secs,
    };
    // Every key must load now, not at the first token.
    for key in &config.keys {
        if let VerifyKey::PublicKeyPem { pem, kid } = key {
            crate::auth::check_pem(pem).map_err(|e| match kid {
                Some(kid) => format!("--jwt-public-key {kid}: {e}"),
                None => format!("--jwt-public-key: {e}"),
            })?;
        }
    }
    Ok(config)
}

/// `KID=PATH` or `PATH` (a `=` after a `/` belongs to the path).
fn split_kid(given: &str) -> (Option<&str>, &str) {
    match given.split_once('=') {
        Some((kid, path)) if !kid.is_empty() && !kid.contains('/') => (Some(kid), path),
        _ => (None, given),
    }
}

/// A comma-separated list of URLs: none empty, none twice.
fn url_list(flag: &str, list: Option<&str>) -> Result<Vec<String>, String> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    let urls: Vec<String> = list.split(',').map(|u| u.trim().to_string()).collect();
    if urls.iter().any(String::is_empty) {
        return Err(format!("{flag}: an empty URL in the list"));
    }
    let mut unique = urls.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != urls.len() {
        return Err(format!("{flag}: a URL is listed twice"));
    }
    Ok(urls)
}

impl ServerConfig {
    /// Derives what follows from other settings, as the server runs them
    /// (at start and on every reload): the hub waits for the app's say on
    /// joins and messages only when there is a hook to ask, and a publish
    /// hook may put in no longer content than a member may.
    pub(crate) fn settle(&mut self) {
        self.core.join_hook = self.hooks.join.is_some();
        self.core.publish_hook = self.hooks.publish.is_some();
        self.hooks.max_content_bytes = self.core.max_content_bytes;
    }

    /// Defaults (the seed's), with `secret` for HS256 tokens.
    pub fn with_secret(secret: &str) -> Self {
        let args = Cli::try_parse_from(["roomhub", "--jwt-secret", secret, "--memory"])
            .expect("defaults always parse");
        ServerConfig::from_args(&args.server, rand::random()).expect("defaults are valid")
    }

    /// Resolves parsed arguments. `seed` feeds the sequencer and hub RNGs.
    pub fn from_args(args: &ServerArgs, seed: u64) -> Result<Self, String> {
        let auth = auth_config(args)?;
        if args.max_message_bytes < 64 {
            return Err("--max-message-bytes must be at least 64".into());
        }
        if args.node_ttl_ms < 400 {
            return Err("--node-ttl-ms must be at least 400".into());
        }
        if args.pong_wait_ms <= args.ping_interval_ms {
            return Err("--pong-wait-ms must be longer than --ping-interval-ms".into());
        }
        let redis = url_list("--redis", args.redis.as_deref())?;
        let redis_cluster = url_list("--redis-cluster", args.redis_cluster.as_deref())?;
        let clustered = !redis.is_empty() || !redis_cluster.is_empty();
        let durable = !args.memory && !clustered;
        let core = CoreConfig {
            // Unique per process start: stored messages name their sender by
            // (node, connection), and connection numbers restart at 1.
            node_id: NodeId(seed),
            seed,
            max_message_bytes: args.max_message_bytes,
            max_content_bytes: args.max_content_bytes,
            max_rooms_per_connection: args.max_rooms_per_connection,
            history_max_messages: args.history_max_messages,
            history_max_age_ms: args.history_max_age_secs.saturating_mul(1000),
            history_max_bytes: match args.history_max_bytes {
                None => crate::os::default_history_bytes(),
                Some(bound) if durable && bound > 0 => {
                    // The flag budgets the disk; the hub's copy of open
                    // rooms stays within the memory default too.
                    bound.min(crate::os::default_history_bytes())
                }
                Some(bound) => bound,
            },
            ping_interval_ms: args.ping_interval_ms,
            pong_wait_ms: args.pong_wait_ms,
            rate_limit_per_second: args.rate_limit_per_second,
            rate_limit_burst: args.rate_limit_burst,
            clustered,
            namespaces: {
                let mut list = Vec::new();
                for text in &args.namespace {
                    let ns = parse_namespace(text)?;
                    if list.iter().any(|n: &CoreNamespace| n.name == ns.name) {
                        return Err(format!("--namespace {}: given twice", ns.name));
                    }
                    list.push(ns);
                }
                list
            },
            ..CoreConfig::default()
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                let files = crate::http::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                };
                crate::http::tls::load(&files)?;
                Some(files)
            }
            (None, None) => None,
            _ => return Err("give both --tls-cert and --tls-key".into()),
        };
        tracing_subscriber::EnvFilter::try_new(&args.log)
            .map_err(|e| format!("--log {:?}: {e}", args.log))?;
        Ok(ServerConfig {
            listen: args.listen,
            log: args.log.clone(),
            tls,
            auth,
            allowed_origins: args
                .allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_string())
                .filter(|o| !o.is_empty())
                .collect(),
            max_connections: args.max_connections,
            max_connections_per_user: args.max_connections_per_user,
            per_ip: PerIpLimits {
                max_connections: args.max_connections_per_ip,
                connections_per_second: args.connection_rate_per_ip,
                exempt_loopback: args.per_ip_exempt_loopback,
            },
            disk_faults: None,
            handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
            send_queue_bytes: args.send_queue_bytes,
            write_wait: Duration::from_millis(args.write_wait_ms),
            drain_timeout: Duration::from_millis(args.drain_timeout_ms),
            shutdown_delay: Duration::from_millis(args.shutdown_delay_ms),
            core,
            sequencer_seed: seed.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15,
            data_dir: durable.then(|| args.data_dir.clone()),
            store_max_bytes: match (durable, args.history_max_bytes) {
                (false, _) => 0,
                (true, Some(bound)) => bound as u64,
                (true, None) => crate::os::default_disk_budget(&args.data_dir),
            },
            fsync: args.fsync,
            io_threads: match args.io_threads {
                Some(0) => return Err("--io-threads must be at least 1".into()),
                Some(n) => n,
                None => std::thread::available_parallelism().map_or(1, usize::from),
            },
            hub_thread: true,
            redis,
            redis_cluster,
            node_ttl: Duration::from_millis(args.node_ttl_ms),
            api_key: args.api_key.clone().filter(|k| !k.is_empty()),
            admin_password: args.admin_password.clone().filter(|k| !k.is_empty()),
            demo: args.demo.unwrap_or(false),
            demo_token_secret: None,
            hooks: crate::hooks::HookConfig {
                connect: hook_url("--hook-connect-url", args.hook_connect_url.as_deref())?,
                join: hook_url("--hook-join-url", args.hook_join_url.as_deref())?,
                publish: hook_url("--hook-publish-url", args.hook_publish_url.as_deref())?,
                max_content_bytes: args.max_content_bytes,
                timeout: Duration::from_millis(args.hook_timeout_ms.max(1)),
                fail_open: args.hook_fail_open,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seeds() {
        let cli = parse_cli(["roomhub"]).unwrap();
        let s = &cli.server;
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!((s.max_message_bytes, s.max_content_bytes), (4096, 2000));
        assert_eq!(
            (s.ping_interval_ms, s.pong_wait_ms, s.write_wait_ms),
            (54_000, 60_000, 10_000)
        );
        assert_eq!((s.rate_limit_burst, s.rate_limit_per_second), (10, 1));
        assert_eq!(s.send_queue_bytes, 1 << 20);
        assert!(s.jwt_require_exp);
    }

    #[test]
    fn flags_beat_the_file_and_the_file_fills_the_rest() {
        let dir = std::env::temp_dir().join(format!("roomhub-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("roomhub.toml");
        std::fs::write(
            &path,
            "max-connections = 77\nlisten = \"127.0.0.1:9\"\nallowed-origins = [\"https://a.example\", \"https://b.example\"]\nlog-json = true\n",
        )
        .unwrap();
        let cli = parse_cli([
            "roomhub",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:7",
        ])
        .unwrap();
        assert_eq!(cli.server.listen.to_string(), "127.0.0.1:7");
        assert_eq!(cli.server.max_connections, 77);
        assert_eq!(
            cli.server.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert!(cli.server.log_json);
        std::fs::write(&path, "max-conections = 1\n").unwrap();
        let err = parse_cli(["roomhub", "--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown setting `max-conections`"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bool_flags_take_optional_values() {
        let cli = parse_cli(["roomhub", "--log-json", "--jwt-require-exp=false"]).unwrap();
        assert!(cli.server.log_json);
        assert!(!cli.server.jwt_require_exp);
    }

    #[test]
    fn token_subcommand_parses() {
        let cli = parse_cli([
            "roomhub", "token", "--user", "alice", "--rooms", "a,b*", "--ttl", "2h",
        ])
        .unwrap();
        let Some(Command::Token(t)) = cli.command else {
            panic!("token subcommand")
        };
        assert_eq!(t.user, "alice");
        assert_eq!(t.rooms, ["a", "b*"]);
        assert_eq!(t.ttl, Duration::from_secs(7200));
    }

    #[test]
    fn fsync_defaults_to_background_and_io_threads_must_be_positive() {
        let defaults = parse_cli(["roomhub"]).unwrap();
        assert_eq!(defaults.server.fsync, Fsync::Background);
        let args = parse_cli([
            "roomhub",
            "--jwt-secret",
            "s",
            "--io-threads",
            "3",
            "--fsync",
            "always",
        ])
        .unwrap();
        let config = ServerConfig::from_args(&args.server, 1).unwrap();
        assert_eq!((config.io_threads, config.fsync), (3, Fsync::Always));
        assert!(config.hub_thread);
        let zero = parse_cli(["roomhub", "--jwt-secret", "s", "--io-threads", "0"]).unwrap();
        let err = ServerConfig::from_args(&zero.server, 1).err().unwrap();
        assert!(err.contains("--io-threads"), "{err}");
        assert!(parse_cli(["roomhub", "--fsync", "sometimes"]).is_err());
    }

    #[test]
    fn redis_takes_a_list_of_shards() {
        let config = |list: &str| {
            let args = parse_cli(["roomhub", "--jwt-secret", "s", "--redis", list]).unwrap();
            ServerConfig::from_args(&args.server, 1)
        };
        let two = config("redis://a:1, redis://b:2").unwrap();
        assert_eq!(two.redis, ["redis://a:1", "redis://b:2"]);
        assert!(two.core.clustered && two.data_dir.is_none());
        let err = config("redis://a:1,,redis://b:2").err().unwrap();
        assert!(err.contains("empty URL"), "{err}");
        let err = config("redis://a:1,redis://a:1").err().unwrap();
        assert!(err.contains("twice"), "{err}");
        let args = [
            "roomhub",
            "--jwt-secret",
            "s",
            "--redis-cluster",
            "redis://a:1,redis://b:1",
        ];
        let cluster = ServerConfig::from_args(&parse_cli(args).unwrap().server, 1).unwrap();
        assert_eq!(cluster.redis_cluster.len(), 2);
        assert!(cluster.core.clustered && cluster.data_dir.is_none() && cluster.redis.is_empty());
        let both = [
            "roomhub",
            "--redis",
            "redis://a:1",
            "--redis-cluster",
            "redis://b:1",
        ];
        assert!(parse_cli(both).is_err());
    }

    #[test]
    fn namespaces_come_from_flags_and_config_tables() {
        let config = |extra: &[&str]| {
            let mut args = vec!["roomhub", "--jwt-secret", "s"];
            args.extend_from_slice(extra);
            ServerConfig::from_args(&parse_cli(args).unwrap().server, 1)
        };
        let c = config(&[
            "--namespace",
            "feed:presence=false,typing=false",
            "--namespace",
            "duo:max_members=2,history_size=0",
            "--namespace",
            "log:history_size=5000,history_age_secs=60",
        ])
        .unwrap();
        assert_eq!(c.core.namespaces.len(), 3);
        // Each room shows its namespace's history; a sequencer keeps the
        // most any room shows.
        assert_eq!(c.core.history_of("duo:1"), (0, 24 * 3600 * 1000));
        assert_eq!(c.core.history_of("log:1"), (5000, 60_000));
        assert_eq!(c.core.history_of("feed:1"), (1000, 24 * 3600 * 1000));
        assert_eq!(c.core.history_retained(), (5000, 24 * 3600 * 1000));
        let feed = c.core.namespace_of("feed:x").unwrap();
        assert!(!feed.presence && !feed.typing && feed.client_publish);
        assert_eq!(c.core.namespace_of("duo:1").unwrap().max_members, Some(2));
        assert!(c.core.namespace_of("other:1").is_none() && c.core.namespace_of("feed").is_none());
        for bad in [
            "feed:presence=maybe",
            "feed:colour=red",
            "feed:typing",
            ":typing=false",
            "duo:max_members=x",
            "duo:history_size=-1",
            "duo:history_age_secs=soon",
        ] {
            assert!(config(&["--namespace", bad]).is_err(), "{bad}");
        }
        assert!(
            config(&[
                "--namespace",
                "a:typing=false",
                "--namespace",
                "a:presence=false"
            ])
            .is_err()
        );

        let args = config_text_args(
            "[namespaces.feed]\npresence = false\nclient_publish = false\n[namespaces.duo]\nmax_members = 2\n",
            |_| true,
        )
        .unwrap();
        assert_eq!(args.len(), 2);
        let mut cli = vec!["roomhub", "--jwt-secret", "s"];
        cli.extend(args.iter().map(String::as_str));
        let c = ServerConfig::from_args(&parse_cli(cli).unwrap().server, 1).unwrap();
        assert!(!c.core.namespace_of("feed:a").unwrap().client_publish);
        assert_eq!(c.core.namespace_of("duo:a").unwrap().max_members, Some(2));
        assert!(config_text_args("[namespaces.x]\npresence = \"no\"\n", |_| true).is_err());
    }

    #[test]
    fn public_keys_repeat_with_optional_kids_and_jwks_urls_are_checked() {
        let dir = std::env::temp_dir().join(format!("roomhub-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fixture = |name: &str| {
            let from = format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
            let to = dir.join(name);
            std::fs::copy(from, &to).unwrap();
            to.to_string_lossy().to_string()
        };
        let (rsa, ed) = (fixture("rsa-public.pem"), fixture("ed25519-public.pem"));
        let config = |extra: &[&str]| {
            let mut args = vec!["roomhub"];
            args.extend_from_slice(extra);
            ServerConfig::from_args(&parse_cli(args).unwrap().server, 1)
        };
        let old = format!("old={rsa}");
        let c = config(&["--jwt-public-key", &old, "--jwt-public-key", &ed]).unwrap();
        let kids: Vec<_> = c
            .auth
            .keys
            .iter()
            .map(|k| match k {
                VerifyKey::PublicKeyPem { kid, .. } => kid.clone(),
                VerifyKey::Secret(_) => panic!("no secret given"),
            })
            .collect();
        assert_eq!(kids, [Some("old".to_string()), None]);
        assert_eq!(split_kid("/etc/keys/a=b.pem"), (None, "/etc/keys/a=b.pem"));
        assert_eq!(split_kid("k1=/etc/k.pem"), (Some("k1"), "/etc/k.pem"));
        let c = config(&[
            "--jwt-jwks-url",
            "https://idp.example/.well-known/jwks.json",
        ])
        .unwrap();
        let jwks = c.auth.jwks.unwrap();
        assert_eq!(jwks.refresh, Duration::from_secs(300));
        assert_eq!(jwks.refetch_interval, Duration::from_secs(10));
        assert!(c.auth.keys.is_empty());
        for bad in ["ftp://idp.example/jwks", "not a url", "/relative/jwks.json"] {
            let err = config(&["--jwt-jwks-url", bad]).err().unwrap();
            assert!(err.contains("--jwt-jwks-url"), "{bad}: {err}");
        }
        let err = config(&["--jwt-public-key", &fixture("rsa-private.pem")])
            .err()
            .unwrap();
        assert!(err.contains("--jwt-public-key"), "{err}");
        let err = config(&["--jwt-public-key", "k=/nonexistent.pem"])
            .err()
            .unwrap();
        assert!(err.contains("cannot read /nonexistent.pem"), "{err}");
        assert!(config(&[]).is_err(), "no key at all");
        std::fs::remove_dir_all(&dir).ok();
    }
}
