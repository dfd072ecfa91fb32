//! Applying one layer (an uncompressed tar stream) onto a root filesystem, the OCI image spec's "Applying
//! changesets", with the same results as `umoci unpack` and containerd.
//!
//! Entries are applied in stream order. Each name is confined to the root (see [`super::safe_path`]); its parent
//! directories are resolved inside the root (created when missing) and the entry is created at `parent/name`
//! without following `name`: whatever was there of another kind (or any non-directory) is removed first, so
//! writing "through" a symlink replaces the symlink. A directory over a directory keeps its contents and takes the
//! entry's metadata.
//!
//! Whiteouts remove only what lower layers left: every path this layer created (and its ancestors) is remembered,
//! and `.wh.NAME` / `.wh..wh..opq` remove everything under their target except those paths, so the order of a
//! whiteout and this layer's own entries in the tar does not matter.
//!
//! Metadata follows each entry: owner (`same_owner`), xattrs, mode (after the owner, which clears setuid bits),
//! then times. Directories get their mode and times at the end of the layer, after their contents; directories
//! the layer changed without listing them get their times back, as umoci does. Hardlinks take no metadata of
//! their own (they share the inode).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::{Archive, EntryType};
use tracing::{debug, warn};

use super::safe_path::{ParentDir, Resolver, clean, is_missing};
use super::sys::{self, Target, Time};

/// How file contents are copied: reads fill this buffer before each write.
const COPY_BUFFER: usize = 1 << 20;
/// Buffers the tar headers (512-byte reads); contents bigger than this bypass it.
const READ_BUFFER: usize = 64 << 10;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";

/// How [`apply_layer`] treats what the host may not allow.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// Give every entry the uid/gid of the tar (`lchown`); otherwise everything belongs to the caller. Default:
    /// true when running as root.
    pub same_owner: bool,
    /// Restore extended attributes from PAX `SCHILY.xattr.*` records. Host-specific ones (`security.selinux`,
    /// `trusted.overlay.*`, `system.nfs4_acl`) are never applied; `EPERM` on `security.*`/`trusted.*` and a
    /// file system without xattrs are logged and skipped. Default: true.
    pub xattrs: bool,
    /// Most bytes of file contents (as files' sizes, holes included) one layer may write; past it the layer fails
    /// with [`ApplyError::TooLarge`]. Default: no limit.
    pub max_bytes: Option<u64>,
}

impl Default for ApplyOptions {
    fn default() -> ApplyOptions {
        ApplyOptions {
            same_owner: sys::is_root(),
            xattrs: true,
            max_bytes: None,
        }
    }
}

/// What one layer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Tar entries read, whiteouts and skipped entries included.
    pub entries: u64,
    /// Bytes of file contents written.
    pub bytes: u64,
    /// Whiteout entries (`.wh.NAME` and opaque markers).
    pub whiteouts: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("root filesystem {}: {cause}", path.display())]
    Root { path: PathBuf, cause: io::Error },
    /// The tar stream itself: a corrupt header, a truncated entry, a read error of the source.
    #[error("reading the layer at {at}: {cause}")]
    Read { at: String, cause: io::Error },
    #[error("entry {path:?}: {what}: {cause}")]
    Io {
        path: String,
        what: String,
        cause: io::Error,
    },
    #[error("entry {path:?}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("entry {path:?}: the layer's files pass the limit of {limit} bytes")]
    TooLarge { path: String, limit: u64 },
}

