//! Access control over real HTTP, as a matrix: identities × repositories × actions (plus the catalog and `/v2/`),
//! run against a `wharf serve` in each mode where wharf decides: `htpasswd` (basic auth on every request) and
//! `token` with wharf issuing the tokens (the client follows each `Bearer` challenge to `/auth/token` and retries).
//!
//! What each cell should answer comes from [`GRANTS`], a table written out by hand from the rules in [`config`]
//! (never from wharf's own rule matcher). Every mismatch is collected and the test fails once, listing them all
//! with the HTTP exchanges that led to each.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::Wharf;
use wharf_oci::Digest;
use wharf_oci::auth::{Challenge, parse_challenge};

/// `htpasswd -nbB -C 5 USER PASSWORD` (Apache 2.4); alice and bob are the same entries as in `auth.rs`.
/// Passwords: alice wonderland, bob builder, carol cupcake, admin hunter2, eve eavesdrop.
const USERS: &str = "\
alice:$2y$05$DPkd05OuxG7MQ/pWDC6RMONuiRyQKBSOi1uSMDzTZPxaCsOkYRR0O
bob:$2y$05$F7/iHujTuok6c4Xch.01guz/wvmkj4l64nvzUYz/zfWjRxTK3bgyu
carol:$2y$05$PpABSkrPOXueZob6Vt0tc.g3GYr3WBoF5U1EUgG88vuT5xn3qBU9q
admin:$2y$05$.Qf5t5ajFXx61oznMDW4RO.ig2AP5PPAWSoMMarIZLzqvWIGwaaGS
eve:$2y$05$h6PuLSa7xlx3ro8Bn9cKPOO4s7noO9rq2SCM05GNDfn.RDckZIEA2
";

/// `openssl ecparam -genkey -name prime256v1 -noout`: a test-only P-256 signing key.
const TOKEN_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIC6cGAR8jWl9Fz2diNwHaGnFLt/FaZvRfkH5eq2QOpu5oAoGCCqGSM49
AwEHoUQDQgAE0Msu6quSaZFP5Zh27kV3hkWWf1QIE0eTGTxvldxQ/ZUd98G0fMub
FzA2/wDpTumrFtZ2k+NElIM4uxbHaJax/g==
-----END EC PRIVATE KEY-----
";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// The repositories of the matrix. `team/app/sub` is nested one level below `team/*`, which must not match it.
const REPOS: [&str; 5] = ["team/app", "team/app/sub", "public/x/y", "shared/z", "private/secret"];

/// Who calls: a name (used in tags), and the basic credentials it presents (none: anonymous).
struct Who {
    name: &'static str,
    creds: Option<(&'static str, &'static str)>,
}

const WHO: [Who; 7] = [
    Who {
        name: "anonymous",
        creds: None,
    },
    Who {
        name: "alice",
        creds: Some(("alice", "wonderland")),
    },
    Who {
        name: "alice-badpw",
        creds: Some(("alice", "wonderland!")),
    },
    Who {
        name: "bob",
        creds: Some(("bob", "builder")),
    },
    Who {
        name: "carol",
        creds: Some(("carol", "cupcake")),
    },
    Who {
        name: "admin",
        creds: Some(("admin", "hunter2")),
    },
    Who {
        name: "eve",
        creds: Some(("eve", "eavesdrop")),
    },
];

