//! The wire protocol between nodes and schedulers (JSON over HTTP) and between peers.
//!
//! Scheduler API (every request carries `Authorization: Bearer <cluster token>` when one is configured):
//! - `POST /v1/tasks/{task}/schedule` [`ScheduleRequest`] → [`ScheduleResponse`]: a source for each wanted piece.
//! - `POST /v1/tasks/{task}/announce` [`Announce`] → 204: pieces the node now holds (with the SHA-256 of pieces it
//!   fetched from the origin), or that it is done or gone.
//! - `POST /v1/tasks/{task}/report` [`Report`] → 204: a peer sent a bad piece or could not be reached, or a
//!   published piece digest is false.
//! - `GET /v1/tasks/{task}` → [`TaskShape`] (404 if unknown): how big a task is, for a node whose origin is down.
//! - `GET /v1/tasks/{task}/pieces/{n}/digest?hold_ms=` → [`PieceDigest`], held up to `hold_ms` (at most
//!   [`MAX_HOLD_MS`]) until it is known, else 404: for a piece relayed from the node fetching it from the origin.
//! - `POST /v1/preheat` [`Preheat`] → 202: seed nodes should fetch these tasks.
//! - `GET /v1/swarms` → [`Swarms`]; `GET /metrics`; `GET /healthz`.
//!
//! Peer API: `GET /p2p/v1/tasks/{task}/pieces/{n}` → the piece's bytes, if this node holds it verified, or as they
//! arrive if it is receiving it from a peer (all but the last slice until it has verified the whole; cut short if
//! that fails); 404 otherwise. Same bearer token.

use serde::{Deserialize, Serialize};

/// A task id: `sha256:<hex>` for a registry blob, `url:<sha256 hex of the URL>` for a file. Validated so it is safe
/// in a path and a file name.
pub fn valid_task(task: &str) -> bool {
    let Some((kind, hex)) = task.split_once(':') else {
        return false;
    };
    matches!(kind, "sha256" | "url") && is_sha256_hex(hex)
}

/// A SHA-256 in lowercase hex (a piece digest, the hex of a task id).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A peer address's host (an IPv6 one without its brackets) and port, if the address is `http(s)://host:port` and
/// nothing more: every node sends requests, with the cluster token, to the addresses peers announce, so an address
/// with a path, a query, credentials or no port (a URL of the attacker's choosing) is refused.
pub fn peer_host_port(addr: &str) -> Option<(&str, u16)> {
    let rest = addr.strip_prefix("http://").or_else(|| addr.strip_prefix("https://"))?;
    let (host, port) = rest.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok().then_some(v6)?,
        None => (!host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
            .then_some(host)?,
    };
    Some((host, port))
}

/// The task id of a file URL.
pub fn url_task(url: &str) -> String {
    format!("url:{}", wharf_oci::Digest::sha256_of(url.as_bytes()).hex())
}

/// Who a node is, as peers reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Stable id of the node (its advertised address and port if not configured).
    pub id: String,
    /// Base URL of its peer API, e.g. `http://198.18.0.5:65002`.
    pub addr: String,
    /// Optional locality hint (rack, zone): peers in the same one are preferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    /// This node is a seed (next to the registry; preheat targets).
    #[serde(default)]
    pub seed: bool,
    /// It speaks relays (nodes say so since this field came): it may be sent to a peer that is still receiving the piece
    /// (it asks for a lease holder's digest, and takes a relay's clean short answer for the relay's loss, not for a
    /// corrupt piece), and it passes on what it receives. A node from before relays does not say so: the scheduler
    /// neither relays to it nor through it, so old and new nodes mix during a rolling upgrade.
    #[serde(default)]
    pub relays: bool,
}

/// What a task is: the numbers every node must agree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskShape {
    pub size: u64,
    pub piece_len: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleRequest {
    pub peer: Peer,
    pub shape: TaskShape,
    /// Pieces the node needs now (not held, not in flight).
    pub want: Vec<u32>,
    /// Most new origin leases the node can start now (its free origin slots); `None` = no limit of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_origin: Option<u32>,
    /// Most transfers (from the origin or peers) the node receives at once, over all its tasks: the scheduler
    /// answers no more than this less the ones it already assigned to it (or leased it) that are not over.
    /// `None` = no limit of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// What the node fetches the task from (e.g. the upstream's base URL): the scheduler caps the origin fetches in
    /// flight per origin, over all its tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// If no piece can be assigned now, the scheduler may hold the answer up to this long (capped at
    /// [`MAX_HOLD_MS`]) and answer as soon as one can: a long poll instead of the node asking again and again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_ms: Option<u32>,
}

/// Longest a scheduler holds a schedule request ([`ScheduleRequest::hold_ms`]).
pub const MAX_HOLD_MS: u32 = 5_000;

