//! `docker-archive:PATH[:REF]` (a `docker save` tar) and `docker-daemon:REF` (the local Docker engine).
//!
//! As sources both are one tar stream read once ([`read`]): a file, or the engine's `GET /images/get`. Layers
//! in them are uncompressed tars, so copying to a registry or an OCI layout compresses them on the way (all cores)
//! and writes a new OCI manifest over the compressed blobs; the config is kept byte-exact, so the image ID stays
//! the same. As destinations ([`write`]) both take blobs into the local content store and then write one
//! `docker save` stream (to the file, or into `POST /images/load`).

mod daemon_store;
pub mod engine;
mod in_place;
mod read;
pub mod write;

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use wharf_oci::Digest;
use wharf_oci::manifest::Descriptor;
use wharf_oci::media;

use crate::copy::{CopyOptions, CopyReport, copy};
use crate::store::ContentStore;
use crate::{BlobStream, Error, ImageDestination, ImageSource, Manifest};
use read::{ReadLayer, Sink};

/// Where a `docker save` stream comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveInput {
    File { path: PathBuf, reference: Option<String> },
    Daemon { reference: String },
}

impl ArchiveInput {
    fn describe(&self) -> String {
        match self {
            ArchiveInput::File { path, .. } => path.display().to_string(),
            ArchiveInput::Daemon { reference } => format!("docker-daemon:{reference}"),
        }
    }

    async fn open(&self) -> Result<BlobStream, Error> {
        match self {
            ArchiveInput::File { path, .. } => {
                let f = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
                let label = path.display().to_string();
                Ok(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20)
                    .map(move |r| r.map_err(|e| Error::io(format!("reading {label}"), e)))
                    .boxed())
            }
            ArchiveInput::Daemon { reference } => engine::Engine::from_env()?.save(reference).await,
        }
    }
}

/// Copies an image of the local Docker engine to `dst`: from the engine's layer store when it can be read here
/// ([`daemon_store`]), else from its `docker save` export. `WHARF_DOCKER_STORE=0` forces the export.
pub async fn copy_from_daemon(
    reference: &str,
    dst: &dyn ImageDestination,
    opts: &CopyOptions,
    store: &ContentStore,
) -> Result<CopyReport, Error> {
    let direct = std::env::var("WHARF_DOCKER_STORE").map_or(true, |v| v != "0");
    if direct {
        let engine = engine::Engine::from_env()?;
        tracing::debug!(reference, "reading the engine's layer store");
        if let Some(source) = daemon_store::open(&engine, reference, opts.hints.as_ref()).await {
            tracing::debug!(reference, "the engine's layer store read");
            match copy(&source, dst, opts).await {
                Err(e @ (Error::DigestMismatch { .. } | Error::SizeMismatch { .. } | Error::Io { .. }))
                    if dst.restartable() =>
                {
                    tracing::warn!(error = %e, "the engine's store did not reproduce a layer; exporting the image instead");
                }
                other => return other,
            }
        }
    }
    let input = ArchiveInput::Daemon {
        reference: reference.to_owned(),
    };
    copy_from_archive(&input, dst, opts, store).await
}

