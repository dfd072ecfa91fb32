//! The scheduler's HTTP API (see [`crate::proto`] for the endpoints and types), plus `GET /v1/preheat?peer=<id>`:
//! the queued preheat blobs that seed has not announced done, as a [`Preheat`].
//!
//! Every `/v1` request, and `/metrics`, must carry `Authorization: Bearer <token>` when a token is configured (401
//! otherwise); `/healthz` is open. A request naming a peer must come from that peer's address (403 otherwise; see
//! `check_source`). Errors are JSON, `{"error": "..."}`: 400 for a malformed request or task id, 409 for a shape
//! that disagrees with the swarm's or a live peer's id at another address, 503 at a memory bound.
//!
//! Metrics (the `metrics` facade; the binary installs the exporter and passes its renderer):
//! - `wharf_scheduler_schedule_requests_total`
//! - `wharf_scheduler_assignments_total{source="peer"|"origin"|"wait"}`
//! - `wharf_scheduler_announces_total`
//! - `wharf_scheduler_reports_total{reason="corrupt"|"refused"|"unreachable"|"forged"}`
//! - `wharf_scheduler_tasks`, `wharf_scheduler_live_peers` (gauges, refreshed by the sweeper)

use std::fmt::Display;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{Extensions, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Scheduler, StateError};
use tokio::sync::Notify;

use crate::proto::{
    self, Announce, MAX_HOLD_MS, Peer, PieceDigest, Preheat, Report, ScheduleRequest, ScheduleResponse, Source,
};

/// Renders the Prometheus text served at `/metrics`.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Largest request body: an announcement of every piece of the largest task, with digests, fits.
const MAX_BODY: usize = 16 << 20;

#[derive(Clone)]
struct Ctx {
    scheduler: Arc<Scheduler>,
    metrics: Option<MetricsRender>,
}

/// The scheduler's router.
pub fn router(scheduler: Arc<Scheduler>, metrics: Option<MetricsRender>) -> Router {
    let ctx = Ctx { scheduler, metrics };
    let v1 = Router::new()
        .route("/v1/tasks/{task}", get(shape))
        .route("/v1/tasks/{task}/pieces/{n}/digest", get(piece_digest))
        .route("/v1/tasks/{task}/schedule", post(schedule))
        .route("/v1/tasks/{task}/announce", post(announce))
        .route("/v1/tasks/{task}/report", post(report))
        .route("/v1/preheat", post(preheat_add).get(preheat_list))
        .route("/v1/swarms", get(swarms))
        // What the swarms are and how busy: for the cluster only, like the API.
        .route("/metrics", get(metrics_text))
        .route_layer(middleware::from_fn_with_state(ctx.clone(), authorize));
    Router::new()
        .merge(v1)
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(ctx)
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn error(status: StatusCode, message: impl Display) -> Response {
    json(status, &serde_json::json!({ "error": message.to_string() }))
}

/// A refused request: its status and message, answered as `{"error": message}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        let status = if e.is_conflict() {
            StatusCode::CONFLICT
        } else if e.is_full() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_REQUEST
        };
        tracing::debug!(error = %e, "request refused");
        ApiError(status, e.to_string())
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid request body: {e}")))
}

fn check_task(task: &str) -> Result<(), ApiError> {
    if proto::valid_task(task) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::BAD_REQUEST,
            crate::P2pError::BadTask(task.to_owned()).to_string(),
        ))
    }
}

