//! Server-Sent Events framing for the `/sse` fallback: each frame the core
//! makes becomes one event whose `data` is the same JSON object a WebSocket
//! client gets; a `new_message` event carries its room position as the
//! event's `id` (what `Last-Event-ID` brings back on a reconnect); pings
//! are comments; the close a WebSocket client would get is a final
//! `{"type":"close"}` event.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;

/// A heartbeat: a comment, which `EventSource` ignores but which keeps
/// proxies from timing the stream out.
pub(crate) const PING: &[u8] = b": ping\n\n";

/// Each frame of one hub pass as an SSE event, made once however many SSE
/// members receive it (a broadcast's frame is one shared buffer, so its
/// address names it for the pass).
#[derive(Default)]
pub(crate) struct Events {
    made: rustc_hash::FxHashMap<(usize, usize), Bytes>,
}

impl Events {
    pub(crate) fn of(&mut self, frame: &Bytes) -> Bytes {
        self.made
            .entry((frame.as_ptr() as usize, frame.len()))
            .or_insert_with(|| event(frame))
            .clone()
    }
}

/// The event for one frame.
pub(crate) fn event(frame: &[u8]) -> Bytes {
    let id = position(frame);
    let mut out = Vec::with_capacity(frame.len() + 8 + id.as_ref().map_or(0, |i| i.len() + 5));
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    data_lines(&mut out, frame);
    out.push(b'\n');
    Bytes::from(out)
}

/// The final event of a stream the server ends: the close code and reason a
/// WebSocket client would get in its close frame.
pub(crate) fn close_event(code: u16, reason: &str) -> Bytes {
    let json = format!(
        r#"{{"type":"close","code":{code},"reason":{}}}"#,
        serde_json::Value::from(reason)
    );
    let mut out = Vec::with_capacity(json.len() + 8);
    data_lines(&mut out, json.as_bytes());
    out.push(b'\n');
    Bytes::from(out)
}

/// The first event of every stream: the session id that `POST /sse/send`
/// needs.
pub(crate) fn session_event(session: &str) -> Bytes {
    let json = format!(
        r#"{{"type":"session","session":{}}}"#,
        serde_json::Value::from(session)
    );
    let mut out = Vec::with_capacity(json.len() + 24);
    out.extend_from_slice(b"retry: 1000\n");
    data_lines(&mut out, json.as_bytes());
    out.push(b'\n');
    Bytes::from(out)
}

/// `data: <line>\n` for each line. The core's JSON is compact (no raw line
/// breaks), so this is one line; a frame with line breaks still arrives
/// whole, since a client joins data lines with `\n`, which JSON reads as
/// whitespace.
fn data_lines(out: &mut Vec<u8>, frame: &[u8]) {
    for line in frame.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
}

/// A `new_message`'s room position as an event id:
/// `{"room":..,"epoch":..,"offset":..}` (a message's id is
/// `<epoch>-<offset>`). Nothing for other frames.
fn position(frame: &[u8]) -> Option<String> {
    if !frame.starts_with(br#"{"type":"new_message""#) {
        return None;
    }
    #[derive(Deserialize)]
    struct Message<'a> {
        #[serde(borrow)]
        room: Cow<'a, str>,
        #[serde(borrow)]
        id: Cow<'a, str>,
        offset: u64,
    }
    let m: Message<'_> = serde_json::from_slice(frame).ok()?;
    let (epoch, _) = m.id.rsplit_once('-')?;
    Some(serde_json::json!({ "room": m.room, "epoch": epoch, "offset": m.offset }).to_string())
}

/// A position a client sent back in `Last-Event-ID`: the room, and the
/// `since` to rejoin it with.
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct Position {
    pub(crate) room: String,
    pub(crate) epoch: String,
    pub(crate) offset: u64,
}

impl Position {
    pub(crate) fn parse(id: &[u8]) -> Option<Position> {
        serde_json::from_slice(id).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_event_carries_its_position_as_its_id() {
        let frame = br#"{"type":"new_message","room":"g \"x\"","id":"2865533423d743bb-3","offset":3,"payload":{"content":"a\nb"}}"#;
        let event = event(frame);
        let text = std::str::from_utf8(&event).unwrap();
        let (id_line, rest) = text.split_once('\n').unwrap();
        let id = id_line.strip_prefix("id: ").unwrap();
        assert_eq!(
            Position::parse(id.as_bytes()),
            Some(Position {
                room: "g \"x\"".into(),
                epoch: "2865533423d743bb".into(),
                offset: 3
            })
        );
        assert_eq!(
            rest,
            format!("data: {}\n\n", std::str::from_utf8(frame).unwrap())
        );
    }

    #[test]
    fn a_pass_makes_each_frame_s_event_once() {
        let shared = Bytes::from_static(br#"{"type":"room_info","room":"g"}"#);
        let other = Bytes::copy_from_slice(&shared);
        let mut events = Events::default();
        let (a, b) = (events.of(&shared), events.of(&shared.clone()));
        assert_eq!(a.as_ptr(), b.as_ptr(), "one event for every recipient");
        assert_eq!(&events.of(&other)[..], &a[..]);
        assert_eq!(events.made.len(), 2);
    }

    #[test]
    fn other_frames_have_no_id_and_line_breaks_become_data_lines() {
        let event = event(b"{\"type\":\"room_info\",\n\"room\":\"g\"}");
        assert_eq!(
            &event[..],
            b"data: {\"type\":\"room_info\",\ndata: \"room\":\"g\"}\n\n"
        );
        assert_eq!(
            &close_event(4000, "slow consumer")[..],
            b"data: {\"type\":\"close\",\"code\":4000,\"reason\":\"slow consumer\"}\n\n"
        );
        assert_eq!(Position::parse(b"not json"), None);
        assert_eq!(Position::parse(b"{\"room\":\"g\",\"epoch\":\"e\"}"), None);
    }
}
