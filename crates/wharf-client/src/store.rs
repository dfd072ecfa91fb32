//! The local content store: blobs pulled for destinations that need them whole (the Docker engine, docker
//! archives, unpacked root filesystems) are kept here by digest, so the next pull of an image that shares base
//! layers downloads only what is new.
//!
//! Layout: `<root>/blobs/<alg>/<hex>` and `<root>/ingest/<uuid>` for blobs being written. A blob is renamed to its
//! digest only after its whole stream arrived and verified (the streams handed to [`ContentStore::put`] are
//! already verified by the copy engine), so a killed pull never leaves a blob that claims a digest it does not
//! have. Files are not fsynced (this is a cache); whoever reads a blob back verifies it on the way (the copy
//! engine verifies every source stream), so a blob torn by a power loss is detected, never used.
//!
//! Location: `$WHARF_STORE`, else `$XDG_CACHE_HOME/wharf/content`, else `~/.cache/wharf/content`.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use wharf_oci::Digest;
use wharf_oci::manifest::Descriptor;

use crate::{BlobStream, Error};

#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    pub fn at(root: impl Into<PathBuf>) -> ContentStore {
        ContentStore { root: root.into() }
    }

    /// The store of this user (see the module documentation).
    pub fn default_location() -> Result<PathBuf, Error> {
        if let Some(p) = std::env::var_os("WHARF_STORE").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p).join("wharf/content"));
        }
        match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
            Some(h) => Ok(PathBuf::from(h).join(".cache/wharf/content")),
            None => Err(Error::BadOption(
                "no content store location: set WHARF_STORE or HOME".into(),
            )),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// Whether the blob is here with the expected size.
    pub async fn has(&self, digest: &Digest, size: u64) -> bool {
        matches!(tokio::fs::metadata(self.path(digest)).await, Ok(m) if m.len() == size)
    }

    /// Writes a verified stream under `digest`, returning its size. The stream must end with an error rather than
    /// finish when its content is wrong (the copy engine's verification does that).
    pub async fn put(&self, digest: &Digest, mut stream: BlobStream) -> Result<u64, Error> {
        let ingest = self.root.join("ingest");
        let final_path = self.path(digest);
        let dir = final_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        for d in [&ingest, &dir] {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| Error::io(format!("creating the content store {}", d.display()), e))?;
        }
        let tmp = Ingest(ingest.join(uuid::Uuid::new_v4().simple().to_string()));
        let ctx = || format!("writing blob {digest} to the content store {}", self.root.display());
        let mut file = tokio::fs::File::create(&tmp.0).await.map_err(|e| Error::io(ctx(), e))?;
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            written += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(|e| Error::io(ctx(), e))?;
        }
        file.flush().await.map_err(|e| Error::io(ctx(), e))?;
        drop(file);
        tokio::fs::rename(&tmp.0, &final_path)
            .await
            .map_err(|e| Error::io(ctx(), e))?;
        Ok(written)
    }

    /// Writes a stream whose digest is computed on the way (`slot` from [`crate::verify::hashing`] around the same
    /// stream): into `ingest/`, renamed to the digest at the end.
    pub(crate) async fn put_new(
        &self,
        mut stream: BlobStream,
        slot: &crate::verify::HashSlot,
    ) -> Result<(Digest, u64), Error> {
        let ingest = self.root.join("ingest");
        tokio::fs::create_dir_all(&ingest)
            .await
            .map_err(|e| Error::io(format!("creating the content store {}", ingest.display()), e))?;
        let tmp = Ingest(ingest.join(uuid::Uuid::new_v4().simple().to_string()));
        let ctx = || format!("writing a blob to the content store {}", self.root.display());
        let mut file = tokio::fs::File::create(&tmp.0).await.map_err(|e| Error::io(ctx(), e))?;
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk?).await.map_err(|e| Error::io(ctx(), e))?;
        }
        file.flush().await.map_err(|e| Error::io(ctx(), e))?;
        drop(file);
        let (digest, size) = crate::verify::hashed(slot, "content store blob")?;
        let final_path = self.path(&digest);
        if let Some(dir) = final_path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(|e| Error::io(ctx(), e))?;
        }
        tokio::fs::rename(&tmp.0, &final_path)
            .await
            .map_err(|e| Error::io(ctx(), e))?;
        Ok((digest, size))
    }

    /// A blocking reader of the blob that checks its digest at the end: a blob torn on disk (a power loss after the
    /// rename) fails the read and is removed, so the next pull fetches it again instead of failing the same way.
    pub(crate) fn open_verified(&self, digest: &Digest) -> std::io::Result<VerifiedReader> {
        let path = self.path(digest);
        Ok(VerifiedReader {
            file: std::fs::File::open(&path)?,
            hasher: Some(wharf_oci::DigestHasher::new(digest.algorithm())),
            expected: digest.clone(),
            path,
        })
    }

    /// The blob's bytes as a stream (not verified here).
    pub async fn open(&self, digest: &Digest) -> Result<BlobStream, Error> {
        let path = self.path(digest);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Error::io(format!("opening {} in the content store", digest), e))?;
        let what = digest.to_string();
        Ok(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
            .map(move |r| r.map_err(|e| Error::io(format!("reading {what} from the content store"), e)))
            .boxed())
    }
}

