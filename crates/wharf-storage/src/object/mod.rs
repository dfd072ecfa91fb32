//! [`ObjectStore`]: [`RegistryStore`] on an object store (S3-compatible, Azure Blob, GCS, Aliyun OSS) through
//! OpenDAL. Keys are laid out in `keys.rs`; uploads are in `upload.rs`.
//!
//! The guarantee is the filesystem store's: an object under `blobs/` always holds the bytes its digest names.
//! Blob data is written with the backend's multipart (or block, or resumable) writes, which become visible only
//! when completed, and a write is completed only after the streamed bytes hashed to the expected digest; on a
//! mismatch or a broken body it is aborted. A process killed mid-write leaves at most an incomplete multipart
//! upload, invisible to readers (an `AbortIncompleteMultipartUpload` lifecycle rule reclaims its space).

pub mod gc;
pub mod gc_lock;
mod keys;
mod layer_index;
pub mod session;
mod sessions_bucket;
mod upload;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use opendal::{ErrorKind, Operator};
use wharf_oci::manifest::{Descriptor, ManifestView};
use wharf_oci::{Digest, DigestHasher};

use crate::{
    BlobSource, ByteStream, LayerBlob, LayerEntry, LayerForm, NewManifest, OpenBlob, Prune, Reference, RegistryStore,
    Result, StorageError, StoredManifest,
};
pub use gc_lock::{GcLock, LocalGcLock};
pub use session::{MemorySessions, SessionState, SessionStore};
pub use sessions_bucket::BucketSessions;

/// How to reach the object store and how to use it.
#[derive(Debug, Clone)]
pub struct ObjectConfig {
    /// OpenDAL service: `s3`, `azblob`, `gcs` or `oss`.
    pub service: String,
    /// The service's options as OpenDAL names them (`bucket`, `endpoint`, `region`, `root`, `access_key_id`, ...).
    pub options: Vec<(String, String)>,
    /// Answer blob GETs with a redirect to a presigned URL valid this long, instead of streaming through wharf.
    pub redirect: Option<Duration>,
    /// Size of each part of a multipart write (S3 wants at least 5 MiB).
    pub part_size: usize,
    /// Parts in flight per write.
    pub concurrency: usize,
}

impl Default for ObjectConfig {
    fn default() -> Self {
        ObjectConfig {
            service: "s3".into(),
            options: Vec::new(),
            redirect: None,
            part_size: 16 << 20,
            concurrency: 4,
        }
    }
}

/// The services a configuration may name; OpenDAL is built with exactly these.
pub const SERVICES: &[&str] = &["s3", "azblob", "gcs", "oss"];

/// Registry storage in a bucket.
pub struct ObjectStore {
    op: Operator,
    sessions: Arc<dyn SessionStore>,
    /// Write sections that reuse content, against garbage collection (see `gc.rs`).
    gc: Arc<dyn GcLock>,
    redirect: Option<Duration>,
    part_size: usize,
    concurrency: usize,
    /// Repositories whose catalog entry this process has written or seen, so it is written once, not per push.
    cataloged: Mutex<HashSet<String>>,
    /// One lock per upload session in use here, so appends to one session from this process never interleave
    /// (across replicas, [`SessionStore::save`]'s compare-and-set decides).
    session_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Builds the operator for `config`: the service from OpenDAL's registry, retries with backoff for transient errors,
/// and our own reqwest client (rustls with ring, like the rest of wharf) as its HTTP transport.
pub fn operator(config: &ObjectConfig) -> Result<Operator> {
    if !SERVICES.contains(&config.service.as_str()) {
        return Err(StorageError::backend(
            format!("use service {:?}", config.service),
            format!("wharf supports {}", SERVICES.join(", ")),
        ));
    }
    opendal::init_default_registry();
    let client = wharf_remote::http::client_builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| StorageError::backend("build an HTTP client", e))?;
    opendal::HttpTransporter::install_default(opendal_http_transport_reqwest::ReqwestTransport::new(client));
    let op = Operator::via_iter(&config.service, config.options.iter().cloned())
        .map_err(|e| StorageError::backend(format!("configure {}", config.service), e))?;
    Ok(op
        .layer(opendal::layers::RetryLayer::new().with_max_times(4).with_jitter())
        .layer(
            opendal::layers::TimeoutLayer::new()
                .with_timeout(Duration::from_secs(60))
                .with_io_timeout(Duration::from_secs(30)),
        ))
}

