//! The layers in the ecosystem: axum routers, reqwest-middleware (both directions, sharing entries through one
//! Redis), tracing spans, the metrics facade, and the Send/Sync guarantees of the assembled client.

use crate::support;

use axum::body::Body as AxumBody;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Extension, Path};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use support::{RedisServer, fred_client};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_redis_cache::cache::Credentials;
use tower_redis_cache::error::BoxError;
use tower_redis_cache::reqwest::{CacheMiddleware, ReqwestService};
use tower_redis_cache::{CacheOutcome, MemoryStore, RedisCacheLayer, RedisStore, RequestBody};

/// A JSON origin on a real loopback port that counts its calls.
async fn origin() -> (String, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let app = Router::new().route(
        "/query",
        post(move |Json(input): Json<Value>| {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                Json(json!({"call": n, "echo": input}))
            }
        }),
    );
    (format!("http://{}/query", serve(app).await), calls)
}

/// Serves `app` on a free loopback port; returns its address.
async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A JSON `POST` of `body` to `url` through `client`.
async fn post_json(
    client: &reqwest_middleware::ClientWithMiddleware,
    url: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn cache_layer(redis: &RedisServer) -> RedisCacheLayer {
    RedisCacheLayer::builder(RedisStore::new(fred_client(&redis.url()).await))
        .namespace("shared")
        .methods([Method::GET, Method::POST])
        .store_timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap()
}

/// A reqwest client with the cache middleware over a memory store, and the middleware's layer (for its stats).
fn middleware_client(
    plain: &reqwest::Client,
) -> (RedisCacheLayer, reqwest_middleware::ClientWithMiddleware) {
    let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(plain.clone())
        .with(CacheMiddleware::new(&layer, plain.clone()))
        .build();
    (layer, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_layer_and_reqwest_middleware_read_each_others_entries() {
    let redis = RedisServer::start();
    let (url, calls) = origin().await;
    let plain = reqwest::Client::new();

    // Two independent layers (two fred connections) over the same Redis and namespace.
    let tower_side = ServiceBuilder::new()
        .layer(cache_layer(&redis).await)
        .service(ReqwestService::new(plain.clone()));
    let middleware_layer = cache_layer(&redis).await;
    let middleware_side = reqwest_middleware::ClientBuilder::new(plain.clone())
        .with(CacheMiddleware::new(&middleware_layer, plain.clone()))
        .build();

    let tower_call = |body: &'static str| {
        let svc = tower_side.clone();
        let url = url.clone();
        async move {
            let request = Request::post(url)
                .header("content-type", "application/json")
                .body(reqwest::Body::from(body))
                .unwrap();
            let response = svc.oneshot(request).await.unwrap();
            let outcome = CacheOutcome::of(&response).unwrap();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (outcome, bytes)
        }
    };
    let middleware_call = |body: &'static str| {
        let client = middleware_side.clone();
        let url = url.clone();
        async move {
            let response = post_json(&client, &url, body).await;
            assert_eq!(response.status(), StatusCode::OK);
            let header = response.headers()["cache-status"]
                .to_str()
                .unwrap()
                .to_owned();
            let outcome = CacheOutcome::from_headers(response.headers()).unwrap();
            (outcome, header, response.bytes().await.unwrap())
        }
    };

    let (outcome, tower_bytes) = tower_call(r#"{"q":"orders","page":1}"#).await;
    assert!(
        matches!(outcome, CacheOutcome::Miss { stored: true, .. }),
        "{outcome:?}"
    );
    let (outcome, header, bytes) = middleware_call(r#"{"page":1,"q":"orders"}"#).await;
    assert_eq!(outcome, CacheOutcome::Hit, "{header}");
    assert!(header.contains("hit"), "{header}");
    assert_eq!(bytes, tower_bytes);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let (outcome, _, middleware_bytes) = middleware_call(r#"{"q":"customers"}"#).await;
    assert!(matches!(outcome, CacheOutcome::Miss { stored: true, .. }));
    let (outcome, bytes) = tower_call(r#"{"q":"customers"}"#).await;
    assert_eq!(outcome, CacheOutcome::Hit);
    assert_eq!(bytes, middleware_bytes);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(middleware_layer.handle().stats().hits, 1);
}

#[tokio::test]
async fn reqwest_middleware_bypasses_what_it_must_not_cache() {
    let (url, calls) = origin().await;
    let plain = reqwest::Client::new();
    let (layer, client) = middleware_client(&plain);
    // POST is not cached by default: both calls reach the origin, each marked as a bypass.
    for _ in 0..2 {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(
            CacheOutcome::from_headers(response.headers()),
            Some(CacheOutcome::Bypass(
                tower_redis_cache::cache::BypassReason::Method
            ))
        );
        assert!(
            response.headers()["cache-status"]
                .to_str()
                .unwrap()
                .contains("fwd=method; detail=method")
        );
    }
    assert_eq!(layer.handle().stats().bypasses, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn reqwest_middleware_sends_a_query_tunnelling_a_write_to_the_origin_every_time() {
    let (url, calls) = origin().await;
    let plain = reqwest::Client::new();
    let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
        .methods([Method::GET, Method::POST])
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(plain.clone())
        .with(CacheMiddleware::new(&layer, plain.clone()))
        .build();
    let post = |body: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let response = post_json(&client, &url, body).await;
            CacheOutcome::from_headers(response.headers()).unwrap()
        }
    };
    // A Laravel origin reads `_method` in a JSON body as the method: a write, never answered from the cache.
    for _ in 0..2 {
        assert_eq!(
            post(r#"{"_method":"DELETE","id":7}"#).await,
            CacheOutcome::Bypass(tower_redis_cache::cache::BypassReason::Method)
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Without it, the same query is cached.
    post(r#"{"id":7}"#).await;
    assert_eq!(post(r#"{"id":7}"#).await, CacheOutcome::Hit);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Bypassed for its credentials, or naming a safe method in its query, a query tunnelling a write in its body
    // is still a write: it removes the URL's entries.
    for (credentials, path) in [(true, ""), (false, "?_method=GET")] {
        let mut write = client
            .post(format!("{url}{path}"))
            .header("content-type", "application/json");
        if credentials {
            write = write.header("authorization", "Bearer a");
        }
        let response = write.body(r#"{"_method":"DELETE"}"#).send().await.unwrap();
        assert!(matches!(
            CacheOutcome::from_headers(response.headers()),
            Some(CacheOutcome::Bypass(_))
        ));
        assert!(
            matches!(post(r#"{"id":7}"#).await, CacheOutcome::Miss { .. }),
            "{credentials} {path}"
        );
        assert_eq!(post(r#"{"id":7}"#).await, CacheOutcome::Hit);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 7);
}

#[tokio::test]
async fn reqwest_middleware_refuses_an_only_if_cached_miss_and_drops_what_a_put_changed() {
    let reads = Arc::new(AtomicU64::new(0));
    let counter = reads.clone();
    let app = Router::new().route(
        "/items/{id}",
        get(move |Path(id): Path<String>| {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                Json(json!({"id": id, "read": n}))
            }
        })
        .put(|| async { StatusCode::NO_CONTENT }),
    );
    let url = format!("http://{}/items/7", serve(app).await);
    let plain = reqwest::Client::new();
    let (layer, client) = middleware_client(&plain);
    let read = || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let response = client.get(url).send().await.unwrap();
            CacheOutcome::from_headers(response.headers()).unwrap()
        }
    };

    // Asked for a stored answer only, before there is one: the middleware refuses, the origin is not called.
    let refused = client
        .get(&url)
        .header("cache-control", "only-if-cached")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        CacheOutcome::from_headers(refused.headers()),
        Some(CacheOutcome::OnlyIfCachedMiss)
    );
    assert_eq!(reads.load(Ordering::SeqCst), 0);

    assert!(matches!(
        read().await,
        CacheOutcome::Miss { stored: true, .. }
    ));
    assert_eq!(read().await, CacheOutcome::Hit);
    let put = client.put(&url).body("{}").send().await.unwrap();
    assert_eq!(put.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        CacheOutcome::from_headers(put.headers()),
        Some(CacheOutcome::Bypass(
            tower_redis_cache::cache::BypassReason::Method
        ))
    );
    assert!(matches!(
        read().await,
        CacheOutcome::Miss { stored: true, .. }
    ));
    assert_eq!(reads.load(Ordering::SeqCst), 2);
    assert_eq!(layer.handle().stats().unsafe_invalidations, 1);
}

/// An axum app whose `/doc` answers JSON tagged `ETag: "v1"`, counting its calls and those that carried
/// `If-None-Match`.
fn tagged(calls: Arc<AtomicU64>, validated: Arc<AtomicU64>) -> Router {
    Router::new().route(
        "/doc",
        get(move |headers: http::HeaderMap| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if headers.contains_key("if-none-match") {
                validated.fetch_add(1, Ordering::SeqCst);
            }
            async move { ([("etag", "\"v1\"")], Json(json!({ "call": n }))) }
        }),
    )
}

#[tokio::test]
async fn a_client_holding_the_stored_answer_gets_a_304_over_the_wire_and_through_reqwest_middleware()
 {
    let redis = RedisServer::start();
    let plain = reqwest::Client::new();
    let holding_v1 = |client: &reqwest::Client, url: &str| {
        client.get(url).header("if-none-match", "\"v1\"").send()
    };

    // A server with the cache in front of its route, asked by a plain HTTP client.
    let (calls, validated) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let layer = cache_layer(&redis).await;
    let cache = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|error: BoxError| async move {
            (StatusCode::BAD_GATEWAY, error.to_string())
        }))
        .layer(layer.clone());
    let app = tagged(calls.clone(), validated.clone()).layer(cache);
    let url = format!("http://{}/doc", serve(app).await);
    let first = holding_v1(&plain, &url).await.unwrap();
    assert_eq!(first.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(first.headers()["etag"], "\"v1\"");
    assert!(
        first.headers()["cache-status"]
            .to_str()
            .unwrap()
            .ends_with("fwd=uri-miss; fwd-status=200; stored")
    );
    assert!(!first.headers().contains_key("content-type"));
    assert!(first.bytes().await.unwrap().is_empty());
    let whole = plain.get(&url).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(&whole.bytes().await.unwrap()[..], br#"{"call":1}"#);
    let again = holding_v1(&plain, &url).await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(
        CacheOutcome::from_headers(again.headers()),
        Some(CacheOutcome::Hit)
    );
    assert!(again.bytes().await.unwrap().is_empty());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(validated.load(Ordering::SeqCst), 0);
    assert_eq!(layer.handle().stats().not_modified, 2);

    // The middleware in a client, in front of the same app uncached.
    let (calls, validated) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let url = format!(
        "http://{}/doc",
        serve(tagged(calls.clone(), validated.clone())).await
    );
    let (layer, client) = middleware_client(&plain);
    for expected in [
        CacheOutcome::Miss {
            collapsed: false,
            stored: true,
        },
        CacheOutcome::Hit,
    ] {
        let response = client
            .get(&url)
            .header("if-none-match", "W/\"v1\"")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            CacheOutcome::from_headers(response.headers()),
            Some(expected)
        );
        assert!(response.bytes().await.unwrap().is_empty());
    }
    let whole = client.get(&url).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(&whole.bytes().await.unwrap()[..], br#"{"call":1}"#);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(validated.load(Ordering::SeqCst), 0);
    assert_eq!(layer.handle().stats().not_modified, 2);
}

/// An app whose `/doc` answers `{"call":<n>}` to a `GET` (and so to a `HEAD`, without the body), recording the
/// methods it was asked with.
fn recording(methods: Arc<Mutex<Vec<Method>>>) -> Router {
    Router::new().route(
        "/doc",
        get(move |method: Method| {
            let n = {
                let mut methods = methods.lock().unwrap();
                methods.push(method);
                methods.len()
            };
            async move { Json(json!({ "call": n })) }
        }),
    )
}

#[tokio::test]
async fn a_head_over_the_wire_and_through_reqwest_middleware_reads_the_entry_of_its_get() {
    let redis = RedisServer::start();
    let plain = reqwest::Client::new();
    let whole = br#"{"call":1}"#;
    let length = whole.len().to_string();

    // A server with the cache in front of its routes, asked by a plain HTTP client.
    let methods = Arc::new(Mutex::new(Vec::new()));
    let layer = RedisCacheLayer::builder(RedisStore::new(fred_client(&redis.url()).await))
        .store_timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap();
    let cache = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|error: BoxError| async move {
            (StatusCode::BAD_GATEWAY, error.to_string())
        }))
        .layer(layer);
    let url = format!(
        "http://{}/doc",
        serve(recording(methods.clone()).layer(cache)).await
    );
    let first = plain.head(&url).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["content-length"], length.as_str());
    assert!(
        first.headers()["cache-status"]
            .to_str()
            .unwrap()
            .ends_with("fwd=uri-miss; fwd-status=200; stored")
    );
    assert!(first.bytes().await.unwrap().is_empty());
    let get = plain.get(&url).send().await.unwrap();
    assert_eq!(
        CacheOutcome::from_headers(get.headers()),
        Some(CacheOutcome::Hit)
    );
    assert_eq!(&get.bytes().await.unwrap()[..], whole);
    let again = plain.head(&url).send().await.unwrap();
    assert_eq!(
        CacheOutcome::from_headers(again.headers()),
        Some(CacheOutcome::Hit)
    );
    assert_eq!(again.headers()["content-length"], length.as_str());
    assert_eq!(*methods.lock().unwrap(), [Method::GET]);

    // The middleware in a client, in front of the same app uncached.
    let methods = Arc::new(Mutex::new(Vec::new()));
    let url = format!("http://{}/doc", serve(recording(methods.clone())).await);
    let (_layer, client) = middleware_client(&plain);
    let first = client.head(&url).send().await.unwrap();
    assert_eq!(
        CacheOutcome::from_headers(first.headers()),
        Some(CacheOutcome::Miss {
            collapsed: false,
            stored: true
        })
    );
    assert_eq!(first.headers()["content-length"], length.as_str());
    assert!(first.bytes().await.unwrap().is_empty());
    let get = client.get(&url).send().await.unwrap();
    assert_eq!(
        CacheOutcome::from_headers(get.headers()),
        Some(CacheOutcome::Hit)
    );
    assert_eq!(&get.bytes().await.unwrap()[..], whole);
    assert_eq!(*methods.lock().unwrap(), [Method::GET]);
}

#[tokio::test]
async fn a_range_over_the_wire_and_through_reqwest_middleware_is_cut_from_the_entry() {
    let redis = RedisServer::start();
    let plain = reqwest::Client::new();
    let ranged = |client: &reqwest_middleware::ClientWithMiddleware, url: &str, range: &str| {
        client.get(url).header("range", range).send()
    };

    // A server with the cache in front of its routes, asked by a plain HTTP client.
    let methods = Arc::new(Mutex::new(Vec::new()));
    let layer = cache_layer(&redis).await;
    let cache = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|error: BoxError| async move {
            (StatusCode::BAD_GATEWAY, error.to_string())
        }))
        .layer(layer.clone());
    let url = format!(
        "http://{}/doc",
        serve(recording(methods.clone()).layer(cache)).await
    );
    let uncached = reqwest_middleware::ClientWithMiddleware::from(plain.clone());
    plain.get(&url).send().await.unwrap();
    let part = ranged(&uncached, &url, "bytes=2-5").await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], "bytes 2-5/10");
    assert_eq!(part.headers()["content-length"], "4");
    assert_eq!(
        CacheOutcome::from_headers(part.headers()),
        Some(CacheOutcome::Hit)
    );
    assert_eq!(&part.bytes().await.unwrap()[..], b"call");
    let past = ranged(&uncached, &url, "bytes=10-").await.unwrap();
    assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(past.headers()["content-range"], "bytes */10");
    assert!(past.bytes().await.unwrap().is_empty());
    assert_eq!(*methods.lock().unwrap(), [Method::GET]);
    assert_eq!(layer.handle().stats().partial, 2);

    // The middleware in a client, in front of the same app uncached.
    let methods = Arc::new(Mutex::new(Vec::new()));
    let url = format!("http://{}/doc", serve(recording(methods.clone())).await);
    let (layer, client) = middleware_client(&plain);
    client.get(&url).send().await.unwrap();
    let part = ranged(&client, &url, "bytes=-2").await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], "bytes 8-9/10");
    assert_eq!(&part.bytes().await.unwrap()[..], b"1}");
    assert_eq!(*methods.lock().unwrap(), [Method::GET]);
    assert_eq!(layer.handle().stats().partial, 1);
}

/// An axum app with a cached route reading a path parameter and a request extension.
fn app(layer: RedisCacheLayer, calls: Arc<AtomicU64>, use_route_layer: bool) -> Router {
    let handler = move |Path(id): Path<String>, Extension(tenant): Extension<Tenant>| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Json(json!({"id": id, "tenant": tenant.0}))
        }
    };
    let cache = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|error: BoxError| async move {
            (StatusCode::BAD_GATEWAY, error.to_string())
        }))
        .layer(layer);
    let router = Router::new().route("/items/{id}", get(handler));
    let router = if use_route_layer {
        router.route_layer(cache)
    } else {
        router.layer(cache)
    };
    // Outermost: an extension set before the cache sees the request.
    router.layer(Extension(Tenant("acme".into())))
}

