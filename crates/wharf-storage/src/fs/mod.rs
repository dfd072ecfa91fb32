//! [`FsStore`]: the filesystem implementation of [`RegistryStore`]. Uploads are in `upload.rs`, garbage collection
//! in `gc.rs`.

pub(crate) mod gc;
mod layer_index;
mod upload;

use std::collections::HashMap;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;
use wharf_oci::Digest;
use wharf_oci::manifest::{Descriptor, ManifestView};

use crate::atomic::{blocking, list_dir, read_optional, remove_optional, touch, write_atomic};
use crate::paths::Layout;
use crate::{
    BlobSource, ByteStream, LayerBlob, LayerEntry, LayerForm, NewManifest, OpenBlob, Prune, Reference, RegistryStore,
    Result, StorageError, StoredManifest,
};
use upload::SessionSlot;

/// Read buffer for blob bodies: large enough that a 1 GiB GET is ~1000 trips to the blocking pool, not 100,000.
const READ_CHUNK: usize = 1 << 20;

/// Filesystem-backed registry storage rooted at one directory.
pub struct FsStore {
    pub(crate) layout: Layout,
    /// Upload sessions in use, each behind its own lock so chunks of one upload never interleave. Loaded from disk
    /// on first use, which is how sessions survive a restart.
    pub(crate) sessions: Mutex<HashMap<String, SessionSlot>>,
    /// Held shared by every write that makes content reachable (blob commit, mount, manifest PUT) while it
    /// refreshes the modification time of what it reuses, and exclusively by garbage collection while it re-checks
    /// and deletes. See `gc.rs` for why this makes collection safe during pushes.
    pub(crate) gc_lock: Arc<RwLock<()>>,
    /// Manifest PUTs fail with [`StorageError::BlobUnknown`] when a blob they require is missing on disk (see
    /// [`FsStore::verify_references`]).
    verify_references: bool,
}

