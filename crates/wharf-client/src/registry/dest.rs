//! Pushing to a registry, in go-containerregistry's steps: check the blob exists (HEAD), mount it from the source
//! repository when the source is in the same registry, otherwise start an upload (POST) and stream the blob in one
//! PUT `?digest=`; manifests last.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use wharf_oci::Digest;
use wharf_oci::manifest::Descriptor;

use super::client::{Op, RegistryClient};

/// Bytes per `PATCH` of a chunked upload, and the most a failed chunk costs to send again.
const CHUNK: usize = 16 << 20;
/// Tries for one chunk, resuming from the registry's acknowledged offset each time.
const RESUME_ATTEMPTS: u32 = 5;
use crate::{BlobStream, Error, ImageDestination, KnownLayer, Manifest, MountOrigin, RemoteError};

pub struct RegistryDestination {
    client: RegistryClient,
    scopes: Vec<String>,
    /// Upload sessions opened by a mount request the registry answered with 202 (not mounted), reused by the
    /// upload of the same blob instead of a second POST.
    sessions: Mutex<HashMap<Digest, String>>,
}

impl RegistryDestination {
    pub fn new(client: RegistryClient) -> RegistryDestination {
        let scopes = vec![client.push_scope()];
        RegistryDestination {
            client,
            scopes,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn op<'a>(&'a self, what: &'a str) -> Op<'a> {
        Op {
            what,
            scopes: &self.scopes,
        }
    }

    fn location(&self, what: &str, resp: &reqwest::Response) -> Result<String, Error> {
        resp.headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                Error::Remote(RemoteError::Protocol {
                    what: what.to_owned(),
                    registry: self.client.registry().to_owned(),
                    reason: format!("HTTP {}: upload started without a Location", resp.status().as_u16()),
                })
            })
    }

    /// `POST /blobs/uploads/`: a new upload session.
    async fn start_upload(&self, what: &str) -> Result<String, Error> {
        let url = self.client.url("blobs/uploads/");
        let resp = self
            .client
            .send(&self.op(what), Method::POST, &url, HeaderMap::new(), None)
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.client.status_error(what, resp).await);
        }
        self.location(what, &resp)
    }
}

/// The entries of a layer index answer (`{"diff_id": ..., "blobs": [{"digest", "size", "mediaType", "repository"}]}`)
/// that are layer blobs other than the layer's own uncompressed digest.
fn parse_known_layers(body: &[u8], diff_id: &Digest) -> Vec<KnownLayer> {
    #[derive(serde::Deserialize)]
    struct Answer {
        blobs: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(flatten)]
        blob: Descriptor,
        #[serde(default)]
        repository: Option<String>,
    }
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
        return Vec::new();
    };
    answer
        .blobs
        .into_iter()
        .filter(|e| e.blob.digest != *diff_id && is_compressed_layer(&e.blob.media_type))
        .map(|e| KnownLayer {
            blob: e.blob,
            repository: e.repository.filter(|r| wharf_oci::name::is_valid_repository(r)),
        })
        .collect()
}

/// A gzip or zstd layer, OCI or Docker.
fn is_compressed_layer(media_type: &str) -> bool {
    (media_type.contains(".layer.") || media_type.contains(".rootfs.diff."))
        && (media_type.ends_with("gzip") || media_type.ends_with("zstd"))
}

/// Hashes an upload unless its digest is known already.
struct Hasher<'a> {
    known: Option<&'a Digest>,
    computing: Option<wharf_oci::DigestHasher>,
}

