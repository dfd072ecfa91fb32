//! Reading a repository of a [`Registry`]: manifests (verified against the digest asked for or claimed, at most
//! 4 MiB), tags, blob sizes, blob downloads from an offset and exact byte ranges of a blob. A missing object is a
//! [`RemoteError`] of kind `NotFound` ([`crate::optional`] turns it into `None`).

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use wharf_oci::Digest;
use wharf_oci::manifest::{ManifestView, is_manifest_type};

use crate::RemoteError;
use crate::body::{BodyError, read_exact};
use crate::client::{Op, Registry};

/// Every manifest type wharf reads, so a registry never falls back to schema1.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Manifests larger than this are refused (the registry's own limit).
pub const MAX_MANIFEST: usize = 4 << 20;

/// A manifest as fetched, its bytes verified against its digest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

fn manifest_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
    h
}

fn digest_header(resp: &Response) -> Option<Digest> {
    resp.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok())
}

/// `manifest REPO:TAG` or `manifest REPO@DIGEST`, as errors name it.
fn manifest_what(repository: &str, reference: &str) -> String {
    // A digest has a `:`; a tag cannot (a `?ns=host:port` query may follow either).
    let bare = reference.split('?').next().unwrap_or(reference);
    let sep = if bare.contains(':') { '@' } else { ':' };
    format!("manifest {repository}{sep}{reference}")
}

