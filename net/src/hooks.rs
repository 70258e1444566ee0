//! Backend hooks: HTTP endpoints of the app that the server asks before it
//! lets something happen. The connect hook (`--hook-connect-url`) is asked
//! before a WebSocket upgrade, with the verified identity; it may refuse the
//! connection or change the user's name and `rooms`. A hook that times out
//! (`--hook-timeout-ms`) or answers anything but the documented shape fails
//! closed (`UNAVAILABLE`), or open with `--hook-fail-open`. The join and
//! publish hooks (`--hook-join-url`, `--hook-publish-url`) are asked by the
//! hub through [`Hooks::decide`], off its thread. See `docs/hooks.md`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use roomhub_core::api::{HookCall, HookVerdict};
use roomhub_core::{Identity, RoomAccess};
use serde_json::{Value, json};

/// The most of a hook's answer that is read.
const ANSWER_MAX_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookConfig {
    /// `--hook-connect-url`.
    pub connect: Option<Uri>,
    /// `--hook-join-url`.
    pub join: Option<Uri>,
    /// `--hook-publish-url`.
    pub publish: Option<Uri>,
    /// The longest content a publish hook may put in (the protocol's limit).
    pub max_content_bytes: usize,
    /// `--hook-timeout-ms` (1000 by default).
    pub timeout: Duration,
    /// `--hook-fail-open`: a hook that fails lets the action through.
    pub fail_open: bool,
}

/// What a hook decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<T> {
    Allow(T),
    Deny {
        code: String,
        message: String,
    },
    /// No usable answer (timeout, an error status, garbage) and the hooks
    /// fail closed.
    Unavailable(String),
}

/// The hooks of one server. Clones share their configuration, which a
/// reload replaces for the calls made after it.
#[derive(Clone)]
pub struct Hooks {
    config: Arc<RwLock<Arc<HookConfig>>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Hooks {
    pub fn new(config: HookConfig) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Hooks {
            config: Arc::new(RwLock::new(Arc::new(config))),
            client,
        }
    }

