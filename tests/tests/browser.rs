//! The demo page and `roomhub.js` in a real headless Chromium (Debian's
//! `chromium`, driven over the DevTools protocol): two pages as two users,
//! messages, typing and presence both ways; a server restart on the same
//! data directory that both pages ride out on their own, one of them missing
//! messages while it is away, with no duplicates; a token that expires while
//! connected and does not start a reconnect loop; a page joining later that
//! shows the earlier messages; a page whose token is refreshed before it
//! expires and keeps its one socket; and a screenshot of the
//! conversation in `target/demo-screenshot.png`. Then the SSE fallback: a
//! page without WebSocket, and one whose WebSocket never opens, chat over
//! SSE with a WebSocket page through a restart. And the admin page: its live
//! chart moving under traffic (`target/admin-screenshot.png`), the room
//! search, and the disconnect button.
//!
//! Last, the demo over `https://` and `wss://` with a certificate the test
//! makes. Chromium 156 no longer honours
//! `--ignore-certificate-errors-spki-list`, so the browser is told to
//! accept the test's certificate by chromiumoxide's default
//! (`Security.setIgnoreCertificateErrors`); that roomhub presents a valid
//! certificate is checked by tests/tests/e2e_tls.rs, whose client trusts
//! the test's own authority and nothing else.
//!
//! `.ci/run` installs `chromium` when it is missing; without it this test is
//! skipped locally and fails under `CI=true`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chromiumoxide::Page;
use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::page::CaptureScreenshotFormat;
use chromiumoxide::cdp::js_protocol::runtime::EvaluateParams;
use chromiumoxide::page::ScreenshotParams;
use futures_util::StreamExt;
use roomhub_net::dev::{TokenSpec, mint_token};
use roomhub_net::{Clock, Server, ServerConfig};
use roomhub_tests::server::SECRET;
use serde_json::Value;

