/*!
The registry client of wharf: one remote registry over the OCI distribution API, used by every part that talks to
one (the smart client's transports, the mirror's upstreams, the P2P node's origin fetches, `wharf preheat`,
`wharf login`).

- [`client::Registry`]: base URL, `WWW-Authenticate` challenges (bearer, basic, identity tokens), the token cache,
  one retry policy (connection errors, 5xx, 429 with `Retry-After`) and one-line errors with the spec's error code.
- [`pull`]: manifests verified against their digest, tags, blob sizes, downloads from an offset, exact ranges.
- [`lists`]: whole tag lists and the catalog, followed page by page; manifest deletion.
- [`upstream::Upstream`]: a registry wharf stands in for, named by its host, where a missing object is `None`.
- [`reference::Reference`]: Docker's image reference grammar; [`hub`]: Docker Hub's names in one table.
- [`docker_config`]: credentials where the Docker tools keep them; [`Credentials`].
- [`body::read_exact`]: an answer of known length read chunk by chunk (also for P2P pieces and URL origins).
*/

pub mod body;
pub mod client;
mod credentials;
pub mod docker_config;
mod error;
pub mod http;
pub mod hub;
pub mod lists;
pub mod pull;
pub mod reference;
pub mod upstream;

pub use client::{ClientOptions, Op, Registry, pull_scope, push_scope};
pub use credentials::{Credentials, IDENTITY_TOKEN_USER};
pub use docker_config::{
    CredentialStore, DockerConfig, erase_credentials, lookup_credentials, normalize_registry, server_url,
    store_credentials,
};
pub use error::{ErrorKind, RemoteError, http_cause, optional};
pub use hub::{DOCKER_HUB, DOCKER_HUB_KEY, canonical_host, upstream_repository};
pub use pull::{MANIFEST_ACCEPT, Manifest};
pub use reference::Reference;
pub use upstream::{Upstream, UpstreamConfig};
