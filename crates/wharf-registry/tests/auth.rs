//! Authentication and authorization through the HTTP API: a users × repositories × actions matrix in htpasswd and
//! token mode, `/v2/` and the catalog, cross-repository mounts, expired tokens, an external issuer, and the token
//! endpoint itself. Servers run in-process on ephemeral ports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use wharf_oci::Digest;
use wharf_registry::auth::{Auth, Htpasswd, Issuer, Rule, Rules, Subject, TrustedKey, Verifier};
use wharf_registry::{App, RegistryConfig};
use wharf_storage::{CacheConfig, CachedStore, FsStore};

const USERS: [&str; 4] = ["alice", "bob", "carol", "admin"];

fn htpasswd() -> Htpasswd {
    // Cost 4 keeps the test fast; the format is what `htpasswd -B` writes.
    let text: String = USERS
        .iter()
        .map(|u| format!("{u}:{}\n", bcrypt::hash(format!("{u}-pw"), 4).unwrap()))
        .collect();
    Htpasswd::parse(&text, "test.htpasswd").unwrap()
}

fn rules() -> Rules {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    Rules::new(
        vec![
            Rule::parse(&s(&["alice"]), &s(&["team/*"]), &s(&["pull", "push"])).unwrap(),
            Rule::parse(&s(&["group:ci"]), &s(&["team/*"]), &s(&["pull"])).unwrap(),
            Rule::parse(&s(&["carol"]), &s(&["ci/**"]), &s(&["*"])).unwrap(),
            Rule::parse(&s(&["anonymous"]), &s(&["public/**"]), &s(&["pull"])).unwrap(),
            Rule::parse(&s(&["admin"]), &s(&["**"]), &s(&["*"])).unwrap(),
        ],
        BTreeMap::from([("ci".to_owned(), vec!["bob".to_owned(), "carol".to_owned()])]),
        vec![Subject::parse("admin").unwrap()],
    )
    .unwrap()
}

fn ec_key_pem() -> String {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        ring::signature::EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")
}

fn issuer(expiry_secs: u64) -> Issuer {
    Issuer::from_pem(&ec_key_pem(), None, "wharf".into(), Duration::from_secs(expiry_secs)).unwrap()
}

struct Server {
    base: String,
    client: Client,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(auth: Auth) -> Server {
        Self::start_with(auth, RegistryConfig::default()).await
    }

    async fn start_with(auth: Auth, config: RegistryConfig) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = CachedStore::new(FsStore::open(dir.path()).unwrap(), CacheConfig::default());
        let app = App::new(Arc::new(store), config).with_auth(auth);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            wharf_registry::serve(listener, app, Default::default(), std::future::pending())
                .await
                .unwrap();
        });
        let _ = rustls::crypto::ring::default_provider().install_default();
        Server {
            base,
            client: Client::new(),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A token from `/auth/token` for `user` (None: anonymous) and these scopes.
    async fn token(&self, user: Option<&str>, scopes: &[&str]) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("service", "wharf");
        for s in scopes {
            q.append_pair("scope", s);
        }
        let mut req = self.client.get(self.url(&format!("/auth/token?{}", q.finish())));
        if let Some(u) = user {
            req = req.basic_auth(u, Some(format!("{u}-pw")));
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "token for {user:?}");
        let v = json(r).await;
        assert_eq!(v["token"], v["access_token"]);
        assert!(v["expires_in"].as_u64().unwrap() > 0 && v["issued_at"].as_str().unwrap().ends_with('Z'));
        v["token"].as_str().unwrap().to_owned()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Pull,
    Push,
    Delete,
}

const REPOS: [&str; 4] = ["team/app", "public/lib/x", "ci/build/cache", "private/x"];

/// The expected matrix, written out (not derived from the rules): who may do what where.
fn expected(user: Option<&str>, repo: &str, act: Act) -> bool {
    use Act::*;
    let allowed: &[Act] = match (user, repo) {
        (Some("admin"), _) => &[Pull, Push, Delete],
        (Some("alice"), "team/app") => &[Pull, Push],
        (Some("bob" | "carol"), "team/app") => &[Pull],
        (Some("carol"), "ci/build/cache") => &[Pull, Push, Delete],
        (_, "public/lib/x") => &[Pull],
        _ => &[],
    };
    allowed.contains(&act)
}

