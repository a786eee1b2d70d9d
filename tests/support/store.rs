//! A store wrapper that counts finished reads, so a test knows when concurrent callers are past their look-up
//! (and so have joined the in-flight call for their key).

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tower_redis_cache::Store;
use tower_redis_cache::cache::store::StoreFuture;

/// `inner`, counting the `get`s that finished.
pub struct CountingStore<S> {
    inner: S,
    gets: Arc<AtomicUsize>,
}

impl<S> CountingStore<S> {
    /// Wraps `inner`; the counter is shared with the returned handle.
    pub fn new(inner: S) -> (Self, Arc<AtomicUsize>) {
        let gets = Arc::new(AtomicUsize::new(0));
        (
            CountingStore {
                inner,
                gets: gets.clone(),
            },
            gets,
        )
    }
}

impl<S: Store> Store for CountingStore<S> {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(async move {
            let value = self.inner.get(key).await;
            self.gets.fetch_add(1, Ordering::SeqCst);
            value
        })
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        self.inner.set(key, value, ttl)
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        self.inner.try_lease(key, token, ttl)
    }

    fn extend_lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        self.inner.extend_lease(key, token, ttl)
    }

    fn release_lease<'a>(&'a self, key: &'a str, token: &'a str) -> StoreFuture<'a, bool> {
        self.inner.release_lease(key, token)
    }

    fn remove<'a>(&'a self, keys: &'a [&'a str]) -> StoreFuture<'a, u64> {
        self.inner.remove(keys)
    }

    fn purge_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        self.inner.purge_prefix(prefix)
    }
}
