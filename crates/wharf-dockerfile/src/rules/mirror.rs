//! WH001: a stage installs packages but their source is not rewritten to the configured mirror. Checked per
//! stage; a rewrite in a stage also serves the stages built FROM it (the files and ENV carry over), and the
//! family (Alpine, Debian, Ubuntu, RHEL) follows stage aliases back to an image.

use super::{Ctx, Edit, Finding, Fix, Rule, Severity, finding, yum};
use crate::ast::Keyword;
use crate::config::MirrorKey;
use crate::image::Family;
use crate::model::Base;
use crate::shell::Command;

pub const RULE: Rule = Rule {
    id: "WH001",
    name: "package-mirror",
    severity: Severity::Warning,
    summary: "A stage installs packages without using the configured mirror.",
    doc: "Each stage of a multi-stage build starts from its own base image, so the package source must be \
          rewritten in every stage that installs packages (or in a stage it is built FROM). Checked for apk, \
          apt/apt-get, yum/dnf, pip/poetry/pipenv, npm/yarn/pnpm, go modules and cargo, for each manager that has \
          a mirror configured (`--mirror KEY=HOST`, `--preset`, or `[mirrors]` in the config file). The fix inserts \
          the rewrite right after FROM: `sed` on /etc/apk/repositories (Alpine), on both the classic sources.list \
          and the deb822 debian.sources/ubuntu.sources (Debian, Ubuntu), and ENV for PIP_INDEX_URL, \
          npm_config_registry/YARN_REGISTRY and GOPROXY, a cargo source replacement for cargo, and for yum/dnf \
          on Rocky Linux, AlmaLinux and Fedora a `sed` on their /etc/yum.repos.d files that comments out \
          `mirrorlist=`/`metalink=` and enables `baseurl=` on the mirror (`rhel=HOST` adds the distribution's \
          directory, e.g. /rockylinux on mirrors.aliyun.com, /rocky elsewhere; `rhel=https://HOST/PATH` is used \
          as is). Not fixed: yum/dnf on CentOS (its releases moved to vault trees whose paths depend on the point \
          release), Amazon Linux, Oracle Linux and UBI (no public mirror layout to assume): point their repo files \
          at your mirror by hand; poetry, uv and Yarn 2+ read their own settings rather than \
          PIP_INDEX_URL/npm_config_registry.",
    fixable: true,
    hadolint: None,
    check,
};

/// A package manager that downloads from a public source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Manager {
    Apk,
    Apt,
    Yum,
    Pip,
    Npm,
    Go,
    Cargo,
}

impl Manager {
    pub fn of(cmd: &Command) -> Option<Manager> {
        let name = cmd.name()?;
        let sub = cmd.subcommand().map(|w| w.value.as_str()).unwrap_or("");
        match name {
            "apk" if matches!(sub, "add" | "update" | "upgrade") => Some(Manager::Apk),
            "apt-get" | "apt" | "aptitude"
                if matches!(sub, "install" | "update" | "upgrade" | "dist-upgrade" | "full-upgrade") =>
            {
                Some(Manager::Apt)
            }
            "yum" | "dnf" | "microdnf" if matches!(sub, "install" | "update" | "upgrade" | "groupinstall") => {
                Some(Manager::Yum)
            }
            n if is_pip(n) && matches!(sub, "install" | "wheel" | "download") => {
                let offline = cmd.has_arg("-i") || cmd.has_arg("--index-url") || cmd.has_arg("--no-index");
                (!offline).then_some(Manager::Pip)
            }
            "poetry" | "pipenv" if sub == "install" => Some(Manager::Pip),
            "uv" if matches!(sub, "sync" | "pip") => Some(Manager::Pip),
            "npm" if matches!(sub, "install" | "i" | "ci" | "add") => {
                (!cmd.has_arg("--registry")).then_some(Manager::Npm)
            }
            "yarn" if matches!(sub, "" | "install" | "add") => (!cmd.has_arg("--registry")).then_some(Manager::Npm),
            "pnpm" if matches!(sub, "install" | "i" | "add") => (!cmd.has_arg("--registry")).then_some(Manager::Npm),
            "go" if matches!(sub, "mod" | "get" | "install" | "build") => {
                let is_mod_download = sub != "mod" || cmd.argv().iter().any(|w| w.value == "download");
                let vendored = cmd.words.iter().any(|w| w.value.contains("-mod=vendor"));
                (is_mod_download && !vendored).then_some(Manager::Go)
            }
            "cargo" if matches!(sub, "build" | "fetch" | "install" | "test") => {
                (!cmd.has_arg("--offline") && !cmd.has_arg("--frozen")).then_some(Manager::Cargo)
            }
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Manager::Apk => "apk",
            Manager::Apt => "apt",
            Manager::Yum => "yum/dnf",
            Manager::Pip => "pip",
            Manager::Npm => "npm",
            Manager::Go => "go modules",
            Manager::Cargo => "cargo",
        }
    }

