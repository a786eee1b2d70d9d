//! One 256 B Redis hit at a time (or one bare fred `GET`), `N` times, for `scripts/callgrind`, which runs it
//! under callgrind twice with different `N` and prints the instructions one hit executes over one bare `GET`:
//! a count that is the same run after run, so two commits can be compared where wall-clock time on a shared VM
//! cannot tell 50 instructions apart. The layer is built as the peer program builds it (`RedisStore::new` over a
//! fred client with fred's defaults, one hour fresh, a minute stale), and the hit is the peer program's: a `GET`
//! with an empty body, its body collected.
//!
//! ```sh
//! scripts/callgrind                       # builds this, starts its own redis-server, prints the counts
//! MODE=hit N=1000 REDIS_URL=redis://127.0.0.1:6379 target/release/deps/hit_instructions-*
//! ```
//!
//! Run by `cargo bench` without `REDIS_URL`, it does nothing.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use fred::prelude::{Builder, ClientLike, Config, KeysInterface};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::time::Duration;
use tower::{Service, ServiceExt};
use tower_redis_cache::{CacheOutcome, RedisCacheLayer, RedisStore, RequestBody};

fn main() {
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("hit_instructions: set REDIS_URL (scripts/callgrind does); nothing to do");
        return;
    };
    let hits = std::env::var("MODE").map_or(true, |mode| mode != "get");
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(&url, hits, n));
}

async fn run(url: &str, hits: bool, n: usize) {
    let client = Builder::from_config(Config::from_url(url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    let body = Bytes::from(format!(
        r#"{{"size":256,"pad":"{}"}}"#,
        "x".repeat(256 - 21)
    ));
    let layer = RedisCacheLayer::builder(RedisStore::new(client.clone()))
        .namespace("instructions")
        .fresh_for(Duration::from_secs(3600))
        .stale_for(Duration::from_secs(60))
        .build()
        .unwrap();
    let answer = body.clone();
    let origin = tower::service_fn(move |_: Request<RequestBody>| {
        let answer = answer.clone();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(answer))
                    .unwrap(),
            )
        }
    });
    let mut service = tower::Layer::layer(&layer, origin);
    let request = || {
        Request::get("http://api.test/item/256")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let () = client
        .set("instructions:bare", body.clone(), None, None, false)
        .await
        .unwrap();
    // The miss that stores the entry, then hits until every per-thread memo is warm.
    for _ in 0..20 {
        let response = ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
    }
    let mut answered = 0;
    for _ in 0..n {
        if hits {
            let request = request();
            let response = ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
                .await
                .unwrap()
                .call(request)
                .await
                .unwrap();
            let hit = CacheOutcome::of(&response) == Some(CacheOutcome::Hit);
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            answered += usize::from(hit && bytes.len() == body.len());
        } else {
            let value: Bytes = client.get("instructions:bare").await.unwrap();
            answered += usize::from(value.len() == body.len());
        }
    }
    assert_eq!(answered, n, "every call a hit (or a GET) of the whole body");
}
