//! The hub's inbox: the one bounded queue by which facts reach the hub task.
//! Whoever talks to the hub holds a narrow handle on it, not the queue's
//! event type: a connection an [`Inbox`] (open, report, publish), a
//! sequencer (the store thread, the cluster's tasks) an [`Answers`] (core
//! inputs only).

use std::future::Future;
use std::pin::Pin;

use roomhub_core::api::{ApiAnswer, ApiCall};
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
    /// A sequencer's answers to what the hub handed it together (a stored
    /// batch), taken in one pass: their fan-out shares one write per
    /// connection, as a memory-mode pass's would.
    Inputs(Vec<Input>),
    /// `POST /api/publish`: the core sequences it like a member's message
    /// and answers once it is stored.
    Publish {
        publish: Publish,
        reply: oneshot::Sender<PublishOutcome>,
    },
    /// A server API call for this node; the core answers it at once.
    Api {
        call: ApiCall,
        reply: oneshot::Sender<ApiAnswer>,
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
    pub(crate) fn open(&self, conn: ConnId, identity: Identity, outbox: Outbox) -> Delivery {
        let event = HubEvent::Open {
            conn,
            identity,
            outbox,
        };
        self.deliver(event)
    }

    /// A fact about a connection (a frame, activity, its end).
    pub(crate) fn report(&self, input: Input) -> Delivery {
        self.deliver(HubEvent::Input(input))
    }

    /// Queues `event` at once if the inbox has room; only a full inbox
    /// makes the caller wait, on a future boxed for the purpose. So a
    /// connection's task never holds an event or a send in progress while
    /// it waits for its socket: its idle state stays small.
    fn deliver(&self, event: HubEvent) -> Delivery {
        match self.0.try_send(event) {
            Ok(()) => Delivery::Done(true),
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Done(false),
            Err(mpsc::error::TrySendError::Full(event)) => {
                let inbox = self.0.clone();
                Delivery::Waiting(Box::pin(async move { inbox.send(event).await.is_ok() }))
            }
        }
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

    /// A server API call on this node; the answer arrives on the returned
    /// receiver.
    pub(crate) async fn api(&self, call: ApiCall) -> Result<oneshot::Receiver<ApiAnswer>, ()> {
        self.answers().api(call).await
    }

    /// The narrower handle for a sequencer.
    pub(crate) fn answers(&self) -> Answers {
        Answers(self.0.clone())
    }
}

/// An event handed to the inbox: queued (or refused: the hub is gone), or
/// waiting for room.
pub(crate) enum Delivery {
    Done(bool),
    Waiting(Pin<Box<dyn Future<Output = bool> + Send>>),
}

impl Delivery {
    /// False when the hub is gone.
    pub(crate) async fn done(self) -> bool {
        match self {
            Delivery::Done(queued) => queued,
            Delivery::Waiting(send) => send.await,
        }
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

    /// Several answers, taken by the hub in one pass. False when the hub is
    /// gone.
    pub(crate) async fn send_all(&self, inputs: Vec<Input>) -> bool {
        inputs.is_empty() || self.0.send(HubEvent::Inputs(inputs)).await.is_ok()
    }

    /// A server API call (from this node's API, or another node's), for
    /// this node's hub.
    pub(crate) async fn api(&self, call: ApiCall) -> Result<oneshot::Receiver<ApiAnswer>, ()> {
        let (reply, done) = oneshot::channel();
        self.0
            .send(HubEvent::Api { call, reply })
            .await
            .map_err(|_| ())?;
        Ok(done)
    }

    /// Several answers, taken by the hub in one pass, from a thread
    /// outside the runtime (the store's).
    pub(crate) fn blocking_send_all(&self, inputs: Vec<Input>) -> bool {
        inputs.is_empty() || self.0.blocking_send(HubEvent::Inputs(inputs)).is_ok()
    }
}
