//! `wharf serve`: the registry. Builds storage and the router from the merged configuration, prints the bound
//! address, and shuts down gracefully on SIGTERM/SIGINT (in-flight requests finish; uploads that do not are left
//! as resumable sessions, never as visible blobs).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing_subscriber::EnvFilter;
use wharf_registry::{App, RegistryConfig};
use wharf_storage::{CacheConfig, CachedStore, FsStore};

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

async fn serve(config: Config) -> anyhow::Result<()> {
    let root = &config.storage.root;
    let fs = FsStore::open(root).with_context(|| format!("cannot open storage at {}", root.display()))?;
    let store = CachedStore::new(
        fs,
        CacheConfig {
            blob_descriptors: config.cache.blob_descriptors,
            manifest_bytes: config.cache.manifest_bytes,
        },
    );
    let app = App::new(
        Arc::new(store),
        RegistryConfig {
            max_manifest_bytes: config.limits.max_manifest_bytes,
        },
    );
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
