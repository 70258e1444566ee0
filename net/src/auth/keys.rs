//! Verification keys: where each comes from (a shared secret, a PEM file,
//! a JWKS entry), the one algorithm its type allows, and which keys a
//! token may be checked against. A token's `alg` header never chooses a
//! key's algorithm: a key is tried only when the token's `alg` is the one
//! that key's type decides, so `alg: none` and HS/RS confusion cannot work.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_BYTES: usize = 256;
/// The longest `kid` kept; longer ones are refused.
pub(crate) const MAX_KID_BYTES: usize = 256;

/// One key tokens may be verified with.
#[derive(Clone)]
pub(crate) struct Key {
    /// The id a token names it by (`kid` header); `None` matches tokens
    /// with any or no `kid`.
    pub(crate) kid: Option<String>,
    /// The one algorithm this key verifies.
    pub(crate) algorithm: Algorithm,
    pub(crate) key: DecodingKey,
}

impl Key {
    /// An HS256 shared secret.
    pub(crate) fn secret(secret: &[u8]) -> Result<Key, String> {
        if secret.is_empty() {
            return Err("the JWT secret is empty".into());
        }
        Ok(Key {
            kid: None,
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
        })
    }

    /// A PEM public key: RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA).
    pub(crate) fn from_pem(pem: &[u8], kid: Option<String>) -> Result<Key, String> {
        if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
            return Err(
                "this is a private key: give its public key (openssl pkey -in KEY -pubout)".into(),
            );
        }
        let (key, algorithm) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (key, Algorithm::RS256)
        } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            (key, Algorithm::ES256)
        } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            (key, Algorithm::EdDSA)
        } else {
            return Err("not an RSA, EC P-256 or Ed25519 public key in PEM".into());
        };
        Ok(Key {
            kid,
            algorithm,
            key,
        })
    }

    /// One entry of a JWKS document. Symmetric (`oct`) keys, encryption
    /// keys, curves other than P-256 and Ed25519, short RSA moduli and an
    /// `alg` that does not fit the key's type are refused.
    pub(crate) fn from_jwk(value: &serde_json::Value) -> Result<Key, String> {
        let jwk: Jwk =
            serde_json::from_value(value.clone()).map_err(|e| format!("not a JWK: {e}"))?;
        let kid = jwk.common.key_id.clone();
        if kid.as_ref().is_some_and(|k| k.len() > MAX_KID_BYTES) {
            return Err("kid longer than 256 bytes".into());
        }
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            return Err("not a signing key (use is not \"sig\")".into());
        }
        let declared = jwk.common.key_algorithm;
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(params) => {
                let n = base64_len(&params.n).ok_or("RSA modulus n is not base64url")?;
                if n < MIN_RSA_BYTES {
                    return Err(format!("RSA modulus of {} bits (2048 at least)", n * 8));
                }
                match declared {
                    None | Some(KeyAlgorithm::RS256) => Algorithm::RS256,
                    Some(KeyAlgorithm::RS384) => Algorithm::RS384,
                    Some(KeyAlgorithm::RS512) => Algorithm::RS512,
                    Some(KeyAlgorithm::PS256) => Algorithm::PS256,
                    Some(KeyAlgorithm::PS384) => Algorithm::PS384,
                    Some(KeyAlgorithm::PS512) => Algorithm::PS512,
                    Some(other) => return Err(format!("alg {other:?} does not fit an RSA key")),
                }
            }
            AlgorithmParameters::EllipticCurve(params) => {
                if params.curve != EllipticCurve::P256 {
                    return Err(format!("EC curve {:?} (P-256 only)", params.curve));
                }
                if !matches!(declared, None | Some(KeyAlgorithm::ES256)) {
                    return Err(format!("alg {declared:?} does not fit a P-256 key"));
                }
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKeyPair(params) => {
                if params.curve != EllipticCurve::Ed25519 {
                    return Err(format!("OKP curve {:?} (Ed25519 only)", params.curve));
                }
                if !matches!(declared, None | Some(KeyAlgorithm::EdDSA)) {
                    return Err(format!("alg {declared:?} does not fit an Ed25519 key"));
                }
                Algorithm::EdDSA
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err("symmetric (oct) keys are not taken from a JWKS".into());
            }
            _ => return Err("unsupported key type".into()),
        };
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key: {e}"))?;
        Ok(Key {
            kid,
            algorithm,
            key,
        })
    }
}

