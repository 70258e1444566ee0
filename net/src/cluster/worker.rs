//! The node's request worker: serves the hub's cluster outputs in the order
//! they were emitted (appends batched into one round trip, opens after the
//! appends before them, presence, relays, follows) and answers through the
//! hub's inbox. It keeps nothing of its own: a presence update the broker
//! did not take is reported to the core, which sends the truth again once
//! the broker is back.

use std::sync::Arc;

use roomhub_core::{
    AppendRequest, DirectMessage, Input, NodeId, Output, Position, RelayOutcome, RoomName, UserRef,
};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::clock::Clock;
use crate::cluster::broker::{Broker, BrokerError, SUBSCRIBE_WAIT, SubRequest};
use crate::cluster::keys::channel;
use crate::cluster::view::ClusterView;
use crate::hub::inbox::Answers;
use crate::metrics::AppendTimer;
use crate::seq::batch::{Step, steps, take_ready};

/// Appends taken into one broker round trip at most.
const MAX_BATCH: usize = 256;

pub(crate) struct Worker<B> {
    pub(crate) broker: Arc<B>,
    pub(crate) node: NodeId,
    pub(crate) clock: Clock,
    pub(crate) subs: mpsc::Sender<SubRequest>,
    pub(crate) answers: Answers,
    pub(crate) view: Arc<ClusterView>,
    pub(crate) timer: AppendTimer,
}

impl<B: Broker> Worker<B> {
    /// Runs until the hub or the subscriber is gone.
    pub(crate) async fn run(mut self, mut outputs: mpsc::UnboundedReceiver<Output>) {
        while let Some(first) = outputs.recv().await {
            for step in steps(take_ready(first, &mut outputs, MAX_BATCH)) {
                let served = match step {
                    Step::Appends(batch) => self.append(batch).await,
                    Step::Other(out) => self.serve(out).await,
                };
                if !served {
                    return;
                }
            }
        }
    }

    /// Serves one output; false when the hub or the subscriber is gone.
    async fn serve(&mut self, out: Output) -> bool {
        let input = match out {
            Output::OpenRoom { room, after } => Some(self.open(&room, after).await),
            Output::CloseRoom { room } => {
                let ch = channel::room(room.as_str());
                if self.subs.send(SubRequest::Unsubscribe(ch)).await.is_err() {
                    return false;
                }
                None
            }
            Output::Presence {
                room,
                user,
                present,
            } => self.presence(room, user, present).await,
            Output::Relay(message) => self.relay(message).await,
            Output::EndLineage { room, ticket } => {
                let ended = match self.broker.end_lineage(&room).await {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(room = room.as_str(), "history_remove failed: {e}");
                        false
                    }
                };
                Some(Input::LineageEnded { ticket, ended })
            }
            Output::FollowUser { user } => {
                // Confirmation is not awaited: a direct message sent before
                // the subscription lands finds the user offline, as it
                // would a moment earlier.
                let (tx, _rx) = oneshot::channel();
                let ch = channel::user(&user);
                if self.subs.send(SubRequest::Subscribe(ch, tx)).await.is_err() {
                    return false;
                }
                None
            }
            Output::UnfollowUser { user } => {
                let ch = channel::user(&user);
                if self.subs.send(SubRequest::Unsubscribe(ch)).await.is_err() {
                    return false;
                }
                None
            }
            Output::HistoryLimits {
                max_messages,
                max_age_ms,
            } => {
                self.broker.set_history(max_messages, max_age_ms);
                None
            }
            // Appends come batched; the hub task's outputs never reach here.
            Output::Append(_)
            | Output::Send { .. }
            | Output::Ping { .. }
            | Output::Close { .. }
            | Output::Published { .. }
            | Output::ApiAnswered { .. }
            | Output::Hook { .. }
            | Output::VerifyToken { .. } => None,
        };
        match input {
            Some(input) => self.answers.send(input).await,
            None => true,
        }
    }

    /// Appends a batch; answers with the acks, or `UNAVAILABLE` for each
    /// when the broker cannot take them. Delivery comes from the room
    /// channel.
    async fn append(&self, batch: Vec<AppendRequest>) -> bool {
        let result = if self.view.is_healthy() {
            let started = std::time::Instant::now();
            let result = self.broker.append(&batch).await;
            self.timer.record(started.elapsed());
            result
        } else {
            Err(BrokerError::Unreachable("no session".into()))
        };
        let answers = match result {
            Ok(stored) => stored
                .iter()
                .filter_map(|msg| msg.receipt().map(Input::Appended))
                .collect(),
            Err(e) => {
                warn!(count = batch.len(), "appends failed: {e}");
                self.view.broker_failed();
                batch.into_iter().map(Input::AppendFailed).collect()
            }
        };
        self.answers.send_all(answers).await
    }

    /// Subscribes to the room's channel, then reads its snapshot, so
    /// nothing published in between is missed (the hub drops duplicates by
    /// offset).
    async fn open(&self, room: &RoomName, after: Option<Position>) -> Input {
        if !self.view.is_healthy() {
            return Input::RoomOpenFailed { room: room.clone() };
        }
        let ch = channel::room(room.as_str());
        let (tx, rx) = oneshot::channel();
        let subscribed = self
            .subs
            .send(SubRequest::Subscribe(ch.clone(), tx))
            .await
            .is_ok()
            && matches!(
                tokio::time::timeout(SUBSCRIBE_WAIT, rx).await,
                Ok(Ok(Ok(())))
            );
        // Everything published before the subscription is in the hub's
        // inbox now: mark where the room's current stream begins.
        if subscribed
            && !self
                .answers
                .send(Input::RoomSubscribed { room: room.clone() })
                .await
        {
            return Input::RoomOpenFailed { room: room.clone() };
        }
        let snapshot = if subscribed {
            self.broker
                .open(room, after.as_ref(), self.clock.now())
                .await
        } else {
            Err(BrokerError::Reply(
                "the room channel was not subscribed".into(),
            ))
        };
        match snapshot {
            Ok(snapshot) => Input::RoomOpened(snapshot),
            Err(e) => {
                warn!(room = %room, "opening room failed: {e}");
                self.view.broker_failed();
                if after.is_none() {
                    // The hub forgets a room it could not open (no CloseRoom
                    // follows), so its channel must not stay subscribed.
                    let _ = self.subs.send(SubRequest::Unsubscribe(ch)).await;
                }
                Input::RoomOpenFailed { room: room.clone() }
            }
        }
    }

    /// Records a presence change; when the broker does not take it, the
    /// core hears so (and sends the truth again once the broker is back).
    async fn presence(&self, room: RoomName, user: UserRef, present: bool) -> Option<Input> {
        match self.broker.presence(self.node, &room, &user, present).await {
            Ok(()) => None,
            Err(e) => {
                warn!(room = %room, "presence update failed: {e}");
                self.view.broker_failed();
                Some(Input::PresenceFailed { room, user })
            }
        }
    }

    /// Relays a direct message; the answer, when the sender waits for one.
    async fn relay(&self, message: Box<DirectMessage>) -> Option<Input> {
        let outcome = if !self.view.is_healthy() {
            RelayOutcome::Unavailable
        } else {
            match self.broker.relay(&message).await {
                Ok(0) => RelayOutcome::Offline,
                Ok(_) => RelayOutcome::Delivered,
                Err(e) => {
                    warn!("direct message relay failed: {e}");
                    self.view.broker_failed();
                    RelayOutcome::Unavailable
                }
            }
        };
        message
            .origin
            .is_some()
            .then_some(Input::Relayed { message, outcome })
    }
}
