//! Request bodies larger than a layer's cap are never held whole: a 256 MiB chunked upload through the cache,
//! retry and auth layers raises the process's peak resident size by far less than the body.
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
use tower_redis_cache::error::BoxError;
use tower_redis_cache::{RedisCacheLayer, RedisStore, RequestBody, RetryLayer};

const BODY: u64 = 256 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
const ALLOWED_GROWTH: u64 = 64 * 1024 * 1024;

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
async fn a_256_mib_chunked_upload_is_streamed_through_every_layer() {
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
}
