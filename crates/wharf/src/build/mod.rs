//! `wharf build`: the Docker engine's classic builder, run over its API, with the registry's best image as cache and
//! each new layer pushed while the next step runs.
//!
//! 1. The plan ([`crate::cache::plan_for`]): the steps' keys, and the image on the registry that serves them
//!    furthest.
//! 2. The cache ([`cache_image`]): that image cut to the matched steps is loaded into the engine, fetching only the
//!    layers the engine lacks, and named as `cachefrom`.
//! 3. The build (`POST /build`, [`context_tar`] streaming the context): the engine's messages say which step is
//!    running, which came from cache and which image each step committed.
//! 4. With `--push`, a worker sends each committed step's new layer (compressed from the engine's layer store as
//!    `wharf push docker-daemon:` does) while the build goes on, blobs only; once the build has succeeded the image
//!    is pushed, finding every layer already there, and its manifest is written last. A failed build leaves no
//!    manifest.

mod cache_image;
mod context_tar;
mod tar_stream;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use tokio::sync::mpsc;
use wharf_client::archive::engine::Engine;
use wharf_client::compress::Compression;
use wharf_client::store::{ContentStore, MountHints};
use wharf_client::{CopyOptions, ImageName, Reference, TransportOptions, transfer};
use wharf_dockerfile::context::human_size;
use wharf_dockerfile::source_hash::{ContextHashes, DockerfileEntry};
use wharf_remote::Registry;

use crate::cache::{
    BuildInputs, Plan, build_args, cache_registry, check_context, dockerfile_path, plan_for, read_context,
};

/// Where a Dockerfile outside the context goes in the context tar.
const OUTSIDE_DOCKERFILE: &str = ".wharf.Dockerfile";
/// Builder output lines kept to explain a failure.
const TAIL_LINES: usize = 40;

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub inputs: BuildInputs,
    /// Name of the image (HOST[:PORT]/NAME[:TAG] to push it).
    #[arg(short = 't', long = "tag", value_name = "REF")]
    pub tag: String,
    /// Push the image to its registry, each layer as soon as its step commits, the manifest last.
    #[arg(long)]
    pub push: bool,
    /// Registry whose images serve as cache (HOST[:PORT]) [default: the image's registry with --push, else none].
    #[arg(long, value_name = "HOST[:PORT]", env = "WHARF_CACHE_REGISTRY")]
    pub cache_registry: Option<String>,
    /// Build the Dockerfile as `wharf fix` would rewrite it for this package-mirror preset (aliyun, tuna, ustc),
    /// without changing the file.
    #[arg(long, value_name = "PRESET")]
    pub mirror_preset: Option<String>,
    /// Do not use any cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Allow plain HTTP to registries that are not on loopback.
    #[arg(long)]
    pub insecure: bool,
    /// The local content store (which layers were pushed where) [default: ~/.cache/wharf/content].
    #[arg(long, value_name = "DIR", env = "WHARF_STORE")]
    pub store: Option<PathBuf>,
    /// Print the builder's output (the steps' own output) too.
    #[arg(long, short)]
    pub verbose: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What a step became.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: usize,
    pub instruction: String,
    /// `cached`, `built`, `base` (a FROM) or `meta` (an ARG before the first FROM).
    pub outcome: &'static str,
    /// The image the step committed (short ID).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Its layer was pushed while the build went on.
    pub pushed: bool,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub image: String,
    pub image_id: String,
    /// The pushed manifest's digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub steps: usize,
    pub steps_cached: usize,
    /// Steps the plan said the cache would serve.
    pub steps_planned: usize,
    /// The image used as cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_image: Option<String>,
    pub bytes_pulled_for_cache: u64,
    /// Bytes of the cache image's layers the matched steps made, beyond the base image.
    pub cache_bytes_matched: u64,
    pub bytes_pushed: u64,
    /// Layers pushed while the build ran.
    pub layers_pushed_early: usize,
    pub seconds: f64,
    pub step_reports: Vec<StepReport>,
}

pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    crate::copy::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let summary = runtime.block_on(build(&args))?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        eprintln!(
            "built {} ({}): {}/{} steps from cache ({} pulled for cache){}, {:.2} s",
            summary.image,
            short_id(&summary.image_id),
            summary.steps_cached,
            summary.steps,
            human_size(summary.bytes_pulled_for_cache),
            match &summary.digest {
                Some(d) => format!(", pushed {d} ({} sent)", human_size(summary.bytes_pushed)),
                None => String::new(),
            },
            summary.seconds
        );
    }
    Ok(())
}

