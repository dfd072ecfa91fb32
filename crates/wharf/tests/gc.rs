//! Garbage collection with the real binary: scheduled inside `wharf serve` while images are pushed (tagged images,
//! a multi-arch index, a deleted image), and `wharf gc` from the command line (dry run, then a real run).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Wharf, bytes, client, push_image, upload};
use wharf_oci::Digest;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";

async fn put_blob(c: &reqwest::Client, w: &Wharf, repo: &str, data: &[u8]) -> serde_json::Value {
    let d = upload(c, w, repo, data).await;
    serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": data.len()})
}

async fn put_manifest(c: &reqwest::Client, w: &Wharf, repo: &str, reference: &str, json: serde_json::Value) -> String {
    let body = serde_json::to_vec(&json).unwrap();
    let media_type = json["mediaType"].as_str().unwrap().to_owned();
    let r = c
        .put(w.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Content-Type", media_type)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        201,
        "manifest {repo}:{reference}: {}",
        r.text().await.unwrap()
    );
    Digest::sha256_of(&body).to_string()
}

/// Pushes an image with these config and layer bytes; returns its manifest's digest and size.
async fn image(
    c: &reqwest::Client,
    w: &Wharf,
    repo: &str,
    reference: &str,
    config: &[u8],
    layers: &[&[u8]],
) -> (String, usize) {
    let mut cfg = put_blob(c, w, repo, config).await;
    cfg["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let mut descs = Vec::new();
    for l in layers {
        descs.push(put_blob(c, w, repo, l).await);
    }
    let json = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": cfg,
        "layers": descs,
    });
    let size = serde_json::to_vec(&json).unwrap().len();
    (put_manifest(c, w, repo, reference, json).await, size)
}

fn sha(data: &[u8]) -> String {
    Digest::sha256_of(data).to_string()
}

