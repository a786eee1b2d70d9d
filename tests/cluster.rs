//! Redis Cluster under failure, against real processes: one shard down while the others work (a circuit
//! breaker per node), a primary killed while requests flow and its replica promoted, and slots moved by
//! `redis-cli --cluster reshard` while requests flow (`MOVED`/`ASK`); and invalidation reaching entries on every
//! shard.

use crate::support;

use http::{Method, StatusCode};
use std::time::Duration;
use support::RedisCluster;
use support::calls::{call, outcome, post, post_bytes};
use tower_redis_cache::cache::RedisCacheLayerBuilder;
use tower_redis_cache::{CacheOutcome, RedisCacheLayer, RedisStore};

fn layer_over(store: RedisStore) -> RedisCacheLayerBuilder {
    RedisCacheLayer::builder(store)
        .namespace("cl")
        .methods([Method::POST])
        .store_timeout(Duration::from_millis(100))
}

fn query(i: usize) -> String {
    format!(r#"{{"q":{i}}}"#)
}

/// Whether the cache key of query `i` lives in `ranges`.
fn on_node(layer: &RedisCacheLayer, i: usize, ranges: &[(u16, u16)]) -> bool {
    let key = layer.handle().key_for(&post_bytes(&query(i)));
    let slot = fred::util::redis_keyslot(key.as_str().as_bytes());
    ranges
        .iter()
        .any(|(start, end)| (*start..=*end).contains(&slot))
}

/// Three primaries without replicas that do not require full coverage (so the shards that answer keep serving
/// while one is down), an origin, and a layer over them whose breakers open after three failures for a second.
async fn three_shards() -> (
    RedisCluster,
    std::sync::Arc<support::Origin>,
    RedisCacheLayer,
) {
    let cluster = RedisCluster::start_with(0, 2000, &["--cluster-require-full-coverage", "no"]);
    let layer = layer_over(RedisStore::connect(&cluster.url()).await.unwrap())
        .circuit_breaker(3, Duration::from_secs(1))
        .build()
        .unwrap();
    (cluster, support::Origin::new(), layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unresponsive_shard_of_three_costs_only_its_own_keys() {
    let (cluster, origin, layer) = three_shards().await;
    let service = tower::Layer::layer(&layer, origin.service());
    let handle = layer.handle();
    for i in 0..30 {
        call(&service, post(&query(i))).await;
    }
    let stalled = cluster.slots_of(2);
    let (down, up): (Vec<usize>, Vec<usize>) = (0..30).partition(|i| on_node(&layer, *i, &stalled));
    assert!(!down.is_empty() && up.len() >= 10, "{down:?} {up:?}");

    cluster.nodes()[2].pause();
    // Half the calls go to the stalled shard: a breaker for the whole store would open and cost every key.
    let before = handle.stats();
    for round in 0..4 {
        for (d, u) in down.iter().cycle().zip(&up) {
            let reply = call(&service, post(&query(*u))).await;
            assert_eq!(
                outcome(&reply),
                CacheOutcome::Hit,
                "round {round}: key {u} on a healthy shard"
            );
            let reply = call(&service, post(&query(*d))).await;
            assert_eq!(reply.status(), StatusCode::OK);
        }
    }
    let after = handle.stats();
    // The stalled shard's breaker opened after 3 timeouts; each later second, one probe.
    assert!(
        after.store_errors - before.store_errors <= 6,
        "{before:?} {after:?}"
    );
    assert!(after.store_skipped > before.store_skipped);
    assert!(handle.store_unavailable());

    // Back: once the breaker's probe succeeds, the shard's keys are cached again.
    cluster.nodes()[2].resume();
    let d = down[0];
    let mut resumed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if outcome(&call(&service, post(&query(d))).await) == CacheOutcome::Hit {
            resumed = true;
            break;
        }
    }
    assert!(resumed, "caching resumed on the shard");
    assert!(!handle.store_unavailable());
}

/// A primary killed with no replica to take its slots over: fred's cluster client connects to every primary or
/// to none, so it sends nothing while one is gone, and every key went to the origin. The keys of the other two
/// shards are still answered from the cache (on connections to their own primaries), only the lost shard's go to
/// the origin, and once it is back, its keys are cached again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_gone_with_no_replica_costs_only_its_own_keys() {
    let (mut cluster, origin, layer) = three_shards().await;
    let service = tower::Layer::layer(&layer, origin.service());
    for i in 0..30 {
        call(&service, post(&query(i))).await;
    }
    let gone = cluster.slots_of(2);
    let (down, up): (Vec<usize>, Vec<usize>) = (0..30).partition(|i| on_node(&layer, *i, &gone));
    assert!(!down.is_empty() && up.len() >= 10, "{down:?} {up:?}");
    let before: Vec<String> = connections(&cluster)
        .into_iter()
        .map(|(id, _)| id)
        .collect();

    cluster.node_mut(2).kill();
    // The calls right after the kill may fail while fred's client finds the primary gone; then every key of the
    // two other shards is a hit again ...
    for u in &up {
        assert!(
            until_hit(&service, *u).await,
            "key {u}, on a shard that answers"
        );
    }
    // ... and stays one, while the lost shard's keys are answered by the origin.
    let calls = origin.calls();
    for round in 0..3 {
        for (u, d) in up.iter().zip(down.iter().cycle()) {
            let reply = call(&service, post(&query(*u))).await;
            assert_eq!(outcome(&reply), CacheOutcome::Hit, "round {round}: key {u}");
            let reply = call(&service, post(&query(*d))).await;
            assert_eq!(reply.status(), StatusCode::OK);
        }
    }
    assert_eq!(
        origin.calls() - calls,
        3 * up.len(),
        "only the lost shard's keys"
    );
    // The keys of this shard went through a connection of their own to its primary (not the cluster client's
    // view of the Cluster, `cluster|slots`, nor the command listing them, `client|list`).
    let own: Vec<String> = connections(&cluster)
        .into_iter()
        .filter(|(id, cmd)| {
            !before.contains(id) && !cmd.starts_with("cluster") && !cmd.starts_with("client")
        })
        .map(|(id, _)| id)
        .collect();
    assert!(!own.is_empty(), "{:?}", connections(&cluster));

    // Back (empty): its keys are stored and answered from the cache again.
    cluster.node_mut(2).restart();
    for d in &down {
        assert!(until_hit(&service, *d).await, "key {d}, on the shard back");
    }
    // The cluster client sends everything again: the primaries' own connections are closed.
    support::calls::wait_until("the primaries' own connections closed", || {
        connections(&cluster)
            .iter()
            .all(|(id, _)| !own.contains(id))
    })
    .await;
    for u in &up {
        assert_eq!(
            outcome(&call(&service, post(&query(*u))).await),
            CacheOutcome::Hit
        );
    }
}

/// The connections that node 0 (a shard staying up) serves, by id, with their last command.
fn connections(cluster: &RedisCluster) -> Vec<(String, String)> {
    let list =
        String::from_utf8_lossy(&cluster.nodes()[0].command(&[b"CLIENT", b"LIST"])).into_owned();
    let field = |line: &str, name: &str| {
        line.split(' ')
            .find_map(|f| f.strip_prefix(name))
            .unwrap_or_default()
            .to_owned()
    };
    list.lines()
        .map(|line| (field(line, "id="), field(line, "cmd=")))
        .collect()
}

/// A purge while a primary is gone (and fred's cluster client, which connects to all or none, cannot send)
/// removes every key of the primaries that answer, through their own connections, and says which one it missed,
/// so that the caller can purge again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_while_a_primary_is_gone_clears_the_others_and_names_the_one_it_missed() {
    let (mut cluster, origin, layer) = three_shards().await;
    let service = tower::Layer::layer(&layer, origin.service());
    let handle = layer.handle();
    for i in 0..30 {
        call(&service, post(&query(i))).await;
    }
    let gone = cluster.slots_of(2);
    let (down, up): (Vec<usize>, Vec<usize>) = (0..30).partition(|i| on_node(&layer, *i, &gone));
    assert!(!down.is_empty() && up.len() >= 10, "{down:?} {up:?}");
    let keys_on = |cluster: &RedisCluster, node: usize| {
        let reply = cluster.nodes()[node].command(&[b"DBSIZE"]);
        String::from_utf8_lossy(&reply)
            .trim()
            .trim_start_matches(':')
            .parse::<u64>()
            .unwrap()
    };
    let stored = keys_on(&cluster, 0) + keys_on(&cluster, 1);
    assert!(stored >= up.len() as u64, "{stored}");
    let before: Vec<String> = connections(&cluster)
        .into_iter()
        .map(|(id, _)| id)
        .collect();

    let port = cluster.nodes()[2].port();
    cluster.node_mut(2).kill();
    // Once the keys of the shards that answer are hits through connections of their own, fred's client has found
    // the primary gone and sends nothing.
    for u in &up {
        assert!(until_hit(&service, *u).await, "key {u}");
    }
    support::calls::wait_until("a connection of the store's own to node 0", || {
        connections(&cluster).iter().any(|(id, cmd)| {
            !before.contains(id) && !cmd.starts_with("cluster") && !cmd.starts_with("client")
        })
    })
    .await;

    let error = handle.purge().await.unwrap_err().to_string();
    assert!(
        error.contains("done on 2 of 3 Cluster primaries"),
        "{error}"
    );
    assert!(
        error.contains(&format!(":{port}:")),
        "the primary missed, named: {error}"
    );
    assert!(
        !error.contains(&format!(":{}:", cluster.nodes()[0].port())),
        "{error}"
    );
    assert_eq!(keys_on(&cluster, 0) + keys_on(&cluster, 1), 0);
    let calls = origin.calls();
    for u in &up {
        assert_ne!(
            outcome(&call(&service, post(&query(*u))).await),
            CacheOutcome::Hit,
            "key {u}"
        );
    }
    assert_eq!(origin.calls() - calls, up.len());

    // Back: a purge that reaches every primary, once fred's client connects again.
    cluster.node_mut(2).restart();
    let mut purged = Err(String::new());
    for _ in 0..300 {
        purged = handle.purge().await.map_err(|e| e.to_string());
        if purged.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(purged.is_ok(), "{purged:?}");
    assert_eq!((0..3).map(|node| keys_on(&cluster, node)).sum::<u64>(), 0);
}

/// Runs `rounds` passes over queries `0..n` from two tasks, returning every status seen that was not 200.
async fn traffic<S>(service: S, n: usize, until: tokio::sync::watch::Receiver<bool>) -> Vec<String>
where
    S: tower::Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = support::calls::Reply,
            Error = tower_redis_cache::error::BoxError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let tasks: Vec<_> = (0..2)
        .map(|t| {
            let service = service.clone();
            let until = until.clone();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut i = t;
                while !*until.borrow() {
                    use tower::ServiceExt;
                    match service.clone().oneshot(post(&query(i % n))).await {
                        Ok(reply) if reply.status() == StatusCode::OK => {}
                        Ok(reply) => failures.push(format!("status {}", reply.status())),
                        Err(error) => failures.push(format!("error {error}")),
                    }
                    i += 2;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                failures
            })
        })
        .collect();
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    failures
}

