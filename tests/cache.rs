//! RedisCacheLayer against real redis-server processes.

use crate::support;

use http::{Method, Request, StatusCode};
use http_body_util::Full;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::calls::{body, cache_status, call, outcome, post, post_bytes, wait_until};
use support::proxy::{Mode, Proxy};
use support::store::CountingStore;
use support::{Origin, RedisServer, bulk_payload, fred_client};
use tower::ServiceExt;
use tower_redis_cache::cache::NotStored;
use tower_redis_cache::cache::store::StoreFuture;
use tower_redis_cache::{
    CacheHandle, CacheOutcome, ENTRY_OVERHEAD, MemoryStore, RedisCacheLayer, RedisStore,
};

async fn redis_store(server: &RedisServer) -> RedisStore {
    RedisStore::new(fred_client(&server.url()).await)
}

fn layer_over(
    store: impl tower_redis_cache::Store,
) -> tower_redis_cache::cache::RedisCacheLayerBuilder {
    RedisCacheLayer::builder(store)
        .namespace("test")
        .methods([Method::GET, Method::POST])
        // Generous, so a loaded CI machine never turns a slow store call into a miss; the fault tests that
        // are about the timeout set their own.
        .store_timeout(Duration::from_secs(2))
}

/// `builder` with entries that are stale at once and answer for 60 s of origin failures (stale-if-error).
fn stale_if_error_only(
    builder: tower_redis_cache::cache::RedisCacheLayerBuilder,
) -> tower_redis_cache::cache::RedisCacheLayerBuilder {
    builder
        .fresh_for(Duration::ZERO)
        .stale_for(Duration::ZERO)
        .stale_if_error_for(Duration::from_secs(60))
}

/// Two layers over `server` with connections of their own, as two processes have, set up alike by `configure`.
async fn two_processes(
    server: &RedisServer,
    configure: impl Fn(
        tower_redis_cache::cache::RedisCacheLayerBuilder,
    ) -> tower_redis_cache::cache::RedisCacheLayerBuilder,
) -> (RedisCacheLayer, RedisCacheLayer) {
    let a = configure(layer_over(redis_store(server).await));
    let b = configure(layer_over(redis_store(server).await));
    (a.build().unwrap(), b.build().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_cold_requests_make_one_inner_call() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer_over(redis_store(&server).await).build().unwrap();
    let service = layer.layer_service(origin.service());

    origin.close();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let response = call(&service, post(r#"{"q":"cold"}"#)).await;
            (outcome(&response), body(response).await)
        }));
    }
    // Callers that joined the flight share its answer; those that arrive after it are hits: either way no
    // second inner call.
    wait_until("the leader reached the origin", || origin.calls() == 1).await;
    origin.open();
    let mut bodies = Vec::new();
    let mut leaders = 0;
    for task in tasks {
        let (outcome, body) = task.await.unwrap();
        if outcome
            == (CacheOutcome::Miss {
                collapsed: false,
                stored: true,
            })
        {
            leaders += 1;
        }
        bodies.push(body);
    }
    assert_eq!(
        origin.calls(),
        1,
        "one inner call for 100 identical cold requests"
    );
    assert_eq!(leaders, 1);
    assert!(
        bodies.iter().all(|b| b == &bodies[0]),
        "all 100 got the same body"
    );
    assert_eq!(&bodies[0][..], br#"{"n":1,"echo":{"q":"cold"}}"#);
    let stats = layer.handle().stats();
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.coalesced + stats.hits, 99);
    assert!(!layer.handle().near_cache_live(), "no near cache asked for");
}

