//! A Server-Sent Events connection (the `/sse` fallback for networks that
//! break WebSocket upgrades): the hub sees an ordinary connection whose
//! outbox frames events instead of WebSocket frames ([`Framing::Sse`]) and
//! writes them into the streamed response body; requests come in as
//! `POST /sse/send` bodies for the session, each one text frame.
//!
//! A session is named by its node and 128 random bits, so that a request
//! reaching another node of a cluster can be forwarded to the node that
//! holds the stream (no sticky sessions), and so that nobody can guess
//! another client's session.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use roomhub_core::{ConnId, Identity, Input, NodeId, close};
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;
use tracing::info;

use crate::conn::context::ConnContext;
use crate::conn::online::Live;
use crate::conn::outbox::sse::session_event;
use crate::conn::outbox::{Framing, Outbox};

/// A request posted to a session, checked as the WebSocket reader checks a
/// text frame.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Posted {
    /// A text frame for the hub.
    Text(String),
    /// A violation that ends the session with this close code and reason.
    Violation(u16, String),
}

impl Posted {
    /// A body larger than the message limit: closed with 1009.
    pub(crate) fn too_big() -> Posted {
        Posted::Violation(close::MESSAGE_TOO_BIG, "message too big".into())
    }

    /// What a request body is: a text frame, or (larger than the message
    /// limit, not UTF-8) the close a WebSocket client would get.
    pub(crate) fn check(body: &[u8], max_message: usize) -> Posted {
        if body.len() > max_message {
            return Posted::too_big();
        }
        match std::str::from_utf8(body) {
            Ok(text) => Posted::Text(text.to_string()),
            Err(_) => Posted::Violation(
                close::INVALID_PAYLOAD,
                "invalid UTF-8 in a text frame".into(),
            ),
        }
    }
}

/// What became of a posted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Delivered {
    /// In the hub's inbox, after every request posted before it.
    Taken,
    /// The request broke a rule: the session is closed with this code.
    Closed(u16),
    /// No such session here (never was, or already ended).
    Unknown,
    /// The server is stopping.
    Stopping,
}

/// This node's SSE sessions.
pub(crate) struct Sessions {
    node: NodeId,
    open: Mutex<FxHashMap<Arc<str>, Session>>,
}

#[derive(Clone)]
struct Session {
    conn: ConnId,
    outbox: Outbox,
}

impl Sessions {
    pub(crate) fn new(node: NodeId) -> Sessions {
        Sessions {
            node,
            open: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<Arc<str>, Session>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session name: `<node>.<32 hex digits>`.
    fn name(&self) -> Arc<str> {
        format!("{}.{:032x}", self.node.0, rand::random::<u128>()).into()
    }

    /// The node a session name says holds it.
    pub(crate) fn node_of(session: &str) -> Option<NodeId> {
        let (node, rest) = session.split_once('.')?;
        (rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| node.parse().ok().map(NodeId))
            .flatten()
    }

    pub(crate) fn node(&self) -> NodeId {
        self.node
    }

    /// Hands a posted request to its session's connection, in the order
    /// requests arrive (the caller waits for each).
    pub(crate) async fn deliver(
        &self,
        cx: &ConnContext,
        session: &str,
        posted: Posted,
    ) -> Delivered {
        let Some(Session { conn, outbox }) = self.lock().get(session).cloned() else {
            return Delivered::Unknown;
        };
        match posted {
            Posted::Text(text) => {
                cx.metrics.received();
                let frame = Bytes::from(text);
                if cx.inbox.report(Input::Text { conn, frame }).done().await {
                    Delivered::Taken
                } else {
                    Delivered::Stopping
                }
            }
            Posted::Violation(code, why) => {
                // As the WebSocket reader does: the hub hears of the end,
                // then the close goes out after what was queued.
                self.lock().remove(session);
                outbox.end_live();
                cx.inbox.report(Input::Disconnected { conn }).done().await;
                outbox.close_now(code, why);
                Delivered::Closed(code)
            }
        }
    }
}

/// A new SSE connection: its outbox writes into `write` (the response
/// body's pipe); the session's name.
pub(crate) struct Opened {
    pub(crate) session: Arc<str>,
    pub(crate) outbox: Outbox,
    live: Arc<Live>,
}

impl Sessions {
    pub(crate) fn open(
        &self,
        cx: &ConnContext,
        conn: ConnId,
        write: crate::conn::io::WriteIo,
    ) -> Opened {
        let live = Arc::new(Live::new(cx.online.clone(), cx.metrics.clone()));
        let outbox = Outbox::framed(
            write,
            Some(live.clone()),
            cx.metrics.clone(),
            cx.send_queue_bytes(),
            Framing::Sse,
        );
        let session = self.name();
        self.lock().insert(
            session.clone(),
            Session {
                conn,
                outbox: outbox.clone(),
            },
        );
        Opened {
            session,
            outbox,
            live,
        }
    }
}

/// Runs an SSE connection until the server ends it (its writer ends after
/// the final event) or the client goes away (`gone`: the response body was
/// dropped). `joins`: `join_room` requests from the stream's query, as if
/// the client had sent them first.
pub(crate) async fn run(
    sessions: Arc<Sessions>,
    opened: Opened,
    conn: ConnId,
    identity: Identity,
    joins: Vec<String>,
    cx: Arc<ConnContext>,
    gone: oneshot::Receiver<()>,
) {
    let Opened {
        session,
        outbox,
        live,
    } = opened;
    let user = identity.user.id.clone();
    if !cx.inbox.open(conn, identity, outbox.clone()).done().await {
        sessions.lock().remove(&session);
        return;
    }
    // Only now may the client post: a request must reach the hub after the
    // connection it is for.
    outbox.push_raw(session_event(&session));
    for join in joins {
        let _ = sessions.deliver(&cx, &session, Posted::Text(join)).await;
    }
    let writer = outbox.clone().write_loop(cx.write_wait());
    let mut gone = gone;
    let reason = tokio::select! {
        biased;
        end = writer => {
            // The final event is in the pipe; the connection counts (for a
            // graceful shutdown's drain) until the response has taken it.
            let _ = tokio::time::timeout(cx.write_wait(), &mut gone).await;
            end.describe()
        }
        _ = &mut gone => {
            outbox.release();
            "client went away".to_string()
        }
    };
    sessions.lock().remove(&session);
    live.end();
    cx.inbox.report(Input::Disconnected { conn }).done().await;
    info!(%conn, user = %user, reason = %reason, "disconnected (SSE)");
}
