//! Redis client tracking for the near cache: one dedicated RESP3 connection per primary, in broadcast mode
//! (`CLIENT TRACKING ON BCAST PREFIX <namespace>:v1: NOLOOP`), so Redis keeps no per-key state and pushes an
//! invalidation for every change to a key of the namespace, whoever made it: another process's write, an
//! operator's `DEL`, an expiry, an eviction.
//!
//! fred sends a broadcast `start_tracking` to one node of a Cluster, so tracking is switched on per primary,
//! with `with_cluster_node`. fred also drops the null invalidation Redis sends on `FLUSHALL` / `FLUSHDB`, so
//! each primary holds a *canary* key under the prefix: the probe that runs every [`PROBE_EVERY`] (and proves
//! the connection alive, see [`LIVENESS`](crate::cache::near::LIVENESS)) checks it, and a missing canary
//! empties the near cache. A flush is therefore seen within one probe period rather than at once.

use super::redis::RedisStore;
use crate::cache::near::{FlushCause, Near, Tracking};
use fred::clients::Client;
use fred::interfaces::TrackingInterface;
use fred::interfaces::{
    ClientInterface, ClientLike, ClusterInterface, EventInterface, KeysInterface,
};
use fred::prelude::{Builder, Config, ReconnectPolicy, SetOptions, Value};
use fred::types::RespVersion;
use fred::types::cluster::ClusterRouting;
use fred::types::config::Server;
use futures_util::future::BoxFuture;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// How often the tracking connection is probed.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long a probe may take before tracking is in doubt.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Tracking for a [`RedisStore`]: a connection of its own, with the store's configuration in RESP3.
pub(crate) struct RedisTracking {
    config: Config,
}

impl RedisStore {
    /// The tracking side of the near cache for this store.
    pub(crate) fn tracking(&self) -> Arc<dyn Tracking> {
        Arc::new(RedisTracking {
            config: self.config(),
        })
    }
}

impl Tracking for RedisTracking {
    fn run(&self, prefix: String, near: Weak<Near>) -> BoxFuture<'static, ()> {
        Box::pin(run(self.config.clone(), prefix, near))
    }
}

async fn run(mut config: Config, prefix: String, near: Weak<Near>) {
    config.version = RespVersion::RESP3;
    let client = match Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_constant(0, 100))
        .with_connection_config(super::redis::watched_connection_config)
        // A lagging receiver has missed invalidations and must empty the near cache: make that rare.
        .with_performance_config(|p| p.broadcast_channel_capacity = 4096)
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(%error, "near cache: no tracking client; the near cache stays off");
            return;
        }
    };
    // The connection task reconnects on its own, until a reconnect's login is refused (a password rotated ahead
    // of this process's configuration): fred ends the task then, and the arming loop starts another.
    let mut task = client.connect();
    let mut invalidations = client.invalidation_rx();
    let mut reconnects = client.reconnect_rx();
    let mut changes = client.cluster_change_rx();
    let canary = format!("{prefix}near-canary");
    // Whether the refusal that keeps tracking off was told at `warn`: once, until tracking is on again.
    let mut told = false;
    'arming: loop {
        let Some(alive) = near.upgrade() else { break };
        alive.disarm();
        drop(alive);
        if task.is_finished() {
            let ended = (&mut task).await;
            tracing::debug!(
                ?ended,
                "near cache: the tracking connection's task ended; starting another"
            );
            task = client.connect();
        }
        let armed = tokio::time::timeout(Duration::from_secs(2), async {
            client.wait_for_connect().await?;
            arm(&client, &prefix, &canary).await
        })
        .await;
        let canaries = match armed {
            Ok(Ok(canaries)) => canaries,
            // The server answered and said no (`NOPERM` for a user without `client|tracking`, an unknown command
            // behind a proxy): no retry will change that until someone does, so say it where operators look.
            Ok(Err(error))
                if super::redis::is_refusal(&error) && !std::mem::replace(&mut told, true) =>
            {
                tracing::warn!(
                    %error,
                    "near cache: Redis refused client tracking; the near cache stays off (hits come from \
                     Redis) until it is allowed (the user needs `+client|tracking`, `+set` and `+exists` on the \
                     namespace's keys)"
                );
                tokio::time::sleep(PROBE_EVERY).await;
                continue;
            }
            failed => {
                tracing::debug!(?failed, "near cache: tracking not armed yet; retrying");
                tokio::time::sleep(PROBE_EVERY).await;
                continue;
            }
        };
        // Connection events from before tracking was armed (the first connect among them) are settled.
        while !reconnects.is_empty() {
            let _ = reconnects.try_recv();
        }
        while !changes.is_empty() {
            let _ = changes.try_recv();
        }
        told = false;
        match near.upgrade() {
            Some(near) => near.arm(),
            None => break,
        }
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = invalidations.recv() => {
                    let Some(near) = near.upgrade() else { break 'arming };
                    match message {
                        Ok(invalidation) => {
                            if invalidation.keys.is_empty() {
                                near.flush(FlushCause::Server);
                            }
                            for key in &invalidation.keys {
                                match key.as_str() {
                                    Some(key) if key.starts_with(&canary) => near.flush(FlushCause::Server),
                                    Some(key) => near.invalidate([key]),
                                    // Not one of ours (our keys are UTF-8): nothing to drop.
                                    None => {}
                                }
                            }
                        }
                        // Invalidations were missed: nothing kept before now can be trusted.
                        Err(RecvError::Lagged(_)) => near.flush(FlushCause::Connection),
                        Err(RecvError::Closed) => continue 'arming,
                    }
                }
                _ = reconnects.recv() => continue 'arming,
                _ = changes.recv() => continue 'arming,
                _ = probe.tick() => {
                    let Some(near) = near.upgrade() else { break 'arming };
                    match tokio::time::timeout(PROBE_TIMEOUT, canaries_present(&client, &canaries)).await {
                        Ok(Ok(true)) => near.pong(),
                        // A canary is gone: the server was flushed. Put it back, then go on answering.
                        Ok(Ok(false)) => {
                            near.flush(FlushCause::Server);
                            if plant(&client, &canaries).await.is_err() {
                                continue 'arming;
                            }
                            near.pong();
                        }
                        _ => continue 'arming,
                    }
                }
            }
        }
    }
    let _ = client.quit().await;
}

