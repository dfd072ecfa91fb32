//! A registry that wharf stands in for (the mirror's upstreams, a P2P node's origins): a [`Registry`] named by the
//! host it stands for (`docker.io`, `ghcr.io`), read with pull scopes, where a missing object is `None`.

use std::time::Duration;

use bytes::Bytes;
use reqwest::Response;
use wharf_oci::Digest;

use crate::client::{ClientOptions, Registry, pull_scope};
use crate::pull::Manifest;
use crate::{Credentials, RemoteError, optional};

/// One upstream registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The registry host it stands for (`docker.io`, `ghcr.io`, ...): the `ns` value containerd sends, and the first
    /// component of mirrored repository names (`docker.io/library/alpine`).
    pub name: String,
    /// Base URL, e.g. `https://registry-1.docker.io`.
    pub url: String,
    /// Credentials for it. `None`: those the Docker tools keep for `name` (`config.json`, credential helpers), if
    /// any, else anonymous.
    pub credentials: Option<Credentials>,
}

pub struct Upstream {
    pub config: UpstreamConfig,
    /// `config.url` without a trailing `/`, as logs and the P2P scheduler's per-origin cap name it.
    url: String,
    registry: Registry,
}

impl Upstream {
    /// `timeout` bounds connecting and each read.
    pub fn new(config: UpstreamConfig, timeout: Duration) -> Result<Self, RemoteError> {
        let credentials = match &config.credentials {
            Some(c) => Some(c.clone()),
            None => crate::docker_config::lookup_credentials(&config.name).unwrap_or_else(|e| {
                tracing::warn!(upstream = %config.name, error = %e, "cannot read the Docker credentials; anonymous");
                None
            }),
        };
        let options = ClientOptions {
            credentials,
            connect_timeout: timeout,
            read_timeout: timeout,
            cert_dir: None,
        };
        let registry = Registry::new(&config.name, &config.url, &options)?;
        Ok(Upstream {
            url: config.url.trim_end_matches('/').to_owned(),
            config,
            registry,
        })
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The digest a tag points at upstream, or `None` if upstream does not know it.
    pub async fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>, RemoteError> {
        optional(self.registry.resolve_tag(repo, tag, &[pull_scope(repo)]).await)
    }

    /// Fetches a manifest by tag or digest. With `expected`, the body must hash to it.
    pub async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<Option<Manifest>, RemoteError> {
        optional(
            self.registry
                .manifest(repo, reference, expected, &[pull_scope(repo)])
                .await,
        )
    }

    /// Size of a blob upstream, or `None` if it does not have it.
    pub async fn blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, RemoteError> {
        optional(self.registry.blob_size(repo, digest, &[pull_scope(repo)]).await)
    }

    /// Starts a blob download from byte `offset` (200 from 0, 206 from `offset`), or `None` on 404.
    pub async fn blob(&self, repo: &str, digest: &Digest, offset: u64) -> Result<Option<Response>, RemoteError> {
        optional(self.registry.blob(repo, digest, offset, &[pull_scope(repo)]).await)
    }

    /// Exactly bytes `start..end` of a blob, or `None` on 404; each chunk also goes to `on_chunk` as it arrives.
    pub async fn blob_range(
        &self,
        repo: &str,
        digest: &Digest,
        start: u64,
        end: u64,
        on_chunk: &mut (dyn FnMut(Bytes) + Send),
    ) -> Result<Option<Bytes>, RemoteError> {
        optional(
            self.registry
                .blob_range(repo, digest, (start, end), &[pull_scope(repo)], on_chunk)
                .await,
        )
    }

    /// Lists tags upstream.
    pub async fn tags(&self, repo: &str) -> Result<Option<Vec<String>>, RemoteError> {
        optional(self.registry.tags(repo, &[pull_scope(repo)]).await)
    }
}
