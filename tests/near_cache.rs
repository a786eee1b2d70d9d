//! The near cache against real redis-server processes: two layers with clients of their own stand for two
//! processes, and every way a key can change elsewhere must reach the other's near cache.

use crate::support;

use http::{Method, Request};
use http_body_util::Full;
use std::sync::Arc;
use std::time::Duration;
use support::calls::{
    Cached, Reply, body, cache_status, call, jump, outcome, post, post_bytes, wait_until,
};
use support::proxy::{Mode, Proxy};
use support::{Origin, RedisCluster, RedisServer, fred_client};
use tower_redis_cache::cache::RedisCacheLayerBuilder;
use tower_redis_cache::{CacheOutcome, RedisCache, RedisCacheLayer, RedisStore};

async fn near_layer(url: &str) -> RedisCacheLayerBuilder {
    RedisCacheLayer::builder(RedisStore::new(fred_client(url).await))
        .namespace("near")
        .methods([Method::GET, Method::POST])
        .store_timeout(Duration::from_secs(2))
        .near_cache(16 << 20)
}

fn cached<S>(layer: &RedisCacheLayer, inner: S) -> RedisCache<S> {
    tower::Layer::layer(layer, inner)
}

fn is_near(response: &Reply) -> bool {
    cache_status(response).ends_with("; detail=near")
}

fn revalidate(json: &str) -> Request<Full<bytes::Bytes>> {
    let mut request = post(json);
    request
        .headers_mut()
        .insert("cache-control", "no-cache".parse().unwrap());
    request
}

/// Calls `query` until the near cache answers it (tracking armed, entry filled): a bounded poll.
async fn until_near<S: Cached>(service: &S, query: &str) -> Reply {
    until_near_with(service, || post(query)).await
}

