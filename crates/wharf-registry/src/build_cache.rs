//! The smart cache's half in the registry: which stored image would serve a build as cache furthest (seed 001's
//! trie over every image's layer chain).
//!
//! Every image contributes its chain of build steps, read from its config: one step per `history` entry (empty-layer
//! steps too), keyed as the Docker builder compares them when an image is given as `--cache-from`: a step of the
//! base image must equal the candidate's exactly (its `created_by`, `created` and the layer it made), a step of the
//! Dockerfile matches on its `created_by` alone (the instruction as the builder writes it, which for `COPY`/`ADD`
//! carries the sources' content hash). The chains share their prefixes in a trie, so a query walks the base image's
//! steps once and then follows the Dockerfile's steps down every branch that matches.
//!
//! `POST /wharf/v1/cache/candidates` with `{"base": [steps...], "steps": ["created_by", ...]}` answers the images
//! ranked by Dockerfile steps matched, each with the layers a build must fetch to hit that far and their bytes. Only
//! images the caller may pull, and that are still stored, are named (checked when the answer is given; an image
//! deleted or collected since is dropped from the trie then).
//!
//! The trie is derived from the manifests: learnt on every image manifest PUT, built from every tagged image when
//! the server starts (mirrored namespaces left out), held in memory and bounded ([`MAX_NODES`] steps,
//! [`MAX_IMAGES_PER_NODE`] images remembered per step).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use wharf_oci::manifest::ManifestView;
use wharf_oci::{Digest, ErrorCode};
use wharf_storage::{Reference, RegistryStore};

use crate::{ApiError, App};

/// Steps remembered in all.
pub const MAX_NODES: usize = 1_000_000;
/// Images remembered per step (the most recent first): any of them serves a build that far.
pub const MAX_IMAGES_PER_NODE: usize = 8;
/// Candidates answered.
const MAX_CANDIDATES: usize = 5;
/// Largest query body.
const MAX_QUERY_BYTES: usize = 1 << 20;
/// Steps a query may name (base and Dockerfile together).
const MAX_QUERY_STEPS: usize = 1_000;
/// Trie nodes one query may visit.
const MAX_VISITS: usize = 100_000;
/// Candidates one query may check against the store (each a manifest read).
const MAX_CHECKS: usize = 64;
/// Manifests read at once by the startup pass.
const REBUILD_CONCURRENCY: usize = 8;

/// One step of an image's build, as its config's `history` records it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Step {
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The layer it made; `None` for an empty-layer step (`ENV`, `WORKDIR`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<Digest>,
}

/// A layer of a candidate, as its manifest names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheLayer {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
}

#[derive(Debug)]
struct Image {
    repository: String,
    manifest: Digest,
    layers: Vec<CacheLayer>,
}

#[derive(Debug)]
struct Node {
    /// Layers made by the steps from the root to this one.
    layers: usize,
    /// Children by their `created_by`, each with every variant (other times, other layers).
    children: HashMap<String, Vec<usize>>,
    images: Vec<Arc<Image>>,
}

#[derive(Debug)]
struct Trie {
    nodes: Vec<Node>,
    /// (parent, step) → node.
    index: HashMap<(usize, Step), usize>,
}

impl Default for Trie {
    fn default() -> Self {
        Trie {
            nodes: vec![Node {
                layers: 0,
                children: HashMap::new(),
                images: Vec::new(),
            }],
            index: HashMap::new(),
        }
    }
}

/// The trie (cheap to clone: shared).
#[derive(Debug, Clone, Default)]
pub struct BuildCache {
    trie: Arc<RwLock<Trie>>,
}

