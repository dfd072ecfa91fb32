//! [`RedisGcLock`]: the object store's [`GcLock`] shared by replicas through Redis (the protocol is in
//! `object/gc.rs`).
//!
//! Keys (under the prefix): `gc:lock` (the exclusive side: a collection's token, expiring), `gc:writers` (open write
//! sections: a sorted set of ids scored by their expiry in Unix ms, so a replica that dies mid-section blocks
//! nobody for long), `gc:run` (one run at a time: a token, refreshed while it runs), `gc:reused` (digests reused since
//! the run began). Entering a section is one script (refused while `gc:lock` exists); the exclusive side is
//! `SET NX` then waiting for the unexpired sections to close. Without Redis, write sections cannot open (503): a
//! push could otherwise race a collection another replica is running.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use wharf_oci::Digest;

use super::{RedisMeta, fresh_token};
use crate::object::gc_lock::{GcHold, GcLock, RunHold, WriteSection};
use crate::{Result, StorageError};

/// How long a write section counts as open if its replica never closes it.
const SECTION_TTL: Duration = Duration::from_secs(60);
/// How long the exclusive side is held at most without renewal (one batch of deletions).
const LOCK_TTL: Duration = Duration::from_secs(120);
/// How long a run stays marked without renewal (renewed every third of it while it runs): a collector killed
/// mid-run keeps the next one out only this long.
const RUN_TTL: Duration = Duration::from_secs(30 * 60);
/// How long the reused set outlives its last write: longer than any run, since losing it would let a batch delete
/// what a push just made reachable.
const REUSED_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long [`GcLock::settle`] waits for releases still on their way to Redis.
const SETTLE_WAIT: Duration = Duration::from_secs(10);
/// How long a write section waits for a collection's batch before giving up with 503.
const ENTER_WAIT: Duration = Duration::from_secs(120);

static ENTER: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
        redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
        redis.call('PEXPIRE', KEYS[2], ARGV[3])
        if #ARGV > 3 and redis.call('EXISTS', KEYS[3]) == 1 then
            redis.call('SADD', KEYS[4], unpack(ARGV, 4))
            redis.call('PEXPIRE', KEYS[4], ARGV[3])
        end
        return 1
        ",
    )
});

static RENEW: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
        return 0
        ",
    )
});

static RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
        return 0
        ",
    )
});

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Clone)]
pub struct RedisGcLock {
    meta: RedisMeta,
    /// Releases of a collection's holds started by drops (no await there), so that [`GcLock::settle`] can wait for
    /// them before a process exits: a runtime shut down under them would leave `gc:lock` set for its whole TTL, and
    /// every push waiting.
    releases: tokio_util::task::TaskTracker,
}

impl RedisGcLock {
    pub fn new(meta: RedisMeta) -> Self {
        RedisGcLock {
            meta,
            releases: tokio_util::task::TaskTracker::new(),
        }
    }

    fn key(&self, name: &str) -> String {
        self.meta.key(&["gc", name])
    }

    /// Deletes `key` if it still holds `token`, from a drop (no await there).
    fn release_later(&self, key: String, token: String) {
        let meta = self.meta.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            self.releases.spawn_on(
                async move {
                    let mut call = RELEASE.prepare_invoke();
                    call.key(key).arg(token);
                    let _ = meta.eval::<i64>(&call).await;
                },
                &handle,
            );
        }
    }
}

/// Removes a write section's id from the set when dropped.
struct Section {
    lock: RedisGcLock,
    id: String,
}

impl Drop for Section {
    fn drop(&mut self) {
        let meta = self.lock.meta.clone();
        let (key, id) = (self.lock.key("writers"), std::mem::take(&mut self.id));
        // Not tracked for `settle`: sections close in servers, whose runtime outlives them.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let mut cmd = redis::cmd("ZREM");
                cmd.arg(key).arg(id);
                let _ = meta.run::<i64>(cmd).await;
            });
        }
    }
}

/// Deletes a held key (`gc:lock` or `gc:run`) when dropped, if it still holds our token; while held, a background
/// task renews its expiry (every third of it) so a long batch or run does not outlive its own lock.
struct Held {
    lock: RedisGcLock,
    key: String,
    token: String,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Held {
    fn new(lock: RedisGcLock, key: String, token: String, ttl: Duration) -> Held {
        let renewer =
            tokio::runtime::Handle::try_current().ok().map(|h| {
                let (meta, key, token) = (lock.meta.clone(), key.clone(), token.clone());
                h.spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    let mut call = RENEW.prepare_invoke();
                    call.key(&key).arg(&token).arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
                    match meta.eval::<i64>(&call).await {
                        Ok(1) => {}
                        Ok(_) => {
                            tracing::warn!(key = %key, "a garbage-collection lock was lost before its holder ended");
                            return;
                        }
                        Err(e) => tracing::warn!(key = %key, error = %e, "cannot renew a garbage-collection lock"),
                    }
                }
            })
            });
        Held {
            lock,
            key,
            token,
            renewer,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        self.lock
            .release_later(std::mem::take(&mut self.key), std::mem::take(&mut self.token));
    }
}

