//! The registry mirror the local engine talks to (`registry-mirrors` for Docker, `hosts.toml` for containerd):
//! read-only. Manifests and tag lists pass through to the upstream (its token flow included); blob GETs are P2P
//! tasks, streamed to the engine piece by piece in order as they arrive. The last piece is held back until the whole
//! blob has matched its digest, so an engine never receives a complete wrong blob; a download that fails ends the
//! response early (the engine retries), never with a 502 for something the origin can serve.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use wharf_oci::Digest;
use wharf_oci::route::{self, Route};

use super::Node;
use super::task::{Phase, Task};

type Metrics = Option<Arc<dyn Fn() -> String + Send + Sync>>;

#[derive(Clone)]
struct AppState {
    node: Arc<Node>,
    metrics: Metrics,
}

pub fn router(node: Arc<Node>, metrics: Metrics) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .with_state(AppState { node, metrics })
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn handle(State(s): State<AppState>, req: Request) -> Response {
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let path = uri.path();
    if path == "/metrics" {
        return match &s.metrics {
            Some(render) => render().into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    if path == "/healthz" {
        return StatusCode::OK.into_response();
    }
    let ns = uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("ns="))
            .map(|v| v.replace("%3A", ":").replace("%3a", ":"))
    });
    let read = method == Method::GET || method == Method::HEAD;
    let route = match route::parse(path) {
        Ok(r) => r,
        Err(_) => return error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "not a registry API path"),
    };
    if !read {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this mirror is read-only",
        );
    }
    if route == Route::Base {
        return (
            StatusCode::OK,
            [
                ("Docker-Distribution-API-Version", "registry/2.0"),
                ("Content-Type", "application/json"),
            ],
            "{}",
        )
            .into_response();
    }
    let Some(upstream) = s.node.upstream(ns.as_deref()) else {
        return error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "no upstream for this namespace");
    };
    match route {
        Route::Manifest { name, reference } => {
            let repo = wharf_mirror::config::upstream_repository(&upstream.config.name, name);
            let expected = reference.parse::<Digest>().ok();
            match upstream.manifest(&repo, reference, expected.as_ref()).await {
                Ok(Some(m)) => {
                    let headers = [
                        (header::CONTENT_TYPE, m.media_type.clone()),
                        (
                            header::HeaderName::from_static("docker-content-digest"),
                            m.digest.to_string(),
                        ),
                        (header::CONTENT_LENGTH, m.body.len().to_string()),
                    ];
                    if method == Method::HEAD {
                        (StatusCode::OK, headers).into_response()
                    } else {
                        (StatusCode::OK, headers, m.body).into_response()
                    }
                }
                Ok(None) => error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", "manifest unknown upstream"),
                Err(e) => error(StatusCode::BAD_GATEWAY, "UNKNOWN", &e.to_string()),
            }
        }
        Route::Tags { name } => {
            let repo = wharf_mirror::config::upstream_repository(&upstream.config.name, name);
            match upstream.tags(&repo).await {
                Ok(Some(tags)) => (
                    [(header::CONTENT_TYPE, "application/json")],
                    serde_json::json!({"name": name, "tags": tags}).to_string(),
                )
                    .into_response(),
                Ok(None) => error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "repository unknown upstream"),
                Err(e) => error(StatusCode::BAD_GATEWAY, "UNKNOWN", &e.to_string()),
            }
        }
        Route::Blob { name, digest } => {
            let Ok(digest) = digest.parse::<Digest>() else {
                return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "invalid digest");
            };
            let repo = wharf_mirror::config::upstream_repository(&upstream.config.name, name);
            // A HEAD asks whether the blob exists and its size: answered without starting a download.
            let (size, body) = if method == Method::HEAD {
                match s.node.blob_size(&upstream, &repo, &digest).await {
                    Ok(Some(size)) => (size, Body::empty()),
                    Ok(None) => return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unknown upstream"),
                    Err(e) => return error(StatusCode::BAD_GATEWAY, "UNKNOWN", &e.to_string()),
                }
            } else {
                match s.node.blob_task(upstream, &repo, &digest).await {
                    Ok(Some(t)) => (t.size, Body::from_stream(stream(t))),
                    Ok(None) => return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unknown upstream"),
                    Err(e) => return error(StatusCode::BAD_GATEWAY, "UNKNOWN", &e.to_string()),
                }
            };
            let mut resp = Response::new(body);
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&size.to_string()) {
                h.insert(header::CONTENT_LENGTH, v);
            }
            if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
                h.insert("docker-content-digest", v);
            }
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            resp
        }
        _ => error(StatusCode::NOT_FOUND, "UNSUPPORTED", "not served by a node"),
    }
}

/// The task's bytes in order, each piece as soon as it is held; the last one only once the whole content is verified.
pub fn stream(task: Arc<Task>) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let guard = task.reader();
    let rx = task.subscribe();
    let generation = rx.borrow().generation;
    futures_util::stream::unfold((0u32, rx, task, guard), move |(n, mut rx, task, guard)| async move {
        if n >= task.pieces {
            return None;
        }
        let last = n + 1 == task.pieces;
        loop {
            let p = rx.borrow_and_update().clone();
            if p.generation != generation {
                return Some((
                    Err(std::io::Error::other("the download started over")),
                    (task.pieces, rx, task, guard),
                ));
            }
            if let Phase::Failed(e) = &p.phase {
                return Some((Err(std::io::Error::other(e.clone())), (task.pieces, rx, task, guard)));
            }
            if p.have[n as usize] && (!last || p.phase == Phase::Done) {
                break;
            }
            if rx.changed().await.is_err() {
                return Some((
                    Err(std::io::Error::other("download ended")),
                    (task.pieces, rx, task, guard),
                ));
            }
        }
        let t = task.clone();
        let data = match tokio::task::spawn_blocking(move || t.read_piece(n)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Some((Err(e), (task.pieces, rx, task, guard))),
            Err(e) => {
                return Some((
                    Err(std::io::Error::other(e.to_string())),
                    (task.pieces, rx, task, guard),
                ));
            }
        };
        Some((Ok(Bytes::from(data)), (n + 1, rx, task, guard)))
    })
}
