//! Mirror-baked base images (`pkgmirror/<preset>/<image>`) with two real `wharf serve` processes: an origin holding
//! an image whose layers carry apk and apt source lists (one deleted by an upper layer's whiteout, one written by the
//! upper layer), and a mirror in front of it.

mod common;

use std::io::Read;

use common::{Wharf, client, upload};
use serde_json::{Value, json};
use wharf_oci::Digest;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

/// A tar of (path, mode, uid, content).
fn tar(entries: &[(&str, u32, u64, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, uid, content) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(*mode);
        h.set_uid(*uid);
        h.set_gid(0);
        h.set_mtime(1);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, content.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

/// Pushes the test image to `repo:tag`; its manifest digest.
async fn push_distro_image(c: &reqwest::Client, w: &Wharf, repo: &str, tag: &str) -> String {
    let lower = tar(&[
        (
            "etc/apk/repositories",
            0o644,
            0,
            "https://dl-cdn.alpinelinux.org/alpine/v3.20/main\nhttps://dl-cdn.alpinelinux.org/alpine/v3.20/community\n",
        ),
        (
            "etc/apt/sources.list",
            0o644,
            0,
            "deb http://deb.debian.org/debian bookworm main\n",
        ),
        ("etc/os-release", 0o644, 0, "ID=test\n"),
    ]);
    let upper = tar(&[
        ("etc/apt/.wh.sources.list", 0o644, 0, ""),
        (
            "etc/apt/sources.list.d/debian.sources",
            0o600,
            7,
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n",
        ),
    ]);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/bin", "PIP_INDEX_URL=https://old.example/simple"]},
        "rootfs": {"type": "layers", "diff_ids": [Digest::sha256_of(&lower).to_string(), Digest::sha256_of(&upper).to_string()]},
        "history": [{"created_by": "lower"}, {"created_by": "upper"}],
    }))
    .unwrap();
    let cd = upload(c, w, repo, &config).await;
    let ld = upload(c, w, repo, &lower).await;
    let ud = upload(c, w, repo, &upper).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": lower.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ud, "size": upper.len()},
        ],
    }))
    .unwrap();
    let r = c
        .put(w.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header("Content-Type", OCI)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    Digest::sha256_of(&manifest).to_string()
}

