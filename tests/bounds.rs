//! The cache's bounds under load: a cap on background refreshes, a deadline for coalesced waiters, and a
//! budget for the response bytes misses and refreshes hold in memory.

use crate::support;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use http::{Method, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::Origin;
use support::calls::{call, outcome, post, wait_until};
use tokio::sync::watch;
use tower::{Layer, ServiceExt};
use tower_redis_cache::cache::BypassReason;
use tower_redis_cache::error::BoxError;
use tower_redis_cache::{CacheOutcome, MemoryStore, RedisCacheLayer, RequestBody};

fn builder() -> tower_redis_cache::cache::RedisCacheLayerBuilder {
    RedisCacheLayer::builder(MemoryStore::new(16 << 20)).methods([Method::POST])
}

fn query(i: usize) -> Request<Full<Bytes>> {
    post(&format!(r#"{{"key":{i}}}"#))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_hits_past_the_refresh_cap_are_served_without_starting_one() {
    let origin = Origin::new();
    let layer = builder()
        .fresh_for(Duration::ZERO)
        .stale_for(Duration::from_secs(600))
        .max_background_refreshes(2)
        .build()
        .unwrap();
    let stats = || layer.handle().stats();
    let service = layer.layer(origin.service());
    for i in 0..5 {
        call(&service, query(i)).await;
    }
    assert_eq!(origin.calls(), 5);

    // Every entry is stale now; the origin holds the refreshes it gets.
    origin.close();
    for round in 0..2 {
        for i in 0..5 {
            let reply = call(&service, query(i)).await;
            assert!(
                matches!(outcome(&reply), CacheOutcome::Stale { .. }),
                "round {round} key {i}: {:?}",
                outcome(&reply)
            );
        }
    }
    wait_until("two refreshes reach the origin", || origin.calls() == 7).await;
    let counted = stats();
    assert_eq!(counted.refreshes_started, 2);
    // Keys 2, 3 and 4 found the cap reached, twice each.
    assert_eq!(counted.refreshes_deferred, 6);
    assert_eq!(origin.calls(), 7, "no third refresh while two run");

    // Once they finish, a stale hit of a deferred key starts its refresh.
    origin.open();
    wait_until("the two refreshes store", || stats().stores == 7).await;
    let reply = call(&service, query(4)).await;
    assert_eq!(outcome(&reply), CacheOutcome::Stale { refreshing: true });
    wait_until("key 4 refreshed", || origin.calls() == 8).await;
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_leader_is_never_polled_calls_the_origin_after_coalesced_wait() {
    let origin = Origin::new();
    origin.close();
    let layer = builder()
        .coalesced_wait(Duration::from_secs(2))
        .build()
        .unwrap();
    let service = layer.layer(origin.service());

    // The leader's call reaches the (closed) origin; its future is then kept and never polled again.
    let mut leader = Box::pin(service.clone().oneshot(query(1)));
    for _ in 0..100 {
        if origin.calls() == 1 {
            break;
        }
        assert!((&mut leader).now_or_never().is_none());
        tokio::task::yield_now().await;
    }
    assert_eq!(origin.calls(), 1);
    origin.open();

    let start = tokio::time::Instant::now();
    let reply = call(&service, query(1)).await;
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(2),
        "waited coalesced_wait"
    );
    assert_eq!(
        outcome(&reply),
        CacheOutcome::Miss {
            collapsed: false,
            stored: false
        }
    );
    assert_eq!(origin.calls(), 2);
    assert_eq!(layer.handle().stats().coalesce_timeouts, 1);
    drop(leader);
}

/// An origin whose answers send 40 KiB at once, then one more byte when the gate opens.
fn trickling_origin(
    gate: watch::Receiver<bool>,
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<RequestBody>,
    Response = Response<UnsyncBoxBody<Bytes, BoxError>>,
    Error = BoxError,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_request: Request<RequestBody>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let body = gated(Bytes::from(vec![b'x'; 40 * 1024]), b"!", gate.clone());
        async move { Ok::<_, BoxError>(Response::new(body)) }
    })
}

/// A body that sends `first` at once, then `then` once the gate opens.
fn gated(
    first: Bytes,
    then: &'static [u8],
    gate: watch::Receiver<bool>,
) -> UnsyncBoxBody<Bytes, BoxError> {
    let frames = futures_util::stream::unfold(Some(first), move |step| {
        let mut gate = gate.clone();
        async move {
            let data = match step {
                Some(first) => first,
                None => {
                    gate.wait_for(|open| *open).await.ok()?;
                    Bytes::from_static(then)
                }
            };
            Some((Ok::<_, BoxError>(Frame::data(data)), None))
        }
    });
    StreamBody::new(frames.take(2)).boxed_unsync()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_past_the_in_flight_budget_stream_through_unstored() {
    let (open, gate) = watch::channel(false);
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = builder()
        .max_body_size(64 * 1024)
        .max_in_flight_bytes(64 * 1024)
        .build()
        .unwrap();
    let stats = || layer.handle().stats();
    let service = layer.layer(trickling_origin(gate, calls.clone()));

    // A holds 40 KiB of the 64 KiB budget while its answer trickles in.
    let first = tokio::spawn(service.clone().oneshot(query(1)));
    wait_until("A holds its first 40 KiB", || {
        stats().in_flight_bytes == 40 * 1024
    })
    .await;
    // B's 40 KiB would pass the budget: B is streamed through to its caller, unstored.
    let second = service.clone().oneshot(query(2)).await.unwrap();
    assert_eq!(
        CacheOutcome::of(&second).unwrap(),
        CacheOutcome::Miss {
            collapsed: false,
            stored: false
        }
    );
    assert_eq!(stats().over_memory_budget, 1);
    assert_eq!(stats().in_flight_bytes, 40 * 1024, "B holds none of it");
    // Not too large for the cache, only for the moment: no reason of the answer's own is given.
    let status = second.headers()["cache-status"].to_str().unwrap();
    assert!(!status.contains("detail"), "{status}");

    open.send_replace(true);
    let body = second.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 40 * 1024 + 1, "B's answer arrives whole");
    let first = first.await.unwrap().unwrap();
    assert_eq!(
        CacheOutcome::of(&first).unwrap(),
        CacheOutcome::Miss {
            collapsed: false,
            stored: true
        }
    );
    drop(first);
    assert_eq!(stats().in_flight_bytes, 0, "given back");

    // With the budget free, B is stored on its next miss and then hit.
    let again = service.clone().oneshot(query(2)).await.unwrap();
    assert!(matches!(
        CacheOutcome::of(&again),
        Some(CacheOutcome::Miss { stored: true, .. })
    ));
    let hit = service.oneshot(query(2)).await.unwrap();
    assert_eq!(CacheOutcome::of(&hit), Some(CacheOutcome::Hit));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_its_head_rules_out_storing_goes_on_as_it_arrives() {
    for (field, value, detail) in [
        ("set-cookie", "session=1", "response-set-cookie"),
        ("cache-control", "no-store", "response-no-store"),
        ("cache-control", "private", "response-private"),
        ("vary", "*", "response-vary-star"),
    ] {
        let (open, gate) = watch::channel(false);
        let layer = builder().build().unwrap();
        let stats = || layer.handle().stats();
        // The first chunk, then the rest once the gate opens.
        let service = layer.layer(tower::service_fn(move |_request: Request<RequestBody>| {
            let mut response =
                Response::new(gated(Bytes::from_static(b"first "), b"rest", gate.clone()));
            response
                .headers_mut()
                .insert(field, http::HeaderValue::from_static(value));
            async move { Ok::<_, BoxError>(response) }
        }));
        // While the origin holds the rest back, the caller has the head and the first chunk, and the layer
        // holds none of it (a cache that read it whole first would never answer: the guard fails the test).
        let guard = Duration::from_secs(30);
        let response = tokio::time::timeout(guard, service.oneshot(query(1)))
            .await
            .expect("the head arrives while the origin holds the rest")
            .unwrap();
        let status = response.headers()["cache-status"].to_str().unwrap();
        assert_eq!(
            status,
            format!("tower-redis-cache; fwd=uri-miss; fwd-status=200; detail={detail}")
        );
        let mut body = response.into_body();
        let first = tokio::time::timeout(guard, body.frame())
            .await
            .expect("the first chunk arrives while the origin holds the rest")
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "first ");
        assert_eq!(stats().in_flight_bytes, 0, "{field}");
        open.send(true).unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "rest");
        assert_eq!(
            (
                stats().stores,
                stats().not_stored,
                stats().over_memory_budget
            ),
            (0, 1, 0),
            "{field}"
        );
    }
}

