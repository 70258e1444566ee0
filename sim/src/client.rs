//! A simulated client: a real WebSocket client speaking the real protocol
//! over turmoil TCP. It joins rooms, talks, types, asks who is online, leaves
//! and rejoins, and reconnects with `since` after every disconnect; its plan
//! (from the world's seed) adds the faults it takes part in. Everything it
//! sends and receives goes into the [`Trace`].

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use roomhub_net::dev::{TokenSpec, mint_token};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::positions::Positions;
use crate::setting::{SECRET, SERVER_PORT, START_MS, now_ms};
use crate::trace::{Event, SessionId, Trace};

type Ws = tokio_tungstenite::WebSocketStream<turmoil::net::TcpStream>;

/// What one client does, decided up front from the world's seed.
#[derive(Clone, Debug)]
pub struct ClientPlan {
    pub index: usize,
    pub user: String,
    /// Server hosts; each new connection goes to the next one, so in a
    /// cluster a client rejoins (and recovers) on a different node.
    pub servers: Vec<String>,
    /// Rooms this client may be in; it starts in the first one or two.
    pub rooms: Vec<String>,
    /// Start in every room (a slow consumer sees all traffic).
    pub join_all: bool,
    pub seed: u64,
    /// Milliseconds between actions, drawn from this range.
    pub act_every_ms: (u64, u64),
    /// Windows (start, length) during which it stops reading.
    pub slow: Vec<(u64, u64)>,
    /// Times at which it drops its connection without a close.
    pub abrupt: Vec<u64>,
    /// How long it stays away after a disconnect (default: a random
    /// backoff of 100 to 600 ms).
    pub offline_ms: Option<u64>,
    /// The reconnect storm: everyone drops at this time and reconnects at once.
    pub storm_at: Option<u64>,
    /// Its first token expires this many ms after connecting.
    pub short_token_ms: Option<u64>,
    /// Times at which it sends a burst that trips the rate limit.
    pub bursts: Vec<u64>,
    /// Faults stop, and the client only reads, after this time.
    pub active_until_ms: u64,
    /// When it asks for the final presence.
    pub settle_ms: u64,
    /// When it closes and finishes.
    pub end_ms: u64,
}

/// Server pings every second in simulations; silence this long means the
/// connection is dead (a half-open link).
const WATCHDOG_MS: u64 = 3_500;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

struct Client {
    plan: ClientPlan,
    trace: Trace,
    rng: ChaCha8Rng,
    /// The last (epoch, offset) seen per room, kept across sessions.
    seen: Positions,
    session: u32,
    /// Connection attempts, which pick the server host.
    attempts: usize,
    sent: u64,
    storm_done: bool,
}

pub async fn run(plan: ClientPlan, trace: Trace) -> turmoil::Result {
    let mut client = Client {
        rng: ChaCha8Rng::seed_from_u64(plan.seed),
        plan,
        trace,
        seen: Positions::default(),
        session: 0,
        attempts: 0,
        sent: 0,
        storm_done: false,
    };
    loop {
        if now_ms() >= client.plan.end_ms {
            return Ok(());
        }
        match client.connect().await {
            Some(ws) => {
                let immediate = client.session_loop(ws).await;
                if now_ms() >= client.plan.end_ms {
                    return Ok(());
                }
                if !immediate {
                    let backoff = 100 + client.rng.next_u64() % 500;
                    let away = client.plan.offline_ms.unwrap_or(backoff);
                    sleep(Duration::from_millis(away)).await;
                }
            }
            None => sleep(Duration::from_millis(200 + client.rng.next_u64() % 300)).await,
        }
    }
}

impl Client {
    fn id(&self) -> SessionId {
        (self.plan.index, self.session)
    }

    fn record(&self, event: Event) {
        self.trace.push(now_ms(), self.id(), event);
    }

