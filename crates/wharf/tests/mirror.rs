//! The pull-through mirror with two real `wharf serve` processes: an origin holding images and a mirror in front
//! of it. The origin's own request log (debug level) is the witness for how often the mirror went upstream.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{Image, MIB, Wharf, client, push_image};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wharf_oci::Digest;

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

fn origin(dir: &std::path::Path) -> Wharf {
    Wharf::start_with(
        &dir.join("origin"),
        &["--log", "wharf_registry=debug"],
        Some(&dir.join("origin.log")),
    )
}

fn mirror(dir: &std::path::Path, args: &[&str]) -> Wharf {
    Wharf::start_with(&dir.join("mirror"), args, Some(&dir.join("mirror.log")))
}

/// A mirror whose default upstream is `origin`, with `toml` as its config file.
fn mirror_of_origin_with_config(dir: &std::path::Path, origin: &Wharf, toml: &str) -> Wharf {
    let cfg = dir.join("m.toml");
    std::fs::write(&cfg, toml).unwrap();
    let up = format!("http://{}", origin.addr);
    mirror(dir, &["--config", cfg.to_str().unwrap(), "--upstream", &up])
}

/// Requests the origin served for `path` with `method`, from its log.
fn origin_hits(origin: &Wharf, method: &str, path: &str) -> usize {
    let needle = format!("method={method} path={path} ");
    origin.log_text().lines().filter(|l| l.contains(&needle)).count()
}

