//! The configuration file (TOML) and its defaults. Every option is documented in `wharf.example.toml`, and
//! a test checks that file parses to exactly these defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub storage: Storage,
    pub cache: Cache,
    pub limits: Limits,
    pub log: Log,
    pub mirror: Mirror,
    pub notifications: Notifications,
    pub gc: Gc,
    pub auth: Auth,
    pub redis: Redis,
    /// `wharf node`'s settings (read by `p2p.rs`; the same file may configure both).
    pub node: Option<toml::Table>,
    /// `wharf scheduler`'s settings (read by `p2p.rs`).
    pub scheduler: Option<toml::Table>,
}

/// A Redis shared by replicas: upload sessions of an object store, and the metadata cache with `[cache] kind =
/// "redis"`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Redis {
    /// `redis://[user:password@]host:port/db`; empty = no Redis.
    pub url: String,
    /// Prefix of every key wharf writes, so replicas of different registries can share one Redis.
    pub prefix: String,
}

impl Default for Redis {
    fn default() -> Self {
        Redis {
            url: String::new(),
            prefix: "wharf:".into(),
        }
    }
}

// ---- [auth] (see wharf_registry::auth; built and validated by auth.rs at startup) ----

/// Authentication and access rules. Off (`mode = "none"`) by default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    pub mode: AuthMode,
    /// htpasswd file (bcrypt only): the users of `htpasswd` mode, and of `token` mode when wharf issues tokens.
    pub htpasswd: PathBuf,
    /// Basic realm (htpasswd), or the token endpoint URL clients are sent to (token; empty = this server's
    /// `/auth/token`, from the request's Host).
    pub realm: String,
    /// The token service name (`service` in challenges, `aud` in tokens); empty = "wharf".
    pub service: String,
    /// Subjects allowed to list `/v2/_catalog`.
    pub catalog: Vec<String>,
    /// Group name → user names, for `group:NAME` subjects.
    pub groups: std::collections::BTreeMap<String, Vec<String>>,
    pub rules: Vec<AuthRule>,
    pub token: AuthToken,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    None,
    Htpasswd,
    Token,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthRule {
    pub subjects: Vec<String>,
    pub repositories: Vec<String>,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthToken {
    /// The `iss` claim: written by wharf (empty = "wharf"), or required of an external issuer's tokens.
    pub issuer: String,
    /// PEM private key: wharf issues tokens at /auth/token, signed with it.
    pub signing_key: PathBuf,
    /// Optional PEM certificate (chain) of `signing_key`, sent in each token's `x5c` header.
    pub certificate: PathBuf,
    /// Lifetime of the tokens wharf issues, in seconds.
    pub expiry_secs: u64,
    /// PEM public key(s) or certificate(s) of an external issuer: wharf only checks its tokens.
    pub trusted_keys: PathBuf,
    /// Clock skew allowed on an external issuer's `exp`/`nbf`, in seconds.
    pub leeway_secs: u64,
}

impl Default for AuthToken {
    fn default() -> Self {
        AuthToken {
            issuer: String::new(),
            signing_key: PathBuf::new(),
            certificate: PathBuf::new(),
            expiry_secs: 300,
            trusted_keys: PathBuf::new(),
            leeway_secs: 10,
        }
    }
}

// ---- end of [auth] ----

/// Garbage collection inside `wharf serve` (see `wharf_storage::gc`); `wharf gc` takes its defaults from here too.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Gc {
    /// Seconds between collections; 0 = never.
    pub interval_secs: u64,
    /// Unreferenced blobs younger than this are kept.
    pub grace_period_secs: u64,
    /// Upload sessions untouched for this long are removed.
    pub upload_ttl_secs: u64,
    /// Also delete manifests that no tag reaches.
    pub delete_untagged: bool,
}

impl Default for Gc {
    fn default() -> Self {
        let d = wharf_storage::gc::GcOptions::default();
        Gc {
            interval_secs: 0,
            grace_period_secs: d.grace_period.as_secs(),
            upload_ttl_secs: d.upload_ttl.as_secs(),
            delete_untagged: d.delete_untagged,
        }
    }
}

/// Webhooks on push and delete (see `wharf_registry::notify`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Notifications {
    pub endpoints: Vec<NotifyEndpoint>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NotifyEndpoint {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default = "default_notify_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_notify_attempts")]
    pub attempts: u32,
}

fn default_notify_timeout() -> u64 {
    5
}

