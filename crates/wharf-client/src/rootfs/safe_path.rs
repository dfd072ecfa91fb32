//! Paths from a layer, confined to the root.
//!
//! A tar entry's name is cleaned lexically first ([`clean`]): a leading `/` is dropped, `.` components vanish and
//! `..` can climb no higher than the root, as if the name were resolved under `chroot(root)`. The directories
//! above an entry are then resolved by [`Resolver`] one component at a time with `lstat`, and every symlink met on
//! the way is expanded *inside* the root: an absolute target restarts from the root, `..` stops at it (the
//! `securejoin` / containerd `fs.RootPath` approach). The result is a path made only of real directories under the
//! root (up to the first component that does not exist yet), so creating the missing rest with `mkdir` or acting
//! on `parent/name` without following `name` can never leave the root. Only the layer being applied changes the
//! tree while it is applied; a concurrent writer racing on the same tree is outside this model, as it is for
//! umoci and containerd.
//!
//! Resolved parents are cached by their name in the layer, so a layer of many files in few directories walks each
//! directory once; the cache is dropped whenever a directory or a symlink is removed, the only changes that can
//! make a cached resolution stale.

use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed while resolving one path before giving up with `ELOOP` (Linux allows 40; securejoin 255).
const MAX_SYMLINKS: u32 = 255;

/// A name cleaned to a path relative to the root: no leading `/`, no `.`, `..` or empty components. Empty means the
/// root itself. `escaped` tells that a `..` tried to climb above the root (and was dropped).
#[derive(Debug)]
pub(crate) struct Cleaned {
    pub path: PathBuf,
    pub escaped: bool,
}

/// Cleans a raw tar name (bytes, `/`-separated) into a path relative to the root.
pub(crate) fn clean(raw: &[u8]) -> Cleaned {
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut escaped = false;
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    escaped = true;
                }
            }
            _ => parts.push(part),
        }
    }
    let mut path = PathBuf::new();
    for part in parts {
        path.push(OsStr::from_bytes(part));
    }
    Cleaned { path, escaped }
}

/// A directory found (or made) for an entry's parent.
pub(crate) struct ParentDir {
    /// Absolute path on the host: `root` + `rel`.
    pub host: PathBuf,
    /// Path relative to the root, symlink-free.
    pub rel: PathBuf,
    /// The directory existed before and this is the first time this layer resolves it: its metadata as it was,
    /// so the caller can put its times back after changing its contents. `None` on a cache hit or when the
    /// directory was created just now.
    pub prior: Option<Metadata>,
    /// When missing directories were created: the deepest one that already existed (its contents changed), with
    /// its metadata before the change, relative to the root.
    pub grown: Option<(PathBuf, Metadata)>,
}

pub(crate) struct Resolver {
    root: PathBuf,
    /// Parent directories resolved during this layer: layer name → symlink-free path relative to the root.
    cache: HashMap<PathBuf, PathBuf>,
}