/// Where this machine has seen blobs in registries: `<root>/seen/<registry>/<hex>` holds a repository name. A push
/// of a blob that some other repository of the destination registry already holds then mounts it instead of
/// uploading it (`POST ?mount=&from=`), even from a source that is not that registry (an OCI layout, the Docker
/// engine). A wrong hint costs one refused mount request; nothing depends on it being right.
#[derive(Debug, Clone)]
pub struct MountHints {
    root: PathBuf,
}

impl MountHints {
    pub fn new(store: &ContentStore) -> MountHints {
        MountHints {
            root: store.root.join("seen"),
        }
    }

    fn path(&self, registry: &str, digest: &Digest) -> Option<PathBuf> {
        // Registry names are host[:port]; anything else is not a name we record under.
        if registry.is_empty() || registry.contains('/') || registry.starts_with('.') {
            return None;
        }
        Some(self.root.join(registry.replace(':', "_")).join(digest.hex()))
    }

    /// Remembers that `registry/repository` holds the blob. Best effort: a failure is logged, never an error.
    pub async fn record(&self, registry: &str, repository: &str, digest: &Digest) {
        let Some(path) = self.path(registry, digest) else {
            return;
        };
        // Known already: nothing to write (a push of an unchanged image rewrites nothing).
        if tokio::fs::read(&path).await.is_ok_and(|r| r == repository.as_bytes()) {
            return;
        }
        if let Err(e) = write_atomically(&path, repository.as_bytes()).await {
            tracing::debug!(error = %e, "cannot record a mount hint");
        }
    }

    /// A repository of `registry` where the blob was seen.
    pub async fn lookup(&self, registry: &str, digest: &Digest) -> Option<String> {
        let path = self.path(registry, digest)?;
        let repo = tokio::fs::read_to_string(path).await.ok()?;
        wharf_oci::name::is_valid_repository(&repo).then_some(repo)
    }

    fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.with_file_name("layers").join(diff_id.hex())
    }

    /// The compressed blobs known to hold the layer whose uncompressed digest is `diff_id` (most recent first):
    /// containers/image's BlobInfoCache, so a push finds what a registry already has before compressing anything.
    pub async fn layer(&self, diff_id: &Digest) -> Vec<Descriptor> {
        self.read_layer(diff_id)
            .await
            .forms
            .into_iter()
            .filter(|d| d.digest != *diff_id && d.size > 0)
            .collect()
    }

    /// The size of the uncompressed layer `diff_id`, as a verified transfer of it found (a hint: whoever streams the
    /// layer still checks it).
    pub async fn layer_size(&self, diff_id: &Digest) -> Option<u64> {
        self.read_layer(diff_id).await.size
    }

    /// [`MountHints::layer_size`] for a caller already on a blocking thread.
    pub fn layer_size_blocking(&self, diff_id: &Digest) -> Option<u64> {
        let bytes = std::fs::read(self.layer_path(diff_id)).ok()?;
        serde_json::from_slice::<LayerRecord>(&bytes).ok()?.size
    }

    async fn read_layer(&self, diff_id: &Digest) -> LayerRecord {
        let Ok(bytes) = tokio::fs::read(self.layer_path(diff_id)).await else {
            return LayerRecord::default();
        };
        serde_json::from_slice::<LayerRecord>(&bytes).unwrap_or_default()
    }

    /// Remembers that `stored` (a compressed blob) holds the layer `diff_id`. Best effort, atomic (a reader sees the
    /// old record or the new one), at most [`LAYER_FORMS`] forms per layer and about [`MAX_LAYER_RECORDS`] layers;
    /// concurrent processes may each lose the other's update, which only costs a lookup later.
    pub async fn record_layer(&self, diff_id: &Digest, stored: &Descriptor, size: Option<u64>) {
        if stored.digest == *diff_id {
            return;
        }
        let path = self.layer_path(diff_id);
        let mut record = self.read_layer(diff_id).await;
        let unchanged = record.forms.first() == Some(stored) && (size.is_none() || record.size == size);
        if unchanged {
            // Nothing to write, but in use again: the bound keeps the most recently used records.
            touch(&path).await;
            return;
        }
        record
            .forms
            .retain(|d| d.digest != stored.digest && d.digest != *diff_id);
        record.forms.insert(0, stored.clone());
        record.forms.truncate(LAYER_FORMS);
        record.size = size.or(record.size);
        let result = async {
            write_atomically(&path, &serde_json::to_vec(&record).map_err(std::io::Error::other)?).await?;
            // Now and then, keep the record within its bound (the least recently written go).
            match path.parent() {
                Some(dir) if rand_one_in(256) => prune_oldest(dir, MAX_LAYER_RECORDS).await,
                _ => Ok(()),
            }
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "cannot record a layer");
        }
    }
}