fn default_notify_attempts() -> u32 {
    8
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    pub listen: SocketAddr,
    /// Seconds that in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_grace_secs: u64,
    /// Connections served at once; past it, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (slow or silent connections are closed).
    pub header_read_timeout_secs: u64,
    /// Upload sessions open at once in one repository (untouched ones stop counting after [gc] upload_ttl_secs);
    /// past it a new one gets 429 TOOMANYREQUESTS.
    pub max_upload_sessions_per_repository: usize,
    /// PEM certificate chain for HTTPS; empty = plain HTTP. Read again on SIGHUP.
    pub tls_cert: PathBuf,
    /// PEM private key for `tls_cert`.
    pub tls_key: PathBuf,
    /// With [auth] on, `/metrics` asks for credentials as `/v2/` does; `true` serves it to anyone.
    pub public_metrics: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// `fs`, or an object store: `s3`, `azblob`, `gcs`, `oss`.
    pub backend: wharf_storage::stack::Backend,
    pub root: PathBuf,
    /// Object stores: redirect blob GETs to presigned URLs valid this many seconds; 0 = stream through wharf.
    pub redirect_secs: u64,
    /// Object stores: bytes per part of a multipart write.
    pub part_size: u64,
    /// Object stores: options passed to OpenDAL as they are (bucket, endpoint, region, credentials, ...).
    pub options: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Cache {
    /// Where metadata caches live: `memory`, `redis` or `off`.
    pub kind: wharf_storage::stack::CacheKind,
    pub blob_descriptors: u64,
    pub manifest_bytes: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_manifest_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    pub level: String,
    /// `text` (human) or `json` (one object per line, for log collectors).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Mirror {
    /// Seconds a tag, once checked against its upstream, is served without asking again.
    pub tag_ttl_secs: u64,
    /// Size limit of the mirror cache in bytes; 0 means unlimited.
    pub max_cache_bytes: u64,
    /// Seconds to wait for an upstream to connect or to send the next bytes.
    pub timeout_secs: u64,
    pub upstreams: Vec<Upstream>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// The registry host it stands for (`docker.io`, `ghcr.io`), also the `ns` value containerd sends.
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Answers reads that carry no `ns` (Docker's `registry-mirrors`). At most one.
    #[serde(default)]
    pub default: bool,
}

impl Default for Mirror {
    fn default() -> Self {
        Mirror {
            tag_ttl_secs: 60,
            max_cache_bytes: 0,
            timeout_secs: 30,
            upstreams: Vec::new(),
        }
    }
}

impl Upstream {
    /// What the registry client needs of it. Without a username, the client looks for credentials where the Docker
    /// tools keep them.
    pub fn client_config(&self) -> wharf_remote::UpstreamConfig {
        wharf_remote::UpstreamConfig {
            name: self.name.clone(),
            url: self.url.clone(),
            credentials: self.username.as_ref().map(|u| wharf_remote::Credentials {
                username: u.clone(),
                password: self.password.clone().unwrap_or_default(),
            }),
        }
    }

    /// Parses the `--upstream [NAME=]URL` shorthand. Without a name, it is the default upstream, named after its
    /// host (Docker Hub's hosts become `docker.io`).
    pub fn parse_flag(flag: &str) -> anyhow::Result<Upstream> {
        let (name, url, default) = match flag.split_once('=') {
            Some((n, u)) if !n.contains("://") => (n.to_owned(), u.to_owned(), false),
            _ => {
                let host = flag
                    .split_once("://")
                    .map(|(_, rest)| rest)
                    .ok_or_else(|| anyhow::anyhow!("--upstream {flag:?}: expected [NAME=]http(s)://HOST[:PORT]"))?
                    .split('/')
                    .next()
                    .unwrap_or("");
                let name = wharf_remote::canonical_host(host).replace(':', "-");
                (name, flag.to_owned(), true)
            }
        };
        if !wharf_oci::name::is_valid_repository(&name) || name.contains('/') {
            anyhow::bail!("--upstream {flag:?}: {name:?} cannot name a repository namespace");
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!("--upstream {flag:?}: the URL must start with http:// or https://");
        }
        Ok(Upstream {
            name,
            url,
            username: None,
            password: None,
            default,
        })
    }
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            shutdown_grace_secs: 30,
            max_connections: 4096,
            header_read_timeout_secs: 30,
            max_upload_sessions_per_repository: 1000,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            public_metrics: false,
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            backend: wharf_storage::stack::Backend::Fs,
            root: PathBuf::from("./wharf-data"),
            redirect_secs: 0,
            part_size: 16 << 20,
            options: Default::default(),
        }
    }
}

