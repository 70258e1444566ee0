//! The app's join and publish hooks: a join or a member's message waits
//! for the hook's verdict (the connection's later requests wait behind it,
//! so they keep their order); other connections and rooms go on.

use std::sync::Arc;

use super::Hub;
use crate::api::{HookCall, HookVerdict};
use crate::error::ErrorCode;
use crate::event::{FrameKind, Output};
use crate::ids::{ConnId, RoomName};
use crate::request::Since;
use crate::wire;

/// What resumes once the hook answers.
pub(crate) enum PendingHook {
    Join {
        room: RoomName,
        since: Option<Since>,
    },
    Publish {
        room: RoomName,
        content: Arc<str>,
        reply_to: Option<Arc<str>>,
    },
}

impl Hub {
    pub(super) fn ask_hook(
        &mut self,
        id: ConnId,
        req_id: Option<Arc<str>>,
        call: HookCall,
        pending: PendingHook,
    ) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        self.next_hook += 1;
        let ticket = self.next_hook;
        conn.hook = Some((ticket, req_id, pending));
        self.hook_calls.insert(ticket, id);
        self.out.push_back(Output::Hook { ticket, call });
    }

    pub(super) fn on_hook_answered(&mut self, ticket: u64, verdict: HookVerdict) {
        let Some(id) = self.hook_calls.remove(&ticket) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some((_, req_id, pending)) = conn.hook.take_if(|(t, _, _)| *t == ticket) else {
            return;
        };
        match verdict {
            HookVerdict::Allow { content } => match pending {
                PendingHook::Join { room, since } => self.join_now(id, req_id, room, since),
                PendingHook::Publish {
                    room,
                    content: said,
                    reply_to,
                } => {
                    if conn.rooms.contains(&room) {
                        self.append(id, req_id, room, content.unwrap_or(said), reply_to);
                    } else {
                        // Left (or was taken out) while the hook decided.
                        self.send_error(
                            id,
                            req_id.as_deref(),
                            ErrorCode::NotInRoom,
                            "join the room first",
                        );
                    }
                }
            },
            HookVerdict::Deny { code, message } => {
                let frame = wire::app_error(req_id.as_deref(), &code, &message, self.now);
                self.send(id, frame, FrameKind::Live);
            }
            HookVerdict::Unavailable => self.send_error(
                id,
                req_id.as_deref(),
                ErrorCode::Unavailable,
                "the application's hook did not answer; retry",
            ),
        }
        self.resume.push(id);
    }
}
