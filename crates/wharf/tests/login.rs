//! `wharf login` / `wharf logout` against registries that demand basic auth or a bearer token, with the Docker config
//! in a temporary `DOCKER_CONFIG` (never the real `~/.docker`), written directly or through a credential helper.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// base64 of `user:secret`.
const USER_SECRET: &str = "dXNlcjpzZWNyZXQ=";

/// A registry on 127.0.0.1 whose `/v2/` wants `user:secret`: as basic auth, or (bearer) at its token endpoint.
/// It runs on its own thread, so the tests can block on the `wharf` processes.
fn start_registry(bearer: bool) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let realm = format!("http://{addr}/token");
            let router = Router::new()
                .route("/v2/", get(move |h: HeaderMap| v2(h, bearer, realm.clone())))
                .route("/token", get(token));
            tx.send(addr).unwrap();
            axum::serve(listener, router).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

fn authorization(h: &HeaderMap) -> &str {
    h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn v2(h: HeaderMap, bearer: bool, realm: String) -> Response {
    let (ok, challenge) = if bearer {
        (
            authorization(&h) == "Bearer good-token",
            format!(r#"Bearer realm="{realm}",service="test""#),
        )
    } else {
        (
            authorization(&h) == format!("Basic {USER_SECRET}"),
            r#"Basic realm="test""#.to_owned(),
        )
    };
    if ok {
        return "{}".into_response();
    }
    let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)], body).into_response()
}

async fn token(h: HeaderMap) -> Response {
    if authorization(&h) == format!("Basic {USER_SECRET}") {
        r#"{"token":"good-token","expires_in":300}"#.into_response()
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    }
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `wharf ARGS` with `DOCKER_CONFIG=config_dir` (and HOME there too), `stdin` as its input, `path` as PATH.
fn wharf(config_dir: &Path, args: &[&str], stdin: &str, path: Option<&Path>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
    cmd.args(args)
        .env("DOCKER_CONFIG", config_dir)
        .env("HOME", config_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(bin) = path {
        let mut dirs = vec![bin.to_owned()];
        dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
        cmd.env("PATH", std::env::join_paths(dirs).unwrap());
    }
    let mut child = cmd.spawn().expect("run wharf");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

const OTHER_KEYS: &str = r#"{"auths":{"keep.example":{"auth":"a2VlcDpw"}},"currentContext":"colima","proxies":{"default":{"httpProxy":"x"}}}"#;

fn login_and_logout(bearer: bool) {
    let addr = start_registry(bearer);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, OTHER_KEYS).unwrap();

    let wrong = wharf(
        dir.path(),
        &["login", &addr, "-u", "user", "--password-stdin"],
        "nope\n",
        None,
    );
    assert!(!wrong.ok, "{}", wrong.stdout);
    let line = wrong.stderr.trim_end();
    assert!(!line.contains('\n'), "one line: {line}");
    assert!(
        line.starts_with("wharf: login failed:") && line.contains(&addr),
        "{line}"
    );
    assert!(line.contains("401"), "{line}");
    assert!(!wrong.stdout.contains("Login Succeeded"));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), OTHER_KEYS, "nothing stored");

    let right = wharf(
        dir.path(),
        &["login", &addr, "-u", "user", "--password-stdin"],
        "secret\n",
        None,
    );
    assert!(right.ok, "{}", right.stderr);
    assert_eq!(right.stdout.trim(), "Login Succeeded");
    assert!(right.stderr.contains("unencrypted"), "{}", right.stderr);
    let v = read_json(&config);
    assert_eq!(v["auths"][&addr]["auth"], USER_SECRET);
    assert_eq!(v["auths"]["keep.example"]["auth"], "a2VlcDpw");
    assert_eq!(v["currentContext"], "colima");
    assert_eq!(v["proxies"]["default"]["httpProxy"], "x");
    let mode = std::fs::metadata(&config).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let out = wharf(dir.path(), &["logout", &addr], "", None);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), format!("Removing login credentials for {addr}"));
    let v = read_json(&config);
    assert!(v["auths"].get(&addr).is_none(), "{v}");
    assert_eq!(v["auths"]["keep.example"]["auth"], "a2VlcDpw");
    assert_eq!(v["currentContext"], "colima");
    let out = wharf(dir.path(), &["logout", &addr], "", None);
    assert!(out.ok && out.stdout.contains("Not logged in"), "{}", out.stdout);
}

#[test]
fn basic_auth_login_and_logout() {
    login_and_logout(false);
}

