/*!
Metadata shared by several `wharf serve` replicas through one Redis server: the blob-descriptor, tag and manifest
cache ([`RedisCache`]) and the object store's upload sessions ([`RedisSessions`]). Redis must be a standalone (or
Sentinel-managed) server, not a Cluster: the cache's scripts read keys they compute.

Redis is never the source of truth for the cache: every answer it gives could also come from the store behind it, so
when Redis is down or slow, reads fall through to that store and are only slower. Upload sessions have no other home,
so their operations fail with [`StorageError::Unavailable`] (a 503 the client retries) rather than guess.

# Key layout (prefix `wharf:` by default)

| key                         | value                                   | TTL                            |
|-----------------------------|-----------------------------------------|--------------------------------|
| `gen`                       | random token: the global generation     | none                           |
| `ep:blob:<digest>`          | random token: epoch of one digest       | 4 days                         |
| `ep:tags:<repo>`            | random token: epoch of a repo's tags    | 4 days                         |
| `ep:links:<repo>`           | random token: epoch of a repo's links   | 4 days                         |
| `ep:manifests:<repo>`       | random token: epoch of a repo's revisions | 4 days                       |
| `blob:<digest>`             | `<stamp>\|<size>`                       | 24 h                           |
| `link:<repo>:<digest>`      | `<stamp>\|<size>`                       | 1 h                            |
| `tag:<repo>:<tag>`          | `<stamp>\|<digest>`                     | 1 h                            |
| `manifest:<repo>:<digest>`  | `<stamp>\|<len>:<media type><body>`     | 24 h                           |
| `upload:<id>`               | hash: `offset`, `state` (JSON)          | 7 days, refreshed by each save |

Repository names, tags and digests contain no `:`, so these names are unambiguous.

# Invalidation protocol

Each entry depends on a few *scopes*: the global generation and one to two epoch keys (a blob descriptor on its
digest; a link on its digest and its repository's links; a manifest on its digest and its repository's manifests; a
tag on its repository's tags). Its *stamp* is the values of those keys, joined with `.`, when it was filled. An entry
is valid only while its stamp equals the current values, checked by the same script that reads it (one round trip).

- **Read**: the script returns the entry if valid, else a *token*: the scopes' current values (empty for an absent
  key). A miss reads the store, then a fill script stores the entry only if every scope still has the token's value
  (creating absent ones with a fresh random value). So a fill never puts back what a write invalidated while the
  store was being read: that write changed a scope in between.
- **Write**: a write that can change a cached answer (tag moves in `put_manifest`, `delete_manifest`,
  `delete_tag`, `unlink_blob`, `remove_blob`, the `forget_*` hooks) sets the scopes it touches to fresh random values
  before and after it writes to the store. Links, blobs and manifests that appear are never invalidations: misses
  are not cached.
- **Redis unreachable during a write**: the store is written anyway; the process records that it owes an
  invalidation and, before it uses the cache again (and from a background retry), replaces the global generation,
  which makes every entry filled before unreachable. Until that succeeds, a replica that *can* reach Redis may still
  serve entries the write made stale; the TTLs bound that window.
- Epoch values are random, never counters, so an epoch key that expires or is evicted and comes back never
  revalidates old entries: an absent scope is always a miss.

A process that dies between its store write and its second invalidation leaves stale entries until their TTL (the
first invalidation narrows that window to fills racing the write). Redis restored from an old snapshot can hold stale
entries too: run the cache on a Redis without persistence, or accept the TTLs. Under memory pressure Redis should
evict (`allkeys-lru`): an evicted entry or scope is only a miss.
*/

mod cache;
mod gc_lock;
mod sessions;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::{Result, StorageError};

pub use cache::{RedisCache, RedisCacheConfig};
pub use gc_lock::RedisGcLock;
pub use sessions::RedisSessions;

