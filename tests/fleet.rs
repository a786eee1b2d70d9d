//! One origin call per key for the whole fleet, against a real redis-server: layers with clients of their own
//! stand for processes; fenced leases keep one refresh per key among them.

mod support;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use std::time::Duration;
use support::calls::{call, outcome, post, wait_until};
use support::{Origin, RedisServer, fred_client};
use tower_redis_cache::cache::RedisCacheLayerBuilder;
use tower_redis_cache::{CacheOutcome, CacheStats, RedisCache, RedisCacheLayer, RedisStore, Store};

async fn process(server: &RedisServer) -> RedisCacheLayerBuilder {
    RedisCacheLayer::builder(RedisStore::new(fred_client(&server.url()).await))
        .namespace("fleet")
        .methods([Method::GET, Method::POST])
        .store_timeout(Duration::from_secs(2))
}

/// Four processes over one Redis, each with its own client, and their services over one origin.
async fn four(
    server: &RedisServer,
    origin: &std::sync::Arc<Origin>,
    configure: impl Fn(RedisCacheLayerBuilder) -> RedisCacheLayerBuilder,
) -> Vec<(
    RedisCacheLayer,
    RedisCache<
        impl tower::Service<
            Request<tower_redis_cache::RequestBody>,
            Response = http::Response<Full<Bytes>>,
            Error = tower_redis_cache::error::BoxError,
            Future: Send,
        > + Clone
        + Send
        + 'static,
    >,
)> {
    let mut processes = Vec::new();
    for _ in 0..4 {
        let layer = configure(process(server).await).build().unwrap();
        let service = tower::Layer::layer(&layer, origin.service());
        processes.push((layer, service));
    }
    processes
}

fn total(processes: &[(RedisCacheLayer, impl Sized)], of: fn(&CacheStats) -> u64) -> u64 {
    processes
        .iter()
        .map(|(layer, _)| of(&layer.handle().stats()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_slower_than_its_lease_is_the_only_one() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let configure = |b: RedisCacheLayerBuilder| {
        b.fresh_for(Duration::ZERO)
            .stale_for(Duration::from_secs(600))
            .refresh_lease_for(Duration::from_secs(1))
    };
    let processes = four(&server, &origin, configure).await;
    call(&processes[0].1, post(r#"{"q":"slow"}"#)).await;
    // Every refresh now takes three leases' time.
    origin.set_delay(Duration::from_secs(3));
    // Stale hits from all four processes for the next 2.5 s: each would refresh if the lease ever lapsed.
    for round in 0..50 {
        for (_, service) in &processes {
            let response = call(service, post(r#"{"q":"slow"}"#)).await;
            assert!(
                matches!(outcome(&response), CacheOutcome::Stale { .. }),
                "round {round}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until("the refresh stored", || {
        total(&processes, |s| s.stores) == 2
    })
    .await;
    assert_eq!(origin.calls(), 2, "the first fill and one refresh");
    assert_eq!(total(&processes, |s| s.refreshes_started), 1);
}

#[tokio::test]
async fn a_lease_taken_by_another_holder_is_never_touched_by_the_old_one() {
    let server = RedisServer::start();
    let store = RedisStore::new(fred_client(&server.url()).await);
    let key = "fleet:v1:{k}:lease";
    assert!(
        store
            .try_lease(key, "old", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        !store
            .try_lease(key, "new", Duration::from_secs(60))
            .await
            .unwrap()
    );
    // The old holder's lease runs out (made to, here) and a new holder takes it.
    server.command(&[b"PEXPIRE", key.as_bytes(), b"1"]);
    wait_until("the old lease expired", || {
        server.command(&[b"EXISTS", key.as_bytes()]) == b":0\r\n"
    })
    .await;
    assert!(
        store
            .try_lease(key, "new", Duration::from_secs(60))
            .await
            .unwrap()
    );
    // The old holder, late, neither extends nor releases what is no longer its lease.
    assert!(
        !store
            .extend_lease(key, "old", Duration::from_secs(600))
            .await
            .unwrap()
    );
    assert!(!store.release_lease(key, "old").await.unwrap());
    assert_eq!(server.command(&[b"GET", key.as_bytes()]), b"$3\r\nnew\r\n");
    let ttl = String::from_utf8(server.command(&[b"PTTL", key.as_bytes()])).unwrap();
    let ttl: u64 = ttl.trim_start_matches(':').trim().parse().unwrap();
    assert!(ttl <= 60_000, "not extended by the old holder: {ttl}");

    // The scripts run by SHA, and whole again when the server's script cache was flushed.
    assert!(
        store
            .extend_lease(key, "new", Duration::from_secs(120))
            .await
            .unwrap()
    );
    server.command(&[b"SCRIPT", b"FLUSH"]);
    assert!(store.release_lease(key, "new").await.unwrap());
    assert_eq!(server.command(&[b"EXISTS", key.as_bytes()]), b":0\r\n");
    let known = server.command(&[
        b"SCRIPT",
        b"EXISTS",
        b"d02e481a9c91ceec59c5822a58a49d5d5d7ac80b",
        b"3c47f94dc28d90f47ce03eabe2ebe59e85e54bf1",
    ]);
    assert_eq!(
        known, b"*2\r\n:1\r\n:0\r\n",
        "the release script is cached again under its SHA"
    );
}
