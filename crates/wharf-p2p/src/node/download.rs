//! The download of one task: ask the scheduler where each missing piece is, fetch up to `concurrency` pieces at
//! once from peers (verified against the piece's SHA-256 before it is stored) or from the origin (whose digest this
//! node then publishes), announce every piece stored, and verify the whole content at the end.
//!
//! Back to source is always possible: with no scheduler answering, every missing piece comes from the origin; a
//! piece a peer fails to deliver (dead, slow, corrupt) is asked for again, and a piece that has only been "wait" for
//! [`WAIT_LIMIT`] while the node stored no piece at all is fetched from the origin anyway. A peer that sent a corrupt piece is reported and not used again
//! by this node. If the whole content does not match its digest, everything is fetched again from the origin alone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::{JoinHandle, JoinSet};

use super::Node;
use super::task::{Phase, Receiving, Task};
use crate::P2pError;
use crate::proto::{Report, ReportReason, ScheduleRequest, ScheduleResponse, Source, TaskShape};

/// A piece that has been "wait" this long, while the node stored no piece of any task either, is fetched from the
/// origin regardless: the swarm is stuck, not slow. (Not while pieces keep arriving: an image whose origin alone
/// needs minutes to send it keeps pieces waiting that long in a healthy swarm, and 48 nodes then going around the
/// scheduler to the origin at once would bury it.) Longer than the scheduler's origin lease (60 s), so a stuck
/// lease is first handed to another node.
pub const WAIT_LIMIT: Duration = Duration::from_secs(90);
/// A peer that could not deliver is not asked again by this node for this long (a corrupt one, never again).
const UNREACHABLE_COOLDOWN: Duration = Duration::from_secs(10);
/// How long the scheduler may hold a schedule request that has nothing to assign yet (a long poll).
const HOLD_MS: u32 = 1_000;
/// How long a piece relayed from the node fetching it from the origin waits, once whole, for its digest.
const DIGEST_WAIT: Duration = Duration::from_secs(15);
/// Consecutive origin failures after which the download gives up.
const ORIGIN_ATTEMPTS: u32 = 5;

enum Fetched {
    Ok {
        n: u32,
        data: Bytes,
        from: Option<String>,
        /// Its SHA-256 (hex), computed once, where the bytes arrived.
        digest: String,
        /// Peers may read it from memory until it is stored (a piece from a peer or the origin).
        receiving: Option<Receiving>,
    },
    Failed {
        n: u32,
        from: Option<(String, String)>,
        error: P2pError,
        corrupt: bool,
        /// The source was a relay: cut short or absent, it is its own source that failed.
        relay: bool,
    },
}

/// Runs the download of `task` to its end (the task's phase says how it ended).
pub async fn run(node: Arc<Node>, task: Arc<Task>) {
    let _guard = task.reader();
    metrics::gauge!("wharf_p2p_active_tasks").increment(1.0);
    let result = download(&node, &task, false).await;
    let result = match result {
        Err(P2pError::BadContent { .. }) => {
            tracing::warn!(task = %task.id, "content failed its digest; fetching it again from the origin alone");
            let published = task.digests.lock().map(|d| d.clone()).unwrap_or_default();
            task.reset();
            let again = download(&node, &task, true).await;
            if again.is_ok() {
                report_forged(&node, &task, &published).await;
            }
            again
        }
        other => other,
    };
    metrics::gauge!("wharf_p2p_active_tasks").decrement(1.0);
    match result {
        Ok(()) => {
            // On disk before anyone is told (the engine gets its last bytes at `Done`, then the scheduler): a node
            // stopped right after a pull still has the blob when it starts again.
            node.finished(&task);
            task.finish(Phase::Done);
            node.announce(&task, vec![], vec![], true).await;
        }
        Err(e) => {
            tracing::warn!(task = %task.id, error = %e, "download failed");
            task.finish(Phase::Failed(e.to_string()));
            node.forget(&task).await;
        }
    }
}

