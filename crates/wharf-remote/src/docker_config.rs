//! Registry credentials where the Docker tools keep them: `$DOCKER_CONFIG/config.json` (default
//! `~/.docker/config.json`) and the credential helpers it names.
//!
//! Lookup for a registry goes `credHelpers[host]` → `credsStore` → `auths[host]`; a helper that has nothing for
//! the registry ("credentials not found") passes on to the next step. Keys match by `host[:port]` the way Docker's
//! `ConvertToHostname` does (`https://host/v1/`, `http://host:5000`, `host:5000` all name `host[:port]`), Docker
//! Hub's key being `https://index.docker.io/v1/`. An `auths` entry holds `auth` (base64 `user:password`), or
//! `username`/`password`, or `identitytoken` (an OAuth2 refresh token, which wins, as in Docker); `registrytoken` is
//! not read. Credential helpers (`docker-credential-NAME get|store|erase`, found on `PATH`, run without a shell and
//! killed after a timeout) speak Docker's JSON protocol; the username `<token>` marks an identity token.
//!
//! Writes keep every other key of the file (JSON round trip; keys come out sorted, tab-indented like Docker),
//! replace the file atomically (temporary file + rename, mode 0600) and follow a symlinked `config.json` to its
//! target. With a helper configured for the registry, credentials go to the helper and any plaintext entry for the
//! registry is removed from `auths`.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Credentials;
use crate::RemoteError as Error;
use crate::hub::{DOCKER_HUB, DOCKER_HUB_KEY, canonical_host};

/// How long a credential helper may take (some unlock a keyring or refresh a cloud token first).
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);
/// Most of a helper's output kept (its answer is a few hundred bytes).
const HELPER_OUTPUT_MAX: u64 = 1 << 20;

/// Standard base64, padding optional when decoding (Docker writes it padded; hand-written files may not be).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Where [`DockerConfig::store`] put credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialStore {
    /// `auths` of this `config.json`: base64, not encrypted.
    File(PathBuf),
    /// The credential helper `docker-credential-NAME`.
    Helper(String),
}

impl std::fmt::Display for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialStore::File(p) => write!(f, "{}", p.display()),
            CredentialStore::Helper(h) => write!(f, "credential helper docker-credential-{h}"),
        }
    }
}

/// One Docker `config.json` and how its credential helpers are found.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    path: PathBuf,
    /// Directories searched for `docker-credential-*` (`PATH` syntax); `None` = the process's `PATH`.
    helper_path: Option<OsString>,
    helper_timeout: Duration,
}

/// The parts of `config.json` credentials come from; everything else is left alone.
#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: Option<Map<String, Value>>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: Option<Map<String, Value>>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// What credential helpers read on `store` and print on `get`.
#[derive(Serialize, Deserialize)]
struct HelperCredentials {
    #[serde(rename = "ServerURL", default)]
    server_url: String,
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// A helper's answer to `get` or `erase`.
enum HelperAnswer {
    Done(Vec<u8>),
    NotFound,
}

/// The credentials for `registry` (`host[:port]`, `docker.io` for Docker Hub) where the container tools keep
/// them: the file `$REGISTRY_AUTH_FILE` names (podman's and skopeo's variable; then that file only), else podman's
/// `$XDG_RUNTIME_DIR/containers/auth.json` when it has an entry for the registry, else the Docker config. `Ok(None)`
/// when there are none (no file, no entry, no config location at all).
pub fn lookup_credentials(registry: &str) -> Result<Option<Credentials>, Error> {
    let set = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(file) = set("REGISTRY_AUTH_FILE") {
        return DockerConfig::at(file).lookup(registry);
    }
    if let Some(run) = set("XDG_RUNTIME_DIR") {
        let podman = run.join("containers/auth.json");
        if podman.is_file()
            && let Some(c) = DockerConfig::at(podman).lookup(registry)?
        {
            return Ok(Some(c));
        }
    }
    match DockerConfig::from_env() {
        Some(c) => c.lookup(registry),
        None => Ok(None),
    }
}

/// Saves credentials for `registry` in the default Docker config (or its credential helper), as `docker login`.
pub fn store_credentials(registry: &str, credentials: &Credentials) -> Result<CredentialStore, Error> {
    DockerConfig::from_env()
        .ok_or(Error::NoDockerConfig)?
        .store(registry, credentials)
}

/// Removes the credentials for `registry` from the default Docker config and its helper, as `docker logout`;
/// whether there were any.
pub fn erase_credentials(registry: &str) -> Result<bool, Error> {
    DockerConfig::from_env().ok_or(Error::NoDockerConfig)?.erase(registry)
}

/// A registry as the user names it (`docker.io`, `index.docker.io`, `https://index.docker.io/v1/`,
/// `localhost:5000`, `http://host:5000/path`) → `host[:port]` as [`crate::Reference`] has it (`docker.io` for
/// Docker Hub).
pub fn normalize_registry(input: &str) -> Result<String, Error> {
    let host = hostname(input.trim());
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || matches!(c, '@' | '?' | '#' | '\\')) {
        return Err(Error::BadName {
            input: input.to_owned(),
            reason: "invalid registry host".into(),
        });
    }
    Ok(host)
}