/// The request for an action: a manifest GET, an upload start, a manifest DELETE. Allowed, they answer 404, 202
/// and 404 (nothing is there yet); refused, 401 or 403.
fn request(s: &Server, repo: &str, act: Act) -> RequestBuilder {
    let digest = Digest::sha256_of(b"nothing").to_string();
    match act {
        Act::Pull => s.client.get(s.url(&format!("/v2/{repo}/manifests/latest"))),
        Act::Push => s.client.post(s.url(&format!("/v2/{repo}/blobs/uploads/"))),
        Act::Delete => s.client.delete(s.url(&format!("/v2/{repo}/manifests/{digest}"))),
    }
}

async fn json(r: Response) -> serde_json::Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or_default()
}

async fn code(r: Response) -> String {
    json(r).await["errors"][0]["code"].as_str().unwrap_or("").to_owned()
}

/// An `application/x-www-form-urlencoded` POST.
fn form(req: RequestBuilder, pairs: &[(&str, &str)]) -> RequestBuilder {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    req.header("content-type", "application/x-www-form-urlencoded")
        .body(body)
}

fn check_allowed(status: StatusCode, act: Act, what: &str) {
    let ok = match act {
        Act::Pull | Act::Delete => StatusCode::NOT_FOUND,
        Act::Push => StatusCode::ACCEPTED,
    };
    assert_eq!(status, ok, "{what}: allowed");
}

async fn check_refused(r: Response, user: Option<&str>, what: &str, bearer: bool) {
    let status = r.status();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    if user.is_some() {
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}: denied");
        assert_eq!(code(r).await, "DENIED", "{what}");
    } else {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: needs credentials");
        let challenge = challenge.unwrap_or_else(|| panic!("{what}: no challenge"));
        if bearer {
            assert!(
                challenge.starts_with("Bearer realm=") && challenge.contains("scope=\"repository:"),
                "{challenge}"
            );
        } else {
            assert!(challenge.starts_with("Basic realm="), "{challenge}");
        }
        assert_eq!(code(r).await, "UNAUTHORIZED", "{what}");
    }
}

