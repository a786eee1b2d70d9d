//! [`RedisCacheLayer`]: caches HTTP responses in Redis (or memory), keyed by a SHA-256 of the request including
//! its body, with stale-while-revalidate, request coalescing and fail-open store access.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Method, Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_redis_cache::error::BoxError;
//! use tower_redis_cache::{CacheOutcome, MemoryStore, RedisCacheLayer, RequestBody};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_redis_cache::error::BoxError> {
//! let layer = RedisCacheLayer::builder(MemoryStore::new(16 * 1024 * 1024))
//!     .namespace("docs")
//!     .methods([Method::GET, Method::POST]) // POST queries are keyed by their (canonical JSON) body
//!     .fresh_for(Duration::from_secs(30))
//!     .build()?;
//! let origin = service_fn(|req: Request<RequestBody>| async move {
//!     let body = req.into_body().collect().await?.to_bytes();
//!     Ok::<_, BoxError>(Response::new(Full::new(body)))
//! });
//! let service = ServiceBuilder::new().layer(layer).service(origin);
//!
//! let query = |json: &'static str| {
//!     Request::post("http://api.example/query")
//!         .header("content-type", "application/json")
//!         .body(Full::new(Bytes::from_static(json.as_bytes())))
//!         .unwrap()
//! };
//! let first = service.clone().oneshot(query(r#"{"a":1,"b":2}"#)).await?;
//! assert!(matches!(CacheOutcome::of(&first), Some(CacheOutcome::Miss { .. })));
//! let second = service.clone().oneshot(query(r#"{ "b": 2, "a": 1 }"#)).await?;
//! assert_eq!(CacheOutcome::of(&second), Some(CacheOutcome::Hit));
//! // `ttl` is the freshness left, in whole seconds: 29 or 30 here.
//! assert!(second.headers()["cache-status"].to_str()?.starts_with("tower-redis-cache; hit; ttl="));
//! assert_eq!(second.into_body().collect().await?.to_bytes(), r#"{"a":1,"b":2}"#);
//! # Ok(()) }
//! ```
//!
//! # The decision
//!
//! The layer behaves as a *shared* cache (RFC 9111): one user is never answered with a response made for
//! another. A request goes straight to the inner service (`Cache-Status: ...; fwd=bypass`, `fwd=method` or
//! `fwd=request`, with a `detail` naming why) when
//!
//! - its method is not cached (`GET`, `HEAD` and `QUERY` by default; `POST` by opt-in, keyed by its body);
//! - it carries `Cache-Control: no-store`;
//! - it carries credentials (`Authorization`, `Cookie`, or a credential header: `X-Api-Key` and the others
//!   [`credential_headers`](RedisCacheLayerBuilder::credential_headers) names), unless the layer says how users
//!   are told apart ([`Credentials`]: each credential in the key, or the one user the partition names);
//! - it asks for part of a response (`Range`) with a method other than `GET`, or sets a precondition for the
//!   origin (`If-Match`, `If-Unmodified-Since`; `If-None-Match` or `If-Modified-Since` on a method other than
//!   `GET` and `HEAD`);
//! - its body is over the cap (by `Content-Length`, or found while reading it: what was read then goes on
//!   chained with the rest of the stream, never held whole).
//!
//! A request's key holds its method, URI (the `Host` header standing in for a missing authority), the headers
//! the layer varies on, the partition, its body with the body's `Content-Type` and `Content-Encoding`, and the
//! request headers that change answers though origins rarely name them in `Vary`: what a proxy in front of the
//! origin forwards of the client's request (`X-Forwarded-Host`, `X-Forwarded-Proto`, `Forwarded` and their
//! kin, from which frameworks build links and redirects: an `X-Forwarded-Host` one client sends never reaches
//! another's answer), `Prefer` (Microsoft Graph's `outlook.timezone`), the API version asked for
//! (`Stripe-Version`, `X-GitHub-Api-Version`, `Api-Version`, ...) and the account acted for beside a credential
//! (`Stripe-Account`, `OpenAI-Organization`, `OpenAI-Project`). The client's address (`X-Forwarded-For`,
//! `Forwarded: for=`) is left out, so clients behind one proxy share entries. Members of JSON bodies that
//! change nothing are left out by [`ignore_body_fields`](RedisCacheLayerBuilder::ignore_body_fields); a member
//! the answers repeat, as JSON-RPC's `id`, by [`echo_body_field`](RedisCacheLayerBuilder::echo_body_field),
//! which also sets each answer's to the request's own.
//!
//! Otherwise the layer reads the entry for the request's key and, with `now` the cache's clock:
//!
//! - **fresh** (younger than `fresh_for`): answered from the store; the inner service is not called. With
//!   [`refresh_ahead`](RedisCacheLayerBuilder::refresh_ahead), a hit in the last part of the freshness also
//!   starts the background refresh a stale hit would, so a key that keeps being asked for never goes stale.
//! - **stale** (within `stale_for` after that): answered from the store at once, and one background refresh
//!   runs for the key: one per process (an in-process set), one per fleet (a `SET NX PX` lease next to the
//!   entry). A failed refresh leaves the entry exactly as it was, so it keeps being served *as stale*.
//! - **missing or expired**, or stored for another variant (the stored response's `Vary` names a request
//!   header whose value differs, its body is compressed for another `Accept-Encoding`, or its
//!   `Access-Control-Allow-Origin` grants another `Origin`: `fwd=vary-miss`; each variant then gets an entry
//!   of its own, under a key holding its values of those headers, see
//!   [`keep_variants`](RedisCacheLayerBuilder::keep_variants)):
//!   one inner call per key, however many callers arrive together. The response is stored when its status is
//!   cacheable (`200`, `203`, `204` by default; never `206` or `304`), its body within the cap, and it is not
//!   meant for its requester alone (`Set-Cookie` but for cookies the layer
//!   [ignores](RedisCacheLayerBuilder::ignore_cookies), `Cache-Control: private` or `no-store`, `Vary: *`),
//!   and, with [`store_when`](RedisCacheLayerBuilder::store_when), when its body is no error (a GraphQL answer
//!   with `errors` under a `200`: [`graphql::is_success`]; a JSON-RPC `error`: [`jsonrpc::is_success`]).
//!   Such an answer, a larger one, and a live stream (an event stream, `multipart/x-mixed-replace`, gRPC, or
//!   an answer saying `X-Accel-Buffering: no`) go to their caller from the head as they arrive, never held
//!   and never stored; a request subscribing to an event stream (`Accept: text/event-stream`) bypasses the
//!   cache.
//! - **stale-if-error**: when that inner call fails (transport error, 408, 429, 500, 502, 503, 504,
//!   Cloudflare's 520-524, 529, or an answer [`store_when`](RedisCacheLayerBuilder::store_when) refuses) and an
//!   entry within `stale_if_error_for` after its freshness exists, the entry answers instead (`fwd=stale`).
//!
//! Request `Cache-Control: no-cache` skips the read and refreshes the entry (`fwd=request`). A request's
//! `max-age=N` takes no entry older than `N` seconds, `min-fresh=N` none fresh for less than `N` more, and with
//! either a stale entry answers only within the request's `max-stale`: an entry they refuse is refreshed the
//! same way, revalidated with its `ETag` or `Last-Modified` when it has them (RFC 9111 §5.2.1). A request's
//! `only-if-cached` is answered from the store or refused with a `504 Gateway Timeout` made by the cache
//! ([`CacheOutcome::OnlyIfCachedMiss`]); the inner service is never called for it. A cache in front of a server
//! whose clients should not steer it (a browser's reload sends `max-age=0`) ignores all of these:
//! [`respect_request_cache_control(false)`](RedisCacheLayerBuilder::respect_request_cache_control).
//!
//! A `GET` or `HEAD` carrying the client's own validators (`If-None-Match`, `If-Modified-Since`) is answered like
//! any other, then gets `304 Not Modified` instead when they match that answer: its `ETag` by the weak
//! comparison, else its `Last-Modified` (or `Date`) no later than the client's date (RFC 9111 §4.3.2). The `304`
//! has no body and keeps the answer's headers but those describing the body (counted in
//! [`CacheStats::not_modified`]). The client's validators are never forwarded: the origin's `304` to them
//! could be neither stored nor shared.
//!
//! A `GET` with `Range` is answered from the entry, fresh or stale, cut by the cache (RFC 9110 §14): one byte
//! range gets `206 Partial Content` with `Content-Range`, a range past the end `416 Range Not Satisfiable`, and
//! several ranges, or an `If-Range` that does not match the entry by the strong comparison, the whole answer
//! (counted in [`CacheStats::partial`]). A stale entry's refresh asks for the whole answer. With no entry, the
//! range goes to the origin as it came (`fwd=bypass; detail=range`), since the origin sends a part sooner than
//! the whole, and its `206` is neither stored nor shared; meanwhile one background fetch of the whole answer, a
//! refresh under the entry's lease (once for the whole fleet, counted in [`CacheStats::refreshes_started`]),
//! fills the entry, and the ranges that follow are cut from it. An answer the fill cannot store (too large, or
//! meant for one requester) is let go, and leaves the marker a miss would
//! ([`uncacheable_for`](RedisCacheLayerBuilder::uncacheable_for)): the ranges after it are only passed on.
//!
//! A `HEAD` is answered from the entry of the `GET` of the same request (RFC 9110 §9.3.2), whenever both
//! methods are cached: it is keyed, coalesced and stored as that `GET`, and its answer is the `GET`'s status
//! and header fields without the body (with the body's `Content-Length` when the origin gave none). A miss
//! asks the origin for the `GET`, so its answer also serves the `GET`s that follow
//! ([`head_from_get`](RedisCacheLayerBuilder::head_from_get) turns this off).
//!
//! A request with an unsafe method the layer does not cache (`PUT`, `PATCH`, `DELETE`, an uncached `POST` or one
//! whose body [`query_when`](RedisCacheLayerBuilder::query_when) refuses, such as a GraphQL `mutation` or a
//! JSON-RPC call that sends a transaction: see [`graphql`] and [`jsonrpc`], any unknown method) may change its
//! target: once it is answered below 400, the entries of a `GET` and a `HEAD` of its URI are removed (every
//! variant, where keys hold request headers), and those of the queries sent to it (`QUERY`, a cached `POST`), from
//! this process's near cache and from the store, so from every process, before its response is returned (RFC 9111
//! §4.4; see [`invalidate_on_unsafe`](RedisCacheLayerBuilder::invalidate_on_unsafe);
//! [`CacheHandle::invalidate_uri`] does the same for a change made elsewhere). What such a write changes under
//! other URIs (a listing, a search) goes by [`tags`](RedisCacheLayerBuilder::tags) (and the tags an answer names,
//! [`tags_from_header`](RedisCacheLayerBuilder::tags_from_header)): the entries stored with one of the write's tags
//! are removed too, and [`CacheHandle::invalidate_tag`] removes a tag's entries on demand
//! ([`CacheHandle::mark_tag_stale`] makes them stale instead: a soft purge, answered stale while one refresh
//! runs). An origin that speaks
//! HTTP Cache Groups (RFC 9875: `Cache-Groups` on answers, `Cache-Group-Invalidation` on a write's answer) names
//! those sets itself, with [`cache_groups`](RedisCacheLayerBuilder::cache_groups).
//!
//! The windows of the entry a request stores are its own [`CacheOverride`] extension's, else the layer's for
//! the answer's status ([`windows_for_status`](RedisCacheLayerBuilder::windows_for_status)), else what the
//! layer's [`windows_for`](RedisCacheLayerBuilder::windows_for) hook chooses from its head, else the layer's;
//! the origin's own `Cache-Control` / `Expires` (or a targeted field the layer names, such as
//! `CDN-Cache-Control`: [`targeted_cache_control`](RedisCacheLayerBuilder::targeted_cache_control)) set them
//! where they speak (for `GET` and `HEAD` by default),
//! capped, unless the call chose its own (see [`freshness`]). A refresh of an entry with an `ETag` or `Last-Modified` is conditional: a `304`
//! renews it without the body.
//!
//! The whole decision is one pure function of the request's facts, the stored entry and the time; see the
//! table in its tests.
//!
//! # Concurrent calls on the same key
//!
//! Misses are coalesced per layer: every service a [`RedisCacheLayer`] built (and their clones) shares one
//! in-flight map. The first caller's future drives the inner call; if it is dropped before finishing, the
//! waiters are released and one of them makes the call, so no caller waits forever. Waiters receive the same
//! status, headers and body bytes; an error reaches each of them as a [`SharedError`](crate::error::SharedError)
//! whose `source()` is the inner error. A response meant for its requester alone (`Set-Cookie`, `private`,
//! `no-store`, `Vary: *`), one too large to hold, or one that varies on a header whose value a waiter does not
//! share, is not handed to waiters: each of them calls the inner service itself.
//!
//! Across processes, a key's lease (next to its entry, with a token only its holder can renew or release)
//! makes one fill and one refresh per key for the fleet: a process that misses a key another is fetching waits
//! for that entry (up to [`fleet_wait`](RedisCacheLayerBuilder::fleet_wait)) and answers `collapsed;
//! detail=fleet`; see [`RedisCacheLayerBuilder::fleet_wait`]. Waiting pays only when the answer is stored: a key
//! whose answer could not be (meant for one requester, too large, of a status not cached) keeps a small marker
//! in its entry's place for [`uncacheable_for`](RedisCacheLayerBuilder::uncacheable_for), and misses on it call
//! the origin without waiting for another process's call (nor, for an answer meant for one requester, for
//! another caller's in their own process), instead of queueing one origin call at a time.
//!
//! # Near cache
//!
//! With [`near_cache`](RedisCacheLayerBuilder::near_cache) (and a [`RedisStore`]), fresh entries are also kept
//! in the process and answered with no network call (`detail=near`), kept coherent by Redis client tracking.
//!
//! # Fail-open
//!
//! Every store call has a timeout (default 50 ms). A failed or timed-out read is a miss; a failed write is
//! logged and counted. When failures pile up (5 in a row, or more than a third of recent calls) a circuit
//! breaker skips the store for 1 s, has it reconnect, then lets one call probe. A store outage never fails a
//! request.
//!
//! # Telling the caller
//!
//! Every response carries a `Cache-Status` header (RFC 9211; see [`status`]) and a [`CacheOutcome`] extension
//! ([`CacheOutcome::of`] reads either); answers from the store also carry `Age`. [`CacheHandle::stats`] returns the counters.
//!
//! # Runtime
//!
//! Background refreshes are spawned with `tokio::spawn`, so the services must be called inside a Tokio runtime.

