//! The scheduler's state machine: pure, synchronous, no I/O; the caller passes the time in, so tests move the clock.
//!
//! What it knows is soft: peers (by id, with when they were last heard from and how many transfers they are
//! serving), and per task (swarm) which member holds which piece, each piece's SHA-256 (published by its origin-lease
//! holder: see [`trust`] for who is believed about what), its origin lease, and the transfers in flight. Everything is learnt again from announcements after a
//! restart or a failover.
//!
//! Policy ([`State::schedule`]), for the pieces a node wants (at most [`ScheduleRequest::slots`] transfers started):
//! - a piece some usable peer holds (usable: alive, not excluded, not reported unreachable in the last
//!   [`Policy::suspect_for`], not the requester; and the piece's digest is known, so its bytes can be checked), or
//!   receives right now (a relay, [`Policy::relay`]: the piece's lease holder, or a node receiving it from a peer
//!   through a chain that reaches a holder or the lease holder; its digest is asked for once the piece is whole)
//!   comes from a peer: repeatedly, the holder with the fewest transfers in flight (ties: the requester's rack, then
//!   non-seeds, then a per-requester hash) serves its rarest wanted piece (ties in a per-requester order, so
//!   concurrent requesters spread over different pieces), while it has fewer than [`Policy::max_uploads_per_peer`]
//!   transfers in flight over all swarms. Choosing the holder before the piece keeps every requester from
//!   converging on the few holders of the rarest pieces; the cap makes a new holder's copy whole, and passed on,
//!   in a few piece-times instead of every requester crawling in at once;
//! - a piece leased to someone else, or held only by peers that are suspect for now, waits;
//! - any other piece gets the origin lease, within the requester's cap of live leases in that swarm,
//!   `clamp(pieces / lease_spread, 1, max_leases_per_peer)`, its free origin slots, and
//!   [`Policy::max_origin_leases`] over every swarm of the same origin (the origin's link is the scarce one);
//!   else it waits.
//!
//! A transfer is in flight from its assignment until the requester announces the piece, asks for it again, reports
//! it, leaves the swarm, or [`Policy::transfer_ttl`] passes; when a node asks again for a piece, the transfers it
//! relayed of it are over too (its own broke). A lease is live while it is younger than
//! [`Policy::lease_ttl`] and its holder is usable; the holder's announcement of the piece ends it. Peers not heard
//! from for [`Policy::peer_ttl`] are dead (never assigned, leases void); [`State::sweep`] forgets them after
//! [`Policy::forget_after`], and swarms left without members. The HTTP layer ([`super::api`]) may hold a request
//! that got only waits until the swarm changes (a long poll); [`State::announce`] names the other swarms a freed
//! holder can now serve.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::piece::{self, PieceSet};

mod trust;

use crate::proto::{
    self, Announce, Assignment, Peer, PeerInfo, Preheat, PreheatBlob, ScheduleRequest, ScheduleResponse, Source,
    SwarmInfo, Swarms, TaskShape,
};

/// Most pieces a task may have (a shape with more is refused: it would only cost memory). Nodes aim at ~1000; pieces
/// of 64 MiB reach this at 1 TiB.
pub const MAX_PIECES: u32 = 1 << 14;
/// Most pieces over all swarms: a bound on the state's memory whatever members announce (a piece's state is ~80 bytes,
/// ~200 with its digest and a few holders: at most a few hundred MiB). A new swarm that would pass it is refused until sweeps make room.
pub const MAX_TOTAL_PIECES: usize = 1 << 21;
/// Most peers known at once (silent ones are forgotten by the sweeper).
pub const MAX_PEERS: usize = 100_000;
/// Most excluded peer ids remembered.
pub const MAX_EXCLUDED: usize = 100_000;
/// Most blobs the preheat queue keeps (the oldest go first).
pub const MAX_PREHEAT: usize = 10_000;
const MAX_ID_LEN: usize = 256;
const MAX_ADDR_LEN: usize = 1024;

/// The numbers of the scheduling policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// A peer not heard from (schedule or announce) for this long is dead: not assigned, its leases void.
    pub peer_ttl: Duration,
    /// An origin lease not ended by an announcement expires after this long, and the piece is leased again.
    pub lease_ttl: Duration,
    /// A transfer from a peer not announced by its requester counts in that peer's load for this long.
    pub transfer_ttl: Duration,
    /// Most live origin leases one peer holds in one swarm.
    pub max_leases_per_peer: u32,
    /// The lease cap is also at most `pieces / lease_spread` (at least 1), so a small task's origin fetches are
    /// spread over about `lease_spread` nodes.
    pub lease_spread: u32,
    /// Most live origin leases, whoever holds them, over all the swarms of one origin (the `origin` their nodes
    /// name; a swarm whose nodes name none is an origin of its own): the origin's link is the scarce one, and a few
    /// pieces at its full rate spread through the peers faster than many at a crawl.
    pub max_origin_leases: u32,
    /// Most transfers one peer serves at once, over all swarms: a holder at the cap is not assigned (the piece
    /// waits for a free one), so each transfer gets a fair share of its link and a new piece is whole, and can be
    /// passed on, in a few piece-times rather than after every requester's share crawled in together.
    pub max_uploads_per_peer: u32,
    /// Most assignments in one answer.
    pub max_assignments: usize,
    /// A node receiving a piece from a peer is a source of it too, a relay ([`Source::Peer::relay`]): it passes
    /// the bytes on as they arrive, so a new piece reaches every node in about one piece-time instead of one per
    /// hop.
    pub relay: bool,
    /// A peer reported unreachable is not assigned for this long.
    pub suspect_for: Duration,
    /// Reports (within one suspicion) after which a peer's pieces no longer count as held: they are fetched from
    /// the origin again rather than waited for.
    pub unreachable_reports: u32,
    /// [`State::sweep`] forgets peers not heard from for this long, and swarms without members idle as long.
    pub forget_after: Duration,
    /// A peer is excluded (never a source, its announcements ignored) once this many different members reported it
    /// for a corrupt piece within [`Policy::report_window`], each report backed by a transfer the scheduler
    /// arranged from it; fewer reports only make it suspect for [`Policy::suspect_for`].
    pub corrupt_reporters: usize,
    /// How long a corrupt report counts.
    pub report_window: Duration,
    /// How long an exclusion lasts.
    pub exclude_for: Duration,
    /// Preheat requests are dropped after this long.
    pub preheat_ttl: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            peer_ttl: Duration::from_secs(20),
            lease_ttl: Duration::from_secs(60),
            transfer_ttl: Duration::from_secs(20),
            max_leases_per_peer: 8,
            lease_spread: 8,
            max_origin_leases: 4,
            max_uploads_per_peer: 4,
            max_assignments: 32,
            relay: true,
            suspect_for: Duration::from_secs(10),
            unreachable_reports: 3,
            forget_after: Duration::from_secs(600),
            corrupt_reporters: 2,
            report_window: Duration::from_secs(600),
            exclude_for: Duration::from_secs(3600),
            preheat_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("{task}: shape {got:?} disagrees with the swarm's {have:?}")]
    ShapeMismatch {
        task: String,
        have: TaskShape,
        got: TaskShape,
    },
    #[error("invalid shape {0:?}")]
    BadShape(TaskShape),
    #[error("piece {piece} out of range: the task has {pieces} pieces")]
    PieceOutOfRange { piece: u32, pieces: u32 },
    #[error("invalid peer: {0}")]
    BadPeer(String),
    #[error("{0}")]
    Invalid(String),
    /// Another live peer has this id at another address.
    #[error("peer id {id:?} belongs to a live peer at {addr}")]
    IdTaken { id: String, addr: String },
    /// A bound on the scheduler's memory was reached: try again later.
    #[error("the scheduler holds as many {0} as it may; try again later")]
    Full(&'static str),
}

impl StateError {
    /// The request contradicts the state (HTTP 409) rather than being malformed (400).
    pub fn is_conflict(&self) -> bool {
        matches!(self, StateError::ShapeMismatch { .. } | StateError::IdTaken { .. })
    }

    /// The scheduler is at a bound (HTTP 503) rather than the request being wrong.
    pub fn is_full(&self) -> bool {
        matches!(self, StateError::Full(_))
    }
}

/// Counts for the gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub tasks: usize,
    pub live_peers: usize,
}

/// Index of a peer in [`State::peers`]; reused only after the peer left every swarm.
type Key = u32;

#[derive(Debug)]
struct PeerEntry {
    peer: Peer,
    last_seen: Instant,
    /// Reported unreachable: not assigned until then (a peer that talks to the scheduler may still be unreachable
    /// from its peers; and on a congested network a connection may just have timed out).
    suspect_until: Option<Instant>,
    /// Unreachable reports, counted since the first one less than [`Policy::peer_ttl`] after the one before; at
    /// [`Policy::unreachable_reports`] its pieces no longer count as held while it is suspect (they go back to the
    /// origin).
    reports: u32,
    last_report: Option<Instant>,
    /// Reported for corrupt pieces by [`Policy::corrupt_reporters`] members, or found to have published a false
    /// digest: not a source, its announcements ignored, while [`State::excluded`] names it.
    excluded: bool,
    /// Its recent corrupt reports: (reporter id, when), at most one per reporter.
    corrupt_reports: Vec<(String, Instant)>,
    /// Transfers it serves (assigned, not yet announced by their requester).
    inflight: u32,
    /// Transfers from peers it receives (assigned to it, not yet announced).
    downloads: u32,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    peer: Key,
    since: Instant,
}

#[derive(Debug, Default)]
struct PieceState {
    holders: Vec<Key>,
    /// Its SHA-256, as published by `by` (see [`trust`]: a lease holder, or a node done with a blob).
    digest: Option<String>,
    by: Option<Key>,
    lease: Option<Lease>,
    /// A member that fetched the piece from the origin found other bytes than `digest` says: the digest was
    /// withdrawn and the next lease holder's decides who was wrong.
    dispute: Option<Box<trust::Dispute>>,
}

#[derive(Debug)]
struct Member {
    /// The pieces it holds.
    have: PieceSet,
    done: bool,
}

impl Member {
    fn new(pieces: u32) -> Self {
        Member {
            have: PieceSet::new(pieces),
            done: false,
        }
    }

    fn has(&self, p: u32) -> bool {
        self.have.contains(p)
    }

    /// Returns whether it was new.
    fn set(&mut self, p: u32) -> bool {
        self.have.insert(p)
    }

    fn clear(&mut self, p: u32) {
        if self.have.remove(p) {
            self.done = false;
        }
    }

    fn pieces(&self) -> impl Iterator<Item = u32> + '_ {
        self.have.iter()
    }

    fn held(&self) -> u32 {
        self.have.len()
    }
}

#[derive(Debug)]
struct Swarm {
    shape: TaskShape,
    /// What its nodes fetch from (the first `origin` a request named): the group its origin leases count in.
    origin: Option<String>,
    /// Pieces with a lease set (live or not): swarms without any are skipped when leases are counted.
    leases: u32,
    pieces: Vec<PieceState>,
    members: HashMap<Key, Member>,
    /// Transfers in flight: (requester, piece) → (source, since).
    inflight: HashMap<(Key, u32), (Key, Instant)>,
    last_active: Instant,
}

/// A transfer from `source` to `requester` is over.
fn release(peers: &mut [Option<PeerEntry>], requester: Key, source: Key) {
    if let Some(e) = peers[source as usize].as_mut() {
        e.inflight = e.inflight.saturating_sub(1);
    }
    if let Some(e) = peers[requester as usize].as_mut() {
        e.downloads = e.downloads.saturating_sub(1);
    }
}

impl Swarm {
    fn new(shape: TaskShape, now: Instant) -> Self {
        let n = piece::count(shape.size, shape.piece_len);
        Swarm {
            shape,
            origin: None,
            leases: 0,
            pieces: (0..n).map(|_| PieceState::default()).collect(),
            members: HashMap::new(),
            inflight: HashMap::new(),
            last_active: now,
        }
    }

    fn count(&self) -> u32 {
        self.pieces.len() as u32
    }

    fn member(&mut self, key: Key) -> &mut Member {
        let n = self.count();
        self.members.entry(key).or_insert_with(|| Member::new(n))
    }

    /// Records that `key` holds `p`, ending its lease on it and its transfer of it (returns the transfer's source).
    fn add_holder(&mut self, key: Key, p: u32, peers: &mut [Option<PeerEntry>]) -> Option<Key> {
        if self.member(key).set(p) {
            self.pieces[p as usize].holders.push(key);
        }
        let source = self.end_transfer(key, p, peers);
        let ps = &mut self.pieces[p as usize];
        if ps.lease.is_some_and(|l| l.peer == key) {
            ps.lease = None;
            self.leases -= 1;
        }
        source
    }

    fn remove_holder(&mut self, key: Key, p: u32) {
        if let Some(m) = self.members.get_mut(&key)
            && m.has(p)
        {
            m.clear(p);
            self.pieces[p as usize].holders.retain(|k| *k != key);
        }
    }

    /// Ends `requester`'s transfer of `p`, if any; returns its source.
    fn end_transfer(&mut self, requester: Key, p: u32, peers: &mut [Option<PeerEntry>]) -> Option<Key> {
        let (source, _) = self.inflight.remove(&(requester, p))?;
        release(peers, requester, source);
        Some(source)
    }