impl Default for Cache {
    fn default() -> Self {
        let d = wharf_storage::CacheConfig::default();
        Cache {
            kind: wharf_storage::stack::CacheKind::Memory,
            blob_descriptors: d.blob_descriptors,
            manifest_bytes: d.manifest_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: wharf_registry::RegistryConfig::default().max_manifest_bytes,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
    /// What `wharf_storage::stack::open` needs of this configuration.
    pub fn stack(&self) -> anyhow::Result<wharf_storage::stack::StackConfig> {
        let s = &self.storage;
        Ok(wharf_storage::stack::StackConfig {
            backend: s.backend,
            root: s.root.clone(),
            options: s.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            redirect: (s.redirect_secs > 0).then(|| std::time::Duration::from_secs(s.redirect_secs)),
            part_size: usize::try_from(s.part_size).context("[storage] part_size")?,
            cache: self.cache.kind,
            cache_sizes: wharf_storage::CacheConfig {
                blob_descriptors: self.cache.blob_descriptors,
                manifest_bytes: self.cache.manifest_bytes,
            },
            redis: (!self.redis.url.is_empty()).then(|| (self.redis.url.clone(), self.redis.prefix.clone())),
            gc: wharf_storage::stack::GcUse {
                scheduled: self.gc.interval_secs > 0,
                delete_untagged: self.gc.delete_untagged,
            },
        })
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("invalid configuration in {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_matches_defaults() {
        let text = include_str!("../../../wharf.example.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::parse("[server]\nlisen = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("lisen"), "{err:#}");
    }

    #[test]
    fn upstream_flags() {
        let u = Upstream::parse_flag("ghcr.io=https://ghcr.io").unwrap();
        assert_eq!(
            (u.name.as_str(), u.url.as_str(), u.default),
            ("ghcr.io", "https://ghcr.io", false)
        );
        let u = Upstream::parse_flag("https://registry-1.docker.io").unwrap();
        assert_eq!((u.name.as_str(), u.default), ("docker.io", true));
        let u = Upstream::parse_flag("http://127.0.0.1:5001/").unwrap();
        assert_eq!(u.name, "127.0.0.1-5001");
        assert!(Upstream::parse_flag("ftp://x").is_err());
        assert!(Upstream::parse_flag("Bad Name=http://x").is_err());
        assert!(Upstream::parse_flag("x=ftp://x").is_err());
    }

    #[test]
    fn upstreams_in_file() {
        let c = Config::parse(
            "[mirror]\ntag_ttl_secs = 5\n[[mirror.upstreams]]\nname = \"docker.io\"\nurl = \"https://registry-1.docker.io\"\ndefault = true\n",
        )
        .unwrap();
        assert_eq!(c.mirror.tag_ttl_secs, 5);
        assert!(c.mirror.upstreams[0].default);
    }

    #[test]
    fn auth_section() {
        let c = Config::parse(
            r#"
[auth]
mode = "token"
htpasswd = "/etc/wharf/htpasswd"
catalog = ["group:admins"]
[auth.groups]
admins = ["alice"]
[[auth.rules]]
subjects = ["alice", "group:admins"]
repositories = ["team/*"]
actions = ["pull", "push"]
[auth.token]
signing_key = "/etc/wharf/token.key"
expiry_secs = 60
"#,
        )
        .unwrap();
        assert_eq!(c.auth.mode, AuthMode::Token);
        assert_eq!(c.auth.rules[0].repositories, ["team/*"]);
        assert_eq!(c.auth.groups["admins"], ["alice"]);
        assert_eq!((c.auth.token.expiry_secs, c.auth.token.leeway_secs), (60, 10));
        let err = Config::parse("[auth]\nmode = \"ldap\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("htpasswd"), "{err:#}");
        let err = Config::parse(
            "[[auth.rules]]\nsubjects = [\"a\"]\nrepositories = [\"b\"]\nactions = [\"pull\"]\nextra = 1\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("extra"), "{err:#}");
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let c = Config::parse("[storage]\nroot = \"/srv/wharf\"\n").unwrap();
        assert_eq!(c.storage.root, PathBuf::from("/srv/wharf"));
        assert_eq!(c.server, Server::default());
    }
}
