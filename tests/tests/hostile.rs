//! The hostile-input catalog, through a real server on loopback. Each case
//! is an input and the outcome the protocol documents: an error code (and
//! the connection keeps working), an ack, or a close code. After every case
//! the server must still be up and an unrelated pair of clients must still
//! talk. Every text input in the catalog is also a committed seed of the
//! `parse_bytes` fuzz target (checked below).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roomhub_tests::server::{Client, TestServer, eventually};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// What is sent.
enum Input {
    /// One text frame.
    Text(String),
    Binary,
    /// A text message split into fragments of this many bytes.
    Fragmented(String, usize),
    /// Raw bytes written to the socket after the handshake (frame-level abuse).
    Raw(Vec<u8>),
    PingFlood(usize),
    /// Joins, then never reads while another member floods the room.
    NeverReads,
}

/// What must happen.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// An `error` frame with this code; the connection keeps working.
    Error(&'static str),
    /// The request succeeds (an `ack`).
    Ack,
    /// The server closes the connection with this code.
    Close(u16),
    /// Nothing breaks: the connection keeps working.
    Alive,
}

struct Case {
    name: &'static str,
    input: Input,
    expect: Expect,
}

fn text(name: &'static str, frame: impl Into<String>, expect: Expect) -> Case {
    Case {
        name,
        input: Input::Text(frame.into()),
        expect,
    }
}

use Expect::{Ack, Alive, Close, Error};

