//! The accept loop, generic over axum's [`Listener`] so the same server runs
//! on tokio TCP and on turmoil's simulated TCP: each connection is served by
//! hyper's HTTP/1 (behind a TLS handshake with `--tls-cert`) with the
//! handshake timeout as its header read timeout; on
//! shutdown it stops accepting and waits (at most the drain timeout) for the
//! connections the hub closed with 1001.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::http::peer::PeerAddr;
use crate::http::router::router;
use crate::http::state::HttpState;
use crate::hub::task::HubHandle;

pub(crate) async fn accept_loop<L>(
    mut listener: L,
    state: Arc<HttpState>,
    shutdown: CancellationToken,
    hub: HubHandle,
    tls: Option<TlsAcceptor>,
) where
    L: Listener<Addr = SocketAddr>,
{
    let app = router(state.clone());
    loop {
        let (io, addr) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        // Read for each connection: a reload changes them for the next.
        let config = state.config();
        let pong_wait = Duration::from_millis(config.core.pong_wait_ms);
        crate::os::bound_unacknowledged(&io, pong_wait);
        let service = app.clone();
        let handshake_timeout = config.handshake_timeout;
        let stopping = shutdown.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(PeerAddr(addr));
            service.clone().oneshot(req)
        });
        let tls = tls.clone();
        let metrics = state.metrics.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                return serve(io, svc, handshake_timeout, stopping).await;
            };
            // The TLS handshake counts against the handshake timeout too.
            let started = tokio::time::Instant::now();
            match tokio::time::timeout(handshake_timeout, tls.accept(io)).await {
                Ok(Ok(io)) => {
                    let left = handshake_timeout.saturating_sub(started.elapsed());
                    serve(io, svc, left, stopping).await;
                }
                Ok(Err(e)) => {
                    metrics.tls_handshake_failed();
                    debug!(%addr, "TLS handshake failed: {e}");
                }
                Err(_) => {
                    metrics.tls_handshake_failed();
                    debug!(%addr, "TLS handshake timed out");
                }
            }
        });
    }
    info!("shutting down: closing every connection with 1001");
    state.shutting_down.store(true, Ordering::Relaxed);
    state.connections.close();
    // The hub saw the same cancellation and closed every connection.
    let drained =
        tokio::time::timeout(state.config().drain_timeout, state.connections.wait()).await;
    if drained.is_err() {
        warn!(
            remaining = state.admission.sockets(),
            "drain timeout reached with connections still open"
        );
    }
    // Dropping the hub's engine closes the store (a last checkpoint).
    hub.stop().await;
}

/// Serves one connection's HTTP/1 (and its upgrade) until it ends.
async fn serve<I, S>(io: I, svc: S, handshake_timeout: Duration, stopping: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming> + Send + 'static,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The header read timeout is the handshake timeout: a client that
    // connects and never completes its upgrade request is dropped.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    // On shutdown, a kept-alive connection between requests closes,
    // and one in a response (an SSE stream, which the hub ends with
    // its close event) closes after it: a client's next request
    // must reach the server that replaces this one, not this one.
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stopping.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
