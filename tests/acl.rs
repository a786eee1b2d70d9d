//! The cache as a Redis user with only the permissions README.md lists (its `ACL SETUSER` lines, read from the
//! README itself so that the two cannot drift apart): every feature works and Redis denies nothing, on one
//! server, on a Cluster and behind Sentinel. A user missing some of them still gets every answer, and so does
//! one whose password changed under the cache, which resumes caching once it matches again.

use crate::support;

use http::{HeaderName, Method, Request, StatusCode};
use std::time::Duration;
use support::calls::{Reply, cache_status, call, outcome, post, wait_until};
use support::logs::warnings;
use support::{Origin, RedisCluster, RedisServer};
use tower_redis_cache::error::StoreError;
use tower_redis_cache::{CacheOutcome, RedisCache, RedisCacheLayer, RedisStore};

const README: &str = include_str!("../README.md");
const USER: &str = "cache";
const PASSWORD: &str = "change-me";

/// The rules of the README's `ACL SETUSER cache ...` line that starts with `start` (everything after the user's
/// name).
fn readme_line(start: &str) -> Vec<String> {
    let line = README
        .lines()
        .find(|line| line.starts_with(start))
        .unwrap_or_else(|| panic!("README.md has a line starting `{start}`"));
    line.split_whitespace().skip(3).map(str::to_owned).collect()
}

/// The rules for the servers (the README's first `ACL SETUSER` line).
fn readme_rules() -> Vec<String> {
    readme_line("ACL SETUSER cache ")
}

