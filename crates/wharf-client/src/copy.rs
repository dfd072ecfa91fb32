//! `copy(src, dst)`: one image (or a whole index) from any source to any destination.
//!
//! Order of work: resolve the manifest (pick one platform of an index unless `all`), collect every manifest and
//! blob it references, find which blobs the destination has already (checks many at once), move the others `jobs` at
//! a time, the largest first, then write manifests children first and the named one last. For each blob: `has_blob`
//! (skip), else `try_mount` from the source's repository (or one the local record names), else stream it from the
//! source to the destination through [`Verifying`], which hashes on the fly and withholds the last chunk of a
//! blob whose digest or size is wrong. Manifests are copied byte-exact, so every digest is preserved — except one
//! case: uncompressed layers from a source that is not a registry (the Docker engine, a docker archive, an OCI
//! layout) going to a registry or layout are compressed on the way, and the manifests above them rewritten (the
//! config, hence the image ID, is unchanged). Registry-to-registry copies never change a digest.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use wharf_oci::manifest::{Descriptor, ManifestView};
use wharf_oci::media;

use crate::compress::{Compression, compress_only, is_uncompressed_layer};
use crate::store::MountHints;
use crate::verify::Verifying;
use crate::{BlobStream, Error, ImageDestination, ImageSource, Manifest, MountOrigin, Platform};

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
    /// How uncompressed layers from a non-registry source (the Docker engine, docker archives, OCI layouts) are
    /// compressed for destinations that store compressed layers. Compressed layers are never recompressed.
    pub compression: Compression,
    /// Threads compressing one layer.
    pub workers: usize,
    /// Told about every blob as it moves (progress bars).
    pub progress: Option<Arc<dyn Progress>>,
    /// Where blobs were seen in registries, to mount instead of upload (kept in the content store).
    pub hints: Option<MountHints>,
    /// Transfer the blobs only and write no manifest (`wharf build --push` sends each layer as its step commits;
    /// the image's manifest is written once the build has succeeded).
    pub blobs_only: bool,
}

/// Observer of a copy, blob by blob (the CLI draws progress bars with it).
pub trait Progress: Send + Sync {
    /// A blob starts moving; `size` is its size at the source.
    fn start(&self, digest: &wharf_oci::Digest, size: u64);
    /// `bytes` more of it have passed.
    fn advance(&self, digest: &wharf_oci::Digest, bytes: u64);
    /// It is done: `how` is "copied", "compressed", "skipped" or "mounted".
    fn finish(&self, digest: &wharf_oci::Digest, how: &'static str);
}

impl std::fmt::Debug for dyn Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            all: false,
            platform: None,
            jobs: 4,
            compression: Compression::default(),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            progress: None,
            hints: None,
            blobs_only: false,
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
    /// Layers compressed on the way (their digests at the destination differ from the source's).
    pub layers_compressed: usize,
    /// Each uncompressed layer of the source and what became of it: "skipped" (the destination had it compressed),
    /// "mounted" (from another repository of the registry), "compressed" (compressed and sent).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerReport>,
}

/// What became of one uncompressed layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub diff_id: String,
    /// The compressed blob the manifest names.
    pub digest: String,
    pub size: u64,
    pub outcome: &'static str,
}

/// Existence checks (HEADs, lookups, mounts) in flight at once, before any transfer starts.
const CHECKS_IN_FLIGHT: usize = 16;

pub(crate) enum Outcome {
    Skipped,
    Mounted,
    Copied,
    Compressed,
}

