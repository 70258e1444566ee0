//! One connection's life, from the upgraded stream to its end: it registers
//! with the hub, reads until either side ends it, lets the writer finish,
//! and makes sure the hub hears of the end.

use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::Upgraded;
use roomhub_core::{ConnId, Identity, Input};
use tokio_tungstenite::WebSocketStream;
use tracing::info;
use tungstenite::protocol::{Role, WebSocketConfig};

use crate::conn::context::ConnContext;
use crate::conn::io::{ReadOnly, halves};
use crate::conn::online::Live;
use crate::conn::outbox::Outbox;
use crate::conn::reader::{ReadEnd, read_loop};

/// After the server sends a close frame, how long the peer has to answer.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Runs a connection from the upgrade to the end.
pub(crate) async fn run(
    upgraded: Upgraded,
    config: WebSocketConfig,
    conn: ConnId,
    identity: Identity,
    cx: Arc<ConnContext>,
) {
    let user = identity.user.id.clone();
    let (read_half, write_half) = halves(upgraded);
    let stream =
        WebSocketStream::from_raw_socket(ReadOnly(read_half), Role::Server, Some(config)).await;
    let live = Arc::new(Live::new(cx.online.clone(), cx.metrics.clone()));
    let outbox = Outbox::new(
        write_half,
        Some(live.clone()),
        cx.metrics.clone(),
        cx.send_queue_bytes,
    );
    if !cx.inbox.open(conn, identity, outbox.clone()).await {
        return;
    }
    let writer = outbox.clone().write_loop(cx.write_wait);
    let read = read_loop(stream, conn, &cx.inbox, &cx.metrics, &outbox);
    tokio::pin!(read, writer);
    // `biased`: tokio's branch choice is random otherwise, and simulations
    // must replay exactly from a seed.
    let reason = tokio::select! {
        biased;
        end = &mut read => {
            live.end();
            // The peer went away or broke the protocol: tell the hub, answer
            // a close or a protocol error with a close frame, and let the
            // writer finish what is queued.
            cx.inbox.report(Input::Disconnected { conn }).await;
            match &end {
                ReadEnd::Violation(code, why) => outbox.close_now(*code, why),
                ReadEnd::PeerClosed(code) => outbox.close_reply(*code),
                _ => outbox.release(),
            }
            let _ = tokio::time::timeout(cx.write_wait, &mut writer).await;
            end.describe()
        }
        ended = &mut writer => {
            // The server closed it (or a write failed): give the peer a
            // moment to answer the close, then make sure the hub knows.
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut read).await;
            cx.inbox.report(Input::Disconnected { conn }).await;
            ended.describe()
        }
    };
    live.end();
    info!(%conn, user = %user, reason = %reason, "disconnected");
}
