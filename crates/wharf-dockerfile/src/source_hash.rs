//! The content hashes the Docker engine's classic builder writes into a `COPY`/`ADD` step's key (`file:<hex>`,
//! `dir:<hex>`, `multi:<hex>`), computed from the build context directory the way the engine would see it.
//!
//! The docker CLI sends the context as a tar (`.dockerignore` applied, every owner forced to 0, the Dockerfile and
//! `.dockerignore` always included); the engine reads it through a streaming tarsum that gives every entry a digest
//! of its header (name, mode, uid, gid, size, type, link target, no mtime) and content, then deletes the Dockerfile
//! and `.dockerignore` again if the patterns name them. A source is hashed after following symlinks inside the
//! context: a file is `file:` + its entry digest, a directory `dir:` + sha256 of its entries' digests sorted and
//! joined by commas, several sources (or a wildcard matching several) `multi:` + sha256 of their hashes in order.
//! The sources of this, quoted: `docs/research/classic-builder-cache-keys.md` §2. Written by hand because no crate
//! reproduces moby's tarsum (v1 header selection, blanked user names, its hardlink and symlink rules).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::context::{Pattern, excluded, glob, parse_ignore};
use crate::error::ContextError;

/// Symlinks followed when resolving one path (as moby's `FollowSymlinkInScope`).
const MAX_LINKS: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink(String),
}

/// The build context as the engine holds it after receiving it: which entries exist, and the tarsum of each one the
/// CLI sent.
#[derive(Debug, Clone)]
pub struct ContextHashes {
    /// Every entry on the engine's side by path components (so iteration is `filepath.Walk` order).
    entries: BTreeMap<Vec<String>, Kind>,
    /// Tarsum digest (hex) of each sent entry, by its cleaned path; the first entry of a name wins.
    sums: HashMap<String, String>,
    /// What the CLI sends, in its order: what `wharf build` writes into the context tar.
    sent: Vec<Sent>,
}

/// One entry of the context tar, with the header fields the tarsum reads.
#[derive(Debug, Clone)]
pub struct Sent {
    /// `/`-separated, relative to the context; directories end with `/`.
    pub name: String,
    /// Permission and set-id bits.
    pub mode: u32,
    pub body: SentBody,
}

#[derive(Debug, Clone)]
pub enum SentBody {
    Dir,
    /// A regular file on disk and its size.
    File(PathBuf, u64),
    /// A file given as bytes (the Dockerfile as `wharf build --mirror-preset` rewrote it).
    Bytes(Vec<u8>),
    Symlink(String),
    /// A second name of a file sent before under this name.
    HardLink(String),
}

/// The Dockerfile in the context: where, and its text when it is not the file on disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct DockerfileEntry<'a> {
    /// Its path in the context (`/`-separated); `None` when it lies outside.
    pub path: Option<&'a str>,
    /// Its bytes, sent instead of the file's (or added when no such file exists).
    pub text: Option<&'a [u8]>,
}

/// Why a source cannot be hashed: the build would fail there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("{0}: file not found in build context or excluded by .dockerignore")]
    NotFound(String),
    #[error("no source files were specified")]
    NoSources,
    #[error("{0}: forbidden path outside the build context")]
    Outside(String),
}

impl ContextHashes {
    /// Reads `dir` as the docker CLI would send it with `dockerfile` (a path relative to `dir`, `/`-separated; `None`
    /// when the Dockerfile is outside the context) and the context's `.dockerignore` text.
    pub fn scan(dir: &Path, dockerfile: Option<&str>, ignore_text: &str) -> Result<ContextHashes, ContextError> {
        Self::scan_with(
            dir,
            DockerfileEntry {
                path: dockerfile,
                text: None,
            },
            ignore_text,
        )
    }

    /// [`ContextHashes::scan`] with the Dockerfile's text given (the file at `dockerfile.path` replaced, or added).
    pub fn scan_with(
        dir: &Path,
        dockerfile_entry: DockerfileEntry,
        ignore_text: &str,
    ) -> Result<ContextHashes, ContextError> {
        let dockerfile = dockerfile_entry.path;
        let user = parse_ignore(ignore_text);
        // The CLI always sends these two (TrimBuildFilesFromExcludes).
        let mut patterns = user.clone();
        for keep in [Some(".dockerignore"), dockerfile].into_iter().flatten() {
            if excluded(&patterns, keep) {
                patterns.push(Pattern {
                    negate: true,
                    parts: keep.split('/').map(str::to_string).collect(),
                });
            }
        }
        let has_exceptions = patterns.iter().any(|p| p.negate);
        let mut ctx = ContextHashes {
            entries: BTreeMap::new(),
            sums: HashMap::new(),
            sent: Vec::new(),
        };
        let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
        ctx.walk(dir, &mut Vec::new(), &patterns, has_exceptions, &mut inodes)?;
        if let (Some(path), Some(text)) = (dockerfile, dockerfile_entry.text) {
            ctx.replace_file(path, text);
        }
        // The engine deletes them after reading them if the user's own patterns name them.
        for name in [Some(".dockerignore"), dockerfile].into_iter().flatten() {
            if excluded(&user, name) {
                ctx.entries.remove(&components(name));
            }
        }
        Ok(ctx)
    }

