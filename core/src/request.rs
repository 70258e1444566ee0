//! Client frames in: parsing one text frame into a typed [`Request`] or a
//! [`RequestError`] carrying the protocol error code and the client's `id`.
//!
//! [`parse_request`] is a pure function of the bytes and the limits, so it can
//! be fuzzed and benchmarked alone. Rules a client author can rely on:
//! - the frame must be a JSON object with a string `type`; otherwise
//!   `INVALID_FORMAT`;
//! - a wrong JSON type in the envelope (`type`, `id`, `room`) is
//!   `INVALID_FORMAT`; `payload` of the wrong type, or anything wrong inside
//!   it, is `INVALID_PAYLOAD`;
//! - `null` counts as absent everywhere, and so does an empty `room` string;
//! - duplicate keys: the last one wins (as `JSON.parse` does);
//! - unknown fields are ignored; `sender` and `timestamp` are ignored.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::Config;
use crate::error::ErrorCode;
use crate::ids::{Epoch, RoomName, UserRef};

/// A well-formed client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The client's message id, echoed in the `ack` or `error` answering it.
    pub id: Option<Arc<str>>,
    pub kind: RequestKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Join {
        room: RoomName,
        since: Option<Since>,
    },
    Leave {
        room: RoomName,
    },
    Send {
        room: RoomName,
        content: Arc<str>,
        reply_to: Option<Arc<str>>,
    },
    /// `typing` (true) and `stop_typing` (false).
    Typing {
        room: RoomName,
        typing: bool,
    },
    OnlineUsers {
        room: RoomName,
    },
    Direct {
        to: Arc<str>,
        content: Arc<str>,
    },
    /// A page of a joined room's history: the newest `limit` messages
    /// before `before` (all retained ones when `None`).
    History {
        room: RoomName,
        limit: usize,
        before: Option<u64>,
    },
    /// A new token for this connection (`refresh`), verified by the shell.
    Refresh {
        token: Arc<str>,
    },
}

/// Messages in one `history` page when the request names no `limit`.
pub const HISTORY_DEFAULT_LIMIT: usize = 50;
/// The most messages one `history` page carries; a larger `limit` is capped.
pub const HISTORY_MAX_LIMIT: usize = 100;

impl RequestKind {
    /// Requests that reach other people and so draw on the rate limit.
    pub fn is_rate_limited(&self) -> bool {
        matches!(
            self,
            RequestKind::Send { .. } | RequestKind::Typing { .. } | RequestKind::Direct { .. }
        )
    }
}

/// Where a rejoining client left off: the last offset it saw in `epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Since {
    pub offset: u64,
    pub epoch: Epoch,
}

/// A request the server refuses; answered with an `error` frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    pub id: Option<Arc<str>>,
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
}

impl RequestError {
    pub fn new(
        id: Option<Arc<str>>,
        code: ErrorCode,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        RequestError {
            id,
            code,
            message: message.into(),
        }
    }
}

/// The limits parsing enforces; a view of [`Config`].
#[derive(Clone, Copy, Debug)]
pub struct ParseLimits {
    pub max_content_bytes: usize,
    pub max_room_name_bytes: usize,
    pub max_client_id_bytes: usize,
    pub max_reply_to_bytes: usize,
}

impl From<&Config> for ParseLimits {
    fn from(c: &Config) -> Self {
        ParseLimits {
            max_content_bytes: c.max_content_bytes,
            max_room_name_bytes: c.max_room_name_bytes,
            max_client_id_bytes: c.max_client_id_bytes,
            max_reply_to_bytes: c.max_reply_to_bytes,
        }
    }
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits::from(&Config::default())
    }
}

/// Parses one client text frame.
pub fn parse_request(frame: &[u8], limits: &ParseLimits) -> Result<Request, RequestError> {
    let value: Value = serde_json::from_slice(frame).map_err(|e| {
        let message = if e.is_syntax() || e.is_eof() {
            "frame is not valid JSON"
        } else {
            "frame could not be read as JSON"
        };
        RequestError::new(None, ErrorCode::InvalidFormat, message)
    })?;
    let Value::Object(envelope) = value else {
        return Err(RequestError::new(
            None,
            ErrorCode::InvalidFormat,
            "frame must be a JSON object",
        ));
    };
    parse_envelope(envelope, limits)
}

