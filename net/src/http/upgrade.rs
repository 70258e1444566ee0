//! The WebSocket upgrade (RFC 6455 §4.2), done here rather than by axum's
//! extractor so that the connection keeps the raw upgraded stream: the hub
//! writes frames straight to it (see [`crate::conn::outbox`]).

use axum::extract::FromRequestParts;
use axum::http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;

/// A valid upgrade request, not yet answered.
pub(crate) struct WsUpgrade {
    key: HeaderValue,
    offered: Vec<String>,
    pub(crate) on_upgrade: OnUpgrade,
}

impl WsUpgrade {
    /// `candidate` if the client offered it (browsers drop a connection whose
    /// selected subprotocol they did not offer).
    pub(crate) fn select(&self, candidate: &str) -> Option<HeaderValue> {
        self.offered
            .iter()
            .any(|p| p == candidate)
            .then(|| HeaderValue::from_str(candidate).ok())
            .flatten()
    }

    /// The `101 Switching Protocols` answer.
    pub(crate) fn response(&self, protocol: Option<HeaderValue>) -> Response {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = protocol {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        response
    }
}

/// Why a request is not a WebSocket upgrade (answered with 400).
#[derive(Debug)]
pub(crate) struct NotUpgrade(pub(crate) &'static str);

impl IntoResponse for NotUpgrade {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, self.0).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = NotUpgrade;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, NotUpgrade> {
        if parts.method != Method::GET {
            return Err(NotUpgrade("the method must be GET"));
        }
        if !header_has_token(&parts.headers, CONNECTION, "upgrade") {
            return Err(NotUpgrade("the Connection header must contain 'upgrade'"));
        }
        if !header_has_token(&parts.headers, UPGRADE, "websocket") {
            return Err(NotUpgrade("the Upgrade header must be 'websocket'"));
        }
        if parts
            .headers
            .get(SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(NotUpgrade("Sec-WebSocket-Version must be 13"));
        }
        let key = parts
            .headers
            .get(SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(NotUpgrade("Sec-WebSocket-Key is missing"))?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(NotUpgrade("this connection cannot be upgraded"))?;
        let offered = parts
            .headers
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        Ok(WsUpgrade {
            key,
            offered,
            on_upgrade,
        })
    }
}

/// Whether a comma-separated header lists `token` (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: axum::http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}
