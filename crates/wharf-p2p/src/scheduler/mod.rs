//! `wharf scheduler`: who holds which piece of which task, and where each node should fetch the pieces it needs.
//!
//! [`state`] is the policy, a synchronous state machine with the clock passed in; [`api`] is its HTTP face (the
//! endpoints of [`crate::proto`]); [`serve`] runs both with a sweeper that forgets silent peers. Everything is soft
//! state, learnt again from announcements after a restart; several schedulers share tasks by rendezvous hashing on
//! the node side ([`crate::hrw`]) and never talk to each other.

pub mod api;
pub mod state;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

pub use api::{MetricsRender, router};
pub use state::{Policy, State, StateError, Stats};

use crate::P2pError;

/// How a scheduler runs.
#[derive(Clone)]
pub struct SchedulerConfig {
    /// The cluster token every `/v1` request must carry as `Authorization: Bearer <token>`; `None` = open.
    pub token: Option<String>,
    pub policy: Policy,
    /// Take the addresses peers announce as they are. By default a request naming a peer must come from that
    /// peer's address; nodes behind NAT or a proxy need this.
    pub trust_peer_addresses: bool,
    /// How often silent peers and empty swarms are swept (and the gauges refreshed).
    pub sweep_interval: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            token: None,
            policy: Policy::default(),
            trust_peer_addresses: false,
            sweep_interval: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for SchedulerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchedulerConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("policy", &self.policy)
            .field("trust_peer_addresses", &self.trust_peer_addresses)
            .field("sweep_interval", &self.sweep_interval)
            .finish()
    }
}

/// A scheduler: its state behind a mutex (held only for synchronous work, never across an await) and its config.
pub struct Scheduler {
    state: Mutex<State>,
    config: SchedulerConfig,
    /// Per task, the schedule requests held until something changes there (long polls).
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler {
            state: Mutex::new(State::new(config.policy.clone())),
            config,
            waiters: Mutex::new(HashMap::new()),
        }
    }

    /// The notifier of `task`'s held requests, while the returned guard lives (dropped, even with the request, it
    /// removes the entry if nobody else waits there).
    pub fn watch<'a>(&'a self, task: &'a str) -> Watch<'a> {
        let mut w = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        Watch {
            scheduler: self,
            task,
            notify: w.entry(task.to_owned()).or_default().clone(),
        }
    }

    /// Something changed in `task` (a piece announced, a transfer over): its held requests look again.
    pub fn wake(&self, task: &str) {
        let w = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = w.get(task) {
            n.notify_waiters();
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Runs `f` on the state with the current time (read under the lock, so times passed in never go backwards).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut State, Instant) -> R) -> R {
        // A panic under the lock leaves soft state at worst slightly off; keep serving.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut state, Instant::now())
    }

    /// Sweeps and refreshes the gauges.
    pub fn sweep(&self) {
        let stats = self.with_state(|s, now| {
            s.sweep(now);
            s.stats(now)
        });
        metrics::gauge!("wharf_scheduler_tasks").set(stats.tasks as f64);
        metrics::gauge!("wharf_scheduler_live_peers").set(stats.live_peers as f64);
    }
}

/// A held request's registration (see [`Scheduler::watch`]).
pub struct Watch<'a> {
    scheduler: &'a Scheduler,
    task: &'a str,
    notify: Arc<Notify>,
}

impl std::ops::Deref for Watch<'_> {
    type Target = Notify;
    fn deref(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut w = self.scheduler.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        // The map's and this one's are the last (clones are made only under this lock).
        if w.get(self.task).is_some_and(|n| Arc::strong_count(n) == 2) {
            w.remove(self.task);
        }
    }
}

/// Serves a new scheduler on `listener` until `shutdown` completes. `metrics` renders `/metrics` (the binary installs
/// the Prometheus recorder); `None` answers 404 there.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: SchedulerConfig,
    metrics: Option<MetricsRender>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), P2pError> {
    serve_scheduler(listener, Arc::new(Scheduler::new(config)), metrics, shutdown).await
}

/// [`serve`] with a scheduler the caller keeps a handle on.
pub async fn serve_scheduler(
    listener: tokio::net::TcpListener,
    scheduler: Arc<Scheduler>,
    metrics: Option<MetricsRender>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), P2pError> {
    let url = match listener.local_addr() {
        Ok(a) => format!("http://{a}"),
        Err(_) => "scheduler".to_owned(),
    };
    let sweeper = tokio::spawn({
        let scheduler = scheduler.clone();
        async move {
            let mut tick = tokio::time::interval(scheduler.config.sweep_interval.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                scheduler.sweep();
            }
        }
    });
    // Bounded like every wharf listener: a connection cap, a header-read timeout; requests carry the peer's address.
    let result = wharf_registry::listen::serve_router(
        listener,
        router(scheduler, metrics),
        wharf_registry::ServeLimits::default(),
        shutdown,
    )
    .await;
    sweeper.abort();
    result.map_err(|e| P2pError::Scheduler {
        url,
        reason: e.to_string(),
    })
}