fn chromium() -> Option<PathBuf> {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

async fn start_server(addr: SocketAddr, dir: &Path) -> Server {
    start_server_with(addr, dir, None).await
}

/// [`start_server`], serving TLS with `tls`.
async fn start_server_with(
    addr: SocketAddr,
    dir: &Path,
    tls: Option<roomhub_net::TlsFiles>,
) -> Server {
    let mut config = ServerConfig::with_secret(SECRET);
    config.tls = tls;
    config.data_dir = Some(dir.to_path_buf());
    config.demo = true;
    config.demo_token_secret = Some(SECRET.to_string());
    config.core.rate_limit_per_second = 0;
    // The test's runtime has two threads: two write shards on them.
    config.io_threads = 2;
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    Server::start(listener, config, Clock::system()).expect("start")
}

/// Evaluates `js` (awaiting a promise) and returns its JSON value.
async fn eval(page: &Page, js: &str) -> Value {
    let params = EvaluateParams::builder()
        .expression(js)
        .await_promise(true)
        .return_by_value(true)
        .build()
        .expect("params");
    tokio::time::timeout(Duration::from_secs(10), page.evaluate_expression(params))
        .await
        .unwrap_or_else(|_| panic!("evaluating {js} took over 10 s"))
        .unwrap_or_else(|e| panic!("evaluating {js}: {e}"))
        .into_value()
        .unwrap_or(Value::Null)
}

/// Polls a JS condition until it is true, for at most 20 s.
async fn until(page: &Page, what: &str, js: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if eval(page, js).await == Value::Bool(true) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let text = eval(page, "document.body.innerText").await;
            panic!("never happened: {what}\npage text: {text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How often `needle` appears in the page's message list.
fn count_in(page_text: &Value, needle: &str) -> usize {
    page_text.as_str().unwrap_or("").matches(needle).count()
}

async fn messages(page: &Page) -> Value {
    eval(page, "document.getElementById('messages').innerText").await
}

/// Fills the login form and submits it, as a user would.
async fn log_in(page: &Page, name: &str) {
    let name_js = serde_json::to_string(name).unwrap();
    eval(
        page,
        &format!(
            "document.getElementById('name').value = {name_js}; document.getElementById('login').requestSubmit(); true"
        ),
    )
    .await;
    until(
        page,
        &format!("{name} in #general"),
        "window.roomhubClient?.state === 'open' && !!document.querySelector('#rooms li.current')",
    )
    .await;
}

/// Types into the compose box (firing `input`, which sends `typing`).
async fn type_text(page: &Page, text: &str) {
    let text_js = serde_json::to_string(text).unwrap();
    eval(
        page,
        &format!(
            "(() => {{ const t = document.getElementById('text'); t.value = {text_js}; t.dispatchEvent(new Event('input')); return true; }})()"
        ),
    )
    .await;
}

async fn say(page: &Page, text: &str) {
    type_text(page, text).await;
    eval(
        page,
        "document.getElementById('compose').requestSubmit(); true",
    )
    .await;
}

/// Launches headless Chromium with its profile in `dir`; the task that
/// drives its events.
async fn launch(chromium: &Path, dir: &Path) -> (Browser, tokio::task::JoinHandle<()>) {
    let profile = dir.join("chromium-profile");
    let config = BrowserConfig::builder()
        .chrome_executable(chromium)
        .new_headless_mode()
        .no_sandbox()
        .user_data_dir(&profile)
        .args([
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
        ])
        .window_size(1000, 700)
        .build()
        .expect("browser config");
    let (browser, mut handler) = Browser::launch(config).await.expect("launch chromium");
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    (browser, events)
}

/// A fresh scratch directory for one scenario (its data and the browser
/// profile).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("roomhub-browser-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Closes the browser, stops the server and removes the scratch directory.
async fn finish(
    mut browser: Browser,
    events: tokio::task::JoinHandle<()>,
    server: Server,
    dir: &Path,
) {
    browser.close().await.ok();
    browser.wait().await.ok();
    events.abort();
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Chromium's path; `None` (the test is skipped) where it is not installed,
/// which fails under `CI=true`.
fn chromium_or_skip() -> Option<PathBuf> {
    let found = chromium();
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "chromium is missing under CI=true (.ci/run installs it)"
        );
        eprintln!("SKIPPED: chromium is not installed");
    }
    found
}

/// Presence, typing and messages both ways between two logged-in pages
/// of Alice and Bob.
async fn chat_both_ways(alice: &Page, bob: &Page, to_bob: &str, to_alice: &str) {
    until(
        alice,
        "alice sees bob join",
        "document.getElementById('messages').innerText.includes('Bob joined')",
    )
    .await;
    until(bob, "bob lists both users", "document.getElementById('users').innerText.includes('Alice') && document.getElementById('users').innerText.includes('Bob')").await;
    type_text(alice, "hel").await;
    until(
        bob,
        "bob sees alice typing",
        "document.getElementById('typing').innerText.includes('Alice')",
    )
    .await;
    say(alice, to_bob).await;
    let has = |text: &str| {
        format!(
            "document.getElementById('messages').innerText.includes({})",
            serde_json::to_string(text).unwrap()
        )
    };
    until(bob, "bob gets alice's message", &has(to_bob)).await;
    type_text(bob, "hi").await;
    until(
        alice,
        "alice sees bob typing",
        "document.getElementById('typing').innerText.includes('Bob')",
    )
    .await;
    say(bob, to_alice).await;
    until(alice, "alice gets bob's message", &has(to_alice)).await;
}

/// Restarts the server on the same data directory while Bob's page waits
/// 3 s before coming back, so that the messages Alice sends meanwhile
/// (`missed`) happen while he is away. Both pages then show each of
/// `expected` once and stand at the same offset. Returns the new server.
async fn restart_while_bob_is_away(
    server: Server,
    dir: &Path,
    alice: &Page,
    bob: &Page,
    missed: &[&str],
    expected: &[&str],
) -> Server {
    let addr = server.local_addr();
    // Both pages note their states, so that the test waits for each to come
    // back rather than see it still open on the old server.
    eval(alice, "(() => { window.states = []; window.roomhubClient.on('state', (s) => window.states.push(s)); return true; })()").await;
    eval(bob, "(() => { window.states = []; const c = window.roomhubClient; c.on('state', (s) => window.states.push(s)); c.random = () => 1; c.baseDelayMs = 3000; c.maxDelayMs = 3000; return true; })()").await;
    server.shutdown().await;
    let server = start_server(addr, dir).await;
    let back = "window.states.includes('reconnecting') && window.roomhubClient.state === 'open'";
    until(alice, "alice reconnects", back).await;
    assert_ne!(
        eval(bob, "window.roomhubClient.state").await,
        "open",
        "bob is still away"
    );
    for text in missed {
        say(alice, text).await;
    }
    let last = format!(
        "document.getElementById('messages').innerText.includes({})",
        serde_json::to_string(missed.last().expect("messages")).unwrap()
    );
    until(alice, "alice's messages acked", &last).await;
    until(
        bob,
        "bob back with what he missed",
        &format!("{back} && {last}"),
    )
    .await;
    let (bob_text, alice_text) = (messages(bob).await, messages(alice).await);
    for needle in expected {
        assert_eq!(
            count_in(&bob_text, needle),
            1,
            "bob sees {needle:?} once:\n{bob_text}"
        );
        assert_eq!(
            count_in(&alice_text, needle),
            1,
            "alice sees {needle:?} once:\n{alice_text}"
        );
    }
    assert_eq!(
        eval(bob, "window.roomhubClient.rooms.get('general').offset").await,
        eval(alice, "window.roomhubClient.rooms.get('general').offset").await,
        "both pages are at the same offset"
    );
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_chat_ride_out_a_restart_and_an_expired_token_does_not_loop() {
    // A browser that stops answering must fail the test, not hang CI.
    tokio::time::timeout(Duration::from_secs(180), scenario())
        .await
        .expect("the browser scenario finishes within 3 minutes");
}

async fn scenario() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let dir = scratch("demo");
    let server = start_server("127.0.0.1:0".parse().unwrap(), &dir).await;
    let addr = server.local_addr();
    let base = format!("http://{addr}/");

    let (browser, events) = launch(&chromium, &dir).await;
    let alice = browser.new_page(base.as_str()).await.expect("page");
    let bob = browser.new_page(base.as_str()).await.expect("page");
    log_in(&alice, "Alice").await;
    log_in(&bob, "Bob").await;

    // Presence, typing and messages, both ways.
    chat_both_ways(&alice, &bob, "hello bob", "hi alice").await;

    // A restart, with bob away for alice's next messages.
    let server = restart_while_bob_is_away(
        server,
        &dir,
        &alice,
        &bob,
        &[
            "while you were away 1",
            "while you were away 2",
            "while you were away 3",
        ],
        &[
            "hello bob",
            "hi alice",
            "while you were away 1",
            "while you were away 2",
            "while you were away 3",
        ],
    )
    .await;

    // A fresh page joining later sees what was said before it came (the
    // last 50 messages, with their times), each once.
    let dave = browser.new_page(base.as_str()).await.expect("page");
    log_in(&dave, "Dave").await;
    until(
        &dave,
        "dave sees the earlier messages",
        "document.getElementById('messages').innerText.includes('earlier messages above')",
    )
    .await;
    let dave_text = messages(&dave).await;
    for needle in ["hello bob", "hi alice", "while you were away 3"] {
        assert_eq!(
            count_in(&dave_text, needle),
            1,
            "dave sees {needle:?} once:\n{dave_text}"
        );
    }
    assert_eq!(
        eval(
            &dave,
            "document.querySelectorAll('#messages .history time').length >= 5"
        )
        .await,
        Value::Bool(true),
        "earlier messages show their times:\n{dave_text}"
    );

    std::fs::create_dir_all("../target").ok();
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/demo-screenshot.png");
    let png = alice
        .save_screenshot(
            ScreenshotParams::builder()
                .format(CaptureScreenshotFormat::Png)
                .build(),
            &shot,
        )
        .await
        .expect("screenshot");
    assert!(
        png.len() > 1000 && png.starts_with(b"\x89PNG"),
        "a real PNG"
    );
    // The screenshot shows the chat, not the login form.
    assert_eq!(
        eval(&alice, "document.getElementById('login').offsetParent === null && document.getElementById('chat').offsetParent !== null").await,
        Value::Bool(true)
    );

    // A token that expires while connected: the server closes with 1008 and
    // the client waits for a new token instead of reconnecting in a loop.
    let spec = TokenSpec {
        user: "carol".into(),
        ..TokenSpec::default()
    };
    let short = mint_token(
        SECRET,
        &spec,
        Duration::from_secs(2),
        Clock::system().unix_seconds(),
    );
    let carol = browser.new_page(base.as_str()).await.expect("page");
    let script = format!(
        r#"(async () => {{
            window.sockets = 0;
            const Real = window.WebSocket;
            window.WebSocket = class extends Real {{ constructor(...a) {{ super(...a); window.sockets++; }} }};
            const {{ RoomhubClient }} = await import('/roomhub.js');
            const c = new RoomhubClient('ws://{addr}/ws', {{ token: '{short}', baseDelayMs: 50, maxDelayMs: 100 }});
            window.carol = c;
            c.connect();
            return true;
        }})()"#
    );
    eval(&carol, &script).await;
    until(&carol, "carol connects", "window.carol.state === 'open'").await;
    until(
        &carol,
        "carol's token runs out",
        "window.carol.state === 'auth_required'",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(eval(&carol, "window.sockets").await, 1, "no reconnect loop");

    // A page whose token is refreshed keeps its socket: a 3 s token, and a
    // getToken callback that hands out a long one. The client refreshes
    // before the expiry, on the same connection.
    let erin_short = mint_token(
        SECRET,
        &TokenSpec {
            user: "erin".into(),
            ..TokenSpec::default()
        },
        Duration::from_secs(3),
        Clock::system().unix_seconds(),
    );
    let erin_long = mint_token(
        SECRET,
        &TokenSpec {
            user: "erin".into(),
            ..TokenSpec::default()
        },
        Duration::from_secs(3600),
        Clock::system().unix_seconds(),
    );
    let erin = browser.new_page(base.as_str()).await.expect("page");
    let script = format!(
        r#"(async () => {{
            window.sockets = 0;
            window.refreshed = 0;
            const Real = window.WebSocket;
            window.WebSocket = class extends Real {{ constructor(...a) {{ super(...a); window.sockets++; }} }};
            const {{ RoomhubClient }} = await import('/roomhub.js');
            const c = new RoomhubClient('ws://{addr}/ws', {{
                token: '{erin_short}',
                getToken: async () => '{erin_long}',
            }});
            c.on('refreshed', () => window.refreshed++);
            window.erin = c;
            c.connect();
            return true;
        }})()"#
    );
    eval(&erin, &script).await;
    until(&erin, "erin connects", "window.erin.state === 'open'").await;
    eval(&erin, "window.erin.join('general').then(() => true)").await;
    until(&erin, "erin's token is refreshed", "window.refreshed === 1").await;
    // Past the first token's expiry: the same socket, still open, still
    // talking.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(eval(&erin, "window.erin.state").await, "open");
    assert_eq!(
        eval(
            &erin,
            "window.erin.send('general', 'erin is still here').then((a) => a.offset > 0)"
        )
        .await,
        Value::Bool(true)
    );
    assert_eq!(
        eval(&erin, "window.sockets").await,
        1,
        "no second WebSocket"
    );

    finish(browser, events, server, &dir).await;
}

