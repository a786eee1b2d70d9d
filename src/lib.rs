//! Tower middleware that makes expensive HTTP API queries cheap: responses cached in Redis (or memory), keyed by
//! a SHA-256 of the request *including its body*, with stale-while-revalidate, request coalescing and
//! fail-open store access.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use std::convert::Infallible;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_redis_cache::{CacheOutcome, MemoryStore, RedisCacheLayer, RequestBody};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_redis_cache::error::BoxError> {
//! // `RedisStore::connect("redis://127.0.0.1:6379").await?` for a shared cache.
//! let cache = RedisCacheLayer::builder(MemoryStore::new(64 * 1024 * 1024))
//!     .namespace("example")
//!     .build()?;
//! // The wrapped service takes a `RequestBody`; callers send any body type.
//! let api = service_fn(|_req: Request<RequestBody>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(br#"{"expensive":true}"#))))
//! });
//! let client = ServiceBuilder::new().layer(cache).service(api);
//!
//! let request = || Request::get("https://api.example/report").body(RequestBody::empty()).unwrap();
//! let first = client.clone().oneshot(request()).await?;
//! let second = client.clone().oneshot(request()).await?;
//! assert!(matches!(CacheOutcome::of(&first), Some(CacheOutcome::Miss { .. })));
//! assert_eq!(CacheOutcome::of(&second), Some(CacheOutcome::Hit));
//! # Ok(()) }
//! ```
//!
//! # The layers
//!
//! Each has a module with its semantics and an offline example:
//!
//! - [`cache`]: [`RedisCacheLayer`], fresh / stale-while-revalidate / miss with coalescing, fail-open store.
//! - [`retry`]: [`RetryLayer`], full-jitter backoff, `Retry-After` and rate-limit resets, deadline, retry budget.
//! - [`auth`]: [`AuthLayer`], one shared OAuth2 token, early refresh, `401` recovery.
//!
//! They compose in this order: `cache -> retry -> auth -> timeout -> HTTP client`. The cache sits outermost so
//! a hit costs no token and no network; retry sits outside auth so each attempt carries the current token.
//! The three together over one origin, each doing its part:
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_redis_cache::auth::{AuthLayer, Token, TokenFuture, TokenSource};
//! use tower_redis_cache::{CacheOutcome, MemoryStore, RedisCacheLayer, RequestBody, RetryLayer, RetryOutcome};
//!
//! struct Static; // your TokenSource, or auth::ClientCredentials for OAuth2
//! impl TokenSource for Static {
//!     fn fetch_token(&self) -> TokenFuture<'_> {
//!         Box::pin(async { Ok(Token::new("t0k3n", Some(Duration::from_secs(3600)))) })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_redis_cache::error::BoxError> {
//! // An API that wants the token and is overloaded on its first call.
//! let calls = Arc::new(AtomicU32::new(0));
//! let api = service_fn({
//!     let calls = calls.clone();
//!     move |req: Request<RequestBody>| {
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         let authorized = req.headers().get("authorization").is_some_and(|v| v == "Bearer t0k3n");
//!         async move {
//!             let mut response = Response::new(Full::new(Bytes::from_static(b"{\"rows\":3}")));
//!             *response.status_mut() = match (authorized, n) {
//!                 (false, _) => StatusCode::UNAUTHORIZED,
//!                 (true, 0) => StatusCode::SERVICE_UNAVAILABLE,
//!                 (true, _) => StatusCode::OK,
//!             };
//!             Ok::<_, std::convert::Infallible>(response)
//!         }
//!     }
//! });
//! let client = ServiceBuilder::new()
//!     .layer(RedisCacheLayer::builder(MemoryStore::new(1 << 20)).build()?)
//!     .layer(RetryLayer::builder().base_delay(Duration::from_millis(5)).build()?)
//!     .layer(AuthLayer::new(Static))
//!     .service(api);
//!
//! let request = || Request::get("https://api.example/report").body(RequestBody::empty()).unwrap();
//! let first = client.clone().oneshot(request()).await?;
//! assert_eq!(first.status(), StatusCode::OK);
//! assert_eq!(first.extensions().get::<RetryOutcome>().map(|o| o.attempts), Some(2)); // retried the 503
//! let second = client.oneshot(request()).await?;
//! assert_eq!(CacheOutcome::of(&second), Some(CacheOutcome::Hit)); // no token, no call
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # Ok(()) }
//! ```
//!
//! # The Genesys Cloud stack
//!
//! `genesys::GenesysClient` (feature `genesys`) is that stack over hyper-util, for the real API; the
//! `genesys::emulator` (feature `emulator`) serves the same API on loopback:
//!
//! ```
//! # #[cfg(feature = "emulator")]
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_redis_cache::genesys::emulator::Emulator;
//! use tower_redis_cache::genesys::{ActionQuery, GenesysClient};
//! use tower_redis_cache::{MemoryStore, RetryLayer};
//!
//! let emulator = Emulator::start().await?;
//! let client = GenesysClient::builder()
//!     .api_base(emulator.base_url()) // or .region(Region::EuWest1) for a real org
//!     .login_base(emulator.base_url())
//!     .client_credentials(emulator.client_id(), emulator.client_secret())
//!     .store(MemoryStore::new(64 << 20)) // or RedisStore::connect(url).await? for a fleet
//!     .retry(RetryLayer::builder().max_attempts(5).build()?)
//!     .build()?;
//! let actions = client.list_all_actions(&ActionQuery::new().name("order_lookup")).await?;
//! let output = client.execute_action(&actions[0].id, &serde_json::json!({"orderId": "A-17"})).await?;
//! assert_eq!(output.value["input"]["orderId"], "A-17");
//! # Ok(()) }
//! # #[cfg(not(feature = "emulator"))] fn main() {}
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `redis` | yes | [`RedisStore`] through fred (standalone, Sentinel, Cluster) |
//! | `memory` | yes | [`MemoryStore`] on moka, for demos and single processes |
//! | `redis-tls` | no | `rediss://` URLs (rustls; see [TLS](#tls)) |
//! | `genesys` | no | `genesys::GenesysClient` over hyper-util (rustls, see [TLS](#tls); HTTP/1.1 + HTTP/2) |
//! | `emulator` | no | `genesys::emulator`, a local Genesys Cloud API server |
//! | `reqwest` | no | `reqwest::ReqwestService` and `reqwest::CacheMiddleware` (reqwest 0.13, reqwest-middleware 0.5) |
//! | `metrics` | no | counters through the `metrics` facade |
//! | `compression` | no | stored bodies LZ4-compressed ([`compress_above`](cache::RedisCacheLayerBuilder::compress_above); lz4_flex, pure Rust) |
//! | `decompress` | no | answers in gzip, deflate, br or zstd read decoded by [`store_when`](cache::RedisCacheLayerBuilder::store_when) and shared decoded by [`echo_body_field`](cache::RedisCacheLayerBuilder::echo_body_field); request bodies in them read decoded by [`query_when`](cache::RedisCacheLayerBuilder::query_when), keyed by their content and echoed (flate2, brotli-decompressor, ruzstd; pure Rust) |
//! | `full` | no | everything |
//!
//! # TLS
//!
//! The Genesys client's HTTPS (Mozilla's roots, and any it is given) and `rediss://` stores (the system's roots,
//! or `SSL_CERT_FILE` / `SSL_CERT_DIR`) use rustls with the crypto provider your application installed as the
//! process default, and ring when it installed none. To negotiate post-quantum key exchange, install aws-lc-rs
//! before building them:
//! `rustls::crypto::aws_lc_rs::default_provider().install_default()`. The choice is never left to rustls's crate
//! features, which name no provider once a build links both (reqwest's default TLS brings aws-lc-rs).
//!
//! # Observability
//!
//! Each request through the cache runs in a `cache` span with `key` (the digest's first 8 hex digits) and
//! `outcome`; each retry attempt in an `attempt` span inside a `retry` span (`attempts` recorded at the end);
//! each token fetch in a `token_refresh` span with its `generation`. With the `metrics` feature the cache
//! counters are exported as `tower_redis_cache_<counter>_total{namespace}` (the fields of [`CacheStats`];
//! `tower_redis_cache_bypasses_total` and `tower_redis_cache_not_stored_total` also carry the `reason`), plus
//! `tower_redis_cache_retries_total`, `tower_redis_cache_retry_give_ups_total{reason}`,
//! `tower_redis_cache_token_fetches_total` and `tower_redis_cache_token_fetch_errors_total`, and two histograms:
//! `tower_redis_cache_store_call_seconds{namespace, operation, outcome}`, the time of every store call the cache
//! makes (`operation` `get`, `set`, `lease`, ...; `outcome` `ok`, `refused`, `error` or `timeout`), where a Redis
//! growing slow shows long before its calls time out; and `tower_redis_cache_origin_call_seconds{namespace,
//! call, outcome}`, the time of every call of the inner service (`call` `miss`, `refresh` or `bypass`; `outcome`
//! the answer's status class, `2xx` to `5xx`, or `error`), to its answer's head, or to the end of the body the
//! cache reads whole: what a miss costs, beside what a hit saves. The gauge
//! `tower_redis_cache_store_clock_ahead_seconds{namespace}` says how far the store's clock ran ahead of the
//! process's at its last reading (once a minute; negative: behind), which the cache corrects for beyond a second:
//! an alert on it finds a host whose clock is off.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
// The docs are written for the full feature set, as docs.rs builds them: in a build without some feature, a link
// to an item of the missing feature has nothing to point at and renders as plain text.
#![cfg_attr(
    not(feature = "full"),
    allow(rustdoc::broken_intra_doc_links, rustdoc::private_intra_doc_links)
)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod atomic;
pub mod auth;
pub mod body;
mod budget;
mod buffer;
pub mod cache;
pub mod error;
#[cfg(feature = "genesys")]
#[cfg_attr(docsrs, doc(cfg(feature = "genesys")))]
pub mod genesys;
mod macros;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;
pub mod retry;
mod structured;
#[cfg(any(feature = "genesys", feature = "redis-tls"))]
mod tls;

pub use crate::auth::AuthLayer;
pub use crate::body::RequestBody;
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use crate::cache::MemoryStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use crate::cache::RedisStore;
pub use crate::cache::{
    CacheHandle, CacheKey, CacheOutcome, CacheStats, ENTRY_OVERHEAD, RedisCache, RedisCacheLayer,
    Store,
};
pub use crate::retry::{RetryLayer, RetryOutcome};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use fred;
