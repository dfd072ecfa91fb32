//! The registry transport (`docker://REF`): the distribution API as a source (manifests with `Accept` for all four
//! manifest types, blobs) and as a destination (HEAD, cross-repository mount, POST + streamed PUT, manifest PUT),
//! over `wharf-remote`'s registry client. Credentials where the Docker tools keep them are `wharf-remote`'s too,
//! re-exported here.

mod client;
mod dest;
mod source;

pub use client::{RegistryClient, RegistryOptions};
pub use dest::RegistryDestination;
pub use source::RegistrySource;
pub use wharf_remote::docker_config::DockerConfig;
pub use wharf_remote::{
    CredentialStore, Credentials, DOCKER_HUB_KEY, IDENTITY_TOKEN_USER, MANIFEST_ACCEPT, erase_credentials,
    lookup_credentials, normalize_registry, server_url, store_credentials,
};
