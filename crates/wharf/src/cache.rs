//! `wharf cache plan`: which image on the registry a build should use as its cache, and how far it will hit.
//!
//! The Dockerfile's final stage is keyed as the engine's classic builder keys it ([`wharf_dockerfile::cache_keys`],
//! with the context's content hashes from [`wharf_dockerfile::source_hash`]); its base image's config is read from
//! the registry (through the registry as a mirror when the base lives elsewhere: `?ns=<host>`); the registry's
//! build cache (`POST /wharf/v1/cache/candidates`) answers the images that match furthest, with the layers a build
//! must fetch to hit that far.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use wharf_client::Platform;
use wharf_dockerfile::cache_keys::{self, BaseConfig, FinalBase, Key};
use wharf_dockerfile::context::human_size;
use wharf_dockerfile::source_hash::{ContextHashes, DockerfileEntry};
use wharf_oci::Digest;
use wharf_oci::manifest::ManifestView;
use wharf_remote::client::Op;
use wharf_remote::{Reference, Registry};

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Pick the image on the registry that serves this build as cache furthest: the steps it will hit and the
    /// bytes to pull.
    Plan(PlanArgs),
}

/// What a plan needs: the build's inputs and the registry to ask.
#[derive(Debug, Args, Clone)]
pub struct BuildInputs {
    /// The Dockerfile [default: CONTEXT/Dockerfile].
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// A build argument, KEY=VALUE (or KEY, taken from the environment). Repeatable.
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,
    /// The build context directory.
    pub context: PathBuf,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub inputs: BuildInputs,
    /// The registry whose images may serve as cache (HOST[:PORT]); a base image on another registry is read
    /// through it as a mirror.
    #[arg(long, value_name = "HOST[:PORT]", env = "WHARF_CACHE_REGISTRY")]
    pub registry: String,
    /// Allow plain HTTP to a registry that is not on loopback.
    #[arg(long)]
    pub insecure: bool,
    /// Print the plan as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One step of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub line: usize,
    pub instruction: String,
    /// The key the builder will compute, when known before building.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Why it is not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
    /// The best candidate serves this step from cache.
    pub cached: bool,
}

/// A candidate, as the registry answers it.
pub use wharf_registry::build_cache::Candidate;

#[derive(Debug, Deserialize)]
struct Candidates {
    candidates: Vec<Candidate>,
}

/// The base image as the build will see it.
#[derive(Debug, Clone, Serialize)]
pub struct BaseImage {
    /// The reference as the Dockerfile names it (variables substituted); `scratch` for none.
    pub reference: String,
    /// Its manifest digest (of the platform's image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Steps in its history.
    pub steps: usize,
    #[serde(skip)]
    pub query_steps: Vec<QueryStep>,
    #[serde(skip)]
    pub config: BaseConfig,
}

/// A base step as the candidates query names it.
pub use wharf_registry::build_cache::Step as QueryStep;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub base: BaseImage,
    pub steps: Vec<PlannedStep>,
    /// The best candidate, if any image matches at least one Dockerfile step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Candidate>,
    /// Dockerfile steps the candidate serves.
    pub steps_cached: usize,
    /// Bytes of the candidate's layers beyond the base image (what a build pulls if it has the base).
    pub bytes_to_pull: u64,
}

pub fn run(args: CacheArgs) -> anyhow::Result<()> {
    match args.command {
        CacheCommand::Plan(args) => plan_command(args),
    }
}

fn plan_command(args: PlanArgs) -> anyhow::Result<()> {
    crate::copy::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let registry = cache_registry(&args.registry, args.insecure)?;
    let plan = runtime.block_on(plan(&args.inputs, &registry))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print_plan(&plan);
    }
    Ok(())
}

/// The registry at `HOST[:PORT]`, with the credentials docker (or `wharf login`) stored for it.
pub fn cache_registry(host: &str, insecure: bool) -> anyhow::Result<Registry> {
    let probe = Reference::parse(&format!("{host}/probe"))
        .with_context(|| format!("--registry {host}: expected HOST[:PORT]"))?;
    let access = crate::inspect::Access {
        creds: None,
        authfile: None,
        tls: crate::cli::TlsArgs {
            insecure,
            tls_verify: true,
            cert_dir: None,
        },
    };
    crate::inspect::registry_for(&probe, &access)
}

/// `--build-arg` values: `KEY=VALUE`, or `KEY` with the value from the environment (skipped when unset, as docker
/// does).
pub fn build_args(raw: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for a in raw {
        match a.split_once('=') {
            Some((k, v)) => {
                out.insert(k.to_string(), v.to_string());
            }
            None => {
                if let Ok(v) = std::env::var(a) {
                    out.insert(a.clone(), v);
                }
            }
        }
    }
    out
}

