//! Authentication before the upgrade: where the token comes from, and what a
//! valid token says about its holder.
//!
//! Tokens are JWTs: HS256 with a shared secret, RS256/ES256/EdDSA with
//! public keys given as PEM files or fetched from an identity provider's
//! JWKS ([`jwks`]), picked by the token's `kid` ([`keys`]). The algorithm
//! is fixed by each key's type, never by the token, so `alg: none` and
//! HS/RS confusion are refused. `exp` and `nbf` are checked
//! against the server's own clock (the one the core runs on), not the
//! library's, so simulations and the core agree on when a token expires.

pub(crate) mod jwks;
pub(crate) mod keys;

use std::sync::{Arc, RwLock};

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use jsonwebtoken::{Algorithm, Header, Validation, decode, decode_header};
use roomhub_core::{Identity, RoomAccess, Timestamp, UserRef};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::jwks::Jwks;
pub use crate::auth::jwks::JwksConfig;
use crate::auth::keys::{Key, MAX_KID_BYTES, candidates, names};

/// The subprotocol roomhub selects when a browser passes its token in
/// `Sec-WebSocket-Protocol`: offer `["roomhub.v1", token]`.
pub const SUBPROTOCOL: &str = "roomhub.v1";

/// Limits on what a token may claim: identities are copied into every frame.
const MAX_ID_BYTES: usize = 256;
const MAX_NAME_BYTES: usize = 256;
const MAX_ROOM_PATTERNS: usize = 1000;

/// Where the token was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Query,
    Header,
    /// In `Sec-WebSocket-Protocol`; `offered_ours` tells whether the client
    /// also offered [`SUBPROTOCOL`], which is then selected. Otherwise the
    /// token entry itself is echoed, since a browser drops a connection whose
    /// selected subprotocol it did not offer.
    Subprotocol {
        offered_ours: bool,
        entry: String,
    },
}

/// Finds the token: `?token=`, then `Authorization: Bearer`, then
/// `Sec-WebSocket-Protocol`. Pure, for fuzzing.
pub fn extract_token(headers: &HeaderMap, query: Option<&str>) -> Option<(String, TokenSource)> {
    if let Some(q) = query
        && let Some((_, token)) = form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token")
        && !token.is_empty()
    {
        return Some((token.into_owned(), TokenSource::Query));
    }
    for value in headers.get_all(AUTHORIZATION) {
        let Ok(value) = value.to_str() else { continue };
        let mut parts = value.trim().splitn(2, ' ');
        if let (Some(scheme), Some(token)) = (parts.next(), parts.next())
            && scheme.eq_ignore_ascii_case("bearer")
            && !token.trim().is_empty()
        {
            return Some((token.trim().to_string(), TokenSource::Header));
        }
    }
    let offered: Vec<&str> = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let offered_ours = offered.contains(&SUBPROTOCOL);
    offered.iter().find(|p| **p != SUBPROTOCOL).map(|entry| {
        let token = entry.strip_prefix("bearer.").unwrap_or(entry);
        (
            token.to_string(),
            TokenSource::Subprotocol {
                offered_ours,
                entry: entry.to_string(),
            },
        )
    })
}

/// A key given in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyKey {
    /// HS256.
    Secret(Vec<u8>),
    /// RS256, ES256 or EdDSA, decided by the key's type; tokens naming
    /// another `kid` than `kid` (when set) are not checked against it.
    PublicKeyPem { pem: Vec<u8>, kid: Option<String> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// Static keys (at least one, unless `jwks` is set).
    pub keys: Vec<VerifyKey>,
    /// Keys fetched from an identity provider.
    pub jwks: Option<JwksConfig>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Refuse tokens without `exp` (the default).
    pub require_exp: bool,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl AuthConfig {
    /// HS256 tokens with `secret`, and the defaults.
    pub fn with_secret(secret: &[u8]) -> Self {
        AuthConfig {
            keys: vec![VerifyKey::Secret(secret.to_vec())],
            jwks: None,
            issuer: None,
            audience: None,
            require_exp: true,
            leeway_secs: 0,
        }
    }
}

/// Why a token was refused; `reason()` labels the metric and the log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Invalid(String),
    Expired,
    NotYetValid,
    MissingExp,
    BadClaims(&'static str),
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid(_) => "invalid",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::MissingExp => "missing_exp",
            AuthError::BadClaims(_) => "bad_claims",
        }
    }

    /// The message in the 401 body.
    pub fn message(&self) -> String {
        match self {
            AuthError::Missing => {
                "missing token: pass ?token=, Authorization: Bearer, or Sec-WebSocket-Protocol"
                    .into()
            }
            AuthError::Invalid(why) => format!("invalid token: {why}"),
            AuthError::Expired => "token expired".into(),
            AuthError::NotYetValid => "token not yet valid (nbf)".into(),
            AuthError::MissingExp => "token has no exp claim".into(),
            AuthError::BadClaims(why) => format!("invalid token claims: {why}"),
        }
    }
}