impl Resolver {
    /// `root` must be an absolute, symlink-free path to a directory (the caller canonicalizes it).
    pub fn new(root: PathBuf) -> Resolver {
        Resolver {
            root,
            cache: HashMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Forgets every cached resolution (after a directory or symlink was removed).
    pub fn invalidate(&mut self) {
        self.cache.clear();
    }

    /// Resolves the cleaned relative `path` inside the root, following every symlink on the way (the last
    /// component too), with chroot semantics. Components that do not exist are kept as they are. Returns a
    /// symlink-free path relative to the root.
    pub fn resolve(&self, path: &Path) -> io::Result<PathBuf> {
        self.walk(PathBuf::new(), path)
    }

    /// Like [`Resolver::resolve`], starting from an already resolved (symlink-free) directory `base`.
    fn walk(&self, base: PathBuf, rest: &Path) -> io::Result<PathBuf> {
        let mut current = base;
        let mut queue: VecDeque<OsString> = rest
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect();
        let mut followed = 0u32;
        while let Some(part) = queue.pop_front() {
            match part.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    current.pop();
                    continue;
                }
                _ => {}
            }
            let next = current.join(&part);
            match std::fs::symlink_metadata(self.root.join(&next)) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    followed += 1;
                    if followed > MAX_SYMLINKS {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    let target = std::fs::read_link(self.root.join(&next))?;
                    let target = target.as_os_str().as_bytes();
                    if target.first() == Some(&b'/') {
                        current = PathBuf::new();
                    }
                    // Expand the target in front of what is left; its `..` are handled by the loop.
                    for piece in target.split(|b| *b == b'/').rev() {
                        if !piece.is_empty() {
                            queue.push_front(OsStr::from_bytes(piece).to_os_string());
                        }
                    }
                }
                Ok(_) => current = next,
                Err(e) if is_missing(&e) => current = next,
                Err(e) => return Err(e),
            }
        }
        Ok(current)
    }

    /// The directory that holds entries named under `parent` (a cleaned layer name; empty for the root). With
    /// `create`, missing directories are made (mode 0755 less the umask, like `mkdir -p`); without, a missing
    /// directory gives `Ok(None)`. A parent that exists but is not a directory is an `ENOTDIR` error.
    pub fn parent_dir(&mut self, parent: &Path, create: bool) -> io::Result<Option<ParentDir>> {
        if let Some(rel) = self.cache.get(parent) {
            return Ok(Some(ParentDir {
                host: self.root.join(rel),
                rel: rel.clone(),
                prior: None,
                grown: None,
            }));
        }
        // Start from the deepest ancestor already resolved.
        let mut base = PathBuf::new();
        let mut rest: &Path = parent;
        for ancestor in parent.ancestors().skip(1) {
            if let Some(rel) = self.cache.get(ancestor) {
                base = rel.clone();
                rest = parent.strip_prefix(ancestor).unwrap_or(parent);
                break;
            }
        }
        let rel = self.walk(base, rest)?;
        let host = self.root.join(&rel);
        let (prior, grown) = match std::fs::symlink_metadata(&host) {
            Ok(meta) if meta.is_dir() => (Some(meta), None),
            Ok(_) if !create => return Ok(None),
            Ok(_) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                if !create {
                    return Ok(None);
                }
                let grown = self.deepest_existing(&rel)?;
                std::fs::DirBuilder::new().recursive(true).mode(0o755).create(&host)?;
                (None, grown)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                if !create {
                    return Ok(None);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.cache.insert(parent.to_path_buf(), rel.clone());
        Ok(Some(ParentDir {
            host,
            rel,
            prior,
            grown,
        }))
    }

    /// The deepest existing directory above the missing `rel`, with its metadata.
    fn deepest_existing(&self, rel: &Path) -> io::Result<Option<(PathBuf, Metadata)>> {
        for ancestor in rel.ancestors().skip(1) {
            match std::fs::symlink_metadata(self.root.join(ancestor)) {
                Ok(meta) if meta.is_dir() => return Ok(Some((ancestor.to_path_buf(), meta))),
                Ok(_) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
                Err(e) if is_missing(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

/// `ENOENT`, or `ENOTDIR` (a component on the way is not a directory): the path does not exist.
pub(crate) fn is_missing(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn cleaned(raw: &str) -> (String, bool) {
        let c = clean(raw.as_bytes());
        (c.path.to_string_lossy().into_owned(), c.escaped)
    }

    #[test]
    fn clean_confines_names_to_the_root() {
        assert_eq!(cleaned("a/b/c"), ("a/b/c".into(), false));
        assert_eq!(cleaned("./a//b/./c/"), ("a/b/c".into(), false));
        assert_eq!(cleaned("/etc/passwd"), ("etc/passwd".into(), false));
        assert_eq!(cleaned("a/../b"), ("b".into(), false));
        assert_eq!(cleaned("../../x"), ("x".into(), true));
        assert_eq!(cleaned("a/../../../etc"), ("etc".into(), true));
        assert_eq!(cleaned("./"), ("".into(), false));
        assert_eq!(cleaned("/"), ("".into(), false));
        assert_eq!(cleaned(".."), ("".into(), true));
    }

    #[test]
    fn resolve_keeps_symlinks_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("/", root.join("evil")).unwrap();
        symlink("../../../../..", root.join("usr/up")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("usr/lib", root.join("rel")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        let r = Resolver::new(root.clone());
        let res = |p: &str| r.resolve(Path::new(p)).map(|p| p.to_string_lossy().into_owned());
        assert_eq!(res("evil/etc").unwrap(), "etc");
        assert_eq!(res("usr/up/etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(res("lib/x").unwrap(), "usr/lib/x");
        assert_eq!(res("rel/x").unwrap(), "usr/lib/x");
        assert_eq!(res("evil/lib/../../../lib").unwrap(), "usr/lib");
        assert_eq!(res("loop1/x").unwrap_err().raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn parent_dir_creates_missing_directories_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let root = root.canonicalize().unwrap();
        symlink("/", root.join("evil")).unwrap();
        std::fs::write(root.join("file"), b"x").unwrap();
        let mut r = Resolver::new(root.clone());
        let p = r.parent_dir(Path::new("evil/a/b"), true).unwrap().unwrap();
        assert_eq!(p.rel, Path::new("a/b"));
        assert!(root.join("a/b").is_dir());
        assert_eq!(p.grown.as_ref().map(|g| g.0.clone()), Some(PathBuf::new()));
        // Cached now.
        let again = r.parent_dir(Path::new("evil/a/b"), true).unwrap().unwrap();
        assert_eq!(again.rel, Path::new("a/b"));
        assert!(again.prior.is_none());
        assert!(r.parent_dir(Path::new("missing"), false).unwrap().is_none());
        let err = r.parent_dir(Path::new("file/x"), true).err().unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR));
    }
}
