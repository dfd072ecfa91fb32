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
}
