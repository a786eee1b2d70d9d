//! The near cache: fresh entries kept in the process, in front of the store, and dropped the moment the store
//! says their key changed.
//!
//! Coherence comes from the store (for Redis, server-assisted client-side caching: a tracking connection in
//! broadcast mode pushes an invalidation for every change to a key under the namespace). This module is the
//! store-agnostic half: it answers only while the tracking side vouches for it, and every doubt empties it.
//!
//! - **Liveness**: the tracking side calls [`Near::arm`] once tracking is on and [`Near::pong`] after every
//!   successful probe; the near cache answers only within [`LIVENESS`] of the last one, so a process cut off
//!   from Redis stops answering from memory within about a second. On a Cluster that lost a primary, tracking
//!   can be on at the others only: it calls [`Near::arm_partly`] with the hash slots each of those serves, and
//!   [`Near::pong_primary`] after each one's probe, and the near cache answers the keys of those slots alone,
//!   each within [`LIVENESS`] of its own primary's last probe.
//! - **Flushes**: connection loss, reconnects, a lagging invalidation channel, a topology change or a server
//!   flush bump the *epoch* and empty the cache; nothing filled under an older epoch answers.
//! - **The fill race**: a read from the store installs a placeholder with a unique token first; an invalidation
//!   removes it; the value read is kept only if the same placeholder is still there when it arrives (looked at
//!   and replaced under the key's lock, which invalidations take too). So an invalidation that lands while the
//!   read is in flight always wins.
//! - **Bounds**: memory by bytes (moka, weighed by entry size); an entry lives at most until its freshness ends
//!   and at most the configured maximum.
//! - **Leases**: a lease this process holds for an origin call can be watched ([`Near::watch_lease`]): a push
//!   for it wakes the holder, which reads whether it still holds it (its own renewals push too), so a write in
//!   another process that removed it is noticed at once rather than at the next renewal.
//! - **Fronts**: each thread answers its hot keys from a [`Front`] of its 8 latest entries, valid only while
//!   nothing in the near cache changed since each was read (a change count, bumped after every change), so
//!   a front never outlives an invalidation; its copies are the one memory beyond the bound.

use super::clock::Clock;
use super::engine::CACHE_STATUS;
use super::entry::Entry;
use super::heads::{Rendered, Renders};
use super::key::{LEASE_SUFFIX, MARK_SUFFIX, hex_of, parse_key};
use super::stats::{Counters, add, bump};
use super::status::CACHE_NAME;
use crate::atomic::AtomicU64;
use bytes::BytesMut;
use futures_util::future::BoxFuture;
use http::header::AGE;
use http::{HeaderMap, HeaderValue};
use moka::sync::Cache;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

/// How long after the last successful probe the near cache still answers.
pub(crate) const LIVENESS: Duration = Duration::from_secs(1);

/// How long a placeholder may wait for its read before it is reclaimed (the read has a store timeout far
/// below this; the bound only stops a lost placeholder from taking memory for good).
const PLACEHOLDER_TTL: Duration = Duration::from_secs(10);

/// What a slot costs the near cache beside what it holds: moka's bookkeeping for it (its entry, hash table
/// slot, queue and timer nodes) and its key. Measured on x86_64 (heap bytes of 100,000 slots): about 320 bytes.
/// A placeholder weighs this alone.
const SLOT_OVERHEAD: usize = 320;

/// What an entry costs beside its slot, its headers and its bytes: the `Arc<Entry>` (about 170 bytes), its
/// header map's fixed part and the handle its body and header values share, with the allocator's own cost.
const ENTRY_OVERHEAD: usize = 288;

/// What each header of an entry's map costs beside its bytes: its bucket (104 bytes on x86_64).
const HEADER_BUCKET: usize = 104;

/// What each slot of an entry's header map's index table costs, used or not (4 bytes, at 3 slots usable of 4).
const HEADER_INDEX: usize = 6;

/// The tracking side of a store: runs for as long as the near cache it feeds is alive.
pub(crate) trait Tracking: Send + Sync + 'static {
    /// Tracks every key under `prefix` and reports to `near` until `near` is dropped.
    fn run(&self, prefix: String, near: std::sync::Weak<Near>) -> BoxFuture<'static, ()>;
}

/// Why the near cache was emptied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushCause {
    /// The store was flushed (`FLUSHALL`, `FLUSHDB`).
    Server,
    /// The tracking connection was lost, reconnected, lagged, missed a probe, or the topology changed.
    Connection,
    /// This process purged its namespace.
    Local,
}

#[derive(Clone)]
enum Slot {
    /// A read from the store is in flight; `token` identifies it.
    Filling { token: u64 },
    /// A fresh entry, answerable until `until` (unix ms) while the near cache's epoch is `epoch`.
    Ready {
        entry: Arc<Entry>,
        until: u64,
        epoch: u64,
        weight: u32,
    },
}

impl Slot {
    /// What the slot costs the near cache.
    fn weight(&self) -> u32 {
        match self {
            Slot::Filling { .. } => SLOT_OVERHEAD as u32,
            Slot::Ready { weight, .. } => *weight,
        }
    }
}

/// A read from the store that may fill the near cache, if nothing changed the key meanwhile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fill {
    token: u64,
    epoch: u64,
}

/// The in-process cache of fresh entries, kept coherent by a store's invalidations.
pub(crate) struct Near {
    cache: Cache<NearKey, Slot, DigestKeys>,
    max_ttl_ms: u64,
    epoch: AtomicU64,
    tokens: AtomicU64,
    /// Unix ms until which the near cache may answer; 0 while tracking is not confirmed.
    live_until: AtomicU64,
    /// While tracking is on at some of a Cluster's primaries only, the slots it answers ([`Near::arm_partly`]).
    partly: RwLock<Option<Arc<Partly>>>,
    /// Whether `partly` holds any: read before its lock, on a look-up while the near cache is not live.
    partly_armed: AtomicBool,
    started: AtomicBool,
    /// The key prefix tracking covers (`<namespace>:v1:`).
    prefix: String,
    tracking: Arc<dyn Tracking>,
    counters: Arc<Counters>,
    clock: Arc<Clock>,
    /// Woken whenever keys were dropped: a process waiting for another's fill looks again.
    changed: tokio::sync::Notify,
    /// Counts changes to the cache's contents (removals, invalidations, fills, flushes), each counted after it
    /// is made: a thread's [`Front`] holds an entry only while this is what it was before the entry was read.
    changes: AtomicU64,
    /// Tells this near cache's entries in a thread's [`Front`] from another's.
    id: u64,
    /// The heaviest entry a [`Front`] holds (a front's entries may outlive their eviction from the cache).
    front_max_weight: u32,
    /// The leases this process's origin calls hold, by key, with what wakes each holder ([`Near::watch_lease`]).
    leases: Mutex<HashMap<String, Vec<Arc<Notify>>>>,
    /// How many leases are watched: a push takes the lock only while some are.
    watched: AtomicUsize,
    /// Counts pushes of tag marks (a removal of a tag, in any process) and flushes (pushes may have been lost).
    marks: AtomicU64,
    /// Locks of keys' changes, by the digest's last byte (see [`Near::lock`]); never held on a hit.
    locks: [Mutex<()>; KEY_LOCKS],
}

