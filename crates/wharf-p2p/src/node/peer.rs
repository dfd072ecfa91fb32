//! The peer API: `GET /p2p/v1/tasks/{task}/pieces/{n}` answers with a piece this node holds verified, and nothing
//! else from its disk (the task id is validated; the piece must be marked held), or relays one it is receiving (from
//! a peer or the origin) as the bytes arrive (relay.rs). Cluster token required when set. Upload bytes are paced by
//! `--upload-ratelimit`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::Node;

/// How long a request for a piece this node neither holds nor receives waits for it to start arriving.
const RELAY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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
    let Some(t) = node.task(&task) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let guard = t.reader();
    // A relay's requester may come a moment before this node's own fetch of the piece has started.
    let deadline = tokio::time::Instant::now() + RELAY_WAIT;
    // `Some(None)`: held; `Some(Some(incoming))`: arriving.
    let found = crate::wait::until(&t.changed, deadline, || {
        if t.has(n) { Some(None) } else { t.incoming(n).map(Some) }
    })
    .await;
    match found {
        None => return StatusCode::NOT_FOUND.into_response(),
        Some(Some(incoming)) => {
            metrics::counter!("wharf_p2p_pieces_relayed_total").increment(1);
            return paced(incoming.read(), node, guard);
        }
        Some(None) => {}
    }
    let reader = t.clone();
    let data = match tokio::task::spawn_blocking(move || reader.read_piece(n)).await {
        Ok(Ok(d)) => d,
        _ => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    #[cfg(debug_assertions)]
    let data = fault::apply(data);
    metrics::counter!("wharf_p2p_pieces_served_total").increment(1);
    // Paced in 256 KiB slices so one slow upload limit does not hold a whole piece's worth of tokens.
    // (Slices of one buffer, not copies.)
    let data = Bytes::from(data);
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..data.len())
        .step_by(256 << 10)
        .map(|at| Ok(data.slice(at..(at + (256 << 10)).min(data.len()))))
        .collect();
    paced(futures_util::stream::iter(chunks), node, guard)
}

/// A response body of `chunks`, each one let through by `--upload-ratelimit` and counted as served; `guard` keeps
/// the task from eviction until the body is done.
fn paced(
    chunks: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    node: Arc<Node>,
    guard: super::task::ReaderGuard,
) -> Response {
    let chunks = Box::pin(chunks);
    let stream = futures_util::stream::unfold((chunks, node, guard), |(mut chunks, node, guard)| async move {
        let chunk = futures_util::StreamExt::next(&mut chunks).await?;
        if let Ok(c) = &chunk {
            node.upload_limit.take(c.len()).await;
            metrics::counter!("wharf_p2p_bytes_served_total").increment(c.len() as u64);
        }
        Some((chunk, (chunks, node, guard)))
    });
    Response::new(Body::from_stream(stream))
}

/// A fault switch for tests, compiled into debug builds only: `WHARF_P2P_FAULT=corrupt` makes this node serve
/// pieces with one byte flipped; `forge` also publishes, for the pieces it fetches from the origin, the digests of
/// those flipped bytes (a member lying with its lease).
#[cfg(debug_assertions)]
pub(crate) mod fault {
    fn is(name: &str) -> bool {
        std::env::var("WHARF_P2P_FAULT").as_deref() == Ok(name)
    }

    pub fn apply(mut data: Vec<u8>) -> Vec<u8> {
        if (is("corrupt") || is("forge"))
            && let Some(b) = data.first_mut()
        {
            *b ^= 0xff;
        }
        data
    }

