//! Pushing to a registry, in go-containerregistry's steps: check the blob exists (HEAD), mount it from the source
//! repository when the source is in the same registry, otherwise start an upload (POST) and stream the blob in one
//! PUT `?digest=`; manifests last.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use wharf_oci::Digest;
use wharf_oci::manifest::Descriptor;

use super::client::{Op, RegistryClient};
use crate::{BlobStream, Error, ImageDestination, Manifest, MountOrigin};

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
            .ok_or_else(|| Error::Status {
                what: what.to_owned(),
                registry: self.client.registry().to_owned(),
                status: resp.status().as_u16(),
                detail: ": upload started without a Location".into(),
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
        let mut url = self.client.resolve(&location)?;
        url.query_pairs_mut().append_pair("digest", &desc.digest.to_string());

        // The body cannot be replayed, so it is sent once, with auth the POST already obtained. A source or
        // verification error is kept aside so it, not hyper's "body error", is what the caller sees.
        let failure: Arc<Mutex<Option<Error>>> = Arc::default();
        let slot = failure.clone();
        let body = stream.map(move |item| {
            item.map_err(|e| {
                let msg = e.to_string();
                let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
                s.get_or_insert(e);
                std::io::Error::other(msg)
            })
        });
        let req = self
            .client
            .request(Method::PUT, url.as_str())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, desc.size)
            .body(reqwest::Body::wrap_stream(body));
        let sent = self.client.authorize(req, &self.scopes).send().await;
        let kept = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(e) = kept {
            return Err(e);
        }
        let resp = sent.map_err(|e| Error::Unreachable {
            what: what.clone(),
            registry: self.client.registry().to_owned(),
            cause: e,
        })?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.client.status_error(&what, resp).await);
        }
        Ok(())
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
