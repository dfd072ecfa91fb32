//! The HTTP client every part of wharf builds its connections with: reqwest over rustls with `ring` as the crypto
//! provider, and wharf's user agent. reqwest is built without a provider of its own (one crypto stack in the tree),
//! so a process must install one before its first client: the binary does it once at start
//! ([`install_crypto_provider`]); [`client_builder`] makes sure of it for tests and embedders.
//!
//! Every client of a process shares one TLS configuration whose verifier reads the system's root certificates at
//! the first TLS handshake, not when a client is built: reqwest alone parses the whole CA bundle for every client
//! (~2-3 ms of CPU each), which a push to a plain-HTTP registry through the Docker engine's socket paid twice before
//! sending a byte. The verification is reqwest's own (`rustls-platform-verifier` over the system's roots).

use std::path::Path;
use std::sync::{Arc, LazyLock, Once, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Installs `ring` as rustls' process-wide crypto provider, once. (If the embedding program installed another one
/// first, that one stays.)
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client builder with the crypto provider in place, the process's shared TLS configuration and wharf's user
/// agent; callers add their timeouts.
pub fn client_builder() -> reqwest::ClientBuilder {
    builder_with(&TLS)
}

/// wharf's user agent and `tls` (reqwest's own TLS when `None`).
fn builder_with(tls: &Option<rustls::ClientConfig>) -> reqwest::ClientBuilder {
    install_crypto_provider();
    let builder = reqwest::Client::builder().user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")));
    match tls {
        Some(tls) => builder.tls_backend_preconfigured(tls.clone()),
        None => builder,
    }
}

/// A registry's certificate directory, in Docker's `certs.d` layout: `*.crt` are CA certificates trusted besides
/// the system's, `NAME.cert` with `NAME.key` a client certificate and its key.
#[derive(Debug)]
pub struct CertDir {
    pub roots: Vec<CertificateDer<'static>>,
    pub identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl CertDir {
    /// Reads `dir`; `Ok(None)` when it does not exist.
    pub fn read(dir: &Path) -> Result<Option<CertDir>, String> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut names: Vec<std::path::PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        let mut out = CertDir {
            roots: Vec::new(),
            identity: None,
        };
        for path in names {
            let shown = path.display().to_string();
            match path.extension().and_then(|e| e.to_str()) {
                Some("crt") => {
                    for c in CertificateDer::pem_file_iter(&path).map_err(|e| format!("{shown}: {e}"))? {
                        out.roots.push(c.map_err(|e| format!("{shown}: {e}"))?);
                    }
                }
                Some("cert") => {
                    let key = path.with_extension("key");
                    if !key.is_file() {
                        return Err(format!("{shown} has no key {}", key.display()));
                    }
                    let chain = CertificateDer::pem_file_iter(&path)
                        .map_err(|e| format!("{shown}: {e}"))?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("{shown}: {e}"))?;
                    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| format!("{}: {e}", key.display()))?;
                    out.identity = Some((chain, key));
                }
                _ => {}
            }
        }
        Ok(Some(out))
    }
}

/// A client builder trusting the system's roots and `dir`'s CA certificates, presenting its client certificate.
pub fn client_builder_with(dir: &CertDir) -> Result<reqwest::ClientBuilder, String> {
    install_crypto_provider();
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(dir.roots.clone(), provider.clone())
        .map_err(|e| e.to_string())?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut tls = match &dir.identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("client certificate: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(builder_with(&Some(tls)))
}

/// A client builder like [`client_builder`] whose TLS accepts any server certificate: only for registries the user
/// declared insecure (or on loopback), reached over HTTPS where plain HTTP was allowed, as Docker does.
pub fn client_builder_trusting_any_certificate() -> reqwest::ClientBuilder {
    builder_with(&TLS_ANY)
}

static TLS_ANY: LazyLock<Option<rustls::ClientConfig>> = LazyLock::new(|| shared_config(Trust::Any));

/// The TLS configuration every client shares (`None`: no crypto provider could be had; reqwest then builds its own).
static TLS: LazyLock<Option<rustls::ClientConfig>> =
    LazyLock::new(|| shared_config(Trust::SystemRoots(OnceLock::new())));

/// A client configuration verifying servers as `trust` says, offering HTTP/2 and HTTP/1.1 by ALPN (as reqwest does
/// on its own).
fn shared_config(trust: Trust) -> Option<rustls::ClientConfig> {
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier { provider, trust }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Some(tls)
}

/// Which server certificates a [`Verifier`] accepts.
#[derive(Debug)]
enum Trust {
    /// Those the system's roots vouch for, the roots read when the first certificate is to be verified.
    SystemRoots(OnceLock<Result<rustls_platform_verifier::Verifier, rustls::Error>>),
    /// Any (a registry declared insecure, or on loopback; the handshake's signatures are still checked).
    Any,
}

#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    trust: Trust,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.trust {
            Trust::Any => Ok(ServerCertVerified::assertion()),
            Trust::SystemRoots(verifier) => verifier
                .get_or_init(|| rustls_platform_verifier::Verifier::new(self.provider.clone()))
                .as_ref()
                .map_err(Clone::clone)?
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
