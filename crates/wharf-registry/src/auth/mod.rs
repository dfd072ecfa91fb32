//! Authentication and authorization of `/v2` requests, and wharf's own token endpoint.
//!
//! Three modes (plus none, the default, where [`App::auth`](crate::App) is `None` and everything is open):
//! - **htpasswd**: basic auth on every request, checked against an htpasswd file (bcrypt only, see [`htpasswd`]);
//!   a request without credentials gets a `Basic` challenge.
//! - **token, wharf as issuer**: requests carry a bearer JWT; a request without one (or with an expired or bad one)
//!   gets `Bearer realm="…/auth/token",service="…",scope="repository:NAME:ACTIONS"`, and wharf's own
//!   `/auth/token` ([`endpoint`]) checks basic credentials against the htpasswd file and signs a token granting
//!   what the [`rules`] allow of the scopes asked.
//! - **token, external issuer**: the same challenge names an external token server; wharf only checks the tokens
//!   (signature by the configured key or certificate, `iss`, `aud` = service, `exp`/`nbf` with a leeway).
//!
//! What a request needs comes from its parsed route ([`need`]): pull for reads, push for uploads and manifest
//! PUTs, delete for DELETEs of manifests and blobs, `registry:catalog:*` for `/v2/_catalog`, and any valid
//! credentials for `/v2/`. Refusals: 401 `UNAUTHORIZED` with a challenge when the caller has no (valid)
//! credentials or its token lacks the scope (clients fetch a token and retry); 403 `DENIED` when an authenticated
//! user is not allowed (the rules are known here: htpasswd mode and wharf as issuer).
//!
//! Rules with the subject `anonymous` apply to requests without credentials in every mode, so anonymous pulls work
//! without a token round trip. Requests are checked under the repository name the client used, before a mirror
//! namespace (`?ns=`, default upstream) rewrites it.

pub mod endpoint;
pub mod htpasswd;
pub mod rules;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderMap, Method, Uri, header};
use base64::Engine;
use wharf_oci::ErrorCode;
use wharf_oci::route::Route;

pub use htpasswd::{Htpasswd, HtpasswdError};
pub use rules::{Action, Actions, Identity, Pattern, Rule, Rules, Subject};
pub use token::{AccessEntry, IssuedToken, Issuer, TokenClaims, TokenError, TrustedKey, Verifier};

use crate::error::ApiError;

/// How callers prove who they are.
pub enum Mode {
    /// Basic auth against an htpasswd file.
    Htpasswd { users: Arc<Htpasswd> },
    /// Bearer tokens that wharf issues itself at `/auth/token` (credentials from the htpasswd file).
    TokenIssuer {
        users: Arc<Htpasswd>,
        issuer: Issuer,
        verifier: Verifier,
    },
    /// Bearer tokens from an external token server.
    TokenExternal { verifier: Verifier },
}

/// The registry's authentication and authorization settings, built once at startup.
pub struct Auth {
    mode: Mode,
    rules: Rules,
    /// Basic realm, or the token endpoint URL; `None` in issuer mode = this server's `/auth/token`, from the
    /// request's `Host` (and `X-Forwarded-Proto`, else `https` when serving TLS).
    realm: Option<String>,
    service: String,
    https: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth({}, service {:?})", self.mode_name(), self.service)
    }
}

impl Auth {
    /// Basic auth against `users`; `realm` is the name browsers and clients show.
    pub fn htpasswd(users: Htpasswd, rules: Rules, realm: String) -> Auth {
        Auth {
            mode: Mode::Htpasswd { users: Arc::new(users) },
            rules,
            realm: Some(if realm.is_empty() { "wharf".into() } else { realm }),
            service: String::new(),
            https: false,
        }
    }

    /// wharf issues tokens for `service`; `realm` is the token endpoint's public URL (`None`: derived per request).
    pub fn token_issuer(users: Htpasswd, issuer: Issuer, rules: Rules, service: String, realm: Option<String>) -> Auth {
        let verifier = Verifier::new(
            vec![issuer.trusted_key()],
            issuer.issuer.clone(),
            service.clone(),
            Duration::ZERO,
        );
        Auth {
            mode: Mode::TokenIssuer {
                users: Arc::new(users),
                issuer,
                verifier,
            },
            rules,
            realm,
            service,
            https: false,
        }
    }

