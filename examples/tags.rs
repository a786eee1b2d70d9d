//! Cached searches that a write to one of their orders removes, whatever their URI: an axum server whose
//! answers name what they hold (`Cache-Tag: order:1 order:3`), and whose `PUT /orders/{id}` is tagged
//! `order:{id}` by the layer's `tags`.
//!
//! ```sh
//! cargo run --example tags            # the calls below in-process, then exit
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example tags
//! ```
//!
//! A search for open orders is cached; so is each order. Shipping order 3 removes the search that showed it,
//! in every process sharing the cache (the removal is Redis's), and leaves order 2's entry alone. A
//! `CacheHandle::invalidate_tag("order:3")` from anywhere would do the same.
//!
//! Then order 2 is reopened behind the server's back (an admin tool), and `mark_tag_stale("order:2")` says so
//! without removing anything (a soft purge): the next read is answered at once from the stale entry while one
//! refresh asks the server, and the read after it gets the reopened order.

use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tower::{ServiceBuilder, ServiceExt};
use tower_redis_cache::error::BoxError;
use tower_redis_cache::{MemoryStore, RedisCacheLayer, RedisStore};

/// Order id to status.
type Orders = Arc<Mutex<BTreeMap<u32, String>>>;

/// The field the answers name their orders in.
const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// `GET /orders?status=open`: the matching orders, tagged with each one's id.
async fn search(State(orders): State<Orders>, uri: Uri) -> Response {
    let wanted = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("status="))
        .unwrap_or("")
        .to_owned();
    let found: Vec<Value> = orders
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|(_, status)| **status == wanted)
        .map(|(id, status)| json!({ "id": id, "status": status }))
        .collect();
    let tags: Vec<String> = found
        .iter()
        .map(|order| format!("order:{}", order["id"]))
        .collect();
    tagged(&tags.join(" "), Json(json!(found)))
}

/// `GET /orders/{id}`.
async fn order(State(orders): State<Orders>, Path(id): Path<u32>) -> Response {
    let status = orders
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&id)
        .cloned();
    match status {
        Some(status) => tagged(
            &format!("order:{id}"),
            Json(json!({ "id": id, "status": status })),
        ),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `PUT /orders/{id}` with `{"status": ...}`.
async fn update(
    State(orders): State<Orders>,
    Path(id): Path<u32>,
    Json(body): Json<Value>,
) -> StatusCode {
    let Some(status) = body["status"].as_str() else {
        return StatusCode::BAD_REQUEST;
    };
    orders
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(id, status.to_owned());
    StatusCode::NO_CONTENT
}

fn tagged(tags: &str, answer: impl IntoResponse) -> Response {
    let mut response = answer.into_response();
    if let Ok(value) = HeaderValue::from_str(tags) {
        response.headers_mut().insert(CACHE_TAG, value);
    }
    response
}

/// `PUT /orders/{id}` is tagged `order:{id}`; reads are tagged by their answers.
fn write_tags(parts: &axum::http::request::Parts) -> Vec<String> {
    let id = parts.uri.path().strip_prefix("/orders/");
    match id {
        Some(id) if parts.method == Method::PUT => vec![format!("order:{id}")],
        _ => Vec::new(),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let builder = match std::env::var("REDIS_URL") {
        Ok(url) => RedisCacheLayer::builder(RedisStore::connect(&url).await?),
        Err(_) => RedisCacheLayer::builder(MemoryStore::new(64 * 1024 * 1024)),
    };
    let cache = builder
        .namespace("tags-example")
        .tags(write_tags)
        .tags_from_header(CACHE_TAG)
        .build()?;
    let handle = cache.handle();
    // A fresh namespace each run, so the first calls are misses.
    handle.purge().await?;
    let orders: Orders = Arc::new(Mutex::new(BTreeMap::from([
        (1, "open".to_owned()),
        (2, "shipped".to_owned()),
        (3, "open".to_owned()),
    ])));
    let app = Router::new()
        .route("/orders", get(search))
        .route("/orders/{id}", get(order).put(update))
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|error: BoxError| async move {
                    (StatusCode::BAD_GATEWAY, error.to_string())
                }))
                .layer(cache),
        )
        .with_state(orders.clone());

    let calls = [
        ("GET", "/orders?status=open", ""),
        ("GET", "/orders?status=open", ""),
        ("GET", "/orders/2", ""),
        ("PUT", "/orders/3", r#"{"status":"shipped"}"#),
        // The search showed order 3: gone. Order 2's entry was not touched.
        ("GET", "/orders?status=open", ""),
        ("GET", "/orders/2", ""),
    ];
    for (i, (method, uri, body)) in calls.into_iter().enumerate() {
        call(&app, i + 1, method, uri, body).await?;
    }

    // Reopened behind the server's back; the cache is told, softly.
    orders
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(2, "open".to_owned());
    let stores = handle.stats().stores;
    println!("marked stale: {}", handle.mark_tag_stale("order:2").await?);
    // Answered at once with what the entry holds, while one refresh runs in the background.
    call(&app, 7, "GET", "/orders/2", "").await?;
    while handle.stats().stores == stores {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    call(&app, 8, "GET", "/orders/2", "").await?;
    Ok(())
}

/// Sends one request through `app` and prints what came back.
async fn call(
    app: &Router,
    n: usize,
    method: &str,
    uri: &str,
    body: &'static str,
) -> Result<(), BoxError> {
    let request = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))?;
    let response = app.clone().oneshot(request).await?;
    let status = response.headers().get("cache-status").cloned();
    let bytes = response.into_body().collect().await?.to_bytes();
    println!(
        "call={n} {method} {uri} cache-status={:?} body={}",
        status
            .as_ref()
            .map(|s| s.to_str().unwrap_or("?"))
            .unwrap_or("-"),
        String::from_utf8_lossy(&bytes),
    );
    Ok(())
}
