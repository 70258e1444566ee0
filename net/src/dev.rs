//! Development conveniences: the generated secret used when none is
//! configured, and HS256 token minting for `roomhub token` and tests.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

/// Where the development secret is kept, relative to the working directory,
/// so that `roomhub` and `roomhub token` run from one directory agree.
pub const DEV_SECRET_PATH: &str = ".roomhub/dev-secret";

/// Reads the development secret, creating it (random, owner-only) if missing.
pub fn dev_secret() -> io::Result<String> {
    dev_secret_at(Path::new(DEV_SECRET_PATH))
}

pub fn dev_secret_at(path: &Path) -> io::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim();
        if !existing.is_empty() {
            return Ok(existing.to_string());
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes: [u8; 32] = rand::random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(path, &secret)?;
    Ok(secret)
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> io::Result<()> {
    std::fs::write(path, text)
}

/// What a minted token says.
#[derive(Clone, Debug, Default)]
pub struct TokenSpec {
    pub user: String,
    pub name: Option<String>,
    /// Room names or `prefix*` patterns; empty means any room.
    pub rooms: Vec<String>,
}

/// An HS256 token valid from `now_unix` for `ttl`.
pub fn mint_token(secret: &str, spec: &TokenSpec, ttl: Duration, now_unix: u64) -> String {
    let mut claims = json!({
        "user_id": spec.user,
        "iat": now_unix,
        "exp": now_unix + ttl.as_secs(),
    });
    if let Some(name) = &spec.name {
        claims["name"] = json!(name);
    }
    if !spec.rooms.is_empty() {
        claims["rooms"] = json!(spec.rooms);
    }
    // HS256 over a JSON object with a non-empty key cannot fail.
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 encoding of a JSON object")
}

/// The absolute path of the development secret, for messages.
pub fn dev_secret_display() -> PathBuf {
    std::env::current_dir()
        .map(|d| d.join(DEV_SECRET_PATH))
        .unwrap_or_else(|_| PathBuf::from(DEV_SECRET_PATH))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthConfig, Authenticator};

    #[test]
    fn minted_tokens_verify_and_the_dev_secret_is_stable() {
        let dir = std::env::temp_dir().join(format!("roomhub-dev-{}", std::process::id()));
        let path = dir.join("secret");
        let s1 = dev_secret_at(&path).unwrap();
        let s2 = dev_secret_at(&path).unwrap();
        assert_eq!(s1, s2);
        assert_eq!(s1.len(), 64);
        let spec = TokenSpec {
            user: "alice".into(),
            name: Some("Alice".into()),
            rooms: vec!["a".into(), "b*".into()],
        };
        let token = mint_token(&s1, &spec, Duration::from_secs(60), 1_000);
        let auth = Authenticator::new(&AuthConfig::with_secret(s1.as_bytes())).unwrap();
        let id = auth.verify_now(&token, 1_030).unwrap();
        assert_eq!(&*id.user.name, "Alice");
        assert!(id.rooms.as_ref().unwrap().allows("bee"));
        assert!(!id.rooms.as_ref().unwrap().allows("c"));
        assert_eq!(id.expires_at.unwrap().as_millis(), 1_060_000);
        assert!(auth.verify_now(&token, 1_060).is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}
