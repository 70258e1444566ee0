//! The server API's methods. Each reads its params, asks the hub (on every
//! node, in a cluster, through [`each_node`]) and shapes the answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use roomhub_core::api::{
    ApiAnswer, ApiCall, DISCONNECT_CODES, DISCONNECT_DEFAULT_CODE, PresentUser,
};
use roomhub_core::{ParseLimits, PublishOutcome, parse_publish};
use serde_json::{Map, Value, json};

use super::ApiError;
use super::params::Params;
use crate::http::state::HttpState;

/// How long a publish waits for its message to be stored.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);
/// How long a call waits for the hub's answer.
const CALL_WAIT: Duration = Duration::from_secs(5);
/// Rooms in one `broadcast` at most.
const BROADCAST_MAX: usize = 1000;
/// Messages in an API `history` page at most (a backend may read more at
/// once than a client's 100); without a `limit`, the clients' default.
const HISTORY_MAX: usize = 1000;
/// A close frame's reason fits in 123 bytes (RFC 6455).
const REASON_MAX: usize = 123;

pub(super) async fn run(
    state: &HttpState,
    method: &str,
    params: Map<String, Value>,
) -> Result<Value, ApiError> {
    let p = Params {
        map: &params,
        max_room_bytes: state.config().core.max_room_name_bytes,
    };
    match method {
        "publish" => publish(state, params.clone()).await,
        "broadcast" => broadcast(state, params).await,
        "disconnect" => {
            let user = p.user("user")?;
            let code = match p.opt_u64("code")? {
                None => DISCONNECT_DEFAULT_CODE,
                Some(c) => u16::try_from(c)
                    .ok()
                    .filter(|c| DISCONNECT_CODES.contains(c))
                    .ok_or_else(|| {
                        ApiError::bad(
                            "code must be 4100-4199 (do not reconnect) or 4200-4299 (reconnect)",
                        )
                    })?,
            };
            let reason = p.opt_string("reason", REASON_MAX)?.map(Arc::from);
            let call = ApiCall::Disconnect { user, code, reason };
            Ok(json!({ "connections": connections(each_node(state, call).await?) }))
        }
        "subscribe" | "unsubscribe" => {
            let (user, room) = (p.user("user")?, p.room("room")?);
            let call = if method == "subscribe" {
                ApiCall::Subscribe { user, room }
            } else {
                ApiCall::Unsubscribe { user, room }
            };
            Ok(json!({ "connections": connections(each_node(state, call).await?) }))
        }
        "presence" | "presence_stats" => {
            let room = p.room("room")?;
            let answers = each_node(state, ApiCall::Presence { room: room.clone() }).await?;
            let users = merge_presence(answers);
            if method == "presence" {
                let users: Vec<Value> = users
                    .values()
                    .map(|u| json!({"id": &*u.user.id, "name": &*u.user.name, "connections": u.connections}))
                    .collect();
                Ok(json!({"room": room.as_str(), "users": users}))
            } else {
                let conns: usize = users.values().map(|u| u.connections).sum();
                Ok(json!({"room": room.as_str(), "users": users.len(), "connections": conns}))
            }
        }
        "rooms" => {
            let pattern = p.opt_string("pattern", 256)?.map(Arc::from);
            rooms(each_node(state, ApiCall::Rooms { pattern }).await?)
        }
        "info" => info(state, each_node(state, ApiCall::Info).await?),
        "user" => {
            let user = p.user("user")?;
            let answers = each_node(state, ApiCall::User { user: user.clone() }).await?;
            let list: Vec<Value> = answers
                .into_iter()
                .flat_map(|a| match a {
                    ApiAnswer::User { connections } => connections,
                    _ => Vec::new(),
                })
                .map(|c| {
                    let rooms: Vec<&str> = c.rooms.iter().map(|r| r.as_str()).collect();
                    json!({"conn": format!("c{}", c.conn), "rooms": rooms})
                })
                .collect();
            Ok(json!({"user": &*user, "connections": list}))
        }
        "history" => {
            let room = p.room("room")?;
            let limit = match p.opt_u64("limit")? {
                None => roomhub_core::HISTORY_DEFAULT_LIMIT,
                Some(0) => return Err(ApiError::bad("limit must be a positive integer")),
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(HISTORY_MAX),
            };
            let before = p.opt_u64("before")?;
            let call = ApiCall::History {
                room: room.clone(),
                limit,
                before,
            };
            match this_node(state, call).await? {
                ApiAnswer::History {
                    epoch,
                    offset,
                    messages,
                    has_more,
                } => {
                    let messages: Vec<Value> = messages
                        .iter()
                        .filter_map(|m| serde_json::from_str(m).ok())
                        .collect();
                    Ok(json!({
                        "room": room.as_str(),
                        "epoch": epoch,
                        "offset": offset,
                        "messages": messages,
                        "has_more": has_more,
                    }))
                }
                _ => Err(ApiError::unavailable(
                    "the room's history cannot be read now; retry",
                )),
            }
        }
        "history_remove" => {
            // The lineage ends where the room's order is kept (the store or
            // the broker, the same from every node); then every node that
            // has the room open reads its position again, so its members
            // get a `room_reset` now.
            let room = p.room("room")?;
            let call = ApiCall::HistoryRemove { room: room.clone() };
            let ApiAnswer::Removed = this_node(state, call).await? else {
                return Err(ApiError::unavailable(
                    "the room's history cannot be removed now; retry",
                ));
            };
            let reset = each_node(state, ApiCall::ResetRoom { room: room.clone() }).await?;
            Ok(json!({"room": room.as_str(), "connections": connections(reset)}))
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "UNKNOWN_METHOD",
            format!(
                "no method {:?}; see docs/api.md",
                method.chars().take(64).collect::<String>()
            ),
        )),
    }
}

