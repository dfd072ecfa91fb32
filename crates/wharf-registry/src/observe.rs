//! What operators watch: `/healthz` (the process answers), `/readyz` (the storage answers too), and per-request
//! Prometheus metrics recorded by [`record`], a middleware around every route:
//!
//! - `wharf_http_requests_total{route, method, status}`
//! - `wharf_http_request_duration_seconds{route, method}` (histogram; buckets set by the exporter's owner)
//! - `wharf_http_request_bytes_total{route}` and `wharf_http_response_bytes_total{route}` (from Content-Length;
//!   streamed bodies without one are not counted)
//!
//! `route` is the resource the path names (`manifests`, `blobs`, `uploads`, `tags`, `referrers`, `catalog`, `base`,
//! `other`), never the raw path, so the label set stays small whatever clients send.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use wharf_oci::Digest;
use wharf_oci::route::{self, Route};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;

use crate::App;

pub async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

/// How long `/readyz` waits for the store: a probe (typically 1-5 s timeout) must get a 503, not a timeout.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_millis(1500);

/// Ready when the store answers a lookup (a blob that is never there: the answer is "no", not an error) within
/// [`READY_WITHIN`].
pub async fn readyz(State(app): State<App>) -> Response {
    let absent = Digest::sha256_of(b"wharf readiness probe");
    let probe = app.store.blob_size(&absent);
    match tokio::time::timeout(READY_WITHIN, probe).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, format!("storage unavailable: {e}\n")).into_response()
        }
        Err(_) => {
            tracing::warn!(
                within_ms = READY_WITHIN.as_millis() as u64,
                "readiness check: the storage did not answer"
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "storage unavailable: no answer within {} ms\n",
                    READY_WITHIN.as_millis()
                ),
            )
                .into_response()
        }
    }
}

/// The resource a request path names, as a metric label: the router's own grammar ([`route::parse`]), so the
/// label is what the request was dispatched as.
fn route_label(path: &str) -> &'static str {
    match route::parse(path) {
        Ok(Route::Base) => "base",
        Ok(Route::Catalog) => "catalog",
        Ok(Route::Tags { .. }) => "tags",
        Ok(Route::Manifest { .. }) => "manifests",
        Ok(Route::Blob { .. }) => "blobs",
        Ok(Route::UploadStart { .. } | Route::Upload { .. }) => "uploads",
        Ok(Route::Referrers { .. }) => "referrers",
        Err(_) => "other",
    }
}

fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn content_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The authenticated user of a request, for the access log (set by `auth` and carried on the response).
#[derive(Debug, Clone)]
pub struct AccessUser(pub String);

/// Records the request metrics (see the module documentation) and writes the access log line (target
/// `wharf::access`, info): method, path, status, bytes in and out, duration, user, client address.
pub async fn record(request: Request, next: Next) -> Response {
    let route = route_label(request.uri().path());
    let method = method_label(request.method());
    let path = request.uri().path().to_owned();
    let client = crate::listen::remote_addr(request.extensions());
    // A HEAD response carries the Content-Length of the GET it stands for, but no body.
    let head = request.method() == axum::http::Method::HEAD;
    // The request body's bytes as the handler reads them (a chunked upload has no Content-Length).
    let read = Arc::new(AtomicU64::new(0));
    let request = {
        let read = read.clone();
        let (parts, body) = request.into_parts();
        let counted = body.into_data_stream().map(move |chunk| {
            if let Ok(c) = &chunk {
                read.fetch_add(c.len() as u64, Ordering::Relaxed);
            }
            chunk
        });
        Request::from_parts(parts, axum::body::Body::from_stream(counted))
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    metrics::counter!("wharf_http_requests_total", "route" => route, "method" => method, "status" => status.to_string())
        .increment(1);
    metrics::histogram!("wharf_http_request_duration_seconds", "route" => route, "method" => method)
        .record(elapsed.as_secs_f64());
    let bytes_in = read.load(Ordering::Relaxed);
    if bytes_in > 0 {
        metrics::counter!("wharf_http_request_bytes_total", "route" => route).increment(bytes_in);
    }
    let bytes_out = content_length(response.headers()).filter(|_| !head).unwrap_or(0);
    if bytes_out > 0 {
        metrics::counter!("wharf_http_response_bytes_total", "route" => route).increment(bytes_out);
    }
    let user = response.extensions().get::<AccessUser>().map_or("-", |u| u.0.as_str());
    let client = client.map_or_else(|| "-".to_string(), |c| c.to_string());
    tracing::info!(target: "wharf::access", method, path, status, bytes_in, bytes_out,
        ms = elapsed.as_millis() as u64, user, client, "request");
    response
}

#[cfg(test)]
mod tests {
    use super::route_label;

    #[test]
    fn labels() {
        for (path, label) in [
            ("/v2/", "base"),
            ("/v2", "base"),
            ("/v2/_catalog", "catalog"),
            ("/v2/a/b/manifests/v1", "manifests"),
            ("/v2/a/blobs/sha256:00", "blobs"),
            ("/v2/a/blobs/uploads/", "uploads"),
            ("/v2/a/blobs/uploads/123", "uploads"),
            ("/v2/a/tags/list", "tags"),
            ("/v2/a/referrers/sha256:00", "referrers"),
            ("/metrics", "other"),
            ("/v2/a/b", "other"),
        ] {
            assert_eq!(route_label(path), label, "{path}");
        }
    }
}