/// Sends `request()` until the near cache answers it: a bounded poll.
async fn until_near_with<S: Cached>(
    service: &S,
    request: impl Fn() -> Request<Full<bytes::Bytes>>,
) -> Reply {
    for _ in 0..500 {
        let response = call(service, request()).await;
        if is_near(&response) {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the near cache never answered {}", request().uri());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_by_one_process_is_never_answered_by_the_others_near_cache() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let a = near_layer(&server.url()).await.build().unwrap();
    let b = near_layer(&server.url()).await.build().unwrap();
    let (service_a, service_b) = (cached(&a, origin.service()), cached(&b, origin.service()));
    let query = r#"{"q":"shared"}"#;

    assert!(matches!(
        outcome(&call(&service_a, post(query)).await),
        CacheOutcome::Miss { stored: true, .. }
    ));
    let near = until_near(&service_b, query).await;
    assert_eq!(outcome(&near), CacheOutcome::Hit);
    assert!(cache_status(&near).starts_with("tower-redis-cache; hit; ttl="));
    assert_eq!(&body(near).await[..], br#"{"n":1,"echo":{"q":"shared"}}"#);
    assert!(b.handle().stats().near_hits >= 1);

    // A writes a new answer; once B has heard of it, B never answers the old one.
    let before = b.handle().stats().near_invalidations;
    call(&service_a, revalidate(query)).await;
    wait_until("B heard of A's write", || {
        b.handle().stats().near_invalidations > before
    })
    .await;
    for _ in 0..20 {
        let response = call(&service_b, post(query)).await;
        assert_eq!(
            &body(response).await[..],
            br#"{"n":2,"echo":{"q":"shared"}}"#
        );
    }
    assert_eq!(origin.calls(), 2);
}

/// The stats say what the near cache holds, counting each entry at more than its body, and however many keys
/// are read, what it holds stays within its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn its_stats_say_what_it_holds_and_it_holds_no_more_than_its_bound() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let bound = 64 * 1024;
    let layer = near_layer(&server.url())
        .await
        .near_cache(bound)
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    let stats = || layer.handle().stats();
    let pad = "x".repeat(2000);
    let query = |i: usize| format!(r#"{{"q":{i},"pad":"{pad}"}}"#);
    assert_eq!((stats().near_bytes, stats().near_entries), (0, 0));

    // The push for the key's own write may land after a first fill and drop it: read until one is kept.
    let mut body_len = 0;
    let mut one = stats();
    for _ in 0..10 {
        body_len = body(until_near(&service, &query(0)).await).await.len() as u64;
        one = stats();
        if one.near_entries == 1 {
            break;
        }
    }
    assert!(body_len > 2000);
    assert_eq!(one.near_entries, 1);
    assert!(
        one.near_bytes > body_len + 600,
        "{} counted for a body of {body_len}",
        one.near_bytes
    );

    for i in 1..100 {
        call(&service, post(&query(i))).await;
        call(&service, post(&query(i))).await;
        let now = stats();
        assert!(
            now.near_bytes <= bound,
            "{} held at key {i}",
            now.near_bytes
        );
    }
    let full = stats();
    // Most keys were read back and kept (a fill is discarded when the push for the key's own write lands after
    // the read began).
    assert!(
        full.near_fills > 50,
        "{} fills, {} discarded",
        full.near_fills,
        full.near_fills_discarded
    );
    assert!(
        full.near_entries >= 5 && full.near_entries < 100,
        "{} entries",
        full.near_entries
    );
    assert!(full.near_bytes >= full.near_entries * one.near_bytes * 9 / 10);
}

/// A process reaching Redis through its Unix socket keeps its near cache coherent as one over TCP does: client
/// tracking's invalidations come down the socket.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_cache_over_a_unix_socket_hears_a_write_made_over_tcp() {
    let server = RedisServer::start_with_socket(&[]);
    let origin = Origin::new();
    let socket = near_layer(&server.socket_url()).await.build().unwrap();
    let tcp = near_layer(&server.url()).await.build().unwrap();
    let (service_socket, service_tcp) = (
        cached(&socket, origin.service()),
        cached(&tcp, origin.service()),
    );
    let query = r#"{"q":"socket"}"#;

    call(&service_tcp, post(query)).await;
    let near = until_near(&service_socket, query).await;
    assert_eq!(&body(near).await[..], br#"{"n":1,"echo":{"q":"socket"}}"#);

    let before = socket.handle().stats().near_invalidations;
    call(&service_tcp, revalidate(query)).await;
    wait_until("the socket's process heard of the write", || {
        socket.handle().stats().near_invalidations > before
    })
    .await;
    let response = call(&service_socket, post(query)).await;
    assert_eq!(
        &body(response).await[..],
        br#"{"n":2,"echo":{"q":"socket"}}"#
    );
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_through_one_process_drops_the_near_copy_in_the_others() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let a = near_layer(&server.url()).await.build().unwrap();
    let b = near_layer(&server.url()).await.build().unwrap();
    let (service_a, service_b) = (cached(&a, origin.service()), cached(&b, origin.service()));
    let uri = "https://api.example.com/items/1";
    let item = || Request::get(uri).body(Full::default()).unwrap();

    call(&service_a, item()).await;
    until_near_with(&service_b, item).await;
    let before = b.handle().stats().near_invalidations;
    let put = Request::put(uri)
        .body(Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    call(&service_a, put).await;
    assert_eq!(a.handle().stats().unsafe_invalidations, 1);
    wait_until("B heard of A's PUT", || {
        b.handle().stats().near_invalidations > before
    })
    .await;
    let after = call(&service_b, item()).await;
    assert!(
        matches!(outcome(&after), CacheOutcome::Miss { stored: true, .. }),
        "{}",
        cache_status(&after)
    );
    assert_eq!(&body(after).await[..], br#"{"n":3,"echo":null}"#);
    assert_eq!(origin.calls(), 3, "the GET, the PUT, the GET after it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_and_flushall_from_outside_empty_the_near_cache() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = near_layer(&server.url()).await.build().unwrap();
    let service = cached(&layer, origin.service());
    let handle = layer.handle();
    let query = r#"{"q":"operator"}"#;
    let key = handle.key_for(&post_bytes(query));

    call(&service, post(query)).await;
    until_near(&service, query).await;
    let before = handle.stats().near_invalidations;
    server.command(&[b"DEL", key.as_str().as_bytes()]);
    wait_until("the DEL reached the near cache", || {
        handle.stats().near_invalidations > before
    })
    .await;
    let after_del = call(&service, post(query)).await;
    assert!(
        matches!(outcome(&after_del), CacheOutcome::Miss { .. }),
        "{}",
        cache_status(&after_del)
    );
    assert_eq!(
        &body(after_del).await[..],
        br#"{"n":2,"echo":{"q":"operator"}}"#
    );

    until_near(&service, query).await;
    server.command(&[b"FLUSHALL"]);
    wait_until("the flush reached the near cache", || {
        handle.stats().near_flushes_server >= 1
    })
    .await;
    let after_flush = call(&service, post(query)).await;
    assert!(matches!(outcome(&after_flush), CacheOutcome::Miss { .. }));
    assert_eq!(
        &body(after_flush).await[..],
        br#"{"n":3,"echo":{"q":"operator"}}"#
    );
}

/// The read of a key is held in flight (its reply waits in a proxy) while another process writes the key:
/// the invalidation arrives first, so the value the read brings back must not be kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_the_read_wins_over_the_fill() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port()).await;
    let origin = Origin::new();
    // A's data connection is the proxy's first; its tracking connection (opened on A's first request) is the
    // second, and is never held.
    let a = near_layer(&proxy.url()).await.build().unwrap();
    assert_eq!(proxy.connections(), 1);
    let b = near_layer(&server.url()).await.build().unwrap();
    let (service_a, service_b) = (cached(&a, origin.service()), cached(&b, origin.service()));
    call(&service_a, post(r#"{"q":"warm"}"#)).await;
    until_near(&service_a, r#"{"q":"warm"}"#).await;

    let query = r#"{"q":"raced"}"#;
    call(&service_b, post(query)).await;
    let gets = |server: &RedisServer| -> u64 {
        let info = String::from_utf8(server.command(&[b"INFO", b"commandstats"])).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
            .and_then(|l| l.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    let gets_before = gets(&server);
    // Counted from here: a warm-up fill that began before A's tracking connection was up is discarded too (the
    // connection's start is a new epoch), which on a loaded machine happens.
    let discarded = a.handle().stats().near_fills_discarded;
    proxy.hold_replies(0);
    let reader = tokio::spawn({
        let service_a = service_a.clone();
        async move { body(call(&service_a, post(query)).await).await }
    });
    // Redis has answered A's read (the old value); the answer waits in the proxy.
    wait_until("Redis served A's read", || gets(&server) > gets_before).await;
    let invalidations = a.handle().stats().near_invalidations;
    call(&service_b, revalidate(query)).await;
    wait_until("A heard of B's write while its read was in flight", || {
        a.handle().stats().near_invalidations > invalidations
    })
    .await;
    proxy.release();
    assert_eq!(
        &reader.await.unwrap()[..],
        br#"{"n":2,"echo":{"q":"raced"}}"#
    );
    assert_eq!(a.handle().stats().near_fills_discarded, discarded + 1);
    for _ in 0..10 {
        let response = call(&service_a, post(query)).await;
        assert_eq!(
            &body(response).await[..],
            br#"{"n":3,"echo":{"q":"raced"}}"#
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_empties_the_near_cache_and_caching_resumes() {
    let mut server = RedisServer::start();
    let origin = Origin::new();
    let layer = near_layer(&server.url()).await.build().unwrap();
    let service = cached(&layer, origin.service());
    let handle = layer.handle();
    let query = r#"{"q":"restart"}"#;
    call(&service, post(query)).await;
    until_near(&service, query).await;
    let flushes = handle.stats().near_flushes_connection;

    server.kill();
    wait_until("the lost connection emptied the near cache", || {
        handle.stats().near_flushes_connection > flushes
    })
    .await;
    let down = call(&service, post(query)).await;
    assert!(!is_near(&down), "no near answer while tracking is down");
    assert!(matches!(outcome(&down), CacheOutcome::Miss { .. }));

    server.restart();
    let back = until_near(&service, query).await;
    assert_eq!(outcome(&back), CacheOutcome::Hit);
}

/// Two processes on one Redis, A's store and tracking connections through a fault proxy (a store of the crate's
/// own clients, `RedisStore::connect`, with its connection settings; calls timing out after 200 ms): the server,
/// the proxy, the origin, A and B. A holds `query`'s first answer in its near cache; returns also how many times
/// its near cache was emptied for a connection so far.
async fn a_through_a_proxy(
    query: &str,
) -> (
    RedisServer,
    Proxy,
    Arc<Origin>,
    RedisCacheLayer,
    RedisCacheLayer,
    u64,
) {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port()).await;
    let origin = Origin::new();
    let a = RedisCacheLayer::builder(RedisStore::connect(&proxy.url()).await.unwrap())
        .namespace("near")
        .methods([Method::GET, Method::POST])
        .store_timeout(Duration::from_millis(200))
        .near_cache(16 << 20)
        .build()
        .unwrap();
    let b = near_layer(&server.url()).await.build().unwrap();
    let service_a = cached(&a, origin.service());
    call(&service_a, post(query)).await;
    let near = until_near(&service_a, query).await;
    assert!(body(near).await.starts_with(br#"{"n":1,"#));
    let flushes = a.handle().stats().near_flushes_connection;
    (server, proxy, origin, a, b, flushes)
}

/// A's replies arrive garbled (bytes that are not RESP) while B writes a key A holds near: A never answers the
/// old value, whether the invalidation was lost in the garble or not, and once the link is clean it answers B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_link_empties_the_near_cache_and_no_write_is_missed() {
    let query = r#"{"q":"garbled"}"#;
    let (_server, proxy, origin, a, b, flushes) = a_through_a_proxy(query).await;
    let (service_a, service_b) = (cached(&a, origin.service()), cached(&b, origin.service()));

    proxy.set(Mode::Garble);
    call(&service_b, revalidate(query)).await;
    wait_until("A's tracking connection was dropped", || {
        a.handle().stats().near_flushes_connection > flushes
    })
    .await;
    for _ in 0..10 {
        let response = call(&service_a, post(query)).await;
        assert!(!is_near(&response), "{}", cache_status(&response));
        assert_ne!(
            &body(response).await[..],
            br#"{"n":1,"echo":{"q":"garbled"}}"#
        );
    }

    proxy.set(Mode::Pass);
    let back = until_near(&service_a, query).await;
    assert_eq!(&body(back).await[..], br#"{"n":2,"echo":{"q":"garbled"}}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shard_of_a_cluster_keeps_the_near_caches_coherent() {
    let cluster = RedisCluster::start();
    let origin = Origin::new();
    let a = near_layer(&cluster.url()).await.build().unwrap();
    let b = near_layer(&cluster.url()).await.build().unwrap();
    let (service_a, service_b) = (cached(&a, origin.service()), cached(&b, origin.service()));
    let queries: Vec<String> = (0..24).map(|i| format!(r#"{{"shard":{i}}}"#)).collect();
    for query in &queries {
        call(&service_a, post(query)).await;
    }
    for node in cluster.nodes() {
        let keys = node.command(&[b"KEYS", b"near:v1:{*"]);
        assert!(
            !keys.starts_with(b"*0"),
            "every primary holds some of the entries"
        );
    }
    for query in &queries {
        until_near(&service_b, query).await;
    }

    let before = b.handle().stats().near_invalidations;
    for query in &queries {
        call(&service_a, revalidate(query)).await;
    }
    wait_until("B heard of every write", || {
        b.handle().stats().near_invalidations >= before + queries.len() as u64
    })
    .await;
    for (i, query) in queries.iter().enumerate() {
        let response = call(&service_b, post(query)).await;
        let expected = format!(r#"{{"n":{},"echo":{query}}}"#, queries.len() + i + 1);
        assert_eq!(body(response).await, expected, "{query}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_cache_over_a_pool_hears_the_other_process_too() {
    use fred::prelude::{Builder, ClientLike, Config};
    let server = RedisServer::start();
    let origin = Origin::new();
    let pool = Builder::from_config(Config::from_url(&server.url()).unwrap())
        .build_pool(3)
        .unwrap();
    pool.init().await.unwrap();
    let a = RedisCacheLayer::builder(RedisStore::from_pool(pool))
        .namespace("near")
        .methods([Method::POST])
        .near_cache(1 << 20)
        .build()
        .unwrap();
    let b = near_layer(&server.url()).await.build().unwrap();
    let (service_a, service_b) = (cached(&a, origin.service()), cached(&b, origin.service()));
    let query = r#"{"q":"pooled"}"#;
    call(&service_a, post(query)).await;
    until_near(&service_a, query).await;
    let before = a.handle().stats().near_invalidations;
    call(&service_b, revalidate(query)).await;
    // A's near copy of version 1 is fresh for a minute: only the push for B's write ends it. (Waiting on the
    // invalidation count alone is not enough: the push for B's lease can arrive before the one for its entry.)
    let mut answers = Vec::new();
    for _ in 0..500 {
        let answer = body(call(&service_a, post(query)).await).await;
        let done = &answer[..] == br#"{"n":2,"echo":{"q":"pooled"}}"#;
        answers.push(answer);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        answers.last().map(|a| &a[..]),
        Some(&br#"{"n":2,"echo":{"q":"pooled"}}"#[..]),
        "A never heard of B's write: {answers:?}"
    );
    assert!(a.handle().stats().near_invalidations > before);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_with_more_header_values_than_a_map_has_slots_is_kept_near() {
    // One name repeated past the 24,576 slots `http` gives a map: the near copy is sized by names, not values.
    let server = RedisServer::start();
    let origin = Origin::new();
    for i in 0..30_000 {
        origin.add_header_value("x-row", http::HeaderValue::from(i));
    }
    let layer = near_layer(&server.url()).await.build().unwrap();
    let service = cached(&layer, origin.service());
    let near = until_near(&service, r#"{"q":"rows"}"#).await;
    let rows = near.headers().get_all("x-row");
    assert_eq!(rows.iter().count(), 30_000);
    assert_eq!(
        rows.iter().next_back().map(|v| v.as_bytes()),
        Some(&b"29999"[..])
    );
    assert_eq!(origin.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_hit_answers_a_clients_own_validators_too() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.set_etag("\"v1\"");
    let layer = near_layer(&server.url()).await.build().unwrap();
    let service = cached(&layer, origin.service());
    let holding = |etag: &'static str| {
        move || {
            Request::get("http://api.test/doc")
                .header("if-none-match", etag)
                .body(Full::default())
                .unwrap()
        }
    };

    let confirmed = until_near_with(&service, holding("\"v1\"")).await;
    assert_eq!(confirmed.status(), http::StatusCode::NOT_MODIFIED);
    assert_eq!(confirmed.headers()["etag"], "\"v1\"");
    assert!(body(confirmed).await.is_empty());
    let whole = until_near_with(&service, holding("\"v0\"")).await;
    assert_eq!(whole.status(), http::StatusCode::OK);
    assert_eq!(&body(whole).await[..], br#"{"n":1,"echo":null}"#);
    assert_eq!(origin.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_hit_answers_a_head_and_a_range_from_the_entry_of_a_get() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let layer = near_layer(&server.url())
        .await
        .methods([Method::GET, Method::HEAD])
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    let doc = |method: Method| {
        move || {
            Request::builder()
                .method(method.clone())
                .uri("http://api.test/doc")
                .body(Full::default())
                .unwrap()
        }
    };

    let whole = until_near_with(&service, doc(Method::GET)).await;
    assert_eq!(&body(whole).await[..], br#"{"n":1,"echo":null}"#);
    let head = until_near_with(&service, doc(Method::HEAD)).await;
    assert_eq!(head.status(), http::StatusCode::OK);
    assert_eq!(head.headers()["content-length"], "19");
    assert!(body(head).await.is_empty());
    let range = || {
        Request::get("http://api.test/doc")
            .header("range", "bytes=1-4")
            .body(Full::default())
            .unwrap()
    };
    let part = until_near_with(&service, range).await;
    assert_eq!(part.status(), http::StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], "bytes 1-4/19");
    assert_eq!(&body(part).await[..], br#""n":"#);
    assert_eq!(origin.methods(), [Method::GET]);
}

/// The clock jumps (current-thread runtime, Tokio time paused, advanced, resumed) while Redis runs in real time.
#[tokio::test]
async fn an_entry_due_for_its_refresh_ahead_is_not_answered_from_the_near_cache() {
    let server = RedisServer::start();
    let origin = Origin::new();
    // Fresh for 10 s, due for a refresh from 7 s.
    let layer = near_layer(&server.url())
        .await
        .fresh_for(Duration::from_secs(10))
        .refresh_ahead(0.3)
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    let (due, later) = (r#"{"q":"due"}"#, r#"{"q":"later"}"#);
    until_near(&service, due).await;
    jump(Duration::from_secs(4)).await;
    until_near(&service, later).await;
    let flushes = |stats: tower_redis_cache::CacheStats| {
        stats.near_flushes_connection + stats.near_flushes_server + stats.near_flushes_local
    };
    let before = flushes(layer.handle().stats());

    // At 8 s the first is due, the second (stored at 4 s) is not: once the near cache answers the second
    // again, it still holds the first, yet that goes to Redis, which starts its refresh.
    jump(Duration::from_secs(4)).await;
    until_near(&service, later).await;
    let answer = call(&service, post(due)).await;
    assert_eq!(outcome(&answer), CacheOutcome::Hit);
    assert!(
        cache_status(&answer).ends_with("; detail=refreshing"),
        "{}",
        cache_status(&answer)
    );
    assert_eq!(
        flushes(layer.handle().stats()),
        before,
        "nothing emptied the near cache meanwhile"
    );
    wait_until("the refresh stored", || layer.handle().stats().stores == 3).await;
    assert_eq!(origin.calls(), 3);
}

#[cfg(feature = "compression")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_near_cache_answers_a_compressed_entry_with_its_whole_body() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let a = near_layer(&server.url())
        .await
        .compress_above(256)
        .build()
        .unwrap();
    let b = near_layer(&server.url()).await.build().unwrap();
    let (service_a, service_b) = (cached(&a, origin.service()), cached(&b, origin.service()));
    let query = format!(r#"{{"q":"{}"}}"#, "row,".repeat(4096));

    let answer = body(call(&service_a, post(&query)).await).await;
    assert!(answer.len() > 16 << 10);
    let key = a.handle().key_for(&post_bytes(&query));
    let stored = server.command(&[b"GET", key.as_str().as_bytes()]);
    assert!(stored.len() * 4 < answer.len(), "stored compressed");
    for service in [&service_a, &service_b] {
        let near = until_near(service, &query).await;
        assert_eq!(body(near).await, answer);
    }
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_shared_redis_store_keeps_a_near_cache_and_a_memory_store_does_not() {
    use tower_redis_cache::{MemoryStore, Store};
    let server = RedisServer::start();
    let redis = || async { RedisStore::new(fred_client(&server.url()).await) };
    let near = |builder: RedisCacheLayerBuilder| builder.near_cache(1 << 20).build();
    assert!(near(RedisCacheLayer::builder(Arc::new(redis().await))).is_ok());
    let shared: Arc<dyn Store> = Arc::new(redis().await);
    assert!(near(RedisCacheLayer::builder(shared)).is_ok());
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new(1 << 20));
    assert_eq!(
        near(RedisCacheLayer::builder(memory))
            .unwrap_err()
            .setting(),
        tower_redis_cache::error::Setting::NearCache
    );
}

/// Variants kept apart (`keep_variants`) are answered from the near cache each under its own key, and another
/// process's new answer for one variant reaches this one's near copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_variant_is_answered_from_the_near_cache_and_kept_coherent() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.add_header("vary", "Accept-Language");
    let a = near_layer(&server.url()).await.build().unwrap();
    let b = near_layer(&server.url()).await.build().unwrap();
    let (service_a, service_b) = (cached(&a, origin.service()), cached(&b, origin.service()));
    let greet = |lang: &'static str| {
        move || {
            Request::get("http://api.test/greeting")
                .header("accept-language", lang)
                .body(Full::default())
                .unwrap()
        }
    };
    for lang in ["de", "fr"] {
        assert!(matches!(
            outcome(&call(&service_a, greet(lang)()).await),
            CacheOutcome::Miss { stored: true, .. }
        ));
    }
    for (lang, n) in [("de", 1), ("fr", 2), ("de", 1), ("fr", 2)] {
        let near = until_near_with(&service_b, greet(lang)).await;
        let expected = format!(r#"{{"n":{n},"echo":null}}"#);
        assert_eq!(&body(near).await[..], expected.as_bytes(), "{lang}");
    }
    assert_eq!(origin.calls(), 2);

    // A refreshes the French entry; B's near copy of it goes, and B reads the new answer.
    let mut refresh = greet("fr")();
    refresh
        .headers_mut()
        .insert("cache-control", "no-cache".parse().unwrap());
    call(&service_a, refresh).await;
    wait_until("b hears of the new French answer", || {
        b.handle().stats().near_invalidations >= 1
    })
    .await;
    let fr = until_near_with(&service_b, greet("fr")).await;
    assert_eq!(&body(fr).await[..], br#"{"n":3,"echo":null}"#);
    let de = until_near_with(&service_b, greet("de")).await;
    assert_eq!(&body(de).await[..], br#"{"n":1,"echo":null}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_moved_to_a_primary_that_joined_the_cluster_stays_coherent() {
    let mut cluster = RedisCluster::start();
    let origin = Origin::new();
    let a = near_layer(&cluster.url()).await.build().unwrap();
    let b = near_layer(&cluster.url()).await.build().unwrap();
    let (service_a, service_b) = (cached(&a, origin.service()), cached(&b, origin.service()));
    let query = r#"{"moved":1}"#;
    call(&service_a, post(query)).await;
    until_near(&service_b, query).await;

    // A primary joins and the key's slot moves to it (MIGRATE removes the key from the old primary, whose push
    // drops B's copy).
    let slot = slot_of(&a, query);
    let owner = cluster.primary_of(slot);
    let joined = cluster.add_primary();
    cluster.move_slot(slot, owner, joined);

    // B reads the key from the new primary and keeps it near: tracking has to be on there. A writes it there;
    // B answers the write within the bound below (without tracking there, it would answer the old one for as
    // long as the near cache keeps it), and never the old answer after it.
    let near = until_near(&service_b, query).await;
    assert_eq!(&body(near).await[..], br#"{"n":1,"echo":{"moved":1}}"#);
    call(&service_a, revalidate(query)).await;
    let written = format!(r#"{{"n":{},"echo":{query}}}"#, origin.calls());
    until_only(&service_b, query, &written).await;
    assert!(b.handle().stats().near_hits > 0);
}

/// A Cluster that lost a primary with no replica to take its slots over: fred's cluster client connects to every
/// primary or to none, so tracking goes on at the two that answer, on connections of their own. Their keys are
/// answered from the near cache again, and stay so, a write to them still heard at once; the lost shard's keys go
/// to the origin. Once the primary is back, its keys are near hits too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_lost_a_primary_keeps_the_others_keys_in_the_near_cache_and_coherent() {
    let mut cluster = RedisCluster::start_with(0, 2000, &["--cluster-require-full-coverage", "no"]);
    let origin = Origin::new();
    let layer = RedisCacheLayer::builder(RedisStore::connect(&cluster.url()).await.unwrap())
        .namespace("near")
        .methods([Method::POST])
        .store_timeout(Duration::from_millis(100))
        .circuit_breaker(3, Duration::from_secs(1))
        .near_cache(16 << 20)
        .build()
        .unwrap();
    let service = cached(&layer, origin.service());
    let shards: Vec<Vec<(u16, u16)>> = (0..3).map(|i| cluster.slots_of(i)).collect();
    let shard_of = |query: &str| {
        let slot = slot_of(&layer, query);
        shards
            .iter()
            .position(|ranges| {
                ranges
                    .iter()
                    .any(|(start, end)| (*start..=*end).contains(&slot))
            })
            .unwrap()
    };
    let queries: Vec<String> = (0..24).map(|i| format!(r#"{{"lost":{i}}}"#)).collect();
    let (down, up): (Vec<&String>, Vec<&String>) =
        queries.iter().partition(|query| shard_of(query) == 2);
    assert!(down.len() >= 3 && up.len() >= 10, "{down:?} {up:?}");
    for query in &queries {
        until_near(&service, query).await;
    }

    cluster.node_mut(2).kill();
    // Not live for every key once the loss is seen (within a second: until then the near cache answers, as it
    // would through any lapse of a second) ...
    wait_until("tracking lost a primary", || {
        !layer.handle().near_cache_live()
    })
    .await;
    // ... but for the other shards' keys.
    for query in &up {
        until_near(&service, query).await;
    }
    let (calls, near_hits) = (origin.calls(), layer.handle().stats().near_hits);
    for round in 0..3 {
        for query in &up {
            let response = call(&service, post(query)).await;
            assert!(is_near(&response), "round {round}: {query}");
        }
        for query in &down {
            let response = call(&service, post(query)).await;
            assert_eq!(response.status(), http::StatusCode::OK);
            assert!(!is_near(&response), "{query}, on the lost shard");
        }
    }
    assert_eq!(
        origin.calls() - calls,
        3 * down.len(),
        "only the lost shard's keys"
    );
    assert_eq!(
        layer.handle().stats().near_hits - near_hits,
        3 * up.len() as u64
    );
    assert!(!layer.handle().near_cache_live());

    // Another process's write to one of them (its entry removed on its primary) drops the near copy at once.
    let written = up[0];
    let key = layer.handle().key_for(&post_bytes(written));
    let before = layer.handle().stats().near_invalidations;
    cluster.nodes()[shard_of(written)].command(&[b"DEL", key.as_str().as_bytes()]);
    wait_until("the write heard", || {
        layer.handle().stats().near_invalidations > before
    })
    .await;
    let calls = origin.calls();
    let response = call(&service, post(written)).await;
    assert!(matches!(outcome(&response), CacheOutcome::Miss { .. }));
    assert_eq!(origin.calls(), calls + 1);
    // So does a flush of one of those primaries (seen by its canary's absence), and the rest still answer.
    let flushed = up[1];
    until_near(&service, flushed).await;
    let flushes = layer.handle().stats().near_flushes_server;
    cluster.nodes()[shard_of(flushed)].command(&[b"FLUSHALL"]);
    wait_until("the flush seen", || {
        layer.handle().stats().near_flushes_server > flushes
    })
    .await;
    let response = call(&service, post(flushed)).await;
    assert!(matches!(outcome(&response), CacheOutcome::Miss { .. }));
    for query in &up {
        until_near(&service, query).await;
    }

    // Back (empty): every key is answered from the near cache again, the lost shard's too.
    cluster.node_mut(2).restart();
    for query in &queries {
        until_near(&service, query).await;
    }
    wait_until("tracking on at every primary", || {
        layer.handle().near_cache_live()
    })
    .await;
}

/// The hash slot of the entry `layer` keeps for `query`.
fn slot_of(layer: &RedisCacheLayer, query: &str) -> u16 {
    fred::util::redis_keyslot(
        layer
            .handle()
            .key_for(&post_bytes(query))
            .as_str()
            .as_bytes(),
    )
}

/// Calls `query` until it is answered `expected` 20 times (a bounded poll), failing if any other answer comes
/// after the first `expected` one.
async fn until_only<S: Cached>(service: &S, query: &str, expected: &str) {
    let mut answered = 0;
    for _ in 0..500 {
        let response = call(service, post(query)).await;
        if body(response).await == expected {
            answered += 1;
        } else {
            assert_eq!(answered, 0, "another answer after {expected}");
        }
        if answered == 20 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{query} was answered {expected} {answered} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_caches_follow_a_cluster_failover_and_stay_coherent() {
    let mut cluster = RedisCluster::start_with(1, 500, &[]);
    let near_layer = |url: String| async move {
        near_layer(&url)
            .await
            .store_timeout(Duration::from_millis(200))
            .circuit_breaker(3, Duration::from_millis(200))
            .build()
            .unwrap()
    };
    let (a, b) = (
        near_layer(cluster.url()).await,
        near_layer(cluster.url()).await,
    );
    let origin = Origin::new();
    let (service_a, service_b) = (cached(&a, origin.service()), cached(&b, origin.service()));
    let query = r#"{"failover":1}"#;
    call(&service_a, post(query)).await;
    until_near(&service_b, query).await;

    // The key's primary dies once its replica holds the key; the replica takes over its slots.
    let slot = slot_of(&a, query);
    let serves = |port: u16| {
        support::redis::slots_served(port)
            .iter()
            .any(|&(start, end)| (start..=end).contains(&slot))
    };
    let owner = cluster.primary_of(slot);
    assert_eq!(
        cluster.nodes()[owner].command(&[b"WAIT", b"1", b"5000"]),
        b":1\r\n"
    );
    cluster.node_mut(owner).kill();
    let ports: Vec<u16> = cluster.nodes().iter().map(|node| node.port()).collect();
    wait_until("a replica took over the slot", || {
        ports
            .iter()
            .enumerate()
            .any(|(i, &port)| i != owner && serves(port))
    })
    .await;

    // B keeps the key near again, read from the new primary (the entry the replica had, or one a miss of B's
    // stored there while the shard was failing over); A writes it there; B answers the write, and never the
    // old answer after it: tracking is on at the new primary.
    until_near(&service_b, query).await;
    let mut written = None;
    for _ in 0..300 {
        if let CacheOutcome::Miss { stored: true, .. } =
            outcome(&call(&service_a, revalidate(query)).await)
        {
            written = Some(format!(r#"{{"n":{},"echo":{query}}}"#, origin.calls()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let written = written.expect("the write was stored on the new primary");
    until_only(&service_b, query, &written).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_stops_the_near_cache_and_it_answers_again_once_resumed() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let a = near_layer(&server.url())
        .await
        .store_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let service = cached(&a, origin.service());
    let query = r#"{"q":"paused"}"#;
    assert!(
        !a.handle().near_cache_live(),
        "started by the first request"
    );
    call(&service, post(query)).await;
    until_near(&service, query).await;
    assert!(a.handle().near_cache_live());

    // Paused past a probe's timeout, the connections stay up: nothing reconnects, yet the near cache stops
    // answering (it cannot hear of writes), and must be armed again on the same connection.
    server.pause();
    let mut stopped = false;
    for _ in 0..300 {
        if !is_near(&call(&service, post(query)).await) {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stopped, "the near cache stopped answering");
    assert!(!a.handle().near_cache_live());
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.resume();
    until_near(&service, query).await;
    assert!(a.handle().near_cache_live());
}

/// Closes every RESP3 connection (the tracking side's; the stores speak RESP2) on `node`.
fn kill_tracking_connections(node: &RedisServer) {
    let list = node.command(&[b"CLIENT", b"LIST", b"TYPE", b"normal"]);
    let list = support::bulk_payload(&list).unwrap_or_default();
    for line in String::from_utf8_lossy(&list).lines() {
        if line.contains(" resp=3") {
            let id = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("id="))
                .expect("an id");
            node.command(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_missed_a_slot_moving_back_does_not_keep_the_near_cache_off() {
    let mut cluster = RedisCluster::start();
    let origin = Origin::new();
    let layer = near_layer(&cluster.url()).await.build().unwrap();
    let service = cached(&layer, origin.service());
    let query = r#"{"back":1}"#;
    call(&service, post(query)).await;
    until_near(&service, query).await;

    // The key's slot moves to a node that joined, and the store reads it there (so it knows that node) ...
    let slot = slot_of(&layer, query);
    let owner = cluster.primary_of(slot);
    let joined = cluster.add_primary();
    cluster.move_slot(slot, owner, joined);
    until_near(&service, query).await;
    // ... then moves back, and the store reads nothing there: its view of the cluster keeps the joined node,
    // which now serves no slot.
    cluster.move_slot(slot, joined, owner);

    // Tracking re-arms (its connections closed); a store view that still names the joined node must not keep
    // the near cache off.
    let flushes = layer.handle().stats().near_flushes_connection;
    for node in cluster.nodes() {
        kill_tracking_connections(node);
    }
    wait_until("tracking noticed", || {
        layer.handle().stats().near_flushes_connection > flushes
    })
    .await;
    let other = r#"{"elsewhere":1}"#;
    call(&service, post(other)).await;
    until_near(&service, other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_connections_closed_on_a_cluster_are_armed_again() {
    let cluster = RedisCluster::start();
    let origin = Origin::new();
    let a = near_layer(&cluster.url()).await.build().unwrap();
    let b = near_layer(&cluster.url()).await.build().unwrap();
    let (service_a, service_b) = (cached(&a, origin.service()), cached(&b, origin.service()));
    let queries: Vec<String> = (0..12).map(|i| format!(r#"{{"closed":{i}}}"#)).collect();
    for query in &queries {
        call(&service_a, post(query)).await;
        until_near(&service_b, query).await;
    }
    // Every tracking connection is closed; the clients reconnect on their own, without tracking. Once B's near
    // cache has emptied itself and answers again (holding the keys anew), A writes each key.
    let flushes = b.handle().stats().near_flushes_connection;
    for node in cluster.nodes() {
        kill_tracking_connections(node);
    }
    wait_until("B's tracking noticed", || {
        b.handle().stats().near_flushes_connection > flushes
    })
    .await;
    for query in &queries {
        until_near(&service_b, query).await;
    }
    for query in &queries {
        call(&service_a, revalidate(query)).await;
        let written = format!(r#"{{"n":{},"echo":{query}}}"#, origin.calls());
        until_only(&service_b, query, &written).await;
    }
}

/// A's connections lose their login and their server (`NOAUTH` on every command, no push arrives), as behind a
/// managed Redis's proxy whose node was replaced, while B writes a key A holds near: A never answers the old
/// value, and once its connections are made again (they log in anew), its near cache answers B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_lose_their_login_are_made_again_and_the_near_cache_misses_no_write() {
    let query = r#"{"q":"noauth"}"#;
    let (_server, proxy, origin, a, b, flushes) = a_through_a_proxy(query).await;
    let (service_a, service_b) = (cached(&a, origin.service()), cached(&b, origin.service()));

    proxy.set(Mode::NoAuth);
    call(&service_b, revalidate(query)).await;
    // Until its next probe, A's tracking connection cannot tell it lost its server (no push arrives, as when
    // Redis is paused); the probe is refused, and the connection made again empties the near cache as it arms.
    wait_until("A's tracking connection was made again", || {
        a.handle().stats().near_flushes_connection > flushes
    })
    .await;
    // New connections log in as usual (the mode holds only for those open at the switch).
    let back = until_near(&service_a, query).await;
    assert_eq!(&body(back).await[..], br#"{"n":2,"echo":{"q":"noauth"}}"#);
    for _ in 0..10 {
        let response = call(&service_a, post(query)).await;
        assert_eq!(
            &body(response).await[..],
            br#"{"n":2,"echo":{"q":"noauth"}}"#
        );
    }
}
