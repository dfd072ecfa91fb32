//! One repository of a registry, as the smart client talks to it: the registry client of `wharf-remote` at the
//! reference's registry (HTTPS unless loopback or `--insecure`), with the repository's pull and push scopes.

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, Response};
use wharf_remote::{ClientOptions, Registry};

pub(crate) use wharf_remote::Op;

use crate::{Credentials, Error, Reference};

#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Allow plain HTTP to a non-loopback registry.
    pub insecure: bool,
    pub credentials: Option<Credentials>,
    /// The registry's certificates in Docker's `certs.d` layout [default: `/etc/docker/certs.d/<host>` if present].
    pub cert_dir: Option<std::path::PathBuf>,
}

pub struct RegistryClient {
    pub(crate) reference: Reference,
    remote: Registry,
}

impl RegistryClient {
    pub fn new(reference: Reference, options: &RegistryOptions) -> Result<RegistryClient, Error> {
        let client_options = ClientOptions {
            credentials: options.credentials.clone(),
            cert_dir: options.cert_dir.clone(),
            ..ClientOptions::default()
        };
        let remote = Registry::for_reference(&reference, options.insecure, &client_options)?;
        Ok(RegistryClient { reference, remote })
    }

    /// The registry client underneath, for what is not about this repository.
    pub fn remote(&self) -> &Registry {
        &self.remote
    }

    pub fn registry(&self) -> &str {
        &self.reference.registry
    }

    pub fn repository(&self) -> &str {
        &self.reference.repository
    }

    /// `/v2/<repo>/<rest>` as an absolute URL.
    pub(crate) fn url(&self, rest: &str) -> String {
        self.remote.url(&self.reference.repository, rest)
    }

    /// Resolves an upload `Location` (absolute or relative).
    pub(crate) fn resolve(&self, location: &str) -> Result<reqwest::Url, Error> {
        Ok(self.remote.resolve(location)?)
    }

    pub(crate) fn pull_scope(&self) -> String {
        wharf_remote::pull_scope(&self.reference.repository)
    }

    pub(crate) fn push_scope(&self) -> String {
        wharf_remote::push_scope(&self.reference.repository)
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
        Ok(self.remote.send(op, method, url, headers, body).await?)
    }

    /// Sends a request once (plus once more after a 401 challenge): for uploads the caller resumes itself.
    pub(crate) async fn send_once(
        &self,
        op: &Op<'_>,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, Error> {
        Ok(self.remote.send_once(op, method, url, headers, body).await?)
    }

    /// Checks that the registry speaks the distribution API and accepts our credentials (`GET /v2/`).
    pub async fn ping(&self) -> Result<(), Error> {
        Ok(self.remote.ping().await?)
    }

    /// The one-line error for an unexpected status, with the spec error code and message when the body has them.
    pub(crate) async fn status_error(&self, what: &str, resp: Response) -> Error {
        self.remote.status_error(what, resp).await.into()
    }

    /// The error for a request that could not be sent or an answer that could not be read.
    pub(crate) fn unreachable(&self, what: &str, cause: reqwest::Error) -> Error {
        self.remote.unreachable(what, cause).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(reference: &str, insecure: bool) -> String {
        let options = RegistryOptions {
            insecure,
            credentials: None,
            cert_dir: None,
        };
        let r = Reference::parse(reference).unwrap();
        RegistryClient::new(r, &options).unwrap().remote.base().to_string()
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
