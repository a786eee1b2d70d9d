//! Fail-open store access: every store call gets a timeout, and a circuit breaker stops paying that timeout
//! while the store is down.

use super::deadline::Deadlines;
use super::stats::{Counters, bump};
use super::store::{Store, StoreFuture};
use crate::atomic::AtomicU64;
use crate::error::StoreError;
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// A circuit breaker that sees failure *rates*, not only runs: every failure adds two to a score, every success
/// takes one off (only while the score is above zero, so a healthy store costs no write), so the score climbs
/// whenever more than a third of recent calls fail: a run of failures, or a store that fails every other call.
/// At `threshold` failures' worth it opens; after `cooldown` one call probes, and a success closes it. A
/// score not touched for [`WINDOW_MS`] starts again from zero: only recent calls count.
///
/// An open breaker also lets one call probe at once, without waiting out the cooldown, for each connection the
/// store makes while it is open: a connection lost and made again (a Redis restart, a connection closed by a proxy
/// or `CLIENT KILL`) fails every call in flight together, which opens the breaker, and caching then resumes as
/// soon as the store is back rather than a whole cooldown later. A store that keeps connecting and failing costs
/// at most a call per connection it makes, which its reconnect policy spaces. The count of connections made is
/// the caller's to give, to [`allow`](Self::allow) and [`failure`](Self::failure), read only while the breaker is
/// open or opening.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    base: Instant,
    /// Failures count 2, successes -1, floored at 0.
    score: AtomicU32,
    /// When the score last moved (ms since `base`).
    touched: AtomicU64,
    /// Milliseconds since `base` until which the breaker is open; 0 when closed.
    open_until: AtomicU64,
    /// When the store was last asked to reconnect (ms since `base`); 0 never.
    reconnected: AtomicU64,
    /// The last call ended in a timeout, and none has succeeded since.
    timed_out: AtomicBool,
    /// How many connections the store had made when the breaker opened, or when the last connection it made
    /// since let a call probe.
    connections: AtomicU64,
}

/// How often at most a store whose calls time out is asked to make its connections again.
const RECONNECT_EVERY: Duration = Duration::from_secs(5);