/// The outcome of a miss that was, or was not, stored.
fn miss(stored: bool) -> Option<CacheOutcome> {
    Some(CacheOutcome::Miss {
        collapsed: false,
        stored,
    })
}

/// A query of about `len` bytes: `{"key":<i>,"pad":"xx..."}`.
fn padded(i: usize, len: usize) -> Bytes {
    let head = format!(r#"{{"key":{i},"pad":""#);
    let pad = "x".repeat(len.saturating_sub(head.len() + 2));
    Bytes::from(format!("{head}{pad}\"}}"))
}

/// A request of `body`, as a client streams it: in two chunks.
fn streamed(body: &Bytes) -> Request<UnsyncBoxBody<Bytes, BoxError>> {
    let (first, second) = (body.slice(..body.len() / 2), body.slice(body.len() / 2..));
    let frames = futures_util::stream::iter([first, second].map(|b| Ok(Frame::data(b))));
    let (parts, _) = query(0).into_parts();
    Request::from_parts(parts, StreamBody::new(frames).boxed_unsync())
}

/// An origin that keeps the bodies it is sent and answers each with a short JSON, holding a call whose body
/// holds `"key":<held>` until the gate opens.
fn keeping_origin(
    held: usize,
    gate: watch::Receiver<bool>,
    received: Arc<std::sync::Mutex<Vec<Bytes>>>,
) -> impl tower::Service<
    Request<RequestBody>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let held = format!(r#""key":{held},"#);
    tower::service_fn(move |request: Request<RequestBody>| {
        let (held, mut gate, received) = (held.clone(), gate.clone(), received.clone());
        async move {
            let body = request.into_body().collect().await?.to_bytes();
            let n = {
                let mut received = received.lock().unwrap();
                // A copy: the bytes the layer sent hold its budget while they live.
                received.push(Bytes::copy_from_slice(&body));
                received.len()
            };
            if body.windows(held.len()).any(|w| w == held.as_bytes()) {
                gate.wait_for(|open| *open).await?;
            }
            Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(format!(
                r#"{{"n":{n}}}"#
            )))))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_read_from_a_stream_hold_the_in_flight_budget() {
    const KIB_40: usize = 40 * 1024;
    let (open, gate) = watch::channel(false);
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let layer = builder()
        .max_body_size(64 * 1024)
        .max_in_flight_bytes(64 * 1024)
        .build()
        .unwrap();
    let stats = || layer.handle().stats();
    let service = layer.layer(keeping_origin(1, gate, received.clone()));

    // A's 40 KiB, read from its stream to key it, are held while the origin works on A.
    let a_body = padded(1, KIB_40);
    let first = tokio::spawn(service.clone().oneshot(streamed(&a_body)));
    wait_until("the origin holds A", || received.lock().unwrap().len() == 1).await;
    assert_eq!(
        received.lock().unwrap()[0],
        a_body,
        "A reached the origin whole"
    );
    assert_eq!(stats().in_flight_bytes, a_body.len() as u64);

    // B's would pass the budget: B goes to the origin unkeyed, its body whole, as far as read chained with the
    // rest, and the layer holds none of it.
    let b_body = padded(2, KIB_40);
    let second = service.clone().oneshot(streamed(&b_body)).await.unwrap();
    assert_eq!(
        second.headers()["cache-status"],
        "tower-redis-cache; fwd=bypass; detail=request-over-budget"
    );
    assert_eq!(
        CacheOutcome::of(&second),
        Some(CacheOutcome::Bypass(BypassReason::RequestOverBudget))
    );
    assert_eq!(
        received.lock().unwrap()[1],
        b_body,
        "B reached the origin whole"
    );
    assert_eq!(stats().over_memory_budget, 1);
    assert_eq!(stats().bypasses_for(BypassReason::RequestOverBudget), 1);
    assert_eq!(
        stats().in_flight_bytes,
        a_body.len() as u64,
        "B holds none of it"
    );

    // A body that was whole when its request came is not the layer's to read, so not counted: C is cached.
    let c = Request::from_parts(query(3).into_parts().0, Full::new(padded(3, KIB_40)));
    let third = service.clone().oneshot(c).await.unwrap();
    assert_eq!(CacheOutcome::of(&third), miss(true));

    // A is answered and stored; its bytes are given back once nothing holds them.
    open.send_replace(true);
    let first = first.await.unwrap().unwrap();
    assert_eq!(CacheOutcome::of(&first), miss(true));
    drop(first);
    wait_until("A's bytes given back", || stats().in_flight_bytes == 0).await;

    // Not too large, only too many at once: B is keyed on its next try, then a hit.
    let again = service.clone().oneshot(streamed(&b_body)).await.unwrap();
    assert_eq!(CacheOutcome::of(&again), miss(true));
    let hit = service.oneshot(streamed(&b_body)).await.unwrap();
    assert_eq!(CacheOutcome::of(&hit), Some(CacheOutcome::Hit));
    assert_eq!(received.lock().unwrap().len(), 4, "A, B bypassed, C, B");
    assert_eq!(stats().stores, 3);
    assert_eq!(stats().over_memory_budget, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_query_when_a_body_past_the_in_flight_budget_counts_as_a_write() {
    const KIB_40: usize = 40 * 1024;
    let warnings = support::logs::warnings();
    let (open, gate) = watch::channel(false);
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let layer = builder()
        .max_body_size(64 * 1024)
        .max_in_flight_bytes(64 * 1024)
        .query_when(|_, body| body.starts_with(br#"{"key""#))
        .build()
        .unwrap();
    let stats = || layer.handle().stats();
    let service = layer.layer(keeping_origin(1, gate, received.clone()));
    let cached = |service| async move {
        let reply = call(&service, query(9)).await;
        outcome(&reply)
    };
    assert!(matches!(
        cached(service.clone()).await,
        CacheOutcome::Miss { stored: true, .. }
    ));
    assert_eq!(cached(service.clone()).await, CacheOutcome::Hit);

    // A holds 40 KiB of the budget at the origin.
    let first = tokio::spawn(service.clone().oneshot(streamed(&padded(1, KIB_40))));
    wait_until("the origin holds A", || received.lock().unwrap().len() == 2).await;

    // B, and then D (bypassed for its credentials, its body read for a write it may show), come past the budget:
    // neither is read, so `query_when` cannot say it is a query, and each one's success removes the URI's
    // entries, as a write's would.
    for (i, credentials) in [(2, None), (4, Some("Bearer d"))] {
        let mut request = streamed(&padded(i, KIB_40));
        if let Some(credentials) = credentials {
            request
                .headers_mut()
                .insert("authorization", credentials.parse().unwrap());
        }
        let reply = service.clone().oneshot(request).await.unwrap();
        let reason = match credentials {
            None => BypassReason::RequestOverBudget,
            Some(_) => BypassReason::Authorization,
        };
        assert_eq!(CacheOutcome::of(&reply), Some(CacheOutcome::Bypass(reason)));
        assert!(
            matches!(
                cached(service.clone()).await,
                CacheOutcome::Miss { stored: true, .. }
            ),
            "the query's entry went with the write: {reason:?}"
        );
        assert_eq!(cached(service.clone()).await, CacheOutcome::Hit);
    }
    assert_eq!(stats().over_memory_budget, 2);
    assert_eq!(stats().unsafe_invalidations, 2);
    let told = support::logs::containing(&warnings, "filled `max_in_flight_bytes`");
    assert_eq!(told.len(), 1, "{told:?}");

    // A was at the origin while the writes ran: its answer may predate them, so it is not stored.
    open.send_replace(true);
    let first = first.await.unwrap().unwrap();
    assert_eq!(CacheOutcome::of(&first), miss(false));
}

#[tokio::test]
async fn an_answer_with_more_header_values_than_a_map_has_slots_is_stored_whole() {
    // `http` gives a map at most 24,576 slots for names; values of one name are held apart, without that cap,
    // so an answer can carry more, and the entry's count (a `u16`) can say up to 65,535: with the origin's
    // `content-type`, 65,534 rows.
    for (rows, stored) in [(30_000, true), (65_534, true), (65_535, false)] {
        let origin = Origin::new();
        for i in 0..rows {
            origin.add_header_value("x-row", http::HeaderValue::from(i));
        }
        let service = builder().build().unwrap().layer(origin.service());
        let first = call(&service, query(0)).await;
        assert_eq!(Some(outcome(&first)), miss(stored), "{rows} values");
        assert_eq!(
            first.headers().get_all("x-row").iter().count(),
            rows as usize
        );
        let second = call(&service, query(0)).await;
        let values: Vec<_> = second.headers().get_all("x-row").iter().collect();
        assert_eq!(values.len(), rows as usize, "{rows} values");
        assert_eq!(
            values.last().map(|v| v.as_bytes().to_vec()),
            Some((rows - 1).to_string().into_bytes())
        );
        let (expected, calls_made) = if stored {
            (CacheOutcome::Hit, 1)
        } else {
            (miss(false).unwrap(), 2)
        };
        assert_eq!(outcome(&second), expected, "{rows} values");
        assert_eq!(origin.calls(), calls_made, "{rows} values");
    }
}

/// An answer whose `Content-Length` passes `max_body_size` goes on as it arrives, as a head that rules out
/// storing does (the layer would never hold it whole); one of exactly the cap is read whole and stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_judged_too_large_by_its_length_past_the_cap_only() {
    const CAP: usize = 1024;
    let (open, gate) = watch::channel(false);
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = builder().max_body_size(CAP).build().unwrap();
    let stats = || layer.handle().stats();
    let origin = {
        let calls = calls.clone();
        tower::service_fn(move |request: Request<RequestBody>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let gate = gate.clone();
            async move {
                let asked = request.into_body().collect().await?.to_bytes();
                let asked: serde_json::Value = serde_json::from_slice(&asked)?;
                let len = asked["len"].as_u64().ok_or("no length asked")? as usize;
                // `len` bytes: the first 100 at once, the rest when the gate opens.
                let body = gated(
                    Bytes::from(vec![b'x'; 100]),
                    Vec::leak(vec![b'y'; len - 100]),
                    gate,
                );
                let mut response = Response::new(body);
                response
                    .headers_mut()
                    .insert("content-length", http::HeaderValue::from(len));
                Ok::<_, BoxError>(response)
            }
        })
    };
    let service = layer.layer(origin);
    // The origin answers `{"len":n}` with n bytes.
    let asking = |n: usize| post(&format!(r#"{{"len":{n}}}"#));

    let guard = Duration::from_secs(30);
    let response = tokio::time::timeout(guard, service.clone().oneshot(asking(CAP + 1)))
        .await
        .expect("the head arrives while the origin holds the rest")
        .unwrap();
    assert_eq!(
        response.headers()["cache-status"],
        "tower-redis-cache; fwd=uri-miss; fwd-status=200; detail=response-too-large"
    );
    assert_eq!(stats().in_flight_bytes, 0);
    open.send_replace(true);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), CAP + 1);

    let at_cap = service.clone().oneshot(asking(CAP)).await.unwrap();
    assert_eq!(CacheOutcome::of(&at_cap), miss(true));
    assert_eq!(
        at_cap.into_body().collect().await.unwrap().to_bytes().len(),
        CAP
    );
    let hit = service.oneshot(asking(CAP)).await.unwrap();
    assert_eq!(CacheOutcome::of(&hit), Some(CacheOutcome::Hit));
    assert_eq!(
        hit.into_body().collect().await.unwrap().to_bytes().len(),
        CAP
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A request that goes to the origin unkeyed (for its credentials) has its body read before it goes only where
/// the body could show a write whose success removes entries: where writes remove nothing, or no rule reads
/// such a body, it streams through as it comes, and the origin is called before the client has sent it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bypassed_body_streams_through_unless_it_could_show_a_write() {
    let cases = [
        (
            "writes remove nothing",
            builder()
                .query_when(|_, _| true)
                .invalidate_on_unsafe(false),
            "application/json",
        ),
        (
            "no rule reads the body",
            builder(),
            "application/octet-stream",
        ),
    ];
    for (case, builder, content_type) in cases {
        let (open, gate) = watch::channel(false);
        // Counts each call before it reads the body, and echoes the body.
        let origin = Origin::new();
        let layer = builder.build().unwrap();
        let service = layer.layer(origin.service());
        let request = Request::post("https://api.example.com/api/v2/query")
            .header("authorization", "Bearer a")
            .header("content-type", content_type)
            .body(gated(Bytes::from_static(b"{\"a\":"), b"1}", gate))
            .unwrap();
        let pending = tokio::spawn(service.oneshot(request));
        wait_until(case, || origin.calls() == 1).await;
        open.send_replace(true);
        let response = pending.await.unwrap().unwrap();
        assert_eq!(
            response.headers()["cache-status"],
            "tower-redis-cache; fwd=bypass; detail=authorization",
            "{case}"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "{\"n\":1,\"echo\":{\"a\":1}}", "{case}");
    }
}
