//! [`MemoryStore`]: an in-process store on moka, for demos, tests and single-process services.

use super::super::entry::{WINDOWS_AT, WINDOWS_LEN, staled_windows};
use super::super::key::lease_key_of;
use super::{Store, StoreFuture};
use crate::error::StoreError;
use bytes::Bytes;
use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

#[derive(Clone)]
struct Stored {
    value: Bytes,
    ttl: Duration,
    /// When the value expires by Tokio's clock (paused and advanced in tests); moka's own expiry, by the wall
    /// clock and [`RECLAIM_GRACE`] later, reclaims the memory.
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

/// The tag sets of a [`MemoryStore`]: per tag, its members and when each expires (Tokio's clock, as entries).
#[derive(Default)]
struct TagSets {
    sets: HashMap<String, HashMap<String, tokio::time::Instant>>,
    /// Members over all sets.
    members: usize,
    /// When `members` reaches this, expired members are swept from every set (so a sweep costs, spread over
    /// the additions since the last, a constant per addition).
    sweep_at: usize,
    /// No member expires before this (it may be earlier than the soonest expiry, never later).
    soonest: Option<tokio::time::Instant>,
    /// Calls to record a member since the members whose entries are gone were last swept (see
    /// [`TagSets::sweep_dead`]).
    since_dead_sweep: usize,
    /// Invalidation marks by tag: the mark, and when it expires.
    marks: HashMap<String, (u64, tokio::time::Instant)>,
    /// The tag clock: in one process, a counter is enough.
    clock: u64,
}

impl TagSets {
    fn sweep(&mut self, now: tokio::time::Instant) {
        self.sets.retain(|_, set| {
            set.retain(|_, until| *until > now);
            !set.is_empty()
        });
        self.members = self.sets.values().map(HashMap::len).sum();
        self.sweep_at = (self.members * 2).max(MIN_SWEEP);
        self.soonest = self.sets.values().flat_map(HashMap::values).min().copied();
        self.marks.retain(|_, (_, until)| *until > now);
    }

    /// Drops the members `alive` says are gone: their entries were evicted (a bounded store evicts) or removed,
    /// and no fill holds their lease. Such members name nothing a removal needs to find.
    fn sweep_dead(&mut self, alive: impl Fn(&str) -> bool) {
        self.sets.retain(|_, set| {
            set.retain(|member, _| alive(member));
            !set.is_empty()
        });
        self.members = self.sets.values().map(HashMap::len).sum();
        self.soonest = self.sets.values().flat_map(HashMap::values).min().copied();
        self.since_dead_sweep = 0;
    }

    /// Whether `tag` was marked invalidated at or after `since`.
    fn marked_after(&self, tag: &str, since: u64, now: tokio::time::Instant) -> bool {
        self.marks
            .get(tag)
            .is_some_and(|(mark, until)| *until > now && *mark >= since)
    }

    fn remove_set(&mut self, tag: &str) -> bool {
        match self.sets.remove(tag) {
            Some(set) => {
                self.members -= set.len();
                true
            }
            None => false,
        }
    }
}

/// How long an invalidation mark is kept (as on Redis).
const MARK_FOR: Duration = Duration::from_secs(86_400);
/// Tag members at which a sweep first runs.
const MIN_SWEEP: usize = 1024;
/// Bytes of the store's bound counted per tag member, for the most members it keeps (its keys and
/// bookkeeping, about that size).
const BYTES_PER_MEMBER: u64 = 256;

/// A stand-in for "never" that `Instant` arithmetic cannot overflow (about 30 years, as Tokio's own).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// How long after its TTL moka reclaims a value. A value lives by Tokio's clock, which a test pauses while the
/// wall clock runs on: reclaimed at its TTL by the wall, a short-lived value (a 1 ms lease) would vanish before
/// it expired as the test sees time, whenever the machine was slow enough between two steps. Every read checks
/// Tokio's clock, so the grace changes what lives nowhere; expired values take their share of the bound until
/// reclaimed, as long as this at most.
const RECLAIM_GRACE: Duration = Duration::from_secs(5);

/// moka's expiry of a value: its TTL and [`RECLAIM_GRACE`].
struct PerEntryTtl;

impl moka::Expiry<String, Stored> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Stored,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl.saturating_add(RECLAIM_GRACE))
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Stored,
        _now: std::time::Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl.saturating_add(RECLAIM_GRACE))
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
/// let store = MemoryStore::new(64 * 1024 * 1024); // about 64 MiB at the most, bookkeeping included
/// # let _ = store;
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<String, Stored>,
    /// Held by every write that depends on a lease ([`Store::set_if_leased`]) and every change to leases or
    /// removal, so that a conditional write is one step against them, as its Lua script is on Redis.
    leases: Arc<Mutex<()>>,
    tags: Arc<Mutex<TagSets>>,
    /// The most tag members kept: a tag beyond it is refused (its answer is then not stored), once neither
    /// expired members nor those of entries the store no longer holds make room.
    max_members: usize,
}

