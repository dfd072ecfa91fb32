//! wharf's layer index: a layer's uncompressed digest (its `diff_id`) → the compressed blobs that hold it and the
//! repositories that link them, so a client about to compress a layer from a Docker engine can ask whether the
//! registry has it already (`GET /wharf/v1/layers/<diff_id>`) and skip or mount it instead.
//!
//! Learnt from every image manifest pushed (its config's `rootfs.diff_ids` beside its `layers`) and, when the server
//! starts, from every tagged image manifest in the store (a background pass; a store of mirrored repositories is not
//! walked upstream). The manifests are the durable record: the index is derived from them, held in memory, bounded
//! ([`MAX_LAYERS`] layers, [`MAX_FORMS`] compressed forms each, [`MAX_REPOS`] repositories per form), and never
//! trusted: every answer is checked against the store (the repository still links the blob) at the moment it is
//! given, so a blob collected since, or a manifest write that died half-way, never makes a client skip a blob that is
//! not there. Entries found stale are dropped then.
//!
//! The answer never names a repository the caller may not pull; a layer held only in such repositories is answered
//! as unknown (404).

use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;
use wharf_oci::manifest::{Descriptor, ManifestView};
use wharf_oci::{Digest, ErrorCode, media};
use wharf_storage::{Reference, RegistryStore};

use crate::{ApiError, App};

/// Layers remembered.
pub const MAX_LAYERS: u64 = 1_000_000;
/// Compressed forms remembered per layer.
const MAX_FORMS: usize = 4;
/// Repositories remembered per form (the most recent first).
const MAX_REPOS: usize = 8;
/// Largest image config read to learn its diff_ids.
const MAX_CONFIG: u64 = 1 << 20;
/// Manifests read at once by the startup pass.
const REBUILD_CONCURRENCY: usize = 8;

#[derive(Debug, Clone)]
struct Form {
    blob: Descriptor,
    repos: Vec<String>,
}

/// The index (cheap to clone: shared).
#[derive(Clone)]
pub struct LayerIndex {
    layers: moka::sync::Cache<Digest, Arc<Mutex<Vec<Form>>>>,
}

impl Default for LayerIndex {
    fn default() -> Self {
        LayerIndex {
            layers: moka::sync::Cache::builder().max_capacity(MAX_LAYERS).build(),
        }
    }
}

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

impl LayerIndex {
    /// Records that `repo` links `blob`, which holds layer `diff_id`.
    pub fn add(&self, diff_id: &Digest, blob: &Descriptor, repo: &str) {
        let forms = self.layers.get_with(diff_id.clone(), Default::default);
        let mut forms = forms.lock().unwrap_or_else(PoisonError::into_inner);
        let at = match forms.iter().position(|f| f.blob.digest == blob.digest) {
            Some(i) => i,
            None => {
                if forms.len() >= MAX_FORMS {
                    forms.pop();
                }
                forms.insert(
                    0,
                    Form {
                        blob: blob.clone(),
                        repos: Vec::new(),
                    },
                );
                0
            }
        };
        let repos = &mut forms[at].repos;
        repos.retain(|r| r != repo);
        repos.insert(0, repo.to_owned());
        repos.truncate(MAX_REPOS);
    }

    fn forms(&self, diff_id: &Digest) -> Vec<Form> {
        self.layers
            .get(diff_id)
            .map(|f| f.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .unwrap_or_default()
    }

    fn forget(&self, diff_id: &Digest, blob: &Digest, repo: &str) {
        if let Some(forms) = self.layers.get(diff_id) {
            let mut forms = forms.lock().unwrap_or_else(PoisonError::into_inner);
            for f in forms.iter_mut().filter(|f| f.blob.digest == *blob) {
                f.repos.retain(|r| r != repo);
            }
            forms.retain(|f| !f.repos.is_empty());
        }
    }

    /// Learns the layers of image manifest `body` just stored in `repo` (anything else is ignored): the config's
    /// `rootfs.diff_ids`, one per layer, in order.
    pub async fn learn(&self, store: &dyn RegistryStore, repo: &str, body: &[u8], media_type: &str) {
        let Ok(view) = ManifestView::parse(body, Some(media_type)) else {
            return;
        };
        let Some(config) = view.config.as_ref().filter(|c| c.size <= MAX_CONFIG) else {
            return;
        };
        if media::is_index(&view.media_type) || view.layers.is_empty() {
            return;
        }
        let Some(diff_ids) = read_diff_ids(store, repo, config).await else {
            return;
        };
        if diff_ids.len() != view.layers.len() {
            return;
        }
        for (diff_id, layer) in diff_ids.iter().zip(&view.layers) {
            self.add(diff_id, layer, repo);
        }
    }

    /// Learns every tagged image manifest of `store`'s repositories, except those under `skip` (mirrored
    /// namespaces: their tags live upstream).
    pub async fn rebuild(&self, store: Arc<dyn RegistryStore>, skip: Vec<String>) {
        let started = std::time::Instant::now();
        let repos = match store.repositories().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "layer index: cannot list repositories");
                return;
            }
        };
        let repos: Vec<String> = repos
            .into_iter()
            .filter(|r| !skip.iter().any(|s| r.split('/').next() == Some(s.as_str())))
            .collect();
        let mut images = Vec::new();
        for repo in &repos {
            if let Ok(Some(tags)) = store.tags(repo).await {
                images.extend(tags.into_iter().map(|t| (repo.clone(), t)));
            }
        }
        let learnt = futures_util::stream::iter(images)
            .map(|(repo, tag)| {
                let store = store.clone();
                async move {
                    let Ok(Some(m)) = store.get_manifest(&repo, &Reference::Tag(tag)).await else {
                        return;
                    };
                    self.learn(store.as_ref(), &repo, &m.body, &m.media_type).await;
                }
            })
            .buffer_unordered(REBUILD_CONCURRENCY)
            .count()
            .await;
        self.layers.run_pending_tasks();
        tracing::info!(
            repositories = repos.len(),
            images = learnt,
            layers = self.layers.entry_count(),
            took_ms = started.elapsed().as_millis() as u64,
            "layer index built"
        );
    }
}

async fn read_diff_ids(store: &dyn RegistryStore, repo: &str, config: &Descriptor) -> Option<Vec<Digest>> {
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
    wharf_oci::manifest::config_diff_ids(&bytes).ok()
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
    for form in app.layers.forms(&diff_id) {
        for repo in &form.repos {
            let visible = match (&app.auth, &caller) {
                (Some(auth), Some(caller)) => auth.may_pull(caller, repo),
                _ => true,
            };
            if !visible {
                continue;
            }
            match app.store.repo_blob_size(repo, &form.blob.digest).await {
                Ok(Some(_)) => {
                    blobs.push(KnownBlob {
                        media_type: form.blob.media_type.clone(),
                        digest: form.blob.digest.to_string(),
                        size: form.blob.size,
                        repository: repo.clone(),
                    });
                    break;
                }
                // Unlinked or collected since: the index forgets it.
                Ok(None) => app.layers.forget(&diff_id, &form.blob.digest, repo),
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