    /// Tokens come from the external server at `realm`; `verifier` checks them. Only the `anonymous` rules matter.
    pub fn token_external(verifier: Verifier, rules: Rules, service: String, realm: String) -> Auth {
        Auth {
            mode: Mode::TokenExternal { verifier },
            rules,
            realm: Some(realm),
            service,
            https: false,
        }
    }

    /// The server speaks HTTPS: a derived token realm starts with `https://`.
    pub fn with_https(mut self, https: bool) -> Auth {
        self.https = https;
        self
    }

    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Htpasswd { .. } => "htpasswd",
            Mode::TokenIssuer { .. } => "token (wharf issues)",
            Mode::TokenExternal { .. } => "token (external issuer)",
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    pub(crate) fn issuer(&self) -> Option<(&Issuer, &Arc<Htpasswd>)> {
        match &self.mode {
            Mode::TokenIssuer { issuer, users, .. } => Some((issuer, users)),
            _ => None,
        }
    }

    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    /// The token endpoint URL (or the basic realm) for a request.
    fn realm_for(&self, headers: &HeaderMap, uri: &Uri) -> String {
        if let Some(r) = &self.realm {
            return r.clone();
        }
        let proto = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|p| *p == "http" || *p == "https");
        let scheme = proto.unwrap_or(if self.https { "https" } else { "http" });
        // The name the client reached this server by: it goes back to that client only, and only as a host[:port]
        // (nothing that could bend the challenge or the URL). Behind a proxy, or to pin it, set [auth] realm.
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| uri.authority().map(|a| a.to_string()))
            .filter(|h| is_host_port(h))
            .unwrap_or_else(|| "localhost".into());
        format!("{scheme}://{host}/auth/token")
    }

    /// The `WWW-Authenticate` value: `Basic realm=…`, or `Bearer realm=…,service=…[,scope=…][,error=…]`.
    fn challenge(&self, headers: &HeaderMap, uri: &Uri, scope: Option<&str>, error: Option<&str>) -> String {
        let realm = quote(&self.realm_for(headers, uri));
        if let Mode::Htpasswd { .. } = self.mode {
            return format!("Basic realm={realm}");
        }
        let mut c = format!("Bearer realm={realm},service={}", quote(&self.service));
        if let Some(s) = scope {
            c.push_str(&format!(",scope={}", quote(s)));
        }
        if let Some(e) = error {
            c.push_str(&format!(",error={}", quote(e)));
        }
        c
    }

    /// Who is calling, from the `Authorization` header. Errors are 401s (bad password, bad or expired token).
    async fn caller(&self, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .filter(|v| !is_empty_basic(v.as_bytes()))
        else {
            return Ok(Caller::anonymous());
        };
        let credentials = parse_authorization(value.as_bytes()).ok_or(Refusal::Malformed)?;
        match (&self.mode, credentials) {
            (Mode::Htpasswd { users }, Credentials::Basic { user, password }) => {
                if check_password(users.clone(), user.clone(), password).await {
                    Ok(Caller {
                        who: Identity::User(user),
                        token: None,
                    })
                } else {
                    tracing::info!(user, "authentication failed: wrong user or password");
                    Err(Refusal::BadCredentials)
                }
            }
            (Mode::TokenIssuer { verifier, .. } | Mode::TokenExternal { verifier }, Credentials::Bearer(t)) => {
                match verifier.verify(&t) {
                    Ok(claims) => Ok(Caller {
                        who: if claims.sub.is_empty() {
                            Identity::Anonymous
                        } else {
                            Identity::User(claims.sub)
                        },
                        token: Some(claims.access),
                    }),
                    Err(e) => {
                        tracing::debug!(error = %e, "bearer token refused");
                        Err(Refusal::Token(e))
                    }
                }
            }
            // Basic credentials where a token is expected (or the reverse): answer with the right challenge.
            _ => Err(Refusal::WrongScheme),
        }
    }

    /// What `caller` may do to `repository`, which the request reaches as `target` (the name after a mirror's
    /// namespace rewrite; the same name otherwise). The rules decide on `target`; a token must name `repository`
    /// (what the client asked a token for), and where wharf issues the tokens, the rules must allow `target` too (a
    /// token for a name is no pass to wherever `?ns=` leads it).
    fn allowed(&self, caller: &Caller, repository: &str, target: &str) -> Actions {
        let anonymous = self.rules.allowed(&Identity::Anonymous, target);
        match &caller.token {
            Some(access) => {
                let granted = token::granted(access, repository);
                let granted = match &self.mode {
                    Mode::TokenIssuer { .. } if repository != target => {
                        granted.intersect(self.rules.allowed(&caller.who, target))
                    }
                    _ => granted,
                };
                granted.union(anonymous)
            }
            None => self.rules.allowed(&caller.who, target),
        }
    }

    /// Whether an authenticated caller that was not allowed is refused for good (403) rather than asked for a token
    /// with the scope (401): only where the rules decide, and only for a known user.
    fn denied_for_good(&self, caller: &Caller, allowed_by_rules: impl FnOnce(&Identity) -> bool) -> bool {
        match (&self.mode, &caller.who) {
            (_, Identity::Anonymous) => false,
            (Mode::Htpasswd { .. }, _) => true,
            (Mode::TokenIssuer { .. }, who) => !allowed_by_rules(who),
            (Mode::TokenExternal { .. }, _) => false,
        }
    }

    /// Checks a `/v2` request before it is routed; `target` is the repository it reaches when a namespace rewrite
    /// changed its name. May rewrite a cross-repository mount the caller cannot read from into a plain upload start.
    pub(crate) async fn check(&self, req: &mut Request, target: Option<&str>) -> Result<(), ApiError> {
        let path = req.uri().path().to_owned();
        let Ok(route) = wharf_oci::route::parse(&path) else {
            // Not an API path: the router answers 404/400 without touching any repository.
            return Ok(());
        };
        let need = need(&route, req.method());
        let caller = match self.caller(req.headers()).await {
            Ok(c) => c,
            Err(refusal) => return Err(self.unauthorized(req, &need, refusal.error_param(), refusal.message())),
        };
        match &need {
            Need::Login => {
                if caller.is_anonymous() && caller.token.is_none() {
                    return Err(self.unauthorized(req, &need, None, "authentication required"));
                }
            }
            Need::Catalog => {
                let ok = match &caller.token {
                    Some(access) => token::grants_catalog(access),
                    None => self.rules.may_list_catalog(&caller.who),
                } || self.rules.may_list_catalog(&Identity::Anonymous);
                if !ok {
                    if self.denied_for_good(&caller, |who| self.rules.may_list_catalog(who)) {
                        return Err(denied(&need));
                    }
                    return Err(self.unauthorized(req, &need, caller.scope_error(), "authentication required"));
                }
            }
            Need::Repo { name, action } => {
                let target = target.unwrap_or(name);
                if !self.allowed(&caller, name, target).contains(*action) {
                    if self.denied_for_good(&caller, |who| self.rules.allowed(who, target).contains(*action)) {
                        tracing::info!(user = caller.who.name(), repository = %target, action = %action, "access denied");
                        return Err(denied(&need));
                    }
                    return Err(self.unauthorized(req, &need, caller.scope_error(), "authentication required"));
                }
                if let (Route::UploadStart { .. }, true) = (&route, req.method() == Method::POST) {
                    self.restrict_mount(&caller, req);
                }
                if !caller.who.name().is_empty() {
                    req.extensions_mut()
                        .insert(crate::observe::AccessUser(caller.who.name().to_owned()));
                }
            }
        }
        Ok(())
    }

    /// The caller of one of wharf's own read APIs (the layer index), which must authenticate: bad credentials, or
    /// none at all, get the 401 challenge of `/v2/` (token mode: a token without a scope names its user, and what
    /// it may see is then what [`Auth::may_pull`] says).
    pub(crate) async fn reader(&self, headers: &HeaderMap, uri: &Uri) -> Result<Caller, ApiError> {
        let need = Need::Login;
        match self.caller(headers).await {
            Ok(c) if c.is_anonymous() && c.token.is_none() => {
                Err(self.unauthorized_at(headers, uri, &need, None, "authentication required"))
            }
            Ok(c) => Ok(c),
            Err(refusal) => Err(self.unauthorized_at(headers, uri, &need, refusal.error_param(), refusal.message())),
        }
    }

    /// Whether `caller` may pull `repository`: what its token grants, or where wharf issues the tokens, what the rules
    /// allow its user.
    pub(crate) fn may_pull(&self, caller: &Caller, repository: &str) -> bool {
        self.allowed(caller, repository, repository).contains(Action::Pull)
            || (matches!(self.mode, Mode::TokenIssuer { .. })
                && self.rules.allowed(&caller.who, repository).contains(Action::Pull))
    }

    /// A mount (`?mount=&from=`) needs pull on `from`; without it (or without `from`, which would mount from any
    /// repository), the request becomes a plain upload start, which the spec allows (202).
    fn restrict_mount(&self, caller: &Caller, req: &mut Request) {
        let Some(query) = req.uri().query() else {
            return;
        };
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        if !pairs.iter().any(|(k, _)| k == "mount") {
            return;
        }
        let from = pairs.iter().find(|(k, _)| k == "from").map(|(_, v)| v.as_str());
        if let Some(from) = from
            && self.allowed(caller, from, from).contains(Action::Pull)
        {
            return;
        }
        tracing::debug!(from, "mount not allowed from there: starting a plain upload instead");
        let kept: Vec<&(String, String)> = pairs.iter().filter(|(k, _)| k != "mount" && k != "from").collect();
        let mut rewritten = req.uri().path().to_owned();
        if !kept.is_empty() {
            let q = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(kept.iter().map(|(k, v)| (k, v)))
                .finish();
            rewritten = format!("{rewritten}?{q}");
        }
        if let Ok(uri) = rewritten.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }

    fn unauthorized(&self, req: &Request, need: &Need, error: Option<&str>, message: &str) -> ApiError {
        self.unauthorized_at(req.headers(), req.uri(), need, error, message)
    }

    fn unauthorized_at(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        need: &Need,
        error: Option<&str>,
        message: &str,
    ) -> ApiError {
        let scope = need.scope();
        let challenge = self.challenge(headers, uri, scope.as_deref(), error);
        let mut e = ApiError::new(ErrorCode::Unauthorized, message).with_header(header::WWW_AUTHENTICATE, challenge);
        if let Some(d) = need.detail() {
            e = e.with_detail(d);
        }
        e
    }
}

