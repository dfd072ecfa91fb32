/*!
The pull-through mirror of wharf.

[`MirrorStore`] wraps the registry's local store: repositories named after an upstream (`docker.io/library/alpine`,
`ghcr.io/org/app`) are served from the mirror's own cache and filled from that upstream on demand; the rest are
local. Manifests by tag are revalidated with a `HEAD` at most once per TTL and served stale (with a warning and a
metric) when the upstream is down or rate-limiting; anything addressed by digest is immutable. Blobs are fetched
once however many clients ask at the same time ([`fetch`]), streamed to all of them as bytes arrive, resumed with
`Range` when the upstream connection drops, and committed only after their digest verifies. Upstreams are
`wharf_remote::Upstream`s: the one registry client of wharf (auth, token cache, retries, timeouts).
*/

pub mod config;
pub mod fetch;
mod lru;
mod store;

pub use config::MirrorConfig;
pub use store::MirrorStore;
pub use wharf_remote::{UpstreamConfig, canonical_host};
