//! The node's registry store: what the engine-facing API reads (the registry router of `wharf serve`, so the same
//! path grammar, `ns` handling, spec errors, `Range` and `HEAD`). Read-only: every write is refused as `DENIED`.
//!
//! Repository names are `<upstream>/<repository>` (the router's namespaces put them there from containerd's `ns`
//! or, for Docker's `registry-mirrors`, the default upstream). Blobs are swarm tasks. Manifests come from the
//! upstream and are kept in memory (bounded by bytes): by digest for good, by tag revalidated with a `HEAD` once per
//! `NodeConfig::tag_ttl` and served stale when the upstream is down, so an engine can start a new pull of an image this node
//! has served before while the origin is out, its blobs coming from the swarm.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use wharf_oci::Digest;
use wharf_oci::manifest::Descriptor;
use wharf_remote::{RemoteError, Upstream};
use wharf_storage::{
    BlobSource, ByteStream, NewManifest, OpenBlob, Reference, RegistryStore, Result, StorageError, StoredManifest,
    UploadStatus, Uploads,
};

use super::Node;
use super::task::Task;
use crate::P2pError;

/// Bytes of manifests kept in memory.
const MANIFEST_CACHE_BYTES: u64 = 64 << 20;
/// Tags remembered.
const TAGS_KEPT: u64 = 100_000;

pub struct SwarmStore {
    node: Arc<Node>,
    manifests: moka::sync::Cache<Digest, StoredManifest>,
    /// `(name, tag)` → the digest it pointed at and when the upstream last said so.
    tags: moka::sync::Cache<(String, String), (Digest, Instant)>,
}

impl SwarmStore {
    pub fn new(node: Arc<Node>) -> SwarmStore {
        SwarmStore {
            node,
            manifests: moka::sync::Cache::builder()
                .max_capacity(MANIFEST_CACHE_BYTES)
                .weigher(|_, m: &StoredManifest| u32::try_from(m.body.len()).unwrap_or(u32::MAX))
                .build(),
            tags: moka::sync::Cache::builder().max_capacity(TAGS_KEPT).build(),
        }
    }

    fn read_only(name: &str) -> StorageError {
        StorageError::ReadOnly {
            repo: name.to_owned(),
            reason: "a P2P node serves its upstreams read-only".into(),
        }
    }

    fn keep(&self, m: wharf_remote::Manifest) -> StoredManifest {
        let stored = StoredManifest {
            digest: m.digest,
            media_type: m.media_type,
            body: m.bytes,
        };
        self.manifests.insert(stored.digest.clone(), stored.clone());
        stored
    }

    async fn by_digest(&self, up: &Upstream, repo: &str, digest: &Digest) -> Result<Option<StoredManifest>> {
        if let Some(m) = self.manifests.get(digest) {
            return Ok(Some(m));
        }
        match up.manifest(repo, &digest.to_string(), Some(digest)).await {
            Ok(Some(m)) => Ok(Some(self.keep(m))),
            Ok(None) => Ok(None),
            Err(e) => Err(upstream_err(up, &e)),
        }
    }

    async fn by_tag(&self, name: &str, up: &Upstream, repo: &str, tag: &str) -> Result<Option<StoredManifest>> {
        let key = (name.to_owned(), tag.to_owned());
        let known = self
            .tags
            .get(&key)
            .and_then(|(d, checked)| Some((self.manifests.get(&d)?, checked)));
        if let Some((m, checked)) = &known
            && checked.elapsed() < self.node.config.tag_ttl
        {
            return Ok(Some(m.clone()));
        }
        let stale_or = |e: RemoteError| match &known {
            Some((m, _)) if e.is_outage() => {
                tracing::warn!(repository = name, tag, upstream = up.url(), error = %e, digest = %m.digest,
                    "upstream unavailable; serving the last known manifest");
                metrics::counter!("wharf_p2p_stale_manifests_total").increment(1);
                Ok(Some(m.clone()))
            }
            _ => Err(upstream_err(up, &e)),
        };
        let digest = match up.resolve_tag(repo, tag).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                self.tags.invalidate(&key);
                return Ok(None);
            }
            Err(e) => return stale_or(e),
        };
        if let Some((m, _)) = &known
            && m.digest == digest
        {
            self.tags.insert(key, (digest, Instant::now()));
            return Ok(Some(m.clone()));
        }
        // By digest, so what is kept is exactly what the tag resolved to.
        match up.manifest(repo, &digest.to_string(), Some(&digest)).await {
            Ok(Some(m)) => {
                let m = self.keep(m);
                self.tags.insert(key, (digest, Instant::now()));
                Ok(Some(m))
            }
            Ok(None) => Ok(None),
            Err(e) => stale_or(e),
        }
    }
}

