//! A connection's byte streams: the upgraded socket split into a reading
//! half for the frame reader and a writing half for the outbox.

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
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
