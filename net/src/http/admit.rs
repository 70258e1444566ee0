//! Admission of a new connection, the same for a WebSocket upgrade and an
//! SSE stream: shutdown, the client address's limits, the origin, the
//! token, the app's connect hook, then the connection slots.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::http::header::ORIGIN;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse as _, Response};
use roomhub_core::Identity;
use tracing::{info, warn};

use crate::auth::TokenSource;
use crate::hooks::Verdict;
use crate::http::admission::{Slot, authenticate, origin_allowed};
use crate::http::error::json_error;
use crate::http::per_ip::IpSlot;
use crate::http::state::HttpState;

/// An admitted connection: who it is, where its token was, and the slots
/// it holds until its socket is gone.
pub(crate) struct Admitted {
    pub(crate) identity: Identity,
    pub(crate) source: TokenSource,
    pub(crate) slot: Slot,
    pub(crate) ip_slot: IpSlot,
}

/// Admits a connection, or answers why not.
pub(crate) async fn admit(
    state: &HttpState,
    addr: SocketAddr,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Admitted, Response> {
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server shutting down",
        ));
    }
    // Before anything costly: a flood from one address stops here.
    let ip_slot = match state.admission.per_ip.admit(addr.ip()) {
        Ok(slot) => slot,
        Err((status, why)) => {
            state.metrics.refused("per_ip");
            warn!(%addr, why, "connection refused");
            return Err(json_error(status, why));
        }
    };
    if !origin_allowed(&state.config().allowed_origins, headers) {
        warn!(%addr, origin = ?headers.get(ORIGIN), "origin refused");
        return Err(json_error(StatusCode::FORBIDDEN, "origin not allowed"));
    }
    let (identity, source) = match authenticate(&state.auth, state.clock, headers, uri).await {
        Ok(found) => found,
        Err(e) => {
            state.metrics.auth_failure(e.reason());
            warn!(%addr, reason = e.reason(), "authentication failed");
            return Err(json_error(StatusCode::UNAUTHORIZED, e.message()));
        }
    };
    // The app's own say, when it has a connect hook.
    let identity = match state.hooks.connect(identity, &addr.to_string()).await {
        Verdict::Allow(identity) => identity,
        Verdict::Deny { code, message } => {
            info!(%addr, code, "the connect hook refused the connection");
            let body = axum::Json(serde_json::json!({ "error": message, "code": code }));
            return Err((StatusCode::FORBIDDEN, body).into_response());
        }
        Verdict::Unavailable(why) => {
            warn!(%addr, "connect hook failed: {why}");
            let body = axum::Json(serde_json::json!({
                "error": format!("UNAVAILABLE: {why}"),
                "code": "UNAVAILABLE",
            }));
            return Err((StatusCode::SERVICE_UNAVAILABLE, body).into_response());
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
            return Err(json_error(status, why));
        }
    };
    Ok(Admitted {
        identity,
        source,
        slot,
        ip_slot,
    })
}