/// Verifies tokens. Cheap to clone; [`Authenticator::replace`] swaps the
/// keys and rules for every clone at once (a configuration reload).
#[derive(Clone)]
pub struct Authenticator {
    current: Arc<RwLock<Arc<Verifier>>>,
}

/// One configuration's keys and rules.
struct Verifier {
    config: AuthConfig,
    keys: Vec<Key>,
    jwks: Option<Arc<Jwks>>,
    /// Every rule but the algorithm, which each key decides.
    validation: Validation,
}

impl Verifier {
    /// Builds the keys of `config`; starts fetching its JWKS unless
    /// `reuse` already fetches that one.
    fn new(config: &AuthConfig, reuse: Option<&Arc<Jwks>>) -> Result<Verifier, String> {
        let mut keys = Vec::new();
        for key in &config.keys {
            keys.push(match key {
                VerifyKey::Secret(secret) => Key::secret(secret)?,
                VerifyKey::PublicKeyPem { pem, kid } => Key::from_pem(pem, kid.clone())?,
            });
        }
        if keys.is_empty() && config.jwks.is_none() {
            return Err("no JWT key configured".into());
        }
        let jwks = match (&config.jwks, reuse) {
            (None, _) => None,
            (Some(wanted), Some(running)) if running.config() == wanted => Some(running.clone()),
            (Some(wanted), _) => Some(Jwks::start(wanted.clone())?),
        };
        let mut validation = Validation::new(Algorithm::HS256);
        // Time claims are checked against the server's clock in `verify`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.validate_aud = config.audience.is_some();
        if let Some(aud) = &config.audience {
            validation.set_audience(&[aud]);
            validation.required_spec_claims.insert("aud".into());
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        Ok(Verifier {
            config: config.clone(),
            keys,
            jwks,
            validation,
        })
    }

    /// Checks the signature against the keys `kid` and `alg` allow.
    fn decode(&self, token: &str, header: &Header, fetched: &[Key]) -> Result<Claims, AuthError> {
        let candidates = candidates(&self.keys, fetched, header.kid.as_deref());
        if candidates.is_empty() {
            return Err(AuthError::Invalid(match &header.kid {
                Some(kid) => format!("no key with kid {:?}", shorten(kid)),
                None => "no key to check it with yet".into(),
            }));
        }
        let mut last = None;
        for key in candidates.iter().filter(|k| k.algorithm == header.alg) {
            let mut validation = self.validation.clone();
            validation.algorithms = vec![key.algorithm];
            match decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = Some(e.to_string()),
            }
        }
        Err(AuthError::Invalid(last.unwrap_or_else(|| {
            format!("alg {:?} is not that of the key it names", header.alg)
        })))
    }
}

/// Whether `pem` holds a public key roomhub can verify with.
pub(crate) fn check_pem(pem: &[u8]) -> Result<(), String> {
    Key::from_pem(pem, None).map(drop)
}

/// At most 64 characters of an untrusted text, for messages.
fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    user_id: Option<Value>,
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    name: Option<Value>,
    #[serde(default)]
    rooms: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    nbf: Option<Value>,
}

impl Authenticator {
    /// Builds the keys (and starts fetching the JWKS, on the current
    /// runtime, if there is one).
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        Ok(Authenticator {
            current: Arc::new(RwLock::new(Arc::new(Verifier::new(config, None)?))),
        })
    }

    fn verifier(&self) -> Arc<Verifier> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts `config` in force for the tokens verified from now on; an
    /// invalid one is refused and the one in force stays. A JWKS already
    /// fetched from the same URL with the same periods is kept.
    pub fn replace(&self, config: &AuthConfig) -> Result<(), String> {
        let old = self.verifier();
        let new = Verifier::new(config, old.jwks.as_ref())?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        Ok(())
    }

    /// Whether every source of keys can verify tokens: false until a
    /// JWKS has been fetched once.
    pub fn ready(&self) -> bool {
        self.verifier().jwks.as_ref().is_none_or(|j| j.ready())
    }

    /// Fetches of the JWKS made so far (0 without one).
    pub fn jwks_fetches(&self) -> u64 {
        self.verifier().jwks.as_ref().map_or(0, |j| j.fetches())
    }

    /// Verifies a token at `now_unix` (seconds) and returns who holds it.
    /// A `kid` the provider's set lacks makes it fetch the set again (at
    /// most once per refetch interval) before the token is refused.
    pub async fn verify(&self, token: &str, now_unix: u64) -> Result<Identity, AuthError> {
        let verifier = self.verifier();
        let header = header_of(token)?;
        let fetched = match verifier.unknown_kid(&header) {
            Some((jwks, kid)) => jwks.refetch_for(kid).await,
            None => verifier.fetched(),
        };
        verifier.check(token, &header, &fetched, now_unix)
    }

    /// [`Authenticator::verify`] with the keys at hand, never fetching.
    pub fn verify_now(&self, token: &str, now_unix: u64) -> Result<Identity, AuthError> {
        let verifier = self.verifier();
        let header = header_of(token)?;
        verifier.check(token, &header, &verifier.fetched(), now_unix)
    }
}