/// How many locks the keys' changes share.
const KEY_LOCKS: usize = 64;

impl std::fmt::Debug for Near {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Near")
            .field("max_ttl_ms", &self.max_ttl_ms)
            .field("epoch", &self.epoch)
            .field("live_until", &self.live_until)
            .finish_non_exhaustive()
    }
}

/// A watched lease ([`Near::watch_lease`]); dropping it stops the watch.
pub(crate) struct LeaseWatch<'a> {
    near: &'a Near,
    key: String,
    notify: Arc<Notify>,
}

impl LeaseWatch<'_> {
    /// Completes at the next push for the lease or flush since the last call (one wake-up is kept while the
    /// holder is not waiting).
    pub(crate) async fn pushed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for LeaseWatch<'_> {
    fn drop(&mut self) {
        let mut leases = self
            .near
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(watches) = leases.get_mut(&self.key) {
            watches.retain(|notify| !Arc::ptr_eq(notify, &self.notify));
            if watches.is_empty() {
                leases.remove(&self.key);
            }
        }
        self.near.watched.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A near-cache key: the request's digest. Every entry of one near cache shares the namespace, so the digest
/// alone tells them apart, and a hit needs no key string.
#[derive(Clone, Copy, PartialEq, Eq)]
struct NearKey([u8; 32]);

impl std::hash::Hash for NearKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // SHA-256 output is uniform: eight of its bytes are as good a hash as all 32 (equality still compares
        // all of them).
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(word));
    }
}

/// Hashes [`NearKey`]s: their first eight bytes, mixed with a seed drawn when the near cache is built. The
/// seed is there because a client can choose requests whose digests share some bits (by trying many), and
/// without it could pile them into one of moka's buckets; with it, which bits matter is unknown to anyone.
#[derive(Debug, Clone, Copy)]
struct DigestKeys {
    seed: u64,
}

impl DigestKeys {
    fn new() -> Self {
        use std::hash::{BuildHasher, RandomState};
        DigestKeys {
            seed: RandomState::new().hash_one(0x6e65_6172_u64),
        }
    }
}

impl std::hash::BuildHasher for DigestKeys {
    type Hasher = DigestKeyHasher;

    fn build_hasher(&self) -> DigestKeyHasher {
        DigestKeyHasher(self.seed)
    }
}

/// The hasher of [`DigestKeys`]: SplitMix64's finalizer over the seeded word (three folds, two multiplies),
/// so that every bit of the word reaches every bit of the hash. (One multiply and fold is not enough: a
/// multiply carries only upward, so words agreeing on their low 38 bits agreed on the hash's low six whatever
/// the seed.)
struct DigestKeyHasher(u64);

impl DigestKeyHasher {
    fn mix(&mut self, word: u64) {
        let mut h = self.0 ^ word;
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        self.0 = h ^ (h >> 31);
    }
}

impl std::hash::Hasher for DigestKeyHasher {
    fn write_u64(&mut self, word: u64) {
        self.mix(word);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached by `NearKey`; correct for anything else.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Tells near caches apart in the threads' [`Front`]s.
static NEAR_IDS: AtomicU64 = AtomicU64::new(0);

/// Slots of a thread's [`Front`].
const FRONT_SLOTS: usize = 8;

/// The heaviest entry a [`Front`] holds, whatever the near cache's size.
const FRONT_MAX_WEIGHT: u64 = 128 * 1024;

/// A thread's front of the near caches: the entries it answered from most recently, so that a hot key's
/// hits skip the cache's look-up and its read log (shared by every core). A slot answers only while its near
/// cache's change count is what it was before the entry was read from the cache, so any removal,
/// invalidation, fill or flush since (of any key) sends the next read back to the cache.
///
/// A slot holds its own copy of the entry (see [`own_copy`]), and may hold it after the cache evicted the
/// entry for lack of room (it is still coherent). So each thread holds up to [`FRONT_SLOTS`] entries outside
/// the cache's bound; entries heavier than a 64th of the bound, or than 128 KiB, are never taken, which keeps
/// that under an eighth of the bound and 1 MiB a thread.
struct Front {
    slots: [Option<FrontSlot>; FRONT_SLOTS],
    /// The slot the next entry takes (round robin).
    next: usize,
}

struct FrontSlot {
    near: u64,
    key: [u8; 32],
    /// The near cache's change count before the entry was read.
    changes: u64,
    epoch: u64,
    until: u64,
    entry: Arc<Entry>,
    /// The values of this thread's latest answer from the slot.
    rendered: Option<Rendered>,
}

impl Front {
    fn find(&mut self, near: u64, key: &[u8; 32], changes: u64) -> Option<&mut FrontSlot> {
        self.slots
            .iter_mut()
            .flatten()
            .find(|slot| slot.near == near && slot.changes == changes && slot.key == *key)
    }

    fn keep(&mut self, slot: FrontSlot) {
        let index = self
            .slots
            .iter()
            .position(|s| {
                s.as_ref()
                    .is_some_and(|s| s.near == slot.near && s.key == slot.key)
            })
            .unwrap_or_else(|| {
                let index = self.next % FRONT_SLOTS;
                self.next = self.next.wrapping_add(1);
                index
            });
        self.slots[index] = Some(slot);
    }
}

/// A copy of `entry` whose body and header values are buffers of their own. A front's answers clone them on
/// every hit; shared with the cache's entry (slices of one buffer read from the store), every core's clones
/// would count on one reference count.
fn own_copy(entry: &Entry) -> Entry {
    let mut copy = entry.clone();
    for value in copy.headers.values_mut() {
        let sensitive = value.is_sensitive();
        if let Ok(mut owned) = HeaderValue::from_bytes(value.as_bytes()) {
            owned.set_sensitive(sensitive);
            *value = owned;
        }
    }
    copy.body = bytes::Bytes::copy_from_slice(&entry.body);
    copy
}

thread_local! {
    static FRONT: RefCell<Front> = const {
        RefCell::new(Front {
            slots: [const { None }; FRONT_SLOTS],
            next: 0,
        })
    };
}

/// When moka reclaims a slot. An entry's lifetime is checked against the cache's clock on every read; moka's
/// timer (the wall clock) only frees the memory, so it may run a little past it.
struct Lifetime {
    ready: Duration,
}

impl moka::Expiry<NearKey, Slot> for Lifetime {
    fn expire_after_create(
        &self,
        _key: &NearKey,
        value: &Slot,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(match value {
            Slot::Filling { .. } => PLACEHOLDER_TTL,
            Slot::Ready { .. } => self.ready,
        })
    }

    fn expire_after_update(
        &self,
        key: &NearKey,
        value: &Slot,
        now: std::time::Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, now)
    }
}

impl Near {
    pub(crate) fn new(
        prefix: String,
        max_bytes: u64,
        max_ttl: Duration,
        tracking: Arc<dyn Tracking>,
        counters: Arc<Counters>,
        clock: Arc<Clock>,
    ) -> Self {
        // Every slot keeps its weight for as long as it lives: a change is a removal and an insert (see
        // `Near::put`).
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &NearKey, slot: &Slot| slot.weight())
            .expire_after(Lifetime {
                ready: max_ttl.saturating_add(Duration::from_secs(1)),
            })
            .build_with_hasher(DigestKeys::new());
        Near {
            cache,
            max_ttl_ms: u64::try_from(max_ttl.as_millis()).unwrap_or(u64::MAX),
            epoch: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            live_until: AtomicU64::new(0),
            partly: RwLock::new(None),
            partly_armed: AtomicBool::new(false),
            started: AtomicBool::new(false),
            prefix,
            tracking,
            counters,
            clock,
            changed: tokio::sync::Notify::new(),
            changes: AtomicU64::new(0),
            id: NEAR_IDS.fetch_add(1, Ordering::Relaxed),
            front_max_weight: u32::try_from((max_bytes / 64).min(FRONT_MAX_WEIGHT)).unwrap_or(0),
            marks: AtomicU64::new(0),
            leases: Mutex::new(HashMap::new()),
            watched: AtomicUsize::new(0),
            locks: std::array::from_fn(|_| Mutex::new(())),
        }
    }

