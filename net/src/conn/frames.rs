//! A connection's incoming WebSocket frames (RFC 6455, server side),
//! decoded from whatever bytes a read returned. An idle connection holds no
//! buffer: reads go into the reading thread's stack, and only the bytes of
//! a frame not yet complete (and a fragmented message being assembled) are
//! kept, in buffers that exist only while they are needed.
//!
//! tungstenite parses the frame headers; the rules a server applies to what
//! it reads (masking, reserved bits, control frames, fragments, size
//! limits, UTF-8) are checked here in tungstenite's order and with its
//! answers: a violation is a close code (1002, 1007 or 1009) and a reason.

use std::io::Cursor;

use bytes::Bytes;
use roomhub_core::close;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

/// What a connection said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    Text(Bytes),
    Binary,
    Ping(Bytes),
    Pong,
    /// A close frame, with its code (1002 for a code no endpoint may send).
    Close(Option<u16>),
}

/// A violation of the protocol: the close code to answer with, and why.
pub(crate) type Violation = (u16, &'static str);

/// A fragmented message being assembled.
struct Fragments {
    text: bool,
    /// The bytes so far (at most the message size limit).
    data: Vec<u8>,
}

/// The decoding state between reads.
pub(crate) struct Decoder {
    /// The start of a frame whose end has not arrived yet.
    partial: Vec<u8>,
    fragments: Option<Fragments>,
    /// The largest frame and message accepted, in bytes.
    max_message: usize,
}

impl Decoder {
    pub(crate) fn new(max_message: usize) -> Decoder {
        Decoder {
            partial: Vec::new(),
            fragments: None,
            max_message,
        }
    }

    /// Decodes every whole frame in what was kept plus `fresh`, pushing
    /// what the peer said to `events`, and keeps the rest for the next
    /// read. Stops at a close frame (what follows it is ignored) and at the
    /// first violation.
    pub(crate) fn feed(&mut self, fresh: &[u8], events: &mut Vec<Event>) -> Result<(), Violation> {
        if self.partial.is_empty() {
            let used = self.decode(fresh, events)?;
            if used < fresh.len() {
                self.partial = fresh[used..].to_vec();
            }
            return Ok(());
        }
        let mut kept = std::mem::take(&mut self.partial);
        kept.extend_from_slice(fresh);
        let used = self.decode(&kept, events)?;
        if used < kept.len() {
            kept.drain(..used);
            self.partial = kept;
        }
        Ok(())
    }

    /// Decodes whole frames from the start of `input`; returns the bytes
    /// used.
    fn decode(&mut self, input: &[u8], events: &mut Vec<Event>) -> Result<usize, Violation> {
        let mut at = 0;
        while at < input.len() {
            let mut cursor = Cursor::new(&input[at..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(_) => return Err((close::PROTOCOL_ERROR, "protocol error")),
            };
            // The size limit applies before the payload is waited for.
            let len = usize::try_from(len)
                .ok()
                .filter(|len| *len <= self.max_message)
                .ok_or((close::MESSAGE_TOO_BIG, "message too big"))?;
            let start = at + cursor.position() as usize;
            let Some(masked) = input.get(start..start + len) else {
                break;
            };
            at = start + len;
            let mut payload = masked.to_vec();
            let Some(mask) = header.mask else {
                return Err((close::PROTOCOL_ERROR, "protocol error"));
            };
            unmask(&mut payload, mask);
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err((close::PROTOCOL_ERROR, "protocol error"));
            }
            if let Some(event) = self.frame(&header, payload)? {
                let closed = matches!(event, Event::Close(_));
                events.push(event);
                if closed {
                    return Ok(input.len());
                }
            }
        }
        Ok(at)
    }

    /// One whole, unmasked frame: what it says, if it completes something.
    fn frame(
        &mut self,
        header: &FrameHeader,
        payload: Vec<u8>,
    ) -> Result<Option<Event>, Violation> {
        let protocol = (close::PROTOCOL_ERROR, "protocol error");
        match header.opcode {
            OpCode::Control(control) => {
                if !header.is_final || payload.len() > 125 {
                    return Err(protocol);
                }
                match control {
                    Control::Close => close_frame(&payload).map(|code| Some(Event::Close(code))),
                    Control::Ping => Ok(Some(Event::Ping(Bytes::from(payload)))),
                    Control::Pong => Ok(Some(Event::Pong)),
                    Control::Reserved(_) => Err(protocol),
                }
            }
            OpCode::Data(data) => {
                let started = match (data, &mut self.fragments) {
                    (Data::Continue, None) => return Err(protocol),
                    (Data::Continue, Some(fragments)) => {
                        fragments.add(&payload, self.max_message)?;
                        None
                    }
                    (_, Some(_)) => return Err(protocol),
                    (Data::Text, None) => Some(true),
                    (Data::Binary, None) => Some(false),
                    (Data::Reserved(_), None) => return Err(protocol),
                };
                let whole = match (started, header.is_final) {
                    (Some(text), true) => Some((text, payload)),
                    (Some(text), false) => {
                        let mut fragments = Fragments {
                            text,
                            data: Vec::new(),
                        };
                        fragments.add(&payload, self.max_message)?;
                        self.fragments = Some(fragments);
                        None
                    }
                    (None, true) => self.fragments.take().map(|f| (f.text, f.data)),
                    (None, false) => None,
                };
                match whole {
                    None => Ok(None),
                    Some((false, _)) => Ok(Some(Event::Binary)),
                    Some((true, text)) => match String::from_utf8(text) {
                        Ok(text) => Ok(Some(Event::Text(Bytes::from(text)))),
                        Err(_) => Err(invalid_utf8()),
                    },
                }
            }
        }
    }
}

impl Fragments {
    /// Adds a fragment, within the message size limit; a text message is
    /// checked for invalid UTF-8 as it arrives (a character cut in two by a
    /// fragment boundary is fine).
    fn add(&mut self, fragment: &[u8], max_message: usize) -> Result<(), Violation> {
        if fragment.len() > max_message - self.data.len() {
            return Err((close::MESSAGE_TOO_BIG, "message too big"));
        }
        self.data.extend_from_slice(fragment);
        if !self.text {
            return Ok(());
        }
        match std::str::from_utf8(&self.data) {
            Err(e) if e.error_len().is_some() => Err(invalid_utf8()),
            _ => Ok(()),
        }
    }
}

fn invalid_utf8() -> Violation {
    (close::INVALID_PAYLOAD, "invalid UTF-8 in a text frame")
}

/// A close frame's code; a code no endpoint may send reads as 1002.
fn close_frame(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err((close::PROTOCOL_ERROR, "protocol error")),
        [hi, lo, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(invalid_utf8());
            }
            let code = CloseCode::from(u16::from_be_bytes([*hi, *lo]));
            Ok(Some(if code.is_allowed() {
                u16::from(code)
            } else {
                close::PROTOCOL_ERROR
            }))
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

    /// A client frame: `first` is FIN, RSV and opcode.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        let mut body = payload.to_vec();
        unmask(&mut body, MASK);
        out.extend_from_slice(&body);
        out
    }

    fn decode_all(bytes: &[u8], max: usize) -> (Vec<Event>, Result<(), Violation>) {
        let mut d = Decoder::new(max);
        let mut events = Vec::new();
        let result = d.feed(bytes, &mut events);
        (events, result)
    }

    #[test]
    fn frames_split_anywhere_decode_the_same_and_idle_holds_nothing() {
        let mut stream = frame(0x81, br#"{"type":"ping"}"#);
        stream.extend(frame(0x89, b"hi"));
        stream.extend(frame(0x01, "h\u{e9}".as_bytes()[..2].as_ref()));
        stream.extend(frame(0x80, "h\u{e9}".as_bytes()[2..].as_ref()));
        stream.extend(frame(0x82, b"\x00\x01"));
        stream.extend(frame(0x8a, b""));
        stream.extend(frame(0x81, &vec![b'a'; 300]));
        let expected = vec![
            Event::Text(Bytes::from_static(br#"{"type":"ping"}"#)),
            Event::Ping(Bytes::from_static(b"hi")),
            Event::Text(Bytes::from("h\u{e9}")),
            Event::Binary,
            Event::Pong,
            Event::Text(Bytes::from(vec![b'a'; 300])),
        ];
        for step in [1, 2, 3, 7, 64, stream.len()] {
            let mut d = Decoder::new(4096);
            let mut events = Vec::new();
            for chunk in stream.chunks(step) {
                d.feed(chunk, &mut events).unwrap();
            }
            assert_eq!(events, expected, "chunks of {step}");
            assert_eq!(d.partial.capacity(), 0, "nothing kept once whole");
            assert!(d.fragments.is_none());
        }
    }

    #[test]
    fn violations_answer_as_tungstenite_does() {
        let big = 64;
        let cases: Vec<(Vec<u8>, usize, Violation)> = vec![
            (frame(0x81, &[0xff, 0xfe]), 4096, invalid_utf8()),
            (frame(0xc1, b"x"), 4096, (1002, "protocol error")),
            (frame(0x09, b""), 4096, (1002, "protocol error")),
            (frame(0x89, &[0; 126]), 4096, (1002, "protocol error")),
            (frame(0x80, b"x"), 4096, (1002, "protocol error")),
            (frame(0x83, b"x"), 4096, (1002, "protocol error")),
            (frame(0x8b, b""), 4096, (1002, "protocol error")),
            (frame(0x88, b"\x03"), 4096, (1002, "protocol error")),
            (frame(0x88, b"\x03\xe8\xff"), 4096, invalid_utf8()),
            (frame(0x81, &[b'a'; 65]), big, (1009, "message too big")),
            (
                [frame(0x01, b"a"), frame(0x81, b"b")].concat(),
                4096,
                (1002, "protocol error"),
            ),
            (
                [frame(0x01, &[b'a'; 40]), frame(0x80, &[b'a'; 40])].concat(),
                big,
                (1009, "message too big"),
            ),
            (
                [frame(0x01, b"a"), frame(0x00, &[0xc3, 0x28])].concat(),
                4096,
                invalid_utf8(),
            ),
            // Unmasked, as only a server may send.
            (vec![0x81, 0x01, b'a'], 4096, (1002, "protocol error")),
        ];
        for (bytes, max, violation) in cases {
            assert_eq!(decode_all(&bytes, max).1, Err(violation), "{bytes:02x?}");
        }
        // Too big is known from the header alone: nothing is waited for.
        let mut header = frame(0x81, &vec![b'a'; 70_000]);
        header.truncate(14);
        assert_eq!(decode_all(&header, 4096).1, Err((1009, "message too big")));
    }

    #[test]
    fn a_close_frame_ends_decoding_with_its_code() {
        let mut stream = frame(0x88, b"\x03\xe8bye");
        stream.extend(frame(0x81, b"after"));
        assert_eq!(
            decode_all(&stream, 64),
            (vec![Event::Close(Some(1000))], Ok(()))
        );
        assert_eq!(decode_all(&frame(0x88, b""), 64).0, [Event::Close(None)]);
        // 1005 may not be sent: it reads as a protocol error's code.
        assert_eq!(
            decode_all(&frame(0x88, b"\x03\xed"), 64).0,
            [Event::Close(Some(1002))]
        );
    }

    proptest::proptest! {
        /// Whatever a peer sends, cut into reads anywhere: no panic, and the
        /// same events and verdict as when it arrives in one read.
        #[test]
        fn any_bytes_in_any_reads_decode_as_in_one(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            frames in proptest::collection::vec((0u8..=255, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)), 0..6),
            cut in 1usize..40,
        ) {
            // Well-formed frames with arbitrary first bytes, then noise.
            let mut stream: Vec<u8> = frames.iter().flat_map(|(first, body)| frame(*first, body)).collect();
            stream.extend(bytes);
            let (whole_events, whole) = decode_all(&stream, 64);
            let mut d = Decoder::new(64);
            let mut events = Vec::new();
            let mut verdict = Ok(());
            for chunk in stream.chunks(cut) {
                verdict = d.feed(chunk, &mut events);
                if verdict.is_err() || matches!(events.last(), Some(Event::Close(_))) {
                    break;
                }
            }
            proptest::prop_assert_eq!(events, whole_events);
            proptest::prop_assert_eq!(verdict, whole);
        }
    }
}