#[tokio::test]
async fn htpasswd_matrix_users_by_repositories_by_actions() {
    let s = Server::start(Auth::htpasswd(htpasswd(), rules(), "wharf test".into())).await;
    let who: Vec<Option<&str>> = USERS.iter().copied().map(Some).chain([None]).collect();
    for user in &who {
        for repo in REPOS {
            for act in [Act::Pull, Act::Push, Act::Delete] {
                let mut req = request(&s, repo, act);
                if let Some(u) = user {
                    req = req.basic_auth(u, Some(format!("{u}-pw")));
                }
                let r = req.send().await.unwrap();
                let what = format!("{user:?} {act:?} {repo}");
                if expected(*user, repo, act) {
                    check_allowed(r.status(), act, &what);
                } else {
                    check_refused(r, *user, &what, false).await;
                }
            }
        }
    }
    // A wrong password is a 401 with the challenge, whatever the repository.
    let r = request(&s, "public/lib/x", Act::Pull)
        .basic_auth("alice", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"wharf test\"");
    // A bearer token where basic is expected: 401, with the Basic challenge.
    let r = request(&s, "team/app", Act::Pull)
        .bearer_auth("x.y.z")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// A registry issuing its own tokens (service "wharf") that live `expiry_secs`, with the test users and rules.
async fn token_server(expiry_secs: u64) -> Server {
    Server::start(Auth::token_issuer(
        htpasswd(),
        issuer(expiry_secs),
        rules(),
        "wharf".into(),
        None,
    ))
    .await
}

#[tokio::test]
async fn token_matrix_users_by_repositories_by_actions() {
    let s = token_server(300).await;
    let scopes: Vec<String> = REPOS
        .iter()
        .map(|r| format!("repository:{r}:pull,push,delete"))
        .collect();
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let who: Vec<Option<&str>> = USERS.iter().copied().map(Some).chain([None]).collect();
    for user in &who {
        let token = s.token(*user, &scopes).await;
        for repo in REPOS {
            for act in [Act::Pull, Act::Push, Act::Delete] {
                let what = format!("{user:?} {act:?} {repo}");
                let r = request(&s, repo, act).bearer_auth(&token).send().await.unwrap();
                if expected(*user, repo, act) {
                    check_allowed(r.status(), act, &what);
                } else if user.is_some() {
                    check_refused(r, *user, &what, true).await;
                } else {
                    // An anonymous token that lacks the scope: 401, and the challenge says why.
                    assert_eq!(r.status(), 401, "{what}");
                    let c = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
                    assert!(c.contains("error=\"insufficient_scope\""), "{c}");
                }
                // Without any token: only the anonymous rules.
                let r = request(&s, repo, act).send().await.unwrap();
                if expected(None, repo, act) {
                    check_allowed(r.status(), act, &what);
                } else {
                    check_refused(r, None, &what, true).await;
                }
            }
        }
    }
    // A token for another repository does not open this one, even for a user who may: 401 so the client asks for
    // the right scope, which then works.
    let narrow = s.token(Some("alice"), &["repository:public/lib/x:pull"]).await;
    let r = request(&s, "team/app", Act::Push)
        .bearer_auth(&narrow)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.contains(r#"scope="repository:team/app:pull,push""#) && challenge.contains("insufficient_scope"),
        "{challenge}"
    );
}

#[tokio::test]
async fn base_endpoint_and_catalog() {
    let s = token_server(300).await;
    let r = s.client.get(s.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let addr = s.base.trim_start_matches("http://");
    assert_eq!(
        r.headers()["www-authenticate"].to_str().unwrap(),
        format!(r#"Bearer realm="http://{addr}/auth/token",service="wharf""#)
    );
    assert_eq!(r.headers()["docker-distribution-api-version"], "registry/2.0");
    // HEAD: the same challenge, no body.
    let r = s
        .client
        .head(s.url("/v2/private/x/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("repository:private/x:pull")
    );
    assert_eq!(r.bytes().await.unwrap().len(), 0);

    let bob = s.token(Some("bob"), &[]).await;
    let r = s.client.get(s.url("/v2/")).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.status(), 200, "any valid token logs in");

    let catalog = "registry:catalog:*";
    let admin = s.token(Some("admin"), &[catalog]).await;
    let r = s
        .client
        .get(s.url("/v2/_catalog"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let alice = s.token(Some("alice"), &[catalog]).await;
    let r = s
        .client
        .get(s.url("/v2/_catalog"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = s.client.get(s.url("/v2/_catalog")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains(r#"scope="registry:catalog:*""#)
    );
}

async fn push_blob(s: &Server, repo: &str, data: &[u8], token: &str) -> String {
    let d = Digest::sha256_of(data).to_string();
    let r = s
        .client
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
        .bearer_auth(token)
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    d
}

#[tokio::test]
async fn cross_repository_mount_needs_pull_on_the_source() {
    let s = token_server(300).await;
    let admin = s.token(Some("admin"), &["repository:private/x:pull,push"]).await;
    let secret = push_blob(&s, "private/x", b"secret layer", &admin).await;
    let carol = s
        .token(
            Some("carol"),
            &[
                "repository:ci/build/cache:pull,push",
                "repository:private/x:pull",
                "repository:team/app:pull",
            ],
        )
        .await;
    let mount = |from: &str| {
        s.client
            .post(s.url(&format!("/v2/ci/build/cache/blobs/uploads/?mount={secret}&from={from}")))
            .bearer_auth(&carol)
    };
    // carol cannot read private/x: no mount, a plain upload session instead (202, the spec's fallback).
    let r = mount("private/x").send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/v2/ci/build/cache/blobs/uploads/")
    );
    let r = s
        .client
        .head(s.url(&format!("/v2/ci/build/cache/blobs/{secret}")))
        .bearer_auth(&carol)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the blob was not linked");
    // Without `from` (mount from anywhere): also a plain upload.
    let r = s
        .client
        .post(s.url(&format!("/v2/ci/build/cache/blobs/uploads/?mount={secret}")))
        .bearer_auth(&carol)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // From a repository carol may pull: mounted.
    let shared = push_blob(
        &s,
        "team/app",
        b"shared layer",
        &s.token(Some("admin"), &["repository:team/app:push"]).await,
    )
    .await;
    let r = s
        .client
        .post(s.url(&format!(
            "/v2/ci/build/cache/blobs/uploads/?mount={shared}&from=team/app"
        )))
        .bearer_auth(&carol)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn expired_tokens_get_a_bearer_challenge_with_scope() {
    let s = token_server(1).await;
    let t = s.token(Some("alice"), &["repository:team/app:pull"]).await;
    let r = request(&s, "team/app", Act::Pull).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 404, "valid for now");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = request(&s, "team/app", Act::Pull).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let c = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert_eq!(
        wharf_oci::auth::parse_challenge(&c),
        Some(wharf_oci::auth::Challenge::Bearer {
            realm: format!("{}/auth/token", s.base),
            service: Some("wharf".into()),
            scope: Some("repository:team/app:pull".into()),
        }),
        "{c}"
    );
    assert!(c.contains(r#"error="invalid_token""#), "{c}");
    // A fresh token works again.
    let t = s.token(Some("alice"), &["repository:team/app:pull"]).await;
    let r = request(&s, "team/app", Act::Pull).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn external_issuer_tokens() {
    let external = Issuer::from_pem(&ec_key_pem(), None, "auth.example".into(), Duration::from_secs(60)).unwrap();
    let verifier = Verifier::new(
        vec![external.trusted_key()],
        "auth.example".into(),
        "registry.example".into(),
        Duration::from_secs(5),
    );
    let realm = "https://auth.example/token".to_owned();
    let s = Server::start(Auth::token_external(
        verifier,
        rules(),
        "registry.example".into(),
        realm.clone(),
    ))
    .await;
    let repo = |name: &str, actions: &[&str]| wharf_registry::auth::AccessEntry {
        kind: "repository".into(),
        name: name.into(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
    };
    let t = external
        .issue(
            "dave",
            "registry.example",
            &[repo("anything/at/all", &["pull", "push"])],
        )
        .unwrap()
        .token;
    let r = request(&s, "anything/at/all", Act::Push)
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "the issuer decides; wharf's user rules do not apply");
    // Not in the token: 401 (the issuer may grant it on request), never 403.
    let r = request(&s, "anything/at/all", Act::Delete)
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let c = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert_eq!(
        c,
        format!(
            r#"Bearer realm="{realm}",service="registry.example",scope="repository:anything/at/all:delete",error="insufficient_scope""#
        )
    );
    // For another service, or signed by someone else: refused.
    let other = external
        .issue("dave", "other", &[repo("anything/at/all", &["pull"])])
        .unwrap()
        .token;
    let r = request(&s, "anything/at/all", Act::Pull)
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let forged = issuer(60)
        .issue("dave", "registry.example", &[repo("anything/at/all", &["pull"])])
        .unwrap()
        .token;
    let r = request(&s, "anything/at/all", Act::Pull)
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Anonymous pulls where the anonymous rules allow them; no token endpoint here.
    let r = request(&s, "public/lib/x", Act::Pull).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = s.client.get(s.url("/auth/token")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // The trusted key can come from a PEM public key.
    assert!(TrustedKey::from_pem("not pem").is_err());
}

#[tokio::test]
async fn token_endpoint() {
    let s = token_server(300).await;
    let url = s.url("/auth/token");
    // Wrong password, unknown user: 401.
    for (u, p) in [("alice", "wrong"), ("nobody", "x")] {
        let r = s.client.get(&url).basic_auth(u, Some(p)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{u}");
        assert_eq!(code(r).await, "UNAUTHORIZED");
    }
    // Another service: 400.
    let r = s.client.get(format!("{url}?service=other")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // What is granted is what was asked and allowed (scopes may also come space-separated).
    let claims = |token: &str| -> serde_json::Value {
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    let t = s
        .token(
            Some("bob"),
            &[
                "repository:team/app:pull,push repository:private/x:pull",
                "registry:catalog:*",
            ],
        )
        .await;
    let c = claims(&t);
    assert_eq!(c["sub"], "bob");
    assert_eq!(c["iss"], "wharf");
    assert_eq!(c["aud"], "wharf");
    assert_eq!(
        c["access"],
        serde_json::json!([{"type": "repository", "name": "team/app", "actions": ["pull"]}])
    );
    let anon = claims(
        &s.token(None, &["repository:public/lib/x:*", "repository:team/app:pull"])
            .await,
    );
    assert_eq!(anon["sub"], "");
    assert_eq!(
        anon["access"],
        serde_json::json!([{"type": "repository", "name": "public/lib/x", "actions": ["pull"]}])
    );
    // containerd's OAuth2 form.
    let r = form(
        s.client.post(&url),
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "alice-pw"),
            ("service", "wharf"),
            ("scope", "repository:team/app:pull,push"),
            ("client_id", "containerd"),
        ],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let v = json(r).await;
    let c = claims(v["access_token"].as_str().unwrap());
    assert_eq!(c["access"][0]["actions"], serde_json::json!(["pull", "push"]));
    let r = form(
        s.client.post(&url),
        &[("grant_type", "password"), ("username", "alice"), ("password", "bad")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    let r = form(
        s.client.post(&url),
        &[("grant_type", "refresh_token"), ("refresh_token", "x")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 400, "containerd then falls back to GET");
}

/// A mirror's namespaces (`?ns=`, the default upstream) lead a name to another repository: the rules decide on that
/// one. Rules: anyone pulls `public/**`, bob and carol (group ci) pull `team/*`, and only carol may pull the
/// mirrored `hub/**`; admin everything.
#[tokio::test]
async fn access_is_decided_on_the_repository_a_namespace_leads_to() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let rules = Rules::new(
        vec![
            Rule::parse(&s(&["anonymous"]), &s(&["public/**"]), &s(&["pull"])).unwrap(),
            Rule::parse(&s(&["group:ci"]), &s(&["team/*"]), &s(&["pull"])).unwrap(),
            Rule::parse(&s(&["carol"]), &s(&["hub/**"]), &s(&["pull"])).unwrap(),
        ],
        BTreeMap::from([("ci".to_owned(), vec!["bob".to_owned(), "carol".to_owned()])]),
        vec![],
    )
    .unwrap();
    let config = || RegistryConfig {
        namespaces: wharf_registry::Namespaces {
            upstreams: vec![wharf_registry::Namespace {
                name: "hub".into(),
                aliases: vec!["hub.example".into()],
            }],
            default: Some("hub".into()),
        },
        ..RegistryConfig::default()
    };
    // htpasswd: the rules on the final name.
    let srv = Server::start_with(Auth::htpasswd(htpasswd(), rules.clone(), "wharf".into()), config()).await;
    let get = |path: &str, user: Option<&str>| {
        let mut r = srv.client.get(srv.url(path));
        if let Some(u) = user {
            r = r.basic_auth(u, Some(format!("{u}-pw")));
        }
        r.send()
    };
    // bob may pull team/app, but not the mirrored hub/team/app that ?ns= (or an alias) makes of it.
    assert_eq!(
        get("/v2/team/app/manifests/v1?ns=hub", Some("bob"))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        get("/v2/team/app/manifests/v1?ns=hub.example", Some("bob"))
            .await
            .unwrap()
            .status(),
        403
    );
    // Anonymous may pull public/**, not hub/public/x, where the default upstream sends a name no local repository has.
    assert_eq!(get("/v2/public/x/manifests/v1", None).await.unwrap().status(), 401);
    // carol may: the request gets through to the store (which has no such manifest).
    assert_eq!(
        get("/v2/team/app/manifests/v1?ns=hub", Some("carol"))
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        get("/v2/hub/team/app/manifests/v1", Some("carol"))
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        get("/v2/public/x/manifests/v1", Some("carol")).await.unwrap().status(),
        404
    );

    // Token mode: a token names the client's name; the rules still decide on the final one.
    let auth = Auth::token_issuer(htpasswd(), issuer(300), rules, "wharf".into(), None);
    let srv = Server::start_with(auth, config()).await;
    let scope = "repository:team/app:pull";
    let with = |token: String, path: &str| srv.client.get(srv.url(path)).bearer_auth(token).send();
    let bobs = srv.token(Some("bob"), &[scope]).await;
    // (No local team/app: the default upstream takes the read, so hub/team/app is where it leads even without ns.)
    assert_eq!(
        with(bobs.clone(), "/v2/team/app/manifests/v1").await.unwrap().status(),
        403
    );
    assert_eq!(
        with(bobs, "/v2/team/app/manifests/v1?ns=hub").await.unwrap().status(),
        403
    );
    let carols = srv.token(Some("carol"), &[scope]).await;
    assert_eq!(
        with(carols, "/v2/team/app/manifests/v1?ns=hub").await.unwrap().status(),
        404
    );
    // The issuer grants a name whose mirrored form the rules allow: carol's token for public/x (hub/public/x).
    let carols = srv.token(Some("carol"), &["repository:other/x:pull"]).await;
    assert_eq!(with(carols, "/v2/other/x/manifests/v1").await.unwrap().status(), 404);
}
