//! [`MirrorStore`]: a [`RegistryStore`] decorator. Repositories whose first component names an upstream
//! (`docker.io/library/alpine`) are served from the mirror's own cache, filled from that upstream on demand;
//! every other repository goes to the local store untouched. The HTTP layer never knows it is proxying.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::StreamExt;
use wharf_oci::Digest;
use wharf_oci::manifest::Descriptor;
use wharf_storage::{
    BlobSource, ByteStream, CacheConfig, CachedStore, FsStore, LayerBlob, LayerEntry, LayerForm, NewManifest, OpenBlob,
    Prune, Reference, RegistryStore, Result, StorageError, StoredManifest, UploadStatus, Uploads,
};

use crate::config::MirrorConfig;
use crate::fetch::{Commit, Fetches};
use crate::lru::{Lru, Serving};
use wharf_remote::{RemoteError, Upstream, canonical_host, upstream_repository};

pub struct MirrorStore {
    local: Arc<dyn RegistryStore>,
    cache: Arc<CachedStore<FsStore>>,
    upstreams: Vec<Arc<Upstream>>,
    fetches: Arc<Fetches>,
    /// Tags checked against upstream within the TTL.
    fresh: moka::sync::Cache<(String, String), Digest>,
    /// One revalidation or fetch per manifest at a time.
    manifest_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    lru: Arc<Lru>,
}

/// Whether upstream repository `repo` has blob `digest` (a HEAD).
async fn confirm(up: &Upstream, repo: &str, digest: &Digest) -> Result<bool> {
    let has = up
        .blob_size(repo, digest)
        .await
        .map_err(|e| upstream_err(up, e))?
        .is_some();
    if !has {
        metrics::counter!("wharf_mirror_unconfirmed_total").increment(1);
        tracing::info!(repository = repo, %digest, upstream = %up.config.name,
            "a blob cached for another repository is not in this one upstream; not served");
    }
    Ok(has)
}

fn upstream_err(u: &Upstream, e: RemoteError) -> StorageError {
    StorageError::Remote {
        registry: format!("{} ({})", u.config.name, u.url()),
        reason: e.to_string(),
    }
}

impl MirrorStore {
    pub fn new(local: Arc<dyn RegistryStore>, config: MirrorConfig) -> Result<Self> {
        let cache_root = config.root.join("cache");
        let spool = config.root.join("spool");
        std::fs::create_dir_all(&spool).map_err(|e| StorageError::Io {
            path: spool.clone(),
            source: e,
        })?;
        // Spool files left by a previous run were never verified: drop them.
        if let Ok(rd) = std::fs::read_dir(&spool) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let cache = Arc::new(CachedStore::new(FsStore::open(&cache_root)?, CacheConfig::default()));
        let mut upstreams = Vec::new();
        for u in &config.upstreams {
            let up = Upstream::new(u.clone(), config.timeout).map_err(|e| StorageError::Remote {
                registry: u.name.clone(),
                reason: e.to_string(),
            })?;
            upstreams.push(Arc::new(up));
        }
        let lru = Arc::new(Lru::new(config.max_bytes));
        scan_cache(&cache_root.join("blobs"), &lru);
        Ok(MirrorStore {
            local,
            cache,
            upstreams,
            fetches: Arc::new(Fetches::new(spool)),
            fresh: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(config.tag_ttl)
                .build(),
            manifest_locks: Mutex::new(HashMap::new()),
            lru,
        })
    }

    /// The upstream a repository name mirrors, and the repository name to ask it for.
    fn route(&self, name: &str) -> Option<(Arc<Upstream>, String)> {
        let (first, rest) = name.split_once('/')?;
        let u = self.upstreams.iter().find(|u| u.config.name == canonical_host(first))?;
        Some((u.clone(), upstream_repository(&u.config.name, rest)))
    }

    fn read_only(&self, name: &str, u: &Upstream) -> StorageError {
        StorageError::ReadOnly {
            repo: name.to_owned(),
            reason: format!("it is a read-only mirror of {}; push to another repository", u.url()),
        }
    }

    fn lock_for(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.manifest_locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(key).or_default().clone()
    }

