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
    /// The cause is folded into the message (not exposed as `source`) so the line is complete on its own and an
    /// error-chain printer does not repeat reqwest's wrapping messages.
    #[error("{what} at {registry}: {}", http_cause(.cause))]
    Unreachable {
        what: String,
        registry: String,
        cause: reqwest::Error,
    },
    #[error("{what} at {registry}: HTTP {status}{detail}")]
    Status {
        what: String,
        registry: String,
        status: u16,
        detail: String,
    },
    #[error("{what} at {registry}: authentication failed: {reason}")]
    Auth {
        what: String,
        registry: String,
        reason: String,
    },
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
    #[error("Docker config {path}: {reason}")]
    DockerConfig { path: String, reason: String },
    #[error("cannot locate the Docker config: neither DOCKER_CONFIG nor HOME is set")]
    NoDockerConfig,
    #[error("credential helper docker-credential-{helper} ({action} for {server}): {reason}")]
    CredentialHelper {
        helper: String,
        action: String,
        server: String,
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, cause: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            cause,
        }
    }

    /// Worth another attempt: the connection failed or timed out, or the registry was failing or busy.
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// What went wrong under a reqwest error, in a few words: its innermost cause, which names the real problem
/// (`Connection refused`, `dns error`, a TLS failure) rather than the request.
fn http_cause(e: &reqwest::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let root = inner.to_string();
    if e.is_timeout() {
        format!("timed out ({root})")
    } else if e.is_connect() {
        format!("cannot connect: {root}")
    } else if e.is_body() || e.is_decode() {
        format!("transfer failed: {root}")
    } else {
        root
    }
}
