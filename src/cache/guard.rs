//! Fail-open store access: every store call gets a timeout, and a circuit breaker stops paying that timeout
//! while the store is down.

use super::stats::{Counters, bump};
use super::store::{Store, StoreFuture};
use crate::error::StoreError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// A circuit breaker that sees failure *rates*, not only runs: every failure adds two to a score, every success
/// takes one off (only while the score is above zero, so a healthy store costs no write), so the score climbs
/// whenever more than a third of recent calls fail: a run of failures, or a store that fails every other call.
/// At `threshold` failures' worth it opens; after `cooldown` one call probes, and a success closes it. A
/// score not touched for [`WINDOW_MS`] starts again from zero: only recent calls count.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    base: Instant,
    /// Failures count 2, successes -1, floored at 0.
    score: AtomicU32,
    /// When the score last moved (ms since `base`).
    touched: AtomicU64,
    /// Milliseconds since `base` until which the breaker is open; 0 when closed.
    open_until: AtomicU64,
    /// When the store was last asked to reconnect (ms since `base`); 0 never.
    reconnected: AtomicU64,
}

/// How often at most a store whose calls time out is asked to make its connections again.
const RECONNECT_EVERY: Duration = Duration::from_secs(5);

/// How long a failure counts for.
const WINDOW_MS: u64 = 10_000;

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown_ms: u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX),
            base: Instant::now(),
            score: AtomicU32::new(0),
            touched: AtomicU64::new(0),
            open_until: AtomicU64::new(0),
            reconnected: AtomicU64::new(0),
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
        if self.score.load(Ordering::Relaxed) != 0 {
            let _ = self
                .score
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    Some(s.saturating_sub(1))
                });
        }
        if self.open_until.load(Ordering::Relaxed) != 0 {
            self.open_until.store(0, Ordering::Release);
        }
    }

    /// Counts a failure; returns whether the store is now in doubt: this failure opened the breaker, or it
    /// was a probe of an open one that failed.
    pub(crate) fn failure(&self) -> bool {
        if self.open_until.load(Ordering::Acquire) != 0 {
            return true;
        }
        let now = self.now_ms();
        if now.saturating_sub(self.touched.swap(now, Ordering::Relaxed)) > WINDOW_MS {
            self.score.store(0, Ordering::Relaxed);
        }
        let score = self.score.fetch_add(2, Ordering::Relaxed).saturating_add(2);
        if score < self.threshold.saturating_mul(2) {
            return false;
        }
        self.score.store(0, Ordering::Relaxed);
        self.open_until
            .store(now.saturating_add(self.cooldown_ms), Ordering::Release);
        true
    }

    /// Whether the store may be asked to reconnect now: once in [`RECONNECT_EVERY`].
    pub(crate) fn may_reconnect(&self) -> bool {
        let now = self.now_ms();
        let last = self.reconnected.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= RECONNECT_EVERY.as_millis() as u64)
            && self
                .reconnected
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
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
                let in_doubt = self.breaker.failure();
                // The store keeps timing out: its connections may be stuck (a half-open link answers nothing,
                // yet stays open), which no reconnect policy notices. Have them made again, without holding
                // this request, and not more than once in RECONNECT_EVERY (a refused connection is the
                // client's own reconnect policy's to handle).
                if in_doubt && matches!(error, StoreError::Timeout) && self.breaker.may_reconnect()
                {
                    let store = self.store.clone();
                    tokio::spawn(async move { store.reconnect().await });
                }
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
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(b.allow(), "two failures stay under the threshold");
        assert!(b.failure(), "the third opens it");
        assert!(b.is_open());
        assert!(!b.allow());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(b.allow(), "one probe after the cooldown");
        assert!(!b.allow(), "only one");
        b.success();
        assert!(!b.is_open());
        assert!(b.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_sees_a_store_that_fails_every_other_call() {
        let b = Breaker::new(3, Duration::from_secs(1));
        let mut opened = false;
        for _ in 0..10 {
            b.success();
            opened |= b.failure();
        }
        assert!(opened, "half the calls failing opens it");
        // Few failures among many successes do not.
        let b = Breaker::new(3, Duration::from_secs(1));
        for _ in 0..100 {
            for _ in 0..4 {
                b.success();
            }
            assert!(!b.failure(), "one failure in five stays closed");
        }
        // Failures spread out in time do not add up.
        let b = Breaker::new(3, Duration::from_secs(1));
        for _ in 0..10 {
            assert!(!b.failure());
            tokio::time::advance(Duration::from_millis(WINDOW_MS + 1)).await;
        }
        assert!(!b.is_open());
    }
}