    /// Ends the transfers `keep` refuses.
    fn end_transfers(&mut self, peers: &mut [Option<PeerEntry>], mut keep: impl FnMut(Key, u32, Key, Instant) -> bool) {
        self.inflight.retain(|&(requester, p), &mut (source, since)| {
            let kept = keep(requester, p, source, since);
            if !kept {
                release(peers, requester, source);
            }
            kept
        });
    }

    /// Forgets everything `key` held or leased here, and the transfers it served or received.
    fn remove_member(&mut self, key: Key, peers: &mut [Option<PeerEntry>]) {
        self.end_transfers(peers, |requester, _, source, _| requester != key && source != key);
        if let Some(m) = self.members.remove(&key) {
            for p in m.pieces() {
                self.pieces[p as usize].holders.retain(|k| *k != key);
            }
        }
        for ps in &mut self.pieces {
            if ps.lease.is_some_and(|l| l.peer == key) {
                ps.lease = None;
                self.leases -= 1;
            }
            if ps.by == Some(key) {
                // (The digest stays: the key may be reused by another peer.)
                ps.by = None;
            }
        }
    }
}

#[derive(Debug)]
struct PreheatEntry {
    blob: PreheatBlob,
    added: Instant,
    done_by: HashSet<String>,
}

/// The whole scheduler state. See the module documentation for the policy.
#[derive(Debug)]
pub struct State {
    policy: Policy,
    peers: Vec<Option<PeerEntry>>,
    free: Vec<Key>,
    ids: HashMap<String, Key>,
    /// Excluded ids (see [`PeerEntry::excluded`]) and until when, kept when their entry is swept.
    excluded: HashMap<String, Instant>,
    swarms: HashMap<String, Swarm>,
    /// Pieces over all swarms (see [`MAX_TOTAL_PIECES`]).
    pieces_allocated: usize,
    preheat: Vec<PreheatEntry>,
}

fn check_shape(shape: &TaskShape) -> Result<u32, StateError> {
    let n = shape.size.div_ceil(shape.piece_len.max(1));
    if shape.piece_len < piece::MIN_PIECE || n > u64::from(MAX_PIECES) {
        return Err(StateError::BadShape(shape.clone()));
    }
    Ok(n as u32)
}

fn check_pieces(pieces: impl IntoIterator<Item = u32>, n: u32) -> Result<(), StateError> {
    match pieces.into_iter().find(|p| *p >= n) {
        Some(piece) => Err(StateError::PieceOutOfRange { piece, pieces: n }),
        None => Ok(()),
    }
}

fn check_peer(peer: &Peer) -> Result<(), StateError> {
    let text_ok = |s: &str, max: usize| !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control);
    if !text_ok(&peer.id, MAX_ID_LEN) {
        return Err(StateError::BadPeer(format!("id {:?}", peer.id)));
    }
    if !text_ok(&peer.addr, MAX_ADDR_LEN) || !is_peer_address(&peer.addr) {
        return Err(StateError::BadPeer(format!(
            "{}: address {:?} is not http(s)://host:port",
            peer.id, peer.addr
        )));
    }
    if let Some(rack) = &peer.rack
        && !text_ok(rack, MAX_ID_LEN)
    {
        return Err(StateError::BadPeer(format!("{}: rack {rack:?}", peer.id)));
    }
    Ok(())
}

/// See [`proto::peer_host_port`].
fn is_peer_address(addr: &str) -> bool {
    proto::peer_host_port(addr).is_some()
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn mix(a: u64, b: u64) -> u64 {
    splitmix(a ^ splitmix(b))
}

impl PeerEntry {
    fn suspect(&self, now: Instant) -> bool {
        self.suspect_until.is_some_and(|until| now < until)
    }

    fn alive(&self, now: Instant, ttl: Duration) -> bool {
        !self.excluded && now.saturating_duration_since(self.last_seen) < ttl
    }

    /// May be assigned as a source.
    fn usable(&self, now: Instant, ttl: Duration) -> bool {
        self.alive(now, ttl) && !self.suspect(now)
    }

    /// Reported unreachable often enough (or refused), or reported corrupt, so it counts as gone while the
    /// suspicion lasts: its pieces are not waited for.
    fn gone(&self, now: Instant, policy: &Policy) -> bool {
        self.suspect(now) && (self.reports >= policy.unreachable_reports || !self.corrupt_reports.is_empty())
    }

    /// `id` reported it corrupt within the report window: it is never `id`'s source meanwhile (one member's word
    /// binds that member; it takes [`Policy::corrupt_reporters`] to bind everyone).
    fn reported_by(&self, id: &str, now: Instant, policy: &Policy) -> bool {
        self.corrupt_reports
            .iter()
            .any(|(by, at)| by == id && now.saturating_duration_since(*at) < policy.report_window)
    }

    /// Its pieces count as held when deciding whether the origin must serve one (else the piece waits for it).
    fn holds(&self, now: Instant, policy: &Policy) -> bool {
        self.alive(now, policy.peer_ttl) && !self.gone(now, policy)
    }
}

fn usable(peers: &[Option<PeerEntry>], key: Key, now: Instant, ttl: Duration) -> bool {
    peers[key as usize].as_ref().is_some_and(|e| e.usable(now, ttl))
}

/// Whether `key` speaks relays ([`Peer::relays`]): may be sent to one, and be one.
fn speaks(peers: &[Option<PeerEntry>], key: Key) -> bool {
    peers[key as usize].as_ref().is_some_and(|e| e.peer.relays)
}

/// A lease holds while its holder is alive (talks to the scheduler) and not reported gone; a mere suspicion of
/// being unreachable does not end it: it fetches from the origin, not from its peers.
fn lease_live(lease: &Lease, peers: &[Option<PeerEntry>], now: Instant, policy: &Policy) -> bool {
    now.saturating_duration_since(lease.since) < policy.lease_ttl
        && peers[lease.peer as usize]
            .as_ref()
            .is_some_and(|e| e.holds(now, policy))
}

/// Who may serve one wanted piece to the requester: peers that hold it, and relays (`true`) receiving it.
type Sources = Vec<(Key, bool)>;

/// Each wanted piece's way to the requester, before the caps: under each peer that can serve it (with the number
/// of its sources, for rarest-first, a tie-break and whether that peer relays it), from the origin, or not yet.
struct Candidates {
    by_holder: HashMap<Key, Vec<(usize, u64, u32, bool)>>,
    origin: Vec<(u64, u32)>,
    waits: Vec<u32>,
}

/// What limits new origin leases beyond the requester's own cap: how many it says it can start now, and the live
/// leases on its origin over all swarms.
struct LeaseRoom {
    new_allowed: u32,
    origin_live: u32,
}

/// One schedule request against one swarm: the requester, the clock, and the parts of the state it changes.
struct Round<'a> {
    me: Key,
    now: Instant,
    policy: &'a Policy,
    peers: &'a mut [Option<PeerEntry>],
    swarm: &'a mut Swarm,
}

impl Round<'_> {
    fn usable(&self, k: Key) -> bool {
        usable(self.peers, k, self.now, self.policy.peer_ttl)
    }

    /// `id` reported `k` corrupt lately.
    fn reported_by(&self, k: Key, id: &str) -> bool {
        self.peers[k as usize]
            .as_ref()
            .is_some_and(|e| e.reported_by(id, self.now, self.policy))
    }

    fn lease_live(&self, l: &Lease) -> bool {
        lease_live(l, self.peers, self.now, self.policy)
    }

    /// It needs these pieces, so it neither receives them (whatever it was assigned before) nor relays them: a
    /// transfer it served as a relay broke with its own.
    fn end_replaced_transfers(&mut self, wanted: &PieceSet) {
        let me = self.me;
        self.swarm.end_transfers(self.peers, |requester, p, source, _| {
            !(wanted.contains(p) && (requester == me || source == me))
        });
    }

    /// Who receives each wanted piece from a peer and may relay it: those whose bytes come from somewhere, i.e. whose
    /// source (usable) holds the piece, fetches it from the origin, or is such a relay itself. (A chain whose root is
    /// gone would otherwise pass nothing around in a circle, and keep the piece from being leased again.) Relays
    /// only between nodes that speak them ([`Peer::relays`]); none when the policy turns them off.
    fn rooted_relays(&self, wanted: &PieceSet) -> HashMap<u32, Vec<Key>> {
        let mut receivers: HashMap<u32, Vec<Key>> = HashMap::new();
        if !(self.policy.relay && speaks(self.peers, self.me)) {
            return receivers;
        }
        let mut edges: HashMap<u32, Vec<(Key, Key)>> = HashMap::new();
        for (&(r, p), &(source, _)) in &self.swarm.inflight {
            if wanted.contains(p) && self.usable(r) && self.usable(source) {
                edges.entry(p).or_default().push((r, source));
            }
        }
        for (p, edges) in edges {
            let ps = &self.swarm.pieces[p as usize];
            let leased_to = ps.lease.filter(|l| self.lease_live(l)).map(|l| l.peer);
            let is_root = |k: Key| leased_to == Some(k) || self.swarm.members.get(&k).is_some_and(|m| m.has(p));
            // Walk down from the roots (each receiver has one source, so each is reached at most once).
            let mut fed: HashMap<Key, Vec<Key>> = HashMap::new();
            for &(r, source) in &edges {
                fed.entry(source).or_default().push(r);
            }
            let mut todo: Vec<Key> = fed.keys().copied().filter(|&k| is_root(k)).collect();
            let rooted = receivers.entry(p).or_default();
            while let Some(k) = todo.pop() {
                for &r in fed.get(&k).into_iter().flatten() {
                    if !is_root(r) && speaks(self.peers, r) {
                        rooted.push(r);
                        todo.push(r);
                    }
                }
            }
        }
        receivers
    }

    /// Every wanted piece (once) with its candidate sources. Pieces some usable peer holds are listed under each such
    /// holder; pieces nobody usable holds get the origin (under the lease caps), or wait when another node holds its
    /// lease or a suspect peer holds the piece (the origin sends each piece once).
    fn candidates(&mut self, want: &[u32], receivers: &HashMap<u32, Vec<Key>>) -> Candidates {
        let me = self.me;
        let relays = self.policy.relay && speaks(self.peers, me);
        let my_id = self.peers[me as usize]
            .as_ref()
            .map(|e| e.peer.id.clone())
            .unwrap_or_default();
        let mut out = Candidates {
            by_holder: HashMap::new(),
            origin: Vec::new(),
            waits: Vec::new(),
        };
        let mut seen = PieceSet::new(self.swarm.count());
        let mut sources: Sources = Vec::new();
        for &p in want {
            if !seen.insert(p) {
                continue;
            }
            // It needs the piece, so it does not hold it (whatever it said before).
            self.swarm.remove_holder(me, p);
            let ps = &self.swarm.pieces[p as usize];
            let tie = mix(u64::from(me), u64::from(p));
            sources.clear();
            if ps.digest.is_some() {
                sources.extend(
                    ps.holders
                        .iter()
                        .copied()
                        .filter(|&k| k != me && self.usable(k) && !self.reported_by(k, &my_id))
                        .map(|k| (k, false)),
                );
            }
            // Relays: whoever receives it from a peer, and the node fetching it from the origin. Their bytes are
            // checked too: a requester without the digest yet asks for it once the piece is whole (the lease
            // holder publishes it then), and a relay hands out its last bytes only after that check.
            sources.extend(receivers.get(&p).into_iter().flatten().map(|&k| (k, true)));
            if relays
                && let Some(l) = ps.lease
                && l.peer != me
                && self.lease_live(&l)
                && self.usable(l.peer)
                && speaks(self.peers, l.peer)
                && !sources.iter().any(|&(k, _)| k == l.peer)
            {
                sources.push((l.peer, true));
            }
            if !sources.is_empty() {
                for &(k, relay) in &sources {
                    out.by_holder.entry(k).or_default().push((sources.len(), tie, p, relay));
                }
            } else if ps.lease.is_some_and(|l| l.peer != me && self.lease_live(&l))
                || (ps.digest.is_some()
                    && ps.holders.iter().any(|&k| {
                        k != me
                            && self.peers[k as usize].as_ref().is_some_and(|e| {
                                e.holds(self.now, self.policy) && !e.reported_by(&my_id, self.now, self.policy)
                            })
                    }))
                // A disputed digest is settled by a third node's fetch from the origin.
                || ps.dispute.as_ref().is_some_and(|d| d.involves(&my_id))
            {
                out.waits.push(p);
            } else {
                out.origin.push((tie, p));
            }
        }
        out
    }

    /// Origin leases first: they are the pieces nobody can serve yet. Its own lease (asked again: its fetch failed?)
    /// is renewed; a new one needs room under its cap ([`Policy::lease_spread`], [`Policy::max_leases_per_peer`]),
    /// under what it says it can start, under the origin's cap ([`Policy::max_origin_leases`]) and a free slot. A
    /// lease it could only queue would keep the piece from everyone else: those wait.
    fn grant_leases(
        &mut self,
        mut origin: Vec<(u64, u32)>,
        mut room: LeaseRoom,
        slots: &mut u32,
        assignments: &mut Vec<Assignment>,
        waits: &mut Vec<u32>,
    ) {
        let (me, now, policy) = (self.me, self.now, self.policy);
        let n = self.swarm.count();
        let cap = n
            .div_ceil(policy.lease_spread.max(1))
            .clamp(1, policy.max_leases_per_peer.max(1));
        let mut leased = self
            .swarm
            .pieces
            .iter()
            .filter(|ps| ps.lease.is_some_and(|l| l.peer == me && self.lease_live(&l)))
            .count() as u32;
        origin.sort_unstable();
        for (_, p) in origin {
            let mine = self.swarm.pieces[p as usize]
                .lease
                .is_some_and(|l| l.peer == me && lease_live(&l, self.peers, now, policy));
            let has_room = leased < cap && room.new_allowed > 0 && room.origin_live < policy.max_origin_leases;
            // Its own lease is already counted in what it receives.
            if mine || (has_room && *slots > 0) {
                let ps = &mut self.swarm.pieces[p as usize];
                if ps.lease.is_none() {
                    self.swarm.leases += 1;
                }
                ps.lease = Some(Lease { peer: me, since: now });
                let new = u32::from(!mine);
                leased += new;
                room.new_allowed -= new;
                room.origin_live += new;
                *slots -= new;
                assignments.push(Assignment {
                    piece: p,
                    source: Source::Origin,
                });
            } else {
                waits.push(p);
            }
        }
    }

    /// Then peers: the holder with the fewest transfers in flight serves its rarest wanted piece, again and again,
    /// as long as it has a free upload slot ([`Policy::max_uploads_per_peer`]) and the requester a free slot. Same
    /// rack first, seeds last among equals.
    fn assign_peers(
        &mut self,
        mut by_holder: HashMap<Key, Vec<(usize, u64, u32, bool)>>,
        n: u32,
        slots: &mut u32,
        assignments: &mut Vec<Assignment>,
    ) {
        let me = self.me;
        let me_rack = self.peers[me as usize].as_ref().and_then(|e| e.peer.rack.clone());
        let mut heap = BinaryHeap::with_capacity(by_holder.len());
        for (&k, pieces) in &mut by_holder {
            pieces.sort_unstable_by(|a, b| b.cmp(a)); // rarest last: popped first
            let Some(e) = self.peers[k as usize].as_ref() else {
                continue;
            };
            let same_rack = me_rack.is_some() && e.peer.rack == me_rack;
            let tie = mix(u64::from(me), u64::from(k));
            heap.push(Reverse((e.inflight, !same_rack, e.peer.seed, tie, k)));
        }
        let mut assigned = PieceSet::new(n);
        while *slots > 0
            && let Some(Reverse((load, far, seed, tie, k))) = heap.pop()
        {
            if load >= self.policy.max_uploads_per_peer {
                // The least loaded holder is full: so is every other one.
                break;
            }
            let Some(pieces) = by_holder.get_mut(&k) else {
                continue;
            };
            let Some((p, relay)) = std::iter::from_fn(|| pieces.pop())
                .map(|(_, _, p, relay)| (p, relay))
                .find(|(p, _)| !assigned.contains(*p))
            else {
                continue;
            };
            let Some(e) = self.peers[k as usize].as_mut() else {
                continue;
            };
            assigned.insert(p);
            e.inflight += 1;
            let source = Source::Peer {
                id: e.peer.id.clone(),
                addr: e.peer.addr.clone(),
                relay,
            };
            if let Some(e) = self.peers[me as usize].as_mut() {
                e.downloads += 1;
            }
            self.swarm.inflight.insert((me, p), (k, self.now));
            *slots -= 1;
            assignments.push(Assignment { piece: p, source });
            if !pieces.is_empty() {
                heap.push(Reverse((load + 1, far, seed, tie, k)));
            }
        }
    }
}