/// Applies the layer `layer` (an uncompressed tar stream) onto the directory `root`. The whole stream is read,
/// trailing padding included, so a digest computed on the way sees every byte.
pub fn apply_layer<R: Read>(root: &Path, layer: R, opts: &ApplyOptions) -> Result<ApplyStats, ApplyError> {
    let root_err = |cause| ApplyError::Root {
        path: root.to_path_buf(),
        cause,
    };
    let canonical = root.canonicalize().map_err(root_err)?;
    if !canonical.is_dir() {
        return Err(root_err(io::Error::from_raw_os_error(libc::ENOTDIR)));
    }
    let mut applier = Applier::new(canonical, opts);
    let mut archive = Archive::new(BufReader::with_capacity(READ_BUFFER, layer));
    let mut previous: Option<String> = None;
    let at_next = |previous: &Option<String>| match previous {
        Some(p) => format!("the entry after {p:?}"),
        None => "its first entry".to_string(),
    };
    let entries = archive.entries().map_err(|cause| ApplyError::Read {
        at: at_next(&None),
        cause,
    })?;
    for entry in entries {
        let mut entry = entry.map_err(|cause| ApplyError::Read {
            at: at_next(&previous),
            cause,
        })?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        applier.entry(&mut entry, &name)?;
        previous = Some(name);
    }
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(|cause| ApplyError::Read {
        at: "its end".to_string(),
        cause,
    })?;
    applier.finish()?;
    let stats = applier.stats;
    debug!(
        root = %root.display(),
        entries = stats.entries,
        bytes = stats.bytes,
        whiteouts = stats.whiteouts,
        "layer applied"
    );
    Ok(stats)
}

/// What kind of node an entry makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

/// An entry's metadata, PAX records applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: Time,
    mtime: Time,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A directory whose times (and, for this layer's own directories, mode) are set at the end of the layer. It is
/// found again by its path and recognized by its inode, so a directory replaced meanwhile is left alone.
struct Deferred {
    rel: PathBuf,
    dev: u64,
    ino: u64,
    mode: Option<u32>,
    atime: Time,
    mtime: Time,
}

struct Applier<'a> {
    opts: &'a ApplyOptions,
    is_root: bool,
    resolver: Resolver,
    /// Paths (relative to the root, symlink-free) that this layer created, with all their ancestors: what
    /// whiteouts must not remove.
    upper: HashSet<PathBuf>,
    /// This layer's directories, in stream order (a later entry for the same directory wins).
    dirs: Vec<Deferred>,
    /// Directories from lower layers whose contents changed, with their times before the change.
    touched: HashMap<PathBuf, Deferred>,
    /// Something was removed that may have been a directory or symlink: paths recorded earlier must be resolved
    /// again before use.
    removed_any: bool,
    buf: Vec<u8>,
    stats: ApplyStats,
    xattr_unsupported_warned: bool,
}

