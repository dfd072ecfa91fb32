//! `wharf copy | push | pull` between OCI layouts and real `wharf serve` registries.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Wharf, bytes};
use wharf_oci::Digest;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Runs `wharf ARGS...`; returns (success, stdout, stderr).
fn wharf(args: &[&str]) -> (bool, String, String) {
    // Never the developer's content store or Docker credentials; kept under cargo's scratch directory for
    // integration tests (target/tmp), not the system's /tmp, so runs do not pile up there.
    let private = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("wharf-copy-tests-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(args)
        .env("WHARF_STORE", private.join("store"))
        .env("DOCKER_CONFIG", private.join("docker"))
        .output()
        .expect("run wharf");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a copy command with `--json` and returns its report; panics with stderr on failure.
fn report(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, stdout, stderr) = wharf(&all);
    assert!(ok, "wharf {args:?} failed: {stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// An OCI layout written by hand, blobs by digest.
struct Layout {
    root: PathBuf,
}

/// A manifest or index in a layout.
struct Written {
    digest: String,
    size: usize,
    bytes: Vec<u8>,
    blobs: Vec<String>,
}

impl Layout {
    fn new(root: PathBuf) -> Layout {
        std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
        std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout { root }
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn put(&self, data: &[u8]) -> String {
        let d = Digest::sha256_of(data).to_string();
        std::fs::write(self.blob_path(&d), data).unwrap();
        d
    }

    fn image(&self, seed: u64, arch: &str, layers: &[usize]) -> Written {
        self.image_typed(seed, arch, layers, OCI_MANIFEST)
    }

    /// An image whose manifest has media type `mt` (OCI or Docker schema2; the layer and config types follow).
    fn image_typed(&self, seed: u64, arch: &str, layers: &[usize], mt: &str) -> Written {
        let docker = mt == DOCKER_MANIFEST;
        let (config_mt, layer_mt) = if docker {
            (
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            )
        } else {
            (
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        };
        let config = format!(r#"{{"architecture":"{arch}","os":"linux","seed":{seed}}}"#).into_bytes();
        let config_digest = self.put(&config);
        let mut blobs = vec![config_digest.clone()];
        let layer_descs: Vec<serde_json::Value> = layers
            .iter()
            .enumerate()
            .map(|(i, len)| {
                let d = self.put(&bytes(seed * 100 + i as u64, *len));
                blobs.push(d.clone());
                serde_json::json!({"mediaType": layer_mt, "digest": d, "size": len})
            })
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": config_mt, "digest": config_digest, "size": config.len()},
            "layers": layer_descs,
        }))
        .unwrap();
        Written {
            digest: self.put(&manifest),
            size: manifest.len(),
            bytes: manifest,
            blobs,
        }
    }

    fn index(&self, children: &[(&Written, serde_json::Value)]) -> Written {
        self.index_typed(children, OCI_INDEX, OCI_MANIFEST)
    }

    fn index_typed(&self, children: &[(&Written, serde_json::Value)], mt: &str, child_mt: &str) -> Written {
        let manifests: Vec<serde_json::Value> = children
            .iter()
            .map(|(w, platform)| {
                serde_json::json!({"mediaType": child_mt, "digest": w.digest, "size": w.size, "platform": platform})
            })
            .collect();
        let index =
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": mt, "manifests": manifests}))
                .unwrap();
        Written {
            digest: self.put(&index),
            size: index.len(),
            bytes: index,
            blobs: vec![],
        }
    }

    /// Writes index.json with one tagged entry per (tag, media type, manifest).
    fn tag(&self, entries: &[(&str, &str, &Written)]) {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(tag, mt, w)| {
                serde_json::json!({"mediaType": mt, "digest": w.digest, "size": w.size,
                    "annotations": {"org.opencontainers.image.ref.name": tag}})
            })
            .collect();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(self.root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }

    /// The digest `tag` points at in index.json.
    fn tagged(&self, tag: &str) -> Option<String> {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.root.join("index.json")).ok()?).ok()?;
        index["manifests"]
            .as_array()?
            .iter()
            .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .and_then(|d| d["digest"].as_str().map(str::to_owned))
    }

    fn arg(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.root.display())
    }
}

async fn get(c: &reqwest::Client, url: &str, accept: &str) -> (u16, Vec<u8>) {
    let r = c.get(url).header("Accept", accept).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.bytes().await.unwrap().to_vec())
}

