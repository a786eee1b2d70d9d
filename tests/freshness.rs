//! Freshness per query against a real redis-server: windows per route and per call, the origin's own
//! `Cache-Control`, capped, and conditional refreshes. The clock jumps (Tokio time paused, advanced, resumed)
//! while Redis runs in real time.

use crate::support;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::calls::{body, cache_status, call, jump, outcome, wait_until};
use support::{Origin, RedisServer, fred_client};
use tower_redis_cache::cache::{CacheOverride, RedisCacheLayerBuilder, Windows};
use tower_redis_cache::error::BoxError;
use tower_redis_cache::{CacheOutcome, RedisCache, RedisCacheLayer, RedisStore, RequestBody};

async fn layer(server: &RedisServer) -> RedisCacheLayerBuilder {
    RedisCacheLayer::builder(RedisStore::new(fred_client(&server.url()).await))
        .namespace("fresh")
        .methods([Method::GET, Method::POST])
        .store_timeout(Duration::from_secs(2))
}

fn cached<S>(layer: &RedisCacheLayer, inner: S) -> RedisCache<S> {
    tower::Layer::layer(layer, inner)
}

fn get(path: &str) -> Request<Full<bytes::Bytes>> {
    Request::get(format!("http://api.test{path}"))
        .body(Full::default())
        .unwrap()
}

fn secs(fresh: u64, stale: u64, on_error: u64) -> Windows {
    Windows::new(
        Duration::from_secs(fresh),
        Duration::from_secs(stale),
        Duration::from_secs(on_error),
    )
}

/// The `ttl` of a hit's `Cache-Status` (real time runs on between the jumps, so it may read a second less).
fn ttl(response: &support::calls::Reply) -> i64 {
    let status = cache_status(response);
    status
        .strip_prefix("tower-redis-cache; hit; ttl=")
        .unwrap_or_else(|| panic!("not a hit: {status}"))
        .parse()
        .unwrap()
}

/// How long Redis keeps the entry of a `GET` of `path` (`PTTL`, in ms).
fn stored_for_ms(server: &RedisServer, layer: &RedisCacheLayer, path: &str) -> u64 {
    let request = Request::get(format!("http://api.test{path}"))
        .body(b"")
        .unwrap();
    let key = layer.handle().key_for(&request);
    let ttl = String::from_utf8(server.command(&[b"PTTL", key.as_str().as_bytes()])).unwrap();
    ttl.trim_start_matches(':').trim().parse().unwrap()
}

fn is_miss(response: &support::calls::Reply) -> bool {
    matches!(outcome(response), CacheOutcome::Miss { .. })
}

#[tokio::test]
async fn two_routes_expire_at_their_own_times_and_a_call_can_choose_its_own() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer(&server)
        .await
        .windows_for(|parts| match parts.uri.path() {
            "/lookup" => Some(secs(10, 0, 0)),
            "/config" => Some(secs(100, 0, 0)),
            _ => None,
        })
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    assert!(is_miss(&call(&service, get("/lookup")).await));
    assert!(is_miss(&call(&service, get("/config")).await));

    jump(Duration::from_secs(11)).await;
    assert!(
        is_miss(&call(&service, get("/lookup")).await),
        "10 s are over"
    );
    let config = call(&service, get("/config")).await;
    assert_eq!(outcome(&config), CacheOutcome::Hit);
    assert!(
        (88..=89).contains(&ttl(&config)),
        "{}",
        cache_status(&config)
    );

    jump(Duration::from_secs(90)).await;
    assert!(
        is_miss(&call(&service, get("/config")).await),
        "100 s are over"
    );
    assert_eq!(origin.calls(), 4);

    // One call stores with windows of its own, whatever its route says.
    let mut brief = get("/config?v=2");
    brief
        .extensions_mut()
        .insert(CacheOverride::Windows(secs(5, 0, 0)));
    assert!(is_miss(&call(&service, brief).await));
    jump(Duration::from_secs(6)).await;
    assert!(
        is_miss(&call(&service, get("/config?v=2")).await),
        "its 5 s are over"
    );

    let mut skipped = get("/config");
    skipped.extensions_mut().insert(CacheOverride::Skip);
    let response = call(&service, skipped).await;
    assert_eq!(
        cache_status(&response),
        "tower-redis-cache; fwd=bypass; detail=skipped"
    );
}

