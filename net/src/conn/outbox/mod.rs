//! A connection's outgoing side. The hub queues a pass's frames for the
//! connection; the connection's I/O shard ([`crate::conn::shard`]) then
//! writes everything queued in one non-blocking write, with no task per
//! frame and no timer in between. Only when the socket cannot take
//! everything does a backlog form; the connection's writer task then drains
//! it, and every frame queued meanwhile leaves in the same write. The state
//! is behind one lock: the hub queues from its thread while a shard writes
//! from another.
//!
//! The backlog is bounded in bytes: a live frame that would pass the bound
//! makes the connection a slow consumer (the core closes it with 4000).
//! Replayed history is counted apart, because it is bounded by the history
//! limits and must fit whatever the queue bound.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use roomhub_core::{FrameKind, close};
use tokio::sync::Notify;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader, Utf8Bytes};

use crate::conn::io::WriteIo;
use crate::conn::online::Live;
use crate::metrics::Metrics;

pub(crate) mod sse;
pub(crate) mod write;

/// How frames are put on the wire: WebSocket frames, or Server-Sent Events
/// (the `/sse` fallback: one `data:` event per frame, comments for pings,
/// a final `close` event instead of a close frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    WebSocket,
    Sse,
}

/// A drained queue with room for more frames than this gives its memory
/// back: idle connections hold no queue at all.
const KEEP_QUEUE_FRAMES: usize = 256;
/// The most one write call is handed, in bytes and in slices (the kernel
/// takes up to 1,024).
const MAX_WRITE_BYTES: usize = 256 * 1024;
const MAX_SLICES: usize = 128;
/// Writes up to this many bytes are copied into one buffer and written with
/// a plain `write`; larger ones use a vectored write.
const GATHER_BYTES: usize = 2048;
/// A WebSocket frame header from a server: 2 to 10 bytes.
const MAX_HEAD: usize = 10;

/// One frame waiting: its header, and its payload as the core made it
/// (shared with every other recipient of a broadcast).
struct Chunk {
    head: [u8; MAX_HEAD],
    head_len: u8,
    body: Bytes,
    /// Replayed history and control frames: not counted against the bound.
    outside_bound: bool,
}

impl Chunk {
    fn len(&self) -> usize {
        self.head_len as usize + self.body.len()
    }

    /// A control frame (ping, pong, close), encoded whole.
    fn control(frame: Frame) -> Chunk {
        let mut encoded = Vec::with_capacity(frame.len());
        // Encoding into memory cannot fail.
        let _ = frame.format(&mut encoded);
        Chunk::raw(Bytes::from(encoded), true)
    }

    /// Bytes that go out as they are (no header).
    fn raw(body: Bytes, outside_bound: bool) -> Chunk {
        Chunk {
            head: [0; MAX_HEAD],
            head_len: 0,
            body,
            outside_bound,
        }
    }
}

/// What happened to one pushed frame (the tests push one at a time).
#[cfg(test)]
pub(crate) enum Pushed {
    /// Accepted; the connection now has this many live bytes waiting
    /// (0: the frame is already on the socket).
    Queued(usize),
    /// Accepted as the first frame since the last flush: the caller must
    /// call [`Outbox::flush`] (after queuing the rest of its pass).
    FlushDue(usize),
    /// An ephemeral frame dropped for a queue under pressure, or the
    /// connection is closing.
    Dropped,
    /// A live frame would pass the bound.
    Overflow,
}

/// What [`Outbox::push_frames`] did.
#[derive(Default, Debug)]
pub(crate) struct Queued {
    /// The first frame since the last flush was queued: call [`Outbox::flush`].
    pub(crate) flush_due: bool,
    /// A live frame would have passed the bound; it and the rest were not queued.
    pub(crate) overflow: bool,
    pub(crate) ephemeral_dropped: u64,
    /// Live bytes waiting now.
    pub(crate) live_bytes: usize,
}

/// The hub's and the reader's handle on a connection's outgoing side.
#[derive(Clone)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer task: a backlog formed, a close was queued, or the
    /// connection was released.
    wake: Notify,
    /// Counts the connection as online until the hub or the peer ends it.
    live: Option<Arc<Live>>,
    metrics: Metrics,
    /// The bound on live bytes waiting.
    limit: usize,
    framing: Framing,
}

