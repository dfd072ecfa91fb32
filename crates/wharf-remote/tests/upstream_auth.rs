//! The registry client's auth flows against a small registry front that demands credentials the way Docker Hub
//! (bearer token from a realm) and private registries (basic) do.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use wharf_oci::Digest;
use wharf_remote::{Credentials, Upstream, UpstreamConfig};

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
// "user:secret"
const BASIC: &str = "Basic dXNlcjpzZWNyZXQ=";

#[derive(Clone)]
struct Front {
    addr: String,
    bearer: bool,
    token_requests: Arc<AtomicUsize>,
}

async fn handle(State(f): State<Front>, req: Request) -> Response {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let path = req.uri().path().to_owned();
    if path == "/token" {
        f.token_requests.fetch_add(1, Ordering::SeqCst);
        let q = req.uri().query().unwrap_or("");
        if auth != BASIC || !q.contains("scope=repository%3Alib%2Fapp%3Apull") || !q.contains("service=front") {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        return r#"{"token":"T1","expires_in":300}"#.into_response();
    }
    let ok = if f.bearer { auth == "Bearer T1" } else { auth == BASIC };
    if !ok {
        let challenge = if f.bearer {
            format!(
                r#"Bearer realm="http://{}/token",service="front",scope="repository:lib/app:pull""#,
                f.addr
            )
        } else {
            r#"Basic realm="front""#.to_owned()
        };
        let mut h = HeaderMap::new();
        h.insert(header::WWW_AUTHENTICATE, challenge.parse().unwrap());
        return (StatusCode::UNAUTHORIZED, h).into_response();
    }
    let digest = Digest::sha256_of(MANIFEST).to_string();
    (
        [
            (
                header::CONTENT_TYPE,
                "application/vnd.oci.image.manifest.v1+json".to_owned(),
            ),
            (header::HeaderName::from_static("docker-content-digest"), digest),
        ],
        MANIFEST,
    )
        .into_response()
}

async fn start(bearer: bool) -> Front {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = Front {
        addr: listener.local_addr().unwrap().to_string(),
        bearer,
        token_requests: Arc::new(AtomicUsize::new(0)),
    };
    let app = Router::new().fallback(any(handle)).with_state(front.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    front
}

fn upstream(front: &Front, password: &str) -> Upstream {
    Upstream::new(
        UpstreamConfig {
            name: "front".into(),
            url: format!("http://{}", front.addr),
            credentials: Some(Credentials {
                username: "user".into(),
                password: password.into(),
            }),
        },
        Duration::from_secs(5),
    )
    .unwrap()
}

#[tokio::test]
async fn bearer_token_flow_with_credentials_and_token_cache() {
    let front = start(true).await;
    let up = upstream(&front, "secret");
    let m = up.manifest("lib/app", "v1", None).await.unwrap().unwrap();
    assert_eq!(&m.bytes[..], MANIFEST);
    assert_eq!(m.digest, Digest::sha256_of(MANIFEST));
    assert_eq!(up.resolve_tag("lib/app", "v1").await.unwrap(), Some(m.digest));
    assert_eq!(
        front.token_requests.load(Ordering::SeqCst),
        1,
        "the token is cached until it expires"
    );

    let wrong = upstream(&front, "nope");
    let err = wrong.manifest("lib/app", "v1", None).await.unwrap_err();
    assert!(err.to_string().contains("token endpoint"), "{err}");
}

#[tokio::test]
async fn basic_auth_flow() {
    let front = start(false).await;
    let up = upstream(&front, "secret");
    let m = up.manifest("lib/app", "v1", None).await.unwrap().unwrap();
    assert_eq!(&m.bytes[..], MANIFEST);
    let wrong = upstream(&front, "nope");
    let err = wrong.manifest("lib/app", "v1", None).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
}

/// A registry whose challenge names a token realm on another host over plain HTTP gets no credentials sent there;
/// the realm on the registry's own host (above) or over HTTPS does.
#[tokio::test]
async fn credentials_never_go_in_clear_text_to_another_host() {
    // The token server, on another loopback address than the registry; it counts what reaches it.
    let seen = Arc::new(AtomicUsize::new(0));
    let token_listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let token_addr = token_listener.local_addr().unwrap();
    let counter = seen.clone();
    let token_app = Router::new().fallback(any(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            r#"{"token":"T1"}"#
        }
    }));
    tokio::spawn(async move { axum::serve(token_listener, token_app).await.unwrap() });
    let registry_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry_addr = registry_listener.local_addr().unwrap();
    let challenge = format!(r#"Bearer realm="http://{token_addr}/token",service="elsewhere""#);
    let registry_app = Router::new().fallback(any(move || {
        let challenge = challenge.clone();
        async move {
            let mut h = HeaderMap::new();
            h.insert(header::WWW_AUTHENTICATE, challenge.parse().unwrap());
            (StatusCode::UNAUTHORIZED, h)
        }
    }));
    tokio::spawn(async move { axum::serve(registry_listener, registry_app).await.unwrap() });

    let up = Upstream::new(
        UpstreamConfig {
            name: "r".into(),
            url: format!("http://{registry_addr}"),
            credentials: Some(Credentials {
                username: "user".into(),
                password: "secret".into(),
            }),
        },
        Duration::from_secs(5),
    )
    .unwrap();
    let err = up.manifest("lib/app", "v1", None).await.unwrap_err();
    assert!(err.to_string().contains("not sending the credentials"), "{err}");
    assert_eq!(seen.load(Ordering::SeqCst), 0, "the credentials reached the other host");
}