mod background;
mod batch;
mod body;
mod clock;
mod coalesce;
mod deadline;
pub(crate) mod decision;
pub(crate) mod decode;
mod directives;
mod echo;
pub(crate) mod engine;
mod entry;
mod fleet;
pub mod freshness;
pub mod future;
pub mod graphql;
mod guard;
mod heads;
pub mod jsonrpc;
mod key;
mod layer;
mod memo;
#[cfg_attr(not(feature = "redis"), path = "near_off.rs")]
pub(crate) mod near;
mod refresh;
mod service;
pub(crate) mod stats;
pub mod status;
pub mod store;
mod tags;
#[cfg(test)]
mod testing;
mod tunnel;
mod variants;

pub use self::body::ResponseBody;
pub use self::decision::Credentials;
pub use self::freshness::{CacheOverride, Windows};
pub use self::key::CacheKey;
pub use self::layer::{
    CREDENTIAL_PARAMS, CacheHandle, DEFAULT_CREDENTIAL_HEADERS, RedisCacheLayer,
    RedisCacheLayerBuilder,
};
pub use self::service::RedisCache;
pub use self::stats::CacheStats;
pub use self::status::{BypassReason, CacheOutcome, NotStored};
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use self::store::MemoryStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::store::RedisStore;
pub use self::store::Store;

/// The fixed number of bytes an entry adds to its body and headers (each header adds its name, its value, and 6
/// bytes of framing; a response with `Vary` adds 32 more, the digest of the request headers it names). A body
/// stored compressed ([`compress_above`](RedisCacheLayerBuilder::compress_above), feature `compression`) counts as
/// its compressed length plus 4.
pub const ENTRY_OVERHEAD: usize = entry::FIXED_OVERHEAD;