/// Compares secrets in time independent of where they differ (and of their lengths: hashes are compared).
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (
        wharf_oci::Digest::sha256_of(a.as_bytes()),
        wharf_oci::Digest::sha256_of(b.as_bytes()),
    );
    a.hex()
        .bytes()
        .zip(b.hex().bytes())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The address a peer announces must be the one its request comes from (its host resolves to the connection's
/// source address): every node sends requests, with the cluster token, to the addresses peers announce, so a member
/// must not name someone else's. Off with [`super::SchedulerConfig::trust_peer_addresses`] (nodes behind NAT or a
/// proxy).
async fn check_source(ctx: &Ctx, ext: &Extensions, peer: &Peer) -> Result<(), ApiError> {
    if ctx.scheduler.config().trust_peer_addresses {
        return Ok(());
    }
    let forbidden = |why: String| Err(ApiError(StatusCode::FORBIDDEN, why));
    let Some(remote) = wharf_registry::listen::remote_addr(ext) else {
        return forbidden("cannot tell where the request comes from".into());
    };
    let source = remote.ip().to_canonical();
    let Some((host, port)) = proto::peer_host_port(&peer.addr) else {
        // Not a peer address at all: the state refuses it (400) with its reason.
        return Ok(());
    };
    let matches = match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical() == source,
        Err(_) => match tokio::net::lookup_host((host, port)).await {
            Ok(mut addrs) => addrs.any(|a| a.ip().to_canonical() == source),
            Err(_) => false,
        },
    };
    if matches {
        Ok(())
    } else {
        forbidden(format!(
            "peer {} announces address {} but connects from {source}; behind NAT or a proxy, start the scheduler \
             with --trust-peer-addresses",
            peer.id, peer.addr
        ))
    }
}

