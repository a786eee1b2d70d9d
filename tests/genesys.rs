//! The Genesys client against the emulator over real HTTP, with real redis-server processes.

use crate::support;

use futures_util::TryStreamExt;
use http::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use support::{RedisServer, fred_client};
use tower_redis_cache::cache::{BypassReason, Windows};
use tower_redis_cache::error::Setting;
use tower_redis_cache::genesys::emulator::{Emulator, Endpoint, Fault};
use tower_redis_cache::genesys::{
    ActionContract, ActionDetails, ActionQuery, ActionUpdate, CategoryQuery, CursorQuery,
    GenesysClient, GenesysClientBuilder, GenesysError, NewAction, SortOrder,
};
use tower_redis_cache::{CacheOutcome, RedisStore, RetryLayer};

fn builder(emulator: &Emulator) -> GenesysClientBuilder {
    GenesysClient::builder()
        .api_base(emulator.base_url())
        .login_base(emulator.base_url())
        .client_credentials(emulator.client_id(), emulator.client_secret())
        .store_timeout(Duration::from_secs(2))
        .retry(
            RetryLayer::builder()
                .base_delay(Duration::from_millis(20))
                .deadline(Duration::from_secs(10))
                .build()
                .unwrap(),
        )
}

async fn redis_client(emulator: &Emulator, redis: &RedisServer) -> GenesysClient {
    builder(emulator)
        .redis_client(fred_client(&redis.url()).await)
        .build()
        .unwrap()
}