/// The rules the README adds for a kind of deployment: the first ``add `<rules>` `` after `kind`.
fn readme_added(kind: &str) -> Vec<String> {
    let after = README
        .split_once(kind)
        .unwrap_or_else(|| panic!("README.md says what {kind} needs"))
        .1;
    let rules = after
        .split_once("add `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .unwrap_or_else(|| panic!("README.md names the rules {kind} adds"))
        .0;
    rules.split_whitespace().map(str::to_owned).collect()
}

/// Creates the user `cache` with `rules` on `server`.
fn set_user(server: &RedisServer, rules: &[String]) {
    let mut args: Vec<&[u8]> = vec![b"ACL", b"SETUSER", USER.as_bytes()];
    args.extend(rules.iter().map(|rule| rule.as_bytes()));
    let reply = server.command(&args);
    assert_eq!(reply, b"+OK\r\n", "{}", String::from_utf8_lossy(&reply));
}

/// The README's rules without `left_out`.
fn rules_without(left_out: &[&str]) -> Vec<String> {
    let rules = readme_rules();
    for rule in left_out {
        assert!(rules.iter().any(|r| r == rule), "README grants {rule}");
    }
    rules
        .into_iter()
        .filter(|rule| !left_out.contains(&rule.as_str()))
        .collect()
}

/// What Redis denied the user since it started, as `ACL LOG` reports it: the command or key of each entry, and
/// how many times (Redis counts a repeated denial in one entry).
fn denials(server: &RedisServer) -> Vec<(String, u64)> {
    let log = server.command(&[b"ACL", b"LOG"]);
    let text = String::from_utf8_lossy(&log);
    let lines: Vec<&str> = text.split("\r\n").collect();
    // Each entry is a map that starts with `count` (the next line is `:<n>`) and holds `object` (then a
    // `$<length>` line, then the value).
    lines
        .iter()
        .enumerate()
        .filter(|(_, line)| **line == "count")
        .map(|(i, _)| {
            let count = lines
                .get(i + 1)
                .and_then(|n| n.strip_prefix(':')?.parse().ok())
                .unwrap_or(0);
            let object = lines[i..]
                .iter()
                .position(|line| *line == "object")
                .and_then(|at| lines.get(i + at + 2))
                .map_or_else(String::new, |object| (*object).to_owned());
            (object, count)
        })
        .collect()
}

/// `url` with the user `cache` and its password.
fn url_with_user(url: &str) -> String {
    url.replacen("://", &format!("://{USER}:{PASSWORD}@"), 1)
}

/// A layer logged in as `url` says, with every feature that calls Redis switched on.
async fn layer_for(url: &str) -> RedisCacheLayer {
    let store = RedisStore::connect(url)
        .await
        .expect("the user connects with the README's rules");
    RedisCacheLayer::builder(store)
        .methods([Method::GET, Method::POST])
        .store_timeout(Duration::from_secs(2))
        .near_cache(16 << 20)
        .tags(|_| vec!["reports".to_owned()])
        .tags_from_header(HeaderName::from_static("cache-tag"))
        .cache_groups(true)
        // Short, so that a slow origin call renews its lease.
        .refresh_lease_for(Duration::from_millis(300))
        .build()
        .unwrap()
}

fn cached<S>(layer: &RedisCacheLayer, inner: S) -> RedisCache<S> {
    tower::Layer::layer(layer, inner)
}

fn is_near(response: &Reply) -> bool {
    cache_status(response).ends_with("; detail=near")
}

/// Panics, saying what the cache answered instead, unless `response` is a miss whose answer was stored.
#[track_caller]
fn assert_stored_miss(response: &Reply) {
    assert!(
        matches!(outcome(response), CacheOutcome::Miss { stored: true, .. }),
        "a stored miss, not `{}`",
        cache_status(response)
    );
}

/// Two processes (layers with clients of their own) as the user `url` names, through every feature that calls
/// Redis: hits from Redis and from the near cache, a fill shared across the fleet whose lease is renewed, a
/// failed fill whose lease is released, tags (by request and by answer, with the tag clock), cache groups, an
/// invalidation by URI and a purge.
async fn every_feature(url: &str) {
    let origin = Origin::new();
    let (a, b) = (layer_for(url).await, layer_for(url).await);
    let (service_a, service_b) = (cached(&a, origin.service()), cached(&b, origin.service()));

    // Stored by one process; a hit in the other, from Redis and then from its near cache.
    assert_stored_miss(&call(&service_a, post(r#"{"q":1}"#)).await);
    let from_redis = call(&service_b, post(r#"{"q":1}"#)).await;
    assert_eq!(outcome(&from_redis), CacheOutcome::Hit);
    let mut near = false;
    for _ in 0..500 {
        if is_near(&call(&service_b, post(r#"{"q":1}"#)).await) {
            near = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(near, "the near cache answered: tracking is on");
    assert_eq!(origin.calls(), 1);

    // One origin call for two processes, slower than the lease, which is renewed meanwhile.
    origin.set_delay(Duration::from_millis(450));
    let (first, second) = tokio::join!(
        call(&service_a, post(r#"{"q":2}"#)),
        call(&service_b, post(r#"{"q":2}"#)),
    );
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    assert_eq!(origin.calls(), 2, "one call for the fleet");
    origin.set_delay(Duration::ZERO);

    // A failing fill releases its lease: the next caller asks at once, and stores.
    origin.fail_with(StatusCode::SERVICE_UNAVAILABLE);
    let failed = call(&service_a, post(r#"{"q":3}"#)).await;
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    origin.heal();
    assert_stored_miss(&call(&service_b, post(r#"{"q":3}"#)).await);

    // A request's tag makes its entries stale everywhere (a soft purge), then removes them.
    assert!(b.handle().mark_tag_stale("reports").await.unwrap() >= 1);
    let stored = a.handle().stats().stores;
    assert!(matches!(
        outcome(&call(&service_a, post(r#"{"q":1}"#)).await),
        CacheOutcome::Stale { .. }
    ));
    // The stale answer's refresh runs in the background: once it has stored, the removal below is what the
    // next call sees. (Were its origin call to start after the removal, storing its answer would be right.)
    wait_until("the stale entry's refresh stored", || {
        a.handle().stats().stores > stored
    })
    .await;
    assert!(a.handle().invalidate_tag("reports").await.unwrap() >= 3);
    assert_stored_miss(&call(&service_a, post(r#"{"q":1}"#)).await);

    // An answer's own tags (each fill reads the tag clock), and its cache group.
    origin.add_header("cache-tag", "order-17");
    origin.add_header("cache-groups", "\"orders\"");
    assert_stored_miss(&call(&service_a, post(r#"{"q":4}"#)).await);
    origin.clear_headers();
    assert_eq!(a.handle().invalidate_tag("order-17").await.unwrap(), 1);
    assert_stored_miss(&call(&service_a, post(r#"{"q":4}"#)).await);
    // The sweep of tag sets (every set still holds a live member).
    assert_eq!(a.handle().sweep_tags().await.unwrap(), 0);
    assert_eq!(
        b.handle()
            .invalidate_group("api.example.com", "orders")
            .await
            .unwrap(),
        1
    );

    // Everything sent to the URI, then everything.
    let uri = Request::post("https://api.example.com/api/v2/query")
        .body(())
        .unwrap();
    assert_eq!(b.handle().invalidate_uri(&uri).await.unwrap(), 1);
    assert_stored_miss(&call(&service_a, post(r#"{"q":1}"#)).await);
    assert_stored_miss(&call(&service_a, post(r#"{"q":5}"#)).await);
    assert!(a.handle().purge().await.unwrap() >= 1);
    assert_stored_miss(&call(&service_b, post(r#"{"q":5}"#)).await);

    for layer in [&a, &b] {
        let stats = layer.handle().stats();
        assert_eq!(stats.store_errors, 0, "{stats:?}");
        assert_eq!(stats.store_skipped, 0, "{stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_rules_allow_every_feature_and_nothing_is_denied() {
    let server = RedisServer::start();
    set_user(&server, &readme_rules());
    every_feature(&url_with_user(&server.url())).await;
    assert_eq!(denials(&server), Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_rules_allow_every_feature_on_a_cluster() {
    let cluster = RedisCluster::start();
    let mut rules = readme_rules();
    rules.extend(readme_added("On a Cluster"));
    for node in cluster.nodes() {
        set_user(node, &rules);
    }
    every_feature(&url_with_user(&cluster.url())).await;
    for node in cluster.nodes() {
        assert_eq!(denials(node), Vec::new(), "node {}", node.port());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_rules_allow_every_feature_behind_sentinel() {
    let primary = RedisServer::start();
    let mut rules = readme_rules();
    rules.extend(readme_added("Behind Sentinel"));
    set_user(&primary, &rules);
    let sentinel = RedisServer::start_sentinel("cache", primary.port());
    // The client logs in to the sentinels as to Redis.
    set_user(
        &sentinel,
        &readme_line("ACL SETUSER cache on >change-me -@all +sentinel|"),
    );
    let url = format!(
        "redis-sentinel://127.0.0.1:{}?sentinelServiceName=cache",
        sentinel.port()
    );
    every_feature(&url_with_user(&url)).await;
    assert_eq!(denials(&primary), Vec::new());
    assert_eq!(denials(&sentinel), Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_user_that_may_not_subscribe_gets_redis_hits_and_one_warning() {
    let warnings = warnings();
    let primary = RedisServer::start();
    let mut rules = readme_rules();
    rules.extend(readme_added("Behind Sentinel"));
    set_user(&primary, &rules);
    let sentinel = RedisServer::start_sentinel("cache", primary.port());
    let sentinel_rules: Vec<String> =
        readme_line("ACL SETUSER cache on >change-me -@all +sentinel|")
            .into_iter()
            .filter(|rule| rule != "+subscribe")
            .collect();
    set_user(&sentinel, &sentinel_rules);
    let url = format!(
        "redis-sentinel://127.0.0.1:{}?sentinelServiceName=cache",
        sentinel.port()
    );
    let origin = Origin::new();
    let layer = layer_for(&url_with_user(&url)).await;
    let service = cached(&layer, origin.service());
    assert_stored_miss(&call(&service, post(r#"{"q":"sentinel"}"#)).await);
    // Long enough for the watch to ask the sentinel where the primary is more than once.
    for _ in 0..150 {
        let response = call(&service, post(r#"{"q":"sentinel"}"#)).await;
        assert_eq!(outcome(&response), CacheOutcome::Hit);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(origin.calls(), 1);
    // Refused once: the watch stays on the sentinel, asking it instead of listening
    // (`tests/sentinel.rs` follows a failover that way).
    let subscribes = denials(&sentinel)
        .into_iter()
        .find(|(denied, _)| denied == "subscribe")
        .map(|(_, count)| count);
    assert_eq!(subscribes, Some(1));
    let told = support::logs::containing(&warnings, "refused to announce new primaries");
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(
        told[0].contains("NOPERM") && told[0].contains("asking it every second"),
        "{told:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_scripts_gets_every_answer_from_the_origin() {
    let server = RedisServer::start();
    set_user(&server, &rules_without(&["+eval", "+evalsha"]));
    let origin = Origin::new();
    let layer = layer_for(&url_with_user(&server.url())).await;
    let service = cached(&layer, origin.service());
    for n in 1..=4 {
        let response = call(&service, post(r#"{"q":"denied"}"#)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(matches!(
            outcome(&response),
            CacheOutcome::Miss { stored: false, .. }
        ));
        assert!(cache_status(&response).ends_with("; detail=store-error"));
        assert_eq!(origin.calls(), n);
    }
    let stats = layer.handle().stats();
    assert!(
        stats.store_errors >= 4,
        "each refused write counted: {stats:?}"
    );
    assert_eq!(
        stats.store_skipped, 0,
        "a refusal does not open the breaker: {stats:?}"
    );
    assert!(
        denials(&server)
            .iter()
            .any(|(denied, _)| denied == "evalsha")
    );
}

/// Asserts that what needed `command` was refused (`NOPERM`) more than once on `server`, and said so at `warn`
/// (a message holding `saying`) once, not on every attempt.
fn told_once_and_retried(
    warnings: &support::logs::Warnings,
    saying: &str,
    server: &RedisServer,
    command: &str,
) {
    let attempts = denials(server)
        .into_iter()
        .find(|(denied, _)| denied == command)
        .map_or(0, |(_, count)| count);
    assert!(attempts >= 2, "`{command}` was asked for {attempts} times");
    let refused = support::logs::containing(warnings, saying);
    assert_eq!(
        refused.len(),
        1,
        "told once, not on every attempt: {refused:?}"
    );
    assert!(refused[0].contains("NOPERM"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_tracking_gets_redis_hits_and_a_warning() {
    let warnings = warnings();
    let server = RedisServer::start();
    set_user(&server, &rules_without(&["+client|tracking"]));
    let origin = Origin::new();
    let layer = layer_for(&url_with_user(&server.url())).await;
    let service = cached(&layer, origin.service());
    assert_stored_miss(&call(&service, post(r#"{"q":"far"}"#)).await);
    // Long enough for several attempts to switch tracking on (one every 250 ms).
    for _ in 0..100 {
        let response = call(&service, post(r#"{"q":"far"}"#)).await;
        assert_eq!(outcome(&response), CacheOutcome::Hit);
        assert!(!is_near(&response), "no near cache without tracking");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(origin.calls(), 1);
    assert!(!layer.handle().near_cache_live());
    told_once_and_retried(
        &warnings,
        "refused client tracking",
        &server,
        "client|tracking",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_the_user_may_not_scan_for_says_so() {
    let server = RedisServer::start();
    set_user(&server, &rules_without(&["+scan"]));
    let origin = Origin::new();
    let layer = layer_for(&url_with_user(&server.url())).await;
    let service = cached(&layer, origin.service());
    assert_stored_miss(&call(&service, post(r#"{"q":"kept"}"#)).await);
    let error = layer.handle().purge().await.unwrap_err();
    assert!(matches!(error, StoreError::Refused(_)), "{error:?}");
    assert!(error.to_string().contains("NOPERM"), "{error}");
    assert!(error.to_string().contains("'scan'"), "{error}");
    assert_eq!(
        outcome(&call(&service, post(r#"{"q":"kept"}"#)).await),
        CacheOutcome::Hit
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_under_the_cache_fails_no_request_and_caching_resumes_once_it_matches() {
    let warnings = warnings();
    let server = RedisServer::start();
    set_user(&server, &readme_rules());
    let origin = Origin::new();
    let layer = layer_for(&url_with_user(&server.url())).await;
    let service = cached(&layer, origin.service());
    let query = r#"{"q":"rotated"}"#;
    assert_stored_miss(&call(&service, post(query)).await);
    assert_eq!(
        outcome(&call(&service, post(query)).await),
        CacheOutcome::Hit
    );

    // The password changes on the server and the user's connections are closed, as a rotation that ran ahead
    // of the application's configuration does: every reconnect is refused (`WRONGPASS`).
    server.command(&[
        b"ACL",
        b"SETUSER",
        USER.as_bytes(),
        b"resetpass",
        b">rotated",
    ]);
    server.command(&[b"CLIENT", b"KILL", b"USER", USER.as_bytes()]);
    // The near cache stops answering (its probe fails), and does not answer again while the login is refused.
    let mut from_origin = 0;
    for _ in 0..300 {
        let before = origin.calls();
        let response = call(&service, post(query)).await;
        assert_eq!(response.status(), StatusCode::OK);
        if origin.calls() > before {
            from_origin += 1;
        } else {
            assert_eq!(from_origin, 0, "a cached answer after the origin answered");
        }
        if from_origin == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(from_origin, 20);
    // The operator is told why, by Redis's own words, with the server's address.
    let address = format!("server=\"127.0.0.1:{}\"", server.port());
    wait_until("the refusal was told", || {
        warnings.all().iter().any(|warning| {
            warning.contains("cannot reach Redis")
                && warning.contains("WRONGPASS")
                && warning.contains(&address)
        })
    })
    .await;

    // The password matches again: the clients log in on their next attempt, and hits resume.
    server.command(&[
        b"ACL",
        b"SETUSER",
        USER.as_bytes(),
        b"resetpass",
        b">change-me",
    ]);
    let (mut from_redis, mut near) = (false, false);
    for _ in 0..300 {
        let response = call(&service, post(query)).await;
        assert_eq!(response.status(), StatusCode::OK);
        near = is_near(&response);
        from_redis |= outcome(&response) == CacheOutcome::Hit && !near;
        if near {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(from_redis, "Redis hits resumed");
    assert!(near, "near-cache hits resumed: tracking is on again");
}
