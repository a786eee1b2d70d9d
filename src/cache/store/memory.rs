//! [`MemoryStore`]: an in-process store on moka, for demos, tests and single-process services.

use super::{Store, StoreFuture};
use bytes::Bytes;
use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

#[derive(Clone)]
struct Stored {
    value: Bytes,
    ttl: Duration,
    /// When the value expires by Tokio's clock (paused and advanced in tests); moka's own expiry, by the wall
    /// clock, reclaims the memory.
    expires_at: tokio::time::Instant,
}

impl Stored {
    fn new(value: Bytes, ttl: Duration) -> Self {
        let now = tokio::time::Instant::now();
        Stored {
            value,
            ttl,
            expires_at: now.checked_add(ttl).unwrap_or(now + FAR_FUTURE),
        }
    }

    fn live(&self) -> bool {
        tokio::time::Instant::now() < self.expires_at
    }
}

/// A stand-in for "never" that `Instant` arithmetic cannot overflow (about 30 years, as Tokio's own).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

struct PerEntryTtl;

impl moka::Expiry<String, Stored> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Stored,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Stored,
        _now: std::time::Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// An in-process [`Store`] backed by a moka cache, bounded by total bytes, with a TTL per entry.
///
/// Entries are shared by every layer built on clones of one `MemoryStore`, but not across processes: use
/// [`RedisStore`](super::RedisStore) for a fleet.
///
/// ```
/// use tower_redis_cache::MemoryStore;
///
/// let store = MemoryStore::new(64 * 1024 * 1024); // at most 64 MiB of keys and values
/// # let _ = store;
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<String, Stored>,
    /// Held by every write that depends on a lease ([`Store::set_if_leased`]) and every change to leases or
    /// removal, so that a conditional write is one step against them, as its Lua script is on Redis.
    leases: Arc<Mutex<()>>,
}

impl MemoryStore {
    /// A store holding at most `max_bytes` of keys and values; the least recently used go first.
    pub fn new(max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, value: &Stored| {
                u32::try_from(key.len() + value.value.len()).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        MemoryStore {
            cache,
            leases: Arc::default(),
        }
    }

    /// The number of entries (approximate while maintenance is pending).
    pub fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    fn lock_leases(&self) -> MutexGuard<'_, ()> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .field("weighted_size", &self.cache.weighted_size())
            .finish()
    }
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        let value = self
            .cache
            .get(key)
            .filter(Stored::live)
            .map(|stored| stored.value);
        Box::pin(std::future::ready(Ok(value)))
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        self.cache.insert(key.to_owned(), Stored::new(value, ttl));
        Box::pin(std::future::ready(Ok(())))
    }

    fn set_if_leased<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        lease: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, bool> {
        let _leases = self.lock_leases();
        let held = self
            .cache
            .get(lease)
            .is_some_and(|held| held.live() && held.value == token.as_bytes());
        if held {
            self.cache.insert(key.to_owned(), Stored::new(value, ttl));
        }
        Box::pin(std::future::ready(Ok(held)))
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        let _leases = self.lock_leases();
        let result = self
            .cache
            .entry(key.to_owned())
            .and_compute_with(|current| match current {
                Some(held) if held.value().live() => Op::Nop,
                _ => Op::Put(Stored::new(Bytes::copy_from_slice(token.as_bytes()), ttl)),
            });
        let took = matches!(
            result,
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        );
        Box::pin(std::future::ready(Ok(took)))
    }

    fn extend_lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        let result = self
            .cache
            .entry(key.to_owned())
            .and_compute_with(|current| match current {
                Some(held) if held.value().live() && held.value().value == token.as_bytes() => {
                    Op::Put(Stored::new(held.into_value().value, ttl))
                }
                _ => Op::Nop,
            });
        let extended = matches!(result, CompResult::ReplacedWith(_));
        Box::pin(std::future::ready(Ok(extended)))
    }

    fn release_lease<'a>(&'a self, key: &'a str, token: &'a str) -> StoreFuture<'a, bool> {
        let result = self
            .cache
            .entry(key.to_owned())
            .and_compute_with(|current| match current {
                Some(held) if held.value().live() && held.value().value == token.as_bytes() => {
                    Op::Remove
                }
                _ => Op::Nop,
            });
        let released = matches!(result, CompResult::Removed(_));
        Box::pin(std::future::ready(Ok(released)))
    }

    fn remove<'a>(&'a self, keys: &'a [&'a str]) -> StoreFuture<'a, u64> {
        let _leases = self.lock_leases();
        let removed = keys
            .iter()
            .filter(|k| self.cache.remove(**k).is_some())
            .count();
        Box::pin(std::future::ready(Ok(removed as u64)))
    }

    fn purge_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        let _leases = self.lock_leases();
        let doomed: Vec<String> = self
            .cache
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| (*k).clone())
            .collect();
        let removed = doomed
            .iter()
            .filter(|k| self.cache.remove(*k).is_some())
            .count();
        Box::pin(std::future::ready(Ok(removed as u64)))
    }
}
