//! `wharf serve` with `[auth] mode = "token"` (wharf issues the tokens), driven by the real client: `wharf login`,
//! `wharf push`/`pull` (bearer token flow from the challenges), and raw requests for what the client hides.
//!
//! alice may push and pull team/* and public/**; bob may only pull them; anonymous may pull public/** only.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Wharf, bytes};
use wharf_oci::Digest;

/// Written by `htpasswd -nbB alice wonderland` and `htpasswd -nbB bob builder` (Apache 2.4).
const USERS: &str = "\
alice:$2y$05$DPkd05OuxG7MQ/pWDC6RMONuiRyQKBSOi1uSMDzTZPxaCsOkYRR0O
bob:$2y$05$F7/iHujTuok6c4Xch.01guz/wvmkj4l64nvzUYz/zfWjRxTK3bgyu
";

/// `openssl ecparam -genkey -name prime256v1 -noout`: a test-only signing key.
const TOKEN_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIKCVYCINuzoaGaX61Jo1ljJA/ykVTFbuPTs6pR+ehvJuoAoGCCqGSM49
AwEHoUQDQgAEjAre8T532ksvOISrmpLiS9g6Y1+7zeEW/zjpoWcFdJD3yipZbfvv
UKGvHfjQGOBGvtDFECUz7FuKUmoib2WLpQ==
-----END EC PRIVATE KEY-----
";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Writes the users, the key and a token-mode config into `dir`; returns the config path.
fn token_config(dir: &Path, expiry_secs: u64, users: &str) -> PathBuf {
    std::fs::write(dir.join("users.htpasswd"), users).unwrap();
    std::fs::write(dir.join("token.key"), TOKEN_KEY).unwrap();
    let config = format!(
        r#"
[auth]
mode = "token"
htpasswd = {users:?}

[[auth.rules]]
subjects = ["alice"]
repositories = ["team/*", "public/**"]
actions = ["pull", "push"]

[[auth.rules]]
subjects = ["group:readers"]
repositories = ["team/*"]
actions = ["pull"]

[[auth.rules]]
subjects = ["anonymous"]
repositories = ["public/**"]
actions = ["pull"]

[auth.groups]
readers = ["bob"]

[auth.token]
signing_key = {key:?}
expiry_secs = {expiry_secs}
"#,
        users = dir.join("users.htpasswd").display().to_string(),
        key = dir.join("token.key").display().to_string(),
    );
    let path = dir.join("wharf.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn start(dir: &Path, expiry_secs: u64) -> Wharf {
    let config = token_config(dir, expiry_secs, USERS);
    Wharf::start_with(
        &dir.join("root"),
        &["--config", config.to_str().unwrap()],
        Some(&dir.join("wharf.log")),
    )
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `wharf ARGS` as `who` (its own DOCKER_CONFIG and content store under `dir`), with `stdin`.
fn wharf(dir: &Path, who: &str, args: &[&str], stdin: &str) -> Run {
    use std::io::Write;
    let home = dir.join(format!("home-{who}"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(args)
        .env("DOCKER_CONFIG", home.join("docker"))
        .env("HOME", &home)
        .env("WHARF_STORE", home.join("store"))
        .env_remove("WHARF_SRC_CREDS")
        .env_remove("WHARF_DEST_CREDS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wharf");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An OCI layout holding one image tagged `v1`; returns its `oci:` name and manifest digest.
fn layout(dir: &Path, seed: u64) -> (String, String) {
    let root = dir.join(format!("layout-{seed}"));
    std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
    std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let put = |data: &[u8]| {
        let d = Digest::sha256_of(data).to_string();
        std::fs::write(root.join("blobs/sha256").join(d.trim_start_matches("sha256:")), data).unwrap();
        d
    };
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let layer = bytes(seed, 300_000);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let digest = put(&manifest);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest,
        "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
    std::fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    (format!("oci:{}:v1", root.display()), digest)
}

/// `wharf push` of `src` to `dst` with alice's credentials given on the command line; must succeed.
fn push_as_alice(dir: &Path, src: &str, dst: &str) {
    let r = wharf(
        dir,
        "alice",
        &["push", "--quiet", "--dest-creds", "alice:wonderland", src, dst],
        "",
    );
    assert!(r.ok, "{}", r.stderr);
}

fn pulled_digest(dir: &Path, name: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(name).join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_owned()
}

async fn json(r: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or_default()
}

/// A token from the challenge's realm, as a client gets it.
async fn token(c: &reqwest::Client, challenge: &str, creds: Option<(&str, &str)>) -> String {
    let Some(wharf_oci::auth::Challenge::Bearer { realm, service, scope }) =
        wharf_oci::auth::parse_challenge(challenge)
    else {
        panic!("not a bearer challenge: {challenge}");
    };
    // Service and scope hold nothing a query string needs escaped here (`:`, `,`, `/`).
    let mut url = format!("{realm}?service={}", service.unwrap());
    if let Some(s) = scope {
        url.push_str(&format!("&scope={s}"));
    }
    let mut req = c.get(url);
    if let Some((u, p)) = creds {
        req = req.basic_auth(u, Some(p));
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "token endpoint");
    json(r).await["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn push_pull_and_refusals_through_the_token_flow() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let reg = start(dir, 300);
    let addr = reg.addr.clone();
    let c = common::client();

    // wharf login: a wrong password fails with the 401; the right one is saved where docker keeps it.
    let r = wharf(
        dir,
        "alice",
        &["login", &addr, "-u", "alice", "--password-stdin"],
        "nope\n",
    );
    assert!(!r.ok && r.stderr.contains("401"), "{}", r.stderr);
    let r = wharf(
        dir,
        "alice",
        &["login", &addr, "-u", "alice", "--password-stdin"],
        "wonderland\n",
    );
    assert!(r.ok && r.stdout.contains("Login Succeeded"), "{}", r.stderr);

    // alice pushes (stored credentials → token with pull,push).
    let (src, digest) = layout(dir, 1);
    for repo in ["team/app", "public/lib"] {
        let r = wharf(
            dir,
            "alice",
            &["push", "--quiet", &src, &format!("{addr}/{repo}:v1")],
            "",
        );
        assert!(r.ok, "alice pushes {repo}: {}", r.stderr);
    }

    // bob pulls team/app...
    let out = format!("oci:{}:v1", dir.join("bob-pull").display());
    let r = wharf(
        dir,
        "bob",
        &[
            "pull",
            "--quiet",
            "--src-creds",
            "bob:builder",
            &format!("{addr}/team/app:v1"),
            &out,
        ],
        "",
    );
    assert!(r.ok, "bob pulls: {}", r.stderr);
    assert_eq!(pulled_digest(dir, "bob-pull"), digest);
    // ...and is DENIED (403) on push.
    let (other, _) = layout(dir, 2);
    let r = wharf(
        dir,
        "bob",
        &[
            "push",
            "--dest-creds",
            "bob:builder",
            &other,
            &format!("{addr}/team/app:v2"),
        ],
        "",
    );
    assert!(!r.ok, "bob must not push");
    assert!(r.stderr.contains("403") && r.stderr.contains("DENIED"), "{}", r.stderr);
    let errors = r.stderr.trim_end().lines().filter(|l| !l.starts_with("blob ")).count();
    assert_eq!(errors, 1, "one line besides the progress: {}", r.stderr);
    // The same, raw: bob's token for pull,push grants pull only; the upload is refused with 403 DENIED.
    let r = c.post(reg.url("/v2/team/app/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.contains(r#"scope="repository:team/app:pull,push""#),
        "{challenge}"
    );
    let bob = token(&c, &challenge, Some(("bob", "builder"))).await;
    let r = c
        .post(reg.url("/v2/team/app/blobs/uploads/"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(json(r).await["errors"][0]["code"], "DENIED");
    let r = c
        .get(reg.url("/v2/team/app/manifests/v1"))
        .header("Accept", OCI_MANIFEST)
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "bob's token still pulls");

    // Anonymous: public/** only.
    let out = format!("oci:{}:v1", dir.join("anon-pull").display());
    let r = wharf(
        dir,
        "anonymous",
        &["pull", "--quiet", &format!("{addr}/public/lib:v1"), &out],
        "",
    );
    assert!(r.ok, "anonymous pulls public/lib: {}", r.stderr);
    assert_eq!(pulled_digest(dir, "anon-pull"), digest);
    let out = format!("oci:{}:v1", dir.join("anon-team").display());
    let r = wharf(dir, "anonymous", &["pull", &format!("{addr}/team/app:v1"), &out], "");
    assert!(
        !r.ok && r.stderr.contains("401"),
        "anonymous must not pull team/app: {}",
        r.stderr
    );
    let r = c
        .get(reg.url(&format!("/v2/public/lib/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "anonymous pull without a token round trip");
    let r = c
        .get(reg.url(&format!("/v2/team/app/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"].to_str().unwrap(),
        format!(r#"Bearer realm="http://{addr}/auth/token",service="wharf",scope="repository:team/app:pull""#)
    );

    // Wrong password at the token endpoint: 401.
    let r = c
        .get(reg.url("/auth/token?service=wharf&scope=repository:team/app:pull"))
        .basic_auth("alice", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(json(r).await["errors"][0]["code"], "UNAUTHORIZED");
}

#[tokio::test]
async fn expired_tokens_are_refused_and_a_new_one_is_fetched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let reg = start(dir, 1);
    let addr = reg.addr.clone();
    let c = common::client();
    let (src, digest) = layout(dir, 3);
    // The client copes with 1 s tokens (it renews them early, and again on any 401).
    push_as_alice(dir, &src, &format!("{addr}/team/app:v1"));

    let url = reg.url(&format!("/v2/team/app/manifests/{digest}"));
    let r = c.get(&url).send().await.unwrap();
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    let t = token(&c, &challenge, Some(("alice", "wonderland"))).await;
    assert_eq!(c.get(&url).bearer_auth(&t).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The stale token: 401 with an ordinary Bearer challenge that names the scope...
    let r = c.get(&url).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.starts_with(&format!(
            r#"Bearer realm="http://{addr}/auth/token",service="wharf",scope="repository:team/app:pull""#
        )),
        "{challenge}"
    );
    // ...which a client answers with a new token, and the retry goes through.
    let fresh = token(&c, &challenge, Some(("alice", "wonderland"))).await;
    assert_ne!(fresh, t);
    assert_eq!(c.get(&url).bearer_auth(&fresh).send().await.unwrap().status(), 200);
    // And the real client pulls from it.
    let out = format!("oci:{}:v1", dir.join("pulled").display());
    let r = wharf(
        dir,
        "alice",
        &[
            "pull",
            "--quiet",
            "--src-creds",
            "alice:wonderland",
            &format!("{addr}/team/app:v1"),
            &out,
        ],
        "",
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(pulled_digest(dir, "pulled"), digest);
}

#[test]
fn unsupported_htpasswd_hash_stops_the_server_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Line 3: an MD5 (apr1) entry, as `htpasswd -m` writes it.
    let users = format!("{USERS}carol:$apr1$Vq1ZFk3h$CVwQdGWFSV.ZGoiUh4qN5.\n");
    let config = token_config(dir, 300, &users);
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(dir.join("root"))
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "never started listening");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = dir.join("users.htpasswd");
    assert!(
        stderr.contains(&format!("{}:3: user \"carol\" has an MD5 (apr1) hash", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("htpasswd -B"), "{stderr}");
}

#[tokio::test]
async fn htpasswd_mode_with_the_client() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("users.htpasswd"), USERS).unwrap();
    let config = dir.join("wharf.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nmode = \"htpasswd\"\nrealm = \"wharf test\"\nhtpasswd = {:?}\n\
             [[auth.rules]]\nsubjects = [\"alice\"]\nrepositories = [\"**\"]\nactions = [\"*\"]\n\
             [[auth.rules]]\nsubjects = [\"bob\"]\nrepositories = [\"team/*\"]\nactions = [\"pull\"]\n\
             [[auth.rules]]\nsubjects = [\"anonymous\"]\nrepositories = [\"public/*\"]\nactions = [\"pull\"]\n",
            dir.join("users.htpasswd").display().to_string()
        ),
    )
    .unwrap();
    let reg = Wharf::start_with(
        &dir.join("root"),
        &["--config", config.to_str().unwrap()],
        Some(&dir.join("wharf.log")),
    );
    let addr = reg.addr.clone();
    let r = common::client().get(reg.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"wharf test\"");

    let r = wharf(
        dir,
        "alice",
        &["login", &addr, "-u", "alice", "--password-stdin"],
        "wonderland\n",
    );
    assert!(r.ok, "{}", r.stderr);
    let (src, digest) = layout(dir, 4);
    let r = wharf(
        dir,
        "alice",
        &["push", "--quiet", &src, &format!("{addr}/team/app:v1")],
        "",
    );
    assert!(r.ok, "{}", r.stderr);
    let out = format!("oci:{}:v1", dir.join("bob-pull").display());
    let creds = ["--src-creds", "bob:builder"];
    let r = wharf(
        dir,
        "bob",
        &[
            &["pull", "--quiet"],
            &creds[..],
            &[&format!("{addr}/team/app:v1"), &out],
        ]
        .concat(),
        "",
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(pulled_digest(dir, "bob-pull"), digest);
    let r = wharf(
        dir,
        "bob",
        &[
            "push",
            "--dest-creds",
            "bob:builder",
            &src,
            &format!("{addr}/team/other:v1"),
        ],
        "",
    );
    assert!(
        !r.ok && r.stderr.contains("403") && r.stderr.contains("DENIED"),
        "{}",
        r.stderr
    );
    let r = wharf(dir, "anonymous", &["pull", &format!("{addr}/team/app:v1"), &out], "");
    assert!(!r.ok && r.stderr.contains("username and password"), "{}", r.stderr);

    // An empty Basic credential (`skopeo --no-creds` sends `Basic Og==`) is anonymous: it reads what anonymous
    // may read, and nothing else.
    let r = wharf(
        dir,
        "alice",
        &["push", "--quiet", &src, &format!("{addr}/public/lib:v1")],
        "",
    );
    assert!(r.ok, "{}", r.stderr);
    let get = |path: &str| {
        common::client()
            .get(reg.url(path))
            .header("Authorization", "Basic Og==")
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
    };
    assert_eq!(get("/v2/public/lib/manifests/v1").await.unwrap().status(), 200);
    assert_eq!(get("/v2/team/app/manifests/v1").await.unwrap().status(), 401);

    // /metrics (repository names in its labels, traffic, users' activity) asks for credentials like /v2/.
    let r = common::client().get(reg.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = common::client()
        .get(reg.url("/metrics"))
        .basic_auth("bob", Some("builder"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("wharf_http_requests_total"));
}

/// `wharf preheat` reads the image through the registry client: from a token-auth registry it needs credentials
/// (`--creds`, or what `wharf login` stored), and the scheduler then lists the image's blobs for the seeds.
#[tokio::test]
async fn preheat_lists_an_image_of_a_token_auth_registry_with_the_callers_credentials() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let reg = start(dir, 300);
    let addr = reg.addr.clone();
    let (src, _) = layout(dir, 7);
    push_as_alice(dir, &src, &format!("{addr}/team/app:v1"));

    let mut sched = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["scheduler", "--listen", "127.0.0.1:0", "--token", "t0k"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(sched.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let sched_url = line[line.find("http://").unwrap()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let image = format!("{addr}/team/app:v1");
    let preheat = |who: &str, extra: &[&str]| {
        let mut args = vec![
            "preheat",
            image.as_str(),
            "--scheduler",
            sched_url.as_str(),
            "--token",
            "t0k",
        ];
        args.extend_from_slice(extra);
        wharf(dir, who, &args, "")
    };

    // Anonymous may not pull team/*: a one-line error that names the refusal.
    let r = preheat("carol", &[]);
    assert!(!r.ok, "anonymous preheat of a private image succeeded");
    assert!(
        r.stderr.contains("401") || r.stderr.contains("authentication"),
        "{}",
        r.stderr
    );
    let errors = r.stderr.trim().lines().filter(|l| !l.starts_with("blob ")).count();
    assert_eq!(errors, 1, "one line besides the progress: {}", r.stderr);

    // bob (pull only) with --creds, then with what `wharf login` stored.
    let r = preheat("bob", &["--creds", "bob:builder"]);
    assert!(r.ok && r.stderr.contains("preheat queued: 2 blobs"), "{}", r.stderr);
    let r = wharf(
        dir,
        "bob",
        &["login", &addr, "-u", "bob", "--password-stdin"],
        "builder\n",
    );
    assert!(r.ok, "{}", r.stderr);
    let r = preheat("bob", &[]);
    assert!(r.ok && r.stderr.contains("preheat queued: 2 blobs"), "{}", r.stderr);

    let c = common::client();
    let queued = c
        .get(format!("{sched_url}/v1/preheat?peer=seed-1"))
        .bearer_auth("t0k")
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status(), 200);
    let queued = json(queued).await;
    let blobs = queued["blobs"].as_array().unwrap();
    assert_eq!(blobs.len(), 2, "{queued}");
    assert!(blobs.iter().all(|b| b["repository"] == "team/app"), "{queued}");
    let _ = sched.kill();
    let _ = sched.wait();
}