/// Pulls `repo:reference` completely (index children too), checking every digest.
async fn pull(c: &reqwest::Client, w: &Wharf, repo: &str, reference: &str) {
    let r = c
        .get(w.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Accept", ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{repo}:{reference}");
    let claimed = r.headers()["docker-content-digest"].to_str().unwrap().to_owned();
    let body = r.bytes().await.unwrap();
    assert_eq!(sha(&body), claimed, "{repo}:{reference}");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    if let Some(children) = json["manifests"].as_array() {
        for child in children {
            Box::pin(pull(c, w, repo, child["digest"].as_str().unwrap())).await;
        }
        return;
    }
    let mut blobs = vec![json["config"]["digest"].as_str().unwrap().to_owned()];
    for l in json["layers"].as_array().unwrap() {
        blobs.push(l["digest"].as_str().unwrap().to_owned());
    }
    for d in blobs {
        let r = c.get(w.url(&format!("/v2/{repo}/blobs/{d}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{repo}:{reference} blob {d}");
        assert_eq!(sha(&r.bytes().await.unwrap()), d, "{repo}:{reference} blob {d}");
    }
}

async fn head_blob(c: &reqwest::Client, w: &Wharf, repo: &str, d: &str) -> u16 {
    c.head(w.url(&format!("/v2/{repo}/blobs/{d}")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn blob_file(root: &Path, d: &str) -> std::path::PathBuf {
    let hex = d.strip_prefix("sha256:").unwrap();
    root.join("blobs/sha256").join(&hex[..2]).join(hex)
}

fn wharf_gc(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("gc")
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("WHARF_CONFIG")
        .output()
        .unwrap()
}

/// The `blob ...` and `manifest ...` lines of `wharf gc` output.
fn listed(out: &std::process::Output) -> Vec<String> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("blob ") || l.starts_with("manifest "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_gc_runs_during_pushes_and_keeps_every_tagged_image() {
    let root = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wharf.toml");
    std::fs::write(&config, "[gc]\ninterval_secs = 1\ngrace_period_secs = 2\n").unwrap();
    let log = dir.path().join("log");
    let w = Arc::new(Wharf::start_with(
        root.path(),
        &["--config", config.to_str().unwrap()],
        Some(&log),
    ));
    let c = client();

    let shared = bytes(1, 40_000);
    let (unique, revived) = (bytes(2, 30_000), bytes(3, 20_000));
    image(&c, &w, "app", "v1", b"{\"app\":1}", &[&shared, &bytes(4, 10_000)]).await;
    let (old, _) = image(&c, &w, "app", "old", b"{\"old\":1}", &[&shared, &unique, &revived]).await;
    // A multi-arch index: children by digest, the index by tag.
    let mut children = Vec::new();
    for (arch, seed) in [("amd64", 5), ("arm64", 6)] {
        let cfg = format!("{{\"architecture\":\"{arch}\"}}").into_bytes();
        let layer = bytes(seed, 25_000);
        let mut desc_cfg = put_blob(&c, &w, "multi", &cfg).await;
        desc_cfg["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
        let json = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": desc_cfg,
            "layers": [put_blob(&c, &w, "multi", &layer).await],
        });
        let body = serde_json::to_vec(&json).unwrap();
        let d = put_manifest(&c, &w, "multi", &sha(&body), json).await;
        children.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d,
            "size": body.len(),
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": children,
    });
    put_manifest(&c, &w, "multi", "latest", index).await;

    // Delete the old image (by digest: the manifest and its tag).
    let r = c
        .delete(w.url(&format!("/v2/app/manifests/{old}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // Push for a few seconds while collections run every second; half way, a new image reuses a layer of the
    // deleted one (which a collection may be deleting at that moment).
    let started = Instant::now();
    let pushers: Vec<_> = (0..2u64)
        .map(|p| {
            let (c, w) = (c.clone(), w.clone());
            tokio::spawn(async move {
                let mut tags = Vec::new();
                let mut i = 0u64;
                while started.elapsed() < Duration::from_secs(4) {
                    let tag = format!("p{p}-{i}");
                    push_image(&c, &w, "loop", &tag, 1000 + p * 1000 + i, &[2_000, 30_000]).await;
                    tags.push(tag);
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tags
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    image(&c, &w, "revive", "v1", b"{\"revive\":1}", &[&revived]).await;
    let mut tags = Vec::new();
    for p in pushers {
        tags.extend(p.await.expect("a push failed during garbage collection"));
    }
    assert!(tags.len() >= 4, "{tags:?}");

    // The deleted image's unique blobs go once the grace period is over; what is shared or reused stays.
    let deadline = Instant::now() + Duration::from_secs(30);
    let gone = [sha(&unique), sha(b"{\"old\":1}"), old.clone()];
    while gone.iter().any(|d| blob_file(root.path(), d).exists()) {
        assert!(Instant::now() < deadline, "not collected; log:\n{}", w.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for d in &gone[..2] {
        assert_eq!(head_blob(&c, &w, "app", d).await, 404, "{d}");
    }
    assert_eq!(head_blob(&c, &w, "app", &sha(&shared)).await, 200);
    assert_eq!(head_blob(&c, &w, "revive", &sha(&revived)).await, 200);

    // Every tagged image pulls completely.
    pull(&c, &w, "app", "v1").await;
    pull(&c, &w, "multi", "latest").await;
    pull(&c, &w, "revive", "v1").await;
    for t in &tags {
        pull(&c, &w, "loop", t).await;
    }

    let metrics = c.get(w.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert!(value("wharf_gc_runs_total") >= 2.0);
    assert!(value("wharf_gc_blobs_deleted_total") >= 3.0);
    assert!(value("wharf_gc_bytes_reclaimed_total") >= unique.len() as f64);
    assert!(w.log_text().contains("gc: "), "{}", w.log_text());

    // A collection from the command line does not delete under a running server.
    let out = wharf_gc(root.path(), &["--grace-period", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"), "{out:?}");
    // A dry run does (nothing is left to collect: it all went inside the server).
    assert_eq!(
        listed(&wharf_gc(root.path(), &["--dry-run", "--grace-period", "0"])),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wharf_gc_dry_run_lists_exactly_what_a_real_run_deletes() {
    let root = tempfile::tempdir().unwrap();
    let c = client();
    let w = Wharf::start(root.path());
    let kept = push_image(&c, &w, "app", "v1", 1, &[1_000, 2_000]).await;
    let dropped = push_image(&c, &w, "app", "v2", 2, &[3_000]).await;
    let untagged = push_image(&c, &w, "app", "v3", 3, &[4_000]).await;
    let r = c
        .delete(w.url(&format!("/v2/app/manifests/{}", dropped.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c.delete(w.url("/v2/app/manifests/v3")).send().await.unwrap();
    assert_eq!(r.status(), 202, "untag v3");
    put_blob(&c, &w, "app", b"never referenced").await;
    drop(w);

    let dry = wharf_gc(root.path(), &["--dry-run", "--grace-period", "0", "--delete-untagged"]);
    let dry_text = String::from_utf8_lossy(&dry.stdout).into_owned();
    let dry_lines = listed(&dry);
    let mut want: Vec<String> = dropped
        .blobs
        .iter()
        .chain(&untagged.blobs)
        .map(|(d, _)| d.clone())
        .chain([
            dropped.digest.clone(),
            untagged.digest.clone(),
            sha(b"never referenced"),
        ])
        .collect();
    want.sort();
    let mut got: Vec<String> = dry_lines
        .iter()
        .filter_map(|l| l.strip_prefix("blob "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    got.sort();
    assert_eq!(got, want, "{dry_text}");
    assert!(dry_lines.contains(&format!("manifest app@{} {}", untagged.digest, untagged.manifest.len())));
    let bytes: usize = dropped
        .blobs
        .iter()
        .chain(&untagged.blobs)
        .map(|(_, b)| b.len())
        .sum::<usize>()
        + dropped.manifest.len()
        + untagged.manifest.len()
        + b"never referenced".len();
    assert!(
        dry_text.ends_with(&format!(
            "{} blobs, 1 manifests, {bytes} bytes reclaimed (dry run)\n",
            want.len()
        )),
        "{dry_text}"
    );
    for d in &want {
        assert!(blob_file(root.path(), d).exists(), "a dry run deletes nothing");
    }

    let real = wharf_gc(root.path(), &["--grace-period", "0", "--delete-untagged"]);
    assert_eq!(listed(&real), dry_lines);
    assert!(
        String::from_utf8_lossy(&real.stdout)
            .ends_with(&format!("{} blobs, 1 manifests, {bytes} bytes reclaimed\n", want.len()))
    );
    for d in &want {
        assert!(!blob_file(root.path(), d).exists(), "{d}");
    }
    let again = wharf_gc(root.path(), &["--grace-period", "0", "--delete-untagged", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(json["blobs"].as_array().unwrap().len(), 0, "{json}");
    assert_eq!(json["bytes_reclaimed"], 0);

    let w = Wharf::start(root.path());
    pull(&c, &w, "app", "v1").await;
    assert_eq!(head_blob(&c, &w, "app", &kept.blobs[1].0).await, 200);
    assert_eq!(head_blob(&c, &w, "app", &dropped.blobs[1].0).await, 404);
}

/// With garbage collection off (the default), an upload session left idle past `upload_ttl_secs` still goes, and
/// one in use stays: abandoned uploads cannot fill the disk.
#[tokio::test]
async fn idle_upload_sessions_expire_with_collections_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wharf.toml");
    std::fs::write(&config, "[gc]\ninterval_secs = 0\nupload_ttl_secs = 2\n").unwrap();
    let w = Wharf::start_with(&dir.path().join("root"), &["--config", config.to_str().unwrap()], None);
    let c = client();
    let start = |c: reqwest::Client| {
        let url = w.url("/v2/team/app/blobs/uploads/");
        async move {
            let r = c.post(url).send().await.unwrap();
            assert_eq!(r.status(), 202);
            r.headers()["location"].to_str().unwrap().to_owned()
        }
    };
    let idle = start(c.clone()).await;
    let status = |location: String| {
        let (c, url) = (c.clone(), w.url(&location));
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(idle.clone()).await != 404 {
        assert!(Instant::now() < deadline, "the idle session was never expired");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A session created now is there.
    let fresh = start(c.clone()).await;
    assert_eq!(status(fresh).await, 204);
}
