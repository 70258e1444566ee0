//! TLS on the listener (`--tls-cert`, `--tls-key`): `https://` and
//! `wss://` on the one port. The certificate is handed to each new
//! handshake by [`Certificates`], which re-reads the PEM files when they
//! change on disk (checked every [`WATCH_EVERY`]) or when asked (SIGHUP,
//! `POST /api/reload`): connections already open keep the session they
//! negotiated, new handshakes get the new certificate. A file that does not
//! load (garbage, a key that does not match, half written) is refused with
//! the reason, and the certificate in use stays.
//!
//! rustls on ring, TLS 1.3 and 1.2 only, with ring's cipher suites: all
//! AEAD (AES-GCM, ChaCha20-Poly1305) with forward-secret key exchange.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the files are checked for a change.
pub(crate) const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The certificate chain and private key files, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What identifies a version of a file on disk: a rewrite, a rename over
/// it (certbot, Kubernetes secrets) or a touch changes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// The certificate new handshakes get, and where it came from.
pub(crate) struct Certificates {
    files: RwLock<TlsFiles>,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' stamps when last loaded or tried, so that a file that
    /// failed is tried again only once it changes.
    seen: Mutex<(Option<Stamp>, Option<Stamp>)>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("files", &self.files())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// ring's provider. rustls marks it deprecated for lacking post-quantum key
/// exchange (X25519MLKEM768, which aws-lc-rs has); clients that offer it
/// fall back to X25519. The choice of ring over aws-lc-rs (a long C build
/// with cmake) is in net/Cargo.toml.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks a certificate chain and its key. Pure but for the
/// file reads; every failure says which file and why.
pub(crate) fn load(files: &TlsFiles) -> Result<(), String> {
    load_with(files, &provider()).map(drop)
}

fn load_with(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let (cert_pem, key_pem) = (read(&files.cert)?, read(&files.key)?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no CERTIFICATE block in the file",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: no usable PEM private key: {e}", files.key.display()))?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("{} with {}: {e}", files.cert.display(), files.key.display()))
}

impl Certificates {
    /// Loads the files; fails (the server does not start) if they do not.
    pub(crate) fn open(files: TlsFiles) -> Result<Arc<Certificates>, String> {
        let provider = provider();
        let seen = (stamp(&files.cert), stamp(&files.key));
        let key = load_with(&files, &provider)?;
        Ok(Arc::new(Certificates {
            files: RwLock::new(files),
            provider,
            current: RwLock::new(Arc::new(key)),
            seen: Mutex::new(seen),
        }))
    }

    /// The acceptor of this listener's handshakes.
    pub(crate) fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS configuration: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        // HTTP/1.1 only: WebSocket upgrades, SSE and the API all run on it.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    fn files(&self) -> TlsFiles {
        self.files.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A reload: `files` (the same or others) are read now; if they do not
    /// load, the files and the certificate in use stay.
    pub(crate) fn replace(&self, files: TlsFiles) -> Result<(), String> {
        if files == self.files() {
            return self.reload(true).map(drop);
        }
        let seen = (stamp(&files.cert), stamp(&files.key));
        let key = load_with(&files, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = seen;
        info!(cert = %files.cert.display(), "TLS certificate files changed: new handshakes use them");
        *self.files.write().unwrap_or_else(|e| e.into_inner()) = files;
        Ok(())
    }

    /// Re-reads the files: if they changed since last read, or always
    /// with `force`. Ok(true) when a new certificate is in use; an error
    /// (logged too) leaves the one in use in place.
    pub(crate) fn reload(&self, force: bool) -> Result<bool, String> {
        let files = self.files();
        let now = (stamp(&files.cert), stamp(&files.key));
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if !force && *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        match load_with(&files, &self.provider) {
            Ok(key) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                info!(cert = %files.cert.display(), "TLS certificate reloaded: new handshakes use it");
                Ok(true)
            }
            Err(e) => {
                warn!("TLS certificate not reloaded, the one in use stays: {e}");
                Err(e)
            }
        }
    }

    /// Checks the files every [`WATCH_EVERY`] until `stop`.
    pub(crate) async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut every = tokio::time::interval(WATCH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => { let _ = self.reload(false); }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_modern_suites_are_offered() {
        let provider = provider();
        assert!(!provider.cipher_suites.is_empty());
        for suite in &provider.cipher_suites {
            let name = format!("{:?}", suite.suite());
            assert!(
                name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_"),
                "{name}: forward-secret key exchange only"
            );
            assert!(
                name.contains("GCM") || name.contains("CHACHA20_POLY1305"),
                "{name}: AEAD ciphers only"
            );
            let version = suite.version().version;
            assert!(
                version == rustls::ProtocolVersion::TLSv1_3
                    || version == rustls::ProtocolVersion::TLSv1_2,
                "{name}: {version:?}"
            );
        }
    }
}