    /// What the CLI sends, in order.
    pub fn sent(&self) -> &[Sent] {
        &self.sent
    }

    /// Sends `text` as the file `path` (a new one, mode 0644, if the context has none).
    fn replace_file(&mut self, path: &str, text: &[u8]) {
        let key = components(path);
        let name = key.join("/");
        let mode = match self.sent.iter().position(|e| e.name == name) {
            Some(i) => {
                let mode = self.sent[i].mode;
                self.sent.remove(i);
                mode
            }
            None => 0o644,
        };
        let entry = Sent {
            name: name.clone(),
            mode,
            body: SentBody::Bytes(text.to_vec()),
        };
        self.sums.insert(name.clone(), entry_sum(&entry, text));
        // Parents the walk did not send are created by untar; the file goes where the walk would have put it.
        for n in 1..key.len() {
            self.entries.entry(key[..n].to_vec()).or_insert(Kind::Dir);
        }
        self.entries.insert(key, Kind::File);
        let at = self
            .sent
            .iter()
            .position(|e| walk_order(&e.name, &name).is_gt())
            .unwrap_or(self.sent.len());
        self.sent.insert(at, entry);
    }

    fn walk(
        &mut self,
        dir: &Path,
        rel: &mut Vec<String>,
        patterns: &[Pattern],
        has_exceptions: bool,
        inodes: &mut HashMap<(u64, u64), String>,
    ) -> Result<(), ContextError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ContextError::Io { path, source }
        };
        let mut names: Vec<(String, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            // A name that is not UTF-8 cannot be a Dockerfile source anyway; it is left out.
            if let Some(name) = entry.file_name().to_str() {
                names.push((name.to_string(), entry.path()));
            }
        }
        names.sort();
        for (name, path) in names {
            rel.push(name);
            let joined = rel.join("/");
            let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
            let skip = excluded(patterns, &joined);
            let kind = if meta.is_dir() {
                Kind::Dir
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).map_err(io(&path))?;
                Kind::Symlink(target.to_string_lossy().into_owned())
            } else {
                Kind::File
            };
            if meta.is_dir() {
                if skip && !has_exceptions {
                    rel.pop();
                    continue;
                }
                // An excluded directory walked for its exceptions is not sent itself; untar creates it anyway.
                self.entries.insert(rel.clone(), Kind::Dir);
                if !skip {
                    let entry = Sent {
                        name: format!("{joined}/"),
                        mode: meta.mode() & 0o7777,
                        body: SentBody::Dir,
                    };
                    let sum = entry_sum(&entry, &[]);
                    self.sums.entry(joined.clone()).or_insert(sum);
                    self.sent.push(entry);
                }
                self.walk(&path, rel, patterns, has_exceptions, inodes)?;
            } else if !skip && (meta.is_file() || matches!(kind, Kind::Symlink(_))) {
                let body = match &kind {
                    Kind::Symlink(target) => SentBody::Symlink(target.clone()),
                    _ => match inodes.get(&(meta.dev(), meta.ino())) {
                        Some(first) if meta.nlink() > 1 => SentBody::HardLink(first.clone()),
                        _ => {
                            if meta.nlink() > 1 {
                                inodes.insert((meta.dev(), meta.ino()), joined.clone());
                            }
                            SentBody::File(path.clone(), meta.len())
                        }
                    },
                };
                let entry = Sent {
                    name: joined.clone(),
                    mode: meta.mode() & 0o7777,
                    body,
                };
                let sum = match &entry.body {
                    SentBody::File(p, _) => {
                        let mut file = std::fs::File::open(p).map_err(io(p))?;
                        entry_sum_from(&entry, &mut file)
                    }
                    _ => entry_sum(&entry, &[]),
                };
                self.entries.insert(rel.clone(), kind);
                self.sums.entry(joined).or_insert(sum);
                self.sent.push(entry);
            }
            // Devices, fifos and sockets are left out: no Dockerfile copies them from a context.
            rel.pop();
        }
        Ok(())
    }

    /// The hash of `COPY`/`ADD` sources (already expanded), as the key's `<hash>` part.
    pub fn hash_sources(&self, sources: &[String]) -> Result<String, SourceError> {
        let mut infos = Vec::new();
        for src in sources {
            let trimmed = src.strip_prefix('/').unwrap_or(src);
            let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
            if contains_wildcards(trimmed) {
                let pattern: Vec<&str> = trimmed.split('/').collect();
                let before = infos.len();
                for path in self.entries.keys() {
                    if path_match(&pattern, path) {
                        infos.push(self.hash_one(&path.join("/"))?);
                    }
                }
                if infos.len() == before {
                    continue;
                }
            } else {
                infos.push(self.hash_one(trimmed)?);
            }
        }
        match infos.len() {
            0 => Err(SourceError::NoSources),
            1 => Ok(infos.remove(0)),
            _ => Ok(format!("multi:{}", sha256_hex(infos.join(",").as_bytes()))),
        }
    }

    /// `copyInfoForFile`, then `walkSource` for a directory.
    fn hash_one(&self, path: &str) -> Result<String, SourceError> {
        let resolved = self
            .resolve(path)
            .ok_or_else(|| SourceError::Outside(path.to_string()))?;
        match self.kind(&resolved) {
            None => Err(SourceError::NotFound(path.to_string())),
            Some(Kind::Dir) => {
                let mut hashes: Vec<String> = Vec::new();
                if !resolved.is_empty() {
                    hashes.push(self.entry_hash(&resolved.join("/")));
                }
                for (entry, _) in self.entries.range(resolved.clone()..) {
                    if !entry.starts_with(&resolved) {
                        break;
                    }
                    if entry.len() > resolved.len() {
                        hashes.push(self.entry_hash(&entry.join("/")));
                    }
                }
                hashes.sort();
                Ok(format!("dir:{}", sha256_hex(hashes.join(",").as_bytes())))
            }
            Some(_) => Ok(format!("file:{}", self.entry_hash(path))),
        }
    }

    /// `archiveContext.Hash`: the tarsum of the entry `path` leads to, or the path itself when none was sent.
    fn entry_hash(&self, path: &str) -> String {
        self.resolve(path)
            .and_then(|r| self.sums.get(&r.join("/")).cloned())
            .unwrap_or_else(|| path.to_string())
    }

    /// The entry at `path` after following symlinks (the last one too); `None` for `.` is `Some([])`.
    fn kind(&self, path: &[String]) -> Option<Kind> {
        if path.is_empty() {
            return Some(Kind::Dir);
        }
        self.entries.get(path).cloned()
    }

    /// `FollowSymlinkInScope`: resolves `path` inside the context, `..` never leaving it. `None` after too many
    /// links.
    fn resolve(&self, path: &str) -> Option<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        let mut todo: Vec<String> = components(path).into_iter().rev().collect();
        let mut links = 0;
        while let Some(part) = todo.pop() {
            match part.as_str() {
                "." => {}
                ".." => {
                    out.pop();
                }
                _ => {
                    out.push(part);
                    if let Some(Kind::Symlink(target)) = self.entries.get(&out) {
                        links += 1;
                        if links > MAX_LINKS {
                            return None;
                        }
                        out.pop();
                        if target.starts_with('/') {
                            out.clear();
                        }
                        todo.extend(components(target).into_iter().rev());
                    }
                }
            }
        }
        Some(out)
    }
}

fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect()
}

/// `containsWildcards` (unix): `*`, `?` or `[` not escaped by a backslash.
fn contains_wildcards(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// `filepath.Match`: no wildcard crosses a `/`, so the pattern and the path match component by component.
fn path_match(pattern: &[&str], path: &[String]) -> bool {
    pattern.len() == path.len() && pattern.iter().zip(path).all(|(p, s)| glob(p.as_bytes(), s.as_bytes()))
}

/// `filepath.Walk` order of two `/`-separated paths: component by component.
fn walk_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.trim_end_matches('/')
        .split('/')
        .cmp(b.trim_end_matches('/').split('/'))
}

fn entry_sum(entry: &Sent, content: &[u8]) -> String {
    entry_sum_from(entry, &mut &content[..])
}

/// One entry's tarsum (version 1): the selected header fields, each written as name + value, then the content. The
/// mode is permission and set-id bits only: the docker CLI from 23.0 on writes no file type bits (20.10 added them
/// with `fillGo18FileTypeBits`, so a 20.10 CLI's COPY keys differ from these).
fn entry_sum_from(entry: &Sent, content: &mut dyn Read) -> String {
    let (typeflag, size, link) = match &entry.body {
        SentBody::Dir => ('5', 0, ""),
        SentBody::File(_, size) => ('0', *size, ""),
        SentBody::Bytes(b) => ('0', b.len() as u64, ""),
        SentBody::Symlink(t) => ('2', 0, t.as_str()),
        SentBody::HardLink(first) => ('1', 0, first.as_str()),
    };
    let mut h = Sha256::new();
    for (k, v) in [
        ("name", entry.name.clone()),
        ("mode", entry.mode.to_string()),
        ("uid", "0".to_string()),
        ("gid", "0".to_string()),
        ("size", size.to_string()),
        ("typeflag", typeflag.to_string()),
        ("linkname", link.to_string()),
        ("uname", String::new()),
        ("gname", String::new()),
        ("devmajor", "0".to_string()),
        ("devminor", "0".to_string()),
    ] {
        h.update(k.as_bytes());
        h.update(v.as_bytes());
    }
    if typeflag == '0' {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match content.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => h.update(&buf[..n]),
            }
        }
    }
    hex::encode(h.finalize())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, content: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
    }

    #[test]
    fn file_dir_and_multi_hashes_follow_the_builder() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(d, "Dockerfile", "FROM scratch\n");
        write(d, "a.txt", "hello\n");
        write(d, "src/main.c", "int main;\n");
        write(d, "src/lib/x.c", "x\n");
        write(d, "secret.key", "k\n");
        write(d, ".dockerignore", "secret.key\n");
        std::os::unix::fs::symlink("a.txt", d.join("link")).unwrap();
        let ctx = ContextHashes::scan(d, Some("Dockerfile"), "secret.key\n").unwrap();
        let file = ctx.hash_sources(&["a.txt".into()]).unwrap();
        assert!(file.starts_with("file:"));
        // A symlink hashes as its target; `./` and `/` prefixes are dropped.
        assert_eq!(ctx.hash_sources(&["link".into()]).unwrap(), file);
        assert_eq!(ctx.hash_sources(&["/./a.txt".into()]).unwrap(), file);
        let dir = ctx.hash_sources(&["src".into()]).unwrap();
        assert!(dir.starts_with("dir:"));
        assert_eq!(
            ctx.hash_sources(&["secret.key".into()]),
            Err(SourceError::NotFound("secret.key".into()))
        );
        let multi = ctx.hash_sources(&["a.txt".into(), "src".into()]).unwrap();
        let expect = format!("multi:{}", sha256_hex(format!("{file},{dir}").as_bytes()));
        assert_eq!(multi, expect);
        // A wildcard matching one entry is that entry's hash; `*` does not cross `/`.
        assert_eq!(ctx.hash_sources(&["a.*".into()]).unwrap(), file);
        assert_eq!(ctx.hash_sources(&["*.c".into()]), Err(SourceError::NoSources));

        // An ignored file does not change `COPY .`; a sent one does.
        let all = ctx.hash_sources(&[".".into()]).unwrap();
        write(d, "secret.key", "changed\n");
        let again = ContextHashes::scan(d, Some("Dockerfile"), "secret.key\n").unwrap();
        assert_eq!(again.hash_sources(&[".".into()]).unwrap(), all);
        write(d, "src/lib/x.c", "y\n");
        let changed = ContextHashes::scan(d, Some("Dockerfile"), "secret.key\n").unwrap();
        assert_ne!(changed.hash_sources(&[".".into()]).unwrap(), all);
        assert_ne!(changed.hash_sources(&["src".into()]).unwrap(), dir);
        assert_eq!(changed.hash_sources(&["a.txt".into()]).unwrap(), file);
    }

    #[test]
    fn the_entry_digest_is_moby_tarsum_v1() {
        // A 0644 file `a` holding "x": the digest moby computes for it, spelled out field by field.
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "a", "x");
        let p = tmp.path().join("a");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let ctx = ContextHashes::scan(tmp.path(), None, "").unwrap();
        let fields = "namea\
                      mode420uid0gid0size1typeflag0linknameunamegnamedevmajor0devminor0x";
        assert_eq!(
            ctx.hash_sources(&["a".into()]).unwrap(),
            format!("file:{}", sha256_hex(fields.as_bytes()))
        );
    }
}