/// The server URL Docker uses for a registry: its `auths` key and what credential helpers are given.
pub fn server_url(registry: &str) -> String {
    let host = hostname(registry);
    if host == DOCKER_HUB {
        DOCKER_HUB_KEY.to_owned()
    } else {
        host
    }
}

/// Docker's `ConvertToHostname` (scheme and path dropped), lowercased, with Docker Hub's names folded into
/// `docker.io`.
fn hostname(key: &str) -> String {
    let lower = key.trim().to_ascii_lowercase();
    let stripped = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .unwrap_or(&lower);
    canonical_host(stripped.split('/').next().unwrap_or_default()).to_owned()
}

/// The key of `map` that names `host`: the server URL itself first, else the first key with that hostname.
fn find_key<'m>(map: &'m Map<String, Value>, host: &str) -> Option<&'m String> {
    let exact = server_url(host);
    map.keys()
        .find(|k| **k == exact)
        .or_else(|| map.keys().find(|k| hostname(k) == host))
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`; `None` when neither variable is set.
    pub fn from_env() -> Option<DockerConfig> {
        let set = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty()).map(PathBuf::from);
        let dir = set("DOCKER_CONFIG").or_else(|| set("HOME").map(|h| h.join(".docker")))?;
        Some(DockerConfig::at(dir.join("config.json")))
    }

    /// The config file at `path` (which need not exist).
    pub fn at(path: impl Into<PathBuf>) -> DockerConfig {
        DockerConfig {
            path: path.into(),
            helper_path: None,
            helper_timeout: HELPER_TIMEOUT,
        }
    }

    /// Searches these directories (`PATH` syntax) for credential helpers instead of `PATH`.
    pub fn with_helper_path(mut self, path: impl Into<OsString>) -> DockerConfig {
        self.helper_path = Some(path.into());
        self
    }

    /// Kills a credential helper that has not answered after `timeout` (default 60 s).
    pub fn with_helper_timeout(mut self, timeout: Duration) -> DockerConfig {
        self.helper_timeout = timeout;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The credentials for `registry` (`host[:port]`; URLs and Docker Hub's aliases are accepted), or `None`.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credentials>, Error> {
        let host = hostname(registry);
        let Some(value) = self.read()? else {
            return Ok(None);
        };
        let file = self.typed(&value)?;
        let url = server_url(&host);
        for helper in helpers(&file, &host) {
            if let HelperAnswer::Done(out) = self.helper(&helper, "get", &url, url.as_bytes())? {
                let fail = |reason: String| Error::CredentialHelper {
                    helper: helper.clone(),
                    action: "get".into(),
                    server: url.clone(),
                    reason,
                };
                // The answer holds the secret: never quote it in an error.
                let c: HelperCredentials =
                    serde_json::from_slice(&out).map_err(|e| fail(format!("answer is not the expected JSON ({e})")))?;
                if c.username.is_empty() && c.secret.is_empty() {
                    continue;
                }
                return Ok(Some(Credentials {
                    username: c.username,
                    password: c.secret,
                }));
            }
        }
        let Some(auths) = &file.auths else {
            return Ok(None);
        };
        let Some(key) = find_key(auths, &host) else {
            return Ok(None);
        };
        self.entry_credentials(key, &auths[key])
    }

    /// Saves credentials for `registry`: through the registry's credential helper (`credHelpers`, else
    /// `credsStore`) when there is one, else base64 in `auths` (an identity token as `identitytoken`).
    pub fn store(&self, registry: &str, credentials: &Credentials) -> Result<CredentialStore, Error> {
        let host = hostname(registry);
        let url = server_url(&host);
        let mut value = self.read()?.unwrap_or_else(|| Value::Object(Map::new()));
        let file = self.typed(&value)?;
        if let Some(helper) = helpers(&file, &host).into_iter().next() {
            let input = serde_json::to_vec(&HelperCredentials {
                server_url: url.clone(),
                username: credentials.username.clone(),
                secret: credentials.password.clone(),
            })
            .map_err(|e| self.bad(format!("cannot encode credentials: {e}")))?;
            self.helper(&helper, "store", &url, &input)?;
            // Like Docker: no plaintext copy is left beside the helper's.
            if self.remove_auths(&mut value, &host)? {
                self.write(&value)?;
            }
            return Ok(CredentialStore::Helper(helper));
        }
        let root = self.object(&mut value)?;
        if root.get("auths").is_none_or(Value::is_null) {
            root.insert("auths".into(), Value::Object(Map::new()));
        }
        let Some(Value::Object(auths)) = root.get_mut("auths") else {
            return Err(self.bad("\"auths\" is not an object".into()));
        };
        // Other fields of an existing entry (e.g. `email`) stay; the credential fields are replaced.
        let mut entry = match auths.remove(&url) {
            Some(Value::Object(mut e)) => {
                for k in ["auth", "username", "password", "identitytoken", "registrytoken"] {
                    e.remove(k);
                }
                e
            }
            _ => Map::new(),
        };
        match credentials.identity_token() {
            Some(token) => entry.insert("identitytoken".into(), token.into()),
            None => entry.insert(
                "auth".into(),
                BASE64
                    .encode(format!("{}:{}", credentials.username, credentials.password))
                    .into(),
            ),
        };
        auths.insert(url, Value::Object(entry));
        self.write(&value)?;
        Ok(CredentialStore::File(self.target()))
    }

    /// Removes the credentials for `registry`: from its credential helper (if one is configured) and every
    /// `auths` key that names it. Whether anything was removed.
    pub fn erase(&self, registry: &str) -> Result<bool, Error> {
        let host = hostname(registry);
        let url = server_url(&host);
        let Some(mut value) = self.read()? else {
            return Ok(false);
        };
        let file = self.typed(&value)?;
        let mut removed = false;
        if let Some(helper) = helpers(&file, &host).into_iter().next() {
            removed = matches!(
                self.helper(&helper, "erase", &url, url.as_bytes())?,
                HelperAnswer::Done(_)
            );
        }
        if self.remove_auths(&mut value, &host)? {
            self.write(&value)?;
            removed = true;
        }
        Ok(removed)
    }

    fn bad(&self, reason: String) -> Error {
        Error::DockerConfig {
            path: self.path.display().to_string(),
            reason,
        }
    }

    /// The file as JSON; `None` when it does not exist.
    fn read(&self) -> Result<Option<Value>, Error> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.bad(format!("cannot read: {e}"))),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Some(Value::Object(Map::new())));
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| self.bad(format!("invalid JSON: {e}")))?;
        if !value.is_object() {
            return Err(self.bad("not a JSON object".into()));
        }
        Ok(Some(value))
    }

    fn typed(&self, value: &Value) -> Result<ConfigFile, Error> {
        ConfigFile::deserialize(value).map_err(|e| self.bad(format!("invalid credentials section: {e}")))
    }

    fn object<'v>(&self, value: &'v mut Value) -> Result<&'v mut Map<String, Value>, Error> {
        value
            .as_object_mut()
            .ok_or_else(|| self.bad("not a JSON object".into()))
    }

    /// Decodes one `auths` entry.
    fn entry_credentials(&self, key: &str, entry: &Value) -> Result<Option<Credentials>, Error> {
        let bad = |reason: &str| self.bad(format!("auths[{key:?}]: {reason}"));
        let e = AuthEntry::deserialize(entry).map_err(|e| bad(&e.to_string()))?;
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        if let Some(token) = non_empty(e.identitytoken) {
            return Ok(Some(Credentials::from_identity_token(token)));
        }
        if let Some(auth) = non_empty(e.auth) {
            let decoded = BASE64
                .decode(auth.trim())
                .map_err(|e| bad(&format!("\"auth\" is not base64: {e}")))?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad("\"auth\" is not UTF-8"))?;
            return match decoded.split_once(':') {
                Some((user, password)) if !user.is_empty() => Ok(Some(Credentials {
                    username: user.to_owned(),
                    password: password.trim_matches('\0').to_owned(),
                })),
                _ => Err(bad("\"auth\" is not base64 of USER:PASSWORD")),
            };
        }
        Ok(non_empty(e.username).map(|username| Credentials {
            username,
            password: e.password.unwrap_or_default(),
        }))
    }

    /// Drops every `auths` key naming `host`; whether there was one.
    fn remove_auths(&self, value: &mut Value, host: &str) -> Result<bool, Error> {
        let Some(Value::Object(auths)) = self.object(value)?.get_mut("auths") else {
            return Ok(false);
        };
        let before = auths.len();
        auths.retain(|k, _| hostname(k) != host);
        Ok(auths.len() != before)
    }

    /// The file written: the target of a symlinked `config.json` (dotfile managers link it), else the path.
    fn target(&self) -> PathBuf {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(&self.path).unwrap_or(self.path.clone()),
            _ => self.path.clone(),
        }
    }

    /// Replaces the file atomically (temporary file in the same directory, fsync, rename), mode 0600.
    fn write(&self, value: &Value) -> Result<(), Error> {
        let target = self.target();
        let fail = |what: &str, e: std::io::Error| self.bad(format!("cannot {what}: {e}"));
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&dir)
            .map_err(|e| fail(&format!("create {}", dir.display()), e))?;
        let mut bytes = Vec::new();
        let mut ser =
            serde_json::Serializer::with_formatter(&mut bytes, serde_json::ser::PrettyFormatter::with_indent(b"\t"));
        value
            .serialize(&mut ser)
            .map_err(|e| self.bad(format!("cannot encode: {e}")))?;
        bytes.push(b'\n');
        let tmp = dir.join(format!(".config.json.{}.tmp", uuid::Uuid::new_v4().simple()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let result = options
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&bytes)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &target));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail("write", e));
        }
        // The rename is durable once the directory is; a failure here leaves a correct file anyway.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// `docker-credential-NAME` on the helper path (empty entries, i.e. the current directory, are skipped).
    fn find_helper(&self, name: &str) -> Option<PathBuf> {
        let path = self.helper_path.clone().or_else(|| std::env::var_os("PATH"))?;
        let exe = format!("docker-credential-{name}");
        std::env::split_paths(&path)
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| d.join(&exe))
            .find(|p| is_executable(p))
    }

    /// Runs `docker-credential-NAME ACTION` with `input` on stdin. A failure whose output says "credentials not
    /// found" is [`HelperAnswer::NotFound`]; any other failure (missing helper, exit status, timeout) an error.
    fn helper(&self, name: &str, action: &str, server: &str, input: &[u8]) -> Result<HelperAnswer, Error> {
        let fail = |reason: String| Error::CredentialHelper {
            helper: name.to_owned(),
            action: action.to_owned(),
            server: server.to_owned(),
            reason,
        };
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(fail("invalid helper name".into()));
        }
        let exe = self
            .find_helper(name)
            .ok_or_else(|| fail(format!("docker-credential-{name} not found in PATH")))?;
        let mut child = Command::new(&exe)
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", exe.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper may exit without reading its input; its exit status says what happened.
            let _ = stdin.write_all(input);
        }
        let (tx, rx) = mpsc::channel();
        for (i, pipe) in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .enumerate()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(p) = pipe {
                    let _ = p.take(HELPER_OUTPUT_MAX).read_to_end(&mut buf);
                }
                let _ = tx.send((i, buf));
            });
        }
        drop(tx);
        let deadline = Instant::now() + self.helper_timeout;
        let timed_out = || {
            fail(format!(
                "no answer after {} s; killed",
                self.helper_timeout.as_secs_f32()
            ))
        };
        let mut nap = Duration::from_millis(1);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(timed_out());
                }
                Ok(None) => {
                    std::thread::sleep(nap);
                    nap = (nap * 2).min(Duration::from_millis(20));
                }
                Err(e) => return Err(fail(format!("cannot wait for it: {e}"))),
            }
        };
        // Output is complete when both pipes close (a grandchild may hold them open: the deadline still holds).
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((0, b)) => stdout = b,
                Ok((_, b)) => stderr = b,
                Err(_) => return Err(timed_out()),
            }
        }
        if status.success() {
            return Ok(HelperAnswer::Done(stdout));
        }
        let out = String::from_utf8_lossy(&stdout);
        if out.to_ascii_lowercase().contains("credentials not found") {
            return Ok(HelperAnswer::NotFound);
        }
        let said = [out.trim(), String::from_utf8_lossy(&stderr).trim()]
            .into_iter()
            .find(|s| !s.is_empty())
            .and_then(|s| s.lines().next())
            .map(|l| format!(": {}", l.chars().take(200).collect::<String>()))
            .unwrap_or_default();
        Err(fail(format!("{status}{said}")))
    }
}

/// The helpers to ask for `host`, in order: `credHelpers[host]`, then `credsStore`.
fn helpers(file: &ConfigFile, host: &str) -> Vec<String> {
    let specific = file
        .cred_helpers
        .as_ref()
        .and_then(|m| find_key(m, host).and_then(|k| m[k].as_str()));
    let mut out: Vec<String> = Vec::new();
    for h in [specific, file.creds_store.as_deref()].into_iter().flatten() {
        if !h.is_empty() && !out.iter().any(|o| o == h) {
            out.push(h.to_owned());
        }
    }
    out
}

fn is_executable(p: &Path) -> bool {
    let Ok(m) = std::fs::metadata(p) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        m.is_file() && m.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    m.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config(dir: &Path, json: &str) -> DockerConfig {
        let path = dir.join("config.json");
        std::fs::write(&path, json).unwrap();
        DockerConfig::at(path).with_helper_path(dir.join("bin"))
    }

    fn creds(u: &str, p: &str) -> Option<Credentials> {
        Some(Credentials {
            username: u.into(),
            password: p.into(),
        })
    }

    /// `docker-credential-NAME` in `dir/bin`: a shell script with `body`.
    fn helper_script(dir: &Path, name: &str, body: &str) {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let p = bin.join(format!("docker-credential-{name}"));
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn hostnames_like_docker() {
        for (key, host) in [
            ("https://index.docker.io/v1/", "docker.io"),
            ("index.docker.io", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("docker.io", "docker.io"),
            ("localhost:5000", "localhost:5000"),
            ("http://localhost:5000", "localhost:5000"),
            ("https://Reg.Example:5000/v2/some/path", "reg.example:5000"),
            ("reg.example/with/path", "reg.example"),
            ("[::1]:5000", "[::1]:5000"),
        ] {
            assert_eq!(hostname(key), host, "{key}");
        }
        assert_eq!(server_url("docker.io"), DOCKER_HUB_KEY);
        assert_eq!(server_url("index.docker.io"), DOCKER_HUB_KEY);
        assert_eq!(server_url("reg.example:5000"), "reg.example:5000");
        assert_eq!(normalize_registry("https://index.docker.io/v1/").unwrap(), "docker.io");
        assert_eq!(
            normalize_registry(" http://127.0.0.1:5000/ ").unwrap(),
            "127.0.0.1:5000"
        );
        for bad in ["", "https://", "user@host", "a b", "host?x"] {
            assert!(normalize_registry(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lookup_from_auths() {
        let tmp = tempfile::tempdir().unwrap();
        let b64 = |s: &str| BASE64.encode(s);
        let c = config(
            tmp.path(),
            &serde_json::json!({
                "auths": {
                    "https://index.docker.io/v1/": {"auth": b64("hub:p:w")},
                    "localhost:5000": {"auth": b64("local:pw"), "email": "x@y"},
                    "https://reg.example:8443/v2/": {"username": "plain", "password": "pw2"},
                    "http://other.example/some/path": {"auth": "b3RoZXI6cHc"},
                    "tok.example": {"auth": b64("ignored:x"), "identitytoken": "refresh-1"},
                    "empty.example": {},
                    "bad.example": {"auth": "!!!"},
                    "nocolon.example": {"auth": b64("nocolon")},
                },
                "HttpHeaders": {"User-Agent": "x"},
            })
            .to_string(),
        );
        assert_eq!(c.lookup("docker.io").unwrap(), creds("hub", "p:w"));
        assert_eq!(c.lookup("index.docker.io").unwrap(), creds("hub", "p:w"));
        assert_eq!(c.lookup("localhost:5000").unwrap(), creds("local", "pw"));
        assert_eq!(c.lookup("localhost").unwrap(), None, "the port is part of the host");
        assert_eq!(c.lookup("reg.example:8443").unwrap(), creds("plain", "pw2"));
        assert_eq!(
            c.lookup("other.example").unwrap(),
            creds("other", "pw"),
            "unpadded base64"
        );
        let t = c.lookup("tok.example").unwrap().unwrap();
        assert_eq!(t.identity_token(), Some("refresh-1"), "identitytoken wins over auth");
        assert_eq!(c.lookup("empty.example").unwrap(), None);
        assert_eq!(c.lookup("unknown.example").unwrap(), None);
        for bad in ["bad.example", "nocolon.example"] {
            let e = c.lookup(bad).unwrap_err().to_string();
            assert!(e.contains("config.json") && e.contains(bad), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn missing_and_malformed_files() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            DockerConfig::at(tmp.path().join("nope/config.json"))
                .lookup("docker.io")
                .unwrap(),
            None
        );
        assert_eq!(config(tmp.path(), " \n").lookup("docker.io").unwrap(), None);
        assert_eq!(
            config(tmp.path(), r#"{"auths": null}"#).lookup("docker.io").unwrap(),
            None
        );
        for bad in [
            "{\"auths\": ",
            "[]",
            r#"{"auths": []}"#,
            r#"{"auths": {"x.io": {"auth": 3}}}"#,
        ] {
            let c = config(tmp.path(), bad);
            let e = c.lookup("x.io").unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("Docker config {}", c.path().display())),
                "{bad}: {e}"
            );
            if bad.contains("x.io") {
                // A broken entry is replaced by a login.
                c.store("x.io", &creds("u", "p").unwrap()).unwrap();
                assert_eq!(c.lookup("x.io").unwrap(), creds("u", "p"));
            } else {
                // Nothing is written over a file that cannot be read.
                assert!(c.store("x.io", &creds("u", "p").unwrap()).is_err());
                assert_eq!(std::fs::read_to_string(c.path()).unwrap(), bad);
            }
        }
    }

    #[test]
    fn store_preserves_the_rest_and_erase_removes_every_variant() {
        let tmp = tempfile::tempdir().unwrap();
        let original = serde_json::json!({
            "auths": {"https://localhost:5000/v1/": {"auth": "b2xkOm9sZA=="}, "keep.example": {"auth": "a2VlcDpw"}},
            "currentContext": "colima",
            "plugins": {"x": {"y": [1, 2]}},
        });
        let c = config(tmp.path(), &original.to_string());
        let stored = c.store("localhost:5000", &creds("me", "secret").unwrap()).unwrap();
        assert_eq!(stored, CredentialStore::File(c.path().to_owned()));
        assert_eq!(c.lookup("localhost:5000").unwrap(), creds("me", "secret"));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(c.path()).unwrap()).unwrap();
        assert_eq!(v["currentContext"], "colima");
        assert_eq!(v["plugins"], original["plugins"]);
        assert_eq!(v["auths"]["keep.example"], original["auths"]["keep.example"]);
        assert_eq!(v["auths"]["localhost:5000"]["auth"], BASE64.encode("me:secret"));
        let mode = std::fs::metadata(c.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        c.store("docker.io", &Credentials::from_identity_token("rt")).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(c.path()).unwrap()).unwrap();
        assert_eq!(v["auths"][DOCKER_HUB_KEY], serde_json::json!({"identitytoken": "rt"}));

        assert!(c.erase("localhost:5000").unwrap());
        assert_eq!(
            c.lookup("localhost:5000").unwrap(),
            None,
            "both keys for the host are gone"
        );
        assert!(!c.erase("localhost:5000").unwrap());
        let v: Value = serde_json::from_str(&std::fs::read_to_string(c.path()).unwrap()).unwrap();
        assert_eq!(v["currentContext"], "colima");
        assert!(v["auths"]["keep.example"].is_object());
        let leftovers = std::fs::read_dir(tmp.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files left");
    }

    #[test]
    fn store_creates_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let c = DockerConfig::at(tmp.path().join("new/.docker/config.json"));
        assert!(!c.erase("docker.io").unwrap());
        c.store("docker.io", &creds("u", "p").unwrap()).unwrap();
        assert_eq!(c.lookup("docker.io").unwrap(), creds("u", "p"));
        let dir_mode = std::fs::metadata(tmp.path().join("new/.docker"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn credential_helpers() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let calls = dir.join("calls");
        helper_script(
            dir,
            "test",
            &format!(
                r#"input=$(cat)
echo "$1 $input" >> '{}'
case "$1" in
get)
  case "$input" in
  reg.example:5000) echo '{{"ServerURL":"reg.example:5000","Username":"helper-user","Secret":"helper-pass"}}' ;;
  tok.example) echo '{{"ServerURL":"tok.example","Username":"<token>","Secret":"refresh-2"}}' ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
  esac ;;
erase)
  [ "$input" = "gone.example" ] && {{ echo "credentials not found in native keychain"; exit 1; }} ;;
esac
exit 0"#,
                calls.display()
            ),
        );
        helper_script(dir, "broken", "echo 'keychain is locked' >&2; exit 3");
        helper_script(dir, "garbage", "echo 'not json'");
        helper_script(dir, "slow", "exec sleep 5");
        let c = config(
            dir,
            r#"{"credsStore": "test",
                "credHelpers": {"https://broken.example": "broken", "garbage.example": "garbage",
                                "slow.example": "slow", "missing.example": "missing"},
                "auths": {"fallback.example": {"auth": "ZmI6cHc="}, "store.example": {"auth": "b2xkOm9sZA=="}}}"#,
        );
        assert_eq!(
            c.lookup("reg.example:5000").unwrap(),
            creds("helper-user", "helper-pass")
        );
        let t = c.lookup("tok.example").unwrap().unwrap();
        assert_eq!(t.identity_token(), Some("refresh-2"));
        assert_eq!(c.lookup("nothing.example").unwrap(), None, "not found is not an error");
        assert_eq!(c.lookup("fallback.example").unwrap(), creds("fb", "pw"), "then auths");

        let e = c.lookup("broken.example").unwrap_err().to_string();
        assert!(
            e.contains("docker-credential-broken") && e.contains("keychain is locked"),
            "{e}"
        );
        let e = c.lookup("garbage.example").unwrap_err().to_string();
        assert!(e.contains("docker-credential-garbage") && e.contains("JSON"), "{e}");
        let e = c.lookup("missing.example").unwrap_err().to_string();
        assert!(e.contains("docker-credential-missing not found"), "{e}");
        let started = Instant::now();
        let c_fast = c.clone().with_helper_timeout(Duration::from_millis(300));
        let e = c_fast.lookup("slow.example").unwrap_err().to_string();
        assert!(e.contains("docker-credential-slow") && e.contains("killed"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(4));

        let before = std::fs::read_to_string(c.path()).unwrap();
        let stored = c.store("new.example", &creds("n", "s").unwrap()).unwrap();
        assert_eq!(stored, CredentialStore::Helper("test".into()));
        assert_eq!(
            std::fs::read_to_string(c.path()).unwrap(),
            before,
            "nothing written to the file"
        );
        c.store("store.example", &creds("n", "s").unwrap()).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(c.path()).unwrap()).unwrap();
        assert!(v["auths"].get("store.example").is_none(), "plaintext copy removed");
        assert_eq!(v["credHelpers"]["slow.example"], "slow");
        assert!(c.erase("new.example").unwrap());
        assert!(!c.erase("gone.example").unwrap());
        assert!(c.store("broken.example", &creds("n", "s").unwrap()).is_err());

        let log = std::fs::read_to_string(&calls).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(
            lines,
            [
                "get reg.example:5000",
                "get tok.example",
                "get nothing.example",
                "get fallback.example",
                r#"store {"ServerURL":"new.example","Username":"n","Secret":"s"}"#,
                r#"store {"ServerURL":"store.example","Username":"n","Secret":"s"}"#,
                "erase new.example",
                "erase gone.example",
            ]
        );
    }
}
