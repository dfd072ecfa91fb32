//! Waiting for a change without missing one: the long polls of the scheduler (schedule, piece digest) and the peer
//! API's short wait for a piece about to arrive all look, and wait for a [`Notify`] between looks.

use tokio::sync::Notify;
use tokio::time::Instant;

/// Calls `look` until it finds something, waiting for `notify` between looks, until `deadline`: `None` if nothing was
/// found by then. The wakeup is registered before each look, so a change between a look and the wait is not missed.
pub(crate) async fn until<T>(notify: &Notify, deadline: Instant, mut look: impl FnMut() -> Option<T>) -> Option<T> {
    loop {
        let changed = notify.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if let Some(found) = look() {
            return Some(found);
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_change_notified_between_looks_is_seen_and_nothing_found_ends_at_the_deadline() {
        let notify = Arc::new(Notify::new());
        let ready = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + Duration::from_secs(10);
        let waiter = tokio::spawn({
            let (notify, ready) = (notify.clone(), ready.clone());
            async move { until(&notify, deadline, || ready.load(Ordering::SeqCst).then_some(7)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        ready.store(true, Ordering::SeqCst);
        notify.notify_waiters();
        let started = std::time::Instant::now();
        assert_eq!(waiter.await.unwrap(), Some(7));
        assert!(started.elapsed() < Duration::from_secs(5), "woken, not timed out");
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(until(&notify, soon, || None::<u8>).await, None);
    }
}
