//! `wharf get`: one file through the swarm (Dragonfly's dfget), with an in-process node that serves its pieces to
//! peers while it downloads and leaves the swarm when done. Its pieces live in a fresh private directory (random
//! name, mode 0700, removed at the end), never one another local user could predict and prepare.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use wharf_oci::Digest;

use crate::P2pError;
use crate::node::{DEFAULT_CONCURRENCY, Node, NodeConfig, net, peer, stream};
use crate::proto::Peer;

pub struct GetOptions {
    /// The file (http:// or https://).
    pub url: String,
    /// Where to write it; `<output>.part` until it is whole and verified.
    pub output: PathBuf,
    /// Without one, the file comes straight from its origin.
    pub schedulers: Vec<String>,
    /// What the whole file must hash to.
    pub digest: Option<Digest>,
    /// Headers for the origin.
    pub headers: Vec<(String, String)>,
    pub token: Option<String>,
    /// The peer API while downloading.
    pub peer_listen: SocketAddr,
    pub advertise_addr: Option<IpAddr>,
    /// Download limit, bytes/s.
    pub ratelimit: Option<u64>,
}

/// What a download reports as it goes.
pub enum GetProgress {
    /// The file's size is known.
    Started { size: u64 },
    /// More bytes were written.
    Written(u64),
}

/// Downloads the file; returns its size.
pub async fn get(options: GetOptions, mut progress: impl FnMut(GetProgress)) -> Result<u64, P2pError> {
    let GetOptions {
        url,
        output,
        schedulers,
        digest,
        headers,
        token,
        peer_listen,
        advertise_addr,
        ratelimit,
    } = options;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(P2pError::Config(format!("{url}: only http:// and https:// URLs")));
    }
    let ip = if schedulers.is_empty() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        net::advertise(advertise_addr, &schedulers, Some(peer_listen))?
    };
    let tmp = std::env::temp_dir();
    let root = tempfile::Builder::new()
        .prefix("wharf-get-")
        .tempdir_in(&tmp)
        .map_err(|source| P2pError::Io { path: tmp, source })?;
    let peer_listener = net::peer_listener(peer_listen, None)?;
    let port = peer_listener
        .local_addr()
        .map_err(|source| P2pError::Listen {
            addr: peer_listen,
            source,
        })?
        .port();
    let addr = SocketAddr::new(ip, port);
    let node = Node::new(NodeConfig {
        root: root.path().to_owned(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        peer_listen: addr,
        peer: Peer {
            id: addr.to_string(),
            addr: format!("http://{addr}"),
            rack: None,
            seed: false,
            relays: true,
        },
        schedulers,
        token,
        upstreams: vec![],
        default_upstream: None,
        piece_len: crate::piece::DEFAULT_PIECE,
        concurrency: DEFAULT_CONCURRENCY,
        origin_concurrency: 4,
        download_rate: ratelimit,
        upload_rate: None,
        cache_bytes: 0,
        timeout: Duration::from_secs(30),
        tag_ttl: Duration::from_secs(60),
    })?;
    let server = tokio::spawn(axum::serve(peer_listener, peer::router(node.clone())).into_future());
    let task = node.url_task(&url, headers, digest).await?;
    progress(GetProgress::Started { size: task.size });
    let part = output.with_extension("part");
    let io_err = |path: &PathBuf| {
        let path = path.clone();
        move |source| P2pError::Io { path, source }
    };
    let written = async {
        let mut file = tokio::fs::File::create(&part).await.map_err(io_err(&part))?;
        let body = stream::stream(task.clone());
        futures_util::pin_mut!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| P2pError::Get {
                url: url.clone(),
                reason: e.to_string(),
            })?;
            file.write_all(&chunk).await.map_err(io_err(&part))?;
            progress(GetProgress::Written(chunk.len() as u64));
        }
        file.sync_all().await.map_err(io_err(&part))
    }
    .await;
    node.forget(&task).await;
    server.abort();
    match written {
        Ok(()) => {
            tokio::fs::rename(&part, &output).await.map_err(io_err(&output))?;
            Ok(task.size)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            Err(e)
        }
    }
}
