//! Online garbage collection of an [`FsStore`]: deletes blobs that no kept manifest references, while the registry
//! goes on serving pushes and pulls (it never turns read-only).
//!
//! # What is kept (mark)
//!
//! Per repository, the roots are every manifest revision, or with [`GcOptions::delete_untagged`] only the tagged
//! revisions and the untagged ones younger than the grace period. From each kept manifest the mark follows, within
//! its repository: the children of an index (so every image of a multi-arch index survives with it), the referrers
//! whose subject it is (`_referrers/<subject>/`: signatures, SBOMs, and their own referrers), and marks the blobs it
//! names (its own bytes, config, layers, children). A manifest that does not parse as one has every `digest` in its
//! JSON marked instead. Blobs are global: a blob survives if any repository keeps a manifest naming it.
//!
//! # What goes (sweep)
//!
//! - With `delete_untagged`: untagged revisions that nothing kept reaches and whose revision link is older than
//!   the grace period (with their entry in their subject's referrers). Their blobs then go like any others.
//! - Blob files under `blobs/` that are not marked and whose modification time is older than the grace period
//!   (default one hour), measured from the start of the run: `mtime < start - grace`.
//! - `_layers` links of repositories to blobs that are gone.
//! - Upload sessions (`uploads/<uuid>/`) untouched for longer than the upload TTL (default a day) and not in use,
//!   and leftovers in `tmp/` as old (a crash in the middle of an atomic write).
//!
//! A dry run computes the same sets and deletes nothing.
//!
//! # Why a push that runs during a collection is never broken
//!
//! Every write that makes content reachable runs under the shared side of `FsStore::gc_lock` and, under it,
//! refreshes the modification time of what it reuses: a blob commit (`publish` in `fs/upload.rs`: the blob's
//! mtime is "now", whether it was renamed in or was already there), a cross-repository mount (`link_blob`), and a
//! manifest PUT (its own bytes, every blob it references, its index children's blobs and revisions; new revision
//! and tag links are new files). A collection takes the exclusive side twice: once at the start, as a barrier, to
//! read the start time from the filesystem's own clock (the mtime of `tmp/gc-clock`, touched the way blobs are);
//! and around each batch of deletions, where it re-reads every candidate's mtime (and, for a revision, the tags)
//! and spares any that became fresh. So for every write section W:
//!
//! - W ended before the barrier: what it linked (revision, tags, referrer entry) is on disk before the mark
//!   lists it, so if its manifest is a root, or reached from one, everything it names is marked.
//! - W began after the barrier: everything W touched has `mtime >= start > start - grace`, so no deletion of this
//!   run takes it, even with a grace period of 0. A blob W needed that an earlier deletion already took is missing
//!   under the lock: a commit brings its own bytes, and a manifest PUT fails with `BLOB_UNKNOWN` (the store is
//!   opened with [`FsStore::verify_references`]) instead of storing a manifest with a hole.
//!
//! What the grace period then protects is the time *between* writes of one push: blobs uploaded, then the manifest
//! that names them. A blob is deleted only if it was last committed, mounted or named more than `grace` before the
//! run began and nothing kept names it, so a push whose manifest follows its blobs within the grace period is safe.
//! One that takes longer, or a client that reuses an old unreferenced blob it only checked with HEAD, can see its
//! manifest PUT refused (never accepted with a hole) and pushes again.
//!
//! Upload sessions are guarded by their own lock: one that a request holds is never expired.
//!
//! # Caches
//!
//! A serving process keeps blob descriptors and manifests in a [`CachedStore`]. [`collect_cached`] deletes through
//! the filesystem store and, inside the same exclusive section, tells the cache what went
//! ([`CachedStore::forget_blobs`] and friends), so a HEAD after a sweep never answers 200 for a deleted blob.
//! Another process cannot reach that cache: `wharf gc` refuses to delete while a server holds the root's
//! [`RootLock`] (shared for `wharf serve`, exclusive for a collection from the command line).
//!
//! A collection that is asked to stop ([`GcOptions::stop`]) returns after the batch at hand: every step is safe to
//! interrupt and the next run picks up the rest.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use wharf_oci::Digest;
use wharf_oci::manifest::{Descriptor, ManifestView};

use crate::atomic::{create_dir_all, list_dir, read_optional, remove_optional, touch};
use crate::cache::CachedStore;
use crate::fs::FsStore;
use crate::gc::{GcOptions, GcReport, RemovedBlob, RemovedManifest, RemovedUpload, Revision, mark_repository};
use crate::paths::Layout;
use crate::{Result, StorageError};

/// Blobs deleted per exclusive section: pushes that reuse content wait at most for one batch.
const BATCH: usize = 128;
/// The file whose mtime is the run's start, on the filesystem's clock.
const CLOCK_FILE: &str = "gc-clock";

/// Collects garbage in `store`. Blocking (run it on a blocking thread); safe while the store serves requests in
/// this process, through this same `FsStore`. A [`CachedStore`] in front of it must hear of deletions: use
/// [`collect_cached`] then.
pub fn collect(store: &FsStore, opts: &GcOptions) -> Result<GcReport> {
    run(store, opts, &NoCache, &|_| {})
}

