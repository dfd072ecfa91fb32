//! wharf's layer index: a layer's uncompressed digest (its `diff_id`) → the compressed blobs that hold it and the
//! repositories that link them, so a client about to compress a layer from a Docker engine can ask whether the
//! registry has it already (`GET /wharf/v1/layers/<diff_id>`) and skip or mount it instead.
//!
//! Kept in the storage backend (`wharf_storage::layer_index`: files, or objects in the bucket), cached like other
//! metadata (memory, or the replicas' Redis). Written on every image manifest PUT, from its config's
//! `rootfs.diff_ids` beside its `layers`, *before* the manifest is stored: a 201 means the index has the image, and a
//! process killed in between leaves entries whose repository links the blob anyway (the PUT checked it), never a
//! manifest the index missed. Built from every stored manifest when the store has no complete index (the first start
//! on an older store; `wharf index rebuild`), in the background. Garbage collection prunes the blobs it deletes.
//!
//! A manifest's pairing of a blob with a layer is a claim, answered only once checked (the blob decompresses to that
//! layer: [`crate::layer_claims`]), so nobody can have other users mount a blob of their choosing as a layer of theirs.
//!
//! Never trusted beyond that: every answer is checked against the store (the repository still links the blob) at the moment it
//! is given, so a blob collected since, or an entry a crash left, never makes a client skip a blob that is not
//! there; entries found stale are dropped then. The answer never names a repository the caller may not pull; a layer
//! held only in such repositories is answered as unknown (404).

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;
use wharf_oci::manifest::{Descriptor, ManifestView};
use wharf_oci::{Digest, ErrorCode, media};
use wharf_storage::{LayerBlob, LayerEntry, Prune, Reference, RegistryStore, StorageError};

use crate::{ApiError, App};

/// Largest image config read to learn its diff_ids.
const MAX_CONFIG: u64 = 1 << 20;
/// Manifests read at once by a rebuild.
const REBUILD_CONCURRENCY: usize = 8;

/// `GET /wharf/v1/layers/<diff_id>`.
#[derive(Debug, Serialize)]
pub struct LayerAnswer {
    pub diff_id: String,
    pub blobs: Vec<KnownBlob>,
}

#[derive(Debug, Serialize)]
pub struct KnownBlob {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    /// A repository the caller may pull, and mount, the blob from.
    pub repository: String,
}

/// What a rebuild did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Rebuilt {
    pub repositories: usize,
    /// Image manifests read (tagged, and the children of tagged indexes).
    pub images: usize,
    /// Claims recorded that the index had not checked (the checker decides them next).
    pub recorded: usize,
    /// Stale entries removed first (a full rebuild only).
    pub pruned: usize,
}

/// The config of image manifest `view` stored in `repo`, for the layer index and the build cache; `None` for
/// anything else (an index, an artifact, a config too large, missing or not matching its digest).
pub async fn image_config(store: &dyn RegistryStore, repo: &str, view: &ManifestView) -> Option<Vec<u8>> {
    let config = view.config.as_ref()?;
    if media::is_index(&view.media_type) || view.layers.is_empty() {
        return None;
    }
    read_config(store, repo, config).await
}

/// The index entries of image manifest `view` stored in `repo` with `config`: one per layer, from the config's
/// `rootfs.diff_ids`; none if they do not pair up.
fn image_entries(repo: &str, view: &ManifestView, config: &[u8]) -> Vec<LayerEntry> {
    let Ok(diff_ids) = wharf_oci::manifest::config_diff_ids(config) else {
        return Vec::new();
    };
    if diff_ids.len() != view.layers.len() {
        return Vec::new();
    }
    diff_ids
        .into_iter()
        .zip(&view.layers)
        .map(|(diff_id, layer)| LayerEntry {
            diff_id,
            blob: LayerBlob {
                media_type: layer.media_type.clone(),
                digest: layer.digest.clone(),
                size: layer.size,
            },
            repository: repo.to_owned(),
        })
        .collect()
}

