//! Criterion benchmarks of the cache hit path, each measured against its physical floor in the same run: a bare
//! fred `GET` of the same bytes on the same kind of client.
//!
//! ```sh
//! cargo bench --bench hit_path                     # starts its own redis-server on a free loopback port
//! cargo bench --bench hit_path --features compression -- compressed
//! REDIS_URL=redis://127.0.0.1:6379 cargo bench --bench hit_path
//! ```
//!
//! When it ends it prints the medians this run measured (from criterion's `estimates.json`) as BENCHMARKS.md's
//! tables, with the ratios the targets are set on.
//!
//! Groups: `hit_path/{bare_fred_get,layer_redis,layer_near,layer_memory,layer_memory_variants,key}/{256,4096,
//! 65536}` (`layer_memory_variants`: an answer varying on `Accept-Language`, asked for in two languages in turn),
//! `concurrent/{bare_fred_get,layer_redis,service_floor,minimal_cache,layer_near}` (64 callers on their own
//! tasks, each making 16 calls one after another as a server's connection answers its requests, 4096 B;
//! `service_floor` is a Tower service that does the bare `GET` and nothing else, holding its request until the
//! answer as a cache must; `minimal_cache` is the least any Redis cache hit must do: hash the request, `GET`,
//! check an expiry, answer; `layer_near` answers from the near cache, checked afterwards by its counters), and
//! `miss/layer_redis` (a new key every iteration; the origin's call count is checked outside the timed part);
//! with the `compression` feature, `compressed/{bare_fred_get,layer_redis,layer_redis_lz4}/{4096,65536}` (a JSON
//! report stored raw and LZ4-compressed; it prints the bytes each takes in Redis and the same-round ratios).
//! After the groups it counts the heap allocations (and bytes) of one hit of each kind beside a bare `GET`'s,
//! through a counting global allocator (per thread, so the near caches' background runtime is left out), and
//! measures how long a write by another connection takes to drop a near-cache entry
//! (p50 and p99 over 500 writes), and how soon a process waiting on another's fill answers after it (polling,
//! and woken by the near cache's push).
//!
//! Method. A loopback Redis on a small VM drifts by ±10 % between one criterion measurement and the next, more
//! than the layer costs, so a ratio of two measurements taken one after the other mostly measures the drift.
//! The floor and the layer are therefore measured *paired*: every iteration of either id runs one bare `GET`
//! and one hit through the layer back to back (in `concurrent`, one batch of each of the five ids), in an
//! order shuffled every round, and times only its own part, so every id runs under the same mix of work.
//! Drift between the ids' measurement windows still lands in the ratio of their medians, so the report also
//! gives the *same-round* ratio: every round's times of all ids are kept, and the median over all rounds of
//! one id's time over the bare `GET`'s in the same round is free of it. The layer's timed half starts when the
//! `http::Request` exists: building the request is the caller's work with or without a cache, just as the bare
//! `GET`'s key string is built outside its timed part. Everything the layer does (key hash, store call,
//! envelope decode, response, collecting the body) is timed.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]
// The counting allocator below is the one unsafe code of the package: `GlobalAlloc` is an unsafe trait.
#![allow(unsafe_code)]

#[path = "../tests/support/mod.rs"]
mod support;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use fred::prelude::{Client, Expiration, KeysInterface};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, request};
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::runtime::Runtime;
use tower::{Service, ServiceExt, service_fn};
use tower_redis_cache::error::BoxError;
use tower_redis_cache::{CacheOutcome, MemoryStore, RedisCacheLayer, RedisStore, Store};

const SIZES: [usize; 3] = [256, 4096, 65536];

/// The system allocator, counting this thread's allocations (reallocations included) and their bytes.
struct Counting;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

fn count(bytes: usize) {
    // `try_with`: a thread being torn down has no counter, and must still allocate.
    let _ = ALLOCATIONS.try_with(|c| {
        let (n, b) = c.get();
        c.set((n + 1, b + bytes as u64));
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting touches only a
// thread-local `Cell`, which neither allocates nor unwinds.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded as received.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded as received.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded as received.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: forwarded as received.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// This thread's allocations and allocated bytes so far.
fn allocations() -> (u64, u64) {
    ALLOCATIONS.with(|c| c.get())
}
/// How long the bench's own keys outlive it, so that a run against an outside `REDIS_URL` leaves nothing for long.
const LITTER: Option<Expiration> = Some(Expiration::EX(3600));
/// Concurrent callers in the `concurrent` group.
const CALLERS: usize = 64;

/// Calls each caller of the `concurrent` group makes, one after another (as a server's connection answers its
/// requests), in one batch.
const CALLS_EACH: usize = 16;

/// Calls in one batch of the `concurrent` group.
const BATCH: usize = CALLERS * CALLS_EACH;
const QUERY: &[u8] = br#"{"actionId":"order_lookup","input":{"orderId":"A-1029","region":"emea"}}"#;

/// A JSON document of exactly `size` bytes.
fn json_of(size: usize) -> Bytes {
    let overhead = r#"{"data":""}"#.len();
    let filler = "x".repeat(size.saturating_sub(overhead));
    let json = format!(r#"{{"data":"{filler}"}}"#);
    assert_eq!(json.len(), size);
    Bytes::from(json)
}

/// The query as `key_for` takes it.
#[cfg(feature = "compression")]
fn query_bytes() -> Request<Bytes> {
    query().map(|_| Bytes::from_static(QUERY))
}

fn query() -> Request<Full<Bytes>> {
    Request::post("https://api.example.com/api/v2/integrations/actions/order_lookup/execute")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(QUERY)))
        .unwrap()
}

/// An origin that answers `body` at once, counting calls.
fn origin(
    body: Bytes,
    calls: Arc<AtomicU64>,
) -> impl Service<
    Request<tower_redis_cache::RequestBody>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    origin_varying_on(body, calls, None)
}

/// [`origin`], its answers saying `Vary: <vary>` when given.
fn origin_varying_on(
    body: Bytes,
    calls: Arc<AtomicU64>,
    vary: Option<&'static str>,
) -> impl Service<
    Request<tower_redis_cache::RequestBody>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |_request: Request<tower_redis_cache::RequestBody>| {
        calls.fetch_add(1, Ordering::Relaxed);
        let body = body.clone();
        async move {
            let mut response = Response::builder().header("content-type", "application/json");
            if let Some(vary) = vary {
                response = response.header("vary", vary);
            }
            Ok(response.body(Full::new(body)).unwrap())
        }
    })
}

