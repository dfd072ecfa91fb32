//! [`GcLock`]: how writes that make existing content reachable and a garbage collection of an [`ObjectStore`] keep
//! out of each other's way (the object store's counterpart of `FsStore::gc_lock`; the protocol is in `gc.rs`).
//! [`LocalGcLock`] serves one process; replicas share `crate::redis_meta::RedisGcLock`.
//!
//! [`ObjectStore`]: super::ObjectStore

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use wharf_oci::Digest;

use crate::Result;

/// An open write section; closing it (drop) lets a waiting collection go on.
pub struct WriteSection {
    _held: Box<dyn Send + Sync>,
}

impl WriteSection {
    pub fn new(held: impl Send + Sync + 'static) -> Self {
        WriteSection { _held: Box::new(held) }
    }
}

/// The exclusive side, held by a collection around each batch of deletions; released on drop.
pub struct GcHold {
    _held: Box<dyn Send + Sync>,
}

impl GcHold {
    pub fn new(held: impl Send + Sync + 'static) -> Self {
        GcHold { _held: Box::new(held) }
    }
}

/// One collection run at a time; released on drop.
pub struct RunHold {
    _held: Box<dyn Send + Sync>,
}

impl RunHold {
    pub fn new(held: impl Send + Sync + 'static) -> Self {
        RunHold { _held: Box::new(held) }
    }
}

#[async_trait]
pub trait GcLock: Send + Sync + 'static {
    /// Opens a write section that may make the blobs `reused` reachable again: waits while a collection holds the
    /// exclusive side, then, if a collection is under way, records `reused` so that its sweep spares them.
    async fn enter(&self, reused: &[Digest]) -> Result<WriteSection>;
    /// The exclusive side: waits until no write section is open, and keeps new ones waiting until dropped.
    async fn exclusive(&self) -> Result<GcHold>;
    /// Starts a collection run: `None` if another one is under way. Call with the exclusive side held, so that
    /// every write section either ended before (and the mark sees what it wrote) or records what it reuses.
    async fn begin(&self, hold: &GcHold) -> Result<Option<RunHold>>;
    /// Blobs reused by write sections since the run began.
    async fn reused(&self, hold: &GcHold) -> Result<HashSet<Digest>>;
    /// Ends the run: write sections stop recording.
    async fn end(&self, run: RunHold) -> Result<()>;
    /// Waits (a bounded time) until what dropped holds and sections released has taken effect: a process calls it
    /// before it exits, or a release still under way would die with it.
    async fn settle(&self) {}
}

/// For one process: a read/write lock and a set in memory.
#[derive(Default)]
pub struct LocalGcLock {
    rw: Arc<tokio::sync::RwLock<()>>,
    run: Arc<tokio::sync::Mutex<()>>,
    /// `Some` while a run is under way: what write sections reused since it began.
    reused: Mutex<Option<HashSet<Digest>>>,
}

impl LocalGcLock {
    fn reused_set(&self) -> std::sync::MutexGuard<'_, Option<HashSet<Digest>>> {
        self.reused.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl GcLock for LocalGcLock {
    async fn enter(&self, reused: &[Digest]) -> Result<WriteSection> {
        let guard = self.rw.clone().read_owned().await;
        if let Some(set) = self.reused_set().as_mut() {
            set.extend(reused.iter().cloned());
        }
        Ok(WriteSection::new(guard))
    }

    async fn exclusive(&self) -> Result<GcHold> {
        Ok(GcHold::new(self.rw.clone().write_owned().await))
    }

    async fn begin(&self, _hold: &GcHold) -> Result<Option<RunHold>> {
        let Ok(run) = self.run.clone().try_lock_owned() else {
            return Ok(None);
        };
        *self.reused_set() = Some(HashSet::new());
        Ok(Some(RunHold::new(run)))
    }

    async fn reused(&self, _hold: &GcHold) -> Result<HashSet<Digest>> {
        Ok(self.reused_set().clone().unwrap_or_default())
    }

    async fn end(&self, run: RunHold) -> Result<()> {
        *self.reused_set() = None;
        drop(run);
        Ok(())
    }
}
