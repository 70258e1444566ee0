//! The simulated broker: the [`Broker`] contract served over plain TCP with
//! JSON lines, for worlds where Redis cannot run (turmoil). Its state is a
//! deterministic in-memory model of what the Redis scripts do; the
//! conformance suite (`tests/tests/broker_conformance.rs`) runs the same
//! cases against both so they cannot drift.
//!
//! Generic over the transport: [`serve`] takes any axum [`Listener`] (tokio
//! or turmoil TCP) and [`SimBroker`] connects through a [`Connector`].

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::serve::Listener;
use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use roomhub_core::{
    AppendRequest, DirectMessage, NodeId, RemoteMember, RoomName, RoomSnapshot, SequencedMessage,
    Timestamp, UserRef,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::broker::{
    Broker, BrokerError, Event, Heartbeat, PresenceEvent, SubRequest, Subscription, channel,
    message_payload, request_json, sequenced, snapshot,
};

/// What the broker keeps and how long nodes live.
#[derive(Clone, Copy, Debug)]
pub struct SimBrokerConfig {
    /// Seeds room epochs: same seed, same epochs.
    pub seed: u64,
    pub max_messages: usize,
    pub max_age_ms: u64,
    pub node_ttl: Duration,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Append {
        batch: Vec<AppendRequest>,
    },
    Open {
        room: RoomName,
        after: Option<u64>,
    },
    Presence {
        node: NodeId,
        room: RoomName,
        user: UserRef,
        present: bool,
    },
    Heartbeat {
        node: NodeId,
        online: u64,
    },
    Relay {
        message: DirectMessage,
    },
    Subscribe {
        channel: String,
    },
    Unsubscribe {
        channel: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Appended(Vec<(String, u64)>),
    Opened {
        epoch: String,
        head: u64,
        /// (offset, request JSON)
        messages: Vec<(u64, String)>,
        presence: Vec<RemoteMember>,
    },
    Done,
    Live {
        live: Vec<(NodeId, u64)>,
        was_gone: bool,
    },
    Receivers(usize),
    Subscribed,
    /// A publication, on a connection that subscribed.
    Push(String),
}

struct SimRoom {
    epoch: String,
    head: u64,
    log: VecDeque<(u64, String)>,
}

type Subscriber = mpsc::UnboundedSender<Reply>;

struct State {
    config: SimBrokerConfig,
    rng: ChaCha8Rng,
    rooms: BTreeMap<String, SimRoom>,
    /// room -> (node, user id) -> member
    presence: BTreeMap<String, BTreeMap<(NodeId, String), RemoteMember>>,
    /// node -> (deadline, online count)
    nodes: BTreeMap<NodeId, (Instant, u64)>,
    /// channel -> subscriber connection -> its queue
    subs: BTreeMap<String, BTreeMap<u64, Subscriber>>,
}

impl State {
    fn publish(&self, ch: &str, payload: Vec<u8>) -> usize {
        let Some(subs) = self.subs.get(ch) else {
            return 0;
        };
        let text = String::from_utf8_lossy(&payload).into_owned();
        subs.values()
            .filter(|tx| tx.send(Reply::Push(text.clone())).is_ok())
            .count()
    }

    fn room(&mut self, name: &str) -> &mut SimRoom {
        let rng = &mut self.rng;
        self.rooms
            .entry(name.to_string())
            .or_insert_with(|| SimRoom {
                epoch: format!("{:016x}", rng.next_u64()),
                head: 0,
                log: VecDeque::new(),
            })
    }

    fn handle(&mut self, request: Request, conn: u64, push: &Subscriber) -> Reply {
        match request {
            Request::Append { batch } => {
                let mut out = Vec::with_capacity(batch.len());
                for request in batch {
                    let name = request.room.as_str().to_string();
                    let json = request_json(&request);
                    let max = self.config.max_messages.max(1);
                    let room = self.room(&name);
                    room.head += 1;
                    let (epoch, head) = (room.epoch.clone(), room.head);
                    room.log.push_back((head, json.clone()));
                    while room.log.len() > max {
                        room.log.pop_front();
                    }
                    self.publish(&channel::room(&name), message_payload(head, &epoch, &json));
                    out.push((epoch, head));
                }
                Reply::Appended(out)
            }
            Request::Open { room, after } => {
                let now = Instant::now();
                let live = |node: &NodeId| self.nodes.get(node).is_some_and(|(d, _)| *d > now);
                let presence = self
                    .presence
                    .get(room.as_str())
                    .map(|members| {
                        members
                            .iter()
                            .filter(|((node, _), _)| live(node))
                            .map(|(_, m)| m.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                let max = self.config.max_messages as u64;
                let r = self.room(room.as_str());
                let start = after.unwrap_or(0).max(r.head.saturating_sub(max));
                Reply::Opened {
                    epoch: r.epoch.clone(),
                    head: r.head,
                    messages: r.log.iter().filter(|(o, _)| *o > start).cloned().collect(),
                    presence,
                }
            }
            Request::Presence {
                node,
                room,
                user,
                present,
            } => {
                let members = self.presence.entry(room.as_str().to_string()).or_default();
                let key = (node, user.id.to_string());
                if present {
                    let member = RemoteMember {
                        node,
                        user: user.clone(),
                    };
                    members.insert(key, member);
                } else {
                    members.remove(&key);
                }
                let event = Event::Presence(PresenceEvent {
                    room: room.clone(),
                    node,
                    user,
                    present,
                });
                self.publish(&channel::room(room.as_str()), event.encode());
                Reply::Done
            }
            Request::Heartbeat { node, online } => {
                let now = Instant::now();
                let was_gone = self.nodes.get(&node).is_none_or(|(d, _)| *d <= now);
                let dead: Vec<NodeId> = self
                    .nodes
                    .iter()
                    .filter(|(n, (deadline, _))| **n != node && *deadline <= now)
                    .map(|(n, _)| *n)
                    .collect();
                for d in dead {
                    self.nodes.remove(&d);
                    for members in self.presence.values_mut() {
                        members.retain(|(n, _), _| *n != d);
                    }
                    self.publish(channel::NODES, Event::NodeGone(d).encode());
                }
                self.nodes
                    .insert(node, (now + self.config.node_ttl, online));
                self.publish(channel::NODES, Event::Beat(node).encode());
                Reply::Live {
                    live: self.nodes.iter().map(|(n, (_, c))| (*n, *c)).collect(),
                    was_gone,
                }
            }
            Request::Relay { message } => {
                let to = channel::user(&message.to);
                Reply::Receivers(self.publish(&to, Event::Direct(message).encode()))
            }
            Request::Subscribe { channel } => {
                self.subs
                    .entry(channel)
                    .or_default()
                    .insert(conn, push.clone());
                Reply::Subscribed
            }
            Request::Unsubscribe { channel } => {
                if let Some(subs) = self.subs.get_mut(&channel) {
                    subs.remove(&conn);
                    if subs.is_empty() {
                        self.subs.remove(&channel);
                    }
                }
                Reply::Done
            }
        }
    }

    fn forget(&mut self, conn: u64) {
        self.subs.retain(|_, subs| {
            subs.remove(&conn);
            !subs.is_empty()
        });
    }
}

/// Serves the broker on `listener` until the task is dropped.
pub async fn serve<L>(mut listener: L, config: SimBrokerConfig)
where
    L: Listener,
    L::Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let state = Arc::new(Mutex::new(State {
        config,
        rng: ChaCha8Rng::seed_from_u64(config.seed),
        rooms: BTreeMap::new(),
        presence: BTreeMap::new(),
        nodes: BTreeMap::new(),
        subs: BTreeMap::new(),
    }));
    let mut next_conn = 0u64;
    loop {
        let (io, _) = listener.accept().await;
        next_conn += 1;
        tokio::spawn(connection(io, next_conn, state.clone()));
    }
}

async fn connection<S>(io: S, conn: u64, state: Arc<Mutex<State>>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read, mut write) = tokio::io::split(io);
    let mut lines = BufReader::new(read).lines();
    // Replies and publications share one ordered queue per connection.
    let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
    let writer = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            let mut line = serde_json::to_vec(&reply).unwrap_or_default();
            line.push(b'\n');
            if write.write_all(&line).await.is_err() {
                return;
            }
        }
    });
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(request) = serde_json::from_str::<Request>(&line) else {
            break;
        };
        let reply = state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .handle(request, conn, &tx);
        if tx.send(reply).is_err() {
            break;
        }
    }
    state.lock().unwrap_or_else(|p| p.into_inner()).forget(conn);
    writer.abort();
}

