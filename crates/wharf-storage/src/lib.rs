/*!
Registry storage for wharf: content-addressed blobs stored once across all repositories, per-repository links,
tags, referrers and resumable upload sessions, behind one trait, [`RegistryStore`].

- [`FsStore`] is the embedded default: a directory tree laid out in [`paths`]. Every byte that enters it is hashed
  on the way in; a blob becomes visible only after its digest matches and its data is durable (fsync, atomic
  rename). Upload sessions are on disk with their hasher state, so they survive a restart.
- [`CachedStore`] wraps any store with bounded in-memory caches (blob descriptors, manifests, tags) so repeated
  HEAD/GET requests do not touch the backend.
- [`gc`] collects garbage in an [`FsStore`] while it serves: blobs no kept manifest references, past a grace
  period, and stale upload sessions.

- [`object::ObjectStore`] keeps the same layout in a bucket (S3-compatible, Azure Blob, GCS, Aliyun OSS) through
  OpenDAL, with upload sessions in the bucket or in Redis ([`redis_meta`]) so replicas can share them.

The HTTP layer only sees the trait.
*/

mod atomic;
mod cache;
mod error;
mod fs;
pub mod gc;
pub mod layer_index;
pub mod object;
pub mod paths;
pub mod redis_meta;
pub mod stack;

use std::io;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use wharf_oci::Digest;
use wharf_oci::manifest::Descriptor;

pub use cache::{CacheConfig, CachedStore};
pub use error::StorageError;
pub use fs::FsStore;
pub use layer_index::{LayerBlob, LayerEntry, LayerForm, Prune};
pub use redis_meta::{RedisCache, RedisCacheConfig, RedisMeta, RedisOptions, RedisSessions};

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A stream of bytes going into or out of storage.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

/// A blob opened for reading.
pub struct OpenBlob {
    pub size: u64,
    pub source: Box<dyn BlobSource>,
}

/// Where an opened blob's bytes come from (a file, an object, a fetch still in progress).
#[async_trait]
pub trait BlobSource: Send + Sync {
    /// The bytes of the blob, or of `range` (`start..end`, end exclusive) of it.
    async fn read(self: Box<Self>, range: Option<(u64, u64)>) -> Result<ByteStream>;
}

/// Where an upload session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    pub id: String,
    /// Bytes received and durably stored so far.
    pub offset: u64,
}

/// A manifest as stored: its bytes exactly as pushed and the media type to serve them with.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// How a manifest is addressed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

/// A manifest to store.
#[derive(Debug, Clone)]
pub struct NewManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
    /// Tags to point at it: the one it was pushed by, or those of `?tag=` parameters on a push by digest.
    pub tags: Vec<String>,
    /// Its `subject` and its own descriptor for the subject's referrers list.
    pub referrer: Option<(Digest, Descriptor)>,
}

/// Blob uploads: sessions that resume, and whole blobs in one request. A blob becomes visible (linked into its
/// repository) only once its bytes matched the digest the client declared.
#[async_trait]
pub trait Uploads: Send + Sync {
    /// A new session in `repo`.
    async fn start_upload(&self, repo: &str) -> Result<UploadStatus>;
    async fn upload_status(&self, repo: &str, id: &str) -> Result<UploadStatus>;
    /// Appends `body` to an upload. With `start`, the chunk must begin exactly at the current offset. Bytes that
    /// arrived before the body broke off are kept, so the client can resume from [`Uploads::upload_status`].
    async fn append_upload(&self, repo: &str, id: &str, start: Option<u64>, body: ByteStream) -> Result<UploadStatus>;
    /// Verifies the upload against `expected` and, if it matches, makes it a blob linked into `repo`. Returns the
    /// blob's size. On a mismatch the session is discarded and nothing is stored.
    async fn commit_upload(&self, repo: &str, id: &str, expected: &Digest) -> Result<u64>;
    async fn cancel_upload(&self, repo: &str, id: &str) -> Result<()>;
    /// A whole blob in one request, its digest known up front (`POST ?digest=`): verified and committed at once.
    async fn put_blob(&self, repo: &str, expected: &Digest, body: ByteStream) -> Result<u64>;
}