/// One line per step, or a spinner for the running step on a terminal.
struct Display {
    bar: Option<indicatif::ProgressBar>,
    verbose: bool,
}

impl Display {
    fn new(verbose: bool, quiet: bool) -> Display {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        });
        Display { bar, verbose }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn running(&self, text: &str) {
        if let Some(b) = &self.bar {
            b.set_message(text.to_string());
        }
    }

    fn output(&self, text: &str) {
        if self.verbose {
            self.line(&format!("    {text}"));
        }
    }

    fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// What the push worker did.
#[derive(Default)]
struct Pushed {
    bytes: u64,
    steps: Vec<usize>,
    failures: Vec<String>,
}

async fn build(args: &BuildArgs) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let inputs = &args.inputs;
    check_context(&inputs.context)?;
    let engine = Engine::from_env()?;
    let target = if args.push {
        Some(Reference::parse(&args.tag).with_context(|| format!("--tag {}", args.tag))?)
    } else {
        None
    };
    let (path, rel) = dockerfile_path(inputs);
    let original = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = match &args.mirror_preset {
        Some(preset) => with_mirrors(&original, preset)?,
        None => original.clone(),
    };
    let (in_context, dockerfile_name) = match &rel {
        Some(r) => (true, r.clone()),
        None => (false, OUTSIDE_DOCKERFILE.to_string()),
    };
    let context = read_context(
        inputs,
        &path,
        DockerfileEntry {
            path: Some(&dockerfile_name),
            text: (!in_context || text != original).then_some(text.as_bytes()),
        },
    )?;
    let build_args = build_args(&inputs.build_args);
    let display = Display::new(args.verbose, args.json);

    // 1 and 2: the plan and the cache image.
    let cache_host = args
        .cache_registry
        .clone()
        .or_else(|| target.as_ref().map(|t| t.registry.clone()));
    let mut plan: Option<Plan> = None;
    let mut loaded = None;
    if let (Some(host), false) = (&cache_host, args.no_cache) {
        let registry = cache_registry(host, args.insecure)?;
        match plan_for(&text, &path, &build_args, &context, &registry).await {
            Ok(p) => {
                if let Some(c) = &p.candidate {
                    display.line(&format!(
                        "cache: {}@{} serves {} of {} steps",
                        c.repository,
                        short_id(&c.digest.to_string()),
                        c.steps_matched,
                        p.steps.len()
                    ));
                    loaded = load_cache(&engine, &registry, &p, &display).await;
                } else {
                    display.line(&format!("cache: no image on {host} matches a step"));
                }
                plan = Some(p);
            }
            Err(e) => display.line(&format!(
                "cache: no plan ({e:#}); building without the registry's cache"
            )),
        }
    }

    // 3 and 4: the build, and the pushes as steps commit.
    let store = ContentStore::at(match &args.store {
        Some(p) => p.clone(),
        None => ContentStore::default_location()?,
    });
    let final_stage_step = final_stage_step(&text);
    let (push_tx, push_rx) = match &target {
        Some(_) => {
            let (tx, rx) = mpsc::unbounded_channel::<(usize, String)>();
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let mut query: Vec<(&str, String)> = vec![
        ("t", args.tag.clone()),
        ("dockerfile", dockerfile_name.clone()),
        ("buildargs", serde_json::to_string(&build_args)?),
        ("rm", "1".into()),
        ("forcerm", "1".into()),
        ("version", "1".into()),
    ];
    if args.no_cache {
        query.push(("nocache", "1".into()));
    }
    if let Some(l) = &loaded {
        query.push(("cachefrom", serde_json::to_string(&[&l.id])?));
    }
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    // The build and the pushes run side by side; the build's end (or failure) closes the channel, which ends the
    // worker after the push in progress.
    let building = run_build(&engine, &query, &context, &display, push_tx, final_stage_step);
    let pushing = async {
        match (push_rx, &target) {
            (Some(rx), Some(t)) => Some(push_worker(rx, t.to_string(), &store, args.insecure).await),
            _ => None,
        }
    };
    let (built, pushed) = tokio::join!(building, pushing);
    let (image_id, mut steps) = match built {
        Ok(b) => b,
        Err(e) => {
            display.done();
            return Err(e);
        }
    };

    // The image: every layer pushed early is found in place; the manifest goes last.
    let mut digest = None;
    let mut bytes_pushed = 0;
    let mut early = 0;
    if let (Some(t), Some(pushed)) = (&target, pushed) {
        display.running("pushing");
        for f in &pushed.failures {
            display.line(&format!(
                "warning: an early push failed ({f}); the final push sends that layer"
            ));
        }
        for s in steps.iter_mut().filter(|s| pushed.steps.contains(&s.step)) {
            s.pushed = true;
        }
        early = pushed.steps.len();
        let report = push_image(&args.tag, &t.to_string(), &store, args.insecure, false).await?;
        bytes_pushed = pushed.bytes + report.bytes_moved;
        digest = Some(report.digest);
    }
    display.done();
    let steps_cached = steps.iter().filter(|s| s.outcome == "cached").count();
    Ok(Summary {
        image: args.tag.clone(),
        image_id,
        digest,
        steps: steps.iter().filter(|s| matches!(s.outcome, "cached" | "built")).count(),
        steps_cached,
        steps_planned: plan.as_ref().map_or(0, |p| p.steps_cached),
        cache_image: plan
            .as_ref()
            .and_then(|p| p.candidate.as_ref())
            .map(|c| format!("{}@{}", c.repository, c.digest)),
        bytes_pulled_for_cache: loaded.as_ref().map_or(0, |l| l.bytes_pulled),
        cache_bytes_matched: plan
            .as_ref()
            .and_then(|p| p.candidate.as_ref())
            .map_or(0, |c| c.bytes_beyond_base),
        bytes_pushed,
        layers_pushed_early: early,
        seconds: started.elapsed().as_secs_f64(),
        step_reports: steps,
    })
}

/// Runs the build, sending each committed step of the final stage that the engine built (not took from cache) to
/// the push worker. The image ID and the steps.
async fn run_build(
    engine: &Engine,
    query: &str,
    context: &ContextHashes,
    display: &Display,
    push_tx: Option<mpsc::UnboundedSender<(usize, String)>>,
    final_stage_step: usize,
) -> anyhow::Result<(String, Vec<StepReport>)> {
    use futures_util::StreamExt;
    let mut messages = engine.build(query, context_tar::stream(context)).await?;
    let mut steps: Vec<StepReport> = Vec::new();
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut image_id = None;
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        if let Some(err) = msg.error {
            let tail: Vec<String> = tail.into_iter().collect();
            bail!(
                "the build failed at {}: {}\n{}",
                steps.last().map_or("the start".to_string(), |s| format!(
                    "step {} ({})",
                    s.step, s.instruction
                )),
                err.trim(),
                tail.join("\n")
            );
        }
        if let Some(id) = msg.aux.as_ref().and_then(|a| a.get("ID")).and_then(|i| i.as_str()) {
            image_id = Some(id.to_string());
        }
        let Some(stream) = msg.stream else { continue };
        for line in stream.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some((n, instruction)) = step_header(line) {
                display.running(&format!("step {n}: {instruction}"));
                steps.push(StepReport {
                    step: n,
                    instruction: instruction.to_string(),
                    outcome: if instruction.to_ascii_uppercase().starts_with("FROM ") {
                        "base"
                    } else if !steps.iter().any(|s| s.outcome == "base") {
                        // An ARG before the first FROM: no image, nothing to cache.
                        "meta"
                    } else {
                        "built"
                    },
                    image: None,
                    pushed: false,
                });
                continue;
            }
            if line.trim() == "---> Using cache" {
                if let Some(s) = steps.last_mut() {
                    s.outcome = "cached";
                }
                continue;
            }
            if let Some(id) = committed(line) {
                if let Some(s) = steps.last_mut() {
                    s.image = Some(id.to_string());
                    display.line(&format!("[{:>3}] {:<6} {}", s.step, s.outcome, s.instruction));
                    if let Some(tx) = &push_tx
                        && s.outcome == "built"
                        && s.step > final_stage_step
                    {
                        let _ = tx.send((s.step, id.to_string()));
                    }
                }
                continue;
            }
            tail.push_back(line.to_string());
            if tail.len() > TAIL_LINES {
                tail.pop_front();
            }
            display.output(line);
        }
    }
    match image_id {
        Some(id) => Ok((id, steps)),
        None => bail!("the engine ended the build without naming the image"),
    }
}

