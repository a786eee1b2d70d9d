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
//! assert!(matches!(first.extensions().get(), Some(CacheOutcome::Miss { .. })));
//! let second = service.clone().oneshot(query(r#"{ "b": 2, "a": 1 }"#)).await?;
//! assert_eq!(second.extensions().get(), Some(&CacheOutcome::Hit));
//! // `ttl` is the freshness left, in whole seconds: 29 or 30 here.
//! assert!(second.headers()["cache-status"].to_str()?.starts_with("tower-redis-cache; hit; ttl="));
//! assert_eq!(second.into_body().collect().await?.to_bytes(), r#"{"a":1,"b":2}"#);
//! # Ok(()) }
//! ```
//!
//! # The decision
//!
//! For a cacheable request (method `GET`, `HEAD`, `QUERY`, or as configured; no `Cache-Control: no-store`;
//! body within the cap) the layer reads the entry for the request's key and, with `now` the wall clock:
//!
//! - **fresh** (younger than `fresh_for`): answered from the store; the inner service is not called.
//! - **stale** (within `stale_for` after that): answered from the store at once, and one background refresh
//!   runs for the key: one per process (an in-process set), one per fleet (a `SET NX PX` lease next to the
//!   entry). A failed refresh leaves the entry exactly as it was, so it keeps being served *as stale*.
//! - **missing or expired**: one inner call per key, however many callers arrive together; the others wait
//!   and share its response (or error). The response is stored when its status is cacheable (2xx by default)
//!   and its body within the cap. Larger responses stream through to their caller unstored.
//! - **stale-if-error**: when that inner call fails (transport error, 500, 502, 503, 504) and an entry within
//!   `stale_if_error_for` after its freshness exists, the entry answers instead.
//!
//! Request `Cache-Control: no-cache` skips the read and refreshes the entry; `no-store` bypasses the cache.
//!
//! # Concurrent calls on the same key
//!
//! Misses are coalesced per layer: every service a [`RedisCacheLayer`] built (and their clones) shares one
//! in-flight map. The first caller's future drives the inner call; if it is dropped before finishing, the
//! waiters are released and one of them makes the call, so no caller waits forever. Waiters receive the same
//! status, headers and body bytes; an error reaches each of them as a [`SharedError`](crate::error::SharedError)
//! whose `source()` is the inner error. Across processes misses are not collapsed (each process makes at most one
//! call per key); refreshes are (the lease).
//!
//! # Fail-open
//!
//! Every store call has a timeout (default 50 ms). A failed or timed-out read is a miss; a failed write is
//! logged and counted. After 5 consecutive failures a circuit breaker skips the store for 1 s, then lets one
//! call probe. A store outage never fails a request.
//!
//! # Telling the caller
//!
//! Every response carries a `Cache-Status` header (RFC 9211; see [`status`]) and a [`CacheOutcome`] extension;
//! answers from the store also carry `Age`. [`CacheHandle::stats`] returns the counters.
//!
//! # Runtime
//!
//! Background refreshes are spawned with `tokio::spawn`, so the services must be called inside a Tokio runtime.

mod body;
mod coalesce;
pub(crate) mod engine;
mod entry;
pub mod future;
mod guard;
mod key;
mod layer;
mod refresh;
mod service;
pub(crate) mod stats;
pub mod status;
pub mod store;

pub use self::body::ResponseBody;
pub use self::key::CacheKey;
pub use self::layer::{CacheHandle, RedisCacheLayer, RedisCacheLayerBuilder};
pub use self::service::RedisCache;
pub use self::stats::CacheStats;
pub use self::status::{BypassReason, CacheOutcome};
#[cfg(feature = "memory")]
pub use self::store::MemoryStore;
#[cfg(feature = "redis")]
pub use self::store::RedisStore;
pub use self::store::Store;

/// The fixed number of bytes an entry adds to its body and headers (each header adds its name, its value, and 6
/// bytes of framing).
pub const ENTRY_OVERHEAD: usize = entry::FIXED_OVERHEAD;
