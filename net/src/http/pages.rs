//! The small routes: the demo page and its development login, the client
//! module, the online count, metrics and the health check.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::http::error::json_error;
use crate::http::state::HttpState;

/// The demo chat page (`net/assets/demo.html`), embedded in the binary.
pub const DEMO_HTML: &str = include_str!("../../assets/demo.html");

pub(crate) async fn demo_page(State(state): State<Arc<HttpState>>) -> Response {
    if !state.config().demo {
        return json_error(StatusCode::NOT_FOUND, "not found");
    }
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DEMO_HTML,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct DemoLogin {
    name: String,
}

/// Development mode: a token for a name, so the demo page can log in. The
/// user id is the name, lowercased; valid 24 hours.
pub(crate) async fn demo_token(
    State(state): State<Arc<HttpState>>,
    body: axum::body::Bytes,
) -> Response {
    let Some(secret) = &state.config().demo_token_secret else {
        return json_error(StatusCode::NOT_FOUND, "not found");
    };
    let login: DemoLogin = match serde_json::from_slice(&body) {
        Ok(l) => l,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
    };
    let name = login.name.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "name must be 1..=64 printable bytes",
        );
    }
    let spec = crate::dev::TokenSpec {
        user: name.to_lowercase(),
        name: Some(name.to_string()),
        rooms: Vec::new(),
    };
    let token = crate::dev::mint_token(
        secret,
        &spec,
        std::time::Duration::from_secs(24 * 3600),
        state.clock.unix_seconds(),
    );
    axum::Json(json!({ "token": token })).into_response()
}

/// The JavaScript client (`net/assets/roomhub.js`), embedded in the binary.
pub const CLIENT_JS: &str = include_str!("../../assets/roomhub.js");

pub(crate) async fn client_module() -> Response {
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/javascript; charset=utf-8",
            ),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        CLIENT_JS,
    )
        .into_response()
}

/// Connections online: this node's, plus (in cluster mode) every other live
/// node's as of its last heartbeat.
pub(crate) async fn online(State(state): State<Arc<HttpState>>) -> Response {
    let local = state.conn.online.get();
    let remote = state
        .cluster
        .as_ref()
        .map_or(0, |c| c.remote_online.load(Ordering::Relaxed));
    axum::Json(json!({ "online": local + remote })).into_response()
}

pub(crate) async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    state.metrics.store_state(state.store_health.stored_bytes());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /healthz`: liveness. The process serves HTTP and its hub runs
/// (`ok`; `draining` during a graceful shutdown, still 200): restart it only
/// when this stops answering.
pub(crate) async fn healthz(State(state): State<Arc<HttpState>>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        axum::Json(json!({ "status": "draining" })).into_response()
    } else {
        axum::Json(json!({ "status": "ok" })).into_response()
    }
}

/// `GET /readyz`: readiness. 503 from the moment a graceful shutdown
/// begins, while a cluster node's broker is unreachable, until the
/// identity provider's keys (`--jwt-jwks-url`) are first fetched, and
/// while the store cannot write; a load balancer sends new clients only on 200.
pub(crate) async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if state.cluster.as_ref().is_some_and(|c| !c.is_healthy()) {
        // Joins and sends would get UNAVAILABLE: keep load balancers away.
        json_error(StatusCode::SERVICE_UNAVAILABLE, "broker unreachable")
    } else if !state.auth.ready() {
        // No token could verify: the provider's keys never arrived.
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the JWKS has not been fetched yet",
        )
    } else if let Some(why) = state.store_health.failing() {
        // Messages get UNAVAILABLE (reads and recovery still work).
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store cannot write: {why}"),
        )
    } else {
        axum::Json(json!({ "status": "ok" })).into_response()
    }
}