fn upstream_err(up: &Upstream, e: &dyn std::fmt::Display) -> StorageError {
    StorageError::Remote {
        registry: format!("{} ({})", up.config.name, up.url()),
        reason: e.to_string(),
    }
}

fn p2p_err(up: &Upstream, e: P2pError) -> StorageError {
    upstream_err(up, &e)
}

/// A blob being (or already) downloaded through the swarm.
struct TaskBlob(Arc<Task>);

#[async_trait]
impl BlobSource for TaskBlob {
    async fn read(self: Box<Self>, range: Option<(u64, u64)>) -> Result<ByteStream> {
        let (start, end) = range.unwrap_or((0, self.0.size));
        Ok(Box::pin(super::stream::stream_range(self.0, start, end)))
    }
}

#[async_trait]
impl Uploads for SwarmStore {
    async fn start_upload(&self, name: &str) -> Result<UploadStatus> {
        Err(Self::read_only(name))
    }

    async fn upload_status(&self, _name: &str, id: &str) -> Result<UploadStatus> {
        Err(StorageError::UploadUnknown(id.to_owned()))
    }

    async fn append_upload(
        &self,
        _name: &str,
        id: &str,
        _start: Option<u64>,
        _body: ByteStream,
    ) -> Result<UploadStatus> {
        Err(StorageError::UploadUnknown(id.to_owned()))
    }

    async fn commit_upload(&self, _name: &str, id: &str, _expected: &Digest) -> Result<u64> {
        Err(StorageError::UploadUnknown(id.to_owned()))
    }

    async fn cancel_upload(&self, _name: &str, id: &str) -> Result<()> {
        Err(StorageError::UploadUnknown(id.to_owned()))
    }

    async fn put_blob(&self, name: &str, _expected: &Digest, _body: ByteStream) -> Result<u64> {
        Err(Self::read_only(name))
    }
}

#[async_trait]
impl RegistryStore for SwarmStore {
    /// Nothing is mountable from a node.
    async fn blob_size(&self, _digest: &Digest) -> Result<Option<u64>> {
        Ok(None)
    }

    async fn repo_blob_size(&self, name: &str, digest: &Digest) -> Result<Option<u64>> {
        let Some((up, repo)) = self.node.route(name) else {
            return Ok(None);
        };
        self.node
            .blob_size(&up, &repo, digest)
            .await
            .map_err(|e| p2p_err(&up, e))
    }

    async fn open_blob(&self, name: &str, digest: &Digest) -> Result<Option<OpenBlob>> {
        let Some((up, repo)) = self.node.route(name) else {
            return Ok(None);
        };
        match self.node.blob_task(up.clone(), &repo, digest).await {
            Ok(Some(task)) => Ok(Some(OpenBlob {
                size: task.size,
                source: Box::new(TaskBlob(task)),
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(p2p_err(&up, e)),
        }
    }

    async fn remove_blob(&self, _digest: &Digest) -> Result<bool> {
        Ok(false)
    }

    async fn link_blob(&self, name: &str, _digest: &Digest) -> Result<()> {
        Err(Self::read_only(name))
    }

    async fn unlink_blob(&self, name: &str, _digest: &Digest) -> Result<bool> {
        Err(Self::read_only(name))
    }

    async fn put_manifest(&self, name: &str, _manifest: NewManifest) -> Result<()> {
        Err(Self::read_only(name))
    }

    async fn get_manifest(&self, name: &str, reference: &Reference) -> Result<Option<StoredManifest>> {
        let Some((up, repo)) = self.node.route(name) else {
            return Ok(None);
        };
        match reference {
            Reference::Digest(d) => self.by_digest(&up, &repo, d).await,
            Reference::Tag(t) => self.by_tag(name, &up, &repo, t).await,
        }
    }

    async fn delete_manifest(&self, name: &str, _digest: &Digest) -> Result<bool> {
        Err(Self::read_only(name))
    }

    async fn delete_tag(&self, name: &str, _tag: &str) -> Result<bool> {
        Err(Self::read_only(name))
    }

    async fn tags(&self, name: &str) -> Result<Option<Vec<String>>> {
        let Some((up, repo)) = self.node.route(name) else {
            return Ok(None);
        };
        up.tags(&repo).await.map_err(|e| upstream_err(&up, &e))
    }

    async fn repositories(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    async fn referrers(&self, _name: &str, _subject: &Digest) -> Result<Vec<Descriptor>> {
        Ok(Vec::new())
    }
}