    fn key(self, family: Family) -> MirrorKey {
        match self {
            Manager::Apk => MirrorKey::Alpine,
            Manager::Apt if family == Family::Ubuntu => MirrorKey::Ubuntu,
            Manager::Apt => MirrorKey::Debian,
            Manager::Yum => MirrorKey::Rhel,
            Manager::Pip => MirrorKey::Pypi,
            Manager::Npm => MirrorKey::Npm,
            Manager::Go => MirrorKey::Go,
            Manager::Cargo => MirrorKey::Cargo,
        }
    }

    /// Text that shows an instruction sets this manager's source (lowercase).
    fn markers(self) -> &'static [&'static str] {
        match self {
            Manager::Apk => &["/etc/apk/repositories"],
            Manager::Apt => &["sources.list", "debian.sources", "ubuntu.sources"],
            Manager::Yum => &["/etc/yum.repos.d", "baseurl=", "mirrorlist"],
            Manager::Pip => &[
                "pip_index_url",
                "pip.conf",
                "pip config set",
                "uv_index_url",
                "uv_default_index",
                "poetry source add",
            ],
            Manager::Npm => &[
                "npm_config_registry",
                "yarn_registry",
                "yarn_npm_registry_server",
                "config set registry",
                ".npmrc",
                ".yarnrc",
            ],
            Manager::Go => &["goproxy"],
            Manager::Cargo => &["replace-with", "cargo_registries_", ".cargo/config"],
        }
    }
}

/// Whether the stage's chain starts from a mirror-baked image (`.../pkgmirror/<preset>/...`).
fn baked_base(ctx: &Ctx, stage: usize) -> bool {
    let root = ctx.model.lineage(stage).last().copied().unwrap_or(stage);
    let image = &ctx.model.stages[root].image;
    image.starts_with(crate::fix::PKGMIRROR) || image.contains(&format!("/{}", crate::fix::PKGMIRROR))
}

pub fn is_pip(name: &str) -> bool {
    name == "pip" || name.starts_with("pip3") || name == "pip2"
}

fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    if ctx.config.mirrors.is_empty() {
        return;
    }
    for stage in &ctx.model.stages {
        // First use of each manager in this stage: (manager, instruction index).
        let mut uses: Vec<(Manager, usize)> = Vec::new();
        for &i in &stage.body {
            for (_, cmd) in ctx.commands(i) {
                if let Some(m) = Manager::of(cmd)
                    && !uses.iter().any(|(u, _)| *u == m)
                {
                    uses.push((m, i));
                }
            }
        }
        uses.sort();
        // A registry's mirror-baked base (`pkgmirror/<preset>/...`) already points apk, apt, pip, npm and go at a
        // mirror, in this stage and every stage built FROM it.
        let baked = baked_base(ctx, stage.index);
        uses.retain(|(m, _)| {
            !(baked
                && matches!(
                    m,
                    Manager::Apk | Manager::Apt | Manager::Pip | Manager::Npm | Manager::Go
                ))
        });
        let mut inserts: Vec<String> = Vec::new();
        let mut found: Vec<Finding> = Vec::new();
        let mut carrier: Option<usize> = None;
        for (m, at) in uses {
            let key = m.key(stage.family);
            let Some(mirror) = ctx.config.mirrors.get(&key) else {
                continue;
            };
            if rewritten(ctx, stage.index, at, m) {
                continue;
            }
            let from = ctx.ins(stage.from);
            let line = ctx.model.df.source[..ctx.ins(at).span.start].matches('\n').count() + 1;
            let stage_name = stage
                .name
                .clone()
                .map_or(format!("#{}", stage.index), |n| format!("'{n}'"));
            let family = if matches!(m, Manager::Apk | Manager::Apt | Manager::Yum) {
                format!(" ({})", stage.family.as_str())
            } else {
                String::new()
            };
            let mut f = finding(
                RULE.id,
                from.span,
                format!(
                    "stage {stage_name}{family} uses {} at line {line} without the {} mirror {mirror}",
                    m.as_str(),
                    key.as_str()
                ),
            );
            if inherited_fix(ctx, stage.index, m) {
                // A stage this one is built FROM gets the rewrite; that fixes this one too.
                f.fix = Some(Fix::default());
            } else if let Some(text) = rewrite_text(m, stage.family, root_distro(ctx, stage.index), mirror) {
                inserts.push(text);
                f.fix = Some(Fix::default());
                carrier.get_or_insert(found.len());
            } else {
                f.message
                    .push_str(" (no automatic rewrite for this distribution: point its repo files at the mirror)");
            }
            found.push(f);
        }
        // One insertion after FROM for the whole stage, carried by the first fixable finding.
        if let Some(c) = carrier {
            let from = ctx.ins(stage.from);
            let indent = indentation(ctx, stage.from);
            let nl = ctx.nl();
            let text: String = inserts.iter().map(|t| format!("{nl}{indent}{t}")).collect();
            found[c].fix = Some(Fix {
                edits: vec![Edit::insert(from.span.end, text)],
                files: Vec::new(),
            });
        }
        out.extend(found);
    }
}