fn header_of(token: &str) -> Result<Header, AuthError> {
    decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))
}

impl Verifier {
    /// The provider's keys as last fetched (none without a JWKS).
    fn fetched(&self) -> Arc<Vec<Key>> {
        self.jwks.as_ref().map(|j| j.keys()).unwrap_or_default()
    }

    /// The JWKS to fetch again and the `kid` it lacks, when the token
    /// names a key no source has.
    fn unknown_kid<'a>(&'a self, header: &'a Header) -> Option<(&'a Jwks, &'a str)> {
        let (jwks, kid) = (self.jwks.as_deref()?, header.kid.as_deref()?);
        let known = names(&self.keys, kid) || names(&jwks.keys(), kid);
        (kid.len() <= MAX_KID_BYTES && !known).then_some((jwks, kid))
    }

    /// The signature against the keys at hand, then the claims.
    fn check(
        &self,
        token: &str,
        header: &Header,
        fetched: &[Key],
        now_unix: u64,
    ) -> Result<Identity, AuthError> {
        let claims = self.decode(token, header, fetched)?;
        self.identity(claims, now_unix)
    }
}

impl Verifier {
    /// What valid claims say about the token's holder, at `now_unix`.
    fn identity(&self, claims: Claims, now_unix: u64) -> Result<Identity, AuthError> {
        let leeway_secs = self.config.leeway_secs;
        let exp = seconds(claims.exp.as_ref()).map_err(AuthError::BadClaims)?;
        let nbf = seconds(claims.nbf.as_ref()).map_err(AuthError::BadClaims)?;
        match exp {
            Some(exp) if now_unix >= exp.saturating_add(leeway_secs) => {
                return Err(AuthError::Expired);
            }
            None if self.config.require_exp => return Err(AuthError::MissingExp),
            _ => {}
        }
        if let Some(nbf) = nbf
            && now_unix.saturating_add(leeway_secs) < nbf
        {
            return Err(AuthError::NotYetValid);
        }
        let id = claims
            .user_id
            .as_ref()
            .or(claims.sub.as_ref())
            .and_then(id_string)
            .ok_or(AuthError::BadClaims(
                "user_id or sub must be a non-empty string or a number",
            ))?;
        if id.len() > MAX_ID_BYTES {
            return Err(AuthError::BadClaims("user id is too long"));
        }
        let name = match claims.name {
            None | Some(Value::Null) => id.clone(),
            Some(Value::String(n)) if n.len() <= MAX_NAME_BYTES => n,
            Some(_) => {
                return Err(AuthError::BadClaims(
                    "name must be a string of at most 256 bytes",
                ));
            }
        };
        let rooms = match claims.rooms {
            None | Some(Value::Null) => None,
            Some(Value::Array(list)) if list.len() <= MAX_ROOM_PATTERNS => {
                let patterns: Option<Vec<String>> = list
                    .into_iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect();
                let patterns =
                    patterns.ok_or(AuthError::BadClaims("rooms must be a list of strings"))?;
                Some(RoomAccess::new(patterns))
            }
            Some(_) => return Err(AuthError::BadClaims("rooms must be a list of strings")),
        };
        Ok(Identity {
            user: UserRef {
                id: id.into(),
                name: name.into(),
            },
            rooms,
            expires_at: exp.map(|s| Timestamp(s.saturating_mul(1000))),
        })
    }
}

fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

/// A NumericDate claim: whole or fractional seconds.
fn seconds(v: Option<&Value>) -> Result<Option<u64>, &'static str> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or("exp and nbf must be non-negative numbers"),
        Some(_) => Err("exp and nbf must be numbers"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn token_locations_in_order() {
        let h = headers(&[
            ("authorization", "Bearer hdr"),
            ("sec-websocket-protocol", "roomhub.v1, sp"),
        ]);
        assert_eq!(extract_token(&h, Some("a=1&token=q%2B1")).unwrap().0, "q+1");
        assert_eq!(
            extract_token(&h, Some("a=1")).unwrap(),
            ("hdr".into(), TokenSource::Header)
        );
        let sp = headers(&[("sec-websocket-protocol", "roomhub.v1, sp")]);
        assert_eq!(
            extract_token(&sp, None).unwrap(),
            (
                "sp".into(),
                TokenSource::Subprotocol {
                    offered_ours: true,
                    entry: "sp".into()
                }
            )
        );
        let only = headers(&[("sec-websocket-protocol", "bearer.tok")]);
        assert_eq!(extract_token(&only, None).unwrap().0, "tok");
        assert!(
            extract_token(&headers(&[("sec-websocket-protocol", "roomhub.v1")]), None).is_none()
        );
        assert!(
            extract_token(&headers(&[("authorization", "Basic abc")]), Some("token=")).is_none()
        );
    }
}