/// How to reach Redis and how patiently.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Prepended to every key, so several registries can share one Redis.
    pub prefix: String,
    /// Bound on each connection attempt and on each command's reply: a dead or stalled Redis makes a request this
    /// much slower, never stuck.
    pub timeout: Duration,
    /// After a failure, cache reads go straight to the store for this long instead of waiting on Redis again.
    pub backoff: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "wharf:".into(),
            timeout: Duration::from_secs(1),
            backoff: Duration::from_secs(1),
        }
    }
}

/// A handle on the shared Redis; cheap to clone (one connection, multiplexed, reconnected on failure).
#[derive(Clone)]
pub struct RedisMeta {
    shared: Arc<Shared>,
}

struct Shared {
    conn: ConnectionManager,
    options: RedisOptions,
    /// Origin of the millisecond clocks below.
    start: Instant,
    /// Until when (ms since `start`) cache reads skip Redis after a failure.
    down_until: AtomicU64,
    /// When (ms since `start`, plus one; 0 = never) the last failure was logged, and failures since.
    last_warn: AtomicU64,
    unlogged: AtomicU64,
    /// Invalidations that could not reach Redis (`owed`) and the count covered by a generation change (`paid`).
    owed: AtomicU64,
    paid: AtomicU64,
    /// A background task is retrying to pay what is owed.
    paying: AtomicBool,
}

/// How often failures are logged at most.
const WARN_EVERY_MS: u64 = 5_000;
/// How often the background task retries to pay an owed invalidation.
const PAY_RETRY: Duration = Duration::from_millis(500);

impl RedisMeta {
    /// Connects to `url` (`redis://[user:password@]host[:port][/db]`; this build has no TLS) with keys under
    /// `prefix`. Only an invalid URL is an error: if Redis is down now, this logs it and the connection is
    /// retried on use, so a registry can start before its Redis.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisMeta> {
        let options = RedisOptions {
            prefix: prefix.to_owned(),
            ..RedisOptions::default()
        };
        Self::connect_with(url, options).await
    }

    /// [`RedisMeta::connect`] with every option.
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<RedisMeta> {
        // The error names what is wrong without echoing the URL, which may hold a password.
        let client = redis::Client::open(url).map_err(|e| StorageError::Unavailable {
            service: "redis",
            reason: format!("invalid Redis URL: {e}"),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout))
            // One attempt per reconnection: the next command starts another, and callers must not wait on backoff.
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| unavailable(&e))?;
        let meta = RedisMeta {
            shared: Arc::new(Shared {
                conn,
                options,
                start: Instant::now(),
                down_until: AtomicU64::new(0),
                last_warn: AtomicU64::new(0),
                unlogged: AtomicU64::new(0),
                owed: AtomicU64::new(0),
                paid: AtomicU64::new(0),
                paying: AtomicBool::new(false),
            }),
        };
        match meta.run::<()>(redis::cmd("PING")).await {
            Ok(()) => tracing::info!(prefix = %meta.prefix(), "connected to Redis"),
            Err(e) => tracing::warn!(error = %e, "Redis is not reachable yet; serving from the store until it is"),
        }
        Ok(meta)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.shared.options.prefix
    }

    /// True while this process owes the shared cache an invalidation it could not deliver.
    pub fn owes_invalidation(&self) -> bool {
        self.shared.owed.load(Ordering::SeqCst) > self.shared.paid.load(Ordering::SeqCst)
    }

    /// Delivers an owed invalidation now, by replacing the global generation. Ok when nothing is owed.
    pub async fn settle(&self) -> Result<()> {
        let owed = self.shared.owed.load(Ordering::SeqCst);
        if owed <= self.shared.paid.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(&["gen"])).arg(fresh_token());
        self.run::<()>(cmd).await?;
        // Only what was owed when the generation changed is paid: an invalidation owed since may have written the
        // store after Redis saw the new generation.
        self.shared.paid.fetch_max(owed, Ordering::SeqCst);
        tracing::info!("replaced the Redis cache generation to cover invalidations made while Redis was unreachable");
        Ok(())
    }

    /// Records an invalidation that did not reach Redis and makes sure something retries it.
    pub(crate) fn owe(&self) {
        self.shared.owed.fetch_add(1, Ordering::SeqCst);
        if self.shared.paying.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to retry from: the next use of the cache pays instead.
            self.shared.paying.store(false, Ordering::SeqCst);
            return;
        };
        let weak = Arc::downgrade(&self.shared);
        runtime.spawn(pay_in_background(weak));
    }

    /// Whether the cache may use Redis now: not backing off after a failure, and nothing owed (paying it first).
    pub(crate) async fn ready(&self) -> bool {
        if self.now_ms() < self.shared.down_until.load(Ordering::Relaxed) {
            return false;
        }
        !self.owes_invalidation() || self.settle().await.is_ok()
    }

    /// A key under the prefix: the parts joined with `:`.
    pub(crate) fn key(&self, parts: &[&str]) -> String {
        let mut key = self.shared.options.prefix.clone();
        key.push_str(&parts.join(":"));
        key
    }

    /// Runs one command; a failure is logged (rate-limited), starts the backoff and comes back as `Unavailable`.
    pub(crate) async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T> {
        let mut conn = self.shared.conn.clone();
        let result = self.bounded(async move { cmd.query_async::<T>(&mut conn).await }).await;
        result.map_err(|e| self.failed(&e))
    }

    /// Runs one script invocation, like [`RedisMeta::run`].
    pub(crate) async fn eval<T: redis::FromRedisValue>(&self, call: &redis::ScriptInvocation<'_>) -> Result<T> {
        let mut conn = self.shared.conn.clone();
        let result = self.bounded(call.invoke_async::<T>(&mut conn)).await;
        result.map_err(|e| self.failed(&e))
    }

    /// The connection manager bounds each attempt and reply; this bounds the whole call (a reply after a reconnect,
    /// a script loaded after `NOSCRIPT`) as a last guard.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> std::result::Result<T, redis::RedisError> {
        let limit = self.shared.options.timeout * 3;
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        }
    }

    fn failed(&self, e: &redis::RedisError) -> StorageError {
        let now = self.now_ms();
        let backoff = u64::try_from(self.shared.options.backoff.as_millis()).unwrap_or(u64::MAX);
        self.shared
            .down_until
            .fetch_max(now.saturating_add(backoff), Ordering::Relaxed);
        let last = self.shared.last_warn.load(Ordering::Relaxed);
        let due = last == 0 || now + 1 >= last.saturating_add(WARN_EVERY_MS);
        if due
            && self
                .shared
                .last_warn
                .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.shared.unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(error = %e, suppressed, "Redis failed; falling back to the store");
        } else {
            self.shared.unlogged.fetch_add(1, Ordering::Relaxed);
        }
        unavailable(e)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.shared.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Retries paying an owed invalidation until it is paid or the handle is gone.
