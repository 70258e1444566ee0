//! Reading an API call's params: each missing or ill-typed field is a 400
//! that names it.

use roomhub_core::RoomName;
use serde_json::{Map, Value};

use super::ApiError;

pub(crate) struct Params<'a> {
    pub(crate) map: &'a Map<String, Value>,
    pub(crate) max_room_bytes: usize,
}

impl Params<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        match self.map.get(name) {
            None | Some(Value::Null) => None,
            v => v,
        }
    }

    /// A room name by the protocol's rules.
    pub(crate) fn room(&self, name: &str) -> Result<RoomName, ApiError> {
        match self.get(name) {
            Some(Value::String(s)) => RoomName::parse(s, self.max_room_bytes)
                .map_err(|e| ApiError::bad(format!("{name}: {}", e.describe()))),
            Some(_) => Err(ApiError::bad(format!("{name} must be a string"))),
            None => Err(ApiError::bad(format!("{name} is required"))),
        }
    }

    /// A user id: a non-empty string, or an integer (as in tokens).
    pub(crate) fn user(&self, name: &str) -> Result<std::sync::Arc<str>, ApiError> {
        match self.get(name) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Ok(s.as_str().into()),
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Ok(n.to_string().into()),
            None => Err(ApiError::bad(format!("{name} is required"))),
            Some(_) => Err(ApiError::bad(format!(
                "{name} must be a user id (a non-empty string of at most 256 bytes, or an integer)"
            ))),
        }
    }

    pub(crate) fn opt_u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| ApiError::bad(format!("{name} must be a non-negative integer"))),
        }
    }

    pub(crate) fn opt_string(&self, name: &str, max: usize) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if s.len() <= max => Ok(Some(s.clone())),
            Some(Value::String(_)) => {
                Err(ApiError::bad(format!("{name} is longer than {max} bytes")))
            }
            Some(_) => Err(ApiError::bad(format!("{name} must be a string"))),
        }
    }
}
