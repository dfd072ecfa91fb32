//! [`RedisSessions`]: the object store's upload session states in Redis, so an upload started on one replica can
//! continue and finish on another. Each session is a hash (`offset`, `state`) under `upload:<id>` with a TTL
//! refreshed by every save; a save is a compare-and-set on `offset` in one script, so of two replicas appending to
//! one session at once exactly one wins. Without Redis, sessions cannot be served: errors are
//! [`StorageError::Unavailable`], never a guessed offset.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::RedisMeta;
use crate::object::session::{SessionState, SessionStore};
use crate::{Result, StorageError};

/// KEYS: the session. ARGV: expected offset ('' = the session must not exist), new offset, state JSON, TTL.
static SAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('HGET', KEYS[1], 'offset')
if ARGV[1] == '' then
  if cur then return 0 end
elseif cur ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'offset', ARGV[2], 'state', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
",
    )
});

/// Upload session states in Redis, shared by every replica using the same Redis and prefix.
#[derive(Clone)]
pub struct RedisSessions {
    meta: RedisMeta,
    ttl: Duration,
}

impl RedisSessions {
    /// A session not saved for this long is forgotten (its chunks are then garbage for the bucket's lifecycle).
    pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

    pub fn new(meta: RedisMeta) -> Self {
        RedisSessions {
            meta,
            ttl: Self::DEFAULT_TTL,
        }
    }

    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    fn key(&self, id: &str) -> String {
        self.meta.key(&["upload", id])
    }

    /// The cache's owed invalidation goes first whenever this process uses Redis (see the module documentation); if
    /// it fails, the session command will say why.
    async fn settle_first(&self) {
        if self.meta.owes_invalidation() {
            let _ = self.meta.settle().await;
        }
    }
}

#[async_trait]
impl SessionStore for RedisSessions {
    async fn load(&self, id: &str) -> Result<Option<SessionState>> {
        self.settle_first().await;
        let key = self.key(id);
        let mut cmd = redis::cmd("HGET");
        cmd.arg(&key).arg("state");
        let Some(json) = self.meta.run::<Option<Vec<u8>>>(cmd).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|e| StorageError::Corrupt {
                path: format!("redis key {key}").into(),
                reason: e.to_string(),
            })
    }

    async fn save(&self, id: &str, next: &SessionState, expected: Option<u64>) -> Result<bool> {
        self.settle_first().await;
        let json = serde_json::to_vec(next).map_err(|e| StorageError::backend("encode an upload session", e))?;
        let mut call = SAVE.prepare_invoke();
        call.key(self.key(id))
            .arg(expected.map(|o| o.to_string()).unwrap_or_default())
            .arg(next.offset.to_string())
            .arg(json)
            .arg(self.ttl.as_secs().max(1));
        Ok(self.meta.eval::<i64>(&call).await? == 1)
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.settle_first().await;
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(id));
        self.meta.run::<i64>(cmd).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands;

    use super::*;
    use crate::object::session::Chunk;
    use crate::redis_meta::testing::{RedisServer, meta};

    fn state(offset: u64, chunk: &str) -> SessionState {
        SessionState {
            repo: "r".into(),
            offset,
            algorithm: "sha256".into(),
            hash_state: "00".into(),
            chunks: vec![Chunk {
                key: chunk.into(),
                size: offset,
            }],
            started: 1,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_saves_with_one_expected_offset_have_exactly_one_winner() {
        let Some(redis) = RedisServer::start() else { return };
        // Two replicas, each with its own connection.
        let a = RedisSessions::new(meta(&redis.url()).await);
        let b = RedisSessions::new(meta(&redis.url()).await);
        assert_eq!(a.load("s").await.unwrap(), None);

        let (sa, sb) = (state(10, "a"), state(10, "b"));
        let (wa, wb) = tokio::join!(a.save("s", &sa, None), b.save("s", &sb, None));
        let (wa, wb) = (wa.unwrap(), wb.unwrap());
        assert!(wa ^ wb, "created by both or by neither: {wa} {wb}");
        let winner = if wa { &sa } else { &sb };
        assert_eq!(b.load("s").await.unwrap().as_ref(), Some(winner));

        let (na, nb) = (state(20, "a2"), state(25, "b2"));
        let (wa, wb) = tokio::join!(a.save("s", &na, Some(10)), b.save("s", &nb, Some(10)));
        let (wa, wb) = (wa.unwrap(), wb.unwrap());
        assert!(wa ^ wb, "appended by both or by neither: {wa} {wb}");
        let winner = if wa { &na } else { &nb };
        assert_eq!(a.load("s").await.unwrap().as_ref(), Some(winner));

        // A replica that read the old offset cannot overwrite, nor can a second start.
        assert!(!a.save("s", &state(30, "x"), Some(10)).await.unwrap());
        assert!(!a.save("s", &state(30, "x"), None).await.unwrap());
        assert!(a.save("s", &state(30, "x"), Some(winner.offset)).await.unwrap());

        a.remove("s").await.unwrap();
        assert_eq!(b.load("s").await.unwrap(), None);
        a.remove("s").await.unwrap();
    }

    #[tokio::test]
    async fn every_save_sets_the_ttl() {
        let Some(redis) = RedisServer::start() else { return };
        let sessions = RedisSessions::new(meta(&redis.url()).await).with_ttl(Duration::from_secs(100));
        assert!(sessions.save("s", &state(1, "a"), None).await.unwrap());
        let mut raw = redis.raw().await;
        let ttl: i64 = raw.ttl("wharf:upload:s").await.unwrap();
        assert!((1..=100).contains(&ttl), "TTL {ttl}");

        let _: bool = raw.expire("wharf:upload:s", 5).await.unwrap();
        assert!(sessions.save("s", &state(2, "b"), Some(1)).await.unwrap());
        let ttl: i64 = raw.ttl("wharf:upload:s").await.unwrap();
        assert!(ttl > 5, "the save did not refresh the TTL: {ttl}");

        let default = RedisSessions::new(meta(&redis.url()).await);
        assert!(default.save("d", &state(1, "a"), None).await.unwrap());
        let ttl: i64 = raw.ttl("wharf:upload:d").await.unwrap();
        assert!(ttl > 6 * 24 * 3600, "default TTL {ttl}");
    }

    #[tokio::test]
    async fn without_redis_sessions_are_unavailable() {
        let Some(mut redis) = RedisServer::start() else { return };
        let sessions = RedisSessions::new(meta(&redis.url()).await);
        assert!(sessions.save("s", &state(1, "a"), None).await.unwrap());
        redis.kill();
        let unavailable = |r: Result<_>| matches!(r, Err(StorageError::Unavailable { service: "redis", .. }));
        assert!(unavailable(sessions.load("s").await.map(|_| ())));
        assert!(unavailable(
            sessions.save("s", &state(2, "b"), Some(1)).await.map(|_| ())
        ));
        assert!(unavailable(sessions.remove("s").await));
    }

    #[tokio::test]
    async fn a_corrupt_state_is_an_error_not_a_session() {
        let Some(redis) = RedisServer::start() else { return };
        let sessions = RedisSessions::new(meta(&redis.url()).await);
        let mut raw = redis.raw().await;
        let _: i64 = raw.hset("wharf:upload:s", "state", "{not json").await.unwrap();
        assert!(matches!(sessions.load("s").await, Err(StorageError::Corrupt { .. })));
    }
}