async fn pay_in_background(weak: Weak<Shared>) {
    loop {
        tokio::time::sleep(PAY_RETRY).await;
        let Some(shared) = weak.upgrade() else { return };
        let meta = RedisMeta { shared };
        if meta.settle().await.is_ok() && !meta.owes_invalidation() {
            meta.shared.paying.store(false, Ordering::SeqCst);
            // Something owed between the check and the flag would have seen `paying` set and not started a task.
            if !meta.owes_invalidation() || meta.shared.paying.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    }
}

/// A random token for a generation or an epoch: never reused, so a scope that disappears and comes back cannot
/// make an old entry valid again.
pub(crate) fn fresh_token() -> String {
    let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
    format!("{:016x}", high ^ low.rotate_left(17))
}

fn unavailable(e: &redis::RedisError) -> StorageError {
    StorageError::Unavailable {
        service: "redis",
        reason: e.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A real `redis-server` per test, a TCP proxy that can cut or stall the way to it, and a store that counts
    //! the reads reaching it.

    use std::io::{Read, Write};
    use std::net::TcpStream as StdTcpStream;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use async_trait::async_trait;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{Notify, watch};
    use wharf_oci::Digest;
    use wharf_oci::manifest::Descriptor;

    use super::{RedisMeta, RedisOptions};
    use crate::{
        ByteStream, FsStore, NewManifest, OpenBlob, Reference, RegistryStore, Result, StoredManifest, UploadStatus,
        Uploads,
    };

    /// A `redis-server` of this test's own, killed (by its PID) when dropped.
    pub struct RedisServer {
        child: Option<Child>,
        pub port: u16,
    }

    impl RedisServer {
        /// A server on a free loopback port, or `None` (after a SKIP line) when `redis-server` is not installed
        /// and `CI` is not set. With `CI` set, a missing server fails the test.
        pub fn start() -> Option<RedisServer> {
            available().then(|| Self::start_on(free_port()))
        }

        /// A server on `port` (again, after [`RedisServer::kill`]: empty, as after a restart without persistence).
        pub fn start_on(port: u16) -> RedisServer {
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--daemonize", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let server = RedisServer {
                child: Some(child),
                port,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while !pong(port) {
                assert!(
                    Instant::now() < deadline,
                    "redis-server on port {port} did not answer PING in 10 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            server
        }

        pub fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.port)
        }

        /// Kills the server (SIGKILL to its own PID) and waits for it to exit.
        pub fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        /// A plain connection for looking at what the cache stored.
        pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
            redis::Client::open(self.url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap()
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// Whether `redis-server` is installed; if not, prints a SKIP line, or fails when `CI` is set.
    pub fn available() -> bool {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is required when CI is set"
            );
            eprintln!("SKIP: redis-server is not installed");
        }
        installed
    }

    fn pong(port: u16) -> bool {
        let Ok(mut s) = StdTcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Options that give up quickly, so tests of outages stay short.
    pub fn quick() -> RedisOptions {
        RedisOptions {
            prefix: "wharf:".into(),
            timeout: Duration::from_millis(300),
            backoff: Duration::from_millis(200),
        }
    }

    /// A handle for a replica whose Redis stays up: a generous timeout, so a loaded machine does not turn hits into
    /// fall-throughs and fail the tests that count them.
    pub async fn meta(url: &str) -> RedisMeta {
        let options = RedisOptions {
            timeout: Duration::from_secs(5),
            ..quick()
        };
        RedisMeta::connect_with(url, options).await.unwrap()
    }

    /// A handle for a replica whose way to Redis the test cuts.
    pub async fn quick_meta(url: &str) -> RedisMeta {
        RedisMeta::connect_with(url, quick()).await.unwrap()
    }

    /// Waits (with a deadline) until `meta` has delivered what it owes.
    pub async fn until_settled(meta: &RedisMeta) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while meta.owes_invalidation() {
            assert!(
                Instant::now() < deadline,
                "the owed invalidation was not delivered in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Mode {
        /// Forward bytes both ways.
        Open,
        /// Close every connection at once, new ones as soon as they are accepted.
        Refuse,
        /// Keep connections open and forward nothing, as a stalled server or a lost route would.
        Blackhole,
    }

    /// A TCP proxy to a Redis port whose way through can be cut or stalled.
    pub struct Proxy {
        pub port: u16,
        mode: watch::Sender<Mode>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Proxy {
        pub async fn start(upstream: u16) -> Proxy {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let (mode, rx) = watch::channel(Mode::Open);
            let task = tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(relay(client, upstream, rx.clone()));
                }
            });
            Proxy { port, mode, task }
        }

        pub fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.port)
        }

        pub fn set(&self, mode: Mode) {
            self.mode.send_replace(mode);
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn relay(mut client: TcpStream, upstream: u16, mut mode: watch::Receiver<Mode>) {
        if *mode.borrow_and_update() == Mode::Open
            && let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await
        {
            let cut = async {
                while mode.changed().await.is_ok() {
                    if *mode.borrow_and_update() != Mode::Open {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
                () = cut => {}
            }
        }
        // Stalled: hold the connection, silent, until the mode changes again.
        if *mode.borrow() == Mode::Blackhole {
            let _ = mode.changed().await;
        }
    }

    /// Reads that reached the store behind a cache.
    #[derive(Default)]
    pub struct Reads {
        pub blob_size: AtomicUsize,
        pub repo_blob_size: AtomicUsize,
        pub get_manifest: AtomicUsize,
    }

    impl Reads {
        pub fn manifests(&self) -> usize {
            self.get_manifest.load(Ordering::SeqCst)
        }
    }

    /// Holds one manifest read after it has read the store and before it returns, so a test can run a write in
    /// between (a slow read racing an invalidation).
    #[derive(Default)]
    pub struct Gate {
        armed: AtomicBool,
        reached: Notify,
        release: Notify,
    }

    impl Gate {
        pub fn arm(&self) {
            self.armed.store(true, Ordering::SeqCst);
        }

        /// Waits until the held read has its answer from the store.
        pub async fn reached(&self) {
            self.reached.notified().await;
        }

        pub fn release(&self) {
            self.release.notify_one();
        }

        async fn pass(&self) {
            if self.armed.swap(false, Ordering::SeqCst) {
                self.reached.notify_one();
                self.release.notified().await;
            }
        }
    }

    /// One replica's view of the shared store, counting the reads that reach it.
    pub struct Counting {
        pub store: Arc<FsStore>,
        pub reads: Arc<Reads>,
        pub gate: Arc<Gate>,
    }

    #[async_trait]
    impl Uploads for Counting {
        async fn start_upload(&self, repo: &str) -> Result<UploadStatus> {
            self.store.start_upload(repo).await
        }
        async fn upload_status(&self, repo: &str, id: &str) -> Result<UploadStatus> {
            self.store.upload_status(repo, id).await
        }
        async fn append_upload(
            &self,
            repo: &str,
            id: &str,
            start: Option<u64>,
            body: ByteStream,
        ) -> Result<UploadStatus> {
            self.store.append_upload(repo, id, start, body).await
        }
        async fn commit_upload(&self, repo: &str, id: &str, expected: &Digest) -> Result<u64> {
            self.store.commit_upload(repo, id, expected).await
        }
        async fn cancel_upload(&self, repo: &str, id: &str) -> Result<()> {
            self.store.cancel_upload(repo, id).await
        }
        async fn put_blob(&self, repo: &str, expected: &Digest, body: ByteStream) -> Result<u64> {
            self.store.put_blob(repo, expected, body).await
        }
    }

    #[async_trait]
    impl RegistryStore for Counting {
        async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
            self.reads.blob_size.fetch_add(1, Ordering::SeqCst);
            self.store.blob_size(digest).await
        }
        async fn repo_blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>> {
            self.reads.repo_blob_size.fetch_add(1, Ordering::SeqCst);
            self.store.repo_blob_size(repo, digest).await
        }
        async fn open_blob(&self, repo: &str, digest: &Digest) -> Result<Option<OpenBlob>> {
            self.store.open_blob(repo, digest).await
        }
        async fn remove_blob(&self, digest: &Digest) -> Result<bool> {
            self.store.remove_blob(digest).await
        }
        async fn link_blob(&self, repo: &str, digest: &Digest) -> Result<()> {
            self.store.link_blob(repo, digest).await
        }
        async fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
            self.store.unlink_blob(repo, digest).await
        }
        async fn put_manifest(&self, repo: &str, manifest: NewManifest) -> Result<()> {
            self.store.put_manifest(repo, manifest).await
        }
        async fn get_manifest(&self, repo: &str, reference: &Reference) -> Result<Option<StoredManifest>> {
            self.reads.get_manifest.fetch_add(1, Ordering::SeqCst);
            let found = self.store.get_manifest(repo, reference).await;
            self.gate.pass().await;
            found
        }
        async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<bool> {
            self.store.delete_manifest(repo, digest).await
        }
        async fn delete_tag(&self, repo: &str, tag: &str) -> Result<bool> {
            self.store.delete_tag(repo, tag).await
        }
        async fn tags(&self, repo: &str) -> Result<Option<Vec<String>>> {
            self.store.tags(repo).await
        }
        async fn repositories(&self) -> Result<Vec<String>> {
            self.store.repositories().await
        }
        async fn referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
            self.store.referrers(repo, subject).await
        }
    }
}