async fn download(node: &Arc<Node>, task: &Arc<Task>, origin_only: bool) -> Result<(), P2pError> {
    let shape = TaskShape {
        size: task.size,
        piece_len: task.piece_len,
    };
    let origin_key = task.origin.as_ref().and_then(|o| o.key());
    let limit = node.config.concurrency.max(1);
    let mut d = Download {
        node: node.clone(),
        task: task.clone(),
        limit,
        in_flight: HashSet::new(),
        waiting_since: HashMap::new(),
        excluded: HashSet::new(),
        cooling: HashMap::new(),
        jobs: JoinSet::new(),
        origin_failures: 0,
    };
    // The schedule request under way (a long poll: the scheduler answers when it has a source for something).
    let mut poll: Option<JoinHandle<Option<ScheduleResponse>>> = None;
    let mut back_to_source_logged = false;
    loop {
        let missing: Vec<u32> = task
            .missing()
            .into_iter()
            .filter(|n| !d.in_flight.contains(n))
            .collect();
        if missing.is_empty() && d.in_flight.is_empty() {
            break;
        }
        // Registered before the slots are counted, so a slot freed in between is not missed.
        let slot_freed = node.slot_freed.notified();
        tokio::pin!(slot_freed);
        slot_freed.as_mut().enable();
        // Node-wide slots free now (other tasks share them), at most this task's own limit.
        let free = node
            .download_slots
            .available_permits()
            .min(limit - d.in_flight.len().min(limit));
        let use_scheduler = !origin_only && node.clients.has_schedulers();
        if poll.is_none() && !missing.is_empty() && free > 0 {
            if use_scheduler {
                let req = ScheduleRequest {
                    peer: node.peer.clone(),
                    shape: shape.clone(),
                    want: missing.clone(),
                    max_origin: Some(u32::try_from(node.origin_slots.available_permits()).unwrap_or(u32::MAX)),
                    // All its slots: the scheduler subtracts what it already assigned to this node, in any task.
                    slots: Some(u32::try_from(limit).unwrap_or(u32::MAX)),
                    origin: origin_key.clone(),
                    hold_ms: Some(HOLD_MS),
                };
                let (node, id) = (node.clone(), task.id.clone());
                poll = Some(tokio::spawn(async move {
                    node.clients.schedule(&id, &req).await.ok().map(|(_, resp)| resp)
                }));
            } else {
                d.start(missing.iter().map(|n| (*n, Source::Origin)).collect());
                continue;
            }
        }
        let polling = poll.is_some();
        let want_slot = !polling && !missing.is_empty() && free == 0 && d.in_flight.len() < limit;
        tokio::select! {
            answer = async {
                match poll.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            }, if polling => {
                poll = None;
                let answer = answer.unwrap_or(None);
                let mut plan: Vec<(u32, Source)> = Vec::new();
                let mut declined = false;
                match answer {
                    Some(resp) => {
                        if let Ok(mut digests) = task.digests.lock() {
                            for (slot, known) in digests.iter_mut().zip(resp.digests) {
                                if slot.is_none() {
                                    *slot = known;
                                }
                            }
                        }
                        d.cooling.retain(|_, since| since.elapsed() < UNREACHABLE_COOLDOWN);
                        for a in resp.assignments {
                            // A peer this node will not use counts as waiting, and waiting too long (for whatever
                            // reason) goes back to the origin.
                            let source = match a.source {
                                Source::Peer { id, .. } if d.excluded.contains(&id) || d.cooling.contains_key(&id) => {
                                    declined = true;
                                    Source::Wait
                                }
                                s => s,
                            };
                            let source = match source {
                                Source::Wait
                                    if d.waiting_since.get(&a.piece).is_some_and(|t| t.elapsed() > WAIT_LIMIT)
                                        && node.idle_for() > WAIT_LIMIT =>
                                {
                                    metrics::counter!("wharf_p2p_back_to_source_total", "why" => "wait").increment(1);
                                    Source::Origin
                                }
                                s => s,
                            };
                            plan.push((a.piece, source));
                        }
                    }
                    None => {
                        if !back_to_source_logged {
                            tracing::warn!(task = %task.id, "no scheduler answers; fetching from the origin");
                            back_to_source_logged = true;
                        }
                        metrics::counter!("wharf_p2p_back_to_source_total", "why" => "scheduler").increment(1);
                        plan.extend(missing.iter().map(|n| (*n, Source::Origin)));
                    }
                }
                let started = d.start(plan);
                if started == 0 && (declined || d.in_flight.is_empty()) {
                    // Nothing started: ask again, but not at once. The scheduler held the request while nothing
                    // could be assigned, so this only paces answers this node declined (a peer it gave up on) and a
                    // scheduler that answers at once (an old one, or one that fails).
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            _ = &mut slot_freed, if want_slot => {
                // A slot came free (another task's piece ended): look again. (Not by waiting on the semaphore:
                // its permits go to waiters in turn, and tasks that only look would hand one round forever.)
            }
            joined = d.jobs.join_next(), if !d.jobs.is_empty() => {
                let Some(joined) = joined else { continue };
                let fetched = joined.map_err(|e| P2pError::Job {
                    what: "a piece fetch",
                    reason: e.to_string(),
                })?;
                if let Err(e) = d.finish_piece(fetched).await {
                    if let Some(p) = poll.take() {
                        p.abort();
                    }
                    return Err(e);
                }
            }
            // Not reached (some branch is always enabled); never spin if it were.
            else => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    verify(task).await
}

/// After the whole content failed its digest and came again from the origin alone: every piece whose digest the
/// swarm published (`published`, as the first attempt knew them) differs from the origin's bytes is reported, so the
/// scheduler withdraws the false digest and finds out who published it.
async fn report_forged(node: &Arc<Node>, task: &Arc<Task>, published: &[Option<String>]) {
    let from_origin = task.digests.lock().map(|d| d.clone()).unwrap_or_default();
    for (n, (old, new)) in published.iter().zip(from_origin).enumerate() {
        let (Some(old), Some(new)) = (old, new) else {
            continue;
        };
        if *old == new {
            continue;
        }
        tracing::warn!(task = %task.id, piece = n, published = %old, origin = %new, "a published piece digest was false");
        metrics::counter!("wharf_p2p_forged_digests_total").increment(1);
        let report = Report {
            peer: node.peer.clone(),
            bad: String::new(),
            piece: n as u32,
            reason: ReportReason::Forged,
            digest: Some(new),
        };
        node.clients.report(&task.id, &report).await;
    }
}

/// What one download of a task keeps from one turn of its loop to the next.
struct Download {
    node: Arc<Node>,
    task: Arc<Task>,
    /// Most pieces of this task in flight at once (the node's slots are shared by all its tasks).
    limit: usize,
    in_flight: HashSet<u32>,
    /// Pieces the scheduler said to wait for, and since when.
    waiting_since: HashMap<u32, Instant>,
    /// Peers that sent a corrupt piece: never asked again by this download.
    excluded: HashSet<String>,
    /// Peers that failed to deliver, and when: not asked again for [`UNREACHABLE_COOLDOWN`].
    cooling: HashMap<String, Instant>,
    jobs: JoinSet<Fetched>,
    /// Origin fetches that failed in a row.
    origin_failures: u32,
}

impl Download {
    /// Starts the fetches of `plan` that a free slot allows (a piece already held or under way is skipped; `Wait`
    /// only starts its clock); returns how many started.
    fn start(&mut self, plan: Vec<(u32, Source)>) -> usize {
        let (node, task) = (&self.node, &self.task);
        let mut started = 0;
        for (n, source) in plan {
            if self.in_flight.len() >= self.limit || self.in_flight.contains(&n) || task.has(n) {
                continue;
            }
            if let Source::Wait = source {
                self.waiting_since.entry(n).or_insert_with(Instant::now);
                continue;
            }
            // A transfer the scheduler assigned but no slot is left for: asked for again next time (which ends it
            // there).
            let Ok(permit) = node.download_slots.clone().try_acquire_owned() else {
                continue;
            };
            let slot = Slot {
                permit: Some(permit),
                node: node.clone(),
            };
            self.waiting_since.remove(&n);
            self.in_flight.insert(n);
            started += 1;
            let from = match &source {
                Source::Peer { id, .. } => id.as_str(),
                Source::Origin | Source::Wait => "origin",
            };
            tracing::debug!(task = %task.id, piece = n, from, "piece fetch started");
            match source {
                Source::Origin => {
                    self.jobs.spawn(fetch_origin(node.clone(), task.clone(), n, slot));
                }
                Source::Peer { id, addr, relay } => {
                    self.jobs
                        .spawn(fetch_peer(node.clone(), task.clone(), n, (id, addr, relay), slot));
                }
                Source::Wait => {}
            }
        }
        started
    }

    /// Stores a fetched piece and announces it, or handles its failure (a peer is reported; the origin failing
    /// [`ORIGIN_ATTEMPTS`] times in a row ends the download).
    async fn finish_piece(&mut self, fetched: Fetched) -> Result<(), P2pError> {
        let (node, task) = (&self.node, &self.task);
        match fetched {
            Fetched::Ok {
                n,
                data,
                from,
                digest,
                receiving,
            } => {
                self.in_flight.remove(&n);
                tracing::debug!(task = %task.id, piece = n, from = from.as_deref().unwrap_or("origin"), "piece stored");
                let origin = from.is_none();
                let t = task.clone();
                let len = data.len() as u64;
                tokio::task::spawn_blocking(move || t.store_piece(n, &data))
                    .await
                    .map_err(|e| P2pError::Job {
                        what: "a piece write",
                        reason: e.to_string(),
                    })??;
                node.progressed();
                let source = if origin { "origin" } else { "peer" };
                metrics::counter!("wharf_p2p_bytes_total", "source" => source).increment(len);
                if origin {
                    // (Its digest is already in `task.digests`: `fetch_origin` put it there for the relays.)
                    self.origin_failures = 0;
                }
                // Stored: peers read it from the disk from now on.
                drop(receiving);
                let digests = if origin { vec![(n, digest)] } else { vec![] };
                node.announce(task, vec![n], digests, false).await;
            }
            Fetched::Failed {
                n,
                from,
                error,
                corrupt,
                relay,
            } => {
                self.in_flight.remove(&n);
                match from {
                    Some((id, _addr)) if relay && matches!(error, P2pError::PieceUnavailable { .. }) => {
                        // Ended short, or not there (404), or no digest in time: its own source failed, or its fetch had
                        // not started. Nobody to blame; asked for again. (Anything else, a refused or cut connection
                        // above all, is the relay's own failure: reported as usual.)
                        tracing::debug!(task = %task.id, piece = n, peer = %id, error = %error, "relay failed");
                        metrics::counter!("wharf_p2p_relay_failures_total").increment(1);
                    }
                    Some((id, _addr)) => {
                        tracing::debug!(task = %task.id, piece = n, peer = %id, error = %error, "peer failed");
                        if corrupt {
                            self.excluded.insert(id.clone());
                            metrics::counter!("wharf_p2p_bad_pieces_total").increment(1);
                            tracing::warn!(task = %task.id, piece = n, peer = %id, "corrupt piece; peer reported");
                        } else {
                            self.cooling.insert(id.clone(), Instant::now());
                        }
                        let reason = if corrupt {
                            ReportReason::Corrupt
                        } else if matches!(error, P2pError::PeerRefused { .. }) {
                            ReportReason::Refused
                        } else {
                            ReportReason::Unreachable
                        };
                        let report = Report {
                            peer: node.peer.clone(),
                            bad: id,
                            piece: n,
                            reason,
                            digest: None,
                        };
                        node.clients.report(&task.id, &report).await;
                    }
                    None => {
                        self.origin_failures += 1;
                        tracing::warn!(task = %task.id, piece = n, error = %error, "origin fetch failed");
                        if self.origin_failures >= ORIGIN_ATTEMPTS {
                            return Err(error);
                        }
                        tokio::time::sleep(Duration::from_millis(200 * u64::from(self.origin_failures))).await;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A download slot held by a fetch; given back (and the tasks waiting for one told) when the fetch ends.
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    node: Arc<Node>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.node.slot_freed.notify_waiters();
    }
}

async fn fetch_origin(node: Arc<Node>, task: Arc<Task>, n: u32, _slot: Slot) -> Fetched {
    let (start, end) = task.range(n);
    let _slot = node.origin_slots.acquire().await;
    let Some(origin) = &task.origin else {
        return Fetched::Failed {
            n,
            from: None,
            error: P2pError::NoOrigin,
            corrupt: false,
            relay: false,
        };
    };
    // Peers may relay it from here while it arrives: its digest is published when it is whole (they wait for it).
    let receiving = task.receive(n);
    match origin.fetch(start, end, &receiving.incoming).await {
        Ok(data) => {
            let digest = wharf_oci::Digest::sha256_of(&data).hex().to_owned();
            #[cfg(debug_assertions)]
            let digest = super::peer::fault::published_digest(&data, digest);
            if let Ok(mut d) = task.digests.lock()
                && let Some(slot) = d.get_mut(n as usize)
            {
                *slot = Some(digest.clone());
            }
            receiving.incoming.complete();
            // The digest at once (the piece is announced once stored): the peers relaying it wait for it.
            tokio::spawn({
                let (node, task, digest) = (node.clone(), task.clone(), digest.clone());
                async move { node.announce(&task, vec![], vec![(n, digest)], false).await }
            });
            node.download_limit.take(data.len()).await;
            Fetched::Ok {
                n,
                data,
                from: None,
                digest,
                receiving: Some(receiving),
            }
        }
        Err(error) => Fetched::Failed {
            n,
            from: None,
            error,
            corrupt: false,
            relay: false,
        },
    }
}

async fn fetch_peer(node: Arc<Node>, task: Arc<Task>, n: u32, peer: (String, String, bool), _slot: Slot) -> Fetched {
    let (id, addr, relay) = peer;
    let (start, end) = task.range(n);
    // No deadline for the whole piece (a busy peer on a slow link may take long, and that is still progress); the
    // client gives up on a connection that delivers nothing for a while (its read timeout).
    let fail = |error, corrupt| Fetched::Failed {
        n,
        from: Some((id.clone(), addr.clone())),
        error,
        corrupt,
        relay,
    };
    let known = task
        .digests
        .lock()
        .ok()
        .and_then(|d| d.get(n as usize).cloned().flatten());
    // Only a relay of a piece still arriving from the origin may come without one (asked for once it is whole).
    if known.is_none() && !relay {
        return fail(
            P2pError::Peer {
                addr: addr.clone(),
                reason: "piece digest unknown".into(),
            },
            false,
        );
    }
    // Peers may relay it from here while it arrives (dropped on failure: their answers are cut short).
    let receiving = task.receive(n);
    let len = usize::try_from(end - start).unwrap_or(usize::MAX);
    let got = node
        .clients
        .piece(&addr, &task.id, n, len, &receiving.incoming, &node.download_limit)
        .await;
    match got {
        Ok(data) => {
            let expected = match known {
                Some(d) => d,
                None => match node.clients.piece_digest(&task.id, n, DIGEST_WAIT).await {
                    Some(d) => {
                        if let Ok(mut all) = task.digests.lock()
                            && let Some(slot) = all.get_mut(n as usize)
                            && slot.is_none()
                        {
                            *slot = Some(d.clone());
                        }
                        d
                    }
                    None => {
                        return fail(
                            P2pError::PieceUnavailable {
                                addr: addr.clone(),
                                reason: "the relayed piece's digest was not published in time".into(),
                            },
                            false,
                        );
                    }
                },
            };
            if data.len() != len || wharf_oci::Digest::sha256_of(&data).hex() != expected {
                return fail(
                    P2pError::BadPiece {
                        task: task.id.clone(),
                        piece: n,
                    },
                    true,
                );
            }
            receiving.incoming.complete();
            Fetched::Ok {
                n,
                data,
                from: Some(id),
                digest: expected,
                receiving: Some(receiving),
            }
        }
        Err(error) => fail(error, false),
    }
}

/// The whole content against the task's digest (blob tasks; a URL task without `--digest` has none).
async fn verify(task: &Arc<Task>) -> Result<(), P2pError> {
    let Some(want) = task.expected.clone() else {
        return Ok(());
    };
    let t = task.clone();
    let algorithm = want.algorithm();
    let computed = tokio::task::spawn_blocking(move || -> Result<wharf_oci::Digest, P2pError> {
        let mut hasher = wharf_oci::DigestHasher::new(algorithm);
        for n in 0..t.pieces {
            let data = t.read_piece(n).map_err(|source| P2pError::Io {
                path: t.dir.join("data"),
                source,
            })?;
            hasher.update(&data);
        }
        Ok(hasher.finish())
    })
    .await
    .map_err(|e| P2pError::Job {
        what: "the whole-content check",
        reason: e.to_string(),
    })??;
    if computed != want {
        return Err(P2pError::BadContent {
            task: task.id.clone(),
            computed: computed.to_string(),
        });
    }
    Ok(())
}
