//! `wharf copy SRC DST`, `wharf push SRC REF` and `wharf pull REF DST`: thin wrappers over `wharf_client::copy`.
//! Image names use skopeo's syntax (`docker://REF` or a bare REF, `oci:PATH[:TAG]`, `docker-archive:PATH[:REF]`,
//! `docker-daemon:REF`, `rootfs:PATH` as a destination).

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use wharf_client::compress::{Algorithm, Compression};
use wharf_client::registry::{Credentials, lookup_credentials};
use wharf_client::store::{ContentStore, MountHints};
use wharf_client::{CopyOptions, CopyReport, ImageName, Platform, TransportOptions, parse_image_name, transfer};

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Source image: docker://REF (or a bare REF), oci:PATH[:TAG], docker-archive:PATH[:REF], docker-daemon:REF.
    pub src: String,
    /// Destination image: the same, or rootfs:PATH (the image unpacked into a directory).
    pub dst: String,
    #[command(flatten)]
    pub options: TransferOptions,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Source image: docker-daemon:REF, docker-archive:PATH[:REF], oci:PATH[:TAG] or docker://REF.
    pub src: String,
    /// Registry reference to push to (HOST[:PORT]/NAME[:TAG]).
    pub reference: String,
    #[command(flatten)]
    pub options: TransferOptions,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Registry reference to pull (e.g. alpine:3.20, 127.0.0.1:5000/team/app:v1).
    pub reference: String,
    /// Destination: docker-daemon:REF, rootfs:PATH, oci:PATH[:TAG], docker-archive:PATH[:REF] or docker://REF.
    pub dst: String,
    #[command(flatten)]
    pub options: TransferOptions,
}

#[derive(Debug, Args)]
pub struct TransferOptions {
    /// Copy every image of a multi-arch index, and the index.
    #[arg(long, conflicts_with = "platform")]
    pub all: bool,
    /// The image to take from a multi-arch index [default: this host's, e.g. linux/amd64].
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Blobs transferred at once [default: twice the cores, at least 6].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: Option<u16>,
    /// How uncompressed layers (docker-daemon:, docker-archive:) are compressed for a registry or an OCI layout.
    /// Compressed layers are always passed through untouched.
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "zstd"])]
    pub compression: String,
    /// Compression level [default: 6 for gzip, as docker; 3 for zstd].
    #[arg(long, value_name = "N")]
    pub compression_level: Option<i32>,
    /// The local content store, where pulled blobs are kept for the Docker engine, archives and rootfs
    /// [default: ~/.cache/wharf/content].
    #[arg(long, value_name = "DIR", env = "WHARF_STORE")]
    pub store: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub tls: crate::cli::TlsArgs,
    /// `rootfs:` destinations: most bytes of file contents the image may write, e.g. 20G (files' sizes, holes
    /// included); past it the unpacking fails [default: no limit].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_unpack_size: Option<u64>,
    /// Read registry credentials from this file (podman's `auth.json` or a Docker `config.json`) [default:
    /// $REGISTRY_AUTH_FILE, else podman's, else Docker's].
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<std::path::PathBuf>,
    /// Credentials for the source registry.
    #[arg(long, value_name = "USER:PASSWORD", env = "WHARF_SRC_CREDS")]
    pub src_creds: Option<String>,
    /// Credentials for the destination registry.
    #[arg(long, value_name = "USER:PASSWORD", env = "WHARF_DEST_CREDS")]
    pub dest_creds: Option<String>,
    /// Print nothing on success.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the summary as one JSON object.
    #[arg(long, conflicts_with = "quiet")]
    pub json: bool,
}

pub fn run_copy(args: CopyArgs) -> anyhow::Result<()> {
    run_transfer(&args.src, &args.dst, &args.options)
}

pub fn run_push(args: PushArgs) -> anyhow::Result<()> {
    let dst = registry_name(&args.reference);
    run_transfer(&args.src, &dst, &args.options)
}

pub fn run_pull(args: PullArgs) -> anyhow::Result<()> {
    let src = registry_name(&args.reference);
    run_transfer(&src, &args.dst, &args.options)
}

/// `push`/`pull` take a registry reference; `docker://` in front is accepted too.
fn registry_name(reference: &str) -> String {
    if reference.starts_with("docker://") {
        reference.to_owned()
    } else {
        format!("docker://{reference}")
    }
}

/// `--src-creds`/`--dest-creds`, else the `--authfile`'s entry, else what `docker login` (or `wharf login`, or
/// podman) stored for that registry.
fn credentials(
    flag: &Option<String>,
    which: &str,
    name: &ImageName,
    authfile: Option<&std::path::Path>,
) -> anyhow::Result<Option<Credentials>> {
    if let Some(c) = flag.as_deref() {
        return Credentials::parse(c)
            .with_context(|| format!("--{which}-creds must be USER:PASSWORD"))
            .map(Some);
    }
    if let (Some(file), ImageName::Docker(r)) = (authfile, name) {
        return wharf_remote::DockerConfig::at(file)
            .lookup(&r.registry)
            .with_context(|| format!("--authfile {}", file.display()));
    }
    match name {
        // A credential helper that cannot run (a config.json from another machine) must not stop an anonymous
        // pull of a public image: warn and go on without credentials; a registry that needs them says so.
        ImageName::Docker(r) => Ok(lookup_credentials(&r.registry).unwrap_or_else(|e| {
            eprintln!("wharf: warning: no stored credentials for {}: {e}", r.registry);
            None
        })),
        _ => Ok(None),
    }
}