/// Removes the upload sessions untouched for longer than `ttl` and not in use, and nothing else: what a server with
/// garbage collection off runs so abandoned uploads do not fill the disk. Blocking.
pub fn expire_uploads(store: &FsStore, ttl: Duration) -> Result<Vec<RemovedUpload>> {
    // The collector's own step, alone: the same rule for which sessions go.
    let opts = GcOptions {
        upload_ttl: ttl,
        ..GcOptions::default()
    };
    let mut gc = Gc {
        fs: store,
        layout: store.layout(),
        opts: &opts,
        forget: &NoCache,
        cutoff: SystemTime::UNIX_EPOCH,
        marked: HashSet::new(),
        report: GcReport::default(),
    };
    gc.expire_uploads()?;
    Ok(gc.report.uploads)
}

/// [`collect`] for a store behind a [`CachedStore`]: what is deleted is forgotten by the cache too.
pub fn collect_cached(store: &CachedStore<FsStore>, opts: &GcOptions) -> Result<GcReport> {
    run(store.inner(), opts, store, &|_| {})
}

/// What a cache in front of the store must forget. Called inside the exclusive section, after the deletion.
trait Forget {
    fn blobs(&self, digests: &[Digest]);
    fn links(&self, repo: &str, digests: &[Digest]);
    fn manifest(&self, repo: &str, digest: &Digest);
}

struct NoCache;

impl Forget for NoCache {
    fn blobs(&self, _: &[Digest]) {}
    fn links(&self, _: &str, _: &[Digest]) {}
    fn manifest(&self, _: &str, _: &Digest) {}
}

impl Forget for CachedStore<FsStore> {
    fn blobs(&self, digests: &[Digest]) {
        self.forget_blobs(digests);
    }
    fn links(&self, repo: &str, digests: &[Digest]) {
        self.forget_links(repo, digests);
    }
    fn manifest(&self, repo: &str, digest: &Digest) {
        self.forget_manifest(repo, digest);
    }
}

/// One repository as the mark saw it.
struct Repo {
    name: String,
    /// Revisions and the mtime of their link.
    revisions: BTreeMap<Digest, SystemTime>,
    kept: HashSet<Digest>,
}

struct Gc<'a> {
    fs: &'a FsStore,
    layout: &'a Layout,
    opts: &'a GcOptions,
    forget: &'a dyn Forget,
    cutoff: SystemTime,
    marked: HashSet<Digest>,
    report: GcReport,
}

/// Where a run stands, for the hook that tests use to put a concurrent push between two steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The mark is done; nothing is deleted yet.
    Marked,
    /// Blob candidates are listed; none is deleted yet.
    Listed,
}

fn run(fs: &FsStore, opts: &GcOptions, forget: &dyn Forget, hook: &dyn Fn(Stage)) -> Result<GcReport> {
    let began = Instant::now();
    let layout = fs.layout();
    let start = {
        // The barrier: writes that make content reachable are either finished (visible to the mark) or not yet
        // begun (and will stamp what they touch with a time no earlier than `start`).
        let _barrier = fs.gc_lock.write().unwrap_or_else(|p| p.into_inner());
        filesystem_now(layout).or_else(|e| if opts.dry_run { Ok(SystemTime::now()) } else { Err(e) })?
    };
    let mut gc = Gc {
        fs,
        layout,
        opts,
        forget,
        cutoff: start.checked_sub(opts.grace_period).unwrap_or(SystemTime::UNIX_EPOCH),
        marked: HashSet::new(),
        report: GcReport {
            dry_run: opts.dry_run,
            ..GcReport::default()
        },
    };
    let finished = gc.steps(hook)?;
    // The layer index forgets the deleted blobs (a cache in front heard of them through `Forget::blobs`).
    if !opts.dry_run && !gc.report.blobs.is_empty() {
        let gone: HashSet<Digest> = gc.report.blobs.iter().map(|b| b.digest.clone()).collect();
        gc.report.index_entries = super::layer_index::prune(layout, crate::Prune::Blobs(&gone))?;
    }
    gc.report.interrupted = !finished;
    gc.report.marked_blobs = gc.marked.len();
    gc.report.blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
    gc.report.bytes_reclaimed =
        gc.report.blobs.iter().map(|b| b.size).sum::<u64>() + gc.report.uploads.iter().map(|u| u.size).sum::<u64>();
    gc.report.duration_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(gc.report)
}

/// "Now" on the filesystem's clock: the mtime of a file just touched, the same way blobs are.
fn filesystem_now(layout: &Layout) -> Result<SystemTime> {
    let tmp = layout.tmp();
    create_dir_all(&tmp)?;
    let path = tmp.join(CLOCK_FILE);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StorageError::io(&path, e))?;
    touch(&path)?;
    mtime(&path)?.ok_or_else(|| StorageError::io(&path, io::ErrorKind::NotFound.into()))
}

