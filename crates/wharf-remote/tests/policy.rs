//! The registry client's one policy, against a registry front that fails on cue: which answers are retried (5xx,
//! 429 with `Retry-After`, never 404), how often, and what kind of error the caller is left with (outage, not
//! found, denied, a lie about a digest).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use wharf_oci::Digest;
use wharf_remote::{ClientOptions, ErrorKind, Registry, RemoteError, Upstream, UpstreamConfig};

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;

/// Requests seen per path.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<HashMap<String, usize>>>);

impl Seen {
    fn count(&self, path: &str) -> usize {
        self.0.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn manifest() -> Response {
    (
        [(header::CONTENT_TYPE, "application/vnd.oci.image.manifest.v1+json")],
        MANIFEST,
    )
        .into_response()
}

async fn handle(State(seen): State<Seen>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let n = {
        let mut m = seen.0.lock().unwrap();
        let n = m.entry(path.clone()).or_default();
        *n += 1;
        *n
    };
    match path.as_str() {
        // Fails twice, then answers.
        "/v2/r/manifests/flaky" if n <= 2 => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        "/v2/r/manifests/flaky" => manifest(),
        "/v2/r/manifests/down" => StatusCode::BAD_GATEWAY.into_response(),
        "/v2/r/manifests/busy" if n == 1 => {
            (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")]).into_response()
        }
        "/v2/r/manifests/busy" => manifest(),
        "/v2/r/manifests/lie" => (
            [
                (
                    header::CONTENT_TYPE,
                    "application/vnd.oci.image.manifest.v1+json".to_owned(),
                ),
                (
                    header::HeaderName::from_static("docker-content-digest"),
                    Digest::sha256_of(b"something else").to_string(),
                ),
            ],
            MANIFEST,
        )
            .into_response(),
        "/v2/r/manifests/forbidden" => (
            StatusCode::FORBIDDEN,
            r#"{"errors":[{"code":"DENIED","message":"no pull on r"}]}"#,
        )
            .into_response(),
        // A blob server that ignores Range.
        p if p.starts_with("/v2/r/blobs/") => b"0123456789".as_slice().into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        )
            .into_response(),
    }
}

async fn front() -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Seen::default();
    let app = Router::new().fallback(any(handle)).with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

fn registry(addr: &str) -> Registry {
    Registry::new(addr, &format!("http://{addr}"), &ClientOptions::default()).unwrap()
}

const NO_SCOPES: &[String] = &[];

#[tokio::test]
async fn server_errors_are_retried_then_reported_as_an_outage() {
    let (addr, seen) = front().await;
    let r = registry(&addr);
    let m = r.manifest("r", "flaky", None, NO_SCOPES).await.unwrap();
    assert_eq!(m.digest, Digest::sha256_of(MANIFEST));
    assert_eq!(seen.count("/v2/r/manifests/flaky"), 3);

    let e = r.manifest("r", "down", None, NO_SCOPES).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Outage, "{e}");
    assert_eq!(seen.count("/v2/r/manifests/down"), 4, "four attempts in all");
    assert_eq!(e.to_string(), format!("manifest r:down at {addr}: HTTP 502"));
}

#[tokio::test]
async fn too_many_requests_waits_for_retry_after() {
    let (addr, seen) = front().await;
    let r = registry(&addr);
    let start = Instant::now();
    r.manifest("r", "busy", None, NO_SCOPES).await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(1), "{:?}", start.elapsed());
    assert_eq!(seen.count("/v2/r/manifests/busy"), 2);
}

#[tokio::test]
async fn not_found_and_denied_are_told_apart_and_never_retried() {
    let (addr, seen) = front().await;
    let r = registry(&addr);
    let e = r.manifest("r", "gone", None, NO_SCOPES).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.to_string().ends_with("HTTP 404 MANIFEST_UNKNOWN: manifest unknown"),
        "{e}"
    );
    assert_eq!(seen.count("/v2/r/manifests/gone"), 1);

    let e = r.manifest("r", "forbidden", None, NO_SCOPES).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Denied);
    assert!(e.to_string().contains("DENIED: no pull on r"), "{e}");

    // As an upstream, a missing manifest is an answer, a refusal is an error.
    let up = Upstream::new(
        UpstreamConfig {
            name: addr.clone(),
            url: format!("http://{addr}"),
            credentials: None,
        },
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(up.manifest("r", "gone", None).await.unwrap().is_none());
    assert!(up.manifest("r", "forbidden", None).await.is_err());
}

#[tokio::test]
async fn a_digest_the_registry_claims_falsely_is_refused() {
    let (addr, _) = front().await;
    let r = registry(&addr);
    let e = r.manifest("r", "lie", None, NO_SCOPES).await.unwrap_err();
    assert!(matches!(e, RemoteError::DigestMismatch { .. }), "{e}");
    let asked = Digest::sha256_of(b"what I asked for");
    let e = r.manifest("r", "flaky", Some(&asked), NO_SCOPES).await;
    assert!(e.is_err());
}

#[tokio::test]
async fn a_resume_answered_with_the_whole_blob_is_refused_and_an_unreachable_registry_is_an_outage() {
    let (addr, _) = front().await;
    let r = registry(&addr);
    let d = Digest::sha256_of(b"0123456789");
    assert_eq!(
        r.blob("r", &d, 0, NO_SCOPES).await.unwrap().bytes().await.unwrap(),
        "0123456789"
    );
    let e = r.blob("r", &d, 4, NO_SCOPES).await.unwrap_err();
    assert!(e.to_string().contains("cannot resume"), "{e}");
    // A range that is not the whole blob, answered whole, is refused too.
    let e = r.blob_range("r", &d, (2, 5), NO_SCOPES, &mut |_| {}).await.unwrap_err();
    assert_eq!(e.status(), Some(200), "{e}");

    // Nothing listens here (bound, then closed).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = registry(&closed.to_string());
    let e = r.manifest("r", "v1", None, NO_SCOPES).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Outage, "{e}");
    assert!(e.to_string().contains("cannot connect"), "{e}");
}
