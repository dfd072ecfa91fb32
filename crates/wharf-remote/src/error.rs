//! The one error type of the registry client. Every message is a single line that names what was asked (a blob, a
//! manifest, a tag list), of which registry, and what went wrong; [`RemoteError::kind`] says whether that was an
//! outage (worth retrying later, or serving from a cache), a missing object, or a refusal.

use wharf_oci::Digest;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("invalid image name {input:?}: {reason}")]
    BadName { input: String, reason: String },
    /// The cause is folded into the message (not exposed as `source`) so the line is complete on its own and an
    /// error-chain printer does not repeat reqwest's wrapping messages.
    #[error("{what} at {registry}: {}", http_cause(.cause))]
    Unreachable {
        what: String,
        registry: String,
        cause: reqwest::Error,
    },
    /// An answer other than the one expected. `code` and `message` are the first entry of the spec's error body,
    /// when the registry sent one.
    #[error("{what} at {registry}: HTTP {status}{}", detail(.code, .message))]
    Status {
        what: String,
        registry: String,
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    #[error("{what} at {registry}: authentication failed: {reason}")]
    Auth {
        what: String,
        registry: String,
        reason: String,
    },
    #[error("{what} at {registry}: content digest is {computed}, expected {expected}")]
    DigestMismatch {
        what: String,
        registry: String,
        expected: Digest,
        computed: Digest,
    },
    /// The registry broke the protocol: a range answered with other bytes than asked, a manifest too large, a body
    /// that is no manifest.
    #[error("{what} at {registry}: {reason}")]
    Protocol {
        what: String,
        registry: String,
        reason: String,
    },
    #[error("certificates in {dir}: {reason}")]
    Certificates { dir: String, reason: String },
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

/// What a failure means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The registry could not be reached, failed (5xx) or is rate-limiting (429): try later, or serve what is
    /// cached.
    Outage,
    /// The registry has no such repository, manifest, tag or blob (404).
    NotFound,
    /// The registry refused the caller: credentials missing or wrong (401), or not allowed (403).
    Denied,
    /// Anything else: bad input, a broken answer, a digest that does not match.
    Invalid,
}

impl RemoteError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RemoteError::Unreachable { .. } => ErrorKind::Outage,
            RemoteError::Status { status, .. } => match *status {
                404 => ErrorKind::NotFound,
                401 | 403 => ErrorKind::Denied,
                s if s >= 500 || s == 429 => ErrorKind::Outage,
                _ => ErrorKind::Invalid,
            },
            // A token endpoint that cannot be reached or fails is an outage too; one that refuses is a denial.
            RemoteError::Auth { .. } => ErrorKind::Denied,
            _ => ErrorKind::Invalid,
        }
    }

    /// The registry is down, failing or rate-limiting: the case for retrying later or serving what is cached.
    pub fn is_outage(&self) -> bool {
        self.kind() == ErrorKind::Outage
    }

    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    /// The HTTP status the registry answered, for a [`RemoteError::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            RemoteError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// `Ok(None)` for a [`ErrorKind::NotFound`], the rest unchanged: for callers to whom a missing object is an answer.
pub fn optional<T>(r: Result<T, RemoteError>) -> Result<Option<T>, RemoteError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn detail(code: &Option<String>, message: &Option<String>) -> String {
    match (code, message) {
        (Some(c), Some(m)) => format!(" {c}: {m}"),
        (Some(c), None) => format!(" {c}"),
        (None, Some(m)) => format!(": {m}"),
        (None, None) => String::new(),
    }
}

/// What went wrong under a reqwest error, in a few words: its innermost cause, which names the real problem
/// (`Connection refused`, `dns error`, a TLS failure) rather than the request.
pub fn http_cause(e: &reqwest::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> RemoteError {
        RemoteError::Status {
            what: "manifest a:v1".into(),
            registry: "r".into(),
            status: code,
            code: Some("MANIFEST_UNKNOWN".into()),
            message: Some("manifest unknown".into()),
        }
    }

    #[test]
    fn kinds_from_statuses() {
        assert_eq!(status(404).kind(), ErrorKind::NotFound);
        assert_eq!(status(401).kind(), ErrorKind::Denied);
        assert_eq!(status(403).kind(), ErrorKind::Denied);
        assert_eq!(status(503).kind(), ErrorKind::Outage);
        assert_eq!(status(429).kind(), ErrorKind::Outage);
        assert_eq!(status(400).kind(), ErrorKind::Invalid);
        assert_eq!(
            status(404).to_string(),
            "manifest a:v1 at r: HTTP 404 MANIFEST_UNKNOWN: manifest unknown"
        );
        assert!(matches!(optional::<()>(Err(status(404))), Ok(None)));
        assert!(optional::<()>(Err(status(500))).is_err());
    }
}