#[tokio::test]
async fn a_status_keeps_windows_of_its_own_unless_the_call_or_the_origin_says_otherwise() {
    let server = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = layer(&server)
        .await
        .fresh_for(Duration::from_secs(3600))
        .windows_for(|parts| (parts.uri.path() == "/missing/routed").then(|| secs(100, 0, 0)))
        .cacheable_statuses([StatusCode::OK, StatusCode::NOT_FOUND])
        .windows_for_status(StatusCode::NOT_FOUND, secs(10, 0, 0))
        .build()
        .unwrap();
    // `404` under `/missing` (with `Cache-Control: max-age=30` under `/missing/told`), else `200`.
    let counted = calls.clone();
    let origin = tower::service_fn(move |request: Request<RequestBody>| {
        counted.fetch_add(1, Ordering::SeqCst);
        let path = request.uri().path().to_owned();
        async move {
            let mut response = Response::builder();
            if path.starts_with("/missing") {
                response = response.status(StatusCode::NOT_FOUND);
            }
            if path == "/missing/told" {
                response = response.header("cache-control", "max-age=30");
            }
            Ok::<_, BoxError>(response.body(Full::new(Bytes::from(path)))?)
        }
    });
    let service = cached(&layer, origin);
    let mut brief_call = get("/missing/called");
    brief_call
        .extensions_mut()
        .insert(CacheOverride::Windows(secs(100, 0, 0)));
    for request in [
        get("/found"),
        get("/missing"),
        get("/missing/routed"),
        get("/missing/told"),
        brief_call,
    ] {
        assert!(is_miss(&call(&service, request).await));
    }
    let missing = call(&service, get("/missing")).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(
        (9..=10).contains(&ttl(&missing)),
        "{}",
        cache_status(&missing)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 5);

    jump(Duration::from_secs(11)).await;
    assert!(
        is_miss(&call(&service, get("/missing")).await),
        "a 404 keeps its 10 s, not the layer's hour"
    );
    assert!(
        is_miss(&call(&service, get("/missing/routed")).await),
        "nor its route's 100 s"
    );
    for (path, why) in [
        ("/found", "a 200 keeps the layer's hour"),
        ("/missing/told", "the origin's max-age=30 wins"),
        ("/missing/called", "the call's own 100 s win"),
    ] {
        let hit = call(&service, get(path)).await;
        assert_eq!(outcome(&hit), CacheOutcome::Hit, "{why}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 7);
}

#[tokio::test]
async fn a_key_asked_for_in_its_last_part_of_freshness_is_renewed_before_it_goes_stale() {
    let server = RedisServer::start();
    let origin = Origin::new();
    // Fresh for 10 s and never answered stale; due for a refresh from 7 s.
    let layer = layer(&server)
        .await
        .fresh_for(Duration::from_secs(10))
        .stale_for(Duration::ZERO)
        .refresh_ahead(0.3)
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    assert!(is_miss(&call(&service, get("/hot")).await));
    assert!(is_miss(&call(&service, get("/cold")).await));

    jump(Duration::from_secs(5)).await;
    let early = call(&service, get("/hot")).await;
    assert!((4..=5).contains(&ttl(&early)), "{}", cache_status(&early));
    assert!(
        !cache_status(&early).contains("refreshing"),
        "not due yet: {}",
        cache_status(&early)
    );
    jump(Duration::from_secs(3)).await;
    let due = call(&service, get("/hot")).await;
    assert_eq!(outcome(&due), CacheOutcome::Hit);
    assert!(
        cache_status(&due).ends_with("; detail=refreshing"),
        "{}",
        cache_status(&due)
    );
    assert_eq!(
        &body(due).await[..],
        br#"{"n":1,"echo":null}"#,
        "answered at once"
    );
    wait_until("the refresh stored", || layer.handle().stats().stores == 3).await;
    assert_eq!(layer.handle().stats().refreshes_started, 1);
    let renewed = call(&service, get("/hot")).await;
    assert!(
        (9..=10).contains(&ttl(&renewed)),
        "{}",
        cache_status(&renewed)
    );
    assert!(
        !cache_status(&renewed).contains("refreshing"),
        "the new entry is not due: no second refresh"
    );
    assert_eq!(&body(renewed).await[..], br#"{"n":3,"echo":null}"#);

    // Past the first entry's 10 s: the key asked for is still fresh; the one not asked for has expired.
    jump(Duration::from_secs(4)).await;
    let hot = call(&service, get("/hot")).await;
    assert_eq!(outcome(&hot), CacheOutcome::Hit);
    assert!(is_miss(&call(&service, get("/cold")).await));
    assert_eq!(origin.calls(), 4);
    assert_eq!(layer.handle().stats().stale_hits, 0);
}

#[tokio::test]
async fn the_origins_max_age_and_stale_while_revalidate_drive_the_windows() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.add_header("cache-control", "max-age=2, stale-while-revalidate=5");
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    assert!(is_miss(&call(&service, get("/report")).await));

    jump(Duration::from_secs(1)).await;
    let fresh = call(&service, get("/report")).await;
    assert!((0..=1).contains(&ttl(&fresh)), "{}", cache_status(&fresh));
    jump(Duration::from_secs(2)).await;
    let stale = call(&service, get("/report")).await;
    assert_eq!(outcome(&stale), CacheOutcome::Stale { refreshing: true });
    wait_until("the refresh stored", || layer.handle().stats().stores == 2).await;

    // Past the origin's seven seconds: gone, where the layer's own windows (60 s + 60 s) would still answer.
    jump(Duration::from_secs(8)).await;
    assert!(is_miss(&call(&service, get("/report")).await));
    assert_eq!(origin.calls(), 3);

    // A POST's origin headers count only when the layer says so.
    let post = || {
        Request::post("http://api.test/query")
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap()
    };
    assert!(is_miss(&call(&service, post()).await));
    jump(Duration::from_secs(3)).await;
    assert_eq!(
        outcome(&call(&service, post()).await),
        CacheOutcome::Hit,
        "the layer's 60 s, not max-age=2"
    );
}

#[tokio::test]
async fn a_targeted_field_governs_this_cache_while_browsers_get_cache_control() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.add_header("cache-control", "no-store");
    origin.add_header("cdn-cache-control", "max-age=2");
    let cdn = http::HeaderName::from_static("cdn-cache-control");
    let targeted = layer(&server)
        .await
        .namespace("targeted")
        .targeted_cache_control([cdn])
        .build()
        .unwrap();
    let service = cached(&targeted, origin.service());
    assert!(is_miss(&call(&service, get("/feed")).await));
    let hit = call(&service, get("/feed")).await;
    assert_eq!(outcome(&hit), CacheOutcome::Hit);
    assert_eq!(
        hit.headers()["cache-control"],
        "no-store",
        "passed on as sent"
    );
    assert_eq!(hit.headers()["cdn-cache-control"], "max-age=2");
    jump(Duration::from_secs(3)).await;
    assert_eq!(
        outcome(&call(&service, get("/feed")).await),
        CacheOutcome::Stale { refreshing: true },
        "fresh for the field's two seconds, then stale in the layer's window"
    );
    wait_until("the refresh stored", || {
        targeted.handle().stats().stores == 2
    })
    .await;
    assert_eq!(origin.calls(), 2);

    // A layer that is not told of the field obeys `Cache-Control`.
    let plain = layer(&server).await.namespace("plain").build().unwrap();
    let service = cached(&plain, origin.service());
    for _ in 0..2 {
        assert!(is_miss(&call(&service, get("/feed")).await));
    }
    assert_eq!(origin.calls(), 4);
}

#[tokio::test]
async fn a_calls_own_windows_stand_over_the_origins_durations_not_over_its_no_cache() {
    let server = RedisServer::start();
    let layer = layer(&server).await.build().unwrap();
    let with_windows = |path: &str, windows: Windows| {
        let mut request = get(path);
        request
            .extensions_mut()
            .insert(CacheOverride::Windows(windows));
        request
    };
    let hour = Origin::new();
    hour.add_header("cache-control", "max-age=3600");
    let service = cached(&layer, hour.service());
    assert!(is_miss(
        &call(&service, with_windows("/doc", secs(5, 0, 0))).await
    ));
    assert!(is_miss(&call(&service, get("/plain")).await));
    jump(Duration::from_secs(6)).await;
    assert!(
        is_miss(&call(&service, get("/doc")).await),
        "the call's 5 s, not the origin's hour"
    );
    assert_eq!(
        outcome(&call(&service, get("/plain")).await),
        CacheOutcome::Hit,
        "without its own windows, the origin's hour"
    );

    // `no-cache`: never answered without asking the origin, whatever the call's windows.
    let ask = Origin::new();
    ask.add_header("cache-control", "no-cache");
    let service = cached(&layer, ask.service());
    for _ in 0..2 {
        let request = with_windows("/asked", secs(100, 0, 0));
        assert!(is_miss(&call(&service, request).await));
    }
    assert_eq!(ask.calls(), 2);
}

#[tokio::test]
async fn the_layers_caps_win_over_a_huge_max_age() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.add_header("cache-control", "max-age=31536000");
    let layer = layer(&server)
        .await
        .origin_freshness_cap(secs(10, 0, 0))
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    call(&service, get("/year")).await;
    let ttl = stored_for_ms(&server, &layer, "/year");
    assert!(
        (300_000..=310_000).contains(&ttl),
        "fresh for the cap's 10 s, not a year, then the layer's own 300 s of stale-if-error: {ttl} ms"
    );
    jump(Duration::from_secs(11)).await;
    assert_eq!(
        outcome(&call(&service, get("/year")).await),
        CacheOutcome::Stale { refreshing: true },
        "stale after the cap's 10 s, in the layer's own stale window"
    );
}