/// Pulls `image` through `registry` as `repo:tag` (with an optional query string), checking every digest.
async fn pull(c: &reqwest::Client, registry: &Wharf, repo: &str, tag: &str, query: &str, image: &Image) {
    let r = c
        .get(registry.url(&format!("/v2/{repo}/manifests/{tag}{query}")))
        .header("Accept", ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "manifest {repo}:{tag}{query}: {:?}", r.text().await);
    assert_eq!(r.headers()["docker-content-digest"], image.digest.as_str());
    assert_eq!(r.bytes().await.unwrap().as_ref(), &image.manifest[..]);
    for (d, data) in &image.blobs {
        let r = c
            .get(registry.url(&format!("/v2/{repo}/blobs/{d}{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "blob {d}");
        let got = r.bytes().await.unwrap();
        assert_eq!(Digest::sha256_of(&got).to_string(), *d);
        assert_eq!(got.len(), data.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_default_ns_prefix_and_docker_hub_library() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let o = origin(dir.path());
    let img = push_image(&c, &o, "library/app", "v1", 1, &[1000, 2000]).await;
    let up = format!("http://{}", o.addr);
    let m = mirror(
        dir.path(),
        &[
            "--upstream",
            &up,
            "--upstream",
            &format!("docker.io={up}"),
            "--upstream",
            &format!("second={up}"),
        ],
    );
    // Docker's registry-mirrors: no ns, default upstream.
    pull(&c, &m, "library/app", "v1", "", &img).await;
    // containerd: ?ns= picks the upstream, by name or by its host.
    pull(&c, &m, "library/app", "v1", "?ns=second", &img).await;
    pull(&c, &m, "library/app", "v1", "?ns=index.docker.io", &img).await;
    // By prefixed name, with Docker Hub's library/ rule for one-component names.
    pull(&c, &m, "docker.io/app", "v1", "", &img).await;
    pull(&c, &m, "second/library/app", "v1", "", &img).await;
    // Bytes are fetched once however many mirrored names lead to them.
    for (d, _) in &img.blobs {
        assert_eq!(origin_hits(&o, "GET", &format!("/v2/library/app/blobs/{d}")), 1, "{d}");
    }
    // A name that exists nowhere: the upstream's 404 comes through.
    let r = c.get(m.url("/v2/library/nope/manifests/v1")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // The catalog lists what the mirror holds.
    let cat: serde_json::Value = serde_json::from_slice(
        &c.get(m.url("/v2/_catalog"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(
        cat["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "docker.io/library/app"),
        "{cat}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_cold_pulls_fetch_each_blob_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let o = origin(dir.path());
    let img = Arc::new(push_image(&c, &o, "library/busy", "v1", 2, &[8 * MIB, 3 * MIB, 100_000]).await);
    let m = Arc::new(mirror(dir.path(), &["--upstream", &format!("http://{}", o.addr)]));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (c, m, img) = (client(), m.clone(), img.clone());
        tasks.push(tokio::spawn(async move {
            pull(&c, &m, "library/busy", "v1", "", &img).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for (d, _) in &img.blobs {
        assert_eq!(
            origin_hits(&o, "GET", &format!("/v2/library/busy/blobs/{d}")),
            1,
            "one upstream GET for {d}"
        );
    }
    assert_eq!(
        origin_hits(&o, "GET", &format!("/v2/library/busy/manifests/{}", img.digest)),
        1
    );
    let metrics = c.get(m.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("wharf_mirror_coalesced_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_serves_cached_and_fails_uncached_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let mut o = origin(dir.path());
    let img = push_image(&c, &o, "library/app", "v1", 3, &[5000]).await;
    push_image(&c, &o, "library/app", "v2", 4, &[6000]).await;
    // TTL 0: every tag request revalidates, so the outage is hit.
    let m = mirror_of_origin_with_config(dir.path(), &o, "[mirror]\ntag_ttl_secs = 0\ntimeout_secs = 2\n");
    pull(&c, &m, "library/app", "v1", "", &img).await;

    o.child.kill().unwrap();
    o.child.wait().unwrap();

    pull(&c, &m, "library/app", "v1", "", &img).await;
    let r = c
        .get(m.url(&format!("/v2/library/app/manifests/{}", img.digest)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "by digest from cache");
    let r = c.get(m.url("/v2/library/app/manifests/v2")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let msg = body["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains("cannot connect"), "{msg}");
    let metrics = c.get(m.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wharf_mirror_stale_serves_total ")),
        "{metrics}"
    );
    assert!(m.log_text().contains("serving the last known manifest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_revalidated_and_pushes_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let o = origin(dir.path());
    let first = push_image(&c, &o, "library/app", "v1", 5, &[100]).await;
    let m = mirror_of_origin_with_config(dir.path(), &o, "[mirror]\ntag_ttl_secs = 0\n");
    pull(&c, &m, "library/app", "v1", "", &first).await;
    let moved = push_image(&c, &o, "library/app", "v1", 6, &[200]).await;
    pull(&c, &m, "library/app", "v1", "", &moved).await;
    // Revalidation is a HEAD; the unchanged tag is not downloaded again.
    pull(&c, &m, "library/app", "v1", "", &moved).await;
    assert_eq!(
        origin_hits(&o, "GET", &format!("/v2/library/app/manifests/{}", moved.digest)),
        1
    );

    let host = o.addr.replace(':', "-");
    let r = c
        .post(m.url(&format!("/v2/{host}/library/app/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("DENIED") && body.contains("read-only mirror"), "{body}");
    // Local pushes to other names still work on the same server.
    push_image(&c, &m, "team/app", "v1", 7, &[10]).await;
    let r = c
        .get(m.url("/v2/team/app/manifests/v1"))
        .header("Accept", ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A TCP relay to the origin that cuts the connection once, after `cut_after` response bytes have passed, and
/// paces responses to `bytes_per_sec` when given (to keep a fetch in flight long enough to join it).
async fn flaky_relay(target: String, cut_after: u64) -> (String, Arc<AtomicBool>) {
    relay(target, cut_after, None).await
}

async fn relay(target: String, cut_after: u64, bytes_per_sec: Option<u64>) -> (String, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let passed = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    let cut2 = cut.clone();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let Ok(mut up) = tokio::net::TcpStream::connect(&target).await else {
                continue;
            };
            let (passed, cut) = (passed.clone(), cut2.clone());
            tokio::spawn(async move {
                let (mut ur, mut uw) = up.split();
                let (mut dr, mut dw) = down.split();
                let to_upstream = tokio::io::copy(&mut dr, &mut uw);
                let to_client = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match ur.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let before = passed.fetch_add(n as u64, Ordering::SeqCst);
                        if !cut.load(Ordering::SeqCst) && before + n as u64 > cut_after {
                            cut.store(true, Ordering::SeqCst);
                            let keep = (cut_after.saturating_sub(before)) as usize;
                            let _ = dw.write_all(&buf[..keep]).await;
                            break; // drop both halves: the connection dies mid-body
                        }
                        if dw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        if let Some(rate) = bytes_per_sec {
                            tokio::time::sleep(std::time::Duration::from_micros(n as u64 * 1_000_000 / rate)).await;
                        }
                    }
                };
                tokio::select! {
                    _ = to_upstream => {}
                    _ = to_client => {}
                }
            });
        }
    });
    (addr, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cut_mid_blob_is_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let o = origin(dir.path());
    let img = push_image(&c, &o, "library/big", "v1", 8, &[6 * MIB]).await;
    let (relay, cut) = flaky_relay(o.addr.clone(), 2 * MIB as u64).await;
    let m = mirror(dir.path(), &["--upstream", &format!("http://{relay}")]);
    pull(&c, &m, "library/big", "v1", "", &img).await;
    assert!(cut.load(Ordering::SeqCst), "the relay must have cut a connection");
    let layer = &img.blobs[1].0;
    let ranged = o
        .log_text()
        .lines()
        .filter(|l| l.contains(&format!("method=GET path=/v2/library/big/blobs/{layer} status=206")))
        .count();
    assert_eq!(ranged, 1, "resumed with one Range request");
    let metrics = c.get(m.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("wharf_mirror_resumes_total 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_blob_serves_ranges_and_survives_a_client_leaving() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let o = origin(dir.path());
    let img = push_image(&c, &o, "library/slow", "v1", 9, &[4 * MIB]).await;
    let (d, data) = img.blobs[1].clone();
    // 8 MiB/s: the 4 MiB layer takes about half a second to arrive.
    let (relay_addr, _) = relay(o.addr.clone(), u64::MAX, Some(8 * MIB as u64)).await;
    let m = Arc::new(mirror(dir.path(), &["--upstream", &format!("http://{relay_addr}")]));
    let url = m.url(&format!("/v2/library/slow/blobs/{d}"));

    // A client that reads the first bytes and goes away.
    let mut leaver = c.get(&url).send().await.unwrap();
    assert_eq!(leaver.status(), 200);
    let first = leaver.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], &data[..first.len()]);
    drop(leaver);

    // While the fetch runs: a Range near the end waits for its bytes; a full GET streams everything.
    let (c2, url2) = (client(), url.clone());
    let ranged = tokio::spawn(async move {
        let r = c2
            .get(&url2)
            .header("Range", "bytes=4000000-4000999")
            .send()
            .await
            .unwrap();
        (r.status(), r.bytes().await.unwrap())
    });
    let full = c.get(&url).send().await.unwrap().bytes().await.unwrap();
    let (status, part) = ranged.await.unwrap();
    assert_eq!(status, 206);
    assert_eq!(&part[..], &data[4_000_000..4_001_000]);
    assert!(full == data, "full body differs");
    assert_eq!(origin_hits(&o, "GET", &format!("/v2/library/slow/blobs/{d}")), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_size_limit_evicts_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let o = origin(dir.path());
    let a = push_image(&c, &o, "library/a", "v1", 10, &[3 * MIB]).await;
    let b = push_image(&c, &o, "library/b", "v1", 11, &[3 * MIB]).await;
    let m = mirror_of_origin_with_config(dir.path(), &o, &format!("[mirror]\nmax_cache_bytes = {}\n", 5 * MIB));
    pull(&c, &m, "library/a", "v1", "", &a).await;
    pull(&c, &m, "library/b", "v1", "", &b).await;
    // a's layer was least recently used and the cache holds 5 MiB: it is gone from disk, b's is there.
    let blob_path = |d: &str| {
        let hex = d.trim_start_matches("sha256:");
        dir.path()
            .join("mirror/mirror/cache/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
    };
    assert!(!blob_path(&a.blobs[1].0).exists(), "a's layer should have been evicted");
    assert!(blob_path(&b.blobs[1].0).exists());
    // Pulling a again fetches it again and still works.
    pull(&c, &m, "library/a", "v1", "", &a).await;
    assert_eq!(
        origin_hits(&o, "GET", &format!("/v2/library/a/blobs/{}", a.blobs[1].0)),
        2
    );
    let metrics = c.get(m.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("wharf_mirror_evictions_total"), "{metrics}");
}

/// Regression: a request that joined a fetch of a small blob just as it finished got 404 (the spool had been
/// renamed into the cache but the repository link was not written yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_blobs_pulled_cold_in_parallel_never_404() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let o = origin(dir.path());
    let m = Arc::new(mirror(dir.path(), &["--upstream", &format!("http://{}", o.addr)]));
    for round in 0..15u64 {
        let repo = format!("library/tiny{round}");
        let img = Arc::new(push_image(&c, &o, &repo, "v1", 100 + round, &[90, 300, 1000, 4000]).await);
        let mut tasks = Vec::new();
        for _ in 0..4 {
            for (d, data) in img.blobs.clone() {
                let (c, m, repo) = (client(), m.clone(), repo.clone());
                tasks.push(tokio::spawn(async move {
                    let r = c.get(m.url(&format!("/v2/{repo}/blobs/{d}"))).send().await.unwrap();
                    assert_eq!(r.status(), 200, "round {round} blob {d}");
                    assert!(r.bytes().await.unwrap() == data);
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
}

/// Bytes cached for one mirrored repository reach another mirrored name only if that repository's upstream says it
/// has the blob: a name one may pull is no pass to what another repository pulled, nor (by a mount) a way to copy it
/// into a local repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_cached_for_one_repository_reaches_another_only_if_its_upstream_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let o = origin(dir.path());
    let img = push_image(&c, &o, "library/app", "v1", 21, &[3000]).await;
    push_image(&c, &o, "other/thing", "v1", 22, &[4000]).await;
    // Same seed, same blobs: this repository has them too.
    push_image(&c, &o, "shared/app", "v1", 21, &[3000]).await;
    let up = format!("http://{}", o.addr);
    let m = mirror(dir.path(), &["--upstream", &format!("hub={up}")]);
    pull(&c, &m, "hub/library/app", "v1", "", &img).await;
    let (layer, _) = img.blobs.iter().find(|(_, b)| b.len() == 3000).unwrap();

    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        for path in [
            format!("/v2/hub/other/thing/blobs/{layer}"),
            format!("/v2/other/thing/blobs/{layer}?ns=hub"),
        ] {
            let r = c.request(method.clone(), m.url(&path)).send().await.unwrap();
            assert_eq!(r.status(), 404, "{method} {path}");
        }
    }
    // Nor mounted from there into a local repository: a plain upload starts instead.
    let r = c
        .post(m.url(&format!("/v2/mine/z/blobs/uploads/?mount={layer}&from=hub/other/thing")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .head(m.url(&format!("/v2/mine/z/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A repository that has it upstream gets the cached bytes after a HEAD, without a second download.
    let r = c
        .get(m.url(&format!("/v2/hub/shared/app/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(Digest::sha256_of(&r.bytes().await.unwrap()).to_string(), *layer);
    assert_eq!(origin_hits(&o, "HEAD", &format!("/v2/shared/app/blobs/{layer}")), 1);
    assert_eq!(origin_hits(&o, "GET", &format!("/v2/shared/app/blobs/{layer}")), 0);
    assert_eq!(origin_hits(&o, "GET", &format!("/v2/library/app/blobs/{layer}")), 1);
}
