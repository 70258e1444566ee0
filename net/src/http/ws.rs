//! `GET /ws`: admission ([`admit`]), then the `101`
//! answer, and the connection task once the upgrade completes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use roomhub_core::ConnId;
use tracing::{info, warn};

use crate::auth::{SUBPROTOCOL, TokenSource};
use crate::conn::lifecycle;
use crate::http::admit::{Admitted, admit};
use crate::http::error::json_error;
use crate::http::peer::PeerAddr;
use crate::http::state::HttpState;
use crate::http::upgrade::{NotUpgrade, WsUpgrade};

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
    let Admitted {
        identity,
        source,
        slot,
        ip_slot,
    } = match admit(&state, addr, &headers, &uri).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let conn = ConnId(state.next_conn.fetch_add(1, Ordering::Relaxed));
    // Larger frames and messages close the connection with 1009.
    let max_message = state.config().core.max_message_bytes;
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