#[tokio::test]
async fn windows_a_hook_or_a_call_asks_for_are_cut_to_ten_years() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let endless = Windows::new(Duration::MAX, Duration::MAX, Duration::MAX);
    let layer = layer(&server)
        .await
        .windows_for(move |parts| (parts.uri.path() == "/hooked").then_some(endless))
        .tags(|_| vec!["all".into()])
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    let mut called = get("/called");
    called
        .extensions_mut()
        .insert(CacheOverride::Windows(endless));
    for request in [get("/hooked"), called] {
        let path = request.uri().path().to_owned();
        let miss = call(&service, request).await;
        assert_eq!(
            outcome(&miss),
            CacheOutcome::Miss {
                collapsed: false,
                stored: true
            },
            "{path}: stored, not refused by Redis"
        );
        assert_eq!(
            outcome(&call(&service, get(&path)).await),
            CacheOutcome::Hit
        );
        let ttl = stored_for_ms(&server, &layer, &path);
        let ten_years = 10 * 365 * 24 * 3600 * 1000;
        assert!(
            ttl > ten_years && ttl <= 2 * ten_years,
            "{path}: fresh and stale-if-error windows of 10 years each: {ttl} ms"
        );
    }
    layer.handle().invalidate_tag("all").await.unwrap();
    assert!(
        is_miss(&call(&service, get("/hooked")).await),
        "the tag still finds it"
    );
}

/// The bulk strings of a RESP reply, in order: the one it is, or those of the array it is.
fn bulk_strings(reply: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(reply);
    let lines: Vec<&str> = text.split("\r\n").collect();
    lines
        .windows(2)
        .filter(|pair| pair[0].starts_with('$'))
        .map(|pair| pair[1].to_owned())
        .collect()
}

