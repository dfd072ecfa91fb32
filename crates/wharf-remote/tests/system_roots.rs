//! The TLS configuration every wharf client shares (`wharf_remote::http::client_builder`) verifies servers against
//! the system's roots, read at the first handshake: a server signed by a trusted CA is reached (`openssl s_server`,
//! offered http/1.1 by ALPN), one signed by another CA is refused. The system's roots are `SSL_CERT_FILE` here, as
//! `rustls-native-certs` reads it. The other test here (a registry's `certs.d` directory) builds its own client and
//! needs no system root, so the order the two run in does not matter.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A CA named `name` and a server certificate it signed for 127.0.0.1: (CA certificate, server certificate, key).
fn ca_and_server(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let s = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let (ca_key, ca_crt, key, csr, crt, ext) = (p("ca.key"), p("ca.crt"), p("key"), p("csr"), p("crt"), p("ext"));
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let subject = format!("/CN=wharf roots test {name}");
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", &subject];
    let (ca_key_s, ca_crt_s) = (s(&ca_key), s(&ca_crt));
    ca.extend(["-keyout", &ca_key_s, "-out", &ca_crt_s]);
    ca.extend(ec);
    openssl(&ca);
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    let (key_s, csr_s, crt_s, ext_s) = (s(&key), s(&csr), s(&crt), s(&ext));
    let mut req = vec![
        "req",
        "-new",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &key_s,
        "-out",
        &csr_s,
    ];
    req.extend(ec);
    openssl(&req);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr_s,
        "-CA",
        &ca_crt_s,
        "-CAkey",
        &ca_key_s,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext_s,
        "-out",
        &crt_s,
    ]);
    (ca_crt, crt, key)
}

/// `openssl s_server -www` on a free loopback port, killed (by its PID) when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(crt: &Path, key: &Path) -> Server {
        Server::start_verifying(crt, key, None)
    }

    /// With `client_ca`, the server requires a client certificate that CA signed.
    fn start_verifying(crt: &Path, key: &Path, client_ca: Option<&Path>) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-alpn", "http/1.1", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(crt)
            .arg("-key")
            .arg(key)
            .args(
                client_ca
                    .map(|ca| {
                        vec![
                            "-Verify".into(),
                            "1".into(),
                            "-CAfile".into(),
                            ca.as_os_str().to_owned(),
                        ]
                    })
                    .unwrap_or_default(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start openssl s_server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_shared_client_verifies_servers_against_the_system_roots() {
    let dir = tempfile::tempdir().unwrap();
    let (trusted_ca, trusted_crt, trusted_key) = ca_and_server(dir.path(), "trusted");
    let (_, other_crt, other_key) = ca_and_server(dir.path(), "other");
    // SAFETY: set before any thread of this process reads the environment (this binary is this one test).
    unsafe { std::env::set_var("SSL_CERT_FILE", &trusted_ca) };
    let client = wharf_remote::http::client_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let other = Server::start(&other_crt, &other_key);
    let refused = client
        .get(format!("https://127.0.0.1:{}/", other.port))
        .send()
        .await
        .expect_err("a certificate no system root signs must be refused");
    let chain = format!("{refused:?}");
    assert!(chain.contains("UnknownIssuer"), "{chain}");

    let trusted = Server::start(&trusted_crt, &trusted_key);
    let r = client
        .get(format!("https://127.0.0.1:{}/", trusted.port))
        .send()
        .await
        .unwrap_or_else(|e| panic!("the trusted server was not reached: {e:?}"));
    assert_eq!(r.status(), 200);
}

/// A registry's certificate directory in Docker's `certs.d` layout (`ClientOptions::cert_dir`): its `*.crt` CA is
/// trusted besides the system's, its `client.cert`/`client.key` are presented to a server that requires them; without
/// the directory the same server is refused.
#[tokio::test]
async fn a_cert_dir_trusts_its_ca_and_presents_its_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, crt, key) = ca_and_server(dir.path(), "private");
    // A client certificate, from a CA the server trusts for clients.
    let (client_ca, client_crt, client_key) = ca_and_server(dir.path(), "client");
    let server = Server::start_verifying(&crt, &key, Some(&client_ca));
    let base = format!("https://127.0.0.1:{}/", server.port);

    let certs = dir.path().join("certs.d");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&ca, certs.join("ca.crt")).unwrap();
    let options = |cert_dir: Option<PathBuf>| wharf_remote::ClientOptions {
        cert_dir,
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    // The CA alone: the server asks for a client certificate and gets none.
    let r = wharf_remote::Registry::new("private", &base, &options(Some(certs.clone()))).unwrap();
    assert!(r.ping().await.is_err(), "no client certificate, yet accepted");
    // The CA and the client's pair: reached.
    std::fs::copy(&client_crt, certs.join("client.cert")).unwrap();
    std::fs::copy(&client_key, certs.join("client.key")).unwrap();
    let r = wharf_remote::Registry::new("private", &base, &options(Some(certs.clone()))).unwrap();
    r.ping().await.unwrap();
    // Without the directory: the private CA is not trusted.
    let r = wharf_remote::Registry::new("private", &base, &options(None)).unwrap();
    assert!(r.ping().await.is_err(), "an unknown CA was trusted");
    // A client certificate without its key is refused with the reason.
    std::fs::remove_file(certs.join("client.key")).unwrap();
    let err = wharf_remote::Registry::new("private", &base, &options(Some(certs)))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("client.cert has no key"), "{err}");
}
