//! The cache layer in front of a slow query API, with the in-memory store (or Redis when `REDIS_URL` is set).
//!
//! ```sh
//! cargo run --example quickstart
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart
//! ```
//!
//! It sends the same POST query three times (the last with its JSON keys in another order) and a different one
//! once, printing what the cache did and how long each call took.

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_redis_cache::error::BoxError;
use tower_redis_cache::{CacheOutcome, MemoryStore, RedisCacheLayer, RedisStore, RequestBody};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let builder = match std::env::var("REDIS_URL") {
        Ok(url) => RedisCacheLayer::builder(RedisStore::connect(&url).await?),
        Err(_) => RedisCacheLayer::builder(MemoryStore::new(64 * 1024 * 1024)),
    };
    let cache = builder
        .namespace("quickstart")
        .methods([Method::GET, Method::POST])
        .fresh_for(Duration::from_secs(30))
        .stale_for(Duration::from_secs(300))
        .build()?;
    let handle = cache.handle();
    // A fresh namespace each run, so the first call is always a miss.
    handle.purge().await?;

    // The "expensive" API: 300 ms per query.
    let origin_calls = Arc::new(AtomicUsize::new(0));
    let calls = origin_calls.clone();
    let origin = service_fn(move |request: Request<RequestBody>| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let query = request.into_body().collect().await?.to_bytes();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let body = format!(
                r#"{{"rows":[1,2,3],"query":{}}}"#,
                String::from_utf8_lossy(&query)
            );
            Ok::<_, BoxError>(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_default(),
            )
        }
    });
    let client = ServiceBuilder::new().layer(cache).service(origin);

    let queries = [
        r#"{"region":"emea","status":"open"}"#,
        r#"{"region":"emea","status":"open"}"#,
        r#"{ "status": "open", "region": "emea" }"#,
        r#"{"region":"apac","status":"open"}"#,
    ];
    for (i, query) in queries.iter().enumerate() {
        let request = Request::post("https://api.example.com/query")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(query.as_bytes())))?;
        let started = Instant::now();
        let response = client.clone().oneshot(request).await?;
        let outcome = CacheOutcome::of(&response).map_or("none", |o| o.as_str());
        let status = response
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "call={} cache={outcome} bytes={} ms={} cache-status=\"{status}\"",
            i + 1,
            body.len(),
            started.elapsed().as_millis(),
        );
    }
    let stats = handle.stats();
    println!(
        "origin calls={} hits={} misses={}",
        origin_calls.load(Ordering::SeqCst),
        stats.hits,
        stats.misses
    );
    Ok(())
}
