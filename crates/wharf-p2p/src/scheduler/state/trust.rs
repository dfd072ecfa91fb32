//! What the scheduler believes of its members, and why: a member is trusted with no more than its role.
//!
//! - **Piece digests** come from the piece's live origin-lease holder (the scheduler chose it; the digest is of what
//!   the origin sent it), or, for a registry blob (`sha256:` task, whose bytes every node checks against the task id
//!   before they reach an engine), from a node announcing it holds the whole blob verified, into a swarm that knows no
//!   digest yet (a restarted node serving its cache to a new scheduler). Anybody else's digests are ignored, so
//!   nobody can overwrite or pre-empt a digest; `have` claims count only where a digest lets the receiver check the
//!   bytes.
//! - **Cross-check.** A node whose whole content fails its digest fetches everything again from the origin, and
//!   reports each piece whose published digest differs from the origin's bytes ([`ReportReason::Forged`]). The
//!   digest is withdrawn (with its holders) into a [`Dispute`]; the next lease holder, neither the publisher nor the
//!   reporter, fetches the piece from the origin, and its digest decides: the publisher lied (excluded) or the
//!   reporter did (excluded).
//! - **Reports** bind to a transfer the scheduler arranged (the reported peer was the reporter's source of that
//!   piece); a corrupt report makes a peer suspect for [`Policy::suspect_for`], and [`Policy::corrupt_reporters`]
//!   different reporters within [`Policy::report_window`] exclude it for [`Policy::exclude_for`].
//! - **Ids** are bound to their address while the peer lives ([`StateError::IdTaken`]); the HTTP layer binds the
//!   address to the connection's source.

use std::collections::HashSet;
use std::time::Instant;

use super::{Key, MAX_EXCLUDED, MAX_ID_LEN, PeerEntry, Policy, State, StateError, Swarm, check_peer, lease_live};
use crate::proto::{Announce, Report, ReportReason};

/// A withdrawn digest, until the next lease holder's digest says who was wrong.
#[derive(Debug)]
pub(super) struct Dispute {
    /// Who published the withdrawn digest (if still known).
    pub(super) publisher: Option<String>,
    pub(super) reporter: String,
    pub(super) withdrawn: String,
    pub(super) claimed: String,
}

impl Dispute {
    /// Neither party may settle it.
    pub(super) fn involves(&self, id: &str) -> bool {
        self.reporter == id || self.publisher.as_deref() == Some(id)
    }

    /// Who was wrong, given the digest an independent lease holder got from the origin.
    fn verdict(self, digest: &str) -> Option<(String, &'static str)> {
        if digest == self.withdrawn {
            Some((self.reporter, "reported a true piece digest as forged"))
        } else if digest == self.claimed {
            self.publisher.map(|id| (id, "published a false piece digest"))
        } else {
            None
        }
    }
}

