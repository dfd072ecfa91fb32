//! How a node talks to schedulers (owner of each task by rendezvous hashing, the next one when it fails) and
//! fetches pieces from peers.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wharf_remote::body::{BodyError, read_exact};

use super::relay::Incoming;
use crate::P2pError;
use crate::hrw;
use crate::proto::{Announce, Report, ScheduleRequest, ScheduleResponse};
use crate::ratelimit::RateLimit;

pub struct Clients {
    pub http: reqwest::Client,
    schedulers: Vec<String>,
    token: Option<String>,
    /// Schedulers that failed recently, and until when they are skipped.
    down: Mutex<Vec<(String, Instant)>>,
}

/// How long a failed scheduler is skipped before it is tried again.
const SKIP_FOR: Duration = Duration::from_secs(5);

impl Clients {
    pub fn new(schedulers: Vec<String>, token: Option<String>) -> Result<Clients, P2pError> {
        let http = wharf_remote::http::client_builder()
            // Long enough for two SYN retransmissions (1 s, then 3 s): on a congested link a SYN is dropped like any
            // packet, and a peer given up on too early is reported unreachable for nothing.
            .connect_timeout(Duration::from_secs(10))
            // A peer or scheduler that sends nothing for this long is given up on.
            .read_timeout(Duration::from_secs(15))
            .pool_max_idle_per_host(16)
            .build()
            .map_err(|e| P2pError::Config(format!("HTTP client: {e}")))?;
        Ok(Clients {
            http,
            schedulers: schedulers
                .into_iter()
                .map(|s| s.trim_end_matches('/').to_owned())
                .collect(),
            token,
            down: Mutex::new(Vec::new()),
        })
    }

    pub fn has_schedulers(&self) -> bool {
        !self.schedulers.is_empty()
    }

    /// The schedulers for `task`, owner first, skipping ones that failed just now (unless all did).
    fn candidates(&self, task: &str) -> Vec<String> {
        let now = Instant::now();
        let down: Vec<String> = self
            .down
            .lock()
            .map(|mut d| {
                d.retain(|(_, until)| *until > now);
                d.iter().map(|(s, _)| s.clone()).collect()
            })
            .unwrap_or_default();
        let order = hrw::order(&self.schedulers, task);
        let up: Vec<String> = order
            .iter()
            .filter(|s| !down.contains(s))
            .map(|s| (*s).clone())
            .collect();
        if up.is_empty() {
            order.into_iter().cloned().collect()
        } else {
            up
        }
    }

    fn mark_down(&self, url: &str) {
        if let Ok(mut d) = self.down.lock() {
            d.retain(|(s, _)| s != url);
            d.push((url.to_owned(), Instant::now() + SKIP_FOR));
        }
    }

    /// The scheduler currently owning `task` (what announcements go to).
    pub fn owner(&self, task: &str) -> Option<String> {
        self.candidates(task).into_iter().next()
    }

    async fn post<B: Serialize, R: DeserializeOwned>(&self, url: &str, body: &B) -> Result<Option<R>, P2pError> {
        let json = serde_json::to_vec(body).map_err(|e| P2pError::Scheduler {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let mut req = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(json)
            .timeout(Duration::from_secs(5));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| P2pError::Scheduler {
            url: url.to_owned(),
            reason: causes(&e),
        })?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(P2pError::Scheduler {
                url: url.to_owned(),
                reason: format!("{status}: {text}"),
            });
        }
        let bytes = resp.bytes().await.map_err(|e| P2pError::Scheduler {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        // 202 and 204 carry no body.
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| P2pError::Scheduler {
                url: url.to_owned(),
                reason: format!("bad answer: {e}"),
            })
    }

    /// Asks the task's scheduler (then the next ones) where to get pieces. `Err` when none answers: the caller
    /// goes back to the origin.
    pub async fn schedule(&self, task: &str, req: &ScheduleRequest) -> Result<(String, ScheduleResponse), P2pError> {
        let mut last = None;
        for s in self.candidates(task) {
            let url = format!("{s}/v1/tasks/{task}/schedule");
            match self.post::<_, ScheduleResponse>(&url, req).await {
                Ok(Some(r)) => return Ok((s, r)),
                Ok(None) => {
                    last = Some(P2pError::Scheduler {
                        url,
                        reason: "empty answer".into(),
                    })
                }
                Err(e) => {
                    tracing::debug!(scheduler = %s, error = %e, "scheduler failed; trying the next");
                    self.mark_down(&s);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| P2pError::Scheduler {
            url: String::new(),
            reason: "no scheduler configured".into(),
        }))
    }

    /// Tells the task's scheduler what this node holds. Best effort: a failure is only logged.
    pub async fn announce(&self, task: &str, a: &Announce) {
        for s in self.candidates(task) {
            let url = format!("{s}/v1/tasks/{task}/announce");
            match self.post::<_, serde_json::Value>(&url, a).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(scheduler = %s, error = %e, "announce failed; trying the next");
                    self.mark_down(&s);
                }
            }
        }
    }

