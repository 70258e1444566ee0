//! Fuzz target bodies for the shell's parsers, shared by the cargo-fuzz
//! targets in `fuzz/` and the corpus replay in `cargo test`.

use http::{HeaderMap, HeaderName, HeaderValue};

use roomhub_net::auth::{AuthConfig, Authenticator, extract_token};
use roomhub_net::config::{Cli, ServerConfig, config_text_args};
use roomhub_net::dev::{TokenSpec, mint_token};

/// The secret the token target verifies with; seeds mint tokens with it.
pub const FUZZ_SECRET: &str = "fuzz-secret";

/// Token extraction and verification. Input: the first line is the query
/// string; each further line is a `Name: value` request header. A line
/// `@valid` stands for a freshly minted valid token.
pub fn token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let valid = mint_token(
        FUZZ_SECRET,
        &TokenSpec {
            user: "fuzz".into(),
            ..TokenSpec::default()
        },
        std::time::Duration::from_secs(60),
        1_000,
    );
    let text = text.replace("@valid", &valid);
    let mut lines = text.split('\n');
    let query = lines.next().filter(|q| !q.is_empty());
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let Some((token, _source)) = extract_token(&headers, query) else {
        return;
    };
    let auth =
        Authenticator::new(&AuthConfig::with_secret(FUZZ_SECRET.as_bytes())).expect("a secret");
    if let Ok(identity) = auth.verify_now(&token, 1_010) {
        assert!(!identity.user.id.is_empty() && identity.user.id.len() <= 256);
        assert!(identity.user.name.len() <= 256);
    }
}

/// Configuration parsing. Input: TOML text, then a line `---`, then one
/// command-line argument per line.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (toml_text, args) = text.split_once("\n---\n").unwrap_or((&text, ""));
    let _ = config_text_args(toml_text, |_| true);
    let argv = std::iter::once("roomhub").chain(args.split('\n').filter(|a| !a.is_empty()));
    if let Ok(cli) = <Cli as clap::Parser>::try_parse_from(argv) {
        // Resolving must refuse bad combinations with an error, not a panic.
        // A key or certificate file named by the fuzzer is not read (it
        // could be /dev/zero).
        let files = !cli.server.jwt_public_key.is_empty()
            || cli.server.tls_cert.is_some()
            || cli.server.tls_key.is_some();
        if !files {
            let _ = ServerConfig::from_args(&cli.server, 7);
        }
    }
}
