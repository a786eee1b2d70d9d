//! Background revalidation of stale entries: one refresh per key per process (an in-process set), one per
//! fleet (a `SET NX PX` lease stored next to the entry, in the same Redis Cluster hash slot).

use super::engine::{Engine, Fetch, Fetched, now_ms};
use super::entry::Freshness;
use super::key::CacheKey;
use super::stats::bump;
use http_body::Body;
use std::sync::{Arc, PoisonError};

impl Engine {
    /// Starts the one background refresh of `key` in this process, unless one is running. Returns whether this
    /// call started it. Across processes, a lease in the store (`SET NX PX`) lets one refresh run.
    pub(super) fn start_refresh<R, F>(self: &Arc<Self>, key: &CacheKey, fetch: F) -> bool
    where
        R: Body + Send + 'static,
        F: Fetch<R>,
    {
        {
            let mut running = self
                .refreshing
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !running.insert(key.as_str().to_owned()) {
                return false;
            }
        }
        let engine = Arc::clone(self);
        let key = key.clone();
        tokio::spawn(async move {
            engine.refresh(&key, fetch).await;
            engine
                .refreshing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(key.as_str());
        });
        true
    }

    async fn refresh<R, F>(&self, key: &CacheKey, fetch: F)
    where
        R: Body + Send + 'static,
        F: Fetch<R>,
    {
        let lease = key.lease_key();
        match self
            .store
            .call("lease", |s| s.try_lease(&lease, self.policy.lease_for))
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                bump(&self.counters.refreshes_skipped);
                tracing::debug!(
                    key = key.short(),
                    "refresh skipped: another process holds the lease"
                );
                return;
            }
            // The store is failing: whatever the origin says could not be stored.
            Err(_) => return,
        }
        // A refresh elsewhere may have finished (and released its lease) between this process seeing the entry
        // stale and taking the lease: then the entry is fresh again and there is nothing to do.
        if let Ok(Some(entry)) = self.read(key).await
            && entry.freshness(now_ms()) == Freshness::Fresh
        {
            bump(&self.counters.refreshes_skipped);
            let keys = [lease.as_str()];
            let _ = self.store.call("unlease", |s| s.remove(&keys)).await;
            return;
        }
        bump(&self.counters.refreshes_started);
        let refreshed = match fetch.fetch().await {
            Ok(Fetched::Buffered(response)) => {
                self.policy.storable(&response) && self.write(key, &response).await
            }
            Ok(Fetched::Streaming(_)) => false,
            Err(error) => {
                tracing::debug!(key = key.short(), %error, "background refresh failed");
                false
            }
        };
        if refreshed {
            let keys = [lease.as_str()];
            let _ = self.store.call("unlease", |s| s.remove(&keys)).await;
        } else {
            // The entry is left exactly as it was: still stale, never made fresh again. The lease stays until
            // it expires, which spaces out retries against a failing origin.
            bump(&self.counters.refreshes_failed);
        }
    }
}