fn denied(need: &Need) -> ApiError {
    let mut e = ApiError::new(ErrorCode::Denied, "requested access to the resource is denied");
    if let Some(d) = need.detail() {
        e = e.with_detail(d);
    }
    e
}

/// `"value"` with `\` and `"` escaped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// bcrypt off the async threads.
pub(crate) async fn check_password(users: Arc<Htpasswd>, user: String, password: String) -> bool {
    tokio::task::spawn_blocking(move || users.verify(&user, &password))
        .await
        .unwrap_or(false)
}

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Need<'a> {
    /// `/v2/`: any valid credentials.
    Login,
    /// `/v2/_catalog`: `registry:catalog:*`.
    Catalog,
    Repo {
        name: &'a str,
        action: Action,
    },
}

impl Need<'_> {
    /// The scope a client should ask a token for. Writes ask for `pull,push` as clients do (a push reads too).
    fn scope(&self) -> Option<String> {
        match self {
            Need::Login => None,
            Need::Catalog => Some("registry:catalog:*".into()),
            Need::Repo {
                name,
                action: Action::Push,
            } => Some(format!("repository:{name}:pull,push")),
            Need::Repo { name, action } => Some(format!("repository:{name}:{action}")),
        }
    }

    /// The error detail docker/distribution sends: which access was missing.
    fn detail(&self) -> Option<serde_json::Value> {
        match self {
            Need::Login => None,
            Need::Catalog => Some(serde_json::json!([{"Type": "registry", "Name": "catalog", "Action": "*"}])),
            Need::Repo { name, action } => {
                Some(serde_json::json!([{"Type": "repository", "Name": name, "Action": action.as_str()}]))
            }
        }
    }
}

