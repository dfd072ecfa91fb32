//! A registry on an ephemeral port with its own storage directory, and small request helpers.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use reqwest::{Client, Response};
use tokio::sync::oneshot;
use wharf_oci::Digest;
use wharf_registry::{App, RegistryConfig};
use wharf_storage::{CacheConfig, CachedStore, FsStore};

pub struct Server {
    pub base: String,
    pub client: Client,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir).await
    }

    async fn start_in(dir: tempfile::TempDir) -> Server {
        let store = CachedStore::new(FsStore::open(dir.path()).unwrap(), CacheConfig::default());
        let app = App::new(Arc::new(store), RegistryConfig::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            wharf_registry::serve(listener, app, Default::default(), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Server {
            base,
            client: {
                // reqwest is built without a bundled TLS crypto provider (wharf installs ring); do the same here.
                let _ = rustls::crypto::ring::default_provider().install_default();
                Client::new()
            },
            dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the server and starts a new one (new process state, new caches) on the same storage.
    pub async fn restart(mut self) -> Server {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::start_in(dir).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn head(&self, path: &str) -> Response {
        self.client.head(self.url(path)).send().await.unwrap()
    }

    pub async fn post_blob(&self, repo: &str, digest: &str, data: Vec<u8>) -> Response {
        self.client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
            .body(data)
            .send()
            .await
            .unwrap()
    }

    /// Starts an upload session; returns its Location.
    pub async fn start_upload(&self, repo: &str) -> String {
        let r = self
            .client
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::ACCEPTED);
        r.headers()["location"].to_str().unwrap().to_owned()
    }

    pub async fn patch_chunk(&self, location: &str, start: usize, chunk: &[u8]) -> Response {
        self.client
            .patch(self.url(location))
            .header("Content-Range", format!("{}-{}", start, start + chunk.len() - 1))
            .header("Content-Type", "application/octet-stream")
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap()
    }

    pub async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: Vec<u8>) -> Response {
        self.client
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("Content-Type", media_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// A GET with the path sent byte for byte (no client-side normalization); returns status and body.
    pub async fn raw_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.base.trim_start_matches("http://");
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        sock.read_to_string(&mut out).await.unwrap();
        let status = out.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, out)
    }

    /// Number of blob files in storage.
    pub fn stored_blob_files(&self) -> usize {
        count_files(&self.dir.path().join("blobs"))
    }

    /// Number of upload sessions on disk.
    pub fn upload_dirs(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("uploads"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { count_files(&p) } else { 1 }
        })
        .sum()
}

pub fn blob_digest(data: &[u8]) -> String {
    Digest::sha256_of(data).to_string()
}

pub async fn json(r: Response) -> serde_json::Value {
    let bytes = r.bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// The `code` of the first error in a spec error body.
pub async fn error_code(r: Response) -> String {
    json(r).await["errors"][0]["code"]
        .as_str()
        .unwrap_or("<none>")
        .to_owned()
}

/// An image manifest of `media_type` referencing `config` and `layers` (as blobs), with an optional subject
/// `(media type, digest, size)`.
pub fn image_manifest(
    media_type: &str,
    config: &[u8],
    layers: &[&[u8]],
    subject: Option<(&str, &str, usize)>,
) -> Vec<u8> {
    let layer_type = if media_type == wharf_oci::media::DOCKER_MANIFEST {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    };
    let config_type = if media_type == wharf_oci::media::DOCKER_MANIFEST {
        "application/vnd.docker.container.image.v1+json"
    } else {
        "application/vnd.oci.image.config.v1+json"
    };
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": layer_type, "digest": blob_digest(l), "size": l.len()}))
        .collect();
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": blob_digest(config), "size": config.len()},
        "layers": layers,
    });
    if let Some((mt, d, size)) = subject {
        m["subject"] = serde_json::json!({"mediaType": mt, "digest": d, "size": size});
    }
    serde_json::to_vec(&m).unwrap()
}
