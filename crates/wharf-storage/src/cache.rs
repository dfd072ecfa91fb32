//! [`CachedStore`]: bounded in-memory caches in front of any [`RegistryStore`] (seed 003's
//! `blobdescriptor: inmemory`, and more). Content addressed by digest is immutable, so it is cached until evicted;
//! tags and links are invalidated by the writes that change them. Misses are not cached.
//!
//! A read that misses fills the cache only if no invalidating write (tag move, delete, unlink, garbage collection)
//! ran while it read the backend, checked with a write epoch before and again after the insert (an insert that
//! raced with an invalidation takes itself back); otherwise a slow read could put back what a write just removed.
//!
//! Garbage collection deletes through the filesystem store directly and tells the cache what went with
//! [`CachedStore::forget_blobs`], [`CachedStore::forget_links`] and [`CachedStore::forget_manifest`] (see `gc.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use moka::sync::Cache;
use wharf_oci::Digest;
use wharf_oci::manifest::Descriptor;

use crate::{
    ByteStream, LayerBlob, LayerEntry, LayerForm, NewManifest, OpenBlob, Prune, Reference, RegistryStore, Result,
    StoredManifest, UploadStatus, Uploads,
};

/// Sizes of the caches.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// Blob descriptors (global and per repository) kept, as entries.
    pub blob_descriptors: u64,
    /// Manifest bytes kept.
    pub manifest_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            blob_descriptors: 100_000,
            manifest_bytes: 64 << 20,
        }
    }
}

pub struct CachedStore<S> {
    inner: S,
    blobs: Cache<Digest, u64>,
    repo_blobs: Cache<(String, Digest), u64>,
    manifests: Cache<(String, Digest), Arc<StoredManifest>>,
    tags: Cache<(String, String), Digest>,
    /// The layer index's answers (only those with forms: a layer unknown now may be pushed any moment).
    layers: Cache<Digest, Arc<Vec<LayerForm>>>,
    /// Bumped before and after every write that invalidates entries.
    epoch: AtomicU64,
}

impl<S: RegistryStore> CachedStore<S> {
    pub fn new(inner: S, config: CacheConfig) -> Self {
        CachedStore {
            inner,
            blobs: Cache::new(config.blob_descriptors),
            repo_blobs: Cache::builder()
                .max_capacity(config.blob_descriptors)
                .support_invalidation_closures()
                .build(),
            manifests: Cache::builder()
                .max_capacity(config.manifest_bytes)
                .weigher(|_, m: &Arc<StoredManifest>| u32::try_from(m.body.len()).unwrap_or(u32::MAX))
                .support_invalidation_closures()
                .build(),
            tags: Cache::builder()
                .max_capacity(config.blob_descriptors)
                .support_invalidation_closures()
                .build(),
            layers: Cache::builder()
                .max_capacity(config.blob_descriptors)
                .support_invalidation_closures()
                .build(),
            epoch: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Inserts what a read found if no invalidation ran since `epoch`; if one ran while inserting, takes the entry
    /// back (it may be stale; a miss is always safe).
    fn fill<K, V>(&self, cache: &Cache<K, V>, key: K, value: V, epoch: u64)
    where
        K: std::hash::Hash + Eq + Send + Sync + Clone + 'static,
        V: Clone + Send + Sync + 'static,
    {
        if epoch != self.epoch() {
            return;
        }
        cache.insert(key.clone(), value);
        if epoch != self.epoch() {
            cache.invalidate(&key);
        }
    }

    /// Forgets blobs deleted behind the cache's back (garbage collection): their descriptors, global and per
    /// repository, and manifests with those digests.
    pub fn forget_blobs(&self, digests: &[Digest]) {
        if digests.is_empty() {
            return;
        }
        self.bump();
        for d in digests {
            self.blobs.invalidate(d);
        }
        let set: Arc<std::collections::HashSet<Digest>> = Arc::new(digests.iter().cloned().collect());
        let s = set.clone();
        // Only fails if closures were not enabled at build time, which `new` does.
        let _ = self.repo_blobs.invalidate_entries_if(move |k, _| s.contains(&k.1));
        let s = set.clone();
        let _ = self.manifests.invalidate_entries_if(move |k, _| s.contains(&k.1));
        let _ = self
            .layers
            .invalidate_entries_if(move |_, forms| forms.iter().any(|f| set.contains(&f.blob.digest)));
        self.bump();
    }

    /// Forgets `repo`'s links to `digests`, removed behind the cache's back.
    pub fn forget_links(&self, repo: &str, digests: &[Digest]) {
        self.bump();
        for d in digests {
            self.repo_blobs.invalidate(&(repo.to_owned(), d.clone()));
        }
        self.bump();
    }

    /// Forgets a manifest revision of `repo` removed behind the cache's back, and any tag cached as pointing at it.
    pub fn forget_manifest(&self, repo: &str, digest: &Digest) {
        self.bump();
        self.manifests.invalidate(&(repo.to_owned(), digest.clone()));
        let (r, d) = (repo.to_owned(), digest.clone());
        let _ = self.tags.invalidate_entries_if(move |k, v| k.0 == r && *v == d);
        self.bump();
    }

    fn remember_manifest(&self, repo: &str, m: &StoredManifest) {
        self.manifests
            .insert((repo.to_owned(), m.digest.clone()), Arc::new(m.clone()));
    }
}

#[async_trait]
impl<S: RegistryStore> Uploads for CachedStore<S> {
    async fn start_upload(&self, repo: &str) -> Result<UploadStatus> {
        self.inner.start_upload(repo).await
    }

    async fn upload_status(&self, repo: &str, id: &str) -> Result<UploadStatus> {
        self.inner.upload_status(repo, id).await
    }

    async fn append_upload(&self, repo: &str, id: &str, start: Option<u64>, body: ByteStream) -> Result<UploadStatus> {
        self.inner.append_upload(repo, id, start, body).await
    }

    async fn commit_upload(&self, repo: &str, id: &str, expected: &Digest) -> Result<u64> {
        let size = self.inner.commit_upload(repo, id, expected).await?;
        self.blobs.insert(expected.clone(), size);
        self.repo_blobs.insert((repo.to_owned(), expected.clone()), size);
        Ok(size)
    }

    async fn cancel_upload(&self, repo: &str, id: &str) -> Result<()> {
        self.inner.cancel_upload(repo, id).await
    }

    async fn put_blob(&self, repo: &str, expected: &Digest, body: ByteStream) -> Result<u64> {
        let size = self.inner.put_blob(repo, expected, body).await?;
        self.blobs.insert(expected.clone(), size);
        self.repo_blobs.insert((repo.to_owned(), expected.clone()), size);
        Ok(size)
    }
}

#[async_trait]
impl<S: RegistryStore> RegistryStore for CachedStore<S> {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        if let Some(size) = self.blobs.get(digest) {
            return Ok(Some(size));
        }
        let epoch = self.epoch();
        let size = self.inner.blob_size(digest).await?;
        if let Some(s) = size {
            self.fill(&self.blobs, digest.clone(), s, epoch);
        }
        Ok(size)
    }

    async fn repo_blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
        let key = (repo.to_owned(), digest.clone());
        if let Some(size) = self.repo_blobs.get(&key) {
            return Ok(Some(size));
        }
        let epoch = self.epoch();
        let size = self.inner.repo_blob_size(repo, digest).await?;
        if let Some(s) = size {
            self.fill(&self.repo_blobs, key, s, epoch);
        }
        Ok(size)
    }