/// `POST /wharf/v1/cache/candidates`.
#[derive(Debug, Deserialize)]
pub struct Query {
    /// The base image's steps (its config's history with the layers they made), matched exactly. Empty for
    /// `FROM scratch`.
    #[serde(default)]
    pub base: Vec<Step>,
    /// The Dockerfile's steps after `FROM`: the `created_by` the builder will record for each.
    pub steps: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Candidates {
    pub candidates: Vec<Candidate>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Candidate {
    pub repository: String,
    /// The candidate image's manifest.
    pub digest: Digest,
    /// Dockerfile steps a build hits with it as `--cache-from`.
    pub steps_matched: usize,
    /// The layers a build needs of it to hit that far, base layers first.
    pub layers: Vec<CacheLayer>,
    /// Their bytes (compressed), and of those the bytes beyond the base image's layers.
    pub bytes: u64,
    pub bytes_beyond_base: u64,
}

/// The steps of an image config, with the layer each non-empty one made; `None` if its history does not account
/// for its layers (an image built without history cannot be matched step by step).
pub fn chain(config: &[u8]) -> Option<Vec<Step>> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        history: Vec<History>,
        rootfs: RootFs,
    }
    #[derive(Deserialize)]
    struct History {
        #[serde(default)]
        created_by: String,
        #[serde(default)]
        created: Option<String>,
        #[serde(default)]
        empty_layer: bool,
    }
    #[derive(Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Vec<Digest>,
    }
    let c: Config = serde_json::from_slice(config).ok()?;
    if c.history.is_empty() {
        return None;
    }
    let mut diff_ids = c.rootfs.diff_ids.into_iter();
    let mut steps = Vec::with_capacity(c.history.len());
    for h in c.history {
        let diff_id = if h.empty_layer { None } else { Some(diff_ids.next()?) };
        steps.push(Step {
            created_by: h.created_by,
            created: h.created,
            diff_id,
        });
    }
    diff_ids.next().is_none().then_some(steps)
}

