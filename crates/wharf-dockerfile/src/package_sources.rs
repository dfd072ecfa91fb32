//! A base image's package sources pointed at a mirror, as files and environment: what the registry's mirror-baked
//! base images (`pkgmirror/<preset>/<image>`) add on top of the upstream image, so a Dockerfile needs no `sed` per
//! stage. The same hosts `wharf fix` rewrites (rule WH001), applied to the files themselves.

use crate::config::{MirrorKey, Mirrors};

/// Whether the file at `path` (relative to the image root, no leading `/`) is a package source list this module
/// rewrites.
pub fn is_source_file(path: &str) -> bool {
    path == "etc/apk/repositories"
        || path == "etc/apt/sources.list"
        || (path.starts_with("etc/apt/sources.list.d/")
            && !path["etc/apt/sources.list.d/".len()..].contains('/')
            && (path.ends_with(".list") || path.ends_with(".sources")))
}

/// The upstream hosts of each distribution.
const HOSTS: &[(MirrorKey, &str)] = &[
    (MirrorKey::Alpine, "dl-cdn.alpinelinux.org"),
    (MirrorKey::Debian, "deb.debian.org"),
    (MirrorKey::Debian, "security.debian.org"),
    (MirrorKey::Debian, "httpredir.debian.org"),
    (MirrorKey::Ubuntu, "archive.ubuntu.com"),
    (MirrorKey::Ubuntu, "security.ubuntu.com"),
    (MirrorKey::Ubuntu, "ports.ubuntu.com"),
];

/// `text` of the source file with every upstream host replaced by its mirror (the path after the host kept); `None`
/// when nothing changes.
pub fn rewrite(text: &str, mirrors: &Mirrors) -> Option<String> {
    let mut out = text.to_string();
    for (key, host) in HOSTS {
        let Some(mirror) = mirrors.get(key) else { continue };
        let mirror = mirror.trim_end_matches('/');
        // Only as a URL's host: `://host/` (or at the end of the URL).
        out = out.replace(&format!("://{host}/"), &format!("://{mirror}/"));
        out = out.replace(&format!("://{host}\n"), &format!("://{mirror}\n"));
        out = out.replace(&format!("://{host} "), &format!("://{mirror} "));
    }
    (out != text).then_some(out)
}

/// Environment the language package managers read their index from: pip, npm and go.
pub fn environment(mirrors: &Mirrors) -> Vec<String> {
    let mut env = Vec::new();
    if let Some(v) = mirrors.get(&MirrorKey::Pypi) {
        env.push(format!("PIP_INDEX_URL={v}"));
    }
    if let Some(v) = mirrors.get(&MirrorKey::Npm) {
        env.push(format!("npm_config_registry={v}"));
    }
    if let Some(v) = mirrors.get(&MirrorKey::Go) {
        env.push(format!("GOPROXY={v}"));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::preset;

    #[test]
    fn hosts_are_replaced_and_paths_kept() {
        let m = preset("aliyun").unwrap();
        assert_eq!(
            rewrite("https://dl-cdn.alpinelinux.org/alpine/v3.20/main\n", &m).as_deref(),
            Some("https://mirrors.aliyun.com/alpine/v3.20/main\n")
        );
        let sources = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\nURIs: \
                       http://security.debian.org/debian-security\n";
        let got = rewrite(sources, &m).unwrap();
        assert!(got.contains("URIs: http://mirrors.aliyun.com/debian\n"), "{got}");
        assert!(got.contains("http://mirrors.aliyun.com/debian-security\n"), "{got}");
        assert_eq!(rewrite("deb http://example.com/debian bookworm main\n", &m), None);
        assert!(is_source_file("etc/apt/sources.list.d/debian.sources"));
        assert!(!is_source_file("etc/apt/sources.list.d/x/y.list"));
        assert!(environment(&m).iter().any(|e| e.starts_with("PIP_INDEX_URL=https://")));
    }
}