impl FsStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let layout = Layout::new(root);
        for dir in [
            layout.repositories(),
            layout.uploads(),
            layout.tmp(),
            layout.root().join("blobs"),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| StorageError::io(&dir, e))?;
        }
        Ok(FsStore {
            layout,
            sessions: Mutex::new(HashMap::new()),
            gc_lock: Arc::new(RwLock::new(())),
            verify_references: false,
        })
    }

    /// With `on`, a manifest PUT checks on disk, under the garbage-collection lock, that every blob it requires
    /// (config, distributable layers, index children) is still there, and fails with
    /// [`StorageError::BlobUnknown`] otherwise. The HTTP layer checks the same before (possibly from a cache); this
    /// check is the one that cannot race with a collection deleting an old unreferenced blob. Off for stores that
    /// hold manifests before their blobs on purpose (a pull-through cache).
    pub fn verify_references(mut self, on: bool) -> Self {
        self.verify_references = on;
        self
    }

    /// The shared side of the garbage-collection lock, for a write that makes content reachable.
    pub(crate) fn write_section(lock: &RwLock<()>) -> RwLockReadGuard<'_, ()> {
        lock.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn file_size(path: &Path) -> Result<Option<u64>> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io(path, e)),
        }
    }

    /// Writes `data` as the blob `digest` unless it is already stored, in which case its modification time is
    /// refreshed (it is in use again: see `gc.rs`). The caller has verified the digest.
    pub(crate) fn write_blob_bytes(layout: &Layout, digest: &Digest, data: &[u8]) -> Result<()> {
        let path = layout.blob(digest);
        if touch(&path)? {
            return Ok(());
        }
        write_atomic(&layout.tmp(), &path, data, true)
    }

    /// Refreshes the modification time of everything a manifest being stored in `repo` makes reachable, so that a
    /// collection running now keeps it (see `gc.rs`): the blobs it names and, through index children and the
    /// referrers of each manifest reached, their revisions and blobs in turn. With `verify`, fails if a blob or
    /// child the manifest itself requires is gone. Called under the shared garbage-collection lock.
    fn touch_references(layout: &Layout, repo: &str, m: &NewManifest, verify: bool) -> Result<()> {
        let (media_type, body) = (m.media_type.as_str(), &m.body[..]);
        let Ok(view) = ManifestView::parse(body, Some(media_type)) else {
            return Ok(());
        };
        let required: Vec<&Digest> = view.required_blobs().map(|d| &d.digest).collect();
        for d in view.config.iter().chain(&view.layers) {
            if !touch(&layout.blob(&d.digest))? && verify && required.contains(&&d.digest) {
                return Err(StorageError::BlobUnknown(d.digest.clone()));
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut stack = Vec::new();
        for child in &view.manifests {
            let blob = touch(&layout.blob(&child.digest))?;
            let revision = layout.revision(repo, &child.digest);
            if verify && !(blob && (revision.exists() || layout.layer_link(repo, &child.digest).exists())) {
                return Err(StorageError::BlobUnknown(child.digest.clone()));
            }
            stack.push(child.digest.clone());
        }
        // What the children reach, and what the referrers of the manifest (being re-tagged, say) reach.
        Self::push_referrers(layout, repo, &m.digest, &mut stack)?;
        while let Some(d) = stack.pop() {
            if !seen.insert(d.clone()) || !touch(&layout.revision(repo, &d))? {
                continue;
            }
            let blob = layout.blob(&d);
            touch(&blob)?;
            let media_type = read_optional(&layout.revision(repo, &d))?.unwrap_or_default();
            if let Some(body) = read_optional(&blob)?
                && let Ok(v) = ManifestView::parse(&body, Some(&String::from_utf8_lossy(&media_type)))
            {
                for r in v.config.iter().chain(&v.layers) {
                    touch(&layout.blob(&r.digest))?;
                }
                for c in &v.manifests {
                    touch(&layout.blob(&c.digest))?;
                    stack.push(c.digest.clone());
                }
            }
            Self::push_referrers(layout, repo, &d, &mut stack)?;
        }
        Ok(())
    }

    /// Pushes the digests of the referrers of `subject` in `repo` onto `stack`.
    fn push_referrers(layout: &Layout, repo: &str, subject: &Digest, stack: &mut Vec<Digest>) -> Result<()> {
        let dir = layout.referrers(repo, subject);
        for name in list_dir(&dir)? {
            if let Some(raw) = read_optional(&dir.join(&name))?
                && let Ok(d) = serde_json::from_slice::<Descriptor>(&raw)
            {
                stack.push(d.digest);
            }
        }
        Ok(())
    }

    fn link(layout: &Layout, path: &Path, content: &[u8]) -> Result<()> {
        write_atomic(&layout.tmp(), path, content, true)
    }

    fn resolve(layout: &Layout, repo: &str, reference: &Reference) -> Result<Option<Digest>> {
        match reference {
            Reference::Digest(d) => Ok(Some(d.clone())),
            Reference::Tag(t) => {
                let path = layout.tag(repo, t);
                let Some(raw) = read_optional(&path)? else {
                    return Ok(None);
                };
                let s = String::from_utf8_lossy(&raw);
                s.trim().parse().map(Some).map_err(|e| StorageError::Corrupt {
                    path,
                    reason: format!("{e}"),
                })
            }
        }
    }

    pub(crate) fn walk_repositories(base: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
        for name in list_dir(base)? {
            if name.starts_with('_') || name.starts_with('.') {
                continue;
            }
            let dir = base.join(&name);
            if !dir.is_dir() {
                continue;
            }
            let full = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if dir.join("_manifests").is_dir() || dir.join("_layers").is_dir() {
                out.push(full.clone());
            }
            Self::walk_repositories(&dir, &full, out)?;
        }
        Ok(())
    }
}

/// An open blob file. Reading from the open descriptor means a concurrent delete or eviction cannot cut a
/// response short.
struct FileSource {
    file: std::fs::File,
    path: PathBuf,
}

/// Blobs at least this large are sent from memory maps instead of read into buffers: the bytes go from the page
/// cache to the socket with one copy instead of two (CNCF distribution gets the same effect from sendfile, which
/// hyper cannot use).
const MMAP_MIN: u64 = 1 << 20;
/// Bytes mapped per step. Each window is mapped and pre-faulted (`MAP_POPULATE`) on the blocking pool, so no page
/// fault ever stalls an async worker, and memory stays bounded by the windows in flight.
const MMAP_WINDOW: u64 = 8 << 20;
/// Size of the slices of a window handed to hyper (zero-copy). Moderate writes keep a loopback receiver fed better
/// than one huge write (measured in bench/registry.sh: 32-64 KiB writes beat 1 MiB ones by ~25% on GET).
const SEND_PIECE: usize = 64 << 10;

/// Maps `len` bytes of `file` at `offset`, pre-faulted.
fn map_window(file: &std::fs::File, offset: u64, len: u64) -> io::Result<Bytes> {
    const PAGE: u64 = 4096;
    let aligned = offset & !(PAGE - 1);
    let delta = (offset - aligned) as usize;
    let len = len as usize;
    // SAFETY: blob files are immutable once published: never written or truncated again (a delete leaves an
    // existing mapping intact), so the mapped bytes cannot change or vanish under the reader.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(aligned)
            .len(delta + len)
            .populate()
            .map(file)?
    };
    Ok(Bytes::from_owner(map).slice(delta..delta + len))
}

