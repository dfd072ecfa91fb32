//! `wharf node`: a registry mirror for the local engine whose blobs come through the swarm.
//!
//! - `store.rs`: the engine-facing registry, read-only: `wharf serve`'s router over a store whose blobs are swarm
//!   tasks and whose manifests come from the upstream (kept, revalidated, served stale in an outage); `stream.rs`: a
//!   task's bytes in order for the engine and `wharf get`.
//! - `peer.rs`: the peer API, serving verified pieces only.
//! - `task.rs`: one task's content file and progress; `download.rs`: how its pieces are fetched; `client.rs`:
//!   schedulers and peers.
//!
//! Local content: `<root>/tasks/<sha256|url>/<hex>/data`, plus `done` once verified (loaded again after a restart
//! and re-announced). Finished tasks are kept up to `cache_bytes` (least recently used go first, never one being
//! read or served).

mod client;
pub mod download;
pub mod net;
pub mod peer;
pub mod relay;
pub mod store;
pub mod stream;
pub mod task;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, Semaphore};
use wharf_oci::Digest;
use wharf_registry::listen::serve_router;
use wharf_remote::{Upstream, UpstreamConfig};

use crate::P2pError;
use crate::piece;
use crate::proto::{Announce, Peer, TaskShape};
use crate::ratelimit::RateLimit;
pub use client::Clients;
use task::{Origin, Phase, Task, task_dir};

/// Default pieces in flight per node. Few: a piece is passed on only once it is whole, so on a slow link a node
/// that splits its download over many pieces holds nothing to share for a long time (16 pieces of 4 MiB on a
/// 20 Mbit/s link: 27 s before the first is whole, 1.7 s one at a time); a handful still hides each request's
/// round trip.
pub const DEFAULT_CONCURRENCY: usize = 4;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub root: PathBuf,
    /// The engine-facing registry mirror.
    pub listen: SocketAddr,
    /// The peer API.
    pub peer_listen: SocketAddr,
    /// This node as peers and schedulers know it (`addr` is the peer API's base URL).
    pub peer: Peer,
    pub schedulers: Vec<String>,
    pub token: Option<String>,
    pub upstreams: Vec<UpstreamConfig>,
    /// Upstream answering requests without `ns` (Docker's `registry-mirrors`); default the first.
    pub default_upstream: Option<String>,
    /// Minimum piece length.
    pub piece_len: u64,
    /// Pieces in flight for the whole node, over all its tasks (see [`DEFAULT_CONCURRENCY`]).
    pub concurrency: usize,
    /// Origin requests in flight for the whole node.
    pub origin_concurrency: usize,
    pub download_rate: Option<u64>,
    pub upload_rate: Option<u64>,
    /// Bytes of finished tasks kept; 0 = no limit.
    pub cache_bytes: u64,
    pub timeout: Duration,
    /// How long a tag, once checked against the upstream, is served without asking again (the engine-facing
    /// registry's manifest cache).
    pub tag_ttl: Duration,
    /// Load the tasks a previous run finished under `root` (their `done` records) and serve them. Off for a
    /// one-shot download (`wharf get`), which trusts nothing it did not fetch itself.
    pub load_finished: bool,
}

pub struct Node {
    pub config: NodeConfig,
    pub peer: Peer,
    pub clients: Clients,
    upstreams: Vec<Arc<Upstream>>,
    tasks: Mutex<HashMap<String, Arc<OnceCell<Arc<Task>>>>>,
    pub origin_slots: Semaphore,
    /// One permit per piece in flight, over all tasks ([`NodeConfig::concurrency`]).
    pub download_slots: Arc<Semaphore>,
    /// Told when a download slot is given back.
    pub slot_freed: tokio::sync::Notify,
    /// When this node last stored a piece (of any task), or started.
    last_progress: Mutex<std::time::Instant>,
    pub download_limit: RateLimit,
    pub upload_limit: RateLimit,
}

