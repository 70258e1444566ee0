//! The server API for app backends: `POST /api/<method>` with the
//! `--api-key` as a Bearer token and a JSON object as the body; the answer
//! is `{"result": …}` or `{"error": {"code", "message"}}` (see
//! `docs/api.md`). The methods are in [`methods`].

mod methods;
mod params;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::http::state::HttpState;

/// Commands in one `batch` at most.
const BATCH_MAX: usize = 100;

/// A refused call: its HTTP status, a code and a message naming what was
/// wrong.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: a field missing or of the wrong type; the message names it.
    pub(crate) fn bad(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_PARAMS", message)
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message)
    }

    fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// Runs one server API method for another part of the server (the admin
/// UI), as `POST /api/<method>` would.
pub(crate) async fn run_method(
    state: &HttpState,
    method: &str,
    params: Map<String, Value>,
) -> Result<Value, ApiError> {
    methods::run(state, method, params).await
}

/// `POST /api/<method>`.
pub(crate) async fn call(
    State(state): State<Arc<HttpState>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let params = match parse_body(&body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let answer = if method == "batch" {
        batch(&state, params).await
    } else if method == "reload" {
        crate::http::reload::reload(&state)
            .await
            .map(|done| json!(done))
            .map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, "INVALID_CONFIG", why))
    } else {
        methods::run(&state, &method, params).await
    };
    match answer {
        Ok(result) => axum::Json(json!({ "result": result })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The API is on only with `--api-key`; then the key must be given.
fn authorize(state: &HttpState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &state.config().api_key else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "the server API is off; start the server with --api-key",
        ));
    };
    let given = bearer(headers);
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing or wrong API key (Authorization: Bearer <key>)",
        ))
    }
}

/// The body: a JSON object; an empty body counts as `{}`.
fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_FORMAT",
            "the body must be a JSON object",
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_FORMAT",
            "the body is not valid JSON",
        )),
    }
}

/// `batch {commands: [{method, params}]}`: each command run in order; the
/// answers in the same order, each `{"result"}` or `{"error"}`. A command
/// that fails does not stop the others.
async fn batch(state: &HttpState, mut params: Map<String, Value>) -> Result<Value, ApiError> {
    let Some(Value::Array(commands)) = params.remove("commands") else {
        return Err(ApiError::bad(
            "commands must be an array of {method, params}",
        ));
    };
    if commands.len() > BATCH_MAX {
        return Err(ApiError::bad(format!(
            "commands: at most {BATCH_MAX} in one batch"
        )));
    }
    let mut replies = Vec::with_capacity(commands.len());
    for (i, command) in commands.into_iter().enumerate() {
        let reply = match command {
            Value::Object(mut c) => match (c.remove("method"), c.remove("params")) {
                (Some(Value::String(m)), params) if m != "batch" => {
                    let params = match params {
                        None | Some(Value::Null) => Ok(Map::new()),
                        Some(Value::Object(p)) => Ok(p),
                        Some(_) => Err(ApiError::bad(format!(
                            "commands[{i}].params must be an object"
                        ))),
                    };
                    match params {
                        Ok(p) => methods::run(state, &m, p).await,
                        Err(e) => Err(e),
                    }
                }
                (Some(Value::String(_)), _) => {
                    Err(ApiError::bad(format!("commands[{i}]: a batch cannot nest")))
                }
                _ => Err(ApiError::bad(format!(
                    "commands[{i}].method must be a string"
                ))),
            },
            _ => Err(ApiError::bad(format!("commands[{i}] must be an object"))),
        };
        replies.push(match reply {
            Ok(result) => json!({ "result": result }),
            Err(e) => e.body(),
        });
    }
    Ok(json!({ "replies": replies }))
}

/// The `Authorization: Bearer` credential, if the request has one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