#[async_trait]
impl BlobSource for FileSource {
    async fn read(self: Box<Self>, range: Option<(u64, u64)>) -> Result<ByteStream> {
        let size = self.file.metadata().map_err(|e| StorageError::io(&self.path, e))?.len();
        let (start, end) = range.unwrap_or((0, size));
        if end - start < MMAP_MIN {
            let mut file = tokio::fs::File::from_std(self.file);
            file.seek(SeekFrom::Start(start))
                .await
                .map_err(|e| StorageError::io(&self.path, e))?;
            let limited = file.take(end.saturating_sub(start));
            return Ok(Box::pin(ReaderStream::with_capacity(limited, READ_CHUNK)));
        }
        let file = std::sync::Arc::new(self.file);
        // State: the file, the next offset to map, and what is left of the current window.
        let init = (file, start, Bytes::new());
        let stream = futures_util::stream::unfold(init, move |(file, pos, mut window)| async move {
            if window.is_empty() {
                if pos >= end {
                    return None;
                }
                let len = (end - pos).min(MMAP_WINDOW);
                let f = file.clone();
                let mapped = match tokio::task::spawn_blocking(move || map_window(&f, pos, len)).await {
                    Ok(r) => r,
                    Err(e) => Err(io::Error::other(e.to_string())),
                };
                match mapped {
                    Ok(w) => window = w,
                    // The stream ends after the error: the response is cut short, which the client sees.
                    Err(e) => return Some((Err(e), (file, end, Bytes::new()))),
                }
                let next = pos + len;
                let piece = window.split_to(window.len().min(SEND_PIECE));
                return Some((Ok(piece), (file, next, window)));
            }
            let piece = window.split_to(window.len().min(SEND_PIECE));
            Some((Ok(piece), (file, pos, window)))
        });
        Ok(Box::pin(stream))
    }
}

