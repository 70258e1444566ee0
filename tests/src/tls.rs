//! Certificates for the TLS tests, made by the test: a certificate
//! authority of its own, leaf certificates for `localhost` and 127.0.0.1
//! signed by it, and a rustls client that trusts that authority only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use roomhub_net::TlsFiles;
use rustls::pki_types::CertificateDer;
use tokio_tungstenite::Connector;

/// A certificate authority that lives as long as one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert: rcgen::Certificate,
}

/// A leaf certificate and its key, PEM, with the name it was given.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "roomhub test CA");
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            issuer: Issuer::new(params, key),
            cert,
        }
    }

    /// A certificate for `localhost` and 127.0.0.1 whose common name is
    /// `name` (so a test can tell two apart).
    pub fn leaf(&self, name: &str) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// The authority's certificate, PEM (for a browser's or a process's
    /// trust store).
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A rustls client configuration trusting this authority only.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).expect("CA is a root");
        #[allow(deprecated)] // ring: see net/src/http/tls.rs
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// The connector a WebSocket client uses to trust this authority.
    pub fn connector(&self) -> Connector {
        Connector::Rustls(self.client_config())
    }
}

impl Leaf {
    /// Writes the PEM files into `dir` (as `cert.pem`, `key.pem`,
    /// replacing what is there in one rename each, as certbot does).
    pub fn write_to(&self, dir: &Path) -> TlsFiles {
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        replace(&files.cert, &self.cert_pem);
        replace(&files.key, &self.key_pem);
        files
    }
}

/// Writes `text` to `path` through a temporary file and a rename.
pub fn replace(path: &Path, text: &str) {
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// One `GET path` over HTTPS to `addr` as `localhost`: the status, the
/// body, and the certificate the server presented.
pub async fn https_get(
    addr: std::net::SocketAddr,
    path: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<(u16, String, CertificateDer<'static>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let presented = first_certificate(tls.get_ref().1);
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = Vec::new();
    // A server may end a TLS stream without close_notify after its answer.
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body, presented))
}

/// The certificate a `wss://` client's server presented.
pub fn presented(client: &crate::server::Client) -> CertificateDer<'static> {
    match client.ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Rustls(tls) => first_certificate(tls.get_ref().1),
        _ => panic!("not a TLS connection"),
    }
}

/// The end-entity certificate the server presented on `tls`.
fn first_certificate(tls: &rustls::CommonState) -> CertificateDer<'static> {
    tls.peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .expect("a certificate")
}