    /// The digest a forging node publishes for a piece it fetched.
    pub fn published_digest(data: &[u8], digest: String) -> String {
        if is("forge") {
            wharf_oci::Digest::sha256_of(&apply(data.to_vec())).hex().to_owned()
        } else {
            digest
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::node::NodeConfig;
    use crate::node::task::{Origin, Task};
    use crate::proto::Peer;

    const TASK: &str = "sha256:00000000000000000000000000000000000000000000000000000000000000cc";

    /// A node's configuration for tests: on loopback, no schedulers, no upstreams, 64 KiB pieces.
    fn test_config(root: &std::path::Path, id: &str, load_finished: bool) -> NodeConfig {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        NodeConfig {
            root: root.to_path_buf(),
            listen: any,
            peer_listen: any,
            peer: Peer {
                id: id.into(),
                addr: "http://127.0.0.1:1".into(),
                rack: None,
                seed: false,
                relays: true,
            },
            schedulers: vec![],
            token: None,
            upstreams: vec![],
            default_upstream: None,
            piece_len: 64 << 10,
            concurrency: 4,
            origin_concurrency: 1,
            download_rate: None,
            upload_rate: None,
            cache_bytes: 0,
            timeout: Duration::from_secs(5),
            tag_ttl: Duration::from_secs(60),
            load_finished,
        }
    }

    /// A node with one task of three 64 KiB pieces, holding none, and its peer API on a loopback port.
    async fn node_with_task(root: &std::path::Path) -> (Arc<Task>, String) {
        let config = test_config(root, "n", true);
        let node = crate::node::Node::new(config).unwrap();
        let origin = Origin::Url {
            client: reqwest::Client::new(),
            url: "http://127.0.0.1:1/unused".into(),
            headers: vec![],
        };
        let task = Arc::new(Task::create(TASK.into(), 3 << 16, 64 << 10, root.join("t"), origin, None).unwrap());
        let cell = Arc::new(tokio::sync::OnceCell::new());
        assert!(cell.set(task.clone()).is_ok());
        node.tasks.lock().unwrap().insert(TASK.into(), cell);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/p2p/v1/tasks/{TASK}/pieces", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router(node)).await });
        (task, url)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_piece_being_received_is_relayed_as_it_arrives_and_ends_short_if_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (task, url) = node_with_task(dir.path()).await;
        let c = reqwest::Client::new();

        // Asked for a moment before the node's own fetch starts: the request waits for it.
        let early = tokio::spawn({
            let (c, url) = (c.clone(), url.clone());
            async move { c.get(format!("{url}/1")).send().await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let receiving = task.receive(1);
        receiving.incoming.push(Bytes::from(vec![1u8; 40 << 10]));
        receiving.incoming.push(Bytes::from(vec![2u8; 24 << 10]));
        let mut resp = early.await.unwrap();
        assert_eq!(resp.status(), 200);
        // The first chunk arrives before the piece is whole here; the last one only once it is verified.
        let first = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .unwrap()
            .unwrap();
        let mut got = first.expect("a first chunk").to_vec();
        assert!(got.iter().all(|b| *b == 1));
        receiving.incoming.complete();
        while let Some(c) = resp.chunk().await.unwrap() {
            got.extend_from_slice(&c);
        }
        assert_eq!(got.len(), 64 << 10);
        assert!(got[..40 << 10].iter().all(|b| *b == 1) && got[40 << 10..].iter().all(|b| *b == 2));
        drop(receiving);

        // A piece whose fetch fails here: the relayed answer ends short (cleanly: this node is alive), never whole.
        let receiving = task.receive(2);
        receiving.incoming.push(Bytes::from(vec![3u8; 1000]));
        receiving.incoming.push(Bytes::from(vec![4u8; 1000]));
        let resp = c.get(format!("{url}/2")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        drop(receiving);
        let body = resp.bytes().await.unwrap();
        assert_eq!(body.len(), 1000, "only what was published before the failure");

        // Neither held nor arriving: 404 after a short wait.
        let resp = c.get(format!("{url}/0")).send().await.unwrap();
        assert_eq!(resp.status(), 404);
    }

    /// A node that does not load finished tasks (`wharf get`) trusts no `done` record it finds under its root; one
    /// that does (`wharf node`) serves them.
    #[tokio::test]
    async fn finished_tasks_are_loaded_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Origin::Url {
            client: wharf_remote::http::client_builder().build().unwrap(),
            url: "http://127.0.0.1:1/unused".into(),
            headers: vec![],
        };
        let task_root = crate::node::task::task_dir(dir.path(), TASK);
        let task = Arc::new(Task::create(TASK.into(), 3 << 16, 64 << 10, task_root, origin, None).unwrap());
        let data = vec![7u8; task.size as usize];
        for n in 0..task.pieces {
            let (start, end) = task.range(n);
            task.store_piece(n, &data[start as usize..end as usize]).unwrap();
        }
        let digests = (0..task.pieces)
            .map(|n| {
                let (start, end) = task.range(n);
                Some(
                    wharf_oci::Digest::sha256_of(&data[start as usize..end as usize])
                        .hex()
                        .to_owned(),
                )
            })
            .collect::<Vec<_>>();
        if let Ok(mut d) = task.digests.lock() {
            *d = digests;
        }
        let config = |load_finished| test_config(dir.path(), "m", load_finished);
        let writer = crate::node::Node::new(config(false)).unwrap();
        writer.finished(&task);
        let ignoring = crate::node::Node::new(config(false)).unwrap();
        assert!(ignoring.task(TASK).is_none(), "a done record was trusted");
        let loading = crate::node::Node::new(config(true)).unwrap();
        assert_eq!(loading.task(TASK).map(|t| t.size), Some(task.size));
    }
}