/// Records the layers of image manifest `view` with `config` (see [`image_config`]), about to be stored in `repo`;
/// returns the claims made: entries whose blob the index has not checked yet (see [`crate::layer_claims`]), for the
/// checker.
pub async fn learn(
    store: &dyn RegistryStore,
    repo: &str,
    view: &ManifestView,
    config: &[u8],
) -> Result<Vec<LayerEntry>, StorageError> {
    let mut new = Vec::new();
    let mut claims = Vec::new();
    for e in image_entries(repo, view, config) {
        let forms = store.layer_forms(&e.diff_id).await?;
        match forms.iter().find(|f| f.blob.digest == e.blob.digest) {
            // Checked, and this repository known: nothing to write.
            Some(f) if f.repositories.contains(&e.repository) => continue,
            // Checked: this repository's fact only.
            Some(_) => {}
            None => claims.push(e.clone()),
        }
        if !new.contains(&e) {
            new.push(e);
        }
    }
    if !new.is_empty() {
        store.record_layers(&new).await?;
    }
    Ok(claims)
}

/// Builds the index from every tagged image manifest of `store`'s repositories (and the children of tagged
/// indexes), except those under `skip` (mirrored namespaces: their tags live upstream). With `prune`, entries whose
/// repository no longer links the blob are removed first. The index is marked incomplete while this runs, complete
/// once it is done, so a build cut short is done again at the next start.
pub async fn rebuild(store: Arc<dyn RegistryStore>, skip: &[String], prune: bool) -> Result<Rebuilt, StorageError> {
    store.set_layer_index_complete(false).await?;
    let mut done = Rebuilt::default();
    if prune {
        done.pruned = store.prune_layer_index(Prune::Unlinked).await?;
    }
    let tags = tagged(store.as_ref(), skip).await?;
    done.repositories = tags.repositories;
    let counts: Vec<Result<(usize, usize), StorageError>> = futures_util::stream::iter(tags.tags)
        .map(|(repo, tag)| {
            let store = store.clone();
            async move {
                let mut counts = (0, 0);
                for (_, view) in images_of_tag(store.as_ref(), &repo, &tag).await? {
                    counts.0 += 1;
                    if let Some(config) = image_config(store.as_ref(), &repo, &view).await {
                        counts.1 += learn(store.as_ref(), &repo, &view, &config).await?.len();
                    }
                }
                Ok(counts)
            }
        })
        .buffer_unordered(REBUILD_CONCURRENCY)
        .collect()
        .await;
    // One image that cannot be read is skipped (and said), not the whole build.
    for c in counts {
        match c {
            Ok((images, recorded)) => {
                done.images += images;
                done.recorded += recorded;
            }
            Err(e) => tracing::warn!(error = %e, "layer index: an image could not be learnt"),
        }
    }
    store.set_layer_index_complete(true).await?;
    Ok(done)
}

/// Every tag of `store`'s repositories, except those under `skip` (mirrored namespaces: their tags live upstream).
pub(crate) struct Tagged {
    pub repositories: usize,
    pub tags: Vec<(String, String)>,
}

pub(crate) async fn tagged(store: &dyn RegistryStore, skip: &[String]) -> Result<Tagged, StorageError> {
    let repos: Vec<String> = store
        .repositories()
        .await?
        .into_iter()
        .filter(|r| !skip.iter().any(|s| r.split('/').next() == Some(s.as_str())))
        .collect();
    let mut tags = Vec::new();
    for repo in &repos {
        if let Some(t) = store.tags(repo).await? {
            tags.extend(t.into_iter().map(|t| (repo.clone(), t)));
        }
    }
    Ok(Tagged {
        repositories: repos.len(),
        tags,
    })
}

/// The image manifests a tag reaches: its manifest, or the children of the index it names. (digest, view) each.
pub(crate) async fn images_of_tag(
    store: &dyn RegistryStore,
    repo: &str,
    tag: &str,
) -> Result<Vec<(Digest, ManifestView)>, StorageError> {
    let Some(m) = store.get_manifest(repo, &Reference::Tag(tag.to_owned())).await? else {
        return Ok(Vec::new());
    };
    let Ok(view) = ManifestView::parse(&m.body, Some(&m.media_type)) else {
        return Ok(Vec::new());
    };
    if !media::is_index(&view.media_type) {
        return Ok(vec![(m.digest, view)]);
    }
    let mut images = Vec::new();
    for child in &view.manifests {
        let Some(c) = store
            .get_manifest(repo, &Reference::Digest(child.digest.clone()))
            .await?
        else {
            continue;
        };
        if let Ok(v) = ManifestView::parse(&c.body, Some(&c.media_type))
            && !media::is_index(&v.media_type)
        {
            images.push((c.digest, v));
        }
    }
    Ok(images)
}

