//! A GraphQL endpoint behind the cache: its queries are answered from the cache, and a mutation, at the same
//! `POST /graphql`, reaches the server every time and drops the queries it may have changed.
//!
//! ```sh
//! cargo run --example graphql            # the calls below in-process, then exit
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example graphql
//! ```
//!
//! `query_when(graphql::is_query)` reads each request's document: a `query` is cached by its canonical JSON
//! body; anything else (`mutation`, `subscription`, a document it cannot read) is a write. When the write
//! succeeds, the cached queries sent to `/graphql` are removed in every process sharing the cache, so the next
//! query sees the new item. `store_when(graphql::is_success)` keeps the errors a GraphQL server answers with a
//! `200` out of the cache: a query for a field the server does not know reaches it every time.

use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use tower::{ServiceBuilder, ServiceExt};
use tower_redis_cache::cache::graphql;
use tower_redis_cache::error::BoxError;
use tower_redis_cache::{MemoryStore, RedisCacheLayer, RedisStore};

/// The items the server holds.
type Items = Arc<Mutex<Vec<String>>>;

/// A stand-in for a GraphQL server: `mutation { add(name: "...") }` adds an item, a query naming `price` is an
/// error (a `200`, as GraphQL servers answer one), anything else lists the items.
async fn graphql_endpoint(State(items): State<Items>, Json(request): Json<Value>) -> Json<Value> {
    let document = request["query"].as_str().unwrap_or("");
    let mut items = items
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if document.trim_start().starts_with("mutation") {
        let name = document.split('"').nth(1).unwrap_or("unnamed").to_owned();
        items.push(name.clone());
        return Json(json!({ "data": { "add": { "name": name } } }));
    }
    if document.contains("price") {
        let message = "Cannot query field \"price\" on type \"Query\".";
        return Json(json!({ "errors": [{ "message": message }] }));
    }
    Json(json!({ "data": { "items": *items } }))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let builder = match std::env::var("REDIS_URL") {
        Ok(url) => RedisCacheLayer::builder(RedisStore::connect(&url).await?),
        Err(_) => RedisCacheLayer::builder(MemoryStore::new(64 * 1024 * 1024)),
    };
    let cache = builder
        .namespace("graphql-example")
        .methods([Method::GET, Method::POST])
        .query_when(|_, body| graphql::is_query(body))
        .store_when(|_, _, body| graphql::is_success(body))
        .build()?;
    // A fresh namespace each run, so the first query is a miss.
    cache.handle().purge().await?;
    let items: Items = Arc::new(Mutex::new(vec!["first".to_owned()]));
    let app = Router::new()
        .route("/graphql", post(graphql_endpoint))
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|error: BoxError| async move {
                    (StatusCode::BAD_GATEWAY, error.to_string())
                }))
                .layer(cache),
        )
        .with_state(items);

    let query = r#"{"query": "query Items { items }"}"#;
    let calls = [
        query,
        // The same query, its members in another order and spaced otherwise: one entry.
        r#"{ "query" : "query Items { items }" }"#,
        r#"{"query": "mutation { add(name: \"second\") { name } }"}"#,
        // The mutation removed the cached query: asked again, it shows the new item.
        query,
        query,
        // An error, answered with a `200`: not stored, so asked again it reaches the server again.
        r#"{"query": "query { price }"}"#,
        r#"{"query": "query { price }"}"#,
    ];
    for (i, body) in calls.into_iter().enumerate() {
        let request = axum::http::Request::post("/graphql")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))?;
        let response = app.clone().oneshot(request).await?;
        let status = response.headers().get("cache-status").cloned();
        let bytes = response.into_body().collect().await?.to_bytes();
        println!(
            "call={} cache-status={:?} body={}",
            i + 1,
            status
                .as_ref()
                .map(|s| s.to_str().unwrap_or("?"))
                .unwrap_or("-"),
            String::from_utf8_lossy(&bytes),
        );
    }
    Ok(())
}
