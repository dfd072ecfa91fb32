//! `wharf serve` over HTTPS: HTTP/2 by ALPN, and the certificate read again on SIGHUP.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Wharf;

fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A CA and a server certificate it signed for 127.0.0.1, made by the openssl CLI: (CA certificate, server
/// certificate, server key).
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let p = |f: &str| dir.join(format!("{name}-{f}")).to_str().unwrap().to_owned();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj"];
    let ca_subject = format!("/CN=wharf test CA {name}");
    ca.extend([ca_subject.as_str(), "-keyout"]);
    let (ca_key, ca_crt) = (p("ca.key"), p("ca.crt"));
    ca.extend([ca_key.as_str(), "-out", ca_crt.as_str()]);
    ca.extend(ec);
    openssl(&ca);
    let (key, csr, crt, ext) = (p("server.key"), p("server.csr"), p("server.crt"), p("ext.cnf"));
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    let mut req = vec![
        "req",
        "-new",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        key.as_str(),
        "-out",
        csr.as_str(),
    ];
    req.extend(ec);
    openssl(&req);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &crt,
    ]);
    // The chain the server presents: its certificate; clients trust the CA.
    std::fs::copy(&ca_crt, dir.join(format!("{name}.ca"))).unwrap();
    (PathBuf::from(crt), PathBuf::from(key))
}

/// A client that trusts only `ca`.
fn client_trusting(ca: &Path) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

async fn status(c: &reqwest::Client, url: &str) -> Result<(u16, reqwest::Version), String> {
    c.get(url)
        .send()
        .await
        .map(|r| (r.status().as_u16(), r.version()))
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn https_with_http2_and_a_certificate_reloaded_on_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = self_signed(tmp.path(), "a");
    let (cert_b, key_b) = self_signed(tmp.path(), "b");
    let (cert, key) = (tmp.path().join("serving.crt"), tmp.path().join("serving.key"));
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_a, &key).unwrap();
    let reg = Wharf::start_with(
        &tmp.path().join("reg"),
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
        Some(&tmp.path().join("reg.log")),
    );
    let url = format!("https://{}/v2/", reg.addr);

    let a = client_trusting(&tmp.path().join("a.ca"));
    assert_eq!(
        status(&a, &url).await,
        Ok((200, reqwest::Version::HTTP_2)),
        "HTTPS with HTTP/2"
    );
    let plain = common::client();
    assert!(
        plain.get(format!("http://{}/v2/", reg.addr)).send().await.is_err(),
        "plain HTTP on the TLS port must not be served"
    );

    // A broken pair (B's certificate, A's key) on SIGHUP: refused, the old certificate stays.
    std::fs::copy(&cert_b, &cert).unwrap();
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &reg.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    hup();
    let b = client_trusting(&tmp.path().join("b.ca"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reg.log_text().contains("TLS reload failed") {
        assert!(
            Instant::now() < deadline,
            "the bad pair was never refused: {}",
            reg.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        status(&a, &url).await.map(|s| s.0),
        Ok(200),
        "a bad pair replaced the good one"
    );

    // The whole new pair: new connections get certificate B.
    std::fs::copy(&key_b, &key).unwrap();
    hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if status(&b, &url).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "certificate B never served after SIGHUP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        status(&a, &url).await.is_err(),
        "certificate A still served after the reload"
    );
}

/// The TLS listener is bounded like the plain one: a connection that never starts its handshake is closed after the
/// header-read timeout, and past `max_connections` a new connection waits for one to close.
#[tokio::test]
async fn tls_connections_are_capped_and_a_silent_one_is_closed() {
    use tokio::io::AsyncReadExt;
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(tmp.path(), "a");
    let config = tmp.path().join("wharf.toml");
    std::fs::write(&config, "[server]\nmax_connections = 1\nheader_read_timeout_secs = 1\n").unwrap();
    let reg = Wharf::start_with(
        &tmp.path().join("reg"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        Some(&tmp.path().join("reg.log")),
    );
    // It holds the only connection, saying nothing.
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(&reg.addr).await.unwrap();
    let client = client_trusting(&tmp.path().join("a.ca"));
    let url = format!("https://{}/v2/", reg.addr);
    let (served, closed) = tokio::join!(status(&client, &url), async {
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
        (r, started.elapsed())
    });
    let (read, closed_after) = closed;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the silent connection was not closed: {read:?}"
    );
    assert!(closed_after < Duration::from_secs(5), "closed after {closed_after:?}");
    assert_eq!(served.map(|s| s.0), Ok(200));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the request was served while the only connection slot was taken ({:?})",
        started.elapsed()
    );
}

/// The client reaches a TLS registry on loopback (its own `wharf serve --tls-cert` included): it assumes plain HTTP
/// there, as Docker does, and switches to HTTPS, without verifying the certificate, when the registry answers as a
/// TLS server. Before, every command failed with "invalid HTTP version parsed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reaches_a_tls_registry_on_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(tmp.path(), "lo");
    let reg = Wharf::start_with(
        &tmp.path().join("reg"),
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
        None,
    );
    let c = client_trusting(&tmp.path().join("lo.ca"));
    // An image on it, pushed over HTTPS.
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let d = wharf_oci::Digest::sha256_of(&config).to_string();
    let r = c
        .post(format!("https://{}/v2/team/app/blobs/uploads/?digest={d}", reg.addr))
        .body(config.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d, "size": config.len()},
        "layers": []});
    let body = serde_json::to_vec(&manifest).unwrap();
    let r = c
        .put(format!("https://{}/v2/team/app/manifests/v1", reg.addr))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["digest", &format!("{}/team/app:v1", reg.addr)])
        .env("DOCKER_CONFIG", tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        wharf_oci::Digest::sha256_of(&body).to_string()
    );
    let layout = tmp.path().join("pulled");
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["copy", "--quiet", &format!("docker://{}/team/app:v1", reg.addr)])
        .arg(format!("oci:{}:v1", layout.display()))
        .env("DOCKER_CONFIG", tmp.path())
        .env("WHARF_STORE", tmp.path().join("store"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(layout.join("index.json").is_file());
}
