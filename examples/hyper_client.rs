//! `RedisCacheLayer` and `RetryLayer` over a plain `hyper_util::client::legacy::Client`, caching a `POST` query
//! against a local server the example starts.
//!
//! ```sh
//! cargo run --example hyper_client
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example hyper_client
//! ```
//!
//! It sends one query, the same query with its JSON members in another order, and a different query, and
//! prints each call's `Cache-Status`.

use axum::Json;
use axum::routing::post;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tower::{ServiceBuilder, ServiceExt};
use tower_redis_cache::error::BoxError;
use tower_redis_cache::{MemoryStore, RedisCacheLayer, RedisStore, RequestBody, RetryLayer};

/// The expensive API: 150 ms per query.
async fn start_api() -> Result<String, BoxError> {
    let app = axum::Router::new().route(
        "/reports/query",
        post(|Json(query): Json<Value>| async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            Json(json!({"rows": 42, "query": query}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/reports/query", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = start_api().await?;
    let store = match std::env::var("REDIS_URL") {
        Ok(redis) => RedisCacheLayer::builder(RedisStore::connect(&redis).await?),
        Err(_) => RedisCacheLayer::builder(MemoryStore::new(64 * 1024 * 1024)),
    };
    let cache = store
        .namespace("hyper-example")
        .methods([Method::POST])
        .fresh_for(Duration::from_secs(30))
        .build()?;
    let retry = RetryLayer::builder()
        // This POST only reads, so 5xx and transport errors may be retried too.
        .retry_non_idempotent(true)
        .build()?;
    let hyper = Client::builder(TokioExecutor::new()).build_http::<RequestBody>();
    let client = ServiceBuilder::new()
        .layer(cache)
        .layer(retry)
        .service(hyper);

    let queries = [
        r#"{"report":"orders","from":"2026-11-01","to":"2026-11-29"}"#,
        r#"{"to":"2026-11-29","report":"orders","from":"2026-11-01"}"#,
        r#"{"report":"refunds","from":"2026-11-01","to":"2026-11-29"}"#,
    ];
    for (i, query) in queries.iter().enumerate() {
        let request = Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(query.as_bytes())))?;
        let started = Instant::now();
        let response = client.clone().oneshot(request).await?;
        let status = response
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "call={} cache-status=\"{status}\" bytes={} ms={:.1}",
            i + 1,
            body.len(),
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