pub(crate) fn is_not_found(e: &opendal::Error) -> bool {
    e.kind() == ErrorKind::NotFound
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ObjectStore {
    /// A store on `op` keeping upload sessions in `sessions` (the bucket itself, Redis, or memory).
    pub fn new(op: Operator, sessions: Arc<dyn SessionStore>, config: &ObjectConfig) -> Self {
        ObjectStore {
            op,
            sessions,
            gc: Arc::new(LocalGcLock::default()),
            redirect: config.redirect,
            part_size: config.part_size.max(5 << 20),
            concurrency: config.concurrency.max(1),
            cataloged: Mutex::new(HashSet::new()),
            session_locks: Mutex::new(HashMap::new()),
        }
    }

    /// Coordinates with garbage collection through `lock` (shared by replicas: `crate::redis_meta::RedisGcLock`)
    /// instead of this process's own lock.
    pub fn with_gc_lock(mut self, lock: Arc<dyn GcLock>) -> Self {
        self.gc = lock;
        self
    }

    pub fn operator(&self) -> &Operator {
        &self.op
    }

    /// Fails with [`StorageError::BlobUnknown`] unless every blob in `digests` is stored. Called inside a write
    /// section, where no collection can delete them any more.
    async fn require(&self, digests: &[Digest]) -> Result<()> {
        let keys: Vec<String> = digests.iter().map(keys::blob).collect();
        let sizes = futures_util::future::try_join_all(keys.iter().map(|k| self.size_of(k))).await?;
        match digests.iter().zip(sizes).find(|(_, s)| s.is_none()) {
            Some((d, _)) => Err(StorageError::BlobUnknown(d.clone())),
            None => Ok(()),
        }
    }

    /// A whole small object; `None` if absent.
    async fn read_small(&self, key: &str) -> Result<Option<Bytes>> {
        match self.op.read(key).await {
            Ok(b) => Ok(Some(b.to_bytes())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(StorageError::backend(format!("read {key}"), e)),
        }
    }

    async fn size_of(&self, key: &str) -> Result<Option<u64>> {
        match self.op.stat(key).await {
            Ok(m) => Ok(Some(m.content_length())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(StorageError::backend(format!("stat {key}"), e)),
        }
    }

    async fn put_small(&self, key: &str, data: impl Into<Bytes>) -> Result<()> {
        let data: Bytes = data.into();
        self.op
            .write(key, data)
            .await
            .map(|_| ())
            .map_err(|e| StorageError::backend(format!("write {key}"), e))
    }

    /// Deletes `key`; false if it was not there.
    async fn delete_key(&self, key: &str) -> Result<bool> {
        if self.size_of(key).await?.is_none() {
            return Ok(false);
        }
        self.op
            .delete(key)
            .await
            .map_err(|e| StorageError::backend(format!("delete {key}"), e))?;
        Ok(true)
    }

    /// Names of the objects directly under `prefix` (which ends in `/`), sorted.
    async fn list_names(&self, prefix: &str) -> Result<Vec<String>> {
        let entries = match self.op.list(prefix).await {
            Ok(e) => e,
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(StorageError::backend(format!("list {prefix}"), e)),
        };
        let mut names: Vec<String> = entries
            .into_iter()
            .filter(|e| e.path() != prefix && e.metadata().is_file())
            .map(|e| e.name().trim_end_matches('/').to_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Records that `repo` exists, once per process.
    async fn catalog(&self, repo: &str) -> Result<()> {
        if self.cataloged.lock().map(|s| s.contains(repo)).unwrap_or(false) {
            return Ok(());
        }
        let key = keys::catalog_entry(repo);
        if self.size_of(&key).await?.is_none() {
            self.put_small(&key, Bytes::new()).await?;
        }
        if let Ok(mut s) = self.cataloged.lock() {
            s.insert(repo.to_owned());
        }
        Ok(())
    }

    /// Streams `body` into the blob `expected`, hashing it on the way; the write completes only if the digest
    /// matches, else it is aborted and nothing becomes visible. A blob already stored is not written again (the
    /// body is still read and checked). Returns the size.
    async fn write_verified(&self, expected: &Digest, mut body: ByteStream) -> Result<u64> {
        let key = keys::blob(expected);
        let exists = self.size_of(&key).await?.is_some();
        let mut hasher = DigestHasher::new(expected.algorithm());
        let mut writer = if exists { None } else { Some(self.writer(&key).await?) };
        let mut size = 0u64;
        while let Some(item) = body.next().await {
            let chunk = match item {
                Ok(c) => c,
                Err(source) => {
                    abort(writer.as_mut()).await;
                    return Err(StorageError::BodyInterrupted { kept: 0, source });
                }
            };
            hasher.update(&chunk);
            size += chunk.len() as u64;
            if let Some(w) = writer.as_mut()
                && let Err(e) = w.write(chunk).await
            {
                abort(writer.as_mut()).await;
                return Err(StorageError::backend(format!("write {key}"), e));
            }
        }
        let computed = hasher.finish();
        if computed != *expected {
            abort(writer.as_mut()).await;
            return Err(StorageError::DigestMismatch {
                expected: expected.clone(),
                computed,
            });
        }
        if let Some(mut w) = writer
            && let Err(e) = w.close().await
        {
            let _ = w.abort().await;
            return Err(StorageError::backend(format!("complete {key}"), e));
        }
        Ok(size)
    }

    async fn writer(&self, key: &str) -> Result<opendal::Writer> {
        self.op
            .writer_with(key)
            .chunk(self.part_size)
            .concurrent(self.concurrency)
            .await
            .map_err(|e| StorageError::backend(format!("start writing {key}"), e))
    }

    /// Links a stored blob into `repo` inside a write section: the blob may be an old one a collection would
    /// otherwise take.
    async fn link(&self, repo: &str, digest: &Digest) -> Result<()> {
        let _section = self.gc.enter(std::slice::from_ref(digest)).await?;
        self.require(std::slice::from_ref(digest)).await?;
        self.put_small(&keys::layer_link(repo, digest), Bytes::new()).await?;
        self.catalog(repo).await
    }

    async fn resolve(&self, repo: &str, reference: &Reference) -> Result<Option<Digest>> {
        match reference {
            Reference::Digest(d) => Ok(Some(d.clone())),
            Reference::Tag(t) => {
                let key = keys::tag(repo, t);
                let Some(raw) = self.read_small(&key).await? else {
                    return Ok(None);
                };
                let s = String::from_utf8_lossy(&raw);
                s.trim()
                    .parse()
                    .map(Some)
                    .map_err(|e| StorageError::backend(format!("read tag {key}"), format!("{e}")))
            }
        }
    }

    /// The presigned URL a blob GET may be redirected to, when redirects are configured and `repo` links the blob.
    pub async fn presigned_blob_url(&self, repo: &str, digest: &Digest) -> Result<Option<String>> {
        let Some(ttl) = self.redirect else {
            return Ok(None);
        };
        if self.size_of(&keys::layer_link(repo, digest)).await?.is_none() {
            return Ok(None);
        }
        let key = keys::blob(digest);
        let req = self
            .op
            .presign_read(&key, ttl)
            .await
            .map_err(|e| StorageError::backend(format!("presign {key}"), e))?;
        Ok(Some(req.uri().to_string()))
    }
}

async fn abort(writer: Option<&mut opendal::Writer>) {
    if let Some(w) = writer
        && let Err(e) = w.abort().await
    {
        tracing::warn!(error = %e, "could not abort an unfinished object write; a lifecycle rule reclaims it");
    }
}

/// A blob object opened for reading (its size known from a stat).
struct ObjectSource {
    op: Operator,
    key: String,
    size: u64,
    part_size: usize,
}

#[async_trait]
impl BlobSource for ObjectSource {
    async fn read(self: Box<Self>, range: Option<(u64, u64)>) -> Result<ByteStream> {
        let (start, end) = range.unwrap_or((0, self.size));
        if start >= end {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let reader = self
            .op
            .reader_with(&self.key)
            .chunk(self.part_size)
            .concurrent(2)
            .await
            .map_err(|e| StorageError::backend(format!("open {}", self.key), e))?;
        let stream = reader
            .into_bytes_stream(start..end)
            .await
            .map_err(|e| StorageError::backend(format!("read {}", self.key), e))?;
        Ok(Box::pin(stream.map_err(std::io::Error::other)))
    }
}

#[async_trait]
impl RegistryStore for ObjectStore {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        self.size_of(&keys::blob(digest)).await
    }

    async fn repo_blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        let (link, blob) = (keys::layer_link(repo, digest), keys::blob(digest));
        let (link, blob) = futures_util::try_join!(self.size_of(&link), self.size_of(&blob))?;
        Ok(link.and(blob))
    }

    async fn open_blob(&self, repo: &str, digest: &Digest) -> Result<Option<OpenBlob>> {
        let Some(size) = self.repo_blob_size(repo, digest).await? else {
            return Ok(None);
        };
        Ok(Some(OpenBlob {
            size,
            source: Box::new(ObjectSource {
                op: self.op.clone(),
                key: keys::blob(digest),
                size,
                part_size: self.part_size,
            }),
        }))
    }

    async fn blob_redirect(&self, repo: &str, digest: &Digest) -> Result<Option<String>> {
        self.presigned_blob_url(repo, digest).await
    }

    async fn remove_blob(&self, digest: &Digest) -> Result<bool> {
        self.delete_key(&keys::blob(digest)).await
    }

    async fn link_blob(&self, repo: &str, digest: &Digest) -> Result<()> {
        self.link(repo, digest).await
    }

    async fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        self.delete_key(&keys::layer_link(repo, digest)).await
    }

    async fn put_manifest(&self, repo: &str, m: NewManifest) -> Result<()> {
        // Inside a write section, the blobs the manifest requires are checked in the bucket: the HTTP layer checked
        // too (perhaps from a cache), but only this check cannot race with a collection deleting an old blob.
        let (mut reused, mut required) = (vec![m.digest.clone()], Vec::new());
        if let Ok(view) = ManifestView::parse(&m.body, Some(&m.media_type)) {
            required.extend(view.required_blobs().map(|d| d.digest.clone()));
            required.extend(view.manifests.iter().map(|d| d.digest.clone()));
            reused.extend(
                view.config
                    .iter()
                    .chain(&view.layers)
                    .chain(&view.manifests)
                    .map(|d| d.digest.clone()),
            );
        }
        let _section = self.gc.enter(&reused).await?;
        self.require(&required).await?;
        // Order matters for crash safety: bytes, then the revision, then what points at it.
        let body = keys::blob(&m.digest);
        if self.size_of(&body).await?.is_none() {
            self.put_small(&body, m.body.clone()).await?;
        }
        self.put_small(&keys::revision(repo, &m.digest), m.media_type.clone().into_bytes())
            .await?;
        if let Some((subject, descriptor)) = &m.referrer {
            let key = keys::referrer(repo, subject, &m.digest);
            let json = serde_json::to_vec(descriptor).map_err(|e| StorageError::backend(format!("encode {key}"), e))?;
            self.put_small(&key, json).await?;
        }
        for tag in &m.tags {
            self.put_small(&keys::tag(repo, tag), m.digest.to_string().into_bytes())
                .await?;
        }
        self.catalog(repo).await
    }

    async fn get_manifest(&self, repo: &str, reference: &Reference) -> Result<Option<StoredManifest>> {
        let Some(digest) = self.resolve(repo, reference).await? else {
            return Ok(None);
        };
        let (revision, blob) = (keys::revision(repo, &digest), keys::blob(&digest));
        let (media_type, body) = futures_util::try_join!(self.read_small(&revision), self.read_small(&blob))?;
        let (Some(media_type), Some(body)) = (media_type, body) else {
            return Ok(None);
        };
        Ok(Some(StoredManifest {
            digest,
            media_type: String::from_utf8_lossy(&media_type).into_owned(),
            body,
        }))
    }

    async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let revision = keys::revision(repo, digest);
        if self.size_of(&revision).await?.is_none() {
            return Ok(false);
        }
        // Tags first, so no tag is left pointing at a deleted revision.
        let wanted = digest.to_string();
        for tag in self.list_names(&keys::tags(repo)).await? {
            let key = keys::tag(repo, &tag);
            if self
                .read_small(&key)
                .await?
                .is_some_and(|t| String::from_utf8_lossy(&t).trim() == wanted)
            {
                self.delete_key(&key).await?;
            }
        }
        if let Some(body) = self.read_small(&keys::blob(digest)).await?
            && let Ok(view) = ManifestView::parse(&body, None)
            && let Some(subject) = view.subject
        {
            self.delete_key(&keys::referrer(repo, &subject.digest, digest)).await?;
        }
        self.delete_key(&revision).await
    }

    async fn delete_tag(&self, repo: &str, tag: &str) -> Result<bool> {
        self.delete_key(&keys::tag(repo, tag)).await
    }

    async fn tags(&self, repo: &str) -> Result<Option<Vec<String>>> {
        if self.size_of(&keys::catalog_entry(repo)).await?.is_none() {
            return Ok(None);
        }
        self.list_names(&keys::tags(repo)).await.map(Some)
    }

    async fn repositories(&self) -> Result<Vec<String>> {
        let entries = match self.op.list_with(keys::CATALOG).recursive(true).await {
            Ok(e) => e,
            Err(e) if is_not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(StorageError::backend("list the catalog", e)),
        };
        let mut out: Vec<String> = entries
            .iter()
            .filter_map(|e| keys::catalog_name(e.path()).map(str::to_owned))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
        let prefix = keys::referrers(repo, subject);
        let mut out = Vec::new();
        for name in self.list_names(&prefix).await? {
            let key = format!("{prefix}{name}");
            let Some(raw) = self.read_small(&key).await? else {
                continue;
            };
            let d: Descriptor =
                serde_json::from_slice(&raw).map_err(|e| StorageError::backend(format!("decode {key}"), e))?;
            out.push(d);
        }
        Ok(out)
    }

    async fn layer_forms(&self, diff_id: &Digest) -> Result<Vec<LayerForm>> {
        self.index_forms(diff_id).await
    }

    async fn record_layers(&self, entries: &[LayerEntry]) -> Result<()> {
        self.index_record(entries).await
    }

    async fn confirm_layer(&self, diff_id: &Digest, blob: &LayerBlob) -> Result<()> {
        self.index_confirm(diff_id, blob).await
    }

    async fn refuse_layer_claim(&self, diff_id: &Digest, blob: &Digest) -> Result<()> {
        self.index_refuse(diff_id, blob).await
    }

    async fn layer_claims(&self, limit: usize) -> Result<Vec<LayerEntry>> {
        self.index_claims(limit).await
    }

    async fn forget_layer(&self, entry: &LayerEntry) -> Result<bool> {
        self.index_forget(entry).await
    }

    async fn prune_layer_index(&self, prune: Prune<'_>) -> Result<usize> {
        self.index_prune(prune).await
    }

    async fn layer_index_complete(&self) -> Result<Option<bool>> {
        self.index_complete().await.map(Some)
    }

    async fn set_layer_index_complete(&self, complete: bool) -> Result<()> {
        self.index_set_complete(complete).await
    }
}