#[async_trait]
impl RegistryStore for FsStore {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.layout.blob(digest);
        blocking(move || Self::file_size(&path)).await
    }

    async fn repo_blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        let link = self.layout.layer_link(repo, digest);
        let blob = self.layout.blob(digest);
        blocking(move || {
            if !link.exists() {
                return Ok(None);
            }
            Self::file_size(&blob)
        })
        .await
    }

    async fn open_blob(&self, repo: &str, digest: &Digest) -> Result<Option<OpenBlob>> {
        let link = self.layout.layer_link(repo, digest);
        let path = self.layout.blob(digest);
        blocking(move || {
            if !link.exists() {
                return Ok(None);
            }
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(StorageError::io(&path, e)),
            };
            let size = file.metadata().map_err(|e| StorageError::io(&path, e))?.len();
            Ok(Some(OpenBlob {
                size,
                source: Box::new(FileSource { file, path }),
            }))
        })
        .await
    }

    async fn remove_blob(&self, digest: &Digest) -> Result<bool> {
        let path = self.layout.blob(digest);
        blocking(move || remove_optional(&path)).await
    }

    async fn link_blob(&self, repo: &str, digest: &Digest) -> Result<()> {
        let layout = self.layout.clone();
        let link = layout.layer_link(repo, digest);
        let blob = layout.blob(digest);
        let gc = self.gc_lock.clone();
        blocking(move || {
            // A mount reuses a blob: it counts as fresh again for garbage collection.
            let _section = Self::write_section(&gc);
            touch(&blob)?;
            Self::link(&layout, &link, b"")
        })
        .await
    }

    async fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let link = self.layout.layer_link(repo, digest);
        blocking(move || remove_optional(&link)).await
    }

    async fn put_manifest(&self, repo: &str, m: NewManifest) -> Result<()> {
        let layout = self.layout.clone();
        let repo = repo.to_owned();
        let gc = self.gc_lock.clone();
        let verify = self.verify_references;
        blocking(move || {
            let _section = Self::write_section(&gc);
            Self::touch_references(&layout, &repo, &m, verify)?;
            // Order matters for crash safety: bytes, then the revision, then what points at it.
            Self::write_blob_bytes(&layout, &m.digest, &m.body)?;
            Self::link(&layout, &layout.revision(&repo, &m.digest), m.media_type.as_bytes())?;
            if let Some((subject, descriptor)) = &m.referrer {
                let json = serde_json::to_vec(descriptor).map_err(|e| StorageError::Corrupt {
                    path: layout.referrer(&repo, subject, &m.digest),
                    reason: e.to_string(),
                })?;
                Self::link(&layout, &layout.referrer(&repo, subject, &m.digest), &json)?;
            }
            for tag in &m.tags {
                Self::link(&layout, &layout.tag(&repo, tag), m.digest.to_string().as_bytes())?;
            }
            Ok(())
        })
        .await
    }

    async fn get_manifest(&self, repo: &str, reference: &Reference) -> Result<Option<StoredManifest>> {
        let layout = self.layout.clone();
        let repo = repo.to_owned();
        let reference = reference.clone();
        blocking(move || {
            let Some(digest) = Self::resolve(&layout, &repo, &reference)? else {
                return Ok(None);
            };
            let Some(media_type) = read_optional(&layout.revision(&repo, &digest))? else {
                return Ok(None);
            };
            let Some(body) = read_optional(&layout.blob(&digest))? else {
                return Ok(None);
            };
            Ok(Some(StoredManifest {
                digest,
                media_type: String::from_utf8_lossy(&media_type).into_owned(),
                body: Bytes::from(body),
            }))
        })
        .await
    }

    async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let layout = self.layout.clone();
        let repo = repo.to_owned();
        let digest = digest.clone();
        blocking(move || {
            let revision = layout.revision(&repo, &digest);
            if !revision.exists() {
                return Ok(false);
            }
            // Tags first, so no tag is left pointing at a deleted revision.
            let wanted = digest.to_string();
            for tag in list_dir(&layout.tags(&repo))? {
                let path = layout.tag(&repo, &tag);
                if read_optional(&path)?.is_some_and(|t| String::from_utf8_lossy(&t).trim() == wanted) {
                    remove_optional(&path)?;
                }
            }
            if let Some(body) = read_optional(&layout.blob(&digest))?
                && let Ok(view) = ManifestView::parse(&body, None)
                && let Some(subject) = view.subject
            {
                remove_optional(&layout.referrer(&repo, &subject.digest, &digest))?;
            }
            remove_optional(&revision)
        })
        .await
    }

    async fn delete_tag(&self, repo: &str, tag: &str) -> Result<bool> {
        let path = self.layout.tag(repo, tag);
        blocking(move || remove_optional(&path)).await
    }

    async fn tags(&self, repo: &str) -> Result<Option<Vec<String>>> {
        let layout = self.layout.clone();
        let repo = repo.to_owned();
        blocking(move || {
            if !layout.repo(&repo).join("_manifests").is_dir() && !layout.repo(&repo).join("_layers").is_dir() {
                return Ok(None);
            }
            list_dir(&layout.tags(&repo)).map(Some)
        })
        .await
    }

    async fn repositories(&self) -> Result<Vec<String>> {
        let base = self.layout.repositories();
        blocking(move || {
            let mut out = Vec::new();
            Self::walk_repositories(&base, "", &mut out)?;
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
        let dir = self.layout.referrers(repo, subject);
        blocking(move || {
            let mut out = Vec::new();
            for name in list_dir(&dir)? {
                let path = dir.join(&name);
                let Some(raw) = read_optional(&path)? else {
                    continue;
                };
                let d: Descriptor = serde_json::from_slice(&raw).map_err(|e| StorageError::Corrupt {
                    path,
                    reason: e.to_string(),
                })?;
                out.push(d);
            }
            Ok(out)
        })
        .await
    }

    async fn layer_forms(&self, diff_id: &Digest) -> Result<Vec<LayerForm>> {
        let (layout, diff_id) = (self.layout.clone(), diff_id.clone());
        blocking(move || layer_index::forms(&layout, &diff_id)).await
    }

    async fn record_layers(&self, entries: &[LayerEntry]) -> Result<()> {
        let (layout, entries) = (self.layout.clone(), entries.to_vec());
        blocking(move || layer_index::record(&layout, &entries)).await
    }

    async fn confirm_layer(&self, diff_id: &Digest, blob: &LayerBlob) -> Result<()> {
        let (layout, diff_id, blob) = (self.layout.clone(), diff_id.clone(), blob.clone());
        blocking(move || layer_index::confirm(&layout, &diff_id, &blob)).await
    }

    async fn refuse_layer_claim(&self, diff_id: &Digest, blob: &Digest) -> Result<()> {
        let (layout, diff_id, blob) = (self.layout.clone(), diff_id.clone(), blob.clone());
        blocking(move || layer_index::refuse(&layout, &diff_id, &blob)).await
    }

    async fn layer_claims(&self, limit: usize) -> Result<Vec<LayerEntry>> {
        let layout = self.layout.clone();
        blocking(move || layer_index::claims(&layout, limit)).await
    }

    async fn forget_layer(&self, entry: &LayerEntry) -> Result<bool> {
        let (layout, entry) = (self.layout.clone(), entry.clone());
        blocking(move || layer_index::forget(&layout, &entry)).await
    }

    async fn prune_layer_index(&self, prune: Prune<'_>) -> Result<usize> {
        let layout = self.layout.clone();
        let blobs = match prune {
            Prune::Blobs(set) => Some(set.clone()),
            Prune::Unlinked => None,
        };
        blocking(move || match &blobs {
            Some(set) => layer_index::prune(&layout, Prune::Blobs(set)),
            None => layer_index::prune(&layout, Prune::Unlinked),
        })
        .await
    }

    async fn layer_index_complete(&self) -> Result<Option<bool>> {
        let layout = self.layout.clone();
        blocking(move || Ok(Some(layer_index::complete(&layout)))).await
    }

    async fn set_layer_index_complete(&self, complete: bool) -> Result<()> {
        let layout = self.layout.clone();
        blocking(move || layer_index::set_complete(&layout, complete)).await
    }
}
