//! [`RedisCacheLayer`], its builder, and [`CacheHandle`] for stats and invalidation.

use super::RedisCache;
use super::decision::{Credentials, HeaderKinds, Rules, default_statuses, holds_a_session};
use super::decode::Content;
use super::engine::{
    Engine, NearConfig, PartitionFn, Policy, PostPredicate, QueryPredicate, StorePredicate, UriTags,
};
use super::freshness::{MAX_WINDOW, Windows, WindowsFn};
use super::guard::GuardedStore;
use super::key::{KeyConfig, Pointer};
use super::near::Tracking;
use super::stats::{CacheStats, Counters};
use super::store::Store;
use super::tags::{Purge, TagsFn};
use crate::error::{ConfigError, Setting, StoreError};
use http::header::{AUTHORIZATION, CACHE_CONTROL, COOKIE, PROXY_AUTHORIZATION};
use http::{HeaderMap, HeaderName, Method, Request, StatusCode, request};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tower_layer::Layer;

/// A Tower layer that caches responses in a [`Store`]; see the [module docs](super) for the semantics.
///
/// Every service built by one layer (and its clones) shares the store connection, the in-flight map (so
/// concurrent misses coalesce across clones), the background refreshes and the counters.
#[derive(Clone)]
pub struct RedisCacheLayer {
    engine: Arc<Engine>,
}

/// The client tracking of `store` if it is a [`RedisStore`](super::RedisStore), alone or shared (an `Arc` of
/// it, or an `Arc<dyn Store>` holding one, as the Genesys client keeps its store).
#[cfg(feature = "redis")]
fn redis_tracking(store: &dyn std::any::Any) -> Option<Arc<dyn Tracking>> {
    use super::RedisStore;
    if let Some(shared) = store.downcast_ref::<Arc<RedisStore>>() {
        return Some(shared.tracking());
    }
    let store: &dyn std::any::Any = match store.downcast_ref::<Arc<dyn Store>>() {
        Some(shared) => &**shared,
        None => store,
    };
    store.downcast_ref::<RedisStore>().map(RedisStore::tracking)
}

impl RedisCacheLayer {
    /// Starts a builder over `store` (a [`RedisStore`](super::RedisStore), a
    /// [`MemoryStore`](super::MemoryStore), or your own [`Store`]).
    pub fn builder(store: impl Store) -> RedisCacheLayerBuilder {
        // A Redis store can keep a near cache coherent (client tracking); any other store cannot.
        #[cfg(feature = "redis")]
        let tracking = redis_tracking(&store);
        #[cfg(not(feature = "redis"))]
        let tracking = None;
        let mut builder = RedisCacheLayerBuilder::new(Arc::new(store));
        builder.tracking = tracking;
        builder
    }

    /// The layer over `store` with every default (see [`RedisCacheLayerBuilder`]): namespace `http-cache`,
    /// fresh for 60 s, stale for 60 s more, `GET`/`HEAD`/`QUERY`, requests with credentials bypassed.
    pub fn new(store: impl Store) -> Self {
        RedisCacheLayer::builder(store).assemble()
    }

    /// The engine, for the Tower service and the other adapters (the reqwest middleware).
    pub(crate) fn engine(&self) -> Arc<Engine> {
        self.engine.clone()
    }

    /// A handle for stats, invalidation and purging.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle {
            engine: self.engine.clone(),
        }
    }
}

impl fmt::Debug for RedisCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheLayer")
            .field("namespace", &self.engine.keys.namespace)
            .field("policy", &self.engine.policy)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RedisCacheLayer {
    type Service = RedisCache<S>;

    fn layer(&self, inner: S) -> RedisCache<S> {
        RedisCache::from_parts(inner, self.engine())
    }
}

/// Stats, invalidation and purge for the services of one [`RedisCacheLayer`].
#[derive(Clone)]
pub struct CacheHandle {
    pub(crate) engine: Arc<Engine>,
}

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle")
            .field("namespace", &self.engine.keys.namespace)
            .finish_non_exhaustive()
    }
}

impl CacheHandle {
    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        let mut stats = self.engine.counters.snapshot();
        stats.in_flight_bytes = self.engine.budget.in_use() as u64;
        if let Some(near) = &self.engine.near {
            (stats.near_bytes, stats.near_entries) = near.usage();
        }
        stats
    }

    /// The key the cache uses for `request` (its body as bytes, as it is sent: one in a `Content-Encoding` is
    /// keyed decoded with feature `decompress`, as the layer keys it): for a `HEAD`, its `GET`'s while
    /// [`head_from_get`](RedisCacheLayerBuilder::head_from_get) applies. With
    /// [`partition_by`](RedisCacheLayerBuilder::partition_by), in `request`'s partition, named from its
    /// headers and extensions as for a request through the layer; a request it names no partition for is never
    /// stored, and its key holds nothing (nor does the key of one whose body does not decode within the cap).
    ///
    /// Once this process learned that the answers to that key vary on request headers
    /// ([`keep_variants`](RedisCacheLayerBuilder::keep_variants)), the key of `request`'s variant.
    pub fn key_for<T: AsRef<[u8]>>(&self, request: &Request<T>) -> super::CacheKey {
        let primary = self.primary_key(request);
        match &self.engine.variants {
            Some(variants) => match variants.variant_of(primary.digest(), request.headers()) {
                Some(variant) => self.engine.keys.key_of(variant),
                None => primary,
            },
            None => primary,
        }
    }

    /// The key of `request` as [`key_for`](Self::key_for) computes it before anything was learned of its
    /// variants.
    fn primary_key<T: AsRef<[u8]>>(&self, request: &Request<T>) -> super::CacheKey {
        let policy = &self.engine.policy;
        let partition = match policy.partition_by {
            Some(_) => policy.partition_of(&head_of(request)),
            None => None,
        };
        let body = request.body().as_ref();
        let content = Content::of(request.headers(), body, policy.max_body);
        self.engine.keys.key_in(
            policy.keyed_method(request.method()),
            request.uri(),
            request.headers(),
            partition.as_deref(),
            content.keyed(body),
        )
    }

    /// Removes the entry (and any refresh lease) of `request`. Returns whether the key held one (or the marker
    /// of an answer that could not be stored, see [`uncacheable_for`](RedisCacheLayerBuilder::uncacheable_for)).
    /// Only `request`'s own variant, and the entry stored under `request`'s key before its answers were known
    /// to vary, which may be another's ([`keep_variants`](RedisCacheLayerBuilder::keep_variants)):
    /// [`invalidate_uri`](Self::invalidate_uri) removes every `GET` and `HEAD` entry of its URI.
    ///
    /// The lease goes first: a miss or refresh of `request` that asked the origin before this call does not
    /// store its answer after it (counted in `stores_fenced`), and its call is shared with no caller arriving
    /// after this one returns (in another process: as soon as its near cache hears of the lease's removal, or
    /// without a near cache after that call's next lease renewal).
    ///
    /// # Errors
    ///
    /// The store's error; the circuit breaker and store timeout do not apply here.
    pub async fn invalidate<T: AsRef<[u8]>>(
        &self,
        request: &Request<T>,
    ) -> Result<bool, StoreError> {
        self.purge_request(request, Purge::Remove).await
    }

    /// What [`invalidate`](Self::invalidate) reaches, purged as `purge` says; whether it found an entry to.
    async fn purge_request<T: AsRef<[u8]>>(
        &self,
        request: &Request<T>,
        purge: Purge,
    ) -> Result<bool, StoreError> {
        let keys = self
            .engine
            .own_keys(self.primary_key(request), request.headers())
            .await?;
        // The lease first: a fill that asked the origin before this call then cannot store its answer after it.
        let purged = self.engine.purge_entries(&keys, false, purge).await?;
        Ok(purged > 0)
    }

    /// Removes what a successful write to `request`'s URI would (see
    /// [`invalidate_on_unsafe`](RedisCacheLayerBuilder::invalidate_on_unsafe)): the `GET` and `HEAD` entries of
    /// that URI, in `request`'s partition, and, over a store that [keeps tags](Store::keeps_tags), every
    /// variant of them where keys hold request headers ([`vary_headers`](RedisCacheLayerBuilder::vary_headers),
    /// [`Credentials::InKey`], the answers' own `Vary` with
    /// [`keep_variants`](RedisCacheLayerBuilder::keep_variants)) and the entries of the queries (`QUERY`,
    /// cached `POST`) sent to it; the request's method and body do not count. For a change the cache did not
    /// see: a webhook, another service's write.
    /// Returns how many entries (or markers) existed.
    ///
    /// Leases go first, as for [`invalidate`](Self::invalidate): no fill that asked the origin before this call
    /// stores its answer after it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use http::Request;
    /// use tower_redis_cache::{MemoryStore, RedisCacheLayer};
    ///
    /// let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
    ///     .vary_headers([http::header::ACCEPT_LANGUAGE])
    ///     .build()?;
    /// // A webhook said item 42 changed: every language's entry goes.
    /// let changed = Request::get("https://api.example/items/42").body(())?;
    /// assert_eq!(layer.handle().invalidate_uri(&changed).await?, 0); // nothing was cached yet
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The store's error (entries removed before it stay removed); the circuit breaker and store timeout do
    /// not apply here.
    pub async fn invalidate_uri<T>(&self, request: &Request<T>) -> Result<u64, StoreError> {
        self.purge_uri(request, Purge::Remove).await
    }

    /// What [`invalidate_uri`](Self::invalidate_uri) reaches, purged as `purge` says.
    async fn purge_uri<T>(&self, request: &Request<T>, purge: Purge) -> Result<u64, StoreError> {
        let engine = &self.engine;
        let partition = match engine.policy.partition_by {
            Some(_) => engine.policy.partition_of(&head_of(request)),
            None => None,
        };
        let (keys, sets) = engine.uri_entries(
            std::slice::from_ref(request.uri()),
            request.headers(),
            partition.as_deref(),
        );
        let (named, tagged) = futures_util::future::join(
            engine.purge_entries(&keys, false, purge),
            engine.purge_uri_tagged(&sets, false, purge),
        )
        .await;
        Ok(named? + tagged?)
    }

    /// Removes every entry stored with `tag` (see [`tags`](RedisCacheLayerBuilder::tags)) in this layer's
    /// namespace and partition (of every request's own, with
    /// [`partition_by`](RedisCacheLayerBuilder::partition_by)), and their leases. Returns how many entries
    /// existed (the markers of tagged requests whose answers could not be stored count too).
    ///
    /// As with [`invalidate`](Self::invalidate), a fill of such an entry that asked the origin before this
    /// call does not store its answer after it: its key was recorded under a request's tag before it asked,
    /// and an answer naming the tag ([`tags_from_header`](RedisCacheLayerBuilder::tags_from_header)) finds
    /// the tag marked. The tag's set is walked in pages (`ZSCAN`), so a large tag costs time, not memory; an
    /// entry tagged while the walk runs may stay (its origin call began after this call did).
    ///
    /// # Errors
    ///
    /// The store's error (entries removed before it stay removed); the circuit breaker and store timeout do
    /// not apply here. A store without tags (see [`Store::tag`]) fails.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64, StoreError> {
        let set = self.engine.keys.tag_key(tag);
        self.engine.remove_tagged(&[set], false).await
    }

    /// Makes every entry stored with `tag` stale, in every process, without removing it (a soft purge, as CDNs
    /// call it): the next request for each is answered at once from the stale entry while one background
    /// refresh, for the whole fleet, asks the origin, so that purging a popular tag sends the origin one call
    /// per entry instead of every waiting caller's, and an origin that fails meanwhile is answered for from the
    /// entry's stale-if-error window. Each entry is stale from now on, and its stale windows keep their lengths
    /// from now (with `stale_for` zero, it is then answered only for a failing origin). Returns how many
    /// entries were fresh; those stale already are left as they are.
    ///
    /// As with [`invalidate_tag`](Self::invalidate_tag), the tag is marked and the leases go first, so no fill
    /// that asked the origin before this call stores its answer after it. A store that cannot change an entry
    /// in place removes it instead ([`Store::mark_stale`]); [`RedisStore`]
    /// and [`MemoryStore`] can.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_redis_cache::{MemoryStore, RedisCacheLayer};
    ///
    /// let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
    ///     .tags(|parts| vec![parts.uri.path().to_owned()])
    ///     .build()?;
    /// // The catalogue changed: its pages are refreshed as they are asked for, stale meanwhile.
    /// assert_eq!(layer.handle().mark_tag_stale("/catalogue").await?, 0); // nothing was cached yet
    /// # Ok(()) }
    /// ```
    ///
    /// [`RedisStore`]: crate::RedisStore
    /// [`MemoryStore`]: crate::MemoryStore
    ///
    /// # Errors
    ///
    /// The store's error (entries made stale before it stay so); the circuit breaker and store timeout do not
    /// apply here. A store without tags fails.
    pub async fn mark_tag_stale(&self, tag: &str) -> Result<u64, StoreError> {
        let set = self.engine.keys.tag_key(tag);
        self.engine
            .purge_tagged(&[set], false, self.stale_now())
            .await
    }

    /// Makes the entry of `request` stale without removing it, as [`mark_tag_stale`](Self::mark_tag_stale)
    /// does for a tag's; the keys are those [`invalidate`](Self::invalidate) removes. Returns whether it was
    /// fresh.
    ///
    /// # Errors
    ///
    /// The store's error; the circuit breaker and store timeout do not apply here.
    pub async fn mark_stale<T: AsRef<[u8]>>(
        &self,
        request: &Request<T>,
    ) -> Result<bool, StoreError> {
        self.purge_request(request, self.stale_now()).await
    }

    /// Makes what [`invalidate_uri`](Self::invalidate_uri) removes stale instead, as
    /// [`mark_tag_stale`](Self::mark_tag_stale) does for a tag's entries: every variant of the URI's `GET` and
    /// `HEAD` entries and of the queries sent to it, in `request`'s partition. For a change made elsewhere that
    /// a burst of callers should not wait on. Returns how many entries were fresh.
    ///
    /// # Errors
    ///
    /// The store's error (entries made stale before it stay so); the circuit breaker and store timeout do not
    /// apply here.
    pub async fn mark_uri_stale<T>(&self, request: &Request<T>) -> Result<u64, StoreError> {
        self.purge_uri(request, self.stale_now()).await
    }

    /// Makes every entry in the cache group `group` of the origin `authority` stale, as
    /// [`mark_tag_stale`](Self::mark_tag_stale) does for a tag's (see
    /// [`invalidate_group`](Self::invalidate_group)). Returns how many entries were fresh.
    ///
    /// # Errors
    ///
    /// The store's error (entries made stale before it stay so); the circuit breaker and store timeout do not
    /// apply here.
    pub async fn mark_group_stale(&self, authority: &str, group: &str) -> Result<u64, StoreError> {
        let set = self.engine.keys.group_key(authority.as_bytes(), group);
        self.engine
            .purge_tagged(&[set], false, self.stale_now())
            .await
    }

    /// A soft purge as of now.
    fn stale_now(&self) -> Purge {
        Purge::Stale(self.engine.clock.now_ms())
    }

    /// Removes every entry in the cache group `group` of the origin `authority` (`"api.example"`,
    /// `"api.example:8443"`; case and the ports 80 and 443 ignored), as an answer's `Cache-Group-Invalidation` does
    /// (see [`cache_groups`](RedisCacheLayerBuilder::cache_groups)). Returns how many entries existed; the rest is
    /// as for [`invalidate_tag`](Self::invalidate_tag).
    ///
    /// # Errors
    ///
    /// The store's error (entries removed before it stay removed); the circuit breaker and store timeout do
    /// not apply here.
    pub async fn invalidate_group(&self, authority: &str, group: &str) -> Result<u64, StoreError> {
        let set = self.engine.keys.group_key(authority.as_bytes(), group);
        self.engine.remove_tagged(&[set], false).await
    }

    /// Removes every entry of this layer's namespace (`SCAN` + `UNLINK` on Redis, never `KEYS`). Returns how many
    /// keys were removed. Leases go in a first pass, so that no fill running meanwhile stores an answer after
    /// its entry was removed; and callers of this process arriving afterwards do not share a call that began
    /// before.
    ///
    /// # Errors
    ///
    /// The store's error; the circuit breaker and store timeout do not apply here. On a Redis Cluster, every
    /// primary is purged that answers: the error names those that did not (a primary gone, for one), and says
    /// how many keys the others removed; purge again once they are back.
    pub async fn purge(&self) -> Result<u64, StoreError> {
        let prefix = self.engine.keys.namespace_prefix();
        self.engine.forget_all();
        let purged = self.engine.store.store.purge_prefix(&prefix).await;
        self.engine.flights.detach_all();
        purged
    }

    /// Drops what expired from this namespace's tag sets, the sets left empty and the invalidation marks a day old,
    /// now; returns how many sets it removed ([`Store::sweep_tags`]: on Redis, a `SCAN` of every primary). The
    /// layer does it on its own every [`tag_sweep_every`](RedisCacheLayerBuilder::tag_sweep_every) (an hour by
    /// default), one process of a fleet at a time; this is for a maintenance job that wants it now, or runs it in
    /// the layer's place. A namespace no layer uses any more is swept by nobody and its sets and marks have no
    /// TTL: [`purge`](Self::purge) it once instead.
    ///
    /// # Errors
    ///
    /// The store's error; the circuit breaker and store timeout do not apply here. On a Redis Cluster, as for
    /// [`purge`](Self::purge): every primary that answers is swept, and the error names the others.
    pub async fn sweep_tags(&self) -> Result<u64, StoreError> {
        let prefix = self.engine.keys.namespace_prefix();
        let removed = self.engine.store.store.sweep_tags(&prefix).await?;
        super::stats::add(&self.engine.counters.tag_sets_swept, removed);
        Ok(removed)
    }

    /// Whether the near cache answers now (see
    /// [`near_cache`](RedisCacheLayerBuilder::near_cache)): tracking is on, and its connection answered a probe
    /// within the last second. `false` without a near cache, before the first request starts it, and while it is
    /// off: after a doubt (a lost connection, a failover, a node joining a Cluster) until tracking is on again,
    /// or while Redis refuses tracking (logged at `warn`). Requests are answered either way, hits from Redis; a
    /// health check can report the difference. While a Cluster primary is out of reach, the near cache answers
    /// the keys of the other primaries' slots, and this says `false`: not every key.
    pub fn near_cache_live(&self) -> bool {
        self.engine
            .near
            .as_ref()
            .is_some_and(|near| near.answering())
    }

    /// How many milliseconds the store's clock ran ahead of this process's when the cache last read it
    /// (negative: behind); `None` before it was first read (as the layer is built, on a runtime, or else at its
    /// first request), or for a store without a clock of its own ([`Store::server_time`]: Redis has one, a
    /// [`MemoryStore`](crate::MemoryStore) not). The cache reads it once a minute, and where the two differ by more than a second, times entries by the store's clock
    /// (and says so at `warn`), so that processes whose clocks disagree agree on when an entry goes stale. A
    /// health check can report it: a clock far off is worth fixing for everything else a process does.
    pub fn store_clock_ahead_ms(&self) -> Option<i64> {
        self.engine.clock.store_ahead_ms()
    }

    /// Whether a store circuit breaker is open (the store, or in a Redis Cluster one of its nodes, is being
    /// skipped; or only its writes, by a [`RedisStore`](crate::RedisStore) that sends its hits apart).
    pub fn store_unavailable(&self) -> bool {
        self.engine.store.is_open()
    }

    /// Shuts the layer's background work down, for a process that is about to exit: from now on no background
    /// refresh starts (stale entries are still answered, `Cache-Status: ...; hit; ttl=-3` without
    /// `detail=refreshing`, and counted in `refreshes_deferred`), and this waits up to `grace` for the work
    /// already running to end: refreshes (each within `refresh_timeout`), removals of the entries a successful
    /// write made stale, and lease releases, so that other processes need not wait for a lease to expire.
    /// Returns whether all of it ended. Requests keep being served as before; a process exiting without this
    /// loses the refreshes in flight, whose entries stay stale until another process refreshes them.
    ///
    /// ```no_run
    /// # async fn run(layer: tower_redis_cache::RedisCacheLayer) {
    /// use std::time::Duration;
    ///
    /// // After the server's own graceful shutdown:
    /// if !layer.handle().shutdown(Duration::from_secs(5)).await {
    ///     eprintln!("background cache work still running; exiting anyway");
    /// }
    /// # }
    /// ```
    pub async fn shutdown(&self, grace: Duration) -> bool {
        tokio::time::timeout(grace, self.engine.background.close())
            .await
            .is_ok()
    }
}