#[test]
fn bearer_token_login_and_logout() {
    login_and_logout(true);
}

#[test]
fn password_flag_and_fresh_config_dir() {
    let addr = start_registry(false);
    let dir = tempfile::tempdir().unwrap();
    let docker = dir.path().join("not-yet");
    let out = wharf(
        &docker,
        &["login", &format!("http://{addr}/"), "-u", "user", "-p", "secret"],
        "",
        None,
    );
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr.contains("--password-stdin"),
        "warns about -p: {}",
        out.stderr
    );
    assert_eq!(
        read_json(&docker.join("config.json"))["auths"][&addr]["auth"],
        USER_SECRET
    );

    let out = wharf(&docker, &["login", &addr, "-u", "user"], "", None);
    assert!(!out.ok && out.stderr.contains("--password-stdin"), "{}", out.stderr);
    // An unreachable registry: one line that says so.
    let out = wharf(
        &docker,
        &["login", "127.0.0.1:1", "-u", "user", "--password-stdin"],
        "x",
        None,
    );
    assert!(!out.ok && out.stderr.trim_end().lines().count() == 1, "{}", out.stderr);
    assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
}

/// `docker-credential-test` that records each call (`ACTION INPUT`) in `calls`.
fn recording_helper(bin: &Path, calls: &Path) -> PathBuf {
    std::fs::create_dir_all(bin).unwrap();
    let p = bin.join("docker-credential-test");
    let script = format!(
        "#!/bin/sh\ninput=$(cat)\necho \"$1 $input\" >> '{}'\nexit 0\n",
        calls.display()
    );
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn creds_store_helper_gets_store_and_erase() {
    let addr = start_registry(false);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let original = r#"{"credsStore": "test", "currentContext": "colima"}"#;
    std::fs::write(&config, original).unwrap();
    let bin = dir.path().join("bin");
    let calls = dir.path().join("calls");
    recording_helper(&bin, &calls);

    let wrong = wharf(
        dir.path(),
        &["login", &addr, "-u", "user", "--password-stdin"],
        "bad",
        Some(&bin),
    );
    assert!(!wrong.ok);
    assert!(!calls.exists(), "nothing stored after a refused login");

    let out = wharf(
        dir.path(),
        &["login", &addr, "-u", "user", "--password-stdin"],
        "secret",
        Some(&bin),
    );
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "Login Succeeded");
    assert!(!out.stderr.contains("unencrypted"), "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        original,
        "config.json untouched"
    );

    let out = wharf(dir.path(), &["logout", &addr], "", Some(&bin));
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), format!("Removing login credentials for {addr}"));
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        format!("store {{\"ServerURL\":\"{addr}\",\"Username\":\"user\",\"Secret\":\"secret\"}}\nerase {addr}\n")
    );

    // Without the helper on PATH, logout says which helper is missing, on one line.
    let out = wharf(dir.path(), &["logout", &addr], "", None);
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("docker-credential-test") && out.stderr.trim_end().lines().count() == 1);
}

/// On a terminal, `wharf login HOST` asks for the username and the password (without echo), as docker does. Run under
/// `script`, which gives it a pseudo-terminal fed from our pipe.
#[test]
fn login_asks_on_a_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: util-linux `script` is not installed");
        return;
    }
    let addr = start_registry(false);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let command = format!("{} login {addr}", env!("CARGO_BIN_EXE_wharf"));
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("DOCKER_CONFIG", dir.path())
        .env("HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Everything the terminal shows, as it comes.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let wait_for = |prompt: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !String::from_utf8_lossy(&seen.lock().unwrap()).contains(prompt) {
            assert!(std::time::Instant::now() < deadline, "no {prompt:?} prompt");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    // Each answer typed once its prompt is shown (typed earlier, the terminal would echo it before wharf turned
    // echo off).
    wait_for("Username:");
    stdin.write_all(b"user\n").unwrap();
    wait_for("Password:");
    // rpassword turns echo off just after printing its prompt: a little time lets it. Were it too short, the test
    // would fail (the password echoed), never pass wrongly.
    std::thread::sleep(std::time::Duration::from_millis(100));
    stdin.write_all(b"secret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    reader.join().unwrap();
    let text = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("secret"), "the password was echoed: {text}");
    assert!(text.contains("Login Succeeded"), "{text}");
    assert_eq!(read_json(&config)["auths"][&addr]["auth"], USER_SECRET);
}
