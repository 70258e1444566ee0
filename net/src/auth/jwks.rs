//! Keys from an identity provider (`--jwt-jwks-url`): its JWKS document,
//! fetched at start, every refresh period, and when a token names a `kid`
//! the set does not have, at most once per refetch interval (so a flood
//! of made-up `kid`s costs the provider one request per interval, not one
//! per token). A fetch that fails, or a document without one usable key,
//! keeps the last good set (and says so in the log). Entries that cannot
//! be used are skipped, each with its reason logged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::auth::keys::Key;

/// The largest JWKS document read.
const DOCUMENT_MAX_BYTES: usize = 1 << 20;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The most keys kept from one document.
const MAX_KEYS: usize = 100;

/// Where and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwksConfig {
    /// `http://` or `https://`.
    pub url: Uri,
    /// Between scheduled fetches.
    pub refresh: Duration,
    /// The least time between two fetches an unknown `kid` asks for.
    pub refetch_interval: Duration,
}

/// The provider's keys as last fetched, and the fetching.
pub(crate) struct Jwks {
    config: JwksConfig,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    keys: RwLock<Arc<Vec<Key>>>,
    /// A good set has been fetched at least once.
    ready: AtomicBool,
    /// Fetches made (attempts, good or not).
    fetches: AtomicU64,
    /// When the last fetch started; one fetch at a time.
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    /// Starts fetching (now, then every refresh period) on the current
    /// runtime, for as long as the returned `Arc` lives.
    pub(crate) fn start(config: JwksConfig) -> Result<Arc<Jwks>, String> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("--jwt-jwks-url: no system root certificates: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let jwks = Arc::new(Jwks {
            config,
            client: Client::builder(TokioExecutor::new()).build(connector),
            keys: RwLock::new(Arc::new(Vec::new())),
            ready: AtomicBool::new(false),
            fetches: AtomicU64::new(0),
            last: tokio::sync::Mutex::new(None),
        });
        tokio::spawn(refresh_periodically(Arc::downgrade(&jwks)));
        Ok(jwks)
    }

    pub(crate) fn config(&self) -> &JwksConfig {
        &self.config
    }

    /// The keys now.
    pub(crate) fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether a good set has been fetched (until then no token verifies
    /// with the provider's keys, and `/readyz` says so).
    pub(crate) fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Fetches made so far.
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// A token named `kid`, which the set lacks: fetch again, unless a
    /// fetch started within the refetch interval (then the set is what it
    /// is). Waits for a fetch in flight. The keys afterwards.
    pub(crate) async fn refetch_for(&self, kid: &str) -> Arc<Vec<Key>> {
        let mut last = self.last.lock().await;
        if crate::auth::keys::names(&self.keys(), kid) {
            return self.keys();
        }
        if last.is_some_and(|at| at.elapsed() < self.config.refetch_interval) {
            return self.keys();
        }
        *last = Some(Instant::now());
        self.fetch().await;
        self.keys()
    }

    /// The scheduled fetch.
    async fn scheduled(&self) {
        let mut last = self.last.lock().await;
        *last = Some(Instant::now());
        self.fetch().await;
    }

    /// One fetch; a good document replaces the set.
    async fn fetch(&self) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let url = &self.config.url;
        match tokio::time::timeout(FETCH_TIMEOUT, self.document()).await {
            Ok(Ok(keys)) => {
                let kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
                info!(%url, keys = keys.len(), kids = ?kids, "JWKS fetched");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                self.ready.store(true, Ordering::Relaxed);
            }
            Ok(Err(why)) => {
                warn!(%url, "JWKS fetch failed, the last good keys stay in use: {why}")
            }
            Err(_) => warn!(%url, "JWKS fetch timed out, the last good keys stay in use"),
        }
    }

    async fn document(&self) -> Result<Vec<Key>, String> {
        let request = hyper::Request::get(self.config.url.clone())
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = Limited::new(response.into_body(), DOCUMENT_MAX_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the document: {e}"))?
            .to_bytes();
        parse_document(&body)
    }
}

/// The usable keys of a JWKS document; entries that are not are skipped
/// with their reason logged. A document without one usable key is an error.
pub(crate) fn parse_document(body: &[u8]) -> Result<Vec<Key>, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let entries = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("no \"keys\" array")?;
    let mut keys = Vec::new();
    for (n, entry) in entries.iter().enumerate() {
        if keys.len() == MAX_KEYS {
            warn!("JWKS: more than {MAX_KEYS} keys, the rest are ignored");
            break;
        }
        match Key::from_jwk(entry) {
            Ok(key) => keys.push(key),
            Err(why) => {
                let kid = entry.get("kid").and_then(|k| k.as_str()).unwrap_or("");
                let kid: String = kid.chars().take(64).collect();
                warn!(entry = n, kid = %kid.escape_debug(), "JWKS key skipped: {why}");
            }
        }
    }
    if keys.is_empty() {
        return Err(format!("none of its {} keys is usable", entries.len()));
    }
    Ok(keys)
}

async fn refresh_periodically(jwks: Weak<Jwks>) {
    loop {
        let Some(strong) = jwks.upgrade() else { return };
        strong.scheduled().await;
        // Until the first good set, try again sooner than the period.
        let wait = if strong.ready() {
            strong.config.refresh
        } else {
            strong
                .config
                .refetch_interval
                .max(Duration::from_millis(100))
        };
        drop(strong);
        tokio::time::sleep(wait).await;
    }
}
