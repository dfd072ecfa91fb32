//! Single-flight blob fetches. The first request for an uncached blob starts one download from upstream into a
//! spool file; every concurrent request for the same digest joins it and streams from the spool as bytes land,
//! including `Range` requests (served once their bytes have arrived). The download runs in its own task, so a
//! client that disconnects cancels nothing. A dropped upstream connection is resumed with a `Range` request. The
//! whole blob is hashed on the way in; it enters the cache only if the digest matches, and no reader is handed the
//! blob's last byte before that check passes, so no client ever receives a complete body with a wrong digest.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use wharf_oci::{Digest, DigestHasher};
use wharf_storage::{BlobSource, ByteStream, StorageError};

use wharf_remote::Upstream;

/// Resumes after the upstream connection drops, at most this many times in a row without progress.
const MAX_RESUMES: u32 = 5;
const READ_CHUNK: usize = 1 << 20;

/// Progress of one fetch, broadcast to its readers.
#[derive(Debug, Clone)]
pub enum FetchState {
    /// Waiting for the upstream's response headers.
    Starting,
    /// `written` of `size` bytes are in the spool file.
    Progress {
        size: u64,
        written: u64,
    },
    /// Verified and committed to the cache.
    Done {
        size: u64,
    },
    /// Upstream has no such blob.
    NotFound,
    Failed(Arc<String>),
}

pub struct Fetch {
    pub digest: Digest,
    spool: PathBuf,
    state: watch::Receiver<FetchState>,
}

/// What a finished download hands to the cache.
pub type Commit = Box<dyn FnOnce(PathBuf) -> futures_util::future::BoxFuture<'static, Result<(), String>> + Send>;

/// The fetches under way, by digest.
pub struct Fetches {
    spool_dir: PathBuf,
    running: Mutex<HashMap<Digest, Arc<Fetch>>>,
}

impl Fetches {
    pub fn new(spool_dir: PathBuf) -> Self {
        Fetches {
            spool_dir,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Size of a blob being fetched, once upstream has told it.
    pub fn size_in_flight(&self, digest: &Digest) -> Option<u64> {
        let f = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()?;
        match &*f.state.borrow() {
            FetchState::Progress { size, .. } | FetchState::Done { size } => Some(*size),
            _ => None,
        }
    }

    /// Joins the fetch of `digest`, starting it if none is running. The boolean is true when it joined one that
    /// was already running (a coalesced request). `None` when `cached()` says a fetch finished since the caller
    /// looked (it is checked under the same lock that finished fetches leave by, so no blob is fetched twice).
    pub fn join(
        self: &Arc<Self>,
        upstream: Arc<Upstream>,
        repo: String,
        digest: &Digest,
        cached: impl FnOnce() -> bool,
        commit: Commit,
    ) -> Option<(Arc<Fetch>, bool)> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = running.get(digest) {
            return Some((f.clone(), true));
        }
        if cached() {
            return None;
        }
        let (tx, rx) = watch::channel(FetchState::Starting);
        let spool = self.spool_dir.join(format!("{}-{}", digest.algorithm(), digest.hex()));
        let fetch = Arc::new(Fetch {
            digest: digest.clone(),
            spool: spool.clone(),
            state: rx,
        });
        running.insert(digest.clone(), fetch.clone());
        let fetches = self.clone();
        let d = digest.clone();
        tokio::spawn(async move {
            let outcome = download(&upstream, &repo, &d, &spool, &tx).await;
            let final_state = match outcome {
                Ok(Some(size)) => match commit(spool.clone()).await {
                    Ok(()) => FetchState::Done { size },
                    Err(e) => FetchState::Failed(Arc::new(format!("cannot store {d}: {e}"))),
                },
                Ok(None) => FetchState::NotFound,
                Err(e) => {
                    tracing::warn!(digest = %d, upstream = %upstream.url(), error = %e, "blob fetch failed");
                    FetchState::Failed(Arc::new(e))
                }
            };
            if !matches!(final_state, FetchState::Done { .. }) {
                let _ = std::fs::remove_file(&spool);
            }
            // Readers holding the open spool descriptor keep reading after removal from the map.
            fetches.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&d);
            let _ = tx.send(final_state);
        });
        Some((fetch, false))
    }
}

