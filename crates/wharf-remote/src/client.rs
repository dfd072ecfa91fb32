//! One registry, as a client: its base URL, auth on 401 challenges (anonymous, bearer token, basic, an identity
//! token's refresh grant), one token cache, one retry policy (connection errors, 5xx, and 429 with `Retry-After`,
//! with exponential backoff) and one-line errors that carry the spec's error code. Every caller that talks to a
//! registry goes through [`Registry::send`]: the smart client, the mirror's upstreams, the P2P node's origin
//! fetches, `wharf preheat` and `wharf login`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use wharf_oci::auth::{Challenge, TokenCache, parse_challenge};

use crate::{Credentials, RemoteError};

/// Attempts for one request that can be replayed (no streamed body).
const ATTEMPTS: u32 = 4;
/// The first retry's wait; each next one doubles it.
const BACKOFF: Duration = Duration::from_millis(250);
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// How to reach a registry.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub credentials: Option<Credentials>,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time any one read of an answer may take.
    pub read_timeout: Duration,
    /// Certificates for the registry in Docker's `certs.d` layout (CA `*.crt`, client `*.cert` + `*.key`)
    /// [default: `/etc/docker/certs.d/<host[:port]>`, then `/etc/containers/certs.d/<host[:port]>`, when present].
    pub cert_dir: Option<PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            credentials: None,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(300),
            cert_dir: None,
        }
    }
}

/// Where Docker and podman keep a registry's certificates.
const CERTS_D: &[&str] = &["/etc/docker/certs.d", "/etc/containers/certs.d"];

/// A registry at a base URL (`https://host[:port]/`).
pub struct Registry {
    /// `host[:port]` as errors name it (`docker.io` for Docker Hub).
    name: String,
    base: reqwest::Url,
    http: reqwest::Client,
    /// For a registry assumed to speak plain HTTP (on loopback, or `--insecure`) that may speak TLS instead: its
    /// HTTPS base and the client for it, which verifies no certificate (as Docker treats such registries).
    tls_fallback: Option<(reqwest::Url, reqwest::Client)>,
    /// Switched to `tls_fallback`: the registry answered plain HTTP as a TLS server does.
    on_tls: AtomicBool,
    /// The switch was tried (once per registry).
    tls_probed: AtomicBool,
    credentials: Option<Credentials>,
    tokens: TokenCache,
    /// Set once the registry answered a `Basic` challenge.
    basic: AtomicBool,
    /// One token fetch at a time: requests that all get a 401 at once share the first one's token.
    auth_lock: tokio::sync::Mutex<()>,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// What a request is about, for its error message (`blob sha256:...`, `manifest v1`).
pub struct Op<'a> {
    pub what: &'a str,
    /// Token scopes the request needs (`repository:NAME:pull,push`).
    pub scopes: &'a [String],
}

/// The token scope to pull from `repository`.
pub fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

/// The token scope to push to `repository`.
pub fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