impl<'a> Hasher<'a> {
    fn new(known: Option<&'a Digest>) -> Hasher<'a> {
        Hasher {
            known,
            computing: known
                .is_none()
                .then(|| wharf_oci::DigestHasher::new(wharf_oci::Algorithm::Sha256)),
        }
    }

    fn update(&mut self, data: &[u8]) {
        if let Some(h) = self.computing.as_mut() {
            h.update(data);
        }
    }

    fn finish(self) -> Digest {
        match (self.known, self.computing) {
            (Some(d), _) => d.clone(),
            (None, Some(h)) => h.finish(),
            (None, None) => Digest::sha256_of(b""),
        }
    }
}

impl RegistryDestination {
    /// Sends a stream to an open upload session and commits it under the digest computed on the way.
    ///
    /// A blob that fits in one chunk goes in the closing `PUT` (one request). A longer one goes as `PATCH` chunks
    /// of [`CHUNK`] bytes with `Content-Range`, the next chunk gathering while the previous one is sent, and only the
    /// chunk in flight is held in memory. When a chunk fails on the way (connection cut, 5xx), the upload's status
    /// (`GET` on the session: `Range: 0-N`) says how much the registry kept, and the rest of the chunk is sent again:
    /// a dropped connection costs at most one chunk, never the blob.
    ///
    /// `expected`: the digest of a stream already verified on its way here (then it is not hashed again and the
    /// blob is committed under it, whatever its algorithm); `None` for a blob whose digest is computed here (sha256).
    async fn upload(
        &self,
        what: &str,
        location: String,
        stream: BlobStream,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), Error> {
        let mut blocks = crate::compress::blocks(stream, CHUNK);
        let mut hasher = Hasher::new(expected);
        let first = blocks.next().await.transpose()?;
        let mut queued = blocks.next().await.transpose()?;
        let Some(mut current) = first else {
            let digest = hasher.finish();
            self.commit(what, &location, &digest, None).await?;
            return Ok((digest, 0));
        };
        if queued.is_none() {
            hasher.update(&current);
            let digest = hasher.finish();
            let size = current.len() as u64;
            self.commit(what, &location, &digest, Some(current)).await?;
            return Ok((digest, size));
        }
        let mut location = location;
        let mut offset = 0u64;
        loop {
            hasher.update(&current);
            let more = queued.is_some();
            let gather = async {
                if more {
                    blocks.next().await.transpose()
                } else {
                    Ok(None)
                }
            };
            let (sent, gathered) = tokio::join!(self.patch_resuming(what, &location, offset, current), gather);
            let (next_location, n) = sent?;
            location = next_location;
            offset += n;
            let gathered = gathered?;
            match queued.take() {
                Some(next) => {
                    current = next;
                    queued = gathered;
                }
                None => break,
            }
        }
        let digest = hasher.finish();
        self.commit(what, &location, &digest, None).await?;
        Ok((digest, offset))
    }

    /// `PATCH` one chunk at `offset`, resuming after a failure from what the registry acknowledged. Returns the
    /// next location and the chunk's length.
    async fn patch_resuming(
        &self,
        what: &str,
        location: &str,
        offset: u64,
        chunk: Bytes,
    ) -> Result<(String, u64), Error> {
        let len = chunk.len() as u64;
        let mut location = location.to_owned();
        let mut start = 0u64;
        let mut attempt = 1u32;
        loop {
            let piece = chunk.slice(start as usize..);
            match self.patch(what, &location, offset + start, piece).await {
                Ok(loc) => return Ok((loc, len)),
                Err(e) if e.is_temporary() && attempt < RESUME_ATTEMPTS => {
                    tokio::time::sleep(std::time::Duration::from_millis(200) * attempt).await;
                    attempt += 1;
                    let (loc, acked) = self.upload_status(what, &location).await?;
                    if acked < offset || acked > offset + len {
                        return Err(e);
                    }
                    tracing::warn!(what, error = %e, resume_at = acked, "chunk upload cut; resuming");
                    location = loc;
                    start = acked - offset;
                    if start == len {
                        return Ok((location, len));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn patch(&self, what: &str, location: &str, offset: u64, piece: Bytes) -> Result<String, Error> {
        let url = self.client.resolve(location)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let end = offset + piece.len() as u64 - 1;
        if let Ok(v) = HeaderValue::from_str(&format!("{offset}-{end}")) {
            headers.insert(header::CONTENT_RANGE, v);
        }
        let resp = self
            .client
            .send_once(&self.op(what), Method::PATCH, url.as_str(), headers, piece)
            .await?;
        if resp.status() != StatusCode::ACCEPTED && resp.status() != StatusCode::NO_CONTENT {
            return Err(self.client.status_error(what, resp).await);
        }
        self.location(what, &resp)
    }

    /// `GET` on an upload session: the next location and how many bytes the registry holds.
    async fn upload_status(&self, what: &str, location: &str) -> Result<(String, u64), Error> {
        let url = self.client.resolve(location)?;
        let resp = self
            .client
            .send(&self.op(what), Method::GET, url.as_str(), HeaderMap::new(), None)
            .await?;
        if resp.status() != StatusCode::NO_CONTENT && resp.status() != StatusCode::OK {
            return Err(self.client.status_error(what, resp).await);
        }
        let acked = resp
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|r| r.rsplit_once('-'))
            .and_then(|(_, end)| end.parse::<u64>().ok())
            // `0-0` is what distribution (and wharf) send for an empty session: nothing kept yet. (A session holding
            // exactly one byte says the same; resending that byte is refused with 416 and the blob starts again.)
            .map_or(0, |end| if end == 0 { 0 } else { end + 1 });
        let loc = self.location(what, &resp).unwrap_or_else(|_| location.to_owned());
        Ok((loc, acked))
    }

    /// The closing `PUT ?digest=`, with the last bytes or none.
    async fn commit(&self, what: &str, location: &str, digest: &Digest, body: Option<Bytes>) -> Result<(), Error> {
        let mut url = self.client.resolve(location)?;
        url.query_pairs_mut().append_pair("digest", &digest.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let body = body.unwrap_or_default();
        let resp = self
            .client
            .send_once(&self.op(what), Method::PUT, url.as_str(), headers, body)
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.client.status_error(what, resp).await);
        }
        Ok(())
    }
}

#[async_trait]
impl ImageDestination for RegistryDestination {
    fn describe(&self) -> String {
        format!("docker://{}", self.client.reference)
    }

    async fn has_blob(&self, desc: &Descriptor) -> Result<bool, Error> {
        let what = format!("blob {}", desc.digest);
        let url = self.client.url(&format!("blobs/{}", desc.digest));
        let resp = self
            .client
            .send(&self.op(&what), Method::HEAD, &url, HeaderMap::new(), None)
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.client.status_error(&what, resp).await),
        }
    }

    async fn known_layers(&self, diff_id: &Digest) -> Vec<KnownLayer> {
        let what = format!("layer index entry {diff_id}");
        let Ok(url) = self.client.remote().base().join(&format!("wharf/v1/layers/{diff_id}")) else {
            return Vec::new();
        };
        let resp = match self
            .client
            .send_once(
                &self.op(&what),
                Method::GET,
                url.as_str(),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await
        {
            Ok(r) if r.status() == StatusCode::OK => r,
            // No index (another registry answers 404), or no entry the caller may see.
            Ok(_) => return Vec::new(),
            Err(e) => {
                tracing::debug!(error = %e, "layer index unavailable");
                return Vec::new();
            }
        };
        // A small JSON answer: at most 1 MiB of it is read.
        let mut resp = resp;
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) if body.len() + c.len() <= 1 << 20 => body.extend_from_slice(&c),
                Ok(None) => return parse_known_layers(&body, diff_id),
                Ok(Some(_)) | Err(_) => return Vec::new(),
            }
        }
    }