impl Fetch {
    /// Waits until the size is known. `Ok(None)` if upstream does not have the blob.
    pub async fn wait_size(&self) -> Result<Option<u64>, StorageError> {
        let mut rx = self.state.clone();
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                FetchState::Starting => {}
                FetchState::Progress { size, .. } | FetchState::Done { size } => return Ok(Some(size)),
                FetchState::NotFound => return Ok(None),
                FetchState::Failed(e) => return Err(upstream_error(&e)),
            }
            if rx.changed().await.is_err() {
                return Err(upstream_error("fetch task ended without a result"));
            }
        }
    }

    /// Waits until the fetch has ended; true if its blob is now in the cache (imported and linked).
    pub async fn wait_done(&self) -> Result<bool, StorageError> {
        let mut rx = self.state.clone();
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                FetchState::Done { .. } => return Ok(true),
                FetchState::NotFound => return Ok(false),
                FetchState::Failed(e) => return Err(upstream_error(&e)),
                FetchState::Starting | FetchState::Progress { .. } => {}
            }
            if rx.changed().await.is_err() {
                return Ok(matches!(&*rx.borrow(), FetchState::Done { .. }));
            }
        }
    }

    /// A source that streams from the spool file as the download proceeds. Opened now, so the file can be renamed
    /// into the cache (or removed) under it.
    pub fn source(&self) -> Result<FetchSource, StorageError> {
        let file = File::open(&self.spool).map_err(|e| StorageError::Io {
            path: self.spool.clone(),
            source: e,
        })?;
        Ok(FetchSource {
            file: Arc::new(file),
            state: self.state.clone(),
            path: self.spool.clone(),
        })
    }
}

fn upstream_error(reason: &str) -> StorageError {
    StorageError::Remote {
        registry: "blob fetch".into(),
        reason: reason.to_owned(),
    }
}

/// Downloads into `spool`, hashing as it goes, resuming with `Range` after a dropped connection. Returns the size
/// once the digest matched and the data is fdatasynced; `None` if upstream has no such blob.
async fn download(
    upstream: &Upstream,
    repo: &str,
    digest: &Digest,
    spool: &PathBuf,
    state: &watch::Sender<FetchState>,
) -> Result<Option<u64>, String> {
    let file = File::create(spool).map_err(|e| format!("cannot create {}: {e}", spool.display()))?;
    let (tx, writer) = spawn_writer(file, spool.clone(), state.clone());
    let mut hasher = DigestHasher::new(digest.algorithm());
    let mut sent = 0u64;
    let mut size: Option<u64> = None;
    let mut resumes = 0;
    let result: Result<Option<u64>, String> = loop {
        let resp = match upstream.blob(repo, digest, sent).await {
            Ok(Some(r)) => r,
            Ok(None) => break Ok(None),
            Err(e) if e.is_outage() && resumes < MAX_RESUMES && size.is_some() => {
                resumes += 1;
                tokio::time::sleep(Duration::from_millis(200 * u64::from(resumes))).await;
                continue;
            }
            Err(e) => break Err(e.to_string()),
        };
        if sent > 0 && resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            break Err(format!("upstream ignored the Range request (status {})", resp.status()));
        }
        let total = resp.content_length().map(|l| l + sent);
        match (size, total) {
            (None, Some(t)) => {
                size = Some(t);
                state.send_replace(FetchState::Progress { size: t, written: 0 });
            }
            (None, None) => break Err("upstream sent no Content-Length".into()),
            (Some(s), Some(t)) if s != t => break Err(format!("size changed between requests: {s} then {t}")),
            _ => {}
        }
        let mut body = resp.bytes_stream();
        let mut broke = None;
        while let Some(item) = body.next().await {
            match item {
                Ok(chunk) => {
                    let progress = chunk.len() as u64;
                    // Bounded by what it announced (hyper enforces Content-Length too; this holds whatever the
                    // transport): an upstream cannot fill the disk past the size it named.
                    if sent + progress > size.unwrap_or(0) {
                        broke = Some(Broke::Overflow);
                        break;
                    }
                    hasher.update(&chunk);
                    if tx.send(chunk).await.is_err() {
                        broke = Some(Broke::Writer);
                        break;
                    }
                    sent += progress;
                    if progress > 0 {
                        resumes = 0;
                    }
                    metrics::counter!("wharf_mirror_upstream_bytes_total").increment(progress);
                }
                Err(e) => {
                    broke = Some(Broke::Read(e.to_string()));
                    break;
                }
            }
        }
        let expected = size.unwrap_or(0);
        match broke {
            // The writer's own error is what the caller gets (below).
            Some(Broke::Writer) => break Err("the spool writer stopped".to_owned()),
            Some(Broke::Overflow) => break Err(format!("upstream sent more than the {expected} bytes it announced")),
            Some(Broke::Read(reason)) if resumes < MAX_RESUMES && sent < expected => {
                resumes += 1;
                tracing::info!(%digest, sent, expected, %reason, "upstream connection dropped; resuming with Range");
                metrics::counter!("wharf_mirror_resumes_total").increment(1);
                continue;
            }
            Some(Broke::Read(reason)) => break Err(reason),
            None if sent < expected && resumes < MAX_RESUMES => {
                resumes += 1;
                continue;
            }
            None if sent != expected => break Err(format!("upstream sent {sent} bytes, announced {expected}")),
            None => break Ok(Some(sent)),
        }
    };
    drop(tx);
    let written = match writer.await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(e.to_string()),
    };
    let size = match result? {
        Some(s) => s,
        None => return Ok(None),
    };
    if written != size {
        return Err(format!("spool has {written} bytes, expected {size}"));
    }
    let computed = hasher.finish();
    if computed != *digest {
        metrics::counter!("wharf_mirror_digest_mismatches_total").increment(1);
        return Err(format!("upstream content hashes to {computed}, not {digest}"));
    }
    Ok(Some(size))
}

