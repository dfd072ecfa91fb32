//! Garbage collection, what every backend shares: the options, the report, and the mark of a repository (which
//! manifest revisions are kept and which blobs they name). The collectors are the backends' own, because what keeps
//! a collection safe while pushes go on is: `fs/gc.rs` (modification times and the store's lock) and `object/gc.rs`
//! (bucket timestamps and a `GcLock` replicas share).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::Serialize;
use wharf_oci::Digest;
use wharf_oci::manifest::ManifestView;

pub use crate::fs::gc::{RootLock, collect, collect_cached, expire_uploads};

/// What a collection does.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Unreferenced blobs (and, with `delete_untagged`, untagged revisions) younger than this are kept.
    pub grace_period: Duration,
    /// Upload sessions untouched for longer than this are removed.
    pub upload_ttl: Duration,
    /// Also delete manifest revisions that no tag reaches (directly, as an index child or as a referrer).
    pub delete_untagged: bool,
    /// Report what would go; delete nothing.
    pub dry_run: bool,
    /// Set to ask a running collection to return early.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace_period: Duration::from_secs(3600),
            upload_ttl: Duration::from_secs(24 * 3600),
            delete_untagged: false,
            dry_run: false,
            stop: None,
        }
    }
}

/// A blob deleted (or that a dry run would delete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemovedBlob {
    pub digest: Digest,
    pub size: u64,
}

/// A manifest revision unlinked from a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemovedManifest {
    pub repository: String,
    pub digest: Digest,
    pub size: u64,
}

/// A stale upload session removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemovedUpload {
    pub id: String,
    pub repository: String,
    pub size: u64,
}

/// What a collection did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Blobs deleted, sorted by digest.
    pub blobs: Vec<RemovedBlob>,
    /// Untagged manifest revisions unlinked (their bytes are among `blobs` when nothing else keeps them).
    pub manifests: Vec<RemovedManifest>,
    pub uploads: Vec<RemovedUpload>,
    /// `_layers` links to deleted blobs removed.
    pub links: usize,
    /// Layer index entries of deleted blobs removed.
    pub index_entries: usize,
    /// Leftover temporary files removed.
    pub tmp_files: usize,
    /// Bytes freed: deleted blobs and upload sessions.
    pub bytes_reclaimed: u64,
    /// Blobs the mark kept.
    pub marked_blobs: usize,
    /// Candidates spared because a push touched them after the mark.
    pub spared: usize,
    /// The run stopped early when asked to.
    pub interrupted: bool,
    pub duration_ms: u64,
}

/// One manifest revision of a repository, as the mark reads it.
pub(crate) struct Revision {
    /// Its bytes (`None`: the revision's blob is missing).
    pub body: Option<Vec<u8>>,
    /// The media type it was pushed with ("" when unknown).
    pub media_type: String,
    /// The revisions whose subject it is (signatures, SBOMs, attestations).
    pub referrers: Vec<Digest>,
}

/// The mark of one repository, the same for every backend. From `roots`, every revision they reach is kept: the
/// children of an index and the referrers of a kept manifest, when they are revisions of the repository
/// (`is_revision`). Every blob a kept manifest names (its own bytes, config, layers, children) goes into `marked`;
/// a manifest that does not parse as one has every `digest` in its JSON marked instead. Returns the kept revisions.
pub(crate) fn mark_repository<E>(
    repository: &str,
    roots: Vec<Digest>,
    is_revision: impl Fn(&Digest) -> bool,
    mut read: impl FnMut(&Digest) -> Result<Revision, E>,
    marked: &mut HashSet<Digest>,
) -> Result<HashSet<Digest>, E> {
    let mut stack = roots;
    let mut kept = HashSet::new();
    while let Some(d) = stack.pop() {
        if !kept.insert(d.clone()) {
            continue;
        }
        marked.insert(d.clone());
        let revision = read(&d)?;
        match &revision.body {
            Some(body) => {
                let (blobs, children) = references(body, &revision.media_type);
                marked.extend(blobs);
                for c in children {
                    marked.insert(c.clone());
                    if is_revision(&c) {
                        stack.push(c);
                    }
                }
            }
            None => tracing::warn!(repository, digest = %d, "gc: manifest revision without its bytes"),
        }
        stack.extend(revision.referrers.into_iter().filter(|r| is_revision(r)));
    }
    Ok(kept)
}

/// What a manifest names: blobs to mark, and digests that may be child manifests.
pub(crate) fn references(body: &[u8], media_type: &str) -> (Vec<Digest>, Vec<Digest>) {
    match ManifestView::parse(body, Some(media_type)).or_else(|_| ManifestView::parse(body, None)) {
        Ok(view) => (
            view.config
                .iter()
                .chain(&view.layers)
                .map(|d| d.digest.clone())
                .collect(),
            view.manifests.iter().map(|d| d.digest.clone()).collect(),
        ),
        Err(_) => {
            // Not a manifest we understand: keep everything it mentions.
            let mut all = Vec::new();
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                every_digest(&v, &mut all);
            }
            (all.clone(), all)
        }
    }
}

pub(crate) fn every_digest(v: &serde_json::Value, out: &mut Vec<Digest>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "digest"
                    && let Some(d) = v.as_str().and_then(|s| s.parse().ok())
                {
                    out.push(d);
                } else {
                    every_digest(v, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| every_digest(v, out)),
        _ => {}
    }
}