#[async_trait]
impl GcLock for RedisGcLock {
    async fn enter(&self, reused: &[Digest]) -> Result<WriteSection> {
        let id = fresh_token();
        let deadline = Instant::now() + ENTER_WAIT;
        loop {
            let expiry = unix_ms(SystemTime::now() + SECTION_TTL);
            let mut call = ENTER.prepare_invoke();
            call.key(self.key("lock"))
                .key(self.key("writers"))
                .key(self.key("run"))
                .key(self.key("reused"))
                .arg(&id)
                .arg(expiry)
                .arg(u64::try_from(REUSED_TTL.as_millis()).unwrap_or(u64::MAX));
            for d in reused {
                call.arg(d.to_string());
            }
            if self.meta.eval::<i64>(&call).await? == 1 {
                return Ok(WriteSection::new(Section { lock: self.clone(), id }));
            }
            if Instant::now() > deadline {
                return Err(StorageError::Unavailable {
                    service: "garbage collection lock",
                    reason: "a collection held it for too long".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn exclusive(&self) -> Result<GcHold> {
        let token = fresh_token();
        let key = self.key("lock");
        loop {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_TTL.as_millis() as u64);
            if self.meta.run::<Option<String>>(cmd).await?.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let held = Held::new(self.clone(), key, token, LOCK_TTL);
        // Wait for the open sections (unexpired ones: a dead replica's expire) to close.
        let writers = self.key("writers");
        loop {
            let now = unix_ms(SystemTime::now());
            let mut trim = redis::cmd("ZREMRANGEBYSCORE");
            trim.arg(&writers).arg("-inf").arg(now);
            self.meta.run::<i64>(trim).await?;
            let mut count = redis::cmd("ZCARD");
            count.arg(&writers);
            if self.meta.run::<i64>(count).await? == 0 {
                return Ok(GcHold::new(held));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn begin(&self, _hold: &GcHold) -> Result<Option<RunHold>> {
        let token = fresh_token();
        let key = self.key("run");
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(RUN_TTL.as_millis() as u64);
        if self.meta.run::<Option<String>>(cmd).await?.is_none() {
            return Ok(None);
        }
        let mut del = redis::cmd("DEL");
        del.arg(self.key("reused"));
        self.meta.run::<i64>(del).await?;
        Ok(Some(RunHold::new(Held::new(self.clone(), key, token, RUN_TTL))))
    }

    async fn reused(&self, _hold: &GcHold) -> Result<HashSet<Digest>> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(self.key("reused"));
        let members: Vec<String> = self.meta.run(cmd).await?;
        Ok(members.iter().filter_map(|m| m.parse().ok()).collect())
    }

    async fn end(&self, run: RunHold) -> Result<()> {
        let mut del = redis::cmd("DEL");
        del.arg(self.key("reused"));
        let result = self.meta.run::<i64>(del).await.map(|_| ());
        drop(run);
        result
    }

    async fn settle(&self) {
        self.releases.close();
        if tokio::time::timeout(SETTLE_WAIT, self.releases.wait()).await.is_err() {
            tracing::warn!("garbage-collection locks not released in time; they expire on their own");
        }
        self.releases.reopen();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_meta::testing::{RedisServer, meta};

    /// What `wharf gc` does: a run and a batch in a runtime of its own, which shuts down as soon as the collection
    /// returns. `settle` must have delivered the releases by then, or the lock (120 s) and the run (30 min) would
    /// stay and keep every push and the next collection waiting.
    #[test]
    fn holds_released_by_drop_reach_redis_before_a_collectors_runtime_shuts_down() {
        let Some(redis) = RedisServer::start() else { return };
        let url = redis.url();
        for _ in 0..5 {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let lock = RedisGcLock::new(meta(&url).await);
                let hold = lock.exclusive().await.unwrap();
                let run = lock.begin(&hold).await.unwrap().expect("no other run");
                drop(hold);
                let hold = lock.exclusive().await.unwrap();
                drop(hold);
                lock.end(run).await.unwrap();
                lock.settle().await;
            });
            drop(runtime);

            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let lock = RedisGcLock::new(meta(&url).await);
                // A push gets in at once, and the next collection may run.
                let section = tokio::time::timeout(Duration::from_secs(2), lock.enter(&[])).await;
                assert!(section.is_ok(), "the exclusive side was left held");
                drop(section);
                let hold = lock.exclusive().await.unwrap();
                let run = lock.begin(&hold).await.unwrap();
                assert!(run.is_some(), "the previous run was left marked");
                drop(hold);
                lock.end(run.unwrap()).await.unwrap();
                lock.settle().await;
            });
        }
    }
}
