//! A client for one upstream registry: manifests and blobs over the distribution API, with the bearer-token and
//! basic auth flows, token caching, bounded retries with backoff for connection failures and 5xx, and timeouts.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use wharf_oci::{Digest, media};

use crate::body::BodyError;
use crate::config::UpstreamConfig;
use wharf_oci::auth::{Challenge, TokenCache, parse_challenge};

/// Attempts for one request when the upstream cannot be reached or answers 5xx.
const ATTEMPTS: u32 = 3;
const BACKOFF: Duration = Duration::from_millis(200);

/// Every manifest type the registry stores, so the upstream never falls back to schema1.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{url} answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("token request to {realm} failed: {reason}")]
    Token { realm: String, reason: String },
    #[error("{url}: content digest is {computed}, expected {expected}")]
    DigestMismatch {
        url: String,
        expected: Digest,
        computed: Digest,
    },
    #[error("invalid upstream URL {0:?}")]
    BadUrl(String),
    #[error("{url}: {reason}")]
    Protocol { url: String, reason: String },
}

impl UpstreamError {
    /// True when the upstream is down, overloaded or rate-limiting: the case for serving what is cached.
    pub fn is_outage(&self) -> bool {
        match self {
            UpstreamError::Unreachable { .. } | UpstreamError::Token { .. } => true,
            UpstreamError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// A manifest fetched from upstream and verified.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

pub struct Upstream {
    pub config: UpstreamConfig,
    base: String,
    http: reqwest::Client,
    tokens: TokenCache,
}

impl Upstream {
    pub fn new(config: UpstreamConfig, timeout: Duration) -> Result<Self, UpstreamError> {
        let base = config.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(UpstreamError::BadUrl(config.url.clone()));
        }
        // reqwest is built without a bundled crypto provider; ring is the lean one. A second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| UpstreamError::Unreachable {
                url: base.clone(),
                source: e,
            })?;
        Ok(Upstream {
            config,
            base,
            http,
            tokens: TokenCache::default(),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    fn scope(repo: &str) -> String {
        format!("repository:{repo}:pull")
    }

    /// Sends a request with auth, retrying outages with backoff. `extra` headers are added to every attempt.
    async fn send(&self, method: Method, path: &str, repo: &str, extra: HeaderMap) -> Result<Response, UpstreamError> {
        let url = format!("{}{}", self.base, path);
        let scope = Self::scope(repo);
        let mut authed_once = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.http.request(method.clone(), &url).headers(extra.clone());
            if let Some(token) = self.tokens.get(&scope) {
                req = req.bearer_auth(token);
            } else if let (Some(u), true) = (&self.config.username, authed_once) {
                req = req.basic_auth(u, self.config.password.as_deref());
            }
            let result = req.send().await;
            let resp = match result {
                Ok(r) => r,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::debug!(%url, error = %e, attempt, "upstream request failed; retrying");
                    tokio::time::sleep(BACKOFF * 2u32.pow(attempt - 1)).await;
                    continue;
                }
                Err(e) => return Err(UpstreamError::Unreachable { url, source: e }),
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !authed_once {
                authed_once = true;
                let challenge = resp
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                match challenge {
                    Some(Challenge::Bearer {
                        realm,
                        service,
                        scope: s,
                    }) => {
                        self.fetch_token(&realm, service.as_deref(), s.as_deref().unwrap_or(&scope), &scope)
                            .await?;
                    }
                    Some(Challenge::Basic) if self.config.username.is_some() => {}
                    _ => return Err(UpstreamError::Status { url, status }),
                }
                attempt -= 1;
                continue;
            }
            if status.is_server_error() && attempt < ATTEMPTS {
                tracing::debug!(%url, %status, attempt, "upstream error; retrying");
                tokio::time::sleep(BACKOFF * 2u32.pow(attempt - 1)).await;
                continue;
            }
            return Ok(resp);
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        key: &str,
    ) -> Result<(), UpstreamError> {
        let mut url = reqwest::Url::parse(realm).map_err(|e| UpstreamError::Token {
            realm: realm.to_owned(),
            reason: e.to_string(),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = self.http.get(url);
        if let Some(u) = &self.config.username {
            req = req.basic_auth(u, self.config.password.as_deref());
        }
        let token_err = |reason: String| UpstreamError::Token {
            realm: realm.to_owned(),
            reason,
        };
        let resp = req.send().await.map_err(|e| token_err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(token_err(format!("status {}", resp.status())));
        }
        let body = resp.bytes().await.map_err(|e| token_err(e.to_string()))?;
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| token_err(e.to_string()))?;
        let token = t
            .token
            .or(t.access_token)
            .ok_or_else(|| token_err("no token in the response".into()))?;
        self.tokens.put(key, token, t.expires_in);
        Ok(())
    }

    fn manifest_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        h
    }

    fn status_error(&self, path: &str, status: StatusCode) -> UpstreamError {
        UpstreamError::Status {
            url: format!("{}{}", self.base, path),
            status,
        }
    }

    /// The digest a tag points at upstream (`HEAD`), or `None` if upstream does not know it. Falls back to a GET
    /// when the upstream sends no `Docker-Content-Digest`.
    pub async fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>, UpstreamError> {
        let path = format!("/v2/{repo}/manifests/{tag}");
        let resp = self.send(Method::HEAD, &path, repo, Self::manifest_headers()).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            s if !s.is_success() => return Err(self.status_error(&path, s)),
            _ => {}
        }
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        match header_digest {
            Some(d) => Ok(Some(d)),
            None => Ok(self.manifest(repo, tag, None).await?.map(|m| m.digest)),
        }
    }

    /// Fetches a manifest by tag or digest. With `expected`, the body must hash to it.
    pub async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<Option<FetchedManifest>, UpstreamError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self.send(Method::GET, &path, repo, Self::manifest_headers()).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            s if !s.is_success() => return Err(self.status_error(&path, s)),
            _ => {}
        }
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_owned());
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let url = format!("{}{}", self.base, path);
        let body = resp.bytes().await.map_err(|e| UpstreamError::Unreachable {
            url: url.clone(),
            source: e,
        })?;
        // Verify against what we asked for, else against what the upstream claims; a tag with no claim is
        // addressed by its sha256.
        let want = expected.or(header_digest.as_ref());
        let digest = match want {
            Some(w) => {
                let computed = Digest::of(w.algorithm(), &body);
                if computed != *w {
                    return Err(UpstreamError::DigestMismatch {
                        url,
                        expected: w.clone(),
                        computed,
                    });
                }
                computed
            }
            None => Digest::sha256_of(&body),
        };
        let media_type = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_owned))
            .or(content_type)
            .unwrap_or_else(|| media::OCI_MANIFEST.to_owned());
        Ok(Some(FetchedManifest {
            digest,
            media_type,
            body,
        }))
    }

    /// Size of a blob upstream, or `None` if it does not have it.
    pub async fn blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, UpstreamError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self.send(Method::HEAD, &path, repo, HeaderMap::new()).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            // The header, not `content_length()`: for a HEAD response reqwest reports the (empty) body's length.
            s if s.is_success() => Ok(resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            s => Err(self.status_error(&path, s)),
        }
    }

    /// Starts a blob download from byte `offset`. Returns the response (200 from 0, 206 from `offset`), or `None`
    /// on 404. Redirects to storage (S3, CDN) are followed by the HTTP client.
    pub async fn blob(&self, repo: &str, digest: &Digest, offset: u64) -> Result<Option<Response>, UpstreamError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let mut h = HeaderMap::new();
        if offset > 0
            && let Ok(v) = HeaderValue::from_str(&format!("bytes={offset}-"))
        {
            h.insert(header::RANGE, v);
        }
        let resp = self.send(Method::GET, &path, repo, h).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(resp)),
            s => Err(self.status_error(&path, s)),
        }
    }

    /// Fetches bytes `start..end` (end exclusive) of a blob: exactly that range, or an error (a server that ignores
    /// `Range` and answers 200 is refused rather than read whole). `None` on 404. Each chunk also goes to `on_chunk`
    /// as it arrives.
    pub async fn blob_range(
        &self,
        repo: &str,
        digest: &Digest,
        start: u64,
        end: u64,
        on_chunk: &mut (dyn FnMut(Bytes) + Send),
    ) -> Result<Option<Bytes>, UpstreamError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&format!("bytes={start}-{}", end.saturating_sub(1))) {
            h.insert(header::RANGE, v);
        }
        let resp = self.send(Method::GET, &path, repo, h).await?;
        let url = format!("{}{}", self.base, path);
        match resp.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::OK if start == 0 && resp.content_length() == Some(end) => {}
            s => return Err(self.status_error(&path, s)),
        }
        let want = usize::try_from(end - start).unwrap_or(usize::MAX);
        let mut resp = resp;
        let read = crate::body::read_exact(&mut resp, want, |chunk| {
            on_chunk(chunk);
            std::future::ready(())
        })
        .await;
        match read {
            Ok(body) => Ok(Some(body)),
            Err(BodyError::Read(source)) => Err(UpstreamError::Unreachable { url, source }),
            Err(BodyError::TooLong) => Err(UpstreamError::Protocol {
                url,
                reason: format!("asked for {} bytes, got more", end - start),
            }),
            Err(BodyError::Short { got }) => Err(UpstreamError::Protocol {
                url,
                reason: format!("asked for {} bytes, got {got}", end - start),
            }),
        }
    }

    /// Lists tags upstream.
    pub async fn tags(&self, repo: &str) -> Result<Option<Vec<String>>, UpstreamError> {
        let path = format!("/v2/{repo}/tags/list");
        let resp = self.send(Method::GET, &path, repo, HeaderMap::new()).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            s if !s.is_success() => return Err(self.status_error(&path, s)),
            _ => {}
        }
        #[derive(Deserialize)]
        struct Tags {
            tags: Option<Vec<String>>,
        }
        let url = format!("{}{}", self.base, path);
        let body = resp
            .bytes()
            .await
            .map_err(|e| UpstreamError::Unreachable { url, source: e })?;
        let t: Tags = serde_json::from_slice(&body).unwrap_or(Tags { tags: None });
        let mut tags = t.tags.unwrap_or_default();
        tags.sort();
        Ok(Some(tags))
    }
}
