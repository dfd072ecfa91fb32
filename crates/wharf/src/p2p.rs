//! `wharf node` and `wharf scheduler`: P2P distribution (see `wharf_p2p`). This module turns flags into the
//! libraries' configurations, works out the address a node advertises, and runs the servers.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use wharf_p2p::node::{Node, NodeConfig, net};
use wharf_p2p::proto::Peer;

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// TOML file whose `[node]` table sets any of these options by their long names (`peer_listen`,
    /// `schedulers = [...]`, `upstreams = [...]`, `upload_ratelimit = "50M"`...); flags win.
    #[arg(long, env = "WHARF_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for pieces and finished blobs [default: ./wharf-node].
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Registry mirror for the local engine (`registry-mirrors`, containerd `hosts.toml`) [default: 127.0.0.1:65001].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Peer API, on an address other nodes can reach [default: 0.0.0.0:65002].
    #[arg(long)]
    pub peer_listen: Option<SocketAddr>,
    /// Scheduler base URL; repeat for several (tasks are spread over them by rendezvous hashing).
    #[arg(long = "scheduler", value_name = "URL")]
    pub schedulers: Vec<String>,
    /// Upstream registry: `NAME=URL`, or a bare URL for the default one. Repeatable.
    #[arg(long = "upstream", value_name = "[NAME=]URL")]
    pub upstreams: Vec<String>,
    /// A seed: next to the registry, fetches what `wharf preheat` asks for.
    #[arg(long)]
    pub seed: bool,
    /// Download limit, e.g. 50M (bytes/s) or 200Mbit [default: unlimited].
    #[arg(long, value_parser = wharf_p2p::ratelimit::parse_rate)]
    pub ratelimit: Option<u64>,
    /// Upload limit for serving peers [default: unlimited].
    #[arg(long, value_parser = wharf_p2p::ratelimit::parse_rate)]
    pub upload_ratelimit: Option<u64>,
    /// IP address peers reach this node at [default: the address of the interface that routes to the scheduler].
    #[arg(long)]
    pub advertise_addr: Option<IpAddr>,
    /// Cluster token shared by nodes and schedulers (required unless --insecure).
    #[arg(long, env = "WHARF_P2P_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Run without a cluster token: anyone who reaches the peer API can fetch the pieces of every blob this node pulled. Refused without this flag.
    #[arg(long)]
    pub insecure: bool,
    /// Locality hint (rack, zone): peers with the same one are preferred.
    #[arg(long)]
    pub rack: Option<String>,
    /// Bytes of finished blobs to keep, e.g. 20G [default: no limit].
    #[arg(long, value_parser = wharf_p2p::ratelimit::parse_rate)]
    pub cache_size: Option<u64>,
    /// Piece size, e.g. 512K (at least 64K; a blob over ~1000 pieces gets larger ones) [default: 4M]. Smaller
    /// pieces pass through a swarm on slow links sooner.
    #[arg(long, value_parser = wharf_p2p::ratelimit::parse_rate)]
    pub piece_size: Option<u64>,
    /// Pieces in flight at once, over all blobs [default: 4].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Send buffer of each connection the peer API serves (SO_SNDBUF, which Linux doubles), e.g. 24K: it bounds the
    /// bytes one upload has in flight, so the several uploads converging on one node's downlink cannot overrun a
    /// shallow switch queue (TCP incast) and lose packets. Costs throughput where a connection's round trip is long:
    /// one upload goes at most ~2 x SIZE per round trip. At most net.core.wmem_max (a warning says so) [default: the
    /// kernel's autotuning].
    #[arg(long, value_parser = wharf_p2p::ratelimit::parse_rate)]
    pub peer_send_buffer: Option<u64>,
    /// Seconds a tag, once checked against the upstream, is served without asking again; past it, and while the
    /// upstream is down, the last known manifest is served [default: 60].
    #[arg(long)]
    pub tag_ttl_secs: Option<u64>,
    /// Log filter [default: info, or RUST_LOG].
    #[arg(long)]
    pub log: Option<String>,
}

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// TOML file whose `[scheduler]` table sets these options by their long names; flags win.
    #[arg(long, env = "WHARF_CONFIG")]
    pub config: Option<PathBuf>,
    /// [default: 0.0.0.0:8002]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Cluster token shared by nodes and schedulers (required unless --insecure).
    #[arg(long, env = "WHARF_P2P_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Run without a cluster token: anyone who reaches the scheduler can list every swarm, announce pieces and steer nodes. Refused without this flag.
    #[arg(long)]
    pub insecure: bool,
    /// Seconds after which a silent node counts as gone (nodes re-announce every 5 s) [default: 20].
    #[arg(long)]
    pub peer_ttl_secs: Option<u64>,
    /// Transfers one node serves at once, over all blobs [default: 4].
    #[arg(long)]
    pub max_uploads_per_peer: Option<u32>,
    /// Range requests in flight to one origin, over all its blobs [default: 4].
    #[arg(long)]
    pub max_origin_leases: Option<u32>,
    /// Let a node pass on a piece it is still receiving (cut-through) [default: true].
    #[arg(long, value_name = "BOOL")]
    pub relay: Option<bool>,
    /// Take the peer addresses nodes announce as they are. By default a node's requests must come from the address
    /// it announces, so no member can steer the others to someone else's; nodes behind NAT or a proxy need this.
    #[arg(long)]
    pub trust_peer_addresses: bool,
    #[arg(long)]
    pub log: Option<String>,
}

