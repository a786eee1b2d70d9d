//! Network faults between the layer and a real redis-server, made by a TCP proxy switched while requests flow:
//! slow replies on either side of the store timeout, a black hole, resets, a half-open link, replies that are not
//! Redis's protocol, an address moved to another server under open connections. No request fails, each pays at
//! most one store timeout, and caching resumes once the link is healthy again.

use crate::support;

use http::StatusCode;
use std::time::{Duration, Instant};
use support::calls::{cache_status, call, outcome, post};
use support::proxy::{Mode, Proxy};
use support::{Origin, RedisServer};
use tower_redis_cache::{CacheOutcome, RedisCacheLayer, RedisStore};

/// The store timeout the fault tests run with: well above the slow link's 40 ms, below its 150 ms.
const STORE_TIMEOUT: Duration = Duration::from_millis(100);
const BREAKER_FAILURES: u32 = 3;
const BREAKER_COOLDOWN: Duration = Duration::from_millis(500);

struct Rig {
    _server: RedisServer,
    proxy: Proxy,
    origin: std::sync::Arc<Origin>,
    layer: RedisCacheLayer,
}

async fn rig() -> Rig {
    rig_with(BREAKER_FAILURES, STORE_TIMEOUT).await
}

/// A rig whose breaker opens after `failures` failures, and whose store calls time out after `timeout`.
async fn rig_with(failures: u32, timeout: Duration) -> Rig {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port()).await;
    let store = RedisStore::connect(&proxy.url()).await.unwrap();
    rig_over(server, proxy, store, failures, timeout)
}

/// A rig over `store`, which reaches `server` through `proxy`.
fn rig_over(
    server: RedisServer,
    proxy: Proxy,
    store: RedisStore,
    failures: u32,
    timeout: Duration,
) -> Rig {
    rig_cooling_over(server, proxy, store, failures, timeout, BREAKER_COOLDOWN)
}

/// [`rig_over`], with a breaker that waits `cooldown` before it probes.
fn rig_cooling_over(
    server: RedisServer,
    proxy: Proxy,
    store: RedisStore,
    failures: u32,
    timeout: Duration,
    cooldown: Duration,
) -> Rig {
    let origin = Origin::new();
    // The origin takes a while, as the APIs this cache protects do.
    origin.set_delay(Duration::from_millis(20));
    let layer = RedisCacheLayer::builder(store)
        .namespace("faults")
        .methods([http::Method::GET, http::Method::POST])
        .store_timeout(timeout)
        .circuit_breaker(failures, cooldown)
        .build()
        .unwrap();
    Rig {
        _server: server,
        proxy,
        origin,
        layer,
    }
}