/// What an entry costs beside its key's and value's bytes: moka's bookkeeping (its entry, hash table slot,
/// queue and timer nodes), the key's and value's own allocations, the value's expiry. Measured on x86_64 (the
/// resident memory of 200,000 entries of 84 bytes each): about 490 bytes.
const ENTRY_OVERHEAD: usize = 480;

/// What the value at `key` costs the store.
fn weight(key: &str, stored: &Stored) -> u32 {
    u32::try_from(key.len() + stored.value.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

impl MemoryStore {
    /// A store holding at most about `max_bytes` of memory: its keys, values and each entry's bookkeeping (about
    /// half a KiB an entry beside its key and value); the least recently used go first.
    pub fn new(max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, value: &Stored| weight(key, value))
            .expire_after(PerEntryTtl)
            .build();
        MemoryStore {
            cache,
            leases: Arc::default(),
            tags: Arc::new(Mutex::new(TagSets {
                sweep_at: MIN_SWEEP,
                ..TagSets::default()
            })),
            max_members: usize::try_from(max_bytes / BYTES_PER_MEMBER)
                .unwrap_or(usize::MAX)
                .max(MIN_SWEEP),
        }
    }

    /// The number of entries (approximate while maintenance is pending).
    pub fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Writes `value` at `key` if the lease at `lease` holds `token`, removing the lease too when `release`: one
    /// step against every other change to leases. Returns whether it wrote.
    fn write_if_leased(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
        lease: &str,
        token: &str,
        release: bool,
    ) -> bool {
        let _leases = self.lock_leases();
        let held = self
            .cache
            .get(lease)
            .is_some_and(|held| held.live() && held.value == token.as_bytes());
        if held {
            self.put(key, Stored::new(value, ttl));
            if release {
                self.cache.remove(lease);
            }
        }
        held
    }

    /// Writes `stored` at `key` (call with the leases' lock held, which every write of a value takes, so that
    /// writes of one key follow each other). moka keeps the cache's weight right only for entries whose weight
    /// never changes: one replaced in place by a value of another weight and removed before moka's housekeeping
    /// ran is taken off at its new weight with its change never added, and the bound drifts, up or down, with
    /// every such write (measured: 13 % in 100,000 writes and removals of 500 keys). So a value of another weight
    /// than the one it replaces goes in as a new entry, the old one removed first; a read between the two finds
    /// none, as one just before the first write would.
    fn put(&self, key: &str, stored: Stored) {
        let weight = weight(key, &stored);
        let result = self
            .cache
            .entry(key.to_owned())
            .and_compute_with(|held| match held {
                Some(held) if self::weight(key, held.value()) != weight => Op::Remove,
                _ => Op::Put(stored.clone()),
            });
        if matches!(result, CompResult::Removed(_)) {
            self.cache.insert(key.to_owned(), stored);
        }
    }

    fn lock_leases(&self) -> MutexGuard<'_, ()> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_tags(&self) -> MutexGuard<'_, TagSets> {
        self.tags.lock().unwrap_or_else(PoisonError::into_inner)
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
        let _leases = self.lock_leases();
        self.put(key, Stored::new(value, ttl));
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
        let held = self.write_if_leased(key, value, ttl, lease, token, false);
        Box::pin(std::future::ready(Ok(held)))
    }

    fn set_if_leased_and_release<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
        lease: &'a str,
        token: &'a str,
    ) -> StoreFuture<'a, bool> {
        let held = self.write_if_leased(key, value, ttl, lease, token, true);
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
        let mut removed = keys
            .iter()
            .filter(|k| self.cache.remove(**k).is_some())
            .count();
        let mut tags = self.lock_tags();
        removed += keys.iter().filter(|k| tags.remove_set(k)).count();
        Box::pin(std::future::ready(Ok(removed as u64)))
    }

    fn mark_stale<'a>(&'a self, keys: &'a [&'a str], at: u64) -> StoreFuture<'a, u64> {
        let mut marked = 0;
        for key in keys {
            let result = self
                .cache
                .entry((*key).to_owned())
                .and_compute_with(|current| {
                    let Some(held) = current.filter(|held| held.value().live()) else {
                        return Op::Nop;
                    };
                    let held = held.into_value();
                    let Some(windows) = staled_windows(&held.value, at) else {
                        return Op::Nop;
                    };
                    let mut value = held.value.to_vec();
                    value[WINDOWS_AT..WINDOWS_AT + WINDOWS_LEN].copy_from_slice(&windows);
                    // The same expiry: only the entry's own windows move.
                    let left = held
                        .expires_at
                        .saturating_duration_since(tokio::time::Instant::now());
                    Op::Put(Stored {
                        value: Bytes::from(value),
                        ttl: left,
                        expires_at: held.expires_at,
                    })
                });
            if matches!(result, CompResult::ReplacedWith(_)) {
                marked += 1;
            }
        }
        Box::pin(std::future::ready(Ok(marked)))
    }

    fn purge_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        let _leases = self.lock_leases();
        let doomed: Vec<String> = self
            .cache
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| (*k).clone())
            .collect();
        let mut removed = doomed
            .iter()
            .filter(|k| self.cache.remove(*k).is_some())
            .count();
        let mut tags = self.lock_tags();
        let doomed: Vec<String> = tags
            .sets
            .keys()
            .filter(|tag| tag.starts_with(prefix))
            .cloned()
            .collect();
        removed += doomed.iter().filter(|tag| tags.remove_set(tag)).count();
        tags.marks.retain(|tag, _| !tag.starts_with(prefix));
        Box::pin(std::future::ready(Ok(removed as u64)))
    }

    fn keeps_tags(&self) -> bool {
        true
    }

    fn tag<'a>(
        &'a self,
        tag: &'a str,
        member: &'a str,
        lifetime: Duration,
        since: u64,
    ) -> StoreFuture<'a, bool> {
        let now = tokio::time::Instant::now();
        let until = now.checked_add(lifetime).unwrap_or(now + FAR_FUTURE);
        let mut tags = self.lock_tags();
        if tags.marked_after(tag, since, now) {
            return Box::pin(std::future::ready(Ok(false)));
        }
        let known = |tags: &TagSets| {
            tags.sets
                .get(tag)
                .is_some_and(|set| set.contains_key(member))
        };
        // Full: sweep only once some member may have expired, so that a full store refuses cheaply.
        let full = |tags: &TagSets| !known(tags) && tags.members >= self.max_members;
        if tags.members >= tags.sweep_at || (full(&tags) && tags.soonest.is_some_and(|t| t <= now))
        {
            tags.sweep(now);
        }
        // Still full: the members of entries the store evicted (it is bounded, the table is not bound to it)
        // hold their places until they expire. Swept once a quarter of the table's worth of calls came since the
        // last such sweep (a constant cost per call, spread), keeping those whose entry is there and those whose
        // fill holds the lease (recorded before the entry is written).
        tags.since_dead_sweep += 1;
        if full(&tags) && tags.since_dead_sweep >= self.max_members / 4 {
            self.cache.run_pending_tasks();
            tags.sweep_dead(|member| {
                self.cache.contains_key(member) || self.cache.contains_key(&lease_key_of(member))
            });
        }
        if full(&tags) {
            // Refused, as Redis refuses a write when out of memory: the store still answers, so its hits go on.
            return Box::pin(std::future::ready(Err(StoreError::Refused(
                "memory store: too many tagged entries".into(),
            ))));
        }
        let set = tags.sets.entry(tag.to_owned()).or_default();
        let added = match set.get_mut(member) {
            Some(held) => {
                *held = (*held).max(until);
                false
            }
            None => {
                set.insert(member.to_owned(), until);
                true
            }
        };
        if added {
            tags.members += 1;
        }
        tags.soonest = Some(tags.soonest.map_or(until, |soonest| soonest.min(until)));
        Box::pin(std::future::ready(Ok(true)))
    }

    fn mark_invalidated<'a>(&'a self, tag: &'a str, at: u64) -> StoreFuture<'a, ()> {
        let now = tokio::time::Instant::now();
        let until = now + MARK_FOR;
        let mut tags = self.lock_tags();
        if !tags.marks.contains_key(tag) && tags.marks.len() >= self.max_members {
            tags.marks.retain(|_, (_, until)| *until > now);
            if tags.marks.len() >= self.max_members {
                return Box::pin(std::future::ready(Err(StoreError::Refused(
                    "memory store: too many invalidated tags".into(),
                ))));
            }
        }
        let mark = tags.marks.entry(tag.to_owned()).or_insert((at, until));
        *mark = (mark.0.max(at), until);
        Box::pin(std::future::ready(Ok(())))
    }

    fn tag_clock<'a>(&'a self, key: &'a str, advance: bool) -> StoreFuture<'a, u64> {
        // In one process every reading can move the counter on: each is above all before it.
        let _ = (key, advance);
        let mut tags = self.lock_tags();
        tags.clock += 1;
        Box::pin(std::future::ready(Ok(tags.clock)))
    }

    fn tagged<'a>(&'a self, tag: &'a str, cursor: u64) -> StoreFuture<'a, (Vec<String>, u64)> {
        let _ = cursor;
        let now = tokio::time::Instant::now();
        let members = self
            .lock_tags()
            .sets
            .get(tag)
            .map(|set| {
                set.iter()
                    .filter(|(_, until)| **until > now)
                    .map(|(member, _)| member.clone())
                    .collect()
            })
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok((members, 0))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Record whatever the marks say.
    const ANY: u64 = u64::MAX;

    async fn members(store: &MemoryStore, tag: &str) -> Vec<String> {
        let (mut members, next) = store.tagged(tag, 0).await.unwrap();
        assert_eq!(next, 0, "one page");
        members.sort();
        members
    }

    /// The cache's weight is what its values weigh, so its bound holds, when a key's value changes size and the
    /// key is removed before moka's housekeeping applied the change (here: run between the two writes).
    #[tokio::test]
    async fn its_weight_is_what_its_values_weigh_when_values_change_size() {
        let store = MemoryStore::new(1 << 20);
        let held = |store: &MemoryStore| -> u64 {
            store.cache.run_pending_tasks();
            store
                .cache
                .iter()
                .map(|(k, v)| u64::from(weight(&k, &v)))
                .sum()
        };
        let ttl = Duration::from_secs(60);
        for round in 0..3 {
            for k in 0..300 {
                let key = format!("k{k}");
                let (small, large) = (vec![0; 400 + k], vec![0; 900 + k]);
                let (first, then) = if round % 2 == 0 {
                    (small, large)
                } else {
                    (large, small)
                };
                store.set(&key, first.into(), ttl).await.unwrap();
                store.cache.run_pending_tasks();
                store.set(&key, then.into(), ttl).await.unwrap();
                if k % 2 == 0 {
                    store.remove(&[key.as_str()]).await.unwrap();
                }
            }
            let held = held(&store);
            assert_eq!(store.cache.weighted_size(), held, "round {round}");
        }
    }

    /// A value lives by Tokio's clock: a test that pauses it keeps a short-lived value (a lease) while the wall
    /// clock runs past its TTL, and moka reclaims the memory only later.
    #[tokio::test(start_paused = true)]
    async fn values_live_by_tokios_clock_while_the_wall_clock_runs_on() {
        let store = MemoryStore::new(1 << 20);
        let ttl = Duration::from_millis(1);
        assert!(store.try_lease("lease", "t1", ttl).await.unwrap());
        store
            .set("key", Bytes::from_static(b"v"), ttl)
            .await
            .unwrap();
        // The machine is slow between two steps of a test: 20 ms pass by the wall, none by Tokio.
        std::thread::sleep(Duration::from_millis(20));
        store.cache.run_pending_tasks();
        assert_eq!(store.get("key").await.unwrap().as_deref(), Some(&b"v"[..]));
        assert!(
            store
                .set_if_leased("key", Bytes::from_static(b"w"), ttl, "lease", "t1")
                .await
                .unwrap(),
            "the lease still holds"
        );
        tokio::time::advance(ttl).await;
        assert_eq!(
            store.get("key").await.unwrap(),
            None,
            "expired by Tokio's clock"
        );
        assert!(
            store.try_lease("lease", "t2", ttl).await.unwrap(),
            "free again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tag_members_expire_by_their_longest_lifetime() {
        let store = MemoryStore::new(1 << 20);
        let long = Duration::from_secs(60);
        store
            .tag("t", "a", Duration::from_secs(1), ANY)
            .await
            .unwrap();
        store.tag("t", "b", long, ANY).await.unwrap();
        // A shorter lifetime later does not shorten a member's.
        store
            .tag("t", "b", Duration::from_secs(1), ANY)
            .await
            .unwrap();
        store.tag("u", "a", long, ANY).await.unwrap();
        assert_eq!(members(&store, "t").await, ["a", "b"]);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(members(&store, "t").await, ["b"]);
        assert_eq!(members(&store, "u").await, ["a"]);
        assert!(members(&store, "none").await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn tag_members_are_bounded_and_expired_ones_are_swept() {
        // The smallest bound: 1024 members, each of an entry the store holds (256 entries, in four tags each).
        let store = MemoryStore::new(256 << 10);
        let life = Duration::from_secs(1);
        for n in 0..256 {
            let key = format!("k{n}");
            store
                .set(&key, Bytes::from_static(b"v"), life)
                .await
                .unwrap();
            for tag in ["t", "t1", "t2", "t3"] {
                store.tag(tag, &key, life, ANY).await.unwrap();
            }
        }
        // Refused, not failed: the circuit breaker does not count it, so the store's hits go on.
        assert!(
            matches!(
                store.tag("t", "over", life, ANY).await,
                Err(StoreError::Refused(_))
            ),
            "full: refused"
        );
        store.tag("t", "k7", life, ANY).await.unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        // The sweep makes room again.
        store.tag("t", "over", life, ANY).await.unwrap();
        assert_eq!(members(&store, "t").await, ["over"]);
        assert_eq!(store.lock_tags().members, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_mark_refuses_members_read_before_it_for_a_day() {
        let store = MemoryStore::new(1 << 20);
        let life = Duration::from_secs(60);
        let before = store.tag_clock("c", false).await.unwrap();
        let at = store.tag_clock("c", true).await.unwrap();
        let after = store.tag_clock("c", false).await.unwrap();
        assert!(before < at && at < after);
        store.mark_invalidated("t", at).await.unwrap();
        store.mark_invalidated("t", before).await.unwrap();
        assert!(!store.tag("t", "a", life, before).await.unwrap());
        assert!(!store.tag("t", "a", life, at).await.unwrap());
        assert!(store.tag("t", "b", life, after).await.unwrap());
        assert!(
            store.tag("u", "a", life, before).await.unwrap(),
            "another tag"
        );
        tokio::time::advance(MARK_FOR).await;
        assert!(
            store.tag("t", "a", life, before).await.unwrap(),
            "the mark expired"
        );
        assert_eq!(members(&store, "t").await, ["a"], "b expired meanwhile");
    }

    #[tokio::test]
    async fn removing_or_purging_drops_tag_sets() {
        let store = MemoryStore::new(1 << 20);
        let life = Duration::from_secs(60);
        store
            .tag("ns:v1:tag:{1}", "ns:v1:{a}", life, ANY)
            .await
            .unwrap();
        store
            .tag("ns:v1:tag:{2}", "ns:v1:{a}", life, ANY)
            .await
            .unwrap();
        store
            .tag("other:v1:tag:{3}", "other:v1:{a}", life, ANY)
            .await
            .unwrap();
        assert_eq!(store.remove(&["ns:v1:tag:{1}"]).await.unwrap(), 1);
        assert!(members(&store, "ns:v1:tag:{1}").await.is_empty());
        assert_eq!(store.purge_prefix("ns:v1:").await.unwrap(), 1);
        assert!(members(&store, "ns:v1:tag:{2}").await.is_empty());
        assert_eq!(members(&store, "other:v1:tag:{3}").await, ["other:v1:{a}"]);
    }

    #[tokio::test]
    async fn a_write_that_lets_the_lease_go_is_the_holders_alone() {
        let store = MemoryStore::new(1 << 20);
        let ttl = Duration::from_secs(60);
        assert!(store.try_lease("k:lease", "holder", ttl).await.unwrap());
        let late = Bytes::from_static(b"late");
        let written = store.set_if_leased_and_release("k", late, ttl, "k:lease", "other");
        assert!(!written.await.unwrap());
        assert_eq!(store.get("k").await.unwrap(), None);
        assert_eq!(store.get("k:lease").await.unwrap().unwrap(), "holder");
        let answer = Bytes::from_static(b"answer");
        let written = store.set_if_leased_and_release("k", answer, ttl, "k:lease", "holder");
        assert!(written.await.unwrap());
        assert_eq!(store.get("k").await.unwrap().unwrap(), "answer");
        assert_eq!(
            store.get("k:lease").await.unwrap(),
            None,
            "the lease went with it"
        );
    }

    /// A store smaller than its tag table's worth of entries evicts entries whose members would otherwise hold
    /// their places until they expire, and refuse every new fill's tags: they make room instead, and the members
    /// of entries still there, or still being filled, stay.
    #[tokio::test]
    async fn members_of_evicted_entries_make_room_for_new_fills() {
        // 256 KiB: 1,024 members at the most, about 230 entries of 600 bytes (each weighs about 0.5 KiB more).
        let store = MemoryStore::new(256 << 10);
        let life = Duration::from_secs(3600);
        let value = Bytes::from(vec![b'x'; 600]);
        // A fill that recorded its tag and still waits on the origin, near the end (a lease lives as long as an
        // origin call; an older one would be evicted like any entry, and then its fill stores nothing).
        let filling = "ns:v1:{filling}";
        for i in 0..5000 {
            if i == 4750 {
                assert!(
                    store
                        .try_lease(&lease_key_of(filling), "t", life)
                        .await
                        .unwrap()
                );
                store
                    .tag("ns:v1:tag:{q}", filling, life, ANY)
                    .await
                    .unwrap();
            }
            let key = format!("ns:v1:{{{i}}}");
            let lease = lease_key_of(&key);
            assert!(store.try_lease(&lease, "t", life).await.unwrap());
            let recorded = store.tag("ns:v1:tag:{q}", &key, life, ANY).await;
            assert!(matches!(recorded, Ok(true)), "fill {i}: {recorded:?}");
            // moka may evict the fresh lease itself to admit nothing new (its admission is by frequency, and
            // this store is small): then the write finds no lease and stores nothing, as a real fill would.
            store
                .set_if_leased_and_release(&key, value.clone(), life, &lease, "t")
                .await
                .unwrap();
        }
        // A sweep ran after the filling fill recorded its tag.
        assert!(store.lock_tags().since_dead_sweep < 250);
        let members = members(&store, "ns:v1:tag:{q}").await;
        assert!(members.len() <= 1024, "{}", members.len());
        // The members of a fill still waiting on its lease, and of the last entry, stay while those are there
        // (nearly always: only moka's admission can have taken them).
        for kept in [filling, "ns:v1:{4999}"] {
            if store.cache.contains_key(kept) || store.cache.contains_key(&lease_key_of(kept)) {
                assert!(members.iter().any(|m| m == kept), "{kept}");
            }
        }
        // Every entry still stored is still found through its tag.
        let stored = (0..5000)
            .map(|i| format!("ns:v1:{{{i}}}"))
            .filter(|key| store.cache.contains_key(key));
        for key in stored {
            assert!(members.contains(&key), "{key}");
        }
    }
}
