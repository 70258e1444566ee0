//! One WebSocket connection: a reader that turns frames into facts for the
//! hub, and a writer that drains the connection's outbox, several frames per
//! flush.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use roomhub_core::{ConnId, Identity, Input, close};
use tracing::{debug, info};

use crate::hub_task::{HubEvent, Inbox, Outbound, outbox};
use crate::server::AppState;

/// Frames written per flush at most.
const WRITE_BATCH: usize = 256;
/// After the server sends a close frame, how long the peer has to answer.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Runs a connection from the upgrade to the end.
pub(crate) async fn run(socket: WebSocket, conn: ConnId, identity: Identity, state: Arc<AppState>) {
    let user = identity.user.id.clone();
    let live = Arc::new(Live::new(state.clone()));
    let (outbox, inbox) = outbox(live.clone());
    let (sink, stream) = socket.split();
    if state
        .hub
        .send(HubEvent::Open {
            conn,
            identity,
            outbox: outbox.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    let mut writer = tokio::spawn(write_loop(sink, inbox, state.clone()));
    let read = read_loop(stream, conn, state.clone());
    tokio::pin!(read);
    // `biased`: tokio's branch choice is random otherwise, and simulations
    // must replay exactly from a seed.
    let reason = tokio::select! {
        biased;
        end = &mut read => {
            live.end();
            // The peer went away or broke the protocol: tell the hub, answer
            // a protocol error with its close code, and let the writer finish.
            let _ = state.hub.send(HubEvent::Input(Input::Disconnected { conn })).await;
            if let Some((code, why)) = end.close_code() {
                outbox.close_now(code, why);
            }
            drop(outbox);
            let _ = tokio::time::timeout(state.config.write_wait, &mut writer).await;
            writer.abort();
            end.describe()
        }
        ended = &mut writer => {
            // The server closed it (or a write failed): give the peer a
            // moment to answer the close, then make sure the hub knows.
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut read).await;
            let _ = state.hub.send(HubEvent::Input(Input::Disconnected { conn })).await;
            ended.unwrap_or(WriterEnd::Failed("writer panicked".into())).describe()
        }
    };
    live.end();
    info!(%conn, user = %user, reason = %reason, "disconnected");
}

/// Counts a connection as online from the upgrade until either side closes
/// it, which can be well before its socket is gone (a close frame may wait
/// on a dead link for the write timeout).
pub(crate) struct Live {
    state: Arc<AppState>,
    ended: std::sync::atomic::AtomicBool,
}

impl Live {
    fn new(state: Arc<AppState>) -> Self {
        state.online.fetch_add(1, Ordering::Relaxed);
        state.metrics.connection_opened();
        Live {
            state,
            ended: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The connection is over; counted once however often it is called.
    pub(crate) fn end(&self) {
        if !self.ended.swap(true, Ordering::Relaxed) {
            self.state.online.fetch_sub(1, Ordering::Relaxed);
            self.state.metrics.connection_closed();
        }
    }
}

/// How reading ended.
enum ReadEnd {
    PeerClosed(Option<u16>),
    Eof,
    /// A protocol violation, answered with this close code.
    Violation(u16, &'static str),
    Failed(String),
    HubGone,
}

impl ReadEnd {
    fn close_code(&self) -> Option<(u16, &'static str)> {
        match self {
            ReadEnd::Violation(code, why) => Some((*code, why)),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            ReadEnd::PeerClosed(Some(code)) => format!("peer closed ({code})"),
            ReadEnd::PeerClosed(None) => "peer closed".into(),
            ReadEnd::Eof => "connection dropped".into(),
            ReadEnd::Violation(code, why) => format!("closed {code}: {why}"),
            ReadEnd::Failed(e) => format!("read error: {e}"),
            ReadEnd::HubGone => "server stopping".into(),
        }
    }
}

async fn read_loop(
    mut stream: SplitStream<WebSocket>,
    conn: ConnId,
    state: Arc<AppState>,
) -> ReadEnd {
    while let Some(msg) = stream.next().await {
        let input = match msg {
            Ok(Message::Text(text)) => {
                state.metrics.received();
                Input::Text {
                    conn,
                    frame: Bytes::from(text),
                }
            }
            Ok(Message::Binary(_)) => Input::Binary { conn },
            Ok(Message::Ping(_) | Message::Pong(_)) => Input::Activity { conn },
            Ok(Message::Close(frame)) => return ReadEnd::PeerClosed(frame.map(|f| f.code)),
            Err(e) => return classify(e),
        };
        if state.hub.send(HubEvent::Input(input)).await.is_err() {
            return ReadEnd::HubGone;
        }
    }
    ReadEnd::Eof
}

/// Maps a codec error to the close code RFC 6455 and PROTOCOL.md ask for.
fn classify(e: axum::Error) -> ReadEnd {
    use tungstenite::error::{CapacityError, Error as WsError};
    let text = e.to_string();
    match e.into_inner().downcast::<WsError>() {
        Ok(ws) => match *ws {
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                ReadEnd::Violation(close::MESSAGE_TOO_BIG, "message too big")
            }
            WsError::Capacity(_) => ReadEnd::Violation(close::MESSAGE_TOO_BIG, "frame too big"),
            WsError::Utf8(_) => ReadEnd::Violation(1007, "invalid UTF-8 in a text frame"),
            WsError::Protocol(_) => ReadEnd::Violation(1002, "protocol error"),
            WsError::ConnectionClosed | WsError::AlreadyClosed => ReadEnd::Eof,
            other => ReadEnd::Failed(other.to_string()),
        },
        Err(_) => ReadEnd::Failed(text),
    }
}

/// How writing ended.
pub(crate) enum WriterEnd {
    Closed(u16, &'static str),
    Failed(String),
    TimedOut,
    /// Nobody can send to this connection any more.
    Released,
}

impl WriterEnd {
    fn describe(&self) -> String {
        match self {
            WriterEnd::Closed(code, why) => format!("closed {code}: {why}"),
            WriterEnd::Failed(e) => format!("write error: {e}"),
            WriterEnd::TimedOut => "write timed out".into(),
            WriterEnd::Released => "released".into(),
        }
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut inbox: Inbox,
    state: Arc<AppState>,
) -> WriterEnd {
    let write_wait = state.config.write_wait;
    loop {
        let Some(first) = inbox.rx.recv().await else {
            return WriterEnd::Released;
        };
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match inbox.rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut closing = None;
        let mut written_bytes = 0;
        let mut replay_written = 0;
        let mut frames = 0u64;
        let result = tokio::time::timeout(write_wait, async {
            for out in batch {
                match out {
                    Outbound::Frame { frame, replay } => {
                        written_bytes += frame.len();
                        if replay {
                            replay_written += frame.len();
                        }
                        if inbox.abandoned.load(Ordering::Relaxed) {
                            continue;
                        }
                        sink.feed(Message::Text(frame))
                            .await
                            .map_err(|e| e.to_string())?;
                        frames += 1;
                    }
                    Outbound::Ping => sink
                        .feed(Message::Ping(Bytes::new()))
                        .await
                        .map_err(|e| e.to_string())?,
                    Outbound::Close(code, reason) => {
                        closing = Some((code, reason));
                        break;
                    }
                }
            }
            sink.flush().await.map_err(|e| e.to_string())?;
            if let Some((code, reason)) = closing {
                let frame = CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                };
                sink.send(Message::Close(Some(frame)))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        })
        .await;
        inbox
            .replay_bytes
            .fetch_sub(replay_written, Ordering::Relaxed);
        inbox
            .queued_bytes
            .fetch_sub(written_bytes, Ordering::Relaxed);
        state.metrics.sent(frames);
        match result {
            Err(_) => return WriterEnd::TimedOut,
            Ok(Err(e)) => {
                debug!(error = %e, "write failed");
                return WriterEnd::Failed(e);
            }
            Ok(Ok(())) => {}
        }
        if let Some((code, reason)) = closing {
            return WriterEnd::Closed(code, reason);
        }
    }
}