/// Why a download's body stopped before its end.
enum Broke {
    /// More bytes than its Content-Length announced.
    Overflow,
    /// The spool writer is gone (its error says why).
    Writer,
    /// Reading from the upstream failed.
    Read(String),
}

/// Writes chunks to the spool on a blocking thread, publishing progress after each write; fdatasyncs at the end.
fn spawn_writer(
    mut file: File,
    path: PathBuf,
    state: watch::Sender<FetchState>,
) -> (mpsc::Sender<Bytes>, tokio::task::JoinHandle<Result<u64, String>>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let handle = tokio::task::spawn_blocking(move || {
        let mut written = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            file.write_all(&chunk)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            written += chunk.len() as u64;
            state.send_modify(|s| {
                if let FetchState::Progress { written: w, .. } = s {
                    *w = written;
                }
            });
        }
        file.sync_data().map_err(|e| format!("fsync {}: {e}", path.display()))?;
        Ok(written)
    });
    (tx, handle)
}

/// Streams a blob from a spool file that may still be growing.
pub struct FetchSource {
    file: Arc<File>,
    state: watch::Receiver<FetchState>,
    path: PathBuf,
}

impl FetchSource {
    /// How far a reader may go now: everything written, except the last byte until the digest has been verified.
    fn readable(state: &FetchState) -> Result<Option<u64>, StorageError> {
        match state {
            FetchState::Starting => Ok(Some(0)),
            FetchState::Progress { size, written } => Ok(Some((*written).min(size.saturating_sub(1)))),
            FetchState::Done { size } => Ok(Some(*size)),
            FetchState::NotFound => Ok(None),
            FetchState::Failed(e) => Err(upstream_error(e)),
        }
    }
}

#[async_trait::async_trait]
impl BlobSource for FetchSource {
    async fn read(self: Box<Self>, range: Option<(u64, u64)>) -> Result<ByteStream, StorageError> {
        let (start, end) = match range {
            Some(r) => r,
            None => {
                let size = match &*self.state.borrow() {
                    FetchState::Progress { size, .. } | FetchState::Done { size } => *size,
                    _ => 0,
                };
                (0, size)
            }
        };
        struct Cursor {
            src: FetchSource,
            pos: u64,
            end: u64,
        }
        impl Cursor {
            /// Ends the stream after this error, so the response is cut short and the client sees it.
            fn fail(&mut self, reason: String) -> io::Error {
                self.end = self.pos;
                io::Error::other(reason)
            }
        }
        let cursor = Cursor {
            src: *self,
            pos: start,
            end,
        };
        let stream = futures_util::stream::unfold(cursor, |mut c| async move {
            if c.pos >= c.end {
                return None;
            }
            loop {
                let now = FetchSource::readable(&c.src.state.borrow_and_update());
                let readable = match now {
                    Ok(Some(r)) => r,
                    Ok(None) => return Some((Err(c.fail("upstream has no such blob".into())), c)),
                    Err(e) => return Some((Err(c.fail(e.to_string())), c)),
                };
                if readable > c.pos {
                    let want = (readable.min(c.end) - c.pos).min(READ_CHUNK as u64) as usize;
                    let (file, pos) = (c.src.file.clone(), c.pos);
                    let read = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; want];
                        let n = file.read_at(&mut buf, pos)?;
                        buf.truncate(n);
                        Ok::<_, io::Error>(buf)
                    })
                    .await;
                    let item = match read {
                        Ok(Ok(buf)) if !buf.is_empty() => {
                            c.pos += buf.len() as u64;
                            Ok(Bytes::from(buf))
                        }
                        Ok(Ok(_)) => Err(c.fail(format!("{} is shorter than announced", c.src.path.display()))),
                        Ok(Err(e)) => Err(c.fail(e.to_string())),
                        Err(e) => Err(c.fail(e.to_string())),
                    };
                    return Some((item, c));
                }
                if c.src.state.changed().await.is_err() {
                    // The fetch task is gone: its last state tells whether the rest is readable.
                    let done = matches!(&*c.src.state.borrow(), FetchState::Done { .. });
                    if !done {
                        return Some((Err(c.fail("blob fetch ended early".into())), c));
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}
