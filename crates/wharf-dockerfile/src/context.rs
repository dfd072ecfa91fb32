//! The build context directory: its `.dockerignore`, what it would send to the builder, and the clutter it lets in.

use std::path::{Path, PathBuf};

use crate::error::ContextError;

/// Top-level names that should not be in a build context.
pub const CLUTTER: &[&str] = &[
    ".git",
    "node_modules",
    "target",
    ".venv",
    "venv",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".tox",
    ".idea",
    ".vscode",
    "dist",
    "build",
    ".next",
    "coverage",
    ".gradle",
];

/// A scanned build context.
#[derive(Debug, Clone, Default)]
pub struct ContextInfo {
    pub dir: PathBuf,
    /// The ignore file in use (`<Dockerfile>.dockerignore` or `.dockerignore`), if any.
    pub ignore_file: Option<PathBuf>,
    /// Its text.
    pub ignore_text: String,
    pub patterns: Vec<Pattern>,
    /// Bytes and files that would be sent.
    pub sent_bytes: u64,
    pub sent_files: u64,
    /// Top-level clutter present and not excluded: name, bytes.
    pub leaks: Vec<(String, u64)>,
    /// Top-level clutter present (excluded or not).
    pub clutter_present: Vec<String>,
}

impl ContextInfo {
    /// Where `wharf fix` writes the ignore file.
    pub fn ignore_path(&self) -> PathBuf {
        self.ignore_file
            .clone()
            .unwrap_or_else(|| self.dir.join(".dockerignore"))
    }

    pub fn is_excluded(&self, rel: &str) -> bool {
        excluded(&self.patterns, rel)
    }
}

/// The ignore file in use for `dir` (`<Dockerfile>.dockerignore` next to `dockerfile`, else `dir/.dockerignore`)
/// and its text; `(None, "")` when there is none.
pub fn ignore_file(dir: &Path, dockerfile: Option<&Path>) -> Result<(Option<PathBuf>, String), ContextError> {
    let specific = dockerfile.and_then(|d| {
        let name = d.file_name()?.to_str()?;
        Some(d.with_file_name(format!("{name}.dockerignore")))
    });
    for candidate in specific.into_iter().chain([dir.join(".dockerignore")]) {
        if candidate.is_file() {
            let text = std::fs::read_to_string(&candidate).map_err(|source| ContextError::Io {
                path: candidate.clone(),
                source,
            })?;
            return Ok((Some(candidate), text));
        }
    }
    Ok((None, String::new()))
}

/// Scans `dir`. `dockerfile` is used to find a `<name>.dockerignore` next to it.
pub fn scan(dir: &Path, dockerfile: Option<&Path>) -> Result<ContextInfo, ContextError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ContextError::Io { path, source }
    };
    let (ignore_file, ignore_text) = ignore_file(dir, dockerfile)?;
    let mut info = ContextInfo {
        dir: dir.to_path_buf(),
        ignore_file,
        ignore_text,
        ..Default::default()
    };
    info.patterns = parse_ignore(&info.ignore_text);
    let has_negation = info.patterns.iter().any(|p| p.negate);
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    let mut budget = 500_000usize;
    while let Some((path, rel)) = stack.pop() {
        // Only the context directory itself must be readable; unreadable entries below it are skipped.
        let entries = match std::fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if rel.is_empty() => return Err(io(&path)(e)),
            Err(_) => continue,
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let Ok(ft) = entry.file_type() else { continue };
            let is_excluded = excluded(&info.patterns, &child_rel);
            if rel.is_empty() && CLUTTER.contains(&name.as_str()) {
                info.clutter_present.push(name.clone());
                if !is_excluded {
                    info.leaks.push((name.clone(), dir_size(&entry.path(), &mut budget)));
                }
            }
            if ft.is_dir() {
                if !is_excluded || has_negation {
                    stack.push((entry.path(), child_rel));
                }
            } else if !is_excluded {
                info.sent_files += 1;
                info.sent_bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return Ok(info);
            }
        }
    }
    info.leaks.sort();
    info.clutter_present.sort();
    Ok(info)
}

