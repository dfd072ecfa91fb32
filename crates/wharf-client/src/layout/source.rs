//! Reading an OCI layout.

use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use wharf_oci::Digest;
use wharf_oci::manifest::{Descriptor, ManifestView};

use super::{Layout, REF_NAME};
use crate::{BlobStream, Error, ImageSource, Manifest};

/// Reads blobs in chunks of this size.
const CHUNK: usize = 256 * 1024;

pub struct LayoutSource {
    layout: Layout,
    tag: Option<String>,
}

impl LayoutSource {
    pub fn new(path: &Path, tag: Option<String>) -> LayoutSource {
        LayoutSource {
            layout: Layout::new(path),
            tag,
        }
    }

    /// The `index.json` entry the name points at: the one with the tag, or the only one when no tag is given.
    async fn top_descriptor(&self) -> Result<Descriptor, Error> {
        let index = self
            .layout
            .read_index()
            .await?
            .ok_or_else(|| self.layout.error("no index.json: not an OCI image layout"))?;
        let name_of = |d: &Descriptor| d.annotations.as_ref().and_then(|a| a.get(REF_NAME)).cloned();
        match &self.tag {
            Some(tag) => index
                .manifests
                .iter()
                .find(|d| name_of(d).as_deref() == Some(tag.as_str()))
                .cloned()
                .ok_or_else(|| self.layout.error(format!("no image tagged {tag:?} in index.json"))),
            None if index.manifests.len() == 1 => Ok(index.manifests[0].clone()),
            None => {
                let names: Vec<String> = index.manifests.iter().filter_map(name_of).collect();
                Err(self.layout.error(format!(
                    "{} images in index.json; name one with oci:PATH:TAG (tags: {})",
                    index.manifests.len(),
                    names.join(", ")
                )))
            }
        }
    }

    async fn read_manifest(&self, desc: &Descriptor) -> Result<Manifest, Error> {
        let path = self.layout.blob(&desc.digest);
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| Error::io(format!("manifest {} in {}", desc.digest, path.display()), e))?;
        let computed = Digest::of(desc.digest.algorithm(), &bytes);
        if computed != desc.digest {
            return Err(Error::DigestMismatch {
                expected: desc.digest.clone(),
                computed,
                from: self.describe(),
            });
        }
        let view = ManifestView::parse(&bytes, Some(&desc.media_type)).map_err(|e| Error::Manifest {
            what: desc.digest.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Manifest {
            bytes: Bytes::from(bytes),
            media_type: view.media_type,
            digest: desc.digest.clone(),
        })
    }
}

#[async_trait]
impl ImageSource for LayoutSource {
    fn describe(&self) -> String {
        match &self.tag {
            Some(t) => format!("oci:{}:{t}", self.layout.root.display()),
            None => format!("oci:{}", self.layout.root.display()),
        }
    }

    async fn get_manifest(&self, child: Option<&Descriptor>) -> Result<Manifest, Error> {
        match child {
            Some(d) => self.read_manifest(d).await,
            None => {
                let top = self.top_descriptor().await?;
                self.read_manifest(&top).await
            }
        }
    }

    async fn get_blob(&self, desc: &Descriptor) -> Result<BlobStream, Error> {
        let path = self.layout.blob(&desc.digest);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Error::io(format!("blob {} in {}", desc.digest, path.display()), e))?;
        let context = format!("reading blob {} in {}", desc.digest, path.display());
        Ok(tokio_util::io::ReaderStream::with_capacity(file, CHUNK)
            .map_err(move |e| Error::io(context.clone(), e))
            .boxed())
    }
}
