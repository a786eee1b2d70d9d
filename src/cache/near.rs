//! The near cache: fresh entries kept in the process, in front of the store, and dropped the moment the store
//! says their key changed.
//!
//! Coherence comes from the store (for Redis, server-assisted client-side caching: a tracking connection in
//! broadcast mode pushes an invalidation for every change to a key under the namespace). This module is the
//! store-agnostic half: it answers only while the tracking side vouches for it, and every doubt empties it.
//!
//! - **Liveness**: the tracking side calls [`Near::arm`] once tracking is on and [`Near::pong`] after every
//!   successful probe; the near cache answers only within [`LIVENESS`] of the last one, so a process cut off
//!   from Redis stops answering from memory within about a second.
//! - **Flushes**: connection loss, reconnects, a lagging invalidation channel, a topology change or a server
//!   flush bump the *epoch* and empty the cache; nothing filled under an older epoch answers.
//! - **The fill race**: a read from the store installs a placeholder with a unique token first; an invalidation
//!   removes it; the value read is kept only if the same placeholder is still there when it arrives. So an
//!   invalidation that lands while the read is in flight always wins.
//! - **Bounds**: memory by bytes (moka, weighed by entry size); an entry lives at most until its freshness ends
//!   and at most the configured maximum.

use super::clock::Clock;
use super::entry::Entry;
use super::stats::{Counters, bump};
use futures_util::future::BoxFuture;
use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How long after the last successful probe the near cache still answers.
pub(crate) const LIVENESS: Duration = Duration::from_secs(1);

/// How long a placeholder may wait for its read before it is reclaimed (the read has a store timeout far
/// below this; the bound only stops a lost placeholder from taking memory for good).
const PLACEHOLDER_TTL: Duration = Duration::from_secs(10);

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

/// A read from the store that may fill the near cache, if nothing changed the key meanwhile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fill {
    token: u64,
    epoch: u64,
}

/// The in-process cache of fresh entries, kept coherent by a store's invalidations.
pub(crate) struct Near {
    cache: Cache<String, Slot, DigestKeys>,
    max_ttl_ms: u64,
    epoch: AtomicU64,
    tokens: AtomicU64,
    /// Unix ms until which the near cache may answer; 0 while tracking is not confirmed.
    live_until: AtomicU64,
    started: AtomicBool,
    /// The key prefix tracking covers (`<namespace>:v1:`).
    prefix: String,
    tracking: Arc<dyn Tracking>,
    counters: Arc<Counters>,
    clock: Arc<Clock>,
    /// Woken whenever keys were dropped: a process waiting for another's fill looks again.
    changed: tokio::sync::Notify,
}

impl std::fmt::Debug for Near {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Near")
            .field("max_ttl_ms", &self.max_ttl_ms)
            .field("epoch", &self.epoch)
            .field("live_until", &self.live_until)
            .finish_non_exhaustive()
    }
}

/// Hashes the near cache's keys, which are all `<namespace>:v1:{<SHA-256 hex>}`: already uniform, and not
/// chosen by anyone (a request can pick its digest only by breaking SHA-256), so a multiply-rotate over their
/// bytes spreads them as well as SipHash, at a fraction of its cost on every near hit and invalidation.
#[derive(Debug, Clone, Copy, Default)]
struct DigestKeys;

impl std::hash::BuildHasher for DigestKeys {
    type Hasher = DigestKeyHasher;

    fn build_hasher(&self) -> DigestKeyHasher {
        DigestKeyHasher(0)
    }
}

/// The hasher of [`DigestKeys`] (the mixing step of rustc's FxHash, eight bytes at a time).
struct DigestKeyHasher(u64);

impl std::hash::Hasher for DigestKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        for &byte in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// When moka reclaims a slot. An entry's lifetime is checked against the cache's clock on every read; moka's
/// timer (the wall clock) only frees the memory, so it may run a little past it.
struct Lifetime {
    ready: Duration,
}