/// A copy of `request`'s head, for the layer's hooks.
fn head_of<T>(request: &Request<T>) -> request::Parts {
    let mut head = Request::new(());
    *head.method_mut() = request.method().clone();
    *head.uri_mut() = request.uri().clone();
    *head.version_mut() = request.version();
    *head.headers_mut() = request.headers().clone();
    *head.extensions_mut() = request.extensions().clone();
    head.into_parts().0
}

/// Builds a [`RedisCacheLayer`]; every setter states its default. Validation happens in
/// [`build`](Self::build), which refuses a setting that cannot work with a [`ConfigError`] whose
/// [`setting`](ConfigError::setting) names it.
///
/// A clone shares the store: layers built from both use one connection, with their own counters and
/// in-flight maps.
///
/// # Settings at a glance
///
/// | setting | default | meaning |
/// |---|---|---|
/// | [`namespace`](Self::namespace) | `http-cache` | key prefix, so several caches share one Redis; `purge()` one you retire (its tag sets have no TTL) |
/// | [`partition`](Self::partition), [`partition_by`](Self::partition_by) | none | tenant in every key: fixed (Genesys: API base, client id), or per request (none: bypass) |
/// | [`fresh_for`](Self::fresh_for) / [`stale_for`](Self::stale_for) / [`stale_if_error_for`](Self::stale_if_error_for) | 60 s / 60 s / 300 s | answered fresh; then stale while one refresh runs; then only if the origin fails |
/// | [`keep_for`](Self::keep_for) | 10 min | past its windows, an entry with an `ETag` or `Last-Modified` is kept for revalidation only: the next request asks the origin conditionally, and a `304` answers from the stored body (Redis holds such entries that much longer) |
/// | [`refresh_ahead`](Self::refresh_ahead) | off | a hit late in freshness (`0.2`: last fifth) refreshes it, so hot keys never go stale |
/// | [`windows_for`](Self::windows_for), [`windows_for_status`](Self::windows_for_status), [`CacheOverride`](super::CacheOverride) | none | windows per route, per answer status (a `404` for seconds), or per request (an extension) |
/// | [`origin_freshness`](Self::origin_freshness) | on, capped at a day | honour the origin's `Cache-Control` / `Expires` for `GET`/`HEAD`; with every window at zero, only what it says is kept (RFC 9111's shared cache) |
/// | [`origin_freshness_for_post`](Self::origin_freshness_for_post), [`origin_freshness_cap`](Self::origin_freshness_cap) | off, a day | the origin's freshness for `POST` and `QUERY` too; the longest windows its headers may set |
/// | [`respect_response_cache_control`](Self::respect_response_cache_control) | on | honour `no-store`/`private`; off, with a `partition` and `origin_freshness` off, for an API marking all `no-store` |
/// | [`respect_request_cache_control`](Self::respect_request_cache_control) | on | honour the request's `Cache-Control` / `Pragma` (`no-cache`, `max-age`, ...); off in front of a server, so a client's reload or `no-cache` cannot send every request to the origin |
/// | [`targeted_cache_control`](Self::targeted_cache_control) | none | fields such as `CDN-Cache-Control` (RFC 9213) that speak to this cache in place of `Cache-Control` and `Expires`: `no-store` for browsers, `max-age=60` here |
/// | [`methods`](Self::methods), [`cache_post_when`](Self::cache_post_when) | `GET`, `HEAD`, `QUERY` | what is cached; `POST` by opt-in, keyed by its body |
/// | [`cacheable_statuses`](Self::cacheable_statuses) | `200`, `203`, `204` | the statuses stored (never `206` or `304`) |
/// | [`store_when`](Self::store_when) | every answer | from its status, headers and body, whether an answer is stored: not an API's error inside a `200` (GraphQL: `graphql::is_success`; JSON-RPC: `jsonrpc::is_success`), which counts as a failing origin's (stale-if-error); with feature `decompress`, a gzip, deflate, br or zstd body is judged decoded |
/// | [`query_when`](Self::query_when) | every body a query | from its body, whether a cached `POST` or `QUERY` is a query (GraphQL: `graphql::is_query`; JSON-RPC: `jsonrpc::only_calls_to`); a `POST` it refuses, or whose body it cannot read (over `max_body_size`), is a write; with feature `decompress`, a gzip, deflate, br or zstd body is read decoded (and keyed by its content), and one that does not decode bypasses, a write too |
/// | [`head_from_get`](Self::head_from_get) | on | a `HEAD` reads the entry of its `GET` (a miss asks the origin for the `GET`) |
/// | [`invalidate_on_unsafe`](Self::invalidate_on_unsafe) | on | an unsafe request that succeeds, or that the origin never answers (a transport error, a gateway's `502`/`504`), removes its URI's `GET`/`HEAD` entries |
/// | [`tags`](Self::tags), [`tags_from_header`](Self::tags_from_header) | none | tags by request or by answer; `invalidate_tag`, or a write with the tag, drops them |
/// | [`tag_sweep_every`](Self::tag_sweep_every) | 1 h | how often one process of the fleet drops the tag sets whose entries all expired; `None`: only when you call `sweep_tags()` |
/// | [`cache_groups`](Self::cache_groups) | off | HTTP Cache Groups (RFC 9875): an answer's `Cache-Groups` puts it in groups of its origin; a write answered with `Cache-Group-Invalidation` drops them |
/// | [`credentials`](Self::credentials), [`credential_headers`](Self::credential_headers) | `Bypass`; `X-Api-Key`, `X-Forwarded-User`, `X-Forwarded-Client-Cert` and 56 more | requests with `Authorization`, `Cookie` or a credential header: bypass, key by them (`InKey`), or by partition; a header named like a credential or a user's or tenant's that no list names (`X-Shopify-Access-Token`, `X-User-Id`, `X-Tenant-Id`) bypasses but under a partition or in `vary_headers` |
/// | [`vary_headers`](Self::vary_headers) | none | request headers in the key, whether or not answers name them in `Vary` |
/// | [`keep_variants`](Self::keep_variants) | on | an entry per variant of answers that vary (`Vary: Accept-Language`, `Origin`), learned from the stored answer; off: one per key |
/// | [`ignore_query_params`](Self::ignore_query_params), [`ignore_body_fields`](Self::ignore_body_fields) | none | query parameters (`utm_*`) and JSON members (`/requestId`) left out of the key; never a credential (`access_token`, `key`, `X-Amz-Signature`, ...) but under a partition |
/// | [`echo_body_field`](Self::echo_body_field) | none | a JSON request member that answers repeat (JSON-RPC's `id`): its value leaves the key, and every answer carries the request's own; never a credential but under a partition; a compressed answer is shared decoded with feature `decompress`, else not at all |
/// | [`ignore_cookies`](Self::ignore_cookies) | none | cookies that are no credential and no user's state (`_ga`, `_ga_*`, Cloudflare's `__cf_bm`): a request sending only those is cached as one sending none, an answer setting only those is stored without them; never a session's or a token's (`PHPSESSID`, `_myapp_session`, `remember_token`) |
/// | [`max_body_size`](Self::max_body_size) | 1 MiB | larger requests and responses stream through uncached |
/// | `compress_above` | off | bodies over this size stored LZ4-compressed (feature `compression`) |
/// | [`store_timeout`](Self::store_timeout) | 50 ms | the longest a Redis call may delay a request |
/// | [`refresh_lease_for`](Self::refresh_lease_for), [`refresh_timeout`](Self::refresh_timeout) | 10 s, 5 min | how long one process holds a key's origin call for the fleet; the longest a background refresh may run |
/// | [`circuit_breaker`](Self::circuit_breaker) | 5 failures, 1 s | skip Redis after a run (or rate) of failures; probe after the cooldown, or at once when the store connects again |
/// | [`fleet_wait`](Self::fleet_wait) | 5 s | how long a miss waits for another process's fill |
/// | [`uncacheable_for`](Self::uncacheable_for) | 60 s | remember a key whose answer could not be stored: its misses stop queueing |
/// | [`near_cache`](Self::near_cache), [`near_cache_max_ttl`](Self::near_cache_max_ttl) | off, 60 s | bytes of fresh entries kept in the process |
/// | [`max_background_refreshes`](Self::max_background_refreshes), [`coalesced_wait`](Self::coalesced_wait), [`max_in_flight_bytes`](Self::max_in_flight_bytes) | 32, 30 s, 64 MiB | bounds under bursts |
#[derive(Clone)]
#[must_use]
pub struct RedisCacheLayerBuilder {
    store: Arc<dyn Store>,
    namespace: String,
    partition: Vec<u8>,
    vary: Vec<HeaderName>,
    ignored_query: Vec<String>,
    ignored_body: Vec<String>,
    echo: Option<String>,
    ignored_cookies: Vec<String>,
    fresh_for: Duration,
    stale_for: Duration,
    stale_if_error_for: Duration,
    refresh_ahead: f64,
    methods: Vec<Method>,
    head_from_get: bool,
    keep_variants: bool,
    post_when: Option<PostPredicate>,
    query_when: Option<QueryPredicate>,
    store_when: Option<StorePredicate>,
    statuses: Vec<StatusCode>,
    credentials: Credentials,
    credential_headers: Vec<HeaderName>,
    max_body: usize,
    compress_above: Option<usize>,
    store_timeout: Duration,
    lease_for: Duration,
    refresh_timeout: Duration,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    respect_response_cache_control: bool,
    respect_request_cache_control: bool,
    targeted: Vec<HeaderName>,
    invalidate_on_unsafe: bool,
    near_bytes: u64,
    near_max_ttl: Duration,
    tracking: Option<Arc<dyn Tracking>>,
    fleet_wait: Duration,
    uncacheable_for: Duration,
    keep_for: Duration,
    tag_sweep_every: Option<Duration>,
    max_refreshes: usize,
    coalesced_wait: Duration,
    max_in_flight_bytes: usize,
    windows_for: Option<WindowsFn>,
    status_windows: Vec<(StatusCode, Windows)>,
    partition_by: Option<PartitionFn>,
    tags: Option<TagsFn>,
    tags_header: Option<HeaderName>,
    cache_groups: bool,
    origin_freshness: bool,
    origin_freshness_for_post: bool,
    origin_cap: Windows,
}