/// What an announcement's digests come to.
pub(super) struct Verdict {
    /// Pieces whose digest, by the announcer's own account, is not the one the swarm accepts: not a source of them.
    pub(super) conflicting: HashSet<u32>,
    /// Members to exclude, and why.
    pub(super) exclude: Vec<(String, &'static str)>,
}

/// Takes the digests of announcement `a` by `me` that its role allows (see the module documentation).
pub(super) fn accept_digests(
    swarm: &mut Swarm,
    peers: &[Option<PeerEntry>],
    task: &str,
    me: Key,
    a: &Announce,
    now: Instant,
    policy: &Policy,
) -> Verdict {
    let mut v = Verdict {
        conflicting: HashSet::new(),
        exclude: Vec::new(),
    };
    let whole_blob = a.done
        && task.starts_with("sha256:")
        && swarm
            .pieces
            .iter()
            .all(|ps| ps.digest.is_none() && ps.dispute.is_none());
    for (p, d) in &a.digests {
        let ps = &mut swarm.pieces[*p as usize];
        let leased = ps
            .lease
            .is_some_and(|l| l.peer == me && lease_live(&l, peers, now, policy));
        match &ps.digest {
            Some(known) if known == d => {}
            Some(known) => {
                tracing::warn!(task, peer = %a.peer.id, piece = p, known, announced = %d,
                    "piece digest disagrees with the accepted one; ignored");
                v.conflicting.insert(*p);
            }
            None if leased || whole_blob => {
                ps.digest = Some(d.clone());
                ps.by = Some(me);
                if let Some(dispute) = ps.dispute.take()
                    && let Some(guilty) = dispute.verdict(d)
                {
                    v.exclude.push(guilty);
                }
            }
            None => {
                tracing::debug!(task, peer = %a.peer.id, piece = p, "digest from a node without the piece's lease; ignored");
            }
        }
    }
    v
}

impl State {
    /// Excludes `id` for [`Policy::exclude_for`]: never a source, its announcements ignored.
    pub(super) fn exclude(&mut self, id: &str, now: Instant, task: &str, why: &str) {
        if self.excluded.len() >= MAX_EXCLUDED && !self.excluded.contains_key(id) {
            tracing::warn!(peer = %id, "the excluded list is full; excluded while it is known only");
        } else {
            self.excluded.insert(id.to_owned(), now + self.policy.exclude_for);
        }
        if let Some(&k) = self.ids.get(id)
            && let Some(e) = self.peers[k as usize].as_mut()
        {
            e.excluded = true;
        }
        tracing::warn!(task, peer = %id, why, "peer excluded");
    }

    /// Ends the exclusions that are over.
    pub(super) fn lift_exclusions(&mut self, now: Instant) {
        let (ids, peers) = (&self.ids, &mut self.peers);
        self.excluded.retain(|id, until| {
            let keep = now < *until;
            if !keep
                && let Some(&k) = ids.get(id)
                && let Some(e) = peers[k as usize].as_mut()
            {
                e.excluded = false;
                e.corrupt_reports.clear();
            }
            keep
        });
    }

    /// A member reports a peer it was sent to (`corrupt`, `refused`, `unreachable`), or a false digest (`forged`).
    ///
    /// A peer report counts only for a transfer the scheduler arranged from that peer to the reporter. `corrupt`
    /// makes the peer suspect for [`Policy::suspect_for`], and excludes it once [`Policy::corrupt_reporters`]
    /// members reported it within [`Policy::report_window`]; `unreachable` makes it suspect, and after
    /// [`Policy::unreachable_reports`] reports, or one `refused`, it counts as gone meanwhile: its leases are void and
    /// its pieces fetched again (from the origin if nobody else holds them).
    pub fn report(&mut self, task: &str, r: &Report, now: Instant) -> Result<(), StateError> {
        check_peer(&r.peer)?;
        if r.reason == ReportReason::Forged {
            let reporter = self.touch(&r.peer, now)?;
            return self.dispute(task, reporter, r);
        }
        if r.bad.is_empty() || r.bad.len() > MAX_ID_LEN {
            return Err(StateError::BadPeer(format!("id {:?}", r.bad)));
        }
        let reporter = self.touch(&r.peer, now)?;
        let source = match self.swarms.get_mut(task) {
            Some(swarm) => swarm.end_transfer(reporter, r.piece, &mut self.peers),
            None => None,
        };
        let Some(bad) = source.filter(|&k| self.ids.get(&r.bad) == Some(&k)) else {
            tracing::debug!(task, peer = %r.bad, reporter = %r.peer.id, piece = r.piece,
                "report of a transfer the scheduler did not arrange; ignored");
            return Ok(());
        };
        let policy = &self.policy;
        let e = self.peers[bad as usize].as_mut().expect("a key names a live slot");
        e.suspect_until = Some(now + policy.suspect_for);
        if r.reason == ReportReason::Corrupt {
            e.corrupt_reports
                .retain(|(_, at)| now.saturating_duration_since(*at) < policy.report_window);
            if !e.corrupt_reports.iter().any(|(id, _)| *id == r.peer.id) {
                e.corrupt_reports.push((r.peer.id.clone(), now));
            }
            tracing::warn!(task, peer = %r.bad, piece = r.piece, reporter = %r.peer.id,
                reporters = e.corrupt_reports.len(), "peer reported for a corrupt piece");
            if e.corrupt_reports.len() >= policy.corrupt_reporters.max(1) {
                let id = e.peer.id.clone();
                self.exclude(&id, now, task, "corrupt pieces, by several reporters");
            }
            return Ok(());
        }
        if e.last_report
            .is_none_or(|last| now.saturating_duration_since(last) >= policy.peer_ttl)
        {
            e.reports = 0;
        }
        e.reports += 1;
        if r.reason == ReportReason::Refused {
            // Nothing listens there: gone, not congested.
            e.reports = e.reports.max(policy.unreachable_reports);
        }
        e.last_report = Some(now);
        tracing::info!(task, peer = %r.bad, reporter = %r.peer.id, reports = e.reports, "peer reported unreachable");
        Ok(())
    }

