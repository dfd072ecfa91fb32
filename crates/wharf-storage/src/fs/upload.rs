//! Upload sessions of [`FsStore`].
//!
//! A session is a directory `uploads/<uuid>/` with `data` (the bytes so far) and `state.json` (repository, offset
//! and the serialized SHA-256 state). Bytes are hashed as they stream in, on the request's task, while a blocking
//! thread writes them, so hashing and disk writes overlap and nothing is read back. After each append the data is
//! fdatasynced and then the state is replaced atomically, so after a crash `data` is at least `offset` long and is
//! truncated back to it: the session resumes exactly where the last acknowledged chunk ended.
//!
//! Commit renames `data` into `blobs/` only after the digest matches; a mismatch deletes the session. The blob's
//! modification time is the commit's, also when the blob was already stored: garbage collection's grace period counts
//! from there (see `gc.rs`). Sessions nobody touches for the upload TTL are removed by garbage collection.
//! A sha512 upload is hashed with SHA-256 while it streams (the algorithm is only known at commit) and re-read once
//! at commit; monolithic uploads that announce their digest up front are hashed with the right algorithm directly.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use wharf_oci::{Algorithm, Digest, DigestHasher};

use crate::atomic::{blocking, create_dir_all, fsync_dir, read_optional, touch, write_atomic};
use crate::fs::FsStore;
use crate::{ByteStream, Result, StorageError, UploadStatus, Uploads};

pub(crate) type SessionSlot = Arc<tokio::sync::Mutex<Option<Session>>>;

/// After this many bytes, ask the kernel to start writing back (without waiting), so the fsync at the end of a
/// large upload has little left to do.
const WRITEBACK_EVERY: u64 = 32 << 20;
/// Chunks in flight between the hashing task and the writer thread.
const PIPELINE_DEPTH: usize = 16;

pub(crate) struct Session {
    repo: String,
    offset: u64,
    hasher: DigestHasher,
    created: u64,
}

#[derive(Serialize, Deserialize)]
struct SessionFile {
    repo: String,
    offset: u64,
    algorithm: String,
    hash_state: String,
    created: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Upload ids are UUIDs in canonical form; anything else is unknown (and never reaches a path).
fn canonical_id(id: &str) -> Option<String> {
    let u = uuid::Uuid::try_parse(id).ok()?;
    let canon = u.hyphenated().to_string();
    (canon == id).then_some(canon)
}

impl Session {
    fn save(&self, state_path: &Path, tmp: &Path) -> Result<()> {
        let file = SessionFile {
            repo: self.repo.clone(),
            offset: self.offset,
            algorithm: self.hasher.algorithm().as_str().to_owned(),
            hash_state: hex::encode(self.hasher.save_state()),
            created: self.created,
        };
        let json = serde_json::to_vec(&file).map_err(|e| StorageError::Corrupt {
            path: state_path.to_owned(),
            reason: e.to_string(),
        })?;
        write_atomic(tmp, state_path, &json, true)
    }