fn layer(store: impl Store, namespace: &str) -> RedisCacheLayer {
    RedisCacheLayer::builder(store)
        .namespace(namespace)
        .methods([Method::GET, Method::POST])
        .fresh_for(Duration::from_secs(3600))
        .build()
        .unwrap()
}

fn near_layer(client: &Client, namespace: &str) -> RedisCacheLayer {
    RedisCacheLayer::builder(RedisStore::new(client.clone()))
        .namespace(namespace)
        .methods([Method::GET, Method::POST])
        .fresh_for(Duration::from_secs(3600))
        .near_cache_max_ttl(Duration::from_secs(3600))
        .near_cache(64 << 20)
        .build()
        .unwrap()
}

/// Starts the near cache's tracking on `background` (the runtime its client runs on) and waits until the near
/// cache answers: a bounded poll.
fn warm_near<S>(background: &Runtime, service: &S)
where
    S: Service<
            Request<Full<Bytes>>,
            Error = BoxError,
            Response = Response<tower_redis_cache::cache::ResponseBody<Full<Bytes>>>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    background.block_on(async {
        for _ in 0..1000 {
            let response = service.clone().oneshot(query()).await.unwrap();
            let near = response.headers()["cache-status"]
                .to_str()
                .unwrap()
                .ends_with("detail=near");
            if near {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the near cache never answered");
    });
}

/// Asserts that every hit through `layer` since `before` came from the near cache.
fn assert_near_only(layer: &RedisCacheLayer, before: tower_redis_cache::CacheStats) {
    let stats = layer.handle().stats();
    assert_eq!(
        stats.hits - before.hits,
        stats.near_hits - before.near_hits,
        "every timed call of layer_near was a near hit: {stats:?}"
    );
}

struct Redis {
    // Kept alive for the whole run; `None` when REDIS_URL names an outside server.
    _server: Option<support::RedisServer>,
    url: String,
}

fn redis() -> Redis {
    match std::env::var("REDIS_URL") {
        Ok(url) => Redis { _server: None, url },
        Err(_) => {
            let server = support::RedisServer::start();
            let url = server.url();
            Redis {
                _server: Some(server),
                url,
            }
        }
    }
}

/// Every paired round's times, per group (`hit_path/<size>`, `concurrent`): one entry an id, in id order, a round,
/// from every id's measurement (warm-up included). A ratio taken within one round is free of the drift between
/// criterion's measurement windows that a ratio of two ids' medians carries.
static ROUNDS: Mutex<BTreeMap<String, Vec<Duration>>> = Mutex::new(BTreeMap::new());

/// The state of the xorshift that orders the ids of a round (any non-zero seed).
static SHUFFLE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);

/// The most ids a paired group has.
const MAX_ARMS: usize = 5;

/// The paired measurement shared by the groups: `iters` rounds, each running every one of `arms` ids once on an
/// input `prepare` builds before the clock starts; returns the time spent running id `own`, and adds every id's
/// time of every round to [`ROUNDS`] under `group`. An id that does not use its input hands it back, so that it
/// is dropped outside the timing as well.
///
/// The order of the ids is shuffled afresh every round, so that each id runs after every other equally often:
/// what ran just before (allocator free lists, caches, the timer wheel, fred's buffers) changes a batch's
/// time, and with a fixed rotation one id always ran after the same other. The shuffle is a fixed-seed
/// xorshift, the same sequence every run.
async fn rotate<T, F>(
    group: &str,
    iters: u64,
    arms: usize,
    own: usize,
    prepare: impl Fn() -> T,
    run: impl Fn(usize, T) -> F,
) -> Duration
where
    F: Future<Output = Option<T>>,
{
    assert!(arms <= MAX_ARMS);
    let mut timed = Duration::ZERO;
    // Allocated before the first round, so that recording allocates nothing between two timed parts.
    let mut times = Vec::with_capacity(usize::try_from(iters).unwrap() * arms);
    let mut order: Vec<usize> = (0..arms).collect();
    // Carried from call to call, so that criterion's samples do not all replay the same first orders.
    let mut state = SHUFFLE.load(Ordering::Relaxed);
    for _ in 0..iters {
        for i in (1..arms).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            order.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut round = [Duration::ZERO; MAX_ARMS];
        for &arm in &order {
            let input = prepare();
            let start = Instant::now();
            let unused = run(arm, input).await;
            round[arm] = start.elapsed();
            drop(unused);
        }
        timed += round[own];
        times.extend_from_slice(&round[..arms]);
    }
    SHUFFLE.store(state, Ordering::Relaxed);
    let mut rounds = ROUNDS.lock().unwrap();
    rounds.entry(group.to_owned()).or_default().extend(times);
    timed
}

