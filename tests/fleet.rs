//! One origin call per key for the whole fleet, against a real redis-server: layers with clients of their own
//! stand for processes; fenced leases keep one fill and one refresh per key among them.

use crate::support;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use std::time::Duration;
use support::calls::{Cached, Reply, body, cache_status, call, outcome, post, wait_until};
use support::{Origin, RedisServer, fred_client};
use tokio::task::JoinHandle;
use tower::ServiceExt;
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

fn revalidate(json: &str) -> Request<Full<Bytes>> {
    let mut request = post(json);
    request
        .headers_mut()
        .insert("cache-control", "no-cache".parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_cold_requests_over_four_processes_make_one_origin_call() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let processes = four(&server, &origin, |b| b).await;
    origin.close();
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let service = processes[i % 4].1.clone();
            tokio::spawn(async move {
                let response = call(&service, post(r#"{"q":"cold"}"#)).await;
                (cache_status(&response), body(response).await)
            })
        })
        .collect();
    wait_until("the first process reached the origin", || {
        origin.calls() == 1
    })
    .await;
    // Each other process's first caller waits on the lease (the rest of its callers wait on it in-process).
    wait_until("the other three processes wait on the first", || {
        total(&processes, |s| s.fleet_waits) == 3
    })
    .await;
    origin.open();
    let mut fleet = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(&body[..], br#"{"n":1,"echo":{"q":"cold"}}"#);
        fleet += usize::from(status.ends_with("; collapsed; detail=fleet"));
    }
    assert_eq!(
        origin.calls(),
        1,
        "one origin call for 60 requests in four processes"
    );
    assert_eq!(
        fleet, 3,
        "one answer per waiting process came from another's fill"
    );
    assert_eq!(total(&processes, |s| s.fleet_takeovers), 0);
    assert_eq!(total(&processes, |s| s.fleet_timeouts), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_staggered_requests_make_one_origin_call() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let processes = four(&server, &origin, |b| b).await;
    // The origin works for the whole half second over which the requests arrive.
    origin.close();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let service = processes[i % 4].1.clone();
        tasks.push(tokio::spawn(async move {
            body(call(&service, post(r#"{"q":"staggered"}"#)).await).await
        }));
        tokio::time::sleep(Duration::from_millis(12)).await;
    }
    origin.open();
    for task in tasks {
        assert_eq!(
            &task.await.unwrap()[..],
            br#"{"n":1,"echo":{"q":"staggered"}}"#
        );
    }
    assert_eq!(origin.calls(), 1);
}

/// Process A's `leader` request reaches the closed origin, then process B's `waiter` (for the same key) waits on
/// A's fill; then the origin opens. Their answers, as they come.
async fn lead_and_wait<S: Cached + Send + Sync + 'static>(
    a: &(RedisCacheLayer, S),
    b: &(RedisCacheLayer, S),
    origin: &Origin,
    leader: Request<Full<Bytes>>,
    waiter: Request<Full<Bytes>>,
) -> (JoinHandle<Reply>, JoinHandle<Reply>)
where
    S::Future: Send,
{
    origin.close();
    let leader = tokio::spawn({
        let service = a.1.clone();
        async move { call(&service, leader).await }
    });
    wait_until("A reached the origin", || origin.calls() == 1).await;
    let waiter = tokio::spawn({
        let service = b.1.clone();
        async move { call(&service, waiter).await }
    });
    wait_until("B waits on A", || b.0.handle().stats().fleet_waits == 1).await;
    origin.open();
    (leader, waiter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_process_answers_once_the_entry_is_written_and_without_waiting_out_its_deadline()
{
    let server = RedisServer::start();
    let origin = Origin::new();
    let configure = |b: RedisCacheLayerBuilder| b.fleet_wait(Duration::from_secs(60));
    let processes = four(&server, &origin, configure).await;
    let query = || post(r#"{"q":"wake"}"#);
    let (a, b) = (&processes[0], &processes[1]);
    let (leader, waiter) = lead_and_wait(a, b, &origin, query(), query()).await;
    // Far inside B's 60 s deadline: a liveness guard, not a timing claim (the bench measures the wake-up).
    let answered: Reply = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("B answered long before its deadline")
        .unwrap();
    assert_eq!(
        cache_status(&answered),
        "tower-redis-cache; fwd=uri-miss; fwd-status=200; collapsed; detail=fleet"
    );
    assert_eq!(
        outcome(&answered),
        CacheOutcome::Miss {
            collapsed: true,
            stored: false
        }
    );
    let led = body(leader.await.unwrap()).await;
    assert_eq!(&body(answered).await[..], &led[..]);
    assert_eq!(origin.calls(), 1);
    assert_eq!(b.0.handle().stats().fleet_takeovers, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_request_wants_more_freshness_than_the_fill_gives_calls_the_origin_itself() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let configure = |b: RedisCacheLayerBuilder| b.fleet_wait(Duration::from_secs(60));
    let processes = four(&server, &origin, configure).await;
    // B asks for two minutes of freshness left; A's fill is fresh for the default minute.
    let query = || post(r#"{"q":"min-fresh"}"#);
    let mut demanding = query();
    demanding
        .headers_mut()
        .insert("cache-control", "min-fresh=120".parse().unwrap());
    let (a, b) = (&processes[0], &processes[1]);
    let (leader, waiter) = lead_and_wait(a, b, &origin, query(), demanding).await;
    assert_eq!(
        cache_status(&leader.await.unwrap()),
        "tower-redis-cache; fwd=uri-miss; fwd-status=200; stored"
    );
    // A's entry does not answer B: B takes the lease A let go and asks the origin.
    let answered = waiter.await.unwrap();
    assert_eq!(
        cache_status(&answered),
        "tower-redis-cache; fwd=uri-miss; fwd-status=200; stored"
    );
    assert_eq!(origin.calls(), 2);
    assert_eq!(b.0.handle().stats().fleet_takeovers, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cancelled_mid_fetch_lets_a_waiting_process_take_over() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let configure = |b: RedisCacheLayerBuilder| b.fleet_wait(Duration::from_secs(60));
    let processes = four(&server, &origin, configure).await;
    let (a, b) = (&processes[0], &processes[1]);
    origin.close();
    let leader = tokio::spawn({
        let service = a.1.clone();
        async move { call(&service, post(r#"{"q":"orphan"}"#)).await }
    });
    wait_until("A reached the origin", || origin.calls() == 1).await;
    let waiter = tokio::spawn({
        let service = b.1.clone();
        async move { body(call(&service, post(r#"{"q":"orphan"}"#)).await).await }
    });
    wait_until("B waits on A", || b.0.handle().stats().fleet_waits == 1).await;
    // A's request is dropped mid-fetch: its lease goes with it, and B takes over well inside its deadline.
    leader.abort();
    wait_until("B took the lease over", || {
        b.0.handle().stats().fleet_takeovers == 1
    })
    .await;
    wait_until("B reached the origin", || origin.calls() == 2).await;
    origin.open();
    let answered = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("B answered long before its deadline")
        .unwrap();
    assert_eq!(&answered[..], br#"{"n":2,"echo":{"q":"orphan"}}"#);
    assert_eq!(b.0.handle().stats().fleet_timeouts, 0);
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
    // Every refresh now takes four leases' time.
    origin.set_delay(Duration::from_secs(4));
    // Stale hits from all four processes for the next 2.5 s: each would refresh if the lease ever lapsed. Bounded
    // by time, not by rounds, so that a slow machine's hits still end well before the refresh does (its entry is
    // stale at once, and a hit after it would rightly start the next refresh).
    let hits_from = std::time::Instant::now();
    let mut round = 0;
    while hits_from.elapsed() < Duration::from_millis(2500) {
        round += 1;
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
    // Nor does it store what it fetched under the lease it lost; the new holder does.
    let entry = "fleet:v1:{k}";
    let ttl = Duration::from_secs(60);
    let old_answer = Bytes::from_static(b"old answer");
    assert!(
        !store
            .set_if_leased(entry, old_answer, ttl, key, "old")
            .await
            .unwrap()
    );
    assert_eq!(server.command(&[b"EXISTS", entry.as_bytes()]), b":0\r\n");
    let new_answer = Bytes::from_static(b"new answer");
    assert!(
        store
            .set_if_leased(entry, new_answer, ttl, key, "new")
            .await
            .unwrap()
    );
    assert_eq!(store.get(entry).await.unwrap().unwrap(), "new answer");
    let ttl = String::from_utf8(server.command(&[b"PTTL", entry.as_bytes()])).unwrap();
    let ttl: u64 = ttl.trim_start_matches(':').trim().parse().unwrap();
    assert!(
        (50_000..=60_000).contains(&ttl),
        "written with its ttl: {ttl}"
    );
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
    let again = Bytes::from_static(b"again");
    assert!(
        store
            .set_if_leased(entry, again, Duration::from_secs(60), key, "new")
            .await
            .unwrap()
    );
    assert!(store.release_lease(key, "new").await.unwrap());
    assert_eq!(server.command(&[b"EXISTS", key.as_bytes()]), b":0\r\n");
    let known = server.command(&[
        b"SCRIPT",
        b"EXISTS",
        b"d02e481a9c91ceec59c5822a58a49d5d5d7ac80b",
        b"3c47f94dc28d90f47ce03eabe2ebe59e85e54bf1",
        b"e6cceb9d359e304a86c22a4295571cd49e2356a5",
    ]);
    assert_eq!(
        known, b"*3\r\n:1\r\n:0\r\n:1\r\n",
        "the release and store scripts are cached again under their SHAs"
    );

    // Writing and letting the lease go in one step: only for the holder, and the lease goes with the write.
    let ttl = Duration::from_secs(60);
    assert!(store.try_lease(key, "last", ttl).await.unwrap());
    let late = Bytes::from_static(b"late");
    assert!(
        !store
            .set_if_leased_and_release(entry, late, ttl, key, "old")
            .await
            .unwrap()
    );
    assert_eq!(server.command(&[b"GET", key.as_bytes()]), b"$4\r\nlast\r\n");
    let last = Bytes::from_static(b"last answer");
    assert!(
        store
            .set_if_leased_and_release(entry, last, ttl, key, "last")
            .await
            .unwrap()
    );
    assert_eq!(store.get(entry).await.unwrap().unwrap(), "last answer");
    assert_eq!(server.command(&[b"EXISTS", key.as_bytes()]), b":0\r\n");
    let known = server.command(&[
        b"SCRIPT",
        b"EXISTS",
        b"0d9afd68e1111169e8ff3b839a4d7b9619fd33fb",
    ]);
    assert_eq!(known, b"*1\r\n:1\r\n", "run under its SHA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidations_collapse_across_processes_too() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let processes = four(&server, &origin, |b| b).await;
    call(&processes[0].1, post(r#"{"q":"again"}"#)).await;
    origin.close();
    let tasks: Vec<_> = processes
        .iter()
        .map(|(_, service)| {
            let service = service.clone();
            tokio::spawn(async move {
                let response = call(&service, revalidate(r#"{"q":"again"}"#)).await;
                (cache_status(&response), body(response).await)
            })
        })
        .collect();
    wait_until("one revalidation reached the origin", || {
        origin.calls() == 2
    })
    .await;
    wait_until("the other three wait on it", || {
        total(&processes, |s| s.fleet_waits) == 3
    })
    .await;
    origin.open();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert!(
            status.starts_with("tower-redis-cache; fwd=request; fwd-status=200"),
            "{status}"
        );
        assert_eq!(&body[..], br#"{"n":2,"echo":{"q":"again"}}"#, "{status}");
    }
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn fleet_wait_zero_turns_collapsing_off() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let configure = |b: RedisCacheLayerBuilder| b.fleet_wait(Duration::ZERO);
    let processes = four(&server, &origin, configure).await;
    origin.close();
    let tasks: Vec<_> = processes
        .iter()
        .map(|(_, service)| {
            let service = service.clone();
            tokio::spawn(async move { service.oneshot(post(r#"{"q":"solo"}"#)).await.unwrap() })
        })
        .collect();
    wait_until("each process called the origin", || origin.calls() == 4).await;
    origin.open();
    let mut stored = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        // The lease's holder stores; the others, without it, say nothing more of why they did not.
        match outcome(&reply) {
            CacheOutcome::Miss { stored: true, .. } => stored += 1,
            _ => assert_eq!(
                cache_status(&reply),
                "tower-redis-cache; fwd=uri-miss; fwd-status=200"
            ),
        }
    }
    assert_eq!(stored, 1);
    assert_eq!(total(&processes, |s| s.fleet_waits), 0);
    assert_eq!(total(&processes, |s| s.not_stored), 0);
}

/// Two misses in each of two processes of a key with a marker, sent while the origin is held; their answers once
/// it lets go, after all four have joined their process's call or made their own (each counts as it does so in
/// `uncacheable_misses`): on a loaded machine a spawned call can start late, after the others were answered.
async fn burst<S>(
    processes: &[(RedisCacheLayer, S)],
    origin: &std::sync::Arc<Origin>,
    json: &'static str,
    reaching: usize,
) -> Vec<(String, Bytes)>
where
    S: Cached + Send + Sync + 'static,
    <S as tower::Service<Request<Full<Bytes>>>>::Future: Send,
{
    let before = origin.calls();
    let joined = total(processes, |s| s.uncacheable_misses);
    origin.close();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let service = processes[i % 2].1.clone();
            tokio::spawn(async move {
                let response = call(&service, post(json)).await;
                (cache_status(&response), body(response).await)
            })
        })
        .collect();
    wait_until(
        "every call joined, and those that need not wait reach the origin",
        || {
            total(processes, |s| s.uncacheable_misses) == joined + 4
                && origin.calls() == before + reaching
        },
    )
    .await;
    origin.open();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_on_a_key_whose_answer_is_private_do_not_queue_behind_each_other() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.add_header("cache-control", "private");
    let processes = four(&server, &origin, |b| b).await;
    let first = call(&processes[0].1, post(r#"{"q":"mine"}"#)).await;
    assert_eq!(
        outcome(&first),
        CacheOutcome::Miss {
            collapsed: false,
            stored: false
        }
    );
    assert_eq!(processes[0].0.handle().stats().uncacheable_marks, 1);
    // All four reach the origin together: none waits for another caller of its process, nor for the other
    // process's lease, since neither answer could be given to it.
    let answers = burst(&processes, &origin, r#"{"q":"mine"}"#, 4).await;
    let mut numbers: Vec<_> = answers
        .iter()
        .map(|(status, body)| {
            assert!(!status.contains("collapsed"), "{status}");
            String::from_utf8(body.to_vec()).unwrap()
        })
        .collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), 4, "four answers of their own: {numbers:?}");
    assert_eq!(total(&processes, |s| s.uncacheable_misses), 4);
    assert_eq!(total(&processes, |s| s.fleet_waits), 0);
    // The first answer that can be stored replaces the marker, and the next request is a hit.
    origin.clear_headers();
    let stored = call(&processes[1].1, post(r#"{"q":"mine"}"#)).await;
    assert_eq!(
        outcome(&stored),
        CacheOutcome::Miss {
            collapsed: false,
            stored: true
        }
    );
    let hit = call(&processes[0].1, post(r#"{"q":"mine"}"#)).await;
    assert_eq!(outcome(&hit), CacheOutcome::Hit);
    assert_eq!(body(hit).await, body(stored).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_not_kept_are_still_shared_in_a_process_but_processes_do_not_queue() {
    let server = RedisServer::start();
    // A status the layer does not store, and an answer that expires at once.
    for (case, json) in [
        ("404", r#"{"q":"absent"}"#),
        ("max-age=0", r#"{"q":"now"}"#),
    ] {
        let origin = Origin::new();
        if case == "404" {
            origin.fail_with(http::StatusCode::NOT_FOUND);
        } else {
            origin.add_header("cache-control", "max-age=0, must-revalidate");
        }
        // Queries, which take the origin's freshness as `GET`s do.
        let processes = four(&server, &origin, |b| b.origin_freshness_for_post(true)).await;
        let first = call(&processes[0].1, post(json)).await;
        assert_eq!(
            outcome(&first),
            CacheOutcome::Miss {
                collapsed: false,
                stored: false
            },
            "{case}"
        );
        let why = if case == "404" {
            "response-status"
        } else {
            "response-expired"
        };
        assert!(
            cache_status(&first).ends_with(&format!("; detail={why}")),
            "{case}: {}",
            cache_status(&first)
        );
        assert_eq!(
            processes[0].0.handle().stats().uncacheable_marks,
            1,
            "{case}"
        );
        // One call per process: its other caller shares it, as any answer it would not store.
        let answers = burst(&processes, &origin, json, 2).await;
        let collapsed = answers
            .iter()
            .filter(|(status, _)| status.contains("; collapsed"))
            .count();
        assert_eq!(collapsed, 2, "{case}: {answers:?}");
        assert_eq!(origin.calls(), 3, "{case}");
        assert_eq!(total(&processes, |s| s.fleet_waits), 0, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_failures_and_replaced_entries_leave_no_marker() {
    let server = RedisServer::start();
    let origin = Origin::new();
    let processes = four(&server, &origin, |b| b).await;
    // A failing origin is asked once at a time across the fleet, as before: no marker.
    origin.fail_with(http::StatusCode::SERVICE_UNAVAILABLE);
    call(&processes[0].1, post(r#"{"q":"down"}"#)).await;
    // A revalidation whose answer cannot be stored leaves the entry it revalidated in place.
    origin.heal();
    let stored = call(&processes[0].1, post(r#"{"q":"kept"}"#)).await;
    assert_eq!(
        outcome(&stored),
        CacheOutcome::Miss {
            collapsed: false,
            stored: true
        }
    );
    origin.add_header("cache-control", "no-store");
    let revalidated = call(&processes[1].1, revalidate(r#"{"q":"kept"}"#)).await;
    assert_eq!(
        outcome(&revalidated),
        CacheOutcome::Miss {
            collapsed: false,
            stored: false
        }
    );
    let hit = call(&processes[1].1, post(r#"{"q":"kept"}"#)).await;
    assert_eq!(outcome(&hit), CacheOutcome::Hit);
    assert_eq!(body(hit).await, body(stored).await);
    assert_eq!(total(&processes, |s| s.uncacheable_marks), 0);
    // Off: nothing marked.
    let off = four(&server, &origin, |b| {
        b.namespace("off").uncacheable_for(Duration::ZERO)
    })
    .await;
    call(&off[0].1, post(r#"{"q":"mine"}"#)).await;
    assert_eq!(total(&off, |s| s.uncacheable_marks), 0);
}

#[tokio::test]
async fn a_fill_records_its_tags_and_reads_the_tag_clock_in_the_round_trip_of_its_lease() {
    let server = RedisServer::start();
    let origin = Origin::new();
    origin.add_header("cache-tag", "report:7");
    let (store, journal) =
        support::store::JournalStore::new(RedisStore::new(fred_client(&server.url()).await));
    let layer = RedisCacheLayer::builder(store)
        .namespace("fleet")
        .methods([Method::GET, Method::POST])
        .tags(|_| vec!["reports".to_owned()])
        .tags_from_header(http::HeaderName::from_static("cache-tag"))
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    const STORED_MISS: CacheOutcome = CacheOutcome::Miss {
        collapsed: false,
        stored: true,
    };
    let miss = call(&service, post(r#"{"q":"tagged"}"#)).await;
    assert_eq!(outcome(&miss), STORED_MISS);
    // The request's tags (its own and its URI's) and the tag clock went out before the lease's answer came
    // back: one round trip before the origin is asked, not two. (The answer's own tag is recorded after the
    // origin answers.)
    let events = journal.events();
    let lease_back = events.iter().position(|e| *e == "lease<").unwrap();
    assert_eq!(
        &events[..lease_back],
        ["lease>", "tag>", "tag>", "clock>"],
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| **e == "tag>").count(),
        3,
        "{events:?}"
    );
    // The fencing still holds the entry to both tags: stored, then removed by either.
    let hit = call(&service, post(r#"{"q":"tagged"}"#)).await;
    assert_eq!(outcome(&hit), CacheOutcome::Hit);
    assert_eq!(layer.handle().invalidate_tag("reports").await.unwrap(), 1);
    let refilled = call(&service, post(r#"{"q":"tagged"}"#)).await;
    assert_eq!(outcome(&refilled), STORED_MISS);
    assert_eq!(layer.handle().invalidate_tag("report:7").await.unwrap(), 1);
    let again = call(&service, post(r#"{"q":"tagged"}"#)).await;
    assert_eq!(outcome(&again), STORED_MISS);
    assert_eq!(origin.calls(), 3);
}

/// One fill through `store` (journaled) of a `POST` whose origin answers with `header`, if any, then a second
/// process's read of it: the fill's store calls, and what the second process found.
async fn fill_then_read<S: Store + 'static>(
    store: S,
    other: impl Store + 'static,
    header: Option<(&'static str, &'static str)>,
) -> (Vec<&'static str>, CacheOutcome) {
    let origin = Origin::new();
    if let Some((name, value)) = header {
        origin.add_header(name, value);
    }
    let (store, journal) = support::store::JournalStore::new(store);
    let layer = RedisCacheLayer::builder(store)
        .namespace("fleet")
        .methods([Method::POST])
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, origin.service());
    let filled = call(&service, post(r#"{"q":1}"#)).await;
    assert!(matches!(outcome(&filled), CacheOutcome::Miss { .. }));
    let events = journal.events();
    // The second process does not wait on a lease: it reads the entry (or the marker) at once.
    let second = RedisCacheLayer::builder(other)
        .namespace("fleet")
        .methods([Method::POST])
        .build()
        .unwrap();
    let service = tower::Layer::layer(&second, origin.service());
    let read = call(&service, post(r#"{"q":1}"#)).await;
    assert_eq!(second.handle().stats().fleet_waits, 0);
    (events, outcome(&read))
}

/// A fill's last store call writes its answer (or the marker of an answer not kept) and lets the key's lease go
/// in one step: one round trip after the origin answers, not two, and no lease left behind.
#[tokio::test]
async fn a_fill_writes_its_answer_and_lets_its_lease_go_in_one_call() {
    let server = RedisServer::start();
    let redis = || async { RedisStore::new(fred_client(&server.url()).await) };
    let one_call = |events: &[&str]| {
        events.iter().filter(|e| **e == "set+release>").count() == 1
            && !events.iter().any(|e| *e == "set>" || *e == "unlease>")
    };

    let (events, read) = fill_then_read(redis().await, redis().await, None).await;
    assert!(one_call(&events), "{events:?}");
    assert_eq!(read, CacheOutcome::Hit);
    let leases = server.command(&[b"KEYS", b"*:lease"]);
    assert_eq!(leases, b"*0\r\n", "no lease left behind");

    // An answer not kept: its marker goes the same way, and the second process goes to the origin at once.
    server.command(&[b"FLUSHALL"]);
    let private = Some(("cache-control", "private"));
    let (events, read) = fill_then_read(redis().await, redis().await, private).await;
    assert!(one_call(&events), "{events:?}");
    assert!(
        matches!(read, CacheOutcome::Miss { stored: false, .. }),
        "{read:?}"
    );
    assert_eq!(server.command(&[b"KEYS", b"*:lease"]), b"*0\r\n");

    // The memory store does the same.
    let memory = tower_redis_cache::MemoryStore::new(1 << 20);
    let (events, read) = fill_then_read(memory.clone(), memory.clone(), None).await;
    assert!(one_call(&events), "{events:?}");
    assert_eq!(read, CacheOutcome::Hit);
    assert_eq!(memory.entry_count(), 1, "the entry, and no lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_after_its_call_timed_out_is_let_go() {
    let server = RedisServer::start();
    let store = RedisStore::new(fred_client(&server.url()).await);
    let (store, late) = support::store::LateLeaseStore::new(store, Duration::from_millis(300));
    // A lease left to expire would hold the key's fills back for a minute.
    let layer = RedisCacheLayer::builder(store)
        .namespace("fleet")
        .methods([Method::POST])
        .store_timeout(Duration::from_millis(100))
        .refresh_lease_for(Duration::from_secs(60))
        .build()
        .unwrap();
    let origin = Origin::new();
    let service = tower::Layer::layer(&layer, origin.service());
    let query = r#"{"q":"late lease"}"#;
    let leases = || {
        let keys = server.command(&[b"KEYS", b"fleet:*:lease"]);
        support::redis::bulk_array(&keys).len()
    };

    late.arm();
    let reply = call(&service, post(query)).await;
    assert!(
        cache_status(&reply).ends_with("detail=store-error"),
        "{}",
        cache_status(&reply)
    );
    // The lease call ran after its caller gave up on it: the lease is taken, and no fill holds it.
    wait_until("the late lease call ran", || leases() == 1).await;
    wait_until("the lease was let go", || leases() == 0).await;
    assert!(matches!(
        outcome(&call(&service, post(query)).await),
        CacheOutcome::Miss { stored: true, .. }
    ));
    assert_eq!(
        outcome(&call(&service, post(query)).await),
        CacheOutcome::Hit
    );
    assert_eq!(origin.calls(), 2);
}
