//! The server API for app backends: `POST /api/publish` with the
//! `--api-key` as a Bearer token.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use roomhub_core::{ParseLimits, PublishOutcome, parse_publish};
use serde_json::json;

use crate::http::error::json_error;
use crate::http::state::HttpState;

/// How long a publish waits for its message to be stored.
const PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `POST /api/publish`: a backend puts a message into a room. It takes the
/// same path as a member's message: sequenced, stored, delivered to every
/// member, recoverable. Answers once it is stored.
pub(crate) async fn publish(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(key) = &state.config.api_key else {
        return json_error(StatusCode::NOT_FOUND, "not found");
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
        return json_error(StatusCode::UNAUTHORIZED, "missing or wrong API key");
    }
    // The core's rules for a member's send_message apply (limits, codes).
    let limits = ParseLimits::from(&state.config.core);
    let publish = match parse_publish(&body, &limits) {
        Ok(p) => p,
        Err(e) => {
            let code = e.code.as_str();
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "error": e.message, "code": code })),
            )
                .into_response();
        }
    };
    let Ok(done) = state.conn.inbox.publish(publish).await else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    match tokio::time::timeout(PUBLISH_WAIT, done).await {
        Ok(Ok(PublishOutcome::Stored {
            room,
            message_id,
            offset,
        })) => axum::Json(json!({
            "room": room.as_str(),
            "message_id": &*message_id,
            "offset": offset,
        }))
        .into_response(),
        _ => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE: the message could not be stored; retry",
        ),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
