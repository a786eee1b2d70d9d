//! Reliability and scale-out against real redis-server processes: Redis Cluster, Redis killed, paused and full,
//! the origin down, a fleet of clients sharing one cache, hostile input, and tenant isolation.

use crate::support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use proptest::prelude::*;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::calls::{body, cache_status, call, outcome, post, wait_until};
use support::{Origin, RedisCluster, RedisServer, bulk_payload, fred_client};
use tower::ServiceExt;
use tower_redis_cache::cache::{NotStored, RedisCacheLayerBuilder};
use tower_redis_cache::{CacheOutcome, MemoryStore, RedisCacheLayer, RedisStore, Store};

fn layer_over(store: impl Store) -> RedisCacheLayerBuilder {
    RedisCacheLayer::builder(store)
        .namespace("rel")
        .methods([Method::GET, Method::POST])
        // Generous, so a loaded CI machine never turns a slow store call into a miss; the fault tests that
        // are about the timeout set their own.
        .store_timeout(Duration::from_secs(2))
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_hits_refreshes_with_a_lease_and_purges_every_primary() {
    let cluster = RedisCluster::start();
    let origin = Origin::new();
    let store = RedisStore::connect(&cluster.url()).await.unwrap();
    let layer = layer_over(store)
        .fresh_for(Duration::from_millis(300))
        .stale_for(Duration::from_secs(60))
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    let handle = layer.handle();

    // Enough keys to land on every primary.
    for i in 0..30 {
        let first = call(&service, post(&format!(r#"{{"q":{i}}}"#))).await;
        assert!(
            matches!(outcome(&first), CacheOutcome::Miss { stored: true, .. }),
            "{}",
            cache_status(&first)
        );
        let second = call(&service, post(&format!(r#"{{"q":{i}}}"#))).await;
        assert_eq!(outcome(&second), CacheOutcome::Hit);
    }
    assert_eq!(origin.calls(), 30);
    let per_node: Vec<usize> = cluster
        .nodes()
        .iter()
        .map(|n| {
            let reply = String::from_utf8(n.command(&[b"DBSIZE"])).unwrap();
            reply.trim_start_matches(':').trim().parse().unwrap()
        })
        .collect();
    assert!(
        per_node.iter().all(|&n| n > 0),
        "entries on every primary: {per_node:?}"
    );

    // A stale entry: answered at once, one refresh, whose lease lives in the entry's slot (no CROSSSLOT).
    tokio::time::sleep(Duration::from_millis(350)).await;
    let stale = call(&service, post(r#"{"q":0}"#)).await;
    assert_eq!(outcome(&stale), CacheOutcome::Stale { refreshing: true });
    wait_until("the refresh stored", || handle.stats().stores == 31).await;
    assert_eq!(origin.calls(), 31);
    assert_eq!(handle.stats().refreshes_started, 1);
    assert_eq!(handle.stats().store_errors, 0, "{:?}", handle.stats());

    // Purge scans every primary.
    let removed = handle.purge().await.unwrap();
    assert!(removed >= 30, "{removed}");
    let left: usize = cluster
        .nodes()
        .iter()
        .map(|n| {
            let keys = String::from_utf8_lossy(&n.command(&[b"KEYS", b"rel:*"])).into_owned();
            usize::from(!keys.starts_with("*0"))
        })
        .sum();
    assert_eq!(left, 0, "no entry survives a purge");
    let after = call(&service, post(r#"{"q":1}"#)).await;
    assert!(matches!(outcome(&after), CacheOutcome::Miss { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_during_a_burst_of_1000_from_32_tasks() {
    let mut server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer_over(RedisStore::new(fred_client(&server.url()).await))
        .store_timeout(Duration::from_millis(50))
        .circuit_breaker(3, Duration::from_millis(100))
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    let handle = layer.handle();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let service = service.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = 0;
                for i in 0..(1000 / 32 + usize::from(t < 1000 % 32)) {
                    let request = post(&format!(r#"{{"q":{}}}"#, (t * 7 + i) % 40));
                    let started = Instant::now();
                    match service.clone().oneshot(request).await {
                        Ok(response) if response.status() == StatusCode::OK => {}
                        _ => failures += 1,
                    }
                    latencies.push(started.elapsed());
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::task::yield_now().await;
                }
                (latencies, failures)
            })
        })
        .collect();

    let count = || done.load(std::sync::atomic::Ordering::SeqCst);
    wait_until("a third of the burst", || count() >= 300).await;
    server.kill();
    let killed_at = count();
    wait_until("two thirds of the burst", || count() >= 650).await;
    server.restart();

    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (l, f) = task.await.unwrap();
        latencies.extend(l);
        failures += f;
    }
    assert_eq!(latencies.len(), 1000);
    assert_eq!(failures, 0, "no request failed because of Redis");
    latencies.sort();
    let stats = handle.stats();
    eprintln!(
        "1000 requests from 32 tasks, Redis killed after {killed_at} and restarted after ~650: \
         median {:?}, p90 {:?}, p99 {:?}, max {:?}; store errors {}, skipped by the breaker {}",
        percentile(&latencies, 50),
        percentile(&latencies, 90),
        percentile(&latencies, 99),
        latencies[999],
        stats.store_errors,
        stats.store_skipped
    );
    assert!(
        stats.store_skipped > 0,
        "the breaker kept requests off the dead Redis: {stats:?}"
    );

    // Caching resumes after the restart (the restarted Redis is empty: a miss stores, then a hit).
    let mut resumed = false;
    for _ in 0..400 {
        if outcome(&call(&service, post(r#"{"q":"after"}"#)).await) == CacheOutcome::Hit {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(resumed, "caching resumed: {:?}", handle.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_costs_one_store_timeout_then_requests_fall_through() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer_over(RedisStore::new(fred_client(&server.url()).await))
        .store_timeout(Duration::from_millis(100))
        .circuit_breaker(2, Duration::from_secs(30))
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    call(&service, post(r#"{"q":"warm"}"#)).await;
    assert_eq!(
        outcome(&call(&service, post(r#"{"q":"warm"}"#)).await),
        CacheOutcome::Hit
    );

    let pid = server.pid().expect("a running server").to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut statuses = Vec::new();
    for i in 0..6 {
        let response = call(&service, post(&format!(r#"{{"q":"slow-{i}"}}"#))).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(matches!(
            outcome(&response),
            CacheOutcome::Miss { stored: false, .. }
        ));
        statuses.push(cache_status(&response));
    }
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(statuses[0].contains("detail=store-"), "{statuses:?}");
    let stats = layer.handle().stats();
    assert_eq!(
        stats.store_errors, 2,
        "two timeouts opened the breaker: {stats:?}"
    );
    assert!(
        stats.store_skipped >= 4,
        "the rest skipped the stopped Redis: {stats:?}"
    );
    assert_eq!(origin.calls(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refusing_writes_never_fails_a_request() {
    let server = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    // A limit below what Redis already uses: every write is refused with OOM, reads still work.
    server.command(&[b"CONFIG", b"SET", b"maxmemory", b"1"]);
    let origin = Origin::new();
    let layer = layer_over(RedisStore::new(fred_client(&server.url()).await))
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    for n in 1..=3 {
        let response = call(&service, post(r#"{"q":"full"}"#)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(matches!(
            outcome(&response),
            CacheOutcome::Miss { stored: false, .. }
        ));
        assert!(
            body(response)
                .await
                .starts_with(format!(r#"{{"n":{n},"#).as_bytes())
        );
    }
    let stats = layer.handle().stats();
    assert_eq!(
        stats.store_errors, 3,
        "each refused write is counted: {stats:?}"
    );
    assert_eq!(stats.stores, 0);
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_that_refuses_writes_still_answers_its_hits() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer_over(RedisStore::new(fred_client(&server.url()).await))
        // A breaker that would open at once, and stay open, if refusals counted as failures.
        .circuit_breaker(2, Duration::from_secs(3600))
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    let hot = r#"{"q":"hot"}"#;
    call(&service, post(hot)).await;

    // Redis fills up: over `maxmemory` under `noeviction`, it refuses every write (`OOM command not allowed`)
    // and still answers reads.
    server.command(&[b"CONFIG", b"SET", b"maxmemory-policy", b"noeviction"]);
    server.command(&[b"CONFIG", b"SET", b"maxmemory", b"1"]);
    // A run of misses, each refused its write: a run of failures, were refusals counted as such.
    for i in 0..10 {
        let cold = call(&service, post(&format!(r#"{{"q":"cold-{i}"}}"#))).await;
        assert_eq!(cold.status(), StatusCode::OK);
        assert!(matches!(
            outcome(&cold),
            CacheOutcome::Miss { stored: false, .. }
        ));
    }
    let hit = call(&service, post(hot)).await;
    assert_eq!(outcome(&hit), CacheOutcome::Hit);
    let stats = layer.handle().stats();
    assert!(stats.store_errors >= 10, "{stats:?}");
    assert_eq!(stats.store_skipped, 0, "the breaker never opened");
    assert!(!layer.handle().store_unavailable());
    assert_eq!(origin.calls(), 11);

    // Room again: the next miss is stored.
    server.command(&[b"CONFIG", b"SET", b"maxmemory", b"0"]);
    let stored = call(&service, post(r#"{"q":"cold-0"}"#)).await;
    assert!(matches!(
        outcome(&stored),
        CacheOutcome::Miss { stored: true, .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_down_inside_and_beyond_the_stale_if_error_window() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer_over(RedisStore::new(fred_client(&server.url()).await))
        .fresh_for(Duration::ZERO)
        .stale_for(Duration::ZERO)
        .stale_if_error_for(Duration::from_secs(1))
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    let stored = body(call(&service, post(r#"{"q":"sie"}"#)).await).await;

    origin.fail_with(StatusCode::SERVICE_UNAVAILABLE);
    let response = call(&service, post(r#"{"q":"sie"}"#)).await;
    assert_eq!(outcome(&response), CacheOutcome::StaleIfError);
    assert!(cache_status(&response).contains("fwd-status=503"));
    assert_eq!(body(response).await, stored);

    // Past the window the entry is gone from Redis too: the origin's answer reaches the caller.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = call(&service, post(r#"{"q":"sie"}"#)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(matches!(
        outcome(&response),
        CacheOutcome::Miss { stored: false, .. }
    ));
    origin.fail_transport();
    let error = service
        .clone()
        .oneshot(post(r#"{"q":"sie"}"#))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("origin unreachable"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_four_clients_shares_one_refresh_and_at_most_one_miss_each() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let mut fleet = Vec::new();
    for _ in 0..4 {
        let layer = layer_over(RedisStore::new(fred_client(&server.url()).await))
            .fresh_for(Duration::from_millis(400))
            .stale_for(Duration::from_secs(60))
            .build()
            .unwrap();
        fleet.push((
            tower::Layer::layer(&layer, origin.service()),
            layer.handle(),
        ));
    }

    // The cold key: 4 clients x 25 concurrent requests, the origin held until all have arrived.
    origin.close();
    let mut tasks = Vec::new();
    for (service, _) in &fleet {
        for _ in 0..25 {
            let service = service.clone();
            tasks.push(tokio::spawn(async move {
                call(&service, post(r#"{"q":"cold"}"#)).await.status()
            }));
        }
    }
    wait_until("every client's leader reached the origin", || {
        origin.calls() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    origin.open();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    // Misses collapse per process, not across processes: at most one origin call per client.
    let cold_calls = origin.calls();
    assert!(
        cold_calls <= 4,
        "{cold_calls} origin calls for one cold key in a fleet of four"
    );
    eprintln!("cold key, 4 clients x 25 concurrent requests: {cold_calls} origin calls");
    // Stored once, by the process holding the key's lease: the others gave up waiting for it and asked the
    // origin themselves, without storing.
    let stores = || fleet.iter().map(|(_, h)| h.stats().stores).sum::<u64>();
    assert_eq!(stores(), 1);

    // The stale key: every client sees it stale at once; the lease lets one refresh run in the fleet.
    tokio::time::sleep(Duration::from_millis(450)).await;
    origin.close();
    let mut tasks = Vec::new();
    for (service, _) in &fleet {
        for _ in 0..10 {
            let service = service.clone();
            tasks.push(tokio::spawn(async move {
                outcome(&call(&service, post(r#"{"q":"cold"}"#)).await)
            }));
        }
    }
    for task in tasks {
        assert!(matches!(task.await.unwrap(), CacheOutcome::Stale { .. }));
    }
    origin.open();
    wait_until("the refresh stored", || stores() == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        origin.calls(),
        cold_calls + 1,
        "one refresh for the whole fleet"
    );
    let started: u64 = fleet.iter().map(|(_, h)| h.stats().refreshes_started).sum();
    let skipped: u64 = fleet.iter().map(|(_, h)| h.stats().refreshes_skipped).sum();
    assert_eq!(started, 1);
    // Every other client tried and found the lease taken (a client may try again while the entry stays stale).
    assert!(skipped >= 3, "{skipped}");
}

#[tokio::test]
async fn hostile_requests_are_handled_without_loss() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer_over(RedisStore::new(fred_client(&server.url()).await))
        .max_body_size(1024)
        .vary_headers([http::HeaderName::from_static("x-tenant-region")])
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());

    // Invalid UTF-8 and invalid JSON bodies: cached by their raw bytes.
    for raw in [
        &b"\xff\xfe\x00not utf8"[..],
        b"{\"unterminated\": [1, 2",
        b"[[[[[[[[[[[[[[",
    ] {
        let request = || {
            Request::post("https://api.example.com/q")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::copy_from_slice(raw)))
                .unwrap()
        };
        assert!(matches!(
            outcome(&call(&service, request()).await),
            CacheOutcome::Miss { stored: true, .. }
        ));
        let hit = call(&service, request()).await;
        assert_eq!(outcome(&hit), CacheOutcome::Hit);
        assert!(body(hit).await.ends_with(&[raw, b"}"].concat()));
    }

    // A body over the cap, announced or not: forwarded whole, not cached.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(4000));
    let announced = Request::post("https://api.example.com/q")
        .header("content-length", big.len())
        .body(Full::new(Bytes::from(big.clone())))
        .unwrap();
    let response = call(&service, announced).await;
    assert!(matches!(outcome(&response), CacheOutcome::Bypass(_)));
    assert!(
        body(response)
            .await
            .ends_with(format!("{big}}}").as_bytes())
    );

    // A thousand headers: keyed by the configured one only, and answered.
    let mut request = post(r#"{"q":"headers"}"#);
    for i in 0..1000 {
        request.headers_mut().append(
            http::HeaderName::from_bytes(format!("x-noise-{i}").as_bytes()).unwrap(),
            http::HeaderValue::from_static("v"),
        );
    }
    assert_eq!(call(&service, request).await.status(), StatusCode::OK);
    assert_eq!(
        outcome(&call(&service, post(r#"{"q":"headers"}"#)).await),
        CacheOutcome::Hit
    );

    // A Vary-style header: different values, different entries.
    let regional = |region: &'static str| {
        let mut request = post(r#"{"q":"vary"}"#);
        request
            .headers_mut()
            .insert("x-tenant-region", http::HeaderValue::from_static(region));
        request
    };
    call(&service, regional("eu")).await;
    assert!(matches!(
        outcome(&call(&service, regional("us")).await),
        CacheOutcome::Miss { .. }
    ));
    assert_eq!(
        outcome(&call(&service, regional("eu")).await),
        CacheOutcome::Hit
    );
}

#[tokio::test]
async fn responses_over_the_cap_pass_through_and_are_not_stored() {
    let origin = Origin::new();
    let layer = layer_over(MemoryStore::new(1 << 20))
        .max_body_size(64)
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    // A 50-byte request (under the cap) whose 65-byte echo is over it.
    let query = format!(r#"{{"q":"{}"}}"#, "y".repeat(42));
    for n in 1..=2 {
        let response = call(&service, post(&query)).await;
        assert!(matches!(
            outcome(&response),
            CacheOutcome::Miss { stored: false, .. }
        ));
        assert!(cache_status(&response).ends_with("; detail=response-too-large"));
        assert_eq!(
            layer.handle().stats().not_stored_for(NotStored::TooLarge),
            n
        );
        let bytes = body(response).await;
        assert!(bytes.len() > 64);
        assert!(bytes.starts_with(format!(r#"{{"n":{n},"#).as_bytes()));
    }
    assert_eq!(layer.handle().stats().stores, 0);
}

#[tokio::test]
async fn entries_from_another_program_or_format_version_are_misses_then_overwritten() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer_over(RedisStore::new(fred_client(&server.url()).await))
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    let key = layer.handle().key_for(
        &Request::post("https://api.example.com/api/v2/query")
            .header("content-type", "application/json")
            .body(Bytes::from_static(br#"{"q":"old"}"#))
            .unwrap(),
    );
    for foreign in [
        &br#"{"cached_at": 1700000000, "data": {"json": "from the python tutorial"}}"#[..],
        b"\xffTRC\x00an older envelope version",
        b"\xffTRC\x01the envelope before vary digests",
        b"\xffTRC\x09a newer one",
    ] {
        server.command(&[b"SET", key.as_str().as_bytes(), foreign]);
        let response = call(&service, post(r#"{"q":"old"}"#)).await;
        assert!(
            matches!(outcome(&response), CacheOutcome::Miss { stored: true, .. }),
            "{foreign:?}"
        );
        let stored = bulk_payload(&server.command(&[b"GET", key.as_str().as_bytes()])).unwrap();
        assert!(
            stored.starts_with(b"\xffTRC\x02"),
            "overwritten with the current format"
        );
        assert_eq!(
            outcome(&call(&service, post(r#"{"q":"old"}"#)).await),
            CacheOutcome::Hit
        );
    }
    assert_eq!(layer.handle().stats().decode_errors, 4);
}

/// The token reaches the origin, which reflects every request header back (as a debugging gateway does): the
/// auth layer drops the echo, so the stored entries hold no token, while the other reflected headers are
/// stored (the check does see what the origin echoes). Keys of requests with credentials of their own hold
/// only digests of them.
#[tokio::test]
async fn stored_entries_hold_no_authorization_or_token() {
    use tower_redis_cache::auth::{AuthLayer, Token, TokenFuture, TokenSource};
    use tower_redis_cache::cache::Credentials;
    const TOKEN: &str = "tok-6f1b2c-very-secret";
    const USER_TOKEN: &str = "user-9d3e4f-own-secret";
    struct Fixed;
    impl TokenSource for Fixed {
        fn fetch_token(&self) -> TokenFuture<'_> {
            Box::pin(async { Ok(Token::new(TOKEN, Some(Duration::from_secs(3600)))) })
        }
    }
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.echo_headers();
    let layer = layer_over(RedisStore::new(fred_client(&server.url()).await))
        .partition("https://api.example.com\nclient-1")
        .build()
        .unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(layer)
        .layer(AuthLayer::new(Fixed))
        .service(origin.service());
    for i in 0..5 {
        let mut request = post(&format!(r#"{{"q":{i}}}"#));
        request
            .headers_mut()
            .insert("x-request-id", http::HeaderValue::from_static("r-1"));
        let response = call(&service, request).await;
        assert_eq!(response.headers()["x-echo-x-request-id"], "r-1");
        assert!(!response.headers().contains_key("x-echo-authorization"));
    }
    assert_eq!(origin.calls(), 5);

    // A caller's own credentials, part of the key.
    let keyed = layer_over(RedisStore::new(fred_client(&server.url()).await))
        .namespace("keyed")
        .credentials(Credentials::InKey)
        .build()
        .unwrap();
    let service = tower::Layer::layer(&keyed, origin.service());
    let mut request = post(r#"{"q":"own"}"#);
    let bearer = format!("Bearer {USER_TOKEN}");
    request
        .headers_mut()
        .insert("authorization", bearer.parse().unwrap());
    request
        .headers_mut()
        .insert("x-request-id", http::HeaderValue::from_static("r-1"));
    let response = call(&service, request).await;
    assert!(matches!(
        outcome(&response),
        CacheOutcome::Miss { stored: true, .. }
    ));
    // Reflected to this caller, whose own credentials they are (no auth layer below to drop them); its key is a
    // digest that holds neither token.
    assert_eq!(response.headers()["x-echo-authorization"], bearer.as_str());

    let keys = String::from_utf8_lossy(&server.command(&[b"KEYS", b"*"])).into_owned();
    assert!(
        !keys.contains(TOKEN) && !keys.contains(USER_TOKEN),
        "{keys}"
    );
    let mut values = 0;
    // The URI's tag set (through which a write finds the queries of its URI) names entry keys only.
    for set in keys.lines().filter(|l| l.starts_with("rel:v1:tag:")) {
        let members = server.command(&[b"ZRANGE", set.as_bytes(), b"0", b"-1"]);
        let members = String::from_utf8_lossy(&members).to_lowercase();
        assert!(members.contains("rel:v1:{"), "{members}");
        assert!(
            !members.contains("bearer") && !members.contains(TOKEN),
            "{members}"
        );
    }
    for key in keys
        .lines()
        .filter(|l| l.starts_with("rel:") && !l.starts_with("rel:v1:tag:"))
    {
        let value = bulk_payload(&server.command(&[b"GET", key.as_bytes()])).unwrap();
        let text = String::from_utf8_lossy(&value).to_lowercase();
        assert!(text.contains("x-echo-x-request-id"), "{text}");
        assert!(
            !text.contains("authorization") && !text.contains("bearer"),
            "{text}"
        );
        assert!(!text.contains(TOKEN), "the token is in a stored entry");
        values += 1;
    }
    assert_eq!(values, 5);
}

#[tokio::test]
async fn redis_auth_from_the_url_is_used_and_a_wrong_password_refused() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret-pw"]);
    let origin = Origin::new();
    // The harness URL carries the password: redis://:s3cret-pw@127.0.0.1:<port>.
    assert!(server.url().contains(":s3cret-pw@"));
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let layer = layer_over(store).build().unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    call(&service, post(r#"{"q":"auth"}"#)).await;
    assert_eq!(
        outcome(&call(&service, post(r#"{"q":"auth"}"#)).await),
        CacheOutcome::Hit
    );

    // A wrong password is an error at connect time, not a silent cache that never stores.
    let wrong = format!("redis://:nope@127.0.0.1:{}", server.port());
    assert!(RedisStore::connect(&wrong).await.is_err());
    // (`rediss://` URLs: tests/tls.rs.)
}

/// The store's connections carry TCP keepalive, probed after 30 s of silence, so that a NAT gateway, load balancer
/// or firewall that forgets quiet connections keeps them: the kernel shows each one's keepalive timer armed, due
/// within 30 s.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_stores_connections_are_probed_when_quiet() {
    let server = RedisServer::start();
    let _store = RedisStore::connect(&server.url()).await.unwrap();
    let timers = support::tcp::timers_of_connections_to(server.port());
    assert!(!timers.is_empty());
    for timer in timers {
        assert_eq!(timer.kind, 2, "a connection without keepalive: {timer:?}");
        assert!(timer.due <= 30 * 100, "{timer:?}");
    }
}

/// On Unix, a Redis on the same machine is reached through its socket by a `redis+unix://` URL, password included:
/// the entries are that server's, and the connection is a socket's; redis-rs's `unix://?db=` spelling too.
#[cfg(unix)]
#[tokio::test]
async fn a_redis_on_a_unix_socket_is_reached_by_its_url() {
    let server = RedisServer::start_with_socket(&["--requirepass", "s3cret-pw"]);
    let origin = Origin::new();
    let url = server.socket_url();
    assert!(
        url.starts_with("redis+unix://:s3cret-pw@localhost/"),
        "{url}"
    );
    let layer = layer_over(RedisStore::connect(&url).await.unwrap())
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    let query = r#"{"q":"socket"}"#;
    call(&service, post(query)).await;
    let hit = call(&service, post(query)).await;
    assert_eq!(outcome(&hit), CacheOutcome::Hit);
    assert_eq!(&body(hit).await[..], br#"{"n":1,"echo":{"q":"socket"}}"#);
    assert_eq!(origin.calls(), 1);

    // Asked over TCP, the server holds the entry, and its one other client came through the socket.
    let keys = String::from_utf8_lossy(&server.command(&[b"KEYS", b"*"])).into_owned();
    assert!(keys.contains("rel:"), "{keys}");
    let clients = String::from_utf8_lossy(&server.command(&[b"CLIENT", b"LIST"])).into_owned();
    let socket = server.socket_path().display().to_string();
    assert!(
        clients
            .lines()
            .any(|client| client.contains(&format!("laddr={socket}"))),
        "{clients}"
    );

    // redis-rs's spelling, the database and the password in its query: the entry is that database's.
    let url = format!("unix://{socket}?db=2&pass=s3cret-pw");
    let layer = layer_over(RedisStore::connect(&url).await.unwrap())
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    let miss = call(&service, post(query)).await;
    assert!(matches!(outcome(&miss), CacheOutcome::Miss { .. }));
    assert_eq!(origin.calls(), 2);
    let keyspace = String::from_utf8_lossy(&server.command(&[b"INFO", b"keyspace"])).into_owned();
    assert!(keyspace.contains("db2:keys="), "{keyspace}");

    // A wrong password, or no socket at that path, is an error at connect time.
    let wrong = server.socket_url().replace(":s3cret-pw@", ":nope@");
    assert!(RedisStore::connect(&wrong).await.is_err());
    let nowhere = format!("redis+unix://{socket}.missing");
    assert!(RedisStore::connect(&nowhere).await.is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(64) })]

    /// Arbitrary bodies and header values through the whole layer: answered, never a panic.
    #[test]
    fn arbitrary_requests_never_panic_the_layer(
        body in prop::collection::vec(any::<u8>(), 0..300),
        header in prop::collection::vec(32u8..127, 0..40),
        json in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let origin = Origin::new();
            let layer = layer_over(MemoryStore::new(1 << 20)).max_body_size(256).build().unwrap();
            let service = tower::Layer::layer(&layer, origin.service());
            let mut request = Request::post("https://api.example.com/q").body(Full::new(Bytes::from(body))).unwrap();
            if json {
                request.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
            }
            if let Ok(value) = http::HeaderValue::from_bytes(&header) {
                request.headers_mut().insert("cache-control", value);
            }
            let response = service.oneshot(request).await.unwrap();
            prop_assert_eq!(response.status(), StatusCode::OK);
            Ok(())
        })?;
    }
}

/// The integer field `name` of an `INFO` reply.
fn info_number(info: &[u8], name: &str) -> u64 {
    String::from_utf8_lossy(info)
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in INFO"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_eviction_a_tag_removal_still_finds_every_entry_left() {
    // A full Redis evicting the least recently used keys among those with a TTL, as managed Redis services
    // run by default. An entry read often stays; its tag's set, written once at the fill, goes cold. Evicting
    // all it must within the command that passes the limit (by default Redis stops after about 500 µs and
    // evicts the rest from a timer, which a loaded machine left short of the 200 keys asserted below).
    let server = RedisServer::start_with(&[
        "--maxmemory-policy",
        "volatile-lru",
        "--maxmemory-samples",
        "10",
        "--maxmemory-eviction-tenacity",
        "100",
    ]);
    let origin = Origin::new();
    let layer = layer_over(RedisStore::new(fred_client(&server.url()).await))
        .tags(|_| vec!["order-17".to_owned()])
        .fresh_for(Duration::from_secs(3600))
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    let hot = r#"{"q":"order-17"}"#;
    assert!(matches!(
        outcome(&call(&service, post(hot)).await),
        CacheOutcome::Miss { stored: true, .. }
    ));
    // Redis keeps idle times in whole seconds. The set ages while the entry is read; other keys with a TTL come
    // after it and age too; then the entry is read once more.
    let read_for = |reads: u32| {
        let service = service.clone();
        async move {
            for _ in 0..reads {
                tokio::time::sleep(Duration::from_millis(500)).await;
                assert_eq!(outcome(&call(&service, post(hot)).await), CacheOutcome::Hit);
            }
        }
    };
    read_for(4).await;
    let filler = vec![b'x'; 4096];
    for i in 0..500 {
        let key = format!("filler:{i}");
        server.command(&[b"SET", key.as_bytes(), &filler, b"PX", b"3600000"]);
    }
    read_for(3).await;
    // Redis is full: it evicts the keys idle longest, about half of the others.
    let used = info_number(&server.command(&[b"INFO", b"memory"]), "used_memory");
    let limit = (used - (1 << 20)).to_string();
    server.command(&[b"CONFIG", b"SET", b"maxmemory", limit.as_bytes()]);
    server.command(&[b"SET", b"filler:last", b"x", b"PX", b"3600000"]);
    assert!(info_number(&server.command(&[b"INFO", b"stats"]), "evicted_keys") >= 200);
    assert_eq!(outcome(&call(&service, post(hot)).await), CacheOutcome::Hit);
    // Removing the tag finds the entry, which a caller then no longer gets.
    assert_eq!(layer.handle().invalidate_tag("order-17").await.unwrap(), 1);
    assert!(matches!(
        outcome(&call(&service, post(hot)).await),
        CacheOutcome::Miss { .. }
    ));
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn under_eviction_a_tag_removal_keeps_its_mark_while_fills_may_run() {
    // A full Redis evicting keys with a TTL at random. A removal's mark fences the fills that read the tag clock
    // before it (their answers name the tag only once they arrive); with a TTL it could be evicted with the rest,
    // and such a fill would then store an answer from before the removal. (Tenacity 100: all evicted within the
    // command that passes the limit, as in the test above.)
    let server = RedisServer::start_with(&[
        "--maxmemory-policy",
        "volatile-random",
        "--maxmemory-eviction-tenacity",
        "100",
    ]);
    let store = RedisStore::new(fred_client(&server.url()).await);
    let (clock, set) = ("evict:v1:tag-clock", "evict:v1:tag:{orders}");
    let before = store.tag_clock(clock, false).await.unwrap();
    let at = store.tag_clock(clock, true).await.unwrap();
    store.mark_invalidated(set, at).await.unwrap();
    let used = || info_number(&server.command(&[b"INFO", b"memory"]), "used_memory");
    let before_filling = used();
    let filler = vec![b'x'; 4096];
    for i in 0..500 {
        let key = format!("filler:{i}");
        server.command(&[b"SET", key.as_bytes(), &filler, b"PX", b"3600000"]);
    }
    // Redis is full: it evicts nearly every key with a TTL (all but a fiftieth of the filler's memory).
    let full = used();
    let limit = (before_filling + (full - before_filling) / 50).to_string();
    server.command(&[b"CONFIG", b"SET", b"maxmemory", limit.as_bytes()]);
    server.command(&[b"SET", b"filler:last", b"x", b"PX", b"3600000"]);
    let evicted = info_number(&server.command(&[b"INFO", b"stats"]), "evicted_keys");
    assert!(evicted >= 450, "{evicted} evicted");
    let mark = format!("{set}:invalidated");
    assert_eq!(server.command(&[b"EXISTS", mark.as_bytes()]), b":1\r\n");
    // So the fill that read the clock before the removal is still refused.
    let life = Duration::from_secs(60);
    assert!(!store.tag(set, "evict:v1:{a}", life, before).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_may_evict_a_tag_set_is_told_of_once() {
    let warnings = support::logs::warnings();
    let told = || {
        warnings
            .all()
            .into_iter()
            .filter(|warning| warning.contains("evicts keys without a TTL"))
            .collect::<Vec<_>>()
    };
    for policy in ["volatile-lru", "allkeys-lru", "allkeys-lfu"] {
        let server =
            RedisServer::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", policy]);
        let origin = Origin::new();
        let layer = layer_over(RedisStore::new(fred_client(&server.url()).await))
            .tags(|_| vec!["orders".to_owned()])
            .build()
            .unwrap();
        let service = tower::Layer::layer(&layer, origin.service());
        let before = told().len();
        for q in 0..3 {
            let response = call(&service, post(&format!(r#"{{"q":{q}}}"#))).await;
            assert!(matches!(
                outcome(&response),
                CacheOutcome::Miss { stored: true, .. }
            ));
        }
        if policy.starts_with("allkeys-") {
            wait_until("the warning", || told().len() > before).await;
        }
    }
    // None under `volatile-lru`; one for each store under `allkeys-*`, naming its policy.
    let told = told();
    assert_eq!(told.len(), 2, "{told:?}");
    assert!(
        told[0].contains("allkeys-lru") && told[1].contains("allkeys-lfu"),
        "{told:?}"
    );
}

/// A loopback port where something other than Redis listens: it answers every connection with an HTTP
/// server's refusal, and keeps it open until the client closes it. Returns the port and how many connections
/// it accepted.
async fn not_redis() -> (u16, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let refusal = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
                let _ = connection.write_all(refusal).await;
                let mut buf = [0u8; 1024];
                while connection.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            });
        }
    });
    (port, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_naming_something_other_than_redis_is_told_with_what_to_check() {
    let warnings = support::logs::warnings();
    let (port, _) = not_redis().await;
    let url = format!("redis://127.0.0.1:{port}");
    // A store that connects first says where it went and what to check.
    let error = RedisStore::connect(&url).await.expect_err("refused");
    let message = error.to_string();
    assert!(
        message.contains(&format!("cannot connect to 127.0.0.1:{port}: "))
            && message.contains("is this a Redis port? A TLS port needs rediss://"),
        "{message}"
    );

    // One that connects in the background answers every request from the origin, and tells the operator why
    // once, however often it tries again (every 100 ms).
    let layer = layer_over(RedisStore::connect_lazy(&url).unwrap())
        .build()
        .unwrap();
    let origin = Origin::new();
    let service = tower::Layer::layer(&layer, origin.service());
    let server = format!("server=\"127.0.0.1:{port}\"");
    let told = || {
        warnings
            .all()
            .into_iter()
            .filter(|warning| warning.contains("cannot reach Redis") && warning.contains(&server))
            .collect::<Vec<_>>()
    };
    for q in 0..5 {
        let response = call(&service, post(&format!(r#"{{"q":{q}}}"#))).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    wait_until("the cause was told", || !told().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    for q in 0..5 {
        let response = call(&service, post(&format!(r#"{{"q":{q}}}"#))).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(origin.calls(), 10);
    let told = told();
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(
        told[0].contains("does not speak Redis's protocol (RESP): is this a Redis port?"),
        "{told:?}"
    );
}

/// A URL naming a replica connects (during a failover an address may name one for a moment: the first refused
/// write has the store connect again, and follow it), and says at `warn` that no miss will be stored through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_naming_a_replica_connects_and_says_no_miss_will_be_stored() {
    let warnings = support::logs::warnings();
    let (_primary, replica) = RedisServer::start_pair().await;
    let store = RedisStore::connect(&replica.url())
        .await
        .expect("a replica is not refused");
    let server = format!("server=\"127.0.0.1:{}\"", replica.port());
    let told = warnings
        .all()
        .into_iter()
        .filter(|warning| {
            warning.contains("is a replica (role:slave)") && warning.contains(&server)
        })
        .count();
    assert_eq!(told, 1);
    let layer = layer_over(store).build().unwrap();
    let origin = Origin::new();
    let service = tower::Layer::layer(&layer, origin.service());
    let response = call(&service, post(r#"{"q":"replica"}"#)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        matches!(outcome(&response), CacheOutcome::Miss { stored: false, .. }),
        "{}",
        cache_status(&response)
    );
}

/// A store connecting in the background while its Redis is not up yet (a process started before its Redis, or
/// during a Redis restart) keeps trying, and caches once Redis is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_store_made_before_its_redis_is_up_caches_once_it_is() {
    let mut server = RedisServer::start();
    server.kill();
    let layer = layer_over(RedisStore::connect_lazy(&server.url()).unwrap())
        .build()
        .unwrap();
    let origin = Origin::new();
    let service = tower::Layer::layer(&layer, origin.service());
    let query = || post(r#"{"q":"early"}"#);
    for _ in 0..3 {
        let response = call(&service, query()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            matches!(outcome(&response), CacheOutcome::Miss { stored: false, .. }),
            "{}",
            cache_status(&response)
        );
    }
    // Longer than fred's first attempts: a client that gave up after its first would never connect.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.restart();
    until_hit(&service, query).await;
    assert!(layer.handle().stats().stores >= 1);
}

/// The clients a store made itself quit with it: neither a connection nor a reconnect loop outlives the last
/// clone of the store (the layer's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_store_leaves_no_connection_nor_retries_behind() {
    let server = RedisServer::start();
    // The server's clients but the harness's own (each runs one command and closes).
    let others = |server: &RedisServer| {
        String::from_utf8_lossy(&server.command(&[b"CLIENT", b"LIST"]))
            .lines()
            .filter(|client| client.starts_with("id=") && !client.contains(" cmd=client|list "))
            .count()
    };
    let layer = layer_over(RedisStore::connect(&server.url()).await.unwrap())
        .build()
        .unwrap();
    let origin = Origin::new();
    let service = tower::Layer::layer(&layer, origin.service());
    call(&service, post(r#"{"q":"kept"}"#)).await;
    assert_eq!(
        outcome(&call(&service, post(r#"{"q":"kept"}"#)).await),
        CacheOutcome::Hit
    );
    assert_eq!(others(&server), 2, "the store's reader and writer");
    drop((service, layer));
    wait_until("the store's connections closed", || others(&server) == 0).await;

    // Out of reach, a store tries to connect every 100 ms, until it is dropped.
    let (port, accepted) = not_redis().await;
    let store = RedisStore::connect_lazy(&format!("redis://127.0.0.1:{port}")).unwrap();
    wait_until("it tried a few times", || {
        accepted.load(Ordering::SeqCst) >= 4
    })
    .await;
    drop(store);
    // The clients are stopped on a task of their own, given a second to quit: the attempts stop (a bounded poll
    // for half a second without one, where they come every 100 ms), and none follows.
    let mut last = (accepted.load(Ordering::SeqCst), tokio::time::Instant::now());
    wait_until("the attempts stopped", || {
        let now = accepted.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, tokio::time::Instant::now());
        }
        last.1.elapsed() >= Duration::from_millis(500)
    })
    .await;
    let after = accepted.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        after,
        "no attempt once dropped"
    );
}

/// A loopback port where something accepts connections and never answers, as a stopped Redis or a black hole
/// behind a proxy: a client's attempt waits out its connect timeout there. Returns the port, how many connections
/// it accepted and how many of them are open (until the client closes one).
async fn silent() -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (counted, opened) = (accepted.clone(), open.clone());
    tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            opened.fetch_add(1, Ordering::SeqCst);
            let opened = opened.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while connection.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                opened.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (port, accepted, open)
}

/// A layer and its store dropped while their clients are connecting stop them, though each is in the middle of an
/// attempt (their Redis accepts and never answers, so every attempt waits out the 2 s connect timeout): fred 10.1
/// reads no `QUIT` until it is connected, and hears the close its `quit` announces only between attempts. Nothing
/// they started outlives them: no connection (the store's two, the near cache's tracking one), no further attempt,
/// no task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_dropped_while_connecting_leaves_nothing_behind() {
    let (port, accepted, open) = silent().await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks = metrics.num_alive_tasks();
    let store = RedisStore::connect_lazy(&format!("redis://127.0.0.1:{port}")).unwrap();
    let layer = layer_over(store).near_cache(1 << 20).build().unwrap();
    let origin = Origin::new();
    let service = tower::Layer::layer(&layer, origin.service());
    // The first request starts the near cache's tracking; the origin answers it.
    let response = call(&service, post(r#"{"q":"early"}"#)).await;
    assert_eq!(response.status(), StatusCode::OK);
    wait_until("the three clients are connecting", || {
        open.load(Ordering::SeqCst) == 3
    })
    .await;
    drop((service, layer, response));
    wait_until("every task the cache started ended", || {
        metrics.num_alive_tasks() == tasks
    })
    .await;
    assert_eq!(open.load(Ordering::SeqCst), 0, "their connections closed");
    let after = accepted.load(Ordering::SeqCst);
    // Longer than an attempt and the pause before the next (2 s, then 100 ms).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        after,
        "no attempt once dropped"
    );
}

/// Sends `request()` until the cache answers it from Redis (a bounded poll, for caching to resume); returns that
/// answer's body.
async fn until_hit<S: support::calls::Cached>(
    service: &S,
    request: impl Fn() -> Request<Full<Bytes>>,
) -> Bytes {
    for _ in 0..400 {
        let response = call(service, request()).await;
        assert_eq!(response.status(), StatusCode::OK);
        if outcome(&response) == CacheOutcome::Hit {
            return body(response).await;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("caching never resumed for {}", request().uri());
}

/// Whether a raw command on `server` is refused with `code` (`LOADING`, `BUSY`) at this moment.
fn refuses_with(server: &RedisServer, code: &[u8]) -> bool {
    server
        .try_command(&[b"GET", b"probe"])
        .is_ok_and(|reply| reply.get(1..=code.len()) == Some(code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_loading_its_snapshot_after_a_restart_fails_no_request_then_hits_what_it_kept() {
    let warnings = support::logs::warnings();
    let mut server = RedisServer::start_with(&["--enable-debug-command", "local"]);
    let origin = Origin::new();
    let layer = layer_over(RedisStore::connect(&server.url()).await.unwrap())
        .store_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let near = layer_over(RedisStore::connect(&server.url()).await.unwrap())
        .store_timeout(Duration::from_millis(200))
        .near_cache(1 << 20)
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    let near_service = tower::Layer::layer(&near, origin.service());
    let first = call(&service, kept()).await;
    assert!(matches!(
        outcome(&first),
        CacheOutcome::Miss { stored: true, .. }
    ));
    let stored = body(first).await;
    for _ in 0..100 {
        if cache_status(&call(&near_service, kept()).await).ends_with("; detail=near") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(near.handle().near_cache_live());

    // A snapshot holding the entry and enough other keys that reading it back takes seconds (each key loaded
    // 20 µs late), then the restart that reads it: until it is read, Redis answers `LOADING` to nearly everything.
    server.command(&[b"DEBUG", b"POPULATE", b"30000", b"filler"]);
    assert_eq!(server.command(&[b"SAVE"]), b"+OK\r\n");
    server.restart_with(&[
        "--key-load-delay",
        "20",
        "--loading-process-events-interval-bytes",
        "1024",
    ]);
    assert!(refuses_with(&server, b"LOADING"), "the restart is loading");
    let calls_before = origin.calls();
    let mut during = 0;
    while refuses_with(&server, b"LOADING") {
        for (i, service) in [&service, &near_service].into_iter().enumerate() {
            for request in [kept(), post(&format!(r#"{{"q":"{during}-{i}"}}"#))] {
                let response = call(service, request).await;
                assert_eq!(response.status(), StatusCode::OK);
                assert!(
                    matches!(outcome(&response), CacheOutcome::Miss { stored: false, .. }),
                    "nothing is answered or stored while Redis loads: {}",
                    cache_status(&response)
                );
            }
        }
        during += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(during > 0, "requests were sent while Redis loaded");
    assert_eq!(
        origin.calls(),
        calls_before + 4 * during,
        "each answered by the origin"
    );

    // Loaded: the entry the snapshot kept is answered again (its first answer, not one of the origin's since),
    // and the near cache arms again, without telling the operator of a refusal that was Redis loading.
    assert_eq!(until_hit(&service, kept).await, stored);
    for _ in 0..400 {
        let response = call(&near_service, kept()).await;
        if cache_status(&response).ends_with("; detail=near") {
            assert_eq!(body(response).await, stored);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        near.handle().near_cache_live(),
        "{:?}",
        near.handle().stats()
    );
    let refused = support::logs::containing(&warnings, "refused client tracking");
    assert!(refused.is_empty(), "{refused:?}");
}

/// The request whose answer the fault tests below keep.
fn kept() -> Request<Full<Bytes>> {
    post(r#"{"q":"kept"}"#)
}

/// A layer over `server` (store timeout 50 ms) and the origin behind it, with the answer to [`kept`] stored and
/// hit: that answer.
async fn with_kept_entry(server: &RedisServer) -> (RedisCacheLayer, Arc<Origin>, Bytes) {
    let origin = Origin::new();
    let layer = layer_over(RedisStore::connect(&server.url()).await.unwrap())
        .store_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    let stored = body(call(&service, kept()).await).await;
    assert_eq!(until_hit(&service, kept).await, stored);
    (layer, origin, stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_running_past_the_busy_threshold_fails_no_request_and_hits_resume_once_killed() {
    let server = RedisServer::start_with(&["--busy-reply-threshold", "100"]);
    let (layer, origin, stored) = with_kept_entry(&server).await;
    let service = tower::Layer::layer(&layer, origin.service());

    // Another program's script that never ends: Redis holds every command for the threshold, then answers
    // `BUSY` to all but `SCRIPT KILL` and `SHUTDOWN`.
    let port = server.port();
    let script = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(b"*3\r\n$4\r\nEVAL\r\n$17\r\nwhile true do end\r\n$1\r\n0\r\n")
            .unwrap();
        let mut reply = [0u8; 256];
        let n = stream.read(&mut reply).unwrap();
        String::from_utf8_lossy(&reply[..n]).into_owned()
    });
    wait_until("Redis answers BUSY", || refuses_with(&server, b"BUSY")).await;
    let calls_before = origin.calls();
    for i in 0..20 {
        for request in [kept(), post(&format!(r#"{{"q":{i}}}"#))] {
            let response = call(&service, request).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert!(
                matches!(outcome(&response), CacheOutcome::Miss { stored: false, .. }),
                "{}",
                cache_status(&response)
            );
        }
    }
    assert_eq!(
        origin.calls(),
        calls_before + 40,
        "each answered by the origin"
    );
    // Refused at once, each call: no timeout, and the breaker stays closed.
    let stats = layer.handle().stats();
    assert!(stats.store_errors >= 40, "{stats:?}");
    assert_eq!(stats.store_skipped, 0, "{stats:?}");

    assert_eq!(server.command(&[b"SCRIPT", b"KILL"]), b"+OK\r\n");
    assert!(script.join().unwrap().starts_with("-ERR Script killed"));
    let response = call(&service, kept()).await;
    assert_eq!(outcome(&response), CacheOutcome::Hit);
    assert_eq!(body(response).await, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_paused_leave_hits_going_and_caching_resumes_when_they_are_let_go() {
    let server = RedisServer::start();
    let (layer, origin, stored) = with_kept_entry(&server).await;
    let service = tower::Layer::layer(&layer, origin.service());

    // Writes paused, as `FAILOVER` and `CLUSTER FAILOVER` pause them on the primary they leave (for long enough
    // here that the test lifts the pause itself).
    assert_eq!(
        server.command(&[b"CLIENT", b"PAUSE", b"10000", b"WRITE"]),
        b"+OK\r\n"
    );
    // A miss's lease waits in Redis until the pause ends: the first misses each cost a store timeout, then the
    // writes' breaker skips them; all are answered by the origin, unstored. Hits go on throughout: their `GET`s
    // have a connection of their own, which no held write stands in front of, and a breaker of their own.
    let calls_before = origin.calls();
    for i in 0..10 {
        let response = call(&service, post(&format!(r#"{{"q":{i}}}"#))).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            matches!(outcome(&response), CacheOutcome::Miss { stored: false, .. }),
            "{}",
            cache_status(&response)
        );
        let response = call(&service, kept()).await;
        assert_eq!(
            outcome(&response),
            CacheOutcome::Hit,
            "{}",
            cache_status(&response)
        );
        assert_eq!(body(response).await, stored);
    }
    assert_eq!(origin.calls(), calls_before + 10);
    let stats = layer.handle().stats();
    assert!(
        stats.store_skipped > 0,
        "the writes' breaker opened: {stats:?}"
    );

    // Once the pause is lifted, the misses of the pause are stored and hit.
    assert_eq!(server.command(&[b"CLIENT", b"UNPAUSE"]), b"+OK\r\n");
    for i in 0..10 {
        until_hit(&service, || post(&format!(r#"{{"q":{i}}}"#))).await;
    }
}

/// A fred client without a reconnect policy (fred's default, as its README builds one) is said at `warn`, and a
/// stalled Redis no longer ends it: a store whose calls keep timing out is asked to reconnect, and fred's
/// reconnect ends the connection task of a client without a policy, for good (its commands then wait for a task
/// that never comes, and it still says it is connected). Such a client is now left as it is, and caching resumes
/// with Redis (it never did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_does_not_end_a_client_without_a_reconnect_policy() {
    use fred::interfaces::ClientLike;
    let warnings = support::logs::warnings();
    let server = RedisServer::start();
    let config = fred::types::config::Config::from_url(&server.url()).unwrap();
    let client = fred::clients::Client::new(config, None, None, None);
    client.init().await.unwrap();
    let store = RedisStore::new(client);
    let told = warnings
        .all()
        .into_iter()
        .filter(|warning| warning.contains("has no reconnect policy"))
        .count();
    assert!(told >= 1);
    let layer = layer_over(store)
        .store_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let origin = Origin::new();
    let service = tower::Layer::layer(&layer, origin.service());
    let query = || post(r#"{"q":"stalled"}"#);
    until_hit(&service, query).await;
    server.pause();
    // Timeouts: the breaker asks the store to reconnect.
    for _ in 0..4 {
        let response = call(&service, query()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_ne!(outcome(&response), CacheOutcome::Hit);
    }
    server.resume();
    until_hit(&service, query).await;
}