#[derive(Clone)]
struct Tenant(String);

#[tokio::test]
async fn axum_router_layer_and_route_layer_keep_path_params_and_extensions() {
    for use_route_layer in [false, true] {
        let calls = Arc::new(AtomicU64::new(0));
        let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
            .build()
            .unwrap();
        let app = app(layer, calls.clone(), use_route_layer);
        let get = |path: &str| Request::get(path).body(AxumBody::empty()).unwrap();

        for (path, expect_outcome, expect_calls) in [
            ("/items/7", "miss", 1),
            ("/items/7", "hit", 1),
            ("/items/8", "miss", 2),
        ] {
            let response = app.clone().oneshot(get(path)).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let status = response.headers()["cache-status"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(
                status.contains(expect_outcome)
                    || expect_outcome == "miss" && status.contains("fwd=miss"),
                "{status}"
            );
            let body: Value =
                serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                    .unwrap();
            let id = path.rsplit('/').next().unwrap();
            assert_eq!(
                body,
                json!({"id": id, "tenant": "acme"}),
                "route_layer={use_route_layer}"
            );
            assert_eq!(
                calls.load(Ordering::SeqCst),
                expect_calls,
                "{path} route_layer={use_route_layer}"
            );
        }
    }
}

#[tokio::test]
async fn behind_an_axum_auth_layer_a_tenants_users_share_its_entries() {
    // The auth layer (outermost) lets a request through with its tenant, read from its token
    // (`<tenant>.<user>`); the cache keys by the tenant and caches whatever the credentials.
    let calls = Arc::new(AtomicU64::new(0));
    let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
        .partition_by(|parts| {
            parts
                .extensions
                .get::<Tenant>()
                .map(|tenant| tenant.0.clone())
        })
        .credentials(Credentials::Partition)
        .build()
        .unwrap();
    let counter = calls.clone();
    let report = move |Extension(tenant): Extension<Tenant>| {
        let call = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Json(json!({"tenant": tenant.0, "call": call})) }
    };
    let authenticate = |mut request: Request<AxumBody>, next: axum::middleware::Next| async move {
        let tenant = request
            .headers()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .and_then(|token| token.split_once('.'))
            .map(|(tenant, _user)| Tenant(tenant.to_owned()));
        match tenant {
            Some(tenant) => {
                request.extensions_mut().insert(tenant);
                next.run(request).await
            }
            None => StatusCode::UNAUTHORIZED.into_response(),
        }
    };
    let app = Router::new()
        .route("/report", get(report))
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|error: BoxError| async move {
                    (StatusCode::BAD_GATEWAY, error.to_string())
                }))
                .layer(layer),
        )
        .layer(axum::middleware::from_fn(authenticate));
    let read = |token: &'static str| {
        let app = app.clone();
        async move {
            let request = Request::get("/report")
                .header("authorization", format!("Bearer {token}"))
                .body(AxumBody::empty())
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            let outcome = CacheOutcome::of(&response);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (outcome, serde_json::from_slice::<Value>(&body).unwrap())
        }
    };
    let (first, alice) = read("acme.alice").await;
    assert!(
        matches!(first, Some(CacheOutcome::Miss { .. })),
        "{first:?}"
    );
    assert_eq!(read("acme.bob").await, (Some(CacheOutcome::Hit), alice));
    let (_, carol) = read("globex.carol").await;
    assert_eq!(carol, json!({"tenant": "globex", "call": 2}));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn reqwest_middleware_names_the_partition_from_the_calls_extensions() {
    let (url, calls) = origin().await;
    let plain = reqwest::Client::new();
    let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
        .methods([Method::POST])
        .partition_by(|parts| {
            parts
                .extensions
                .get::<Tenant>()
                .map(|tenant| tenant.0.clone())
        })
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(plain.clone())
        .with(CacheMiddleware::new(&layer, plain))
        .build();
    let query = |tenant: Option<&str>| {
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(r#"{"q":"orders"}"#);
        if let Some(tenant) = tenant {
            request = request.with_extension(Tenant(tenant.to_owned()));
        }
        async move {
            let response = request.send().await.unwrap();
            CacheOutcome::from_headers(response.headers()).unwrap()
        }
    };
    assert!(matches!(
        query(Some("acme")).await,
        CacheOutcome::Miss { .. }
    ));
    assert_eq!(query(Some("acme")).await, CacheOutcome::Hit);
    assert!(matches!(
        query(Some("globex")).await,
        CacheOutcome::Miss { .. }
    ));
    assert_eq!(
        query(None).await,
        CacheOutcome::Bypass(tower_redis_cache::cache::BypassReason::Partition)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// Sends `request`: its answer's cache outcome and JSON body.
async fn outcome_and_json(request: reqwest_middleware::RequestBuilder) -> (CacheOutcome, Value) {
    let response = request.send().await.unwrap();
    let outcome = CacheOutcome::from_headers(response.headers()).unwrap();
    let answer = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    (outcome, answer)
}

#[tokio::test]
async fn reqwest_middleware_answers_each_json_rpc_call_with_its_own_id() {
    use tower_redis_cache::cache::jsonrpc;
    // A node that answers `eth_getCode` with an error inside a `200`, as one that is behind does.
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let node = Router::new().route(
        "/",
        post(move |Json(call): Json<Value>| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let answer = if call["method"] == "eth_getCode" {
                json!({"jsonrpc": "2.0", "error": {"code": -32000, "message": "header not found"}})
            } else {
                json!({"jsonrpc": "2.0", "result": format!("0x{n}")})
            };
            let mut answer = answer;
            answer["id"] = call["id"].clone();
            async move { Json(answer) }
        }),
    );
    let url = format!("http://{}/", serve(node).await);
    let plain = reqwest::Client::new();
    let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
        .methods([Method::POST])
        .query_when(|_, body| jsonrpc::only_calls_to(body, &["eth_chainId", "eth_getCode"]))
        .store_when(|_, _, body| jsonrpc::is_success(body))
        .echo_body_field("id")
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(plain.clone())
        .with(CacheMiddleware::new(&layer, plain))
        .build();
    let send = |method: &str, id: u64| {
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"jsonrpc":"2.0","method":"{method}","id":{id}}}"#
            ));
        outcome_and_json(request)
    };
    for id in [1, 2, 3] {
        let (outcome, answer) = send("eth_chainId", id).await;
        assert_eq!(outcome == CacheOutcome::Hit, id > 1, "{outcome:?}");
        assert_eq!(answer, json!({"jsonrpc": "2.0", "result": "0x1", "id": id}));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The error and the write reach the node every time, each answered with its own id (the error first: a
    // write's success drops the URI's queries).
    for (method, id) in [
        ("eth_getCode", 4),
        ("eth_getCode", 5),
        ("eth_sendRawTransaction", 6),
        ("eth_sendRawTransaction", 7),
    ] {
        let (outcome, answer) = send(method, id).await;
        assert!(
            !matches!(outcome, CacheOutcome::Hit),
            "{method}: {outcome:?}"
        );
        assert_eq!(answer["id"], id);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn reqwest_middleware_drops_the_entries_of_a_write_whose_answer_never_came() {
    // A node whose item counts its reads, and whose `DELETE` is never answered (it may have deleted the item).
    let reads = Arc::new(AtomicU64::new(0));
    let counter = reads.clone();
    let node = Router::new().route(
        "/item",
        get(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Json(json!({"version": n})) }
        })
        .delete(std::future::pending::<StatusCode>),
    );
    let url = format!("http://{}/item", serve(node).await);
    let plain = reqwest::Client::new();
    let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(plain.clone())
        .with(CacheMiddleware::new(&layer, plain))
        .build();
    for hit in [false, true] {
        let (outcome, answer) = outcome_and_json(client.get(&url)).await;
        assert_eq!(outcome == CacheOutcome::Hit, hit, "{outcome:?}");
        assert_eq!(answer, json!({"version": 1}));
    }
    // The client gives up on the write: the error reaches the caller, and the item's entry is gone.
    let gave_up = client
        .delete(&url)
        .timeout(std::time::Duration::from_millis(200))
        .send()
        .await;
    assert!(gave_up.is_err(), "{gave_up:?}");
    let (outcome, answer) = outcome_and_json(client.get(&url)).await;
    assert!(matches!(outcome, CacheOutcome::Miss { .. }), "{outcome:?}");
    assert_eq!(answer, json!({"version": 2}));
    assert_eq!(reads.load(Ordering::SeqCst), 2);
}

#[cfg(feature = "decompress")]
#[tokio::test]
async fn reqwest_middleware_reads_a_gzipped_json_rpc_call_decoded() {
    use std::io::Write;
    use tower_redis_cache::cache::jsonrpc;
    // A node that reads gzipped calls, and says what it was sent.
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let node = Router::new().route(
        "/",
        post(move |headers: HeaderMap, gzipped: Bytes| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let call: Value = serde_json::from_reader(flate2::read::GzDecoder::new(&gzipped[..]))
                .unwrap_or_default();
            let answer = json!({
                "jsonrpc": "2.0",
                "result": format!("0x{n}"),
                "id": call["id"],
                "sent": headers["content-encoding"].to_str().unwrap(),
            });
            async move { Json(answer) }
        }),
    );
    let url = format!("http://{}/", serve(node).await);
    let plain = reqwest::Client::new();
    let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
        .methods([Method::POST])
        .query_when(|_, body| jsonrpc::only_calls_to(body, &["eth_chainId"]))
        .echo_body_field("id")
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(plain.clone())
        .with(CacheMiddleware::new(&layer, plain))
        .build();
    let send = |method: &str, id: u64| {
        let json = format!(r#"{{"jsonrpc":"2.0","method":"{method}","id":{id}}}"#);
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(json.as_bytes()).unwrap();
        let mut gzipped = encoder.finish().unwrap();
        // Method `cut`: the stream cut short.
        if method == "cut" {
            gzipped.truncate(gzipped.len() - 4);
        }
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(gzipped);
        outcome_and_json(request)
    };
    // Read decoded: a query, keyed without its `id`, each answer with its own.
    for id in [1, 2, 3] {
        let (outcome, answer) = send("eth_chainId", id).await;
        assert_eq!(outcome == CacheOutcome::Hit, id > 1, "{outcome:?}");
        assert_eq!(
            answer,
            json!({"jsonrpc": "2.0", "result": "0x1", "id": id, "sent": "gzip"})
        );
    }
    // A write reaches the node every time.
    for id in [4, 5] {
        let (outcome, answer) = send("eth_sendRawTransaction", id).await;
        assert_eq!(
            outcome,
            CacheOutcome::Bypass(tower_redis_cache::cache::BypassReason::NotAQuery)
        );
        assert_eq!(answer["id"], id);
    }
    // The writes dropped the query's entry: asked again, it is stored again.
    for id in [6, 7] {
        let (outcome, _) = send("eth_chainId", id).await;
        assert_eq!(outcome == CacheOutcome::Hit, id > 6, "{outcome:?}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // One that does not decode goes as it came, and since `query_when` cannot tell, counts as a write: once it
    // succeeds, the query is asked again.
    let (outcome, _) = send("cut", 8).await;
    assert_eq!(
        outcome,
        CacheOutcome::Bypass(tower_redis_cache::cache::BypassReason::RequestUndecodable)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    let (outcome, answer) = send("eth_chainId", 9).await;
    assert!(matches!(outcome, CacheOutcome::Miss { .. }), "{outcome:?}");
    assert_eq!(answer["result"], "0x6");
    assert_eq!(calls.load(Ordering::SeqCst), 6);
}

#[test]
fn the_assembled_client_and_its_futures_are_send_sync_and_clone() {
    use tower_redis_cache::genesys::{GenesysClient, GenesysError, GenesysService};
    fn send<T: Send>(_: &T) {}
    fn send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync_clone::<GenesysClient>();
    send_sync_clone::<GenesysService>();
    send_sync_clone::<RedisCacheLayer>();
    send_sync_clone::<tower_redis_cache::RetryLayer>();
    send_sync_clone::<tower_redis_cache::AuthLayer>();
    send_sync_clone::<CacheMiddleware>();
    send_sync::<GenesysError>();
    send_sync::<BoxError>();
    // Builders are Clone and Debug, so a configuration can be shown and reused.
    fn clone_debug<T: Clone + std::fmt::Debug>() {}
    clone_debug::<tower_redis_cache::cache::RedisCacheLayerBuilder>();
    clone_debug::<tower_redis_cache::retry::RetryLayerBuilder>();
    clone_debug::<tower_redis_cache::auth::AuthLayerBuilder>();
    clone_debug::<tower_redis_cache::genesys::GenesysClientBuilder>();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = runtime.enter();
    let client = GenesysClient::builder()
        .api_base("http://127.0.0.1:9")
        .login_base("http://127.0.0.1:9")
        .client_credentials("id", "secret")
        .build()
        .unwrap();
    // Futures and streams are built, never polled: only their types are checked.
    send(&client.get_action("x"));
    send(&client.execute_action("x", &json!({})));
    send(&client.list_all_actions(&Default::default()));
    send(&client.list_actions(&Default::default()));
    let request = Request::get("http://127.0.0.1:9/")
        .body(tower_redis_cache::RequestBody::empty())
        .unwrap();
    send(&client.service().oneshot(request));
}

#[cfg(feature = "metrics")]
#[test]
fn counters_reach_the_metrics_facade() {
    use metrics::{
        Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
        SharedString, Unit,
    };

    #[derive(Default)]
    struct Totals(Mutex<HashMap<String, u64>>);
    struct Handle(Arc<Totals>, String);
    /// Counts a histogram's values, each under its key with `#count` after it (and `#bad` for a value no
    /// duration has).
    impl HistogramFn for Handle {
        fn record(&self, value: f64) {
            let mark = if value.is_finite() && value >= 0.0 {
                "#count"
            } else {
                "#bad"
            };
            *self
                .0
                .0
                .lock()
                .unwrap()
                .entry(format!("{}{mark}", self.1))
                .or_default() += 1;
        }
    }
    use support::metrics::name_of;
    impl CounterFn for Handle {
        fn increment(&self, value: u64) {
            *self.0.0.lock().unwrap().entry(self.1.clone()).or_default() += value;
        }
        fn absolute(&self, value: u64) {
            self.0.0.lock().unwrap().insert(self.1.clone(), value);
        }
    }
    struct Local(Arc<Totals>);
    impl Recorder for Local {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(Arc::new(Handle(self.0.clone(), name_of(key))))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(Arc::new(Handle(self.0.clone(), name_of(key))))
        }
    }

    let totals = Arc::new(Totals::default());
    let recorder = Local(totals.clone());
    support::metrics::recorded(&recorder, async {
        let api = service_fn(|_req: Request<RequestBody>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        });
        let cache = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
            .namespace("metered")
            .build()
            .unwrap();
        let client = ServiceBuilder::new().layer(cache).service(api);
        for _ in 0..3 {
            let request = Request::get("https://api.example/x")
                .body(Full::<Bytes>::default())
                .unwrap();
            client.clone().oneshot(request).await.unwrap();
        }
        // A signed-in request: a bypass, counted with its reason.
        let request = Request::get("https://api.example/x")
            .header("authorization", "Bearer me")
            .body(Full::<Bytes>::default())
            .unwrap();
        client.clone().oneshot(request).await.unwrap();
        // An answer the cache may not keep: counted with why.
        let private = service_fn(|_req: Request<RequestBody>| async {
            let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
            response
                .headers_mut()
                .insert("cache-control", http::HeaderValue::from_static("private"));
            Ok::<_, Infallible>(response)
        });
        let cache = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
            .namespace("private")
            .build()
            .unwrap();
        let request = Request::get("https://api.example/mine")
            .body(Full::<Bytes>::default())
            .unwrap();
        let client = ServiceBuilder::new().layer(cache).service(private);
        client.oneshot(request).await.unwrap();
        // A stale entry's refresh, and an origin that fails: timed as well.
        let cache = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
            .namespace("refreshed")
            .fresh_for(std::time::Duration::ZERO)
            .stale_for(std::time::Duration::from_secs(60))
            .build()
            .unwrap();
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fails = failing.clone();
        let flaky = service_fn(move |_req: Request<RequestBody>| {
            let fail = fails.load(Ordering::SeqCst);
            async move {
                if fail {
                    return Err::<Response<Full<Bytes>>, BoxError>("origin down".into());
                }
                Ok(Response::new(Full::new(Bytes::from_static(b"{}"))))
            }
        });
        let client = ServiceBuilder::new().layer(cache).service(flaky);
        let get = |path: &str| {
            Request::get(format!("https://api.example{path}"))
                .body(Full::<Bytes>::default())
                .unwrap()
        };
        client.clone().oneshot(get("/x")).await.unwrap();
        let stale = client.clone().oneshot(get("/x")).await.unwrap();
        assert!(matches!(
            CacheOutcome::of(&stale),
            Some(CacheOutcome::Stale { refreshing: true })
        ));
        // The refresh runs on its own task: the origin fails only once it has answered.
        let refreshed = || {
            totals.0.lock().unwrap().contains_key(
                "tower_redis_cache_origin_call_seconds{namespace=refreshed,call=refresh,outcome=2xx}#count",
            )
        };
        for _ in 0..1000 {
            if refreshed() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        failing.store(true, Ordering::SeqCst);
        assert!(client.oneshot(get("/y")).await.is_err());
    });
    let totals = totals.0.lock().unwrap();
    assert_eq!(
        totals.get("tower_redis_cache_misses_total{namespace=metered}"),
        Some(&1),
        "{totals:?}"
    );
    assert_eq!(
        totals.get("tower_redis_cache_hits_total{namespace=metered}"),
        Some(&2),
        "{totals:?}"
    );
    // Every store call, timed: the three reads (a miss, two hits), and what the fill wrote.
    assert_eq!(
        totals.get(
            "tower_redis_cache_store_call_seconds{namespace=metered,operation=get,outcome=ok}#count"
        ),
        Some(&3),
        "{totals:?}"
    );
    assert!(
        totals.keys().any(|key| key
            .starts_with("tower_redis_cache_store_call_seconds{namespace=metered,operation=set")),
        "{totals:?}"
    );
    // Every origin call, timed, with why it was made and how it ended.
    for (labels, count) in [
        ("namespace=metered,call=miss,outcome=2xx", 1),
        ("namespace=metered,call=bypass,outcome=2xx", 1),
        ("namespace=private,call=miss,outcome=2xx", 1),
        ("namespace=refreshed,call=miss,outcome=2xx", 1),
        ("namespace=refreshed,call=refresh,outcome=2xx", 1),
        ("namespace=refreshed,call=miss,outcome=error", 1),
    ] {
        assert_eq!(
            totals.get(&format!(
                "tower_redis_cache_origin_call_seconds{{{labels}}}#count"
            )),
            Some(&count),
            "{labels}: {totals:?}"
        );
    }
    assert!(
        !totals.keys().any(|key| key.ends_with("#bad")),
        "{totals:?}"
    );
    assert_eq!(
        totals.get("tower_redis_cache_stores_total{namespace=metered}"),
        Some(&1),
        "{totals:?}"
    );
    assert_eq!(
        totals.get("tower_redis_cache_bypasses_total{namespace=metered,reason=authorization}"),
        Some(&1),
        "{totals:?}"
    );
    assert_eq!(
        totals.get("tower_redis_cache_not_stored_total{namespace=private,reason=response-private}"),
        Some(&1),
        "{totals:?}"
    );
}

/// Sends an order (`POST`) to `url` through `reqwest` under a retry layer allowing three attempts, which it must
/// fail: how many were made, and why the layer gave up.
async fn failed_order(
    reqwest: reqwest::Client,
    url: &str,
) -> (u32, Option<tower_redis_cache::retry::GaveUp>) {
    let retry = tower_redis_cache::RetryLayer::builder()
        .base_delay(std::time::Duration::from_millis(1))
        .max_attempts(3)
        .no_budget()
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(retry)
        .service(ReqwestService::new(reqwest));
    let order = Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"sku":1}"#)))
        .unwrap();
    let error = client.oneshot(order).await.unwrap_err();
    let error = error
        .downcast_ref::<tower_redis_cache::retry::error::RetryError>()
        .expect("a RetryError");
    (error.attempts(), error.gave_up())
}

/// Through reqwest, a refused connection is known for one as well: a `POST` that never reached the server is
/// sent again, as over hyper-util.
#[tokio::test]
async fn a_post_through_reqwest_is_retried_when_its_connection_is_refused() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(
        failed_order(reqwest::Client::new(), &format!("http://{closed}/orders")).await,
        (3, Some(tower_redis_cache::retry::GaveUp::MaxAttempts))
    );
}

/// A connection reqwest could not make for any cause, not only a refusal (a name that does not resolve, a TLS
/// handshake, a connect timeout), was never sent: a `POST` that met one is sent again. Here the name does not
/// resolve, through a resolver that knows none, so no `io::Error` the retry layer knows is in the error's chain:
/// only the client's own connect errors tell (reqwest's, and hyper-util's under it).
#[tokio::test]
async fn a_post_through_reqwest_is_retried_when_its_host_does_not_resolve() {
    /// Resolves no name, counting the names it was asked.
    struct NoSuchHost(Arc<AtomicU64>);
    impl reqwest::dns::Resolve for NoSuchHost {
        fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err("no such host".into()) })
        }
    }
    let asked = Arc::new(AtomicU64::new(0));
    let reqwest = reqwest::Client::builder()
        .dns_resolver(NoSuchHost(asked.clone()))
        .build()
        .unwrap();
    assert_eq!(
        failed_order(reqwest, "http://orders.example/orders").await,
        (3, Some(tower_redis_cache::retry::GaveUp::MaxAttempts))
    );
    assert_eq!(asked.load(Ordering::SeqCst), 3, "one look-up an attempt");
}

