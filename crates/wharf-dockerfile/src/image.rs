//! Image references in FROM and the distribution family they imply.

use serde::Serialize;

/// `[registry/]repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Repository with registry, as written (lowercase expected).
    pub name: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(s: &str) -> ImageRef {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (s, None),
        };
        // A ':' after the last '/' is a tag (one before it is a registry port).
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (rest[..slash + i].to_string(), Some(rest[slash + i + 1..].to_string())),
            None => (rest.to_string(), None),
        };
        ImageRef { name, tag, digest }
    }

    /// The last path component of the repository (`library/node` and `docker.io/node` give `node`).
    pub fn short_name(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or(&self.name)
    }
}

/// Linux distribution family of a stage, which decides the system package manager and its mirror rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Alpine,
    Debian,
    Ubuntu,
    Rhel,
    Scratch,
    Unknown,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Alpine => "alpine",
            Family::Debian => "debian",
            Family::Ubuntu => "ubuntu",
            Family::Rhel => "rhel",
            Family::Scratch => "scratch",
            Family::Unknown => "unknown",
        }
    }
}

/// Family implied by an image reference, from its name and tag.
pub fn family_of(image: &ImageRef) -> Family {
    let name = image.short_name().to_ascii_lowercase();
    let tag = image.tag.as_deref().unwrap_or("").to_ascii_lowercase();
    if name == "scratch" {
        return Family::Scratch;
    }
    if name.contains("alpine") || tag.contains("alpine") {
        return Family::Alpine;
    }
    const DEBIAN_TAGS: &[&str] = &["bookworm", "bullseye", "buster", "stretch", "trixie", "slim"];
    const UBUNTU_TAGS: &[&str] = &["jammy", "focal", "noble", "bionic", "xenial", "ubuntu"];
    const RHEL_TAGS: &[&str] = &[
        "ubi",
        "centos",
        "rockylinux",
        "oraclelinux",
        "amazonlinux",
        "corretto",
        "fedora",
    ];
    if UBUNTU_TAGS.iter().any(|t| tag.contains(t)) {
        return Family::Ubuntu;
    }
    if DEBIAN_TAGS.iter().any(|t| tag.contains(t)) {
        return Family::Debian;
    }
    if RHEL_TAGS.iter().any(|t| tag.contains(t)) {
        return Family::Rhel;
    }
    match name.as_str() {
        "debian" | "node" | "python" | "golang" | "rust" | "ruby" | "php" | "perl" | "buildpack-deps" | "nginx"
        | "httpd" | "postgres" | "redis" | "haskell" | "elixir" | "erlang" | "gcc" | "julia" | "r-base" => {
            Family::Debian
        }
        "ubuntu" | "eclipse-temurin" | "maven" | "gradle" | "sapmachine" | "ibm-semeru-runtimes" => Family::Ubuntu,
        "centos" | "fedora" | "rockylinux" | "almalinux" | "amazonlinux" | "oraclelinux" | "amazoncorretto"
        | "mysql" => Family::Rhel,
        n if n.starts_with("ubi") => Family::Rhel,
        _ => Family::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r = ImageRef::parse("localhost:5000/team/app:1.2@sha256:abc");
        assert_eq!(
            (r.name.as_str(), r.tag.as_deref(), r.digest.as_deref()),
            ("localhost:5000/team/app", Some("1.2"), Some("sha256:abc"))
        );
        let r = ImageRef::parse("localhost:5000/app");
        assert_eq!((r.name.as_str(), r.tag), ("localhost:5000/app", None));
    }

    #[test]
    fn families() {
        let f = |s: &str| family_of(&ImageRef::parse(s));
        assert_eq!(f("node:20-alpine"), Family::Alpine);
        assert_eq!(f("golang:1.22-alpine3.19"), Family::Alpine);
        assert_eq!(f("python:3.12-slim"), Family::Debian);
        assert_eq!(f("node:20"), Family::Debian);
        assert_eq!(f("eclipse-temurin:21-jre"), Family::Ubuntu);
        assert_eq!(f("rockylinux:9"), Family::Rhel);
        assert_eq!(f("scratch"), Family::Scratch);
        assert_eq!(f("example.com/base:1"), Family::Unknown);
    }
}
