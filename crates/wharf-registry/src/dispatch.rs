//! The one entry point for `/v2/*`: parse the path, pick the handler for (resource, method), and decorate the
//! response with the API version header. Follow a request from here by the handler names.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use wharf_oci::route::{self, Route};

use crate::error::{ApiError, ApiResult};
use crate::handlers::{base, blobs, catalog, manifests, referrers, tags, uploads};
use crate::headers::{API_VERSION, API_VERSION_VALUE};
use crate::{App, pkgmirror};

pub async fn dispatch(State(app): State<App>, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let (user, result) = route(app, req).await;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if let Some(u) = user {
        // For the access log (`observe::record`).
        resp.extensions_mut().insert(u);
    }
    if method == Method::HEAD {
        // HEAD carries the headers of the GET, never a body (errors included).
        *resp.body_mut() = axum::body::Body::empty();
    }
    resp.headers_mut().insert(API_VERSION, API_VERSION_VALUE);
    tracing::debug!(%method, %path, status = resp.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
    resp
}

pub async fn not_found() -> Response {
    ApiError::from(route::RouteError::NotFound).into_response()
}

/// `/metrics`: with auth on, for a caller who authenticates (unless `public_metrics`).
pub async fn metrics(State(app): State<App>, req: Request) -> Response {
    if let Some(auth) = &app.auth
        && !app.config.public_metrics
        && let Err(e) = auth.reader(req.headers(), req.uri()).await
    {
        return e.into_response();
    }
    match &app.metrics {
        Some(render) => (
            [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            render(),
        )
            .into_response(),
        None => not_found().await,
    }
}

/// The request path with the repository name replaced when it addresses a mirrored namespace (see
/// `namespaces.rs`), and that final name.
async fn effective_path(
    app: &App,
    path: &str,
    query: Option<&str>,
    method: &Method,
) -> Result<Option<(String, String)>, ApiError> {
    let namespaces = &app.config.namespaces;
    if namespaces.is_empty() {
        return Ok(None);
    }
    let name = match route::parse(path)? {
        Route::Base | Route::Catalog => return Ok(None),
        Route::Tags { name }
        | Route::Manifest { name, .. }
        | Route::Blob { name, .. }
        | Route::UploadStart { name }
        | Route::Upload { name, .. }
        | Route::Referrers { name, .. } => name,
    };
    let ns = wharf_oci::query::param(query, "ns");
    let read = matches!(*method, Method::GET | Method::HEAD);
    let Some(new_name) = namespaces.resolve(app.store.as_ref(), name, ns.as_deref(), read).await else {
        return Ok(None);
    };
    // `name` starts right after "/v2/".
    let path = format!("/v2/{new_name}{}", &path[4 + name.len()..]);
    Ok(Some((path, new_name)))
}

/// The repository of a request to a mirror-baked image (`pkgmirror/<preset>/<source>`), if it is one.
fn pkgmirror_name<'a>(route: &Route<'a>) -> Option<&'a str> {
    let name = match route {
        Route::Base | Route::Catalog => return None,
        Route::Tags { name }
        | Route::Manifest { name, .. }
        | Route::Blob { name, .. }
        | Route::UploadStart { name }
        | Route::Upload { name, .. }
        | Route::Referrers { name, .. } => *name,
    };
    pkgmirror::split(name).map(|_| name)
}

/// The request's authenticated user (for the access log) and its answer.
async fn route(app: App, mut req: Request) -> (Option<crate::observe::AccessUser>, ApiResult) {
    let original = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let method = req.method().clone();
    let rewritten = match effective_path(&app, &original, query.as_deref(), &method).await {
        Ok(r) => r,
        Err(e) => return (None, Err(e)),
    };
    // Access is decided on the repository the request reaches (after the namespace rewrite); a token must also name
    // the repository the client asked for (see `auth`).
    if let Some(auth) = app.auth.clone()
        && let Err(e) = auth
            .check(&mut req, rewritten.as_ref().map(|(_, name)| name.as_str()))
            .await
    {
        return (None, Err(e));
    }
    let user = req.extensions().get::<crate::observe::AccessUser>().cloned();
    (
        user,
        handle(app, req, rewritten.map(|(path, _)| path).unwrap_or(original)).await,
    )
}

/// The handler for (resource, method).
async fn handle(app: App, req: Request, path: String) -> ApiResult {
    let route = route::parse(&path)?;
    let m = req.method().clone();
    if let Some(name) = pkgmirror_name(&route) {
        return match (route, m) {
            (Route::Manifest { name, reference }, Method::GET | Method::HEAD) => {
                pkgmirror::manifest(&app, name, reference, req.headers()).await
            }
            (Route::Blob { name, digest }, Method::GET) => {
                pkgmirror::blob(&app, name, digest, req.headers(), false).await
            }
            (Route::Blob { name, digest }, Method::HEAD) => {
                pkgmirror::blob(&app, name, digest, req.headers(), true).await
            }
            (Route::Tags { name }, Method::GET) => {
                tags::list(&app, pkgmirror::source_of(name), req.uri().query()).await
            }
            (Route::Referrers { name, digest }, Method::GET) => {
                referrers::get(&app, name, digest, req.uri().query()).await
            }
            _ => Err(pkgmirror::read_only(name)),
        };
    }
    match (route, m) {
        (Route::Base, Method::GET | Method::HEAD) => Ok(base::get()),
        (Route::Catalog, Method::GET) => catalog::get(&app, req.uri().query()).await,
        (Route::Tags { name }, Method::GET) => tags::list(&app, name, req.uri().query()).await,
        (Route::Manifest { name, reference }, Method::GET | Method::HEAD) => {
            manifests::get(&app, name, reference, req.headers()).await
        }
        (Route::Manifest { name, reference }, Method::PUT) => manifests::put(&app, name, reference, req).await,
        (Route::Manifest { name, reference }, Method::DELETE) => manifests::delete(&app, name, reference).await,
        (Route::Blob { name, digest }, Method::GET) => blobs::get(&app, name, digest, req.headers(), false).await,
        (Route::Blob { name, digest }, Method::HEAD) => blobs::get(&app, name, digest, req.headers(), true).await,
        (Route::Blob { name, digest }, Method::DELETE) => blobs::delete(&app, name, digest).await,
        (Route::UploadStart { name }, Method::POST) => uploads::post(&app, name, req).await,
        (Route::Upload { name, id }, Method::GET) => uploads::status(&app, name, id).await,
        (Route::Upload { name, id }, Method::PATCH) => uploads::patch(&app, name, id, req).await,
        (Route::Upload { name, id }, Method::PUT) => uploads::put(&app, name, id, req).await,
        (Route::Upload { name, id }, Method::DELETE) => uploads::delete(&app, name, id).await,
        (Route::Referrers { name, digest }, Method::GET) => referrers::get(&app, name, digest, req.uri().query()).await,
        _ => Err(ApiError::unsupported_method()),
    }
}