/// Loads the cache image; a failure only costs the cache.
async fn load_cache(
    engine: &Engine,
    registry: &Registry,
    plan: &Plan,
    display: &Display,
) -> Option<cache_image::Loaded> {
    match cache_image::load(engine, registry, plan).await {
        Ok(Some(l)) => {
            display.line(&format!(
                "cache: loaded {} ({} in {} layer{} pulled)",
                short_id(&l.id),
                human_size(l.bytes_pulled),
                l.layers_pulled,
                if l.layers_pulled == 1 { "" } else { "s" }
            ));
            Some(l)
        }
        Ok(None) => None,
        Err(e) => {
            display.line(&format!("cache: not loaded ({e:#}); building without it"));
            None
        }
    }
}

/// Sends the blobs of each committed step's image, in step order, while the build goes on.
async fn push_worker(
    mut rx: mpsc::UnboundedReceiver<(usize, String)>,
    target: String,
    store: &ContentStore,
    insecure: bool,
) -> Pushed {
    let mut out = Pushed::default();
    while let Some((step, id)) = rx.recv().await {
        match push_image(&id, &target, store, insecure, true).await {
            Ok(r) => {
                out.bytes += r.bytes_moved;
                if r.layers.iter().any(|l| l.outcome == "compressed") {
                    out.steps.push(step);
                }
            }
            Err(e) => out.failures.push(format!("step {step}: {e:#}")),
        }
    }
    out
}

