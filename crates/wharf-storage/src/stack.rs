//! A store assembled from configuration: the backend (a directory, or a bucket through OpenDAL), the metadata cache
//! in front of it (memory, the Redis replicas share, or none), and the rules that keep garbage collection safe with
//! that combination. [`open`] is the one place that knows them, for `wharf serve` and `wharf gc` alike.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::object::{BucketSessions, ObjectConfig, ObjectStore, SessionStore};
use crate::redis_meta::{RedisCache, RedisGcLock, RedisMeta, RedisSessions};
use crate::{CacheConfig, CachedStore, FsStore, RegistryStore, Result, StorageError};

/// Where blobs and metadata live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A directory tree (`FsStore`).
    #[default]
    Fs,
    S3,
    Azblob,
    Gcs,
    Oss,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Fs => "fs",
            Backend::S3 => "s3",
            Backend::Azblob => "azblob",
            Backend::Gcs => "gcs",
            Backend::Oss => "oss",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the metadata cache lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheKind {
    /// In this process (moka), sized by [`CacheConfig`].
    #[default]
    Memory,
    /// In the Redis replicas share, so a write on one is seen by all at once.
    Redis,
    Off,
}

impl std::fmt::Display for CacheKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CacheKind::Memory => "memory",
            CacheKind::Redis => "redis",
            CacheKind::Off => "off",
        })
    }
}

/// How garbage collection will run on the store, for the rules that depend on it.
#[derive(Debug, Clone, Copy, Default)]
pub struct GcUse {
    /// Collections run inside this server on a schedule.
    pub scheduled: bool,
    /// Untagged manifest revisions are collected too.
    pub delete_untagged: bool,
}

#[derive(Debug, Clone, Default)]
pub struct StackConfig {
    pub backend: Backend,
    /// The directory of the `fs` backend.
    pub root: PathBuf,
    /// An object store's options as OpenDAL names them.
    pub options: Vec<(String, String)>,
    /// Object stores: answer blob GETs with presigned URLs valid this long.
    pub redirect: Option<Duration>,
    /// Object stores: bytes per part of a multipart write.
    pub part_size: usize,
    pub cache: CacheKind,
    pub cache_sizes: CacheConfig,
    /// `redis://...` and the key prefix, when replicas share a Redis.
    pub redis: Option<(String, String)>,
    pub gc: GcUse,
}

/// What a collection runs on: the filesystem store under its memory cache, or an object store stack (whose caches
/// must forget what goes).
#[derive(Clone)]
pub enum Collectable {
    Fs(Arc<CachedStore<FsStore>>),
    Object(Arc<dyn crate::object::gc::Collectable>),
}

pub struct Stack {
    pub store: Arc<dyn RegistryStore>,
    pub collectable: Collectable,
}

fn config_err(reason: String) -> StorageError {
    StorageError::Config(reason)
}

