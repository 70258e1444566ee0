//! One connection's life, from the upgraded stream to its end: it registers
//! with the hub, reads until either side ends it, lets the writer finish,
//! and makes sure the hub hears of the end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::Upgraded;
use roomhub_core::{ConnId, Identity, Input};
use tracing::info;

use crate::conn::context::ConnContext;
use crate::conn::io::halves;
use crate::conn::online::Live;
use crate::conn::outbox::Outbox;
use crate::conn::outbox::write::WriterEnd;
use crate::conn::reader::{ReadEnd, read_loop};

/// After the server sends a close frame, how long the peer has to answer.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Runs a connection from the upgrade to the end.
pub(crate) async fn run(
    upgraded: Upgraded,
    max_message: usize,
    conn: ConnId,
    identity: Identity,
    cx: Arc<ConnContext>,
) {
    let user = identity.user.id.clone();
    let (read_half, write_half) = halves(upgraded);
    let live = Arc::new(Live::new(cx.online.clone(), cx.metrics.clone()));
    let outbox = Outbox::new(
        write_half,
        Some(live.clone()),
        cx.metrics.clone(),
        cx.send_queue_bytes(),
    );
    if !cx.inbox.open(conn, identity, outbox.clone()).done().await {
        return;
    }
    let writer = outbox.clone().write_loop(cx.write_wait());
    let read = read_loop(
        read_half,
        max_message,
        conn,
        &cx.inbox,
        &cx.metrics,
        &outbox,
    );
    tokio::pin!(read, writer);
    // What follows either end runs in a boxed future, so that the state of
    // an idle connection's task holds the reader and the writer and nothing
    // of its end. `biased`: tokio's branch choice is random otherwise, and
    // simulations must replay exactly from a seed.
    let reason = tokio::select! {
        biased;
        end = &mut read => {
            live.end();
            Box::pin(after_reading(end, writer.as_mut(), conn, &cx, &outbox)).await
        }
        end = &mut writer => Box::pin(after_writing(end, read.as_mut(), conn, &cx)).await,
    };
    live.end();
    info!(%conn, user = %user, reason = %reason, "disconnected");
}

/// The peer went away or broke the protocol: tell the hub, answer a close
/// or a protocol error with a close frame, and let the writer finish what
/// is queued.
async fn after_reading(
    end: ReadEnd,
    writer: Pin<&mut impl Future<Output = WriterEnd>>,
    conn: ConnId,
    cx: &ConnContext,
    outbox: &Outbox,
) -> String {
    cx.inbox.report(Input::Disconnected { conn }).done().await;
    match &end {
        ReadEnd::Violation(code, why) => outbox.close_now(*code, *why),
        ReadEnd::PeerClosed(code) => outbox.close_reply(*code),
        _ => outbox.release(),
    }
    let _ = tokio::time::timeout(cx.write_wait(), writer).await;
    end.describe()
}

/// The server closed it (or a write failed): give the peer a moment to
/// answer the close, then make sure the hub knows.
async fn after_writing(
    end: WriterEnd,
    read: Pin<&mut impl Future<Output = ReadEnd>>,
    conn: ConnId,
    cx: &ConnContext,
) -> String {
    let _ = tokio::time::timeout(CLOSE_GRACE, read).await;
    cx.inbox.report(Input::Disconnected { conn }).done().await;
    end.describe()
}
