use std::io;
use std::path::PathBuf;

use wharf_oci::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("blob upload {0:?} is unknown")]
    UploadUnknown(String),
    #[error("chunk starts at byte {got} but the upload has {expected} bytes")]
    RangeMismatch { expected: u64, got: u64 },
    #[error("content digest is {computed}, not the {expected} the client declared")]
    DigestMismatch { expected: Digest, computed: Digest },
    #[error("blob {0} is unknown")]
    BlobUnknown(Digest),
    #[error("requested range is outside the blob's {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("the upload body broke off after {kept} bytes were stored: {source}")]
    BodyInterrupted { kept: u64, source: io::Error },
    /// The repository cannot be written here (a store that fronts another registry serves it read-only).
    #[error("repository {repo} is read-only: {reason}")]
    ReadOnly { repo: String, reason: String },
    /// A store that fronts another registry (a pull-through mirror, a P2P node) did not get what it asked there.
    #[error("upstream {registry}: {reason}")]
    Remote { registry: String, reason: String },
    #[error("storage I/O error at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("object storage could not {op}: {reason}")]
    Backend { op: String, reason: String },
    #[error("{service} is unavailable: {reason}")]
    Unavailable { service: &'static str, reason: String },
    /// A configuration the store cannot be assembled from (a combination that is unsafe, a missing setting).
    #[error("{0}")]
    Config(String),
    #[error("corrupt metadata at {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl StorageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn backend(op: impl Into<String>, e: impl std::fmt::Display) -> Self {
        StorageError::Backend {
            op: op.into(),
            reason: e.to_string(),
        }
    }

    /// True when the underlying cause is a full disk or quota.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StorageError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }
}