    pub async fn report(&self, task: &str, r: &Report) {
        for s in self.candidates(task) {
            let url = format!("{s}/v1/tasks/{task}/report");
            if self.post::<_, serde_json::Value>(&url, r).await.is_ok() {
                return;
            }
            self.mark_down(&s);
        }
    }

    /// What every scheduler wants this seed to preheat (each keeps its own queue).
    pub async fn preheat_for(&self, peer: &str) -> Vec<crate::proto::PreheatBlob> {
        let mut out = Vec::new();
        for s in &self.schedulers {
            let url = format!("{s}/v1/preheat?peer={peer}");
            let mut req = self.http.get(&url).timeout(Duration::from_secs(5));
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let Ok(resp) = req.send().await else { continue };
            if resp.status().is_success()
                && let Ok(bytes) = resp.bytes().await
                && let Ok(p) = serde_json::from_slice::<crate::proto::Preheat>(&bytes)
            {
                out.extend(p.blobs);
            }
        }
        out
    }

    /// Queues a preheat on every scheduler.
    pub async fn preheat(&self, p: &crate::proto::Preheat) -> Result<(), P2pError> {
        let mut ok = false;
        let mut last = None;
        for s in &self.schedulers {
            match self.post::<_, serde_json::Value>(&format!("{s}/v1/preheat"), p).await {
                Ok(_) => ok = true,
                Err(e) => last = Some(e),
            }
        }
        match (ok, last) {
            (true, _) => Ok(()),
            (false, Some(e)) => Err(e),
            (false, None) => Err(P2pError::Config("no scheduler configured".into())),
        }
    }

    /// The shape of a task the swarm knows (when the origin cannot say: it is down).
    pub async fn shape(&self, task: &str) -> Option<crate::proto::TaskShape> {
        self.task_get(task, "", Duration::from_secs(5), false).await
    }

    /// The digest of piece `n` of `task`, waiting up to `hold` for the scheduler to learn it; `None` if it did not.
    pub async fn piece_digest(&self, task: &str, n: u32, hold: Duration) -> Option<String> {
        let hold_ms = u32::try_from(hold.as_millis()).unwrap_or(u32::MAX);
        let path = format!("/pieces/{n}/digest?hold_ms={hold_ms}");
        // The scheduler that answers is the task's: a failover would only ask one that knows less.
        let d: crate::proto::PieceDigest = self.task_get(task, &path, hold + Duration::from_secs(5), true).await?;
        crate::proto::is_sha256_hex(&d.digest).then_some(d.digest)
    }

    /// GETs `/v1/tasks/{task}{path}` from the task's schedulers in order, skipping (and marking down) those that do
    /// not answer; the first successful answer's JSON. With `first_answer_only`, a scheduler that answers otherwise
    /// (404...) ends the search.
    async fn task_get<T: DeserializeOwned>(
        &self,
        task: &str,
        path: &str,
        timeout: Duration,
        first_answer_only: bool,
    ) -> Option<T> {
        for s in self.candidates(task) {
            let url = format!("{s}/v1/tasks/{task}{path}");
            let mut req = self.http.get(&url).timeout(timeout);
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let Ok(resp) = req.send().await else {
                self.mark_down(&s);
                continue;
            };
            if resp.status().is_success()
                && let Ok(bytes) = resp.bytes().await
                && let Ok(value) = serde_json::from_slice(&bytes)
            {
                return Some(value);
            }
            if first_answer_only {
                return None;
            }
        }
        None
    }

