//! Where entries live: the [`Store`] trait, [`RedisStore`] (fred) and [`MemoryStore`] (moka).
//!
//! The cache engine only talks to `dyn Store`; it never names fred or moka. Every call it makes goes through a
//! timeout and a circuit breaker (see [`RedisCacheLayerBuilder::store_timeout`]), so a slow or dead store costs a
//! request at most one timeout, and nothing once the breaker is open.
//!
//! [`RedisCacheLayerBuilder::store_timeout`]: crate::cache::RedisCacheLayerBuilder::store_timeout
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_redis_cache::cache::store::{MemoryStore, Store};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = MemoryStore::new(16 * 1024 * 1024);
//! store.set("ns:v1:{k}", "v".into(), Duration::from_secs(60)).await.unwrap();
//! assert_eq!(store.get("ns:v1:{k}").await.unwrap().as_deref(), Some(&b"v"[..]));
//! let lease = Duration::from_secs(5);
//! assert!(store.try_lease("ns:v1:{k}:lease", "token-a", lease).await.unwrap());
//! assert!(!store.try_lease("ns:v1:{k}:lease", "token-b", lease).await.unwrap());
//! // Only the holder extends or releases it.
//! assert!(!store.release_lease("ns:v1:{k}:lease", "token-b").await.unwrap());
//! assert!(store.extend_lease("ns:v1:{k}:lease", "token-a", lease).await.unwrap());
//! // Answers are stored under the lease that was held while the origin was asked.
//! let ttl = Duration::from_secs(60);
//! assert!(!store.set_if_leased("ns:v1:{k}", "v2".into(), ttl, "ns:v1:{k}:lease", "token-b").await.unwrap());
//! assert!(store.set_if_leased("ns:v1:{k}", "v2".into(), ttl, "ns:v1:{k}:lease", "token-a").await.unwrap());
//! assert_eq!(store.get("ns:v1:{k}").await.unwrap().as_deref(), Some(&b"v2"[..]));
//! assert!(store.release_lease("ns:v1:{k}:lease", "token-a").await.unwrap());
//! # }
//! ```

use crate::error::StoreError;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

#[cfg(feature = "redis")]
mod diagnosis;
#[cfg(feature = "redis")]
mod homes;
#[cfg(feature = "memory")]
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod sentinel;
#[cfg(feature = "redis")]
mod shards;
#[cfg(feature = "redis")]
mod tracking;

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use self::memory::MemoryStore;
#[cfg(feature = "redis")]
pub(crate) use self::redis::Housed;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisStore;

/// What a store without tags answers to the tag methods.
fn no_tags<'a, T: Send + 'a>() -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(Err(StoreError::backend(
        "this store does not keep tags",
    ))))
}

/// The future a [`Store`] method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A key-value store for cache entries.
///
/// Keys are the cache's own (`<namespace>:v1:{<hex>}` and `...:lease`); values are opaque bytes. An error is
/// [`StoreError::Refused`] when the store answered but refused the call (it is full, read-only): the circuit
/// breaker does not count those, so reads go on; any other error counts toward opening it.
pub trait Store: std::any::Any + Send + Sync {
    /// Reads a value; `Ok(None)` when absent.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>>;

    /// Writes a value that expires after `ttl`.
    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()>;

