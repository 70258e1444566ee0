//! A node's client of the simulated broker: the [`Broker`] contract over
//! the JSON-lines protocol of [`super::server`], through a [`Connector`]
//! (tokio or turmoil TCP).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use roomhub_core::{
    AppendRequest, DirectMessage, NodeId, Position, RoomName, RoomSnapshot, SequencedMessage,
    Timestamp, UserRef,
};
use roomhub_net::cluster::broker::{
    Broker, BrokerError, Delivery, Heartbeat, SUBSCRIPTION_CONTROL_REQUESTS,
    SUBSCRIPTION_QUEUE_EVENTS, SubRequest, Subscription,
};
use roomhub_net::cluster::keys::channel;
use roomhub_net::cluster::wire::{sequenced, snapshot};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::broker::server::{Reply, Request};

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
    max_age_ms: AtomicU64,
    /// The most messages this node's opens return (the server keeps its
    /// own cap for every node): as a Redis node reads the newest so many.
    max_messages: AtomicUsize,
    timeout: Duration,
}

impl SimBroker {
    pub fn new(connect: Connector, max_age_ms: u64) -> Self {
        SimBroker {
            connect,
            conn: tokio::sync::Mutex::new(None),
            max_age_ms: AtomicU64::new(max_age_ms),
            max_messages: AtomicUsize::new(usize::MAX),
            timeout: Duration::from_secs(2),
        }
    }

    async fn open_stream(&self) -> Result<Lines, BrokerError> {
        let stream = tokio::time::timeout(self.timeout, (self.connect)())
            .await
            .map_err(|_| BrokerError::TimedOut)??;
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
                Err(match failed {
                    Err(_) => BrokerError::TimedOut,
                    Ok(Err(e)) => BrokerError::Unreachable(e.to_string()),
                    Ok(Ok(_)) => {
                        BrokerError::Unreachable("the broker closed the connection".into())
                    }
                })
            }
        }
    }
}

fn unexpected() -> BrokerError {
    BrokerError::Reply("not the reply asked for".into())
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
        after: Option<&Position>,
        now: Timestamp,
    ) -> Result<RoomSnapshot, BrokerError> {
        let request = Request::Open {
            room: room.clone(),
            after: after.cloned(),
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
        let max_age_ms = self.max_age_ms.load(Ordering::Relaxed);
        let keep = self.max_messages.load(Ordering::Relaxed);
        let messages = messages[messages.len().saturating_sub(keep)..].to_vec();
        snapshot(room, &epoch, head, messages, presence, now, max_age_ms)
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

    async fn end_lineage(&self, room: &RoomName) -> Result<(), BrokerError> {
        let request = Request::EndLineage { room: room.clone() };
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

    async fn to_nodes(&self, payload: Vec<u8>) -> Result<usize, BrokerError> {
        let request = Request::Publish {
            channel: channel::NODES.to_string(),
            payload,
        };
        match self.call(&request).await? {
            Reply::Receivers(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn subscribe(&self) -> Result<Subscription, BrokerError> {
        let (mut lines, mut write) = self.open_stream().await?;
        let (control, mut requests) = mpsc::channel::<SubRequest>(SUBSCRIPTION_CONTROL_REQUESTS);
        let (deliver, messages) = mpsc::channel::<Delivery>(SUBSCRIPTION_QUEUE_EVENTS);
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
                                let payload = Delivery::Message(Bytes::from(payload));
                                if deliver.send(payload).await.is_err() {
                                    return;
                                }
                            }
                            Ok(Reply::Subscribed) => {
                                // In order with the pushes before it.
                                if let Some(done) = waiting.pop_front()
                                    && deliver.send(Delivery::Subscribed(done)).await.is_err()
                                {
                                    return;
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

    /// What this node's opens return; the simulated broker's server,
    /// shared by every node, keeps the cap it was started with.
    fn set_history(&self, max_messages: usize, max_age_ms: u64) {
        self.max_age_ms.store(max_age_ms, Ordering::Relaxed);
        self.max_messages.store(max_messages, Ordering::Relaxed);
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