/// An axum app whose `/events` answers each subscriber an event stream (`hello <n>` for its `n`th call) that
/// stays open, behind `layer` over the whole router, on a real loopback port.
async fn event_stream_app(layer: RedisCacheLayer, calls: Arc<AtomicU64>) -> String {
    use axum::response::sse::{Event, Sse};
    use futures_util::stream::{self, StreamExt};
    let events = move || {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let first = Ok::<_, Infallible>(Event::default().data(format!("hello {n}")));
            Sse::new(stream::iter([first]).chain(stream::pending()))
        }
    };
    let app = Router::new().route("/events", get(events)).layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|error: BoxError| async move {
                (StatusCode::BAD_GATEWAY, error.to_string())
            }))
            .layer(layer),
    );
    format!("http://{}/events", serve(app).await)
}

/// Sends `request` and reads its head and first chunk while the stream stays open (a cache that held the
/// body until it ended would never answer: the guard fails the test instead of hanging it).
async fn first_chunk(request: reqwest_middleware::RequestBuilder) -> (reqwest::Response, Bytes) {
    let guard = std::time::Duration::from_secs(30);
    let mut response = tokio::time::timeout(guard, request.send())
        .await
        .expect("the head arrives while the stream is open")
        .unwrap();
    let chunk = tokio::time::timeout(guard, response.chunk())
        .await
        .expect("the first event arrives while the stream is open")
        .unwrap()
        .unwrap();
    (response, chunk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_reaches_each_subscriber_as_it_goes_and_is_never_stored() {
    use tower_redis_cache::cache::NotStored;
    let redis = RedisServer::start();
    let layer = cache_layer(&redis).await;
    let calls = Arc::new(AtomicU64::new(0));
    let url = event_stream_app(layer.clone(), calls.clone()).await;
    let plain = reqwest::Client::new();
    // Straight to the server, and through the cache middleware in front of it: both caches pass it on.
    let (middleware, through_middleware) = middleware_client(&plain);
    let direct = reqwest_middleware::ClientBuilder::new(plain.clone()).build();
    let mut open = Vec::new();
    for (n, client) in [(1, &direct), (2, &direct), (3, &through_middleware)] {
        let (response, chunk) = first_chunk(client.get(&url)).await;
        assert_eq!(chunk, format!("data: hello {n}\n\n"));
        let status = response.headers()["cache-status"].to_str().unwrap();
        assert!(
            status.contains("fwd=uri-miss; fwd-status=200; detail=response-stream"),
            "{status}"
        );
        open.push(response);
    }
    // Each subscriber its own call, none waiting on another's stream; nothing stored by either cache.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let stats = layer.handle().stats();
    assert_eq!(
        (stats.stores, stats.not_stored_for(NotStored::Stream)),
        (0, 3)
    );
    let stats = middleware.handle().stats();
    assert_eq!(
        (stats.stores, stats.not_stored_for(NotStored::Stream)),
        (0, 1)
    );
}

#[tokio::test]
async fn reqwest_middleware_caches_graphql_queries_and_lets_mutations_through_as_writes() {
    use tower_redis_cache::cache::graphql;
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let app = Router::new().route(
        "/graphql",
        post(move |body: Bytes| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Json(json!({"call": n, "bytes": body.len()})) }
        }),
    );
    let url = format!("http://{}/graphql", serve(app).await);
    let plain = reqwest::Client::new();
    let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
        .methods([Method::POST])
        .query_when(|_, body| graphql::is_query(body))
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(plain.clone())
        .with(CacheMiddleware::new(&layer, plain))
        .build();
    let send = |body: reqwest::Body| status_and_call(&client, &url, body);
    const QUERY: &str = r#"{"query": "{ items { id } }"}"#;
    const MUTATION: &str = r#"{"query": "mutation { add(id: 1) { id } }"}"#;
    assert_eq!(send(QUERY.into()).await.1, 1);
    assert_eq!(send(QUERY.into()).await.1, 1, "a hit");
    for n in [2, 4] {
        let (status, call) = send(MUTATION.into()).await;
        assert_eq!(status, "tower-redis-cache; fwd=method; detail=not-a-query");
        assert_eq!(call, n, "every mutation reaches the origin");
        // Its success removed the query's entry: the next query asks again, the one after hits.
        assert_eq!(send(QUERY.into()).await.1, n + 1);
        assert_eq!(send(QUERY.into()).await.1, n + 1);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    // A body sent as a stream, which the middleware cannot read without consuming it, goes on unread; as
    // `query_when` cannot judge it, it counts as a write, and its success removes the query's entry.
    let streamed = reqwest::Body::wrap(Full::new(Bytes::from_static(MUTATION.as_bytes())));
    let (status, call) = send(streamed).await;
    assert_eq!(
        status,
        "tower-redis-cache; fwd=bypass; detail=request-too-large"
    );
    assert_eq!(call, 6);
    assert_eq!(send(QUERY.into()).await.1, 7);
    assert_eq!(send(QUERY.into()).await.1, 7, "a hit");

    // Without `query_when` every body is a query by the user's word: a streamed one, unread, leaves the entry.
    let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
        .methods([Method::POST])
        .build()
        .unwrap();
    let plain = reqwest::Client::new();
    let client = reqwest_middleware::ClientBuilder::new(plain.clone())
        .with(CacheMiddleware::new(&layer, plain))
        .build();
    let send = |body: reqwest::Body| status_and_call(&client, &url, body);
    assert_eq!(send(QUERY.into()).await.1, 8);
    let streamed = reqwest::Body::wrap(Full::new(Bytes::from_static(MUTATION.as_bytes())));
    assert_eq!(send(streamed).await.1, 9);
    assert_eq!(send(QUERY.into()).await.1, 8, "a hit");
}

/// [`post_json`]: the answer's `Cache-Status`, and its `call` member.
async fn status_and_call(
    client: &reqwest_middleware::ClientWithMiddleware,
    url: &str,
    body: reqwest::Body,
) -> (String, u64) {
    let response = post_json(client, url, body).await;
    let status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    let answer: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    (status, answer["call"].as_u64().unwrap())
}

/// A CORS API: it grants the page's `Origin` and says `Vary: Origin`, as tower-http's `CorsLayer` does.
fn cors(calls: Arc<AtomicU64>) -> Router {
    Router::new().route(
        "/items",
        get(move |headers: HeaderMap| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let page = headers.get("origin").cloned();
            async move {
                let mut response = Json(json!({ "call": n })).into_response();
                if let Some(page) = page {
                    response
                        .headers_mut()
                        .insert("access-control-allow-origin", page);
                }
                response
                    .headers_mut()
                    .insert("vary", HeaderValue::from_static("origin"));
                response
            }
        }),
    )
}

