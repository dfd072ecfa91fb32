//! The registry transport (`docker://REF`): the distribution API as a source (manifests with `Accept` for all four
//! manifest types, blobs) and as a destination (HEAD, cross-repository mount, POST + streamed PUT, manifest PUT).
//! `docker_config` reads and writes credentials where the Docker tools keep them (`~/.docker/config.json` and
//! credential helpers).

mod auth;
mod client;
mod dest;
mod docker_config;
mod source;

pub use auth::{Credentials, IDENTITY_TOKEN_USER};
pub use client::{RegistryClient, RegistryOptions};
pub use dest::RegistryDestination;
pub use docker_config::{
    CredentialStore, DOCKER_HUB_KEY, DockerConfig, erase_credentials, lookup_credentials, normalize_registry,
    server_url, store_credentials,
};
pub use source::RegistrySource;

/// Every manifest type wharf copies, so a registry never falls back to schema1.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