    fn unlock(&self, key: &str) {
        let mut m = self.manifest_locks.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(key).is_some_and(|l| Arc::strong_count(l) == 1) {
            m.remove(key);
        }
    }

    async fn cache_manifest(
        &self,
        name: &str,
        tag: Option<String>,
        m: wharf_remote::Manifest,
    ) -> Result<StoredManifest> {
        let stored = StoredManifest {
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            body: m.bytes.clone(),
        };
        self.lru.touch(&m.digest, m.bytes.len() as u64);
        self.cache
            .put_manifest(
                name,
                NewManifest {
                    digest: m.digest,
                    media_type: m.media_type,
                    body: m.bytes,
                    tags: tag.into_iter().collect(),
                    referrer: None,
                },
            )
            .await?;
        self.evict().await;
        Ok(stored)
    }

    async fn mirrored_manifest(&self, name: &str, reference: &Reference) -> Result<Option<StoredManifest>> {
        let Some((up, repo)) = self.route(name) else {
            return Ok(None);
        };
        let key = format!("{name}@{reference:?}");
        let lock = self.lock_for(key.clone());
        let result = {
            let _guard = lock.lock().await;
            self.revalidate(name, reference, &up, &repo).await
        };
        drop(lock);
        self.unlock(&key);
        result
    }

    async fn revalidate(
        &self,
        name: &str,
        reference: &Reference,
        up: &Upstream,
        repo: &str,
    ) -> Result<Option<StoredManifest>> {
        let cached = self.cache.get_manifest(name, reference).await?;
        match reference {
            Reference::Digest(d) => {
                if let Some(m) = cached {
                    hit("manifest");
                    return Ok(Some(m));
                }
                miss("manifest");
                match up.manifest(repo, &d.to_string(), Some(d)).await {
                    Ok(Some(m)) => Ok(Some(self.cache_manifest(name, None, m).await?)),
                    Ok(None) => Ok(None),
                    Err(e) => Err(upstream_err(up, e)),
                }
            }
            Reference::Tag(tag) => {
                let fresh_key = (name.to_owned(), tag.clone());
                if let Some(m) = &cached
                    && self.fresh.get(&fresh_key).as_ref() == Some(&m.digest)
                {
                    hit("manifest");
                    return Ok(cached);
                }
                match up.resolve_tag(repo, tag).await {
                    Ok(Some(d)) => {
                        if let Some(m) = &cached
                            && m.digest == d
                        {
                            hit("manifest");
                            self.fresh.insert(fresh_key, d);
                            return Ok(cached);
                        }
                        miss("manifest");
                        // By digest, so what we store is exactly what the tag resolved to.
                        match up.manifest(repo, &d.to_string(), Some(&d)).await {
                            Ok(Some(m)) => {
                                let stored = self.cache_manifest(name, Some(tag.clone()), m).await?;
                                self.fresh.insert(fresh_key, d);
                                Ok(Some(stored))
                            }
                            Ok(None) => Ok(None),
                            Err(e) => self.stale_or(name, tag, cached, up, e),
                        }
                    }
                    Ok(None) => Ok(None),
                    Err(e) => self.stale_or(name, tag, cached, up, e),
                }
            }
        }
    }

    /// Upstream failed: serve the last known manifest if the failure is an outage and we have one.
    fn stale_or(
        &self,
        name: &str,
        tag: &str,
        cached: Option<StoredManifest>,
        up: &Upstream,
        e: RemoteError,
    ) -> Result<Option<StoredManifest>> {
        match cached {
            Some(m) if e.is_outage() => {
                tracing::warn!(repository = name, tag, upstream = up.url(), error = %e, digest = %m.digest,
                    "upstream unavailable; serving the last known manifest");
                metrics::counter!("wharf_mirror_stale_serves_total").increment(1);
                Ok(Some(m))
            }
            _ => Err(upstream_err(up, e)),
        }
    }

    async fn evict(&self) {
        evict(&self.cache, &self.lru).await;
    }