    /// Watches the lease at `key` (a store key ending in `:lease`) while the returned guard lives: every push
    /// for it, and every flush (which may have lost pushes), wakes [`LeaseWatch::pushed`].
    pub(crate) fn watch_lease(&self, key: &str) -> LeaseWatch<'_> {
        let notify = Arc::new(Notify::new());
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.to_owned())
            .or_default()
            .push(notify.clone());
        self.watched.fetch_add(1, Ordering::AcqRel);
        LeaseWatch {
            near: self,
            key: key.to_owned(),
            notify,
        }
    }

    /// Wakes the holders of the watched lease at `key`, if any; with `None`, of every watched lease.
    fn wake_leases(&self, key: Option<&str>) {
        if self.watched.load(Ordering::Acquire) == 0 {
            return;
        }
        let leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        let woken = match key {
            Some(key) => leases.get(key).into_iter().flatten().collect::<Vec<_>>(),
            None => leases.values().flatten().collect(),
        };
        // A holder busy elsewhere keeps the wake-up for its next wait.
        woken.into_iter().for_each(|notify| notify.notify_one());
    }

    /// Counts a change to the cache's contents, once it is made.
    fn changed_contents(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// Completes at the next push for an entry or a lease, or flush (call `enable` before looking, so none is
    /// missed).
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Starts the tracking task the first time a request passes (a runtime is there then). It ends once the
    /// near cache is dropped.
    pub(crate) fn start(self: &Arc<Self>) {
        if self.started.load(Ordering::Relaxed) || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(self.tracking.run(self.prefix.clone(), Arc::downgrade(self)));
    }

    fn live(&self, now: u64) -> bool {
        now < self.live_until.load(Ordering::Acquire)
    }

    /// Whether the near cache may answer for `key` at `now`: it is live, or tracking is on at the primary that
    /// serves the key's slot ([`Near::arm_partly`]) and it answered a probe within [`LIVENESS`].
    fn live_for(&self, key: &[u8; 32], now: u64) -> bool {
        self.live(now) || (self.partly_armed.load(Ordering::Acquire) && self.partly_live(key, now))
    }

    #[cold]
    fn partly_live(&self, key: &[u8; 32], now: u64) -> bool {
        let partly = self.partly.read().unwrap_or_else(PoisonError::into_inner);
        partly.as_ref().is_some_and(|partly| partly.live(key, now))
    }

    /// Whether the near cache may answer now.
    pub(crate) fn answering(&self) -> bool {
        self.live(self.clock.now_ms())
    }

    /// Calls `answer` with the fresh entry for the request whose digest is `key`, if the near cache may
    /// answer at `now`, and returns what it returns. The entry's headers hold the two every answer sets
    /// (`Age`, `Cache-Status`), with placeholder values: a clone has room for them.
    ///
    /// The entry comes from this thread's [`Front`] when it holds it unchanged, else from the cache (and then
    /// goes into the front).
    pub(crate) fn with_entry<T>(
        &self,
        key: &[u8; 32],
        now: u64,
        answer: impl FnOnce(&Entry, Renders<'_>) -> Option<T>,
    ) -> Option<T> {
        if !self.live_for(key, now) {
            return None;
        }
        // Read before the cache, so that a change made after this read is seen by the next one.
        let changes = self.changes.load(Ordering::Acquire);
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut answer = Some(answer);
        let from_front = FRONT.try_with(|front| {
            let mut front = front.try_borrow_mut().ok()?;
            let slot = front.find(self.id, key, changes)?;
            if now < slot.until && slot.epoch == epoch {
                let renders = Renders::of(&mut slot.rendered);
                answer
                    .take()
                    .and_then(|answer| answer(&slot.entry, renders))
            } else {
                None
            }
        });
        if let Ok(Some(answered)) = from_front {
            return Some(answered);
        }
        let answer = answer?;
        match self.cache.get(&NearKey(*key))? {
            Slot::Ready {
                entry,
                until,
                epoch: filled,
                weight,
            } if now < until && filled == epoch => {
                if weight <= self.front_max_weight {
                    let _ = FRONT.try_with(|front| {
                        if let Ok(mut front) = front.try_borrow_mut() {
                            front.keep(FrontSlot {
                                near: self.id,
                                key: *key,
                                changes,
                                epoch,
                                until,
                                entry: Arc::new(own_copy(&entry)),
                                rendered: None,
                            });
                        }
                    });
                }
                answer(&entry, Renders::none())
            }
            _ => None,
        }
    }

    /// What the near cache holds, in bytes as its bound counts them, and in entries (placeholders included).
    /// moka counts both as its housekeeping applies the changes made since it last ran: this runs it first (an
    /// eviction it makes is one the next write would have made).
    pub(crate) fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.weighted_size(), self.cache.entry_count())
    }

    /// Installs a placeholder for a read of `key` from the store; `None` while the near cache may not answer.
    pub(crate) fn begin_fill(&self, key: &[u8; 32], now: u64) -> Option<Fill> {
        if !self.live_for(key, now) {
            return None;
        }
        let fill = Fill {
            token: self.tokens.fetch_add(1, Ordering::Relaxed),
            epoch: self.epoch.load(Ordering::Acquire),
        };
        {
            let _key = self.lock(key);
            self.put(key, Slot::Filling { token: fill.token });
        }
        self.changed_contents();
        Some(fill)
    }

    /// Keeps `entry` for `key` if `fill`'s placeholder is still there (nothing invalidated the key meanwhile)
    /// and the near cache is still in the same epoch; otherwise discards it.
    pub(crate) fn complete_fill(&self, key: &[u8; 32], fill: Fill, entry: &Entry, now: u64) {
        let until = entry.fresh_until.min(now.saturating_add(self.max_ttl_ms));
        if until <= now {
            self.abandon_fill(key, fill);
            return;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let Some(mut entry) = detached(entry) else {
            self.abandon_fill(key, fill);
            return;
        };
        reserve_answer_headers(&mut entry.headers);
        let weight = entry_weight(&entry);
        let entry = Arc::new(entry);
        let filled = {
            let _key = self.lock(key);
            let placed = self.holds_placeholder(key, fill) && fill.epoch == epoch;
            if placed {
                let ready = Slot::Ready {
                    entry,
                    until,
                    epoch,
                    weight,
                };
                self.put(key, ready);
            }
            placed
        };
        if filled {
            self.changed_contents();
            bump(&self.counters.near_fills);
        } else {
            bump(&self.counters.near_fills_discarded);
        }
    }

    /// Removes `fill`'s placeholder, if it is still there (the read found nothing to keep).
    pub(crate) fn abandon_fill(&self, key: &[u8; 32], fill: Fill) {
        let _key = self.lock(key);
        if self.holds_placeholder(key, fill) {
            self.cache.invalidate(&NearKey(*key));
        }
    }

    /// Whether the slot of `key` is `fill`'s placeholder (call with the key's lock held).
    fn holds_placeholder(&self, key: &[u8; 32], fill: Fill) -> bool {
        matches!(self.cache.get(&NearKey(*key)), Some(Slot::Filling { token }) if token == fill.token)
    }

    /// Sets the slot of `key` to `slot` (call with the key's lock held), as a new slot: the old one is removed
    /// first. moka keeps the cache's weight right only for slots whose weight never changes: one replaced in
    /// place by a slot of another weight (a placeholder by its entry) and removed before moka's housekeeping ran
    /// is taken off at its new weight with its change never added, and the cache's weight drifts (measured: in a
    /// test, to nothing, so that the bound no longer held; under load, a working set half the bound was evicted
    /// about as fast as it was filled).
    fn put(&self, key: &[u8; 32], slot: Slot) {
        self.cache.invalidate(&NearKey(*key));
        self.cache.insert(NearKey(*key), slot);
    }

    /// The lock of `key`'s changes: held from the look at its placeholder to the entry's insert, and by every
    /// removal, so that an invalidation never lands between the two (and is then undone by the insert).
    fn lock(&self, key: &[u8; 32]) -> std::sync::MutexGuard<'_, ()> {
        self.locks[usize::from(key[31]) % KEY_LOCKS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the entry of the request whose digest is `key` (this process wrote or removed it).
    pub(crate) fn remove(&self, key: &[u8; 32]) {
        {
            let _key = self.lock(key);
            self.cache.invalidate(&NearKey(*key));
        }
        self.changed_contents();
    }

    /// Drops the keys the store says changed (store keys, `<namespace>:v1:{<digest>}`; any other key under
    /// the prefix, such as a lease, holds no entry and is not counted).
    pub(crate) fn invalidate<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let (mut count, mut leases) = (0, false);
        for key in keys {
            if let Some(digest) = parse_key(&self.prefix, key) {
                let _key = self.lock(&digest);
                self.cache.invalidate(&NearKey(digest));
                count += 1;
            } else if key.ends_with(LEASE_SUFFIX) {
                self.wake_leases(Some(key));
                leases = true;
            } else if key.ends_with(MARK_SUFFIX) {
                self.marks.fetch_add(1, Ordering::AcqRel);
            }
        }
        if count > 0 {
            // Only entries change what a thread's front may answer: a lease's push leaves the fronts alone.
            self.changed_contents();
            // Counted once the keys can no longer answer: whoever reads the count then finds them gone.
            add(&self.counters.near_invalidations, count);
        }
        // Fleet waits watch entries and leases; a push for anything else (a tag's set or mark, the tag clock)
        // would only make each of them read the store once more for nothing.
        if count > 0 || leases {
            self.changed.notify_waiters();
        }
    }

    /// Empties the near cache: nothing filled before answers again.
    pub(crate) fn flush(&self, cause: FlushCause) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
        self.changed_contents();
        bump(match cause {
            FlushCause::Server => &self.counters.near_flushes_server,
            FlushCause::Connection => &self.counters.near_flushes_connection,
            FlushCause::Local => &self.counters.near_flushes_local,
        });
        tracing::debug!(?cause, "near cache flushed");
        self.changed.notify_waiters();
        // Pushes may have been lost: every watched lease is looked at again, and a tag may have been marked.
        self.wake_leases(None);
        self.marks.fetch_add(1, Ordering::AcqRel);
    }

    /// How many tag marks (and flushes) this near cache has heard of: when it moved, a tag was removed
    /// somewhere, and a call in flight here may answer with it.
    pub(crate) fn marks(&self) -> u64 {
        self.marks.load(Ordering::Acquire)
    }

    /// Tracking is (again) on: start answering from a clean slate.
    pub(crate) fn arm(&self) {
        self.flush(FlushCause::Connection);
        self.pong();
    }

    /// A probe of the tracking connection succeeded just now.
    pub(crate) fn pong(&self) {
        let until = self
            .clock
            .now_ms()
            .saturating_add(LIVENESS.as_millis() as u64);
        self.live_until.store(until, Ordering::Release);
    }

    /// Tracking is (again) on at some of a Cluster's primaries only, the others out of reach: start answering the
    /// keys of the slots those serve, from a clean slate. `owners` gives each of the 16,384 hash slots the index
    /// of its primary among `primaries` (those tracking is on at), or `None`; each primary answers once
    /// [`pong_primary`](Self::pong_primary) says its probe succeeded.
    pub(crate) fn arm_partly(&self, owners: Vec<Option<u16>>, primaries: usize) -> Arc<Partly> {
        let partly = Arc::new(Partly {
            owners,
            live_until: (0..primaries).map(|_| AtomicU64::new(0)).collect(),
        });
        // Installed before the flush: a fill begun earlier belongs to the epoch the flush ends.
        *self.partly.write().unwrap_or_else(PoisonError::into_inner) = Some(partly.clone());
        self.partly_armed.store(true, Ordering::Release);
        self.flush(FlushCause::Connection);
        partly
    }

    /// The probe of primary `index` of `partly` (see [`arm_partly`](Self::arm_partly)) succeeded just now.
    pub(crate) fn pong_primary(&self, partly: &Partly, index: usize) {
        if let Some(live_until) = partly.live_until.get(index) {
            let until = self
                .clock
                .now_ms()
                .saturating_add(LIVENESS.as_millis() as u64);
            live_until.store(until, Ordering::Release);
        }
    }

    /// Tracking is off or in doubt: stop answering and forget everything.
    pub(crate) fn disarm(&self) {
        let partly = self.partly_armed.swap(false, Ordering::AcqRel)
            && self
                .partly
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .is_some();
        if self.live_until.swap(0, Ordering::AcqRel) != 0 || partly {
            self.flush(FlushCause::Connection);
        }
    }
}

