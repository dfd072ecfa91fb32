//! The yum/dnf half of WH001's fix: how to point a RHEL-family distribution's repo files at a mirror. Which
//! files, which line to comment out (`mirrorlist=` or `metalink=`) and which commented `baseurl=` to enable
//! differ per distribution, so each one the fix knows is a row of [`DISTROS`]; the rest (CentOS, whose releases
//! moved to vault layouts, Amazon Linux, Oracle Linux, UBI) are reported but not fixed.

/// A distribution whose stock repo files the fix rewrites.
#[derive(Debug)]
pub struct Distro {
    /// Last path component of the image repository (`rockylinux`, `quay.io/rockylinux/rockylinux`).
    pub image: &'static str,
    /// Repo files (shell words; globs allowed).
    pub files: &'static str,
    /// The key whose lines are commented out.
    pub disable: &'static str,
    /// `sed` pattern of the commented upstream `baseurl=` up to where the mirror's tree starts.
    pub upstream: &'static str,
    /// The distribution's directory on a mirror, unless [`Distro::dirs`] says otherwise for that host.
    pub dir: &'static str,
    /// Mirror hosts that use another directory.
    pub dirs: &'static [(&'static str, &'static str)],
}

pub static DISTROS: &[Distro] = &[
    Distro {
        image: "rockylinux",
        // Rocky 8: Rocky-BaseOS.repo...; Rocky 9: rocky.repo, rocky-extras.repo...
        files: "/etc/yum.repos.d/[Rr]ocky*.repo",
        disable: "mirrorlist",
        upstream: "^#baseurl=http://dl.rockylinux.org/$contentdir",
        dir: "rocky",
        dirs: &[("mirrors.aliyun.com", "rockylinux")],
    },
    Distro {
        image: "almalinux",
        files: "/etc/yum.repos.d/almalinux*.repo",
        disable: "mirrorlist",
        upstream: "^# \\?baseurl=https\\?://repo.almalinux.org/almalinux",
        dir: "almalinux",
        dirs: &[],
    },
    Distro {
        image: "fedora",
        // Not fedora-cisco-openh264.repo: mirrors do not carry it, and without metalink it would have no source.
        files: "/etc/yum.repos.d/fedora.repo /etc/yum.repos.d/fedora-updates.repo",
        disable: "metalink",
        upstream: "^#baseurl=http://download.example/pub/fedora/linux",
        dir: "fedora",
        dirs: &[],
    },
];

/// The row for an image's short name.
pub fn distro(image: &str) -> Option<&'static Distro> {
    let image = image.to_ascii_lowercase();
    DISTROS.iter().find(|d| d.image == image)
}

/// The RUN that points `d`'s repo files at `mirror`: a host (`mirrors.aliyun.com`, the distribution directory is
/// added) or a URL of the distribution's tree (`https://mirror.example.com/rocky`, used as is).
pub fn rewrite(d: &Distro, mirror: &str) -> String {
    let base = if mirror.contains("://") {
        mirror.trim_end_matches('/').to_string()
    } else {
        let host = mirror.trim_end_matches('/');
        let dir = d.dirs.iter().find(|(h, _)| *h == host).map_or(d.dir, |(_, dir)| dir);
        format!("https://{host}/{dir}")
    };
    format!(
        "RUN sed -e 's|^{k}=|#{k}=|g' -e 's|{up}|baseurl={base}|g' -i.bak {files}",
        k = d.disable,
        up = d.upstream,
        files = d.files
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_distro_and_host() {
        let rocky = distro("RockyLinux").unwrap();
        assert_eq!(
            rewrite(rocky, "mirrors.aliyun.com"),
            "RUN sed -e 's|^mirrorlist=|#mirrorlist=|g' -e 's|^#baseurl=http://dl.rockylinux.org/$contentdir|baseurl=https://mirrors.aliyun.com/rockylinux|g' -i.bak /etc/yum.repos.d/[Rr]ocky*.repo"
        );
        assert!(rewrite(rocky, "mirrors.ustc.edu.cn/").contains("|baseurl=https://mirrors.ustc.edu.cn/rocky|"));
        assert!(rewrite(rocky, "http://m.local/r/").contains("|baseurl=http://m.local/r|"));
        assert_eq!(
            rewrite(distro("fedora").unwrap(), "mirrors.tuna.tsinghua.edu.cn"),
            "RUN sed -e 's|^metalink=|#metalink=|g' -e 's|^#baseurl=http://download.example/pub/fedora/linux|baseurl=https://mirrors.tuna.tsinghua.edu.cn/fedora|g' -i.bak /etc/yum.repos.d/fedora.repo /etc/yum.repos.d/fedora-updates.repo"
        );
        assert!(distro("centos").is_none());
        assert!(distro("amazonlinux").is_none());
    }
}
