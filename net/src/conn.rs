//! One WebSocket connection: a reader that turns frames into facts for the
//! hub, and the writer side of its [`Outbox`], which the hub writes through.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use roomhub_core::{ConnId, Identity, Input, close};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tracing::info;
use tungstenite::Message;
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::hub_task::HubEvent;
use crate::outbox::{Outbox, WriteIo};
use crate::server::AppState;

/// After the server sends a close frame, how long the peer has to answer.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

type ReadIo = Box<dyn AsyncRead + Send + Unpin>;
type Reader = WebSocketStream<ReadOnly<ReadIo>>;

/// The upgraded connection's two halves. On a real TCP socket they are the
/// socket's own halves, so a write is one call into tokio's `TcpStream`;
/// anything else (the simulator's sockets) goes through hyper's `Upgraded`
/// and a shared lock.
fn halves(upgraded: Upgraded) -> (ReadIo, WriteIo) {
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let (read, write) = parts.io.into_inner().into_split();
            // Bytes the client sent right after its upgrade request, which
            // hyper already read, come first.
            let read: ReadIo = if parts.read_buf.is_empty() {
                Box::new(read)
            } else {
                Box::new(std::io::Cursor::new(parts.read_buf).chain(read))
            };
            (read, Box::new(write))
        }
        Err(upgraded) => {
            let (read, write) = tokio::io::split(TokioIo::new(upgraded));
            (Box::new(read), Box::new(write))
        }
    }
}

/// Runs a connection from the upgrade to the end.
pub(crate) async fn run(
    upgraded: Upgraded,
    config: WebSocketConfig,
    conn: ConnId,
    identity: Identity,
    state: Arc<AppState>,
) {
    let user = identity.user.id.clone();
    let (read_half, write_half) = halves(upgraded);
    let stream =
        WebSocketStream::from_raw_socket(ReadOnly(read_half), Role::Server, Some(config)).await;
    let live = Arc::new(Live::new(state.clone()));
    let outbox = Outbox::new(
        write_half,
        Some(live.clone()),
        state.metrics.clone(),
        state.config.send_queue_bytes,
    );
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
    let writer = outbox.clone().write_loop(state.config.write_wait);
    let read = read_loop(stream, conn, &state, &outbox);
    tokio::pin!(read, writer);
    // `biased`: tokio's branch choice is random otherwise, and simulations
    // must replay exactly from a seed.
    let reason = tokio::select! {
        biased;
        end = &mut read => {
            live.end();
            // The peer went away or broke the protocol: tell the hub, answer
            // a close or a protocol error with a close frame, and let the
            // writer finish what is queued.
            let _ = state.hub.send(HubEvent::Input(Input::Disconnected { conn })).await;
            match &end {
                ReadEnd::Violation(code, why) => outbox.close_now(*code, why),
                ReadEnd::PeerClosed(code) => outbox.close_reply(*code),
                _ => outbox.release(),
            }
            let _ = tokio::time::timeout(state.config.write_wait, &mut writer).await;
            end.describe()
        }
        ended = &mut writer => {
            // The server closed it (or a write failed): give the peer a
            // moment to answer the close, then make sure the hub knows.
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut read).await;
            let _ = state.hub.send(HubEvent::Input(Input::Disconnected { conn })).await;
            ended.describe()
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

async fn read_loop(mut stream: Reader, conn: ConnId, state: &AppState, outbox: &Outbox) -> ReadEnd {
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
            Ok(Message::Ping(data)) => {
                outbox.pong(data);
                Input::Activity { conn }
            }
            Ok(Message::Pong(_)) => Input::Activity { conn },
            Ok(Message::Close(frame)) => {
                return ReadEnd::PeerClosed(frame.map(|f| u16::from(f.code)));
            }
            // Only produced when writing raw frames, never on reading.
            Ok(Message::Frame(_)) => continue,
            Err(e) => return classify(e),
        };
        if state.hub.send(HubEvent::Input(input)).await.is_err() {
            return ReadEnd::HubGone;
        }
    }
    ReadEnd::Eof
}

/// Maps a codec error to the close code RFC 6455 and PROTOCOL.md ask for.
fn classify(e: tungstenite::Error) -> ReadEnd {
    use tungstenite::error::{CapacityError, Error as WsError};
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            ReadEnd::Violation(close::MESSAGE_TOO_BIG, "message too big")
        }
        WsError::Capacity(_) => ReadEnd::Violation(close::MESSAGE_TOO_BIG, "frame too big"),
        WsError::Utf8(_) => ReadEnd::Violation(1007, "invalid UTF-8 in a text frame"),
        WsError::Protocol(_) => ReadEnd::Violation(1002, "protocol error"),
        WsError::ConnectionClosed | WsError::AlreadyClosed => ReadEnd::Eof,
        other => ReadEnd::Failed(other.to_string()),
    }
}

/// A socket's reading half, given to the WebSocket codec. The codec's own
/// writes (its automatic pong and close replies) go nowhere: the outbox
/// answers pings and closes, since only it may write to the socket.
/// (`roomhub-floor` reads the same way.)
pub struct ReadOnly<R>(pub R);

impl<R: AsyncRead + Unpin> AsyncRead for ReadOnly<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReadOnly<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