/// What `<dir>/done` records.
#[derive(Serialize, Deserialize)]
struct DoneRecord {
    size: u64,
    piece_len: u64,
    expected: Option<String>,
    /// Every piece's SHA-256 (hex), so that after a restart peers can still verify what this node serves, even
    /// from a scheduler that has never seen the blob. (Empty in records of older versions.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    digests: Vec<String>,
}

impl Node {
    pub fn new(config: NodeConfig) -> Result<Arc<Node>, P2pError> {
        let mut upstreams = Vec::new();
        for u in &config.upstreams {
            let up = Upstream::new(u.clone(), config.timeout).map_err(|e| P2pError::Config(e.to_string()))?;
            upstreams.push(Arc::new(up));
        }
        let clients = Clients::new(config.schedulers.clone(), config.token.clone())?;
        let node = Arc::new(Node {
            peer: config.peer.clone(),
            clients,
            upstreams,
            tasks: Mutex::new(HashMap::new()),
            origin_slots: Semaphore::new(config.origin_concurrency.max(1)),
            download_slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
            slot_freed: tokio::sync::Notify::new(),
            last_progress: Mutex::new(std::time::Instant::now()),
            download_limit: RateLimit::new(config.download_rate),
            upload_limit: RateLimit::new(config.upload_rate),
            config,
        });
        if node.config.load_finished {
            node.load_finished();
        }
        Ok(node)
    }

    /// A piece was stored: the swarm is moving.
    pub fn progressed(&self) {
        if let Ok(mut t) = self.last_progress.lock() {
            *t = std::time::Instant::now();
        }
    }

    /// How long since this node last stored a piece (or started).
    pub fn idle_for(&self) -> Duration {
        self.last_progress.lock().map(|t| t.elapsed()).unwrap_or_default()
    }

    /// Tasks finished before a restart, from their `done` records.
    fn load_finished(&self) {
        for kind in ["sha256", "url"] {
            let base = self.config.root.join("tasks").join(kind);
            let Ok(entries) = std::fs::read_dir(&base) else {
                continue;
            };
            for e in entries.flatten() {
                let dir = e.path();
                let Some(hex) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                    continue;
                };
                let id = format!("{kind}:{hex}");
                let record = std::fs::read(dir.join("done"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<DoneRecord>(&b).ok());
                let Some(r) = record.filter(|_| crate::proto::valid_task(&id)) else {
                    // Unfinished: its pieces are not trusted after a restart.
                    let _ = std::fs::remove_dir_all(&dir);
                    continue;
                };
                let expected = r.expected.and_then(|d| d.parse().ok());
                match Task::complete(id.clone(), dir, r.piece_len, expected) {
                    Ok(t) if t.size == r.size => {
                        if r.digests.len() == t.pieces as usize
                            && r.digests.iter().all(|d| crate::proto::is_sha256_hex(d))
                            && let Ok(mut d) = t.digests.lock()
                        {
                            *d = r.digests.into_iter().map(Some).collect();
                        }
                        let cell = Arc::new(OnceCell::new_with(Some(Arc::new(t))));
                        if let Ok(mut m) = self.tasks.lock() {
                            m.insert(id, cell);
                        }
                    }
                    _ => tracing::warn!(task = %id, "a finished task's content is unreadable; dropped"),
                }
            }
        }
    }

    /// The upstream a repository name of the engine-facing API mirrors (`docker.io/library/alpine`), and the
    /// repository name to ask it for.
    pub fn route(&self, name: &str) -> Option<(Arc<Upstream>, String)> {
        let (first, rest) = name.split_once('/')?;
        let first = wharf_remote::canonical_host(first);
        let u = self.upstreams.iter().find(|u| u.config.name == first)?;
        Some((u.clone(), wharf_remote::upstream_repository(&u.config.name, rest)))
    }

