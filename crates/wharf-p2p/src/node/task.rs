//! One task on a node: its content file, which pieces it holds (a `watch` channel that readers wait on), the piece
//! digests, and where its origin is. The download itself is in `download.rs`.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use wharf_remote::body::{BodyError, read_exact};

use super::relay::Incoming;

use crate::P2pError;
use crate::piece;

/// Where a task's bytes come from when no peer has them.
#[derive(Clone)]
pub enum Origin {
    /// A registry blob through an upstream.
    Blob {
        upstream: Arc<wharf_remote::Upstream>,
        repo: String,
        digest: wharf_oci::Digest,
    },
    /// An HTTP(S) file.
    Url {
        client: reqwest::Client,
        url: String,
        headers: Vec<(String, String)>,
    },
}

impl Origin {
    /// Which origin this is, for the scheduler's per-origin cap: the upstream's base URL, or a file URL's scheme and
    /// authority (never its path or query, which may carry secrets).
    pub fn key(&self) -> Option<String> {
        match self {
            Origin::Blob { upstream, .. } => Some(upstream.url().trim_end_matches('/').to_owned()),
            Origin::Url { url, .. } => {
                let u = reqwest::Url::parse(url).ok()?;
                let host = u.host_str()?;
                Some(match u.port() {
                    Some(port) => format!("{}://{host}:{port}", u.scheme()),
                    None => format!("{}://{host}", u.scheme()),
                })
            }
        }
    }