/// The access a route and method need: pull to read, delete to delete manifests and blobs, push for everything
/// else (uploads, including cancelling one, and manifest PUTs; unknown methods too, before they get their 405).
pub(crate) fn need<'a>(route: &Route<'a>, method: &Method) -> Need<'a> {
    let read = *method == Method::GET || *method == Method::HEAD;
    match route {
        Route::Base => Need::Login,
        Route::Catalog => Need::Catalog,
        Route::Tags { name } | Route::Referrers { name, .. } => Need::Repo {
            name,
            action: if read { Action::Pull } else { Action::Push },
        },
        Route::Manifest { name, .. } | Route::Blob { name, .. } => Need::Repo {
            name,
            action: if read {
                Action::Pull
            } else if *method == Method::DELETE {
                Action::Delete
            } else {
                Action::Push
            },
        },
        Route::UploadStart { name } | Route::Upload { name, .. } => Need::Repo {
            name,
            action: Action::Push,
        },
    }
}

/// The caller of a request: who, and what its token grants (token modes).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    who: Identity,
    token: Option<Vec<AccessEntry>>,
}

impl Caller {
    fn anonymous() -> Caller {
        Caller {
            who: Identity::Anonymous,
            token: None,
        }
    }

    fn is_anonymous(&self) -> bool {
        self.who == Identity::Anonymous
    }

