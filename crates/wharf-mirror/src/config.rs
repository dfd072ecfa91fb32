//! What the mirror needs to know: the upstreams it stands in for.

use std::path::PathBuf;
use std::time::Duration;

/// One upstream registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The registry host it stands for (`docker.io`, `ghcr.io`, ...): the `ns` value containerd sends, and the first
    /// component of mirrored repository names (`docker.io/library/alpine`).
    pub name: String,
    /// Base URL, e.g. `https://registry-1.docker.io`.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

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

/// Docker Hub's other names.
pub fn canonical_host(host: &str) -> &str {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io",
        h => h,
    }
}

/// The repository name to ask `host` for: Docker Hub puts single-component names under `library/`.
pub fn upstream_repository(host: &str, repo: &str) -> String {
    if canonical_host(host) == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_rules() {
        assert_eq!(canonical_host("index.docker.io"), "docker.io");
        assert_eq!(canonical_host("ghcr.io"), "ghcr.io");
        assert_eq!(upstream_repository("docker.io", "alpine"), "library/alpine");
        assert_eq!(upstream_repository("docker.io", "bitnami/redis"), "bitnami/redis");
        assert_eq!(upstream_repository("quay.io", "alpine"), "alpine");
    }
}