/// Pages on two origins calling one CORS API, with the cache in front of the API and in a reqwest client: each
/// page's grant is kept apart, and neither evicts the other.
#[tokio::test]
async fn pages_on_two_origins_hit_their_own_cors_answers_over_the_wire_and_through_reqwest() {
    let redis = RedisServer::start();
    let plain = reqwest::Client::new();
    let layer = RedisCacheLayer::builder(RedisStore::new(fred_client(&redis.url()).await))
        .store_timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap();
    let cache = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|error: BoxError| async move {
            (StatusCode::BAD_GATEWAY, error.to_string())
        }))
        .layer(layer);
    let calls = Arc::new(AtomicU64::new(0));
    let cached = format!(
        "http://{}/items",
        serve(cors(calls.clone()).layer(cache)).await
    );
    let uncached_calls = Arc::new(AtomicU64::new(0));
    let uncached = format!("http://{}/items", serve(cors(uncached_calls.clone())).await);
    let (_layer, client) = middleware_client(&plain);
    let pages = ["https://a.example", "https://b.example"];
    for round in 0..3 {
        for (n, page) in pages.iter().enumerate() {
            for response in [
                plain
                    .get(&cached)
                    .header("origin", *page)
                    .send()
                    .await
                    .unwrap(),
                client
                    .get(&uncached)
                    .header("origin", *page)
                    .send()
                    .await
                    .unwrap(),
            ] {
                assert_eq!(response.headers()["access-control-allow-origin"], *page);
                if round > 0 {
                    assert_eq!(
                        CacheOutcome::from_headers(response.headers()),
                        Some(CacheOutcome::Hit),
                        "{page}"
                    );
                }
                let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
                assert_eq!(body["call"], n + 1, "{page}");
            }
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(uncached_calls.load(Ordering::SeqCst), 2);
}

/// Serves `routes` behind a cache of `POST`s with a body cap of `max_body` and an in-flight budget of `budget`;
/// returns the server's address and the cache's handle.
async fn serve_cached_posts(
    routes: Router,
    max_body: usize,
    budget: usize,
) -> (std::net::SocketAddr, tower_redis_cache::CacheHandle) {
    let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
        .methods([Method::POST])
        .max_body_size(max_body)
        .max_in_flight_bytes(budget)
        .build()
        .unwrap();
    let handle = layer.handle();
    let cache = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|error: BoxError| async move {
            (StatusCode::BAD_GATEWAY, error.to_string())
        }))
        .layer(layer);
    (serve(routes.layer(cache)).await, handle)
}