    async fn mirrored_blob(
        &self,
        name: &str,
        digest: &Digest,
        up: Arc<Upstream>,
        repo: String,
    ) -> Result<Option<OpenBlob>> {
        if let Some(b) = self.cache.open_blob(name, digest).await? {
            hit("blob");
            self.lru.touch(digest, b.size);
            return Ok(Some(self.counted(digest, b)));
        }
        // Content addressed: bytes cached (or on their way) for another mirrored repository are the same bytes. But a
        // mirrored name is no capability to read what another repository pulled: served only once this repository's
        // upstream says it has the blob. The link then records that, so it is asked once per repository and digest.
        let mut confirmed = false;
        if self.cache.blob_size(digest).await?.is_some() || self.fetches.size_in_flight(digest).is_some() {
            if !confirm(&up, &repo, digest).await? {
                return Ok(None);
            }
            confirmed = true;
        }
        if confirmed && self.cache.blob_size(digest).await?.is_some() {
            self.cache.link_blob(name, digest).await?;
            if let Some(b) = self.cache.open_blob(name, digest).await? {
                hit("blob");
                self.lru.touch(digest, b.size);
                return Ok(Some(self.counted(digest, b)));
            }
        }
        let cache = self.cache.clone();
        let lru = self.lru.clone();
        let (n, d) = (name.to_owned(), digest.clone());
        let commit: Commit = Box::new(move |spool: PathBuf| {
            Box::pin(async move {
                let size = cache
                    .inner()
                    .import_verified(&n, &d, &spool)
                    .await
                    .map_err(|e| e.to_string())?;
                lru.touch(&d, size);
                evict(&cache, &lru).await;
                Ok(())
            })
        });
        let blob_file = self.cache.inner().layout().blob(digest);
        let Some((fetch, coalesced)) =
            self.fetches
                .join(up.clone(), repo.clone(), digest, || blob_file.exists(), commit)
        else {
            // Finished between our cache miss and now: link it for this repository and serve it.
            if !confirmed && !confirm(&up, &repo, digest).await? {
                return Ok(None);
            }
            self.cache.link_blob(name, digest).await?;
            return match self.cache.open_blob(name, digest).await? {
                Some(b) => {
                    hit("blob");
                    Ok(Some(self.counted(digest, b)))
                }
                None => Err(StorageError::BlobUnknown(digest.clone())),
            };
        };
        // Joined a fetch started (since the check above) for another repository: this one's upstream must say so too.
        if coalesced && !confirmed && !confirm(&up, &repo, digest).await? {
            return Ok(None);
        }
        if coalesced {
            metrics::counter!("wharf_mirror_coalesced_total").increment(1);
        } else {
            miss("blob");
        }
        let Some(size) = fetch.wait_size().await? else {
            return Ok(None);
        };
        let source = match fetch.source() {
            Ok(s) => Box::new(s) as Box<dyn BlobSource>,
            // The spool was already renamed into the cache: once the fetch reports Done, the blob is there and
            // linked (the rename comes before the link, so looking earlier could miss it).
            Err(_) => {
                fetch.wait_done().await?;
                match self.cache.open_blob(name, digest).await? {
                    Some(b) => b.source,
                    None => return Err(StorageError::BlobUnknown(digest.clone())),
                }
            }
        };
        Ok(Some(self.counted(digest, OpenBlob { size, source })))
    }

    /// Counts served bytes and keeps the blob out of eviction while it streams.
    fn counted(&self, digest: &Digest, blob: OpenBlob) -> OpenBlob {
        OpenBlob {
            size: blob.size,
            source: Box::new(Counted {
                inner: blob.source,
                serving: self.lru.serving(digest),
            }),
        }
    }
}

/// Removes least recently used blobs until the cache is under its limit.
async fn evict(cache: &CachedStore<FsStore>, lru: &Lru) {
    let victims = lru.victims();
    metrics::gauge!("wharf_mirror_cache_bytes").set(lru.total() as f64);
    for d in victims {
        tracing::info!(digest = %d, "evicting from the mirror cache");
        metrics::counter!("wharf_mirror_evictions_total").increment(1);
        if let Err(e) = cache.remove_blob(&d).await {
            tracing::warn!(digest = %d, error = %e, "eviction failed");
        }
    }
}

fn hit(kind: &'static str) {
    metrics::counter!("wharf_mirror_hits_total", "kind" => kind).increment(1);
}

fn miss(kind: &'static str) {
    metrics::counter!("wharf_mirror_misses_total", "kind" => kind).increment(1);
}