    async fn open_blob(&self, repo: &str, digest: &Digest) -> Result<Option<OpenBlob>> {
        self.inner.open_blob(repo, digest).await
    }

    async fn blob_redirect(&self, repo: &str, digest: &Digest) -> Result<Option<String>> {
        self.inner.blob_redirect(repo, digest).await
    }

    async fn remove_blob(&self, digest: &Digest) -> Result<bool> {
        self.bump();
        let removed = self.inner.remove_blob(digest).await;
        self.blobs.invalidate(digest);
        let d = digest.clone();
        // Only fails if closures were not enabled at build time, which `new` does.
        let _ = self.repo_blobs.invalidate_entries_if(move |k, _| k.1 == d);
        // A manifest's bytes are a blob too: drop only the entries of that digest, not the whole cache.
        let d = digest.clone();
        let _ = self.manifests.invalidate_entries_if(move |k, _| k.1 == d);
        self.bump();
        removed
    }

    async fn link_blob(&self, repo: &str, digest: &Digest) -> Result<()> {
        self.inner.link_blob(repo, digest).await
    }

    async fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        self.bump();
        let removed = self.inner.unlink_blob(repo, digest).await;
        self.repo_blobs.invalidate(&(repo.to_owned(), digest.clone()));
        self.bump();
        removed
    }

    async fn put_manifest(&self, repo: &str, m: NewManifest) -> Result<()> {
        let tags = m.tags.clone();
        let stored = StoredManifest {
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            body: m.body.clone(),
        };
        if !tags.is_empty() {
            self.bump();
        }
        let result = self.inner.put_manifest(repo, m).await;
        if !tags.is_empty() {
            for t in tags {
                self.tags.invalidate(&(repo.to_owned(), t));
            }
            self.bump();
        }
        result?;
        self.remember_manifest(repo, &stored);
        Ok(())
    }

    async fn get_manifest(&self, repo: &str, reference: &Reference) -> Result<Option<StoredManifest>> {
        let digest = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(t) => self.tags.get(&(repo.to_owned(), t.clone())),
        };
        if let Some(d) = digest
            && let Some(m) = self.manifests.get(&(repo.to_owned(), d))
        {
            return Ok(Some((*m).clone()));
        }
        let epoch = self.epoch();
        let found = self.inner.get_manifest(repo, reference).await?;
        if let Some(m) = &found {
            if let Reference::Tag(t) = reference {
                self.fill(&self.tags, (repo.to_owned(), t.clone()), m.digest.clone(), epoch);
            }
            let key = (repo.to_owned(), m.digest.clone());
            self.fill(&self.manifests, key, Arc::new(m.clone()), epoch);
        }
        Ok(found)
    }

    async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<bool> {
        self.bump();
        let removed = self.inner.delete_manifest(repo, digest).await;
        self.manifests.invalidate(&(repo.to_owned(), digest.clone()));
        let (r, d) = (repo.to_owned(), digest.clone());
        // Only fails if closures were not enabled at build time, which `new` does.
        let _ = self.tags.invalidate_entries_if(move |k, v| k.0 == r && *v == d);
        self.bump();
        removed
    }

    async fn delete_tag(&self, repo: &str, tag: &str) -> Result<bool> {
        self.bump();
        let removed = self.inner.delete_tag(repo, tag).await;
        self.tags.invalidate(&(repo.to_owned(), tag.to_owned()));
        self.bump();
        removed
    }

    async fn tags(&self, repo: &str) -> Result<Option<Vec<String>>> {
        self.inner.tags(repo).await
    }

    async fn repositories(&self) -> Result<Vec<String>> {
        self.inner.repositories().await
    }

    async fn referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
        self.inner.referrers(repo, subject).await
    }

    async fn layer_forms(&self, diff_id: &Digest) -> Result<Vec<LayerForm>> {
        if let Some(forms) = self.layers.get(diff_id) {
            return Ok((*forms).clone());
        }
        let epoch = self.epoch();
        let forms = self.inner.layer_forms(diff_id).await?;
        if !forms.is_empty() {
            self.fill(&self.layers, diff_id.clone(), Arc::new(forms.clone()), epoch);
        }
        Ok(forms)
    }

    async fn record_layers(&self, entries: &[LayerEntry]) -> Result<()> {
        self.bump();
        let result = self.inner.record_layers(entries).await;
        for e in entries {
            self.layers.invalidate(&e.diff_id);
        }
        self.bump();
        result
    }

    async fn confirm_layer(&self, diff_id: &Digest, blob: &LayerBlob) -> Result<()> {
        self.bump();
        let result = self.inner.confirm_layer(diff_id, blob).await;
        self.layers.invalidate(diff_id);
        self.bump();
        result
    }

    async fn refuse_layer_claim(&self, diff_id: &Digest, blob: &Digest) -> Result<()> {
        self.inner.refuse_layer_claim(diff_id, blob).await
    }

    async fn layer_claims(&self, limit: usize) -> Result<Vec<LayerEntry>> {
        self.inner.layer_claims(limit).await
    }

    async fn forget_layer(&self, entry: &LayerEntry) -> Result<bool> {
        self.bump();
        let result = self.inner.forget_layer(entry).await;
        self.layers.invalidate(&entry.diff_id);
        self.bump();
        result
    }

    async fn prune_layer_index(&self, prune: Prune<'_>) -> Result<usize> {
        self.bump();
        let result = self.inner.prune_layer_index(prune).await;
        self.layers.invalidate_all();
        self.bump();
        result
    }

    async fn layer_index_complete(&self) -> Result<Option<bool>> {
        self.inner.layer_index_complete().await
    }

    async fn set_layer_index_complete(&self, complete: bool) -> Result<()> {
        self.inner.set_layer_index_complete(complete).await
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::FsStore;

    fn manifest(n: u8) -> NewManifest {
        let body = Bytes::from(format!("{{\"schemaVersion\":2,\"n\":{n}}}"));
        NewManifest {
            digest: Digest::sha256_of(&body),
            media_type: wharf_oci::media::OCI_MANIFEST.into(),
            body,
            tags: vec![format!("t{n}")],
            referrer: None,
        }
    }

    #[tokio::test]
    async fn removing_a_blob_drops_only_its_cached_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let store = CachedStore::new(FsStore::open(dir.path()).unwrap(), CacheConfig::default());
        let (a, b) = (manifest(1), manifest(2));
        let (da, db) = (a.digest.clone(), b.digest.clone());
        store.put_manifest("r", a).await.unwrap();
        store.put_manifest("r", b).await.unwrap();
        assert!(
            store
                .get_manifest("r", &Reference::Digest(da.clone()))
                .await
                .unwrap()
                .is_some()
        );
        assert!(store.remove_blob(&da).await.unwrap());
        assert!(store.get_manifest("r", &Reference::Digest(da)).await.unwrap().is_none());
        // b stays cached: even with its bytes gone from disk, the cache still answers.
        std::fs::remove_file(store.inner().layout().blob(&db)).unwrap();
        assert!(store.get_manifest("r", &Reference::Digest(db)).await.unwrap().is_some());
    }
}
