//! `RegistryClient::ping` (what `wharf login` checks) against a basic-auth registry and a bearer registry whose token
//! endpoint takes a password (GET with basic auth) or an identity token (OAuth2 `refresh_token` grant, POST).

use axum::Router;
use axum::extract::RawQuery;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use wharf_client::registry::{Credentials, RegistryClient, RegistryOptions};
use wharf_client::{Error, Reference, RemoteError};

/// `user:secret`
const BASIC: &str = "Basic dXNlcjpzZWNyZXQ=";

fn authorization(h: &HeaderMap) -> &str {
    h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn start(bearer: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let realm = format!("http://{addr}/token");
    let v2 = move |h: HeaderMap| {
        let realm = realm.clone();
        async move {
            let (ok, challenge) = if bearer {
                (
                    authorization(&h) == "Bearer good",
                    format!(r#"Bearer realm="{realm}",service="svc""#),
                )
            } else {
                (authorization(&h) == BASIC, r#"Basic realm="x""#.to_owned())
            };
            if ok {
                "{}".into_response()
            } else {
                (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)]).into_response()
            }
        }
    };
    // GET with basic credentials (docker's password flow), or POST of the refresh-token grant (identity token).
    let token_get = |h: HeaderMap, RawQuery(q): RawQuery| async move {
        if authorization(&h) == BASIC && q.as_deref() == Some("service=svc") {
            r#"{"token":"good"}"#.into_response()
        } else {
            StatusCode::UNAUTHORIZED.into_response()
        }
    };
    let token_post = |h: HeaderMap, body: String| async move {
        let form = "grant_type=refresh_token&refresh_token=rt%2B1&client_id=wharf&service=svc";
        let typed =
            h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) == Some("application/x-www-form-urlencoded");
        if typed && body == form && authorization(&h).is_empty() {
            r#"{"access_token":"good","expires_in":60}"#.into_response()
        } else {
            StatusCode::UNAUTHORIZED.into_response()
        }
    };
    let router = Router::new()
        .route("/v2/", get(v2))
        .route("/token", get(token_get).post(token_post));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn ping(addr: &str, credentials: Option<Credentials>) -> Result<(), Error> {
    let reference = Reference::parse(&format!("{addr}/any")).unwrap();
    let options = RegistryOptions {
        insecure: false,
        credentials,
        cert_dir: None,
    };
    RegistryClient::new(reference, &options).unwrap().ping().await
}

#[tokio::test]
async fn basic_registry() {
    let addr = start(false).await;
    ping(&addr, Credentials::parse("user:secret")).await.unwrap();
    let e = ping(&addr, Credentials::parse("user:wrong")).await.unwrap_err();
    assert!(matches!(e, Error::Remote(RemoteError::Auth { .. })), "{e}");
    assert!(e.to_string().contains("refused the credentials"), "{e}");
    let e = ping(&addr, None).await.unwrap_err();
    assert!(matches!(e, Error::Remote(RemoteError::Auth { .. })), "{e}");
}

#[tokio::test]
async fn bearer_registry_with_password_or_identity_token() {
    let addr = start(true).await;
    ping(&addr, Credentials::parse("user:secret")).await.unwrap();
    ping(&addr, Some(Credentials::from_identity_token("rt+1")))
        .await
        .unwrap();
    for wrong in [
        Credentials::parse("user:wrong"),
        Some(Credentials::from_identity_token("stale")),
    ] {
        let e = ping(&addr, wrong).await.unwrap_err();
        assert!(e.to_string().contains("token endpoint"), "{e}");
        assert!(e.to_string().contains("401"), "{e}");
    }
}
