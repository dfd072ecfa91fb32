//! Registry image references with Docker's normalization: `alpine` is `docker.io/library/alpine:latest`,
//! `host:port/repo:tag`, `repo@sha256:...`, `repo:tag@sha256:...`.

use std::fmt;

use wharf_oci::Digest;
use wharf_oci::name::{is_valid_repository, is_valid_tag};

use crate::RemoteError as Error;
use crate::hub::{DOCKER_HUB, DOCKER_HUB_API, canonical_host};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`, lowercase (`docker.io` for Docker Hub).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, Error> {
        let bad = |reason: &str| Error::BadName {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if input.is_empty() {
            return Err(bad("empty reference"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|e| bad(&format!("bad digest: {e}")))?),
            ),
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag
            && !is_valid_tag(t)
        {
            return Err(bad(&format!("invalid tag {t:?}")));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_ascii_lowercase(), path.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        if registry.is_empty() || registry.contains(['/', '@', '?', '#']) {
            return Err(bad("invalid registry host"));
        }
        let registry = canonical_host(&registry).to_owned();
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !is_valid_repository(&repository) {
            return Err(bad(&format!(
                "invalid repository name {repository:?} (lowercase letters, digits and . _ - separators, / between parts)"
            )));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host HTTP requests go to (Docker Hub's API host for `docker.io`).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// Whether plain HTTP is allowed without `--insecure`: localhost, 127.0.0.0/8 and ::1, as Docker does.
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => self.registry.split(':').next().unwrap_or(""),
        };
        host == "localhost" || host == "::1" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// What a manifest request names: the digest when there is one (it is immutable), else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_normalization() {
        assert_eq!(r("alpine").to_string(), "docker.io/library/alpine:latest");
        assert_eq!(r("alpine:3.20").to_string(), "docker.io/library/alpine:3.20");
        assert_eq!(r("bitnami/redis").to_string(), "docker.io/bitnami/redis:latest");
        assert_eq!(r("docker.io/alpine").to_string(), "docker.io/library/alpine:latest");
        assert_eq!(r("index.docker.io/library/alpine").registry, "docker.io");
        assert_eq!(r("alpine").api_host(), "registry-1.docker.io");
    }

    #[test]
    fn hosts_ports_and_digests() {
        let x = r("127.0.0.1:5000/team/app:v1");
        assert_eq!(
            (x.registry.as_str(), x.repository.as_str()),
            ("127.0.0.1:5000", "team/app")
        );
        assert_eq!(x.tag.as_deref(), Some("v1"));
        assert!(x.is_loopback());
        let d = format!("sha256:{}", "a".repeat(64));
        let x = r(&format!("localhost:5000/app@{d}"));
        assert_eq!((x.tag, x.digest.map(|d| d.to_string())), (None, Some(d.clone())));
        let x = r(&format!("ghcr.io/org/app:v2@{d}"));
        assert_eq!(x.tag.as_deref(), Some("v2"));
        assert_eq!(x.manifest_reference(), d);
        assert!(!x.is_loopback());
        assert!(r("localhost/app").is_loopback());
        assert!(r("[::1]:5000/app").is_loopback());
        assert!(r("127.1.2.3:80/app").is_loopback());
        assert!(!r("registry.example:5000/app").is_loopback());
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Alpine",
            "app:",
            "app:bad tag",
            "app@sha256:xyz",
            "host.io/",
            "a//b",
            "app:-x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
