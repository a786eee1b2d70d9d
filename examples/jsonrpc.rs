//! A JSON-RPC endpoint behind the cache, as an Ethereum node's: its reads are answered from the cache whatever
//! `id` each call carries, each answer with its own call's `id`; a transaction, at the same `POST /`, reaches
//! the node every time and drops the reads it may have changed; an error the node answers with a `200` is not
//! kept.
//!
//! ```sh
//! cargo run --example jsonrpc            # the calls below in-process, then exit
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example jsonrpc
//! ```
//!
//! `query_when(jsonrpc::only_calls_to(READS))` tells the reads from the writes, `store_when(jsonrpc::is_success)`
//! keeps the errors out, and `echo_body_field("id")` leaves the `id`'s value out of the key and sets each
//! answer's to the call's own.

use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use tower::{ServiceBuilder, ServiceExt};
use tower_redis_cache::cache::jsonrpc;
use tower_redis_cache::error::BoxError;
use tower_redis_cache::{MemoryStore, RedisCacheLayer, RedisStore};

/// The calls that read the node's state; any other changes it.
const READS: &[&str] = &["eth_chainId", "eth_getBalance", "eth_getBlockByNumber"];

/// The one balance the node holds, in wei.
type Balance = Arc<Mutex<u64>>;

/// A stand-in for an Ethereum node: `eth_sendRawTransaction` adds to the balance, `eth_getBalance` reads it,
/// and a block it has not seen yet is an error (a `200`, as JSON-RPC answers one).
async fn node(State(balance): State<Balance>, Json(call): Json<Value>) -> Json<Value> {
    let mut balance = balance
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let answer = match call["method"].as_str().unwrap_or("") {
        "eth_sendRawTransaction" => {
            *balance += 1_000;
            json!({ "result": "0x5e1f" })
        }
        "eth_getBalance" => json!({ "result": format!("{:#x}", *balance) }),
        "eth_getBlockByNumber" => {
            json!({ "error": { "code": -32000, "message": "header not found" } })
        }
        _ => json!({ "result": "0x1" }),
    };
    let mut answer = answer;
    answer["jsonrpc"] = json!("2.0");
    answer["id"] = call["id"].clone();
    Json(answer)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let builder = match std::env::var("REDIS_URL") {
        Ok(url) => RedisCacheLayer::builder(RedisStore::connect(&url).await?),
        Err(_) => RedisCacheLayer::builder(MemoryStore::new(64 * 1024 * 1024)),
    };
    let cache = builder
        .namespace("jsonrpc-example")
        .methods([Method::POST])
        .query_when(|_, body| jsonrpc::only_calls_to(body, READS))
        .store_when(|_, _, body| jsonrpc::is_success(body))
        .echo_body_field("id")
        .build()?;
    // A fresh namespace each run, so the first call is a miss.
    cache.handle().purge().await?;
    let app = Router::new()
        .route("/", post(node))
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|error: BoxError| async move {
                    (StatusCode::BAD_GATEWAY, error.to_string())
                }))
                .layer(cache),
        )
        .with_state(Arc::new(Mutex::new(5_000)));

    let balance = r#""method": "eth_getBalance", "params": ["0xab", "latest"]"#;
    let calls = [
        balance,
        // The same read, numbered otherwise by its client: answered from the cache, with its own `id`.
        balance,
        r#""method": "eth_sendRawTransaction", "params": ["0xf86c"]"#,
        // The transaction dropped the cached read: asked again, it shows the new balance.
        balance,
        // An error inside a `200`: not stored, so asked again it reaches the node again.
        r#""method": "eth_getBlockByNumber", "params": ["0x1312d00", false]"#,
        r#""method": "eth_getBlockByNumber", "params": ["0x1312d00", false]"#,
    ];
    for (i, call) in calls.into_iter().enumerate() {
        let id = 100 + i;
        let body = format!(r#"{{"jsonrpc": "2.0", {call}, "id": {id}}}"#);
        let request = axum::http::Request::post("/")
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
