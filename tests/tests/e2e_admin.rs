//! The admin UI's endpoints through the real server: off without a
//! password or API key, refused without the password, and answering with
//! the server's state when given it; the server API's `user` method.

use roomhub_tests::server::{TestServer, http_post, http_request};
use serde_json::Value;

async fn admin_get(s: &TestServer, path: &str, password: Option<&str>) -> (u16, Value) {
    let auth = password.map_or(String::new(), |p| format!("Authorization: Bearer {p}\r\n"));
    let (status, text) = http_request(
        s.addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"),
    )
    .await;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_ui_is_off_without_a_password() {
    let s = TestServer::start().await;
    assert_eq!(s.get("/admin").await.0, 404);
    assert_eq!(admin_get(&s, "/admin/api/overview", Some("x")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoints_answer_with_the_password_only() {
    let s = TestServer::start_with(|c| {
        c.admin_password = Some("pw".into());
        c.api_key = Some("key".into());
    })
    .await;
    let (status, page) = s.get("/admin").await;
    assert_eq!(status, 200);
    assert!(page.contains("roomhub admin"));
    for wrong in [None, Some("nope"), Some("")] {
        assert_eq!(
            admin_get(&s, "/admin/api/overview", wrong).await.0,
            401,
            "{wrong:?}"
        );
    }
    let mut alice = s.member("alice", "lobby").await;
    let _bob = s.member("bob", "team-x").await;
    alice
        .send_json(serde_json::json!({"type": "send_message", "room": "lobby", "id": "m", "payload": {"content": "hi"}}))
        .await;
    alice.recv_type("ack").await;
    // The API key opens it too.
    for secret in ["pw", "key"] {
        let (status, o) = admin_get(&s, "/admin/api/overview", Some(secret)).await;
        assert_eq!(status, 200, "{o}");
        assert_eq!(o["info"]["connections"], 2, "{o}");
        assert_eq!(o["info"]["users"], 2);
        assert_eq!(o["limits"]["max_message_bytes"], 4096);
    }
    // The sampler fills the chart's series once a second.
    roomhub_tests::server::eventually("a sample with the message", || async {
        let (_, o) = admin_get(&s, "/admin/api/overview", Some("pw")).await;
        o["series"]
            .as_array()
            .is_some_and(|s| s.iter().any(|p| p["received"].as_u64() > Some(0)))
    })
    .await;
    let (_, rooms) = admin_get(&s, "/admin/api/rooms?q=TEAM", Some("pw")).await;
    assert_eq!(rooms["rooms"].as_array().unwrap().len(), 1, "{rooms}");
    assert_eq!(rooms["rooms"][0]["room"], "team-x");
    let (_, user) = admin_get(&s, "/admin/api/user?id=alice", Some("pw")).await;
    assert_eq!(user["connections"][0]["rooms"][0], "lobby", "{user}");
    // The same through the server API.
    let (status, body) = http_post(s.addr, "/api/user", Some("key"), r#"{"user":"bob"}"#).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"]["connections"][0]["rooms"][0], "team-x");
    // Disconnect.
    let (status, text) = http_request(
        s.addr,
        "POST /admin/api/disconnect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer pw\r\nContent-Type: application/json\r\nContent-Length: 16\r\nConnection: close\r\n\r\n{\"user\":\"alice\"}",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(alice.closed().await.0, 4100);
}

/// The store's append latency is a Prometheus histogram (what the Grafana
/// dashboard's latency panel reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_append_latency_is_exported() {
    let dir = std::env::temp_dir().join(format!("roomhub-append-metric-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = TestServer::start_with(|c| c.data_dir = Some(dir.clone())).await;
    let mut alice = s.member("alice", "g").await;
    for n in 0..3 {
        alice
            .send_json(serde_json::json!({"type": "send_message", "room": "g", "id": format!("m{n}"), "payload": {"content": "hi"}}))
            .await;
        alice.recv_type("ack").await;
    }
    let (_, metrics) = s.get("/metrics").await;
    let count = metrics
        .lines()
        .find_map(|l| l.strip_prefix("roomhub_append_seconds_count{backend=\"store\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no append histogram in:\n{metrics}"));
    assert!(count >= 1, "{count}");
    assert!(metrics.contains("roomhub_append_seconds_bucket{backend=\"store\",le=\"0.01\"}"));
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every metric the Grafana dashboard (docs/grafana-dashboard.json) reads
/// is one the server exports, once it has seen a little of everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_reads_metrics_the_server_exports() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/grafana-dashboard.json"
    );
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).expect("JSON");
    let mut wanted = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expression");
            let mut rest = expr;
            while let Some(at) = rest.find("roomhub_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                wanted.insert(name);
            }
        }
    }
    assert!(wanted.len() >= 12, "{wanted:?}");

    let dir = std::env::temp_dir().join(format!("roomhub-grafana-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = TestServer::start_with(|c| {
        c.data_dir = Some(dir.clone());
        c.max_connections_per_user = 1;
    })
    .await;
    let mut alice = s.member("alice", "g").await;
    alice
        .send_json(serde_json::json!({"type": "send_message", "room": "g", "id": "m", "payload": {"content": "hi"}}))
        .await;
    alice.recv_type("ack").await;
    alice
        .send_json(serde_json::json!({"type": "send_message", "room": "nowhere", "payload": {"content": "hi"}}))
        .await;
    alice.recv_type("error").await;
    // A refused login and a refused second connection.
    let bad = roomhub_tests::server::Client::connect(format!("{}?token=bad", s.url())).await;
    assert_eq!(bad.err().map(|r| r.status), Some(401));
    let again =
        roomhub_tests::server::Client::connect(format!("{}?token={}", s.url(), s.token("alice")))
            .await;
    assert_eq!(again.err().map(|r| r.status), Some(429));
    let (_, metrics) = s.get("/metrics").await;
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| {
            !metrics
                .lines()
                .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        })
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{metrics}");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
