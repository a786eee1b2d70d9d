//! Background revalidation of stale entries: one refresh per key per process (an in-process set), one per
//! fleet (a `SET NX PX` lease stored next to the entry, in the same Redis Cluster hash slot).

use super::decision::RequestFacts;
use super::engine::{Engine, Fetch, Fetched, Written, marker_for, status_of};
use super::fleet::LeaseGuard;
use super::freshness::validators;
use super::key::{CacheKey, vary_digest};
use super::stats::{OriginCall, OriginTimer, bump};
use http_body::Body;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError};

/// How long after finding a key's lease held by another process this process leaves the key's refresh to it:
/// its stale (or due) hits meanwhile make no lease attempt of their own. That process renews its lease while it
/// refreshes and keeps it after a failure, so an attempt here could not succeed sooner anyway, unless it died.
const HELD_ELSEWHERE_MS: u64 = 1_000;

/// The most keys remembered as refreshed elsewhere; past it, the expired ones are forgotten, or all.
const HELD_ELSEWHERE_KEYS: usize = 4096;

/// This process's background refreshes: the keys being refreshed here, and those whose refresh another process
/// was found running (until when they are left to it, on the engine's clock).
#[derive(Debug, Default)]
pub(crate) struct Refreshes {
    running: HashSet<String>,
    elsewhere: HashMap<String, u64>,
}

impl Refreshes {
    /// Whether another process was found refreshing `key` less than [`HELD_ELSEWHERE_MS`] before `now`.
    fn held_elsewhere(&mut self, key: &str, now: u64) -> bool {
        match self.elsewhere.get(key) {
            Some(&until) if now < until => true,
            Some(_) => {
                self.elsewhere.remove(key);
                false
            }
            None => false,
        }
    }

    /// Remembers that another process holds `key`'s lease, at `now`.
    fn leave_to_another(&mut self, key: &str, now: u64) {
        if self.elsewhere.len() >= HELD_ELSEWHERE_KEYS {
            self.elsewhere.retain(|_, until| now < *until);
            if self.elsewhere.len() >= HELD_ELSEWHERE_KEYS {
                self.elsewhere.clear();
            }
        }
        self.elsewhere
            .insert(key.to_owned(), now.saturating_add(HELD_ELSEWHERE_MS));
    }
}

/// A key's place in the set of refreshes running in this process, given back when dropped.
struct RefreshSlot {
    engine: Arc<Engine>,
    key: CacheKey,
}

impl Drop for RefreshSlot {
    fn drop(&mut self) {
        self.engine
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .running
            .remove(self.key.as_str());
    }
}

impl Engine {
    /// Starts the one background refresh of `key` in this process, unless one is running or `max_refreshes`
    /// are, or another process was just found refreshing it. Returns whether this call started it. Across
    /// processes, a lease in the store (`SET NX PX`) lets one refresh run.
    ///
    /// The refresh is bounded by `refresh_timeout`, and its slot is freed however it ends (done, abandoned,
    /// panicked in the inner service, or dropped with the runtime), so the key is never left unrefreshable.
    pub(super) fn start_refresh<R, F>(
        self: &Arc<Self>,
        key: &CacheKey,
        facts: RequestFacts,
        fetch: F,
    ) -> bool
    where
        R: Body + Send + 'static,
        F: Fetch<R>,
    {
        let task = {
            let mut running = self
                .refreshing
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if running.running.contains(key.as_str())
                || running.held_elsewhere(key.as_str(), self.clock.now_ms())
            {
                return false;
            }
            // At the cap, this stale hit is served without a refresh; a later one starts it.
            if running.running.len() >= self.policy.max_refreshes {
                bump(&self.counters.refreshes_deferred);
                return false;
            }
            // Counted before the shutdown check: a shutdown that found no task running finds none started
            // later. Shut down, the stale hit is served without a refresh.
            let task = self.background.task();
            if self.background.closing() {
                bump(&self.counters.refreshes_deferred);
                return false;
            }
            running.running.insert(key.as_str().to_owned());
            task
        };
        // The whole answer, whatever part the request that started the refresh asked for.
        let (fetch, facts) = (
            fetch.whole(),
            RequestFacts {
                range: false,
                ..facts
            },
        );
        let slot = RefreshSlot {
            engine: Arc::clone(self),
            key: key.clone(),
        };
        tokio::spawn(async move {
            let _task = task;
            let RefreshSlot { engine, key } = &slot;
            let limit = engine.policy.refresh_timeout;
            if tokio::time::timeout(limit, engine.refresh(key, facts, fetch))
                .await
                .is_err()
            {
                // Like a failed refresh, the entry is untouched; the abandoned origin call was cancelled with the
                // refresh, so its lease is released.
                bump(&engine.counters.refreshes_failed);
                tracing::warn!(
                    key = key.short(),
                    timeout = ?limit,
                    "background refresh abandoned: still running after refresh_timeout"
                );
            }
            drop(slot);
        });
        true
    }