struct State {
    /// `None` once the writer ended: nothing more can be written.
    io: Option<WriteIo>,
    /// Frames not yet written, oldest first. A broadcast's payload is shared
    /// by every recipient's queue, never copied.
    frames: VecDeque<Chunk>,
    /// Bytes of the first frame in `frames` already written.
    front_written: usize,
    live_bytes: usize,
    replay_bytes: usize,
    /// A close frame is queued (or written); nothing follows it.
    close: Option<(u16, &'static str)>,
    /// Overflowed: what is queued is dropped and only the close goes out.
    abandoned: bool,
    released: bool,
    failed: Option<String>,
    /// The writer task's waker is registered with the socket: only it may
    /// write until it has been polled again.
    writer_waiting: bool,
    /// Frames were queued that nobody has tried to write yet.
    flush_due: bool,
}

impl Outbox {
    /// A WebSocket connection's outbox. `limit`: live bytes allowed to
    /// wait (the send queue bound).
    pub(crate) fn new(
        io: WriteIo,
        live: Option<Arc<Live>>,
        metrics: Metrics,
        limit: usize,
    ) -> Outbox {
        Outbox::framed(io, live, metrics, limit, Framing::WebSocket)
    }

    /// An outbox that frames what it is given as `framing` says.
    pub(crate) fn framed(
        io: WriteIo,
        live: Option<Arc<Live>>,
        metrics: Metrics,
        limit: usize,
        framing: Framing,
    ) -> Outbox {
        Outbox {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    io: Some(io),
                    frames: VecDeque::new(),
                    front_written: 0,
                    live_bytes: 0,
                    replay_bytes: 0,
                    close: None,
                    abandoned: false,
                    released: false,
                    failed: None,
                    writer_waiting: false,
                    flush_due: false,
                }),
                wake: Notify::new(),
                live,
                metrics,
                limit,
                framing,
            }),
        }
    }

    pub(crate) fn framing(&self) -> Framing {
        self.shared.framing
    }

    /// The connection is over for the protocol (see [`Live`]).
    pub(crate) fn end_live(&self) {
        if let Some(live) = &self.shared.live {
            live.end();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; go on.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a text frame (the core's serialized JSON) and writes it at
    /// once when nothing waits before it.
    #[cfg(test)]
    pub(crate) fn push_frame(&self, frame: &Bytes, kind: FrameKind) -> Pushed {
        let queued = self.push_frames(std::iter::once((frame, kind)), &mut sse::Events::default());
        let closed = self.lock().closed_for_frames();
        match queued {
            Queued { overflow: true, .. } => Pushed::Overflow,
            Queued {
                flush_due: true,
                live_bytes,
                ..
            } => Pushed::FlushDue(live_bytes),
            Queued {
                ephemeral_dropped: 1,
                ..
            } => Pushed::Dropped,
            _ if closed => Pushed::Dropped,
            Queued { live_bytes, .. } => Pushed::Queued(live_bytes),
        }
    }

    /// Queues several frames under one lock (the hub's frames for this
    /// connection from one pass), stopping at the first that would pass the
    /// bound. The caller flushes when told to.
    /// `events`: the pass's SSE events, shared by its SSE recipients.
    pub(crate) fn push_frames<'a>(
        &self,
        frames: impl Iterator<Item = (&'a Bytes, FrameKind)>,
        events: &mut sse::Events,
    ) -> Queued {
        let mut s = self.lock();
        let mut out = Queued::default();
        for (frame, kind) in frames {
            let chunk = match self.shared.framing {
                Framing::WebSocket => s.queue_frame(frame, kind, self.shared.limit),
                Framing::Sse => s.queue_event(events.of(frame), kind, self.shared.limit),
            };
            match chunk {
                Some(chunk) => out.flush_due |= s.append(chunk),
                None if s.closed_for_frames() => break,
                None if kind == FrameKind::Ephemeral => out.ephemeral_dropped += 1,
                None => {
                    out.overflow = true;
                    break;
                }
            }
        }
        out.live_bytes = s.live_bytes;
        out
    }

    /// Queues a ping (the hub flushes).
    /// Returns whether the caller must flush.
    pub(crate) fn ping(&self) -> bool {
        let chunk = match self.shared.framing {
            Framing::WebSocket => Chunk::control(Frame::ping(Bytes::new())),
            Framing::Sse => Chunk::raw(Bytes::from_static(sse::PING), true),
        };
        self.push_control(chunk, false)
    }

    /// Answers a peer's ping, unless the queue is full: a peer that floods
    /// pings without reading gets no more than the bound (RFC 6455 §5.5.3
    /// lets an endpoint answer only the latest ping).
    pub(crate) fn pong(&self, data: Bytes) {
        if self.lock().queued_bytes() + data.len() > self.shared.limit / 2 {
            return;
        }
        let _ = self.push_control(Chunk::control(Frame::pong(data)), true);
    }

    /// Writes `bytes` as they are, at once, outside the bound (the SSE
    /// stream's session event).
    pub(crate) fn push_raw(&self, bytes: Bytes) {
        let _ = self.push_control(Chunk::raw(bytes, true), true);
    }

    fn push_control(&self, chunk: Chunk, write_now: bool) -> bool {
        let s = self.lock();
        if s.closed_for_frames() {
            return false;
        }
        // Control frames are tiny and never count against the live bound.
        self.enqueued(s, chunk, write_now)
    }

    /// Queues a close frame after what is queued; nothing follows it.
    pub(crate) fn close_now(&self, code: u16, reason: impl Into<std::borrow::Cow<'static, str>>) {
        // What the connection remembers is a fixed label; a backend's own
        // reason goes only into the close frame.
        let (text, label) = match reason.into() {
            std::borrow::Cow::Borrowed(r) => (Utf8Bytes::from_static(r), r),
            std::borrow::Cow::Owned(r) => (Utf8Bytes::from(r), "disconnected by the server"),
        };
        let chunk = match self.shared.framing {
            Framing::WebSocket => Chunk::control(Frame::close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: text,
            }))),
            Framing::Sse => Chunk::raw(sse::close_event(code, &text), true),
        };
        self.push_close(chunk, (code, label));
    }

    /// Answers the peer's close frame (echoing its code, as RFC 6455 §5.5.1
    /// suggests), unless ours went out first.
    pub(crate) fn close_reply(&self, code: Option<u16>) {
        let frame = code.map(|c| CloseFrame {
            code: CloseCode::from(c),
            reason: Utf8Bytes::from_static(""),
        });
        self.push_close(
            Chunk::control(Frame::close(frame)),
            (code.unwrap_or(close::NORMAL), "peer closed"),
        );
    }

    fn push_close(&self, chunk: Chunk, why: (u16, &'static str)) {
        let mut s = self.lock();
        if s.close.is_some() || s.io.is_none() {
            return;
        }
        s.close = Some(why);
        // Written at once, with whatever was queued before it; outside the
        // live bound, like every control frame.
        let _ = self.enqueued(s, chunk, true);
        // The writer ends the connection once the close is out.
        self.shared.wake.notify_one();
    }

    /// The connection overflowed: drop what is queued (except the rest of a
    /// frame already partly written, or the stream would be corrupt).
    pub(crate) fn abandon(&self) {
        let mut s = self.lock();
        if s.abandoned {
            return;
        }
        s.abandoned = true;
        // Keep only a frame already partly written, or the stream would
        // be corrupt.
        let front = if s.front_written > 0 {
            s.frames.pop_front()
        } else {
            None
        };
        s.frames.clear();
        s.live_bytes = 0;
        s.replay_bytes = 0;
        if let Some(chunk) = front {
            s.account(&chunk);
            s.frames.push_back(chunk);
        }
    }

    /// No more frames will be pushed: the writer drains what is queued and
    /// ends.
    pub(crate) fn release(&self) {
        self.lock().released = true;
        self.shared.wake.notify_one();
    }

    /// Queues `chunk`. With `write_now`, writes at once and returns false;
    /// otherwise returns whether the caller must flush later (the hub, once
    /// per pass, so that every frame a pass queues leaves in one write).
    fn enqueued(&self, mut s: MutexGuard<'_, State>, chunk: Chunk, write_now: bool) -> bool {
        let flush_due = s.append(chunk);
        if write_now {
            self.write_now(&mut s);
            return false;
        }
        flush_due
    }

    /// Writes what was queued since the last flush.
    pub(crate) fn flush(&self) {
        let mut s = self.lock();
        self.write_now(&mut s);
    }

    fn write_now(&self, s: &mut State) {
        s.flush_due = false;
        // While the writer task waits on the socket, only it may write: its
        // waker is the one registered.
        if s.writer_waiting || s.frames.is_empty() {
            return;
        }
        // A no-op waker is fine: if the socket is full, the writer task
        // polls again with its own.
        let mut cx = Context::from_waker(Waker::noop());
        match s.write_some(&mut cx) {
            Poll::Ready(Ok(done)) => self.shared.metrics.wrote(done),
            Poll::Ready(Err(e)) => s.failed = Some(e.to_string()),
            Poll::Pending => {}
        }
        if !s.frames.is_empty() || s.failed.is_some() {
            self.shared.wake.notify_one();
        }
    }
}

