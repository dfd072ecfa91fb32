//! Real `wharf` processes for tests, and small helpers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use wharf_oci::Digest;

pub mod services;

pub const MIB: usize = 1 << 20;

/// A `wharf serve` process on an ephemeral port.
pub struct Wharf {
    pub child: Child,
    pub addr: String,
    /// Where its stderr (the log) goes, when captured.
    pub log: Option<PathBuf>,
}

impl Wharf {
    pub fn start(root: &Path) -> Wharf {
        Self::start_with(root, &[], None)
    }

    /// Starts `wharf serve --root ROOT ARGS...`, its log in `log` if given.
    pub fn start_with(root: &Path, args: &[&str], log: Option<&Path>) -> Wharf {
        Self::start_env(root, args, &[], log)
    }

    /// [`Wharf::start_with`] with environment variables set for the server.
    pub fn start_env(root: &Path, args: &[&str], env: &[(&str, &str)], log: Option<&Path>) -> Wharf {
        let stderr = match log {
            Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["serve", "--listen", "127.0.0.1:0", "--root"])
            .arg(root)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start wharf");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .rsplit("://")
            .next()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| panic!("wharf did not start; first line {line:?}"))
            .to_owned();
        Wharf {
            child,
            addr,
            log: log.map(Path::to_owned),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The captured log so far.
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

impl Drop for Wharf {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a request head plus `body` on a raw socket and leaves the connection open (the body may be incomplete).
pub fn send_partial(addr: &str, head: &str, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s.flush().unwrap();
    s
}

pub fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 })
        .sum()
}

/// reqwest is built without a bundled TLS crypto provider (wharf installs ring); do the same here.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// An image pushed to a registry: its manifest digest and its blobs (config first).
pub struct Image {
    pub manifest: Vec<u8>,
    pub digest: String,
    pub blobs: Vec<(String, Vec<u8>)>,
}

/// Deterministic pseudo-random bytes (no RNG dependency needed for test data).
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Uploads `data` to `repo` in one request (a monolithic upload); its digest.
pub async fn upload(c: &reqwest::Client, registry: &Wharf, repo: &str, data: &[u8]) -> String {
    let d = Digest::sha256_of(data).to_string();
    let r = c
        .post(registry.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "blob {d} to {repo}");
    d
}

/// Builds an OCI image with layers of the given sizes and pushes it to `repo:tag` on `registry`.
pub async fn push_image(
    c: &reqwest::Client,
    registry: &Wharf,
    repo: &str,
    tag: &str,
    seed: u64,
    layers: &[usize],
) -> Image {
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{seed}}}").into_bytes();
    let mut blobs = vec![(Digest::sha256_of(&config).to_string(), config)];
    for (i, len) in layers.iter().enumerate() {
        let data = bytes(seed * 100 + i as u64, *len);
        blobs.push((Digest::sha256_of(&data).to_string(), data));
    }
    for (d, data) in &blobs {
        let r = c
            .post(registry.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let layer_descs: Vec<serde_json::Value> = blobs[1..]
        .iter()
        .map(|(d, b)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": b.len()}))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blobs[0].0, "size": blobs[0].1.len()},
        "layers": layer_descs,
    }))
    .unwrap();
    let r = c
        .put(registry.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    Image {
        digest: Digest::sha256_of(&manifest).to_string(),
        manifest,
        blobs,
    }
}
