//! Pulling from a registry.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use wharf_oci::Digest;
use wharf_oci::manifest::{Descriptor, ManifestView, is_manifest_type};

use super::MANIFEST_ACCEPT;
use super::client::{Op, RegistryClient};
use crate::{BlobStream, Error, ImageSource, Manifest, MountOrigin};

/// Manifests larger than this are refused (the registry's own limit).
const MAX_MANIFEST: usize = 4 << 20;

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
        let sep = if reference.contains(':') { '@' } else { ':' };
        let what = format!("manifest {}{sep}{reference}", self.client.repository());
        let op = Op {
            what: &what,
            scopes: &self.scopes,
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let url = self.client.url(&format!("manifests/{reference}"));
        let resp = self.client.send(&op, Method::GET, &url, headers, None).await?;
        if resp.status() != StatusCode::OK {
            return Err(self.client.status_error(&what, resp).await);
        }
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned())
            .filter(|v| is_manifest_type(v));
        let claimed = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let bad = |reason: String| Error::Manifest {
            what: format!("{what} at {}", self.client.registry()),
            reason,
        };
        if resp.content_length().is_some_and(|n| n > MAX_MANIFEST as u64) {
            return Err(bad(format!("larger than {MAX_MANIFEST} bytes")));
        }
        let bytes = resp.bytes().await.map_err(|e| Error::Unreachable {
            what: what.clone(),
            registry: self.client.registry().to_owned(),
            cause: e,
        })?;
        if bytes.len() > MAX_MANIFEST {
            return Err(bad(format!("larger than {MAX_MANIFEST} bytes")));
        }
        let algorithm = expected
            .or(claimed.as_ref())
            .map_or(wharf_oci::Algorithm::Sha256, Digest::algorithm);
        let digest = Digest::of(algorithm, &bytes);
        for want in expected.iter().copied().chain(claimed.as_ref()) {
            if want.algorithm() == algorithm && *want != digest {
                return Err(Error::DigestMismatch {
                    expected: want.clone(),
                    computed: digest,
                    from: format!("{what} at {}", self.client.registry()),
                });
            }
        }
        let view = ManifestView::parse(&bytes, content_type.as_deref()).map_err(|e| bad(e.to_string()))?;
        Ok(Manifest {
            bytes,
            media_type: view.media_type,
            digest,
        })
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
            url: self.client.url(&format!("blobs/{}", desc.digest)),
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
    url: String,
    what: String,
    /// Bytes passed on so far.
    offset: u64,
    resumes_left: u32,
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
}

impl Download {
    async fn connect(mut self) -> Result<Download, Error> {
        let op = Op {
            what: &self.what,
            scopes: &self.scopes,
        };
        let mut headers = HeaderMap::new();
        let expected = if self.offset == 0 {
            StatusCode::OK
        } else {
            if let Ok(range) = HeaderValue::from_str(&format!("bytes={}-", self.offset)) {
                headers.insert(header::RANGE, range);
            }
            StatusCode::PARTIAL_CONTENT
        };
        let resp = self.client.send(&op, Method::GET, &self.url, headers, None).await?;
        if resp.status() == StatusCode::OK && expected == StatusCode::PARTIAL_CONTENT {
            // The whole blob again: not what was asked for, and not worth reading to find out why.
            return Err(Error::Status {
                what: self.what.clone(),
                registry: self.client.registry().to_owned(),
                status: 200,
                detail: format!(" to a Range request from byte {}: cannot resume", self.offset),
            });
        }
        if resp.status() != expected {
            return Err(self.client.status_error(&self.what, resp).await);
        }
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
                Some(Err(e)) => {
                    return Err(Error::Unreachable {
                        what: self.what.clone(),
                        registry: self.client.registry().to_owned(),
                        cause: e,
                    });
                }
            }
        }
    }
}
