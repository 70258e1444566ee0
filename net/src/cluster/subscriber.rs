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

use crate::cluster::broker::{Broker, BrokerError, SubRequest, Subscription};
use crate::cluster::keys::channel;
use crate::cluster::view::{ClusterTiming, ClusterView};
use crate::cluster::wire::Event;
use crate::hub::inbox::Answers;

/// Keeps one subscription session up, with every channel the node needs,
/// and turns what is published into hub inputs. A lost session is
/// re-established with backoff; the hub is then told to resync its rooms
/// and the worker re-announces this node's presence.
pub(crate) async fn subscriber<B: Broker>(
    broker: Arc<B>,
    node: NodeId,
    timing: ClusterTiming,
    mut requests: mpsc::Receiver<SubRequest>,
    answers: Answers,
    view: Arc<ClusterView>,
    reannounce: mpsc::Sender<()>,
) {
    let mut wanted: BTreeSet<String> = BTreeSet::from([channel::NODES.to_string()]);
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    loop {
        let session = match broker.subscribe().await {
            Ok(session) => subscribe_all(session, &wanted).await,
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
            // A full queue already holds a re-announcement to come.
            let _ = reannounce.try_send(());
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
                    Some(payload) => {
                        let event = Event::decode(&payload);
                        if event == Some(Event::Beat(node)) {
                            view.beats_heard.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Some(input) = event.and_then(into_input)
                            && !answers.send(input).await
                        {
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
/// refused or the session died on the way.
async fn subscribe_all(session: Subscription, wanted: &BTreeSet<String>) -> Option<Subscription> {
    for ch in wanted {
        let (tx, rx) = oneshot::channel();
        session
            .control
            .send(SubRequest::Subscribe(ch.clone(), tx))
            .await
            .ok()?;
        rx.await.ok()?.ok()?;
    }
    Some(session)
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

fn into_input(event: Event) -> Option<Input> {
    Some(match event {
        Event::Message(m) => Input::Sequenced(m),
        Event::Presence(p) => Input::RemotePresence {
            room: p.room,
            node: p.node,
            user: p.user,
            present: p.present,
        },
        Event::NodeGone(node) => Input::NodeGone { node },
        Event::Direct(d) => Input::RemoteDirect(Box::new(d)),
        Event::Beat(_) => return None,
    })
}
