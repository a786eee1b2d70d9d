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
//! use tower_redis_cache::{CacheOutcome, MemoryStore, RedisCacheLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower_redis_cache::error::BoxError> {
//! // `RedisStore::connect("redis://127.0.0.1:6379").await?` for a shared cache.
//! let cache = RedisCacheLayer::builder(MemoryStore::new(64 * 1024 * 1024))
//!     .namespace("example")
//!     .build()?;
//! let api = service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(br#"{"expensive":true}"#))))
//! });
//! let client = ServiceBuilder::new().layer(cache).service(api);
//!
//! let request = || Request::get("https://api.example/report").body(Full::default()).unwrap();
//! let first = client.clone().oneshot(request()).await?;
//! let second = client.clone().oneshot(request()).await?;
//! assert!(matches!(first.extensions().get(), Some(CacheOutcome::Miss { .. })));
//! assert_eq!(second.extensions().get(), Some(&CacheOutcome::Hit));
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `redis` | yes | [`RedisStore`] through fred (standalone, Sentinel, Cluster) |
//! | `memory` | yes | [`MemoryStore`] on moka, for demos and single processes |
//! | `redis-tls` | no | `rediss://` URLs (rustls with the ring provider) |
//! | `full` | no | everything |
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod auth;
mod buffer;
pub mod cache;
pub mod error;
#[cfg(feature = "genesys")]
pub mod genesys;
pub mod retry;

pub use crate::auth::AuthLayer;
#[cfg(feature = "memory")]
pub use crate::cache::MemoryStore;
#[cfg(feature = "redis")]
pub use crate::cache::RedisStore;
pub use crate::cache::{
    CacheHandle, CacheKey, CacheOutcome, CacheStats, ENTRY_OVERHEAD, RedisCache, RedisCacheLayer,
    Store,
};
pub use crate::retry::{RetryLayer, RetryOutcome};
#[cfg(feature = "redis")]
pub use fred;
