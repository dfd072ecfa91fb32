//! Online garbage collection of an [`ObjectStore`]: deletes blobs that no manifest references while the replicas go
//! on serving pushes and pulls.
//!
//! **Mark** (the one all backends share, `crate::gc::mark_repository`): every manifest revision of every repository
//! is a root, or with `delete_untagged` only the tagged ones and those whose revision object is younger than the
//! grace period (or has no time); from each, index children and referrers are followed, and every digest a kept
//! manifest references is marked (config, layers, children), its own bytes too.
//! **Untagged revisions** (with `delete_untagged`): the revisions the mark did not keep, older than the grace
//! period, are unlinked in one exclusive section per repository, which first reads the tags again and spares any
//! revision a push reused (a manifest PUT records its own digest) or tagged meanwhile; their referrer entries go
//! with them, and their bytes go with the blobs below.
//! **Sweep**: blobs under `blobs/` that are not marked and whose object was last written before
//! `start - grace` (the bucket's own timestamps), in batches; then `_layers` links to blobs that are gone; then
//! upload sessions whose newest chunk is older than the upload TTL.
//!
//! **Why a push during a collection is never broken** (the filesystem store's argument, with a [`GcLock`] instead
//! of a process lock and mtimes): every write that makes an *existing* blob reachable (a mount, a commit or
//! monolithic upload of a blob already stored, a manifest PUT) runs in a write section, checks inside it that the
//! blobs it needs are still in the bucket, and, while a run is under way, records them as reused. A run begins
//! under the exclusive side, so every write section either ended before it (the mark lists what it wrote) or
//! records what it reuses; each batch of deletions happens under the exclusive side and spares what was reused.
//! A blob written after the run began is younger than `start - grace` and never a candidate. A write that needs a
//! blob a batch already deleted finds it missing inside its section and fails (`BLOB_UNKNOWN`) instead of storing
//! a manifest with a hole.
//!
//! Replicas share the lock and the reused set through Redis (`crate::redis_meta::RedisGcLock`), which also makes
//! only one replica collect at a time; what a collection deletes is forgotten by the caches ([`Collectable`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use wharf_oci::Digest;
use wharf_oci::manifest::ManifestView;

use super::{ObjectStore, is_not_found, keys};
use crate::gc::{GcOptions, GcReport, RemovedBlob, RemovedManifest, RemovedUpload, Revision, mark_repository};
use crate::{CachedStore, RegistryStore, Result, StorageError};

/// Deletions per exclusive section.
const BATCH: usize = 256;
/// Added to the grace period: listing timestamps are truncated to seconds, and the bucket's clock may differ a little.
const CLOCK_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

/// A store stack whose bottom is an [`ObjectStore`], and the caches above it that must forget what goes.
#[async_trait]
pub trait Collectable: Send + Sync {
    fn object_store(&self) -> &ObjectStore;
    async fn forget_blobs(&self, digests: &[Digest]);
    async fn forget_links(&self, repo: &str, digests: &[Digest]);
    async fn forget_manifest(&self, repo: &str, digest: &Digest);
}

#[async_trait]
impl Collectable for ObjectStore {
    fn object_store(&self) -> &ObjectStore {
        self
    }
    async fn forget_blobs(&self, _: &[Digest]) {}
    async fn forget_links(&self, _: &str, _: &[Digest]) {}
    async fn forget_manifest(&self, _: &str, _: &Digest) {}
}

#[async_trait]
impl Collectable for CachedStore<ObjectStore> {
    fn object_store(&self) -> &ObjectStore {
        self.inner()
    }
    async fn forget_blobs(&self, digests: &[Digest]) {
        CachedStore::forget_blobs(self, digests);
    }
    async fn forget_links(&self, repo: &str, digests: &[Digest]) {
        CachedStore::forget_links(self, repo, digests);
    }
    async fn forget_manifest(&self, repo: &str, digest: &Digest) {
        CachedStore::forget_manifest(self, repo, digest);
    }
}