/// A backend's message for `POST /api/publish`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub room: RoomName,
    pub content: Arc<str>,
    pub reply_to: Option<Arc<str>>,
    /// Shown as the sender; the server's own name when not given.
    pub sender: Option<UserRef>,
}

/// Parses a publish body, `{"room", "payload": {"content", "reply_to"?},
/// "sender"?: {"id", "name"}}`, by the same rules as a member's
/// `send_message` (room name, content and reply_to limits, error codes).
pub fn parse_publish(body: &[u8], limits: &ParseLimits) -> Result<Publish, RequestError> {
    let invalid =
        |message: &'static str| RequestError::new(None, ErrorCode::InvalidFormat, message);
    let value: Value =
        serde_json::from_slice(body).map_err(|_| invalid("body is not valid JSON"))?;
    let Value::Object(mut envelope) = value else {
        return Err(invalid("body must be a JSON object"));
    };
    let sender = match envelope.remove("sender") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let bad = || {
                RequestError::new(
                    None,
                    ErrorCode::InvalidPayload,
                    "sender must be {id, name}: non-empty strings within the id limit",
                )
            };
            let user: UserRef = serde_json::from_value(v).map_err(|_| bad())?;
            let fits = |s: &str| !s.is_empty() && s.len() <= limits.max_client_id_bytes;
            if !fits(&user.id) || !fits(&user.name) {
                return Err(bad());
            }
            Some(user)
        }
    };
    envelope.remove("id");
    envelope.insert("type".into(), Value::from("send_message"));
    match parse_envelope(envelope, limits)?.kind {
        RequestKind::Send {
            room,
            content,
            reply_to,
        } => Ok(Publish {
            room,
            content,
            reply_to,
            sender,
        }),
        _ => unreachable!("a send_message envelope parses as a send"),
    }
}

/// Parses a request envelope (a JSON object).
fn parse_envelope(
    mut envelope: Map<String, Value>,
    limits: &ParseLimits,
) -> Result<Request, RequestError> {
    let id = match envelope.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= limits.max_client_id_bytes => Some(Arc::from(s)),
        Some(Value::String(_)) => {
            return Err(RequestError::new(
                None,
                ErrorCode::InvalidFormat,
                "id is longer than the limit",
            ));
        }
        Some(_) => {
            return Err(RequestError::new(
                None,
                ErrorCode::InvalidFormat,
                "id must be a string",
            ));
        }
    };
    let fail = |code, message: &'static str| Err(RequestError::new(id.clone(), code, message));

    let kind = match envelope.remove("type") {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => return fail(ErrorCode::InvalidFormat, "type is required"),
        Some(_) => return fail(ErrorCode::InvalidFormat, "type must be a string"),
    };
    let kind = match kind.as_str() {
        "join_room" => Kind::Join,
        "leave_room" => Kind::Leave,
        "send_message" => Kind::Send,
        "typing" => Kind::Typing(true),
        "stop_typing" => Kind::Typing(false),
        "online_users" => Kind::OnlineUsers,
        "send_direct" => Kind::Direct,
        "history" => Kind::History,
        "refresh" => Kind::Refresh,
        other => {
            return Err(RequestError::new(
                id,
                ErrorCode::UnknownType,
                format!("unknown message type: \"{}\"", escaped_prefix(other, 64)),
            ));
        }
    };
    let room = match envelope.remove("room") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return fail(ErrorCode::InvalidFormat, "room must be a string"),
    };
    let payload = match envelope.remove("payload") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        // Typing indicators and presence queries carry nothing; a stray payload is harmless.
        Some(_) if matches!(kind, Kind::Typing(_) | Kind::OnlineUsers) => None,
        Some(_) => return fail(ErrorCode::InvalidPayload, "payload must be an object"),
    };

    let parsed = Parsed {
        limits,
        id: &id,
        room,
        payload,
    };
    let kind = match kind {
        Kind::Join => parsed.join()?,
        Kind::Leave => RequestKind::Leave {
            room: parsed.room(RoomFrom::PayloadFirst)?,
        },
        Kind::Send => parsed.send()?,
        Kind::Typing(typing) => RequestKind::Typing {
            room: parsed.room(RoomFrom::EnvelopeFirst)?,
            typing,
        },
        Kind::OnlineUsers => RequestKind::OnlineUsers {
            room: parsed.room(RoomFrom::EnvelopeFirst)?,
        },
        Kind::Direct => parsed.direct()?,
        Kind::History => parsed.history()?,
        Kind::Refresh => parsed.refresh()?,
    };
    Ok(Request { id, kind })
}