/// Where to get a piece.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// From this peer, which holds it verified, or (`relay`) is receiving it right now (from a peer, or from the
    /// origin as the piece's lease holder: then the digest comes once it is whole) and passes the bytes on as they
    /// arrive (cut-through: a new piece spreads at the speed of the links, not one whole
    /// piece-time per hop). A relay withholds the end of the piece until it has verified the whole, so a relay's
    /// cut-short answer is its source's failure, not its own.
    Peer {
        id: String,
        addr: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        relay: bool,
    },
    /// From the origin: this node is the one fetching it (a lease; announce it when done).
    Origin,
    /// Someone is fetching it from the origin; ask again soon.
    Wait,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    pub piece: u32,
    pub source: Source,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleResponse {
    pub assignments: Vec<Assignment>,
    /// SHA-256 (hex) of every piece known so far, by piece number (`None` where no node has fetched it from the
    /// origin yet). A piece from a peer is accepted only if it matches.
    pub digests: Vec<Option<String>>,
}

/// `GET /v1/tasks/{task}/pieces/{n}/digest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceDigest {
    /// SHA-256, lowercase hex.
    pub digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announce {
    pub peer: Peer,
    pub shape: TaskShape,
    /// Pieces the node now holds verified.
    #[serde(default)]
    pub have: Vec<u32>,
    /// `(piece, sha256 hex)` of pieces it fetched from the origin.
    #[serde(default)]
    pub digests: Vec<(u32, String)>,
    /// The node has every piece and the whole content verified.
    #[serde(default)]
    pub done: bool,
    /// The node dropped the task (evicted, failed): forget what it held.
    #[serde(default)]
    pub gone: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub peer: Peer,
    /// The peer that misbehaved.
    pub bad: String,
    pub piece: u32,
    pub reason: ReportReason,
    /// With [`ReportReason::Forged`]: the piece's SHA-256 (hex) as the origin sent it to the reporter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// What a reported peer did (on the wire: `corrupt`, `refused`, `unreachable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportReason {
    /// Its bytes did not match the piece's digest.
    Corrupt,
    /// Its port refused the connection, or cut it: gone.
    Refused,
    /// No answer in time: gone, or a congested network.
    Unreachable,
    /// The piece's published digest is false: the reporter fetched the piece from the origin (after the whole
    /// content failed its digest) and got other bytes. `bad` is not used: the scheduler knows who published it.
    Forged,
}

impl ReportReason {
    /// Its name on the wire (and as a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            ReportReason::Corrupt => "corrupt",
            ReportReason::Refused => "refused",
            ReportReason::Unreachable => "unreachable",
            ReportReason::Forged => "forged",
        }
    }
}

/// Ask seed nodes to fetch tasks ahead of a rollout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Preheat {
    /// Registry blobs: `(upstream name or URL, repository, digest)`.
    pub blobs: Vec<PreheatBlob>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreheatBlob {
    pub repository: String,
    pub digest: String,
    pub size: u64,
}

/// `GET /v1/swarms`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Swarms {
    pub tasks: Vec<SwarmInfo>,
    pub peers: Vec<PeerInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmInfo {
    pub task: String,
    pub size: u64,
    pub piece_len: u64,
    pub pieces: u32,
    /// Pieces whose digest is known.
    pub known_digests: u32,
    /// Peers with at least one piece, and how many each holds.
    pub holders: Vec<(String, u32)>,
    /// Peers holding everything.
    pub done: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerInfo {
    pub id: String,
    pub addr: String,
    pub rack: Option<String>,
    pub seed: bool,
    pub seconds_since_seen: u64,
    /// Reported for corrupt pieces by enough members, or caught publishing a false digest: not assigned until the
    /// exclusion ends.
    pub excluded: bool,
    /// Reported (unreachable, or one corrupt report): not assigned for a while.
    #[serde(default)]
    pub suspect: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids() {
        let d = wharf_oci::Digest::sha256_of(b"x").to_string();
        assert!(valid_task(&d));
        assert!(valid_task(&url_task("http://example.invalid/f")));
        for bad in [
            "",
            "sha256:",
            "sha512:00",
            "url:../../etc",
            &d.to_uppercase(),
            "sha256:zz",
        ] {
            assert!(!valid_task(bad), "{bad}");
        }
    }

    #[test]
    fn sources_are_tagged() {
        let s = serde_json::to_string(&Source::Peer {
            id: "a".into(),
            addr: "http://x".into(),
            relay: false,
        })
        .unwrap();
        assert_eq!(s, r#"{"kind":"peer","id":"a","addr":"http://x"}"#);
        let relay = r#"{"kind":"peer","id":"a","addr":"http://x","relay":true}"#;
        let parsed: Source = serde_json::from_str(relay).unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), relay);
        assert_eq!(serde_json::to_string(&Source::Wait).unwrap(), r#"{"kind":"wait"}"#);
    }
}
