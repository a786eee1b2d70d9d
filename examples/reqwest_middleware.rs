//! The cache with reqwest-middleware, both ways, over one store:
//!
//! 1. `CacheMiddleware` in a `reqwest_middleware::ClientWithMiddleware`, for reqwest users;
//! 2. `RedisCacheLayer` and `RetryLayer` around `ReqwestService`, a Tower service over such a client.
//!
//! ```sh
//! cargo run --example reqwest_middleware --features reqwest
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example reqwest_middleware --features reqwest
//! ```
//!
//! Both sides use the same namespace, so an entry written by one is a hit for the other. Each call prints its
//! cache outcome.

use axum::Json;
use axum::routing::get;
use http::{HeaderMap, Request};
use http_body_util::BodyExt;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::{ServiceBuilder, ServiceExt};
use tower_redis_cache::error::BoxError;
use tower_redis_cache::reqwest::{CacheMiddleware, ReqwestService};
use tower_redis_cache::{
    CacheOutcome, MemoryStore, RedisCacheLayer, RedisStore, RetryLayer, Store,
};

async fn start_api() -> Result<String, BoxError> {
    let app = axum::Router::new().route(
        "/catalog",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(120)).await;
            Json(json!({"items": ["a", "b", "c"]}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/catalog", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

fn outcome(headers: &HeaderMap) -> &'static str {
    CacheOutcome::from_headers(headers).map_or("-", |o| o.as_str())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = start_api().await?;
    let store: Arc<dyn Store> = match std::env::var("REDIS_URL") {
        Ok(redis) => Arc::new(RedisStore::connect(&redis).await?),
        Err(_) => Arc::new(MemoryStore::new(64 * 1024 * 1024)),
    };
    // Two layers over one store and namespace: they read each other's entries.
    let layer = || {
        RedisCacheLayer::builder(store.clone())
            .namespace("reqwest-example")
            .fresh_for(Duration::from_secs(30))
            .build()
    };
    let plain = reqwest::Client::new();

    // 1. reqwest users: the cache as a middleware.
    let client = reqwest_middleware::ClientBuilder::new(plain.clone())
        .with(CacheMiddleware::new(&layer()?, plain.clone()))
        .build();
    for call in 1..=2 {
        let started = Instant::now();
        let response = client.get(&url).send().await?;
        let cache = outcome(response.headers());
        let bytes = response.bytes().await?.len();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        println!("middleware call={call} cache={cache} bytes={bytes} ms={ms:.1}");
    }

    // 2. Tower users: the layers around a reqwest-middleware client.
    let service = ServiceBuilder::new()
        .layer(layer()?)
        .layer(RetryLayer::default())
        .service(ReqwestService::new(plain));
    let started = Instant::now();
    let request = Request::get(&url).body(reqwest::Body::from(""))?;
    let response = service.oneshot(request).await?;
    let cache = outcome(response.headers());
    let bytes = response.into_body().collect().await?.to_bytes().len();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    println!("tower call=1 cache={cache} bytes={bytes} ms={ms:.1}");
    Ok(())
}