/// At most `max_bytes` of `text`, escaped for display (found by fuzzing:
/// escaping can grow a character tenfold, so the bound is on the result).
fn escaped_prefix(text: &str, max_bytes: usize) -> String {
    let mut shown = String::new();
    for c in text.chars() {
        let escaped: String = c.escape_debug().collect();
        if shown.len() + escaped.len() > max_bytes {
            shown.push_str("...");
            break;
        }
        shown.push_str(&escaped);
    }
    shown
}

enum Kind {
    Join,
    Leave,
    Send,
    Typing(bool),
    OnlineUsers,
    Direct,
    History,
    Refresh,
}

enum RoomFrom {
    /// `join_room` / `leave_room`: the seed puts the room in `payload.room_id`.
    PayloadFirst,
    EnvelopeFirst,
}

struct Parsed<'a> {
    limits: &'a ParseLimits,
    id: &'a Option<Arc<str>>,
    room: Option<String>,
    payload: Option<Map<String, Value>>,
}

impl Parsed<'_> {
    fn err(&self, code: ErrorCode, message: &'static str) -> RequestError {
        RequestError::new(self.id.clone(), code, message)
    }

    fn field(&self, name: &str) -> Option<&Value> {
        match self.payload.as_ref()?.get(name)? {
            Value::Null => None,
            v => Some(v),
        }
    }

    fn payload_room_id(&self) -> Result<Option<&str>, RequestError> {
        match self.field("room_id") {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.err(
                ErrorCode::InvalidPayload,
                "payload.room_id must be a string",
            )),
        }
    }

    fn room(&self, from: RoomFrom) -> Result<RoomName, RequestError> {
        let in_payload = self.payload_room_id()?;
        let in_envelope = self.room.as_deref();
        let chosen = match from {
            RoomFrom::PayloadFirst => in_payload.or(in_envelope),
            RoomFrom::EnvelopeFirst => in_envelope.or(in_payload),
        };
        let name = chosen.ok_or_else(|| self.err(ErrorCode::MissingRoom, "room is required"))?;
        RoomName::parse(name, self.limits.max_room_name_bytes)
            .map_err(|e| self.err(ErrorCode::InvalidRoom, e.describe()))
    }

    fn content(&self) -> Result<Arc<str>, RequestError> {
        match self.field("content") {
            Some(Value::String(s)) if s.is_empty() => Err(self.err(
                ErrorCode::InvalidPayload,
                "payload.content must not be empty",
            )),
            Some(Value::String(s)) if s.len() > self.limits.max_content_bytes => Err(self.err(
                ErrorCode::ContentTooLong,
                "payload.content is longer than the limit",
            )),
            Some(Value::String(s)) => Ok(Arc::from(s.as_str())),
            Some(_) => Err(self.err(
                ErrorCode::InvalidPayload,
                "payload.content must be a string",
            )),
            None => Err(self.err(ErrorCode::InvalidPayload, "payload.content is required")),
        }
    }

    fn join(&self) -> Result<RequestKind, RequestError> {
        let room = self.room(RoomFrom::PayloadFirst)?;
        let since = match self.field("since") {
            None => None,
            Some(Value::Object(s)) => {
                let offset = s.get("offset").and_then(Value::as_u64).ok_or_else(|| {
                    self.err(
                        ErrorCode::InvalidPayload,
                        "payload.since.offset must be a non-negative integer",
                    )
                })?;
                let epoch = match s.get("epoch") {
                    Some(Value::String(e)) if e.len() <= 128 => Epoch::new(e),
                    _ => {
                        return Err(self.err(
                            ErrorCode::InvalidPayload,
                            "payload.since.epoch must be a string",
                        ));
                    }
                };
                Some(Since { offset, epoch })
            }
            Some(_) => {
                return Err(self.err(
                    ErrorCode::InvalidPayload,
                    "payload.since must be an object {offset, epoch}",
                ));
            }
        };
        Ok(RequestKind::Join { room, since })
    }

    fn send(&self) -> Result<RequestKind, RequestError> {
        let room = self.room(RoomFrom::EnvelopeFirst)?;
        let content = self.content()?;
        let reply_to = match self.field("reply_to") {
            None => None,
            Some(Value::String(s)) if s.len() <= self.limits.max_reply_to_bytes => {
                Some(Arc::from(s.as_str()))
            }
            Some(Value::String(_)) => {
                return Err(self.err(
                    ErrorCode::InvalidPayload,
                    "payload.reply_to is longer than the limit",
                ));
            }
            Some(_) => {
                return Err(self.err(
                    ErrorCode::InvalidPayload,
                    "payload.reply_to must be a string",
                ));
            }
        };
        Ok(RequestKind::Send {
            room,
            content,
            reply_to,
        })
    }

    fn direct(&self) -> Result<RequestKind, RequestError> {
        // User ids may be numbers in a JWT, so `to` may be too.
        let to: Arc<str> = match self.field("to") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Arc::from(s.as_str()),
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Arc::from(n.to_string()),
            None => return Err(self.err(ErrorCode::InvalidPayload, "payload.to is required")),
            Some(_) => {
                return Err(self.err(
                    ErrorCode::InvalidPayload,
                    "payload.to must be a user id (string or integer)",
                ));
            }
        };
        let content = self.content()?;
        Ok(RequestKind::Direct { to, content })
    }

    fn history(&self) -> Result<RequestKind, RequestError> {
        let room = self.room(RoomFrom::EnvelopeFirst)?;
        let limit = match self.field("limit") {
            None => HISTORY_DEFAULT_LIMIT,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(HISTORY_MAX_LIMIT),
                _ => {
                    return Err(self.err(
                        ErrorCode::InvalidPayload,
                        "payload.limit must be a positive integer",
                    ));
                }
            },
        };
        let before = match self.field("before") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                self.err(
                    ErrorCode::InvalidPayload,
                    "payload.before must be a non-negative integer (an offset)",
                )
            })?),
        };
        Ok(RequestKind::History {
            room,
            limit,
            before,
        })
    }

    fn refresh(&self) -> Result<RequestKind, RequestError> {
        match self.field("token") {
            Some(Value::String(t)) if !t.is_empty() => Ok(RequestKind::Refresh {
                token: Arc::from(t.as_str()),
            }),
            Some(Value::String(_)) => {
                Err(self.err(ErrorCode::InvalidPayload, "payload.token must not be empty"))
            }
            Some(_) => Err(self.err(
                ErrorCode::InvalidPayload,
                "payload.token must be a string (a JWT)",
            )),
            None => Err(self.err(ErrorCode::InvalidPayload, "payload.token is required")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Request, RequestError> {
        parse_request(text.as_bytes(), &ParseLimits::default())
    }

    fn code(text: &str) -> ErrorCode {
        parse(text).expect_err("should be refused").code
    }

    fn room(name: &str) -> RoomName {
        RoomName::parse(name, 64).unwrap()
    }

    #[test]
    fn invalid_format() {
        for bad in [
            "",
            "not json",
            "{",
            "[]",
            "42",
            "null",
            r#""join_room""#,
            r#"{}"#,
            r#"{"type": null}"#,
            r#"{"type": 5}"#,
            r#"{"type": "join_room", "room": 5}"#,
            r#"{"type": "join_room", "id": 7}"#,
            r#"{"type": "join_room", "room": "a\ud800"}"#,
        ] {
            assert_eq!(code(bad), ErrorCode::InvalidFormat, "{bad}");
        }
        let long_id = format!(
            r#"{{"type":"join_room","room":"a","id":"{}"}}"#,
            "x".repeat(65)
        );
        assert_eq!(code(&long_id), ErrorCode::InvalidFormat);
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(code(&deep), ErrorCode::InvalidFormat);
    }

    #[test]
    fn unknown_type_echo_is_bounded_in_bytes_even_when_escaped() {
        // Found by fuzzing: 64 characters of DEL escape to 384 bytes.
        let frame = format!(r#"{{"type":"join_room{}"}}"#, r"\u007f".repeat(200));
        let e = parse(&frame).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert!(
            e.message.len() <= 100,
            "{} bytes: {}",
            e.message.len(),
            e.message
        );
    }

    #[test]
    fn unknown_type_echoes_id_and_bounds_the_message() {
        let e = parse(&format!(r#"{{"type":"{}","id":"r1"}}"#, "z".repeat(500))).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert_eq!(e.id.as_deref(), Some("r1"));
        assert!(e.message.len() < 120);
    }

    #[test]
    fn invalid_payload() {
        for bad in [
            r#"{"type":"join_room","room":"a","payload":"x"}"#,
            r#"{"type":"join_room","payload":{"room_id":5}}"#,
            r#"{"type":"join_room","room":"a","payload":{"since":5}}"#,
            r#"{"type":"join_room","room":"a","payload":{"since":{"offset":-1,"epoch":"e"}}}"#,
            r#"{"type":"join_room","room":"a","payload":{"since":{"offset":1}}}"#,
            r#"{"type":"send_message","room":"a"}"#,
            r#"{"type":"send_message","room":"a","payload":{}}"#,
            r#"{"type":"send_message","room":"a","payload":{"content":5}}"#,
            r#"{"type":"send_message","room":"a","payload":{"content":""}}"#,
            r#"{"type":"send_message","room":"a","payload":{"content":"x","reply_to":1}}"#,
            r#"{"type":"send_direct","payload":{"content":"x"}}"#,
            r#"{"type":"send_direct","payload":{"to":1.5,"content":"x"}}"#,
            r#"{"type":"send_direct","payload":{"to":"bob"}}"#,
        ] {
            assert_eq!(code(bad), ErrorCode::InvalidPayload, "{bad}");
        }
    }

    #[test]
    fn missing_and_invalid_room() {
        assert_eq!(code(r#"{"type":"join_room"}"#), ErrorCode::MissingRoom);
        assert_eq!(
            code(r#"{"type":"join_room","room":""}"#),
            ErrorCode::MissingRoom
        );
        assert_eq!(
            code(r#"{"type":"join_room","room":"","payload":{"room_id":""}}"#),
            ErrorCode::MissingRoom
        );
        assert_eq!(
            code(r#"{"type":"send_message","payload":{"content":"x"}}"#),
            ErrorCode::MissingRoom
        );
        assert_eq!(code(r#"{"type":"typing"}"#), ErrorCode::MissingRoom);
        let long = format!(r#"{{"type":"join_room","room":"{}"}}"#, "r".repeat(65));
        assert_eq!(code(&long), ErrorCode::InvalidRoom);
        assert_eq!(
            code(r#"{"type":"join_room","room":"a\u0000b"}"#),
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            code(r#"{"type":"leave_room","room":"tab\there"}"#),
            ErrorCode::InvalidRoom
        );
    }

    #[test]
    fn a_publish_body_follows_the_send_message_rules() {
        let limits = ParseLimits::default();
        let ok = parse_publish(
            br#"{"room":"news","payload":{"content":"hi","reply_to":"m1"},"sender":{"id":"bot","name":"Bot"}}"#,
            &limits,
        )
        .unwrap();
        assert_eq!(ok.room, room("news"));
        assert_eq!((&*ok.content, ok.reply_to.as_deref()), ("hi", Some("m1")));
        assert_eq!(ok.sender.unwrap().name.as_ref(), "Bot");
        let code = |body: &str| parse_publish(body.as_bytes(), &limits).unwrap_err().code;
        assert_eq!(code("[1]"), ErrorCode::InvalidFormat);
        assert_eq!(
            code(r#"{"payload":{"content":"x"}}"#),
            ErrorCode::MissingRoom
        );
        assert_eq!(
            code(r#"{"room":"a","payload":{"content":""}}"#),
            ErrorCode::InvalidPayload
        );
        let long = format!(
            r#"{{"room":"a","payload":{{"content":"{}"}}}}"#,
            "x".repeat(2001)
        );
        assert_eq!(code(&long), ErrorCode::ContentTooLong);
        assert_eq!(
            code(r#"{"room":"a","payload":{"content":"x"},"sender":{"id":""}}"#),
            ErrorCode::InvalidPayload
        );
    }

    #[test]
    fn content_too_long_counts_utf8_bytes() {
        let ok = format!(
            r#"{{"type":"send_message","room":"a","payload":{{"content":"{}"}}}}"#,
            "é".repeat(1000)
        );
        assert!(parse(&ok).is_ok());
        let long = format!(
            r#"{{"type":"send_message","room":"a","payload":{{"content":"{}"}}}}"#,
            "é".repeat(1001)
        );
        assert_eq!(code(&long), ErrorCode::ContentTooLong);
    }

    #[test]
    fn every_request_type_parses() {
        let cases = [
            (
                r#"{"type":"join_room","room":"","payload":{"room_id":"general"},"id":"1"}"#,
                RequestKind::Join {
                    room: room("general"),
                    since: None,
                },
            ),
            (
                r#"{"type":"join_room","room":"general","payload":{"since":{"offset":3,"epoch":"e1"}}}"#,
                RequestKind::Join {
                    room: room("general"),
                    since: Some(Since {
                        offset: 3,
                        epoch: Epoch::new("e1"),
                    }),
                },
            ),
            (
                r#"{"type":"leave_room","payload":{"room_id":"g"}}"#,
                RequestKind::Leave { room: room("g") },
            ),
            (
                r#"{"type":"send_message","room":"g","payload":{"content":"hi","reply_to":"m1"}}"#,
                RequestKind::Send {
                    room: room("g"),
                    content: "hi".into(),
                    reply_to: Some("m1".into()),
                },
            ),
            (
                r#"{"type":"typing","room":"g"}"#,
                RequestKind::Typing {
                    room: room("g"),
                    typing: true,
                },
            ),
            (
                r#"{"type":"stop_typing","payload":{"room_id":"g"}}"#,
                RequestKind::Typing {
                    room: room("g"),
                    typing: false,
                },
            ),
            (
                r#"{"type":"online_users","room":"g","payload":"ignored"}"#,
                RequestKind::OnlineUsers { room: room("g") },
            ),
            (
                r#"{"type":"send_direct","payload":{"to":42,"content":"psst"}}"#,
                RequestKind::Direct {
                    to: "42".into(),
                    content: "psst".into(),
                },
            ),
        ];
        for (text, kind) in cases {
            assert_eq!(parse(text).expect(text).kind, kind, "{text}");
        }
    }

    #[test]
    fn client_fields_the_server_decides_are_ignored() {
        let r = parse(
            r#"{"type":"send_message","room":"g","payload":{"content":"hi"},
                "sender":{"id":"admin","name":"Admin"},"timestamp":"1999-01-01T00:00:00Z","extra":[1]}"#,
        )
        .unwrap();
        assert!(matches!(r.kind, RequestKind::Send { .. }));
    }

    #[test]
    fn duplicate_keys_last_one_wins() {
        let r = parse(r#"{"type":"typing","type":"join_room","room":"a","room":"b"}"#).unwrap();
        assert_eq!(
            r.kind,
            RequestKind::Join {
                room: room("b"),
                since: None
            }
        );
    }

    #[test]
    fn join_prefers_payload_room_id_and_others_prefer_room() {
        let j = parse(r#"{"type":"join_room","room":"env","payload":{"room_id":"pay"}}"#).unwrap();
        assert_eq!(
            j.kind,
            RequestKind::Join {
                room: room("pay"),
                since: None
            }
        );
        let t = parse(r#"{"type":"typing","room":"env","payload":{"room_id":"pay"}}"#).unwrap();
        assert_eq!(
            t.kind,
            RequestKind::Typing {
                room: room("env"),
                typing: true
            }
        );
    }

    #[test]
    fn a_recipient_id_is_one_to_256_bytes() {
        let direct = |to: &str| {
            parse(&format!(
                r#"{{"type":"send_direct","payload":{{"to":"{to}","content":"hi"}}}}"#
            ))
        };
        let longest = "u".repeat(256);
        assert!(matches!(
            direct(&longest).map(|r| r.kind),
            Ok(RequestKind::Direct { to, .. }) if *to == *longest
        ));
        let too_long = "u".repeat(257);
        assert_eq!(
            direct(&too_long).unwrap_err().code,
            ErrorCode::InvalidPayload
        );
        assert_eq!(direct("").unwrap_err().code, ErrorCode::InvalidPayload);
    }

    #[test]
    fn an_unknown_type_is_echoed_whole_up_to_the_limit_and_cut_beyond() {
        let echoed = |kind: &str| {
            parse(&format!(r#"{{"type":"{kind}"}}"#))
                .unwrap_err()
                .message
        };
        let exact = "x".repeat(64);
        let message = echoed(&exact);
        assert!(message.contains(&exact), "{message}");
        assert!(!message.contains("..."), "{message}");
        let longer = "x".repeat(65);
        let message = echoed(&longer);
        assert!(message.contains(&format!("{exact}...")), "{message}");
        assert!(!message.contains(&longer), "{message}");
    }

    #[test]
    fn field_limits_hold_at_their_bounds() {
        let code = |text: String| parse(&text).unwrap_err().code;
        // `since.epoch`: up to 128 bytes.
        let join = |epoch: &str| {
            format!(
                r#"{{"type":"join_room","room":"g","payload":{{"since":{{"offset":1,"epoch":"{epoch}"}}}}}}"#
            )
        };
        assert!(parse(&join(&"e".repeat(128))).is_ok());
        assert_eq!(code(join(&"e".repeat(129))), ErrorCode::InvalidPayload);
        // `reply_to`: up to the limit (64 bytes).
        let send = |reply: &str| {
            format!(
                r#"{{"type":"send_message","room":"g","payload":{{"content":"x","reply_to":"{reply}"}}}}"#
            )
        };
        assert!(parse(&send(&"r".repeat(64))).is_ok());
        assert_eq!(code(send(&"r".repeat(65))), ErrorCode::InvalidPayload);
    }

    #[test]
    fn a_numeric_recipient_may_be_negative_or_beyond_i64() {
        for to in ["-5", "18446744073709551615"] {
            let request = parse(&format!(
                r#"{{"type":"send_direct","payload":{{"to":{to},"content":"hi"}}}}"#
            ))
            .unwrap();
            assert!(matches!(request.kind, RequestKind::Direct { to: t, .. } if *t == *to));
        }
    }

    #[test]
    fn broken_and_cut_off_json_are_both_not_json() {
        for frame in ["{not json", "{\"type\":"] {
            assert_eq!(parse(frame).unwrap_err().message, "frame is not valid JSON");
        }
    }

    #[test]
    fn a_publish_sender_needs_both_an_id_and_a_name_within_the_limit() {
        let limits = ParseLimits::default();
        let publish = |sender: &str| {
            let body = format!(r#"{{"room":"g","payload":{{"content":"x"}},"sender":{sender}}}"#);
            parse_publish(body.as_bytes(), &limits)
        };
        assert!(publish(r#"{"id":"bot","name":"Bot"}"#).is_ok());
        let long = "b".repeat(65);
        for bad in [
            r#"{"id":"bot","name":""}"#.to_string(),
            r#"{"id":"","name":"Bot"}"#.to_string(),
            format!(r#"{{"id":"{long}","name":"Bot"}}"#),
            format!(r#"{{"id":"bot","name":"{long}"}}"#),
        ] {
            assert_eq!(
                publish(&bad).unwrap_err().code,
                ErrorCode::InvalidPayload,
                "{bad}"
            );
        }
    }
}