    fn load(dir: &Path) -> Result<Option<Session>> {
        let state_path = dir.join("state.json");
        let Some(raw) = read_optional(&state_path)? else {
            return Ok(None);
        };
        let corrupt = |reason: String| StorageError::Corrupt {
            path: state_path.clone(),
            reason,
        };
        let f: SessionFile = serde_json::from_slice(&raw).map_err(|e| corrupt(e.to_string()))?;
        let algorithm = match f.algorithm.as_str() {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => return Err(corrupt(format!("unknown algorithm {other}"))),
        };
        let state = hex::decode(&f.hash_state).map_err(|e| corrupt(e.to_string()))?;
        let hasher = DigestHasher::restore_state(algorithm, &state).map_err(|e| corrupt(e.to_string()))?;
        // Bytes past `offset` were written by an append that never finished: drop them.
        let data = dir.join("data");
        let file = OpenOptions::new()
            .write(true)
            .open(&data)
            .map_err(|e| StorageError::io(&data, e))?;
        let len = file.metadata().map_err(|e| StorageError::io(&data, e))?.len();
        if len < f.offset {
            return Err(corrupt(format!("data has {len} bytes, state says {}", f.offset)));
        }
        if len > f.offset {
            file.set_len(f.offset).map_err(|e| StorageError::io(&data, e))?;
            file.sync_all().map_err(|e| StorageError::io(&data, e))?;
        }
        Ok(Some(Session {
            repo: f.repo,
            offset: f.offset,
            hasher,
            created: f.created,
        }))
    }
}

/// Writes chunks to `path` from `offset` on a blocking thread; returns the bytes written after an fdatasync.
fn spawn_writer(path: PathBuf, offset: u64) -> (mpsc::Sender<Bytes>, tokio::task::JoinHandle<Result<u64>>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(PIPELINE_DEPTH);
    let handle = tokio::task::spawn_blocking(move || {
        let mut file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| StorageError::io(&path, e))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| StorageError::io(&path, e))?;
        let mut written = 0u64;
        let mut flushed = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            file.write_all(&chunk).map_err(|e| StorageError::io(&path, e))?;
            written += chunk.len() as u64;
            if written - flushed >= WRITEBACK_EVERY {
                start_writeback(&file, offset + flushed, written - flushed);
                flushed = written;
            }
        }
        file.sync_data().map_err(|e| StorageError::io(&path, e))?;
        Ok(written)
    });
    (tx, handle)
}

/// Starts asynchronous writeback of a byte range (Linux `sync_file_range`). It is only a hint: the durable point
/// is the fdatasync at the end, so errors are ignored. std and rustix expose no wrapper for it.
fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: the fd is open for the duration of the call; the call reads no memory of ours.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Makes the verified, fdatasynced file `data` the blob `digest` by rename, or, if the blob is already stored,
/// refreshes its modification time (a re-push makes an old blob fresh again for garbage collection) and leaves
/// `data` for the caller to delete. The published blob's modification time is "now" either way, not the time of
/// the upload's last append. Runs under the shared garbage-collection lock (see `gc.rs`).
fn publish(layout: &crate::paths::Layout, digest: &Digest, data: &Path) -> Result<()> {
    let blob = layout.blob(digest);
    if touch(&blob)? {
        return Ok(());
    }
    let parent = blob.parent().unwrap_or(Path::new("."));
    create_dir_all(parent)?;
    touch(data)?;
    // `data` was fdatasynced by the append that wrote it; the rename publishes it whole.
    fs::rename(data, &blob).map_err(|e| StorageError::io(&blob, e))?;
    fsync_dir(parent)
}