impl State {
    pub fn new(policy: Policy) -> Self {
        State {
            policy,
            peers: Vec::new(),
            free: Vec::new(),
            ids: HashMap::new(),
            excluded: HashMap::new(),
            swarms: HashMap::new(),
            pieces_allocated: 0,
            preheat: Vec::new(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn entry(&self, key: Key) -> &PeerEntry {
        self.peers[key as usize].as_ref().expect("a key names a live slot")
    }

    /// Registers the peer or refreshes what is known of it (alive; a suspicion of being unreachable stays: talking to
    /// the scheduler says nothing of whether peers reach it).
    fn touch(&mut self, peer: &Peer, now: Instant) -> Result<Key, StateError> {
        if let Some(&key) = self.ids.get(&peer.id) {
            let ttl = self.policy.peer_ttl;
            let e = self.peers[key as usize].as_mut().expect("a key names a live slot");
            if e.peer.addr != peer.addr && now.saturating_duration_since(e.last_seen) < ttl {
                // An id is its address while it lives: nobody takes over a live peer's traffic by naming it.
                return Err(StateError::IdTaken {
                    id: peer.id.clone(),
                    addr: e.peer.addr.clone(),
                });
            }
            if e.peer != *peer {
                e.peer = peer.clone();
            }
            e.last_seen = now;
            return Ok(key);
        }
        if self.ids.len() >= MAX_PEERS {
            return Err(StateError::Full("peers"));
        }
        let entry = PeerEntry {
            peer: peer.clone(),
            last_seen: now,
            suspect_until: None,
            reports: 0,
            last_report: None,
            excluded: self.excluded.get(&peer.id).is_some_and(|until| now < *until),
            corrupt_reports: Vec::new(),
            inflight: 0,
            downloads: 0,
        };
        let key = match self.free.pop() {
            Some(k) => {
                self.peers[k as usize] = Some(entry);
                k
            }
            None => {
                self.peers.push(Some(entry));
                (self.peers.len() - 1) as Key
            }
        };
        self.ids.insert(peer.id.clone(), key);
        Ok(key)
    }

    /// Makes room for swarm `task` of `shape` if it is new: refused past [`MAX_TOTAL_PIECES`].
    fn admit_swarm(&mut self, task: &str, shape: &TaskShape, now: Instant) -> Result<(), StateError> {
        if self.swarms.contains_key(task) {
            return Ok(());
        }
        let n = piece::count(shape.size, shape.piece_len) as usize;
        if self.pieces_allocated + n > MAX_TOTAL_PIECES {
            return Err(StateError::Full("pieces"));
        }
        self.pieces_allocated += n;
        self.swarms.insert(task.to_owned(), Swarm::new(shape.clone(), now));
        Ok(())
    }

    fn check_swarm_shape(&self, task: &str, shape: &TaskShape) -> Result<(), StateError> {
        match self.swarms.get(task) {
            Some(s) if s.shape != *shape => Err(StateError::ShapeMismatch {
                task: task.to_owned(),
                have: s.shape.clone(),
                got: shape.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// A source for (at most [`Policy::max_assignments`] of) the pieces `req.want`, and every known digest. Pieces
    /// wanted but not in the answer should be asked for again later, like `Wait`.
    ///
    /// In phases, each a function of [`Round`]: the requester joins the swarm; the transfers it no longer receives
    /// end; the relays whose chain reaches a holder are found; each wanted piece gets its candidate sources (peers,
    /// relays, the origin, or wait); origin leases are granted within the caps; then peers are assigned, the least
    /// loaded holder first; what is left waits.
    pub fn schedule(
        &mut self,
        task: &str,
        req: &ScheduleRequest,
        now: Instant,
    ) -> Result<ScheduleResponse, StateError> {
        let n = self.check_schedule(task, req)?;
        let me = self.touch(&req.peer, now)?;
        self.admit_swarm(task, &req.shape, now)?;
        let Some(swarm) = self.swarms.get_mut(task) else {
            return Err(StateError::Invalid(format!("{task}: swarm vanished")));
        };
        if swarm.origin.is_none() {
            swarm.origin.clone_from(&req.origin);
        }
        let group = swarm.origin.clone().unwrap_or_else(|| task.to_owned());
        // Live origin leases over the origin's swarms (this one included), for the per-origin cap; and the
        // requester's own over all swarms, which take its download slots.
        // (A swarm without an origin is the group of its name.)
        let origin_live = self.live_leases(now, |name, s, _| s.origin.as_deref().unwrap_or(name) == group);
        let my_leases = self.live_leases(now, |_, _, l| l.peer == me);
        let Some(swarm) = self.swarms.get_mut(task) else {
            return Err(StateError::Invalid(format!("{task}: swarm vanished")));
        };
        swarm.last_active = now;
        swarm.member(me);
        let mut wanted = PieceSet::new(n);
        for &p in &req.want {
            wanted.insert(p);
        }
        let mut round = Round {
            me,
            now,
            policy: &self.policy,
            peers: &mut self.peers,
            swarm,
        };
        round.end_replaced_transfers(&wanted);
        let receivers = round.rooted_relays(&wanted);
        let candidates = round.candidates(&req.want, &receivers);
        // Transfers (from the origin or a peer) it can start now: its slots less what it receives already, as far as
        // this scheduler knows (the wanted pieces' transfers were just ended). Several of its tasks may ask at once:
        // each answer sees the transfers the others were given.
        let busy = round.peers[me as usize].as_ref().map_or(0, |e| e.downloads) + my_leases;
        let mut slots = req
            .slots
            .map_or(u32::MAX, |s| s.saturating_sub(busy))
            .min(round.policy.max_assignments as u32);
        let mut assignments = Vec::new();
        let mut waits = candidates.waits;
        let lease_room = LeaseRoom {
            new_allowed: req.max_origin.unwrap_or(u32::MAX),
            origin_live,
        };
        round.grant_leases(candidates.origin, lease_room, &mut slots, &mut assignments, &mut waits);
        round.assign_peers(candidates.by_holder, n, &mut slots, &mut assignments);
        waits.sort_unstable();
        let max = round.policy.max_assignments;
        for p in waits {
            if assignments.len() >= max {
                break;
            }
            assignments.push(Assignment {
                piece: p,
                source: Source::Wait,
            });
        }
        Ok(ScheduleResponse {
            assignments,
            digests: round.swarm.pieces.iter().map(|ps| ps.digest.clone()).collect(),
        })
    }

    /// The request's shape, peer, pieces and origin are sane and its shape is the swarm's; returns the piece count.
    fn check_schedule(&self, task: &str, req: &ScheduleRequest) -> Result<u32, StateError> {
        let n = check_shape(&req.shape)?;
        check_peer(&req.peer)?;
        check_pieces(req.want.iter().copied(), n)?;
        if let Some(origin) = &req.origin
            && (origin.is_empty() || origin.len() > MAX_ADDR_LEN || origin.chars().any(char::is_control))
        {
            return Err(StateError::Invalid(format!("origin {origin:?}")));
        }
        self.check_swarm_shape(task, &req.shape)?;
        Ok(n)
    }

    /// Live origin leases, over all swarms, that `counts` accepts (given the swarm's name, the swarm, the lease).
    fn live_leases(&self, now: Instant, counts: impl Fn(&str, &Swarm, &Lease) -> bool) -> u32 {
        let mut n = 0;
        for (name, swarm) in self.swarms.iter().filter(|(_, s)| s.leases > 0) {
            for l in swarm.pieces.iter().filter_map(|ps| ps.lease.as_ref()) {
                n += u32::from(counts(name, swarm, l) && lease_live(l, &self.peers, now, &self.policy));
            }
        }
        n
    }

    /// Records what a peer now holds (and the digests of what it fetched from the origin), or that it is done or
    /// gone. An excluded peer's pieces and digests are ignored.
    ///
    /// Returns the other swarms whose waiting requests may now be answered: those of a holder this announcement
    /// freed from its upload cap.
    pub fn announce(&mut self, task: &str, a: &Announce, now: Instant) -> Result<Vec<String>, StateError> {
        let n = check_shape(&a.shape)?;
        check_peer(&a.peer)?;
        check_pieces(a.have.iter().copied().chain(a.digests.iter().map(|(p, _)| *p)), n)?;
        if let Some((p, d)) = a.digests.iter().find(|(_, d)| !crate::proto::is_sha256_hex(d)) {
            return Err(StateError::Invalid(format!(
                "digest of piece {p}: {d:?} is not lowercase SHA-256 hex"
            )));
        }
        self.check_swarm_shape(task, &a.shape)?;
        let me = self.touch(&a.peer, now)?;
        if a.gone {
            if let Some(swarm) = self.swarms.get_mut(task) {
                swarm.remove_member(me, &mut self.peers);
                swarm.last_active = now;
            }
            return Ok(Vec::new());
        }
        if self.entry(me).excluded {
            // Still, the transfers it received are over.
            if let Some(swarm) = self.swarms.get_mut(task) {
                let pieces: Vec<u32> = if a.done { (0..n).collect() } else { a.have.clone() };
                for p in pieces {
                    swarm.end_transfer(me, p, &mut self.peers);
                }
            }
            tracing::debug!(task, peer = %a.peer.id, "announcement of an excluded peer ignored");
            return Ok(Vec::new());
        }
        self.admit_swarm(task, &a.shape, now)?;
        let peers = &mut self.peers;
        let Some(swarm) = self.swarms.get_mut(task) else {
            return Err(StateError::Invalid(format!("{task}: swarm vanished")));
        };
        swarm.last_active = now;
        swarm.member(me);
        // Pieces whose bytes, by its own account, differ from what the swarm accepts: not a source of them.
        let trust::Verdict { conflicting, exclude } =
            trust::accept_digests(swarm, peers, task, me, a, now, &self.policy);
        let pieces: Box<dyn Iterator<Item = u32>> = if a.done {
            Box::new(0..n)
        } else {
            Box::new(a.have.iter().copied())
        };
        let mut released = Vec::new();
        for p in pieces {
            let source = if conflicting.contains(&p) {
                swarm.end_transfer(me, p, peers)
            } else {
                swarm.add_holder(me, p, peers)
            };
            released.extend(source);
        }
        if a.done {
            swarm.member(me).done = conflicting.is_empty();
            if let Some(e) = self.preheat.iter_mut().find(|e| e.blob.digest == task) {
                e.done_by.insert(a.peer.id.clone());
            }
        }
        for (id, why) in exclude {
            self.exclude(&id, now, task, why);
        }
        // A holder that was at its upload cap can serve again, in any swarm it holds pieces of.
        let cap = self.policy.max_uploads_per_peer;
        released.retain(|&k| self.peers[k as usize].as_ref().is_some_and(|e| e.inflight + 1 == cap));
        released.dedup();
        if released.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .swarms
            .iter()
            .filter(|(name, s)| name.as_str() != task && released.iter().any(|k| s.members.contains_key(k)))
            .map(|(name, _)| name.clone())
            .collect())
    }

    /// Forgets peers not heard from for [`Policy::forget_after`], swarms without members idle as long, transfers
    /// older than [`Policy::transfer_ttl`] and expired preheat requests.
    pub fn sweep(&mut self, now: Instant) {
        let policy = self.policy.clone();
        for swarm in self.swarms.values_mut() {
            swarm.end_transfers(&mut self.peers, |_, _, _, since| {
                now.saturating_duration_since(since) < policy.transfer_ttl
            });
        }
        for key in 0..self.peers.len() as Key {
            let Some(e) = self.peers[key as usize].as_ref() else {
                continue;
            };
            if now.saturating_duration_since(e.last_seen) < policy.forget_after {
                continue;
            }
            let id = e.peer.id.clone();
            for swarm in self.swarms.values_mut() {
                swarm.remove_member(key, &mut self.peers);
            }
            self.peers[key as usize] = None;
            self.free.push(key);
            self.ids.remove(&id);
            tracing::debug!(peer = %id, "forgot a silent peer");
        }
        let mut freed = 0;
        self.swarms.retain(|_, s| {
            let keep = !s.members.is_empty() || now.saturating_duration_since(s.last_active) < policy.forget_after;
            if !keep {
                freed += s.pieces.len();
            }
            keep
        });
        self.pieces_allocated -= freed;
        self.lift_exclusions(now);
        self.preheat
            .retain(|e| now.saturating_duration_since(e.added) < policy.preheat_ttl);
    }

    pub fn stats(&self, now: Instant) -> Stats {
        Stats {
            tasks: self.swarms.len(),
            live_peers: self
                .peers
                .iter()
                .flatten()
                .filter(|e| e.usable(now, self.policy.peer_ttl))
                .count(),
        }
    }

    /// The SHA-256 (hex) of piece `n` of `task`, once a node that fetched it from the origin announced it.
    pub fn piece_digest(&self, task: &str, n: u32) -> Option<String> {
        self.swarms.get(task)?.pieces.get(n as usize)?.digest.clone()
    }

    /// The shape of `task`, if a swarm for it exists.
    pub fn shape(&self, task: &str) -> Option<TaskShape> {
        self.swarms.get(task).map(|s| s.shape.clone())
    }

    /// What `GET /v1/swarms` shows, sorted by task and peer id.
    pub fn swarms(&self, now: Instant) -> Swarms {
        let mut tasks: Vec<SwarmInfo> = self
            .swarms
            .iter()
            .map(|(task, s)| {
                let mut holders: Vec<(String, u32)> = s
                    .members
                    .iter()
                    .filter(|(_, m)| m.held() > 0)
                    .map(|(k, m)| (self.entry(*k).peer.id.clone(), m.held()))
                    .collect();
                holders.sort();
                let mut done: Vec<String> = s
                    .members
                    .iter()
                    .filter(|(_, m)| m.done)
                    .map(|(k, _)| self.entry(*k).peer.id.clone())
                    .collect();
                done.sort();
                SwarmInfo {
                    task: task.clone(),
                    size: s.shape.size,
                    piece_len: s.shape.piece_len,
                    pieces: s.count(),
                    known_digests: s.pieces.iter().filter(|p| p.digest.is_some()).count() as u32,
                    holders,
                    done,
                }
            })
            .collect();
        tasks.sort_by(|a, b| a.task.cmp(&b.task));
        let mut peers: Vec<PeerInfo> = self
            .peers
            .iter()
            .flatten()
            .map(|e| PeerInfo {
                id: e.peer.id.clone(),
                addr: e.peer.addr.clone(),
                rack: e.peer.rack.clone(),
                seed: e.peer.seed,
                seconds_since_seen: now.saturating_duration_since(e.last_seen).as_secs(),
                excluded: e.excluded,
                suspect: e.suspect(now),
            })
            .collect();
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        Swarms { tasks, peers }
    }

    /// Queues blobs for seed nodes to fetch. Returns how many were new.
    pub fn add_preheat(&mut self, p: &Preheat, now: Instant) -> Result<usize, StateError> {
        for b in &p.blobs {
            if !(b.digest.starts_with("sha256:") && proto::valid_task(&b.digest)) {
                return Err(StateError::Invalid(format!("preheat digest {:?}", b.digest)));
            }
            // It becomes part of the URL seeds fetch from: a repository name by the spec's grammar, nothing else.
            if b.repository.len() > MAX_ADDR_LEN || !wharf_oci::name::is_valid_repository(&b.repository) {
                return Err(StateError::Invalid(format!("preheat repository {:?}", b.repository)));
            }
        }
        let mut new = 0;
        for b in &p.blobs {
            if let Some(e) = self.preheat.iter_mut().find(|e| e.blob.digest == b.digest) {
                e.blob = b.clone();
                e.added = now;
            } else {
                self.preheat.push(PreheatEntry {
                    blob: b.clone(),
                    added: now,
                    done_by: HashSet::new(),
                });
                new += 1;
            }
        }
        if self.preheat.len() > MAX_PREHEAT {
            self.preheat.sort_by_key(|e| e.added);
            let extra = self.preheat.len() - MAX_PREHEAT;
            self.preheat.drain(..extra);
        }
        Ok(new)
    }

    /// The queued blobs `peer` has not announced done.
    pub fn preheat_for(&self, peer: &str) -> Preheat {
        let key = self.ids.get(peer).copied();
        let done_in_swarm = |task: &str| {
            key.is_some_and(|k| {
                self.swarms
                    .get(task)
                    .and_then(|s| s.members.get(&k))
                    .is_some_and(|m| m.done)
            })
        };
        Preheat {
            blobs: self
                .preheat
                .iter()
                .filter(|e| !e.done_by.contains(peer) && !done_in_swarm(&e.blob.digest))
                .map(|e| e.blob.clone())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Report, ReportReason};

    const TASK: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";
    const OTHER: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000002";

    fn peer(i: usize) -> Peer {
        Peer {
            id: format!("p{i}"),
            addr: format!("http://10.0.0.{i}:65002"),
            rack: None,
            seed: false,
            relays: true,
        }
    }

    fn shape(pieces: u64) -> TaskShape {
        TaskShape {
            size: pieces * piece::MIN_PIECE,
            piece_len: piece::MIN_PIECE,
        }
    }

    /// `p` wants `want` of a task of `pieces` pieces, with no limits of its own.
    fn request(p: &Peer, pieces: u64, want: impl IntoIterator<Item = u32>) -> ScheduleRequest {
        ScheduleRequest {
            peer: p.clone(),
            shape: shape(pieces),
            want: want.into_iter().collect(),
            max_origin: None,
            slots: None,
            origin: None,
            hold_ms: None,
        }
    }

    fn ask(
        s: &mut State,
        p: &Peer,
        pieces: u64,
        want: impl IntoIterator<Item = u32>,
        now: Instant,
    ) -> ScheduleResponse {
        s.schedule(TASK, &request(p, pieces, want), now).unwrap()
    }

    fn digest(p: u32) -> String {
        format!("{p:064x}")
    }

    /// `p` holds `have`, whose digests are known (as if their lease holders had published them).
    fn have(s: &mut State, p: &Peer, pieces: u64, have: &[u32], now: Instant) {
        let a = Announce {
            peer: p.clone(),
            shape: shape(pieces),
            have: have.to_vec(),
            digests: have.iter().map(|&n| (n, digest(n))).collect(),
            done: false,
            gone: false,
        };
        s.announce(TASK, &a, now).unwrap();
        publish(s, TASK, have);
    }

    /// The digests of `pieces` of `task` are known (see `digest`), unless they are already.
    fn publish(s: &mut State, task: &str, pieces: &[u32]) {
        if let Some(swarm) = s.swarms.get_mut(task) {
            for &n in pieces {
                swarm.pieces[n as usize].digest.get_or_insert_with(|| digest(n));
            }
        }
    }

    /// `by` reports `bad` about piece 0, after a transfer of it from `bad` the scheduler arranged.
    fn report(s: &mut State, by: &Peer, bad: &Peer, reason: ReportReason, now: Instant) {
        arrange(s, by, bad, 0, now);
        let r = Report {
            peer: by.clone(),
            bad: bad.id.clone(),
            piece: 0,
            reason,
            digest: None,
        };
        s.report(TASK, &r, now).unwrap();
    }

    /// Records a transfer of `piece` from `source` to `requester`, as an assignment would.
    fn arrange(s: &mut State, requester: &Peer, source: &Peer, piece: u32, now: Instant) {
        let by = s.touch(requester, now).unwrap();
        let (Some(&from), Some(swarm)) = (s.ids.get(&source.id), s.swarms.get_mut(TASK)) else {
            return;
        };
        if let Some((old, _)) = swarm.inflight.insert((by, piece), (from, now)) {
            release(&mut s.peers, by, old);
        }
        s.peers[from as usize].as_mut().unwrap().inflight += 1;
        s.peers[by as usize].as_mut().unwrap().downloads += 1;
    }

    fn origins(r: &ScheduleResponse) -> Vec<u32> {
        r.assignments
            .iter()
            .filter(|a| a.source == Source::Origin)
            .map(|a| a.piece)
            .collect()
    }

    /// The id of the peer `p`'s one transfer in flight comes from.
    fn inflight_source(s: &State, p: &Peer) -> String {
        let key = s.ids[&p.id];
        let sources: Vec<String> = s.swarms[TASK]
            .inflight
            .iter()
            .filter(|((r, _), _)| *r == key)
            .map(|(_, (src, _))| s.entry(*src).peer.id.clone())
            .collect();
        assert_eq!(sources.len(), 1, "{sources:?}");
        sources[0].clone()
    }

    fn waits(r: &ScheduleResponse) -> Vec<u32> {
        r.assignments
            .iter()
            .filter(|a| a.source == Source::Wait)
            .map(|a| a.piece)
            .collect()
    }

    fn source_of(r: &ScheduleResponse, piece: u32) -> &Source {
        &r.assignments.iter().find(|a| a.piece == piece).unwrap().source
    }

    fn peer_ids(r: &ScheduleResponse) -> Vec<String> {
        r.assignments
            .iter()
            .filter_map(|a| match &a.source {
                Source::Peer { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn concurrent_starters_lease_disjoint_pieces_from_the_origin() {
        let mut s = State::new(Policy {
            // Leases and waits: relays have their own tests.
            relay: false,
            max_origin_leases: u32::MAX,
            ..Policy::default()
        });
        let t = Instant::now();
        let peers: Vec<Peer> = (0..8).map(peer).collect();
        let mut leased_by = vec![None; 16];
        for (i, p) in peers.iter().enumerate() {
            let r = ask(&mut s, p, 16, 0..16, t);
            let mine = origins(&r);
            // 16 pieces spread over lease_spread = 8: 2 each.
            assert_eq!(mine.len(), 2, "peer {i}: {r:?}");
            for piece in mine {
                assert!(leased_by[piece as usize].is_none(), "piece {piece} leased twice");
                leased_by[piece as usize] = Some(i);
            }
            // Everything else is someone's (or nobody's yet, then beyond its cap): wait.
            assert_eq!(waits(&r).len(), 14, "peer {i}: {r:?}");
            assert_eq!(r.digests, vec![None; 16]);
        }
        assert!(leased_by.iter().all(Option::is_some), "{leased_by:?}");
        // A 9th peer: every piece is leased, all waits.
        let r = ask(&mut s, &peer(8), 16, 0..16, t);
        assert_eq!(waits(&r).len(), 16, "{r:?}");
    }

    #[test]
    fn lease_cap_bounds_a_peer_on_a_large_task() {
        let mut s = State::new(Policy {
            max_origin_leases: u32::MAX,
            ..Policy::default()
        });
        let t = Instant::now();
        let r = ask(&mut s, &peer(0), 200, 0..200, t);
        assert_eq!(origins(&r).len(), 8);
        assert_eq!(r.assignments.len(), 32, "answer capped");
        // Asking again with the leases still live: no more.
        let r = ask(&mut s, &peer(0), 200, 0..200, t + Duration::from_secs(1));
        assert_eq!(origins(&r).len(), 8, "its own leases are renewed, no new ones: {r:?}");
        let second = ask(&mut s, &peer(1), 200, 0..200, t + Duration::from_secs(1));
        let (a, b): (HashSet<u32>, HashSet<u32>) = (
            origins(&r).into_iter().collect(),
            origins(&second).into_iter().collect(),
        );
        assert_eq!(b.len(), 8);
        assert!(a.is_disjoint(&b));
    }

    #[test]
    fn announced_pieces_come_from_peers_and_end_leases() {
        let mut s = State::new(Policy::default());
        let t = Instant::now();
        let (a, b) = (peer(0), peer(1));
        let r = ask(&mut s, &a, 4, [0], t);
        assert_eq!(origins(&r), vec![0]);
        have(&mut s, &a, 4, &[0], t);
        assert!(s.swarms[TASK].pieces[0].lease.is_none());
        let r = ask(&mut s, &b, 4, [0], t);
        assert_eq!(
            source_of(&r, 0),
            &Source::Peer {
                id: a.id.clone(),
                addr: a.addr.clone(),
                relay: false,
            }
        );
        assert_eq!(r.digests[0], Some(digest(0)));
        // A holder whose digest is unknown is not a source: its bytes could not be checked.
        let a2 = Announce {
            peer: a.clone(),
            shape: shape(4),
            have: vec![1],
            digests: vec![],
            done: false,
            gone: false,
        };
        s.announce(TASK, &a2, t).unwrap();
        let r = ask(&mut s, &b, 4, [1], t);
        assert_eq!(source_of(&r, 1), &Source::Origin);
    }

    /// A seed holds every piece of an `n`-piece task; `nodes` peers want all of it, each fetching `per_round`
    /// pieces a round (what it is answered) and announcing them at the end of the round, `step` apart. Checks that
    /// in every round no source is handed more than twice the mean over the peers that could serve, and returns
    /// the number of rounds.
    fn simulate(nodes: usize, n: u32, per_round: usize, step: Duration) -> usize {
        // Every transfer of a round ends with it, whatever the holder's load: the upload cap is another test's.
        let policy = Policy {
            max_assignments: per_round,
            max_uploads_per_peer: u32::MAX,
            ..Policy::default()
        };
        let mut s = State::new(policy);
        let mut t = Instant::now();
        let pieces = u64::from(n);
        let seed = Peer {
            seed: true,
            ..peer(1000)
        };
        let all: Vec<u32> = (0..n).collect();
        have(&mut s, &seed, pieces, &all, t);
        let peers: Vec<Peer> = (0..nodes).map(peer).collect();
        let mut held: Vec<Vec<u32>> = vec![Vec::new(); nodes];
        let mut rounds = 0;
        while held.iter().any(|h| h.len() < n as usize) {
            rounds += 1;
            assert!(rounds <= 100, "not done after 100 rounds");
            let mut per_source: HashMap<String, usize> = HashMap::new();
            let mut got: Vec<Vec<u32>> = vec![Vec::new(); nodes];
            for (i, p) in peers.iter().enumerate() {
                let want: Vec<u32> = all.iter().copied().filter(|x| !held[i].contains(x)).collect();
                if want.is_empty() {
                    continue;
                }
                let r = ask(&mut s, p, pieces, want, t);
                for a in &r.assignments {
                    match &a.source {
                        Source::Peer { id, .. } => {
                            *per_source.entry(id.clone()).or_default() += 1;
                            got[i].push(a.piece);
                        }
                        other => panic!("piece {} from {other:?} though the seed holds everything", a.piece),
                    }
                }
            }
            for (i, p) in peers.iter().enumerate() {
                have(&mut s, p, pieces, &got[i], t);
                held[i].extend(&got[i]);
            }
            // Who could serve this round: the seed and every peer that held a piece before it.
            let sources = 1 + (0..nodes).filter(|&i| held[i].len() > got[i].len()).count();
            let total: usize = per_source.values().sum();
            let max = per_source.values().copied().max().unwrap_or(0);
            let mean = total as f64 / sources as f64;
            assert!(
                max as f64 <= (2.0 * mean).max(1.0),
                "{nodes} nodes, round {rounds}: max {max}, mean {mean:.1}: {per_source:?}"
            );
            t += step;
        }
        rounds
    }

    #[test]
    fn load_spreads_over_holders() {
        // A tree, not a star: at `per_round` pieces per peer per round, the fewest rounds possible.
        assert_eq!(simulate(16, 16, 4, Duration::from_secs(2)), 4);
        // Rounds shorter than the load window (loads carry over), more nodes.
        assert_eq!(simulate(48, 64, 8, Duration::from_millis(500)), 8);
    }

    fn inflight(s: &State, id: &str) -> u32 {
        s.entry(s.ids[id]).inflight
    }

    #[test]
    fn cold_start_fetches_each_piece_from_the_origin_once() {
        let mut s = State::new(Policy {
            max_assignments: 8,
            ..Policy {
                max_origin_leases: u32::MAX,
                max_uploads_per_peer: u32::MAX,
                ..Policy::default()
            }
        });
        let t = Instant::now();
        let (nodes, n) = (48, 64u32);
        let peers: Vec<Peer> = (0..nodes).map(peer).collect();
        let mut held: Vec<Vec<u32>> = vec![Vec::new(); nodes];
        let mut from_origin = vec![0; n as usize];
        let mut rounds = 0;
        while held.iter().any(|h| h.len() < n as usize) {
            rounds += 1;
            assert!(rounds <= 30, "not done after 30 rounds");
            let now = t + Duration::from_millis(500) * rounds;
            let mut got: Vec<Vec<u32>> = vec![Vec::new(); nodes];
            for (i, p) in peers.iter().enumerate() {
                let want: Vec<u32> = (0..n).filter(|x| !held[i].contains(x)).collect();
                if want.is_empty() {
                    continue;
                }
                for a in ask(&mut s, p, u64::from(n), want, now).assignments {
                    match a.source {
                        Source::Origin => from_origin[a.piece as usize] += 1,
                        Source::Peer { .. } => {}
                        Source::Wait => continue,
                    }
                    got[i].push(a.piece);
                }
            }
            for (i, p) in peers.iter().enumerate() {
                have(&mut s, p, u64::from(n), &got[i], now);
                held[i].extend(&got[i]);
            }
        }
        assert_eq!(from_origin, vec![1; n as usize]);
        // 48 x 64 pieces at 8 per node per round: 8 rounds at best, plus the first where all come from the origin.
        assert!(rounds <= 10, "{rounds} rounds");
    }

    #[test]
    fn least_loaded_holder_is_chosen() {
        // Holders stay alive over the clock jumps below.
        let mut s = State::new(Policy {
            peer_ttl: Duration::from_secs(60),
            ..Policy::default()
        });
        let t = Instant::now();
        let (a, b) = (peer(0), peer(1));
        have(&mut s, &a, 4, &[0, 1, 2, 3], t);
        have(&mut s, &b, 4, &[0, 1, 2, 3], t);
        let total = |s: &State| inflight(s, "p0") + inflight(s, "p1");
        let r = ask(&mut s, &peer(2), 4, 0..4, t);
        let ids = peer_ids(&r);
        assert_eq!(ids.iter().filter(|i| **i == a.id).count(), 2, "{ids:?}");
        assert_eq!((inflight(&s, "p0"), inflight(&s, "p1")), (2, 2));
        // Transfers end when their requester announces the piece,
        have(&mut s, &peer(2), 4, &[0, 1], t);
        assert_eq!(total(&s), 2);
        // or asks for it again (that attempt is over; a new transfer replaces it),
        ask(&mut s, &peer(2), 4, [2], t);
        assert_eq!(total(&s), 2);
        // or reports it.
        let r = Report {
            peer: peer(2),
            bad: "p99".into(),
            piece: 3,
            reason: ReportReason::Unreachable,
            digest: None,
        };
        s.report(TASK, &r, t).unwrap();
        assert_eq!(total(&s), 1);
        have(&mut s, &peer(2), 4, &[2], t);
        assert_eq!(total(&s), 0);
        // A requester that never announces loads its source only until transfer_ttl.
        ask(&mut s, &peer(3), 4, [3], t);
        assert_eq!(total(&s), 1);
        s.sweep(t + Duration::from_secs(10));
        assert_eq!(total(&s), 1);
        s.sweep(t + Duration::from_secs(21));
        assert_eq!(total(&s), 0);
        // Busy holders are avoided: two requesters of one piece get its two holders.
        let first = peer_ids(&ask(&mut s, &peer(4), 4, [3], t + Duration::from_secs(22)));
        let second = peer_ids(&ask(&mut s, &peer(5), 4, [3], t + Duration::from_secs(22)));
        assert_eq!(first.len(), 1);
        assert_ne!(first, second);
    }

    #[test]
    fn same_rack_is_preferred_and_seeds_last() {
        let mut s = State::new(Policy {
            // Holders only: relays have their own tests.
            relay: false,
            ..Policy::default()
        });
        let t = Instant::now();
        let rack = |i: usize, r: &str| Peer {
            rack: Some(r.into()),
            ..peer(i)
        };
        let seed = Peer { seed: true, ..peer(9) };
        for p in [&rack(0, "r1"), &rack(1, "r2"), &seed] {
            have(&mut s, p, 1, &[0], t);
        }
        for (i, r) in [(10, "r1"), (11, "r2")] {
            let got = ask(&mut s, &rack(i, r), 1, [0], t);
            let want = if r == "r1" { "p0" } else { "p1" };
            assert_eq!(peer_ids(&got), vec![want.to_string()], "requester in {r}");
        }
        // p0 and p1 now serve one transfer each, the seed none: least loaded wins over rack.
        let got = ask(&mut s, &rack(12, "r1"), 1, [0], t);
        assert_eq!(peer_ids(&got), vec!["p9".to_string()]);
        // The transfers end: all idle again, and a rackless requester gets a non-seed.
        for (i, r) in [(10, "r1"), (11, "r2"), (12, "r1")] {
            have(&mut s, &rack(i, r), 1, &[0], t);
        }
        let got = ask(&mut s, &peer(13), 1, [0], t);
        assert_eq!(peer_ids(&got).len(), 1);
        assert_ne!(peer_ids(&got), vec!["p9".to_string()]);
    }

    #[test]
    fn a_swarm_has_few_origin_fetches_at_once() {
        let mut s = State::new(Policy::default());
        let t = Instant::now();
        let mut leased = 0;
        for i in 0..16 {
            let r = ask(&mut s, &peer(i), 64, 0..64, t);
            leased += origins(&r).len();
        }
        assert_eq!(leased, 4, "the default cap of live origin leases per swarm");
    }

    #[test]
    fn a_node_gets_no_more_new_leases_than_it_can_start() {
        let mut s = State::new(Policy::default());
        let t = Instant::now();
        let a = peer(0);
        let req = ScheduleRequest {
            peer: a.clone(),
            shape: TaskShape {
                size: 64 << 20,
                piece_len: 1 << 20,
            },
            want: (0..64).collect(),
            max_origin: Some(2),
            slots: None,
            origin: None,
            hold_ms: None,
        };
        let r = s.schedule(TASK, &req, t).unwrap();
        let leased: Vec<u32> = r
            .assignments
            .iter()
            .filter(|x| x.source == Source::Origin)
            .map(|x| x.piece)
            .collect();
        assert_eq!(leased.len(), 2, "{:?}", r.assignments);
        // Its leases are renewed when it asks again, even with no free slot; nothing new.
        let other = (0..64).find(|p| !leased.contains(p)).unwrap();
        let again = ScheduleRequest {
            max_origin: Some(0),
            want: vec![leased[0], leased[1], other],
            ..req
        };
        let r = s.schedule(TASK, &again, t).unwrap();
        let renewed: Vec<u32> = r
            .assignments
            .iter()
            .filter(|x| x.source == Source::Origin)
            .map(|x| x.piece)
            .collect();
        assert_eq!(renewed.len(), 2, "{:?}", r.assignments);
    }

    #[test]
    fn expired_lease_is_granted_again() {
        let mut s = State::new(Policy {
            // Leases and waits: relays have their own tests.
            relay: false,
            lease_ttl: Duration::from_secs(20),
            ..Policy::default()
        });
        let t = Instant::now();
        let (a, b) = (peer(0), peer(1));
        assert_eq!(origins(&ask(&mut s, &a, 1, [0], t)), vec![0]);
        // a keeps scheduling other things (alive) but never announces piece 0.
        assert_eq!(waits(&ask(&mut s, &b, 1, [0], t + Duration::from_secs(19))), vec![0]);
        ask(&mut s, &a, 1, [], t + Duration::from_secs(19));
        assert_eq!(origins(&ask(&mut s, &b, 1, [0], t + Duration::from_secs(21))), vec![0]);
        assert_eq!(s.swarms[TASK].pieces[0].lease.unwrap().peer, s.ids["p1"]);
        assert_eq!(waits(&ask(&mut s, &a, 1, [0], t + Duration::from_secs(22))), vec![0]);
    }

    #[test]
    fn dead_lease_holder_loses_its_lease() {
        let mut s = State::new(Policy {
            // Leases and waits: relays have their own tests.
            relay: false,
            ..Policy::default()
        });
        let t = Instant::now();
        let (a, b) = (peer(0), peer(1));
        assert_eq!(origins(&ask(&mut s, &a, 1, [0], t)), vec![0]);
        // Shorter than the lease ttl but a stopped being heard from... (peer ttl shortened to see it)
        s.policy.peer_ttl = Duration::from_secs(10);
        assert_eq!(waits(&ask(&mut s, &b, 1, [0], t + Duration::from_secs(9))), vec![0]);
        assert_eq!(origins(&ask(&mut s, &b, 1, [0], t + Duration::from_secs(11))), vec![0]);
        // An unreachable report does not end it: b fetches from the origin, not from its peers.
        let c = peer(2);
        report(&mut s, &c, &b, ReportReason::Unreachable, t + Duration::from_secs(12));
        assert_eq!(waits(&ask(&mut s, &c, 1, [0], t + Duration::from_secs(12))), vec![0]);
    }

    #[test]
    fn corrupt_reports_from_two_members_exclude_everywhere_for_a_while() {
        let mut s = State::new(Policy {
            // Holders only: relays have their own tests.
            relay: false,
            ..Policy::default()
        });
        let t = Instant::now();
        let (bad, good, me, you) = (peer(0), peer(1), peer(2), peer(3));
        have(&mut s, &bad, 2, &[0, 1], t);
        let other = Announce {
            peer: bad.clone(),
            shape: shape(2),
            have: vec![0],
            digests: vec![],
            done: false,
            gone: false,
        };
        s.announce(OTHER, &other, t).unwrap();
        publish(&mut s, OTHER, &[0]);
        have(&mut s, &good, 2, &[1], t);
        // One report: suspect for a while (not assigned; the piece it alone holds is not waited for), not excluded.
        report(&mut s, &me, &bad, ReportReason::Corrupt, t);
        let r = ask(&mut s, &me, 2, [0, 1], t);
        assert_eq!(source_of(&r, 0), &Source::Origin);
        assert_eq!(peer_ids(&r), vec![good.id.clone()]);
        assert!(!s.swarms(t).peers.iter().find(|p| p.id == bad.id).unwrap().excluded);
        // Once the suspicion is over, others may use it again; the reporter never meanwhile.
        let after = t + s.policy.suspect_for + Duration::from_secs(1);
        have(&mut s, &bad, 2, &[0, 1], after);
        have(&mut s, &good, 2, &[1], after);
        let r = ask(&mut s, &peer(7), 2, [0], after);
        assert_eq!(peer_ids(&r), vec![bad.id.clone()], "{r:?}");
        let r = ask(&mut s, &me, 2, [0], after);
        assert!(peer_ids(&r).is_empty(), "{r:?}");
        // The same reporter again counts once.
        report(&mut s, &me, &bad, ReportReason::Corrupt, t);
        assert!(!s.swarms(t).peers.iter().find(|p| p.id == bad.id).unwrap().excluded);
        // A report of a transfer the scheduler never arranged counts for nothing.
        let unbacked = Report {
            peer: you.clone(),
            bad: bad.id.clone(),
            piece: 1,
            reason: ReportReason::Corrupt,
            digest: None,
        };
        s.report(TASK, &unbacked, t).unwrap();
        assert!(!s.swarms(t).peers.iter().find(|p| p.id == bad.id).unwrap().excluded);
        // A second member's: excluded, its pieces fetched from the origin.
        report(&mut s, &you, &bad, ReportReason::Corrupt, t);
        let r = ask(&mut s, &me, 2, [0, 1], t);
        assert_eq!(source_of(&r, 0), &Source::Origin);
        // In another task too, and even after it announces again.
        s.announce(OTHER, &other, t).unwrap();
        let r = s.schedule(OTHER, &request(&me, 2, [0]), t).unwrap();
        assert_eq!(source_of(&r, 0), &Source::Origin);
        let info = s.swarms(t);
        assert!(info.peers.iter().find(|p| p.id == bad.id).unwrap().excluded);
        assert!(!info.peers.iter().find(|p| p.id == good.id).unwrap().excluded);
        // Forgotten and back: still excluded.
        let later = t + Duration::from_secs(1800);
        s.sweep(later);
        assert!(s.ids.is_empty());
        have(&mut s, &bad, 2, &[0, 1], later);
        assert!(s.swarms(later).peers.iter().find(|p| p.id == bad.id).unwrap().excluded);
        // Its lease, if it asks, protects nothing.
        assert_eq!(origins(&ask(&mut s, &bad, 2, [0], later)), vec![0]);
        assert_eq!(origins(&ask(&mut s, &me, 2, [0], later)), vec![0]);
        // The exclusion ends.
        let much_later = t + s.policy.exclude_for + Duration::from_secs(1);
        have(&mut s, &bad, 2, &[0, 1], much_later);
        s.sweep(much_later);
        assert!(
            !s.swarms(much_later)
                .peers
                .iter()
                .find(|p| p.id == bad.id)
                .unwrap()
                .excluded
        );
    }

    #[test]
    fn unreachable_peer_is_skipped_for_a_while() {
        let mut s = State::new(Policy {
            // Holders only: relays have their own tests.
            relay: false,
            ..Policy::default()
        });
        let t = Instant::now();
        let (gone, other, me) = (peer(0), peer(1), peer(2));
        have(&mut s, &gone, 1, &[0], t);
        have(&mut s, &other, 1, &[0], t);
        report(&mut s, &me, &gone, ReportReason::Unreachable, t);
        for _ in 0..4 {
            let r = ask(&mut s, &me, 1, [0], t);
            assert_eq!(peer_ids(&r), vec![other.id.clone()]);
        }
        // It still holds the piece (a timeout on a congested network is no proof it is gone) and talking to the
        // scheduler does not end the suspicion...
        assert_eq!(s.swarms(t).tasks[0].holders.len(), 2);
        have(&mut s, &gone, 1, &[0], t + Duration::from_secs(5));
        let r = ask(&mut s, &peer(3), 1, [0], t + Duration::from_secs(5));
        assert_eq!(peer_ids(&r), vec![other.id.clone()]);
        // ...its end does (and, with two transfers from `other` in flight, it is the least loaded).
        let later = t + s.policy.suspect_for + Duration::from_secs(1);
        have(&mut s, &gone, 1, &[0], later);
        let r = ask(&mut s, &peer(4), 1, [0], later);
        assert_eq!(peer_ids(&r), vec![gone.id.clone()]);
    }

    #[test]
    fn a_suspect_only_holder_is_waited_for_until_reported_enough() {
        let mut s = State::new(Policy {
            // Leases and waits: relays have their own tests.
            relay: false,
            ..Policy::default()
        });
        let t = Instant::now();
        let (holder, a, b, c) = (peer(0), peer(1), peer(2), peer(3));
        have(&mut s, &holder, 1, &[0], t);
        report(&mut s, &a, &holder, ReportReason::Unreachable, t);
        // One report: it may just be congested; the piece waits for it rather than leave the origin again.
        assert_eq!(waits(&ask(&mut s, &a, 1, [0], t)), vec![0]);
        report(&mut s, &b, &holder, ReportReason::Unreachable, t);
        assert_eq!(waits(&ask(&mut s, &b, 1, [0], t)), vec![0]);
        // Three reports in a row: gone for practical purposes; the origin serves the piece once more.
        report(&mut s, &c, &holder, ReportReason::Unreachable, t);
        assert_eq!(origins(&ask(&mut s, &c, 1, [0], t)), vec![0]);
        assert_eq!(waits(&ask(&mut s, &a, 1, [0], t)), vec![0], "one lease at a time");
    }

    #[test]
    fn a_refused_connection_makes_a_peer_gone_at_once() {
        let mut s = State::new(Policy {
            // Leases and waits: relays have their own tests.
            relay: false,
            ..Policy::default()
        });
        let t = Instant::now();
        let (dead, a, b) = (peer(0), peer(1), peer(2));
        have(&mut s, &dead, 2, &[0], t);
        // It also holds the origin lease of piece 1.
        assert_eq!(origins(&ask(&mut s, &dead, 2, [1], t)), vec![1]);
        assert_eq!(waits(&ask(&mut s, &b, 2, [1], t)), vec![1]);
        report(&mut s, &a, &dead, ReportReason::Refused, t);
        // Its piece and its lease are free again at once.
        let r = ask(&mut s, &a, 2, [0, 1], t);
        assert_eq!(origins(&r).len(), 1, "{r:?}");
        assert_eq!(waits(&r).len(), 1, "one origin fetch per piece at a time: {r:?}");
        assert_eq!(origins(&ask(&mut s, &b, 2, [0, 1], t)).len(), 1);
    }

    #[test]
    fn first_digest_wins() {
        let mut s = State::new(Policy {
            // Holders only: relays have their own tests.
            relay: false,
            ..Policy::default()
        });
        let t = Instant::now();
        let (a, b) = (peer(0), peer(1));
        have(&mut s, &a, 2, &[0], t);
        assert_eq!(peer_ids(&ask(&mut s, &b, 2, [0], t)), vec![a.id.clone()]);
        assert_eq!(inflight(&s, "p0"), 1);
        let liar = Announce {
            peer: b.clone(),
            shape: shape(2),
            have: vec![0],
            digests: vec![(0, "f".repeat(64)), (1, digest(1))],
            done: false,
            gone: false,
        };
        s.announce(TASK, &liar, t).unwrap();
        assert_eq!(inflight(&s, "p0"), 0, "b's transfer is over, whatever it got");
        let r = ask(&mut s, &peer(2), 2, [0], t);
        // (b holds no lease on piece 1: its digest is not taken either.)
        assert_eq!(r.digests, vec![Some(digest(0)), None]);
        // b's bytes for piece 0 are not the accepted ones: never its source, however busy a is.
        for i in 3..6 {
            assert_eq!(peer_ids(&ask(&mut s, &peer(i), 2, [0], t)), vec![a.id.clone()]);
        }
        assert_eq!(inflight(&s, "p0"), 4);
        let bad = Announce {
            digests: vec![(0, "XYZ".into())],
            ..liar
        };
        assert!(matches!(s.announce(TASK, &bad, t), Err(StateError::Invalid(_))));
    }

    fn announce_digests(
        s: &mut State,
        task: &str,
        p: &Peer,
        pieces: u64,
        digests: &[(u32, String)],
        done: bool,
        now: Instant,
    ) {
        let a = Announce {
            peer: p.clone(),
            shape: shape(pieces),
            have: digests.iter().map(|(n, _)| *n).collect(),
            digests: digests.to_vec(),
            done,
            gone: false,
        };
        s.announce(task, &a, now).unwrap();
    }

    #[test]
    fn only_a_lease_holder_publishes_a_piece_digest() {
        let mut s = State::new(Policy::default());
        let t = Instant::now();
        let (a, b, c) = (peer(0), peer(1), peer(2));
        // b never held a lease: its digests are ignored, and so its claim to hold the pieces serves nobody.
        announce_digests(
            &mut s,
            TASK,
            &b,
            2,
            &[(0, "f".repeat(64)), (1, "f".repeat(64))],
            false,
            t,
        );
        assert_eq!(s.piece_digest(TASK, 0), None);
        let r = ask(&mut s, &a, 2, [0], t);
        assert_eq!(origins(&r), vec![0], "b's claim is no source: {r:?}");
        // a holds the lease of piece 0: its digest counts; of piece 1 (not leased) it does not.
        announce_digests(&mut s, TASK, &a, 2, &[(0, digest(0)), (1, digest(1))], false, t);
        assert_eq!(s.piece_digest(TASK, 0), Some(digest(0)));
        assert_eq!(s.piece_digest(TASK, 1), None);
        // Once known, nobody overwrites it, the lease holder included.
        assert_eq!(origins(&ask(&mut s, &c, 2, [1], t)), vec![1]);
        announce_digests(&mut s, TASK, &c, 2, &[(0, "e".repeat(64)), (1, digest(1))], false, t);
        assert_eq!(s.piece_digest(TASK, 0), Some(digest(0)));
        assert_eq!(s.piece_digest(TASK, 1), Some(digest(1)));
        // A node done with a registry blob (it checked the whole against the task id) publishes into a swarm that
        // knows no digest yet: a restarted node serving its cache to a new scheduler.
        let whole: Vec<(u32, String)> = (0..2).map(|n| (n, digest(n))).collect();
        announce_digests(&mut s, OTHER, &b, 2, &whole, true, t);
        assert_eq!(s.piece_digest(OTHER, 1), Some(digest(1)));
        // Not a file (no content address behind it), nor into a swarm that knows digests.
        let url = crate::proto::url_task("http://files.invalid/f");
        announce_digests(&mut s, &url, &b, 2, &whole, true, t);
        assert_eq!(s.piece_digest(&url, 0), None);
        announce_digests(&mut s, &url, &a, 2, &[], false, t);
        let third = "sha256:0000000000000000000000000000000000000000000000000000000000000003";
        assert_eq!(origins(&s.schedule(third, &request(&a, 2, [0]), t).unwrap()), vec![0]);
        announce_digests(&mut s, third, &a, 2, &[(0, digest(0))], false, t);
        announce_digests(&mut s, third, &b, 2, &[(0, digest(0)), (1, "f".repeat(64))], true, t);
        assert_eq!(s.piece_digest(third, 1), None);
    }

    /// `publisher` leases piece 0 and publishes `published`; `reporter` fetched it from the origin (after its whole
    /// content failed) and reports `origin` instead.
    fn disputed(s: &mut State, publisher: &Peer, reporter: &Peer, published: &str, origin: &str, t: Instant) {
        assert_eq!(origins(&ask(s, publisher, 1, [0], t)), vec![0]);
        announce_digests(s, TASK, publisher, 1, &[(0, published.to_owned())], false, t);
        announce_digests(s, TASK, reporter, 1, &[(0, origin.to_owned())], false, t);
        let r = Report {
            peer: reporter.clone(),
            bad: String::new(),
            piece: 0,
            reason: ReportReason::Forged,
            digest: Some(origin.to_owned()),
        };
        s.report(TASK, &r, t).unwrap();
    }

    #[test]
    fn a_forged_digest_is_withdrawn_and_an_independent_lease_holder_decides() {
        let t = Instant::now();
        let (liar, honest, third) = (peer(0), peer(1), peer(2));
        let (forged, real) = ("f".repeat(64), digest(0));
        let mut s = State::new(Policy::default());
        disputed(&mut s, &liar, &honest, &forged, &real, t);
        assert_eq!(s.piece_digest(TASK, 0), None, "withdrawn");
        assert!(
            s.swarms[TASK].pieces[0].holders.is_empty(),
            "its holders withdrawn with it"
        );
        // One open dispute per reporter: its next report waits for the first verdict.
        let mut s2 = State::new(Policy {
            lease_spread: 1,
            ..Policy::default()
        });
        let mut leased = origins(&ask(&mut s2, &liar, 2, [0, 1], t));
        leased.sort_unstable();
        assert_eq!(leased, vec![0, 1]);
        announce_digests(
            &mut s2,
            TASK,
            &liar,
            2,
            &[(0, forged.clone()), (1, forged.clone())],
            false,
            t,
        );
        announce_digests(&mut s2, TASK, &honest, 2, &[(0, digest(0)), (1, digest(1))], false, t);
        for piece in [0, 1] {
            let r = Report {
                peer: honest.clone(),
                bad: String::new(),
                piece,
                reason: ReportReason::Forged,
                digest: Some(digest(piece)),
            };
            s2.report(TASK, &r, t).unwrap();
        }
        assert_eq!(s2.piece_digest(TASK, 0), None, "the first report opens a dispute");
        assert_eq!(s2.piece_digest(TASK, 1), Some(forged.clone()), "the second waits");
        // Neither party settles it.
        assert_eq!(waits(&ask(&mut s, &liar, 1, [0], t)), vec![0]);
        assert_eq!(waits(&ask(&mut s, &honest, 1, [0], t)), vec![0]);
        // A third node fetches it from the origin: its digest is the reporter's, so the publisher lied.
        assert_eq!(origins(&ask(&mut s, &third, 1, [0], t)), vec![0]);
        announce_digests(&mut s, TASK, &third, 1, &[(0, real.clone())], false, t);
        assert_eq!(s.piece_digest(TASK, 0), Some(real.clone()));
        let info = s.swarms(t);
        assert!(info.peers.iter().find(|p| p.id == liar.id).unwrap().excluded);
        assert!(!info.peers.iter().find(|p| p.id == honest.id).unwrap().excluded);

        // The other way round: a member that calls a true digest forged is the one excluded.
        let mut s = State::new(Policy::default());
        disputed(&mut s, &honest, &liar, &real, &forged, t);
        assert_eq!(origins(&ask(&mut s, &third, 1, [0], t)), vec![0]);
        announce_digests(&mut s, TASK, &third, 1, &[(0, real.clone())], false, t);
        let info = s.swarms(t);
        assert!(info.peers.iter().find(|p| p.id == liar.id).unwrap().excluded);
        assert!(!info.peers.iter().find(|p| p.id == honest.id).unwrap().excluded);

        // A report without grounds (the reporter is no member of the swarm, or agrees) withdraws nothing.
        let mut s = State::new(Policy::default());
        assert_eq!(origins(&ask(&mut s, &honest, 1, [0], t)), vec![0]);
        announce_digests(&mut s, TASK, &honest, 1, &[(0, real.clone())], false, t);
        let r = Report {
            peer: liar.clone(),
            bad: String::new(),
            piece: 0,
            reason: ReportReason::Forged,
            digest: Some(forged.clone()),
        };
        s.report(TASK, &r, t).unwrap();
        assert_eq!(s.piece_digest(TASK, 0), Some(real.clone()));
        let no_digest = Report { digest: None, ..r };
        assert!(matches!(s.report(TASK, &no_digest, t), Err(StateError::Invalid(_))));
    }

    #[test]
    fn a_live_peers_id_is_bound_to_its_address() {
        let mut s = State::new(Policy::default());
        let t = Instant::now();
        let a = peer(0);
        have(&mut s, &a, 1, &[0], t);
        let thief = Peer {
            addr: "http://10.9.9.9:65002".into(),
            ..a.clone()
        };
        let e = s.schedule(TASK, &request(&thief, 1, [0]), t).unwrap_err();
        assert!(matches!(e, StateError::IdTaken { .. }) && e.is_conflict(), "{e}");
        // Nodes asking for piece 0 are still sent to a's real address.
        let r = ask(&mut s, &peer(1), 1, [0], t);
        assert!(
            matches!(source_of(&r, 0), Source::Peer { addr, .. } if *addr == a.addr),
            "{r:?}"
        );
        // Once a is dead, its id is free (a node that moved keeps its id).
        let later = t + s.policy.peer_ttl + Duration::from_secs(1);
        assert!(s.schedule(TASK, &request(&thief, 1, [0]), later).is_ok());
    }

    #[test]
    fn shape_mismatch_and_bad_requests_are_refused() {
        let mut s = State::new(Policy::default());
        let t = Instant::now();
        ask(&mut s, &peer(0), 4, [0], t);
        let req = request(&peer(1), 5, [0]);
        let e = s.schedule(TASK, &req, t).unwrap_err();
        assert!(e.is_conflict(), "{e}");
        let a = Announce {
            peer: peer(1),
            shape: shape(5),
            have: vec![],
            digests: vec![],
            done: true,
            gone: false,
        };
        assert!(s.announce(TASK, &a, t).unwrap_err().is_conflict());
        let req = ScheduleRequest {
            shape: shape(4),
            want: vec![4],
            ..req
        };
        assert_eq!(
            s.schedule(TASK, &req, t).unwrap_err(),
            StateError::PieceOutOfRange { piece: 4, pieces: 4 }
        );
        let huge = ScheduleRequest {
            shape: TaskShape {
                size: 1 << 40,
                piece_len: 1,
            },
            want: vec![],
            ..req.clone()
        };
        assert!(matches!(s.schedule(OTHER, &huge, t), Err(StateError::BadShape(_))));
        // Pieces shorter than any node cuts: refused (a task of 1-byte pieces only costs memory).
        let tiny = ScheduleRequest {
            shape: TaskShape {
                size: 1 << 17,
                piece_len: 1,
            },
            want: vec![],
            ..req.clone()
        };
        assert!(matches!(s.schedule(OTHER, &tiny, t), Err(StateError::BadShape(_))));
        for addr in [
            "http://198.18.0.9:65002/steal?x=",
            "http://user:pw@198.18.0.9:65002",
            "http://198.18.0.9",
            "http://198.18.0.9:0",
            "http://evil.example:80/#",
        ] {
            assert!(!is_peer_address(addr), "{addr}");
        }
        for addr in [
            "http://198.18.0.9:65002",
            "https://node-7.cluster.local:8443",
            "http://[::1]:65002",
        ] {
            assert!(is_peer_address(addr), "{addr}");
        }
        let bad_addr = ScheduleRequest {
            peer: Peer {
                addr: "file:///etc/passwd".into(),
                ..peer(1)
            },
            ..req
        };
        assert!(matches!(s.schedule(TASK, &bad_addr, t), Err(StateError::BadPeer(_))));
        // Nothing of the refused requests was recorded.
        assert_eq!(s.swarms.len(), 1);
        assert!(!s.ids.contains_key("p1"));
    }

    #[test]
    fn sweep_forgets_dead_peers_and_empty_swarms() {
        let mut s = State::new(Policy::default());
        let t = Instant::now();
        let (a, b) = (peer(0), peer(1));
        have(&mut s, &a, 2, &[0, 1], t);
        have(&mut s, &b, 2, &[0], t + Duration::from_secs(500));
        assert_eq!(
            s.stats(t + Duration::from_secs(500)),
            Stats {
                tasks: 1,
                live_peers: 1
            }
        );
        s.sweep(t + Duration::from_secs(601));
        assert!(!s.ids.contains_key("p0"));
        assert_eq!(s.swarms(t).tasks[0].holders, vec![(b.id.clone(), 1)]);
        assert_eq!(s.swarms[TASK].pieces[0].holders.len(), 1);
        assert!(s.swarms[TASK].pieces[1].holders.is_empty());
        // The freed slot is reused without inheriting anything.
        let c = peer(2);
        ask(&mut s, &c, 2, [], t + Duration::from_secs(602));
        assert_eq!(s.ids["p2"], 0);
        assert_eq!(s.swarms(t).tasks[0].holders, vec![(b.id.clone(), 1)]);
        s.sweep(t + Duration::from_secs(1300));
        assert!(s.ids.is_empty() && s.swarms.is_empty(), "{:?}", s.swarms(t));
    }

    #[test]
    fn gone_and_done() {
        let mut s = State::new(Policy::default());
        let t = Instant::now();
        let (a, b) = (peer(0), peer(1));
        have(&mut s, &a, 3, &[0, 1, 2], t);
        let done = Announce {
            peer: b.clone(),
            shape: shape(3),
            have: vec![],
            digests: vec![],
            done: true,
            gone: false,
        };
        s.announce(TASK, &done, t).unwrap();
        let info = s.swarms(t);
        assert_eq!(info.tasks[0].done, vec![b.id.clone()]);
        assert_eq!(info.tasks[0].holders, vec![(a.id.clone(), 3), (b.id.clone(), 3)]);
        assert_eq!(info.tasks[0].known_digests, 3);
        s.announce(TASK, &Announce { gone: true, ..done }, t).unwrap();
        let info = s.swarms(t);
        assert!(info.tasks[0].done.is_empty());
        assert_eq!(info.tasks[0].holders, vec![(a.id.clone(), 3)]);
    }

    #[test]
    fn preheat_queue_per_seed() {
        let mut s = State::new(Policy::default());
        let t = Instant::now();
        let blob = |task: &str| PreheatBlob {
            repository: "library/alpine".into(),
            digest: task.into(),
            size: 3 * 1024,
        };
        let p = Preheat {
            blobs: vec![blob(TASK), blob(OTHER)],
        };
        assert_eq!(s.add_preheat(&p, t).unwrap(), 2);
        assert_eq!(s.add_preheat(&p, t).unwrap(), 0);
        let seed = Peer { seed: true, ..peer(0) };
        assert_eq!(s.preheat_for(&seed.id).blobs.len(), 2);
        let done = Announce {
            peer: seed.clone(),
            shape: shape(3),
            have: vec![],
            digests: vec![],
            done: true,
            gone: false,
        };
        s.announce(TASK, &done, t).unwrap();
        let left = s.preheat_for(&seed.id).blobs;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].digest, OTHER);
        assert_eq!(s.preheat_for("another-seed").blobs.len(), 2);
        let url = Preheat {
            blobs: vec![blob(&proto::url_task("http://x"))],
        };
        assert!(s.add_preheat(&url, t).is_err());
        // A repository that is no repository name (it would end up in the seeds' upstream URLs).
        for bad in ["../../v2/other/blobs", "a/b?x=1", "a#b", "A/upper", ""] {
            let p = Preheat {
                blobs: vec![PreheatBlob {
                    repository: bad.into(),
                    ..blob(TASK)
                }],
            };
            assert!(s.add_preheat(&p, t).is_err(), "{bad:?}");
        }
        s.sweep(t + Duration::from_secs(25 * 3600));
        assert!(s.preheat_for("another-seed").blobs.is_empty());
    }

    #[test]
    fn stale_holding_is_dropped_when_the_holder_wants_the_piece() {
        let mut s = State::new(Policy::default());
        let t = Instant::now();
        let a = peer(0);
        have(&mut s, &a, 2, &[0, 1], t);
        let r = ask(&mut s, &a, 2, [0], t);
        assert_eq!(origins(&r), vec![0]);
        assert_eq!(s.swarms(t).tasks[0].holders, vec![(a.id.clone(), 1)]);
    }

    #[test]
    fn a_node_receiving_a_piece_relays_it_until_its_own_transfer_ends() {
        let mut s = State::new(Policy {
            max_uploads_per_peer: 1,
            ..Policy::default()
        });
        let t = Instant::now();
        let (seed, a, b, c) = (peer(100), peer(1), peer(2), peer(3));
        have(&mut s, &seed, 1, &[0], t);
        // a gets it from the seed, which is then full: b gets it through a, while a receives it.
        assert_eq!(peer_ids(&ask(&mut s, &a, 1, [0], t)), vec![seed.id.clone()]);
        let r = ask(&mut s, &b, 1, [0], t);
        assert_eq!(
            source_of(&r, 0),
            &Source::Peer {
                id: a.id.clone(),
                addr: a.addr.clone(),
                relay: true,
            }
        );
        assert_eq!(
            r.digests[0],
            Some(digest(0)),
            "a relayed piece is checked like any other"
        );
        // And c through b, the relay of a relay.
        let r = ask(&mut s, &c, 1, [0], t);
        assert!(
            matches!(source_of(&r, 0), Source::Peer { id, relay: true, .. } if *id == b.id),
            "{r:?}"
        );
        // a's transfer fails (it asks again): what it relayed is over too (b's bytes came from a, and c's from b
        // go on only until b asks again), so a gets the free seed, not b.
        let r = ask(&mut s, &a, 1, [0], t);
        assert_eq!(peer_ids(&r), vec![seed.id.clone()]);
        assert!(matches!(source_of(&r, 0), Source::Peer { relay: false, .. }), "{r:?}");
        assert_eq!(inflight(&s, "p1"), 0, "b's transfer from a is over");
        // b asks again (its relay was cut short): through a again.
        let r = ask(&mut s, &b, 1, [0], t);
        assert!(
            matches!(source_of(&r, 0), Source::Peer { id, relay: true, .. } if *id == a.id),
            "{r:?}"
        );
        // Once they hold the piece they are ordinary holders.
        for p in [&a, &b, &c] {
            have(&mut s, p, 1, &[0], t);
        }
        let r = ask(&mut s, &peer(4), 1, [0], t);
        assert!(matches!(source_of(&r, 0), Source::Peer { relay: false, .. }), "{r:?}");
    }

    #[test]
    fn relays_whose_chain_has_lost_its_root_are_no_source() {
        let mut s = State::new(Policy {
            max_uploads_per_peer: 1,
            ..Policy::default()
        });
        let t = Instant::now();
        let (seed, a, b, c, d) = (peer(100), peer(1), peer(2), peer(3), peer(4));
        have(&mut s, &seed, 1, &[0], t);
        assert_eq!(peer_ids(&ask(&mut s, &a, 1, [0], t)), vec![seed.id.clone()]);
        assert_eq!(peer_ids(&ask(&mut s, &b, 1, [0], t)), vec![a.id.clone()]);
        assert_eq!(peer_ids(&ask(&mut s, &c, 1, [0], t)), vec![b.id.clone()]);
        // The seed leaves: a's transfer is over, so b's and c's bytes come from nowhere. d gets the origin, not c.
        let gone = Announce {
            peer: seed.clone(),
            shape: shape(1),
            have: vec![],
            digests: vec![],
            done: false,
            gone: true,
        };
        s.announce(TASK, &gone, t).unwrap();
        let r = ask(&mut s, &d, 1, [0], t);
        assert_eq!(origins(&r), vec![0], "{r:?}");
        // And the lease holder is the root of a new chain.
        let r = ask(&mut s, &b, 1, [0], t);
        assert!(
            matches!(source_of(&r, 0), Source::Peer { id, relay: true, .. } if *id == d.id),
            "{r:?}"
        );
    }

    /// A node from before relays (no `relays` in its `Peer`) would take a relay's short answer for a corrupt piece,
    /// and its peer API serves only what it holds: it is neither sent to a relay nor named as one.
    #[test]
    fn nodes_that_do_not_speak_relays_are_neither_given_one_nor_used_as_one() {
        let mut s = State::new(Policy {
            max_uploads_per_peer: 1,
            ..Policy::default()
        });
        let t = Instant::now();
        let old = |i| Peer {
            relays: false,
            ..peer(i)
        };
        let (seed, a, b) = (peer(100), peer(1), peer(2));
        have(&mut s, &seed, 2, &[0], t);
        // a receives piece 0 from the seed, which is then full: an old node gets nothing (a would relay it)...
        assert_eq!(peer_ids(&ask(&mut s, &a, 2, [0], t)), vec![seed.id.clone()]);
        let r = ask(&mut s, &old(3), 2, [0], t);
        assert!(r.assignments.iter().all(|x| x.source == Source::Wait), "{r:?}");
        // ...while a new one gets the relay.
        assert!(matches!(
            source_of(&ask(&mut s, &b, 2, [0], t), 0),
            Source::Peer { relay: true, .. }
        ));
        // An old node receiving a piece is no relay, and an old lease holder neither.
        let mut s = State::new(Policy {
            max_uploads_per_peer: 1,
            ..Policy::default()
        });
        have(&mut s, &seed, 2, &[0], t);
        assert_eq!(peer_ids(&ask(&mut s, &old(4), 2, [0], t)), vec![seed.id.clone()]);
        let r = ask(&mut s, &b, 2, [0], t);
        assert!(r.assignments.iter().all(|x| x.source == Source::Wait), "{r:?}");
        assert_eq!(origins(&ask(&mut s, &old(5), 2, [1], t)), vec![1]);
        let r = ask(&mut s, &a, 2, [1], t);
        assert!(r.assignments.iter().all(|x| x.source == Source::Wait), "{r:?}");
    }

    #[test]
    fn no_relay_when_turned_off_or_its_source_is_suspect() {
        let t = Instant::now();
        let (seed, a, b) = (peer(100), peer(1), peer(2));
        let mut off = State::new(Policy {
            max_uploads_per_peer: 1,
            relay: false,
            ..Policy::default()
        });
        have(&mut off, &seed, 1, &[0], t);
        ask(&mut off, &a, 1, [0], t);
        let r = ask(&mut off, &b, 1, [0], t);
        assert!(r.assignments.is_empty(), "the seed is full and a is no source: {r:?}");

        let mut s = State::new(Policy::default());
        have(&mut s, &seed, 1, &[0], t);
        have(&mut s, &peer(101), 1, &[0], t);
        assert_eq!(peer_ids(&ask(&mut s, &a, 1, [0], t)).len(), 1);
        let source = inflight_source(&s, &a);
        // a's source is reported unreachable: a's transfer will fail, so a relays nothing.
        report(
            &mut s,
            &b,
            &peer(if source == "p100" { 100 } else { 101 }),
            ReportReason::Unreachable,
            t,
        );
        let r = ask(&mut s, &b, 1, [0], t);
        assert!(
            matches!(source_of(&r, 0), Source::Peer { id, relay: false, .. } if *id != source),
            "{r:?}"
        );
    }

    #[test]
    fn a_holder_serves_at_most_its_upload_cap() {
        let mut s = State::new(Policy {
            // Holders only: relays have their own tests.
            relay: false,
            max_uploads_per_peer: 2,
            ..Policy::default()
        });
        let t = Instant::now();
        let seed = peer(100);
        have(&mut s, &seed, 8, &(0..8).collect::<Vec<_>>(), t);
        // Three requesters of everything: the seed serves two transfers, then nothing more is startable.
        let r1 = ask(&mut s, &peer(1), 8, 0..8, t);
        assert_eq!(peer_ids(&r1).len(), 2, "{r1:?}");
        let r2 = ask(&mut s, &peer(2), 8, 0..8, t);
        assert!(peer_ids(&r2).is_empty(), "the seed is full: {r2:?}");
        assert_eq!(inflight(&s, "p100"), 2);
        // One transfer ends (its piece announced): one slot for the next requester.
        let p = r1.assignments[0].piece;
        have(&mut s, &peer(1), 8, &[p], t);
        let r3 = ask(&mut s, &peer(3), 8, 0..8, t);
        let from_seed = peer_ids(&r3).iter().filter(|i| **i == seed.id).count();
        assert_eq!(from_seed, 1, "{r3:?}");
        assert_eq!(inflight(&s, "p100"), 2);
        // peer 1 holds a piece now and has a free slot: peer 2 gets it from there although the seed is full.
        let r2 = ask(&mut s, &peer(2), 8, 0..8, t);
        assert_eq!(peer_ids(&r2), vec![peer(1).id], "{r2:?}");
    }

    #[test]
    fn announce_names_the_other_swarms_of_a_holder_freed_from_its_cap() {
        let mut s = State::new(Policy {
            max_uploads_per_peer: 1,
            ..Policy::default()
        });
        let t = Instant::now();
        let (seed, a) = (peer(100), peer(1));
        let other = format!("sha256:{}", "b".repeat(64));
        have(&mut s, &seed, 4, &[0, 1, 2, 3], t);
        let digests = vec![(0, "0".repeat(64))];
        let shape = shape(4);
        s.announce(
            &other,
            &Announce {
                peer: seed.clone(),
                shape: shape.clone(),
                have: vec![0],
                digests,
                done: false,
                gone: false,
            },
            t,
        )
        .unwrap();
        let r = ask(&mut s, &a, 4, [0], t);
        assert_eq!(peer_ids(&r), vec![seed.id.clone()]);
        // Its only slot is taken: announcing the piece frees it, and the seed's other swarm is named.
        let woken = s
            .announce(
                TASK,
                &Announce {
                    peer: a.clone(),
                    shape: shape.clone(),
                    have: vec![0],
                    digests: vec![],
                    done: false,
                    gone: false,
                },
                t,
            )
            .unwrap();
        assert_eq!(woken, vec![other.clone()]);
        // A second announcement frees nothing.
        let woken = s
            .announce(
                TASK,
                &Announce {
                    peer: a,
                    shape,
                    have: vec![0],
                    digests: vec![],
                    done: false,
                    gone: false,
                },
                t,
            )
            .unwrap();
        assert!(woken.is_empty());
    }

    #[test]
    fn origin_leases_are_capped_per_origin_over_its_swarms() {
        let mut s = State::new(Policy {
            max_origin_leases: 3,
            ..Policy::default()
        });
        let t = Instant::now();
        let req = |i: usize, origin: &str| ScheduleRequest {
            max_origin: Some(1),
            origin: Some(origin.to_owned()),
            ..request(&peer(i), 64, 0..64)
        };
        let tasks: Vec<String> = (0..5)
            .map(|i| format!("sha256:{}", format!("{i}").repeat(64)))
            .collect();
        let mut leases = 0;
        for (i, task) in tasks.iter().enumerate() {
            let r = s.schedule(task, &req(i, "https://registry.test"), t).unwrap();
            leases += origins(&r).len();
        }
        assert_eq!(leases, 3, "one origin, five swarms: three leases in all");
        // Another origin has its own budget.
        let r = s.schedule(&tasks[0], &req(9, "https://other.test"), t).unwrap();
        assert!(
            origins(&r).is_empty(),
            "a swarm keeps the origin it was first named with"
        );
        let other = format!("sha256:{}", "f".repeat(64));
        let r = s.schedule(&other, &req(9, "https://other.test"), t).unwrap();
        assert_eq!(origins(&r).len(), 1);
    }

    #[test]
    fn slots_bound_what_is_started() {
        let mut s = State::new(Policy::default());
        let t = Instant::now();
        have(&mut s, &peer(100), 8, &(0..8).collect::<Vec<_>>(), t);
        have(&mut s, &peer(101), 8, &(0..8).collect::<Vec<_>>(), t);
        let r = s
            .schedule(
                TASK,
                &ScheduleRequest {
                    slots: Some(3),
                    ..request(&peer(1), 8, 0..8)
                },
                t,
            )
            .unwrap();
        assert_eq!(peer_ids(&r).len(), 3, "{r:?}");
        assert_eq!(inflight(&s, "p100") + inflight(&s, "p101"), 3);
        // Its other task asks with the same slots: one left (the three above are still in flight).
        have(&mut s, &peer(100), 8, &[], t);
        let other = ScheduleRequest {
            slots: Some(4),
            ..request(&peer(1), 8, 0..8)
        };
        for p in 0..8 {
            let a = Announce {
                peer: peer(100),
                shape: shape(8),
                have: vec![p],
                digests: vec![(p, digest(p))],
                done: false,
                gone: false,
            };
            s.announce(OTHER, &a, t).unwrap();
        }
        publish(&mut s, OTHER, &(0..8).collect::<Vec<_>>());
        let r2 = s.schedule(OTHER, &other, t).unwrap();
        assert_eq!(peer_ids(&r2).len(), 1, "{r2:?}");
        // One of the first three is announced, and OTHER asks again for everything (ending its own transfer, which
        // it evidently gave up): two slots.
        have(&mut s, &peer(1), 8, &[r.assignments[0].piece], t);
        let r3 = s.schedule(OTHER, &other, t).unwrap();
        assert_eq!(peer_ids(&r3).len(), 2, "{r3:?}");
    }

    /// An announce flood (each a new task of the largest shape, from ever new peer ids) cannot grow the state past
    /// its bounds: new swarms are refused once [`MAX_TOTAL_PIECES`] pieces are held, new peers past [`MAX_PEERS`];
    /// what the sweeper forgets makes room again.
    #[test]
    fn an_announce_flood_is_bounded() {
        let mut s = State::new(Policy::default());
        let t = Instant::now();
        let biggest = TaskShape {
            size: u64::from(MAX_PIECES) * piece::MIN_PIECE,
            piece_len: piece::MIN_PIECE,
        };
        let mut refused = 0;
        for i in 0..300u32 {
            let task = format!("sha256:{i:064x}");
            let a = Announce {
                peer: peer(i as usize),
                shape: biggest.clone(),
                have: vec![],
                digests: vec![],
                done: false,
                gone: false,
            };
            match s.announce(&task, &a, t) {
                Ok(_) => {}
                Err(StateError::Full(what)) => {
                    assert_eq!(what, "pieces");
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
            assert!(s.pieces_allocated <= MAX_TOTAL_PIECES);
        }
        let fit = MAX_TOTAL_PIECES / MAX_PIECES as usize;
        assert_eq!(refused, 300 - fit, "every swarm that fits is admitted, none more");
        assert_eq!(s.swarms.len(), fit);
        // The sweeper forgets the silent peers and their swarms: the room comes back.
        s.sweep(t + s.policy.forget_after + Duration::from_secs(1));
        assert_eq!((s.swarms.len(), s.pieces_allocated), (0, 0));

        // Peers: past the bound, a new id is refused; a known one still gets through.
        let mut s = State::new(Policy::default());
        for i in 0..MAX_PEERS {
            s.touch(&peer(i), t).unwrap();
        }
        assert!(matches!(s.touch(&peer(MAX_PEERS), t), Err(StateError::Full("peers"))));
        assert!(s.touch(&peer(7), t).is_ok());
    }
}
