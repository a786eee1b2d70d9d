//! An axum server whose expensive `POST /query` sits behind `RedisCacheLayer` (keyed by its JSON body), next
//! to an uncached `GET /stats` (the handler's calls and the cache's counts).
//!
//! ```sh
//! cargo run --example axum_server
//! curl -si localhost:3000/query -H 'content-type: application/json' -d '{"b":2,"a":1}'   # miss, ~200 ms
//! curl -si localhost:3000/query -H 'content-type: application/json' -d '{"a":1,"b":2}'   # hit
//! curl -si localhost:3000/query -H 'content-type: application/json' -H 'authorization: Bearer me' \
//!   -d '{"a":1,"b":2}'                                                                     # bypass: per-user
//! curl -si localhost:3000/query -H 'content-type: application/json' -H 'cache-control: no-cache' \
//!   -d '{"a":1,"b":2}'                                                                     # hit all the same
//! curl -s localhost:3000/stats
//! cargo run --example axum_server -- --demo   # the same calls in-process, then exit
//! ```
//!
//! A request with `Authorization` or `Cookie` may be answered differently for each user, so with the default
//! settings it goes to the handler and is never answered from another request's entry
//! (`Cache-Status: ...; fwd=bypass; detail=authorization`).
//!
//! Several of these servers sharing one Redis (`REDIS_URL`) collapse misses across processes with the default
//! settings: while one server computes a query, the others wait for its entry instead of running the handler
//! (`Cache-Status: ...; collapsed; detail=fleet`).
//!
//! Environment: `BIND` (default `127.0.0.1:3000`), `REDIS_URL` (unset: in-memory store), `FRESH_SECS`
//! (default 5), `STALE_SECS` (default 30), `ORIGIN_DELAY_MS` (default 200), `NEAR_CACHE_MB` (unset or 0: off;
//! otherwise a near cache of that many MiB in front of Redis, kept coherent by Redis client tracking: needs
//! `REDIS_URL`).

use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tower::ServiceBuilder;
use tower_redis_cache::cache::CacheHandle;
use tower_redis_cache::error::BoxError;
use tower_redis_cache::{MemoryStore, RedisCacheLayer, RedisStore};

#[derive(Clone)]
struct AppState {
    handle: CacheHandle,
    calls: Arc<AtomicU64>,
    delay: Duration,
}

fn env_u64(name: &str, default: u64) -> Result<u64, BoxError> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|e| format!("{name}={value:?} is not a whole number: {e}").into()),
        Err(_) => Ok(default),
    }
}

async fn query(State(state): State<AppState>, Json(input): Json<Value>) -> Json<Value> {
    let calls = state.calls.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(state.delay).await;
    Json(json!({ "calls": calls, "echo": input }))
}

/// How often the handler ran, and what the cache did: the near cache's hits among all hits, while it answers.
async fn stats(State(state): State<AppState>) -> Json<Value> {
    let cache = state.handle.stats();
    Json(json!({
        "calls": state.calls.load(Ordering::SeqCst),
        "hits": cache.hits,
        "near_hits": cache.near_hits,
        "stale_hits": cache.stale_hits,
        "misses": cache.misses,
        "coalesced": cache.coalesced,
        "stores": cache.stores,
        "store_errors": cache.store_errors,
        "near_cache_live": state.handle.near_cache_live(),
        "near_cache_bytes": cache.near_bytes,
        "near_cache_entries": cache.near_entries,
    }))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let fresh = Duration::from_secs(env_u64("FRESH_SECS", 5)?);
    let stale = Duration::from_secs(env_u64("STALE_SECS", 30)?);
    let delay = Duration::from_millis(env_u64("ORIGIN_DELAY_MS", 200)?);

    let builder = match std::env::var("REDIS_URL") {
        Ok(url) => RedisCacheLayer::builder(RedisStore::connect(&url).await?),
        Err(_) => RedisCacheLayer::builder(MemoryStore::new(64 * 1024 * 1024)),
    };
    let cache = builder
        .namespace("axum-example")
        .methods([Method::POST])
        .fresh_for(fresh)
        .stale_for(stale)
        // Its clients do not steer a server's cache: a browser's reload (`max-age=0`) or a front end's
        // `no-cache` on every call is answered from it like any other request.
        .respect_request_cache_control(false)
        .near_cache(env_u64("NEAR_CACHE_MB", 0)? << 20)
        .build()?;
    let handle = cache.handle();

    let state = AppState {
        handle: handle.clone(),
        calls: Arc::new(AtomicU64::new(0)),
        delay,
    };
    let app = Router::new()
        .route("/query", post(query))
        // The cache's errors (inner failures shared with coalesced waiters) become 502s.
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|error: BoxError| async move {
                    (StatusCode::BAD_GATEWAY, error.to_string())
                }))
                .layer(cache),
        )
        .route("/stats", get(stats))
        .with_state(state);

    if std::env::args().any(|a| a == "--demo") {
        return demo(app).await;
    }
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // On Ctrl-C: stop taking connections, finish the requests in flight, then the cache's background refreshes.
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    if !handle.shutdown(Duration::from_secs(5)).await {
        eprintln!("cache refreshes still running after 5 s; exiting anyway");
    }
    Ok(())
}

/// `--demo`: sends the calls above to the app in-process, prints each outcome, and exits.
async fn demo(app: Router) -> Result<(), BoxError> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let calls: [(&str, Option<(&str, &str)>); 6] = [
        (r#"{"b":2,"a":1}"#, None),
        (r#"{"a":1,"b":2}"#, None),
        (r#"{"a":1,"b":3}"#, None),
        // The first query again from a client that asks for no cached answer: the server's cache answers it.
        (r#"{"a":1,"b":2}"#, Some(("cache-control", "no-cache"))),
        // The first query again, for a signed-in user and for a session: never another request's answer.
        (r#"{"a":1,"b":2}"#, Some(("authorization", "Bearer me"))),
        (r#"{"a":1,"b":2}"#, Some(("cookie", "session=me"))),
    ];
    for (i, (body, header)) in calls.iter().enumerate() {
        let mut request =
            axum::http::Request::post("/query").header("content-type", "application/json");
        if let Some((name, value)) = header {
            request = request.header(*name, *value);
        }
        let request = request.body(axum::body::Body::from(*body))?;
        let started = std::time::Instant::now();
        let response = app.clone().oneshot(request).await?;
        let status = response.headers().get("cache-status").cloned();
        let bytes = response.into_body().collect().await?.to_bytes();
        println!(
            "call={} cache-status={:?} body={} ms={:.1}",
            i + 1,
            status,
            String::from_utf8_lossy(&bytes),
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
