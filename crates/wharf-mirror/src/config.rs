//! What the mirror needs to know: the upstreams it stands in for.

use std::path::PathBuf;
use std::time::Duration;

use wharf_remote::UpstreamConfig;

#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub upstreams: Vec<UpstreamConfig>,
    /// Directory for the mirror's cache (its own blob store) and spool files.
    pub root: PathBuf,
    /// How long a tag, once checked against upstream, is served without asking again.
    pub tag_ttl: Duration,
    /// Size limit of the cache; least recently used blobs are evicted past it. `None`: unlimited.
    pub max_bytes: Option<u64>,
    /// Timeout for connecting to an upstream and for each read from it.
    pub timeout: Duration,
}
