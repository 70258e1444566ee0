//! Keys from an identity provider, through a real server and a real HTTP
//! provider on loopback that serves a JWKS document the test changes:
//! rotation to a new `kid`, ES256 and EdDSA keys, a flood of unknown
//! `kid`s that costs the provider a bounded number of fetches, the
//! provider down (the last good keys stay in use), and readiness before
//! the first fetch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use roomhub_net::Clock;
use roomhub_net::auth::JwksConfig;
use roomhub_tests::server::{Client, TestServer, eventually};
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("fixture")
}

/// The DER inside a PEM file.
fn der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).expect("base64")
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The fixture keys as JWKs, named `kid`.
fn rsa_jwk(kid: &str) -> Value {
    let key = rsa::RsaPublicKey::from_public_key_pem(&fixture("rsa-public.pem")).unwrap();
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
           "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be())})
}

fn ec_jwk(kid: &str) -> Value {
    // A P-256 SubjectPublicKeyInfo ends with the point 04 || x || y.
    let spki = der(&fixture("ec-public.pem"));
    let point = &spki[spki.len() - 64..];
    json!({"kty": "EC", "crv": "P-256", "kid": kid,
           "x": b64(&point[..32]), "y": b64(&point[32..])})
}

fn ed_jwk(kid: &str) -> Value {
    let spki = der(&fixture("ed25519-public.pem"));
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(&spki[spki.len() - 32..])})
}

fn token(alg: Algorithm, kid: &str, user: &str) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(fixture("rsa-private.pem").as_bytes()),
        Algorithm::ES256 => EncodingKey::from_ec_pem(fixture("ec-private.pem").as_bytes()),
        _ => EncodingKey::from_ed_pem(fixture("ed25519-private.pem").as_bytes()),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    let exp = Clock::system().unix_seconds() + 3600;
    encode(&header, &json!({"sub": user, "exp": exp}), &key).unwrap()
}

/// A provider on loopback: serves `doc` at `/.well-known/jwks.json`
/// (503 while `up` is false), counting requests and noting their paths.
#[derive(Default)]
struct Provider {
    doc: Mutex<Value>,
    up: AtomicBool,
    hits: AtomicU64,
    paths: Mutex<Vec<String>>,
}