/// What each identity may do, worked out by hand from the rules in [`config`]: `r` pull, `w` push, `d` delete,
/// `-` nothing, per repository in the order of [`REPOS`]; then whether it may list the catalog. Rows are in the
/// order of [`WHO`]. `anonymous` rules grant everyone, so every valid user may pull public/x/y; `alice-badpw` has no
/// valid credentials, so its row holds nothing of its own.
#[rustfmt::skip]
const GRANTS: [(&str, [&str; 5], bool); 7] = [
    //               team/app  team/app/sub  public/x/y  shared/z  private/secret  catalog
    ("anonymous",   ["-",      "-",          "r",        "-",      "-"],           false),
    ("alice",       ["rw",     "-",          "r",        "r",      "-"],           false),
    ("alice-badpw", ["-",      "-",          "-",        "-",      "-"],           false),
    ("bob",         ["r",      "-",          "r",        "r",      "-"],           false),
    ("carol",       ["r",      "-",          "r",        "r",      "-"],           false),
    ("admin",       ["rwd",    "rwd",        "rwd",      "rwd",    "rwd"],         true),
    ("eve",         ["-",      "-",          "r",        "r",      "-"],           false),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Htpasswd,
    Token,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Htpasswd => "htpasswd",
            Mode::Token => "token",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    fn letter(self) -> char {
        match self {
            Action::Pull => 'r',
            Action::Push => 'w',
            Action::Delete => 'd',
        }
    }

    fn name(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    /// The scope a token must carry, as the challenge should name it (a push also reads, as clients ask).
    fn scope(self, repo: &str) -> String {
        match self {
            Action::Pull => format!("repository:{repo}:pull"),
            Action::Push => format!("repository:{repo}:pull,push"),
            Action::Delete => format!("repository:{repo}:delete"),
        }
    }
}

/// The expected answer of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Allowed: this status.
    Ok(u16),
    /// Refused: this status and spec error code.
    No(u16, &'static str),
}

const UNAUTHORIZED: Want = Want::No(401, "UNAUTHORIZED");
const DENIED: Want = Want::No(403, "DENIED");

fn who_index(name: &str) -> usize {
    WHO.iter().position(|w| w.name == name).expect("known identity")
}

/// Whether `who` may do `action` to `repo` according to [`GRANTS`].
fn granted(who: usize, repo: usize, action: Action) -> bool {
    assert_eq!(GRANTS[who].0, WHO[who].name, "GRANTS rows follow WHO");
    GRANTS[who].1[repo].contains(action.letter())
}

/// The answer to a refused request: 401 without valid credentials, 403 for a known user the rules refuse.
fn refusal(who: usize) -> Want {
    match WHO[who].name {
        "anonymous" | "alice-badpw" => UNAUTHORIZED,
        _ => DENIED,
    }
}

/// The expected answer of `who` doing `action` to `repo` (`ok`: the status on success).
///
/// In token mode the client sends each request without credentials first and only presents them (at the token
/// endpoint) when challenged, so whatever anonymous may do succeeds whatever the credentials — even wrong ones. In
/// htpasswd mode the credentials go with every request, and wrong ones are refused even where anonymous may pull.
fn want(mode: Mode, who: usize, repo: usize, action: Action, ok: u16) -> Want {
    let anonymous_may = granted(who_index("anonymous"), repo, action);
    if granted(who, repo, action) || (mode == Mode::Token && anonymous_may) {
        Want::Ok(ok)
    } else {
        refusal(who)
    }
}

/// `GET /v2/_catalog`: `catalog = ["admin"]`.
fn want_catalog(who: usize) -> Want {
    if GRANTS[who].2 { Want::Ok(200) } else { refusal(who) }
}

/// `GET /v2/`: any valid credentials. In token mode an anonymous client that follows the challenge gets a (valid,
/// empty) anonymous token, and a valid token is valid credentials, as in docker/distribution.
fn want_base(mode: Mode, who: usize) -> Want {
    match (WHO[who].name, mode) {
        ("alice-badpw", _) | ("anonymous", Mode::Htpasswd) => UNAUTHORIZED,
        _ => Want::Ok(200),
    }
}

/// Writes the users, the key and the config for `mode` into `dir`; returns the config path.
fn config(dir: &Path, mode: Mode) -> PathBuf {
    let users = dir.join("users.htpasswd");
    std::fs::write(&users, USERS).unwrap();
    let token = match mode {
        Mode::Htpasswd => String::new(),
        Mode::Token => {
            let key = dir.join("token.key");
            std::fs::write(&key, TOKEN_KEY).unwrap();
            format!("\n[auth.token]\nsigning_key = {:?}\n", key.display().to_string())
        }
    };
    let text = format!(
        r#"
[auth]
mode = "{mode}"
htpasswd = {users:?}
catalog = ["admin"]

[[auth.rules]]
subjects = ["alice"]
repositories = ["team/*"]
actions = ["pull", "push"]

[[auth.rules]]
subjects = ["group:ci"]
repositories = ["team/*"]
actions = ["pull"]

[[auth.rules]]
subjects = ["admin"]
repositories = ["**"]
actions = ["*"]

[[auth.rules]]
subjects = ["authenticated"]
repositories = ["shared/*"]
actions = ["pull"]

[[auth.rules]]
subjects = ["anonymous"]
repositories = ["public/**"]
actions = ["pull"]

[auth.groups]
ci = ["bob", "carol"]
{token}"#,
        mode = mode.name(),
        users = users.display().to_string(),
    );
    let path = dir.join("wharf.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// One answer, as the client finally saw it, with the exchanges that led to it.
struct Reply {
    status: u16,
    /// `errors[0].code` of a JSON error body.
    code: Option<String>,
    challenge: Option<String>,
    digest: Option<String>,
    body: Vec<u8>,
    /// One line per HTTP exchange: method, path, credentials sent, status, code, challenge.
    trace: Vec<String>,
    /// What was wrong on the way (a challenge with the wrong scheme or scope).
    notes: Vec<String>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    fn trace(&self) -> String {
        self.trace.iter().map(|l| format!("\n      {l}")).collect()
    }
}

/// An identity's client, in one mode, against one server.
struct Session<'a> {
    who: &'a Who,
    mode: Mode,
    client: reqwest::Client,
    base: String,
}

impl Session<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one request and reads the whole answer, logging the exchange.
    async fn exchange(&self, rb: reqwest::RequestBuilder, trace: &mut Vec<String>) -> Reply {
        let req = rb.build().expect("request builds");
        let sent = match req.headers().get("authorization").and_then(|v| v.to_str().ok()) {
            Some(v) if v.starts_with("Basic ") => "basic",
            Some(v) if v.starts_with("Bearer ") => "bearer",
            Some(_) => "other",
            None => "none",
        };
        let line = format!(
            "{} {}{} [auth: {sent}]",
            req.method(),
            req.url().path(),
            req.url().query().map(|q| format!("?{q}")).unwrap_or_default()
        );
        let resp = self.client.execute(req).await.expect("wharf answers");
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let challenge = header("www-authenticate");
        let digest = header("docker-content-digest");
        let body = resp.bytes().await.expect("body").to_vec();
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned));
        trace.push(format!(
            "{line} -> {status} {}{}",
            code.as_deref().unwrap_or(""),
            challenge
                .as_deref()
                .map(|c| format!(" (WWW-Authenticate: {c})"))
                .unwrap_or_default()
        ));
        Reply {
            status,
            code,
            challenge,
            digest,
            body,
            trace: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Sends `rb` as this identity's client does in this mode: basic credentials on every request (htpasswd), or
    /// no credentials first, then on a 401 a token for the challenge's scope from its realm and one retry (token).
    /// `scope` is what the challenge should ask for (`None`: no scope, for `/v2/`); wrong challenges are noted.
    async fn send(&self, rb: reqwest::RequestBuilder, scope: Option<&str>) -> Reply {
        let mut trace = Vec::new();
        let mut notes = Vec::new();
        let first = match (self.mode, self.who.creds) {
            (Mode::Htpasswd, Some((user, password))) => rb.try_clone().unwrap().basic_auth(user, Some(password)),
            _ => rb.try_clone().unwrap(),
        };
        let mut reply = self.exchange(first, &mut trace).await;
        if reply.status == 401 {
            let challenge = reply.challenge.clone().unwrap_or_default();
            match (self.mode, parse_challenge(&challenge)) {
                (Mode::Htpasswd, Some(Challenge::Basic)) => {}
                (Mode::Htpasswd, _) => notes.push(format!("401 without a Basic challenge: {challenge:?}")),
                (
                    Mode::Token,
                    Some(Challenge::Bearer {
                        realm,
                        service,
                        scope: asked,
                    }),
                ) => {
                    if asked.as_deref() != scope {
                        notes.push(format!("challenge scope {asked:?}, expected {scope:?}"));
                    }
                    reply = self
                        .token_and_retry(rb, &realm, service, asked, &mut trace, &mut notes)
                        .await;
                }
                (Mode::Token, _) => notes.push(format!("401 without a Bearer challenge: {challenge:?}")),
            }
        }
        reply.trace = trace;
        reply.notes = notes;
        reply
    }

    async fn token_and_retry(
        &self,
        rb: reqwest::RequestBuilder,
        realm: &str,
        service: Option<String>,
        scope: Option<String>,
        trace: &mut Vec<String>,
        notes: &mut Vec<String>,
    ) -> Reply {
        let mut url = reqwest::Url::parse(realm).expect("the realm is a URL");
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = &service {
                q.append_pair("service", s);
            }
            if let Some(s) = &scope {
                q.append_pair("scope", s);
            }
        }
        let mut get = self.client.get(url);
        if let Some((user, password)) = self.who.creds {
            get = get.basic_auth(user, Some(password));
        }
        let answer = self.exchange(get, trace).await;
        if answer.status != 200 {
            return answer;
        }
        let Some(token) = answer.json()["token"].as_str().map(str::to_owned) else {
            notes.push("token endpoint answered 200 without a token".into());
            return answer;
        };
        let retry = self.exchange(rb.bearer_auth(token), trace).await;
        if retry.status == 401
            && !retry
                .challenge
                .as_deref()
                .is_some_and(|c| c.contains(r#"error="insufficient_scope""#))
        {
            notes.push(format!(
                "401 to a valid token without error=\"insufficient_scope\": {:?}",
                retry.challenge
            ));
        }
        retry
    }

    /// Pushes a one-blob image to `repo:tag`: the config blob (monolithic POST), then the manifest.
    async fn push(&self, repo: &str, tag: &str, seed: &str) -> Pushed {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed:?}}}"#).into_bytes();
        let config_digest = Digest::sha256_of(&config).to_string();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [],
        }))
        .unwrap();
        let scope = Action::Push.scope(repo);
        let blob = self
            .send(
                self.client
                    .post(self.url(&format!("/v2/{repo}/blobs/uploads/?digest={config_digest}")))
                    .header("content-type", "application/octet-stream")
                    .body(config),
                Some(&scope),
            )
            .await;
        let put = self
            .send(
                self.client
                    .put(self.url(&format!("/v2/{repo}/manifests/{tag}")))
                    .header("content-type", OCI_MANIFEST)
                    .body(manifest.clone()),
                Some(&scope),
            )
            .await;
        Pushed {
            digest: Digest::sha256_of(&manifest).to_string(),
            config: config_digest,
            blob,
            put,
        }
    }

    async fn get_manifest(&self, repo: &str, reference: &str) -> Reply {
        let rb = self
            .client
            .get(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("accept", OCI_MANIFEST);
        self.send(rb, Some(&Action::Pull.scope(repo))).await
    }
}

