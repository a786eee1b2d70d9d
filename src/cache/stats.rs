//! Counters of what the cache did, readable as a [`CacheStats`] snapshot.

use super::status::{BypassReason, NotStored};
use crate::atomic::AtomicU64;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// One counter: an atomic for [`CacheStats`], and with the `metrics` feature a
/// `tower_redis_cache_<name>_total{namespace}` counter in the `metrics` facade.
#[derive(Debug)]
pub(crate) struct Counter {
    value: AtomicU64,
    /// `name{namespace}`, built once: the `counter!` macro would build its labels again at every count, an
    /// allocation on every hit.
    #[cfg(feature = "metrics")]
    key: metrics::Key,
}

impl Counter {
    fn new(name: &'static str, namespace: &Arc<str>) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = (name, namespace);
        Counter {
            value: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            key: metrics::Key::from_parts(
                name,
                vec![metrics::Label::new("namespace", namespace.clone())],
            ),
        }
    }

    pub(crate) fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Counts one event.
pub(crate) fn bump(counter: &Counter) {
    add(counter, 1);
}

/// Counts a request that bypassed the cache for `reason`: in `bypasses`, and by reason (with the `metrics`
/// feature, as the `reason` label of `tower_redis_cache_bypasses_total`).
pub(crate) fn bump_bypass(counters: &Counters, reason: BypassReason) {
    bump_for(&counters.bypasses, &counters.bypass_reasons, reason.index());
    #[cfg(feature = "metrics")]
    export(counters.bypass_keys.get(reason.index()));
}

/// Counts a miss whose answer was not stored for `reason`: in `not_stored`, and by reason (with the `metrics`
/// feature, as the `reason` label of `tower_redis_cache_not_stored_total`).
pub(crate) fn bump_not_stored(counters: &Counters, reason: NotStored) {
    bump_for(
        &counters.not_stored,
        &counters.not_stored_reasons,
        reason.index(),
    );
    #[cfg(feature = "metrics")]
    export(counters.not_stored_keys.get(reason.index()));
}

/// Counts one event in `total` and in `by_reason[index]` (exported by reason only, by the caller).
fn bump_for(total: &Counter, by_reason: &[AtomicU64], index: usize) {
    total.value.fetch_add(1, Ordering::Relaxed);
    if let Some(count) = by_reason.get(index) {
        count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts one event under `key` (a total's, by one reason) with whichever recorder is installed now.
#[cfg(feature = "metrics")]
fn export(key: Option<&metrics::Key>) {
    if let Some(key) = key {
        metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA)).increment(1);
    }
}

/// The keys of `name{namespace, reason}`, one per reason in the order given, built once: the `counter!` macro
/// would build its labels again at every count, an allocation on every bypass.
#[cfg(feature = "metrics")]
fn reason_keys<const N: usize>(
    name: &'static str,
    namespace: &Arc<str>,
    reasons: [&'static str; N],
) -> [metrics::Key; N] {
    reasons.map(|reason| {
        metrics::Key::from_parts(
            name,
            vec![
                metrics::Label::new("namespace", namespace.clone()),
                metrics::Label::from_static_parts("reason", reason),
            ],
        )
    })
}

/// Counts `n` (events, or units such as milliseconds).
pub(crate) fn add(counter: &Counter, n: u64) {
    counter.value.fetch_add(n, Ordering::Relaxed);
    // Registered with whichever recorder is installed now, as the `counter!` macro does.
    #[cfg(feature = "metrics")]
    metrics::with_recorder(|recorder| recorder.register_counter(&counter.key, &METADATA))
        .increment(n);
}

/// What the crate's metrics say of where they come from (what `counter!` would say, called in this module).
#[cfg(feature = "metrics")]
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// How a store call can end, the `outcome` label of `tower_redis_cache_store_call_seconds`.
#[cfg(feature = "metrics")]
const STORE_OUTCOMES: [&str; 4] = ["ok", "refused", "timeout", "error"];

/// The keys of `tower_redis_cache_store_call_seconds{namespace, operation="get", outcome}`, by outcome.
#[cfg(feature = "metrics")]
fn store_get_keys(namespace: &Arc<str>) -> [metrics::Key; 4] {
    STORE_OUTCOMES.map(|outcome| {
        metrics::Key::from_parts(
            "tower_redis_cache_store_call_seconds",
            vec![
                metrics::Label::new("namespace", namespace.clone()),
                metrics::Label::from_static_parts("operation", "get"),
                metrics::Label::from_static_parts("outcome", outcome),
            ],
        )
    })
}

/// Records how long a store call took, as the `tower_redis_cache_store_call_seconds{namespace, operation,
/// outcome}` histogram: `operation` is what the call did (`get`, `set`, `lease`, ...), `outcome` how it ended
/// (`ok`, `refused`, `error`, `timeout`). A call the breaker skipped is not made, so not recorded.
#[cfg(feature = "metrics")]
pub(crate) fn record_store_call(
    counters: &Counters,
    operation: &'static str,
    outcome: &'static str,
    took: std::time::Duration,
) {
    // A `GET` (every hit from the store makes one) through the keys built once with the counters; the others,
    // rarer, through the macro, which builds its labels at every call.
    if operation == "get"
        && let Some(key) = STORE_OUTCOMES
            .iter()
            .position(|known| *known == outcome)
            .and_then(|index| counters.store_get_keys.get(index))
    {
        metrics::with_recorder(|recorder| recorder.register_histogram(key, &METADATA))
            .record(took.as_secs_f64());
        return;
    }
    metrics::histogram!(
        "tower_redis_cache_store_call_seconds",
        "namespace" => counters.namespace.clone(),
        "operation" => operation,
        "outcome" => outcome
    )
    .record(took.as_secs_f64());
}

/// Records how far the store's clock ran ahead of this process's at a reading, as the
/// `tower_redis_cache_store_clock_ahead_seconds{namespace}` gauge (negative: behind; see
/// [`CacheHandle::store_clock_ahead_ms`](super::CacheHandle::store_clock_ahead_ms)).
#[cfg(feature = "metrics")]
pub(crate) fn record_store_clock(counters: &Counters, ahead_ms: i64) {
    metrics::gauge!(
        "tower_redis_cache_store_clock_ahead_seconds",
        "namespace" => counters.namespace.clone()
    )
    .set(ahead_ms as f64 / 1000.0);
}

/// Why the cache asked the origin, the `call` label of `tower_redis_cache_origin_call_seconds`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OriginCall {
    /// A miss (or a revalidation the request asked for): its callers wait for the answer.
    Miss,
    /// A background refresh, or the fill a range starts: nobody waits.
    Refresh,
    /// A request the cache takes no part in.
    Bypass,
}

/// When an origin call started, to record how long it took ([`stop`](Self::stop)); nothing at all without the
/// `metrics` feature.
pub(crate) struct OriginTimer {
    #[cfg(feature = "metrics")]
    started: std::time::Instant,
}

impl OriginTimer {
    #[inline]
    pub(crate) fn start() -> Self {
        OriginTimer {
            #[cfg(feature = "metrics")]
            started: std::time::Instant::now(),
        }
    }

    /// Records the call, as the `tower_redis_cache_origin_call_seconds{namespace, call, outcome}` histogram:
    /// `call` is why the origin was asked (`miss`, `refresh`, `bypass`), `outcome` the answer's status class
    /// (`2xx`, ..., `5xx`) or `error` (`status` is `None`: the inner service failed). The time runs to the
    /// answer's head, or to the end of its body when the cache reads it whole.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    #[inline]
    pub(crate) fn stop(
        self,
        counters: &Counters,
        call: OriginCall,
        status: Option<http::StatusCode>,
    ) {
        #[cfg(feature = "metrics")]
        {
            let outcome = match status.map(|status| status.as_u16() / 100) {
                None => "error",
                Some(1) => "1xx",
                Some(2) => "2xx",
                Some(3) => "3xx",
                Some(4) => "4xx",
                Some(_) => "5xx",
            };
            let call = match call {
                OriginCall::Miss => "miss",
                OriginCall::Refresh => "refresh",
                OriginCall::Bypass => "bypass",
            };
            metrics::histogram!(
                "tower_redis_cache_origin_call_seconds",
                "namespace" => counters.namespace.clone(),
                "call" => call,
                "outcome" => outcome
            )
            .record(self.started.elapsed().as_secs_f64());
        }
    }
}

#[derive(Debug)]
pub(crate) struct Counters {
    /// The layer's namespace, the `namespace` label of what it exports.
    #[cfg(feature = "metrics")]
    pub(crate) namespace: Arc<str>,
    /// The keys of a `GET`'s time by outcome ([`record_store_call`]).
    #[cfg(feature = "metrics")]
    store_get_keys: [metrics::Key; 4],
    pub(crate) hits: Counter,
    pub(crate) stale_hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) bypasses: Counter,
    /// `bypasses`, by [`BypassReason::index`].
    pub(crate) bypass_reasons: [AtomicU64; BypassReason::ALL.len()],
    /// `bypasses`' keys by reason, in the same order.
    #[cfg(feature = "metrics")]
    bypass_keys: [metrics::Key; BypassReason::ALL.len()],
    pub(crate) not_stored: Counter,
    /// `not_stored`, by [`NotStored::index`].
    pub(crate) not_stored_reasons: [AtomicU64; NotStored::ALL.len()],
    /// `not_stored`'s keys by reason, in the same order.
    #[cfg(feature = "metrics")]
    not_stored_keys: [metrics::Key; NotStored::ALL.len()],
    pub(crate) stale_if_error: Counter,
    pub(crate) refreshes_started: Counter,
    pub(crate) refreshes_failed: Counter,
    pub(crate) refreshes_skipped: Counter,
    pub(crate) stores: Counter,
    pub(crate) store_errors: Counter,
    pub(crate) store_skipped: Counter,
    pub(crate) decode_errors: Counter,
    pub(crate) near_hits: Counter,
    pub(crate) near_fills: Counter,
    pub(crate) near_fills_discarded: Counter,
    pub(crate) near_invalidations: Counter,
    pub(crate) near_flushes_server: Counter,
    pub(crate) near_flushes_connection: Counter,
    pub(crate) near_flushes_local: Counter,
    pub(crate) fleet_waits: Counter,
    pub(crate) fleet_wait_ms: Counter,
    pub(crate) fleet_takeovers: Counter,
    pub(crate) fleet_timeouts: Counter,
    pub(crate) uncacheable_marks: Counter,
    pub(crate) uncacheable_misses: Counter,
    pub(crate) revalidated: Counter,
    pub(crate) refreshes_deferred: Counter,
    pub(crate) coalesce_timeouts: Counter,
    pub(crate) over_memory_budget: Counter,
    pub(crate) unsafe_invalidations: Counter,
    pub(crate) only_if_cached_misses: Counter,
    pub(crate) stores_fenced: Counter,
    pub(crate) not_modified: Counter,
    pub(crate) partial: Counter,
    pub(crate) variant_reads: Counter,
    pub(crate) tag_removals: Counter,
    pub(crate) marked_stale: Counter,
    pub(crate) tag_sets_swept: Counter,
    pub(crate) stored_bytes: Counter,
    pub(crate) compression_saved_bytes: Counter,
}

impl Counters {
    pub(crate) fn new(namespace: &str) -> Self {
        let namespace: Arc<str> = Arc::from(namespace);
        Counters {
            #[cfg(feature = "metrics")]
            namespace: namespace.clone(),
            #[cfg(feature = "metrics")]
            store_get_keys: store_get_keys(&namespace),
            hits: Counter::new("tower_redis_cache_hits_total", &namespace),
            stale_hits: Counter::new("tower_redis_cache_stale_hits_total", &namespace),
            misses: Counter::new("tower_redis_cache_misses_total", &namespace),
            coalesced: Counter::new("tower_redis_cache_coalesced_total", &namespace),
            bypasses: Counter::new("tower_redis_cache_bypasses_total", &namespace),
            bypass_reasons: std::array::from_fn(|_| AtomicU64::new(0)),
            #[cfg(feature = "metrics")]
            bypass_keys: reason_keys(
                "tower_redis_cache_bypasses_total",
                &namespace,
                BypassReason::ALL.map(|reason| reason.as_str()),
            ),
            not_stored: Counter::new("tower_redis_cache_not_stored_total", &namespace),
            not_stored_reasons: std::array::from_fn(|_| AtomicU64::new(0)),
            #[cfg(feature = "metrics")]
            not_stored_keys: reason_keys(
                "tower_redis_cache_not_stored_total",
                &namespace,
                NotStored::ALL.map(|reason| reason.as_str()),
            ),
            stale_if_error: Counter::new("tower_redis_cache_stale_if_error_total", &namespace),
            refreshes_started: Counter::new(
                "tower_redis_cache_refreshes_started_total",
                &namespace,
            ),
            refreshes_failed: Counter::new("tower_redis_cache_refreshes_failed_total", &namespace),
            refreshes_skipped: Counter::new(
                "tower_redis_cache_refreshes_skipped_total",
                &namespace,
            ),
            stores: Counter::new("tower_redis_cache_stores_total", &namespace),
            store_errors: Counter::new("tower_redis_cache_store_errors_total", &namespace),
            store_skipped: Counter::new("tower_redis_cache_store_skipped_total", &namespace),
            decode_errors: Counter::new("tower_redis_cache_decode_errors_total", &namespace),
            near_hits: Counter::new("tower_redis_cache_near_hits_total", &namespace),
            near_fills: Counter::new("tower_redis_cache_near_fills_total", &namespace),
            near_fills_discarded: Counter::new(
                "tower_redis_cache_near_fills_discarded_total",
                &namespace,
            ),
            near_invalidations: Counter::new(
                "tower_redis_cache_near_invalidations_total",
                &namespace,
            ),
            near_flushes_server: Counter::new(
                "tower_redis_cache_near_flushes_server_total",
                &namespace,
            ),
            near_flushes_connection: Counter::new(
                "tower_redis_cache_near_flushes_connection_total",
                &namespace,
            ),
            near_flushes_local: Counter::new(
                "tower_redis_cache_near_flushes_local_total",
                &namespace,
            ),
            fleet_waits: Counter::new("tower_redis_cache_fleet_waits_total", &namespace),
            fleet_wait_ms: Counter::new("tower_redis_cache_fleet_wait_ms_total", &namespace),
            fleet_takeovers: Counter::new("tower_redis_cache_fleet_takeovers_total", &namespace),
            fleet_timeouts: Counter::new("tower_redis_cache_fleet_timeouts_total", &namespace),
            uncacheable_marks: Counter::new(
                "tower_redis_cache_uncacheable_marks_total",
                &namespace,
            ),
            uncacheable_misses: Counter::new(
                "tower_redis_cache_uncacheable_misses_total",
                &namespace,
            ),
            revalidated: Counter::new("tower_redis_cache_revalidated_total", &namespace),
            refreshes_deferred: Counter::new(
                "tower_redis_cache_refreshes_deferred_total",
                &namespace,
            ),
            coalesce_timeouts: Counter::new(
                "tower_redis_cache_coalesce_timeouts_total",
                &namespace,
            ),
            over_memory_budget: Counter::new(
                "tower_redis_cache_over_memory_budget_total",
                &namespace,
            ),
            unsafe_invalidations: Counter::new(
                "tower_redis_cache_unsafe_invalidations_total",
                &namespace,
            ),
            only_if_cached_misses: Counter::new(
                "tower_redis_cache_only_if_cached_misses_total",
                &namespace,
            ),
            stores_fenced: Counter::new("tower_redis_cache_stores_fenced_total", &namespace),
            not_modified: Counter::new("tower_redis_cache_not_modified_total", &namespace),
            partial: Counter::new("tower_redis_cache_partial_total", &namespace),
            variant_reads: Counter::new("tower_redis_cache_variant_reads_total", &namespace),
            tag_removals: Counter::new("tower_redis_cache_tag_removals_total", &namespace),
            marked_stale: Counter::new("tower_redis_cache_marked_stale_total", &namespace),
            tag_sets_swept: Counter::new("tower_redis_cache_tag_sets_swept_total", &namespace),
            stored_bytes: Counter::new("tower_redis_cache_stored_bytes_total", &namespace),
            compression_saved_bytes: Counter::new(
                "tower_redis_cache_compression_saved_bytes_total",
                &namespace,
            ),
        }
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.get(),
            stale_hits: self.stale_hits.get(),
            misses: self.misses.get(),
            coalesced: self.coalesced.get(),
            bypasses: self.bypasses.get(),
            bypasses_by_reason: self
                .bypass_reasons
                .each_ref()
                .map(|count| count.load(Ordering::Relaxed)),
            not_stored: self.not_stored.get(),
            not_stored_by_reason: self
                .not_stored_reasons
                .each_ref()
                .map(|count| count.load(Ordering::Relaxed)),
            stale_if_error: self.stale_if_error.get(),
            refreshes_started: self.refreshes_started.get(),
            refreshes_failed: self.refreshes_failed.get(),
            refreshes_skipped: self.refreshes_skipped.get(),
            stores: self.stores.get(),
            store_errors: self.store_errors.get(),
            store_skipped: self.store_skipped.get(),
            decode_errors: self.decode_errors.get(),
            near_hits: self.near_hits.get(),
            near_fills: self.near_fills.get(),
            near_fills_discarded: self.near_fills_discarded.get(),
            near_invalidations: self.near_invalidations.get(),
            near_flushes_server: self.near_flushes_server.get(),
            near_flushes_connection: self.near_flushes_connection.get(),
            near_flushes_local: self.near_flushes_local.get(),
            fleet_waits: self.fleet_waits.get(),
            fleet_wait_ms: self.fleet_wait_ms.get(),
            fleet_takeovers: self.fleet_takeovers.get(),
            fleet_timeouts: self.fleet_timeouts.get(),
            uncacheable_marks: self.uncacheable_marks.get(),
            uncacheable_misses: self.uncacheable_misses.get(),
            revalidated: self.revalidated.get(),
            refreshes_deferred: self.refreshes_deferred.get(),
            coalesce_timeouts: self.coalesce_timeouts.get(),
            over_memory_budget: self.over_memory_budget.get(),
            unsafe_invalidations: self.unsafe_invalidations.get(),
            only_if_cached_misses: self.only_if_cached_misses.get(),
            stores_fenced: self.stores_fenced.get(),
            not_modified: self.not_modified.get(),
            partial: self.partial.get(),
            variant_reads: self.variant_reads.get(),
            tag_removals: self.tag_removals.get(),
            marked_stale: self.marked_stale.get(),
            tag_sets_swept: self.tag_sets_swept.get(),
            stored_bytes: self.stored_bytes.get(),
            compression_saved_bytes: self.compression_saved_bytes.get(),
            in_flight_bytes: 0,
            near_bytes: 0,
            near_entries: 0,
        }
    }
}