/// A file's modification time; `None` if it does not exist.
fn mtime(path: &Path) -> Result<Option<SystemTime>> {
    match fs::metadata(path) {
        Ok(m) => m.modified().map(Some).map_err(|e| StorageError::io(path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io(path, e)),
    }
}

/// Digests stored as `<dir>/<alg>/<hex>` (revisions, `_layers`).
fn digests_under(dir: &Path) -> Result<Vec<(Digest, PathBuf)>> {
    let mut out = Vec::new();
    for alg in list_dir(dir)? {
        for hex in list_dir(&dir.join(&alg))? {
            if let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() {
                out.push((d, dir.join(&alg).join(&hex)));
            }
        }
    }
    Ok(out)
}

impl Gc<'_> {
    fn stopped(&self) -> bool {
        self.opts.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// Runs every step; false if stopped early.
    fn steps(&mut self, hook: &dyn Fn(Stage)) -> Result<bool> {
        let mut repos = Vec::new();
        let mut names = Vec::new();
        FsStore::walk_repositories(&self.layout.repositories(), "", &mut names)?;
        for name in names {
            if self.stopped() {
                return Ok(false);
            }
            repos.push(self.mark(name)?);
        }
        hook(Stage::Marked);
        if self.opts.delete_untagged {
            for repo in &repos {
                if self.stopped() {
                    return Ok(false);
                }
                self.delete_untagged(repo)?;
            }
        }
        if !self.sweep_blobs(hook)? {
            return Ok(false);
        }
        let doomed: HashSet<Digest> = self.report.blobs.iter().map(|b| b.digest.clone()).collect();
        for repo in &repos {
            if self.stopped() {
                return Ok(false);
            }
            self.sweep_links(&repo.name, &doomed)?;
        }
        self.expire_uploads()?;
        self.clean_tmp()?;
        Ok(!self.stopped())
    }

    /// The tagged digests of `repo`, read from disk.
    fn tagged(&self, repo: &str) -> Result<HashSet<Digest>> {
        let mut out = HashSet::new();
        for tag in list_dir(&self.layout.tags(repo))? {
            if let Some(raw) = read_optional(&self.layout.tag(repo, &tag))?
                && let Ok(d) = String::from_utf8_lossy(&raw).trim().parse()
            {
                out.insert(d);
            }
        }
        Ok(out)
    }

    fn mark(&mut self, name: String) -> Result<Repo> {
        let mut revisions = BTreeMap::new();
        for (d, path) in digests_under(&self.layout.repo(&name).join("_manifests/revisions"))? {
            if let Some(t) = mtime(&path)? {
                revisions.insert(d, t);
            }
        }
        let tagged = self.tagged(&name)?;
        let roots: Vec<Digest> = revisions
            .iter()
            .filter(|(d, t)| !self.opts.delete_untagged || tagged.contains(*d) || **t >= self.cutoff)
            .map(|(d, _)| d.clone())
            .collect();
        let layout = self.layout;
        let kept = mark_repository(
            &name,
            roots,
            |d| revisions.contains_key(d),
            |d| {
                let media_type = read_optional(&layout.revision(&name, d))?
                    .map(|m| String::from_utf8_lossy(&m).into_owned())
                    .unwrap_or_default();
                let dir = layout.referrers(&name, d);
                let mut referrers = Vec::new();
                for entry in list_dir(&dir)? {
                    let Some(raw) = read_optional(&dir.join(&entry))? else {
                        continue;
                    };
                    match serde_json::from_slice::<Descriptor>(&raw) {
                        Ok(r) => referrers.push(r.digest),
                        Err(e) => {
                            tracing::warn!(path = %dir.join(&entry).display(), error = %e, "gc: corrupt referrer entry")
                        }
                    }
                }
                Ok::<_, StorageError>(Revision {
                    body: read_optional(&layout.blob(d))?,
                    media_type,
                    referrers,
                })
            },
            &mut self.marked,
        )?;
        Ok(Repo { name, revisions, kept })
    }

    fn blob_size(&self, d: &Digest) -> u64 {
        fs::metadata(self.layout.blob(d)).map(|m| m.len()).unwrap_or(0)
    }

    fn delete_untagged(&mut self, repo: &Repo) -> Result<()> {
        let candidates: Vec<&Digest> = repo
            .revisions
            .iter()
            .filter(|(d, t)| !repo.kept.contains(*d) && **t < self.cutoff)
            .map(|(d, _)| d)
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        if self.opts.dry_run {
            for d in candidates {
                let size = self.blob_size(d);
                self.report.manifests.push(RemovedManifest {
                    repository: repo.name.clone(),
                    digest: d.clone(),
                    size,
                });
            }
            return Ok(());
        }
        let lock = self.fs.gc_lock.clone();
        let _exclusive = lock.write().unwrap_or_else(|p| p.into_inner());
        let tagged = self.tagged(&repo.name)?;
        for d in candidates {
            let revision = self.layout.revision(&repo.name, d);
            if tagged.contains(d) || mtime(&revision)?.is_none_or(|t| t >= self.cutoff) {
                self.report.spared += 1;
                continue;
            }
            let body = read_optional(&self.layout.blob(d))?;
            if let Some(body) = &body
                && let Ok(view) = ManifestView::parse(body, None)
                && let Some(subject) = view.subject
            {
                remove_optional(&self.layout.referrer(&repo.name, &subject.digest, d))?;
            }
            if remove_optional(&revision)? {
                self.forget.manifest(&repo.name, d);
                self.report.manifests.push(RemovedManifest {
                    repository: repo.name.clone(),
                    digest: d.clone(),
                    size: body.map_or(0, |b| b.len() as u64),
                });
            }
        }
        Ok(())
    }

    /// Deletes unmarked blobs older than the cutoff; false if stopped early.
    fn sweep_blobs(&mut self, hook: &dyn Fn(Stage)) -> Result<bool> {
        let base = self.layout.root().join("blobs");
        let mut candidates = Vec::new();
        for alg in list_dir(&base)? {
            for prefix in list_dir(&base.join(&alg))? {
                let dir = base.join(&alg).join(&prefix);
                for hex in list_dir(&dir)? {
                    let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() else {
                        continue;
                    };
                    if self.marked.contains(&d) {
                        continue;
                    }
                    let path = dir.join(&hex);
                    let Ok(meta) = fs::metadata(&path) else {
                        continue;
                    };
                    let t = meta.modified().map_err(|e| StorageError::io(&path, e))?;
                    if meta.is_file() && t < self.cutoff {
                        candidates.push((d, path, meta.len()));
                    }
                }
            }
        }
        hook(Stage::Listed);
        if self.opts.dry_run {
            self.report.blobs.extend(
                candidates
                    .into_iter()
                    .map(|(digest, _, size)| RemovedBlob { digest, size }),
            );
            return Ok(true);
        }
        for batch in candidates.chunks(BATCH) {
            if self.stopped() {
                return Ok(false);
            }
            let lock = self.fs.gc_lock.clone();
            let _exclusive = lock.write().unwrap_or_else(|p| p.into_inner());
            let mut gone = Vec::new();
            for (d, path, size) in batch {
                // Re-read under the lock: a commit, mount or manifest PUT since the mark made it fresh.
                if mtime(path)?.is_none_or(|t| t >= self.cutoff) {
                    self.report.spared += 1;
                    continue;
                }
                if remove_optional(path)? {
                    gone.push(d.clone());
                    self.report.blobs.push(RemovedBlob {
                        digest: d.clone(),
                        size: *size,
                    });
                }
            }
            self.forget.blobs(&gone);
        }
        Ok(true)
    }

    /// Removes `repo`'s links to blobs that are gone (or, in a dry run, would be).
    fn sweep_links(&mut self, repo: &str, doomed: &HashSet<Digest>) -> Result<()> {
        let mut dangling = Vec::new();
        for (d, path) in digests_under(&self.layout.repo(repo).join("_layers"))? {
            if doomed.contains(&d) || !self.layout.blob(&d).exists() {
                dangling.push((d, path));
            }
        }
        if dangling.is_empty() {
            return Ok(());
        }
        if self.opts.dry_run {
            self.report.links += dangling.len();
            return Ok(());
        }
        let lock = self.fs.gc_lock.clone();
        let _exclusive = lock.write().unwrap_or_else(|p| p.into_inner());
        let mut removed = Vec::new();
        for (d, path) in dangling {
            // Under the lock a blob is never missing half-way through a commit: a link without its blob is dead.
            if !self.layout.blob(&d).exists() && remove_optional(&path)? {
                removed.push(d);
            }
        }
        self.report.links += removed.len();
        self.forget.links(repo, &removed);
        Ok(())
    }

    fn expire_uploads(&mut self) -> Result<()> {
        let cutoff = SystemTime::now()
            .checked_sub(self.opts.upload_ttl)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for id in list_dir(&self.layout.uploads())? {
            if self.stopped() {
                return Ok(());
            }
            if let Some((repository, size)) = self.fs.expire_upload(&id, cutoff, self.opts.dry_run)? {
                self.report.uploads.push(RemovedUpload { id, repository, size });
            }
        }
        Ok(())
    }

    fn clean_tmp(&mut self) -> Result<()> {
        let cutoff = SystemTime::now()
            .checked_sub(self.opts.upload_ttl)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let tmp = self.layout.tmp();
        for name in list_dir(&tmp)? {
            let path = tmp.join(&name);
            if name == CLOCK_FILE || !path.is_file() || mtime(&path)?.is_none_or(|t| t >= cutoff) {
                continue;
            }
            if self.opts.dry_run || remove_optional(&path)? {
                self.report.tmp_files += 1;
            }
        }
        Ok(())
    }
}

/// An advisory lock on a store's root (`<root>/gc.lock`, `flock`), held for a process's lifetime: shared by each
/// `wharf serve` using the root, exclusive by a `wharf gc` that deletes. Released when dropped or when the process
/// dies.
pub struct RootLock {
    _file: File,
}

impl RootLock {
    /// Takes the lock shared (a server). `None` if a collection holds it exclusively.
    pub fn shared(root: &Path) -> io::Result<Option<RootLock>> {
        Self::take(root, libc::LOCK_SH)
    }

    /// Takes the lock exclusively (a collection from another process). `None` if anyone else holds it.
    pub fn exclusive(root: &Path) -> io::Result<Option<RootLock>> {
        Self::take(root, libc::LOCK_EX)
    }

    fn take(root: &Path, mode: libc::c_int) -> io::Result<Option<RootLock>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("gc.lock"))?;
        // SAFETY: the fd is open for the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(RootLock { _file: file }));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use bytes::Bytes;
    use wharf_oci::media;

    use super::*;
    use crate::Uploads;
    use crate::{ByteStream, CacheConfig, NewManifest, Reference, RegistryStore};

    const HOUR: Duration = Duration::from_secs(3600);

    fn store() -> (tempfile::TempDir, FsStore) {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsStore::open(dir.path()).unwrap().verify_references(true);
        (dir, fs)
    }

    fn once(data: Vec<u8>) -> ByteStream {
        Box::pin(futures_util::stream::iter([Ok(Bytes::from(data))]))
    }

    fn desc(media_type: &str, data: &[u8]) -> serde_json::Value {
        serde_json::json!({"mediaType": media_type, "digest": Digest::sha256_of(data).to_string(), "size": data.len()})
    }

    async fn blob(fs: &FsStore, repo: &str, data: &[u8]) -> Digest {
        let d = Digest::sha256_of(data);
        fs.put_blob(repo, &d, once(data.to_vec())).await.unwrap();
        d
    }

    async fn manifest(fs: &FsStore, repo: &str, tag: Option<&str>, json: serde_json::Value) -> (Digest, u64) {
        let body = Bytes::from(serde_json::to_vec(&json).unwrap());
        let digest = Digest::sha256_of(&body);
        let view = ManifestView::parse(&body, None).unwrap();
        let referrer = view.subject.as_ref().map(|s| {
            (
                s.digest.clone(),
                view.referrer_descriptor(digest.clone(), body.len() as u64),
            )
        });
        let size = body.len() as u64;
        fs.put_manifest(
            repo,
            NewManifest {
                digest: digest.clone(),
                media_type: view.media_type.clone(),
                body,
                tags: tag.into_iter().map(str::to_owned).collect(),
                referrer,
            },
        )
        .await
        .unwrap();
        (digest, size)
    }

    /// Pushes an image (config + layers, blobs first), optionally tagged, optionally a referrer of `subject`.
    async fn image(
        fs: &FsStore,
        repo: &str,
        tag: Option<&str>,
        config: &[u8],
        layers: &[&[u8]],
        subject: Option<(Digest, u64)>,
    ) -> (Digest, u64) {
        blob(fs, repo, config).await;
        for l in layers {
            blob(fs, repo, l).await;
        }
        let mut json = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", config),
            "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar+gzip", l)).collect::<Vec<_>>(),
        });
        if let Some((d, size)) = subject {
            json["subject"] =
                serde_json::json!({"mediaType": media::OCI_MANIFEST, "digest": d.to_string(), "size": size});
        }
        manifest(fs, repo, tag, json).await
    }

    async fn index(fs: &FsStore, repo: &str, tag: Option<&str>, children: &[(Digest, u64)]) -> (Digest, u64) {
        let manifests: Vec<_> = children
            .iter()
            .map(|(d, s)| serde_json::json!({"mediaType": media::OCI_MANIFEST, "digest": d.to_string(), "size": s}))
            .collect();
        let json = serde_json::json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests});
        manifest(fs, repo, tag, json).await
    }

    /// Makes everything in the store look `age` old.
    fn backdate(dir: &Path, age: Duration) {
        let then = SystemTime::now() - age;
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                backdate(&path, age);
            } else {
                File::options()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_modified(then)
                    .unwrap();
            }
        }
        File::open(dir).unwrap().set_modified(then).unwrap();
    }

    fn opts(delete_untagged: bool) -> GcOptions {
        GcOptions {
            delete_untagged,
            ..GcOptions::default()
        }
    }

    fn blob_exists(fs: &FsStore, d: &Digest) -> bool {
        fs.layout().blob(d).exists()
    }

    fn swept(r: &GcReport) -> HashSet<Digest> {
        r.blobs.iter().map(|b| b.digest.clone()).collect()
    }

    /// Every blob `repo:reference` needs is readable, through index children.
    async fn assert_complete(fs: &FsStore, repo: &str, reference: Reference) {
        let m = fs.get_manifest(repo, &reference).await.unwrap().expect("manifest");
        let view = ManifestView::parse(&m.body, Some(&m.media_type)).unwrap();
        for d in view.required_blobs() {
            assert!(
                fs.repo_blob_size(repo, &d.digest).await.unwrap().is_some(),
                "{repo}: {} missing",
                d.digest
            );
        }
        for c in view.manifests {
            Box::pin(assert_complete(fs, repo, Reference::Digest(c.digest))).await;
        }
    }

    fn tag(t: &str) -> Reference {
        Reference::Tag(t.to_owned())
    }

    #[tokio::test]
    async fn multi_arch_index_children_survive() {
        let (dir, fs) = store();
        let amd = image(&fs, "app", None, b"cfg-amd64", &[b"layer-amd64"], None).await;
        let arm = image(&fs, "app", None, b"cfg-arm64", &[b"layer-arm64"], None).await;
        index(&fs, "app", Some("latest"), &[amd.clone(), arm.clone()]).await;
        let orphan = blob(&fs, "app", b"orphan").await;
        backdate(dir.path(), 2 * HOUR);

        let r = collect(&fs, &opts(true)).unwrap();
        assert_eq!(swept(&r), HashSet::from([orphan.clone()]));
        assert!(r.manifests.is_empty(), "{:?}", r.manifests);
        assert_complete(&fs, "app", tag("latest")).await;
        assert!(fs.layout().revision("app", &amd.0).exists() && fs.layout().revision("app", &arm.0).exists());
        assert_eq!(fs.repo_blob_size("app", &orphan).await.unwrap(), None);
        assert!(
            !fs.layout().layer_link("app", &orphan).exists(),
            "the link to a swept blob goes too"
        );
        assert_eq!(r.links, 1);
    }

    #[tokio::test]
    async fn referrers_of_a_kept_image_survive() {
        let (dir, fs) = store();
        let img = image(&fs, "app", Some("v1"), b"cfg", &[b"layer"], None).await;
        let sig = image(&fs, "app", None, b"sig-cfg", &[b"signature"], Some(img.clone())).await;
        // A referrer of the referrer (an attestation of the signature).
        let att = image(&fs, "app", None, b"att-cfg", &[b"attestation"], Some(sig.clone())).await;
        // A referrer of an untagged image: both go.
        let old = image(&fs, "app", None, b"old-cfg", &[b"old-layer"], None).await;
        let old_sig = image(&fs, "app", None, b"old-sig-cfg", &[b"old-signature"], Some(old.clone())).await;
        backdate(dir.path(), 2 * HOUR);

        let r = collect(&fs, &opts(true)).unwrap();
        for d in [&sig.0, &att.0] {
            assert_complete(&fs, "app", Reference::Digest(d.clone())).await;
        }
        assert_eq!(fs.referrers("app", &img.0).await.unwrap().len(), 1);
        assert_eq!(fs.referrers("app", &sig.0).await.unwrap().len(), 1);
        let gone: HashSet<Digest> = r.manifests.iter().map(|m| m.digest.clone()).collect();
        assert_eq!(gone, HashSet::from([old.0.clone(), old_sig.0.clone()]));
        assert!(fs.referrers("app", &old.0).await.unwrap().is_empty());
        for data in [&b"old-cfg"[..], b"old-layer", b"old-sig-cfg", b"old-signature"] {
            assert!(!blob_exists(&fs, &Digest::sha256_of(data)));
        }
        assert!(
            !blob_exists(&fs, &old.0) && !blob_exists(&fs, &old_sig.0),
            "manifest bytes go too"
        );
    }

    #[tokio::test]
    async fn untagged_manifests_and_their_unique_layers_go_only_with_delete_untagged() {
        let (dir, fs) = store();
        image(&fs, "app", Some("v1"), b"cfg-a", &[b"shared", b"unique-a"], None).await;
        let b = image(&fs, "app", Some("v2"), b"cfg-b", &[b"shared", b"unique-b"], None).await;
        // v2 moves to another image: b is untagged now.
        image(&fs, "app", Some("v2"), b"cfg-c", &[b"unique-c"], None).await;
        backdate(dir.path(), 2 * HOUR);

        let r = collect(&fs, &opts(false)).unwrap();
        assert!(r.blobs.is_empty() && r.manifests.is_empty(), "{r:?}");
        assert_complete(&fs, "app", Reference::Digest(b.0.clone())).await;

        let r = collect(&fs, &opts(true)).unwrap();
        assert_eq!(r.manifests.len(), 1);
        assert_eq!((r.manifests[0].digest.clone(), r.manifests[0].size), b.clone());
        let unique_b = Digest::sha256_of(b"unique-b");
        let cfg_b = Digest::sha256_of(b"cfg-b");
        assert_eq!(swept(&r), HashSet::from([unique_b.clone(), cfg_b.clone(), b.0.clone()]));
        assert_eq!(
            r.bytes_reclaimed,
            b.1 + b"unique-b".len() as u64 + b"cfg-b".len() as u64
        );
        assert!(
            blob_exists(&fs, &Digest::sha256_of(b"shared")),
            "a layer shared with a kept image stays"
        );
        assert!(fs.get_manifest("app", &Reference::Digest(b.0)).await.unwrap().is_none());
        assert_eq!(fs.repo_blob_size("app", &unique_b).await.unwrap(), None);
        assert_complete(&fs, "app", tag("v1")).await;
        assert_complete(&fs, "app", tag("v2")).await;
    }

    #[tokio::test]
    async fn grace_period_protects_fresh_blobs() {
        let (dir, fs) = store();
        let orphan = blob(&fs, "app", b"fresh orphan").await;
        image(&fs, "app", None, b"cfg", &[b"l"], None).await;
        let r = collect(&fs, &opts(true)).unwrap();
        assert!(r.blobs.is_empty() && r.manifests.is_empty(), "{r:?}");
        assert!(blob_exists(&fs, &orphan));

        backdate(dir.path(), Duration::from_secs(30 * 60));
        assert!(
            collect(&fs, &opts(true)).unwrap().blobs.is_empty(),
            "30 minutes < 1 hour"
        );
        let r = collect(
            &fs,
            &GcOptions {
                grace_period: Duration::from_secs(60),
                ..opts(true)
            },
        )
        .unwrap();
        assert_eq!(r.blobs.len(), 4, "orphan, config, layer, manifest: {r:?}");
        assert!(!blob_exists(&fs, &orphan));
    }

    #[tokio::test]
    async fn a_commit_makes_its_blob_fresh_even_if_its_bytes_are_old() {
        let (_dir, fs) = store();
        let data = b"uploaded long ago, committed now".to_vec();
        let s = fs.start_upload("app").await.unwrap();
        fs.append_upload("app", &s.id, None, once(data.clone())).await.unwrap();
        // The last append was two hours ago; the client sends the closing PUT only now.
        backdate(&fs.layout().upload_dir(&s.id), 2 * HOUR);
        let d = Digest::sha256_of(&data);
        fs.commit_upload("app", &s.id, &d).await.unwrap();
        assert!(collect(&fs, &opts(false)).unwrap().blobs.is_empty());
        assert!(blob_exists(&fs, &d));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stale_uploads_are_removed_but_not_fresh_or_busy_ones() {
        let (_dir, fs) = store();
        let fs = Arc::new(fs);
        let stale = fs.start_upload("app").await.unwrap();
        fs.append_upload("app", &stale.id, None, once(b"abc".to_vec()))
            .await
            .unwrap();
        let fresh = fs.start_upload("app").await.unwrap();
        let busy = fs.start_upload("app").await.unwrap();
        backdate(&fs.layout().upload_dir(&stale.id), 25 * HOUR);
        // An append whose body is still streaming holds its session.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let body: ByteStream = Box::pin(futures_util::stream::unfold(Some(rx), |rx| async move {
            let rx = rx?;
            let _ = rx.await;
            Some((Ok(Bytes::from_static(b"late")), None))
        }));
        let appending = {
            let (fs, id) = (fs.clone(), busy.id.clone());
            tokio::spawn(async move { fs.append_upload("app", &id, None, body).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        backdate(&fs.layout().upload_dir(&busy.id), 25 * HOUR);

        let r = {
            let fs = fs.clone();
            tokio::task::spawn_blocking(move || collect(&fs, &opts(false)))
                .await
                .unwrap()
                .unwrap()
        };
        assert_eq!(
            r.uploads,
            vec![RemovedUpload {
                id: stale.id.clone(),
                repository: "app".into(),
                size: 3
            }]
        );
        assert_eq!(r.bytes_reclaimed, 3);
        assert!(matches!(
            fs.upload_status("app", &stale.id).await,
            Err(StorageError::UploadUnknown(_))
        ));
        assert_eq!(fs.upload_status("app", &fresh.id).await.unwrap().offset, 0);
        tx.send(()).unwrap();
        assert_eq!(appending.await.unwrap().unwrap().offset, 4);
        assert_eq!(fs.upload_status("app", &busy.id).await.unwrap().offset, 4);
    }

    #[tokio::test]
    async fn dry_run_deletes_nothing_and_reports_what_a_real_run_deletes() {
        let (dir, fs) = store();
        let kept = image(&fs, "app", Some("v1"), b"cfg", &[b"shared", b"a"], None).await;
        image(&fs, "app", None, b"cfg-old", &[b"shared", b"b"], None).await;
        blob(&fs, "other", b"orphan").await;
        let s = fs.start_upload("app").await.unwrap();
        backdate(dir.path(), 25 * HOUR);
        let files = |p: &Path| {
            let mut v = Vec::new();
            fn walk(p: &Path, v: &mut Vec<PathBuf>) {
                for e in fs::read_dir(p).unwrap().flatten() {
                    if e.path().is_dir() {
                        walk(&e.path(), v);
                    } else if !e.path().ends_with(CLOCK_FILE) {
                        v.push(e.path());
                    }
                }
            }
            walk(p, &mut v);
            v.sort();
            v
        };
        let before = files(dir.path());
        let dry = collect(
            &fs,
            &GcOptions {
                dry_run: true,
                ..opts(true)
            },
        )
        .unwrap();
        assert_eq!(files(dir.path()), before, "a dry run deletes nothing");
        assert!(dry.dry_run);
        assert_eq!(dry.blobs.len(), 4, "{dry:?}");
        assert_eq!(dry.manifests.len(), 1);
        assert_eq!(dry.uploads.len(), 1);
        assert_eq!(dry.uploads[0].id, s.id);

        let real = collect(&fs, &opts(true)).unwrap();
        assert_eq!(real.blobs, dry.blobs);
        assert_eq!(real.manifests, dry.manifests);
        assert_eq!(real.uploads, dry.uploads);
        assert_eq!(real.links, dry.links);
        assert_eq!(real.bytes_reclaimed, dry.bytes_reclaimed);
        assert_complete(&fs, "app", Reference::Digest(kept.0)).await;
        let again = collect(&fs, &opts(true)).unwrap();
        assert!(again.blobs.is_empty() && again.manifests.is_empty() && again.uploads.is_empty());
    }

    /// Runs a collection on a blocking thread with `push` (async, on the runtime) between its mark and its
    /// deletions: the interleaving a concurrent push can produce.
    async fn collect_racing<F, Fut>(fs: Arc<FsStore>, opts: GcOptions, at: Stage, push: F) -> GcReport
    where
        F: FnOnce(Arc<FsStore>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let push = std::sync::Mutex::new(Some(push));
            let hook = |stage| {
                if stage != at {
                    return;
                }
                if let Some(p) = push.lock().unwrap().take() {
                    let fs = fs.clone();
                    rt.block_on(rt.spawn(p(fs))).unwrap();
                }
            };
            run(&fs, &opts, &NoCache, &hook).unwrap()
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_re_push_of_an_old_unreferenced_blob_during_a_collection_survives() {
        let (dir, fs) = store();
        let fs = Arc::new(fs);
        // Old, unreferenced: garbage when the mark runs.
        let layer = blob(&fs, "app", b"old layer").await;
        let cfg = blob(&fs, "app", b"old config").await;
        let mounted = blob(&fs, "app", b"old, mounted").await;
        let dead = blob(&fs, "app", b"really dead").await;
        backdate(dir.path(), 2 * HOUR);

        // Between listing and deleting: the same bytes are pushed again (the blob exists: only its mtime changes)
        // and one is mounted into another repository. The manifests naming them come after the collection.
        let r = collect_racing(fs.clone(), opts(true), Stage::Listed, |fs| async move {
            blob(&fs, "app", b"old config").await;
            blob(&fs, "app", b"old layer").await;
            fs.link_blob("other", &Digest::sha256_of(b"old, mounted"))
                .await
                .unwrap();
        })
        .await;
        image(&fs, "app", Some("v1"), b"old config", &[b"old layer"], None).await;
        image(&fs, "other", Some("v1"), b"old config", &[b"old, mounted"], None).await;
        assert_eq!(swept(&r), HashSet::from([dead]));
        assert_eq!(r.spared, 3, "re-checked under the lock: {r:?}");
        for d in [&layer, &cfg, &mounted] {
            assert!(blob_exists(&fs, d), "{d}");
        }
        assert_complete(&fs, "app", tag("v1")).await;
        assert_complete(&fs, "other", tag("v1")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_index_pushed_during_a_collection_keeps_its_old_untagged_children() {
        let (dir, fs) = store();
        let fs = Arc::new(fs);
        let child = image(&fs, "app", None, b"child cfg", &[b"child layer"], None).await;
        let sig = image(&fs, "app", None, b"sig cfg", &[b"sig"], Some(child.clone())).await;
        backdate(dir.path(), 2 * HOUR);
        let c = child.clone();
        let r = collect_racing(fs.clone(), opts(true), Stage::Marked, move |fs| async move {
            index(&fs, "app", Some("multi"), &[c]).await;
        })
        .await;
        // The child was garbage when marked; the index's PUT touched it and what it reaches (its layers, its
        // signature) before the deletions.
        assert!(r.blobs.is_empty() && r.manifests.is_empty(), "{r:?}");
        assert_eq!(r.spared, 2, "the child and its signature: {r:?}");
        assert_complete(&fs, "app", tag("multi")).await;
        assert_complete(&fs, "app", Reference::Digest(sig.0)).await;
    }

    #[tokio::test]
    async fn a_manifest_naming_a_swept_blob_is_refused() {
        let (dir, fs) = store();
        blob(&fs, "app", b"old layer").await;
        blob(&fs, "app", b"cfg").await;
        backdate(dir.path(), 2 * HOUR);
        // The registry checked the blobs (they were there), then a collection swept them, then the PUT arrives.
        collect(&fs, &opts(false)).unwrap();
        let body = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", b"cfg"),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", b"old layer")],
        }))
        .unwrap();
        let err = fs
            .put_manifest(
                "app",
                NewManifest {
                    digest: Digest::sha256_of(&body),
                    media_type: media::OCI_MANIFEST.into(),
                    body: body.into(),
                    tags: vec!["v1".into()],
                    referrer: None,
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::BlobUnknown(_)), "{err}");
        assert!(fs.get_manifest("app", &tag("v1")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_cache_forgets_what_was_swept() {
        let dir = tempfile::tempdir().unwrap();
        let cached = CachedStore::new(FsStore::open(dir.path()).unwrap(), CacheConfig::default());
        let orphan = blob(cached.inner(), "app", b"orphan").await;
        let (m, _) = image(cached.inner(), "app", None, b"cfg", &[b"layer"], None).await;
        // Fill the caches.
        assert!(cached.blob_size(&orphan).await.unwrap().is_some());
        assert!(cached.repo_blob_size("app", &orphan).await.unwrap().is_some());
        assert!(
            cached
                .get_manifest("app", &Reference::Digest(m.clone()))
                .await
                .unwrap()
                .is_some()
        );
        backdate(dir.path(), 2 * HOUR);

        let r = collect_cached(&cached, &opts(true)).unwrap();
        assert_eq!(r.blobs.len(), 4, "{r:?}");
        assert_eq!(cached.blob_size(&orphan).await.unwrap(), None);
        assert_eq!(cached.repo_blob_size("app", &orphan).await.unwrap(), None);
        assert!(
            cached
                .get_manifest("app", &Reference::Digest(m))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pushes_reusing_old_blobs_survive_back_to_back_collections() {
        let (dir, fs) = store();
        let fs = Arc::new(fs);
        let layers: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 100 + i as usize]).collect();
        for l in &layers {
            blob(&fs, "seed", l).await;
        }
        backdate(dir.path(), 2 * HOUR);
        let stop = Arc::new(AtomicBool::new(false));
        let collector = {
            let (fs, stop) = (fs.clone(), stop.clone());
            tokio::task::spawn_blocking(move || {
                let mut runs = 0;
                while !stop.load(Ordering::Relaxed) {
                    collect(&fs, &opts(true)).unwrap();
                    runs += 1;
                }
                runs
            })
        };
        let mut tags = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            // Every push reuses an old unreferenced blob that a collection may be deleting at this very moment.
            let t = format!("t{i}");
            image(&fs, "app", Some(&t), format!("cfg {i}").as_bytes(), &[l], None).await;
            tags.push(t);
        }
        stop.store(true, Ordering::Relaxed);
        assert!(collector.await.unwrap() > 0);
        for t in tags {
            assert_complete(&fs, "app", tag(&t)).await;
        }
    }

    /// With collections off, abandoned upload sessions still go: those idle past the TTL, not the fresh ones.
    #[tokio::test]
    async fn idle_upload_sessions_expire_without_a_collection() {
        let (dir, fs) = store();
        let old = fs.start_upload("a").await.unwrap();
        fs.append_upload("a", &old.id, None, once(b"abc".to_vec()))
            .await
            .unwrap();
        backdate(&fs.layout().upload_dir(&old.id), 2 * HOUR);
        let fresh = fs.start_upload("a").await.unwrap();
        let removed = expire_uploads(&fs, HOUR).unwrap();
        assert_eq!(
            removed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            [old.id.as_str()]
        );
        assert!(fs.upload_status("a", &old.id).await.is_err());
        assert!(fs.upload_status("a", &fresh.id).await.is_ok());
        drop(dir);
    }
}