async fn head(c: &reqwest::Client, url: &str) -> u16 {
    c.head(url).send().await.unwrap().status().as_u16()
}

fn n(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[tokio::test]
async fn oci_to_registry_to_oci_round_trip_then_skip_then_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Wharf::start(&tmp.path().join("reg"));
    let c = common::client();
    let src = Layout::new(tmp.path().join("src"));
    let img = src.image(1, "amd64", &[3 * common::MIB + 17, 4096, 0]);
    src.tag(&[("v1", OCI_MANIFEST, &img)]);
    let total: u64 = img
        .blobs
        .iter()
        .map(|d| std::fs::metadata(src.blob_path(d)).unwrap().len())
        .sum();

    // oci → registry
    let r = report(&["push", &src.arg("v1"), &format!("{}/team/app:v1", reg.addr)]);
    assert_eq!(r["digest"], img.digest.as_str());
    assert_eq!(
        (n(&r, "blobs_copied"), n(&r, "bytes_moved"), n(&r, "manifests")),
        (4, total, 1)
    );
    let (status, body) = get(&c, &reg.url("/v2/team/app/manifests/v1"), OCI_MANIFEST).await;
    assert_eq!(status, 200);
    assert_eq!(body, img.bytes, "manifest stored byte-exact");
    for d in &img.blobs {
        let (status, body) = get(&c, &reg.url(&format!("/v2/team/app/blobs/{d}")), "*/*").await;
        assert_eq!((status, body), (200, std::fs::read(src.blob_path(d)).unwrap()), "{d}");
    }

    // registry → oci
    let dst = Layout {
        root: tmp.path().join("dst"),
    };
    let r = report(&["pull", &format!("{}/team/app:v1", reg.addr), &dst.arg("v1")]);
    assert_eq!((n(&r, "blobs_copied"), n(&r, "bytes_moved")), (4, total));
    assert_eq!(dst.tagged("v1").as_deref(), Some(img.digest.as_str()));
    assert_eq!(std::fs::read(dst.blob_path(&img.digest)).unwrap(), img.bytes);
    for d in &img.blobs {
        assert_eq!(
            std::fs::read(dst.blob_path(d)).unwrap(),
            std::fs::read(src.blob_path(d)).unwrap()
        );
    }

    // The same push again moves nothing.
    let r = report(&["push", &src.arg("v1"), &format!("{}/team/app:v1", reg.addr)]);
    assert_eq!(
        (n(&r, "bytes_moved"), n(&r, "blobs_skipped"), n(&r, "bytes_skipped")),
        (0, 4, total)
    );

    // Another repository of the same registry: every blob is mounted, none is sent.
    let r = report(&[
        "copy",
        &format!("docker://{}/team/app:v1", reg.addr),
        &format!("docker://{}/other/app:v2", reg.addr),
    ]);
    assert_eq!(
        (n(&r, "bytes_moved"), n(&r, "blobs_mounted"), n(&r, "bytes_mounted")),
        (0, 4, total)
    );
    let (status, body) = get(&c, &reg.url("/v2/other/app/manifests/v2"), OCI_MANIFEST).await;
    assert_eq!((status, body), (200, img.bytes.clone()));
    for d in &img.blobs {
        assert_eq!(head(&c, &reg.url(&format!("/v2/other/app/blobs/{d}"))).await, 200);
    }

    // The human summary line.
    let (ok, stdout, stderr) = wharf(&["pull", &format!("{}/other/app:v2", reg.addr), &dst.arg("v2")]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with(&format!("copied {}", img.digest)), "{stdout}");
    assert!(
        stdout.contains("0 B moved in 0 blobs") && stdout.contains("4 skipped"),
        "{stdout}"
    );
    // Without a terminal, a line as each blob starts and one as it ends (what CI logs show).
    for d in &img.blobs {
        let short = &d.trim_start_matches("sha256:")[..12];
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with(&format!("blob {short} ")))
            .collect();
        assert!(
            lines.len() == 2 && lines[0].ends_with("started") && lines[1].contains("skipped in"),
            "{stderr}"
        );
    }
    let (ok, stdout, _) = wharf(&["pull", "--quiet", &format!("{}/other/app:v2", reg.addr), &dst.arg("v3")]);
    assert!(ok && stdout.is_empty(), "{stdout}");
}