/// A page without WebSocket (removed before any script runs, as on a
/// network that breaks upgrades) chats over SSE with a WebSocket page:
/// presence, typing and messages both ways; a server restart on the same
/// data directory that the SSE page rides out while missing messages, each
/// message then shown once on both pages; typing and presence still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_without_websocket_chats_over_sse_and_rides_out_a_restart() {
    tokio::time::timeout(Duration::from_secs(180), sse_scenario())
        .await
        .expect("the SSE scenario finishes within 3 minutes");
}

async fn sse_scenario() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let dir = scratch("sse");
    let server = start_server("127.0.0.1:0".parse().unwrap(), &dir).await;
    let addr = server.local_addr();
    let base = format!("http://{addr}/");
    let (browser, events) = launch(&chromium, &dir).await;
    let alice = browser.new_page(base.as_str()).await.expect("page");
    let bob = browser.new_page("about:blank").await.expect("page");
    bob.evaluate_on_new_document("delete window.WebSocket;")
        .await
        .expect("script for new documents");
    bob.goto(base.as_str()).await.expect("the demo");
    assert_eq!(
        eval(&bob, "typeof WebSocket").await,
        "undefined",
        "no WebSocket on bob's page"
    );
    log_in(&alice, "Alice").await;
    log_in(&bob, "Bob").await;
    assert_eq!(
        eval(&alice, "window.roomhubClient.transport").await,
        "websocket"
    );
    assert_eq!(eval(&bob, "window.roomhubClient.transport").await, "sse");

    chat_both_ways(&alice, &bob, "hello sse bob", "hi from sse").await;

    // The restart, with the SSE page away for alice's next messages.
    let server = restart_while_bob_is_away(
        server,
        &dir,
        &alice,
        &bob,
        &["sse away 1", "sse away 2", "sse away 3"],
        &[
            "hello sse bob",
            "hi from sse",
            "sse away 1",
            "sse away 2",
            "sse away 3",
        ],
    )
    .await;
    assert_eq!(eval(&bob, "window.roomhubClient.transport").await, "sse");
    // After the restart, typing and presence still work both ways.
    type_text(&bob, "still").await;
    until(
        &alice,
        "alice sees bob typing again",
        "document.getElementById('typing').innerText.includes('Bob')",
    )
    .await;
    say(&bob, "sse after restart").await;
    until(
        &alice,
        "alice gets bob's message after the restart",
        "document.getElementById('messages').innerText.includes('sse after restart')",
    )
    .await;
    until(&bob, "bob still lists both users", "document.getElementById('users').innerText.includes('Alice') && document.getElementById('users').innerText.includes('Bob')").await;
    // A page whose WebSocket exists but never opens (a proxy that breaks
    // upgrades): the client falls back to SSE by itself.
    let carol = browser.new_page("about:blank").await.expect("page");
    carol
        .evaluate_on_new_document(
            "const Real = window.WebSocket; window.WebSocket = class extends Real { constructor(u, p) { super('ws://127.0.0.1:9/ws', p); } };",
        )
        .await
        .expect("script for new documents");
    carol.goto(base.as_str()).await.expect("the demo");
    log_in(&carol, "Carol").await;
    assert_eq!(eval(&carol, "window.roomhubClient.transport").await, "sse");
    say(&alice, "carol can read this").await;
    until(
        &carol,
        "carol gets alice's message over SSE",
        "document.getElementById('messages').innerText.includes('carol can read this')",
    )
    .await;
    alice.close().await.ok();
    until(
        &bob,
        "bob sees alice leave",
        "document.getElementById('messages').innerText.includes('Alice left')",
    )
    .await;

    finish(browser, events, server, &dir).await;
}

