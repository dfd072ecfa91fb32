//! Command-line arguments, close to what the user typed. `config.rs` merges them with the config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "wharf",
    version,
    about = "Build, push, store, pull and distribute container images, fast."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the OCI Distribution v1.1 registry.
    Serve(ServeArgs),
    /// Delete blobs that no manifest references (after a grace period; with --delete-untagged, no tagged image) and
    /// stale uploads from a registry's storage. `wharf serve` does the same online on a schedule ([gc] in its config).
    Gc(crate::gc::GcArgs),
    /// Maintain the registry's layer index (which compressed blobs hold which layer): `wharf index rebuild`.
    Index(crate::index::IndexArgs),
    /// The smart build cache: `wharf cache plan` picks the image on the registry that serves a Dockerfile's build
    /// as cache furthest.
    Cache(crate::cache::CacheArgs),
    /// Build an image with the Docker engine (classic builder), the registry's best image as cache, each new layer
    /// pushed as its step commits (--push).
    Build(crate::build::BuildArgs),
    /// Lint Dockerfiles: cache order, layers, package mirrors, .dockerignore, common mistakes.
    Lint(LintArgs),
    /// Apply the safe fixes of `wharf lint` to a Dockerfile (and its .dockerignore).
    Fix(FixArgs),
    /// Copy an image between transports: docker://REF (or a bare REF), oci:PATH[:TAG].
    Copy(crate::copy::CopyArgs),
    /// Push an image to a registry (= copy SRC docker://REF).
    Push(crate::copy::PushArgs),
    /// Pull an image from a registry (= copy docker://REF DST).
    Pull(crate::copy::PullArgs),
    /// Show an image: skopeo inspect's JSON (name, digest, tags, created, platform, layers, env); --raw for the
    /// manifest, --config for the config.
    Inspect(crate::inspect::InspectArgs),
    /// List a repository's tags (all pages).
    Tags(crate::inspect::NameArgs),
    /// Print the digest a tag points at.
    Digest(crate::inspect::NameArgs),
    /// List a registry's repositories (all pages).
    Catalog(crate::inspect::CatalogArgs),
    /// Delete an image's manifest (by tag: the manifest it points at); asks first on a terminal unless --yes.
    Delete(crate::inspect::DeleteArgs),
    /// Log in to a registry: check the credentials, then save them where docker keeps them (config.json or its
    /// credential helper).
    Login(crate::login::LoginArgs),
    /// Log out of a registry: remove its saved credentials.
    Logout(crate::login::LogoutArgs),
    /// Run a P2P node: a registry mirror for the local engine whose blobs come from peers and, once, the origin.
    Node(crate::p2p::NodeArgs),
    /// Run a P2P scheduler: tells nodes which peer has which piece.
    Scheduler(crate::p2p::SchedulerArgs),
    /// Download a file through the P2P swarm (like dfget).
    Get(crate::p2p::GetArgs),
    /// Ask the seed nodes to fetch an image before a rollout.
    Preheat(crate::p2p::PreheatArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:5000]. Port 0 picks a free port; the bound address is printed.
    #[arg(long, env = "WHARF_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Storage directory [default: ./wharf-data].
    #[arg(long, env = "WHARF_ROOT")]
    pub root: Option<PathBuf>,
    /// TOML configuration file (see wharf.example.toml). Flags override it.
    #[arg(long, env = "WHARF_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log filter, e.g. `info` or `wharf_registry=debug` [default: info, or RUST_LOG].
    #[arg(long)]
    pub log: Option<String>,
    /// Mirror an upstream registry: `NAME=URL` (e.g. `ghcr.io=https://ghcr.io`), or a bare URL for the default
    /// upstream that answers Docker's `registry-mirrors` requests. Repeatable. Adds to the config file's upstreams.
    #[arg(long = "upstream", value_name = "[NAME=]URL")]
    pub upstreams: Vec<String>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key). SIGHUP reloads it.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Check the configuration (file, flags, [auth] files and keys, TLS certificate, storage options) and exit
    /// without serving: 0 and a summary when it is sound, 1 and the cause when not.
    #[arg(long)]
    pub check_config: bool,
}

/// Options shared by `lint` and `fix`.
#[derive(Debug, Args)]
pub struct DockerfileOptions {
    /// Config file with `[lint]` and `[mirrors]` sections [default: ./.wharf-lint.toml if present].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Package mirror, KEY=HOST or KEY=URL (alpine, debian, ubuntu, pypi, npm, go, cargo). Repeatable.
    #[arg(long = "mirror", value_name = "KEY=HOST")]
    pub mirrors: Vec<String>,
    /// Mirror preset: aliyun, tuna or ustc (`--mirror` entries override it).
    #[arg(long)]
    pub preset: Option<String>,
    /// Build context directory [default: the Dockerfile's directory].
    #[arg(long)]
    pub context: Option<PathBuf>,
    /// Do not read the build context (skips the .dockerignore rules).
    #[arg(long, conflicts_with = "context")]
    pub no_context: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LintFormat {
    Text,
    Json,
    Sarif,
}

#[derive(Debug, Args)]
pub struct LintArgs {
    /// Dockerfiles, directories holding them, or `-` for standard input [default: ./Dockerfile].
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: LintFormat,
    /// List the rules (id, severity, fixable, summary) and exit; with a rule id, print its documentation.
    #[arg(long, value_name = "RULE", num_args = 0..=1, default_missing_value = "all")]
    pub rules: Option<String>,
    #[command(flatten)]
    pub options: DockerfileOptions,
}

#[derive(Debug, Args)]
pub struct FixArgs {
    /// The Dockerfile, or `-` for standard input [default: ./Dockerfile].
    pub path: Option<PathBuf>,
    /// Print a unified diff instead of the fixed file.
    #[arg(long)]
    pub diff: bool,
    /// Write the fixed Dockerfile (and .dockerignore) in place.
    #[arg(long)]
    pub write: bool,
    /// Only fix these rules (e.g. WH001,WH002).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Point every FROM image at this registry's mirror-baked image (HOST[:PORT]/pkgmirror/<preset>/<image>, with
    /// --preset), whose package sources already use the mirror: no `sed` per stage.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub base_mirror: Option<String>,
    #[command(flatten)]
    pub options: DockerfileOptions,
}

/// How a client command reaches registries over TLS (`copy`, `push`, `pull`, `login`, `inspect`, ...).
#[derive(Debug, Args, Clone)]
pub struct TlsArgs {
    /// Allow plain HTTP to registries that are not on localhost/127.0.0.0/8/::1 (and HTTPS without verifying their
    /// certificate, as Docker treats its insecure registries).
    #[arg(long)]
    pub insecure: bool,
    /// `--tls-verify=false` is `--insecure` (skopeo's spelling).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub tls_verify: bool,
    /// Certificates for the registry in Docker's `certs.d` layout: CA `*.crt`, client `*.cert` with its `*.key`
    /// [default: /etc/docker/certs.d/<host> or /etc/containers/certs.d/<host>, when present].
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
}

impl TlsArgs {
    /// Plain HTTP (and unverified HTTPS) allowed.
    pub fn insecure(&self) -> bool {
        self.insecure || !self.tls_verify
    }
}