#[tokio::test]
async fn multi_arch_index_with_all_and_with_platform() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Wharf::start(&tmp.path().join("reg"));
    let c = common::client();
    let src = Layout::new(tmp.path().join("src"));
    let amd = src.image(10, "amd64", &[100_000, 5000]);
    let arm = src.image(20, "arm64", &[120_000]);
    let index = src.index(&[
        (&amd, serde_json::json!({"os": "linux", "architecture": "amd64"})),
        (
            &arm,
            serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
        ),
    ]);
    src.tag(&[("multi", OCI_INDEX, &index)]);

    // --all: the index and both images, byte-exact.
    let r = report(&["copy", "--all", &src.arg("multi"), &format!("{}/multi:all", reg.addr)]);
    assert_eq!(r["digest"], index.digest.as_str());
    assert_eq!((n(&r, "manifests"), n(&r, "blobs_copied")), (3, 5));
    let (status, body) = get(&c, &reg.url("/v2/multi/manifests/all"), OCI_INDEX).await;
    assert_eq!((status, body), (200, index.bytes.clone()));
    for w in [&amd, &arm] {
        let (status, body) = get(&c, &reg.url(&format!("/v2/multi/manifests/{}", w.digest)), OCI_MANIFEST).await;
        assert_eq!((status, body), (200, w.bytes.clone()));
    }

    // Back into a layout with --all: index.json points at the same index digest.
    let back = Layout {
        root: tmp.path().join("back"),
    };
    let r = report(&["pull", "--all", &format!("{}/multi:all", reg.addr), &back.arg("multi")]);
    assert_eq!(n(&r, "manifests"), 3);
    assert_eq!(back.tagged("multi").as_deref(), Some(index.digest.as_str()));
    assert_eq!(std::fs::read(back.blob_path(&arm.digest)).unwrap(), arm.bytes);

    // --platform: just that image, tagged as itself.
    let r = report(&[
        "copy",
        "--platform",
        "linux/arm64",
        &src.arg("multi"),
        &format!("{}/single:arm", reg.addr),
    ]);
    assert_eq!(r["digest"], arm.digest.as_str());
    // The blobs were seen in `multi` by the first copy: mounted from there (the local record), not sent.
    assert_eq!(
        (n(&r, "manifests"), n(&r, "blobs_mounted"), n(&r, "bytes_moved")),
        (1, 2, 0)
    );
    let (status, body) = get(&c, &reg.url("/v2/single/manifests/arm"), OCI_MANIFEST).await;
    assert_eq!((status, body), (200, arm.bytes.clone()));
    for d in &amd.blobs {
        assert_eq!(
            head(&c, &reg.url(&format!("/v2/single/blobs/{d}"))).await,
            404,
            "amd64 blobs not copied"
        );
    }
    // From the registry's index too.
    let r = report(&[
        "pull",
        "--platform",
        "linux/amd64",
        &format!("{}/multi:all", reg.addr),
        &back.arg("amd"),
    ]);
    assert_eq!(r["digest"], amd.digest.as_str());
    assert_eq!(back.tagged("amd").as_deref(), Some(amd.digest.as_str()));

    let (ok, _, stderr) = wharf(&["copy", "--platform", "linux/s390x", &src.arg("multi"), &back.arg("x")]);
    assert!(!ok);
    assert!(
        stderr.contains("no image for platform linux/s390x") && stderr.contains("linux/arm64/v8"),
        "{stderr}"
    );
}

