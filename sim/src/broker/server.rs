//! The simulated broker served over plain TCP with JSON lines, for worlds
//! where Redis cannot run (turmoil) and for the conformance suite. Generic
//! over the transport: [`serve`] takes any axum [`Listener`] (tokio or
//! turmoil TCP). It keeps the subscriptions and delivers what the
//! [`BrokerModel`] publishes; the model keeps everything else.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::serve::Listener;
use roomhub_core::{
    AppendRequest, DirectMessage, NodeId, Position, RemoteMember, RoomName, UserRef,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::broker::model::{BrokerModel, Publication, SimBrokerConfig};

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    Append {
        batch: Vec<AppendRequest>,
    },
    Open {
        room: RoomName,
        after: Option<Position>,
    },
    Presence {
        node: NodeId,
        room: RoomName,
        user: UserRef,
        present: bool,
    },
    /// Forget a room's epoch and messages (`history_remove`).
    EndLineage {
        room: RoomName,
    },
    Heartbeat {
        node: NodeId,
        online: u64,
    },
    Relay {
        message: DirectMessage,
    },
    /// Publish to a channel (the node channel: server API calls).
    Publish {
        channel: String,
        payload: Vec<u8>,
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
pub(crate) enum Reply {
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

/// A connection's queue of replies and publications. Unbounded, as a
/// Redis client output buffer is up to its limit: this is the simulated
/// broker, and its clients read it at once.
type Subscriber = mpsc::UnboundedSender<Reply>;

struct State {
    model: BrokerModel,
    started: Instant,
    /// channel -> subscriber connection -> its queue
    subs: BTreeMap<String, BTreeMap<u64, Subscriber>>,
}

impl State {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Delivers a publication; how many subscribers took it.
    fn publish(&self, publication: Publication) -> usize {
        let Some(subs) = self.subs.get(&publication.channel) else {
            return 0;
        };
        let text = String::from_utf8_lossy(&publication.payload).into_owned();
        subs.values()
            .filter(|tx| tx.send(Reply::Push(text.clone())).is_ok())
            .count()
    }

    fn handle(&mut self, request: Request, conn: u64, push: &Subscriber) -> Reply {
        let now_ms = self.now_ms();
        match request {
            Request::Append { batch } => {
                let (places, published) = self.model.append(&batch, now_ms);
                for p in published {
                    self.publish(p);
                }
                Reply::Appended(places)
            }
            Request::Open { room, after } => {
                let opened = self.model.open(&room, after.as_ref(), now_ms);
                Reply::Opened {
                    epoch: opened.epoch,
                    head: opened.head,
                    messages: opened.messages,
                    presence: opened.presence,
                }
            }
            Request::Presence {
                node,
                room,
                user,
                present,
            } => {
                let p = self.model.presence(node, &room, &user, present);
                self.publish(p);
                Reply::Done
            }
            Request::EndLineage { room } => {
                self.model.end_lineage(&room);
                Reply::Done
            }
            Request::Heartbeat { node, online } => {
                let (beat, published) = self.model.heartbeat(node, online, now_ms);
                for p in published {
                    self.publish(p);
                }
                Reply::Live {
                    live: beat.live,
                    was_gone: beat.was_gone,
                }
            }
            Request::Relay { message } => {
                Reply::Receivers(self.publish(BrokerModel::relay(&message)))
            }
            Request::Publish { channel, payload } => {
                Reply::Receivers(self.publish(Publication { channel, payload }))
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
        model: BrokerModel::new(config),
        started: Instant::now(),
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
