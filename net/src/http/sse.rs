//! The SSE fallback's endpoints. `GET /sse` is admitted like a WebSocket
//! upgrade and streams `text/event-stream`: a `session` event first, then
//! every server message as one event ([`crate::conn::outbox::sse`]).
//! `POST /sse/send?session=…` carries one request (the JSON a WebSocket
//! client would send as a text frame); its answers come on the stream. A
//! request for a session held by another cluster node is forwarded to it
//! over the broker and answered once that node has it, so requests keep
//! their order without sticky sessions.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ORIGIN, VARY,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::Stream;
use roomhub_core::ConnId;
use tokio::sync::oneshot;
use tokio_util::io::ReaderStream;
use tracing::{info, warn};

use crate::conn::outbox::sse::Position;
use crate::conn::sse::{Delivered, Posted, Sessions, run};
use crate::http::admission::origin_allowed;
use crate::http::admit::{Admitted, admit};
use crate::http::error::json_error;
use crate::http::peer::PeerAddr;
use crate::http::state::HttpState;

/// Bytes the pipe between the outbox and the response body holds; past
/// it, the outbox's backlog (bounded by the send queue) takes over.
const PIPE_BYTES: usize = 16 * 1024;
/// What the response body takes from the pipe at a time (most events are
/// a few hundred bytes; a larger backlog comes in several reads). Held per
/// idle stream, so kept small.
const EVENT_READ_BYTES: usize = 1024;
/// The most rooms a stream's `rooms` query may name.
const MAX_QUERY_ROOMS: usize = 64;

/// `GET /sse`: admission, then the event stream.
pub(crate) async fn stream(
    State(state): State<Arc<HttpState>>,
    Extension(PeerAddr(addr)): Extension<PeerAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let Admitted {
        identity,
        slot,
        ip_slot,
        ..
    } = match admit(&state, addr, &headers, &uri).await {
        Ok(admitted) => admitted,
        Err(refused) => return with_cors(&state, &headers, refused),
    };
    let joins = match joins(&uri, &headers) {
        Ok(joins) => joins,
        Err(why) => {
            return with_cors(&state, &headers, json_error(StatusCode::BAD_REQUEST, why));
        }
    };
    let conn = ConnId(state.next_conn.fetch_add(1, Ordering::Relaxed));
    let (outbox_end, body_end) = tokio::io::duplex(PIPE_BYTES);
    let opened = state.sessions.open(&state.conn, conn, Box::new(outbox_end));
    info!(%conn, %addr, user = %identity.user.id, session = %opened.session, "connected (SSE)");
    let (gone_tx, gone) = oneshot::channel();
    let body = EventStream {
        events: ReaderStream::with_capacity(body_end, EVENT_READ_BYTES),
        _gone: gone_tx,
    };
    let cx = state.conn.clone();
    let sessions = state.sessions.clone();
    tokio::spawn(state.connections.track_future(async move {
        run(sessions, opened, conn, identity, joins, cx, gone).await;
        drop((slot, ip_slot));
    }));
    let mut response = Response::new(Body::from_stream(body));
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    // Proxies that buffer responses (nginx) would hold the events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    with_cors(&state, &headers, response)
}

/// The `join_room` requests a stream starts with: one per room of the
/// `rooms` query (comma-separated); the room a `Last-Event-ID` names is
/// rejoined from that position.
fn joins(uri: &Uri, headers: &HeaderMap) -> Result<Vec<String>, &'static str> {
    let rooms: Vec<String> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "rooms")
        .flat_map(|(_, v)| {
            v.split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    if rooms.len() > MAX_QUERY_ROOMS {
        return Err("too many rooms in the query");
    }
    let last = headers
        .get("last-event-id")
        .and_then(|v| Position::parse(v.as_bytes()));
    Ok(rooms
        .into_iter()
        .map(|room| {
            let since = last.as_ref().filter(|p| p.room == room);
            let mut payload = serde_json::json!({ "room_id": room });
            if let Some(p) = since {
                payload["since"] = serde_json::json!({ "epoch": p.epoch, "offset": p.offset });
            }
            serde_json::json!({ "type": "join_room", "payload": payload }).to_string()
        })
        .collect())
}

/// The response body: what the outbox writes into the pipe (the session
/// event first). Dropped (the client went away, or the stream ended), it
/// tells the connection through `_gone`.
struct EventStream {
    events: ReaderStream<tokio::io::DuplexStream>,
    _gone: oneshot::Sender<()>,
}

impl Stream for EventStream {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.events).poll_next(cx)
    }
}

