//! `wharf serve`: the registry. Builds storage and the router from the merged configuration, prints the bound
//! address, and shuts down gracefully on SIGTERM/SIGINT (in-flight requests finish; uploads that do not are left
//! as resumable sessions, never as visible blobs).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing_subscriber::EnvFilter;
use wharf_mirror::{MirrorConfig, MirrorStore, UpstreamConfig};
use wharf_registry::{App, Namespace, Namespaces, RegistryConfig};
use wharf_storage::{CacheConfig, CachedStore, FsStore, RegistryStore};

use crate::cli::ServeArgs;
use crate::config::Config;

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

fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(level),
    }
    .with_context(|| format!("invalid log filter {level:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = effective_config(&args)?;
    init_logging(&config.log.level)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

/// The store stack: the local filesystem store with its caches, wrapped by the mirror when upstreams are set.
fn build_store(config: &Config) -> anyhow::Result<(Arc<dyn RegistryStore>, Namespaces)> {
    let root = &config.storage.root;
    let fs = FsStore::open(root).with_context(|| format!("cannot open storage at {}", root.display()))?;
    let local: Arc<dyn RegistryStore> = Arc::new(CachedStore::new(
        fs,
        CacheConfig {
            blob_descriptors: config.cache.blob_descriptors,
            manifest_bytes: config.cache.manifest_bytes,
        },
    ));
    let m = &config.mirror;
    if m.upstreams.is_empty() {
        return Ok((local, Namespaces::default()));
    }
    let upstreams: Vec<UpstreamConfig> = m
        .upstreams
        .iter()
        .map(|u| UpstreamConfig {
            name: u.name.clone(),
            url: u.url.clone(),
            username: u.username.clone(),
            password: u.password.clone(),
        })
        .collect();
    let namespaces = Namespaces {
        upstreams: m
            .upstreams
            .iter()
            .map(|u| Namespace {
                name: u.name.clone(),
                aliases: aliases(&u.name, &u.url),
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
    Ok((Arc::new(mirror), namespaces))
}

/// Hosts that also mean upstream `name` in containerd's `ns`: its URL's host[:port], and Docker Hub's other names.
fn aliases(name: &str, url: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(host) = url.split_once("://").and_then(|(_, r)| r.split('/').next()) {
        out.push(host.to_owned());
    }
    if name == "docker.io" {
        out.extend(["index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"].map(String::from));
    }
    out.retain(|a| a != name);
    out
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let root = &config.storage.root;
    let (store, namespaces) = build_store(&config)?;
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let app = App::new(
        store,
        RegistryConfig {
            max_manifest_bytes: config.limits.max_manifest_bytes,
            namespaces,
        },
    )
    .with_metrics(Arc::new(move || prometheus.render()));
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr().context("cannot read the bound address")?;
    // Tests and scripts read this line to learn the port when --listen ends in :0.
    println!("wharf serve: listening on http://{addr}");
    tracing::info!(%addr, root = %root.display(), "registry started");

    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = wharf_registry::serve(listener, app, async move {
        shutdown_signal().await;
        tracing::info!("shutting down: letting in-flight requests finish");
        let _ = stopping_tx.send(());
    });
    let server = async { server.await.context("server failed") };
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

async fn shutdown_signal() {
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
