//! Reloading the configuration of a running server: what can change live
//! changes for new work while the connections already open keep going;
//! what cannot is reported; `POST /api/reload` reads the config file again
//! and refuses an invalid one with its reason.

use std::sync::Arc;

use jsonwebtoken::{EncodingKey, Header, encode};
use roomhub_net::auth::VerifyKey;
use roomhub_net::{Clock, ServerConfig, parse_cli};
use roomhub_tests::server::{Client, SECRET, TestServer, http_post};
use serde_json::{Value, json};

fn token_with(secret: &str, user: &str) -> String {
    let exp = Clock::system().unix_seconds() + 3600;
    encode(
        &Header::default(),
        &json!({"sub": user, "exp": exp}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn connect(s: &TestServer, token: &str, origin: &str) -> Result<Client, u16> {
    let url = format!("{}?token={token}", s.url());
    Client::connect_with_headers(&url, &[("origin", origin)])
        .await
        .map_err(|r| r.status)
}

async fn say(c: &mut Client, room: &str, content: &str, id: &str) -> Value {
    c.send_json(
        json!({"type": "send_message", "room": room, "id": id, "payload": {"content": content}}),
    )
    .await;
    loop {
        let frame = c.recv().await;
        if frame["id"] == id {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_settings_change_for_new_work_and_open_connections_keep_going() {
    let a = "https://a.example";
    let b = "https://b.example";
    let s = TestServer::start_with(|c| {
        c.allowed_origins = vec![a.into()];
        c.max_connections_per_user = 2;
    })
    .await;
    let mut old = connect(&s, &token_with(SECRET, "old"), a).await.unwrap();
    old.join("g").await;
    assert_eq!(
        connect(&s, &token_with(SECRET, "x"), b).await.err(),
        Some(403)
    );

    let listen = s.server().config().listen;
    let done = s
        .reconfigure(|c| {
            c.allowed_origins = vec![a.into(), b.into()];
            c.max_connections_per_user = 3;
            c.core.rate_limit_burst = 2;
            c.core.max_content_bytes = 10;
            c.auth.keys = vec![VerifyKey::Secret(b"the-new-secret".to_vec())];
            c.listen = "127.0.0.1:1".parse().unwrap();
            c.io_threads = 1;
        })
        .await
        .expect("reloaded");
    for name in [
        "allowed-origins",
        "max-connections-per-user",
        "rate limits",
        "max-content-bytes",
        "jwt keys",
    ] {
        assert!(done.changed.contains(&name), "{name}: {done:?}");
    }
    assert_eq!(done.needs_restart, ["listen", "io-threads"], "{done:?}");
    assert_eq!(
        s.server().config().listen,
        listen,
        "the listen address stays"
    );

    // New connections: the new origin and key; the old key is refused.
    let new_token = token_with("the-new-secret", "new");
    let mut new = connect(&s, &new_token, b)
        .await
        .expect("the new origin and key");
    assert_eq!(
        connect(&s, &token_with(SECRET, "y"), a).await.err(),
        Some(401)
    );
    new.join("g").await;
    // A new connection has the new burst of 2...
    assert_eq!(say(&mut new, "g", "hi", "n1").await["type"], "ack");
    assert_eq!(say(&mut new, "g", "hi", "n2").await["type"], "ack");
    assert_eq!(
        say(&mut new, "g", "hi", "n3").await["payload"]["code"],
        "RATE_LIMITED"
    );
    // ...the old one keeps its bucket (10), and both get the new content limit.
    for i in 0..5 {
        assert_eq!(
            say(&mut old, "g", "hello", &format!("o{i}")).await["type"],
            "ack"
        );
    }
    let long = say(&mut old, "g", "more than ten bytes", "long").await;
    assert_eq!(long["payload"]["code"], "CONTENT_TOO_LONG", "{long}");
    // Three connections of one user now (`new` is the first).
    let mut same = Vec::new();
    for _ in 0..2 {
        same.push(
            connect(&s, &new_token, a)
                .await
                .expect("per-user limit is 3"),
        );
    }
    assert_eq!(connect(&s, &new_token, a).await.err(), Some(429));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reloads_the_config_file_and_refuses_an_invalid_one() {
    let dir = std::env::temp_dir().join(format!("roomhub-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("roomhub.toml");
    std::fs::write(&file, "max-connections = 100\napi-key = \"k\"\n").unwrap();
    let path = file.to_string_lossy().to_string();
    let read = move || {
        let args = [
            "roomhub",
            "--config",
            &path,
            "--jwt-secret",
            SECRET,
            "--memory",
            "--io-threads",
            "3",
        ];
        let cli = parse_cli(args).map_err(|e| e.to_string())?;
        ServerConfig::from_args(&cli.server, 1)
    };
    let first = read().unwrap();
    let s = TestServer::start_with(move |c| *c = first).await;
    s.server().set_config_source(Arc::new(read));
    let reload = |key: Option<&'static str>| http_post(s.addr, "/api/reload", key, "{}");

    let (status, body) = reload(Some("k")).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer["result"],
        json!({"changed": [], "needs_restart": []}),
        "{body}"
    );

    let _first = s.client("first").await;
    std::fs::write(&file, "max-connections = 1\napi-key = \"k\"\n").unwrap();
    let (status, body) = reload(Some("k")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("max-connections"), "{body}");
    let url = format!("{}?token={}", s.url(), s.token("second"));
    assert_eq!(
        Client::connect(url.clone()).await.err().unwrap().status,
        503
    );

    // Invalid: refused with the reason; the configuration in force stays.
    std::fs::write(&file, "max-connection = 5\napi-key = \"k\"\n").unwrap();
    let (status, body) = reload(Some("k")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("INVALID_CONFIG") && body.contains("max-connection"),
        "{body}"
    );
    assert_eq!(Client::connect(url).await.err().unwrap().status, 503);
    // The API key is required.
    assert_eq!(reload(None).await.0, 401);
    assert_eq!(reload(Some("wrong")).await.0, 401);
    std::fs::remove_dir_all(&dir).ok();
}

/// A join hook added by a reload decides the joins after it; the member
/// who joined before stays in its room and keeps talking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_added_by_reload_decides_the_joins_after_it() {
    use axum::Json;
    use axum::routing::post;
    async fn join_hook(Json(body): Json<Value>) -> Json<Value> {
        let allowed = body["room"] != "vip";
        Json(json!({"allow": allowed, "code": "NOT_INVITED", "message": "ask an admin"}))
    }
    let app = axum::Router::new().route("/hooks/join", post(join_hook));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let s = TestServer::start().await;
    let mut early = s.client("early").await;
    early.join("vip").await;
    let done = s
        .reconfigure(|c| c.hooks.join = Some(format!("http://{hook}/hooks/join").parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(done.changed, ["hooks"]);
    let mut late = s.client("late").await;
    late.send_json(json!({"type": "join_room", "room": "vip", "id": "j"}))
        .await;
    let refused = late.recv().await;
    assert_eq!(refused["payload"]["code"], "NOT_INVITED", "{refused}");
    assert_eq!(late.join("lobby").await["payload"]["room_id"], "lobby");
    assert_eq!(say(&mut early, "vip", "still in", "m").await["type"], "ack");
}

/// New history limits on every engine (in memory, the journaled store,
/// the `--fsync always` store thread, a cluster's Redis broker), read back
/// through the server API's `history`: what the API and rejoining members
/// see follows them at once. (That each sequencer itself keeps the new
/// count is shown where each is tested alone: the core's sequencer tests,
/// the stores' unit tests, and the broker conformance suite.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_limits_reach_every_engine() {
    use roomhub_tests::redis::RedisServer;
    let redis = RedisServer::start();
    for engine in ["memory", "journaled", "fsync-always", "redis"] {
        let dir = std::env::temp_dir().join(format!(
            "roomhub-reload-history-{engine}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let place = |c: &mut ServerConfig| {
            c.api_key = Some("k".into());
            c.core.rate_limit_per_second = 0;
            match engine {
                "memory" => {}
                "journaled" => c.data_dir = Some(dir.clone()),
                "fsync-always" => {
                    c.data_dir = Some(dir.clone());
                    c.fsync = roomhub_net::seq::store::Fsync::Always;
                }
                _ => {}
            }
        };
        let s = if engine == "redis" {
            let Some(redis) = &redis else { continue };
            let url = redis.url();
            TestServer::clustered(|c| {
                place(c);
                c.redis = vec![url];
            })
            .await
        } else {
            TestServer::start_with(place).await
        };
        let done = s
            .reconfigure(|c| c.core.history_max_messages = 3)
            .await
            .unwrap();
        assert!(
            done.changed.contains(&"history limits"),
            "{engine}: {done:?}"
        );
        assert!(done.needs_restart.is_empty(), "{engine}: {done:?}");
        let room = format!("log-{engine}");
        for i in 1..=6 {
            let body = json!({"room": room, "payload": {"content": format!("m{i}")}}).to_string();
            let (status, answer) = http_post(s.addr, "/api/publish", Some("k"), &body).await;
            assert_eq!(status, 200, "{engine}: {answer}");
        }
        let body = json!({"room": room, "limit": 10}).to_string();
        let (status, answer) = http_post(s.addr, "/api/history", Some("k"), &body).await;
        assert_eq!(status, 200, "{engine}: {answer}");
        let page: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(
            roomhub_tests::contents(&page["result"]["messages"]),
            ["m4", "m5", "m6"],
            "{engine}: {answer}"
        );
        s.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
