//! The hub's inbox: the one bounded queue by which facts reach the hub task.
//! Whoever talks to the hub holds a narrow handle on it, not the queue's
//! event type: a connection an [`Inbox`] (open, report, publish), a
//! sequencer (the store thread, the cluster's tasks) an [`Answers`] (core
//! inputs only).

use roomhub_core::{ConnId, Identity, Input, Publish, PublishOutcome};
use tokio::sync::{mpsc, oneshot};

use crate::conn::outbox::Outbox;

/// Events queued for the hub before senders wait (backpressure on the
/// sockets and the broker, not unbounded memory).
pub(crate) const HUB_QUEUE_EVENTS: usize = 65_536;

/// What reaches the hub task.
pub(crate) enum HubEvent {
    Open {
        conn: ConnId,
        identity: Identity,
        outbox: Outbox,
    },
    Input(Input),
    /// `POST /api/publish`: the core sequences it like a member's message
    /// and answers once it is stored.
    Publish {
        publish: Publish,
        reply: oneshot::Sender<PublishOutcome>,
    },
}

/// The hub's end of the inbox, and the handles given out for it.
pub(crate) fn channel() -> (Inbox, mpsc::Receiver<HubEvent>) {
    let (tx, rx) = mpsc::channel(HUB_QUEUE_EVENTS);
    (Inbox(tx), rx)
}

/// What connections and HTTP handlers hold. Every call fails (false, or
/// `Err`) only when the hub is gone: the server is stopping.
#[derive(Clone)]
pub(crate) struct Inbox(mpsc::Sender<HubEvent>);

impl Inbox {
    /// A connection is upgraded; the hub writes to it through `outbox`.
    pub(crate) async fn open(&self, conn: ConnId, identity: Identity, outbox: Outbox) -> bool {
        let event = HubEvent::Open {
            conn,
            identity,
            outbox,
        };
        self.0.send(event).await.is_ok()
    }

    /// A fact about a connection (a frame, activity, its end).
    pub(crate) async fn report(&self, input: Input) -> bool {
        self.0.send(HubEvent::Input(input)).await.is_ok()
    }

    /// A backend's message; the answer arrives on the returned receiver.
    pub(crate) async fn publish(
        &self,
        publish: Publish,
    ) -> Result<oneshot::Receiver<PublishOutcome>, ()> {
        let (reply, done) = oneshot::channel();
        let event = HubEvent::Publish { publish, reply };
        self.0.send(event).await.map_err(|_| ())?;
        Ok(done)
    }

    /// The narrower handle for a sequencer.
    pub(crate) fn answers(&self) -> Answers {
        Answers(self.0.clone())
    }
}

/// What a sequencer (the store thread, the cluster tasks) holds: it can
/// only hand the hub core inputs.
#[derive(Clone)]
pub(crate) struct Answers(mpsc::Sender<HubEvent>);

impl Answers {
    /// False when the hub is gone.
    pub(crate) async fn send(&self, input: Input) -> bool {
        self.0.send(HubEvent::Input(input)).await.is_ok()
    }

    /// From a thread outside the runtime (the store's).
    pub(crate) fn blocking_send(&self, input: Input) -> bool {
        self.0.blocking_send(HubEvent::Input(input)).is_ok()
    }
}