    /// Bytes `start..end` from the origin; each chunk also goes to `sink` as it arrives (peers relay it).
    pub async fn fetch(&self, start: u64, end: u64, sink: &Incoming) -> Result<Bytes, P2pError> {
        match self {
            Origin::Blob { upstream, repo, digest } => upstream
                .blob_range(repo, digest, start, end, &mut |chunk| sink.push(chunk))
                .await
                .map_err(P2pError::Registry)?
                .ok_or_else(|| P2pError::NotUpstream {
                    repository: repo.clone(),
                    digest: digest.to_string(),
                }),
            Origin::Url { client, url, headers } => {
                let mut req = client
                    .get(url)
                    .header("Range", format!("bytes={start}-{}", end.saturating_sub(1)));
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                let resp = req.send().await.map_err(|e| P2pError::UrlOrigin {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
                let status = resp.status();
                let whole = status == reqwest::StatusCode::OK && start == 0 && resp.content_length() == Some(end);
                if status != reqwest::StatusCode::PARTIAL_CONTENT && !whole {
                    return Err(P2pError::UrlOrigin {
                        url: url.clone(),
                        reason: format!("answered {status} to a range request"),
                    });
                }
                let want = usize::try_from(end - start).unwrap_or(usize::MAX);
                let mut resp = resp;
                let read = read_exact(&mut resp, want, |chunk| {
                    sink.push(chunk);
                    std::future::ready(())
                })
                .await;
                read.map_err(|e| match e {
                    BodyError::Read(e) => P2pError::UrlOrigin {
                        url: url.clone(),
                        reason: e.to_string(),
                    },
                    BodyError::TooLong => P2pError::UrlOrigin {
                        url: url.clone(),
                        reason: format!("range of {} bytes answered with more", end - start),
                    },
                    BodyError::Short { got } => P2pError::UrlOrigin {
                        url: url.clone(),
                        reason: format!("range of {} bytes answered with {got}", end - start),
                    },
                })
            }
        }
    }
}

/// Where a task stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Every piece held and the whole content verified.
    Done,
    Failed(String),
}

/// The pieces held and the phase, as readers see them.
#[derive(Debug, Clone)]
pub struct Progress {
    pub have: Vec<bool>,
    pub count: u32,
    pub phase: Phase,
    /// Bumped when every piece is dropped to start over: a reader that already sent bytes must stop.
    pub generation: u32,
}

pub struct Task {
    pub id: String,
    pub size: u64,
    pub piece_len: u64,
    pub pieces: u32,
    pub dir: PathBuf,
    file: std::fs::File,
    /// `None` for content loaded from disk complete (it never needs the origin).
    pub origin: Option<Origin>,
    /// What the whole content must hash to (every blob; a file only with `--digest`).
    pub expected: Option<wharf_oci::Digest>,
    progress: watch::Sender<Progress>,
    pub digests: Mutex<Vec<Option<String>>>,
    /// Responses and peers reading it: never evicted while nonzero.
    readers: AtomicUsize,
    last_used: Mutex<Instant>,
    /// Pieces being received from peers, readable as they arrive (relay.rs).
    incoming: Mutex<HashMap<u32, Arc<Incoming>>>,
    /// Told when a piece starts to arrive or is stored (a peer asking for a piece may be a moment early).
    pub changed: Notify,
}

impl Task {
    /// A task whose content file is created (sparse) at `dir/data`, holding nothing yet.
    pub fn create(
        id: String,
        size: u64,
        piece_len: u64,
        dir: PathBuf,
        origin: Origin,
        expected: Option<wharf_oci::Digest>,
    ) -> Result<Task, P2pError> {
        let io_err = |source| P2pError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io_err)?;
        let path = dir.join("data");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|source| P2pError::Io {
                path: path.clone(),
                source,
            })?;
        file.set_len(size).map_err(|source| P2pError::Io {
            path: path.clone(),
            source,
        })?;
        let pieces = piece::count(size, piece_len);
        let (progress, _) = watch::channel(Progress {
            have: vec![false; pieces as usize],
            count: 0,
            phase: Phase::Running,
            generation: 0,
        });
        Ok(Task {
            id,
            size,
            piece_len,
            pieces,
            dir,
            file,
            origin: Some(origin),
            expected,
            progress,
            digests: Mutex::new(vec![None; pieces as usize]),
            readers: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
            incoming: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        })
    }

    /// A task whose verified content is already at `dir/data` (a restart, or a finished download).
    pub fn complete(
        id: String,
        dir: PathBuf,
        piece_len: u64,
        expected: Option<wharf_oci::Digest>,
    ) -> Result<Task, P2pError> {
        let path = dir.join("data");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .open(&path)
            .map_err(|source| P2pError::Io {
                path: path.clone(),
                source,
            })?;
        let size = file
            .metadata()
            .map_err(|source| P2pError::Io {
                path: path.clone(),
                source,
            })?
            .len();
        let pieces = piece::count(size, piece_len);
        let (progress, _) = watch::channel(Progress {
            have: vec![true; pieces as usize],
            count: pieces,
            phase: Phase::Done,
            generation: 0,
        });
        Ok(Task {
            id,
            size,
            piece_len,
            pieces,
            dir,
            file,
            origin: None,
            expected,
            progress,
            digests: Mutex::new(vec![None; pieces as usize]),
            readers: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
            incoming: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    pub fn has(&self, n: u32) -> bool {
        self.progress.borrow().have.get(n as usize).copied().unwrap_or(false)
    }

    pub fn range(&self, n: u32) -> (u64, u64) {
        piece::range(n, self.size, self.piece_len)
    }

    /// Writes a verified piece and marks it held.
    pub fn store_piece(&self, n: u32, data: &[u8]) -> Result<(), P2pError> {
        let (start, _) = self.range(n);
        self.file.write_all_at(data, start).map_err(|source| P2pError::Io {
            path: self.dir.join("data"),
            source,
        })?;
        self.progress.send_modify(|p| {
            if let Some(h) = p.have.get_mut(n as usize)
                && !*h
            {
                *h = true;
                p.count += 1;
            }
        });
        self.changed.notify_waiters();
        Ok(())
    }

    /// Marks piece `n` as arriving (from a peer or the origin): peers can read it through the returned guard's
    /// [`Incoming`] until the guard is dropped (after the piece is stored, or when its fetch failed).
    pub fn receive(self: &Arc<Self>, n: u32) -> Receiving {
        let incoming = Arc::new(Incoming::default());
        if let Ok(mut map) = self.incoming.lock() {
            map.insert(n, incoming.clone());
        }
        self.changed.notify_waiters();
        Receiving {
            task: self.clone(),
            n,
            incoming,
        }
    }

    /// Piece `n` as it arrives, if it is arriving.
    pub fn incoming(&self, n: u32) -> Option<Arc<Incoming>> {
        self.incoming.lock().ok().and_then(|m| m.get(&n).cloned())
    }

    /// Reads a held piece.
    pub fn read_piece(&self, n: u32) -> io::Result<Vec<u8>> {
        let (start, end) = self.range(n);
        let mut buf = vec![0u8; (end - start) as usize];
        self.file.read_exact_at(&mut buf, start)?;
        Ok(buf)
    }

    /// Makes the content durable.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Forgets every piece (the whole content failed its digest): the download starts over.
    pub fn reset(&self) {
        self.progress.send_modify(|p| {
            p.have.iter_mut().for_each(|h| *h = false);
            p.count = 0;
            p.generation += 1;
        });
    }

    pub fn finish(&self, phase: Phase) {
        self.progress.send_modify(|p| p.phase = phase);
    }

    pub fn missing(&self) -> Vec<u32> {
        let p = self.progress.borrow();
        (0..self.pieces).filter(|n| !p.have[*n as usize]).collect()
    }

    /// Marks the task in use until the guard is dropped.
    pub fn reader(self: &Arc<Self>) -> ReaderGuard {
        self.readers.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
        ReaderGuard(self.clone())
    }

    pub fn in_use(&self) -> bool {
        self.readers.load(Ordering::SeqCst) > 0
    }

    pub fn last_used(&self) -> Instant {
        self.last_used.lock().map(|t| *t).unwrap_or_else(|_| Instant::now())
    }
}

pub struct ReaderGuard(Arc<Task>);

/// A piece arriving from a peer or the origin ([`Task::receive`]); dropping it ends the relay of its bytes (short, if
/// it was not completed).
pub struct Receiving {
    task: Arc<Task>,
    n: u32,
    pub incoming: Arc<Incoming>,
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.incoming.fail();
        if let Ok(mut map) = self.task.incoming.lock()
            && map.get(&self.n).is_some_and(|i| Arc::ptr_eq(i, &self.incoming))
        {
            map.remove(&self.n);
        }
    }
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The directory of task `id` under `root`: `tasks/<kind>/<hex>`.
pub fn task_dir(root: &std::path::Path, id: &str) -> PathBuf {
    let (kind, hex) = id.split_once(':').unwrap_or(("x", id));
    root.join("tasks").join(kind).join(hex)
}
