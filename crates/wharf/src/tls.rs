//! TLS for `wharf serve`: rustls (ring provider, TLS 1.2 and 1.3), HTTP/2 and HTTP/1.1 negotiated by ALPN, the
//! certificate and key read from PEM files and read again on SIGHUP (a bad new pair is logged and the old one kept,
//! so a botched renewal never takes the registry down). Served by axum-server, which does the TLS accept loop and
//! graceful shutdown for axum routers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum_server::tls_rustls::RustlsConfig;
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

/// Reloads the certificate and key on every SIGHUP.
pub fn reload_on_sighup(tls: RustlsConfig, cert: PathBuf, key: PathBuf) {
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
                    tls.reload_from_config(c);
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

/// Serves `router` over TLS on `listener` until `shutdown` completes, then gives in-flight requests `grace`. A client
/// has `header_read_timeout` to send a request's headers. (The connection cap of the plain listener is not applied
/// here yet: axum-server accepts on its own.)
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: RustlsConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
    header_read_timeout: Duration,
) -> anyhow::Result<()> {
    let listener = listener.into_std().context("TLS listener")?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(grace));
    });
    let mut server = axum_server::from_tcp_rustls(listener, tls).context("TLS listener")?;
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    server
        .handle(handle)
        .serve(router.into_make_service())
        .await
        .context("TLS server failed")
}
