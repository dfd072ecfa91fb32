//! One registry, as a client: base URL (HTTPS unless loopback or `--insecure`), auth on 401 challenges
//! (anonymous, bearer token, basic), retries with backoff on connection errors, 5xx and 429, and one-line errors
//! that carry the spec's error code.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::auth::{Challenge, Credentials, TokenCache, parse_challenge};
use crate::{Error, Reference};

/// Attempts for one request that can be replayed (no streamed body).
const ATTEMPTS: u32 = 4;
const BACKOFF: Duration = Duration::from_millis(250);
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Allow plain HTTP to a non-loopback registry.
    pub insecure: bool,
    pub credentials: Option<Credentials>,
}

pub struct RegistryClient {
    pub(crate) reference: Reference,
    base: reqwest::Url,
    http: reqwest::Client,
    credentials: Option<Credentials>,
    tokens: TokenCache,
    /// Set once the registry answered a `Basic` challenge.
    basic: AtomicBool,
    /// One token fetch at a time: blobs that all get a 401 at once share the first one's token.
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
pub(crate) struct Op<'a> {
    pub what: &'a str,
    /// Token scopes the request needs (`repository:NAME:pull,push`).
    pub scopes: &'a [String],
}

impl RegistryClient {
    pub fn new(reference: Reference, options: &RegistryOptions) -> Result<RegistryClient, Error> {
        let scheme = if options.insecure || reference.is_loopback() {
            "http"
        } else {
            "https"
        };
        let base =
            reqwest::Url::parse(&format!("{scheme}://{}/", reference.api_host())).map_err(|e| Error::BadName {
                input: reference.to_string(),
                reason: format!("bad registry host: {e}"),
            })?;
        // reqwest is built without a bundled crypto provider; ring is the lean one. A second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(300))
            .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Unreachable {
                what: "client setup".into(),
                registry: reference.registry.clone(),
                cause: e,
            })?;
        Ok(RegistryClient {
            reference,
            base,
            http,
            credentials: options.credentials.clone(),
            tokens: TokenCache::default(),
            basic: AtomicBool::new(false),
            auth_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn registry(&self) -> &str {
        &self.reference.registry
    }

    pub fn repository(&self) -> &str {
        &self.reference.repository
    }

    /// `/v2/<repo>/<rest>` as an absolute URL.
    pub(crate) fn url(&self, rest: &str) -> String {
        format!("{}v2/{}/{rest}", self.base, self.reference.repository)
    }

    /// Resolves an upload `Location` (absolute or relative).
    pub(crate) fn resolve(&self, location: &str) -> Result<reqwest::Url, Error> {
        self.base.join(location).map_err(|e| Error::Status {
            what: format!("upload location {location:?}"),
            registry: self.registry().to_owned(),
            status: 202,
            detail: format!(": {e}"),
        })
    }

    pub(crate) fn pull_scope(&self) -> String {
        format!("repository:{}:pull", self.reference.repository)
    }

    pub(crate) fn push_scope(&self) -> String {
        format!("repository:{}:pull,push", self.reference.repository)
    }

    /// Adds what we know of auth to a request: a cached token for these scopes, or basic credentials.
    pub(crate) fn authorize(&self, req: RequestBuilder, scopes: &[String]) -> RequestBuilder {
        if let Some(token) = self.tokens.get(&scopes.join(" ")) {
            req.bearer_auth(token)
        } else if let (Some(c), true) = (&self.credentials, self.basic.load(Ordering::Relaxed)) {
            req.basic_auth(&c.username, Some(&c.password))
        } else {
            req
        }
    }

    pub(crate) fn request(&self, method: Method, url: &str) -> RequestBuilder {
        self.http.request(method, url)
    }

    /// Sends a replayable request: auth on the first 401, retries with backoff on connection errors, 5xx and 429.
    pub(crate) async fn send(
        &self,
        op: &Op<'_>,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response, Error> {
        let mut authed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.request(method.clone(), url).headers(headers.clone());
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            let used = self.tokens.get(&op.scopes.join(" "));
            let resp = match self.authorize(req, op.scopes).send().await {
                Ok(r) => r,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::debug!(url, error = %e, attempt, "request failed; retrying");
                    tokio::time::sleep(BACKOFF * 2u32.pow(attempt - 1)).await;
                    continue;
                }
                Err(e) => {
                    return Err(Error::Unreachable {
                        what: op.what.to_owned(),
                        registry: self.registry().to_owned(),
                        cause: e,
                    });
                }
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
    pub(crate) async fn send_once(
        &self,
        op: &Op<'_>,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, Error> {
        let mut authed = false;
        loop {
            let req = self
                .request(method.clone(), url)
                .headers(headers.clone())
                .body(body.clone());
            let used = self.tokens.get(&op.scopes.join(" "));
            let resp = self
                .authorize(req, op.scopes)
                .send()
                .await
                .map_err(|e| Error::Unreachable {
                    what: op.what.to_owned(),
                    registry: self.registry().to_owned(),
                    cause: e,
                })?;
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
    pub(crate) async fn authenticate(&self, op: &Op<'_>, resp: &Response, used: Option<String>) -> Result<(), Error> {
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
        let fail = |reason: String| Error::Auth {
            what: op.what.to_owned(),
            registry: self.registry().to_owned(),
            reason,
        };
        match challenge {
            Some(Challenge::Bearer { realm, service, .. }) => {
                let mut url = reqwest::Url::parse(&realm).map_err(|e| fail(format!("bad realm {realm:?}: {e}")))?;
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
                let resp = req
                    .send()
                    .await
                    .map_err(|e| fail(format!("token endpoint {realm}: {e}")))?;
                if !resp.status().is_success() {
                    return Err(fail(format!("token endpoint {realm} answered {}", resp.status())));
                }
                let body = resp.bytes().await.map_err(|e| fail(e.to_string()))?;
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
    pub async fn ping(&self) -> Result<(), Error> {
        let op = Op {
            what: "GET /v2/",
            scopes: &[],
        };
        let url = format!("{}v2/", self.base);
        let resp = self.send(&op, Method::GET, &url, HeaderMap::new(), None).await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED => Err(Error::Auth {
                what: op.what.to_owned(),
                registry: self.registry().to_owned(),
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
    pub(crate) async fn status_error(&self, what: &str, resp: Response) -> Error {
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        let detail = serde_json::from_slice::<ErrorBody>(&body)
            .ok()
            .and_then(|b| b.errors.into_iter().next())
            .map(|e| format!(" {}: {}", e.code, e.message))
            .unwrap_or_default();
        Error::Status {
            what: what.to_owned(),
            registry: self.registry().to_owned(),
            status,
            detail,
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

    fn base(reference: &str, insecure: bool) -> String {
        let options = RegistryOptions {
            insecure,
            credentials: None,
        };
        let r = Reference::parse(reference).unwrap();
        RegistryClient::new(r, &options).unwrap().base.to_string()
    }

    #[test]
    fn plain_http_only_for_loopback_or_insecure() {
        assert_eq!(base("127.0.0.1:5000/a", false), "http://127.0.0.1:5000/");
        assert_eq!(base("localhost/a", false), "http://localhost/");
        assert_eq!(base("[::1]:5000/a", false), "http://[::1]:5000/");
        assert_eq!(base("registry.example:5000/a", false), "https://registry.example:5000/");
        assert_eq!(base("registry.example:5000/a", true), "http://registry.example:5000/");
        assert_eq!(base("alpine", false), "https://registry-1.docker.io/");
    }
}