/// Whether an ancestor stage uses `m` without a rewrite (so the fix goes there).
fn inherited_fix(ctx: &Ctx, stage: usize, m: Manager) -> bool {
    ctx.model.lineage(stage).into_iter().skip(1).any(|s| {
        let st = &ctx.model.stages[s];
        st.body
            .iter()
            .find(|&&i| ctx.commands(i).any(|(_, c)| Manager::of(c) == Some(m)))
            .is_some_and(|&at| ctx.config.mirrors.contains_key(&m.key(st.family)) && !rewritten(ctx, s, at, m))
    })
}

/// The yum/dnf distribution of the image a stage is ultimately built from, if the fix knows it.
fn root_distro(ctx: &Ctx, stage: usize) -> Option<&'static yum::Distro> {
    let root = *ctx.model.lineage(stage).last()?;
    match &ctx.model.stages.get(root)?.base {
        Base::Image(image) => yum::distro(image.short_name()),
        Base::Scratch | Base::Stage(_) => None,
    }
}

fn indentation(ctx: &Ctx, i: usize) -> String {
    let start = ctx.line_start(i);
    ctx.src[start..ctx.ins(i).span.start]
        .chars()
        .filter(|c| *c == ' ' || *c == '\t')
        .collect()
}

/// Whether the source of `m` is set before instruction `at` of `stage`, or anywhere in a stage it is built from.
fn rewritten(ctx: &Ctx, stage: usize, at: usize, m: Manager) -> bool {
    let lineage = ctx.model.lineage(stage);
    for (n, &s) in lineage.iter().enumerate() {
        let st = &ctx.model.stages[s];
        for &i in &st.body {
            if n == 0 && i > at {
                break;
            }
            let ins = ctx.ins(i);
            if !matches!(
                ins.keyword,
                Keyword::Run | Keyword::Env | Keyword::Arg | Keyword::Copy | Keyword::Add
            ) {
                continue;
            }
            let text = ctx.model.df.text(ins.span).to_ascii_lowercase();
            if m.markers().iter().any(|mk| text.contains(mk)) {
                return true;
            }
        }
    }
    false
}

fn host(mirror: &str) -> &str {
    let m = mirror.trim_start_matches("https://").trim_start_matches("http://");
    m.trim_end_matches('/')
}