impl fmt::Debug for RedisCacheLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheLayerBuilder")
            .field("namespace", &self.namespace)
            .field("partition", &!self.partition.is_empty())
            .field("vary", &self.vary)
            .field("ignore_query_params", &self.ignored_query)
            .field("ignore_cookies", &self.ignored_cookies)
            .field("ignore_body_fields", &self.ignored_body)
            .field("echo_body_field", &self.echo)
            .field("fresh_for", &self.fresh_for)
            .field("stale_for", &self.stale_for)
            .field("stale_if_error_for", &self.stale_if_error_for)
            .field("refresh_ahead", &self.refresh_ahead)
            .field("methods", &self.methods)
            .field("head_from_get", &self.head_from_get)
            .field("keep_variants", &self.keep_variants)
            .field("cache_post_when", &self.post_when.is_some())
            .field("query_when", &self.query_when.is_some())
            .field("store_when", &self.store_when.is_some())
            .field("cacheable_statuses", &self.statuses)
            .field("credentials", &self.credentials)
            .field("credential_headers", &self.credential_headers)
            .field("max_body_size", &self.max_body)
            .field("compress_above", &self.compress_above)
            .field("store_timeout", &self.store_timeout)
            .field("refresh_lease_for", &self.lease_for)
            .field("refresh_timeout", &self.refresh_timeout)
            .field(
                "circuit_breaker",
                &(self.breaker_threshold, self.breaker_cooldown),
            )
            .field(
                "respect_response_cache_control",
                &self.respect_response_cache_control,
            )
            .field(
                "respect_request_cache_control",
                &self.respect_request_cache_control,
            )
            .field("targeted_cache_control", &self.targeted)
            .field("invalidate_on_unsafe", &self.invalidate_on_unsafe)
            .field("near_cache", &self.near_bytes)
            .field("near_cache_max_ttl", &self.near_max_ttl)
            .field("fleet_wait", &self.fleet_wait)
            .field("uncacheable_for", &self.uncacheable_for)
            .field("keep_for", &self.keep_for)
            .field("tag_sweep_every", &self.tag_sweep_every)
            .field("max_background_refreshes", &self.max_refreshes)
            .field("coalesced_wait", &self.coalesced_wait)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("windows_for", &self.windows_for.is_some())
            .field("windows_for_status", &self.status_windows)
            .field("partition_by", &self.partition_by.is_some())
            .field("tags", &self.tags.is_some())
            .field("tags_from_header", &self.tags_header)
            .field("cache_groups", &self.cache_groups)
            .field("origin_freshness", &self.origin_freshness)
            .field("origin_freshness_for_post", &self.origin_freshness_for_post)
            .field("origin_freshness_cap", &self.origin_cap)
            .finish_non_exhaustive()
    }
}

/// `fraction` (from 0 to below 1, as `build` checks) in thousandths, at least 1 when above 0.
fn permille(fraction: f64) -> u16 {
    if fraction <= 0.0 || fraction.is_nan() {
        return 0;
    }
    // In 1..=999 for what `build` accepts.
    ((fraction * 1000.0).round() as u16).clamp(1, 999)
}

/// One day.
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Request headers that carry credentials in common APIs, besides `Authorization` and `Cookie`: the default of
/// [`credential_headers`](RedisCacheLayerBuilder::credential_headers). A request with one is not answered from an
/// entry another request's answer left: the origin (or its gateway) never checked its credential, and its answer
/// may be its user's alone.
///
/// `Proxy-Authorization`; the API keys of AWS API Gateway and many others (`X-Api-Key`), Azure OpenAI
/// (`Api-Key`), Supabase and Kong (`Apikey`), Google (`X-Goog-Api-Key`), Azure API Management
/// (`Ocp-Apim-Subscription-Key`) and Azure Functions (`X-Functions-Key`); the tokens of OpenStack and others
/// (`X-Auth-Token`, `X-Access-Token`), AWS temporary credentials (`X-Amz-Security-Token`), GitLab
/// (`Private-Token`) and Vault (`X-Vault-Token`). And the user an authenticating proxy in front of a server
/// names, for a layer in that server: oauth2-proxy (`X-Forwarded-User`, `X-Forwarded-Email`,
/// `X-Forwarded-Access-Token`, `X-Auth-Request-User`, `X-Auth-Request-Email`, `X-Auth-Request-Access-Token`),
/// Google IAP (`X-Goog-Iap-Jwt-Assertion`, `X-Goog-Authenticated-User-Email`, `X-Goog-Authenticated-User-Id`),
/// Cloudflare Access (`Cf-Access-Jwt-Assertion`), AWS ALB (`X-Amzn-Oidc-Data`, `X-Amzn-Oidc-Identity`,
/// `X-Amzn-Oidc-Accesstoken`), Azure App Service (`X-Ms-Client-Principal`, `X-Ms-Client-Principal-Id`,
/// `X-Ms-Client-Principal-Name`, `X-Ms-Token-Aad-Access-Token`), Pomerium (`X-Pomerium-Jwt-Assertion`),
/// Cloudflare Access (`Cf-Access-Authenticated-User-Email`), Authelia's forward authentication (`Remote-User`,
/// `Remote-Email`, `Remote-Groups`), Authentik's (`X-Authentik-Username`, `X-Authentik-Email`, `X-Authentik-Uid`,
/// `X-Authentik-Groups`, `X-Authentik-Jwt`), Tailscale Serve (`Tailscale-User-Login`,
/// `Tailscale-User-Name`), Grafana's auth proxy (`X-Webauth-User`) and `X-Remote-User`: such a request often
/// carries no `Authorization` or `Cookie` of its own, and its answer is that user's. And the client certificate
/// a proxy that ended mutual TLS passes on, which names the client as surely: RFC 9440's `Client-Cert` and
/// `Client-Cert-Chain`, Envoy's and Istio's `X-Forwarded-Client-Cert`, ingress-nginx's `Ssl-Client-Cert` and
/// `Ssl-Client-Subject-Dn`, Traefik's `X-Forwarded-Tls-Client-Cert` and `X-Forwarded-Tls-Client-Cert-Info`, AWS
/// ALB's `X-Amzn-Mtls-Clientcert` (and its `-Leaf`, `-Subject` and `-Serial-Number`), Azure App Service's
/// `X-Arr-Clientcert`, Cloudflare's `Cf-Client-Cert-Der-Base64` and `Cf-Client-Cert-Sha256`, and the common
/// `X-Ssl-Client-Cert` and `X-Client-Cert`. (In a service mesh that adds `X-Forwarded-Client-Cert` to every
/// request, say how callers are told apart, [`Credentials::InKey`] for one entry per calling service, or name
/// the headers yourself.)
///
/// To add one of your own to these:
///
/// ```
/// use http::HeaderName;
/// use tower_redis_cache::cache::DEFAULT_CREDENTIAL_HEADERS;
/// use tower_redis_cache::{MemoryStore, RedisCacheLayer};
///
/// let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
///     .credential_headers(
///         DEFAULT_CREDENTIAL_HEADERS
///             .into_iter()
///             .chain([HeaderName::from_static("x-session-token")]),
///     )
///     .build()?;
/// # Ok::<(), tower_redis_cache::error::ConfigError>(())
/// ```
pub const DEFAULT_CREDENTIAL_HEADERS: [HeaderName; 59] = [
    PROXY_AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    HeaderName::from_static("apikey"),
    HeaderName::from_static("x-goog-api-key"),
    HeaderName::from_static("ocp-apim-subscription-key"),
    HeaderName::from_static("x-functions-key"),
    HeaderName::from_static("x-auth-token"),
    HeaderName::from_static("x-access-token"),
    HeaderName::from_static("x-amz-security-token"),
    HeaderName::from_static("private-token"),
    HeaderName::from_static("x-vault-token"),
    HeaderName::from_static("x-forwarded-user"),
    HeaderName::from_static("x-forwarded-email"),
    HeaderName::from_static("x-forwarded-access-token"),
    HeaderName::from_static("x-auth-request-user"),
    HeaderName::from_static("x-auth-request-email"),
    HeaderName::from_static("x-auth-request-access-token"),
    HeaderName::from_static("x-goog-iap-jwt-assertion"),
    HeaderName::from_static("x-goog-authenticated-user-email"),
    HeaderName::from_static("x-goog-authenticated-user-id"),
    HeaderName::from_static("cf-access-jwt-assertion"),
    HeaderName::from_static("x-amzn-oidc-data"),
    HeaderName::from_static("x-amzn-oidc-identity"),
    HeaderName::from_static("x-amzn-oidc-accesstoken"),
    HeaderName::from_static("x-ms-client-principal"),
    HeaderName::from_static("x-ms-client-principal-id"),
    HeaderName::from_static("x-ms-client-principal-name"),
    HeaderName::from_static("x-ms-token-aad-access-token"),
    HeaderName::from_static("x-pomerium-jwt-assertion"),
    HeaderName::from_static("x-remote-user"),
    HeaderName::from_static("cf-access-authenticated-user-email"),
    HeaderName::from_static("remote-user"),
    HeaderName::from_static("remote-email"),
    HeaderName::from_static("remote-groups"),
    HeaderName::from_static("x-authentik-username"),
    HeaderName::from_static("x-authentik-email"),
    HeaderName::from_static("x-authentik-uid"),
    HeaderName::from_static("x-authentik-groups"),
    HeaderName::from_static("x-authentik-jwt"),
    HeaderName::from_static("tailscale-user-login"),
    HeaderName::from_static("tailscale-user-name"),
    HeaderName::from_static("x-webauth-user"),
    HeaderName::from_static("client-cert"),
    HeaderName::from_static("client-cert-chain"),
    HeaderName::from_static("x-forwarded-client-cert"),
    HeaderName::from_static("ssl-client-cert"),
    HeaderName::from_static("ssl-client-subject-dn"),
    HeaderName::from_static("x-forwarded-tls-client-cert"),
    HeaderName::from_static("x-forwarded-tls-client-cert-info"),
    HeaderName::from_static("x-amzn-mtls-clientcert"),
    HeaderName::from_static("x-amzn-mtls-clientcert-leaf"),
    HeaderName::from_static("x-amzn-mtls-clientcert-subject"),
    HeaderName::from_static("x-amzn-mtls-clientcert-serial-number"),
    HeaderName::from_static("x-arr-clientcert"),
    HeaderName::from_static("cf-client-cert-der-base64"),
    HeaderName::from_static("cf-client-cert-sha256"),
    HeaderName::from_static("x-ssl-client-cert"),
    HeaderName::from_static("x-client-cert"),
];

/// Names of query parameters and JSON body members that carry credentials in common APIs, which
/// [`ignore_query_params`](RedisCacheLayerBuilder::ignore_query_params),
/// [`ignore_body_fields`](RedisCacheLayerBuilder::ignore_body_fields) and
/// [`echo_body_field`](RedisCacheLayerBuilder::echo_body_field) may not leave out of the key unless
/// [`Credentials::Partition`] says whom every request acts for: requests with different credentials would share
/// one answer, and one with a credential the origin would refuse would get an answer made for a valid one.
///
/// A name counts in any case and with its words joined by `_`, `-`, `.` or nothing (`X-Amz-Signature`,
/// `accessToken`, `api-key`): OAuth 2.0 tokens (`access_token`, `id_token`, `refresh_token`, `client_secret`,
/// `client_assertion`; RFC 6750 §2.3), API keys (Google's `key`, `api_key`, HubSpot's `hapikey`, Azure API
/// Management's `subscription_key`), tokens and sessions (`token`, `auth`, `auth_token`, `authorization`,
/// `jwt`, `session`, `session_id`, `sid`, GitLab's `private_token`, OAuth 1.0's `oauth_token` and
/// `oauth_signature`), passwords and signatures (`password`, `passwd`, `secret`, `signature`, `sig`: Azure
/// shared access signatures), and presigned URLs (AWS's `x_amz_signature`, `x_amz_credential`,
/// `x_amz_security_token`, Google Cloud Storage's `x_goog_signature`, `x_goog_credential`).
pub const CREDENTIAL_PARAMS: [&str; 30] = [
    "access_token",
    "id_token",
    "refresh_token",
    "client_secret",
    "client_assertion",
    "key",
    "api_key",
    "hapikey",
    "subscription_key",
    "token",
    "auth",
    "auth_token",
    "authorization",
    "jwt",
    "session",
    "session_id",
    "sid",
    "private_token",
    "oauth_token",
    "oauth_signature",
    "password",
    "passwd",
    "secret",
    "signature",
    "sig",
    "x_amz_signature",
    "x_amz_credential",
    "x_amz_security_token",
    "x_goog_signature",
    "x_goog_credential",
];

/// The first of [`CREDENTIAL_PARAMS`] of which `pattern` (a name, or a prefix ending in `*`) names a spelling,
/// in any case.
fn names_a_credential(pattern: &str) -> Option<&'static str> {
    let pattern = pattern.to_ascii_lowercase();
    CREDENTIAL_PARAMS.into_iter().find(|name| {
        ["_", "-", ".", ""]
            .into_iter()
            .any(|joint| super::key::names(&pattern, &name.replace('_', joint)))
    })
}

/// Session cookies of common frameworks, which an `ignore_cookies` prefix may not name: PHP, Java servlets,
/// ASP.NET and ASP.NET Core, Express, Rails (its default before an app names its own: so `_*` is refused),
/// Laravel, CodeIgniter, NextAuth and Auth.js (and their `__Secure-` forms). Lowercase.
const SESSION_COOKIES: [&str; 13] = [
    "phpsessid",
    "jsessionid",
    "asp.net_sessionid",
    ".aspnetcore.session",
    ".aspnetcore.cookies",
    "connect.sid",
    "_session_id",
    "laravel_session",
    "ci_session",
    "next-auth.session-token",
    "__secure-next-auth.session-token",
    "authjs.session-token",
    "__secure-authjs.session-token",
];

/// The `QUERY` method (safe, idempotent, with a body).
pub(crate) fn query_method() -> Method {
    Method::from_bytes(b"QUERY").unwrap_or(Method::GET)
}

impl RedisCacheLayerBuilder {
    fn new(store: Arc<dyn Store>) -> Self {
        RedisCacheLayerBuilder {
            store,
            namespace: "http-cache".into(),
            partition: Vec::new(),
            vary: Vec::new(),
            ignored_query: Vec::new(),
            ignored_cookies: Vec::new(),
            ignored_body: Vec::new(),
            echo: None,
            fresh_for: Duration::from_secs(60),
            stale_for: Duration::from_secs(60),
            stale_if_error_for: Duration::from_secs(300),
            refresh_ahead: 0.0,
            methods: vec![Method::GET, Method::HEAD, query_method()],
            head_from_get: true,
            keep_variants: true,
            post_when: None,
            query_when: None,
            store_when: None,
            statuses: default_statuses(),
            credentials: Credentials::Bypass,
            credential_headers: DEFAULT_CREDENTIAL_HEADERS.to_vec(),
            max_body: 1024 * 1024,
            compress_above: None,
            store_timeout: Duration::from_millis(50),
            lease_for: Duration::from_secs(10),
            refresh_timeout: Duration::from_secs(300),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(1),
            respect_response_cache_control: true,
            respect_request_cache_control: true,
            targeted: Vec::new(),
            invalidate_on_unsafe: true,
            near_bytes: 0,
            near_max_ttl: Duration::from_secs(60),
            tracking: None,
            fleet_wait: Duration::from_secs(5),
            uncacheable_for: Duration::from_secs(60),
            keep_for: Duration::from_secs(600),
            tag_sweep_every: Some(super::tags::SWEEP_EVERY),
            max_refreshes: 32,
            coalesced_wait: Duration::from_secs(30),
            max_in_flight_bytes: 64 * 1024 * 1024,
            windows_for: None,
            status_windows: Vec::new(),
            partition_by: None,
            tags: None,
            tags_header: None,
            cache_groups: false,
            origin_freshness: true,
            origin_freshness_for_post: false,
            origin_cap: Windows::new(DAY, DAY, DAY),
        }
    }

