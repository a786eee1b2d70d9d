//! A multi-tenant axum server whose expensive report is cached per tenant: the users of one tenant share its
//! entries, and no tenant ever gets another's answer.
//!
//! ```sh
//! cargo run --example tenants            # the calls below in-process, then exit
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example tenants
//! ```
//!
//! The authentication layer sits in front of the cache: it checks each bearer token and leaves the tenant it
//! belongs to in the request's extensions, or answers `401`. The cache's `partition_by` reads that tenant and
//! keys the request by it, and `Credentials::Partition` lets requests with `Authorization` be cached, under
//! their tenant rather than each token. A request that reached the cache with no tenant would bypass it
//! (`Cache-Status: ...; detail=partition`).

use axum::error_handling::HandleErrorLayer;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use http_body_util::BodyExt;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tower::{ServiceBuilder, ServiceExt};
use tower_redis_cache::cache::Credentials;
use tower_redis_cache::error::BoxError;
use tower_redis_cache::{MemoryStore, RedisCacheLayer, RedisStore};

/// The tenant a verified token belongs to.
#[derive(Clone)]
struct Tenant(Arc<str>);

/// Token to tenant: what a real server would learn from its identity provider.
type Tokens = Arc<HashMap<&'static str, Tenant>>;

/// Answers `401` unless the bearer token is known; else passes the request on with its tenant.
async fn authenticate(State(tokens): State<Tokens>, mut request: Request, next: Next) -> Response {
    let tenant = request
        .headers()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(|token| tokens.get(token))
        .cloned();
    match tenant {
        Some(tenant) => {
            request.extensions_mut().insert(tenant);
            next.run(request).await
        }
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// `GET /report`: the tenant's report, expensive to compute.
async fn report(
    State(runs): State<Arc<AtomicU64>>,
    Extension(tenant): Extension<Tenant>,
) -> Json<serde_json::Value> {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    Json(json!({ "tenant": &*tenant.0, "run": run }))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let builder = match std::env::var("REDIS_URL") {
        Ok(url) => RedisCacheLayer::builder(RedisStore::connect(&url).await?),
        Err(_) => RedisCacheLayer::builder(MemoryStore::new(64 * 1024 * 1024)),
    };
    let cache = builder
        .namespace("tenants-example")
        .partition_by(|parts| {
            parts
                .extensions
                .get::<Tenant>()
                .map(|tenant| tenant.0.as_bytes().to_vec())
        })
        .credentials(Credentials::Partition)
        // A server's cache: a client's `Cache-Control: no-cache` does not send its calls past it.
        .respect_request_cache_control(false)
        .build()?;
    // A fresh namespace each run, so the first calls are misses.
    cache.handle().purge().await?;

    let acme = Tenant("acme".into());
    let globex = Tenant("globex".into());
    let tokens: Tokens = Arc::new(HashMap::from([
        ("alice-token", acme.clone()),
        ("bob-token", acme),
        ("carol-token", globex),
    ]));
    let app = Router::new()
        .route("/report", get(report))
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|error: BoxError| async move {
                    (StatusCode::BAD_GATEWAY, error.to_string())
                }))
                .layer(cache),
        )
        .with_state(Arc::new(AtomicU64::new(0)))
        // Outermost: the cache only ever sees requests this let through, each with its tenant.
        .layer(middleware::from_fn_with_state(tokens, authenticate));

    // Alice computes acme's report; Bob (acme too) is answered from it; Carol (globex) gets her own; an
    // unknown token never reaches the cache.
    for (i, token) in ["alice-token", "bob-token", "carol-token", "mallory-token"]
        .into_iter()
        .enumerate()
    {
        let request = axum::http::Request::get("/report")
            .header("authorization", format!("Bearer {token}"))
            .body(axum::body::Body::empty())?;
        let response = app.clone().oneshot(request).await?;
        let code = response.status().as_u16();
        let status = response.headers().get("cache-status").cloned();
        let bytes = response.into_body().collect().await?.to_bytes();
        println!(
            "call={} {token} {code} cache-status={:?} body={}",
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
