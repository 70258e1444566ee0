//! The admin UI at `/admin` (on with `--admin-password`, or with the API
//! key): one static page embedded in the binary, and the JSON it reads,
//! each answer built from the server API's methods (so a cluster's nodes
//! are counted as `/api/info` counts them). The page holds the password in
//! `sessionStorage` and sends it as `Authorization: Bearer`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::http::api::{ApiError, bearer, constant_time_eq, run_method};
use crate::http::error::json_error;
use crate::http::series::Sample;
use crate::http::state::HttpState;

const ADMIN_HTML: &str = include_str!("../../assets/admin.html");
/// The most rooms one search answers with.
const MAX_ROOMS: usize = 200;
/// The close code of the disconnect button: "do not reconnect"
/// (`roomhub.js` stops), as the API's default.
const DISCONNECT_CODE: u64 = 4100;

/// Whether the admin UI is on.
fn enabled(state: &HttpState) -> bool {
    state.config().admin_password.is_some() || state.config().api_key.is_some()
}

/// Samples the counters once a second while the server runs (started only
/// when the admin UI is on).
pub(crate) async fn sample(state: Arc<HttpState>) {
    if !enabled(&state) {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last = state.metrics.totals();
    loop {
        tick.tick().await;
        if state
            .shutting_down
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let now = state.metrics.totals();
        let remote = state.cluster.as_ref().map_or(0, |c| {
            c.remote_online.load(std::sync::atomic::Ordering::Relaxed)
        });
        let sample = Sample {
            t: state.clock.now().as_millis(),
            received: now.0.saturating_sub(last.0),
            delivered: now.1.saturating_sub(last.1),
            connections: state.conn.online.get() + remote,
        };
        last = now;
        state.admin_series.push(sample);
    }
}

/// `GET /admin`: the page (404 when the admin UI is off).
pub(crate) async fn page(State(state): State<Arc<HttpState>>) -> Response {
    if !enabled(&state) {
        return json_error(StatusCode::NOT_FOUND, "not found");
    }
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        ADMIN_HTML,
    )
        .into_response()
}

/// Why the request may not see the admin endpoints, if it may not.
fn refusal(state: &HttpState, headers: &HeaderMap) -> Option<Response> {
    if !enabled(state) {
        return Some(json_error(StatusCode::NOT_FOUND, "not found"));
    }
    let given = bearer(headers).unwrap_or("");
    let opens = [&state.config().admin_password, &state.config().api_key]
        .into_iter()
        .flatten()
        .any(|secret| constant_time_eq(given.as_bytes(), secret.as_bytes()));
    (!opens).then(|| json_error(StatusCode::UNAUTHORIZED, "wrong or missing admin password"))
}

fn answer(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /admin/api/overview`: the nodes, connections, users and rooms now,
/// the chart's samples, and the limits.
pub(crate) async fn overview(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&state, &headers) {
        return refused;
    }
    let info = match run_method(&state, "info", Map::new()).await {
        Ok(info) => info,
        Err(e) => return e.into_response(),
    };
    let c = state.config();
    let limits = json!({
        "max_connections": c.max_connections,
        "max_connections_per_user": c.max_connections_per_user,
        "max_message_bytes": c.core.max_message_bytes,
        "max_content_bytes": c.core.max_content_bytes,
        "max_rooms_per_connection": c.core.max_rooms_per_connection,
        "rate_limit_per_second": c.core.rate_limit_per_second,
        "rate_limit_burst": c.core.rate_limit_burst,
        "send_queue_bytes": c.send_queue_bytes,
        "history_max_messages": c.core.history_max_messages,
        "history_max_age_ms": c.core.history_max_age_ms,
        "history_max_bytes": c.core.history_max_bytes,
        "ping_interval_ms": c.core.ping_interval_ms,
        "pong_wait_ms": c.core.pong_wait_ms,
        "allowed_origins": c.allowed_origins,
        "cluster": state.cluster.is_some(),
    });
    axum::Json(json!({
        "info": info,
        "series": state.admin_series.list(),
        "limits": limits,
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
pub(crate) struct RoomSearch {
    #[serde(default)]
    q: String,
}

/// `GET /admin/api/rooms?q=`: rooms whose name contains `q`, busiest
/// first, at most [`MAX_ROOMS`].
pub(crate) async fn rooms(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Query(search): Query<RoomSearch>,
) -> Response {
    if let Some(refused) = refusal(&state, &headers) {
        return refused;
    }
    let all = match run_method(&state, "rooms", Map::new()).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let needle = search.q.to_lowercase();
    let mut found: Vec<Value> = all["rooms"]
        .as_array()
        .map(|rooms| {
            rooms
                .iter()
                .filter(|r| {
                    r["room"]
                        .as_str()
                        .is_some_and(|name| name.to_lowercase().contains(&needle))
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let total = found.len();
    found.sort_by_key(|r| std::cmp::Reverse(r["connections"].as_u64().unwrap_or(0)));
    found.truncate(MAX_ROOMS);
    axum::Json(json!({"rooms": found, "total": total})).into_response()
}

#[derive(serde::Deserialize)]
pub(crate) struct UserQuery {
    id: String,
}

/// `GET /admin/api/user?id=`: the user's connections, with their rooms.
pub(crate) async fn user(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Query(query): Query<UserQuery>,
) -> Response {
    if let Some(refused) = refusal(&state, &headers) {
        return refused;
    }
    let mut params = Map::new();
    params.insert("user".into(), Value::from(query.id));
    answer(run_method(&state, "user", params).await)
}

#[derive(serde::Deserialize)]
pub(crate) struct Disconnect {
    user: String,
}

/// `POST /admin/api/disconnect {user}`: ends every connection of the user
/// (close 4100, through the server API's `disconnect`).
pub(crate) async fn disconnect(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Disconnect>,
) -> Response {
    if let Some(refused) = refusal(&state, &headers) {
        return refused;
    }
    let mut params = Map::new();
    params.insert("user".into(), Value::from(body.user));
    params.insert("code".into(), Value::from(DISCONNECT_CODE));
    params.insert(
        "reason".into(),
        Value::from("disconnected by an administrator"),
    );
    answer(run_method(&state, "disconnect", params).await)
}
