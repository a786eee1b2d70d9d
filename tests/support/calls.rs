//! Requests and reply accessors shared by the cache tests.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::time::Duration;
use tower::{Service, ServiceExt};
use tower_redis_cache::CacheOutcome;
use tower_redis_cache::cache::ResponseBody;
use tower_redis_cache::error::BoxError;

/// What a cached service over an [`Origin`](super::Origin) answers.
pub type Reply = Response<ResponseBody<Full<Bytes>>>;

/// A JSON `POST` query to the same URL every time.
pub fn post(json: &str) -> Request<Full<Bytes>> {
    Request::post("https://api.example.com/api/v2/query")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_owned())))
        .unwrap()
}

/// The same request as `post`, with a byte body (for `CacheHandle::key_for`).
pub fn post_bytes(json: &str) -> Request<Bytes> {
    let (parts, _) = post(json).into_parts();
    Request::from_parts(parts, Bytes::from(json.to_owned()))
}

/// A cached service over an [`Origin`](super::Origin), as the tests call it.
pub trait Cached:
    Service<Request<Full<Bytes>>, Response = Reply, Error = BoxError> + Clone
{
}

impl<S> Cached for S where
    S: Service<Request<Full<Bytes>>, Response = Reply, Error = BoxError> + Clone
{
}

/// How long [`call`] waits for an answer before it calls the test hung: a liveness guard, not a timing claim, so
/// that a cache which never answers fails its test instead of stopping the run. Under paused time with nothing left
/// to run, the clock jumps straight to it.
pub const CALL_BOUND: Duration = Duration::from_secs(60);

/// Calls a clone of `service`, expecting success within [`CALL_BOUND`].
pub async fn call<S: Cached>(service: &S, request: Request<Full<Bytes>>) -> Reply {
    match tokio::time::timeout(CALL_BOUND, service.clone().oneshot(request)).await {
        Ok(reply) => reply.unwrap(),
        Err(_) => panic!("the call was not answered within {CALL_BOUND:?}: it hangs"),
    }
}

/// The reply's cache outcome.
pub fn outcome(response: &Reply) -> CacheOutcome {
    let outcome = *response
        .extensions()
        .get::<CacheOutcome>()
        .expect("every response has an outcome");
    assert_eq!(
        CacheOutcome::from_headers(response.headers()),
        Some(outcome),
        "Cache-Status says the outcome the extension holds"
    );
    outcome
}

/// The reply's `Cache-Status` header.
pub fn cache_status(response: &Reply) -> String {
    response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// The request header `name` as an origin that echoes headers ([`Origin::echo_headers`](super::Origin::echo_headers))
/// sent it back; `None` when the request had none.
pub fn echoed<'a>(response: &'a Reply, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(format!("x-echo-{name}"))
        .map(|v| v.to_str().unwrap())
}

/// The reply's body.
pub async fn body(response: Reply) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

/// Moves the Tokio clock (and so the cache's) forward by `by` at once, then lets time run on: freshness tests
/// jump over windows while real Redis I/O runs in real time. Needs a current-thread runtime, and nothing in
/// flight (its timers would fire).
pub async fn jump(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// Polls `done` every 10 ms for up to 10 s (a liveness guard for background work, not a timing claim).
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gave up waiting for: {what}");
}

/// An error and its causes, each's message after the last's: `a: b: c`.
pub fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut causes = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        causes.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    causes
}