/// The median over the rounds recorded under `group` (of `arms` ids) of `ratio(time of id, time of the bare GET)`
/// for id `arm`, and how many rounds there were.
fn same_round(
    group: &str,
    arms: usize,
    arm: usize,
    ratio: fn(f64, f64) -> f64,
) -> Option<(f64, usize)> {
    if arm >= arms {
        return None;
    }
    let rounds = ROUNDS.lock().unwrap();
    let times = rounds.get(group)?;
    let mut ratios: Vec<f64> = times
        .chunks_exact(arms)
        .map(|round| ratio(round[arm].as_secs_f64(), round[0].as_secs_f64()))
        .collect();
    ratios.sort_by(f64::total_cmp);
    Some((*ratios.get(ratios.len() / 2)?, ratios.len()))
}

/// Benches a bare `GET` and two hits, `calls.0` to `calls.2`, as the `ids` of `group` at `size`, paired (see
/// [`rotate`]): every round of any of them runs all three, and is recorded under `group_key`.
fn paired<B, BF, F, FF, S, SF>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    group_key: &str,
    size: usize,
    ids: [&str; 3],
    calls: (B, F, S),
) where
    B: Fn() -> BF + Copy,
    BF: Future,
    F: Fn(Request<Full<Bytes>>) -> FF + Copy,
    FF: Future,
    S: Fn(Request<Full<Bytes>>) -> SF + Copy,
    SF: Future,
{
    let (bare, first, second) = calls;
    for (own, id) in ids.into_iter().enumerate() {
        group.bench_with_input(BenchmarkId::new(id, size), &size, |b, _| {
            b.to_async(rt).iter_custom(|iters| {
                rotate(
                    group_key,
                    iters,
                    ids.len(),
                    own,
                    query,
                    |arm, request| async move {
                        match arm {
                            0 => {
                                bare().await;
                                Some(request)
                            }
                            1 => {
                                first(request).await;
                                None
                            }
                            _ => {
                                second(request).await;
                                None
                            }
                        }
                    },
                )
            })
        });
    }
}

async fn hit<S>(service: &S, request: Request<Full<Bytes>>) -> Bytes
where
    S: Service<
            Request<Full<Bytes>>,
            Error = BoxError,
            Response = Response<tower_redis_cache::cache::ResponseBody<Full<Bytes>>>,
        > + Clone,
{
    let response = service.clone().oneshot(request).await.unwrap();
    debug_assert_eq!(CacheOutcome::of(&response), Some(CacheOutcome::Hit));
    response.into_body().collect().await.unwrap().to_bytes()
}

/// One batch through a Tower service: each caller's requests on its own task, one after another, every body
/// collected.
async fn service_batch<S, B>(service: &S, callers: Vec<Vec<Request<Full<Bytes>>>>)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Debug,
{
    let tasks = callers.into_iter().map(|requests| {
        let service = service.clone();
        tokio::spawn(async move {
            for request in requests {
                let response = service.clone().oneshot(request).await.unwrap();
                black_box(response.into_body().collect().await.unwrap().to_bytes());
            }
        })
    });
    for task in futures_util::future::join_all(tasks).await {
        task.unwrap();
    }
}

/// The minimal cache's key: SHA-256 of method, URI and body, in hex, under its own prefix.
fn minimal_key(parts: &request::Parts, body: &[u8]) -> Bytes {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hash = Sha256::new();
    let uri = &parts.uri;
    let authority = uri.authority().map_or("", |a| a.as_str());
    let path = uri.path_and_query().map_or("", |p| p.as_str());
    for field in [
        parts.method.as_str(),
        uri.scheme_str().unwrap_or(""),
        authority,
        path,
    ] {
        hash.update(field.as_bytes());
        hash.update([0]);
    }
    hash.update(body);
    let mut key = b"bench-minimal:".to_vec();
    for byte in hash.finalize() {
        key.extend_from_slice(&[HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]);
    }
    Bytes::from(key)
}

/// Now in milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    let now = SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The runtimes and clients of the single-call measurements.
struct Setup {
    /// Where the near caches' connections and tracking run: a runtime that keeps running between criterion's
    /// phases, as a server's does (the timed near hits touch no connection).
    background: Runtime,
    /// A client on `background`, for the near caches.
    near_client: Client,
    /// One call at a time: a current-thread runtime runs the caller and fred's connection task on one thread,
    /// so the only other runnable thread is redis-server and both ids see the same, stable scheduling.
    rt: Runtime,
    /// A client on `rt`.
    client: Client,
}

fn setup(redis: &Redis) -> Setup {
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let near_client: Client = background.block_on(support::fred_client(&redis.url));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client: Client = rt.block_on(support::fred_client(&redis.url));
    Setup {
        background,
        near_client,
        rt,
        client,
    }
}

