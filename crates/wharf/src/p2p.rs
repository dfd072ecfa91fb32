//! `wharf node` and `wharf scheduler`: P2P distribution (see `wharf_p2p`). This module turns flags into the
//! libraries' configurations, works out the address a node advertises, and runs the servers.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use wharf_p2p::node::{Node, NodeConfig};
use wharf_p2p::proto::Peer;

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Directory for pieces and finished blobs.
    #[arg(long, default_value = "./wharf-node")]
    pub root: PathBuf,
    /// Registry mirror for the local engine (`registry-mirrors`, containerd `hosts.toml`).
    #[arg(long, default_value = "127.0.0.1:65001")]
    pub listen: SocketAddr,
    /// Peer API, on an address other nodes can reach.
    #[arg(long, default_value = "0.0.0.0:65002")]
    pub peer_listen: SocketAddr,
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
    /// Cluster token shared by nodes and schedulers.
    #[arg(long, env = "WHARF_P2P_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Locality hint (rack, zone): peers with the same one are preferred.
    #[arg(long)]
    pub rack: Option<String>,
    /// Bytes of finished blobs to keep, e.g. 20G [default: no limit].
    #[arg(long, value_parser = wharf_p2p::ratelimit::parse_rate)]
    pub cache_size: Option<u64>,
    /// Minimum piece size, e.g. 4M.
    #[arg(long, value_parser = wharf_p2p::ratelimit::parse_rate, default_value = "4M")]
    pub piece_size: u64,
    /// Log filter [default: info, or RUST_LOG].
    #[arg(long)]
    pub log: Option<String>,
}

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    #[arg(long, default_value = "0.0.0.0:8002")]
    pub listen: SocketAddr,
    /// Cluster token shared by nodes and schedulers.
    #[arg(long, env = "WHARF_P2P_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Seconds after which a silent node counts as gone.
    #[arg(long, default_value_t = 60)]
    pub peer_ttl_secs: u64,
    #[arg(long)]
    pub log: Option<String>,
}

/// The IP this host uses to reach `url`'s host: connecting a UDP socket sends nothing but makes the kernel pick the
/// route and the source address.
fn route_source(url: &str) -> anyhow::Result<(IpAddr, IpAddr)> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let target = hostport
        .to_socket_addrs()
        .or_else(|_| format!("{hostport}:80").to_socket_addrs())
        .with_context(|| format!("cannot resolve scheduler {url}"))?
        .next()
        .with_context(|| format!("scheduler {url} resolves to nothing"))?;
    let bind = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let sock = UdpSocket::bind(bind).context("cannot open a UDP socket to find the route")?;
    sock.connect(target)
        .with_context(|| format!("no route to scheduler {url}"))?;
    Ok((sock.local_addr()?.ip(), target.ip()))
}

/// The address peers should use. A loopback address advertised to a scheduler that is not on loopback would send
/// every peer to itself and every pull back to the origin (Dragonfly's advertiseIp pitfall): refused loudly.
pub fn advertise(args: &NodeArgs) -> anyhow::Result<IpAddr> {
    let scheduler = args.schedulers.first();
    let ip = match (args.advertise_addr, scheduler) {
        (Some(ip), _) => ip,
        (None, Some(s)) => route_source(s)?.0,
        (None, None) if !args.peer_listen.ip().is_unspecified() => args.peer_listen.ip(),
        (None, None) => anyhow::bail!("no --scheduler and no --advertise-addr: cannot tell peers where this node is"),
    };
    if let Some(s) = scheduler {
        let (_, target) = route_source(s)?;
        if ip.is_loopback() && !target.is_loopback() {
            anyhow::bail!(
                "refusing to advertise loopback address {ip} to scheduler {s}, which is not on loopback: peers would \
                 connect to themselves and every pull would go back to the origin; pass --advertise-addr with this \
                 host's address on the scheduler's network"
            );
        }
    }
    if ip.is_unspecified() {
        anyhow::bail!("cannot advertise {ip}: pass --advertise-addr");
    }
    Ok(ip)
}

pub fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    crate::serve::init_logging(args.log.as_deref().unwrap_or("info"), "text")?;
    let ip = advertise(&args)?;
    let mut upstreams = Vec::new();
    let mut default = None;
    for flag in &args.upstreams {
        let u = crate::config::Upstream::parse_flag(flag)?;
        if u.default {
            default = Some(u.name.clone());
        }
        upstreams.push(wharf_mirror::UpstreamConfig {
            name: u.name,
            url: u.url,
            username: u.username,
            password: u.password,
        });
    }
    if upstreams.is_empty() {
        anyhow::bail!("no --upstream: a node mirrors at least one registry");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mirror = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let peer_listener = tokio::net::TcpListener::bind(args.peer_listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.peer_listen))?;
        let (mirror_addr, peer_addr) = (mirror.local_addr()?, peer_listener.local_addr()?);
        let addr = SocketAddr::new(ip, peer_addr.port());
        let peer = Peer {
            id: addr.to_string(),
            addr: format!("http://{addr}"),
            rack: args.rack.clone(),
            seed: args.seed,
        };
        let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .context("cannot install the metrics recorder")?;
        let config = NodeConfig {
            root: args.root.clone(),
            listen: mirror_addr,
            peer_listen: peer_addr,
            peer: peer.clone(),
            schedulers: args.schedulers.clone(),
            token: args.token.clone(),
            upstreams,
            default_upstream: default,
            piece_len: args.piece_size,
            concurrency: 16,
            origin_concurrency: 8,
            download_rate: args.ratelimit,
            upload_rate: args.upload_ratelimit,
            cache_bytes: args.cache_size.unwrap_or(0),
            timeout: Duration::from_secs(30),
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
    crate::serve::init_logging(args.log.as_deref().unwrap_or("info"), "text")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .context("cannot install the metrics recorder")?;
        let policy = wharf_p2p::scheduler::Policy {
            peer_ttl: Duration::from_secs(args.peer_ttl_secs.max(1)),
            ..Default::default()
        };
        let config = wharf_p2p::scheduler::SchedulerConfig {
            token: args.token.clone(),
            policy,
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