/// `wharf push docker-daemon:SRC TARGET`, blobs only when `blobs_only`.
async fn push_image(
    src: &str,
    target: &str,
    store: &ContentStore,
    insecure: bool,
    blobs_only: bool,
) -> anyhow::Result<wharf_client::CopyReport> {
    let src_name = ImageName::DockerDaemon(src.to_string());
    let dst_name = ImageName::Docker(Reference::parse(target)?);
    let credentials = match &dst_name {
        ImageName::Docker(r) => wharf_client::registry::lookup_credentials(&r.registry).unwrap_or(None),
        _ => None,
    };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let options = CopyOptions {
        jobs: (2 * cores).max(6),
        compression: Compression::default(),
        workers: cores,
        hints: Some(MountHints::new(store)),
        blobs_only,
        ..CopyOptions::default()
    };
    let src_options = TransportOptions {
        insecure,
        credentials: None,
        unpack_limit: None,
        cert_dir: None,
    };
    let dst_options = TransportOptions {
        insecure,
        credentials,
        unpack_limit: None,
        cert_dir: None,
    };
    transfer(&src_name, &dst_name, &src_options, &dst_options, &options, store)
        .await
        .with_context(|| format!("push {src} → {target}"))
}

/// The Dockerfile as `wharf fix` rewrites it for the preset's package mirrors (rule WH001 only).
fn with_mirrors(text: &str, preset: &str) -> anyhow::Result<String> {
    let mut config = wharf_dockerfile::config::Config {
        mirrors: wharf_dockerfile::config::preset(preset)?,
        ..Default::default()
    };
    for r in wharf_dockerfile::rules::RULES {
        if r.id != "WH001" {
            config.disabled.insert(r.id.to_string());
        }
    }
    let opts = wharf_dockerfile::lint::Options { config, context: None };
    Ok(wharf_dockerfile::fix::fix(text, &opts).source)
}

/// The classic builder numbers every instruction as a step: the number of the final stage's FROM.
fn final_stage_step(text: &str) -> usize {
    let (df, _) = wharf_dockerfile::parse(text);
    df.instructions()
        .enumerate()
        .filter(|(_, i)| i.keyword == wharf_dockerfile::Keyword::From)
        .map(|(n, _)| n + 1)
        .last()
        .unwrap_or(0)
}

/// `Step 3/25 : RUN make` → (3, "RUN make").
fn step_header(line: &str) -> Option<(usize, &str)> {
    let rest = line.strip_prefix("Step ")?;
    let (numbers, instruction) = rest.split_once(" : ")?;
    let (n, _) = numbers.split_once('/')?;
    Some((n.parse().ok()?, instruction))
}

/// ` ---> 0123456789ab` → the committed image's short ID.
fn committed(line: &str) -> Option<&str> {
    let id = line.trim().strip_prefix("---> ")?;
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

fn short_id(id: &str) -> &str {
    let hex = id.rsplit(':').next().unwrap_or(id);
    hex.get(..12).unwrap_or(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_lines_are_read() {
        assert_eq!(step_header("Step 3/25 : RUN make all"), Some((3, "RUN make all")));
        assert_eq!(step_header("Stepping"), None);
        assert_eq!(committed(" ---> 0123456789ab"), Some("0123456789ab"));
        assert_eq!(committed(" ---> Using cache"), None);
        assert_eq!(committed(" ---> Running in 0123456789ab"), None);
        assert_eq!(final_stage_step("ARG A\nFROM x AS b\nRUN y\nFROM b\nRUN z\n"), 4);
    }
}