/// Copies the image `src` names to `dst` (see the module documentation for the order of work). On error, blobs
/// already transferred stay at the destination (they are content-addressed and complete) but no manifest is written
/// unless every blob it references is in place.
pub async fn copy(src: &dyn ImageSource, dst: &dyn ImageDestination, opts: &CopyOptions) -> Result<CopyReport, Error> {
    tracing::debug!(source = %src.describe(), destination = %dst.describe(), "copy starts");
    let top = resolve_top(src, opts).await?;
    let (manifests, blobs) = collect(src, top.clone()).await?;
    for m in manifests.iter().filter(|m| !media::is_index(&m.media_type)) {
        dst.prepare(m).await?;
    }
    // Uncompressed layers are compressed for a registry or layout, as skopeo does, except when they come from a
    // registry: a registry-to-registry copy keeps every digest (signatures and referrers point at them).
    let convert: HashSet<_> = if dst.compresses_layers() && src.mount_origin().is_none() {
        let mut set = HashSet::new();
        for m in manifests.iter().filter(|m| !media::is_index(&m.media_type)) {
            set.extend(
                parse(m)?
                    .layers
                    .into_iter()
                    .filter(|l| is_uncompressed_layer(&l.media_type))
                    .map(|l| l.digest),
            );
        }
        set
    } else {
        HashSet::new()
    };

    let moved = Arc::new(AtomicU64::new(0));
    // First what the destination has already: cheap requests (a HEAD, a lookup, a mount), many at once, so a blob
    // that must be compressed and sent never waits behind the checks of others.
    let checked: Vec<(&Descriptor, Option<(Outcome, Descriptor)>)> = futures_util::stream::iter(blobs.iter())
        .map(|desc| {
            let convert = convert.contains(&desc.digest);
            async move {
                if let Some(p) = &opts.progress {
                    p.start(&desc.digest, desc.size);
                }
                let found = find_existing(src, dst, desc, convert, opts).await?;
                if let Some((outcome, stored)) = &found {
                    finished(src, dst, desc, outcome, stored, opts).await;
                }
                Ok::<_, Error>((desc, found))
            }
        })
        .buffer_unordered(CHECKS_IN_FLIGHT.max(opts.jobs))
        .try_collect()
        .await?;
    let (found, mut missing): (Vec<_>, Vec<_>) = checked.into_iter().partition(|(_, f)| f.is_some());
    // Then the transfers, `jobs` at a time, the largest first (the copy ends when the longest one does).
    missing.sort_by_key(|(desc, _)| std::cmp::Reverse(desc.size));
    let sent: Vec<(Outcome, &Descriptor, Descriptor)> = futures_util::stream::iter(missing)
        .map(|(desc, _)| {
            let moved = moved.clone();
            let convert = convert.contains(&desc.digest);
            async move {
                let (outcome, stored) = transfer(src, dst, desc, convert, opts, moved).await?;
                finished(src, dst, desc, &outcome, &stored, opts).await;
                Ok::<_, Error>((outcome, desc, stored))
            }
        })
        .buffer_unordered(opts.jobs.max(1))
        .try_collect()
        .await?;
    // (what happened, the source's descriptor, the blob as stored at the destination)
    let outcomes: Vec<(Outcome, &Descriptor, Descriptor)> = found
        .into_iter()
        .filter_map(|(desc, f)| f.map(|(o, stored)| (o, desc, stored)))
        .chain(sent)
        .collect();

    // Source digest → compressed descriptor, for the layers compressed on the way (or found compressed).
    let replaced: HashMap<_, _> = outcomes
        .iter()
        .filter(|(_, source, stored)| stored.digest != source.digest)
        .map(|(_, source, stored)| (source.digest.clone(), stored.clone()))
        .collect();
    let top = if opts.blobs_only {
        top
    } else {
        put_manifests(dst, &manifests, &replaced).await?
    };
    // Pulled from a registry: remember which compressed blob holds which layer, so a later push of an image built on
    // them (a `docker build FROM` this one) finds them compressed where they came from.
    if let (Some(hints), Some(_)) = (&opts.hints, src.mount_origin()) {
        for m in manifests.iter().filter(|m| !media::is_index(&m.media_type)) {
            record_pulled_layers(hints, src, m).await;
        }
    }

    let mut report = CopyReport {
        digest: top.digest.to_string(),
        media_type: top.media_type.clone(),
        manifests: manifests.len(),
        bytes_moved: moved.load(Ordering::Relaxed),
        ..CopyReport::default()
    };
    for (outcome, source, stored) in outcomes {
        if convert.contains(&source.digest) {
            report.layers.push(LayerReport {
                diff_id: source.digest.to_string(),
                digest: stored.digest.to_string(),
                size: stored.size,
                outcome: outcome.name(),
            });
        }
        report.count(outcome, source.size);
    }
    // In the image's order (the transfers ended in any order).
    let order: HashMap<String, usize> = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| (b.digest.to_string(), i))
        .collect();
    report
        .layers
        .sort_by_key(|l| order.get(&l.diff_id).copied().unwrap_or(usize::MAX));
    Ok(report)
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Outcome::Skipped => "skipped",
            Outcome::Mounted => "mounted",
            Outcome::Copied => "copied",
            Outcome::Compressed => "compressed",
        }
    }
}