/// The Dockerfile's path and its path inside the context (`None` when outside it).
pub fn dockerfile_path(inputs: &BuildInputs) -> (PathBuf, Option<String>) {
    let path = inputs.file.clone().unwrap_or_else(|| inputs.context.join("Dockerfile"));
    let rel = std::fs::canonicalize(&path).ok().and_then(|abs| {
        let ctx = std::fs::canonicalize(&inputs.context).ok()?;
        abs.strip_prefix(ctx).ok()?.to_str().map(str::to_string)
    });
    (path, rel)
}

/// Computes the plan: keys, base, the registry's best candidate.
pub async fn plan(inputs: &BuildInputs, registry: &Registry) -> anyhow::Result<Plan> {
    check_context(&inputs.context)?;
    let (path, rel) = dockerfile_path(inputs);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let context = read_context(
        inputs,
        &path,
        DockerfileEntry {
            path: rel.as_deref(),
            text: None,
        },
    )?;
    plan_for(&text, &path, &build_args(&inputs.build_args), &context, registry).await
}

/// The build context as the engine will see it, with its `.dockerignore` (one walk of the context).
pub fn read_context(inputs: &BuildInputs, dockerfile: &Path, entry: DockerfileEntry) -> anyhow::Result<ContextHashes> {
    let cannot = || format!("cannot read the build context {}", inputs.context.display());
    let (_, ignore) = wharf_dockerfile::context::ignore_file(&inputs.context, Some(dockerfile)).with_context(cannot)?;
    ContextHashes::scan_with(&inputs.context, entry, &ignore).with_context(cannot)
}

/// The plan of the Dockerfile `text` (read from `path`, for messages) over `context`.
pub async fn plan_for(
    text: &str,
    path: &Path,
    args: &BTreeMap<String, String>,
    context: &ContextHashes,
    registry: &Registry,
) -> anyhow::Result<Plan> {
    let (df, errors) = wharf_dockerfile::parse(text);
    if let Some(e) = errors.first() {
        bail!("{}:{e}", path.display());
    }
    let base = match cache_keys::final_base(&df, args).with_context(|| path.display().to_string())? {
        FinalBase::Scratch => BaseImage {
            reference: "scratch".into(),
            digest: None,
            steps: 0,
            query_steps: Vec::new(),
            config: BaseConfig::default(),
        },
        FinalBase::Image(reference) => base_image(registry, &reference).await?,
    };
    let keyed = cache_keys::steps(&df, args, &base.config, context).with_context(|| path.display().to_string())?;
    let known: Vec<String> = keyed
        .iter()
        .map_while(|s| match &s.key {
            Key::Known(k) => Some(k.clone()),
            Key::Unknown(_) => None,
        })
        .collect();
    let candidate = if known.is_empty() {
        None
    } else {
        query(registry, &base.query_steps, &known)
            .await?
            .into_iter()
            .find(|c| c.steps_matched > 0)
    };
    let steps_cached = candidate.as_ref().map_or(0, |c| c.steps_matched);
    let steps = keyed
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let (key, unknown) = match s.key {
                Key::Known(k) => (Some(k), None),
                Key::Unknown(why) => (None, Some(why)),
            };
            PlannedStep {
                line: s.line,
                instruction: s.instruction,
                key,
                unknown,
                cached: i < steps_cached,
            }
        })
        .collect();
    Ok(Plan {
        bytes_to_pull: candidate.as_ref().map_or(0, |c| c.bytes_beyond_base),
        base,
        steps,
        candidate,
        steps_cached,
    })
}

/// Reads the base image's manifest (the host platform's, from an index) and config from `registry`, directly when
/// the reference names it, else through it as a mirror.
async fn base_image(registry: &Registry, reference: &str) -> anyhow::Result<BaseImage> {
    let r = Reference::parse(reference).with_context(|| format!("FROM {reference}"))?;
    let ns = if r.registry == registry.name() {
        String::new()
    } else {
        format!("?ns={}", r.registry)
    };
    let scopes = [wharf_remote::client::pull_scope(&r.repository)];
    let tag = r.manifest_reference();
    let mut manifest = registry
        .manifest(&r.repository, &format!("{tag}{ns}"), r.digest.as_ref(), &scopes)
        .await
        .with_context(|| format!("cannot read the base image {reference} through {}", registry.name()))?;
    let mut view = ManifestView::parse(&manifest.bytes, Some(&manifest.media_type))?;
    if wharf_oci::media::is_index(&view.media_type) {
        let host = Platform::host();
        let Some(desc) = view.manifests.iter().find(|d| host.matches(d)) else {
            bail!("the base image {reference} has no image for {host}");
        };
        let digest = desc.digest.clone();
        manifest = registry
            .manifest(&r.repository, &format!("{digest}{ns}"), Some(&digest), &scopes)
            .await
            .with_context(|| format!("cannot read the base image {reference}"))?;
        view = ManifestView::parse(&manifest.bytes, Some(&manifest.media_type))?;
    }
    let Some(config_desc) = view.config.clone() else {
        bail!("the base image {reference} has no config");
    };
    let what = format!("config of {reference}");
    let bytes = fetch_config(registry, &r.repository, &ns, &config_desc.digest, &what).await?;
    let (query_steps, config) = parse_config(&bytes).with_context(|| what.clone())?;
    Ok(BaseImage {
        reference: reference.to_string(),
        digest: Some(manifest.digest),
        steps: query_steps.len(),
        query_steps,
        config,
    })
}