/// Checks the combination and builds the stack.
pub async fn open(c: &StackConfig) -> Result<Stack> {
    let sizes = match c.cache {
        CacheKind::Memory => c.cache_sizes,
        // Zero-sized caches keep nothing, so garbage collection still has its hooks.
        CacheKind::Off | CacheKind::Redis => CacheConfig {
            blob_descriptors: 0,
            manifest_bytes: 0,
        },
    };
    let redis = match &c.redis {
        Some((url, prefix)) => Some(RedisMeta::connect(url, prefix).await?),
        None => None,
    };
    if c.cache == CacheKind::Redis && redis.is_none() {
        return Err(config_err("cache kind \"redis\" needs [redis] url".into()));
    }
    if c.backend == Backend::Fs {
        if c.cache == CacheKind::Redis {
            return Err(config_err(
                "cache kind \"redis\" is for replicas sharing an object store; the fs backend caches in memory".into(),
            ));
        }
        let fs = FsStore::open(&c.root)?;
        let cached = Arc::new(CachedStore::new(fs.verify_references(true), sizes));
        return Ok(Stack {
            store: cached.clone(),
            collectable: Collectable::Fs(cached),
        });
    }
    let backend = c.backend;
    if c.gc.scheduled && redis.is_some() && c.cache == CacheKind::Memory {
        return Err(config_err(format!(
            "[gc] interval_secs with [cache] kind = \"memory\" on a shared {backend}: other replicas' memory caches \
             would not hear of what a collection deletes; use kind = \"redis\" (or \"off\")"
        )));
    }
    if c.gc.scheduled && redis.is_none() {
        tracing::warn!(
            "garbage collection on {backend} without [redis]: safe for one server only; replicas must share a Redis"
        );
    }
    let object = ObjectConfig {
        service: backend.as_str().to_owned(),
        options: c.options.clone(),
        redirect: c.redirect,
        part_size: c.part_size,
        ..Default::default()
    };
    let op = crate::object::operator(&object)?;
    let sessions: Arc<dyn SessionStore> = match &redis {
        Some(r) => Arc::new(RedisSessions::new(r.clone())),
        None => Arc::new(BucketSessions::new(op.clone())),
    };
    let mut store = ObjectStore::new(op, sessions, &object);
    if let Some(r) = &redis {
        // Replicas coordinate their writes with a collection any of them runs.
        store = store.with_gc_lock(Arc::new(RedisGcLock::new(r.clone())));
    }
    tracing::info!(%backend, cache = %c.cache, redis = redis.is_some(), "object storage");
    Ok(match (c.cache, redis) {
        (CacheKind::Memory, _) => {
            let s = Arc::new(CachedStore::new(store, sizes));
            Stack {
                store: s.clone(),
                collectable: Collectable::Object(s),
            }
        }
        (CacheKind::Redis, Some(r)) => {
            let s = Arc::new(RedisCache::new(store, r, Default::default()));
            Stack {
                store: s.clone(),
                collectable: Collectable::Object(s),
            }
        }
        _ => {
            let s = Arc::new(store);
            Stack {
                store: s.clone(),
                collectable: Collectable::Object(s),
            }
        }
    })
}

/// Whether a separate `wharf gc` process may delete on this configuration: on an object store the servers must hear
/// of what goes and keep out of the way while it goes, which takes the shared Redis (the lock every replica's pushes
/// take, and the cache they read).
pub fn check_offline_delete(c: &StackConfig) -> Result<()> {
    if c.backend != Backend::Fs && (c.redis.is_none() || c.cache == CacheKind::Memory) {
        return Err(config_err(format!(
            "on {} `wharf gc` deletes only with [redis] url set and [cache] kind = \"redis\" or \"off\": running \
             servers would not see its lock or forget what it deletes; set [gc] interval_secs to collect inside a \
             server, or use --dry-run",
            c.backend
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Kinds {
        backend: Backend,
        cache: CacheKind,
    }

    #[test]
    fn kinds_parse_from_their_config_names_and_nothing_else() {
        let k: Kinds = toml::from_str("backend = \"s3\"\ncache = \"off\"").unwrap();
        assert_eq!((k.backend, k.cache), (Backend::S3, CacheKind::Off));
        assert!(toml::from_str::<Kinds>("backend = \"ftp\"\ncache = \"off\"").is_err());
        assert!(toml::from_str::<Kinds>("backend = \"fs\"\ncache = \"disk\"").is_err());
        assert_eq!(Backend::Azblob.to_string(), "azblob");
    }

    #[tokio::test]
    async fn unsafe_combinations_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let fs_redis = StackConfig {
            root: dir.path().to_owned(),
            cache: CacheKind::Redis,
            ..Default::default()
        };
        let err = open(&fs_redis).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("needs [redis] url"), "{err}");
        let shared_memory_cache = StackConfig {
            backend: Backend::S3,
            gc: GcUse {
                scheduled: true,
                delete_untagged: true,
            },
            redis: Some(("redis://127.0.0.1:1/".into(), "w:".into())),
            ..Default::default()
        };
        let err = open(&shared_memory_cache)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("kind = \"memory\" on a shared s3"), "{err}");
        assert!(
            check_offline_delete(&StackConfig {
                backend: Backend::S3,
                ..Default::default()
            })
            .is_err()
        );
        assert!(check_offline_delete(&fs_redis).is_ok());
        let stack = open(&StackConfig {
            root: dir.path().to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(matches!(stack.collectable, Collectable::Fs(_)));
    }
}
