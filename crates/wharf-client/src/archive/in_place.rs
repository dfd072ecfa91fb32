//! A `docker save` file read in place, as an [`ImageSource`]: one pass over its tar headers (seeking past the data)
//! finds `manifest.json`, the config and where each layer's bytes lie; the layers are then read from their offsets
//! only when [`crate::copy`] wants them. So a push asks the destination for each layer first (the local record, the
//! registry's layer index, HEAD, mount) and compresses and sends only the ones it lacks, several at once, instead
//! of compressing every layer as the stream passes.
//!
//! Only for archives whose layers are uncompressed tars (what `docker save` writes); anything else (a compressed
//! layer, a layer that is not a plain file) returns `None` and the archive is streamed as before.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use wharf_oci::manifest::Descriptor;
use wharf_oci::{Digest, media};

use super::read::{self, ReadArchive};
use crate::{BlobStream, Error, ImageSource, Manifest};

/// Entries read into memory while scanning: `manifest.json`, configs (small JSON files).
const SMALL_JSON: u64 = 8 << 20;

pub(crate) struct InPlace {
    what: String,
    path: PathBuf,
    manifest: Manifest,
    config_digest: Digest,
    config: Bytes,
    /// diff_id → (offset of the layer's bytes in the file, size).
    layers: HashMap<Digest, (u64, u64)>,
}

/// Scans `path` (blocking). `Ok(None)`: not an archive this reads in place.
pub(crate) fn open(path: &Path, wanted: Option<&str>) -> Result<Option<InPlace>, Error> {
    let what = path.display().to_string();
    let fail = |reason: String| Error::Archive {
        path: what.clone(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(format!("opening {what}"), e))?;
    let mut archive = tar::Archive::new(file);
    let mut found = ReadArchive {
        small: HashMap::new(),
        layers: HashMap::new(),
        links: HashMap::new(),
        bytes_read: 0,
    };
    let mut offsets: HashMap<String, (u64, u64)> = HashMap::new();
    let entries = archive
        .entries_with_seek()
        .map_err(|e| fail(format!("not a tar file: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| fail(format!("reading the tar file: {e}")))?;
        let path = read::normalize(&entry.path().map_err(|e| fail(e.to_string()))?.to_string_lossy());
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            found.links.extend(read::link_target(&path, &entry));
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let size = entry.size();
        offsets.insert(path.clone(), (entry.raw_file_position(), size));
        let json = path.ends_with(".json") || !path.contains('/');
        if json && size <= SMALL_JSON {
            let mut buf = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut buf).map_err(|e| fail(format!("{path}: {e}")))?;
            found.small.insert(path, buf.into());
        }
    }
    let image = found.image(&what, wanted)?;
    let config_path = found.resolve(&image.config);
    let Some(config) = found.small.get(&config_path).cloned().or_else(|| {
        // OCI-format saves keep the config under blobs/ without a .json name.
        let (offset, size) = *offsets.get(&config_path)?;
        (size <= SMALL_JSON).then(|| read_at(path, offset, size).ok())?
    }) else {
        return Ok(None);
    };
    let diff_ids = wharf_oci::manifest::config_diff_ids(&config).map_err(|e| fail(format!("bad image config: {e}")))?;
    if diff_ids.len() != image.layers.len() {
        return Ok(None);
    }
    let mut layers = HashMap::new();
    let mut descriptors = Vec::new();
    for (layer_path, diff_id) in image.layers.iter().zip(&diff_ids) {
        let Some(&(offset, size)) = offsets.get(&found.resolve(layer_path)) else {
            return Ok(None);
        };
        let head = read_at(path, offset, size.min(4))?;
        if read::sniff(&head).is_some() {
            return Ok(None);
        }
        layers.insert(diff_id.clone(), (offset, size));
        descriptors.push(read::descriptor(media::OCI_LAYER_TAR, diff_id.clone(), size));
    }
    let config_desc = read::descriptor(media::OCI_CONFIG, Digest::sha256_of(&config), config.len() as u64);
    let manifest = super::oci_manifest(&config_desc, descriptors.iter())?;
    Ok(Some(InPlace {
        what,
        path: path.to_path_buf(),
        manifest,
        config_digest: config_desc.digest,
        config,
        layers,
    }))
}

fn read_at(path: &Path, offset: u64, size: u64) -> Result<Bytes, Error> {
    let label = || format!("reading {}", path.display());
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(label(), e))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(label(), e))?;
    let mut buf = Vec::with_capacity(size as usize);
    f.take(size).read_to_end(&mut buf).map_err(|e| Error::io(label(), e))?;
    Ok(buf.into())
}

#[async_trait]
impl ImageSource for InPlace {
    fn describe(&self) -> String {
        self.what.clone()
    }

    async fn get_manifest(&self, child: Option<&Descriptor>) -> Result<Manifest, Error> {
        super::only_manifest(&self.manifest, child)
    }

    async fn get_blob(&self, desc: &Descriptor) -> Result<BlobStream, Error> {
        if let Some(config) = super::config_blob(desc, &self.config_digest, &self.config) {
            return Ok(config);
        }
        let Some(&(offset, size)) = self.layers.get(&desc.digest) else {
            return Err(Error::Archive {
                path: self.what.clone(),
                reason: format!("no layer {}", desc.digest),
            });
        };
        let label = format!("reading {}", self.path.display());
        let mut f = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| Error::io(label.clone(), e))?;
        tokio::io::AsyncSeekExt::seek(&mut f, SeekFrom::Start(offset))
            .await
            .map_err(|e| Error::io(label.clone(), e))?;
        let body = tokio::io::AsyncReadExt::take(f, size);
        Ok(tokio_util::io::ReaderStream::with_capacity(body, 1 << 20)
            .map(move |r| r.map_err(|e| Error::io(label.clone(), e)))
            .boxed())
    }
}
