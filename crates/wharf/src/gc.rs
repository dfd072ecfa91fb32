//! `wharf gc`: one garbage collection of a registry's storage from the command line, and the collections that
//! `wharf serve` runs on a schedule (`[gc] interval_secs`). What is kept and why a collection is safe during pushes
//! is in `wharf_storage::gc`.
//!
//! A collection from the command line cannot reach a running server's caches, so it deletes only when no server
//! holds the root ([`RootLock`]); a dry run works any time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use wharf_storage::FsStore;
use wharf_storage::gc::{GcOptions, GcReport, RootLock, collect, collect_cached};

use crate::config::{self, Config};
use wharf_storage::stack::Collectable;

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Storage directory [default: the config file's storage.root, else ./wharf-data].
    #[arg(long, env = "WHARF_ROOT")]
    pub root: Option<PathBuf>,
    /// TOML configuration file (see wharf.example.toml): its storage root and [gc] section are the defaults.
    #[arg(long, env = "WHARF_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print what would be deleted and the bytes it would free; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep unreferenced blobs younger than this: seconds, or a duration like 90s, 30m, 2h, 1d [default: [gc]
    /// grace_period_secs, 1h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub grace_period: Option<Duration>,
    /// Remove upload sessions untouched for this long [default: [gc] upload_ttl_secs, 24h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub upload_ttl: Option<Duration>,
    /// Also delete manifests that no tag reaches (directly, as an index child or as a referrer).
    #[arg(long)]
    pub delete_untagged: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses `3600`, `90s`, `30m`, `2h`, `1d`, or a sum of them (`1h30m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let bad = || format!("{text:?} is not a duration: use seconds or e.g. 90s, 30m, 2h, 1d, 1h30m");
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

fn options(gc: &config::Gc) -> GcOptions {
    GcOptions {
        grace_period: Duration::from_secs(gc.grace_period_secs),
        upload_ttl: Duration::from_secs(gc.upload_ttl_secs),
        delete_untagged: gc.delete_untagged,
        ..GcOptions::default()
    }
}

pub fn run(args: GcArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let root = args.root.clone().unwrap_or(config.storage.root.clone());
    let mut opts = options(&config.gc);
    opts.dry_run = args.dry_run;
    opts.delete_untagged |= args.delete_untagged;
    if let Some(g) = args.grace_period {
        opts.grace_period = g;
    }
    if let Some(t) = args.upload_ttl {
        opts.upload_ttl = t;
    }
    if config.storage.backend != wharf_storage::stack::Backend::Fs && args.root.is_none() {
        return run_object(&config, &opts, args.json);
    }
    if !root.join("blobs").is_dir() || !root.join("repositories").is_dir() {
        anyhow::bail!(
            "{} holds no registry storage (no blobs/ and repositories/)",
            root.display()
        );
    }
    let _lock = if opts.dry_run {
        None
    } else {
        let lock = RootLock::exclusive(&root).with_context(|| format!("cannot lock {}", root.display()))?;
        if lock.is_none() {
            anyhow::bail!(
                "{} is in use by a running `wharf serve` (or another `wharf gc`), whose caches would go on serving \
                 what this deletes; set [gc] interval_secs to collect inside the server, or stop it first \
                 (--dry-run works while it runs)",
                root.display()
            );
        }
        lock
    };
    let fs = FsStore::open(&root).with_context(|| format!("cannot open storage at {}", root.display()))?;
    let report = collect(&fs, &opts).with_context(|| format!("garbage collection of {} failed", root.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

/// `wharf gc` on an object store. The servers must hear of what goes and keep out of the way while it goes: that
/// takes the shared Redis (the lock every replica's pushes take, and the cache they read), so without it only a dry
/// run is allowed.
fn run_object(config: &Config, opts: &GcOptions, json: bool) -> anyhow::Result<()> {
    if !opts.dry_run {
        wharf_storage::stack::check_offline_delete(&config.stack()?)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        let (_, stack) = crate::serve::local_store(config).await?;
        collect_once(&stack, opts).await
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

/// One line per deleted (or, in a dry run, deletable) item with its size, then the summary.
fn render(r: &GcReport) -> String {
    let mut out = String::new();
    for m in &r.manifests {
        out.push_str(&format!("manifest {}@{} {}\n", m.repository, m.digest, m.size));
    }
    for b in &r.blobs {
        out.push_str(&format!("blob {} {}\n", b.digest, b.size));
    }
    for u in &r.uploads {
        out.push_str(&format!("upload {} {} {}\n", u.repository, u.id, u.size));
    }
    out.push_str(&summary(r));
    out.push('\n');
    out
}

/// `N blobs, M manifests, X bytes reclaimed`, and ` (dry run)`.
fn summary(r: &GcReport) -> String {
    format!(
        "{} blobs, {} manifests, {} bytes reclaimed{}",
        r.blobs.len(),
        r.manifests.len(),
        r.bytes_reclaimed,
        if r.dry_run { " (dry run)" } else { "" }
    )
}

/// The collections of a running server. Dropping it asks a collection in progress to stop and releases the
/// root's lock.
pub struct InServer {
    stop: Arc<AtomicBool>,
    _lock: Option<RootLock>,
}

impl Drop for InServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Takes the root's shared lock (so `wharf gc` does not delete under this server's caches) and, if
/// `interval_secs` is set, collects every interval on a blocking thread, through `store`, the instance that serves
/// requests. Must run inside the tokio runtime.
pub(crate) fn start_in_server(gc: &config::Gc, root: &Path, store: Collectable) -> anyhow::Result<InServer> {
    let lock = match &store {
        Collectable::Fs(_) => Some(
            RootLock::shared(root)
                .with_context(|| format!("cannot lock {}", root.display()))?
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "`wharf gc` is collecting {}; start the server when it is done",
                        root.display()
                    )
                })?,
        ),
        Collectable::Object(_) => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    if gc.interval_secs > 0 {
        let mut opts = options(gc);
        opts.stop = Some(stop.clone());
        let interval = Duration::from_secs(gc.interval_secs);
        tracing::info!(
            interval_secs = gc.interval_secs,
            grace_period_secs = gc.grace_period_secs,
            delete_untagged = gc.delete_untagged,
            "garbage collection scheduled"
        );
        tokio::spawn(scheduled(store, opts, interval, stop.clone()));
    } else {
        // No collections: abandoned upload sessions would still fill the disk or the bucket. They expire on their
        // own, checked a few times per TTL (at most hourly).
        let ttl = Duration::from_secs(gc.upload_ttl_secs.max(1));
        let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        tokio::spawn(expire_uploads_scheduled(store, ttl, every, stop.clone()));
    }
    Ok(InServer { stop, _lock: lock })
}

/// With garbage collection off: expires idle upload sessions every `every`.
async fn expire_uploads_scheduled(store: Collectable, ttl: Duration, every: Duration, stop: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let removed = match &store {
            Collectable::Fs(fs) => {
                let fs = fs.clone();
                match tokio::task::spawn_blocking(move || wharf_storage::gc::expire_uploads(fs.inner(), ttl)).await {
                    Ok(r) => r.map_err(anyhow::Error::from),
                    Err(e) => Err(anyhow::anyhow!("upload expiry panicked: {e}")),
                }
            }
            Collectable::Object(stack) => wharf_storage::object::gc::expire_uploads(stack.object_store(), ttl)
                .await
                .map_err(anyhow::Error::from),
        };
        match removed {
            Ok(r) if !r.is_empty() => {
                tracing::info!(
                    sessions = r.len(),
                    bytes = r.iter().map(|u| u.size).sum::<u64>(),
                    "idle upload sessions expired"
                );
                metrics::counter!("wharf_uploads_expired_total").increment(r.len() as u64);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "upload expiry failed"),
        }
    }
}

/// One collection of `store`, on a blocking thread for the filesystem.
async fn collect_once(store: &Collectable, opts: &GcOptions) -> anyhow::Result<GcReport> {
    match store {
        Collectable::Fs(fs) => {
            let (s, o) = (fs.clone(), opts.clone());
            match tokio::task::spawn_blocking(move || collect_cached(&s, &o)).await {
                Ok(r) => Ok(r?),
                Err(e) => Err(anyhow::anyhow!("collection panicked: {e}")),
            }
        }
        Collectable::Object(stack) => Ok(wharf_storage::object::gc::collect(stack.as_ref(), opts).await?),
    }
}

async fn scheduled(store: Collectable, opts: GcOptions, interval: Duration, stop: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(interval);
    // A collection longer than the interval delays the next one instead of starting them back to back.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: the first collection comes one interval after the start
    loop {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let result = collect_once(&store, &opts).await;
        metrics::counter!("wharf_gc_runs_total").increment(1);
        match result {
            Ok(r) => {
                metrics::counter!("wharf_gc_blobs_deleted_total").increment(r.blobs.len() as u64);
                metrics::counter!("wharf_gc_manifests_deleted_total").increment(r.manifests.len() as u64);
                metrics::counter!("wharf_gc_uploads_deleted_total").increment(r.uploads.len() as u64);
                metrics::counter!("wharf_gc_bytes_reclaimed_total").increment(r.bytes_reclaimed);
                let level_info = !r.blobs.is_empty() || !r.manifests.is_empty() || !r.uploads.is_empty();
                let line = summary(&r);
                if level_info {
                    tracing::info!(
                        blobs = r.blobs.len(),
                        manifests = r.manifests.len(),
                        uploads = r.uploads.len(),
                        bytes = r.bytes_reclaimed,
                        marked = r.marked_blobs,
                        spared = r.spared,
                        ms = r.duration_ms,
                        "gc: {line}"
                    );
                } else {
                    tracing::debug!(marked = r.marked_blobs, ms = r.duration_ms, "gc: {line}");
                }
                for b in &r.blobs {
                    tracing::debug!(digest = %b.digest, size = b.size, "gc: deleted blob");
                }
            }
            Err(e) => {
                metrics::counter!("wharf_gc_errors_total").increment(1);
                tracing::error!(error = %format!("{e:#}"), "gc: collection failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "h", "1x", "1h30", "-1", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn report_lines_and_summary() {
        let d = wharf_oci::Digest::sha256_of(b"x");
        let r = GcReport {
            dry_run: true,
            blobs: vec![wharf_storage::gc::RemovedBlob {
                digest: d.clone(),
                size: 1,
            }],
            bytes_reclaimed: 1,
            ..GcReport::default()
        };
        assert_eq!(
            render(&r),
            format!("blob {d} 1\n1 blobs, 0 manifests, 1 bytes reclaimed (dry run)\n")
        );
    }
}