#[async_trait]
impl Collectable for crate::redis_meta::RedisCache<ObjectStore> {
    fn object_store(&self) -> &ObjectStore {
        self.inner()
    }
    async fn forget_blobs(&self, digests: &[Digest]) {
        crate::redis_meta::RedisCache::forget_blobs(self, digests).await;
    }
    async fn forget_links(&self, repo: &str, digests: &[Digest]) {
        crate::redis_meta::RedisCache::forget_links(self, repo, digests).await;
    }
    async fn forget_manifest(&self, repo: &str, digest: &Digest) {
        crate::redis_meta::RedisCache::forget_manifest(self, repo, digest).await;
    }
}

/// The digest a key under `blobs/` names.
fn blob_digest(path: &str) -> Option<Digest> {
    let mut parts = path.strip_prefix("blobs/")?.split('/');
    let (alg, _fan, hex) = (parts.next()?, parts.next()?, parts.next()?);
    format!("{alg}:{hex}").parse().ok()
}

fn stopped(opts: &GcOptions) -> bool {
    opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
}

/// Collects garbage in the object store under `stack`. Safe while any number of replicas serve it, when they share
/// its [`GcLock`]. Returns an empty report with `interrupted` set if another run is under way.
pub async fn collect(stack: &dyn Collectable, opts: &GcOptions) -> Result<GcReport> {
    let result = collect_run(stack, opts).await;
    // Every hold is released on drop, some on the error paths: make sure they reached the lock before returning
    // (a `wharf gc` process exits right after).
    stack.object_store().gc.settle().await;
    result
}