#[tokio::test]
async fn docker_schema2_manifest_list_keeps_its_media_types_and_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Wharf::start(&tmp.path().join("reg"));
    let c = common::client();
    let src = Layout::new(tmp.path().join("src"));
    let amd = src.image_typed(60, "amd64", &[50_000], DOCKER_MANIFEST);
    let arm = src.image_typed(61, "arm", &[60_000], DOCKER_MANIFEST);
    let list = src.index_typed(
        &[
            (&amd, serde_json::json!({"os": "linux", "architecture": "amd64"})),
            (
                &arm,
                serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v7"}),
            ),
        ],
        DOCKER_LIST,
        DOCKER_MANIFEST,
    );
    src.tag(&[("list", DOCKER_LIST, &list)]);

    let r = report(&[
        "copy",
        "--all",
        &src.arg("list"),
        &format!("{}/dock/app:list", reg.addr),
    ]);
    assert_eq!(
        (r["digest"].as_str(), r["media_type"].as_str()),
        (Some(list.digest.as_str()), Some(DOCKER_LIST))
    );
    let resp = c
        .get(reg.url("/v2/dock/app/manifests/list"))
        .header("Accept", DOCKER_LIST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], DOCKER_LIST);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), list.bytes);

    let out = Layout {
        root: tmp.path().join("out"),
    };
    let r = report(&[
        "pull",
        "--platform",
        "linux/arm/v7",
        &format!("{}/dock/app:list", reg.addr),
        &out.arg("arm"),
    ]);
    assert_eq!(
        (r["digest"].as_str(), r["media_type"].as_str()),
        (Some(arm.digest.as_str()), Some(DOCKER_MANIFEST))
    );
    assert_eq!(std::fs::read(out.blob_path(&arm.digest)).unwrap(), arm.bytes);
}

#[tokio::test]
async fn wrong_blob_bytes_are_detected_and_never_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let reg_root = tmp.path().join("reg");
    let reg = Wharf::start(&reg_root);
    let c = common::client();

    // A layout whose layer file does not hold what its name says (same size).
    let src = Layout::new(tmp.path().join("src"));
    let img = src.image(30, "amd64", &[2 * common::MIB]);
    src.tag(&[("v1", OCI_MANIFEST, &img)]);
    let layer = img.blobs[1].clone();
    std::fs::write(src.blob_path(&layer), bytes(777, 2 * common::MIB)).unwrap();

    let (ok, _, stderr) = wharf(&["push", &src.arg("v1"), &format!("{}/bad/app:v1", reg.addr)]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("blob {layer}")) && stderr.contains("content digest is"),
        "{stderr}"
    );
    let errors: Vec<&str> = stderr.trim().lines().filter(|l| !l.starts_with("blob ")).collect();
    assert_eq!(errors.len(), 1, "one line besides the progress: {stderr}");
    assert_eq!(head(&c, &reg.url(&format!("/v2/bad/app/blobs/{layer}"))).await, 404);
    assert_eq!(get(&c, &reg.url("/v2/bad/app/manifests/v1"), OCI_MANIFEST).await.0, 404);
    let hex = layer.trim_start_matches("sha256:");
    assert!(!reg_root.join("blobs/sha256").join(&hex[..2]).join(hex).exists());

    // A registry that serves wrong bytes: push a good image, then corrupt the registry's stored layer in place.
    let good = Layout::new(tmp.path().join("good"));
    let img = good.image(40, "amd64", &[1 << 20]);
    good.tag(&[("v1", OCI_MANIFEST, &img)]);
    report(&["push", &good.arg("v1"), &format!("{}/good/app:v1", reg.addr)]);
    let layer = img.blobs[1].clone();
    let hex = layer.trim_start_matches("sha256:");
    std::fs::write(
        reg_root.join("blobs/sha256").join(&hex[..2]).join(hex),
        bytes(888, 1 << 20),
    )
    .unwrap();

    let dst = Layout {
        root: tmp.path().join("dst"),
    };
    let (ok, _, stderr) = wharf(&["pull", &format!("{}/good/app:v1", reg.addr), &dst.arg("v1")]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("blob {layer}")) && stderr.contains(&reg.addr),
        "{stderr}"
    );
    assert!(!dst.blob_path(&layer).exists(), "nothing written under the digest");
    assert!(dst.tagged("v1").is_none(), "no manifest written");
    let leftovers: Vec<_> = std::fs::read_dir(dst.root.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    // The same wrong blob on its way to a rootfs: refused, and the content store holds nothing under its digest.
    let store = tmp.path().join("store");
    let (ok, _, stderr) = wharf(&[
        "pull",
        "--store",
        store.to_str().unwrap(),
        &format!("{}/good/app:v1", reg.addr),
        &format!("rootfs:{}", tmp.path().join("rootfs").display()),
    ]);
    assert!(!ok, "a wrong blob was unpacked");
    let errors: Vec<&str> = stderr.trim().lines().filter(|l| !l.starts_with("blob ")).collect();
    assert_eq!(errors.len(), 1, "one line besides the progress: {stderr}");
    assert!(
        !store.join("blobs/sha256").join(hex).exists(),
        "the store took a wrong blob"
    );
    let ingest = store.join("ingest");
    assert!(
        !ingest.exists() || std::fs::read_dir(&ingest).unwrap().count() == 0,
        "partial blobs left in the store"
    );
}

