//! Fail-open store access: every store call gets a timeout, and a circuit breaker stops paying that timeout
//! while the store is down.

use super::stats::{Counters, bump};
use super::store::{Store, StoreFuture};
use crate::error::StoreError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Opens after `threshold` consecutive failures; after `cooldown` one call probes, and a success closes it.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    base: Instant,
    failures: AtomicU32,
    /// Milliseconds since `base` until which the breaker is open; 0 when closed.
    open_until: AtomicU64,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown_ms: u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX),
            base: Instant::now(),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        // +1 so that "open until 0" never means open.
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Whether a call may go to the store now.
    pub(crate) fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        if now < until {
            return false;
        }
        // Half-open: exactly one caller wins the right to probe; the rest wait out another cooldown.
        self.open_until
            .compare_exchange(
                until,
                now.saturating_add(self.cooldown_ms),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    pub(crate) fn success(&self) {
        // Read before writing: on the hot path nothing changes, and a write would bounce the cache line
        // between every core calling the store.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open_until.load(Ordering::Relaxed) != 0 {
            self.open_until.store(0, Ordering::Release);
        }
    }

    pub(crate) fn failure(&self) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures >= self.threshold {
            let until = self.now_ms().saturating_add(self.cooldown_ms);
            self.open_until.store(until, Ordering::Release);
        }
    }

    /// Whether the breaker is currently open.
    pub(crate) fn is_open(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        until != 0 && self.now_ms() < until
    }
}

/// A store behind a timeout and a breaker, counting what goes wrong.
pub(crate) struct GuardedStore {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) timeout: Duration,
    pub(crate) breaker: Breaker,
    pub(crate) counters: Arc<Counters>,
}

impl std::fmt::Debug for GuardedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStore")
            .field("timeout", &self.timeout)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl GuardedStore {
    /// Runs one store operation under the breaker and the timeout.
    pub(crate) async fn call<'a, T>(
        &'a self,
        what: &'static str,
        op: impl FnOnce(&'a dyn Store) -> StoreFuture<'a, T>,
    ) -> Result<T, StoreError> {
        if !self.breaker.allow() {
            bump(&self.counters.store_skipped);
            return Err(StoreError::Unavailable);
        }
        let result = match tokio::time::timeout(self.timeout, op(&*self.store)).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout),
        };
        match &result {
            Ok(_) => self.breaker.success(),
            Err(error) => {
                self.breaker.failure();
                bump(&self.counters.store_errors);
                tracing::warn!(operation = what, %error, "cache store call failed; continuing without it");
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_threshold_and_probes_after_cooldown() {
        let b = Breaker::new(3, Duration::from_secs(1));
        assert!(b.allow());
        b.failure();
        b.failure();
        assert!(b.allow(), "two failures stay under the threshold");
        b.failure();
        assert!(b.is_open());
        assert!(!b.allow());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(b.allow(), "one probe after the cooldown");
        assert!(!b.allow(), "only one");
        b.success();
        assert!(!b.is_open());
        assert!(b.allow());
    }
}
