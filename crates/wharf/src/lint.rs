//! `wharf lint`: lints Dockerfiles with `wharf-dockerfile` and prints a report; fails when an error-level finding
//! exists.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use wharf_dockerfile::config::{Config, parse_mirror_arg, preset};
use wharf_dockerfile::context::scan;
use wharf_dockerfile::lint::{LintResult, Options, lint};
use wharf_dockerfile::report::{self, FileReport};
use wharf_dockerfile::rules::{RULES, Severity, rule_by_id};

use crate::cli::{DockerfileOptions, LintArgs, LintFormat};

const DEFAULT_CONFIG: &str = ".wharf-lint.toml";

/// The configuration: the file (given or `./.wharf-lint.toml`), then `--preset`, then `--mirror` entries.
pub fn config(opts: &DockerfileOptions) -> anyhow::Result<Config> {
    let mut cfg = match &opts.config {
        Some(p) => Config::load(p)?,
        None if Path::new(DEFAULT_CONFIG).is_file() => Config::load(Path::new(DEFAULT_CONFIG))?,
        None => Config::default(),
    };
    if let Some(p) = &opts.preset {
        cfg.mirrors.extend(preset(p)?);
    }
    for m in &opts.mirrors {
        let (k, v) = parse_mirror_arg(m)?;
        cfg.mirrors.insert(k, v);
    }
    Ok(cfg)
}

/// Lint options for one Dockerfile: the config and its scanned build context.
pub fn options(cfg: &Config, opts: &DockerfileOptions, dockerfile: &Path) -> anyhow::Result<Options> {
    let context = match context_dir(opts, dockerfile) {
        None => None,
        Some(dir) => {
            Some(scan(&dir, Some(dockerfile)).with_context(|| format!("scanning build context {}", dir.display()))?)
        }
    };
    Ok(Options {
        config: cfg.clone(),
        context,
    })
}

fn context_dir(opts: &DockerfileOptions, dockerfile: &Path) -> Option<PathBuf> {
    if opts.no_context || (dockerfile == Path::new("-") && opts.context.is_none()) {
        return None;
    }
    Some(match &opts.context {
        Some(d) => d.clone(),
        None => match dockerfile.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    })
}

/// The Dockerfile at `path`, or standard input for `-`.
pub fn read_source(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading standard input")?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Dockerfiles named by `paths` (a directory gives its `Dockerfile`, `Dockerfile.*` and `*.Dockerfile`).
fn expand_paths(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let paths = if paths.is_empty() {
        vec![PathBuf::from("Dockerfile")]
    } else {
        paths.to_vec()
    };
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    f.is_file()
                        && !name.ends_with(".dockerignore")
                        && (name == "Dockerfile"
                            || name.starts_with("Dockerfile.")
                            || name.to_ascii_lowercase().ends_with(".dockerfile"))
                })
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("no Dockerfile in {}", p.display());
            }
            out.extend(found);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

/// Writes to stdout; a closed pipe (`wharf lint | head`) is not an error.
pub fn stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `--rules` and `--rules ID`.
fn list_rules(which: &str) -> anyhow::Result<()> {
    let mut text = String::new();
    if which == "all" {
        for r in RULES {
            let fix = if r.fixable { "fix" } else { "" };
            let hl = r.hadolint.map(|h| format!(" (hadolint {h})")).unwrap_or_default();
            text.push_str(&format!(
                "{}  {:<8} {:<3}  {:<26} {}{hl}\n",
                r.id,
                r.severity.as_str(),
                fix,
                r.name,
                r.summary
            ));
        }
    } else {
        let r = rule_by_id(which).with_context(|| format!("unknown rule `{which}`"))?;
        text.push_str(&format!(
            "{} {} ({}{})\n\n{}\n\n{}\n",
            r.id,
            r.name,
            r.severity.as_str(),
            if r.fixable { ", fixable" } else { "" },
            r.summary,
            r.doc
        ));
    }
    stdout(&text)
}

pub fn run(args: LintArgs) -> anyhow::Result<()> {
    if let Some(which) = &args.rules {
        return list_rules(which);
    }
    let cfg = config(&args.options)?;
    let mut results: Vec<(String, LintResult)> = Vec::new();
    // Dockerfiles sharing a context directory (and no `<name>.dockerignore`) share one scan.
    let mut scans: std::collections::HashMap<PathBuf, Options> = std::collections::HashMap::new();
    for path in expand_paths(&args.paths)? {
        let src = read_source(&path)?;
        let own_ignore = path.with_file_name(format!(
            "{}.dockerignore",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let opts = match context_dir(&args.options, &path) {
            Some(dir) if !own_ignore.exists() => match scans.get(&dir) {
                Some(o) => o.clone(),
                None => {
                    let o = options(&cfg, &args.options, &path)?;
                    scans.insert(dir, o.clone());
                    o
                }
            },
            _ => options(&cfg, &args.options, &path)?,
        };
        results.push((path.display().to_string(), lint(&src, &opts)));
    }
    let files: Vec<FileReport> = results.iter().map(|(p, r)| FileReport { path: p, result: r }).collect();
    let text = match args.format {
        LintFormat::Text => report::text(&files, std::io::stdout().is_terminal()),
        LintFormat::Json => report::json_text(&files) + "\n",
        LintFormat::Sarif => report::sarif_text(&files) + "\n",
    };
    stdout(&text)?;
    let errors: usize = results
        .iter()
        .map(|(_, r)| r.findings.iter().filter(|f| f.severity == Severity::Error).count())
        .sum();
    if errors > 0 {
        bail!("{errors} error-level finding(s)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> DockerfileOptions {
        DockerfileOptions {
            config: None,
            mirrors: vec![],
            preset: None,
            context: None,
            no_context: true,
        }
    }

    #[test]
    fn config_merges_preset_and_flags() {
        let mut o = opts();
        o.preset = Some("tuna".into());
        o.mirrors = vec!["alpine=mirrors.example.com".into()];
        let cfg = config(&o).unwrap();
        use wharf_dockerfile::config::MirrorKey;
        assert_eq!(cfg.mirrors[&MirrorKey::Alpine], "mirrors.example.com");
        assert_eq!(cfg.mirrors[&MirrorKey::Go], "https://goproxy.cn,direct");
        o.mirrors = vec!["nope=x".into()];
        assert!(config(&o).is_err());
    }

    #[test]
    fn directories_expand_to_dockerfiles() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "Dockerfile",
            "Dockerfile.dev",
            "api.Dockerfile",
            "Dockerfile.dockerignore",
            "README.md",
        ] {
            std::fs::write(dir.path().join(n), "FROM a:1\n").unwrap();
        }
        let found = expand_paths(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["Dockerfile", "Dockerfile.dev", "api.Dockerfile"]);
        assert!(expand_paths(&[dir.path().join("README.md").parent().unwrap().join("empty")]).is_ok());
    }
}
