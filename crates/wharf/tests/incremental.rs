//! Incremental pushes of `docker save` archives (uncompressed layers): a layer the registry already holds, compressed,
//! is never compressed or sent again, whether this machine pushed it (the content store's layer record) or another
//! one did (the registry's layer index), and a registry without the index still gets the local record's help.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Wharf, bytes};
use wharf_oci::Digest;

/// A layer: a tar of one file of `len` seeded bytes.
fn layer(seed: u64, len: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let data = bytes(seed, len);
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, format!("file-{seed}"), &data[..]).unwrap();
    b.into_inner().unwrap()
}

/// Writes a `docker save` archive (legacy layout, as Docker 20.10 writes it) of an image made of `layers`; returns
/// the config's digest (the image ID).
fn save(path: &Path, tag: &str, layers: &[Vec<u8>]) -> String {
    save_built(path, tag, layers, None)
}

/// [`save`] with the config's `history`: one entry per layer, its `created_by` (as a builder records the step).
fn save_built(path: &Path, tag: &str, layers: &[Vec<u8>], steps: Option<&[&str]>) -> String {
    let diff_ids: Vec<String> = layers.iter().map(|l| Digest::sha256_of(l).to_string()).collect();
    let mut config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if let Some(steps) = steps {
        config["history"] = steps
            .iter()
            .map(|s| serde_json::json!({"created": "2026-12-01T00:00:00Z", "created_by": s}))
            .collect();
    }
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = Digest::sha256_of(&config);
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut put = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    let mut paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let p = format!("{i:064x}/layer.tar");
        put(&p, l);
        paths.push(p);
    }
    let config_name = format!("{}.json", config_digest.hex());
    put(&config_name, &config);
    let manifest = serde_json::json!([{"Config": config_name, "RepoTags": [tag], "Layers": paths}]);
    put("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    b.into_inner().unwrap();
    config_digest.to_string()
}

/// `wharf push` with its own content store (one "machine"); returns the JSON report.
fn push(store: &Path, archive: &Path, dest: &str) -> serde_json::Value {
    copy(store, &format!("docker-archive:{}", archive.display()), dest)
}

/// `wharf copy SRC DEST` with its own content store; returns the JSON report.
fn copy(store: &Path, src: &str, dest: &str) -> serde_json::Value {
    copy_with(store, src, dest, &[])
}