/// What a push sent, and the answers to its two requests.
struct Pushed {
    digest: String,
    config: String,
    blob: Reply,
    put: Reply,
}

/// A server in one mode and the mismatches found on it.
struct Run {
    mode: Mode,
    cells: usize,
    requests: usize,
    mismatches: Vec<String>,
    /// The end of the server's log, when something went wrong.
    log_tail: String,
}

impl Run {
    /// Records a mismatch if `reply` is not `want` (status, and the error code of a refusal) or noted a bad
    /// challenge. Returns whether it matched.
    fn check(&mut self, cell: &str, want: Want, reply: &Reply) -> bool {
        self.requests += 1;
        let ok = match want {
            Want::Ok(status) => reply.status == status,
            Want::No(status, code) => reply.status == status && reply.code.as_deref() == Some(code),
        };
        if !ok {
            self.mismatches.push(format!(
                "[{}] {cell}: want {want:?}, got {} {}{}",
                self.mode.name(),
                reply.status,
                reply.code.as_deref().unwrap_or("(no error code)"),
                reply.trace()
            ));
        }
        for note in &reply.notes {
            self.mismatches
                .push(format!("[{}] {cell}: {note}{}", self.mode.name(), reply.trace()));
        }
        ok && reply.notes.is_empty()
    }