    async fn refresh<R, F>(self: &Arc<Self>, key: &CacheKey, facts: RequestFacts, fetch: F)
    where
        R: Body + Send + 'static,
        F: Fetch<R>,
    {
        let tags = self.tags_of(fetch.parts(), &facts);
        let lease = match self.take_lease(key, &tags).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                self.refreshing
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .leave_to_another(key.as_str(), self.clock.now_ms());
                bump(&self.counters.refreshes_skipped);
                tracing::debug!(
                    key = key.short(),
                    "refresh skipped: another process holds the lease"
                );
                return;
            }
            // The store is failing: whatever the origin says could not be stored.
            Err(()) => return,
        };
        // The entry as it is now, of this request's variant: its validators make the refresh conditional. With
        // none at the key (the fill a range started), an answer that cannot be stored leaves a marker, as a miss's
        // does.
        let read = self.read(key).await;
        let vacant = matches!(read, Ok(None)) && !self.policy.uncacheable_for.is_zero();
        let current = read
            .ok()
            .flatten()
            .filter(|entry| vary_digest(&entry.headers, &fetch.parts().headers) == entry.vary);
        // A refresh elsewhere may have finished (and released its lease) between this process seeing the entry
        // due (stale, or in its last part of freshness with `refresh_ahead`) and taking the lease: then the entry
        // is not due again yet and there is nothing to do.
        let ahead = self.policy.rules.refresh_ahead;
        if current
            .as_ref()
            .is_some_and(|entry| self.clock.now_ms() < entry.stored(true).refresh_at(ahead))
        {
            bump(&self.counters.refreshes_skipped);
            lease.release().await;
            return;
        }
        bump(&self.counters.refreshes_started);
        let (uri, headers) = (fetch.parts().uri.clone(), fetch.parts().headers.clone());
        let validators = current
            .as_ref()
            .map(|entry| validators(&fetch.parts().method, &entry.headers))
            .unwrap_or_default();
        let asked = !validators.is_empty();
        let mut lease = Some(lease);
        // The lease is renewed while the origin works, so no other process starts a second refresh however long
        // this one takes (up to `refresh_timeout`).
        let timer = OriginTimer::start();
        let fetched = self
            .renewing(
                lease.as_ref().and_then(LeaseGuard::lease),
                fetch.fetch(validators, self.holding(&facts)),
                // A refresh is not shared: stale hits answer from the entry meanwhile.
                || {},
            )
            .await;
        timer.stop(&self.counters, OriginCall::Refresh, status_of(&fetched));
        // Why the answer was not stored, when the answer itself was the reason, and its status.
        let mut not_stored = None;
        let written = match fetched {
            Ok(Fetched::Buffered(response)) => {
                // A `304` renews the stored response without its body crossing the network again.
                let (response, verdict, vary) = self.settle(
                    current.as_ref().filter(|_| asked),
                    response,
                    &facts,
                    &headers,
                );
                let written = if verdict.store {
                    self.write(key, &response, vary, &facts, (&uri, &headers), &mut lease)
                        .await
                } else {
                    Written::No
                };
                not_stored = match written {
                    Written::No => verdict.why,
                    written => written.not_stored(),
                }
                .map(|why| (why, response.status));
                written
            }
            Ok(Fetched::Streaming(response, why)) => {
                not_stored = why.map(|why| (why, response.status()));
                Written::No
            }
            Err(error) => {
                tracing::debug!(key = key.short(), %error, "background refresh failed");
                Written::No
            }
        };
        let marker = not_stored.and_then(|(why, status)| marker_for(why, status));
        if let Some(marker) = marker.filter(|_| vacant) {
            self.mark_unstored(key, marker, &mut lease).await;
        }
        // The write let the lease go with it when the store answered; what is left is released or kept here.
        let Some(lease) = lease else {
            if !matches!(written, Written::Stored | Written::Fenced) {
                bump(&self.counters.refreshes_failed);
            }
            return;
        };
        match written {
            // Fenced: an invalidation removed the entry and its lease while the origin worked, or marked one of
            // the answer's tags. Nothing failed (it counts in `stores_fenced`), and there is no lease of this
            // refresh's left to keep.
            Written::Stored | Written::Fenced => lease.release().await,
            Written::No | Written::Expired | Written::Tags => {
                // The entry is left exactly as it was: still stale, never made fresh again. The lease is no
                // longer renewed and expires after `refresh_lease_for`, which spaces out retries against a
                // failing origin.
                bump(&self.counters.refreshes_failed);
                lease.disarm();
            }
        }
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use crate::{CacheOutcome, MemoryStore, RedisCacheLayer, RequestBody};
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tower::{Layer, ServiceExt};

    #[test]
    fn keys_left_to_another_process_are_left_for_a_second_and_never_pile_up() {
        let mut refreshes = super::Refreshes::default();
        refreshes.leave_to_another("k", 1_000);
        assert!(refreshes.held_elsewhere("k", 1_999));
        assert!(!refreshes.held_elsewhere("k", 2_000));
        assert!(refreshes.elsewhere.is_empty(), "forgotten once looked at");
        for i in 0..3 * super::HELD_ELSEWHERE_KEYS {
            refreshes.leave_to_another(&i.to_string(), 5_000 + i as u64);
        }
        assert!(refreshes.elsewhere.len() <= super::HELD_ELSEWHERE_KEYS);
        let last = (3 * super::HELD_ELSEWHERE_KEYS - 1).to_string();
        assert!(refreshes.held_elsewhere(&last, 5_000), "the latest is kept");
    }

    /// A refresh whose inner service panics ends its task without reaching the end of the refresh; the key's
    /// slot must still be given back, or no stale hit of that key would ever refresh it again.
    #[tokio::test(start_paused = true)]
    async fn a_refresh_whose_inner_service_panics_frees_the_key_for_the_next_one() {
        let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
            .fresh_for(Duration::ZERO)
            .stale_for(Duration::from_secs(60))
            .refresh_lease_for(Duration::from_millis(1))
            // Store calls are bounded in real time: generous, so a loaded machine never turns one into a miss.
            .store_timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let service = layer.layer(tower::service_fn(move |_: Request<RequestBody>| {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                // The first refresh (the second call) panics; its panic message in the test output is expected.
                assert_ne!(n, 2, "the inner service panics on its second call");
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(n.to_string()))))
            }
        }));
        let get = || {
            Request::get("http://api.test/items")
                .body(Full::<Bytes>::default())
                .unwrap()
        };
        let outcome = |response: &Response<_>| CacheOutcome::of(response);

        let first = service.clone().oneshot(get()).await.unwrap();
        assert!(matches!(
            outcome(&first),
            Some(CacheOutcome::Miss { stored: true, .. })
        ));
        let stale = service.clone().oneshot(get()).await.unwrap();
        assert_eq!(
            outcome(&stale),
            Some(CacheOutcome::Stale { refreshing: true })
        );

        // Once the panicked refresh's task is gone, a stale hit starts the next refresh.
        let mut restarted = false;
        for _ in 0..500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let response = service.clone().oneshot(get()).await.unwrap();
            if outcome(&response) == Some(CacheOutcome::Stale { refreshing: true }) {
                restarted = true;
                break;
            }
        }
        assert!(restarted, "no stale hit started a refresh after the panic");
        for _ in 0..500 {
            if layer.handle().stats().stores == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            layer.handle().stats().stores,
            2,
            "the second refresh stored"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
