//! Upload sessions of the object store: where a session's state lives ([`SessionStore`]) and what it holds
//! ([`SessionState`]). The bytes themselves are chunk objects in the bucket; the state says which chunks, in what
//! order, and carries the digest state after the last one, so any replica can continue or commit the upload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Result, StorageError};

/// One chunk object of an upload: appended bytes `[start, start + size)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub key: String,
    pub size: u64,
}

/// Everything a replica needs to continue an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub repo: String,
    /// Bytes stored so far: the sum of the chunks' sizes.
    pub offset: u64,
    /// Digest algorithm of `hash_state` ("sha256" or "sha512").
    pub algorithm: String,
    /// Hex of [`wharf_oci::digest::DigestHasher::save_state`] after the last chunk.
    pub hash_state: String,
    pub chunks: Vec<Chunk>,
    /// Unix seconds when the session started (stale sessions are removed by age).
    pub started: u64,
}

/// Where upload session states are kept. Implementations must make [`SessionStore::save`] a compare-and-set on the
/// offset, so two replicas appending to one session at once cannot both win.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// The session's state; `None` if there is no such session (never started, finished, cancelled, expired).
    async fn load(&self, id: &str) -> Result<Option<SessionState>>;
    /// Stores `next` if the stored state's offset is still `expected` (`None`: only if the session does not exist
    /// yet). Returns false, storing nothing, when it was not.
    async fn save(&self, id: &str, next: &SessionState, expected: Option<u64>) -> Result<bool>;
    /// Forgets the session. Absent is fine.
    async fn remove(&self, id: &str) -> Result<()>;
}

/// Session states in this process's memory: for tests and single-replica setups that accept losing sessions on
/// restart. (Bucket-kept states are in `upload.rs`; Redis-kept ones in `crate::redis_meta`.)
#[derive(Default, Clone)]
pub struct MemorySessions {
    states: Arc<Mutex<HashMap<String, SessionState>>>,
}

#[async_trait]
impl SessionStore for MemorySessions {
    async fn load(&self, id: &str) -> Result<Option<SessionState>> {
        Ok(self.lock()?.get(id).cloned())
    }

    async fn save(&self, id: &str, next: &SessionState, expected: Option<u64>) -> Result<bool> {
        let mut states = self.lock()?;
        let current = states.get(id).map(|s| s.offset);
        if current != expected {
            return Ok(false);
        }
        states.insert(id.to_owned(), next.clone());
        Ok(true)
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.lock()?.remove(id);
        Ok(())
    }
}

impl MemorySessions {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, SessionState>>> {
        self.states
            .lock()
            .map_err(|_| StorageError::backend("lock the upload session table", "poisoned"))
    }
}
