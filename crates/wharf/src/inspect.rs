//! Everyday questions to a registry, as skopeo and crane answer them: `wharf inspect` (skopeo's JSON shape, or the
//! raw manifest or config), `wharf tags`, `wharf digest`, `wharf catalog`, and `wharf delete`.

use std::io::{IsTerminal, Write};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use wharf_client::Platform;
use wharf_client::registry::{Credentials, lookup_credentials};
use wharf_oci::manifest::ManifestView;
use wharf_oci::media;
use wharf_remote::client::{ClientOptions, pull_scope};
use wharf_remote::{Reference, Registry};

/// How to reach the registry a command names.
#[derive(Debug, Args, Clone)]
pub struct Access {
    /// Credentials [default: what `docker login` or `wharf login` stored].
    #[arg(long, value_name = "USER:PASSWORD", env = "WHARF_CREDS")]
    pub creds: Option<String>,
    /// Read credentials from this file (podman's `auth.json` or a Docker `config.json`) [default:
    /// $REGISTRY_AUTH_FILE, else podman's, else Docker's].
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub tls: crate::cli::TlsArgs,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image reference (HOST[:PORT]/NAME[:TAG|@DIGEST]).
    pub reference: String,
    /// Print the manifest as the registry stores it.
    #[arg(long, conflicts_with = "config")]
    pub raw: bool,
    /// Print the image's config.
    #[arg(long)]
    pub config: bool,
    /// The image to take from a multi-arch index [default: this host's].
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Do not list the repository's tags (`RepoTags`).
    #[arg(long)]
    pub no_tags: bool,
    /// Print one line of JSON instead of indented JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub access: Access,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// Image reference (HOST[:PORT]/NAME[:TAG|@DIGEST]).
    pub reference: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub access: Access,
}

#[derive(Debug, Args)]
pub struct CatalogArgs {
    /// The registry (HOST[:PORT]).
    pub registry: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub access: Access,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Image reference: by tag, the manifest it points at is deleted (and so every tag pointing at it).
    pub reference: String,
    /// Do not ask for confirmation on a terminal.
    #[arg(long, short)]
    pub yes: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub access: Access,
}

