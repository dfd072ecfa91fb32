//! `wharf get`: one file through the swarm (Dragonfly's dfget), with an in-process node that serves its pieces to
//! peers while it downloads and leaves the swarm when done. Nothing another local user prepared is trusted: the
//! pieces live in a fresh private directory (random name, mode 0700, removed at the end) and no `done` record is
//! loaded from anywhere; the output is written to `<output>.part`, created new with mode 0600 and never through a
//! link (a link or other non-file planted there is refused), and only once whole and verified is it given the
//! umask's permissions and renamed into place.

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
        load_finished: false,
    })?;
    let server = tokio::spawn(wharf_registry::listen::serve_router(
        peer_listener,
        peer::router(node.clone()),
        wharf_registry::ServeLimits::default(),
        std::future::pending(),
    ));
    let task = node.url_task(&url, headers, digest).await?;
    progress(GetProgress::Started { size: task.size });
    let part = output.with_extension("part");
    let io_err = |path: &PathBuf| {
        let path = path.clone();
        move |source| P2pError::Io { path, source }
    };
    let written = async {
        let mut file = create_private(&part).await.map_err(io_err(&part))?;
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
        file.sync_all().await.map_err(io_err(&part))?;
        // Whole and verified: the permissions a new file of this user gets.
        use std::os::unix::fs::PermissionsExt;
        let mode = 0o666 & !umask();
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .await
            .map_err(io_err(&part))
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

/// Creates `path` new, mode 0600, without following a link: a leftover regular file of ours is replaced; a link
/// or anything else there is refused (another user may have planted it to make us write through it).
async fn create_private(path: &std::path::Path) -> std::io::Result<tokio::fs::File> {
    match tokio::fs::symlink_metadata(path).await {
        Ok(m) if m.file_type().is_file() => tokio::fs::remove_file(path).await?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "something other than a regular file is in the way (a link?); refusing to write through it",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // O_EXCL with O_CREAT never follows a link at the last component, even one planted after the check above.
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
}

/// This process's umask, read from `/proc/self/status` (reading it with `umask(2)` means changing it for a moment,
/// for every thread); 022 when it cannot be read.
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}
