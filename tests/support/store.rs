//! Store wrappers: one that counts finished reads, so a test knows when concurrent callers are past their
//! look-up (and so have joined the in-flight call for their key), and can hold the first read's answer; others
//! that journal the calls, or make a lease arrive late.

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
    /// When set, the first `get` holds what it read (counted) until this is notified.
    hold_first: Option<Arc<tokio::sync::Notify>>,
}

impl<S> CountingStore<S> {
    /// Wraps `inner`; the counter is shared with the returned handle.
    pub fn new(inner: S) -> (Self, Arc<AtomicUsize>) {
        let gets = Arc::new(AtomicUsize::new(0));
        (
            CountingStore {
                inner,
                gets: gets.clone(),
                hold_first: None,
            },
            gets,
        )
    }

    /// Wraps `inner`, its first `get` answering what it read only once the returned `Notify` is notified (the
    /// count says when that read is done); later ones answer at once.
    pub fn holding_first(inner: S) -> (Self, Arc<AtomicUsize>, Arc<tokio::sync::Notify>) {
        let (mut store, gets) = Self::new(inner);
        let release = Arc::new(tokio::sync::Notify::new());
        store.hold_first = Some(release.clone());
        (store, gets, release)
    }
}

impl<S: Store> Store for CountingStore<S> {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(async move {
            let value = self.inner.get(key).await;
            let before = self.gets.fetch_add(1, Ordering::SeqCst);
            if let (0, Some(release)) = (before, &self.hold_first) {
                release.notified().await;
            }
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

/// `inner` (every call passed on, tags included), writing down when its lease, tag, tag-clock and lease-release
/// calls start and end, and when its writes start: `"lease>"`, `"lease<"`, `"tag>"`, `"tag<"`, `"clock>"`,
/// `"clock<"`, `"unlease>"`, `"unlease<"`, `"set>"` (`set_if_leased`), `"set+release>"`, in the order they
/// happen.
pub struct JournalStore<S> {
    inner: S,
    journal: Arc<std::sync::Mutex<Vec<&'static str>>>,
    /// When set, a `set_if_leased_and_release` (a fill's write) waits until it holds `true`.
    writes: Option<tokio::sync::watch::Receiver<bool>>,
}

/// What a [`JournalStore`] wrote down so far.
#[derive(Clone)]
pub struct Journal(Arc<std::sync::Mutex<Vec<&'static str>>>);

impl Journal {
    /// The events so far, in order.
    pub fn events(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().clone()
    }
}

impl<S> JournalStore<S> {
    /// Wraps `inner`; the returned handle reads the journal.
    pub fn new(inner: S) -> (Self, Journal) {
        let journal = Arc::new(std::sync::Mutex::new(Vec::new()));
        (
            JournalStore {
                inner,
                journal: journal.clone(),
                writes: None,
            },
            Journal(journal),
        )
    }

    /// Wraps `inner` as [`new`](Self::new) does, its fills' writes (journaled when they start) going on only
    /// once the returned sender sends `true`.
    pub fn holding_writes(inner: S) -> (Self, Journal, tokio::sync::watch::Sender<bool>) {
        let (mut store, journal) = Self::new(inner);
        let (open, writes) = tokio::sync::watch::channel(false);
        store.writes = Some(writes);
        (store, journal, open)
    }

    fn around<'a, T: Send + 'a>(
        &self,
        start: &'static str,
        end: &'static str,
        call: StoreFuture<'a, T>,
    ) -> StoreFuture<'a, T> {
        self.journal.lock().unwrap().push(start);
        let journal = self.journal.clone();
        Box::pin(async move {
            let out = call.await;
            journal.lock().unwrap().push(end);
            out
        })
    }
}

impl<S: Store> Store for JournalStore<S> {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        self.inner.get(key)
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        self.inner.set(key, value, ttl)
    }

    fn set_if_leased<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        lease: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, bool> {
        self.journal.lock().unwrap().push("set>");
        self.inner.set_if_leased(key, value, ttl, lease, token)
    }

    fn set_if_leased_and_release<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        lease: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, bool> {
        self.journal.lock().unwrap().push("set+release>");
        let write = self
            .inner
            .set_if_leased_and_release(key, value, ttl, lease, token);
        let mut writes = self.writes.clone();
        Box::pin(async move {
            if let Some(writes) = &mut writes {
                let _ = writes.wait_for(|open| *open).await;
            }
            write.await
        })
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        self.around("lease>", "lease<", self.inner.try_lease(key, token, ttl))
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
        self.around("unlease>", "unlease<", self.inner.release_lease(key, token))
    }

    fn remove<'a>(&'a self, keys: &'a [&'a str]) -> StoreFuture<'a, u64> {
        self.inner.remove(keys)
    }

    fn purge_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        self.inner.purge_prefix(prefix)
    }

    fn tag<'a>(
        &'a self,
        tag: &'a str,
        key: &'a str,
        lifetime: Duration,
        since: u64,
    ) -> StoreFuture<'a, bool> {
        self.around("tag>", "tag<", self.inner.tag(tag, key, lifetime, since))
    }

    fn mark_invalidated<'a>(&'a self, tag: &'a str, at: u64) -> StoreFuture<'a, ()> {
        self.inner.mark_invalidated(tag, at)
    }

    fn tag_clock<'a>(&'a self, key: &'a str, advance: bool) -> StoreFuture<'a, u64> {
        self.around("clock>", "clock<", self.inner.tag_clock(key, advance))
    }

    fn tagged<'a>(&'a self, tag: &'a str, cursor: u64) -> StoreFuture<'a, (Vec<String>, u64)> {
        self.inner.tagged(tag, cursor)
    }

    fn keeps_tags(&self) -> bool {
        self.inner.keeps_tags()
    }

    fn node_of(&self, key: &str) -> Option<usize> {
        self.inner.node_of(key)
    }

    fn reconnect(&self) -> StoreFuture<'_, ()> {
        self.inner.reconnect()
    }
}