    fn mount_target(&self) -> Option<MountOrigin> {
        Some(MountOrigin {
            registry: self.client.registry().to_owned(),
            repository: self.client.repository().to_owned(),
        })
    }

    async fn try_mount(&self, desc: &Descriptor, origin: &MountOrigin) -> Result<bool, Error> {
        if origin.registry != self.client.registry() || origin.repository == self.client.repository() {
            return Ok(false);
        }
        let what = format!("mount of blob {} from {}", desc.digest, origin.repository);
        let scopes = vec![
            self.client.push_scope(),
            format!("repository:{}:pull", origin.repository),
        ];
        let op = Op {
            what: &what,
            scopes: &scopes,
        };
        let mut url = self.client.resolve(&self.client.url("blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", &desc.digest.to_string())
            .append_pair("from", &origin.repository);
        let resp = self
            .client
            .send(&op, Method::POST, url.as_str(), HeaderMap::new(), None)
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                // Not mounted, but an upload session was opened: keep it for the upload.
                let loc = self.location(&what, &resp)?;
                let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
                sessions.insert(desc.digest.clone(), loc);
                Ok(false)
            }
            _ => Err(self.client.status_error(&what, resp).await),
        }
    }

    async fn put_blob(&self, desc: &Descriptor, stream: BlobStream) -> Result<(), Error> {
        let what = format!("blob {}", desc.digest);
        let reused = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions.remove(&desc.digest)
        };
        let location = match reused {
            Some(l) => l,
            None => self.start_upload(&what).await?,
        };
        // The copy engine's stream is verified against `desc` on its way: committed under that digest.
        self.upload(&what, location, stream, Some(&desc.digest)).await?;
        Ok(())
    }

    fn compresses_layers(&self) -> bool {
        true
    }

    async fn put_new_blob(&self, stream: BlobStream) -> Result<(Digest, u64), Error> {
        let what = "compressed layer".to_owned();
        let location = self.start_upload(&what).await?;
        self.upload(&what, location, stream, None).await
    }

    async fn put_manifest(&self, manifest: &Manifest, top_level: bool) -> Result<(), Error> {
        let r = &self.client.reference;
        let reference = match (&r.tag, top_level) {
            (Some(tag), true) => tag.clone(),
            _ => manifest.digest.to_string(),
        };
        if top_level
            && let Some(d) = &r.digest
            && *d != manifest.digest
        {
            return Err(Error::Manifest {
                what: format!("{} at {}", manifest.digest, r.registry),
                reason: format!("the destination names digest {d}, which is not this manifest's"),
            });
        }
        let what = format!("manifest {}:{reference}", r.repository);
        let mut headers = HeaderMap::new();
        let content_type = HeaderValue::from_str(&manifest.media_type).map_err(|_| Error::Manifest {
            what: what.clone(),
            reason: format!("media type {:?} is not a valid header", manifest.media_type),
        })?;
        headers.insert(header::CONTENT_TYPE, content_type);
        let url = self.client.url(&format!("manifests/{reference}"));
        let resp = self
            .client
            .send(
                &self.op(&what),
                Method::PUT,
                &url,
                headers,
                Some(manifest.bytes.clone()),
            )
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.client.status_error(&what, resp).await);
        }
        Ok(())
    }
}