/// An image config blob (`ns` a `?ns=host` query or empty), checked against its digest.
pub(crate) async fn fetch_config(
    registry: &Registry,
    repository: &str,
    ns: &str,
    digest: &Digest,
    what: &str,
) -> anyhow::Result<Vec<u8>> {
    let scopes = [wharf_remote::client::pull_scope(repository)];
    let url = format!("{}{ns}", registry.url(repository, &format!("blobs/{digest}")));
    let op = Op { what, scopes: &scopes };
    let resp = registry.send(&op, Method::GET, &url, HeaderMap::new(), None).await?;
    if !resp.status().is_success() {
        return Err(registry.status_error(what, resp).await.into());
    }
    let bytes = read_bounded(resp, 4 << 20).await.with_context(|| what.to_string())?;
    if Digest::of(digest.algorithm(), &bytes) != *digest {
        bail!("{what}: the registry sent bytes that do not match {digest}");
    }
    Ok(bytes)
}

async fn read_bounded(mut resp: reqwest::Response, max: usize) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > max {
            bail!("larger than {max} bytes");
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// An image config's history (each step with the layer it made) and what the builder takes from its `config`.
pub fn parse_config(bytes: &[u8]) -> anyhow::Result<(Vec<QueryStep>, BaseConfig)> {
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "PascalCase", default)]
    struct RunConfig {
        env: Option<Vec<String>>,
        shell: Option<Vec<String>>,
        working_dir: Option<String>,
        on_build: Option<Vec<String>>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct History {
        created: Option<String>,
        created_by: Option<String>,
        empty_layer: bool,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct RootFs {
        diff_ids: Vec<Digest>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Config {
        config: Option<RunConfig>,
        history: Vec<History>,
        rootfs: RootFs,
    }
    let c: Config = serde_json::from_slice(bytes).context("not an image config")?;
    let mut diff_ids = c.rootfs.diff_ids.into_iter();
    let mut steps = Vec::new();
    for h in c.history {
        let diff_id = if h.empty_layer { None } else { diff_ids.next() };
        steps.push(QueryStep {
            created_by: h.created_by.unwrap_or_default(),
            created: h.created,
            diff_id,
        });
    }
    let rc = c.config.unwrap_or_default();
    Ok((
        steps,
        BaseConfig {
            env: rc.env.unwrap_or_default(),
            shell: rc.shell.unwrap_or_default(),
            working_dir: rc.working_dir.unwrap_or_default(),
            on_build: rc.on_build.unwrap_or_default(),
        },
    ))
}

/// `POST /wharf/v1/cache/candidates`.
async fn query(registry: &Registry, base: &[QueryStep], steps: &[String]) -> anyhow::Result<Vec<Candidate>> {
    #[derive(Serialize)]
    struct Query<'a> {
        base: &'a [QueryStep],
        steps: &'a [String],
    }
    let body = serde_json::to_vec(&Query { base, steps })?;
    let url = registry
        .base()
        .join("wharf/v1/cache/candidates")
        .context("the registry URL")?;
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let op = Op {
        what: "cache candidates",
        scopes: &[],
    };
    let resp = registry
        .send(&op, Method::POST, url.as_str(), headers, Some(body.into()))
        .await?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        bail!("{} has no build cache (is it a wharf registry?)", registry.name());
    }
    if !resp.status().is_success() {
        return Err(registry.status_error("cache candidates", resp).await.into());
    }
    let bytes = read_bounded(resp, 4 << 20).await?;
    let answer: Candidates = serde_json::from_slice(&bytes).context("the registry's cache candidates")?;
    Ok(answer.candidates)
}

fn print_plan(plan: &Plan) {
    let base = match &plan.base.digest {
        Some(d) => format!("{}@{d}", plan.base.reference),
        None => plan.base.reference.clone(),
    };
    println!("base     {base} ({} steps)", plan.base.steps);
    match &plan.candidate {
        Some(c) => println!(
            "cache    {}@{} hits {} of {} steps; {} to pull ({} layers)",
            c.repository,
            c.digest,
            plan.steps_cached,
            plan.steps.len(),
            human_size(plan.bytes_to_pull),
            c.layers.len()
        ),
        None => println!("cache    no image on the registry matches a step"),
    }
    for s in &plan.steps {
        let mark = match (&s.unknown, s.cached) {
            (_, true) => "cached ",
            (Some(_), _) => "unknown",
            _ => "build  ",
        };
        println!("  {mark} {:>4}: {}", s.line, s.instruction);
        if let Some(why) = &s.unknown {
            println!("           {why}");
        }
    }
}

/// The context directory must exist before anything else runs.
pub fn check_context(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("{}: the build context is not a directory", dir.display());
    }
    Ok(())
}