fn dir_size(path: &Path, budget: &mut usize) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else { continue };
        for e in rd.flatten() {
            *budget = budget.saturating_sub(1);
            if *budget == 0 {
                return total;
            }
            match e.file_type() {
                Ok(ft) if ft.is_dir() => stack.push(e.path()),
                Ok(_) => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    total
}

/// One `.dockerignore` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub negate: bool,
    /// Cleaned path components.
    pub parts: Vec<String>,
}

pub fn parse_ignore(text: &str) -> Vec<Pattern> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (negate, pat) = match line.strip_prefix('!') {
            Some(p) => (true, p.trim()),
            None => (false, line),
        };
        let parts: Vec<String> = pat
            .split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .map(str::to_string)
            .collect();
        if !parts.is_empty() {
            out.push(Pattern { negate, parts });
        }
    }
    out
}

/// Docker semantics: the last matching pattern wins; a pattern matching a parent directory matches its contents.
pub fn excluded(patterns: &[Pattern], rel: &str) -> bool {
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    let mut result = false;
    for p in patterns {
        let hit = (1..=comps.len()).any(|n| match_parts(&p.parts, &comps[..n]));
        if hit {
            result = !p.negate;
        }
    }
    result
}

fn match_parts(pat: &[String], path: &[&str]) -> bool {
    match pat.first() {
        None => path.is_empty(),
        Some(p) if p == "**" => (0..=path.len()).any(|k| match_parts(&pat[1..], &path[k..])),
        Some(p) => !path.is_empty() && glob(p.as_bytes(), path[0].as_bytes()) && match_parts(&pat[1..], &path[1..]),
    }
}

/// `*`, `?`, `[a-z]`, `[^x]`, `\x` within one path component.
pub fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|k| glob(&p[1..], &s[k..])),
        Some(b'?') => !s.is_empty() && glob(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(close) = p.iter().skip(1).position(|&c| c == b']').map(|i| i + 1) else {
                return !s.is_empty() && s[0] == b'[' && glob(&p[1..], &s[1..]);
            };
            let Some(&c) = s.first() else { return false };
            let (neg, set) = match p[1..close].split_first() {
                Some((b'^' | b'!', rest)) => (true, rest),
                _ => (false, &p[1..close]),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != neg && glob(&p[close + 1..], &s[1..])
        }
        Some(b'\\') if p.len() > 1 => !s.is_empty() && s[0] == p[1] && glob(&p[2..], &s[1..]),
        Some(&c) => !s.is_empty() && s[0] == c && glob(&p[1..], &s[1..]),
    }
}

/// `1.2 MiB`
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_matching() {
        let pats = parse_ignore("# c\n.git\n**/node_modules\n*.log\n!keep.log\n/target/\nsrc/*/gen\n");
        assert!(excluded(&pats, ".git"));
        assert!(excluded(&pats, ".git/objects/ab"));
        assert!(excluded(&pats, "a/b/node_modules/x"));
        assert!(excluded(&pats, "x.log"));
        assert!(!excluded(&pats, "keep.log"));
        assert!(excluded(&pats, "target/debug"));
        assert!(excluded(&pats, "src/a/gen"));
        assert!(!excluded(&pats, "src/gen"));
        assert!(!excluded(&pats, "main.go"));
        assert!(glob(b"[a-c]x", b"bx") && !glob(b"[^a-c]x", b"bx"));
    }

    #[test]
    fn scans_a_context() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".git/objects")).unwrap();
        std::fs::write(dir.path().join(".git/objects/x"), vec![0u8; 2048]).unwrap();
        std::fs::create_dir_all(dir.path().join("node_modules/a")).unwrap();
        std::fs::write(dir.path().join("node_modules/a/i.js"), "x").unwrap();
        std::fs::write(dir.path().join("main.js"), "12345").unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "node_modules\n").unwrap();
        let info = scan(dir.path(), None).unwrap();
        assert_eq!(info.leaks, [(".git".to_string(), 2048)]);
        assert_eq!(info.clutter_present, [".git", "node_modules"]);
        assert_eq!(info.sent_files, 3); // .git/objects/x, main.js, .dockerignore
        assert_eq!(human_size(2048), "2.0 KiB");
    }
}