/// The registry a reference names, with `--creds` or the stored credentials.
pub fn registry_for(reference: &Reference, access: &Access) -> anyhow::Result<Registry> {
    let credentials = match (&access.creds, &access.authfile) {
        (Some(c), _) => Some(Credentials::parse(c).context("--creds must be USER:PASSWORD")?),
        (None, Some(file)) => wharf_remote::DockerConfig::at(file)
            .lookup(&reference.registry)
            .with_context(|| format!("--authfile {}", file.display()))?,
        (None, None) => lookup_credentials(&reference.registry).unwrap_or_else(|e| {
            eprintln!("wharf: warning: no stored credentials for {}: {e}", reference.registry);
            None
        }),
    };
    let options = ClientOptions {
        credentials,
        cert_dir: access.tls.cert_dir.clone(),
        ..Default::default()
    };
    Ok(Registry::for_reference(reference, access.tls.insecure(), &options)?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    crate::copy::init_logging();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn parse(reference: &str) -> anyhow::Result<Reference> {
    Ok(Reference::parse(reference.trim_start_matches("docker://"))?)
}

pub fn run_inspect(args: InspectArgs) -> anyhow::Result<()> {
    let r = parse(&args.reference)?;
    let registry = registry_for(&r, &args.access)?;
    let out = runtime()?.block_on(inspect(&registry, &r, &args))?;
    std::io::stdout().write_all(&out)?;
    Ok(())
}

async fn inspect(registry: &Registry, r: &Reference, args: &InspectArgs) -> anyhow::Result<Vec<u8>> {
    let scopes = [pull_scope(&r.repository)];
    let top = registry
        .manifest(&r.repository, &r.manifest_reference(), r.digest.as_ref(), &scopes)
        .await?;
    if args.raw {
        return Ok(top.bytes.to_vec());
    }
    let mut image = top.clone();
    let mut view = ManifestView::parse(&image.bytes, Some(&image.media_type))?;
    if media::is_index(&view.media_type) {
        let platform = match &args.platform {
            Some(p) => p.parse::<Platform>()?,
            None => Platform::host(),
        };
        let Some(desc) = view.manifests.iter().find(|d| platform.matches(d)) else {
            let known: Vec<String> = view.manifests.iter().map(Platform::describe).collect();
            bail!(
                "{r}: no image for platform {platform} (the index has {})",
                known.join(", ")
            );
        };
        image = registry
            .manifest(&r.repository, &desc.digest.to_string(), Some(&desc.digest), &scopes)
            .await?;
        view = ManifestView::parse(&image.bytes, Some(&image.media_type))?;
    }
    let Some(config_desc) = view.config.clone() else {
        bail!("{r} is not an image (no config)");
    };
    let config_bytes = crate::cache::fetch_config(
        registry,
        &r.repository,
        "",
        &config_desc.digest,
        &format!("config of {r}"),
    )
    .await?;
    if args.config {
        return Ok(config_bytes);
    }
    let config: Value = serde_json::from_slice(&config_bytes).unwrap_or(Value::Null);
    let tags = if args.no_tags {
        Value::Null
    } else {
        json!(registry.all_tags(&r.repository, &scopes).await?)
    };
    let layers: Vec<Value> = view
        .layers
        .iter()
        .map(|l| json!({"MIMEType": l.media_type, "Digest": l.digest.to_string(), "Size": l.size, "Annotations": l.annotations}))
        .collect();
    // skopeo inspect's fields, in its order.
    let mut out = json!({
        "Name": format!("{}/{}", r.registry, r.repository),
        "Digest": top.digest.to_string(),
        "RepoTags": tags,
        "Created": config.get("created").cloned().unwrap_or(Value::Null),
        "DockerVersion": config.get("docker_version").cloned().unwrap_or(json!("")),
        "Labels": config.pointer("/config/Labels").cloned().unwrap_or(Value::Null),
        "Architecture": config.get("architecture").cloned().unwrap_or(json!("")),
        "Os": config.get("os").cloned().unwrap_or(json!("")),
        "Layers": view.layers.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>(),
        "LayersData": layers,
        "Env": config.pointer("/config/Env").cloned().unwrap_or(Value::Null),
    });
    if let Some(v) = config.get("variant")
        && let Some(o) = out.as_object_mut()
    {
        o.insert("Variant".into(), v.clone());
    }
    let mut text = if args.json {
        serde_json::to_vec(&out)?
    } else {
        serde_json::to_vec_pretty(&out)?
    };
    text.push(b'\n');
    Ok(text)
}

pub fn run_tags(args: NameArgs) -> anyhow::Result<()> {
    let r = parse(&args.reference)?;
    let registry = registry_for(&r, &args.access)?;
    let scopes = [pull_scope(&r.repository)];
    let tags = runtime()?.block_on(registry.all_tags(&r.repository, &scopes))?;
    if args.json {
        println!(
            "{}",
            json!({"Repository": format!("{}/{}", r.registry, r.repository), "Tags": tags})
        );
    } else {
        print_lines(&tags)?;
    }
    Ok(())
}

pub fn run_digest(args: NameArgs) -> anyhow::Result<()> {
    let r = parse(&args.reference)?;
    let registry = registry_for(&r, &args.access)?;
    let scopes = [pull_scope(&r.repository)];
    let digest = match &r.digest {
        Some(d) => {
            runtime()?
                .block_on(registry.manifest(&r.repository, &d.to_string(), Some(d), &scopes))?
                .digest
        }
        None => runtime()?.block_on(registry.resolve_tag(&r.repository, &r.manifest_reference(), &scopes))?,
    };
    if args.json {
        println!("{}", json!({"digest": digest.to_string()}));
    } else {
        println!("{digest}");
    }
    Ok(())
}

pub fn run_catalog(args: CatalogArgs) -> anyhow::Result<()> {
    let host = args.registry.trim_start_matches("docker://").trim_end_matches('/');
    let probe = Reference::parse(&format!("{host}/probe")).with_context(|| format!("{host}: expected HOST[:PORT]"))?;
    let registry = registry_for(&probe, &args.access)?;
    let repositories = runtime()?.block_on(registry.catalog())?;
    if args.json {
        println!("{}", json!({"repositories": repositories}));
    } else {
        print_lines(&repositories)?;
    }
    Ok(())
}

pub fn run_delete(args: DeleteArgs) -> anyhow::Result<()> {
    let r = parse(&args.reference)?;
    let registry = registry_for(&r, &args.access)?;
    let scopes = [format!("repository:{}:pull,delete", r.repository)];
    let rt = runtime()?;
    let digest = match &r.digest {
        Some(d) => d.clone(),
        None => rt.block_on(registry.resolve_tag(&r.repository, &r.manifest_reference(), &scopes))?,
    };
    let name = format!("{}/{}@{digest}", r.registry, r.repository);
    if !args.yes && std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        eprint!("delete {name} (and every tag pointing at it)? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("not deleted");
        }
    }
    rt.block_on(registry.delete_manifest(&r.repository, &digest, &scopes))?;
    if args.json {
        println!("{}", json!({"deleted": name}));
    } else {
        println!("deleted {name}");
    }
    Ok(())
}

fn print_lines(items: &[String]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for i in items {
        // A closed pipe (`| head`) ends the listing quietly.
        if writeln!(out, "{i}").is_err() {
            break;
        }
    }
    Ok(())
}