#[tokio::test]
async fn json_key_order_hits_and_a_different_value_misses() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let service = layer_over(redis_store(&server).await)
        .build()
        .unwrap()
        .layer_service(origin.service());

    let first = call(&service, post(r#"{"a":1,"b":{"y":2,"x":[1,2]}}"#)).await;
    assert!(matches!(
        outcome(&first),
        CacheOutcome::Miss { stored: true, .. }
    ));
    let reordered = call(&service, post(r#"{ "b": {"x": [1, 2], "y": 2}, "a": 1 }"#)).await;
    assert_eq!(outcome(&reordered), CacheOutcome::Hit);
    assert!(cache_status(&reordered).starts_with("tower-redis-cache; hit; ttl="));
    assert_eq!(reordered.headers()["age"], "0");
    assert_eq!(
        &body(reordered).await[..],
        br#"{"n":1,"echo":{"a":1,"b":{"y":2,"x":[1,2]}}}"#
    );

    let changed = call(&service, post(r#"{"a":1,"b":{"y":3,"x":[1,2]}}"#)).await;
    assert!(matches!(outcome(&changed), CacheOutcome::Miss { .. }));
    let array_order = call(&service, post(r#"{"a":1,"b":{"y":2,"x":[2,1]}}"#)).await;
    assert!(
        matches!(outcome(&array_order), CacheOutcome::Miss { .. }),
        "array order is significant"
    );
    assert_eq!(origin.calls(), 3);
}

/// Extension so tests can wrap a service with a built layer in one expression.
trait LayerService {
    fn layer_service<S>(&self, inner: S) -> tower_redis_cache::RedisCache<S>;
}

impl LayerService for RedisCacheLayer {
    fn layer_service<S>(&self, inner: S) -> tower_redis_cache::RedisCache<S> {
        tower::Layer::layer(self, inner)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_hits_answer_at_once_and_start_one_refresh() {
    let server = RedisServer::start();
    let origin = Origin::new();
    // Entries are stale as soon as they are stored, and stay servable for a minute.
    let layer = layer_over(redis_store(&server).await)
        .fresh_for(Duration::ZERO)
        .stale_for(Duration::from_secs(60))
        .build()
        .unwrap();
    let service = layer.layer_service(origin.service());
    let first = call(&service, post(r#"{"q":"swr"}"#)).await;
    assert!(matches!(
        outcome(&first),
        CacheOutcome::Miss { stored: true, .. }
    ));

    // The origin now holds every call: a stale answer cannot have waited for it.
    origin.close();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let response = call(&service, post(r#"{"q":"swr"}"#)).await;
            let status = cache_status(&response);
            (outcome(&response), status, body(response).await)
        }));
    }
    let mut started = 0;
    for task in tasks {
        let (outcome, status, body) = task.await.unwrap();
        match outcome {
            CacheOutcome::Stale { refreshing } => started += usize::from(refreshing),
            other => panic!("expected a stale answer, got {other:?}"),
        }
        // A stale answer is a hit (RFC 9211) with a negative ttl, from the first millisecond past freshness;
        // the one that started the refresh says so.
        let rest = status
            .strip_prefix("tower-redis-cache; hit; ttl=")
            .unwrap_or_else(|| panic!("{status}"));
        let (ttl, detail) = match rest.split_once("; detail=") {
            Some((ttl, detail)) => (ttl, Some(detail)),
            None => (rest, None),
        };
        assert!(ttl.parse::<i64>().unwrap() < 0, "{status}");
        let refreshing = matches!(outcome, CacheOutcome::Stale { refreshing: true });
        assert_eq!(detail, refreshing.then_some("refreshing"), "{status}");
        assert_eq!(&body[..], br#"{"n":1,"echo":{"q":"swr"}}"#);
    }
    assert_eq!(started, 1, "exactly one request started the refresh");
    wait_until("the refresh reached the origin", || origin.calls() == 2).await;
    origin.open();
    wait_until("the refresh stored", || layer.handle().stats().stores == 2).await;
    assert_eq!(origin.calls(), 2, "20 stale requests, one refresh");
    assert_eq!(layer.handle().stats().refreshes_started, 1);
    let after = call(&service, post(r#"{"q":"swr"}"#)).await;
    assert_eq!(
        &body(after).await[..],
        br#"{"n":2,"echo":{"q":"swr"}}"#,
        "the refresh replaced the entry"
    );
}

#[tokio::test]
async fn a_failed_refresh_leaves_the_entry_stale() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer_over(redis_store(&server).await)
        .fresh_for(Duration::ZERO)
        .stale_for(Duration::from_secs(60))
        // Short, so that each failed refresh's lease soon frees the key for the next round; long enough that the
        // first fill, which stores only while it holds its lease, holds it through its write on a loaded machine.
        .refresh_lease_for(Duration::from_millis(250))
        .build()
        .unwrap();
    let service = layer.layer_service(origin.service());
    let handle = layer.handle();
    call(&service, post(r#"{"q":"fail"}"#)).await;
    let key = handle.key_for(&post_bytes(r#"{"q":"fail"}"#));
    let lease = key.lease_key();
    let stored = bulk_payload(&server.command(&[b"GET", key.as_str().as_bytes()])).unwrap();

    origin.fail_with(StatusCode::SERVICE_UNAVAILABLE);
    for round in 1..=3u64 {
        let stale = call(&service, post(r#"{"q":"fail"}"#)).await;
        assert!(
            matches!(outcome(&stale), CacheOutcome::Stale { .. }),
            "round {round}: {:?}",
            outcome(&stale)
        );
        assert_eq!(&body(stale).await[..], br#"{"n":1,"echo":{"q":"fail"}}"#);
        wait_until("the refresh failed", || {
            handle.stats().refreshes_failed == round
        })
        .await;
        // The stored bytes are untouched: not rewritten with a new timestamp, so never "fresh again".
        let now = bulk_payload(&server.command(&[b"GET", key.as_str().as_bytes()])).unwrap();
        assert_eq!(
            now, stored,
            "round {round}: a failed refresh must not rewrite the entry"
        );
        // The failed refresh keeps its lease until it expires; the next round starts once it has.
        wait_until("the lease expired", || {
            server.command(&[b"EXISTS", lease.as_bytes()]) == b":0\r\n"
        })
        .await;
    }
    assert_eq!(
        handle.stats().hits,
        0,
        "never served as fresh after a failed refresh"
    );
}

/// Closes the origin, then makes a stale hit of `query`, whose refresh the origin now holds.
async fn start_a_held_refresh<S: support::calls::Cached>(
    service: &S,
    origin: &Origin,
    query: &str,
) {
    origin.close();
    let before = origin.calls();
    let stale = call(service, post(query)).await;
    assert_eq!(outcome(&stale), CacheOutcome::Stale { refreshing: true });
    wait_until("the refresh reached the origin", || {
        origin.calls() == before + 1
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_never_answers_is_abandoned_and_the_next_stale_hit_refreshes() {
    let origin = Origin::new();
    let layer = layer_over(MemoryStore::new(1 << 20))
        .fresh_for(Duration::ZERO)
        .stale_for(Duration::from_secs(60))
        // Short, so that the abandoned refresh's lease does not hold back the next one.
        .refresh_lease_for(Duration::from_millis(1))
        .refresh_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let service = layer.layer_service(origin.service());
    let handle = layer.handle();
    let query = r#"{"q":"hung"}"#;
    call(&service, post(query)).await;

    // From now on the origin never answers, like an inner stack with no timeout of its own behind a dead link.
    start_a_held_refresh(&service, &origin, query).await;
    wait_until("the refresh was abandoned", || {
        handle.stats().refreshes_failed == 1
    })
    .await;

    // The key is free to refresh again: the next stale hit starts a refresh, which gets an answer this time.
    origin.open();
    let next = call(&service, post(query)).await;
    assert_eq!(outcome(&next), CacheOutcome::Stale { refreshing: true });
    assert_eq!(&body(next).await[..], br#"{"n":1,"echo":{"q":"hung"}}"#);
    wait_until("the second refresh stored", || handle.stats().stores == 2).await;
    assert_eq!(origin.calls(), 3, "the abandoned call and one more");
    let after = call(&service, post(query)).await;
    assert_eq!(&body(after).await[..], br#"{"n":3,"echo":{"q":"hung"}}"#);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_running_refresh_and_starts_no_more() {
    let origin = Origin::new();
    let layer = layer_over(MemoryStore::new(1 << 20))
        .fresh_for(Duration::ZERO)
        .stale_for(Duration::from_secs(60))
        .build()
        .unwrap();
    let service = layer.layer_service(origin.service());
    let handle = layer.handle();
    let query = r#"{"q":"closing"}"#;
    call(&service, post(query)).await;

    // A refresh held at the origin: a shutdown whose grace ends first says the work is still running.
    start_a_held_refresh(&service, &origin, query).await;
    assert!(!handle.shutdown(Duration::from_secs(1)).await);
    assert_eq!(handle.stats().stores, 1, "the refresh has not stored");

    // Once the origin answers, the shutdown returns after the refresh stored its answer.
    origin.open();
    assert!(handle.shutdown(Duration::from_secs(60)).await);
    assert_eq!(handle.stats().stores, 2);

    // Shut down, the layer still answers, stale included, but starts no refresh.
    let after = call(&service, post(query)).await;
    assert_eq!(outcome(&after), CacheOutcome::Stale { refreshing: false });
    assert_eq!(&body(after).await[..], br#"{"n":2,"echo":{"q":"closing"}}"#);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(origin.calls(), 2);
    let stats = handle.stats();
    assert_eq!((stats.refreshes_started, stats.refreshes_deferred), (1, 1));
}

#[tokio::test]
async fn shutdown_waits_for_an_abandoned_refresh_to_release_its_lease() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port()).await;
    let origin = Origin::new();
    let layer = layer_over(RedisStore::connect(&proxy.url()).await.unwrap())
        .fresh_for(Duration::ZERO)
        .stale_for(Duration::from_secs(60))
        .refresh_lease_for(Duration::from_secs(60))
        .refresh_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let service = layer.layer_service(origin.service());
    let handle = layer.handle();
    let query = r#"{"q":"lease"}"#;
    call(&service, post(query)).await;
    let lease = handle.key_for(&post_bytes(query)).lease_key();

    // The refresh takes the key's lease and never hears from the origin; `refresh_timeout` abandons it, which
    // releases the lease on a task of its own, over a link slow enough that the release takes a while. The
    // shutdown returns only once that release is done.
    start_a_held_refresh(&service, &origin, query).await;
    assert_eq!(server.command(&[b"EXISTS", lease.as_bytes()]), b":1\r\n");
    proxy.set(Mode::Delay(Duration::from_millis(300)));
    assert!(handle.shutdown(Duration::from_secs(10)).await);
    assert_eq!(handle.stats().refreshes_failed, 1, "abandoned");
    assert_eq!(
        server.command(&[b"EXISTS", lease.as_bytes()]),
        b":0\r\n",
        "released, not left to expire in a minute"
    );
}

#[tokio::test]
async fn two_layers_with_their_own_connections_refresh_a_stale_key_once() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let (layer_a, layer_b) = two_processes(&server, |layer| {
        layer
            .fresh_for(Duration::ZERO)
            .stale_for(Duration::from_secs(60))
    })
    .await;
    let a = layer_a.layer_service(origin.service());
    let b = layer_b.layer_service(origin.service());
    call(&a, post(r#"{"q":"fleet"}"#)).await;
    assert_eq!(origin.calls(), 1);

    origin.close();
    let from_a = call(&a, post(r#"{"q":"fleet"}"#)).await;
    assert_eq!(outcome(&from_a), CacheOutcome::Stale { refreshing: true });
    wait_until("A's refresh reached the origin", || origin.calls() == 2).await;
    let from_b = call(&b, post(r#"{"q":"fleet"}"#)).await;
    assert_eq!(outcome(&from_b), CacheOutcome::Stale { refreshing: true });
    wait_until("B saw A's lease", || {
        layer_b.handle().stats().refreshes_skipped == 1
    })
    .await;
    // B now leaves the key to A for a while: its next stale hits make no lease attempt each (that took one
    // store call per hit). At most one more, should this machine stall for the second B waits.
    let mut started = 0;
    for _ in 0..10 {
        let stale = call(&b, post(r#"{"q":"fleet"}"#)).await;
        started += usize::from(outcome(&stale) == CacheOutcome::Stale { refreshing: true });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(started <= 1, "{started} stale hits tried for the lease");
    assert!(layer_b.handle().stats().refreshes_skipped <= 2);
    origin.open();
    wait_until("A stored", || layer_a.handle().stats().stores == 2).await;
    assert_eq!(origin.calls(), 2, "one refresh across both processes");
    assert_eq!(layer_b.handle().stats().refreshes_started, 0);
}

/// Refreshes ahead of expiry are one per key for the whole fleet too. The clock jumps (current-thread runtime)
/// while Redis runs in real time.
#[tokio::test]
async fn two_processes_refresh_a_key_due_ahead_of_expiry_once() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let (layer_a, layer_b) = two_processes(&server, |layer| {
        layer
            .fresh_for(Duration::from_secs(10))
            .stale_for(Duration::ZERO)
            .refresh_ahead(0.5)
    })
    .await;
    let a = layer_a.layer_service(origin.service());
    let b = layer_b.layer_service(origin.service());
    call(&a, post(r#"{"q":"ahead"}"#)).await;

    support::calls::jump(Duration::from_secs(6)).await;
    origin.close();
    let from_a = call(&a, post(r#"{"q":"ahead"}"#)).await;
    assert_eq!(outcome(&from_a), CacheOutcome::Hit);
    assert!(cache_status(&from_a).ends_with("; detail=refreshing"));
    wait_until("A's refresh reached the origin", || origin.calls() == 2).await;
    let from_b = call(&b, post(r#"{"q":"ahead"}"#)).await;
    assert_eq!(outcome(&from_b), CacheOutcome::Hit, "answered at once");
    wait_until("B saw A's lease", || {
        layer_b.handle().stats().refreshes_skipped == 1
    })
    .await;
    origin.open();
    wait_until("A stored", || layer_a.handle().stats().stores == 2).await;
    let renewed = call(&b, post(r#"{"q":"ahead"}"#)).await;
    assert!(
        [
            "tower-redis-cache; hit; ttl=9",
            "tower-redis-cache; hit; ttl=10"
        ]
        .contains(&cache_status(&renewed).as_str()),
        "B reads A's renewed entry, not due: {}",
        cache_status(&renewed)
    );
    assert_eq!(origin.calls(), 2, "one refresh across both processes");
    assert_eq!(layer_b.handle().stats().refreshes_started, 0);
}

/// A store whose lease requests arrive late, like a process that was descheduled.
struct SlowLease(MemoryStore);

impl tower_redis_cache::Store for SlowLease {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<bytes::Bytes>> {
        self.0.get(key)
    }

    fn set<'a>(&'a self, key: &'a str, value: bytes::Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        self.0.set(key, value, ttl)
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            self.0.try_lease(key, token, ttl).await
        })
    }

    fn extend_lease<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        self.0.extend_lease(key, token, ttl)
    }

    fn release_lease<'a>(&'a self, key: &'a str, token: &'a str) -> StoreFuture<'a, bool> {
        self.0.release_lease(key, token)
    }

    fn remove<'a>(&'a self, keys: &'a [&'a str]) -> StoreFuture<'a, u64> {
        self.0.remove(keys)
    }

    fn purge_prefix<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, u64> {
        self.0.purge_prefix(prefix)
    }
}

/// Two layers over clones of one `MemoryStore` stand for two processes over one Redis, so paused time can move
/// both past freshness.
#[tokio::test(start_paused = true)]
async fn a_late_lease_after_another_process_refreshed_does_not_refresh_again() {
    let shared = MemoryStore::new(1 << 20);
    let origin = Origin::new();
    fn build(store: impl tower_redis_cache::Store) -> RedisCacheLayer {
        layer_over(store)
            .fresh_for(Duration::from_secs(1))
            .stale_for(Duration::from_secs(60))
            .build()
            .unwrap()
    }
    let layer_a = build(shared.clone());
    let layer_b = build(SlowLease(shared));
    let a = layer_a.layer_service(origin.service());
    let b = layer_b.layer_service(origin.service());
    call(&a, post(r#"{"q":"late"}"#)).await;
    tokio::time::advance(Duration::from_millis(1050)).await;

    // B sees the entry stale first, but its lease request is slow; A refreshes and releases the lease meanwhile.
    assert_eq!(
        outcome(&call(&b, post(r#"{"q":"late"}"#)).await),
        CacheOutcome::Stale { refreshing: true }
    );
    assert_eq!(
        outcome(&call(&a, post(r#"{"q":"late"}"#)).await),
        CacheOutcome::Stale { refreshing: true }
    );
    wait_until("A refreshed", || layer_a.handle().stats().stores == 2).await;
    wait_until("B's late refresh ended", || {
        layer_b.handle().stats().refreshes_skipped == 1
    })
    .await;
    assert_eq!(
        origin.calls(),
        2,
        "B found the entry fresh again and did not call the origin"
    );
    assert_eq!(layer_b.handle().stats().refreshes_started, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted_never_fails_a_request() {
    let mut server = RedisServer::start();
    let origin = Origin::new();
    // Commands already on the wire when Redis dies wait for the store timeout; the breaker (3 failures) then
    // skips the store, so the rest of the burst pays nothing for the dead Redis.
    let layer = layer_over(redis_store(&server).await)
        .store_timeout(Duration::from_millis(50))
        .circuit_breaker(3, Duration::from_millis(200))
        .build()
        .unwrap();
    let service = layer.layer_service(origin.service());
    let handle = layer.handle();
    call(&service, post(r#"{"q":"warm"}"#)).await;
    assert_eq!(
        outcome(&call(&service, post(r#"{"q":"warm"}"#)).await),
        CacheOutcome::Hit
    );

    server.kill();
    let mut latencies = Vec::new();
    let burst = async {
        for i in 0..50 {
            let started = std::time::Instant::now();
            let response = call(&service, post(&format!(r#"{{"q":"down","i":{i}}}"#))).await;
            latencies.push(started.elapsed());
            assert_eq!(response.status(), StatusCode::OK);
            assert!(matches!(
                outcome(&response),
                CacheOutcome::Miss { stored: false, .. }
            ));
            let status = cache_status(&response);
            assert!(status.contains("detail=store-"), "{status}");
        }
    };
    // A liveness guard, not a timing claim: 50 requests that each paid two 50 ms timeouts would take 5 s.
    tokio::time::timeout(Duration::from_secs(30), burst)
        .await
        .expect("the burst finished");
    latencies.sort();
    eprintln!(
        "redis down: 50 requests, median {:?}, p90 {:?}, max {:?} (store timeout 50 ms)",
        latencies[25], latencies[45], latencies[49]
    );
    let stats = handle.stats();
    assert!(stats.store_errors >= 3, "{stats:?}");
    assert!(stats.store_skipped > 0, "the breaker opened: {stats:?}");
    // At most a handful of calls paid the timeout before the breaker opened (plus one probe per cooldown).
    assert!(stats.store_errors <= 30, "{stats:?}");
    assert_eq!(origin.calls(), 51);

    server.restart();
    // Caching resumes on the same layer once the client reconnects and the breaker lets a probe through.
    let mut resumed = false;
    for _ in 0..200 {
        let response = call(&service, post(r#"{"q":"back"}"#)).await;
        if outcome(&response) == CacheOutcome::Hit {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        resumed,
        "caching resumed after the restart: {:?}",
        handle.stats()
    );
}

/// An answer a failing store did not take says so, and is not counted under a reason of its own as well,
/// whether it was passed on as it came (`private`) or read whole first (`store_when` refused it):
/// `not_stored_for` counts the answers whose `Cache-Status` names that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_a_failing_store_did_not_take_is_not_counted_for_its_own_reason() {
    for (reason, detail) in [
        (NotStored::Private, "response-private"),
        (NotStored::Refused, "response-refused"),
    ] {
        let mut server = RedisServer::start();
        let (store, late) = support::store::LateLeaseStore::new(
            redis_store(&server).await,
            Duration::from_millis(300),
        );
        let origin = Origin::new();
        let builder = layer_over(store).store_timeout(Duration::from_millis(100));
        let layer = if reason == NotStored::Private {
            origin.add_header("cache-control", "private");
            builder.build().unwrap()
        } else {
            builder.store_when(|_, _, _| false).build().unwrap()
        };
        let service = layer.layer_service(origin.service());
        // With the store well, the answer's own reason: said and counted.
        let unstored = call(&service, post(r#"{"q":"well"}"#)).await;
        assert!(
            cache_status(&unstored).ends_with(&format!("; detail={detail}")),
            "{}",
            cache_status(&unstored)
        );
        assert_eq!(layer.handle().stats().not_stored_for(reason), 1);
        // The key's lease fails after a read that worked; then the read itself fails, Redis gone. The store's
        // trouble is the news either way.
        late.arm();
        let lease_failed = call(&service, post(r#"{"q":"lease"}"#)).await;
        server.kill();
        let read_failed = call(&service, post(r#"{"q":"read"}"#)).await;
        for reply in [lease_failed, read_failed] {
            assert!(
                cache_status(&reply).contains("; detail=store-"),
                "{reason:?}: {}",
                cache_status(&reply)
            );
            assert!(matches!(
                outcome(&reply),
                CacheOutcome::Miss { stored: false, .. }
            ));
        }
        let stats = layer.handle().stats();
        assert_eq!(origin.calls(), 3, "{reason:?}");
        assert_eq!(stats.not_stored, 1, "{reason:?}: {stats:?}");
        assert_eq!(stats.not_stored_for(reason), 1, "{reason:?}: {stats:?}");
    }
}

#[tokio::test]
async fn garbage_at_a_key_is_a_miss_and_gets_overwritten() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer_over(redis_store(&server).await).build().unwrap();
    let service = layer.layer_service(origin.service());
    let key = layer.handle().key_for(&post_bytes(r#"{"q":"garbage"}"#));
    server.command(&[b"SET", key.as_str().as_bytes(), b"\x00not an entry at all"]);

    let response = call(&service, post(r#"{"q":"garbage"}"#)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(matches!(
        outcome(&response),
        CacheOutcome::Miss { stored: true, .. }
    ));
    assert_eq!(layer.handle().stats().decode_errors, 1);
    let stored = bulk_payload(&server.command(&[b"GET", key.as_str().as_bytes()])).unwrap();
    assert!(
        stored.starts_with(b"\xffTRC\x02"),
        "a valid envelope replaced the garbage"
    );
    assert_eq!(
        outcome(&call(&service, post(r#"{"q":"garbage"}"#)).await),
        CacheOutcome::Hit
    );
}

#[tokio::test]
async fn stored_size_is_body_plus_headers_plus_fixed_overhead() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer_over(redis_store(&server).await).build().unwrap();
    let service = layer.layer_service(origin.service());
    let response = call(&service, post(r#"{"q":"size"}"#)).await;
    let body = body(response).await;
    let key = layer.handle().key_for(&post_bytes(r#"{"q":"size"}"#));
    let stored = bulk_payload(&server.command(&[b"GET", key.as_str().as_bytes()])).unwrap();
    // The origin sends one header: content-type: application/json.
    let headers = "content-type".len() + "application/json".len() + 6;
    assert_eq!(stored.len(), body.len() + headers + ENTRY_OVERHEAD);
    let stats = layer.handle().stats();
    assert_eq!(
        (
            stats.stores,
            stats.stored_bytes,
            stats.compression_saved_bytes
        ),
        (1, stored.len() as u64, 0)
    );
    // The body is stored raw, not base64 or JSON-wrapped.
    assert!(stored.ends_with(&body));
    // The Redis TTL covers the last window (60 s fresh + max(60 s stale, 300 s stale-if-error)).
    let ttl = String::from_utf8(server.command(&[b"PTTL", key.as_str().as_bytes()])).unwrap();
    let ttl: u64 = ttl.trim_start_matches(':').trim().parse().unwrap();
    assert!(ttl > 355_000 && ttl <= 360_000, "{ttl}");
}

#[tokio::test]
async fn two_partitions_never_share_an_entry() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let tenant = |partition: &str, store| layer_over(store).partition(partition).build().unwrap();
    let a = tenant(
        "https://api.mypurecloud.ie|client-a",
        redis_store(&server).await,
    );
    let b = tenant(
        "https://api.mypurecloud.ie|client-b",
        redis_store(&server).await,
    );
    let service_a = a.layer_service(origin.service());
    let service_b = b.layer_service(origin.service());
    let from_a = call(&service_a, post(r#"{"q":"tenant"}"#)).await;
    let from_b = call(&service_b, post(r#"{"q":"tenant"}"#)).await;
    assert!(matches!(
        outcome(&from_a),
        CacheOutcome::Miss { stored: true, .. }
    ));
    assert!(matches!(
        outcome(&from_b),
        CacheOutcome::Miss { stored: true, .. }
    ));
    assert_ne!(body(from_a).await, body(from_b).await);
    assert_eq!(origin.calls(), 2);
    let request = post_bytes(r#"{"q":"tenant"}"#);
    assert_ne!(a.handle().key_for(&request), b.handle().key_for(&request));
    assert_eq!(
        outcome(&call(&service_a, post(r#"{"q":"tenant"}"#)).await),
        CacheOutcome::Hit
    );
    assert_eq!(
        outcome(&call(&service_b, post(r#"{"q":"tenant"}"#)).await),
        CacheOutcome::Hit
    );
}

/// Yields until every other task on this current-thread runtime has run as far as it can.
async fn let_others_run() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_leader_does_not_strand_its_waiters() {
    let origin = Origin::new();
    let layer = layer_over(MemoryStore::new(1 << 20)).build().unwrap();
    let service = layer.layer_service(origin.service());
    origin.close();
    let leader = tokio::spawn({
        let service = service.clone();
        async move { call(&service, post(r#"{"q":"cancel"}"#)).await }
    });
    wait_until("the leader reached the origin", || origin.calls() == 1).await;
    let waiter = tokio::spawn({
        let service = service.clone();
        async move { call(&service, post(r#"{"q":"cancel"}"#)).await }
    });
    let_others_run().await;
    assert_eq!(origin.calls(), 1, "the second caller waits on the first");
    leader.abort();
    // The waiter takes over: a second origin call, which completes once the origin opens.
    wait_until("the waiter took over", || origin.calls() == 2).await;
    origin.open();
    let response = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter finished")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_coalesced_caller_of_another_variant_asks_the_origin_itself() {
    let origin = Origin::new();
    origin.add_header("vary", "Accept-Language");
    let layer = layer_over(MemoryStore::new(1 << 20)).build().unwrap();
    let service = layer.layer_service(origin.service());
    let ask = |lang: &'static str| {
        let service = service.clone();
        let mut request = post(r#"{"q":"greeting"}"#);
        request
            .headers_mut()
            .insert("accept-language", http::HeaderValue::from_static(lang));
        tokio::spawn(async move { call(&service, request).await })
    };
    // Nothing is stored yet, so nothing says the answer varies: both callers join the key's one call.
    origin.close();
    let leader = ask("en");
    wait_until("the leader reached the origin", || origin.calls() == 1).await;
    let other = ask("it");
    let_others_run().await;
    assert_eq!(origin.calls(), 1, "the second caller waits on the first");
    origin.open();
    let leader = leader.await.unwrap();
    assert_eq!(
        outcome(&leader),
        CacheOutcome::Miss {
            collapsed: false,
            stored: true
        }
    );
    // The leader's answer varies on a header the second caller sent another value of: it is not this caller's.
    let other = other.await.unwrap();
    assert_eq!(
        outcome(&other),
        CacheOutcome::Miss {
            collapsed: false,
            stored: false
        }
    );
    assert_eq!(
        &body(other).await[..],
        br#"{"n":2,"echo":{"q":"greeting"}}"#
    );
    assert_eq!(origin.calls(), 2);
    assert_eq!(layer.handle().stats().coalesced, 0);
}

#[tokio::test]
async fn a_caller_whose_look_up_missed_before_another_call_stored_takes_that_entry() {
    let origin = Origin::new();
    let (store, reads, release) = CountingStore::holding_first(MemoryStore::new(1 << 20));
    let service = layer_over(store)
        .build()
        .unwrap()
        .layer_service(origin.service());
    // The first caller's look-up finds nothing, and is held before the caller joins the key's call.
    let first = tokio::spawn({
        let service = service.clone();
        async move { call(&service, post(r#"{"q":"race"}"#)).await }
    });
    wait_until("the first look-up is done", || {
        reads.load(Ordering::SeqCst) == 1
    })
    .await;
    // Meanwhile a second caller misses, calls the origin and stores; its call is over when the first joins.
    let second = call(&service, post(r#"{"q":"race"}"#)).await;
    assert_eq!(
        outcome(&second),
        CacheOutcome::Miss {
            collapsed: false,
            stored: true
        }
    );
    release.notify_one();
    // A call for the key finished since the first caller's look-up: it looks again, and the entry answers.
    let first = first.await.unwrap();
    assert_eq!(outcome(&first), CacheOutcome::Hit);
    assert_eq!(body(first).await, body(second).await);
    assert_eq!(origin.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn coalesced_waiters_share_an_inner_error() {
    let origin = Origin::new();
    let layer = layer_over(MemoryStore::new(1 << 20)).build().unwrap();
    let service = layer.layer_service(origin.service());
    origin.fail_transport();
    origin.close();
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { service.oneshot(post(r#"{"q":"err"}"#)).await })
        })
        .collect();
    let_others_run().await;
    assert_eq!(origin.calls(), 1, "the other four wait on the first");
    origin.open();
    for task in calls {
        let error = task.await.unwrap().unwrap_err();
        assert!(error.to_string().contains("origin unreachable"), "{error}");
    }
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn request_cache_control_no_store_bypasses_and_no_cache_refreshes() {
    let origin = Origin::new();
    let layer = layer_over(MemoryStore::new(1 << 20)).build().unwrap();
    let service = layer.layer_service(origin.service());
    call(&service, post(r#"{"q":"cc"}"#)).await;

    let mut no_store = post(r#"{"q":"cc"}"#);
    no_store
        .headers_mut()
        .insert("cache-control", "no-store".parse().unwrap());
    let response = call(&service, no_store).await;
    assert_eq!(
        outcome(&response),
        CacheOutcome::Bypass(tower_redis_cache::cache::BypassReason::NoStore)
    );
    assert_eq!(
        cache_status(&response),
        "tower-redis-cache; fwd=request; detail=no-store"
    );

    let mut no_cache = post(r#"{"q":"cc"}"#);
    no_cache
        .headers_mut()
        .insert("cache-control", "no-cache".parse().unwrap());
    let response = call(&service, no_cache).await;
    assert_eq!(
        cache_status(&response),
        "tower-redis-cache; fwd=request; fwd-status=200; stored"
    );
    assert_eq!(&body(response).await[..], br#"{"n":3,"echo":{"q":"cc"}}"#);
    // The refreshed entry answers the next plain request.
    let response = call(&service, post(r#"{"q":"cc"}"#)).await;
    assert_eq!(outcome(&response), CacheOutcome::Hit);
    assert_eq!(&body(response).await[..], br#"{"n":3,"echo":{"q":"cc"}}"#);
    assert_eq!(origin.calls(), 3);
}

#[tokio::test]
async fn cache_status_keeps_the_members_of_the_caches_behind_it() {
    // RFC 9211 §2: a cache keeps the field it received and adds its member last.
    let origin = Origin::new();
    origin.add_header("cache-status", "edge-cdn; fwd=uri-miss");
    origin.add_header("cache-status", "  ");
    origin.add_header("cache-status", "gateway; hit");
    let layer = layer_over(MemoryStore::new(1 << 20)).build().unwrap();
    let service = layer.layer_service(origin.service());
    let behind = "edge-cdn; fwd=uri-miss, gateway; hit";

    let miss = call(&service, post(r#"{"q":"path"}"#)).await;
    assert_eq!(
        miss.headers().get_all("cache-status").iter().count(),
        1,
        "one field line"
    );
    assert_eq!(
        cache_status(&miss),
        format!("{behind}, tower-redis-cache; fwd=uri-miss; fwd-status=200; stored")
    );
    assert_eq!(
        outcome(&miss),
        CacheOutcome::Miss {
            collapsed: false,
            stored: true
        }
    );

    // The entry keeps none of them: they told how the fill was fetched, not how this answer was made.
    let hit = call(&service, post(r#"{"q":"path"}"#)).await;
    assert!(
        cache_status(&hit).starts_with("tower-redis-cache; hit; ttl="),
        "{}",
        cache_status(&hit)
    );

    let mut no_store = post(r#"{"q":"path"}"#);
    no_store
        .headers_mut()
        .insert("cache-control", "no-store".parse().unwrap());
    let bypass = call(&service, no_store).await;
    assert_eq!(
        cache_status(&bypass),
        format!("{behind}, tower-redis-cache; fwd=request; detail=no-store")
    );
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn stacked_layers_each_add_a_member_and_the_outer_one_is_read() {
    let origin = Origin::new();
    let inner = layer_over(MemoryStore::new(1 << 20)).build().unwrap();
    let outer = layer_over(MemoryStore::new(1 << 20)).build().unwrap();
    let warm = inner.layer_service(origin.service());
    call(&warm, post(r#"{"q":"stacked"}"#)).await;

    // The outer layer misses; the inner one answers from its entry.
    let service = outer.layer_service(inner.layer_service(origin.service()));
    let response = service.oneshot(post(r#"{"q":"stacked"}"#)).await.unwrap();
    let status = response.headers()["cache-status"].to_str().unwrap();
    let (first, last) = status.split_once(", ").unwrap();
    assert!(
        first.starts_with("tower-redis-cache; hit; ttl="),
        "{status}"
    );
    assert_eq!(
        last, "tower-redis-cache; fwd=uri-miss; fwd-status=200; stored",
        "{status}"
    );
    let outer_says = CacheOutcome::Miss {
        collapsed: false,
        stored: true,
    };
    assert_eq!(response.extensions().get(), Some(&outer_says));
    assert_eq!(
        CacheOutcome::from_headers(response.headers()),
        Some(outer_says),
        "the header is read for the outer layer's member"
    );
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn stale_if_error_serves_the_entry_when_the_origin_fails() {
    let origin = Origin::new();
    let layer = stale_if_error_only(layer_over(MemoryStore::new(1 << 20)))
        .build()
        .unwrap();
    let service = layer.layer_service(origin.service());
    call(&service, post(r#"{"q":"sie"}"#)).await;

    for failure in [StatusCode::BAD_GATEWAY, StatusCode::TOO_MANY_REQUESTS] {
        origin.fail_with(failure);
        let response = call(&service, post(r#"{"q":"sie"}"#)).await;
        assert_eq!(outcome(&response), CacheOutcome::StaleIfError);
        assert_eq!(response.status(), StatusCode::OK);
        let status = cache_status(&response);
        let expected = format!(
            "tower-redis-cache; fwd=stale; fwd-status={}; ttl=",
            failure.as_u16()
        );
        assert!(status.starts_with(&expected), "{status}");
        assert_eq!(&body(response).await[..], br#"{"n":1,"echo":{"q":"sie"}}"#);
    }

    origin.fail_transport();
    let response = call(&service, post(r#"{"q":"sie"}"#)).await;
    assert_eq!(outcome(&response), CacheOutcome::StaleIfError);
    let status = cache_status(&response);
    assert!(
        status.starts_with("tower-redis-cache; fwd=stale; ttl=")
            && status.ends_with("; detail=transport-error"),
        "{status}"
    );

    // 501 is not an origin failure in this sense: it reaches the caller.
    origin.fail_with(StatusCode::NOT_IMPLEMENTED);
    let response = call(&service, post(r#"{"q":"sie"}"#)).await;
    assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
    assert_eq!(layer.handle().stats().stale_if_error, 3);
}

/// A failing answer whose head rules out storing and sharing it (`no-store`, `Set-Cookie`) is still an origin
/// failure: read whole rather than passed on as it arrives, so the entry in its stale-if-error window answers
/// in its place.
#[tokio::test(start_paused = true)]
async fn stale_if_error_answers_for_a_failure_whose_head_rules_out_storing() {
    let (calls, origin) = counted_origin(|n, _| async move {
        let (status, field, value) = match n {
            1 => return Ok(http::Response::new(Full::new("kept".into()))),
            2 => (StatusCode::SERVICE_UNAVAILABLE, "cache-control", "no-store"),
            _ => (StatusCode::BAD_GATEWAY, "set-cookie", "route=b"),
        };
        let response = http::Response::builder()
            .status(status)
            .header(field, value);
        Ok(response.body(Full::new("down".into()))?)
    });
    let layer = stale_if_error_only(layer_over(MemoryStore::new(1 << 20)))
        .build()
        .unwrap();
    let service = layer.layer_service(origin);
    call(&service, post(r#"{"q":"sie"}"#)).await;
    for failure in [503, 502] {
        let response = call(&service, post(r#"{"q":"sie"}"#)).await;
        let status = cache_status(&response);
        assert_eq!(outcome(&response), CacheOutcome::StaleIfError, "{status}");
        assert!(
            status.starts_with(&format!(
                "tower-redis-cache; fwd=stale; fwd-status={failure}; ttl="
            )),
            "{status}"
        );
        assert_eq!(response.status(), StatusCode::OK);
        assert!(!response.headers().contains_key("set-cookie"));
        assert_eq!(&body(response).await[..], b"kept");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(layer.handle().stats().stale_if_error, 2);
}

#[tokio::test]
async fn uncacheable_methods_bypass_and_errors_are_not_stored() {
    let origin = Origin::new();
    let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
        .build()
        .unwrap();
    let service = layer.layer_service(origin.service());
    // POST is not cacheable by default.
    for _ in 0..2 {
        let response = call(&service, post(r#"{"q":"post"}"#)).await;
        assert_eq!(
            cache_status(&response),
            "tower-redis-cache; fwd=method; detail=method"
        );
    }
    assert_eq!(origin.calls(), 2);
    origin.fail_with(StatusCode::INTERNAL_SERVER_ERROR);
    let get = || {
        Request::get("http://h/report")
            .body(Full::default())
            .unwrap()
    };
    for _ in 0..2 {
        let response = call(&service, get()).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(matches!(
            outcome(&response),
            CacheOutcome::Miss { stored: false, .. }
        ));
    }
    assert_eq!(origin.calls(), 4, "a 500 is never stored");
}

const ITEM: &str = "https://api.example.com/items/1";

/// A layer with the default methods (`GET`, `HEAD`, `QUERY`), for the `HEAD` tests.
async fn heads_layer(server: &RedisServer) -> tower_redis_cache::cache::RedisCacheLayerBuilder {
    RedisCacheLayer::builder(redis_store(server).await)
        .namespace("heads")
        .store_timeout(Duration::from_secs(2))
}

fn item(method: Method, headers: &[(&str, &str)]) -> Request<Full<bytes::Bytes>> {
    let mut request = Request::builder().method(method).uri(ITEM);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::default()).unwrap()
}

#[tokio::test]
async fn a_head_is_answered_from_the_entry_of_its_get() {
    // RFC 9110 §9.3.2: the answer to a `HEAD` is the `GET`'s without its body.
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.set_etag("\"v1\"");
    let layer = heads_layer(&server).await.build().unwrap();
    let service = layer.layer_service(origin.service());
    let whole = br#"{"n":1,"echo":null}"#;

    // A miss asks the origin for the `GET`, whose answer fills the entry.
    let first = call(&service, item(Method::HEAD, &[])).await;
    assert_eq!(origin.methods(), [Method::GET]);
    assert_eq!(
        outcome(&first),
        CacheOutcome::Miss {
            collapsed: false,
            stored: true
        }
    );
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["content-length"], whole.len().to_string());
    assert_eq!(first.headers()["content-type"], "application/json");
    assert_eq!(first.headers()["etag"], "\"v1\"");
    assert!(body(first).await.is_empty());
    // The `GET` reads that entry whole, and every `HEAD` after it too, a matching validator getting a `304`.
    let get = call(&service, item(Method::GET, &[])).await;
    assert_eq!(outcome(&get), CacheOutcome::Hit);
    assert_eq!(&body(get).await[..], whole);
    let again = call(&service, item(Method::HEAD, &[])).await;
    assert_eq!(outcome(&again), CacheOutcome::Hit);
    assert_eq!(again.headers()["content-length"], whole.len().to_string());
    assert!(body(again).await.is_empty());
    let holding = call(&service, item(Method::HEAD, &[("if-none-match", "\"v1\"")])).await;
    assert_eq!(holding.status(), StatusCode::NOT_MODIFIED);
    assert!(!holding.headers().contains_key("content-length"));
    assert_eq!(origin.calls(), 1);
    let key = |method| {
        let request = item(method, &[]).map(|_| bytes::Bytes::new());
        layer.handle().key_for(&request).as_str().to_owned()
    };
    assert_eq!(key(Method::HEAD), key(Method::GET));

    // A `HEAD` the cache does not consult goes to the origin as it came.
    let private = call(
        &service,
        item(Method::HEAD, &[("authorization", "Bearer a")]),
    )
    .await;
    assert!(matches!(outcome(&private), CacheOutcome::Bypass(_)));
    assert_eq!(origin.methods().last(), Some(&Method::HEAD));
    // A write drops the entry the `HEAD` reads.
    let put = call(&service, item(Method::PUT, &[])).await;
    assert_eq!(put.status(), StatusCode::OK);
    let after = call(&service, item(Method::HEAD, &[])).await;
    assert!(matches!(
        outcome(&after),
        CacheOutcome::Miss { stored: true, .. }
    ));
    assert_eq!(origin.methods()[2..], [Method::PUT, Method::GET]);

    // Turned off, or with `GET` not cached, a `HEAD` is asked as a `HEAD` and has an entry of its own.
    for (namespace, head_from_get, methods) in [
        ("own-heads", false, vec![Method::GET, Method::HEAD]),
        ("no-gets", true, vec![Method::HEAD]),
    ] {
        let layer = heads_layer(&server)
            .await
            .namespace(namespace)
            .head_from_get(head_from_get)
            .methods(methods)
            .build()
            .unwrap();
        let service = layer.layer_service(origin.service());
        let calls = origin.calls();
        let miss = call(&service, item(Method::HEAD, &[])).await;
        assert!(
            matches!(outcome(&miss), CacheOutcome::Miss { stored: true, .. }),
            "{namespace}"
        );
        assert_eq!(origin.methods().last(), Some(&Method::HEAD), "{namespace}");
        let hit = call(&service, item(Method::HEAD, &[])).await;
        assert_eq!(outcome(&hit), CacheOutcome::Hit, "{namespace}");
        assert_eq!(origin.calls(), calls + 1, "{namespace}");
        let key = |method| {
            let request = item(method, &[]).map(|_| bytes::Bytes::new());
            layer.handle().key_for(&request).as_str().to_owned()
        };
        assert_ne!(key(Method::HEAD), key(Method::GET), "{namespace}");
    }
}

#[tokio::test]
async fn a_head_whose_get_answer_is_passed_on_still_says_how_long_the_body_is() {
    // The `GET` a `HEAD` miss asks for sets a cookie: its answer goes on from its head, never held, and the
    // `HEAD` gets the length its body announced.
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.add_header("set-cookie", "session=1");
    let layer = heads_layer(&server).await.build().unwrap();
    let service = layer.layer_service(origin.service());
    let head = call(&service, item(Method::HEAD, &[])).await;
    assert_eq!(origin.methods(), [Method::GET]);
    assert!(cache_status(&head).ends_with("; detail=response-set-cookie"));
    let whole = br#"{"n":1,"echo":null}"#;
    assert_eq!(head.headers()["content-length"], whole.len().to_string());
    assert!(body(head).await.is_empty());
}

/// A `HEAD` with a body the layer cannot read (gzip that does not inflate) goes to the origin as the `HEAD` it is,
/// not as the `GET` it would have been keyed as.
#[cfg(feature = "decompress")]
#[tokio::test]
async fn a_head_whose_body_cannot_be_read_goes_on_as_a_head() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = heads_layer(&server).await.build().unwrap();
    let service = layer.layer_service(origin.service());
    let mut request = item(Method::HEAD, &[("content-encoding", "gzip")]);
    *request.body_mut() = Full::new(bytes::Bytes::from_static(b"not gzip"));
    let unread = call(&service, request).await;
    assert_eq!(
        cache_status(&unread),
        "tower-redis-cache; fwd=bypass; detail=request-undecodable"
    );
    assert_eq!(origin.methods(), [Method::HEAD]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_and_a_get_arriving_together_make_one_origin_call() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = heads_layer(&server).await.build().unwrap();
    let service = layer.layer_service(origin.service());
    origin.close();
    let tasks: Vec<_> = [Method::HEAD, Method::GET, Method::HEAD]
        .into_iter()
        .map(|method| {
            let service = service.clone();
            tokio::spawn(async move {
                let response = call(&service, item(method, &[])).await;
                (outcome(&response), body(response).await)
            })
        })
        .collect();
    wait_until("the first caller reached the origin", || {
        origin.calls() == 1
    })
    .await;
    origin.open();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    assert_eq!(origin.calls(), 1);
    assert_eq!(origin.methods(), [Method::GET]);
    let bodies: Vec<&[u8]> = answers.iter().map(|(_, body)| &body[..]).collect();
    assert_eq!(bodies, [&b""[..], br#"{"n":1,"echo":null}"#, b""]);
    assert!(
        answers
            .iter()
            .all(|(outcome, _)| !matches!(outcome, CacheOutcome::Bypass(_)))
    );
}

#[tokio::test]
async fn a_head_whose_get_is_over_the_cap_is_answered_without_its_body() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = heads_layer(&server).await.max_body_size(8).build().unwrap();
    let service = layer.layer_service(origin.service());
    for n in 1..=2 {
        let response = call(&service, item(Method::HEAD, &[])).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            outcome(&response),
            CacheOutcome::Miss {
                collapsed: false,
                stored: false
            }
        );
        // Streamed through and dropped unread: the length its body announced, none made up.
        assert_eq!(
            response.headers()["content-length"],
            br#"{"n":1,"echo":null}"#.len().to_string()
        );
        assert!(body(response).await.is_empty());
        assert_eq!(origin.calls(), n);
    }
    assert_eq!(origin.methods(), [Method::GET, Method::GET]);
}

#[tokio::test]
async fn purge_and_invalidate_remove_entries() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer_over(redis_store(&server).await).build().unwrap();
    let service = layer.layer_service(origin.service());
    let handle: CacheHandle = layer.handle();
    for i in 0..25 {
        call(&service, post(&format!(r#"{{"i":{i}}}"#))).await;
    }
    server.command(&[b"SET", b"other:key", b"kept"]);
    assert!(handle.invalidate(&post_bytes(r#"{"i":0}"#)).await.unwrap());
    assert!(!handle.invalidate(&post_bytes(r#"{"i":0}"#)).await.unwrap());
    assert!(matches!(
        outcome(&call(&service, post(r#"{"i":0}"#)).await),
        CacheOutcome::Miss { .. }
    ));
    // The 25 entries and their URI's tag set, through which a write to the URI finds them.
    assert_eq!(handle.purge().await.unwrap(), 26);
    assert_eq!(
        server.command(&[b"DBSIZE"]),
        b":1\r\n",
        "only the foreign key is left"
    );
}

/// The windows of one entry, walked through with paused time: fresh, stale (served while a refresh runs),
/// stale-if-error only, gone.
/// From a key's third read on, a thread answers it from the entry head it keeps, with the headers of its latest
/// answer while `ttl` and `age` stay the same: every hit must still be the entry's answer, `Age` and
/// `Cache-Status` following the clock.
#[tokio::test(start_paused = true)]
async fn repeated_hits_answer_alike_as_the_clock_moves() {
    let origin = Origin::new();
    origin.add_header("x-multi", "one");
    origin.add_header("x-multi", "two");
    let layer = layer_over(MemoryStore::new(1 << 20))
        .fresh_for(Duration::from_secs(60))
        .build()
        .unwrap();
    let service = layer.layer_service(origin.service());
    let query = || post(r#"{"q":"hot"}"#);
    assert!(matches!(
        outcome(&call(&service, query()).await),
        CacheOutcome::Miss { stored: true, .. }
    ));
    for hit in 1..=8 {
        if hit == 6 {
            tokio::time::advance(Duration::from_secs(3)).await;
        }
        let (age, ttl) = if hit < 6 { ("0", 60) } else { ("3", 57) };
        let response = call(&service, query()).await;
        assert_eq!(outcome(&response), CacheOutcome::Hit, "hit {hit}");
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers.len(), 5, "hit {hit}: {headers:?}");
        assert_eq!(headers["content-type"], "application/json");
        let multi: Vec<_> = headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["one", "two"], "hit {hit}");
        assert_eq!(headers["age"], age, "hit {hit}");
        assert_eq!(
            cache_status(&response),
            format!("tower-redis-cache; hit; ttl={ttl}"),
            "hit {hit}"
        );
        assert_eq!(&body(response).await[..], br#"{"n":1,"echo":{"q":"hot"}}"#);
    }
    assert_eq!(origin.calls(), 1);
    assert_eq!(layer.handle().stats().hits, 8);
}

#[tokio::test(start_paused = true)]
async fn freshness_windows_follow_paused_time() {
    let origin = Origin::new();
    let layer = layer_over(MemoryStore::new(1 << 20))
        .fresh_for(Duration::from_secs(60))
        .stale_for(Duration::from_secs(60))
        .stale_if_error_for(Duration::from_secs(300))
        .build()
        .unwrap();
    let service = layer.layer_service(origin.service());
    let query = || post(r#"{"q":"clock"}"#);
    assert!(matches!(
        outcome(&call(&service, query()).await),
        CacheOutcome::Miss { stored: true, .. }
    ));

    tokio::time::advance(Duration::from_secs(59)).await;
    let fresh = call(&service, query()).await;
    assert_eq!(cache_status(&fresh), "tower-redis-cache; hit; ttl=1");
    assert_eq!(fresh.headers()["age"], "59");

    // From here on the origin fails, so no refresh replaces the entry.
    origin.fail_with(StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::advance(Duration::from_secs(2)).await;
    let stale = call(&service, query()).await;
    assert_eq!(outcome(&stale), CacheOutcome::Stale { refreshing: true });
    assert_eq!(
        cache_status(&stale),
        "tower-redis-cache; hit; ttl=-1; detail=refreshing"
    );
    wait_until("the refresh failed", || {
        layer.handle().stats().refreshes_failed == 1
    })
    .await;

    tokio::time::advance(Duration::from_secs(60)).await;
    let on_error = call(&service, query()).await;
    assert_eq!(outcome(&on_error), CacheOutcome::StaleIfError);
    // 121 s and the few virtual milliseconds the wait for the refresh took: ttl=-62.
    assert_eq!(
        cache_status(&on_error),
        "tower-redis-cache; fwd=stale; fwd-status=503; ttl=-62"
    );
    assert_eq!(
        &body(on_error).await[..],
        br#"{"n":1,"echo":{"q":"clock"}}"#
    );

    tokio::time::advance(Duration::from_secs(300)).await;
    let gone = call(&service, query()).await;
    assert_eq!(gone.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(matches!(
        outcome(&gone),
        CacheOutcome::Miss { stored: false, .. }
    ));
}

/// A JSON query of about `bytes` bytes, which the test origin echoes in its answer: rows, as reports have.
#[cfg(feature = "compression")]
fn report_query(bytes: usize) -> String {
    let rows: Vec<String> = (0..bytes / 40)
        .map(|i| format!(r#"{{"id":{i},"state":"open","team":"t-{}"}}"#, i % 9))
        .collect();
    format!(r#"{{"rows":[{}]}}"#, rows.join(","))
}

#[cfg(feature = "compression")]
#[tokio::test]
async fn compressed_entries_take_a_fraction_of_redis_and_answer_every_reader_the_same_bytes() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let compressing = layer_over(redis_store(&server).await)
        .compress_above(1024)
        .build()
        .unwrap();
    // Another process of the same cache that does not compress: it reads what the first stored.
    let plain = layer_over(redis_store(&server).await).build().unwrap();
    let (service, reader) = (
        compressing.layer_service(origin.service()),
        plain.layer_service(origin.service()),
    );
    let stored = |query: &str| {
        let key = compressing.handle().key_for(&post_bytes(query));
        bulk_payload(&server.command(&[b"GET", key.as_str().as_bytes()])).unwrap()
    };

    let query = report_query(64 << 10);
    let first = call(&service, post(&query)).await;
    assert!(matches!(
        outcome(&first),
        CacheOutcome::Miss { stored: true, .. }
    ));
    let headers = first.headers().clone();
    let answer = body(first).await;
    assert!(answer.len() > 48 << 10, "{}", answer.len());
    let value = stored(&query);
    assert!(value.starts_with(b"\xffTRC\x03"), "stored compressed");
    // What the entry would have taken raw: its body, its one header (`content-type: application/json`) and
    // the framing.
    let raw = answer.len() + "content-type".len() + "application/json".len() + 6 + ENTRY_OVERHEAD;
    let stats = compressing.handle().stats();
    assert_eq!(
        (stats.stored_bytes, stats.compression_saved_bytes),
        (value.len() as u64, (raw - value.len()) as u64)
    );
    assert!(
        value.len() * 4 < answer.len(),
        "{} bytes in Redis for a {}-byte answer",
        value.len(),
        answer.len()
    );

    // Hits, through the memo of kept heads from the third on, answer the bytes and headers of the miss.
    for _ in 0..4 {
        let hit = call(&service, post(&query)).await;
        assert_eq!(outcome(&hit), CacheOutcome::Hit);
        assert_eq!(hit.headers()["content-type"], headers["content-type"]);
        assert_eq!(body(hit).await, answer);
    }
    let other = call(&reader, post(&query)).await;
    assert_eq!(outcome(&other), CacheOutcome::Hit);
    assert_eq!(body(other).await, answer);
    assert_eq!(origin.calls(), 1);

    // A small answer is stored as it is.
    let small = r#"{"q":"small"}"#;
    call(&service, post(small)).await;
    let value = stored(small);
    assert!(value.starts_with(b"\xffTRC\x02") && value.ends_with(br#"{"q":"small"}}"#));
    assert_eq!(plain.handle().stats().decode_errors, 0);
}

#[tokio::test]
async fn requests_differing_only_in_ignored_query_parameters_share_an_entry() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer_over(redis_store(&server).await)
        .ignore_query_params(["utm_*", "_"])
        .build()
        .unwrap();
    let service = layer.layer_service(origin.service());
    let get = |uri: &str| {
        Request::get(uri)
            .body(Full::new(bytes::Bytes::new()))
            .unwrap()
    };

    let first = call(&service, get("http://api.test/report?id=1&utm_source=mail")).await;
    assert!(matches!(
        outcome(&first),
        CacheOutcome::Miss { stored: true, .. }
    ));
    for uri in [
        "http://api.test/report?utm_source=web&id=1",
        "http://api.test/report?id=1&_=1733059200",
        "http://api.test/report?id=1",
    ] {
        assert_eq!(
            outcome(&call(&service, get(uri)).await),
            CacheOutcome::Hit,
            "{uri}"
        );
    }
    assert_eq!(origin.calls(), 1);
    let other = call(&service, get("http://api.test/report?id=2&utm_source=mail")).await;
    assert!(matches!(outcome(&other), CacheOutcome::Miss { .. }));
    assert_eq!(origin.calls(), 2);

    let refused = layer_over(redis_store(&server).await)
        .ignore_query_params(["*"])
        .build()
        .unwrap_err();
    assert_eq!(
        refused.setting(),
        tower_redis_cache::error::Setting::IgnoreQueryParams
    );

    // A parameter that carries credentials is never left out, however it is spelled, unless a partition says
    // whom every request acts for.
    for (names, credential) in [
        (&["utm_*", "access_token"][..], "access_token"),
        (&["API-Key"], "api_key"),
        (&["X-Amz-*"], "x_amz_signature"),
        (&["sig*"], "signature"),
        (&["k*"], "key"),
        (&["accessToken"], "access_token"),
    ] {
        let refused = layer_over(redis_store(&server).await)
            .ignore_query_params(names.iter().copied())
            .build()
            .unwrap_err();
        assert_eq!(
            refused.setting(),
            tower_redis_cache::error::Setting::IgnoreQueryParams,
            "{names:?}"
        );
        assert!(
            refused.to_string().contains(&format!("`{credential}`")),
            "{names:?}: {refused}"
        );
    }
    let presigned = layer_over(redis_store(&server).await)
        .credentials(tower_redis_cache::cache::Credentials::Partition)
        .partition("reports-service")
        .ignore_query_params(["X-Amz-*"])
        .build()
        .unwrap();
    let service = presigned.layer_service(origin.service());
    let calls = origin.calls();
    for signature in ["a1", "b2"] {
        call(
            &service,
            get(&format!(
                "http://api.test/report.csv?X-Amz-Signature={signature}"
            )),
        )
        .await;
    }
    assert_eq!(origin.calls(), calls + 1);
}

#[tokio::test]
async fn queries_differing_only_in_ignored_body_members_share_an_entry() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = layer_over(redis_store(&server).await)
        .ignore_body_fields(["/requestId", "/client/sentAt"])
        .build()
        .unwrap();
    let service = layer.layer_service(origin.service());

    let first = call(
        &service,
        post(r#"{"q":"orders","requestId":"r-1","client":{"app":"web","sentAt":1}}"#),
    )
    .await;
    assert!(matches!(
        outcome(&first),
        CacheOutcome::Miss { stored: true, .. }
    ));
    // The origin saw the body whole.
    assert!(
        body(first)
            .await
            .ends_with(br#""requestId":"r-1","client":{"app":"web","sentAt":1}}}"#)
    );
    let again = call(
        &service,
        post(r#"{"client":{"sentAt":2,"app":"web"},"requestId":"r-2","q":"orders"}"#),
    )
    .await;
    assert_eq!(outcome(&again), CacheOutcome::Hit);
    assert_eq!(origin.calls(), 1);
    for other in [
        r#"{"q":"refunds","requestId":"r-3","client":{"app":"web","sentAt":3}}"#,
        r#"{"q":"orders","requestId":"r-4","client":{"app":"cli","sentAt":4}}"#,
    ] {
        assert!(matches!(
            outcome(&call(&service, post(other)).await),
            CacheOutcome::Miss { .. }
        ));
    }
    assert_eq!(origin.calls(), 3);

    let refused = layer_over(redis_store(&server).await)
        .ignore_body_fields(["requestId"])
        .build()
        .unwrap_err();
    assert_eq!(
        refused.setting(),
        tower_redis_cache::error::Setting::IgnoreBodyFields
    );
    for pointer in [
        "/apiKey",
        "/auth/access_token",
        "/session",
        "/a~1b/Client-Secret",
        "/clientSecret",
    ] {
        let refused = layer_over(redis_store(&server).await)
            .ignore_body_fields(["/requestId", pointer])
            .build()
            .unwrap_err();
        assert_eq!(
            refused.setting(),
            tower_redis_cache::error::Setting::IgnoreBodyFields,
            "{pointer}"
        );
    }
    // A member inside one named like a credential is not one.
    layer_over(redis_store(&server).await)
        .ignore_body_fields(["/auth/requestId"])
        .ignore_query_params(["_", "_*", "utm_*", "keyword"])
        .build()
        .unwrap();
}

/// A memory store whose tag table is full refuses new tags: those answers are not stored, but the store is not
/// taken for failing, so the circuit breaker stays shut and the entries stored before keep answering.
#[tokio::test]
async fn a_full_tag_table_costs_the_new_fills_not_the_hits() {
    use tower_redis_cache::Store;
    // The smallest tag table: 1,024 members.
    let store = MemoryStore::new(256 * 1024);
    let origin = Origin::new();
    let layer = layer_over(store.clone())
        // Two tags a fill: two refusals each time, beside its three calls that succeed.
        .tags(|_| vec!["everything".to_owned(), "queries".to_owned()])
        .build()
        .unwrap();
    let service = layer.layer_service(origin.service());
    let read = |body: &'static str| call(&service, post(body));
    assert!(matches!(
        outcome(&read(r#"{"q":0}"#).await),
        CacheOutcome::Miss { stored: true, .. }
    ));
    let day = Duration::from_secs(86_400);
    // Filled up by other tagged entries (held in the store: members of entries gone would make room), each in
    // four tags, so that the entries fit in the store.
    let mut n = 0;
    'fill: loop {
        let key = format!("k{n}");
        store
            .set(&key, bytes::Bytes::from_static(b"v"), day)
            .await
            .unwrap();
        for tag in 0..4 {
            let tag = format!("test:v1:tag:{{other{tag}}}");
            if store.tag(&tag, &key, day, u64::MAX).await.is_err() {
                break 'fill;
            }
        }
        n += 1;
        assert!(n < 512, "the table takes at most 1,024 members");
    }
    for n in 1..=10 {
        let body: &'static str = Box::leak(format!(r#"{{"q":{n}}}"#).into_boxed_str());
        let unstored = read(body).await;
        assert!(
            matches!(outcome(&unstored), CacheOutcome::Miss { stored: false, .. }),
            "{}",
            cache_status(&unstored)
        );
    }
    assert_eq!(outcome(&read(r#"{"q":0}"#).await), CacheOutcome::Hit);
    assert_eq!(layer.handle().stats().hits, 1);
}

/// The request an origin of these tests receives, and what it answers.
type OriginRequest = Request<tower_redis_cache::RequestBody>;
type OriginAnswer = Result<http::Response<Full<bytes::Bytes>>, tower_redis_cache::error::BoxError>;

/// An origin as [`counted_origin`] makes it: a service a cache layer wraps, cloned for each call.
trait CountedOrigin:
    tower::Service<
        OriginRequest,
        Response = http::Response<Full<bytes::Bytes>>,
        Error = tower_redis_cache::error::BoxError,
        Future: Send,
    > + Clone
    + Send
    + 'static
{
}

impl<S> CountedOrigin for S where
    S: tower::Service<
            OriginRequest,
            Response = http::Response<Full<bytes::Bytes>>,
            Error = tower_redis_cache::error::BoxError,
            Future: Send,
        > + Clone
        + Send
        + 'static
{
}

/// An origin that counts its calls and answers the `n`th (from 1) with `answer(n, request)`, after 10 ms: with
/// Tokio's time paused, callers arriving together find the call running.
fn counted_origin<F, A>(answer: F) -> (Arc<AtomicUsize>, impl CountedOrigin)
where
    F: Fn(usize, OriginRequest) -> A + Clone + Send + 'static,
    A: std::future::Future<Output = OriginAnswer> + Send,
{
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let service = tower::service_fn(move |request: OriginRequest| {
        let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = answer.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            answer(n, request).await
        }
    });
    (calls, service)
}

/// [`layer_over`] `store`, storing only GraphQL answers without errors (`store_when(graphql::is_success)`).
fn graphql_layer(
    store: impl tower_redis_cache::Store,
) -> tower_redis_cache::cache::RedisCacheLayerBuilder {
    layer_over(store).store_when(|_, _, body| tower_redis_cache::cache::graphql::is_success(body))
}

/// What a GraphQL server answers its `n`th call: an error inside a `200` (as a resolver that timed out gives)
/// when `fails(n)`, data otherwise; each answer says which call it was. For [`counted_origin`].
fn graphql_answers(
    fails: fn(usize) -> bool,
) -> impl Fn(usize, OriginRequest) -> futures_util::future::BoxFuture<'static, OriginAnswer> + Clone + Send
{
    move |n, _| {
        let body = if fails(n) {
            format!(
                r#"{{"data":{{"items":null}},"errors":[{{"message":"timed out","call":{n}}}]}}"#
            )
        } else {
            format!(r#"{{"data":{{"items":[{n}]}}}}"#)
        };
        let response = http::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(body)));
        Box::pin(async move { Ok(response?) })
    }
}

#[tokio::test]
async fn an_answer_store_when_refuses_is_answered_unstored_and_the_next_call_asks_again() {
    let server = RedisServer::start();
    let (calls, origin) = counted_origin(graphql_answers(|n| n == 1));
    let layer = graphql_layer(redis_store(&server).await).build().unwrap();
    let service = layer.layer_service(origin);
    let handle = layer.handle();
    let query = r#"{"query":"{ items }"}"#;
    let key = handle.key_for(&post_bytes(query));

    let refused = call(&service, post(query)).await;
    assert_eq!(
        outcome(&refused),
        CacheOutcome::Miss {
            collapsed: false,
            stored: false
        }
    );
    assert_eq!(
        cache_status(&refused),
        "tower-redis-cache; fwd=uri-miss; fwd-status=200; detail=response-refused"
    );
    assert!(
        body(refused)
            .await
            .starts_with(br#"{"data":{"items":null},"errors""#)
    );
    assert_eq!(handle.stats().not_stored_for(NotStored::Refused), 1);
    // Neither an entry nor a marker that would send the next misses past the fleet's lease: an error is passing.
    assert_eq!(
        server.command(&[b"EXISTS", key.as_str().as_bytes()]),
        b":0\r\n"
    );

    let stored = call(&service, post(query)).await;
    assert_eq!(
        outcome(&stored),
        CacheOutcome::Miss {
            collapsed: false,
            stored: true
        }
    );
    assert_eq!(&body(stored).await[..], br#"{"data":{"items":[2]}}"#);
    let hit = call(&service, post(query)).await;
    assert_eq!(outcome(&hit), CacheOutcome::Hit);
    assert_eq!(&body(hit).await[..], br#"{"data":{"items":[2]}}"#);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(handle.stats().uncacheable_misses, 0);
}

#[tokio::test(start_paused = true)]
async fn callers_coalesced_onto_a_refused_answer_share_it() {
    let (calls, origin) = counted_origin(graphql_answers(|n| n == 1));
    let layer = graphql_layer(MemoryStore::new(1 << 20)).build().unwrap();
    let service = layer.layer_service(origin);
    let query = r#"{"query":"{ items }"}"#;
    let callers: Vec<_> = (0..5)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                let response = call(&service, post(query)).await;
                (outcome(&response), body(response).await)
            })
        })
        .collect();
    let mut collapsed = 0;
    for caller in callers {
        let (outcome, body) = caller.await.unwrap();
        let CacheOutcome::Miss {
            collapsed: c,
            stored: false,
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        collapsed += usize::from(c);
        assert!(body.ends_with(br#""call":1}]}"#), "{body:?}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one origin call for five callers"
    );
    assert_eq!(collapsed, 4);
    assert_eq!(
        outcome(&call(&service, post(query)).await),
        CacheOutcome::Miss {
            collapsed: false,
            stored: true
        }
    );
}

#[tokio::test(start_paused = true)]
async fn an_entry_in_its_stale_if_error_window_answers_for_a_refused_answer() {
    let (calls, origin) = counted_origin(graphql_answers(|n| n > 1));
    let layer = stale_if_error_only(graphql_layer(MemoryStore::new(1 << 20)))
        .build()
        .unwrap();
    let service = layer.layer_service(origin);
    let query = r#"{"query":"{ items }"}"#;
    let data = br#"{"data":{"items":[1]}}"#;
    assert_eq!(&body(call(&service, post(query)).await).await[..], data);

    // Three callers together: one origin call, an error inside a `200`, and the entry answers each of them, the
    // two coalesced onto the call as well as the one that made it.
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                let response = call(&service, post(query)).await;
                (
                    outcome(&response),
                    cache_status(&response),
                    body(response).await,
                )
            })
        })
        .collect();
    for caller in callers {
        let (outcome, status, body) = caller.await.unwrap();
        assert_eq!(outcome, CacheOutcome::StaleIfError, "{status}");
        assert!(
            status.starts_with("tower-redis-cache; fwd=stale; fwd-status=200; ttl=")
                && status.ends_with("; detail=response-refused"),
            "{status}"
        );
        assert_eq!(&body[..], data);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(layer.handle().stats().stale_if_error, 3);

    // Past the window, the error reaches its caller.
    tokio::time::advance(Duration::from_secs(61)).await;
    let late = call(&service, post(query)).await;
    assert_eq!(
        outcome(&late),
        CacheOutcome::Miss {
            collapsed: false,
            stored: false
        }
    );
    assert!(body(late).await.ends_with(br#""call":3}]}"#));
}

/// `bytes` gzipped, as an origin answers a client that sent `Accept-Encoding: gzip`.
#[cfg(feature = "decompress")]
fn gzip(bytes: &[u8]) -> bytes::Bytes {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap().into()
}

/// `answers`, each body sent as `encode` makes it, under `Content-Encoding: gzip` (and its `Content-Length`, if
/// the answer had one). For [`counted_origin`].
#[cfg(feature = "decompress")]
fn gzipped(
    answers: impl Fn(usize, OriginRequest) -> futures_util::future::BoxFuture<'static, OriginAnswer>
    + Clone
    + Send,
    encode: fn(usize, &[u8]) -> bytes::Bytes,
) -> impl Fn(usize, OriginRequest) -> futures_util::future::BoxFuture<'static, OriginAnswer> + Clone + Send
{
    use http_body_util::BodyExt;
    move |n, request| {
        let answer = answers(n, request);
        Box::pin(async move {
            let (mut parts, plain) = answer.await?.into_parts();
            let plain = plain.collect().await?.to_bytes();
            let encoded = encode(n, &plain);
            parts.headers.insert("content-encoding", "gzip".parse()?);
            if parts.headers.contains_key("content-length") {
                parts.headers.insert("content-length", encoded.len().into());
            }
            Ok(http::Response::from_parts(parts, Full::new(encoded)))
        })
    }
}

/// [`post`] from a client that takes gzip.
#[cfg(feature = "decompress")]
fn post_gzip(query: &str) -> Request<Full<bytes::Bytes>> {
    let mut request = post(query);
    request
        .headers_mut()
        .insert("accept-encoding", "gzip".parse().unwrap());
    request
}

#[cfg(feature = "decompress")]
#[tokio::test]
async fn store_when_judges_a_gzipped_answer_decoded_and_the_entry_keeps_it_as_it_came() {
    let server = RedisServer::start();
    let (calls, origin) =
        counted_origin(gzipped(graphql_answers(|n| n == 1), |_, plain| gzip(plain)));
    let layer = graphql_layer(redis_store(&server).await).build().unwrap();
    let service = layer.layer_service(origin);
    let query = r#"{"query":"{ items }"}"#;

    // An error inside the `200`, read through its gzip: refused.
    let refused = call(&service, post_gzip(query)).await;
    assert_eq!(
        cache_status(&refused),
        "tower-redis-cache; fwd=uri-miss; fwd-status=200; detail=response-refused"
    );
    let errors = br#"{"data":{"items":null},"errors":[{"message":"timed out","call":1}]}"#;
    assert_eq!(body(refused).await, gzip(errors));
    assert_eq!(layer.handle().stats().not_stored_for(NotStored::Refused), 1);

    // Data: stored, and the hit answers the bytes the origin sent, in their coding.
    let stored = call(&service, post_gzip(query)).await;
    assert_eq!(
        outcome(&stored),
        CacheOutcome::Miss {
            collapsed: false,
            stored: true
        }
    );
    let data = gzip(br#"{"data":{"items":[2]}}"#);
    assert_eq!(body(stored).await, data);
    let hit = call(&service, post_gzip(query)).await;
    assert_eq!(outcome(&hit), CacheOutcome::Hit);
    assert_eq!(hit.headers()["content-encoding"], "gzip");
    assert_eq!(body(hit).await, data);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[cfg(feature = "decompress")]
#[tokio::test(start_paused = true)]
async fn a_gzipped_answer_that_does_not_decode_within_the_cap_is_passed_on_unjudged_and_unstored() {
    // The second answer is no gzip at all; the third decodes to more than the 64 KiB cap (from 150 bytes or so).
    let encode = |n, plain: &[u8]| match n {
        2 => bytes::Bytes::from_static(b"not gzip"),
        3 => {
            let mut big = plain.to_vec();
            big.extend(std::iter::repeat_n(b' ', 100_000));
            gzip(&big)
        }
        _ => gzip(plain),
    };
    let (calls, origin) = counted_origin(gzipped(graphql_answers(|_| false), encode));
    let judged = Arc::new(AtomicUsize::new(0));
    let counted = judged.clone();
    let layer = stale_if_error_only(layer_over(MemoryStore::new(1 << 20)))
        .max_body_size(64 << 10)
        .store_when(move |_, _, body| {
            counted.fetch_add(1, Ordering::SeqCst);
            tower_redis_cache::cache::graphql::is_success(body)
        })
        .build()
        .unwrap();
    let service = layer.layer_service(origin);
    let query = r#"{"query":"{ items }"}"#;
    let first = call(&service, post_gzip(query)).await;
    assert_eq!(
        outcome(&first),
        CacheOutcome::Miss {
            collapsed: false,
            stored: true
        }
    );

    // Neither is judged, nor taken for an error: the entry in its stale-if-error window does not answer for it.
    for n in [2, 3] {
        let response = call(&service, post_gzip(query)).await;
        assert_eq!(
            cache_status(&response),
            "tower-redis-cache; fwd=uri-miss; fwd-status=200; detail=response-undecodable",
            "answer {n}"
        );
        let sent = encode(n, format!(r#"{{"data":{{"items":[{n}]}}}}"#).as_bytes());
        assert_eq!(body(response).await, sent, "answer {n}");
    }
    let stats = layer.handle().stats();
    assert_eq!(stats.not_stored_for(NotStored::Undecodable), 2);
    assert_eq!(stats.stale_if_error, 0);
    assert_eq!(judged.load(Ordering::SeqCst), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[cfg(feature = "decompress")]
#[tokio::test(start_paused = true)]
async fn callers_still_share_the_calls_of_a_key_whose_answer_did_not_decode() {
    let not_gzip = |_, _: &[u8]| bytes::Bytes::from_static(b"not gzip");
    let (calls, origin) = counted_origin(gzipped(graphql_answers(|_| false), not_gzip));
    let layer = graphql_layer(MemoryStore::new(1 << 20)).build().unwrap();
    let service = layer.layer_service(origin);
    let query = r#"{"query":"{ items }"}"#;
    let first = call(&service, post_gzip(query)).await;
    assert!(cache_status(&first).ends_with("detail=response-undecodable"));

    // The key's marker sends misses to the origin without waiting on the fleet, but callers in one process still
    // share one call, as the origin's answer is anyone's.
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { body(call(&service, post_gzip(query)).await).await })
        })
        .collect();
    for caller in callers {
        assert_eq!(&caller.await.unwrap()[..], b"not gzip");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        layer.handle().stats().uncacheable_misses,
        3,
        "each found the marker"
    );
}

#[tokio::test(start_paused = true)]
async fn store_when_refusing_answers_it_read_encoded_is_warned_of_once() {
    let warnings = support::logs::warnings();
    // First a plain answer it refuses, then an answer in a coding no build decodes that it stores anyway (its
    // bytes happen to read as JSON): neither is warned of, which would leave no warning for those after, in
    // a coding whose name picks this test's warning out of the binary's.
    let (calls, origin) = counted_origin(|n, _| async move {
        let (coding, body) = match n {
            1 => (None, format!("{n}: no JSON to read")),
            2 => (Some("x-stored-encoded"), r#"{"data":{"a":1}}"#.to_owned()),
            _ => (Some("x-refused-encoded"), format!("{n}: no JSON to read")),
        };
        let mut response = http::Response::builder();
        if let Some(coding) = coding {
            response = response.header("content-encoding", coding);
        }
        Ok(response.body(Full::new(bytes::Bytes::from(body)))?)
    });
    let layer = graphql_layer(MemoryStore::new(1 << 20)).build().unwrap();
    let service = layer.layer_service(origin);
    let plain = call(&service, post(r#"{"query":"{ plain }"}"#)).await;
    assert!(cache_status(&plain).ends_with("detail=response-refused"));
    let stored = cache_status(&call(&service, post(r#"{"query":"{ stored }"}"#)).await);
    assert!(stored.ends_with("; stored"), "{stored}");
    for query in [r#"{"query":"{ a }"}"#, r#"{"query":"{ b }"}"#] {
        let refused = call(&service, post(query)).await;
        assert!(cache_status(&refused).ends_with("detail=response-refused"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(support::logs::containing(&warnings, "x-stored-encoded").is_empty());
    let warned = support::logs::containing(&warnings, "x-refused-encoded");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains("`store_when` refused an answer it read still in its Content-Encoding"),
        "{warned:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn query_when_refusing_bodies_it_read_encoded_is_warned_of_once() {
    use tower_redis_cache::cache::graphql;
    let warnings = support::logs::warnings();
    let (calls, origin) = counted_origin(|_, _| async move {
        Ok(http::Response::new(Full::new(bytes::Bytes::from_static(
            b"{}",
        ))))
    });
    let layer = layer_over(MemoryStore::new(1 << 20))
        .query_when(|_, body| graphql::is_query(body))
        .build()
        .unwrap();
    let service = layer.layer_service(origin);
    // Refused, but read as it is meant: no coding to blame, nothing said (the warning is said once a layer, so
    // one said here would leave none for the encoded bodies below).
    let plain = call(&service, post(r#"{"query":"mutation { a }"}"#)).await;
    assert_eq!(
        cache_status(&plain),
        "tower-redis-cache; fwd=method; detail=not-a-query"
    );
    // In a coding no build decodes, which names this test's warning among the binary's: each taken for a write.
    for n in 0..2 {
        let (parts, _) = post("").into_parts();
        let mut encoded = Request::from_parts(parts, Full::new(format!("\x1f{n}").into()));
        encoded
            .headers_mut()
            .insert("content-encoding", "x-query-encoded".parse().unwrap());
        let refused = call(&service, encoded).await;
        assert_eq!(
            cache_status(&refused),
            "tower-redis-cache; fwd=method; detail=not-a-query"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let warned = support::logs::containing(&warnings, "x-query-encoded");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0]
            .contains("`query_when` refused a request body it read still in its Content-Encoding"),
        "{warned:?}"
    );
}

/// What a JSON-RPC server answers its `n`th call: the call's `id`, with `Content-Length` and an `ETag`, or a `304`
/// when the call holds the first answer's tag; with `coding`, the answer says it is in that `Content-Encoding`.
/// For [`counted_origin`].
fn rpc_answers(
    coding: Option<&'static str>,
) -> impl Fn(usize, OriginRequest) -> futures_util::future::BoxFuture<'static, OriginAnswer> + Clone + Send
{
    use http_body_util::BodyExt;
    move |n, request| {
        Box::pin(async move {
            // The first answer is still current: asked with its tag, a `POST` is refused, as RFC 9110 §13.1.2
            // has a server answer a precondition on a method that is not safe.
            if request
                .headers()
                .get("if-none-match")
                .is_some_and(|tag| tag == "\"1\"")
            {
                let response = http::Response::builder().status(412);
                return Ok(response.body(Full::default())?);
            }
            let body = request.into_body().collect().await?.to_bytes();
            let call: serde_json::Value = serde_json::from_slice(&body)?;
            let answer =
                serde_json::json!({"jsonrpc": "2.0", "result": format!("0x{n}"), "id": call["id"]});
            let answer = bytes::Bytes::from(answer.to_string());
            let mut response = http::Response::builder()
                .header("content-type", "application/json")
                .header("content-length", answer.len())
                .header("etag", format!("\"{n}\""));
            if let Some(coding) = coding {
                response = response.header("content-encoding", coding);
            }
            Ok(response.body(Full::new(answer))?)
        })
    }
}

/// What a JSON-RPC server answers a batch, its `n`th call: each call's answer with its `id`, in the calls' order,
/// or reversed (JSON-RPC lets a server answer a batch in any order). For [`counted_origin`].
fn rpc_batch_answers(
    reversed: bool,
) -> impl Fn(usize, OriginRequest) -> futures_util::future::BoxFuture<'static, OriginAnswer> + Clone + Send
{
    use http_body_util::BodyExt;
    move |n, request| {
        Box::pin(async move {
            let body = request.into_body().collect().await?.to_bytes();
            let calls: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
            let mut answers: Vec<serde_json::Value> = calls
                .iter()
                .enumerate()
                .map(
                    |(i, call)| serde_json::json!({"result": format!("{n}.{i}"), "id": call["id"]}),
                )
                .collect();
            if reversed {
                answers.reverse();
            }
            let answer = serde_json::Value::Array(answers).to_string();
            Ok(http::Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(bytes::Bytes::from(answer)))?)
        })
    }
}

#[tokio::test]
async fn a_batch_is_answered_from_another_batch_of_the_same_calls_with_its_own_ids() {
    let server = RedisServer::start();
    let (calls, origin) = counted_origin(rpc_batch_answers(false));
    let layer = layer_over(redis_store(&server).await)
        .echo_body_field("id")
        .build()
        .unwrap();
    let service = layer.layer_service(origin);
    let batch = |a: &str, b: &str| {
        rpc(&format!(
            r#"[{{"method":"eth_chainId","id":{a}}},{{"method":"eth_blockNumber","id":{b}}}]"#
        ))
    };
    let first = call(&service, batch("1", "2")).await;
    assert!(matches!(
        outcome(&first),
        CacheOutcome::Miss { stored: true, .. }
    ));
    assert_eq!(
        &body(first).await[..],
        br#"[{"id":1,"result":"1.0"},{"id":2,"result":"1.1"}]"#
    );
    let hit = call(&service, batch("7", r#""b""#)).await;
    assert_eq!(outcome(&hit), CacheOutcome::Hit);
    assert_eq!(
        &body(hit).await[..],
        br#"[{"id":7,"result":"1.0"},{"id":"b","result":"1.1"}]"#
    );
    // The calls in another order are another batch.
    let swapped = call(
        &service,
        rpc(r#"[{"method":"eth_blockNumber","id":1},{"method":"eth_chainId","id":2}]"#),
    )
    .await;
    assert!(matches!(outcome(&swapped), CacheOutcome::Miss { .. }));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_batch_answered_out_of_order_is_neither_stored_nor_shared() {
    let (calls, origin) = counted_origin(rpc_batch_answers(true));
    let layer = layer_over(MemoryStore::new(1 << 20))
        .echo_body_field("id")
        .build()
        .unwrap();
    let service = layer.layer_service(origin);
    let batch = |a: u64| {
        let b = a + 1;
        rpc(&format!(
            r#"[{{"method":"eth_chainId","id":{a}}},{{"method":"eth_blockNumber","id":{b}}}]"#
        ))
    };
    let callers: Vec<_> = [1, 3]
        .into_iter()
        .map(|a| {
            let service = service.clone();
            tokio::spawn(async move { (a, call(&service, batch(a)).await) })
        })
        .collect();
    for caller in callers {
        let (a, response) = caller.await.unwrap();
        let status = cache_status(&response);
        assert!(status.ends_with("detail=response-unordered"), "{status}");
        let answers: serde_json::Value = serde_json::from_slice(&body(response).await).unwrap();
        // The node's own answer, its own ids, in the node's order.
        assert_eq!(answers[0]["id"], a + 1, "{answers}");
        assert_eq!(answers[1]["id"], a, "{answers}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "each batch made its own call"
    );
    assert_eq!(
        layer.handle().stats().not_stored_for(NotStored::Unordered),
        2
    );
}

/// Sends a call of `method` for each of `ids` together, each on a task of its own; the answers, in order.
async fn rpc_together<S>(
    service: &S,
    method: &'static str,
    ids: impl IntoIterator<Item = u64>,
) -> Vec<(u64, support::calls::Reply)>
where
    S: support::calls::Cached + Send + Sync + 'static,
    S::Future: Send,
{
    let callers: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let service = service.clone();
            let request = rpc(&format!(
                r#"{{"jsonrpc":"2.0","method":"{method}","id":{id}}}"#
            ));
            tokio::spawn(async move { (id, call(&service, request).await) })
        })
        .collect();
    let mut answers = Vec::new();
    for caller in callers {
        answers.push(caller.await.unwrap());
    }
    answers
}

/// A gzipped answer decoded for an echoing call holds the in-flight budget for its decoded bytes while its fill is
/// written, not for the gzip it came in (which the decoded copy replaced), and gives it back once written.
#[cfg(feature = "decompress")]
#[tokio::test(start_paused = true)]
async fn a_decoded_answer_holds_the_budget_for_its_decoded_bytes_while_it_is_written() {
    let (_, origin) = counted_origin(gzipped(rpc_answers(None), |_, plain| gzip(plain)));
    let (store, journal, open) =
        support::store::JournalStore::holding_writes(MemoryStore::new(1 << 20));
    let layer = layer_over(store).echo_body_field("id").build().unwrap();
    let service = layer.layer_service(origin);
    let pending = {
        let service = service.clone();
        let request = rpc(r#"{"jsonrpc":"2.0","method":"eth_chainId","id":1}"#);
        tokio::spawn(async move { call(&service, request).await })
    };
    wait_until("the fill is written", || {
        journal.events().contains(&"set+release>")
    })
    .await;
    let decoded = serde_json::json!({"jsonrpc": "2.0", "result": "0x1", "id": 1}).to_string();
    assert_ne!(gzip(decoded.as_bytes()).len(), decoded.len());
    assert_eq!(layer.handle().stats().in_flight_bytes, decoded.len() as u64);
    open.send_replace(true);
    let answer = pending.await.unwrap();
    assert_eq!(
        outcome(&answer),
        CacheOutcome::Miss {
            collapsed: false,
            stored: true
        }
    );
    assert_eq!(body(answer).await, decoded.as_bytes());
    assert_eq!(layer.handle().stats().in_flight_bytes, 0);
}

fn rpc(body: &str) -> Request<Full<bytes::Bytes>> {
    Request::post("https://node.example/")
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap()
}

#[tokio::test]
async fn a_hit_carries_the_echoed_member_of_its_own_request() {
    let server = RedisServer::start();
    let (calls, origin) = counted_origin(rpc_answers(None));
    let layer = layer_over(redis_store(&server).await)
        .echo_body_field("id")
        .near_cache(1 << 20)
        .build()
        .unwrap();
    let service = layer.layer_service(origin);
    let chain_id = |id: &str| {
        rpc(&format!(
            r#"{{"jsonrpc":"2.0","method":"eth_chainId","id":{id}}}"#
        ))
    };

    let first = call(&service, chain_id("1")).await;
    assert!(matches!(
        outcome(&first),
        CacheOutcome::Miss { stored: true, .. }
    ));
    assert_eq!(
        &body(first).await[..],
        br#"{"id":1,"jsonrpc":"2.0","result":"0x1"}"#
    );
    for (id, expected) in [
        (
            r#""call-7""#,
            r#"{"id":"call-7","jsonrpc":"2.0","result":"0x1"}"#,
        ),
        (
            "1234567",
            r#"{"id":1234567,"jsonrpc":"2.0","result":"0x1"}"#,
        ),
        ("1", r#"{"id":1,"jsonrpc":"2.0","result":"0x1"}"#),
    ] {
        let hit = call(&service, chain_id(id)).await;
        assert_eq!(outcome(&hit), CacheOutcome::Hit, "{id}");
        let length = hit.headers()["content-length"].to_str().unwrap().to_owned();
        // The entry's bytes, untouched, keep their tag; others have none.
        assert_eq!(hit.headers().contains_key("etag"), id == "1", "{id}");
        let bytes = body(hit).await;
        assert_eq!(std::str::from_utf8(&bytes).unwrap(), expected);
        assert_eq!(length, bytes.len().to_string());
    }
    // Asked again: a `POST` carries no validators (on it, `If-None-Match` is a precondition a server answers
    // with `412`, RFC 9110 §13.1.2), so the origin answers whole; its answer, stored, carries the request's own
    // `id`, as a hit of it does.
    let mut again = chain_id("5");
    again
        .headers_mut()
        .insert("cache-control", "no-cache".parse().unwrap());
    let renewed = call(&service, again).await;
    assert_eq!(
        cache_status(&renewed),
        "tower-redis-cache; fwd=request; fwd-status=200; stored"
    );
    assert_eq!(
        &body(renewed).await[..],
        br#"{"id":5,"jsonrpc":"2.0","result":"0x2"}"#
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // From the near cache too, once its tracking is armed (a bounded poll).
    let mut near = None;
    for _ in 0..500 {
        let response = call(&service, chain_id(r#""near""#)).await;
        if cache_status(&response).ends_with("; detail=near") {
            near = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let near = near.expect("the near cache never answered");
    assert_eq!(
        &body(near).await[..],
        br#"{"id":"near","jsonrpc":"2.0","result":"0x2"}"#
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A notification (no `id`) shares no entry with the calls.
    let notification = call(&service, rpc(r#"{"jsonrpc":"2.0","method":"eth_chainId"}"#)).await;
    assert!(matches!(outcome(&notification), CacheOutcome::Miss { .. }));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // The key left the value out, and the handle's keys agree.
    let key = layer.handle().key_for(&post_rpc_bytes(
        r#"{"jsonrpc":"2.0","method":"eth_chainId","id":99}"#,
    ));
    assert_eq!(
        server.command(&[b"EXISTS", key.as_str().as_bytes()]),
        b":1\r\n"
    );
}

fn post_rpc_bytes(body: &str) -> Request<bytes::Bytes> {
    let (parts, _) = rpc(body).into_parts();
    Request::from_parts(parts, bytes::Bytes::from(body.to_owned()))
}

#[tokio::test(start_paused = true)]
async fn coalesced_callers_each_get_their_own_echoed_member() {
    let (calls, origin) = counted_origin(rpc_answers(None));
    let layer = layer_over(MemoryStore::new(1 << 20))
        .echo_body_field("id")
        .build()
        .unwrap();
    let service = layer.layer_service(origin);
    let mut collapsed = 0;
    for (id, response) in rpc_together(&service, "eth_gasPrice", 10..14).await {
        collapsed += usize::from(matches!(
            outcome(&response),
            CacheOutcome::Miss {
                collapsed: true,
                ..
            }
        ));
        let answer: serde_json::Value = serde_json::from_slice(&body(response).await).unwrap();
        assert_eq!(answer["id"], id, "{answer}");
        assert_eq!(answer["result"], "0x1");
    }
    assert_eq!(collapsed, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn an_encoded_answer_to_an_echoing_call_is_neither_stored_nor_shared() {
    // The answers say gzip and are not: with feature `decompress` too, they stay as they came.
    let (calls, origin) = counted_origin(rpc_answers(Some("gzip")));
    let layer = layer_over(MemoryStore::new(1 << 20))
        .echo_body_field("id")
        .build()
        .unwrap();
    let service = layer.layer_service(origin);
    for (id, response) in rpc_together(&service, "eth_chainId", 1..=3).await {
        let status = cache_status(&response);
        assert!(status.ends_with("detail=response-encoded"), "{status}");
        let answer: serde_json::Value = serde_json::from_slice(&body(response).await).unwrap();
        assert_eq!(answer["id"], id, "{answer}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "each caller made its own call"
    );
    assert_eq!(layer.handle().stats().not_stored_for(NotStored::Encoded), 3);
}

#[cfg(feature = "decompress")]
#[tokio::test(start_paused = true)]
async fn a_gzipped_answer_to_an_echoing_call_is_decoded_then_stored_and_shared() {
    let (calls, origin) = counted_origin(gzipped(rpc_answers(None), |_, plain| gzip(plain)));
    let layer = layer_over(MemoryStore::new(1 << 20))
        .echo_body_field("id")
        .build()
        .unwrap();
    let service = layer.layer_service(origin);
    let check = |id: u64, response: &support::calls::Reply| {
        assert!(!response.headers().contains_key("content-encoding"), "{id}");
        assert!(
            !response.headers().contains_key("etag"),
            "{id}: the tag named the gzip bytes"
        );
    };
    // Three callers together: one origin call, whose answer each gets decoded, with its own `id`.
    for (id, response) in rpc_together(&service, "eth_chainId", 1..=3).await {
        check(id, &response);
        let length = response.headers()["content-length"].clone();
        let answer = body(response).await;
        assert_eq!(length, answer.len().to_string().as_str(), "{id}");
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(
            answer,
            serde_json::json!({"jsonrpc": "2.0", "result": "0x1", "id": id})
        );
    }
    let hit = call(
        &service,
        rpc(r#"{"jsonrpc":"2.0","method":"eth_chainId","id":9}"#),
    )
    .await;
    assert_eq!(outcome(&hit), CacheOutcome::Hit);
    check(9, &hit);
    // The origin chose gzip by the request's `Accept-Encoding`, though it named none in `Vary`: the entry says so.
    assert_eq!(hit.headers()["vary"], "accept-encoding");
    assert_eq!(
        &body(hit).await[..],
        br#"{"id":9,"jsonrpc":"2.0","result":"0x1"}"#
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // So a client that takes no answer in no coding is not given that entry: the origin answers it, in gzip.
    let mut refusing = rpc(r#"{"jsonrpc":"2.0","method":"eth_chainId","id":10}"#);
    refusing
        .headers_mut()
        .insert("accept-encoding", "gzip, identity;q=0".parse().unwrap());
    let refusing = call(&service, refusing).await;
    assert!(
        matches!(outcome(&refusing), CacheOutcome::Miss { .. }),
        "{}",
        cache_status(&refusing)
    );
    assert_eq!(refusing.headers()["content-encoding"], "gzip");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A client that takes no answer in no coding gets the origin's as it came, which is then neither stored nor
    // shared.
    let mut gzip_only = rpc(r#"{"jsonrpc":"2.0","method":"eth_blockNumber","id":4}"#);
    gzip_only
        .headers_mut()
        .insert("accept-encoding", "gzip, identity;q=0".parse().unwrap());
    let encoded = call(&service, gzip_only).await;
    assert!(cache_status(&encoded).ends_with("detail=response-encoded"));
    assert_eq!(encoded.headers()["content-encoding"], "gzip");
    assert_eq!(
        body(encoded).await,
        gzip(br#"{"id":4,"jsonrpc":"2.0","result":"0x3"}"#)
    );
    assert_eq!(layer.handle().stats().not_stored_for(NotStored::Encoded), 2);
}

#[cfg(feature = "decompress")]
#[tokio::test(start_paused = true)]
async fn a_304_that_names_a_coding_keeps_an_echoing_calls_decoded_entry_as_it_is() {
    use http_body_util::BodyExt;
    const MODIFIED: &str = "Tue, 15 Nov 1994 08:12:31 GMT";
    // Answers in gzip, with a validator; a `304` to it that repeats the coding, as some servers do.
    let (calls, origin) = counted_origin(|_, request: OriginRequest| async move {
        let answer = http::Response::builder()
            .header("content-encoding", "gzip")
            .header("last-modified", MODIFIED);
        if request.headers().contains_key("if-modified-since") {
            return Ok(answer.status(304).body(Full::default())?);
        }
        let call: serde_json::Value =
            serde_json::from_slice(&request.into_body().collect().await?.to_bytes())?;
        let json = serde_json::json!({"jsonrpc": "2.0", "result": "0x1", "id": call["id"]});
        Ok(answer
            .header("content-type", "application/json")
            .body(Full::new(gzip(json.to_string().as_bytes())))?)
    });
    let layer = layer_over(MemoryStore::new(1 << 20))
        .methods([Method::from_bytes(b"QUERY").unwrap()])
        .fresh_for(Duration::from_secs(1))
        .stale_for(Duration::ZERO)
        .stale_if_error_for(Duration::ZERO)
        .echo_body_field("id")
        .build()
        .unwrap();
    let service = layer.layer_service(origin);
    let query = |id: u64| {
        Request::builder()
            .method("QUERY")
            .uri("https://node.example/")
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(format!(
                r#"{{"jsonrpc":"2.0","method":"eth_chainId","id":{id}}}"#
            ))))
            .unwrap()
    };
    let answer = |id: u64| format!(r#"{{"id":{id},"jsonrpc":"2.0","result":"0x1"}}"#);
    let first = call(&service, query(1)).await;
    assert!(
        cache_status(&first).ends_with("stored"),
        "{}",
        cache_status(&first)
    );
    assert_eq!(body(first).await, answer(1));

    // Past its freshness the entry, kept for its validator, is asked about: the `304` renews it, and its coding
    // does not label the decoded body.
    tokio::time::advance(Duration::from_secs(2)).await;
    let renewed = call(&service, query(2)).await;
    assert!(
        cache_status(&renewed).contains("fwd-status=304"),
        "{}",
        cache_status(&renewed)
    );
    assert!(!renewed.headers().contains_key("content-encoding"));
    assert_eq!(body(renewed).await, answer(2));
    let hit = call(&service, query(3)).await;
    assert_eq!(outcome(&hit), CacheOutcome::Hit);
    assert!(!hit.headers().contains_key("content-encoding"));
    assert_eq!(body(hit).await, answer(3));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A JSON `POST` of `json` to [`post`]'s URL, gzipped at `level`, as a client that compresses its request bodies
/// sends it (Elasticsearch's and OpenSearch's can).
#[cfg(feature = "decompress")]
fn post_gzipped(json: &str, level: u32) -> Request<Full<bytes::Bytes>> {
    post_gzip_stream(json, level, 0)
}

/// [`post_gzipped`] at level 6, its gzip stream cut short by its last 4 bytes (its length check).
#[cfg(feature = "decompress")]
fn post_gzip_cut(json: &str) -> Request<Full<bytes::Bytes>> {
    post_gzip_stream(json, 6, 4)
}

/// [`post_gzipped`], its gzip stream without its last `cut` bytes.
#[cfg(feature = "decompress")]
fn post_gzip_stream(json: &str, level: u32, cut: usize) -> Request<Full<bytes::Bytes>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    encoder.write_all(json.as_bytes()).unwrap();
    let mut gzipped = encoder.finish().unwrap();
    gzipped.truncate(gzipped.len() - cut);
    let (parts, _) = post(json).into_parts();
    let mut request = Request::from_parts(parts, Full::new(gzipped.into()));
    request
        .headers_mut()
        .insert("content-encoding", "gzip".parse().unwrap());
    request
}

/// The body of a request built by [`post_gzipped`] or [`post`], as it was sent.
async fn sent_body(request: Request<Full<bytes::Bytes>>) -> bytes::Bytes {
    use http_body_util::BodyExt;
    request.into_body().collect().await.unwrap().to_bytes()
}

/// What [`recording_origin`] keeps of each request: its `Content-Encoding` and body.
#[cfg(feature = "decompress")]
type Sent = Arc<std::sync::Mutex<Vec<(Option<String>, bytes::Bytes)>>>;

/// An origin that answers each call with the call's number, and keeps what it was sent. For [`counted_origin`].
#[cfg(feature = "decompress")]
fn recording_origin(
    sent: Sent,
) -> impl Fn(usize, OriginRequest) -> futures_util::future::BoxFuture<'static, OriginAnswer> + Clone + Send
{
    use http_body_util::BodyExt;
    move |n, request| {
        let sent = sent.clone();
        Box::pin(async move {
            let coding = request
                .headers()
                .get("content-encoding")
                .map(|value| value.to_str().unwrap().to_owned());
            let body = request.into_body().collect().await?.to_bytes();
            sent.lock().unwrap().push((coding, body));
            Ok(http::Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(format!(r#"{{"data":{{"call":{n}}}}}"#).into()))?)
        })
    }
}

#[cfg(feature = "decompress")]
#[tokio::test]
async fn a_gzipped_graphql_query_is_read_and_keyed_decoded_and_sent_as_it_came() {
    use tower_redis_cache::cache::graphql;
    let server = RedisServer::start();
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (calls, origin) = counted_origin(recording_origin(sent.clone()));
    let layer = layer_over(redis_store(&server).await)
        .query_when(|_, body| graphql::is_query(body))
        .build()
        .unwrap();
    let service = layer.layer_service(origin);
    call(&service, page()).await;
    assert_eq!(outcome(&call(&service, page()).await), CacheOutcome::Hit);

    // The query is read decoded: `query_when` finds a query, and the origin is sent the gzip bytes as they came.
    let query =
        r#"{"query":"query Items($n: Int) { items(first: $n) { id } }","variables":{"n":2}}"#;
    let first = call(&service, post_gzipped(query, 1)).await;
    assert_eq!(
        cache_status(&first),
        "tower-redis-cache; fwd=uri-miss; fwd-status=200; stored"
    );
    assert_eq!(body(first).await, r#"{"data":{"call":2}}"#);
    let expected = (
        Some("gzip".to_owned()),
        sent_body(post_gzipped(query, 1)).await,
    );
    assert_eq!(sent.lock().unwrap()[1], expected);
    // Keyed by its JSON, canonical: the same query, its members in another order and compressed otherwise, is
    // a hit.
    let reordered =
        r#"{"variables": {"n": 2}, "query": "query Items($n: Int) { items(first: $n) { id } }"}"#;
    let again = post_gzipped(reordered, 9);
    assert_ne!(
        sent_body(again).await,
        sent_body(post_gzipped(query, 1)).await
    );
    let hit = call(&service, post_gzipped(reordered, 9)).await;
    assert_eq!(outcome(&hit), CacheOutcome::Hit);
    assert_eq!(body(hit).await, r#"{"data":{"call":2}}"#);
    // A query is no write: the URI's entries stay, also after one bypassed for its credentials (its body read
    // all the same, to tell; one that does not decode counts as a write: see below).
    assert_eq!(outcome(&call(&service, page()).await), CacheOutcome::Hit);
    let mut authorized = post_gzipped(query, 1);
    authorized
        .headers_mut()
        .insert("authorization", "Bearer a".parse().unwrap());
    assert_eq!(
        cache_status(&call(&service, authorized).await),
        "tower-redis-cache; fwd=bypass; detail=authorization"
    );
    assert_eq!(outcome(&call(&service, page()).await), CacheOutcome::Hit);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // The same query in no coding is another request, with an entry of its own.
    let plain = call(&service, post(query)).await;
    assert!(matches!(outcome(&plain), CacheOutcome::Miss { .. }));
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    // A gzipped mutation is read as one: sent on, and once it succeeds the URI's entries are gone.
    let mutation = call(
        &service,
        post_gzipped(r#"{"query":"mutation { add { id } }"}"#, 6),
    )
    .await;
    assert_eq!(
        cache_status(&mutation),
        "tower-redis-cache; fwd=method; detail=not-a-query"
    );
    assert!(matches!(
        outcome(&call(&service, page()).await),
        CacheOutcome::Miss { .. }
    ));
    assert!(matches!(
        outcome(&call(&service, post_gzipped(query, 1)).await),
        CacheOutcome::Miss { .. }
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 7);
}

/// A body streamed as a server's request body is, arriving after the head: the layer has to wait for it.
async fn streamed(
    request: Request<Full<bytes::Bytes>>,
) -> Request<
    impl http_body::Body<Data = bytes::Bytes, Error = std::convert::Infallible> + Send + 'static,
> {
    let (parts, body) = request.into_parts();
    let bytes = sent_body(Request::new(body)).await;
    let stream = futures_util::stream::once(async move {
        tokio::task::yield_now().await;
        Ok(http_body::Frame::data(bytes))
    });
    Request::from_parts(parts, http_body_util::StreamBody::new(stream))
}

#[cfg(feature = "decompress")]
#[tokio::test(start_paused = true)]
async fn a_gzipped_query_streamed_after_its_head_is_read_decoded_too() {
    use tower_redis_cache::cache::graphql;
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (calls, origin) = counted_origin(recording_origin(sent.clone()));
    let layer = layer_over(MemoryStore::new(1 << 20))
        .max_body_size(64 * 1024)
        .query_when(|_, body| graphql::is_query(body))
        .build()
        .unwrap();
    let service = layer.layer_service(origin);
    let query = r#"{"query":"{ items { id } }"}"#;
    let mut statuses = Vec::new();
    let mut expected = Vec::new();
    for (request, asked) in [
        (post_gzipped(query, 1), true),
        (post_gzipped(query, 9), false),
        (post_gzip_cut(query), true),
    ] {
        if asked {
            expected.push((Some("gzip".to_owned()), sent_body(request.clone()).await));
        }
        let answer = service
            .clone()
            .oneshot(streamed(request).await)
            .await
            .unwrap();
        statuses.push(cache_status(&answer));
    }
    // The origin gets each body it is asked with whole, as it came.
    assert_eq!(*sent.lock().unwrap(), expected);
    assert_eq!(
        statuses,
        [
            "tower-redis-cache; fwd=uri-miss; fwd-status=200; stored",
            "tower-redis-cache; hit; ttl=60",
            "tower-redis-cache; fwd=bypass; detail=request-undecodable",
        ]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[cfg(feature = "decompress")]
#[tokio::test(start_paused = true)]
async fn a_request_body_that_does_not_decode_within_the_cap_goes_to_the_origin_as_it_came() {
    use tower_redis_cache::cache::BypassReason;
    let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (calls, origin) = counted_origin(recording_origin(sent.clone()));
    let layer = layer_over(MemoryStore::new(1 << 20))
        .max_body_size(64 * 1024)
        .build()
        .unwrap();
    let service = layer.layer_service(origin);
    // A stream cut short, and one that holds more than the cap once decoded (100 KB of JSON in 200-odd bytes).
    let cut = || post_gzip_cut(r#"{"q":"cut"}"#);
    let large = format!(r#"{{"q":"{}"}}"#, "a".repeat(100_000));
    for request in [cut(), cut(), post_gzipped(&large, 6)] {
        let expected = sent_body(request.clone()).await;
        assert!(expected.len() < 64 * 1024);
        let answer = call(&service, request).await;
        assert_eq!(
            cache_status(&answer),
            "tower-redis-cache; fwd=bypass; detail=request-undecodable"
        );
        let last = sent.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last, (Some("gzip".to_owned()), expected));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Nothing stored may answer it: refused, the origin not called.
    let mut only_cached = cut();
    only_cached
        .headers_mut()
        .insert("cache-control", "only-if-cached".parse().unwrap());
    let refused = call(&service, only_cached).await;
    assert_eq!(refused.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let stats = layer.handle().stats();
    assert_eq!(stats.bypasses_for(BypassReason::RequestUndecodable), 3);
}

/// A `GET` of the URI [`post`] sends its queries to.
fn page() -> Request<Full<bytes::Bytes>> {
    Request::get("https://api.example.com/api/v2/query")
        .body(Full::default())
        .unwrap()
}

/// A layer over `server` in `namespace` that caches `POST` queries of at most 1 KiB, telling GraphQL queries from
/// mutations when `read_queries` (else every body is a query); its service over an origin that answers `500` to a
/// request with `x-fail`, and the origin's calls.
async fn screening_layer(
    server: &RedisServer,
    namespace: &str,
    read_queries: bool,
) -> (
    RedisCacheLayer,
    Arc<AtomicUsize>,
    tower_redis_cache::RedisCache<impl CountedOrigin>,
) {
    use tower_redis_cache::cache::graphql;
    let (calls, origin) = counted_origin(|n, request: OriginRequest| async move {
        let status = if request.headers().contains_key("x-fail") {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        Ok(http::Response::builder()
            .status(status)
            .body(Full::new(format!(r#"{{"data":{{"call":{n}}}}}"#).into()))?)
    });
    let mut builder = layer_over(redis_store(server).await)
        .namespace(namespace)
        .max_body_size(1024);
    if read_queries {
        builder = builder.query_when(|_, body| graphql::is_query(body));
    }
    let layer = builder.build().unwrap();
    let service = layer.layer_service(origin);
    (layer, calls, service)
}

/// Whether the URI's page and a small query at it are both hits; then both are cached, whatever they were.
async fn both_cached(service: &impl support::calls::Cached) -> [bool; 2] {
    let query = || post(r#"{"query":"{ items { id } }"}"#);
    let hits = [
        outcome(&call(service, page()).await) == CacheOutcome::Hit,
        outcome(&call(service, query()).await) == CacheOutcome::Hit,
    ];
    assert_eq!(outcome(&call(service, page()).await), CacheOutcome::Hit);
    assert_eq!(outcome(&call(service, query()).await), CacheOutcome::Hit);
    hits
}

/// A GraphQL mutation over the cap: an upload, its file inline.
fn large_mutation() -> Request<Full<bytes::Bytes>> {
    let upload = format!(
        r#"{{"query":"mutation Upload($f: String) {{ upload(file: $f) {{ id }} }}","variables":{{"f":"{}"}}}}"#,
        "a".repeat(4096)
    );
    post(&upload)
}

#[tokio::test]
async fn a_query_body_over_the_cap_counts_as_a_write_under_query_when() {
    let warnings = support::logs::warnings();
    let server = RedisServer::start();
    let (_layer, calls, service) = screening_layer(&server, "unread-write", true).await;
    assert_eq!(both_cached(&service).await, [false, false]);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Over the cap, `query_when` cannot read it: once it succeeds, the URI's page and queries are gone. With its
    // `Content-Length` (refused at its head), whole without one, and streamed after its head.
    let mut with_length = large_mutation();
    let length = http_body::Body::size_hint(with_length.body())
        .exact()
        .unwrap();
    with_length
        .headers_mut()
        .insert("content-length", length.to_string().parse().unwrap());
    assert_eq!(
        cache_status(&call(&service, with_length).await),
        "tower-redis-cache; fwd=bypass; detail=request-too-large"
    );
    assert_eq!(both_cached(&service).await, [false, false]);
    assert_eq!(
        cache_status(&call(&service, large_mutation()).await),
        "tower-redis-cache; fwd=bypass; detail=request-too-large"
    );
    assert_eq!(both_cached(&service).await, [false, false]);
    let answer = service
        .clone()
        .oneshot(streamed(large_mutation()).await)
        .await
        .unwrap();
    assert_eq!(
        cache_status(&answer),
        "tower-redis-cache; fwd=bypass; detail=request-too-large"
    );
    assert_eq!(both_cached(&service).await, [false, false]);
    // Bypassed for its credentials, its body read to tell, and found over the cap while reading.
    let mut authorized = streamed(large_mutation()).await;
    authorized
        .headers_mut()
        .insert("authorization", "Bearer a".parse().unwrap());
    let answer = service.clone().oneshot(authorized).await.unwrap();
    assert_eq!(
        cache_status(&answer),
        "tower-redis-cache; fwd=bypass; detail=authorization"
    );
    assert_eq!(both_cached(&service).await, [false, false]);
    assert_eq!(calls.load(Ordering::SeqCst), 2 + 4 * 3);

    // One that fails changed nothing: the entries stay.
    let mut failing = large_mutation();
    failing.headers_mut().insert("x-fail", "1".parse().unwrap());
    assert_eq!(
        call(&service, failing).await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(both_cached(&service).await, [true, true]);
    assert_eq!(calls.load(Ordering::SeqCst), 2 + 4 * 3 + 1);
    // Said once, naming the layer's namespace.
    let warned = support::logs::containing(&warnings, r#"namespace="unread-write""#);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("counted as a write"), "{warned:?}");
}

#[tokio::test]
async fn a_query_body_over_the_cap_is_no_write_without_query_when() {
    let server = RedisServer::start();
    let (_layer, calls, service) = screening_layer(&server, "every-body-a-query", false).await;
    assert_eq!(both_cached(&service).await, [false, false]);
    // Without `query_when`, and a JSON body that tunnels no method, every body is a query, however large.
    let mut bodies = vec![large_mutation()];
    let mut authorized = large_mutation();
    authorized
        .headers_mut()
        .insert("authorization", "Bearer a".parse().unwrap());
    bodies.push(authorized);
    for request in bodies {
        assert_eq!(call(&service, request).await.status(), StatusCode::OK);
        assert_eq!(both_cached(&service).await, [true, true]);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2 + 2);
}

#[cfg(feature = "decompress")]
#[tokio::test]
async fn a_query_body_that_does_not_decode_counts_as_a_write_under_query_when() {
    let server = RedisServer::start();
    let (_layer, calls, service) = screening_layer(&server, "undecodable-write", true).await;
    assert_eq!(both_cached(&service).await, [false, false]);
    let query = r#"{"query":"{ items { id } }"}"#;
    // Read to tell, whole or bypassed for its credentials: a body cut short cannot be, so it counts as a write.
    let mut authorized = post_gzip_cut(query);
    authorized
        .headers_mut()
        .insert("authorization", "Bearer a".parse().unwrap());
    for (request, status) in [
        (
            post_gzip_cut(query),
            "tower-redis-cache; fwd=bypass; detail=request-undecodable",
        ),
        (
            authorized,
            "tower-redis-cache; fwd=bypass; detail=authorization",
        ),
    ] {
        assert_eq!(cache_status(&call(&service, request).await), status);
        assert_eq!(both_cached(&service).await, [false, false]);
    }
    // One that decodes is read: a query, which changes nothing.
    assert_eq!(
        outcome(&call(&service, post_gzipped(query, 6)).await),
        CacheOutcome::Miss {
            stored: true,
            collapsed: false
        }
    );
    assert_eq!(both_cached(&service).await, [true, true]);
    assert_eq!(calls.load(Ordering::SeqCst), 2 + 2 * 3 + 1);
}

#[cfg(feature = "decompress")]
#[tokio::test(start_paused = true)]
async fn gzipped_json_rpc_calls_share_an_entry_each_answered_with_its_own_id() {
    use http_body_util::BodyExt;
    use tower_redis_cache::cache::jsonrpc;
    // A node that reads gzipped calls, as one behind a decompressing proxy does.
    let (calls, origin) = counted_origin(|n, request: OriginRequest| async move {
        let gzipped = request.into_body().collect().await?.to_bytes();
        let call: serde_json::Value =
            serde_json::from_reader(flate2::read::GzDecoder::new(&gzipped[..]))?;
        let answer =
            serde_json::json!({"jsonrpc": "2.0", "result": format!("0x{n}"), "id": call["id"]});
        Ok(http::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(answer.to_string().into()))?)
    });
    let layer = layer_over(MemoryStore::new(1 << 20))
        .query_when(|_, body| jsonrpc::only_calls_to(body, &["eth_chainId"]))
        .echo_body_field("id")
        .build()
        .unwrap();
    let service = layer.layer_service(origin);
    let rpc = |id: u64| {
        let json = format!(r#"{{"jsonrpc":"2.0","method":"eth_chainId","id":{id}}}"#);
        let (parts, body) = post_gzipped(&json, 6).into_parts();
        let mut request = Request::from_parts(parts, body);
        *request.uri_mut() = "https://node.example/".parse().unwrap();
        request
    };
    for id in [1, 2, 3] {
        let answer = call(&service, rpc(id)).await;
        assert_eq!(outcome(&answer) == CacheOutcome::Hit, id > 1, "{id}");
        let answer: serde_json::Value = serde_json::from_slice(&body(answer).await).unwrap();
        assert_eq!(answer["id"], id);
        assert_eq!(answer["result"], "0x1");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The handle keys a gzipped call as the layer does: removing another call's entry removes this one.
    let (parts, gzipped) = rpc(4).into_parts();
    let gzipped = Request::from_parts(parts, sent_body(Request::new(gzipped)).await);
    assert!(layer.handle().invalidate(&gzipped).await.unwrap());
    assert!(matches!(
        outcome(&call(&service, rpc(5)).await),
        CacheOutcome::Miss { .. }
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// An echoed member leaves the key, so one that carries credentials would give each caller its own token back in
/// an answer made for another's: refused, unless a partition says whom every request acts for.
#[test]
fn an_echoed_member_that_carries_credentials_is_refused() {
    use tower_redis_cache::cache::Credentials;
    use tower_redis_cache::error::Setting;
    for (name, credential) in [
        ("apiKey", "api_key"),
        ("access_token", "access_token"),
        ("Session", "session"),
    ] {
        let refused = layer_over(MemoryStore::new(1 << 20))
            .echo_body_field(name)
            .build()
            .unwrap_err();
        assert_eq!(refused.setting(), Setting::EchoBodyField, "{name}");
        assert!(
            refused.to_string().contains(&format!("`{credential}`")),
            "{name}: {refused}"
        );
    }
    layer_over(MemoryStore::new(1 << 20))
        .credentials(Credentials::Partition)
        .partition("node-poller")
        .echo_body_field("apiKey")
        .build()
        .unwrap();
    layer_over(MemoryStore::new(1 << 20))
        .echo_body_field("id")
        .build()
        .unwrap();
}