impl Registry {
    /// A registry at `base` (scheme, host and port; a path is ignored), named `name` in errors.
    pub fn new(name: &str, base: &str, options: &ClientOptions) -> Result<Registry, RemoteError> {
        let bad = |reason: String| RemoteError::BadName {
            input: base.to_owned(),
            reason,
        };
        let mut url = reqwest::Url::parse(base).map_err(|e| bad(format!("bad registry URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad("a registry URL is http:// or https:// and a host".into()));
        }
        url.set_path("/");
        url.set_query(None);
        let builder = match &options.cert_dir {
            None => crate::http::client_builder(),
            Some(dir) => {
                let bad = |reason: String| RemoteError::Certificates {
                    dir: dir.display().to_string(),
                    reason,
                };
                let certs = crate::http::CertDir::read(dir)
                    .map_err(bad)?
                    .ok_or_else(|| bad("no such directory".into()))?;
                crate::http::client_builder_with(&certs).map_err(bad)?
            }
        };
        let http = builder
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .build()
            .map_err(|e| RemoteError::Unreachable {
                what: "client setup".into(),
                registry: name.to_owned(),
                cause: e,
            })?;
        Ok(Registry {
            name: name.to_owned(),
            base: url,
            http,
            tls_fallback: None,
            on_tls: AtomicBool::new(false),
            tls_probed: AtomicBool::new(false),
            credentials: options.credentials.clone(),
            tokens: TokenCache::default(),
            basic: AtomicBool::new(false),
            auth_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The registry an image reference names: HTTPS, unless `plain_http` or the registry is on loopback (as Docker
    /// does); Docker Hub's API host for `docker.io`. A plain-HTTP registry that turns out to speak TLS (a `wharf
    /// serve --tls-cert` on 127.0.0.1) is then reached over HTTPS, its certificate not verified, as Docker does for
    /// the insecure registries it allows.
    pub fn for_reference(
        reference: &crate::Reference,
        plain_http: bool,
        options: &ClientOptions,
    ) -> Result<Registry, RemoteError> {
        let plain = plain_http || reference.is_loopback();
        let scheme = if plain { "http" } else { "https" };
        // The registry's certificates: the directory given, else Docker's or podman's for this host, if any.
        let found;
        let options = match &options.cert_dir {
            Some(_) => options,
            None => match CERTS_D
                .iter()
                .map(|d| Path::new(d).join(&reference.registry))
                .find(|d| d.is_dir())
            {
                Some(dir) => {
                    found = ClientOptions {
                        cert_dir: Some(dir),
                        ..options.clone()
                    };
                    &found
                }
                None => options,
            },
        };
        let mut registry = Registry::new(
            &reference.registry,
            &format!("{scheme}://{}/", reference.api_host()),
            options,
        )?;

        if plain {
            let https = reqwest::Url::parse(&format!("https://{}/", reference.api_host())).map_err(|e| {
                RemoteError::BadName {
                    input: reference.api_host().to_owned(),
                    reason: e.to_string(),
                }
            })?;
            let client = crate::http::client_builder_trusting_any_certificate()
                .connect_timeout(options.connect_timeout)
                .read_timeout(options.read_timeout)
                .build()
                .map_err(|e| RemoteError::Unreachable {
                    what: "client setup".into(),
                    registry: reference.registry.clone(),
                    cause: e,
                })?;
            registry.tls_fallback = Some((https, client));
        }
        Ok(registry)
    }

    /// The base URL requests go to now (the HTTPS one once a plain-HTTP registry turned out to speak TLS).
    fn base_now(&self) -> &reqwest::Url {
        match &self.tls_fallback {
            Some((https, _)) if self.on_tls.load(Ordering::Relaxed) => https,
            _ => &self.base,
        }
    }

    /// After a request to the plain-HTTP base failed once the connection was made (a TLS server answers plain HTTP
    /// with bytes that are not HTTP): asks the HTTPS base once; if it answers, every later request goes there. The
    /// URL to retry with, or `None`.
    async fn switch_to_tls(&self, error: &reqwest::Error, url: &str) -> Option<String> {
        let (https, client) = self.tls_fallback.as_ref()?;
        if error.is_connect()
            || error.is_timeout()
            || self.on_tls.load(Ordering::Relaxed)
            || !url.starts_with(self.base.as_str())
            || self.tls_probed.swap(true, Ordering::Relaxed)
        {
            return None;
        }
        let probe = client.get(format!("{https}v2/")).send().await.ok()?;
        tracing::info!(registry = %self.name, status = %probe.status(), "the registry speaks TLS: switching to HTTPS");
        self.on_tls.store(true, Ordering::Relaxed);
        Some(format!("{https}{}", &url[self.base.as_str().len()..]))
    }

    /// `host[:port]` as errors name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The base URL, ending in `/`.
    pub fn base(&self) -> &reqwest::Url {
        self.base_now()
    }

    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// `/v2/<repository>/<rest>` as an absolute URL.
    pub fn url(&self, repository: &str, rest: &str) -> String {
        format!("{}v2/{repository}/{rest}", self.base_now())
    }

    /// Resolves a `Location` the registry answered (absolute or relative).
    pub fn resolve(&self, location: &str) -> Result<reqwest::Url, RemoteError> {
        self.base_now().join(location).map_err(|e| RemoteError::Protocol {
            what: format!("location {location:?}"),
            registry: self.name.clone(),
            reason: e.to_string(),
        })
    }

    /// Adds what we know of auth to a request: a cached token for these scopes, or basic credentials.
    pub fn authorize(&self, req: RequestBuilder, scopes: &[String]) -> RequestBuilder {
        if let Some(token) = self.tokens.get(&scopes.join(" ")) {
            req.bearer_auth(token)
        } else if let (Some(c), true) = (&self.credentials, self.basic.load(Ordering::Relaxed)) {
            req.basic_auth(&c.username, Some(&c.password))
        } else {
            req
        }
    }

    /// A bare request with the registry's HTTP client (timeouts, user agent); [`Registry::authorize`] adds auth.
    pub fn request(&self, method: Method, url: &str) -> RequestBuilder {
        match &self.tls_fallback {
            // Only the registry's own host goes without certificate checks: a token realm elsewhere is verified.
            Some((https, client)) if self.on_tls.load(Ordering::Relaxed) && url.starts_with(https.as_str()) => {
                client.request(method, url)
            }
            _ => self.http.request(method, url),
        }
    }

    /// The error for a request that could not be sent or whose answer could not be read.
    pub fn unreachable(&self, what: &str, cause: reqwest::Error) -> RemoteError {
        RemoteError::Unreachable {
            what: what.to_owned(),
            registry: self.name.clone(),
            cause,
        }
    }

    /// Sends a replayable request: auth on the first 401, retries with backoff on connection errors, 5xx and 429.
    pub async fn send(
        &self,
        op: &Op<'_>,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response, RemoteError> {
        let mut authed = false;
        let mut attempt = 0;
        let mut url = url.to_owned();
        loop {
            attempt += 1;
            let mut req = self.request(method.clone(), &url).headers(headers.clone());
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let used = self.tokens.get(&op.scopes.join(" "));
            let resp = match self.authorize(req, op.scopes).send().await {
                Ok(r) => r,
                Err(e) if let Some(tls) = self.switch_to_tls(&e, &url).await => {
                    url = tls;
                    attempt -= 1;
                    continue;
                }
                Err(e) if attempt < ATTEMPTS => {
                    tracing::debug!(url, error = %e, attempt, "request failed; retrying");
                    tokio::time::sleep(BACKOFF * 2u32.pow(attempt - 1)).await;
                    continue;
                }
                Err(e) => return Err(self.unreachable(op.what, e)),
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !authed {
                authed = true;
                self.authenticate(op, &resp, used).await?;
                attempt -= 1;
                continue;
            }
            if (status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) && attempt < ATTEMPTS {
                let wait = retry_after(&resp).unwrap_or(BACKOFF * 2u32.pow(attempt - 1));
                tracing::debug!(url, %status, attempt, "registry busy or failing; retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Sends a request once (plus one more time after answering a 401 challenge): for uploads whose failures the
    /// caller resumes itself from the registry's upload status, where a blind replay at the same offset is wrong.
    pub async fn send_once(
        &self,
        op: &Op<'_>,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, RemoteError> {
        let mut authed = false;
        let mut url = url.to_owned();
        loop {
            let req = self
                .request(method.clone(), &url)
                .headers(headers.clone())
                .body(body.clone());
            let used = self.tokens.get(&op.scopes.join(" "));
            let resp = match self.authorize(req, op.scopes).send().await {
                Ok(r) => r,
                Err(e) => match self.switch_to_tls(&e, &url).await {
                    Some(tls) => {
                        url = tls;
                        continue;
                    }
                    None => return Err(self.unreachable(op.what, e)),
                },
            };
            if resp.status() == StatusCode::UNAUTHORIZED && !authed {
                authed = true;
                self.authenticate(op, &resp, used).await?;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Answers a 401: fetches a token for the operation's scopes, or switches to basic auth. `used` is the token
    /// the refused request carried; a different one cached meanwhile by a concurrent request is taken as is.
    pub async fn authenticate(&self, op: &Op<'_>, resp: &Response, used: Option<String>) -> Result<(), RemoteError> {
        let _one_at_a_time = self.auth_lock.lock().await;
        let key = op.scopes.join(" ");
        if let Some(current) = self.tokens.get(&key)
            && Some(&current) != used.as_ref()
        {
            return Ok(());
        }
        let challenge = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        let fail = |reason: String| RemoteError::Auth {
            what: op.what.to_owned(),
            registry: self.name.clone(),
            reason,
        };
        match challenge {
            Some(Challenge::Bearer { realm, service, .. }) => {
                let mut url = reqwest::Url::parse(&realm).map_err(|e| fail(format!("bad realm {realm:?}: {e}")))?;
                // Credentials go to a token realm over HTTPS, or to the registry's own host: a registry (or whoever
                // answers for it) must not be able to send them in clear text to a host of its choosing.
                if self.credentials.is_some()
                    && url.scheme() != "https"
                    && (url.host_str() != self.base_now().host_str()
                        || url.port_or_known_default() != self.base_now().port_or_known_default())
                {
                    return Err(fail(format!(
                        "the token realm {realm} is plain HTTP on another host than the registry; not sending the \
                         credentials there"
                    )));
                }
                let req = match self.credentials.as_ref().and_then(Credentials::identity_token) {
                    // An identity token is an OAuth2 refresh token: POST a form to the realm (as Docker does).
                    Some(refresh) => {
                        let mut form = url.clone();
                        form.set_query(None);
                        {
                            let mut q = form.query_pairs_mut();
                            q.append_pair("grant_type", "refresh_token")
                                .append_pair("refresh_token", refresh)
                                .append_pair("client_id", "wharf");
                            if let Some(s) = &service {
                                q.append_pair("service", s);
                            }
                            if !op.scopes.is_empty() {
                                q.append_pair("scope", &op.scopes.join(" "));
                            }
                        }
                        self.http
                            .post(url)
                            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                            .body(form.query().unwrap_or_default().to_owned())
                    }
                    None => {
                        {
                            let mut q = url.query_pairs_mut();
                            if let Some(s) = &service {
                                q.append_pair("service", s);
                            }
                            for s in op.scopes {
                                q.append_pair("scope", s);
                            }
                        }
                        let req = self.http.get(url);
                        match &self.credentials {
                            Some(c) => req.basic_auth(&c.username, Some(&c.password)),
                            None => req,
                        }
                    }
                };
                let resp = match req.send().await {
                    Ok(r) => r,
                    // The token service is down: an outage, like the registry being down.
                    Err(e) => return Err(self.unreachable(&format!("{} (token endpoint {realm})", op.what), e)),
                };
                let status = resp.status();
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    return Err(RemoteError::Status {
                        what: format!("{} (token endpoint {realm})", op.what),
                        registry: self.name.clone(),
                        status: status.as_u16(),
                        code: None,
                        message: None,
                    });
                }
                if !status.is_success() {
                    return Err(fail(format!("token endpoint {realm} answered {status}")));
                }
                let body = resp.bytes().await.map_err(|e| self.unreachable(op.what, e))?;
                let t: TokenResponse =
                    serde_json::from_slice(&body).map_err(|e| fail(format!("bad token response: {e}")))?;
                let token = t
                    .token
                    .or(t.access_token)
                    .ok_or_else(|| fail("no token in the token response".into()))?;
                self.tokens.put(&key, token, t.expires_in);
                Ok(())
            }
            Some(Challenge::Basic) if self.credentials.is_some() => {
                self.basic.store(true, Ordering::Relaxed);
                Ok(())
            }
            Some(Challenge::Basic) => Err(fail(
                "the registry asks for a username and password; none were given".into(),
            )),
            None => Err(fail("401 without a usable WWW-Authenticate challenge".into())),
        }
    }

    /// Checks that the registry speaks the distribution API and accepts our credentials: `GET /v2/` through the
    /// usual auth flow (anonymous, then the challenge's basic auth or a token from its realm, with no scope), as
    /// `docker login` does.
    pub async fn ping(&self) -> Result<(), RemoteError> {
        let op = Op {
            what: "GET /v2/",
            scopes: &[],
        };
        let url = format!("{}v2/", self.base_now());
        let resp = self.send(&op, Method::GET, &url, HeaderMap::new(), None).await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED => Err(RemoteError::Auth {
                what: op.what.to_owned(),
                registry: self.name.clone(),
                reason: if self.credentials.is_some() {
                    "the registry refused the credentials (HTTP 401)".into()
                } else {
                    "the registry requires credentials (HTTP 401)".into()
                },
            }),
            _ => Err(self.status_error(op.what, resp).await),
        }
    }

    /// The one-line error for an unexpected status, with the spec error code and message when the body has them.
    pub async fn status_error(&self, what: &str, resp: Response) -> RemoteError {
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        let entry = serde_json::from_slice::<ErrorBody>(&body)
            .ok()
            .and_then(|b| b.errors.into_iter().next());
        RemoteError::Status {
            what: what.to_owned(),
            registry: self.name.clone(),
            status,
            code: entry.as_ref().map(|e| e.code.clone()).filter(|c| !c.is_empty()),
            message: entry.map(|e| e.message).filter(|m| !m.is_empty()),
        }
    }
}

fn retry_after(resp: &Response) -> Option<Duration> {
    let secs: u64 = resp
        .headers()
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_keep_scheme_host_and_port_only() {
        let o = ClientOptions::default();
        let r = Registry::new("h", "https://registry.example:5000/some/path?x=1", &o).unwrap();
        assert_eq!(r.base().as_str(), "https://registry.example:5000/");
        assert_eq!(
            r.url("a/b", "manifests/v1"),
            "https://registry.example:5000/v2/a/b/manifests/v1"
        );
        assert!(Registry::new("h", "ftp://x", &o).is_err());
        assert!(Registry::new("h", "registry.example", &o).is_err());
    }
}
