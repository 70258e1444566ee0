//! The cluster's wire format: how events are published between nodes
//! ([`Event::encode`] / [`Event::decode`]), and how a broker's stored
//! records become the core's messages and snapshots. The Redis adapter and
//! the simulated broker both use these, so their records cannot differ.

use roomhub_core::api::{ApiAnswer, ApiCall};
use roomhub_core::{
    AppendRequest, DirectMessage, Epoch, Input, NodeId, RoomName, RoomSnapshot, SequencedMessage,
    Timestamp, UserRef,
};
use serde::{Deserialize, Serialize};

use crate::cluster::broker::BrokerError;
use crate::conn::sse::{Delivered, Posted};

/// What a broker publishes to the nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Message(SequencedMessage),
    Presence(PresenceEvent),
    NodeGone(NodeId),
    Direct(DirectMessage),
    /// A node's heartbeat, published on [`channel::NODES`](crate::cluster::keys::channel::NODES): a node that
    /// stops hearing its own beats knows its subscription died silently.
    Beat(NodeId),
    /// A server API call for every node (on the node channel).
    Call(NodeCall),
    /// A node's answer to a [`NodeCall`], for the node that asked.
    Reply(NodeReply),
    /// A request posted for an SSE session another node holds.
    Forward(Forward),
    /// What became of a [`Forward`], for the node that forwarded it.
    Forwarded(Forwarded),
}

/// A request posted to one node for an SSE session on node `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    pub from: NodeId,
    pub to: NodeId,
    pub id: u64,
    pub session: String,
    pub posted: Posted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    pub to: NodeId,
    pub id: u64,
    pub delivered: Delivered,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCall {
    pub from: NodeId,
    pub id: u64,
    pub call: ApiCall,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReply {
    pub to: NodeId,
    pub id: u64,
    pub node: NodeId,
    pub answer: ApiAnswer,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEvent {
    pub room: RoomName,
    pub node: NodeId,
    pub user: UserRef,
    pub present: bool,
}

impl Event {
    /// The published form: a one-letter tag, a space, then the body.
    /// A message is `m <offset> <epoch> <append request JSON>`, so that a
    /// broker can number it without parsing JSON.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Event::Message(m) => {
                let request = AppendRequest {
                    room: m.room.clone(),
                    sender: m.sender.clone(),
                    content: m.content.clone(),
                    reply_to: m.reply_to.clone(),
                    timestamp: m.timestamp,
                    origin: m.origin.clone(),
                    ticket: m.ticket,
                };
                message_payload(m.offset, m.epoch.as_str(), &request_json(&request))
            }
            Event::Presence(p) => tagged(b'p', &serde_json::to_vec(p).unwrap_or_default()),
            Event::NodeGone(node) => format!("g {}", node.0).into_bytes(),
            Event::Beat(node) => format!("h {}", node.0).into_bytes(),
            Event::Direct(d) => tagged(b'd', &serde_json::to_vec(d).unwrap_or_default()),
            Event::Call(c) => tagged(b'a', &serde_json::to_vec(c).unwrap_or_default()),
            Event::Reply(r) => tagged(b'r', &serde_json::to_vec(r).unwrap_or_default()),
            Event::Forward(f) => tagged(b'f', &serde_json::to_vec(f).unwrap_or_default()),
            Event::Forwarded(f) => tagged(b'o', &serde_json::to_vec(f).unwrap_or_default()),
        }
    }

    /// The core input a node takes from it; `None` for a heartbeat beat,
    /// which only the node's own liveness check reads, and for server API
    /// calls and answers, which the node's API relay handles.
    pub fn into_input(self) -> Option<Input> {
        Some(match self {
            Event::Message(m) => Input::Sequenced(m),
            Event::Presence(p) => Input::RemotePresence {
                room: p.room,
                node: p.node,
                user: p.user,
                present: p.present,
            },
            Event::NodeGone(node) => Input::NodeGone { node },
            Event::Direct(d) => Input::RemoteDirect(Box::new(d)),
            Event::Beat(_)
            | Event::Call(_)
            | Event::Reply(_)
            | Event::Forward(_)
            | Event::Forwarded(_) => return None,
        })
    }

    /// Reads a published payload; `None` for anything malformed.
    pub fn decode(payload: &[u8]) -> Option<Event> {
        let (&tag, rest) = payload.split_first()?;
        let body = rest.strip_prefix(b" ")?;
        match tag {
            b'm' => {
                let text = std::str::from_utf8(body).ok()?;
                let (offset, rest) = text.split_once(' ')?;
                let (epoch, json) = rest.split_once(' ')?;
                let request: AppendRequest = serde_json::from_str(json).ok()?;
                Some(Event::Message(sequenced(
                    request,
                    epoch,
                    offset.parse().ok()?,
                )))
            }
            b'p' => serde_json::from_slice(body).ok().map(Event::Presence),
            b'g' => {
                let text = std::str::from_utf8(body).ok()?;
                text.parse().ok().map(|n| Event::NodeGone(NodeId(n)))
            }
            b'd' => serde_json::from_slice(body).ok().map(Event::Direct),
            b'a' => serde_json::from_slice(body).ok().map(Event::Call),
            b'r' => serde_json::from_slice(body).ok().map(Event::Reply),
            b'f' => serde_json::from_slice(body).ok().map(Event::Forward),
            b'o' => serde_json::from_slice(body).ok().map(Event::Forwarded),
            b'h' => {
                let text = std::str::from_utf8(body).ok()?;
                text.parse().ok().map(|n| Event::Beat(NodeId(n)))
            }
            _ => None,
        }
    }
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    out.push(tag);
    out.push(b' ');
    out.extend_from_slice(body);
    out
}

/// The JSON a broker keeps for a message before it is numbered.
pub fn request_json(request: &AppendRequest) -> String {
    // Plain data with string keys: serializing it cannot fail.
    serde_json::to_string(request).unwrap_or_default()
}

/// `m <offset> <epoch> <request JSON>`.
pub fn message_payload(offset: u64, epoch: &str, request_json: &str) -> Vec<u8> {
    format!("m {offset} {epoch} {request_json}").into_bytes()
}

/// A stored request with its place: the message every node delivers.
pub fn sequenced(request: AppendRequest, epoch: &str, offset: u64) -> SequencedMessage {
    SequencedMessage::new(request, Epoch::new(epoch), offset)
}

/// A room's snapshot from what a broker read: its epoch and head, the
/// stored (offset, request JSON) entries, and the members on live nodes.
/// Messages older than `max_age_ms` at `now` are left out: retention by age
/// applies to what is offered for recovery.
pub fn snapshot(
    room: &RoomName,
    epoch: &str,
    head: u64,
    entries: Vec<(u64, String)>,
    presence: Vec<roomhub_core::RemoteMember>,
    now: Timestamp,
    max_age_ms: u64,
) -> Result<RoomSnapshot, BrokerError> {
    let mut messages = Vec::with_capacity(entries.len());
    for (offset, json) in entries {
        let request: AppendRequest = serde_json::from_str(&json)?;
        if now.ms_since(request.timestamp) <= max_age_ms {
            messages.push(sequenced(request, epoch, offset));
        }
    }
    Ok(RoomSnapshot {
        room: room.clone(),
        epoch: Epoch::new(epoch),
        head,
        messages,
        presence,
    })
}