fn run_transfer(src: &str, dst: &str, o: &TransferOptions) -> anyhow::Result<()> {
    init_logging();
    let src_name = parse_image_name(src)?;
    let dst_name = parse_image_name(dst)?;
    let platform = o.platform.as_deref().map(str::parse::<Platform>).transpose()?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let compression = Compression::new(o.compression.parse::<Algorithm>()?, o.compression_level)?;
    let store = ContentStore::at(match &o.store {
        Some(p) => p.clone(),
        None => ContentStore::default_location()?,
    });
    let options = CopyOptions {
        all: o.all,
        platform,
        jobs: o.jobs.map_or((2 * cores).max(6), usize::from),
        compression,
        workers: cores,
        progress: if o.quiet || o.json {
            None
        } else {
            Some(crate::progress::on_stderr())
        },
        hints: Some(MountHints::new(&store)),
        blobs_only: false,
    };
    let insecure = o.tls.insecure();
    let src_transport = TransportOptions {
        insecure,
        credentials: credentials(&o.src_creds, "src", &src_name, o.authfile.as_deref())?,
        unpack_limit: None,
        cert_dir: o.tls.cert_dir.clone(),
    };
    let dst_transport = TransportOptions {
        insecure,
        credentials: credentials(&o.dest_creds, "dest", &dst_name, o.authfile.as_deref())?,
        unpack_limit: o.max_unpack_size,
        cert_dir: o.tls.cert_dir.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let started = Instant::now();
    let report = runtime
        .block_on(async { transfer(&src_name, &dst_name, &src_transport, &dst_transport, &options, &store).await });
    let report = report.with_context(|| format!("copy {src_name} → {dst_name} failed"))?;
    let secs = started.elapsed().as_secs_f64();
    if o.json {
        println!("{}", json_summary(&report, &src_name, &dst_name, secs)?);
    } else if !o.quiet {
        println!("{}", summary(&report, secs));
    }
    Ok(())
}

fn json_summary(report: &CopyReport, src: &ImageName, dst: &ImageName, secs: f64) -> anyhow::Result<String> {
    let mut v = serde_json::to_value(report)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("source".into(), src.to_string().into());
        obj.insert("destination".into(), dst.to_string().into());
        obj.insert("seconds".into(), secs.into());
    }
    Ok(v.to_string())
}

fn summary(r: &CopyReport, secs: f64) -> String {
    let rate = if secs > 0.0 { r.bytes_moved as f64 / secs } else { 0.0 };
    format!(
        "copied {} ({} manifest{}): {} moved in {} blob{} ({}/s){}, {} skipped ({}), {} mounted ({}), {:.2} s",
        r.digest,
        r.manifests,
        plural(r.manifests),
        human(r.bytes_moved as f64),
        r.blobs_copied,
        plural(r.blobs_copied),
        human(rate),
        if r.layers_compressed > 0 {
            format!(
                ", {} layer{} compressed",
                r.layers_compressed,
                plural(r.layers_compressed)
            )
        } else {
            String::new()
        },
        r.blobs_skipped,
        human(r.bytes_skipped as f64),
        r.blobs_mounted,
        human(r.bytes_mounted as f64),
        secs
    ) + &layer_lines(r)
}

/// One line per uncompressed layer of the source: what the destination got, and how.
fn layer_lines(r: &CopyReport) -> String {
    let short = |d: &str| d.get(..19).unwrap_or(d).to_owned();
    r.layers
        .iter()
        .map(|l| {
            let how = match l.outcome {
                "skipped" => "already there",
                "mounted" => "mounted",
                _ => "compressed and sent",
            };
            format!(
                "\n  layer {} → {} ({}): {how}",
                short(&l.diff_id),
                short(&l.digest),
                human(l.size as f64)
            )
        })
        .collect()
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Warnings only, unless `RUST_LOG` says otherwise; to stderr, so stdout holds just the summary.
pub(crate) fn init_logging() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `20G`, `512M`, `1000`: bytes, `K`/`M`/`G` powers of 1024.
fn parse_size(text: &str) -> Result<u64, String> {
    wharf_p2p::ratelimit::parse_rate(text)
        .ok()
        .filter(|_| !text.trim().ends_with("bit"))
        .ok_or_else(|| format!("{text:?} is not a size: use e.g. 20G, 512M or a number of bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_names() {
        assert_eq!(human(512.0), "512 B");
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
        assert_eq!(registry_name("alpine"), "docker://alpine");
        assert_eq!(registry_name("docker://alpine"), "docker://alpine");
    }
}