/// The decoded length of a base64url text, if it is one.
fn base64_len(text: &str) -> Option<usize> {
    let valid = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then_some(text.len() * 3 / 4)
}

/// Which keys a token with `kid` (if any) may be checked against, of
/// `static_keys` then `fetched`: those that name that `kid`, or, when
/// none does, those without a `kid` of their own.
pub(crate) fn candidates<'a>(
    static_keys: &'a [Key],
    fetched: &'a [Key],
    kid: Option<&str>,
) -> Vec<&'a Key> {
    let all = || static_keys.iter().chain(fetched);
    match kid {
        None => all().collect(),
        Some(kid) => {
            let named: Vec<&Key> = all().filter(|k| k.kid.as_deref() == Some(kid)).collect();
            if named.is_empty() {
                all().filter(|k| k.kid.is_none()).collect()
            } else {
                named
            }
        }
    }
}

/// Whether any of `keys` names `kid`.
pub(crate) fn names(keys: &[Key], kid: &str) -> bool {
    keys.iter().any(|k| k.kid.as_deref() == Some(kid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(kid: Option<&str>) -> Key {
        Key {
            kid: kid.map(str::to_string),
            ..Key::secret(b"s").unwrap()
        }
    }

    #[test]
    fn a_kid_picks_its_key_and_kidless_keys_serve_the_rest() {
        let statics = [key(None), key(Some("a"))];
        let fetched = [key(Some("b"))];
        let kids = |kid| {
            candidates(&statics, &fetched, kid)
                .iter()
                .map(|k| k.kid.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(kids(Some("a")), [Some("a".into())]);
        assert_eq!(kids(Some("b")), [Some("b".into())]);
        assert_eq!(kids(Some("zz")), [None]);
        assert_eq!(kids(None).len(), 3);
        assert!(names(&fetched, "b") && !names(&fetched, "a"));
    }

    #[test]
    fn jwks_entries_that_are_not_signing_keys_of_a_known_type_are_refused() {
        let n = "A".repeat(344); // 2064 bits
        let ok = [
            (
                json!({"kty": "RSA", "kid": "r", "n": n, "e": "AQAB"}),
                Algorithm::RS256,
            ),
            (
                json!({"kty": "RSA", "n": n, "e": "AQAB", "alg": "PS256", "use": "sig"}),
                Algorithm::PS256,
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}),
                Algorithm::ES256,
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}),
                Algorithm::EdDSA,
            ),
        ];
        for (jwk, alg) in ok {
            assert_eq!(Key::from_jwk(&jwk).unwrap().algorithm, alg, "{jwk}");
        }
        let bad = [
            (json!({"kty": "oct", "k": "c2VjcmV0"}), "symmetric"),
            (json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}), "bits"),
            (json!({"kty": "RSA", "n": "!!", "e": "AQAB"}), "base64url"),
            (
                json!({"kty": "RSA", "n": n, "e": "AQAB", "alg": "HS256"}),
                "does not fit",
            ),
            (
                json!({"kty": "RSA", "n": n, "e": "AQAB", "use": "enc"}),
                "signing",
            ),
            (
                json!({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}),
                "P-256 only",
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "alg": "RS256"}),
                "does not fit",
            ),
            (
                json!({"kty": "OKP", "crv": "Ed448", "x": "AA"}),
                "unsupported",
            ),
            (
                json!({"kty": "RSA", "kid": "k".repeat(300), "n": n, "e": "AQAB"}),
                "kid longer",
            ),
            (json!({"kty": "XYZ"}), "unsupported"),
            (json!("a string"), "not a JWK"),
        ];
        for (jwk, says) in bad {
            let err = Key::from_jwk(&jwk)
                .err()
                .unwrap_or_else(|| panic!("{jwk} accepted"));
            assert!(err.contains(says), "{jwk}: {err}");
        }
    }
}
