//! Request bodies larger than a layer's cap are never held whole: a 256 MiB chunked upload through the cache,
//! retry and auth layers raises the process's peak resident size by far less than the body. And the bodies the
//! cache reads to key them are held within its in-flight budget together: 256 queries of about 1 MiB streamed
//! at once raise it by about the budget, not by 256 MiB.
//!
//! One test in its own binary, so no other test's allocations share the process while it measures.

mod support;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use support::{RedisServer, fred_client};
use tower::{Service, ServiceExt};
use tower_layer::Layer;
use tower_redis_cache::auth::{AuthLayer, Token, TokenFuture, TokenSource};
use tower_redis_cache::cache::BypassReason;
use tower_redis_cache::error::BoxError;
use tower_redis_cache::{CacheOutcome, RedisCacheLayer, RedisStore, RequestBody, RetryLayer};

const BODY: u64 = 256 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
const ALLOWED_GROWTH: u64 = 64 * 1024 * 1024;
/// Queries streamed at once, each of `QUERY_CHUNKS` chunks of `CHUNK` bytes and a few more, within the cache's
/// 1 MiB cap, through a cache whose in-flight budget is `BUDGET`.
const QUERIES: usize = 256;
const QUERY_CHUNKS: usize = 15;
const BUDGET: usize = 32 * 1024 * 1024;

/// A chunked body (no `Content-Length`) of `BODY` bytes, made as it is read from one shared chunk.
fn upload() -> Request<StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>>>>
{
    let chunk = Bytes::from(vec![b'u'; CHUNK]);
    let chunks = BODY as usize / CHUNK;
    let frames =
        futures_util::stream::iter((0..chunks).map(move |_| Ok(Frame::data(chunk.clone()))));
    Request::post("http://api.test/upload")
        .body(StreamBody::new(frames))
        .unwrap()
}

/// A query, `{"i":<i>,"pad":"xx...x"}`, streamed: its head, then `QUERY_CHUNKS` clones of one shared chunk.
fn streamed_query(
    i: usize,
    pad: Bytes,
) -> Request<StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>>>> {
    let head = Bytes::from(format!(r#"{{"i":{i},"pad":""#));
    let parts = std::iter::once(head)
        .chain(std::iter::repeat_n(pad, QUERY_CHUNKS))
        .chain(std::iter::once(Bytes::from_static(b"\"}")));
    let frames = futures_util::stream::iter(parts.map(|part| Ok(Frame::data(part))));
    Request::post("http://api.test/query")
        .body(StreamBody::new(frames))
        .unwrap()
}

/// An origin that counts the bytes of each body as it reads it, then holds every call until `all` have come.
fn gathering_origin(
    received: Arc<AtomicU64>,
    all: Arc<tokio::sync::Barrier>,
) -> impl Service<Request<RequestBody>, Response = Response<Full<Bytes>>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |request: Request<RequestBody>| {
        let (received, all) = (received.clone(), all.clone());
        async move {
            let mut body = request.into_body();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    received.fetch_add(data.len() as u64, Ordering::SeqCst);
                }
            }
            all.wait().await;
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    })
}

/// An origin that reads the body frame by frame, keeping only the count of bytes.
fn counting_origin(
    received: Arc<AtomicU64>,
) -> impl Service<Request<RequestBody>, Response = Response<Full<Bytes>>, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |request: Request<RequestBody>| {
        let received = received.clone();
        async move {
            let mut body = request.into_body();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    received.fetch_add(data.len() as u64, Ordering::SeqCst);
                }
            }
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    })
}

/// The process's peak resident size in bytes (`VmHWM`), after resetting it to the current size where the
/// kernel allows (`/proc/self/clear_refs`).
fn reset_peak() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    peak()
}

fn peak() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux)");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("a VmHWM line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM in kB");
    kib * 1024
}

struct Fixed;

impl TokenSource for Fixed {
    fn fetch_token(&self) -> TokenFuture<'_> {
        Box::pin(async { Ok(Token::new("t0k3n", Some(Duration::from_secs(3600)))) })
    }
}

