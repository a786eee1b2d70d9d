//! Shared helpers for the integration tests: real `redis-server` processes and small HTTP fixtures.
#![allow(dead_code, unused_imports, unreachable_pub, missing_docs)]

pub mod calls;
pub mod child;
pub mod http_proxy;
pub mod logs;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod redis;
pub mod store;
pub mod tcp;

pub use self::origin::Origin;
pub use self::redis::{RedisCluster, RedisServer, bulk_payload};

use fred::prelude::{Builder, Client, ClientLike, Config, ReconnectPolicy};
use std::time::Duration;

/// A connected fred client for `url` that reconnects quickly (so restart tests do not wait long).
pub async fn fred_client(url: &str) -> Client {
    let config = Config::from_url(url).expect("a valid redis url");
    let client = Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_constant(0, 50))
        .with_connection_config(|c| c.connection_timeout = Duration::from_millis(500))
        .build()
        .expect("build a fred client");
    client.init().await.expect("connect to redis");
    client
}
