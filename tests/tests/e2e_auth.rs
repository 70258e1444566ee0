//! Admission before the upgrade, through a real server on loopback: each
//! token location, every refusal with its status and JSON body, and the
//! public-key algorithms.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use roomhub_net::Clock;
use roomhub_net::auth::VerifyKey;
use roomhub_tests::server::{Client, SECRET, TestServer, token_for};
use serde_json::json;

fn now() -> u64 {
    Clock::system().unix_seconds()
}

fn claims(user: &str) -> serde_json::Value {
    json!({"user_id": user, "exp": now() + 3600})
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
}

fn signing_key(alg: Algorithm, private: &str) -> EncodingKey {
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&fixture(private)).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture(private)).unwrap(),
        _ => EncodingKey::from_ed_pem(&fixture(private)).unwrap(),
    }
}

/// A token for `user` signed with `key`, naming `kid` if given.
fn signed(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, user: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, &claims(user), key).unwrap()
}

async fn assert_joins(c: &mut Client) {
    let info = c.join("general").await;
    assert_eq!(info["payload"]["room_id"], "general");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_the_query_string() {
    let s = TestServer::start().await;
    let mut c = s.client("alice").await;
    assert_joins(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_the_authorization_header() {
    let s = TestServer::start().await;
    let bearer = format!("Bearer {}", s.token("alice"));
    let mut c = Client::connect_with_headers(&s.url(), &[("authorization", &bearer)])
        .await
        .unwrap();
    assert_joins(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_the_subprotocol_selects_roomhub_v1() {
    let s = TestServer::start().await;
    let offered = format!("roomhub.v1, {}", s.token("alice"));
    let mut c = Client::connect_with_headers(&s.url(), &[("sec-websocket-protocol", &offered)])
        .await
        .unwrap();
    assert_eq!(
        c.protocol.as_deref(),
        Some("roomhub.v1"),
        "a browser needs one of its offers selected"
    );
    assert_joins(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_alone_in_the_subprotocol_is_echoed() {
    let s = TestServer::start().await;
    let token = s.token("alice");
    let mut c = Client::connect_with_headers(&s.url(), &[("sec-websocket-protocol", &token)])
        .await
        .unwrap();
    assert_eq!(c.protocol.as_deref(), Some(token.as_str()));
    assert_joins(&mut c).await;
}

async fn refused(s: &TestServer, token: &str) -> (u16, String) {
    let r = Client::connect(format!("{}?token={token}", s.url()))
        .await
        .err()
        .expect("refused");
    (r.status, r.body["error"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_is_401() {
    let s = TestServer::start().await;
    let r = Client::connect(s.url()).await.err().expect("refused");
    assert_eq!(r.status, 401);
    assert!(r.body["error"].as_str().unwrap().contains("missing token"));
    let (_, metrics) = s.get("/metrics").await;
    assert!(
        metrics.contains(r#"roomhub_auth_failures_total{reason="missing"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_401() {
    let s = TestServer::start().await;
    let expired = encode(
        &Header::default(),
        &json!({"user_id": "alice", "exp": now() - 10}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        refused(&s, &expired).await,
        (401, "token expired".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_exp_is_401_by_default() {
    let s = TestServer::start().await;
    let forever = encode(
        &Header::default(),
        &json!({"user_id": "alice"}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(refused(&s, &forever).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_401() {
    let s = TestServer::start().await;
    let forged = encode(
        &Header::default(),
        &claims("alice"),
        &EncodingKey::from_secret(b"not-the-secret"),
    )
    .unwrap();
    let (status, msg) = refused(&s, &forged).await;
    assert_eq!(status, 401);
    assert!(msg.starts_with("invalid token"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_is_401() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let s = TestServer::start().await;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64.encode(claims("admin").to_string().as_bytes());
    for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
        assert_eq!(refused(&s, &token).await.0, 401, "{token}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_a_websocket_request_is_400() {
    let s = TestServer::start().await;
    let (status, body) = s.get(&format!("/ws?token={}", s.token("alice"))).await;
    assert_eq!(status, 400);
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_origin_is_403() {
    let s =
        TestServer::start_with(|c| c.allowed_origins = vec!["https://chat.example".into()]).await;
    let url = format!("{}?token={}", s.url(), s.token("alice"));
    let r = Client::connect_with_headers(&url, &[("origin", "https://evil.example")])
        .await
        .err()
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.body["error"], "origin not allowed");
    let mut ok = Client::connect_with_headers(&url, &[("origin", "https://chat.example")])
        .await
        .unwrap();
    assert_joins(&mut ok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_server_is_503_and_frees_slots() {
    let s = TestServer::start_with(|c| c.max_connections = 2).await;
    let a = s.client("a").await;
    let _b = s.client("b").await;
    let r = Client::connect(format!("{}?token={}", s.url(), s.token("c")))
        .await
        .err()
        .unwrap();
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (503, Some("server full"))
    );
    drop(a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while s.online() > 1 {
        assert!(tokio::time::Instant::now() < deadline, "slot not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = s.client("c").await;
    assert_joins(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_connections_of_one_user_is_429() {
    let s = TestServer::start_with(|c| c.max_connections_per_user = 2).await;
    let _a1 = s.client("alice").await;
    let _a2 = s.client("alice").await;
    let r = Client::connect(format!("{}?token={}", s.url(), s.token("alice")))
        .await
        .err()
        .unwrap();
    assert_eq!(r.status, 429);
    let mut bob = s.client("bob").await;
    assert_joins(&mut bob).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_es256_and_eddsa_public_keys_and_no_algorithm_confusion() {
    for (public, private, alg) in [
        ("rsa-public.pem", "rsa-private.pem", Algorithm::RS256),
        ("ec-public.pem", "ec-private.pem", Algorithm::ES256),
        (
            "ed25519-public.pem",
            "ed25519-private.pem",
            Algorithm::EdDSA,
        ),
    ] {
        let public_pem = fixture(public);
        let pem = public_pem.clone();
        let s = TestServer::start_with(move |c| {
            c.auth.keys = vec![VerifyKey::PublicKeyPem { pem, kid: None }]
        })
        .await;
        let key = signing_key(alg, private);
        let good = encode(&Header::new(alg), &claims("alice"), &key).unwrap();
        let mut c = Client::connect(format!("{}?token={good}", s.url()))
            .await
            .unwrap();
        assert_joins(&mut c).await;
        // HS256 signed with the public key as the HMAC secret: the classic confusion.
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims("admin"),
            &EncodingKey::from_secret(&public_pem),
        )
        .unwrap();
        assert_eq!(
            refused(&s, &confused).await.0,
            401,
            "{alg:?} server accepted HS256"
        );
        // And a plain shared-secret token is no good either.
        assert_eq!(
            refused(&s, &token_for("alice", Duration::from_secs(60)))
                .await
                .0,
            401
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_checked_when_configured() {
    let s = TestServer::start_with(|c| {
        c.auth.issuer = Some("https://issuer.example".into());
        c.auth.audience = Some("roomhub".into());
    })
    .await;
    let sign = |claims: serde_json::Value| {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let good = sign(
        json!({"sub": 42, "exp": now() + 60, "iss": "https://issuer.example", "aud": "roomhub"}),
    );
    let mut c = Client::connect(format!("{}?token={good}", s.url()))
        .await
        .unwrap();
    let info = c.join("g").await;
    assert_eq!(
        info["payload"]["users"][0]["id"], "42",
        "numeric sub becomes the id"
    );
    let wrong_iss =
        sign(json!({"sub": "x", "exp": now() + 60, "iss": "https://other", "aud": "roomhub"}));
    assert_eq!(refused(&s, &wrong_iss).await.0, 401);
    let no_aud = sign(json!({"sub": "x", "exp": now() + 60, "iss": "https://issuer.example"}));
    assert_eq!(refused(&s, &no_aud).await.0, 401);
}

/// Several static keys, each with its `kid` (rotation without a
/// provider): a token is checked against the key its `kid` names, a
/// kid-less key takes the tokens no other key names, and no key serves
/// another key's algorithm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_public_keys_are_picked_by_kid() {
    let s = TestServer::start_with(|c| {
        c.auth.keys = vec![
            VerifyKey::PublicKeyPem {
                pem: fixture("rsa-public.pem"),
                kid: Some("old".into()),
            },
            VerifyKey::PublicKeyPem {
                pem: fixture("ec-public.pem"),
                kid: Some("new".into()),
            },
            VerifyKey::PublicKeyPem {
                pem: fixture("ed25519-public.pem"),
                kid: None,
            },
        ]
    })
    .await;
    let rsa = signing_key(Algorithm::RS256, "rsa-private.pem");
    let ec = signing_key(Algorithm::ES256, "ec-private.pem");
    let ed = signing_key(Algorithm::EdDSA, "ed25519-private.pem");
    let joins = [
        signed(Algorithm::RS256, &rsa, Some("old"), "a"),
        signed(Algorithm::ES256, &ec, Some("new"), "b"),
        signed(Algorithm::RS256, &rsa, None, "c"),
        signed(Algorithm::EdDSA, &ed, None, "d"),
        signed(Algorithm::EdDSA, &ed, Some("elsewhere"), "e"),
    ];
    for token in joins {
        let mut c = Client::connect(format!("{}?token={token}", s.url()))
            .await
            .unwrap_or_else(|r| panic!("refused {}: {}", r.status, r.body));
        assert_joins(&mut c).await;
    }
    let refusals = [
        // The kid names the RSA key; an EC signature does not fit it.
        (signed(Algorithm::ES256, &ec, Some("old"), "x"), "alg"),
        (signed(Algorithm::RS256, &rsa, Some("new"), "x"), "alg"),
        // The right algorithm, the wrong key.
        (signed(Algorithm::ES256, &ec, Some("elsewhere"), "x"), "alg"),
        (token_for("x", Duration::from_secs(60)), "alg"),
    ];
    for (token, says) in refusals {
        let (status, body) = refused(&s, &token).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains(says), "{body}");
    }
}
