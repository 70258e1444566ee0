//! The I/O shards' writing side. Connections are partitioned over one shard
//! per I/O thread (by connection number); the hub hands each shard, per
//! pass, the outboxes it queued frames in, and the shard writes them to
//! their sockets. The hub thread then only decides and queues; the socket
//! writes, most of a server's CPU, run on every core.
//!
//! Batching adapts by itself: a shard takes every pass waiting for it
//! before writing, so a connection whose frames from several passes queued
//! up while its shard was busy is written once, with all of them. A quiet
//! server writes each pass at once; a loaded one writes fewer, larger
//! batches, with no timer in between.

use tokio::sync::mpsc;

use crate::conn::outbox::Outbox;

/// Passes a shard takes before it lets other tasks on its thread run.
const PASSES_PER_TURN: usize = 64;

/// The hub's handle on the shards.
pub(crate) struct Shards {
    queues: Vec<mpsc::UnboundedSender<Vec<Outbox>>>,
    /// The outboxes of the pass being gathered, per shard.
    staged: Vec<Vec<Outbox>>,
}

impl Shards {
    /// Starts `count` shard tasks on the current runtime (at least one).
    /// Each is unconstrained by tokio's cooperative budget, which would
    /// otherwise turn every write after a task's 128th into `Pending`; a
    /// shard yields on its own instead.
    pub(crate) fn spawn(count: usize) -> Shards {
        let queues = (0..count.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(tokio::task::unconstrained(run(rx)));
                tx
            })
            .collect::<Vec<_>>();
        Shards {
            staged: vec![Vec::new(); queues.len()],
            queues,
        }
    }

    /// Stages a connection's outbox for writing, on the shard that owns the
    /// connection (by its number).
    pub(crate) fn stage(&mut self, conn: u64, outbox: &Outbox) {
        let shard = (conn % self.queues.len() as u64) as usize;
        self.staged[shard].push(outbox.clone());
    }

    /// Hands each shard what was staged for it.
    pub(crate) fn hand_over(&mut self) {
        for (queue, staged) in self.queues.iter().zip(&mut self.staged) {
            if !staged.is_empty() {
                // A shard is gone only when the runtime is shutting down.
                let _ = queue.send(std::mem::take(staged));
            }
        }
    }
}

async fn run(mut passes: mpsc::UnboundedReceiver<Vec<Outbox>>) {
    while let Some(pass) = passes.recv().await {
        write(pass);
        for _ in 1..PASSES_PER_TURN {
            match passes.try_recv() {
                Ok(pass) => write(pass),
                Err(_) => break,
            }
        }
        // Unconstrained, a busy shard would otherwise never give the
        // connection readers on its thread a turn.
        tokio::task::yield_now().await;
    }
}

fn write(pass: Vec<Outbox>) {
    for outbox in pass {
        outbox.flush();
    }
}
