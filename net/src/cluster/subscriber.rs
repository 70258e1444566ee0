//! The node's subscription session: kept up with every channel the node
//! needs (node events, its open rooms, the users it follows), re-established
//! with backoff when lost; what is published becomes core inputs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use roomhub_core::{Input, NodeId};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::cluster::broker::{
    Broker, BrokerError, Delivery, SUBSCRIBE_WAIT, SubRequest, Subscription,
};
use crate::cluster::keys::channel;
use crate::cluster::view::{ClusterTiming, ClusterView};
use crate::cluster::wire::Event;
use crate::hub::inbox::Answers;

/// Publications handed to the hub in one event at most.
const HAND_ON_BATCH: usize = 256;

/// Keeps one subscription session up, with every channel the node needs,
/// and turns what is published into hub inputs. A lost session is
/// re-established with backoff; the hub is then told, and resyncs its rooms
/// and this node's presence.
pub(crate) async fn subscriber<B: Broker>(
    broker: Arc<B>,
    node: NodeId,
    timing: ClusterTiming,
    mut requests: mpsc::Receiver<SubRequest>,
    answers: Answers,
    view: Arc<ClusterView>,
) {
    let mut wanted: BTreeSet<String> = BTreeSet::from([channel::NODES.to_string()]);
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    loop {
        let session = match broker.subscribe().await {
            Ok(session) => subscribe_all(session, &wanted, node, &view, &answers).await,
            Err(e) => {
                if first {
                    warn!("broker unreachable: {e}; retrying");
                }
                None
            }
        };
        let Some(Subscription {
            control,
            mut messages,
        }) = session
        else {
            first = false;
            if !wait_away(&mut requests, &mut wanted, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(timing.max_backoff);
            continue;
        };
        backoff = Duration::from_millis(50);
        view.healthy.store(true, Ordering::Relaxed);
        if !first {
            info!("broker connection restored; resyncing rooms");
            answers.send(Input::BrokerReconnected).await;
        }
        first = false;
        loop {
            tokio::select! {
                biased;
                () = view.reset.notified() => break,
                req = requests.recv() => match req {
                    Some(SubRequest::Subscribe(ch, done)) => {
                        wanted.insert(ch.clone());
                        let _ = control.send(SubRequest::Subscribe(ch, done)).await;
                    }
                    Some(SubRequest::Unsubscribe(ch)) => {
                        wanted.remove(&ch);
                        let _ = control.send(SubRequest::Unsubscribe(ch)).await;
                    }
                    None => return,
                },
                msg = messages.recv() => match msg {
                    Some(delivery) => {
                        if !hand_on(delivery, &mut messages, node, &view, &answers).await {
                            return;
                        }
                    }
                    None => break,
                },
            }
        }
        warn!("broker subscription lost; reconnecting");
        view.healthy.store(false, Ordering::Relaxed);
    }
}

/// Subscribes a new session to every wanted channel; `None` if the broker
/// refused, the session died on the way, or the hub is gone.
async fn subscribe_all(
    mut session: Subscription,
    wanted: &BTreeSet<String>,
    node: NodeId,
    view: &ClusterView,
    answers: &Answers,
) -> Option<Subscription> {
    for ch in wanted {
        let (tx, mut rx) = oneshot::channel();
        session
            .control
            .send(SubRequest::Subscribe(ch.clone(), tx))
            .await
            .ok()?;
        // The confirmation comes with the messages, after those before it;
        // a session that cannot confirm in time (the broker is cut off
        // without the connection closing) is given up and built again.
        let deadline = tokio::time::sleep(SUBSCRIBE_WAIT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                biased;
                () = &mut deadline => {
                    warn!("broker did not confirm a subscription in {SUBSCRIBE_WAIT:?}; reconnecting");
                    return None;
                }
                refused = &mut rx => {
                    refused.ok()?.ok()?;
                    break;
                }
                delivery = session.messages.recv() => {
                    if !hand_on(delivery?, &mut session.messages, node, view, answers).await {
                        return None;
                    }
                }
            }
        }
    }
    Some(session)
}

/// Hands `first` and whatever else the session has ready to the hub, the
/// publications together (one hub event, so their fan-out shares a pass),
/// noting this node's own beats; a subscription's confirmation is answered
/// once what came before it is with the hub. False when the hub is gone.
async fn hand_on(
    first: Delivery,
    messages: &mut mpsc::Receiver<Delivery>,
    node: NodeId,
    view: &ClusterView,
    answers: &Answers,
) -> bool {
    let mut inputs = Vec::new();
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(delivery) = next {
        match delivery {
            Delivery::Message(payload) => match Event::decode(&payload) {
                Some(Event::Beat(n)) if n == node => {
                    view.beats_heard.fetch_add(1, Ordering::Relaxed);
                }
                Some(Event::Call(call)) => view.calls.take_call(call),
                Some(Event::Reply(reply)) => view.calls.take_reply(reply),
                Some(Event::Forward(forward)) => view.calls.take_forward(forward),
                Some(Event::Forwarded(done)) => view.calls.take_forwarded(done),
                event => inputs.extend(event.and_then(Event::into_input)),
            },
            Delivery::Subscribed(done) => {
                if !answers.send_all(std::mem::take(&mut inputs)).await {
                    return false;
                }
                let _ = done.send(Ok(()));
            }
        }
        taken += 1;
        next = if taken < HAND_ON_BATCH {
            messages.try_recv().ok()
        } else {
            None
        };
    }
    answers.send_all(inputs).await
}

/// Waits `backoff` while the broker is away, answering subscription
/// requests meanwhile: a subscribe fails at once (its open answers
/// `UNAVAILABLE`; the hub forgets a room it could not open, so the channel
/// is not wanted), an unsubscribe is noted. False when the node is gone.
async fn wait_away(
    requests: &mut mpsc::Receiver<SubRequest>,
    wanted: &mut BTreeSet<String>,
    backoff: Duration,
) -> bool {
    let retry = tokio::time::sleep(backoff);
    tokio::pin!(retry);
    loop {
        tokio::select! {
            biased;
            () = &mut retry => return true,
            req = requests.recv() => match req {
                Some(SubRequest::Subscribe(_, done)) => {
                    let _ = done.send(Err(BrokerError::Unreachable("no session".into())));
                }
                Some(SubRequest::Unsubscribe(ch)) => {
                    wanted.remove(&ch);
                }
                None => return false,
            },
        }
    }
}