/// Runs 30 requests (10 keys, three times each) through the fault; returns how long it took.
async fn burst(rig: &Rig, tag: &str) -> Duration {
    let service = tower::Layer::layer(&rig.layer, rig.origin.service());
    let started = Instant::now();
    for round in 0..3 {
        for i in 0..10 {
            let response = call(&service, post(&format!(r#"{{"{tag}":{i}}}"#))).await;
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "{tag} round {round} key {i}"
            );
        }
    }
    started.elapsed()
}

/// With the store out of reach, the breakers bound what the store costs: `BREAKER_FAILURES` timeouts, then one
/// probe per cooldown; every other call skips the store. No request pays more than one. The store keeps two
/// sides (the `GET`s, and the rest), each under a breaker of its own; a request whose read failed makes no write,
/// so the writes' breaker counts only when reads got through (a half-open link: the reads' new connection live
/// while the writes' old one is still stuck). `lasting`: the fault outlives the burst, and the breaker opens (a
/// half-open link does not: the reconnect asked for after two timeouts gets a live one, often before the breaker
/// opens).
fn assert_store_cost_bounded(rig: &Rig, took: Duration, lasting: bool) {
    let stats = rig.layer.handle().stats();
    let probes = (took.as_millis() / BREAKER_COOLDOWN.as_millis()) as u64 + 1;
    let sides = if lasting { 1 } else { 2 };
    assert!(
        stats.store_errors <= sides * (u64::from(BREAKER_FAILURES) + probes),
        "{stats:?} in {took:?}"
    );
    if lasting {
        assert!(stats.store_skipped > 0, "the breaker opened: {stats:?}");
        assert!(
            stats.store_errors + stats.store_skipped >= 30,
            "every request met the fault: {stats:?}"
        );
    }
}

/// Once the link passes traffic again, caching comes back on its own: a bounded poll for a hit.
async fn caching_resumes(rig: &Rig) {
    caching_resumes_while(rig, Mode::Pass).await;
}

/// Caching comes back with the proxy in `mode`: a bounded poll for a hit.
async fn caching_resumes_while(rig: &Rig, mode: Mode) {
    rig.proxy.set(mode);
    let service = tower::Layer::layer(&rig.layer, rig.origin.service());
    for _ in 0..300 {
        let response = call(&service, post(r#"{"q":"after"}"#)).await;
        assert_eq!(response.status(), StatusCode::OK);
        if outcome(&response) == CacheOutcome::Hit {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("caching never resumed: {:?}", rig.layer.handle().stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_slower_than_usual_but_inside_the_timeout_still_cache() {
    // Well inside: 100 ms left a loaded machine too little room (a call timed out once under three test runs).
    let rig = rig_with(BREAKER_FAILURES, Duration::from_millis(400)).await;
    rig.proxy.set(Mode::Delay(Duration::from_millis(40)));
    burst(&rig, "slow").await;
    let stats = rig.layer.handle().stats();
    assert_eq!(stats.store_errors, 0, "{stats:?}");
    assert_eq!(stats.hits, 20, "the second and third rounds hit: {stats:?}");
    assert_eq!(rig.origin.calls(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_slower_than_the_timeout_cost_a_bounded_number_of_timeouts() {
    let rig = rig().await;
    rig.proxy.set(Mode::Delay(Duration::from_millis(150)));
    let took = burst(&rig, "slower").await;
    assert_store_cost_bounded(&rig, took, true);
    caching_resumes(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_costs_a_bounded_number_of_timeouts_and_caching_resumes() {
    let rig = rig().await;
    rig.proxy.set(Mode::BlackHole);
    let took = burst(&rig, "hole").await;
    assert_store_cost_bounded(&rig, took, true);
    caching_resumes(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_link_is_reconnected_and_caching_resumes() {
    let rig = rig().await;
    // A first connection, which the half-open link then strands.
    let service = tower::Layer::layer(&rig.layer, rig.origin.service());
    call(&service, post(r#"{"q":"before"}"#)).await;
    let connections = rig.proxy.connections();
    rig.proxy.set(Mode::HalfOpen);
    let took = burst(&rig, "half").await;
    assert_store_cost_bounded(&rig, took, false);
    assert!(
        rig.proxy.connections() > connections,
        "the timeouts had the store reconnect"
    );
    // New connections reach Redis, stranded ones never do: caching is back while the mode still holds.
    caching_resumes_while(&rig, Mode::HalfOpen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_link_under_traffic_too_sparse_to_open_the_breaker_is_reconnected() {
    // A breaker that does not open here, as under traffic whose failures are too far apart to count together.
    let rig = rig_with(1_000, STORE_TIMEOUT).await;
    let service = tower::Layer::layer(&rig.layer, rig.origin.service());
    call(&service, post(r#"{"q":"before"}"#)).await;
    let connections = rig.proxy.connections();
    rig.proxy.set(Mode::HalfOpen);
    for i in 0..2 {
        let response = call(&service, post(&format!(r#"{{"sparse":{i}}}"#))).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let stats = rig.layer.handle().stats();
    assert!(stats.store_errors >= 2, "{stats:?}");
    assert_eq!(
        stats.store_skipped, 0,
        "the breaker stayed closed: {stats:?}"
    );
    // Two timeouts with no success between had the store reconnect.
    support::calls::wait_until("the store reconnected", || {
        rig.proxy.connections() > connections
    })
    .await;
    caching_resumes_while(&rig, Mode::HalfOpen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connections_never_fail_a_request_and_caching_resumes() {
    let rig = rig().await;
    rig.proxy.set(Mode::Reset);
    burst(&rig, "reset").await;
    let stats = rig.layer.handle().stats();
    assert!(stats.store_errors + stats.store_skipped >= 30, "{stats:?}");
    assert_eq!(stats.hits, 0, "{stats:?}");
    caching_resumes(&rig).await;
}

/// Connections reset open the breaker (every call in flight fails together); once the store has connected again,
/// caching resumes without waiting out the breaker's cooldown, an hour here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caching_resumes_once_the_store_connects_again_not_a_cooldown_later() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port()).await;
    let store = RedisStore::connect(&proxy.url()).await.unwrap();
    let hour = Duration::from_secs(3600);
    let rig = rig_cooling_over(server, proxy, store, BREAKER_FAILURES, STORE_TIMEOUT, hour);
    rig.proxy.set(Mode::Reset);
    burst(&rig, "reset").await;
    let stats = rig.layer.handle().stats();
    assert!(stats.store_skipped > 0, "the breaker opened: {stats:?}");
    assert_eq!(stats.hits, 0, "{stats:?}");
    caching_resumes(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_that_are_not_resp_fail_no_request_and_never_answer_one() {
    let rig = rig().await;
    let service = tower::Layer::layer(&rig.layer, rig.origin.service());
    let stored = keep(&rig).await;
    assert_eq!(
        outcome(&call(&service, post(KEPT)).await),
        CacheOutcome::Hit
    );
    let calls = rig.origin.calls();

    // Every reply now starts with a byte no RESP frame starts with: the client drops the connection at the
    // first, and reconnects into the same.
    rig.proxy.set(Mode::Garble);
    let took = burst(&rig, "garbled").await;
    assert_store_cost_bounded(&rig, took, true);
    // The stored entry is not read through the fault: the origin answers it.
    let during = call(&service, post(KEPT)).await;
    assert!(
        matches!(outcome(&during), CacheOutcome::Miss { .. }),
        "{}",
        cache_status(&during)
    );
    assert_eq!(
        rig.origin.calls(),
        calls + 31,
        "the burst's 30 requests (none stored) and the kept one"
    );
    let stats = rig.layer.handle().stats();
    assert_eq!(
        (stats.hits, stats.decode_errors),
        (1, 0),
        "nothing read through the fault: {stats:?}"
    );

    caching_resumes(&rig).await;
    kept_is_hit(&rig, &stored).await;
}

/// The request of the entry the faults below must leave intact.
const KEPT: &str = r#"{"q":"kept"}"#;

/// Stores [`KEPT`]'s entry; returns its body.
async fn keep(rig: &Rig) -> bytes::Bytes {
    let service = tower::Layer::layer(&rig.layer, rig.origin.service());
    support::calls::body(call(&service, post(KEPT)).await).await
}

/// [`KEPT`]'s entry is a hit, with the body it was stored with.
async fn kept_is_hit(rig: &Rig, stored: &bytes::Bytes) {
    let service = tower::Layer::layer(&rig.layer, rig.origin.service());
    let after = call(&service, post(KEPT)).await;
    assert_eq!(outcome(&after), CacheOutcome::Hit);
    assert_eq!(&support::calls::body(after).await, stored);
}

/// The open connections lose their login (`NOAUTH` on every command), as behind a managed Redis's proxy whose
/// node was replaced: an error no timeout marks as a stuck link, so the breaker opens but never has the
/// connections remade, yet one a new connection cures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_lose_their_login_are_made_again_and_caching_resumes() {
    let rig = rig().await;
    let stored = keep(&rig).await;
    let connections = rig.proxy.connections();

    rig.proxy.set(Mode::NoAuth);
    burst(&rig, "noauth").await;
    // New connections log in as usual; the open ones never will.
    caching_resumes_while(&rig, Mode::NoAuth).await;
    assert!(
        rig.proxy.connections() > connections,
        "the store connected again"
    );
    kept_is_hit(&rig, &stored).await;
}

/// The same over the caller's own fred client, built with a reconnect policy but without fred's
/// `reconnect_on_auth_error`: `NOAUTH` reaches the cache as a failed call, and has the store reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_client_that_loses_its_login_is_made_to_connect_again() {
    use fred::prelude::{Builder, Config, ReconnectPolicy};
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port()).await;
    let client = Builder::from_config(Config::from_url(&proxy.url()).unwrap())
        .set_policy(ReconnectPolicy::new_constant(0, 100))
        .build()
        .unwrap();
    fred::interfaces::ClientLike::init(&client).await.unwrap();
    let rig = rig_over(
        server,
        proxy,
        RedisStore::new(client),
        BREAKER_FAILURES,
        STORE_TIMEOUT,
    );
    let stored = keep(&rig).await;
    let connections = rig.proxy.connections();

    rig.proxy.set(Mode::NoAuth);
    burst(&rig, "noauth").await;
    caching_resumes_while(&rig, Mode::NoAuth).await;
    assert!(rig.proxy.connections() > connections);
    kept_is_hit(&rig, &stored).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_switched_on_while_requests_flow_fails_none() {
    let rig = rig().await;
    let service = tower::Layer::layer(&rig.layer, rig.origin.service());
    let mut modes = [
        Mode::Delay(Duration::from_millis(150)),
        Mode::BlackHole,
        Mode::Reset,
        Mode::HalfOpen,
        Mode::Garble,
        Mode::NoAuth,
        Mode::Pass,
    ]
    .into_iter()
    .cycle();
    let mut tasks = Vec::new();
    for i in 0..280 {
        if i % 20 == 0 {
            rig.proxy.set(modes.next().unwrap());
        }
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let response = call(&service, post(&format!(r#"{{"flow":{}}}"#, i % 25))).await;
            (response.status(), cache_status(&response))
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for task in tasks {
        let (status, cache) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{cache}");
    }
    caching_resumes(&rig).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_demoted_under_an_open_connection_is_left_for_the_new_one() {
    // A primary and its replica behind one address (the proxy), as a managed Redis's primary endpoint is.
    let (primary, replica) = RedisServer::start_pair().await;
    let proxy = Proxy::start(primary.port()).await;
    let origin = Origin::new();
    let layer = RedisCacheLayer::builder(RedisStore::connect(&proxy.url()).await.unwrap())
        .namespace("demoted")
        .methods([http::Method::POST])
        .store_timeout(Duration::from_secs(2))
        .near_cache(1 << 20)
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    assert!(matches!(
        outcome(&call(&service, post(r#"{"q":0}"#)).await),
        CacheOutcome::Miss { stored: true, .. }
    ));
    // The near cache's tracking connection is on the primary too.
    support::calls::wait_until("the near cache answers", || {
        layer.handle().near_cache_live()
    })
    .await;

    // A failover that closes no connection: the replica is promoted, the primary turned into a replica, and the
    // address moves to the new primary. The open connections still reach the old one, which now refuses every
    // write (`READONLY`) and answers reads. (It is pointed at a primary it cannot reach, so that it keeps its
    // data rather than resynchronise, which could empty it under the near cache's tracking connection and make
    // that connection move on by itself: the test below needs it to stay.)
    replica.command(&[b"REPLICAOF", b"NO", b"ONE"]);
    let nowhere = support::redis::free_port().to_string();
    primary.command(&[b"REPLICAOF", b"127.0.0.1", nowhere.as_bytes()]);
    proxy.retarget(replica.port());

    // Misses are stored again, on the new primary, within a few requests; none fails.
    let mut stored_at = None;
    for i in 1..=50 {
        let response = call(&service, post(&format!(r#"{{"q":{i}}}"#))).await;
        assert_eq!(response.status(), StatusCode::OK);
        if let CacheOutcome::Miss { stored: true, .. } = outcome(&response) {
            stored_at = Some(i);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored_at = stored_at.expect("a miss was stored again");
    assert!(stored_at <= 5, "stored again at the {stored_at}th miss");
    let role = String::from_utf8_lossy(&replica.command(&[b"ROLE"])).into_owned();
    assert!(role.contains("master"), "{role}");

    // The near cache's tracking connection is still on the old primary, which pushes no invalidation for the
    // new primary's writes. Paused past a probe's timeout, it re-arms there, where its canary write is refused;
    // it has to connect again, and answer once more.
    assert!(layer.handle().near_cache_live());
    primary.pause();
    support::calls::wait_until("the near cache stopped", || {
        !layer.handle().near_cache_live()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    primary.resume();
    support::calls::wait_until("the near cache answers again", || {
        layer.handle().near_cache_live()
    })
    .await;
}
