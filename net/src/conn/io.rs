//! A connection's byte streams: the upgraded socket split into a reading
//! half for the codec and a writing half for the outbox, and [`ReadOnly`],
//! which gives the codec a stream it cannot write to.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub(crate) type ReadIo = Box<dyn AsyncRead + Send + Unpin>;
/// The socket's writing half (in production a `WriteHalf` of the upgraded
/// stream; a recording writer in the outbox's tests).
pub(crate) type WriteIo = Box<dyn AsyncWrite + Send + Unpin>;

/// The upgraded connection's two halves. On a real TCP socket they are the
/// socket's own halves, so a write is one call into tokio's `TcpStream`;
/// anything else (the simulator's sockets) goes through hyper's `Upgraded`
/// and a shared lock.
pub(crate) fn halves(upgraded: Upgraded) -> (ReadIo, WriteIo) {
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
