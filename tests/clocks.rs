//! Processes whose clocks disagree, sharing one Redis: a writer process runs under libfaketime (`faketime`, a
//! real process whose wall clock is two minutes off) and stores an entry; this process, whose clock is right,
//! reads it. An entry's windows are unix times, so each process must read them on one clock: the store's.

mod support;

use http::Method;
use std::process::Command;
use std::time::Duration;
use support::calls::{call, jump, outcome, post, wait_until};
use support::redis::require_tool;
use support::{Origin, RedisServer};
use tower::ServiceBuilder;
use tower_redis_cache::cache::CacheHandle;
use tower_redis_cache::{CacheOutcome, RedisCacheLayer, RedisStore};

/// Where the writer finds Redis; set only for the writer.
const WRITER_REDIS: &str = "TRC_CLOCKS_WRITER_REDIS";

/// The query the writer stores and this process reads.
const QUERY: &str = r#"{"report":"orders","day":"2026-12-03"}"#;

/// How far off the writer's clock runs.
const SKEW: Duration = Duration::from_secs(120);

/// The layer both processes build: fresh for a minute, then stale for a minute.
async fn layer(url: &str) -> RedisCacheLayer {
    RedisCacheLayer::builder(RedisStore::connect(url).await.unwrap())
        .namespace("clocks")
        .methods([Method::GET, Method::POST])
        .fresh_for(Duration::from_secs(60))
        .stale_for(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Waits until `handle`'s layer has read the store's clock, and returns how far ahead of this process's it was.
async fn store_ahead_ms(handle: &CacheHandle) -> i64 {
    wait_until("the store's clock read", || {
        handle.store_clock_ahead_ms().is_some()
    })
    .await;
    handle.store_clock_ahead_ms().unwrap()
}

/// The writer: run by the tests below, in a process of its own under `faketime`. It has the store's clock read
/// (its first request), stores `QUERY`'s answer, checks that it hits, and prints how far off it found its clock
/// and the warnings it logged.
#[tokio::test]
#[ignore = "the clock tests run it under faketime"]
async fn skewed_writer() {
    let url =
        std::env::var(WRITER_REDIS).expect("run by the clock tests, which name the Redis to use");
    let warnings = support::logs::warnings();
    let layer = layer(&url).await;
    let handle = layer.handle();
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(Origin::new().service());
    let _ = call(&service, post(r#"{"warm-up":true}"#)).await;
    let ahead = store_ahead_ms(&handle).await;
    assert!(matches!(
        outcome(&call(&service, post(QUERY)).await),
        CacheOutcome::Miss { stored: true, .. }
    ));
    assert_eq!(
        outcome(&call(&service, post(QUERY)).await),
        CacheOutcome::Hit
    );
    println!("store_ahead_ms={ahead}");
    for warning in warnings.all() {
        println!("warning={warning}");
    }
}

/// Runs [`skewed_writer`] against `url` with its clock moved by `offset` (faketime's syntax: `-120s`), and
/// returns how far ahead of its clock it found the store's, and the warnings it logged.
fn run_writer(url: &str, offset: &str) -> (i64, Vec<String>) {
    let faketime = require_tool(
        "faketime",
        "faketime was not found on PATH. The clock tests run a process under libfaketime: run `scripts/test` \
         (it installs it), or install it yourself: Debian/Ubuntu `apt-get install -y faketime`, Fedora \
         `dnf install libfaketime`, macOS `brew install libfaketime`.",
    );
    let stdout = support::child::run(
        Command::new(faketime)
            .arg("-f")
            .arg(offset)
            .arg(std::env::current_exe().unwrap())
            .args(support::child::args(module_path!(), "skewed_writer"))
            .env(WRITER_REDIS, url)
            // Only the wall clock is off, as on a machine whose clock is set wrong.
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    );
    let ahead = stdout
        .lines()
        .find_map(|line| line.strip_prefix("store_ahead_ms="))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("the writer did not say how far off its clock was:\n{stdout}"));
    let warnings = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("warning="))
        .map(str::to_owned)
        .collect();
    (ahead, warnings)
}

/// Asserts that the writer logged one warning, saying that its clock is `direction` ("behind", "ahead of") the
/// store's.
fn assert_told(warnings: &[String], direction: &str) {
    let told = format!("s {direction} the cache store's: entries are timed by the store's clock");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains(&told), "{warnings:?}");
}

/// Asserts that `measured` is `expected` milliseconds, give or take the few seconds a busy machine's round trips
/// and process starts could add.
fn assert_about(measured: i64, expected: i64) {
    assert!(
        (measured - expected).abs() < 5_000,
        "measured {measured} ms, expected about {expected} ms"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_entry_from_a_process_whose_clock_runs_behind_is_fresh_here() {
    let server = RedisServer::start();
    let skew = i64::try_from(SKEW.as_millis()).unwrap();
    // The writer's clock runs two minutes behind: it finds the store's two minutes ahead, and says so.
    let (ahead, warnings) = run_writer(&server.url(), "-120s");
    assert_about(ahead, skew);
    assert_told(&warnings, "behind");

    let origin = Origin::new();
    let layer = layer(&server.url()).await;
    let handle = layer.handle();
    let service = ServiceBuilder::new().layer(layer).service(origin.service());
    let reply = call(&service, post(QUERY)).await;
    // Timed by its own clock, the writer's entry would have gone stale a minute ago, and out of its stale
    // window now: a miss, and `Age: 120`.
    assert_eq!(outcome(&reply), CacheOutcome::Hit);
    assert_eq!(origin.calls(), 0);
    let age: u64 = reply.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!(age < 60, "Age: {age}");
    // This process's clock agrees with the store's.
    assert_about(store_ahead_ms(&handle).await, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn an_entry_from_a_process_whose_clock_runs_ahead_goes_stale_on_time_here() {
    let server = RedisServer::start();
    let skew = i64::try_from(SKEW.as_millis()).unwrap();
    let (ahead, warnings) = run_writer(&server.url(), "+120s");
    assert_about(ahead, -skew);
    assert_told(&warnings, "ahead of");

    let origin = Origin::new();
    let layer = layer(&server.url()).await;
    let handle = layer.handle();
    let service = ServiceBuilder::new().layer(layer).service(origin.service());
    assert_eq!(
        outcome(&call(&service, post(QUERY)).await),
        CacheOutcome::Hit
    );
    assert_about(store_ahead_ms(&handle).await, 0);
    // A minute on, the entry is stale. Timed by the writer's clock it would stay fresh two minutes more.
    jump(Duration::from_secs(61)).await;
    assert_eq!(
        outcome(&call(&service, post(QUERY)).await),
        CacheOutcome::Stale { refreshing: true }
    );
    wait_until("the stale entry's refresh", || origin.calls() == 1).await;
}

#[cfg(feature = "metrics")]
#[test]
fn the_store_clocks_distance_reaches_the_metrics_facade() {
    use metrics::{
        Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };
    use std::sync::{Arc, Mutex};

    /// The last value of each gauge, by name and labels.
    #[derive(Default)]
    struct Gauges(Mutex<Vec<(String, f64)>>);
    struct Set(Arc<Gauges>, String);
    impl GaugeFn for Set {
        fn increment(&self, _: f64) {}
        fn decrement(&self, _: f64) {}
        fn set(&self, value: f64) {
            self.0.0.lock().unwrap().push((self.1.clone(), value));
        }
    }
    struct Local(Arc<Gauges>);
    impl Recorder for Local {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            let name = support::metrics::name_of(key);
            Gauge::from_arc(Arc::new(Set(self.0.clone(), name)))
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    let gauges = Arc::new(Gauges::default());
    let recorder = Local(gauges.clone());
    support::metrics::recorded(&recorder, async {
        let server = RedisServer::start();
        let layer = layer(&server.url()).await;
        let handle = layer.handle();
        let service = ServiceBuilder::new()
            .layer(layer)
            .service(Origin::new().service());
        let _ = call(&service, post(QUERY)).await;
        assert_about(store_ahead_ms(&handle).await, 0);
    });
    let gauges = gauges.0.lock().unwrap();
    let readings: Vec<f64> = gauges
        .iter()
        .filter(|(name, _)| name == "tower_redis_cache_store_clock_ahead_seconds{namespace=clocks}")
        .map(|(_, value)| *value)
        .collect();
    assert_eq!(readings.len(), 1, "{gauges:?}");
    assert!(readings[0].abs() < 1.0, "{readings:?}");
}