impl<'a> Applier<'a> {
    fn new(root: PathBuf, opts: &'a ApplyOptions) -> Applier<'a> {
        Applier {
            opts,
            is_root: sys::is_root(),
            resolver: Resolver::new(root),
            upper: HashSet::new(),
            dirs: Vec::new(),
            touched: HashMap::new(),
            removed_any: false,
            buf: vec![0; COPY_BUFFER],
            stats: ApplyStats::default(),
            xattr_unsupported_warned: false,
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>, name: &str) -> Result<(), ApplyError> {
        self.stats.entries += 1;
        let raw_path = entry.path_bytes().into_owned();
        let kind = match entry.header().entry_type() {
            // Old tars mark a directory with a trailing slash on a regular entry.
            EntryType::Regular if raw_path.ends_with(b"/") => Kind::Dir,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::Hardlink,
            EntryType::Char => Kind::Char,
            EntryType::Block => Kind::Block,
            EntryType::Fifo => Kind::Fifo,
            EntryType::XGlobalHeader => {
                debug!(entry = name, "PAX global header skipped");
                return Ok(());
            }
            other => {
                return Err(invalid(
                    name,
                    format!("unsupported tar entry type {:?}", other.as_byte() as char),
                ));
            }
        };
        let cleaned = clean(&raw_path);
        if cleaned.escaped {
            warn!(entry = name, "tar entry name climbs above the root; confined to it");
        }
        let rel = cleaned.path;
        let Some(base) = rel.file_name() else {
            // The root itself.
            if kind != Kind::Dir {
                return Err(invalid(name, "refusing to change the type of the root directory"));
            }
            let meta = self.meta(entry, name)?;
            return self.dir(Path::new(""), &meta, name);
        };
        if base.as_bytes().starts_with(WHITEOUT_PREFIX) {
            self.stats.whiteouts += 1;
            return self.whiteout(&rel, name);
        }
        let parent_name = rel.parent().unwrap_or(Path::new(""));
        let parent = self
            .parent_dir(parent_name, true, name, "making its parent directory")?
            .ok_or_else(|| invalid(name, "its parent directory cannot be made"))?;
        let rel = parent.rel.join(base);
        let host = parent.host.join(base);
        let created = match kind {
            Kind::Hardlink => self.hardlink(entry, &host, name)?,
            _ => {
                let meta = self.meta(entry, name)?;
                match kind {
                    Kind::File => self.file(entry, &host, &meta, name)?,
                    Kind::Dir => self.dir(&rel, &meta, name).map(|()| true)?,
                    Kind::Symlink => self.symlink(entry, &host, &meta, name)?,
                    _ => self.node(kind, entry.header(), &host, &meta, name)?,
                }
            }
        };
        if created {
            self.mark_upper(&rel);
        }
        Ok(())
    }

    /// The entry's metadata from its header and PAX records.
    fn meta<R: Read>(&self, entry: &mut tar::Entry<R>, name: &str) -> Result<Meta, ApplyError> {
        let header = entry.header();
        let raw = header.as_old();
        let mode = numeric(header.mode(), &raw.mode, "mode", name)? & 0o7777;
        let id =
            |v: u64, what: &str| u32::try_from(v).map_err(|_| invalid(name, format!("{what} {v} is out of range")));
        let uid = id(numeric(header.uid(), &raw.uid, "uid", name)?, "uid")?;
        let gid = id(numeric(header.gid(), &raw.gid, "gid", name)?, "gid")?;
        let secs = numeric(header.mtime(), &raw.mtime, "mtime", name)?;
        let mut mtime = Time {
            secs: i64::try_from(secs).unwrap_or(i64::MAX),
            nanos: 0,
        };
        let mut atime = header
            .as_gnu()
            .and_then(|g| g.atime().ok())
            .filter(|t| *t != 0)
            .map(|secs| Time {
                secs: i64::try_from(secs).unwrap_or(i64::MAX),
                nanos: 0,
            });
        let mut xattrs = Vec::new();
        let mut malformed = false;
        if let Some(records) = entry
            .pax_extensions()
            .map_err(|e| invalid(name, format!("bad PAX records: {e}")))?
        {
            for record in records {
                let Ok(record) = record else {
                    malformed = true;
                    continue;
                };
                let key = record.key_bytes();
                if let Some(xattr) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((xattr.to_vec(), record.value_bytes().to_vec()));
                } else if key == b"mtime" {
                    mtime = parse_pax_time(record.value_bytes()).unwrap_or(mtime);
                } else if key == b"atime" {
                    atime = parse_pax_time(record.value_bytes()).or(atime);
                }
            }
        }
        if malformed {
            // tar 0.4 splits PAX records at every newline, so a value holding one (a binary xattr) cannot be read.
            warn!(
                entry = name,
                "unreadable PAX record skipped (an xattr value with a newline?)"
            );
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            atime: atime.unwrap_or(mtime),
            mtime,
            xattrs,
        })
    }

    /// [`Resolver::parent_dir`], remembering the times of the directories found, as they were before this layer
    /// changes their contents.
    fn parent_dir(
        &mut self,
        parent: &Path,
        create: bool,
        name: &str,
        what: &str,
    ) -> Result<Option<ParentDir>, ApplyError> {
        let found = self
            .resolver
            .parent_dir(parent, create)
            .map_err(|e| io_err(name, what, e))?;
        if let Some(dir) = &found {
            self.note_touched(dir);
        }
        Ok(found)
    }

    fn note_touched(&mut self, parent: &ParentDir) {
        let mut note = |rel: &Path, meta: &Metadata| {
            self.touched.entry(rel.to_path_buf()).or_insert_with(|| Deferred {
                rel: rel.to_path_buf(),
                dev: meta.dev(),
                ino: meta.ino(),
                mode: None,
                atime: Time::atime_of(meta),
                mtime: Time::mtime_of(meta),
            });
        };
        if let Some(meta) = &parent.prior {
            note(&parent.rel, meta);
        }
        if let Some((rel, meta)) = &parent.grown {
            note(rel, meta);
        }
    }

