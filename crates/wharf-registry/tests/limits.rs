//! The listener's limits, against raw TCP clients: a connection that sends no headers is closed after the
//! header-read timeout, and past `max_connections` a new connection is not served until one closes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wharf_registry::{App, RegistryConfig, ServeLimits};
use wharf_storage::FsStore;

async fn start(limits: ServeLimits) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let app = App::new(Arc::new(FsStore::open(dir.path()).unwrap()), RegistryConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(wharf_registry::serve(listener, app, limits, std::future::pending()));
    (dir, addr)
}

const GET_V2: &[u8] = b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n\r\n";

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_header_read_timeout() {
    let limits = ServeLimits {
        header_read_timeout: Duration::from_secs(1),
        ..ServeLimits::default()
    };
    let (_dir, addr) = start(limits).await;
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    // Closed by the server (EOF, or a reset): well before this test's own 10 s bound.
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(read.is_ok(), "a connection that sent nothing was still open after 10 s");
    assert!(!matches!(read, Ok(Ok(n)) if n > 0 && !buf.starts_with(b"HTTP/1.1 408")));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn past_the_connection_cap_a_request_waits_for_a_free_connection() {
    let limits = ServeLimits {
        max_connections: 1,
        ..ServeLimits::default()
    };
    let (_dir, addr) = start(limits).await;
    let holder = TcpStream::connect(&addr).await.unwrap();
    // Let the server accept the holder first.
    let mut probe_buf = [0u8; 12];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut waiting = TcpStream::connect(&addr).await.unwrap();
    waiting.write_all(GET_V2).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(700), waiting.read(&mut probe_buf)).await;
    assert!(early.is_err(), "served past the cap: {early:?}");
    drop(holder);
    let n = tokio::time::timeout(Duration::from_secs(10), waiting.read_exact(&mut probe_buf))
        .await
        .expect("served once a connection was free")
        .unwrap();
    assert_eq!(&probe_buf[..n], b"HTTP/1.1 200");
}

/// Open upload sessions are bounded per repository: past the bound a new one is refused with 429 TOOMANYREQUESTS
/// (and leaves nothing behind); finishing or cancelling one makes room.
#[tokio::test]
async fn upload_sessions_per_repository_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let config = RegistryConfig {
        upload_sessions: wharf_registry::SessionLimits {
            per_repository: 2,
            idle: Duration::from_secs(3600),
        },
        ..RegistryConfig::default()
    };
    let app = App::new(Arc::new(FsStore::open(dir.path()).unwrap()), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(wharf_registry::serve(
        listener,
        app,
        ServeLimits::default(),
        std::future::pending(),
    ));
    wharf_remote::http::install_crypto_provider();
    let c = reqwest::Client::new();
    let start = |repo: &str| c.post(format!("{base}/v2/{repo}/blobs/uploads/")).send();
    let first = start("a/x").await.unwrap();
    assert_eq!(first.status(), 202);
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(start("a/x").await.unwrap().status(), 202);
    let refused = start("a/x").await.unwrap();
    assert_eq!(refused.status(), 429);
    let body: serde_json::Value = serde_json::from_slice(&refused.bytes().await.unwrap()).unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS", "{body}");
    // Another repository has its own bound.
    assert_eq!(start("b/y").await.unwrap().status(), 202);
    // The refused session left no directory behind: three sessions on disk, not four.
    let sessions = walk_count(dir.path(), "uploads");
    assert_eq!(sessions, 3, "session directories");
    // Cancelling one makes room.
    let url = if location.starts_with("http") {
        location
    } else {
        format!("{base}{location}")
    };
    assert_eq!(c.delete(url).send().await.unwrap().status(), 204);
    assert_eq!(start("a/x").await.unwrap().status(), 202);
}

/// Entries of every directory named `name` under `root`.
fn walk_count(root: &std::path::Path, name: &str) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|f| f == name) {
                    n += std::fs::read_dir(&p).unwrap().count();
                } else {
                    stack.push(p);
                }
            }
        }
    }
    n
}