/// `inner`, whose next lease call, once [`LateLease::arm`]ed, runs only after `delay` (the caller waits for it
/// all that time): as a command held in a reconnect or a slow link runs after its caller gave up on it.
pub struct LateLeaseStore<S> {
    inner: Arc<S>,
    late: Arc<std::sync::atomic::AtomicBool>,
    delay: Duration,
}

/// Arms a [`LateLeaseStore`].
#[derive(Clone)]
pub struct LateLease(Arc<std::sync::atomic::AtomicBool>);

impl LateLease {
    /// Makes the next lease call late.
    pub fn arm(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl<S> LateLeaseStore<S> {
    /// Wraps `inner`; the returned handle makes a lease call late.
    pub fn new(inner: S, delay: Duration) -> (Self, LateLease) {
        let late = Arc::new(std::sync::atomic::AtomicBool::new(false));
        (
            LateLeaseStore {
                inner: Arc::new(inner),
                late: late.clone(),
                delay,
            },
            LateLease(late),
        )
    }
}

impl<S: Store> Store for LateLeaseStore<S> {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        self.inner.get(key)
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        self.inner.set(key, value, ttl)
    }

    fn set_if_leased_and_release<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        lease: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, bool> {
        self.inner
            .set_if_leased_and_release(key, value, ttl, lease, token)
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        if !self.late.swap(false, Ordering::SeqCst) {
            return self.inner.try_lease(key, token, ttl);
        }
        // Runs to the end on its own, whether or not its caller still waits.
        let (inner, key, token, delay) = (
            self.inner.clone(),
            key.to_owned(),
            token.to_owned(),
            self.delay,
        );
        let late = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            inner.try_lease(&key, &token, ttl).await
        });
        Box::pin(async move {
            late.await
                .unwrap_or_else(|e| Err(tower_redis_cache::error::StoreError::backend(e)))
        })
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