/// A tag must find an entry for as long as the entry may answer: a tag set holds each member until the longest
/// windows any answer to its request may get, its status's among them. Here a `404` is kept a week, longer than
/// the layer's own windows and the origin cap's day: its member must outlive the week.
#[tokio::test]
async fn a_tag_holds_an_entry_as_long_as_the_windows_of_its_status() {
    const WEEK: u64 = 7 * 86_400;
    let server = RedisServer::start();
    let layer = layer(&server)
        .await
        .cacheable_statuses([StatusCode::OK, StatusCode::NOT_FOUND])
        .windows_for_status(StatusCode::NOT_FOUND, secs(WEEK, 0, 0))
        .tags(|_| vec!["all".into()])
        .build()
        .unwrap();
    let origin = tower::service_fn(|_: Request<RequestBody>| async {
        Ok::<_, BoxError>(
            Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Full::new(Bytes::from_static(b"no such item")))?,
        )
    });
    let service = cached(&layer, origin);
    assert!(is_miss(&call(&service, get("/items/9")).await));
    let kept = stored_for_ms(&server, &layer, "/items/9");
    assert!(
        kept > (WEEK - 60) * 1000 && kept <= WEEK * 1000,
        "the entry is kept the week: {kept} ms"
    );
    let now: u64 = bulk_strings(&server.command(&[b"TIME"]))[0]
        .parse()
        .unwrap();
    let sets = bulk_strings(&server.command(&[b"KEYS", b"fresh:v1:tag:*"]));
    assert!(!sets.is_empty(), "the answer is tagged");
    for set in sets {
        let held =
            bulk_strings(&server.command(&[b"ZRANGE", set.as_bytes(), b"0", b"-1", b"WITHSCORES"]));
        let [_, until] = held.as_slice() else {
            panic!("one member in {set}: {held:?}");
        };
        let until: f64 = until.parse().unwrap();
        assert!(
            until / 1000.0 > (now + WEEK) as f64,
            "{set} holds its member until {until} ms, {now} s now"
        );
    }
}

/// An origin whose answers are fresh for a second and stale for a minute after, tagged `etag` if any.
fn second_fresh(etag: Option<&'static str>) -> Arc<Origin> {
    let origin = Origin::new();
    if let Some(etag) = etag {
        origin.set_etag(etag);
    }
    origin.add_header("cache-control", "max-age=1, stale-while-revalidate=60");
    origin
}

#[tokio::test]
async fn a_refresh_answered_304_renews_the_entry_without_its_body() {
    let server = RedisServer::start();
    let origin = second_fresh(Some("\"v1\""));
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    let first = call(&service, get("/doc")).await;
    let bytes = origin.body_bytes();
    let original = body(first).await;

    jump(Duration::from_secs(2)).await;
    let stale = call(&service, get("/doc")).await;
    assert_eq!(outcome(&stale), CacheOutcome::Stale { refreshing: true });
    wait_until("the refresh renewed the entry", || {
        layer.handle().stats().revalidated == 1
    })
    .await;
    wait_until("the renewed entry is stored", || {
        layer.handle().stats().stores == 2
    })
    .await;
    assert_eq!(origin.calls(), 2);
    assert_eq!(origin.body_bytes(), bytes, "the 304 carried no body");
    let renewed = call(&service, get("/doc")).await;
    assert_eq!(
        outcome(&renewed),
        CacheOutcome::Hit,
        "fresh again for max-age=1"
    );
    assert_eq!(renewed.headers()["etag"], "\"v1\"");
    assert_eq!(body(renewed).await, original);

    // A request's own no-cache revalidates the same way, and its caller gets the whole stored response.
    let mut revalidate = get("/doc");
    revalidate
        .headers_mut()
        .insert("cache-control", "no-cache".parse().unwrap());
    let confirmed = call(&service, revalidate).await;
    assert_eq!(confirmed.status(), StatusCode::OK);
    assert_eq!(
        cache_status(&confirmed),
        "tower-redis-cache; fwd=request; fwd-status=304; stored"
    );
    assert_eq!(body(confirmed).await, original);
    assert_eq!(origin.body_bytes(), bytes);
    assert_eq!(layer.handle().stats().revalidated, 2);
}

/// Redis keeps an entry with a validator `keep_for` past its last window, and one without none: past its
/// windows, the first is asked about with its `ETag` and renewed by a `304`, its body never sent again.
#[tokio::test]
async fn an_entry_with_a_validator_is_kept_past_its_windows_for_revalidation() {
    let server = RedisServer::start();
    let server = &server;
    let minute = |keep: u64| async move {
        layer(server)
            .await
            .origin_freshness(false)
            .fresh_for(Duration::from_secs(60))
            .stale_for(Duration::ZERO)
            .stale_if_error_for(Duration::ZERO)
            .keep_for(Duration::from_secs(keep))
            .build()
            .unwrap()
    };
    let (kept, unkept) = (minute(600).await, minute(0).await);
    let tagged = Origin::new();
    tagged.set_etag("\"v1\"");
    let plain = Origin::new();
    let service = cached(&kept, tagged.service());
    call(&service, get("/tagged")).await;
    call(&cached(&kept, plain.service()), get("/plain")).await;
    call(&cached(&unkept, tagged.service()), get("/unkept")).await;
    let within = |ms: u64, expected: u64| ms <= expected && ms > expected - 5_000;
    let ttl = stored_for_ms(server, &kept, "/tagged");
    assert!(
        within(ttl, 660_000),
        "a minute of freshness and ten kept: {ttl} ms"
    );
    let ttl = stored_for_ms(server, &kept, "/plain");
    assert!(within(ttl, 60_000), "no validator, nothing kept: {ttl} ms");
    let ttl = stored_for_ms(server, &unkept, "/unkept");
    assert!(within(ttl, 60_000), "keep_for(0): {ttl} ms");

    jump(Duration::from_secs(61)).await;
    let bytes = tagged.body_bytes();
    let renewed = call(&service, get("/tagged")).await;
    assert_eq!(
        cache_status(&renewed),
        "tower-redis-cache; fwd=uri-miss; fwd-status=304; stored"
    );
    assert_eq!(renewed.status(), StatusCode::OK);
    assert!(
        !body(renewed).await.is_empty(),
        "the caller gets the stored body"
    );
    assert_eq!(tagged.body_bytes(), bytes, "the 304 carried none");
    assert_eq!(kept.handle().stats().revalidated, 1);
    let again = call(&service, get("/tagged")).await;
    assert_eq!(
        outcome(&again),
        CacheOutcome::Hit,
        "fresh for another minute"
    );
}