/// The `[node]` table of a config file: the same options as the flags.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    root: Option<PathBuf>,
    listen: Option<SocketAddr>,
    peer_listen: Option<SocketAddr>,
    #[serde(default)]
    schedulers: Vec<String>,
    #[serde(default)]
    upstreams: Vec<String>,
    #[serde(default)]
    seed: bool,
    ratelimit: Option<String>,
    upload_ratelimit: Option<String>,
    advertise_addr: Option<IpAddr>,
    token: Option<String>,
    rack: Option<String>,
    cache_size: Option<String>,
    piece_size: Option<String>,
    concurrency: Option<usize>,
    peer_send_buffer: Option<String>,
    tag_ttl_secs: Option<u64>,
    #[serde(default)]
    insecure: bool,
    log: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedulerFile {
    listen: Option<SocketAddr>,
    token: Option<String>,
    peer_ttl_secs: Option<u64>,
    max_uploads_per_peer: Option<u32>,
    max_origin_leases: Option<u32>,
    relay: Option<bool>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    trust_peer_addresses: bool,
    log: Option<String>,
}

/// The `[name]` table of the config file at `path`.
fn section<T: serde::de::DeserializeOwned + Default>(path: Option<&PathBuf>, name: &str) -> anyhow::Result<T> {
    let Some(path) = path else { return Ok(T::default()) };
    let config = crate::config::Config::load(path)?;
    let table = match name {
        "node" => config.node,
        _ => config.scheduler,
    };
    match table {
        Some(t) => t.try_into().with_context(|| format!("[{name}] in {}", path.display())),
        None => Ok(T::default()),
    }
}

fn rate(key: &str, v: Option<String>) -> anyhow::Result<Option<u64>> {
    v.map(|v| wharf_p2p::ratelimit::parse_rate(&v).map_err(|e| anyhow::anyhow!("{key}: {e}")))
        .transpose()
}

/// Flags over the file over the built-in defaults.
fn merge_node(mut args: NodeArgs) -> anyhow::Result<NodeArgs> {
    let f: NodeFile = section(args.config.as_ref(), "node")?;
    args.root = args.root.or(f.root).or_else(|| Some(PathBuf::from("./wharf-node")));
    args.listen = args.listen.or(f.listen).or_else(|| "127.0.0.1:65001".parse().ok());
    args.peer_listen = args
        .peer_listen
        .or(f.peer_listen)
        .or_else(|| "0.0.0.0:65002".parse().ok());
    if args.schedulers.is_empty() {
        args.schedulers = f.schedulers;
    }
    if args.upstreams.is_empty() {
        args.upstreams = f.upstreams;
    }
    args.seed |= f.seed;
    args.ratelimit = args.ratelimit.or(rate("ratelimit", f.ratelimit)?);
    args.upload_ratelimit = args.upload_ratelimit.or(rate("upload_ratelimit", f.upload_ratelimit)?);
    args.advertise_addr = args.advertise_addr.or(f.advertise_addr);
    args.token = args.token.or(f.token);
    args.rack = args.rack.or(f.rack);
    args.cache_size = args.cache_size.or(rate("cache_size", f.cache_size)?);
    args.piece_size = args
        .piece_size
        .or(rate("piece_size", f.piece_size)?)
        .or(Some(wharf_p2p::piece::DEFAULT_PIECE));
    args.concurrency = args.concurrency.or(f.concurrency);
    if args.concurrency == Some(0) {
        anyhow::bail!("--concurrency must be at least 1");
    }
    args.peer_send_buffer = args.peer_send_buffer.or(rate("peer_send_buffer", f.peer_send_buffer)?);
    if let Some(b) = args.peer_send_buffer {
        net::check_send_buffer(b).map_err(|e| anyhow::anyhow!("--peer-send-buffer: {e}"))?;
    }
    args.tag_ttl_secs = args.tag_ttl_secs.or(f.tag_ttl_secs);
    args.insecure |= f.insecure;
    args.log = args.log.or(f.log);
    Ok(args)
}