fn hit_path(c: &mut Criterion) {
    let redis = redis();
    let Setup {
        background,
        near_client,
        rt,
        client,
    } = setup(&redis);
    let mut group = c.benchmark_group("hit_path");
    for size in SIZES {
        let body = json_of(size);
        group.throughput(Throughput::Bytes(size as u64));

        let floor_key = format!("bench:floor:{size}");
        rt.block_on(client.set::<(), _, _>(&floor_key, body.clone(), LITTER, None, false))
            .unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let redis_layer = layer(RedisStore::new(client.clone()), &format!("bench-{size}"));
        let service = tower::Layer::layer(&redis_layer, origin(body.clone(), calls.clone()));
        rt.block_on(async {
            redis_layer.handle().purge().await.unwrap();
            service.clone().oneshot(query()).await.unwrap();
            assert_eq!(
                hit(&service, query()).await,
                body,
                "warm-up is a hit with the origin's bytes"
            );
        });
        let near = near_layer(&near_client, &format!("bench-near-{size}"));
        let near_service = tower::Layer::layer(&near, origin(body.clone(), calls.clone()));
        rt.block_on(near.handle().purge()).unwrap();
        warm_near(&background, &near_service);
        let near_before = near.handle().stats();
        let bare = || async { black_box(client.get::<Bytes, _>(&floor_key).await.unwrap()) };
        let through_layer = |request| async { black_box(hit(&service, request).await) };
        let through_near = |request| async { black_box(hit(&near_service, request).await) };
        // Paired: each iteration runs one bare `GET` and one hit through each layer, in shuffled order, and each
        // id times its own.
        paired(
            &mut group,
            &rt,
            &format!("hit_path/{size}"),
            size,
            ["bare_fred_get", "layer_redis", "layer_near"],
            (bare, through_layer, through_near),
        );
        assert_near_only(&near, near_before);
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2,
            "every timed call was a hit (one miss for each layer's warm-up)"
        );

        let calls = Arc::new(AtomicU64::new(0));
        let memory_layer = layer(MemoryStore::new(64 << 20), "bench-memory");
        let service = tower::Layer::layer(&memory_layer, origin(body.clone(), calls.clone()));
        rt.block_on(async {
            service.clone().oneshot(query()).await.unwrap();
        });
        let memory_service = &service;
        group.bench_with_input(BenchmarkId::new("layer_memory", size), &size, |b, _| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let request = query();
                    let start = Instant::now();
                    black_box(hit(memory_service, request).await);
                    timed += start.elapsed();
                }
                timed
            })
        });
        assert_eq!(
            calls.load(Ordering::Relaxed),
            1,
            "every timed call was a hit"
        );

        // The same hit, of an answer that varies on `Accept-Language`, asked for in two languages in turn: each
        // has its own entry, learned from the first (`keep_variants`), so every hit computes its variant's key.
        let calls = Arc::new(AtomicU64::new(0));
        let variant_layer = layer(MemoryStore::new(64 << 20), "bench-variants");
        let varying = tower::Layer::layer(
            &variant_layer,
            origin_varying_on(body.clone(), calls.clone(), Some("accept-language")),
        );
        let in_language = |language: &'static str| {
            let mut request = query();
            request
                .headers_mut()
                .insert("accept-language", http::HeaderValue::from_static(language));
            request
        };
        rt.block_on(async {
            for language in ["de", "fr"] {
                varying
                    .clone()
                    .oneshot(in_language(language))
                    .await
                    .unwrap();
            }
        });
        let varying = &varying;
        group.bench_with_input(
            BenchmarkId::new("layer_memory_variants", size),
            &size,
            |b, _| {
                b.to_async(&rt).iter_custom(|iters| async move {
                    let mut timed = Duration::ZERO;
                    for i in 0..iters {
                        let request = in_language(if i % 2 == 0 { "de" } else { "fr" });
                        let start = Instant::now();
                        black_box(hit(varying, request).await);
                        timed += start.elapsed();
                    }
                    timed
                })
            },
        );
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2,
            "every timed call was a hit of its own variant"
        );

        // The key of a POST whose JSON body has this size.
        let request = Request::post("https://api.example.com/api/v2/query")
            .header("content-type", "application/json")
            .body(body.clone())
            .unwrap();
        let handle = memory_layer.handle();
        group.bench_with_input(BenchmarkId::new("key", size), &size, |b, _| {
            b.iter(|| black_box(handle.key_for(black_box(&request))))
        });
    }
    group.finish();

    // 64 callers at once, 4096 B, throughput in requests: on the multi-thread runtime, as a server runs them.
    let rt = Runtime::new().unwrap();
    let client: Client = rt.block_on(support::fred_client(&redis.url));
    let mut group = c.benchmark_group("concurrent");
    group.throughput(Throughput::Elements(BATCH as u64));
    let body = json_of(4096);
    let floor_key = "bench:floor:4096";
    let calls = Arc::new(AtomicU64::new(0));
    let redis_layer = layer(RedisStore::new(client.clone()), "bench-concurrent");
    let service = tower::Layer::layer(&redis_layer, origin(body.clone(), calls.clone()));
    rt.block_on(async {
        redis_layer.handle().purge().await.unwrap();
        service.clone().oneshot(query()).await.unwrap();
    });
    let bare_batch = || async {
        let tasks = (0..CALLERS).map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..CALLS_EACH {
                    black_box(client.get::<Bytes, _>(floor_key).await.unwrap());
                }
            })
        });
        for task in futures_util::future::join_all(tasks).await {
            task.unwrap();
        }
    };
    // The floor for any cache layer: a Tower service that does the bare `GET` and nothing else, holding its
    // request until the answer as a cache must (a miss forwards it), answering a response whose body is collected.
    let floor = {
        let client = client.clone();
        service_fn(move |request: Request<Full<Bytes>>| {
            let client = client.clone();
            async move {
                let value: Bytes = client.get(floor_key).await?;
                drop(request);
                Ok::<_, fred::error::Error>(Response::new(Full::new(value)))
            }
        })
    };
    // The least any Redis cache hit must do, as a Tower service: read the body, hash method, URI and body into
    // a key, `GET` it, check the expiry stored in front of the bytes, answer them with a content type. No
    // tenant, no chosen headers, no JSON canonicalisation, no stored headers, no stale state, no store timeout,
    // no `Age` or `Cache-Status`: what the layer costs beyond this is what its features cost.
    let minimal = {
        let client = client.clone();
        service_fn(move |request: Request<Full<Bytes>>| {
            let client = client.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = body.collect().await?.to_bytes();
                let value: Bytes = client.get(minimal_key(&parts, &body)).await?;
                let expires = u64::from_be_bytes(value[..8].try_into()?);
                assert!(expires > now_ms(), "the minimal cache's entry is fresh");
                drop((parts, body));
                let mut response = Response::new(Full::new(value.slice(8..)));
                let json = HeaderValue::from_static("application/json");
                response.headers_mut().insert(CONTENT_TYPE, json);
                Ok::<_, BoxError>(response)
            }
        })
    };
    let (parts, _) = query().into_parts();
    let entry = Bytes::from([&u64::MAX.to_be_bytes()[..], &body].concat());
    rt.block_on(client.set::<(), _, _>(minimal_key(&parts, QUERY), entry, LITTER, None, false))
        .unwrap();
    let near = near_layer(&near_client, "bench-near-concurrent");
    let near_service = tower::Layer::layer(&near, origin(body.clone(), calls.clone()));
    rt.block_on(near.handle().purge()).unwrap();
    warm_near(&background, &near_service);
    let near_before = near.handle().stats();
    let requests = || {
        (0..CALLERS)
            .map(|_| (0..CALLS_EACH).map(|_| query()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    // Paired as in `hit_path`, five ways: each iteration runs one batch of every id, in shuffled order, and
    // each id times its own.
    let ids = [
        "bare_fred_get",
        "layer_redis",
        "service_floor",
        "minimal_cache",
        "layer_near",
    ];
    let (cached, floor, minimal, near_cached) = (&service, &floor, &minimal, &near_service);
    for (own, id) in ids.into_iter().enumerate() {
        group.bench_function(id, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                rotate(
                    "concurrent",
                    iters,
                    ids.len(),
                    own,
                    requests,
                    |arm, batch| async move {
                        match arm {
                            0 => {
                                bare_batch().await;
                                Some(batch)
                            }
                            1 => {
                                service_batch(cached, batch).await;
                                None
                            }
                            2 => {
                                service_batch(floor, batch).await;
                                None
                            }
                            3 => {
                                service_batch(minimal, batch).await;
                                None
                            }
                            _ => {
                                service_batch(near_cached, batch).await;
                                None
                            }
                        }
                    },
                )
            })
        });
    }
    assert_eq!(
        calls.load(Ordering::Relaxed),
        2,
        "every timed call was a hit (one miss for each layer's warm-up)"
    );
    assert_near_only(&near, near_before);
    group.finish();

    // A miss per iteration: a new key each time, an origin that answers at once.
    let mut group = c.benchmark_group("miss");
    let calls = Arc::new(AtomicU64::new(0));
    let redis_layer = layer(RedisStore::new(client.clone()), "bench-miss");
    let service = tower::Layer::layer(&redis_layer, origin(json_of(4096), calls.clone()));
    let sequence = AtomicU64::new(0);
    let iterations = AtomicU64::new(0);
    group.bench_function("layer_redis", |b| {
        b.to_async(&rt).iter(|| async {
            let n = sequence.fetch_add(1, Ordering::Relaxed);
            iterations.fetch_add(1, Ordering::Relaxed);
            let request = Request::post("https://api.example.com/api/v2/query")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(format!(r#"{{"n":{n}}}"#))))
                .unwrap();
            let response = service.clone().oneshot(request).await.unwrap();
            black_box(response.into_body().collect().await.unwrap().to_bytes())
        })
    });
    assert_eq!(
        calls.load(Ordering::Relaxed),
        iterations.load(Ordering::Relaxed),
        "every timed call of the miss benchmark reached the origin"
    );
    rt.block_on(redis_layer.handle().purge()).unwrap();
    group.finish();
}

/// A JSON report of about `size` bytes: rows of a few fields, as API answers are (and as compressible).
#[cfg(feature = "compression")]
fn report_of(size: usize) -> Bytes {
    let mut json = String::from("[");
    let mut i = 0;
    while json.len() + 64 < size {
        json.push_str(&format!(
            r#"{{"id":"A-{i:05}","status":"{}","owner":"team-{}","total":{}.{:02}}},"#,
            ["open", "closed", "pending"][i % 3],
            i % 11,
            i * 37 % 1000,
            i % 100
        ));
        i += 1;
    }
    json.pop();
    json.push(']');
    Bytes::from(json)
}

/// `compressed/{bare_fred_get,layer_redis,layer_redis_lz4}/{4096,65536}`: a Redis hit on a JSON report stored
/// raw and stored LZ4-compressed (`compress_above`), paired with a bare `GET` of the raw bytes. Prints the
/// bytes each entry takes in Redis and the same-round ratios.
#[cfg(feature = "compression")]
fn compressed(c: &mut Criterion) {
    let redis = redis();
    let Setup { rt, client, .. } = setup(&redis);
    let mut group = c.benchmark_group("compressed");
    let mut lines = Vec::new();
    for size in [4096, 65536] {
        let body = report_of(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        let floor_key = format!("bench:report:{size}");
        rt.block_on(client.set::<(), _, _>(&floor_key, body.clone(), LITTER, None, false))
            .unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let build = |namespace: String, compress: bool| {
            let builder = RedisCacheLayer::builder(RedisStore::new(client.clone()))
                .namespace(namespace)
                .methods([Method::GET, Method::POST])
                .fresh_for(Duration::from_secs(3600));
            let builder = if compress {
                builder.compress_above(1024)
            } else {
                builder
            };
            builder.build().unwrap()
        };
        let raw = build(format!("bench-raw-{size}"), false);
        let lz4 = build(format!("bench-lz4-{size}"), true);
        let raw_service = tower::Layer::layer(&raw, origin(body.clone(), calls.clone()));
        let lz4_service = tower::Layer::layer(&lz4, origin(body.clone(), calls.clone()));
        let mut stored = [0; 2];
        for (i, (layer, service)) in [(&raw, &raw_service), (&lz4, &lz4_service)]
            .into_iter()
            .enumerate()
        {
            rt.block_on(async {
                layer.handle().purge().await.unwrap();
                service.clone().oneshot(query()).await.unwrap();
                assert_eq!(
                    hit(service, query()).await,
                    body,
                    "warm-up is a hit with the origin's bytes"
                );
                let key = layer.handle().key_for(&query_bytes());
                stored[i] = client.strlen::<usize, _>(key.as_str()).await.unwrap();
            });
        }
        let bare = || async { black_box(client.get::<Bytes, _>(&floor_key).await.unwrap()) };
        let through_raw = |request| async { black_box(hit(&raw_service, request).await) };
        let through_lz4 = |request| async { black_box(hit(&lz4_service, request).await) };
        let group_key = format!("compressed/{size}");
        let group_key = &group_key;
        let ids = ["bare_fred_get", "layer_redis", "layer_redis_lz4"];
        paired(
            &mut group,
            &rt,
            group_key,
            size,
            ids,
            (bare, through_raw, through_lz4),
        );
        assert_eq!(
            calls.load(Ordering::Relaxed),
            2,
            "every timed call was a hit"
        );
        let ratio = |arm| {
            same_round(group_key, ids.len(), arm, |id, bare| id / bare)
                .map_or("-".to_owned(), |(ratio, _)| format!("{ratio:.2}x"))
        };
        lines.push(format!(
            "| {} B | {} B / {} B | {} | {} |",
            body.len(),
            stored[0],
            stored[1],
            ratio(1),
            ratio(2)
        ));
        rt.block_on(async {
            raw.handle().purge().await.unwrap();
            lz4.handle().purge().await.unwrap();
        });
    }
    group.finish();
    println!(
        "\n| report | in Redis, raw / LZ4 | `layer_redis` / `bare_fred_get`, same round | `layer_redis_lz4` / `bare_fred_get`, same round |"
    );
    println!("|---|---|---|---|");
    for line in lines {
        println!("{line}");
    }
}

#[cfg(not(feature = "compression"))]
fn compressed(_: &mut Criterion) {}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = hit_path, compressed
}

fn main() {
    let started = SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    report(started);
    allocation_report();
    // Not with `--test` (one pass of every bench, as CI would run it) or `--list`.
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        let (p50, p99, writes) = invalidation_latency();
        println!(
            "\nNear-cache invalidation, from another connection's `SET` sent to the entry dropped here: \
             p50 {:.0} µs, p99 {:.0} µs ({writes} writes)",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
        for near in [false, true] {
            let (p50, p99, trials) = fleet_wake_up(near);
            println!(
                "Fleet wait, from the filling process's answer to the waiting process's ({}): p50 {:.2} ms, \
                 p99 {:.2} ms ({trials} cold keys)",
                if near {
                    "woken by the near cache's push"
                } else {
                    "polling"
                },
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
        }
    }
}

/// Allocations per call, averaged over 1,000 calls after a warm-up: a bare fred `GET`, and a hit through the
/// layer over Redis, the near cache and memory, each with the body collected as the timed hits do. Printed as
/// a table; the layer's own count is a Redis hit's less the bare `GET`'s (fred allocates the same for both).
fn allocation_report() {
    const CALLS: u64 = 1000;
    let redis = redis();
    let Setup {
        background,
        near_client,
        rt,
        client,
    } = setup(&redis);
    // Allocations and bytes per call of `call`, whose input `prepare` builds outside the count.
    async fn per_call<T, F, Fut>(mut prepare: impl FnMut() -> T, call: F) -> (f64, f64)
    where
        F: Fn(T) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        for _ in 0..100 {
            call(prepare()).await;
        }
        let (mut n, mut b) = (0, 0);
        for _ in 0..CALLS {
            let input = prepare();
            let before = allocations();
            call(input).await;
            let after = allocations();
            n += after.0 - before.0;
            b += after.1 - before.1;
        }
        (n as f64 / CALLS as f64, b as f64 / CALLS as f64)
    }
    let cell = |(n, b): (f64, f64)| format!("{n:.1} ({b:.0} B)");
    println!("\nAllocations per call (and bytes allocated), {CALLS} calls each after a warm-up:\n");
    println!("| id | 256 B | 4096 B | 65536 B |\n|---|---|---|---|");
    let mut rows: [Vec<String>; 5] = Default::default();
    for size in SIZES {
        let body = json_of(size);
        let calls = Arc::new(AtomicU64::new(0));
        let floor_key = format!("bench:alloc:{size}");
        let redis_layer = layer(RedisStore::new(client.clone()), &format!("alloc-{size}"));
        let redis_service = tower::Layer::layer(&redis_layer, origin(body.clone(), calls.clone()));
        let memory_layer = layer(MemoryStore::new(64 << 20), &format!("alloc-memory-{size}"));
        let memory_service =
            tower::Layer::layer(&memory_layer, origin(body.clone(), calls.clone()));
        let near = near_layer(&near_client, &format!("alloc-near-{size}"));
        let near_service = tower::Layer::layer(&near, origin(body.clone(), calls.clone()));
        rt.block_on(async {
            client
                .set::<(), _, _>(&floor_key, body.clone(), LITTER, None, false)
                .await
                .unwrap();
            redis_layer.handle().purge().await.unwrap();
            near.handle().purge().await.unwrap();
            redis_service.clone().oneshot(query()).await.unwrap();
            memory_service.clone().oneshot(query()).await.unwrap();
        });
        warm_near(&background, &near_service);
        let near_before = near.handle().stats();
        rt.block_on(async {
            let bare = per_call(
                || (),
                |()| async {
                    black_box(client.get::<Bytes, _>(&floor_key).await.unwrap());
                },
            )
            .await;
            let layer_redis = per_call(query, |request| async {
                black_box(hit(&redis_service, request).await);
            })
            .await;
            let layer_near = per_call(query, |request| async {
                black_box(hit(&near_service, request).await);
            })
            .await;
            let layer_memory = per_call(query, |request| async {
                black_box(hit(&memory_service, request).await);
            })
            .await;
            rows[0].push(cell(bare));
            rows[1].push(cell(layer_redis));
            rows[2].push(format!(
                "{:.1} ({:.0} B)",
                layer_redis.0 - bare.0,
                layer_redis.1 - bare.1
            ));
            rows[3].push(cell(layer_near));
            rows[4].push(cell(layer_memory));
        });
        assert_near_only(&near, near_before);
        assert_eq!(
            calls.load(Ordering::Relaxed),
            3,
            "every counted call was a hit (one miss for each layer's warm-up)"
        );
    }
    for (label, row) in [
        "`bare_fred_get`",
        "`layer_redis`",
        "`layer_redis`, its own (less the bare `GET`)",
        "`layer_near`",
        "`layer_memory`",
    ]
    .into_iter()
    .zip(&rows)
    {
        println!("| {label} | {} |", row.join(" | "));
    }
}

/// How soon a process waiting on another's fill answers: for each of 100 cold keys, process A fetches it
/// (its origin held until B waits), B misses it and waits on A's lease; the sample is the time from A's answer
/// (just after its write) to B's. `near`: both processes have a near cache, so B is woken by its push.
fn fleet_wake_up(near: bool) -> (Duration, Duration, usize) {
    const TRIALS: usize = 100;
    let redis = redis();
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let gate = Arc::new(tokio::sync::watch::channel(false).0);
        let reached = Arc::new(AtomicU64::new(0));
        let origin = {
            let (gate, reached) = (gate.clone(), reached.clone());
            service_fn(move |_: Request<tower_redis_cache::RequestBody>| {
                let mut open = gate.subscribe();
                reached.fetch_add(1, Ordering::SeqCst);
                async move {
                    open.wait_for(|open| *open).await.unwrap();
                    Ok::<_, Infallible>(Response::new(Full::new(json_of(256))))
                }
            })
        };
        let mut processes = Vec::new();
        for _ in 0..2 {
            let client = support::fred_client(&redis.url).await;
            let builder = RedisCacheLayer::builder(RedisStore::new(client))
                .namespace("bench-fleet")
                .methods([Method::POST])
                .fresh_for(Duration::from_secs(3600));
            let builder = if near {
                builder.near_cache(16 << 20)
            } else {
                builder
            };
            let layer = builder.build().unwrap();
            let service = tower::Layer::layer(&layer, origin.clone());
            processes.push((layer, service));
        }
        processes[0].0.handle().purge().await.unwrap();
        if near {
            // Let both processes' tracking arm before the first trial.
            gate.send_replace(true);
            for (_, service) in &processes {
                let _ = service.clone().oneshot(query()).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let warm_up_calls = reached.load(Ordering::SeqCst);
        let mut samples = Vec::with_capacity(TRIALS);
        for trial in 0..TRIALS {
            let request = || {
                Request::post("https://api.example.com/api/v2/query")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(format!(
                        r#"{{"trial":{trial},"near":{near}}}"#
                    ))))
                    .unwrap()
            };
            gate.send_replace(false);
            let before = reached.load(Ordering::SeqCst);
            let a = tokio::spawn(processes[0].1.clone().oneshot(request()));
            while reached.load(Ordering::SeqCst) == before {
                tokio::task::yield_now().await;
            }
            let waits = processes[1].0.handle().stats().fleet_waits;
            let b = tokio::spawn(processes[1].1.clone().oneshot(request()));
            while processes[1].0.handle().stats().fleet_waits == waits {
                tokio::task::yield_now().await;
            }
            gate.send_replace(true);
            let a_done = {
                a.await.unwrap().unwrap();
                Instant::now()
            };
            let answered = b.await.unwrap().unwrap();
            let b_done = Instant::now();
            assert!(
                answered.headers()["cache-status"]
                    .to_str()
                    .unwrap()
                    .ends_with("detail=fleet"),
                "B waited on A's fill"
            );
            samples.push(b_done.saturating_duration_since(a_done));
        }
        assert_eq!(
            reached.load(Ordering::SeqCst) - warm_up_calls,
            TRIALS as u64,
            "one origin call a key, for the two processes"
        );
        processes[0].0.handle().purge().await.unwrap();
        samples.sort();
        (samples[TRIALS / 2], samples[TRIALS * 99 / 100], TRIALS)
    })
}