fn bearer(value: &HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn authorize(State(ctx): State<Ctx>, request: Request, next: Next) -> Response {
    if let Some(token) = &ctx.scheduler.config().token {
        let ok = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(bearer)
            .is_some_and(|given| same_secret(given, token));
        if !ok {
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(request).await
}

async fn schedule(
    State(ctx): State<Ctx>,
    Path(task): Path<String>,
    ext: Extensions,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_task(&task)?;
    let req: ScheduleRequest = parse(&body)?;
    check_source(&ctx, &ext, &req.peer).await?;
    metrics::counter!("wharf_scheduler_schedule_requests_total").increment(1);
    let hold = Duration::from_millis(u64::from(req.hold_ms.unwrap_or(0).min(MAX_HOLD_MS)));
    let answer = if hold.is_zero() {
        ctx.scheduler.with_state(|s, now| s.schedule(&task, &req, now))?
    } else {
        let watch = ctx.scheduler.watch(&task);
        hold_schedule(&ctx, &task, &req, &watch, hold).await?
    };
    let relay_sources = ctx.scheduler.config().policy.relay;
    let (mut peer, mut origin, mut wait) = (0, 0, 0);
    for a in &answer.assignments {
        match a.source {
            Source::Peer { .. } => peer += 1,
            Source::Origin => origin += 1,
            Source::Wait => wait += 1,
        }
    }
    metrics::counter!("wharf_scheduler_assignments_total", "source" => "peer").increment(peer);
    metrics::counter!("wharf_scheduler_assignments_total", "source" => "origin").increment(origin);
    metrics::counter!("wharf_scheduler_assignments_total", "source" => "wait").increment(wait);
    if relay_sources && (peer > 0 || origin > 0) {
        // The node receiving these is now a relay of them: requests held for them can be answered.
        ctx.scheduler.wake(&task);
    }
    Ok(json(StatusCode::OK, &answer))
}

/// Schedules `req`, and while nothing can be assigned (only waits), waits for a change in the task (or `hold` to
/// pass) and schedules again. Asking again changes nothing the first answer did not (its wanted pieces were already
/// released by it), so repeating it is safe.
async fn hold_schedule(
    ctx: &Ctx,
    task: &str,
    req: &ScheduleRequest,
    notify: &Notify,
    hold: Duration,
) -> Result<ScheduleResponse, StateError> {
    let deadline = tokio::time::Instant::now() + hold;
    let look = || {
        let answer = ctx.scheduler.with_state(|s, now| s.schedule(task, req, now));
        match answer {
            Ok(a) if !req.want.is_empty() && a.assignments.iter().all(|a| a.source == Source::Wait) => None,
            done => Some(done),
        }
    };
    match crate::wait::until(notify, deadline, look).await {
        Some(answer) => answer,
        // Time is up: one more look (leases and transfers may have expired meanwhile).
        None => ctx.scheduler.with_state(|s, now| s.schedule(task, req, now)),
    }
}

async fn shape(State(ctx): State<Ctx>, Path(task): Path<String>) -> Result<Response, ApiError> {
    check_task(&task)?;
    match ctx.scheduler.with_state(|s, _| s.shape(&task)) {
        Some(shape) => Ok(json(StatusCode::OK, &shape)),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no swarm for {task}"))),
    }
}

/// The digest of a piece, held (long poll) until an announcement makes it known or the hold is over.
async fn piece_digest(
    State(ctx): State<Ctx>,
    Path((task, n)): Path<(String, u32)>,
    request: Request,
) -> Result<Response, ApiError> {
    check_task(&task)?;
    let hold_ms = request
        .uri()
        .query()
        .and_then(|q| query_param(q, "hold_ms"))
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    let hold = Duration::from_millis(u64::from(hold_ms.min(MAX_HOLD_MS)));
    let deadline = tokio::time::Instant::now() + hold;
    let watch = ctx.scheduler.watch(&task);
    let look = || ctx.scheduler.with_state(|s, _| s.piece_digest(&task, n));
    match crate::wait::until(&watch, deadline, look).await {
        Some(digest) => Ok(json(StatusCode::OK, &PieceDigest { digest })),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("piece {n} of {task}: digest not known"),
        )),
    }
}

async fn announce(
    State(ctx): State<Ctx>,
    Path(task): Path<String>,
    ext: Extensions,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    check_task(&task)?;
    let a: Announce = parse(&body)?;
    check_source(&ctx, &ext, &a.peer).await?;
    metrics::counter!("wharf_scheduler_announces_total").increment(1);
    let others = ctx.scheduler.with_state(|s, now| s.announce(&task, &a, now))?;
    ctx.scheduler.wake(&task);
    for t in &others {
        ctx.scheduler.wake(t);
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn report(
    State(ctx): State<Ctx>,
    Path(task): Path<String>,
    ext: Extensions,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    check_task(&task)?;
    let r: Report = parse(&body)?;
    check_source(&ctx, &ext, &r.peer).await?;
    ctx.scheduler.with_state(|s, now| s.report(&task, &r, now))?;
    ctx.scheduler.wake(&task);
    metrics::counter!("wharf_scheduler_reports_total", "reason" => r.reason.as_str()).increment(1);
    Ok(StatusCode::NO_CONTENT)
}

async fn preheat_add(State(ctx): State<Ctx>, body: Bytes) -> Result<StatusCode, ApiError> {
    let p: Preheat = parse(&body)?;
    let new = ctx.scheduler.with_state(|s, now| s.add_preheat(&p, now))?;
    tracing::info!(blobs = p.blobs.len(), new, "preheat queued");
    Ok(StatusCode::ACCEPTED)
}

async fn preheat_list(State(ctx): State<Ctx>, request: Request) -> Result<Response, ApiError> {
    let peer = request
        .uri()
        .query()
        .and_then(|q| query_param(q, "peer"))
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "missing ?peer=<id>".into()))?;
    let list = ctx.scheduler.with_state(|s, _| s.preheat_for(&peer));
    Ok(json(StatusCode::OK, &list))
}

async fn swarms(State(ctx): State<Ctx>) -> Response {
    let swarms = ctx.scheduler.with_state(|s, now| s.swarms(now));
    json(StatusCode::OK, &swarms)
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn metrics_text(State(ctx): State<Ctx>) -> Response {
    match &ctx.metrics {
        Some(render) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render()).into_response(),
        None => not_found().await,
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}

/// The first non-empty value of `name` in a query string.
fn query_param(query: &str, name: &str) -> Option<String> {
    wharf_oci::query::param(Some(query), name).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Peer, PreheatBlob, ReportReason, ScheduleResponse, Swarms, TaskShape};
    use crate::scheduler::{Policy, SchedulerConfig, serve_scheduler};

    const TASK: &str = "sha256:00000000000000000000000000000000000000000000000000000000000000aa";
    const TOKEN: &str = "cluster-secret";

    struct Server {
        base: String,
        client: reqwest::Client,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    impl Server {
        async fn start(token: Option<&str>) -> Server {
            Self::start_with(token, Policy::default()).await
        }

        async fn start_with(token: Option<&str>, policy: Policy) -> Server {
            wharf_remote::http::install_crypto_provider();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let config = SchedulerConfig {
                token: token.map(str::to_owned),
                policy,
                ..SchedulerConfig::default()
            };
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let render: MetricsRender = Arc::new(|| "wharf_scheduler_test 1\n".to_owned());
            tokio::spawn(serve_scheduler(
                listener,
                Arc::new(Scheduler::new(config)),
                Some(render),
                async move {
                    let _ = stopped.await;
                },
            ));
            Server {
                base,
                client: reqwest::Client::new(),
                _stop: stop,
            }
        }

        async fn send(
            &self,
            method: reqwest::Method,
            path: &str,
            token: Option<&str>,
            body: Option<Vec<u8>>,
        ) -> (u16, Vec<u8>) {
            let mut r = self.client.request(method, format!("{}{path}", self.base));
            if let Some(t) = token {
                r = r.header("authorization", format!("Bearer {t}"));
            }
            if let Some(b) = body {
                r = r.header("content-type", "application/json").body(b);
            }
            let resp = r.send().await.unwrap();
            (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
        }

        async fn post<T: Serialize>(&self, path: &str, value: &T) -> (u16, Vec<u8>) {
            self.send(
                reqwest::Method::POST,
                path,
                Some(TOKEN),
                Some(serde_json::to_vec(value).unwrap()),
            )
            .await
        }

        async fn get(&self, path: &str) -> (u16, Vec<u8>) {
            self.send(reqwest::Method::GET, path, Some(TOKEN), None).await
        }
    }

    fn error_of(body: &[u8]) -> String {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        v["error"].as_str().unwrap().to_owned()
    }

    fn peer(i: u32) -> Peer {
        Peer {
            id: format!("node-{i}"),
            // (Requests come from 127.0.0.1: the address a peer announces must be where it connects from.)
            addr: format!("http://127.0.0.1:{}", 65000 + i),
            rack: None,
            seed: false,
            relays: true,
        }
    }

    fn shape() -> TaskShape {
        TaskShape {
            size: 3 << 20,
            piece_len: 1 << 20,
        }
    }

    /// `p` wants piece `want` of the test task, with no limits of its own and no hold.
    fn request(p: Peer, want: u32) -> ScheduleRequest {
        ScheduleRequest {
            peer: p,
            shape: shape(),
            want: vec![want],
            max_origin: None,
            slots: None,
            origin: None,
            hold_ms: None,
        }
    }

    #[tokio::test]
    async fn token_is_required_on_v1_and_metrics() {
        let s = Server::start(Some(TOKEN)).await;
        let get = reqwest::Method::GET;
        let (status, body) = s.send(get.clone(), "/v1/swarms", None, None).await;
        assert_eq!(status, 401);
        assert!(error_of(&body).contains("bearer"), "{}", String::from_utf8_lossy(&body));
        assert_eq!(s.send(get.clone(), "/v1/swarms", Some("wrong"), None).await.0, 401);
        assert_eq!(
            s.send(get.clone(), "/v1/swarms", Some("cluster-secre"), None).await.0,
            401
        );
        let req = request(peer(1), 0);
        let path = format!("/v1/tasks/{TASK}/schedule");
        let body = serde_json::to_vec(&req).unwrap();
        assert_eq!(s.send(reqwest::Method::POST, &path, None, Some(body)).await.0, 401);
        let (status, body) = s.send(get.clone(), "/v1/swarms", Some(TOKEN), None).await;
        assert_eq!(status, 200);
        let swarms: Swarms = serde_json::from_slice(&body).unwrap();
        assert!(swarms.tasks.is_empty(), "the refused schedule left no trace");
        assert_eq!(s.send(get.clone(), "/healthz", None, None).await.0, 200);
        assert_eq!(
            s.send(get.clone(), "/metrics", None, None).await.0,
            401,
            "metrics tell what swarms exist"
        );
        let (status, body) = s.send(get, "/metrics", Some(TOKEN), None).await;
        assert_eq!((status, body), (200, b"wharf_scheduler_test 1\n".to_vec()));
    }

    #[tokio::test]
    async fn open_without_a_token() {
        let s = Server::start(None).await;
        assert_eq!(s.send(reqwest::Method::GET, "/v1/swarms", None, None).await.0, 200);
    }

    #[tokio::test]
    async fn a_held_schedule_answers_when_the_piece_is_announced() {
        // Without relays, a piece leased to node 1 has no source until node 1 announces it.
        let policy = Policy {
            relay: false,
            ..Policy::default()
        };
        let s = Arc::new(Server::start_with(Some(TOKEN), policy).await);
        let req = |p: Peer, hold_ms: Option<u32>| ScheduleRequest {
            hold_ms,
            ..request(p, 0)
        };
        let path = format!("/v1/tasks/{TASK}/schedule");
        let (status, body) = s.post(&path, &req(peer(1), None)).await;
        assert_eq!(status, 200);
        let answer: ScheduleResponse = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer.assignments[0].source, Source::Origin);

        // Nothing changes: a held request answers "wait" once its hold is over, not before.
        let started = std::time::Instant::now();
        let (_, body) = s.post(&path, &req(peer(2), Some(300))).await;
        let answer: ScheduleResponse = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer.assignments[0].source, Source::Wait);
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );

        // Held for up to 5 s; node 1 announces the piece meanwhile: the answer names node 1, long before 5 s.
        let held = tokio::spawn({
            let (s, r, path) = (s.clone(), req(peer(3), Some(5_000)), path.clone());
            async move {
                let started = std::time::Instant::now();
                let (_, body) = s.post(&path, &r).await;
                (
                    started.elapsed(),
                    serde_json::from_slice::<ScheduleResponse>(&body).unwrap(),
                )
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let ann = Announce {
            peer: peer(1),
            shape: shape(),
            have: vec![0],
            digests: vec![(0, "ab".repeat(32))],
            done: false,
            gone: false,
        };
        let (status, _) = s.post(&format!("/v1/tasks/{TASK}/announce"), &ann).await;
        assert_eq!(status, 204);
        let (took, answer) = held.await.unwrap();
        assert!(
            matches!(&answer.assignments[0].source, Source::Peer { id, .. } if *id == peer(1).id),
            "{answer:?}"
        );
        assert!(
            took < Duration::from_secs(4),
            "woken by the announcement, not the hold's end: {took:?}"
        );
    }

    #[tokio::test]
    async fn a_leased_piece_is_relayed_and_its_digest_is_held_until_announced() {
        let s = Arc::new(Server::start(Some(TOKEN)).await);
        let path = format!("/v1/tasks/{TASK}/schedule");
        let (_, body) = s.post(&path, &request(peer(1), 0)).await;
        let answer: ScheduleResponse = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer.assignments[0].source, Source::Origin);
        // Node 2 gets it through node 1 while node 1 fetches it from the origin; no digest yet.
        let (_, body) = s.post(&path, &request(peer(2), 0)).await;
        let answer: ScheduleResponse = serde_json::from_slice(&body).unwrap();
        assert!(
            matches!(&answer.assignments[0].source, Source::Peer { id, relay: true, .. } if *id == peer(1).id),
            "{answer:?}"
        );
        assert_eq!(answer.digests[0], None);
        let digest_path = format!("/v1/tasks/{TASK}/pieces/0/digest");
        let (status, _) = s.get(&format!("{digest_path}?hold_ms=100")).await;
        assert_eq!(status, 404, "not known, and nothing announced within the hold");
        // Held until node 1 announces it.
        let held = tokio::spawn({
            let (s, path) = (s.clone(), format!("{digest_path}?hold_ms=5000"));
            async move {
                let started = std::time::Instant::now();
                let (status, body) = s.get(&path).await;
                (started.elapsed(), status, body)
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let ann = Announce {
            peer: peer(1),
            shape: shape(),
            have: vec![0],
            digests: vec![(0, "cd".repeat(32))],
            done: false,
            gone: false,
        };
        assert_eq!(s.post(&format!("/v1/tasks/{TASK}/announce"), &ann).await.0, 204);
        let (took, status, body) = held.await.unwrap();
        assert_eq!(status, 200);
        let got: PieceDigest = serde_json::from_slice(&body).unwrap();
        assert_eq!(got.digest, "cd".repeat(32));
        assert!(took < Duration::from_secs(4), "woken by the announcement: {took:?}");
        let (status, _) = s.get(&format!("/v1/tasks/{TASK}/pieces/0/digest")).await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn a_peer_must_announce_the_address_it_connects_from() {
        let s = Server::start(Some(TOKEN)).await;
        // A client whose connections leave from 127.0.0.2.
        let from_2 = reqwest::Client::builder()
            .local_address(IpAddr::from([127, 0, 0, 2]))
            .build()
            .unwrap();
        let announce = |addr: &str| Announce {
            peer: Peer {
                id: "node-x".into(),
                addr: addr.into(),
                rack: None,
                seed: false,
                relays: true,
            },
            shape: shape(),
            have: vec![],
            digests: vec![],
            done: false,
            gone: false,
        };
        let post = |a: Announce| {
            from_2
                .post(format!("{}/v1/tasks/{TASK}/announce", s.base))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&a).unwrap())
                .send()
        };
        // Someone else's address (every node would send it requests with the cluster token): refused.
        let r = post(announce("http://127.0.0.3:65002")).await.unwrap();
        assert_eq!(r.status(), 403);
        let why = r.text().await.unwrap();
        assert!(
            why.contains("connects from 127.0.0.2") && why.contains("--trust-peer-addresses"),
            "{why}"
        );
        // Its own: taken, and then the id is its own.
        assert_eq!(post(announce("http://127.0.0.2:65002")).await.unwrap().status(), 204);
        assert_eq!(post(announce("http://127.0.0.2:65003")).await.unwrap().status(), 409);
        // A host name resolving to it will do.
        let by_name = Announce {
            peer: Peer {
                id: "node-y".into(),
                ..announce("http://localhost:65002").peer
            },
            ..announce("")
        };
        let r = s.post(&format!("/v1/tasks/{TASK}/announce"), &by_name).await;
        assert_eq!(r.0, 204, "{}", String::from_utf8_lossy(&r.1));
    }

    #[tokio::test]
    async fn schedule_announce_report_round_trip() {
        // One corrupt report excludes here (the rule for several is the state's test).
        let policy = Policy {
            corrupt_reporters: 1,
            ..Policy::default()
        };
        let s = Server::start_with(Some(TOKEN), policy).await;
        let (a, b, c) = (peer(1), peer(2), peer(3));
        let (status, body) = s
            .post(&format!("/v1/tasks/{TASK}/schedule"), &request(a.clone(), 1))
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer: ScheduleResponse = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer.assignments[0].source, Source::Origin);
        assert_eq!(answer.digests, vec![None, None, None]);

        let ann = Announce {
            peer: a.clone(),
            shape: shape(),
            have: vec![1],
            digests: vec![(1, "ab".repeat(32))],
            done: false,
            gone: false,
        };
        assert_eq!(s.post(&format!("/v1/tasks/{TASK}/announce"), &ann).await.0, 204);
        let (_, body) = s
            .post(&format!("/v1/tasks/{TASK}/schedule"), &request(b.clone(), 1))
            .await;
        let answer: ScheduleResponse = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            answer.assignments[0].source,
            Source::Peer {
                id: a.id.clone(),
                addr: a.addr.clone(),
                relay: false,
            }
        );
        assert_eq!(answer.digests[1].as_deref(), Some("ab".repeat(32).as_str()));

        let rep = Report {
            peer: b.clone(),
            bad: a.id.clone(),
            piece: 1,
            reason: ReportReason::Corrupt,
            digest: None,
        };
        assert_eq!(s.post(&format!("/v1/tasks/{TASK}/report"), &rep).await.0, 204);
        let (_, body) = s
            .post(&format!("/v1/tasks/{TASK}/schedule"), &request(c.clone(), 1))
            .await;
        let answer: ScheduleResponse = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            answer.assignments[0].source,
            Source::Origin,
            "excluded peer not offered"
        );
        let (_, body) = s.send(reqwest::Method::GET, "/v1/swarms", Some(TOKEN), None).await;
        let swarms: Swarms = serde_json::from_slice(&body).unwrap();
        assert_eq!(swarms.tasks.len(), 1);
        assert!(swarms.peers.iter().any(|p| p.id == a.id && p.excluded));

        let mut bad_reason = serde_json::to_value(&rep).unwrap();
        bad_reason["reason"] = "slow".into();
        assert_eq!(s.post(&format!("/v1/tasks/{TASK}/report"), &bad_reason).await.0, 400);
        let other_shape = ScheduleRequest {
            peer: c,
            shape: TaskShape {
                size: 1,
                piece_len: 1 << 20,
            },
            want: vec![],
            max_origin: None,
            slots: None,
            origin: None,
            hold_ms: None,
        };
        let (status, body) = s.post(&format!("/v1/tasks/{TASK}/schedule"), &other_shape).await;
        assert_eq!(status, 409);
        assert!(error_of(&body).contains("disagrees"));
    }

    #[tokio::test]
    async fn bad_task_ids_and_bodies_are_400() {
        let s = Server::start(Some(TOKEN)).await;
        let req = request(peer(1), 0);
        for task in ["sha256:abc", "md5:00", "url:..%2f..%2fetc", &TASK.to_uppercase()] {
            let (status, body) = s.post(&format!("/v1/tasks/{task}/schedule"), &req).await;
            assert_eq!(status, 400, "{task}");
            assert!(error_of(&body).contains("invalid task id"), "{task}");
        }
        let (status, body) = s
            .send(
                reqwest::Method::POST,
                &format!("/v1/tasks/{TASK}/announce"),
                Some(TOKEN),
                Some(b"{".to_vec()),
            )
            .await;
        assert_eq!(status, 400);
        assert!(error_of(&body).contains("invalid request body"));
        let out_of_range = ScheduleRequest { want: vec![3], ..req };
        assert_eq!(
            s.post(&format!("/v1/tasks/{TASK}/schedule"), &out_of_range).await.0,
            400
        );
        assert_eq!(s.send(reqwest::Method::GET, "/nope", Some(TOKEN), None).await.0, 404);
    }

    #[tokio::test]
    async fn preheat_queue() {
        let s = Server::start(Some(TOKEN)).await;
        let p = Preheat {
            blobs: vec![PreheatBlob {
                repository: "library/alpine".into(),
                digest: TASK.into(),
                size: 3 << 20,
            }],
        };
        assert_eq!(s.post("/v1/preheat", &p).await.0, 202);
        let get = reqwest::Method::GET;
        let (status, body) = s
            .send(get.clone(), "/v1/preheat?peer=seed%3A1", Some(TOKEN), None)
            .await;
        assert_eq!(status, 200);
        let list: Preheat = serde_json::from_slice(&body).unwrap();
        assert_eq!(list.blobs.len(), 1);
        assert_eq!(list.blobs[0].digest, TASK);
        let done = Announce {
            peer: Peer {
                id: "seed:1".into(),
                seed: true,
                ..peer(9)
            },
            shape: shape(),
            have: vec![],
            digests: vec![],
            done: true,
            gone: false,
        };
        assert_eq!(s.post(&format!("/v1/tasks/{TASK}/announce"), &done).await.0, 204);
        let (_, body) = s
            .send(get.clone(), "/v1/preheat?peer=seed%3A1", Some(TOKEN), None)
            .await;
        assert!(serde_json::from_slice::<Preheat>(&body).unwrap().blobs.is_empty());
        assert_eq!(s.send(get.clone(), "/v1/preheat", Some(TOKEN), None).await.0, 400);
        assert_eq!(s.send(get, "/v1/preheat?peer=x", None, None).await.0, 401);
    }

    #[test]
    fn query_and_secrets() {
        assert_eq!(query_param("a=1&peer=n%3A1+x", "peer").as_deref(), Some("n:1 x"));
        assert_eq!(query_param("peer=", "peer"), None);
        assert_eq!(query_param("peers=1", "peer"), None);
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert_eq!(bearer(&HeaderValue::from_static("bearer  tok ")), Some("tok"));
        assert_eq!(bearer(&HeaderValue::from_static("Basic tok")), None);
    }
}