#[tokio::test]
async fn bad_references_and_missing_images_fail_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Wharf::start(&tmp.path().join("reg"));
    let out = format!("oci:{}", tmp.path().join("out").display());
    let cases: &[(&[&str], &str)] = &[
        (&["pull", "Bad/Name", &out], "invalid repository name"),
        (&["pull", "app:bad tag", &out], "invalid tag"),
        (&["pull", "app@sha256:123", &out], "bad digest"),
        (&["copy", "oci-archive:/x.tar", &out], "not supported yet"),
        (&["copy", "ftp://host/x", &out], "unknown transport"),
        (&["copy", "--platform", "linux", "alpine", &out], "invalid platform"),
        (&["copy", "oci:/nonexistent/layout:v1", &out], "no index.json"),
        (
            &["pull", &format!("{}/no/such:v1", reg.addr), &out],
            "HTTP 404 MANIFEST_UNKNOWN",
        ),
    ];
    for (args, expected) in cases {
        let (ok, stdout, stderr) = wharf(args);
        assert!(!ok, "{args:?} succeeded: {stdout}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        let errors = stderr.trim().lines().filter(|l| !l.starts_with("blob ")).count();
        assert_eq!(errors, 1, "{args:?}: one line besides the progress: {stderr}");
    }
    let (_, _, stderr) = wharf(&["pull", &format!("{}/no/such:v1", reg.addr), &out]);
    assert!(stderr.contains(&reg.addr) && stderr.contains("no/such:v1"), "{stderr}");
}

/// Faults a relay in front of a registry injects, each once.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// The first N connections get `503 Service Unavailable` and are closed.
    unavailable: usize,
    /// Cut the connection after this many request bytes (client → registry) have passed in total.
    cut_up_after: Option<u64>,
    /// Cut the connection after this many response bytes (registry → client) have passed in total.
    cut_down_after: Option<u64>,
}

#[derive(Default)]
struct FaultCounts {
    connections: AtomicUsize,
    up: AtomicU64,
    down: AtomicU64,
    cuts: AtomicUsize,
}

/// A TCP relay to `target` that injects `faults`; returns its address and what it did.
async fn faulty_relay(target: String, faults: Faults) -> (String, Arc<FaultCounts>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let counts = Arc::new(FaultCounts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let n = c.connections.fetch_add(1, Ordering::SeqCst);
            if n < faults.unavailable {
                let mut buf = [0u8; 4096];
                let _ = down.read(&mut buf).await;
                let _ = down
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                continue;
            }
            let Ok(up) = tokio::net::TcpStream::connect(&target).await else {
                continue;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let (ur, uw) = up.into_split();
                let (dr, dw) = down.into_split();
                tokio::select! {
                    _ = pipe(dr, uw, &c.up, faults.cut_up_after, &c.cuts) => {}
                    _ = pipe(ur, dw, &c.down, faults.cut_down_after, &c.cuts) => {}
                }
            });
        }
    });
    (addr, counts)
}