impl Registry {
    /// Fetches a manifest by tag or digest. With `expected` the body must hash to it; a `Docker-Content-Digest`
    /// the registry claims must match too.
    pub async fn manifest(
        &self,
        repository: &str,
        reference: &str,
        expected: Option<&Digest>,
        scopes: &[String],
    ) -> Result<Manifest, RemoteError> {
        let what = manifest_what(repository, reference);
        let op = Op { what: &what, scopes };
        let url = self.url(repository, &format!("manifests/{reference}"));
        let resp = self.send(&op, Method::GET, &url, manifest_headers(), None).await?;
        if resp.status() != StatusCode::OK {
            return Err(self.status_error(&what, resp).await);
        }
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned())
            .filter(|v| is_manifest_type(v));
        let claimed = digest_header(&resp);
        let bad = |reason: String| RemoteError::Protocol {
            what: what.clone(),
            registry: self.name().to_owned(),
            reason,
        };
        if resp.content_length().is_some_and(|n| n > MAX_MANIFEST as u64) {
            return Err(bad(format!("larger than {MAX_MANIFEST} bytes")));
        }
        let mut resp = resp;
        let mut bytes = bytes::BytesMut::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unreachable(&what, e))? {
            if bytes.len() + chunk.len() > MAX_MANIFEST {
                return Err(bad(format!("larger than {MAX_MANIFEST} bytes")));
            }
            bytes.extend_from_slice(&chunk);
        }
        let bytes = bytes.freeze();
        let algorithm = expected
            .or(claimed.as_ref())
            .map_or(wharf_oci::Algorithm::Sha256, Digest::algorithm);
        let digest = Digest::of(algorithm, &bytes);
        for want in expected.iter().copied().chain(claimed.as_ref()) {
            if want.algorithm() == algorithm && *want != digest {
                return Err(RemoteError::DigestMismatch {
                    what,
                    registry: self.name().to_owned(),
                    expected: want.clone(),
                    computed: digest,
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

    /// The digest a tag points at (`HEAD`); falls back to a GET when the registry sends no `Docker-Content-Digest`.
    pub async fn resolve_tag(&self, repository: &str, tag: &str, scopes: &[String]) -> Result<Digest, RemoteError> {
        let what = manifest_what(repository, tag);
        let op = Op { what: &what, scopes };
        let url = self.url(repository, &format!("manifests/{tag}"));
        let resp = self.send(&op, Method::HEAD, &url, manifest_headers(), None).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&what, resp).await);
        }
        match digest_header(&resp) {
            Some(d) => Ok(d),
            None => Ok(self.manifest(repository, tag, None, scopes).await?.digest),
        }
    }

    /// The size of a blob (`HEAD`).
    pub async fn blob_size(&self, repository: &str, digest: &Digest, scopes: &[String]) -> Result<u64, RemoteError> {
        let what = format!("blob {digest}");
        let op = Op { what: &what, scopes };
        let url = self.url(repository, &format!("blobs/{digest}"));
        let resp = self.send(&op, Method::HEAD, &url, HeaderMap::new(), None).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&what, resp).await);
        }
        // The header, not `content_length()`: for a HEAD response reqwest reports the (empty) body's length.
        resp.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| RemoteError::Protocol {
                what,
                registry: self.name().to_owned(),
                reason: "no Content-Length".into(),
            })
    }

    /// Starts a blob download from byte `offset`: the answer is 200 from 0, or 206 from `offset` (a registry that
    /// answers a range with the whole blob is refused: what was read is not read again). Redirects to storage (S3,
    /// a CDN) are followed.
    pub async fn blob(
        &self,
        repository: &str,
        digest: &Digest,
        offset: u64,
        scopes: &[String],
    ) -> Result<Response, RemoteError> {
        let what = format!("blob {digest}");
        let op = Op { what: &what, scopes };
        let url = self.url(repository, &format!("blobs/{digest}"));
        let mut headers = HeaderMap::new();
        let expected = if offset == 0 {
            StatusCode::OK
        } else {
            if let Ok(range) = HeaderValue::from_str(&format!("bytes={offset}-")) {
                headers.insert(header::RANGE, range);
            }
            StatusCode::PARTIAL_CONTENT
        };
        let resp = self.send(&op, Method::GET, &url, headers, None).await?;
        if resp.status() == StatusCode::OK && expected == StatusCode::PARTIAL_CONTENT {
            return Err(RemoteError::Protocol {
                what,
                registry: self.name().to_owned(),
                reason: format!("answered 200 to a Range request from byte {offset}: cannot resume"),
            });
        }
        if resp.status() != expected {
            return Err(self.status_error(&what, resp).await);
        }
        Ok(resp)
    }

    /// Fetches bytes `start..end` (end exclusive) of a blob: exactly that range, or an error (a server that ignores
    /// `Range` and answers 200 is refused rather than read whole, unless the range is the whole blob). Each chunk
    /// also goes to `on_chunk` as it arrives.
    pub async fn blob_range(
        &self,
        repository: &str,
        digest: &Digest,
        (start, end): (u64, u64),
        scopes: &[String],
        on_chunk: &mut (dyn FnMut(Bytes) + Send),
    ) -> Result<Bytes, RemoteError> {
        let what = format!("blob {digest} bytes {start}..{end}");
        let op = Op { what: &what, scopes };
        let url = self.url(repository, &format!("blobs/{digest}"));
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&format!("bytes={start}-{}", end.saturating_sub(1))) {
            headers.insert(header::RANGE, v);
        }
        let mut resp = self.send(&op, Method::GET, &url, headers, None).await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::OK if start == 0 && resp.content_length() == Some(end) => {}
            _ => return Err(self.status_error(&what, resp).await),
        }
        let want = usize::try_from(end - start).unwrap_or(usize::MAX);
        let read = read_exact(&mut resp, want, |chunk| {
            on_chunk(chunk);
            std::future::ready(())
        })
        .await;
        let protocol = |reason: String| RemoteError::Protocol {
            what: what.clone(),
            registry: self.name().to_owned(),
            reason,
        };
        match read {
            Ok(body) => Ok(body),
            Err(BodyError::Read(e)) => Err(self.unreachable(&what, e)),
            Err(BodyError::TooLong) => Err(protocol(format!("asked for {} bytes, got more", end - start))),
            Err(BodyError::Short { got }) => Err(protocol(format!("asked for {} bytes, got {got}", end - start))),
        }
    }

    /// The repository's tags, sorted (one page: what the registry answers without `n`).
    pub async fn tags(&self, repository: &str, scopes: &[String]) -> Result<Vec<String>, RemoteError> {
        #[derive(Deserialize)]
        struct Tags {
            tags: Option<Vec<String>>,
        }
        let what = format!("tags of {repository}");
        let op = Op { what: &what, scopes };
        let url = self.url(repository, "tags/list");
        let resp = self.send(&op, Method::GET, &url, HeaderMap::new(), None).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&what, resp).await);
        }
        let body = resp.bytes().await.map_err(|e| self.unreachable(&what, e))?;
        let t: Tags = serde_json::from_slice(&body).map_err(|e| RemoteError::Protocol {
            what: what.clone(),
            registry: self.name().to_owned(),
            reason: format!("bad tag list: {e}"),
        })?;
        let mut tags = t.tags.unwrap_or_default();
        tags.sort();
        Ok(tags)
    }
}
