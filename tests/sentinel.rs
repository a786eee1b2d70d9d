//! Redis Sentinel for real: one primary, one replica and one sentinel, all real processes. The primary dies
//! while requests flow; the sentinel promotes the replica, the store follows it through the
//! `redis-sentinel://` URL, no request fails, and caching resumes. Near caches follow too: their tracking is
//! on at the new primary, so a write there reaches them.

use crate::support;

use http::{Method, StatusCode};
use std::time::Duration;
use support::RedisServer;
use support::calls::{call, outcome, post};
use tower::ServiceExt;
use tower_redis_cache::{CacheOutcome, RedisCacheLayer, RedisStore};

/// The server's `ROLE` reply, or empty when the connection failed (the sentinel's promotion closes every
/// normal client's connection, a poll's included).
fn role(server: &RedisServer) -> String {
    let reply = server.try_command(&[b"ROLE"]).unwrap_or_default();
    String::from_utf8_lossy(&reply).into_owned()
}

/// A primary, its synced replica, and a sentinel monitoring them as `cache`; and the sentinel's URL.
async fn monitored() -> (RedisServer, RedisServer, RedisServer, String) {
    let (primary, replica) = RedisServer::start_pair().await;
    let sentinel = RedisServer::start_sentinel("cache", primary.port());
    let url = format!(
        "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName=cache",
        sentinel.port()
    );
    (primary, replica, sentinel, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_fails_no_request_and_caching_resumes_on_the_new_primary() {
    let (mut primary, replica, sentinel, url) = monitored().await;
    let layer = RedisCacheLayer::builder(RedisStore::connect(&url).await.unwrap())
        .namespace("sen")
        .methods([Method::POST])
        .store_timeout(Duration::from_millis(200))
        .circuit_breaker(3, Duration::from_millis(200))
        .build()
        .unwrap();
    let origin = support::Origin::new();
    let service = tower::Layer::layer(&layer, origin.service());
    let query = |i: usize| post(&format!(r#"{{"s":{i}}}"#));
    for i in 0..10 {
        call(&service, query(i)).await;
        assert_eq!(outcome(&call(&service, query(i)).await), CacheOutcome::Hit);
    }
    // The store's clock is read behind Sentinel too (the primary's), and agrees with this process's.
    let handle = layer.handle();
    support::calls::wait_until("the store's clock read", || {
        handle.store_clock_ahead_ms().is_some()
    })
    .await;
    assert!(handle.store_clock_ahead_ms().unwrap().abs() < 1_000);
    // The ten entries and their URI's tag set (through which a write to the URI finds them).
    assert_eq!(
        primary.command(&[b"DBSIZE"]),
        b":11\r\n",
        "written through the sentinel's primary"
    );
    // Replication is asynchronous, and after its initial sync a replica is sent the command stream only once
    // it acknowledges (its once-a-second ack): a primary killed before then takes these entries with it.
    // That loss is Redis's, not the cache's, and not what this test is about: it starts from a replica that
    // holds them.
    support::calls::wait_until("the replica holds the ten entries", || {
        replica.command(&[b"DBSIZE"]) == b":11\r\n"
    })
    .await;

    // Requests keep flowing while the primary dies and the sentinel promotes the replica.
    let (stop, until) = tokio::sync::watch::channel(false);
    let flow = tokio::spawn({
        let service = service.clone();
        async move {
            let mut failures = Vec::new();
            let mut i = 0;
            while !*until.borrow() {
                match service.clone().oneshot(query(i % 10)).await {
                    Ok(reply) if reply.status() == StatusCode::OK => {}
                    Ok(reply) => failures.push(format!("status {}", reply.status())),
                    Err(error) => failures.push(format!("error {error}")),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            failures
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    primary.kill();
    support::calls::wait_until("the sentinel promoted the replica", || {
        role(&replica).contains("master")
    })
    .await;

    // Caching resumes through the same URL, on the new primary.
    let mut resumed = false;
    for _ in 0..300 {
        if outcome(&call(&service, query(3)).await) == CacheOutcome::Hit {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed, "caching resumed after the failover");
    // And storing: the writes' connection may still be moving to the new primary when the first hit is read
    // (a write in flight as Sentinel's announcement has the store connect again can outlast the store timeout),
    // so a fresh query is stored within a bounded number of tries, then answered from the new primary.
    let mut stored = None;
    for i in 0..100 {
        let fresh = format!(r#"{{"s":"after-{i}"}}"#);
        if matches!(
            outcome(&call(&service, post(&fresh)).await),
            CacheOutcome::Miss { stored: true, .. }
        ) {
            stored = Some(fresh);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = stored.expect("a miss was stored after the failover");
    assert_eq!(
        outcome(&call(&service, post(&fresh)).await),
        CacheOutcome::Hit
    );
    let keys = String::from_utf8_lossy(&replica.command(&[b"DBSIZE"])).into_owned();
    assert!(
        keys.trim_start_matches(':').trim().parse::<u32>().unwrap() >= 11,
        "{keys}"
    );
    stop.send_replace(true);
    let failures = flow.await.unwrap();
    assert!(failures.is_empty(), "requests failed: {failures:?}");
    drop(sentinel);
}

/// What a near-cache answer of the test origin holds: its call number.
async fn call_number(reply: support::calls::Reply) -> u64 {
    let body = support::calls::body(reply).await;
    let text = std::str::from_utf8(&body).unwrap();
    let n = text
        .strip_prefix(r#"{"n":"#)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    n.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_caches_follow_a_sentinel_failover_and_stay_coherent() {
    let (mut primary, replica, _sentinel, url) = monitored().await;
    let near_layer = || async {
        RedisCacheLayer::builder(RedisStore::connect(&url).await.unwrap())
            .namespace("sen-near")
            .methods([Method::POST])
            .store_timeout(Duration::from_millis(200))
            .circuit_breaker(3, Duration::from_millis(200))
            .near_cache(1 << 20)
            .build()
            .unwrap()
    };
    let (a, b) = (near_layer().await, near_layer().await);
    let origin = support::Origin::new();
    let service_a = tower::Layer::layer(&a, origin.service());
    let service_b = tower::Layer::layer(&b, origin.service());
    let query = r#"{"s":"near"}"#;
    // A write through `a`: the origin asked again and its answer stored (once `a` reaches a primary).
    let rewrite = || async {
        for _ in 0..300 {
            let mut request = post(query);
            request
                .headers_mut()
                .insert("cache-control", "no-cache".parse().unwrap());
            if let CacheOutcome::Miss { stored: true, .. } =
                outcome(&call(&service_a, request).await)
            {
                return origin.calls() as u64;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the write was never stored");
    };
    // Polls `b` until it answers call `n` from its near cache; panics if it answers any other call from there
    // once it has answered `n` from anywhere (an older answer after a newer one: incoherence).
    let until_near_answers = |n: u64| {
        let service_b = service_b.clone();
        async move {
            let mut seen = false;
            for _ in 0..500 {
                let reply = call(&service_b, post(query)).await;
                assert_eq!(reply.status(), StatusCode::OK);
                let near = support::calls::cache_status(&reply).ends_with("; detail=near");
                let answered = call_number(reply).await;
                if seen {
                    assert_eq!(answered, n, "an older answer after call {n} was seen");
                }
                seen |= answered == n;
                if near && answered == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the near cache never answered call {n}");
        }
    };

    assert!(matches!(
        outcome(&call(&service_a, post(query)).await),
        CacheOutcome::Miss { stored: true, .. }
    ));
    until_near_answers(1).await;
    support::calls::wait_until("the replica holds the entry", || {
        replica.command(&[b"DBSIZE"]) == primary.command(&[b"DBSIZE"])
    })
    .await;

    primary.kill();
    support::calls::wait_until("the sentinel promoted the replica", || {
        role(&replica).contains("master")
    })
    .await;

    // On the new primary: a write by `a` reaches `b`'s near cache, which answers again (its tracking is on
    // there), and the next write drops it there too.
    let second = rewrite().await;
    until_near_answers(second).await;
    let third = rewrite().await;
    assert!(third > second);
    until_near_answers(third).await;
    let stats = b.handle().stats();
    assert!(stats.near_flushes_connection >= 1, "{stats:?}");
}

/// A primary that cannot be made a replica (its `REPLICAOF` is disabled) and its synced replica: after a
/// failover the old primary stays a primary and keeps its clients, as for the seconds before Sentinel demotes a
/// live primary after `SENTINEL FAILOVER`, or for as long as Sentinel cannot reach a primary that clients still
/// can.
async fn undemotable_pair() -> (RedisServer, RedisServer) {
    RedisServer::start_pair_with(&[
        "--rename-command",
        "REPLICAOF",
        "",
        "--rename-command",
        "SLAVEOF",
        "",
    ])
    .await
}

/// A process's cache layer behind the sentinels of `url`, with a near cache or not.
async fn process(url: &str, near: bool) -> RedisCacheLayer {
    let builder = RedisCacheLayer::builder(RedisStore::connect(url).await.unwrap())
        .namespace("sen-follow")
        .methods([Method::POST]);
    let builder = if near {
        builder.near_cache(1 << 20)
    } else {
        builder
    };
    builder.build().unwrap()
}

/// Has `sentinel` fail the primary over to `replica` (refused, `NOGOODSLAVE`, until it has read the replica's
/// state) and waits until it names the replica.
async fn fail_over(sentinel: &RedisServer, replica: &RedisServer) {
    support::calls::wait_until("the sentinel fails over", || {
        sentinel.command(&[b"SENTINEL", b"FAILOVER", b"cache"]) == b"+OK\r\n"
    })
    .await;
    let promoted = replica.port().to_string();
    support::calls::wait_until("the sentinel names the replica", || {
        String::from_utf8_lossy(&sentinel.command(&[
            b"SENTINEL",
            b"GET-MASTER-ADDR-BY-NAME",
            b"cache",
        ]))
        .contains(&promoted)
    })
    .await;
}

/// Waits until a write of `query` through `from` is what `to` answers: both processes use one primary. Panics
/// if that never happens.
async fn until_writes_reach<S: support::calls::Cached>(from: &S, to: &S, query: &str) {
    for _ in 0..300 {
        let written = rewrite(from, query).await;
        if written.is_some() && Some(call_number(call(to, post(query)).await).await) == written {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("a write never reached the other process's primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_follows_a_failover_at_once_while_the_old_primary_lives_on() {
    follows_a_failover_the_old_primary_outlives(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_that_refuses_subscribers_is_asked_and_the_failover_followed() {
    follows_a_failover_the_old_primary_outlives(true).await;
}

/// Two processes connected before a failover that leaves the old primary running, one of them with a near
/// cache, and one connected after: the first two follow, reading and writing where the third does. With
/// `refuse_subscribe`, the sentinel refuses `SUBSCRIBE` (a user without `+subscribe`), so the stores learn of
/// the failover by asking.
async fn follows_a_failover_the_old_primary_outlives(refuse_subscribe: bool) {
    let (primary, replica) = undemotable_pair().await;
    let sentinel = RedisServer::start_sentinel("cache", primary.port());
    if refuse_subscribe {
        let refused = sentinel.command(&[b"ACL", b"SETUSER", b"default", b"-subscribe"]);
        assert_eq!(refused, b"+OK\r\n");
    }
    let url = format!(
        "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName=cache",
        sentinel.port()
    );
    let origin = support::Origin::new();
    // Two processes connected before the failover: `a`, and `b` with a near cache.
    let (a, b) = (process(&url, false).await, process(&url, true).await);
    let service_a = tower::Layer::layer(&a, origin.service());
    let service_b = tower::Layer::layer(&b, origin.service());
    let query = r#"{"s":"follow"}"#;
    assert!(matches!(
        outcome(&call(&service_a, post(query)).await),
        CacheOutcome::Miss { stored: true, .. }
    ));
    assert_eq!(call_number(call(&service_b, post(query)).await).await, 1);
    support::calls::wait_until("the replica holds the entry", || {
        replica.command(&[b"DBSIZE"]) == primary.command(&[b"DBSIZE"])
    })
    .await;

    fail_over(&sentinel, &replica).await;
    assert!(
        role(&primary).contains("master"),
        "the old primary lives on"
    );
    // A process that connects now reaches the new primary; `a` writes where it reads.
    let c = process(&url, false).await;
    let service_c = tower::Layer::layer(&c, origin.service());
    until_writes_reach(&service_a, &service_c, query).await;
    // `b` reads where `c` writes, its near cache included: each write through `c` reaches it, and its near
    // cache answers the latest.
    for _ in 0..2 {
        let written = rewrite(&service_c, query).await.unwrap();
        let mut answered = false;
        for _ in 0..300 {
            let reply = call(&service_b, post(query)).await;
            let near = support::calls::cache_status(&reply).ends_with("; detail=near");
            if call_number(reply).await == written && near {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            answered,
            "`b` never answered call {written} from its near cache"
        );
    }
    assert!(
        role(&primary).contains("master"),
        "the old primary lived on"
    );
    let log = sentinel.command(&[b"ACL", b"LOG"]);
    assert_eq!(
        String::from_utf8_lossy(&log).contains("subscribe"),
        refuse_subscribe,
        "the stores subscribed unless refused"
    );
}

/// A write of `query` through `service` (the origin asked again, its answer stored): its call number; `None`
/// when the answer was not stored (the store was reconnecting).
async fn rewrite<S: support::calls::Cached>(service: &S, query: &str) -> Option<u64> {
    let mut request = post(query);
    request
        .headers_mut()
        .insert("cache-control", "no-cache".parse().unwrap());
    let reply = call(service, request).await;
    let stored = matches!(outcome(&reply), CacheOutcome::Miss { stored: true, .. });
    let number = call_number(reply).await;
    stored.then_some(number)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_listens_to_another_sentinel_when_its_own_dies() {
    let (primary, replica) = undemotable_pair().await;
    // Three, as Sentinel deployments run: fred forgets the sentinel it last reached (it keeps only those that
    // sentinel names), so with two and one of them dead a store could not reconnect at all.
    let mut first = RedisServer::start_sentinel("cache", primary.port());
    let second = RedisServer::start_sentinel("cache", primary.port());
    let _third = RedisServer::start_sentinel("cache", primary.port());
    support::calls::wait_until("the sentinels know of each other", || {
        first
            .command(&[b"SENTINEL", b"SENTINELS", b"cache"])
            .starts_with(b"*2\r\n")
    })
    .await;
    // Only the first is configured: the store learns of the others from it.
    let url = |sentinel: &RedisServer| {
        format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName=cache",
            sentinel.port()
        )
    };
    let origin = support::Origin::new();
    let a = process(&url(&first), false).await;
    let service_a = tower::Layer::layer(&a, origin.service());
    let query = r#"{"s":"another sentinel"}"#;
    assert!(matches!(
        outcome(&call(&service_a, post(query)).await),
        CacheOutcome::Miss { stored: true, .. }
    ));
    support::calls::wait_until("the replica holds the entry", || {
        replica.command(&[b"DBSIZE"]) == primary.command(&[b"DBSIZE"])
    })
    .await;
    // The store's watch has listened to the first sentinel and asked it which others there are (a store that
    // never reached one would know only the sentinel configured).
    support::calls::wait_until("the watch asked for the other sentinels", || {
        String::from_utf8_lossy(&first.command(&[b"CLIENT", b"LIST"]))
            .lines()
            .any(|client| client.contains(" sub=1 ") && client.contains(" cmd=sentinel|sentinels "))
    })
    .await;

    first.kill();
    fail_over(&second, &replica).await;
    assert!(
        role(&primary).contains("master"),
        "the old primary lives on"
    );
    let c = process(&url(&second), false).await;
    let service_c = tower::Layer::layer(&c, origin.service());
    until_writes_reach(&service_a, &service_c, query).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sentinel_watch_ends_with_the_store() {
    let (primary, _replica) = RedisServer::start_pair().await;
    let sentinel = RedisServer::start_sentinel("cache", primary.port());
    let url = format!(
        "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName=cache",
        sentinel.port()
    );
    let watches = || sentinel.subscribed_clients();
    assert_eq!(watches(), 0);
    let store = RedisStore::connect(&url).await.unwrap();
    let copy = store.clone();
    // The watch's connection, subscribed: the store's own clients only asked the sentinel where the primary is.
    support::calls::wait_until("the watch listens", || watches() == 1).await;
    drop(store);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(watches(), 1, "a clone still holds the watch");
    drop(copy);
    support::calls::wait_until("the watch ended", || watches() == 0).await;
}

/// Three usual mistakes with Sentinel, each refused at connect saying what to check: a service name the sentinels
/// do not monitor, a Sentinel URL naming Redis itself, and a `redis://` URL naming a sentinel (which would
/// connect, then refuse every command the cache sends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_mistakes_are_refused_at_connect_saying_what_to_check() {
    let (primary, _replica, sentinel, _) = monitored().await;
    let refusal =
        |url: String| async move { RedisStore::connect(&url).await.expect_err(&url).to_string() };
    let misnamed = refusal(format!(
        "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName=cahce",
        sentinel.port()
    ))
    .await;
    assert!(
        misnamed.contains("`cahce` through the sentinels")
            && misnamed.contains("the name the sentinels monitor it as (sentinelServiceName)?"),
        "{misnamed}"
    );
    let no_sentinel = refusal(format!(
        "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName=cache",
        primary.port()
    ))
    .await;
    assert!(
        no_sentinel.contains("is this a sentinel's port? For Redis itself, use redis://"),
        "{no_sentinel}"
    );
    let sentinel_as_redis = refusal(format!("redis://127.0.0.1:{}", sentinel.port())).await;
    assert!(
        sentinel_as_redis.contains(&format!(
            "127.0.0.1:{} is a Redis Sentinel",
            sentinel.port()
        )) && sentinel_as_redis.contains("connect with a redis-sentinel://"),
        "{sentinel_as_redis}"
    );
}