/// How long a failure counts for.
const WINDOW_MS: u64 = 10_000;

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown_ms: u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX),
            base: Instant::now(),
            score: AtomicU32::new(0),
            touched: AtomicU64::new(0),
            open_until: AtomicU64::new(0),
            reconnected: AtomicU64::new(0),
            timed_out: AtomicBool::new(false),
            connections: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        // +1 so that "open until 0" never means open.
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Whether a call may go to the store now; `made`: how many connections the store has made so far.
    #[inline]
    pub(crate) fn allow(&self, made: impl FnOnce() -> u64) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        self.probe(until, made)
    }

    /// Whether a call may probe the open breaker now (open until `until`): its cooldown is over, or the store has
    /// made a connection since it opened. Out of line: a closed breaker never takes it.
    #[cold]
    #[inline(never)]
    fn probe(&self, until: u64, made: impl FnOnce() -> u64) -> bool {
        let now = self.now_ms();
        if now < until && !self.connected_since_opening(made) {
            return false;
        }
        // Half-open: exactly one caller wins the right to probe; the rest wait out another cooldown.
        self.open_until
            .compare_exchange(
                until,
                now.saturating_add(self.cooldown_ms),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Whether the store has made a connection since the breaker opened, or since the last one let a call probe
    /// (and, if so, that this one is now spent).
    fn connected_since_opening(&self, made: impl FnOnce() -> u64) -> bool {
        let seen = self.connections.load(Ordering::Acquire);
        let made = made();
        made > seen
            && self
                .connections
                .compare_exchange(seen, made, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    pub(crate) fn success(&self) {
        // Read before writing: on the hot path nothing changes, and a write would bounce the cache line
        // between every core calling the store.
        if self.timed_out.load(Ordering::Relaxed) {
            self.timed_out.store(false, Ordering::Relaxed);
        }
        if self.score.load(Ordering::Relaxed) != 0 {
            let _ = self
                .score
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    Some(s.saturating_sub(1))
                });
        }
        if self.open_until.load(Ordering::Relaxed) != 0 {
            self.open_until.store(0, Ordering::Release);
        }
    }

    /// Counts a failure; returns whether the store is now in doubt: this failure opened the breaker, or it
    /// was a probe of an open one that failed. `made`: how many connections the store has made so far, read
    /// only when this failure opens the breaker.
    pub(crate) fn failure(&self, made: impl FnOnce() -> u64) -> bool {
        if self.open_until.load(Ordering::Acquire) != 0 {
            return true;
        }
        let now = self.now_ms();
        if now.saturating_sub(self.touched.swap(now, Ordering::Relaxed)) > WINDOW_MS {
            self.score.store(0, Ordering::Relaxed);
        }
        let score = self.score.fetch_add(2, Ordering::Relaxed).saturating_add(2);
        if score < self.threshold.saturating_mul(2) {
            return false;
        }
        self.score.store(0, Ordering::Relaxed);
        self.connections.store(made(), Ordering::Release);
        self.open_until
            .store(now.saturating_add(self.cooldown_ms), Ordering::Release);
        true
    }

    /// Records a timeout; returns whether the call before it timed out too, with no success between (however
    /// long ago: traffic too sparse to open the breaker still finds a stuck link this way).
    pub(crate) fn timed_out_again(&self) -> bool {
        self.timed_out.swap(true, Ordering::Relaxed)
    }

    /// Whether the store may be asked to reconnect now: once in [`RECONNECT_EVERY`].
    pub(crate) fn may_reconnect(&self) -> bool {
        let now = self.now_ms();
        let last = self.reconnected.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= RECONNECT_EVERY.as_millis() as u64)
            && self
                .reconnected
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether the breaker is currently open.
    pub(crate) fn is_open(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        until != 0 && self.now_ms() < until
    }
}

/// Nodes with a breaker of their own; the keys of further nodes share the store's.
const NODE_BREAKERS: usize = 64;

/// A store behind a timeout and breakers, counting what goes wrong: one breaker for the store, and one per node
/// when the store says which node holds a key ([`Store::node_of`], a Redis Cluster), so a dead shard costs only
/// its own keys.
pub(crate) struct GuardedStore {
    pub(crate) store: Arc<dyn Store>,
    /// `store`, when it is a [`RedisStore`](crate::RedisStore): [`get`](Self::get) holds its reads as they
    /// are, not boxed as `dyn Store` returns them.
    #[cfg(feature = "redis")]
    redis: Option<Arc<crate::RedisStore>>,
    /// The deadlines of this store's calls, and their timeout.
    deadlines: Arc<Deadlines>,
    pub(crate) breaker: Breaker,
    /// The breaker of every call but `get`, when the store sends those on connections apart from its reads (a
    /// [`RedisStore`](crate::RedisStore) that made its own clients): writes held in Redis (paused, or stuck behind
    /// a script) then open this one, and hits, answered on their own connections, go on. `None`: `breaker` guards
    /// every call.
    writes: Option<Breaker>,
    /// Breakers of nodes 1 to [`NODE_BREAKERS`], made on first use.
    nodes: Box<[std::sync::OnceLock<Breaker>]>,
    /// The nodes' breakers of every call but `get`, when `writes` is there; else empty.
    write_nodes: Box<[std::sync::OnceLock<Breaker>]>,
    threshold: u32,
    cooldown: Duration,
    pub(crate) counters: Arc<Counters>,
    /// When the next refused call may be logged as a warning (ms since `created`), so that a Redis refusing
    /// every write is reported once every [`REFUSAL_WARN_EVERY`], not on every miss.
    refusal_warning_due: AtomicU64,
    created: std::time::Instant,
}

/// A store read, as [`GuardedStore::get`] holds it: one type (one future for the call around it) whichever
/// the store.
enum Read<'a> {
    /// A [`RedisStore`](crate::RedisStore)'s read, unboxed.
    #[cfg(feature = "redis")]
    Housed(super::store::Housed<'a>),
    /// Any other store's.
    Boxed(StoreFuture<'a, Option<Bytes>>),
}

impl Future for Read<'_> {
    type Output = Result<Option<Bytes>, StoreError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            #[cfg(feature = "redis")]
            Read::Housed(read) => std::pin::Pin::new(read).poll(cx),
            Read::Boxed(read) => read.as_mut().poll(cx),
        }
    }
}

