//! `roomhub-floor`: the cost floor that `roomhub-bench throughput` is compared
//! with. It speaks just enough of the protocol for the generator (join_room
//! gets a room_info, send_message an ack and a new_message to every other
//! member) and does nothing else: one thread, no queues, no JSON library,
//! each broadcast encoded once and handed to the kernel with one `send()`
//! per member. It is not a server: no auth, no limits, nothing kept. Its CPU
//! per delivery, measured the same way as roomhub's, is what the kernel and
//! a frame cost on this machine.
//!
//! `roomhub-floor --listen 127.0.0.1:9190`, then point the generator at it
//! with any `--jwt-secret` (tokens are not checked).

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

#[derive(Default)]
struct Room {
    offset: u64,
    members: Vec<(u64, Rc<OwnedWriteHalf>)>,
}

type Rooms = Rc<RefCell<HashMap<String, Room>>>;

fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .skip_while(|a| a != "--listen")
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9190".into());
    let _ = roomhub_net::os::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(&listen).await?;
        eprintln!("roomhub-floor on ws://{listen}/ws");
        let rooms: Rooms = Rc::default();
        let mut next = 0u64;
        loop {
            let (stream, _) = listener.accept().await?;
            next += 1;
            tokio::task::spawn_local(connection(stream, next, rooms.clone()));
        }
    })
}

async fn connection(stream: TcpStream, id: u64, rooms: Rooms) {
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    // The upgrade request: read to the blank line, answer 101.
    let mut request = Vec::new();
    let mut buf = [0u8; 2048];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let Some(key) = text.lines().find_map(|l| {
        l.strip_prefix("Sec-WebSocket-Key:")
            .or_else(|| l.strip_prefix("sec-websocket-key:"))
    }) else {
        return;
    };
    let accept =
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if write.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let write = Rc::new(write);
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(ReadOnly(read), Role::Server, None)
            .await;
    let mut joined: Option<String> = None;
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(frame) = msg else { continue };
        let frame = frame.as_str();
        // `room` (roomhub's form), or the seed's `payload.room_id`.
        let room = field(frame, "\"room\":\"")
            .or_else(|| field(frame, "\"room_id\":\""))
            .map(str::to_string);
        if frame.contains("\"type\":\"join_room\"") {
            let Some(room) = room else { continue };
            let info = {
                let mut rooms = rooms.borrow_mut();
                let r = rooms.entry(room.clone()).or_default();
                r.members.push((id, write.clone()));
                format!(
                    r#"{{"type":"room_info","room":"{room}","payload":{{"room_id":"{room}","users":[],"count":{},"offset":{},"epoch":"floor"}},"timestamp":"2026-01-01T00:00:00.000Z"}}"#,
                    r.members.len(),
                    r.offset
                )
            };
            send(&write, &text_frame(&info)).await;
            joined = Some(room);
        } else if frame.contains("\"type\":\"send_message\"") {
            let (Some(room), Some(content)) = (room, field(frame, "\"content\":\"")) else {
                continue;
            };
            let request_id = field(frame, "\"id\":\"").unwrap_or("");
            let (offset, others) = {
                let mut rooms = rooms.borrow_mut();
                let r = rooms.entry(room.clone()).or_default();
                r.offset += 1;
                let others: Vec<Rc<OwnedWriteHalf>> = r
                    .members
                    .iter()
                    .filter(|(m, _)| *m != id)
                    .map(|(_, w)| w.clone())
                    .collect();
                (r.offset, others)
            };
            let message = text_frame(&format!(
                r#"{{"type":"new_message","room":"{room}","id":"floor-{offset}","offset":{offset},"payload":{{"content":"{content}"}},"sender":{{"id":"u{id}","name":"u{id}"}},"timestamp":"2026-01-01T00:00:00.000Z"}}"#
            ));
            for w in &others {
                send(w, &message).await;
            }
            let ack = format!(
                r#"{{"type":"ack","id":"{request_id}","room":"{room}","payload":{{"message_id":"floor-{offset}","offset":{offset}}}}}"#
            );
            send(&write, &text_frame(&ack)).await;
        }
    }
    if let Some(room) = joined
        && let Some(r) = rooms.borrow_mut().get_mut(&room)
    {
        r.members.retain(|(m, _)| *m != id);
    }
}

/// One `send()`; only a full socket costs more (it waits until writable).
async fn send(w: &OwnedWriteHalf, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match w.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if w.writable().await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// An unmasked text frame (RFC 6455 §5.2).
fn text_frame(text: &str) -> Vec<u8> {
    let len = text.len();
    let mut f = Vec::with_capacity(len + 4);
    f.push(0x81);
    if len < 126 {
        f.push(len as u8);
    } else {
        f.push(126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    }
    f.extend_from_slice(text.as_bytes());
    f
}

fn field<'a>(frame: &'a str, key: &str) -> Option<&'a str> {
    let at = frame.find(key)? + key.len();
    let len = frame[at..].find('"')?;
    Some(&frame[at..at + len])
}

/// A socket's reading half, given to the WebSocket codec. The codec's own
/// writes (its automatic pong and close replies) go nowhere: only the
/// floor's own writes reach the socket.
struct ReadOnly<R>(R);

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
