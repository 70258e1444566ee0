//! The routes: which handler answers which path.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::http::admin;
use crate::http::api::call;
use crate::http::error::json_error;
use crate::http::pages::{client_module, demo_page, demo_token, healthz, metrics, online, readyz};
use crate::http::sse;
use crate::http::state::HttpState;
use crate::http::ws::ws_handler;

pub(crate) fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/ws", get(ws_handler))
        .route("/ws/online", get(online))
        .route("/sse", get(sse::stream))
        .route("/sse/send", post(sse::send).options(sse::preflight))
        .route("/api/{method}", post(call))
        .route("/admin", get(admin::page))
        .route("/admin/api/overview", get(admin::overview))
        .route("/admin/api/rooms", get(admin::rooms))
        .route("/admin/api/user", get(admin::user))
        .route("/admin/api/disconnect", post(admin::disconnect))
        .route("/roomhub.js", get(client_module))
        .route("/", get(demo_page))
        .route("/demo/token", post(demo_token))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not found") })
        .with_state(state)
}
