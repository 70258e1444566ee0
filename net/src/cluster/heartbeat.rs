//! The node's heartbeat: keeps it alive in the broker, learns the other
//! nodes' online counts, and notices a subscription that died silently (its
//! own beats stop arriving) or a liveness that ran out.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use roomhub_core::NodeId;
use tracing::warn;

use crate::cluster::broker::{Broker, Heartbeat};
use crate::cluster::view::{ClusterTiming, ClusterView};
use crate::conn::online::Online;

pub(crate) async fn heartbeat<B: Broker>(
    broker: Arc<B>,
    node: NodeId,
    timing: ClusterTiming,
    local_online: Online,
    view: Arc<ClusterView>,
) {
    let mut first = true;
    let (mut heard, mut silent_rounds) = (0u64, 0u32);
    let mut every = tokio::time::interval(timing.heartbeat_every());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let online = local_online.get() as u64;
        match broker.heartbeat(node, online).await {
            Ok(Heartbeat { live, was_gone }) => {
                if was_gone && !first {
                    // Its users were dropped by the others, and whatever was
                    // published meanwhile may be lost: start over (the new
                    // session announces this node's presence again).
                    warn!("this node's liveness had run out; reconnecting");
                    view.broker_failed();
                }
                first = false;
                // Each beat is published back to this node; silence on a
                // healthy session means the subscription died unnoticed.
                // A sharded broker publishes one per shard, so one silent
                // shard session is noticed too.
                let now_heard = view.beats_heard.load(Ordering::Relaxed);
                let expected = broker.beats_per_heartbeat();
                if now_heard.saturating_sub(heard) < expected && view.is_healthy() {
                    silent_rounds += 1;
                } else {
                    silent_rounds = 0;
                }
                heard = now_heard;
                if silent_rounds >= timing.silent_beats_max() {
                    warn!("not hearing this node's own beats; restarting the broker session");
                    silent_rounds = 0;
                    view.broker_failed();
                }
                view.calls.live_nodes.store(live.len(), Ordering::Relaxed);
                let others: u64 = live
                    .iter()
                    .filter(|(n, _)| *n != node)
                    .map(|(_, c)| c)
                    .sum();
                view.remote_online.store(
                    usize::try_from(others).unwrap_or(usize::MAX),
                    Ordering::Relaxed,
                );
            }
            Err(e) => {
                // A partition can leave the subscription connection open
                // but dead; treat the broker as gone until a new session
                // proves otherwise.
                warn!("cluster heartbeat failed: {e}; restarting the broker session");
                view.broker_failed();
            }
        }
    }
}
