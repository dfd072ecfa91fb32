//! Pulling from a registry.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use wharf_oci::Digest;
use wharf_oci::manifest::Descriptor;

use super::client::RegistryClient;
use crate::{BlobStream, Error, ImageSource, Manifest, MountOrigin};

/// Times one blob download is resumed with `Range` after its connection drops.
const RESUMES: u32 = 3;

pub struct RegistrySource {
    client: Arc<RegistryClient>,
    scopes: Vec<String>,
}

impl RegistrySource {
    pub fn new(client: RegistryClient) -> RegistrySource {
        let scopes = vec![client.pull_scope()];
        RegistrySource {
            client: Arc::new(client),
            scopes,
        }
    }

    async fn fetch_manifest(&self, reference: &str, expected: Option<&Digest>) -> Result<Manifest, Error> {
        Ok(self
            .client
            .remote()
            .manifest(self.client.repository(), reference, expected, &self.scopes)
            .await?)
    }
}

#[async_trait]
impl ImageSource for RegistrySource {
    fn describe(&self) -> String {
        format!("docker://{}", self.client.reference)
    }

    async fn get_manifest(&self, child: Option<&Descriptor>) -> Result<Manifest, Error> {
        match child {
            Some(d) => self.fetch_manifest(&d.digest.to_string(), Some(&d.digest)).await,
            None => {
                let r = &self.client.reference;
                self.fetch_manifest(&r.manifest_reference(), r.digest.as_ref()).await
            }
        }
    }

    async fn get_blob(&self, desc: &Descriptor) -> Result<BlobStream, Error> {
        let download = Download {
            client: self.client.clone(),
            scopes: self.scopes.clone(),
            digest: desc.digest.clone(),
            what: format!("blob {}", desc.digest),
            offset: 0,
            resumes_left: RESUMES,
            body: None,
        };
        // The first request is made here, so a missing blob fails before the destination starts an upload.
        let download = download.connect().await?;
        Ok(futures_util::stream::try_unfold(download, Download::next).boxed())
    }

    fn mount_origin(&self) -> Option<MountOrigin> {
        Some(MountOrigin {
            registry: self.client.registry().to_owned(),
            repository: self.client.repository().to_owned(),
        })
    }
}

/// One blob download that resumes where it stopped: after a dropped connection it asks for the rest with
/// `Range: bytes=OFFSET-` (up to [`RESUMES`] times), so the bytes already passed on are not fetched again.
struct Download {
    client: Arc<RegistryClient>,
    scopes: Vec<String>,
    digest: Digest,
    what: String,
    /// Bytes passed on so far.
    offset: u64,
    resumes_left: u32,
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
}

impl Download {
    async fn connect(mut self) -> Result<Download, Error> {
        let resp = self
            .client
            .remote()
            .blob(self.client.repository(), &self.digest, self.offset, &self.scopes)
            .await?;
        self.body = Some(resp.bytes_stream().boxed());
        Ok(self)
    }

    /// The next chunk, resuming after a transfer error while resumes are left.
    async fn next(mut self) -> Result<Option<(Bytes, Download)>, Error> {
        loop {
            let Some(body) = self.body.as_mut() else {
                self = self.connect().await?;
                continue;
            };
            match body.next().await {
                Some(Ok(chunk)) => {
                    self.offset += chunk.len() as u64;
                    return Ok(Some((chunk, self)));
                }
                None => return Ok(None),
                Some(Err(e)) if self.resumes_left > 0 => {
                    self.resumes_left -= 1;
                    tracing::warn!(what = %self.what, offset = self.offset, error = %e, "download cut; resuming");
                    self.body = None;
                }
                Some(Err(e)) => return Err(self.client.unreachable(&self.what, e)),
            }
        }
    }
}