/// Calls query `i` until it is a hit (a liveness guard of 30 s, not a timing claim).
async fn until_hit<S>(service: &S, i: usize) -> bool
where
    S: tower::Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = support::calls::Reply,
            Error = tower_redis_cache::error::BoxError,
        > + Clone,
{
    for _ in 0..300 {
        if outcome(&call(service, post(&query(i))).await) == CacheOutcome::Hit {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_while_requests_flow_fails_none_and_caching_resumes_on_its_replica() {
    let mut cluster = RedisCluster::start_with(1, 500, &[]);
    let layer = layer_over(RedisStore::connect(&cluster.url()).await.unwrap())
        .circuit_breaker(3, Duration::from_millis(200))
        .build()
        .unwrap();
    let origin = support::Origin::new();
    let service = tower::Layer::layer(&layer, origin.service());
    for i in 0..30 {
        call(&service, post(&query(i))).await;
    }
    let primary = (0..cluster.nodes().len())
        .find(|i| cluster.is_primary(*i))
        .unwrap();
    let slots = cluster.slots_of(primary);
    let shard_keys: Vec<usize> = (0..30).filter(|i| on_node(&layer, *i, &slots)).collect();
    assert!(!shard_keys.is_empty());

    let (stop, until) = tokio::sync::watch::channel(false);
    let flow = tokio::spawn(traffic(service.clone(), 30, until));
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.node_mut(primary).kill();
    // A replica takes over its slots (cluster-node-timeout 500 ms) ...
    tokio::task::spawn_blocking({
        let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
        move || {
            for _ in 0..300 {
                let promoted = ports.iter().enumerate().any(|(i, port)| {
                    i != primary
                        && support::redis::slots_served(*port)
                            .iter()
                            .any(|r| slots.contains(r))
                });
                if promoted {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let views: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != primary)
                .map(|(_, port)| format!("{port}: {:?}", support::redis::slots_served(*port)))
                .collect();
            panic!("no replica took over the killed primary's slots {slots:?}: {views:?}");
        }
    })
    .await
    .unwrap();
    // ... and caching resumes on that shard.
    for i in &shard_keys {
        assert!(until_hit(&service, *i).await, "key {i} cached again");
    }
    stop.send_replace(true);
    let failures = flow.await.unwrap();
    assert!(failures.is_empty(), "requests failed: {failures:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_while_requests_flow_costs_no_request() {
    let cluster = RedisCluster::start();
    let layer = layer_over(RedisStore::connect(&cluster.url()).await.unwrap())
        .store_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let origin = support::Origin::new();
    let service = tower::Layer::layer(&layer, origin.service());
    let handle = layer.handle();
    for i in 0..60 {
        call(&service, post(&query(i))).await;
    }
    let moved_before = cluster.slots_of(0);

    let (stop, until) = tokio::sync::watch::channel(false);
    let flow = tokio::spawn(traffic(service.clone(), 60, until));
    // Move 2000 slots, keys and all, from the first primary to the second: MOVED and ASK along the way.
    let from = support::redis::node_id(cluster.nodes()[0].port());
    let to = support::redis::node_id(cluster.nodes()[1].port());
    let port = cluster.nodes()[0].port();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{port}")])
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args(["--cluster-slots", "2000", "--cluster-yes"])
            .args(["--cluster-pipeline", "10"])
            .output()
            .expect("run redis-cli --cluster reshard")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "reshard: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send_replace(true);
    let failures = flow.await.unwrap();
    assert!(failures.is_empty(), "requests failed: {failures:?}");
    assert_ne!(cluster.slots_of(0), moved_before, "slots moved");

    // Every entry is still there, answered from its new node.
    let calls = origin.calls();
    for i in 0..60 {
        assert_eq!(
            outcome(&call(&service, post(&query(i))).await),
            CacheOutcome::Hit,
            "key {i}"
        );
    }
    assert_eq!(origin.calls(), calls);
    assert_eq!(handle.stats().store_errors, 0, "{:?}", handle.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_removes_its_uris_entries_across_shards() {
    let cluster = RedisCluster::start();
    let origin = support::Origin::new();
    let layer = layer_over(RedisStore::connect(&cluster.url()).await.unwrap())
        .methods([Method::GET, Method::HEAD])
        // `HEAD`s with entries of their own: a URI's entries then live on two shards.
        .head_from_get(false)
        .store_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    let request = |method: &str, i: usize| {
        http::Request::builder()
            .method(method)
            .uri(format!("https://api.example.com/items/{i}"))
            .body(http_body_util::Full::<bytes::Bytes>::default())
            .unwrap()
    };
    let slot = |method: &str, i: usize| {
        let head = request(method, i).map(|_| bytes::Bytes::new());
        fred::util::redis_keyslot(layer.handle().key_for(&head).as_str().as_bytes())
    };
    let apart = (0..8).filter(|i| {
        let node = |slot| {
            (0..3).position(|n| {
                cluster
                    .slots_of(n)
                    .iter()
                    .any(|(start, end)| (*start..=*end).contains(&slot))
            })
        };
        node(slot("GET", *i)) != node(slot("HEAD", *i))
    });
    assert!(
        apart.count() > 0,
        "some GET and HEAD entries live on different shards"
    );

    for i in 0..8 {
        for method in ["GET", "HEAD", "GET", "HEAD"] {
            call(&service, request(method, i)).await;
        }
    }
    for i in 0..8 {
        let put = call(&service, request("PUT", i)).await;
        assert_eq!(put.status(), StatusCode::OK);
        for method in ["GET", "HEAD"] {
            let after = call(&service, request(method, i)).await;
            assert!(
                matches!(outcome(&after), CacheOutcome::Miss { stored: true, .. }),
                "{method} /items/{i}"
            );
        }
    }
    assert_eq!(layer.handle().stats().unsafe_invalidations, 8);
    assert_eq!(origin.calls(), 8 * 2 + 8 + 8 * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_reaches_the_tag_sets_of_every_shard() {
    let cluster = RedisCluster::start();
    let store = RedisStore::connect(&cluster.url()).await.unwrap();
    // Twelve sets whose every member expired, over the three shards, and one whose member lives.
    let sets: Vec<String> = (0..12).map(|i| format!("cl:v1:tag:{{set-{i}}}")).collect();
    let shards: std::collections::HashSet<usize> = sets
        .iter()
        .map(|set| cluster.primary_of(fred::util::redis_keyslot(set.as_bytes())))
        .collect();
    assert_eq!(shards.len(), 3, "sets on every shard");
    use tower_redis_cache::Store;
    for set in &sets {
        let expiring = store.tag(set, "cl:v1:{m}", Duration::from_millis(1), u64::MAX);
        assert!(expiring.await.unwrap());
    }
    let kept = "cl:v1:tag:{kept}";
    let live = store.tag(kept, "cl:v1:{m}", Duration::from_secs(60), u64::MAX);
    assert!(live.await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let layer = layer_over(store.clone()).build().unwrap();
    assert_eq!(layer.handle().sweep_tags().await.unwrap(), 12);
    assert_eq!(layer.handle().sweep_tags().await.unwrap(), 0);
    assert_eq!(layer.handle().stats().tag_sets_swept, 12);
    let (members, _) = store.tagged(kept, 0).await.unwrap();
    assert_eq!(members, ["cl:v1:{m}"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_removes_its_entries_across_shards() {
    // The tag's set lives on one shard, its entries on all three: the set is walked there and each entry is
    // removed where it lives.
    let cluster = RedisCluster::start();
    let origin = support::Origin::new();
    let layer = layer_over(RedisStore::connect(&cluster.url()).await.unwrap())
        .methods([Method::GET])
        .store_timeout(Duration::from_secs(2))
        .tags(|parts| {
            let even = parts.uri.path().ends_with(['0', '2', '4', '6', '8']);
            vec![if even { "even" } else { "odd" }.to_owned()]
        })
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    let shards: std::collections::HashSet<usize> = (0..10)
        .map(|i| {
            let key = layer
                .handle()
                .key_for(&query_of(i).map(|_| bytes::Bytes::new()));
            let slot = fred::util::redis_keyslot(key.as_str().as_bytes());
            (0..3)
                .position(|n| {
                    cluster
                        .slots_of(n)
                        .iter()
                        .any(|(start, end)| (*start..=*end).contains(&slot))
                })
                .unwrap()
        })
        .collect();
    assert_eq!(shards.len(), 3, "the entries live on every shard");
    for i in 0..10 {
        call(&service, query_of(i)).await;
    }
    // The store's clock is read on a Cluster too (from any node), and agrees with this process's.
    let handle = layer.handle();
    support::calls::wait_until("the store's clock read", || {
        handle.store_clock_ahead_ms().is_some()
    })
    .await;
    assert!(handle.store_clock_ahead_ms().unwrap().abs() < 1_000);

    assert_eq!(layer.handle().invalidate_tag("even").await.unwrap(), 5);
    for i in 0..10 {
        let after = call(&service, query_of(i)).await;
        let hit = outcome(&after) == CacheOutcome::Hit;
        assert_eq!(hit, i % 2 == 1, "/items/{i}");
    }
    assert_eq!(origin.calls(), 15);

    // Made stale instead, on every shard: each answered stale, and refreshed once.
    assert_eq!(layer.handle().mark_tag_stale("odd").await.unwrap(), 5);
    for i in (1..10).step_by(2) {
        assert_eq!(
            outcome(&call(&service, query_of(i)).await),
            CacheOutcome::Stale { refreshing: true },
            "/items/{i}"
        );
    }
    support::calls::wait_until("the five refreshes", || origin.calls() == 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_group_invalidation_removes_its_entries_across_shards() {
    // Answer tags on a Cluster: the tag clock, the group's set and its mark each on a shard of their own, the
    // entries on all three.
    let cluster = RedisCluster::start();
    let origin = support::Origin::new();
    let layer = layer_over(RedisStore::connect(&cluster.url()).await.unwrap())
        .methods([Method::GET])
        .store_timeout(Duration::from_secs(2))
        .cache_groups(true)
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    origin.add_header("cache-groups", r#""items""#);
    for i in 0..10 {
        call(&service, query_of(i)).await;
    }
    let hits = |service| async move {
        let mut hits = 0;
        for i in 0..10 {
            hits += usize::from(outcome(&call(service, query_of(i)).await) == CacheOutcome::Hit);
        }
        hits
    };
    assert_eq!(hits(&service).await, 10);

    origin.clear_headers();
    origin.add_header("cache-group-invalidation", r#""items""#);
    let created = call(&service, post("{}")).await;
    assert_eq!(created.status(), StatusCode::OK);
    assert_eq!(layer.handle().stats().tag_removals, 10);
    assert_eq!(hits(&service).await, 0, "every entry of the group is gone");
    assert_eq!(origin.calls(), 10 + 1 + 10);
}

/// A `GET` of item `i`.
fn query_of(i: usize) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::get(format!("https://api.example.com/items/{i}"))
        .body(http_body_util::Full::default())
        .unwrap()
}

/// Variants kept apart (`keep_variants`) live under keys of their own, on any shard: another process's write
/// removes every one of them, through the URI's tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_removes_every_variant_across_shards() {
    let cluster = RedisCluster::start();
    let origin = support::Origin::new();
    origin.add_header("vary", "Accept-Language");
    let build = || async {
        layer_over(RedisStore::connect(&cluster.url()).await.unwrap())
            .methods([Method::GET])
            .store_timeout(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let (reader, writer) = (build().await, build().await);
    let service = tower::Layer::layer(&reader, origin.service());
    let request = |method: &str, language: &str| {
        http::Request::builder()
            .method(method)
            .uri("https://api.example.com/items/1")
            .header("accept-language", language)
            .body(http_body_util::Full::<bytes::Bytes>::default())
            .unwrap()
    };
    let languages = ["de", "en", "fr", "it", "nl", "pt"];
    for language in languages {
        call(&service, request("GET", language)).await;
    }
    assert_eq!(origin.calls(), languages.len());
    let node = |language: &str| {
        let head = request("GET", language).map(|_| bytes::Bytes::new());
        let slot = fred::util::redis_keyslot(reader.handle().key_for(&head).as_str().as_bytes());
        (0..3).position(|n| {
            cluster
                .slots_of(n)
                .iter()
                .any(|(start, end)| (*start..=*end).contains(&slot))
        })
    };
    let mut nodes: Vec<_> = languages.iter().map(|language| node(language)).collect();
    nodes.sort();
    nodes.dedup();
    assert!(nodes.len() > 1, "the variants live on more than one shard");
    for language in languages {
        let hit = call(&service, request("GET", language)).await;
        assert_eq!(outcome(&hit), CacheOutcome::Hit, "{language}");
    }

    let writes = tower::Layer::layer(&writer, origin.service());
    let put = call(&writes, request("PUT", "es")).await;
    assert_eq!(put.status(), StatusCode::OK);
    for language in languages {
        let after = call(&service, request("GET", language)).await;
        assert!(
            matches!(outcome(&after), CacheOutcome::Miss { stored: true, .. }),
            "{language}"
        );
    }
    assert_eq!(origin.calls(), 2 * languages.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_paused_on_every_primary_leave_every_shards_hits_going() {
    let cluster = RedisCluster::start();
    let origin = support::Origin::new();
    let layer = layer_over(RedisStore::connect(&cluster.url()).await.unwrap())
        .store_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    // Enough keys to land on every primary, each stored, then a hit.
    for i in 0..30 {
        call(&service, post(&query(i))).await;
        assert!(until_hit(&service, i).await, "key {i}");
    }
    // Writes paused on every primary, as a manual failover pauses them on the one it leaves.
    for node in cluster.nodes() {
        node.command(&[b"CLIENT", b"PAUSE", b"10000", b"WRITE"]);
    }
    // Misses' leases wait in Redis (each node's writes' breaker opens after its timeouts); the hits between them,
    // on every shard, go on: their `GET`s have connections and breakers of their own.
    let calls_before = origin.calls();
    for round in 0..3 {
        for i in 0..30 {
            let miss = call(&service, post(&query(100 + round * 30 + i))).await;
            assert!(
                matches!(outcome(&miss), CacheOutcome::Miss { stored: false, .. }),
                "round {round} key {i}"
            );
            let hit = call(&service, post(&query(i))).await;
            assert_eq!(outcome(&hit), CacheOutcome::Hit, "round {round} key {i}");
        }
    }
    assert_eq!(origin.calls(), calls_before + 90);
    for node in cluster.nodes() {
        node.command(&[b"CLIENT", b"UNPAUSE"]);
    }
    assert!(until_hit(&service, 100).await, "misses are stored again");
}

/// A URL of one server naming a node of a Cluster: through it, every key another node serves would be refused
/// (`MOVED`) and answered by the origin. `connect` refuses it, saying what to use; a store connecting in the
/// background says so at `warn`. A Cluster URL naming one server is refused, saying what to use too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_of_the_wrong_kind_for_a_cluster_node_or_a_server_says_what_to_use() {
    let warnings = support::logs::warnings();
    let cluster = RedisCluster::start();
    let node = &cluster.nodes()[0];
    let error = RedisStore::connect(&node.url())
        .await
        .expect_err("a cluster node through a plain URL");
    assert_eq!(*error.kind(), fred::error::ErrorKind::Config);
    let said = error.to_string();
    assert!(
        said.contains(&format!(
            "127.0.0.1:{} is a node of a Redis Cluster",
            node.port()
        )) && said.contains("connect with a redis-cluster:// URL"),
        "{said}"
    );

    let _lazy = RedisStore::connect_lazy(&node.url()).unwrap();
    let server = format!("server=\"127.0.0.1:{}\"", node.port());
    support::calls::wait_until("the lazy store told", || {
        warnings.all().iter().any(|warning| {
            warning.contains("is a node of a Redis Cluster") && warning.contains(&server)
        })
    })
    .await;
    assert!(RedisStore::connect(&cluster.url()).await.is_ok());

    // The other way round: a Cluster URL naming a server that is none.
    let standalone = support::RedisServer::start();
    let url = standalone.url().replacen("redis://", "redis-cluster://", 1);
    let said = RedisStore::connect(&url).await.expect_err(&url).to_string();
    assert!(said.contains("for one server, use redis://"), "{said}");
}