/// Copies `r` to `w`, counting into `passed`; the first pipe to cross `cut_after` drops the connection there.
async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    passed: &AtomicU64,
    cut_after: Option<u64>,
    cuts: &AtomicUsize,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let before = passed.fetch_add(n as u64, Ordering::SeqCst);
        if let Some(limit) = cut_after
            && before <= limit
            && before + n as u64 > limit
        {
            cuts.fetch_add(1, Ordering::SeqCst);
            let _ = w.write_all(&buf[..(limit - before) as usize]).await;
            return;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `report`, off the async runtime (the relay runs on it).
async fn report_async(args: Vec<String>) -> serde_json::Value {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        report(&args)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn unavailable_registry_and_cut_connections_are_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("reg.log");
    let reg = Wharf::start_with(&tmp.path().join("reg"), &["--log", "wharf_registry=debug"], Some(&log));
    let c = common::client();
    let src = Layout::new(tmp.path().join("src"));
    let img = src.image(50, "amd64", &[3 * common::MIB]);
    src.tag(&[("v1", OCI_MANIFEST, &img)]);

    // Push through a relay that first answers 503 twice, then cuts the upload mid-layer once.
    let faults = Faults {
        unavailable: 2,
        cut_up_after: Some(common::MIB as u64),
        ..Faults::default()
    };
    let (relay, counts) = faulty_relay(reg.addr.clone(), faults).await;
    let r = report_async(vec!["push".into(), src.arg("v1"), format!("{relay}/flaky/app:v1")]).await;
    assert_eq!(r["digest"], img.digest.as_str());
    assert_eq!(counts.cuts.load(Ordering::SeqCst), 1, "the upload was cut");
    assert!(counts.connections.load(Ordering::SeqCst) > 2);
    let layer = &img.blobs[1];
    let (status, body) = get(&c, &reg.url(&format!("/v2/flaky/app/blobs/{layer}")), "*/*").await;
    assert_eq!((status, body), (200, std::fs::read(src.blob_path(layer)).unwrap()));

    // Pull through a relay that cuts the download mid-layer once: resumed with one Range request, no byte twice.
    let faults = Faults {
        cut_down_after: Some(2 * common::MIB as u64),
        ..Faults::default()
    };
    let (relay, counts) = faulty_relay(reg.addr.clone(), faults).await;
    let dst = Layout {
        root: tmp.path().join("dst"),
    };
    let r = report_async(vec!["pull".into(), format!("{relay}/flaky/app:v1"), dst.arg("v1")]).await;
    assert_eq!(r["digest"], img.digest.as_str());
    assert_eq!(counts.cuts.load(Ordering::SeqCst), 1, "the download was cut");
    let total: u64 = img
        .blobs
        .iter()
        .map(|d| std::fs::metadata(src.blob_path(d)).unwrap().len())
        .sum();
    assert_eq!(n(&r, "bytes_moved"), total, "nothing downloaded twice");
    let ranged = reg
        .log_text()
        .lines()
        .filter(|l| l.contains(&format!("method=GET path=/v2/flaky/app/blobs/{layer} status=206")))
        .count();
    assert_eq!(ranged, 1, "resumed with one Range request");
    assert_eq!(
        std::fs::read(dst.blob_path(layer)).unwrap(),
        std::fs::read(src.blob_path(layer)).unwrap()
    );
}

#[tokio::test]
async fn a_cut_chunked_upload_resumes_from_the_registry_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("reg.log");
    let reg = Wharf::start_with(&tmp.path().join("reg"), &["--log", "wharf_registry=debug"], Some(&log));
    let src = Layout::new(tmp.path().join("src"));
    // 40 MiB: three PATCH chunks of at most 16 MiB.
    let img = src.image(51, "amd64", &[40 * common::MIB]);
    src.tag(&[("v1", OCI_MANIFEST, &img)]);
    let layer = &img.blobs[1];
    let layer_len = std::fs::metadata(src.blob_path(layer)).unwrap().len();

    // Cut the connection 24 MiB into the upload: in the middle of the second chunk.
    let faults = Faults {
        cut_up_after: Some(24 * common::MIB as u64),
        ..Faults::default()
    };
    let (relay, counts) = faulty_relay(reg.addr.clone(), faults).await;
    let r = report_async(vec!["push".into(), src.arg("v1"), format!("{relay}/resume/app:v1")]).await;
    assert_eq!(r["digest"], img.digest.as_str());
    assert_eq!(counts.cuts.load(Ordering::SeqCst), 1, "the upload was cut");
    // Resumed, not restarted: at most one chunk (16 MiB) is sent twice.
    let up = counts.up.load(Ordering::SeqCst);
    assert!(
        up < layer_len + 17 * common::MIB as u64,
        "{up} bytes went up for a {layer_len}-byte layer: the blob was sent again from the start"
    );
    let status_queries = reg
        .log_text()
        .lines()
        .filter(|l| l.contains("method=GET path=/v2/resume/app/blobs/uploads/"))
        .count();
    assert_eq!(status_queries, 1, "one upload status query to find the offset");
    let c = common::client();
    let (status, body) = get(&c, &reg.url(&format!("/v2/resume/app/blobs/{layer}")), "*/*").await;
    assert_eq!(status, 200);
    assert!(
        body == std::fs::read(src.blob_path(layer)).unwrap(),
        "the stored blob differs"
    );
}