/// Registry-level storage. Implementations must make every write atomic: a reader sees the old state or the new,
/// never a half-written blob, link or tag.
#[async_trait]
pub trait RegistryStore: Uploads + Send + Sync + 'static {
    /// Size of a blob anywhere in the store (for cross-repository mounts and dedup).
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>>;
    /// Size of a blob that `repo` links to; `None` if the repository has no such blob.
    async fn repo_blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>>;
    /// Opens a blob that `repo` links to, for reading; `None` if the repository has no such blob. The size is known
    /// before any byte is read, so the caller can answer `Range` requests.
    async fn open_blob(&self, repo: &str, digest: &Digest) -> Result<Option<OpenBlob>>;
    /// Where a GET of a blob `repo` links to may be redirected instead of streamed (a presigned object-store URL),
    /// if this store offers one. Stores that serve bytes themselves answer `None`.
    async fn blob_redirect(&self, _repo: &str, _digest: &Digest) -> Result<Option<String>> {
        Ok(None)
    }
    /// Deletes a blob's bytes from the whole store (garbage collection, cache eviction). False if absent.
    async fn remove_blob(&self, digest: &Digest) -> Result<bool>;
    /// Makes an existing blob part of `repo` (a cross-repository mount).
    async fn link_blob(&self, repo: &str, digest: &Digest) -> Result<()>;
    /// Removes `repo`'s link to a blob; the bytes stay until garbage collection. False if there was no link.
    async fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<bool>;

    async fn put_manifest(&self, repo: &str, manifest: NewManifest) -> Result<()>;
    async fn get_manifest(&self, repo: &str, reference: &Reference) -> Result<Option<StoredManifest>>;
    /// Deletes a manifest revision, every tag that points at it and its referrers entry. False if absent.
    async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<bool>;
    /// Deletes a tag (not the manifest). False if absent.
    async fn delete_tag(&self, repo: &str, tag: &str) -> Result<bool>;
    /// Tags of `repo`, sorted; `None` if the repository does not exist.
    async fn tags(&self, repo: &str) -> Result<Option<Vec<String>>>;
    /// Every repository name, sorted.
    async fn repositories(&self) -> Result<Vec<String>>;
    /// Descriptors of the manifests in `repo` whose subject is `subject`.
    async fn referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<Descriptor>>;

    /// The layer index ([`layer_index`]): the compressed forms recorded for the layer `diff_id`, at most
    /// [`layer_index::MAX_FORMS`] with at most [`layer_index::MAX_REPOS`] repositories each. A hint: the caller
    /// checks a repository still links a blob before it relies on it. Stores without an index answer none.
    async fn layer_forms(&self, _diff_id: &Digest) -> Result<Vec<LayerForm>> {
        Ok(Vec::new())
    }
    /// Records facts in the layer index (idempotent): a form not checked yet as a claim, which
    /// [`RegistryStore::layer_forms`] does not answer until [`RegistryStore::confirm_layer`]. Stores without an index
    /// ignore them.
    async fn record_layers(&self, _entries: &[LayerEntry]) -> Result<()> {
        Ok(())
    }
    /// A claim checked: the blob decompresses to the layer `diff_id`; its form is answered from now on.
    async fn confirm_layer(&self, _diff_id: &Digest, _blob: &LayerBlob) -> Result<()> {
        Ok(())
    }
    /// A claim found false: the form goes (unless a check confirmed it before).
    async fn refuse_layer_claim(&self, _diff_id: &Digest, _blob: &Digest) -> Result<()> {
        Ok(())
    }
    /// Claims not checked yet, each with a repository that links the blob, at most `limit`.
    async fn layer_claims(&self, _limit: usize) -> Result<Vec<LayerEntry>> {
        Ok(Vec::new())
    }
    /// Removes one fact from the layer index (found stale). False if it was not there.
    async fn forget_layer(&self, _entry: &LayerEntry) -> Result<bool> {
        Ok(false)
    }
    /// Removes the layer index's entries `prune` selects; returns how many went.
    async fn prune_layer_index(&self, _prune: Prune<'_>) -> Result<usize> {
        Ok(0)
    }
    /// Whether the layer index was built from every stored manifest once; `None` for a store that keeps none.
    async fn layer_index_complete(&self) -> Result<Option<bool>> {
        Ok(None)
    }
    /// Marks the layer index built from every manifest (or not: a rebuild under way).
    async fn set_layer_index_complete(&self, _complete: bool) -> Result<()> {
        Ok(())
    }
}
