//! P2P on loopback: an origin `wharf serve`, `wharf scheduler`s and `wharf node`s as real processes. Nodes pull the
//! same image at once through their mirror endpoints; every node must get byte-identical, verified blobs while the
//! origin sends each blob's bytes about once. Faults: a node serving corrupt pieces, a scheduler killed mid-pull, the
//! origin stopped after one node has the image. (The network-namespace harness with bandwidth limits is
//! tests/e2e/p2p.sh and bench/p2p.sh.)

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{MIB, Wharf};
use wharf_oci::Digest;

struct Proc {
    child: Child,
    /// What the process printed first (its addresses).
    lines: Vec<String>,
}

impl Proc {
    fn start(args: &[&str], env: &[(&str, &str)], lines: usize, log: &std::path::Path) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
        cmd.env("RUST_LOG", "info,wharf_p2p=debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start wharf");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut got = Vec::new();
        for _ in 0..lines {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert!(
                !line.is_empty(),
                "{args:?} exited early: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            got.push(line.trim().to_owned());
        }
        Proc { child, lines: got }
    }

    fn url(&self, i: usize) -> String {
        let l = &self.lines[i];
        l[l.find("http://").unwrap()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scheduler(dir: &std::path::Path, name: &str) -> Proc {
    Proc::start(
        &["scheduler", "--listen", "127.0.0.1:0", "--token", "t0k"],
        &[],
        1,
        &dir.join(format!("{name}.log")),
    )
}

fn node(dir: &std::path::Path, name: &str, origin: &Wharf, schedulers: &[&Proc], env: &[(&str, &str)]) -> Proc {
    node_with(dir, name, origin, schedulers, env, &[])
}

fn node_with(
    dir: &std::path::Path,
    name: &str,
    origin: &Wharf,
    schedulers: &[&Proc],
    env: &[(&str, &str)],
    extra: &[&str],
) -> Proc {
    let root = dir.join(name);
    let up = format!("http://{}", origin.addr);
    let mut args = vec![
        "node".to_owned(),
        "--root".into(),
        root.to_string_lossy().into_owned(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--peer-listen".into(),
        "127.0.0.1:0".into(),
        "--upstream".into(),
        up,
        "--token".into(),
        "t0k".into(),
        "--piece-size".into(),
        "1M".into(),
    ];
    for s in schedulers {
        args.push("--scheduler".into());
        args.push(s.url(0));
    }
    args.extend(extra.iter().map(|e| (*e).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::start(&args, env, 2, &dir.join(format!("{name}.log")))
}

/// Sum of a counter family (all label sets) in a Prometheus text page, filtered by a label substring.
fn metric(page: &str, name: &str, label: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn pull_all(c: &reqwest::Client, node: &Proc, img: &common::Image) -> Result<(), String> {
    let base = node.url(0);
    for (d, data) in &img.blobs {
        let r = c
            .get(format!("{base}/v2/p2p/app/blobs/{d}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() != 200 {
            return Err(format!("{d}: {}", r.status()));
        }
        let body = r.bytes().await.map_err(|e| format!("{d}: {e}"))?;
        if body.len() != data.len() || Digest::sha256_of(&body).to_string() != *d {
            return Err(format!("{d}: wrong bytes ({} of {})", body.len(), data.len()));
        }
    }
    Ok(())
}

/// A node's `/metrics` page.
async fn metrics(c: &reqwest::Client, node: &Proc) -> String {
    c.get(format!("{}/metrics", node.url(0)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn origin_bytes(c: &reqwest::Client, nodes: &[&Proc]) -> f64 {
    let mut total = 0.0;
    for n in nodes {
        total += metric(&metrics(c, n).await, "wharf_p2p_bytes_total", "source=\"origin\"");
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_pull_one_image_at_once_for_about_one_origin_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Wharf::start_with(&tmp.path().join("origin"), &[], Some(&tmp.path().join("origin.log")));
    let c = common::client();
    let img = common::push_image(&c, &origin, "p2p/app", "v1", 7, &[9 * MIB + 5, 3 * MIB, 1000]).await;
    let size: usize = img.blobs.iter().map(|(_, b)| b.len()).sum();
    let s = scheduler(tmp.path(), "sched");
    let nodes: Vec<Proc> = (0..4)
        .map(|i| node(tmp.path(), &format!("n{i}"), &origin, &[&s], &[]))
        .collect();

    // A HEAD answers with the blob's size and starts no download (no byte fetched, no task).
    for (d, data) in &img.blobs {
        let r = c
            .head(format!("{}/v2/p2p/app/blobs/{d}", nodes[0].url(0)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "HEAD {d}");
        let len = r.headers().get("content-length").and_then(|v| v.to_str().ok());
        assert_eq!(len, Some(data.len().to_string().as_str()), "HEAD {d}");
    }
    let page = metrics(&c, &nodes[0]).await;
    assert_eq!(metric(&page, "wharf_p2p_bytes_total", ""), 0.0, "{page}");
    assert_eq!(metric(&page, "wharf_p2p_active_tasks", ""), 0.0, "{page}");
    let unknown = format!("sha256:{}", "0".repeat(64));
    let r = c
        .head(format!("{}/v2/p2p/app/blobs/{unknown}", nodes[0].url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let pulls = nodes.iter().map(|n| pull_all(&c, n, &img));
    let results = futures_util::future::join_all(pulls).await;
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "node {i}: {r:?}");
    }
    let refs: Vec<&Proc> = nodes.iter().collect();
    let from_origin = origin_bytes(&c, &refs).await;
    eprintln!("origin sent {from_origin} bytes for {size} bytes of blobs to 4 nodes");
    assert!(
        from_origin >= size as f64,
        "every byte comes from somewhere: {from_origin} < {size}"
    );
    assert!(
        from_origin <= size as f64 * 1.05,
        "origin sent {from_origin} bytes for {size}: more than ~1x"
    );

    // The scheduler's view lists the swarms and the peers.
    let swarms: serde_json::Value = serde_json::from_slice(
        &c.get(format!("{}/v1/swarms", s.url(0)))
            .bearer_auth("t0k")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(swarms["peers"].as_array().map(Vec::len), Some(4), "{swarms}");
    // Without the token, nothing.
    let r = c.get(format!("{}/v1/swarms", s.url(0))).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_peer_is_caught_reported_and_avoided() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Wharf::start_with(&tmp.path().join("origin"), &[], Some(&tmp.path().join("origin.log")));
    let c = common::client();
    let img = common::push_image(&c, &origin, "p2p/app", "v1", 8, &[6 * MIB, 2 * MIB]).await;
    let s = scheduler(tmp.path(), "sched");
    // The bad node gets everything first (from the origin), then serves corrupt pieces.
    let bad = node(tmp.path(), "bad", &origin, &[&s], &[("WHARF_P2P_FAULT", "corrupt")]);
    pull_all(&c, &bad, &img).await.unwrap();
    let good: Vec<Proc> = (0..2)
        .map(|i| node(tmp.path(), &format!("g{i}"), &origin, &[&s], &[]))
        .collect();
    let results = futures_util::future::join_all(good.iter().map(|n| pull_all(&c, n, &img))).await;
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "good node {i}: {r:?}");
    }
    let mut bad_pieces = 0.0;
    for n in &good {
        bad_pieces += metric(&metrics(&c, n).await, "wharf_p2p_bad_pieces_total", "");
    }
    assert!(bad_pieces >= 1.0, "no node ever met the corrupt peer");
    let swarms = swarms(&c, &s).await;
    let bad_id = bad.lines[1]
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    // Reported: suspect at once (not assigned for a while), excluded once two nodes reported it. Nobody else.
    let flagged: Vec<&serde_json::Value> = swarms["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["excluded"] == true || p["suspect"] == true)
        .collect();
    assert_eq!(flagged.len(), 1, "{swarms}");
    assert_eq!(flagged[0]["id"].as_str(), Some(bad_id.as_str()), "{swarms}");
}

/// `GET /v1/swarms` of scheduler `s`.
async fn swarms(c: &reqwest::Client, s: &Proc) -> serde_json::Value {
    let body = c
        .get(format!("{}/v1/swarms", s.url(0)))
        .bearer_auth("t0k")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// Pulls until a pull is whole and right (a first one may be cut short: see the caller), for at most 30 s.
async fn pull_until_whole(c: &reqwest::Client, node: &Proc, img: &common::Image) -> Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let last = pull_all(c, node, img).await;
        if last.is_ok() || std::time::Instant::now() > deadline {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_forging_piece_digests_with_its_leases_is_caught_by_the_origin_and_excluded() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Wharf::start_with(&tmp.path().join("origin"), &[], Some(&tmp.path().join("origin.log")));
    let c = common::client();
    let img = common::push_image(&c, &origin, "p2p/app", "v1", 12, &[3 * MIB, 2 * MIB]).await;
    let s = scheduler(tmp.path(), "sched");
    // The forger fetches everything from the origin under its leases, publishes the digests of bytes it flipped,
    // and serves those bytes: each piece matches its published digest, the whole blob does not.
    let forger = node(tmp.path(), "forger", &origin, &[&s], &[("WHARF_P2P_FAULT", "forge")]);
    pull_all(&c, &forger, &img)
        .await
        .expect("the forger pulls from the origin");
    // g0 takes the forged pieces: its whole-blob check fails, the engine's response is cut short (never a whole
    // wrong blob), g0 fetches the blob again from the origin and reports the false digests.
    let g0 = node(tmp.path(), "g0", &origin, &[&s], &[]);
    pull_until_whole(&c, &g0, &img)
        .await
        .expect("g0 ends with the right bytes");
    let forged = metric(&metrics(&c, &g0).await, "wharf_p2p_forged_digests_total", "");
    assert!(forged >= 1.0, "g0 reported no forged digest");
    // The digests are withdrawn; g1 (neither the publisher nor the reporter) fetches those pieces from the origin,
    // and its digests say who lied.
    let g1 = node(tmp.path(), "g1", &origin, &[&s], &[]);
    pull_until_whole(&c, &g1, &img).await.expect("g1 pulls");
    let view = swarms(&c, &s).await;
    let id_of = |p: &Proc| {
        p.lines[1]
            .split_whitespace()
            .nth(3)
            .unwrap()
            .trim_start_matches("http://")
            .to_owned()
    };
    let excluded: Vec<&str> = view["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["excluded"] == true)
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(excluded, vec![id_of(&forger).as_str()], "{view}");
    assert!(
        metric(&metrics(&c, &g1).await, "wharf_p2p_forged_digests_total", "") == 0.0,
        "g1 met a forged digest: it should have had the origin's"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_finish_when_the_scheduler_dies_and_when_the_origin_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let mut origin = Wharf::start_with(&tmp.path().join("origin"), &[], Some(&tmp.path().join("origin.log")));
    let c = common::client();
    let img = common::push_image(&c, &origin, "p2p/app", "v1", 9, &[8 * MIB]).await;
    let s1 = scheduler(tmp.path(), "s1");
    let mut s2 = scheduler(tmp.path(), "s2");
    // Both schedulers are configured; whichever owns the blob dies as the pulls start.
    let nodes: Vec<Proc> = (0..3)
        .map(|i| node(tmp.path(), &format!("n{i}"), &origin, &[&s1, &s2], &[]))
        .collect();
    let pulls = futures_util::future::join_all(nodes.iter().map(|n| pull_all(&c, n, &img)));
    let killer = async {
        let _ = s2.child.kill();
        let _ = s2.child.wait();
    };
    let (results, ()) = tokio::join!(pulls, killer);
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "node {i} with a scheduler killed: {r:?}");
    }
    // The origin stops; a new node still gets the image, from the peers that have it.
    origin.child.kill().unwrap();
    origin.child.wait().unwrap();
    let late = node(tmp.path(), "late", &origin, &[&s1], &[]);
    // The peers' re-announcements reach the surviving scheduler within a few seconds.
    let mut last = Err(String::new());
    for _ in 0..40 {
        last = pull_all(&c, &late, &img).await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(last.is_ok(), "late node with the origin gone: {last:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_serves_what_it_had_finished_to_a_new_scheduler() {
    let tmp = tempfile::tempdir().unwrap();
    let mut origin = Wharf::start_with(&tmp.path().join("origin"), &[], Some(&tmp.path().join("origin.log")));
    let c = common::client();
    let img = common::push_image(&c, &origin, "p2p/app", "v1", 11, &[6 * MIB + 3, 1000]).await;
    let s1 = scheduler(tmp.path(), "s1");
    let a = node(tmp.path(), "a", &origin, &[&s1], &[]);
    pull_all(&c, &a, &img).await.expect("node a pulls from the origin");
    // Node a and the scheduler restart (the new one knows nothing, not even the pieces' digests), and the origin
    // stops: node b can get the image only from node a's cache, each piece verified against the digests a kept.
    drop(a);
    drop(s1);
    origin.child.kill().unwrap();
    origin.child.wait().unwrap();
    let s2 = scheduler(tmp.path(), "s2");
    let a = node(tmp.path(), "a", &origin, &[&s2], &[]);
    let b = node(tmp.path(), "b", &origin, &[&s2], &[]);
    // Node a re-announces what it holds within its heartbeat (5 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut last = Err(String::new());
    while std::time::Instant::now() < deadline {
        last = pull_all(&c, &b, &img).await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(last.is_ok(), "node b, from the restarted node a only: {last:?}");
    let size: usize = img.blobs.iter().map(|(_, b)| b.len()).sum();
    let page = metrics(&c, &b).await;
    // (At least the image: a try before node a re-announced may have fetched some pieces in vain.)
    assert!(
        metric(&page, "wharf_p2p_bytes_total", "source=\"peer\"") as usize >= size,
        "{page}"
    );
    assert_eq!(
        metric(&page, "wharf_p2p_bytes_total", "source=\"origin\""),
        0.0,
        "{page}"
    );
    drop(a);
}

#[tokio::test(flavor = "multi_thread")]
async fn preheated_seeds_serve_the_image_and_get_fetches_files_through_the_swarm() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = Wharf::start_with(&tmp.path().join("origin"), &[], Some(&tmp.path().join("origin.log")));
    let c = common::client();
    let img = common::push_image(&c, &origin, "p2p/app", "v1", 10, &[5 * MIB, 100]).await;
    let size: usize = img.blobs.iter().map(|(_, b)| b.len()).sum();
    let s = scheduler(tmp.path(), "sched");
    // The seed gets `seed = true` from its config file's [node] table (flags and the file mix).
    let config = tmp.path().join("seed.toml");
    std::fs::write(&config, "[node]\nseed = true\nrack = \"r1\"\n").unwrap();
    let seed = node_with(
        tmp.path(),
        "seed",
        &origin,
        &[&s],
        &[],
        &["--config", config.to_str().unwrap()],
    );

    // Preheat: the seed fetches the whole image before anyone asks for it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args([
            "preheat",
            &format!("{}/p2p/app:v1", origin.addr),
            "--scheduler",
            &s.url(0),
            "--token",
            "t0k",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "preheat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while origin_bytes(&c, &[&seed]).await < size as f64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the seed did not preheat the image"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A node then gets it all from the seed: nothing more from the origin.
    let n = node(tmp.path(), "n", &origin, &[&s], &[]);
    pull_all(&c, &n, &img).await.unwrap();
    assert_eq!(
        origin_bytes(&c, &[&n]).await,
        0.0,
        "the node went to the origin despite the preheated seed"
    );

    // wharf get: a file URL (the origin's blob URL serves ranges), two at once, verified.
    let (d, data) = &img.blobs[1];
    let url = origin.url(&format!("/v2/p2p/app/blobs/{d}"));
    let get = |out: std::path::PathBuf, digest: String| {
        let (url, sched) = (url.clone(), s.url(0));
        std::thread::spawn(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
                .args(["get", &url, "-o"])
                .arg(&out)
                .args([
                    "--scheduler",
                    &sched,
                    "--token",
                    "t0k",
                    "--digest",
                    &digest,
                    "--peer-listen",
                    "127.0.0.1:0",
                ])
                .output()
                .unwrap()
        })
    };
    let (a, b) = (tmp.path().join("a.bin"), tmp.path().join("b.bin"));
    let (ra, rb) = (get(a.clone(), d.clone()), get(b.clone(), d.clone()));
    for r in [ra.join().unwrap(), rb.join().unwrap()] {
        assert!(r.status.success(), "wharf get: {}", String::from_utf8_lossy(&r.stderr));
    }
    assert!(std::fs::read(&a).unwrap() == *data && std::fs::read(&b).unwrap() == *data);
    // A wrong digest: an error, and no file.
    let wrong = Digest::sha256_of(b"other").to_string();
    let bad = tmp.path().join("bad.bin");
    let r = get(bad.clone(), wrong).join().unwrap();
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("digest"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(!bad.exists() && !bad.with_extension("part").exists());

    // The output gets the permissions of a new file of this user (0600 while it is not whole).
    use std::os::unix::fs::PermissionsExt;
    let probe = tmp.path().join("probe");
    std::fs::File::create(&probe).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&a), mode(&probe));

    // A link planted where the partial file goes (another user's trap: make us write a file they cannot read into
    // one they can) is refused, and nothing is written through it.
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    let trapped = tmp.path().join("trapped.bin");
    std::os::unix::fs::symlink(&victim, trapped.with_extension("part")).unwrap();
    let r = get(trapped.clone(), d.clone()).join().unwrap();
    assert!(!r.status.success(), "wrote through a planted link");
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("refusing to write through it"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert!(!trapped.exists());
}

/// The node's engine-facing API is the registry's own router: `Range` (206, 416), `HEAD`, `ns`, spec error bodies,
/// writes refused; and the manifests it served are kept, so with the origin down a pull of an image it served
/// before still completes (the tag past its TTL served stale, the blobs from the swarm).
#[tokio::test(flavor = "multi_thread")]
async fn the_node_speaks_the_registry_api_and_serves_known_images_through_an_origin_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let mut origin = Wharf::start_with(&tmp.path().join("origin"), &[], Some(&tmp.path().join("origin.log")));
    let c = common::client();
    let img = common::push_image(&c, &origin, "p2p/app", "v1", 11, &[3 * MIB + 17, 4000]).await;
    let s = scheduler(tmp.path(), "sched");
    let n = node_with(tmp.path(), "n", &origin, &[&s], &[], &["--tag-ttl-secs", "0"]);
    let base = n.url(0);
    let manifest_accept = "application/vnd.oci.image.manifest.v1+json";

    // By tag, then by digest, with ns naming the origin's host (containerd) and without (Docker).
    for url in [
        format!("{base}/v2/p2p/app/manifests/v1"),
        format!("{base}/v2/p2p/app/manifests/v1?ns={}", origin.addr),
        format!("{base}/v2/p2p/app/manifests/{}", img.digest),
    ] {
        let r = c.get(&url).header("accept", manifest_accept).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        assert_eq!(r.headers()["docker-content-digest"], img.digest.as_str(), "{url}");
    }
    let r = c
        .head(format!("{base}/v2/p2p/app/manifests/v1"))
        .header("accept", manifest_accept)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A range of a blob that spans a piece boundary (1 MiB pieces), then the whole blob.
    let (d, data) = &img.blobs[1];
    let (from, to) = (MIB - 10, MIB + 20);
    let r = c
        .get(format!("{base}/v2/p2p/app/blobs/{d}"))
        .header("range", format!("bytes={from}-{to}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes {from}-{to}/{}", data.len()).as_str()
    );
    assert_eq!(&r.bytes().await.unwrap()[..], &data[from..=to]);
    let r = c
        .get(format!("{base}/v2/p2p/app/blobs/{d}"))
        .header("range", format!("bytes={}-", data.len() + 5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    pull_all(&c, &n, &img).await.unwrap();

    // Spec error bodies: unknown things, a write.
    let code = |v: serde_json::Value| v["errors"][0]["code"].as_str().unwrap_or_default().to_owned();
    let r = c.get(format!("{base}/v2/p2p/app/manifests/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        code(serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()),
        "MANIFEST_UNKNOWN"
    );
    let r = c
        .post(format!("{base}/v2/p2p/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        code(serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()),
        "DENIED"
    );

    // The origin goes away. The tag (TTL 0) is served stale, the blobs from the node's cache: the pull completes.
    origin.child.kill().unwrap();
    origin.child.wait().unwrap();
    let r = c
        .get(format!("{base}/v2/p2p/app/manifests/v1"))
        .header("accept", manifest_accept)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the last known manifest during the outage");
    assert_eq!(
        Digest::sha256_of(&r.bytes().await.unwrap()).to_string(),
        img.digest,
        "byte-exact"
    );
    pull_all(&c, &n, &img).await.unwrap();
    let page = metrics(&c, &n).await;
    assert!(metric(&page, "wharf_p2p_stale_manifests_total", "") >= 1.0, "{page}");
    // What it never served is an error that says the upstream is down, not a hang or a 404.
    let r = c.get(format!("{base}/v2/p2p/app/manifests/v2")).send().await.unwrap();
    assert_eq!(r.status(), 502);
}

/// The cluster is authenticated by default: a scheduler, a node or a `wharf get` through schedulers without a token
/// refuses to start (with the way out in the message); `--insecure` opens it on purpose; the scheduler's metrics
/// are behind the token like its API.
#[tokio::test(flavor = "multi_thread")]
async fn p2p_without_a_token_takes_insecure() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(args)
            .env_remove("WHARF_P2P_TOKEN")
            .env_remove("WHARF_CONFIG")
            .output()
            .unwrap()
    };
    let root = tmp.path().join("n");
    let refused = [
        run(&["scheduler", "--listen", "127.0.0.1:0"]),
        run(&[
            "node",
            "--root",
            root.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:1",
            "--scheduler",
            "http://127.0.0.1:1",
        ]),
        run(&[
            "get",
            "http://127.0.0.1:1/f",
            "-o",
            "/dev/null",
            "--scheduler",
            "http://127.0.0.1:1",
        ]),
    ];
    // Through a swarm without the file's digest: refused unless asked for.
    let out = run(&[
        "get",
        "http://127.0.0.1:1/f",
        "-o",
        "/dev/null",
        "--scheduler",
        "http://127.0.0.1:1",
        "--token",
        "t0k",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--digest") && err.contains("--unverified"),
        "{err}"
    );
    for out in refused {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started without a token: {err}");
        assert!(err.contains("no cluster token") && err.contains("--insecure"), "{err}");
    }

    // --insecure: an open scheduler, said in its log.
    let open = Proc::start(
        &["scheduler", "--listen", "127.0.0.1:0", "--insecure"],
        &[],
        1,
        &tmp.path().join("open.log"),
    );
    let c = common::client();
    let r = c.get(format!("{}/v1/swarms", open.url(0))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        std::fs::read_to_string(tmp.path().join("open.log"))
            .unwrap()
            .contains("--insecure")
    );

    // With a token, the metrics are the cluster's only.
    let s = scheduler(tmp.path(), "sched");
    let r = c.get(format!("{}/metrics", s.url(0))).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{}/metrics", s.url(0)))
        .bearer_auth("t0k")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