    /// Fetches piece `n` of `task` from the peer at `addr` (given up when it stalls: the client's read timeout).
    /// Each chunk also goes to `sink` as it arrives, for the peers this node relays the piece to; `len` is the
    /// piece's size (more is refused). Reads are paced by `limit` as they go (not after the whole piece): the socket's
    /// receive window then closes, and the senders slow down before they overrun this node's link.
    pub async fn piece(
        &self,
        addr: &str,
        task: &str,
        n: u32,
        len: usize,
        sink: &Incoming,
        limit: &RateLimit,
    ) -> Result<Bytes, P2pError> {
        let url = format!("{}/p2p/v1/tasks/{task}/pieces/{n}", addr.trim_end_matches('/'));
        let mut req = self.http.get(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let err = |reason: String| P2pError::Peer {
            addr: addr.to_owned(),
            reason,
        };
        let failed = |e: reqwest::Error| {
            if refused(&e) {
                P2pError::PeerRefused { addr: addr.to_owned() }
            } else {
                err(causes(&e))
            }
        };
        let mut resp = req.send().await.map_err(failed)?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(P2pError::PieceUnavailable {
                addr: addr.to_owned(),
                reason: "does not have it".into(),
            });
        }
        if !resp.status().is_success() {
            return Err(err(format!("answered {}", resp.status())));
        }
        let read = read_exact(&mut resp, len, move |chunk| async move {
            limit.take(chunk.len()).await;
            sink.push(chunk);
        })
        .await;
        read.map_err(|e| match e {
            BodyError::Read(e) => failed(e),
            BodyError::TooLong => err(format!("sent more than the piece's {len} bytes")),
            // Ended cleanly but short: a relay whose own source failed (a node that dies cuts the connection).
            BodyError::Short { got } => P2pError::PieceUnavailable {
                addr: addr.to_owned(),
                reason: format!("sent {got} of the piece's {len} bytes"),
            },
        })
    }
}

/// The connection was refused, or reset or closed before the piece was whole: the host answered, but the node's
/// process is not there (gone, or restarting), which a timeout on a congested network does not show.
fn refused(e: &reqwest::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionRefused, ConnectionReset, UnexpectedEof};
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ConnectionRefused | ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            )
        {
            return true;
        }
        // The connection closed before the response was whole: hyper says so without an io::Error (a body cut short
        // is an io::Error of kind UnexpectedEof, above).
        if s.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// An error with its causes (reqwest's own message hides them: "error sending request" could be a refused
/// connection, a timeout or a reset).
pub(crate) fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer on loopback that reads the request, writes `reply` and closes the connection.
    async fn peer_replying(reply: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            if let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(reply).await;
            }
        });
        format!("http://{addr}")
    }

    const TASK: &str = "sha256:00000000000000000000000000000000000000000000000000000000000000aa";

    #[tokio::test]
    async fn refused_and_cut_connections_are_told_from_other_failures() {
        let clients = Clients::new(vec![], None).unwrap();
        let sink = Incoming::default();
        let unlimited = RateLimit::new(None);
        // Nothing listens: refused.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let fetch = |addr: String| {
            let (clients, sink, unlimited) = (&clients, &sink, &unlimited);
            async move { clients.piece(&addr, TASK, 0, 100, sink, unlimited).await.unwrap_err() }
        };
        let e = fetch(closed).await;
        assert!(matches!(e, P2pError::PeerRefused { .. }), "{e}");
        // Closed before any response: cut.
        let e = fetch(peer_replying(b"").await).await;
        assert!(matches!(e, P2pError::PeerRefused { .. }), "{e}");
        // Closed in the middle of the body: cut.
        let partial = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789";
        let e = fetch(peer_replying(partial).await).await;
        assert!(matches!(e, P2pError::PeerRefused { .. }), "{e}");
        // Another answer, just not the piece: an ordinary failure.
        let e = fetch(peer_replying(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n").await).await;
        assert!(matches!(e, P2pError::Peer { .. }), "{e}");
        // Not there: unavailable (no blame).
        let e = fetch(peer_replying(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await).await;
        assert!(matches!(e, P2pError::PieceUnavailable { .. }), "{e}");
        // A whole answer, but short (a relay whose source failed): unavailable too, not a cut.
        let short = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789";
        let e = fetch(peer_replying(short).await).await;
        assert!(matches!(e, P2pError::PieceUnavailable { .. }), "{e}");
    }
}
