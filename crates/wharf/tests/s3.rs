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
    let r = c.get(url).header("Accept", OCI_MANIFEST).send().await.unwrap();
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
