//! [`BucketSessions`]: upload session states as small objects in the bucket itself, for setups without Redis.

use async_trait::async_trait;
use bytes::Bytes;
use opendal::Operator;

use super::session::{SessionState, SessionStore};
use super::{is_not_found, keys};
use crate::{Result, StorageError};

/// Session states at `_uploads/<id>/state.json`. The compare-and-set of [`SessionStore::save`] is a read and a
/// write, so it is atomic within one process (the object store holds a per-session lock around it) but not across
/// replicas: replicas sharing a bucket should share a Redis for their sessions too (`crate::redis_meta`). Sequential
/// use from several replicas (a client resuming on another replica) is fine: object stores read their writes.
pub struct BucketSessions {
    op: Operator,
}

impl BucketSessions {
    pub fn new(op: Operator) -> Self {
        BucketSessions { op }
    }
}

#[async_trait]
impl SessionStore for BucketSessions {
    async fn load(&self, id: &str) -> Result<Option<SessionState>> {
        let key = keys::upload_state(id);
        let raw = match self.op.read(&key).await {
            Ok(b) => b.to_bytes(),
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(StorageError::backend(format!("read {key}"), e)),
        };
        serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| StorageError::backend(format!("decode {key}"), e))
    }

    async fn save(&self, id: &str, next: &SessionState, expected: Option<u64>) -> Result<bool> {
        if self.load(id).await?.map(|s| s.offset) != expected {
            return Ok(false);
        }
        let key = keys::upload_state(id);
        let json = serde_json::to_vec(next).map_err(|e| StorageError::backend(format!("encode {key}"), e))?;
        self.op
            .write(&key, Bytes::from(json))
            .await
            .map_err(|e| StorageError::backend(format!("write {key}"), e))?;
        Ok(true)
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let key = keys::upload_state(id);
        match self.op.delete(&key).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(StorageError::backend(format!("delete {key}"), e)),
        }
    }
}