/// A snapshot of one layer's counters (shared by every service the layer built).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Fresh hits.
    pub hits: u64,
    /// Stale entries served while revalidating.
    pub stale_hits: u64,
    /// Requests answered by the inner service (leaders of coalesced calls and uncoalesced calls).
    pub misses: u64,
    /// Requests that waited for another caller's inner call and shared its response.
    pub coalesced: u64,
    /// Requests that bypassed the cache ([`bypasses_for`](Self::bypasses_for) counts them by reason).
    pub bypasses: u64,
    bypasses_by_reason: [u64; BypassReason::ALL.len()],
    /// Misses whose answer the origin gave but the cache did not store, for a reason of the answer's own
    /// ([`not_stored_for`](Self::not_stored_for) counts them by reason). Not those the store failed or skipped
    /// ([`store_errors`](Self::store_errors), [`store_skipped`](Self::store_skipped)): each miss says one reason.
    pub not_stored: u64,
    not_stored_by_reason: [u64; NotStored::ALL.len()],
    /// Stored entries served because the inner service failed.
    pub stale_if_error: u64,
    /// Background refreshes that called the inner service: of stale entries, of entries refreshed ahead of
    /// expiry, and the fills of entries a `Range` found missing.
    pub refreshes_started: u64,
    /// Background refreshes whose inner call failed or whose response was not storable. (A refresh whose
    /// answer an invalidation overtook counts in `stores_fenced` instead.)
    pub refreshes_failed: u64,
    /// Background refreshes not run because another process held the key's lease.
    pub refreshes_skipped: u64,
    /// Entries written.
    pub stores: u64,
    /// Store operations that failed or timed out.
    pub store_errors: u64,
    /// Store operations skipped while the circuit breaker was open.
    pub store_skipped: u64,
    /// Stored values that could not be decoded (treated as misses and overwritten).
    pub decode_errors: u64,
    /// Fresh hits answered by the near cache, without a store call (also counted in `hits`).
    pub near_hits: u64,
    /// Entries read from the store and kept in the near cache.
    pub near_fills: u64,
    /// Entries read from the store but not kept, because the key was invalidated (or the near cache emptied)
    /// while the read was in flight.
    pub near_fills_discarded: u64,
    /// Entry keys the store said changed (another process or an operator wrote or removed them), dropped from
    /// the near cache. Changes of other keys under the namespace (leases) are not counted.
    pub near_invalidations: u64,
    /// Times the near cache was emptied because the store was flushed (`FLUSHALL`, `FLUSHDB`).
    pub near_flushes_server: u64,
    /// Times the near cache was emptied because tracking was lost or in doubt (connection loss, reconnect, a
    /// lagging invalidation channel, a missed probe, a topology change), and once each time tracking starts.
    pub near_flushes_connection: u64,
    /// Times the near cache was emptied by this process's own purge.
    pub near_flushes_local: u64,
    /// Misses that found another process fetching their key and waited for its entry instead of calling the
    /// origin (counted whether the entry came, the lease was taken over, or the wait gave up).
    pub fleet_waits: u64,
    /// Milliseconds spent in those waits, all together.
    pub fleet_wait_ms: u64,
    /// Waits that ended with the other process gone (its lease released or expired without an entry): this
    /// process took the lease and called the origin itself.
    pub fleet_takeovers: u64,
    /// Waits that reached `fleet_wait` and called the origin without the lease.
    pub fleet_timeouts: u64,
    /// Markers written for keys whose origin answer could not be stored (see `uncacheable_for`).
    pub uncacheable_marks: u64,
    /// Misses on a key so marked, made without waiting for another caller's origin call.
    pub uncacheable_misses: u64,
    /// Stored entries the origin confirmed with a `304` to a conditional request (`If-None-Match`,
    /// `If-Modified-Since` from the entry's `ETag` and `Last-Modified`): renewed without their body again.
    pub revalidated: u64,
    /// Stale hits served without starting a background refresh, because `max_background_refreshes` were
    /// running (a later stale hit starts it), or the layer was shut down
    /// ([`CacheHandle::shutdown`](super::CacheHandle::shutdown)).
    pub refreshes_deferred: u64,
    /// Callers that waited `coalesced_wait` for another caller's inner call to the same key and then made
    /// their own.
    pub coalesce_timeouts: u64,
    /// Bodies the layer did not read whole because those it held for requests in flight already filled
    /// `max_in_flight_bytes`: origin responses streamed through to their callers unstored, and request bodies
    /// arriving as a stream that went to the origin unkeyed (`Cache-Status: ...; detail=request-over-budget`).
    pub over_memory_budget: u64,
    /// Successful unsafe requests (`PUT`, `DELETE`, an uncached `POST`, ...) whose target URI's entries were
    /// removed (RFC 9111 §4.4; see `invalidate_on_unsafe`).
    pub unsafe_invalidations: u64,
    /// Requests with `Cache-Control: only-if-cached` that nothing stored could answer: answered `504` by the
    /// cache, without calling the inner service.
    pub only_if_cached_misses: u64,
    /// Origin answers not stored because the key's lease, taken before the origin was asked, was gone when the
    /// answer came: an invalidation or purge ran meanwhile (the answer may predate the change it reported), or
    /// the lease expired.
    pub stores_fenced: u64,
    /// Answers replaced by a `304 Not Modified` because the client's own `If-None-Match` or `If-Modified-Since`
    /// showed that it holds the response already (RFC 9111 §4.3.2).
    pub not_modified: u64,
    /// Answers replaced by part of themselves because the request asked for a `Range` of a stored response: a
    /// `206 Partial Content`, or a `416 Range Not Satisfiable` for a range past its end (RFC 9110 §14).
    pub partial: u64,
    /// Requests that found another variant's answer under their key and read their own variant's key after it
    /// (see [`keep_variants`](super::RedisCacheLayerBuilder::keep_variants)): in each process, the first request
    /// of each variant, until what it learned is forgotten or the entry under the key changes variant.
    pub variant_reads: u64,
    /// Entries removed because they were stored with a tag that was invalidated (by
    /// [`CacheHandle::invalidate_tag`](super::CacheHandle::invalidate_tag), or by an unsafe request with that
    /// tag; see [`tags`](super::RedisCacheLayerBuilder::tags)).
    pub tag_removals: u64,
    /// Fresh entries made stale in place by a soft purge of this process's
    /// ([`CacheHandle::mark_tag_stale`](super::CacheHandle::mark_tag_stale) and its kin): kept, and answered
    /// stale while one refresh runs.
    pub marked_stale: u64,
    /// Tag sets this process's sweeps removed, every entry they named having expired (the fleet's regular sweep, when
    /// this process's turn, and [`CacheHandle::sweep_tags`](super::CacheHandle::sweep_tags)).
    pub tag_sets_swept: u64,
    /// Bytes of the entries stored (counted in [`stores`](Self::stores)), as the store holds them: body,
    /// headers and framing. Over `stores`, the mean size of an entry.
    pub stored_bytes: u64,
    /// Bytes that compression kept out of the store: what the entries counted in
    /// [`stored_bytes`](Self::stored_bytes) would have taken uncompressed, less what they took (see
    /// [`compress_above`](super::RedisCacheLayerBuilder::compress_above), feature `compression`).
    pub compression_saved_bytes: u64,
    /// Body bytes held right now for requests in flight (a gauge, not a count), at most `max_in_flight_bytes`:
    /// the responses misses and refreshes read, and the request bodies read from a stream to key them.
    pub in_flight_bytes: u64,
    /// What the near cache holds right now, in the bytes its bound counts (bodies, headers and each entry's
    /// bookkeeping; see [`near_cache`](super::RedisCacheLayerBuilder::near_cache)): a gauge, within the bound
    /// ([`CacheHandle::stats`](super::CacheHandle::stats) first runs the housekeeping that evicts down to it).
    /// 0 without a near cache.
    pub near_bytes: u64,
    /// How many entries the near cache holds right now (a gauge, as `near_bytes` is), reads in flight to fill
    /// it included.
    pub near_entries: u64,
}

impl CacheStats {
    /// The requests that bypassed the cache for `reason` (their `Cache-Status` says `detail=` its
    /// [`as_str`](BypassReason::as_str)); the counts of all reasons add up to [`bypasses`](Self::bypasses).
    pub fn bypasses_for(&self, reason: BypassReason) -> u64 {
        self.bypasses_by_reason
            .get(reason.index())
            .copied()
            .unwrap_or(0)
    }

    /// The misses whose answer was not stored for `reason` (their `Cache-Status` says `detail=` its
    /// [`as_str`](NotStored::as_str)); the counts of all reasons add up to [`not_stored`](Self::not_stored).
    pub fn not_stored_for(&self, reason: NotStored) -> u64 {
        self.not_stored_by_reason
            .get(reason.index())
            .copied()
            .unwrap_or(0)
    }
}