    async fn connect(&mut self) -> Option<Ws> {
        let ttl_ms = match self.plan.short_token_ms {
            Some(ms) if self.session == 0 => ms,
            _ => 3_600_000,
        };
        let now_unix = (START_MS + now_ms()) / 1000;
        let spec = TokenSpec {
            user: self.plan.user.clone(),
            ..TokenSpec::default()
        };
        // Whole seconds: a short token lives at least `ttl_ms`.
        let token = mint_token(SECRET, &spec, Duration::from_millis(ttl_ms + 999), now_unix);
        let server = self.plan.servers[self.attempts % self.plan.servers.len()].clone();
        self.attempts += 1;
        let stream = timeout(
            CONNECT_TIMEOUT,
            turmoil::net::TcpStream::connect((server.as_str(), SERVER_PORT)),
        )
        .await
        .ok()?
        .ok()?;
        let url = format!("ws://{server}:{SERVER_PORT}/ws?token={token}");
        let (ws, _) = timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::client_async(url, stream),
        )
        .await
        .ok()?
        .ok()?;
        self.session += 1;
        self.record(Event::Connected {
            user: self.plan.user.clone(),
            server,
        });
        Some(ws)
    }

    /// Sends a request; false if the connection is unusable. A write that
    /// cannot finish (a stalled link) counts as a dead connection, as a real
    /// client's write timeout would.
    async fn send(&mut self, ws: &mut Ws, frame: Value) -> bool {
        self.record(Event::Sent {
            frame: frame.clone(),
        });
        match timeout(WRITE_TIMEOUT, ws.send(Message::text(frame.to_string()))).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                self.record(Event::Broken { why: e.to_string() });
                false
            }
            Err(_) => {
                self.record(Event::Dropped {
                    why: "write timeout",
                });
                false
            }
        }
    }

    fn join_frame(&self, room: &str, id: String) -> Value {
        let mut payload = json!({"room_id": room});
        if let Some(since) = self.seen.since(room) {
            payload["since"] = since;
        }
        json!({"type": "join_room", "id": id, "payload": payload})
    }

    fn next_id(&mut self) -> String {
        self.sent += 1;
        format!("r{}", self.sent)
    }

    /// Runs one connection to its end. Returns true if the client should
    /// reconnect at once (the storm).
    async fn session_loop(&mut self, mut ws: Ws) -> bool {
        let mut joined: BTreeSet<String> = BTreeSet::new();
        let mut initial = 1 + (self.rng.next_u64() % 2) as usize;
        if self.plan.join_all {
            initial = self.plan.rooms.len();
        }
        for room in self.plan.rooms.clone().into_iter().take(initial) {
            let id = self.next_id();
            let frame = self.join_frame(&room, id);
            if !self.send(&mut ws, frame).await {
                return false;
            }
            joined.insert(room);
        }
        let mut last_frame = Instant::now();
        let mut next_action = self.next_action_delay();
        let mut settled = false;
        loop {
            let now = now_ms();
            if now >= self.plan.end_ms {
                let close = Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "done".into(),
                }));
                let _ = timeout(WRITE_TIMEOUT, ws.send(close)).await;
                self.record(Event::Finished);
                return false;
            }
            if !settled && now >= self.plan.settle_ms {
                settled = true;
                for room in joined.clone() {
                    let frame = json!({"type": "online_users", "room": room, "id": format!("final-{room}")});
                    if !self.send(&mut ws, frame).await {
                        return false;
                    }
                }
            }
            let watchdog = last_frame + Duration::from_millis(WATCHDOG_MS);
            let wake = Instant::now() + Duration::from_millis(next_action.min(200));
            tokio::select! {
                biased;
                msg = ws.next() => {
                    last_frame = Instant::now();
                    match msg {
                        Some(Ok(Message::Text(text))) => {
                            let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                            self.seen.observe(&frame);
                            self.record(Event::Received { frame });
                        }
                        Some(Ok(Message::Close(close))) => {
                            let (code, reason) = close
                                .map(|c| (u16::from(c.code), c.reason.to_string()))
                                .unwrap_or((1005, String::new()));
                            self.record(Event::Closed { code, reason });
                            return false;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            self.record(Event::Broken { why: e.to_string() });
                            return false;
                        }
                        None => {
                            self.record(Event::Broken { why: "eof".into() });
                            return false;
                        }
                    }
                }
                () = tokio::time::sleep_until(watchdog) => {
                    self.record(Event::Dropped { why: "watchdog" });
                    return false;
                }
                () = tokio::time::sleep_until(wake) => {
                    next_action = next_action.saturating_sub(200);
                    if next_action > 0 {
                        continue;
                    }
                    next_action = self.next_action_delay();
                    if now_ms() >= self.plan.active_until_ms {
                        continue;
                    }
                    match self.act(&mut ws, &mut joined).await {
                        Action::Continue => {}
                        Action::Reading => last_frame = Instant::now(),
                        Action::End { reconnect_now } => return reconnect_now,
                    }
                }
            }
        }
    }

    fn next_action_delay(&mut self) -> u64 {
        let (lo, hi) = self.plan.act_every_ms;
        lo + self.rng.next_u64() % (hi - lo).max(1)
    }

    async fn act(&mut self, ws: &mut Ws, joined: &mut BTreeSet<String>) -> Action {
        let now = now_ms();
        if let Some(at) = self.plan.storm_at
            && !self.storm_done
            && now >= at
        {
            self.storm_done = true;
            self.record(Event::Dropped { why: "storm" });
            return Action::End {
                reconnect_now: true,
            };
        }
        if let Some(pos) = self.plan.abrupt.iter().position(|at| now >= *at) {
            self.plan.abrupt.remove(pos);
            self.record(Event::Dropped { why: "abrupt" });
            return Action::End {
                reconnect_now: false,
            };
        }
        if let Some(pos) = self.plan.slow.iter().position(|(at, _)| now >= *at) {
            let (_, len) = self.plan.slow.remove(pos);
            // Stop reading: frames pile up in the network and the server's queue.
            sleep(Duration::from_millis(len)).await;
            return Action::Reading;
        }
        if let Some(pos) = self.plan.bursts.iter().position(|at| now >= *at) {
            self.plan.bursts.remove(pos);
            if let Some(room) = joined.iter().next().cloned() {
                for _ in 0..15 {
                    if !self.say(ws, &room).await {
                        return Action::End {
                            reconnect_now: false,
                        };
                    }
                }
            }
            return Action::Continue;
        }
        let roll = self.rng.next_u64() % 100;
        let rooms: Vec<String> = joined.iter().cloned().collect();
        let ok = if rooms.is_empty() || roll >= 90 {
            // Join a room it is not in (or rejoin one), with `since` if known.
            let choice =
                self.plan.rooms[(self.rng.next_u64() as usize) % self.plan.rooms.len()].clone();
            let id = self.next_id();
            let frame = self.join_frame(&choice, id);
            joined.insert(choice);
            self.send(ws, frame).await
        } else {
            let room = rooms[(self.rng.next_u64() as usize) % rooms.len()].clone();
            match roll {
                0..60 => self.say(ws, &room).await,
                60..72 => {
                    let kind = if self.rng.next_u64().is_multiple_of(2) {
                        "typing"
                    } else {
                        "stop_typing"
                    };
                    let id = self.next_id();
                    self.send(ws, json!({"type": kind, "room": room, "id": id}))
                        .await
                }
                72..80 => {
                    let id = self.next_id();
                    self.send(ws, json!({"type": "online_users", "room": room, "id": id}))
                        .await
                }
                80..84 => {
                    // Typing into a room it is not in must be refused.
                    let outside = self
                        .plan
                        .rooms
                        .iter()
                        .find(|r| !joined.contains(*r))
                        .cloned();
                    let id = self.next_id();
                    let room = outside.unwrap_or(room);
                    self.send(ws, json!({"type": "typing", "room": room, "id": id}))
                        .await
                }
                _ => {
                    joined.remove(&room);
                    let id = self.next_id();
                    self.send(ws, json!({"type": "leave_room", "room": room, "id": id}))
                        .await
                }
            }
        };
        if ok {
            Action::Continue
        } else {
            Action::End {
                reconnect_now: false,
            }
        }
    }

    async fn say(&mut self, ws: &mut Ws, room: &str) -> bool {
        let id = self.next_id();
        // A unique tag, padded to a realistic and varying size.
        let pad = (self.rng.next_u64() % 600) as usize;
        let content = format!(
            "c{}.s{}.{} {}",
            self.plan.index,
            self.session,
            id,
            "x".repeat(pad)
        );
        self.send(ws, json!({"type": "send_message", "room": room, "id": id, "payload": {"content": content}}))
            .await
    }
}

enum Action {
    Continue,
    /// It stopped reading for a while; the watchdog restarts from now.
    Reading,
    End {
        reconnect_now: bool,
    },
}