/// A byte stream to the broker.
pub trait BrokerStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> BrokerStream for T {}

type Connecting = Pin<Box<dyn Future<Output = io::Result<Box<dyn BrokerStream>>> + Send>>;
/// Opens a new connection to the broker (tokio or turmoil TCP).
pub type Connector = Arc<dyn Fn() -> Connecting + Send + Sync>;

type Lines = (
    tokio::io::Lines<BufReader<tokio::io::ReadHalf<Box<dyn BrokerStream>>>>,
    tokio::io::WriteHalf<Box<dyn BrokerStream>>,
);

/// A node's client of the simulated broker.
pub struct SimBroker {
    connect: Connector,
    conn: tokio::sync::Mutex<Option<Lines>>,
    max_age_ms: u64,
    timeout: Duration,
}

impl SimBroker {
    pub fn new(connect: Connector, max_age_ms: u64) -> Self {
        SimBroker {
            connect,
            conn: tokio::sync::Mutex::new(None),
            max_age_ms,
            timeout: Duration::from_secs(2),
        }
    }

    async fn open_stream(&self) -> Result<Lines, BrokerError> {
        let stream = tokio::time::timeout(self.timeout, (self.connect)())
            .await
            .map_err(|_| BrokerError("connecting to the broker timed out".into()))??;
        let (read, write) = tokio::io::split(stream);
        Ok((BufReader::new(read).lines(), write))
    }

