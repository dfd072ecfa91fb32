//! `wharf index rebuild`: builds a registry's layer index (`GET /wharf/v1/layers/<diff_id>`) again from its stored
//! manifests, after removing entries whose repository no longer links the blob, and checks every claim not checked
//! yet (each blob decompressed once). Safe while `wharf serve` runs on the
//! same storage: the index is a hint every answer is checked against, written one idempotent file per fact.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::Config;

#[derive(Debug, Args)]
pub struct IndexArgs {
    #[command(subcommand)]
    pub command: IndexCommand,
}

#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Remove stale entries, then record every tagged image's layers (the children of tagged indexes too).
    Rebuild(RebuildArgs),
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Storage directory [default: the config file's storage.root, else ./wharf-data].
    #[arg(long, env = "WHARF_ROOT")]
    pub root: Option<PathBuf>,
    /// TOML configuration file (see wharf.example.toml): its [storage], [cache] and [redis] sections.
    #[arg(long, env = "WHARF_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: IndexArgs) -> anyhow::Result<()> {
    match args.command {
        IndexCommand::Rebuild(args) => rebuild(args),
    }
}

fn rebuild(args: RebuildArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(root) = &args.root {
        config.storage.root = root.clone();
        config.storage.backend = wharf_storage::stack::Backend::Fs;
    }
    let root = config.storage.root.clone();
    if config.storage.backend == wharf_storage::stack::Backend::Fs && !root.join("repositories").is_dir() {
        anyhow::bail!("{} holds no registry storage (no repositories/)", root.display());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let started = std::time::Instant::now();
    let done = runtime.block_on(async {
        let (store, _) = crate::serve::local_store(&config).await?;
        let done = wharf_registry::layers::rebuild(store.clone(), &[], true)
            .await
            .context("the layer index rebuild failed")?;
        let checked = wharf_registry::layer_claims::ClaimChecker::check_pending(store.as_ref()).await;
        Ok::<_, anyhow::Error>((done, checked))
    })?;
    let (done, checked) = done;
    if args.json {
        let mut json = serde_json::to_value(&done)?;
        json["claims_checked"] = checked.into();
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!(
            "layer index rebuilt in {:.1}s: {} repositories, {} images, {} entries recorded, {} stale entries removed, \
             {} claims checked",
            started.elapsed().as_secs_f64(),
            done.repositories,
            done.images,
            done.recorded,
            done.pruned,
            checked
        );
    }
    Ok(())
}
