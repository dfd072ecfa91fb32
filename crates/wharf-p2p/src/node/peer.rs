//! The peer API: `GET /p2p/v1/tasks/{task}/pieces/{n}` answers with a piece this node holds verified, and nothing
//! else from its disk (the task id is validated; the piece must be marked held). Cluster token required when set.
//! Upload bytes are paced by `--upload-ratelimit`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::Node;

pub fn router(node: Arc<Node>) -> axum::Router {
    axum::Router::new()
        .route("/p2p/v1/tasks/{task}/pieces/{n}", axum::routing::get(piece))
        .route("/healthz", axum::routing::get(|| async { StatusCode::OK }))
        .with_state(node)
}

/// Constant-time comparison of the presented bearer token with ours.
pub fn authorized(expected: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(want) = expected else { return true };
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    got.len() == want.len() && got.bytes().zip(want.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn piece(State(node): State<Arc<Node>>, Path((task, n)): Path<(String, u32)>, headers: HeaderMap) -> Response {
    if !authorized(node.config.token.as_deref(), &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if !crate::proto::valid_task(&task) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let Some(t) = node.task(&task).filter(|t| t.has(n)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let guard = t.reader();
    let reader = t.clone();
    let data = match tokio::task::spawn_blocking(move || reader.read_piece(n)).await {
        Ok(Ok(d)) => d,
        _ => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    #[cfg(debug_assertions)]
    let data = fault::apply(data);
    metrics::counter!("wharf_p2p_pieces_served_total").increment(1);
    metrics::counter!("wharf_p2p_bytes_served_total").increment(data.len() as u64);
    // Paced in 256 KiB slices so one slow upload limit does not hold a whole piece's worth of tokens.
    // (Slices of one buffer, not copies.)
    let data = Bytes::from(data);
    let chunks: Vec<Bytes> = (0..data.len())
        .step_by(256 << 10)
        .map(|at| data.slice(at..(at + (256 << 10)).min(data.len())))
        .collect();
    let stream = futures_util::stream::unfold((chunks.into_iter(), node, guard), |(mut it, node, guard)| async move {
        let c = it.next()?;
        node.upload_limit.take(c.len()).await;
        Some((Ok::<_, std::io::Error>(c), (it, node, guard)))
    });
    Response::new(Body::from_stream(stream))
}

/// A fault switch for tests, compiled into debug builds only: `WHARF_P2P_FAULT=corrupt` makes this node serve
/// pieces with one byte flipped.
#[cfg(debug_assertions)]
mod fault {
    pub fn apply(mut data: Vec<u8>) -> Vec<u8> {
        if std::env::var("WHARF_P2P_FAULT").as_deref() == Ok("corrupt")
            && let Some(b) = data.first_mut()
        {
            *b ^= 0xff;
        }
        data
    }
}
