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
        };
        let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
        ctx.walk(dir, &mut Vec::new(), &patterns, has_exceptions, &mut inodes)?;
        // The engine deletes them after reading them if the user's own patterns name them.
        for name in [Some(".dockerignore"), dockerfile].into_iter().flatten() {
            if excluded(&user, name) {
                ctx.entries.remove(&components(name));
            }
        }
        Ok(ctx)
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
                    self.sums
                        .entry(joined.clone())
                        .or_insert_with(|| header_sum(&format!("{joined}/"), &meta, "", b'5', &mut std::io::empty()));
                }
                self.walk(&path, rel, patterns, has_exceptions, inodes)?;
            } else if !skip {
                let sum = match &kind {
                    Kind::Symlink(target) => header_sum(&joined, &meta, target, b'2', &mut std::io::empty()),
                    _ if meta.nlink() > 1 && inodes.contains_key(&(meta.dev(), meta.ino())) => {
                        let first = inodes.get(&(meta.dev(), meta.ino())).cloned().unwrap_or_default();
                        header_sum(&joined, &meta, &first, b'1', &mut std::io::empty())
                    }
                    _ if meta.is_file() => {
                        if meta.nlink() > 1 {
                            inodes.insert((meta.dev(), meta.ino()), joined.clone());
                        }
                        let mut file = std::fs::File::open(&path).map_err(io(&path))?;
                        header_sum(&joined, &meta, "", b'0', &mut file)
                    }
                    // Devices, fifos, sockets: the CLI sends headers only.
                    _ => header_sum(&joined, &meta, "", special_flag(&meta), &mut std::io::empty()),
                };
                self.entries.insert(rel.clone(), kind);
                self.sums.entry(joined).or_insert(sum);
            }
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

fn special_flag(meta: &std::fs::Metadata) -> u8 {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_char_device() {
        b'3'
    } else if t.is_block_device() {
        b'4'
    } else if t.is_fifo() {
        b'6'
    } else {
        b'0'
    }
}

/// One entry's tarsum (version 1): the selected header fields, each written as name + value, then the content.
fn header_sum(name: &str, meta: &std::fs::Metadata, link: &str, typeflag: u8, content: &mut dyn Read) -> String {
    // Permission and set-id bits. The docker CLI from 23.0 on writes no file type bits (20.10 added them with
    // `fillGo18FileTypeBits`, so a 20.10 CLI's COPY keys differ from these).
    let mode = meta.mode() & 0o7777;
    let size = if typeflag == b'0' { meta.len() } else { 0 };
    let (major, minor) = if matches!(typeflag, b'3' | b'4') {
        let rdev = meta.rdev();
        (libc_major(rdev), libc_minor(rdev))
    } else {
        (0, 0)
    };
    let mut h = Sha256::new();
    for (k, v) in [
        ("name", name.to_string()),
        ("mode", mode.to_string()),
        ("uid", "0".to_string()),
        ("gid", "0".to_string()),
        ("size", size.to_string()),
        ("typeflag", (typeflag as char).to_string()),
        ("linkname", link.to_string()),
        ("uname", String::new()),
        ("gname", String::new()),
        ("devmajor", major.to_string()),
        ("devminor", minor.to_string()),
    ] {
        h.update(k.as_bytes());
        h.update(v.as_bytes());
    }
    let mut buf = [0u8; 64 * 1024];
    loop {
        match content.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => h.update(&buf[..n]),
        }
    }
    hex::encode(h.finalize())
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
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
