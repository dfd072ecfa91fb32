//! WH007: a broad COPY (`COPY . .`) before a dependency install that needs only manifest files.

use super::{Ctx, Edit, Finding, Fix, Rule, Severity, finding};
use crate::ast::Keyword;
use crate::context::glob;
use crate::shell::{Command, basename};
use crate::words;

pub const RULE: Rule = Rule {
    id: "WH007",
    name: "broad-copy-before-install",
    severity: Severity::Warning,
    summary: "The whole context is copied before a dependency install that needs only manifest files.",
    doc: "Any change to any file invalidates the layer of `COPY . .` and every layer after it, so the dependency \
          install runs again on each source change. Copy the manifest files first, install, then copy the rest \
          (npm/yarn/pnpm, pip -r, poetry, pipenv, uv, go mod download, cargo fetch, Maven `dependency:*`, \
          Gradle `dependencies`, Bundler, Composer). The \
          fix, when the install RUN directly follows the broad COPY and only installs, moves it before the COPY \
          together with a COPY of the manifests. Install scripts that need the sources (npm `prepare`, \
          `postinstall`) are the exception to check by hand. Also reported, never fixed: `cargo build` after a \
          broad COPY when nothing fetched the crates earlier in the stage (or a stage it is built FROM) and the RUN \
          has no cache mount for the cargo registry or `target`: every source change downloads and compiles all \
          dependencies again. Copy Cargo.toml and Cargo.lock first and `RUN cargo fetch` before `COPY . .` \
          (compiling the dependencies too needs a dummy `src/main.rs` or cargo-chef's `cargo chef cook`), or \
          build with `RUN --mount=type=cache,target=/usr/local/cargo/registry \
          --mount=type=cache,target=/app/target cargo build` (copy the binary out of the cache mount in the same \
          RUN).",
    fixable: true,
    hadolint: None,
    check,
};

/// Whether `cmd` installs dependencies from manifest files (`npm ci`, `pip install -r`, `go mod download`, ...).
pub(crate) fn is_dependency_install(cmd: &Command) -> bool {
    manifests(cmd).is_some()
}

/// The manifest files a dependency install needs: (required, optional).
fn manifests(cmd: &Command) -> Option<(Vec<String>, Vec<&'static str>)> {
    let name = cmd.name()?;
    let sub = cmd.subcommand().map(|w| w.value.as_str()).unwrap_or("");
    let argv = cmd.argv();
    let pkg = |v: &[&'static str]| -> Option<(Vec<String>, Vec<&'static str>)> {
        Some((vec!["package.json".to_string()], v.to_vec()))
    };
    // Positional arguments after the subcommand (package names) mean an explicit install, not from manifests.
    let positional_after_sub = || {
        argv.iter()
            .skip_while(|w| w.value != sub)
            .skip(1)
            .any(|w| !w.value.starts_with('-'))
    };
    match name {
        "npm" if matches!(sub, "ci" | "install" | "i") && !positional_after_sub() => {
            pkg(&["package-lock.json", "npm-shrinkwrap.json"])
        }
        "yarn" if matches!(sub, "" | "install") => pkg(&["yarn.lock", ".yarnrc.yml"]),
        "pnpm" if matches!(sub, "install" | "i") && !positional_after_sub() => pkg(&["pnpm-lock.yaml"]),
        n if super::mirror::is_pip(n) && sub == "install" => {
            let mut reqs = Vec::new();
            let mut it = argv.iter();
            let mut other = false;
            while let Some(w) = it.next() {
                if w.value == "-r" || w.value == "--requirement" {
                    reqs.extend(it.next().map(|w| w.value.clone()));
                } else if let Some(r) = w
                    .value
                    .strip_prefix("--requirement=")
                    .or_else(|| w.value.strip_prefix("-r").filter(|r| !r.is_empty()))
                {
                    reqs.push(r.to_string());
                } else if !w.value.starts_with('-')
                    && w.value != "install"
                    && !basename(&w.value).starts_with("pip")
                    && !w.value.starts_with("python")
                {
                    other = true;
                }
            }
            (!reqs.is_empty() && !other).then_some((reqs, vec![]))
        }
        "poetry" if sub == "install" => Some((vec!["pyproject.toml".into()], vec!["poetry.lock"])),
        "pipenv" if sub == "install" => Some((vec!["Pipfile".into()], vec!["Pipfile.lock"])),
        "uv" if sub == "sync" => Some((vec!["pyproject.toml".into()], vec!["uv.lock"])),
        "go" if sub == "mod" && argv.iter().any(|w| w.value == "download") => {
            Some((vec!["go.mod".into()], vec!["go.sum"]))
        }
        "cargo" if sub == "fetch" => Some((vec!["Cargo.toml".into()], vec!["Cargo.lock"])),
        "mvn" | "mvnw" | "./mvnw" if argv.iter().any(|w| w.value.starts_with("dependency:")) => {
            Some((vec!["pom.xml".into()], vec![]))
        }
        "gradle" | "gradlew"
            if argv
                .iter()
                .any(|w| w.value == "dependencies" || w.value == "--refresh-dependencies") =>
        {
            Some((
                vec!["build.gradle*".into(), "settings.gradle*".into()],
                vec!["gradle.properties"],
            ))
        }
        "bundle" if sub == "install" => Some((vec!["Gemfile".into()], vec!["Gemfile.lock"])),
        "composer" if sub == "install" => Some((vec!["composer.json".into()], vec!["composer.lock"])),
        _ => None,
    }
}