/// A P2P listener is authenticated by the cluster token; running without one takes `--insecure`, said out loud.
fn require_token(token: Option<&str>, insecure: bool, what: &str, listen: SocketAddr) -> anyhow::Result<()> {
    match (token, insecure) {
        (Some(""), _) => anyhow::bail!("{what}: the cluster token is empty"),
        (Some(_), _) => Ok(()),
        (None, true) => {
            tracing::warn!(%listen, "{what} runs without a cluster token (--insecure): whoever reaches it is trusted");
            Ok(())
        }
        (None, false) => anyhow::bail!(
            "{what}: no cluster token; pass --token (or WHARF_P2P_TOKEN), the same on every node and scheduler, or \
             --insecure to run an open cluster"
        ),
    }
}

pub fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let args = merge_node(args)?;
    crate::serve::init_logging(args.log.as_deref().unwrap_or("info"), crate::config::LogFormat::Text)?;
    let (listen, peer_listen) = (
        args.listen.context("no listen address")?,
        args.peer_listen.context("no peer listen address")?,
    );
    require_token(args.token.as_deref(), args.insecure, "wharf node", peer_listen)?;
    let ip = net::advertise(args.advertise_addr, &args.schedulers, args.peer_listen)?;
    let mut upstreams = Vec::new();
    let mut default = None;
    for flag in &args.upstreams {
        let u = crate::config::Upstream::parse_flag(flag)?;
        if u.default {
            default = Some(u.name.clone());
        }
        upstreams.push(u.client_config());
    }
    if upstreams.is_empty() {
        anyhow::bail!("no --upstream: a node mirrors at least one registry");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mirror = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let peer_listener = net::peer_listener(peer_listen, args.peer_send_buffer)?;
        let (mirror_addr, peer_addr) = (mirror.local_addr()?, peer_listener.local_addr()?);
        let addr = SocketAddr::new(ip, peer_addr.port());
        let peer = Peer {
            id: addr.to_string(),
            addr: format!("http://{addr}"),
            rack: args.rack.clone(),
            seed: args.seed,
            relays: true,
        };
        let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .context("cannot install the metrics recorder")?;
        let config = NodeConfig {
            root: args.root.clone().unwrap_or_else(|| PathBuf::from("./wharf-node")),
            listen: mirror_addr,
            peer_listen: peer_addr,
            peer: peer.clone(),
            schedulers: args.schedulers.clone(),
            token: args.token.clone(),
            upstreams,
            default_upstream: default,
            piece_len: args.piece_size.unwrap_or(wharf_p2p::piece::DEFAULT_PIECE),
            concurrency: args.concurrency.unwrap_or(wharf_p2p::node::DEFAULT_CONCURRENCY),
            origin_concurrency: 4,
            download_rate: args.ratelimit,
            upload_rate: args.upload_ratelimit,
            cache_bytes: args.cache_size.unwrap_or(0),
            timeout: Duration::from_secs(30),
            tag_ttl: Duration::from_secs(args.tag_ttl_secs.unwrap_or(60)),
            load_finished: true,
        };
        let node = Node::new(config).context("cannot start the node")?;
        // Tests and scripts read these lines to learn the ports when they were 0.
        println!("wharf node: mirror on http://{mirror_addr}");
        println!("wharf node: peer {} on {peer_addr}", peer.addr);
        tracing::info!(id = %peer.id, seed = args.seed, schedulers = ?args.schedulers, "node started");
        let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || prometheus.render());
        wharf_p2p::node::serve(
            node,
            mirror,
            peer_listener,
            Some(render),
            crate::serve::shutdown_signal(),
        )
        .await
        .context("node failed")
    })
}