/// At startup, in the background: builds the index if the store has none complete (see [`rebuild`]), then checks
/// the claims left unchecked (see [`crate::layer_claims`]).
pub async fn build_if_missing(store: Arc<dyn RegistryStore>, skip: Vec<String>) {
    build_unless_complete(store.clone(), skip).await;
    let _ = crate::layer_claims::ClaimChecker::check_pending(store.as_ref()).await;
}

async fn build_unless_complete(store: Arc<dyn RegistryStore>, skip: Vec<String>) {
    match store.layer_index_complete().await {
        Ok(Some(false)) => {}
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = %e, "layer index: cannot tell whether it is built");
            return;
        }
    }
    let started = std::time::Instant::now();
    match rebuild(store, &skip, false).await {
        Ok(r) => tracing::info!(
            repositories = r.repositories,
            images = r.images,
            recorded = r.recorded,
            took_ms = started.elapsed().as_millis() as u64,
            "layer index built"
        ),
        Err(e) => tracing::warn!(error = %e, "layer index: the build failed; it runs again at the next start"),
    }
}

/// The bytes of an image config `repo` links, if it is at most [`MAX_CONFIG`] bytes and hashes to its digest.
async fn read_config(store: &dyn RegistryStore, repo: &str, config: &Descriptor) -> Option<Vec<u8>> {
    if config.size > MAX_CONFIG {
        return None;
    }
    let blob = store.open_blob(repo, &config.digest).await.ok()??;
    if blob.size > MAX_CONFIG {
        return None;
    }
    let mut stream = blob.source.read(None).await.ok()?;
    let mut bytes = Vec::with_capacity(blob.size as usize);
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.ok()?);
        if bytes.len() as u64 > MAX_CONFIG {
            return None;
        }
    }
    (Digest::of(config.digest.algorithm(), &bytes) == config.digest).then_some(bytes)
}

/// `GET /wharf/v1/layers/<diff_id>`: the compressed blobs holding the layer, each with a repository the caller may
/// pull it from and that links it now; 404 `BLOB_UNKNOWN` when there is none.
pub async fn get(State(app): State<App>, Path(diff_id): Path<String>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    match answer(&app, &diff_id, &parts.headers, &parts.uri).await {
        Ok(a) => match serde_json::to_vec(&a) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        },
        Err(e) => e.into_response(),
    }
}

async fn answer(app: &App, diff_id: &str, headers: &HeaderMap, uri: &Uri) -> Result<LayerAnswer, ApiError> {
    let unknown = || ApiError::new(ErrorCode::BlobUnknown, format!("layer {diff_id} is not known here"));
    let Ok(diff_id) = diff_id.parse::<Digest>() else {
        return Err(ApiError::digest_invalid(format!("{diff_id:?} is not a digest")));
    };
    let caller = match &app.auth {
        Some(auth) => Some(auth.reader(headers, uri).await?),
        None => None,
    };
    let mut blobs = Vec::new();
    let forms = app.store.layer_forms(&diff_id).await.map_err(ApiError::from)?;
    for form in forms {
        for repo in &form.repositories {
            let visible = match (&app.auth, &caller) {
                (Some(auth), Some(caller)) => auth.may_pull(caller, repo),
                _ => true,
            };
            if !visible {
                continue;
            }
            match app.store.repo_blob_size(repo, &form.blob.digest).await {
                // (A size other than the checked one cannot be this blob: skip it.)
                Ok(Some(size)) if size == form.blob.size => {
                    blobs.push(KnownBlob {
                        media_type: form.blob.media_type.clone(),
                        digest: form.blob.digest.to_string(),
                        size: form.blob.size,
                        repository: repo.clone(),
                    });
                    break;
                }
                // Unlinked or collected since: the index forgets it.
                Ok(None) => {
                    let stale = LayerEntry {
                        diff_id: diff_id.clone(),
                        blob: form.blob.clone(),
                        repository: repo.clone(),
                    };
                    if let Err(e) = app.store.forget_layer(&stale).await {
                        tracing::debug!(error = %e, "layer index: cannot drop a stale entry");
                    }
                }
                Ok(Some(_)) => {}
                Err(e) => tracing::debug!(error = %e, "layer index: cannot check a blob"),
            }
        }
    }
    if blobs.is_empty() {
        return Err(unknown());
    }
    Ok(LayerAnswer {
        diff_id: diff_id.to_string(),
        blobs,
    })
}
