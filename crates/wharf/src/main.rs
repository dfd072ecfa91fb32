//! The `wharf` command line. One module per subcommand; `main` prints the error chain and exits non-zero.

mod auth;
mod build;
mod cache;
mod cli;
mod config;
mod copy;
mod fix;
mod gc;
mod index;
mod inspect;
mod lint;
mod login;
mod p2p;
mod progress;
mod serve;
mod tls;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // One crypto provider for the whole process (every HTTP client and the TLS listener), before anything uses it.
    wharf_remote::http::install_crypto_provider();
    let result = match cli.command {
        cli::Command::Serve(args) => serve::run(args),
        cli::Command::Gc(args) => gc::run(args),
        cli::Command::Index(args) => index::run(args),
        cli::Command::Cache(args) => cache::run(args),
        cli::Command::Build(args) => build::run(args),
        cli::Command::Lint(args) => lint::run(args),
        cli::Command::Fix(args) => fix::run(args),
        cli::Command::Copy(args) => copy::run_copy(args),
        cli::Command::Push(args) => copy::run_push(args),
        cli::Command::Pull(args) => copy::run_pull(args),
        cli::Command::Inspect(args) => inspect::run_inspect(args),
        cli::Command::Tags(args) => inspect::run_tags(args),
        cli::Command::Digest(args) => inspect::run_digest(args),
        cli::Command::Catalog(args) => inspect::run_catalog(args),
        cli::Command::Delete(args) => inspect::run_delete(args),
        cli::Command::Login(args) => login::run_login(args),
        cli::Command::Logout(args) => login::run_logout(args),
        cli::Command::Node(args) => p2p::run_node(args),
        cli::Command::Scheduler(args) => p2p::run_scheduler(args),
        cli::Command::Get(args) => p2p::run_get(args),
        cli::Command::Preheat(args) => p2p::run_preheat(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wharf: {e:#}");
            ExitCode::FAILURE
        }
    }
}
