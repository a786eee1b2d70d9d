//! Lists (or executes) Genesys Cloud Data Actions through the cached, retried, authenticated client.
//!
//! ```sh
//! cargo run --example genesys_query --features genesys,emulator          # a local emulator, memory store
//! cargo run --example genesys_query --features genesys,emulator -- --execute <id> --input '{"orderId":"A-1"}'
//! GENESYS_REGION=mypurecloud.ie GENESYS_CLIENT_ID=... GENESYS_CLIENT_SECRET=... \
//!   REDIS_URL=redis://127.0.0.1:6379 cargo run --example genesys_query --features genesys,emulator
//! ```
//!
//! With no arguments and no environment it starts the emulator and an in-memory store, lists the actions
//! named like `order_lookup` twice, and shows the first call missing and the second hitting. Options:
//! `--name <substr>` (default `order_lookup`), `--execute <id>` with `--input <json>` (default `{}`),
//! `--repeat <n>` (default 2), `--fresh <secs>` (default 300), `--stale <secs>` (default 600).
//!
//! Environment: `GENESYS_REGION` (a domain such as `mypurecloud.ie`) or `GENESYS_API_BASE` +
//! `GENESYS_LOGIN_BASE`, `GENESYS_CLIENT_ID`, `GENESYS_CLIENT_SECRET`; `REDIS_URL` selects Redis. When
//! `GENESYS_API_BASE` or `GENESYS_REGION` is set it talks to that server, not the emulator.
//!
//! Each call prints `call=<i> cache=<outcome> entities=<n> ms=<latency>` (`bytes=<n>` for `--execute`); a
//! failure prints one line (status, Genesys code, correlation id; never the secret) and exits 1.

use futures_util::TryStreamExt;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tower_redis_cache::genesys::emulator::Emulator;
use tower_redis_cache::genesys::{ActionQuery, GenesysClient, GenesysClientBuilder, Region};
use tower_redis_cache::{CacheOutcome, RedisStore};

struct Options {
    name: String,
    execute: Option<String>,
    input: serde_json::Value,
    repeat: u32,
    fresh: u64,
    stale: u64,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        name: "order_lookup".into(),
        execute: None,
        input: serde_json::json!({}),
        repeat: 2,
        fresh: 300,
        stale: 600,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--name" => options.name = value()?,
            "--execute" => options.execute = Some(value()?),
            "--input" => {
                let text = value()?;
                options.input =
                    serde_json::from_str(&text).map_err(|e| format!("--input is not JSON: {e}"))?;
            }
            "--repeat" => options.repeat = number(&flag, &value()?)?,
            "--fresh" => options.fresh = number(&flag, &value()?)?,
            "--stale" => options.stale = number(&flag, &value()?)?,
            "-h" | "--help" => {
                return Err("usage: genesys_query [--name S] [--execute ID [--input JSON]] [--repeat N] [--fresh SECS] [--stale SECS]".into());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(options)
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag} needs a number, not {text:?}"))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The worst outcome over a listing's pages: one miss makes the call a miss.
fn summarize(outcomes: &[Option<CacheOutcome>]) -> &'static str {
    let rank = |o: &Option<CacheOutcome>| match o {
        Some(CacheOutcome::Hit) => 0,
        Some(CacheOutcome::Stale { .. }) => 1,
        Some(CacheOutcome::StaleIfError) => 2,
        Some(CacheOutcome::Bypass(_)) => 3,
        _ => 4,
    };
    outcomes
        .iter()
        .max_by_key(|o| rank(o))
        .and_then(|o| o.as_ref().map(CacheOutcome::as_str))
        .unwrap_or("miss")
}

async fn run(options: Options) -> Result<(), String> {
    // The real API when asked for; otherwise a local emulator (kept alive until the end of `run`).
    let mut emulator = None;
    let mut builder: GenesysClientBuilder = GenesysClient::builder();
    if let Some(region) = env("GENESYS_REGION") {
        builder = builder.region(region.parse::<Region>().map_err(|e| e.to_string())?);
    }
    if let Some(api) = env("GENESYS_API_BASE") {
        let login = env("GENESYS_LOGIN_BASE").ok_or("GENESYS_API_BASE needs GENESYS_LOGIN_BASE")?;
        builder = builder.api_base(api).login_base(login);
    }
    if env("GENESYS_REGION").is_some() || env("GENESYS_API_BASE").is_some() {
        let id = env("GENESYS_CLIENT_ID").ok_or("GENESYS_CLIENT_ID is not set")?;
        let secret = env("GENESYS_CLIENT_SECRET").ok_or("GENESYS_CLIENT_SECRET is not set")?;
        builder = builder.client_credentials(id, secret);
    } else {
        let local = Emulator::start()
            .await
            .map_err(|e| format!("emulator: {e}"))?;
        builder = builder
            .api_base(local.base_url())
            .login_base(local.base_url())
            .client_credentials(local.client_id(), local.client_secret());
        emulator = Some(local);
    }
    if let Some(url) = env("REDIS_URL") {
        let store = RedisStore::connect(&url)
            .await
            .map_err(|e| format!("redis {url}: {e}"))?;
        builder = builder.store(store);
    }
    let client = builder
        .fresh_for(Duration::from_secs(options.fresh))
        .stale_for(Duration::from_secs(options.stale))
        .build()
        .map_err(|e| e.to_string())?;

    let query = ActionQuery::new().name(options.name.clone());
    for call in 1..=options.repeat {
        let started = Instant::now();
        let (cache, count) = match &options.execute {
            Some(id) => {
                let output = client
                    .execute_action_raw(id, &options.input)
                    .await
                    .map_err(|e| e.to_string())?;
                let cache = output.cache.as_ref().map_or("miss", CacheOutcome::as_str);
                (cache, format!("bytes={}", output.value.len()))
            }
            None => {
                let pages: Vec<_> = client
                    .list_action_pages(&query)
                    .try_collect()
                    .await
                    .map_err(|e| e.to_string())?;
                let outcomes: Vec<Option<CacheOutcome>> = pages.iter().map(|p| p.cache).collect();
                let entities: usize = pages.iter().map(|p| p.entities.len()).sum();
                (summarize(&outcomes), format!("entities={entities}"))
            }
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        println!("call={call} cache={cache} {count} ms={ms:.1}");
    }
    drop(emulator);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match parse_args() {
        Ok(options) => run(options).await,
        Err(message) => Err(message),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {}", message.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
