//! Push and pull through the real registry (`wharf-registry` over a filesystem store) behind an auth gate that
//! demands what Docker Hub (bearer token from a realm, scoped pull/push) and private registries (basic) demand.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::{write_image, write_index};
use wharf_client::registry::Credentials;
use wharf_client::{CopyOptions, CopyReport, Error, RemoteError, TransportOptions, copy, parse_image_name};
use wharf_registry::{App, RegistryConfig};
use wharf_storage::{CacheConfig, CachedStore, FsStore};

/// `user:secret`
const BASIC: &str = "Basic dXNlcjpzZWNyZXQ=";

#[derive(Clone)]
struct Gate {
    bearer: bool,
    addr: String,
    token_requests: Arc<AtomicUsize>,
}

/// Lets `/v2` requests through only with the right credentials; a bearer token says which actions it grants.
async fn gate(State(g): State<Gate>, req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with("/v2") {
        return next.run(req).await;
    }
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let write = !matches!(*req.method(), Method::GET | Method::HEAD);
    let ok = if g.bearer {
        auth.strip_prefix("Bearer tok:")
            .is_some_and(|grant| grant.contains("pull") && (!write || grant.contains("push")))
    } else {
        auth == BASIC
    };
    if ok {
        return next.run(req).await;
    }
    let challenge = if g.bearer {
        format!(
            r#"Bearer realm="http://{}/token",service="gate",scope="repository:x:pull""#,
            g.addr
        )
    } else {
        r#"Basic realm="gate""#.to_owned()
    };
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)]).into_response()
}

/// The token endpoint: basic credentials in, a token granting the scopes asked for out.
async fn token(g: Gate, req: Request) -> Response {
    g.token_requests.fetch_add(1, Ordering::SeqCst);
    let auth = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let query = req.uri().query().unwrap_or("");
    if auth != Some(BASIC) || !query.contains("service=gate") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let grant = if query.contains("push") { "pull,push" } else { "pull" };
    format!(r#"{{"token":"tok:{grant}","expires_in":300}}"#).into_response()
}

async fn start(bearer: bool, dir: &std::path::Path) -> Gate {
    let store = CachedStore::new(FsStore::open(dir).unwrap(), CacheConfig::default());
    let app = App::new(Arc::new(store), RegistryConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let g = Gate {
        bearer,
        addr: listener.local_addr().unwrap().to_string(),
        token_requests: Arc::new(AtomicUsize::new(0)),
    };
    let tg = g.clone();
    let router = wharf_registry::router(app)
        .route("/token", get(move |req: Request| token(tg.clone(), req)))
        .layer(middleware::from_fn_with_state(g.clone(), gate));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    g
}

async fn run(src: &str, dst: &str, creds: Option<&str>) -> Result<CopyReport, Error> {
    let t = TransportOptions {
        insecure: false,
        credentials: creds.and_then(Credentials::parse),
        unpack_limit: None,
        cert_dir: None,
    };
    let s = parse_image_name(src)?.open_source(&t).await?;
    let store = wharf_client::store::ContentStore::at(std::env::temp_dir().join("wharf-test-unused-store"));
    let d = parse_image_name(dst)?.open_destination(&t, &store).await?;
    copy(s.as_ref(), d.as_ref(), &CopyOptions::default()).await
}

/// Pushes a 4-blob image and pulls it back; returns the gate for its counters.
async fn round_trip(bearer: bool) -> Gate {
    let tmp = tempfile::tempdir().unwrap();
    let g = start(bearer, &tmp.path().join("reg")).await;
    let src = tmp.path().join("src");
    let (digest, size) = write_image(&src, 7, &[100_000, 2000, 30]);
    write_index(&src, "v1", &digest, size);
    let remote = format!("docker://{}/lib/app:v1", g.addr);

    let pushed = run(&format!("oci:{}:v1", src.display()), &remote, Some("user:secret"))
        .await
        .unwrap();
    assert_eq!((pushed.digest.as_str(), pushed.blobs_copied), (digest.as_str(), 4));
    let dst = tmp.path().join("dst");
    let pulled = run(&remote, &format!("oci:{}:v1", dst.display()), Some("user:secret"))
        .await
        .unwrap();
    assert_eq!((pulled.digest.as_str(), pulled.blobs_copied), (digest.as_str(), 4));
    let hex = digest.trim_start_matches("sha256:");
    assert_eq!(
        std::fs::read(dst.join("blobs/sha256").join(hex)).unwrap(),
        std::fs::read(src.join("blobs/sha256").join(hex)).unwrap()
    );

    let err = run(&remote, &format!("oci:{}:v2", dst.display()), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Remote(RemoteError::Auth { .. })), "{err}");
    assert!(err.to_string().contains(&g.addr), "{err}");
    g
}

#[tokio::test]
async fn bearer_tokens_are_fetched_once_per_scope_and_reused() {
    let g = round_trip(true).await;
    // One token for the push (every blob and the manifest), one for the pull, one refused without credentials.
    assert_eq!(g.token_requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn basic_auth_push_and_pull() {
    let g = round_trip(false).await;
    assert_eq!(g.token_requests.load(Ordering::SeqCst), 0);
}