impl Provider {
    async fn start(doc: Value) -> (Arc<Provider>, String) {
        let provider = Arc::new(Provider {
            doc: Mutex::new(doc),
            up: AtomicBool::new(true),
            ..Provider::default()
        });
        async fn serve(State(p): State<Arc<Provider>>, uri: Uri) -> Response {
            p.hits.fetch_add(1, Ordering::SeqCst);
            p.paths.lock().unwrap().push(uri.to_string());
            if !p.up.load(Ordering::SeqCst) {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            let doc = p.doc.lock().unwrap().clone();
            match doc {
                Value::String(raw) => raw.into_response(),
                doc => axum::Json(doc).into_response(),
            }
        }
        let app = Router::new()
            .route("/.well-known/jwks.json", get(serve))
            .fallback(serve)
            .with_state(provider.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (provider, url)
    }

    fn set(&self, doc: Value) {
        *self.doc.lock().unwrap() = doc;
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn server(url: &str, refresh: Duration, refetch_interval: Duration) -> TestServer {
    let config = JwksConfig {
        url: url.parse().unwrap(),
        refresh,
        refetch_interval,
    };
    TestServer::start_with(move |c| {
        c.auth.keys.clear();
        c.auth.jwks = Some(config);
        c.max_connections_per_user = 0;
    })
    .await
}

async fn joins(s: &TestServer, token: &str) {
    let mut c = Client::connect(format!("{}?token={token}", s.url()))
        .await
        .unwrap_or_else(|r| panic!("refused {}: {}", r.status, r.body));
    let info = c.join("general").await;
    assert_eq!(info["payload"]["room_id"], "general");
}

async fn refused(s: &TestServer, token: &str) -> String {
    let r = Client::connect(format!("{}?token={token}", s.url()))
        .await
        .err()
        .expect("refused");
    assert_eq!(r.status, 401, "{}", r.body);
    r.body["error"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_to_new_kids_is_fetched_and_es256_and_eddsa_verify() {
    let (provider, url) = Provider::start(json!({"keys": [rsa_jwk("r1")]})).await;
    let s = server(&url, Duration::from_secs(3600), Duration::from_millis(200)).await;
    let s = s.ready().await;
    joins(&s, &token(Algorithm::RS256, "r1", "alice")).await;
    let before = provider.hits();

    // The provider rotates: r1 goes, an EC and an Ed25519 key come (more
    // than the refetch interval after the last fetch).
    provider.set(json!({"keys": [ec_jwk("e1"), ed_jwk("d1")]}));
    tokio::time::sleep(Duration::from_millis(250)).await;
    joins(&s, &token(Algorithm::ES256, "e1", "bob")).await;
    assert_eq!(provider.hits(), before + 1, "one fetch for the new kid");
    joins(&s, &token(Algorithm::EdDSA, "d1", "carol")).await;
    assert_eq!(provider.hits(), before + 1, "d1 came with e1");
    // r1 is gone from the provider's set, so are its tokens.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let why = refused(&s, &token(Algorithm::RS256, "r1", "alice")).await;
    assert!(why.contains("r1"), "{why}");
    // A key's type decides its algorithm: an Ed25519 signature under the
    // EC key's kid is refused.
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("e1".into());
    let exp = Clock::system().unix_seconds() + 60;
    let ed = EncodingKey::from_ed_pem(fixture("ed25519-private.pem").as_bytes()).unwrap();
    let confused = encode(&header, &json!({"sub": "x", "exp": exp}), &ed).unwrap();
    let why = refused(&s, &confused).await;
    assert!(why.contains("alg"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_is_refused_with_a_bounded_number_of_fetches() {
    let (provider, url) = Provider::start(json!({"keys": [rsa_jwk("r1")]})).await;
    let s = server(&url, Duration::from_secs(3600), Duration::from_secs(2)).await;
    let s = s.ready().await;
    let start = tokio::time::Instant::now();
    let before = provider.hits();
    let mut kids: Vec<String> = (0..300).map(|i| format!("bogus-{i}")).collect();
    // Kids that would mean something in a path or a URL mean nothing here.
    kids.extend(
        [
            "../../etc/passwd",
            "/.well-known/jwks.json?x=1",
            "%2e%2e%2fadmin",
            "a#b",
            "..\\\\windows",
            "\u{0}",
            "kid\r\nX-Injected: 1",
        ]
        .map(str::to_string),
    );
    let attempts = kids.iter().map(|kid| {
        let url = format!(
            "{}?token={}",
            s.url(),
            token(Algorithm::RS256, kid, "mallory")
        );
        tokio::spawn(async move { Client::connect(url).await.err().map(|r| r.status) })
    });
    for status in futures_util::future::join_all(attempts).await {
        assert_eq!(status.unwrap(), Some(401));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let fetched = provider.hits() - before;
    let bound = 1 + (elapsed / 2.0).ceil() as u64;
    assert!(
        fetched <= bound,
        "{fetched} fetches in {elapsed:.1} s (at most {bound})"
    );
    assert!(
        provider
            .paths
            .lock()
            .unwrap()
            .iter()
            .all(|p| p == "/.well-known/jwks.json"),
        "a kid reached the provider's URL: {:?}",
        provider.paths.lock().unwrap()
    );
    // The real key still works, without a fetch.
    let hits = provider.hits();
    joins(&s, &token(Algorithm::RS256, "r1", "alice")).await;
    assert_eq!(provider.hits(), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_provider_down_or_broken_the_last_good_keys_stay() {
    let (provider, url) = Provider::start(json!({"keys": [ec_jwk("e1")]})).await;
    let s = server(&url, Duration::from_secs(1), Duration::from_millis(100)).await;
    let s = s.ready().await;
    joins(&s, &token(Algorithm::ES256, "e1", "alice")).await;
    for broken in [
        None,
        Some(json!("this is not json")),
        Some(json!({"keys": "nope"})),
        Some(
            json!({"keys": [{"kty": "oct", "kid": "e1", "k": "c2VjcmV0"},
                             {"kty": "RSA", "kid": "short", "n": "AQAB", "e": "AQAB"},
                             {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA"}]}),
        ),
    ] {
        match broken {
            None => provider.up.store(false, Ordering::SeqCst),
            Some(doc) => {
                provider.up.store(true, Ordering::SeqCst);
                provider.set(doc);
            }
        }
        let hits = provider.hits();
        // A scheduled refresh (every second) hits the broken provider...
        eventually("a refresh while broken", || async {
            provider.hits() > hits
        })
        .await;
        // ...and the last good key still verifies, the node stays ready.
        joins(&s, &token(Algorithm::ES256, "e1", "alice")).await;
        assert_eq!(s.get("/readyz").await.0, 200);
        // A kid it never had is refused.
        refused(&s, &token(Algorithm::EdDSA, "d1", "bob")).await;
    }
    // Back up with a new key: taken.
    provider.set(json!({"keys": [ec_jwk("e1"), ed_jwk("d1")]}));
    eventually("the new key is fetched", || async {
        Client::connect(format!(
            "{}?token={}",
            s.url(),
            token(Algorithm::EdDSA, "d1", "bob")
        ))
        .await
        .is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_unready_until_the_first_keys_arrive() {
    let (provider, url) = Provider::start(json!({"keys": [ed_jwk("d1")]})).await;
    provider.up.store(false, Ordering::SeqCst);
    let s = server(&url, Duration::from_secs(3600), Duration::from_millis(100)).await;
    let (status, body) = s.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("JWKS"), "{body}");
    let why = refused(&s, &token(Algorithm::EdDSA, "d1", "alice")).await;
    assert!(why.contains("d1"), "{why}");
    provider.up.store(true, Ordering::SeqCst);
    let s = s.ready().await;
    joins(&s, &token(Algorithm::EdDSA, "d1", "alice")).await;
}

/// The hostile part of the catalog, from the provider's side: documents
/// that are too large, nested past any sane depth, not UTF-8, full of
/// entries of the wrong type, or far longer than any real set. Each costs
/// the server nothing but the fetch: the last good keys stay, tokens are
/// answered 401 or 101 as the keys say, and the node stays ready; of a
/// thousand keys, the first hundred are kept. A `kid`
/// with path characters is only a label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_jwks_documents_cost_nothing_but_the_fetch() {
    let odd_kid = "../../etc/passwd?x=1#y";
    let (provider, url) = Provider::start(json!({"keys": [ec_jwk("e1"), ed_jwk(odd_kid)]})).await;
    let s = server(&url, Duration::from_secs(1), Duration::from_millis(100)).await;
    let s = s.ready().await;
    joins(&s, &token(Algorithm::EdDSA, odd_kid, "alice")).await;
    let padding = "x".repeat(2 << 20);
    let many: Vec<Value> = (0..1_000).map(|i| ec_jwk(&format!("k{i}"))).collect();
    let hostile: Vec<(&str, Value)> = vec![
        (
            "over 1 MiB",
            json!({"keys": [ed_jwk("d2")], "padding": padding}),
        ),
        ("nested 100,000 deep", Value::String("[".repeat(100_000))),
        (
            "not UTF-8",
            Value::String(String::from_utf8_lossy(&[0xff, 0xfe, 0x00]).into()),
        ),
        (
            "entries of every wrong type",
            json!({"keys": [null, 1, "key", [], {}, {"kty": null}, {"kty": "EC", "crv": "P-256"}]}),
        ),
        ("keys is an object", json!({"keys": {"kty": "EC"}})),
    ];
    for (name, doc) in hostile {
        provider.set(doc);
        let hits = provider.hits();
        eventually(name, || async { provider.hits() > hits }).await;
        // The last good set (e1 and the odd kid) still verifies.
        joins(&s, &token(Algorithm::ES256, "e1", "alice")).await;
        joins(&s, &token(Algorithm::EdDSA, odd_kid, "alice")).await;
        assert_eq!(s.get("/readyz").await.0, 200, "{name}");
    }
    // A thousand keys: the first hundred are kept.
    provider.set(json!({"keys": many}));
    eventually("the long set is taken", || async {
        Client::connect(format!(
            "{}?token={}",
            s.url(),
            token(Algorithm::ES256, "k0", "bob")
        ))
        .await
        .is_ok()
    })
    .await;
    joins(&s, &token(Algorithm::ES256, "k99", "bob")).await;
    let why = refused(&s, &token(Algorithm::ES256, "k100", "bob")).await;
    assert!(why.contains("k100"), "{why}");
}
