//! The few system calls std does not wrap: `mknod`, `utimensat` on a symlink, and the xattr family. Each takes a
//! path (never followed at its last component) or an open file.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A point in time as tar gives it: seconds since the epoch (negative before it) and nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl Time {
    fn timespec(self) -> libc::timespec {
        libc::timespec {
            tv_sec: self.secs as libc::time_t,
            tv_nsec: self.nanos as _,
        }
    }

    /// The modification time of `meta` (what a directory had before this layer touched it).
    pub fn mtime_of(meta: &std::fs::Metadata) -> Time {
        use std::os::unix::fs::MetadataExt;
        Time {
            secs: meta.mtime(),
            nanos: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
        }
    }

    pub fn atime_of(meta: &std::fs::Metadata) -> Time {
        use std::os::unix::fs::MetadataExt;
        Time {
            secs: meta.atime(),
            nanos: meta.atime_nsec().clamp(0, 999_999_999) as u32,
        }
    }
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `mknod(path, kind | perm, makedev(major, minor))`; the umask applies to `perm`, the caller fixes the mode.
pub(crate) fn mknod(path: &Path, kind: libc::mode_t, perm: u32, major: u32, minor: u32) -> io::Result<()> {
    let c = cpath(path)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: `c` is a valid NUL-terminated string that lives across the call.
    check(unsafe { libc::mknod(c.as_ptr(), kind | (perm as libc::mode_t & 0o7777), dev) })
}

/// `chmod` of a path whose last component is known not to be a symlink (a node this layer just made).
pub(crate) fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: as above.
    check(unsafe { libc::chmod(c.as_ptr(), mode as libc::mode_t) })
}

/// Sets atime and mtime of `path` itself, not following a symlink there.
pub(crate) fn lutimes(path: &Path, atime: Time, mtime: Time) -> io::Result<()> {
    let c = cpath(path)?;
    let times = [atime.timespec(), mtime.timespec()];
    // SAFETY: `c` and `times` live across the call; `times` has the two elements utimensat reads.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
}

/// Sets atime and mtime of an open file or directory.
pub(crate) fn futimes(file: &File, atime: Time, mtime: Time) -> io::Result<()> {
    let times = [atime.timespec(), mtime.timespec()];
    // SAFETY: the descriptor is open for the call's duration; `times` has two elements.
    check(unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) })
}

/// Where an xattr goes: an open file, or a path whose last component is not followed.
pub(crate) enum Target<'a> {
    Fd(&'a File),
    Path(&'a Path),
}

pub(crate) fn set_xattr(target: &Target, name: &[u8], value: &[u8]) -> io::Result<()> {
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let (ptr, len) = (value.as_ptr() as *const libc::c_void, value.len());
    match target {
        // SAFETY: name and value buffers outlive the call; len is the value's length.
        Target::Fd(f) => check(unsafe { libc::fsetxattr(f.as_raw_fd(), n.as_ptr(), ptr, len, 0) }),
        Target::Path(p) => {
            let c = cpath(p)?;
            // SAFETY: as above.
            check(unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), ptr, len, 0) })
        }
    }
}

/// The names of the xattrs of an open file.
pub(crate) fn list_xattrs(file: &File) -> io::Result<Vec<Vec<u8>>> {
    let fd = file.as_raw_fd();
    loop {
        // SAFETY: a null buffer of size 0 asks for the size only.
        let size = check_size(unsafe { libc::flistxattr(fd, std::ptr::null_mut(), 0) })?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` has `size` writable bytes.
        match check_size(unsafe { libc::flistxattr(fd, buf.as_mut_ptr() as *mut libc::c_char, buf.len()) }) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect());
            }
            // The list grew between the two calls: ask again.
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

pub(crate) fn remove_xattr(file: &File, name: &[u8]) -> io::Result<()> {
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `n` lives across the call.
    check(unsafe { libc::fremovexattr(file.as_raw_fd(), n.as_ptr()) })
}

/// The effective user is root (so `mknod` of devices and `chown` to any owner are expected to work).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
