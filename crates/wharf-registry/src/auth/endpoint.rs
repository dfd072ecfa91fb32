//! `/auth/token`: wharf's own token server (docker's token authentication specification), served when wharf is
//! the issuer.
//!
//! - `GET /auth/token?service=S&scope=repository:NAME:ACTIONS&scope=...[&account=USER]` with basic credentials
//!   (checked against the htpasswd file) or none (anonymous: only what the `anonymous` rules allow). Scopes may also
//!   be space-separated in one parameter.
//! - `POST /auth/token` with an OAuth2 form (`grant_type=password&username=&password=&service=&scope=`), as
//!   containerd sends when it has credentials. Refresh tokens are not issued (`grant_type=refresh_token` is a 400,
//!   on which containerd falls back to GET).
//!
//! The answer is `{"token","access_token","expires_in","issued_at"}`; the token's `access` claim lists, per scope
//! asked, the actions both asked for and allowed (none: the entry is left out, and the registry will refuse).
//! Wrong credentials are a 401.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wharf_oci::ErrorCode;

use super::rules::{Actions, Identity};
use super::token::{self, AccessEntry};
use super::{Credentials, check_password, is_empty_basic, parse_authorization};
use crate::App;
use crate::error::ApiError;

/// Largest form body accepted on POST.
const MAX_FORM: usize = 64 << 10;

struct TokenRequest {
    service: Option<String>,
    scopes: Vec<String>,
    credentials: Option<(String, String)>,
}

pub async fn token(State(app): State<App>, req: Request) -> Response {
    match handle(app, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn pairs(s: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

async fn read_request(req: Request) -> Result<TokenRequest, ApiError> {
    let bad = |m: &str| ApiError::new(ErrorCode::Unsupported, m).with_status(StatusCode::BAD_REQUEST);
    if req.method() == Method::GET {
        let q = pairs(req.uri().query().unwrap_or(""));
        let credentials = match req
            .headers()
            .get(header::AUTHORIZATION)
            .filter(|v| !is_empty_basic(v.as_bytes()))
        {
            None => None,
            Some(v) => match parse_authorization(v.as_bytes()) {
                Some(Credentials::Basic { user, password }) => Some((user, password)),
                _ => return Err(unauthorized("basic credentials expected")),
            },
        };
        return Ok(TokenRequest {
            service: q.iter().find(|(k, _)| k == "service").map(|(_, v)| v.clone()),
            scopes: q.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.clone()).collect(),
            credentials,
        });
    }
    let body = axum::body::to_bytes(req.into_body(), MAX_FORM)
        .await
        .map_err(|_| bad("form too large or cut off"))?;
    let form = pairs(std::str::from_utf8(&body).map_err(|_| bad("form is not UTF-8"))?);
    let get = |key: &str| form.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    match get("grant_type").as_deref() {
        Some("password") => {}
        Some(other) => {
            return Err(bad(&format!(
                "unsupported grant_type {other:?} (only \"password\"; or GET with basic auth)"
            )));
        }
        None => return Err(bad("grant_type is missing")),
    }
    let user = get("username")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| bad("username is missing"))?;
    Ok(TokenRequest {
        service: get("service"),
        scopes: form
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.clone())
            .collect(),
        credentials: Some((user, get("password").unwrap_or_default())),
    })
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
        .with_header(header::WWW_AUTHENTICATE, r#"Basic realm="wharf""#.into())
}

async fn handle(app: App, req: Request) -> Result<Response, ApiError> {
    let Some(auth) = app.auth.clone() else {
        return Err(ApiError::from(wharf_oci::route::RouteError::NotFound));
    };
    let Some((issuer, users)) = auth.issuer() else {
        return Err(ApiError::from(wharf_oci::route::RouteError::NotFound));
    };
    if req.method() != Method::GET && req.method() != Method::POST {
        return Err(ApiError::unsupported_method());
    }
    let request = read_request(req).await?;
    if let Some(s) = &request.service
        && s != auth.service()
    {
        return Err(ApiError::new(ErrorCode::Unsupported, format!("unknown service {s:?}"))
            .with_status(StatusCode::BAD_REQUEST));
    }
    let who = match request.credentials {
        None => Identity::Anonymous,
        Some((user, password)) => {
            if !check_password(users.clone(), user.clone(), password).await {
                tracing::info!(user, "token request refused: wrong user or password");
                return Err(unauthorized("incorrect username or password"));
            }
            Identity::User(user)
        }
    };
    let rules = auth.rules();
    let mut access: Vec<AccessEntry> = Vec::new();
    for scope in request.scopes.iter().flat_map(|s| s.split_whitespace()) {
        let Some(asked) = token::parse_scope(scope) else {
            tracing::debug!(scope, "token request: scope ignored");
            continue;
        };
        let granted_actions: Vec<String> = if asked.kind == "registry" {
            let wants_all = asked.actions.iter().any(|a| a == "*");
            if wants_all && rules.may_list_catalog(&who) {
                vec!["*".to_owned()]
            } else {
                Vec::new()
            }
        } else {
            // A name may reach a mirrored repository (`?ns=`, the default upstream), which the token request does
            // not say: granted if the rules allow it or one of those; the registry checks the one the request
            // reaches.
            let allowed = app
                .config
                .namespaces
                .upstreams
                .iter()
                .map(|u| rules.allowed(&who, &format!("{}/{}", u.name, asked.name)))
                .fold(rules.allowed(&who, &asked.name), Actions::union);
            let set: Actions = token::actions_of(&asked.actions).intersect(allowed);
            set.iter().map(|a| a.as_str().to_owned()).collect()
        };
        if granted_actions.is_empty() {
            continue;
        }
        match access.iter_mut().find(|e| e.kind == asked.kind && e.name == asked.name) {
            Some(e) => {
                for a in granted_actions {
                    if !e.actions.contains(&a) {
                        e.actions.push(a);
                    }
                }
            }
            None => access.push(AccessEntry {
                kind: asked.kind,
                name: asked.name,
                actions: granted_actions,
            }),
        }
    }
    let issued = issuer
        .issue(who.name(), auth.service(), &access)
        .map_err(|e| ApiError::new(ErrorCode::Unknown, e))?;
    tracing::debug!(user = who.name(), access = ?access.iter().map(AccessEntry::scope).collect::<Vec<_>>(), "token issued");
    let json = serde_json::to_vec(&issued).unwrap_or_default();
    let mut resp = Response::new(Body::from(json));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
