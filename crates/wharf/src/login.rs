//! `wharf login [REGISTRY] -u USER (-p PASSWORD | --password-stdin)` and `wharf logout [REGISTRY]`, like docker's:
//! credentials are checked against the registry (`GET /v2/` through the client's auth flow), then kept where the
//! Docker tools keep them (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, or the credential helper it
//! names), so docker, skopeo and wharf all find them.

use std::io::{IsTerminal, Read};

use anyhow::{Context, bail};
use clap::Args;
use wharf_client::Reference;
use wharf_client::registry::{
    CredentialStore, Credentials, RegistryClient, RegistryOptions, erase_credentials, normalize_registry, server_url,
    store_credentials,
};

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Registry: HOST[:PORT] (a URL is accepted too).
    #[arg(default_value = "docker.io")]
    pub registry: String,
    /// Username [default: asked on a terminal].
    #[arg(long, short)]
    pub username: Option<String>,
    /// Password or token. Visible to other users in the process list: prefer --password-stdin.
    #[arg(long, short, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password or token from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub tls: crate::cli::TlsArgs,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// Registry: HOST[:PORT] (a URL is accepted too).
    #[arg(default_value = "docker.io")]
    pub registry: String,
}

pub fn run_login(args: LoginArgs) -> anyhow::Result<()> {
    let registry = normalize_registry(&args.registry)?;
    let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let username = match (&args.username, terminal && !args.password_stdin) {
        (Some(u), _) => u.clone(),
        (None, true) => {
            eprint!("Username: ");
            let mut u = String::new();
            std::io::stdin().read_line(&mut u).context("cannot read the username")?;
            u.trim().to_owned()
        }
        (None, false) => bail!("a username is needed: -u USERNAME"),
    };
    if username.is_empty() || username.contains(':') {
        bail!("invalid username {username:?}: it must be non-empty and have no ':'");
    }
    let password = match args.password {
        Some(p) => {
            eprintln!("warning: a password on the command line is visible to other users; use --password-stdin");
            p
        }
        None if args.password_stdin => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read the password from standard input")?;
            // As docker: the one line ending a pipe adds is not part of the password.
            let s = s.strip_suffix('\n').unwrap_or(&s);
            s.strip_suffix('\r').unwrap_or(s).to_owned()
        }
        // As docker: asked on a terminal, without echo.
        None if terminal => rpassword::prompt_password("Password: ").context("cannot read the password")?,
        None => bail!("a password is needed: --password-stdin (or -p PASSWORD), or run on a terminal"),
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let credentials = Credentials { username, password };
    // Only the registry matters to `GET /v2/`; the repository is never used.
    let reference = Reference {
        registry: registry.clone(),
        repository: String::new(),
        tag: None,
        digest: None,
    };
    let options = RegistryOptions {
        insecure: args.tls.insecure(),
        credentials: Some(credentials.clone()),
        cert_dir: args.tls.cert_dir.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime
        .block_on(async { RegistryClient::new(reference, &options)?.ping().await })
        .context("login failed")?;
    match store_credentials(&registry, &credentials).context("cannot save the credentials")? {
        CredentialStore::File(path) => eprintln!(
            "warning: the password is stored unencrypted (base64) in {}; a credential helper (\"credsStore\") avoids this",
            path.display()
        ),
        CredentialStore::Helper(_) => {}
    }
    println!("Login Succeeded");
    Ok(())
}

pub fn run_logout(args: LogoutArgs) -> anyhow::Result<()> {
    let registry = normalize_registry(&args.registry)?;
    let url = server_url(&registry);
    if erase_credentials(&registry).context("cannot remove the credentials")? {
        println!("Removing login credentials for {url}");
    } else {
        println!("Not logged in to {url}");
    }
    Ok(())
}
