//! Limits that hold under abuse, through the real server on loopback:
//! per-address connection limits.

use roomhub_net::config::PerIpLimits;
use roomhub_tests::server::{Client, TestServer};

async fn attempt(s: &TestServer, user: &str) -> Result<Client, (u16, serde_json::Value)> {
    Client::connect(format!("{}?token={}", s.url(), s.token(user)))
        .await
        .map_err(|r| (r.status, r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_may_hold_so_many_connections() {
    let s = TestServer::start_with(|c| {
        c.per_ip = PerIpLimits {
            max_connections: 3,
            ..PerIpLimits::default()
        };
    })
    .await;
    let mut held = Vec::new();
    for user in ["a", "b", "c"] {
        held.push(attempt(&s, user).await.expect("within the limit"));
    }
    // Another user from the same address: refused, with a JSON reason.
    let (status, body) = attempt(&s, "d").await.err().expect("over the limit");
    assert_eq!(status, 429);
    assert!(
        body["error"].as_str().unwrap().contains("address"),
        "{body}"
    );
    // A closed connection gives its place back.
    held.pop();
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = attempt(&s, "d").await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "the slot came back");
    let (_, metrics) = s.get("/metrics").await;
    assert!(
        metrics.contains("roomhub_connections_refused_total{limit=\"per_ip\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_may_open_so_many_connections_per_second() {
    let s = TestServer::start_with(|c| {
        c.per_ip = PerIpLimits {
            connections_per_second: 5,
            ..PerIpLimits::default()
        };
    })
    .await;
    let mut accepted = 0;
    let mut refused = 0;
    // A burst of 20 attempts, bad tokens included: each costs the address
    // a token before the token is even read.
    for i in 0..20 {
        let url = if i % 2 == 0 {
            format!("{}?token={}", s.url(), s.token("u"))
        } else {
            format!("{}?token=garbage", s.url())
        };
        match Client::connect(url).await {
            Ok(_) => accepted += 1,
            Err(r) if r.status == 429 => refused += 1,
            Err(r) => assert_eq!(r.status, 401, "{:?}", r.body),
        }
    }
    assert!(accepted <= 5, "accepted {accepted}");
    assert!(refused >= 14, "refused {refused}");
    // A second later the address may connect again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(attempt(&s, "u").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_is_exempt_only_when_configured() {
    let s = TestServer::start_with(|c| {
        c.per_ip = PerIpLimits {
            max_connections: 1,
            connections_per_second: 1,
            exempt_loopback: true,
        };
    })
    .await;
    let mut held = Vec::new();
    for user in ["a", "b", "c", "d"] {
        held.push(attempt(&s, user).await.expect("loopback is exempt"));
    }
}