pub fn run_scheduler(args: SchedulerArgs) -> anyhow::Result<()> {
    let f: SchedulerFile = section(args.config.as_ref(), "scheduler")?;
    let listen = args
        .listen
        .or(f.listen)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8002)));
    let token = args.token.clone().or(f.token);
    let defaults = wharf_p2p::scheduler::Policy::default();
    let peer_ttl_secs = args
        .peer_ttl_secs
        .or(f.peer_ttl_secs)
        .unwrap_or(defaults.peer_ttl.as_secs());
    let max_uploads_per_peer = args
        .max_uploads_per_peer
        .or(f.max_uploads_per_peer)
        .unwrap_or(defaults.max_uploads_per_peer)
        .max(1);
    let max_origin_leases = args
        .max_origin_leases
        .or(f.max_origin_leases)
        .unwrap_or(defaults.max_origin_leases)
        .max(1);
    let relay = args.relay.or(f.relay).unwrap_or(defaults.relay);
    crate::serve::init_logging(
        args.log.as_deref().or(f.log.as_deref()).unwrap_or("info"),
        crate::config::LogFormat::Text,
    )?;
    require_token(token.as_deref(), args.insecure || f.insecure, "wharf scheduler", listen)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .context("cannot install the metrics recorder")?;
        let policy = wharf_p2p::scheduler::Policy {
            peer_ttl: Duration::from_secs(peer_ttl_secs.max(1)),
            max_uploads_per_peer,
            max_origin_leases,
            relay,
            ..defaults
        };
        let config = wharf_p2p::scheduler::SchedulerConfig {
            token,
            policy,
            trust_peer_addresses: args.trust_peer_addresses || f.trust_peer_addresses,
            ..Default::default()
        };
        println!("wharf scheduler: listening on http://{addr}");
        tracing::info!(%addr, "scheduler started");
        let render: wharf_p2p::scheduler::MetricsRender = Arc::new(move || prometheus.render());
        wharf_p2p::scheduler::serve(listener, config, Some(render), crate::serve::shutdown_signal())
            .await
            .context("scheduler failed")
    })
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The file to download (http:// or https://).
    pub url: String,
    /// Where to write it.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Scheduler base URL; repeatable. Without one the file comes straight from its origin.
    #[arg(long = "scheduler", value_name = "URL")]
    pub schedulers: Vec<String>,
    /// Expected digest of the whole file (`sha256:<hex>`): the download fails rather than write other bytes.
    /// Required with --scheduler (unless --unverified).
    #[arg(long)]
    pub digest: Option<String>,
    /// Through schedulers without --digest: the pieces are then checked only against digests other members
    /// published, so a member could hand out other bytes. Refused without this flag.
    #[arg(long)]
    pub unverified: bool,
    /// Header for the origin, e.g. `Authorization: Bearer x`; repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Cluster token shared by nodes and schedulers (required with --scheduler unless --insecure).
    #[arg(long, env = "WHARF_P2P_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Run without a cluster token: anyone who reaches the peer API while it downloads can fetch its pieces. Refused without this flag.
    #[arg(long)]
    pub insecure: bool,
    /// Peer API while downloading (others fetch this download's pieces from it).
    #[arg(long, default_value = "0.0.0.0:0")]
    pub peer_listen: SocketAddr,
    #[arg(long)]
    pub advertise_addr: Option<IpAddr>,
    /// Download limit, e.g. 50M or 200Mbit.
    #[arg(long, value_parser = wharf_p2p::ratelimit::parse_rate)]
    pub ratelimit: Option<u64>,
}