    /// RFC 6750's `error` for a token that is valid but does not cover the request.
    fn scope_error(&self) -> Option<&'static str> {
        self.token.as_ref().map(|_| "insufficient_scope")
    }
}

enum Refusal {
    Malformed,
    BadCredentials,
    WrongScheme,
    Token(TokenError),
}

impl Refusal {
    fn error_param(&self) -> Option<&'static str> {
        match self {
            Refusal::Token(_) => Some("invalid_token"),
            _ => None,
        }
    }

    fn message(&self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed Authorization header",
            Refusal::BadCredentials => "incorrect username or password",
            Refusal::WrongScheme => "authentication required",
            Refusal::Token(TokenError::Expired) => "token expired",
            Refusal::Token(_) => "invalid token",
        }
    }
}

/// Credentials from an `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic { user: String, password: String },
    Bearer(String),
}

/// `Basic Og==` (`:`, no user and no password): what `skopeo --no-creds` and other clients send to mean anonymous.
pub fn is_empty_basic(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let Some((scheme, rest)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("basic")
        && base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .is_ok_and(|d| d.is_empty() || d == b":")
}

/// Parses `Basic base64(user:password)` or `Bearer TOKEN` (schemes case-insensitive). `None` for anything else,
/// including a user name that is empty or not UTF-8.
pub fn parse_authorization(value: &[u8]) -> Option<Credentials> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        if user.is_empty() {
            return None;
        }
        return Some(Credentials::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        });
    }
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() && !rest.contains(char::is_whitespace) {
        return Some(Credentials::Bearer(rest.to_owned()));
    }
    None
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`, with a host of letters, digits, dots and dashes.
fn is_host_port(s: &str) -> bool {
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, after)) if v6.parse::<std::net::Ipv6Addr>().is_ok() => ("v6", after.strip_prefix(':')),
            _ => return false,
        },
        None => match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        },
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_realm_host_is_a_host_and_port_and_nothing_else() {
        for ok in [
            "registry",
            "registry.example:5000",
            "127.0.0.1:80",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(super::is_host_port(ok), "{ok}");
        }
        for bad in ["", "evil\",x=\"", "a/b", "a b", "a:port", "[zz]:1", "host:1:2", "a@b"] {
            assert!(!super::is_host_port(bad), "{bad}");
        }
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn authorization_headers() {
        assert_eq!(
            parse_authorization(b"Basic YWxpY2U6d29uZGVyOmxhbmQ="),
            Some(Credentials::Basic {
                user: "alice".into(),
                password: "wonder:land".into()
            })
        );
        assert_eq!(
            parse_authorization(b"bearer abc.def.ghi"),
            Some(Credentials::Bearer("abc.def.ghi".into()))
        );
        assert_eq!(parse_authorization(b"Basic OnB3"), None, "empty user");
        assert!(is_empty_basic(b"Basic Og=="), "skopeo --no-creds");
        assert!(
            !is_empty_basic(b"Basic OnB3"),
            "a password without a user is not anonymous"
        );
        assert!(!is_empty_basic(b"Bearer Og=="));
        assert_eq!(parse_authorization(b"Basic !!!"), None);
        assert_eq!(parse_authorization(b"Bearer "), None);
        assert_eq!(parse_authorization(b"Negotiate x"), None);
        assert_eq!(parse_authorization(b"\xff\xfe"), None);
    }

    #[test]
    fn needs_by_route_and_method() {
        let p = |path: &'static str| wharf_oci::route::parse(path).unwrap();
        let repo = |name, action| Need::Repo { name, action };
        assert_eq!(need(&p("/v2/"), &Method::GET), Need::Login);
        assert_eq!(need(&p("/v2/_catalog"), &Method::GET), Need::Catalog);
        assert_eq!(
            need(&p("/v2/a/b/manifests/x"), &Method::HEAD),
            repo("a/b", Action::Pull)
        );
        assert_eq!(need(&p("/v2/a/manifests/x"), &Method::PUT), repo("a", Action::Push));
        assert_eq!(
            need(&p("/v2/a/manifests/x"), &Method::DELETE),
            repo("a", Action::Delete)
        );
        assert_eq!(need(&p("/v2/a/blobs/sha256:0"), &Method::GET), repo("a", Action::Pull));
        assert_eq!(
            need(&p("/v2/a/blobs/sha256:0"), &Method::DELETE),
            repo("a", Action::Delete)
        );
        assert_eq!(need(&p("/v2/a/blobs/uploads/"), &Method::POST), repo("a", Action::Push));
        assert_eq!(need(&p("/v2/a/blobs/uploads/u"), &Method::GET), repo("a", Action::Push));
        assert_eq!(
            need(&p("/v2/a/blobs/uploads/u"), &Method::DELETE),
            repo("a", Action::Push)
        );
        assert_eq!(need(&p("/v2/a/tags/list"), &Method::GET), repo("a", Action::Pull));
        assert_eq!(
            need(&p("/v2/a/referrers/sha256:0"), &Method::GET),
            repo("a", Action::Pull)
        );
        assert_eq!(need(&p("/v2/a/tags/list"), &Method::POST), repo("a", Action::Push));
        assert_eq!(
            repo("a", Action::Push).scope().as_deref(),
            Some("repository:a:pull,push")
        );
        assert_eq!(Need::Catalog.scope().as_deref(), Some("registry:catalog:*"));
    }

    #[test]
    fn challenges_quote_and_derive_the_realm() {
        let users = Htpasswd::parse("", "x").unwrap();
        let issuer = Issuer::from_pem(
            &token::tests::ec_key_pem(),
            None,
            "wharf".into(),
            Duration::from_secs(60),
        )
        .unwrap();
        let auth = Auth::token_issuer(users, issuer, Rules::default(), "my \"svc\"".into(), None);
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "reg.example:5000".parse().unwrap());
        let uri: Uri = "/v2/".parse().unwrap();
        assert_eq!(
            auth.challenge(&h, &uri, Some("repository:a:pull"), Some("invalid_token")),
            r#"Bearer realm="http://reg.example:5000/auth/token",service="my \"svc\"",scope="repository:a:pull",error="invalid_token""#
        );
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert!(
            auth.challenge(&h, &uri, None, None)
                .starts_with(r#"Bearer realm="https://reg.example:5000/auth/token""#)
        );
        let basic = Auth::htpasswd(Htpasswd::parse("", "x").unwrap(), Rules::default(), String::new());
        assert_eq!(
            basic.challenge(&h, &uri, Some("repository:a:pull"), None),
            r#"Basic realm="wharf""#
        );
        // What the client side of wharf parses back.
        assert_eq!(
            wharf_oci::auth::parse_challenge(&auth.challenge(&h, &uri, Some("repository:a:pull,push"), None)),
            Some(wharf_oci::auth::Challenge::Bearer {
                realm: "https://reg.example:5000/auth/token".into(),
                service: Some("my \"svc\"".into()),
                scope: Some("repository:a:pull,push".into()),
            })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any header value parses or is refused, never panics; basic credentials round-trip.
        #[test]
        fn authorization_parser(raw in proptest::collection::vec(any::<u8>(), 0..120), user in "[^:\\s]{1,12}", pw in "\\PC{0,16}") {
            let _ = parse_authorization(&raw);
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
            prop_assert_eq!(
                parse_authorization(format!("Basic {encoded}").as_bytes()),
                Some(Credentials::Basic { user: user.clone(), password: pw.clone() })
            );
        }

        /// Every path the router accepts needs something; never a panic.
        #[test]
        fn need_never_panics(path in "/v2(/[a-z_]{1,6}){0,5}/?", m in 0usize..6) {
            let method = [Method::GET, Method::HEAD, Method::PUT, Method::POST, Method::PATCH, Method::DELETE][m].clone();
            if let Ok(route) = wharf_oci::route::parse(&path) {
                let _ = need(&route, &method);
            }
        }
    }
}
