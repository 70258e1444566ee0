//! A connection's reading side: frames from the codec become facts in the
//! hub's inbox; pings are answered by the outbox; codec errors become the
//! close codes RFC 6455 and PROTOCOL.md ask for.

use bytes::Bytes;
use futures_util::StreamExt;
use roomhub_core::{ConnId, Input, close};
use tokio_tungstenite::WebSocketStream;
use tungstenite::Message;

use crate::conn::io::{ReadIo, ReadOnly};
use crate::conn::outbox::Outbox;
use crate::hub::inbox::Inbox;
use crate::metrics::Metrics;

pub(crate) type Reader = WebSocketStream<ReadOnly<ReadIo>>;

/// How reading ended.
pub(crate) enum ReadEnd {
    PeerClosed(Option<u16>),
    Eof,
    /// A protocol violation, answered with this close code.
    Violation(u16, &'static str),
    Failed(String),
    HubGone,
}

impl ReadEnd {
    pub(crate) fn describe(&self) -> String {
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

pub(crate) async fn read_loop(
    mut stream: Reader,
    conn: ConnId,
    inbox: &Inbox,
    metrics: &Metrics,
    outbox: &Outbox,
) -> ReadEnd {
    while let Some(msg) = stream.next().await {
        let input = match msg {
            Ok(Message::Text(text)) => {
                metrics.received();
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
        if !inbox.report(input).await {
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
        WsError::Utf8(_) => {
            ReadEnd::Violation(close::INVALID_PAYLOAD, "invalid UTF-8 in a text frame")
        }
        WsError::Protocol(_) => ReadEnd::Violation(close::PROTOCOL_ERROR, "protocol error"),
        WsError::ConnectionClosed | WsError::AlreadyClosed => ReadEnd::Eof,
        other => ReadEnd::Failed(other.to_string()),
    }
}