/// Where tracking is on while it is on at some of a Cluster's primaries only ([`Near::arm_partly`]).
pub(crate) struct Partly {
    /// For each hash slot, the index of its primary in `live_until`, if tracking is on there.
    owners: Vec<Option<u16>>,
    /// For each primary tracking is on at, the unix ms until which its slots' keys may be answered.
    live_until: Box<[AtomicU64]>,
}

impl Partly {
    /// Whether the key of the digest `key` is in a slot whose primary answered a probe within [`LIVENESS`].
    fn live(&self, key: &[u8; 32], now: u64) -> bool {
        self.owners
            .get(usize::from(hash_slot(key)))
            .copied()
            .flatten()
            .and_then(|index| self.live_until.get(usize::from(index)))
            .is_some_and(|until| now < until.load(Ordering::Acquire))
    }
}

/// The Cluster hash slot of the store key of the digest `key`: its hash tag is the digest in lowercase hex
/// (see [`parse_key`]).
pub(crate) fn hash_slot(key: &[u8; 32]) -> u16 {
    fred::util::redis_keyslot(&hex_of(key))
}

/// `entry` in memory of its own: its header values and body copied into one buffer, of exactly their length.
///
/// What the store read is a view into its client's read buffer (fred's replies are slices of the connection's
/// buffer, several replies to one allocation of 8 KiB or more), which would stay whole for as long as the near
/// cache keeps any slice of it: measured, one reply of 300 bytes kept in 30 held 8 KiB, 27 times its size.
/// `None` only if the map cannot take the headers or a value copied no longer parses (neither can happen short of
/// a map at `http`'s limit of names: they are the names and bytes of a map that held them).
fn detached(entry: &Entry) -> Option<Entry> {
    let len = entry
        .headers
        .values()
        .map(HeaderValue::len)
        .fold(entry.body.len(), usize::saturating_add);
    let mut buffer = BytesMut::with_capacity(len);
    for value in entry.headers.values() {
        buffer.extend_from_slice(value.as_bytes());
    }
    buffer.extend_from_slice(&entry.body);
    let buffer = buffer.freeze();
    // Room for each name (a name's further values are held apart), the answer's two headers and the spare slot
    // (`reserve_answer_headers`): sized by values, a map of one name repeated could not be made.
    let mut headers = HeaderMap::try_with_capacity(entry.headers.keys_len() + 3).ok()?;
    let mut at = 0;
    for (name, value) in &entry.headers {
        let end = at + value.len();
        let mut copy = HeaderValue::from_maybe_shared(buffer.slice(at..end)).ok()?;
        copy.set_sensitive(value.is_sensitive());
        headers.try_append(name.clone(), copy).ok()?;
        at = end;
    }
    Some(Entry {
        stored_at: entry.stored_at,
        fresh_until: entry.fresh_until,
        stale_until: entry.stale_until,
        stale_if_error_until: entry.stale_if_error_until,
        vary: entry.vary,
        status: entry.status,
        headers,
        body: buffer.slice(at..),
    })
}