/// The call answered by this node's hub alone (what the store or the
/// broker holds is the same from every node).
async fn this_node(state: &HttpState, call: ApiCall) -> Result<ApiAnswer, ApiError> {
    let gone = || ApiError::unavailable("the server is shutting down");
    let done = state.conn.inbox.api(call).await.map_err(|()| gone())?;
    tokio::time::timeout(CALL_WAIT, done)
        .await
        .map_err(|_| ApiError::unavailable("the hub did not answer in time; retry"))?
        .map_err(|_| gone())
}

/// The call answered by every node's hub, each for its own connections:
/// this node's alone, or in a cluster every live node's (those that
/// answered within the gather wait).
async fn each_node(state: &HttpState, call: ApiCall) -> Result<Vec<ApiAnswer>, ApiError> {
    if let Some(view) = &state.cluster {
        return view
            .calls
            .call_all(call)
            .await
            .map_err(|e| ApiError::unavailable(format!("{e}; retry")));
    }
    Ok(vec![this_node(state, call).await?])
}

fn connections(answers: Vec<ApiAnswer>) -> usize {
    answers
        .iter()
        .map(|a| match a {
            ApiAnswer::Connections { connections } => *connections,
            _ => 0,
        })
        .sum()
}

/// Every node's users of a room, each user once, connections summed.
fn merge_presence(answers: Vec<ApiAnswer>) -> BTreeMap<Arc<str>, PresentUser> {
    let mut users: BTreeMap<Arc<str>, PresentUser> = BTreeMap::new();
    for answer in answers {
        let ApiAnswer::Presence { users: here } = answer else {
            continue;
        };
        for u in here {
            users
                .entry(u.user.id.clone())
                .and_modify(|known| known.connections += u.connections)
                .or_insert(u);
        }
    }
    users
}

fn rooms(answers: Vec<ApiAnswer>) -> Result<Value, ApiError> {
    let mut rooms: BTreeMap<String, (BTreeSet<Arc<str>>, usize)> = BTreeMap::new();
    for answer in answers {
        let ApiAnswer::Rooms { rooms: here } = answer else {
            continue;
        };
        for r in here {
            let entry = rooms.entry(r.room.as_str().to_string()).or_default();
            entry.0.extend(r.users);
            entry.1 += r.connections;
        }
    }
    let list: Vec<Value> = rooms
        .into_iter()
        .map(|(room, (users, conns))| json!({"room": room, "users": users.len(), "connections": conns}))
        .collect();
    Ok(json!({ "rooms": list }))
}

fn info(state: &HttpState, answers: Vec<ApiAnswer>) -> Result<Value, ApiError> {
    let (mut conns, mut users, mut rooms) = (0, BTreeSet::new(), 0);
    let mut nodes = Vec::new();
    for answer in answers {
        let ApiAnswer::Info {
            connections,
            users: here,
            rooms: here_rooms,
        } = answer
        else {
            continue;
        };
        nodes.push(json!({"connections": connections, "users": here.len(), "rooms": here_rooms}));
        conns += connections;
        rooms += here_rooms;
        users.extend(here);
    }
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.metrics.uptime_secs(),
        "nodes": nodes,
        "connections": conns,
        "users": users.len(),
        "rooms": rooms,
    }))
}

/// `publish {room, payload: {content, reply_to?}, sender?: {id, name}}`:
/// sequenced, stored and delivered like a member's message (the same rules
/// and error codes as `send_message`); answered once stored.
async fn publish(state: &HttpState, params: Map<String, Value>) -> Result<Value, ApiError> {
    let limits = ParseLimits::from(&state.config().core);
    let body = serde_json::to_vec(&Value::Object(params)).unwrap_or_default();
    let publish = parse_publish(&body, &limits)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code.as_str(), e.message))?;
    let done = state
        .conn
        .inbox
        .publish(publish)
        .await
        .map_err(|()| ApiError::unavailable("the server is shutting down"))?;
    match tokio::time::timeout(PUBLISH_WAIT, done).await {
        Ok(Ok(PublishOutcome::Stored {
            room,
            message_id,
            offset,
        })) => Ok(json!({
            "room": room.as_str(),
            "message_id": &*message_id,
            "offset": offset,
        })),
        _ => Err(ApiError::unavailable(
            "the message could not be stored; retry",
        )),
    }
}

/// `broadcast {rooms: [..], payload, sender?}`: one publish per room, all
/// at once; each room's outcome in order (a room that fails does not stop
/// the others).
async fn broadcast(state: &HttpState, mut params: Map<String, Value>) -> Result<Value, ApiError> {
    let rooms = match params.remove("rooms") {
        Some(Value::Array(rooms)) if !rooms.is_empty() && rooms.len() <= BROADCAST_MAX => rooms,
        Some(Value::Array(_)) => {
            return Err(ApiError::bad(format!(
                "rooms must list 1 to {BROADCAST_MAX} rooms"
            )));
        }
        _ => return Err(ApiError::bad("rooms must be an array of room names")),
    };
    let publishes = rooms.into_iter().map(|room| {
        let mut one = params.clone();
        one.insert("room".into(), room);
        publish(state, one)
    });
    let outcomes = futures_util::future::join_all(publishes).await;
    let results: Vec<Value> = outcomes
        .into_iter()
        .map(|o| match o {
            Ok(result) => json!({ "result": result }),
            Err(e) => e.body(),
        })
        .collect();
    Ok(json!({ "results": results }))
}
