//! `wharf serve`: the registry. Builds storage and the router from the merged configuration, prints the bound
//! address, and shuts down gracefully on SIGTERM/SIGINT (in-flight requests finish; uploads that do not are left
//! as resumable sessions, never as visible blobs).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing_subscriber::EnvFilter;
use wharf_mirror::{MirrorConfig, MirrorStore, UpstreamConfig};
use wharf_registry::{App, Namespace, Namespaces, RegistryConfig};
use wharf_storage::RegistryStore;
use wharf_storage::stack::Collectable;

use crate::cli::ServeArgs;
use crate::config::{Config, LogFormat};

/// Merges the config file (if any) with the flags; flags win.
fn effective_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(root) = &args.root {
        config.storage.root = root.clone();
    }
    if let Some(level) = &args.log {
        config.log.level = level.clone();
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.server.tls_cert = cert.clone();
        config.server.tls_key = key.clone();
    }
    if config.server.tls_cert.as_os_str().is_empty() != config.server.tls_key.as_os_str().is_empty() {
        anyhow::bail!("TLS needs both tls_cert and tls_key");
    }
    for flag in &args.upstreams {
        config.mirror.upstreams.push(crate::config::Upstream::parse_flag(flag)?);
    }
    let defaults = config.mirror.upstreams.iter().filter(|u| u.default).count();
    if defaults > 1 {
        anyhow::bail!("{defaults} upstreams are marked default; at most one can answer requests without `ns`");
    }
    let mut names: Vec<&str> = config.mirror.upstreams.iter().map(|u| u.name.as_str()).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        anyhow::bail!("upstream {:?} is configured twice", w[0]);
    }
    Ok(config)
}

