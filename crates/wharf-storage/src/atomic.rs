//! Small-file writes that are atomic (temp file + rename) and, when asked, durable (fsync of file and directory).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use crate::{Result, StorageError};

/// Runs blocking filesystem work off the async runtime.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StorageError::io("<blocking task>", io::Error::other(e.to_string()))),
    }
}

pub(crate) fn create_dir_all(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| StorageError::io(dir, e))
}

/// Writes `data` to `path` through a temporary file in `tmp_dir` (same filesystem) and a rename, so readers see
/// the old content or the new, never a part. With `durable`, the data and the rename are fsynced.
pub(crate) fn write_atomic(tmp_dir: &Path, path: &Path, data: &[u8], durable: bool) -> Result<()> {
    create_dir_all(tmp_dir)?;
    let tmp = tmp_dir.join(uuid::Uuid::new_v4().simple().to_string());
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| StorageError::io(&tmp, e))?;
        f.write_all(data).map_err(|e| StorageError::io(&tmp, e))?;
        if durable {
            f.sync_data().map_err(|e| StorageError::io(&tmp, e))?;
        }
        let parent = path.parent().unwrap_or(Path::new("."));
        create_dir_all(parent)?;
        fs::rename(&tmp, path).map_err(|e| StorageError::io(path, e))?;
        if durable {
            fsync_dir(parent)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a small file; `None` if it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io(path, e)),
    }
}

/// Removes a file; false if it did not exist.
pub(crate) fn remove_optional(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StorageError::io(path, e)),
    }
}

/// Names of the entries of a directory, sorted; empty if it does not exist.
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::io(dir, e)),
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        if let Some(n) = entry.file_name().to_str() {
            names.push(n.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Sets a file's modification time to the filesystem's "now" (`utimensat` with `UTIME_NOW`, the same clock that
/// stamps new files). False if the file does not exist. Garbage collection reads this time: see `gc.rs`.
pub(crate) fn touch(path: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| StorageError::io(path, io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    ];
    // SAFETY: `c` is a NUL-terminated path and `times` two valid timespecs, both alive for the call.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::NotFound {
        Ok(false)
    } else {
        Err(StorageError::io(path, e))
    }
}