    /// The key prefix, so several caches can share one Redis. Default: `http-cache`. It may not contain
    /// whitespace, braces or glob characters (`{ } * ? [ ] \`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The tenant identity hashed into every key, so two tenants never share an entry: in a client stack the
    /// cache sits outside auth and cannot see `Authorization`. For an API client, the API base plus the OAuth
    /// client id. Default: empty (one tenant).
    pub fn partition(mut self, partition: impl AsRef<[u8]>) -> Self {
        self.partition = partition.as_ref().to_vec();
        self
    }

    /// Names a partition for each request, from its head: part of its key beside [`partition`](Self::partition),
    /// so requests of two partitions never share an entry. For a server whose answers depend on who asks (a
    /// tenant, a user), named by what an authentication layer in front of the cache left in the request's
    /// extensions. A request it names no partition for bypasses the cache (`Cache-Status: ...;
    /// detail=partition`): when it is not known whose answer a request would get, the cache stays out.
    /// Default: none (the layer's `partition` alone).
    ///
    /// With [`Credentials::Partition`], requests carrying credentials (`Authorization`, `Cookie`, a
    /// [credential header](Self::credential_headers)) are cached too, under their partition and not split by
    /// credential, and `private` answers are stored for it: the partition must then name everyone who may read
    /// what it holds (one user, or a tenant whose users all get the same answers). Without it, a request with a
    /// header named like a user's or a tenant's (`X-User-Id`, `X-Tenant-Id`) bypasses the cache even when the
    /// partition is read from that header: the cache cannot see what this function reads.
    /// A successful unsafe request removes the entries of its URI in its own partition. [`tags`](Self::tags)
    /// belong to the layer whatever the partition: name the partition in a tag to keep it to one.
    ///
    /// ```
    /// use tower_redis_cache::cache::Credentials;
    /// use tower_redis_cache::{MemoryStore, RedisCacheLayer};
    ///
    /// /// What the authentication layer in front of the cache leaves in each request it lets through.
    /// #[derive(Clone)]
    /// struct Tenant(String);
    ///
    /// let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
    ///     .partition_by(|parts| parts.extensions.get::<Tenant>().map(|tenant| tenant.0.clone()))
    ///     .credentials(Credentials::Partition)
    ///     .build()?;
    /// # Ok::<(), tower_redis_cache::error::ConfigError>(())
    /// ```
    pub fn partition_by<P: Into<Vec<u8>>>(
        mut self,
        partition: impl Fn(&request::Parts) -> Option<P> + Send + Sync + 'static,
    ) -> Self {
        self.partition_by = Some(Arc::new(move |parts| partition(parts).map(Into::into)));
        self
    }

