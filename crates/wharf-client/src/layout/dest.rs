//! Writing an OCI layout. A blob is streamed into a temporary file inside its `blobs/<alg>/` directory and renamed
//! to its digest only after the whole verified stream was written and synced, so a partial or wrong blob never
//! appears under a digest. `index.json` is replaced atomically the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, OnceCell};
use wharf_oci::Digest;
use wharf_oci::manifest::Descriptor;

use super::{INDEX_FILE, Index, LAYOUT_FILE, Layout, REF_NAME};
use crate::{BlobStream, Error, ImageDestination, Manifest};

pub struct LayoutDestination {
    layout: Layout,
    tag: Option<String>,
    /// Serializes `index.json` updates.
    index_lock: Mutex<()>,
    initialized: OnceCell<()>,
}

impl LayoutDestination {
    /// Opens the layout at `path`. Nothing is created until the first blob arrives, so a copy that fails early
    /// (bad source, unknown tag) leaves no empty layout behind.
    pub async fn create(path: &Path, tag: Option<String>) -> Result<LayoutDestination, Error> {
        let layout = Layout::new(path);
        // Fail early on a directory whose index.json is not ours to extend.
        layout.read_index().await?;
        Ok(LayoutDestination {
            layout,
            tag,
            index_lock: Mutex::new(()),
            initialized: OnceCell::new(),
        })
    }

    /// Creates the directory, `blobs/` and `oci-layout`, once.
    async fn init(&self) -> Result<(), Error> {
        self.initialized
            .get_or_try_init(|| async {
                let root = &self.layout.root;
                tokio::fs::create_dir_all(root.join("blobs"))
                    .await
                    .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
                let marker = root.join(LAYOUT_FILE);
                if tokio::fs::metadata(&marker).await.is_err() {
                    write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).await?;
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// `blobs/<alg>/` for this digest, created if needed.
    async fn blob_dir(&self, desc: &Descriptor) -> Result<(), Error> {
        self.init().await?;
        let dir = self.layout.blob_dir(&desc.digest);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))
    }

    async fn write_blob(&self, desc: &Descriptor, mut stream: BlobStream, tmp: &Path) -> Result<(), Error> {
        let ctx = || format!("writing blob {} to {}", desc.digest, tmp.display());
        let mut file = tokio::fs::File::create(tmp).await.map_err(|e| Error::io(ctx(), e))?;
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            written += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(|e| Error::io(ctx(), e))?;
        }
        if written != desc.size {
            return Err(Error::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: written,
                from: "the source stream".into(),
            });
        }
        file.sync_all().await.map_err(|e| Error::io(ctx(), e))?;
        Ok(())
    }
}

/// Writes `data` to a temporary sibling of `path`, syncs it and renames it over `path`.
async fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    let tmp = TempFile(temp_sibling(path));
    let result = async {
        let mut f = tokio::fs::File::create(&tmp.0).await?;
        f.write_all(data).await?;
        f.sync_all().await?;
        tokio::fs::rename(&tmp.0, path).await
    }
    .await;
    result.map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Removes its file when dropped: after a failure, and also when a copy is abandoned mid-blob (another blob
/// failed and the in-flight uploads were dropped). After a successful rename there is nothing left to remove.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `.NAME.<uuid>.tmp` next to `path`: never a valid digest hex, so never mistaken for a blob.
fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()))
}

#[async_trait]
impl ImageDestination for LayoutDestination {
    fn describe(&self) -> String {
        match &self.tag {
            Some(t) => format!("oci:{}:{t}", self.layout.root.display()),
            None => format!("oci:{}", self.layout.root.display()),
        }
    }

    async fn has_blob(&self, desc: &Descriptor) -> Result<bool, Error> {
        // Blobs only ever appear complete and verified (temp + rename), so a file of the right size is the blob.
        match tokio::fs::metadata(self.layout.blob(&desc.digest)).await {
            Ok(m) => Ok(m.is_file() && m.len() == desc.size),
            Err(_) => Ok(false),
        }
    }

    async fn put_blob(&self, desc: &Descriptor, stream: BlobStream) -> Result<(), Error> {
        self.blob_dir(desc).await?;
        let path = self.layout.blob(&desc.digest);
        let tmp = TempFile(temp_sibling(&path));
        self.write_blob(desc, stream, &tmp.0).await?;
        tokio::fs::rename(&tmp.0, &path)
            .await
            .map_err(|e| Error::io(format!("renaming into {}", path.display()), e))
    }

    fn compresses_layers(&self) -> bool {
        true
    }

    async fn put_new_blob(&self, stream: BlobStream) -> Result<(Digest, u64), Error> {
        // Written under blobs/sha256/ as a temporary name, renamed to the digest computed on the way.
        let probe = Descriptor {
            media_type: String::new(),
            digest: Digest::sha256_of(b""),
            size: 0,
            artifact_type: None,
            annotations: None,
            urls: None,
            platform: None,
        };
        self.blob_dir(&probe).await?;
        let tmp = TempFile(temp_sibling(&self.layout.blob(&probe.digest)));
        let (stream, slot) = crate::verify::hashing(stream);
        let ctx = || format!("writing a compressed layer to {}", tmp.0.display());
        let mut file = tokio::fs::File::create(&tmp.0).await.map_err(|e| Error::io(ctx(), e))?;
        let mut stream = stream;
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk?).await.map_err(|e| Error::io(ctx(), e))?;
        }
        file.sync_all().await.map_err(|e| Error::io(ctx(), e))?;
        let (digest, size) = crate::verify::hashed(&slot, "compressed layer")?;
        let path = self.layout.blob(&digest);
        tokio::fs::rename(&tmp.0, &path)
            .await
            .map_err(|e| Error::io(format!("renaming into {}", path.display()), e))?;
        Ok((digest, size))
    }

    async fn put_manifest(&self, manifest: &Manifest, top_level: bool) -> Result<(), Error> {
        let desc = Descriptor {
            media_type: manifest.media_type.clone(),
            digest: manifest.digest.clone(),
            size: manifest.bytes.len() as u64,
            artifact_type: None,
            annotations: None,
            urls: None,
            platform: None,
        };
        if !self.has_blob(&desc).await? {
            self.blob_dir(&desc).await?;
            write_atomic(&self.layout.blob(&desc.digest), &manifest.bytes).await?;
        }
        if !top_level {
            return Ok(());
        }
        let _guard = self.index_lock.lock().await;
        let mut index = self.layout.read_index().await?.unwrap_or_else(|| Index {
            schema_version: 2,
            media_type: Some(wharf_oci::media::OCI_INDEX.to_owned()),
            ..Index::default()
        });
        let mut entry = desc;
        match &self.tag {
            Some(tag) => {
                index
                    .manifests
                    .retain(|d| d.annotations.as_ref().and_then(|a| a.get(REF_NAME)) != Some(tag));
                entry.annotations = Some(BTreeMap::from([(REF_NAME.to_owned(), tag.clone())]));
            }
            None => index
                .manifests
                .retain(|d| d.digest != entry.digest || d.annotations.is_some()),
        }
        index.manifests.push(entry);
        let bytes = serde_json::to_vec(&index).map_err(|e| self.layout.error(e.to_string()))?;
        write_atomic(&self.layout.root.join(INDEX_FILE), &bytes).await
    }
}
