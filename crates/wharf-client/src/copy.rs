//! `copy(src, dst)`: one image (or a whole index) from any source to any destination.
//!
//! Order of work: resolve the manifest (pick one platform of an index unless `all`), collect every manifest and
//! blob it references, move the blobs `jobs` at a time, then write manifests children first and the named one
//! last. For each blob: `has_blob` (skip), else `try_mount` from the source's repository, else stream it from the
//! source to the destination through [`Verifying`], which hashes on the fly and withholds the last chunk of a
//! blob whose digest or size is wrong. Manifests are copied byte-exact, so every digest is preserved.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use wharf_oci::manifest::{Descriptor, ManifestView};
use wharf_oci::media;

use crate::verify::Verifying;
use crate::{Error, ImageDestination, ImageSource, Manifest, Platform};

/// Transfers of one blob before giving up on temporary errors (connection drops, 5xx, 429). Resuming from the
/// last acknowledged byte with a chunked upload is the next step (issue 4); today the blob restarts.
const BLOB_ATTEMPTS: u32 = 3;

/// Most manifests one copy follows (an index of indexes); a guard against absurd inputs.
const MAX_MANIFESTS: usize = 1024;

#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Copy every image of an index (and the index itself).
    pub all: bool,
    /// The image to pick from an index when not `all` [default: the host's, e.g. linux/amd64].
    pub platform: Option<Platform>,
    /// Blobs in flight at once.
    pub jobs: usize,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            all: false,
            platform: None,
            jobs: 4,
        }
    }
}

/// What a copy did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    /// Digest of the manifest written under the destination's name.
    pub digest: String,
    pub media_type: String,
    pub manifests: usize,
    pub blobs_copied: usize,
    pub blobs_skipped: usize,
    pub blobs_mounted: usize,
    pub bytes_moved: u64,
    pub bytes_skipped: u64,
    pub bytes_mounted: u64,
}

enum Outcome {
    Skipped,
    Mounted,
    Copied,
}

/// Copies the image `src` names to `dst` (see the module documentation for the order of work). On error, blobs
/// already transferred stay at the destination (they are content-addressed and complete) but no manifest is written
/// unless every blob it references is in place.
pub async fn copy(src: &dyn ImageSource, dst: &dyn ImageDestination, opts: &CopyOptions) -> Result<CopyReport, Error> {
    let top = resolve_top(src, opts).await?;
    let (manifests, blobs) = collect(src, top).await?;

    let moved = Arc::new(AtomicU64::new(0));
    let outcomes: Vec<(Outcome, u64)> = futures_util::stream::iter(blobs.iter())
        .map(|desc| {
            let moved = moved.clone();
            async move { copy_blob(src, dst, desc, moved).await.map(|o| (o, desc.size)) }
        })
        .buffer_unordered(opts.jobs.max(1))
        .try_collect()
        .await?;

    // Children before parents: `manifests` lists parents first.
    for (i, m) in manifests.iter().enumerate().rev() {
        dst.put_manifest(m, i == 0).await?;
    }

    let mut report = CopyReport {
        digest: manifests[0].digest.to_string(),
        media_type: manifests[0].media_type.clone(),
        manifests: manifests.len(),
        bytes_moved: moved.load(Ordering::Relaxed),
        ..CopyReport::default()
    };
    for (outcome, size) in outcomes {
        match outcome {
            Outcome::Skipped => {
                report.blobs_skipped += 1;
                report.bytes_skipped += size;
            }
            Outcome::Mounted => {
                report.blobs_mounted += 1;
                report.bytes_mounted += size;
            }
            Outcome::Copied => report.blobs_copied += 1,
        }
    }
    Ok(report)
}

/// The manifest to copy under the destination's name: the source's, or one platform's image of an index.
async fn resolve_top(src: &dyn ImageSource, opts: &CopyOptions) -> Result<Manifest, Error> {
    let top = src.get_manifest(None).await?;
    if opts.all || !media::is_index(&top.media_type) {
        return Ok(top);
    }
    let view = parse(&top)?;
    let wanted = opts.platform.clone().unwrap_or_else(Platform::host);
    let Some(child) = view.manifests.iter().find(|d| wanted.matches(d)) else {
        let available: Vec<String> = view.manifests.iter().map(Platform::describe).collect();
        return Err(Error::NoPlatform {
            wanted: wanted.to_string(),
            available: available.join(", "),
        });
    };
    let chosen = src.get_manifest(Some(child)).await?;
    if media::is_index(&chosen.media_type) {
        return Err(Error::Manifest {
            what: chosen.digest.to_string(),
            reason: format!("the {wanted} entry of the index is itself an index; use --all"),
        });
    }
    Ok(chosen)
}

/// Every manifest under `top` (parents first, `top` at 0) and every distributable blob, each once.
async fn collect(src: &dyn ImageSource, top: Manifest) -> Result<(Vec<Manifest>, Vec<Descriptor>), Error> {
    let mut manifests = Vec::new();
    let mut blobs = Vec::new();
    let mut seen_blobs = HashSet::new();
    let mut seen_manifests = HashSet::from([top.digest.clone()]);
    let mut queue = VecDeque::from([top]);
    while let Some(m) = queue.pop_front() {
        let view = parse(&m)?;
        for child in &view.manifests {
            if seen_manifests.insert(child.digest.clone()) {
                if seen_manifests.len() > MAX_MANIFESTS {
                    return Err(Error::Manifest {
                        what: m.digest.to_string(),
                        reason: format!("more than {MAX_MANIFESTS} manifests under it"),
                    });
                }
                queue.push_back(src.get_manifest(Some(child)).await?);
            }
        }
        for blob in view.required_blobs() {
            if seen_blobs.insert(blob.digest.clone()) {
                blobs.push(blob.clone());
            }
        }
        manifests.push(m);
    }
    Ok((manifests, blobs))
}

fn parse(m: &Manifest) -> Result<ManifestView, Error> {
    ManifestView::parse(&m.bytes, Some(&m.media_type)).map_err(|e| Error::Manifest {
        what: m.digest.to_string(),
        reason: e.to_string(),
    })
}

async fn copy_blob(
    src: &dyn ImageSource,
    dst: &dyn ImageDestination,
    desc: &Descriptor,
    moved: Arc<AtomicU64>,
) -> Result<Outcome, Error> {
    if dst.has_blob(desc).await? {
        tracing::debug!(digest = %desc.digest, "blob already at the destination");
        return Ok(Outcome::Skipped);
    }
    if let Some(origin) = src.mount_origin()
        && dst.try_mount(desc, &origin).await?
    {
        tracing::debug!(digest = %desc.digest, from = %origin.repository, "blob mounted");
        return Ok(Outcome::Mounted);
    }
    let mut attempt = 1;
    loop {
        let result = async {
            let stream = src.get_blob(desc).await?;
            let verified = Verifying::new(stream, desc.digest.clone(), desc.size, src.describe(), moved.clone());
            dst.put_blob(desc, verified.boxed()).await
        }
        .await;
        match result {
            Ok(()) => break,
            // A streamed body cannot be replayed by the HTTP client; the blob is started again from the source.
            Err(e) if e.is_temporary() && attempt < BLOB_ATTEMPTS => {
                tracing::warn!(digest = %desc.digest, error = %e, attempt, "blob transfer failed; starting it again");
                tokio::time::sleep(Duration::from_millis(500) * attempt).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
    tracing::debug!(digest = %desc.digest, size = desc.size, "blob copied");
    Ok(Outcome::Copied)
}