    /// One request, one reply, in order; a failed exchange drops the
    /// connection so the next call starts afresh.
    async fn call(&self, request: &Request) -> Result<Reply, BrokerError> {
        let mut slot = self.conn.lock().await;
        if slot.is_none() {
            *slot = Some(self.open_stream().await?);
        }
        let (lines, write) = slot.as_mut().expect("connected above");
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        let exchange = async {
            write.write_all(&line).await?;
            lines.next_line().await
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(Some(reply))) => Ok(serde_json::from_str(&reply)?),
            failed => {
                *slot = None;
                Err(BrokerError(match failed {
                    Err(_) => "broker timed out".into(),
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(_)) => "broker closed the connection".into(),
                }))
            }
        }
    }
}

fn unexpected() -> BrokerError {
    BrokerError("unexpected reply from the broker".into())
}

impl Broker for SimBroker {
    async fn append(&self, batch: &[AppendRequest]) -> Result<Vec<SequencedMessage>, BrokerError> {
        let request = Request::Append {
            batch: batch.to_vec(),
        };
        let Reply::Appended(places) = self.call(&request).await? else {
            return Err(unexpected());
        };
        Ok(batch
            .iter()
            .zip(places)
            .map(|(r, (epoch, offset))| sequenced(r.clone(), &epoch, offset))
            .collect())
    }

    async fn open(
        &self,
        room: &RoomName,
        after: Option<u64>,
        now: Timestamp,
    ) -> Result<RoomSnapshot, BrokerError> {
        let request = Request::Open {
            room: room.clone(),
            after,
        };
        let Reply::Opened {
            epoch,
            head,
            messages,
            presence,
        } = self.call(&request).await?
        else {
            return Err(unexpected());
        };
        snapshot(room, &epoch, head, messages, presence, now, self.max_age_ms)
    }

    async fn presence(
        &self,
        node: NodeId,
        room: &RoomName,
        user: &UserRef,
        present: bool,
    ) -> Result<(), BrokerError> {
        let request = Request::Presence {
            node,
            room: room.clone(),
            user: user.clone(),
            present,
        };
        match self.call(&request).await? {
            Reply::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn heartbeat(&self, node: NodeId, online: u64) -> Result<Heartbeat, BrokerError> {
        match self.call(&Request::Heartbeat { node, online }).await? {
            Reply::Live { live, was_gone } => Ok(Heartbeat { live, was_gone }),
            _ => Err(unexpected()),
        }
    }

    async fn relay(&self, message: &DirectMessage) -> Result<usize, BrokerError> {
        let request = Request::Relay {
            message: message.clone(),
        };
        match self.call(&request).await? {
            Reply::Receivers(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn subscribe(&self) -> Result<Subscription, BrokerError> {
        let (mut lines, mut write) = self.open_stream().await?;
        let (control, mut requests) = mpsc::unbounded_channel::<SubRequest>();
        let (deliver, messages) = mpsc::unbounded_channel::<Bytes>();
        let timeout = self.timeout;
        tokio::spawn(async move {
            // Subscribe confirmations come back in the order asked.
            let mut waiting: VecDeque<oneshot::Sender<Result<(), BrokerError>>> = VecDeque::new();
            loop {
                tokio::select! {
                    biased;
                    req = requests.recv() => {
                        let request = match req {
                            Some(SubRequest::Subscribe(channel, done)) => {
                                waiting.push_back(done);
                                Request::Subscribe { channel }
                            }
                            Some(SubRequest::Unsubscribe(channel)) => Request::Unsubscribe { channel },
                            None => return,
                        };
                        let mut line = serde_json::to_vec(&request).unwrap_or_default();
                        line.push(b'\n');
                        let sent = tokio::time::timeout(timeout, write.write_all(&line)).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            return;
                        }
                    }
                    line = lines.next_line() => {
                        let Ok(Some(line)) = line else { return };
                        match serde_json::from_str::<Reply>(&line) {
                            Ok(Reply::Push(payload)) => {
                                if deliver.send(Bytes::from(payload)).is_err() {
                                    return;
                                }
                            }
                            Ok(Reply::Subscribed) => {
                                if let Some(done) = waiting.pop_front() {
                                    let _ = done.send(Ok(()));
                                }
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                }
            }
        });
        Ok(Subscription { control, messages })
    }
}

/// A connector for tokio TCP.
pub fn tcp_connector(addr: std::net::SocketAddr) -> Connector {
    Arc::new(move || {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            Ok(Box::new(stream) as Box<dyn BrokerStream>)
        })
    })
}