fn order_lookups() -> ActionQuery {
    ActionQuery::new().name("order_lookup").page_size(25)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_once_then_hits_in_this_and_another_process() {
    let emulator = Emulator::start().await.unwrap();
    let redis = RedisServer::start();
    let client = redis_client(&emulator, &redis).await;

    let pages: Vec<_> = client
        .list_action_pages(&order_lookups())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(pages.len(), 3);
    let names: Vec<String> = pages
        .iter()
        .flat_map(|p| p.entities.iter().map(|a| a.name.clone()))
        .collect();
    assert_eq!(names.len(), 60);
    assert_eq!(names[0], "order_lookup_01");
    assert_eq!(names[59], "order_lookup_60");
    assert!(
        pages
            .iter()
            .all(|p| matches!(p.cache, Some(CacheOutcome::Miss { .. })))
    );
    assert_eq!(emulator.requests(Endpoint::ListActions), 3);
    assert_eq!(pages[2].page_count, Some(3));
    assert_eq!(pages[2].total, Some(60));

    let again: Vec<_> = client
        .list_action_pages(&order_lookups())
        .try_collect()
        .await
        .unwrap();
    assert!(again.iter().all(|p| p.cache == Some(CacheOutcome::Hit)));
    assert_eq!(
        emulator.requests(Endpoint::ListActions),
        3,
        "no page request on the second call"
    );

    // Another process (this test binary again, running only `second_process_lists_actions`): its own fred
    // connection, its own token cache, the same Redis and emulator.
    let tokens_before = emulator.requests(Endpoint::Token);
    let stdout = support::child::run(
        support::child::command(module_path!(), "second_process_lists_actions")
            .env("SECOND_PROCESS_API", emulator.base_url())
            .env("SECOND_PROCESS_REDIS", redis.url())
            .env(
                "SECOND_PROCESS_CLIENT",
                format!("{}:{}", emulator.client_id(), emulator.client_secret()),
            ),
    );
    assert!(
        stdout.contains("second process: entities=60 outcomes=hit,hit,hit token_fetches=0"),
        "{stdout}"
    );
    assert_eq!(
        emulator.requests(Endpoint::ListActions),
        3,
        "no page request from the second process"
    );
    assert_eq!(
        emulator.requests(Endpoint::Token),
        tokens_before,
        "hits need no token"
    );
}

/// Run by `listing_pages_once_then_hits_in_this_and_another_process` as a separate process.
#[tokio::test]
#[ignore = "a child process of another test; needs its environment"]
async fn second_process_lists_actions() {
    let var = support::child::var;
    let client = var("SECOND_PROCESS_CLIENT");
    let (id, secret) = client.split_once(':').unwrap();
    let store = RedisStore::new(fred_client(&var("SECOND_PROCESS_REDIS")).await);
    let client = GenesysClient::builder()
        .api_base(var("SECOND_PROCESS_API"))
        .login_base(var("SECOND_PROCESS_API"))
        .client_credentials(id, secret)
        .store_timeout(Duration::from_secs(2))
        .store(store)
        .build()
        .unwrap();
    let pages: Vec<_> = client
        .list_action_pages(&order_lookups())
        .try_collect()
        .await
        .unwrap();
    let outcomes: Vec<&str> = pages
        .iter()
        .map(|p| p.cache.map_or("none", |c| c.as_str()))
        .collect();
    let entities: usize = pages.iter().map(|p| p.entities.len()).sum();
    println!(
        "second process: entities={entities} outcomes={} token_fetches={}",
        outcomes.join(","),
        client.token_fetches()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_page_two_is_waited_out() {
    let emulator = Emulator::start().await.unwrap();
    emulator.inject(
        Fault::status(StatusCode::TOO_MANY_REQUESTS)
            .retry_after(1)
            .matching("pageNumber=2"),
    );
    let client = builder(&emulator).build().unwrap();
    let started = std::time::Instant::now();
    let pages: Vec<_> = client
        .list_action_pages(&order_lookups())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(pages.iter().map(|p| p.entities.len()).sum::<usize>(), 60);
    assert_eq!(pages[1].attempts, 2, "page 2 took a retry");
    assert_eq!(emulator.requests(Endpoint::ListActions), 4);
    // Retry-After: 1 was honoured (a lower bound, not a timing assertion on speed).
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_503_ends_in_a_typed_error_within_the_deadline() {
    let emulator = Emulator::start().await.unwrap();
    emulator.inject(Fault::status(StatusCode::SERVICE_UNAVAILABLE).times(u32::MAX));
    let retry = RetryLayer::builder()
        .max_attempts(100)
        .base_delay(Duration::from_millis(50))
        .max_delay(Duration::from_millis(400))
        .deadline(Duration::from_secs(2))
        .no_budget()
        .build()
        .unwrap();
    let client = builder(&emulator).retry(retry).build().unwrap();
    let error: GenesysError = client.list_all_actions(&order_lookups()).await.unwrap_err();
    assert!(error.is_server_error(), "{error}");
    assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(error.code(), Some("service.unavailable"));
    assert!(error.attempts() > 1, "{error:?}");
    assert_eq!(
        u64::from(error.attempts()),
        emulator.requests(Endpoint::ListActions)
    );
    assert!(error.correlation_id().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeating_page_is_an_error_not_a_loop() {
    let emulator = Emulator::start().await.unwrap();
    emulator.set_repeat_pages(true);
    let client = builder(&emulator).build().unwrap();
    let error = client.list_all_actions(&order_lookups()).await.unwrap_err();
    assert!(error.is_pagination(), "{error}");
    assert!(error.to_string().contains("page 2"), "{error}");
    assert_eq!(emulator.requests(Endpoint::ListActions), 2);

    // Cursor listings: a cursor handed out twice stops the listing too.
    let error = client
        .cursor_items::<Value>(CursorQuery::post_after(
            "/api/v2/taskmanagement/workitems/query",
            json!({"pageSize": 25}),
        ))
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(error.is_pagination(), "{error}");
    assert_eq!(emulator.requests(Endpoint::QueryWorkitems), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_listing_follows_after_to_the_end() {
    let emulator = Emulator::start().await.unwrap();
    let client = builder(&emulator).build().unwrap();
    let query = CursorQuery::post_after(
        "/api/v2/taskmanagement/workitems/query",
        json!({"pageSize": 25}),
    );
    let items: Vec<Value> = client.cursor_items(query).try_collect().await.unwrap();
    assert_eq!(items.len(), 57);
    assert_eq!(items[56]["name"], "workitem 57");
    assert_eq!(emulator.requests(Endpoint::QueryWorkitems), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_is_keyed_by_canonical_input() {
    let emulator = Emulator::start().await.unwrap();
    let redis = RedisServer::start();
    let client = redis_client(&emulator, &redis).await;
    let id = &emulator.action_ids()[0];

    let first = client
        .execute_action(
            id,
            &json!({"orderId": "A-17", "options": {"expand": true, "lines": 3}}),
        )
        .await
        .unwrap();
    assert!(matches!(first.cache, Some(CacheOutcome::Miss { .. })));
    let reordered = client
        .execute_action(
            id,
            &json!({"options": {"lines": 3, "expand": true}, "orderId": "A-17"}),
        )
        .await
        .unwrap();
    assert_eq!(reordered.cache, Some(CacheOutcome::Hit));
    assert_eq!(reordered.value, first.value);
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 1);

    let different = client
        .execute_action(
            id,
            &json!({"orderId": "A-18", "options": {"expand": true, "lines": 3}}),
        )
        .await
        .unwrap();
    assert!(matches!(different.cache, Some(CacheOutcome::Miss { .. })));
    assert_eq!(different.value["input"]["orderId"], "A-18");
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_client_ids_never_share_entries() {
    let emulator = Emulator::builder()
        .also_client("second-org-client", "second-org-secret")
        .start()
        .await
        .unwrap();
    let redis = RedisServer::start();
    let first = redis_client(&emulator, &redis).await;
    let second = builder(&emulator)
        .client_credentials("second-org-client", "second-org-secret")
        .store(RedisStore::new(fred_client(&redis.url()).await))
        .build()
        .unwrap();
    let id = &emulator.action_ids()[3];
    let input = json!({"orderId": "A-1"});

    first.get_action(id).await.unwrap();
    first.execute_action(id, &input).await.unwrap();
    let get = second.get_action(id).await.unwrap();
    let execute = second.execute_action(id, &input).await.unwrap();
    assert!(
        matches!(get.cache, Some(CacheOutcome::Miss { .. })),
        "{:?}",
        get.cache
    );
    assert!(matches!(execute.cache, Some(CacheOutcome::Miss { .. })));
    assert_eq!(emulator.requests(Endpoint::GetAction), 2);
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 2);
    // Each client hits its own entries.
    assert_eq!(
        first.get_action(id).await.unwrap().cache,
        Some(CacheOutcome::Hit)
    );
    assert_eq!(
        second.get_action(id).await.unwrap().cache,
        Some(CacheOutcome::Hit)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_refreshed_and_the_call_replayed() {
    let emulator = Emulator::start().await.unwrap();
    let client = builder(&emulator).build().unwrap();
    let ids = emulator.action_ids();
    client.get_action(&ids[0]).await.unwrap();
    emulator.reject_next_token();
    let action = client.get_action(&ids[1]).await.unwrap();
    assert_eq!(action.id, ids[1]);
    assert_eq!(emulator.requests(Endpoint::Token), 2);
    assert_eq!(emulator.requests(Endpoint::GetAction), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed_and_never_carry_the_secret() {
    let emulator = Emulator::start().await.unwrap();
    let client = builder(&emulator).build().unwrap();
    let error = client.get_action("no-such-action").await.unwrap_err();
    assert!(error.is_not_found(), "{error}");
    assert_eq!(error.code(), Some("not.found"));
    assert!(
        error.correlation_id().is_some_and(|id| id.len() == 36),
        "{error:?}"
    );

    let wrong = GenesysClient::builder()
        .api_base(emulator.base_url())
        .login_base(emulator.base_url())
        .client_credentials(emulator.client_id(), "wrong-secret-value")
        .build()
        .unwrap();
    let error = wrong.get_action("x").await.unwrap_err();
    assert!(error.is_auth(), "{error}");
    let (display, debug) = (error.to_string(), format!("{error:?}"));
    assert!(
        display.contains("401") && display.contains("invalid_client"),
        "{display}"
    );
    for text in [display, debug, format!("{wrong:?}")] {
        assert!(!text.contains("wrong-secret-value"), "{text}");
    }
    assert_eq!(
        emulator.requests(Endpoint::GetAction),
        1,
        "no API call without a token"
    );
}

/// The client's pooled connections carry TCP keepalive, as reqwest's do (probed after 15 s of silence), so that a
/// NAT gateway or load balancer that forgets quiet connections keeps them: after a listing, the kernel shows the
/// keepalive timer armed on each connection the pool holds to the API, due within 15 s.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_are_probed_when_quiet() {
    let emulator = Emulator::start().await.unwrap();
    let client = builder(&emulator).build().unwrap();
    let pages: Vec<_> = client
        .list_action_pages(&order_lookups())
        .try_collect()
        .await
        .unwrap();
    assert!(!pages.is_empty());
    let timers = support::tcp::timers_of_connections_to(emulator.addr().port());
    assert!(!timers.is_empty(), "the pool holds no connection");
    for timer in timers {
        assert_eq!(timer.kind, 2, "a connection without keepalive: {timer:?}");
        assert!(timer.due <= 15 * 100, "{timer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_api_is_a_transport_error() {
    let emulator = Emulator::start().await.unwrap();
    let base = emulator.base_url();
    drop(emulator);
    let client = GenesysClient::builder()
        .api_base(base.clone())
        .login_base(base)
        .client_credentials("id", "secret")
        .retry(RetryLayer::builder().max_attempts(1).build().unwrap())
        .build()
        .unwrap();
    let error = client.get_action("x").await.unwrap_err();
    // The token request is the first to fail.
    assert!(error.is_auth(), "{error:?}");
    assert!(error.to_string().contains("unreachable"), "{error}");
}

/// An HTTP server on loopback that counts the requests it gets and answers each with `status` (and
/// `Location: location`, when given).
async fn counting_server(
    status: StatusCode,
    location: Option<String>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let hits = counted.clone();
        let location = location.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            let mut response = axum::response::Response::new(axum::body::Body::empty());
            *response.status_mut() = status;
            if let Some(location) = location {
                response
                    .headers_mut()
                    .insert("location", location.parse().unwrap());
            }
            response
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_and_no_path_leaves_the_api_host() {
    use std::sync::atomic::Ordering;
    let emulator = Emulator::start().await.unwrap();
    // Another host, which must never see a request (it would carry the bearer token).
    let (elsewhere, elsewhere_hits) = counting_server(StatusCode::OK, None).await;
    let (redirector, redirects) = counting_server(
        StatusCode::TEMPORARY_REDIRECT,
        Some(format!("{elsewhere}/api/v2/integrations/actions/x")),
    )
    .await;

    let client = builder(&emulator).api_base(&redirector).build().unwrap();
    let error = client.get_action("x").await.unwrap_err();
    assert_eq!(
        error.status(),
        Some(StatusCode::TEMPORARY_REDIRECT),
        "{error}"
    );
    assert_eq!(redirects.load(Ordering::SeqCst), 1);
    assert_eq!(
        elsewhere_hits.load(Ordering::SeqCst),
        0,
        "redirect followed"
    );

    // Paths that string concatenation would have turned into another host, or out of the API.
    let client = builder(&emulator).build().unwrap();
    let tokens_before = emulator.requests(Endpoint::Token);
    let other = elsewhere.trim_start_matches("http://");
    for path in [
        format!("@{other}/api/v2/x"),
        format!("//{other}/api/v2/x"),
        format!("{elsewhere}/api/v2/x"),
        "api/v2/x".to_owned(),
        "/api/v2/../../admin".to_owned(),
        "/api/v2/x#y".to_owned(),
    ] {
        let error = client
            .send_json::<Value>(http::Method::GET, &path, None)
            .await
            .unwrap_err();
        assert!(error.is_request(), "{path}: {error}");
        assert_eq!(error.attempts(), 0);
    }
    assert_eq!(elsewhere_hits.load(Ordering::SeqCst), 0);
    assert_eq!(
        emulator.requests(Endpoint::Token),
        tokens_before,
        "refused before any token was fetched"
    );

    // Plain http to another machine is refused at build time unless asked for.
    for (api, login, setting) in [
        (
            "http://api.example".to_owned(),
            emulator.base_url(),
            Setting::ApiBase,
        ),
        (
            emulator.base_url(),
            "http://login.example".to_owned(),
            Setting::LoginBase,
        ),
    ] {
        let error = builder(&emulator)
            .api_base(api)
            .login_base(login)
            .build()
            .unwrap_err();
        assert_eq!(error.setting(), setting, "{error}");
        assert!(error.to_string().contains("allow_insecure_http"), "{error}");
    }
    assert!(
        builder(&emulator)
            .api_base("http://api.example")
            .allow_insecure_http(true)
            .build()
            .is_ok()
    );
}

#[test]
fn builder_rejects_missing_pieces() {
    let error = GenesysClient::builder()
        .client_credentials("id", "secret")
        .build()
        .unwrap_err();
    assert_eq!(error.setting(), Setting::ApiBase, "{error}");
    assert!(error.to_string().contains("region"), "{error}");
    let error = GenesysClient::builder()
        .api_base("https://api.example")
        .login_base("https://login.example")
        .build()
        .unwrap_err();
    assert_eq!(error.setting(), Setting::ClientCredentials, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_token_rate_limit_answers_the_real_429() {
    let emulator = Emulator::builder().rate_limit(3).start().await.unwrap();
    let client = builder(&emulator)
        .retry(RetryLayer::builder().max_attempts(1).build().unwrap())
        .build()
        .unwrap();
    let ids = emulator.action_ids();
    for id in &ids[..3] {
        client.get_action(id).await.unwrap();
    }
    let error = client.get_action(&ids[3]).await.unwrap_err();
    assert!(error.is_rate_limited(), "{error}");
    assert!(
        error
            .retry_after()
            .is_some_and(|wait| wait >= Duration::from_secs(1) && wait <= Duration::from_secs(60)),
        "{error:?}"
    );
    assert_eq!(error.code(), Some("too.many.requests.retry.after"));
    assert!(
        error
            .message()
            .is_some_and(|m| m.contains("Retry the request in")),
        "{error:?}"
    );

    // The raw answer carries Retry-After, as Genesys does.
    let response = tower::ServiceExt::oneshot(
        client.service(),
        http::Request::get(format!(
            "{}/api/v2/integrations/actions/{}",
            emulator.base_url(),
            ids[4]
        ))
        .body(tower_redis_cache::RequestBody::empty())
        .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert!(response.headers().contains_key("inin-correlation-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_the_api_marks_no_store_are_kept_for_the_clients_windows() {
    let emulator = Emulator::start().await.unwrap();
    let redis = RedisServer::start();
    let client = redis_client(&emulator, &redis).await;
    let get = || {
        tower::ServiceExt::oneshot(
            client.service(),
            http::Request::get(format!(
                "{}/api/v2/integrations/actions/{}",
                emulator.base_url(),
                emulator.action_ids()[1]
            ))
            .body(tower_redis_cache::RequestBody::empty())
            .unwrap(),
        )
    };
    // As the real API does, every answer forbids caching.
    let first = get().await.unwrap();
    assert_eq!(
        first.headers()["cache-control"],
        "no-cache, no-store, must-revalidate"
    );
    assert_eq!(first.headers()["expires"], "0");
    assert!(matches!(
        CacheOutcome::of(&first),
        Some(CacheOutcome::Miss { stored: true, .. })
    ));
    // The client keeps it all the same, for its own windows: the next call does not reach the API.
    let second = get().await.unwrap();
    assert_eq!(CacheOutcome::of(&second), Some(CacheOutcome::Hit));
    assert_eq!(emulator.requests(Endpoint::GetAction), 1);
    let executed = client
        .execute_action(&emulator.action_ids()[1], &json!({"orderId": "A-9"}))
        .await
        .unwrap();
    assert!(matches!(
        executed.cache,
        Some(CacheOutcome::Miss { stored: true, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_url_connects_in_the_background_and_then_caches() {
    let emulator = Emulator::start().await.unwrap();
    // Redis is not up yet when the client is built, as when a process starts before its Redis.
    let mut redis = RedisServer::start();
    redis.kill();
    let client = builder(&emulator).redis_url(redis.url()).build().unwrap();
    let id = &emulator.action_ids()[2];
    for _ in 0..3 {
        let got = client.get_action(id).await.unwrap();
        assert!(
            matches!(got.cache, Some(CacheOutcome::Miss { stored: false, .. })),
            "{:?}",
            got.cache
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    // Until the connection is up, calls go to the API uncached; soon after, one is stored and hit.
    let mut hit = false;
    for _ in 0..200 {
        if client.get_action(id).await.unwrap().cache == Some(CacheOutcome::Hit) {
            hit = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(hit, "caching started once Redis was up");
    assert!(emulator.requests(Endpoint::GetAction) < 200);

    let error = builder(&emulator)
        .redis_url("redis://:pw-secret@[not a host")
        .build()
        .unwrap_err();
    assert_eq!(error.setting(), Setting::RedisUrl, "{error}");
    assert!(error.to_string().contains("redis_url"), "{error}");
    assert!(!error.to_string().contains("pw-secret"), "{error}");
}

/// Two Data Actions with windows of their own: when the clock passes the short one, that action refreshes
/// while the other is still fresh; a call can pass windows of its own too.
#[tokio::test]
async fn each_action_keeps_its_own_windows() {
    use support::calls::{jump, wait_until};
    let emulator = Emulator::start().await.unwrap();
    let redis = RedisServer::start();
    let ids = emulator.action_ids();
    let (lookup, config) = (&ids[0], &ids[1]);
    let windows = |fresh, stale| {
        Windows::new(
            Duration::from_secs(fresh),
            Duration::from_secs(stale),
            Duration::ZERO,
        )
    };
    let client = builder(&emulator)
        .redis_client(fred_client(&redis.url()).await)
        .action_windows(lookup, windows(10, 60))
        .action_windows(config, windows(3600, 60))
        .build()
        .unwrap();
    let input = json!({"orderId": "A-1"});
    for id in [lookup, config] {
        let first = client.execute_action(id, &input).await.unwrap();
        assert!(matches!(first.cache, Some(CacheOutcome::Miss { .. })));
        assert_eq!(first.attempts, 1);
    }
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 2);

    jump(Duration::from_secs(11)).await;
    let refreshing = client.execute_action(lookup, &input).await.unwrap();
    assert_eq!(
        refreshing.cache,
        Some(CacheOutcome::Stale { refreshing: true })
    );
    assert_eq!(refreshing.attempts, 0, "a stale answer made no attempt");
    let still = client.execute_action(config, &input).await.unwrap();
    assert_eq!(still.cache, Some(CacheOutcome::Hit));
    assert_eq!(still.attempts, 0, "a hit made no attempt");
    wait_until("the lookup's refresh reached the API", || {
        emulator.requests(Endpoint::ExecuteAction) == 3
    })
    .await;
    let refreshed = loop {
        let fetched = client.execute_action(lookup, &input).await.unwrap();
        if fetched.cache == Some(CacheOutcome::Hit) {
            break fetched;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(refreshed.value["input"]["orderId"], "A-1");
    assert_eq!(
        emulator.requests(Endpoint::ExecuteAction),
        3,
        "config never refreshed"
    );

    // One call's own windows, whatever its action's: this entry is stale after 1 s.
    let other = json!({"orderId": "A-2"});
    client
        .execute_action_with(config, &other, windows(1, 60))
        .await
        .unwrap();
    jump(Duration::from_secs(2)).await;
    let stale = client.execute_action(config, &other).await.unwrap();
    assert_eq!(stale.cache, Some(CacheOutcome::Stale { refreshing: true }));
}

/// A Data Action called all the time, never answered stale: refreshed ahead of its expiry, it never makes a
/// caller wait for the API again.
#[tokio::test]
async fn an_action_called_all_the_time_is_renewed_before_it_expires() {
    use support::calls::{jump, wait_until};
    let emulator = Emulator::start().await.unwrap();
    let redis = RedisServer::start();
    let id = &emulator.action_ids()[0];
    let client = builder(&emulator)
        .redis_client(fred_client(&redis.url()).await)
        .fresh_for(Duration::from_secs(10))
        .stale_for(Duration::ZERO)
        .refresh_ahead(0.5)
        .build()
        .unwrap();
    let input = json!({"orderId": "A-1"});
    let first = client.execute_action(id, &input).await.unwrap();
    assert!(matches!(first.cache, Some(CacheOutcome::Miss { .. })));

    // At 6 s, in the last half of its freshness: answered at once, refreshed behind.
    jump(Duration::from_secs(6)).await;
    let due = client.execute_action(id, &input).await.unwrap();
    assert_eq!((due.cache, due.attempts), (Some(CacheOutcome::Hit), 0));
    // Stored: the action's `GET` (read once, to learn it is not `secure`), its first answer, the renewed one.
    wait_until("the refresh reached the API and was stored", || {
        emulator.requests(Endpoint::ExecuteAction) == 2 && client.cache().stats().stores == 3
    })
    .await;
    // At 11 s the first answer would have expired; the renewed one answers.
    jump(Duration::from_secs(5)).await;
    let later = client.execute_action(id, &input).await.unwrap();
    assert_eq!((later.cache, later.attempts), (Some(CacheOutcome::Hit), 0));
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 2);

    let refused = builder(&emulator).refresh_ahead(1.5).build().unwrap_err();
    assert_eq!(refused.setting(), Setting::RefreshAhead, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidating_an_action_drops_its_answers_and_the_listings_everywhere() {
    let emulator = Emulator::start().await.unwrap();
    let redis = RedisServer::start();
    let (client, other) = (
        redis_client(&emulator, &redis).await,
        redis_client(&emulator, &redis).await,
    );
    let ids = emulator.action_ids();
    let (changed, untouched) = (ids[0].as_str(), ids[1].as_str());
    assert_eq!(
        read_actions(&client, changed, untouched).await.0,
        [false; 4]
    );
    assert_eq!(read_actions(&other, changed, untouched).await.0, [true; 4]);

    // Changed elsewhere: the action's execution and its own `GET` go, and the listing's page; the other
    // action's execution stays.
    assert_eq!(client.invalidate_action(changed).await.unwrap(), 3);
    assert_eq!(
        read_actions(&other, changed, untouched).await.0,
        [false, false, true, false]
    );
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 3);
}

/// What `client` reads of two actions (`changed`, `untouched`): whether each of the four answers was a hit
/// (`changed`'s execution and `GET`, `untouched`'s execution, the first page of the order lookups), `changed`'s
/// execution output and version, and the names on the page.
async fn read_actions(
    client: &GenesysClient,
    changed: &str,
    untouched: &str,
) -> ([bool; 4], Value, Option<i64>, Vec<String>) {
    let input = json!({"orderId": "A-17"});
    // The action first: its execution then needs no read of whether it is `secure`.
    let action = client.get_action(changed).await.unwrap();
    let execution = client.execute_action(changed, &input).await.unwrap();
    let other = client.execute_action(untouched, &input).await.unwrap();
    let page = std::pin::pin!(client.list_action_pages(&order_lookups()))
        .try_next()
        .await
        .unwrap()
        .unwrap();
    let hit = |outcome: Option<CacheOutcome>| outcome == Some(CacheOutcome::Hit);
    (
        [
            hit(execution.cache),
            hit(action.cache),
            hit(other.cache),
            hit(page.cache),
        ],
        execution.value,
        action.value.version,
        page.value.entities.into_iter().map(|a| a.name).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_or_delete_sent_through_the_client_drops_what_it_makes_stale_everywhere() {
    let emulator = Emulator::start().await.unwrap();
    let redis = RedisServer::start();
    let (client, other) = (
        redis_client(&emulator, &redis).await,
        redis_client(&emulator, &redis).await,
    );
    // By name: 15 customer profiles, then order_lookup_01, order_lookup_02.
    let ids = emulator.action_ids();
    let (changed, untouched) = (ids[15].as_str(), ids[16].as_str());
    let (hits, _, version, names) = read_actions(&client, changed, untouched).await;
    assert_eq!((hits, version), ([false; 4], Some(1)));
    assert_eq!(names[..2], ["order_lookup_01", "order_lookup_02"]);
    assert_eq!(read_actions(&other, changed, untouched).await.0, [true; 4]);

    // An update the API refuses (a version that is not the action's) removes nothing.
    let stale = client
        .update_action(changed, &ActionUpdate::new(7).name("never"))
        .await
        .unwrap_err();
    assert!(stale.is_conflict(), "{stale}");
    assert_eq!(stale.code(), Some("conflict"));
    assert_eq!(read_actions(&other, changed, untouched).await.0, [true; 4]);

    // An accepted one: the other process reads the renamed action, a fresh execution and listing; only the
    // untouched action's execution is still a hit.
    let updated = client
        .update_action(changed, &ActionUpdate::new(1).name("order_lookup_00"))
        .await
        .unwrap();
    assert_eq!(
        (updated.value.name.as_str(), updated.value.version),
        ("order_lookup_00", Some(2))
    );
    let (hits, execution, version, names) = read_actions(&other, changed, untouched).await;
    assert_eq!(hits, [false, false, true, false]);
    assert_eq!((execution["version"].as_i64(), version), (Some(2), Some(2)));
    assert_eq!(names[..2], ["order_lookup_00", "order_lookup_02"]);
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 3);
    assert_eq!(emulator.requests(Endpoint::UpdateAction), 2);

    // A delete: no process answers the deleted action from its cache.
    client.delete_action(changed).await.unwrap();
    for reader in [&other, &client] {
        let gone = reader.get_action(changed).await.unwrap_err();
        assert!(gone.is_not_found(), "{gone}");
        let gone = reader
            .execute_action(changed, &json!({"orderId": "A-17"}))
            .await
            .unwrap_err();
        assert!(gone.is_not_found(), "{gone}");
    }
    let page = std::pin::pin!(other.list_action_pages(&order_lookups()))
        .try_next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.value.entities[0].name, "order_lookup_02");
    assert_eq!(
        client.delete_action(changed).await.unwrap_err().status(),
        Some(StatusCode::NOT_FOUND)
    );
}

/// The names of the categories `client` lists, all pages read.
async fn category_names(client: &GenesysClient, query: &CategoryQuery) -> Vec<String> {
    let categories = client.list_all_categories(query).await.unwrap();
    categories.into_iter().map(|c| c.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_action_is_in_every_processs_next_listing_and_runs() {
    let emulator = Emulator::start().await.unwrap();
    let redis = RedisServer::start();
    let (client, other) = (
        redis_client(&emulator, &redis).await,
        redis_client(&emulator, &redis).await,
    );
    let shipping = || ActionQuery::new().category("Shipping");
    let all = CategoryQuery::new();
    // Listed by one process, answered from the cache in the other.
    for reader in [&client, &other] {
        assert_eq!(
            category_names(reader, &all).await,
            ["CRM", "Helpdesk", "Orders"]
        );
        assert!(
            reader
                .list_all_actions(&shipping())
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert_eq!(emulator.requests(Endpoint::ListCategories), 1);
    assert_eq!(emulator.requests(Endpoint::ListActions), 1);

    // One the API refuses (no contract, no config) is a typed error and drops nothing.
    let incomplete = NewAction::new("i-1", "order_status", "Shipping");
    let refused = client.create_action(&incomplete).await.unwrap_err();
    assert_eq!(refused.status(), Some(StatusCode::BAD_REQUEST), "{refused}");
    assert_eq!(refused.code(), Some("bad.request"));
    category_names(&other, &all).await;
    other.list_all_actions(&shipping()).await.unwrap();
    assert_eq!(emulator.requests(Endpoint::ListCategories), 1);
    assert_eq!(emulator.requests(Endpoint::ListActions), 1);

    // One it accepts: the other process's next listings show it, and it runs.
    let template = action_requiring_an_order_id();
    let contract: ActionContract = serde_json::from_value(template["contract"].clone()).unwrap();
    let new = incomplete
        .contract(contract.clone())
        .config(template["config"].clone());
    let created = client.create_action(&new).await.unwrap();
    assert!(created.id.starts_with("custom_-_"), "{}", created.id);
    assert_eq!(
        (
            created.name.as_str(),
            created.category.as_deref(),
            created.version
        ),
        ("order_status", Some("Shipping"), Some(1))
    );
    assert_eq!(created.contract.as_ref(), Some(&contract));
    assert_eq!(emulator.requests(Endpoint::CreateAction), 2);
    assert_eq!(
        category_names(&other, &all).await,
        ["CRM", "Helpdesk", "Orders", "Shipping"]
    );
    let listed = other.list_all_actions(&shipping()).await.unwrap();
    assert_eq!(
        listed.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        [created.id.as_str()]
    );
    assert_eq!(emulator.requests(Endpoint::ListCategories), 2);
    assert_eq!(emulator.requests(Endpoint::ListActions), 2);
    let missing = other
        .execute_action(&created.id, &json!({}))
        .await
        .unwrap_err();
    assert_eq!(missing.status(), Some(StatusCode::BAD_REQUEST), "{missing}");
    let output = other
        .execute_action(&created.id, &json!({"orderId": "A-17"}))
        .await
        .unwrap();
    assert_eq!(output.value["action"], "order_status");
    assert_eq!(output.value["input"]["orderId"], "A-17");
}

#[tokio::test]
async fn categories_are_listed_page_by_page_in_order_and_filtered() {
    let mut actions = vec![action_requiring_an_order_id()];
    actions[0]["secure"] = json!(true);
    for (n, category) in ["CRM", "Helpdesk", "CRM", "Billing"]
        .into_iter()
        .enumerate()
    {
        actions.push(
            json!({"id": format!("a-{n}"), "name": format!("lookup_{n}"), "category": category}),
        );
    }
    let emulator = Emulator::builder().actions(actions).start().await.unwrap();
    let client = builder(&emulator).build().unwrap();

    let two_a_page = CategoryQuery::new().page_size(2);
    let names = category_names(&client, &two_a_page).await;
    assert_eq!(names, ["Billing", "CRM", "Helpdesk", "Orders"]);
    assert_eq!(emulator.requests(Endpoint::ListCategories), 2);
    let descending = two_a_page.clone().sort_order(SortOrder::Desc);
    assert_eq!(
        category_names(&client, &descending).await,
        ["Orders", "Helpdesk", "CRM", "Billing"]
    );
    assert_eq!(
        category_names(&client, &CategoryQuery::new().secure(true)).await,
        ["Orders"]
    );
    assert_eq!(emulator.requests(Endpoint::ListCategories), 5);
    // Read again: every page from the cache.
    assert_eq!(category_names(&client, &two_a_page).await, names);
    assert_eq!(emulator.requests(Endpoint::ListCategories), 5);
}

#[cfg(feature = "compression")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_listings_are_read_by_every_client() {
    use tower_redis_cache::genesys::{Action, Fetched, Page};
    let emulator = Emulator::start().await.unwrap();
    let redis = RedisServer::start();
    let compressing = builder(&emulator)
        .redis_client(fred_client(&redis.url()).await)
        .compress_above(1024)
        .build()
        .unwrap();
    let names = |pages: &[Fetched<Page<Action>>]| {
        pages
            .iter()
            .flat_map(|p| p.entities.iter().map(|a| a.name.clone()))
            .collect::<Vec<_>>()
    };
    let first: Vec<_> = compressing
        .list_action_pages(&order_lookups())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(names(&first).len(), 60);
    // The entries in Redis whose envelope is version 3: compressed.
    let compressed = redis.command(&[
        b"EVAL",
        b"local n = 0 \
          for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
            if redis.call('TYPE', k).ok == 'string' \
              and string.sub(redis.call('GET', k), 1, 5) == '\\255TRC\\3' then n = n + 1 end \
          end \
          return n",
        b"0",
        b"genesys:*",
    ]);
    assert_eq!(
        compressed, b":3\r\n",
        "the three pages are stored compressed"
    );

    let plain = redis_client(&emulator, &redis).await;
    let again: Vec<_> = plain
        .list_action_pages(&order_lookups())
        .try_collect()
        .await
        .unwrap();
    assert!(again.iter().all(|p| p.cache == Some(CacheOutcome::Hit)));
    assert_eq!(names(&again), names(&first));
    assert_eq!(emulator.requests(Endpoint::ListActions), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_cache_answers_repeated_executions_without_redis() {
    let emulator = Emulator::start().await.unwrap();
    let redis = RedisServer::start();
    let client = builder(&emulator)
        .redis_client(fred_client(&redis.url()).await)
        .near_cache(8 << 20)
        .build()
        .unwrap();
    let id = &emulator.action_ids()[0];
    let input = json!({"orderId": "A-17"});
    let first = client.execute_action(id, &input).await.unwrap();
    assert!(matches!(first.cache, Some(CacheOutcome::Miss { .. })));
    // Tracking is armed in the background: a bounded poll until the process answers from memory.
    let mut near = false;
    for _ in 0..200 {
        let again = client.execute_action(id, &input).await.unwrap();
        assert_eq!(again.cache, Some(CacheOutcome::Hit));
        assert_eq!(again.value, first.value);
        if client.cache().stats().near_hits > 0 {
            near = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(near, "the near cache never answered");
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 1);

    // Over a store other than Redis, the near cache is refused by name.
    let refused = builder(&emulator)
        .store(tower_redis_cache::MemoryStore::new(1 << 20))
        .near_cache(8 << 20)
        .build()
        .unwrap_err();
    assert_eq!(refused.setting(), Setting::NearCache);
}

/// An API gateway on loopback that publishes `upstream` under the path `prefix`: it forwards `{prefix}/...` to
/// `upstream` as `/...` and answers anything else `404`. Returns its base URL.
async fn prefix_gateway(prefix: &'static str, upstream: String) -> String {
    use axum::response::IntoResponse;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<axum::body::Body>();
    let app = axum::Router::new().fallback(move |mut request: axum::extract::Request| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move {
            let Some(rest) = request
                .uri()
                .path_and_query()
                .and_then(|target| target.as_str().strip_prefix(prefix))
                .filter(|rest| rest.starts_with('/'))
            else {
                return StatusCode::NOT_FOUND.into_response();
            };
            *request.uri_mut() = format!("{upstream}{rest}").parse().unwrap();
            request.headers_mut().remove(http::header::HOST);
            match client.request(request).await {
                Ok(response) => response.into_response(),
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// An API base with a path (a gateway that publishes the API under `/genesys`): executions and listings are
/// cached, each action keeps its windows, and a change sent through the client drops what it makes stale, as
/// with the API at the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_gateway_path_the_client_caches_and_invalidates_as_at_the_root() {
    let emulator = Emulator::start().await.unwrap();
    let gateway = prefix_gateway("/genesys", emulator.base_url()).await;
    let ids = emulator.action_ids();
    let (changed, untouched) = (ids[15].as_str(), ids[16].as_str());
    let client = builder(&emulator)
        .api_base(format!("{gateway}/genesys/"))
        .action_windows(
            untouched,
            Windows::new(Duration::ZERO, Duration::ZERO, Duration::ZERO),
        )
        .build()
        .unwrap();

    let (hits, _, version, names) = read_actions(&client, changed, untouched).await;
    assert_eq!((hits, version), ([false; 4], Some(1)));
    assert_eq!(names[..2], ["order_lookup_01", "order_lookup_02"]);
    // `untouched` keeps its own windows (none: never fresh), the others the client's.
    assert_eq!(
        read_actions(&client, changed, untouched).await.0,
        [true, true, false, true]
    );
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 3);
    assert_eq!(emulator.requests(Endpoint::GetAction), 1);
    assert_eq!(emulator.requests(Endpoint::ListActions), 1);

    client
        .update_action(changed, &ActionUpdate::new(1).name("order_lookup_00"))
        .await
        .unwrap();
    let (hits, execution, version, names) = read_actions(&client, changed, untouched).await;
    assert_eq!(hits, [false; 4]);
    assert_eq!((execution["version"].as_i64(), version), (Some(2), Some(2)));
    assert_eq!(names[..2], ["order_lookup_00", "order_lookup_02"]);
}

/// An action that changes something runs on every call: named uncached, its executions never come from the
/// cache, concurrent ones are not collapsed into one, a call's own windows do not cache it, and nothing is
/// stored for it. Its `GET` and the other actions stay cached, and one call of a cached action can leave the
/// cache out without disturbing its entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_named_uncached_runs_on_every_call() {
    use tower_redis_cache::cache::{BypassReason, Windows};
    let emulator = Emulator::builder()
        .execute_latency(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let ids = emulator.action_ids();
    let (create, lookup) = (ids[0].as_str(), ids[1].as_str());
    let client = builder(&emulator).uncached_action(create).build().unwrap();
    let input = json!({"subject": "printer on fire"});
    let skipped = Some(CacheOutcome::Bypass(BypassReason::Skipped));

    let (a, b) = tokio::join!(
        client.execute_action(create, &input),
        client.execute_action(create, &input)
    );
    let minute = Duration::from_secs(60);
    let third = client
        .execute_action_with(create, &input, Windows::new(minute, minute, minute))
        .await
        .unwrap();
    for fetched in [a.unwrap(), b.unwrap(), third] {
        assert_eq!((fetched.cache, fetched.attempts), (skipped, 1));
        assert_eq!(fetched.value["input"]["subject"], "printer on fire");
    }
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 3);
    for _ in 0..2 {
        client.get_action(create).await.unwrap();
    }
    assert_eq!(emulator.requests(Endpoint::GetAction), 1);

    let first = client.execute_action(lookup, &input).await.unwrap();
    assert!(matches!(first.cache, Some(CacheOutcome::Miss { .. })));
    let once = client
        .execute_action_uncached(lookup, &input)
        .await
        .unwrap();
    assert_eq!(once.cache, skipped);
    let hit = client.execute_action(lookup, &input).await.unwrap();
    assert_eq!(hit.cache, Some(CacheOutcome::Hit));
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 5);
    // Stored: the two actions' `GET`s (the lookup's read once, to learn it is not `secure`) and the lookup's
    // first answer, nothing else.
    assert_eq!(client.cache().stats().stores, 3);
}

/// A cached execution is a lookup, so a `503` of it is retried like a `GET`'s; an action that changes
/// something is not sent twice after an answer that may follow its run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_execution_is_retried_after_a_503_and_an_uncached_one_is_not() {
    let emulator = Emulator::start().await.unwrap();
    let ids = emulator.action_ids();
    let (create, lookup) = (ids[0].as_str(), ids[1].as_str());
    let client = builder(&emulator).uncached_action(create).build().unwrap();
    let input = json!({"orderId": "A-17"});

    emulator.inject(Fault::status(StatusCode::SERVICE_UNAVAILABLE).matching("/execute"));
    let looked_up = client.execute_action(lookup, &input).await.unwrap();
    assert_eq!(looked_up.attempts, 2);
    assert!(matches!(looked_up.cache, Some(CacheOutcome::Miss { .. })));
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 2);

    emulator.inject(Fault::status(StatusCode::SERVICE_UNAVAILABLE).matching("/execute"));
    let error = client.execute_action(create, &input).await.unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(error.attempts(), 1);
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 3);
}

/// With executions cached only where named, an action without windows of its own runs on every call; one given
/// windows, by the builder or by the call, is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_executions_cached_only_where_named_other_actions_run_on_every_call() {
    use tower_redis_cache::cache::{BypassReason, Windows};
    let emulator = Emulator::start().await.unwrap();
    let ids = emulator.action_ids();
    let (lookup, other) = (ids[0].as_str(), ids[1].as_str());
    let minute = Duration::from_secs(60);
    let windows = Windows::new(minute, minute, minute);
    let client = builder(&emulator)
        .cache_executions(false)
        .action_windows(lookup, windows)
        .build()
        .unwrap();
    let input = json!({"orderId": "A-1"});
    let skipped = Some(CacheOutcome::Bypass(BypassReason::Skipped));

    for _ in 0..2 {
        let ran = client.execute_action(other, &input).await.unwrap();
        assert_eq!(ran.cache, skipped);
    }
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 2);
    let first = client.execute_action(lookup, &input).await.unwrap();
    assert!(matches!(first.cache, Some(CacheOutcome::Miss { .. })));
    let hit = client.execute_action(lookup, &input).await.unwrap();
    assert_eq!(hit.cache, Some(CacheOutcome::Hit));
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 3);

    // A call that brings its own windows is cached; one without still runs.
    let own = json!({"orderId": "A-2"});
    for _ in 0..2 {
        client
            .execute_action_with(other, &own, windows)
            .await
            .unwrap();
    }
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 4);
    let ran = client.execute_action(other, &own).await.unwrap();
    assert_eq!(ran.cache, skipped);
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 5);
}

/// The id of [`action_requiring_an_order_id`].
const ORDER_STATUS: &str = "b0000000-0000-4000-8000-000000000001";

/// An emulator serving only [`action_requiring_an_order_id`], and a client of it.
async fn serving_order_status() -> (Emulator, GenesysClient) {
    let emulator = Emulator::builder()
        .actions(vec![action_requiring_an_order_id()])
        .start()
        .await
        .unwrap();
    let client = builder(&emulator).build().unwrap();
    (emulator, client)
}

/// An action whose input must name an `orderId`, as a contract says it.
fn action_requiring_an_order_id() -> Value {
    json!({
        "id": ORDER_STATUS,
        "name": "order_status",
        "category": "Orders",
        "secure": false,
        "version": 1,
        "config": {"request": {"requestUrlTemplate": "https://orders.example/${input.orderId}"}},
        "contract": {
            "input": {"inputSchema": {"type": "object", "required": ["orderId"],
                                      "properties": {"orderId": {"type": "string"}}}},
            "output": {"successSchema": {"type": "object", "properties": {"status": {"type": "string"}}}}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_run_shows_each_step_and_runs_on_every_call() {
    let (emulator, client) = serving_order_status().await;
    let id = ORDER_STATUS;

    // The action fails on an input without `orderId`: an execution is an error, a test an answer saying where.
    let refused = client
        .execute_action(id, &json!({"order": "A-17"}))
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(StatusCode::BAD_REQUEST));
    assert!(
        refused.message().is_some_and(|m| m.contains("orderId")),
        "{refused}"
    );
    let failed = client
        .test_action(id, &json!({"order": "A-17"}))
        .await
        .unwrap();
    assert!(!failed.success);
    assert_eq!(failed.operations.len(), 1);
    let step = failed.failed_step().unwrap();
    assert_eq!(
        (step.step, step.name.as_str()),
        (1, "Validate input against the input schema")
    );
    let message = step.error.as_ref().and_then(|e| e.message.as_deref());
    assert!(
        message.is_some_and(|m| m.contains("'orderId'")),
        "{message:?}"
    );
    assert_eq!(failed.error.as_ref().and_then(|e| e.status), Some(400));
    assert_eq!(failed.final_result, None);

    // A good input: every step, and the output an execution answers.
    let input = json!({"orderId": "A-17"});
    let passed = client.test_action(id, &input).await.unwrap();
    assert!(passed.success);
    assert_eq!(passed.failed_step(), None);
    assert_eq!(
        passed.operations.iter().map(|s| s.step).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let executed = client.execute_action(id, &input).await.unwrap();
    assert_eq!(passed.final_result.as_ref(), Some(&executed.value));

    // Tests are never answered from the cache: the same test again runs again, while the execution hits.
    let again = client.test_action(id, &input).await.unwrap();
    assert_eq!(
        again.cache,
        Some(CacheOutcome::Bypass(BypassReason::Skipped))
    );
    assert_eq!(emulator.requests(Endpoint::TestAction), 3);
    assert_eq!(
        client.execute_action(id, &input).await.unwrap().cache,
        Some(CacheOutcome::Hit)
    );
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 2);

    let unknown = client
        .test_action("no-such-action", &input)
        .await
        .unwrap_err();
    assert!(unknown.is_not_found(), "{unknown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actions_contract_and_config_are_read_once_and_dropped_when_the_action_changes() {
    let (emulator, client) = serving_order_status().await;
    let id = ORDER_STATUS;

    let both = ActionDetails::new().contract().config();
    let action = client.get_action_with(id, both).await.unwrap();
    let contract = action.contract.clone().unwrap();
    assert_eq!(contract.input.input_schema["required"], json!(["orderId"]));
    assert_eq!(
        contract.output.success_schema["properties"]["status"]["type"],
        "string"
    );
    let config = action.config.clone().unwrap();
    assert_eq!(
        config["request"]["requestUrlTemplate"],
        "https://orders.example/${input.orderId}"
    );
    // Each only when asked for, as the API sends them.
    let plain = client.get_action(id).await.unwrap();
    assert_eq!((&plain.contract, &plain.config), (&None, &None));
    let only_contract = client
        .get_action_with(id, ActionDetails::new().contract())
        .await
        .unwrap();
    assert_eq!(
        (only_contract.contract.as_ref(), &only_contract.config),
        (Some(&contract), &None)
    );
    assert_eq!(emulator.requests(Endpoint::GetAction), 3);

    let again = client.get_action_with(id, both).await.unwrap();
    assert_eq!(
        (again.cache, &again.value),
        (Some(CacheOutcome::Hit), &action.value)
    );
    assert_eq!(emulator.requests(Endpoint::GetAction), 3);

    // A change to the config, made to the version read, drops what was cached of the action.
    let mut changed = config.clone();
    changed["request"]["requestType"] = json!("GET");
    client
        .update_action(
            id,
            &ActionUpdate::new(action.version.unwrap()).config(changed.clone()),
        )
        .await
        .unwrap();
    let after = client.get_action_with(id, both).await.unwrap();
    assert!(
        matches!(after.cache, Some(CacheOutcome::Miss { .. })),
        "{:?}",
        after.cache
    );
    assert_eq!(
        (after.config.as_ref(), after.version),
        (Some(&changed), Some(2))
    );
    assert_eq!(after.contract.as_ref(), Some(&contract));
    assert_eq!(emulator.requests(Endpoint::GetAction), 4);

    let unknown = client
        .get_action_with("no-such-action", both)
        .await
        .unwrap_err();
    assert!(unknown.is_not_found(), "{unknown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_actions_executions_are_not_cached_unless_chosen() {
    let secure = "c0000000-0000-4000-8000-000000000001";
    let lookup = "c0000000-0000-4000-8000-000000000002";
    let flaky = "c0000000-0000-4000-8000-000000000003";
    let action = |id: &str, name: &str, secure: bool| json!({"id": id, "name": name, "category": "Payments", "secure": secure, "version": 1});
    let emulator = Emulator::builder()
        .actions(vec![
            action(secure, "card_balance", true),
            action(lookup, "order_lookup", false),
            action(flaky, "order_status", false),
        ])
        .start()
        .await
        .unwrap();
    let input = json!({"account": "A-17"});
    let skipped = Some(CacheOutcome::Bypass(BypassReason::Skipped));

    // By default: the secure action runs on every call, the other is cached; each action is read once to learn
    // which it is.
    let client = builder(&emulator).build().unwrap();
    for _ in 0..2 {
        let output = client.execute_action(secure, &input).await.unwrap();
        assert_eq!((output.cache, output.attempts), (skipped, 1));
        assert_eq!(output.value["action"], "card_balance");
        let raw = client.execute_action_raw(secure, &input).await.unwrap();
        assert_eq!(raw.cache, skipped);
    }
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 4);
    let first = client.execute_action(lookup, &input).await.unwrap();
    assert!(matches!(first.cache, Some(CacheOutcome::Miss { .. })));
    let second = client.execute_action(lookup, &input).await.unwrap();
    assert_eq!(second.cache, Some(CacheOutcome::Hit));
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 5);
    assert_eq!(emulator.requests(Endpoint::GetAction), 2);
    // Only the two `GET`s and the lookup's answer are stored: nothing of the secure action's output.
    assert_eq!(client.cache().stats().stores, 3);

    // A call given windows of its own is cached: naming them is the choice.
    let minute = Duration::from_secs(60);
    let windows = Windows::new(minute, minute, minute);
    let named = client
        .execute_action_with(secure, &input, windows)
        .await
        .unwrap();
    assert!(matches!(named.cache, Some(CacheOutcome::Miss { .. })));
    let again = client
        .execute_action_with(secure, &input, windows)
        .await
        .unwrap();
    assert_eq!(again.cache, Some(CacheOutcome::Hit));
    assert_eq!(emulator.requests(Endpoint::ExecuteAction), 6);

    // An action with windows of its own, or a client caching secure actions: cached, and nothing read first.
    for chosen in [
        builder(&emulator)
            .namespace("windowed")
            .action_windows(secure, windows),
        builder(&emulator)
            .namespace("all")
            .cache_secure_actions(true),
    ] {
        let chosen = chosen.build().unwrap();
        let before = emulator.requests(Endpoint::ExecuteAction);
        for _ in 0..2 {
            chosen.execute_action(secure, &input).await.unwrap();
        }
        assert_eq!(emulator.requests(Endpoint::ExecuteAction), before + 1);
    }
    assert_eq!(emulator.requests(Endpoint::GetAction), 2);

    // A listing tells the client which actions are secure: no read before executing.
    let listed = builder(&emulator).namespace("listed").build().unwrap();
    let all = listed.list_all_actions(&ActionQuery::new()).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(
        listed.execute_action(secure, &input).await.unwrap().cache,
        skipped
    );
    assert_eq!(emulator.requests(Endpoint::GetAction), 2);

    // An action that cannot be read (its `GET` failing every attempt) may be secure: its execution is not
    // cached, and the client reads it again next time.
    emulator.inject(
        Fault::status(StatusCode::SERVICE_UNAVAILABLE)
            .times(4)
            .matching(flaky),
    );
    let unread = client.execute_action(flaky, &input).await.unwrap();
    assert_eq!(unread.cache, skipped);
    let read = client.execute_action(flaky, &input).await.unwrap();
    assert!(matches!(read.cache, Some(CacheOutcome::Miss { .. })));
    assert_eq!(
        client.execute_action(flaky, &input).await.unwrap().cache,
        Some(CacheOutcome::Hit)
    );
    let unknown = client
        .execute_action("no-such-action", &input)
        .await
        .unwrap_err();
    assert!(unknown.is_not_found(), "{unknown}");
}

/// `user:p@ss` as a Basic `Proxy-Authorization`.
const PROXY_CREDENTIALS: &str = "Basic dXNlcjpwQHNz";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_proxy_each_connection_is_a_connect_tunnel_with_its_credentials() {
    let emulator = Emulator::start().await.unwrap();
    let proxy = support::http_proxy::HttpProxy::start(Some(PROXY_CREDENTIALS)).await;
    let url = format!("http://user:p%40ss@127.0.0.1:{}", proxy.port());
    let builder = builder(&emulator).proxy(&url);
    let shown = format!("{builder:?}");
    assert!(
        !shown.contains("p%40ss") && !shown.contains("p@ss"),
        "{shown}"
    );
    let client = builder.build().unwrap();

    let pages: Vec<_> = client
        .list_action_pages(&order_lookups())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(pages.iter().map(|p| p.entities.len()).sum::<usize>(), 60);
    // The token and the three pages went through the proxy: every tunnel to the emulator, with the credentials.
    let tunnels = proxy.tunnels();
    let emulator_authority = emulator.base_url().trim_start_matches("http://").to_owned();
    assert!(!tunnels.is_empty());
    for tunnel in &tunnels {
        assert_eq!(tunnel.target, emulator_authority);
        assert_eq!(tunnel.authorization.as_deref(), Some(PROXY_CREDENTIALS));
    }
    assert_eq!(emulator.requests(Endpoint::ListActions), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_refusing_the_credentials_fails_the_call_without_showing_them() {
    let emulator = Emulator::start().await.unwrap();
    let proxy = support::http_proxy::HttpProxy::start(Some(PROXY_CREDENTIALS)).await;
    let client = builder(&emulator)
        .proxy(format!(
            "http://user:wrong-s3cret@127.0.0.1:{}",
            proxy.port()
        ))
        .retry(RetryLayer::builder().max_attempts(1).build().unwrap())
        .build()
        .unwrap();

    // The token is asked for first: its endpoint could not be reached.
    let error = client.get_action("x").await.unwrap_err();
    assert!(error.is_auth(), "{error:?}");
    // The causes' messages, and every cause's `Debug` (the error's holds them).
    let shown = format!("{} {error:?}", support::calls::causes(&error));
    assert!(shown.contains("proxy"), "{shown}");
    assert!(!shown.contains("wrong-s3cret"), "{shown}");
    assert_eq!(proxy.tunnels().len(), 1);
    assert_eq!(
        emulator.requests(Endpoint::Token),
        0,
        "nothing reached the API"
    );
}

#[tokio::test]
async fn a_proxy_the_client_cannot_tunnel_through_is_refused_when_it_is_built() {
    let emulator = Emulator::start().await.unwrap();
    for url in [
        "socks5://user:s3cret@127.0.0.1:1080",
        "https://127.0.0.1:3128",
    ] {
        let error = builder(&emulator).proxy(url).build().unwrap_err();
        assert_eq!(error.setting(), Setting::Proxy, "{url}");
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }
}

/// The environment's proxy (curl's variables) is the default: for an https base it tunnels through
/// `HTTPS_PROXY`, not for a host `NO_PROXY` names, and never for a base on this machine; a value that applies but
/// cannot be used is refused. Each case is a child process with its own environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environments_proxy_is_used_but_for_no_proxy_hosts_and_this_machine() {
    let emulator = Emulator::start().await.unwrap();
    let proxy = support::http_proxy::HttpProxy::start(None).await;
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port());
    let remote = "https://api.genesys.test";
    for (base, env, expected, tunnels) in [
        (
            remote,
            vec![("HTTPS_PROXY", proxy_url.as_str())],
            "error",
            1,
        ),
        (
            remote,
            vec![("https_proxy", proxy_url.as_str())],
            "error",
            2,
        ),
        (
            remote,
            vec![
                ("HTTPS_PROXY", proxy_url.as_str()),
                ("NO_PROXY", "genesys.test"),
            ],
            "error",
            2,
        ),
        (
            emulator.base_url().as_str(),
            vec![
                ("HTTP_PROXY", proxy_url.as_str()),
                ("ALL_PROXY", proxy_url.as_str()),
            ],
            "ok",
            2,
        ),
        (
            remote,
            vec![("HTTPS_PROXY", "socks4://127.0.0.1:1080")],
            "refused",
            2,
        ),
        (remote, vec![("ALL_PROXY", "http://[::1")], "refused", 2),
        // Not for this base: left alone.
        (
            remote,
            vec![("HTTP_PROXY", "socks4://127.0.0.1:1080")],
            "error",
            2,
        ),
    ] {
        let mut child = support::child::command(module_path!(), "environment_proxy_child");
        child.env("CHILD_BASE", base).env(
            "CHILD_CLIENT",
            format!("{}:{}", emulator.client_id(), emulator.client_secret()),
        );
        for name in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            child.env_remove(name);
        }
        for name in ["NO_PROXY", "no_proxy", "REQUEST_METHOD"] {
            child.env_remove(name);
        }
        child.envs(env.iter().copied());
        let stdout = support::child::run(&mut child);
        assert!(
            stdout.contains(&format!("child: {expected}")),
            "{env:?}: {stdout}"
        );
        assert_eq!(proxy.tunnels().len(), tunnels, "{env:?}");
    }
    for tunnel in proxy.tunnels() {
        assert_eq!(
            tunnel.target, "login.genesys.test:443",
            "the token is asked for first"
        );
    }
}

/// Run by `the_environments_proxy_is_used_but_for_no_proxy_hosts_and_this_machine` as a separate process.
#[tokio::test]
#[ignore = "a child process of another test; needs its environment"]
async fn environment_proxy_child() {
    let var = support::child::var;
    let base = var("CHILD_BASE");
    let client = var("CHILD_CLIENT");
    let (id, secret) = client.split_once(':').unwrap();
    let login = base.replace("//api.", "//login.");
    let client = GenesysClient::builder()
        .api_base(&base)
        .login_base(login)
        .client_credentials(id, secret)
        .attempt_timeout(Duration::from_secs(2))
        .retry(RetryLayer::builder().max_attempts(1).build().unwrap())
        .build();
    let client = match client {
        Ok(client) => client,
        Err(error) => {
            assert_eq!(error.setting(), Setting::Proxy, "{error}");
            println!("child: refused ({error})");
            return;
        }
    };
    let answer = client.get_action("nope").await;
    // The emulator knows no action `nope`: a 404 is an answer from it, through whatever route.
    let reached = matches!(&answer, Err(error) if error.is_not_found());
    println!("child: {}", if reached { "ok" } else { "error" });
}