impl CopyReport {
    pub(crate) fn count(&mut self, outcome: Outcome, size: u64) {
        match outcome {
            Outcome::Skipped => {
                self.blobs_skipped += 1;
                self.bytes_skipped += size;
            }
            Outcome::Mounted => {
                self.blobs_mounted += 1;
                self.bytes_mounted += size;
            }
            Outcome::Copied => self.blobs_copied += 1,
            Outcome::Compressed => {
                self.blobs_copied += 1;
                self.layers_compressed += 1;
            }
        }
    }
}

/// Writes the manifests children first (`manifests` lists parents first, the named one at 0), rewriting the ones
/// whose layers were compressed on the way, and the indexes above them. Returns the manifest written under the
/// destination's name.
pub(crate) async fn put_manifests(
    dst: &dyn ImageDestination,
    manifests: &[Manifest],
    replaced: &HashMap<wharf_oci::Digest, Descriptor>,
) -> Result<Manifest, Error> {
    let mut rewritten: HashMap<wharf_oci::Digest, Manifest> = HashMap::new();
    let mut top = None;
    for (i, m) in manifests.iter().enumerate().rev() {
        let new = rewrite(m, replaced, &rewritten)?;
        dst.put_manifest(&new, i == 0).await?;
        if i == 0 {
            top = Some(new.clone());
        }
        if new.digest != m.digest {
            rewritten.insert(m.digest.clone(), new);
        }
    }
    top.ok_or_else(|| Error::BadOption("no manifest to write".into()))
}