/// Copies the image a `docker save` stream holds to `dst`.
pub async fn copy_from_archive(
    input: &ArchiveInput,
    dst: &dyn ImageDestination,
    opts: &CopyOptions,
    store: &ContentStore,
) -> Result<CopyReport, Error> {
    // A file whose layers are plain tars is read in place: each layer is looked for at the destination before it is
    // compressed, and only what is missing is compressed and sent.
    if let ArchiveInput::File { path, reference } = input
        && dst.compresses_layers()
    {
        let (p, r) = (path.clone(), reference.clone());
        let found = tokio::task::spawn_blocking(move || in_place::open(&p, r.as_deref()))
            .await
            .map_err(|e| Error::BadOption(format!("archive scan: {e}")))??;
        if let Some(source) = found {
            return copy(&source, dst, opts).await;
        }
    }
    let what = input.describe();
    let fail = |reason: String| Error::Archive {
        path: what.clone(),
        reason,
    };
    let sink = if dst.compresses_layers() {
        Sink::Destination {
            dst,
            compression: opts.compression,
            workers: opts.workers,
        }
    } else {
        Sink::Store(store)
    };
    let mut stream = input.open().await?;
    // One progress line for the whole stream: its layers are not known until its end.
    let key = Digest::sha256_of(what.as_bytes());
    if let Some(p) = &opts.progress {
        p.start(&key, 0);
        let (p, k) = (p.clone(), key.clone());
        stream = stream.inspect_ok(move |b| p.advance(&k, b.len() as u64)).boxed();
    }
    let archive = read::read(stream, &what, &sink).await?;
    if let Some(p) = &opts.progress {
        p.finish(&key, "read");
    }
    let wanted = match input {
        ArchiveInput::File { reference, .. } => reference.as_deref(),
        ArchiveInput::Daemon { .. } => None,
    };
    let image = archive.image(&what, wanted)?;
    let config_path = archive.resolve(&image.config);
    let config = archive
        .small
        .get(&config_path)
        .cloned()
        .ok_or_else(|| fail(format!("config {} is missing or too large", image.config)))?;
    let diff_ids = wharf_oci::manifest::config_diff_ids(&config).map_err(|e| fail(format!("bad image config: {e}")))?;
    if diff_ids.len() != image.layers.len() {
        return Err(fail(format!(
            "the config lists {} layers, manifest.json {}",
            diff_ids.len(),
            image.layers.len()
        )));
    }

    let mut layers: Vec<ReadLayer> = Vec::new();
    for (path, diff_id) in image.layers.iter().zip(&diff_ids) {
        let p = archive.resolve(path);
        let layer = match (archive.layers.get(&p), archive.small.get(&p)) {
            (Some(l), _) => l.clone(),
            (None, Some(bytes)) => {
                // A small layer was kept in memory: send it now.
                let compressed = read::sniff(bytes);
                let stream = futures_util::stream::iter([Ok(bytes.clone())]).boxed();
                read::send_layer(&sink, stream, bytes.len() as u64, compressed).await?
            }
            (None, None) => return Err(fail(format!("layer {path} is missing"))),
        };
        if let Some(d) = &layer.diff_id
            && d != diff_id
        {
            return Err(fail(format!(
                "layer {path} has content digest {d}, the config says {diff_id}; refusing the image"
            )));
        }
        layers.push(layer);
    }

    let config_desc = read::descriptor(media::OCI_CONFIG, Digest::sha256_of(&config), config.len() as u64);
    let manifest = oci_manifest(&config_desc, layers.iter().map(|l| &l.stored))?;
    match sink {
        Sink::Destination { .. } => {
            let mut report = CopyReport {
                bytes_moved: archive.bytes_read,
                ..CopyReport::default()
            };
            if dst.has_blob(&config_desc).await? {
                report.blobs_skipped += 1;
                report.bytes_skipped += config_desc.size;
            } else {
                let s = futures_util::stream::iter([Ok(config.clone())]).boxed();
                dst.put_blob(&config_desc, s).await?;
                report.blobs_copied += 1;
            }
            report.blobs_copied += layers.len();
            report.layers_compressed = layers.iter().filter(|l| l.diff_id.is_some()).count();
            dst.put_manifest(&manifest, true).await?;
            report.digest = manifest.digest.to_string();
            report.media_type = manifest.media_type.clone();
            report.manifests = 1;
            Ok(report)
        }
        Sink::Store(store) => {
            let staged = Staged {
                what,
                manifest,
                config_digest: config_desc.digest.clone(),
                config,
                store: store.clone(),
            };
            let mut report = copy(&staged, dst, opts).await?;
            report.bytes_moved = archive.bytes_read;
            Ok(report)
        }
    }
}

pub(crate) fn oci_manifest<'a>(
    config: &Descriptor,
    layers: impl Iterator<Item = &'a Descriptor>,
) -> Result<Manifest, Error> {
    let json = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": config,
        "layers": layers.collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&json).map_err(|e| Error::BadOption(e.to_string()))?;
    Ok(Manifest {
        digest: Digest::sha256_of(&bytes),
        bytes: bytes.into(),
        media_type: media::OCI_MANIFEST.to_owned(),
    })
}

/// An image read from an archive into the content store, as a source for destinations that do not compress.
struct Staged {
    what: String,
    manifest: Manifest,
    config_digest: Digest,
    config: Bytes,
    store: ContentStore,
}

#[async_trait]
impl ImageSource for Staged {
    fn describe(&self) -> String {
        self.what.clone()
    }

    async fn get_manifest(&self, child: Option<&Descriptor>) -> Result<Manifest, Error> {
        only_manifest(&self.manifest, child)
    }

    async fn get_blob(&self, desc: &Descriptor) -> Result<BlobStream, Error> {
        if let Some(config) = config_blob(desc, &self.config_digest, &self.config) {
            return Ok(config);
        }
        self.store.open(&desc.digest).await
    }
}

/// An archive's one image manifest (`child`: none of an archive's manifests has children).
pub(crate) fn only_manifest(manifest: &Manifest, child: Option<&Descriptor>) -> Result<Manifest, Error> {
    match child {
        None => Ok(manifest.clone()),
        Some(d) => Err(Error::Manifest {
            what: d.digest.to_string(),
            reason: "not in this archive".into(),
        }),
    }
}

/// The config's bytes, when `desc` names it.
pub(crate) fn config_blob(desc: &Descriptor, digest: &Digest, config: &Bytes) -> Option<BlobStream> {
    (desc.digest == *digest).then(|| futures_util::stream::iter([Ok(config.clone())]).boxed())
}
