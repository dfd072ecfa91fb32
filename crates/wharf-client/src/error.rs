//! The one error type of the client. Every message is a single line that names the image part (blob or manifest),
//! where it was going to or coming from, and what went wrong.

use wharf_oci::Digest;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image name {input:?}: {reason}")]
    BadName { input: String, reason: String },
    #[error("transport {0:?} is not supported yet (supported: docker://REF, oci:PATH[:TAG], or a bare REF)")]
    UnsupportedTransport(String),
    #[error("{0}")]
    BadOption(String),
    #[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/arm64/v8")]
    BadPlatform(String),
    /// Talking to a registry failed: unreachable, an unexpected status, auth, credentials.
    #[error(transparent)]
    Remote(wharf_remote::RemoteError),
    #[error("blob {expected} from {from}: content digest is {computed}; refusing it")]
    DigestMismatch {
        expected: Digest,
        computed: Digest,
        from: String,
    },
    #[error("blob {digest} from {from}: {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
        from: String,
    },
    #[error("manifest {what}: {reason}")]
    Manifest { what: String, reason: String },
    #[error("no image for platform {wanted} in the index (it has: {available}); use --platform or --all")]
    NoPlatform { wanted: String, available: String },
    #[error("OCI layout {path}: {reason}")]
    Layout { path: String, reason: String },
    /// A layer that could not be applied onto a root filesystem; the cause names the entry and what failed.
    #[error("unpacking layer {layer}: {cause}")]
    Unpack {
        layer: String,
        cause: crate::rootfs::ApplyError,
    },
    #[error("Docker engine at {host}: {reason}")]
    Engine { host: String, reason: String },
    #[error("docker archive {path}: {reason}")]
    Archive { path: String, reason: String },
    #[error("{context}: {cause}")]
    Io { context: String, cause: std::io::Error },
}

impl From<wharf_remote::RemoteError> for Error {
    /// A bad image name is the client's own kind of error, wherever it was found.
    fn from(e: wharf_remote::RemoteError) -> Error {
        match e {
            wharf_remote::RemoteError::BadName { input, reason } => Error::BadName { input, reason },
            e => Error::Remote(e),
        }
    }
}

impl Error {
    pub fn io(context: impl Into<String>, cause: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            cause,
        }
    }

    /// Worth another attempt: the connection failed or timed out, or the registry was failing or busy.
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::Remote(e) => e.is_outage(),
            _ => false,
        }
    }
}
