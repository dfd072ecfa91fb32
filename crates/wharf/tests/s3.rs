//! `wharf serve` on an S3 backend (moto's S3 server on loopback): blobs, chunked uploads (server-side part copies
//! and streamed assembly), manifests, catalog, presigned redirects, and two replicas sharing the bucket and a
//! Redis (`redis-server`): push to one, pull from the other; an upload continued on the other after a kill.

mod common;

use common::services::{RedisServer, S3Server, write_config};
use common::{MIB, Wharf, bytes};
use wharf_oci::Digest;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn start(dir: &std::path::Path, name: &str, config: &str) -> Wharf {
    let path = write_config(dir, &format!("{name}.toml"), config);
    Wharf::start_with(
        &dir.join(name),
        &["--config", &path],
        Some(&dir.join(format!("{name}.log"))),
    )
}

fn location(r: &reqwest::Response) -> String {
    r.headers()["location"].to_str().unwrap().to_owned()
}

fn abs(w: &Wharf, loc: &str) -> String {
    if loc.starts_with("http") {
        loc.to_owned()
    } else {
        w.url(loc)
    }
}

/// Uploads `data` in chunks of the given sizes (POST, PATCHes, closing PUT), returning the digest.
async fn chunked(c: &reqwest::Client, w: &Wharf, repo: &str, data: &[u8], chunks: &[usize]) -> (u16, Digest) {
    let d = Digest::sha256_of(data);
    let r = c
        .post(w.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut loc = location(&r);
    let mut at = 0;
    for len in chunks {
        let r = c
            .patch(abs(w, &loc))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", format!("{at}-{}", at + len - 1))
            .body(data[at..at + len].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "PATCH at {at}");
        loc = location(&r);
        at += len;
    }
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{}{sep}digest={d}", abs(w, &loc)))
        .body(data[at..].to_vec())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), d)
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, Vec<u8>) {
    let r = c
        .get(url)
        .header(
            "Accept",
            format!("{OCI_MANIFEST}, application/vnd.oci.image.index.v1+json"),
        )
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

async fn json(c: &reqwest::Client, url: &str) -> serde_json::Value {
    let body = c.get(url).send().await.unwrap().bytes().await.unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_uploads_manifests_and_catalog_on_s3() {
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("one");
    let tmp = tempfile::tempdir().unwrap();
    let w = start(tmp.path(), "a", &s3.storage_toml("one", ""));
    let c = common::client();

    let img = common::push_image(&c, &w, "team/app", "v1", 7, &[7 * MIB + 3, 1000, 0]).await;
    let (status, body) = get(&c, &w.url("/v2/team/app/manifests/v1")).await;
    assert_eq!((status, body), (200, img.manifest.clone()));
    for (d, data) in &img.blobs {
        let (status, body) = get(&c, &w.url(&format!("/v2/team/app/blobs/{d}"))).await;
        assert_eq!((status, body.len()), (200, data.len()), "{d}");
        assert!(body == *data, "{d} bytes differ");
    }
    let (d, data) = &img.blobs[1];
    let r = c
        .get(w.url(&format!("/v2/team/app/blobs/{d}")))
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().to_vec(), data[100..200].to_vec());

    // Chunks of legal part size: assembled by server-side part copies. Tiny chunks: streamed through.
    let big = bytes(11, 13 * MIB + 5);
    let (status, big_d) = chunked(&c, &w, "team/app", &big, &[6 * MIB, 6 * MIB]).await;
    assert_eq!(status, 201);
    let small = bytes(12, 3000);
    let (status, small_d) = chunked(&c, &w, "team/app", &small, &[1000, 1000, 999]).await;
    assert_eq!(status, 201);
    for (d, data) in [(&big_d, &big), (&small_d, &small)] {
        let (status, body) = get(&c, &w.url(&format!("/v2/team/app/blobs/{d}"))).await;
        assert_eq!(status, 200);
        assert!(body == *data, "{d} assembled wrong");
    }

    // A wrong digest stores nothing under it.
    let claimed = Digest::sha256_of(b"not these bytes");
    let r = c
        .post(w.url(&format!("/v2/team/app/blobs/uploads/?digest={claimed}")))
        .body(b"these bytes".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .head(w.url(&format!("/v2/team/app/blobs/{claimed}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    common::push_image(&c, &w, "other", "latest", 8, &[10]).await;
    let cat = json(&c, &w.url("/v2/_catalog")).await;
    assert_eq!(cat["repositories"], serde_json::json!(["other", "team/app"]));
    let tags = json(&c, &w.url("/v2/team/app/tags/list")).await;
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));

    // Nothing of the finished sessions is left in the bucket.
    let r = reqwest::get(format!("{}/one?list-type=2&prefix=_uploads/", s3.endpoint()))
        .await
        .unwrap();
    let listing = r.text().await.unwrap();
    assert!(!listing.contains("<Key>"), "upload leftovers: {listing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_gets_redirect_to_presigned_urls_when_configured() {
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("redir");
    let tmp = tempfile::tempdir().unwrap();
    let w = start(tmp.path(), "a", &s3.storage_toml("redir", "redirect_secs = 60"));
    let c = common::client();
    let img = common::push_image(&c, &w, "app", "v1", 3, &[2 * MIB]).await;
    let (d, data) = &img.blobs[1];
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_follow
        .get(w.url(&format!("/v2/app/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    let url = location(&r);
    assert!(url.starts_with(&s3.endpoint()), "{url}");
    assert!(url.contains("X-Amz-Signature"), "{url}");
    let body = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert!(body.as_ref() == data.as_slice(), "presigned URL serves other bytes");
    // HEAD still answers with the size, and an unknown blob is still a 404 (no redirect to nothing).
    let r = c.head(w.url(&format!("/v2/app/blobs/{d}"))).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.headers()["content-length"].to_str().unwrap()),
        (200, &*data.len().to_string())
    );
    let unknown = Digest::sha256_of(b"nope");
    let r = no_follow
        .get(w.url(&format!("/v2/app/blobs/{unknown}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_with_redis_act_as_one_registry() {
    let Some(s3) = S3Server::start() else { return };
    let Some(redis) = RedisServer::start() else { return };
    s3.create_bucket("shared");
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[cache]\nkind = \"redis\"\n[redis]\nurl = \"{}\"\n",
        s3.storage_toml("shared", ""),
        redis.url()
    );
    let mut a = start(tmp.path(), "a", &config);
    let b = start(tmp.path(), "b", &config);
    let c = common::client();

    // Push to A, pull from B at once; B caches the tag.
    let v1 = common::push_image(&c, &a, "app", "stable", 1, &[MIB, 10]).await;
    let (status, body) = get(&c, &b.url("/v2/app/manifests/stable")).await;
    assert_eq!((status, body), (200, v1.manifest.clone()));
    for (d, data) in &v1.blobs {
        let (status, body) = get(&c, &b.url(&format!("/v2/app/blobs/{d}"))).await;
        assert!(status == 200 && body == *data, "{d} via B");
    }
    // The tag moves on A: B answers the new manifest at once, not its cached one.
    let v2 = common::push_image(&c, &a, "app", "stable", 2, &[20]).await;
    let (status, body) = get(&c, &b.url("/v2/app/manifests/stable")).await;
    assert_eq!((status, body), (200, v2.manifest.clone()));
    // A delete on A is seen on B.
    let r = c
        .delete(a.url(&format!("/v2/app/manifests/{}", v1.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let (status, _) = get(&c, &b.url(&format!("/v2/app/manifests/{}", v1.digest))).await;
    assert_eq!(status, 404);

    // An upload started on A, A killed mid-upload, finished on B.
    let data = bytes(5, 9 * MIB + 7);
    let d = Digest::sha256_of(&data);
    let r = c.post(a.url("/v2/app/blobs/uploads/")).send().await.unwrap();
    let loc = location(&r);
    let r = c
        .patch(abs(&a, &loc))
        .header("Content-Range", format!("0-{}", 6 * MIB - 1))
        .body(data[..6 * MIB].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let path = loc
        .split("://")
        .last()
        .map(|s| s.find('/').map(|i| &s[i..]).unwrap_or(s))
        .unwrap()
        .to_owned();
    let path = if loc.starts_with('/') { loc.clone() } else { path };
    let r = c.get(b.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"].to_str().unwrap(), format!("0-{}", 6 * MIB - 1));
    let r = c
        .patch(b.url(&path))
        .header("Content-Range", format!("{}-{}", 6 * MIB, data.len() - 1))
        .body(data[6 * MIB..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = location(&r);
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c.put(format!("{}{sep}digest={d}", abs(&b, &loc))).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let (status, body) = get(&c, &b.url(&format!("/v2/app/blobs/{d}"))).await;
    assert!(status == 200 && body == data, "blob finished on B");

    // Redis lost: reads still answer correctly (from the bucket), only slower.
    let port = redis.kill();
    let (status, body) = get(&c, &b.url("/v2/app/manifests/stable")).await;
    assert_eq!((status, body), (200, v2.manifest.clone()));
    // Back, empty: still right.
    let _redis = RedisServer::start_on(port);
    let (status, body) = get(&c, &b.url("/v2/app/manifests/stable")).await;
    assert_eq!((status, body), (200, v2.manifest));
}

/// Pushes an image to `repo:tag` the way docker does when a blob is in another repository: mounts `shared` from
/// `from`, uploads a new layer and a config, then PUTs the manifest. Returns the manifest's status and bytes.
async fn push_mounting(
    c: &reqwest::Client,
    w: &Wharf,
    repo: &str,
    tag: &str,
    seed: u64,
    shared: Option<(&Digest, usize)>,
    from: &str,
) -> (u16, Vec<u8>, Vec<(Digest, Vec<u8>)>) {
    if let Some((d, _)) = shared {
        // 201 mounted; 202 when the blob is gone (an upload session the client would then use).
        let r = c
            .post(w.url(&format!("/v2/{repo}/blobs/uploads/?mount={d}&from={from}")))
            .send()
            .await
            .unwrap();
        assert!(matches!(r.status().as_u16(), 201 | 202), "mount {}", r.status());
    }
    let layer = bytes(seed, 2048);
    let config = format!("{{\"os\":\"linux\",\"seed\":{seed}}}").into_bytes();
    let mut blobs = Vec::new();
    for data in [layer, config] {
        let d = Digest::sha256_of(&data);
        let r = c
            .post(w.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        blobs.push((d, data));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blobs[1].0, "size": blobs[1].1.len()},
        "layers": shared
            .map(|(d, size)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size}))
            .into_iter()
            .chain([serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blobs[0].0, "size": blobs[0].1.len()})])
            .collect::<Vec<_>>(),
    }))
    .unwrap();
    let r = c
        .put(w.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), manifest, blobs)
}

/// Every blob `manifest` names, and the manifest itself by tag, answer with the right bytes through `w`.
async fn pulls_completely(
    c: &reqwest::Client,
    w: &Wharf,
    repo: &str,
    tag: &str,
    manifest: &[u8],
) -> Result<(), String> {
    let (status, body) = get(c, &w.url(&format!("/v2/{repo}/manifests/{tag}"))).await;
    if status != 200 || body != manifest {
        return Err(format!("{repo}:{tag}: manifest {status}"));
    }
    let v: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    let mut digests: Vec<String> = v["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    if let Some(cfg) = v["config"]["digest"].as_str() {
        digests.push(cfg.to_owned());
    }
    for d in digests {
        let (status, body) = get(c, &w.url(&format!("/v2/{repo}/blobs/{d}"))).await;
        if status != 200 || Digest::sha256_of(&body).to_string() != d {
            return Err(format!("{repo}:{tag}: blob {d} {status}"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_on_s3_while_replicas_push_keeps_every_tagged_image_and_drops_orphans() {
    let Some(s3) = S3Server::start() else { return };
    let Some(redis) = RedisServer::start() else { return };
    s3.create_bucket("gcbucket");
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[cache]\nkind = \"redis\"\n[redis]\nurl = \"{}\"\n",
        s3.storage_toml("gcbucket", ""),
        redis.url()
    );
    let config_path = write_config(tmp.path(), "gc.toml", &config);
    let a = start(tmp.path(), "a", &config);
    let b = start(tmp.path(), "b", &config);
    let c = common::client();

    // Tagged content: an image, and a multi-arch index whose children are only reachable through it.
    let app = common::push_image(&c, &a, "app", "v1", 1, &[3000, 10]).await;
    let amd = common::push_image(&c, &a, "multi", "amd64-tmp", 2, &[500]).await;
    let arm = common::push_image(&c, &a, "multi", "arm64-tmp", 3, &[600]).await;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd.digest, "size": amd.manifest.len(), "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": arm.digest, "size": arm.manifest.len(), "platform": {"os": "linux", "architecture": "arm64"}},
        ],
    }))
    .unwrap();
    let r = c
        .put(a.url("/v2/multi/manifests/latest"))
        .header("Content-Type", "application/vnd.oci.image.index.v1+json")
        .body(index.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Untag the children: only the index names them now.
    for tag in ["amd64-tmp", "arm64-tmp"] {
        assert_eq!(
            c.delete(a.url(&format!("/v2/multi/manifests/{tag}")))
                .send()
                .await
                .unwrap()
                .status(),
            202
        );
    }
    // Orphans, and an old unreferenced blob that concurrent pushes will mount and name.
    let mut orphans = Vec::new();
    for seed in 10..13 {
        let data = bytes(seed, 4000);
        let d = Digest::sha256_of(&data);
        let r = c
            .post(a.url(&format!("/v2/app/blobs/uploads/?digest={d}")))
            .body(data)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        orphans.push(d);
    }
    let shared_data = bytes(99, 5000);
    let shared = Digest::sha256_of(&shared_data);
    let r = c
        .post(a.url(&format!("/v2/app/blobs/uploads/?digest={shared}")))
        .body(shared_data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // A 2 s grace period: everything above is older than that (plus the collector's 2 s clock margin and the
    // bucket's whole-second timestamps) after 6 s; the concurrent pushes' own blobs are younger.
    std::thread::sleep(std::time::Duration::from_millis(6000));

    // Pushes on both replicas while two collections run back to back from the command line.
    let pushes = {
        let c = c.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut accepted = Vec::new();
            for i in 0..12u64 {
                let w = if i % 2 == 0 { &a } else { &b };
                // Every third push also names the old blob, by mounting it: a collection either spares it (the mount
                // reused it during the run) or took it before, and then that manifest is refused, never half-kept.
                let old = (i % 3 == 0).then_some((&shared, 5000));
                let (status, manifest, _) = push_mounting(&c, w, "busy", &format!("t{i}"), 1000 + i, old, "app").await;
                assert!(status == 201 || status == 400, "manifest PUT {status}");
                if status == 201 {
                    accepted.push((format!("t{i}"), manifest));
                }
            }
            (accepted, a, b)
        })
    };
    let gc = tokio::task::spawn_blocking(move || {
        let mut reports = Vec::new();
        for _ in 0..2 {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
                .args(["gc", "--config", &config_path, "--grace-period", "2", "--json"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "wharf gc: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            reports.push(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap());
        }
        reports
    });
    let (accepted, a, b) = pushes.await.unwrap();
    let reports = gc.await.unwrap();
    assert!(!accepted.is_empty(), "no push got through");
    // The second collection ran: the first one's run mark was released when its process ended.
    for r in &reports {
        assert_eq!(
            r["interrupted"], false,
            "a collection found another one under way: {reports:?}"
        );
    }
    let spared: u64 = reports.iter().map(|r| r["spared"].as_u64().unwrap_or(0)).sum();
    eprintln!(
        "{} of 12 pushes accepted during the collections; {spared} candidates spared as reused",
        accepted.len()
    );

    // Every tagged image pulls completely, from either replica.
    let mut broken = Vec::new();
    for w in [&a, &b] {
        for (repo, tag, m) in [("app", "v1", &app.manifest), ("multi", "latest", &index)] {
            if let Err(e) = pulls_completely(&c, w, repo, tag, m).await {
                broken.push(e);
            }
        }
        for img in [&amd, &arm] {
            if let Err(e) = pulls_completely(&c, w, "multi", &img.digest, &img.manifest).await {
                broken.push(e);
            }
        }
        for (tag, m) in &accepted {
            if let Err(e) = pulls_completely(&c, w, "busy", tag, m).await {
                broken.push(e);
            }
        }
    }
    assert!(broken.is_empty(), "broken after GC: {broken:?}");
    // The orphans are gone, and the reports say so.
    for d in &orphans {
        let r = c.head(b.url(&format!("/v2/app/blobs/{d}"))).send().await.unwrap();
        assert_eq!(r.status(), 404, "orphan {d} survived");
    }
    let deleted: Vec<String> = reports
        .iter()
        .flat_map(|r| r["blobs"].as_array().cloned().unwrap_or_default())
        .map(|b| b["digest"].as_str().unwrap().to_owned())
        .collect();
    for d in &orphans {
        assert!(deleted.contains(&d.to_string()), "{d} not in the reports: {reports:?}");
    }
}