/// The instruction inserted after FROM.
fn rewrite_text(m: Manager, family: Family, distro: Option<&yum::Distro>, mirror: &str) -> Option<String> {
    Some(match m {
        Manager::Apk => format!(
            "RUN sed -i 's/dl-cdn.alpinelinux.org/{}/g' /etc/apk/repositories",
            host(mirror)
        ),
        Manager::Apt => {
            let h = host(mirror);
            let (files, hosts): (&str, &[&str]) = match family {
                Family::Ubuntu => (
                    "/etc/apt/sources.list /etc/apt/sources.list.d/ubuntu.sources",
                    &["archive.ubuntu.com", "security.ubuntu.com"],
                ),
                Family::Debian => (
                    "/etc/apt/sources.list /etc/apt/sources.list.d/debian.sources",
                    &["deb.debian.org", "security.debian.org"],
                ),
                _ => (
                    "/etc/apt/sources.list /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/ubuntu.sources",
                    &[
                        "deb.debian.org",
                        "security.debian.org",
                        "archive.ubuntu.com",
                        "security.ubuntu.com",
                    ],
                ),
            };
            let exprs: Vec<String> = hosts.iter().map(|o| format!("-e 's|{o}|{h}|g'")).collect();
            format!(
                "RUN for f in {files}; do if [ -f \"$f\" ]; then sed -i {} \"$f\"; fi; done",
                exprs.join(" ")
            )
        }
        Manager::Yum => yum::rewrite(distro?, mirror),
        Manager::Pip => {
            let url = if mirror.contains("://") {
                mirror.to_string()
            } else {
                format!("https://{}/pypi/simple/", host(mirror))
            };
            format!("ENV PIP_INDEX_URL={url}")
        }
        Manager::Npm => {
            let url = if mirror.contains("://") {
                mirror.to_string()
            } else {
                format!("https://{}", host(mirror))
            };
            format!("ENV npm_config_registry={url} YARN_REGISTRY={url}")
        }
        Manager::Go => format!("ENV GOPROXY={mirror}"),
        Manager::Cargo => {
            let url = if mirror.contains("://") {
                mirror.to_string()
            } else {
                format!("sparse+https://{}/", host(mirror))
            };
            format!(
                "RUN mkdir -p \"${{CARGO_HOME:-$HOME/.cargo}}\" && printf '[source.crates-io]\\nreplace-with = \"mirror\"\\n[source.mirror]\\nregistry = \"%s\"\\n' '{url}' >> \"${{CARGO_HOME:-$HOME/.cargo}}/config.toml\""
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use crate::rules::test_util::{fixed, lines};

    const MULTI: &str = "ARG ALPINE_VER=3.20\n\
FROM alpine:${ALPINE_VER} AS base\n\
RUN apk add --no-cache tzdata\n\
\n\
FROM golang:1.22-alpine${ALPINE_VER} AS build\n\
RUN sed -i 's/dl-cdn.alpinelinux.org/mirrors.ustc.edu.cn/g' /etc/apk/repositories\n\
RUN apk add --no-cache git\n\
\n\
FROM base AS final\n\
RUN apk add --no-cache curl\n\
\n\
FROM scratch\n\
COPY --from=build /go/bin/app /app\n";

    #[test]
    fn per_stage_following_aliases() {
        // base has no rewrite (line 2); build rewrites (to another host: fine); final is FROM base: flagged at its
        // FROM too, since base has no rewrite; scratch installs nothing.
        assert_eq!(lines(MULTI, "WH001"), [2, 9]);
        let src = "FROM alpine:3 AS base\nRUN sed -i 's/dl-cdn.alpinelinux.org/m/g' /etc/apk/repositories\nFROM base\nRUN apk add --no-cache x\n";
        assert!(lines(src, "WH001").is_empty());
    }

    #[test]
    fn offline_commands_need_no_mirror() {
        let src = "FROM golang:1.22\nRUN go build -mod=vendor ./...\nRUN GOFLAGS=-mod=vendor go build\n\
                   RUN pip install --no-index --find-links /w x\nRUN cargo build --offline\nRUN npm run build\n";
        assert!(lines(src, "WH001").is_empty());
    }

    #[test]
    fn no_mirror_configured_no_finding() {
        let r = crate::lint::lint(MULTI, &Default::default());
        assert!(r.findings.iter().all(|f| f.rule != "WH001"));
    }

    #[test]
    fn fix_inserts_after_from_in_every_stage() {
        let out = fixed(MULTI, "WH001");
        assert_eq!(
            out,
            "ARG ALPINE_VER=3.20\n\
FROM alpine:${ALPINE_VER} AS base\n\
RUN sed -i 's/dl-cdn.alpinelinux.org/mirrors.aliyun.com/g' /etc/apk/repositories\n\
RUN apk add --no-cache tzdata\n\
\n\
FROM golang:1.22-alpine${ALPINE_VER} AS build\n\
RUN sed -i 's/dl-cdn.alpinelinux.org/mirrors.ustc.edu.cn/g' /etc/apk/repositories\n\
RUN apk add --no-cache git\n\
\n\
FROM base AS final\n\
RUN apk add --no-cache curl\n\
\n\
FROM scratch\n\
COPY --from=build /go/bin/app /app\n"
        );
        assert!(lines(&out, "WH001").is_empty());
    }

    #[test]
    fn fix_debian_pip_npm() {
        let src = "FROM python:3.12-slim\nRUN apt-get update && apt-get install -y gcc\nRUN pip install flask\nFROM node:20-alpine\nRUN npm ci\n";
        let out = fixed(src, "WH001");
        assert_eq!(
            out,
            "FROM python:3.12-slim\n\
RUN for f in /etc/apt/sources.list /etc/apt/sources.list.d/debian.sources; do if [ -f \"$f\" ]; then sed -i -e 's|deb.debian.org|mirrors.aliyun.com|g' -e 's|security.debian.org|mirrors.aliyun.com|g' \"$f\"; fi; done\n\
ENV PIP_INDEX_URL=https://mirrors.aliyun.com/pypi/simple/\n\
RUN apt-get update && apt-get install -y gcc\n\
RUN pip install flask\n\
FROM node:20-alpine\n\
ENV npm_config_registry=https://registry.npmmirror.com YARN_REGISTRY=https://registry.npmmirror.com\n\
RUN npm ci\n"
        );
        assert_eq!(fixed(&out, "WH001"), out);
    }

    #[test]
    fn keeps_crlf_line_endings() {
        let src = "FROM alpine:3.20\r\nRUN apk add --no-cache curl\r\n";
        assert_eq!(
            fixed(src, "WH001"),
            "FROM alpine:3.20\r\nRUN sed -i 's/dl-cdn.alpinelinux.org/mirrors.aliyun.com/g' /etc/apk/repositories\r\nRUN apk add --no-cache curl\r\n"
        );
    }

    #[test]
    fn ubuntu_and_no_trailing_newline() {
        let src = "FROM ubuntu:24.04\nRUN apt-get install -y curl";
        let out = fixed(src, "WH001");
        assert!(out.starts_with(
            "FROM ubuntu:24.04\nRUN for f in /etc/apt/sources.list /etc/apt/sources.list.d/ubuntu.sources;"
        ));
        assert!(out.ends_with("\nRUN apt-get install -y curl"));
    }

    #[test]
    fn fix_yum_per_distro_following_aliases() {
        let src = "FROM rockylinux:9 AS base\n\
RUN dnf install -y gcc\n\
FROM base AS build\n\
RUN dnf install -y make\n\
FROM quay.io/fedora/fedora:40\n\
RUN dnf install -y git\n\
FROM centos:7\n\
RUN yum install -y curl\n";
        assert_eq!(lines(src, "WH001"), [1, 3, 5, 7]);
        let out = fixed(src, "WH001");
        assert_eq!(
            out,
            "FROM rockylinux:9 AS base\n\
RUN sed -e 's|^mirrorlist=|#mirrorlist=|g' -e 's|^#baseurl=http://dl.rockylinux.org/$contentdir|baseurl=https://mirrors.aliyun.com/rockylinux|g' -i.bak /etc/yum.repos.d/[Rr]ocky*.repo\n\
RUN dnf install -y gcc\n\
FROM base AS build\n\
RUN dnf install -y make\n\
FROM quay.io/fedora/fedora:40\n\
RUN sed -e 's|^metalink=|#metalink=|g' -e 's|^#baseurl=http://download.example/pub/fedora/linux|baseurl=https://mirrors.aliyun.com/fedora|g' -i.bak /etc/yum.repos.d/fedora.repo /etc/yum.repos.d/fedora-updates.repo\n\
RUN dnf install -y git\n\
FROM centos:7\n\
RUN yum install -y curl\n"
        );
        // CentOS is reported, not fixed; fixing again changes nothing.
        assert_eq!(lines(&out, "WH001"), [9]);
        let r = crate::lint::lint(
            &out,
            &crate::lint::Options {
                config: crate::config::Config {
                    mirrors: crate::config::preset("ustc").unwrap(),
                    ..Default::default()
                },
                context: None,
            },
        );
        assert!(
            r.findings
                .iter()
                .any(|f| f.rule == "WH001" && f.message.contains("no automatic rewrite"))
        );
        assert_eq!(fixed(&out, "WH001"), out);
    }

    #[test]
    fn fix_yum_alias_stage_and_existing_rewrite() {
        // Only the derived stage installs: the rewrite goes after its own FROM, with the root image's distro.
        let src = "FROM almalinux:9-minimal AS os\nFROM os\nRUN microdnf install -y tar\n";
        assert_eq!(
            fixed(src, "WH001"),
            "FROM almalinux:9-minimal AS os\nFROM os\n\
RUN sed -e 's|^mirrorlist=|#mirrorlist=|g' -e 's|^# \\?baseurl=https\\?://repo.almalinux.org/almalinux|baseurl=https://mirrors.aliyun.com/almalinux|g' -i.bak /etc/yum.repos.d/almalinux*.repo\n\
RUN microdnf install -y tar\n"
        );
        let done = "FROM rockylinux:8\nRUN sed -i 's|^mirrorlist=|#mirrorlist=|' /etc/yum.repos.d/Rocky-*.repo\nRUN yum install -y vim\n";
        assert!(lines(done, "WH001").is_empty());
        let none = "FROM rockylinux:9\nRUN dnf clean all\n";
        assert!(lines(none, "WH001").is_empty());
    }
}