/// An upload to an axum server behind the cache, from a client that declares its length (`Content-Length`) and
/// sends it in parts: once a second part comes, the cache makes the buffer for all of it and claims that much of
/// its in-flight budget, so a client that stalls holds no memory the budget does not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_to_an_axum_server_claims_the_length_it_declares_from_the_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const DECLARED: usize = 40 * 1024;
    let app = Router::new().route(
        "/query",
        post(|body: Bytes| async move { body.len().to_string() }),
    );
    let (addr, handle) = serve_cached_posts(app, 64 * 1024, 64 * 1024).await;
    let held = || handle.stats().in_flight_bytes;

    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /query HTTP/1.1\r\nhost: api.test\r\ncontent-length: {DECLARED}\r\nconnection: close\r\n\r\n"
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&[b'x'; 2048]).await.unwrap();
    // Read before the second part is sent, so that the two arrive apart.
    support::calls::wait_until("the first part read", || held() > 0).await;
    client.write_all(&[b'y'; 2048]).await.unwrap();
    support::calls::wait_until("the declared length claimed", || held() == DECLARED as u64).await;

    client.write_all(&[b'z'; DECLARED - 4096]).await.unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer
            .contains("cache-status: tower-redis-cache; fwd=uri-miss; fwd-status=200; stored\r\n"),
        "{answer}"
    );
    assert!(answer.ends_with(&format!("\r\n\r\n{DECLARED}")), "{answer}");
    support::calls::wait_until("the claim given back", || held() == 0).await;
    assert_eq!(handle.stats().over_memory_budget, 0);
}

