//! RetryLayer behaviour under paused tokio time: Retry-After, jitter bounds, bounds on attempts, deadline and
//! budget, body replay, and the method rule.

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tower::{Service, ServiceExt, service_fn};
use tower_layer::Layer;
use tower_redis_cache::RequestBody;
use tower_redis_cache::error::BoxError;
use tower_redis_cache::retry::Retry;
use tower_redis_cache::retry::error::RetryError;
use tower_redis_cache::retry::{GaveUp, RetryBudget, RetryLayer, RetryLayerBuilder, RetryOutcome};

use crate::replay;
use replay::{Gated, streamed_put};

/// What the scripted origin answers.
#[derive(Clone)]
enum Answer {
    Status(u16, Option<String>),
    /// A status with these header fields.
    Fields(u16, Vec<(&'static str, String)>),
    Transport,
}

fn fields(code: u16, fields: &[(&'static str, &str)]) -> Answer {
    Answer::Fields(
        code,
        fields.iter().map(|(n, v)| (*n, (*v).to_owned())).collect(),
    )
}

fn status(code: u16) -> Answer {
    Answer::Status(code, None)
}

fn retry_after(code: u16, value: impl Into<String>) -> Answer {
    Answer::Status(code, Some(value.into()))
}

/// An origin that answers from a script (then `fallback` forever) and records when each request arrived and
/// the bytes of its body.
#[derive(Clone)]
struct Origin {
    script: Arc<Mutex<VecDeque<Answer>>>,
    fallback: Arc<Mutex<Answer>>,
    seen: Arc<Mutex<Vec<(Instant, Bytes)>>>,
}

impl Origin {
    fn new(script: impl IntoIterator<Item = Answer>, fallback: Answer) -> Self {
        Origin {
            script: Arc::new(Mutex::new(script.into_iter().collect())),
            fallback: Arc::new(Mutex::new(fallback)),
            seen: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn set_fallback(&self, answer: Answer) {
        *self.fallback.lock().unwrap() = answer;
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn bodies(&self) -> Vec<Bytes> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// The time between consecutive requests.
    fn gaps(&self) -> Vec<Duration> {
        let seen = self.seen.lock().unwrap();
        seen.windows(2).map(|w| w[1].0 - w[0].0).collect()
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<RequestBody>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        let origin = self.clone();
        service_fn(move |request: Request<RequestBody>| {
            let origin = origin.clone();
            async move {
                let arrived = Instant::now();
                let body = request.into_body().collect().await?.to_bytes();
                origin.seen.lock().unwrap().push((arrived, body));
                let next = origin.script.lock().unwrap().pop_front();
                let answer = next.unwrap_or_else(|| origin.fallback.lock().unwrap().clone());
                match answer {
                    Answer::Transport => Err::<_, BoxError>("connection reset by peer".into()),
                    Answer::Status(code, retry_after) => {
                        let mut response = Response::builder().status(code);
                        if let Some(value) = retry_after {
                            response = response.header("retry-after", value);
                        }
                        Ok(response.body(Full::new(Bytes::from(format!("answer {code}"))))?)
                    }
                    Answer::Fields(code, fields) => {
                        let mut response = Response::builder().status(code);
                        for (name, value) in fields {
                            response = response.header(name, value);
                        }
                        Ok(response.body(Full::new(Bytes::from(format!("answer {code}"))))?)
                    }
                }
            }
        })
    }
}

fn layer() -> RetryLayerBuilder {
    RetryLayer::builder()
        .base_delay(Duration::from_millis(100))
        .max_delay(Duration::from_secs(5))
        .no_budget()
}

fn get() -> Request<Body> {
    Request::get("https://api.example/list")
        .body(Body::empty())
        .unwrap()
}

fn post(body: &'static str) -> Request<Body> {
    Request::post("https://api.example/execute")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// The attempts and the reason for stopping of a call that failed, from its [`RetryError`].
fn failed_after(error: &BoxError) -> (u32, Option<GaveUp>) {
    let error = error.downcast_ref::<RetryError>().expect("a RetryError");
    (error.attempts(), error.gave_up())
}

fn outcome(response: &Response<Full<Bytes>>) -> (u32, Option<GaveUp>) {
    let outcome: &RetryOutcome = response
        .extensions()
        .get()
        .expect("a RetryOutcome extension");
    (outcome.attempts, outcome.gave_up)
}

/// Sends `request` through the default test layer over `origin`, expecting an answer.
async fn send(origin: &Origin, request: Request<Body>) -> Response<Full<Bytes>> {
    client(origin, layer().build().unwrap())
        .oneshot(request)
        .await
        .unwrap()
}

fn client(
    origin: &Origin,
    layer: RetryLayer,
) -> Retry<
    impl Service<Request<RequestBody>, Response = Response<Full<Bytes>>, Error = BoxError, Future: Send>
    + Clone
    + Send
    + 'static,
> {
    layer.layer(origin.service())
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_is_waited_out() {
    let origin = Origin::new([retry_after(429, "2")], status(200));
    let started = Instant::now();
    let response = client(&origin, layer().build().unwrap())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(outcome(&response).0, 2);
    let gap = origin.gaps()[0];
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
    // max(backoff, retry_after): the first backoff is at most 100 ms, so Retry-After decides.
    assert_eq!(gap, Duration::from_secs(2));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_is_honoured() {
    // An HTTP-date is wall-clock time with one-second resolution: a date on a whole second 4 s after the
    // current one is 3 to 4 s away now, and the layer reads the wall clock a moment later (far less than a
    // second), so its wait is over 2 s and at most 4 s whatever the sub-second phase. Backoff alone would
    // wait at most 100 ms.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    let date = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs() + 4);
    let origin = Origin::new(
        [retry_after(503, httpdate::fmt_http_date(date))],
        status(200),
    );
    let response = client(&origin, layer().build().unwrap())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let gap = origin.gaps()[0];
    assert!(
        gap > Duration::from_secs(2) && gap <= Duration::from_secs(4),
        "retried after {gap:?}"
    );
}

/// OpenAI and Azure say how long to wait in milliseconds (`retry-after-ms`), besides or instead of `Retry-After`.
#[tokio::test(start_paused = true)]
async fn a_wait_in_milliseconds_is_waited_out_to_the_millisecond() {
    let origin = Origin::new(
        [
            fields(429, &[("retry-after-ms", "1500"), ("retry-after", "2")]),
            fields(503, &[("x-ms-retry-after-ms", "2250")]),
        ],
        status(200),
    );
    let response = send(&origin, get()).await;
    assert_eq!(outcome(&response), (3, None));
    assert_eq!(
        origin.gaps(),
        [Duration::from_millis(1500), Duration::from_millis(2250)]
    );
}

/// A rate limit that says when its quota resets instead of `Retry-After`: the IETF draft's `RateLimit` (the
/// spent policy's `t`), its earlier `RateLimit-Reset`, and GitHub's `X-RateLimit-Reset`, a unix time, which
/// GitHub sends with `403 Forbidden`. A `POST` is retried too: a rate limit says the server did not act on it.
#[tokio::test(start_paused = true)]
async fn a_spent_quota_is_waited_out_until_it_resets() {
    // A unix time on a whole second 4 s after the current one is 3 to 4 s away now (see the HTTP-date test).
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    let reset = (now.as_secs() + 4).to_string();
    let origin = Origin::new(
        [
            fields(
                429,
                &[("ratelimit", r#""burst";r=0;t=2, "day";r=4000;t=50000"#)],
            ),
            fields(
                429,
                &[("ratelimit-remaining", "0"), ("ratelimit-reset", "3")],
            ),
            fields(
                403,
                &[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", &reset),
                ],
            ),
        ],
        status(200),
    );
    let response = send(&origin, post(r#"{"q":1}"#)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(outcome(&response), (4, None));
    let gaps = origin.gaps();
    assert_eq!(gaps[..2], [Duration::from_secs(2), Duration::from_secs(3)]);
    // The reset was read a moment after it was set, as wall-clock time.
    assert!(
        gaps[2] > Duration::from_secs(1) && gaps[2] <= Duration::from_secs(4),
        "{gaps:?}"
    );
}

/// GitHub's secondary rate limits: a `403` with `Retry-After`, waited out and sent again, a `POST` too.
#[tokio::test(start_paused = true)]
async fn a_403_asking_for_a_wait_is_a_rate_limit() {
    let origin = Origin::new([retry_after(403, "2")], status(200));
    let response = send(&origin, post(r#"{"q":1}"#)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(outcome(&response), (2, None));
    assert_eq!(origin.gaps(), [Duration::from_secs(2)]);
}

/// A `403` is final unless it says a quota is spent; a reset the answer gives while quota remains says nothing
/// of this request.
#[tokio::test(start_paused = true)]
async fn a_403_with_quota_left_is_final_and_a_reset_alone_is_no_wait() {
    let origin = Origin::new(
        [fields(
            403,
            &[
                ("x-ratelimit-remaining", "4999"),
                ("x-ratelimit-reset", "9999999999"),
            ],
        )],
        status(200),
    );
    let response = send(&origin, get()).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(outcome(&response), (1, None));

    let origin = Origin::new(
        [fields(
            429,
            &[
                ("x-ratelimit-remaining", "12"),
                ("x-ratelimit-reset", "9999999999"),
            ],
        )],
        status(200),
    );
    let response = send(&origin, get()).await;
    assert_eq!(outcome(&response), (2, None));
    let gap = origin.gaps()[0];
    assert!(gap <= Duration::from_millis(100), "backoff alone: {gap:?}");
}

#[tokio::test(start_paused = true)]
async fn malformed_retry_after_falls_back_to_backoff() {
    let origin = Origin::new(
        [retry_after(429, "soon-ish"), retry_after(429, "-5")],
        status(200),
    );
    let response = client(&origin, layer().build().unwrap())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(outcome(&response).0, 3);
    let gaps = origin.gaps();
    assert!(gaps[0] <= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[1] <= Duration::from_millis(200), "{gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_over_the_cap_returns_the_429_at_once() {
    let origin = Origin::new([retry_after(429, "600")], status(200));
    let started = Instant::now();
    let response = client(
        &origin,
        layer()
            .retry_after_cap(Duration::from_secs(180))
            .build()
            .unwrap(),
    )
    .oneshot(get())
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "600");
    assert_eq!(outcome(&response), (1, Some(GaveUp::RetryAfterTooLong)));
    assert_eq!(origin.calls(), 1);
    assert_eq!(started.elapsed(), Duration::ZERO);
}

fn five_503s_then_200(seed: u64) -> ((u32, Option<GaveUp>), StatusCode, Vec<Duration>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let origin = Origin::new(std::iter::repeat_n(status(503), 5), status(200));
        let layer = layer().max_attempts(6).jitter_seed(seed).build().unwrap();
        let response = client(&origin, layer).oneshot(get()).await.unwrap();
        (outcome(&response), response.status(), origin.gaps())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(64) })]

    #[test]
    fn five_failures_then_success_take_six_attempts_within_jitter_bounds(seed: u64) {
        let (outcome, status, gaps) = five_503s_then_200(seed);
        prop_assert_eq!(status, StatusCode::OK);
        prop_assert_eq!(outcome, (6, None));
        prop_assert_eq!(gaps.len(), 5);
        for (n, gap) in gaps.iter().enumerate() {
            // Full jitter: random(0, min(5 s, 100 ms * 2^n)).
            let ceiling = Duration::from_millis(100 * (1 << n)).min(Duration::from_secs(5));
            prop_assert!(*gap <= ceiling, "retry {} waited {:?} > {:?}", n, gap, ceiling);
        }
    }
}

#[test]
fn jitter_differs_between_seeds() {
    // Full jitter, not a fixed schedule: different seeds give different delays.
    let a = five_503s_then_200(1).2;
    let b = five_503s_then_200(2).2;
    assert_ne!(a, b);
}

#[tokio::test(start_paused = true)]
async fn persistent_503_stops_at_max_attempts() {
    let origin = Origin::new([], status(503));
    let response = client(&origin, layer().max_attempts(3).build().unwrap())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(outcome(&response), (3, Some(GaveUp::MaxAttempts)));
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn cloudflares_origin_errors_an_overloaded_api_and_a_request_timeout_are_retried() {
    // Cloudflare in front of an origin that timed out (522, 524), an API overloaded (529: Anthropic's), a
    // server that gave up waiting for the request (408).
    let origin = Origin::new([status(522), status(529), status(408)], status(200));
    let response = send(&origin, get()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(outcome(&response), (4, None));

    // None of them says the server never acted on a `POST`.
    for code in [408, 524, 529] {
        let origin = Origin::new([status(code)], status(200));
        let response = send(&origin, post("{}")).await;
        assert_eq!(response.status().as_u16(), code);
        assert_eq!(outcome(&response), (1, Some(GaveUp::NotIdempotent)));
    }
}

#[tokio::test(start_paused = true)]
async fn persistent_503_stops_at_the_deadline_when_it_comes_first() {
    // Every wait is a Retry-After of 1 s; a 3.5 s deadline allows attempts at 0, 1, 2 and 3 s only.
    let origin = Origin::new([], retry_after(503, "1"));
    let started = Instant::now();
    let layer = layer()
        .max_attempts(100)
        .deadline(Duration::from_millis(3500))
        .build()
        .unwrap();
    let response = client(&origin, layer).oneshot(get()).await.unwrap();
    assert_eq!(outcome(&response), (4, Some(GaveUp::Deadline)));
    assert_eq!(origin.calls(), 4);
    assert!(started.elapsed() <= Duration::from_millis(3500));
}

#[tokio::test(start_paused = true)]
async fn transport_errors_are_retried_then_reported_with_the_attempt_count() {
    let origin = Origin::new([Answer::Transport], Answer::Transport);
    let error = client(&origin, layer().max_attempts(3).build().unwrap())
        .oneshot(get())
        .await
        .unwrap_err();
    let error = error.downcast_ref::<RetryError>().expect("a RetryError");
    assert_eq!(error.attempts(), 3);
    assert_eq!(error.gave_up(), Some(GaveUp::MaxAttempts));
    assert!(error.to_string().contains("after 3 attempts"), "{error}");
    assert!(error.to_string().contains("connection reset"), "{error}");

    let healed = Origin::new([Answer::Transport], status(200));
    let response = client(&healed, layer().build().unwrap())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(outcome(&response).0, 2);
}

#[tokio::test(start_paused = true)]
async fn json_body_arrives_byte_identical_on_every_attempt() {
    const BODY: &str = r#"{"query": {"b": [1, 2.50, "\u00e9"], "a": null}}"#;
    let origin = Origin::new([status(429), status(429), status(429)], status(200));
    // A streamed body: buffered once, replayed whole.
    let chunks =
        [&BODY[..10], &BODY[10..25], &BODY[25..]].map(|c| Ok::<_, std::io::Error>(c.to_owned()));
    let request = Request::post("https://api.example/execute")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let response = client(&origin, layer().max_attempts(5).build().unwrap())
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(outcome(&response).0, 4);
    assert_eq!(
        origin.bodies(),
        vec![Bytes::from_static(BODY.as_bytes()); 4]
    );
}

#[tokio::test(start_paused = true)]
async fn trailers_arrive_with_the_body_on_every_attempt() {
    // What each attempt brought: its body and its `x-sum` trailer.
    type Seen = Vec<(Bytes, Option<http::HeaderValue>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let origin = {
        let seen = seen.clone();
        service_fn(move |request: Request<RequestBody>| {
            let seen = seen.clone();
            async move {
                let received = request.into_body().collect().await?;
                let sum = received.trailers().and_then(|t| t.get("x-sum").cloned());
                let mut seen = seen.lock().unwrap();
                seen.push((received.to_bytes(), sum));
                let code = if seen.len() < 3 { 503 } else { 200 };
                Ok::<_, BoxError>(
                    Response::builder()
                        .status(code)
                        .body(Full::new(Bytes::new()))?,
                )
            }
        })
    };
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-sum", http::HeaderValue::from_static("9"));
    let frames = [
        Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from_static(b"{}"))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let request = Request::put("https://api.example/item")
        .body(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
        .unwrap();
    let response = layer()
        .build()
        .unwrap()
        .layer(origin)
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(outcome(&response), (3, None));
    let expected = (
        Bytes::from_static(b"{}"),
        Some(http::HeaderValue::from_static("9")),
    );
    assert_eq!(*seen.lock().unwrap(), vec![expected; 3]);
}

#[tokio::test(start_paused = true)]
async fn body_over_the_cap_is_sent_once() {
    let origin = Origin::new([], status(429));
    let response = client(&origin, layer().max_body_size(8).build().unwrap())
        .oneshot(post(r#"{"too":"large"}"#))
        .await
        .unwrap();
    assert_eq!(outcome(&response), (1, Some(GaveUp::BodyTooLarge)));
    assert_eq!(
        origin.bodies(),
        vec![Bytes::from_static(br#"{"too":"large"}"#)]
    );
}

#[tokio::test(start_paused = true)]
async fn streamed_bodies_are_held_for_replay_only_within_the_in_flight_budget() {
    let origin = Gated::new();
    let retry = layer()
        .max_body_size(8)
        .max_in_flight_bytes(8)
        .build()
        .unwrap()
        .layer(origin.origin(503));
    let a = tokio::spawn(retry.clone().oneshot(streamed_put("/a", &["abcd", "efgh"])));
    origin.reached().await;
    // `/a` holds all 8 bytes: `/b`'s body goes on once, whole, and its 503 is not retried.
    let b = retry
        .clone()
        .oneshot(streamed_put("/b", &["ij", "kl"]))
        .await
        .unwrap();
    assert_eq!(b.status(), 503);
    assert_eq!(outcome(&b), (1, Some(GaveUp::OverMemoryBudget)));
    // A body its caller made whole (a `Full`) is not read by the layer, so not counted: it is retried.
    let whole = Request::put("https://api.example/c")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let c = retry.clone().oneshot(whole).await.unwrap();
    assert_eq!((c.status(), outcome(&c)), (StatusCode::OK, (2, None)));

    origin.open();
    let a = a.await.unwrap().unwrap();
    assert_eq!((a.status(), outcome(&a)), (StatusCode::OK, (2, None)));
    // `/a` is done and gave its bytes back: the same body as `/b`'s is held and replayed now.
    let d = retry
        .oneshot(streamed_put("/d", &["ij", "kl"]))
        .await
        .unwrap();
    assert_eq!((d.status(), outcome(&d)), (StatusCode::OK, (2, None)));
    assert_eq!(origin.bodies("/a"), [&b"abcdefgh"[..]; 2]);
    assert_eq!(origin.bodies("/b"), [&b"ijkl"[..]]);
    assert_eq!(origin.bodies("/d"), [&b"ijkl"[..]; 2]);
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_on_429_but_not_on_503_unless_keyed_or_opted_in() {
    let origin = Origin::new([status(503)], status(200));
    let response = client(&origin, layer().build().unwrap())
        .oneshot(post("{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(outcome(&response), (1, Some(GaveUp::NotIdempotent)));

    let origin = Origin::new([Answer::Transport], status(200));
    let error = client(&origin, layer().build().unwrap())
        .oneshot(post("{}"))
        .await
        .unwrap_err();
    assert_eq!(
        error.downcast_ref::<RetryError>().unwrap().gave_up(),
        Some(GaveUp::NotIdempotent)
    );

    let origin = Origin::new([status(429)], status(200));
    let response = client(&origin, layer().build().unwrap())
        .oneshot(post("{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(outcome(&response).0, 2);

    let origin = Origin::new([status(503)], status(200));
    let opted_in = layer().retry_non_idempotent(true).build().unwrap();
    let response = client(&origin, opted_in).oneshot(post("{}")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(outcome(&response).0, 2);

    // A `POST` with an idempotency key is retried like a `PUT`: the server answers a repeat of the key with
    // the first request's result. The header a layer reads is its choice.
    let keyed = || {
        let mut request = post("{}");
        request
            .headers_mut()
            .insert("idempotency-key", "8e03978e-40d5-43e8".parse().unwrap());
        request
    };
    let origin = Origin::new([status(503), Answer::Transport], status(200));
    let response = client(&origin, layer().build().unwrap())
        .oneshot(keyed())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(outcome(&response), (3, None));
    let origin = Origin::new([status(503)], status(200));
    let vendor = layer()
        .idempotency_key_headers([http::HeaderName::from_static("paypal-request-id")])
        .build()
        .unwrap();
    let response = client(&origin, vendor).oneshot(keyed()).await.unwrap();
    assert_eq!(outcome(&response), (1, Some(GaveUp::NotIdempotent)));

    // 501 is never retried, even for GET.
    let origin = Origin::new([status(501)], status(200));
    let response = client(&origin, layer().build().unwrap())
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(outcome(&response), (1, None));
}

#[tokio::test(start_paused = true)]
async fn a_post_said_to_be_idempotent_or_cached_as_a_query_is_retried_like_a_get() {
    use tower_redis_cache::retry::Idempotent;
    use tower_redis_cache::{CacheOutcome, MemoryStore, RedisCacheLayer};

    // Marked by its sender.
    let origin = Origin::new([status(503), Answer::Transport], status(200));
    let mut search = post(r#"{"q":"rust"}"#);
    search.extensions_mut().insert(Idempotent);
    let response = send(&origin, search).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(outcome(&response), (3, None));

    // Marked by the cache above the retry layer: the queries it caches, not the writes sharing their route.
    let cache = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
        .methods([http::Method::POST])
        .query_when(|_, body| !body.starts_with(b"{\"mutation\""))
        .build()
        .unwrap();
    let origin = Origin::new([status(503)], status(200));
    let stack = cache.layer(layer().build().unwrap().layer(origin.service()));
    let query = || post(r#"{"query":"{ me }"}"#);
    let response = stack.clone().oneshot(query()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let retried = response.extensions().get::<RetryOutcome>().unwrap();
    assert_eq!((retried.attempts, retried.gave_up), (2, None));
    assert_eq!(origin.calls(), 2);
    let again = stack.clone().oneshot(query()).await.unwrap();
    assert_eq!(CacheOutcome::of(&again), Some(CacheOutcome::Hit));
    assert_eq!(origin.calls(), 2);

    origin.set_fallback(status(503));
    let write = stack
        .clone()
        .oneshot(post(r#"{"mutation":"{ rename }"}"#))
        .await
        .unwrap();
    assert_eq!(write.status(), StatusCode::SERVICE_UNAVAILABLE);
    let refused = write.extensions().get::<RetryOutcome>().unwrap();
    assert_eq!(
        (refused.attempts, refused.gave_up),
        (1, Some(GaveUp::NotIdempotent))
    );
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn budget_stops_retries_in_an_outage_and_refills_on_success() {
    let origin = Origin::new([], status(503));
    let budget = RetryBudget::new(3, 0.5);
    let layer = layer()
        .max_attempts(3)
        .budget(budget.clone())
        .build()
        .unwrap();
    // Clones share the budget.
    let svc = layer.layer(origin.service());
    let mut attempts = Vec::new();
    for _ in 0..4 {
        let response = svc.clone().oneshot(get()).await.unwrap();
        attempts.push(outcome(&response));
    }
    assert_eq!(
        attempts,
        vec![
            (3, Some(GaveUp::MaxAttempts)),
            (2, Some(GaveUp::Budget)),
            (1, Some(GaveUp::Budget)),
            (1, Some(GaveUp::Budget)),
        ]
    );
    assert_eq!(
        origin.calls(),
        7,
        "four first attempts plus exactly three retries"
    );
    assert_eq!(budget.available(), 0.0);

    // Two successes refund one retry's token.
    origin.set_fallback(status(200));
    for _ in 0..2 {
        let response = svc.clone().oneshot(get()).await.unwrap();
        assert_eq!(outcome(&response).0, 1);
    }
    assert_eq!(budget.available(), 1.0);
    origin.set_fallback(status(503));
    let response = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(
        outcome(&response),
        (2, Some(GaveUp::Budget)),
        "one retry allowed again, then the budget is spent"
    );
}

#[test]
fn invalid_configuration_is_rejected() {
    use tower_redis_cache::error::Setting;
    let error = RetryLayer::builder().max_attempts(0).build().unwrap_err();
    assert_eq!(error.setting(), Setting::MaxAttempts, "{error}");
    assert!(error.to_string().contains("max_attempts"), "{error}");
    let error = RetryLayer::builder()
        .base_delay(Duration::from_secs(2))
        .max_delay(Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert_eq!(error.setting(), Setting::MaxDelay, "{error}");
    assert!(error.to_string().contains("base_delay"), "{error}");
    let error = RetryLayer::builder()
        .max_body_size(1024)
        .max_in_flight_bytes(1023)
        .build()
        .unwrap_err();
    assert_eq!(error.setting(), Setting::MaxInFlightBytes, "{error}");
    assert!(error.to_string().contains("max_body_size"), "{error}");
}

/// A `Retry-After` of `u64::MAX` seconds, with or without a cap, and `Duration::MAX` settings: no arithmetic
/// overflows, and the call ends with a reason.
#[tokio::test(start_paused = true)]
async fn absurd_retry_after_values_and_unbounded_settings_end_without_panicking() {
    let forever = u64::MAX.to_string();
    let origin = Origin::new([], retry_after(503, forever.clone()));
    let capped = client(&origin, layer().build().unwrap());
    let response = capped.oneshot(get()).await.unwrap();
    assert_eq!(outcome(&response), (1, Some(GaveUp::RetryAfterTooLong)));

    let uncapped = layer()
        .retry_after_cap(Duration::MAX)
        .max_delay(Duration::MAX)
        .base_delay(Duration::MAX)
        .build()
        .unwrap();
    let response = client(&origin, uncapped).oneshot(get()).await.unwrap();
    assert_eq!(outcome(&response), (1, Some(GaveUp::Deadline)));
    assert_eq!(origin.calls(), 2);
}

/// A `POST` whose connection could not be made never reached the server: it is retried like any request. One
/// cut off after it was sent may have been acted on: it is not. Over a real hyper-util client and real sockets.
#[tokio::test]
async fn a_post_is_retried_when_its_connection_is_refused_but_not_when_cut_off_after_it_was_sent() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;

    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<RequestBody>();
    let retry = || {
        RetryLayer::builder()
            .base_delay(Duration::from_millis(1))
            .max_attempts(3)
            .no_budget()
            .build()
            .unwrap()
    };
    let order = |addr: std::net::SocketAddr| {
        Request::post(format!("http://{addr}/orders"))
            .header("content-type", "application/json")
            .body(Body::from(r#"{"sku":1}"#))
            .unwrap()
    };

    // A port nothing listens on: every connect is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = retry()
        .layer(hyper.clone())
        .oneshot(order(closed))
        .await
        .unwrap_err();
    assert_eq!(
        failed_after(&error),
        (3, Some(GaveUp::MaxAttempts)),
        "{error}"
    );

    // A server that reads the request, then closes the connection without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let server = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let mut request = vec![0u8; 4096];
                let _ = socket.read(&mut request).await;
            }
        }
    });
    let error = retry()
        .layer(hyper.clone())
        .oneshot(order(addr))
        .await
        .unwrap_err();
    assert_eq!(
        failed_after(&error),
        (1, Some(GaveUp::NotIdempotent)),
        "{error}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    server.abort();
}

/// A `POST` to the HTTP/2 server at `addr` through a hyper-util client and a retry layer: its attempts and why
/// it stopped, answered `200` or failed.
#[cfg(feature = "genesys")]
async fn post_over_http2(addr: std::net::SocketAddr) -> (u32, Option<GaveUp>) {
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<RequestBody>();
    let retry = RetryLayer::builder()
        .base_delay(Duration::from_millis(1))
        .no_budget()
        .build()
        .unwrap();
    let order = Request::post(format!("http://{addr}/orders"))
        .body(Body::from(r#"{"sku":1}"#))
        .unwrap();
    match retry.layer(hyper).oneshot(order).await {
        Ok(response) => {
            assert_eq!(response.status(), StatusCode::OK);
            let outcome = response.extensions().get::<RetryOutcome>().unwrap();
            (outcome.attempts, outcome.gave_up)
        }
        Err(error) => failed_after(&error),
    }
}

/// Serves one HTTP/2 connection with an h2 server: each stream counted in `streams`, reset with what `reset`
/// says for its number (from 0 on this counter), else answered `200` `ok`.
#[cfg(feature = "genesys")]
async fn serve_h2(
    socket: tokio::net::TcpStream,
    streams: Arc<std::sync::atomic::AtomicUsize>,
    reset: impl Fn(usize) -> Option<h2::Reason>,
) {
    let mut connection = h2::server::handshake(socket).await.unwrap();
    while let Some(Ok((_, mut respond))) = connection.accept().await {
        let n = streams.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(reason) = reset(n) {
            respond.send_reset(reason);
            continue;
        }
        let mut body = respond.send_response(Response::new(()), false).unwrap();
        body.send_data(Bytes::from_static(b"ok"), true).unwrap();
    }
}

/// An HTTP/2 stream reset with `REFUSED_STREAM` was not processed (RFC 9113 §8.7): a `POST` on it is sent again.
/// A stream reset for another reason may have been: it is not. Over a real h2 server and hyper-util client.
#[cfg(feature = "genesys")]
#[tokio::test]
async fn a_post_on_a_refused_http2_stream_is_sent_again_but_not_on_one_reset_otherwise() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    for (reason, attempts, gave_up) in [
        (h2::Reason::REFUSED_STREAM, 2, None),
        (h2::Reason::INTERNAL_ERROR, 1, Some(GaveUp::NotIdempotent)),
    ] {
        // Resets the first stream with `reason`, answers the next ones.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let streams = Arc::new(AtomicUsize::new(0));
        let server = tokio::spawn({
            let streams = streams.clone();
            async move {
                let (socket, _) = listener.accept().await.unwrap();
                serve_h2(socket, streams, |n| (n == 0).then_some(reason)).await;
            }
        });
        assert_eq!(
            post_over_http2(addr).await,
            (attempts, gave_up),
            "{reason:?}"
        );
        assert_eq!(
            streams.load(Ordering::SeqCst),
            attempts as usize,
            "{reason:?}"
        );
        server.abort();
    }
}

/// A server's `GOAWAY` names the last stream it may have processed (RFC 9113 §6.8): a `POST` on a stream above it
/// was never acted on and is sent again (here on a new connection, answered); one on a stream at or below it
/// may have been, and its connection closing under it ends the call. The first connection speaks HTTP/2 frame by
/// frame, since a server library sends its `GOAWAY` only after the streams it accepted; the later ones are an
/// h2 server's. Over a hyper-util client.
#[cfg(feature = "genesys")]
#[tokio::test]
async fn a_post_above_a_goaways_last_stream_is_sent_again_but_not_one_below_it() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads the client's preface and frames up to its first `HEADERS`, then answers `GOAWAY` naming
    /// `last_stream` (`NO_ERROR`) and closes the connection.
    async fn go_away(mut socket: tokio::net::TcpStream, last_stream: u32) {
        let mut preface = [0u8; 24];
        socket.read_exact(&mut preface).await.unwrap();
        // An empty SETTINGS frame.
        socket
            .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        loop {
            let mut head = [0u8; 9];
            socket.read_exact(&mut head).await.unwrap();
            let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; length];
            socket.read_exact(&mut payload).await.unwrap();
            match (head[3], head[4] & 1) {
                // The client's SETTINGS: acknowledged.
                (4, 0) => socket
                    .write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0])
                    .await
                    .unwrap(),
                // HEADERS.
                (1, _) => break,
                _ => {}
            }
        }
        let mut frame = vec![0, 0, 8, 7, 0, 0, 0, 0, 0];
        frame.extend_from_slice(&last_stream.to_be_bytes());
        frame.extend_from_slice(&0u32.to_be_bytes());
        socket.write_all(&frame).await.unwrap();
        socket.flush().await.unwrap();
        // The client reads the GOAWAY before the connection ends.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for (last_stream, attempts, gave_up) in [(0, 2, None), (1, 1, Some(GaveUp::NotIdempotent))] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answered = Arc::new(AtomicUsize::new(0));
        let server = tokio::spawn({
            let answered = answered.clone();
            async move {
                let (socket, _) = listener.accept().await.unwrap();
                go_away(socket, last_stream).await;
                loop {
                    let (socket, _) = listener.accept().await.unwrap();
                    tokio::spawn(serve_h2(socket, answered.clone(), |_| None));
                }
            }
        });
        assert_eq!(
            post_over_http2(addr).await,
            (attempts, gave_up),
            "{last_stream}"
        );
        assert_eq!(
            answered.load(Ordering::SeqCst),
            attempts as usize - 1,
            "{last_stream}"
        );
        server.abort();
    }
}