    /// A `forged` report: the reporter, a member of the swarm, has piece `r.piece` as the origin sent it, and its
    /// digest is not the one published. The digest and its holders are withdrawn until an independent lease holder's digest decides.
    fn dispute(&mut self, task: &str, reporter: Key, r: &Report) -> Result<(), StateError> {
        let Some(claimed) = r.digest.as_deref().filter(|d| crate::proto::is_sha256_hex(d)) else {
            return Err(StateError::Invalid(
                "a forged report needs the piece's SHA-256 as the origin sent it".into(),
            ));
        };
        let Some(swarm) = self.swarms.get_mut(task) else {
            return Ok(());
        };
        if r.piece >= swarm.count() {
            return Err(StateError::PieceOutOfRange {
                piece: r.piece,
                pieces: swarm.count(),
            });
        }
        // (It is a member: it announced its pieces, this one among them, which the disputed digest kept from
        // counting as held.)
        let member = swarm.members.contains_key(&reporter);
        let ps = &mut swarm.pieces[r.piece as usize];
        let Some(withdrawn) = ps.digest.clone() else {
            return Ok(());
        };
        if !member || withdrawn == claimed || ps.dispute.is_some() || ps.by == Some(reporter) {
            tracing::debug!(task, reporter = %r.peer.id, piece = r.piece, "forged report without grounds; ignored");
            return Ok(());
        }
        // One open dispute per reporter and swarm: a member cannot withdraw every digest at once (each costs an
        // origin fetch) before the first verdict on its word.
        if swarm
            .pieces
            .iter()
            .any(|p| p.dispute.as_ref().is_some_and(|d| d.reporter == r.peer.id))
        {
            tracing::debug!(task, reporter = %r.peer.id, piece = r.piece, "a dispute of this reporter is open; report ignored");
            return Ok(());
        }
        let ps = &mut swarm.pieces[r.piece as usize];
        let publisher = ps
            .by
            .and_then(|k| self.peers[k as usize].as_ref())
            .map(|e| e.peer.id.clone());
        tracing::warn!(task, piece = r.piece, reporter = %r.peer.id, publisher = publisher.as_deref().unwrap_or("?"),
            withdrawn, claimed, "piece digest disputed: withdrawn until the origin decides");
        ps.digest = None;
        ps.by = None;
        ps.dispute = Some(Box::new(Dispute {
            publisher,
            reporter: r.peer.id.clone(),
            withdrawn,
            claimed: claimed.to_owned(),
        }));
        for k in std::mem::take(&mut ps.holders) {
            if let Some(m) = swarm.members.get_mut(&k) {
                m.clear(r.piece);
            }
        }
        Ok(())
    }
}
