//! wharf's one accept loop, for every listener it opens (registry, TLS registry, P2P node, peer API, scheduler).
//!
//! Written on hyper-util rather than `axum::serve`, which sets no timer (so no header-read timeout) and has no
//! connection cap. Every connection holds a permit until it closes (past [`ServeLimits::max_connections`], new ones
//! wait in the kernel's backlog); a client has [`ServeLimits::header_read_timeout`] to send its first byte, finish a
//! TLS handshake, and send each request's headers; every request carries the peer's address as axum's
//! [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// What one listener allows.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Turns an accepted TCP connection into the stream HTTP is spoken on (a TLS handshake, or nothing).
pub trait Handshake: Clone + Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// Plain HTTP.
#[derive(Debug, Clone, Copy)]
pub struct Plain;

impl Handshake for Plain {
    type Io = TcpStream;
    async fn handshake(&self, tcp: TcpStream) -> io::Result<TcpStream> {
        Ok(tcp)
    }
}

/// Serves `router` over plain HTTP on `listener` until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(listener, router, limits, Plain, shutdown).await
}

/// [`serve_router`] over the streams `handshake` makes of each connection.
pub async fn serve_with<H: Handshake>(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ServeLimits,
    handshake: H,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;

    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait a moment rather than spin (as axum::serve does).
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Without TCP_NODELAY, a response whose headers and body leave in two writes waits ~40 ms for a delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: axum::http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(remote));
            // A Router is always ready: no poll_ready needed.
            tower_service::Service::call(&mut router.clone(), request)
        });
        let (builder, watcher, handshake) = (builder.clone(), graceful.watcher(), handshake.clone());
        let within = limits.header_read_timeout;
        tokio::spawn(async move {
            // hyper's header-read timeout starts with the first byte (before it, the protocol is still being told
            // apart): a connection that sends nothing, or never finishes its handshake, is closed here.
            let opened = async {
                let mut first = [0u8; 1];
                match tcp.peek(&mut first).await {
                    Ok(n) if n > 0 => handshake.handshake(tcp).await,
                    Ok(_) => Err(io::ErrorKind::UnexpectedEof.into()),
                    Err(e) => Err(e),
                }
            };
            let io = match tokio::time::timeout(within, opened).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "connection closed before its first request");
                    return drop(permit);
                }
                Err(_) => {
                    tracing::debug!(%remote, "connection silent past the header-read timeout: closed");
                    return drop(permit);
                }
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The peer's address of a request served by [`serve_with`] (or by axum with connect info), if known.
pub fn remote_addr(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}
