//! Opening benchmark connections (tokens, source addresses) and reading the
//! few fields the generator needs out of server frames without a JSON parser.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use memchr::memmem;
use roomhub_net::dev::{TokenSpec, mint_token};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

pub type Ws = WebSocketStream<TcpStream>;

/// Where and as whom the generator connects.
pub struct Target {
    /// The servers (several: the nodes of one cluster), as URL and address.
    nodes: Vec<(String, SocketAddr)>,
    sources: Vec<IpAddr>,
    secret: String,
}

/// Tokens outlive any run.
const TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);

impl Target {
    /// `urls` is `ws://host:port/path`, or several separated by commas (the
    /// nodes of a cluster: connection `i` goes to node `i` modulo their
    /// count). Connections are spread over `source_addrs` loopback sources
    /// (127.0.0.2, 127.0.0.3, ...) when the server is on loopback, since one
    /// source address has only about 28,000 ephemeral ports.
    pub fn new(urls: &str, secret: String, source_addrs: usize) -> Result<Target, String> {
        let nodes = urls
            .split(',')
            .map(|url| Ok((url.to_string(), address_of(url)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let addr = nodes[0].1;
        let sources = if addr.ip().is_loopback() && addr.is_ipv4() {
            (0..source_addrs.clamp(1, 250))
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Target {
            nodes,
            sources,
            secret,
        })
    }

    /// The first server's address (its HTTP endpoints).
    pub fn addr(&self) -> SocketAddr {
        self.nodes[0].1
    }

    /// Opens connection number `index` as `user`, to node `index` (modulo
    /// the node count).
    pub async fn connect(&self, index: usize, user: &str) -> Result<Ws, String> {
        self.connect_to(index, index, user).await
    }

    /// Opens connection number `index` as `user`, to node `node` (modulo
    /// the node count).
    pub async fn connect_to(&self, node: usize, index: usize, user: &str) -> Result<Ws, String> {
        let (url, addr) = &self.nodes[node % self.nodes.len()];
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| format!("socket: {e}"))?;
        if !self.sources.is_empty() {
            let source = self.sources[index % self.sources.len()];
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(|e| format!("bind {source}: {e}"))?;
        }
        let stream = socket
            .connect(*addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let spec = TokenSpec {
            user: user.to_string(),
            name: None,
            rooms: Vec::new(),
        };
        let token = mint_token(&self.secret, &spec, TOKEN_TTL, unix_seconds());
        let url = format!("{url}?token={token}");
        // Small buffers: the idle mode holds tens of thousands of these.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) = client_async_with_config(url, stream, Some(config))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        Ok(ws)
    }
}

/// The socket address of a `ws://host:port/path` URL.
fn address_of(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sends one text frame.
pub async fn send(ws: &mut Ws, text: String) -> Result<(), String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| e.to_string())
}

/// The next text frame, or `None` when the connection ended.
pub async fn next_text(ws: &mut Ws) -> Option<tokio_tungstenite::tungstenite::Utf8Bytes> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(text)) => return Some(text),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Joins `room` (recovering after `since`, if given) and returns the
/// `room_info` frame, counting the `new_message` frames replayed before it.
pub async fn join(
    ws: &mut Ws,
    room: &str,
    since: Option<(&str, u64)>,
) -> Result<(String, Vec<u64>), String> {
    let request = match since {
        Some((epoch, offset)) => format!(
            r#"{{"type":"join_room","payload":{{"room_id":"{room}","since":{{"epoch":"{epoch}","offset":{offset}}}}}}}"#
        ),
        // The seed protocol's form, which the peers in ../shared/peers
        // speak too.
        None => format!(r#"{{"type":"join_room","payload":{{"room_id":"{room}"}}}}"#),
    };
    send(ws, request).await?;
    let mut replayed = Vec::new();
    loop {
        let frame = next_text(ws).await.ok_or("closed while joining")?;
        match kind(&frame) {
            Kind::RoomInfo => return Ok((frame.to_string(), replayed)),
            Kind::NewMessage => replayed.push(number(&frame, "\"offset\":").unwrap_or(0)),
            Kind::Error => return Err(format!("join refused: {}", frame.as_str())),
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NewMessage,
    Ack,
    RoomInfo,
    Error,
    Other,
}

/// The frame's `type`; the server writes it first.
pub fn kind(frame: &str) -> Kind {
    let Some(rest) = frame.strip_prefix(r#"{"type":""#) else {
        return Kind::Other;
    };
    let name = rest.split('"').next().unwrap_or("");
    match name {
        "new_message" => Kind::NewMessage,
        "ack" => Kind::Ack,
        "room_info" => Kind::RoomInfo,
        "error" => Kind::Error,
        _ => Kind::Other,
    }
}

/// The unsigned number right after `key` (for example `"offset":`).
pub fn number(frame: &str, key: &str) -> Option<u64> {
    let at = memmem::find(frame.as_bytes(), key.as_bytes())? + key.len();
    let digits = frame[at..].bytes().take_while(u8::is_ascii_digit).count();
    frame[at..at + digits].parse().ok()
}

/// The string value right after `key` (for example `"content":"`), up to the
/// next quote; the generator's own strings contain no escapes.
pub fn string<'a>(frame: &'a str, key: &str) -> Option<&'a str> {
    let at = memmem::find(frame.as_bytes(), key.as_bytes())? + key.len();
    let len = memchr::memchr(b'"', &frame.as_bytes()[at..])?;
    Some(&frame[at..at + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_in_server_frames() {
        let frame = r#"{"type":"new_message","room":"g","id":"e-1","offset":17,"payload":{"content":"3.9.120.m.xx"},"sender":{"id":"u3","name":"u3"},"timestamp":"2026-01-01T00:00:00.000Z"}"#;
        assert_eq!(kind(frame), Kind::NewMessage);
        assert_eq!(number(frame, "\"offset\":"), Some(17));
        assert_eq!(string(frame, "\"content\":\""), Some("3.9.120.m.xx"));
        let ack =
            r#"{"type":"ack","id":"41","room":"g","payload":{"message_id":"e-9","offset":9}}"#;
        assert_eq!(kind(ack), Kind::Ack);
        assert_eq!(string(ack, "\"id\":\""), Some("41"));
        assert_eq!(kind(r#"{"type":"user_joined"}"#), Kind::Other);
        assert_eq!(kind("not json"), Kind::Other);
        assert_eq!(number(frame, "\"missing\":"), None);
    }

    #[test]
    fn a_cluster_is_its_nodes_urls_separated_by_commas() {
        let two = Target::new(
            "ws://127.0.0.1:9001/ws,ws://127.0.0.1:9011/ws",
            "s".into(),
            1,
        )
        .unwrap();
        let ports: Vec<u16> = two.nodes.iter().map(|(_, a)| a.port()).collect();
        assert_eq!(ports, [9001, 9011]);
        assert_eq!(two.addr().port(), 9001);
        assert!(Target::new("ws://127.0.0.1:9001/ws,http://x/ws", "s".into(), 1).is_err());
    }
}