impl BuildCache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Trie> {
        self.trie.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Trie> {
        self.trie.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds an image: its chain of steps, and the layers its manifest names for them (one per non-empty step).
    pub fn insert(&self, repository: &str, manifest: &Digest, steps: &[Step], layers: Vec<CacheLayer>) {
        if steps.iter().filter(|s| s.diff_id.is_some()).count() != layers.len() {
            return;
        }
        let image = Arc::new(Image {
            repository: repository.to_owned(),
            manifest: manifest.clone(),
            layers,
        });
        let mut trie = self.write();
        let mut at = 0;
        for step in steps {
            let next = match trie.index.get(&(at, step.clone())) {
                Some(&n) => n,
                None => {
                    if trie.nodes.len() >= MAX_NODES {
                        tracing::warn!(
                            max = MAX_NODES,
                            "build cache: the trie is full; new images are not learnt"
                        );
                        return;
                    }
                    let n = trie.nodes.len();
                    let layers = trie.nodes[at].layers + usize::from(step.diff_id.is_some());
                    trie.nodes.push(Node {
                        layers,
                        children: HashMap::new(),
                        images: Vec::new(),
                    });
                    trie.index.insert((at, step.clone()), n);
                    trie.nodes[at]
                        .children
                        .entry(step.created_by.clone())
                        .or_default()
                        .push(n);
                    n
                }
            };
            let images = &mut trie.nodes[next].images;
            images.retain(|i| !(i.repository == image.repository && i.manifest == image.manifest));
            images.insert(0, image.clone());
            images.truncate(MAX_IMAGES_PER_NODE);
            at = next;
        }
    }

    /// Forgets an image wherever the trie names it (deleted, or found gone when a query checked it).
    pub(crate) fn forget(&self, repository: &str, manifest: &Digest) {
        let mut trie = self.write();
        for node in &mut trie.nodes {
            node.images
                .retain(|i| !(i.repository == repository && i.manifest == *manifest));
        }
    }

    /// The deepest nodes `query` reaches: (node, Dockerfile steps matched), deepest first. Empty when the base is
    /// not a prefix of any stored image.
    fn reach(&self, query: &Query) -> Vec<(usize, usize)> {
        let trie = self.read();
        let mut at = 0;
        for step in &query.base {
            match trie.index.get(&(at, step.clone())) {
                Some(&n) => at = n,
                None => return Vec::new(),
            }
        }
        let mut reached = Vec::new();
        let mut stack = vec![(at, 0usize)];
        let mut visits = 0;
        while let Some((node, matched)) = stack.pop() {
            visits += 1;
            if visits > MAX_VISITS {
                break;
            }
            let deeper = query
                .steps
                .get(matched)
                .and_then(|key| trie.nodes[node].children.get(key));
            match deeper {
                Some(children) if !children.is_empty() => {
                    stack.extend(children.iter().map(|&c| (c, matched + 1)));
                    // A node passed through still serves as far as it goes, when no image goes deeper from it.
                    if matched > 0 {
                        reached.push((node, matched));
                    }
                }
                _ if matched > 0 => reached.push((node, matched)),
                _ => {}
            }
        }
        reached.sort_by_key(|&(_, matched)| std::cmp::Reverse(matched));
        reached
    }

    /// The images through `node`, with the layers a build needs of them to get there.
    fn images_at(&self, node: usize) -> Vec<(Arc<Image>, usize)> {
        let trie = self.read();
        let layers = trie.nodes[node].layers;
        trie.nodes[node].images.iter().map(|i| (i.clone(), layers)).collect()
    }

    /// Learns image manifest `view`, stored in `repo` as `digest`, with its `config` (see
    /// [`crate::layers::image_config`]).
    pub fn learn(&self, repo: &str, digest: &Digest, view: &ManifestView, config: &[u8]) {
        let Some(steps) = chain(config) else { return };
        // One layer per layer-making step, or the image is not learnt (`zip` below would hide a mismatch).
        if steps.iter().filter(|s| s.diff_id.is_some()).count() != view.layers.len() {
            return;
        }
        let diff_ids = steps.iter().filter_map(|s| s.diff_id.clone());
        let layers = view
            .layers
            .iter()
            .zip(diff_ids)
            .map(|(l, diff_id)| CacheLayer {
                media_type: l.media_type.clone(),
                digest: l.digest.clone(),
                size: l.size,
                diff_id,
            })
            .collect();
        self.insert(repo, digest, &steps, layers);
    }

    /// Learns every tagged image of `store` (and the children of tagged indexes), except repositories under `skip`.
    pub async fn rebuild(&self, store: Arc<dyn RegistryStore>, skip: &[String]) {
        let started = std::time::Instant::now();
        let tags = match crate::layers::tagged(store.as_ref(), skip).await {
            Ok(t) => t.tags,
            Err(e) => {
                tracing::warn!(error = %e, "build cache: cannot list the stored images");
                return;
            }
        };
        let count = tags.len();
        futures_util::stream::iter(tags)
            .for_each_concurrent(REBUILD_CONCURRENCY, |(repo, tag)| {
                let store = store.clone();
                async move {
                    if let Ok(images) = crate::layers::images_of_tag(store.as_ref(), &repo, &tag).await {
                        for (digest, view) in images {
                            if let Some(config) = crate::layers::image_config(store.as_ref(), &repo, &view).await {
                                self.learn(&repo, &digest, &view, &config);
                            }
                        }
                    }
                }
            })
            .await;
        tracing::info!(
            tags = count,
            steps = self.read().nodes.len() - 1,
            took_ms = started.elapsed().as_millis() as u64,
            "build cache trie built"
        );
    }
}

/// `POST /wharf/v1/cache/candidates`: the stored images that would serve a build as cache furthest.
pub async fn candidates(State(app): State<App>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let result = async {
        let body = axum::body::to_bytes(body, MAX_QUERY_BYTES).await.map_err(|_| {
            ApiError::new(
                ErrorCode::SizeInvalid,
                format!("a query is at most {MAX_QUERY_BYTES} bytes"),
            )
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        })?;
        let query: Query = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(ErrorCode::Unsupported, format!("not a cache query: {e}"))
                .with_status(StatusCode::BAD_REQUEST)
        })?;
        if query.base.len() + query.steps.len() > MAX_QUERY_STEPS {
            return Err(ApiError::new(
                ErrorCode::Unsupported,
                format!("a query names at most {MAX_QUERY_STEPS} steps"),
            )
            .with_status(StatusCode::BAD_REQUEST));
        }
        answer(&app, &query, &parts.headers, &parts.uri).await
    }
    .await;
    match result {
        Ok(a) => match serde_json::to_vec(&a) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        },
        Err(e) => e.into_response(),
    }
}