/// The admin page in Chromium: opened with its password, its live chart
/// moves while clients talk (a screenshot is written to
/// `target/admin-screenshot.png`), the room search finds the room, and the
/// disconnect button ends a user's connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_charts_live_traffic_and_disconnects_a_user() {
    tokio::time::timeout(Duration::from_secs(180), admin_scenario())
        .await
        .expect("the admin scenario finishes within 3 minutes");
}

async fn admin_scenario() {
    use roomhub_tests::server::Client;
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let dir = scratch("admin");
    let mut config = ServerConfig::with_secret(SECRET);
    config.core.rate_limit_per_second = 0;
    config.io_threads = 2;
    config.admin_password = Some("admin-pw".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let server = Server::start(listener, config, Clock::system()).expect("start");
    let addr = server.local_addr();
    let token = |user: &str| {
        mint_token(
            SECRET,
            &TokenSpec {
                user: user.into(),
                ..TokenSpec::default()
            },
            Duration::from_secs(600),
            Clock::system().unix_seconds(),
        )
    };
    let mut alice = Client::connect(format!("ws://{addr}/ws?token={}", token("alice")))
        .await
        .expect("alice");
    alice.join("lobby").await;
    let mut bob = Client::connect(format!("ws://{addr}/ws?token={}", token("bob")))
        .await
        .expect("bob");
    bob.join("lobby").await;

    let (browser, events) = launch(&chromium, &dir).await;
    let page = browser
        .new_page(format!("http://{addr}/admin").as_str())
        .await
        .expect("page");
    // A wrong password is refused; the right one opens it.
    eval(&page, "document.getElementById('password').value = 'nope'; document.getElementById('login').requestSubmit(); true").await;
    until(
        &page,
        "a wrong password is refused",
        "document.getElementById('login-error').textContent.includes('wrong')",
    )
    .await;
    eval(&page, "document.getElementById('password').value = 'admin-pw'; document.getElementById('login').requestSubmit(); true").await;
    until(
        &page,
        "the admin page opens",
        "!document.getElementById('app').hidden && document.getElementById('connections').textContent === '2'",
    )
    .await;

    // Traffic for a few seconds: alice talks, bob reads.
    let talk = tokio::spawn(async move {
        for n in 0..120 {
            alice
                .send_json(serde_json::json!({"type": "send_message", "room": "lobby", "payload": {"content": format!("traffic {n}")}}))
                .await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        alice
    });
    let read = tokio::spawn(async move {
        for _ in 0..120 {
            bob.recv_type("new_message").await;
        }
        bob
    });
    until(
        &page,
        "the chart shows traffic",
        "window.admin.series.some((s) => s.delivered > 0 && s.received > 0)",
    )
    .await;
    let first = eval(&page, "window.admin.series.at(-1).t").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let later = eval(&page, "window.admin.series.at(-1).t").await;
    assert!(
        later.as_u64() > first.as_u64(),
        "the chart moves: {first} then {later}"
    );
    assert_eq!(
        eval(&page, "Number(document.getElementById('rate-out').textContent) >= 0 && document.getElementById('chart').width > 0").await,
        Value::Bool(true)
    );
    let mut alice = talk.await.expect("alice talked");
    let _bob = read.await.expect("bob read");
    std::fs::create_dir_all("../target").ok();
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/admin-screenshot.png");
    let png = page
        .save_screenshot(
            ScreenshotParams::builder()
                .format(CaptureScreenshotFormat::Png)
                .full_page(true)
                .build(),
            &shot,
        )
        .await
        .expect("screenshot");
    assert!(
        png.len() > 1000 && png.starts_with(b"\x89PNG"),
        "a real PNG"
    );

    assert_eq!(
        eval(
            &page,
            "document.querySelectorAll('#nodes-table tbody tr').length"
        )
        .await,
        1,
        "one node listed"
    );
    // The room search.
    eval(&page, "(() => { const s = document.getElementById('room-search'); s.value = 'lob'; s.dispatchEvent(new Event('input')); return true; })()").await;
    until(
        &page,
        "the search finds the lobby",
        "document.getElementById('rooms-table').innerText.includes('lobby')",
    )
    .await;

    // A user's connections, and the disconnect button.
    eval(&page, "document.getElementById('user-id').value = 'alice'; document.getElementById('user-form').requestSubmit(); true").await;
    until(
        &page,
        "alice's connection is listed",
        "document.getElementById('user-result').textContent.includes('1 connection') && document.getElementById('user-connections').innerText.includes('lobby')",
    )
    .await;
    eval(&page, "document.getElementById('disconnect').click(); true").await;
    let (code, _) = alice.closed().await;
    assert_eq!(code, 4100, "the button ends alice's connection");
    until(
        &page,
        "alice has no connections left",
        "document.getElementById('user-result').textContent.includes('0 connections') && document.getElementById('connections').textContent === '1'",
    )
    .await;

    finish(browser, events, server, &dir).await;
}

/// The demo over `https://` and `wss://`: two users chat in Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_over_wss() {
    tokio::time::timeout(Duration::from_secs(120), wss_scenario())
        .await
        .expect("the browser scenario finishes within 2 minutes");
}

async fn wss_scenario() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let dir = scratch("wss");
    std::fs::create_dir_all(&dir).unwrap();
    let files = roomhub_tests::tls::TestCa::new()
        .leaf("localhost")
        .write_to(&dir);
    let any = "127.0.0.1:0".parse().unwrap();
    let server = start_server_with(any, &dir.join("data"), Some(files)).await;
    let base = format!("https://localhost:{}/", server.local_addr().port());
    let (browser, events) = launch(&chromium, &dir).await;
    // Each page opens blank first: chromiumoxide accepts the test's
    // certificate for a target once it is attached, which a page created
    // with the URL may not be by its first navigation.
    let mut pages = Vec::new();
    for _ in 0..2 {
        let page = browser.new_page("about:blank").await.expect("page");
        page.goto(base.as_str()).await.expect("the page over https");
        pages.push(page);
    }
    let (alice, bob) = (&pages[0], &pages[1]);
    log_in(alice, "Alice").await;
    log_in(bob, "Bob").await;
    assert_eq!(eval(alice, "location.protocol").await, "https:");
    assert_eq!(
        eval(bob, "window.roomhubClient.ws.url.split(':')[0]").await,
        "wss",
        "the page's socket is wss://"
    );
    chat_both_ways(alice, bob, "hello over tls", "hi over tls").await;
    finish(browser, events, server, &dir).await;
}