impl State {
    /// The frame as a chunk, if it may be queued: `None` when the
    /// connection is closing, a live frame would pass the bound, or an
    /// ephemeral one would pass half of it.
    fn queue_frame(&mut self, frame: &Bytes, kind: FrameKind, limit: usize) -> Option<Chunk> {
        if self.closed_for_frames() {
            return None;
        }
        let header = FrameHeader {
            is_final: true,
            opcode: OpCode::Data(Data::Text),
            ..FrameHeader::default()
        };
        // The bound is on bytes as they go out: header included.
        let len = header.len(frame.len() as u64) + frame.len();
        if !self.within_bound(kind, len, limit) {
            return None;
        }
        let mut head = [0u8; MAX_HEAD];
        let head_len = {
            let mut cursor = std::io::Cursor::new(&mut head[..]);
            // A header is at most 10 bytes: writing it here cannot fail.
            let _ = header.format(frame.len() as u64, &mut cursor);
            cursor.position() as u8
        };
        let chunk = Chunk {
            head,
            head_len,
            body: frame.clone(),
            outside_bound: kind == FrameKind::Replay,
        };
        debug_assert_eq!(chunk.len(), len);
        Some(chunk)
    }

    /// An SSE event as a chunk, on the same terms as [`State::queue_frame`].
    fn queue_event(&mut self, event: Bytes, kind: FrameKind, limit: usize) -> Option<Chunk> {
        if self.closed_for_frames() || !self.within_bound(kind, event.len(), limit) {
            return None;
        }
        Some(Chunk::raw(event, kind == FrameKind::Replay))
    }

    /// Whether `len` more bytes of `kind` may wait.
    fn within_bound(&self, kind: FrameKind, len: usize, limit: usize) -> bool {
        match kind {
            FrameKind::Live => self.live_bytes + len <= limit,
            // Typing indicators give way at half the bound, so they never
            // cause a slow-consumer close on their own.
            FrameKind::Ephemeral => self.live_bytes + len <= limit / 2,
            FrameKind::Replay => true,
        }
    }

    /// Queues `chunk`; true if it is the first since the last flush.
    fn append(&mut self, chunk: Chunk) -> bool {
        self.account(&chunk);
        self.frames.push_back(chunk);
        !std::mem::replace(&mut self.flush_due, true)
    }

    /// Bytes waiting to be written.
    fn queued_bytes(&self) -> usize {
        self.live_bytes + self.replay_bytes - self.front_written
    }

    fn closed_for_frames(&self) -> bool {
        self.abandoned || self.close.is_some() || self.io.is_none() || self.released
    }

    fn account(&mut self, chunk: &Chunk) {
        if chunk.outside_bound {
            self.replay_bytes += chunk.len();
        } else {
            self.live_bytes += chunk.len();
        }
    }
}

#[cfg(test)]
mod tests;
