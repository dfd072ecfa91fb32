/*!
Pure OCI types shared by every wharf crate. Nothing here does I/O.

- [`Digest`] and [`DigestHasher`]: `algorithm:hex` content addresses (sha256, sha512) and the streaming
  hasher that produces them; a hasher's state can be saved and restored so an upload resumes after a restart.
- [`name`]: the distribution-spec grammars for repository names and tags.
- [`media`]: media type constants and the manifest kinds a registry stores.
- [`manifest`]: a lenient view of any manifest or index (OCI or Docker schema2) that lists what it references.
- [`ErrorCode`]: the distribution-spec error codes with their HTTP status, shared by server and client.
- [`route`]: the `/v2/...` path grammar, parsed into a [`route::Route`].
- [`auth`]: `WWW-Authenticate` challenges and a bearer-token cache, for the registry clients.
*/

pub mod auth;
pub mod digest;
pub mod error_code;
pub mod manifest;
pub mod media;
pub mod name;
pub mod query;
pub mod route;

pub use digest::{Algorithm, Digest, DigestError, DigestHasher};
pub use error_code::{ErrorBody, ErrorCode, ErrorInfo};