    fn fail(&mut self, cell: &str, what: String) {
        self.mismatches.push(format!("[{}] {cell}: {what}", self.mode.name()));
    }
}

fn sorted_repos() -> Vec<String> {
    let mut all: Vec<String> = REPOS.iter().map(|r| r.to_string()).collect();
    all.sort();
    all
}

fn session<'a>(reg: &Wharf, mode: Mode, who: &'a Who) -> Session<'a> {
    Session {
        who,
        mode,
        client: common::client(),
        base: format!("http://{}", reg.addr),
    }
}

/// Runs the whole matrix against a fresh server in `mode`.
async fn run(mode: Mode) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = config(dir, mode);
    let log = dir.join("wharf.log");
    let reg = Wharf::start_with(&dir.join("root"), &["--config", config.to_str().unwrap()], Some(&log));
    let sessions: Vec<Session> = WHO.iter().map(|w| session(&reg, mode, w)).collect();
    let admin = &sessions[who_index("admin")];
    let mut run = Run {
        mode,
        cells: 0,
        requests: 0,
        mismatches: Vec::new(),
        log_tail: String::new(),
    };

    // Setup, as admin: `v1` in every repository (what the pulls read), and one throwaway manifest per delete cell.
    let mut v1 = Vec::new();
    let mut throwaway = vec![Vec::new(); WHO.len()];
    for repo in REPOS {
        let p = admin.push(repo, "v1", &format!("{repo} v1")).await;
        assert!(
            p.blob.status == 201 && p.put.status == 201,
            "[{}] setup: admin pushes {repo}:v1: {} {}{}{}",
            mode.name(),
            p.blob.status,
            p.put.status,
            p.blob.trace(),
            p.put.trace()
        );
        v1.push(p.digest);
        for (w, who) in WHO.iter().enumerate() {
            let tag = format!("del-{}", who.name);
            let p = admin.push(repo, &tag, &format!("{repo} {tag}")).await;
            assert!(
                p.blob.status == 201 && p.put.status == 201,
                "[{}] setup: admin pushes {repo}:{tag}: {} {}{}{}",
                mode.name(),
                p.blob.status,
                p.put.status,
                p.blob.trace(),
                p.put.trace()
            );
            throwaway[w].push(p.digest);
        }
    }

    // The matrix. Pushes go to `push-WHO` with content unique to the cell; deletes remove the cell's own manifest.
    let mut pushed: Vec<Vec<Pushed>> = (0..WHO.len()).map(|_| Vec::new()).collect();
    for (w, (who, s)) in WHO.iter().zip(&sessions).enumerate() {
        for (r, repo) in REPOS.iter().enumerate() {
            for action in Action::ALL {
                run.cells += 1;
                let cell = format!("{} × {repo} × {}", who.name, action.name());
                match action {
                    Action::Pull => {
                        let reply = s.get_manifest(repo, "v1").await;
                        let wanted = want(mode, w, r, action, 200);
                        if run.check(&format!("{cell} (GET manifest v1)"), wanted, &reply)
                            && wanted == Want::Ok(200)
                            && reply.digest.as_deref() != Some(v1[r].as_str())
                        {
                            run.fail(&cell, format!("pulled digest {:?}, pushed {}", reply.digest, v1[r]));
                        }
                    }
                    Action::Push => {
                        let p = s
                            .push(
                                repo,
                                &format!("push-{}", who.name),
                                &format!("{repo} push by {}", who.name),
                            )
                            .await;
                        run.check(
                            &format!("{cell} (POST blob upload)"),
                            want(mode, w, r, action, 201),
                            &p.blob,
                        );
                        run.check(&format!("{cell} (PUT manifest)"), want(mode, w, r, action, 201), &p.put);
                        pushed[w].push(p);
                    }
                    Action::Delete => {
                        let digest = &throwaway[w][r];
                        let rb = s.client.delete(s.url(&format!("/v2/{repo}/manifests/{digest}")));
                        let reply = s.send(rb, Some(&action.scope(repo))).await;
                        run.check(
                            &format!("{cell} (DELETE manifest by digest)"),
                            want(mode, w, r, action, 202),
                            &reply,
                        );
                    }
                }
            }
        }

        // Per identity: the catalog, and `/v2/` (any valid credentials).
        run.cells += 2;
        let reply = s
            .send(s.client.get(s.url("/v2/_catalog")), Some("registry:catalog:*"))
            .await;
        let cell = format!("{} × catalog (GET /v2/_catalog)", who.name);
        if run.check(&cell, want_catalog(w), &reply) && reply.status == 200 {
            let listed: Vec<String> = serde_json::from_value(reply.json()["repositories"].clone()).unwrap_or_default();
            if listed != sorted_repos() {
                run.fail(&cell, format!("lists {listed:?}, expected {:?}", sorted_repos()));
            }
        }
        let reply = s.send(s.client.get(s.url("/v2/")), None).await;
        run.check(&format!("{} × login (GET /v2/)", who.name), want_base(mode, w), &reply);
    }

    // Afterwards, admin looks: refused pushes left no manifest, tag or blob; allowed ones did; refused deletes left
    // the manifest in place; and each repository's tags are exactly what the allowed cells made them.
    for (r, repo) in REPOS.iter().enumerate() {
        let mut tags: BTreeSet<String> = ["v1".to_owned()].into();
        for (w, who) in WHO.iter().enumerate() {
            let p = &pushed[w][r];
            let push_ok = want(mode, w, r, Action::Push, 201) == Want::Ok(201);
            let (status, code) = if push_ok {
                (200, None)
            } else {
                (404, Some("MANIFEST_UNKNOWN"))
            };
            let tag = format!("push-{}", who.name);
            for reference in [tag.as_str(), p.digest.as_str()] {
                let reply = admin.get_manifest(repo, reference).await;
                if reply.status != status || (code.is_some() && reply.code.as_deref() != code) {
                    run.fail(
                        &format!("{} × {repo} × push (afterwards)", who.name),
                        format!(
                            "admin GET manifest {reference}: {} {:?}, expected {status} {code:?}{}",
                            reply.status,
                            reply.code,
                            reply.trace()
                        ),
                    );
                }
            }
            let rb = admin.client.head(admin.url(&format!("/v2/{repo}/blobs/{}", p.config)));
            let reply = admin.send(rb, Some(&Action::Pull.scope(repo))).await;
            if reply.status != status {
                run.fail(
                    &format!("{} × {repo} × push (afterwards)", who.name),
                    format!(
                        "admin HEAD config blob {}: {}, expected {status}{}",
                        p.config,
                        reply.status,
                        reply.trace()
                    ),
                );
            }
            if push_ok {
                tags.insert(tag);
            }

            let delete_ok = want(mode, w, r, Action::Delete, 202) == Want::Ok(202);
            let reply = admin.get_manifest(repo, &throwaway[w][r]).await;
            let expected = if delete_ok { 404 } else { 200 };
            if reply.status != expected {
                run.fail(
                    &format!("{} × {repo} × delete (afterwards)", who.name),
                    format!(
                        "admin GET manifest {}: {}, expected {expected}{}",
                        throwaway[w][r],
                        reply.status,
                        reply.trace()
                    ),
                );
            }
            if !delete_ok {
                tags.insert(format!("del-{}", who.name));
            }
        }
        let reply = admin
            .send(
                admin.client.get(admin.url(&format!("/v2/{repo}/tags/list"))),
                Some(&Action::Pull.scope(repo)),
            )
            .await;
        let listed: BTreeSet<String> = serde_json::from_value(reply.json()["tags"].clone()).unwrap_or_default();
        if reply.status != 200 || listed != tags {
            run.fail(
                &format!("{repo} (afterwards)"),
                format!(
                    "admin lists tags: {} {listed:?}, expected 200 {tags:?}{}",
                    reply.status,
                    reply.trace()
                ),
            );
        }
    }

    // No refused push created a repository either: the catalog holds exactly the repositories admin made.
    let reply = admin
        .send(admin.client.get(admin.url("/v2/_catalog")), Some("registry:catalog:*"))
        .await;
    let listed: Vec<String> = serde_json::from_value(reply.json()["repositories"].clone()).unwrap_or_default();
    if reply.status != 200 || listed != sorted_repos() {
        run.fail(
            "catalog (afterwards)",
            format!(
                "admin lists {} {listed:?}, expected 200 {:?}{}",
                reply.status,
                sorted_repos(),
                reply.trace()
            ),
        );
    }

    let text = reg.log_text();
    if !run.mismatches.is_empty() && !text.trim().is_empty() {
        let mut tail = String::new();
        for line in text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev() {
            let _ = write!(tail, "\n      {line}");
        }
        run.log_tail = format!("\n  [{}] last lines of the server log:{tail}", mode.name());
    }
    run
}

#[tokio::test]
async fn access_matrix_in_both_modes() {
    let started = Instant::now();
    let (htpasswd, token) = tokio::join!(run(Mode::Htpasswd), run(Mode::Token));
    let runs = [htpasswd, token];
    let cells: usize = runs.iter().map(|r| r.cells).sum();
    let requests: usize = runs.iter().map(|r| r.requests).sum();
    println!(
        "auth matrix: {} identities × {} repositories × {} actions + catalog and /v2/ per identity = {} cells per \
         mode × {} modes = {cells} cells ({requests} checked answers) in {:.1?}",
        WHO.len(),
        REPOS.len(),
        Action::ALL.len(),
        runs[0].cells,
        runs.len(),
        started.elapsed()
    );
    let mismatches: Vec<&String> = runs.iter().flat_map(|r| &r.mismatches).collect();
    let logs: String = runs.iter().map(|r| r.log_tail.as_str()).collect();
    assert!(
        mismatches.is_empty(),
        "{} mismatches in the auth matrix:\n  {}{logs}",
        mismatches.len(),
        mismatches.iter().map(|m| m.as_str()).collect::<Vec<_>>().join("\n  ")
    );
}