#[tokio::test]
async fn blobs_seen_in_one_repository_are_mounted_into_another_from_any_source() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Wharf::start(&tmp.path().join("reg"));
    let src = Layout::new(tmp.path().join("src"));
    let img = src.image(52, "amd64", &[2 * common::MIB, 4096]);
    src.tag(&[("v1", OCI_MANIFEST, &img)]);
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();

    let r = report(&[
        "push",
        "--store",
        store,
        &src.arg("v1"),
        &format!("{}/team/a:v1", reg.addr),
    ]);
    assert_eq!(n(&r, "blobs_copied"), 3);
    // An OCI layout is no registry repository, yet the local record says where the blobs are: mounted, not sent.
    let r = report(&[
        "push",
        "--store",
        store,
        &src.arg("v1"),
        &format!("{}/team/b:v1", reg.addr),
    ]);
    assert_eq!((n(&r, "blobs_mounted"), n(&r, "bytes_moved")), (3, 0), "{r}");
    // Without the record (another store) the blobs are sent.
    let other = tmp.path().join("other-store");
    let r = report(&[
        "push",
        "--store",
        other.to_str().unwrap(),
        &src.arg("v1"),
        &format!("{}/team/c:v1", reg.addr),
    ]);
    assert_eq!((n(&r, "blobs_mounted"), n(&r, "blobs_copied")), (0, 3), "{r}");
}

#[tokio::test]
async fn a_sha512_layer_is_pushed_in_chunks_and_pulled_back_under_its_own_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Wharf::start(&tmp.path().join("reg"));
    let src = Layout::new(tmp.path().join("src"));
    // 20 MiB: more than one 16 MiB upload chunk, so the PATCH path carries it.
    let layer = bytes(512, 20 * common::MIB);
    let layer_digest = wharf_oci::Digest::of(wharf_oci::Algorithm::Sha512, &layer).to_string();
    let hex = layer_digest.trim_start_matches("sha512:").to_owned();
    std::fs::create_dir_all(src.root.join("blobs/sha512")).unwrap();
    std::fs::write(src.root.join("blobs/sha512").join(&hex), &layer).unwrap();
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let config_digest = src.put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    let img = Written {
        digest: src.put(&manifest),
        size: manifest.len(),
        bytes: manifest,
        blobs: vec![config_digest, layer_digest.clone()],
    };
    src.tag(&[("v1", OCI_MANIFEST, &img)]);

    let r = report(&["push", &src.arg("v1"), &format!("{}/sha512/app:v1", reg.addr)]);
    assert_eq!(r["digest"], img.digest.as_str());
    let c = common::client();
    let (status, body) = get(&c, &reg.url(&format!("/v2/sha512/app/blobs/{layer_digest}")), "*/*").await;
    assert_eq!(status, 200);
    assert!(body == layer, "the registry holds other bytes under {layer_digest}");

    let dst = Layout {
        root: tmp.path().join("dst"),
    };
    report(&["pull", &format!("{}/sha512/app:v1", reg.addr), &dst.arg("v1")]);
    assert!(std::fs::read(dst.root.join("blobs/sha512").join(&hex)).unwrap() == layer);
}

#[tokio::test]
async fn a_rootfs_pull_of_an_image_with_a_foreign_layer_fails_clearly_instead_of_waiting() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Wharf::start(&tmp.path().join("reg"));
    let src = Layout::new(tmp.path().join("src"));
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let config_digest = src.put(&config);
    let foreign = "sha256:".to_owned() + &"ab".repeat(32);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "digest": foreign, "size": 1234, "urls": ["https://example.invalid/layer"]
        }],
    }))
    .unwrap();
    let img = Written {
        digest: src.put(&manifest),
        size: manifest.len(),
        bytes: manifest,
        blobs: vec![config_digest],
    };
    src.tag(&[("v1", OCI_MANIFEST, &img)]);
    report(&["push", &src.arg("v1"), &format!("{}/foreign/app:v1", reg.addr)]);

    // `timeout` turns the old hang into a failure of this test rather than of the whole run.
    let out = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_wharf"))
        .args(["pull", "--store"])
        .arg(tmp.path().join("store"))
        .arg(format!("{}/foreign/app:v1", reg.addr))
        .arg(format!("rootfs:{}", tmp.path().join("rootfs").display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(124), "the pull hung");
    assert!(!out.status.success());
    assert!(stderr.contains("non-distributable"), "{stderr}");
}