impl moka::Expiry<String, Slot> for Lifetime {
    fn expire_after_create(
        &self,
        _key: &String,
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
        key: &String,
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
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, slot: &Slot| match slot {
                Slot::Filling { .. } => u32::try_from(key.len()).unwrap_or(u32::MAX),
                Slot::Ready { weight, .. } => *weight,
            })
            .expire_after(Lifetime {
                ready: max_ttl.saturating_add(Duration::from_secs(1)),
            })
            .build_with_hasher(DigestKeys);
        Near {
            cache,
            max_ttl_ms: u64::try_from(max_ttl.as_millis()).unwrap_or(u64::MAX),
            epoch: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            live_until: AtomicU64::new(0),
            started: AtomicBool::new(false),
            prefix,
            tracking,
            counters,
            clock,
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Completes at the next invalidation or flush (call `enable` before looking, so none is missed).
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

    /// The fresh entry for `key`, if the near cache may answer at `now`.
    pub(crate) fn get(&self, key: &str, now: u64) -> Option<Arc<Entry>> {
        if !self.live(now) {
            return None;
        }
        match self.cache.get(key)? {
            Slot::Ready {
                entry,
                until,
                epoch,
                ..
            } if now < until && epoch == self.epoch.load(Ordering::Acquire) => Some(entry),
            _ => None,
        }
    }

    /// Installs a placeholder for a read of `key` from the store; `None` while the near cache may not answer.
    pub(crate) fn begin_fill(&self, key: &str, now: u64) -> Option<Fill> {
        if !self.live(now) {
            return None;
        }
        let fill = Fill {
            token: self.tokens.fetch_add(1, Ordering::Relaxed),
            epoch: self.epoch.load(Ordering::Acquire),
        };
        self.cache
            .insert(key.to_owned(), Slot::Filling { token: fill.token });
        Some(fill)
    }

    /// Keeps `entry` for `key` if `fill`'s placeholder is still there (nothing invalidated the key meanwhile)
    /// and the near cache is still in the same epoch; otherwise discards it.
    pub(crate) fn complete_fill(&self, key: &str, fill: Fill, entry: &Entry, now: u64) {
        let until = entry.fresh_until.min(now.saturating_add(self.max_ttl_ms));
        if until <= now {
            self.abandon_fill(key, fill);
            return;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let weight = entry_weight(key, entry);
        let entry = Arc::new(entry.clone());
        let result = self.cache.entry(key.to_owned()).and_compute_with(|slot| {
            match slot.map(|s| s.into_value()) {
                Some(Slot::Filling { token }) if token == fill.token && fill.epoch == epoch => {
                    Op::Put(Slot::Ready {
                        entry,
                        until,
                        epoch,
                        weight,
                    })
                }
                _ => Op::Nop,
            }
        });
        if matches!(result, CompResult::ReplacedWith(_)) {
            bump(&self.counters.near_fills);
        } else {
            bump(&self.counters.near_fills_discarded);
        }
    }

    /// Removes `fill`'s placeholder, if it is still there (the read found nothing to keep).
    pub(crate) fn abandon_fill(&self, key: &str, fill: Fill) {
        let _ = self.cache.entry(key.to_owned()).and_compute_with(|slot| {
            match slot.map(|s| s.into_value()) {
                Some(Slot::Filling { token }) if token == fill.token => Op::Remove,
                _ => Op::Nop,
            }
        });
    }

    /// Drops `key` (this process wrote or removed it).
    pub(crate) fn remove(&self, key: &str) {
        self.cache.invalidate(key);
    }

    /// Drops the keys the store says changed.
    pub(crate) fn invalidate<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        for key in keys {
            bump(&self.counters.near_invalidations);
            self.cache.invalidate(key);
        }
        self.changed.notify_waiters();
    }

    /// Empties the near cache: nothing filled before answers again.
    pub(crate) fn flush(&self, cause: FlushCause) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
        bump(match cause {
            FlushCause::Server => &self.counters.near_flushes_server,
            FlushCause::Connection => &self.counters.near_flushes_connection,
            FlushCause::Local => &self.counters.near_flushes_local,
        });
        tracing::debug!(?cause, "near cache flushed");
        self.changed.notify_waiters();
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

    /// Tracking is off or in doubt: stop answering and forget everything.
    pub(crate) fn disarm(&self) {
        if self.live_until.swap(0, Ordering::AcqRel) != 0 {
            self.flush(FlushCause::Connection);
        }
    }
}

/// What an entry costs the near cache: its key, body, headers and a little framing.
fn entry_weight(key: &str, entry: &Entry) -> u32 {
    let headers: usize = entry
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 16)
        .sum();
    u32::try_from(key.len() + entry.body.len() + headers + 128).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::hash::BuildHasher;

    /// Keys of the near cache's shape spread over the hash's low bits (moka's shards and buckets) as evenly
    /// as random numbers would, and never collide in full.
    #[test]
    fn digest_keys_spread_evenly() {
        let mut buckets = [0u32; 64];
        let mut seen = std::collections::HashSet::new();
        for i in 0..64_000u32 {
            let digest = Sha256::digest(i.to_be_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            let hash = DigestKeys.hash_one(format!("namespace:v1:{{{hex}}}"));
            assert!(seen.insert(hash), "a full collision");
            buckets[(hash & 63) as usize] += 1;
        }
        // 1,000 expected in each; a uniform spread stays within a few standard deviations (about 31).
        for count in buckets {
            assert!((850..1150).contains(&count), "{buckets:?}");
        }
    }
}