    /// Writes `value` at `key` (expiring after `ttl`) only if the lease at `lease` still holds `token`, in one
    /// step (Lua on Redis); returns whether it wrote. The cache stores every origin answer this way, under the
    /// lease it took before asking the origin, and an invalidation removes the lease before the entry: so an
    /// answer the origin gave before a change it was told of is never stored after that change.
    ///
    /// The default reads the lease, then writes: two steps, which leave a short window in which a removal can
    /// be overtaken. A store that can compare and write in one step should do so.
    fn set_if_leased<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        lease: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            if self.get(lease).await?.as_deref() != Some(token.as_bytes()) {
                return Ok(false);
            }
            self.set(key, value, ttl).await?;
            Ok(true)
        })
    }

    /// [`set_if_leased`](Self::set_if_leased), and the lease removed with the write: what a fill does last, so
    /// that a process waiting on the lease finds the entry once the lease is gone. Returns whether it wrote (and
    /// removed the lease). One step on Redis (Lua), one round trip instead of two.
    ///
    /// The default calls [`set_if_leased`](Self::set_if_leased), then [`release_lease`](Self::release_lease);
    /// a failed release leaves the lease to expire.
    fn set_if_leased_and_release<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        lease: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let written = self.set_if_leased(key, value, ttl, lease, token).await?;
            if written {
                let _ = self.release_lease(lease, token).await;
            }
            Ok(written)
        })
    }

    /// Takes a lease: writes `token` at `key` only if `key` is absent (`SET NX PX`), returning whether this call
    /// took it. The lease expires after `ttl` unless extended.
    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool>;

    /// Extends the lease at `key` to `ttl` from now, only if it still holds `token` (compare and act, in one
    /// step); returns whether it did.
    fn extend_lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool>;

    /// Removes the lease at `key` only if it still holds `token` (compare and act, in one step), so a holder
    /// whose lease expired never removes the next holder's; returns whether it did.
    fn release_lease<'a>(&'a self, key: &'a str, token: &'a str) -> StoreFuture<'a, bool>;

    /// Removes keys, returning how many existed. Keys removed in one call go in no particular order: the cache
    /// removes leases in a call before the one that removes their entries.
    fn remove<'a>(&'a self, keys: &'a [&'a str]) -> StoreFuture<'a, u64>;

    /// Removes every key that starts with `prefix` (incrementally: `SCAN` + `UNLINK` on Redis), returning how
    /// many were removed.
    fn purge_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64>;

    /// Records the entry key `member` under the tag set at `tag` for at least `lifetime` from now (a set of
    /// members, each with its own expiry; the longer of the old and the new expiry counts), unless the set was
    /// [marked invalidated](Self::mark_invalidated) at or after `since` (a [`tag_clock`](Self::tag_clock)
    /// reading; `u64::MAX`: record in any case), in one step. Returns whether it recorded. Expired members are
    /// dropped as new ones come, so a set holds the live entries of its tag.
    ///
    /// The cache records a fill's request tags while it holds the key's lease and before it asks the origin,
    /// and its response tags (known only from the answer) under the clock reading it took before asking: so
    /// [`CacheHandle::invalidate_tag`] finds, or fences, every fill that may bring back an answer from before it.
    ///
    /// The default refuses: a store without tags stores no answer that has tags.
    ///
    /// [`CacheHandle::invalidate_tag`]: crate::cache::CacheHandle::invalidate_tag
    fn tag<'a>(
        &'a self,
        tag: &'a str,
        member: &'a str,
        lifetime: Duration,
        since: u64,
    ) -> StoreFuture<'a, bool> {
        let _ = (tag, member, lifetime, since);
        no_tags()
    }

    /// Marks the tag set at `tag` invalidated at `at` (an advancing [`tag_clock`](Self::tag_clock) reading; a
    /// later mark stays), so that no answer from a fill that read the clock before it is recorded under it. The mark
    /// lives at `<tag>:invalidated` (the set's hash slot); on Redis without a TTL, like the set, until a
    /// [sweep](Self::sweep_tags) finds it a day old.
    ///
    /// The default refuses, as [`tag`](Self::tag) does.
    fn mark_invalidated<'a>(&'a self, tag: &'a str, at: u64) -> StoreFuture<'a, ()> {
        let _ = (tag, at);
        no_tags()
    }

    /// Reads the tag clock at `key`, advancing it when `advance`. A reading taken before an advancing one is
    /// never above it (so a mark at the advancing reading refuses what the earlier reading fenced), and readings
    /// move on, so that a mark refuses no fill for long after it. On Redis: the server's clock in µs, or a
    /// counter at `key` where it is ahead, which each advance moves one past the two (so a clock stepping back
    /// never puts an advance below an earlier one, and losing the key to an eviction costs nothing).
    ///
    /// The default refuses, as [`tag`](Self::tag) does.
    fn tag_clock<'a>(&'a self, key: &'a str, advance: bool) -> StoreFuture<'a, u64> {
        let _ = (key, advance);
        no_tags()
    }

    /// One page of the members recorded under `tag`, from `cursor` (`0` first): the members (some perhaps
    /// expired, some perhaps twice) and the cursor of the next page, `0` after the last (as `ZSCAN` on Redis).
    /// Every member present for the whole walk is returned at least once.
    ///
    /// The default refuses, as [`tag`](Self::tag) does.
    fn tagged<'a>(&'a self, tag: &'a str, cursor: u64) -> StoreFuture<'a, (Vec<String>, u64)> {
        let _ = (tag, cursor);
        no_tags()
    }

    /// Drops what expired from the tag sets of the namespace whose keys start with `prefix`, the sets left empty,
    /// and the [invalidation marks](Self::mark_invalidated) a day old, returning how many sets it removed.
    /// [`tag`](Self::tag) drops a set's expired members as new ones come, so this matters for the sets no fill
    /// records in any more: on Redis, where sets and marks carry no TTL (so that a Redis evicting only keys with
    /// one, `volatile-*`, never takes a set from under its entries, or a mark from under a fill it fences), they
    /// would otherwise stay. On Redis: `SCAN` of every primary for the sets and marks, and a script per key. The
    /// cache runs it about once an hour for the whole fleet (see
    /// [`tag_sweep_every`](crate::cache::RedisCacheLayerBuilder::tag_sweep_every) and
    /// [`CacheHandle::sweep_tags`](crate::cache::CacheHandle::sweep_tags)).
    ///
    /// The default does nothing: a store that bounds its tags on its own, as [`MemoryStore`] does.
    fn sweep_tags<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        let _ = prefix;
        Box::pin(std::future::ready(Ok(0)))
    }

    /// Whether the store keeps tags: implements [`tag`](Self::tag), [`mark_invalidated`](Self::mark_invalidated),
    /// [`tag_clock`](Self::tag_clock) and [`tagged`](Self::tagged). Where it does, a write that invalidates its
    /// URI reaches every variant stored for it (see
    /// [`invalidate_on_unsafe`](crate::cache::RedisCacheLayerBuilder::invalidate_on_unsafe)). [`RedisStore`] and
    /// [`MemoryStore`] do. Default: false.
    fn keeps_tags(&self) -> bool {
        false
    }

    /// Which of the store's nodes holds `key`, as a small number (the same for every key on one node), so that
    /// the cache keeps a circuit breaker per node: a dead shard then costs only the keys on it, not the whole
    /// cache. [`RedisStore`] answers for a Cluster (by hash slot). Default: `None`, one
    /// breaker for the whole store.
    fn node_of(&self, key: &str) -> Option<usize> {
        let _ = key;
        None
    }

    /// Makes the store's connections again: the cache calls it when the store keeps failing (the circuit
    /// breaker opens, or its probe fails), since a connection can be stuck while it looks open (a half-open
    /// link). Default: nothing to do.
    fn reconnect(&self) -> StoreFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Whether [`reconnect`](Self::reconnect) cures `error`, what a call failed with or was refused by: on Redis,
    /// `READONLY` from a primary demoted to a replica under an open connection (a failover that moves an address,
    /// as managed Redis services do, leaves connections to the old primary open), which a new connection to the
    /// address avoids, and `NOAUTH` on a connection that lost its login (behind a managed Redis's proxy whose node
    /// was replaced), which a new connection logs in again. The cache then has the store reconnect, at most once
    /// every few seconds. Default: none.
    fn reconnect_cures(&self, error: &StoreError) -> bool {
        let _ = error;
        false
    }

    /// Makes the entries at `keys` stale as of `at` (unix milliseconds, the cache's clock) without removing
    /// them, and returns how many it changed: each fresh one's windows move back by the freshness it had left,
    /// so it is answered stale from now on (one background refresh, the others served at once) and keeps its
    /// stale-if-error window for an origin that fails meanwhile (a soft purge). Entries stale already, markers
    /// and missing keys are left alone. On Redis, each key is read and then changed only if nothing wrote it
    /// in between (`GETRANGE`, then a script's `SETRANGE`, which keeps its TTL).
    ///
    /// The default removes them ([`remove`](Self::remove)): a store that cannot change an entry in place makes
    /// a soft purge a hard one.
    fn mark_stale<'a>(&'a self, keys: &'a [&'a str], at: u64) -> StoreFuture<'a, u64> {
        let _ = at;
        self.remove(keys)
    }

    /// The store's own clock, which every process sharing the store reads alike: `TIME` on Redis (on a Cluster,
    /// the node serving slot 0's, so that every process reads the same node). The cache asks for it as a layer is
    /// built (on a runtime; else at its first request) and then once a minute, and where this process's clock is
    /// more than a second off, times entries by the store's instead, so that processes whose clocks disagree
    /// still agree on when an entry goes stale. Default: `None`, a store in this process's memory, whose clock is
    /// the process's own (a store that wraps another should forward this).
    fn server_time(&self) -> StoreFuture<'_, Option<SystemTime>> {
        Box::pin(std::future::ready(Ok(None)))
    }
}