#[tokio::test]
async fn a_changed_etag_replaces_the_entry() {
    let server = RedisServer::start();
    let origin = second_fresh(Some("\"v1\""));
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    call(&service, get("/doc")).await;

    origin.set_etag("\"v2\"");
    jump(Duration::from_secs(2)).await;
    call(&service, get("/doc")).await;
    wait_until("the refresh stored", || layer.handle().stats().stores == 2).await;
    let replaced = call(&service, get("/doc")).await;
    assert_eq!(replaced.headers()["etag"], "\"v2\"");
    assert_eq!(&body(replaced).await[..], br#"{"n":2,"echo":null}"#);
    assert_eq!(layer.handle().stats().revalidated, 0);
}

#[tokio::test]
async fn a_refresh_never_forwards_the_validators_of_the_client_that_started_it() {
    let server = RedisServer::start();
    let origin = second_fresh(None);
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    call(&service, get("/doc")).await;

    // The origin moves on and tags its answers; a client that already holds the new one asks while the entry,
    // which has no tag, is stale. Forwarded, its `If-None-Match` would get a 304 that renews nothing, and the
    // entry would stay stale: the refresh asks without it.
    origin.set_etag("\"v2\"");
    jump(Duration::from_secs(2)).await;
    let mut holding_v2 = get("/doc");
    holding_v2
        .headers_mut()
        .insert("if-none-match", http::HeaderValue::from_static("\"v2\""));
    let stale = call(&service, holding_v2).await;
    assert_eq!(stale.status(), StatusCode::OK);
    assert!(matches!(outcome(&stale), CacheOutcome::Stale { .. }));
    assert_eq!(&body(stale).await[..], br#"{"n":1,"echo":null}"#);
    wait_until("the refresh stored", || layer.handle().stats().stores == 2).await;
    assert_eq!(layer.handle().stats().refreshes_failed, 0);

    let replaced = call(&service, get("/doc")).await;
    assert_eq!(outcome(&replaced), CacheOutcome::Hit);
    assert_eq!(replaced.headers()["etag"], "\"v2\"");
    assert_eq!(&body(replaced).await[..], br#"{"n":2,"echo":null}"#);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn a_range_is_cut_from_a_stale_entry_whose_refresh_asks_for_the_whole_answer() {
    let server = RedisServer::start();
    let origin = second_fresh(None);
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    call(&service, get("/doc")).await;

    jump(Duration::from_secs(2)).await;
    let mut ranged = get("/doc");
    ranged
        .headers_mut()
        .insert("range", http::HeaderValue::from_static("bytes=0-5"));
    let stale = call(&service, ranged).await;
    assert_eq!(stale.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(outcome(&stale), CacheOutcome::Stale { refreshing: true });
    assert_eq!(stale.headers()["content-range"], "bytes 0-5/19");
    assert_eq!(&body(stale).await[..], br#"{"n":1"#);
    // Asked with the range, the origin would answer a `206`, which is never stored.
    wait_until("the refresh stored", || layer.handle().stats().stores == 2).await;

    let refreshed = call(&service, get("/doc")).await;
    assert_eq!(outcome(&refreshed), CacheOutcome::Hit);
    assert_eq!(&body(refreshed).await[..], br#"{"n":2,"echo":null}"#);
    assert_eq!(origin.calls(), 2);
}

/// A layer whose entries are fresh for a minute, then stale for another.
async fn minute_layer(server: &RedisServer) -> RedisCacheLayer {
    layer(server)
        .await
        .fresh_for(Duration::from_secs(60))
        .stale_for(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A `method` request for `/doc` with the request directives `directives`.
fn with_directives(method: Method, directives: &'static str) -> Request<Full<bytes::Bytes>> {
    let mut request = get("/doc");
    *request.method_mut() = method;
    request
        .headers_mut()
        .insert("cache-control", http::HeaderValue::from_static(directives));
    request
}

#[tokio::test]
async fn a_requests_own_max_age_and_min_fresh_bound_what_answers_it() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.set_etag("\"v1\"");
    let layer = minute_layer(&server).await;
    let service = cached(&layer, origin.service());
    let asking = |directives| with_directives(Method::GET, directives);
    let original = body(call(&service, get("/doc")).await).await;

    // Ten seconds old, fifty of freshness left.
    jump(Duration::from_secs(10)).await;
    for accepted in ["max-age=30", "min-fresh=40", "max-age=10, min-fresh=45"] {
        let response = call(&service, asking(accepted)).await;
        assert_eq!(outcome(&response), CacheOutcome::Hit, "{accepted}");
    }
    assert_eq!(origin.calls(), 1);

    // Too old, or not fresh for long enough, for this caller: the origin is asked with the entry's validators,
    // and its 304 renews the entry for everyone.
    for (n, refused) in ["max-age=5", "min-fresh=55"].into_iter().enumerate() {
        let response = call(&service, asking(refused)).await;
        assert_eq!(
            cache_status(&response),
            "tower-redis-cache; fwd=request; fwd-status=304; stored",
            "{refused}"
        );
        assert_eq!(body(response).await, original);
        assert_eq!(origin.calls(), n + 2);
        assert_eq!(layer.handle().stats().revalidated, n as u64 + 1);
        jump(Duration::from_secs(10)).await;
    }
    let renewed = call(&service, asking("max-age=10")).await;
    assert_eq!(
        outcome(&renewed),
        CacheOutcome::Hit,
        "renewed ten seconds ago"
    );

    // Stale: a plain request would be answered at once; one with max-age only within its max-stale.
    jump(Duration::from_secs(55)).await;
    let response = call(&service, asking("max-age=600")).await;
    assert_eq!(
        cache_status(&response),
        "tower-redis-cache; fwd=request; fwd-status=304; stored"
    );
    jump(Duration::from_secs(65)).await;
    let response = call(&service, asking("max-age=600, max-stale=10")).await;
    assert_eq!(outcome(&response), CacheOutcome::Stale { refreshing: true });
    assert_eq!(layer.handle().stats().stale_hits, 1);
}

#[tokio::test]
async fn only_if_cached_is_answered_from_the_store_or_refused_never_by_the_origin() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = minute_layer(&server).await;
    let service = cached(&layer, origin.service());
    let only = with_directives;

    let refused = call(&service, only(Method::GET, "only-if-cached")).await;
    assert_eq!(refused.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(outcome(&refused), CacheOutcome::OnlyIfCachedMiss);
    assert_eq!(
        cache_status(&refused),
        "tower-redis-cache; detail=only-if-cached"
    );
    assert!(body(refused).await.is_empty());
    assert_eq!(origin.calls(), 0);

    let stored = body(call(&service, get("/doc")).await).await;
    let hit = call(&service, only(Method::GET, "only-if-cached")).await;
    assert_eq!(outcome(&hit), CacheOutcome::Hit);
    assert_eq!(body(hit).await, stored);

    // What would need the origin is refused: an entry too old for max-age, a revalidation, a PUT.
    jump(Duration::from_secs(10)).await;
    for (method, directives) in [
        (Method::GET, "only-if-cached, max-age=5"),
        (Method::GET, "no-cache, only-if-cached"),
        (Method::PUT, "only-if-cached"),
    ] {
        let response = call(&service, only(method.clone(), directives)).await;
        assert_eq!(
            response.status(),
            StatusCode::GATEWAY_TIMEOUT,
            "{method} {directives}"
        );
    }
    assert_eq!(origin.calls(), 1);
    assert_eq!(layer.handle().stats().only_if_cached_misses, 4);

    // A stale entry is still a stored answer.
    jump(Duration::from_secs(55)).await;
    let stale = call(&service, only(Method::GET, "only-if-cached")).await;
    assert_eq!(outcome(&stale), CacheOutcome::Stale { refreshing: true });
}

#[tokio::test]
async fn a_server_cache_answers_reloads_and_no_cache_clients_from_the_store() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer(&server)
        .await
        .fresh_for(Duration::from_secs(60))
        .stale_for(Duration::from_secs(60))
        .respect_request_cache_control(false)
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    let stored = body(call(&service, get("/doc")).await).await;
    jump(Duration::from_secs(10)).await;

    // A browser's reload and forced reload, front-end code that marks every call, a field that cannot be
    // read: each would send the request to the origin (or past the cache) if the cache obeyed it.
    let unreadable = http::HeaderValue::from_bytes(b"no-cache, \xff").unwrap();
    let mut requests: Vec<_> = [
        "max-age=0",
        "no-cache",
        "no-store",
        "min-fresh=3600",
        "max-age=5",
    ]
    .into_iter()
    .map(|directives| with_directives(Method::GET, directives))
    .collect();
    let mut pragma = get("/doc");
    pragma
        .headers_mut()
        .insert("pragma", "no-cache".parse().unwrap());
    let mut odd = get("/doc");
    odd.headers_mut().insert("cache-control", unreadable);
    requests.extend([pragma, odd]);
    for request in requests {
        let asked = format!("{:?}", request.headers());
        let response = call(&service, request).await;
        assert_eq!(outcome(&response), CacheOutcome::Hit, "{asked}");
        assert_eq!(body(response).await, stored, "{asked}");
    }
    assert_eq!(origin.calls(), 1);

    // Nor does `only-if-cached` refuse: the request is served as one without it would be.
    let elsewhere = with_directives(Method::GET, "only-if-cached");
    let elsewhere = {
        let (mut parts, body) = elsewhere.into_parts();
        parts.uri = "http://api.test/other".parse().unwrap();
        Request::from_parts(parts, body)
    };
    let response = call(&service, elsewhere).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(is_miss(&response), "{}", cache_status(&response));
    assert_eq!(origin.calls(), 2);
    assert_eq!(layer.handle().stats().only_if_cached_misses, 0);
}

#[tokio::test]
async fn the_age_a_response_came_with_counts_in_its_answers_and_against_a_requests_max_age() {
    // RFC 9111 §4.2.3: an upstream cache already held this response for 100 s of its 300.
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.add_header("cache-control", "max-age=300");
    origin.add_header("age", "100");
    let layer = layer(&server).await.build().unwrap();
    let service = cached(&layer, origin.service());
    assert!(is_miss(&call(&service, get("/doc")).await));

    jump(Duration::from_secs(10)).await;
    let hit = call(&service, get("/doc")).await;
    let age: u64 = hit.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!((110..=111).contains(&age), "age {age}");
    assert!((189..=190).contains(&ttl(&hit)), "{}", cache_status(&hit));

    // Too old for a caller who takes at most 100 s; young enough for one who takes 120 s.
    let asking = |directives| with_directives(Method::GET, directives);
    let refused = call(&service, asking("max-age=100")).await;
    assert_eq!(
        cache_status(&refused),
        "tower-redis-cache; fwd=request; fwd-status=200; stored"
    );
    assert_eq!(origin.calls(), 2);
    let accepted = call(&service, asking("max-age=120")).await;
    assert_eq!(outcome(&accepted), CacheOutcome::Hit);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn a_refresh_whose_answer_store_when_refuses_leaves_the_stale_entry() {
    let server = RedisServer::start();
    // A GraphQL server that answers once with data, then with errors inside a `200`.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let origin = tower::service_fn(move |_: Request<RequestBody>| {
        let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
        let body = if n == 1 {
            r#"{"data":{"items":[1]}}"#.to_owned()
        } else {
            format!(r#"{{"errors":[{{"message":"backend down","call":{n}}}]}}"#)
        };
        async move { Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(body)))) }
    });
    let layer = layer(&server)
        .await
        .fresh_for(Duration::from_secs(1))
        .stale_for(Duration::from_secs(60))
        .store_when(|_, _, body| tower_redis_cache::cache::graphql::is_success(body))
        .build()
        .unwrap();
    let service = cached(&layer, origin);
    let first = call(&service, get("/items")).await;
    assert_eq!(&body(first).await[..], br#"{"data":{"items":[1]}}"#);
    let key = layer
        .handle()
        .key_for(&Request::get("http://api.test/items").body(b"").unwrap());
    let stored = server.command(&[b"GET", key.as_str().as_bytes()]);

    jump(Duration::from_secs(2)).await;
    let stale = call(&service, get("/items")).await;
    assert_eq!(outcome(&stale), CacheOutcome::Stale { refreshing: true });
    assert_eq!(&body(stale).await[..], br#"{"data":{"items":[1]}}"#);
    wait_until("the refresh was refused", || {
        layer.handle().stats().refreshes_failed == 1
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        server.command(&[b"GET", key.as_str().as_bytes()]),
        stored,
        "the entry is left exactly as it was"
    );
    let still = call(&service, get("/items")).await;
    assert!(matches!(outcome(&still), CacheOutcome::Stale { .. }));
    assert_eq!(&body(still).await[..], br#"{"data":{"items":[1]}}"#);
    assert_eq!(layer.handle().stats().stores, 1);
}

/// The call number of an answer from the counting origin (`{"n":...}`).
async fn answer_number(reply: support::calls::Reply) -> u64 {
    let answer: serde_json::Value = serde_json::from_slice(&body(reply).await).unwrap();
    answer["n"].as_u64().unwrap()
}

/// A soft purge of a tag over `store`: answered stale at once while one refresh runs, then fresh; an entry
/// made stale keeps its stale-if-error window, where a removed one would leave a failing origin's error.
async fn a_tag_made_stale_is_answered_stale_while_one_refresh_runs(
    store: impl tower_redis_cache::Store,
) {
    let origin = Origin::new();
    let layer = RedisCacheLayer::builder(store)
        .namespace("soft")
        .tags(|_| vec!["items".to_owned()])
        .fresh_for(Duration::from_secs(60))
        .stale_for(Duration::from_secs(60))
        .stale_if_error_for(Duration::from_secs(300))
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = cached(&layer, origin.service());
    assert_eq!(
        answer_number(call(&service, get("/items/1")).await).await,
        1
    );
    assert_eq!(
        outcome(&call(&service, get("/items/1")).await),
        CacheOutcome::Hit
    );

    assert_eq!(handle.mark_tag_stale("items").await.unwrap(), 1);
    let stale = call(&service, get("/items/1")).await;
    assert_eq!(outcome(&stale), CacheOutcome::Stale { refreshing: true });
    assert_eq!(answer_number(stale).await, 1, "the entry, answered at once");
    // Stored, not only asked: until the refresh's write lands, a read still finds the entry stale.
    wait_until("the one refresh stored", || handle.stats().stores == 2).await;
    assert_eq!(origin.calls(), 2);
    let refreshed = call(&service, get("/items/1")).await;
    assert_eq!(outcome(&refreshed), CacheOutcome::Hit);
    assert_eq!(answer_number(refreshed).await, 2);

    // Fresh again, then stale: the second mark finds nothing fresh, and windows never grow.
    assert_eq!(handle.mark_tag_stale("items").await.unwrap(), 1);
    assert_eq!(handle.mark_tag_stale("items").await.unwrap(), 0);
    assert_eq!(handle.stats().marked_stale, 2);
    assert_eq!(handle.stats().tag_removals, 0, "kept, not removed");
    // Past its stale window (a minute from the mark), the origin failing: its stale-if-error window answers.
    origin.fail_with(StatusCode::SERVICE_UNAVAILABLE);
    jump(Duration::from_secs(61)).await;
    let on_error = call(&service, get("/items/1")).await;
    assert_eq!(outcome(&on_error), CacheOutcome::StaleIfError);
    assert_eq!(answer_number(on_error).await, 2);
    // A removal leaves nothing to answer with.
    assert_eq!(handle.invalidate_tag("items").await.unwrap(), 1);
    let failed = call(&service, get("/items/1")).await;
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_tag_made_stale_in_redis_is_answered_stale_while_one_refresh_runs() {
    let server = RedisServer::start();
    let store = RedisStore::new(fred_client(&server.url()).await);
    a_tag_made_stale_is_answered_stale_while_one_refresh_runs(store).await;
}

#[tokio::test]
async fn a_tag_made_stale_in_memory_is_answered_stale_while_one_refresh_runs() {
    let store = tower_redis_cache::MemoryStore::new(1 << 20);
    a_tag_made_stale_is_answered_stale_while_one_refresh_runs(store).await;
}

/// An entry kept past its windows for revalidation (it has an `ETag`) is named by its request's tags all that
/// time, though they were recorded for the windows: its fill records them again for as long as it is kept.
#[tokio::test(start_paused = true)]
async fn an_entry_kept_for_revalidation_is_still_removed_by_its_tag() {
    let origin = Origin::new();
    origin.set_etag("\"v1\"");
    let layer = RedisCacheLayer::builder(tower_redis_cache::MemoryStore::new(1 << 20))
        .namespace("kept")
        .tags(|_| vec!["items".to_owned()])
        .origin_freshness(false)
        .fresh_for(Duration::from_secs(60))
        .stale_for(Duration::ZERO)
        .stale_if_error_for(Duration::ZERO)
        .keep_for(Duration::from_secs(600))
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    assert_eq!(
        answer_number(call(&service, get("/items/1")).await).await,
        1
    );
    // Past its minute and a lease's time more (what the request's tags were first recorded for): kept for
    // revalidation only, for six minutes yet.
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(layer.handle().invalidate_tag("items").await.unwrap(), 1);
    // Gone: the next request asks without the entry's validator, and stores a whole answer.
    let replaced = call(&service, get("/items/1")).await;
    assert_eq!(
        cache_status(&replaced),
        "tower-redis-cache; fwd=uri-miss; fwd-status=200; stored"
    );
    assert_eq!(answer_number(replaced).await, 2);
    assert_eq!(layer.handle().stats().revalidated, 0);
}

#[tokio::test]
async fn a_request_made_stale_keeps_its_ttl_and_another_processs_near_cache_hears_of_it() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let process = |near: bool| {
        let url = server.url();
        async move {
            let builder = RedisCacheLayer::builder(RedisStore::new(fred_client(&url).await))
                .namespace("soft")
                .fresh_for(Duration::from_secs(60))
                .stale_for(Duration::from_secs(60));
            let builder = if near {
                builder.near_cache(1 << 20)
            } else {
                builder
            };
            builder.build().unwrap()
        }
    };
    let (reader, writer) = (process(true).await, process(false).await);
    let service = cached(&reader, origin.service());
    assert_eq!(answer_number(call(&service, get("/report")).await).await, 1);
    let before = stored_for_ms(&server, &reader, "/report");
    // Answered from the near cache once it is armed.
    wait_until_near_hit(&service, "/report").await;

    let request = Request::get("http://api.test/report").body(b"").unwrap();
    assert!(writer.handle().mark_stale(&request).await.unwrap());
    assert!(
        !writer.handle().mark_stale(&request).await.unwrap(),
        "stale already"
    );
    // Redis keeps the entry as long as before: only its windows moved.
    let after = stored_for_ms(&server, &reader, "/report");
    assert!(
        after <= before && after + 5_000 > before,
        "{before} ms, then {after} ms"
    );
    // The reader's near cache drops its copy when Redis tells it of the change; then the entry is stale.
    let mut outcomes = Vec::new();
    for _ in 0..500 {
        let reply = call(&service, get("/report")).await;
        let seen = outcome(&reply);
        outcomes.push(seen);
        if seen != CacheOutcome::Hit {
            assert_eq!(
                seen,
                CacheOutcome::Stale { refreshing: true },
                "{outcomes:?}"
            );
            assert_eq!(answer_number(reply).await, 1);
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never answered stale: {outcomes:?}");
}

/// Calls `path` until the near cache answers it (`Cache-Status: ...; detail=near`).
async fn wait_until_near_hit<S: support::calls::Cached>(service: &S, path: &str) {
    for _ in 0..500 {
        if cache_status(&call(service, get(path)).await).contains("detail=near") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the near cache never answered {path}");
}

#[tokio::test]
async fn a_uri_or_a_group_made_stale_answers_stale_in_every_variant_and_query() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.add_header("cache-groups", "\"catalogue\"");
    let layer = layer(&server)
        .await
        .namespace("soft-uri")
        .vary_headers([http::header::ACCEPT_LANGUAGE])
        .cache_groups(true)
        .fresh_for(Duration::from_secs(60))
        .stale_for(Duration::from_secs(60))
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    let in_language = |language: &'static str| {
        Request::get("http://api.test/items/9")
            .header("accept-language", language)
            .body(Full::default())
            .unwrap()
    };
    let query = || {
        Request::post("http://api.test/items/9")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(br#"{"q":1}"#)))
            .unwrap()
    };
    let stored = CacheOutcome::Miss {
        collapsed: false,
        stored: true,
    };
    for request in [in_language("de"), in_language("fr"), query()] {
        assert_eq!(outcome(&call(&service, request).await), stored);
    }

    // A webhook said item 9 changed: both languages and the query sent to it, stale, each refreshed once.
    let changed = Request::get("http://api.test/items/9").body(()).unwrap();
    assert_eq!(layer.handle().mark_uri_stale(&changed).await.unwrap(), 3);
    for request in [in_language("de"), in_language("fr"), query()] {
        assert_eq!(
            outcome(&call(&service, request).await),
            CacheOutcome::Stale { refreshing: true }
        );
    }
    wait_until("the three refreshes stored", || {
        layer.handle().stats().stores == 6
    })
    .await;
    assert_eq!(origin.calls(), 6);

    // The refreshed answers are in the origin's group: made stale by it, as its own write's answer would remove.
    assert_eq!(
        layer
            .handle()
            .mark_group_stale("api.test", "catalogue")
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        outcome(&call(&service, in_language("de")).await),
        CacheOutcome::Stale { refreshing: true }
    );
}
