//! Server frames out: every message the server sends, serialized once into
//! [`Bytes`] that can be handed to any number of recipients.
//!
//! Field order is fixed by the structs below, so the same inputs give the
//! same bytes.

use bytes::Bytes;
use serde::{Serialize, Serializer};

use crate::error::ErrorCode;
use crate::event::SequencedMessage;
use crate::ids::{Epoch, RoomName, UserRef};
use crate::time::Timestamp;

#[derive(Serialize)]
struct Frame<'a, P: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<P>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sender: Option<&'a UserRef>,
    #[serde(serialize_with = "rfc3339")]
    timestamp: Timestamp,
}

impl<'a, P: Serialize> Frame<'a, P> {
    fn new(kind: &'static str, timestamp: Timestamp) -> Self {
        Frame {
            kind,
            room: None,
            id: None,
            offset: None,
            payload: None,
            sender: None,
            timestamp,
        }
    }

    fn encode(&self) -> Bytes {
        self.encode_with(128)
    }

    /// Encodes into a buffer of `size` bytes to start with: the frame
    /// keeps its whole buffer (a `Bytes` made from a `Vec` holds its
    /// capacity), so a close guess keeps kept and queued frames small.
    fn encode_with(&self, size: usize) -> Bytes {
        let mut out = Vec::with_capacity(size);
        // Serializing plain structs of strings and integers into a Vec cannot
        // fail: there are no maps with non-string keys and no I/O.
        serde_json::to_writer(&mut out, self).expect("server frames always serialize");
        Bytes::from(out)
    }
}

fn rfc3339<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

#[derive(Serialize)]
struct ChatPayload<'a> {
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a str>,
}

#[derive(Serialize)]
struct RoomInfoPayload<'a> {
    room_id: &'a str,
    users: &'a [&'a UserRef],
    count: usize,
    offset: u64,
    epoch: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
}

#[derive(Serialize)]
struct OnlineUsersPayload<'a> {
    room_id: &'a str,
    users: &'a [&'a UserRef],
    count: usize,
}

#[derive(Serialize)]
struct TypingPayload {
    typing: bool,
}

#[derive(Serialize)]
struct SentPayload<'a> {
    message_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

#[derive(Serialize)]
struct ErrorPayload<'a> {
    code: ErrorCode,
    message: &'a str,
}

/// `new_message`: the same bytes go to every member and into the history.
pub fn new_message(m: &SequencedMessage) -> Bytes {
    Frame {
        room: Some(m.room.as_str()),
        id: Some(&m.id),
        offset: Some(m.offset),
        payload: Some(ChatPayload {
            content: &m.content,
            reply_to: m.reply_to.as_deref(),
        }),
        sender: Some(&m.sender),
        ..Frame::new("new_message", m.timestamp)
    }
    .encode_with(new_message_size(m))
}

/// A `new_message` frame's length when nothing in it needs escaping: its
/// strings and the fixed part (names, punctuation, offset, timestamp).
fn new_message_size(m: &SequencedMessage) -> usize {
    m.content.len()
        + m.reply_to.as_ref().map_or(0, |r| r.len() + 14)
        + m.id.len()
        + m.room.as_str().len()
        + m.sender.id.len()
        + m.sender.name.len()
        + 160
}

pub struct RoomInfo<'a> {
    pub room: &'a RoomName,
    pub users: &'a [&'a UserRef],
    pub offset: u64,
    pub epoch: &'a Epoch,
    pub recovered: Option<bool>,
}

pub fn room_info(info: &RoomInfo<'_>, now: Timestamp) -> Bytes {
    Frame {
        room: Some(info.room.as_str()),
        payload: Some(RoomInfoPayload {
            room_id: info.room.as_str(),
            users: info.users,
            count: info.users.len(),
            offset: info.offset,
            epoch: info.epoch.as_str(),
            recovered: info.recovered,
        }),
        ..Frame::new("room_info", now)
    }
    .encode()
}

#[derive(Serialize)]
struct HistoryPayload<'a> {
    room_id: &'a str,
    epoch: &'a str,
    /// The room's head: the newest offset in its history.
    offset: u64,
    messages: StoredFrames<'a>,
    has_more: bool,
}

/// Stored `new_message` frames, embedded as they are.
struct StoredFrames<'a>(&'a [Bytes]);

impl Serialize for StoredFrames<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for frame in self.0 {
            let raw: &serde_json::value::RawValue =
                serde_json::from_slice(frame).map_err(S::Error::custom)?;
            seq.serialize_element(raw)?;
        }
        seq.end()
    }
}

/// A page of a room's history.
pub struct History<'a> {
    pub room: &'a RoomName,
    /// The client's request id, echoed so that a page can be matched to
    /// its request.
    pub request_id: Option<&'a str>,
    pub epoch: &'a Epoch,
    pub head: u64,
    /// `new_message` frames, oldest first.
    pub messages: &'a [Bytes],
    pub has_more: bool,
}

