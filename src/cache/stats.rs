//! Counters of what the cache did, readable as a [`CacheStats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) stale_hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) bypasses: AtomicU64,
    pub(crate) stale_if_error: AtomicU64,
    pub(crate) refreshes_started: AtomicU64,
    pub(crate) refreshes_failed: AtomicU64,
    pub(crate) refreshes_skipped: AtomicU64,
    pub(crate) stores: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) store_skipped: AtomicU64,
    pub(crate) decode_errors: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> CacheStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            hits: r(&self.hits),
            stale_hits: r(&self.stale_hits),
            misses: r(&self.misses),
            coalesced: r(&self.coalesced),
            bypasses: r(&self.bypasses),
            stale_if_error: r(&self.stale_if_error),
            refreshes_started: r(&self.refreshes_started),
            refreshes_failed: r(&self.refreshes_failed),
            refreshes_skipped: r(&self.refreshes_skipped),
            stores: r(&self.stores),
            store_errors: r(&self.store_errors),
            store_skipped: r(&self.store_skipped),
            decode_errors: r(&self.decode_errors),
        }
    }
}

/// A snapshot of one layer's counters (shared by every service the layer built).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Fresh hits.
    pub hits: u64,
    /// Stale entries served while revalidating.
    pub stale_hits: u64,
    /// Requests answered by the inner service (leaders of coalesced calls and uncoalesced calls).
    pub misses: u64,
    /// Requests that waited for another caller's inner call and shared its response.
    pub coalesced: u64,
    /// Requests that bypassed the cache.
    pub bypasses: u64,
    /// Stored entries served because the inner service failed.
    pub stale_if_error: u64,
    /// Background refreshes that called the inner service.
    pub refreshes_started: u64,
    /// Background refreshes whose inner call failed or whose response was not storable.
    pub refreshes_failed: u64,
    /// Background refreshes not run because another process held the key's lease.
    pub refreshes_skipped: u64,
    /// Entries written.
    pub stores: u64,
    /// Store operations that failed or timed out.
    pub store_errors: u64,
    /// Store operations skipped while the circuit breaker was open.
    pub store_skipped: u64,
    /// Stored values that could not be decoded (treated as misses and overwritten).
    pub decode_errors: u64,
}