pub(crate) fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(level),
    }
    .with_context(|| format!("invalid log filter {level:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if format == LogFormat::Json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
    result.map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = effective_config(&args)?;
    if args.check_config {
        return check_config(&config);
    }
    init_logging(&config.log.level, config.log.format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

/// `wharf serve --check-config`: everything `serve` reads before it listens, read without opening the storage or
/// binding the port.
fn check_config(config: &Config) -> anyhow::Result<()> {
    config.stack().context("[storage]")?;
    let tls = !config.server.tls_cert.as_os_str().is_empty();
    let auth = crate::auth::build(&config.auth, tls).context("[auth]")?;
    if tls {
        crate::tls::server_config(&config.server.tls_cert, &config.server.tls_key).context("[server] TLS")?;
    }
    for u in &config.mirror.upstreams {
        let _ = u.client_config();
    }
    println!(
        "wharf serve: configuration OK: listen {}{}, storage {} ({}), auth {}, {} upstream(s)",
        config.server.listen,
        if tls { " (TLS)" } else { "" },
        config.storage.backend,
        config.storage.root.display(),
        if auth.is_some() { "on" } else { "off" },
        config.mirror.upstreams.len()
    );
    if !config.server.listen.ip().is_loopback() && auth.is_none() {
        eprintln!("warning: listening beyond loopback with no authentication");
    }
    Ok(())
}

/// What requests go to, the namespaces it mirrors, and the local store stack again (for garbage collection).
type Stores = (Arc<dyn RegistryStore>, Namespaces, Collectable);

/// The local store: the filesystem or an object store, behind the configured metadata cache.
pub(crate) async fn local_store(config: &Config) -> anyhow::Result<(Arc<dyn RegistryStore>, Collectable)> {
    let stack = wharf_storage::stack::open(&config.stack()?)
        .await
        .with_context(|| format!("cannot open {} storage", config.storage.backend))?;
    Ok((stack.store, stack.collectable))
}

/// The store stack: the local store with its caches, wrapped by the mirror when upstreams are set.
async fn build_store(config: &Config) -> anyhow::Result<Stores> {
    let root = &config.storage.root;
    let (local, fs) = local_store(config).await?;
    let m = &config.mirror;
    if m.upstreams.is_empty() {
        return Ok((local, Namespaces::default(), fs));
    }
    let upstreams: Vec<UpstreamConfig> = m.upstreams.iter().map(crate::config::Upstream::client_config).collect();
    let namespaces = Namespaces {
        upstreams: m
            .upstreams
            .iter()
            .map(|u| Namespace {
                name: u.name.clone(),
                aliases: wharf_remote::hub::aliases(&u.name, &u.url),
            })
            .collect(),
        default: m.upstreams.iter().find(|u| u.default).map(|u| u.name.clone()),
    };
    let mirror = MirrorStore::new(
        local,
        MirrorConfig {
            upstreams,
            root: root.join("mirror"),
            tag_ttl: Duration::from_secs(m.tag_ttl_secs),
            max_bytes: (m.max_cache_bytes > 0).then_some(m.max_cache_bytes),
            timeout: Duration::from_secs(m.timeout_secs.max(1)),
        },
    )
    .context("cannot start the mirror")?;
    for u in &m.upstreams {
        tracing::info!(name = %u.name, url = %u.url, default = u.default, "mirroring upstream");
    }
    Ok((Arc::new(mirror), namespaces, fs))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let root = &config.storage.root;
    let (store, namespaces, local) = build_store(&config).await?;
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("wharf_http_request_duration_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ],
        )
        .context("metric buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    // Scheduled garbage collection ([gc]) on the same store instance, so its caches hear of every deletion.
    let _gc = crate::gc::start_in_server(&config.gc, root, local)?;
    let app = App::new(
        store,
        RegistryConfig {
            max_manifest_bytes: config.limits.max_manifest_bytes,
            public_metrics: config.server.public_metrics,
            namespaces,
            upload_sessions: wharf_registry::SessionLimits {
                per_repository: config.server.max_upload_sessions_per_repository,
                idle: Duration::from_secs(config.gc.upload_ttl_secs.max(1)),
            },
        },
    )
    .with_metrics(Arc::new(move || prometheus.render()));
    let app = if config.notifications.endpoints.is_empty() {
        app
    } else {
        let endpoints = config
            .notifications
            .endpoints
            .iter()
            .map(|e| wharf_registry::notify::Endpoint {
                name: e.name.clone(),
                url: e.url.clone(),
                headers: e.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                timeout: Duration::from_secs(e.timeout_secs.max(1)),
                attempts: e.attempts.max(1),
            })
            .collect();
        app.with_notifier(wharf_registry::notify::Notifier::start(endpoints))
    };
    // [auth]: authentication and access rules (off by default); a bad file or key stops the server here.
    let app = match crate::auth::build(&config.auth, !config.server.tls_cert.as_os_str().is_empty())? {
        Some(auth) => app.with_auth(auth),
        None => app,
    };
    // The layer index (`/wharf/v1/layers/<diff_id>`) learns the stored images in the background.
    let _index = app.build_layer_index();
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr().context("cannot read the bound address")?;
    let tls = if config.server.tls_cert.as_os_str().is_empty() {
        None
    } else {
        let (cert, key) = (config.server.tls_cert.clone(), config.server.tls_key.clone());
        let tls = crate::tls::TlsHandshake::new(crate::tls::server_config(&cert, &key)?);
        crate::tls::reload_on_sighup(tls.clone(), cert, key);
        Some(tls)
    };
    // Tests and scripts read this line to learn the port when --listen ends in :0.
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("wharf serve: listening on {scheme}://{addr}");
    // (Before the "registry started" line, which tests and scripts wait for.)
    if !addr.ip().is_loopback() && app.auth.is_none() {
        tracing::warn!(%addr, "listening beyond loopback with no authentication: anyone who reaches this address may \
            push, pull and delete; set [auth] (README: Authentication)");
    }
    tracing::info!(%addr, root = %root.display(), "registry started");

    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let limits = wharf_registry::ServeLimits {
        max_connections: config.server.max_connections,
        header_read_timeout: Duration::from_secs(config.server.header_read_timeout_secs.max(1)),
    };
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        shutdown_signal().await;
        tracing::info!("shutting down: letting in-flight requests finish");
        let _ = stopping_tx.send(());
    };
    let server = async {
        let router = wharf_registry::router(app);
        match tls {
            Some(tls) => wharf_registry::listen::serve_with(listener, router, limits, tls, stop).await,
            None => wharf_registry::listen::serve_router(listener, router, limits, stop).await,
        }
        .context("server failed")
    };
    let deadline = async {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "in-flight requests did not finish in time"
            );
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = server => r?,
        () = deadline => {}
    }
    tracing::info!("stopped");
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