/// `m` with compressed layers (image manifests) or rewritten children (indexes) in place of the originals.
fn rewrite(
    m: &Manifest,
    layers: &HashMap<wharf_oci::Digest, Descriptor>,
    children: &HashMap<wharf_oci::Digest, Manifest>,
) -> Result<Manifest, Error> {
    if layers.is_empty() && children.is_empty() {
        return Ok(m.clone());
    }
    let bad = |reason: String| Error::Manifest {
        what: m.digest.to_string(),
        reason,
    };
    let mut json: serde_json::Value = serde_json::from_slice(&m.bytes).map_err(|e| bad(e.to_string()))?;
    let mut changed = false;
    let field = if media::is_index(&m.media_type) {
        "manifests"
    } else {
        "layers"
    };
    if let Some(list) = json.get_mut(field).and_then(|v| v.as_array_mut()) {
        for entry in list {
            let Some(digest) = entry
                .get("digest")
                .and_then(|d| d.as_str())
                .and_then(|d| d.parse::<wharf_oci::Digest>().ok())
            else {
                continue;
            };
            let (new_digest, new_size, new_type) = if let Some(l) = layers.get(&digest) {
                (l.digest.to_string(), l.size, Some(l.media_type.clone()))
            } else if let Some(c) = children.get(&digest) {
                (c.digest.to_string(), c.bytes.len() as u64, None)
            } else {
                continue;
            };
            if let Some(obj) = entry.as_object_mut() {
                obj.insert("digest".into(), new_digest.into());
                obj.insert("size".into(), new_size.into());
                if let Some(t) = new_type {
                    obj.insert("mediaType".into(), t.into());
                }
                changed = true;
            }
        }
    }
    if !changed {
        return Ok(m.clone());
    }
    let bytes = serde_json::to_vec(&json).map_err(|e| bad(e.to_string()))?;
    Ok(Manifest {
        digest: wharf_oci::Digest::sha256_of(&bytes),
        bytes: bytes.into(),
        media_type: m.media_type.clone(),
    })
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

async fn find_existing(
    src: &dyn ImageSource,
    dst: &dyn ImageDestination,
    desc: &Descriptor,
    convert: bool,
    opts: &CopyOptions,
) -> Result<Option<(Outcome, Descriptor)>, Error> {
    if convert {
        return existing_layer(dst, desc, opts).await;
    }
    if dst.has_blob(desc).await? {
        tracing::debug!(digest = %desc.digest, "blob already at the destination");
        return Ok(Some((Outcome::Skipped, desc.clone())));
    }
    if let Some(origin) = src.mount_origin()
        && dst.try_mount(desc, &origin).await?
    {
        tracing::debug!(digest = %desc.digest, from = %origin.repository, "blob mounted");
        return Ok(Some((Outcome::Mounted, desc.clone())));
    }
    if let (Some(hints), Some(target)) = (&opts.hints, dst.mount_target())
        && let Some(repository) = hints.lookup(&target.registry, &desc.digest).await
        && repository != target.repository
    {
        let origin = MountOrigin {
            registry: target.registry,
            repository,
        };
        if dst.try_mount(desc, &origin).await? {
            tracing::debug!(digest = %desc.digest, from = %origin.repository, "blob mounted (local record)");
            return Ok(Some((Outcome::Mounted, desc.clone())));
        }
    }
    Ok(None)
}

/// Sends one blob the destination does not have, compressing it on the way when `convert`; a failure that may pass
/// starts it again ([`BLOB_ATTEMPTS`] in all).
async fn transfer(
    src: &dyn ImageSource,
    dst: &dyn ImageDestination,
    desc: &Descriptor,
    convert: bool,
    opts: &CopyOptions,
    moved: Arc<AtomicU64>,
) -> Result<(Outcome, Descriptor), Error> {
    let mut attempt = 1;
    loop {
        let result = async {
            let stream = src.get_blob(desc).await?;
            send_blob(dst, desc, stream, &src.describe(), convert, opts, moved.clone()).await
        }
        .await;
        match result {
            Ok(stored) => {
                tracing::debug!(digest = %desc.digest, size = desc.size, "blob copied");
                let outcome = if convert { Outcome::Compressed } else { Outcome::Copied };
                return Ok((outcome, stored));
            }
            // A streamed body cannot be replayed; chunks already resume inside the registry destination, so what
            // reaches here (a source that failed, a session the registry dropped) starts the blob again.
            Err(e) if e.is_temporary() && attempt < BLOB_ATTEMPTS => {
                tracing::warn!(digest = %desc.digest, error = %e, attempt, "blob transfer failed; starting it again");
                tokio::time::sleep(Duration::from_millis(500) * attempt).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A layer about to be compressed (`desc` is its uncompressed form: its digest is the diff_id) that the destination
/// may hold already, compressed: the forms the local record knows, then the ones the destination's layer index
/// reports. Each is checked with a HEAD (then skipped) or mounted from a repository of the same registry; only the
/// compression asked for is taken. `None`: compress and send it.
async fn existing_layer(
    dst: &dyn ImageDestination,
    desc: &Descriptor,
    opts: &CopyOptions,
) -> Result<Option<(Outcome, Descriptor)>, Error> {
    let wanted = opts.compression.layer_media_type(&desc.media_type);
    let fits = |d: &Descriptor| same_compression(&d.media_type, &wanted) && d.size > 0;
    let stored = |found: &Descriptor| {
        let mut stored = desc.clone();
        stored.digest = found.digest.clone();
        stored.size = found.size;
        stored.media_type = found.media_type.clone();
        stored
    };
    let target = dst.mount_target();
    if let Some(hints) = &opts.hints {
        for form in hints.layer(&desc.digest).await.into_iter().filter(|d| fits(d)) {
            if dst.has_blob(&form).await? {
                tracing::debug!(diff_id = %desc.digest, digest = %form.digest, "layer already there (local record)");
                return Ok(Some((Outcome::Skipped, stored(&form))));
            }
            if let Some(target) = &target
                && let Some(repository) = hints.lookup(&target.registry, &form.digest).await
                && mount(dst, &form, target, repository).await?
            {
                tracing::debug!(diff_id = %desc.digest, digest = %form.digest, "layer mounted (local record)");
                return Ok(Some((Outcome::Mounted, stored(&form))));
            }
        }
    }
    for known in dst
        .known_layers(&desc.digest)
        .await
        .into_iter()
        .filter(|k| fits(&k.blob))
    {
        let in_place = target
            .as_ref()
            .is_some_and(|t| known.repository.as_deref() == Some(t.repository.as_str()));
        if in_place && dst.has_blob(&known.blob).await? {
            tracing::debug!(diff_id = %desc.digest, digest = %known.blob.digest, "layer already there (registry index)");
            return Ok(Some((Outcome::Skipped, stored(&known.blob))));
        }
        if let (Some(target), Some(repository)) = (&target, known.repository)
            && mount(dst, &known.blob, target, repository).await?
        {
            tracing::debug!(diff_id = %desc.digest, digest = %known.blob.digest, "layer mounted (registry index)");
            return Ok(Some((Outcome::Mounted, stored(&known.blob))));
        }
    }
    Ok(None)
}

/// Mounts `blob` into `target` from `repository` of the same registry.
async fn mount(
    dst: &dyn ImageDestination,
    blob: &Descriptor,
    target: &MountOrigin,
    repository: String,
) -> Result<bool, Error> {
    if repository == target.repository {
        return Ok(false);
    }
    let origin = MountOrigin {
        registry: target.registry.clone(),
        repository,
    };
    dst.try_mount(blob, &origin).await
}

/// Both gzip, or both zstd.
fn same_compression(a: &str, b: &str) -> bool {
    ["gzip", "zstd"].iter().any(|c| a.ends_with(c) && b.ends_with(c))
}

/// Records, for the image manifest `m` of a registry source, each compressed layer under its uncompressed digest
/// (from the config's `rootfs.diff_ids`). Best effort: a config that cannot be read records nothing.
async fn record_pulled_layers(hints: &MountHints, src: &dyn ImageSource, m: &Manifest) {
    let Ok(view) = parse(m) else { return };
    let Some(config) = view.config.as_ref().filter(|c| c.size <= 1 << 20) else {
        return;
    };
    let Ok(stream) = src.get_blob(config).await else { return };
    let Ok(chunks) = stream.try_collect::<Vec<_>>().await else {
        return;
    };
    let bytes: Vec<u8> = chunks.concat();
    if wharf_oci::Digest::sha256_of(&bytes) != config.digest {
        return;
    }
    let Ok(diff_ids) = wharf_oci::manifest::config_diff_ids(&bytes) else {
        return;
    };
    if diff_ids.len() != view.layers.len() {
        return;
    }
    for (diff_id, layer) in diff_ids.iter().zip(&view.layers) {
        if !is_uncompressed_layer(&layer.media_type) {
            hints.record_layer(diff_id, layer, None).await;
        }
    }
}

/// A blob is in place at the destination: its progress line ends, and the content store records where it is.
async fn finished(
    src: &dyn ImageSource,
    dst: &dyn ImageDestination,
    desc: &Descriptor,
    outcome: &Outcome,
    stored: &Descriptor,
    opts: &CopyOptions,
) {
    if let Some(p) = &opts.progress {
        p.finish(&desc.digest, outcome.name());
    }
    if let Some(h) = &opts.hints {
        remember(h, src, dst, desc, stored).await;
    }
}

/// Records where the blob now is (and where it came from) for later mounts.
async fn remember(
    hints: &MountHints,
    src: &dyn ImageSource,
    dst: &dyn ImageDestination,
    desc: &Descriptor,
    stored: &Descriptor,
) {
    if let Some(o) = src.mount_origin() {
        hints.record(&o.registry, &o.repository, &desc.digest).await;
    }
    if let Some(t) = dst.mount_target() {
        hints.record(&t.registry, &t.repository, &stored.digest).await;
    }
    // A layer compressed (or found compressed) on the way: its uncompressed digest leads to that blob next time.
    if stored.digest != desc.digest && is_uncompressed_layer(&desc.media_type) {
        hints.record_layer(&desc.digest, stored, Some(desc.size)).await;
    }
}

/// Sends one blob's source stream to the destination, verified against `desc`: as it is, or (`convert`)
/// compressed on the way, in which case the returned descriptor is the compressed blob's.
pub(crate) async fn send_blob(
    dst: &dyn ImageDestination,
    desc: &Descriptor,
    stream: BlobStream,
    from: &str,
    convert: bool,
    opts: &CopyOptions,
    moved: Arc<AtomicU64>,
) -> Result<Descriptor, Error> {
    let stream = match &opts.progress {
        Some(p) => {
            let (p, digest) = (p.clone(), desc.digest.clone());
            stream.inspect_ok(move |b| p.advance(&digest, b.len() as u64)).boxed()
        }
        None => stream,
    };
    let verified = Verifying::new(stream, desc.digest.clone(), desc.size, from.to_owned(), moved).boxed();
    if !convert {
        dst.put_blob(desc, verified).await?;
        return Ok(desc.clone());
    }
    // `Verifying` checks the diff_id; no second hash of the uncompressed bytes.
    let compressed = compress_only(verified, opts.compression, opts.workers, Some(desc.size));
    let (digest, size) = dst.put_new_blob(compressed).await?;
    tracing::debug!(diff_id = %desc.digest, %digest, size, "layer compressed");
    let mut stored = desc.clone();
    stored.media_type = opts.compression.layer_media_type(&desc.media_type);
    stored.digest = digest;
    stored.size = size;
    Ok(stored)
}
