//! A connection's reading side: bytes from the socket become frames
//! ([`crate::conn::frames`]) and frames become facts in the hub's inbox;
//! pings are answered by the outbox; violations become the close codes RFC
//! 6455 and PROTOCOL.md ask for. Reads land on the stack of the thread
//! that reads, so a connection waiting for its next frame holds no buffer.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;

use roomhub_core::{ConnId, Input};
use tokio::io::{AsyncRead, ReadBuf};

use crate::conn::frames::{Decoder, Event};
use crate::conn::io::ReadIo;
use crate::conn::outbox::Outbox;
use crate::hub::inbox::Inbox;
use crate::metrics::Metrics;

/// The most one read takes (on the stack, not kept).
const READ_CHUNK: usize = 8 * 1024;

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
    mut io: ReadIo,
    max_message: usize,
    conn: ConnId,
    inbox: &Inbox,
    metrics: &Metrics,
    outbox: &Outbox,
) -> ReadEnd {
    let mut decoder = Decoder::new(max_message);
    let mut events = Vec::new();
    loop {
        let read = std::future::poll_fn(|cx| {
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut io).poll_read(cx, &mut buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(ReadEnd::Failed(e.to_string()))),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Err(ReadEnd::Eof)),
                Poll::Ready(Ok(())) => Poll::Ready(
                    decoder
                        .feed(buf.filled(), &mut events)
                        .map_err(|(code, why)| ReadEnd::Violation(code, why)),
                ),
            }
        })
        .await;
        // What was whole before a violation still counts, in order.
        for event in events.drain(..) {
            let input = match event {
                Event::Text(frame) => {
                    metrics.received();
                    Input::Text { conn, frame }
                }
                Event::Binary => Input::Binary { conn },
                Event::Ping(data) => {
                    outbox.pong(data);
                    Input::Activity { conn }
                }
                Event::Pong => Input::Activity { conn },
                Event::Close(code) => return ReadEnd::PeerClosed(code),
            };
            if !inbox.report(input).done().await {
                return ReadEnd::HubGone;
            }
        }
        if let Err(end) = read {
            return end;
        }
    }
}