/// Makes room in a stored entry's `headers` for the two every answer sets, with placeholder values: a clone
/// of the map then takes them without growing.
fn reserve_answer_headers(headers: &mut HeaderMap) {
    headers.insert(AGE, HeaderValue::from_static("0"));
    headers.insert(CACHE_STATUS, HeaderValue::from_static(CACHE_NAME));
    // A map grows on any insert once it is full, even one that replaces a value: keep one slot spare. (Should
    // this fail, the answer merely allocates when it sets the two.)
    let _ = headers.try_reserve(1);
    // A clone keeps the index table, with its spare slot, but holds its headers in no more room than they take,
    // where the map grown by the inserts above may hold up to twice that (104 bytes a header).
    *headers = headers.clone();
}

/// What an entry costs the near cache, as it is kept ([`detached`], with the answer's headers in its map): its
/// slot, the entry, its header map's buckets and index table, and the bytes of its body and headers (16 more a
/// header, which cover a custom name's own allocation). Measured against the resident memory of 100,000
/// entries of 0 to 10 headers and bodies of 0 to 4 KiB: within 5 %.
fn entry_weight(entry: &Entry) -> u32 {
    let headers: usize = entry
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 16)
        .sum();
    let map = (entry.headers.len().saturating_mul(HEADER_BUCKET))
        .saturating_add(entry.headers.capacity().saturating_mul(HEADER_INDEX));
    u32::try_from(
        (SLOT_OVERHEAD + ENTRY_OVERHEAD)
            .saturating_add(map)
            .saturating_add(headers)
            .saturating_add(entry.body.len()),
    )
    .unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::hash::BuildHasher;

    /// Spreads 64,000 `keys` over 64 buckets by the hash's low six bits (where moka's shards and buckets look)
    /// and over 64 by its high six (where another table may look), asserting that no two hashes collide in full
    /// and that both spreads are as even as random numbers would give.
    fn assert_spread(keys: impl Iterator<Item = [u8; 32]>) {
        let hasher = DigestKeys::new();
        let mut low = [0u32; 64];
        let mut high = [0u32; 64];
        let mut seen = std::collections::HashSet::new();
        for key in keys {
            let hash = hasher.hash_one(NearKey(key));
            assert!(seen.insert(hash), "a full collision");
            low[(hash & 63) as usize] += 1;
            high[(hash >> 58) as usize] += 1;
        }
        assert_eq!(seen.len(), 64_000);
        // 1,000 expected in each, with a standard deviation of about 31: a uniform spread leaves this range
        // (over six of them) about once in ten million runs of the tests' 640 buckets.
        for count in low.iter().chain(&high) {
            assert!((800..1200).contains(count), "low {low:?}, high {high:?}");
        }
    }

    /// Tracking that never runs: the tests below arm the near cache themselves.
    struct Untracked;

    impl Tracking for Untracked {
        fn run(&self, _prefix: String, _near: std::sync::Weak<Near>) -> BoxFuture<'static, ()> {
            Box::pin(async {})
        }
    }

    fn near() -> Near {
        near_of(1 << 20)
    }

    fn near_of(bound: u64) -> Near {
        Near::new(
            "ns:v1:".to_owned(),
            bound,
            Duration::from_secs(60),
            Arc::new(Untracked),
            Arc::new(Counters::new("ns")),
            Arc::new(Clock::new()),
        )
    }

    /// An entry of `body`, stored at `now` and fresh for 30 s.
    fn entry_of(body: bytes::Bytes, now: u64) -> Entry {
        Entry {
            stored_at: now,
            fresh_until: now + 30_000,
            stale_until: now + 30_000,
            stale_if_error_until: now + 30_000,
            vary: None,
            status: http::StatusCode::OK,
            headers: HeaderMap::new(),
            body,
        }
    }

    fn fill(near: &Near, key: &[u8; 32], body: impl Into<bytes::Bytes>, now: u64) {
        let entry = entry_of(body.into(), now);
        let fill = near.begin_fill(key, now).expect("the near cache is armed");
        near.complete_fill(key, fill, &entry, now);
    }

    fn body(near: &Near, key: &[u8; 32], now: u64) -> Option<bytes::Bytes> {
        near.with_entry(key, now, |entry, _| Some(entry.body.clone()))
    }

    /// Armed at some of a Cluster's primaries only, the near cache fills and answers the keys of their slots, each
    /// while its primary's last probe is recent, and no other key; disarmed, none.
    #[test]
    fn armed_partly_it_answers_the_keys_of_the_primaries_it_hears_only() {
        let near = near();
        let keys: Vec<[u8; 32]> = (0u8..64).map(|i| Sha256::digest([i]).into()).collect();
        let owned = keys[0];
        let other = *keys
            .iter()
            .find(|key| hash_slot(key) != hash_slot(&owned))
            .unwrap();
        let mut owners = vec![None; 16_384];
        owners[usize::from(hash_slot(&owned))] = Some(0);
        let partly = near.arm_partly(owners, 1);
        let now = near.clock.now_ms();
        assert!(
            near.begin_fill(&owned, now).is_none(),
            "before its primary's first probe"
        );
        near.pong_primary(&partly, 0);
        let now = near.clock.now_ms();
        assert!(
            near.begin_fill(&other, now).is_none(),
            "a slot of no primary heard"
        );
        fill(&near, &owned, "owned", now);
        assert_eq!(body(&near, &owned, now).as_deref(), Some(&b"owned"[..]));
        assert!(!near.answering(), "not for every key");
        let later = now + LIVENESS.as_millis() as u64;
        assert_eq!(
            body(&near, &owned, later),
            None,
            "its primary's probe a second old"
        );
        near.disarm();
        assert_eq!(body(&near, &owned, now), None);
        assert!(near.begin_fill(&owned, now).is_none());
    }

    /// The slot of a digest is that of the store key it is kept under.
    #[test]
    fn a_digest_is_in_the_hash_slot_of_its_store_key() {
        for i in 0u8..=255 {
            let digest: [u8; 32] = Sha256::digest([i]).into();
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            let key = format!("ns:v1:{{{hex}}}");
            assert_eq!(parse_key("ns:v1:", &key), Some(digest));
            assert_eq!(
                hash_slot(&digest),
                fred::util::redis_keyslot(key.as_bytes())
            );
        }
    }

    /// A thread's front answers a key's repeated reads, and stops the moment anything changes the cache:
    /// this process's removal, the store's invalidation, a flush; each near cache answers its own entries.
    #[test]
    fn the_front_never_outlives_a_change() {
        let (a, b) = (near(), near());
        a.arm();
        b.arm();
        let now = a.clock.now_ms();
        let key = [7u8; 32];
        let key_name = format!("ns:v1:{{{}}}", "07".repeat(32));
        fill(&a, &key, "a", now);
        fill(&b, &key, "b", now);
        for _ in 0..3 {
            assert_eq!(body(&a, &key, now).as_deref(), Some(&b"a"[..]));
            assert_eq!(body(&b, &key, now).as_deref(), Some(&b"b"[..]));
        }
        a.remove(&key);
        assert_eq!(body(&a, &key, now), None, "removed");
        assert_eq!(body(&b, &key, now).as_deref(), Some(&b"b"[..]));
        fill(&a, &key, "a2", now);
        assert_eq!(body(&a, &key, now).as_deref(), Some(&b"a2"[..]), "refilled");
        assert_eq!(body(&a, &key, now).as_deref(), Some(&b"a2"[..]));
        let invalidations = a.counters.near_invalidations.get();
        a.invalidate([format!("{key_name}:lease").as_str(), "ns:v1:near-canary"]);
        assert_eq!(
            body(&a, &key, now).as_deref(),
            Some(&b"a2"[..]),
            "no entry's key"
        );
        assert_eq!(a.counters.near_invalidations.get(), invalidations);
        a.invalidate([key_name.as_str()]);
        assert_eq!(body(&a, &key, now), None, "invalidated");
        assert_eq!(a.counters.near_invalidations.get(), invalidations + 1);
        fill(&a, &key, "a3", now);
        assert_eq!(body(&a, &key, now).as_deref(), Some(&b"a3"[..]));
        a.flush(FlushCause::Server);
        assert_eq!(body(&a, &key, now), None, "flushed");
        assert_eq!(body(&b, &key, now + 30_000), None, "past its freshness");
    }

    /// What the near cache keeps is its own copy: none of its bytes lie in the buffer the store read them from
    /// (a client's read buffer, which many replies share), and the copy answers the same headers, in the same
    /// order, sensitive where they were, and the same body.
    #[test]
    fn it_keeps_its_own_copy_of_what_the_store_read() {
        let near = near();
        near.arm();
        let now = near.clock.now_ms();
        let read = bytes::Bytes::from(vec![b'v'; 64 * 1024]);
        let within = |bytes: &[u8]| read.as_ptr_range().contains(&bytes.as_ptr());
        let mut entry = entry_of(read.slice(100..400), now);
        let value = |range: std::ops::Range<usize>| {
            HeaderValue::from_maybe_shared(read.slice(range)).unwrap()
        };
        entry.headers.append("x-one", value(0..10));
        entry.headers.append("x-one", value(10..13));
        let mut secret = value(20..40);
        secret.set_sensitive(true);
        entry.headers.append(http::header::SET_COOKIE, secret);
        entry
            .headers
            .append(http::header::CONTENT_TYPE, value(40..40));
        let key = [9u8; 32];
        let fill = near.begin_fill(&key, now).expect("the near cache is armed");
        near.complete_fill(&key, fill, &entry, now);
        let kept = near.with_entry(&key, now, |kept, _| {
            let pinned = kept.headers.values().any(|v| within(v.as_bytes())) || within(&kept.body);
            let headers: Vec<_> = kept
                .headers
                .iter()
                .filter(|(name, _)| *name != AGE && *name != CACHE_STATUS)
                .map(|(name, v)| (name.clone(), v.clone(), v.is_sensitive()))
                .collect();
            let answers = (kept.headers.get(AGE), kept.headers.get(CACHE_STATUS));
            assert_eq!(
                answers,
                (
                    Some(&HeaderValue::from_static("0")),
                    Some(&HeaderValue::from_static(CACHE_NAME))
                ),
                "room for the answer's two headers"
            );
            Some((pinned, headers, kept.body.clone()))
        });
        let (pinned, headers, body) = kept.expect("kept and answered");
        assert!(!pinned, "a slice of the read buffer was kept");
        let expected: Vec<_> = entry
            .headers
            .iter()
            .map(|(name, v)| (name.clone(), v.clone(), v.is_sensitive()))
            .collect();
        assert_eq!(headers, expected);
        assert!(headers[2].2, "the cookie is still sensitive");
        assert_eq!(body, entry.body);
    }

    /// The cache's weight is what its slots weigh, so its bound holds, however a fill and an invalidation of a
    /// key meet moka's housekeeping (here: run between a placeholder and its entry, which is replaced before the
    /// next run; under load, the common case).
    #[test]
    fn its_weight_is_what_its_slots_weigh_through_fills_and_invalidations() {
        let bound = 512 * 1024;
        let near = near_of(bound);
        near.arm();
        let now = near.clock.now_ms();
        let bodies: Vec<bytes::Bytes> = (0..7).map(|i| vec![b'x'; 800 + 100 * i].into()).collect();
        for round in 0..3 {
            // About 1 MiB of entries, twice the bound.
            for k in 0..1000u32 {
                let key: [u8; 32] = Sha256::digest(k.to_be_bytes()).into();
                let entry = entry_of(bodies[k as usize % 7].clone(), now);
                let fill = near.begin_fill(&key, now).expect("armed");
                near.cache.run_pending_tasks();
                near.complete_fill(&key, fill, &entry, now);
                if k % 3 == 0 {
                    near.remove(&key);
                }
            }
            near.cache.run_pending_tasks();
            let held: u64 = near
                .cache
                .iter()
                .map(|(_, slot)| u64::from(slot.weight()))
                .sum();
            assert_eq!(near.cache.weighted_size(), held, "round {round}");
            assert!(
                held <= bound,
                "round {round}: {held} held, over the bound {bound}"
            );
            assert!(
                held >= bound / 2,
                "round {round}: {held} held, for a bound of {bound}"
            );
        }
    }

    #[test]
    fn digest_keys_spread_evenly() {
        assert_spread((0..64_000u32).map(|i| Sha256::digest(i.to_be_bytes()).into()));
    }

    #[tokio::test]
    async fn a_watched_lease_wakes_at_its_own_push_and_at_a_flush_only() {
        let near = near();
        let lease = "ns:v1:{ab}:lease";
        let woken = |watch: &LeaseWatch<'_>| {
            futures_util::FutureExt::now_or_never(watch.pushed()).is_some()
        };
        {
            let watch = near.watch_lease(lease);
            let other = near.watch_lease("ns:v1:{cd}:lease");
            near.invalidate(["ns:v1:{cd}", "ns:v1:{ef}:lease"]);
            assert!(!woken(&watch), "pushes for other keys");
            // A push arriving while the holder is not waiting is kept for its next wait, once.
            near.invalidate([lease]);
            assert!(woken(&watch));
            assert!(!woken(&watch));
            assert!(!woken(&other));
            near.flush(FlushCause::Connection);
            assert!(
                woken(&watch) && woken(&other),
                "a flush may have lost pushes"
            );
        }
        assert_eq!(near.watched.load(Ordering::Acquire), 0);
        assert!(near.leases.lock().unwrap().is_empty());
    }

    #[test]
    fn fleet_waits_wake_at_a_push_for_an_entry_or_a_lease_or_a_flush_only() {
        let near = near();
        let woken = |keys: &[&str], flush: bool| {
            let changed = near.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            near.invalidate(keys.iter().copied());
            if flush {
                near.flush(FlushCause::Server);
            }
            futures_util::FutureExt::now_or_never(changed).is_some()
        };
        let set = "ns:v1:tag:{0123}";
        let mark = format!("{set}{MARK_SUFFIX}");
        assert!(!woken(&[set, &mark, "ns:v1:tag-clock"], false));
        let entry = format!("ns:v1:{{{}}}", "ab".repeat(32));
        assert!(woken(&[set, &entry], false));
        assert!(woken(&["ns:v1:{ab}:lease"], false));
        assert!(woken(&[], true));
    }

    /// Digests chosen to agree on many of their hashed bits (as a client trying many requests could make
    /// them) still spread, whichever bits they share: the low ones (the fold brings the others down), the
    /// high ones (the multiply carries the others up), or all but a few in the middle.
    #[test]
    fn chosen_digests_still_spread() {
        let keys = |shift: u32| {
            (0..64_000u64).map(move |i| {
                let mut key = [0u8; 32];
                key[..8].copy_from_slice(&(i << shift).to_le_bytes());
                key
            })
        };
        for shift in [0, 24, 40, 48] {
            assert_spread(keys(shift));
        }
    }

    /// Where `near` answered `key` from at `now`: the address of the body it answered with (a thread's front
    /// answers with a copy of its own; the cache with the entry it keeps, whose address no other allocation can
    /// take while it lives).
    fn answered_at(near: &Near, key: &[u8; 32], now: u64) -> Option<usize> {
        body(near, key, now).map(|body| body.as_ptr() as usize)
    }

    /// A thread's front holds the eight entries it answered last, each in its own slot, one near cache's apart
    /// from another's of the same key; a change sends each read back to the cache, which puts the entry in the
    /// slot it had.
    #[test]
    fn a_threads_front_answers_its_eight_latest_entries() {
        let (a, b) = (near(), near());
        a.arm();
        b.arm();
        let now = a.clock.now_ms();
        let keys: Vec<[u8; 32]> = (0u8..8).map(|i| [i; 32]).collect();
        for key in &keys {
            fill(&a, key, "a", now);
        }
        fill(&b, &keys[3], "b", now);
        // First reads: from the cache, each then taken into the front.
        let cached: Vec<usize> = keys
            .iter()
            .map(|k| answered_at(&a, k, now).unwrap())
            .collect();
        let fronted = |near: &Near, i: usize| {
            let at = answered_at(near, &keys[i], now).expect("answered");
            at != cached[i]
        };
        assert!((0..8).all(|i| fronted(&a, i)), "all eight from the front");
        // A change: every read goes to the cache once, and each entry goes back in the slot it had.
        a.remove(&keys[7]);
        assert_eq!(answered_at(&a, &keys[7], now), None);
        for i in 0..7 {
            assert!(
                !fronted(&a, i),
                "key {i} read from the cache after a change"
            );
        }
        assert!((0..7).all(|i| fronted(&a, i)), "each in its own slot again");
        // A lease's push changes no entry: the front still answers.
        a.invalidate([format!("ns:v1:{{{}}}:lease", "03".repeat(32)).as_str()]);
        assert!((0..7).all(|i| fronted(&a, i)), "after a lease's push");
        // B's entry of key 3 takes the next slot in turn (key 0's), not A's entry of the same key.
        assert!(answered_at(&b, &keys[3], now).is_some());
        assert!(fronted(&a, 3), "A's key 3 kept its slot");
        assert!(!fronted(&a, 0), "A's key 0 gave its slot up");
    }

    /// The front takes no entry heavier than a 64th of the near cache's bound, nor than 128 KiB: its copies are
    /// memory beyond the bound.
    #[test]
    fn the_front_takes_no_heavy_entry() {
        for (bound, light, heavy) in [
            (1 << 20, 12 << 10, 20 << 10),
            (64 << 20, 100 << 10, 130 << 10),
        ] {
            let near = near_of(bound);
            near.arm();
            let now = near.clock.now_ms();
            for (size, front) in [(light, true), (heavy, false)] {
                let key = [u8::from(front); 32];
                fill(&near, &key, vec![b'w'; size], now);
                let cached = answered_at(&near, &key, now).expect("kept");
                let again = answered_at(&near, &key, now).expect("kept");
                assert_eq!(again != cached, front, "{size} bytes in a cache of {bound}");
            }
        }
    }

    /// An entry answers until its freshness ends, and only while the near cache is live: from the front and from
    /// the cache alike.
    #[test]
    fn nothing_answers_past_its_freshness_or_the_liveness() {
        let near = near();
        near.arm();
        let now = near.clock.now_ms();
        let live_until = near.live_until.load(Ordering::Acquire);
        let key = [4u8; 32];
        let mut entry = entry_of(bytes::Bytes::from_static(b"short"), now);
        entry.fresh_until = now + 100;
        let read = near.begin_fill(&key, now).expect("armed");
        near.complete_fill(&key, read, &entry, now);
        for at in [now, now, now + 99] {
            assert_eq!(
                body(&near, &key, at).as_deref(),
                Some(&b"short"[..]),
                "{at}"
            );
        }
        assert_eq!(body(&near, &key, now + 100), None, "from the front");
        assert_eq!(body(&near, &key, now + 100), None, "from the cache");

        let other = [5u8; 32];
        fill(&near, &other, "long", now);
        assert!(body(&near, &other, live_until - 1).is_some());
        assert_eq!(
            body(&near, &other, live_until),
            None,
            "a probe's liveness ended"
        );
        assert!(format!("{near:?}").contains("max_ttl_ms: 60000"));
    }

    /// A read's value is kept only while its placeholder is still in place: not after an invalidation, a removal,
    /// a flush, or a later read's fill; an abandoned read takes its placeholder away, and only its own.
    #[test]
    fn a_fill_that_anything_overtook_is_discarded() {
        let near = near();
        near.arm();
        let now = near.clock.now_ms();
        let key = [3u8; 32];
        let name = format!("ns:v1:{{{}}}", "03".repeat(32));
        let entry = |body: &'static str| entry_of(bytes::Bytes::from_static(body.as_bytes()), now);
        let overtaken: [&dyn Fn(); 3] = [
            &|| near.invalidate([name.as_str()]),
            &|| near.remove(&key),
            &|| near.flush(FlushCause::Server),
        ];
        for overtake in overtaken {
            let fill = near.begin_fill(&key, now).expect("armed");
            overtake();
            near.complete_fill(&key, fill, &entry("old"), now);
            assert_eq!(body(&near, &key, now), None);
        }
        // Two reads in flight: the first to arrive is the later one's, and the earlier one's value is not kept.
        let (earlier, later) = (near.begin_fill(&key, now), near.begin_fill(&key, now));
        near.complete_fill(&key, later.expect("armed"), &entry("new"), now);
        near.complete_fill(&key, earlier.expect("armed"), &entry("old"), now);
        assert_eq!(body(&near, &key, now).as_deref(), Some(&b"new"[..]));
        assert_eq!(near.counters.near_fills.get(), 1);
        assert_eq!(near.counters.near_fills_discarded.get(), 4);
        let (bytes, entries) = near.usage();
        assert_eq!(entries, 1);
        assert!(bytes > (SLOT_OVERHEAD + ENTRY_OVERHEAD) as u64, "{bytes}");

        let stale = near.begin_fill(&key, now).expect("armed");
        let fresh = near.begin_fill(&key, now).expect("armed");
        near.abandon_fill(&key, stale);
        assert_eq!(near.usage().1, 1, "not another read's placeholder");
        near.abandon_fill(&key, fresh);
        assert_eq!(near.usage(), (0, 0));
    }

    /// Byte strings (no near-cache key writes one) hash word by word, every byte counted.
    #[test]
    fn byte_strings_hash_by_every_byte() {
        let hasher = DigestKeys::new();
        let hashes: std::collections::HashSet<u64> = (0..4096u32)
            .map(|i| hasher.hash_one(format!("{i:09}").as_bytes()))
            .collect();
        assert_eq!(hashes.len(), 4096);
    }

    /// Disarmed, the near cache empties once (counted as a connection's flush), however often it is told.
    #[test]
    fn disarming_empties_it_once() {
        let near = near();
        near.arm();
        assert_eq!(near.counters.near_flushes_connection.get(), 1, "arming");
        near.disarm();
        near.disarm();
        assert_eq!(near.counters.near_flushes_connection.get(), 2);
        let partly = near.arm_partly(vec![Some(0); 16_384], 1);
        near.pong_primary(&partly, 0);
        assert_eq!(near.counters.near_flushes_connection.get(), 3);
        near.disarm();
        near.disarm();
        assert_eq!(near.counters.near_flushes_connection.get(), 4);
        assert!(
            near.partly.read().unwrap().is_none(),
            "the slots' owners dropped"
        );
    }

    /// An entry weighs its slot and its own overhead, a bucket and the name's and value's bytes (and 16) for each
    /// header, the index table's slots, and its body.
    #[test]
    fn an_entry_weighs_what_its_parts_cost() {
        let mut entry = entry_of(vec![0u8; 1000].into(), 0);
        entry
            .headers
            .insert("x-one", HeaderValue::from_static("abc"));
        reserve_answer_headers(&mut entry.headers);
        let bytes = ("x-one".len() + 3 + 16)
            + ("age".len() + 1 + 16)
            + ("cache-status".len() + CACHE_NAME.len() + 16);
        let map = 3 * HEADER_BUCKET + entry.headers.capacity() * HEADER_INDEX;
        assert_eq!(
            entry_weight(&entry) as usize,
            SLOT_OVERHEAD + ENTRY_OVERHEAD + map + bytes + 1000
        );
    }
}