/// The catalog. Text cases run on a connection that is a member of `g` and
/// not of any other room; `secret` is outside its token's `rooms` claim.
fn catalog() -> Vec<Case> {
    let nested_arrays = format!("{}{}", "[".repeat(1500), "]".repeat(1500));
    let nested_payload = format!(
        r#"{{"type":"send_message","room":"g","id":"h","payload":{}1{}}}"#,
        r#"{"a":"#.repeat(300),
        "}".repeat(300)
    );
    vec![
        // Not JSON, or not an object.
        text("empty frame", "", Error("INVALID_FORMAT")),
        text("whitespace only", "   ", Error("INVALID_FORMAT")),
        text("plain text", "hello", Error("INVALID_FORMAT")),
        text(
            "truncated object",
            r#"{"type":"join_room""#,
            Error("INVALID_FORMAT"),
        ),
        text(
            "trailing garbage",
            r#"{"type":"typing","room":"g"} x"#,
            Error("INVALID_FORMAT"),
        ),
        text("json null", "null", Error("INVALID_FORMAT")),
        text("json true", "true", Error("INVALID_FORMAT")),
        text("json number", "42", Error("INVALID_FORMAT")),
        text("json string", r#""join_room""#, Error("INVALID_FORMAT")),
        text(
            "json array",
            r#"[{"type":"join_room","room":"g"}]"#,
            Error("INVALID_FORMAT"),
        ),
        text(
            "byte order mark",
            "\u{feff}{\"type\":\"typing\",\"room\":\"g\"}",
            Error("INVALID_FORMAT"),
        ),
        text("raw NUL byte", "\u{0}", Error("INVALID_FORMAT")),
        text(
            "NUL before object",
            "\u{0}{\"type\":\"typing\",\"room\":\"g\"}",
            Error("INVALID_FORMAT"),
        ),
        text(
            "deeply nested arrays",
            nested_arrays,
            Error("INVALID_FORMAT"),
        ),
        text(
            "deeply nested payload",
            nested_payload,
            Error("INVALID_FORMAT"),
        ),
        text(
            "lone surrogate escape",
            r#"{"type":"send_message","room":"g","id":"h","payload":{"content":"\ud800"}}"#,
            Error("INVALID_FORMAT"),
        ),
        text(
            "reversed surrogate pair",
            r#"{"type":"send_message","room":"g","id":"h","payload":{"content":"\udc00\ud800"}}"#,
            Error("INVALID_FORMAT"),
        ),
        text(
            "huge exponent",
            r#"{"type":"join_room","room":"g","payload":{"since":{"offset":1e400,"epoch":"e"}}}"#,
            Error("INVALID_FORMAT"),
        ),
        // The envelope's fields of the wrong type.
        text("missing type", r#"{"room":"g"}"#, Error("INVALID_FORMAT")),
        text("type null", r#"{"type":null}"#, Error("INVALID_FORMAT")),
        text("type number", r#"{"type":1}"#, Error("INVALID_FORMAT")),
        text(
            "type array",
            r#"{"type":["join_room"]}"#,
            Error("INVALID_FORMAT"),
        ),
        text(
            "id number",
            r#"{"type":"typing","room":"g","id":7}"#,
            Error("INVALID_FORMAT"),
        ),
        text(
            "id object",
            r#"{"type":"typing","room":"g","id":{}}"#,
            Error("INVALID_FORMAT"),
        ),
        text(
            "id of 65 bytes",
            format!(
                r#"{{"type":"typing","room":"g","id":"{}"}}"#,
                "i".repeat(65)
            ),
            Error("INVALID_FORMAT"),
        ),
        text(
            "room number",
            r#"{"type":"typing","room":5}"#,
            Error("INVALID_FORMAT"),
        ),
        text(
            "room object",
            r#"{"type":"typing","room":{"name":"g"}}"#,
            Error("INVALID_FORMAT"),
        ),
        // Types.
        text(
            "unknown type",
            r#"{"type":"drop_database","id":"h"}"#,
            Error("UNKNOWN_TYPE"),
        ),
        text(
            "type with NUL",
            r#"{"type":"join\u0000room","id":"h"}"#,
            Error("UNKNOWN_TYPE"),
        ),
        text(
            "type with different case",
            r#"{"type":"JOIN_ROOM","room":"g","id":"h"}"#,
            Error("UNKNOWN_TYPE"),
        ),
        text(
            "very long type",
            format!(r#"{{"type":"{}","id":"h"}}"#, "t".repeat(3000)),
            Error("UNKNOWN_TYPE"),
        ),
        text(
            "server message type",
            r#"{"type":"new_message","room":"g","id":"h"}"#,
            Error("UNKNOWN_TYPE"),
        ),
        // Rooms.
        text(
            "room null",
            r#"{"type":"join_room","room":null,"id":"h"}"#,
            Error("MISSING_ROOM"),
        ),
        text(
            "room empty",
            r#"{"type":"join_room","room":"","id":"h"}"#,
            Error("MISSING_ROOM"),
        ),
        text(
            "room of 65 bytes",
            format!(
                r#"{{"type":"join_room","room":"{}","id":"h"}}"#,
                "r".repeat(65)
            ),
            Error("INVALID_ROOM"),
        ),
        text(
            "room with NUL",
            r#"{"type":"join_room","room":"a\u0000b","id":"h"}"#,
            Error("INVALID_ROOM"),
        ),
        text(
            "room with newline",
            r#"{"type":"join_room","room":"a\nb","id":"h"}"#,
            Error("INVALID_ROOM"),
        ),
        text(
            "room with DEL",
            r#"{"type":"join_room","room":"a\u007fb","id":"h"}"#,
            Error("INVALID_ROOM"),
        ),
        text(
            "room with C1 control",
            r#"{"type":"join_room","room":"a\u0085b","id":"h"}"#,
            Error("INVALID_ROOM"),
        ),
        text(
            "room of 64 bytes of emoji",
            format!(
                r#"{{"type":"join_room","room":"{}","id":"h"}}"#,
                "\u{1F600}".repeat(16)
            ),
            Ack,
        ),
        text(
            "room spelled with escapes",
            r#"{"type":"online_users","room":"\u0067","id":"h"}"#,
            Ack,
        ),
        text(
            "payload room_id number",
            r#"{"type":"join_room","payload":{"room_id":7},"id":"h"}"#,
            Error("INVALID_PAYLOAD"),
        ),
        // Payloads.
        text(
            "payload string",
            r#"{"type":"send_message","room":"g","payload":"hi","id":"h"}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "payload array",
            r#"{"type":"send_message","room":"g","payload":["hi"],"id":"h"}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "content missing",
            r#"{"type":"send_message","room":"g","payload":{},"id":"h"}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "content null",
            r#"{"type":"send_message","room":"g","payload":{"content":null},"id":"h"}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "content number",
            r#"{"type":"send_message","room":"g","payload":{"content":12},"id":"h"}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "content object",
            r#"{"type":"send_message","room":"g","payload":{"content":{"html":"<b>"}},"id":"h"}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "content empty",
            r#"{"type":"send_message","room":"g","payload":{"content":""},"id":"h"}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "content of 2001 bytes",
            format!(
                r#"{{"type":"send_message","room":"g","payload":{{"content":"{}"}},"id":"h"}}"#,
                "c".repeat(2001)
            ),
            Error("CONTENT_TOO_LONG"),
        ),
        text(
            "content with escaped NUL",
            r#"{"type":"send_message","room":"g","payload":{"content":"a\u0000b"},"id":"h"}"#,
            Ack,
        ),
        text(
            "reply_to number",
            r#"{"type":"send_message","room":"g","payload":{"content":"x","reply_to":3},"id":"h"}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "reply_to of 65 bytes",
            format!(
                r#"{{"type":"send_message","room":"g","payload":{{"content":"x","reply_to":"{}"}},"id":"h"}}"#,
                "r".repeat(65)
            ),
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "since string",
            r#"{"type":"join_room","room":"g","payload":{"since":"yesterday"},"id":"h"}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "since offset negative",
            r#"{"type":"join_room","room":"g","payload":{"since":{"offset":-1,"epoch":"e"}},"id":"h"}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "since offset huge",
            r#"{"type":"join_room","room":"g","payload":{"since":{"offset":99999999999999999999999,"epoch":"e"}},"id":"h"}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "since offset fractional",
            r#"{"type":"join_room","room":"g","payload":{"since":{"offset":1.5,"epoch":"e"}},"id":"h"}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "since epoch number",
            r#"{"type":"join_room","room":"g","payload":{"since":{"offset":1,"epoch":5}},"id":"h"}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "since epoch of 1000 bytes",
            format!(
                r#"{{"type":"join_room","room":"g","payload":{{"since":{{"offset":1,"epoch":"{}"}}}},"id":"h"}}"#,
                "e".repeat(1000)
            ),
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "direct to empty",
            r#"{"type":"send_direct","payload":{"to":"","content":"x"},"id":"h"}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "direct to fraction",
            r#"{"type":"send_direct","payload":{"to":1.5,"content":"x"},"id":"h"}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "direct to object",
            r#"{"type":"send_direct","payload":{"to":{"id":"x"},"content":"x"},"id":"h"}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "direct to nobody",
            r#"{"type":"send_direct","payload":{"to":"nobody","content":"x"},"id":"h"}"#,
            Error("RECIPIENT_OFFLINE"),
        ),
        // Authority.
        text(
            "send to a room not joined",
            r#"{"type":"send_message","room":"other","payload":{"content":"x"},"id":"h"}"#,
            Error("NOT_IN_ROOM"),
        ),
        text(
            "typing into a room not joined",
            r#"{"type":"typing","room":"other","id":"h"}"#,
            Error("NOT_IN_ROOM"),
        ),
        text(
            "history of a room not joined",
            r#"{"type":"history","room":"other","id":"h"}"#,
            Error("NOT_IN_ROOM"),
        ),
        text(
            "history of a room outside the token's rooms",
            r#"{"type":"history","room":"secret","id":"h","payload":{"limit":100}}"#,
            Error("NOT_IN_ROOM"),
        ),
        // History requests with a bad page.
        text(
            "history limit zero",
            r#"{"type":"history","room":"g","id":"h","payload":{"limit":0}}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "history limit negative",
            r#"{"type":"history","room":"g","id":"h","payload":{"limit":-5}}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "history limit as a string",
            r#"{"type":"history","room":"g","id":"h","payload":{"limit":"50"}}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "history limit beyond u64",
            r#"{"type":"history","room":"g","id":"h","payload":{"limit":18446744073709551616}}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "history before fractional",
            r#"{"type":"history","room":"g","id":"h","payload":{"before":2.5}}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "history payload an array",
            r#"{"type":"history","room":"g","id":"h","payload":[50]}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "history limit enormous is capped",
            r#"{"type":"history","room":"g","id":"h","payload":{"limit":4294967296,"before":18446744073709551615}}"#,
            Ack,
        ),
        // Refresh with a bad token: refused, the connection unchanged.
        text(
            "refresh with no token",
            r#"{"type":"refresh","id":"h","payload":{}}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "refresh with a token that is a number",
            r#"{"type":"refresh","id":"h","payload":{"token":12345}}"#,
            Error("INVALID_PAYLOAD"),
        ),
        text(
            "refresh with garbage for a token",
            r#"{"type":"refresh","id":"h","payload":{"token":"a.b.c"}}"#,
            Error("INVALID_TOKEN"),
        ),
        text(
            "refresh with an alg none token",
            r#"{"type":"refresh","id":"h","payload":{"token":"eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ1c2VyX2lkIjoidmljdGltIiwiZXhwIjo5OTk5OTk5OTk5fQ."}}"#,
            Error("INVALID_TOKEN"),
        ),
        text(
            "refresh with a huge token",
            format!(
                r#"{{"type":"refresh","id":"h","payload":{{"token":"{}"}}}}"#,
                "A".repeat(3900)
            ),
            Error("INVALID_TOKEN"),
        ),
        text(
            "join outside the token's rooms",
            r#"{"type":"join_room","room":"secret","id":"h"}"#,
            Error("FORBIDDEN"),
        ),
        text(
            "sender spoof",
            r#"{"type":"send_message","room":"g","payload":{"content":"I am the admin"},"sender":{"id":"admin","name":"Admin"},"id":"h"}"#,
            Ack,
        ),
        text(
            "timestamp spoof",
            r#"{"type":"send_message","room":"g","payload":{"content":"from the past"},"timestamp":"1970-01-01T00:00:00Z","id":"h"}"#,
            Ack,
        ),
        text(
            "duplicate keys",
            r#"{"type":"send_message","type":"typing","room":"x","room":"g","id":"h"}"#,
            Ack,
        ),
        text(
            "unknown fields",
            r#"{"type":"typing","room":"g","id":"h","__proto__":{"admin":true},"extra":[1,2,3]}"#,
            Ack,
        ),
        text(
            "whitespace padded",
            "  \n{\"type\":\"typing\",\"room\":\"g\",\"id\":\"h\"}\n  ",
            Ack,
        ),
        text(
            "id of 64 bytes",
            format!(
                r#"{{"type":"typing","room":"g","id":"{}"}}"#,
                "i".repeat(64)
            ),
            Ack,
        ),
        // Frames.
        Case {
            name: "binary frame",
            input: Input::Binary,
            expect: Error("UNSUPPORTED_FRAME"),
        },
        Case {
            name: "fragmented message",
            input: Input::Fragmented(r#"{"type":"typing","room":"g","id":"h"}"#.into(), 7),
            expect: Ack,
        },
        Case {
            name: "ping flood",
            input: Input::PingFlood(2000),
            expect: Alive,
        },
        Case {
            name: "oversize frame",
            input: Input::Text(format!(
                r#"{{"type":"typing","room":"{}"}}"#,
                "x".repeat(5000)
            )),
            expect: Close(1009),
        },
        Case {
            name: "oversize fragmented message",
            input: Input::Fragmented(
                format!(r#"{{"type":"typing","room":"{}"}}"#, "x".repeat(5000)),
                1000,
            ),
            expect: Close(1009),
        },
        Case {
            name: "invalid UTF-8",
            input: Input::Raw(frame(0x1, true, 0, b"{\xff\xfe}", true)),
            expect: Close(1007),
        },
        Case {
            name: "unmasked client frame",
            input: Input::Raw(frame(0x1, true, 0, br#"{"type":"typing"}"#, false)),
            expect: Close(1002),
        },
        Case {
            name: "reserved bit set",
            input: Input::Raw(frame(0x1, true, 0x40, b"{}", true)),
            expect: Close(1002),
        },
        Case {
            name: "unknown opcode",
            input: Input::Raw(frame(0x3, true, 0, b"{}", true)),
            expect: Close(1002),
        },
        Case {
            name: "continuation without a start",
            input: Input::Raw(frame(0x0, true, 0, b"{}", true)),
            expect: Close(1002),
        },
        Case {
            name: "fragmented ping",
            input: Input::Raw(frame(0x9, false, 0, b"p", true)),
            expect: Close(1002),
        },
        Case {
            name: "ping over 125 bytes",
            input: Input::Raw(frame(0x9, true, 0, &[b'p'; 126], true)),
            expect: Close(1002),
        },
        Case {
            name: "new message inside a fragmented one",
            input: Input::Raw(
                [
                    frame(0x1, false, 0, b"{\"ty", true),
                    frame(0x1, true, 0, b"pe\":1}", true),
                ]
                .concat(),
            ),
            expect: Close(1002),
        },
        Case {
            name: "client that never reads",
            input: Input::NeverReads,
            expect: Close(4000),
        },
    ]
}

/// A client-to-server frame; `rsv` is OR-ed into the first byte.
fn frame(opcode: u8, fin: bool, rsv: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | rsv | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    let key = [0x12, 0x34, 0x56, 0x78];
    if masked {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A token for the catalog's victim: its rooms claim lets it into `g`,
/// `other` and rooms starting with an emoji.
fn victim_token(user: &str) -> String {
    use roomhub_net::dev::{TokenSpec, mint_token};
    let spec = TokenSpec {
        user: user.into(),
        rooms: vec!["g".into(), "other".into(), "\u{1F600}*".into()],
        ..TokenSpec::default()
    };
    mint_token(
        roomhub_tests::server::SECRET,
        &spec,
        Duration::from_secs(600),
        roomhub_net::Clock::system().unix_seconds(),
    )
}

async fn victim(s: &TestServer, user: &str) -> Client {
    let token = victim_token(user);
    let mut c = Client::connect(format!("{}?token={token}", s.url()))
        .await
        .expect("victim connects");
    c.join("g").await;
    c
}

/// Reads frames until a close; returns its code.
async fn close_code<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .ok()?
        {
            Some(Ok(Message::Close(Some(f)))) => return Some(f.code.into()),
            Some(Ok(Message::Close(None))) => return Some(1005),
            Some(Ok(_)) => {}
            _ => return None,
        }
    }
}

async fn run_case(s: &TestServer, v: &mut Client, case: &Case, n: usize) {
    let name = case.name;
    match (&case.input, case.expect) {
        (Input::Text(t), Error(code)) => {
            v.send(t).await;
            let e = v.recv().await;
            assert_eq!(
                (e["type"].as_str(), e["payload"]["code"].as_str()),
                (Some("error"), Some(code)),
                "{name}: {e}"
            );
            assert!(
                e["payload"]["message"]
                    .as_str()
                    .is_some_and(|m| m.len() < 200),
                "{name}: unbounded message"
            );
        }
        (Input::Text(t), Ack) => {
            // As JSON.parse would read it: duplicate keys, last one wins.
            let sent: serde_json::Value =
                serde_json::from_str(t.trim()).expect("Ack cases are JSON");
            v.send(t).await;
            let a = v.recv_type("ack").await;
            assert_eq!(a["id"], sent["id"], "{name}: {a}");
        }
        (Input::Binary, Error(code)) => {
            v.ws.send(Message::binary(vec![0xde, 0xad])).await.unwrap();
            assert_eq!(v.recv().await["payload"]["code"], code, "{name}");
        }
        (Input::Fragmented(t, size), Ack) => {
            send_fragmented(&mut v.ws, t, *size).await;
            v.recv_type("ack").await;
        }
        (Input::PingFlood(count), Alive) => {
            for i in 0..*count {
                v.ws.feed(Message::Ping(format!("{i}").into_bytes().into()))
                    .await
                    .unwrap();
            }
            v.ws.flush().await.unwrap();
        }
        (Input::Text(t), Close(code)) => {
            let mut c = s.client(&format!("closer{n}")).await;
            c.send(t).await;
            assert_eq!(c.closed().await.0, code, "{name}");
        }
        (Input::Fragmented(t, size), Close(code)) => {
            let mut c = s.client(&format!("closer{n}")).await;
            send_fragmented(&mut c.ws, t, *size).await;
            assert_eq!(c.closed().await.0, code, "{name}");
        }
        (Input::Raw(bytes), Close(code)) => {
            let mut tcp = s.raw_upgrade(&format!("raw{n}"), &[]).await;
            tcp.write_all(bytes).await.unwrap();
            let mut ws =
                tokio_tungstenite::WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
            assert_eq!(close_code(&mut ws).await, Some(code), "{name}");
        }
        (Input::NeverReads, Close(code)) => {
            let mut slow = s.member(&format!("slow{n}"), "flood").await;
            let mut talker = s.member(&format!("talker{n}"), "flood").await;
            let content = "f".repeat(1900);
            // Enough to fill the kernel's buffers and then the queue.
            for _ in 0..6000 {
                talker.send_json(json!({"type": "send_message", "room": "flood", "payload": {"content": content}})).await;
                if talker.ws.get_ref().get_ref().peer_addr().is_err() {
                    break;
                }
            }
            assert_eq!(slow.closed().await.0, code, "{name}");
            drop(talker);
        }
        (_, expect) => panic!("{name}: no runner for {expect:?}"),
    }
}

async fn send_fragmented<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str, size: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let chunks: Vec<&[u8]> = text.as_bytes().chunks(size).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let fin = i + 1 == chunks.len();
        ws.feed(Message::Frame(Frame::message(chunk.to_vec(), opcode, fin)))
            .await
            .unwrap();
    }
    ws.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_catalog() {
    let s = TestServer::start_with(|c| {
        c.core.rate_limit_per_second = 0;
        c.send_queue_bytes = 32 * 1024;
        c.max_connections_per_user = 0;
    })
    .await;
    let cases = catalog();
    assert!(cases.len() >= 60, "the catalog has {} cases", cases.len());
    let mut v = victim(&s, "victim").await;
    let mut alice = s.member("alice", "bystanders").await;
    let mut bob = s.member("bob", "bystanders").await;
    alice.recv_type("user_joined").await;
    for (n, case) in cases.iter().enumerate() {
        run_case(&s, &mut v, case, n).await;
        // The victim's connection still works (unless the case closed a
        // different, dedicated one)...
        v.send_json(json!({"type": "online_users", "room": "g", "id": format!("alive{n}")}))
            .await;
        let answer = v.recv_type("ack").await;
        assert_eq!(
            answer["id"],
            format!("alive{n}"),
            "{}: victim connection broken",
            case.name
        );
        // ...and unrelated clients are unaffected.
        alice.send_json(json!({"type": "send_message", "room": "bystanders", "payload": {"content": format!("after {}", case.name)}})).await;
        let m = bob.recv_type("new_message").await;
        assert_eq!(m["payload"]["content"], format!("after {}", case.name));
    }
    let (status, health) = s.get("/healthz").await;
    assert_eq!((status, health.as_str()), (200, r#"{"status":"ok"}"#));
}

/// Every text input of the catalog is a committed seed of the `parse_bytes`
/// fuzz target. `ROOMHUB_WRITE_SEEDS=1` writes the missing ones.
#[test]
fn catalog_text_inputs_are_fuzz_seeds() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/parse_bytes");
    let existing: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok().and_then(|e| std::fs::read(e.path()).ok()))
                .collect()
        })
        .unwrap_or_default();
    let write = std::env::var("ROOMHUB_WRITE_SEEDS").is_ok();
    let mut missing = Vec::new();
    for case in catalog() {
        let bytes = match &case.input {
            Input::Text(t) | Input::Fragmented(t, _) => t.as_bytes().to_vec(),
            _ => continue,
        };
        if existing.contains(&bytes) {
            continue;
        }
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            let file = format!("catalog-{}", case.name.replace(' ', "-"));
            std::fs::write(dir.join(file), &bytes).unwrap();
        } else {
            missing.push(case.name);
        }
    }
    assert!(
        missing.is_empty(),
        "catalog inputs missing from fuzz/seeds/parse_bytes: {missing:?} (run with ROOMHUB_WRITE_SEEDS=1)"
    );
}

/// Connection floods from one address: hundreds of upgrade requests that
/// never finish, then a burst of upgrades. The half-open ones are dropped
/// at the handshake timeout; the burst is held to the per-address limits
/// (each refusal a 429 with a JSON body, never a 5xx); the server keeps
/// serving, and once the flood is gone it holds nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_floods_from_one_address_are_bounded() {
    use roomhub_net::config::PerIpLimits;
    use tokio::io::AsyncReadExt;
    let s = TestServer::start_with(|c| {
        c.handshake_timeout = Duration::from_millis(500);
        c.max_connections_per_user = 0;
        c.per_ip = PerIpLimits {
            max_connections: 40,
            connections_per_second: 60,
            exempt_loopback: false,
        };
    })
    .await;
    let mut half_open = Vec::new();
    for _ in 0..300 {
        let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        half_open.push(tcp);
    }
    let attempts = (0..150).map(|i| {
        let url = format!("{}?token={}", s.url(), s.token(&format!("f{i}")));
        tokio::spawn(async move { Client::connect(url).await })
    });
    let mut held = Vec::new();
    for attempt in futures_util::future::join_all(attempts).await {
        match attempt.unwrap() {
            Ok(c) => held.push(c),
            Err(r) => {
                assert_eq!(r.status, 429, "{:?}", r.body);
                assert!(r.body["error"].is_string(), "{:?}", r.body);
            }
        }
    }
    assert!(
        !held.is_empty() && held.len() <= 40,
        "{} connections held",
        held.len()
    );
    // The half-open requests are dropped at the timeout.
    for tcp in &mut half_open {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a half-open request outlived its timeout");
    }
    eventually("the held connections counted online", async || {
        s.online() == held.len()
    })
    .await;
    assert_eq!(s.online(), held.len());
    drop(held);
    // A second later the address is welcome again, and nothing is left.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut c = s.client("after").await;
    c.join("g").await;
    eventually("only the last client online", async || s.online() == 1).await;
    assert_eq!(s.online(), 1, "only the last client is left");
}

/// The catalog's text inputs through the SSE fallback: each one posted to
/// an SSE session (`POST /sse/send`) gets the outcome it gets over a
/// WebSocket, on the stream; then the SSE endpoints' own hostile inputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_catalog_over_sse() {
    use roomhub_tests::sse::{SseClient, post_to};
    let s = TestServer::start_with(|c| {
        c.core.rate_limit_per_second = 0;
        c.max_connections_per_user = 0;
    })
    .await;
    let token = victim_token("victim");
    let mut v = SseClient::open(s.addr, &token).await;
    v.join("g").await;
    let mut ran = 0;
    for (n, case) in catalog().iter().enumerate() {
        let Input::Text(t) = &case.input else {
            continue;
        };
        let name = case.name;
        match case.expect {
            Error(code) => {
                let (status, _) = v.post(t.as_bytes()).await;
                assert_eq!(status, 204, "{name}");
                let e = v.recv_type("error").await;
                assert_eq!(e["payload"]["code"], code, "{name}: {e}");
            }
            Ack => {
                let sent: serde_json::Value = serde_json::from_str(t.trim()).unwrap();
                assert_eq!(v.post(t.as_bytes()).await.0, 204, "{name}");
                assert_eq!(v.recv_type("ack").await["id"], sent["id"], "{name}");
            }
            Close(code) => {
                let mut c = SseClient::open(s.addr, &s.token(&format!("closer{n}"))).await;
                let (status, _) = c.post(t.as_bytes()).await;
                assert!(status == 413 || status == 400, "{name}: {status}");
                assert_eq!(c.closed().await.0, code, "{name}");
            }
            Alive => {
                v.post(t.as_bytes()).await;
            }
        }
        ran += 1;
        v.send_json(json!({"type": "online_users", "room": "g", "id": format!("alive{n}")}))
            .await;
        assert_eq!(
            v.recv_type("ack").await["id"],
            format!("alive{n}"),
            "{name}"
        );
    }
    assert!(ran >= 50, "{ran} text cases");

    // The endpoints' own inputs: sessions that are not one, and bodies and
    // headers nobody should send.
    for session in [
        "",
        ".",
        "0",
        "0.x",
        "18446744073709551616.00000000000000000000000000000000",
        "0.0000000000000000000000000000000g",
        "%00",
        "0.00000000000000000000000000000000%0d%0aSet-Cookie:%20x",
        &"9".repeat(5000),
    ] {
        let (status, body) = post_to(s.addr, session, b"{}").await;
        assert!(
            matches!(status, 400 | 404 | 431),
            "session {session:?}: {status} {body}"
        );
    }
    let garbage_ids = [
        "not json",
        "{\"room\":\"g\"}",
        "{\"room\":\"g\",\"epoch\":\"e\",\"offset\":-1}",
        "{\"room\":\"g\",\"epoch\":\"e\",\"offset\":1e400}",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    ];
    for id in garbage_ids {
        let mut c = SseClient::connect(
            s.addr,
            &format!("token={token}&rooms=g"),
            &[("Last-Event-ID", id)],
        )
        .await
        .expect("a bad Last-Event-ID is ignored");
        let info = c.recv_type("room_info").await;
        assert_eq!(info["room"], "g", "{id}");
    }
    // Rooms in the query that are no rooms: the join's error, on the stream.
    let mut c = SseClient::connect(
        s.addr,
        &format!("token={token}&rooms=%00,{}", "r".repeat(65)),
        &[],
    )
    .await
    .expect("stream");
    assert_eq!(
        c.recv_type("error").await["payload"]["code"],
        "INVALID_ROOM"
    );
    assert_eq!(
        c.recv_type("error").await["payload"]["code"],
        "INVALID_ROOM"
    );
    let many = (0..65)
        .map(|i| format!("r{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let refused = SseClient::connect(s.addr, &format!("token={token}&rooms={many}"), &[])
        .await
        .err()
        .expect("too many rooms");
    assert_eq!(refused.status, 400);
    // A body that is not UTF-8 part-way through a character ends only the
    // session it was posted to.
    let (status, _) = v.post(&[b'{', 0xe2, 0x82]).await;
    assert_eq!(status, 400);
    assert_eq!(v.closed().await.0, 1007);
    let (status, health) = s.get("/healthz").await;
    assert_eq!((status, health.as_str()), (200, r#"{"status":"ok"}"#));
}

/// A TLS ClientHello record with no extensions: `version` in the hello,
/// offering `suites`.
fn client_hello(version: [u8; 2], suites: &[u16]) -> Vec<u8> {
    let mut body = version.to_vec();
    body.extend([7u8; 32]);
    body.push(0);
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for suite in suites {
        body.extend(suite.to_be_bytes());
    }
    body.extend([1, 0]);
    let mut handshake = vec![1u8];
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 3, 1];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// Hostile input to a TLS listener, on the wire and on disk: each wire
/// input ends in an alert or a close within the handshake timeout, never
/// an HTTP answer, and `wss://` clients keep talking; each bad pair of
/// files is refused at start with a reason naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tls_inputs() {
    use roomhub_tests::tls::TestCa;
    use tokio::io::AsyncReadExt;
    let ca = TestCa::new();
    let leaf = ca.leaf("served");
    let dir = std::env::temp_dir().join(format!("roomhub-hostile-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = leaf.write_to(&dir);
    let s = TestServer::start_with(|c| {
        c.tls = Some(files.clone());
        c.handshake_timeout = Duration::from_millis(500);
    })
    .await;
    let wss = |user: &str| {
        format!(
            "wss://localhost:{}/ws?token={}",
            s.addr.port(),
            s.token(user)
        )
    };
    let mut alice = Client::connect_tls(wss("alice"), ca.connector())
        .await
        .ok()
        .unwrap();
    let mut bob = Client::connect_tls(wss("bob"), ca.connector())
        .await
        .ok()
        .unwrap();
    alice.join("g").await;
    bob.join("g").await;
    let wire: Vec<(&str, Vec<u8>)> = vec![
        (
            "plain HTTP",
            b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("zeros", vec![0; 64 * 1024]),
        ("TLS 1.0 only", client_hello([3, 1], &[0x002f, 0x0035])),
        ("SSL 3.0", client_hello([3, 0], &[0x000a])),
        // RC4, 3DES, RSA key exchange with CBC: none is offered back.
        (
            "weak suites only",
            client_hello([3, 3], &[0x0005, 0x000a, 0x002f, 0x003c]),
        ),
        (
            "a record that claims 16 KiB and stops",
            vec![0x16, 3, 1, 0x40, 0],
        ),
        (
            "a handshake cut short",
            client_hello([3, 3], &[0x1301])[..20].to_vec(),
        ),
        ("nothing at all", Vec::new()),
    ];
    for (name, bytes) in &wire {
        let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        tcp.write_all(bytes).await.ok();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        assert!(
            read.is_ok(),
            "{name}: the connection outlived the handshake timeout"
        );
        assert!(
            !answer.starts_with(b"HTTP"),
            "{name}: answered in plain HTTP"
        );
        assert!(
            answer.is_empty() || answer[0] == 0x15,
            "{name}: answered with something other than an alert: {:?}",
            &answer[..answer.len().min(16)]
        );
        alice
            .send_json(json!({"type": "send_message", "room": "g", "payload": {"content": format!("after {name}")}}))
            .await;
        let m = bob.recv_type("new_message").await;
        assert_eq!(m["payload"]["content"], format!("after {name}"));
    }

    // Files that do not load: the server does not start, and says which
    // file and why.
    let other = ca.leaf("other");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().to_string()
    };
    let cert = write("good-cert.pem", &leaf.cert_pem);
    let key = write("good-key.pem", &leaf.key_pem);
    let on_disk: Vec<(&str, String, String, &str)> = vec![
        (
            "missing cert",
            dir.join("absent.pem").to_string_lossy().to_string(),
            key.clone(),
            "cannot read",
        ),
        (
            "empty cert",
            write("empty.pem", ""),
            key.clone(),
            "no CERTIFICATE block",
        ),
        (
            "garbage in a PEM block",
            write(
                "garbage.pem",
                "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n",
            ),
            key.clone(),
            "garbage.pem",
        ),
        (
            "binary garbage",
            write("binary.pem", "\u{0}\u{1}\u{2}\u{ff}"),
            key.clone(),
            "binary.pem",
        ),
        (
            "a key in the cert file",
            key.clone(),
            key.clone(),
            "no CERTIFICATE block",
        ),
        (
            "a cert in the key file",
            cert.clone(),
            cert.clone(),
            "no usable PEM private key",
        ),
        (
            "a key that is not the cert's",
            cert.clone(),
            write("other-key.pem", &other.key_pem),
            "other-key.pem",
        ),
        (
            "a truncated key",
            cert.clone(),
            write("cut-key.pem", &leaf.key_pem[..leaf.key_pem.len() / 2]),
            "cut-key.pem",
        ),
    ];
    for (name, cert, key, says) in on_disk {
        let args = roomhub_net::parse_cli([
            "roomhub",
            "--jwt-secret",
            "s",
            "--memory",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ])
        .expect("flags parse");
        let err = match roomhub_net::ServerConfig::from_args(&args.server, 1) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => e,
        };
        assert!(err.contains(says), "{name}: {err}");
    }
    let alone = roomhub_net::parse_cli(["roomhub", "--tls-cert", &cert]);
    assert!(alone.is_err(), "a certificate without its key");
    drop(s);
    std::fs::remove_dir_all(&dir).ok();
}