/// How long a write by another connection takes to drop a near-cache entry: from just before the writer sends
/// `SET` to the moment this process's near cache has counted the invalidation. Returns p50, p99 and the count.
fn invalidation_latency() -> (Duration, Duration, usize) {
    const WRITES: usize = 500;
    let redis = redis();
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        let writer = support::fred_client(&redis.url).await;
        let reader = support::fred_client(&redis.url).await;
        let near = near_layer(&reader, "bench-near-latency");
        let service = tower::Layer::layer(&near, origin(json_of(256), Arc::new(AtomicU64::new(0))));
        near.handle().purge().await.unwrap();
        for _ in 0..1000 {
            let response = service.clone().oneshot(query()).await.unwrap();
            if response.headers()["cache-status"]
                .to_str()
                .unwrap()
                .ends_with("detail=near")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (parts, _) = query().into_parts();
        let key = near
            .handle()
            .key_for(&Request::from_parts(parts, Bytes::from_static(QUERY)));
        let mut samples = Vec::with_capacity(WRITES);
        for i in 0..WRITES {
            let before = near.handle().stats().near_invalidations;
            let start = Instant::now();
            writer
                .set::<(), _, _>(key.as_str(), format!("v{i}"), LITTER, None, false)
                .await
                .unwrap();
            while near.handle().stats().near_invalidations == before {
                tokio::task::yield_now().await;
            }
            samples.push(start.elapsed());
        }
        near.handle().purge().await.unwrap();
        samples.sort();
        (samples[WRITES / 2], samples[WRITES * 99 / 100], WRITES)
    })
}