/// Sets a file's modification time to now (best effort): records are pruned oldest first.
async fn touch(path: &Path) {
    let path = path.to_owned();
    let _ = tokio::task::spawn_blocking(move || {
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
    })
    .await;
}

/// Writes `bytes` to `path` so that a reader sees the old file or the whole new one (a temporary file beside it,
/// renamed over it), creating its directory.
async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let tmp = path.with_extension(uuid::Uuid::new_v4().simple().to_string());
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}

/// What the content store knows of one layer (`layers/<diff_id hex>`).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct LayerRecord {
    /// The uncompressed tar's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    /// Compressed blobs that hold it, the most recent first.
    #[serde(default)]
    forms: Vec<Descriptor>,
}

/// Compressed forms remembered per layer.
const LAYER_FORMS: usize = 4;
/// Layers remembered (each a ~300-byte file).
const MAX_LAYER_RECORDS: usize = 20_000;

fn rand_one_in(n: u32) -> bool {
    uuid::Uuid::new_v4().as_u128().is_multiple_of(u128::from(n))
}

/// Removes the oldest files of `dir` (by modification time) until at most `keep` are left.
async fn prune_oldest(dir: &std::path::Path, keep: usize) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&dir)?
            .flatten()
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if files.len() <= keep {
            return Ok(());
        }
        files.sort();
        let excess = files.len() - keep;
        for (_, path) in files.into_iter().take(excess) {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

pub(crate) struct VerifiedReader {
    file: std::fs::File,
    hasher: Option<wharf_oci::DigestHasher>,
    expected: Digest,
    path: PathBuf,
}

impl std::io::Read for VerifiedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        if n > 0 {
            if let Some(h) = self.hasher.as_mut() {
                h.update(&buf[..n]);
            }
        } else if !buf.is_empty()
            && let Some(h) = self.hasher.take()
        {
            let computed = h.finish();
            if computed != self.expected {
                let _ = std::fs::remove_file(&self.path);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "blob {} in the content store hashes to {computed}; removed it, pull again",
                        self.expected
                    ),
                ));
            }
        }
        Ok(n)
    }
}

/// Removes a blob being written when the write is abandoned or failed.
struct Ingest(PathBuf);

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn put_has_open_and_failed_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::at(dir.path());
        let d = Digest::sha256_of(b"hello");
        assert!(!store.has(&d, 5).await);
        let s = futures_util::stream::iter([Ok(Bytes::from_static(b"hel")), Ok(Bytes::from_static(b"lo"))]).boxed();
        assert_eq!(store.put(&d, s).await.unwrap(), 5);
        assert!(store.has(&d, 5).await && !store.has(&d, 4).await);
        let back: Vec<u8> = store
            .open(&d)
            .await
            .unwrap()
            .map(|r| r.unwrap().to_vec())
            .collect::<Vec<_>>()
            .await
            .concat();
        assert_eq!(back, b"hello");

        let bad = Digest::sha256_of(b"other");
        let s =
            futures_util::stream::iter([Ok(Bytes::from_static(b"oth")), Err(Error::BadOption("cut".into()))]).boxed();
        assert!(store.put(&bad, s).await.is_err());
        assert!(!store.path(&bad).exists());
        assert_eq!(std::fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }
}
