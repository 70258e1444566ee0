//! Token refresh without reconnecting: a connection hands the hub a new
//! token (`refresh`), the shell verifies it, and the hub takes the new
//! `rooms` claim and expiry, taking the connection out of rooms the new
//! token no longer allows.

use std::sync::Arc;

use super::Hub;
use crate::error::ErrorCode;
use crate::event::{FrameKind, Output};
use crate::ids::{ConnId, Identity, RoomName};
use crate::wire;

impl Hub {
    /// Asks the shell to verify a connection's new token; one at a time.
    pub(super) fn refresh(&mut self, id: ConnId, req_id: Option<Arc<str>>, token: Arc<str>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.refreshing {
            return self.send_error(
                id,
                req_id.as_deref(),
                ErrorCode::RateLimited,
                "a refresh is already being verified; wait for its answer",
            );
        }
        conn.refreshing = true;
        self.out.push_back(Output::VerifyToken {
            conn: id,
            request_id: req_id,
            token,
        });
    }

    /// Takes a verified token: it must name the same user; its `rooms` and
    /// `exp` replace the old ones (the display name stays, so presence does
    /// not change under the others).
    pub(super) fn on_token_verified(
        &mut self,
        id: ConnId,
        req_id: Option<&str>,
        outcome: Result<Identity, Arc<str>>,
    ) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.refreshing = false;
        let identity = match outcome {
            Ok(identity) => identity,
            Err(why) => return self.send_error(id, req_id, ErrorCode::InvalidToken, &why),
        };
        if identity.user.id != conn.identity.user.id {
            return self.send_error(
                id,
                req_id,
                ErrorCode::Forbidden,
                "the new token names another user; reconnect to change users",
            );
        }
        conn.identity.rooms = identity.rooms;
        conn.identity.expires_at = identity.expires_at;
        let refused: Vec<RoomName> = conn
            .rooms
            .iter()
            .filter(|r| !conn.may_join(r))
            .cloned()
            .collect();
        for room in refused {
            self.take_out_of(id, &room, "token");
        }
        self.reschedule(id);
        self.ack(id, req_id, None, None);
    }

    /// Takes a connection out of a room the server no longer lets it be
    /// in, telling it with `room_left` (the others with `user_left` when
    /// it was the user's last connection there).
    pub(super) fn take_out_of(&mut self, id: ConnId, room: &RoomName, reason: &str) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if !conn.rooms.contains(room) {
            return;
        }
        conn.rooms.retain(|r| r != room);
        let user = conn.identity.user.clone();
        self.remove_member(id, &user, room);
        let frame = wire::room_left(room, reason, self.now);
        self.send(id, frame, FrameKind::Live);
    }
}