async fn get(c: &reqwest::Client, w: &Wharf, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = c.get(w.url(path)).header("Accept", OCI).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

/// The files of a gzip'd tar: path → (mode, uid, content).
fn files(gz: &[u8]) -> Vec<(String, u32, u64, String)> {
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut tar_bytes).unwrap();
    let mut a = tar::Archive::new(&tar_bytes[..]);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut s = String::new();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let (mode, uid) = (e.header().mode().unwrap(), e.header().uid().unwrap());
            e.read_to_string(&mut s).unwrap();
            (path, mode, uid, s)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pkgmirror_image_is_the_upstream_plus_its_sources_pointed_at_the_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let origin = Wharf::start(&dir.path().join("origin"));
    let source = push_distro_image(&c, &origin, "library/distro", "1").await;
    let up = format!("http://{}", origin.addr);
    let mirror = Wharf::start_with(
        &dir.path().join("mirror"),
        &["--upstream", &up, "--log", "debug"],
        Some(&dir.path().join("mirror.log")),
    );

    let path = "/v2/pkgmirror/aliyun/library/distro";
    let (status, headers, body) = get(&c, &mirror, &format!("{path}/manifests/1")).await;
    assert_eq!(status, 200, "{}\n{}", String::from_utf8_lossy(&body), mirror.log_text());
    let derived = headers["docker-content-digest"].to_str().unwrap().to_string();
    let m: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        m["annotations"]["org.opencontainers.image.base.digest"],
        source.as_str()
    );
    assert_eq!(m["subject"]["digest"], source.as_str());
    let (_, _, src_body) = get(&c, &origin, "/v2/library/distro/manifests/1").await;
    let src: Value = serde_json::from_slice(&src_body).unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "the source's two layers and one generated");
    assert_eq!(layers[0]["digest"], src["layers"][0]["digest"]);
    assert_eq!(layers[1]["digest"], src["layers"][1]["digest"]);

    // The generated layer: the lists the image really has (the whiteout's victim left out), hosts replaced,
    // owner and mode kept.
    let (status, _, gz) = get(
        &c,
        &mirror,
        &format!("{path}/blobs/{}", layers[2]["digest"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 200);
    let got = files(&gz);
    assert_eq!(
        got,
        [
            (
                "etc/apk/repositories".to_string(),
                0o644,
                0,
                "https://mirrors.aliyun.com/alpine/v3.20/main\nhttps://mirrors.aliyun.com/alpine/v3.20/community\n"
                    .to_string()
            ),
            (
                "etc/apt/sources.list.d/debian.sources".to_string(),
                0o600,
                7,
                "Types: deb\nURIs: http://mirrors.aliyun.com/debian\nSuites: bookworm\n".to_string()
            ),
        ]
    );
    let (_, _, config) = get(
        &c,
        &mirror,
        &format!("{path}/blobs/{}", m["config"]["digest"].as_str().unwrap()),
    )
    .await;
    let config: Value = serde_json::from_slice(&config).unwrap();
    let env: Vec<&str> = config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(env.contains(&"PATH=/bin"), "{env:?}");
    assert!(
        env.contains(&"PIP_INDEX_URL=https://mirrors.aliyun.com/pypi/simple/"),
        "{env:?}"
    );
    assert!(!env.iter().any(|e| e.contains("old.example")), "{env:?}");
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut tar_bytes)
        .unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"][2],
        Digest::sha256_of(&tar_bytes).to_string().as_str()
    );
    assert_eq!(config["history"].as_array().unwrap().len(), 3);

    // The source's layers come through the same name.
    let (status, _, lower) = get(
        &c,
        &mirror,
        &format!("{path}/blobs/{}", layers[0]["digest"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        Digest::sha256_of(&lower).to_string(),
        layers[0]["digest"].as_str().unwrap()
    );

    // Stable: asked again, and computed by another mirror from scratch, the same digest.
    let (_, headers, _) = get(&c, &mirror, &format!("{path}/manifests/1")).await;
    assert_eq!(headers["docker-content-digest"].to_str().unwrap(), derived);
    let other = Wharf::start_with(&dir.path().join("other"), &["--upstream", &up], None);
    let (_, headers, _) = get(&c, &other, &format!("{path}/manifests/1")).await;
    assert_eq!(headers["docker-content-digest"].to_str().unwrap(), derived);

    // A referrer of its source; read-only; presets are the known ones.
    let (status, _, refs) = get(&c, &mirror, &format!("{path}/referrers/{source}")).await;
    assert_eq!(status, 200);
    let refs: Value = serde_json::from_slice(&refs).unwrap();
    assert!(
        refs["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["digest"] == derived.as_str()),
        "{refs}"
    );
    let r = c
        .put(mirror.url(&format!("{path}/manifests/evil")))
        .header("Content-Type", OCI)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(mirror.url(&format!("{path}/blobs/uploads/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (status, _, _) = get(&c, &mirror, "/v2/pkgmirror/nosuch/library/distro/manifests/1").await;
    assert_eq!(status, 404);
}

/// A client that sends these Basic credentials (`user:password` in base64) with every request.
fn as_user(basic: &str) -> reqwest::Client {
    let _ = client();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Basic {basic}").parse().unwrap(),
    );
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

/// Pull access to a mirror-baked image is decided on its source: a user who may pull the source may pull it, one
/// who may not gets 403 whatever the derived name; a rule naming `pkgmirror/...` itself grants nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_to_a_pkgmirror_image_is_access_to_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(
        &users,
        "alice:$2y$05$DPkd05OuxG7MQ/pWDC6RMONuiRyQKBSOi1uSMDzTZPxaCsOkYRR0O\n\
         bob:$2y$05$F7/iHujTuok6c4Xch.01guz/wvmkj4l64nvzUYz/zfWjRxTK3bgyu\n",
    )
    .unwrap();
    let config = dir.path().join("wharf.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nmode = \"htpasswd\"\nhtpasswd = \"{}\"\n\
             [[auth.rules]]\nsubjects = [\"alice\"]\nrepositories = [\"team/*\"]\nactions = [\"pull\", \"push\"]\n\
             [[auth.rules]]\nsubjects = [\"bob\"]\nrepositories = [\"pkgmirror/**\"]\nactions = [\"pull\", \"push\"]\n",
            users.display()
        ),
    )
    .unwrap();
    let reg = Wharf::start_with(&dir.path().join("reg"), &["--config", config.to_str().unwrap()], None);
    let alice = as_user("YWxpY2U6d29uZGVybGFuZA=="); // alice:wonderland
    let bob = as_user("Ym9iOmJ1aWxkZXI="); // bob:builder
    push_distro_image(&alice, &reg, "team/distro", "1").await;
    let path = "/v2/pkgmirror/tuna/team/distro/manifests/1";
    let (status, _, body) = get(&alice, &reg, path).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = get(&bob, &reg, path).await;
    assert_eq!(
        status, 403,
        "bob may not pull team/distro, so not its baked image either"
    );
    let (status, _, _) = get(&client(), &reg, path).await;
    assert_eq!(status, 401);
}