/// The least time between two warnings of refused store calls.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

impl std::fmt::Debug for GuardedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStore")
            .field("timeout", &self.deadlines.timeout())
            .field("breaker", &self.breaker)
            .field("writes", &self.writes)
            .finish_non_exhaustive()
    }
}

impl GuardedStore {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        timeout: Duration,
        threshold: u32,
        cooldown: Duration,
        counters: Arc<Counters>,
    ) -> Self {
        #[cfg(feature = "redis")]
        let redis = (store.clone() as Arc<dyn std::any::Any + Send + Sync>)
            .downcast::<crate::RedisStore>()
            .ok();
        #[cfg(feature = "redis")]
        let writes = redis
            .as_ref()
            .filter(|redis| redis.writes_apart())
            .map(|_| Breaker::new(threshold, cooldown));
        #[cfg(not(feature = "redis"))]
        let writes = None;
        let write_nodes = if writes.is_some() { NODE_BREAKERS } else { 0 };
        GuardedStore {
            store,
            #[cfg(feature = "redis")]
            redis,
            writes,
            deadlines: Deadlines::new(timeout),
            breaker: Breaker::new(threshold, cooldown),
            nodes: (0..NODE_BREAKERS)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            write_nodes: (0..write_nodes)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            threshold,
            cooldown,
            counters,
            refusal_warning_due: AtomicU64::new(0),
            created: std::time::Instant::now(),
        }
    }

    /// The store itself and the deadlines of its calls, for a caller that reads it outside the breaker (the
    /// clock, whose readings of the store's time neither count as failures nor wait on a breaker's probe).
    pub(crate) fn unguarded(&self) -> (Arc<dyn Store>, Arc<Deadlines>) {
        (self.store.clone(), self.deadlines.clone())
    }

    /// Whether a refusal now should be logged as a warning: the first, and then one every
    /// [`REFUSAL_WARN_EVERY`].
    fn warn_of_refusal(&self) -> bool {
        let now = u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = self.refusal_warning_due.load(Ordering::Relaxed);
        let next = now.saturating_add(REFUSAL_WARN_EVERY.as_millis() as u64);
        now >= due
            && self
                .refusal_warning_due
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The breaker guarding operation `what` on `key`: its node's (`true`), or the store's (`false`); the
    /// writes' own for any operation but `get` when the store sends those apart.
    fn breaker(&self, what: &'static str, key: &str) -> (&Breaker, bool) {
        let (store, nodes) = match &self.writes {
            Some(writes) if what != "get" => (writes, &self.write_nodes),
            _ => (&self.breaker, &self.nodes),
        };
        self.store
            .node_of(key)
            .and_then(|node| node.checked_sub(1))
            .and_then(|i| nodes.get(i))
            .map_or((store, false), |slot| {
                let breaker = slot.get_or_init(|| Breaker::new(self.threshold, self.cooldown));
                (breaker, true)
            })
    }

    /// Whether a breaker is open: the store's, or any node's.
    pub(crate) fn is_open(&self) -> bool {
        self.breaker.is_open()
            || self.writes.as_ref().is_some_and(Breaker::is_open)
            || self
                .nodes
                .iter()
                .chain(self.write_nodes.iter())
                .any(|node| node.get().is_some_and(Breaker::is_open))
    }

    /// [`call`](Self::call) when `guarded`; else the operation alone, with no breaker or timeout (for a
    /// caller's own request to the store, whose errors are its to see).
    pub(crate) async fn call_as<'a, T>(
        &'a self,
        guarded: bool,
        what: &'static str,
        key: &str,
        op: impl FnOnce(&'a dyn Store) -> StoreFuture<'a, T>,
    ) -> Result<T, StoreError> {
        if guarded {
            self.call(what, key, op).await
        } else {
            op(&*self.store).await
        }
    }

    /// Reads `key` under its breaker and the timeout: [`call`](Self::call) of [`Store::get`], with a Redis
    /// store's read held unboxed (one allocation less for every hit).
    pub(crate) fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> impl Future<Output = Result<Option<Bytes>, StoreError>> + Send + 'a {
        self.call("get", key, move |store| {
            #[cfg(feature = "redis")]
            if let Some(redis) = &self.redis {
                return match redis.read_on_shard(key) {
                    Some(read) => Read::Boxed(read),
                    None => Read::Housed(redis.read(key)),
                };
            }
            Read::Boxed(store.get(key))
        })
    }

    /// Runs one store operation on `key` under its breaker and the timeout.
    pub(crate) async fn call<'a, T, F>(
        &'a self,
        what: &'static str,
        key: &str,
        op: impl FnOnce(&'a dyn Store) -> F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>> + Unpin,
    {
        let (breaker, per_node) = self.breaker(what, key);
        if !breaker.allow(|| self.connections_made()) {
            bump(&self.counters.store_skipped);
            return Err(StoreError::Unavailable);
        }
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let bounded = self.deadlines.bound(op(&*self.store)).await;
        let result = bounded.unwrap_or(Err(StoreError::Timeout));
        #[cfg(feature = "metrics")]
        super::stats::record_store_call(
            &self.counters,
            what,
            match &result {
                Ok(_) => "ok",
                Err(StoreError::Refused(_)) => "refused",
                Err(StoreError::Timeout) => "timeout",
                Err(_) => "error",
            },
            started.elapsed(),
        );
        match &result {
            Ok(_) => breaker.success(),
            Err(error) => self.failed(breaker, per_node, what, error),
        }
        result
    }

    /// How many connections the store has made so far (first ones included), for the breakers, which probe at
    /// once when it made one since they opened: a [`RedisStore`](crate::RedisStore)'s count; 0 for another
    /// store, whose open breakers probe after their cooldown only.
    fn connections_made(&self) -> u64 {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            return redis.connections_made();
        }
        0
    }

    /// Has the store make its connections again, in the background, after calls of operation `what` kept
    /// timing out: a [`RedisStore`](crate::RedisStore) that sends its `GET`s on connections of their own leaves
    /// those alone when only other calls did (see `RedisStore::reconnect_side`).
    fn remake_connections(&self, what: &'static str) {
        #[cfg(feature = "redis")]
        if let Some(redis) = self.redis.clone() {
            tokio::spawn(async move { redis.reconnect_side(what == "get").await });
            return;
        }
        #[cfg(not(feature = "redis"))]
        let _ = what;
        let store = self.store.clone();
        tokio::spawn(async move { store.reconnect().await });
    }

    /// Counts and logs a failed store call, and tells `breaker`. Out of line: a hit never takes it.
    #[cold]
    #[inline(never)]
    fn failed(&self, breaker: &Breaker, per_node: bool, what: &'static str, error: &StoreError) {
        if let StoreError::Refused(_) = error {
            // The store answered: it is reachable, and the next call costs no timeout either.
            breaker.success();
            bump(&self.counters.store_errors);
            // A refusal that new connections avoid (a primary demoted under an open connection): have them
            // made, as for a stuck link, and as rarely.
            if !per_node && self.store.reconnect_cures(error) && breaker.may_reconnect() {
                let store = self.store.clone();
                tokio::spawn(async move { store.reconnect().await });
            }
            if self.warn_of_refusal() {
                tracing::warn!(
                    operation = what,
                    %error,
                    "cache store refused a call (more within 10 s are logged at debug); continuing without it"
                );
            } else {
                tracing::debug!(operation = what, %error, "cache store refused a call; continuing without it");
            }
            return;
        }
        let in_doubt = breaker.failure(|| self.connections_made());
        let timeout = matches!(error, StoreError::Timeout);
        let again = timeout && breaker.timed_out_again();
        // The store keeps timing out (it opened the breaker, or timed out twice with no success between): its
        // connections may be stuck (a half-open link answers nothing, yet stays open), which no reconnect policy
        // notices. Have them made again, without holding this request, and not more than once in
        // RECONNECT_EVERY (a refused connection is the client's own reconnect policy's to handle). Not for one
        // node of a cluster: remaking every connection would cost the healthy nodes too, and the client retires
        // an unresponsive connection of its own (`RedisStore` sets that up). So too when the call failed in a way
        // only a new connection cures (`NOAUTH` on a caller's client that does not take it for a lost connection).
        if (((in_doubt || again) && timeout) || self.store.reconnect_cures(error))
            && !per_node
            && breaker.may_reconnect()
        {
            self.remake_connections(what);
        }
        bump(&self.counters.store_errors);
        tracing::warn!(operation = what, %error, "cache store call failed; continuing without it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "memory")]
    #[test]
    fn refusals_are_warned_of_once_in_a_while() {
        let store = GuardedStore::new(
            Arc::new(crate::MemoryStore::new(1 << 20)),
            Duration::from_secs(1),
            3,
            Duration::from_secs(1),
            Arc::new(Counters::new("t")),
        );
        assert!(store.warn_of_refusal(), "the first");
        assert!(!store.warn_of_refusal(), "not the next");
        let due = store.refusal_warning_due.load(Ordering::Relaxed);
        let now = store.created.elapsed().as_millis() as u64;
        assert!(due > now && due <= now + 10_000, "{due} {now}");
        // As if the interval had passed.
        store.refusal_warning_due.store(now, Ordering::Relaxed);
        assert!(store.warn_of_refusal());
        assert!(!store.warn_of_refusal());
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_threshold_and_probes_after_cooldown() {
        let b = Breaker::new(3, Duration::from_secs(1));
        assert!(b.allow(|| 0));
        assert!(!b.failure(|| 0));
        assert!(!b.failure(|| 0));
        assert!(b.allow(|| 0), "two failures stay under the threshold");
        assert!(b.failure(|| 0), "the third opens it");
        assert!(b.is_open());
        assert!(!b.allow(|| 0));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(b.allow(|| 0), "one probe after the cooldown");
        assert!(!b.allow(|| 0), "only one");
        b.success();
        assert!(!b.is_open());
        assert!(b.allow(|| 0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_probes_once_for_each_connection_made_while_it_is_open() {
        let b = Breaker::new(2, Duration::from_secs(60));
        assert!(!b.failure(|| 5));
        assert!(b.failure(|| 5), "the second opens it, 5 connections made");
        assert!(!b.allow(|| 5), "no connection made since");
        assert!(b.allow(|| 6), "one made: a probe at once");
        assert!(!b.allow(|| 6), "only one");
        assert!(b.failure(|| 6), "the probe failed: still open");
        assert!(!b.allow(|| 6));
        assert!(b.allow(|| 8), "two more made: one probe");
        assert!(!b.allow(|| 8));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(b.allow(|| 8), "the cooldown's probe");
        b.success();
        assert!(b.allow(|| 8), "closed");
        // Opened again: the count is read anew, so connections made before do not count.
        assert!(!b.failure(|| 8));
        assert!(b.failure(|| 9));
        assert!(!b.allow(|| 9));
        assert!(b.allow(|| 10));
        b.success();
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_sees_a_store_that_fails_every_other_call() {
        let b = Breaker::new(3, Duration::from_secs(1));
        let mut opened = false;
        for _ in 0..10 {
            b.success();
            opened |= b.failure(|| 0);
        }
        assert!(opened, "half the calls failing opens it");
        // Few failures among many successes do not.
        let b = Breaker::new(3, Duration::from_secs(1));
        for _ in 0..100 {
            for _ in 0..4 {
                b.success();
            }
            assert!(!b.failure(|| 0), "one failure in five stays closed");
        }
        // Failures spread out in time do not add up.
        let b = Breaker::new(3, Duration::from_secs(1));
        for _ in 0..10 {
            assert!(!b.failure(|| 0));
            tokio::time::advance(Duration::from_millis(WINDOW_MS + 1)).await;
        }
        assert!(!b.is_open());
    }
}
