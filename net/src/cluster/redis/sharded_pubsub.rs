//! A subscription session on a Redis Cluster master: sharded pub/sub
//! (`SSUBSCRIBE`) over a RESP3 connection, whose publications arrive as
//! push messages. redis-rs's `PubSub` has no sharded commands outside its
//! cluster client (which reconnects and resubscribes behind our back, so a
//! gap could pass unnoticed); on a plain RESP3 connection a confirmation
//! is an ordinary reply, every push reaches us in order, and a lost
//! connection says so (a `Disconnection` push), ending the session.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use redis::aio::{AsyncPushSender, SendError};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT, RedisBroker, wire_channel};
use crate::cluster::broker::{
    BrokerError, Delivery, SUBSCRIPTION_CONTROL_REQUESTS, SUBSCRIPTION_QUEUE_EVENTS, SubRequest,
    Subscription,
};

/// Pushes into a bounded queue; when it is full the session is over (the
/// node fell behind: it resyncs every room, as when Redis drops a slow
/// subscriber), never a silently dropped publication.
struct Pushes {
    queue: mpsc::Sender<PushInfo>,
    overflowed: Arc<AtomicBool>,
}

impl AsyncPushSender for Pushes {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        self.queue.try_send(info).map_err(|_| {
            self.overflowed.store(true, Ordering::Relaxed);
            SendError
        })
    }
}

/// What one push means to the session: a publication to hand on, the end
/// of the connection, or nothing (a subscription's confirmation).
fn read(push: PushInfo) -> Result<Option<Bytes>, ()> {
    match push.kind {
        PushKind::SMessage | PushKind::Message => match push.data.get(1) {
            Some(Value::BulkString(payload)) => Ok(Some(Bytes::copy_from_slice(payload))),
            _ => Err(()),
        },
        PushKind::Disconnection => Err(()),
        _ => Ok(None),
    }
}

pub(super) async fn subscribe(broker: &RedisBroker) -> Result<Subscription, BrokerError> {
    let (queue, mut pushes) = mpsc::channel(SUBSCRIPTION_QUEUE_EVENTS);
    let overflowed = Arc::new(AtomicBool::new(false));
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_push_sender(Pushes {
            queue,
            overflowed: overflowed.clone(),
        });
    let mut conn = tokio::time::timeout(
        CONNECT_TIMEOUT * 2,
        broker
            .resp3
            .get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|_| BrokerError::TimedOut)??;
    let node_keys = broker.node_keys.clone();
    let (control, mut requests) = mpsc::channel::<SubRequest>(SUBSCRIPTION_CONTROL_REQUESTS);
    let (deliver, messages) = mpsc::channel::<Delivery>(SUBSCRIPTION_QUEUE_EVENTS);
    tokio::spawn(async move {
        // Hands on one push; false when the session is over.
        let hand_on = async |push: PushInfo| match read(push) {
            Ok(Some(payload)) => deliver.send(Delivery::Message(payload)).await.is_ok(),
            Ok(None) => true,
            Err(()) => false,
        };
        loop {
            if overflowed.load(Ordering::Relaxed) {
                return;
            }
            tokio::select! {
                biased;
                req = requests.recv() => match req {
                    Some(SubRequest::Subscribe(ch, done)) => {
                        let ch = wire_channel(ch, &node_keys);
                        let confirmed: Result<Value, _> =
                            redis::cmd("SSUBSCRIBE").arg(&ch).query_async(&mut conn).await;
                        if let Err(e) = confirmed {
                            let _ = done.send(Err(BrokerError::from(e)));
                            return;
                        }
                        // Everything pushed before the confirmation is
                        // queued by now: hand it on first.
                        while let Ok(push) = pushes.try_recv() {
                            if !hand_on(push).await {
                                return;
                            }
                        }
                        if deliver.send(Delivery::Subscribed(done)).await.is_err() {
                            return;
                        }
                    }
                    Some(SubRequest::Unsubscribe(ch)) => {
                        let ch = wire_channel(ch, &node_keys);
                        let done: Result<Value, _> =
                            redis::cmd("SUNSUBSCRIBE").arg(&ch).query_async(&mut conn).await;
                        if done.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
                push = pushes.recv() => match push {
                    Some(push) => {
                        if !hand_on(push).await {
                            return;
                        }
                    }
                    None => return,
                },
            }
        }
    });
    Ok(Subscription { control, messages })
}