/// [`copy`] with more arguments (credentials).
fn copy_with(store: &Path, src: &str, dest: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["copy", src, dest, "--json"])
        .args(args)
        .env("WHARF_STORE", store)
        .env("DOCKER_CONFIG", store.join("docker"))
        .output()
        .expect("run wharf");
    assert!(
        out.status.success(),
        "push to {dest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// The outcome of each layer, in the report's order.
fn outcomes(report: &serde_json::Value) -> Vec<String> {
    report["layers"]
        .as_array()
        .map(|a| a.iter().map(|l| l["outcome"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// htpasswd users and rules: alice pulls, pushes and deletes team/*, bob pulls and pushes bob/* only
/// (`htpasswd -nbB alice wonderland`, `htpasswd -nbB bob builder`). Returns the config file.
fn alice_and_bob(dir: &Path) -> PathBuf {
    let users = dir.join("users");
    std::fs::write(
        &users,
        "alice:$2y$05$DPkd05OuxG7MQ/pWDC6RMONuiRyQKBSOi1uSMDzTZPxaCsOkYRR0O\n\
         bob:$2y$05$F7/iHujTuok6c4Xch.01guz/wvmkj4l64nvzUYz/zfWjRxTK3bgyu\n",
    )
    .unwrap();
    let config = dir.join("wharf.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nmode = \"htpasswd\"\nhtpasswd = \"{}\"\n[[auth.rules]]\nsubjects = [\"alice\"]\nrepositories = [\"team/*\"]\nactions = [\"pull\", \"push\", \"delete\"]\n[[auth.rules]]\nsubjects = [\"bob\"]\nrepositories = [\"bob/*\"]\nactions = [\"pull\", \"push\"]\n",
            users.display()
        ),
    )
    .unwrap();
    config
}

fn password(user: &str) -> String {
    if user == "alice" { "wonderland" } else { "builder" }.to_owned()
}

/// Pushes `archive` to `dest` of a server over `root` that dies (debug builds' `WHARF_FAULT`) right after writing the
/// layer index, before the manifest; the push fails.
fn crashed_push(root: &Path, archive: &Path, repo: &str, store: &Path) {
    let crashing = Wharf::start_env(root, &[], &[("WHARF_FAULT", "after-layer-index")], None);
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["copy", &format!("docker-archive:{}", archive.display())])
        .arg(format!("docker://{}/{repo}", crashing.addr))
        .env("WHARF_STORE", store)
        .env("DOCKER_CONFIG", store.join("docker"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the push must fail: the server died");
}

struct Images {
    _dir: tempfile::TempDir,
    v1: PathBuf,
    v2: PathBuf,
    base: usize,
}

/// v1: three 1 MiB base layers; v2: the same plus one new 64 KiB layer.
fn images() -> Images {
    let dir = tempfile::tempdir().unwrap();
    let base: Vec<Vec<u8>> = (0..3).map(|i| layer(100 + i, 1 << 20)).collect();
    let mut top = base.clone();
    top.push(layer(200, 64 << 10));
    let (v1, v2) = (dir.path().join("v1.tar"), dir.path().join("v2.tar"));
    save(&v1, "app:v1", &base);
    save(&v2, "app:v2", &top);
    Images {
        _dir: dir,
        v1,
        v2,
        base: base.len(),
    }
}

#[test]
fn a_fresh_machine_mounts_the_layers_another_pushed_and_the_same_machine_skips_them() {
    let img = images();
    let tmp = tempfile::tempdir().unwrap();
    let reg = Wharf::start(&tmp.path().join("reg"));
    let (machine_a, machine_b) = (tmp.path().join("a"), tmp.path().join("b"));

    let first = push(&machine_a, &img.v1, &format!("docker://{}/team/app:v1", reg.addr));
    indexed_blocking(&reg.addr, &first);
    assert_eq!(outcomes(&first), vec!["compressed"; img.base], "{first}");

    // Machine B never pushed anything: the registry's layer index names the compressed blobs and a repository
    // to mount them from; only the new layer is compressed and sent.
    let fresh = push(&machine_b, &img.v2, &format!("docker://{}/other/app:v2", reg.addr));
    let mut expected = vec!["mounted"; img.base];
    expected.push("compressed");
    assert_eq!(outcomes(&fresh), expected, "{fresh}");
    assert!(
        fresh["bytes_moved"].as_u64().unwrap() < 200 << 10,
        "a fresh machine sent {} bytes for a 64 KiB layer: {fresh}",
        fresh["bytes_moved"]
    );

    // Machine A again, v2 into the repository it pushed v1 to: its own record says the registry has the base
    // layers; the new one machine B pushed to other/app, which the index says: mounted, not compressed.
    let again = push(&machine_a, &img.v2, &format!("docker://{}/team/app:v2", reg.addr));
    let mut expected = vec!["skipped"; img.base];
    expected.push("mounted");
    assert_eq!(outcomes(&again), expected, "{again}");

    // Both machines name the same compressed blobs: the same manifest, the same image ID.
    assert_eq!(fresh["digest"], again["digest"], "{fresh} {again}");
    let layers_of = |r: &serde_json::Value| -> Vec<String> {
        r["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(layers_of(&first)[..], layers_of(&fresh)[..img.base]);
}

#[tokio::test]
async fn the_index_reveals_nothing_the_caller_may_not_pull_and_forgets_a_deleted_blob() {
    let img = images();
    let tmp = tempfile::tempdir().unwrap();
    let config = alice_and_bob(tmp.path());
    let reg = Wharf::start_with(
        &tmp.path().join("reg"),
        &["--config", config.to_str().unwrap()],
        Some(&tmp.path().join("reg.log")),
    );
    let push_as = |user: &str, store: &Path, archive: &Path, dest: String| {
        let creds = format!("{user}:{}", password(user));
        copy_with(
            store,
            &format!("docker-archive:{}", archive.display()),
            &dest,
            &["--dest-creds", &creds],
        )
    };
    let first = push_as(
        "alice",
        &tmp.path().join("a"),
        &img.v1,
        format!("docker://{}/team/app:v1", reg.addr),
    );
    let diff_id = first["layers"][0]["diff_id"].as_str().unwrap().to_owned();
    let blob = first["layers"][0]["digest"].as_str().unwrap().to_owned();
    indexed(&reg.addr, &first, Some("alice")).await;

    // Bob cannot pull team/*: the index does not tell him the layer exists, and his push compresses everything.
    let bobs = push_as(
        "bob",
        &tmp.path().join("b"),
        &img.v2,
        format!("docker://{}/bob/app:v2", reg.addr),
    );
    assert_eq!(outcomes(&bobs), vec!["compressed"; img.base + 1], "{bobs}");
    indexed(&reg.addr, &bobs, Some("bob")).await;
    let c = common::client();
    let index = |user: Option<&str>| {
        let mut r = c.get(reg.url(&format!("/wharf/v1/layers/{diff_id}")));
        if let Some(u) = user {
            r = r.basic_auth(u, Some(password(u)));
        }
        r.send()
    };
    let json = |r: reqwest::Response| async move {
        serde_json::from_slice::<serde_json::Value>(&r.bytes().await.unwrap()).unwrap()
    };
    assert_eq!(index(None).await.unwrap().status(), 401);
    // (Now bob's own push holds the layer too, in bob/app: that, and only that, he sees.)
    let seen = json(index(Some("bob")).await.unwrap()).await;
    let repos: Vec<&str> = seen["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["repository"].as_str().unwrap())
        .collect();
    assert!(repos.iter().all(|r| *r == "bob/app"), "{seen}");
    let alices = json(index(Some("alice")).await.unwrap()).await;
    assert!(
        alices["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["digest"] == blob.as_str() && b["repository"] == "team/app"),
        "{alices}"
    );

    // The blob deleted from team/app: the index stops naming it there at once.
    let r = c
        .delete(reg.url(&format!("/v2/team/app/blobs/{blob}")))
        .basic_auth("alice", Some("wonderland"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = index(Some("alice")).await.unwrap();
    assert_eq!(r.status(), 404, "{:?}", r.text().await);
}

/// `GET /wharf/v1/layers/<diff_id>`: the status, and the body as JSON (null when it is not JSON).
async fn lookup(reg: &Wharf, diff_id: &str) -> (u16, serde_json::Value) {
    let r = common::client()
        .get(reg.url(&format!("/wharf/v1/layers/{diff_id}")))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or_default(),
    )
}

/// Waits (at most 10 s) until the registry's layer index answers every layer of a push `report` with the blob the
/// push used: the registry checks each new claim in the background (it decompresses the blob) before answering it.
async fn indexed(addr: &str, report: &serde_json::Value, user: Option<&str>) {
    let c = common::client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for l in report["layers"].as_array().unwrap() {
        let diff_id = l["diff_id"].as_str().unwrap();
        loop {
            let mut r = c.get(format!("http://{addr}/wharf/v1/layers/{diff_id}"));
            if let Some(u) = user {
                r = r.basic_auth(u, Some(password(u)));
            }
            let v: serde_json::Value =
                serde_json::from_slice(&r.send().await.unwrap().bytes().await.unwrap()).unwrap_or_default();
            let blobs = v["blobs"].as_array().cloned().unwrap_or_default();
            if blobs.iter().any(|b| b["digest"] == l["digest"]) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the index never answered {diff_id}: {v}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// [`indexed`] for a test that is not async.
fn indexed_blocking(addr: &str, report: &serde_json::Value) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(indexed(addr, report, None));
}

fn stop(mut reg: Wharf) {
    reg.child.kill().unwrap();
    reg.child.wait().unwrap();
}

/// `wharf ARGS...`: (success, stdout, stderr).
fn wharf(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_index_is_durable_and_rebuilt_from_the_stored_images_when_lost() {
    let img = images();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let reg = Wharf::start(&root);
    let first = push(
        &tmp.path().join("a"),
        &img.v1,
        &format!("docker://{}/team/app:v1", reg.addr),
    );
    let diff_id = first["layers"][0]["diff_id"].as_str().unwrap().to_owned();
    let blob = first["layers"][0]["digest"].clone();
    indexed(&reg.addr, &first, None).await;
    stop(reg);

    // A new process over the same storage answers at once: the index is in the storage, not in memory.
    let reg = Wharf::start(&root);
    let (status, answer) = lookup(&reg, &diff_id).await;
    assert_eq!((status, &answer["blobs"][0]["digest"]), (200, &blob), "{answer}");
    stop(reg);

    // Lost (an older store, a deleted directory): the server builds it again from the manifests at start.
    std::fs::remove_dir_all(root.join("layer-index")).unwrap();
    let reg = Wharf::start(&root);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while lookup(&reg, &diff_id).await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "the index never came back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop(reg);

    // Lost again, with no server: `wharf index rebuild` rebuilds it and says what it did.
    std::fs::remove_dir_all(root.join("layer-index")).unwrap();
    let (ok, out, err) = wharf(&["index", "rebuild", "--root", root.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("1 repositories, 1 images, 3 entries recorded, 0 stale entries removed, 3 claims checked"),
        "{out}"
    );
    let reg = Wharf::start(&root);
    assert_eq!(lookup(&reg, &diff_id).await.0, 200);
    // And a fresh machine uses it.
    let fresh = push(
        &tmp.path().join("b"),
        &img.v2,
        &format!("docker://{}/other/app:v2", reg.addr),
    );
    assert_eq!(outcomes(&fresh)[..img.base], vec!["mounted"; img.base][..], "{fresh}");
}

/// A server killed (`abort`, as `kill -9`) between the index write and the manifest write: the index names blobs the
/// repository links, so a push that goes by it is complete; garbage collection then deletes those blobs (no manifest
/// keeps them) and the index with them, so a later push compresses and sends them again instead of skipping them.
#[tokio::test]
async fn a_manifest_put_killed_after_the_index_write_never_makes_a_push_skip_a_missing_blob() {
    let img = images();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    crashed_push(&root, &img.v1, "team/app:v1", &tmp.path().join("a"));

    let reg = Wharf::start(&root);
    let c = common::client();
    let tag = c.get(reg.url("/v2/team/app/manifests/v1")).send().await.unwrap();
    assert_eq!(tag.status(), 404, "the manifest was never stored");
    let diff_ids: Vec<String> = (0..img.base)
        .map(|i| Digest::sha256_of(&layer(100 + i as u64, 1 << 20)).to_string())
        .collect();
    // The index was written first; the restarted server checks the claims the crash left unchecked.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for d in &diff_ids {
        while lookup(&reg, d).await.0 != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "the claims of {d} were never checked"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    // A fresh machine goes by the index: it sends no layer, and the image it pushed pulls back whole.
    let fresh = push(
        &tmp.path().join("b"),
        &img.v1,
        &format!("docker://{}/team/app:v1", reg.addr),
    );
    assert!(
        outcomes(&fresh).iter().all(|o| o == "skipped" || o == "mounted"),
        "{fresh}"
    );
    let pulled = tmp.path().join("pulled");
    copy(
        &tmp.path().join("c"),
        &format!("docker://{}/team/app:v1", reg.addr),
        &format!("oci:{}:v1", pulled.display()),
    );
    stop(reg);

    // Killed again, pushing a new layer to another repository; nothing keeps that blob, so a collection deletes it.
    crashed_push(&root, &img.v2, "team/new:v2", &tmp.path().join("d"));
    let new_layer = Digest::sha256_of(&layer(200, 64 << 10)).to_string();
    let (ok, report, err) = wharf(&["gc", "--root", root.to_str().unwrap(), "--grace-period", "0", "--json"]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(report["index_entries"].as_u64().unwrap() >= 1, "{report}");

    let reg = Wharf::start(&root);
    assert_eq!(
        lookup(&reg, &new_layer).await.0,
        404,
        "the collected blob left the index"
    );
    // The base layers are kept by team/app:v1 and still known.
    assert_eq!(lookup(&reg, &diff_ids[0]).await.0, 200);
    // The machine that crashed has no record of a finished push: it compresses the new layer and sends it.
    let again = push(
        &tmp.path().join("d"),
        &img.v2,
        &format!("docker://{}/team/new:v2", reg.addr),
    );
    assert_eq!(outcomes(&again)[img.base], "compressed", "{again}");
    copy(
        &tmp.path().join("e"),
        &format!("docker://{}/team/new:v2", reg.addr),
        &format!("oci:{}:v2", pulled.display()),
    );
}

/// CNCF distribution (`docker-registry`), which has no layer index: the same machine's record still skips what it
/// pushed; a fresh machine compresses everything (it has nothing to go by), and its push works.
#[test]
fn a_registry_without_the_index_still_gets_the_local_record() {
    let Some(registry) = which("docker-registry") else {
        panic!("docker-registry (CNCF distribution) is needed: apt-get install docker-registry");
    };
    let img = images();
    let tmp = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = tmp.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            tmp.path().join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(registry)
        .args(["serve", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "docker-registry did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let machine_a = tmp.path().join("a");
    push(&machine_a, &img.v1, &format!("docker://{addr}/team/app:v1"));
    let again = push(&machine_a, &img.v2, &format!("docker://{addr}/team/app:v2"));
    let mut expected = vec!["skipped"; img.base];
    expected.push("compressed");
    assert_eq!(outcomes(&again), expected, "{again}");
    let fresh = push(&tmp.path().join("b"), &img.v2, &format!("docker://{addr}/other/app:v2"));
    assert_eq!(outcomes(&fresh), vec!["compressed"; img.base + 1], "{fresh}");
    // A machine that pulled v1 (the base of what it builds) knows its layers compressed: its push of v2 mounts them
    // from where it pulled them.
    let machine_c = tmp.path().join("c");
    copy(
        &machine_c,
        &format!("docker://{addr}/team/app:v1"),
        &format!("oci:{}:v1", tmp.path().join("layout").display()),
    );
    let built = push(&machine_c, &img.v2, &format!("docker://{addr}/third/app:v2"));
    let mut expected = vec!["mounted"; img.base];
    expected.push("compressed");
    assert_eq!(outcomes(&built), expected, "{built}");
    let _ = child.kill();
    let _ = child.wait();
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The build cache's candidates (`POST /wharf/v1/cache/candidates`): the image that serves a Dockerfile furthest on
/// the same base, never one the caller may not pull, never one deleted since; learnt again when the server restarts.
#[tokio::test]
async fn build_cache_candidates_rank_by_steps_matched_and_respect_pull_rights() {
    let tmp = tempfile::tempdir().unwrap();
    let config = alice_and_bob(tmp.path());
    let root = tmp.path().join("reg");
    let args = ["--config", config.to_str().unwrap()];
    let reg = Wharf::start_with(&root, &args, None);

    // Three images on one base: team/a and bob/c differ from team/b in their last COPY only.
    let (base, deps) = (layer(1, 4096), layer(2, 4096));
    let steps = |copy: &str| {
        [
            "/bin/sh -c #(nop) ADD file:base in /",
            "/bin/sh -c apt-get install -y gcc",
            copy,
        ]
        .map(str::to_owned)
    };
    let copy_a = "/bin/sh -c #(nop) COPY file:aaaa in /src";
    let copy_b = "/bin/sh -c #(nop) COPY file:bbbb in /src";
    let push_as = |user: &str, repo: &str, copy: &str, top: u64| {
        let archive = tmp.path().join(format!("{}.tar", repo.replace('/', "-")));
        let s = steps(copy);
        let s: Vec<&str> = s.iter().map(String::as_str).collect();
        save_built(
            &archive,
            "x:1",
            &[base.clone(), deps.clone(), layer(top, 4096)],
            Some(&s),
        );
        let creds = format!("{user}:{}", password(user));
        let report = copy_with(
            &tmp.path().join(user),
            &format!("docker-archive:{}", archive.display()),
            &format!("docker://{}/{repo}:1", reg.addr),
            &["--dest-creds", &creds],
        );
        report["digest"].as_str().unwrap().to_owned()
    };
    let a = push_as("alice", "team/a", copy_a, 10);
    let b = push_as("alice", "team/b", copy_b, 11);
    let c = push_as("bob", "bob/c", copy_b, 12);

    let query = serde_json::json!({
        "base": [{
            "created_by": "/bin/sh -c #(nop) ADD file:base in /",
            "created": "2026-12-01T00:00:00Z",
            "diff_id": Digest::sha256_of(&base).to_string(),
        }],
        "steps": ["/bin/sh -c apt-get install -y gcc", copy_b],
    });
    let ask = |user: Option<&'static str>| {
        let mut r = common::client()
            .post(reg.url("/wharf/v1/cache/candidates"))
            .header("content-type", "application/json")
            .body(query.to_string());
        if let Some(u) = user {
            r = r.basic_auth(u, Some(password(u)));
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&r.bytes().await.unwrap()).unwrap_or_default(),
            )
        }
    };
    // (The trie learns a PUT in the background: wait for the third image.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let ranked = |v: &serde_json::Value| -> Vec<(String, u64)> {
        v["candidates"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        (
                            c["repository"].as_str().unwrap().to_owned(),
                            c["steps_matched"].as_u64().unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    loop {
        let (_, v) = ask(Some("bob")).await;
        if !ranked(&v).is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the trie never learnt bob/c");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(ask(None).await.0, 401);
    // Bounded: a query body past 1 MiB, or naming more steps than a build has, is refused.
    let huge = serde_json::json!({"steps": vec!["x".repeat(1000); 1100]});
    let many = serde_json::json!({"steps": vec!["RUN x"; 1001]});
    for (body, want) in [(huge, 413), (many, 400)] {
        let r = common::client()
            .post(reg.url("/wharf/v1/cache/candidates"))
            .basic_auth("alice", Some("wonderland"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want);
    }
    let (status, alices) = ask(Some("alice")).await;
    assert_eq!(status, 200, "{alices}");
    assert_eq!(
        ranked(&alices),
        vec![("team/b".into(), 2), ("team/a".into(), 1)],
        "{alices}"
    );
    assert_eq!(alices["candidates"][0]["digest"], b.as_str());
    assert_eq!(
        alices["candidates"][0]["layers"].as_array().unwrap().len(),
        3,
        "{alices}"
    );
    assert_eq!(
        alices["candidates"][1]["layers"].as_array().unwrap().len(),
        2,
        "{alices}"
    );
    let beyond = alices["candidates"][0]["bytes_beyond_base"].as_u64().unwrap();
    assert!(
        beyond > 0 && beyond < alices["candidates"][0]["bytes"].as_u64().unwrap(),
        "{alices}"
    );
    // Bob sees his own image only, though team/b matches as far.
    let (_, bobs) = ask(Some("bob")).await;
    assert_eq!(ranked(&bobs), vec![("bob/c".into(), 2)], "{bobs}");
    assert_eq!(bobs["candidates"][0]["digest"], c.as_str());

    // team/b deleted: the next answer no longer names it.
    let r = common::client()
        .delete(reg.url(&format!("/v2/team/b/manifests/{b}")))
        .basic_auth("alice", Some("wonderland"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(ranked(&ask(Some("alice")).await.1), vec![("team/a".into(), 1)]);

    // A new process learns the stored images again.
    stop(reg);
    let reg = Wharf::start_with(&root, &args, None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = common::client()
            .post(reg.url("/wharf/v1/cache/candidates"))
            .basic_auth("alice", Some("wonderland"))
            .header("content-type", "application/json")
            .body(query.to_string())
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        if ranked(&v) == vec![("team/a".to_owned(), 1)] {
            assert_eq!(v["candidates"][0]["digest"], a.as_str());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the trie was not rebuilt: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A manifest's word that a blob holds a layer is checked before the index answers it: a config naming another
/// layer's diff_id, or a descriptor with the wrong size, is refused (never answered, counted); a true claim made
/// after them is answered (claims are checked in order, so by then the false ones were decided).
#[tokio::test]
async fn false_layer_claims_are_never_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Wharf::start(&tmp.path().join("reg"));
    let c = common::client();
    // (name, the blob pushed, the diff_id its config claims, the size its manifest claims)
    let (a, b, honest) = (layer(300, 8192), layer(301, 8192), layer(302, 8192));
    let wrong_size = layer(303, 8192);
    let cases: [(&str, &Vec<u8>, Digest, usize); 3] = [
        ("team/other-layer", &b, Digest::sha256_of(&a), b.len()),
        (
            "team/wrong-size",
            &wrong_size,
            Digest::sha256_of(&wrong_size),
            wrong_size.len() + 1,
        ),
        ("team/honest", &honest, Digest::sha256_of(&honest), honest.len()),
    ];
    for (repo, blob, diff_id, size) in &cases {
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        }))
        .unwrap();
        for data in [&config, *blob] {
            let r = c
                .post(reg.url(&format!("/v2/{repo}/blobs/uploads/?digest={}", Digest::sha256_of(data))))
                .body(data.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": Digest::sha256_of(&config).to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": Digest::sha256_of(blob).to_string(), "size": size}],
        });
        let r = c
            .put(reg.url(&format!("/v2/{repo}/manifests/1")))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{repo}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while lookup(&reg, &cases[2].2.to_string()).await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the true claim was never answered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for (repo, _, diff_id, _) in &cases[..2] {
        let (status, v) = lookup(&reg, &diff_id.to_string()).await;
        assert_eq!(status, 404, "{repo}'s false claim was answered: {v}");
    }
    let page = c.get(reg.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("wharf_layer_claims_refused_total 2"), "{page}");
}
