//! Docker Hub's names, in one table: the name images use (`docker.io`), the host its API is served from, the key
//! the Docker tools file its credentials under, and every alias users and tools write for it.

/// The registry name of Docker Hub in image references and mirrored repository names.
pub const DOCKER_HUB: &str = "docker.io";
/// Where `docker.io` names are actually served.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Docker Hub's key in `config.json`'s `auths` and its server URL for credential helpers.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
/// Other host names that mean Docker Hub (`index.docker.io` from old references and `docker login`, the API host,
/// and the web host some tools put in configs).
pub const DOCKER_HUB_ALIASES: [&str; 3] = ["index.docker.io", DOCKER_HUB_API, "registry.hub.docker.com"];

/// `host` with Docker Hub's aliases folded into `docker.io`; any other host as it is.
pub fn canonical_host(host: &str) -> &str {
    if DOCKER_HUB_ALIASES.contains(&host) {
        DOCKER_HUB
    } else {
        host
    }
}

/// Whether `host` names Docker Hub.
pub fn is_docker_hub(host: &str) -> bool {
    canonical_host(host) == DOCKER_HUB
}

/// Other names containerd's `ns` may give upstream `name` at `url`: the URL's `host[:port]`, and Docker Hub's
/// aliases when it is Docker Hub.
pub fn aliases(name: &str, url: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(host) = url.split_once("://").and_then(|(_, r)| r.split('/').next()) {
        out.push(host.to_owned());
    }
    if is_docker_hub(name) {
        for a in DOCKER_HUB_ALIASES {
            if !out.iter().any(|o| o == a) {
                out.push(a.to_owned());
            }
        }
    }
    out.retain(|a| a != name);
    out
}

/// The repository name to ask `host` for: Docker Hub puts single-component names under `library/`.
pub fn upstream_repository(host: &str, repo: &str) -> String {
    if is_docker_hub(host) && !repo.contains('/') {
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
        for alias in DOCKER_HUB_ALIASES {
            assert_eq!(canonical_host(alias), "docker.io");
        }
        assert_eq!(canonical_host("ghcr.io"), "ghcr.io");
        assert_eq!(upstream_repository("docker.io", "alpine"), "library/alpine");
        assert_eq!(
            upstream_repository("registry.hub.docker.com", "alpine"),
            "library/alpine"
        );
        assert_eq!(upstream_repository("docker.io", "bitnami/redis"), "bitnami/redis");
        assert_eq!(upstream_repository("quay.io", "alpine"), "alpine");
        assert_eq!(
            aliases("docker.io", "https://registry-1.docker.io"),
            ["registry-1.docker.io", "index.docker.io", "registry.hub.docker.com"]
        );
        assert_eq!(aliases("ghcr", "http://127.0.0.1:5000/x"), ["127.0.0.1:5000"]);
    }
}