/// Fills the LRU from the blobs already in the cache, oldest modification first.
fn scan_cache(blobs: &std::path::Path, lru: &Lru) {
    let mut found = Vec::new();
    for alg in std::fs::read_dir(blobs).into_iter().flatten().flatten() {
        for prefix in std::fs::read_dir(alg.path()).into_iter().flatten().flatten() {
            for blob in std::fs::read_dir(prefix.path()).into_iter().flatten().flatten() {
                let (Ok(meta), Some(name)) = (blob.metadata(), blob.file_name().to_str().map(str::to_owned)) else {
                    continue;
                };
                let alg = alg.file_name().to_string_lossy().into_owned();
                if let Ok(d) = format!("{alg}:{name}").parse::<Digest>() {
                    found.push((meta.modified().ok(), d, meta.len()));
                }
            }
        }
    }
    found.sort_by_key(|f| f.0);
    for (_, d, size) in found {
        lru.touch(&d, size);
    }
}

struct Counted {
    inner: Box<dyn BlobSource>,
    serving: Serving,
}

#[async_trait]
impl BlobSource for Counted {
    async fn read(self: Box<Self>, range: Option<(u64, u64)>) -> Result<ByteStream> {
        let Counted { inner, serving } = *self;
        let stream = inner.read(range).await?;
        Ok(Box::pin(stream.map(move |item| {
            let _keep = &serving;
            if let Ok(b) = &item {
                metrics::counter!("wharf_mirror_served_bytes_total").increment(b.len() as u64);
            }
            item
        })))
    }
}

#[async_trait]
impl Uploads for MirrorStore {
    async fn start_upload(&self, repo: &str) -> Result<UploadStatus> {
        match self.route(repo) {
            Some((up, _)) => Err(self.read_only(repo, &up)),
            None => self.local.start_upload(repo).await,
        }
    }

    async fn upload_status(&self, repo: &str, id: &str) -> Result<UploadStatus> {
        self.local.upload_status(repo, id).await
    }

    async fn append_upload(&self, repo: &str, id: &str, start: Option<u64>, body: ByteStream) -> Result<UploadStatus> {
        self.local.append_upload(repo, id, start, body).await
    }

    async fn commit_upload(&self, repo: &str, id: &str, expected: &Digest) -> Result<u64> {
        self.local.commit_upload(repo, id, expected).await
    }

    async fn cancel_upload(&self, repo: &str, id: &str) -> Result<()> {
        self.local.cancel_upload(repo, id).await
    }

    async fn put_blob(&self, repo: &str, expected: &Digest, body: ByteStream) -> Result<u64> {
        match self.route(repo) {
            Some((up, _)) => Err(self.read_only(repo, &up)),
            None => self.local.put_blob(repo, expected, body).await,
        }
    }
}