async fn answer(app: &App, query: &Query, headers: &HeaderMap, uri: &Uri) -> Result<Candidates, ApiError> {
    let caller = match &app.auth {
        Some(auth) => Some(auth.reader(headers, uri).await?),
        None => None,
    };
    let base_layers = query.base.iter().filter(|s| s.diff_id.is_some()).count();
    let mut out: Vec<Candidate> = Vec::new();
    let mut checks = 0;
    'nodes: for (node, matched) in app.build_cache.reach(query) {
        if out.len() >= MAX_CANDIDATES && out.last().is_some_and(|c| c.steps_matched > matched) {
            break;
        }
        for (image, needed) in app.build_cache.images_at(node) {
            if out
                .iter()
                .any(|c| c.repository == image.repository && c.digest == image.manifest)
            {
                continue;
            }
            let visible = match (&app.auth, &caller) {
                (Some(auth), Some(caller)) => auth.may_pull(caller, &image.repository),
                _ => true,
            };
            if !visible {
                continue;
            }
            checks += 1;
            if checks > MAX_CHECKS {
                break 'nodes;
            }
            let stored = app
                .store
                .get_manifest(&image.repository, &Reference::Digest(image.manifest.clone()))
                .await
                .map_err(ApiError::from)?;
            if stored.is_none() {
                app.build_cache.forget(&image.repository, &image.manifest);
                continue;
            }
            let layers: Vec<CacheLayer> = image.layers.iter().take(needed).cloned().collect();
            let bytes = layers.iter().map(|l| l.size).sum();
            let bytes_beyond_base = layers.iter().skip(base_layers).map(|l| l.size).sum();
            out.push(Candidate {
                repository: image.repository.clone(),
                digest: image.manifest.clone(),
                steps_matched: matched,
                layers,
                bytes,
                bytes_beyond_base,
            });
        }
    }
    // The most steps first; among equals, the fewest bytes to fetch.
    out.sort_by(|a, b| {
        b.steps_matched
            .cmp(&a.steps_matched)
            .then(a.bytes_beyond_base.cmp(&b.bytes_beyond_base))
    });
    out.truncate(MAX_CANDIDATES);
    Ok(Candidates { candidates: out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_oci::media;

    fn step(by: &str, layer: Option<u8>) -> Step {
        Step {
            created_by: by.to_owned(),
            created: Some("2026-01-01T00:00:00Z".into()),
            diff_id: layer.map(|n| Digest::sha256_of(&[n])),
        }
    }

    fn layers(steps: &[Step]) -> Vec<CacheLayer> {
        steps
            .iter()
            .filter_map(|s| s.diff_id.clone())
            .map(|d| CacheLayer {
                media_type: media::OCI_LAYER_GZIP.into(),
                digest: Digest::sha256_of(d.to_string().as_bytes()),
                size: 100,
                diff_id: d,
            })
            .collect()
    }

    fn add(cache: &BuildCache, repo: &str, steps: &[Step]) -> Digest {
        let digest = Digest::sha256_of(format!("{repo}{steps:?}").as_bytes());
        cache.insert(repo, &digest, steps, layers(steps));
        digest
    }

    /// Each image once, at the deepest step it serves: (repository, steps matched, layers needed).
    fn best(cache: &BuildCache, query: &Query) -> Vec<(String, usize, usize)> {
        let mut out: Vec<(String, usize, usize)> = Vec::new();
        for (node, matched) in cache.reach(query) {
            for (image, needed) in cache.images_at(node) {
                if !out.iter().any(|o| o.0 == image.repository) {
                    out.push((image.repository.clone(), matched, needed));
                }
            }
        }
        out
    }

    #[test]
    fn the_deepest_match_on_the_same_base_wins_and_other_bases_never_match() {
        let cache = BuildCache::default();
        let base = vec![
            step("/bin/sh -c #(nop) ADD file:os in /", Some(1)),
            step("CMD [\"sh\"]", None),
        ];
        let other_base = vec![
            step("/bin/sh -c #(nop) ADD file:os in /", Some(2)),
            step("CMD [\"sh\"]", None),
        ];
        let deps = step("/bin/sh -c apt-get install -y gcc", Some(10));
        let copy_a = step("/bin/sh -c #(nop) COPY file:aaa in /src", Some(11));
        let copy_b = step("/bin/sh -c #(nop) COPY file:bbb in /src", Some(12));
        let workdir = step("/bin/sh -c #(nop) WORKDIR /src", None);
        add(
            &cache,
            "team/a",
            &[base.clone(), vec![workdir.clone(), deps.clone(), copy_a.clone()]].concat(),
        );
        add(
            &cache,
            "team/b",
            &[base.clone(), vec![workdir.clone(), deps.clone(), copy_b.clone()]].concat(),
        );
        add(
            &cache,
            "team/c",
            &[other_base.clone(), vec![workdir.clone(), deps.clone(), copy_b.clone()]].concat(),
        );

        let query = |steps: &[&Step]| Query {
            base: base.clone(),
            steps: steps.iter().map(|s| s.created_by.clone()).collect(),
        };
        // Same base, same WORKDIR and deps, the sources of b: b serves all three steps; a only two.
        let found = best(&cache, &query(&[&workdir, &deps, &copy_b]));
        assert_eq!(found[0], ("team/b".into(), 3, 3), "{found:?}");
        assert!(found.contains(&("team/a".into(), 2, 2)), "{found:?}");
        // c shares the steps but not the base: never a candidate.
        assert!(found.iter().all(|f| f.0 != "team/c"), "{found:?}");
        // A changed source stops the match there.
        let changed = step("/bin/sh -c #(nop) COPY file:ccc in /src", Some(13));
        let found = best(&cache, &query(&[&workdir, &deps, &changed]));
        assert!(found.iter().all(|f| f.1 == 2), "{found:?}");
        // A first step that differs matches nothing.
        assert!(best(&cache, &query(&[&changed])).is_empty());
        // An unknown base matches nothing.
        let unknown = Query {
            base: vec![step("ADD file:none in /", Some(99))],
            steps: vec![workdir.created_by.clone()],
        };
        assert!(best(&cache, &unknown).is_empty());
    }

    #[test]
    fn a_chain_is_read_from_the_config_history() {
        let config = serde_json::json!({
            "rootfs": {"type": "layers", "diff_ids": [Digest::sha256_of(b"1"), Digest::sha256_of(b"2")]},
            "history": [
                {"created_by": "ADD file:x in /", "created": "2026-01-01T00:00:00Z"},
                {"created_by": "ENV A=1", "empty_layer": true},
                {"created_by": "RUN make"}
            ]
        });
        let steps = chain(&serde_json::to_vec(&config).unwrap()).unwrap();
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[1].diff_id, None);
        assert_eq!(steps[2].diff_id, Some(Digest::sha256_of(b"2")));
        // History that does not account for the layers: no chain.
        let short = serde_json::json!({"rootfs": {"diff_ids": [Digest::sha256_of(b"1")]}, "history": []});
        assert!(chain(&serde_json::to_vec(&short).unwrap()).is_none());
        let extra = serde_json::json!({"rootfs": {"diff_ids": []}, "history": [{"created_by": "RUN x"}]});
        assert!(chain(&serde_json::to_vec(&extra).unwrap()).is_none());
    }
}
