//! `docker-archive:` and `docker-daemon:` as destinations: blobs go into the local content store (so the next pull
//! of an image sharing base layers downloads only what is new), and the image is then written as a `docker save`
//! tar, `manifest.json` first, layers as they were pulled (compressed; `docker load` decompresses them), either to
//! a file (written beside it and renamed when complete) or straight into the engine's `POST /images/load`.

use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;
use wharf_oci::manifest::ManifestView;
use wharf_oci::media;

use super::engine::Engine;
use crate::compress::ChannelWriter;
use crate::store::ContentStore;
use crate::{BlobStream, Error, ImageDestination, Manifest};

pub enum SaveTarget {
    File(PathBuf),
    Daemon(Engine),
}

pub struct SaveDestination {
    target: SaveTarget,
    store: ContentStore,
    /// `RepoTags` entry (`name:tag`).
    repo_tag: Option<String>,
}

impl SaveDestination {
    pub fn new(target: SaveTarget, store: ContentStore, repo_tag: Option<String>) -> SaveDestination {
        SaveDestination {
            target,
            store,
            repo_tag,
        }
    }

    /// The `docker save` stream of one image whose blobs are in the store.
    fn tar_stream(&self, manifest: &Manifest, view: &ManifestView) -> Result<BlobStream, Error> {
        let config = view.config.clone().ok_or_else(|| Error::Manifest {
            what: manifest.digest.to_string(),
            reason: "no config".into(),
        })?;
        let layers: Vec<_> = view.layers.iter().map(|l| (l.digest.clone(), l.size)).collect();
        let config_name = format!("{}.json", config.digest.hex());
        let layer_names: Vec<String> = layers.iter().map(|(d, _)| format!("{}/layer.tar", d.hex())).collect();
        let index = serde_json::json!([{
            "Config": config_name,
            "RepoTags": self.repo_tag.iter().collect::<Vec<_>>(),
            "Layers": layer_names,
        }]);
        let index = serde_json::to_vec(&index).map_err(|e| Error::BadOption(e.to_string()))?;
        let store = self.store.clone();
        let (writer, stream) = ChannelWriter::pair();
        tokio::task::spawn_blocking(move || {
            let mut builder = tar::Builder::new(writer);
            let result = (|| -> std::io::Result<()> {
                append_bytes(&mut builder, "manifest.json", &index)?;
                append_file(&mut builder, &config_name, &store, &config.digest, config.size)?;
                for ((digest, size), name) in layers.iter().zip(&layer_names) {
                    append_file(&mut builder, name, &store, digest, *size)?;
                }
                builder.finish()?;
                Ok(())
            })();
            match builder.into_inner() {
                Ok(mut w) => match result.and_then(|_| w.flush()) {
                    Ok(()) => {}
                    Err(e) => w.fail(Error::io("writing the docker archive", e)),
                },
                Err(e) => tracing::debug!(error = %e, "archive writer ended"),
            }
        });
        Ok(stream)
    }
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn append_bytes<W: Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut h = header(data.len() as u64);
    b.append_data(&mut h, name, data)
}

/// Appends a content-store blob, verified as it is read (a torn blob fails the stream and leaves the store).
fn append_file<W: Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    store: &ContentStore,
    digest: &wharf_oci::Digest,
    size: u64,
) -> std::io::Result<()> {
    let actual = std::fs::metadata(store.path(digest))?.len();
    if actual != size {
        return Err(std::io::Error::other(format!(
            "{name}: the content store holds {actual} bytes, expected {size}"
        )));
    }
    let mut h = header(size);
    b.append_data(&mut h, name, store.open_verified(digest)?)
}

#[async_trait]
impl ImageDestination for SaveDestination {
    fn describe(&self) -> String {
        match &self.target {
            SaveTarget::File(p) => format!("docker-archive:{}", p.display()),
            SaveTarget::Daemon(e) => format!(
                "docker-daemon:{} ({})",
                self.repo_tag.as_deref().unwrap_or("<untagged>"),
                e.host()
            ),
        }
    }

    async fn has_blob(&self, desc: &wharf_oci::manifest::Descriptor) -> Result<bool, Error> {
        Ok(self.store.has(&desc.digest, desc.size).await)
    }

    async fn put_blob(&self, desc: &wharf_oci::manifest::Descriptor, stream: BlobStream) -> Result<(), Error> {
        self.store.put(&desc.digest, stream).await.map(|_| ())
    }

    async fn put_manifest(&self, manifest: &Manifest, top_level: bool) -> Result<(), Error> {
        if !top_level {
            return Ok(());
        }
        if media::is_index(&manifest.media_type) {
            return Err(Error::BadOption(format!(
                "{} takes one image, not an index: choose one with --platform",
                self.describe()
            )));
        }
        let view = ManifestView::parse(&manifest.bytes, Some(&manifest.media_type)).map_err(|e| Error::Manifest {
            what: manifest.digest.to_string(),
            reason: e.to_string(),
        })?;
        let stream = self.tar_stream(manifest, &view)?;
        match &self.target {
            SaveTarget::Daemon(engine) => {
                let said = engine.load(stream).await?;
                tracing::debug!(?said, "image loaded");
                Ok(())
            }
            SaveTarget::File(path) => write_file(path, stream).await,
        }
    }
}

async fn write_file(path: &std::path::Path, mut stream: BlobStream) -> Result<(), Error> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "archive".into());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let ctx = || format!("writing {}", path.display());
    let result = async {
        let mut f = tokio::fs::File::create(&tmp).await.map_err(|e| Error::io(ctx(), e))?;
        while let Some(chunk) = stream.next().await {
            f.write_all(&chunk?).await.map_err(|e| Error::io(ctx(), e))?;
        }
        f.sync_all().await.map_err(|e| Error::io(ctx(), e))?;
        tokio::fs::rename(&tmp, path).await.map_err(|e| Error::io(ctx(), e))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}