/// Switches tracking on at every primary and plants a canary on each; returns the canaries.
async fn arm(
    client: &Client,
    prefix: &str,
    canary: &str,
) -> fred::prelude::FredResult<Vec<String>> {
    let mut canaries = Vec::new();
    if client.is_clustered() {
        let state = client.cached_cluster_state().ok_or_else(|| {
            fred::error::Error::new(fred::error::ErrorKind::Cluster, "no cluster state yet")
        })?;
        for primary in state.unique_primary_nodes() {
            track(&client.with_cluster_node(primary.clone()), prefix).await?;
            canaries.push(canary_on(&state, &primary, canary)?);
        }
    } else {
        track(client, prefix).await?;
        canaries.push(canary.to_owned());
    }
    plant(client, &canaries).await?;
    Ok(canaries)
}

/// Switches broadcast tracking of `prefix` on for the connection `client` sends to: off first, since Redis
/// refuses a prefix a connection already tracks (`Prefix ... overlaps`), and a connection that stayed up keeps
/// tracking across a re-arming. Nothing is lost in between: the near cache is empty and answers nothing until
/// armed again.
async fn track<C: ClientInterface + Sync>(
    client: &C,
    prefix: &str,
) -> fred::prelude::FredResult<()> {
    client
        .client_tracking::<(), _, _>(
            "OFF",
            None,
            Vec::<String>::new(),
            false,
            false,
            false,
            false,
        )
        .await?;
    client
        .client_tracking::<(), _, _>("ON", None, prefix, true, false, false, true)
        .await
}

/// A canary key in a hash slot `primary` owns.
fn canary_on(
    state: &ClusterRouting,
    primary: &Server,
    canary: &str,
) -> fred::prelude::FredResult<String> {
    (0..65_536u32)
        .map(|i| format!("{canary}:{{{i}}}"))
        .find(|key| {
            let slot = fred::util::redis_keyslot(key.as_bytes());
            state
                .slots()
                .iter()
                .any(|range| range.primary == *primary && (range.start..=range.end).contains(&slot))
        })
        .ok_or_else(|| {
            fred::error::Error::new(fred::error::ErrorKind::Cluster, "no slot for a canary")
        })
}

/// Writes every canary that is missing.
async fn plant(client: &Client, canaries: &[String]) -> fred::prelude::FredResult<()> {
    for canary in canaries {
        client
            .set::<Value, _, _>(canary.as_str(), "1", None, Some(SetOptions::NX), false)
            .await?;
    }
    Ok(())
}

/// Whether every canary is still there (one round trip per primary: the probe of the connections too).
async fn canaries_present(client: &Client, canaries: &[String]) -> fred::prelude::FredResult<bool> {
    for canary in canaries {
        if client.exists::<i64, _>(canary.as_str()).await? == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}