    fn mark_upper(&mut self, rel: &Path) {
        let mut path = rel;
        while !path.as_os_str().is_empty() && self.upper.insert(path.to_path_buf()) {
            match path.parent() {
                Some(parent) => path = parent,
                None => break,
            }
        }
    }

    /// Clears the way for a new node at `host`: removes what is there, except a directory when `keep_dir`.
    /// Returns whether a directory was kept.
    fn clear(&mut self, host: &Path, keep_dir: bool, name: &str) -> Result<bool, ApplyError> {
        let meta = match std::fs::symlink_metadata(host) {
            Ok(meta) => meta,
            Err(e) if is_missing(&e) => return Ok(false),
            Err(e) => return Err(io_err(name, "looking at what is there", e)),
        };
        if meta.is_dir() && keep_dir {
            return Ok(true);
        }
        self.remove(host, &meta)
            .map_err(|e| io_err(name, "removing what was there", e))?;
        Ok(false)
    }

    /// Runs `create` (which fails with `EEXIST` rather than replace anything); if something is in the way, removes
    /// it and runs `create` again. Most entries are new, so this saves a `stat` per entry.
    fn create_new<T>(
        &mut self,
        host: &Path,
        create: impl Fn() -> io::Result<T>,
        name: &str,
        what: &str,
    ) -> Result<T, ApplyError> {
        let created = match create() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.clear(host, false, name)?;
                create()
            }
            other => other,
        };
        created.map_err(|e| io_err(name, what, e))
    }

    /// Removes a node (a directory with everything under it, never following a symlink).
    fn remove(&mut self, host: &Path, meta: &Metadata) -> io::Result<()> {
        if meta.is_dir() {
            std::fs::remove_dir_all(host)?;
        } else {
            std::fs::remove_file(host)?;
        }
        if meta.is_dir() || meta.file_type().is_symlink() {
            self.resolver.invalidate();
            self.removed_any = true;
        }
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        host: &Path,
        meta: &Meta,
        name: &str,
    ) -> Result<bool, ApplyError> {
        let create = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(host)
        };
        let mut file = self.create_new(host, create, name, "creating the file")?;
        let expected = entry.size();
        let written = self.copy(entry, &mut file, expected, name)?;
        self.stats.bytes += written;
        if self.opts.same_owner {
            std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))
                .map_err(|e| io_err(name, "setting its owner", e))?;
        }
        self.xattrs(&Target::Fd(&file), meta, false, name)?;
        file.set_permissions(std::fs::Permissions::from_mode(meta.mode))
            .map_err(|e| io_err(name, "setting its mode", e))?;
        sys::futimes(&file, meta.atime, meta.mtime).map_err(|e| io_err(name, "setting its times", e))?;
        Ok(true)
    }

    /// Streams an entry's contents into `file` through the large buffer; a stream that ends early is an error.
    /// Blocks of zeros become holes (a sparse tar entry, or zeros compressed to nothing, cost no disk), and the
    /// layer's total stays within [`ApplyOptions::max_bytes`].
    fn copy(&mut self, from: &mut impl Read, file: &mut File, expected: u64, name: &str) -> Result<u64, ApplyError> {
        use std::io::{Seek, SeekFrom};
        if let Some(limit) = self.opts.max_bytes
            && self.stats.bytes.saturating_add(expected) > limit
        {
            return Err(ApplyError::TooLarge {
                path: name.to_owned(),
                limit,
            });
        }
        let read_err = |cause| ApplyError::Read {
            at: format!("entry {name:?}"),
            cause,
        };
        let mut total = 0u64;
        loop {
            let mut filled = 0;
            while filled < self.buf.len() {
                match from.read(&mut self.buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(read_err(e)),
                }
            }
            if filled == 0 {
                break;
            }
            let chunk = &self.buf[..filled];
            if chunk.iter().all(|&b| b == 0) {
                file.seek(SeekFrom::Current(filled as i64))
                    .map_err(|e| io_err(name, "writing the file", e))?;
            } else {
                file.write_all(chunk).map_err(|e| io_err(name, "writing the file", e))?;
            }
            total += filled as u64;
            if filled < self.buf.len() {
                break;
            }
        }
        if total != expected {
            return Err(read_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the stream ended after {total} of its {expected} bytes"),
            )));
        }
        // A hole at the end has no bytes to write: the length says where the file ends.
        file.set_len(total).map_err(|e| io_err(name, "writing the file", e))?;
        Ok(total)
    }

    /// A directory (`rel` empty: the root). Owner and xattrs now; mode now with owner access added when not root
    /// (so the layer can still write into it), exact mode and times at the end.
    fn dir(&mut self, rel: &Path, meta: &Meta, name: &str) -> Result<(), ApplyError> {
        let host = self.resolver.root().join(rel);
        let mkdir = || std::fs::DirBuilder::new().mode(0o700).create(&host);
        let existed = rel.as_os_str().is_empty()
            || match mkdir() {
                Ok(()) => false,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let kept = self.clear(&host, true, name)?;
                    if !kept {
                        mkdir().map_err(|e| io_err(name, "making the directory", e))?;
                    }
                    kept
                }
                Err(e) => return Err(io_err(name, "making the directory", e)),
            };
        let dir = open_dir(&host).map_err(|e| io_err(name, "opening the directory", e))?;
        if self.opts.same_owner {
            std::os::unix::fs::fchown(&dir, Some(meta.uid), Some(meta.gid))
                .map_err(|e| io_err(name, "setting its owner", e))?;
        }
        if existed && self.opts.xattrs {
            self.clear_xattrs(&dir, meta, name)?;
        }
        self.xattrs(&Target::Fd(&dir), meta, false, name)?;
        let now = if self.is_root { meta.mode } else { meta.mode | 0o700 };
        dir.set_permissions(std::fs::Permissions::from_mode(now))
            .map_err(|e| io_err(name, "setting its mode", e))?;
        let st = dir
            .metadata()
            .map_err(|e| io_err(name, "looking at the directory", e))?;
        self.dirs.push(Deferred {
            rel: rel.to_path_buf(),
            dev: st.dev(),
            ino: st.ino(),
            mode: (now != meta.mode).then_some(meta.mode),
            atime: meta.atime,
            mtime: meta.mtime,
        });
        Ok(())
    }

    /// Removes the xattrs a lower layer gave a directory this layer lists again (the layer's set is the whole set).
    fn clear_xattrs(&mut self, dir: &File, meta: &Meta, name: &str) -> Result<(), ApplyError> {
        let names = match sys::list_xattrs(dir) {
            Ok(names) => names,
            Err(e) if is_unsupported(&e) => return Ok(()),
            Err(e) => return Err(io_err(name, "listing its xattrs", e)),
        };
        for old in names {
            if ignored_xattr(&old) || meta.xattrs.iter().any(|(k, _)| *k == old) {
                continue;
            }
            match sys::remove_xattr(dir, &old) {
                Ok(()) => {}
                Err(e) if is_privileged_xattr(&old) && is_denied(&e) => {
                    debug!(entry = name, xattr = %String::from_utf8_lossy(&old), "cannot remove xattr: {e}");
                }
                Err(e) => {
                    let what = format!("removing xattr {}", String::from_utf8_lossy(&old));
                    return Err(io_err(name, &what, e));
                }
            }
        }
        Ok(())
    }

    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<R>,
        host: &Path,
        meta: &Meta,
        name: &str,
    ) -> Result<bool, ApplyError> {
        let target = entry
            .link_name_bytes()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid(name, "symlink without a target"))?;
        let link = || std::os::unix::fs::symlink(OsStr::from_bytes(&target), host);
        self.create_new(host, link, name, "making the symlink")?;
        if self.opts.same_owner {
            std::os::unix::fs::lchown(host, Some(meta.uid), Some(meta.gid))
                .map_err(|e| io_err(name, "setting its owner", e))?;
        }
        self.xattrs(&Target::Path(host), meta, true, name)?;
        sys::lutimes(host, meta.atime, meta.mtime).map_err(|e| io_err(name, "setting its times", e))?;
        Ok(true)
    }

    /// A hardlink to a file of this or a lower layer. Its target is confined like any name, its directory resolved
    /// inside the root and its last component not followed (a hardlink to a symlink links the symlink).
    fn hardlink<R: Read>(&mut self, entry: &tar::Entry<R>, host: &Path, name: &str) -> Result<bool, ApplyError> {
        let link = entry
            .link_name_bytes()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid(name, "hardlink without a target"))?;
        let cleaned = clean(&link);
        let shown = String::from_utf8_lossy(&link);
        if cleaned.escaped {
            warn!(entry = name, target = %shown, "hardlink target climbs above the root; confined to it");
        }
        let Some(base) = cleaned.path.file_name() else {
            return Err(invalid(name, "hardlink to the root directory"));
        };
        let missing = || invalid(name, format!("hardlink target {shown:?} does not exist"));
        let dir = self
            .parent_dir(
                cleaned.path.parent().unwrap_or(Path::new("")),
                false,
                name,
                "resolving the hardlink target",
            )?
            .ok_or_else(missing)?;
        let source = dir.host.join(base);
        let src = match std::fs::symlink_metadata(&source) {
            Ok(meta) => meta,
            Err(e) if is_missing(&e) => return Err(missing()),
            Err(e) => return Err(io_err(name, "looking at the hardlink target", e)),
        };
        if src.is_dir() {
            return Err(invalid(name, format!("hardlink target {shown:?} is a directory")));
        }
        if let Ok(existing) = std::fs::symlink_metadata(host)
            && existing.dev() == src.dev()
            && existing.ino() == src.ino()
        {
            return Ok(true);
        }
        self.clear(host, false, name)?;
        std::fs::hard_link(&source, host).map_err(|e| io_err(name, "making the hardlink", e))?;
        Ok(true)
    }

    /// A device or a fifo. Devices need root; without it (or when the kernel refuses, in a user namespace) they
    /// are skipped.
    fn node(
        &mut self,
        kind: Kind,
        header: &tar::Header,
        host: &Path,
        meta: &Meta,
        name: &str,
    ) -> Result<bool, ApplyError> {
        let file_type = match kind {
            Kind::Char => libc::S_IFCHR,
            Kind::Block => libc::S_IFBLK,
            _ => libc::S_IFIFO,
        };
        if kind != Kind::Fifo && !self.is_root {
            debug!(entry = name, "device node skipped: not running as root");
            return Ok(false);
        }
        let (raw_major, raw_minor) = match (header.as_ustar(), header.as_gnu()) {
            (Some(u), _) => (u.dev_major, u.dev_minor),
            (_, Some(g)) => (g.dev_major, g.dev_minor),
            _ => ([0; 8], [0; 8]),
        };
        let major = numeric(header.device_major(), &raw_major, "device major", name)?.unwrap_or_default();
        let minor = numeric(header.device_minor(), &raw_minor, "device minor", name)?.unwrap_or_default();
        self.clear(host, false, name)?;
        match sys::mknod(host, file_type, 0o600, major, minor) {
            Ok(()) => {}
            Err(e) if kind != Kind::Fifo && is_denied(&e) => {
                debug!(entry = name, "device node skipped: {e}");
                return Ok(false);
            }
            Err(e) => return Err(io_err(name, "making the node", e)),
        }
        if self.opts.same_owner {
            std::os::unix::fs::lchown(host, Some(meta.uid), Some(meta.gid))
                .map_err(|e| io_err(name, "setting its owner", e))?;
        }
        self.xattrs(&Target::Path(host), meta, true, name)?;
        sys::chmod(host, meta.mode).map_err(|e| io_err(name, "setting its mode", e))?;
        sys::lutimes(host, meta.atime, meta.mtime).map_err(|e| io_err(name, "setting its times", e))?;
        Ok(true)
    }

    /// Sets the entry's xattrs. `special`: a symlink or a node, where Linux refuses `user.*` with `EPERM`.
    fn xattrs(&mut self, target: &Target, meta: &Meta, special: bool, name: &str) -> Result<(), ApplyError> {
        if !self.opts.xattrs {
            return Ok(());
        }
        for (key, value) in &meta.xattrs {
            let shown = String::from_utf8_lossy(key);
            if ignored_xattr(key) {
                debug!(entry = name, xattr = %shown, "host-specific xattr not applied");
                continue;
            }
            match sys::set_xattr(target, key, value) {
                Ok(()) => {}
                Err(e) if is_unsupported(&e) => {
                    if !self.xattr_unsupported_warned {
                        warn!(entry = name, xattr = %shown, "the file system does not support xattrs; skipping them");
                        self.xattr_unsupported_warned = true;
                    } else {
                        debug!(entry = name, xattr = %shown, "xattr not supported: {e}");
                    }
                }
                Err(e) if is_denied(&e) && (special || is_privileged_xattr(key)) => {
                    debug!(entry = name, xattr = %shown, "xattr not applied: {e}");
                }
                Err(e) => return Err(io_err(name, &format!("setting xattr {shown}"), e)),
            }
        }
        Ok(())
    }

    /// Whiteouts: `.wh.NAME` removes NAME, `.wh..wh..opq` everything in its directory, in both cases only what
    /// lower layers put there. Other `.wh..wh.` names are AUFS bookkeeping and skipped.
    fn whiteout(&mut self, rel: &Path, name: &str) -> Result<(), ApplyError> {
        let base = rel.file_name().map(OsStr::as_bytes).unwrap_or_default();
        let opaque = base == WHITEOUT_OPAQUE;
        if !opaque && base.starts_with(WHITEOUT_META_PREFIX) {
            debug!(entry = name, "AUFS metadata entry skipped");
            return Ok(());
        }
        let victim = &base[WHITEOUT_PREFIX.len()..];
        if !opaque && matches!(victim, b"" | b"." | b"..") {
            warn!(entry = name, "whiteout of no name skipped");
            return Ok(());
        }
        let parent_name = rel.parent().unwrap_or(Path::new(""));
        let Some(parent) = self.parent_dir(parent_name, false, name, "resolving the whiteout's directory")? else {
            return Ok(());
        };
        let (target, keep_top) = if opaque {
            (parent.rel.clone(), true)
        } else {
            (parent.rel.join(OsStr::from_bytes(victim)), false)
        };
        self.purge(&target, keep_top)
            .map_err(|e| io_err(name, "removing what it whites out", e))
    }

    /// Removes `rel` and everything under it that this layer did not create; with `keep_top`, `rel` itself stays.
    fn purge(&mut self, rel: &Path, keep_top: bool) -> io::Result<()> {
        let host = self.resolver.root().join(rel);
        let meta = match std::fs::symlink_metadata(&host) {
            Ok(meta) => meta,
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        if !keep_top && !self.upper.contains(rel) {
            return self.remove(&host, &meta);
        }
        if !meta.is_dir() {
            return Ok(());
        }
        let children: Vec<_> = std::fs::read_dir(&host)?
            .map(|child| child.map(|c| c.file_name()))
            .collect::<io::Result<_>>()?;
        for child in children {
            self.purge(&rel.join(child), false)?;
        }
        Ok(())
    }

    /// End of the layer: lower directories this layer changed get their times back, then this layer's
    /// directories get their mode and times (after all their contents were written).
    fn finish(&mut self) -> Result<(), ApplyError> {
        let touched: Vec<Deferred> = self.touched.drain().map(|(_, d)| d).collect();
        let dirs = std::mem::take(&mut self.dirs);
        for d in touched.iter().chain(dirs.iter()) {
            let name = d.rel.to_string_lossy();
            let Some(dir) = self
                .reopen(d)
                .map_err(|e| io_err(&name, "reopening the directory", e))?
            else {
                continue;
            };
            if let Some(mode) = d.mode {
                dir.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(|e| io_err(&name, "setting its mode", e))?;
            }
            sys::futimes(&dir, d.atime, d.mtime).map_err(|e| io_err(&name, "setting its times", e))?;
        }
        Ok(())
    }

    /// Opens a directory recorded earlier, if it is still the same one at the same place inside the root.
    fn reopen(&self, d: &Deferred) -> io::Result<Option<File>> {
        let root = self.resolver.root();
        if self.removed_any
            && let Some(parent) = d.rel.parent()
            && !matches!(self.resolver.resolve(parent), Ok(p) if p == parent)
        {
            // A directory on the way became a symlink (or a loop): that is not where the directory was.
            return Ok(None);
        }
        let dir = match open_dir(&root.join(&d.rel)) {
            Ok(dir) => dir,
            Err(e) if is_missing(&e) || e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = dir.metadata()?;
        Ok((st.dev() == d.dev && st.ino() == d.ino).then_some(dir))
    }
}

/// Opens a directory without following a symlink at its last component.
fn open_dir(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
}

/// Xattrs that describe the host rather than the image: never applied nor removed (as umoci).
fn ignored_xattr(name: &[u8]) -> bool {
    name == b"security.selinux" || name == b"system.nfs4_acl" || name.starts_with(b"trusted.overlay.")
}

fn is_privileged_xattr(name: &[u8]) -> bool {
    name.starts_with(b"security.") || name.starts_with(b"trusted.")
}

fn is_unsupported(e: &io::Error) -> bool {
    // ENOTSUP and EOPNOTSUPP are one value on Linux.
    e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

fn is_denied(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

/// A PAX time: `SECONDS[.FRACTION]`, possibly negative.
fn parse_pax_time(value: &[u8]) -> Option<Time> {
    let s = std::str::from_utf8(value).ok()?;
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let mut nanos = 0u32;
    let mut scale = 100_000_000u32;
    for digit in fraction.bytes().take(9) {
        nanos += u32::from(digit - b'0') * scale;
        scale /= 10;
    }
    Some(match (negative, nanos) {
        (false, _) => Time { secs, nanos },
        (true, 0) => Time { secs: -secs, nanos: 0 },
        (true, _) => Time {
            secs: -secs - 1,
            nanos: 1_000_000_000 - nanos,
        },
    })
}

/// A numeric header field read as Go's archive/tar (and so Docker, containerd, umoci) reads it: a field of only
/// NULs and spaces is zero rather than an error.
fn numeric<T: Default>(value: io::Result<T>, raw: &[u8], what: &str, name: &str) -> Result<T, ApplyError> {
    match value {
        Ok(v) => Ok(v),
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(T::default()),
        Err(e) => Err(invalid(name, format!("bad {what} in the tar header: {e}"))),
    }
}

fn io_err(path: &str, what: &str, cause: io::Error) -> ApplyError {
    ApplyError::Io {
        path: path.to_string(),
        what: what.to_string(),
        cause,
    }
}

fn invalid(path: &str, reason: impl Into<String>) -> ApplyError {
    ApplyError::Invalid {
        path: path.to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        let t = |s: &str| parse_pax_time(s.as_bytes());
        assert_eq!(
            t("1700000000"),
            Some(Time {
                secs: 1_700_000_000,
                nanos: 0
            })
        );
        assert_eq!(
            t("1700000000.5"),
            Some(Time {
                secs: 1_700_000_000,
                nanos: 500_000_000
            })
        );
        assert_eq!(
            t("1.123456789123"),
            Some(Time {
                secs: 1,
                nanos: 123_456_789
            })
        );
        assert_eq!(
            t("-1.25"),
            Some(Time {
                secs: -2,
                nanos: 750_000_000
            })
        );
        assert_eq!(t("-3"), Some(Time { secs: -3, nanos: 0 }));
        assert_eq!(t(""), None);
        assert_eq!(t("12a"), None);
        assert_eq!(t(".5"), None);
    }
}
