//! The append-batching loop both sequencers share (the store thread and the
//! cluster worker): take what the hub emitted together, and group runs of
//! consecutive appends into one step (one commit, one broker round trip),
//! keeping every other output in its place: an open waits for the appends
//! before it, so it sees them.

use roomhub_core::{AppendRequest, Output};
use tokio::sync::mpsc;

/// One thing for a sequencer to do, in the hub's order.
pub(crate) enum Step {
    /// Consecutive appends: stored (and answered) together.
    Appends(Vec<AppendRequest>),
    /// Any other sequencing output.
    Other(Output),
}

/// `first` and whatever else is already queued, at most `max` in all.
pub(crate) fn take_ready(
    first: Output,
    queue: &mut mpsc::UnboundedReceiver<Output>,
    max: usize,
) -> Vec<Output> {
    let mut pending = vec![first];
    while pending.len() < max {
        match queue.try_recv() {
            Ok(next) => pending.push(next),
            Err(_) => break,
        }
    }
    pending
}

/// The outputs as steps, in order, with consecutive appends merged.
pub(crate) fn steps(outputs: Vec<Output>) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut appends = Vec::new();
    for out in outputs {
        match out {
            Output::Append(request) => appends.push(*request),
            other => {
                if !appends.is_empty() {
                    steps.push(Step::Appends(std::mem::take(&mut appends)));
                }
                steps.push(Step::Other(other));
            }
        }
    }
    if !appends.is_empty() {
        steps.push(Step::Appends(appends));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomhub_core::RoomName;
    use roomhub_core::testkit::append_request;

    #[test]
    fn consecutive_appends_share_a_step_and_others_keep_their_place() {
        let append = |t| Output::Append(Box::new(append_request("g", t)));
        let open = Output::OpenRoom {
            room: RoomName::parse("g", 64).unwrap(),
            after: None,
        };
        let steps = steps(vec![append(1), append(2), open.clone(), append(3)]);
        let shape: Vec<usize> = steps
            .iter()
            .map(|s| match s {
                Step::Appends(a) => a.len(),
                Step::Other(o) => {
                    assert_eq!(*o, open);
                    0
                }
            })
            .collect();
        assert_eq!(shape, [2, 0, 1]);
    }
}
