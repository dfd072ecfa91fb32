/*!
The OCI Distribution v1.1 HTTP API of wharf.

One axum route, `/v2/{*rest}`, feeds [`dispatch`](dispatch::dispatch), which parses the path with
[`wharf_oci::route::parse`] and calls the handler named for the resource and method: `handlers::manifests::get`,
`handlers::uploads::patch`, and so on. Handlers talk only to the [`RegistryStore`] trait; every failure becomes the
spec's JSON error body through [`ApiError`].

```no_run
# async fn run() -> std::io::Result<()> {
use std::sync::Arc;
use wharf_storage::{CacheConfig, CachedStore, FsStore};
let store = CachedStore::new(FsStore::open("./wharf-data").unwrap(), CacheConfig::default());
let app = wharf_registry::router(wharf_registry::App::new(Arc::new(store), Default::default()));
let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
axum::serve(listener, app).await
# }
```
*/

pub mod auth;
pub mod build_cache;
mod dispatch;
mod error;
mod handlers;
mod headers;
pub mod layer_claims;
pub mod layers;
pub mod listen;
mod namespaces;
pub mod notify;
mod observe;
mod pagination;
pub mod pkgmirror;
mod range;
mod rfc3339;
mod sessions;

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get, post};
use wharf_storage::RegistryStore;

pub use error::ApiError;
pub use listen::ServeLimits;
pub use namespaces::{Namespace, Namespaces};
pub use sessions::SessionLimits;

/// Settings of the HTTP API itself.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Largest manifest accepted on PUT, in bytes (the spec suggests 4 MiB).
    pub max_manifest_bytes: usize,
    /// Upstreams mirrored by the store, for routing `ns` and default-mirror requests.
    pub namespaces: Namespaces,
    /// Open upload sessions allowed per repository.
    pub upload_sessions: SessionLimits,
    /// `/metrics` without credentials even when auth is on.
    pub public_metrics: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            max_manifest_bytes: 4 << 20,
            namespaces: Namespaces::default(),
            upload_sessions: SessionLimits::default(),
            public_metrics: false,
        }
    }
}

/// Shared state of every request.
#[derive(Clone)]
pub struct App {
    pub store: Arc<dyn RegistryStore>,
    pub config: Arc<RegistryConfig>,
    /// Renders the Prometheus text exposition served at `/metrics`, when metrics are on.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// Webhook notifications on push and delete, when endpoints are configured.
    pub notifier: Option<Arc<notify::Notifier>>,
    /// Authentication and access rules; `None` = an open registry (see [`auth`]).
    pub auth: Option<Arc<auth::Auth>>,
    /// Open upload sessions per repository (see [`SessionLimits`]).
    sessions: Arc<sessions::Sessions>,
    /// Which stored image serves a build as cache furthest (see [`build_cache`]).
    pub build_cache: build_cache::BuildCache,
    /// The task that checks the layer index's claims, started at first use (see [`layer_claims`]).
    claims: Arc<std::sync::OnceLock<layer_claims::ClaimChecker>>,
    /// Mirror-baked images being derived (see [`pkgmirror`]).
    pkgmirror: Arc<pkgmirror::Derivations>,
}

impl App {
    pub fn new(store: Arc<dyn RegistryStore>, config: RegistryConfig) -> Self {
        App {
            store,
            sessions: Arc::new(sessions::Sessions::new(config.upload_sessions)),
            build_cache: build_cache::BuildCache::default(),
            claims: Arc::default(),
            pkgmirror: Arc::default(),
            config: Arc::new(config),
            metrics: None,
            notifier: None,
            auth: None,
        }
    }

    pub fn with_notifier(mut self, notifier: Arc<notify::Notifier>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    pub fn with_metrics(mut self, render: Arc<dyn Fn() -> String + Send + Sync>) -> Self {
        self.metrics = Some(render);
        self
    }

    /// In the background: builds the layer index from the store's tagged images if the store has no complete one
    /// (see [`layers`]), and the build cache's trie (see [`build_cache`]); repositories of mirrored namespaces are
    /// left out.
    pub fn build_layer_index(&self) -> tokio::task::JoinHandle<()> {
        let (store, trie) = (self.store.clone(), self.build_cache.clone());
        let skip: Vec<String> = self
            .config
            .namespaces
            .upstreams
            .iter()
            .map(|u| u.name.clone())
            .collect();
        tokio::spawn(async move {
            layers::build_if_missing(store.clone(), skip.clone()).await;
            trie.rebuild(store, &skip).await;
        })
    }

    /// The layer claims' checker (started on the current runtime at first use).
    pub(crate) fn claims(&self) -> &layer_claims::ClaimChecker {
        self.claims
            .get_or_init(|| layer_claims::ClaimChecker::start(self.store.clone()))
    }

    /// Turns on authentication (and `/auth/token` when wharf issues the tokens).
    pub fn with_auth(mut self, auth: auth::Auth) -> Self {
        self.auth = Some(Arc::new(auth));
        self
    }
}

/// The registry's router: `/v2` and everything below it.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/v2", any(dispatch::dispatch))
        .route("/v2/", any(dispatch::dispatch))
        .route("/v2/{*rest}", any(dispatch::dispatch))
        .route("/metrics", get(dispatch::metrics))
        .route("/auth/token", get(auth::endpoint::token).post(auth::endpoint::token))
        .route("/wharf/v1/layers/{diff_id}", get(layers::get))
        .route("/wharf/v1/cache/candidates", post(build_cache::candidates))
        .route("/healthz", get(observe::healthz))
        .route("/readyz", get(observe::readyz))
        .fallback(dispatch::not_found)
        .layer(axum::middleware::from_fn(observe::record))
        .with_state(app)
}

/// Serves the registry on `listener` until `shutdown` completes, then lets in-flight requests finish (see
/// [`listen::serve_router`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    limits: ServeLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listen::serve_router(listener, router(app), limits, shutdown).await
}