async fn collect_run(stack: &dyn Collectable, opts: &GcOptions) -> Result<GcReport> {
    let store = stack.object_store();
    let began = Instant::now();
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    let run = {
        let hold = store.gc.exclusive().await?;
        match store.gc.begin(&hold).await? {
            Some(run) => run,
            None => {
                tracing::info!("another garbage collection is under way; skipping this one");
                report.interrupted = true;
                return Ok(report);
            }
        }
    };
    let start = SystemTime::now();
    let result = sweep(stack, opts, start, &mut report).await;
    store.gc.end(run).await?;
    result?;
    report.blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
    report.bytes_reclaimed =
        report.blobs.iter().map(|b| b.size).sum::<u64>() + report.uploads.iter().map(|u| u.size).sum::<u64>();
    report.duration_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

async fn sweep(stack: &dyn Collectable, opts: &GcOptions, start: SystemTime, report: &mut GcReport) -> Result<()> {
    let store = stack.object_store();
    // Object stores list modification times in whole seconds (and their clock is not ours): a margin keeps a blob
    // written just after `start` from looking older than it is.
    let cutoff = start
        .checked_sub(opts.grace_period + CLOCK_MARGIN)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let repos = store.repositories().await?;
    let (marked, seen) = mark(store, &repos, opts, cutoff).await?;
    report.marked_blobs = marked.len();
    if opts.delete_untagged {
        for repo in &seen {
            if stopped(opts) {
                report.interrupted = true;
                return Ok(());
            }
            delete_untagged(stack, opts, cutoff, repo, report).await?;
        }
    }

    // Candidates: unmarked blobs last written before the cutoff.
    let entries = store
        .op
        .list_with("blobs/")
        .recursive(true)
        .await
        .or_else(|e| if is_not_found(&e) { Ok(Vec::new()) } else { Err(e) })
        .map_err(|e| StorageError::backend("list blobs", e))?;
    let mut candidates = Vec::new();
    for e in &entries {
        let Some(d) = blob_digest(e.path()).filter(|d| !marked.contains(d)) else {
            continue;
        };
        // Listings of some services carry no times (or sizes): ask the object then.
        let (modified, size) = match e.metadata().last_modified() {
            Some(m) => (Some(m), e.metadata().content_length()),
            None => match store.op.stat(e.path()).await {
                Ok(m) => (m.last_modified(), m.content_length()),
                Err(err) if is_not_found(&err) => continue,
                Err(err) => return Err(StorageError::backend(format!("stat {}", e.path()), err)),
            },
        };
        // No time at all: kept (never delete what might be new).
        if modified.is_some_and(|m| SystemTime::from(m) < cutoff) {
            candidates.push(RemovedBlob { digest: d, size });
        }
    }

    for batch in candidates.chunks(BATCH) {
        if stopped(opts) {
            report.interrupted = true;
            return Ok(());
        }
        let hold = store.gc.exclusive().await?;
        let reused = store.gc.reused(&hold).await?;
        let mut gone = Vec::new();
        for c in batch {
            if reused.contains(&c.digest) {
                report.spared += 1;
                continue;
            }
            if !opts.dry_run
                && let Err(e) = store.op.delete(&keys::blob(&c.digest)).await
            {
                // What this batch already deleted must still be forgotten by the caches.
                stack.forget_blobs(&gone).await;
                return Err(StorageError::backend(format!("delete {}", keys::blob(&c.digest)), e));
            }
            gone.push(c.digest.clone());
            report.blobs.push(c.clone());
        }
        if !opts.dry_run {
            stack.forget_blobs(&gone).await;
        }
        drop(hold);
    }

    // Links to blobs that are gone (a push that brought a blob back in the meantime keeps its link).
    let deleted: HashSet<&Digest> = report.blobs.iter().map(|b| &b.digest).collect();
    for repo in &repos {
        let mut stale = Vec::new();
        for alg in ["sha256", "sha512"] {
            let prefix = format!("repositories/{repo}/_layers/{alg}/");
            for hex in store.list_names(&prefix).await? {
                if let Ok(d) = format!("{alg}:{hex}").parse::<Digest>()
                    && (deleted.contains(&d) || (!opts.dry_run && !marked.contains(&d)))
                {
                    stale.push(d);
                }
            }
        }
        if stale.is_empty() || opts.dry_run {
            report.links += stale.iter().filter(|d| deleted.contains(d)).count();
            continue;
        }
        let hold = store.gc.exclusive().await?;
        let mut removed = Vec::new();
        for d in stale {
            if store.size_of(&keys::blob(&d)).await?.is_none() {
                store.delete_key(&keys::layer_link(repo, &d)).await?;
                removed.push(d);
            }
        }
        report.links += removed.len();
        stack.forget_links(repo, &removed).await;
        drop(hold);
    }

    // The layer index forgets the deleted blobs (the caches heard of them through `forget_blobs`).
    if !opts.dry_run && !report.blobs.is_empty() {
        let gone: HashSet<Digest> = report.blobs.iter().map(|b| b.digest.clone()).collect();
        report.index_entries = store.prune_layer_index(crate::Prune::Blobs(&gone)).await?;
    }
    stale_uploads(store, opts, report).await
}

/// One repository as the mark saw it: its revisions with their objects' times, and those kept.
struct Seen {
    repo: String,
    revisions: HashMap<Digest, Option<SystemTime>>,
    kept: HashSet<Digest>,
}

/// The time an object was last written, from its listing entry or (when a service's listings carry none) its stat;
/// `None` if the service keeps no time at all.
async fn written(store: &ObjectStore, entry: &opendal::Entry) -> Result<Option<SystemTime>> {
    if let Some(m) = entry.metadata().last_modified() {
        return Ok(Some(SystemTime::from(m)));
    }
    match store.op.stat(entry.path()).await {
        Ok(m) => Ok(m.last_modified().map(SystemTime::from)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(StorageError::backend(format!("stat {}", entry.path()), e)),
    }
}

/// The digests a repository's tags point at.
async fn tagged(store: &ObjectStore, repo: &str) -> Result<HashSet<Digest>> {
    let mut out = HashSet::new();
    for tag in store.list_names(&keys::tags(repo)).await? {
        if let Some(raw) = store.read_small(&keys::tag(repo, &tag)).await?
            && let Ok(d) = String::from_utf8_lossy(&raw).trim().parse()
        {
            out.insert(d);
        }
    }
    Ok(out)
}

/// The mark all backends share, over every repository: the blobs kept manifests name (and the manifests), and what
/// it saw of each repository. Roots: every revision, or with `delete_untagged` the tagged ones and those written
/// after `cutoff` (or at no known time).
async fn mark(
    store: &ObjectStore,
    repos: &[String],
    opts: &GcOptions,
    cutoff: SystemTime,
) -> Result<(HashSet<Digest>, Vec<Seen>)> {
    let mut marked = HashSet::new();
    let mut seen = Vec::new();
    for repo in repos {
        let mut revisions: HashMap<Digest, Option<SystemTime>> = HashMap::new();
        let prefix = format!("repositories/{repo}/_manifests/revisions/");
        let entries = match store.op.list_with(&prefix).recursive(true).await {
            Ok(e) => e,
            Err(e) if is_not_found(&e) => Vec::new(),
            Err(e) => return Err(StorageError::backend(format!("list {prefix}"), e)),
        };
        for e in entries.iter().filter(|e| e.metadata().is_file()) {
            let Some(rest) = e.path().strip_prefix(&prefix) else {
                continue;
            };
            let Some(Ok(d)) = rest
                .split_once('/')
                .map(|(alg, hex)| format!("{alg}:{hex}").parse::<Digest>())
            else {
                continue;
            };
            let time = if opts.delete_untagged {
                written(store, e).await?
            } else {
                None
            };
            revisions.insert(d, time);
        }
        let mut bodies: HashMap<Digest, Option<Vec<u8>>> = HashMap::new();
        let mut referrers: HashMap<Digest, Vec<Digest>> = HashMap::new();
        for d in revisions.keys() {
            bodies.insert(d.clone(), store.read_small(&keys::blob(d)).await?.map(|b| b.to_vec()));
            if opts.delete_untagged {
                // `<alg>-<hex>` entries under the subject (every revision is a root otherwise: nothing to follow).
                let names = store.list_names(&keys::referrers(repo, d)).await?;
                let found = names
                    .iter()
                    .filter_map(|n| n.split_once('-'))
                    .filter_map(|(alg, hex)| format!("{alg}:{hex}").parse::<Digest>().ok());
                referrers.insert(d.clone(), found.collect());
            }
        }
        let tags = if opts.delete_untagged {
            tagged(store, repo).await?
        } else {
            HashSet::new()
        };
        let roots: Vec<Digest> = revisions
            .iter()
            .filter(|(d, t)| !opts.delete_untagged || tags.contains(*d) || t.is_none_or(|t| t >= cutoff))
            .map(|(d, _)| d.clone())
            .collect();
        let kept = mark_repository(
            repo,
            roots,
            |d| revisions.contains_key(d),
            |d| {
                Ok::<_, StorageError>(Revision {
                    body: bodies.get(d).cloned().flatten(),
                    media_type: String::new(),
                    referrers: referrers.get(d).cloned().unwrap_or_default(),
                })
            },
            &mut marked,
        )?;
        seen.push(Seen {
            repo: repo.clone(),
            revisions,
            kept,
        });
    }
    Ok((marked, seen))
}

/// Unlinks the revisions of a repository the mark did not keep and that were written before `cutoff`, in one
/// exclusive section that reads the tags again and spares what a push reused or tagged since the mark.
async fn delete_untagged(
    stack: &dyn Collectable,
    opts: &GcOptions,
    cutoff: SystemTime,
    seen: &Seen,
    report: &mut GcReport,
) -> Result<()> {
    let store = stack.object_store();
    let candidates: Vec<&Digest> = seen
        .revisions
        .iter()
        .filter(|(d, t)| !seen.kept.contains(*d) && t.is_some_and(|t| t < cutoff))
        .map(|(d, _)| d)
        .collect();
    if candidates.is_empty() {
        return Ok(());
    }
    let repo = seen.repo.as_str();
    if opts.dry_run {
        for d in candidates {
            report.manifests.push(RemovedManifest {
                repository: repo.to_owned(),
                digest: d.clone(),
                size: store.size_of(&keys::blob(d)).await?.unwrap_or(0),
            });
        }
        return Ok(());
    }
    let hold = store.gc.exclusive().await?;
    let reused = store.gc.reused(&hold).await?;
    let tags = tagged(store, repo).await?;
    for d in candidates {
        if tags.contains(d) || reused.contains(d) {
            report.spared += 1;
            continue;
        }
        let body = store.read_small(&keys::blob(d)).await?;
        if let Some(body) = &body
            && let Ok(view) = ManifestView::parse(body, None)
            && let Some(subject) = view.subject
        {
            store.delete_key(&keys::referrer(repo, &subject.digest, d)).await?;
        }
        if store.delete_key(&keys::revision(repo, d)).await? {
            stack.forget_manifest(repo, d).await;
            report.manifests.push(RemovedManifest {
                repository: repo.to_owned(),
                digest: d.clone(),
                size: body.map_or(0, |b| b.len() as u64),
            });
        }
    }
    drop(hold);
    Ok(())
}

/// Removes the upload sessions whose newest object is older than `ttl`, and nothing else: what a server with garbage
/// collection off runs so abandoned uploads do not pile up in the bucket.
pub async fn expire_uploads(store: &ObjectStore, ttl: std::time::Duration) -> Result<Vec<RemovedUpload>> {
    let opts = GcOptions {
        upload_ttl: ttl,
        ..GcOptions::default()
    };
    let mut report = GcReport::default();
    stale_uploads(store, &opts, &mut report).await?;
    Ok(report.uploads)
}

/// Upload sessions whose newest object is older than the upload TTL: their chunks and their state.
async fn stale_uploads(store: &ObjectStore, opts: &GcOptions, report: &mut GcReport) -> Result<()> {
    let cutoff = SystemTime::now()
        .checked_sub(opts.upload_ttl)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let entries = store
        .op
        .list_with(keys::UPLOADS)
        .recursive(true)
        .await
        .or_else(|e| if is_not_found(&e) { Ok(Vec::new()) } else { Err(e) })
        .map_err(|e| StorageError::backend("list upload sessions", e))?;
    // id -> (newest write, bytes)
    let mut sessions: BTreeMap<String, (SystemTime, u64)> = BTreeMap::new();
    for e in &entries {
        let Some(id) = e.path().strip_prefix(keys::UPLOADS).and_then(|r| r.split('/').next()) else {
            continue;
        };
        if !e.metadata().is_file() {
            continue;
        }
        let modified = e
            .metadata()
            .last_modified()
            .map(SystemTime::from)
            .unwrap_or(SystemTime::now());
        let slot = sessions.entry(id.to_owned()).or_insert((SystemTime::UNIX_EPOCH, 0));
        slot.0 = slot.0.max(modified);
        slot.1 += e.metadata().content_length();
    }
    for (id, (newest, size)) in sessions {
        if newest >= cutoff {
            continue;
        }
        let repository = store
            .sessions
            .load(&id)
            .await
            .ok()
            .flatten()
            .map(|s| s.repo)
            .unwrap_or_default();
        if !opts.dry_run {
            store.discard(&id).await;
        }
        report.uploads.push(RemovedUpload { id, repository, size });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Uploads;

    use std::sync::Arc;

    use bytes::Bytes;

    use crate::object::{BucketSessions, ObjectConfig};
    use crate::{ByteStream, NewManifest};

    fn body(data: &[u8]) -> ByteStream {
        let b = Bytes::copy_from_slice(data);
        Box::pin(futures_util::stream::once(async move { Ok(b) }))
    }

    #[tokio::test]
    async fn the_mark_covers_index_children_and_timeless_objects_are_kept() {
        let op = opendal::Operator::new(opendal::services::Memory::default()).unwrap();
        let store = ObjectStore::new(op.clone(), Arc::new(BucketSessions::new(op)), &ObjectConfig::default());
        let (layer, orphan) = (b"layer".as_slice(), b"orphan".as_slice());
        let (ld, od) = (Digest::sha256_of(layer), Digest::sha256_of(orphan));
        store.put_blob("r", &ld, body(layer)).await.unwrap();
        store.put_blob("r", &od, body(orphan)).await.unwrap();
        let config = br#"{"os":"linux"}"#;
        let cd = Digest::sha256_of(config);
        store.put_blob("r", &cd, body(config)).await.unwrap();
        let m = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}]});
        let mb = Bytes::from(serde_json::to_vec(&m).unwrap());
        let md = Digest::sha256_of(&mb);
        let mt = "application/vnd.oci.image.manifest.v1+json".to_owned();
        let new = |d: &Digest, b: &Bytes, mt: &str, tags: Vec<String>| NewManifest {
            digest: d.clone(),
            media_type: mt.to_owned(),
            body: b.clone(),
            tags,
            referrer: None,
        };
        store.put_manifest("r", new(&md, &mb, &mt, vec![])).await.unwrap();
        let ix = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": mt, "digest": md, "size": mb.len()}]});
        let ib = Bytes::from(serde_json::to_vec(&ix).unwrap());
        let id = Digest::sha256_of(&ib);
        store
            .put_manifest(
                "r",
                new(&id, &ib, "application/vnd.oci.image.index.v1+json", vec!["v1".into()]),
            )
            .await
            .unwrap();

        // Young blobs are kept: everything was just written.
        let r = collect(&store, &GcOptions::default()).await.unwrap();
        assert!(r.blobs.is_empty(), "{r:?}");
        assert_eq!(r.marked_blobs, 4, "config, layer, manifest and index");
        // The memory service keeps no modification times: without one, nothing is ever taken, whatever the grace.
        let opts = GcOptions {
            grace_period: std::time::Duration::ZERO,
            ..GcOptions::default()
        };
        let r = collect(&store, &opts).await.unwrap();
        assert!(r.blobs.is_empty(), "{r:?}");
        assert_eq!(store.blob_size(&od).await.unwrap(), Some(6));
        // (Deletion itself is tested on S3, which has times: crates/wharf/tests/s3.rs.)
    }

    #[tokio::test]
    async fn a_blob_reused_during_a_run_is_spared() {
        let op = opendal::Operator::new(opendal::services::Memory::default()).unwrap();
        let store = ObjectStore::new(op.clone(), Arc::new(BucketSessions::new(op)), &ObjectConfig::default());
        let d = Digest::sha256_of(b"old");
        store.put_blob("r", &d, body(b"old")).await.unwrap();
        // A run has begun (the mark found nothing naming the blob) when a mount reuses it.
        let hold = store.gc.exclusive().await.unwrap();
        let run = store.gc.begin(&hold).await.unwrap().unwrap();
        drop(hold);
        store.link_blob("other", &d).await.unwrap();
        let hold = store.gc.exclusive().await.unwrap();
        assert!(store.gc.reused(&hold).await.unwrap().contains(&d));
        drop(hold);
        // A second run cannot start while this one is under way.
        let hold = store.gc.exclusive().await.unwrap();
        assert!(store.gc.begin(&hold).await.unwrap().is_none());
        drop(hold);
        store.gc.end(run).await.unwrap();
    }

    #[test]
    fn blob_keys_parse_back_to_digests() {
        let d = Digest::sha256_of(b"x");
        assert_eq!(blob_digest(&keys::blob(&d)), Some(d));
        assert_eq!(blob_digest("blobs/sha256/ab"), None);
        assert_eq!(blob_digest("repositories/x"), None);
    }
}