#[async_trait]
impl RegistryStore for MirrorStore {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        self.local.blob_size(digest).await
    }

    async fn repo_blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        let Some((up, remote)) = self.route(repo) else {
            return self.local.repo_blob_size(repo, digest).await;
        };
        if let Some(s) = self.cache.repo_blob_size(repo, digest).await? {
            return Ok(Some(s));
        }
        // (Not the size of a fetch in flight for another repository: whether this one has the blob is the upstream's
        // to say.)
        up.blob_size(&remote, digest).await.map_err(|e| upstream_err(&up, e))
    }

    async fn open_blob(&self, repo: &str, digest: &Digest) -> Result<Option<OpenBlob>> {
        match self.route(repo) {
            Some((up, remote)) => self.mirrored_blob(repo, digest, up, remote).await,
            None => self.local.open_blob(repo, digest).await,
        }
    }

    async fn blob_redirect(&self, repo: &str, digest: &Digest) -> Result<Option<String>> {
        match self.route(repo) {
            Some(_) => Ok(None),
            None => self.local.blob_redirect(repo, digest).await,
        }
    }

    async fn remove_blob(&self, digest: &Digest) -> Result<bool> {
        self.local.remove_blob(digest).await
    }

    async fn link_blob(&self, repo: &str, digest: &Digest) -> Result<()> {
        if let Some((up, _)) = self.route(repo) {
            return Err(self.read_only(repo, &up));
        }
        // Mounting from a mirrored repository into a local one copies the bytes into the local store.
        if self.local.blob_size(digest).await?.is_none()
            && let Some(size) = self.cache.blob_size(digest).await?
        {
            let mirrored = self.cache.inner().layout().blob(digest);
            let file = tokio::fs::File::open(&mirrored).await.map_err(|e| StorageError::Io {
                path: mirrored.clone(),
                source: e,
            })?;
            let stream: ByteStream = Box::pin(tokio_util_stream(file));
            let stored = self.local.put_blob(repo, digest, stream).await?;
            debug_assert_eq!(stored, size);
            return Ok(());
        }
        self.local.link_blob(repo, digest).await
    }

    async fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        match self.route(repo) {
            Some((up, _)) => Err(self.read_only(repo, &up)),
            None => self.local.unlink_blob(repo, digest).await,
        }
    }

    async fn put_manifest(&self, repo: &str, manifest: NewManifest) -> Result<()> {
        match self.route(repo) {
            Some((up, _)) => Err(self.read_only(repo, &up)),
            None => self.local.put_manifest(repo, manifest).await,
        }
    }

    async fn get_manifest(&self, repo: &str, reference: &Reference) -> Result<Option<StoredManifest>> {
        if self.route(repo).is_some() {
            return self.mirrored_manifest(repo, reference).await;
        }
        self.local.get_manifest(repo, reference).await
    }

    async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<bool> {
        match self.route(repo) {
            Some((up, _)) => Err(self.read_only(repo, &up)),
            None => self.local.delete_manifest(repo, digest).await,
        }
    }

    async fn delete_tag(&self, repo: &str, tag: &str) -> Result<bool> {
        match self.route(repo) {
            Some((up, _)) => Err(self.read_only(repo, &up)),
            None => self.local.delete_tag(repo, tag).await,
        }
    }

    async fn tags(&self, repo: &str) -> Result<Option<Vec<String>>> {
        let Some((up, remote)) = self.route(repo) else {
            return self.local.tags(repo).await;
        };
        match up.tags(&remote).await {
            Ok(t) => Ok(t),
            Err(e) if e.is_outage() => self.cache.tags(repo).await,
            Err(e) => Err(upstream_err(&up, e)),
        }
    }

    async fn repositories(&self) -> Result<Vec<String>> {
        let mut all = self.local.repositories().await?;
        all.extend(self.cache.repositories().await?);
        all.sort();
        all.dedup();
        Ok(all)
    }

    async fn referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
        match self.route(repo) {
            Some(_) => self.cache.referrers(repo, subject).await,
            None => self.local.referrers(repo, subject).await,
        }
    }

    // The layer index is the local registry's: mirrored repositories are not indexed (their manifests live upstream).
    async fn layer_forms(&self, diff_id: &Digest) -> Result<Vec<LayerForm>> {
        self.local.layer_forms(diff_id).await
    }

    async fn record_layers(&self, entries: &[LayerEntry]) -> Result<()> {
        self.local.record_layers(entries).await
    }

    async fn confirm_layer(&self, diff_id: &Digest, blob: &LayerBlob) -> Result<()> {
        self.local.confirm_layer(diff_id, blob).await
    }

    async fn refuse_layer_claim(&self, diff_id: &Digest, blob: &Digest) -> Result<()> {
        self.local.refuse_layer_claim(diff_id, blob).await
    }

    async fn layer_claims(&self, limit: usize) -> Result<Vec<LayerEntry>> {
        self.local.layer_claims(limit).await
    }

    async fn forget_layer(&self, entry: &LayerEntry) -> Result<bool> {
        self.local.forget_layer(entry).await
    }

    async fn prune_layer_index(&self, prune: Prune<'_>) -> Result<usize> {
        self.local.prune_layer_index(prune).await
    }

    async fn layer_index_complete(&self) -> Result<Option<bool>> {
        self.local.layer_index_complete().await
    }

    async fn set_layer_index_complete(&self, complete: bool) -> Result<()> {
        self.local.set_layer_index_complete(complete).await
    }
}

/// A file as a byte stream.
fn tokio_util_stream(file: tokio::fs::File) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}
