use thiserror::Error;

#[derive(Debug, Error)]
pub enum P2pError {
    #[error("invalid task id {0:?}")]
    BadTask(String),
    #[error("scheduler {url}: {reason}")]
    Scheduler { url: String, reason: String },
    #[error("peer {addr}: {reason}")]
    Peer { addr: String, reason: String },
    #[error("peer {addr}: connection refused or cut (its process is not there)")]
    PeerRefused { addr: String },
    /// The peer answered but did not have the whole piece (404, or a clean answer that ended short): a relay whose
    /// own source failed, or whose fetch had not started.
    #[error("peer {addr}: {reason}")]
    PieceUnavailable { addr: String, reason: String },
    /// A file URL's origin failed (`wharf get`).
    #[error("origin {url}: {reason}")]
    UrlOrigin { url: String, reason: String },
    /// Content loaded complete from disk has no origin to go back to.
    #[error("no origin known for this content")]
    NoOrigin,
    /// A background job of a download (a piece fetch, a write, the whole-content check) died.
    #[error("{what} failed: {reason}")]
    Job { what: &'static str, reason: String },
    /// The registry the blob comes from failed (unreachable, refused, a broken answer).
    #[error("origin: {0}")]
    Registry(#[from] wharf_remote::RemoteError),
    /// The registry the blob comes from does not have it.
    #[error("origin: {repository}@{digest} not found upstream")]
    NotUpstream { repository: String, digest: String },
    #[error("piece {piece} of {task} does not match its digest")]
    BadPiece { task: String, piece: u32 },
    #[error("{task}: the downloaded content hashes to {computed}, not its digest")]
    BadContent { task: String, computed: String },
    #[error("local storage at {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// `wharf get` could not finish the file.
    #[error("{url}: {reason}")]
    Get { url: String, reason: String },
    /// No address peers could reach this node at.
    #[error("{0}")]
    Advertise(String),
}