/// `wharf get`: one file through the swarm (see `wharf_p2p::get`), with a progress bar on a terminal.
pub fn run_get(args: GetArgs) -> anyhow::Result<()> {
    crate::serve::init_logging("warn", crate::config::LogFormat::Text)?;
    if !args.schedulers.is_empty() {
        require_token(args.token.as_deref(), args.insecure, "wharf get", args.peer_listen)?;
        if args.digest.is_none() && !args.unverified {
            anyhow::bail!(
                "wharf get through a swarm needs --digest sha256:<hex> of the file (without it, any member could \
                 hand out other bytes); --unverified takes that risk"
            );
        }
    }
    let digest = match &args.digest {
        Some(d) => Some(
            d.parse::<wharf_oci::Digest>()
                .map_err(|e| anyhow::anyhow!("--digest {d}: {e}"))?,
        ),
        None => None,
    };
    let mut headers = Vec::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("--header {h:?}: expected NAME: VALUE"))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let options = wharf_p2p::get::GetOptions {
        url: args.url.clone(),
        output: args.output.clone(),
        schedulers: args.schedulers.clone(),
        digest,
        headers,
        token: args.token.clone(),
        peer_listen: args.peer_listen,
        advertise_addr: args.advertise_addr,
        ratelimit: args.ratelimit,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut bar: Option<indicatif::ProgressBar> = None;
    let size = runtime.block_on(wharf_p2p::get::get(options, |p| match p {
        wharf_p2p::get::GetProgress::Started { size } if terminal => {
            let b = indicatif::ProgressBar::new(size);
            b.set_style(
                indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_bar}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar = Some(b);
        }
        wharf_p2p::get::GetProgress::Started { .. } => {}
        wharf_p2p::get::GetProgress::Written(n) => {
            if let Some(b) = &bar {
                b.inc(n);
            }
        }
    }));
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    eprintln!("{}: {} bytes", args.output.display(), size?);
    Ok(())
}

#[derive(Debug, Args)]
pub struct PreheatArgs {
    /// The image, as Docker names it: `HOST[:PORT]/REPO:TAG`, `...@sha256:...`, or a Docker Hub name.
    pub image: String,
    /// Scheduler base URL; repeatable (every scheduler queues it; seeds ask them all).
    #[arg(long = "scheduler", value_name = "URL", required = true)]
    pub schedulers: Vec<String>,
    #[arg(long, env = "WHARF_P2P_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Registry credentials `USER:PASSWORD` [default: those the Docker tools keep for the registry].
    #[arg(long, value_name = "USER:PASSWORD", env = "WHARF_CREDS", hide_env_values = true)]
    pub creds: Option<String>,
    /// Talk to the registry over plain HTTP (the default only for localhost and loopback addresses).
    #[arg(long)]
    pub plain_http: bool,
}

/// `wharf preheat`: lists an image's blobs (every platform of an index) and queues them for the seed nodes.
pub fn run_preheat(args: PreheatArgs) -> anyhow::Result<()> {
    crate::serve::init_logging("warn", crate::config::LogFormat::Text)?;
    let reference = wharf_remote::Reference::parse(&args.image)?;
    let credentials = match &args.creds {
        Some(c) => Some(wharf_remote::Credentials::parse(c).context("--creds: expected USER:PASSWORD")?),
        None => wharf_remote::lookup_credentials(&reference.registry).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the Docker credentials; asking anonymously");
            None
        }),
    };
    let options = wharf_remote::ClientOptions {
        credentials,
        ..wharf_remote::ClientOptions::default()
    };
    let registry = wharf_remote::Registry::for_reference(&reference, args.plain_http, &options)?;
    let schedulers = wharf_p2p::node::Clients::new(args.schedulers.clone(), args.token.clone())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let queued = runtime.block_on(wharf_p2p::preheat::preheat(&registry, &reference, &schedulers))?;
    eprintln!(
        "preheat queued: {} blobs, {} bytes of {reference}",
        queued.blobs, queued.bytes
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_send_buffer_comes_from_the_flag_or_the_file_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wharf.toml");
        std::fs::write(
            &file,
            "[node]\nupstreams = [\"http://127.0.0.1:5000\"]\npeer_send_buffer = \"32K\"\n",
        )
        .unwrap();
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            node: NodeArgs,
        }
        let parse = |extra: &[&str]| {
            let mut argv = vec!["node", "--config", file.to_str().unwrap()];
            argv.extend_from_slice(extra);
            merge_node(<Cli as clap::Parser>::parse_from(argv).node)
        };
        assert_eq!(parse(&[]).unwrap().peer_send_buffer, Some(32 << 10));
        assert_eq!(
            parse(&["--peer-send-buffer", "48K"]).unwrap().peer_send_buffer,
            Some(48 << 10)
        );
        let err = parse(&["--peer-send-buffer", "100"]).unwrap_err().to_string();
        assert!(err.contains("between 4K and 1G"), "{err}");
    }
}