fn rehash(path: &Path, algorithm: Algorithm) -> Result<Digest> {
    let mut f = File::open(path).map_err(|e| StorageError::io(path, e))?;
    let mut h = DigestHasher::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| StorageError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

impl FsStore {
    fn slot(&self, id: &str) -> SessionSlot {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.to_owned()).or_default().clone()
    }

    fn forget(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Locks a session and makes sure it is loaded and belongs to `repo`.
    async fn locked(&self, repo: &str, id: &str) -> Result<(String, tokio::sync::OwnedMutexGuard<Option<Session>>)> {
        let unknown = || StorageError::UploadUnknown(id.to_owned());
        let id = canonical_id(id).ok_or_else(unknown)?;
        let mut guard = self.slot(&id).lock_owned().await;
        if guard.is_none() {
            let dir = self.layout.upload_dir(&id);
            *guard = blocking(move || Session::load(&dir)).await?;
        }
        match guard.as_ref() {
            Some(s) if s.repo == repo => Ok((id, guard)),
            Some(_) => Err(unknown()),
            None => {
                // No such session on disk: do not keep a slot for it (a stream of made-up ids must not grow memory).
                drop(guard);
                self.forget(&id);
                Err(unknown())
            }
        }
    }

    /// Starts a session hashing with `algorithm` (known up front for monolithic uploads).
    pub(crate) async fn upload_start_with(&self, repo: &str, algorithm: Algorithm) -> Result<UploadStatus> {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        let session = Session {
            repo: repo.to_owned(),
            offset: 0,
            hasher: DigestHasher::new(algorithm),
            created: now(),
        };
        let dir = self.layout.upload_dir(&id);
        let tmp = self.layout.tmp();
        let session = blocking(move || {
            create_dir_all(&dir)?;
            let data = dir.join("data");
            File::create(&data).map_err(|e| StorageError::io(&data, e))?;
            session.save(&dir.join("state.json"), &tmp)?;
            Ok(session)
        })
        .await?;
        *self.slot(&id).lock().await = Some(session);
        Ok(UploadStatus { id, offset: 0 })
    }

    /// Undoes a failed append: the hasher goes back and the file is cut back to the last good offset.
    async fn rollback(&self, session: &mut Session, before: DigestHasher, data: &Path) {
        session.hasher = before;
        let offset = session.offset;
        let data = data.to_owned();
        let result = blocking(move || {
            let f = OpenOptions::new()
                .write(true)
                .open(&data)
                .map_err(|e| StorageError::io(&data, e))?;
            f.set_len(offset).map_err(|e| StorageError::io(&data, e))
        })
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "could not roll back a failed upload append");
        }
    }

    /// Publishes a file whose bytes the caller has already hashed and verified as `digest` (a mirror's spool file,
    /// fdatasynced) as a blob linked into `repo`, by rename. The file must be on this store's filesystem.
    pub async fn import_verified(&self, repo: &str, digest: &Digest, file: &Path) -> Result<u64> {
        let layout = self.layout.clone();
        let (repo, digest, file) = (repo.to_owned(), digest.clone(), file.to_owned());
        let gc = self.gc_lock.clone();
        blocking(move || {
            let size = fs::metadata(&file).map_err(|e| StorageError::io(&file, e))?.len();
            let _section = FsStore::write_section(&gc);
            publish(&layout, &digest, &file)?;
            let _ = fs::remove_file(&file);
            write_atomic(&layout.tmp(), &layout.layer_link(&repo, &digest), b"", true)?;
            Ok(size)
        })
        .await
    }

    /// Removes upload session `id` if nothing has touched it since `cutoff` (its directory, `data` and
    /// `state.json`, which every append rewrites) and no request is using it now. Returns the session's repository
    /// and the bytes it held, or `None` if it was kept (or is not a session). With `dry_run`, only reports.
    /// Blocking.
    pub(crate) fn expire_upload(&self, id: &str, cutoff: SystemTime, dry_run: bool) -> Result<Option<(String, u64)>> {
        let Some(id) = canonical_id(id) else {
            return Ok(None);
        };
        let slot = self.slot(&id);
        let result = (|| {
            // A request holding the session (an append streaming in) keeps it, however old its files look.
            let Ok(mut guard) = slot.try_lock() else {
                return Ok(None);
            };
            let dir = self.layout.upload_dir(&id);
            let mut last = None::<SystemTime>;
            let mut size = 0;
            for path in [dir.clone(), dir.join("data"), dir.join("state.json")] {
                match fs::metadata(&path) {
                    Ok(m) => {
                        let t = m.modified().map_err(|e| StorageError::io(&path, e))?;
                        last = Some(last.map_or(t, |l| l.max(t)));
                        if path.ends_with("data") {
                            size = m.len();
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StorageError::io(&path, e)),
                }
            }
            if last.is_none_or(|t| t >= cutoff) {
                return Ok(None);
            }
            let repo = read_optional(&dir.join("state.json"))?
                .and_then(|raw| serde_json::from_slice::<SessionFile>(&raw).ok())
                .map(|f| f.repo)
                .unwrap_or_default();
            if !dry_run {
                *guard = None;
                match fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(StorageError::io(&dir, e)),
                }
            }
            Ok(Some((repo, size)))
        })();
        // Do not keep a slot in memory for a session nobody uses: drop it if only the map and we hold it (others
        // get a clone only under the map's lock) and it holds no loaded session.
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&slot) == 2 && slot.try_lock().is_ok_and(|g| g.is_none()) {
            map.remove(&id);
        }
        result
    }
}

