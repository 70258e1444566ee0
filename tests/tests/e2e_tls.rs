//! TLS on the listener, through a real server on loopback with
//! certificates the test makes: `wss://` and `https://` on one port, a
//! certificate swapped on disk while a connection made with the old one
//! keeps working, and files that do not load refused with the reason.

use std::path::PathBuf;
use std::time::Duration;

use roomhub_tests::server::{Client, TestServer, eventually};
use roomhub_tests::tls::{Leaf, TestCa, https_get, presented, replace};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("roomhub-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

async fn tls_server(leaf: &Leaf, dir: &std::path::Path) -> TestServer {
    let files = leaf.write_to(dir);
    TestServer::start_with(move |c| c.tls = Some(files)).await
}

/// The certificate a new handshake gets now.
async fn served(s: &TestServer, ca: &TestCa) -> rustls::pki_types::CertificateDer<'static> {
    https_get(s.addr, "/healthz", ca.client_config())
        .await
        .expect("https")
        .2
}

async fn wss_client(s: &TestServer, ca: &TestCa, user: &str) -> Client {
    let url = format!(
        "wss://localhost:{}/ws?token={}",
        s.addr.port(),
        s.token(user)
    );
    Client::connect_tls(url, ca.connector())
        .await
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_and_https_share_the_port_and_plain_clients_are_refused() {
    let ca = TestCa::new();
    let leaf = ca.leaf("first");
    let dir = scratch("port");
    let s = tls_server(&leaf, &dir).await;

    let mut alice = wss_client(&s, &ca, "alice").await;
    let mut bob = wss_client(&s, &ca, "bob").await;
    alice.join("general").await;
    bob.join("general").await;
    alice
        .send(r#"{"type":"send_message","room":"general","payload":{"content":"over tls"}}"#)
        .await;
    let got = bob.recv_type("new_message").await;
    assert_eq!(got["payload"]["content"], "over tls");
    assert_eq!(presented(&alice), leaf.der);

    let (status, body, cert) = https_get(s.addr, "/healthz", ca.client_config())
        .await
        .expect("https");
    assert_eq!((status, cert), (200, leaf.der.clone()), "{body}");

    // Plain HTTP on the TLS port is not served, and costs the server
    // nothing else: it goes on serving TLS.
    let (status, _) = roomhub_tests::server::http_get(s.addr, "/healthz").await;
    assert_ne!(status, 200);
    eventually("the failed handshake is counted", || async {
        let (_, metrics, _) = https_get(s.addr, "/metrics", ca.client_config())
            .await
            .expect("https");
        metrics.contains("roomhub_tls_handshake_failures_total 1")
    })
    .await;
    alice
        .send(r#"{"type":"send_message","room":"general","payload":{"content":"still"}}"#)
        .await;
    assert_eq!(
        bob.recv_type("new_message").await["payload"]["content"],
        "still"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_on_disk_serves_new_handshakes_while_old_connections_stay() {
    let ca = TestCa::new();
    let (first, second) = (ca.leaf("first"), ca.leaf("second"));
    let dir = scratch("swap");
    let s = tls_server(&first, &dir).await;
    let mut old = wss_client(&s, &ca, "old").await;
    old.join("general").await;
    assert_eq!(presented(&old), first.der);

    second.write_to(&dir);
    eventually("new handshakes get the new certificate", || async {
        served(&s, &ca).await == second.der
    })
    .await;
    let mut new = wss_client(&s, &ca, "new").await;
    new.join("general").await;
    old.send(
        r#"{"type":"send_message","room":"general","payload":{"content":"from the old session"}}"#,
    )
    .await;
    let got = new.recv_type("new_message").await;
    assert_eq!(got["payload"]["content"], "from the old session");

    // A garbage certificate and a key that does not match are refused:
    // the certificate in use stays, for at least a few checks.
    replace(
        &dir.join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n",
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        presented(&wss_client(&s, &ca, "after-garbage").await),
        second.der
    );
    replace(&dir.join("cert.pem"), &first.cert_pem);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        presented(&wss_client(&s, &ca, "after-mismatch").await),
        second.der
    );
    // Once the pair matches again it is taken.
    replace(&dir.join("key.pem"), &first.key_pem);
    eventually("the matching pair is taken", || async {
        served(&s, &ca).await == first.der
    })
    .await;
    old.send(r#"{"type":"send_message","room":"general","payload":{"content":"still here"}}"#)
        .await;
    assert_eq!(
        new.recv_type("new_message").await["payload"]["content"],
        "still here"
    );
    std::fs::remove_dir_all(&dir).ok();
}