/// Sends `request` (the upload) through `service` and returns how much the peak resident size grew meanwhile.
async fn growth<S, B>(what: &str, service: S, request: Request<B>, received: &AtomicU64) -> u64
where
    S: Service<Request<B>, Error = BoxError>,
{
    received.store(0, Ordering::SeqCst);
    let before = reset_peak();
    service
        .oneshot(request)
        .await
        .expect("the upload went through");
    let grown = peak().saturating_sub(before);
    assert_eq!(
        received.load(Ordering::SeqCst),
        BODY,
        "{what}: the origin got every byte"
    );
    eprintln!(
        "{what}: peak resident size grew {} KiB for a {} MiB body",
        grown / 1024,
        BODY >> 20
    );
    grown
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_held_only_within_the_layers_bounds() {
    let server = RedisServer::start();
    let received = Arc::new(AtomicU64::new(0));

    let cache = RedisCacheLayer::builder(RedisStore::new(fred_client(&server.url()).await))
        .methods([Method::POST])
        .build()
        .unwrap();
    let retry = RetryLayer::builder()
        .retry_non_idempotent(true)
        .build()
        .unwrap();
    let auth = AuthLayer::new(Fixed);

    let origin = || counting_origin(received.clone());
    let through_cache = growth("cache", cache.layer(origin()), upload(), &received).await;
    let through_retry = growth("retry", retry.layer(origin()), upload(), &received).await;
    let through_auth = growth("auth", auth.layer(origin()), upload(), &received).await;
    for (what, grown) in [
        ("cache", through_cache),
        ("retry", through_retry),
        ("auth", through_auth),
    ] {
        assert!(
            grown < ALLOWED_GROWTH,
            "{what}: peak resident size grew {} MiB for a 256 MiB body",
            grown >> 20
        );
    }

    // Many queries at once, each within the cap: the cache holds those the budget has room for while the origin
    // works on them, and sends the others on unread.
    let cache = RedisCacheLayer::builder(RedisStore::new(fred_client(&server.url()).await))
        .methods([Method::POST])
        .max_in_flight_bytes(BUDGET)
        .build()
        .unwrap();
    let all = Arc::new(tokio::sync::Barrier::new(QUERIES));
    let service = cache.layer(gathering_origin(received.clone(), all));
    let pad = Bytes::from(vec![b'x'; CHUNK]);
    received.store(0, Ordering::SeqCst);
    let before = reset_peak();
    let calls: Vec<_> = (0..QUERIES)
        .map(|i| tokio::spawn(service.clone().oneshot(streamed_query(i, pad.clone()))))
        .collect();
    let mut held = 0;
    for call in calls {
        // A liveness guard, not a timing claim: a query that never reached the origin would hold the others.
        let answer = tokio::time::timeout(Duration::from_secs(120), call)
            .await
            .expect("every query reached the origin")
            .unwrap()
            .expect("every query is answered");
        match CacheOutcome::of(&answer) {
            Some(CacheOutcome::Miss { .. }) => held += 1,
            Some(CacheOutcome::Bypass(BypassReason::RequestOverBudget)) => {}
            other => panic!("a query was neither keyed nor past the budget: {other:?}"),
        }
    }
    let grown = peak().saturating_sub(before);
    let query_bytes = (QUERY_CHUNKS * CHUNK) as u64;
    assert!(
        received.load(Ordering::SeqCst) > QUERIES as u64 * query_bytes,
        "the origin got every query whole"
    );
    // All were at the origin at once: no more than the budget holds were keyed, each counted by its buffer (no
    // `Content-Length`, so doubled as it filled: 1 MiB, the cap), not by its 960 KiB.
    assert!(
        held > 0 && held <= BUDGET as u64 / (1 << 20),
        "{held} of {QUERIES} held"
    );
    // Each query past the budget is counted; so may be the answers of those held, which fill it to the byte.
    let over = cache.handle().stats().over_memory_budget;
    assert!(
        over >= QUERIES as u64 - held,
        "{over} counted over the budget"
    );
    eprintln!(
        "{QUERIES} queries of {} KiB at once: peak resident size grew {} KiB, {held} of them held",
        query_bytes / 1024,
        grown / 1024,
    );
    assert!(
        grown < ALLOWED_GROWTH,
        "peak resident size grew {} MiB for {QUERIES} queries of about 1 MiB at once",
        grown >> 20
    );
}