impl<T: Store + ?Sized> Store for std::sync::Arc<T> {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        (**self).get(key)
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        (**self).set(key, value, ttl)
    }

    fn set_if_leased<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        lease: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, bool> {
        (**self).set_if_leased(key, value, ttl, lease, token)
    }

    fn set_if_leased_and_release<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        lease: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, bool> {
        (**self).set_if_leased_and_release(key, value, ttl, lease, token)
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        (**self).try_lease(key, token, ttl)
    }

    fn extend_lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        (**self).extend_lease(key, token, ttl)
    }

    fn release_lease<'a>(&'a self, key: &'a str, token: &'a str) -> StoreFuture<'a, bool> {
        (**self).release_lease(key, token)
    }

    fn remove<'a>(&'a self, keys: &'a [&'a str]) -> StoreFuture<'a, u64> {
        (**self).remove(keys)
    }

    fn purge_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        (**self).purge_prefix(prefix)
    }

    fn tag<'a>(
        &'a self,
        tag: &'a str,
        member: &'a str,
        lifetime: Duration,
        since: u64,
    ) -> StoreFuture<'a, bool> {
        (**self).tag(tag, member, lifetime, since)
    }

    fn mark_invalidated<'a>(&'a self, tag: &'a str, at: u64) -> StoreFuture<'a, ()> {
        (**self).mark_invalidated(tag, at)
    }

    fn tag_clock<'a>(&'a self, key: &'a str, advance: bool) -> StoreFuture<'a, u64> {
        (**self).tag_clock(key, advance)
    }

    fn tagged<'a>(&'a self, tag: &'a str, cursor: u64) -> StoreFuture<'a, (Vec<String>, u64)> {
        (**self).tagged(tag, cursor)
    }

    fn keeps_tags(&self) -> bool {
        (**self).keeps_tags()
    }

    fn sweep_tags<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        (**self).sweep_tags(prefix)
    }

    fn node_of(&self, key: &str) -> Option<usize> {
        (**self).node_of(key)
    }

    fn reconnect(&self) -> StoreFuture<'_, ()> {
        (**self).reconnect()
    }

    fn reconnect_cures(&self, error: &StoreError) -> bool {
        (**self).reconnect_cures(error)
    }

    fn mark_stale<'a>(&'a self, keys: &'a [&'a str], at: u64) -> StoreFuture<'a, u64> {
        (**self).mark_stale(keys, at)
    }

    fn server_time(&self) -> StoreFuture<'_, Option<SystemTime>> {
        (**self).server_time()
    }
}
