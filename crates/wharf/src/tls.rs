//! TLS for `wharf serve`: rustls (ring provider, TLS 1.2 and 1.3), HTTP/2 and HTTP/1.1 negotiated by ALPN, the
//! certificate and key read from PEM files and read again on SIGHUP (a bad new pair is logged and the old one kept,
//! so a botched renewal never takes the registry down). Served by wharf's one accept loop
//! ([`wharf_registry::listen`]) with a tokio-rustls handshake: the same connection cap and header-read timeout as
//! the plain listener, and the handshake must end within that timeout.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A rustls server configuration from a PEM certificate chain and a PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the TLS certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad PEM in the TLS certificate {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a private key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not make a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server configuration in use: each handshake reads it, SIGHUP replaces it.
#[derive(Clone)]
pub struct TlsHandshake {
    config: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

impl TlsHandshake {
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        TlsHandshake {
            config: Arc::new(RwLock::new(config)),
        }
    }

    fn replace(&self, config: Arc<rustls::ServerConfig>) {
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
    }
}

impl wharf_registry::listen::Handshake for TlsHandshake {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    async fn handshake(&self, tcp: tokio::net::TcpStream) -> std::io::Result<Self::Io> {
        let config = self.config.read().unwrap_or_else(PoisonError::into_inner).clone();
        tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
    }
}

/// Reloads the certificate and key on every SIGHUP.
pub fn reload_on_sighup(tls: TlsHandshake, cert: PathBuf, key: PathBuf) {
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; TLS certificates will not be reloaded");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match server_config(&cert, &key) {
                Ok(c) => {
                    tls.replace(c);
                    tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                }
                Err(e) => tracing::error!(
                    error = format!("{e:#}"),
                    "TLS reload failed; keeping the old certificate"
                ),
            }
        }
    });
}