/// Sends `POST path` with a body of `len` bytes of `fill`, head and body in one write (so hyper has the whole body
/// when the cache first polls it), and returns the connection to read the answer from.
async fn post_at_once(
    addr: std::net::SocketAddr,
    path: &str,
    fill: u8,
    len: usize,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: api.test\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    request.resize(request.len() + len, fill);
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client.write_all(&request).await.unwrap();
    client
}

/// All the server wrote on `connection` until it closed it: head and body.
async fn answer_of(mut connection: tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = String::new();
    connection.read_to_string(&mut answer).await.unwrap();
    answer
}

/// A query whose whole body hyper has read by the time the cache first polls it (axum calls the layer after
/// that): the cache holds those bytes through the origin call, so it claims them from its in-flight budget as it
/// does a body read in parts, and one past the budget goes on unkeyed.
#[tokio::test]
async fn a_body_that_arrived_whole_is_held_within_the_budget_too() {
    const LEN: usize = 4000;
    // `/held` answers once the gate opens; `/query` at once.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let app = Router::new()
        .route(
            "/held",
            post({
                let gate = gate.clone();
                move |body: Bytes| async move {
                    let _ = gate.acquire().await;
                    body.len().to_string()
                }
            }),
        )
        .route(
            "/query",
            post(|body: Bytes| async move { body.len().to_string() }),
        );
    // The budget holds one body and a half.
    let (addr, handle) = serve_cached_posts(app, LEN, LEN + LEN / 2).await;
    let held = || handle.stats().in_flight_bytes;

    let first = post_at_once(addr, "/held", b'x', LEN).await;
    support::calls::wait_until("the first body held", || held() == LEN as u64).await;
    // The budget has half a body left: the next goes to the origin unkeyed.
    let answer = answer_of(post_at_once(addr, "/query", b'y', LEN).await).await;
    assert!(
        answer.contains(
            "cache-status: tower-redis-cache; fwd=bypass; detail=request-over-budget\r\n"
        ),
        "{answer}"
    );
    assert!(answer.ends_with(&format!("\r\n\r\n{LEN}")), "{answer}");
    assert_eq!(handle.stats().over_memory_budget, 1);

    gate.add_permits(1);
    let answer = answer_of(first).await;
    assert!(answer.contains("; stored\r\n"), "{answer}");
    support::calls::wait_until("the claim given back", || held() == 0).await;
    // With the budget free again, the same query is keyed and stored.
    let answer = answer_of(post_at_once(addr, "/query", b'y', LEN).await).await;
    assert!(
        answer
            .contains("cache-status: tower-redis-cache; fwd=uri-miss; fwd-status=200; stored\r\n"),
        "{answer}"
    );
}