    /// Request headers whose values are part of the key, so each value gets entries of its own. Default: none.
    ///
    /// A response's own `Vary` is honoured without this, and its variants are kept apart
    /// ([`keep_variants`](Self::keep_variants)). Naming here the headers an origin varies on saves the first
    /// request of another variant in each process the read of the primary entry that teaches the layer about
    /// them, and keys requests by headers the origin does not name in `Vary`. A successful write to a URI
    /// removes all of its variants (see [`invalidate_on_unsafe`](Self::invalidate_on_unsafe)).
    pub fn vary_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.vary = names.into_iter().collect();
        self
    }

    /// Whether the answers to one request that vary on request headers (the response's `Vary`, or a CORS grant
    /// to one `Origin`) are kept per variant. Default: `true`, over a store that
    /// [keeps tags](Store::keeps_tags) (both of this crate's do).
    ///
    /// Clients that differ in such a header (`Accept-Language: de` and `fr`; pages on two origins calling an API
    /// that answers CORS) then each hit their own entry. The first request of another variant reads the entry
    /// stored under the request's key, learns from its `Vary` which headers tell variants apart, and reads (or
    /// fills) its own variant under a key holding their values (`fwd=vary-miss` while that is missing); from
    /// then on this process keys such requests by their variant at once, in one store read. `Accept-Encoding`
    /// is not among those headers: one compressed entry answers every client that can decode it. An answer
    /// naming more than eight headers, or `Vary: *`, is not kept per variant. An origin that varies on a header
    /// with many values (`User-Agent`, `Cookie`) gets an entry per value: each process remembers at most 8,192
    /// keys' headers, and Redis's own memory limit bounds the entries, but few of them will be hit again.
    ///
    /// With `false`, or over a store without tags, a key holds one answer: a request of another variant misses
    /// and its answer replaces the stored one, so clients alternating between two variants evict each other.
    /// Either way an entry answers only the requests of its own variant.
    pub fn keep_variants(mut self, keep: bool) -> Self {
        self.keep_variants = keep;
        self
    }

    /// Query parameters left out of the key, so that requests differing only in them share one entry: a
    /// cache-buster (`_=1733059200`), tracking parameters (`utm_*`), a client's request id. A name ending in
    /// `*` names every parameter it begins; names are compared percent-decoded. Default: none.
    ///
    /// Only for parameters that never change the answer: a request that differs in one is answered with
    /// another's response. The origin still receives each request's whole URI; a write's invalidation of its
    /// URI removes the entry its ignored parameters share. A pair holding a `;` always counts, since some
    /// servers split there too: `utm_content=x;callback=evil` is not left out. A name that names one of
    /// [`CREDENTIAL_PARAMS`] (`access_token`, `key`, `X-Amz-Signature`, ...) makes `build` fail, unless
    /// [`Credentials::Partition`] says whom every request acts for (a service fetching its own presigned URLs).
    pub fn ignore_query_params<S: Into<String>>(
        mut self,
        names: impl IntoIterator<Item = S>,
    ) -> Self {
        self.ignored_query.extend(names.into_iter().map(Into::into));
        self
    }

    /// Cookies that do not count as credentials: analytics and consent cookies a browser sends with every
    /// request (`_ga`, `_ga_*`, `_gid`, `_fbp`, `_hj*`), which would otherwise make every browser's request
    /// bypass the cache under the default [`Credentials::Bypass`]. A request whose cookies are all named here is
    /// cached as one without any; one with any other cookie is not. A name ending in `*` names every cookie it
    /// begins. Default: none. A pair outside the cookie grammar (RFC 6265) counts as another cookie: a `,` or a
    /// space in a value, where lax servers split (Rack 2 reads `_ga=1, session=x` as two cookies), a pair
    /// without `=`.
    ///
    /// Only for cookies the origin never reads: a request is answered with a response made for another's
    /// cookies. They are not taken out of the request: the origin still receives each request's `Cookie` whole.
    /// A cookie whose name says it holds a session or a credential is never ignored, whatever pattern names it:
    /// one ending in `session`, `sessid`, `sessionid`, `session_id`, `token` or `.sid` (`PHPSESSID`,
    /// `connect.sid`, Rails' `_myapp_session`), one beginning `.AspNetCore.`, one of [`CREDENTIAL_PARAMS`]
    /// (`jwt`, `auth`); `build` fails on a name that is one, or on a prefix of one or of a framework's session
    /// cookie (`_*` names Rails' `_session_id`).
    ///
    /// In answers, setting only these cookies is no reason not to store: Cloudflare sets `__cf_bm` and `_cfuvid`
    /// on every answer of the APIs it fronts, which are otherwise never stored. The caller the origin answered
    /// gets them; the entry holds no `Set-Cookie`, and callers coalesced onto that call get none. An answer that
    /// sets any other cookie, or is `private`, is still never stored; so is one whose `Set-Cookie` holds a `,`
    /// anywhere but in an `Expires` date as servers write it, which may be fields folded into one, a session's
    /// among them, and one with a `Set-Cookie2` (RFC 2965's obsolete field, a list of cookies by design).
    pub fn ignore_cookies<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.ignored_cookies
            .extend(names.into_iter().map(Into::into));
        self
    }

    /// A top-level member of JSON request bodies that the answers repeat, as JSON-RPC's `id`: its value is left
    /// out of the key, and set in every answer a request gets from another request's origin call. Default:
    /// none.
    ///
    /// A JSON-RPC client numbers its calls, and the server answers each with its call's `id`: keyed by the
    /// whole body, no two calls share an entry, and with the `id` left out of the key
    /// ([`ignore_body_fields`](Self::ignore_body_fields)), a client would be answered with another call's `id`,
    /// which it takes for another call's answer. With `echo_body_field("id")`, calls that differ only in their
    /// `id` share an entry, and a hit, a stale answer, a coalesced caller's, a stale-if-error answer or a stored
    /// answer a `304` confirmed carries the request's own `id`, written as the request wrote it; the answer's
    /// `Content-Length` follows, and its `ETag` and the digests of its bytes are dropped. Requests without the
    /// member never share an entry with requests that have it. In a batch (a JSON array of calls, as ethers
    /// sends by default) each call's value is left out: another batch of the same calls, in the same order, is
    /// answered from it, each answer given its own call's `id` place by place; since JSON-RPC lets a server
    /// answer a batch's calls in any order, an answer that does not list them in the request's order is neither
    /// stored nor shared (`detail=response-unordered`). An answer in a `Content-Encoding` is decoded first with
    /// feature `decompress` (gzip, deflate, br, zstd, to at most [`max_body_size`](Self::max_body_size) bytes),
    /// then stored, shared and answered in no coding, without the `ETag` and digests that named the encoded
    /// bytes and with `Vary: Accept-Encoding` (so a request that refuses an answer in no coding is never given
    /// it), unless its request refuses an answer in no coding (`identity;q=0`); one left encoded, whose member
    /// cannot be set, is neither stored nor shared either (`detail=response-encoded`). A request body in a
    /// `Content-Encoding` is read decoded with that feature (see [`query_when`](Self::query_when)), so that its
    /// member is found there too; without it, such a body shares no entry. `build` refuses a member
    /// that carries credentials ([`CREDENTIAL_PARAMS`]) unless [`Credentials::Partition`] says whom every
    /// request acts for: each request would get its own token back in an answer made for another's.
    ///
    /// ```
    /// use http::Method;
    /// use tower_redis_cache::cache::jsonrpc;
    /// use tower_redis_cache::{MemoryStore, RedisCacheLayer};
    ///
    /// // An Ethereum node's JSON-RPC reads, shared by clients however they number their calls.
    /// let layer = RedisCacheLayer::builder(MemoryStore::new(64 << 20))
    ///     .methods([Method::POST])
    ///     .query_when(|_, body| jsonrpc::only_calls_to(body, &["eth_chainId", "eth_getCode"]))
    ///     .store_when(|_, _, body| jsonrpc::is_success(body))
    ///     .echo_body_field("id")
    ///     .build()?;
    /// # Ok::<_, tower_redis_cache::error::ConfigError>(())
    /// ```
    pub fn echo_body_field(mut self, name: impl Into<String>) -> Self {
        self.echo = Some(name.into());
        self
    }

    /// Members of JSON request bodies left out of the key, named by JSON Pointers (RFC 6901: `/requestId`,
    /// `/meta/traceId`, `~1` for a `/` in a name), so that queries differing only in them (a request id, a
    /// timestamp, a nonce) share one entry. Names are compared as decoded (`"\u0061"` is `a`); a pointer leads
    /// through objects only, never into an array. A body that is not JSON the key canonicalises is keyed by
    /// its bytes, whole. Default: none.
    ///
    /// Only for members that never change the answer: a query that differs in one is answered with another's
    /// response. The origin still receives each body whole. A member named as one of [`CREDENTIAL_PARAMS`]
    /// (`/apiKey`, `/auth/access_token`) makes `build` fail, unless [`Credentials::Partition`] says whom every
    /// request acts for.
    pub fn ignore_body_fields<S: Into<String>>(
        mut self,
        pointers: impl IntoIterator<Item = S>,
    ) -> Self {
        self.ignored_body
            .extend(pointers.into_iter().map(Into::into));
        self
    }

    /// How long a stored response is fresh (answered with no inner call). Default: 60 s.
    ///
    /// These three are the windows of an answer whose origin does not say (see
    /// [`origin_freshness`](Self::origin_freshness)). All three at zero make an HTTP cache that stores only
    /// what the origin (or [`windows_for`](Self::windows_for), [`windows_for_status`](Self::windows_for_status))
    /// says to keep.
    pub fn fresh_for(mut self, fresh_for: Duration) -> Self {
        self.fresh_for = fresh_for;
        self
    }

    /// How long after freshness ends the entry is still served at once while one background refresh runs
    /// (stale-while-revalidate). Default: 60 s. Zero turns it off.
    pub fn stale_for(mut self, stale_for: Duration) -> Self {
        self.stale_for = stale_for;
        self
    }

    /// How long after freshness ends the entry may answer when the inner service fails (a transport error, or
    /// a status the retry layer retries: 408, 429, 500, 502, 503, 504, Cloudflare's 520-524, 529). Default:
    /// 300 s. Zero turns it off.
    pub fn stale_if_error_for(mut self, stale_if_error_for: Duration) -> Self {
        self.stale_if_error_for = stale_if_error_for;
        self
    }

    /// Refreshes an entry ahead of its expiry: a hit in the last `fraction` of the entry's fresh lifetime
    /// (`0.2`: its last fifth) is answered as fresh and starts the entry's one background refresh, as a stale
    /// hit does (one per key for the whole fleet, within
    /// [`max_background_refreshes`](Self::max_background_refreshes)). A key that keeps being asked for is
    /// renewed before it goes stale: its callers neither get a stale answer nor wait for the origin when it
    /// expires, even with [`stale_for`](Self::stale_for) zero. A key not asked for in that part of its life
    /// goes stale (or expires) as before. The hit that started the refresh says `detail=refreshing` in its
    /// `Cache-Status` (its outcome is a plain [`Hit`](super::CacheOutcome::Hit)); a near cache stops answering
    /// an entry that is due, so that a hit reaches the store and starts the refresh. Default: 0, off; `build`
    /// refuses a fraction below 0, from 1 on, or not a number.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_redis_cache::{MemoryStore, RedisCacheLayer};
    /// // Fresh for 10 minutes, never answered stale; a key asked for in its last 2 minutes is renewed meanwhile.
    /// let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
    ///     .fresh_for(Duration::from_secs(600))
    ///     .stale_for(Duration::ZERO)
    ///     .refresh_ahead(0.2)
    ///     .build()?;
    /// # Ok::<(), tower_redis_cache::error::ConfigError>(())
    /// ```
    pub fn refresh_ahead(mut self, fraction: f64) -> Self {
        self.refresh_ahead = fraction;
        self
    }

    /// Chooses the windows of each request from its head (for example by path, or by a header), so that one
    /// layer caches a fast-changing lookup briefly and a static listing long; `None` keeps the layer's windows
    /// ([`fresh_for`](Self::fresh_for), [`stale_for`](Self::stale_for),
    /// [`stale_if_error_for`](Self::stale_if_error_for)). A [`CacheOverride`](super::CacheOverride) request extension wins over it
    /// for one call. Default: none.
    pub fn windows_for(
        mut self,
        choose: impl Fn(&request::Parts) -> Option<Windows> + Send + Sync + 'static,
    ) -> Self {
        self.windows_for = Some(Arc::new(choose));
        self
    }

    /// The windows of answers with `status`, whatever their request's windows: a `404` kept for seconds
    /// where found resources are kept for an hour (negative caching), or a `410 Gone` for a day. The status
    /// must be one of the [`cacheable_statuses`](Self::cacheable_statuses). A call's own
    /// [`CacheOverride`](super::CacheOverride) still wins, and so do the origin's freshness headers where they
    /// count ([`origin_freshness`](Self::origin_freshness)). Called again for the same status, the last
    /// windows stand. Default: none.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use http::StatusCode;
    /// # use tower_redis_cache::{MemoryStore, RedisCacheLayer, cache::Windows};
    /// // An id that is not there yet may be created any moment: ask again after ten seconds.
    /// let brief = Windows::new(Duration::from_secs(10), Duration::ZERO, Duration::ZERO);
    /// let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
    ///     .fresh_for(Duration::from_secs(3600))
    ///     .cacheable_statuses([StatusCode::OK, StatusCode::NOT_FOUND])
    ///     .windows_for_status(StatusCode::NOT_FOUND, brief)
    ///     .build()?;
    /// # Ok::<(), tower_redis_cache::error::ConfigError>(())
    /// ```
    pub fn windows_for_status(mut self, status: StatusCode, windows: Windows) -> Self {
        self.status_windows.retain(|(listed, _)| *listed != status);
        self.status_windows.push((status, windows));
        self
    }

    /// Lets the origin's own freshness headers set an entry's windows: `s-maxage`, else `max-age`, else
    /// `Expires` (less `Age`) the fresh window; `stale-while-revalidate=N` and `stale-if-error=N` the others;
    /// `no-cache` stores the response but never answers without asking the origin (conditionally, when it has
    /// an `ETag` or `Last-Modified`); `must-revalidate`, `proxy-revalidate` and `s-maxage` forbid stale
    /// answers. What the origin says is capped by [`origin_freshness_cap`](Self::origin_freshness_cap); what it
    /// does not say, the request's windows give. Default: true, for `GET` and `HEAD` (other
    /// methods: [`origin_freshness_for_post`](Self::origin_freshness_for_post)).
    pub fn origin_freshness(mut self, honour: bool) -> Self {
        self.origin_freshness = honour;
        self
    }

    /// Lets the origin's freshness headers count for `POST` and `QUERY` too. Default: false, since APIs often
    /// mark query answers uncacheable while caching them is this layer's purpose.
    pub fn origin_freshness_for_post(mut self, honour: bool) -> Self {
        self.origin_freshness_for_post = honour;
        self
    }

    /// The longest windows the origin's headers may set (the layer's own windows are not bounded by it).
    /// Default: one day each.
    pub fn origin_freshness_cap(mut self, cap: Windows) -> Self {
        self.origin_cap = cap;
        self
    }

    /// The cacheable methods, replacing the default `GET`, `HEAD`, `QUERY`. Add `POST` to cache POST queries by
    /// their body. What such a query sends to the inner service carries the
    /// [`Idempotent`](crate::retry::Idempotent) extension, so that a [`RetryLayer`](crate::RetryLayer) below
    /// retries it as it does a `GET`.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Whether a `HEAD` is answered from the entry of the `GET` of the same request (RFC 9110 §9.3.2: its
    /// answer is the `GET`'s without the body), when both methods are cached. Default: true.
    ///
    /// A `HEAD` is then keyed, coalesced and stored as that `GET`: a hit answers with the `GET`'s status and
    /// header fields (and a `Content-Length` of its body when the origin gave none), and a miss asks the origin
    /// for the `GET`, so that its answer fills the entry that later `GET`s and `HEAD`s both read. A `HEAD` the
    /// cache does not consult (credentials, `no-store`, ...) goes to the origin as a `HEAD`. Turn it off for an
    /// origin whose `HEAD` answers differ from its `GET`s', or whose `GET` bodies are too costly to ask for
    /// on a `HEAD` miss: each `HEAD` then has entries of its own.
    pub fn head_from_get(mut self, answer: bool) -> Self {
        self.head_from_get = answer;
        self
    }

    /// Caches the `POST` requests for which `when` returns true (for example one route), keyed by their body.
    /// Default: no `POST` is cached.
    pub fn cache_post_when(
        mut self,
        when: impl Fn(&request::Parts) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.post_when = Some(Arc::new(when));
        self
    }

    /// Tells, from its head and its body, whether a request the layer would key by its body (a cached `POST`, a
    /// `QUERY`) is a query. Default: every such request is one.
    ///
    /// For an API whose queries and writes share one route: a GraphQL `mutation` and a `query` are both a
    /// `POST /graphql` (give it [`graphql::is_query`](super::graphql::is_query)); a JSON-RPC call that sends a
    /// transaction and one that reads a balance are both a `POST /`. A request `when` refuses goes to the origin
    /// uncached (`fwd=method`), and a refused `POST` counts as the write it is: when it succeeds, the entries of
    /// its URI go, the queries sent to it included ([`invalidate_on_unsafe`](Self::invalidate_on_unsafe)). `body`
    /// is the request's whole body, within [`max_body_size`](Self::max_body_size), before canonicalisation; `when`
    /// runs once per such request, after the `_method` checks, and also for one bypassed for its credentials, so
    /// that its writes remove entries too.
    ///
    /// A `POST` whose body `when` cannot be given (over `max_body_size`, or in a coding that does not undo within
    /// it, below) goes to the origin uncached and counts as a write: `when` cannot tell, and a write taken for a
    /// query would leave what it changed in the cache, where a query taken for a write costs a refill. A GraphQL
    /// upload is such a write. Keep `max_body_size` above the largest query; the first such body is logged at
    /// `warn`.
    ///
    /// A body in a `Content-Encoding` (a client that compresses its queries, as Elasticsearch's and OpenSearch's
    /// can) is given decoded with feature `decompress`: gzip, deflate, br and zstd, and stacks of them, to at most
    /// `max_body_size` bytes. The key then holds what it decodes to (its JSON canonical, after a marker that keeps
    /// it apart from any body keyed as it came), so two compressions of one query share an entry; the same query
    /// in no coding keeps one of its own. The origin is sent the bytes as they came. One that does not decode so
    /// (corrupt, cut short, or larger) bypasses the cache as it came (`detail=request-undecodable`,
    /// [`BypassReason::RequestUndecodable`](super::BypassReason)), unread, as a body over the cap does. Without
    /// the feature, or in another coding, `when` gets the bytes as they came, in which a predicate that reads
    /// JSON finds no query: the first time `when` refuses such a body, the layer logs a warning naming the coding.
    ///
    /// ```
    /// use http::Method;
    /// use tower_redis_cache::{MemoryStore, RedisCacheLayer};
    ///
    /// // A JSON-RPC endpoint: the reads are cached, every other call is a write; each answer carries its
    /// // own call's `id`.
    /// let layer = RedisCacheLayer::builder(MemoryStore::new(64 << 20))
    ///     .methods([Method::POST])
    ///     .query_when(|_, body| {
    ///         let reads = ["eth_call", "eth_getBalance", "eth_getCode"];
    ///         tower_redis_cache::cache::jsonrpc::only_calls_to(body, &reads)
    ///     })
    ///     .echo_body_field("id")
    ///     .build()?;
    /// # Ok::<_, tower_redis_cache::error::ConfigError>(())
    /// ```
    pub fn query_when(
        mut self,
        when: impl Fn(&request::Parts, &[u8]) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.query_when = Some(Arc::new(when));
        self
    }

    /// Tells, from its status, headers and whole body, whether an answer the other rules would store is stored.
    /// Default: every such answer is.
    ///
    /// For an API that reports errors inside a `200`: a GraphQL answer with `errors` (give it
    /// [`graphql::is_success`](super::graphql::is_success)), a JSON-RPC `error`
    /// ([`jsonrpc::is_success`](super::jsonrpc::is_success)), an envelope with
    /// `"ok": false`. Stored, such an answer would be served for the entry's whole lifetime. A refused answer is
    /// taken for a failing origin's, as a `503` is: it is not stored and leaves no
    /// [`uncacheable_for`](Self::uncacheable_for) marker (the next answer may be good), it goes to the callers
    /// coalesced onto its request too (they asked the same thing at the same time), an entry inside its
    /// [`stale_if_error_for`](Self::stale_if_error_for) window answers in its place (`fwd=stale;
    /// fwd-status=200`), and a background refresh it answers leaves the stale entry as it was. Otherwise its
    /// `Cache-Status` says `detail=response-refused`, and
    /// [`CacheStats::not_stored_for`](super::CacheStats::not_stored_for) counts it.
    ///
    /// `when` is asked about the answers the other rules would store (and, with an entry inside its
    /// stale-if-error window, about any answer with a [cacheable status](Self::cacheable_statuses)), never on a
    /// hit; `body` is the body as the origin sent it, within [`max_body_size`](Self::max_body_size). An answer
    /// in a `Content-Encoding` (its client sent `Accept-Encoding`, as tower-http's decompression layer does from
    /// outside the cache) is given decoded with feature `decompress`: gzip, deflate, br and zstd, and stacks of
    /// them, to at most `max_body_size` bytes; one that does not decode so (corrupt, cut short, or larger) is not
    /// asked about and not stored (`detail=response-undecodable`, [`NotStored::Undecodable`](super::NotStored)),
    /// but goes to its callers as the origin's answer. The entry keeps the bytes as they came, in their coding.
    /// Without the feature, or in another coding, `when` gets the bytes as they came, which
    /// [`graphql::is_success`](super::graphql::is_success) and [`jsonrpc::is_success`](super::jsonrpc::is_success)
    /// never take for a success: the first time `when` refuses such an answer, the layer logs a warning.
    ///
    /// ```
    /// use http::Method;
    /// use tower_redis_cache::{MemoryStore, RedisCacheLayer};
    ///
    /// // An API whose answers say `"ok": false` when they failed: those are not kept.
    /// let layer = RedisCacheLayer::builder(MemoryStore::new(64 << 20))
    ///     .methods([Method::POST])
    ///     .store_when(|_, _, body| {
    ///         let answer: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    ///         answer["ok"] == true
    ///     })
    ///     .build()?;
    /// # Ok::<_, tower_redis_cache::error::ConfigError>(())
    /// ```
    pub fn store_when(
        mut self,
        when: impl Fn(StatusCode, &HeaderMap, &[u8]) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.store_when = Some(Arc::new(when));
        self
    }

    /// The response statuses that are stored, replacing the default `200`, `203`, `204`. `206` and `304` are
    /// never stored (`build` refuses them).
    pub fn cacheable_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// How requests carrying credentials (`Authorization`, `Cookie`, a
    /// [credential header](Self::credential_headers)) are cached. Default: [`Credentials::Bypass`], they go to
    /// the inner service uncached, so no user is ever answered with another's response.
    /// [`Credentials::InKey`] gives each credential entries of its own; [`Credentials::Partition`] declares
    /// that each request acts for whom its partition names ([`partition`](Self::partition), and
    /// [`partition_by`](Self::partition_by)).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// Request headers that carry credentials besides `Authorization` and `Cookie`: an API key, a session or
    /// tenant token. A request with any of them is treated as one with `Authorization`, by the
    /// [`credentials`](Self::credentials) rule: by default it bypasses the cache (`Cache-Status: ...;
    /// detail=authorization`); with [`Credentials::InKey`] their values are part of the key. A header no list
    /// names but whose name says it carries a credential or names whom the request acts for (its last word
    /// `token`, `key`, `secret`, `signature`, `cert`, `auth`, `user`, `email`, `roles`, `groups`, `tenant`, ...:
    /// `X-Shopify-Access-Token`, `Dd-Api-Key`, `X-User-Id`, `X-Auth-Email`, `X-Forwarded-Groups`, `X-Tenant-Id`,
    /// `X-Scope-OrgID`; Kubernetes' `Impersonate-*`; not `Idempotency-Key` nor a browser's `Sec-Fetch-User`) is in
    /// no key: a request with one bypasses the cache unless a [`Credentials::Partition`] says whom every request
    /// acts for (as it must when [`partition_by`](Self::partition_by) reads such a header), or the layer keys by it
    /// (named here, under `InKey`, or in [`vary_headers`](Self::vary_headers)). Any other header the cache does
    /// not know is taken not to change the answer: requests that differ only in it share one entry.
    /// Default: [`DEFAULT_CREDENTIAL_HEADERS`] (`Proxy-Authorization`, API keys and tokens such as `X-Api-Key`
    /// and `Ocp-Apim-Subscription-Key`, the user an authenticating proxy names, such as `X-Forwarded-User`, and the
    /// client certificate a proxy that ended mutual TLS passes on, such as `X-Forwarded-Client-Cert`); the names
    /// given replace them (none: requests carrying them are cached as any other, but for a name like a
    /// credential's).
    ///
    /// ```
    /// use http::HeaderName;
    /// use http::header::PROXY_AUTHORIZATION;
    /// use tower_redis_cache::{MemoryStore, RedisCacheLayer};
    ///
    /// let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
    ///     .credential_headers([PROXY_AUTHORIZATION, HeaderName::from_static("x-session-token")])
    ///     .build()?;
    /// # Ok::<(), tower_redis_cache::error::ConfigError>(())
    /// ```
    pub fn credential_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.credential_headers = names.into_iter().collect();
        self
    }

    /// The largest request or response body the cache buffers. A larger request bypasses the cache (a body
    /// found larger while being read goes on as what was read chained with the rest of its stream, never held
    /// whole); a larger response is streamed through unstored. Default: 1 MiB. With feature `decompress`, a body
    /// in a `Content-Encoding` is read decoded to at most this many bytes too: a request whose body holds more
    /// bypasses (`detail=request-undecodable`), and an answer that [`store_when`](Self::store_when) would judge
    /// is not stored (`detail=response-undecodable`). Under [`query_when`](Self::query_when), a `POST` whose body
    /// it cannot read so counts as a write.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Stores response bodies longer than `bytes` LZ4-compressed, when that makes them at least an eighth
    /// shorter (JSON often shrinks to a third or less); others, and bodies the origin already encoded (a
    /// `Content-Encoding`), are stored as they are. Default: off.
    ///
    /// Redis then holds, and sends over the network on every hit, the compressed bytes (a 64 KiB JSON report
    /// took 16 KiB in the crate's benchmark); each hit read from Redis decompresses its body (there, about
    /// 12 µs for that report: worth it where the network to Redis is slower than loopback, or its memory
    /// dear), while the near cache keeps bodies decompressed. Every process of this crate with the
    /// `compression` feature reads compressed entries whatever this setting; one without the feature, or of a
    /// version before it, takes them for a miss and stores its own, uncompressed.
    #[cfg(feature = "compression")]
    #[cfg_attr(docsrs, doc(cfg(feature = "compression")))]
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.compress_above = Some(bytes);
        self
    }

    /// The longest any store call may take before the request goes on without it. Default: 50 ms.
    ///
    /// It is measured on the monotonic clock, as the store's own waiting is: paused Tokio time (in tests) does
    /// not make a store call time out.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// How long the lease of a key lives (`SET NX PX`, with a token only its holder can extend or release):
    /// the lease keeps other processes from refreshing or filling the same key. Its holder renews it every
    /// third of this while its origin call runs, so it expires this long after a holder dies. A failed refresh
    /// keeps the lease until it expires, which spaces out retries. An answer is stored only while its fill still
    /// holds the lease (see [`invalidate_on_unsafe`](Self::invalidate_on_unsafe)), so keep this well above a
    /// store round trip; a renewal that finds the lease removed by a write ends the sharing of that call, so
    /// without a near cache (which hears of the removal at once) a shorter lease also shortens how long a slow
    /// call's older answer reaches callers after a write elsewhere.
    /// Default: 10 s.
    pub fn refresh_lease_for(mut self, lease_for: Duration) -> Self {
        self.lease_for = lease_for;
        self
    }

    /// The longest a background refresh may run, its lease and store calls included. A refresh still running
    /// then is abandoned and counted as failed (the entry stays as it was, the lease until it expires), so an
    /// inner service that never answers cannot hold the key's refresh for good: the next stale hit starts
    /// another. Set it above the longest time the inner service may legitimately take, retries included.
    /// Default: 5 min.
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.refresh_timeout = timeout;
        self
    }

    /// Once `failures` store failures have piled up (a failure counts two, a success takes one off, and only
    /// the last 10 s count, so a run of failures or more than a third of calls failing both get there), skip the
    /// store for `cooldown`, then let one call probe; a success closes it again. Over a
    /// [`RedisStore`](crate::RedisStore), each connection its clients make while the breaker is open also lets
    /// one call probe at once: a connection lost and made again (a Redis restart, a connection closed by a proxy
    /// or `CLIENT KILL`) fails every call in flight together, which opens the breaker, and caching resumes as soon
    /// as the store is back rather than a cooldown later. When calls time out, opening and a failed probe also
    /// have the store make its connections again ([`Store::reconnect`], at most every 5 s). Default: 5 failures,
    /// 1 s.
    pub fn circuit_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = failures;
        self.breaker_cooldown = cooldown;
        self
    }

    /// Honour `Cache-Control: no-store` and `private` on responses: they are then neither stored nor shared
    /// with coalesced callers (`Cache-Status: ...; detail=response-no-store`). Default: true. Turning it off
    /// stores such responses anyway (an API that marks everything `no-store` while its answers are the same for
    /// every caller of one client); `build` then requires a [`partition`](Self::partition) naming whose
    /// responses these are. Such an API usually also says `no-cache`, `must-revalidate` or `Expires: 0`: turn
    /// [`origin_freshness`](Self::origin_freshness) off too, so the layer's windows apply (the Genesys client
    /// does both). `Set-Cookie` (and `Set-Cookie2`) responses are never stored either way.
    ///
    /// A `private` or `no-cache` that names fields (`private="X-User"`, `no-cache="Set-Cookie"`) counts as the
    /// plain directive: RFC 9111 (§5.2.2.4, §5.2.2.7) would let a shared cache keep the rest of the response
    /// without those fields, but an origin that names one field may have put more of its user in the body, and most
    /// caches read the directives so too.
    pub fn respect_response_cache_control(mut self, respect: bool) -> Self {
        self.respect_response_cache_control = respect;
        self
    }

    /// Honour what a request's own `Cache-Control` (and `Pragma: no-cache`) asks of the cache (RFC 9111 §5.2.1):
    /// `no-cache`, and a `max-age` or `min-fresh` the entry does not meet, send it to the origin; `no-store` sends
    /// it past the cache; `max-stale` takes an older answer; `only-if-cached` takes a stored answer or a `504`.
    /// Default: true, for a stack whose requests are its own application's (a client's cache), where they say
    /// what the application needs.
    ///
    /// In front of a server, each of its clients could then send every request to the origin with one header,
    /// and many do without meaning to: a browser's reload sends `Cache-Control: max-age=0` (`no-cache` when
    /// forced), and front-end code often adds `no-cache` to every API call to keep the browser's own cache out.
    /// Turn it off there, as Varnish, nginx and the CDNs do by default: a request is then answered as one
    /// without those fields would be, and a field that cannot be read no longer bypasses the cache. What keys a
    /// request and the shared-cache rules are the same either way; only the client's say over freshness goes.
    ///
    /// ```
    /// use http::{Request, Response};
    /// use http_body_util::Empty;
    /// use tower::{ServiceBuilder, ServiceExt, service_fn};
    /// use tower_redis_cache::{CacheOutcome, MemoryStore, RedisCacheLayer, RequestBody};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_redis_cache::error::BoxError> {
    /// let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
    ///     .respect_request_cache_control(false) // a server's cache: its clients do not choose
    ///     .build()?;
    /// let origin = service_fn(|_: Request<RequestBody>| async {
    ///     Ok::<_, http::Error>(Response::new(Empty::<bytes::Bytes>::new()))
    /// });
    /// let service = ServiceBuilder::new().layer(layer).service(origin);
    /// let reload = || {
    ///     Request::get("https://app.example/report")
    ///         .header("cache-control", "no-cache")
    ///         .body(RequestBody::empty())
    /// };
    /// service.clone().oneshot(reload()?).await?;
    /// let second = service.oneshot(reload()?).await?;
    /// assert_eq!(CacheOutcome::of(&second), Some(CacheOutcome::Hit));
    /// # Ok(()) }
    /// ```
    pub fn respect_request_cache_control(mut self, respect: bool) -> Self {
        self.respect_request_cache_control = respect;
        self
    }

    /// Targeted cache-control fields (RFC 9213) that speak to this cache, most applicable first. A response
    /// holding one of them with a valid, non-empty value is governed by the first such field, and its
    /// `Cache-Control` and `Expires` are ignored: an origin can keep browsers from storing an answer
    /// (`Cache-Control: no-store`) while this cache holds it for a minute (`CDN-Cache-Control: max-age=60`), or
    /// the other way round. The field's directives, and what they do, are those of `Cache-Control` (see
    /// [`origin_freshness`](Self::origin_freshness) and
    /// [`respect_response_cache_control`](Self::respect_response_cache_control)); its value is read as a
    /// Structured Field Dictionary (RFC 8941), and one that does not parse as one (`Max-Age=60`, a trailing comma)
    /// counts for nothing: the next field on the list, and at last `Cache-Control`, governs instead. The fields are
    /// passed on in the response. `build` refuses a list that names `Cache-Control` itself. Default: none, so that
    /// a `CDN-Cache-Control` meant for a CDN in front changes nothing here; name it when this cache should obey it
    /// too, or a field of your own before it.
    ///
    /// ```
    /// use http::{HeaderName, Request, Response};
    /// use http_body_util::Empty;
    /// use tower::{ServiceBuilder, ServiceExt, service_fn};
    /// use tower_redis_cache::{CacheOutcome, MemoryStore, RedisCacheLayer, RequestBody};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_redis_cache::error::BoxError> {
    /// let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
    ///     .targeted_cache_control([
    ///         HeaderName::from_static("app-cache-control"),
    ///         HeaderName::from_static("cdn-cache-control"),
    ///     ])
    ///     .build()?;
    /// let origin = service_fn(|_: Request<RequestBody>| async {
    ///     let response = Response::builder()
    ///         .header("cache-control", "no-store") // for browsers
    ///         .header("cdn-cache-control", "max-age=60") // for the shared caches
    ///         .body(Empty::<bytes::Bytes>::new())?;
    ///     Ok::<_, http::Error>(response)
    /// });
    /// let service = ServiceBuilder::new().layer(layer).service(origin);
    /// let request = || Request::get("https://app.example/feed").body(RequestBody::empty());
    /// service.clone().oneshot(request()?).await?;
    /// let second = service.oneshot(request()?).await?;
    /// assert_eq!(CacheOutcome::of(&second), Some(CacheOutcome::Hit));
    /// assert_eq!(second.headers()["cache-control"], "no-store"); // still what browsers get
    /// # Ok(()) }
    /// ```
    pub fn targeted_cache_control(mut self, fields: impl IntoIterator<Item = HeaderName>) -> Self {
        self.targeted = fields.into_iter().collect();
        self
    }

    /// Drop what the cache holds for a URI when an unsafe request to it succeeds (RFC 9111 §4.4): a `PUT`, `PATCH`,
    /// `DELETE`, a `POST` the layer does not cache, or any method not known to be safe, answered with a status
    /// below 400, or not answered by the origin at all (a transport error or a timeout, or a gateway's `502` or
    /// `504`, and Cloudflare's `520` or `524`, after any of which the origin may have made the change: the caller
    /// gets the error), removes the entries a `GET` and a `HEAD` of that URI with the request's headers would use,
    /// and those of the URIs of the same origin its answer names in `Location` or `Content-Location` (absolute URIs
    /// and absolute paths), in Redis (so in every process, near caches included) before the response is returned.
    /// Every response stored for those URIs goes, whoever stored it, where the keys alone cannot name it: when the
    /// key holds request headers ([`vary_headers`](Self::vary_headers), [`Credentials::InKey`], or the values of
    /// those an answer varies on: [`keep_variants`](Self::keep_variants)), every variant; and the entries of the
    /// queries sent to those URIs (`QUERY`, a cached `POST`), keyed by their bodies. Such fills record their key
    /// under their URI's own tag (one more store call per fill, beside the key's lease, and a small set per URI in
    /// the store), and a write walks it; a [`Store`] that does not [keep tags](Store::keeps_tags) reaches only the
    /// `GET` and `HEAD` entries the request's own headers key.
    /// [`CacheHandle::invalidate_uri`](super::CacheHandle::invalidate_uri) removes the same for a change the cache
    /// did not see. The removal is a store call like the others, under the timeout and the breaker; if it fails,
    /// the entries live out their windows. Default: true.
    ///
    /// A miss or refresh of that URI already waiting on the origin, in any process, may bring back what the
    /// origin held before the change: its answer goes to its own callers but is not stored, since the removal
    /// takes the key's lease too and answers are stored only under a lease still held (counted in
    /// `stores_fenced`). Callers of this process arriving after the removal do not share that call. In another
    /// process they stop sharing it as soon as its [`near_cache`](Self::near_cache) hears that the lease is gone
    /// (the store's push, then one read of the lease); without one, at the lease's next renewal (every third
    /// of [`refresh_lease_for`](Self::refresh_lease_for)), which finds it gone.
    pub fn invalidate_on_unsafe(mut self, invalidate: bool) -> Self {
        self.invalidate_on_unsafe = invalidate;
        self
    }

    /// Tags each request from its head: the entries stored with a tag are removed together by
    /// [`CacheHandle::invalidate_tag`](super::CacheHandle::invalidate_tag), in every process, and by a
    /// successful unsafe request (`PUT`, `PATCH`, `DELETE`, an uncached `POST`) that has the tag, when
    /// [`invalidate_on_unsafe`](Self::invalidate_on_unsafe) is on. This is how a write reaches the listings
    /// and queries it changes, whose URIs it does not name. Default: none.
    ///
    /// ```
    /// # use tower_redis_cache::{MemoryStore, RedisCacheLayer};
    /// // `/orders`, `/orders?status=open` and `/orders/17` are tagged `orders`; `/orders/17` also `order:17`.
    /// let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
    ///     .tags(|parts| {
    ///         let mut segments = parts.uri.path().split('/').skip(1);
    ///         match (segments.next(), segments.next()) {
    ///             (Some("orders"), Some(id)) if !id.is_empty() => vec!["orders".into(), format!("order:{id}")],
    ///             (Some("orders"), _) => vec!["orders".into()],
    ///             _ => Vec::new(),
    ///         }
    ///     })
    ///     .build()?;
    /// // A successful `PUT /orders/17` now removes every `orders` entry; or, from anywhere:
    /// // layer.handle().invalidate_tag("orders").await?;
    /// # Ok::<(), tower_redis_cache::error::ConfigError>(())
    /// ```
    ///
    /// Tags belong to the layer's [`partition`](Self::partition). The function runs only for requests that
    /// fill an entry and for unsafe requests, never on a hit. Each tag costs one store call per fill, made
    /// beside the key's lease (in its round trip) and before the origin is asked (so that a removal finds
    /// every fill that may bring back what it removes); a fill whose tags cannot be recorded (the store
    /// failing) is answered but not stored, and so is a request with more than 32 tags (`Cache-Status`
    /// `detail=tags`, [`NotStored::Tags`](super::NotStored::Tags)). A tag's set holds the keys of its entries
    /// for as long as they may live, and drops them as they expire.
    ///
    /// The sets are Redis keys like the entries, but without a TTL (their members keep their own expiry), so a
    /// Redis that evicts only keys with one (`maxmemory` under a `volatile-*` policy, the usual one of managed
    /// Redis) never evicts a set from under the entries it names. Under an `allkeys-*` policy it may, and a
    /// removal of that tag then misses them: they live out their windows (the store says so once at `warn`).
    /// Sets whose entries all expired are swept by one process of the fleet (see
    /// [`tag_sweep_every`](Self::tag_sweep_every)).
    pub fn tags(
        mut self,
        tag: impl Fn(&request::Parts) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.tags = Some(Arc::new(tag));
        self
    }

    /// Tags each stored answer with what its response field `name` lists (space- or comma-separated), as a
    /// server names what an answer is made of: `Cache-Tag: order:17 order:18` on a search result lets
    /// [`CacheHandle::invalidate_tag`](super::CacheHandle::invalidate_tag)`("order:17")`, or a write tagged
    /// `order:17` by [`tags`](Self::tags), remove that result, whatever its URI. The tags join those of
    /// [`tags`](Self::tags); the field is kept in the answer. Default: none.
    ///
    /// An answer whose tags are only known once it arrives may predate a removal that ran while it was
    /// fetched: each fill reads the namespace's tag clock (one store call) before it asks the origin, and an
    /// answer with a tag removed since is answered but not stored (counted in `stores_fenced`). So is one
    /// whose field cannot be read (a byte outside visible ASCII) or names more than 32 tags (`detail=tags`,
    /// [`NotStored::Tags`](super::NotStored::Tags)), or whose tags cannot be recorded. The tag clock lives on one Redis node and never falls behind that server's
    /// clock, so across a failover of that node the guarantee assumes the servers' clocks roughly agree.
    ///
    /// Which call in flight will answer with a tag is not known while it runs, so a removal of a tag makes
    /// this process's callers arriving afterwards start calls of their own rather than join one already in
    /// flight. Another process with a [`near_cache`](Self::near_cache) does the same once it hears of the
    /// removal (the push for the tag's mark); without one, such a call is still shared with callers arriving
    /// there afterwards (its answer is not stored).
    pub fn tags_from_header(mut self, name: HeaderName) -> Self {
        self.tags_header = Some(name);
        self
    }

    /// How often the fleet sweeps this namespace's tag sets: dropping the keys of expired entries from them, the
    /// sets all of whose entries expired, and the marks tag removals leave, a day after
    /// ([`CacheHandle::sweep_tags`](super::CacheHandle::sweep_tags); on Redis a `SCAN` of every primary, about
    /// half a millisecond of Redis's time per 500 keys). Each recording already drops its set's expired members;
    /// the sweep is for the sets no fill records in any more, which, like the marks, carry no TTL (see
    /// [`tags`](Self::tags)) and would otherwise stay. A process looks whether a sweep is due at a fill that
    /// records tags, at most every ten minutes (or this often, if shorter), and sweeps if it takes the fleet's
    /// turn (a lease in the store for this long), so one process of the fleet sweeps per turn.
    ///
    /// `None`: the layer never sweeps on its own, for a deployment that runs
    /// [`sweep_tags`](super::CacheHandle::sweep_tags) from a job of its own (at a quiet hour, say). Default: one
    /// hour.
    pub fn tag_sweep_every(mut self, every: Option<Duration>) -> Self {
        self.tag_sweep_every = every;
        self
    }

    /// Follows HTTP Cache Groups (RFC 9875): an answer's `Cache-Groups` field (a List of Strings: `Cache-Groups:
    /// "articles", "article/17"`) places it in those groups of its origin, and a successful unsafe request whose
    /// answer carries `Cache-Group-Invalidation: "articles"` removes every entry of that origin in the groups it
    /// lists, in every process and before the answer is returned, as a write removes its own URI's entries
    /// ([`invalidate_on_unsafe`](Self::invalidate_on_unsafe) must be on). An origin is the request's authority (the
    /// URI's, else `Host`; case and a default port ignored), whatever its scheme, and its groups span the
    /// partitions of [`partition_by`](Self::partition_by): removing too much is safe, too little is not.
    /// [`CacheHandle::invalidate_group`](super::CacheHandle::invalidate_group) removes a group from outside.
    ///
    /// Groups are answer tags under the rules of [`tags_from_header`](Self::tags_from_header): each fill reads
    /// the tag clock first (one store call); an answer in a group removed since it was asked for is not stored,
    /// nor is one whose `Cache-Groups` is not a valid List or whose groups and tags are more than 32
    /// (`detail=tags`). Members that are not Strings are ignored; both fields are passed on in the answer.
    /// Default: false.
    ///
    /// ```
    /// use http::{Method, Request, Response};
    /// use http_body_util::Empty;
    /// use tower::{ServiceBuilder, ServiceExt, service_fn};
    /// use tower_redis_cache::{CacheOutcome, MemoryStore, RedisCacheLayer, RequestBody};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_redis_cache::error::BoxError> {
    /// let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20)).cache_groups(true).build()?;
    /// let origin = service_fn(|request: Request<RequestBody>| async move {
    ///     let field = match *request.method() {
    ///         Method::GET => "cache-groups",               // `/articles?page=2` is in the group
    ///         _ => "cache-group-invalidation",             // a new article changes every page
    ///     };
    ///     Response::builder().header(field, r#""articles""#).body(Empty::<bytes::Bytes>::new())
    /// });
    /// let service = ServiceBuilder::new().layer(layer).service(origin);
    /// let page = || Request::get("https://blog.example/articles?page=2").body(RequestBody::empty());
    /// service.clone().oneshot(page()?).await?;
    /// assert_eq!(CacheOutcome::of(&service.clone().oneshot(page()?).await?), Some(CacheOutcome::Hit));
    /// let post = Request::post("https://blog.example/articles").body(RequestBody::from("{}"))?;
    /// service.clone().oneshot(post).await?;
    /// assert!(matches!(CacheOutcome::of(&service.oneshot(page()?).await?), Some(CacheOutcome::Miss { .. })));
    /// # Ok(()) }
    /// ```
    pub fn cache_groups(mut self, follow: bool) -> Self {
        self.cache_groups = follow;
        self
    }

    /// How long a miss waits when another process is already fetching its key (it holds the key's lease): the
    /// wait ends as soon as that process's entry is stored (woken by the near cache's invalidation when there
    /// is one, else by a poll every 5 to 50 ms), or when the other process lets go without an entry (this one
    /// then takes the lease and calls the origin). Past this it calls the origin itself, and does not store the
    /// answer (the lease's holder stores). The answer says `Cache-Status: ...; collapsed; detail=fleet`.
    /// Default: 5 s. Zero turns fleet-wide collapsing off: each process then makes one call per key (its own
    /// callers still share it), and the one holding the key's lease stores the answer.
    pub fn fleet_wait(mut self, wait: Duration) -> Self {
        self.fleet_wait = wait;
        self
    }

    /// How long a key whose origin answer the cache could not store is remembered as such, for every process
    /// sharing the store (Varnish's hit-for-miss). An answer meant for its requester alone (`private`,
    /// `no-store`, `Set-Cookie`, `Vary: *`), too large to hold (by its `Content-Length`), of a status not
    /// cached (a `404`; not an origin failure such as a `503`), or expiring at once (`max-age=0,
    /// must-revalidate`) leaves a small marker in the entry's place, when nothing was stored there (the answer
    /// of a miss, or of the background fill a `Range` starts, which then starts no more). For this
    /// long, a miss on that key calls the origin without waiting for another process's call (whose answer would
    /// not be stored either), and, for an answer meant for one requester, without waiting for another caller in
    /// its own process. Without it, concurrent misses on such a key would queue behind each other, one origin
    /// call at a time, up to [`fleet_wait`](Self::fleet_wait). The first answer that can be stored replaces the
    /// marker, so nothing is cached for less time. Default: 60 s; zero turns it off.
    pub fn uncacheable_for(mut self, remember: Duration) -> Self {
        self.uncacheable_for = remember;
        self
    }

    /// How long past its last window an entry that has a validator (`ETag` or `Last-Modified`) is kept, for
    /// revalidation only (Varnish's `keep`): a request for it then goes to the origin with `If-None-Match` /
    /// `If-Modified-Since`, and a `304` answers with the stored body, renewing the entry's windows and
    /// headers, without the body crossing the network again (`fwd-status=304`, counted in `revalidated`). A
    /// kept entry never answers without that `304`: not stale, not for a failing origin, not for
    /// `only-if-cached`. This is also how an answer that may not be reused unasked (`Cache-Control: no-cache`,
    /// `max-age=0`) is stored: for its validators, asked about at every use. Default: 10 minutes; zero turns it
    /// off, and an entry then goes at the end of its last window.
    ///
    /// Redis holds such entries that much longer: with the default windows (the last ends 6 minutes after a
    /// fill), an entry with a validator that is not asked for again lives 16 minutes instead of 6. Under
    /// `maxmemory` with a `volatile-*` or `allkeys-*` policy they are evicted like any other; size Redis for
    /// them, or keep them for less.
    pub fn keep_for(mut self, keep: Duration) -> Self {
        self.keep_for = keep;
        self
    }

    /// The most background refreshes one layer runs at once. A stale hit arriving while this many run is still
    /// served stale at once, without starting a refresh (counted in `refreshes_deferred`); a later stale hit of
    /// that key starts it. This keeps a burst of entries going stale together (after a deploy, after an
    /// outage) from turning into as many concurrent origin calls. Default: 32.
    pub fn max_background_refreshes(mut self, refreshes: usize) -> Self {
        self.max_refreshes = refreshes;
        self
    }

    /// How long a caller waits for another caller's inner call to the same key (a coalesced miss) before it
    /// calls the inner service itself, uncoalesced (counted in `coalesce_timeouts`). It bounds the wait on a
    /// leader whose origin is very slow, or whose future its caller keeps without polling it. Default: 30 s.
    pub fn coalesced_wait(mut self, wait: Duration) -> Self {
        self.coalesced_wait = wait;
        self
    }

    /// The most body bytes the requests in flight may hold in memory together, across all services of the layer:
    /// the responses misses and refreshes read, and the request bodies the layer reads from a stream to key them,
    /// in one part or many (held until no origin call or refresh uses them; a body its caller made whole, a
    /// `Full` or a [`RequestBody`](crate::RequestBody) of bytes, as a client's usually is, is not read by the
    /// layer and not counted). A body counts as the buffer it is joined in: one with a `Content-Length` is read
    /// into a buffer of that size, a chunked one into a buffer doubled as it fills (up to
    /// [`max_body_size`](Self::max_body_size)). A response read while the others already hold this much is
    /// streamed through to its caller unstored, like one over
    /// [`max_body_size`](Self::max_body_size); a request body goes to the origin unkeyed as far as it was read,
    /// chained with the rest (`detail=request-over-budget`, and under [`query_when`](Self::query_when) counted as a
    /// write, since it went unread). Both are counted in `over_memory_budget`; `CacheStats::in_flight_bytes`
    /// shows what is held. Default: 64 MiB.
    pub fn max_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.max_in_flight_bytes = bytes;
        self
    }

    /// Keeps fresh entries in the process too, in a near cache of at most `max_bytes`, so that a hit on a hot
    /// key costs no network call (`Cache-Status: ...; hit; ttl=N; detail=near`). Default: 0, off. `max_bytes`
    /// bounds the memory the entries take: each one's body and headers, about 600 bytes of bookkeeping, and
    /// about 120 bytes more a header (each entry is a copy of its own, sharing no buffer with the reads).
    ///
    /// The near cache is kept coherent by Redis client tracking: a connection of its own (one per primary in
    /// a Cluster) has Redis push an invalidation for every change to a key of the namespace, by any process, and
    /// each one drops the key here. While tracking is not confirmed (not started yet, reconnecting, or no probe
    /// answered for a second) the near cache does not answer, and every doubt (a lost connection, missed
    /// invalidations, a topology change, a `FLUSHALL`) empties it. Only fresh entries are kept, for at most
    /// their freshness and [`near_cache_max_ttl`](Self::near_cache_max_ttl); stale ones are read from Redis so
    /// that their refresh stays one per fleet. On a Cluster, tracking is on at every primary the store reads
    /// from (a node that joined, a promoted replica) before the near cache keeps what was read there; while a
    /// primary is out of reach, the near cache answers the keys of the others, each on a connection of its own.
    /// [`CacheHandle::near_cache_live`](super::CacheHandle::near_cache_live) says whether it answers now.
    ///
    /// Needs a [`RedisStore`](super::RedisStore) (`build` refuses another store) on Redis 6 or newer.
    pub fn near_cache(mut self, max_bytes: u64) -> Self {
        self.near_bytes = max_bytes;
        self
    }

    /// The longest an entry is answered from the near cache, whatever its freshness. Default: 60 s.
    pub fn near_cache_max_ttl(mut self, max_ttl: Duration) -> Self {
        self.near_max_ttl = max_ttl;
        self
    }

    /// Validates the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the setting: an empty or ill-formed namespace, all windows zero while nothing else
    /// (the origin, a route, a status) sets any, a `refresh_ahead` fraction not from 0 to below 1, a window,
    /// lease or `keep_for` over 10 years, a zero store or refresh
    /// timeout, a zero breaker threshold, a body cap over 4 GiB, zero `max_background_refreshes` or
    /// `coalesced_wait`, a zero or over-10-year `tag_sweep_every`, `max_in_flight_bytes` below the body cap,
    /// `206` or `304` among the cacheable statuses, a status given
    /// [`windows_for_status`](Self::windows_for_status) that is not cacheable or whose windows are all zero or
    /// over 10 years, [`Credentials::Partition`] or `respect_response_cache_control(false)` without a
    /// partition, an empty or `*` name among the ignored query parameters, an ignored body field that is not a
    /// JSON Pointer to a member, an ignored query parameter, ignored body member or echoed member that carries
    /// credentials ([`CREDENTIAL_PARAMS`]) without [`Credentials::Partition`], an ignored cookie that names a session or a
    /// credential (see [`ignore_cookies`](Self::ignore_cookies)), or a near cache over a store other than
    /// [`RedisStore`](super::RedisStore) or with a zero or over-10-year `near_cache_max_ttl`.
    pub fn build(self) -> Result<RedisCacheLayer, ConfigError> {
        if self.namespace.is_empty()
            || self.namespace.chars().any(|c| {
                c.is_whitespace()
                    || c.is_control()
                    || matches!(c, '{' | '}' | '*' | '?' | '[' | ']' | '\\')
            })
        {
            return Err(ConfigError::new(
                Setting::Namespace,
                format!(
                    "{:?} must be non-empty, without whitespace, braces or glob characters",
                    self.namespace
                ),
            ));
        }
        if let Some(name) = self
            .ignored_query
            .iter()
            .find(|name| name.is_empty() || *name == "*")
        {
            return Err(ConfigError::new(
                Setting::IgnoreQueryParams,
                format!("{name:?} would leave every query parameter out of the key"),
            ));
        }
        if self.credentials != Credentials::Partition {
            // A body member's own name is the pointer's last token (`~1` a `/`, `~0` a `~`).
            let member = |pointer: &str| {
                let token = pointer.rsplit('/').next().unwrap_or(pointer);
                token.replace("~1", "/").replace("~0", "~")
            };
            let ignored = self
                .ignored_query
                .iter()
                .map(|name| (Setting::IgnoreQueryParams, name, name.clone()))
                .chain(
                    self.ignored_body
                        .iter()
                        .map(|pointer| (Setting::IgnoreBodyFields, pointer, member(pointer))),
                )
                // An echoed member is left out of the key as well: each request gets its own value back in
                // an answer made for another's.
                .chain(
                    self.echo
                        .iter()
                        .map(|name| (Setting::EchoBodyField, name, name.clone())),
                );
            for (setting, given, name) in ignored {
                if let Some(credential) = names_a_credential(&name) {
                    return Err(ConfigError::new(
                        setting,
                        format!(
                            "{given:?} names `{credential}`, which carries credentials: requests of different \
                             users would share one answer (with `Credentials::Partition`, which says whom every \
                             request acts for, it may be left out of the key)"
                        ),
                    ));
                }
            }
        }
        if let Some(name) = self
            .ignored_cookies
            .iter()
            .find(|name| name.is_empty() || *name == "*" || name.contains([';', '=', ' ', ',']))
        {
            return Err(ConfigError::new(
                Setting::IgnoreCookies,
                format!("{name:?} is not a cookie name, or a prefix of some ending in `*`"),
            ));
        }
        for pattern in &self.ignored_cookies {
            let named = match pattern.strip_suffix('*') {
                None => holds_a_session(pattern).then(|| pattern.clone()),
                Some(prefix) => {
                    let lower = prefix.to_ascii_lowercase();
                    SESSION_COOKIES
                        .into_iter()
                        .find(|session| session.starts_with(&lower))
                        .or_else(|| names_a_credential(pattern))
                        .map(str::to_owned)
                        .or_else(|| holds_a_session(prefix).then(|| prefix.to_owned()))
                }
            };
            if let Some(cookie) = named {
                return Err(ConfigError::new(
                    Setting::IgnoreCookies,
                    format!(
                        "{pattern:?} names `{cookie}`, a session or credential cookie: ignored, it would let \
                         requests of different users share one answer"
                    ),
                ));
            }
        }
        if let Some(pointer) = self
            .ignored_body
            .iter()
            .find(|pointer| Pointer::parse(pointer).is_none())
        {
            return Err(ConfigError::new(
                Setting::IgnoreBodyFields,
                format!(
                    "{pointer:?} is not a JSON Pointer to a member (`/name`, `/outer/inner`; `~0` and `~1` the \
                     only escapes)"
                ),
            ));
        }
        for (setting, window) in [
            (Setting::FreshFor, self.fresh_for),
            (Setting::StaleFor, self.stale_for),
            (Setting::StaleIfErrorFor, self.stale_if_error_for),
            (Setting::RefreshLeaseFor, self.lease_for),
            (Setting::NearCacheMaxTtl, self.near_max_ttl),
            (Setting::FleetWait, self.fleet_wait),
            (Setting::UncacheableFor, self.uncacheable_for),
            (Setting::KeepFor, self.keep_for),
            (Setting::CoalescedWait, self.coalesced_wait),
        ] {
            if window > MAX_WINDOW {
                return Err(ConfigError::new(
                    setting,
                    format!("{window:?} is over the 10-year maximum"),
                ));
            }
        }
        if let Some((name, window)) = self.origin_cap.over(MAX_WINDOW) {
            return Err(ConfigError::new(
                Setting::OriginFreshnessCap,
                format!("{name} of {window:?} is over the 10-year maximum"),
            ));
        }
        for (status, windows) in &self.status_windows {
            let why = if !self.statuses.contains(status) {
                format!(
                    "{status} is not among the cacheable statuses: its answers are never stored"
                )
            } else if let Some((name, window)) = windows.over(MAX_WINDOW) {
                format!("{status}'s {name} of {window:?} is over the 10-year maximum")
            } else if windows.is_zero() {
                format!(
                    "{status}'s windows are all zero: leave it out of cacheable_statuses instead"
                )
            } else {
                continue;
            };
            return Err(ConfigError::new(Setting::WindowsForStatus, why));
        }
        if !(0.0..1.0).contains(&self.refresh_ahead) {
            return Err(ConfigError::new(
                Setting::RefreshAhead,
                format!(
                    "{} is not a fraction of the fresh lifetime from 0 (off) to below 1",
                    self.refresh_ahead
                ),
            ));
        }
        // With every window zero, only the origin's headers, a route's windows or a status's keep anything: an
        // HTTP cache that never guesses freshness. Without any of the three, nothing would ever be stored.
        if Windows::new(self.fresh_for, self.stale_for, self.stale_if_error_for).is_zero()
            && !self.origin_freshness
            && self.windows_for.is_none()
            && self.status_windows.is_empty()
        {
            return Err(ConfigError::new(
                Setting::Windows,
                "fresh_for, stale_for and stale_if_error_for are all zero, and neither the origin's headers \
                 (origin_freshness), a route (windows_for) nor a status (windows_for_status) sets any",
            ));
        }
        let refuse = |setting, why: &str| Err(ConfigError::new(setting, why));
        if self.store_timeout.is_zero() {
            return refuse(Setting::StoreTimeout, "must be greater than zero");
        }
        if self.refresh_timeout.is_zero() {
            return refuse(Setting::RefreshTimeout, "must be greater than zero");
        }
        if self.breaker_threshold == 0 {
            return refuse(
                Setting::CircuitBreaker,
                "the breaker needs at least one failure to open",
            );
        }
        if u32::try_from(self.max_body).is_err() {
            return refuse(Setting::MaxBodySize, "must fit in 32 bits");
        }
        if self.max_refreshes == 0 {
            return refuse(
                Setting::MaxBackgroundRefreshes,
                "must be at least 1 (for no refreshes, set stale_for to zero)",
            );
        }
        if self.coalesced_wait.is_zero() {
            return refuse(Setting::CoalescedWait, "must be greater than zero");
        }
        match self.tag_sweep_every {
            Some(every) if every.is_zero() => {
                return refuse(
                    Setting::TagSweepEvery,
                    "must be greater than zero (None: the layer never sweeps on its own)",
                );
            }
            Some(every) if every > MAX_WINDOW => {
                return Err(ConfigError::new(
                    Setting::TagSweepEvery,
                    format!("{every:?} is over the 10-year maximum"),
                ));
            }
            _ => {}
        }
        if self.max_in_flight_bytes < self.max_body {
            return refuse(
                Setting::MaxInFlightBytes,
                "must be at least max_body_size, or no response that size could be stored",
            );
        }
        if let Some(status) = self
            .statuses
            .iter()
            .find(|s| **s == StatusCode::PARTIAL_CONTENT || **s == StatusCode::NOT_MODIFIED)
        {
            return Err(ConfigError::new(
                Setting::CacheableStatuses,
                format!(
                    "may not include {status}: partial and not-modified answers are never stored"
                ),
            ));
        }
        if self.targeted.contains(&CACHE_CONTROL) {
            return refuse(
                Setting::TargetedCacheControl,
                "may not name Cache-Control: the targeted fields speak in its place",
            );
        }
        if self.partition.is_empty() && self.partition_by.is_none() {
            if self.credentials == Credentials::Partition {
                return refuse(
                    Setting::Credentials,
                    "Credentials::Partition needs a partition (or partition_by) naming whose answers are stored",
                );
            }
            if !self.respect_response_cache_control {
                return refuse(
                    Setting::RespectResponseCacheControl,
                    "false needs a partition naming whose responses are stored",
                );
            }
        }
        if self.near_bytes > 0 {
            if self.tracking.is_none() {
                return refuse(
                    Setting::NearCache,
                    "needs a RedisStore: its invalidations keep the near cache coherent",
                );
            }
            if self.near_max_ttl.is_zero() {
                return refuse(Setting::NearCacheMaxTtl, "must be greater than zero");
            }
        }
        Ok(self.assemble())
    }

    /// Builds the layer from settings `build` accepted (or the defaults, which it accepts).
    fn assemble(self) -> RedisCacheLayer {
        let near = match self.tracking {
            Some(tracking) if self.near_bytes > 0 => Some(NearConfig {
                max_bytes: self.near_bytes,
                max_ttl: self.near_max_ttl,
                tracking,
            }),
            _ => None,
        };
        let counters = Arc::new(Counters::new(&self.namespace));
        let keeps_tags = self.store.keeps_tags();
        let store = GuardedStore::new(
            self.store,
            self.store_timeout,
            self.breaker_threshold,
            self.breaker_cooldown,
            counters,
        );
        let user_vary = self.vary.len();
        let mut vary = self.vary;
        if self.credentials == Credentials::InKey {
            for name in [AUTHORIZATION, COOKIE]
                .into_iter()
                .chain(self.credential_headers.iter().cloned())
            {
                if !vary.contains(&name) {
                    vary.push(name);
                }
            }
        }
        let header_kinds = HeaderKinds::new(&self.credential_headers, &vary[..user_vary]);
        let queries_judged = self.query_when.is_some();
        let policy = Policy {
            // Request headers in the key, or bodies: a URI may have entries its writes cannot name, which they
            // reach through its tag.
            uri_tags: UriTags {
                reads: keeps_tags && !vary.is_empty(),
                implied: keeps_tags,
                queries: keeps_tags
                    && self
                        .methods
                        .iter()
                        .any(|method| method != Method::GET && method != Method::HEAD),
            },
            windows: Windows::new(self.fresh_for, self.stale_for, self.stale_if_error_for),
            windows_for: self.windows_for,
            partition_by: self.partition_by,
            tags: self.tags,
            tags_header: self.tags_header,
            cache_groups: self.cache_groups,
            origin_freshness: self.origin_freshness,
            origin_freshness_others: self.origin_freshness_for_post,
            origin_cap: self.origin_cap,
            status_windows: self.status_windows,
            keep_variants: self.keep_variants && keeps_tags,
            head_as_get: self.head_from_get
                && self.methods.contains(&Method::GET)
                && self.methods.contains(&Method::HEAD),
            methods: self.methods,
            post_when: self.post_when,
            query_when: self.query_when,
            store_when: self.store_when,
            echo: self.echo.as_deref().map(Box::from),
            max_body: self.max_body,
            respect_request_cache_control: self.respect_request_cache_control,
            compress_above: self.compress_above,
            header_kinds,
            ignored_cookies: self.ignored_cookies.into(),
            rules: Rules {
                credentials: self.credentials,
                statuses: self.statuses,
                respect_response_cache_control: self.respect_response_cache_control,
                targeted: self.targeted,
                invalidate_on_unsafe: self.invalidate_on_unsafe,
                queries_judged,
                refresh_ahead: permille(self.refresh_ahead),
            },
            lease_for: self.lease_for,
            refresh_timeout: self.refresh_timeout,
            fleet_wait: self.fleet_wait,
            uncacheable_for: self.uncacheable_for,
            keep_for: self.keep_for,
            tag_sweep_every: self.tag_sweep_every,
            max_refreshes: self.max_refreshes,
            coalesced_wait: self.coalesced_wait,
            max_in_flight_bytes: self.max_in_flight_bytes,
            warned_encoded_query: AtomicBool::new(false),
            warned_unread_write: AtomicBool::new(false),
        };
        let keys = KeyConfig::new(self.namespace, self.partition, vary)
            .with_credentials_from(user_vary)
            .ignoring_query(self.ignored_query)
            // Checked by `build`.
            .ignoring_body(
                self.ignored_body
                    .iter()
                    .filter_map(|pointer| Pointer::parse(pointer))
                    .chain(self.echo.as_deref().into_iter().flat_map(Pointer::blanking))
                    .collect::<Vec<_>>(),
            );
        RedisCacheLayer {
            engine: Arc::new(Engine::new(policy, keys, store, near)),
        }
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;
    use crate::MemoryStore;

    fn builder() -> RedisCacheLayerBuilder {
        RedisCacheLayer::builder(MemoryStore::new(1 << 20))
    }

    /// Every layer window at zero builds while the origin, a route or a status can still set one.
    #[test]
    fn zero_windows_build_when_something_else_sets_them() {
        let zero = || {
            builder()
                .fresh_for(Duration::ZERO)
                .stale_for(Duration::ZERO)
                .stale_if_error_for(Duration::ZERO)
        };
        let minute = Duration::from_secs(60);
        let kept = Windows::new(minute, Duration::ZERO, Duration::ZERO);
        assert!(
            zero().build().is_ok(),
            "the origin's headers (on by default)"
        );
        let quiet = || zero().origin_freshness(false);
        assert!(
            quiet().windows_for(move |_| Some(kept)).build().is_ok(),
            "a route"
        );
        assert!(
            quiet()
                .windows_for_status(StatusCode::OK, kept)
                .build()
                .is_ok(),
            "a status"
        );
        assert_eq!(
            quiet().build().unwrap_err().setting(),
            Setting::Windows,
            "nothing"
        );
    }

    /// Every setting `build` rejects, each with an error that names it.
    #[test]
    fn build_rejects_each_unusable_setting_by_name() {
        let cases: Vec<(RedisCacheLayerBuilder, Setting)> = vec![
            (builder().namespace("has space"), Setting::Namespace),
            (builder().namespace("{tag}"), Setting::Namespace),
            (
                builder().targeted_cache_control([CACHE_CONTROL]),
                Setting::TargetedCacheControl,
            ),
            (
                builder()
                    .fresh_for(Duration::ZERO)
                    .stale_for(Duration::ZERO)
                    .stale_if_error_for(Duration::ZERO)
                    .origin_freshness(false),
                Setting::Windows,
            ),
            (builder().fresh_for(Duration::MAX), Setting::FreshFor),
            (builder().keep_for(Duration::MAX), Setting::KeepFor),
            (builder().stale_for(Duration::MAX), Setting::StaleFor),
            (
                builder().stale_if_error_for(Duration::MAX),
                Setting::StaleIfErrorFor,
            ),
            (
                builder().refresh_lease_for(Duration::MAX),
                Setting::RefreshLeaseFor,
            ),
            (
                builder().origin_freshness_cap(Windows::new(
                    Duration::MAX,
                    Duration::ZERO,
                    Duration::ZERO,
                )),
                Setting::OriginFreshnessCap,
            ),
            (builder().fleet_wait(Duration::MAX), Setting::FleetWait),
            (
                builder().uncacheable_for(Duration::MAX),
                Setting::UncacheableFor,
            ),
            (
                builder().coalesced_wait(Duration::ZERO),
                Setting::CoalescedWait,
            ),
            (
                builder().tag_sweep_every(Some(Duration::ZERO)),
                Setting::TagSweepEvery,
            ),
            (
                builder().tag_sweep_every(Some(Duration::MAX)),
                Setting::TagSweepEvery,
            ),
            (
                builder().store_timeout(Duration::ZERO),
                Setting::StoreTimeout,
            ),
            (
                builder().refresh_timeout(Duration::ZERO),
                Setting::RefreshTimeout,
            ),
            (
                builder().circuit_breaker(0, Duration::from_secs(1)),
                Setting::CircuitBreaker,
            ),
            (
                builder().max_background_refreshes(0),
                Setting::MaxBackgroundRefreshes,
            ),
            (
                builder()
                    .max_body_size(1 << 20)
                    .max_in_flight_bytes(1 << 10),
                Setting::MaxInFlightBytes,
            ),
            (
                builder().cacheable_statuses([StatusCode::OK, StatusCode::PARTIAL_CONTENT]),
                Setting::CacheableStatuses,
            ),
            (
                builder().cacheable_statuses([StatusCode::NOT_MODIFIED]),
                Setting::CacheableStatuses,
            ),
            (
                builder().credentials(Credentials::Partition),
                Setting::Credentials,
            ),
            (
                builder().respect_response_cache_control(false),
                Setting::RespectResponseCacheControl,
            ),
            (builder().near_cache(1 << 20), Setting::NearCache),
            (builder().refresh_ahead(1.0), Setting::RefreshAhead),
            (builder().refresh_ahead(-0.1), Setting::RefreshAhead),
            (builder().refresh_ahead(f64::NAN), Setting::RefreshAhead),
            (
                builder().ignore_query_params(["*"]),
                Setting::IgnoreQueryParams,
            ),
            (
                builder().ignore_body_fields(["id"]),
                Setting::IgnoreBodyFields,
            ),
            (
                builder().ignore_cookies(["PHPSESSID"]),
                Setting::IgnoreCookies,
            ),
            (builder().echo_body_field("token"), Setting::EchoBodyField),
            (
                builder().windows_for_status(StatusCode::NOT_FOUND, Windows::new(DAY, DAY, DAY)),
                Setting::WindowsForStatus,
            ),
            (
                builder()
                    .cacheable_statuses([StatusCode::OK, StatusCode::NOT_FOUND])
                    .windows_for_status(StatusCode::NOT_FOUND, Windows::default()),
                Setting::WindowsForStatus,
            ),
            (
                builder()
                    .cacheable_statuses([StatusCode::OK, StatusCode::NOT_FOUND])
                    .windows_for_status(
                        StatusCode::NOT_FOUND,
                        Windows::new(Duration::ZERO, Duration::ZERO, Duration::MAX),
                    ),
                Setting::WindowsForStatus,
            ),
        ];
        for (builder, setting) in cases {
            let error = builder.build().unwrap_err();
            assert_eq!(error.setting(), setting, "{error}");
            assert!(
                error.to_string().contains(setting.as_str()),
                "{error} should name {setting}"
            );
        }
        assert!(builder().build().is_ok(), "the defaults build");
        let ten_years = Windows::new(MAX_WINDOW, MAX_WINDOW, MAX_WINDOW);
        assert!(
            builder()
                .origin_freshness_cap(ten_years)
                .cacheable_statuses([StatusCode::OK, StatusCode::NOT_FOUND])
                .windows_for_status(StatusCode::NOT_FOUND, ten_years)
                .build()
                .is_ok(),
            "windows of the longest allowed build"
        );
        assert_eq!(
            format!("{:?}", RedisCacheLayer::new(MemoryStore::new(1 << 20))),
            format!("{:?}", builder().build().unwrap()),
            "new is the defaults"
        );
        // Durations that mean "no limit" are fine where there is no arithmetic on them.
        assert!(
            builder()
                .store_timeout(Duration::MAX)
                .refresh_timeout(Duration::MAX)
                .circuit_breaker(1, Duration::MAX)
                .build()
                .is_ok()
        );
        assert!(
            builder()
                .partition("client-a")
                .credentials(Credentials::Partition)
                .respect_response_cache_control(false)
                .build()
                .is_ok()
        );
        // A partition per request names whose answers are stored as well.
        assert!(
            builder()
                .partition_by(|parts| parts.headers.get("x-tenant").map(|v| v.as_bytes().to_vec()))
                .credentials(Credentials::Partition)
                .respect_response_cache_control(false)
                .build()
                .is_ok()
        );
    }
}