    /// The URLs and rules of the calls made from now on.
    pub fn set_config(&self, config: HookConfig) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }

    fn current(&self) -> Arc<HookConfig> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks the connect hook, if there is one, about a verified identity.
    /// Allowed: the identity, with the name and `rooms` the hook gave.
    pub async fn connect(&self, identity: Identity, remote: &str) -> Verdict<Identity> {
        let config = self.current();
        let Some(uri) = &config.connect else {
            return Verdict::Allow(identity);
        };
        let body = json!({
            "hook": "connect",
            "user": {"id": &*identity.user.id, "name": &*identity.user.name},
            "remote_addr": remote,
        });
        let answer = match self.consult(uri, &body).await {
            Ok(Ok(answer)) => answer,
            Ok(Err((code, message))) => return Verdict::Deny { code, message },
            Err(why) => return self.failed(identity, why),
        };
        let mut renamed = identity.clone();
        match answer.get("name") {
            None | Some(Value::Null) => {}
            Some(Value::String(n)) if !n.is_empty() && n.len() <= 256 => {
                renamed.user.name = n.as_str().into();
            }
            Some(_) => return self.failed(identity, "name must be a non-empty string".into()),
        }
        match answer.get("rooms") {
            None | Some(Value::Null) => {}
            Some(Value::Array(rooms)) if rooms.iter().all(Value::is_string) => {
                renamed.rooms = Some(RoomAccess::new(rooms.iter().filter_map(Value::as_str)));
            }
            Some(_) => return self.failed(identity, "rooms must be a list of strings".into()),
        }
        Verdict::Allow(renamed)
    }

    /// Asks the join or publish hook what the hub asked about.
    pub async fn decide(&self, call: &HookCall) -> HookVerdict {
        let config = self.current();
        let (uri, body) = match call {
            HookCall::Join { user, room } => (
                &config.join,
                json!({"hook": "join", "user": {"id": &*user.id, "name": &*user.name}, "room": room.as_str()}),
            ),
            HookCall::Publish {
                user,
                room,
                content,
            } => (
                &config.publish,
                json!({"hook": "publish", "user": {"id": &*user.id, "name": &*user.name}, "room": room.as_str(), "payload": {"content": &**content}}),
            ),
        };
        let Some(uri) = uri else {
            return HookVerdict::Allow { content: None };
        };
        let answer = match self.consult(uri, &body).await {
            Ok(Ok(answer)) => answer,
            Ok(Err((code, message))) => {
                return HookVerdict::Deny {
                    code: code.into(),
                    message: message.into(),
                };
            }
            Err(why) => return self.failed((), why).into(),
        };
        if matches!(call, HookCall::Join { .. }) {
            return HookVerdict::Allow { content: None };
        }
        let replaced = match answer.get("payload") {
            None | Some(Value::Null) => return HookVerdict::Allow { content: None },
            Some(Value::Object(p)) => p.get("content"),
            Some(_) => {
                return self
                    .failed((), "payload must be an object {content}".into())
                    .into();
            }
        };
        match replaced {
            Some(Value::String(c)) if !c.is_empty() && c.len() <= config.max_content_bytes => {
                HookVerdict::Allow {
                    content: Some(c.as_str().into()),
                }
            }
            _ => self
                .failed(
                    (),
                    format!(
                        "payload.content must be a non-empty string of at most {} bytes",
                        config.max_content_bytes
                    ),
                )
                .into(),
        }
    }

    /// A hook that failed (`why`): refused as unavailable, or, failing
    /// open, `allowed` as if the hook had said yes and changed nothing.
    fn failed<T>(&self, allowed: T, why: String) -> Verdict<T> {
        let config = self.current();
        if config.fail_open {
            tracing::warn!("hook failed ({why}); failing open");
            Verdict::Allow(allowed)
        } else {
            tracing::warn!("hook failed: {why}");
            Verdict::Unavailable(why)
        }
    }

    /// Asks a hook and reads its decision: the answer when it allowed,
    /// its refusal (code, message), or why it failed.
    async fn consult(
        &self,
        uri: &Uri,
        body: &Value,
    ) -> Result<Result<Value, (String, String)>, String> {
        let answer = self.ask(uri, body).await?;
        match read_decision(&answer)? {
            None => Ok(Ok(answer)),
            Some(refusal) => Ok(Err(refusal)),
        }
    }

    /// POSTs `body` and reads a JSON object back, within the timeout.
    async fn ask(&self, uri: &Uri, body: &Value) -> Result<Value, String> {
        let config = self.current();
        let request = hyper::Request::post(uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| format!("bad hook request: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("the hook could not be reached: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("the hook answered {}", response.status()));
            }
            let limited = http_body_util::Limited::new(response.into_body(), ANSWER_MAX_BYTES);
            let bytes = limited
                .collect()
                .await
                .map_err(|e| format!("the hook's answer could not be read: {e}"))?
                .to_bytes();
            match serde_json::from_slice(&bytes) {
                Ok(Value::Object(m)) => Ok(Value::Object(m)),
                _ => Err("the hook's answer is not a JSON object".to_string()),
            }
        };
        tokio::time::timeout(config.timeout, exchange)
            .await
            .map_err(|_| format!("the hook did not answer within {:?}", config.timeout))?
    }
}

/// `{"allow": true, …}` is `None`; `{"allow": false, "code"?, "message"?}`
/// is the refusal; anything else is malformed.
fn read_decision(answer: &Value) -> Result<Option<(String, String)>, String> {
    match answer.get("allow") {
        Some(Value::Bool(true)) => Ok(None),
        Some(Value::Bool(false)) => {
            let text = |name: &str, default: &str, max: usize| match answer.get(name) {
                Some(Value::String(s)) if !s.is_empty() && s.len() <= max => s.clone(),
                _ => default.to_string(),
            };
            Ok(Some((
                text("code", "FORBIDDEN", 64),
                text("message", "refused by the application", 200),
            )))
        }
        _ => Err("allow must be true or false".into()),
    }
}

/// A join or publish hook's failure, for the hub.
impl From<Verdict<()>> for HookVerdict {
    fn from(v: Verdict<()>) -> Self {
        match v {
            Verdict::Allow(()) => HookVerdict::Allow { content: None },
            Verdict::Deny { code, message } => HookVerdict::Deny {
                code: code.into(),
                message: message.into(),
            },
            Verdict::Unavailable(_) => HookVerdict::Unavailable,
        }
    }
}