#[async_trait]
impl Uploads for FsStore {
    async fn start_upload(&self, repo: &str) -> Result<UploadStatus> {
        self.upload_start_with(repo, Algorithm::Sha256).await
    }

    async fn upload_status(&self, repo: &str, id: &str) -> Result<UploadStatus> {
        let (id, guard) = self.locked(repo, id).await?;
        let offset = guard.as_ref().map(|s| s.offset).unwrap_or(0);
        Ok(UploadStatus { id, offset })
    }

    async fn append_upload(
        &self,
        repo: &str,
        id: &str,
        start: Option<u64>,
        mut body: ByteStream,
    ) -> Result<UploadStatus> {
        let (id, mut guard) = self.locked(repo, id).await?;
        let session = guard.as_mut().ok_or_else(|| StorageError::UploadUnknown(id.clone()))?;
        if let Some(start) = start
            && start != session.offset
        {
            return Err(StorageError::RangeMismatch {
                expected: session.offset,
                got: start,
            });
        }
        let dir = self.layout.upload_dir(&id);
        let data = dir.join("data");
        let before = session.hasher.clone();
        let (tx, writer) = spawn_writer(data.clone(), session.offset);
        let mut body_error = None;
        while let Some(item) = body.next().await {
            match item {
                Ok(chunk) => {
                    session.hasher.update(&chunk);
                    if tx.send(chunk).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Err(e) => {
                    body_error = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let written = match writer.await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                self.rollback(session, before, &data).await;
                return Err(e);
            }
            Err(join) => {
                self.rollback(session, before, &data).await;
                return Err(StorageError::io(&data, io::Error::other(join.to_string())));
            }
        };
        session.offset += written;
        let state = dir.join("state.json");
        let tmp = self.layout.tmp();
        let snapshot = Session {
            repo: session.repo.clone(),
            offset: session.offset,
            hasher: session.hasher.clone(),
            created: session.created,
        };
        blocking(move || snapshot.save(&state, &tmp)).await?;
        if let Some(source) = body_error {
            return Err(StorageError::BodyInterrupted {
                kept: session.offset,
                source,
            });
        }
        Ok(UploadStatus {
            id,
            offset: session.offset,
        })
    }

    async fn commit_upload(&self, repo: &str, id: &str, expected: &Digest) -> Result<u64> {
        let (id, mut guard) = self.locked(repo, id).await?;
        let session = guard.take().ok_or_else(|| StorageError::UploadUnknown(id.clone()))?;
        let dir = self.layout.upload_dir(&id);
        let data = dir.join("data");
        let size = session.offset;
        let computed = if session.hasher.algorithm() == expected.algorithm() {
            session.hasher.finish()
        } else {
            let data = data.clone();
            let alg = expected.algorithm();
            blocking(move || rehash(&data, alg)).await?
        };
        let layout = self.layout.clone();
        let expected2 = expected.clone();
        let repo2 = repo.to_owned();
        let matched = computed == *expected;
        let gc = self.gc_lock.clone();
        let result = blocking(move || {
            if !matched {
                let _ = fs::remove_dir_all(&dir);
                return Ok(());
            }
            let _section = FsStore::write_section(&gc);
            publish(&layout, &expected2, &data)?;
            let _ = fs::remove_dir_all(&dir);
            write_atomic(&layout.tmp(), &layout.layer_link(&repo2, &expected2), b"", true)
        })
        .await;
        drop(guard);
        self.forget(&id);
        result?;
        if !matched {
            return Err(StorageError::DigestMismatch {
                expected: expected.clone(),
                computed,
            });
        }
        Ok(size)
    }

    async fn cancel_upload(&self, repo: &str, id: &str) -> Result<()> {
        let (id, mut guard) = self.locked(repo, id).await?;
        guard.take();
        let dir = self.layout.upload_dir(&id);
        let result = blocking(move || fs::remove_dir_all(&dir).map_err(|e| StorageError::io(&dir, e))).await;
        drop(guard);
        self.forget(&id);
        result
    }

    /// A one-shot upload whose digest is known up front: hashed with the right algorithm, committed at once.
    async fn put_blob(&self, repo: &str, expected: &Digest, body: ByteStream) -> Result<u64> {
        let status = self.upload_start_with(repo, expected.algorithm()).await?;
        if let Err(e) = self.append_upload(repo, &status.id, None, body).await {
            let _ = self.cancel_upload(repo, &status.id).await;
            return Err(e);
        }
        self.commit_upload(repo, &status.id, expected).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RegistryStore;

    fn stream(chunks: Vec<Result<&'static [u8], io::Error>>) -> ByteStream {
        Box::pin(futures_util::stream::iter(
            chunks.into_iter().map(|c| c.map(Bytes::from_static)),
        ))
    }

    #[tokio::test]
    async fn crash_leftovers_past_offset_are_dropped_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let s = store.start_upload("r").await.unwrap();
        store
            .append_upload("r", &s.id, None, stream(vec![Ok(b"hello ")]))
            .await
            .unwrap();
        // A crash mid-append: bytes reached the file, the state was never saved.
        let data = store.layout.upload_dir(&s.id).join("data");
        let mut f = OpenOptions::new().append(true).open(&data).unwrap();
        f.write_all(b"GARBAGE").unwrap();
        drop(store);

        let store = FsStore::open(dir.path()).unwrap();
        assert_eq!(store.upload_status("r", &s.id).await.unwrap().offset, 6);
        assert_eq!(fs::metadata(&data).unwrap().len(), 6);
        store
            .append_upload("r", &s.id, Some(6), stream(vec![Ok(b"world")]))
            .await
            .unwrap();
        let want = Digest::sha256_of(b"hello world");
        assert_eq!(store.commit_upload("r", &s.id, &want).await.unwrap(), 11);
        assert_eq!(store.blob_size(&want).await.unwrap(), Some(11));
    }

    #[tokio::test]
    async fn broken_body_keeps_what_arrived() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let s = store.start_upload("r").await.unwrap();
        let err = store
            .append_upload(
                "r",
                &s.id,
                None,
                stream(vec![Ok(b"abc"), Err(io::Error::other("reset"))]),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::BodyInterrupted { kept: 3, .. }), "{err}");
        assert_eq!(store.upload_status("r", &s.id).await.unwrap().offset, 3);
        store
            .append_upload("r", &s.id, Some(3), stream(vec![Ok(b"def")]))
            .await
            .unwrap();
        let wrong = Digest::sha256_of(b"abcdeX");
        assert!(matches!(
            store.commit_upload("r", &s.id, &wrong).await,
            Err(StorageError::DigestMismatch { .. })
        ));
        assert_eq!(store.blob_size(&wrong).await.unwrap(), None);
        // The session is gone after a mismatch.
        assert!(matches!(
            store.upload_status("r", &s.id).await,
            Err(StorageError::UploadUnknown(_))
        ));
    }

    #[tokio::test]
    async fn ids_that_are_not_canonical_uuids_are_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        for id in ["..", "../../etc", "", "x", "9A3C8D3E-1C59-4D4A-9C8B-7C5B7E1A2B3C"] {
            assert!(
                matches!(store.upload_status("r", id).await, Err(StorageError::UploadUnknown(_))),
                "{id}"
            );
        }
    }
}
