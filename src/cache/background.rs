//! The layer's background work (refreshes, removals of entries a write made stale, lease releases), counted so
//! that a shutdown can stop new refreshes and wait for what is running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::Notify;

/// The count of background tasks running, and whether the layer is shutting down.
#[derive(Default)]
pub(crate) struct Background {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    running: AtomicUsize,
    closing: AtomicBool,
    idle: Notify,
}

/// One background task, counted while it lives.
pub(crate) struct Task {
    inner: Arc<Inner>,
}

impl Drop for Task {
    fn drop(&mut self) {
        if self.inner.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("running", &self.inner.running.load(Ordering::Relaxed))
            .field("closing", &self.closing())
            .finish()
    }
}

impl Background {
    /// Counts a task from now until the returned guard drops. Taken before the task checks
    /// [`closing`](Self::closing), so that a shutdown that found nothing running finds nothing started after it.
    pub(crate) fn task(&self) -> Task {
        self.inner.running.fetch_add(1, Ordering::SeqCst);
        Task {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Whether the layer is shutting down: no refresh starts.
    pub(crate) fn closing(&self) -> bool {
        self.inner.closing.load(Ordering::SeqCst)
    }

    /// Starts the shutdown, then waits until no task is running.
    pub(crate) async fn close(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        loop {
            let idle = self.inner.idle.notified();
            let mut idle = std::pin::pin!(idle);
            // Registered before the count is read, so a last task ending in between still wakes this wait.
            idle.as_mut().enable();
            if self.inner.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn close_waits_for_every_task_and_then_refuses_new_ones() {
        let background = Arc::new(Background::default());
        let (first, second) = (background.task(), background.task());
        assert!(!background.closing());
        let closing = tokio::spawn({
            let background = Arc::clone(&background);
            async move { background.close().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(background.closing());
        drop(first);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!closing.is_finished(), "one task still runs");
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), closing)
            .await
            .expect("the last task's end wakes the wait")
            .unwrap();
        // Nothing running: a second close returns at once.
        tokio::time::timeout(Duration::from_millis(1), background.close())
            .await
            .expect("idle");
    }
}