    /// How the engine-facing API names the upstreams: containerd's `ns` values (an upstream's name, its URL's host,
    /// Docker Hub's other names) and the default upstream for requests without one.
    pub fn namespaces(&self) -> wharf_registry::Namespaces {
        let upstreams = self
            .upstreams
            .iter()
            .map(|u| wharf_registry::Namespace {
                name: u.config.name.clone(),
                aliases: wharf_remote::hub::aliases(&u.config.name, &u.config.url),
            })
            .collect();
        let default = self
            .config
            .default_upstream
            .clone()
            .or_else(|| self.upstreams.first().map(|u| u.config.name.clone()));
        wharf_registry::Namespaces { upstreams, default }
    }

    /// The upstream of requests that name none (and of preheated blobs).
    pub fn default_upstream(&self) -> Option<Arc<Upstream>> {
        match &self.config.default_upstream {
            Some(name) => self.upstreams.iter().find(|u| &u.config.name == name).cloned(),
            None => self.upstreams.first().cloned(),
        }
    }

    pub fn task(&self, id: &str) -> Option<Arc<Task>> {
        let cell = self.tasks.lock().ok()?.get(id).cloned()?;
        cell.get().cloned()
    }

    /// The task of blob `digest` of `repo` upstream: the one in progress or finished here, or a new download.
    pub async fn blob_task(
        self: &Arc<Self>,
        upstream: Arc<Upstream>,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<Arc<Task>>, P2pError> {
        let id = digest.to_string();
        if !crate::proto::valid_task(&id) {
            return Err(P2pError::BadTask(id));
        }
        let cell = self.cell(&id);
        let (repo, digest2) = (repo.to_owned(), digest.clone());
        let node = self.clone();
        let result = cell
            .get_or_try_init(|| async move {
                let Some(size) = node.upstream_blob_size(&upstream, &repo, &digest2).await? else {
                    return Err(P2pError::NotUpstream {
                        repository: repo,
                        digest: digest2.to_string(),
                    });
                };
                let origin = Origin::Blob {
                    upstream,
                    repo,
                    digest: digest2.clone(),
                };
                node.start(digest2.to_string(), size, origin, Some(digest2))
            })
            .await;
        match result {
            Ok(t) => Ok(Some(t.clone())),
            Err(P2pError::NotUpstream { .. }) => {
                self.drop_cell(&id);
                Ok(None)
            }
            Err(e) => {
                self.drop_cell(&id);
                Err(e)
            }
        }
    }

    /// The size of blob `digest` of `repo` upstream, without downloading it (a HEAD): from this node's task if it has
    /// one, else from the upstream, else (the origin down) from the scheduler's swarm. `None`: not found upstream.
    pub async fn blob_size(&self, upstream: &Upstream, repo: &str, digest: &Digest) -> Result<Option<u64>, P2pError> {
        if let Some(t) = self.task(&digest.to_string()) {
            return Ok(Some(t.size));
        }
        self.upstream_blob_size(upstream, repo, digest).await
    }

    async fn upstream_blob_size(
        &self,
        upstream: &Upstream,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, P2pError> {
        match upstream.blob_size(repo, digest).await {
            Ok(size) => Ok(size),
            // The origin is down: the swarm may still have the blob.
            Err(e) if e.is_outage() => match self.clients.shape(&digest.to_string()).await {
                Some(shape) => Ok(Some(shape.size)),
                None => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// The task of a file URL (`wharf get`).
    pub async fn url_task(
        self: &Arc<Self>,
        url: &str,
        headers: Vec<(String, String)>,
        expected: Option<Digest>,
    ) -> Result<Arc<Task>, P2pError> {
        let id = crate::proto::url_task(url);
        let cell = self.cell(&id);
        let node = self.clone();
        let url = url.to_owned();
        let id_again = id.clone();
        let result = cell
            .get_or_try_init(|| async move {
                let client = node.clients.http.clone();
                let mut req = client.head(&url);
                for (k, v) in &headers {
                    req = req.header(k, v);
                }
                let resp = req.send().await.map_err(|e| P2pError::UrlOrigin {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
                if !resp.status().is_success() {
                    return Err(P2pError::UrlOrigin {
                        url: url.clone(),
                        reason: format!("answered {}", resp.status()),
                    });
                }
                let size = resp
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| P2pError::UrlOrigin {
                        url: url.clone(),
                        reason: "no Content-Length".into(),
                    })?;
                let id = crate::proto::url_task(&url);
                node.start(id, size, Origin::Url { client, url, headers }, expected)
            })
            .await;
        result.cloned().inspect_err(|_| self.drop_cell(&id_again))
    }

    fn cell(&self, id: &str) -> Arc<OnceCell<Arc<Task>>> {
        let mut m = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id.to_owned()).or_default().clone()
    }

    fn drop_cell(&self, id: &str) {
        if let Ok(mut m) = self.tasks.lock()
            && m.get(id).is_some_and(|c| c.get().is_none())
        {
            m.remove(id);
        }
    }

    /// Creates a task and starts its download in the background.
    fn start(
        self: &Arc<Self>,
        id: String,
        size: u64,
        origin: Origin,
        expected: Option<Digest>,
    ) -> Result<Arc<Task>, P2pError> {
        let piece_len = piece::piece_len(size, self.config.piece_len);
        let dir = task_dir(&self.config.root, &id);
        let task = Arc::new(Task::create(id, size, piece_len, dir, origin, expected)?);
        tokio::spawn(download::run(self.clone(), task.clone()));
        Ok(task)
    }

    pub async fn announce(&self, task: &Task, have: Vec<u32>, digests: Vec<(u32, String)>, done: bool) {
        if !self.clients.has_schedulers() {
            return;
        }
        let a = Announce {
            peer: self.peer.clone(),
            shape: TaskShape {
                size: task.size,
                piece_len: task.piece_len,
            },
            have,
            digests,
            done,
            gone: false,
        };
        self.clients.announce(&task.id, &a).await;
    }

    /// A download finished: record it on disk, then keep the cache within its size.
    pub fn finished(self: &Arc<Self>, task: &Arc<Task>) {
        let digests = task
            .digests
            .lock()
            .ok()
            .and_then(|d| d.iter().cloned().collect::<Option<Vec<String>>>())
            .unwrap_or_default();
        let record = DoneRecord {
            size: task.size,
            piece_len: task.piece_len,
            expected: task.expected.as_ref().map(|d| d.to_string()),
            digests,
        };
        // The content is made durable before the record that trusts it after a restart, and the record appears
        // whole (temp file + rename).
        let written = task.sync().and_then(|()| {
            let json = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
            let tmp = task.dir.join("done.tmp");
            std::fs::write(&tmp, json)?;
            std::fs::rename(&tmp, task.dir.join("done"))
        });
        if let Err(e) = written {
            tracing::warn!(task = %task.id, error = %e, "cannot record a finished task");
        }
        let node = self.clone();
        tokio::spawn(async move { node.evict().await });
    }

    /// Drops least recently used finished tasks, never one in use, until the cache fits.
    async fn evict(self: &Arc<Self>) {
        let limit = self.config.cache_bytes;
        if limit == 0 {
            return;
        }
        let mut done: Vec<Arc<Task>> = {
            let m = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            m.values().filter_map(|c| c.get().cloned()).collect()
        };
        done.retain(|t| t.progress().phase == Phase::Done);
        let mut total: u64 = done.iter().map(|t| t.size).sum();
        done.sort_by_key(|t| t.last_used());
        for t in done {
            if total <= limit {
                break;
            }
            if t.in_use() {
                continue;
            }
            total -= t.size;
            tracing::info!(task = %t.id, size = t.size, "evicted from the cache");
            self.forget(&t).await;
        }
    }

    /// Drops a task: the scheduler forgets this node holds it, its files go.
    pub async fn forget(&self, task: &Task) {
        if let Ok(mut m) = self.tasks.lock() {
            m.remove(&task.id);
        }
        if self.clients.has_schedulers() {
            let a = Announce {
                peer: self.peer.clone(),
                shape: TaskShape {
                    size: task.size,
                    piece_len: task.piece_len,
                },
                have: vec![],
                digests: vec![],
                done: false,
                gone: true,
            };
            self.clients.announce(&task.id, &a).await;
        }
        let _ = tokio::fs::remove_dir_all(&task.dir).await;
    }

    /// Every few seconds, tells each finished task's scheduler (the owner now: after a failover, a new one) that
    /// this node holds it, so a scheduler restarted or taking over learns the swarm again.
    pub async fn reannounce(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let tasks: Vec<Arc<Task>> = {
                let m = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
                m.values().filter_map(|c| c.get().cloned()).collect()
            };
            for t in tasks {
                let p = t.progress();
                let have: Vec<u32> = (0..t.pieces).filter(|n| p.have[*n as usize]).collect();
                // A download that holds nothing yet still says it is alive: the scheduler voids the origin
                // leases of a node it has not heard from for its peer ttl.
                if have.is_empty() && p.phase != Phase::Running {
                    continue;
                }
                let digests: Vec<(u32, String)> = t
                    .digests
                    .lock()
                    .map(|d| {
                        d.iter()
                            .enumerate()
                            .filter_map(|(i, d)| Some((i as u32, d.clone()?)))
                            .collect()
                    })
                    .unwrap_or_default();
                self.announce(&t, have, digests, p.phase == Phase::Done).await;
            }
        }
    }
}

impl Node {
    /// A seed fetches what `wharf preheat` queued on the schedulers, through its default upstream.
    pub async fn preheat_loop(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let Some(upstream) = self.default_upstream() else {
                return;
            };
            for b in self.clients.preheat_for(&self.peer.id).await {
                let Ok(digest) = b.digest.parse::<Digest>() else {
                    continue;
                };
                if self.task(&b.digest).is_some() {
                    continue;
                }
                // A scheduler is not trusted to name what goes into an upstream URL.
                if !wharf_oci::name::is_valid_repository(&b.repository) {
                    tracing::warn!(repository = %b.repository, "preheat of an invalid repository name ignored");
                    continue;
                }
                let repo = wharf_remote::upstream_repository(&upstream.config.name, &b.repository);
                match self.blob_task(upstream.clone(), &repo, &digest).await {
                    Ok(_) => tracing::info!(blob = %digest, repository = %b.repository, "preheating"),
                    Err(e) => tracing::warn!(blob = %digest, error = %e, "cannot preheat"),
                }
            }
        }
    }
}

/// Runs a node until `shutdown`: the mirror and the peer API on their listeners, and the re-announcer.
pub async fn serve(
    node: Arc<Node>,
    mirror_listener: tokio::net::TcpListener,
    peer_listener: tokio::net::TcpListener,
    metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), P2pError> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(node.clone().reannounce(Duration::from_secs(5)));
    if node.peer.seed {
        tokio::spawn(node.clone().preheat_loop(Duration::from_secs(2)));
    }
    let config = wharf_registry::RegistryConfig {
        namespaces: node.namespaces(),
        ..wharf_registry::RegistryConfig::default()
    };
    let mut app = wharf_registry::App::new(Arc::new(store::SwarmStore::new(node.clone())), config);
    if let Some(render) = metrics {
        app = app.with_metrics(render);
    }
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.changed().await;
    };
    // Both listeners bounded like `wharf serve`'s: a connection cap and a header-read timeout.
    let limits = wharf_registry::ServeLimits::default();
    let mirror = serve_router(
        mirror_listener,
        wharf_registry::router(app),
        limits,
        stopped(rx.clone()),
    );
    let peer = serve_router(peer_listener, peer::router(node.clone()), limits, stopped(rx.clone()));
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let (a, b) = tokio::join!(mirror, peer);
    a.and(b).map_err(|e| P2pError::Config(format!("server failed: {e}")))
}
