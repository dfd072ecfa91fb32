//! Open upload sessions per repository, bounded. A session costs a directory (or an object store key) until it is
//! finished, cancelled or expired, so one pusher could otherwise open them without end. Past
//! [`SessionLimits::per_repository`] sessions touched within [`SessionLimits::idle`], a new one gets
//! `429 TOOMANYREQUESTS`. Counted per server process (replicas behind a balancer each count their own).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use wharf_oci::ErrorCode;

use crate::ApiError;

#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub per_repository: usize,
    /// A session untouched for this long no longer counts (the storage expires it too).
    pub idle: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            per_repository: 1000,
            idle: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Sessions {
    limits: SessionLimits,
    /// Repository → session id → last touched.
    open: Mutex<HashMap<String, HashMap<String, Instant>>>,
}

impl Sessions {
    pub(crate) fn new(limits: SessionLimits) -> Sessions {
        Sessions {
            limits,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Counts session `id` just started in `repo`, or refuses it (the caller cancels it) past the limit.
    pub(crate) fn opened(&self, repo: &str, id: &str) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let sessions = open.entry(repo.to_owned()).or_default();
        sessions.retain(|_, touched| now.saturating_duration_since(*touched) < self.limits.idle);
        if sessions.len() >= self.limits.per_repository.max(1) {
            metrics::counter!("wharf_upload_sessions_refused_total").increment(1);
            return Err(ApiError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "{repo} has {} upload sessions open: finish or cancel some first",
                    sessions.len()
                ),
            ));
        }
        sessions.insert(id.to_owned(), now);
        Ok(())
    }

    pub(crate) fn touched(&self, repo: &str, id: &str) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = open.get_mut(repo).and_then(|s| s.get_mut(id)) {
            *t = Instant::now();
        }
    }

    pub(crate) fn closed(&self, repo: &str, id: &str) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = open.get_mut(repo) {
            s.remove(id);
            if s.is_empty() {
                open.remove(repo);
            }
        }
    }
}
