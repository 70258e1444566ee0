//! `GET /ws`: admission (shutdown, origin, token, slots), then the `101`
//! answer, and the connection task once the upgrade completes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Extension, State};
use axum::http::header::ORIGIN;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use roomhub_core::ConnId;
use tracing::{info, warn};

use crate::auth::{SUBPROTOCOL, TokenSource};
use crate::conn::lifecycle;
use crate::hooks::Verdict;
use crate::http::admission::{authenticate, origin_allowed};
use crate::http::error::json_error;
use crate::http::peer::PeerAddr;
use crate::http::state::HttpState;
use crate::http::upgrade::{NotUpgrade, WsUpgrade};
use axum::response::IntoResponse as _;

pub(crate) async fn ws_handler(
    State(state): State<Arc<HttpState>>,
    Extension(PeerAddr(addr)): Extension<PeerAddr>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WsUpgrade, NotUpgrade>,
) -> Response {
    let ws = match upgrade {
        Ok(ws) => ws,
        Err(NotUpgrade(why)) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("not a WebSocket upgrade request: {why}"),
            );
        }
    };
    if state.shutting_down.load(Ordering::Relaxed) {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
    }
    // Before anything costly: a flood from one address stops here.
    let ip_slot = match state.admission.per_ip.admit(addr.ip()) {
        Ok(slot) => slot,
        Err((status, why)) => {
            state.metrics.refused("per_ip");
            warn!(%addr, why, "connection refused");
            return json_error(status, why);
        }
    };
    if !origin_allowed(&state.config.allowed_origins, &headers) {
        warn!(%addr, origin = ?headers.get(ORIGIN), "origin refused");
        return json_error(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let (identity, source) = match authenticate(&state.auth, state.clock, &headers, &uri) {
        Ok(found) => found,
        Err(e) => {
            state.metrics.auth_failure(e.reason());
            warn!(%addr, reason = e.reason(), "authentication failed");
            return json_error(StatusCode::UNAUTHORIZED, e.message());
        }
    };
    // The app's own say, when it has a connect hook.
    let identity = match state.hooks.connect(identity, &addr.to_string()).await {
        Verdict::Allow(identity) => identity,
        Verdict::Deny { code, message } => {
            info!(%addr, code, "the connect hook refused the connection");
            let body = axum::Json(serde_json::json!({ "error": message, "code": code }));
            return (StatusCode::FORBIDDEN, body).into_response();
        }
        Verdict::Unavailable(why) => {
            warn!(%addr, "connect hook failed: {why}");
            let body = axum::Json(serde_json::json!({
                "error": format!("UNAVAILABLE: {why}"),
                "code": "UNAVAILABLE",
            }));
            return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        }
    };
    let slot = match state.admission.reserve(&identity.user.id) {
        Ok(slot) => slot,
        Err((status, why)) => {
            let limit = if status == StatusCode::TOO_MANY_REQUESTS {
                "per_user"
            } else {
                "server_full"
            };
            state.metrics.refused(limit);
            warn!(%addr, user = %identity.user.id, why, "connection refused");
            return json_error(status, why);
        }
    };
    let conn = ConnId(state.next_conn.fetch_add(1, Ordering::Relaxed));
    // Larger frames and messages close the connection with 1009.
    let max_message = state.config.core.max_message_bytes;
    // Select a subprotocol the client offered, or browsers drop the socket.
    let protocol = match source {
        TokenSource::Subprotocol {
            offered_ours: false,
            entry,
        } => ws.select(&entry),
        _ => ws.select(SUBPROTOCOL),
    };
    info!(%conn, %addr, user = %identity.user.id, "connected");
    let response = ws.response(protocol);
    let on_upgrade = ws.on_upgrade;
    let cx = state.conn.clone();
    tokio::spawn(state.connections.track_future(async move {
        match on_upgrade.await {
            Ok(upgraded) => lifecycle::run(upgraded, max_message, conn, identity, cx).await,
            Err(e) => warn!(%conn, "upgrade failed: {e}"),
        }
        drop((slot, ip_slot));
    }));
    response
}
