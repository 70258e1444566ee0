//! The store's thread: serves the hub's sequencing outputs in the order
//! they were emitted (consecutive appends share one commit) and answers
//! through the hub's inbox.

use roomhub_core::{AppendRequest, Input, Output};
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::hub::engine::SequencerQueue;
use crate::hub::inbox::Answers;
use crate::seq::batch::{Step, steps, take_ready};
use crate::seq::store::Store;

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
            let answer = |input: Input| answers.blocking_send(input);
            while let Some(first) = rx.blocking_recv() {
                for step in steps(take_ready(first, &mut rx, MAX_BATCH)) {
                    let served = match step {
                        Step::Appends(batch) => commit(&mut store, batch, &answer),
                        Step::Other(Output::OpenRoom { room, .. }) => {
                            answer(match store.snapshot(&room, clock.now()) {
                                Ok(snapshot) => Input::RoomOpened(snapshot),
                                Err(e) => {
                                    tracing::error!(room = %room, "store cannot open room: {e}");
                                    Input::RoomOpenFailed { room }
                                }
                            })
                        }
                        // Nothing to stop or follow: this store delivers
                        // only to its own node.
                        Step::Other(_) => true,
                    };
                    if !served {
                        return;
                    }
                }
            }
        })
        .expect("spawning the store thread");
    tx
}

/// Commits a batch and answers each append; false if the hub is gone.
fn commit(store: &mut Store, batch: Vec<AppendRequest>, answer: &impl Fn(Input) -> bool) -> bool {
    match store.append_batch(batch.clone()) {
        Ok(stored) => {
            for msg in stored {
                let receipt = msg.receipt();
                if !answer(Input::Sequenced(msg)) {
                    return false;
                }
                if let Some(receipt) = receipt
                    && !answer(Input::Appended(receipt))
                {
                    return false;
                }
            }
        }
        Err(e) => {
            tracing::error!("store cannot append: {e}");
            for request in batch {
                if !answer(Input::AppendFailed(request)) {
                    return false;
                }
            }
        }
    }
    true
}