/// `history`: the answer to a `history` request.
pub fn history(page: &History<'_>, now: Timestamp) -> Bytes {
    Frame {
        room: Some(page.room.as_str()),
        id: page.request_id,
        payload: Some(HistoryPayload {
            room_id: page.room.as_str(),
            epoch: page.epoch.as_str(),
            offset: page.head,
            messages: StoredFrames(page.messages),
            has_more: page.has_more,
        }),
        ..Frame::new("history", now)
    }
    .encode()
}

#[derive(Serialize)]
struct RoomLeftPayload<'a> {
    room_id: &'a str,
    reason: &'a str,
}

/// `room_left`: the server took this connection out of a room (its new
/// token no longer allows it, or the backend unsubscribed it).
pub fn room_left(room: &RoomName, reason: &str, now: Timestamp) -> Bytes {
    Frame {
        room: Some(room.as_str()),
        payload: Some(RoomLeftPayload {
            room_id: room.as_str(),
            reason,
        }),
        ..Frame::new("room_left", now)
    }
    .encode()
}

#[derive(Serialize)]
struct RoomResetPayload<'a> {
    room_id: &'a str,
    offset: u64,
    epoch: &'a str,
    recovered: bool,
}

/// A room's history could not be continued without a gap: the member's
/// position is now `epoch`/`offset`, and what it missed is not delivered.
pub fn room_reset(room: &RoomName, epoch: &Epoch, offset: u64, now: Timestamp) -> Bytes {
    Frame {
        room: Some(room.as_str()),
        payload: Some(RoomResetPayload {
            room_id: room.as_str(),
            offset,
            epoch: epoch.as_str(),
            recovered: false,
        }),
        ..Frame::new("room_reset", now)
    }
    .encode()
}

pub fn online_users(room: &RoomName, users: &[&UserRef], now: Timestamp) -> Bytes {
    Frame {
        room: Some(room.as_str()),
        payload: Some(OnlineUsersPayload {
            room_id: room.as_str(),
            users,
            count: users.len(),
        }),
        ..Frame::new("online_users", now)
    }
    .encode()
}

/// `user_joined` (`joined == true`) or `user_left`.
pub fn presence(room: &RoomName, user: &UserRef, joined: bool, now: Timestamp) -> Bytes {
    let kind = if joined { "user_joined" } else { "user_left" };
    Frame {
        room: Some(room.as_str()),
        payload: Some(user),
        sender: Some(user),
        ..Frame::new(kind, now)
    }
    .encode()
}

pub fn user_typing(room: &RoomName, user: &UserRef, typing: bool, now: Timestamp) -> Bytes {
    Frame {
        room: Some(room.as_str()),
        payload: Some(TypingPayload { typing }),
        sender: Some(user),
        ..Frame::new("user_typing", now)
    }
    .encode()
}

pub fn direct_message(id: &str, sender: &UserRef, content: &str, now: Timestamp) -> Bytes {
    Frame {
        id: Some(id),
        payload: Some(ChatPayload {
            content,
            reply_to: None,
        }),
        sender: Some(sender),
        ..Frame::new("direct_message", now)
    }
    .encode()
}

/// `ack` for a request that carried `id`. For messages, `sent` carries the
/// server message id and, for room messages, the offset.
pub fn ack(
    id: &str,
    room: Option<&RoomName>,
    sent: Option<(&str, Option<u64>)>,
    now: Timestamp,
) -> Bytes {
    Frame {
        room: room.map(RoomName::as_str),
        id: Some(id),
        payload: sent.map(|(message_id, offset)| SentPayload { message_id, offset }),
        ..Frame::new("ack", now)
    }
    .encode()
}

#[derive(Serialize)]
struct AppErrorPayload<'a> {
    code: &'a str,
    message: &'a str,
}

/// An `error` with a code the app's hook chose.
pub fn app_error(id: Option<&str>, code: &str, message: &str, now: Timestamp) -> Bytes {
    Frame {
        id,
        payload: Some(AppErrorPayload { code, message }),
        ..Frame::new("error", now)
    }
    .encode()
}

pub fn error(id: Option<&str>, code: ErrorCode, message: &str, now: Timestamp) -> Bytes {
    Frame {
        id,
        payload: Some(ErrorPayload { code, message }),
        ..Frame::new("error", now)
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Epoch;
    use crate::testkit::append_request;

    /// The first guess holds a plain message whole (no regrowth, which
    /// would double the buffer every kept frame holds), and not much more.
    #[test]
    fn a_new_message_frame_fits_its_first_buffer() {
        for content in [String::new(), "hi".into(), "x".repeat(1990)] {
            let mut request = append_request("general", 1_767_225_600_000);
            request.content = content.into();
            request.reply_to = Some("e-7".into());
            let m = SequencedMessage::new(request, Epoch::new("0123456789abcdef"), 123_456);
            let frame = new_message(&m);
            let guess = new_message_size(&m);
            assert!(frame.len() <= guess, "{} > {guess}", frame.len());
            assert!(guess - frame.len() <= 96, "{} for {}", guess, frame.len());
        }
    }
}