/// `POST /sse/send?session=…`: one request for a session's connection.
/// 204 once the session's hub has it; 404 for a session that does not
/// exist (any more); 413 or 400 when the request broke a rule that closes
/// the session (the stream ends with the close event).
pub(crate) async fn send(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Response {
    let answer = send_inner(&state, &headers, &uri, body).await;
    with_cors(&state, &headers, answer)
}

async fn send_inner(state: &HttpState, headers: &HeaderMap, uri: &Uri, body: Body) -> Response {
    if !origin_allowed(&state.config().allowed_origins, headers) {
        return json_error(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let Some(session) = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "session")
        .map(|(_, v)| v.into_owned())
    else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "the session query parameter is missing",
        );
    };
    let Some(node) = Sessions::node_of(&session) else {
        return json_error(StatusCode::NOT_FOUND, "unknown session");
    };
    let max = state.config().core.max_message_bytes;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let posted = if declared.is_some_and(|n| n > max as u64) {
        Posted::too_big()
    } else {
        match axum::body::to_bytes(body, max + 1).await {
            Ok(bytes) => Posted::check(&bytes, max),
            Err(e) if is_too_long(&e) => Posted::too_big(),
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the body: {e}"),
                );
            }
        }
    };
    let delivered = if node == state.sessions.node() {
        state.sessions.deliver(&state.conn, &session, posted).await
    } else if let Some(cluster) = &state.cluster {
        match cluster.calls.forward(node, session, posted).await {
            Ok(delivered) => delivered,
            Err(why) => {
                warn!("could not forward an SSE request: {why}");
                return json_error(StatusCode::SERVICE_UNAVAILABLE, why);
            }
        }
    } else {
        Delivered::Unknown
    };
    match delivered {
        Delivered::Taken => StatusCode::NO_CONTENT.into_response(),
        Delivered::Unknown => json_error(StatusCode::NOT_FOUND, "unknown session"),
        Delivered::Stopping => json_error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down"),
        Delivered::Closed(code) => {
            let status = if code == roomhub_core::close::MESSAGE_TOO_BIG {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            json_error(status, format!("the session was closed with {code}"))
        }
    }
}

fn is_too_long(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// `OPTIONS /sse/send`: the CORS preflight a browser sends before a
/// cross-origin POST with a JSON content type.
pub(crate) async fn preflight(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if allowed_origin(&state, &headers).is_some() {
        let h = response.headers_mut();
        h.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        );
        h.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type"),
        );
        h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
    with_cors(&state, &headers, response)
}

/// The request's origin, if a cross-origin browser page on it may use the
/// SSE endpoints (the same `--allowed-origins` rule as WebSocket upgrades).
fn allowed_origin(state: &HttpState, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(ORIGIN)?;
    origin_allowed(&state.config().allowed_origins, headers).then(|| origin.clone())
}

/// Lets a page on an allowed origin read the answer.
fn with_cors(state: &HttpState, headers: &HeaderMap, mut response: Response) -> Response {
    if let Some(origin) = allowed_origin(state, headers) {
        let h = response.headers_mut();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(VARY, HeaderValue::from_static("origin"));
    }
    response
}

/// Hands requests other nodes forwarded to this node's sessions, one at a
/// time (so they keep their order), and tells each node what became of its
/// request.
pub(crate) async fn take_forwarded(
    state: Arc<HttpState>,
    mut forwarded: tokio::sync::mpsc::UnboundedReceiver<crate::cluster::wire::Forward>,
) {
    while let Some(forward) = forwarded.recv().await {
        let delivered = state
            .sessions
            .deliver(&state.conn, &forward.session, forward.posted)
            .await;
        if let Some(cluster) = &state.cluster {
            cluster
                .calls
                .forwarded(forward.from, forward.id, delivered)
                .await;
        }
    }
}