/// `cargo build` that downloads crates (not `--offline`/`--frozen`: those use crates fetched earlier).
fn is_cargo_build(cmd: &Command) -> bool {
    cmd.name() == Some("cargo")
        && cmd
            .subcommand()
            .is_some_and(|w| matches!(w.value.as_str(), "build" | "b"))
        && !cmd.has_arg("--offline")
        && !cmd.has_arg("--frozen")
}

/// A cargo command that fills the registry cache (or compiles dependencies) ahead of the sources.
fn fetches_crates(cmd: &Command) -> bool {
    cmd.name() == Some("cargo")
        && cmd
            .subcommand()
            .is_some_and(|w| matches!(w.value.as_str(), "fetch" | "build" | "b" | "chef" | "vendor"))
}

/// RUN `i` mounts a cache for the cargo registry or a `target` directory.
fn has_cargo_cache_mount(ctx: &Ctx, i: usize) -> bool {
    ctx.ins(i).effective().flags.iter().any(|f| {
        f.name == "mount"
            && f.value.as_deref().is_some_and(|v| {
                v.contains("type=cache")
                    && v.split(',').any(|kv| {
                        kv.split_once('=').is_some_and(|(k, p)| {
                            matches!(k, "target" | "dst" | "destination")
                                && (p.contains("cargo") || p.trim_end_matches('/').ends_with("target"))
                        })
                    })
            })
    })
}

/// Crates were fetched before instruction `before` of `stage`, or anywhere in a stage it is built FROM.
fn crates_fetched(ctx: &Ctx, stage: usize, before: usize) -> bool {
    ctx.model.lineage(stage).into_iter().enumerate().any(|(n, s)| {
        ctx.model.stages[s]
            .body
            .iter()
            .filter(|&&i| n > 0 || i < before)
            .any(|&i| ctx.commands(i).any(|(_, c)| fetches_crates(c)))
    })
}

fn is_broad(src: &str) -> bool {
    matches!(src, "." | "./" | "*" | "./*" | "./.")
}

/// Sources and destination of a COPY/ADD in shell form.
fn copy_parts(ctx: &Ctx, i: usize) -> Option<(Vec<String>, String)> {
    let ins = ctx.ins(i);
    if !matches!(ins.keyword, Keyword::Copy | Keyword::Add) || ins.flag("from").is_some() || !ins.heredocs.is_empty() {
        return None;
    }
    let mut ws: Vec<String> = match &ins.args.form {
        crate::ast::Form::Exec(w) => w.iter().map(|w| w.value.clone()).collect(),
        crate::ast::Form::Shell => words::split(&ins.args.text, ctx.model.df.escape)
            .into_iter()
            .map(|w| w.value)
            .collect(),
    };
    let dest = ws.pop()?;
    Some((ws, dest))
}

fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    for stage in &ctx.model.stages {
        let mut copied: Vec<String> = Vec::new();
        let mut broad: Option<usize> = None;
        for (k, &i) in stage.body.iter().enumerate() {
            if let Some((srcs, _)) = copy_parts(ctx, i) {
                if broad.is_none() && srcs.iter().any(|s| is_broad(s)) {
                    broad = Some(i);
                } else if broad.is_none() {
                    copied.extend(srcs.iter().map(|s| basename(s.trim_end_matches('/')).to_string()));
                }
                continue;
            }
            let Some(b) = broad else { continue };
            if !ctx.is(i, Keyword::Run) {
                continue;
            }
            for (_, cmd) in ctx.commands(i) {
                if is_cargo_build(cmd) {
                    if has_cargo_cache_mount(ctx, i) || crates_fetched(ctx, stage.index, b) {
                        break;
                    }
                    let line = ctx.src[..ctx.ins(i).span.start].matches('\n').count() + 1;
                    out.push(finding(
                        RULE.id,
                        ctx.ins(b).span,
                        format!(
                            "the whole context is copied before `cargo build` (line {line}), so every source change \
                             downloads and compiles all dependencies again: copy Cargo.toml and Cargo.lock first and \
                             `cargo fetch`, or use a cache mount or cargo-chef"
                        ),
                    ));
                    broad = None;
                    break;
                }
                let Some((required, optional)) = manifests(cmd) else {
                    continue;
                };
                let already = required.iter().all(|m| {
                    let m = basename(m).as_bytes();
                    copied.iter().any(|c| glob(c.as_bytes(), m) || glob(m, c.as_bytes()))
                });
                if already {
                    continue;
                }
                let tool = cmd
                    .argv()
                    .iter()
                    .take(2)
                    .map(|w| w.value.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                let line = ctx.src[..ctx.ins(i).span.start].matches('\n').count() + 1;
                let mut f = finding(
                    RULE.id,
                    ctx.ins(b).span,
                    format!(
                        "the whole context is copied before `{tool}` (line {line}), which needs only {}: every source change re-runs it",
                        required
                            .iter()
                            .map(String::as_str)
                            .chain(optional.iter().copied())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                if k > 0 && stage.body[k - 1] == b {
                    f.fix = split_fix(ctx, b, i, &required, &optional);
                }
                out.push(f);
                // Only the first install after the broad COPY is reported.
                broad = None;
                break;
            }
        }
    }
}

fn split_fix(ctx: &Ctx, copy: usize, run: usize, required: &[String], optional: &[&str]) -> Option<Fix> {
    let c = ctx.ins(copy);
    let r = ctx.ins(run);
    if c.onbuild.is_some() || r.onbuild.is_some() || !r.heredocs.is_empty() {
        return None;
    }
    // The RUN must only install (and clean caches).
    let all_install = ctx.commands(run).all(|(_, cmd)| {
        manifests(cmd).is_some()
            || cmd.is("npm", "cache")
            || cmd.is("yarn", "cache")
            || (cmd.name() == Some("rm") && cmd.words.iter().all(|w| !w.value.starts_with('.') && w.value != "*"))
    });
    if !all_install {
        return None;
    }
    let (_, dest) = copy_parts(ctx, copy)?;
    let dest = if dest.ends_with('/') {
        dest
    } else if dest == "." {
        "./".to_string()
    } else {
        format!("{dest}/")
    };
    let mut files: Vec<String> = Vec::new();
    for m in required {
        files.push(m.clone());
    }
    for o in optional {
        match ctx.context {
            Some(cx) if cx.dir.join(o).exists() => files.push(o.to_string()),
            Some(_) => {}
            None => files.push(format!("{o}*")),
        }
    }
    let mut flags = String::new();
    for f in &c.flags {
        if matches!(f.name.as_str(), "chown" | "chmod" | "link") {
            flags.push_str(ctx.src.get(f.span.start..f.span.end)?);
            flags.push(' ');
        }
    }
    let nl = ctx.nl();
    let copy_line = ctx.line_start(copy);
    let indent = &ctx.src[copy_line..c.span.start];
    let run_item = ctx.item_span(run);
    let mut run_text = ctx.src.get(r.span.start..r.span.end)?.to_string();
    run_text.push_str(nl);
    let kw = if c.keyword_text.chars().all(|ch| ch.is_ascii_lowercase()) {
        "copy"
    } else {
        "COPY"
    };
    let insert = format!("{kw} {flags}{} {dest}{nl}{indent}{run_text}{indent}", files.join(" "));
    Some(Fix {
        edits: vec![
            Edit::insert(c.span.start, insert),
            Edit {
                span: run_item,
                text: String::new(),
            },
        ],
        files: vec![],
    })
}

#[cfg(test)]
mod tests {
    use crate::rules::test_util::{fixed, lines};

    #[test]
    fn node() {
        let src = "FROM node:20\nWORKDIR /app\nCOPY . .\nRUN npm ci\nRUN npm run build\n";
        assert_eq!(lines(src, "WH007"), [3]);
        assert_eq!(
            fixed(src, "WH007"),
            "FROM node:20\nWORKDIR /app\nCOPY package.json package-lock.json* npm-shrinkwrap.json* ./\nRUN npm ci\nCOPY . .\nRUN npm run build\n"
        );
        let ok = "FROM node:20\nWORKDIR /app\nCOPY package*.json ./\nRUN npm ci\nCOPY . .\nRUN npm run build\n";
        assert!(lines(ok, "WH007").is_empty());
        // `npm ci && npm run build` needs the sources: reported, not fixed.
        let mixed = "FROM node:20\nCOPY . /app\nRUN npm ci && npm run build\n";
        assert_eq!(lines(mixed, "WH007"), [2]);
        assert_eq!(fixed(mixed, "WH007"), mixed);
    }

    #[test]
    fn python_and_go() {
        let src = "FROM python:3.12\nCOPY --chown=app . /srv\nRUN pip install -r requirements.txt\n";
        assert_eq!(
            fixed(src, "WH007"),
            "FROM python:3.12\nCOPY --chown=app requirements.txt /srv/\nRUN pip install -r requirements.txt\nCOPY --chown=app . /srv\n"
        );
        let go = "FROM golang:1.22\nCOPY . .\nRUN go mod download\nRUN go build -o /app\n";
        assert_eq!(lines(go, "WH007"), [2]);
        assert!(
            lines(
                "FROM golang:1.22\nCOPY go.mod go.sum ./\nRUN go mod download\nCOPY . .\nRUN go build\n",
                "WH007"
            )
            .is_empty()
        );
        assert!(lines("FROM python:3\nCOPY . .\nRUN pip install flask\n", "WH007").is_empty());
        let gradle = "FROM gradle:8-jdk17\nCOPY . .\nRUN gradle dependencies --no-daemon\nRUN gradle build\n";
        assert_eq!(
            fixed(gradle, "WH007"),
            "FROM gradle:8-jdk17\nCOPY build.gradle* settings.gradle* gradle.properties* ./\nRUN gradle dependencies --no-daemon\nCOPY . .\nRUN gradle build\n"
        );
        let ok =
            "FROM gradle:8-jdk17\nCOPY build.gradle.kts settings.gradle.kts ./\nRUN gradle dependencies\nCOPY . .\n";
        assert!(lines(ok, "WH007").is_empty());
    }

    #[test]
    fn cargo_build_after_broad_copy() {
        let src = "FROM rust:1.79 AS build\nWORKDIR /app\nCOPY . .\nRUN cargo build --release\n";
        assert_eq!(lines(src, "WH007"), [3]);
        // Needs the sources: reported, never moved.
        assert_eq!(fixed(src, "WH007"), src);
        // Copying the manifests without fetching does not help.
        let manifests_only = "FROM rust:1.79\nCOPY Cargo.toml Cargo.lock ./\nCOPY . .\nRUN cargo build\n";
        assert_eq!(lines(manifests_only, "WH007"), [3]);
        // `cargo b` and a chain: reported once.
        let chained = "FROM rust:1\nCOPY ./ /src/\nRUN cd /src && cargo b -r\nRUN cargo build\n";
        assert_eq!(lines(chained, "WH007"), [2]);
    }

    #[test]
    fn cargo_build_not_flagged() {
        let ok = [
            // Dependencies fetched before the broad COPY.
            "FROM rust:1.79\nCOPY Cargo.toml Cargo.lock ./\nRUN cargo fetch\nCOPY . .\nRUN cargo build --release\n",
            // cargo-chef.
            "FROM chef AS build\nCOPY --from=planner /app/recipe.json .\nRUN cargo chef cook --release --recipe-path recipe.json\nCOPY . .\nRUN cargo build --release\n",
            // Fetched in the stage it is built FROM.
            "FROM rust:1.79 AS deps\nCOPY Cargo.* ./\nRUN cargo fetch\nFROM deps\nCOPY . .\nRUN cargo build\n",
            // Cache mounts.
            "FROM rust:1.79\nCOPY . .\nRUN --mount=type=cache,target=/usr/local/cargo/registry cargo build\n",
            "FROM rust:1.79\nCOPY . .\nRUN --mount=type=cache,target=/app/target/ cargo build\n",
            // Offline: the crates come from elsewhere (vendored).
            "FROM rust:1.79\nCOPY . .\nRUN cargo build --offline\n",
            // No broad COPY.
            "FROM rust:1.79\nCOPY src src\nRUN cargo build\n",
            // Sources before the build, not a build.
            "FROM rust:1.79\nCOPY . .\nRUN cargo chef prepare --recipe-path recipe.json\n",
        ];
        for src in ok {
            assert!(lines(src, "WH007").is_empty(), "{src}");
        }
    }
}
