//! The real `wharf serve` process: killed with SIGKILL in the middle of a chunked upload, restarted, resumed; and
//! stopped with SIGTERM while a request is in flight.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{MIB, Wharf, client, count_files, send_partial};
use wharf_oci::Digest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_chunk_then_resume() {
    let root = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..5 * MIB).map(|i| (i * 31 % 251) as u8).collect();
    let digest = Digest::sha256_of(&data).to_string();
    let client = client();

    let mut w = Wharf::start(root.path());
    let r = client.post(w.url("/v2/crash/blobs/uploads/")).send().await.unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let r = client
        .patch(w.url(&loc))
        .header("Content-Range", format!("0-{}", MIB - 1))
        .body(data[..MIB].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // Second chunk (3 MiB): half of it is on the wire when the server dies, enough for some of it to reach the
    // session file (the server writes in ~1 MiB batches).
    let head = format!(
        "PATCH {loc} HTTP/1.1\r\nHost: {}\r\nContent-Range: {}-{}\r\nContent-Length: {}\r\n\r\n",
        w.addr,
        MIB,
        4 * MIB - 1,
        3 * MIB
    );
    let _sock = send_partial(&w.addr, &head, &data[MIB..MIB + 3 * MIB / 2]);
    // Wait until the server has at least part of the chunk in the session file, so the kill lands mid-write.
    let session_data = std::fs::read_dir(root.path().join("uploads"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
        .join("data");
    let mut torn = false;
    for _ in 0..500 {
        if std::fs::metadata(&session_data).map(|m| m.len()).unwrap_or(0) > MIB as u64 {
            torn = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        torn,
        "part of the second chunk should be in the session file before the kill"
    );
    w.child.kill().unwrap(); // SIGKILL
    w.child.wait().unwrap();
    assert_eq!(
        count_files(&root.path().join("blobs")),
        0,
        "no blob may exist before commit"
    );

    let w = Wharf::start(root.path());
    let r = client
        .head(w.url(&format!("/v2/crash/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a partial upload is never served");
    let r = client.get(w.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), 204);
    // Exactly the acknowledged first chunk survived; the torn second one was cut off.
    assert_eq!(r.headers()["range"], format!("0-{}", MIB - 1).as_str());

    let r = client
        .patch(w.url(&loc))
        .header("Content-Range", format!("{}-{}", MIB, 5 * MIB - 1))
        .body(data[MIB..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = client
        .put(w.url(&format!("{loc}?digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = client
        .get(w.url(&format!("/v2/crash/blobs/{digest}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got == data, "served blob differs from what was uploaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_request_finish() {
    let root = tempfile::tempdir().unwrap();
    let mut w = Wharf::start(root.path());
    let data = vec![9u8; 256 * 1024];
    let digest = Digest::sha256_of(&data).to_string();
    let head = format!(
        "POST /v2/term/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        w.addr,
        data.len()
    );
    let mut sock = send_partial(&w.addr, &head, &data[..1000]);
    // Make sure the request is being served before the signal.
    let uploads = root.path().join("uploads");
    for _ in 0..500 {
        if std::fs::read_dir(&uploads).map(|d| d.count()).unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &w.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "server must wait for the in-flight request"
    );
    sock.write_all(&data[1000..]).unwrap();
    let mut resp = String::new();
    sock.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    let exit = w.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(count_files(&root.path().join("blobs")), 1);
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop. `None` where mounting is not allowed
/// (not root): the caller then says so and returns.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_cleanly_and_stores_nothing() {
    let Some(disk) = SmallDisk::mount("2m") else {
        eprintln!("full_disk_fails_cleanly_and_stores_nothing: cannot mount a tmpfs here (needs root); not run");
        return;
    };
    let w = Wharf::start(disk.dir.path());
    let client = client();
    let big = vec![1u8; 4 * MIB];
    let digest = Digest::sha256_of(&big).to_string();
    let r = client
        .post(w.url(&format!("/v2/full/blobs/uploads/?digest={digest}")))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 507, "{:?}", r.text().await);
    let body = r.text().await.unwrap();
    assert!(body.contains("No space left"), "{body}");
    assert_eq!(count_files(&disk.dir.path().join("blobs")), 0);
    // The server answered before reading the whole body, so it closes that connection: start a fresh one.
    let client = common::client();
    let r = client
        .head(w.url(&format!("/v2/full/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The failed upload gave its space back: a small blob still fits.
    let small = vec![2u8; 64 * 1024];
    let sd = Digest::sha256_of(&small).to_string();
    let r = client
        .post(w.url(&format!("/v2/full/blobs/uploads/?digest={sd}")))
        .body(small)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    drop(w);
}

#[tokio::test]
async fn health_readiness_and_request_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let reg = Wharf::start(&root);
    let c = common::client();
    let get = |path: &str| {
        let c = c.clone();
        let url = reg.url(path);
        async move {
            let r = c.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 200);
    assert_eq!(get("/v2/").await.0, 200);
    assert_eq!(get("/v2/nope/manifests/v1").await.0, 404);
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        r#"wharf_http_requests_total{route="base",method="GET",status="200"} 1"#,
        r#"wharf_http_requests_total{route="manifests",method="GET",status="404"} 1"#,
        r#"wharf_http_request_duration_seconds_bucket{route="manifests",method="GET",le="0.005"}"#,
    ] {
        assert!(text.contains(needle), "no {needle} in:\n{text}");
    }

    // Storage that cannot be read: not ready, still alive.
    std::fs::rename(root.join("blobs"), tmp.path().join("moved")).unwrap();
    std::fs::write(root.join("blobs"), b"not a directory").unwrap();
    assert_eq!(get("/readyz").await.0, 503);
    assert_eq!(get("/healthz").await.0, 200);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("wharf.toml");
    std::fs::write(&config, "[log]\nformat = \"json\"\nlevel = \"info\"\n").unwrap();
    let log = tmp.path().join("log");
    let reg = Wharf::start_with(
        &tmp.path().join("reg"),
        &["--config", config.to_str().unwrap()],
        Some(&log),
    );
    // The "registry started" line follows the listening line on stdout: wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !reg.log_text().contains("registry started") {
        assert!(
            std::time::Instant::now() < deadline,
            "no log line: {:?}",
            reg.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = reg.log_text();
    let first = text.lines().next().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert!(v["fields"]["message"].as_str().is_some(), "{v}");

    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[log]\nformat = \"xml\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown variant `xml`, expected `text` or `json`"),
        "{err}"
    );
}

/// `/readyz` answers within 2 s whatever the storage does: an object store that accepts connections and never
/// answers gives a 503 a probe with the usual 1-5 s timeout can see (it took 19-26 s before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_within_two_seconds_when_the_object_store_hangs() {
    let tmp = tempfile::tempdir().unwrap();
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", hang.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hang.incoming() {
            held.push(s);
        }
    });
    let config = tmp.path().join("wharf.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nbackend = \"s3\"\n[storage.options]\nbucket = \"b\"\nregion = \"us-east-1\"\n\
             endpoint = \"{endpoint}\"\naccess_key_id = \"x\"\nsecret_access_key = \"y\"\n"
        ),
    )
    .unwrap();
    let reg = Wharf::start_with(&tmp.path().join("reg"), &["--config", config.to_str().unwrap()], None);
    let started = std::time::Instant::now();
    let r = common::client().get(reg.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let r = common::client().get(reg.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// Listening beyond loopback with no authentication is said in the log, once, at startup (before the "registry
/// started" line); on loopback it is not.
#[test]
fn an_open_registry_beyond_loopback_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let started = |listen: &str, name: &str| -> String {
        let log = tmp.path().join(format!("{name}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["serve", "--listen", listen, "--root"])
            .arg(tmp.path().join(name))
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        assert!(line.contains("listening on"), "{line}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut text = String::new();
        while !text.contains("registry started") && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            text = std::fs::read_to_string(&log).unwrap_or_default();
        }
        let _ = child.kill();
        let _ = child.wait();
        std::fs::read_to_string(&log).unwrap_or_default()
    };
    let open = started("0.0.0.0:0", "open");
    assert!(open.contains("with no authentication"), "{open}");
    let local = started("127.0.0.1:0", "local");
    assert!(
        local.contains("registry started") && !local.contains("with no authentication"),
        "{local}"
    );
}

/// `wharf serve --check-config` reads everything `serve` reads before it listens and exits: 0 with a summary, or 1
/// with the cause (here an htpasswd file that does not exist), binding nothing.
#[test]
fn check_config_says_what_is_wrong_without_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.toml");
    let root = tmp.path().join("data");
    std::fs::write(
        &good,
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[storage]\nroot = \"{}\"\n",
            root.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--check-config", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("configuration OK: listen 127.0.0.1:1") && stdout.contains("auth off"),
        "{stdout}"
    );
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[auth]\nmode = \"htpasswd\"\nhtpasswd = \"/nonexistent/users\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--check-config", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("[auth]") && stderr.contains("/nonexistent/users"),
        "{stderr}"
    );
    assert!(!root.exists(), "the storage was not opened");
}

/// Every request gets an access log line (target `wharf::access`, info: method, path, status, bytes in and out,
/// duration, user, client address), and a chunked upload (docker's, with no Content-Length) counts in
/// `wharf_http_request_bytes_total` (it counted 0 before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_and_chunked_request_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let reg = Wharf::start_with(&tmp.path().join("reg"), &["--log", "info"], Some(&log));
    let data = common::bytes(5, 100_000);
    let digest = wharf_oci::Digest::sha256_of(&data);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = data.chunks(10_000).map(|c| Ok(c.to_vec())).collect();
    let r = common::client()
        .post(reg.url(&format!("/v2/team/app/blobs/uploads/?digest={digest}")))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let text = common::client()
        .get(reg.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"wharf_http_request_bytes_total{route="uploads"} 100000"#),
        "{text}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines = reg.log_text();
        if let Some(line) = lines
            .lines()
            .find(|l| l.contains("wharf::access") && l.contains(r#"method="POST""#))
        {
            assert!(
                line.contains("status=201") && line.contains("bytes_in=100000") && line.contains("client=\"127.0.0.1:"),
                "{line}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no access line: {lines}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