/// Prints the medians this run wrote (criterion's `estimates.json`) as BENCHMARKS.md's tables, with the ratios the
/// targets are set on. Ids the run did not measure (filtered out, or `--test`) print as `-`.
fn report(started: SystemTime) {
    let home = criterion_home();
    // Median in nanoseconds, if this run wrote it.
    let median = |id: &str| -> Option<f64> {
        let path = home.join(id).join("new").join("estimates.json");
        if std::fs::metadata(&path).ok()?.modified().ok()? < started {
            return None;
        }
        let estimates: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        estimates["median"]["point_estimate"].as_f64()
    };
    let us = |ns: f64| {
        let us = ns / 1000.0;
        if us < 10.0 {
            format!("{us:.2} µs")
        } else {
            format!("{us:.1} µs")
        }
    };
    let cell = |ns: Option<f64>, floor: Option<f64>| match (ns, floor) {
        (Some(ns), Some(floor)) => format!("{} (**{:.2}x**)", us(ns), ns / floor),
        (Some(ns), None) => us(ns),
        (None, _) => "-".to_owned(),
    };
    let mut hit_rows = String::new();
    let mut measured = false;
    for (id, label, ratio) in [
        ("bare_fred_get", "`hit_path/bare_fred_get` (floor)", false),
        ("layer_redis", "`hit_path/layer_redis`", true),
        ("layer_near", "`hit_path/layer_near`", true),
        ("layer_memory", "`hit_path/layer_memory`", false),
        (
            "key",
            "`hit_path/key` (POST, JSON body of that size)",
            false,
        ),
    ] {
        hit_rows.push_str(&format!("| {label} |"));
        for size in SIZES {
            let ns = median(&format!("hit_path/{id}/{size}"));
            let floor = median(&format!("hit_path/bare_fred_get/{size}")).filter(|_| ratio);
            measured |= ns.is_some();
            hit_rows.push_str(&format!(" {} |", cell(ns, floor)));
        }
        hit_rows.push('\n');
    }
    for (arm, id) in [(1, "layer_redis"), (2, "layer_near")] {
        hit_rows.push_str(&format!("| `{id}` / `bare_fred_get`, same round |"));
        for size in SIZES {
            let ratio = same_round(&format!("hit_path/{size}"), 3, arm, |id, bare| id / bare);
            hit_rows.push_str(&match ratio {
                Some((ratio, rounds)) => format!(" **{ratio:.2}x** ({rounds} rounds) |"),
                None => " - |".to_owned(),
            });
        }
        hit_rows.push('\n');
    }
    let bare = median("concurrent/bare_fred_get");
    let mut batch_rows = String::new();
    for (arm, (id, ratio)) in [
        ("concurrent/bare_fred_get", false),
        ("concurrent/layer_redis", true),
        ("concurrent/service_floor", true),
        ("concurrent/minimal_cache", true),
        ("concurrent/layer_near", true),
        ("miss/layer_redis", false),
    ]
    .into_iter()
    .enumerate()
    {
        let ns = median(id);
        measured |= ns.is_some();
        let throughput = match (ns, bare.filter(|_| ratio)) {
            _ if id.starts_with("miss") => String::new(),
            (Some(ns), Some(bare)) => format!(
                "{:.1} K calls/s (**{:.2}x**)",
                BATCH as f64 / ns * 1e6,
                bare / ns
            ),
            (Some(ns), None) => format!("{:.1} K calls/s", BATCH as f64 / ns * 1e6),
            (None, _) => "-".to_owned(),
        };
        let time = ns.map_or_else(|| "-".to_owned(), |ns| format!("{:.0} µs", ns / 1000.0));
        // Throughput over the bare GET's, batch by batch within a round.
        let same = match same_round("concurrent", 5, arm, |id, bare| bare / id) {
            Some((same, rounds)) if ratio => format!("**{same:.2}x** ({rounds} rounds)"),
            _ => String::new(),
        };
        batch_rows.push_str(&format!("| `{id}` | {time} | {throughput} | {same} |\n"));
    }
    if measured {
        println!("\nMedians of this run ({}):\n", home.display());
        println!("| id | 256 B | 4096 B | 65536 B |\n|---|---|---|---|\n{hit_rows}");
        println!(
            "| id | median per {BATCH} calls | throughput | same round |\n|---|---|---|---|\n{batch_rows}"
        );
    }
}

/// Where criterion writes its estimates, found the way criterion finds it.
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    std::env::var_os("CARGO")
        .and_then(|cargo| {
            let args = ["metadata", "--format-version", "1", "--no-deps"];
            Command::new(cargo).args(args).output().ok()
        })
        .and_then(|out| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
        .and_then(|metadata| metadata["target_directory"].as_str().map(PathBuf::from))
        .map_or_else(
            || PathBuf::from("target/criterion"),
            |target| target.join("criterion"),
        )
}
