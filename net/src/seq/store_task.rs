//! The store's thread: serves the hub's sequencing outputs in the order
//! they were emitted (consecutive appends share one commit) and answers
//! through the hub's inbox.

use roomhub_core::Output;
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::hub::engine::SequencerQueue;
use crate::hub::inbox::Answers;
use crate::metrics::AppendTimer;
use crate::seq::batch::{Step, steps, take_ready};
use crate::seq::store::{History, Store};

/// Appends taken into one transaction at most.
const MAX_BATCH: usize = 512;

/// Starts the store thread; returns the queue the hub feeds. `closed`
/// resolves once the database is closed (so a restart in the same process
/// can open it again).
pub(crate) fn spawn(
    store: Store,
    clock: Clock,
    answers: Answers,
    closed: tokio::sync::oneshot::Sender<()>,
    timer: AppendTimer,
) -> SequencerQueue {
    // What bounds it: see `SequencerQueue`.
    let (tx, mut rx) = mpsc::unbounded_channel::<Output>();
    std::thread::Builder::new()
        .name("roomhub-store".into())
        .spawn(move || {
            // Dropped when this thread ends, after the database is closed
            // (`store` is dropped first: it was moved in after `closed`).
            let _closed = closed;
            let mut store = store;
            while let Some(first) = rx.blocking_recv() {
                // Everything taken together is answered together, in order.
                let mut replies = Vec::new();
                for step in steps(take_ready(first, &mut rx, MAX_BATCH)) {
                    match step {
                        Step::Appends(batch) => {
                            let started = std::time::Instant::now();
                            replies.extend(store.answer_appends(batch));
                            timer.record(started.elapsed());
                        }
                        Step::Other(Output::OpenRoom { room, .. }) => {
                            replies.push(store.answer_open(room, clock.now()));
                        }
                        Step::Other(Output::EndLineage { room, ticket }) => {
                            replies.push(store.answer_end_lineage(&room, ticket));
                        }
                        Step::Other(Output::HistoryLimits {
                            max_messages,
                            max_age_ms,
                        }) => store.set_history(max_messages, max_age_ms),
                        // Nothing to stop or follow: this store delivers
                        // only to its own node.
                        Step::Other(_) => {}
                    }
                }
                if !answers.blocking_send_all(replies) {
                    return;
                }
            }
        })
        .expect("spawning the store thread");
    tx
}
