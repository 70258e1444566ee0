//! The outbox's writing side: one write of as many queued frames as fit
//! (copied together when small, vectored otherwise), and the writer task
//! that drains a backlog when the socket is full.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;

use super::{GATHER_BYTES, KEEP_QUEUE_FRAMES, MAX_SLICES, MAX_WRITE_BYTES, Outbox, State};

/// How the writer task ended.
pub(crate) enum WriterEnd {
    Closed(u16, &'static str),
    Failed(String),
    TimedOut,
    /// The connection ended without a close frame of ours.
    Released,
}

impl WriterEnd {
    pub(crate) fn describe(&self) -> String {
        match self {
            WriterEnd::Closed(code, why) => format!("closed {code}: {why}"),
            WriterEnd::Failed(e) => format!("write error: {e}"),
            WriterEnd::TimedOut => "write timed out".into(),
            WriterEnd::Released => "released".into(),
        }
    }
}

impl Outbox {
    /// The writer task: waits for a backlog and drains it. Each write must
    /// make progress within `write_wait`.
    pub(crate) async fn write_loop(self, write_wait: Duration) -> WriterEnd {
        loop {
            self.shared.wake.notified().await;
            loop {
                let mut progress = std::pin::pin!(std::future::poll_fn(|cx| self.lock().drain(cx)));
                // Most drains finish at once; a timer only for the rest.
                let first =
                    std::future::poll_fn(|cx| Poll::Ready(progress.as_mut().poll(cx))).await;
                let step = match first {
                    Poll::Ready(step) => step,
                    Poll::Pending => match tokio::time::timeout(write_wait, progress).await {
                        Ok(step) => step,
                        Err(_) => return self.finish(WriterEnd::TimedOut),
                    },
                };
                match step {
                    Drain::Wrote(frames) => self.shared.metrics.wrote_backlog(frames),
                    Drain::Idle => break,
                    Drain::End(end) => return self.finish(end),
                }
            }
        }
    }

    fn finish(&self, end: WriterEnd) -> WriterEnd {
        // Dropping the writing half lets the socket close once the reader
        // is gone too.
        let mut s = self.lock();
        s.io = None;
        s.frames = VecDeque::new();
        end
    }
}

/// One step of the writer task.
enum Drain {
    /// This many frames were completed; more may be waiting.
    Wrote(u64),
    /// Nothing waits.
    Idle,
    End(WriterEnd),
}

impl State {
    /// Writes from the backlog once (one write of as many frames as fit:
    /// copied together when small, vectored otherwise); returns the frames
    /// completed.
    pub(super) fn write_some(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let mut used = 0;
        let mut bytes = 0;
        let mut skip = self.front_written;
        for chunk in &self.frames {
            if used + 2 > MAX_SLICES || bytes >= MAX_WRITE_BYTES {
                break;
            }
            for part in [&chunk.head[..chunk.head_len as usize], &chunk.body[..]] {
                let part = if skip >= part.len() {
                    skip -= part.len();
                    continue;
                } else {
                    let rest = &part[skip..];
                    skip = 0;
                    rest
                };
                slices[used] = IoSlice::new(part);
                used += 1;
                bytes += part.len();
            }
        }
        let written = if bytes > GATHER_BYTES && io.is_write_vectored() {
            Pin::new(io).poll_write_vectored(cx, &slices[..used])
        } else {
            // One contiguous `write`. For a small write (the common case:
            // one frame or a few) the kernel's plain write path is cheaper
            // than importing an iovec, and copying a few hundred bytes
            // (on the stack) costs less than the difference; a socket
            // without vectored writes gets one copy too.
            let mut small = [0u8; GATHER_BYTES];
            let mut large = Vec::new();
            let joined: &mut [u8] = if bytes <= GATHER_BYTES {
                &mut small[..bytes]
            } else {
                large.resize(bytes, 0);
                &mut large
            };
            let mut at = 0;
            for s in &slices[..used] {
                joined[at..at + s.len()].copy_from_slice(s);
                at += s.len();
            }
            Pin::new(io).poll_write(cx, joined)
        };
        let n = match written {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        let mut left = n;
        let mut done = 0;
        while left > 0 {
            let Some(chunk) = self.frames.front() else {
                break;
            };
            let len = chunk.len();
            let rest = len - self.front_written;
            if left < rest {
                self.front_written += left;
                break;
            }
            left -= rest;
            self.front_written = 0;
            if chunk.outside_bound {
                self.replay_bytes -= len;
            } else {
                self.live_bytes -= len;
            }
            self.frames.pop_front();
            done += 1;
        }
        if self.frames.is_empty() && self.frames.capacity() > KEEP_QUEUE_FRAMES {
            self.frames = VecDeque::new();
        }
        Poll::Ready(Ok(done))
    }

    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<Drain> {
        self.writer_waiting = false;
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Drain::End(WriterEnd::Failed(e)));
        }
        if self.frames.is_empty() {
            if let Some((code, reason)) = self.close {
                return Poll::Ready(Drain::End(WriterEnd::Closed(code, reason)));
            }
            if self.released {
                return Poll::Ready(Drain::End(WriterEnd::Released));
            }
            return Poll::Ready(Drain::Idle);
        }
        match self.write_some(cx) {
            Poll::Ready(Ok(done)) => Poll::Ready(Drain::Wrote(done)),
            Poll::Ready(Err(e)) => Poll::Ready(Drain::End(WriterEnd::Failed(e.to_string()))),
            Poll::Pending => {
                self.writer_waiting = true;
                Poll::Pending
            }
        }
    }
}
